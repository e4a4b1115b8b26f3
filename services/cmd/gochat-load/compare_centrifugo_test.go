//go:build bench

// The peer server's test needs the pinned Centrifugo, which make
// bench-compare installs and then runs this test with (-tags bench) before
// it measures: a make test machine does not build it.

package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gochat/gochat/services/testcluster"
)

// TestCompareCentrifugo drives the pinned Centrifugo, in the configuration
// hack/bench-compare.sh writes, through the same scenarios.
func TestCompareCentrifugo(t *testing.T) {
	bin := centrifugoBinary(t)
	addr := testcluster.FreePort(t)
	host, port, _ := net.SplitHostPort(addr)
	secret, key := "test-secret-"+strings.Repeat("s", 20), "test-api-key"
	cfg := filepath.Join(t.TempDir(), "centrifugo.json")
	err := os.WriteFile(cfg, fmt.Appendf(nil, `{
  "log": {"level": "error"},
  "http_server": {"address": %q, "port": %s},
  "engine": {"type": "memory"},
  "client": {"token": {"hmac_secret_key": %q}, "allowed_origins": ["*"]},
  "http_api": {"key": %q},
  "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true, "history_size": 1000, "history_ttl": "300s"}]}
}`, host, port, secret, key), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg)
	out, _ := os.Create(filepath.Join(t.TempDir(), "centrifugo.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i == 300 {
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("Centrifugo did not listen on %s:\n%s", addr, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	base := "http://" + addr
	pids := []int{cmd.Process.Pid}
	res, err := runConnect(newCentrifugoAdapter(base, secret, key, "chat"), compareOpts{conns: 30, users: 3, parallel: 8, hold: time.Second, pids: pids})
	if err != nil {
		t.Fatal(err)
	}
	checkConnect(t, res, 30)

	res, err = runFanout(newCentrifugoAdapter(base, secret, key, "chat"), compareOpts{members: 10, perUser: 10, rate: 5, duration: 2 * time.Second, drainWait: 30 * time.Second, warmup: 2, parallel: 8, pids: pids})
	if err != nil {
		t.Fatal(err)
	}
	checkFanout(t, res, 100)

	// A token signed with another key is refused, and so is a publish with another API key.
	if _, err := newCentrifugoAdapter(base, "wrong", key, "chat").connect(guest{id: "x", token: hs256([]byte("wrong"), `{"sub":"x"}`)}); err == nil {
		t.Fatal("a token signed with the wrong key connected")
	}
	if err := newCentrifugoAdapter(base, secret, "wrong", "chat").publish(nil, "chat:x", 1); err == nil {
		t.Fatal("a publish with the wrong API key succeeded")
	}
}

// centrifugoBinary is the pinned Centrifugo that make bench-compare installs.
func centrifugoBinary(t *testing.T) string {
	if p := os.Getenv("GOCHAT_CENTRIFUGO"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	p := home + "/.cache/gochat/centrifugo-v6.9.1/centrifugo"
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("no Centrifugo at %s (make bench-compare installs it; or set GOCHAT_CENTRIFUGO)", p)
	}
	return p
}
