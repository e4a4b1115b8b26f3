// Package gatewayroll decides the gateway roll: which pods to drain, which
// to remove, how far a scale-down may go. Pure functions of what the
// controller observed in one pass; the controller carries them out.
package gatewayroll

import (
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// The drain's clock lives on the pod, so that an operator that restarts (or
// a new leader) resumes the same drain instead of starting it again.
const (
	AnnotationDrainStarted  = "chat.gochat.io/drain-started"
	AnnotationDrainDeadline = "chat.gochat.io/drain-deadline"
	// AnnotationDrainSessions records the sessions a pod held when its drain began.
	AnnotationDrainSessions = "chat.gochat.io/drain-sessions"
)

// DefaultReadyTimeout bounds how long a replacement gateway may take to
// become Ready before the roll halts with RolloutStuck.
const DefaultReadyTimeout = 5 * time.Minute

// Pod is what one pass of the roll knows about one gateway pod.
type Pod struct {
	Name    string
	Ordinal int
	// Outdated: its controller-revision-hash is not the StatefulSet's updateRevision.
	Outdated bool
	Ready    bool
	// Running: the pod runs and has an IP, so a process may hold sessions.
	Running     bool
	Terminating bool
	// NotReadySince is when the pod last became not Ready (or was created).
	NotReadySince time.Time
	// Sessions it holds; -1 when it did not answer.
	Sessions int64
	// DrainStarted and DrainDeadline come from its annotations; zero when not draining.
	DrainStarted, DrainDeadline time.Time
}

func (p Pod) Draining() bool { return !p.DrainStarted.IsZero() }

// empty reports a drained pod that may go: no sessions left, or no process
// that could hold any.
func (p Pod) empty() bool { return p.Sessions == 0 || !p.Running }

// Input is everything one pass decides from.
type Input struct {
	Now  time.Time
	Pods []Pod
	// Desired is spec.gateway.replicas; Current the StatefulSet's replicas now.
	Desired, Current int32
	MaxUnavailable   int32
	Timeout          time.Duration
	ReadyTimeout     time.Duration
}

// Removal is a drained (or timed out) pod that leaves in this pass.
type Removal struct {
	Pod      string
	TimedOut bool
	Sessions int64
	Took     time.Duration
	Ordinal  int
	// ScaleDown: it leaves by lowering the StatefulSet's replicas, not by a delete.
	ScaleDown bool
}

// Step is what one pass does.
type Step struct {
	// Start are pods whose drain begins now.
	Start []string
	// Remove are drained pods that go now.
	Remove []Removal
	// Replicas is the StatefulSet's replicas: lowered only past pods that are drained.
	Replicas int32
	// Stuck names a replacement that did not become Ready within ReadyTimeout.
	Stuck string
	// Busy: the roll is not finished, look again soon.
	Busy bool
	// RequeueAfter is when to look again while busy.
	RequeueAfter time.Duration
}

// Plan decides one pass of the gateway roll from what is observed now,
// and nothing else: no counters survive between passes. Pods being drained
// leave once empty or past their deadline; a scale-down drains the highest
// ordinals first and lowers the replicas past them once they are done;
// outdated pods are drained fewest sessions first, keeping at most
// MaxUnavailable gateways unavailable (not Ready ones count); a replacement
// that stays not Ready for ReadyTimeout halts the roll.
func Plan(in Input) Step {
	step := Step{Replicas: in.Desired, RequeueAfter: time.Second}
	maxUnavail := int(in.MaxUnavailable)
	if maxUnavail < 1 {
		maxUnavail = 1
	}
	pods := make([]Pod, 0, len(in.Pods))
	for _, p := range in.Pods {
		// Pods past the StatefulSet's replicas are already being removed by it.
		if p.Ordinal < int(in.Current) || in.Current == 0 && p.Ordinal < int(in.Desired) {
			pods = append(pods, p)
		}
	}
	excess := func(p Pod) bool { return p.Ordinal >= int(in.Desired) }

	inFlight, unavailable, outdated := 0, int(in.Desired), 0
	for _, p := range pods {
		if p.Draining() {
			inFlight++
		}
		if !excess(p) && p.Ready && !p.Terminating && !p.Draining() {
			unavailable--
		}
		if p.Outdated && !excess(p) {
			outdated++
		}
	}
	if unavailable < 0 {
		unavailable = 0
	}

	// Drains in progress: leave when empty or out of time.
	for _, p := range pods {
		if !p.Draining() || p.Terminating {
			continue
		}
		switch {
		case p.empty():
			step.Remove = append(step.Remove, Removal{Pod: p.Name, Sessions: max(p.Sessions, 0), Took: in.Now.Sub(p.DrainStarted), Ordinal: p.Ordinal, ScaleDown: excess(p)})
		case !in.Now.Before(p.DrainDeadline):
			step.Remove = append(step.Remove, Removal{Pod: p.Name, TimedOut: true, Sessions: p.Sessions, Took: in.Now.Sub(p.DrainStarted), Ordinal: p.Ordinal, ScaleDown: excess(p)})
		default:
			if left := p.DrainDeadline.Sub(in.Now); left < step.RequeueAfter {
				step.RequeueAfter = left
			}
		}
	}
	removed := map[string]bool{}
	for _, r := range step.Remove {
		removed[r.Pod] = true
	}

	// A replacement that never becomes Ready halts the roll: draining more
	// would only take more gateways away.
	for _, p := range pods {
		if !p.Outdated && !p.Terminating && !p.Ready && !p.Draining() && !excess(p) && in.Now.Sub(p.NotReadySince) >= in.ReadyTimeout {
			if outdated > 0 || inFlight > 0 {
				step.Stuck = p.Name
			}
			break
		}
	}

	// Scale-down: highest ordinals first; the replicas come down past
	// every excess pod that is drained.
	if in.Desired < in.Current {
		var ex []Pod
		for _, p := range pods {
			if excess(p) {
				ex = append(ex, p)
			}
		}
		sort.Slice(ex, func(i, j int) bool { return ex[i].Ordinal > ex[j].Ordinal })
		step.Replicas = in.Desired
		for _, p := range ex {
			done := removed[p.Name] || p.Terminating || !p.Running && !p.Draining()
			if !done && int32(p.Ordinal)+1 > step.Replicas {
				step.Replicas = int32(p.Ordinal) + 1
			}
			if !p.Draining() && !done && inFlight < maxUnavail {
				step.Start = append(step.Start, p.Name)
				inFlight++
			}
		}
		// Drained excess pods below a busy one wait for it: the replicas
		// can only come down from the top.
		kept := step.Remove[:0]
		for _, rm := range step.Remove {
			if !rm.ScaleDown || rm.Ordinal >= int(step.Replicas) {
				kept = append(kept, rm)
			}
		}
		step.Remove = kept
		step.Busy = true
	} else if in.Desired > in.Current {
		step.Replicas = in.Desired
	}

	// Outdated pods: not Ready ones first (they are unavailable already),
	// then fewest sessions.
	if step.Stuck == "" {
		var cand []Pod
		for _, p := range pods {
			if p.Outdated && !excess(p) && !p.Draining() && !p.Terminating {
				cand = append(cand, p)
			}
		}
		sort.SliceStable(cand, func(i, j int) bool {
			a, b := cand[i], cand[j]
			if a.Ready != b.Ready {
				return !a.Ready
			}
			if sa, sb := sessionsKey(a), sessionsKey(b); sa != sb {
				return sa < sb
			}
			return a.Ordinal > b.Ordinal
		})
		for _, p := range cand {
			if inFlight >= maxUnavail {
				break
			}
			if p.Ready {
				if unavailable >= maxUnavail {
					break
				}
				unavailable++
			}
			step.Start = append(step.Start, p.Name)
			inFlight++
		}
	}
	// Unavailable gateways alone are not a roll: the StatefulSet's status
	// changes wake the controller for those.
	if outdated > 0 || inFlight > 0 || len(step.Remove) > 0 {
		step.Busy = true
	}
	return step
}

// sessionsKey orders a pod that did not answer after every pod that did.
func sessionsKey(p Pod) int64 {
	if p.Sessions < 0 {
		return 1 << 62
	}
	return p.Sessions
}

// ordinal is a StatefulSet pod's index, from its name.
func Ordinal(name string) int {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(name[i+1:])
	if err != nil {
		return -1
	}
	return n
}

// Observe turns a pod (and its answered sessions) into what Plan reads.
func Observe(pod *corev1.Pod, sts *appsv1.StatefulSet, sessions int64) Pod {
	p := Pod{
		Name:          pod.Name,
		Ordinal:       Ordinal(pod.Name),
		Outdated:      sts.Status.UpdateRevision != "" && pod.Labels[appsv1.ControllerRevisionHashLabelKey] != sts.Status.UpdateRevision,
		Running:       pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP != "",
		Terminating:   pod.DeletionTimestamp != nil,
		NotReadySince: pod.CreationTimestamp.Time,
		Sessions:      sessions,
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			p.Ready = c.Status == corev1.ConditionTrue
			if !p.Ready && c.LastTransitionTime.After(p.NotReadySince) {
				p.NotReadySince = c.LastTransitionTime.Time
			}
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, pod.Annotations[AnnotationDrainStarted]); err == nil {
		p.DrainStarted = t
		p.DrainDeadline = t
		if d, err := time.Parse(time.RFC3339Nano, pod.Annotations[AnnotationDrainDeadline]); err == nil {
			p.DrainDeadline = d
		}
	}
	return p
}

// DrainingStatus lists the pods being emptied, for status.gateway.draining.
func DrainingStatus(pods []Pod) []chatv1.DrainingGateway {
	var out []chatv1.DrainingGateway
	for _, p := range pods {
		if p.Draining() {
			out = append(out, chatv1.DrainingGateway{
				Pod: p.Name, StartedAt: metav1.NewTime(p.DrainStarted), Deadline: metav1.NewTime(p.DrainDeadline), Sessions: p.Sessions,
			})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	return out
}
