// Package status computes a ChatCluster's status from what the operator
// observed, in one place and as a pure function: the controller gathers,
// this decides, the controller writes.
package status

import (
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/kafka"
	"github.com/gochat/gochat/operator/internal/resources"
)

// Condition reasons besides the Kafka ones (internal/kafka).
const (
	ReasonReachable          = "Reachable"
	ReasonUnreachable        = "Unreachable"
	ReasonSecretMissing      = "SecretMissing"
	ReasonMigrated           = "Migrated"
	ReasonMigrating          = "Migrating"
	ReasonMigrationFailed    = "MigrationFailed"
	ReasonImagePullFailed    = "ImagePullFailed"
	ReasonInvalidDSN         = "InvalidDSN"
	ReasonAccessDenied       = "AccessDenied"
	ReasonRolloutComplete    = "RolloutComplete"
	ReasonRollingOut         = "RollingOut"
	ReasonDraining           = "Draining"
	ReasonRolloutStuck       = "RolloutStuck"
	ReasonReady              = "Ready"
	ReasonScaling            = "Scaling"
	ReasonComponentsNotReady = "ComponentsNotReady"
	ReasonNoImage            = "NoImage"

	// Reconciled: True, or the API server's refusal of a step.
	ReasonApplied      = "Applied"
	ReasonForbidden    = "Forbidden"
	ReasonQuota        = "QuotaExceeded"
	ReasonInvalid      = "Invalid"
	ReasonOwnedByOther = "OwnedByOther"
	ReasonConflict     = "Conflict"
	ReasonAPIError     = "APIError"
)

// Check is the outcome of one check: nil Err is success.
type Check struct {
	Reason  string
	Message string
	Err     error
}

// Observed is everything status depends on.
type Observed struct {
	Deployments   map[string]*appsv1.Deployment // logic, repo, task; nil when missing
	Gateway       *appsv1.StatefulSet
	ClientService *corev1.Service
	Migration     *batchv1.Job // the Job for the spec's repo image
	MigratedImage string       // the image whose schema migration last succeeded
	// MigrationCheck is why the migration does not succeed (MigrationFailed
	// with the failed pod's log tail, ImagePullFailed); zero while it runs.
	MigrationCheck Check
	// Database is the MySQL probe; its Message says where it answered.
	Database Check
	// ImagePull is a workload's pod that cannot pull its image (ImagePullFailed).
	ImagePull  Check
	Secrets    Check // every referenced Secret key exists
	Kafka      Check
	Topics     []string
	Partitions int32
	Redis      Check
	// Reconcile is a step the API server refused (apply, create, delete).
	Reconcile Check
	Sessions  int64
	// GatewayOutdated counts the gateway pods not on the StatefulSet's
	// update revision (not yet replaced by the roll).
	GatewayOutdated int32
	// GatewayImages are the images the gateway pods run, one per pod; nil
	// when the pods were not read in this pass.
	GatewayImages []string
	// Draining are the gateway pods being emptied.
	Draining []chatv1.DrainingGateway
	// StuckGateway is a replacement gateway that did not become Ready in
	// time, which halts the roll; empty when none.
	StuckGateway string
}

func desired(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// progress is one component's state, apart from its counts: ready (no
// fewer Ready pods than desired, on any revision), rolling (pods of an
// older revision remain), lost (fewer Ready pods than the last status said,
// and fewer than desired: capacity went, which a scale-up never does).
type progress struct {
	name                 string
	ready, rolling, lost bool
}

// Compute returns the status for cc given what was observed. Conditions
// keep their lastTransitionTime when they do not change.
func Compute(cc *chatv1.ChatCluster, o Observed) chatv1.ChatClusterStatus {
	prev := cc.Status
	s := chatv1.ChatClusterStatus{
		ObservedGeneration: cc.Generation,
		Sessions:           o.Sessions,
		Conditions:         append([]metav1.Condition(nil), prev.Conditions...),
		MigratedImage:      o.MigratedImage,
	}
	set := func(t string, ok bool, reason, msg string) {
		st := metav1.ConditionFalse
		if ok {
			st = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: t, Status: st, Reason: reason, Message: msg, ObservedGeneration: cc.Generation})
	}

	// Components: ready, updated and scaling are told apart.
	var comps []progress
	comp := func(name string, want *int32, was chatv1.ComponentStatus) chatv1.ComponentStatus {
		st := chatv1.ComponentStatus{Replicas: desired(want), Image: was.Image}
		d := o.Deployments[name]
		if d == nil {
			comps = append(comps, progress{name: name})
			return st
		}
		st.ReadyReplicas, st.UpdatedReplicas = d.Status.ReadyReplicas, d.Status.UpdatedReplicas
		observed := d.Status.ObservedGeneration >= d.Generation
		if observed && d.Status.UpdatedReplicas == d.Status.Replicas {
			st.Image = templateImage(d.Spec.Template.Spec)
		}
		comps = append(comps, progress{
			name:    name,
			ready:   st.ReadyReplicas >= st.Replicas,
			rolling: observed && d.Status.UpdatedReplicas < d.Status.Replicas,
			lost:    st.ReadyReplicas < st.Replicas && st.ReadyReplicas < was.ReadyReplicas,
		})
		return st
	}
	s.Logic = comp(resources.Logic, cc.Spec.Logic.Replicas, prev.Logic)
	s.Repo = comp(resources.Repo, cc.Spec.Repo.Replicas, prev.Repo)
	s.Task = comp(resources.Task, cc.Spec.Task.Replicas, prev.Task)

	gw := chatv1.GatewayStatus{Replicas: desired(cc.Spec.Gateway.Replicas), Selector: resources.GatewaySelector(cc), Draining: o.Draining, Image: prev.Gateway.Image}
	gwp := progress{name: resources.Gateway}
	gwRolled := false
	if sts := o.Gateway; sts != nil {
		gw.ReadyReplicas, gw.UpdatedReplicas = sts.Status.ReadyReplicas, sts.Status.UpdatedReplicas
		observed := sts.Status.ObservedGeneration >= sts.Generation
		gwRolled = observed && o.GatewayOutdated == 0 && len(o.Draining) == 0 && o.StuckGateway == ""
		gwp.ready = gw.ReadyReplicas >= gw.Replicas
		gwp.rolling = o.GatewayOutdated > 0
		gwp.lost = gw.ReadyReplicas < gw.Replicas && gw.ReadyReplicas < prev.Gateway.ReadyReplicas
	}
	// The pods say what runs: the template may already name an image that
	// no gateway runs yet.
	if img := sameImage(o.GatewayImages); img != "" {
		gw.Image = img
	}
	comps = append(comps, gwp)
	s.Gateway = gw
	s.GatewaysReady = fmt.Sprintf("%d/%d", gw.ReadyReplicas, gw.Replicas)
	s.Image = runningImage(gw.Image, s.Logic.Image, s.Repo.Image, s.Task.Image)
	switch {
	case o.StuckGateway != "":
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonRolloutStuck,
			fmt.Sprintf("gateway %s on the new revision did not become Ready: no further gateway is drained until it does or the spec changes", o.StuckGateway))
	case len(o.Draining) > 0:
		var pods []string
		for _, d := range o.Draining {
			pods = append(pods, fmt.Sprintf("%s (%s)", d.Pod, sessionsLeft(d.Sessions)))
		}
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonDraining,
			fmt.Sprintf("%d of %d gateway(s) run the current revision; draining %s", gw.UpdatedReplicas, gw.Replicas, strings.Join(pods, ", ")))
	case gwRolled:
		set(chatv1.ConditionGatewayRolloutComplete, true, ReasonRolloutComplete, fmt.Sprintf("every gateway runs the current revision (%d of %d desired Ready)", gw.ReadyReplicas, gw.Replicas))
	case o.Gateway == nil:
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonRollingOut, "the gateway StatefulSet does not exist yet")
	case o.Gateway.Status.ObservedGeneration < o.Gateway.Generation:
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonRollingOut, fmt.Sprintf("the StatefulSet controller has not yet seen generation %d of the gateways", o.Gateway.Generation))
	default:
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonRollingOut, fmt.Sprintf("%d gateway(s) on an earlier revision, to be drained and replaced", o.GatewayOutdated))
	}

	// Dependencies.
	migrationFailed := false
	if o.Secrets.Err != nil {
		set(chatv1.ConditionDatabaseMigrated, false, ReasonSecretMissing, o.Secrets.Err.Error())
	} else {
		want := resources.Image(cc, resources.Migrate)
		switch {
		case o.MigratedImage == want:
			set(chatv1.ConditionDatabaseMigrated, true, ReasonMigrated, "schema migrated for "+want)
		case o.MigrationCheck.Err != nil:
			// Failed, or its image cannot be pulled: a person fixes it (the
			// Job is rerun on a backoff, or at once when its inputs change).
			migrationFailed = true
			set(chatv1.ConditionDatabaseMigrated, false, o.MigrationCheck.Reason, o.MigrationCheck.Err.Error())
		case o.Migration != nil && JobFailed(o.Migration):
			migrationFailed = true
			set(chatv1.ConditionDatabaseMigrated, false, ReasonMigrationFailed, "migration Job "+o.Migration.Name+" failed: see its logs")
		default:
			set(chatv1.ConditionDatabaseMigrated, false, ReasonMigrating, "migrating the schema for "+want)
		}
	}
	check := func(t string, c Check, okReason, okMsg string) bool {
		if c.Err != nil {
			set(t, false, c.Reason, c.Err.Error())
			return false
		}
		set(t, true, okReason, okMsg)
		return true
	}
	kafkaOK := check(chatv1.ConditionKafkaTopicsReady, o.Kafka, kafka.ReasonReady, "topics "+strings.Join(o.Topics, ", ")+" ready")
	if kafkaOK {
		s.Kafka = chatv1.KafkaStatus{Topics: o.Topics, Partitions: o.Partitions}
	} else {
		s.Kafka = prev.Kafka
	}
	redisOK := check(chatv1.ConditionRedisReachable, o.Redis, ReasonReachable, "Redis answers at "+cc.Spec.Redis.Address)
	dbMsg := o.Database.Message
	if dbMsg == "" {
		dbMsg = "MySQL answers"
	}
	dbOK := check(chatv1.ConditionDatabaseReachable, o.Database, ReasonReachable, dbMsg)
	reconciled := check(chatv1.ConditionReconciled, o.Reconcile, ReasonApplied, "every object is applied")
	migrated := meta.IsStatusConditionTrue(s.Conditions, chatv1.ConditionDatabaseMigrated)

	// What a person must fix: the operator cannot get past it alone.
	failed := !reconciled || migrationFailed || o.StuckGateway != "" || o.ImagePull.Err != nil ||
		(!kafkaOK && o.Kafka.Reason != kafka.ReasonBrokersUnreachable && o.Kafka.Reason != ReasonSecretMissing)
	depsDown := !kafkaOK || !redisOK || !dbOK
	var short, lost, rolling []string
	for _, c := range comps {
		if !c.ready {
			short = append(short, c.name)
		}
		if c.lost {
			lost = append(lost, c.name)
		}
		if c.rolling {
			rolling = append(rolling, c.name)
		}
	}
	sort.Strings(short)
	migratingNew := o.Migration != nil && o.MigratedImage != "" && o.MigratedImage != resources.Image(cc, resources.Migrate) && !migrationFailed
	upgrading := len(rolling) > 0 || migratingNew
	allReady := len(short) == 0

	// Phase: Provisioning until first Running, then Running, Upgrading
	// (a revision or image change rolls) or Degraded; never back to
	// Provisioning. Scaling keeps Running: new pods starting lose nothing.
	ranBefore := prev.Phase == chatv1.PhaseRunning || prev.Phase == chatv1.PhaseUpgrading || prev.Phase == chatv1.PhaseDegraded
	switch {
	case o.Secrets.Err != nil:
		s.Phase = chatv1.PhasePending
	case failed:
		s.Phase = chatv1.PhaseDegraded
	case !ranBefore:
		if allReady && !upgrading && kafkaOK && redisOK && dbOK && migrated {
			s.Phase = chatv1.PhaseRunning
		} else {
			s.Phase = chatv1.PhaseProvisioning
		}
	case depsDown:
		s.Phase = chatv1.PhaseDegraded
	case upgrading:
		s.Phase = chatv1.PhaseUpgrading
	case allReady:
		s.Phase = chatv1.PhaseRunning
	case prev.Phase == chatv1.PhaseUpgrading:
		// The rollout's last replacements are starting; one that never
		// becomes Ready halts the roll (RolloutStuck), which is Degraded.
		s.Phase = chatv1.PhaseUpgrading
	case prev.Phase == chatv1.PhaseRunning && len(lost) == 0:
		s.Phase = chatv1.PhaseRunning
	default:
		s.Phase = chatv1.PhaseDegraded
	}

	// Ready: serving as asked. Outdated but Ready pods count; pods added by
	// a scale-up that are still starting do not make a Running cluster unready.
	ready := o.Secrets.Err == nil && reconciled && kafkaOK && redisOK && dbOK && migrated && o.StuckGateway == "" && o.ImagePull.Err == nil
	switch {
	case ready && allReady:
		set(chatv1.ConditionReady, true, ReasonReady, "every component is ready")
	case ready && s.Phase == chatv1.PhaseRunning:
		set(chatv1.ConditionReady, true, ReasonScaling, "scaling: "+shortfall(s, short))
	default:
		reason, msg := ReasonComponentsNotReady, "not ready: "+shortfall(s, short)
		if o.ImagePull.Err != nil {
			reason, msg = o.ImagePull.Reason, msg+"; "+o.ImagePull.Err.Error()
		}
		for _, t := range []string{chatv1.ConditionReconciled, chatv1.ConditionDatabaseReachable, chatv1.ConditionDatabaseMigrated, chatv1.ConditionKafkaTopicsReady, chatv1.ConditionRedisReachable, chatv1.ConditionGatewayRolloutComplete} {
			if c := meta.FindStatusCondition(s.Conditions, t); c != nil && c.Status != metav1.ConditionTrue && (t != chatv1.ConditionGatewayRolloutComplete || c.Reason == ReasonRolloutStuck) {
				reason, msg = c.Reason, c.Message
				if o.ImagePull.Err != nil {
					msg += "; " + o.ImagePull.Err.Error() // seen even behind a dependency's failure
				}
				break
			}
		}
		set(chatv1.ConditionReady, false, reason, msg)
	}
	s.Endpoint = endpoint(cc, o.ClientService)
	return s
}

// shortfall names the components with fewer Ready pods than desired.
func shortfall(s chatv1.ChatClusterStatus, names []string) string {
	var parts []string
	for _, n := range names {
		var ready, want int32
		switch n {
		case resources.Gateway:
			ready, want = s.Gateway.ReadyReplicas, s.Gateway.Replicas
		case resources.Logic:
			ready, want = s.Logic.ReadyReplicas, s.Logic.Replicas
		case resources.Repo:
			ready, want = s.Repo.ReadyReplicas, s.Repo.Replicas
		case resources.Task:
			ready, want = s.Task.ReadyReplicas, s.Task.Replicas
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d Ready", n, ready, want))
	}
	return strings.Join(parts, ", ")
}

func templateImage(spec corev1.PodSpec) string {
	if len(spec.Containers) == 0 {
		return ""
	}
	return spec.Containers[0].Image
}

// sameImage is the image every one of images names, or "" when they
// differ or there are none.
func sameImage(images []string) string {
	if len(images) == 0 {
		return ""
	}
	for _, img := range images[1:] {
		if img != images[0] {
			return ""
		}
	}
	return images[0]
}

// runningImage is the components' images: one when they agree.
func runningImage(images ...string) string {
	seen := map[string]bool{}
	var out []string
	for _, img := range images {
		if img != "" && !seen[img] {
			seen[img] = true
			out = append(out, img)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// Blocked returns the reason of a state only a person can end (a refused
// apply, a failed migration, a missing Secret, a replication factor the
// brokers cannot hold, a halted roll), or "" when the cluster can progress
// on its own. The reconciler backs off while it holds.
func Blocked(s chatv1.ChatClusterStatus) string {
	for _, t := range []string{chatv1.ConditionReconciled, chatv1.ConditionDatabaseReachable, chatv1.ConditionDatabaseMigrated, chatv1.ConditionKafkaTopicsReady, chatv1.ConditionRedisReachable, chatv1.ConditionGatewayRolloutComplete} {
		c := meta.FindStatusCondition(s.Conditions, t)
		if c == nil || c.Status == metav1.ConditionTrue {
			continue
		}
		switch c.Reason {
		case ReasonMigrating, ReasonRollingOut, ReasonDraining, ReasonUnreachable, kafka.ReasonBrokersUnreachable, ReasonConflict, ReasonAPIError:
		default:
			return c.Reason
		}
	}
	return ""
}

func sessionsLeft(n int64) string {
	if n < 0 {
		return "sessions unknown"
	}
	return fmt.Sprintf("%d session(s) left", n)
}

// JobFailed reports a migration that ran out of retries.
func JobFailed(j *batchv1.Job) bool {
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// JobSucceeded reports a finished migration.
func JobSucceeded(j *batchv1.Job) bool {
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobComplete && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// endpoint is the clients' WebSocket URL: the load balancer's address when
// there is one, else the Service's cluster DNS name.
func endpoint(cc *chatv1.ChatCluster, svc *corev1.Service) string {
	if svc == nil {
		return ""
	}
	port := cc.Spec.Gateway.Service.Port
	host := fmt.Sprintf("%s.%s.svc", svc.Name, svc.Namespace)
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		host = ""
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				host = in.IP
			} else if in.Hostname != "" {
				host = in.Hostname
			}
		}
		if host == "" {
			return ""
		}
	}
	if port == 80 {
		return "ws://" + host + "/v1/ws"
	}
	return fmt.Sprintf("ws://%s:%d/v1/ws", host, port)
}
