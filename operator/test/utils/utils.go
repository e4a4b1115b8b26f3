// Package utils runs kubectl and helm for the e2e suite, forwards ports to
// pods, and saves what a failed run needs to be understood.
package utils

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Tool is an executable and the arguments every call gets first.
type Tool struct {
	Path string
	Args []string
}

// Kubectl is kubectl from E2E_KUBECTL (default: kubectl on PATH); it talks
// to the cluster KUBECONFIG names.
func Kubectl() Tool { return Tool{Path: envOr("E2E_KUBECTL", "kubectl")} }

// Helm is helm from E2E_HELM (default: helm on PATH).
func Helm() Tool { return Tool{Path: envOr("E2E_HELM", "helm")} }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Run runs the tool with args and stdin (may be empty) and returns stdout;
// the error carries stderr.
func (tl Tool) Run(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tl.Path, append(append([]string{}, tl.Args...), args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(tl.Path), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Must is Run that fails the test on error.
func (tl Tool) Must(t testing.TB, args ...string) string {
	t.Helper()
	out, err := tl.Run(context.Background(), "", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Apply applies the YAML with kubectl.
func Apply(t testing.TB, yaml string) {
	t.Helper()
	if _, err := Kubectl().Run(context.Background(), yaml, "apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// Eventually calls f every interval until it returns nil or timeout passes,
// then fails the test with f's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

var forwarding = regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) ->`)

// PortForward forwards a free local port to target's port (e.g.
// "pod/demo-gateway-0" or "svc/demo-gateway") until the test ends, and
// returns 127.0.0.1:PORT. It works the same on kind and on the local cluster.
func PortForward(t testing.TB, namespace, target string, port int) string {
	t.Helper()
	addr, stop, err := StartPortForward(namespace, target, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// StartPortForward is PortForward for any goroutine: it returns the address
// and a stop function, or an error.
func StartPortForward(namespace, target string, port int) (string, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, Kubectl().Path, "-n", namespace, "port-forward", "--address=127.0.0.1", target, fmt.Sprintf(":%d", port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return "", nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return "", nil, fmt.Errorf("port-forward %s: %w", target, err)
	}
	done := make(chan struct{})
	stop := func() {
		cancel()
		<-done
	}
	addr := make(chan string, 1)
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := forwarding.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- "127.0.0.1:" + m[1]:
				default:
				}
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case a := <-addr:
		return a, stop, nil
	case <-time.After(30 * time.Second):
		stop()
		return "", nil, fmt.Errorf("port-forward %s/%s:%d did not start: %s", namespace, target, port, stderr.String())
	case <-done:
		stop()
		return "", nil, fmt.Errorf("port-forward %s/%s:%d exited: %s", namespace, target, port, stderr.String())
	}
}

// SaveArtifacts writes every pod's logs (and the previous container's),
// kubectl describe of every object kind the suite touches, and the events of
// each namespace under $GOCHAT_TEST_ARTIFACTS/e2e (default ./artifacts).
func SaveArtifacts(t testing.TB, namespaces ...string) {
	dir := filepath.Join(envOr("GOCHAT_TEST_ARTIFACTS", "artifacts"), "e2e")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("artifacts: %v", err)
		return
	}
	ctx := context.Background()
	k := Kubectl()
	save := func(name, out string, err error) {
		if err != nil {
			out += "\n" + err.Error()
		}
		if werr := os.WriteFile(filepath.Join(dir, name), []byte(out), 0o644); werr != nil {
			t.Logf("artifacts: %v", werr)
		}
	}
	out, err := k.Run(ctx, "", "describe", "nodes")
	save("nodes.describe.txt", out, err)
	out, err = k.Run(ctx, "", "get", "crd", "-o", "yaml")
	save("crds.yaml", out, err)
	for _, ns := range namespaces {
		out, err := k.Run(ctx, "", "-n", ns, "describe", "chatclusters,deployments,statefulsets,jobs,pods,services,endpointslices,configmaps,poddisruptionbudgets")
		save(ns+".describe.txt", out, err)
		out, err = k.Run(ctx, "", "-n", ns, "get", "events", "--sort-by=.lastTimestamp", "-o", "wide")
		save(ns+".events.txt", out, err)
		pods, err := k.Run(ctx, "", "-n", ns, "get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}")
		if err != nil {
			save(ns+".pods.txt", pods, err)
			continue
		}
		for _, p := range strings.Fields(pods) {
			out, err := k.Run(ctx, "", "-n", ns, "logs", "--all-containers", "--timestamps", p)
			save(ns+"."+p+".log", out, err)
			if prev, err := k.Run(ctx, "", "-n", ns, "logs", "--all-containers", "--previous", p); err == nil && prev != "" {
				save(ns+"."+p+".previous.log", prev, nil)
			}
		}
	}
	t.Logf("artifacts saved under %s", dir)
}

// Lines runs the tool until ctx ends and sends each line of its output to
// the returned channel, which is closed when the tool exits (for kubectl
// get --watch).
func (tl Tool) Lines(ctx context.Context, args ...string) (<-chan string, error) {
	cmd := exec.CommandContext(ctx, tl.Path, append(append([]string{}, tl.Args...), args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s %s: %w", filepath.Base(tl.Path), strings.Join(args, " "), err)
	}
	out := make(chan string, 1000)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case out <- sc.Text():
			case <-ctx.Done():
			}
		}
		_ = cmd.Wait()
	}()
	return out, nil
}
