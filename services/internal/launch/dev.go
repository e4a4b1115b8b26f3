package launch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/gateway"
	"github.com/gochat/gochat/services/internal/repo"
	"github.com/gochat/gochat/services/internal/webclient"
)

// Dev runs the whole platform in one process. The four services still talk
// over their real gRPC interfaces on loopback, so every code path is the
// production one; only the backends are embedded (SQLite, an in-process
// Redis, an in-process Kafka), each replaceable by a real one with a flag.
type Dev struct {
	DataDir     string
	HTTPAddr    string
	MetricsAddr string
	MySQLDSN    string
	Redis       RedisFlags
	Kafka       KafkaFlags
	JWTSecret   string
	AdminAddr   string
	// StoreWorkers is im-repo's --store-workers.
	StoreWorkers int
	fs           *flag.FlagSet
}

// Register adds dev's flags.
func (d *Dev) Register(fs *flag.FlagSet) {
	d.fs = fs
	fs.StringVar(&d.DataDir, "data-dir", ".gochat", "where the embedded database, Kafka log, token secret and internal TLS CA and certificates live")
	fs.StringVar(&d.HTTPAddr, "http-addr", "127.0.0.1:8080", "address of the web client and the client API")
	fs.StringVar(&d.MetricsAddr, "metrics-addr", "127.0.0.1:9100", "address of /metrics (every service of the process) and /healthz (empty: off)")
	fs.StringVar(&d.MySQLDSN, "mysql-dsn", "", "use this MySQL instead of the embedded SQLite")
	d.Redis.Register(fs)
	fs.Lookup("redis-addr").DefValue = ""
	_ = fs.Set("redis-addr", "")
	fs.Lookup("redis-addr").Usage = "use this Redis instead of the embedded one (empty: embedded)"
	d.Kafka.Register(fs)
	d.Kafka.SetBrokers(nil)
	fs.Lookup("kafka-brokers").Usage = "use these Kafka brokers instead of the embedded one (empty: embedded)"
	fs.StringVar(&d.JWTSecret, "jwt-secret", "", "token secret (empty: generated once and kept in the data dir)")
	fs.StringVar(&d.AdminAddr, "gateway-grpc-addr", "", "address of the gateway's push and admin gRPC, to call Stats and Drain (empty: a free loopback port)")
	fs.IntVar(&d.StoreWorkers, "store-workers", defaultStoreWorkers, "im-repo's store workers, each storing its own share of the conversations (MySQL; SQLite uses 1)")
}

// Run starts the embedded backends and the four services, and serves until ctx ends.
func (d *Dev) Run(ctx context.Context, log *slog.Logger) error {
	if err := os.MkdirAll(d.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	secret, err := d.secret()
	if err != nil {
		return err
	}
	// The services talk mutual TLS on loopback as they do in a cluster.
	tlsFlags, err := devPKI(filepath.Join(d.DataDir, "tls"), time.Now(), log)
	if err != nil {
		return err
	}

	redisFlags := d.Redis
	if redisFlags.Addr == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("start embedded redis: %w", err)
		}
		defer mr.Close()
		redisFlags.Addr = mr.Addr()
		log.Info("embedded redis started", "addr", mr.Addr())
	}

	kafka := d.Kafka.Config()
	if len(kafka.Brokers) == 0 {
		cluster, err := startKafka(filepath.Join(d.DataDir, "kafka"), "", 0)
		if err != nil {
			return err
		}
		defer cluster.Close()
		kafka.Brokers = cluster.ListenAddrs()
		log.Info("embedded kafka started", "addr", kafka.Brokers)
	}
	kafka.EnsureTopics = true

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	repoAddr, logicAddr, gwGRPC := ports[0], ports[1], ports[2]
	if d.AdminAddr != "" {
		gwGRPC = d.AdminAddr
	}
	auth := AuthFlags{Secret: secret, TTL: 7 * 24 * time.Hour}

	repoSvc := &Repo{GRPCAddr: repoAddr, Migrate: true, Redis: redisFlags, TLS: tlsFlags[pki.Repo]}
	repoSvc.DB.MySQLDSN = d.MySQLDSN
	if d.MySQLDSN == "" {
		repoSvc.DB.SQLitePath = filepath.Join(d.DataDir, "gochat.db")
	}
	repoSvc.DB.MaxOpenConns = 16
	repoSvc.MemberCacheTTL, repoSvc.StoreWorkers, repoSvc.StoreMaxBatch = 5*time.Minute, d.StoreWorkers, 256
	repoSvc.PresenceMaxGroupMembers = repo.DefaultPresenceMaxGroupMembers

	logicSvc := &Logic{GRPCAddr: logicAddr, RepoAddr: repoAddr, Auth: auth, TLS: tlsFlags[pki.Logic]}
	logicSvc.Kafka.KafkaConfig = kafka
	logicSvc.Kafka.SetBrokers(kafka.Brokers)
	logicSvc.MaxContentBytes, logicSvc.MaxGroupMembers, logicSvc.RelayAfter = 4096, 1000, 30*time.Second

	taskSvc := &Task{RepoAddr: repoAddr, TLS: tlsFlags[pki.Task]}
	taskSvc.Kafka.KafkaConfig = kafka
	taskSvc.Kafka.SetBrokers(kafka.Brokers)
	taskSvc.ConsumerGroup, taskSvc.MaxPoll, taskSvc.PushTimeout = "gochat-task", 2000, 5*time.Second
	taskSvc.RouteCacheTTL, taskSvc.RouteCacheMaxAge = 2*time.Second, 30*time.Second

	gwSvc := &Gateway{HTTPAddr: d.HTTPAddr, GRPCAddr: gwGRPC, MetricsAddr: d.MetricsAddr, LogicAddr: logicAddr, RepoAddr: repoAddr, Auth: auth, TLS: tlsFlags[pki.Gateway]}
	gwSvc.Config = DefaultGatewayConfig()
	// The only gateway: on Ctrl-C its clients have nowhere to go, so it
	// closes them at once (1001) rather than drain; Drain over its admin
	// gRPC still drains.
	gwSvc.DrainOnStop = false
	// One machine, every client on loopback (and gochat-load making
	// hundreds of guests): the per-address auth throttles would only get
	// in the way here.
	gwSvc.AuthRate, gwSvc.AuthBurst, gwSvc.GuestsPerHour = 1000, 10000, 1e6
	web, err := fs.Sub(webclient.Files, "static")
	if err != nil {
		return err
	}
	gwSvc.WebRoot = webclient.Handler(web)

	g, gctx := newGroup(ctx)
	g.Go(func() error { return repoSvc.Run(gctx, log.With("service", "im-repo")) })
	g.Go(func() error { return logicSvc.Run(gctx, log.With("service", "im-logic")) })
	g.Go(func() error { return taskSvc.Run(gctx, log.With("service", "im-task")) })
	g.Go(func() error { return gwSvc.Run(gctx, log.With("service", "im-gateway")) })
	g.Go(func() error {
		if err := waitListening(gctx, d.HTTPAddr); err != nil {
			return nil
		}
		fmt.Printf("\nGoChat is running: open http://%s in two browser windows, register two users and chat.\n", displayAddr(d.HTTPAddr))
		fmt.Printf("Data lives in %s. Press Ctrl-C to stop.\n\n", d.DataDir)
		return nil
	})
	return g.Wait()
}

// DefaultGatewayConfig is the gateway's settings with every flag at its default.
func DefaultGatewayConfig() gateway.Config {
	var o Gateway
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	o.Register(fs)
	return o.Config
}

func displayAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return "127.0.0.1:" + port
	}
	return addr
}

// secret returns the configured token secret, or one generated on first
// start and kept in the data dir so tokens survive a restart.
func (d *Dev) secret() (string, error) {
	if d.JWTSecret != "" {
		return d.JWTSecret, nil
	}
	path := filepath.Join(d.DataDir, "jwt-secret")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	s := hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep token secret: %w", err)
	}
	return s, nil
}

// startKafka starts the embedded broker. kfake listens on 127.0.0.1 and
// advertises its listener's address, so a non-empty host replaces the
// listening host: clients in other network namespaces (pods) are then told
// an address they can reach.
func startKafka(dir, host string, port int) (*kfake.Cluster, error) {
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(12)}
	if dir != "" {
		opts = append(opts, kfake.DataDir(dir))
	}
	if host != "" {
		opts = append(opts, kfake.ListenFn(func(network, address string) (net.Listener, error) {
			_, p, err := net.SplitHostPort(address)
			if err != nil {
				return nil, fmt.Errorf("kafka listen address %q: %w", address, err)
			}
			return net.Listen(network, net.JoinHostPort(host, p))
		}))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka: %w", err)
	}
	return c, nil
}

func freePorts(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

func waitListening(ctx context.Context, addr string) error {
	target := displayAddr(addr)
	for {
		c, err := net.DialTimeout("tcp", target, time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("stopped")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// DevKafka runs only the embedded Kafka broker: the tests start it as a
// process of its own so every service speaks the Kafka protocol over TCP.
type DevKafka struct {
	Addr    string
	DataDir string
}

// Register adds the flags.
func (k *DevKafka) Register(fs *flag.FlagSet) {
	fs.StringVar(&k.Addr, "addr", "127.0.0.1:9092", "where the broker listens; it advertises this host to clients, so it must be an address they reach (e.g. the pod IP)")
	fs.StringVar(&k.DataDir, "data-dir", "", "keep the log here across restarts (empty: in memory)")
}

// Run serves the broker until ctx ends.
func (k *DevKafka) Run(ctx context.Context, log *slog.Logger) error {
	host, portStr, err := net.SplitHostPort(k.Addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	// The broker advertises the host it listens on; a wildcard or empty host
	// would be advertised as an address no client can dial.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Errorf("--addr %q: give the host clients dial (the broker advertises it), not a wildcard", k.Addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return fmt.Errorf("--addr port %q: want a number from 0 to 65535", portStr)
	}
	c, err := startKafka(k.DataDir, host, port)
	if err != nil {
		return err
	}
	defer c.Close()
	log.Info("kafka broker for development listening", "addrs", c.ListenAddrs())
	<-ctx.Done()
	return nil
}
