package resources

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// Default requests of a container that asks for none: enough for the
// scheduler to count it, and never the BestEffort class that is evicted first.
var (
	DefaultCPURequest    = resource.MustParse("100m")
	DefaultMemoryRequest = resource.MustParse("128Mi")
)

// PodSettings of a component: its own non-empty fields over spec.pods;
// labels and annotations merge, the component's winning. The migration Job
// runs with repo's settings.
func PodSettings(cc *chatv1.ChatCluster, component string) chatv1.PodSettings {
	var own chatv1.PodSettings
	switch component {
	case Gateway:
		own = cc.Spec.Gateway.Pods
	case Logic:
		own = cc.Spec.Logic.Pods
	case Repo, Migrate:
		own = cc.Spec.Repo.Pods
	case Task:
		own = cc.Spec.Task.Pods
	}
	out := *cc.Spec.Pods.DeepCopy()
	if own.NodeSelector != nil {
		out.NodeSelector = own.NodeSelector
	}
	if own.Tolerations != nil {
		out.Tolerations = own.Tolerations
	}
	if own.Affinity != nil {
		out.Affinity = own.Affinity
	}
	if own.TopologySpreadConstraints != nil {
		out.TopologySpreadConstraints = own.TopologySpreadConstraints
	}
	if own.PriorityClassName != "" {
		out.PriorityClassName = own.PriorityClassName
	}
	if own.ImagePullSecrets != nil {
		out.ImagePullSecrets = own.ImagePullSecrets
	}
	out.Labels = merged(out.Labels, own.Labels)
	out.Annotations = merged(out.Annotations, own.Annotations)
	if component == Gateway && out.TopologySpreadConstraints == nil {
		// One node lost should cost as few sessions as possible; ScheduleAnyway
		// keeps a single-node cluster schedulable.
		out.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway,
			LabelSelector: &metav1.LabelSelector{MatchLabels: SelectorLabels(cc, Gateway)},
		}}
	}
	return out
}

func merged(maps_ ...map[string]string) map[string]string {
	var out map[string]string
	for _, m := range maps_ {
		if len(m) == 0 {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		maps.Copy(out, m)
	}
	return out
}

// withDefaultRequests gives a container without requests the default ones.
func withDefaultRequests(res corev1.ResourceRequirements) corev1.ResourceRequirements {
	out := *res.DeepCopy()
	if out.Requests == nil {
		out.Requests = corev1.ResourceList{}
	}
	// A limit alone makes Kubernetes default the request to it: leave that be.
	for name, def := range map[corev1.ResourceName]resource.Quantity{corev1.ResourceCPU: DefaultCPURequest, corev1.ResourceMemory: DefaultMemoryRequest} {
		if _, ok := out.Requests[name]; ok {
			continue
		}
		if _, ok := out.Limits[name]; ok {
			continue
		}
		out.Requests[name] = def
	}
	return out
}

// applyPodSettings puts the settings on a pod template; the operator's own
// labels and annotations are kept over the user's.
func applyPodSettings(tpl *corev1.PodTemplateSpec, s chatv1.PodSettings) {
	tpl.Labels = merged(s.Labels, tpl.Labels)
	tpl.Annotations = merged(s.Annotations, tpl.Annotations)
	tpl.Spec.NodeSelector = s.NodeSelector
	tpl.Spec.Tolerations = s.Tolerations
	tpl.Spec.Affinity = s.Affinity
	tpl.Spec.TopologySpreadConstraints = s.TopologySpreadConstraints
	tpl.Spec.PriorityClassName = s.PriorityClassName
	tpl.Spec.ImagePullSecrets = s.ImagePullSecrets
}
