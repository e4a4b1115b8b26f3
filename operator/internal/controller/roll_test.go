package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/gochat/gochat/api/pki"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

// backends are im-logic, im-repo and im-task as real processes on MariaDB,
// Redis and a Kafka broker process, as in the services' e2e suite.
type backends struct {
	logic, repo, secret string
}

// freeAddrs returns n distinct free loopback addresses: a port freed by
// one FreePort may be handed out again by the next.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	var out []string
	for len(out) < n {
		if a := tc.FreePort(t); !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// startBackends runs im-repo, im-logic and im-task with certificates from
// ca, the cluster's internal CA, as their pods would have them.
func startBackends(t *testing.T, ca *pki.CA) backends {
	t.Helper()
	tc.Binary(t)
	_, prefix := tc.Redis(t)
	dsn := tc.FreshDatabase(t)
	b := backends{secret: strings.Repeat("roll-secret-", 4)}
	addrs := freeAddrs(t, 8)
	kafka, repoMetrics, logicMetrics, taskMetrics := addrs[0], addrs[3], addrs[4], addrs[5]
	b.repo, b.logic = addrs[1], addrs[2]
	topicPrefix := tc.RandomName("roll")
	k := tc.Start(t, "kafka", nil, "dev-kafka", "--addr", kafka, "--data-dir", t.TempDir())
	tc.WaitTCP(t, kafka, k)
	common := []string{"GOCHAT_LOG_LEVEL=info"}
	kafkaEnv := []string{"GOCHAT_KAFKA_BROKERS=" + kafka, "GOCHAT_KAFKA_TOPIC_PREFIX=" + topicPrefix, "GOCHAT_KAFKA_PARTITIONS=4"}
	as := func(c pki.Component, env ...string) []string {
		return append(append(append([]string{}, common...), tc.IssueFiles(t, ca, c).Env()...), env...)
	}
	repo := tc.Start(t, "im-repo", as(pki.Repo, "GOCHAT_MYSQL_DSN="+dsn, "GOCHAT_REDIS_ADDR="+tc.RedisAddr(), "GOCHAT_REDIS_PREFIX="+prefix),
		"repo", "--grpc-addr", b.repo, "--metrics-addr", repoMetrics, "--migrate")
	tc.WaitTCP(t, b.repo, repo)
	logic := tc.Start(t, "im-logic", as(pki.Logic, append(kafkaEnv, "GOCHAT_JWT_SECRET="+b.secret)...),
		"logic", "--grpc-addr", b.logic, "--metrics-addr", logicMetrics, "--repo-addr", b.repo)
	tc.WaitTCP(t, b.logic, logic)
	task := tc.Start(t, "im-task", as(pki.Task, append(kafkaEnv, "GOCHAT_CONSUMER_GROUP="+topicPrefix)...),
		"task", "--metrics-addr", taskMetrics, "--repo-addr", b.repo)
	tc.WaitHTTP(t, "http://"+taskMetrics+"/healthz", task)
	return b
}

// podRecord is what the kubelet saw when a gateway pod was deleted.
type podRecord struct {
	pod, uid     string
	seenDeleting time.Time
	sessions     int64 // -1: did not answer
	drainStarted string
	deadline     time.Time
}

// kubelet plays the kubelet for one namespace: every gateway pod is a real
// gochat gateway process on its own loopback address, its Ready condition
// follows the process's /readyz, and a deleted pod gets its preStop sleep,
// SIGTERM and the rest of its grace period before it is removed. The other
// components' pods are only marked running (their real processes run
// outside, see startBackends).
type kubelet struct {
	t                  *testing.T
	ns                 string
	be                 backends
	net                int // 127.0.<net>.<10+ordinal>
	httpPort, grpcPort int
	admin              gatewayadmin.Dialer
	refuseImage        atomic.Value // string: pods of this image never start
	desired            atomic.Int32

	mu         sync.Mutex
	procs      map[types.UID]*gwProc
	ready      map[string]string // Ready gateway pod -> its base URL
	deletions  []podRecord
	maxUnavail int
	stopping   chan struct{}
	wg         sync.WaitGroup
}

type gwProc struct {
	p        *tc.Process
	ip       string
	stopping bool
}

func port(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// liveCluster readies ns for a ChatCluster "demo" of real gateway
// processes: the cluster's internal CA, made here and handed to the
// operator in the demo-ca Secret, which it adopts (the backends run outside
// the cluster and need certificates from it before the cluster exists);
// im-repo, im-logic and im-task on it; the Secrets the cluster names
// (mysql, jwt); and the kubelet stand-in for the gateway pods.
func liveCluster(t *testing.T, ns string, gateways int32) *kubelet {
	t.Helper()
	ca := tc.NewCA(t)
	caKey, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	createSecret(t, ns, "demo-ca", map[string]string{resources.CACertKey: string(ca.CertPEM()), resources.CAKeyKey: string(caKey)})
	be := startBackends(t, ca)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	createSecret(t, ns, "jwt", map[string]string{"secret": be.secret})
	return startKubelet(t, ns, be, gateways)
}

func startKubelet(t *testing.T, ns string, be backends, desired int32) *kubelet {
	ports := freeAddrs(t, 2)
	k := &kubelet{t: t, ns: ns, be: be, net: 100 + rand.IntN(150), httpPort: port(t, ports[0]), grpcPort: port(t, ports[1]),
		procs: map[types.UID]*gwProc{}, ready: map[string]string{}, stopping: make(chan struct{})}
	// The operator's own dialer (mutual TLS with its certificate from the
	// cluster's CA), pointed at the test's admin port.
	k.admin = gatewayadmin.Dialer{Port: k.grpcPort, TLS: (&controller.Reconciler{Client: k8s}).AdminTLSForPod}
	k.refuseImage.Store("")
	k.desired.Store(desired)
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for {
			select {
			case <-k.stopping:
				return
			case <-time.After(150 * time.Millisecond):
			}
			if err := k.tick(); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
				t.Logf("kubelet: %v", err)
			}
		}
	}()
	t.Cleanup(func() { close(k.stopping); k.wg.Wait() })
	return k
}

func (k *kubelet) ip(pod string) string {
	return fmt.Sprintf("127.0.%d.%d", k.net, 10+gatewayroll.Ordinal(pod))
}

func (k *kubelet) tick() error {
	var pods corev1.PodList
	if err := k8s.List(bg, &pods, client.InNamespace(k.ns)); err != nil {
		return err
	}
	healthy := 0
	ready := map[string]string{}
	for i := range pods.Items {
		p := &pods.Items[i]
		component := p.Labels["app.kubernetes.io/component"]
		if component != resources.Gateway {
			if err := markRunning(p, component); err != nil {
				return err
			}
			continue
		}
		if p.DeletionTimestamp != nil {
			k.deleting(p)
			continue
		}
		if p.Spec.NodeName == "" {
			// Bound pods are deleted gracefully (unbound ones at once), so
			// that the grace period is the kubelet's to honour.
			b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace}, Target: corev1.ObjectReference{Kind: "Node", Name: "fake-node"}}
			if err := k8s.SubResource("binding").Create(bg, p, b); err != nil {
				return fmt.Errorf("bind %s: %w", p.Name, err)
			}
			continue
		}
		ok, err := k.run(p)
		if err != nil {
			return err
		}
		if ok {
			ready[p.Name] = "http://" + net.JoinHostPort(k.ip(p.Name), strconv.Itoa(k.httpPort))
			if gatewayroll.Ordinal(p.Name) < int(k.desired.Load()) && p.Annotations[gatewayroll.AnnotationDrainStarted] == "" {
				healthy++
			}
		}
	}
	k.mu.Lock()
	k.ready = ready
	if u := int(k.desired.Load()) - healthy; u > k.maxUnavail {
		k.maxUnavail = u
	}
	k.mu.Unlock()
	return nil
}

// resetUnavailable starts counting unavailability afresh.
func (k *kubelet) resetUnavailable() {
	k.mu.Lock()
	k.maxUnavail = 0
	k.mu.Unlock()
}

func markRunning(p *corev1.Pod, component string) error {
	if p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded || p.DeletionTimestamp != nil {
		return nil
	}
	now := metav1.Now()
	if component == resources.Migrate {
		p.Status.Phase = corev1.PodSucceeded
	} else {
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	}
	p.Status.PodIP, p.Status.StartTime = "10.1.0.1", &now
	return k8s.Status().Update(bg, p)
}

// run starts the pod's process if it has none and reports its readiness
// in the pod's status; ok is the pod's Ready.
func (k *kubelet) run(p *corev1.Pod) (ok bool, err error) {
	c := p.Spec.Containers[0]
	k.mu.Lock()
	proc := k.procs[p.UID]
	k.mu.Unlock()
	if proc == nil {
		if c.Image == k.refuseImage.Load().(string) {
			return false, nil // as an image that cannot be pulled: never starts
		}
		env := []string{"GOCHAT_LOG_LEVEL=info", "POD_IP=" + k.ip(p.Name)}
		mounts, err := k.mountSecrets(p)
		if err != nil {
			return false, err
		}
		for _, e := range c.Env {
			switch {
			case e.Value != "":
				env = append(env, e.Name+"="+mounts.Replace(e.Value))
			case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
				var s corev1.Secret
				ref := e.ValueFrom.SecretKeyRef
				if err := k8s.Get(bg, types.NamespacedName{Namespace: k.ns, Name: ref.Name}, &s); err != nil {
					return false, err
				}
				env = append(env, e.Name+"="+string(s.Data[ref.Key]))
			}
		}
		// The cluster's Service addresses are the test's processes here.
		ip := k.ip(p.Name)
		proc = &gwProc{ip: ip, p: tc.Start(k.t, p.Name+"-"+string(p.UID)[:8], env, "gateway",
			"--http-addr", net.JoinHostPort(ip, strconv.Itoa(k.httpPort)), "--grpc-addr", net.JoinHostPort(ip, strconv.Itoa(k.grpcPort)),
			"--metrics-addr", net.JoinHostPort(ip, strconv.Itoa(resources.GatewayMetrics)),
			"--logic-addr", k.be.logic, "--repo-addr", k.be.repo,
			// Every test client comes from loopback: the per-address login
			// and guest throttles would refuse the fleet.
			"--auth-rate=1000", "--auth-burst=10000", "--guests-per-hour=1000000")}
		k.mu.Lock()
		k.procs[p.UID] = proc
		k.mu.Unlock()
	}
	ok = readyz(proc.ip, k.httpPort)
	cur := false
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			cur = cond.Status == corev1.ConditionTrue
		}
	}
	if p.Status.Phase == corev1.PodRunning && cur == ok && p.Status.PodIP == proc.ip {
		return ok, nil
	}
	now := metav1.Now()
	st := corev1.ConditionFalse
	if ok {
		st = corev1.ConditionTrue
	}
	p.Status.Phase, p.Status.PodIP, p.Status.StartTime = corev1.PodRunning, proc.ip, &now
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st, LastTransitionTime: now}}
	return ok, k8s.Status().Update(bg, p)
}

// mountSecrets writes the pod's Secret volumes where its container mounts
// them, under a directory of the test's, and returns what turns a path in
// the container into the path on this machine.
func (k *kubelet) mountSecrets(p *corev1.Pod) (*strings.Replacer, error) {
	secrets := map[string]string{}
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	var pairs []string
	for _, m := range p.Spec.Containers[0].VolumeMounts {
		name, ok := secrets[m.Name]
		if !ok {
			continue
		}
		var s corev1.Secret
		if err := k8s.Get(bg, types.NamespacedName{Namespace: k.ns, Name: name}, &s); err != nil {
			return nil, fmt.Errorf("secret %s of pod %s: %w", name, p.Name, err)
		}
		dir := k.t.TempDir()
		for key, value := range s.Data {
			if err := os.WriteFile(filepath.Join(dir, key), value, 0o600); err != nil {
				return nil, err
			}
		}
		pairs = append(pairs, m.MountPath, dir)
	}
	return strings.NewReplacer(pairs...), nil
}

func readyz(ip string, port int) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(ip, strconv.Itoa(port)) + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// deleting records what a deleted pod still held, then stops its process
// as a kubelet would: preStop sleep, SIGTERM, the rest of the grace period,
// SIGKILL; and removes the pod.
func (k *kubelet) deleting(p *corev1.Pod) {
	k.mu.Lock()
	proc := k.procs[p.UID]
	if proc != nil && proc.stopping {
		k.mu.Unlock()
		return
	}
	if proc != nil {
		proc.stopping = true
	}
	k.mu.Unlock()
	rec := podRecord{pod: p.Name, uid: string(p.UID), seenDeleting: time.Now(), sessions: -1, drainStarted: p.Annotations[gatewayroll.AnnotationDrainStarted]}
	rec.deadline, _ = time.Parse(time.RFC3339Nano, p.Annotations[gatewayroll.AnnotationDrainDeadline])
	if proc != nil {
		if st, err := k.admin.Stats(bg, p); err == nil {
			rec.sessions = st.Sessions
		}
	}
	k.mu.Lock()
	k.deletions = append(k.deletions, rec)
	k.mu.Unlock()
	pod := p.DeepCopy()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		start := time.Now()
		grace := 30 * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		if proc != nil {
			if l := pod.Spec.Containers[0].Lifecycle; l != nil && l.PreStop != nil && l.PreStop.Sleep != nil {
				time.Sleep(time.Duration(l.PreStop.Sleep.Seconds) * time.Second)
			}
			_ = proc.p.Signal(syscall.SIGTERM)
			for !proc.p.Exited() && time.Since(start) < grace {
				time.Sleep(50 * time.Millisecond)
			}
			if proc.p.Exited() {
				proc.p.Stop()
			} else {
				proc.p.Kill() // the grace period is over
			}
		}
		err := k8s.Delete(bg, pod, client.GracePeriodSeconds(0), client.Preconditions{UID: &pod.UID})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			k.t.Logf("kubelet: remove %s: %v", pod.Name, err)
		}
		k.mu.Lock()
		delete(k.procs, pod.UID)
		k.mu.Unlock()
	}()
}

func (k *kubelet) readyGateways() map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]string, len(k.ready))
	for n, u := range k.ready {
		out[n] = u
	}
	return out
}

// chatClient is one live client. It follows the contract: on a reconnect
// frame it waits after_ms, connects to another Ready gateway (as a load
// balancer would pick one) and syncs from the last contiguous seq it holds.
type chatClient struct {
	id, token, conv string
	k               *kubelet
	stopped         *atomic.Bool
	wg              *sync.WaitGroup

	mu        sync.Mutex
	conn      net.Conn
	gen       int
	leaving   bool
	held      map[int64]bool
	contig    int64
	acked     map[int64]bool
	conns     []*clientConn
	errors    []string
	unexpects int
	sent      int
}

// clientConn is one connection of a client: which gateway, and how it ended.
type clientConn struct {
	pod        string
	reconnects int
	ended      bool
	announced  bool
}

func guest(base, name string) (id, token string, err error) {
	body, _ := json.Marshal(map[string]string{"nickname": name})
	resp, err := http.Post(base+"/v1/auth/guest", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	var r struct {
		User  struct{ ID string } `json:"user"`
		Token string              `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusOK {
		return "", "", fmt.Errorf("guest login: %s %v", resp.Status, err)
	}
	return r.User.ID, r.Token, nil
}

func direct(base, token, peer string) (string, error) {
	body, _ := json.Marshal(map[string]string{"user_id": peer})
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/conversations/direct", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var c struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("direct conversation: %s %v", resp.Status, err)
	}
	return c.ID, nil
}

// connect dials a Ready gateway; a draining one refuses and another is tried.
func (c *chatClient) connect() error {
	var last error
	for attempt := 0; attempt < 100; attempt++ {
		if c.stopped.Load() {
			return nil
		}
		gws := c.k.readyGateways()
		names := make([]string, 0, len(gws))
		for n := range gws {
			names = append(names, n)
		}
		if len(names) == 0 {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		pod := names[rand.IntN(len(names))]
		ctx, cancel := context.WithTimeout(bg, 5*time.Second)
		conn, br, _, err := ws.Dial(ctx, strings.Replace(gws[pod], "http://", "ws://", 1)+"/v1/ws?token="+c.token)
		cancel()
		if err != nil {
			last = err
			time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond)
			continue
		}
		var r io.ReadWriter = conn
		if br != nil {
			r = struct {
				io.Reader
				io.Writer
			}{br, conn} // frames sent right after the handshake may be buffered in br
		}
		cc := &clientConn{pod: pod}
		c.mu.Lock()
		c.conn, c.leaving = conn, false
		c.gen++
		gen := c.gen
		c.conns = append(c.conns, cc)
		c.mu.Unlock()
		c.wg.Add(1)
		go c.read(conn, r, gen, cc)
		c.sync()
		return nil
	}
	return fmt.Errorf("no gateway took the client: %w", last)
}

func (c *chatClient) write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil || c.leaving {
		return
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = wsutil.WriteClientText(c.conn, b)
}

func (c *chatClient) sync() {
	c.mu.Lock()
	after := c.contig
	c.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"type": "sync", "data": map[string]any{"conversation_id": c.conv, "after_seq": after, "limit": 200}})
	c.write(b)
}

func (c *chatClient) send() {
	c.mu.Lock()
	c.sent++
	id := fmt.Sprintf("%s-%d", c.id, c.sent)
	c.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"type": "send", "data": map[string]any{"client_msg_id": id, "conversation_id": c.conv, "content": "hello " + id}})
	c.write(b)
}

func (c *chatClient) holdLocked(seq int64) {
	c.held[seq] = true
	for c.held[c.contig+1] {
		c.contig++
	}
}

type wireFrame struct {
	Type string `json:"type"`
	Data struct {
		AfterMs        int64  `json:"after_ms"`
		Seq            int64  `json:"seq"`
		ConversationID string `json:"conversation_id"`
		Code           string `json:"code"`
		Message        *struct {
			Seq int64 `json:"seq"`
		} `json:"message"`
		Messages []struct {
			Seq int64 `json:"seq"`
		} `json:"messages"`
		HasMore bool `json:"has_more"`
	} `json:"data"`
}

func (c *chatClient) read(conn net.Conn, r io.ReadWriter, gen int, cc *clientConn) {
	defer c.wg.Done()
	for {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		msg, err := wsutil.ReadServerText(r)
		if err != nil {
			break
		}
		var f wireFrame
		if json.Unmarshal(msg, &f) != nil {
			continue
		}
		switch f.Type {
		case "message":
			c.mu.Lock()
			c.holdLocked(f.Data.Seq)
			c.mu.Unlock()
		case "sync":
			c.mu.Lock()
			for _, m := range f.Data.Messages {
				c.holdLocked(m.Seq)
			}
			c.mu.Unlock()
			if f.Data.HasMore {
				c.sync()
			}
		case "resync":
			c.sync()
		case "ack":
			if f.Data.Message != nil {
				c.mu.Lock()
				c.acked[f.Data.Message.Seq] = true
				c.holdLocked(f.Data.Message.Seq)
				c.mu.Unlock()
			}
		case "error":
			c.mu.Lock()
			c.errors = append(c.errors, string(msg))
			c.mu.Unlock()
		case "reconnect":
			c.mu.Lock()
			cc.reconnects++
			c.leaving = true
			c.mu.Unlock()
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				time.Sleep(time.Duration(f.Data.AfterMs) * time.Millisecond)
				c.mu.Lock()
				current := c.gen == gen
				c.mu.Unlock()
				conn.Close()
				if current {
					if err := c.connect(); err != nil {
						c.mu.Lock()
						c.errors = append(c.errors, err.Error())
						c.mu.Unlock()
					}
				}
			}()
		}
	}
	conn.Close()
	c.mu.Lock()
	cc.ended = true
	cc.announced = cc.reconnects > 0
	unexpected := !cc.announced && c.gen == gen && !c.stopped.Load()
	if c.gen == gen {
		c.conn = nil
	}
	if unexpected {
		c.unexpects++
	}
	c.mu.Unlock()
	if unexpected {
		time.Sleep(500 * time.Millisecond)
		if err := c.connect(); err != nil {
			c.mu.Lock()
			c.errors = append(c.errors, err.Error())
			c.mu.Unlock()
		}
	}
}

// fleet is the live clients, in pairs sharing a direct conversation.
type fleet struct {
	clients []*chatClient
	stopped atomic.Bool
	wg      sync.WaitGroup
	stop    chan struct{}
}

func startFleet(t *testing.T, k *kubelet, n int, perSecond float64) *fleet {
	t.Helper()
	f := &fleet{stop: make(chan struct{})}
	var base string
	for _, u := range k.readyGateways() {
		base = u
	}
	f.clients = make([]*chatClient, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := 0; i < n; i += 2 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var pair [2]*chatClient
			for j := range pair {
				id, token, err := guest(base, fmt.Sprintf("roll-%d", i+j))
				if err != nil {
					errs <- err
					return
				}
				pair[j] = &chatClient{id: id, token: token, k: k, stopped: &f.stopped, wg: &f.wg, held: map[int64]bool{}, acked: map[int64]bool{}}
			}
			conv, err := direct(base, pair[0].token, pair[1].id)
			if err != nil {
				errs <- err
				return
			}
			for j, c := range pair {
				c.conv = conv
				if err := c.connect(); err != nil {
					errs <- err
					return
				}
				f.clients[i+j] = c
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	every := time.Duration(float64(time.Second) / perSecond)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-f.stop:
				return
			case <-tick.C:
			}
			f.clients[rand.IntN(len(f.clients))].send()
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *fleet) stopSending() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
}

func (f *fleet) close() {
	f.stopSending()
	f.stopped.Store(true)
	for _, c := range f.clients {
		c.mu.Lock()
		if c.conn != nil {
			c.conn.Close()
		}
		c.mu.Unlock()
	}
	f.wg.Wait()
}

// lost counts acked messages some member of their conversation does not hold.
func (f *fleet) lost() (lost, acked int) {
	byConv := map[string][]*chatClient{}
	for _, c := range f.clients {
		byConv[c.conv] = append(byConv[c.conv], c)
	}
	for _, members := range byConv {
		all := map[int64]bool{}
		for _, m := range members {
			m.mu.Lock()
			for s := range m.acked {
				all[s] = true
			}
			m.mu.Unlock()
		}
		acked += len(all)
		for _, m := range members {
			m.mu.Lock()
			for s := range all {
				if !m.held[s] {
					lost++
				}
			}
			m.mu.Unlock()
		}
	}
	return lost, acked
}

func events(t *testing.T, ns, reason string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(bg, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func gatewayPods(t *testing.T, ns string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": resources.Gateway}); err != nil {
		t.Fatal(err)
	}
	return pods.Items
}

// TestGatewayRoll rolls three real gateway processes holding 1,000 live
// clients that keep chatting, with the operator restarted in the middle;
// then scales down; then rolls to an image whose pods never start.
func TestGatewayRoll(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real gateway processes and 1,000 clients")
	}
	const (
		clients     = 1000
		drainTimout = 8 * time.Second
	)
	ns := newNamespace(t)
	k := liveCluster(t, ns, 3)
	tune := func(r *controller.Reconciler) {
		r.Admin = k.admin
		r.ReadyTimeout = 15 * time.Second
	}
	stop := startManagerWith(t, cfg, ns, tune)
	cc := newCluster(ns, "demo")
	cc.Spec.Gateway.Replicas = i32(3)
	cc.Spec.Gateway.Drain = chatv1.DrainSpec{Timeout: &metav1.Duration{Duration: drainTimout}, MaxUnavailable: 1}
	cc.Spec.Auth.JWTSecretRef = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "jwt"}, Key: "secret"}
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "Running with 3 ready gateways", func() error {
		cc = getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseRunning || len(k.readyGateways()) != 3 {
			return fmt.Errorf("phase %s, %d gateways ready", cc.Status.Phase, len(k.readyGateways()))
		}
		return nil
	})

	f := startFleet(t, k, clients, 100)
	// One client that ignores reconnect and never reads: the gateway closes
	// it by itself (by its slot in the window, at the latest at the
	// deadline), and its pod goes only once it is empty or past its deadline.
	stubbornGW := "demo-gateway-0"
	_, token, err := guest(k.readyGateways()[stubbornGW], "stubborn")
	if err != nil {
		t.Fatal(err)
	}
	stubborn, stubbornBuf, _, err := ws.Dial(bg, strings.Replace(k.readyGateways()[stubbornGW], "http://", "ws://", 1)+"/v1/ws?token="+token)
	if err != nil {
		t.Fatal(err)
	}
	defer stubborn.Close()
	eventually(t, 30*time.Second, "sessions in status", func() error {
		if s := getCluster(t, ns, "demo").Status.Sessions; s != clients+1 {
			return fmt.Errorf("%d sessions", s)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // traffic before the roll
	k.resetUnavailable()
	before := map[string]string{}
	for _, p := range gatewayPods(t, ns) {
		before[p.Name] = string(p.UID)
	}

	// A changed gateway template.
	cc = getCluster(t, ns, "demo")
	patch := client.MergeFrom(cc.DeepCopy())
	cc.Spec.Gateway.Image = "ghcr.io/gochat/gochat:0.1.1"
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	// The operator stops in the middle of the first drain; a new one resumes it.
	var first corev1.Pod
	eventually(t, 30*time.Second, "a drain starts", func() error {
		for _, p := range gatewayPods(t, ns) {
			if p.Annotations[gatewayroll.AnnotationDrainStarted] != "" {
				first = p
				return nil
			}
		}
		return fmt.Errorf("no pod draining")
	})
	stop()
	time.Sleep(2 * time.Second)
	startManagerWith(t, cfg, ns, tune)

	eventually(t, 4*time.Minute, "every gateway replaced, Running again", func() error {
		pods := gatewayPods(t, ns)
		for _, p := range pods {
			if before[p.Name] == string(p.UID) {
				return fmt.Errorf("pod %s not replaced yet", p.Name)
			}
		}
		cc = getCluster(t, ns, "demo")
		if c := condition(cc, chatv1.ConditionGatewayRolloutComplete); c.Status != metav1.ConditionTrue || cc.Status.Phase != chatv1.PhaseRunning || len(pods) != 3 {
			return fmt.Errorf("phase %s, GatewayRolloutComplete %+v", cc.Status.Phase, c)
		}
		return nil
	})
	k.mu.Lock()
	maxUnavail, deletions := k.maxUnavail, append([]podRecord(nil), k.deletions...)
	k.mu.Unlock()
	if maxUnavail > 1 {
		t.Errorf("%d gateways unavailable at once, maxUnavailable is 1", maxUnavail)
	}
	checkDeletions(t, deletions)
	for _, d := range deletions {
		if d.uid == string(first.UID) && d.drainStarted != first.Annotations[gatewayroll.AnnotationDrainStarted] {
			t.Errorf("the restarted operator began %s's drain again: %s, then %s", first.Name, first.Annotations[gatewayroll.AnnotationDrainStarted], d.drainStarted)
		}
	}
	// What it never read is still buffered: hello, reconnect, then the close.
	// The hello may have come with the handshake's answer, into its buffer.
	var stubbornRW io.ReadWriter = stubborn
	if stubbornBuf != nil {
		stubbornRW = struct {
			io.Reader
			io.Writer
		}{stubbornBuf, stubborn}
	}
	_ = stubborn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var frames []string
	for {
		msg, err := wsutil.ReadServerText(stubbornRW)
		if err != nil {
			if _, closed := err.(wsutil.ClosedError); !closed {
				t.Errorf("the stubborn client was not closed by its gateway: %v (frames %v)", err, frames)
			}
			break
		}
		var fr wireFrame
		_ = json.Unmarshal(msg, &fr)
		frames = append(frames, fr.Type)
	}
	if !strings.Contains(strings.Join(frames, ","), "reconnect") {
		t.Errorf("the stubborn client got %v, no reconnect", frames)
	}
	for _, reason := range []string{"DrainStarted", "DrainCompleted", "GatewayReplaced"} {
		if len(events(t, ns, reason)) == 0 {
			t.Errorf("no %s event", reason)
		}
	}

	// Sessions that keep demo-gateway-2's drain going for its whole window
	// (at least 20 closes a second: 100 sessions take the 4 s window): they
	// neither read nor leave, so the gateway closes them one by one.
	holdURL := k.readyGateways()["demo-gateway-2"]
	if holdURL == "" {
		t.Fatalf("demo-gateway-2 is not Ready before the scale-down")
	}
	for i := 0; i < 100; i++ {
		_, token, err := guest(holdURL, fmt.Sprintf("holder%d", i))
		if err != nil {
			t.Fatal(err)
		}
		c, _, _, err := ws.Dial(bg, strings.Replace(holdURL, "http://", "ws://", 1)+"/v1/ws?token="+token)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}

	// Scale-down drains the highest ordinal before the replicas come down.
	k.desired.Store(2)
	k.resetUnavailable()
	cc = getCluster(t, ns, "demo")
	patch = client.MergeFrom(cc.DeepCopy())
	cc.Spec.Gateway.Replicas = i32(2)
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	// The gateway being removed hangs once its drain has begun (SIGSTOP, after
	// its sessions had their reconnect frames): it holds its sessions and
	// answers nothing, so the operator cannot know they are gone and must
	// keep the pod until the drain's deadline, then remove it.
	var hung *gwProc
	eventually(t, 30*time.Second, "demo-gateway-2 draining", func() error {
		for _, p := range gatewayPods(t, ns) {
			if p.Name == "demo-gateway-2" && p.Annotations[gatewayroll.AnnotationDrainStarted] != "" {
				k.mu.Lock()
				hung = k.procs[p.UID]
				k.mu.Unlock()
				if hung != nil {
					return nil
				}
			}
		}
		return fmt.Errorf("no drain on demo-gateway-2 yet")
	})
	time.Sleep(time.Second) // its reconnect frames are written; the holders' closes are not
	hung.p.Pause()
	eventually(t, 2*time.Minute, "scaled down to 2, Running", func() error {
		cc = getCluster(t, ns, "demo")
		if n := len(gatewayPods(t, ns)); n != 2 || cc.Status.Phase != chatv1.PhaseRunning {
			return fmt.Errorf("%d pods, phase %s", n, cc.Status.Phase)
		}
		return nil
	})
	k.mu.Lock()
	deletions = append([]podRecord(nil), k.deletions...)
	k.mu.Unlock()
	checkDeletions(t, deletions)
	last := deletions[len(deletions)-1]
	if last.pod != "demo-gateway-2" || last.drainStarted == "" {
		t.Errorf("scale-down removed %s (drain started %q), want demo-gateway-2 drained", last.pod, last.drainStarted)
	}
	if last.sessions != -1 || last.seenDeleting.Before(last.deadline) {
		t.Errorf("the hung gateway was deleted at %s with sessions %d; want it kept, unanswering, until its deadline %s",
			last.seenDeleting.Format(time.RFC3339Nano), last.sessions, last.deadline.Format(time.RFC3339Nano))
	}
	if len(events(t, ns, "DrainTimedOut")) == 0 {
		t.Error("no DrainTimedOut event for the hung gateway")
	}

	// Every acked message reached both members of its conversation, by push
	// or sync; every client left each gateway once, when told to.
	f.stopSending()
	eventually(t, 60*time.Second, "every acked message held by every member", func() error {
		for _, c := range f.clients {
			c.sync()
		}
		time.Sleep(time.Second)
		if lost, acked := f.lost(); lost > 0 || acked == 0 {
			return fmt.Errorf("%d of %d acked messages lost", lost, acked)
		}
		return nil
	})
	lost, acked := f.lost()
	reconnects, unexpected := 0, 0
	for i, c := range f.clients {
		c.mu.Lock()
		if len(c.errors) > 0 {
			t.Errorf("client %d: %v", i, c.errors)
		}
		unexpected += c.unexpects
		for j, cn := range c.conns {
			last := j == len(c.conns)-1
			if !last && (cn.reconnects != 1 || !cn.announced) {
				t.Errorf("client %d: connection %d to %s ended after %d reconnect frames", i, j, cn.pod, cn.reconnects)
			}
			reconnects += cn.reconnects
		}
		c.mu.Unlock()
	}
	if unexpected > 0 {
		t.Errorf("%d connections closed without a reconnect frame", unexpected)
	}
	t.Logf("%d clients, %d acked messages, %d lost; %d reconnects; at most %d gateway(s) unavailable", clients, acked, lost, reconnects, maxUnavail)
	if reconnects < clients/3 {
		t.Errorf("only %d reconnects for %d clients over a roll of every gateway", reconnects, clients)
	}

	// A replacement that never becomes Ready halts the roll.
	k.refuseImage.Store("ghcr.io/gochat/gochat:broken")
	cc = getCluster(t, ns, "demo")
	patch = client.MergeFrom(cc.DeepCopy())
	cc.Spec.Gateway.Image = "ghcr.io/gochat/gochat:broken"
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "RolloutStuck", func() error {
		cc = getCluster(t, ns, "demo")
		if c := condition(cc, chatv1.ConditionGatewayRolloutComplete); c.Reason != "RolloutStuck" || c.Status != metav1.ConditionFalse {
			return fmt.Errorf("GatewayRolloutComplete %+v", c)
		}
		return nil
	})
	if len(events(t, ns, "RolloutStuck")) == 0 {
		t.Error("no RolloutStuck event")
	}
	time.Sleep(3 * time.Second)
	draining := 0
	for _, p := range gatewayPods(t, ns) {
		if p.Annotations[gatewayroll.AnnotationDrainStarted] != "" {
			draining++
		}
		if p.Spec.Containers[0].Image != "ghcr.io/gochat/gochat:broken" && p.DeletionTimestamp != nil {
			t.Errorf("pod %s is being removed while the roll is stuck", p.Name)
		}
	}
	if draining != 0 || len(k.readyGateways()) != 1 {
		t.Errorf("stuck roll: %d pods draining, %d ready; want 0 and 1", draining, len(k.readyGateways()))
	}
}

// checkDeletions fails for a gateway deleted while it held sessions before
// its drain deadline.
func checkDeletions(t *testing.T, ds []podRecord) {
	t.Helper()
	for _, d := range ds {
		if d.drainStarted == "" {
			t.Errorf("pod %s deleted without a drain", d.pod)
			continue
		}
		if d.sessions != 0 && d.seenDeleting.Before(d.deadline) {
			t.Errorf("pod %s deleted with %d sessions before its deadline %s", d.pod, d.sessions, d.deadline)
		}
	}
}
