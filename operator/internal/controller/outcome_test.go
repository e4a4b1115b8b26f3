package controller_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

func allEvents(t *testing.T, ns string) []eventsv1.Event {
	t.Helper()
	var evs eventsv1.EventList
	if err := k8s.List(bg, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return evs.Items
}

// TestEventsNameTheirObjects: every object the operator creates has its own
// Event naming it (events.k8s.io related), and each topic its own: Events
// of one reason in one pass do not fold into one series that keeps only the
// first note.
func TestEventsNameTheirObjects(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	passMigration(t, ns) // the workloads wait for it
	type object struct{ kind, name string }
	want := []object{
		{"ConfigMap", "demo-config"}, {"ServiceAccount", "demo-gochat"},
		{"Service", "demo-gateway"}, {"Service", "demo-gateway-pods"}, {"Service", "demo-logic"}, {"Service", "demo-repo"},
		{"PodDisruptionBudget", "demo-gateway"}, {"PodDisruptionBudget", "demo-logic"}, {"PodDisruptionBudget", "demo-repo"}, {"PodDisruptionBudget", "demo-task"},
		{"Deployment", "demo-logic"}, {"Deployment", "demo-task"}, {"StatefulSet", "demo-gateway"},
	}
	topics := resources.Topics(cc)
	eventually(t, 30*time.Second, "an Event per created object and per topic", func() error {
		created := map[object]string{}
		topicNotes := map[string]bool{}
		for _, e := range allEvents(t, ns) {
			switch e.Reason {
			case "Created":
				if e.Related == nil {
					return fmt.Errorf("Created event %q names no related object", e.Note)
				}
				created[object{e.Related.Kind, e.Related.Name}] = e.Note
			case "TopicCreated":
				for _, topic := range topics {
					if strings.Contains(e.Note, topic+":") {
						topicNotes[topic] = true
					}
				}
			}
		}
		for _, o := range want {
			note, ok := created[o]
			if !ok {
				return fmt.Errorf("no Created event related to %s %s (have %d: %v)", o.kind, o.name, len(created), created)
			}
			if note != fmt.Sprintf("created %s %s", o.kind, o.name) {
				return fmt.Errorf("the Created event of %s %s says %q", o.kind, o.name, note)
			}
		}
		for _, topic := range topics {
			if !topicNotes[topic] {
				return fmt.Errorf("no TopicCreated event for %s", topic)
			}
		}
		return nil
	})
}

// errorSink records the errors the manager logs ("Reconciler error").
type errorSink struct {
	mu   sync.Mutex
	errs []string
}

func (s *errorSink) Init(logr.RuntimeInfo)                  {}
func (s *errorSink) Enabled(int) bool                       { return false }
func (s *errorSink) Info(int, string, ...any)               {}
func (s *errorSink) WithValues(...any) logr.LogSink         { return s }
func (s *errorSink) WithName(string) logr.LogSink           { return s }
func (s *errorSink) Error(err error, msg string, kv ...any) { s.add(fmt.Sprintf("%s: %v", msg, err)) }
func (s *errorSink) add(e string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, e)
}
func (s *errorSink) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.errs...)
}

// startManagerLogging runs a manager for ns whose log errors land in sink.
func startManagerLogging(t *testing.T, ns string, sink *errorSink, opts ...func(*controller.Reconciler)) {
	t.Helper()
	runManager(t, cfg, ns, func(o *ctrl.Options) { o.Logger = logr.New(sink) }, nil, opts...)
}

// TestStatusWritesSurviveConflicts: while something keeps changing the
// cluster's metadata (as kubectl label or another controller does), every
// status write is based on a stale read. The operator writes by patch,
// re-reads on a conflict, logs no reconcile error, and reports each phase
// transition exactly once, after it was written. The zero session count is
// written, not left out.
func TestStatusWritesSurviveConflicts(t *testing.T) {
	ns := newNamespace(t)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	sink := &errorSink{}
	startManagerLogging(t, ns, sink)
	if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
		t.Fatal(err)
	}
	// A label changes the resourceVersion but not the generation or the
	// annotations, so it causes conflicts without causing reconciles.
	stop := make(chan struct{})
	touched := make(chan int)
	go func() {
		n := 0
		defer func() { touched <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			patch := fmt.Sprintf(`{"metadata":{"labels":{"touched":"%d"}}}`, n)
			if err := k8s.Patch(bg, &chatv1.ChatCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo"}}, client.RawPatch(types.MergePatchType, []byte(patch))); err == nil {
				n++
			}
		}
	}()
	cc := bringUp(t, ns)
	close(stop)
	t.Logf("the cluster's metadata changed %d times while it came up", <-touched)

	if errs := sink.all(); len(errs) > 0 {
		t.Fatalf("%d reconcile error(s) logged, the first: %s", len(errs), errs[0])
	}
	phases := map[string]int{}
	for _, e := range allEvents(t, ns) {
		if strings.HasPrefix(e.Reason, "Phase") {
			n := int32(1)
			if e.Series != nil {
				n = e.Series.Count
			}
			phases[e.Reason+" ("+e.Note+")"] += int(n)
		}
	}
	want := map[string]int{"PhaseProvisioning (phase None -> Provisioning)": 1, "PhaseRunning (phase Provisioning -> Running)": 1}
	if fmt.Sprint(phases) != fmt.Sprint(want) {
		t.Fatalf("phase events %v, want each transition once: %v", phases, want)
	}

	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(chatv1.GroupVersion.WithKind("ChatCluster"))
	if err := k8s.Get(bg, client.ObjectKeyFromObject(cc), u); err != nil {
		t.Fatal(err)
	}
	if v, found, err := unstructured.NestedInt64(u.Object, "status", "sessions"); !found || err != nil || v != 0 {
		t.Fatalf("status.sessions %d found %v (%v): a zero count must be written", v, found, err)
	}
}

// TestReadyUpdatedScaling: gateways on an old revision that are Ready
// count as ready while they wait for the roll (Ready stays True, the phase
// is Upgrading, IMAGE shows what runs); scaling up is not an upgrade and
// never leaves Running.
func TestReadyUpdatedScaling(t *testing.T) {
	ns, _, _ := setup(t, nil)
	cc := bringUp(t, ns)
	if cc.Status.Image != image || cc.Status.Gateway.Image != image || cc.Status.Logic.Image != image {
		t.Fatalf("images %q, gateway %q, logic %q", cc.Status.Image, cc.Status.Gateway.Image, cc.Status.Logic.Image)
	}

	const next = "ghcr.io/gochat/gochat:0.2.0"
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) {
		c.Spec.Gateway.Image = next
		// The first gateway drains at once and stays Ready until its
		// deadline: long enough to look, short enough for the roll below.
		c.Spec.Gateway.Drain.Timeout = &metav1.Duration{Duration: 20 * time.Second}
	})
	seen := map[string]bool{}
	eventually(t, 30*time.Second, "upgrading, Ready with the outdated gateways", func() error {
		cc = getCluster(t, ns, "demo")
		roll, ready := condition(cc, chatv1.ConditionGatewayRolloutComplete), condition(cc, chatv1.ConditionReady)
		if st := fmt.Sprintf("%s %s %s %s", cc.Status.Phase, roll.Reason, ready.Reason, ready.Message); !seen[st] {
			seen[st] = true
			t.Logf("status: %s", st)
		}
		if cc.Status.ObservedGeneration != cc.Generation || roll.Status != metav1.ConditionFalse || cc.Status.Phase != chatv1.PhaseUpgrading {
			return fmt.Errorf("phase %s, GatewayRolloutComplete %+v", cc.Status.Phase, roll)
		}
		if ready.Status != metav1.ConditionTrue || ready.Reason != "Ready" {
			var pods corev1.PodList
			_ = k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": resources.Gateway})
			var desc []string
			for _, p := range pods.Items {
				desc = append(desc, fmt.Sprintf("%s rev=%s phase=%s conds=%v del=%v ann=%v", p.Name, p.Labels["controller-revision-hash"], p.Status.Phase, p.Status.Conditions, p.DeletionTimestamp, p.Annotations))
			}
			return fmt.Errorf("Ready %+v with every gateway Ready on the old revision; pods %v", ready, desc)
		}
		if cc.Status.Image != image || cc.Status.Gateway.Image != image {
			return fmt.Errorf("image %q, gateway %q: still the old one runs", cc.Status.Image, cc.Status.Gateway.Image)
		}
		return nil
	})
	if row := tableRow(t, ns); row[4] != image {
		t.Fatalf("IMAGE column %v mid-roll, want the running %s", row[4], image)
	}
	rollWithFakeKubelet(t, ns, next)
	cc = getCluster(t, ns, "demo")
	if cc.Status.Gateway.Image != next || cc.Status.Image != image+", "+next {
		t.Fatalf("after the roll: gateway %q, image %q", cc.Status.Gateway.Image, cc.Status.Image)
	}

	// Scale 2 -> 3, as kubectl scale or an HPA does.
	// A repeated Event is a series on the first one: compare the counts.
	count := func(e eventsv1.Event) int32 {
		if e.Series != nil {
			return e.Series.Count
		}
		return 1
	}
	before := map[string]int32{}
	for _, e := range allEvents(t, ns) {
		before[e.Name] = count(e)
	}
	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) { c.Spec.Gateway.Replicas = i32(3) })
	waitPods(t, ns, resources.Gateway, 3)
	eventually(t, 30*time.Second, "scaling reported while the new gateway starts", func() error {
		cc = getCluster(t, ns, "demo")
		ready := condition(cc, chatv1.ConditionReady)
		if cc.Status.Gateway.Replicas != 3 || cc.Status.Gateway.ReadyReplicas != 2 || ready.Reason != "Scaling" || cc.Status.Phase != chatv1.PhaseRunning {
			return fmt.Errorf("phase %s gateway %+v Ready %+v", cc.Status.Phase, cc.Status.Gateway, ready)
		}
		return nil
	})
	eventually(t, 30*time.Second, "3 of 3 Ready", func() error {
		playKubelet(t, ns, resources.Gateway)
		cc = getCluster(t, ns, "demo")
		if ready := condition(cc, chatv1.ConditionReady); cc.Status.GatewaysReady != "3/3" || ready.Reason != "Ready" {
			return fmt.Errorf("gateways %s Ready %+v", cc.Status.GatewaysReady, ready)
		}
		return nil
	})
	for _, e := range allEvents(t, ns) {
		if strings.HasPrefix(e.Reason, "Phase") && count(e) > before[e.Name] {
			t.Fatalf("scaling changed the phase: %s %q", e.Reason, e.Note)
		}
	}
	if cc.Status.Phase != chatv1.PhaseRunning {
		t.Fatalf("phase %s", cc.Status.Phase)
	}
}

// tableRow is the cluster's row of kubectl get chat (the Table API).
func tableRow(t *testing.T, ns string) []any {
	t.Helper()
	return chatTable(t, ns).Rows[0].Cells
}

// TestRefusedStepsReachTheCluster: an apply the API server refuses (an
// admission policy forbids the ConfigMap, a ResourceQuota has no room for
// it) and an object of the operator's
// name that another controller owns each become the Reconciled condition,
// a Warning event naming the object, and Ready false. Once the cause is
// gone, the backoff's next retry recovers.
func TestRefusedStepsReachTheCluster(t *testing.T) {
	t.Run("owned by another controller", func(t *testing.T) {
		ns := newNamespace(t)
		createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
		owner := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone-else"}}
		if err := k8s.Create(bg, owner); err != nil {
			t.Fatal(err)
		}
		yes := true
		foreign := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-repo", OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, Controller: &yes}}},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9}}},
		}
		if err := k8s.Create(bg, foreign); err != nil {
			t.Fatal(err)
		}
		startManager(t, ns)
		if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ns, "OwnedByOther", "Service", "demo-repo", "someone-else")
		// The other objects were still applied.
		passMigration(t, ns)
		eventually(t, 30*time.Second, "demo-logic applied beside the refusal", func() error {
			return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{})
		})
		if err := k8s.Delete(bg, foreign); err != nil {
			t.Fatal(err)
		}
		expectRecovered(t, ns)
	})

	t.Run("over quota", func(t *testing.T) {
		ns := newNamespace(t)
		createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
		none := corev1.ResourceList{"count/configmaps": resource.MustParse("0")}
		quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "no-configmaps"}, Spec: corev1.ResourceQuotaSpec{Hard: none}}
		if err := k8s.Create(bg, quota); err != nil {
			t.Fatal(err)
		}
		// What the quota controller (not run here) would record.
		quota.Status = corev1.ResourceQuotaStatus{Hard: none, Used: none}
		if err := k8s.Status().Update(bg, quota); err != nil {
			t.Fatal(err)
		}
		startManager(t, ns)
		if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ns, "QuotaExceeded", "ConfigMap", "demo-config", "exceeded quota: no-configmaps")
		if err := k8s.Delete(bg, quota); err != nil {
			t.Fatal(err)
		}
		expectRecovered(t, ns)
	})

	t.Run("forbidden by an admission policy", func(t *testing.T) {
		ns := newNamespace(t)
		createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
		name := "deny-demo-config-" + ns
		forbidden := metav1.StatusReasonForbidden
		policy := &admissionv1.ValidatingAdmissionPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: admissionv1.ValidatingAdmissionPolicySpec{
				MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{
					RuleWithOperations: admissionv1.RuleWithOperations{
						Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
						Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"configmaps"}},
					}}}},
				Validations: []admissionv1.Validation{{
					Expression: "object.metadata.name != 'demo-config'",
					Message:    "this namespace's policy forbids a ConfigMap named demo-config",
					Reason:     &forbidden,
				}},
			},
		}
		binding := &admissionv1.ValidatingAdmissionPolicyBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
				PolicyName:        name,
				ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
				MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
					MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
			},
		}
		for _, o := range []client.Object{policy, binding} {
			if err := k8s.Create(bg, o); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = k8s.Delete(bg, o) })
		}
		eventually(t, 30*time.Second, "the policy in force", func() error {
			err := k8s.Create(bg, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-config"}})
			if err == nil {
				_ = k8s.Delete(bg, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-config"}})
				return fmt.Errorf("a ConfigMap demo-config was accepted")
			}
			if !apierrors.IsForbidden(err) {
				return err
			}
			return nil
		})
		startManager(t, ns)
		if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
			t.Fatal(err)
		}
		expectRefused(t, ns, "Forbidden", "ConfigMap", "demo-config", "forbids a ConfigMap named demo-config")
		if err := k8s.Delete(bg, binding); err != nil {
			t.Fatal(err)
		}
		expectRecovered(t, ns)
	})
}

func expectRefused(t *testing.T, ns, reason, kind, name, says string) {
	t.Helper()
	eventually(t, 30*time.Second, reason+" on the cluster", func() error {
		cc := getCluster(t, ns, "demo")
		rec, ready := condition(cc, chatv1.ConditionReconciled), condition(cc, chatv1.ConditionReady)
		if rec.Status != metav1.ConditionFalse || rec.Reason != reason || !strings.Contains(rec.Message, name) || !strings.Contains(rec.Message, says) {
			return fmt.Errorf("Reconciled %+v", rec)
		}
		if ready.Status != metav1.ConditionFalse || ready.Reason != reason || cc.Status.Phase != chatv1.PhaseDegraded {
			return fmt.Errorf("phase %s Ready %+v", cc.Status.Phase, ready)
		}
		for _, e := range allEvents(t, ns) {
			if e.Type == corev1.EventTypeWarning && e.Reason == reason && e.Related != nil && e.Related.Kind == kind && e.Related.Name == name && strings.Contains(e.Note, says) {
				return nil
			}
		}
		return fmt.Errorf("no Warning %s event about %s %s", reason, kind, name)
	})
}

func expectRecovered(t *testing.T, ns string) {
	t.Helper()
	eventually(t, 60*time.Second, "Reconciled again once the cause is gone", func() error {
		if c := condition(getCluster(t, ns, "demo"), chatv1.ConditionReconciled); c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Reconciled %+v", c)
		}
		return nil
	})
}

// blackhole accepts connections and never answers, as a Kafka or Redis
// behind a dropped route does; it counts what it accepted.
func blackhole(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = &atomic.Int32{}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), accepted
}

// TestSlowDependenciesDoNotStallOthers: a cluster whose Kafka and Redis
// accept connections and never answer holds its reconcile for the whole I/O
// timeout (set long here); another cluster reconciles meanwhile. With one
// worker (MaxConcurrentReconciles 1, as before) the second waits behind the
// first and this fails.
func TestSlowDependenciesDoNotStallOthers(t *testing.T) {
	const ioTimeout = 20 * time.Second
	kafkaHole, kafkaCalls := blackhole(t)
	redisHole, redisCalls := blackhole(t)
	ns := newNamespace(t)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	startManager(t, ns, func(r *controller.Reconciler) { r.IOTimeout = ioTimeout })

	stuck := newCluster(ns, "stuck")
	stuck.Spec.Kafka.BootstrapServers = []string{kafkaHole}
	stuck.Spec.Redis.Address = redisHole
	if err := k8s.Create(bg, stuck); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the stuck cluster's reconcile waiting on its Kafka and Redis", func() error {
		if kafkaCalls.Load() == 0 || redisCalls.Load() == 0 {
			return fmt.Errorf("kafka %d redis %d connections", kafkaCalls.Load(), redisCalls.Load())
		}
		return nil
	})
	start := time.Now()
	if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*ioTimeout, "the other cluster reconciled", func() error {
		c := getCluster(t, ns, "demo")
		if k, r := condition(c, chatv1.ConditionKafkaTopicsReady), condition(c, chatv1.ConditionRedisReachable); k.Status != metav1.ConditionTrue || r.Status != metav1.ConditionTrue {
			return fmt.Errorf("KafkaTopicsReady %+v RedisReachable %+v", k, r)
		}
		return nil
	})
	took := time.Since(start)
	if got := getCluster(t, ns, "stuck"); got.Status.Phase != "" {
		t.Fatalf("the stuck cluster's first pass ended (phase %s) before the other cluster's status was written %s after its creation: it waited behind it", got.Status.Phase, took)
	}
	t.Logf("the other cluster's first status %s after its creation, while the stuck one waited on its I/O", took.Round(time.Millisecond))
	eventually(t, 3*ioTimeout, "the stuck cluster reports what it waits on", func() error {
		c := getCluster(t, ns, "stuck")
		k, r := condition(c, chatv1.ConditionKafkaTopicsReady), condition(c, chatv1.ConditionRedisReachable)
		if k.Reason != "BrokersUnreachable" || r.Reason != "Unreachable" || c.Status.Phase != chatv1.PhaseProvisioning {
			return fmt.Errorf("phase %s KafkaTopicsReady %+v RedisReachable %+v", c.Status.Phase, k, r)
		}
		return nil
	})
}

// TestScaleReportsObserved: the scale subresource's status.replicas is
// what runs Ready, not what the spec asks: an HPA and kubectl see a scale-up
// still in progress.
func TestScaleReportsObserved(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	passMigration(t, ns) // the gateways wait for it
	scale := &autoscalingv1.Scale{}
	eventually(t, 30*time.Second, "gateways asked for, none Ready", func() error {
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		if scale.Status.Selector == "" || scale.Spec.Replicas != 2 {
			return fmt.Errorf("scale %+v", scale)
		}
		if getCluster(t, ns, "demo").Status.ObservedGeneration == 0 {
			return fmt.Errorf("no status yet")
		}
		return nil
	})
	waitPods(t, ns, resources.Gateway, 2)
	if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil || scale.Status.Replicas != 0 {
		t.Fatalf("scale status.replicas %d with no gateway Ready (%v)", scale.Status.Replicas, err)
	}
	eventually(t, 30*time.Second, "scale status follows the Ready gateways", func() error {
		playKubelet(t, ns, resources.Gateway)
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		if scale.Status.Replicas != 2 {
			return fmt.Errorf("scale status.replicas %d", scale.Status.Replicas)
		}
		return nil
	})
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = 3
		return k8s.SubResource("scale").Update(bg, cc, client.WithSubResourceBody(scale))
	}); err != nil {
		t.Fatal(err)
	}
	waitPods(t, ns, resources.Gateway, 3)
	eventually(t, 30*time.Second, "spec 3, 2 Ready", func() error {
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		if scale.Spec.Replicas != 3 || scale.Status.Replicas != 2 {
			return fmt.Errorf("scale spec %d status %d", scale.Spec.Replicas, scale.Status.Replicas)
		}
		return nil
	})
	eventually(t, 30*time.Second, "3 Ready", func() error {
		playKubelet(t, ns, resources.Gateway)
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		if scale.Status.Replicas != 3 {
			return fmt.Errorf("scale status.replicas %d", scale.Status.Replicas)
		}
		return nil
	})
}
