package status

import (
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

func i32(v int32) *int32 { return &v }

func cluster(phase chatv1.Phase) *chatv1.ChatCluster {
	return &chatv1.ChatCluster{
		ObjectMeta: metav1.ObjectMeta{Name: "demo", Namespace: "ns", Generation: 3},
		Spec: chatv1.ChatClusterSpec{
			Image: "img:1", Gateway: chatv1.GatewaySpec{Replicas: i32(2), Service: chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Port: 80}},
			Logic: chatv1.ComponentSpec{Replicas: i32(1)}, Repo: chatv1.ComponentSpec{Replicas: i32(1)}, Task: chatv1.ComponentSpec{Replicas: i32(1)},
		},
		Status: chatv1.ChatClusterStatus{Phase: phase},
	}
}

func podSpec(image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "gochat", Image: image}}}}
}

func dep(ready int32) *appsv1.Deployment {
	return &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: podSpec("img:1")}, Status: appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: ready, UpdatedReplicas: 1}}
}

func healthy() Observed {
	return Observed{
		Deployments:   map[string]*appsv1.Deployment{"logic": dep(1), "repo": dep(1), "task": dep(1)},
		Gateway:       &appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Template: podSpec("img:1")}, Status: appsv1.StatefulSetStatus{Replicas: 2, ReadyReplicas: 2, UpdatedReplicas: 2, CurrentRevision: "r1", UpdateRevision: "r1"}},
		ClientService: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "demo-gateway", Namespace: "ns"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}, Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "203.0.113.7"}}}}},
		GatewayImages: []string{"img:1", "img:1"},
		MigratedImage: "img:1", Topics: []string{"a", "b"}, Partitions: 12, Sessions: 42,
	}
}

func TestCompute(t *testing.T) {
	tests := []struct {
		name       string
		prev       chatv1.Phase
		change     func(*Observed)
		wantPhase  chatv1.Phase
		wantReady  string // reason of Ready
		wantFalse  string // a condition expected False
		wantReason string
	}{
		{"all healthy", "", nil, chatv1.PhaseRunning, ReasonReady, "", ""},
		{"first start, pods coming", "", func(o *Observed) { o.Deployments["logic"] = dep(0) }, chatv1.PhaseProvisioning, ReasonComponentsNotReady, "", ""},
		{"a secret is missing", "", func(o *Observed) {
			o.Secrets = Check{Reason: ReasonSecretMissing, Err: errors.New("secret mysql not found")}
		}, chatv1.PhasePending, ReasonSecretMissing, chatv1.ConditionDatabaseMigrated, ReasonSecretMissing},
		{"running, then Redis goes", chatv1.PhaseRunning, func(o *Observed) { o.Redis = Check{Reason: ReasonUnreachable, Err: errors.New("redis down")} }, chatv1.PhaseDegraded, ReasonUnreachable, chatv1.ConditionRedisReachable, ReasonUnreachable},
		{"running, kafka refuses the replication factor", chatv1.PhaseRunning, func(o *Observed) {
			o.Kafka = Check{Reason: "ReplicationFactorTooHigh", Err: errors.New("rf 3 > 1 broker")}
		}, chatv1.PhaseDegraded, "ReplicationFactorTooHigh", chatv1.ConditionKafkaTopicsReady, "ReplicationFactorTooHigh"},
		{"new gateway revision, no drain begun yet: outdated but Ready gateways are ready", chatv1.PhaseRunning, func(o *Observed) {
			o.Gateway.Status.UpdatedReplicas, o.Gateway.Status.UpdateRevision, o.GatewayOutdated = 0, "r2", 2
		}, chatv1.PhaseUpgrading, ReasonReady, chatv1.ConditionGatewayRolloutComplete, ReasonRollingOut},
		{"a gateway drains", chatv1.PhaseUpgrading, func(o *Observed) {
			o.Gateway.Status.UpdatedReplicas, o.Gateway.Status.UpdateRevision, o.GatewayOutdated = 1, "r2", 1
			o.Gateway.Status.ReadyReplicas = 1
			o.Draining = []chatv1.DrainingGateway{{Pod: "demo-gateway-1", Sessions: 7}}
		}, chatv1.PhaseUpgrading, ReasonComponentsNotReady, chatv1.ConditionGatewayRolloutComplete, ReasonDraining},
		{"the roll's last replacement is starting", chatv1.PhaseUpgrading, func(o *Observed) {
			o.Gateway.Status.ReadyReplicas = 1
		}, chatv1.PhaseUpgrading, ReasonComponentsNotReady, "", ""},
		{"a replacement never becomes Ready", chatv1.PhaseUpgrading, func(o *Observed) {
			o.Gateway.Status.UpdatedReplicas, o.Gateway.Status.ReadyReplicas, o.Gateway.Status.UpdateRevision, o.GatewayOutdated = 1, 1, "r2", 1
			o.StuckGateway = "demo-gateway-0"
		}, chatv1.PhaseDegraded, ReasonRolloutStuck, chatv1.ConditionGatewayRolloutComplete, ReasonRolloutStuck},
		{"a Deployment rolls a new template", chatv1.PhaseRunning, func(o *Observed) {
			o.Deployments["logic"].Status.Replicas, o.Deployments["logic"].Status.UpdatedReplicas = 2, 1
		}, chatv1.PhaseUpgrading, ReasonReady, "", ""},
		{"the API server refuses an apply", chatv1.PhaseRunning, func(o *Observed) {
			o.Reconcile = Check{Reason: ReasonForbidden, Err: errors.New("apply ConfigMap demo-config: forbidden")}
		}, chatv1.PhaseDegraded, ReasonForbidden, chatv1.ConditionReconciled, ReasonForbidden},
		{"first start, the API server refuses an apply", "", func(o *Observed) {
			o.Reconcile = Check{Reason: ReasonOwnedByOther, Err: errors.New("Service demo-repo is controlled by someone else")}
		}, chatv1.PhaseDegraded, ReasonOwnedByOther, chatv1.ConditionReconciled, ReasonOwnedByOther},
		{"first start, Kafka not reachable yet", "", func(o *Observed) {
			o.Kafka = Check{Reason: "BrokersUnreachable", Err: errors.New("dial tcp: refused")}
		}, chatv1.PhaseProvisioning, "BrokersUnreachable", chatv1.ConditionKafkaTopicsReady, "BrokersUnreachable"},
		{"migration of a new image running", chatv1.PhaseRunning, func(o *Observed) {
			o.MigratedImage = "img:0"
			o.Migration = &batchv1.Job{}
		}, chatv1.PhaseUpgrading, ReasonMigrating, chatv1.ConditionDatabaseMigrated, ReasonMigrating},
		{"migration failed on first start: a person must act, so not Provisioning", chatv1.PhaseProvisioning, func(o *Observed) {
			o.MigratedImage = ""
			o.Migration = &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "demo-migrate-x"}, Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue}}}}
		}, chatv1.PhaseDegraded, ReasonMigrationFailed, chatv1.ConditionDatabaseMigrated, ReasonMigrationFailed},
		{"migration of a new image failed", chatv1.PhaseUpgrading, func(o *Observed) {
			o.MigratedImage = "img:0"
			o.Migration = &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "demo-migrate-x"}, Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue}}}}
		}, chatv1.PhaseDegraded, ReasonMigrationFailed, chatv1.ConditionDatabaseMigrated, ReasonMigrationFailed},
		{"the migration's image cannot be pulled", chatv1.PhaseRunning, func(o *Observed) {
			o.MigratedImage = "img:0"
			o.Migration = &batchv1.Job{}
			o.MigrationCheck = Check{Reason: ReasonImagePullFailed, Err: errors.New(`pod demo-migrate-x-1 cannot pull image "img:1" (ImagePullBackOff)`)}
		}, chatv1.PhaseDegraded, ReasonImagePullFailed, chatv1.ConditionDatabaseMigrated, ReasonImagePullFailed},
		{"running, then MySQL goes", chatv1.PhaseRunning, func(o *Observed) {
			o.Database = Check{Reason: ReasonUnreachable, Err: errors.New("mysql at db:3306: connection refused")}
		}, chatv1.PhaseDegraded, ReasonUnreachable, chatv1.ConditionDatabaseReachable, ReasonUnreachable},
		{"a logic pod cannot pull its image", chatv1.PhaseRunning, func(o *Observed) {
			o.Deployments["logic"] = dep(0)
			o.ImagePull = Check{Reason: ReasonImagePullFailed, Err: errors.New(`pod demo-logic-1 cannot pull image "img:1" (ErrImagePull)`)}
		}, chatv1.PhaseDegraded, ReasonImagePullFailed, "", ""},
		{"MySQL refuses the credentials", "", func(o *Observed) {
			o.Database = Check{Reason: ReasonAccessDenied, Err: errors.New("mysql at db:3306: Error 1045")}
		}, chatv1.PhaseProvisioning, ReasonAccessDenied, chatv1.ConditionDatabaseReachable, ReasonAccessDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := healthy()
			if tt.change != nil {
				tt.change(&o)
			}
			s := Compute(cluster(tt.prev), o)
			if s.Phase != tt.wantPhase {
				t.Fatalf("phase %s, want %s", s.Phase, tt.wantPhase)
			}
			if c := meta.FindStatusCondition(s.Conditions, chatv1.ConditionReady); c == nil || c.Reason != tt.wantReady || c.ObservedGeneration != 3 {
				t.Fatalf("Ready %+v, want reason %s", c, tt.wantReady)
			}
			if tt.wantFalse != "" {
				if c := meta.FindStatusCondition(s.Conditions, tt.wantFalse); c == nil || c.Status != metav1.ConditionFalse || c.Reason != tt.wantReason || c.Message == "" {
					t.Fatalf("%s %+v, want False %s", tt.wantFalse, c, tt.wantReason)
				}
			}
		})
	}
}

func TestComputeFields(t *testing.T) {
	s := Compute(cluster(""), healthy())
	if s.Endpoint != "ws://203.0.113.7/v1/ws" || s.Sessions != 42 || s.GatewaysReady != "2/2" || s.ObservedGeneration != 3 ||
		s.Kafka.Partitions != 12 || s.Gateway.Selector == "" || s.MigratedImage != "img:1" {
		t.Fatalf("status %+v", s)
	}
	draining := healthy()
	draining.Draining = []chatv1.DrainingGateway{{Pod: "demo-gateway-1", Sessions: 7}, {Pod: "demo-gateway-2", Sessions: -1}}
	d := Compute(cluster(chatv1.PhaseRunning), draining)
	if len(d.Gateway.Draining) != 2 || d.Gateway.Draining[0].Sessions != 7 {
		t.Fatalf("draining %+v", d.Gateway.Draining)
	}
	if c := meta.FindStatusCondition(d.Conditions, chatv1.ConditionGatewayRolloutComplete); c.Message != "2 of 2 gateway(s) run the current revision; draining demo-gateway-1 (7 session(s) left), demo-gateway-2 (sessions unknown)" {
		t.Fatalf("message %q", c.Message)
	}
	// A condition that does not change keeps its transition time.
	prev := cluster(chatv1.PhaseRunning)
	prev.Status = s
	old := meta.FindStatusCondition(s.Conditions, chatv1.ConditionReady).LastTransitionTime
	again := Compute(prev, healthy())
	if got := meta.FindStatusCondition(again.Conditions, chatv1.ConditionReady).LastTransitionTime; !got.Equal(&old) {
		t.Fatal("lastTransitionTime moved without a transition")
	}
}

// A pod that cannot pull its image is named in Ready whatever its reason.
func TestImagePullInReady(t *testing.T) {
	pull := Check{Reason: ReasonImagePullFailed, Err: errors.New(`pod demo-task-1 cannot pull image "img:1" (ErrImagePull)`)}
	for _, redis := range []Check{{}, {Reason: ReasonUnreachable, Err: errors.New("redis down")}} {
		o := healthy()
		o.Deployments["task"] = dep(0)
		o.ImagePull, o.Redis = pull, redis
		c := meta.FindStatusCondition(Compute(cluster(chatv1.PhaseRunning), o).Conditions, chatv1.ConditionReady)
		if c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, pull.Err.Error()) {
			t.Fatalf("with Redis %v: Ready %+v", redis.Err, c)
		}
	}
}

// TestComputeSequences feeds each status back as the previous one, as the
// reconciler does, and checks the phases a person would see.
func TestComputeSequences(t *testing.T) {
	type step struct {
		spec   func(*chatv1.ChatCluster)
		obs    func(*Observed)
		phase  chatv1.Phase
		ready  string // Ready's reason
		image  string // status.image
		rolled bool   // GatewayRolloutComplete
	}
	// gw: the outdated pods run img:1, the others image (the template's).
	gw := func(replicas, ready, updated, outdated int32, image string) func(*Observed) {
		return func(o *Observed) {
			o.Gateway.Status.Replicas, o.Gateway.Status.ReadyReplicas, o.Gateway.Status.UpdatedReplicas = replicas, ready, updated
			o.GatewayOutdated = outdated
			o.Gateway.Spec.Template = podSpec(image)
			o.GatewayImages = nil
			for i := range replicas {
				if i < outdated {
					o.GatewayImages = append(o.GatewayImages, "img:1")
				} else {
					o.GatewayImages = append(o.GatewayImages, image)
				}
			}
		}
	}
	scale := func(n int32) func(*chatv1.ChatCluster) {
		return func(cc *chatv1.ChatCluster) { cc.Spec.Gateway.Replicas = i32(n) }
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"scaling 2 -> 3, as an HPA does: Running throughout, never Upgrading or Degraded", []step{
			{nil, nil, chatv1.PhaseRunning, ReasonReady, "img:1", true},
			{scale(3), gw(2, 2, 2, 0, "img:1"), chatv1.PhaseRunning, ReasonScaling, "img:1", true},
			{scale(3), gw(3, 2, 3, 0, "img:1"), chatv1.PhaseRunning, ReasonScaling, "img:1", true},
			{scale(3), gw(3, 3, 3, 0, "img:1"), chatv1.PhaseRunning, ReasonReady, "img:1", true},
			{scale(2), gw(3, 3, 3, 0, "img:1"), chatv1.PhaseRunning, ReasonReady, "img:1", true},
		}},
		{"a Ready gateway is lost: Degraded until it is back", []step{
			{nil, nil, chatv1.PhaseRunning, ReasonReady, "img:1", true},
			{nil, gw(2, 1, 2, 0, "img:1"), chatv1.PhaseDegraded, ReasonComponentsNotReady, "img:1", true},
			{nil, gw(2, 1, 2, 0, "img:1"), chatv1.PhaseDegraded, ReasonComponentsNotReady, "img:1", true},
			{nil, gw(2, 2, 2, 0, "img:1"), chatv1.PhaseRunning, ReasonReady, "img:1", true},
		}},
		{"a new image rolls: Upgrading until done, the old image shown until then", []step{
			{nil, nil, chatv1.PhaseRunning, ReasonReady, "img:1", true},
			{nil, gw(2, 2, 0, 2, "img:2"), chatv1.PhaseUpgrading, ReasonReady, "img:1", false},
			{nil, gw(2, 1, 0, 2, "img:2"), chatv1.PhaseUpgrading, ReasonComponentsNotReady, "img:1", false},
			{nil, gw(2, 2, 1, 1, "img:2"), chatv1.PhaseUpgrading, ReasonReady, "img:1", false},
			{nil, gw(2, 1, 2, 0, "img:2"), chatv1.PhaseUpgrading, ReasonComponentsNotReady, "img:1, img:2", true},
			{nil, gw(2, 2, 2, 0, "img:2"), chatv1.PhaseRunning, ReasonReady, "img:1, img:2", true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := cluster("")
			o := healthy()
			for i, st := range tt.steps {
				if st.spec != nil {
					st.spec(cc)
				}
				if st.obs != nil {
					st.obs(&o)
				}
				cc.Status = Compute(cc, o)
				ready := meta.FindStatusCondition(cc.Status.Conditions, chatv1.ConditionReady)
				rolled := meta.IsStatusConditionTrue(cc.Status.Conditions, chatv1.ConditionGatewayRolloutComplete)
				if cc.Status.Phase != st.phase || ready.Reason != st.ready || cc.Status.Image != st.image || rolled != st.rolled {
					t.Fatalf("step %d: phase %s Ready %s image %q rolled %v, want %s %s %q %v", i, cc.Status.Phase, ready.Reason, cc.Status.Image, rolled, st.phase, st.ready, st.image, st.rolled)
				}
			}
		})
	}
}

func TestBlocked(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Observed)
		want   string
	}{
		{"healthy", nil, ""},
		{"migration running", func(o *Observed) { o.MigratedImage, o.Migration = "", &batchv1.Job{} }, ""},
		{"Redis unreachable: it may come back by itself", func(o *Observed) { o.Redis = Check{Reason: ReasonUnreachable, Err: errors.New("down")} }, ""},
		{"migration failed", func(o *Observed) {
			o.MigratedImage = ""
			o.Migration = &batchv1.Job{Status: batchv1.JobStatus{Conditions: []batchv1.JobCondition{{Type: batchv1.JobFailed, Status: corev1.ConditionTrue}}}}
		}, ReasonMigrationFailed},
		{"replication factor too high", func(o *Observed) {
			o.Kafka = Check{Reason: "ReplicationFactorTooHigh", Err: errors.New("rf")}
		}, "ReplicationFactorTooHigh"},
		{"a Secret is missing", func(o *Observed) {
			o.Secrets = Check{Reason: ReasonSecretMissing, Err: errors.New("secret mysql not found")}
		}, ReasonSecretMissing},
		{"an apply is forbidden", func(o *Observed) { o.Reconcile = Check{Reason: ReasonForbidden, Err: errors.New("forbidden")} }, ReasonForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := healthy()
			if tt.change != nil {
				tt.change(&o)
			}
			if got := Blocked(Compute(cluster(chatv1.PhaseRunning), o)); got != tt.want {
				t.Fatalf("Blocked %q, want %q", got, tt.want)
			}
		})
	}
}
