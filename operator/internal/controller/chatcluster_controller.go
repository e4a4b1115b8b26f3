// Package controller reconciles ChatClusters. The reconciler is thin: it
// gathers what exists, applies what the resources package builds, manages
// topics and the migration, and hands what it saw to the status package.
package controller

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/kafka"
	"github.com/gochat/gochat/operator/internal/resources"
	"github.com/gochat/gochat/operator/internal/status"
)

// Finalizer guards topic deletion.
const Finalizer = "chat.gochat.io/topics"

// secretIndex indexes ChatClusters by the Secrets they read.
const secretIndex = "spec.secretNames"

// Reconciler reconciles ChatClusters.
type Reconciler struct {
	client.Client
	Recorder events.EventRecorder
	// Now is the clock of certificate renewal (nil: time.Now).
	Now     func() time.Time
	opCerts operatorCerts
	// APIReader reads around the cache, for the gateway roll; nil: the Client.
	APIReader client.Reader
	// Admin reads and drains gateway pods; nil: sessions are unknown, so a
	// drained pod is removed only at its deadline.
	Admin gatewayadmin.Admin
	// ReadyTimeout bounds how long a replacement gateway may take to become
	// Ready before the roll halts (RolloutStuck); 0: gatewayroll.DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Resync is how often a healthy cluster is checked again (topics, Redis, sessions).
	Resync time.Duration
	// DefaultImage runs clusters without spec.image: the operator's release image.
	DefaultImage string
	// TopicDeletionTimeout bounds a deletion's wait for Kafka (0: DefaultTopicDeletionTimeout).
	TopicDeletionTimeout time.Duration
	// PodLogs reads a failed migration pod's log; nil: built from the
	// manager's config by SetupWithManager.
	PodLogs PodLogs
	// MigrationRetryBase and MigrationRetryMax bound the wait before a failed
	// migration is run again (0: DefaultMigrationRetryBase, DefaultMigrationRetryMax).
	MigrationRetryBase, MigrationRetryMax time.Duration
	// MaxConcurrentReconciles is how many ChatClusters reconcile at once
	// (0: DefaultMaxConcurrentReconciles), so that one cluster waiting on
	// its Kafka or Redis never holds up the others.
	MaxConcurrentReconciles int
	// IOTimeout bounds each call to a cluster's Kafka, Redis and MySQL (0: DefaultIOTimeout).
	IOTimeout time.Duration

	applied applied // what the last applies returned (cache.go)

	backoffMu sync.Mutex
	backoff   map[types.NamespacedName]backoffState
}

// +kubebuilder:rbac:groups=chat.gochat.io,resources=chatclusters,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=chat.gochat.io,resources=chatclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=chat.gochat.io,resources=chatclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=configmaps;services;serviceaccounts,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups="",resources=pods/log,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch

// RBAC: objects are written by server-side apply (create, patch: an apply
// that creates needs create) and removed by the garbage collector through
// owner references, so there is no update and no delete except where the
// operator itself deletes: workloads before topic deletion (deletion.go),
// drained gateway pods, old migration Jobs. Secrets are updated (the CA and
// certificates, pki.go) and ChatCluster status is written. Migration Jobs
// are patched with their failure report (migration.go).

// Reconcile brings one ChatCluster to its spec and reports what it sees.
// Every step the API server refuses reaches the cluster (the Reconciled
// condition, a Warning event, Ready false) rather than only the log; states
// only a person can end are retried with a growing backoff and woken early by
// the watches (the spec, a Secret, an owned object changed).
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var cc chatv1.ChatCluster
	if err := r.Get(ctx, req.NamespacedName, &cc); err != nil {
		if apierrors.IsNotFound(err) {
			r.forgetBackoff(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cc.DeletionTimestamp.IsZero() {
		r.forgetBackoff(req.NamespacedName)
		return r.finalize(ctx, &cc)
	}
	obs := status.Observed{Deployments: map[string]*appsv1.Deployment{}, MigratedImage: cc.Status.MigratedImage,
		Sessions: cc.Status.Sessions, Draining: cc.Status.Gateway.Draining}
	// Kafka and Redis answer (or time out) while the objects are applied.
	deps := r.checkDependencies(ctx, &cc)
	var busy time.Duration
	err := r.syncMetadata(ctx, &cc)
	if err == nil {
		busy, err = r.converge(ctx, &cc, &obs)
	}
	deps(&obs)
	conflicted := err != nil && onlyConflicts(err)
	if err != nil && !conflicted {
		obs.Reconcile = r.refused(&cc, err)
	}
	if err := r.observe(ctx, &cc, &obs); err != nil {
		return ctrl.Result{}, err
	}
	st, err := r.writeStatus(ctx, &cc, obs)
	if errors.Is(err, errStale) {
		// The spec changed, or the status kept changing under this pass:
		// the next pass starts from the current version.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if conflicted {
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	return ctrl.Result{RequeueAfter: r.requeueAfter(req.NamespacedName, st, busy)}, nil
}

// errStale: the cluster changed under this pass.
var errStale = errors.New("the ChatCluster changed during the reconcile")

// statusAttempts bounds the re-reads after a conflicting status write.
const statusAttempts = 3

// writeStatus computes the status and, when it changed, writes it with a
// merge patch that carries the resourceVersion it was computed from. A
// conflict means the read was stale (the cache lags, or someone changed
// the cluster): the current version is read around the cache and the status
// computed again on it, so that a transition is judged against what the
// server holds. Phase events follow a successful write only, so a write
// that does not happen never reports a transition, and no transition is
// reported twice.
func (r *Reconciler) writeStatus(ctx context.Context, cc *chatv1.ChatCluster, obs status.Observed) (chatv1.ChatClusterStatus, error) {
	for attempt := 1; ; attempt++ {
		st := status.Compute(cc, obs)
		if equality.Semantic.DeepEqual(st, cc.Status) {
			return st, nil
		}
		base := cc.DeepCopy()
		// sessions has no omitempty, so a status the server stored without
		// it reads back as 0: the -1 makes the patch always carry the count,
		// and a zero is written as a zero.
		base.Status.Sessions = -1
		next := cc.DeepCopy()
		next.Status = st
		err := r.Status().Patch(ctx, next, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
		if err == nil {
			r.statusEvents(cc, cc.Status, st)
			*cc = *next
			return st, nil
		}
		if !apierrors.IsConflict(err) {
			return st, fmt.Errorf("patch status: %w", err)
		}
		if attempt == statusAttempts {
			return st, errStale
		}
		var fresh chatv1.ChatCluster
		if err := r.reader().Get(ctx, client.ObjectKeyFromObject(cc), &fresh); apierrors.IsNotFound(err) {
			return st, errStale
		} else if err != nil {
			return st, fmt.Errorf("read the cluster again after a conflict: %w", err)
		}
		if fresh.Generation != cc.Generation || !fresh.DeletionTimestamp.IsZero() {
			return st, errStale
		}
		*cc = fresh
	}
}

// statusEvents reports what a written status changed that a person acts on.
func (r *Reconciler) statusEvents(cc *chatv1.ChatCluster, was, now chatv1.ChatClusterStatus) {
	if was.Phase != now.Phase {
		// The previous phase is in the action, so that Running -> Degraded
		// and Upgrading -> Degraded are two series, each with its own note.
		r.event(cc, corev1.EventTypeNormal, "Phase"+string(now.Phase), "TransitionFrom"+string(orNone(string(was.Phase))), "phase %s -> %s", orNone(string(was.Phase)), now.Phase)
	}
	wasRoll, nowRoll := condition(was.Conditions, chatv1.ConditionGatewayRolloutComplete), condition(now.Conditions, chatv1.ConditionGatewayRolloutComplete)
	if nowRoll.Reason == status.ReasonRolloutStuck && wasRoll.Reason != status.ReasonRolloutStuck {
		r.event(cc, corev1.EventTypeWarning, status.ReasonRolloutStuck, "Roll", "%s", nowRoll.Message)
	}
}

func condition(conds []metav1.Condition, typ string) metav1.Condition {
	for _, c := range conds {
		if c.Type == typ {
			return c
		}
	}
	return metav1.Condition{}
}

func orNone(s string) string {
	if s == "" {
		return "None"
	}
	return s
}

// event records an Event about the cluster itself.
func (r *Reconciler) event(cc *chatv1.ChatCluster, kind, reason, action, format string, args ...any) {
	r.eventAbout(cc, nil, kind, reason, action, format, args...)
}

// eventAbout records an Event on the cluster naming the object it is about.
// The related object is part of an event series' key: without it, the
// Events of one pass with one reason (a Created per object) fold into one
// series that keeps only the first note.
func (r *Reconciler) eventAbout(cc *chatv1.ChatCluster, related runtime.Object, kind, reason, action, format string, args ...any) {
	if r.Recorder == nil {
		return
	}
	if related == nil || reflect.ValueOf(related).IsNil() {
		r.Recorder.Eventf(cc, nil, kind, reason, action, format, args...)
		return
	}
	r.Recorder.Eventf(cc, related, kind, reason, action, format, args...)
}

// converge creates or updates everything the cluster owns and takes one
// step of the gateway roll, recording what it saw in obs. busy > 0 asks to
// look again that soon: a roll is in progress, or a failed migration waits
// to run again. An error stops the pass at
// the step that failed; the applies of independent objects still all run.
func (r *Reconciler) converge(ctx context.Context, cc *chatv1.ChatCluster, obs *status.Observed) (busy time.Duration, err error) {
	if err := r.ensureJWTSecret(ctx, cc); err != nil {
		return 0, err
	}
	if err := r.ensurePKI(ctx, cc); err != nil {
		return 0, err
	}
	hashes, secretsErr := r.secretHashes(ctx, cc)
	if secretsErr != nil {
		obs.Secrets = status.Check{Reason: status.ReasonSecretMissing, Err: secretsErr}
		r.event(cc, corev1.EventTypeWarning, status.ReasonSecretMissing, "ResolveSecrets", "%v", secretsErr)
	}
	in := resources.Inputs{SecretHash: hashes, KafkaCredentialsCA: r.kafkaCredentialsCA(ctx, cc)}

	// The roll is decided before the StatefulSet is applied: a scale-down
	// keeps its replicas until the gateways it removes are drained.
	now := time.Now()
	roll, err := r.observeGateways(ctx, cc)
	if err != nil {
		return 0, err
	}
	step := roll.plan(cc, now, r.readyTimeout())
	if roll.sts != nil {
		in.GatewayReplicas = &step.Replicas
	}

	var objs []client.Object
	objs = append(objs, resources.ConfigMap(cc), resources.ServiceAccount(cc))
	for _, s := range resources.Services(cc) {
		objs = append(objs, s)
	}
	for _, p := range resources.PodDisruptionBudgets(cc) {
		objs = append(objs, p)
	}
	var applyErrs []error
	for _, o := range objs {
		if err := r.apply(ctx, cc, o); err != nil {
			applyErrs = append(applyErrs, err)
		}
	}

	if secretsErr == nil {
		retry, err := r.migrate(ctx, cc, in, obs)
		if err != nil {
			return 0, errors.Join(append(applyErrs, err)...)
		}
		busy = retry // a failed migration is looked at again when its backoff ends
		// Every workload waits for the migration of the spec's repo image.
		if in.Images, err = r.servedImages(ctx, cc, obs.MigratedImage, roll.sts); err != nil {
			return 0, errors.Join(append(applyErrs, err)...)
		}
		for _, c := range resources.Workloads {
			if _, ok := in.Images[c]; !ok {
				continue // not before the first migration
			}
			var o client.Object
			if c == resources.Gateway {
				o = resources.GatewayStatefulSet(cc, in)
			} else {
				o = resources.Deployment(cc, c, in)
			}
			if err := r.apply(ctx, cc, o); err != nil {
				applyErrs = append(applyErrs, err)
			}
		}
		if len(applyErrs) == 0 {
			if err := r.rollGateways(ctx, cc, roll, step, now); err != nil {
				return 0, err
			}
		}
	}
	if obs.ImagePull, err = r.checkComponentImages(ctx, cc); err != nil {
		return 0, errors.Join(append(applyErrs, err)...)
	}
	obs.Sessions, obs.Draining, obs.StuckGateway = roll.sessions(), gatewayroll.DrainingStatus(roll.view), step.Stuck
	obs.GatewayOutdated, obs.GatewayImages = roll.outdated(), roll.images()
	if step.Busy {
		rollBusy := max(step.RequeueAfter, 200*time.Millisecond)
		if busy == 0 || rollBusy < busy {
			busy = rollBusy
		}
	}
	return busy, errors.Join(applyErrs...)
}

// apply server-side applies a built object as the operator's field manager:
// fields the operator sets are put back if someone edits them, and fields it
// does not set (defaults, other controllers') are left alone. An object of
// that name controlled by someone else is never taken over.
func (r *Reconciler) apply(ctx context.Context, cc *chatv1.ChatCluster, obj client.Object) error {
	raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return fmt.Errorf("convert %T: %w", obj, err)
	}
	delete(raw, "status")
	unstructured.RemoveNestedField(raw, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(raw, "spec", "template", "metadata", "creationTimestamp")
	u := &unstructured.Unstructured{Object: raw}
	kind := u.GetKind()

	// The cached copy, not a live GET: the cache holds what the operator
	// made (CacheOptions), and r.applied covers the cache's lag behind the
	// operator's own last apply.
	before := reflect.New(reflect.TypeOf(obj).Elem()).Interface().(client.Object)
	getErr := r.Get(ctx, client.ObjectKeyFromObject(u), before)
	if getErr != nil && !apierrors.IsNotFound(getErr) {
		return &stepError{action: "Apply", related: u, err: fmt.Errorf("get %s %s: %w", kind, u.GetName(), getErr)}
	}
	if getErr == nil {
		if owner := metav1.GetControllerOf(before); owner != nil && owner.UID != cc.UID {
			return &stepError{reason: status.ReasonOwnedByOther, action: "Apply", related: before,
				err: fmt.Errorf("%s %s is controlled by %s %s, not by this ChatCluster: delete or rename it, the operator does not take it over", kind, u.GetName(), owner.Kind, owner.Name)}
		}
	}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(resources.FieldManager), client.ForceOwnership); err != nil {
		return &stepError{action: "Apply", related: u, err: fmt.Errorf("apply %s %s: %w", kind, u.GetName(), err)}
	}
	created, updated := r.applied.outcome(getErr == nil, before.GetResourceVersion(), u.GetUID(), u.GetResourceVersion())
	switch {
	case created:
		r.eventAbout(cc, u, corev1.EventTypeNormal, "Created", "Create", "created %s %s", kind, u.GetName())
	case updated:
		r.eventAbout(cc, u, corev1.EventTypeNormal, "Updated", "Update", "updated %s %s", kind, u.GetName())
	}
	return nil
}

// ensureJWTSecret generates the token secret once when the spec names none.
func (r *Reconciler) ensureJWTSecret(ctx context.Context, cc *chatv1.ChatCluster) error {
	if cc.Spec.Auth.JWTSecretRef != nil {
		return nil
	}
	var s corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.JWTSecretName(cc)}, &s)
	if err == nil || !apierrors.IsNotFound(err) {
		return client.IgnoreNotFound(err)
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return fmt.Errorf("generate jwt secret: %w", err)
	}
	secret := resources.JWTSecret(cc, hex.EncodeToString(buf))
	if err := r.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create jwt secret: %w", err)
	}
	r.event(cc, corev1.EventTypeNormal, "JWTSecretGenerated", "Create", "generated the token secret in Secret %s", secret.Name)
	return nil
}

// secretHashes reads every referenced Secret key and hashes each component's
// values. A missing Secret or key is reported, with its name, never its value.
func (r *Reconciler) secretHashes(ctx context.Context, cc *chatv1.ChatCluster) (map[string]string, error) {
	cache := map[string]*corev1.Secret{}
	out := map[string]string{}
	var missing []error
	for component, refs := range resources.SecretKeys(cc) {
		values := map[string][]byte{}
		for _, ref := range refs {
			s, ok := cache[ref.Name]
			if !ok {
				var got corev1.Secret
				err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: ref.Name}, &got)
				if err != nil && !apierrors.IsNotFound(err) {
					return nil, fmt.Errorf("get secret %s: %w", ref.Name, err)
				}
				if err == nil {
					s = &got
				}
				cache[ref.Name] = s
			}
			optional := cc.Spec.Kafka.CredentialsSecretRef != nil && ref.Name == cc.Spec.Kafka.CredentialsSecretRef.Name && (component == resources.Logic || component == resources.Task)
			switch {
			case s == nil:
				missing = append(missing, fmt.Errorf("secret %s not found", ref.Name))
			case s.Data[ref.Key] == nil && !optional:
				missing = append(missing, fmt.Errorf("secret %s has no key %q", ref.Name, ref.Key))
			case s != nil:
				values[ref.Name+"/"+ref.Key] = s.Data[ref.Key]
			}
		}
		out[component] = resources.HashData(values)
	}
	if len(missing) > 0 {
		return out, errors.Join(dedupe(missing)...)
	}
	return out, nil
}

func dedupe(errs []error) []error {
	seen := map[string]bool{}
	var out []error
	for _, e := range errs {
		if !seen[e.Error()] {
			seen[e.Error()] = true
			out = append(out, e)
		}
	}
	return out
}

// DefaultIOTimeout bounds each call to a cluster's Kafka and Redis.
const DefaultIOTimeout = 5 * time.Second

func (r *Reconciler) ioTimeout() time.Duration {
	if r.IOTimeout > 0 {
		return r.IOTimeout
	}
	return DefaultIOTimeout
}

// checkDependencies ensures the topics and probes Redis and MySQL
// concurrently, each bounded by the I/O timeout, and returns a wait that
// records them in obs. A dependency that does not answer costs one timeout,
// never the sum, and only this cluster's worker: the others reconcile
// meanwhile.
func (r *Reconciler) checkDependencies(ctx context.Context, cc *chatv1.ChatCluster) func(*status.Observed) {
	cc = cc.DeepCopy()
	var (
		wg    sync.WaitGroup
		topic status.Observed
		rds   status.Check
		db    status.Check
	)
	wg.Add(3)
	go func() {
		defer wg.Done()
		r.ensureTopics(ctx, cc, &topic)
	}()
	go func() {
		defer wg.Done()
		rds = r.checkRedis(ctx, cc)
	}()
	go func() {
		defer wg.Done()
		db = r.checkMySQL(ctx, cc)
	}()
	return func(obs *status.Observed) {
		wg.Wait()
		obs.Kafka, obs.Topics, obs.Partitions, obs.Redis, obs.Database = topic.Kafka, topic.Topics, topic.Partitions, rds, db
	}
}

// topicAction names an Event's action after its topic, so that the Events
// of two topics are two series.
var topicAction = map[string]string{"TopicCreated": "CreateTopic", "PartitionsRaised": "RaisePartitions", "RetentionChanged": "SetRetention"}

func (r *Reconciler) ensureTopics(ctx context.Context, cc *chatv1.ChatCluster, obs *status.Observed) {
	fail := func(err error) {
		var ke *kafka.Error
		reason := kafka.ReasonTopicError
		if errors.As(err, &ke) {
			reason = ke.Reason
		}
		obs.Kafka = status.Check{Reason: reason, Err: err}
		r.event(cc, corev1.EventTypeWarning, reason, "EnsureTopics", "%v", err)
	}
	retention, err := time.ParseDuration(cc.Spec.Kafka.Retention)
	if err != nil {
		fail(&kafka.Error{Reason: kafka.ReasonTopicError, Err: fmt.Errorf("spec.kafka.retention %q: %w", cc.Spec.Kafka.Retention, err)})
		return
	}
	conn, err := r.kafkaConnection(ctx, cc)
	if err != nil {
		fail(err)
		return
	}
	adm, closeAdm, err := kafka.Admin(conn)
	if err != nil {
		fail(err)
		return
	}
	defer closeAdm()
	kctx, cancel := context.WithTimeout(ctx, r.ioTimeout())
	defer cancel()
	actions, partitions, err := kafka.Ensure(kctx, adm, kafka.Want{
		Topics: resources.Topics(cc), Partitions: cc.Spec.Kafka.Partitions,
		ReplicationFactor: int16(cc.Spec.Kafka.ReplicationFactor), Retention: retention,
	})
	for _, a := range actions {
		r.event(cc, corev1.EventTypeNormal, a.Reason, topicAction[a.Reason]+" "+a.Topic, "%s", a.Message)
	}
	if err != nil {
		fail(err)
		return
	}
	obs.Topics, obs.Partitions = resources.Topics(cc), partitions
}

// quietRedis drops go-redis's own log lines: a failed PING is reported in
// the RedisReachable condition, with its error, instead.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedis{}) }

func (r *Reconciler) checkRedis(ctx context.Context, cc *chatv1.ChatCluster) status.Check {
	timeout := r.ioTimeout()
	opts := &redis.Options{Addr: cc.Spec.Redis.Address, DialTimeout: timeout, ReadTimeout: timeout, WriteTimeout: timeout, MaxRetries: -1, PoolSize: 1}
	if ref := cc.Spec.Redis.PasswordSecretRef; ref != nil {
		var s corev1.Secret
		if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: ref.Name}, &s); err != nil {
			return status.Check{Reason: status.ReasonSecretMissing, Err: fmt.Errorf("redis password secret %s: %w", ref.Name, err)}
		}
		opts.Password = string(s.Data[ref.Key])
	}
	c := redis.NewClient(opts)
	defer c.Close()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		return status.Check{Reason: status.ReasonUnreachable, Err: fmt.Errorf("redis at %s: %w", cc.Spec.Redis.Address, err)}
	}
	return status.Check{}
}

// observe reads back what status reports on.
func (r *Reconciler) observe(ctx context.Context, cc *chatv1.ChatCluster, obs *status.Observed) error {
	for _, c := range []string{resources.Logic, resources.Repo, resources.Task} {
		var d appsv1.Deployment
		err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.Name(cc, c)}, &d)
		if err == nil {
			obs.Deployments[c] = &d
		} else if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get deployment %s: %w", c, err)
		}
	}
	var sts appsv1.StatefulSet
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.Name(cc, resources.Gateway)}, &sts); err == nil {
		obs.Gateway = &sts
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get gateway statefulset: %w", err)
	}
	var svc corev1.Service
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.Name(cc, resources.Gateway)}, &svc); err == nil {
		obs.ClientService = &svc
	}
	return nil
}

// SetupWithManager watches ChatClusters, what they own, and the Secrets they read.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.PodLogs == nil {
		cs, err := kubernetes.NewForConfigAndClient(mgr.GetConfig(), mgr.GetHTTPClient())
		if err != nil {
			return fmt.Errorf("pod log client: %w", err)
		}
		r.PodLogs = cs.CoreV1()
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &chatv1.ChatCluster{}, secretIndex, func(o client.Object) []string {
		return resources.SecretNames(o.(*chatv1.ChatCluster))
	}); err != nil {
		return fmt.Errorf("index secrets: %w", err)
	}
	// The users' Secrets are watched by their metadata alone (cache.go).
	secrets, err := secretMetadata(mgr)
	if err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		WithOptions(crcontroller.Options{MaxConcurrentReconciles: r.maxConcurrentReconciles()}).
		For(&chatv1.ChatCluster{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&batchv1.Job{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		WatchesRawSource(source.Kind(secrets, secretWatchObject(), handler.TypedEnqueueRequestsFromMapFunc(r.clustersReadingSecret))).
		Named("chatcluster").
		Complete(r)
}

func (r *Reconciler) clustersReadingSecret(ctx context.Context, o *metav1.PartialObjectMetadata) []reconcile.Request {
	var list chatv1.ChatClusterList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{secretIndex: o.GetName()}); err != nil {
		logf.FromContext(ctx).Error(err, "list clusters reading a secret", "secret", o.GetName())
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, cc := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&cc)})
	}
	return out
}
