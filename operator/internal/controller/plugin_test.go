package controller_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/chatctl"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

var (
	pluginOnce sync.Once
	pluginBin  string
	pluginErr  error
)

// kubectlChat builds cmd/kubectl-chat once and runs it with args against
// the test's API server, through a kubeconfig file as kubectl would hand it.
func kubectlChat(t *testing.T, args ...string) string {
	t.Helper()
	pluginOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kubectl-chat-")
		if err != nil {
			pluginErr = err
			return
		}
		pluginBin = filepath.Join(dir, "kubectl-chat")
		out, err := exec.Command("go", "build", "-o", pluginBin, "github.com/gochat/gochat/operator/cmd/kubectl-chat").CombinedOutput()
		if err != nil {
			pluginErr = fmt.Errorf("build kubectl-chat: %v: %s", err, out)
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pluginBin, append(args, "--kubeconfig", path)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl chat %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// TestKubectlChatRestart runs the built plugin: `restart` rolls every
// component (a new gateway StatefulSet revision, every gateway pod replaced
// through a drain, the Deployments' templates changed), and `status` shows
// the cluster, its components, pods, topics and events.
func TestKubectlChatRestart(t *testing.T) {
	ns, _, _ := setup(t, func(cc *chatv1.ChatCluster) {
		cc.Spec.Gateway.Drain.Timeout = &metav1.Duration{Duration: time.Second}
	})
	bringUp(t, ns)
	var before appsv1.StatefulSet
	eventually(t, 30*time.Second, "the gateways' revision", func() error {
		before = *get(t, ns, "demo-gateway", &appsv1.StatefulSet{})
		if before.Status.UpdateRevision == "" {
			return fmt.Errorf("no updateRevision yet")
		}
		return nil
	})
	old := map[string]bool{}
	for _, p := range gatewayPods(t, ns) {
		old[string(p.UID)] = true
	}

	out := kubectlChat(t, "restart", "demo", "-n", ns)
	if !strings.Contains(out, "restart requested") {
		t.Fatalf("restart said %q", out)
	}
	at := getCluster(t, ns, "demo").Annotations[resources.AnnotationRestartedAt]
	if _, err := time.Parse(time.RFC3339, at); err != nil {
		t.Fatalf("annotation %s = %q: %v", resources.AnnotationRestartedAt, at, err)
	}
	eventually(t, 30*time.Second, "the restart in every template", func() error {
		sts := get(t, ns, "demo-gateway", &appsv1.StatefulSet{})
		if sts.Spec.Template.Annotations[resources.AnnotationRestartedAt] != at || sts.Status.UpdateRevision == before.Status.UpdateRevision {
			return fmt.Errorf("gateway template %q, revision %s (was %s)", sts.Spec.Template.Annotations[resources.AnnotationRestartedAt], sts.Status.UpdateRevision, before.Status.UpdateRevision)
		}
		for _, c := range []string{resources.Logic, resources.Repo, resources.Task} {
			d := get(t, ns, "demo-"+c, &appsv1.Deployment{})
			if got := d.Spec.Template.Annotations[resources.AnnotationRestartedAt]; got != at {
				return fmt.Errorf("%s template has %q", c, got)
			}
		}
		return nil
	})
	revision := get(t, ns, "demo-gateway", &appsv1.StatefulSet{}).Status.UpdateRevision
	// The gateways go through the operator's roll: each drained, then replaced.
	eventually(t, 90*time.Second, "every gateway pod replaced on the new revision, Running", func() error {
		for _, c := range []string{resources.Logic, resources.Repo, resources.Task, resources.Gateway} {
			playKubelet(t, ns, c)
		}
		for _, p := range gatewayPods(t, ns) {
			if old[string(p.UID)] || p.Labels[appsv1.ControllerRevisionHashLabelKey] != revision {
				return fmt.Errorf("pod %s on revision %s", p.Name, p.Labels[appsv1.ControllerRevisionHashLabelKey])
			}
		}
		cc := getCluster(t, ns, "demo")
		if c := condition(cc, chatv1.ConditionGatewayRolloutComplete); c.Status != metav1.ConditionTrue || cc.Status.Phase != chatv1.PhaseRunning {
			return fmt.Errorf("phase %s, GatewayRolloutComplete %+v", cc.Status.Phase, c)
		}
		return nil
	})
	if n := len(events(t, ns, "DrainStarted")); n < 2 {
		t.Fatalf("%d DrainStarted events for 2 gateways restarted", n)
	}

	// Nothing listens where the gateway pods are (loopback, a closed port):
	// each says it is unreachable.
	for _, p := range gatewayPods(t, ns) {
		p.Status.PodIP = "127.0.0.1"
		if err := k8s.Status().Update(bg, &p); err != nil {
			t.Fatal(err)
		}
	}
	closed := strconv.Itoa(port(t, tc.FreePort(t)))
	status := kubectlChat(t, "status", "demo", "-n", ns, "--admin-port", closed, "--timeout", "20s")
	t.Logf("kubectl chat status demo:\n%s", status)
	cc := getCluster(t, ns, "demo")
	for _, want := range []string{
		"ChatCluster:", ns + "/demo", "Phase:", "Running", "Restart requested:", at,
		"Conditions:", chatv1.ConditionReady, chatv1.ConditionGatewayRolloutComplete,
		"Components:", "gateway", "logic", "repo", "task", revision,
		"Gateway pods:", "demo-gateway-0", "demo-gateway-1", "unreachable: rpc error: code = Unavailable",
		"Kafka topics:", cc.Status.Kafka.Topics[0], cc.Status.Kafka.Topics[1],
		"Events:", "DrainStarted", "GatewayReplaced",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("kubectl chat status lacks %q:\n%s", want, status)
		}
	}

	// A second restart in the same second would roll nothing: it is refused.
	var buf bytes.Buffer
	if err := chatctl.Restart(bg, k8s, &buf, ns, "demo", mustParse(t, at)); err == nil || !strings.Contains(err.Error(), "already requested") {
		t.Fatalf("a restart with the same time: %v", err)
	}
	if err := chatctl.Restart(bg, k8s, &buf, ns, "missing", time.Now()); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("a restart of a missing cluster: %v", err)
	}
}

func mustParse(t *testing.T, s string) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return at
}

// podRow is a gateway pod's row of status: POD READY REVISION SESSIONS DRAIN.
func podRow(out, pod string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == pod {
			return f
		}
	}
	return nil
}

// openSessions connects n guests to one gateway and waits for each hello;
// each pings every few seconds, as a live client does, until the test ends.
func openSessions(t *testing.T, base string, n int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for i := range n {
		_, token, err := guest(base, fmt.Sprintf("status-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		conn, br, _, err := ws.Dial(bg, strings.Replace(base, "http://", "ws://", 1)+"/v1/ws?token="+token)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		// The hello may have come with the handshake's answer, into br.
		var rw io.ReadWriter = conn
		if br != nil {
			rw = struct {
				io.Reader
				io.Writer
			}{br, conn}
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := wsutil.ReadServerText(rw); err != nil {
			t.Fatalf("hello: %v", err)
		}
		_ = conn.SetReadDeadline(time.Time{})
		conns = append(conns, conn)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Second):
			}
			for _, c := range conns {
				_ = wsutil.WriteClientText(c, []byte(`{"type":"ping"}`))
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait() })
	return conns
}

// TestKubectlChatStatus reads live sessions from real gateway processes
// over mutual TLS, as the plugin does (the same dialer and the cluster's CA
// Secret), per pod; a gateway whose process is killed is reported
// unreachable, by name, while the others still answer.
func TestKubectlChatStatus(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real gateway processes and their backends")
	}
	ns := newNamespace(t)
	k := liveCluster(t, ns, 2)
	stop := startManagerWith(t, cfg, ns, func(r *controller.Reconciler) { r.Admin = k.admin })
	cc := newCluster(ns, "demo")
	cc.Spec.Gateway.Replicas = i32(2)
	cc.Spec.Auth.JWTSecretRef = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "jwt"}, Key: "secret"}
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "Running with 2 ready gateways", func() error {
		cc = getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseRunning || len(k.readyGateways()) != 2 {
			return fmt.Errorf("phase %s, %d gateways ready", cc.Status.Phase, len(k.readyGateways()))
		}
		return nil
	})
	ready := k.readyGateways()
	openSessions(t, ready["demo-gateway-0"], 5)
	openSessions(t, ready["demo-gateway-1"], 3)

	// The plugin's dialer: the admin port (--admin-port) and a client
	// certificate minted from the cluster's CA Secret.
	opts := chatctl.StatusOptions{Admin: k.admin}
	var out string
	eventually(t, 30*time.Second, "5 and 3 live sessions per pod", func() error {
		var buf bytes.Buffer
		if err := chatctl.Status(bg, k8s, &buf, ns, "demo", opts); err != nil {
			return err
		}
		out = buf.String()
		g0, g1 := podRow(out, "demo-gateway-0"), podRow(out, "demo-gateway-1")
		if g0 == nil || g1 == nil || g0[3] != "5" || g1[3] != "3" || !strings.Contains(out, "8 over 2 of 2 gateway pod(s)") {
			return fmt.Errorf("rows %v and %v:\n%s", g0, g1, out)
		}
		return nil
	})
	eventually(t, 30*time.Second, "the operator's sum in status", func() error {
		if s := getCluster(t, ns, "demo").Status.Sessions; s != 8 {
			return fmt.Errorf("status.sessions %d", s)
		}
		return nil
	})

	// Kill demo-gateway-1's process: its pod stays, with its IP.
	g1 := get(t, ns, "demo-gateway-1", &corev1.Pod{})
	k.mu.Lock()
	proc := k.procs[g1.UID]
	k.mu.Unlock()
	if proc == nil {
		t.Fatal("no process for demo-gateway-1")
	}
	proc.p.Stop()
	eventually(t, 30*time.Second, "demo-gateway-1 unreachable, demo-gateway-0 still answering", func() error {
		var buf bytes.Buffer
		if err := chatctl.Status(bg, k8s, &buf, ns, "demo", opts); err != nil {
			return err
		}
		out = buf.String()
		g0, g1 := podRow(out, "demo-gateway-0"), podRow(out, "demo-gateway-1")
		if g0 == nil || g1 == nil || g0[3] != "5" || g1[3] != "unreachable:" || !strings.Contains(out, "5 over 1 of 2 gateway pod(s)") {
			return fmt.Errorf("rows %v and %v", g0, g1)
		}
		return nil
	})

	// A drain shows on its pod, from the operator's annotations (the
	// operator is stopped first: it would act on them).
	stop()
	edit(t, ns, "demo-gateway-0", &corev1.Pod{}, func(p *corev1.Pod) {
		metav1.SetMetaDataAnnotation(&p.ObjectMeta, gatewayroll.AnnotationDrainStarted, time.Now().UTC().Format(time.RFC3339Nano))
		metav1.SetMetaDataAnnotation(&p.ObjectMeta, gatewayroll.AnnotationDrainDeadline, time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano))
		metav1.SetMetaDataAnnotation(&p.ObjectMeta, gatewayroll.AnnotationDrainSessions, "5")
	})
	var buf bytes.Buffer
	if err := chatctl.Status(context.Background(), k8s, &buf, ns, "demo", opts); err != nil {
		t.Fatal(err)
	}
	if row := strings.Join(podRow(buf.String(), "demo-gateway-0"), " "); !strings.Contains(row, "draining for") || !strings.Contains(row, "5 session(s) at the start") {
		t.Fatalf("demo-gateway-0 row %q:\n%s", row, buf.String())
	}
}
