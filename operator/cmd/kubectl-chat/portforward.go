package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// podDialer reaches a gateway pod's admin port: at the pod's IP when it is
// routable from here (inside the cluster's network), else through the API
// server (pods/portforward), as kubectl port-forward does, from a laptop say.
type podDialer struct {
	cfg    *rest.Config
	always bool // never try the pod IP
}

func (d podDialer) dial(ctx context.Context, pod *corev1.Pod, port int) (net.Conn, error) {
	if !d.always && pod.Status.PodIP != "" {
		var nd net.Dialer
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := nd.DialContext(dctx, "tcp", net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(port)))
		cancel()
		if err == nil {
			return c, nil
		}
	}
	return d.forward(ctx, pod, port)
}

// forward opens a port-forward to the pod's port on a loopback port of its
// own and connects to it; closing the connection ends the forward.
func (d podDialer) forward(ctx context.Context, pod *corev1.Pod, port int) (net.Conn, error) {
	cs, err := kubernetes.NewForConfig(d.cfg)
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod.Name, err)
	}
	rt, upgrader, err := spdy.RoundTripperFor(d.cfg)
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod.Name, err)
	}
	u := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward").URL()
	stop, ready := make(chan struct{}), make(chan struct{})
	pf, err := portforward.NewOnAddresses(spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u),
		[]string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod.Name, err)
	}
	failed := make(chan error, 1)
	go func() { failed <- pf.ForwardPorts() }()
	end := sync.OnceFunc(func() { close(stop) })
	select {
	case <-ready:
	case err := <-failed:
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod.Name, err)
	case <-ctx.Done():
		end()
		return nil, ctx.Err()
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		end()
		return nil, fmt.Errorf("port-forward to pod %s: no local port (%v)", pod.Name, err)
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))))
	if err != nil {
		end()
		return nil, fmt.Errorf("port-forward to pod %s: %w", pod.Name, err)
	}
	return forwardedConn{Conn: c, end: end}, nil
}

// forwardedConn ends its port-forward when it is closed.
type forwardedConn struct {
	net.Conn
	end func()
}

func (c forwardedConn) Close() error {
	err := c.Conn.Close()
	c.end()
	return err
}
