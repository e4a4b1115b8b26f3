//go:build linux

package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// poller watches idle connections with one epoll instance so that an idle
// session costs no goroutine and no read buffer: only when a socket becomes
// readable does a goroutine take it, read what is there, and hand it back.
//
// Registrations are one-shot: a socket reports once, then stays silent until
// its reader re-arms it, so a session is never read by two goroutines at once.
type poller struct {
	epfd    int
	mu      sync.Mutex
	byFD    map[int]*session
	workers chan struct{} // bounds the goroutines reading at once
}

func newPoller(maxReaders int) (*poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	return &poller{epfd: fd, byFD: map[int]*session{}, workers: make(chan struct{}, maxReaders)}, nil
}

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// rawFD returns the descriptor of a TCP connection without dup'ing it (File()
// would dup it and switch it to blocking mode).
func rawFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.New("connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}

func (p *poller) add(s *session) error {
	fd, err := rawFD(s.conn)
	if err != nil {
		return err
	}
	s.fd = fd
	p.mu.Lock()
	p.byFD[fd] = s
	p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}); err != nil {
		p.mu.Lock()
		delete(p.byFD, fd)
		p.mu.Unlock()
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// rearm asks for the next readable event of a session's socket.
func (p *poller) rearm(s *session) error {
	return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, s.fd, &unix.EpollEvent{Events: pollEvents, Fd: int32(s.fd)})
}

// remove forgets a session; it must run before its socket is closed, so the
// descriptor cannot be reused by a new connection while still registered.
func (p *poller) remove(s *session) {
	p.mu.Lock()
	if p.byFD[s.fd] == s {
		delete(p.byFD, s.fd)
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	}
	p.mu.Unlock()
}

// run waits for events until ctx ends and gives each ready session to onReady
// on a goroutine of its own, at most maxReaders at once.
func (p *poller) run(ctx context.Context, onReady func(*session)) error {
	defer unix.Close(p.epfd)
	events := make([]unix.EpollEvent, 512)
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		n, err := unix.EpollWait(p.epfd, events, 200)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := 0; i < n; i++ {
			p.mu.Lock()
			s := p.byFD[int(events[i].Fd)]
			p.mu.Unlock()
			if s == nil {
				continue
			}
			p.workers <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-p.workers; wg.Done() }()
				onReady(s)
			}()
		}
	}
	return nil
}
