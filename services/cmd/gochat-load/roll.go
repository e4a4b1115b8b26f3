package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws/wsutil"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/launch"
	"github.com/gochat/gochat/services/internal/rpc"
)

// The roll scenario: clients in pairs, each pair a direct conversation whose
// two members keep sending to each other, spread over several gateways. They
// follow reconnect frames as the contract says (wait after_ms, reconnect to
// another gateway, sync from the last contiguous seq they hold), while the
// tool drains the gateways one after another (--admin) or watches a roll
// done by someone else. Delivery is counted by unique (conversation_id, seq).

type rollOpts struct {
	urls         []string
	admins       []string
	adminID      *rpc.Identity // the admin credential Drain and Stats are called with
	clients      int
	rate         float64
	warmup       time.Duration
	after        time.Duration
	window       time.Duration
	timeout      time.Duration
	waitReplaced time.Duration
	observe      time.Duration
	parallel     int
	ping         time.Duration
}

// sample is one delivered message: when it was sent and how long it took.
type sample struct {
	sent int64 // Unix ns
	lat  time.Duration
}

type rollClient struct {
	idx  int
	g    guest
	peer *rollClient
	conv string
	r    *roll

	mu         sync.Mutex
	conn       *wsConn
	gw         int
	leaving    bool // a reconnect frame came: the close that follows is expected
	gen        int  // connection generation, so a stale reader does nothing
	held       map[int64]bool
	contig     int64 // every seq up to here is held
	fromPeer   map[int64]int
	acked      []int64 // seqs of this client's own messages, acked
	ackedAt    []time.Time
	samples    []sample
	reconnects int
	unexpected int
	errors     int
	sendN      int
	syncsDone  int // sync answers with has_more false
	backoff    time.Duration
}

type roll struct {
	o       rollOpts
	clients []*rollClient
	stop    chan struct{}
	wg      sync.WaitGroup

	mu          sync.Mutex
	reconnectAt []time.Time
	closeCauses map[string]int // unannounced closes by what ended the read
	rollStart   time.Time
	frames      atomic.Int64
	acks        atomic.Int64
	finalSyncAt time.Time
	cpuProfile  string
}

func rollMain(args []string) error {
	fs := flag.NewFlagSet("roll", flag.ExitOnError)
	urls := fs.String("urls", "http://127.0.0.1:8080", "the gateways' base URLs, comma-separated; clients start spread over them and reconnect to the next one")
	admins := fs.String("admin", "", "the gateways' admin gRPC addresses, in --urls order: drain them one after another (empty: only watch a roll done by someone else)")
	o := rollOpts{}
	fs.IntVar(&o.clients, "clients", 1000, "live clients (an even number: they chat in pairs)")
	fs.Float64Var(&o.rate, "rate", 0.2, "sends per second per client")
	fs.DurationVar(&o.ping, "ping", 20*time.Second, "a client that has sent nothing for this long pings, as the contract's clients do (0: never)")
	fs.DurationVar(&o.warmup, "warmup", 20*time.Second, "how long to measure before the roll")
	fs.DurationVar(&o.after, "after", 10*time.Second, "how long to keep sending after the roll")
	fs.DurationVar(&o.window, "drain-window", 10*time.Second, "Drain's window (with --admin)")
	fs.DurationVar(&o.timeout, "drain-timeout", 20*time.Second, "Drain's timeout (with --admin)")
	fs.DurationVar(&o.waitReplaced, "wait-replaced", 60*time.Second, "with --admin, after a gateway is empty wait this long for it to be ready again (replaced) before draining the next")
	fs.DurationVar(&o.observe, "observe", 2*time.Minute, "without --admin, how long to watch for a roll")
	fs.IntVar(&o.parallel, "parallel", 64, "logins and handshakes in flight at once")
	cpuProfile := fs.String("cpuprofile", "", "write the tool's own CPU profile of the run (after setup) here")
	var tlsFlags launch.TLSFlags // with --admin: an admin credential (gochat issue-cert --component admin)
	tlsFlags.Register(fs)
	_ = fs.Parse(args)
	o.urls = strings.Split(*urls, ",")
	if *admins != "" {
		o.admins = strings.Split(*admins, ",")
		if len(o.admins) != len(o.urls) {
			return fmt.Errorf("--admin names %d gateways, --urls %d", len(o.admins), len(o.urls))
		}
		id, err := tlsFlags.Identity(pki.Admin, slog.New(slog.NewTextHandler(os.Stderr, nil)))
		if err != nil {
			return fmt.Errorf("--admin needs the gateways' admin credential: %w", err)
		}
		o.adminID = id
	}
	if o.clients < 2 || o.clients%2 != 0 {
		return fmt.Errorf("--clients must be even and at least 2, got %d", o.clients)
	}
	if o.rate <= 0 || o.rate > 40 {
		return fmt.Errorf("--rate must be in (0, 40], got %g", o.rate)
	}
	r := &roll{o: o, stop: make(chan struct{}), cpuProfile: *cpuProfile, closeCauses: map[string]int{}}
	return r.run()
}

func (r *roll) run() error {
	if err := r.setup(); err != nil {
		return err
	}
	fmt.Printf("%d clients connected over %d gateways; warming up for %s\n", len(r.clients), len(r.o.urls), r.o.warmup)
	for _, c := range r.clients {
		r.wg.Add(1)
		go c.sendLoop()
	}
	if r.cpuProfile != "" {
		f, err := os.Create(r.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	frames0 := r.frames.Load()
	time.Sleep(r.o.warmup)

	if len(r.o.admins) > 0 {
		if err := r.drainAll(); err != nil {
			return err
		}
	} else {
		time.Sleep(r.o.observe)
	}
	r.mu.Lock()
	rollStart := r.rollStart
	var rollEnd time.Time
	if n := len(r.reconnectAt); n > 0 {
		rollEnd = r.reconnectAt[n-1]
	}
	r.mu.Unlock()
	time.Sleep(r.o.after)
	close(r.stop)
	// Wait until the last acks are in (none for 3s: a message acked after
	// its recipient's last sync would count as lost), then every client
	// syncs once more and the count waits for every answer.
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); {
		n := r.acks.Load()
		time.Sleep(3 * time.Second)
		if r.acks.Load() == n {
			break
		}
	}
	r.finalSyncAt = time.Now()
	unsynced := r.finalSync(2 * time.Minute)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	frames := r.frames.Load() - frames0
	cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
	for _, c := range r.clients {
		c.mu.Lock()
		if c.conn != nil {
			c.leaving = true
			c.conn.conn.Close()
		}
		c.mu.Unlock()
	}
	r.wg.Wait()
	r.report(rollStart, rollEnd, frames, cpu)
	if unsynced > 0 {
		fmt.Printf("%d clients did not finish their final sync: their missing messages count as lost\n", unsynced)
	}
	return nil
}

// finalSync has every client sync from its last contiguous seq and waits
// until each has its answer, asking again (a client between gateways has no
// connection for a moment). It returns how many did not finish.
func (r *roll) finalSync(within time.Duration) int {
	asked := make([]int, len(r.clients)) // syncsDone when asked; -1: not asked yet
	for i := range asked {
		asked[i] = -1
	}
	end := time.Now().Add(within)
	for {
		left := 0
		for i, c := range r.clients {
			c.mu.Lock()
			done, conn := c.syncsDone, c.conn
			c.mu.Unlock()
			if asked[i] >= 0 && done > asked[i] {
				continue
			}
			left++
			if asked[i] < 0 && conn != nil {
				asked[i] = done
				c.syncNow()
			}
		}
		if left == 0 || time.Now().After(end) {
			return left
		}
		time.Sleep(500 * time.Millisecond)
		// Re-ask the ones whose connection changed under them.
		for i, c := range r.clients {
			c.mu.Lock()
			if c.conn == nil && asked[i] >= 0 && c.syncsDone <= asked[i] {
				asked[i] = -1
			}
			c.mu.Unlock()
		}
	}
}

func (r *roll) setup() error {
	n := r.o.clients
	r.clients = make([]*rollClient, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, r.o.parallel)
	var wg sync.WaitGroup
	for p := 0; p < n/2; p++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			base := r.o.urls[p%len(r.o.urls)]
			a, err := newGuest(base, 2*p)
			if err == nil {
				var b guest
				if b, err = newGuest(base, 2*p+1); err == nil {
					var conv string
					if conv, err = directConversation(base, a, b); err == nil {
						ca := &rollClient{idx: 2 * p, g: a, conv: conv, r: r, held: map[int64]bool{}, fromPeer: map[int64]int{}}
						cb := &rollClient{idx: 2*p + 1, g: b, conv: conv, r: r, held: map[int64]bool{}, fromPeer: map[int64]int{}}
						ca.peer, cb.peer = cb, ca
						r.clients[2*p], r.clients[2*p+1] = ca, cb
					}
				}
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("set up users: %w", err)
	default:
	}
	for i, c := range r.clients {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := c.connect(i%len(r.o.urls), false); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return fmt.Errorf("connect: %w", err)
	default:
	}
	return nil
}

// connect dials gateway gw, or the next ones if it refuses (a draining
// gateway answers 503), and starts reading. After a reconnect it syncs.
func (c *rollClient) connect(gw int, resync bool) error {
	urls := c.r.o.urls
	var lastErr error
	for attempt := 0; attempt < 40; attempt++ {
		select {
		case <-c.r.stop:
			if resync {
				return errors.New("stopped")
			}
		default:
		}
		i := (gw + attempt) % len(urls)
		conn, err := dialWS(urls[i], c.g.token)
		if err == nil {
			c.mu.Lock()
			c.conn, c.gw, c.leaving = conn, i, false
			c.gen++
			gen := c.gen
			c.mu.Unlock()
			c.r.wg.Add(1)
			go c.read(conn, gen)
			if resync {
				c.syncNow()
			}
			return nil
		}
		lastErr = err
		if attempt%len(urls) == len(urls)-1 {
			time.Sleep(time.Duration(200+rand.IntN(300)) * time.Millisecond)
		}
	}
	return fmt.Errorf("client %d: no gateway took it: %w", c.idx, lastErr)
}

func (c *rollClient) syncNow() {
	c.mu.Lock()
	conn, after := c.conn, c.contig
	c.mu.Unlock()
	if conn == nil {
		return
	}
	b, _ := json.Marshal(map[string]any{"type": "sync", "data": map[string]any{"conversation_id": c.conv, "after_seq": after, "limit": 200}})
	_ = conn.send(b)
}

type rollFrame struct {
	Type string `json:"type"`
	Data struct {
		AfterMs  int64         `json:"after_ms"`
		Seq      int64         `json:"seq"`
		SenderID string        `json:"sender_id"`
		Content  string        `json:"content"`
		Message  *rollMessage  `json:"message"`
		Messages []rollMessage `json:"messages"`
		HasMore  bool          `json:"has_more"`
	} `json:"data"`
}

type rollMessage struct {
	Seq      int64  `json:"seq"`
	SenderID string `json:"sender_id"`
	Content  string `json:"content"`
}

func (c *rollClient) read(conn *wsConn, gen int) {
	defer c.r.wg.Done()
	// Buffered: a frame's header and payload, and the frames that came
	// together, take one read call rather than several.
	var in io.Reader = conn.r
	if conn.r == io.ReadWriter(conn.conn) {
		in = bufio.NewReaderSize(conn.conn, 4096)
	}
	var readErr error
	for {
		_ = conn.conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		msg, err := wsutil.ReadServerText(struct {
			io.Reader
			io.Writer
		}{in, conn.conn})
		if err != nil {
			readErr = err
			break
		}
		c.r.frames.Add(1)
		var f rollFrame
		if json.Unmarshal(msg, &f) != nil {
			continue
		}
		now := time.Now()
		switch f.Type {
		case "hello":
			c.mu.Lock()
			c.backoff = 0
			c.mu.Unlock()
		case "message":
			c.take(rollMessage{Seq: f.Data.Seq, SenderID: f.Data.SenderID, Content: f.Data.Content}, now)
		case "sync":
			for _, m := range f.Data.Messages {
				c.take(m, now)
			}
			if f.Data.HasMore {
				c.syncNow()
			} else {
				c.mu.Lock()
				c.syncsDone++
				c.mu.Unlock()
			}
		case "resync":
			c.syncNow()
		case "ack":
			if f.Data.Message != nil {
				c.r.acks.Add(1)
				c.mu.Lock()
				c.acked = append(c.acked, f.Data.Message.Seq)
				c.ackedAt = append(c.ackedAt, now)
				c.holdLocked(f.Data.Message.Seq)
				c.mu.Unlock()
			}
		case "error":
			c.mu.Lock()
			c.errors++
			c.mu.Unlock()
		case "reconnect":
			c.r.mu.Lock()
			if c.r.rollStart.IsZero() {
				c.r.rollStart = now
			}
			c.r.mu.Unlock()
			c.mu.Lock()
			c.leaving = true
			c.mu.Unlock()
			c.r.wg.Add(1)
			go c.reconnectAfter(time.Duration(f.Data.AfterMs)*time.Millisecond, gen)
		}
	}
	c.mu.Lock()
	expected := c.leaving || c.gen != gen
	if c.gen == gen {
		c.conn = nil
	}
	c.mu.Unlock()
	conn.conn.Close()
	if !expected {
		// Not announced (a refused or failed session): come back with a
		// jittered exponential backoff, as a real client does.
		c.r.mu.Lock()
		c.r.closeCauses[closeCause(readErr)]++
		c.r.mu.Unlock()
		c.mu.Lock()
		c.unexpected++
		c.backoff = min(max(time.Second, 2*c.backoff), 30*time.Second)
		wait := c.backoff/2 + rand.N(c.backoff)
		c.mu.Unlock()
		select {
		case <-c.r.stop:
			return
		default:
		}
		c.r.wg.Add(1)
		go c.reconnectAfter(wait, gen)
	}
}

// closeCause names what ended a connection's reads, for the report: the
// gateway's close code and reason, a read timeout, or the socket's error.
func closeCause(err error) string {
	var closed wsutil.ClosedError
	var ne net.Error
	switch {
	case errors.As(err, &closed):
		return fmt.Sprintf("close %d %q", closed.Code, closed.Reason)
	case errors.As(err, &ne) && ne.Timeout():
		return "read timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection ended without a close frame"
	case err == nil:
		return "unknown"
	default:
		return err.Error()
	}
}

// reconnectAfter waits, closes the old connection if the gateway has not,
// and connects to the next gateway.
func (c *rollClient) reconnectAfter(d time.Duration, gen int) {
	defer c.r.wg.Done()
	wait := time.NewTimer(d)
	defer wait.Stop()
	select {
	case <-wait.C:
	case <-c.r.stop: // the run ends: its wait group must not wait out after_ms
		return
	}
	c.mu.Lock()
	if c.gen != gen {
		c.mu.Unlock()
		return
	}
	old, gw := c.conn, c.gw
	c.leaving = true
	c.mu.Unlock()
	if old != nil {
		old.conn.Close()
	}
	// As a load balancer would: any other gateway; a draining one refuses
	// (503) and the next is tried.
	next := gw + 1
	if n := len(c.r.o.urls); n > 2 {
		next = gw + 1 + rand.IntN(n-1)
	}
	if err := c.connect(next, true); err != nil {
		select {
		case <-c.r.stop:
		default:
			fmt.Println("gochat-load:", err)
		}
		return
	}
	c.mu.Lock()
	c.reconnects++
	c.mu.Unlock()
	c.r.mu.Lock()
	c.r.reconnectAt = append(c.r.reconnectAt, time.Now())
	c.r.mu.Unlock()
}

func (c *rollClient) holdLocked(seq int64) {
	c.held[seq] = true
	for c.held[c.contig+1] {
		c.contig++
	}
}

func (c *rollClient) take(m rollMessage, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holdLocked(m.Seq)
	if m.SenderID != c.peer.g.id {
		return
	}
	c.fromPeer[m.Seq]++
	if c.fromPeer[m.Seq] == 1 {
		if ns, err := strconv.ParseInt(strings.TrimPrefix(m.Content, "t:"), 10, 64); err == nil {
			c.samples = append(c.samples, sample{sent: ns, lat: now.Sub(time.Unix(0, ns))})
		}
	}
}

func (c *rollClient) sendLoop() {
	defer c.r.wg.Done()
	every := time.Duration(float64(time.Second) / c.r.o.rate)
	// Start at a random phase so sends do not come in waves.
	t := time.NewTimer(time.Duration(rand.Int64N(int64(every))))
	defer t.Stop()
	// Without pings a client that sends less often than 3 heartbeats is
	// closed by the gateway as gone ("heartbeat timeout").
	var pings <-chan time.Time
	if c.r.o.ping > 0 && c.r.o.ping < every {
		tick := time.NewTicker(c.r.o.ping)
		defer tick.Stop()
		pings = tick.C
	}
	for {
		select {
		case <-c.r.stop:
			return
		case <-pings:
			c.mu.Lock()
			conn := c.conn
			c.mu.Unlock()
			if conn != nil {
				_ = conn.send([]byte(`{"type":"ping","data":{}}`))
			}
			continue
		case <-t.C:
		}
		t.Reset(every)
		c.mu.Lock()
		conn := c.conn
		c.sendN++
		id := fmt.Sprintf("r%d-%d", c.idx, c.sendN)
		c.mu.Unlock()
		if conn == nil {
			continue // between gateways: this send is skipped, not counted
		}
		b, _ := json.Marshal(map[string]any{"type": "send", "data": map[string]any{
			"client_msg_id": id, "conversation_id": c.conv, "content": "t:" + strconv.FormatInt(time.Now().UnixNano(), 10)}})
		_ = conn.send(b)
	}
}

// drainAll drains each gateway in turn, waits for it to empty, then for it
// to be ready again (whoever runs the gateways replaces a drained one).
func (r *roll) drainAll() error {
	for i, addr := range r.o.admins {
		conn, err := rpc.Dial(addr, r.o.adminID, pki.Gateway)
		if err != nil {
			return err
		}
		admin := gochatv1.NewGatewayAdminServiceClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := admin.Drain(ctx, &gochatv1.DrainRequest{WindowMs: r.o.window.Milliseconds(), TimeoutMs: r.o.timeout.Milliseconds()})
		cancel()
		if err != nil {
			conn.Close()
			return fmt.Errorf("drain %s: %w", addr, err)
		}
		r.mu.Lock()
		if r.rollStart.IsZero() {
			r.rollStart = time.UnixMilli(resp.Stats.DrainStartedUnixMs)
		}
		r.mu.Unlock()
		fmt.Printf("draining gateway %d (%s): %d sessions\n", i, addr, resp.Stats.Sessions)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := admin.Stats(ctx, &gochatv1.StatsRequest{})
			cancel()
			if err != nil || st.Sessions == 0 {
				break // an error: the gateway is gone, which empties it too
			}
			time.Sleep(200 * time.Millisecond)
		}
		conn.Close()
		fmt.Printf("gateway %d empty after %s\n", i, time.Since(time.UnixMilli(resp.Stats.DrainStartedUnixMs)).Round(time.Millisecond))
		if i == len(r.o.admins)-1 {
			break
		}
		if !waitReady(r.o.urls[i], r.o.waitReplaced) {
			return fmt.Errorf("gateway %d (%s) was not ready again within %s: nothing replaced it", i, r.o.urls[i], r.o.waitReplaced)
		}
	}
	return nil
}

func waitReady(base string, within time.Duration) bool {
	end := time.Now().Add(within)
	for time.Now().Before(end) {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return false
}

func (r *roll) report(rollStart, rollEnd time.Time, frames int64, cpu time.Duration) {
	var lost, dup, expected, unexpected, errs, lateAcks int
	var examples []string
	reconnects := map[int]int{}
	var before, during []time.Duration
	for _, c := range r.clients {
		c.mu.Lock()
		reconnects[c.reconnects]++
		unexpected += c.unexpected
		errs += c.errors
		for _, n := range c.fromPeer {
			if n > 1 {
				dup++
			}
		}
		for _, s := range c.samples {
			t := time.Unix(0, s.sent)
			switch {
			case rollStart.IsZero() || t.Before(rollStart):
				before = append(before, s.lat)
			case !t.After(rollEnd):
				during = append(during, s.lat)
			}
		}
		c.mu.Unlock()
		c.peer.mu.Lock()
		acked := append([]int64(nil), c.peer.acked...)
		ackedAt := append([]time.Time(nil), c.peer.ackedAt...)
		c.peer.mu.Unlock()
		c.mu.Lock()
		for i, seq := range acked {
			expected++
			if c.fromPeer[seq] == 0 {
				lost++
				if ackedAt[i].After(r.finalSyncAt) {
					lateAcks++
				}
				if len(examples) < 5 {
					examples = append(examples, fmt.Sprintf("client %d conversation %s seq %d (holds up to %d contiguously, acked %s before the final sync)",
						c.idx, c.conv, seq, c.contig, r.finalSyncAt.Sub(ackedAt[i]).Round(time.Millisecond)))
				}
			}
		}
		c.mu.Unlock()
	}
	r.mu.Lock()
	times := append([]time.Time(nil), r.reconnectAt...)
	r.mu.Unlock()
	perSec := map[int64]int{}
	peak := 0
	for _, t := range times {
		perSec[t.Unix()]++
		peak = max(peak, perSec[t.Unix()])
	}
	var counts []string
	var keys []int
	for k := range reconnects {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		counts = append(counts, fmt.Sprintf("%d reconnects: %d clients", k, reconnects[k]))
	}
	fmt.Printf("clients %d over %d gateways, %.2f sends/s each\n", len(r.clients), len(r.o.urls), r.o.rate)
	if !rollStart.IsZero() && !rollEnd.IsZero() {
		fmt.Printf("roll: %s (first drain or reconnect frame to the last reconnect)\n", rollEnd.Sub(rollStart).Round(time.Millisecond))
	} else {
		fmt.Println("roll: none seen")
	}
	fmt.Printf("reconnects per client: %s; %d reconnects, peak %d/s; %d unannounced closes\n", strings.Join(counts, ", "), len(times), peak, unexpected)
	r.mu.Lock()
	causes := make([]string, 0, len(r.closeCauses))
	for cause, n := range r.closeCauses {
		causes = append(causes, fmt.Sprintf("%d x %s", n, cause))
	}
	r.mu.Unlock()
	sort.Sort(sort.Reverse(sort.StringSlice(causes)))
	if len(causes) > 0 {
		fmt.Printf("unannounced closes by cause: %s\n", strings.Join(causes, "; "))
	}
	fmt.Printf("messages acked %d, lost %d, duplicated %d (unique (conversation_id, seq) received more than once), error frames %d\n", expected, lost, dup, errs)
	if lost > 0 {
		fmt.Printf("lost messages acked after the final sync began: %d; examples:\n  %s\n", lateAcks, strings.Join(examples, "\n  "))
	}
	fmt.Printf("delivery latency before the roll: p50 %s p99 %s (%d messages)\n", q(before, 0.5), q(before, 0.99), len(before))
	fmt.Printf("delivery latency during the roll: p50 %s p99 %s (%d messages)\n", q(during, 0.5), q(during, 0.99), len(during))
	if frames > 0 {
		fmt.Printf("load tool CPU: %s for %d frames received, %.1f µs per frame\n", cpu.Round(time.Millisecond), frames, float64(cpu.Microseconds())/float64(frames))
	}
}

func q(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(p*float64(len(d)-1))].Round(100 * time.Microsecond)
}
