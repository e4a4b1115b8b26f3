package gateway

import (
	"context"
	"encoding/json"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/apierror"
	"github.com/gochat/gochat/services/internal/clientapi"
	"github.com/gochat/gochat/services/internal/rpc"
)

// frameType reads a client API frame's type; "" when it has none.
func frameType(frame []byte) string {
	var f struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(frame, &f) != nil {
		return ""
	}
	return f.Type
}

// PushServer is the gRPC face of a gateway for im-task and the operator.
type PushServer struct {
	gochatv1.UnimplementedPushServiceServer
	gochatv1.UnimplementedGatewayAdminServiceServer
	g *Gateway
}

// PushServer returns the gateway's gRPC services.
func (g *Gateway) PushServer() *PushServer { return &PushServer{g: g} }

// Push queues each frame to each named session, in order, and returns at
// once: the frames are handed off, not yet written.
func (p *PushServer) Push(ctx context.Context, in *gochatv1.PushRequest) (*gochatv1.PushResponse, error) {
	if len(in.Deliveries) > 10000 {
		return nil, apierror.New(apierror.InvalidArgument, "%d deliveries in one push, at most 10000", len(in.Deliveries))
	}
	if rpc.Caller(ctx) == pki.Gateway {
		// Another gateway relays what is never stored; messages, receipts
		// and events come only from im-task, after they are durable.
		for _, d := range in.Deliveries {
			if t := frameType(d.Frame); t != clientapi.TypeTyping && t != clientapi.TypePresence {
				return nil, apierror.New(apierror.PermissionDenied, "a gateway may relay only typing and presence frames, not %q", t)
			}
		}
	}
	out := &gochatv1.PushResponse{}
	var unknown map[string]bool
	for _, d := range in.Deliveries {
		for _, id := range d.SessionIds {
			s := p.g.hub.get(id)
			if s == nil || !s.enqueue(d.Frame) {
				if unknown == nil {
					unknown = map[string]bool{}
				}
				if !unknown[id] {
					unknown[id] = true
					out.UnknownSessionIds = append(out.UnknownSessionIds, id)
				}
				continue
			}
			out.Queued++
		}
	}
	p.g.metrics.pushed.Add(float64(out.Queued))
	return out, nil
}

// Stats reports the gateway's sessions and its drain, if any.
func (p *PushServer) Stats(context.Context, *gochatv1.StatsRequest) (*gochatv1.StatsResponse, error) {
	return p.g.Stats(), nil
}

// Drain starts the drain (or leaves the one under way) and returns at once.
func (p *PushServer) Drain(_ context.Context, in *gochatv1.DrainRequest) (*gochatv1.DrainResponse, error) {
	const most = int64(24 * time.Hour / time.Millisecond)
	if in.WindowMs > most || in.TimeoutMs > most {
		return nil, apierror.New(apierror.InvalidArgument, "window_ms and timeout_ms are at most %d (a day)", most)
	}
	st, err := p.g.Drain(time.Duration(in.WindowMs)*time.Millisecond, time.Duration(in.TimeoutMs)*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &gochatv1.DrainResponse{Stats: st}, nil
}
