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
	"slices"
	"strconv"
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

// latencies are durations, gathered once the readers stopped.
type latencies struct {
	d []time.Duration
}

func (l *latencies) quantile(q float64) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	if !slices.IsSorted(l.d) {
		slices.Sort(l.d)
	}
	return l.d[int(q*float64(len(l.d)-1))]
}

func sendMain(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	base := fs.String("url", "http://127.0.0.1:8080", "the gateway's base URL")
	pairs := fs.Int("pairs", 50, "pairs of users; in each, one sends to the other over WebSocket")
	rate := fs.Float64("rate", 40, "sends per second per sender (the gateway allows 50 by default)")
	duration := fs.Duration("duration", 20*time.Second, "how long to send")
	size := fs.Int("size", 100, "content bytes per message")
	ping := fs.Duration("ping", 20*time.Second, "every session pings this often, as clients must (the gateway drops a session silent for 3 of its heartbeats, 75 s by default)")
	aligned := fs.Bool("aligned", false, "every sender sends at the same instant, a burst of --pairs sends a tick (by default their ticks are spread evenly over the period, as independent people type)")
	_ = fs.Parse(args)
	o := sendOpts{base: *base, pairs: *pairs, rate: *rate, duration: *duration, size: *size, aligned: *aligned, ping: *ping}
	// A marker for scripts that measure the servers' CPU over the sending
	// only, without the setup (hack/bench-send.sh).
	o.onSending = func() { fmt.Println("sending") }
	r, err := runSend(o)
	if err != nil {
		return err
	}
	phase := "ticks spread over the period"
	if o.aligned {
		phase = "ticks aligned"
	}
	fmt.Printf("senders %d at %.0f/s each for %s, %d-byte messages, %s\n", o.pairs, o.rate, o.duration, o.size, phase)
	fmt.Printf("sent %d (%.0f/s), acked %d, errors %d, delivered %d unique (conversation_id, seq) (%.0f/s over %s), %d duplicate frames, %d acked but not delivered\n",
		r.sent, float64(r.sent)/r.sendTime.Seconds(), r.acked, r.errors, r.delivered, float64(r.delivered)/r.total.Seconds(), r.total.Round(time.Millisecond), r.duplicates, r.missing)
	if r.errors > 0 {
		fmt.Printf("errors by code: %v\n", r.errCodes)
	}
	if r.lastAck > 0 {
		fmt.Printf("acked %.0f/s until the last ack, %s after the first send\n", float64(r.acked)/r.lastAck.Seconds(), r.lastAck.Round(time.Millisecond))
	}
	fmt.Printf("ack latency      p50 %s  p99 %s  max %s\n", r.ackLat.quantile(0.5).Round(time.Microsecond*100), r.ackLat.quantile(0.99).Round(time.Microsecond*100), r.ackLat.quantile(1).Round(time.Microsecond*100))
	fmt.Printf("delivery latency p50 %s  p99 %s  max %s\n", r.deliverLat.quantile(0.5).Round(time.Microsecond*100), r.deliverLat.quantile(0.99).Round(time.Microsecond*100), r.deliverLat.quantile(1).Round(time.Microsecond*100))
	if r.frames > 0 {
		fmt.Printf("load tool: %.1f µs CPU per received frame (%d frames; sending included)\n", float64(r.toolCPU.Microseconds())/float64(r.frames), r.frames)
	}
	if r.missing > 0 {
		return fmt.Errorf("%d acked messages were not delivered to their connected recipient", r.missing)
	}
	return nil
}

// senderPhase is how long sender i of n waits before its first tick.
// Senders started together tick together: at 1,000 senders a burst of 1,000
// sends every period, whose latency is the time to drain the burst, not the
// path's at that rate. People typing are not in step, so unless aligned,
// sender i starts i/n of a period late.
func senderPhase(i, n int, period time.Duration, aligned bool) time.Duration {
	if aligned || n == 0 {
		return 0
	}
	return period * time.Duration(i) / time.Duration(n)
}

type sendOpts struct {
	base      string
	pairs     int
	rate      float64 // per sender
	duration  time.Duration
	size      int
	aligned   bool          // all senders tick together instead of spread over the period
	ping      time.Duration // how often every session pings (0: never)
	onSending func()        // called once the setup is done and the sending starts
}

type sendResult struct {
	sent, acked, errors, delivered, duplicates, frames int64
	errCodes                                           map[string]int64
	missing                                            int
	// lastAck is when the last ack came, from the start: the acked rate
	// over it is what the path stored, without the wait for acks that
	// never come after the last one.
	sendTime, total, toolCPU, lastAck time.Duration
	ackLat, deliverLat                *latencies
}

// runSend has pairs of guests, each in a direct conversation over
// WebSocket, send for the duration, then waits up to 30 s for the acks and
// deliveries, counted by unique (conversation_id, seq).
func runSend(o sendOpts) (sendResult, error) {
	ps := make([]*sendPair, o.pairs)
	for i := range ps {
		a, err := newGuest(o.base, 2*i)
		if err != nil {
			return sendResult{}, err
		}
		b, err := newGuest(o.base, 2*i+1)
		if err != nil {
			return sendResult{}, err
		}
		conv, err := directConversation(o.base, a, b)
		if err != nil {
			return sendResult{}, err
		}
		wsURL := "ws" + strings.TrimPrefix(o.base, "http") + "/v1/ws?token="
		from, err := dialSession(wsURL + a.token)
		if err != nil {
			return sendResult{}, err
		}
		to, err := dialSession(wsURL + b.token)
		if err != nil {
			return sendResult{}, err
		}
		ps[i] = &sendPair{conv: conv, from: from, to: to, acked: map[int64]bool{}, delivered: map[int64]bool{}}
	}

	var (
		sent, failed atomic.Int64
		wg           sync.WaitGroup
	)
	// Each pair's readers keep their own counts (one conversation each):
	// nothing is shared between the readers while they run.
	for _, p := range ps {
		// One deadline for the whole run: a deadline per frame would cost a
		// timer update per frame.
		deadline := time.Now().Add(o.duration + time.Minute)
		_ = p.from.conn.SetReadDeadline(deadline)
		_ = p.to.conn.SetReadDeadline(deadline)
		wg.Add(2)
		go func() {
			defer wg.Done()
			p.read(p.from, p.onSenderFrame)
		}()
		go func() {
			defer wg.Done()
			p.read(p.to, p.onRecipientFrame)
		}()
	}

	// A recipient only reads: without its pings the gateway would count it
	// gone after 3 heartbeats and its deliveries would stop.
	sessions := make([]*session, 0, 2*len(ps))
	for _, p := range ps {
		sessions = append(sessions, p.from, p.to)
	}
	stopPings := keepAlive(sessions, o.ping)
	if o.onSending != nil {
		o.onSending()
	}
	m := startMeasure(nil)
	start := time.Now()
	end := start.Add(o.duration)
	var senders sync.WaitGroup
	period := time.Duration(float64(time.Second) / o.rate)
	for i, p := range ps {
		senders.Add(1)
		go func() {
			defer senders.Done()
			time.Sleep(senderPhase(i, len(ps), period, o.aligned))
			tick := time.NewTicker(period)
			defer tick.Stop()
			var b []byte
			for n := 0; time.Now().Before(end); n++ {
				<-tick.C
				b = appendSend(b[:0], p.conv, i, n, time.Now().UnixNano(), o.size)
				if err := p.from.write(b); err != nil {
					failed.Add(1)
					return
				}
				sent.Add(1)
			}
		}()
	}
	senders.Wait()
	sendTime := time.Since(start)
	settled := func() bool {
		var acked, errs, delivered int64
		for _, p := range ps {
			a, e, d := p.counts()
			acked, errs, delivered = acked+a, errs+e, delivered+d
		}
		return acked+errs+failed.Load() >= sent.Load() && delivered >= acked
	}
	deadline := time.Now().Add(30 * time.Second)
	for !settled() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	total := time.Since(start)
	toolCPU := m.end().tool
	stopPings()
	for _, p := range ps {
		p.from.conn.Close()
		p.to.conn.Close()
	}
	wg.Wait()

	r := sendResult{sent: sent.Load(), errors: failed.Load(), sendTime: sendTime, total: total, toolCPU: toolCPU, ackLat: &latencies{}, deliverLat: &latencies{}}
	for _, p := range ps {
		r.acked += int64(len(p.acked))
		r.delivered += int64(len(p.delivered))
		r.duplicates += p.duplicates
		r.errors += p.errors.Load()
		for code, n := range p.errCodes {
			if r.errCodes == nil {
				r.errCodes = map[string]int64{}
			}
			r.errCodes[code] += n
		}
		if !p.lastAck.IsZero() {
			r.lastAck = max(r.lastAck, p.lastAck.Sub(start))
		}
		r.frames += p.frames.Load()
		r.ackLat.d = append(r.ackLat.d, p.ackLat...)
		r.deliverLat.d = append(r.deliverLat.d, p.deliverLat...)
		// Every acked (conversation_id, seq) must have been delivered.
		for seq := range p.acked {
			if !p.delivered[seq] {
				r.missing++
			}
		}
	}
	return r, nil
}

// sendPair is one sender and its recipient, in their direct conversation.
// Each map and slice is written by one reader goroutine only and read once
// both have stopped; the counts are polled while they run.
type sendPair struct {
	conv     string
	from, to *session

	// Delivery is counted by unique (conversation_id, seq), never by
	// frames: a redelivered message is one message. The conversation is
	// the pair's, so the seq is the key.
	acked, delivered           map[int64]bool
	ackLat, deliverLat         []time.Duration
	nAcked, nDelivered, errors atomic.Int64
	errCodes                   map[string]int64 // the sender's reader's, read after it ends
	lastAck                    time.Time        // the same
	duplicates                 int64
	frames                     atomic.Int64
}

func (p *sendPair) counts() (acked, errs, delivered int64) {
	return p.nAcked.Load(), p.errors.Load(), p.nDelivered.Load()
}

// record counts a message of the pair's conversation once by its seq and
// times it from the send time in its content; false if it was seen.
func (p *sendPair) record(m *sentMessage, seen map[int64]bool, lat *[]time.Duration, n *atomic.Int64) bool {
	if m.ConversationID != p.conv || m.Seq <= 0 {
		return true
	}
	if seen[m.Seq] {
		return false
	}
	seen[m.Seq] = true
	if t, ok := m.sentAt(); ok {
		*lat = append(*lat, time.Since(t))
	}
	n.Add(1)
	return true
}

// sendFrame is what the tool reads of a frame: an ack carries the stored
// message, a message frame is the message, an error frame its code. The
// content starts with the send time.
type sendFrame struct {
	Type string `json:"type"`
	Data struct {
		sentMessage
		Message ackMessage `json:"message"`
		Code    string     `json:"code"`
	} `json:"data"`
}

// ackMessage is an ack's "message", the stored message. An error frame's
// "message" is its text: read as nothing, not as a failed decode (which
// dropped the whole error frame, so that refused sends went uncounted and
// the tool waited for their acks).
type ackMessage struct{ m *sentMessage }

func (a *ackMessage) UnmarshalJSON(b []byte) error {
	if len(b) == 0 || b[0] != '{' {
		return nil
	}
	a.m = new(sentMessage)
	return json.Unmarshal(b, a.m)
}

// decodeSendFrame reads a frame; false for one that is not JSON.
func decodeSendFrame(b []byte) (*sendFrame, bool) {
	var f sendFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, false
	}
	return &f, true
}

type sentMessage struct {
	ConversationID string `json:"conversation_id"`
	Seq            int64  `json:"seq"`
	Content        string `json:"content"`
}

// sentAt is the send time a message's content starts with ("t:<unix ns> ").
func (m *sentMessage) sentAt() (time.Time, bool) {
	c, ok := strings.CutPrefix(m.Content, "t:")
	if !ok {
		return time.Time{}, false
	}
	if i := strings.IndexByte(c, ' '); i >= 0 {
		c = c[:i]
	}
	ns, err := strconv.ParseInt(c, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, ns), true
}

// appendSend appends a send frame whose content is the send time padded to
// size bytes.
func appendSend(b []byte, conv string, sender, n int, nowNs int64, size int) []byte {
	b = fmt.Appendf(b, `{"type":"send","data":{"client_msg_id":"p%d-%d","conversation_id":%q,"content":"t:%d `, sender, n, conv, nowNs)
	pad := size - len(fmt.Sprint(nowNs)) - 3
	for range max(pad, 0) {
		b = append(b, 'x')
	}
	return append(b, `"}}`...)
}

func (p *sendPair) read(s *session, onFrame func(*sendFrame)) {
	var buf []byte
	for {
		b, err := s.readFrame(buf)
		if err != nil {
			return
		}
		buf = b
		p.frames.Add(1)
		if f, ok := decodeSendFrame(b); ok {
			onFrame(f)
		}
	}
}

func (p *sendPair) onSenderFrame(f *sendFrame) {
	switch f.Type {
	case "ack":
		if m := f.Data.Message.m; m != nil && p.record(m, p.acked, &p.ackLat, &p.nAcked) {
			p.lastAck = time.Now()
		}
	case "error":
		p.errors.Add(1)
		if p.errCodes == nil {
			p.errCodes = map[string]int64{}
		}
		p.errCodes[f.Data.Code]++
	}
}

func (p *sendPair) onRecipientFrame(f *sendFrame) {
	if f.Type == "message" && !p.record(&f.Data.sentMessage, p.delivered, &p.deliverLat, &p.nDelivered) {
		p.duplicates++
	}
}
