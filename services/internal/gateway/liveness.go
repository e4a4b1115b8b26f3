package gateway

import (
	"context"
	"time"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// keepAlive renews the gateway's liveness in im-repo every third of
// --liveness-ttl until ctx ends. Session presence lives far longer (it is
// renewed in big batches); this small key is what tells im-task within a few
// seconds that a gateway is dead or frozen, so that it stops dialling it and
// counts its users offline. A frozen process renews nothing, which is the
// point: no renewal means not alive.
func (g *Gateway) keepAlive(ctx context.Context) {
	ttl := g.cfg.LivenessTTL
	if ttl <= 0 {
		return
	}
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, ttl/3)
		_, err := g.repo.GatewayAlive(cctx, &gochatv1.GatewayAliveRequest{Gateway: g.cfg.Advertise, TtlMs: ttl.Milliseconds()})
		cancel()
		if err != nil && ctx.Err() == nil {
			g.log.Warn("renew gateway liveness (im-task counts this gateway dead once it lapses)", "ttl", ttl, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
