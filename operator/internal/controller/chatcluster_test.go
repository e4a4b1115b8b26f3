package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

var bg = context.Background()

const image = "ghcr.io/gochat/gochat:0.1.0"

func i32(v int32) *int32 { return &v }

// newCluster is a valid ChatCluster on the test's Kafka broker and Redis.
func newCluster(ns, name string) *chatv1.ChatCluster {
	return &chatv1.ChatCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: chatv1.ChatClusterSpec{
			Image:   image,
			Gateway: chatv1.GatewaySpec{Replicas: i32(2)},
			Logic:   chatv1.ComponentSpec{Replicas: i32(2)},
			Repo:    chatv1.ComponentSpec{Replicas: i32(1)},
			Task:    chatv1.ComponentSpec{Replicas: i32(1)},
			Kafka:   chatv1.KafkaSpec{BootstrapServers: []string{kafkaAddr}, ReplicationFactor: 1, Partitions: 3, Retention: "24h"},
			Redis:   chatv1.RedisSpec{Address: "127.0.0.1:6379"},
			MySQL: chatv1.MySQLSpec{DSNSecretRef: corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "mysql"}, Key: "dsn"}},
		},
	}
}

func createSecret(t *testing.T, ns, name string, data map[string]string) {
	t.Helper()
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
	if err := k8s.Create(bg, s); err != nil {
		t.Fatal(err)
	}
}

func get[T client.Object](t *testing.T, ns, name string, obj T) T {
	t.Helper()
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatalf("get %T %s: %v", obj, name, err)
	}
	return obj
}

// edit changes an object as a person would, retrying on conflicts with the controllers.
func edit[T client.Object](t *testing.T, ns, name string, obj T, change func(T)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
			return err
		}
		change(obj)
		return k8s.Update(bg, obj)
	})
	if err != nil {
		t.Fatalf("edit %s: %v", name, err)
	}
}

func getCluster(t *testing.T, ns, name string) *chatv1.ChatCluster {
	return get(t, ns, name, &chatv1.ChatCluster{})
}

// setup makes a namespace with the MySQL Secret (the test MariaDB, which the
// operator probes), starts a manager and creates a cluster.
func setup(t *testing.T, mutate func(*chatv1.ChatCluster), opts ...func(*controller.Reconciler)) (string, *chatv1.ChatCluster, func()) {
	t.Helper()
	ns := newNamespace(t)
	createSecret(t, ns, "mysql", map[string]string{"dsn": tc.MySQLServerDSN()})
	stop := startManager(t, ns, opts...)
	cc := newCluster(ns, "demo")
	if mutate != nil {
		mutate(cc)
	}
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	return ns, cc, stop
}

func container(t *testing.T, spec corev1.PodSpec) corev1.Container {
	t.Helper()
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	return spec.Containers[0]
}

func secretEnv(c corev1.Container, name string) *corev1.SecretKeySelector {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil {
			return e.ValueFrom.SecretKeyRef
		}
	}
	return nil
}

func ownedBy(t *testing.T, obj client.Object, cc *chatv1.ChatCluster) {
	t.Helper()
	refs := obj.GetOwnerReferences()
	if len(refs) != 1 || refs[0].UID != cc.UID || refs[0].Controller == nil || !*refs[0].Controller {
		t.Fatalf("%s %s owner references %+v", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), refs)
	}
}

func TestCreate(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	cc = getCluster(t, ns, "demo")
	type object struct {
		name string
		obj  client.Object
	}
	created := func(objs ...object) func() error {
		return func() error {
			for _, o := range objs {
				if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: o.name}, o.obj); err != nil {
					return fmt.Errorf("%T %s: %w", o.obj, o.name, err)
				}
				ownedBy(t, o.obj, cc)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, "every object but the workloads created", created(
		object{"demo-config", &corev1.ConfigMap{}}, object{"demo-gochat", &corev1.ServiceAccount{}}, object{"demo-jwt", &corev1.Secret{}},
		object{"demo-gateway", &corev1.Service{}}, object{"demo-gateway-pods", &corev1.Service{}}, object{"demo-logic", &corev1.Service{}}, object{"demo-repo", &corev1.Service{}},
		object{resources.MigrationJobName(cc), &batchv1.Job{}},
		object{"demo-gateway", &policyv1.PodDisruptionBudget{}}, object{"demo-logic", &policyv1.PodDisruptionBudget{}}, object{"demo-repo", &policyv1.PodDisruptionBudget{}}, object{"demo-task", &policyv1.PodDisruptionBudget{}},
	))
	// Every workload waits for the first migration.
	for _, o := range []object{{"demo-logic", &appsv1.Deployment{}}, {"demo-task", &appsv1.Deployment{}}, {"demo-repo", &appsv1.Deployment{}}, {"demo-gateway", &appsv1.StatefulSet{}}} {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: o.name}, o.obj); !apierrors.IsNotFound(err) {
			t.Fatalf("%T %s exists before the migration ran: %v", o.obj, o.name, err)
		}
	}
	passMigration(t, ns)
	eventually(t, 30*time.Second, "the workloads created once migrated", created(
		object{"demo-logic", &appsv1.Deployment{}}, object{"demo-task", &appsv1.Deployment{}}, object{"demo-repo", &appsv1.Deployment{}}, object{"demo-gateway", &appsv1.StatefulSet{}}))

	cm := get(t, ns, "demo-config", &corev1.ConfigMap{})
	for k, v := range cm.Data {
		if strings.Contains(v, "s3cret") {
			t.Fatalf("a secret reached the ConfigMap: %s", k)
		}
	}
	if cm.Data["GOCHAT_KAFKA_BROKERS"] != kafkaAddr || cm.Data["GOCHAT_KAFKA_TOPIC_PREFIX"] != ns+".demo" || cm.Data["GOCHAT_KAFKA_ENSURE_TOPICS"] != "false" {
		t.Fatalf("config %v", cm.Data)
	}
	sa := get(t, ns, "demo-gochat", &corev1.ServiceAccount{})
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Fatal("the pods' service account must not mount a token")
	}
	jwt := get(t, ns, "demo-jwt", &corev1.Secret{})
	if len(jwt.Data["secret"]) < 32 {
		t.Fatalf("generated jwt secret has %d bytes", len(jwt.Data["secret"]))
	}

	tests := []struct {
		name, args string
		spec       corev1.PodSpec
		secrets    map[string]string // env var -> secret name/key
	}{
		{"logic", "logic", get(t, ns, "demo-logic", &appsv1.Deployment{}).Spec.Template.Spec, map[string]string{"GOCHAT_JWT_SECRET": "demo-jwt/secret"}},
		{"task", "task", get(t, ns, "demo-task", &appsv1.Deployment{}).Spec.Template.Spec, nil},
		{"gateway", "gateway", get(t, ns, "demo-gateway", &appsv1.StatefulSet{}).Spec.Template.Spec, map[string]string{"GOCHAT_JWT_SECRET": "demo-jwt/secret"}},
		{"migrate", "migrate", get(t, ns, resources.MigrationJobName(cc), &batchv1.Job{}).Spec.Template.Spec, map[string]string{"GOCHAT_MYSQL_DSN": "mysql/dsn"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := container(t, tt.spec)
			if c.Image != image || strings.Join(c.Args, " ") != tt.args {
				t.Fatalf("image %s args %v", c.Image, c.Args)
			}
			if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef.Name != "demo-config" {
				t.Fatalf("envFrom %+v", c.EnvFrom)
			}
			for env, want := range tt.secrets {
				ref := secretEnv(c, env)
				if ref == nil || ref.Name+"/"+ref.Key != want {
					t.Fatalf("%s from %+v, want %s", env, ref, want)
				}
			}
			if tt.spec.ServiceAccountName != "demo-gochat" {
				t.Fatalf("service account %q", tt.spec.ServiceAccountName)
			}
		})
	}
	sts := get(t, ns, "demo-gateway", &appsv1.StatefulSet{})
	if sts.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType || *sts.Spec.Replicas != 2 {
		t.Fatalf("gateway statefulset %+v replicas %d", sts.Spec.UpdateStrategy, *sts.Spec.Replicas)
	}
	eventually(t, 10*time.Second, "events recorded", func() error {
		evs, err := kubernetes.NewForConfigOrDie(cfg).EventsV1().Events(ns).List(bg, metav1.ListOptions{})
		if err != nil {
			return err
		}
		reasons := map[string]bool{}
		for _, e := range evs.Items {
			reasons[e.Reason] = true
			if strings.Contains(e.Note, "s3cret") {
				return fmt.Errorf("a secret reached an event: %s", e.Note)
			}
		}
		for _, want := range []string{"Created", "JWTSecretGenerated", "MigrationStarted", "TopicCreated"} {
			if !reasons[want] {
				return fmt.Errorf("no %s event among %v", want, reasons)
			}
		}
		return nil
	})
}

// playKubelet marks every pod of a component running and ready (or, for
// the migration, succeeded), as a kubelet would.
func playKubelet(t *testing.T, ns, component string) {
	t.Helper()
	var pods corev1.PodList
	if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": component}); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		now := metav1.Now()
		if component == resources.Migrate {
			p.Status.Phase = corev1.PodSucceeded
		} else {
			p.Status.Phase = corev1.PodRunning
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
		}
		p.Status.PodIP = fmt.Sprintf("10.0.0.%d", i+10)
		p.Status.StartTime = &now
		// A pod may be replaced or updated by its controller meanwhile: the
		// caller plays again until what it waits for holds.
		if err := k8s.Status().Update(bg, p); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
}

func waitPods(t *testing.T, ns, component string, n int) {
	t.Helper()
	eventually(t, 30*time.Second, fmt.Sprintf("%d %s pods", n, component), func() error {
		var pods corev1.PodList
		if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": component}); err != nil {
			return err
		}
		if len(pods.Items) < n {
			return fmt.Errorf("%d pods", len(pods.Items))
		}
		return nil
	})
}

func condition(cc *chatv1.ChatCluster, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(cc.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// bringUp plays the kubelet until the cluster is Running.
func bringUp(t *testing.T, ns string) *chatv1.ChatCluster {
	t.Helper()
	passMigration(t, ns)
	var cc *chatv1.ChatCluster
	eventually(t, 60*time.Second, "phase Running", func() error {
		for _, c := range []string{resources.Logic, resources.Repo, resources.Task, resources.Gateway} {
			playKubelet(t, ns, c)
		}
		cc = getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseRunning {
			return fmt.Errorf("phase %s, ready: %+v", cc.Status.Phase, condition(cc, chatv1.ConditionReady))
		}
		return nil
	})
	return cc
}

func TestStatus(t *testing.T) {
	ns, _, _ := setup(t, nil)
	eventually(t, 30*time.Second, "provisioning while nothing is ready", func() error {
		cc := getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseProvisioning {
			return fmt.Errorf("phase %q", cc.Status.Phase)
		}
		if c := condition(cc, chatv1.ConditionDatabaseMigrated); c.Status != metav1.ConditionFalse || c.Reason != "Migrating" {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		if c := condition(cc, chatv1.ConditionKafkaTopicsReady); c.Status != metav1.ConditionTrue {
			return fmt.Errorf("KafkaTopicsReady %+v", c)
		}
		if c := condition(cc, chatv1.ConditionRedisReachable); c.Status != metav1.ConditionTrue {
			return fmt.Errorf("RedisReachable %+v", c)
		}
		return nil
	})
	cc := bringUp(t, ns)
	for _, typ := range []string{chatv1.ConditionReady, chatv1.ConditionKafkaTopicsReady, chatv1.ConditionDatabaseMigrated, chatv1.ConditionRedisReachable, chatv1.ConditionGatewayRolloutComplete} {
		if c := condition(cc, typ); c.Status != metav1.ConditionTrue || c.ObservedGeneration != cc.Generation {
			t.Fatalf("%s = %+v", typ, c)
		}
	}
	if cc.Status.Gateway.ReadyReplicas != 2 || cc.Status.Logic.ReadyReplicas != 2 || cc.Status.GatewaysReady != "2/2" ||
		cc.Status.Endpoint != "ws://demo-gateway."+ns+".svc/v1/ws" || cc.Status.MigratedImage != image ||
		len(cc.Status.Kafka.Topics) != 2 || cc.Status.ObservedGeneration != cc.Generation {
		t.Fatalf("status %+v", cc.Status)
	}
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-repo"}, &appsv1.Deployment{}); err != nil {
		t.Fatalf("repo deployment after the migration: %v", err)
	}

	// kubectl get chat: the printer columns, through the Table API.
	table := chatTable(t, ns)
	var cols, wide []string
	for _, c := range table.ColumnDefinitions {
		if c.Priority == 0 {
			cols = append(cols, c.Name)
		} else {
			wide = append(wide, c.Name)
		}
	}
	if strings.Join(cols, ",") != "Name,Phase,Gateways,Sessions,Image,Age" || strings.Join(wide, ",") != "Updated,Draining" {
		t.Fatalf("columns %v, with -o wide %v", cols, wide)
	}
	row := table.Rows[0].Cells
	if row[0] != "demo" || row[1] != "Running" || row[2] != "2/2" || row[3] != float64(0) || row[4] != image {
		t.Fatalf("row %v", row)
	}

	// A new image: every workload waits for its migration, then the
	// gateways are drained and replaced (no admin client here, so each
	// drained pod waits out its 2s deadline).
	patch := client.MergeFrom(cc.DeepCopy())
	cc.Spec.Image = "ghcr.io/gochat/gochat:0.2.0"
	cc.Spec.Gateway.Drain.Timeout = &metav1.Duration{Duration: 2 * time.Second}
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "upgrading", func() error {
		cc = getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseUpgrading {
			return fmt.Errorf("phase %s", cc.Status.Phase)
		}
		return nil
	})
	assertImages(t, ns, image)
	passMigration(t, ns)
	eventually(t, 30*time.Second, "every workload on the new image once migrated", func() error {
		return workloadImages(t, ns, "ghcr.io/gochat/gochat:0.2.0")
	})
	rollWithFakeKubelet(t, ns, "ghcr.io/gochat/gochat:0.2.0")
	// No gateway answered (no admin client, no processes): each was removed
	// only at its deadline.
	evs := &eventsv1.EventList{}
	if err := k8s.List(bg, evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range evs.Items {
		count[e.Reason]++
	}
	if count["DrainStarted"] < 2 || count["DrainTimedOut"] < 2 || count["GatewayReplaced"] < 2 || count["DrainCompleted"] != 0 {
		t.Fatalf("events %v: want every gateway drained, timed out and replaced", count)
	}
}

// rollWithFakeKubelet plays the kubelet until every gateway pod runs image
// and the cluster is Running again with GatewayRolloutComplete=True.
func rollWithFakeKubelet(t *testing.T, ns, image string) {
	t.Helper()
	eventually(t, 90*time.Second, "gateways replaced, Running again", func() error {
		for _, c := range []string{resources.Logic, resources.Repo, resources.Task, resources.Gateway} {
			playKubelet(t, ns, c)
		}
		var pods corev1.PodList
		if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": resources.Gateway}); err != nil {
			return err
		}
		for _, p := range pods.Items {
			if c := container(t, p.Spec); c.Image != image {
				return fmt.Errorf("pod %s on %s", p.Name, c.Image)
			}
		}
		cc := getCluster(t, ns, "demo")
		if c := condition(cc, chatv1.ConditionGatewayRolloutComplete); c.Status != metav1.ConditionTrue || cc.Status.Phase != chatv1.PhaseRunning || len(cc.Status.Gateway.Draining) != 0 {
			return fmt.Errorf("phase %s, GatewayRolloutComplete %+v, draining %v", cc.Status.Phase, c, cc.Status.Gateway.Draining)
		}
		return nil
	})
}

func TestUpdate(t *testing.T) {
	ns, _, _ := setup(t, nil)
	passMigration(t, ns)
	eventually(t, 30*time.Second, "logic deployment", func() error {
		return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{})
	})
	cc := getCluster(t, ns, "demo")
	patch := client.MergeFrom(cc.DeepCopy())
	cc.Spec.Logic.Replicas = i32(4)
	cc.Spec.Redis.Address = "redis.data:6380"
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "spec change applied", func() error {
		d := get(t, ns, "demo-logic", &appsv1.Deployment{})
		cm := get(t, ns, "demo-config", &corev1.ConfigMap{})
		if *d.Spec.Replicas != 4 || cm.Data["GOCHAT_REDIS_ADDR"] != "redis.data:6380" {
			return fmt.Errorf("replicas %d redis %s", *d.Spec.Replicas, cm.Data["GOCHAT_REDIS_ADDR"])
		}
		return nil
	})

	// Edits by hand are put back.
	edit(t, ns, "demo-logic", &appsv1.Deployment{}, func(d *appsv1.Deployment) {
		d.Spec.Replicas = i32(9)
		d.Spec.Template.Spec.Containers[0].Image = "evil:latest"
	})
	edit(t, ns, "demo-config", &corev1.ConfigMap{}, func(cm *corev1.ConfigMap) { cm.Data["GOCHAT_REDIS_ADDR"] = "elsewhere:1" })
	if err := k8s.Delete(bg, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-repo"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "hand edits reverted", func() error {
		d := get(t, ns, "demo-logic", &appsv1.Deployment{})
		cm := get(t, ns, "demo-config", &corev1.ConfigMap{})
		if *d.Spec.Replicas != 4 || d.Spec.Template.Spec.Containers[0].Image != image || cm.Data["GOCHAT_REDIS_ADDR"] != "redis.data:6380" {
			return fmt.Errorf("replicas %d image %s redis %s", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image, cm.Data["GOCHAT_REDIS_ADDR"])
		}
		return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-repo"}, &corev1.Service{})
	})

	// A changed Secret rolls the pods that read it, and only those.
	jobHash := func() (string, string) {
		l := get(t, ns, "demo-logic", &appsv1.Deployment{})
		g := get(t, ns, "demo-gateway", &appsv1.StatefulSet{})
		return l.Spec.Template.Annotations[resources.AnnotationSecretHash], g.Spec.Template.Annotations[resources.AnnotationSecretHash]
	}
	logicBefore, gwBefore := jobHash()
	taskBefore := get(t, ns, "demo-task", &appsv1.Deployment{}).Spec.Template.Annotations[resources.AnnotationSecretHash]
	edit(t, ns, "demo-jwt", &corev1.Secret{}, func(s *corev1.Secret) { s.Data["secret"] = []byte(strings.Repeat("n", 40)) })
	eventually(t, 30*time.Second, "pods reading the token secret roll", func() error {
		l, g := jobHash()
		if l == logicBefore || g == gwBefore {
			return fmt.Errorf("logic %s gateway %s unchanged", l, g)
		}
		return nil
	})
	if after := get(t, ns, "demo-task", &appsv1.Deployment{}).Spec.Template.Annotations[resources.AnnotationSecretHash]; after != taskBefore {
		t.Fatal("im-task rolled for a Secret it does not read")
	}
}

func TestSecretMissing(t *testing.T) {
	ns := newNamespace(t)
	startManager(t, ns)
	cc := newCluster(ns, "demo")
	if err := k8s.Create(bg, cc); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "pending on the missing secret", func() error {
		cc = getCluster(t, ns, "demo")
		c := condition(cc, chatv1.ConditionDatabaseMigrated)
		if cc.Status.Phase != chatv1.PhasePending || c.Reason != "SecretMissing" || !strings.Contains(c.Message, "secret mysql not found") {
			return fmt.Errorf("phase %s condition %+v", cc.Status.Phase, c)
		}
		return nil
	})
	createSecret(t, ns, "mysql", map[string]string{"dsn": "x:y@tcp(m:3306)/g"})
	eventually(t, 30*time.Second, "provisioning once the secret exists", func() error {
		cc = getCluster(t, ns, "demo")
		if cc.Status.Phase != chatv1.PhaseProvisioning {
			return fmt.Errorf("phase %s", cc.Status.Phase)
		}
		return nil
	})
}

func TestValidation(t *testing.T) {
	ns := newNamespace(t)
	tests := []struct {
		name   string
		mutate func(*chatv1.ChatCluster)
		want   string
	}{
		{"negative gateway replicas", func(c *chatv1.ChatCluster) { c.Spec.Gateway.Replicas = i32(-1) }, "spec.gateway.replicas: Invalid value: -1"},
		{"negative logic replicas", func(c *chatv1.ChatCluster) { c.Spec.Logic.Replicas = i32(-3) }, "spec.logic.replicas"},
		{"no bootstrap servers", func(c *chatv1.ChatCluster) { c.Spec.Kafka.BootstrapServers = nil }, "spec.kafka.bootstrapServers"},
		{"bootstrap server without port", func(c *chatv1.ChatCluster) { c.Spec.Kafka.BootstrapServers = []string{"kafka"} }, "spec.kafka.bootstrapServers[0]"},
		{"bad retention", func(c *chatv1.ChatCluster) { c.Spec.Kafka.Retention = "a week" }, "spec.kafka.retention must be a duration"},
		{"retention too short", func(c *chatv1.ChatCluster) { c.Spec.Kafka.Retention = "10s" }, "at least 1m"},
		{"zero drain timeout", func(c *chatv1.ChatCluster) { c.Spec.Gateway.Drain.Timeout = &metav1.Duration{Duration: 0} }, "spec.gateway.drain.timeout must be a duration of at least 1s"},
		{"unset drain settings are defaulted", func(c *chatv1.ChatCluster) { c.Spec.Gateway.Drain = chatv1.DrainSpec{} }, ""},
		{"image too long", func(c *chatv1.ChatCluster) { c.Spec.Image = strings.Repeat("x", 513) }, "spec.image"},
		{"no redis address", func(c *chatv1.ChatCluster) { c.Spec.Redis.Address = "" }, "spec.redis.address"},
		{"zero partitions", func(c *chatv1.ChatCluster) { c.Spec.Kafka.Partitions = -2 }, "spec.kafka.partitions"},
		{"bad service type", func(c *chatv1.ChatCluster) { c.Spec.Gateway.Service.Type = "Magic" }, "spec.gateway.service.type"},
		{"webhook without secret", func(c *chatv1.ChatCluster) { c.Spec.Notifications.WebhookURL = "https://relay" }, "webhookSecretRef is required"},
		{"bad webhook url", func(c *chatv1.ChatCluster) { c.Spec.Notifications.WebhookURL = "ftp://relay" }, "spec.notifications.webhookURL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := newCluster(ns, "bad")
			tt.mutate(cc)
			err := k8s.Create(bg, cc)
			if tt.want == "" { // zero values are defaulted, not refused: the defaults are checked instead
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				got := getCluster(t, ns, "bad")
				if got.Spec.Gateway.Drain.MaxUnavailable != 1 || got.Spec.Gateway.Drain.DrainTimeout() != 5*time.Minute {
					t.Fatalf("defaults not applied: %+v", got.Spec.Gateway.Drain)
				}
				_ = k8s.Delete(bg, got)
				eventually(t, 10*time.Second, "deleted", func() error {
					if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "bad"}, &chatv1.ChatCluster{}); !apierrors.IsNotFound(err) {
						return errors.New("still there")
					}
					return nil
				})
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one about %q", err, tt.want)
			}
		})
	}
	// Explicit values the schema refuses, sent as raw JSON (Go zero values are omitted).
	raws := []struct{ name, patch, want string }{
		{"maxUnavailable 0", `{"spec":{"gateway":{"drain":{"maxUnavailable":0}}}}`, "maxUnavailable"},
		{"unparsable drain timeout", `{"spec":{"gateway":{"drain":{"timeout":"5 minutes"}}}}`, "spec.gateway.drain.timeout must be a duration"},
		{"replication factor 0", `{"spec":{"kafka":{"replicationFactor":0}}}`, "spec.kafka.replicationFactor"},
	}
	// The sample the docs point to is valid as it stands.
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "samples", "chat_v1alpha1_chatcluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var sample chatv1.ChatCluster
	if err := yaml.UnmarshalStrict(raw, &sample); err != nil {
		t.Fatalf("sample: %v", err)
	}
	sample.Namespace = ns
	if err := k8s.Create(bg, &sample); err != nil {
		t.Fatalf("the sample is refused: %v", err)
	}

	good := newCluster(ns, "good")
	if err := k8s.Create(bg, good); err != nil {
		t.Fatal(err)
	}
	for _, tt := range raws {
		t.Run(tt.name, func(t *testing.T) {
			err := k8s.Patch(bg, good, client.RawPatch(types.MergePatchType, []byte(tt.patch)))
			if err == nil || !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one about %q", err, tt.want)
			}
		})
	}
}

func TestScale(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	passMigration(t, ns)
	eventually(t, 30*time.Second, "gateway statefulset", func() error {
		return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-gateway"}, &appsv1.StatefulSet{})
	})
	scale := &autoscalingv1.Scale{}
	eventually(t, 30*time.Second, "scale has a selector", func() error {
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		if scale.Status.Selector != "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=demo,app.kubernetes.io/name=gochat" {
			return fmt.Errorf("selector %q", scale.Status.Selector)
		}
		return nil
	})
	if scale.Spec.Replicas != 2 {
		t.Fatalf("scale replicas %d", scale.Spec.Replicas)
	}
	// As kubectl scale does: retried when the operator wrote the status meanwhile.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil {
			return err
		}
		scale.Spec.Replicas = 5
		return k8s.SubResource("scale").Update(bg, cc, client.WithSubResourceBody(scale))
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "scaled to 5", func() error {
		if got := *getCluster(t, ns, "demo").Spec.Gateway.Replicas; got != 5 {
			return fmt.Errorf("spec replicas %d", got)
		}
		if got := *get(t, ns, "demo-gateway", &appsv1.StatefulSet{}).Spec.Replicas; got != 5 {
			return fmt.Errorf("statefulset replicas %d", got)
		}
		// status.replicas counts Ready gateways: TestScaleReportsObserved.
		if err := k8s.SubResource("scale").Get(bg, cc, scale); err != nil || scale.Spec.Replicas != 5 {
			return fmt.Errorf("scale spec %d %v", scale.Spec.Replicas, err)
		}
		return nil
	})
}

func kafkaTopics(t *testing.T) (kadm.TopicDetails, kadm.ResourceConfigs) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	topics, err := adm.ListTopics(bg)
	if err != nil {
		t.Fatal(err)
	}
	configs, err := adm.DescribeTopicConfigs(bg, topics.Names()...)
	if err != nil {
		t.Fatal(err)
	}
	return topics, configs
}

func retentionOf(configs kadm.ResourceConfigs, topic string) string {
	for _, rc := range configs {
		if rc.Name == topic {
			for _, c := range rc.Configs {
				if c.Key == "retention.ms" && c.Value != nil {
					return *c.Value
				}
			}
		}
	}
	return ""
}

func TestKafka(t *testing.T) {
	ns, _, _ := setup(t, nil)
	msgs := ns + ".demo.messages"
	eventually(t, 30*time.Second, "topics created", func() error {
		topics, configs := kafkaTopics(t)
		for _, name := range []string{msgs, ns + ".demo.events"} {
			d, ok := topics[name]
			if !ok {
				return fmt.Errorf("no topic %s", name)
			}
			if len(d.Partitions) != 3 || retentionOf(configs, name) != "86400000" {
				return fmt.Errorf("%s: %d partitions, retention %s", name, len(d.Partitions), retentionOf(configs, name))
			}
		}
		return nil
	})
	cc := getCluster(t, ns, "demo")
	patch := client.MergeFrom(cc.DeepCopy())
	cc.Spec.Kafka.Partitions = 6
	cc.Spec.Kafka.Retention = "48h"
	if err := k8s.Patch(bg, cc, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "partitions raised and retention changed", func() error {
		topics, configs := kafkaTopics(t)
		if n := len(topics[msgs].Partitions); n != 6 || retentionOf(configs, msgs) != "172800000" {
			return fmt.Errorf("%d partitions, retention %s", n, retentionOf(configs, msgs))
		}
		if p := getCluster(t, ns, "demo").Status.Kafka.Partitions; p != 6 {
			return fmt.Errorf("status partitions %d", p)
		}
		return nil
	})
	// Lowering is refused by the API server (TestTransitionRules): Kafka cannot.

	// A replication factor above the broker count and unreachable brokers are conditions, not crashes.
	cases := []struct {
		name   string
		mutate func(*chatv1.ChatCluster)
		reason string
	}{
		{"replication factor too high", func(c *chatv1.ChatCluster) { c.Spec.Kafka.ReplicationFactor = 3; c.Spec.Kafka.TopicPrefix = "rf3" }, "ReplicationFactorTooHigh"},
		{"brokers unreachable", func(c *chatv1.ChatCluster) { c.Spec.Kafka.BootstrapServers = []string{closedPort(t)} }, "BrokersUnreachable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := newCluster(ns, strings.ReplaceAll(tc.name, " ", "-"))
			tc.mutate(cc)
			if err := k8s.Create(bg, cc); err != nil {
				t.Fatal(err)
			}
			eventually(t, 60*time.Second, tc.reason, func() error {
				c := condition(getCluster(t, ns, cc.Name), chatv1.ConditionKafkaTopicsReady)
				if c.Status != metav1.ConditionFalse || c.Reason != tc.reason || c.Message == "" {
					return fmt.Errorf("condition %+v", c)
				}
				return nil
			})
		})
	}
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestDelete(t *testing.T) {
	for _, deleteTopics := range []bool{false, true} {
		t.Run(fmt.Sprintf("deleteTopicsOnDelete=%v", deleteTopics), func(t *testing.T) {
			ns, cc, _ := setup(t, func(c *chatv1.ChatCluster) {
				c.Spec.Kafka.DeleteTopicsOnDelete = deleteTopics
				c.Spec.Kafka.TopicPrefix = fmt.Sprintf("del-%v-%d", deleteTopics, time.Now().UnixNano())
			})
			topic := cc.Spec.Kafka.TopicPrefix + ".messages"
			passMigration(t, ns)
			eventually(t, 30*time.Second, "created", func() error {
				if topics, _ := kafkaTopics(t); !topics.Has(topic) {
					return errors.New("no topic yet")
				}
				return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &appsv1.Deployment{})
			})
			if err := k8s.Delete(bg, getCluster(t, ns, "demo")); err != nil {
				t.Fatal(err)
			}
			eventually(t, 60*time.Second, "cluster and owned objects gone", func() error {
				if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo"}, &chatv1.ChatCluster{}); !apierrors.IsNotFound(err) {
					return fmt.Errorf("cluster: %v", err)
				}
				for _, o := range []client.Object{&appsv1.Deployment{}, &corev1.ConfigMap{}, &appsv1.StatefulSet{}} {
					name := "demo-logic"
					if _, ok := o.(*corev1.ConfigMap); ok {
						name = "demo-config"
					} else if _, ok := o.(*appsv1.StatefulSet); ok {
						name = "demo-gateway"
					}
					if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, o); !apierrors.IsNotFound(err) {
						return fmt.Errorf("%T %s still there (%v)", o, name, err)
					}
				}
				return nil
			})
			if topics, _ := kafkaTopics(t); topics.Has(topic) == deleteTopics {
				t.Fatalf("topic %s exists: %v, with deleteTopicsOnDelete %v", topic, topics.Has(topic), deleteTopics)
			}
		})
	}
}

// TestRestart stops the operator in the middle of its first reconciles and
// starts another: it converges from whatever the first left.
func TestRestart(t *testing.T) {
	ns, _, stop := setup(t, nil)
	eventually(t, 30*time.Second, "first objects", func() error {
		return k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-config"}, &corev1.ConfigMap{})
	})
	stop()
	// Meanwhile, someone deletes things.
	_ = k8s.Delete(bg, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-logic"}})
	_ = k8s.Delete(bg, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "demo-config"}})
	startManager(t, ns)
	bringUp(t, ns)
	for _, name := range []string{"demo-logic", "demo-task", "demo-repo"} {
		get(t, ns, name, &appsv1.Deployment{})
	}
	get(t, ns, "demo-config", &corev1.ConfigMap{})
}

// chatTable is kubectl get chat in ns, through the Table API (the printer
// columns and a row per cluster).
func chatTable(t *testing.T, ns string) metav1.Table {
	t.Helper()
	rc, err := restClient()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rc.Get().AbsPath("/apis/chat.gochat.io/v1alpha1/namespaces/"+ns+"/chatclusters").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(bg)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	return table
}
