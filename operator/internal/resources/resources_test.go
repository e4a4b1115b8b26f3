package resources

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

func i32(v int32) *int32 { return &v }

func cluster() *chatv1.ChatCluster {
	return &chatv1.ChatCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "chat", UID: "uid-1"},
		Spec: chatv1.ChatClusterSpec{
			Image:   "gochat:1",
			Gateway: chatv1.GatewaySpec{Replicas: i32(3), Service: chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Port: 80}, Drain: chatv1.DrainSpec{MaxUnavailable: 2}},
			Logic:   chatv1.ComponentSpec{Replicas: i32(2), Image: "gochat-logic:2"},
			Kafka:   chatv1.KafkaSpec{BootstrapServers: []string{"k1:9092", "k2:9092"}, Partitions: 12, ReplicationFactor: 3, Retention: "168h"},
			Redis:   chatv1.RedisSpec{Address: "redis:6379", PasswordSecretRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "redis"}, Key: "password"}},
			MySQL:   chatv1.MySQLSpec{DSNSecretRef: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "mysql"}, Key: "dsn"}},
		},
	}
}

func TestImageAndNames(t *testing.T) {
	cc := cluster()
	tests := []struct{ got, want string }{
		{Image(cc, Gateway), "gochat:1"},
		{Image(cc, Logic), "gochat-logic:2"},
		{Image(cc, Migrate), "gochat:1"},
		{TopicPrefix(cc), "chat.demo"},
		{strings.Join(Topics(cc), ","), "chat.demo.events,chat.demo.messages"},
		{GatewaySelector(cc), "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=demo,app.kubernetes.io/name=gochat"},
		{ConfigData(cc)["GOCHAT_REPO_ADDR"], "dns:///demo-repo.chat.svc:9002"},
		{ConfigData(cc)["GOCHAT_KAFKA_BROKERS"], "k1:9092,k2:9092"},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%d: got %q, want %q", i, tt.got, tt.want)
		}
	}
	cc.Spec.Kafka.TopicPrefix = "custom"
	if TopicPrefix(cc) != "custom" {
		t.Fatal("topicPrefix ignored")
	}
	if a, b := MigrationJobName(cc), MigrationJobName(&chatv1.ChatCluster{ObjectMeta: cc.ObjectMeta, Spec: chatv1.ChatClusterSpec{Image: "gochat:2"}}); a == b {
		t.Fatal("a new image must get a new migration Job")
	}
}

// Secrets reach containers only as secretKeyRef variables, and each
// component reads only the Secrets it needs.
func TestSecretsOnlyByReference(t *testing.T) {
	cc := cluster()
	cc.Spec.Notifications = chatv1.NotificationsSpec{WebhookURL: "https://relay", WebhookSecretRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "relay"}, Key: "k"}}
	in := Inputs{SecretHash: map[string]string{Logic: "h1"}, Images: map[string]string{Repo: "gochat:1"}}
	tests := []struct {
		component string
		wantEnv   []string
	}{
		{Gateway, []string{"GOCHAT_JWT_SECRET"}},
		{Logic, []string{"GOCHAT_JWT_SECRET"}},
		{Repo, []string{"GOCHAT_MYSQL_DSN", "GOCHAT_REDIS_PASSWORD"}},
		{Task, []string{"GOCHAT_WEBHOOK_SECRET"}},
		{Migrate, []string{"GOCHAT_MYSQL_DSN"}},
	}
	for _, tt := range tests {
		t.Run(tt.component, func(t *testing.T) {
			var c corev1.Container
			switch tt.component {
			case Gateway:
				c = GatewayStatefulSet(cc, in).Spec.Template.Spec.Containers[0]
			case Migrate:
				c = MigrationJob(cc, in).Spec.Template.Spec.Containers[0]
			default:
				c = Deployment(cc, tt.component, in).Spec.Template.Spec.Containers[0]
			}
			var got []string
			for _, e := range c.Env {
				if e.Value != "" && strings.Contains(e.Name, "SECRET") {
					t.Fatalf("%s has a literal value", e.Name)
				}
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					got = append(got, e.Name)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.wantEnv, ",") {
				t.Fatalf("secret env %v, want %v", got, tt.wantEnv)
			}
		})
	}
	for k, v := range ConfigData(cc) {
		if strings.Contains(strings.ToLower(k), "password") || strings.Contains(strings.ToLower(k), "secret") || strings.Contains(k, "DSN") {
			t.Fatalf("ConfigMap key %s=%s looks like a secret", k, v)
		}
	}
}

func TestWorkloads(t *testing.T) {
	cc := cluster()
	in := Inputs{SecretHash: map[string]string{Gateway: "g", Logic: "l"}, Images: map[string]string{Repo: "gochat:0"}}
	sts := GatewayStatefulSet(cc, in)
	if sts.Spec.UpdateStrategy.Type != "OnDelete" || *sts.Spec.Replicas != 3 || sts.Spec.PodManagementPolicy != "Parallel" {
		t.Fatalf("statefulset %+v", sts.Spec)
	}
	if sts.Spec.Template.Annotations[AnnotationSecretHash] != "g" {
		t.Fatal("secret hash not in the pod template")
	}
	repo := Deployment(cc, Repo, in)
	if repo.Spec.Template.Spec.Containers[0].Image != "gochat:0" || repo.Annotations[AnnotationImage] != "gochat:0" {
		t.Fatal("the repo runs the image it was told (the migrated one), not the spec's")
	}
	if *Deployment(cc, Task, in).Spec.Replicas != 2 {
		t.Fatal("unset replicas default to 2")
	}
	for _, o := range []metav1.Object{sts, repo, ConfigMap(cc), ServiceAccount(cc), MigrationJob(cc, in)} {
		if refs := o.GetOwnerReferences(); len(refs) != 1 || refs[0].UID != "uid-1" || !*refs[0].Controller {
			t.Fatalf("%s: owner references %+v", o.GetName(), refs)
		}
	}
	pdbs := PodDisruptionBudgets(cc)
	if pdbs[0].Spec.MaxUnavailable.IntValue() != 2 {
		t.Fatal("the gateways' PDB follows drain.maxUnavailable")
	}
	svcs := Services(cc)
	if svcs[0].Spec.Type != corev1.ServiceTypeLoadBalancer || svcs[0].Spec.Ports[0].Port != 80 || svcs[2].Spec.ClusterIP != "None" {
		t.Fatalf("services %+v", svcs)
	}
}

// The gateway's own drain (on SIGTERM) must end inside the grace period,
// after the preStop sleep that lets endpoints forget the pod.
func TestGatewayTermination(t *testing.T) {
	tests := []struct {
		timeout                    *metav1.Duration
		wantGrace                  int64
		wantDrainTimeout, wantWind string
	}{
		{nil, 310, "5m0s", "2m30s"},
		{&metav1.Duration{Duration: 10 * time.Second}, 20, "10s", "5s"},
		{&metav1.Duration{Duration: 1500 * time.Millisecond}, 11, "1s", "750ms"},
	}
	for _, tt := range tests {
		cc := cluster()
		cc.Spec.Gateway.Drain.Timeout = tt.timeout
		spec := GatewayStatefulSet(cc, Inputs{}).Spec.Template.Spec
		if g := *spec.TerminationGracePeriodSeconds; g != tt.wantGrace {
			t.Errorf("timeout %v: grace %d, want %d", tt.timeout, g, tt.wantGrace)
		}
		c := spec.Containers[0]
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		if env["GOCHAT_DRAIN_TIMEOUT"] != tt.wantDrainTimeout || env["GOCHAT_DRAIN_WINDOW"] != tt.wantWind {
			t.Errorf("timeout %v: drain timeout %q window %q", tt.timeout, env["GOCHAT_DRAIN_TIMEOUT"], env["GOCHAT_DRAIN_WINDOW"])
		}
		d, err := time.ParseDuration(env["GOCHAT_DRAIN_TIMEOUT"])
		if err != nil {
			t.Fatal(err)
		}
		preStop := time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		if preStop <= 0 || preStop+d >= time.Duration(tt.wantGrace)*time.Second {
			t.Errorf("timeout %v: preStop %v + drain %v does not end inside the grace period", tt.timeout, preStop, d)
		}
	}
	cc := cluster()
	if r := *GatewayStatefulSet(cc, Inputs{GatewayReplicas: i32(5)}).Spec.Replicas; r != 5 {
		t.Fatalf("a scale-down in progress keeps the StatefulSet at %d, got %d", 5, r)
	}
}

func TestHashData(t *testing.T) {
	a := HashData(map[string]string{"a": "1", "b": "2"})
	if a != HashData(map[string]string{"b": "2", "a": "1"}) {
		t.Fatal("hash depends on map order")
	}
	if a == HashData(map[string]string{"a": "1", "b": "3"}) {
		t.Fatal("hash ignores a value")
	}
}

// A restart request on the cluster reaches every rolling pod template, and
// only a new request changes them.
func TestRestartAnnotation(t *testing.T) {
	cc := cluster()
	templates := func(cc *chatv1.ChatCluster) map[string]map[string]string {
		in := Inputs{}
		return map[string]map[string]string{
			Gateway: GatewayStatefulSet(cc, in).Spec.Template.Annotations,
			Logic:   Deployment(cc, Logic, in).Spec.Template.Annotations,
			Repo:    Deployment(cc, Repo, in).Spec.Template.Annotations,
			Task:    Deployment(cc, Task, in).Spec.Template.Annotations,
			Migrate: MigrationJob(cc, in).Spec.Template.Annotations,
		}
	}
	for c, a := range templates(cc) {
		if _, ok := a[AnnotationRestartedAt]; ok {
			t.Errorf("%s: restart annotation without a request", c)
		}
	}
	cc.Annotations = map[string]string{AnnotationRestartedAt: "2026-11-30T01:00:00Z"}
	for c, a := range templates(cc) {
		got, want := a[AnnotationRestartedAt], "2026-11-30T01:00:00Z"
		if c == Migrate {
			want = "" // created once per image, never rolled
		}
		if got != want {
			t.Errorf("%s: restartedAt %q, want %q", c, got, want)
		}
	}
}
