package gateway

import (
	"context"
	"hash/fnv"
	"runtime"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// maxWriteRounds is how many times in a row a writer serves one session
// before putting it back at the end of its lane: a session that keeps
// getting frames cannot hold a writer from the others.
const maxWriteRounds = 4

// writers write sessions' queued frames from a fixed set of goroutines, one
// per CPU, each with a lane of sessions waiting to be written.
//
// A push to a large group makes thousands of sessions writable at once. A
// goroutine per session would put thousands of runnable goroutines ahead of
// everything else the gateway runs (the gRPC connection that answers the
// push among them) and cost a stack and a scheduling round each. A writer
// instead encodes a session's frames into its own buffer and writes them with
// one non-blocking system call. Only a session whose socket is full (a slow
// or stuck reader) gets a goroutine of its own, which waits for the socket
// under --write-timeout as before; the writers never wait on any client.
type writers struct {
	lanes []*writeLane
}

type writeLane struct {
	mu    sync.Mutex
	ready []*session
	spare []*session
	wake  chan struct{} // one token: the lane has sessions
}

func newWriters() *writers {
	w := &writers{lanes: make([]*writeLane, runtime.GOMAXPROCS(0))}
	for i := range w.lanes {
		w.lanes[i] = &writeLane{wake: make(chan struct{}, 1)}
	}
	return w
}

// laneOf picks a session's lane once, by its id, so that its frames are
// always written by one writer at a time and in order.
func (w *writers) laneOf(id string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return h.Sum32() % uint32(len(w.lanes))
}

// schedule puts a session that has frames queued (and writing set) on its
// lane. The caller counted it in the gateway's spawn group: a stopping
// gateway waits for it to be written.
func (w *writers) schedule(s *session) {
	l := w.lanes[s.lane]
	l.mu.Lock()
	l.ready = append(l.ready, s)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run serves every lane until ctx ends. The gateway cancels ctx only after
// every scheduled session has been written (its spawn group is done).
func (w *writers) run(ctx context.Context, g *Gateway) {
	var wg sync.WaitGroup
	for _, l := range w.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run(ctx, w, g)
		}()
	}
	wg.Wait()
}

func (l *writeLane) run(ctx context.Context, w *writers, g *Gateway) {
	var buf []byte
	for {
		select {
		case <-l.wake:
		case <-ctx.Done():
			return
		}
		for {
			l.mu.Lock()
			batch := l.ready
			l.ready, l.spare = l.spare[:0], nil
			l.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, s := range batch {
				var again bool
				buf, again = s.writeSome(buf)
				batch[i] = nil
				if again {
					w.schedule(s)
				} else {
					g.spawnWG.Done()
				}
			}
			// Buffers grown for a large answer are not kept for small frames.
			if cap(buf) > 256<<10 {
				buf = nil
			}
			l.mu.Lock()
			if l.spare == nil {
				l.spare = batch[:0]
			}
			l.mu.Unlock()
		}
	}
}

// frameBuffer appends what is written to it: ws.WriteHeader writes a header
// into it without an allocation.
type frameBuffer struct{ b []byte }

func (f *frameBuffer) Write(p []byte) (int, error) {
	f.b = append(f.b, p...)
	return len(p), nil
}

// encode appends the frames of batch to buf and returns it with the number
// of data frames among them. batch's array goes back to the session's
// queue if nothing was queued meanwhile, so that a session that gets a
// frame now and then does not allocate a queue each time.
func (s *session) encode(buf []byte, batch []outItem) ([]byte, int) {
	fb := frameBuffer{b: buf}
	texts := 0
	for i := range batch {
		_ = ws.WriteHeader(&fb, ws.Header{Fin: true, OpCode: batch[i].op, Length: int64(len(batch[i].payload))})
		fb.b = append(fb.b, batch[i].payload...)
		if batch[i].op == ws.OpText {
			texts++
		}
		batch[i] = outItem{}
	}
	s.mu.Lock()
	if s.queue == nil && !s.closed {
		s.queue = batch[:0]
	}
	s.mu.Unlock()
	return fb.b, texts
}

// writeSome writes what the session has queued, a few rounds at most, with
// non-blocking writes; buf is the writer's buffer, returned for reuse. It
// reports whether the session has more to write and must be scheduled
// again. A socket that takes only part of it gets a goroutine that writes the
// rest, and what follows, waiting for the client (flushBlocking).
func (s *session) writeSome(buf []byte) ([]byte, bool) {
	for round := 0; round < maxWriteRounds; round++ {
		batch, ok := s.takeQueue()
		if !ok {
			return buf, false
		}
		var texts int
		buf, texts = s.encode(buf[:0], batch)
		n, err := writeNow(s, buf)
		if err != nil {
			s.writeFailed()
			return buf, false
		}
		s.g.metrics.framesOut.Add(float64(texts))
		if n < len(buf) {
			s.writeLater(buf[n:])
			return buf, false
		}
	}
	return buf, true
}

// writeLater hands what a non-blocking write left over to a goroutine of
// the session's own, which waits for the client as long as --write-timeout
// allows (flushBlocking); the writing turn stays with it.
func (s *session) writeLater(left []byte) {
	rest := append([]byte(nil), left...)
	s.g.metrics.blockedWrites.Inc()
	if !s.g.spawn(func() { s.flushBlocking(rest) }) {
		s.mu.Lock()
		s.writing = false
		s.mu.Unlock()
	}
}

// takeQueue takes the frames queued. With none (or the session closed) the
// writing turn ends: ok is false, and a session whose close frame went out
// is shut down.
func (s *session) takeQueue() (batch []outItem, ok bool) {
	s.mu.Lock()
	if s.closed {
		s.queue, s.queuedBytes, s.writing = nil, 0, false
		s.mu.Unlock()
		return nil, false
	}
	batch = s.queue
	s.queue, s.queuedBytes = nil, 0
	if len(batch) == 0 {
		s.writing = false
		closing := s.closing
		s.mu.Unlock()
		if closing {
			s.shutdown("closed by server")
		}
		return nil, false
	}
	s.mu.Unlock()
	return batch, true
}

// writeFailed ends the writing turn of a session its socket refused, and
// closes it.
func (s *session) writeFailed() {
	s.mu.Lock()
	s.writing = false
	s.mu.Unlock()
	s.shutdown("write failed")
}

// flushBlocking writes pending (bytes a non-blocking write left over), then
// every frame queued after them, waiting for the socket under
// --write-timeout; it ends when the queue is empty. A client that does not
// read for that long is disconnected.
func (s *session) flushBlocking(pending []byte) {
	for {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.g.cfg.WriteTimeout))
		if _, err := s.conn.Write(pending); err != nil {
			s.writeFailed()
			return
		}
		batch, ok := s.takeQueue()
		if !ok {
			return
		}
		var texts int
		pending, texts = s.encode(pending[:0], batch)
		s.g.metrics.framesOut.Add(float64(texts))
	}
}
