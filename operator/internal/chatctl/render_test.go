package chatctl

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
)

var now = time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC)

func pod(name, rev string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations, Labels: map[string]string{appsv1.ControllerRevisionHashLabelKey: rev}},
		Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func TestDrainState(t *testing.T) {
	draining := map[string]string{
		gatewayroll.AnnotationDrainStarted:  now.Add(-3 * time.Second).Format(time.RFC3339Nano),
		gatewayroll.AnnotationDrainDeadline: now.Add(57 * time.Second).Format(time.RFC3339Nano),
		gatewayroll.AnnotationDrainSessions: "120",
	}
	late := map[string]string{
		gatewayroll.AnnotationDrainStarted:  now.Add(-2 * time.Minute).Format(time.RFC3339Nano),
		gatewayroll.AnnotationDrainDeadline: now.Add(-time.Minute).Format(time.RFC3339Nano),
		gatewayroll.AnnotationDrainSessions: "-1",
	}
	terminating := pod("gw-3", "r1", nil)
	terminating.DeletionTimestamp = &metav1.Time{Time: now}
	tests := []struct {
		name string
		gp   gatewayPod
		want string
	}{
		{"serving", gatewayPod{pod: pod("gw-0", "r1", nil)}, "-"},
		{"operator drain", gatewayPod{pod: pod("gw-1", "r1", draining)}, "draining for 3s, deadline in 57s, 120 session(s) at the start"},
		{"past deadline, sessions unknown at start", gatewayPod{pod: pod("gw-2", "r1", late)}, "draining for 2m0s, past its deadline"},
		{"pod drains itself", gatewayPod{pod: pod("gw-0", "r1", nil), stats: &gochatv1.StatsResponse{Draining: true}}, "draining (by the pod itself: preStop or SIGTERM)"},
		{"terminating", gatewayPod{pod: terminating}, "terminating"},
	}
	for _, tt := range tests {
		if got := drainState(now, tt.gp); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// Every section is there, an unreachable pod says why, an outdated pod is
// marked, and only the latest events are shown.
func TestRender(t *testing.T) {
	cc := &chatv1.ChatCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "demo", Generation: 2},
		Spec:       chatv1.ChatClusterSpec{Image: "gochat:2"},
		Status: chatv1.ChatClusterStatus{
			Phase: chatv1.PhaseUpgrading, ObservedGeneration: 2, Sessions: 7,
			Conditions: []metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: "RollingOut", Message: "line one\nline two", LastTransitionTime: metav1.Time{Time: now.Add(-90 * time.Second)}}},
			Kafka:      chatv1.KafkaStatus{Topics: []string{"p.events", "p.messages"}, Partitions: 12},
		},
	}
	sts := &appsv1.StatefulSet{Status: appsv1.StatefulSetStatus{UpdateRevision: "r2", CurrentRevision: "r1", ReadyReplicas: 2, UpdatedReplicas: 1}}
	var events []eventsv1.Event
	for i, reason := range []string{"Oldest", "Middle", "Newest"} {
		events = append(events, eventsv1.Event{Reason: reason, Type: "Normal", Note: reason + " note", EventTime: metav1.MicroTime{Time: now.Add(time.Duration(i-3) * time.Minute)}})
	}
	v := &view{
		cc: cc, now: now, gateway: sts, deployments: map[string]*appsv1.Deployment{},
		pods: []gatewayPod{
			{pod: pod("demo-gateway-0", "r2", nil), stats: &gochatv1.StatsResponse{Sessions: 7}},
			{pod: pod("demo-gateway-1", "r1", nil), err: errors.New("stats of gateway demo-gateway-1: connection refused")},
		},
		events: events,
	}
	var buf bytes.Buffer
	if err := render(&buf, v, 2); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"Phase:", "Upgrading", "Ready", "RollingOut", "line one | line two",
		"r2 (rolling from r1)", "logic", "(no Deployment yet)",
		"demo-gateway-0", "demo-gateway-1", "r1 (outdated)", "unreachable: connection refused",
		"Live sessions:", "7 over 1 of 2 gateway pod(s)",
		"p.events", "p.messages", "12",
		"Middle note", "Newest note",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Oldest") {
		t.Errorf("shows more than the 2 latest events:\n%s", out)
	}
}
