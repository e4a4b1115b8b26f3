package repo

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"gorm.io/gorm"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/ids"
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
	log      *slog.Logger
	lanes    []chan *storeReq
	maxBatch int
	timeout  time.Duration
	wg       sync.WaitGroup
	stop     chan struct{}
}

// NewSender makes a Sender; Run starts its workers.
func NewSender(store *Store, log *slog.Logger, workers, maxBatch int, timeout time.Duration) *Sender {
	if store.db.Dialector.Name() != "mysql" {
		workers = 1 // SQLite has one writer; more would only wait on each other.
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	lanes := make([]chan *storeReq, max(workers, 1))
	for i := range lanes {
		lanes[i] = make(chan *storeReq, maxBatch*2)
	}
	return &Sender{store: store, log: log, lanes: lanes, maxBatch: maxBatch, timeout: timeout, stop: make(chan struct{})}
}

// Run commits batches until ctx ends, then finishes what is queued.
func (b *Sender) Run(ctx context.Context) {
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
		err = b.store.readCommittedTx(ctx, func(tx *gorm.DB) error {
			var txErr error
			results, txErr = b.store.storeBatchTx(tx, batch)
			return txErr
		})
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

type senderKey struct{ sender, clientMsgID string }

// storeBatchTx is the group commit: dedupe on (sender, client_msg_id), check
// membership, take seqs from the locked conversation rows, insert, and mark
// the senders' own messages read. Seqs come from MySQL under the row lock in
// the same transaction as the insert, so they never go back, are never reused
// and leave no gap: a rolled-back batch gives its seqs back with it.
func (s *Store) storeBatchTx(tx *gorm.DB, batch []*storeReq) ([]storeResult, error) {
	results := make([]storeResult, len(batch))
	keys := make([][]any, 0, len(batch))
	for _, r := range batch {
		keys = append(keys, []any{r.in.SenderId, r.in.ClientMsgId})
	}
	var existing []messageRow
	if err := tx.Where("(sender_id, client_msg_id) IN ?", keys).Find(&existing).Error; err != nil {
		return nil, fmt.Errorf("look up client_msg_ids: %w", err)
	}
	known := make(map[senderKey]*messageRow, len(existing))
	for i := range existing {
		known[senderKey{existing[i].SenderID, existing[i].ClientMsgID}] = &existing[i]
	}

	// first[k] is the index of the batch entry that stores key k; later entries copy it.
	first := map[senderKey]int{}
	var pending []int
	for i, r := range batch {
		k := senderKey{r.in.SenderId, r.in.ClientMsgId}
		if m, ok := known[k]; ok {
			results[i] = dupResult(m, r.in.ConversationId)
			continue
		}
		if _, ok := first[k]; ok {
			continue
		}
		first[k] = i
		pending = append(pending, i)
	}

	if len(pending) > 0 {
		if err := s.insertPending(tx, batch, pending, results); err != nil {
			return nil, err
		}
	}
	for i, r := range batch {
		j, ok := first[senderKey{r.in.SenderId, r.in.ClientMsgId}]
		if ok && j != i {
			res := results[j]
			if res.err == nil {
				if res.msg.ConversationId != r.in.ConversationId {
					res = storeResult{err: reusedIDError(r.in.ClientMsgId)}
				} else {
					res.dup = true
				}
			}
			results[i] = res
		}
	}
	return results, nil
}

func dupResult(m *messageRow, convID string) storeResult {
	if m.ConversationID != convID {
		return storeResult{err: reusedIDError(m.ClientMsgID)}
	}
	return storeResult{msg: messageToProto(m), dup: true}
}

func reusedIDError(clientMsgID string) error {
	return apierror.New(apierror.AlreadyExists, "client_msg_id %q was already used for a message in another conversation", clientMsgID)
}

func (s *Store) insertPending(tx *gorm.DB, batch []*storeReq, pending []int, results []storeResult) error {
	pairs := make([][]any, 0, len(pending))
	for _, i := range pending {
		pairs = append(pairs, []any{batch[i].in.ConversationId, batch[i].in.SenderId})
	}
	var members []memberRow
	if err := tx.Table(s.byPrimaryKey("members")).Select("conversation_id, user_id").Where("(conversation_id, user_id) IN ?", pairs).Find(&members).Error; err != nil {
		return fmt.Errorf("check membership: %w", err)
	}
	isMember := make(map[[2]string]bool, len(members))
	for _, m := range members {
		isMember[[2]string{m.ConversationID, m.UserID}] = true
	}
	count := map[string]int64{}
	ok := pending[:0:0]
	for _, i := range pending {
		in := batch[i].in
		if !isMember[[2]string{in.ConversationId, in.SenderId}] {
			results[i] = storeResult{err: apierror.New(apierror.NotFound, "conversation not found")}
			continue
		}
		count[in.ConversationId]++
		ok = append(ok, i)
	}
	if len(ok) == 0 {
		return nil
	}
	convIDs := make([]string, 0, len(count))
	for id := range count {
		convIDs = append(convIDs, id)
	}
	sort.Strings(convIDs) // one lock order for every batch: no deadlocks between them
	// Take the seqs with the UPDATE that locks the rows, then read where they
	// ended: the transaction sees its own change, and the row lock holds
	// every other writer of these conversations off until the commit.
	now := s.nowMs()
	var sb strings.Builder
	args := make([]any, 0, 2*len(convIDs)+len(convIDs)+1)
	sb.WriteString("UPDATE " + s.byPrimaryKey("conversations") + " SET max_seq = max_seq + CASE id")
	for _, id := range convIDs {
		sb.WriteString(" WHEN ? THEN ?")
		args = append(args, id, count[id])
	}
	sb.WriteString(" ELSE 0 END, last_activity_ms = ? WHERE id IN (" + placeholders(len(convIDs)) + ")")
	args = append(args, now)
	for _, id := range convIDs {
		args = append(args, id)
	}
	if err := tx.Exec(sb.String(), args...).Error; err != nil {
		return fmt.Errorf("advance seqs: %w", err)
	}
	var convs []conversationRow
	if err := tx.Table(s.byPrimaryKey("conversations")).Select("id, max_seq").Where("id IN ?", convIDs).Find(&convs).Error; err != nil {
		return fmt.Errorf("read seqs: %w", err)
	}
	if len(convs) != len(convIDs) {
		return fmt.Errorf("read seqs: %d of %d conversations found", len(convs), len(convIDs))
	}
	next := make(map[string]int64, len(convs))
	for _, c := range convs {
		next[c.ID] = c.MaxSeq - count[c.ID] // the last seq before this batch
	}
	rows := make([]messageRow, 0, len(ok))
	readUpTo := map[[2]string]int64{}
	for _, i := range ok {
		in := batch[i].in
		next[in.ConversationId]++
		row := messageRow{
			ID: ids.New(), ConversationID: in.ConversationId, Seq: next[in.ConversationId], SenderID: in.SenderId,
			ClientMsgID: in.ClientMsgId, ContentType: in.ContentType, Content: in.Content, CreatedAtMs: now,
		}
		rows = append(rows, row)
		readUpTo[[2]string{in.ConversationId, in.SenderId}] = row.Seq
	}

	if err := tx.CreateInBatches(&rows, 500).Error; err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	outbox := make([]outboxRow, len(rows))
	for i := range rows {
		outbox[i] = outboxRow{MessageID: rows[i].ID, StoredAtMs: now}
	}
	if err := tx.CreateInBatches(&outbox, 500).Error; err != nil {
		return fmt.Errorf("record messages in the outbox: %w", err)
	}

	// The sender has read their own message: one statement for the batch.
	sb.Reset()
	args = args[:0]
	sb.WriteString("UPDATE " + s.byPrimaryKey("members") + " SET read_seq = CASE")
	where := make([][]any, 0, len(readUpTo))
	for k, seq := range readUpTo {
		sb.WriteString(" WHEN conversation_id = ? AND user_id = ? AND read_seq < ? THEN ?")
		args = append(args, k[0], k[1], seq, seq)
		where = append(where, []any{k[0], k[1]})
	}
	sb.WriteString(" ELSE read_seq END WHERE (conversation_id, user_id) IN (")
	for i, w := range where {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(?, ?)")
		args = append(args, w...)
	}
	sb.WriteString(")")
	if err := tx.Exec(sb.String(), args...).Error; err != nil {
		return fmt.Errorf("mark own messages read: %w", err)
	}

	for n, i := range ok {
		results[i] = storeResult{msg: messageToProto(&rows[n])}
	}
	messagesStored.Add(float64(len(rows)))
	return nil
}
