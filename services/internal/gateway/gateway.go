// Package gateway is im-gateway: the only door for clients. It serves the
// client API over HTTP and WebSocket, holds the sessions, and takes pushes
// from im-task over gRPC.
package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/authtoken"
	"github.com/gochat/gochat/services/internal/rpc"
)

// Config is im-gateway's own settings; cmd/gochat documents each default.
type Config struct {
	Advertise   string // host:port im-task dials for pushes to this gateway
	Heartbeat   time.Duration
	PresenceTTL time.Duration
	// LivenessTTL: the gateway renews its liveness in im-repo every third of
	// it; once it lapses (the process is dead or frozen) im-task stops
	// pushing to it and its users count as offline. 0: not recorded.
	LivenessTTL      time.Duration
	HandshakeTimeout time.Duration
	FrameReadTimeout time.Duration
	WriteTimeout     time.Duration
	CallTimeout      time.Duration
	MaxFrameBytes    int
	MaxContentBytes  int
	MaxQueueBytes    int
	MaxAnswerBytes   int // a sync or history answer holds fewer messages than asked to stay within this
	MaxPage          int
	SendRate         float64
	SendBurst        int
	FrameRate        float64
	FrameBurst       int
	MaxBadFrames     int
	MaxReaders       int
	DrainWindow      time.Duration // Drain's default window
	DrainTimeout     time.Duration // Drain's default timeout
	// DrainOnStop: when Serve's context ends, drain (as Drain with the
	// defaults) before stopping, instead of closing every session at once.
	DrainOnStop     bool
	MaxUserSessions int     // sessions one user may hold on this gateway
	MaxPendingPerIP int     // connections not yet past their handshake, per source address
	MaxPending      int     // connections not yet past their handshake, in total
	AuthRate        float64 // login/register/guest attempts per second per source address
	AuthBurst       int
	GuestsPerHour   float64      // guest accounts created per hour per source address
	WebRoot         http.Handler // the web client at /, or nil
	// Identity is the gateway's own mutual-TLS identity, used to relay
	// typing and presence frames to other gateways' Push; nil: plaintext
	// (--insecure-internal, tests only).
	Identity *rpc.Identity
}

// Validate refuses settings the gateway cannot work with, naming the flag.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Heartbeat > 0, "--heartbeat must be positive, got %s", c.Heartbeat)
	check(c.PresenceTTL >= 3*time.Second, "--presence-ttl must be at least 3s, got %s", c.PresenceTTL)
	check(c.LivenessTTL == 0 || (c.LivenessTTL >= 3*time.Second && c.LivenessTTL <= 10*time.Minute), "--liveness-ttl must be 0 or 3s to 10m, got %s", c.LivenessTTL)
	for name, d := range map[string]time.Duration{"--handshake-timeout": c.HandshakeTimeout, "--frame-read-timeout": c.FrameReadTimeout, "--write-timeout": c.WriteTimeout, "--call-timeout": c.CallTimeout} {
		check(d > 0, "%s must be positive, got %s", name, d)
	}
	check(c.MaxFrameBytes >= 1024, "--max-frame-bytes must be at least 1024, got %d", c.MaxFrameBytes)
	check(c.MaxContentBytes > 0 && c.MaxContentBytes < c.MaxFrameBytes, "--max-content-bytes must be positive and below --max-frame-bytes, got %d", c.MaxContentBytes)
	check(c.MaxQueueBytes >= c.MaxFrameBytes, "--max-queue-bytes must be at least --max-frame-bytes, got %d", c.MaxQueueBytes)
	check(c.MaxAnswerBytes >= 1024, "--max-answer-bytes must be at least 1024, got %d", c.MaxAnswerBytes)
	check(c.MaxQueueBytes >= 2*c.MaxAnswerBytes, "--max-queue-bytes must be at least twice --max-answer-bytes (%d), got %d", c.MaxAnswerBytes, c.MaxQueueBytes)
	check(c.MaxPage >= 1 && c.MaxPage <= 1000, "--max-page must be 1 to 1000, got %d", c.MaxPage)
	check(c.SendRate > 0 && c.SendBurst >= 1, "--send-rate and --send-burst must be positive")
	check(c.FrameRate > 0 && c.FrameBurst >= 1, "--frame-rate and --frame-burst must be positive")
	check(c.MaxBadFrames >= 1, "--max-bad-frames must be at least 1")
	check(c.MaxReaders >= 1, "--max-readers must be at least 1")
	if err := validateDrain(c.DrainWindow, c.DrainTimeout); err != nil {
		errs = append(errs, err)
	}
	check(c.AuthRate > 0 && c.AuthBurst >= 1 && c.GuestsPerHour > 0, "--auth-rate, --auth-burst and --guests-per-hour must be positive")
	check(c.MaxUserSessions >= 1, "--max-user-sessions must be at least 1, got %d", c.MaxUserSessions)
	check(c.MaxPendingPerIP >= 1 && c.MaxPending >= c.MaxPendingPerIP, "--max-pending-per-ip must be at least 1 and at most --max-pending, got %d and %d", c.MaxPendingPerIP, c.MaxPending)
	return errors.Join(errs...)
}

type gatewayMetrics struct {
	sessions        prometheus.GaugeFunc
	connects        prometheus.Counter
	handshakeErrors prometheus.Counter
	helloFrom       *prometheus.CounterVec
	framesIn        prometheus.Counter
	framesOut       prometheus.Counter
	blockedWrites   prometheus.Counter
	sends           prometheus.Counter
	clientErrors    *prometheus.CounterVec
	slowConsumers   prometheus.Counter
	pushed          prometheus.Counter
	drainClosed     prometheus.Counter
	drainDuration   prometheus.Histogram
	presenceResyncs prometheus.Counter
}

// Gateway is one im-gateway process.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	keys     *authtoken.Keys
	logic    gochatv1.LogicServiceClient
	hub      *hub
	poller   *poller
	writers  *writers
	presence *registrar
	sends    *sendBatcher
	repo     gochatv1.RepoServiceClient
	peers    *peers
	notifier *presenceNotifier
	metrics  gatewayMetrics
	draining atomic.Bool
	httpSrv  *http.Server
	httpSend *userLimits // sends per user, over HTTP and WebSocket alike
	userSess *sessionCounts
	pending  *pendingConns
	authAddr *userLimits // auth attempts per source address
	authName *userLimits // login attempts per username
	guests   *userLimits // guest accounts per source address

	ctx     context.Context // lives as long as Run; parent of every call a session makes
	spawnWG sync.WaitGroup
	// idle hands spawned work to a waiting spawnWorker (unbuffered: a
	// send succeeds only when one is free).
	idle     chan func()
	spawnMu  sync.RWMutex // stopping, against spawns and writes scheduled
	stopping bool

	drainMu   sync.Mutex
	drain     *drainState // the drain, once one started
	serving   bool        // Serve is running: a drain can start
	drainStop chan struct{}
	drainWG   sync.WaitGroup
}

// New builds a gateway; Run serves it.
func New(cfg Config, keys *authtoken.Keys, logic gochatv1.LogicServiceClient, repo gochatv1.RepoServiceClient, reg prometheus.Registerer, log *slog.Logger) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, err := newPoller(cfg.MaxReaders)
	if err != nil {
		return nil, err
	}
	h := newHub()
	g := &Gateway{
		cfg: cfg, log: log, keys: keys, logic: logic, hub: h, poller: p, writers: newWriters(),
		presence:  newRegistrar(repo, cfg.Advertise, cfg.PresenceTTL, h, log),
		httpSend:  newUserLimits(cfg.SendRate, cfg.SendBurst),
		userSess:  newSessionCounts(cfg.MaxUserSessions),
		pending:   newPendingConns(cfg.MaxPendingPerIP, cfg.MaxPending),
		authAddr:  newUserLimits(cfg.AuthRate, cfg.AuthBurst),
		authName:  newUserLimits(cfg.AuthRate/5, max(1, cfg.AuthBurst/2)),
		guests:    newUserLimits(cfg.GuestsPerHour/3600, max(1, int(cfg.GuestsPerHour))),
		ctx:       context.Background(),
		idle:      make(chan func()),
		drainStop: make(chan struct{}),
		repo:      repo,
		peers:     newPeers(cfg.Identity),
	}
	g.notifier = newPresenceNotifier(g)
	g.presence.changed = g.notifier.changed
	f := promauto.With(reg)
	g.metrics = gatewayMetrics{
		sessions: f.NewGaugeFunc(prometheus.GaugeOpts{Name: "gochat_gateway_sessions", Help: "Live WebSocket sessions."},
			func() float64 { return float64(h.count.Load()) }),
		connects:        f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_connects_total", Help: "WebSocket sessions opened."}),
		handshakeErrors: f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_handshake_errors_total", Help: "WebSocket handshakes refused or failed."}),
		helloFrom: f.NewCounterVec(prometheus.CounterOpts{Name: "gochat_gateway_hello_user_total",
			Help: "Where a hello's user came from: the token's profile, or a lookup for a token issued without one."}, []string{"from"}),
		framesIn:  f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_frames_in_total", Help: "Data frames read from clients."}),
		framesOut: f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_frames_out_total", Help: "Data frames written to clients."}),
		blockedWrites: f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_blocked_writes_total",
			Help: "Writes that found a client's socket full and waited for the client on a goroutine of their own (slow readers)."}),
		sends:           f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_sends_total", Help: "Messages acked to WebSocket senders."}),
		clientErrors:    f.NewCounterVec(prometheus.CounterOpts{Name: "gochat_gateway_client_errors_total", Help: "Error frames sent, by code."}, []string{"code"}),
		slowConsumers:   f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_slow_consumers_total", Help: "Sessions closed for not reading their frames."}),
		pushed:          f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_pushed_frames_total", Help: "Frames queued to sessions by pushes."}),
		drainClosed:     f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_drain_closed_sessions_total", Help: "Sessions closed by a drain."}),
		presenceResyncs: f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_presence_loss_resyncs_total", Help: "Resync frames sent to sessions after Redis lost presence."}),
		drainDuration: f.NewHistogram(prometheus.HistogramOpts{Name: "gochat_gateway_drain_duration_seconds", Help: "How long drains took, from start to the last session gone.",
			Buckets: []float64{1, 5, 10, 20, 30, 45, 60, 90, 120, 300}}),
	}
	g.sends = newSendBatcher(logic, cfg.CallTimeout, log, f.NewHistogram(prometheus.HistogramOpts{Name: "gochat_gateway_send_batch_size",
		Help: "Sends per SendBatch call to im-logic: sends that came while earlier batches were in flight go together.", Buckets: prometheus.ExponentialBuckets(1, 2, 9)}))
	g.presence.addCalls = f.NewCounter(prometheus.CounterOpts{Name: "gochat_gateway_presence_register_calls_total",
		Help: "RegisterSessions calls for new sessions: connects that come together share one."})
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "gochat_gateway_draining", Help: "1 once the gateway drains (it never takes clients again)."},
		func() float64 {
			if g.draining.Load() {
				return 1
			}
			return 0
		})
	return g, nil
}

// Sessions is the number of live sessions.
func (g *Gateway) Sessions() int64 { return g.hub.count.Load() }

// spawn runs fn on a goroutine the gateway waits for when it stops; false
// when the gateway is stopping and fn was not run.
func (g *Gateway) spawn(fn func()) bool {
	if !g.addSpawn() {
		return false
	}
	task := func() {
		defer g.spawnWG.Done()
		fn()
	}
	select {
	case g.idle <- task:
	default:
		go task()
	}
	return true
}

// spawnWorkers is how many goroutines wait for spawned work. A session's
// calls run on spawned goroutines, and a fresh goroutine's stack grew
// several times on the way through a gRPC call (runtime.copystack was a
// tenth of the send path's CPU); a worker's stack has grown already. Work
// that finds every worker busy gets a goroutine of its own, so the pool
// bounds nothing and delays nothing.
const spawnWorkers = 64

// spawnWorker runs spawned work until ctx ends.
func (g *Gateway) spawnWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case task := <-g.idle:
			task()
		}
	}
}

// scheduleWrite hands a session with frames queued to its writer; the
// gateway waits for it to be written when it stops, as for a spawn.
func (g *Gateway) scheduleWrite(s *session) {
	if g.addSpawn() {
		g.writers.schedule(s)
	}
}

// addSpawn counts one more piece of work the stop waits for, unless the
// gateway is stopping. Pushes to thousands of sessions call it once each,
// so it takes the read side of the lock: only the stop takes the other.
func (g *Gateway) addSpawn() bool {
	g.spawnMu.RLock()
	defer g.spawnMu.RUnlock()
	if g.stopping {
		return false
	}
	g.spawnWG.Add(1)
	return true
}

// Serve accepts clients on ln until ctx ends, then stops: with DrainOnStop
// it drains first (and keeps serving HTTP, answering /readyz with 503 and
// upgrades with 503, until the drain is over); without, it closes every
// session at once with 1001.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRun()
	g.ctx = runCtx
	acceptCtx, stopAccept := context.WithCancel(runCtx)
	defer stopAccept()
	g.drainMu.Lock()
	g.serving = true
	g.drainMu.Unlock()

	httpLn := newChanListener(ln.Addr())
	g.httpSrv = &http.Server{
		Handler:           g.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(8 + spawnWorkers)
	for range spawnWorkers {
		go func() { defer wg.Done(); g.spawnWorker(runCtx) }()
	}
	defer g.peers.closeAll()
	// The writers stop with runCtx, which ends only after every session
	// scheduled for writing was written (spawnWG, below).
	go func() { defer wg.Done(); g.writers.run(runCtx, g) }()
	go func() { defer wg.Done(); errs <- g.poller.run(runCtx, g.readReady) }()
	go func() { defer wg.Done(); g.presence.run(runCtx) }()
	go func() { defer wg.Done(); g.sends.run(runCtx) }()
	go func() { defer wg.Done(); g.keepAlive(runCtx) }()
	go func() { defer wg.Done(); g.notifier.run(runCtx) }()
	go func() { defer wg.Done(); g.sweep(runCtx) }()
	go func() {
		defer wg.Done()
		if err := g.httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			errs <- err
		}
	}()

	acceptDone := make(chan error, 1)
	go func() { acceptDone <- g.acceptLoop(acceptCtx, ln, httpLn) }()
	var acceptErr error
	select {
	case <-ctx.Done():
		if g.cfg.DrainOnStop {
			g.drainOnStop()
		}
		stopAccept()
		acceptErr = <-acceptDone
	case acceptErr = <-acceptDone:
	}
	g.drainMu.Lock()
	g.serving = false
	g.drainMu.Unlock()
	close(g.drainStop)
	g.drainWG.Wait()

	// The drain has used the stop's budget: HTTP requests still in flight
	// get a second, not more, so that the process (and its presence flush)
	// ends inside the pod's exit margin after --drain-timeout.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := g.httpSrv.Shutdown(shutdownCtx); err != nil {
		_ = g.httpSrv.Close()
	}
	_ = httpLn.Close()
	g.hub.each(func(s *session) { s.closeWith(ws.StatusGoingAway, "server shutting down") })
	g.spawnMu.Lock()
	g.stopping = true
	g.spawnMu.Unlock()
	g.spawnWG.Wait()
	g.hub.each(func(s *session) { s.shutdown("server stopped") })
	cancelRun()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return acceptErr
}

// acceptLoop sorts connections: WebSocket upgrades are handled here with the
// zero-copy upgrader, everything else goes to the HTTP server.
func (g *Gateway) acceptLoop(ctx context.Context, ln net.Listener, httpLn *chanListener) error {
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and friends: wait rather than spin.
			g.log.Error("accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.route(conn, httpLn)
		}()
	}
}

var wsPrefix = []byte("GET " + wsPath)

func (g *Gateway) route(conn net.Conn, httpLn *chanListener) {
	addr := peerAddr(conn)
	if !g.pending.acquire(addr) {
		g.metrics.handshakeErrors.Inc()
		_ = conn.Close()
		return
	}
	defer g.pending.release(addr)
	br := bufio.NewReaderSize(conn, 1024)
	_ = conn.SetReadDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
	head, err := br.Peek(len(wsPrefix) + 1)
	if err == nil && string(head[:len(wsPrefix)]) == string(wsPrefix) && (head[len(wsPrefix)] == ' ' || head[len(wsPrefix)] == '?') {
		g.upgradeWS(conn, br)
		return
	}
	if err != nil && len(head) == 0 {
		_ = conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	if !httpLn.deliver(&peekedConn{Conn: conn, r: br}) {
		_ = conn.Close()
	}
}

// sweep closes sessions that have been silent for three heartbeats, and
// forgets idle users' HTTP send limits.
func (g *Gateway) sweep(ctx context.Context) {
	t := time.NewTicker(min(g.cfg.Heartbeat/2, g.cfg.FrameReadTimeout/2))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			g.httpSend.forget(now.Add(-time.Minute))
			g.authAddr.forget(now.Add(-10 * time.Minute))
			g.authName.forget(now.Add(-10 * time.Minute))
			g.guests.forget(now.Add(-2 * time.Hour))
			deadline := now.Add(-3 * g.cfg.Heartbeat).UnixMilli()
			frameDeadline := now.Add(-g.cfg.FrameReadTimeout).UnixMilli()
			g.hub.each(func(s *session) {
				if s.lastSeen.Load() < deadline {
					s.closeWith(1001, "heartbeat timeout")
				} else if p := s.partialSince.Load(); p != 0 && p < frameDeadline {
					s.closeWith(1008, "frame not completed in time")
				}
			})
		}
	}
}

// peekedConn is a connection whose first bytes were read to route it.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// chanListener hands routed connections to the HTTP server.
type chanListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
