package resources

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

func podOf(cc *chatv1.ChatCluster, component string) corev1.PodTemplateSpec {
	if component == Gateway {
		return GatewayStatefulSet(cc, Inputs{}).Spec.Template
	}
	if component == Migrate {
		return MigrationJob(cc, Inputs{}).Spec.Template
	}
	return Deployment(cc, component, Inputs{Images: map[string]string{Repo: "gochat:1"}}).Spec.Template
}

func TestPodSettings(t *testing.T) {
	shared := chatv1.PodSettings{
		NodeSelector:      map[string]string{"pool": "chat"},
		Tolerations:       []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "chat", Effect: corev1.TaintEffectNoSchedule}},
		PriorityClassName: "chat-high",
		ImagePullSecrets:  []corev1.LocalObjectReference{{Name: "registry"}},
		Labels:            map[string]string{"team": "im", "app.kubernetes.io/component": "hijack"},
		Annotations:       map[string]string{"prometheus.io/scrape": "true"},
	}
	gwSpread := []corev1.TopologySpreadConstraint{{MaxSkew: 2, TopologyKey: "topology.kubernetes.io/zone", WhenUnsatisfiable: corev1.DoNotSchedule}}
	tests := []struct {
		name      string
		mutate    func(*chatv1.ChatCluster)
		component string
		check     func(t *testing.T, p corev1.PodTemplateSpec)
	}{
		{"shared settings reach every component", func(c *chatv1.ChatCluster) { c.Spec.Pods = shared }, Task, func(t *testing.T, p corev1.PodTemplateSpec) {
			s := p.Spec
			if s.NodeSelector["pool"] != "chat" || len(s.Tolerations) != 1 || s.PriorityClassName != "chat-high" || len(s.ImagePullSecrets) != 1 || s.ImagePullSecrets[0].Name != "registry" {
				t.Fatalf("pod spec %+v", s)
			}
			if p.Labels["team"] != "im" || p.Annotations["prometheus.io/scrape"] != "true" {
				t.Fatalf("metadata %v %v", p.Labels, p.Annotations)
			}
			if p.Labels["app.kubernetes.io/component"] != Task || p.Annotations[AnnotationConfigHash] == "" {
				t.Fatalf("the operator's own labels lost: %v %v", p.Labels, p.Annotations)
			}
		}},
		{"a component's own block wins field by field, metadata merges", func(c *chatv1.ChatCluster) {
			c.Spec.Pods = shared
			c.Spec.Logic.Pods = chatv1.PodSettings{NodeSelector: map[string]string{"pool": "logic"}, Labels: map[string]string{"tier": "core"}}
		}, Logic, func(t *testing.T, p corev1.PodTemplateSpec) {
			if p.Spec.NodeSelector["pool"] != "logic" || p.Spec.PriorityClassName != "chat-high" || p.Labels["team"] != "im" || p.Labels["tier"] != "core" {
				t.Fatalf("spec %+v labels %v", p.Spec, p.Labels)
			}
		}},
		{"the migration Job runs with repo's settings", func(c *chatv1.ChatCluster) {
			c.Spec.Repo.Pods = chatv1.PodSettings{PriorityClassName: "db"}
		}, Migrate, func(t *testing.T, p corev1.PodTemplateSpec) {
			if p.Spec.PriorityClassName != "db" {
				t.Fatalf("priority %q", p.Spec.PriorityClassName)
			}
		}},
		{"gateways spread across nodes by default", nil, Gateway, func(t *testing.T, p corev1.PodTemplateSpec) {
			c := p.Spec.TopologySpreadConstraints
			if len(c) != 1 || c[0].TopologyKey != corev1.LabelHostname || c[0].MaxSkew != 1 || c[0].WhenUnsatisfiable != corev1.ScheduleAnyway ||
				c[0].LabelSelector.MatchLabels["app.kubernetes.io/component"] != Gateway {
				t.Fatalf("spread %+v", c)
			}
		}},
		{"a given spread replaces the default", func(c *chatv1.ChatCluster) { c.Spec.Gateway.Pods.TopologySpreadConstraints = gwSpread }, Gateway, func(t *testing.T, p corev1.PodTemplateSpec) {
			if !equality.Semantic.DeepEqual(p.Spec.TopologySpreadConstraints, gwSpread) {
				t.Fatalf("spread %+v", p.Spec.TopologySpreadConstraints)
			}
		}},
		{"other components are not spread by default", nil, Logic, func(t *testing.T, p corev1.PodTemplateSpec) {
			if p.Spec.TopologySpreadConstraints != nil {
				t.Fatalf("spread %+v", p.Spec.TopologySpreadConstraints)
			}
		}},
		{"requests default so pods are never BestEffort", nil, Repo, func(t *testing.T, p corev1.PodTemplateSpec) {
			r := p.Spec.Containers[0].Resources.Requests
			if !r.Cpu().Equal(DefaultCPURequest) || !r.Memory().Equal(DefaultMemoryRequest) {
				t.Fatalf("requests %v", r)
			}
		}},
		{"given requests and limits are kept", func(c *chatv1.ChatCluster) {
			c.Spec.Gateway.Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
			}
		}, Gateway, func(t *testing.T, p corev1.PodTemplateSpec) {
			r := p.Spec.Containers[0].Resources
			if !r.Requests.Cpu().Equal(resource.MustParse("1")) || !r.Limits.Memory().Equal(resource.MustParse("1Gi")) {
				t.Fatalf("resources %+v", r)
			}
			if _, ok := r.Requests[corev1.ResourceMemory]; ok {
				t.Fatalf("a memory request beside the memory limit: %+v (Kubernetes defaults it to the limit)", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := cluster()
			if tt.mutate != nil {
				tt.mutate(cc)
			}
			tt.check(t, podOf(cc, tt.component))
		})
	}
}

func TestClientServiceSettings(t *testing.T) {
	class := "example.com/lb"
	tests := []struct {
		name       string
		svc        chatv1.GatewayServiceSpec
		wantPolicy corev1.ServiceExternalTrafficPolicy
		wantClass  *string
	}{
		{"load balancer", chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Port: 80, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, LoadBalancerClass: &class,
			Annotations: map[string]string{"service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout": "3600"}}, corev1.ServiceExternalTrafficPolicyLocal, &class},
		{"ClusterIP takes neither (the API server would refuse them)", chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeClusterIP, Port: 80, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, LoadBalancerClass: &class}, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := cluster()
			cc.Spec.Gateway.Service = tt.svc
			front := Services(cc)[0]
			if front.Spec.ExternalTrafficPolicy != tt.wantPolicy || !equality.Semantic.DeepEqual(front.Spec.LoadBalancerClass, tt.wantClass) {
				t.Fatalf("spec %+v", front.Spec)
			}
			if !equality.Semantic.DeepEqual(front.Annotations, merged(tt.svc.Annotations)) {
				t.Fatalf("annotations %v", front.Annotations)
			}
		})
	}
}

func TestPDBEvictUnhealthy(t *testing.T) {
	for _, p := range PodDisruptionBudgets(cluster()) {
		if p.Spec.UnhealthyPodEvictionPolicy == nil || *p.Spec.UnhealthyPodEvictionPolicy != policyv1.AlwaysAllow {
			t.Fatalf("%s: unhealthyPodEvictionPolicy %v", p.Name, p.Spec.UnhealthyPodEvictionPolicy)
		}
	}
}
