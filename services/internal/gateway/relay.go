package gateway

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/rpc"
)

// peers keeps one long-lived connection per other gateway, for ephemeral
// frames (typing, presence) that go straight from gateway to gateway rather
// than through Kafka: losing one costs nothing, so they are never stored.
type peers struct {
	id    *rpc.Identity // this gateway's own: a peer's Push admits gateways for these frames
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newPeers(id *rpc.Identity) *peers {
	return &peers{id: id, conns: map[string]*grpc.ClientConn{}}
}

func (p *peers) client(addr string) (gochatv1.PushServiceClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.conns[addr]
	if !ok {
		var err error
		if c, err = rpc.Dial(addr, p.id, pki.Gateway); err != nil {
			return nil, fmt.Errorf("dial gateway %s: %w", addr, err)
		}
		p.conns[addr] = c
	}
	return gochatv1.NewPushServiceClient(c), nil
}

func (p *peers) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}

// relayLookupBatch is how many users one presence lookup of a relay asks
// for, under im-repo's bound on ids per call.
const relayLookupBatch = 1000

// relay sends one frame to every live session of the users, best effort:
// sessions on this gateway get it at once, others through their gateway's
// Push. It returns how many sessions it was queued to.
func (g *Gateway) relay(ctx context.Context, userIDs []string, frame []byte) (int, error) {
	if len(userIDs) == 0 {
		return 0, nil
	}
	// im-repo answers at most a batch of ids per call; a group may be larger.
	var live []*gochatv1.Session
	for start := 0; start < len(userIDs); start += relayLookupBatch {
		batch := userIDs[start:min(start+relayLookupBatch, len(userIDs))]
		r, err := g.repo.GetPresence(ctx, &gochatv1.GetPresenceRequest{UserIds: batch})
		if err != nil {
			return 0, fmt.Errorf("look up sessions of %d users: %w", len(batch), err)
		}
		live = append(live, r.Sessions...)
	}
	byGateway := map[string][]string{}
	queued := 0
	for _, s := range live {
		if s.Gateway == g.cfg.Advertise {
			if ls := g.hub.get(s.SessionId); ls != nil && ls.enqueue(frame) {
				queued++
			}
			continue
		}
		byGateway[s.Gateway] = append(byGateway[s.Gateway], s.SessionId)
	}
	var errs []error
	for addr, sessions := range byGateway {
		c, err := g.peers.client(addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := c.Push(ctx, &gochatv1.PushRequest{Deliveries: []*gochatv1.Delivery{{SessionIds: sessions, Frame: frame}}})
		if err != nil {
			errs = append(errs, fmt.Errorf("push to gateway %s: %w", addr, err))
			continue
		}
		queued += int(resp.Queued)
	}
	if len(errs) > 0 {
		return queued, fmt.Errorf("relay to %d gateways: %v", len(errs), errs)
	}
	return queued, nil
}
