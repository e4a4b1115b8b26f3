package controller

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/resources"
)

// PodGRPCAddr is where a gateway pod serves its push and admin gRPC services.
func PodGRPCAddr(pod *corev1.Pod) string {
	return net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(resources.GatewayGRPCPort))
}

// GatewayAdmin dials one gateway pod's admin service as the operator, over
// mutual TLS with the operator's certificate from the cluster's CA. Stats
// and the roll's Drain both go through it; the caller runs close.
func (r *Reconciler) GatewayAdmin(ctx context.Context, cc *chatv1.ChatCluster, pod *corev1.Pod) (client gochatv1.GatewayAdminServiceClient, closeConn func(), err error) {
	if r.GatewayAddr == nil {
		return nil, nil, fmt.Errorf("gateway admin calls are off (no GatewayAddr)")
	}
	cfg, err := r.AdminTLS(ctx, cc)
	if err != nil {
		return nil, nil, err
	}
	addr := r.GatewayAddr(pod)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, nil, fmt.Errorf("dial gateway %s at %s: %w", pod.Name, addr, err)
	}
	return gochatv1.NewGatewayAdminServiceClient(conn), func() { _ = conn.Close() }, nil
}

// gatewaySessions asks one gateway pod for its session count.
func (r *Reconciler) gatewaySessions(ctx context.Context, cc *chatv1.ChatCluster, pod *corev1.Pod) (int64, error) {
	admin, closeConn, err := r.GatewayAdmin(ctx, cc, pod)
	if err != nil {
		return 0, err
	}
	defer closeConn()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := admin.Stats(cctx, &gochatv1.StatsRequest{})
	if err != nil {
		return 0, fmt.Errorf("stats of gateway %s: %w", pod.Name, err)
	}
	return st.Sessions, nil
}
