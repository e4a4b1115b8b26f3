//go:build linux

package gateway

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// An event taken from epoll for a connection that then closed must not be
// taken for the next connection that gets the same descriptor.
func TestPollerIgnoresStaleEvents(t *testing.T) {
	p, err := newPoller(1)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p.epfd)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := &session{conn: accept()}
	if err := p.add(old); err != nil {
		t.Fatal(err)
	}
	stale := *old.event()
	if p.lookup(stale) != old {
		t.Fatal("a live session's event is not found")
	}
	p.remove(old)
	old.conn.Close()
	fresh := &session{conn: accept()}
	if err := p.add(fresh); err != nil {
		t.Fatal(err)
	}
	defer fresh.conn.Close()
	// The old event as the kernel would have delivered it, naming the
	// descriptor the new connection now holds.
	stale.Fd = int32(fresh.fd)
	if got := p.lookup(stale); got != nil {
		t.Fatalf("a stale event (descriptor %d reused) was taken for the new session", fresh.fd)
	}
	if p.lookup(*fresh.event()) != fresh {
		t.Fatal("the new session's own event is not found")
	}
}
