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

	applied applied // what the last applies returned (cache.go)
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
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var cc chatv1.ChatCluster
	if err := r.Get(ctx, req.NamespacedName, &cc); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cc.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &cc)
	}
	if err := r.syncMetadata(ctx, &cc); err != nil {
		return ctrl.Result{}, err
	}
	obs, busy, err := r.converge(ctx, &cc)
	if err != nil {
		return ctrl.Result{}, err
	}
	st := status.Compute(&cc, obs)
	if !equality.Semantic.DeepEqual(st, cc.Status) {
		if cc.Status.Phase != st.Phase {
			r.event(&cc, corev1.EventTypeNormal, "Phase"+string(st.Phase), "UpdateStatus", "phase %s -> %s", orNone(string(cc.Status.Phase)), st.Phase)
		}
		was, now := condition(cc.Status.Conditions, chatv1.ConditionGatewayRolloutComplete), condition(st.Conditions, chatv1.ConditionGatewayRolloutComplete)
		if now.Reason == status.ReasonRolloutStuck && was.Reason != status.ReasonRolloutStuck {
			r.event(&cc, corev1.EventTypeWarning, status.ReasonRolloutStuck, "Roll", "%s", now.Message)
		}
		// A full update rather than a patch: zero counts (0 sessions) are
		// written too, and a conflict means someone changed the cluster since
		// it was read, so the next reconcile starts over from the new version.
		cc.Status = st
		if err := r.Status().Update(ctx, &cc); err != nil {
			return ctrl.Result{}, fmt.Errorf("update status: %w", err)
		}
	}
	if busy > 0 {
		return ctrl.Result{RequeueAfter: busy}, nil
	}
	if st.Phase != chatv1.PhaseRunning {
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	return ctrl.Result{RequeueAfter: r.Resync}, nil
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
		return "(none)"
	}
	return s
}

func (r *Reconciler) event(cc *chatv1.ChatCluster, kind, reason, action, format string, args ...any) {
	if r.Recorder != nil {
		r.Recorder.Eventf(cc, nil, kind, reason, action, format, args...)
	}
}

// converge creates or updates everything the cluster owns, takes one step
// of the gateway roll, and observes the result. busy > 0 asks to look again
// that soon: a roll is in progress, or a failed migration waits to run again.
func (r *Reconciler) converge(ctx context.Context, cc *chatv1.ChatCluster) (obs status.Observed, busy time.Duration, err error) {
	obs = status.Observed{Deployments: map[string]*appsv1.Deployment{}, MigratedImage: cc.Status.MigratedImage}
	if err := r.ensureJWTSecret(ctx, cc); err != nil {
		return obs, 0, err
	}
	if err := r.ensurePKI(ctx, cc); err != nil {
		return obs, 0, err
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
		return obs, 0, err
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
	for _, o := range objs {
		if err := r.apply(ctx, cc, o); err != nil {
			return obs, 0, err
		}
	}

	if secretsErr == nil {
		retry, err := r.migrate(ctx, cc, in, &obs)
		if err != nil {
			return obs, 0, err
		}
		busy = retry // a failed migration is looked at again when its backoff ends
		// Every workload waits for the migration of the spec's repo image.
		if in.Images, err = r.servedImages(ctx, cc, obs.MigratedImage, roll.sts); err != nil {
			return obs, 0, err
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
				return obs, 0, err
			}
		}
		if err := r.rollGateways(ctx, cc, roll, step, now); err != nil {
			return obs, 0, err
		}
	}
	if obs.ImagePull, err = r.checkComponentImages(ctx, cc); err != nil {
		return obs, 0, err
	}
	obs.Sessions, obs.Draining, obs.StuckGateway = roll.sessions(), gatewayroll.DrainingStatus(roll.view), step.Stuck
	if step.Busy {
		rollBusy := max(step.RequeueAfter, 200*time.Millisecond)
		if busy == 0 || rollBusy < busy {
			busy = rollBusy
		}
	}

	r.ensureTopics(ctx, cc, &obs)
	// MySQL and Redis are probed at once: each may take its timeout.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		obs.Database = r.checkMySQL(ctx, cc)
	}()
	obs.Redis = r.checkRedis(ctx, cc)
	wg.Wait()
	return obs, busy, r.observe(ctx, cc, &obs)
}

// apply server-side applies a built object as the operator's field manager:
// fields the operator sets are put back if someone edits them, and fields it
// does not set (defaults, other controllers') are left alone.
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
		return fmt.Errorf("get %s %s: %w", kind, u.GetName(), getErr)
	}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(resources.FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s: %w", kind, u.GetName(), err)
	}
	created, updated := r.applied.outcome(getErr == nil, before.GetResourceVersion(), u.GetUID(), u.GetResourceVersion())
	switch {
	case created:
		r.event(cc, corev1.EventTypeNormal, "Created", "Create", "created %s %s", kind, u.GetName())
	case updated:
		r.event(cc, corev1.EventTypeNormal, "Updated", "Update", "updated %s %s", kind, u.GetName())
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
	kctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	actions, partitions, err := kafka.Ensure(kctx, adm, kafka.Want{
		Topics: resources.Topics(cc), Partitions: cc.Spec.Kafka.Partitions,
		ReplicationFactor: int16(cc.Spec.Kafka.ReplicationFactor), Retention: retention,
	})
	for _, a := range actions {
		r.event(cc, corev1.EventTypeNormal, a.Reason, "EnsureTopics", "%s", a.Message)
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
	opts := &redis.Options{Addr: cc.Spec.Redis.Address, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1, PoolSize: 1}
	if ref := cc.Spec.Redis.PasswordSecretRef; ref != nil {
		var s corev1.Secret
		if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: ref.Name}, &s); err != nil {
			return status.Check{Reason: status.ReasonSecretMissing, Err: fmt.Errorf("redis password secret %s: %w", ref.Name, err)}
		}
		opts.Password = string(s.Data[ref.Key])
	}
	c := redis.NewClient(opts)
	defer c.Close()
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
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
