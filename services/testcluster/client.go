package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/gochat/gochat/services/internal/clientapi"
)

// API calls the client HTTP API.
type API struct {
	Base  string
	Token string
	User  clientapi.User
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	Code   string
	Msg    string
}

func (e *APIError) Error() string { return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Msg) }

// Do sends a JSON request and decodes a JSON answer into out (nil: ignore).
// It returns the status and an *APIError for a non-2xx status.
func (a *API) Do(method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			rd = bytes.NewReader(b)
		default:
			j, err := json.Marshal(body)
			if err != nil {
				return 0, err
			}
			rd = bytes.NewReader(j)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error clientapi.ErrorData `json:"error"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return resp.StatusCode, fmt.Errorf("HTTP %d with a body that is not an API error: %q", resp.StatusCode, raw)
		}
		return resp.StatusCode, &APIError{Status: resp.StatusCode, Code: e.Error.Code, Msg: e.Error.Message}
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s %s answer %q: %w", method, path, raw, err)
		}
	}
	return resp.StatusCode, nil
}

// Must is Do that fails the test on any error.
func (a *API) Must(t testing.TB, method, path string, body, out any) int {
	t.Helper()
	status, err := a.Do(method, path, body, out)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return status
}

type authAnswer struct {
	User      clientapi.User `json:"user"`
	Token     string         `json:"token"`
	ExpiresAt clientapi.Time `json:"expires_at"`
}

// Register creates a user with password "password-<username>" and returns its API.
func Register(t testing.TB, base, username string) *API {
	t.Helper()
	a := &API{Base: base}
	var r authAnswer
	if st := a.Must(t, http.MethodPost, "/v1/auth/register", map[string]string{"username": username, "password": "password-" + username}, &r); st != http.StatusCreated {
		t.Fatalf("register %s: status %d", username, st)
	}
	a.Token, a.User = r.Token, r.User
	return a
}

// WS is a WebSocket client of the client API.
type WS struct {
	t      testing.TB
	conn   net.Conn
	r      io.Reader
	mu     sync.Mutex
	buf    []Frame
	notify chan struct{}
	closed chan struct{}
	// CloseCode is the status of the server's close frame, once closed.
	CloseCode ws.StatusCode
	Hello     clientapi.Hello
}

// Frame is one frame from the server.
type Frame struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// Decode decodes the frame's data.
func (f Frame) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(f.Data, v); err != nil {
		t.Fatalf("decode %s frame %s: %v", f.Type, f.Data, err)
	}
}

// DialWS connects with the token in the query string and waits for hello.
func DialWS(t testing.TB, wsURL, token string) *WS {
	t.Helper()
	c, err := TryDialWS(wsURL, token)
	if err != nil {
		t.Fatalf("dial %s: %v", wsURL, err)
	}
	c.t = t
	t.Cleanup(c.Close)
	f := c.Next(t, "hello", 20*time.Second)
	f.Decode(t, &c.Hello)
	return c
}

// TryDialWS connects without waiting for hello.
func TryDialWS(wsURL, token string) (*WS, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, wsURL+"?token="+token)
	if err != nil {
		return nil, err
	}
	c := &WS{conn: conn, r: conn, notify: make(chan struct{}, 1), closed: make(chan struct{})}
	if br != nil {
		c.r = br // frames the server sent right after the handshake (hello) may be buffered here
	}
	go c.readLoop()
	return c, nil
}

func (c *WS) readLoop() {
	defer close(c.closed)
	for {
		msgs, err := wsutil.ReadServerMessage(c.r, nil)
		if err != nil {
			var ce wsutil.ClosedError
			if asClosed(err, &ce) {
				c.mu.Lock()
				c.CloseCode = ce.Code
				c.mu.Unlock()
			}
			return
		}
		for _, m := range msgs {
			if m.OpCode == ws.OpClose {
				code, _ := ws.ParseCloseFrameData(m.Payload)
				c.mu.Lock()
				c.CloseCode = code
				c.mu.Unlock()
				return
			}
			if m.OpCode != ws.OpText {
				continue
			}
			var f Frame
			if err := json.Unmarshal(m.Payload, &f); err != nil {
				continue
			}
			c.mu.Lock()
			c.buf = append(c.buf, f)
			c.mu.Unlock()
			select {
			case c.notify <- struct{}{}:
			default:
			}
		}
	}
}

func asClosed(err error, ce *wsutil.ClosedError) bool {
	e, ok := err.(wsutil.ClosedError)
	if ok {
		*ce = e
	}
	return ok
}

// Send writes one frame {"type": typ, "data": data}.
func (c *WS) Send(typ string, data any) error {
	b, err := json.Marshal(map[string]any{"type": typ, "data": data})
	if err != nil {
		return err
	}
	return c.SendRaw(b)
}

// SendRaw writes a text frame as is.
func (c *WS) SendRaw(b []byte) error {
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return wsutil.WriteClientText(c.conn, b)
}

// Next returns the first buffered or arriving frame of type typ (any type
// when typ is ""), leaving other frames buffered, or fails the test after timeout.
func (c *WS) Next(t testing.TB, typ string, timeout time.Duration) Frame {
	t.Helper()
	f, ok := c.Wait(typ, timeout)
	if !ok {
		c.mu.Lock()
		var got []string
		for _, b := range c.buf {
			got = append(got, b.Type+" "+string(b.Data))
		}
		c.mu.Unlock()
		t.Fatalf("no %q frame within %s; buffered: %v", typ, timeout, got)
	}
	return f
}

// Wait is Next without failing.
func (c *WS) Wait(typ string, timeout time.Duration) (Frame, bool) {
	deadline := time.After(timeout)
	for {
		if f, ok := c.take(typ); ok {
			return f, true
		}
		select {
		case <-c.notify:
		case <-c.closed:
			return c.take(typ) // what arrived before the close
		case <-deadline:
			return Frame{}, false
		}
	}
}

// take removes and returns the first buffered frame of type typ ("" any).
func (c *WS) take(typ string) (Frame, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, f := range c.buf {
		if typ == "" || f.Type == typ {
			c.buf = append(c.buf[:i:i], c.buf[i+1:]...)
			return f, true
		}
	}
	return Frame{}, false
}

// Drain returns and forgets every buffered frame of type typ.
func (c *WS) Drain(typ string) []Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, keep []Frame
	for _, f := range c.buf {
		if f.Type == typ {
			out = append(out, f)
		} else {
			keep = append(keep, f)
		}
	}
	c.buf = keep
	return out
}

// Closed waits for the server to close the connection and returns its status.
func (c *WS) Closed(timeout time.Duration) (ws.StatusCode, bool) {
	select {
	case <-c.closed:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.CloseCode, true
	case <-time.After(timeout):
		return 0, false
	}
}

// Conn is the underlying connection (to write raw frames).
func (c *WS) Conn() net.Conn { return c.conn }

// Close closes the connection.
func (c *WS) Close() { _ = c.conn.Close() }

// Messages waits until n "message" frames have arrived and returns them in arrival order.
func (c *WS) Messages(t testing.TB, n int, timeout time.Duration) []clientapi.Message {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out []clientapi.Message
	for len(out) < n {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("got %d of %d message frames within %s", len(out), n, timeout)
		}
		f := c.Next(t, "message", left)
		var m clientapi.Message
		f.Decode(t, &m)
		out = append(out, m)
	}
	return out
}
