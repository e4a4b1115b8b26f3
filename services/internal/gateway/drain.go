package gateway

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/time/rate"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/services/internal/apierror"
)

// How a drain spaces its closes. The rate is sessions ÷ window, but never
// below minCloseRate, so that a few sessions do not linger for the whole
// window; finalFlush is kept free before the deadline for the close frames
// of whatever is still open to be written before the connections are cut.
const (
	minCloseRate   = 20.0 // closes per second
	maxFinalFlush  = 500 * time.Millisecond
	drainReason    = "gateway draining"
	deadlineReason = "gateway drain deadline"
)

// drainState is one drain: fixed when it starts, read by Stats.
type drainState struct {
	started  time.Time
	deadline time.Time
	window   time.Duration
	done     chan struct{} // closed when every session is gone or the deadline passed
}

// Drain empties the gateway. Sessions are told to reconnect, in a random
// order, after offsets spread uniformly over the window (or over
// sessions ÷ minCloseRate when that is shorter); session i is closed with
// 1001 when its after_ms has passed since its reconnect frame was queued, so a
// client, whose timer starts when the frame arrives, always reconnects after
// its old connection is closed. Whatever is still open at the deadline
// (a client that neither leaves nor reads its close) is cut then. Window 0 or
// timeout 0 means the gateway's --drain-window / --drain-timeout. A drain
// already running is left as it is and its state returned.
func (g *Gateway) Drain(window, timeout time.Duration) (*gochatv1.StatsResponse, error) {
	if window < 0 || timeout < 0 {
		return nil, apierror.New(apierror.InvalidArgument, "window and timeout must not be negative, got %s and %s", window, timeout)
	}
	if timeout == 0 {
		timeout = g.cfg.DrainTimeout
	}
	switch {
	case window == 0:
		// The default window yields to a shorter timeout asked for.
		window = min(g.cfg.DrainWindow, timeout)
	case window > timeout:
		return nil, apierror.New(apierror.InvalidArgument, "the drain window (%s) must not be longer than its timeout (%s)", window, timeout)
	}
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	if g.drain != nil {
		return g.statsLocked(), nil
	}
	if !g.serving {
		return nil, apierror.New(apierror.Unavailable, "the gateway is not serving")
	}
	now := time.Now()
	d := &drainState{started: now, deadline: now.Add(timeout), window: window, done: make(chan struct{})}
	g.drain = d
	// From here on no session is added without being told to go (upgradeWS
	// checks the flag after adding), and /readyz fails.
	g.draining.Store(true)
	g.drainWG.Add(1)
	go func() {
		defer g.drainWG.Done()
		defer close(d.done)
		g.runDrain(d)
	}()
	g.log.Info("drain started", "sessions", g.Sessions(), "window", window, "timeout", timeout)
	return g.statsLocked(), nil
}

// runDrain is the one goroutine that owns a drain. It stops early when the
// gateway stops (drainStop).
func (g *Gateway) runDrain(d *drainState) {
	var list []*session
	g.hub.each(func(s *session) { list = append(list, s) })
	rand.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })

	flush := min(maxFinalFlush, (d.deadline.Sub(d.started))/10)
	spread := d.window
	if n := float64(len(list)); n > 0 && n/minCloseRate < spread.Seconds() {
		spread = time.Duration(n / minCloseRate * float64(time.Second))
	}
	if last := d.deadline.Sub(d.started) - flush; spread > last {
		spread = last
	}
	var interval time.Duration
	if len(list) > 0 {
		interval = spread / time.Duration(len(list))
	}
	// The limiter holds the rate even if this goroutine falls behind its
	// schedule and then catches up: closes never bunch.
	var lim *rate.Limiter
	if interval > 0 {
		lim = rate.NewLimiter(rate.Every(interval), 1)
	}

	queued := time.Now()
	for i, s := range list {
		after := time.Duration(i) * interval
		s.tellReconnect(after)
	}

	ctx, cancel := context.WithDeadline(context.Background(), d.deadline.Add(-flush))
	defer cancel()
	go func() {
		select {
		case <-g.drainStop:
			cancel()
		case <-ctx.Done():
		}
	}()
	closed := 0
	for i, s := range list {
		at := queued.Add(time.Duration(i) * interval)
		if !sleepUntil(ctx, at) {
			break
		}
		if lim != nil && lim.Wait(ctx) != nil {
			break
		}
		if s.closeWith(ws.StatusGoingAway, drainReason) {
			closed++
		}
	}
	// Past the schedule (or out of time): whatever is left, including
	// sessions that raced the start, gets its close frame now, and at the
	// deadline the connections of any that could not take it are cut.
	g.hub.each(func(s *session) {
		if s.closeWith(ws.StatusGoingAway, deadlineReason) {
			closed++
		}
	})
	g.metrics.drainClosed.Add(float64(closed))
	stop := time.NewTimer(time.Until(d.deadline))
	defer stop.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	stopping := g.drainStop
wait:
	for g.Sessions() > 0 {
		select {
		case <-tick.C:
		case <-stop.C:
			break wait
		case <-stopping:
			// The gateway stops: leave the close frames a moment to go out.
			stop.Reset(flush)
			stopping = nil
		}
	}
	cut := 0
	g.hub.each(func(s *session) {
		s.shutdown(deadlineReason)
		cut++
	})
	elapsed := time.Since(d.started)
	g.metrics.drainDuration.Observe(elapsed.Seconds())
	g.log.Info("drain done", "sessions_closed", closed, "cut_at_deadline", cut, "took", elapsed)
}

func sleepUntil(ctx context.Context, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// drainOnStop drains with the gateway's defaults (or joins a drain under way)
// and waits for it to end, but never longer than --drain-timeout: a drain
// begun by Drain with a longer timeout is cut short then (Serve stops it),
// so the process still ends within its termination grace period.
func (g *Gateway) drainOnStop() {
	if _, err := g.Drain(0, 0); err != nil {
		g.log.Error("drain on stop", "err", err)
		return
	}
	g.drainMu.Lock()
	d := g.drain
	g.drainMu.Unlock()
	t := time.NewTimer(g.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-d.done:
	case <-t.C:
		g.log.Warn("stopping within --drain-timeout: the drain under way is cut short", "sessions", g.Sessions())
	}
}

// Stats answers the admin Stats call.
func (g *Gateway) Stats() *gochatv1.StatsResponse {
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	return g.statsLocked()
}

func (g *Gateway) statsLocked() *gochatv1.StatsResponse {
	out := &gochatv1.StatsResponse{Sessions: g.Sessions(), Draining: g.draining.Load()}
	if g.drain != nil {
		out.DrainStartedUnixMs = g.drain.started.UnixMilli()
		out.DrainDeadlineUnixMs = g.drain.deadline.UnixMilli()
	}
	return out
}

func validateDrain(window, timeout time.Duration) error {
	if window <= 0 || timeout <= 0 || window > timeout {
		return fmt.Errorf("--drain-window (%s) and --drain-timeout (%s) must be positive, the window no longer than the timeout", window, timeout)
	}
	return nil
}
