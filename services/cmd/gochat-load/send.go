package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

type guest struct {
	id, token string
}

func newGuest(base string, i int) (guest, error) {
	body, _ := json.Marshal(map[string]string{"nickname": fmt.Sprintf("send-%d", i)})
	resp, err := http.Post(base+"/v1/auth/guest", "application/json", bytes.NewReader(body))
	if err != nil {
		return guest{}, err
	}
	defer resp.Body.Close()
	var r struct {
		User  struct{ ID string } `json:"user"`
		Token string              `json:"token"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &r) != nil {
		return guest{}, fmt.Errorf("guest login: %s %s", resp.Status, b)
	}
	return guest{id: r.User.ID, token: r.Token}, nil
}

func directConversation(base string, a, b guest) (string, error) {
	body, _ := json.Marshal(map[string]string{"user_id": b.id})
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/conversations/direct", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var c struct{ ID string }
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &c) != nil {
		return "", fmt.Errorf("direct conversation: %s %s", resp.Status, raw)
	}
	return c.ID, nil
}

type wsConn struct {
	conn net.Conn
	r    io.ReadWriter
	mu   sync.Mutex
}

func dialWS(base, token string) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/v1/ws?token="+token)
	if err != nil {
		return nil, err
	}
	c := &wsConn{conn: conn, r: conn}
	if br != nil {
		c.r = struct {
			io.Reader
			io.Writer
		}{br, conn}
	}
	return c, nil
}

func (c *wsConn) send(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return wsutil.WriteClientText(c.conn, b)
}

// latencies collects durations; quantiles are read once at the end.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	return l.d[int(q*float64(len(l.d)-1))]
}

func sendMain(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	base := fs.String("url", "http://127.0.0.1:8080", "the gateway's base URL")
	pairs := fs.Int("pairs", 50, "pairs of users; in each, one sends to the other over WebSocket")
	rate := fs.Float64("rate", 40, "sends per second per sender (the gateway allows 50 by default)")
	duration := fs.Duration("duration", 20*time.Second, "how long to send")
	size := fs.Int("size", 100, "content bytes per message")
	_ = fs.Parse(args)

	type pair struct {
		conv     string
		from, to *wsConn
	}
	ps := make([]pair, *pairs)
	for i := range ps {
		a, err := newGuest(*base, 2*i)
		if err != nil {
			return err
		}
		b, err := newGuest(*base, 2*i+1)
		if err != nil {
			return err
		}
		conv, err := directConversation(*base, a, b)
		if err != nil {
			return err
		}
		from, err := dialWS(*base, a.token)
		if err != nil {
			return err
		}
		to, err := dialWS(*base, b.token)
		if err != nil {
			return err
		}
		ps[i] = pair{conv: conv, from: from, to: to}
	}

	var (
		sentAt              sync.Map // client_msg_id -> time.Time
		sent, acked, failed atomic.Int64
		// Delivery is counted by unique (conversation_id, seq), never by
		// frames: a redelivered message is one message.
		ackedSeqs, deliveredSeqs sync.Map // "conversation_id/seq" -> struct{}
		delivered, duplicates    atomic.Int64
		ackLat, deliverLat       latencies
		wg                       sync.WaitGroup
	)
	seqKey := func(data json.RawMessage) (string, bool) {
		var d struct {
			ConversationID string `json:"conversation_id"`
			Seq            int64  `json:"seq"`
			Message        *struct {
				ConversationID string `json:"conversation_id"`
				Seq            int64  `json:"seq"`
			} `json:"message"`
		}
		if json.Unmarshal(data, &d) != nil {
			return "", false
		}
		if d.Message != nil { // an ack carries the stored message
			d.ConversationID, d.Seq = d.Message.ConversationID, d.Message.Seq
		}
		if d.ConversationID == "" || d.Seq <= 0 {
			return "", false
		}
		return fmt.Sprintf("%s/%d", d.ConversationID, d.Seq), true
	}
	type frame struct {
		Type string          `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	read := func(c *wsConn, onFrame func(frame)) {
		defer wg.Done()
		for {
			_ = c.conn.SetReadDeadline(time.Now().Add(*duration + 30*time.Second))
			msg, err := wsutil.ReadServerText(c.r)
			if err != nil {
				return
			}
			var f frame
			if json.Unmarshal(msg, &f) == nil {
				onFrame(f)
			}
		}
	}
	// since is how long ago the message a frame names (by client_msg_id) was sent.
	since := func(data json.RawMessage) (time.Duration, bool) {
		var d struct {
			ClientMsgID string `json:"client_msg_id"`
		}
		_ = json.Unmarshal(data, &d)
		t, ok := sentAt.Load(d.ClientMsgID)
		if !ok {
			return 0, false
		}
		return time.Since(t.(time.Time)), true
	}
	for _, p := range ps {
		wg.Add(2)
		go read(p.from, func(f frame) {
			switch f.Type {
			case "ack":
				k, ok := seqKey(f.Data)
				if !ok {
					return
				}
				if _, dup := ackedSeqs.LoadOrStore(k, struct{}{}); dup {
					return
				}
				if d, ok := since(f.Data); ok {
					ackLat.add(d)
				}
				acked.Add(1)
			case "error":
				failed.Add(1)
			}
		})
		go read(p.to, func(f frame) {
			if f.Type != "message" {
				return
			}
			k, ok := seqKey(f.Data)
			if !ok {
				return
			}
			if _, dup := deliveredSeqs.LoadOrStore(k, struct{}{}); dup {
				duplicates.Add(1)
				return
			}
			if d, ok := since(f.Data); ok {
				deliverLat.add(d)
			}
			delivered.Add(1)
		})
	}

	content := strings.Repeat("x", *size)
	// A marker for scripts that measure the servers' CPU over the sending
	// only, without the setup (hack/bench-send.sh).
	fmt.Println("sending")
	start := time.Now()
	end := start.Add(*duration)
	var senders sync.WaitGroup
	for i, p := range ps {
		senders.Add(1)
		go func() {
			defer senders.Done()
			tick := time.NewTicker(time.Duration(float64(time.Second) / *rate))
			defer tick.Stop()
			for n := 0; time.Now().Before(end); n++ {
				<-tick.C
				id := fmt.Sprintf("p%d-%d", i, n)
				b, _ := json.Marshal(map[string]any{"type": "send", "data": map[string]any{"client_msg_id": id, "conversation_id": p.conv, "content": content}})
				sentAt.Store(id, time.Now())
				if err := p.from.send(b); err != nil {
					failed.Add(1)
					return
				}
				sent.Add(1)
			}
		}()
	}
	senders.Wait()
	sendTime := time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	for (acked.Load()+failed.Load() < sent.Load() || delivered.Load() < acked.Load()) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	total := time.Since(start)
	for _, p := range ps {
		p.from.conn.Close()
		p.to.conn.Close()
	}
	wg.Wait()
	fmt.Printf("senders %d at %.0f/s each for %s, %d-byte messages\n", *pairs, *rate, duration.String(), *size)
	// Every acked (conversation_id, seq) must have been delivered.
	missing := 0
	ackedSeqs.Range(func(k, _ any) bool {
		if _, ok := deliveredSeqs.Load(k); !ok {
			missing++
		}
		return true
	})
	fmt.Printf("sent %d (%.0f/s), acked %d, errors %d, delivered %d unique (conversation_id, seq) (%.0f/s over %s), %d duplicate frames, %d acked but not delivered\n",
		sent.Load(), float64(sent.Load())/sendTime.Seconds(), acked.Load(), failed.Load(), delivered.Load(), float64(delivered.Load())/total.Seconds(), total.Round(time.Millisecond), duplicates.Load(), missing)
	fmt.Printf("ack latency      p50 %s  p99 %s  max %s\n", ackLat.quantile(0.5).Round(time.Microsecond*100), ackLat.quantile(0.99).Round(time.Microsecond*100), ackLat.quantile(1).Round(time.Microsecond*100))
	fmt.Printf("delivery latency p50 %s  p99 %s  max %s\n", deliverLat.quantile(0.5).Round(time.Microsecond*100), deliverLat.quantile(0.99).Round(time.Microsecond*100), deliverLat.quantile(1).Round(time.Microsecond*100))
	if missing > 0 {
		return fmt.Errorf("%d acked messages were not delivered to their connected recipient", missing)
	}
	return nil
}
