// Package launch runs GoChat's services from their settings: it is what the
// gochat binary's subcommands and the all-in-one dev mode have in common.
package launch

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/authtoken"
	"github.com/gochat/gochat/services/internal/config"
	"github.com/gochat/gochat/services/internal/dispatch"
	"github.com/gochat/gochat/services/internal/repo"
	"github.com/gochat/gochat/services/internal/rpc"
)

// LogFlags choose the log level.
type LogFlags struct{ Level string }

// Register adds the flags.
func (f *LogFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Level, "log-level", "info", "log level: debug, info, warn or error")
}

// Logger returns a JSON logger on stderr.
func (f LogFlags) Logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.Level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
}

// RedisFlags say how to reach Redis.
type RedisFlags struct {
	Addr     string
	Password string
	DB       int
	Prefix   string
}

// Register adds the flags.
func (f *RedisFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Addr, "redis-addr", "127.0.0.1:6379", "Redis address host:port")
	fs.StringVar(&f.Password, "redis-password", "", "Redis password (prefer the GOCHAT_REDIS_PASSWORD variable: flags show in ps)")
	fs.IntVar(&f.DB, "redis-db", 0, "Redis database number")
	fs.StringVar(&f.Prefix, "redis-prefix", "gochat:", "prefix of every Redis key, so clusters can share a Redis")
}

// Client connects and pings.
func (f RedisFlags) Client(ctx context.Context) (redis.UniversalClient, error) {
	c := redis.NewClient(&redis.Options{Addr: f.Addr, Password: f.Password, DB: f.DB, PoolSize: 64})
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis at %s: %w", f.Addr, err)
	}
	return c, nil
}

// DBFlags say which database im-repo uses.
type DBFlags struct{ repo.DBConfig }

// Register adds the flags.
func (f *DBFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.MySQLDSN, "mysql-dsn", "", "MySQL DSN, user:password@tcp(host:3306)/db (prefer the GOCHAT_MYSQL_DSN variable)")
	fs.StringVar(&f.SQLitePath, "sqlite-path", "", "SQLite file, used when --mysql-dsn is empty (single-process setups)")
	fs.IntVar(&f.MaxOpenConns, "db-max-conns", 32, "most open database connections (im-repo's store workers hold --store-workers more)")
}

// KafkaFlags say how to reach Kafka and which topics to use.
type KafkaFlags struct {
	dispatch.KafkaConfig
	brokers    config.List
	setNumbers func()
}

// Register adds the flags.
func (f *KafkaFlags) Register(fs *flag.FlagSet) {
	f.brokers = config.List{"127.0.0.1:9092"}
	fs.Var(&f.brokers, "kafka-brokers", "Kafka bootstrap brokers, comma-separated (default 127.0.0.1:9092)")
	fs.StringVar(&f.TopicPrefix, "kafka-topic-prefix", "gochat", "topic names are <prefix>.messages and <prefix>.events")
	fs.StringVar(&f.SASLUser, "kafka-sasl-user", "", "SASL/PLAIN user (empty: no SASL)")
	fs.StringVar(&f.SASLPassword, "kafka-sasl-password", "", "SASL/PLAIN password (prefer the GOCHAT_KAFKA_SASL_PASSWORD variable)")
	fs.BoolVar(&f.TLS, "kafka-tls", false, "connect to Kafka over TLS")
	fs.StringVar(&f.TLSCAFile, "kafka-tls-ca", "", "PEM file of the CA that signs the brokers' certificates (implies --kafka-tls; without it, the system roots)")
	fs.BoolVar(&f.AllowPlaintextSASL, "kafka-allow-plaintext-sasl", false, "accept sending the SASL/PLAIN password without TLS")
	fs.BoolVar(&f.EnsureTopics, "kafka-ensure-topics", true, "create missing topics at start (off when the operator manages them)")
	fs.DurationVar(&f.DeliveryTimeout, "kafka-delivery-timeout", time.Minute, "how long the producer retries a record before leaving it to the outbox relay")
	p := fs.Int("kafka-partitions", 12, "partitions of topics this service creates")
	rf := fs.Int("kafka-replication-factor", 1, "replication factor of topics this service creates")
	fs.DurationVar(&f.Retention, "kafka-retention", 168*time.Hour, "retention of topics this service creates")
	f.Partitions, f.ReplicationFactor = 12, 1
	f.setNumbers = func() { f.Partitions, f.ReplicationFactor = int32(*p), int16(*rf) }
}

// Config returns the Kafka settings once flags are parsed.
func (f *KafkaFlags) Config() dispatch.KafkaConfig {
	if f.setNumbers != nil {
		f.setNumbers()
	}
	c := f.KafkaConfig
	c.Brokers = append([]string(nil), f.brokers...)
	return c
}

// SetBrokers replaces the broker list (the dev mode's embedded broker).
func (f *KafkaFlags) SetBrokers(b []string) { f.brokers = b }

// BrokersGiven reports whether brokers were set by flag or environment.
func (f *KafkaFlags) BrokersGiven(fs *flag.FlagSet) bool {
	given := false
	fs.Visit(func(fl *flag.Flag) { given = given || fl.Name == "kafka-brokers" })
	_, env := os.LookupEnv(config.EnvName("kafka-brokers"))
	return given || env
}

// AuthFlags hold the token secret.
type AuthFlags struct {
	Secret string
	TTL    time.Duration
}

// Register adds the flags.
func (f *AuthFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.Secret, "jwt-secret", "", "HS256 secret of client tokens, at least 32 bytes; im-logic and im-gateway need the same one (prefer GOCHAT_JWT_SECRET)")
	fs.DurationVar(&f.TTL, "token-ttl", 7*24*time.Hour, "how long a client token is valid")
}

// Keys builds the signer and verifier.
func (f AuthFlags) Keys() (*authtoken.Keys, error) {
	if strings.TrimSpace(f.Secret) == "" {
		return nil, fmt.Errorf("--jwt-secret (GOCHAT_JWT_SECRET) is required")
	}
	return authtoken.New(f.Secret, f.TTL)
}

// TLSFlags say where a service's mutual-TLS files are: the CA bundle it
// trusts, its certificate and its key (docs/architecture.md, "Internal
// authentication"). Without them a service refuses to start, unless
// --insecure-internal asks for plaintext, which is for tests only.
type TLSFlags struct {
	CA, Cert, Key string
	Insecure      bool
}

// Register adds the flags.
func (f *TLSFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.CA, "tls-ca", "", "PEM bundle of the CAs whose certificates this service trusts for gRPC (re-read when it changes)")
	fs.StringVar(&f.Cert, "tls-cert", "", "PEM certificate of this service, issued for its component (re-read when it changes)")
	fs.StringVar(&f.Key, "tls-key", "", "PEM private key of --tls-cert")
	fs.BoolVar(&f.Insecure, "insecure-internal", false, "serve and dial gRPC in plaintext with no caller checks: for tests only, never in production")
}

// Identity loads the files as component's identity; nil with
// --insecure-internal. Missing files are an error, not a fallback.
func (f TLSFlags) Identity(c pki.Component, log *slog.Logger) (*rpc.Identity, error) {
	given := f.CA != "" || f.Cert != "" || f.Key != ""
	switch {
	case f.Insecure && given:
		return nil, errors.New("--insecure-internal and --tls-ca/--tls-cert/--tls-key exclude each other")
	case f.Insecure:
		log.Warn("internal gRPC is plaintext and unauthenticated (--insecure-internal): anyone who reaches a port may call it; for tests only")
		return nil, nil
	case f.CA == "" || f.Cert == "" || f.Key == "":
		return nil, errors.New("--tls-ca, --tls-cert and --tls-key (GOCHAT_TLS_CA, GOCHAT_TLS_CERT, GOCHAT_TLS_KEY) are required: internal gRPC is mutual TLS (--insecure-internal turns it off, for tests only)")
	}
	id, err := rpc.LoadIdentity(f.CA, f.Cert, f.Key, c, log)
	if err != nil {
		return nil, fmt.Errorf("internal TLS: %w", err)
	}
	return id, nil
}
