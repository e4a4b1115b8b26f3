// Package chatctl is the kubectl chat plugin: `status` shows one
// ChatCluster at a glance (phase, conditions, components, every gateway pod
// with its live sessions, topics, events), and `restart` asks the operator
// for a rolling restart of every component. Each command is a function of a
// Kubernetes client and an io.Writer, so that it is tested against a real
// API server; cmd/kubectl-chat only parses flags and builds the client.
package chatctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/resources"
)

// DefaultEvents is how many of the cluster's latest events status shows.
const DefaultEvents = 10

// StatusOptions tune Status.
type StatusOptions struct {
	// Admin asks each gateway pod for its sessions; nil: not asked.
	Admin gatewayadmin.Admin
	// Events is how many of the latest events to show (0: DefaultEvents).
	Events int
	// Now is the clock of ages (nil: time.Now).
	Now func() time.Time
}

// Restart asks the operator for a rolling restart of cluster ns/name: it
// sets resources.AnnotationRestartedAt to at, which the operator copies onto
// every component's pod template. Deployments roll; the gateways roll
// through the operator's drain roll, one drained pod after another.
func Restart(ctx context.Context, c client.Client, w io.Writer, ns, name string, at time.Time) error {
	var cc chatv1.ChatCluster
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &cc); err != nil {
		return fmt.Errorf("get chatcluster %s/%s: %w", ns, name, err)
	}
	stamp := at.UTC().Format(time.RFC3339)
	if cc.Annotations[resources.AnnotationRestartedAt] == stamp {
		// Two restarts in the same second would set the same value and roll nothing.
		return fmt.Errorf("chatcluster %s/%s: a restart was already requested at %s; wait a second and ask again", ns, name, stamp)
	}
	patch := client.MergeFrom(cc.DeepCopy())
	metav1.SetMetaDataAnnotation(&cc.ObjectMeta, resources.AnnotationRestartedAt, stamp)
	if err := c.Patch(ctx, &cc, patch); err != nil {
		return fmt.Errorf("annotate chatcluster %s/%s: %w", ns, name, err)
	}
	_, err := fmt.Fprintf(w, "chatcluster %s/%s: restart requested at %s (annotation %s); the operator rolls every component, the gateways drained one at a time\n",
		ns, name, stamp, resources.AnnotationRestartedAt)
	return err
}

// view is everything status shows, gathered before anything is written.
type view struct {
	cc          *chatv1.ChatCluster
	now         time.Time
	deployments map[string]*appsv1.Deployment
	gateway     *appsv1.StatefulSet
	pods        []gatewayPod
	events      []eventsv1.Event
	eventsErr   error
}

// gatewayPod is one gateway pod and what it answered.
type gatewayPod struct {
	pod   *corev1.Pod
	stats *gochatv1.StatsResponse
	err   error // why there are no stats
}

// Status writes cluster ns/name at a glance to w.
func Status(ctx context.Context, c client.Client, w io.Writer, ns, name string, opts StatusOptions) error {
	v, err := gather(ctx, c, ns, name, opts)
	if err != nil {
		return err
	}
	n := opts.Events
	if n <= 0 {
		n = DefaultEvents
	}
	return render(w, v, n)
}

func gather(ctx context.Context, c client.Client, ns, name string, opts StatusOptions) (*view, error) {
	v := &view{cc: &chatv1.ChatCluster{}, now: time.Now(), deployments: map[string]*appsv1.Deployment{}}
	if opts.Now != nil {
		v.now = opts.Now()
	}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, v.cc); err != nil {
		return nil, fmt.Errorf("get chatcluster %s/%s: %w", ns, name, err)
	}
	for _, comp := range []string{resources.Logic, resources.Repo, resources.Task} {
		var d appsv1.Deployment
		err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: resources.Name(v.cc, comp)}, &d)
		switch {
		case err == nil:
			v.deployments[comp] = &d
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("get deployment %s: %w", resources.Name(v.cc, comp), err)
		}
	}
	var sts appsv1.StatefulSet
	err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: resources.Name(v.cc, resources.Gateway)}, &sts)
	switch {
	case err == nil:
		v.gateway = &sts
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get statefulset %s: %w", resources.Name(v.cc, resources.Gateway), err)
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(resources.SelectorLabels(v.cc, resources.Gateway))); err != nil {
		return nil, fmt.Errorf("list gateway pods: %w", err)
	}
	sort.Slice(pods.Items, func(i, j int) bool {
		return gatewayroll.Ordinal(pods.Items[i].Name) < gatewayroll.Ordinal(pods.Items[j].Name)
	})
	v.pods = make([]gatewayPod, len(pods.Items))
	var asked []*corev1.Pod
	var askedAt []int
	for i := range pods.Items {
		gp := &v.pods[i]
		gp.pod = &pods.Items[i]
		switch {
		case opts.Admin == nil:
			gp.err = errors.New("not asked")
		case gp.pod.Status.PodIP == "":
			gp.err = errors.New("no pod IP yet")
		default:
			asked, askedAt = append(asked, gp.pod), append(askedAt, i)
		}
	}
	if len(asked) > 0 {
		stats, errs := gatewayadmin.StatsOf(ctx, opts.Admin, asked)
		for j, i := range askedAt {
			v.pods[i].stats, v.pods[i].err = stats[j], errs[j]
		}
	}
	// Events are a help, not the status: a user who may not list them
	// still sees the rest.
	var events eventsv1.EventList
	if err := c.List(ctx, &events, client.InNamespace(ns)); err != nil {
		v.eventsErr = err
	}
	for _, e := range events.Items {
		if e.Regarding.Kind == "ChatCluster" && e.Regarding.Name == name {
			v.events = append(v.events, e)
		}
	}
	sort.SliceStable(v.events, func(i, j int) bool { return eventTime(v.events[i]).Before(eventTime(v.events[j])) })
	return v, nil
}

// eventTime is when an event (or the latest of its series) was last seen.
func eventTime(e eventsv1.Event) time.Time {
	switch {
	case e.Series != nil:
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.DeprecatedLastTimestamp.IsZero():
		return e.DeprecatedLastTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

func render(out io.Writer, v *view, maxEvents int) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	cc := v.cc
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }

	p("ChatCluster:\t%s/%s\n", cc.Namespace, cc.Name)
	p("Phase:\t%s\n", orDash(string(cc.Status.Phase)))
	if cc.Status.ObservedGeneration != cc.Generation {
		p("Observed generation:\t%d of %d (the operator has not acted on the latest spec yet)\n", cc.Status.ObservedGeneration, cc.Generation)
	}
	p("Image:\t%s\n", orDash(resources.Image(cc, resources.Gateway)))
	p("Endpoint:\t%s\n", orDash(cc.Status.Endpoint))
	p("Sessions:\t%d (status)\n", cc.Status.Sessions)
	if at := cc.Annotations[resources.AnnotationRestartedAt]; at != "" {
		p("Restart requested:\t%s\n", at)
	}

	p("\nConditions:\n")
	p("TYPE\tSTATUS\tREASON\tAGE\tMESSAGE\n")
	if len(cc.Status.Conditions) == 0 {
		p("(none yet)\n")
	}
	for _, c := range cc.Status.Conditions {
		p("%s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, orDash(c.Reason), age(v.now, c.LastTransitionTime.Time), oneLine(c.Message))
	}

	p("\nComponents:\n")
	p("COMPONENT\tDESIRED\tREADY\tUPDATED\tREVISION\n")
	if s := v.gateway; s != nil {
		rev := orDash(s.Status.UpdateRevision)
		if s.Status.CurrentRevision != "" && s.Status.CurrentRevision != s.Status.UpdateRevision {
			rev += " (rolling from " + s.Status.CurrentRevision + ")"
		}
		p("gateway\t%d\t%d\t%d\t%s\n", derefOr(s.Spec.Replicas, 0), s.Status.ReadyReplicas, s.Status.UpdatedReplicas, rev)
	} else {
		p("gateway\t-\t-\t-\t(no StatefulSet yet)\n")
	}
	for _, comp := range []string{resources.Logic, resources.Repo, resources.Task} {
		d := v.deployments[comp]
		if d == nil {
			p("%s\t-\t-\t-\t(no Deployment yet)\n", comp)
			continue
		}
		p("%s\t%d\t%d\t%d\t%s\n", comp, derefOr(d.Spec.Replicas, 1), d.Status.ReadyReplicas, d.Status.UpdatedReplicas, orDash(d.Annotations["deployment.kubernetes.io/revision"]))
	}

	p("\nGateway pods:\n")
	p("POD\tREADY\tREVISION\tSESSIONS\tDRAIN\n")
	if len(v.pods) == 0 {
		p("(none)\n")
	}
	var live int64
	answered := 0
	for _, gp := range v.pods {
		rev := orDash(gp.pod.Labels[appsv1.ControllerRevisionHashLabelKey])
		if v.gateway != nil && v.gateway.Status.UpdateRevision != "" && rev != v.gateway.Status.UpdateRevision {
			rev += " (outdated)"
		}
		sessions := ""
		switch {
		case gp.stats != nil:
			sessions = strconv.FormatInt(gp.stats.Sessions, 10)
			live += gp.stats.Sessions
			answered++
		case gp.err != nil:
			// The row names the pod already.
			msg := strings.TrimPrefix(gp.err.Error(), "stats of gateway "+gp.pod.Name+": ")
			sessions = "unreachable: " + oneLine(msg)
		}
		p("%s\t%s\t%s\t%s\t%s\n", gp.pod.Name, podReady(gp.pod), rev, sessions, drainState(v.now, gp))
	}
	if answered > 0 {
		p("Live sessions:\t%d over %d of %d gateway pod(s)\n", live, answered, len(v.pods))
	}

	p("\nKafka topics:\n")
	p("TOPIC\tPARTITIONS\n")
	if len(cc.Status.Kafka.Topics) == 0 {
		p("(none ready yet)\n")
	}
	for _, t := range cc.Status.Kafka.Topics {
		p("%s\t%d\n", t, cc.Status.Kafka.Partitions)
	}

	p("\nEvents:\n")
	switch {
	case v.eventsErr != nil:
		p("(cannot list events: %s)\n", oneLine(v.eventsErr.Error()))
	case len(v.events) == 0:
		p("(none)\n")
	default:
		p("AGE\tTYPE\tREASON\tCOUNT\tMESSAGE\n")
		events := v.events
		if len(events) > maxEvents {
			events = events[len(events)-maxEvents:]
		}
		for _, e := range events {
			count := int32(1)
			if e.Series != nil {
				count = e.Series.Count
			}
			p("%s\t%s\t%s\t%d\t%s\n", age(v.now, eventTime(e)), e.Type, e.Reason, count, oneLine(e.Note))
		}
	}
	return w.Flush()
}

// drainState describes a gateway pod's drain: from its annotations (the
// operator's clock) and what the pod itself answered.
func drainState(now time.Time, gp gatewayPod) string {
	a := gp.pod.Annotations
	started, deadline := a[gatewayroll.AnnotationDrainStarted], a[gatewayroll.AnnotationDrainDeadline]
	var parts []string
	if started != "" {
		s := "draining since " + started
		if t, err := time.Parse(time.RFC3339Nano, started); err == nil {
			s = "draining for " + now.Sub(t).Round(time.Second).String()
		}
		if t, err := time.Parse(time.RFC3339Nano, deadline); err == nil {
			if left := t.Sub(now).Round(time.Second); left > 0 {
				s += ", deadline in " + left.String()
			} else {
				s += ", past its deadline"
			}
		}
		if n := a[gatewayroll.AnnotationDrainSessions]; n != "" && n != "-1" {
			s += ", " + n + " session(s) at the start"
		}
		parts = append(parts, s)
	}
	if gp.stats != nil && gp.stats.Draining && started == "" {
		parts = append(parts, "draining (by the pod itself: preStop or SIGTERM)")
	}
	if gp.pod.DeletionTimestamp != nil {
		parts = append(parts, "terminating")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}

func podReady(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return strings.ToLower(string(c.Status))
		}
	}
	return "false"
}

func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return d.Round(time.Second).String()
	case d < 2*time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table row on one line: messages may hold newlines (a
// log tail), and a tab would break the columns.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " | ", "\n", " | ", "\t", " ").Replace(strings.TrimSpace(s))
}

func derefOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}
