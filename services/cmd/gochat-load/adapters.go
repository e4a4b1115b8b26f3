package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// joinTimeout bounds a subscribe's answer and a handshake.
const joinTimeout = 30 * time.Second

// gochatAdapter speaks GoChat's client API: guests over HTTP, a group of
// members, a member sending over WebSocket; deliveries are message frames
// counted by (conversation_id, seq).
type gochatAdapter struct{ base string }

func (g *gochatAdapter) name() string { return "gochat" }

func (g *gochatAdapter) logins(n, parallel int) ([]guest, error) {
	out := make([]guest, n)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range out {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			gu, err := newGuest(g.base, i)
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			out[i] = gu
		}()
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return nil, e.(error)
	}
	return out, nil
}

func (g *gochatAdapter) connect(c guest) (*session, error) {
	s, err := dialSession("ws" + strings.TrimPrefix(g.base, "http") + "/v1/ws?token=" + c.token)
	if err != nil {
		return nil, err
	}
	err = s.readUntil(joinTimeout, func(b []byte) (bool, error) {
		var f struct {
			Type string          `json:"type"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			return false, fmt.Errorf("handshake: %w", err)
		}
		if f.Type != "hello" {
			return false, fmt.Errorf("first frame is %s, not hello: %s", f.Type, f.Data)
		}
		return true, nil
	})
	if err != nil {
		s.conn.Close()
		return nil, err
	}
	return s, nil
}

// groupBatch keeps a members request under the gateway's 64 KiB body limit.
const groupBatch = 500

func (g *gochatAdapter) group(pub guest, members []guest) (string, error) {
	ids := make([]string, len(members))
	for i, m := range members {
		ids[i] = m.id
	}
	first := ids[:min(groupBatch, len(ids))]
	var conv struct {
		ID string `json:"id"`
	}
	if err := g.call(pub.token, http.MethodPost, "/v1/groups", map[string]any{"name": "bench", "member_ids": first}, http.StatusCreated, &conv); err != nil {
		return "", fmt.Errorf("create a group of %d: %w", len(first)+1, err)
	}
	for rest := ids[len(first):]; len(rest) > 0; {
		batch := rest[:min(groupBatch, len(rest))]
		rest = rest[len(batch):]
		if err := g.call(pub.token, http.MethodPost, "/v1/groups/"+conv.ID+"/members", map[string]any{"user_ids": batch}, http.StatusOK, nil); err != nil {
			return "", fmt.Errorf("add %d members to the group (%d of %d in; the group limit is im-logic's --max-group-members): %w",
				len(batch), len(ids)-len(rest)-len(batch)+1, len(ids)+1, err)
		}
	}
	return conv.ID, nil
}

func (g *gochatAdapter) call(token, method, path string, body any, want int, out any) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, g.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}

func (g *gochatAdapter) join(*session, string) error { return nil } // members get every message of the group

func (g *gochatAdapter) publish(pub *session, group string, n int64) error {
	// The content carries the send time; the id is the sender's idempotency key.
	b := fmt.Appendf(nil, `{"type":"send","data":{"client_msg_id":"b%d","conversation_id":%q,"content":"t:%d"}}`, n, group, time.Now().UnixNano())
	return pub.write(b)
}

func (g *gochatAdapter) frame(b []byte, ev *frameEvents) {
	var f struct {
		Type string `json:"type"`
		Data struct {
			ConversationID string `json:"conversation_id"`
			Seq            int64  `json:"seq"`
			Content        string `json:"content"`
		} `json:"data"`
	}
	if json.Unmarshal(b, &f) != nil {
		return
	}
	switch f.Type {
	case "message":
		sent, _ := strconv.ParseInt(strings.TrimPrefix(f.Data.Content, "t:"), 10, 64)
		ev.deliveries = append(ev.deliveries, delivery{group: f.Data.ConversationID, key: f.Data.Seq, sentNs: sent})
	case "ack":
		ev.acks++
	case "error":
		ev.errors++
	case "pong":
		ev.keepalive = true
	default:
		ev.other = f.Type
	}
}

// centrifugoAdapter speaks Centrifugo's client protocol v2 in JSON over
// WebSocket (connect with a JWT, subscribe, publications pushed) and
// publishes through its server HTTP API; deliveries are counted by the
// channel's offset (history is on in the namespace).
type centrifugoAdapter struct {
	base, apiKey, namespace string
	secret                  []byte
	run                     string // tells this run's users and channel from another's
	http                    *http.Client
}

func newCentrifugoAdapter(base, secret, apiKey, namespace string) *centrifugoAdapter {
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	return &centrifugoAdapter{base: base, secret: []byte(secret), apiKey: apiKey, namespace: namespace, run: hex.EncodeToString(r),
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
}

func (c *centrifugoAdapter) name() string { return "centrifugo" }

// logins signs a connection token per user, as an application backend does:
// Centrifugo looks nothing up at connect time.
func (c *centrifugoAdapter) logins(n, _ int) ([]guest, error) {
	out := make([]guest, n)
	exp := time.Now().Add(2 * time.Hour).Unix()
	for i := range out {
		id := fmt.Sprintf("bench-%s-%d", c.run, i)
		out[i] = guest{id: id, token: hs256(c.secret, fmt.Sprintf(`{"sub":%q,"exp":%d}`, id, exp))}
	}
	return out, nil
}

// hs256 signs claims as a compact JWT with HMAC-SHA256.
func hs256(secret []byte, claims string) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString([]byte(claims))
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// centrifugoReply is one line of a server frame: a command's answer (id >
// 0), a push, or the empty ping.
type centrifugoReply struct {
	ID    uint32 `json:"id"`
	Error *struct {
		Code    uint32 `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Push *struct {
		Channel string `json:"channel"`
		Pub     *struct {
			Data struct {
				N int64 `json:"n"`
				T int64 `json:"t"`
			} `json:"data"`
			Offset int64 `json:"offset"`
		} `json:"pub"`
	} `json:"push"`
}

func (r *centrifugoReply) err() error {
	if r.Error == nil {
		return nil
	}
	return fmt.Errorf("centrifugo error %d: %s", r.Error.Code, r.Error.Message)
}

func (c *centrifugoAdapter) connect(g guest) (*session, error) {
	s, err := dialSession("ws" + strings.TrimPrefix(c.base, "http") + "/connection/websocket")
	if err != nil {
		return nil, err
	}
	if err := s.write(fmt.Appendf(nil, `{"id":1,"connect":{"token":%q,"name":"gochat-load"}}`, g.token)); err != nil {
		s.conn.Close()
		return nil, err
	}
	err = s.readUntil(joinTimeout, func(b []byte) (bool, error) {
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			var r centrifugoReply
			if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil || r.ID != 1 {
				continue
			}
			return true, r.err()
		}
		return false, nil
	})
	if err != nil {
		s.conn.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	return s, nil
}

func (c *centrifugoAdapter) group(guest, []guest) (string, error) {
	// Channels exist as soon as someone subscribes.
	return c.namespace + ":bench-" + c.run, nil
}

func (c *centrifugoAdapter) join(s *session, channel string) error {
	if err := s.write(fmt.Appendf(nil, `{"id":2,"subscribe":{"channel":%q}}`, channel)); err != nil {
		return err
	}
	t := time.NewTimer(joinTimeout)
	defer t.Stop()
	select {
	case err := <-s.replies:
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", channel, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("subscribe %s: no answer within %s", channel, joinTimeout)
	}
}

func (c *centrifugoAdapter) publish(_ *session, channel string, n int64) error {
	body := fmt.Appendf(nil, `{"channel":%q,"data":{"n":%d,"t":%d}}`, channel, n, time.Now().UnixNano())
	req, err := http.NewRequest(http.MethodPost, c.base+"/api/publish", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", c.apiKey)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r struct {
		Error *struct {
			Code    uint32 `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
		Result json.RawMessage `json:"result"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &r) != nil {
		return fmt.Errorf("publish: %s %s", resp.Status, bytes.TrimSpace(raw))
	}
	if r.Error != nil {
		return fmt.Errorf("publish: centrifugo error %d: %s", r.Error.Code, r.Error.Message)
	}
	if r.Result == nil {
		return errors.New("publish: no result in the answer")
	}
	return nil
}

// pingLine is the empty reply: Centrifugo's ping, and the client's pong.
var pingLine = []byte("{}")

func (c *centrifugoAdapter) frame(b []byte, ev *frameEvents) {
	// Several replies may come in one frame, one JSON object per line.
	pings, lines := 0, 0
	defer func() { ev.keepalive = lines > 0 && pings == lines }()
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		lines++
		if bytes.Equal(line, pingLine) {
			ev.reply = pingLine
			pings++
			continue
		}
		var r centrifugoReply
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		if r.ID > 0 {
			ev.replyID, ev.replyErr = r.ID, r.err()
			continue
		}
		if r.Push != nil && r.Push.Pub != nil {
			key := r.Push.Pub.Offset
			if key == 0 { // a namespace without history has no offsets: the message number is the key
				key = r.Push.Pub.Data.N
			}
			ev.deliveries = append(ev.deliveries, delivery{group: r.Push.Channel, key: key, sentNs: r.Push.Pub.Data.T})
		} else if r.Push != nil {
			ev.other = "push"
		}
	}
}
