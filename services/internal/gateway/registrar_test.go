package gateway

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// gatedPresence holds every registration call until it is released, and
// records the order in which calls reached it.
type gatedPresence struct {
	gochatv1.RepoServiceClient
	release chan struct{}

	mu       sync.Mutex
	inFlight int
	most     int
	log      []string // "+id" when a registration lands, "-id" when a removal does
	started  chan struct{}
}

func (p *gatedPresence) RegisterSessions(ctx context.Context, in *gochatv1.RegisterSessionsRequest, _ ...grpc.CallOption) (*gochatv1.RegisterSessionsResponse, error) {
	p.mu.Lock()
	p.inFlight++
	p.most = max(p.most, p.inFlight)
	p.mu.Unlock()
	p.started <- struct{}{}
	select {
	case <-p.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inFlight--
	for _, s := range in.Sessions {
		p.log = append(p.log, "+"+s.SessionId)
	}
	return &gochatv1.RegisterSessionsResponse{}, nil
}

func (p *gatedPresence) UnregisterSessions(_ context.Context, in *gochatv1.UnregisterSessionsRequest, _ ...grpc.CallOption) (*gochatv1.UnregisterSessionsResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range in.Sessions {
		p.log = append(p.log, "-"+s.SessionId)
	}
	return &gochatv1.UnregisterSessionsResponse{}, nil
}

// A connect does not wait for another connect's registration call, and a
// session removed while its registration is in flight is removed after it
// lands, not before (which would leave it in presence until its TTL).
func TestRegistrarOverlapsAndOrders(t *testing.T) {
	p := &gatedPresence{release: make(chan struct{}), started: make(chan struct{}, 8)}
	r := newRegistrar(p, "gw1", time.Minute, newHub(), testLogger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.run(ctx) }()
	defer func() { cancel(); <-done }()

	errs := make(chan error, 2)
	a := &session{id: "a", userID: "u1"}
	go func() { errs <- r.register(ctx, a) }()
	<-p.started // a's call is in flight, held
	b := &session{id: "b", userID: "u2"}
	go func() { errs <- r.register(ctx, b) }()
	select {
	case <-p.started: // b's call went out beside a's
	case <-time.After(5 * time.Second):
		t.Fatal("the second registration waited for the first call")
	}
	r.unregister(a) // while a's registration is still in flight
	time.Sleep(50 * time.Millisecond)
	p.mu.Lock()
	early := len(p.log)
	p.mu.Unlock()
	if early != 0 {
		t.Fatalf("calls landed before the registrations were released: %v", p.log)
	}
	close(p.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		log := append([]string(nil), p.log...)
		p.mu.Unlock()
		if len(log) == 3 {
			pos := map[string]int{}
			for i, e := range log {
				pos[e] = i
			}
			if pos["-a"] < pos["+a"] {
				t.Fatalf("a was removed before its registration landed: %v", log)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls seen: %v, want +a, +b and -a", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p.most < 2 {
		t.Fatalf("at most %d registration calls were in flight at once", p.most)
	}
}
