package resources

import (
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

func service(cc *chatv1.ChatCluster, name, component string, spec corev1.ServiceSpec) *corev1.Service {
	spec.Selector = SelectorLabels(cc, component)
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(cc, name, component),
		Spec:       spec,
	}
}

func port(name string, p int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: p, TargetPort: intstr.FromString(name), Protocol: corev1.ProtocolTCP}
}

// Services are the client-facing gateway Service, the gateways' headless
// Service, and headless Services for im-logic and im-repo: gRPC clients
// resolve every replica through DNS and spread calls round robin, which a
// ClusterIP would defeat (one long-lived connection, one pod).
func Services(cc *chatv1.ChatCluster) []*corev1.Service {
	gs := cc.Spec.Gateway.Service
	client := corev1.ServicePort{Name: "http", Port: gs.Port, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}
	front := service(cc, Name(cc, Gateway), Gateway, corev1.ServiceSpec{Type: gs.Type, Ports: []corev1.ServicePort{client}})
	front.Annotations = merged(gs.Annotations)
	if gs.Type == corev1.ServiceTypeNodePort || gs.Type == corev1.ServiceTypeLoadBalancer {
		front.Spec.ExternalTrafficPolicy = gs.ExternalTrafficPolicy
	}
	if gs.Type == corev1.ServiceTypeLoadBalancer {
		front.Spec.LoadBalancerClass = gs.LoadBalancerClass
	}
	return []*corev1.Service{
		front,
		service(cc, GatewayPodsServiceName(cc), Gateway, corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone, PublishNotReadyAddresses: true,
			Ports: []corev1.ServicePort{port("grpc", GatewayGRPCPort)},
		}),
		service(cc, Name(cc, Logic), Logic, corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{port("grpc", LogicGRPCPort)}}),
		service(cc, Name(cc, Repo), Repo, corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{port("grpc", RepoGRPCPort)}}),
	}
}

// PodDisruptionBudgets keep voluntary evictions to one pod at a time, and
// for gateways to drain.maxUnavailable.
func PodDisruptionBudgets(cc *chatv1.ChatCluster) []*policyv1.PodDisruptionBudget {
	var out []*policyv1.PodDisruptionBudget
	for _, c := range []string{Gateway, Logic, Repo, Task} {
		max := intstr.FromInt32(1)
		if c == Gateway {
			max = intstr.FromInt32(cc.Spec.Gateway.Drain.MaxUnavailable)
		}
		out = append(out, &policyv1.PodDisruptionBudget{
			TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
			ObjectMeta: meta(cc, Name(cc, c), c),
			Spec: policyv1.PodDisruptionBudgetSpec{
				MaxUnavailable: &max,
				// A pod that is not Ready protects nothing; without this a
				// crash-looping pod would block every node drain.
				UnhealthyPodEvictionPolicy: ptrPolicy(policyv1.AlwaysAllow),
				Selector:                   &metav1.LabelSelector{MatchLabels: SelectorLabels(cc, c)},
			},
		})
	}
	return out
}

func ptrPolicy(p policyv1.UnhealthyPodEvictionPolicyType) *policyv1.UnhealthyPodEvictionPolicyType {
	return &p
}
