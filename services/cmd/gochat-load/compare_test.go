package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

func TestParseProc(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		want         int64
		wantErr      bool
	}{
		{"kB", "Name:\tcentrifugo\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 1 kB\n", 51234 << 10, false},
		{"missing", "Name:\tx\nVmSize:\t1 kB\n", 0, true},
		{"not kB", "VmRSS:\t12 MB\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseVmRSS([]byte(tc.status))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("parseVmRSS = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	// utime 150 and stime 50 ticks; the name holds a space and a parenthesis.
	stat := "4242 (my (prog) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 8 0 100 1000 300 18446744073709551615"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 2*time.Second {
		t.Fatalf("parseStatCPU = %s, %v; want 2s", got, err)
	}
	if _, err := parseStatCPU([]byte("4242 (x) S 1")); err == nil {
		t.Fatal("a short stat line parsed")
	}
	// This process's own files read as a live server's would.
	if rss, err := procRSS(os.Getpid()); err != nil || rss <= 0 {
		t.Fatalf("procRSS(self) = %d, %v", rss, err)
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Fatalf("procCPU(self): %v", err)
	}
	for _, tc := range []struct {
		name, schedstat string
		want            time.Duration
		wantErr         bool
	}{
		{"three fields", "96981 1500000 7\n", 1500 * time.Microsecond, false},
		{"short", "96981\n", 0, true},
		{"not a number", "1 x 3\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseSchedstatWait([]byte(tc.schedstat))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("parseSchedstatWait = %s, %v; want %s, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestProcWait makes this process's threads outnumber the CPUs for a while:
// the run-queue wait of its threads, summed, must grow.
func TestProcWait(t *testing.T) {
	before, err := procWait(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	n := 2 * runtime.NumCPU()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(n + 1))
	var wg sync.WaitGroup
	end := time.Now().Add(300 * time.Millisecond)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for time.Now().Before(end) {
			}
		}()
	}
	wg.Wait()
	after, err := procWait(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 10*time.Millisecond {
		t.Fatalf("%d spinning threads on %d CPUs for 300ms waited %s in all; want at least 10ms", n, runtime.NumCPU(), after-before)
	}
}

func TestListenerPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	pid, err := listenerPID(port)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("listenerPID(%s) = %d, %v; want this process %d", port, pid, err, os.Getpid())
	}
	ln.Close()
	if pid, err := listenerPID(port); err == nil {
		t.Fatalf("a closed port was found held by %d", pid)
	}
}

func TestHS256(t *testing.T) {
	// The well-known example token of RFC 7519's HS256 tooling.
	got := hs256([]byte("your-256-bit-secret"), `{"sub":"1234567890","name":"John Doe","iat":1516239022}`)
	want := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	if got != want {
		t.Fatalf("hs256 = %s\nwant   %s", got, want)
	}
}

func TestFrames(t *testing.T) {
	c := newCentrifugoAdapter("http://x", "s", "k", "chat")
	g := &gochatAdapter{}
	for _, tc := range []struct {
		name       string
		ad         adapter
		frame      string
		deliveries []delivery
		acks, errs int
		reply      string
		replyID    uint32
		replyErr   bool
		other      string
		keepalive  bool
	}{
		{"centrifugo ping", c, `{}`, nil, 0, 0, "{}", 0, false, "", true},
		{"centrifugo batch", c, "{\"push\":{\"channel\":\"chat:a\",\"pub\":{\"data\":{\"n\":3,\"t\":99},\"offset\":7}}}\n{}\n{\"push\":{\"channel\":\"chat:a\",\"pub\":{\"data\":{\"n\":4,\"t\":100},\"offset\":8}}}",
			[]delivery{{"chat:a", 7, 99}, {"chat:a", 8, 100}}, 0, 0, "{}", 0, false, "", false},
		{"centrifugo without history", c, `{"push":{"channel":"chat:a","pub":{"data":{"n":5,"t":1}}}}`, []delivery{{"chat:a", 5, 1}}, 0, 0, "", 0, false, "", false},
		{"centrifugo subscribe answer", c, `{"id":2,"subscribe":{}}`, nil, 0, 0, "", 2, false, "", false},
		{"centrifugo refused", c, `{"id":2,"error":{"code":103,"message":"permission denied"}}`, nil, 0, 0, "", 2, true, "", false},
		{"centrifugo join push", c, `{"push":{"channel":"chat:a","join":{"info":{"user":"u"}}}}`, nil, 0, 0, "", 0, false, "push", false},
		{"gochat message", g, `{"type":"message","data":{"id":"m","conversation_id":"c1","seq":12,"sender_id":"u","content":"t:1234","created_at":"x"}}`,
			[]delivery{{"c1", 12, 1234}}, 0, 0, "", 0, false, "", false},
		{"gochat ack", g, `{"type":"ack","data":{"client_msg_id":"b1","message":{"conversation_id":"c1","seq":12}}}`, nil, 1, 0, "", 0, false, "", false},
		{"gochat error", g, `{"type":"error","data":{"code":"rate_limited","message":"slow down"}}`, nil, 0, 1, "", 0, false, "", false},
		{"gochat presence", g, `{"type":"presence","data":{"user_id":"u","online":true}}`, nil, 0, 0, "", 0, false, "presence", false},
		{"gochat pong", g, `{"type":"pong","data":{}}`, nil, 0, 0, "", 0, false, "", true},
		{"not json", g, `{"type":`, nil, 0, 0, "", 0, false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev frameEvents
			tc.ad.frame([]byte(tc.frame), &ev)
			if fmt.Sprint(ev.deliveries) != fmt.Sprint(tc.deliveries) || ev.acks != tc.acks || ev.errors != tc.errs ||
				string(ev.reply) != tc.reply || ev.replyID != tc.replyID || (ev.replyErr != nil) != tc.replyErr || ev.other != tc.other ||
				ev.keepalive != tc.keepalive {
				t.Fatalf("got %+v", ev)
			}
		})
	}
}

// TestSessionCountsUniqueKeys drives a session's reader with real WebSocket
// frames: a delivery repeated is one delivery, another group's message is
// not counted, control frames are answered, and a frame split in fragments
// reads whole.
func TestSessionCountsUniqueKeys(t *testing.T) {
	client, server := net.Pipe()
	s := &session{conn: client, br: bufio.NewReader(client), replies: make(chan error, 4), group: "c1"}
	var wg sync.WaitGroup
	wg.Add(1)
	go s.run(&gochatAdapter{}, wg.Done)

	msg := func(conv string, seq int) []byte {
		return fmt.Appendf(nil, `{"type":"message","data":{"conversation_id":%q,"seq":%d,"content":"t:%d"}}`, conv, seq, time.Now().UnixNano())
	}
	pong := make(chan ws.OpCode, 1)
	go func() {
		// The reader's answer to the server: the pong for the ping below.
		h, err := ws.ReadHeader(server)
		if err == nil && h.Length < 125 {
			_, err = io.ReadFull(server, make([]byte, h.Length))
		}
		if err == nil {
			pong <- h.OpCode
		}
	}()
	writes := [][]byte{msg("c1", 1), msg("c1", 2), []byte(`{"type":"pong","data":{}}`), msg("c1", 1), msg("other", 3), msg("c1", 200)}
	for _, w := range writes {
		if err := wsutil.WriteServerText(server, w); err != nil {
			t.Fatal(err)
		}
	}
	if err := ws.WriteFrame(server, ws.NewPingFrame([]byte("hi"))); err != nil {
		t.Fatal(err)
	}
	select {
	case op := <-pong:
		if op != ws.OpPong {
			t.Fatalf("answer to a ping is %v", op)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the ping was not answered")
	}
	// One message in two fragments.
	m := msg("c1", 3)
	half := len(m) / 2
	if err := ws.WriteFrame(server, ws.NewFrame(ws.OpText, false, m[:half])); err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteFrame(server, ws.NewFrame(ws.OpContinuation, true, m[half:])); err != nil {
		t.Fatal(err)
	}
	_ = ws.WriteFrame(server, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	wg.Wait()
	server.Close()
	if got := s.unique.Load(); got != 4 || s.dups != 1 || len(s.lat) != 4 {
		t.Fatalf("unique %d, duplicates %d, latencies %d; want 4 (seqs 1, 2, 3, 200), 1, 4", got, s.dups, len(s.lat))
	}
	// The pong is a frame, but not one that keeps the setup from settling.
	if s.frames.Load() != 7 || s.busy.Load() != 6 {
		t.Fatalf("frames %d, busy %d; want 7 and 6 (all but the pong)", s.frames.Load(), s.busy.Load())
	}
}

func TestWriteTable(t *testing.T) {
	results := []compareResult{
		{Server: "centrifugo", Scenario: "connect", Label: "500 connections", Conns: 500, ConnectsPerSec: 4000, HandshakeP50Ms: 10, HandshakeP99Ms: 30, RSSPerConnB: 50000},
		{Server: "gochat", Scenario: "connect", Label: "500 connections", Conns: 500, Failed: 2, ConnectsPerSec: 2000, HandshakeP50Ms: 20, HandshakeP99Ms: 30, RSSPerConnB: 2500},
		{Server: "gochat", Scenario: "fanout", Label: "fan-out to 200 members, 5 msg/s", Expected: 100, Delivered: 100, DeliverP50Ms: 40, DeliverP99Ms: 80, ServerCPUPct: 50,
			FirstP50Ms: 12.5, LastMaxMs: 90, When: "2026-12-01T06:00:00Z", LoadAvg: "1.00 0.50 0.20", ToolCPUUsPerF: 12.9, ToolFrames: 20000,
			ServerWaitMsPerSec: 41.6, ToolWaitMsPerSec: 7},
	}
	var b bytes.Buffer
	if err := writeTable(&b, results); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"| 500 connections: connects/s | 4000/s (500 of 500) | 2000/s (498 of 500) | 0.50 |", // higher is better
		"| 500 connections: handshake p50 | 10.0 ms | 20.0 ms | 0.50 |",                      // lower is better
		"| 500 connections: RSS per held connection | 50.0 KB | 2.5 KB | 20.00 |",
		"| fan-out to 200 members, 5 msg/s: latency p99 | not run | 80.0 ms | — |",
		"| fan-out to 200 members, 5 msg/s: per message: first delivery p50 | not run | 12.5 ms | — |",
		"| fan-out to 200 members, 5 msg/s: per message: last delivery max | not run | 90.0 ms | — |",
		"| fan-out to 200 members, 5 msg/s | gochat | 2026-12-01T06:00:00Z | 1.00 0.50 0.20 | 12.9 µs | received frame (20000 frames) | 42 / 7 ms per s |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if _, err := readResults(strings.NewReader(`{"server":"nats"}`)); err == nil {
		t.Error("a result of an unknown server was read")
	}
}

// The load tool's own cost per received frame is mostly decoding it: these
// keep it visible (make bench), next to the µs per frame a run reports.
func BenchmarkFrameDecode(b *testing.B) {
	for _, bc := range []struct {
		name  string
		ad    adapter
		frame string
	}{
		{"gochat", &gochatAdapter{}, `{"type":"message","data":{"id":"06h2mc3dktc7ysc01k6yywhj0w","conversation_id":"06h2mc3dp0ejg24389p3wfpy5m","seq":1234,"sender_id":"06h2mc3dktc7ysc01k6yywhj0x","client_msg_id":"b1234","content_type":"text","content":"t:1764468000123456789","created_at":"2026-11-30T02:00:00.123Z"}}`},
		{"centrifugo", newCentrifugoAdapter("http://x", "s", "k", "chat"), `{"push":{"channel":"chat:bench-0b17ff57","pub":{"data":{"n":1234,"t":1764468000123456789},"offset":1234}}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var ev frameEvents
			frame := []byte(bc.frame)
			b.ReportAllocs()
			for b.Loop() {
				ev = frameEvents{deliveries: ev.deliveries[:0]}
				bc.ad.frame(frame, &ev)
			}
			if len(ev.deliveries) != 1 {
				b.Fatalf("decoded %+v", ev)
			}
		})
	}
}

func TestMessageSpreads(t *testing.T) {
	msd := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		sessions [][2]any // keys, latencies
		want     [4]float64
	}{
		{"none", nil, [4]float64{}},
		{"one message, two sessions", [][2]any{{[]int64{7}, msd(10)}, {[]int64{7}, msd(30)}}, [4]float64{10, 10, 30, 30}},
		{"a slow message sets the max, not the median", [][2]any{
			{[]int64{1, 2, 3}, msd(5, 6, 50)},
			{[]int64{1, 2, 3}, msd(9, 8, 90)},
		}, [4]float64{6, 50, 9, 90}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := messageSpreads{}
			for _, s := range tc.sessions {
				m.add(s[0].([]int64), s[1].([]time.Duration))
			}
			a, b, c, d := m.summary()
			if got := [4]float64{a, b, c, d}; got != tc.want {
				t.Errorf("first p50/max, last p50/max = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestKeepAliveSpread checks that each session pings once a period, each at
// its own phase: the first pings of 200 sessions span most of the period
// instead of arriving together.
func TestKeepAliveSpread(t *testing.T) {
	const n, every = 200, time.Second
	sessions := make([]*session, n)
	first := make([]time.Time, n)
	pings := make([]int, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range sessions {
		client, server := net.Pipe()
		t.Cleanup(func() { client.Close(); server.Close() })
		sessions[i] = &session{conn: client}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				h, err := ws.ReadHeader(server)
				if err != nil {
					return
				}
				if _, err := io.ReadFull(server, make([]byte, h.Length)); err != nil {
					return
				}
				mu.Lock()
				if pings[i] == 0 {
					first[i] = time.Now()
				}
				pings[i]++
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	stop := keepAlive(sessions, every)
	// Until every session has pinged (a loaded machine delays the ticker's
	// slots; it does not bunch them), at most a few periods.
	for deadline := start.Add(5 * every); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		all := !slices.Contains(pings, 0)
		mu.Unlock()
		if all {
			break
		}
	}
	stop()
	elapsed := time.Since(start)
	for _, s := range sessions {
		s.conn.Close()
	}
	wg.Wait()
	most := int(elapsed/every) + 1
	lo, hi := first[0], first[0]
	for i := range sessions {
		if pings[i] < 1 || pings[i] > most {
			t.Fatalf("session %d pinged %d times in %s, want once a %s period", i, pings[i], elapsed, every)
		}
		if first[i].Before(lo) {
			lo = first[i]
		}
		if first[i].After(hi) {
			hi = first[i]
		}
	}
	if spread := hi.Sub(lo); spread < every/2 {
		t.Fatalf("the sessions' pings came within %s of each other (first %s after the start), want them spread over the %s period", spread, lo.Sub(start), every)
	}
}

func TestServerCPUByProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	// Until the child has exec'd, its command line is this test's (or none).
	got := procName(cmd.Process.Pid)
	for end := time.Now().Add(5 * time.Second); got != "sleep 30" && time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		got = procName(cmd.Process.Pid)
	}
	if got != "sleep 30" {
		t.Fatalf("procName(sleep 30) = %q", got)
	}
	if got := procName(os.Getpid()); got != filepath.Base(os.Args[0]) {
		t.Fatalf("procName(self) = %q, want %q (its flags are not a subcommand)", got, filepath.Base(os.Args[0]))
	}
	var r compareResult
	r.ServerPIDs = []int{10, 11}
	r.setUsage(usage{server: 4 * time.Second, perPID: []time.Duration{3 * time.Second, time.Second}, names: []string{"gochat gateway", "gochat repo"}, serverPct: 80})
	var b bytes.Buffer
	r.print(&b)
	if want := "server CPU by process (% of a core): gochat gateway 60.0; gochat repo 20.0;"; !strings.Contains(b.String(), want) {
		t.Fatalf("printed\n%s\nwant a line with %q", b.String(), want)
	}
}
