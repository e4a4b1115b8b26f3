package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

// sendBatcher carries the sessions' sends to im-logic in SendBatch calls.
// Sends that come while earlier batches are in flight go together in the
// next, so under load one call carries dozens (a unary call per message was
// most of the send path's CPU: HTTP/2 framing, headers and a goroutine at
// each of two hops), and under light load a send goes at once, alone. A
// session has one call in flight at a time (runCalls), so batching keeps
// each session's order.
type sendBatcher struct {
	logic   gochatv1.LogicServiceClient
	timeout time.Duration
	log     *slog.Logger
	queue   chan *pendingSend
	slots   chan struct{} // one per batch in flight
	// maxBytes bounds a batch's content bytes (sendBatchBytes; a test's own).
	maxBytes int
	// singleUntil is when to try SendBatch again after an im-logic without
	// it (an older version, during a roll) answered Unimplemented; until
	// then every send is a call of its own.
	singleUntil atomic.Int64
	batchSize   prometheus.Histogram
	flushes     sync.WaitGroup
}

type pendingSend struct {
	req  *gochatv1.SendRequest
	done chan sendOutcome // buffered: the batch never waits for a waiter gone
}

type sendOutcome struct {
	resp *gochatv1.SendResponse
	err  error
}

const (
	// sendBatchMax bounds one call's sends (im-logic takes up to 1,000).
	sendBatchMax = 512
	// sendBatchBytes bounds one call's content: a batch stops growing once
	// it is past it, far below gRPC's 16 MiB message limit even with
	// --max-content-bytes at im-repo's ceiling (64 KiB).
	sendBatchBytes = 2 << 20
	// sendBatchesInFlight bounds the calls in flight: enough that a batch
	// forms while the previous ones are stored (im-repo commits them
	// together), few enough that a burst makes batches, not calls.
	sendBatchesInFlight = 16
	// sendQueue bounds the sends waiting for a batch; each session has at
	// most one, so this is only reached by that many senders at once, and
	// then a send waits for room within its call's deadline.
	sendQueue = 4096
	// singleFor is how long the gateway sends one message a call after
	// im-logic said it has no SendBatch.
	singleFor = time.Minute
)

func newSendBatcher(logic gochatv1.LogicServiceClient, timeout time.Duration, log *slog.Logger, batchSize prometheus.Histogram) *sendBatcher {
	return &sendBatcher{
		logic: logic, timeout: timeout, log: log, batchSize: batchSize,
		queue: make(chan *pendingSend, sendQueue), slots: make(chan struct{}, sendBatchesInFlight),
		maxBytes: sendBatchBytes,
	}
}

// send queues req for the next batch and waits for its answer, or for ctx.
// A send whose ctx ends after it was queued may still be stored; the client
// resends with the same client_msg_id, which finds it.
func (b *sendBatcher) send(ctx context.Context, req *gochatv1.SendRequest) (*gochatv1.SendResponse, error) {
	p := &pendingSend{req: req, done: make(chan sendOutcome, 1)}
	select {
	case b.queue <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case o := <-p.done:
		return o.resp, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run forms batches and sends them until ctx ends, then waits for the
// calls in flight. The gateway ends ctx only after every session's calls
// have returned, so nothing is left queued.
func (b *sendBatcher) run(ctx context.Context) {
	defer b.flushes.Wait()
	for {
		select {
		case b.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		var batch []*pendingSend
		select {
		case p := <-b.queue:
			batch = append(batch, p)
		case <-ctx.Done():
			return
		}
		size := len(batch[0].req.Content)
	fill:
		for len(batch) < sendBatchMax && size < b.maxBytes {
			select {
			case p := <-b.queue:
				batch = append(batch, p)
				size += len(p.req.Content)
			default:
				break fill
			}
		}
		b.flushes.Add(1)
		go func() {
			defer func() { <-b.slots; b.flushes.Done() }()
			b.flush(ctx, batch)
		}()
	}
}

// flush sends one batch and answers each of its sends.
func (b *sendBatcher) flush(ctx context.Context, batch []*pendingSend) {
	b.batchSize.Observe(float64(len(batch)))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	defer cancel()
	if time.Now().UnixNano() >= b.singleUntil.Load() {
		reqs := make([]*gochatv1.SendRequest, len(batch))
		for i, p := range batch {
			reqs[i] = p.req
		}
		// A session can start before im-logic answers (its hello needs only
		// the token and presence): its sends wait, within the call's
		// deadline, for the connection rather than fail at once, so that a
		// client's resends after a reconnect keep their order.
		r, err := b.logic.SendBatch(ctx, &gochatv1.SendBatchRequest{Sends: reqs}, grpc.WaitForReady(true))
		if status.Code(err) != codes.Unimplemented {
			b.answer(batch, r, err)
			return
		}
		b.singleUntil.Store(time.Now().Add(singleFor).UnixNano())
		b.log.Warn("im-logic has no SendBatch (an older version): one message a call for a while", "for", singleFor)
	}
	var wg sync.WaitGroup
	for _, p := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.logic.Send(ctx, p.req, grpc.WaitForReady(true))
			p.done <- sendOutcome{resp: r, err: err}
		}()
	}
	wg.Wait()
}

func (b *sendBatcher) answer(batch []*pendingSend, r *gochatv1.SendBatchResponse, err error) {
	if err == nil && len(r.Results) != len(batch) {
		err = fmt.Errorf("im-logic answered %d of %d sends", len(r.Results), len(batch))
		b.log.Error("send batch", "err", err)
	}
	for i, p := range batch {
		switch {
		case err != nil:
			p.done <- sendOutcome{err: err}
		case r.Results[i].Error != nil:
			p.done <- sendOutcome{err: apierror.FromItem(r.Results[i].Error)}
		case r.Results[i].Sent.GetMessage() == nil:
			b.log.Error("send batch: a result with neither a message nor an error", "index", i)
			p.done <- sendOutcome{err: apierror.New(apierror.Internal, "internal error")}
		default:
			p.done <- sendOutcome{resp: r.Results[i].Sent}
		}
	}
}
