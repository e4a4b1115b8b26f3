// Package dispatch is GoChat's use of Kafka: the topics, how im-logic
// publishes to them and how their records are encoded.
//
// Two topics, both keyed by conversation id so that one conversation's records
// stay in one partition, in order:
//   - <prefix>.messages: every stored message, for fan-out to the members;
//   - <prefix>.events:   read pointers and group changes.
package dispatch

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"google.golang.org/protobuf/proto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// KafkaConfig is how to reach Kafka and which topics to use.
type KafkaConfig struct {
	Brokers      []string
	TopicPrefix  string
	SASLUser     string
	SASLPassword string
	TLS          bool
	TLSCAFile    string
	// AllowPlaintextSASL accepts sending the SASL/PLAIN password without TLS.
	AllowPlaintextSASL bool
	// Topic creation when a service starts (false when an operator owns the topics).
	EnsureTopics    bool
	DeliveryTimeout time.Duration
	// Linger is how long the producer waits for more records of a
	// partition before sending (0: DefaultLinger). A whole batch published
	// together goes at once anyway (Publisher.SendNow).
	Linger            time.Duration
	Partitions        int32
	ReplicationFactor int16
	Retention         time.Duration
}

// Validate refuses settings Kafka would refuse later, naming the flag.
func (c KafkaConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("--kafka-brokers is empty")
	case c.TopicPrefix == "":
		return errors.New("--kafka-topic-prefix is empty")
	case c.SASLUser != "" && !c.TLS && c.TLSCAFile == "" && !c.AllowPlaintextSASL:
		return errors.New("--kafka-sasl-user without --kafka-tls would send the SASL/PLAIN password in the clear: set --kafka-tls, or --kafka-allow-plaintext-sasl to accept that")
	case c.EnsureTopics && (c.Partitions < 1 || c.ReplicationFactor < 1):
		return fmt.Errorf("--kafka-partitions and --kafka-replication-factor must be at least 1, got %d and %d", c.Partitions, c.ReplicationFactor)
	case c.EnsureTopics && c.Retention < time.Minute:
		return fmt.Errorf("--kafka-retention must be at least 1m, got %s", c.Retention)
	}
	return nil
}

// Topics are the topic names for a prefix.
type Topics struct{ Messages, Events string }

// TopicsFor names the topics of a prefix.
func TopicsFor(prefix string) Topics {
	return Topics{Messages: prefix + ".messages", Events: prefix + ".events"}
}

// ClientOptions turns the config into franz-go options (brokers, SASL, TLS).
func (c KafkaConfig) ClientOptions() ([]kgo.Opt, error) {
	if len(c.Brokers) == 0 {
		return nil, errors.New("no kafka brokers configured (--kafka-brokers)")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...)}
	if c.SASLUser != "" {
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASLUser, Pass: c.SASLPassword}.AsMechanism()))
	}
	if c.TLS || c.TLSCAFile != "" {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.TLSCAFile != "" {
			pem, err := os.ReadFile(c.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("read kafka CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("kafka CA file %s holds no PEM certificate", c.TLSCAFile)
			}
			cfg.RootCAs = pool
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	return opts, nil
}

// EnsureTopics creates the topics that do not exist yet. Existing topics are
// left as they are: partitions and retention of live topics are the
// operator's business.
func EnsureTopics(ctx context.Context, cl *kgo.Client, c KafkaConfig) error {
	adm := kadm.NewClient(cl)
	t := TopicsFor(c.TopicPrefix)
	cfg := map[string]*string{}
	if c.Retention > 0 {
		r := fmt.Sprint(c.Retention.Milliseconds())
		cfg["retention.ms"] = &r
	}
	resp, err := adm.CreateTopics(ctx, c.Partitions, c.ReplicationFactor, cfg, t.Messages, t.Events)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w (%s)", r.Topic, r.Err, r.ErrMessage)
		}
	}
	return nil
}

var (
	published = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "gochat_dispatch_published_total", Help: "Dispatch records published to Kafka, by topic and result.",
	}, []string{"topic", "result"})
)

// Publisher sends dispatch events to Kafka without making the caller wait:
// the sender already has its ack. A message record that cannot be published
// stays in im-repo's outbox, and im-logic's relay publishes it again.
type Publisher struct {
	cl     *kgo.Client
	topics Topics
	log    *slog.Logger
}

// DefaultLinger lets records published within a millisecond of each
// other (a busy send path's batches) go in one produce request.
const DefaultLinger = time.Millisecond

// NewPublisher connects a producer. It keeps per-partition order (idempotent
// producer) and retries for up to deliveryTimeout.
func NewPublisher(ctx context.Context, c KafkaConfig, log *slog.Logger) (*Publisher, error) {
	opts, err := c.ClientOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(cmp.Or(c.Linger, DefaultLinger)),
		kgo.RecordDeliveryTimeout(max(c.DeliveryTimeout, time.Second)),
		kgo.MaxBufferedRecords(100_000),
		kgo.ProducerBatchCompression(kgo.Lz4Compression(), kgo.NoCompression()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer: %w", err)
	}
	if c.EnsureTopics {
		if err := EnsureTopics(ctx, cl, c); err != nil {
			cl.Close()
			return nil, err
		}
	}
	return &Publisher{cl: cl, topics: TopicsFor(c.TopicPrefix), log: log}, nil
}

// Close flushes what is buffered (bounded by ctx) and closes the client.
func (p *Publisher) Close(ctx context.Context) {
	if err := p.cl.Flush(ctx); err != nil {
		p.log.Warn("kafka flush on close", "err", err)
	}
	p.cl.Close()
}

// Publish queues an event keyed by its conversation; done (if not nil) runs
// once Kafka has it (nil error) or the producer gave up on it.
func (p *Publisher) Publish(ev *gochatv1.DispatchEvent, done func(error)) {
	topic, key := p.topics.Events, ""
	switch e := ev.Event.(type) {
	case *gochatv1.DispatchEvent_Message:
		topic, key = p.topics.Messages, e.Message.ConversationId
	case *gochatv1.DispatchEvent_Read:
		key = e.Read.ConversationId
	case *gochatv1.DispatchEvent_Group:
		key = e.Group.ConversationId
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		p.log.Error("encode dispatch event", "err", err)
		if done != nil {
			done(err)
		}
		return
	}
	p.cl.TryProduce(context.Background(), &kgo.Record{Topic: topic, Key: []byte(key), Value: b}, func(r *kgo.Record, err error) {
		if err != nil {
			published.WithLabelValues(r.Topic, "error").Inc()
			p.log.Error("publish dispatch event failed", "topic", r.Topic, "conversation_id", string(r.Key), "err", err)
		} else {
			published.WithLabelValues(r.Topic, "ok").Inc()
		}
		if done != nil {
			done(err)
		}
	})
}

// SendNow sends the records published so far without waiting out the
// producer's linger: the caller published a whole batch (one store's
// messages) and nothing more is coming with it, so lingering would only add
// latency. Records published afterwards linger as usual, so that concurrent
// batches under load still share requests.
func (p *Publisher) SendNow() {
	// Flush stops every linger before it waits for the records' acks; with
	// a context already done it returns at once, leaving them sent.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = p.cl.Flush(ctx)
}

// Decode parses a record value.
func Decode(value []byte) (*gochatv1.DispatchEvent, error) {
	var ev gochatv1.DispatchEvent
	if err := proto.Unmarshal(value, &ev); err != nil {
		return nil, fmt.Errorf("decode dispatch event: %w", err)
	}
	return &ev, nil
}
