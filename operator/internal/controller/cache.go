package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/gochat/gochat/operator/internal/resources"
)

// The operator's memory is bounded by what it owns, not by what the
// cluster holds (cert-manager's split Secret cache, docs/operator.md,
// "Memory and API load"):
//   - every type it owns (ConfigMaps, Services, ServiceAccounts, Deployments,
//     StatefulSets, Jobs, PDBs, Pods and its own Secrets) is cached only when
//     it carries resources.LabelManagedBy=resources.ManagedBy;
//   - the users' Secrets (MySQL DSN, Kafka credentials, ...) are watched as
//     metadata only, in a cache of their own, to learn when one changes;
//     their values are read from the API server when needed (NewClient);
//   - nothing cached keeps its managedFields.

// CacheOptions scopes the manager's cache to the objects the operator made;
// namespaces restricts every type to those namespaces (nil: all).
func CacheOptions(namespaces map[string]cache.Config) cache.Options {
	owned := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy})}
	by := map[client.Object]cache.ByObject{}
	for _, o := range []client.Object{
		&corev1.ConfigMap{}, &corev1.Service{}, &corev1.ServiceAccount{}, &corev1.Pod{}, &corev1.Secret{},
		&appsv1.Deployment{}, &appsv1.StatefulSet{}, &batchv1.Job{}, &policyv1.PodDisruptionBudget{},
	} {
		by[o] = owned
	}
	return cache.Options{
		DefaultNamespaces: namespaces,
		ByObject:          by,
		DefaultTransform:  cache.TransformStripManagedFields(),
	}
}

// NewClient is the manager's client (ctrl.Options.NewClient): the usual
// cached client, except that a Secret the cache does not hold (a user's,
// or one of the operator's that the cache has not seen yet) is read from
// the API server. So every r.Get of a Secret sees what the server holds,
// and no user Secret value is ever kept in memory between reconciles.
func NewClient(cfg *rest.Config, opts client.Options) (client.Client, error) {
	cached, err := client.New(cfg, opts)
	if err != nil {
		return nil, err
	}
	live, err := client.New(cfg, client.Options{HTTPClient: opts.HTTPClient, Scheme: opts.Scheme, Mapper: opts.Mapper})
	if err != nil {
		return nil, fmt.Errorf("uncached client: %w", err)
	}
	return &secretsClient{Client: cached, live: live}, nil
}

type secretsClient struct {
	client.Client
	live client.Reader
}

func (c *secretsClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	err := c.Client.Get(ctx, key, obj, opts...)
	if _, secret := obj.(*corev1.Secret); secret && apierrors.IsNotFound(err) {
		return c.live.Get(ctx, key, obj, opts...)
	}
	return err
}

// secretMetadata is a cache of every Secret's name and namespace, all the
// Secret watch needs to find the clusters that read one: labels,
// annotations, owners and managed fields are dropped before it is stored.
func secretMetadata(mgr manager.Manager) (cache.Cache, error) {
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient: mgr.GetHTTPClient(), Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(),
		DefaultTransform: func(in any) (any, error) {
			if m, ok := in.(*metav1.PartialObjectMetadata); ok {
				m.Labels, m.Annotations, m.OwnerReferences, m.ManagedFields, m.Finalizers = nil, nil, nil, nil, nil
			}
			return in, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("secret metadata cache: %w", err)
	}
	if err := mgr.Add(c); err != nil {
		return nil, fmt.Errorf("add the secret metadata cache: %w", err)
	}
	return c, nil
}

// secretWatchObject is the type the Secret watch lists: metadata only.
func secretWatchObject() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

// applied remembers, per object, the resourceVersion the cache showed
// before the operator's last apply ("" for none) and the one the apply
// returned. When the cache still shows the former, it has not seen that
// apply yet, and the latter is what the object is: without this, an apply
// soon after another (a roll looks again within a second) would report a
// change, or a creation, that did not happen. An entry goes at the first
// apply that finds the cache in step, or after appliedMemory (the cache
// lags by milliseconds, not minutes; objects deleted meanwhile are
// forgotten this way).
type applied struct {
	mu  sync.Mutex
	rv  map[types.UID]appliedRV
	now func() time.Time // nil: time.Now
}

type appliedRV struct {
	cached, returned string
	at               time.Time
}

// appliedMemory is how long an apply is remembered.
const appliedMemory = time.Minute

// outcome says what an apply that returned afterRV for uid did, given the
// cached copy's resourceVersion before it (cached false: the cache had none).
func (a *applied) outcome(cached bool, cachedRV string, uid types.UID, afterRV string) (created, updated bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.now != nil {
		now = a.now()
	}
	if a.rv == nil {
		a.rv = map[types.UID]appliedRV{}
	}
	for k, e := range a.rv {
		if now.Sub(e.at) > appliedMemory {
			delete(a.rv, k)
		}
	}
	if !cached {
		cachedRV = ""
	}
	was := cachedRV
	p, known := a.rv[uid]
	if known && p.cached == cachedRV {
		was = p.returned
	}
	created = !cached && !known
	updated = !created && was != afterRV
	if cached && cachedRV == afterRV {
		delete(a.rv, uid)
	} else {
		a.rv[uid] = appliedRV{cached: cachedRV, returned: afterRV, at: now}
	}
	return created, updated
}
