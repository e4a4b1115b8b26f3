// Package kafka manages a ChatCluster's topics with franz-go's kadm.
package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
)

// Condition reasons for KafkaTopicsReady.
const (
	ReasonReady                    = "TopicsReady"
	ReasonBrokersUnreachable       = "BrokersUnreachable"
	ReasonReplicationFactorTooHigh = "ReplicationFactorTooHigh"
	ReasonTopicError               = "TopicError"
)

// Error is a topic problem with its condition reason.
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Connection is how to reach the brokers.
type Connection struct {
	Brokers  []string
	Username string
	Password string
	// TLS to the brokers, verified with CA, or the system roots when CA is empty.
	TLS bool
	CA  []byte
}

// Want is the topics' desired shape.
type Want struct {
	Topics            []string
	Partitions        int32
	ReplicationFactor int16
	Retention         time.Duration
}

// Action is something Ensure changed, for an Event.
type Action struct {
	Reason  string // TopicCreated, PartitionsRaised, RetentionChanged
	Topic   string
	Message string
}

// Admin opens an admin client; Close it.
func Admin(c Connection) (*kadm.Client, func(), error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.DialTimeout(3 * time.Second),
		kgo.RequestTimeoutOverhead(5 * time.Second),
		kgo.RetryTimeout(5 * time.Second),
		kgo.RequestRetries(1),
	}
	if c.Username != "" {
		opts = append(opts, kgo.SASL(plain.Auth{User: c.Username, Pass: c.Password}.AsMechanism()))
	}
	if c.TLS || len(c.CA) > 0 {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if len(c.CA) > 0 {
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(c.CA) {
				return nil, nil, &Error{ReasonTopicError, errors.New("the Kafka CA holds no PEM certificate")}
			}
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, nil, &Error{ReasonBrokersUnreachable, fmt.Errorf("kafka client: %w", err)}
	}
	return kadm.NewClient(cl), cl.Close, nil
}

// Ensure creates missing topics, raises partitions (never lowers them) and
// sets retention. It returns what it changed and the partitions now in place.
func Ensure(ctx context.Context, adm *kadm.Client, w Want) ([]Action, int32, error) {
	brokers, err := adm.ListBrokers(ctx)
	if err != nil {
		return nil, 0, &Error{ReasonBrokersUnreachable, fmt.Errorf("cannot reach the Kafka brokers: %w", err)}
	}
	if int(w.ReplicationFactor) > len(brokers) {
		return nil, 0, &Error{ReasonReplicationFactorTooHigh, fmt.Errorf("replicationFactor %d is more than the %d broker(s) Kafka has: lower spec.kafka.replicationFactor", w.ReplicationFactor, len(brokers))}
	}
	details, err := adm.ListTopics(ctx, w.Topics...)
	if err != nil {
		return nil, 0, &Error{ReasonBrokersUnreachable, fmt.Errorf("list topics: %w", err)}
	}
	retention := strconv.FormatInt(w.Retention.Milliseconds(), 10)
	var actions []Action
	var missing []string
	have := w.Partitions
	for _, t := range w.Topics {
		d, ok := details[t]
		if !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, t)
			continue
		}
		if d.Err != nil {
			return nil, 0, &Error{ReasonTopicError, fmt.Errorf("describe topic %s: %w", t, d.Err)}
		}
		n := int32(len(d.Partitions))
		if n < w.Partitions {
			resp, err := adm.UpdatePartitions(ctx, int(w.Partitions), t)
			if err == nil {
				err = resp.Error()
			}
			if err != nil {
				return actions, 0, &Error{ReasonTopicError, fmt.Errorf("raise partitions of %s to %d: %w", t, w.Partitions, err)}
			}
			actions = append(actions, Action{"PartitionsRaised", t, fmt.Sprintf("topic %s: partitions %d -> %d", t, n, w.Partitions)})
			n = w.Partitions
		}
		have = min(have, n)
	}
	if len(missing) > 0 {
		resp, err := adm.CreateTopics(ctx, w.Partitions, w.ReplicationFactor, map[string]*string{"retention.ms": &retention}, missing...)
		if err != nil {
			return actions, 0, &Error{ReasonBrokersUnreachable, fmt.Errorf("create topics: %w", err)}
		}
		for _, r := range resp.Sorted() {
			if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
				reason := ReasonTopicError
				if errors.Is(r.Err, kerr.InvalidReplicationFactor) {
					reason = ReasonReplicationFactorTooHigh
				}
				return actions, 0, &Error{reason, fmt.Errorf("create topic %s: %w %s", r.Topic, r.Err, r.ErrMessage)}
			}
			actions = append(actions, Action{"TopicCreated", r.Topic, fmt.Sprintf("topic %s: %d partitions, replication factor %d, retention %s", r.Topic, w.Partitions, w.ReplicationFactor, w.Retention)})
		}
	}
	configs, err := adm.DescribeTopicConfigs(ctx, w.Topics...)
	if err != nil {
		return actions, 0, &Error{ReasonTopicError, fmt.Errorf("describe topic configs: %w", err)}
	}
	var alter []string
	for _, rc := range configs {
		if rc.Err != nil {
			return actions, 0, &Error{ReasonTopicError, fmt.Errorf("describe config of %s: %w", rc.Name, rc.Err)}
		}
		cur := ""
		for _, c := range rc.Configs {
			if c.Key == "retention.ms" && c.Value != nil {
				cur = *c.Value
			}
		}
		if cur != retention {
			alter = append(alter, rc.Name)
		}
	}
	if len(alter) > 0 {
		resp, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "retention.ms", Value: &retention}}, alter...)
		if err != nil {
			return actions, 0, &Error{ReasonTopicError, fmt.Errorf("set retention: %w", err)}
		}
		for _, r := range resp {
			if r.Err != nil {
				return actions, 0, &Error{ReasonTopicError, fmt.Errorf("set retention of %s: %w", r.Name, r.Err)}
			}
			actions = append(actions, Action{"RetentionChanged", r.Name, fmt.Sprintf("topic %s: retention %s", r.Name, w.Retention)})
		}
	}
	return actions, have, nil
}

// Delete deletes the topics; topics already gone are fine.
func Delete(ctx context.Context, adm *kadm.Client, topics []string) error {
	resp, err := adm.DeleteTopics(ctx, topics...)
	if err != nil {
		return &Error{ReasonBrokersUnreachable, fmt.Errorf("delete topics: %w", err)}
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.UnknownTopicOrPartition) {
			return &Error{ReasonTopicError, fmt.Errorf("delete topic %s: %w", r.Topic, r.Err)}
		}
	}
	return nil
}
