//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/gochat/gochat/operator/test/utils"
	tc "github.com/gochat/gochat/services/testcluster"
)

var gochatRollImage = envOr("E2E_GOCHAT_ROLL_IMAGE", gochatImage+"-roll")

// The gateway pods' preStop sleep and grace period as the operator sets them
// (docs/operator.md): preStop 5s, grace = drain.timeout (20s in bring-up) + 10s.
const (
	preStopSleep = 5 * time.Second
	gatewayGrace = 30
)

const gatewaySelector = "app.kubernetes.io/instance=" + cluster + ",app.kubernetes.io/component=gateway"

// podWatch follows the gateway pods through kubectl get --watch: how many
// are unavailable at worst, and how each deleted pod ended.
type podWatch struct {
	want int

	mu       sync.Mutex
	live     map[string]watchedPod // by name
	worst    int                   // most gateways unavailable at once, once counting
	counting bool
	ends     map[string]*podEnd // by uid
	stop     func()
	done     chan struct{}
}

type watchedPod struct {
	uid, image, hash string
	available        bool // Ready and not being deleted
}

// podEnd is one deleted pod's end: when its deletion was asked
// (deletionTimestamp minus the grace period), its grace period, when its
// container finished and when the pod was gone.
type podEnd struct {
	name              string
	requested, gone   time.Time
	finished          time.Time
	grace             int64
	deletionSeen, end bool
	drained           bool // carried the operator's drain-started annotation
}

func watchGateways(t *testing.T, want int) *podWatch {
	ctx, cancel := context.WithCancel(context.Background())
	k := utils.Kubectl()
	cmd := exec.CommandContext(ctx, k.Path, "-n", appNS, "get", "pods", "-l", gatewaySelector, "--watch", "--output-watch-events", "-o", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("kubectl get --watch: %v", err)
	}
	w := &podWatch{want: want, live: map[string]watchedPod{}, ends: map[string]*podEnd{}, done: make(chan struct{})}
	w.stop = func() {
		cancel()
		<-w.done
	}
	t.Cleanup(w.stop)
	go func() {
		defer close(w.done)
		defer func() { _ = cmd.Wait() }()
		dec := json.NewDecoder(stdout)
		for {
			var ev struct {
				Type   string     `json:"type"`
				Object corev1.Pod `json:"object"`
			}
			if err := dec.Decode(&ev); err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil {
					t.Logf("pod watch: %v", err)
				}
				return
			}
			w.observe(ev.Type, &ev.Object)
		}
	}()
	return w
}

func (w *podWatch) observe(typ string, p *corev1.Pod) {
	w.mu.Lock()
	defer w.mu.Unlock()
	uid := string(p.UID)
	if p.DeletionTimestamp != nil || typ == "DELETED" {
		e := w.ends[uid]
		if e == nil {
			e = &podEnd{name: p.Name}
			w.ends[uid] = e
		}
		e.drained = e.drained || p.Annotations["chat.gochat.io/drain-started"] != ""
		if p.DeletionTimestamp != nil && p.DeletionGracePeriodSeconds != nil && !e.deletionSeen {
			e.deletionSeen = true
			e.grace = *p.DeletionGracePeriodSeconds
			e.requested = p.DeletionTimestamp.Add(-time.Duration(e.grace) * time.Second)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "gateway" && cs.State.Terminated != nil {
				e.finished = cs.State.Terminated.FinishedAt.Time
			}
		}
	}
	if typ == "DELETED" {
		if e := w.ends[uid]; e != nil {
			e.gone, e.end = time.Now(), true
		}
		if w.live[p.Name].uid == uid {
			delete(w.live, p.Name)
		}
	} else {
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		img := ""
		if len(p.Spec.Containers) > 0 {
			img = p.Spec.Containers[0].Image
		}
		w.live[p.Name] = watchedPod{uid: uid, image: img, hash: p.Labels["controller-revision-hash"], available: ready && p.DeletionTimestamp == nil}
	}
	if w.counting {
		up := 0
		for _, lp := range w.live {
			if lp.available {
				up++
			}
		}
		w.worst = max(w.worst, w.want-up)
	}
}

// steady waits until all want gateways are available, then starts counting
// the unavailable ones, and returns the uids of the pods it saw.
func (w *podWatch) steady(t *testing.T) map[string]bool {
	t.Helper()
	uids := map[string]bool{}
	utils.Eventually(t, 2*time.Minute, "gateway pods in the watch", func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		up := 0
		for _, p := range w.live {
			if p.available {
				up++
			}
		}
		if up != w.want || len(w.live) != w.want {
			return fmt.Errorf("%d of %d gateway pods available (%d seen)", up, w.want, len(w.live))
		}
		for _, p := range w.live {
			uids[p.uid] = true
		}
		w.counting = true
		return nil
	})
	return uids
}

// replaced waits until every pod in old is gone and want new pods are
// available with the wanted template (image, when not empty), and asserts
// that each old pod honoured its preStop and grace period.
func (w *podWatch) replaced(t *testing.T, old map[string]bool, image string, timeout time.Duration) {
	t.Helper()
	utils.Eventually(t, timeout, "every gateway pod replaced", func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		for uid := range old {
			if e := w.ends[uid]; e == nil || !e.end {
				return fmt.Errorf("old pod %s not gone yet", uid)
			}
		}
		up := 0
		for name, p := range w.live {
			if old[p.uid] {
				return fmt.Errorf("%s is still the old pod", name)
			}
			if image != "" && p.image != image {
				return fmt.Errorf("%s runs %s", name, p.image)
			}
			if p.available {
				up++
			}
		}
		if up != w.want {
			return fmt.Errorf("%d of %d new gateways available", up, w.want)
		}
		return nil
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	for uid := range old {
		e := w.ends[uid]
		if !e.drained {
			t.Errorf("%s was deleted without the operator's drain (no drain-started annotation)", e.name)
		}
		switch {
		case !e.deletionSeen:
			t.Errorf("%s (%s) went without a graceful deletion", e.name, uid)
		case e.grace != gatewayGrace:
			t.Errorf("%s was deleted with grace %ds, want %ds (drain.timeout + 10s)", e.name, e.grace, gatewayGrace)
		case e.finished.IsZero():
			t.Errorf("%s: the kubelet never reported its gateway container terminated", e.name)
		default:
			// Timestamps are whole seconds: a second of slack each way.
			ran := e.finished.Sub(e.requested)
			if ran < preStopSleep-time.Second {
				t.Errorf("%s: its container ended %s after the deletion, before the %s preStop sleep", e.name, ran, preStopSleep)
			}
			if gone := e.gone.Sub(e.requested); gone > time.Duration(e.grace+5)*time.Second {
				t.Errorf("%s: gone %s after the deletion, past its %ds grace period", e.name, gone, e.grace)
			}
			t.Logf("%s: container ended %s after the deletion, pod gone after %s (grace %ds)", e.name, ran.Round(time.Second), e.gone.Sub(e.requested).Round(time.Second), e.grace)
		}
	}
	t.Logf("at most %d of %d gateways unavailable", w.worst, w.want)
	if w.worst > 1 {
		t.Errorf("%d gateways unavailable at once, drain.maxUnavailable is 1", w.worst)
	}
}

// gatewayBase is how clients reach the gateway Service whichever pod is
// behind it: its ClusterIP from the host where that routes (the local
// cluster's kube-proxy), else a fresh port-forward to the Service per dial
// (kind), which picks a Ready pod each time.
func gatewayBase(t *testing.T) func() (string, func(), error) {
	ip := strings.TrimSpace(utils.Kubectl().Must(t, "-n", appNS, "get", "svc", cluster+"-gateway", "-o", "jsonpath={.spec.clusterIP}"))
	direct := "http://" + ip + ":80"
	hc := &http.Client{Timeout: 3 * time.Second}
	if resp, err := hc.Get(direct + "/readyz"); err == nil {
		resp.Body.Close()
		t.Logf("clients reach the gateway Service at its ClusterIP %s", ip)
		return func() (string, func(), error) { return direct, func() {}, nil }
	}
	t.Logf("the ClusterIP %s does not route from here: one port-forward per dial", ip)
	return func() (string, func(), error) {
		addr, stop, err := utils.StartPortForward(appNS, "svc/"+cluster+"-gateway", 80)
		if err != nil {
			return "", nil, err
		}
		return "http://" + addr, stop, nil
	}
}

// rollClient is one live client that follows the contract: on reconnect it
// waits after_ms, reconnects when the server closes (1001), and a receiver
// then syncs its conversation from the last seq it holds. A sender keeps one
// message in flight; only acked messages count.
type rollClient struct {
	api    *tc.API
	conv   string
	sender bool
	ws     *tc.WS
	unfwd  func()

	mu         sync.Mutex
	acked, got map[int64]bool
	reconnects int
	badCloses  []string
	errors     int
}

func (c *rollClient) dial(ctx context.Context, base func() (string, func(), error)) bool {
	for ctx.Err() == nil {
		b, stop, err := base()
		if err == nil {
			w, err := tc.TryDialWS(wsURL(b), c.api.Token)
			if err == nil {
				if _, ok := w.Wait("hello", 10*time.Second); ok {
					if c.unfwd != nil {
						c.unfwd()
					}
					c.ws, c.unfwd = w, stop
					return true
				}
				w.Close()
			}
			stop()
		}
		// A draining gateway answers 503 until its endpoint goes: retry.
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
	return false
}

// contiguous is the highest seq n such that 1..n have all arrived.
func (c *rollClient) contiguous() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := int64(0)
	for c.got[n+1] {
		n++
	}
	return n
}

func (c *rollClient) sync(after int64) {
	_ = c.ws.Send("sync", map[string]any{"conversation_id": c.conv, "after_seq": after, "limit": 100})
}

func (c *rollClient) run(ctx context.Context, base func() (string, func(), error), stopSending <-chan struct{}) {
	defer func() {
		if c.ws != nil {
			c.ws.Close()
		}
		if c.unfwd != nil {
			c.unfwd()
		}
	}()
	var inFlight string
	var sentAt time.Time
	n, announced, afterMS := 0, false, 0
	for ctx.Err() == nil {
		if c.sender && inFlight == "" {
			select {
			case <-stopSending:
			default:
				n++
				inFlight, sentAt = fmt.Sprintf("%s-%d", c.conv, n), time.Now()
				_ = c.ws.Send("send", map[string]any{"client_msg_id": inFlight, "conversation_id": c.conv, "content": inFlight})
			}
		}
		f, ok := c.ws.Wait("", 200*time.Millisecond)
		if ok {
			switch f.Type {
			case "ack":
				var ack struct {
					ClientMsgID string  `json:"client_msg_id"`
					Message     message `json:"message"`
				}
				if json.Unmarshal(f.Data, &ack) == nil && ack.ClientMsgID == inFlight {
					c.mu.Lock()
					c.acked[ack.Message.Seq] = true
					c.mu.Unlock()
					inFlight = ""
					time.Sleep(50 * time.Millisecond)
				}
			case "error":
				c.mu.Lock()
				c.errors++
				c.mu.Unlock()
				inFlight = ""
			case "message":
				var m message
				if !c.sender && json.Unmarshal(f.Data, &m) == nil && m.ConversationID == c.conv {
					c.mu.Lock()
					c.got[m.Seq] = true
					c.mu.Unlock()
				}
			case "sync":
				var s struct {
					Messages []message `json:"messages"`
					HasMore  bool      `json:"has_more"`
				}
				if json.Unmarshal(f.Data, &s) == nil {
					c.mu.Lock()
					for _, m := range s.Messages {
						c.got[m.Seq] = true
					}
					c.mu.Unlock()
					if s.HasMore && len(s.Messages) > 0 {
						c.sync(s.Messages[len(s.Messages)-1].Seq)
					}
				}
			case "resync":
				c.sync(c.contiguous())
			case "reconnect":
				var r struct {
					AfterMS int `json:"after_ms"`
				}
				_ = json.Unmarshal(f.Data, &r)
				announced, afterMS = true, r.AfterMS
				c.mu.Lock()
				c.reconnects++
				c.mu.Unlock()
			}
			continue
		}
		if inFlight != "" && time.Since(sentAt) > 15*time.Second {
			inFlight = "" // never acked: it does not count
		}
		code, closed := c.ws.Closed(time.Millisecond)
		if !closed {
			continue
		}
		if !announced || code != 1001 {
			c.mu.Lock()
			c.badCloses = append(c.badCloses, fmt.Sprintf("closed with %d, reconnect frame first: %v", code, announced))
			c.mu.Unlock()
		}
		inFlight, announced = "", false
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(afterMS) * time.Millisecond):
		}
		if !c.dial(ctx, base) {
			return
		}
		if !c.sender {
			c.sync(c.contiguous())
		}
	}
}

// 5. The roll on the real kubelet: a changed gateway image tag with live
// clients sending through the gateway Service. Every gateway pod is
// replaced; every client gets reconnect before a 1001 close; nothing acked
// is lost (unique (conversation_id, seq), by push or sync); never more than
// drain.maxUnavailable gateways are down; the pods' preStop and grace
// period are honoured; the ChatCluster returns to Running with
// GatewayRolloutComplete=True.
func testRoll(t *testing.T) {
	k := utils.Kubectl()
	const gateways, pairs = 3, 6
	watch := watchGateways(t, gateways)
	old := watch.steady(t)

	base := gatewayBase(t)
	b, stop, err := base()
	if err != nil {
		t.Fatal(err)
	}
	var clients []*rollClient
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < pairs; i++ {
		a, r := tc.Register(t, b, uniq("ra")), tc.Register(t, b, uniq("rb"))
		var c conversation
		a.Must(t, http.MethodPost, "/v1/conversations/direct", map[string]string{"user_id": r.User.ID}, &c)
		for _, u := range []*tc.API{a, r} {
			cl := &rollClient{api: u, conv: c.ID, sender: u == a, acked: map[int64]bool{}, got: map[int64]bool{}}
			if !cl.dial(ctx, base) {
				t.Fatal("dial")
			}
			clients = append(clients, cl)
		}
	}
	stop()
	stopSending := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.run(ctx, base, stopSending)
		}()
	}
	time.Sleep(3 * time.Second)

	start := time.Now()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"gateway": map[string]any{"image": gochatRollImage}}})
	k.Must(t, "-n", appNS, "patch", "chat", cluster, "--type=merge", "-p", string(patch))
	watch.replaced(t, old, gochatRollImage, 5*time.Minute)
	waitRolled(t)
	t.Logf("roll of %d gateways done in %s", gateways, time.Since(start).Round(time.Second))

	// Keep sending on the new gateways a little, then stop and let the last
	// messages arrive.
	time.Sleep(3 * time.Second)
	close(stopSending)
	time.Sleep(2 * time.Second)
	lostIn := func() (acked, lost int) {
		for i := 0; i < len(clients); i += 2 {
			s, r := clients[i], clients[i+1]
			s.mu.Lock()
			r.mu.Lock()
			for seq := range s.acked {
				acked++
				if !r.got[seq] {
					lost++
				}
			}
			r.mu.Unlock()
			s.mu.Unlock()
		}
		return acked, lost
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, l := lostIn(); l > 0 && time.Now().Before(deadline); _, l = lostIn() {
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	acked, lost := lostIn()
	reconnects, errs := 0, 0
	for i, c := range clients {
		reconnects += c.reconnects
		errs += c.errors
		for _, bc := range c.badCloses {
			t.Errorf("client %d: %s", i, bc)
		}
		if c.reconnects == 0 {
			t.Errorf("client %d got no reconnect frame over a roll of every gateway", i)
		}
	}
	t.Logf("%d clients, %d messages acked, %d lost; %d reconnect frames; %d error frames", len(clients), acked, lost, reconnects, errs)
	if acked == 0 {
		t.Fatal("nothing was acked during the roll")
	}
	if lost != 0 {
		t.Errorf("%d of %d acked messages never reached their receiver", lost, acked)
	}
}

// waitRolled waits for the ChatCluster to be Running with
// GatewayRolloutComplete=True.
func waitRolled(t *testing.T) {
	t.Helper()
	utils.Eventually(t, 3*time.Minute, "Running with GatewayRolloutComplete=True", func() error {
		out := utils.Kubectl().Must(t, "-n", appNS, "get", "chat", cluster, "-o",
			`jsonpath={.status.phase}{" "}{.status.conditions[?(@.type=="GatewayRolloutComplete")].status}`)
		if strings.TrimSpace(out) != "Running True" {
			return fmt.Errorf("phase and GatewayRolloutComplete: %q", out)
		}
		return nil
	})
}
