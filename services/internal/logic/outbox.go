package logic

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

var relayed = promauto.NewCounter(prometheus.CounterOpts{
	Name: "gochat_logic_outbox_relayed_total", Help: "Messages published again from the outbox (their first publish was lost or slow).",
})

// outbox makes sure every stored message reaches Kafka. im-repo writes each
// message to its outbox in the message's own transaction; a message leaves
// it when Kafka confirms the publish. Messages that stay longer than
// relayAfter (im-logic died after the ack, or Kafka was down beyond the
// producer's retries) are published again, unless this process still has a
// publish of them in flight. Listing rows claims them for a lease, so
// replicas relay different rows; a message can still be published twice (a
// slow first publish and a relay), and im-task skips seqs it has pushed, and
// clients drop duplicates.
type outbox struct {
	repo       gochatv1.RepoServiceClient
	pub        Publisher
	log        *slog.Logger
	relayAfter time.Duration
	acks       chan string

	mu       sync.Mutex
	inFlight map[string]struct{}
}

func newOutbox(repo gochatv1.RepoServiceClient, pub Publisher, relayAfter time.Duration, log *slog.Logger) *outbox {
	return &outbox{repo: repo, pub: pub, log: log, relayAfter: relayAfter, acks: make(chan string, 16384), inFlight: map[string]struct{}{}}
}

// publish sends a stored message to Kafka and clears it from the outbox once
// delivered. It reports false when a publish of it is already in flight.
func (o *outbox) publish(m *gochatv1.Message, originSession string) bool {
	id := m.Id
	o.mu.Lock()
	if _, busy := o.inFlight[id]; busy {
		o.mu.Unlock()
		return false
	}
	o.inFlight[id] = struct{}{}
	o.mu.Unlock()
	o.pub.Publish(&gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Message{Message: m}, OriginSessionId: originSession}, func(err error) {
		o.mu.Lock()
		delete(o.inFlight, id)
		o.mu.Unlock()
		if err != nil {
			return // it stays in the outbox; the relay tries again
		}
		select {
		case o.acks <- id:
		default: // full: the relay will publish it again, which is safe
		}
	})
	return true
}

// run clears delivered messages in batches and relays stale ones until ctx ends.
func (o *outbox) run(ctx context.Context) {
	flush := time.NewTicker(200 * time.Millisecond)
	defer flush.Stop()
	relay := time.NewTicker(max(o.relayAfter/2, 100*time.Millisecond))
	defer relay.Stop()
	for {
		select {
		case <-ctx.Done():
			o.clear(context.WithoutCancel(ctx))
			return
		case <-flush.C:
			o.clear(ctx)
		case <-relay.C:
			o.relay(ctx)
		}
	}
}

func (o *outbox) clear(ctx context.Context) {
	for {
		var ids []string
	collect:
		for len(ids) < 1000 {
			select {
			case id := <-o.acks:
				ids = append(ids, id)
			default:
				break collect
			}
		}
		if len(ids) == 0 {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := o.repo.AckDispatched(cctx, &gochatv1.AckDispatchedRequest{MessageIds: ids})
		cancel()
		if err != nil {
			// They stay in the outbox and are published once more: harmless.
			o.log.Warn("clear dispatched messages from the outbox", "count", len(ids), "err", err)
			return
		}
	}
}

// relayPage and maxRelayInFlight bound one relay round: it claims pages
// (each claimed for a lease, so replicas relay different rows) for as long
// as they come full and Kafka keeps up, not one page per tick.
const (
	relayPage        = 200 // im-repo's largest page
	maxRelayInFlight = 20000
)

func (o *outbox) relay(ctx context.Context) {
	n := 0
	for ctx.Err() == nil {
		o.mu.Lock()
		busy := len(o.inFlight)
		o.mu.Unlock()
		if busy >= maxRelayInFlight {
			break // Kafka is behind: the next round goes on
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := o.repo.ListUndispatched(cctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(-o.relayAfter).UnixMilli(), Limit: relayPage})
		cancel()
		if err != nil {
			o.log.Warn("read the outbox", "err", err)
			break
		}
		for _, m := range r.Messages {
			if o.publish(m, "") {
				relayed.Inc()
				n++
			}
		}
		if len(r.Messages) < relayPage {
			break
		}
	}
	if n > 0 {
		o.log.Info("publishing messages again from the outbox", "count", n)
	}
}
