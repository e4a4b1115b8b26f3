//go:build !linux

package gateway

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// errNoData is readNow finding the socket empty.
var errNoData = errors.New("no data ready")

// readNow reads what the socket holds, waiting at most a moment.
func readNow(s *session, buf []byte) (int, error) {
	_ = s.conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	n, err := s.conn.Read(buf)
	var ne net.Error
	if n == 0 && errors.As(err, &ne) && ne.Timeout() {
		return 0, errNoData
	}
	if n > 0 {
		return n, nil
	}
	return 0, err
}

// writeNow, away from Linux, writes nothing: every write goes to a goroutine
// that waits on the connection.
func writeNow(*session, []byte) (int, error) { return 0, nil }

// poller, away from Linux, gives each session a reading goroutine: correct,
// but without the epoll memory savings. Production gateways run on Linux.
type poller struct {
	mu      sync.Mutex
	wake    map[*session]chan struct{}
	ready   chan *session
	workers chan struct{}
}

func newPoller(maxReaders int) (*poller, error) {
	return &poller{wake: map[*session]chan struct{}{}, ready: make(chan *session), workers: make(chan struct{}, maxReaders)}, nil
}

func (p *poller) add(s *session) error {
	ch := make(chan struct{}, 1)
	p.mu.Lock()
	p.wake[s] = ch
	p.mu.Unlock()
	ch <- struct{}{}
	go func() {
		for range ch {
			p.ready <- s
		}
	}()
	return nil
}

func (p *poller) rearm(s *session) error {
	p.mu.Lock()
	ch := p.wake[s]
	p.mu.Unlock()
	if ch != nil {
		ch <- struct{}{}
	}
	return nil
}

func (p *poller) remove(s *session) {
	p.mu.Lock()
	if ch, ok := p.wake[s]; ok {
		close(ch)
		delete(p.wake, s)
	}
	p.mu.Unlock()
}

func (p *poller) run(ctx context.Context, onReady func(*session)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-p.ready:
			wg.Add(1)
			go func() { defer wg.Done(); onReady(s) }()
		}
	}
}
