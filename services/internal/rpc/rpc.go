// Package rpc sets up GoChat's gRPC servers and clients the same way everywhere:
// API errors pass through, other errors are logged and hidden, every call is
// counted and timed, and connections are long-lived with keepalives.
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

	"github.com/gochat/gochat/services/internal/apierror"
)

var handled = promauto.NewHistogramVec(prometheus.HistogramOpts{
	Name:    "gochat_grpc_server_handled_seconds",
	Help:    "gRPC calls served, by method and API code.",
	Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
}, []string{"method", "code"})

// NewServer returns a gRPC server with GoChat's interceptor and keepalive policy.
func NewServer(log *slog.Logger) *grpc.Server {
	return grpc.NewServer(
		grpc.ChainUnaryInterceptor(errorInterceptor(log)),
		// Connections are recycled every few minutes so that clients resolve
		// the service's DNS name again and find replicas added since: a
		// headless Service gives no other signal of a scale-up.
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: 30 * time.Second, Timeout: 10 * time.Second,
			MaxConnectionAge: 5 * time.Minute, MaxConnectionAgeGrace: 30 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(16<<20),
	)
}

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
func Dial(addr string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
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
