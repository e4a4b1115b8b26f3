package repo_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// TestOutboxUnderLoad stores, relays and clears the outbox at once, as im-logic
// does under a backlog: senders fill the outbox, a relay claims rows while the
// first publishes' acknowledgements clear them, and some acknowledgements come
// twice (a relayed message is confirmed by Kafka again). None of it may fail
// (a deadlock between the clearing, the claiming and the inserts was seen at
// 5,000 msg/s), and every message must end up stored once, in seq order.
func TestOutboxUnderLoad(t *testing.T) {
	e := start(t, "mysql")
	owner := user(t, e, "o")
	var convs []*gochatv1.Conversation
	for i := 0; i < 6; i++ {
		convs = append(convs, group(t, e, owner))
	}
	const senders, each = 12, 150
	stored := make(chan string, senders*each)
	errs := make(chan error, senders*each+1000)
	var sendWG, bgWG sync.WaitGroup
	for w := 0; w < senders; w++ {
		sendWG.Add(1)
		go func() {
			defer sendWG.Done()
			for i := 0; i < each; i++ {
				r, err := store(e, convs[(w+i)%len(convs)].Id, owner.Id, fmt.Sprintf("s%d-%d", w, i))
				if err != nil {
					errs <- fmt.Errorf("store: %w", err)
					continue
				}
				stored <- r.Message.Id
			}
		}()
	}
	done := make(chan struct{})
	ack := func(ids []string) {
		if _, err := e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{MessageIds: ids}); err != nil {
			errs <- fmt.Errorf("clear: %w", err)
		}
	}
	// Two clearers, as a slow clear and the next flush overlap; each clears
	// what was stored, and the second also what the first cleared already.
	for c := 0; c < 2; c++ {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			var prev []string
			for {
				var ids []string
			fill:
				for len(ids) < 100 {
					select {
					case id := <-stored:
						ids = append(ids, id)
					case <-time.After(5 * time.Millisecond):
						break fill
					}
				}
				if len(ids) == 0 {
					select {
					case <-done:
						return
					default:
						continue
					}
				}
				ack(append(ids, prev...))
				prev = ids
			}
		}()
	}
	// Two relays (two im-logic replicas) claim everything stored, at once.
	for r := 0; r < 2; r++ {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				res, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(time.Hour).UnixMilli(), Limit: 50})
				if err != nil {
					errs <- fmt.Errorf("relay: %w", err)
					continue
				}
				var ids []string
				for _, m := range res.Messages {
					ids = append(ids, m.Id)
				}
				if len(ids) > 0 {
					ack(ids)
				}
			}
		}()
	}
	sendWG.Wait()
	close(done)
	bgWG.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 5 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d calls failed", n)
	}
	total := checkGapless(t, e, convs, owner.Id)
	if total != senders*each {
		t.Fatalf("stored %d messages, want %d", total, senders*each)
	}
}
