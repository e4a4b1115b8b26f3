// Package gatewayadmin is how the operator talks to one gateway pod: its
// admin gRPC service (Stats and Drain), dialled at the pod's IP over mutual
// TLS. Every call the operator makes to a gateway goes through Dialer.dial.
package gatewayadmin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// Admin reads and steers one gateway pod.
type Admin interface {
	// Stats reports the pod's sessions and drain state.
	Stats(ctx context.Context, pod *corev1.Pod) (*gochatv1.StatsResponse, error)
	// Drain starts (or, when started, reports) the pod's drain: reconnects
	// spread over window, everything closed within timeout.
	Drain(ctx context.Context, pod *corev1.Pod, window, timeout time.Duration) (*gochatv1.StatsResponse, error)
}

// Dialer dials the gateway pod's admin port for each call.
type Dialer struct {
	// Port is the gateway's admin gRPC port.
	Port int
	// TLS is the operator's client configuration for the pod's cluster
	// (the operator's certificate from that cluster's CA). Required: the
	// operator never calls a gateway in plaintext.
	TLS func(ctx context.Context, pod *corev1.Pod) (*tls.Config, error)
	// CallTimeout bounds each call; 0 means 2s.
	CallTimeout time.Duration
	// Dial opens the connection to the pod's admin port; nil: TCP to the
	// pod's IP. kubectl chat goes through the API server instead when pod
	// IPs are not routable from where it runs.
	Dial func(ctx context.Context, pod *corev1.Pod, port int) (net.Conn, error)
}

var _ Admin = Dialer{}

func (d Dialer) dial(ctx context.Context, pod *corev1.Pod) (*grpc.ClientConn, error) {
	if pod.Status.PodIP == "" {
		return nil, fmt.Errorf("gateway pod %s has no IP yet", pod.Name)
	}
	if d.TLS == nil {
		return nil, errors.New("no client TLS configuration for gateway calls")
	}
	cfg, err := d.TLS(ctx, pod)
	if err != nil {
		return nil, fmt.Errorf("client TLS for gateway %s: %w", pod.Name, err)
	}
	addr := net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(d.Port))
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if d.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return d.Dial(ctx, pod, d.Port) }))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial gateway %s at %s: %w", pod.Name, addr, err)
	}
	return conn, nil
}

func (d Dialer) timeout() time.Duration {
	if d.CallTimeout > 0 {
		return d.CallTimeout
	}
	return 2 * time.Second
}

// call runs one admin call on a fresh connection to the pod, within the
// call timeout; what names the call in errors.
func (d Dialer) call(ctx context.Context, pod *corev1.Pod, what string, fn func(context.Context, gochatv1.GatewayAdminServiceClient) error) error {
	conn, err := d.dial(ctx, pod)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	if err := fn(cctx, gochatv1.NewGatewayAdminServiceClient(conn)); err != nil {
		return fmt.Errorf("%s gateway %s: %w", what, pod.Name, err)
	}
	return nil
}

// Stats asks the pod for its sessions and drain state.
func (d Dialer) Stats(ctx context.Context, pod *corev1.Pod) (st *gochatv1.StatsResponse, err error) {
	err = d.call(ctx, pod, "stats of", func(ctx context.Context, c gochatv1.GatewayAdminServiceClient) error {
		st, err = c.Stats(ctx, &gochatv1.StatsRequest{})
		return err
	})
	return st, err
}

// Drain tells the pod to drain; a pod already draining keeps its own clock.
func (d Dialer) Drain(ctx context.Context, pod *corev1.Pod, window, timeout time.Duration) (st *gochatv1.StatsResponse, err error) {
	err = d.call(ctx, pod, "drain", func(ctx context.Context, c gochatv1.GatewayAdminServiceClient) error {
		resp, err := c.Drain(ctx, &gochatv1.DrainRequest{WindowMs: window.Milliseconds(), TimeoutMs: timeout.Milliseconds()})
		st = resp.GetStats()
		return err
	})
	return st, err
}

// StatsConcurrency bounds the Stats calls in flight in one StatsOf.
const StatsConcurrency = 16

// StatsOf asks each pod for its Stats, StatsConcurrency at a time, so that
// pods that do not answer cost one call timeout, not one each. A pod's
// answer or error is at its index.
func StatsOf(ctx context.Context, a Admin, pods []*corev1.Pod) ([]*gochatv1.StatsResponse, []error) {
	stats, errs := make([]*gochatv1.StatsResponse, len(pods)), make([]error, len(pods))
	var wg sync.WaitGroup
	sem := make(chan struct{}, StatsConcurrency)
	for i, p := range pods {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			stats[i], errs[i] = a.Stats(ctx, p)
		}()
	}
	wg.Wait()
	return stats, errs
}
