package launch

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/dispatch"
	"github.com/gochat/gochat/services/internal/gateway"
	"github.com/gochat/gochat/services/internal/logic"
	"github.com/gochat/gochat/services/internal/readiness"
	"github.com/gochat/gochat/services/internal/repo"
	"github.com/gochat/gochat/services/internal/rpc"
	"github.com/gochat/gochat/services/internal/task"
)

// group runs functions until the first fails or ctx ends, then stops them all.
type group struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	once   sync.Once
	err    error
}

func newGroup(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(fn func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := fn(); err != nil {
			g.once.Do(func() { g.err = err })
			g.cancel()
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}

// serveGRPC serves srv on addr until ctx ends, then stops it gracefully.
func serveGRPC(ctx context.Context, addr string, srv *grpc.Server) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for gRPC on %s: %w", addr, err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(10 * time.Second):
				srv.Stop()
			}
		case <-done:
		}
	}()
	defer close(done)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve gRPC on %s: %w", addr, err)
	}
	return nil
}

// serveMetrics serves /metrics, /livez, /readyz and /healthz on addr until
// ctx ends (empty addr: not at all). /livez answers while the process runs.
// With a monitor, /readyz and /healthz answer from it (503 naming the
// dependency that fails): the operator probes /healthz, so it is the
// readiness the cluster sees. Without one they answer like /livez.
func serveMetrics(ctx context.Context, addr string, ready *readiness.Monitor) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.Handler())
	if os.Getenv("GOCHAT_PPROF") == "1" {
		// Profiles only on request: they expose the process's internals, and
		// the metrics port is reachable inside the cluster.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	alive := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.Handle("GET /livez", alive)
	if ready != nil {
		mux.Handle("GET /readyz", ready)
		mux.Handle("GET /healthz", ready)
	} else {
		mux.Handle("GET /readyz", alive)
		mux.Handle("GET /healthz", alive)
	}
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics on %s: %w", addr, err)
	}
	return nil
}

// withHealth registers the gRPC health service, SERVING until a readiness
// monitor given the returned server says otherwise.
func withHealth(srv *grpc.Server) *health.Server {
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, h)
	return h
}

// Readiness checks run every readyInterval, each within readyTimeout: a
// dependency that goes away shows within a few seconds, and one that hangs
// costs a probe nothing.
const (
	readyInterval = 2 * time.Second
	readyTimeout  = 2 * time.Second
)

// repoCheck is im-repo answering its health service with SERVING (its own
// MySQL and Redis reachable).
func repoCheck(conn grpc.ClientConnInterface) readiness.Check {
	hc := healthpb.NewHealthClient(conn)
	return readiness.Check{Name: "im-repo", Probe: func(ctx context.Context) error {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return fmt.Errorf("health check: %w", err)
		}
		if r.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("answers %s", r.Status)
		}
		return nil
	}}
}

// Repo is im-repo's settings.
type Repo struct {
	GRPCAddr    string
	MetricsAddr string
	Migrate     bool
	DB          DBFlags
	Redis       RedisFlags
	TLS         TLSFlags
	repo.Config
}

// Register adds im-repo's flags.
// defaultStoreWorkers: batches of different workers never share a
// conversation, so they commit side by side, but on the shared 2-core
// machine (CPU-bound MariaDB) four were not clearly faster than one, so one stays
// the default until a quiet-machine run says otherwise (docs/benchmarks.md
// "The send path"). maxStoreWorkers bounds the database connections they hold.
const (
	defaultStoreWorkers = 1
	maxStoreWorkers     = 64
)

func (o *Repo) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.GRPCAddr, "grpc-addr", ":9002", "address of im-repo's gRPC service")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9102", "address of /metrics, /livez and /healthz = /readyz (503 while MySQL or Redis does not answer) (empty: off)")
	fs.BoolVar(&o.Migrate, "migrate", false, "migrate the schema at start (otherwise the schema must already be current)")
	o.DB.Register(fs)
	o.Redis.Register(fs)
	o.TLS.Register(fs)
	fs.DurationVar(&o.MemberCacheTTL, "member-cache-ttl", 5*time.Minute, "how long member lists stay in the Redis cache")
	fs.DurationVar(&o.StoreTimeout, "store-timeout", 10*time.Second, "time limit of one transaction storing a batch of messages; past it the batch's senders get unavailable")
	fs.IntVar(&o.StoreWorkers, "store-workers", defaultStoreWorkers, "transactions storing messages at once per replica, each worker storing its own share of the conversations (MySQL; SQLite uses 1; at most 64; docs/benchmarks.md)")
	fs.IntVar(&o.StoreMaxBatch, "store-max-batch", 256, "most messages committed in one transaction")
	fs.DurationVar(&o.GuestTTL, "guest-ttl", 7*24*time.Hour, "guest accounts that belong to no conversation are deleted this long after their creation (0: never); keep it at least --token-ttl")
	fs.IntVar(&o.PresenceMaxGroupMembers, "presence-max-group-members", repo.DefaultPresenceMaxGroupMembers, "presence frames go through direct conversations and groups of at most this many members (a larger group's members would get members² frames when they all connect); GET /v1/users/{id} is always the truth")
	fs.DurationVar(&o.GuestSweepEvery, "guest-sweep-interval", time.Minute, "how often expired guests are looked for (500 deleted at a time, at most 10,000 a round)")
}

// Run serves im-repo until ctx ends.
func (o *Repo) Run(ctx context.Context, log *slog.Logger) error {
	if o.StoreWorkers < 1 || o.StoreWorkers > maxStoreWorkers || o.StoreMaxBatch < 1 || o.StoreMaxBatch > 5000 {
		return fmt.Errorf("--store-workers must be 1 to %d and --store-max-batch 1 to 5000, got %d and %d", maxStoreWorkers, o.StoreWorkers, o.StoreMaxBatch)
	}
	if o.GuestTTL < 0 || (o.GuestTTL > 0 && o.GuestSweepEvery < time.Second) {
		return fmt.Errorf("--guest-ttl must not be negative and --guest-sweep-interval at least 1s, got %s and %s", o.GuestTTL, o.GuestSweepEvery)
	}
	if o.PresenceMaxGroupMembers < 2 {
		return fmt.Errorf("--presence-max-group-members must be at least 2, got %d", o.PresenceMaxGroupMembers)
	}
	if o.MemberCacheTTL < time.Second {
		return fmt.Errorf("--member-cache-ttl must be at least 1s, got %s", o.MemberCacheTTL)
	}
	id, err := o.TLS.Identity(pki.Repo, log)
	if err != nil {
		return err
	}
	db, err := repo.OpenDB(o.DB.DBConfig)
	if err != nil {
		return err
	}
	if sqlDB, err := db.DB(); err == nil {
		defer sqlDB.Close()
	}
	if o.Migrate {
		if err := repo.Migrate(ctx, db, log); err != nil {
			return err
		}
	}
	if err := repo.CheckSchema(ctx, db); err != nil {
		return err
	}
	rdb, err := o.Redis.Client(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	o.RedisPrefix = o.Redis.Prefix
	srv, err := repo.NewServer(db, rdb, o.Config, log)
	if err != nil {
		return fmt.Errorf("im-repo: %w", err)
	}
	g, gctx := newGroup(ctx)
	gs := rpc.NewServer(log, id)
	gochatv1.RegisterRepoServiceServer(gs, srv)
	sqlDB, err := db.DB()
	if err != nil {
		return fmt.Errorf("database handle: %w", err)
	}
	ready := readiness.New(log, readyInterval, readyTimeout, withHealth(gs),
		readiness.Check{Name: "mysql", Probe: func(ctx context.Context) error { return sqlDB.PingContext(ctx) }},
		readiness.Check{Name: "redis", Probe: func(ctx context.Context) error { return rdb.Ping(ctx).Err() }},
	)
	g.Go(func() error { ready.Run(gctx); return nil })
	// The batcher outlives the gRPC server so in-flight stores get answers.
	senderCtx, stopSender := context.WithCancel(context.WithoutCancel(ctx))
	senderDone := make(chan struct{})
	go func() { srv.Run(senderCtx); close(senderDone) }()
	g.Go(func() error { return serveGRPC(gctx, o.GRPCAddr, gs) })
	g.Go(func() error { return serveMetrics(gctx, o.MetricsAddr, ready) })
	log.Info("im-repo serving", "grpc", o.GRPCAddr)
	err = g.Wait()
	stopSender()
	<-senderDone
	return err
}

// Logic is im-logic's settings.
type Logic struct {
	GRPCAddr    string
	MetricsAddr string
	RepoAddr    string
	Auth        AuthFlags
	Kafka       KafkaFlags
	TLS         TLSFlags
	logic.Config
}

// Register adds im-logic's flags.
func (o *Logic) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.GRPCAddr, "grpc-addr", ":9001", "address of im-logic's gRPC service")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9101", "address of /metrics, /livez and /healthz = /readyz (503 while im-repo is not serving) (empty: off)")
	fs.StringVar(&o.RepoAddr, "repo-addr", "127.0.0.1:9002", "im-repo's gRPC address (dns:///name:port spreads over replicas)")
	o.Auth.Register(fs)
	o.Kafka.Register(fs)
	o.TLS.Register(fs)
	fs.IntVar(&o.MaxContentBytes, "max-content-bytes", 4096, "largest message content in bytes")
	fs.IntVar(&o.MaxGroupMembers, "max-group-members", 1000, "largest group")
	fs.DurationVar(&o.RelayAfter, "outbox-relay-after", 30*time.Second, "publish again a stored message still waiting for Kafka after this long")
}

// Run serves im-logic until ctx ends.
func (o *Logic) Run(ctx context.Context, log *slog.Logger) error {
	if o.MaxContentBytes < 1 || o.MaxContentBytes > repo.MaxContentBytes {
		return fmt.Errorf("--max-content-bytes must be 1 to %d, got %d", repo.MaxContentBytes, o.MaxContentBytes)
	}
	if o.MaxGroupMembers < 2 {
		return fmt.Errorf("--max-group-members must be at least 2, got %d", o.MaxGroupMembers)
	}
	if o.RelayAfter < time.Second {
		return fmt.Errorf("--outbox-relay-after must be at least 1s, got %s", o.RelayAfter)
	}
	if err := o.Kafka.Config().Validate(); err != nil {
		return err
	}
	keys, err := o.Auth.Keys()
	if err != nil {
		return err
	}
	id, err := o.TLS.Identity(pki.Logic, log)
	if err != nil {
		return err
	}
	conn, err := rpc.Dial(o.RepoAddr, id, pki.Repo)
	if err != nil {
		return err
	}
	defer conn.Close()
	pub, err := dispatch.NewPublisher(ctx, o.Kafka.Config(), log)
	if err != nil {
		return err
	}
	defer func() {
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pub.Close(fctx)
	}()
	gs := rpc.NewServer(log, id)
	srv := logic.NewServer(gochatv1.NewRepoServiceClient(conn), keys, pub, o.Config, log)
	gochatv1.RegisterLogicServiceServer(gs, srv)
	ready := readiness.New(log, readyInterval, readyTimeout, withHealth(gs), repoCheck(conn))
	g, gctx := newGroup(ctx)
	g.Go(func() error { ready.Run(gctx); return nil })
	g.Go(func() error { srv.Run(gctx); return nil })
	g.Go(func() error { return serveGRPC(gctx, o.GRPCAddr, gs) })
	g.Go(func() error { return serveMetrics(gctx, o.MetricsAddr, ready) })
	log.Info("im-logic serving", "grpc", o.GRPCAddr)
	return g.Wait()
}

// Gateway is im-gateway's settings.
type Gateway struct {
	HTTPAddr    string
	GRPCAddr    string
	MetricsAddr string
	LogicAddr   string
	RepoAddr    string
	Auth        AuthFlags
	TLS         TLSFlags
	// GCPercent is the Go GC target set at start (0: Go's default).
	GCPercent int
	gateway.Config
}

// defaultGatewayGCPercent is the gateway's GC target. Its heap is mostly
// the held sessions, long-lived and small, so the runtime's default (100:
// the heap grows to twice what is live before a collection, and RSS with
// it) costs as much memory as the sessions themselves; 50 keeps about half
// a kilobyte less per idle session for a few more collections under load
// (docs/benchmarks.md "Idle WebSocket sessions per gateway").
const defaultGatewayGCPercent = 50

// Register adds im-gateway's flags.
func (o *Gateway) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.HTTPAddr, "http-addr", ":8080", "address of the client API (HTTP and WebSocket)")
	fs.StringVar(&o.GRPCAddr, "grpc-addr", ":9000", "address of the push and admin gRPC services")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9100", "address of /metrics and /healthz, kept off the public client port (empty: off)")
	fs.StringVar(&o.Advertise, "advertise-addr", "", "host:port im-task dials for pushes (default: $POD_IP or 127.0.0.1, with the gRPC port)")
	fs.StringVar(&o.LogicAddr, "logic-addr", "127.0.0.1:9001", "im-logic's gRPC address")
	fs.StringVar(&o.RepoAddr, "repo-addr", "127.0.0.1:9002", "im-repo's gRPC address (presence)")
	fs.IntVar(&o.GCPercent, "gc-percent", defaultGatewayGCPercent, "Go's GC target (GOGC) for the gateway: the heap may grow this many percent over what is live; lower keeps less memory per session for more GC CPU (10 to 1000; GOGC in the environment wins)")
	o.Auth.Register(fs)
	o.TLS.Register(fs)
	fs.DurationVar(&o.Heartbeat, "heartbeat", 25*time.Second, "heartbeat_ms told to clients; silent for 3 heartbeats means gone")
	fs.DurationVar(&o.PresenceTTL, "presence-ttl", 90*time.Second, "how long a session stays in presence without renewal")
	fs.DurationVar(&o.LivenessTTL, "liveness-ttl", 6*time.Second, "the gateway renews its liveness every third of this; once it lapses im-task stops pushing to it and its users count as offline (0: off)")
	fs.DurationVar(&o.HandshakeTimeout, "handshake-timeout", 10*time.Second, "time to complete a WebSocket handshake")
	fs.DurationVar(&o.FrameReadTimeout, "frame-read-timeout", 10*time.Second, "time to finish reading a frame once it starts")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", 10*time.Second, "time to write queued frames to a client")
	fs.DurationVar(&o.CallTimeout, "call-timeout", 10*time.Second, "time limit of a backend call made for a client")
	fs.IntVar(&o.MaxFrameBytes, "max-frame-bytes", 64<<10, "largest WebSocket message from a client")
	fs.IntVar(&o.MaxContentBytes, "max-content-bytes", 4096, "largest message content in bytes")
	fs.IntVar(&o.MaxQueueBytes, "max-queue-bytes", 4<<20, "bytes queued to one client before it is dropped as too slow (at least twice --max-answer-bytes)")
	fs.IntVar(&o.MaxAnswerBytes, "max-answer-bytes", 1<<20, "largest sync frame or history page; has_more tells the client to continue")
	fs.IntVar(&o.MaxPage, "max-page", 200, "largest list page")
	fs.Float64Var(&o.SendRate, "send-rate", 50, "sends per second per user, over WebSocket and HTTP together")
	fs.IntVar(&o.SendBurst, "send-burst", 100, "send burst per user")
	fs.Float64Var(&o.FrameRate, "frame-rate", 200, "frames per second per connection, all types")
	fs.IntVar(&o.FrameBurst, "frame-burst", 400, "frame burst per connection")
	fs.IntVar(&o.MaxBadFrames, "max-bad-frames", 20, "bad frames in 10s before a connection is closed with 1008")
	fs.IntVar(&o.MaxReaders, "max-readers", 512, "connections read at once")
	fs.DurationVar(&o.DrainWindow, "drain-window", 20*time.Second, "a drain spreads its clients' reconnects and its closes over this long (Drain's default; SIGTERM)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 25*time.Second, "a drain ends by then whatever happens (Drain's default; on SIGTERM keep it below the pod's termination grace period)")
	o.DrainOnStop = true
	fs.Float64Var(&o.AuthRate, "auth-rate", 1, "login, register and guest attempts per second per source address (a username's logins: a fifth of it)")
	fs.IntVar(&o.AuthBurst, "auth-burst", 20, "burst of --auth-rate (a username's logins: half of it)")
	fs.Float64Var(&o.GuestsPerHour, "guests-per-hour", 20, "guest accounts created per hour per source address")
	fs.IntVar(&o.MaxUserSessions, "max-user-sessions", 10, "WebSocket sessions one user may hold on a gateway")
	fs.IntVar(&o.MaxPendingPerIP, "max-pending-per-ip", 64, "connections from one address not yet past their handshake")
	fs.IntVar(&o.MaxPending, "max-pending", 10000, "connections not yet past their handshake, in total")
}

func (o *Gateway) advertise() (string, error) {
	if o.Advertise != "" {
		return o.Advertise, nil
	}
	host, port, err := net.SplitHostPort(o.GRPCAddr)
	if err != nil {
		return "", fmt.Errorf("--grpc-addr %q: %w", o.GRPCAddr, err)
	}
	switch {
	case os.Getenv("POD_IP") != "":
		host = os.Getenv("POD_IP")
	case host == "" || host == "0.0.0.0" || host == "::":
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// setGCPercent applies --gc-percent unless GOGC is set, which is the
// operator's explicit choice.
func (o *Gateway) setGCPercent(log *slog.Logger) error {
	if o.GCPercent == 0 {
		return nil
	}
	if o.GCPercent < 10 || o.GCPercent > 1000 {
		return fmt.Errorf("--gc-percent %d: give 10 to 1000", o.GCPercent)
	}
	if v, ok := os.LookupEnv("GOGC"); ok {
		log.Info("GOGC is set: --gc-percent is not applied", "GOGC", v, "gc_percent", o.GCPercent)
		return nil
	}
	debug.SetGCPercent(o.GCPercent)
	return nil
}

// Run serves im-gateway until ctx ends.
func (o *Gateway) Run(ctx context.Context, log *slog.Logger) error {
	if err := o.setGCPercent(log); err != nil {
		return err
	}
	keys, err := o.Auth.Keys()
	if err != nil {
		return err
	}
	if o.Advertise, err = o.advertise(); err != nil {
		return err
	}
	id, err := o.TLS.Identity(pki.Gateway, log)
	if err != nil {
		return err
	}
	logicConn, err := rpc.Dial(o.LogicAddr, id, pki.Logic)
	if err != nil {
		return err
	}
	defer logicConn.Close()
	repoConn, err := rpc.Dial(o.RepoAddr, id, pki.Repo)
	if err != nil {
		return err
	}
	defer repoConn.Close()
	o.Config.Identity = id
	gw, err := gateway.New(o.Config, keys, gochatv1.NewLogicServiceClient(logicConn), gochatv1.NewRepoServiceClient(repoConn), prometheus.DefaultRegisterer, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen for clients on %s: %w", o.HTTPAddr, err)
	}
	gs := rpc.NewServer(log, id)
	ps := gw.PushServer()
	gochatv1.RegisterPushServiceServer(gs, ps)
	gochatv1.RegisterGatewayAdminServiceServer(gs, ps)
	withHealth(gs)
	g, gctx := newGroup(ctx)
	// Pushes and admin calls go on while the gateway drains on stop: the
	// gRPC server stops only once Serve is done.
	grpcCtx, stopGRPC := context.WithCancel(context.WithoutCancel(gctx))
	defer stopGRPC()
	g.Go(func() error { defer stopGRPC(); return gw.Serve(gctx, ln) })
	g.Go(func() error { return serveGRPC(grpcCtx, o.GRPCAddr, gs) })
	g.Go(func() error { return serveMetrics(gctx, o.MetricsAddr, nil) })
	log.Info("im-gateway serving", "http", ln.Addr().String(), "grpc", o.GRPCAddr, "metrics", o.MetricsAddr, "advertise", o.Advertise)
	return g.Wait()
}

// Task is im-task's settings.
type Task struct {
	MetricsAddr string
	RepoAddr    string
	Kafka       KafkaFlags
	TLS         TLSFlags
	task.Config
}

// Register adds im-task's flags.
func (o *Task) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9103", "address of /metrics, /livez and /healthz = /readyz (503 while Kafka is silent or im-repo is not serving) (empty: off)")
	fs.StringVar(&o.RepoAddr, "repo-addr", "127.0.0.1:9002", "im-repo's gRPC address")
	o.Kafka.Register(fs)
	o.TLS.Register(fs)
	fs.StringVar(&o.ConsumerGroup, "consumer-group", "gochat-task", "Kafka consumer group of im-task replicas")
	fs.IntVar(&o.MaxPoll, "max-poll", 2000, "most records handled in one batch")
	fs.DurationVar(&o.PushTimeout, "push-timeout", 5*time.Second, "time limit of one push call to a gateway")
	fs.DurationVar(&o.RouteCacheTTL, "route-cache-ttl", 2*time.Second, "how long the sessions of the members of conversations of 100 members or more are routed from memory before presence is read again while im-repo's presence change log cannot be read; a session that came online meanwhile gets a resync (0: read presence for every push)")
	fs.DurationVar(&o.RouteCacheMaxAge, "route-cache-max-age", 30*time.Second, "while the presence change log is read, a user's sessions are read again when they change, and at least this often (at least --route-cache-ttl)")
	fs.StringVar(&o.WebhookURL, "webhook-url", "", "URL that gets offline users' notifications (empty: off)")
	fs.StringVar(&o.WebhookSecret, "webhook-secret", "", "HMAC-SHA256 key signing webhook bodies (prefer GOCHAT_WEBHOOK_SECRET)")
}

// Run consumes until ctx ends.
func (o *Task) Run(ctx context.Context, log *slog.Logger) error {
	if o.WebhookURL != "" && o.WebhookSecret == "" {
		return errors.New("--webhook-url needs --webhook-secret (GOCHAT_WEBHOOK_SECRET) to sign its bodies")
	}
	if o.MaxPoll < 1 || o.PushTimeout <= 0 {
		return fmt.Errorf("--max-poll must be at least 1 and --push-timeout positive")
	}
	if o.RouteCacheTTL < 0 || o.RouteCacheTTL > time.Minute {
		return fmt.Errorf("--route-cache-ttl must be 0 to 1m, got %s", o.RouteCacheTTL)
	}
	if o.RouteCacheMaxAge < time.Second || o.RouteCacheMaxAge > 10*time.Minute {
		return fmt.Errorf("--route-cache-max-age must be 1s to 10m, got %s", o.RouteCacheMaxAge)
	}
	if err := o.Kafka.Config().Validate(); err != nil {
		return err
	}
	id, err := o.TLS.Identity(pki.Task, log)
	if err != nil {
		return err
	}
	conn, err := rpc.Dial(o.RepoAddr, id, pki.Repo)
	if err != nil {
		return err
	}
	defer conn.Close()
	o.Config.Kafka = o.Kafka.Config()
	o.Config.TLS = id
	t := task.New(o.Config, gochatv1.NewRepoServiceClient(conn), log)
	ready := readiness.New(log, readyInterval, readyTimeout, nil,
		readiness.Check{Name: "kafka", Probe: t.KafkaHealthy}, repoCheck(conn))
	g, gctx := newGroup(ctx)
	g.Go(func() error { ready.Run(gctx); return nil })
	g.Go(func() error { return t.Run(gctx) })
	g.Go(func() error { return serveMetrics(gctx, o.MetricsAddr, ready) })
	return g.Wait()
}
