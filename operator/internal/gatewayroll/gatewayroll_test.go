package gatewayroll

import (
	"reflect"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// pod builds a Pod: ready, running, current, never draining, 10 sessions.
func pod(ord int, change ...func(*Pod)) Pod {
	p := Pod{Name: "demo-gateway-" + itoa(ord), Ordinal: ord, Ready: true, Running: true, Sessions: 10, NotReadySince: t0.Add(-time.Hour)}
	for _, c := range change {
		c(&p)
	}
	return p
}

func itoa(i int) string { return string(rune('0' + i)) }

func outdated(p *Pod)             { p.Outdated = true }
func notReady(p *Pod)             { p.Ready = false }
func terminating(p *Pod)          { p.Terminating = true; p.Ready = false }
func sessions(n int64) func(*Pod) { return func(p *Pod) { p.Sessions = n } }
func notReadyFor(d time.Duration) func(*Pod) {
	return func(p *Pod) { p.Ready = false; p.NotReadySince = t0.Add(-d) }
}
func drainingFor(d time.Duration) func(*Pod) {
	return func(p *Pod) {
		p.DrainStarted, p.DrainDeadline, p.Ready = t0.Add(-d), t0.Add(-d).Add(time.Minute), false
	}
}

func TestPlanRoll(t *testing.T) {
	tests := []struct {
		name        string
		pods        []Pod
		desired     int32
		current     int32 // 0: desired
		maxUnavail  int32
		wantStart   []string
		wantRemove  []string
		wantTimeout []string
		wantReps    int32
		wantStuck   string
		wantBusy    bool
	}{
		{name: "nothing to do", pods: []Pod{pod(0), pod(1), pod(2)}, desired: 3, maxUnavail: 1, wantReps: 3},
		{name: "fewest sessions first, one at a time",
			pods:    []Pod{pod(0, outdated, sessions(30)), pod(1, outdated, sessions(5)), pod(2, outdated, sessions(20))},
			desired: 3, maxUnavail: 1, wantStart: []string{"demo-gateway-1"}, wantReps: 3, wantBusy: true},
		{name: "maxUnavailable 2 starts two",
			pods:    []Pod{pod(0, outdated, sessions(30)), pod(1, outdated, sessions(5)), pod(2, outdated, sessions(20))},
			desired: 3, maxUnavail: 2, wantStart: []string{"demo-gateway-1", "demo-gateway-2"}, wantReps: 3, wantBusy: true},
		{name: "a gateway that did not answer goes after those that did",
			pods:    []Pod{pod(0, outdated, sessions(-1)), pod(1, outdated, sessions(500))},
			desired: 2, maxUnavail: 1, wantStart: []string{"demo-gateway-1"}, wantReps: 2, wantBusy: true},
		{name: "a not Ready current gateway uses the budget",
			pods:    []Pod{pod(0, notReadyFor(time.Second)), pod(1, outdated), pod(2, outdated)},
			desired: 3, maxUnavail: 1, wantReps: 3, wantBusy: true},
		{name: "a missing pod (being recreated) uses the budget",
			pods:    []Pod{pod(1, outdated), pod(2, outdated)},
			desired: 3, maxUnavail: 1, wantReps: 3, wantBusy: true},
		{name: "a not Ready outdated gateway is replaced first, without budget",
			pods:    []Pod{pod(0, outdated, notReady, sessions(0)), pod(1, outdated, sessions(0)), pod(2)},
			desired: 3, maxUnavail: 1, wantStart: []string{"demo-gateway-0"}, wantReps: 3, wantBusy: true},
		{name: "a drain in progress holds the slot",
			pods:    []Pod{pod(0, outdated, drainingFor(10*time.Second)), pod(1, outdated, sessions(0)), pod(2, outdated)},
			desired: 3, maxUnavail: 1, wantReps: 3, wantBusy: true},
		{name: "an emptied gateway is removed",
			pods:    []Pod{pod(0, outdated, drainingFor(10*time.Second), sessions(0)), pod(1, outdated), pod(2, outdated)},
			desired: 3, maxUnavail: 1, wantRemove: []string{"demo-gateway-0"}, wantReps: 3, wantBusy: true},
		{name: "a gateway with sessions is kept until its deadline",
			pods:    []Pod{pod(0, outdated, drainingFor(59*time.Second), sessions(3)), pod(1)},
			desired: 2, maxUnavail: 1, wantReps: 2, wantBusy: true},
		{name: "a gateway past its deadline is removed with its sessions",
			pods:    []Pod{pod(0, outdated, drainingFor(61*time.Second), sessions(3)), pod(1)},
			desired: 2, maxUnavail: 1, wantTimeout: []string{"demo-gateway-0"}, wantReps: 2, wantBusy: true},
		{name: "a gateway that does not answer is kept until its deadline",
			pods:    []Pod{pod(0, outdated, drainingFor(30*time.Second), sessions(-1)), pod(1)},
			desired: 2, maxUnavail: 1, wantReps: 2, wantBusy: true},
		{name: "a terminating gateway is left to terminate, and holds the slot",
			pods:    []Pod{pod(0, outdated, drainingFor(61*time.Second), terminating), pod(1, outdated)},
			desired: 2, maxUnavail: 1, wantReps: 2, wantBusy: true},
		{name: "a replacement not Ready within the bound halts the roll",
			pods:    []Pod{pod(0, notReadyFor(10*time.Minute)), pod(1, outdated), pod(2, outdated)},
			desired: 3, maxUnavail: 2, wantReps: 3, wantStuck: "demo-gateway-0", wantBusy: true},
		{name: "a not Ready gateway after the roll is not a stuck roll",
			pods:    []Pod{pod(0, notReadyFor(10*time.Minute)), pod(1), pod(2)},
			desired: 3, maxUnavail: 1, wantReps: 3},
		{name: "scale-down drains the highest ordinals first and keeps the replicas",
			pods:    []Pod{pod(0), pod(1), pod(2), pod(3), pod(4)},
			desired: 2, current: 5, maxUnavail: 2, wantStart: []string{"demo-gateway-4", "demo-gateway-3"}, wantReps: 5, wantBusy: true},
		{name: "scale-down lowers the replicas past drained pods only",
			pods:    []Pod{pod(0), pod(1), pod(2, drainingFor(5*time.Second), sessions(4)), pod(3, drainingFor(5*time.Second), sessions(0)), pod(4, drainingFor(61*time.Second))},
			desired: 2, current: 5, maxUnavail: 2, wantRemove: []string{"demo-gateway-3"}, wantTimeout: []string{"demo-gateway-4"}, wantReps: 3, wantBusy: true},
		{name: "a drained excess pod below a busy one waits for it",
			pods:    []Pod{pod(0), pod(1), pod(2, drainingFor(5*time.Second), sessions(0)), pod(3, drainingFor(5*time.Second), sessions(4))},
			desired: 2, current: 4, maxUnavail: 2, wantReps: 4, wantBusy: true},
		{name: "scale-down done",
			pods:    []Pod{pod(0), pod(1), pod(2, drainingFor(5*time.Second), sessions(0))},
			desired: 2, current: 3, maxUnavail: 1, wantRemove: []string{"demo-gateway-2"}, wantReps: 2, wantBusy: true},
		{name: "pods past the StatefulSet's replicas are its to remove",
			pods:    []Pod{pod(0), pod(1), pod(2, terminating)},
			desired: 2, current: 2, maxUnavail: 1, wantReps: 2},
		{name: "scale-up is immediate",
			pods:    []Pod{pod(0), pod(1)},
			desired: 4, current: 2, maxUnavail: 1, wantReps: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := tt.current
			if cur == 0 {
				cur = tt.desired
			}
			step := Plan(Input{Now: t0, Pods: tt.pods, Desired: tt.desired, Current: cur, MaxUnavailable: tt.maxUnavail, Timeout: time.Minute, ReadyTimeout: 5 * time.Minute})
			var removed, timedOut []string
			for _, r := range step.Remove {
				if r.TimedOut {
					timedOut = append(timedOut, r.Pod)
				} else {
					removed = append(removed, r.Pod)
				}
			}
			if !reflect.DeepEqual(step.Start, tt.wantStart) || !reflect.DeepEqual(removed, tt.wantRemove) || !reflect.DeepEqual(timedOut, tt.wantTimeout) {
				t.Errorf("start %v remove %v timed out %v; want %v %v %v", step.Start, removed, timedOut, tt.wantStart, tt.wantRemove, tt.wantTimeout)
			}
			if step.Replicas != tt.wantReps || step.Stuck != tt.wantStuck || step.Busy != tt.wantBusy {
				t.Errorf("replicas %d stuck %q busy %v; want %d %q %v", step.Replicas, step.Stuck, step.Busy, tt.wantReps, tt.wantStuck, tt.wantBusy)
			}
		})
	}
}

// A pod's drain clock is read back from its annotations, so an operator
// that restarts resumes the same drain.
func TestObservePod(t *testing.T) {
	sts := &appsv1.StatefulSet{Status: appsv1.StatefulSetStatus{UpdateRevision: "demo-gateway-new"}}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "demo-gateway-12", CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour)),
			Labels: map[string]string{appsv1.ControllerRevisionHashLabelKey: "demo-gateway-old"},
			Annotations: map[string]string{
				AnnotationDrainStarted:  t0.Format(time.RFC3339Nano),
				AnnotationDrainDeadline: t0.Add(90 * time.Second).Format(time.RFC3339Nano),
			}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.NewTime(t0.Add(time.Second))}}},
	}
	got := Observe(p, sts, 7)
	want := Pod{Name: "demo-gateway-12", Ordinal: 12, Outdated: true, Running: true, NotReadySince: t0.Add(time.Second),
		Sessions: 7, DrainStarted: t0, DrainDeadline: t0.Add(90 * time.Second)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	p.Labels[appsv1.ControllerRevisionHashLabelKey] = "demo-gateway-new"
	delete(p.Annotations, AnnotationDrainStarted)
	if got := Observe(p, sts, 0); got.Outdated || got.Draining() {
		t.Fatalf("current, not draining: %+v", got)
	}
	if Ordinal("demo-gateway-x") != -1 || Ordinal("demo-gateway-3") != 3 {
		t.Fatal("ordinal")
	}
}
