package repo_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/repo"
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

// TestOutboxTouchesOnlyItsRows holds one outbox row locked, as a relay's
// claim does until it commits, and clears and claims other rows beside it.
// Neither may wait on the held row: MariaDB scanned the small outbox for a
// DELETE or UPDATE by key, and a scan waits on every held row, which is how
// a clear and a claim deadlocked under load.
func TestOutboxTouchesOnlyItsRows(t *testing.T) {
	cfg := dbConfig(t, "mysql")
	e := startWith(t, cfg, repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: 1, StoreMaxBatch: 64, OutboxLease: time.Minute})
	raw, err := sql.Open("mysql", cfg.MySQLDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	owner := user(t, e, "o")
	conv := group(t, e, owner)
	for range 2 { // two more events: group creations
		group(t, e, owner)
	}
	var msgIDs []string
	for i := range 6 {
		r, err := store(e, conv.Id, owner.Id, fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		msgIDs = append(msgIDs, r.Message.Id)
	}
	var eventIDs []int64
	rows, err := raw.QueryContext(ctx, "SELECT id FROM event_outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		eventIDs = append(eventIDs, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(eventIDs) < 3 {
		t.Fatalf("%d events recorded, want one a group", len(eventIDs))
	}

	// hold locks one row of table in a transaction left open until the test
	// ends, as a claim that has not committed yet.
	hold := func(query string, arg any) {
		t.Helper()
		tx, err := raw.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		var got any
		if err := tx.QueryRowContext(ctx, query, arg).Scan(&got); err != nil {
			t.Fatalf("lock a row: %v", err)
		}
	}
	// The last message is held; the others are claimed and cleared.
	hold("SELECT message_id FROM outbox WHERE message_id = ? FOR UPDATE", msgIDs[len(msgIDs)-1])

	// A wait would last innodb_lock_wait_timeout (50 s by default); the
	// deadline only keeps a regression from hanging the run.
	call := func(name string, f func(ctx context.Context) error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := f(cctx); err != nil {
			t.Fatalf("%s beside a held row: %v", name, err)
		}
	}
	call("claim", func(ctx context.Context) error {
		res, err := e.client.ListUndispatched(ctx, &gochatv1.ListUndispatchedRequest{StoredBeforeMs: time.Now().Add(time.Hour).UnixMilli(), Limit: 3})
		if err == nil && len(res.Messages) != 3 {
			err = fmt.Errorf("claimed %d messages, want 3", len(res.Messages))
		}
		return err
	})
	// A claim of events waits for held events by design (a conversation's
	// events go out in order), so the last event is held for the clear only.
	hold("SELECT id FROM event_outbox WHERE id = ? FOR UPDATE", eventIDs[len(eventIDs)-1])
	call("clear", func(ctx context.Context) error {
		var events []string
		for _, id := range eventIDs[:len(eventIDs)-1] {
			events = append(events, strconv.FormatInt(id, 10))
		}
		// Unsorted, twice over, and with an id already gone: a clear names
		// what Kafka confirmed, in any order.
		ids := append(slices.Clone(msgIDs[:len(msgIDs)-1]), msgIDs[0], "06h2wh21kekt4syjtz16jcy2cg")
		slices.Reverse(ids)
		_, err := e.client.AckDispatched(ctx, &gochatv1.AckDispatchedRequest{MessageIds: ids, EventIds: events})
		return err
	})
	var left int
	if err := raw.QueryRowContext(ctx, "SELECT COUNT(*) FROM outbox").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Fatalf("%d outbox rows left, want the held one", left)
	}
	if err := raw.QueryRowContext(ctx, "SELECT COUNT(*) FROM event_outbox").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 1 {
		t.Fatalf("%d event outbox rows left, want the held one", left)
	}
}
