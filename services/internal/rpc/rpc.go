// Package rpc sets up GoChat's gRPC servers and clients the same way everywhere:
// API errors pass through, other errors are logged and hidden, every call is
// counted and timed, connections are long-lived with keepalives, and every
// call between services is mutual TLS authorized by the caller's component.
package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/gochat/gochat/api/pki"
	"github.com/gochat/gochat/services/internal/apierror"
)

var handled = promauto.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "gochat_grpc_server_handled_seconds",
	Help:    "gRPC calls served, by method and API code.",
	Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
}, []string{"method", "code"})

var denied = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "gochat_grpc_server_denied_total",
	Help: "gRPC calls refused before they reached the service, by method and code (Unauthenticated, PermissionDenied).",
}, []string{"method", "code"})

// NewServer returns a gRPC server with GoChat's interceptors and keepalive
// policy. With an identity it serves mutual TLS and authorizes every call by
// the caller's component (Authorization); a nil identity serves plaintext
// and checks nothing, which only --insecure-internal asks for.
func NewServer(log *slog.Logger, id *Identity) *grpc.Server {
	return newServer(log, id, Authorization)
}

func newServer(log *slog.Logger, id *Identity, table map[string][]pki.Component) *grpc.Server {
	creds := insecure.NewCredentials()
	if id != nil {
		creds = id.serverCredentials()
	}
	return grpc.NewServer(
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(authUnary(id, table), errorInterceptor(log)),
		grpc.ChainStreamInterceptor(authStream(id, table)),
		// Connections are recycled every few minutes so that clients resolve
		// the service's DNS name again and find replicas added since: a
		// headless Service gives no other signal of a scale-up.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: 30 * time.Second, Timeout: 10 * time.Second,
			MaxConnectionAge: 5 * time.Minute, MaxConnectionAgeGrace: 30 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(16<<20),
		// Calls run on goroutines that wait for them rather than on a new
		// goroutine each: a new one grew its stack on the way into every
		// handler (runtime.copystack was a tenth of the send path's CPU).
		// When all are busy a call gets a goroutine of its own, as without.
		grpc.NumStreamWorkers(streamWorkers),
	)
}

// streamWorkers is the goroutines a server keeps for its calls: the calls
// a replica has in flight at a few thousand a second, at a few KiB of
// stack each.
const streamWorkers = 128

func errorInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		code := "ok"
		if err != nil {
			apiErr := apierror.From(err)
			code = string(apiErr.Code)
			var direct *apierror.Error
			if !errors.As(err, &direct) {
				if _, isStatus := status.FromError(err); !isStatus || apiErr.Code == apierror.Internal {
					log.Error("rpc failed", "method", info.FullMethod, "err", err)
				}
			}
			err = apiErr.GRPCStatus().Err()
		}
		handled.WithLabelValues(info.FullMethod, code).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// Dial opens a long-lived client connection. addr may name several replicas
// behind one DNS name ("dns:///im-repo:9002"): calls are spread round robin.
// With an identity the connection is mutual TLS and the server must prove
// to be component server (whatever address was dialled); a nil identity
// dials plaintext (--insecure-internal).
func Dial(addr string, id *Identity, server pki.Component) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if id != nil {
		creds = id.clientCredentials(server)
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// Wait for a backend that is starting or restarting rather than fail
		// at once: every call carries a deadline, which bounds the wait.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.WaitForReady(true)),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}
