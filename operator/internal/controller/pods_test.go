package controller_test

import (
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// TestPlatformSettings: the pod and Service settings of the spec reach the
// objects, and the API server accepts them as built.
func TestPlatformSettings(t *testing.T) {
	class := "example.com/lb"
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) {
		c.Spec.Pods = chatv1.PodSettings{
			NodeSelector:      map[string]string{"pool": "chat"},
			Tolerations:       []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "chat", Effect: corev1.TaintEffectNoSchedule}},
			ImagePullSecrets:  []corev1.LocalObjectReference{{Name: "registry"}},
			PriorityClassName: "system-cluster-critical",
			Labels:            map[string]string{"team": "im"},
		}
		c.Spec.Task.Pods.NodeSelector = map[string]string{"pool": "batch"}
		c.Spec.Gateway.Service = chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Port: 80,
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal, LoadBalancerClass: &class,
			Annotations: map[string]string{"service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout": "3600"}}
	})
	passMigration(t, ns)
	eventually(t, 30*time.Second, "settings applied", func() error {
		var logic, task appsv1.Deployment
		var sts appsv1.StatefulSet
		var svc corev1.Service
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &logic); err != nil {
			return err
		}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-task"}, &task); err != nil {
			return err
		}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-gateway"}, &sts); err != nil {
			return err
		}
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-gateway"}, &svc); err != nil {
			return err
		}
		l := logic.Spec.Template
		switch {
		case l.Spec.NodeSelector["pool"] != "chat" || len(l.Spec.Tolerations) != 1 || l.Spec.PriorityClassName != "system-cluster-critical" || l.Labels["team"] != "im":
			return fmt.Errorf("logic pod %+v", l.Spec)
		case task.Spec.Template.Spec.NodeSelector["pool"] != "batch":
			return fmt.Errorf("task nodeSelector %v", task.Spec.Template.Spec.NodeSelector)
		case len(sts.Spec.Template.Spec.TopologySpreadConstraints) != 1:
			return fmt.Errorf("gateway spread %+v", sts.Spec.Template.Spec.TopologySpreadConstraints)
		case l.Spec.Containers[0].Resources.Requests.Cpu().IsZero():
			return fmt.Errorf("logic has no CPU request")
		case svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || svc.Spec.LoadBalancerClass == nil || *svc.Spec.LoadBalancerClass != class ||
			svc.Annotations["service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout"] != "3600":
			return fmt.Errorf("client service %+v %v", svc.Spec, svc.Annotations)
		}
		return nil
	})
}
