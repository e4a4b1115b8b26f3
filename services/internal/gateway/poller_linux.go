//go:build linux

package gateway

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// poller watches idle connections with one epoll instance so that an idle
// session costs no goroutine and no read buffer: only when a socket becomes
// readable does a goroutine take it, read what is there, and hand it back.
//
// Registrations are one-shot: a socket reports once, then stays silent until
// its reader re-arms it, so a session is never read by two goroutines at once.
//
// Sessions are keyed by a token of their own, carried in the event next to
// the descriptor, never by the descriptor alone: a descriptor is reused as
// soon as it is closed, and an event already taken from epoll for the old
// connection must not start a reader on the new one.
type poller struct {
	epfd    int
	mu      sync.Mutex
	byToken map[int32]*session
	next    int32
	workers chan struct{} // bounds the goroutines reading at once
	// idle hands a ready session to a kept reader waiting for one
	// (unbuffered: a send succeeds only when one is free).
	idle chan *session
}

// keptReaders is how many reading goroutines wait for ready sessions
// between reads. A fresh goroutine grew its stack on the way through a
// frame's decoding on every read (runtime.copystack was a tenth of the send
// path's CPU); a kept one has grown already. Past them a read gets a
// goroutine of its own, up to --max-readers; few enough that their stacks
// are a small part of the idle sessions' memory.
const keptReaders = 32

func newPoller(maxReaders int) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &poller{epfd: fd, byToken: map[int32]*session{}, workers: make(chan struct{}, maxReaders), idle: make(chan *session)}, nil
}

func (s *session) event() *unix.EpollEvent {
	return &unix.EpollEvent{Events: pollEvents, Fd: int32(s.fd), Pad: s.token}
}

// lookup returns the session an event is for, or nil if it is stale.
func (p *poller) lookup(ev unix.EpollEvent) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.byToken[ev.Pad]
	if s == nil || s.fd != int(ev.Fd) {
		return nil
	}
	return s
}

// errNoData is readNow finding the socket empty.
var errNoData = errors.New("no data ready")

// readNow reads what the socket holds without waiting: (0, errNoData) if it
// holds nothing, (0, nil) at end of stream.
func readNow(s *session, buf []byte) (int, error) {
	var (
		n    int
		rerr error
	)
	err := s.raw.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), buf)
		return true // never park: the poller tells us when there is more
	})
	if err != nil {
		return 0, err
	}
	if rerr == unix.EAGAIN || rerr == unix.EINTR {
		return 0, errNoData
	}
	if rerr != nil {
		return 0, fmt.Errorf("read: %w", rerr)
	}
	return n, nil
}

// writeNow writes what the socket takes without waiting and returns how
// much that was: less than len(b), 0 included, when its buffer is full.
func writeNow(s *session, b []byte) (int, error) {
	if s.raw == nil {
		return 0, nil // not a socket (a test's pipe): the caller waits on it
	}
	var (
		n    int
		werr error
	)
	err := s.raw.Write(func(fd uintptr) bool {
		for {
			n, werr = unix.Write(int(fd), b)
			if werr != unix.EINTR {
				return true // never park: a full socket goes to a goroutine that may
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if werr == unix.EAGAIN {
		return 0, nil
	}
	if werr != nil {
		return 0, fmt.Errorf("write: %w", werr)
	}
	return n, nil
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func (p *poller) add(s *session) error {
	if s.raw == nil {
		raw, fd, err := rawFD(s.conn)
		if err != nil {
			return err
		}
		s.raw, s.fd = raw, fd
	}
	p.mu.Lock()
	for {
		p.next++
		if p.byToken[p.next] == nil {
			break
		}
	}
	s.token = p.next
	p.byToken[s.token] = s
	p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, s.fd, s.event()); err != nil {
		p.mu.Lock()
		delete(p.byToken, s.token)
		p.mu.Unlock()
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// rearm asks for the next readable event of a session's socket.
func (p *poller) rearm(s *session) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, s.fd, s.event())
}

// remove forgets a session; it must run before its socket is closed, so the
// descriptor cannot be reused by a new connection while still registered.
func (p *poller) remove(s *session) {
	p.mu.Lock()
	if p.byToken[s.token] == s {
		delete(p.byToken, s.token)
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	}
	p.mu.Unlock()
}

// run waits for events until ctx ends and gives each ready session to onReady
// on a kept reader or a goroutine of its own, at most maxReaders at once.
func (p *poller) run(ctx context.Context, onReady func(*session)) error {
	defer unix.Close(p.epfd)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(p.idle) // after the loop: no more sends on it
	for range min(keptReaders, cap(p.workers)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range p.idle {
				onReady(s)
				<-p.workers
			}
		}()
	}
	events := make([]unix.EpollEvent, 512)
	for ctx.Err() == nil {
		n, err := unix.EpollWait(p.epfd, events, 200)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := 0; i < n; i++ {
			s := p.lookup(events[i])
			if s == nil {
				continue
			}
			p.workers <- struct{}{}
			select {
			case p.idle <- s:
			default:
				wg.Add(1)
				go func() {
					defer func() { <-p.workers; wg.Done() }()
					onReady(s)
				}()
			}
		}
	}
	return nil
}
