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
	ReasonComponentsNotReady = "ComponentsNotReady"
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
	MigratedImage string       // the image whose migration succeeded before
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
	Sessions   int64
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

	// Components.
	comp := func(name string, want *int32) (chatv1.ComponentStatus, bool) {
		d := o.Deployments[name]
		st := chatv1.ComponentStatus{Replicas: desired(want)}
		if d == nil {
			return st, false
		}
		st.ReadyReplicas = d.Status.ReadyReplicas
		done := d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas >= st.Replicas && d.Status.ReadyReplicas >= st.Replicas && d.Status.Replicas == st.Replicas
		return st, done
	}
	var logicOK, repoOK, taskOK bool
	s.Logic, logicOK = comp(resources.Logic, cc.Spec.Logic.Replicas)
	s.Repo, repoOK = comp(resources.Repo, cc.Spec.Repo.Replicas)
	s.Task, taskOK = comp(resources.Task, cc.Spec.Task.Replicas)

	gw := chatv1.GatewayStatus{Replicas: desired(cc.Spec.Gateway.Replicas), Selector: resources.GatewaySelector(cc), Draining: o.Draining}
	gwRolled, gwReady := false, false
	if sts := o.Gateway; sts != nil {
		gw.ReadyReplicas, gw.UpdatedReplicas = sts.Status.ReadyReplicas, sts.Status.UpdatedReplicas
		current := sts.Status.ObservedGeneration >= sts.Generation
		gwRolled = current && sts.Status.UpdatedReplicas >= gw.Replicas && sts.Status.Replicas == gw.Replicas
		gwReady = current && sts.Status.ReadyReplicas >= gw.Replicas
	}
	s.Gateway = gw
	s.GatewaysReady = fmt.Sprintf("%d/%d", gw.ReadyReplicas, gw.Replicas)
	gwRolled = gwRolled && len(o.Draining) == 0 && o.StuckGateway == ""
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
		set(chatv1.ConditionGatewayRolloutComplete, true, ReasonRolloutComplete, fmt.Sprintf("%d gateway(s) run the current revision", gw.Replicas))
	default:
		set(chatv1.ConditionGatewayRolloutComplete, false, ReasonRollingOut, fmt.Sprintf("%d of %d gateway(s) created on the current revision", gw.UpdatedReplicas, gw.Replicas))
	}

	// Dependencies.
	if o.Secrets.Err != nil {
		set(chatv1.ConditionDatabaseMigrated, false, ReasonSecretMissing, o.Secrets.Err.Error())
	} else {
		want := resources.Image(cc, resources.Migrate)
		switch {
		case o.MigratedImage == want:
			set(chatv1.ConditionDatabaseMigrated, true, ReasonMigrated, "schema migrated for "+want)
		case o.MigrationCheck.Err != nil:
			set(chatv1.ConditionDatabaseMigrated, false, o.MigrationCheck.Reason, o.MigrationCheck.Err.Error())
		case o.Migration != nil && JobFailed(o.Migration):
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
	migrated := meta.IsStatusConditionTrue(s.Conditions, chatv1.ConditionDatabaseMigrated)

	// Ready and phase.
	var notReady []string
	for name, ok := range map[string]bool{"logic": logicOK, "repo": repoOK, "task": taskOK, "gateway": gwReady && gwRolled} {
		if !ok {
			notReady = append(notReady, name)
		}
	}
	sort.Strings(notReady)
	ready := len(notReady) == 0 && kafkaOK && redisOK && dbOK && migrated && o.Secrets.Err == nil
	if ready {
		set(chatv1.ConditionReady, true, ReasonReady, "every component is ready")
	} else {
		reason, msg := ReasonComponentsNotReady, "not ready: "+strings.Join(notReady, ", ")
		if o.ImagePull.Err != nil {
			reason, msg = o.ImagePull.Reason, msg+"; "+o.ImagePull.Err.Error()
		}
		for _, t := range []string{chatv1.ConditionDatabaseReachable, chatv1.ConditionDatabaseMigrated, chatv1.ConditionKafkaTopicsReady, chatv1.ConditionRedisReachable} {
			if c := meta.FindStatusCondition(s.Conditions, t); c != nil && c.Status != metav1.ConditionTrue {
				reason, msg = c.Reason, c.Message
				if o.ImagePull.Err != nil {
					msg += "; " + o.ImagePull.Err.Error() // seen even behind a dependency's failure
				}
				break
			}
		}
		set(chatv1.ConditionReady, false, reason, msg)
	}

	wasRunning := prev.Phase == chatv1.PhaseRunning || prev.Phase == chatv1.PhaseUpgrading || prev.Phase == chatv1.PhaseDegraded
	rolling := !gwRolled || (o.Migration != nil && o.MigratedImage != "" && o.MigratedImage != resources.Image(cc, resources.Migrate))
	switch {
	case o.Secrets.Err != nil:
		s.Phase = chatv1.PhasePending
	case ready:
		s.Phase = chatv1.PhaseRunning
	case !wasRunning:
		s.Phase = chatv1.PhaseProvisioning
	case o.StuckGateway != "":
		s.Phase = chatv1.PhaseDegraded
	case rolling && kafkaOK && redisOK:
		s.Phase = chatv1.PhaseUpgrading
	default:
		s.Phase = chatv1.PhaseDegraded
	}
	s.Endpoint = endpoint(cc, o.ClientService)
	return s
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
