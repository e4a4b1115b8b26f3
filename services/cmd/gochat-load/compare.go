package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// The compare scenario drives GoChat or Centrifugo through the same
// measurements, each through an adapter that speaks its client protocol:
//
//   - connect: open --conns sessions (--parallel handshakes in flight),
//     report connects per second and handshake p50/p99 (dial to GoChat's
//     hello or Centrifugo's connect reply), hold them for --hold answering
//     keepalives, and report the server's RSS per held session from
//     /proc/<pid>/status.
//   - fanout: --members users, each with --sessions-per-user sessions, in
//     one GoChat group or Centrifugo channel; --rate messages per second for
//     --duration, published by a GoChat member over WebSocket or through
//     Centrifugo's HTTP API, after a few warm-up messages that are not
//     counted. Each receiving session counts deliveries by unique
//     (conversation_id, seq) for GoChat and by channel offset for
//     Centrifugo, never by frames.
//   - sessions: fanout with 1,000 users of 10 sessions each.
//
// The tool reports its own CPU per received frame and the servers' CPU over
// the measured window (the processes of --pids).

type compareOpts struct {
	server, scenario string
	base             string // http://host:port of the gateway or Centrifugo
	pids             []int  // measured server processes; the first holds the sessions
	conns, users     int
	parallel         int
	hold, ping       time.Duration
	members, perUser int
	rate             float64
	duration         time.Duration
	secret, apiKey   string
	namespace        string
	label, out       string
	drainWait        time.Duration
	settle           time.Duration
	warmup           int
}

func compareMain(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	o := compareOpts{}
	fs.StringVar(&o.server, "server", "gochat", "the server under test: gochat or centrifugo")
	fs.StringVar(&o.scenario, "scenario", "connect", "connect, fanout or sessions (fanout with 1,000 users x 10 sessions)")
	fs.StringVar(&o.base, "url", "http://127.0.0.1:8080", "the server's base URL (GoChat's gateway, or Centrifugo's HTTP address)")
	pids := fs.String("pids", "", "server process ids to measure (RSS, CPU), comma-separated; the first holds the sessions (default: the process listening on --url's port)")
	fs.IntVar(&o.conns, "conns", 1000, "connect: sessions to open")
	fs.IntVar(&o.users, "users", 0, "connect: users the sessions are spread over (default --conns/10: GoChat allows 10 sessions per user)")
	fs.IntVar(&o.parallel, "parallel", 64, "logins and handshakes in flight at once")
	fs.DurationVar(&o.hold, "hold", 30*time.Second, "connect: hold the sessions this long before reading the server's RSS (0: do not measure memory)")
	fs.DurationVar(&o.ping, "ping", 20*time.Second, "GoChat sessions ping this often, as idle clients do (Centrifugo's server pings and the tool answers)")
	fs.IntVar(&o.members, "members", 1000, "fanout: receiving users in the group or channel")
	fs.IntVar(&o.perUser, "sessions-per-user", 1, "fanout: sessions each receiving user holds")
	fs.Float64Var(&o.rate, "rate", 5, "fanout: messages per second into the group or channel")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "fanout: how long to publish")
	fs.DurationVar(&o.drainWait, "drain-wait", 30*time.Second, "fanout: after publishing, wait at most this long for the last deliveries")
	fs.IntVar(&o.warmup, "warmup", 5, "fanout: messages published (at --rate) and delivered before the clock starts, not counted")
	fs.DurationVar(&o.settle, "settle", time.Minute, "fanout: before publishing, wait at most this long for the setup's frames (presence, events) to stop")
	fs.StringVar(&o.secret, "centrifugo-secret", os.Getenv("CENTRIFUGO_HMAC_SECRET"), "Centrifugo's client.token.hmac_secret_key, to sign connection tokens (env CENTRIFUGO_HMAC_SECRET)")
	fs.StringVar(&o.apiKey, "centrifugo-api-key", os.Getenv("CENTRIFUGO_API_KEY"), "Centrifugo's http_api.key, to publish (env CENTRIFUGO_API_KEY)")
	fs.StringVar(&o.namespace, "centrifugo-namespace", "chat", "the Centrifugo channel namespace the fan-out channel is in")
	fs.StringVar(&o.label, "label", "", "the row label in the results (default: the scenario and its sizes)")
	fs.StringVar(&o.out, "out", "", "append the result as one JSON line to this file (gochat-load compare-table turns them into a table)")
	_ = fs.Parse(args)

	if o.scenario == "sessions" {
		o.scenario, o.members, o.perUser = "fanout", 1000, 10
		if o.label == "" {
			o.label = fmt.Sprintf("10,000 sessions (1,000 users x 10), %g msg/s", o.rate)
		}
	}
	switch {
	case o.scenario != "connect" && o.scenario != "fanout":
		return fmt.Errorf("--scenario must be connect, fanout or sessions, got %q", o.scenario)
	case o.parallel < 1:
		return fmt.Errorf("--parallel must be at least 1, got %d", o.parallel)
	case o.scenario == "connect" && o.conns < 1:
		return fmt.Errorf("--conns must be at least 1, got %d", o.conns)
	case o.scenario == "fanout" && (o.members < 1 || o.perUser < 1):
		return fmt.Errorf("--members and --sessions-per-user must be at least 1, got %d and %d", o.members, o.perUser)
	case o.scenario == "fanout" && (o.rate <= 0 || o.duration <= 0):
		return fmt.Errorf("--rate and --duration must be positive, got %g and %s", o.rate, o.duration)
	}
	if o.users <= 0 {
		o.users = max(1, (o.conns+9)/10)
	}
	var ad adapter
	switch o.server {
	case "gochat":
		if o.scenario == "fanout" && o.rate > 40 {
			// One member publishes, and the gateway allows a user 50 sends/s.
			return fmt.Errorf("--rate above 40 msg/s needs more than one GoChat sender; got %g", o.rate)
		}
		ad = &gochatAdapter{base: strings.TrimSuffix(o.base, "/")}
	case "centrifugo":
		if o.secret == "" {
			return errors.New("--centrifugo-secret (or CENTRIFUGO_HMAC_SECRET) is needed to sign connection tokens")
		}
		if o.scenario == "fanout" && o.apiKey == "" {
			return errors.New("--centrifugo-api-key (or CENTRIFUGO_API_KEY) is needed to publish")
		}
		ad = newCentrifugoAdapter(strings.TrimSuffix(o.base, "/"), o.secret, o.apiKey, o.namespace)
	default:
		return fmt.Errorf("--server must be gochat or centrifugo, got %q", o.server)
	}
	if *pids != "" {
		for _, p := range strings.Split(*pids, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || n <= 0 {
				return fmt.Errorf("--pids: %q is not a process id", p)
			}
			o.pids = append(o.pids, n)
		}
	} else {
		u, err := url.Parse(o.base)
		if err != nil {
			return fmt.Errorf("--url: %w", err)
		}
		pid, err := listenerPID(u.Port())
		if err != nil {
			return fmt.Errorf("find the server process (or pass --pids): %w", err)
		}
		o.pids = []int{pid}
	}
	var res compareResult
	var err error
	if o.scenario == "connect" {
		res, err = runConnect(ad, o)
	} else {
		res, err = runFanout(ad, o)
	}
	if err != nil {
		return err
	}
	// The machine's load at the end of the run: a busy machine's figures are not comparisons.
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		res.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	res.print(os.Stdout)
	if o.out != "" {
		f, err := os.OpenFile(o.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		line, _ := json.Marshal(res)
		if _, err := f.Write(append(line, '\n')); err != nil {
			return fmt.Errorf("write %s: %w", o.out, err)
		}
	}
	if res.Expected > 0 && res.Delivered < res.Expected {
		return fmt.Errorf("%s delivered %d of %d expected (unique per session)", o.server, res.Delivered, res.Expected)
	}
	return nil
}

// adapter is what differs between the servers: how a user gets credentials,
// how a session connects and joins the fan-out, how a message is published,
// and how a server frame reads.
type adapter interface {
	name() string
	// logins makes n users able to connect.
	logins(n, parallel int) ([]guest, error)
	// connect opens a session and completes its handshake.
	connect(cred guest) (*session, error)
	// group makes one conversation or channel of the members; the publisher
	// is the extra user pub (GoChat: a member sending over WebSocket).
	group(pub guest, members []guest) (string, error)
	// join subscribes a connected session to the group (GoChat: membership is enough).
	join(s *session, group string) error
	// publish sends message n into the group, carrying the time now.
	publish(pub *session, group string, n int64) error
	// frame reads one server frame: the deliveries and acks it holds, and
	// the answer a keepalive wants (Centrifugo's ping).
	frame(b []byte, ev *frameEvents)
}

// frameEvents is what one frame held; its slices are reused between frames.
type frameEvents struct {
	deliveries []delivery
	acks       int
	errors     int
	other      string // the type of a frame that is none of the above (GoChat's presence, say)
	reply      []byte // to write back at once (a keepalive's answer)
	keepalive  bool   // the frame held keepalives only (a ping or a pong)
	replyID    uint32 // the answer to a command of ours (Centrifugo's subscribe)
	replyErr   error
}

// delivery is one message received: its unique key in the group (GoChat's
// seq, Centrifugo's offset), its conversation or channel, and when it was sent.
type delivery struct {
	group  string
	key    int64
	sentNs int64
}

// session is one client connection with its own reader; counts are its own
// so that readers never contend.
type session struct {
	conn net.Conn
	br   *bufio.Reader
	wmu  sync.Mutex

	group   string // set before the reader starts
	replies chan error
	seen    []uint64 // bitset of delivered keys
	unique  atomic.Int64
	dups    int64
	lat     []time.Duration
	keys    []int64 // the message of each latency, for the per-message view
	acks    atomic.Int64
	errors  atomic.Int64
	frames  atomic.Int64
	ended   atomic.Bool // the reader stopped: the connection is gone
	// busy counts the frames that were not keepalives: the setup is over
	// when it stops moving (pings and pongs never stop).
	busy atomic.Int64
	// countFrom (Unix ns): deliveries of messages sent before it, the
	// warm-up's and the setup's, count for nothing.
	countFrom atomic.Int64
	other     map[string]int64 // frames of other types, by type; read once the reader stopped
}

func dialSession(rawURL string) (*session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	s := &session{conn: conn, replies: make(chan error, 4)}
	s.countFrom.Store(math.MaxInt64) // nothing counts until the clock starts
	if br != nil {
		// Bytes the server sent with its upgrade answer are in br: keep reading from it.
		s.br = br
	} else {
		s.br = bufio.NewReaderSize(conn, 2048)
	}
	return s, nil
}

func (s *session) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return wsutil.WriteClientText(s.conn, b)
}

// readFrame reads the next text message into buf (reused), answering
// control frames itself.
func (s *session) readFrame(buf []byte) ([]byte, error) {
	buf = buf[:0]
	for {
		h, err := ws.ReadHeader(s.br)
		if err != nil {
			return nil, err
		}
		if h.Length > 1<<24 {
			return nil, fmt.Errorf("frame of %d bytes", h.Length)
		}
		n := int(h.Length)
		if h.OpCode.IsControl() {
			p := make([]byte, n)
			if _, err := io.ReadFull(s.br, p); err != nil {
				return nil, err
			}
			switch h.OpCode {
			case ws.OpClose:
				return nil, wsutil.ClosedError{Code: ws.StatusNoStatusRcvd, Reason: string(p)}
			case ws.OpPing:
				s.wmu.Lock()
				err = ws.WriteFrame(s.conn, ws.MaskFrameInPlace(ws.NewPongFrame(p)))
				s.wmu.Unlock()
				if err != nil {
					return nil, err
				}
			}
			continue
		}
		start := len(buf)
		if cap(buf)-start < n {
			nb := make([]byte, start, start+n+512)
			copy(nb, buf)
			buf = nb
		}
		buf = buf[:start+n]
		if _, err := io.ReadFull(s.br, buf[start:]); err != nil {
			return nil, err
		}
		if h.Masked {
			ws.Cipher(buf[start:], h.Mask, 0)
		}
		if h.Fin {
			return buf, nil
		}
	}
}

// readUntil reads frames until accept says one is the answer wanted, for
// handshakes before the session's reader runs.
func (s *session) readUntil(timeout time.Duration, accept func([]byte) (bool, error)) error {
	_ = s.conn.SetReadDeadline(time.Now().Add(timeout))
	defer s.conn.SetReadDeadline(time.Time{})
	var buf []byte
	for {
		b, err := s.readFrame(buf)
		if err != nil {
			return err
		}
		buf = b
		if ok, err := accept(b); ok || err != nil {
			return err
		}
	}
}

// run is the session's reader: it records every delivery of its group by
// unique key and answers keepalives, until the connection ends.
func (s *session) run(ad adapter, done func()) {
	defer done()
	defer s.ended.Store(true)
	var ev frameEvents
	buf := make([]byte, 0, 1024)
	for {
		b, err := s.readFrame(buf)
		if err != nil {
			return
		}
		buf = b
		now := time.Now().UnixNano()
		s.frames.Add(1)
		ev = frameEvents{deliveries: ev.deliveries[:0]}
		ad.frame(b, &ev)
		if !ev.keepalive {
			s.busy.Add(1)
		}
		if ev.reply != nil {
			_ = s.write(ev.reply)
		}
		if ev.replyID > 0 {
			select {
			case s.replies <- ev.replyErr:
			default:
			}
		}
		s.acks.Add(int64(ev.acks))
		s.errors.Add(int64(ev.errors))
		if ev.other != "" {
			if s.other == nil {
				s.other = map[string]int64{}
			}
			s.other[ev.other]++
		}
		for _, d := range ev.deliveries {
			if d.group != s.group || d.key <= 0 || d.sentNs < s.countFrom.Load() {
				continue
			}
			w := int(d.key / 64)
			if w >= len(s.seen) {
				s.seen = append(s.seen, make([]uint64, w-len(s.seen)+16)...)
			}
			bit := uint64(1) << (d.key % 64)
			if s.seen[w]&bit != 0 {
				s.dups++
				continue
			}
			s.seen[w] |= bit
			s.unique.Add(1)
			s.lat = append(s.lat, time.Duration(now-d.sentNs))
			s.keys = append(s.keys, d.key)
		}
	}
}

// compareResult is one measurement, printed and appended to --out.
type compareResult struct {
	Server   string `json:"server"`
	Scenario string `json:"scenario"`
	Label    string `json:"label"`
	When     string `json:"when"`
	LoadAvg  string `json:"load_avg"` // 1, 5 and 15 minutes, at the end of the run

	Conns          int     `json:"conns,omitempty"`
	Failed         int     `json:"failed,omitempty"`
	ConnectsPerSec float64 `json:"connects_per_sec,omitempty"`
	HandshakeP50Ms float64 `json:"handshake_p50_ms,omitempty"`
	HandshakeP99Ms float64 `json:"handshake_p99_ms,omitempty"`
	RSSBeforeMiB   float64 `json:"rss_before_mib,omitempty"`
	RSSAfterMiB    float64 `json:"rss_after_mib,omitempty"`
	RSSPerConnB    float64 `json:"rss_per_conn_bytes,omitempty"`
	// ServerCPUPerConnUs is the servers' CPU (all of --pids) per connect, over the connects.
	ServerCPUPerConnUs float64 `json:"server_cpu_us_per_conn,omitempty"`
	LostInHold         int     `json:"lost_in_hold,omitempty"` // sessions the server closed while they were held

	Members       int     `json:"members,omitempty"`
	PerUser       int     `json:"sessions_per_user,omitempty"`
	Rate          float64 `json:"rate,omitempty"`
	Published     int64   `json:"published,omitempty"`
	Expected      int64   `json:"expected,omitempty"`
	Delivered     int64   `json:"delivered,omitempty"`
	Duplicates    int64   `json:"duplicates,omitempty"`
	DeliverP50Ms  float64 `json:"deliver_p50_ms,omitempty"`
	DeliverP99Ms  float64 `json:"deliver_p99_ms,omitempty"`
	DeliveriesSec float64 `json:"deliveries_per_sec,omitempty"`
	// Per message: when its first and its last delivery arrived, the
	// median and the worst over the messages. The first is the path to the
	// gateway; last minus first is how long the gateway and the receivers
	// took to write and read one message to every session.
	FirstP50Ms float64 `json:"first_p50_ms,omitempty"`
	FirstMaxMs float64 `json:"first_max_ms,omitempty"`
	LastP50Ms  float64 `json:"last_p50_ms,omitempty"`
	LastMaxMs  float64 `json:"last_max_ms,omitempty"`

	ServerCPUPct float64 `json:"server_cpu_pct,omitempty"` // of one core, over the measured window, summed over --pids
	ServerPIDs   []int   `json:"server_pids"`
	// ServerCPUByPIDPct is ServerCPUPct process by process, in the order of
	// ServerPIDs, whose names (procName) are ServerNames.
	ServerCPUByPIDPct []float64        `json:"server_cpu_pct_by_pid,omitempty"`
	ServerNames       []string         `json:"server_names,omitempty"`
	ToolFrames        int64            `json:"tool_frames"`
	OtherFrames       map[string]int64 `json:"other_frames,omitempty"` // frames neither deliveries, acks nor keepalives, by type, setup included
	ToolCPUUsPerF     float64          `json:"tool_cpu_us_per_frame"`
	// How long the servers' threads (all of --pids) and the tool's waited
	// for a CPU while runnable, in ms per second of the measured window.
	ServerWaitMsPerSec float64 `json:"server_cpu_wait_ms_per_sec,omitempty"`
	ToolWaitMsPerSec   float64 `json:"tool_cpu_wait_ms_per_sec,omitempty"`
}

func (r *compareResult) setUsage(u usage) {
	r.ServerCPUPct, r.ServerWaitMsPerSec, r.ToolWaitMsPerSec = u.serverPct, u.serverWaitMs, u.toolWait
	r.ServerCPUByPIDPct, r.ServerNames = nil, u.names
	if u.server > 0 {
		for _, d := range u.perPID {
			r.ServerCPUByPIDPct = append(r.ServerCPUByPIDPct, u.serverPct*float64(d)/float64(u.server))
		}
	}
}

func (r compareResult) print(w io.Writer) {
	fmt.Fprintf(w, "%s %s: %s\n", r.Server, r.Scenario, r.Label)
	if r.Conns > 0 {
		fmt.Fprintf(w, "  connected %d of %d at %.0f/s, handshake p50 %.1f ms p99 %.1f ms; server CPU %.0f µs per connect\n",
			r.Conns-r.Failed, r.Conns, r.ConnectsPerSec, r.HandshakeP50Ms, r.HandshakeP99Ms, r.ServerCPUPerConnUs)
	}
	if r.RSSAfterMiB > 0 {
		fmt.Fprintf(w, "  server RSS (pid %d) %.1f MiB -> %.1f MiB: %.0f bytes per held session (%d closed while held)\n", r.ServerPIDs[0], r.RSSBeforeMiB, r.RSSAfterMiB, r.RSSPerConnB, r.LostInHold)
	}
	if r.Expected > 0 {
		fmt.Fprintf(w, "  published %d, delivered %d of %d expected (unique per session; %d duplicates), %.0f deliveries/s, latency p50 %.1f ms p99 %.1f ms\n",
			r.Published, r.Delivered, r.Expected, r.Duplicates, r.DeliveriesSec, r.DeliverP50Ms, r.DeliverP99Ms)
	}
	if r.LastMaxMs > 0 {
		fmt.Fprintf(w, "  per message: first delivery p50 %.1f ms max %.1f ms, last delivery p50 %.1f ms max %.1f ms\n",
			r.FirstP50Ms, r.FirstMaxMs, r.LastP50Ms, r.LastMaxMs)
	}
	if len(r.OtherFrames) > 0 {
		fmt.Fprintf(w, "  other frames received: %v\n", r.OtherFrames)
	}
	per := "received frame"
	if r.Scenario == "connect" {
		per = "connection, dialing included"
	}
	fmt.Fprintf(w, "  server CPU %.0f%% of a core (pids %v); load tool %.1f µs CPU per %s (%d frames)\n", r.ServerCPUPct, r.ServerPIDs, r.ToolCPUUsPerF, per, r.ToolFrames)
	if len(r.ServerCPUByPIDPct) > 1 {
		fmt.Fprint(w, "  server CPU by process (% of a core):")
		for i, pct := range r.ServerCPUByPIDPct {
			name := strconv.Itoa(r.ServerPIDs[i])
			if i < len(r.ServerNames) {
				name = r.ServerNames[i]
			}
			fmt.Fprintf(w, " %s %.1f;", name, pct)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  waited for a CPU while runnable: server threads %.0f ms per second, load tool %.0f ms per second\n", r.ServerWaitMsPerSec, r.ToolWaitMsPerSec)
}

// connectAll opens one session per credential, parallel at a time, starts
// each one's reader (counting deliveries of group) as soon as its handshake
// is done, and returns them (nil where it failed) with each handshake's duration.
func connectAll(ad adapter, creds []guest, parallel int, group string, readers *sync.WaitGroup) ([]*session, []time.Duration, int, error) {
	sessions := make([]*session, len(creds))
	took := make([]time.Duration, len(creds))
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, c := range creds {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			s, err := ad.connect(c)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			took[i] = time.Since(t0)
			s.group = group
			readers.Add(1)
			go s.run(ad, readers.Done)
			sessions[i] = s
		}()
	}
	wg.Wait()
	var err error
	if e := firstErr.Load(); e != nil {
		err = e.(error)
	}
	return sessions, took, int(failed.Load()), err
}

// measure is the window over which the tool's and the servers' CPU are counted.
type measure struct {
	pids       []int
	ru         syscall.Rusage
	server     []time.Duration
	serverWait []time.Duration
	toolWait   time.Duration
	at         time.Time
}

func startMeasure(pids []int) *measure {
	m := &measure{pids: pids, at: time.Now()}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &m.ru)
	for _, p := range pids {
		d, _ := procCPU(p)
		m.server = append(m.server, d)
		w, _ := procWait(p)
		m.serverWait = append(m.serverWait, w)
	}
	m.toolWait, _ = procWait(os.Getpid())
	return m
}

// procName names a process by its command line: the program's base name, and
// its first argument when that is a subcommand (GoChat's services are one
// binary: "gochat repo", "gochat gateway").
func procName(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return strconv.Itoa(pid)
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	name := filepath.Base(args[0])
	if len(args) > 1 && args[1] != "" && !strings.HasPrefix(args[1], "-") {
		name += " " + args[1]
	}
	return name
}

// usage is what a measured window cost: the tool's CPU, the servers' CPU
// (also as a percentage of one core), and how long the servers' threads and
// the tool's waited for a CPU while runnable, per second of the window. On
// a machine the servers share with the tool, the wait is the latency that
// CPU contention added to every hop.
type usage struct {
	tool, server           time.Duration
	perPID                 []time.Duration // server, by --pids
	names                  []string        // of --pids, as procName reads them
	serverPct              float64
	serverWaitMs, toolWait float64 // ms per second of the window
}

func (m *measure) end() usage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	secs := time.Since(m.at).Seconds()
	u := usage{tool: time.Duration(ru.Utime.Nano() + ru.Stime.Nano() - m.ru.Utime.Nano() - m.ru.Stime.Nano())}
	var wait time.Duration
	for i, p := range m.pids {
		d, _ := procCPU(p)
		u.server += d - m.server[i]
		u.perPID = append(u.perPID, d-m.server[i])
		u.names = append(u.names, procName(p))
		w, _ := procWait(p)
		wait += w - m.serverWait[i]
	}
	u.serverPct = 100 * u.server.Seconds() / secs
	u.serverWaitMs = float64(wait.Milliseconds()) / secs
	tw, _ := procWait(os.Getpid())
	u.toolWait = float64((tw - m.toolWait).Milliseconds()) / secs
	return u
}

func runConnect(ad adapter, o compareOpts) (compareResult, error) {
	res := compareResult{Server: ad.name(), Scenario: "connect", Label: o.label, Conns: o.conns, ServerPIDs: o.pids, When: time.Now().UTC().Format(time.RFC3339)}
	if res.Label == "" {
		res.Label = fmt.Sprintf("%d connections", o.conns)
	}
	// The RSS before is read before the logins: GoChat's go through the
	// gateway (HTTP, then im-logic), and the heap they grow would otherwise
	// be counted as free room the sessions then fill.
	rssBefore, err := procRSS(o.pids[0])
	if err != nil {
		return res, err
	}
	users, err := ad.logins(o.users, o.parallel)
	if err != nil {
		return res, fmt.Errorf("log in %d users: %w", o.users, err)
	}
	creds := make([]guest, o.conns)
	for i := range creds {
		creds[i] = users[i%len(users)]
	}
	time.Sleep(time.Second)
	m := startMeasure(o.pids)
	t0 := time.Now()
	var wg sync.WaitGroup
	sessions, took, failed, firstErr := connectAll(ad, creds, o.parallel, "", &wg)
	elapsed := time.Since(t0)
	res.Failed = failed
	if failed > 0 {
		fmt.Printf("%d of %d connections failed; first error: %v\n", failed, o.conns, firstErr)
	}
	var lat []time.Duration
	for i, s := range sessions {
		if s != nil {
			lat = append(lat, took[i])
		}
	}
	res.ConnectsPerSec = float64(len(lat)) / elapsed.Seconds()
	res.HandshakeP50Ms, res.HandshakeP99Ms = ms(q(lat, 0.5)), ms(q(lat, 0.99))
	// CPU is counted over the connects only: the hold costs next to nothing.
	u := m.end()
	res.setUsage(u)
	res.ToolFrames = int64(len(lat)) // one handshake answer per session
	if len(lat) > 0 {
		res.ServerCPUPerConnUs = float64(u.server.Microseconds()) / float64(len(lat))
		res.ToolCPUUsPerF = float64(u.tool.Microseconds()) / float64(len(lat))
	}
	stopPings := pingLoop(ad, sessions, o.ping)
	if o.hold > 0 {
		time.Sleep(o.hold)
		rssAfter, err := procRSS(o.pids[0])
		if err != nil {
			return res, err
		}
		alive := 0
		for _, s := range sessions {
			if s != nil && !s.ended.Load() {
				alive++
			}
		}
		res.LostInHold = len(lat) - alive
		res.RSSBeforeMiB, res.RSSAfterMiB = float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20)
		if alive > 0 {
			res.RSSPerConnB = float64(rssAfter-rssBefore) / float64(alive)
		}
	}
	stopPings()
	closeAll(sessions)
	wg.Wait()
	if failed == o.conns {
		return res, fmt.Errorf("no connection succeeded: %w", firstErr)
	}
	if res.LostInHold > 0 {
		return res, fmt.Errorf("%d of %d sessions were closed while held (keepalives not answered, or the server dropped them)", res.LostInHold, len(lat))
	}
	return res, nil
}

// pingLoop has GoChat's sessions ping as idle clients do; Centrifugo pings
// from the server and the readers answer. It returns a stop function.
func pingLoop(ad adapter, sessions []*session, every time.Duration) func() {
	if _, ok := ad.(*gochatAdapter); !ok {
		return func() {}
	}
	return keepAlive(sessions, every)
}

// keepAlive has GoChat sessions ping every so often, as the client API asks
// of every client (the gateway drops one silent for 3 heartbeats), until
// the returned stop function is called. Each session pings at its own phase
// of the period, as independent clients do: all of them at once was a burst
// of 10,000 pings every period that the gateway read and answered while a
// message of that moment waited (that run's slowest message, every period).
func keepAlive(sessions []*session, every time.Duration) func() {
	if every <= 0 {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		step := max(every/pingSlots, time.Millisecond)
		t := time.NewTicker(step)
		defer t.Stop()
		ping := []byte(`{"type":"ping","data":{}}`)
		for slot := 0; ; slot = (slot + 1) % pingSlots {
			select {
			case <-stop:
				return
			case <-t.C:
				for i := slot; i < len(sessions); i += pingSlots {
					if s := sessions[i]; s != nil {
						_ = s.write(ping)
					}
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}

// pingSlots is how many parts of a ping period the sessions' pings are
// spread over.
const pingSlots = 100

func runFanout(ad adapter, o compareOpts) (compareResult, error) {
	res := compareResult{Server: ad.name(), Scenario: "fanout", Label: o.label, Members: o.members, PerUser: o.perUser, Rate: o.rate, ServerPIDs: o.pids, When: time.Now().UTC().Format(time.RFC3339)}
	if res.Label == "" {
		res.Label = fmt.Sprintf("fan-out to %d members", o.members)
		if o.perUser > 1 {
			res.Label += fmt.Sprintf(" x %d sessions", o.perUser)
		}
		res.Label += fmt.Sprintf(", %g msg/s", o.rate)
	}
	users, err := ad.logins(o.members+1, o.parallel)
	if err != nil {
		return res, fmt.Errorf("log in %d users: %w", o.members+1, err)
	}
	pubCred, members := users[0], users[1:]
	group, err := ad.group(pubCred, members)
	if err != nil {
		return res, err
	}
	creds := make([]guest, 0, o.members*o.perUser)
	for _, m := range members {
		for range o.perUser {
			creds = append(creds, m)
		}
	}
	var readers sync.WaitGroup
	defer readers.Wait()
	sessions, _, failed, firstErr := connectAll(ad, creds, o.parallel, group, &readers)
	if failed > 0 {
		closeAll(sessions)
		return res, fmt.Errorf("%d of %d sessions did not connect: %w", failed, len(creds), firstErr)
	}
	// Joining is part of the setup: every session is in the group before the first message.
	sem := make(chan struct{}, o.parallel)
	var joinErr atomic.Value
	var wg sync.WaitGroup
	for _, s := range sessions {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := ad.join(s, group); err != nil {
				joinErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if e := joinErr.Load(); e != nil {
		closeAll(sessions)
		return res, fmt.Errorf("join: %w", e.(error))
	}
	// The publisher's session counts acks, not deliveries (its group is "").
	pubs, _, _, err := connectAll(ad, []guest{pubCred}, 1, "", &readers)
	if err != nil {
		closeAll(sessions)
		return res, fmt.Errorf("publisher: %w", err)
	}
	pub := pubs[0]
	stopPings := pingLoop(ad, append(sessions, pub), o.ping)
	// Warm-up messages take the first-message costs (caches, a Kafka
	// producer's first batch) out of the measurement; they are not counted.
	for n := int64(1); n <= int64(o.warmup); n++ {
		if err := ad.publish(pub, group, n); err != nil {
			stopPings()
			closeAll(append(sessions, pub))
			return res, fmt.Errorf("warm-up publish: %w", err)
		}
		time.Sleep(time.Duration(float64(time.Second) / o.rate))
	}
	// Let the setup's own traffic (GoChat's presence and group events) and
	// the warm-up pass before the clock starts: until no frame but
	// keepalives came for 2s, at most --settle.
	settled := time.Now()
	for last, lastAt := int64(-1), time.Now(); time.Since(settled) < o.settle; time.Sleep(200 * time.Millisecond) {
		var n int64
		for _, s := range sessions {
			n += s.busy.Load()
		}
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) >= 2*time.Second {
			break
		}
	}
	fmt.Printf("%s: %d sessions of %d users in %s, quiet after %s; publishing %g msg/s for %s\n",
		ad.name(), len(sessions), o.members, group, time.Since(settled).Round(100*time.Millisecond), o.rate, o.duration)

	ackBase := pub.acks.Load() // the warm-up's
	// The tool's CPU is counted over the window, so are the frames it is divided by.
	framesBase := pub.frames.Load()
	for _, s := range sessions {
		framesBase += s.frames.Load()
	}
	m := startMeasure(o.pids)
	start := time.Now()
	for _, s := range sessions {
		s.countFrom.Store(start.UnixNano())
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / o.rate))
	var published, pubErrs int64
	var pubErr error
	for n := int64(o.warmup + 1); time.Since(start) < o.duration; n++ {
		<-tick.C
		if err := ad.publish(pub, group, n); err != nil {
			pubErrs++
			if pubErr == nil {
				pubErr = err
			}
			continue
		}
		published++
	}
	tick.Stop()
	if _, ok := ad.(*gochatAdapter); ok {
		// A GoChat message counts as published once it is acked (stored).
		for end := time.Now().Add(o.drainWait); pub.acks.Load()-ackBase < published && time.Now().Before(end); {
			time.Sleep(50 * time.Millisecond)
		}
		published = pub.acks.Load() - ackBase
	}
	expected := published * int64(len(sessions))
	delivered := func() int64 {
		var n int64
		for _, s := range sessions {
			n += s.unique.Load()
		}
		return n
	}
	// Wait for the last deliveries; give up once nothing has arrived for 5s.
	last, lastAt := delivered(), time.Now()
	for end := time.Now().Add(o.drainWait); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		n := delivered()
		if n >= expected {
			break
		}
		if n != last {
			last, lastAt = n, time.Now()
		} else if time.Since(lastAt) > 5*time.Second {
			break
		}
	}
	window := time.Since(start)
	u := m.end()
	stopPings()
	closeAll(append(sessions, pub))
	readers.Wait()
	if n := pub.errors.Load(); n > 0 {
		fmt.Printf("the publisher got %d error frames\n", n)
	}

	var lat []time.Duration
	spread := messageSpreads{}
	for _, s := range sessions {
		res.Delivered += s.unique.Load()
		res.Duplicates += s.dups
		res.ToolFrames += s.frames.Load()
		lat = append(lat, s.lat...)
		spread.add(s.keys, s.lat)
		for k, n := range s.other {
			if res.OtherFrames == nil {
				res.OtherFrames = map[string]int64{}
			}
			res.OtherFrames[k] += n
		}
	}
	res.ToolFrames += pub.frames.Load() - framesBase
	res.Published, res.Expected = published, expected
	res.DeliverP50Ms, res.DeliverP99Ms = ms(q(lat, 0.5)), ms(q(lat, 0.99))
	res.FirstP50Ms, res.FirstMaxMs, res.LastP50Ms, res.LastMaxMs = spread.summary()
	if slow := spread.slowest(3); len(slow) > 0 {
		fmt.Printf("slowest messages to reach their first session (message number: first, last delivery):%s\n", slow)
	}
	res.DeliveriesSec = float64(res.Delivered) / window.Seconds()
	res.setUsage(u)
	res.ToolCPUUsPerF = float64(u.tool.Microseconds()) / float64(max(res.ToolFrames, 1))
	if pubErrs > 0 {
		fmt.Printf("%d publishes failed; first: %v\n", pubErrs, pubErr)
	}
	if published == 0 {
		return res, fmt.Errorf("nothing was published: %v", pubErr)
	}
	return res, nil
}

// messageSpreads keeps, per message, the latencies of its first and its
// last delivery.
type messageSpreads map[int64]*[2]time.Duration

func (m messageSpreads) add(keys []int64, lat []time.Duration) {
	for i, k := range keys {
		e := m[k]
		if e == nil {
			m[k] = &[2]time.Duration{lat[i], lat[i]}
			continue
		}
		e[0], e[1] = min(e[0], lat[i]), max(e[1], lat[i])
	}
}

// summary is the median and the worst, over the messages, of their first
// and of their last delivery, in ms.
func (m messageSpreads) summary() (firstP50, firstMax, lastP50, lastMax float64) {
	if len(m) == 0 {
		return 0, 0, 0, 0
	}
	first := make([]time.Duration, 0, len(m))
	last := make([]time.Duration, 0, len(m))
	for _, e := range m {
		first, last = append(first, e[0]), append(last, e[1])
	}
	return ms(q(first, 0.5)), ms(q(first, 1)), ms(q(last, 0.5)), ms(q(last, 1))
}

// slowest names the n messages whose first delivery came last.
func (m messageSpreads) slowest(n int) string {
	keys := make([]int64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]][0] > m[keys[j]][0] })
	var b strings.Builder
	for _, k := range keys[:min(n, len(keys))] {
		fmt.Fprintf(&b, " #%d: %.1f, %.1f ms;", k, ms(m[k][0]), ms(m[k][1]))
	}
	return b.String()
}

func closeAll(sessions []*session) {
	for _, s := range sessions {
		if s != nil {
			s.conn.Close()
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// procRSS is a process's resident memory from /proc/<pid>/status, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read the server's memory: %w", err)
	}
	return parseVmRSS(b)
}

func parseVmRSS(status []byte) (int64, error) {
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("VmRSS line %q is not in kB", line)
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS line %q: %w", line, err)
			}
			return n << 10, nil
		}
	}
	return 0, errors.New("no VmRSS line in /proc/<pid>/status")
}

// procCPU is a process's user and system CPU so far, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// procWait is how long a process's threads have waited on a run queue, from
// /proc/<pid>/task/*/schedstat (its second field, in ns). Threads that have
// exited are not counted; a Go process keeps the threads it made.
func procWait(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended between the listing and the read
		}
		d, err := parseSchedstatWait(b)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %w", dir, t.Name(), err)
		}
		sum += d
	}
	return sum, nil
}

func parseSchedstatWait(b []byte) (time.Duration, error) {
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("short schedstat %q", b)
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(ns), nil
}

// clockTick is USER_HZ, which Linux fixes at 100 for /proc.
const clockTick = 10 * time.Millisecond

func parseStatCPU(stat []byte) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc/<pid>/stat")
	}
	f := strings.Fields(s[i+1:])
	// After the name: state is field 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0, errors.New("short /proc/<pid>/stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/<pid>/stat: %w", err)
	}
	return time.Duration(u+st) * clockTick, nil
}

// listenerPID finds the process listening on a TCP port of this machine:
// the socket's inode from /proc/net/tcp{,6}, then the process holding it.
func listenerPID(port string) (int, error) {
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 {
		return 0, fmt.Errorf("no port in the URL (%q)", port)
	}
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fl := strings.Fields(line)
			// local_address is ADDR:PORT in hex; state 0A is LISTEN.
			if len(fl) < 10 || fl[3] != "0A" {
				continue
			}
			if _, hexPort, ok := strings.Cut(fl[1], ":"); ok && hexPort == fmt.Sprintf("%04X", p) {
				inodes["socket:["+fl[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("nothing listens on port %d", p)
	}
	procs, _ := os.ReadDir("/proc")
	for _, d := range procs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[target] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no process of ours holds the socket listening on port %d", p)
}
