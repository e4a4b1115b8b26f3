package controller

import (
	"context"
	"fmt"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/resources"
)

// gatewayRoll is what one pass observed of the gateways.
type gatewayRoll struct {
	sts   *appsv1.StatefulSet // nil before it exists
	pods  map[string]*corev1.Pod
	stats map[string]*gochatv1.StatsResponse // pods that answered
	view  []gatewayroll.Pod
}

// reader reads around the cache: the roll must never act on a stale pod
// (a drain annotation not seen yet would restart that drain's clock).
func (r *Reconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

func (r *Reconciler) readyTimeout() time.Duration {
	if r.ReadyTimeout > 0 {
		return r.ReadyTimeout
	}
	return gatewayroll.DefaultReadyTimeout
}

// observeGateways reads the StatefulSet, its pods and each pod's Stats.
func (r *Reconciler) observeGateways(ctx context.Context, cc *chatv1.ChatCluster) (*gatewayRoll, error) {
	roll := &gatewayRoll{pods: map[string]*corev1.Pod{}, stats: map[string]*gochatv1.StatsResponse{}}
	var sts appsv1.StatefulSet
	err := r.reader().Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.Name(cc, resources.Gateway)}, &sts)
	if apierrors.IsNotFound(err) {
		return roll, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get gateway statefulset: %w", err)
	}
	roll.sts = &sts
	var pods corev1.PodList
	if err := r.reader().List(ctx, &pods, client.InNamespace(cc.Namespace), client.MatchingLabels(resources.SelectorLabels(cc, resources.Gateway))); err != nil {
		return nil, fmt.Errorf("list gateway pods: %w", err)
	}
	var asked []*corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		roll.pods[p.Name] = p
		if r.Admin != nil && p.Status.PodIP != "" && p.Status.Phase == corev1.PodRunning {
			asked = append(asked, p)
		}
	}
	if len(asked) > 0 {
		stats, errs := gatewayadmin.StatsOf(ctx, r.Admin, asked)
		for i, p := range asked {
			if errs[i] != nil {
				logf.FromContext(ctx).V(1).Info("gateway stats", "pod", p.Name, "err", errs[i].Error())
				continue
			}
			roll.stats[p.Name] = stats[i]
		}
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		sessions := int64(-1)
		if st, ok := roll.stats[p.Name]; ok {
			sessions = st.Sessions
		}
		roll.view = append(roll.view, gatewayroll.Observe(p, &sts, sessions))
	}
	return roll, nil
}

// sessions is the sum over the gateways that answered.
func (g *gatewayRoll) sessions() int64 {
	var n int64
	for _, st := range g.stats {
		n += st.Sessions
	}
	return n
}

// outdated counts the gateway pods not on the update revision, terminating
// ones included: until its replacement exists, the roll is not done.
func (g *gatewayRoll) outdated() int32 {
	var n int32
	for _, p := range g.view {
		if p.Outdated {
			n++
		}
	}
	return n
}

// images are the images the gateway pods run, terminating ones included.
func (g *gatewayRoll) images() []string {
	var out []string
	for _, p := range g.pods {
		if len(p.Spec.Containers) > 0 {
			out = append(out, p.Spec.Containers[0].Image)
		}
	}
	return out
}

// plan decides this pass of the roll.
func (g *gatewayRoll) plan(cc *chatv1.ChatCluster, now time.Time, readyTimeout time.Duration) gatewayroll.Step {
	desired := int32(2)
	if cc.Spec.Gateway.Replicas != nil {
		desired = *cc.Spec.Gateway.Replicas
	}
	in := gatewayroll.Input{
		Now: now, Pods: g.view, Desired: desired, Current: desired,
		MaxUnavailable: cc.Spec.Gateway.Drain.MaxUnavailable,
		Timeout:        cc.Spec.Gateway.Drain.DrainTimeout(),
		ReadyTimeout:   readyTimeout,
	}
	if g.sts != nil && g.sts.Spec.Replicas != nil {
		in.Current = *g.sts.Spec.Replicas
	}
	return gatewayroll.Plan(in)
}

// rollGateways carries out one pass of the roll: it starts drains, resumes
// drains a gateway does not know about (the operator restarted between the
// annotation and the call, or the process restarted), and removes drained pods.
func (r *Reconciler) rollGateways(ctx context.Context, cc *chatv1.ChatCluster, g *gatewayRoll, step gatewayroll.Step, now time.Time) error {
	if g.sts == nil || g.sts.Status.ObservedGeneration < g.sts.Generation {
		return nil // the StatefulSet's revisions are not current yet
	}
	timeout := cc.Spec.Gateway.Drain.DrainTimeout()
	window := resources.GatewayDrainWindow(cc)
	for _, name := range step.Start {
		pod := g.pods[name]
		sessions := int64(-1)
		if st, ok := g.stats[name]; ok {
			sessions = st.Sessions
		}
		deadline := now.Add(timeout)
		// The optimistic lock refuses the patch if the pod changed since it
		// was read, so a drain that began meanwhile is never begun again.
		patch := client.MergeFromWithOptions(pod.DeepCopy(), client.MergeFromWithOptimisticLock{})
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[gatewayroll.AnnotationDrainStarted] = now.UTC().Format(time.RFC3339Nano)
		pod.Annotations[gatewayroll.AnnotationDrainDeadline] = deadline.UTC().Format(time.RFC3339Nano)
		pod.Annotations[gatewayroll.AnnotationDrainSessions] = strconv.FormatInt(sessions, 10)
		if err := r.Patch(ctx, pod, patch); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("mark gateway pod %s draining: %w", name, err)
		}
		for i := range g.view {
			if g.view[i].Name == name {
				g.view[i].DrainStarted, g.view[i].DrainDeadline = now, deadline
			}
		}
		r.eventAbout(cc, pod, corev1.EventTypeNormal, "DrainStarted", "Drain", "draining gateway pod %s (%s) until %s", name, sessionsText(sessions), deadline.UTC().Format(time.RFC3339))
	}
	removing := map[string]bool{}
	for _, rm := range step.Remove {
		removing[rm.Pod] = true
	}
	for _, p := range g.view {
		pod := g.pods[p.Name]
		if !p.Draining() || p.Terminating || !p.Running || removing[p.Name] || r.Admin == nil {
			continue
		}
		if st, ok := g.stats[p.Name]; ok && st.Draining {
			continue
		}
		left := p.DrainDeadline.Sub(now)
		if left <= 0 {
			continue
		}
		if _, err := r.Admin.Drain(ctx, pod, min(window, left), left); err != nil {
			// Not fatal: the next pass asks again, and the deadline removes
			// the pod whatever happens.
			logf.FromContext(ctx).Info("drain call failed; retrying", "pod", p.Name, "err", err.Error())
		}
	}
	for _, rm := range step.Remove {
		pod := g.pods[rm.Pod]
		if !rm.ScaleDown {
			// The UID precondition never deletes the replacement that took this name.
			err := r.Delete(ctx, pod, client.Preconditions{UID: &pod.UID})
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("delete drained gateway pod %s: %w", rm.Pod, err)
			}
		}
		atStart := pod.Annotations[gatewayroll.AnnotationDrainSessions]
		if rm.TimedOut {
			r.eventAbout(cc, pod, corev1.EventTypeWarning, "DrainTimedOut", "Drain", "gateway pod %s still held %s at its deadline after %s (%s sessions at the start); removing it",
				rm.Pod, sessionsText(rm.Sessions), rm.Took.Round(time.Millisecond), atStart)
		} else {
			r.eventAbout(cc, pod, corev1.EventTypeNormal, "DrainCompleted", "Drain", "gateway pod %s emptied in %s (%s sessions at the start)", rm.Pod, rm.Took.Round(time.Millisecond), atStart)
		}
		if rm.ScaleDown {
			r.eventAbout(cc, pod, corev1.EventTypeNormal, "GatewayRemoved", "ScaleDown", "gateway pod %s leaves with the scale-down to %d", rm.Pod, step.Replicas)
		} else {
			r.eventAbout(cc, pod, corev1.EventTypeNormal, "GatewayReplaced", "Delete", "deleted gateway pod %s; the StatefulSet recreates it on revision %s", rm.Pod, g.sts.Status.UpdateRevision)
		}
	}
	return nil
}

func sessionsText(n int64) string {
	if n < 0 {
		return "sessions unknown"
	}
	return fmt.Sprintf("%d session(s)", n)
}
