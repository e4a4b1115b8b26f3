package repo

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"gorm.io/gorm"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

var (
	storeBatchSize = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "gochat_repo_store_batch_size", Help: "Messages committed per store transaction.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	storeBatchSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "gochat_repo_store_batch_seconds", Help: "Time to commit one store transaction.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	messagesStored = promauto.NewCounter(prometheus.CounterOpts{
		Name: "gochat_repo_messages_stored_total", Help: "Messages stored (duplicates not counted).",
	})
)

// storeReq is one StoreMessage call waiting for its batch to commit.
type storeReq struct {
	in   *gochatv1.StoreMessageRequest
	done chan storeResult
}

type storeResult struct {
	msg *gochatv1.Message
	dup bool
	err error
}

// Sender commits concurrent StoreMessage calls together (group commit): one
// transaction, a fixed number of statements, whatever the batch holds. Under
// light load a batch is one message and nothing waits; under heavy load the
// batches grow, which is what lets one MySQL reach thousands of messages a second.
//
// With several workers, each conversation belongs to one of them (by a hash
// of its id), so batches in flight together never touch the same
// conversation or member rows: none waits for another's row locks, the
// next batch forms and runs while the previous one is still committing, and
// MySQL flushes their commits together. A conversation's messages still go
// through one worker in the order they came.
type Sender struct {
	store    *Store
	db       *sql.DB // MySQL: the workers' own connections, several statements a query (storeBatchMySQL)
	log      *slog.Logger
	lanes    []chan *storeReq
	maxBatch int
	timeout  time.Duration
	wg       sync.WaitGroup
	stop     chan struct{}
}

// NewSender makes a Sender; Run starts its workers.
func NewSender(store *Store, log *slog.Logger, workers, maxBatch int, timeout time.Duration) (*Sender, error) {
	if !store.mysql() {
		workers = 1 // SQLite has one writer; more would only wait on each other.
	}
	workers = max(workers, 1)
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	// A worker holds one connection at a time, and a batch that fails as a
	// whole is retried message by message on the same worker.
	db, err := openStoreDB(store, workers)
	if err != nil {
		return nil, err
	}
	lanes := make([]chan *storeReq, workers)
	for i := range lanes {
		lanes[i] = make(chan *storeReq, maxBatch*2)
	}
	return &Sender{store: store, db: db, log: log, lanes: lanes, maxBatch: maxBatch, timeout: timeout, stop: make(chan struct{})}, nil
}

// Run commits batches until ctx ends, then finishes what is queued and
// closes the workers' connections.
func (b *Sender) Run(ctx context.Context) {
	if b.db != nil {
		defer b.db.Close()
	}
	for _, lane := range b.lanes {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.work(ctx, lane)
		}()
	}
	<-ctx.Done()
	close(b.stop)
	b.wg.Wait()
}

// lane is the queue of the worker that stores conversation convID.
func (b *Sender) lane(convID string) chan *storeReq {
	if len(b.lanes) == 1 {
		return b.lanes[0]
	}
	h := fnv.New32a()
	h.Write([]byte(convID))
	return b.lanes[h.Sum32()%uint32(len(b.lanes))]
}

// Store queues one message and waits for its batch to commit.
func (b *Sender) Store(ctx context.Context, in *gochatv1.StoreMessageRequest) storeResult {
	return b.StoreAll(ctx, []*gochatv1.StoreMessageRequest{in})[0]
}

// StoreAll queues messages, each conversation's in the order given, and
// waits until each has its answer.
func (b *Sender) StoreAll(ctx context.Context, ins []*gochatv1.StoreMessageRequest) []storeResult {
	out := make([]storeResult, len(ins))
	queued := make([]*storeReq, len(ins))
	var refused error
	for i, in := range ins {
		if refused != nil {
			// The rest fail too: a later message stored after an earlier
			// one failed would be out of its sender's order.
			out[i].err = refused
			continue
		}
		r := &storeReq{in: in, done: make(chan storeResult, 1)}
		select {
		case b.lane(in.ConversationId) <- r:
			queued[i] = r
		case <-b.stop:
			refused = apierror.New(apierror.Unavailable, "im-repo is shutting down")
			out[i].err = refused
		case <-ctx.Done():
			refused = ctx.Err()
			out[i].err = refused
		}
	}
	// Once queued a message may be committed whatever ctx does, so wait for
	// the answer rather than report a failure for something that was stored.
	for i, r := range queued {
		if r != nil {
			out[i] = <-r.done
		}
	}
	return out
}

func (b *Sender) work(ctx context.Context, queue chan *storeReq) {
	batch := make([]*storeReq, 0, b.maxBatch)
	for {
		batch = batch[:0]
		select {
		case r := <-queue:
			batch = append(batch, r)
		case <-b.stop:
			// Drain: every queued caller gets an answer.
			for {
				select {
				case r := <-queue:
					b.commit(ctx, []*storeReq{r})
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < b.maxBatch {
			select {
			case r := <-queue:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		b.commit(ctx, batch)
	}
}

// commit stores a batch in one transaction. If the batch fails as a whole (a
// deadlock, a race with another replica on the same client_msg_id), each
// message is tried alone so one bad message cannot fail its neighbours.
//
// Each transaction runs under its own deadline (not the server's context: a
// stop must not abort a batch half-way, and not no deadline: a hung
// connection would block every send). A batch that runs out of time fails
// all its callers with unavailable at once; they retry with the same
// client_msg_id, which finds the message if it did commit.
func (b *Sender) commit(ctx context.Context, batch []*storeReq) {
	start := time.Now()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	results, err := b.storeWithRetry(cctx, batch)
	cancel()
	if err != nil && (errors.Is(err, context.DeadlineExceeded) || cctx.Err() != nil || errors.Is(err, driver.ErrBadConn)) {
		b.log.Error("storing a batch timed out: the database is not answering", "messages", len(batch), "timeout", b.timeout, "err", err)
		e := apierror.New(apierror.Unavailable, "the message store did not answer in time, try again")
		for _, r := range batch {
			r.done <- storeResult{err: e}
		}
		return
	}
	if err == nil {
		storeBatchSize.Observe(float64(len(batch)))
		storeBatchSeconds.Observe(time.Since(start).Seconds())
		for i, r := range batch {
			r.done <- results[i]
		}
		return
	}
	if len(batch) > 1 {
		for _, r := range batch {
			b.commit(ctx, []*storeReq{r})
		}
		return
	}
	if apierror.From(err).Code == apierror.Internal {
		b.log.Error("store message failed", "conversation_id", batch[0].in.ConversationId, "err", err)
	}
	batch[0].done <- storeResult{err: err}
}

func (b *Sender) storeWithRetry(ctx context.Context, batch []*storeReq) ([]storeResult, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var results []storeResult
		if b.db != nil {
			results, err = b.store.storeBatchMySQL(ctx, b.db, batch)
		} else {
			err = b.store.readCommittedTx(ctx, func(tx *gorm.DB) error {
				var txErr error
				results, txErr = b.store.storeBatchTx(tx, batch)
				return txErr
			})
		}
		if err == nil {
			return results, nil
		}
		// A deadlock, or another transaction storing the same client_msg_id
		// first: run again, and the dedupe lookup will find its message.
		if !isRetryable(err) && !isDuplicateKey(err) {
			return nil, err
		}
		time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
	}
	return nil, err
}
