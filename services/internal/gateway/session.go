package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/gochat/gochat/services/internal/clientapi"
)

// outItem is one frame waiting to be written. Payloads pushed by im-task are
// shared by every session they go to, so they are never modified.
type outItem struct {
	op      ws.OpCode
	payload []byte
}

// session is one WebSocket connection. An idle session owns no goroutine and
// no buffer: reading happens on a poller goroutine when the socket is
// readable, writing on one of the gateway's writers (writers.go) when
// frames are queued.
type session struct {
	id     string
	userID string
	conn   net.Conn
	fd     int             // the socket, as the poller watches it
	raw    syscall.RawConn // for reads that never wait
	token  int32           // the poller's key for this session
	lane   uint32          // the writer that writes its frames
	g      *Gateway

	lastSeen atomic.Int64 // Unix ms of the last frame from the client

	mu          sync.Mutex
	queue       []outItem
	queuedBytes int
	writing     bool
	closing     bool // a close frame is queued: write it, then close
	told        bool // the drain's reconnect frame is queued: it is sent once
	closed      bool

	// Read-side state: touched only by the one goroutine reading at a time.
	// The poller's one-shot rearm hands the socket from one reader goroutine
	// to the next through the kernel, which is no happens-before edge for
	// Go's memory model; readMu (never contended) is that edge.
	readMu     sync.Mutex
	frames     frameReader
	frameLimit frameBucket
	// partialSince is when the frame now half read began (Unix ms, 0: none);
	// the sweeper closes a session that leaves a frame unfinished too long.
	partialSince atomic.Int64

	// calls is made by the session's first backend call or bad frame: an
	// idle session never needs one, and as fields it cost every session 72
	// bytes.
	calls atomic.Pointer[sessionCalls]

	typingAt map[string]time.Time // conversation -> last relayed typing
}

// sessionCalls is a session's backend calls and error count.
type sessionCalls struct {
	mu sync.Mutex
	// Calls to the backends run off the reader, in order, at most
	// maxInFlight queued per session.
	queue   []func(context.Context) error
	running bool
	// cancel ends the call in flight when the session closes: nobody is left
	// to answer, and a stopping gateway must not wait for it.
	cancel context.CancelFunc
	// The reader and the call runner both report errors.
	errWindow  int64
	errCount   int
	rateErrors int
}

// callState returns the session's sessionCalls, making it on first use.
func (s *session) callState() *sessionCalls {
	if c := s.calls.Load(); c != nil {
		return c
	}
	s.calls.CompareAndSwap(nil, &sessionCalls{})
	return s.calls.Load()
}

func (s *session) touch(now time.Time) { s.lastSeen.Store(now.UnixMilli()) }

// enqueue queues a text frame. A client that does not read what it is sent
// cannot hold the gateway's memory: past the queue limit it is disconnected,
// and it catches up with sync when it reconnects.
func (s *session) enqueue(payload []byte) bool {
	return s.enqueueOp(ws.OpText, payload)
}

func (s *session) enqueueOp(op ws.OpCode, payload []byte) bool {
	s.mu.Lock()
	if s.closed || s.closing {
		s.mu.Unlock()
		return false
	}
	// An empty queue takes any frame: one big answer is no sign of a slow reader.
	if s.queuedBytes > 0 && s.queuedBytes+len(payload) > s.g.cfg.MaxQueueBytes {
		s.mu.Unlock()
		s.g.metrics.slowConsumers.Inc()
		s.g.log.Warn("session too slow to read its frames, closing", "session_id", s.id, "user_id", s.userID)
		s.closeWith(ws.StatusGoingAway, "too slow to read")
		return false
	}
	s.queuedBytes += len(payload)
	s.queueLocked(outItem{op: op, payload: payload})
	return true
}

// queueLocked queues a frame, unlocks s.mu, and hands the session to its
// writer unless one has it already.
func (s *session) queueLocked(it outItem) {
	s.queue = append(s.queue, it)
	start := !s.writing
	s.writing = true
	s.mu.Unlock()
	if start {
		s.g.scheduleWrite(s)
	}
}

// tellReconnect queues the drain's reconnect frame, once: a session that
// raced the drain's start is reached by both the drain's list and its own
// handshake. False when it was told already or is closing.
func (s *session) tellReconnect(after time.Duration) bool {
	s.mu.Lock()
	if s.told {
		s.mu.Unlock()
		return false
	}
	s.told = true
	s.mu.Unlock()
	return s.enqueue(clientapi.Frame(clientapi.TypeReconnect, clientapi.Reconnect{AfterMs: after.Milliseconds(), Reason: drainReason}))
}

// closeWith queues a close frame; the session closes once it is written. It
// reports whether it did (false: the session was closing already).
func (s *session) closeWith(code ws.StatusCode, reason string) bool {
	s.mu.Lock()
	if s.closed || s.closing {
		s.mu.Unlock()
		return false
	}
	s.closing = true
	s.queueLocked(outItem{op: ws.OpClose, payload: ws.NewCloseFrameBody(code, reason)})
	return true
}

// shutdown closes the connection and forgets the session, once.
func (s *session) shutdown(reason string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.queue = nil
	s.mu.Unlock()
	if c := s.calls.Load(); c != nil {
		c.mu.Lock()
		if c.cancel != nil {
			c.cancel()
		}
		c.mu.Unlock()
	}
	s.g.poller.remove(s)
	_ = s.conn.Close()
	s.g.hub.remove(s)
	s.g.userSess.release(s.userID)
	s.g.presence.unregister(s)
	s.g.log.Debug("session closed", "session_id", s.id, "user_id", s.userID, "reason", reason)
}

func (s *session) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// rawFD returns the descriptor of a TCP connection without dup'ing it (File()
// would dup it and switch it to blocking mode).
func rawFD(c net.Conn) (syscall.RawConn, int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, 0, errors.New("connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return nil, 0, err
	}
	return raw, fd, nil
}
