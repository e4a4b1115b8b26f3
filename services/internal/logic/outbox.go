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

var (
	relayed = promauto.NewCounter(prometheus.CounterOpts{
		Name: "gochat_logic_outbox_relayed_total", Help: "Messages published again from the outbox (their first publish was lost or slow).",
	})
	relayedEvents = promauto.NewCounter(prometheus.CounterOpts{
		Name: "gochat_logic_outbox_events_relayed_total", Help: "Group and read events published again from the outbox (their first publish was lost or slow).",
	})
)

// outbox makes sure every stored message, group event and read event
// reaches Kafka. im-repo writes each message (and each event) to its outbox
// in the transaction of the change; it leaves the outbox when Kafka confirms
// the publish. Messages that stay longer than
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
	acks       chan string // message ids Kafka has
	eventAcks  chan string // event ids Kafka has

	mu       sync.Mutex
	inFlight map[string]struct{}
	// again holds what the relay claimed while its publish was still in
	// flight here: if that publish fails, it is made again at once rather
	// than after the relay's lease on it ends.
	again map[string]pending
}

// pending is a publish to make again.
type pending struct {
	id   string
	acks chan<- string
	ev   *gochatv1.DispatchEvent
}

func newOutbox(repo gochatv1.RepoServiceClient, pub Publisher, relayAfter time.Duration, log *slog.Logger) *outbox {
	return &outbox{repo: repo, pub: pub, log: log, relayAfter: relayAfter, acks: make(chan string, 16384), eventAcks: make(chan string, 16384), inFlight: map[string]struct{}{}, again: map[string]pending{}}
}

// publish sends a stored message to Kafka and clears it from the outbox once
// delivered. It reports false when a publish of it is already in flight.
func (o *outbox) publish(m *gochatv1.Message, originSession string) bool {
	return o.send("m:"+m.Id, m.Id, o.acks, &gochatv1.DispatchEvent{Event: &gochatv1.DispatchEvent_Message{Message: m}, OriginSessionId: originSession})
}

// publishEvent is publish for a recorded group or read event.
func (o *outbox) publishEvent(e *gochatv1.OutboxEvent) bool {
	return o.send("e:"+e.Id, e.Id, o.eventAcks, e.Event)
}

func (o *outbox) send(key, id string, acks chan<- string, ev *gochatv1.DispatchEvent) bool {
	o.mu.Lock()
	if _, busy := o.inFlight[key]; busy {
		o.again[key] = pending{id: id, acks: acks, ev: ev}
		o.mu.Unlock()
		return false
	}
	o.inFlight[key] = struct{}{}
	o.mu.Unlock()
	o.pub.Publish(ev, func(err error) {
		o.mu.Lock()
		delete(o.inFlight, key)
		p, retry := o.again[key]
		delete(o.again, key)
		o.mu.Unlock()
		if err != nil {
			if retry {
				// Failures come in the order of the publishes, so the
				// publishes made again keep each conversation's order.
				o.send(key, p.id, p.acks, p.ev)
			}
			return // it stays in the outbox; the relay tries again
		}
		select {
		case acks <- id:
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

// drain takes up to n ids from c without waiting.
func drain(c <-chan string, n int) []string {
	var ids []string
	for len(ids) < n {
		select {
		case id := <-c:
			ids = append(ids, id)
		default:
			return ids
		}
	}
	return ids
}

func (o *outbox) clear(ctx context.Context) {
	for {
		msgs := drain(o.acks, 1000)
		events := drain(o.eventAcks, 1000)
		if len(msgs) == 0 && len(events) == 0 {
			return
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := o.repo.AckDispatched(cctx, &gochatv1.AckDispatchedRequest{MessageIds: msgs, EventIds: events})
		cancel()
		if err != nil {
			// They stay in the outbox and are published once more: harmless.
			o.log.Warn("clear dispatched messages and events from the outbox", "messages", len(msgs), "events", len(events), "err", err)
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
		// In id order, through the one producer: each conversation's
		// events reach its partition in the order of their changes.
		for _, e := range r.Events {
			if o.publishEvent(e) {
				relayedEvents.Inc()
				n++
			}
		}
		if len(r.Messages) < relayPage && len(r.Events) < relayPage {
			break
		}
	}
	if n > 0 {
		o.log.Info("publishing messages and events again from the outbox", "count", n)
	}
}
