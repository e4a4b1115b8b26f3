package task

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// kafkaStaleAfter is how long the consumer may go without a single answer
// from a broker before it counts as cut off. A consumer in a group
// heartbeats every 3s and a fetch waits at most 5s, so a healthy one hears
// from Kafka several times in this window, with or without records.
const kafkaStaleAfter = 12 * time.Second

// kafkaHealth is a franz-go hook that remembers when a broker last answered
// one of the consumer's requests (fetch, heartbeat, join, metadata...).
type kafkaHealth struct {
	lastAnswer atomic.Int64 // Unix ns; 0: never
}

var _ kgo.HookBrokerRead = (*kafkaHealth)(nil)

func (h *kafkaHealth) OnBrokerRead(_ kgo.BrokerMetadata, _ int16, _ int, _, _ time.Duration, err error) {
	if err == nil {
		h.lastAnswer.Store(time.Now().UnixNano())
	}
}

// check fails while no broker has answered within kafkaStaleAfter.
func (h *kafkaHealth) check(now time.Time) error {
	last := h.lastAnswer.Load()
	if last == 0 {
		return errors.New("no answer from Kafka yet")
	}
	if ago := now.Sub(time.Unix(0, last)); ago > kafkaStaleAfter {
		return fmt.Errorf("no answer from Kafka for %s", ago.Truncate(time.Second))
	}
	return nil
}

// KafkaHealthy reports whether the consumer is connected to Kafka and
// fetching: a broker answered it recently. It is im-task's readiness.
func (t *Task) KafkaHealthy(context.Context) error { return t.kafka.check(time.Now()) }
