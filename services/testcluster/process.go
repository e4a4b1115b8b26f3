package testcluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the gochat binary once per test process.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		_, here, _, _ := runtime.Caller(0)
		servicesDir := filepath.Join(filepath.Dir(here), "..") // services/testcluster -> services
		dir, err := os.MkdirTemp("", "gochat-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "gochat")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/gochat")
		cmd.Dir = servicesDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Process is one running gochat subcommand.
type Process struct {
	Name string
	bin  string // empty: the gochat binary
	args []string
	env  []string
	t    testing.TB
	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

// Start runs "gochat <args>" with env added, logging to a file in the test's
// temp dir; it is stopped when the test ends.
func Start(t testing.TB, name string, env []string, args ...string) *Process {
	t.Helper()
	p := &Process{Name: name, args: args, env: env, t: t}
	p.start()
	t.Cleanup(p.Stop)
	return p
}

// StartProgram runs another program (a redis-server or mariadbd of the
// test's own) the way Start runs gochat: logged, stoppable, restartable.
func StartProgram(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	p := &Process{Name: name, bin: bin, args: args, t: t}
	p.start()
	t.Cleanup(p.Stop)
	return p
}

func (p *Process) start() {
	p.t.Helper()
	dir := p.t.TempDir()
	if keep := os.Getenv("GOCHAT_TEST_ARTIFACTS"); keep != "" {
		// Keep the logs after the run (CI uploads them, people read them).
		dir = filepath.Join(keep, strings.ReplaceAll(p.t.Name(), "/", "_"))
		mustf(p.t, os.MkdirAll(dir, 0o755), "artifacts dir")
	}
	logPath := filepath.Join(dir, p.Name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	mustf(p.t, err, "log file")
	bin := p.bin
	if bin == "" {
		bin = Binary(p.t)
	}
	cmd := exec.Command(bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	mustf(p.t, cmd.Start(), "start %s", p.Name)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	p.mu.Lock()
	p.cmd, p.log, p.done = cmd, f, done
	p.mu.Unlock()
}

// Stop ends the process with SIGTERM (SIGKILL after 10s). On a failed test
// it prints the end of the process's log.
func (p *Process) Stop() { p.end(syscall.SIGTERM) }

// Kill ends the process with SIGKILL: no shutdown code runs.
func (p *Process) Kill() { p.end(syscall.SIGKILL) }

// end signals the process, waits for it (killing it after 10s), and closes
// its log; a second end is a no-op.
func (p *Process) end(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done, f := p.cmd, p.done, p.log
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	if p.t.Failed() {
		p.dumpLog(f.Name())
	}
	f.Close()
}

// Signal sends sig to the process (SIGTERM to watch it drain, say).
func (p *Process) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.Name)
	}
	return p.cmd.Process.Signal(sig)
}

// Pause stops the process with SIGSTOP: its sockets stay open and nothing
// answers (a black-holed process). Resume continues it.
func (p *Process) Pause() { _ = p.Signal(syscall.SIGSTOP) }

// Resume continues a paused process.
func (p *Process) Resume() { _ = p.Signal(syscall.SIGCONT) }

// Restart stops and starts the process again with the same arguments.
func (p *Process) Restart() {
	p.Stop()
	p.start()
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return true
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *Process) dumpLog(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	p.t.Logf("--- last lines of %s ---\n%s", p.Name, strings.Join(lines, "\n"))
}

// WaitTCP waits until something accepts connections on addr.
func WaitTCP(t testing.TB, addr string, p *Process) {
	t.Helper()
	waitFor(t, "a listener on "+addr, p, func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// WaitHTTP waits until url answers 200.
func WaitHTTP(t testing.TB, url string, p *Process) {
	t.Helper()
	waitFor(t, url+" answering 200", p, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// waitFor polls ready for 30s, failing early if the process it waits for exits.
func waitFor(t testing.TB, what string, p *Process, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ready() {
			return
		}
		if p != nil && p.Exited() {
			p.Stop()
			t.Fatalf("%s exited while waiting for %s", p.Name, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %s after 30s", what)
}

func freeAddrs(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}
