package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/gochat/gochat/services/internal/clientapi"
	tc "github.com/gochat/gochat/services/testcluster"
)

// TestDevRestart: `gochat dev` keeps users, history and seqs in its data dir.
func TestDevRestart(t *testing.T) {
	dir := t.TempDir()
	dev, base := startDev(t, dir)
	a, b := tc.Register(t, base, uniq("keep")), tc.Register(t, base, uniq("keep"))
	conv := direct(t, a, b)
	for i := 0; i < 3; i++ {
		a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": fmt.Sprint("k", i), "content": fmt.Sprint("kept ", i)}, nil)
	}
	dev.Stop()
	certBefore := readFile(t, filepath.Join(dir, "tls", "gateway.crt"))

	_, base = startDev(t, dir)
	// The dev CA and certificates are kept and reused, not made anew.
	if certAfter := readFile(t, filepath.Join(dir, "tls", "gateway.crt")); certAfter != certBefore {
		t.Fatal("gochat dev issued a new gateway certificate on restart")
	}
	var login struct {
		Token string `json:"token"`
	}
	anon := &tc.API{Base: base}
	anon.Must(t, http.MethodPost, "/v1/auth/login", map[string]string{"username": a.User.Username, "password": "password-" + a.User.Username}, &login)
	a = &tc.API{Base: base, Token: a.Token, User: a.User} // tokens survive too: the secret is kept
	var h page
	a.Must(t, http.MethodGet, "/v1/conversations/"+conv.ID+"/messages?after_seq=0", nil, &h)
	if len(h.Messages) != 3 || h.Messages[2].Content != "kept 2" {
		t.Fatalf("history after restart: %+v", h.Messages)
	}
	var m clientapi.Message
	a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": "k-new", "content": "after"}, &m)
	if m.Seq != 4 {
		t.Fatalf("seq after restart %d, want 4", m.Seq)
	}
	var retry clientapi.Message
	a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": "k0", "content": "kept 0"}, &retry)
	if retry.Seq != 1 {
		t.Fatalf("a retry from before the restart got seq %d, want 1", retry.Seq)
	}
	// The other user's live connection works on the restarted process.
	wb := tc.DialWS(t, "ws"+strings.TrimPrefix(base, "http")+"/v1/ws", b.Token)
	a.Must(t, http.MethodPost, "/v1/conversations/"+conv.ID+"/messages", map[string]string{"client_msg_id": "k-live", "content": "live"}, nil)
	for { // seq 4 may still be on its way too: pushes are at least once
		if got := wb.Messages(t, 1, wait)[0]; got.Seq == 5 {
			break
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDevRealBackends: `gochat dev` on this machine's MariaDB and Redis and
// a Kafka broker process, chosen by flags.
func TestDevRealBackends(t *testing.T) {
	dsn := tc.FreshDatabase(t)
	rdb, prefix := tc.Redis(t)
	kafkaAddr := tc.FreePort(t)
	k := tc.Start(t, "kafka", nil, "dev-kafka", "--addr", kafkaAddr)
	tc.WaitTCP(t, kafkaAddr, k)
	topicPrefix := tc.RandomName("dev")
	_, base := startDev(t, t.TempDir(), "--mysql-dsn", dsn, "--redis-addr", tc.RedisAddr(), "--redis-prefix", prefix,
		"--kafka-brokers", kafkaAddr, "--kafka-topic-prefix", topicPrefix)

	a, b := tc.Register(t, base, uniq("real")), tc.Register(t, base, uniq("real"))
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/v1/ws"
	wa, wb := tc.DialWS(t, wsURL, a.Token), tc.DialWS(t, wsURL, b.Token)
	ack := send(t, wa, map[string]any{"client_msg_id": "r1", "to_user_id": b.User.ID, "content": "over real backends"})
	if got := wb.Messages(t, 1, wait)[0]; got.ID != ack.Message.ID {
		t.Fatalf("pushed %+v", got)
	}

	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var content string
	if err := db.QueryRow("SELECT content FROM messages WHERE id = ?", ack.Message.ID).Scan(&content); err != nil || content != "over real backends" {
		t.Fatalf("message in MariaDB: %q %v", content, err)
	}
	if n, err := rdb.Exists(context.Background(), prefix+"presence:"+b.User.ID).Result(); err != nil || n != 1 {
		t.Fatalf("presence in Redis: %d %v", n, err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	topics, err := kadm.NewClient(cl).ListTopics(context.Background(), topicPrefix+".messages")
	if err != nil || !topics.Has(topicPrefix+".messages") {
		t.Fatalf("topic on the Kafka broker: %v %v", topics.Names(), err)
	}
}
