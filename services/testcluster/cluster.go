package testcluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/gochat/gochat/api/pki"
)

// Cluster is the four services and a Kafka broker, each its own process.
// The services talk mutual TLS with certificates from the cluster's own CA.
type Cluster struct {
	Kafka, Repo, Logic, Gateway, Task *Process
	HTTP                              string // the gateway's client address, host:port
	GatewayGRPC, LogicGRPC, RepoGRPC  string // gRPC addresses of the first replicas, host:port
	GatewayMetrics                    string // the first gateway's /metrics address, host:port
	// The metrics (and /healthz, /readyz) addresses of im-repo and of the
	// first replicas of im-logic and im-task, host:port.
	RepoMetrics, LogicMetrics, TaskMetrics string
	RedisAddr                              string // the Redis the services use
	KafkaAddr                              string // the broker, host:port
	ConsumerGroup                          string // im-task's, for WaitDispatched
	// With Options.Replicas > 1, the further replicas of im-gateway (and
	// their client addresses), im-logic and im-task; the first replica of
	// each is the field above.
	MoreGateways []*Process
	MoreHTTP     []string
	MoreGRPC     []string // the further gateways' gRPC (advertised) addresses
	MoreLogic    []*Process
	MoreTask     []*Process
	MySQLDSN     string
	RedisPrefix  string
	Secret       string
	CA           *pki.CA
}

// Options change a cluster from the defaults.
type Options struct {
	// GatewayFlags are added to the gateway's command line.
	GatewayFlags []string
	// TaskEnv is added to im-task's environment (a webhook, say).
	TaskEnv []string
	// LogicFlags are added to im-logic's command line.
	LogicFlags []string
	// RepoFlags are added to im-repo's command line.
	RepoFlags []string
	// Replicas of im-gateway, im-logic and im-task (default 1). Each
	// gateway uses its own im-logic replica; the tasks share one consumer group.
	Replicas int
	// RedisAddr and MySQLServerDSN replace the shared Redis and MariaDB
	// (with servers of the test's own, which it may stop or flush).
	RedisAddr      string
	MySQLServerDSN string
}

// StartCluster starts everything against a fresh database and Redis prefix,
// and waits until the gateway is ready.
func StartCluster(t testing.TB, o Options) *Cluster {
	t.Helper()
	Binary(t) // build before timing anything
	redisAddr, mysqlServer := o.RedisAddr, o.MySQLServerDSN
	if redisAddr == "" {
		redisAddr = RedisAddr()
	}
	if mysqlServer == "" {
		mysqlServer = MySQLServerDSN()
	}
	_, prefix := RedisOn(t, redisAddr)
	c := &Cluster{MySQLDSN: FreshDatabaseOn(t, mysqlServer), RedisPrefix: prefix, RedisAddr: redisAddr, Secret: strings.Repeat("e2e-secret-", 4)}
	addrs, err := freeAddrs(9)
	mustf(t, err, "free ports")
	kafkaAddr, repoAddr, logicAddr, gwHTTP, gwGRPC := addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
	repoMetrics, logicMetrics, taskMetrics, gwMetrics := addrs[5], addrs[6], addrs[7], addrs[8]
	c.RepoGRPC, c.RepoMetrics, c.KafkaAddr = repoAddr, repoMetrics, kafkaAddr
	c.CA = NewCA(t)
	topicPrefix := RandomName("e2e")
	c.ConsumerGroup = topicPrefix

	// The broker keeps its log on disk, so a test can stop and restart it.
	c.Kafka = Start(t, "kafka", nil, "dev-kafka", "--addr", kafkaAddr, "--data-dir", t.TempDir())
	WaitTCP(t, kafkaAddr, c.Kafka)

	common := []string{"GOCHAT_LOG_LEVEL=debug"}
	kafkaEnv := []string{"GOCHAT_KAFKA_BROKERS=" + kafkaAddr, "GOCHAT_KAFKA_TOPIC_PREFIX=" + topicPrefix, "GOCHAT_KAFKA_PARTITIONS=4"}
	c.Repo = Start(t, "im-repo", append(append(common, IssueFiles(t, c.CA, pki.Repo).Env()...),
		"GOCHAT_MYSQL_DSN="+c.MySQLDSN, "GOCHAT_REDIS_ADDR="+redisAddr, "GOCHAT_REDIS_PREFIX="+prefix),
		append([]string{"repo", "--grpc-addr", repoAddr, "--metrics-addr", repoMetrics, "--migrate"}, o.RepoFlags...)...)
	WaitTCP(t, repoAddr, c.Repo)

	replicas := max(o.Replicas, 1)
	for i := 0; i < replicas; i++ {
		suffix := ""
		if i > 0 {
			more, err := freeAddrs(6)
			mustf(t, err, "free ports")
			logicAddr, gwHTTP, gwGRPC, logicMetrics, taskMetrics, gwMetrics = more[0], more[1], more[2], more[3], more[4], more[5]
			suffix = fmt.Sprintf("-%d", i+1)
		}
		logic := Start(t, "im-logic"+suffix, append(append(append(common, kafkaEnv...), IssueFiles(t, c.CA, pki.Logic).Env()...), "GOCHAT_JWT_SECRET="+c.Secret),
			append([]string{"logic", "--grpc-addr", logicAddr, "--metrics-addr", logicMetrics, "--repo-addr", repoAddr}, o.LogicFlags...)...)
		WaitTCP(t, logicAddr, logic)

		task := Start(t, "im-task"+suffix, append(append(append(append(common, kafkaEnv...), o.TaskEnv...), IssueFiles(t, c.CA, pki.Task).Env()...), "GOCHAT_CONSUMER_GROUP="+topicPrefix),
			"task", "--metrics-addr", taskMetrics, "--repo-addr", repoAddr)
		WaitHTTP(t, fmt.Sprintf("http://%s/healthz", taskMetrics), task)

		// Every test client comes from 127.0.0.1: the per-address throttles of
		// logins and guests are raised here (a test may lower them again).
		args := append([]string{"gateway", "--http-addr", gwHTTP, "--grpc-addr", gwGRPC, "--metrics-addr", gwMetrics, "--logic-addr", logicAddr, "--repo-addr", repoAddr,
			"--auth-rate=1000", "--auth-burst=10000", "--guests-per-hour=1000000"}, o.GatewayFlags...)
		gw := Start(t, "im-gateway"+suffix, append(append(common, IssueFiles(t, c.CA, pki.Gateway).Env()...), "GOCHAT_JWT_SECRET="+c.Secret), args...)
		WaitHTTP(t, "http://"+gwHTTP+"/readyz", gw)
		if i == 0 {
			c.Logic, c.Task, c.Gateway, c.HTTP = logic, task, gw, gwHTTP
			c.GatewayGRPC, c.LogicGRPC, c.GatewayMetrics = gwGRPC, logicAddr, gwMetrics
			c.LogicMetrics, c.TaskMetrics = logicMetrics, taskMetrics
		} else {
			c.MoreLogic, c.MoreTask = append(c.MoreLogic, logic), append(c.MoreTask, task)
			c.MoreGateways, c.MoreHTTP = append(c.MoreGateways, gw), append(c.MoreHTTP, gwHTTP)
			c.MoreGRPC = append(c.MoreGRPC, gwGRPC)
		}
	}
	return c
}

// URL is the gateway's base URL.
func (c *Cluster) URL() string { return "http://" + c.HTTP }

// WSURL is the gateway's WebSocket URL.
func (c *Cluster) WSURL() string { return "ws://" + c.HTTP + "/v1/ws" }

// StartGateway starts one more gateway process on the cluster's im-logic and
// im-repo and returns its client address, host:port. Gateways relay typing
// and presence to each other directly.
func (c *Cluster) StartGateway(t testing.TB, name string) string {
	t.Helper()
	addrs, err := freeAddrs(3)
	mustf(t, err, "free ports")
	p := Start(t, name, append(IssueFiles(t, c.CA, pki.Gateway).Env(), "GOCHAT_LOG_LEVEL=debug", "GOCHAT_JWT_SECRET="+c.Secret),
		"gateway", "--http-addr", addrs[0], "--grpc-addr", addrs[1], "--metrics-addr", addrs[2], "--logic-addr", c.LogicGRPC, "--repo-addr", c.RepoGRPC)
	WaitHTTP(t, "http://"+addrs[0]+"/readyz", p)
	return addrs[0]
}

// WaitDispatched waits until im-task has committed every record on the
// cluster's topics. It commits a batch only after every push of it was
// answered, so none is in flight then: a test that stops a gateway right
// after its client got a frame could otherwise catch the push's answer
// unsent and hold its batch for the push timeout.
func (c *Cluster) WaitDispatched(t testing.TB) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.KafkaAddr))
	mustf(t, err, "kafka client")
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		lags, err := adm.Lag(ctx, c.ConsumerGroup)
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case lags.Error() != nil:
			last = lags.Error().Error()
		default:
			l := lags[c.ConsumerGroup].Lag
			var perr error
			for _, ps := range l {
				for _, p := range ps {
					if p.Err != nil {
						perr = p.Err
					}
				}
			}
			if perr == nil && len(l) > 0 && l.Total() == 0 {
				return
			}
			last = fmt.Sprintf("lag %d on %d topics (%v)", l.Total(), len(l), perr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("im-task never caught up with its topics: %s", last)
}
