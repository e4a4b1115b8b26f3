package launch

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A broker in a pod must advertise the address it was given, not 127.0.0.1,
// or clients in other pods are sent to their own loopback.
func TestDevKafkaBindsAndAdvertisesHost(t *testing.T) {
	const host = "127.0.0.2" // any loopback address other than 127.0.0.1
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no second loopback address here: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	addr := net.JoinHostPort(host, strconv.Itoa(port))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	k := &DevKafka{Addr: addr}
	go func() { done <- k.Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("dev-kafka: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := waitListening(wctx, addr); err != nil {
		t.Fatalf("broker not listening on %s: %v", addr, err)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
		_ = c.Close()
		t.Errorf("broker also answers on 127.0.0.1:%d; want only %s", port, addr)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	md, err := kadm.NewClient(cl).BrokerMetadata(wctx)
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	if len(md.Brokers) != 1 {
		t.Fatalf("brokers = %v, want one", md.Brokers)
	}
	if b := md.Brokers[0]; b.Host != host || int(b.Port) != port {
		t.Errorf("advertised %s:%d, want %s", b.Host, b.Port, addr)
	}
}

func TestDevKafkaRejectsBadAddr(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"9092", "--addr"},
		{":9092", "wildcard"},
		{"0.0.0.0:9092", "wildcard"},
		{"[::]:9092", "wildcard"},
		{"127.0.0.1:x", "port"},
		{"127.0.0.1:70000", "port"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			err := (&DevKafka{Addr: tc.addr}).Run(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run(--addr %s) = %v, want an error mentioning %q", tc.addr, err, tc.want)
			}
		})
	}
}
