package repo_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/repo"
	tc "github.com/gochat/gochat/services/testcluster"
)

// freezer is a TCP proxy to MariaDB that can stop passing bytes (a hung
// server: connections stay open, nothing answers) and then come back as a
// restarted server (old connections dropped, new ones work).
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); f.thaw() })
	go f.serve()
	return f
}

func (f *freezer) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		frozen := f.frozen
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		if frozen {
			continue // accepted, never answered
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, up)
		f.mu.Unlock()
		go f.pipe(c, up)
		go f.pipe(up, c)
	}
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for {
			f.mu.Lock()
			frozen := f.frozen
			f.mu.Unlock()
			if !frozen {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

// thaw drops every connection, as a restarted server would, and passes new ones.
func (f *freezer) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns, f.frozen = nil, false
}

// A hung MySQL connection used to block every send for good: the store
// worker ran without a deadline. Now the stuck batch fails its callers with
// unavailable, sends resume when the database is back, and nothing acked is lost.
func TestHungDatabase(t *testing.T) {
	cfg, err := mysql.ParseDSN(tc.FreshDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	fz := newFreezer(t, cfg.Addr)
	cfg.Addr = fz.ln.Addr().String()
	e := startWith(t, repo.DBConfig{MySQLDSN: cfg.FormatDSN()}, repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: 1, StoreMaxBatch: 64, StoreTimeout: 2 * time.Second})
	owner := user(t, e, "o")
	g := group(t, e, owner)
	acked, err := store(e, g.Id, owner.Id, "before")
	if err != nil {
		t.Fatal(err)
	}

	fz.freeze()
	cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
	_, err = e.client.StoreMessage(cctx, &gochatv1.StoreMessageRequest{ConversationId: g.Id, SenderId: owner.Id, ClientMsgId: "during", ContentType: "text", Content: "x"})
	cancel()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a send while the database hangs: %v, want unavailable from im-repo (not the caller's own deadline)", err)
	}

	fz.thaw()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := store(e, g.Id, owner.Id, "during") // the client retries with the same id
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sends did not resume after the database came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	r, err := e.client.ListMessages(ctx, &gochatv1.ListMessagesRequest{ConversationId: g.Id, ViewerId: owner.Id, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	seqs := map[int64]bool{}
	for _, m := range r.Messages {
		seqs[m.Seq] = true
	}
	if !seqs[acked.Message.Seq] || len(seqs) != 2 {
		t.Fatalf("after the outage: seqs %v, want the acked %d and one more", seqs, acked.Message.Seq)
	}
}
