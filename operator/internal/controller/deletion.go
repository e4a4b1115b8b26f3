package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/kafka"
	"github.com/gochat/gochat/operator/internal/resources"
	"github.com/gochat/gochat/operator/internal/status"
)

// AnnotationSkipTopicDeletion set to "true" on a ChatCluster lets its
// deletion go without deleting the topics, whatever deleteTopicsOnDelete says.
const AnnotationSkipTopicDeletion = "chat.gochat.io/skip-topic-deletion"

// DefaultTopicDeletionTimeout bounds how long a deletion may wait for the
// workloads to stop and the topics to go before it lets the cluster go anyway.
const DefaultTopicDeletionTimeout = 5 * time.Minute

// deletionRetry is the longest wait between two attempts at deleting topics.
const deletionRetry = 10 * time.Second

// syncMetadata holds the topics finalizer exactly while the spec asks for
// the topics to be deleted, and records the operator's default image on a
// cluster without spec.image. The patch carries the resourceVersion, so a
// concurrent change (another controller's finalizer) is a conflict and a
// retry rather than an overwrite.
func (r *Reconciler) syncMetadata(ctx context.Context, cc *chatv1.ChatCluster) error {
	wantFinalizer := cc.Spec.Kafka.DeleteTopicsOnDelete
	wantImage := ""
	if cc.Spec.Image == "" {
		if r.DefaultImage == "" {
			return &stepError{reason: status.ReasonNoImage, action: "ResolveImage",
				err: errors.New("spec.image is empty and this operator has no default image (--default-image): set spec.image")}
		}
		wantImage = r.DefaultImage
	}
	haveImage := cc.Annotations[resources.AnnotationDefaultImage]
	if controllerutil.ContainsFinalizer(cc, Finalizer) == wantFinalizer && haveImage == wantImage {
		return nil
	}
	patch := client.MergeFromWithOptions(cc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if wantFinalizer {
		controllerutil.AddFinalizer(cc, Finalizer)
	} else {
		controllerutil.RemoveFinalizer(cc, Finalizer)
	}
	if wantImage == "" {
		delete(cc.Annotations, resources.AnnotationDefaultImage)
	} else {
		metav1.SetMetaDataAnnotation(&cc.ObjectMeta, resources.AnnotationDefaultImage, wantImage)
	}
	if err := r.Patch(ctx, cc, patch); err != nil {
		return fmt.Errorf("patch finalizer and default image: %w", err)
	}
	if wantImage != haveImage && wantImage != "" {
		r.event(cc, corev1.EventTypeNormal, "ImageDefaulted", "ResolveImage", "spec.image is empty: running the operator's image %s", wantImage)
	}
	return nil
}

func (r *Reconciler) topicDeletionTimeout() time.Duration {
	if r.TopicDeletionTimeout > 0 {
		return r.TopicDeletionTimeout
	}
	return DefaultTopicDeletionTimeout
}

// finalize stops the workloads, deletes the topics when asked, then lets the
// cluster go; owner references take everything else with it. It never holds
// the cluster past its bound: Kafka unreachable, or its credentials already
// deleted (a namespace teardown deletes Secrets too), end in a Warning event
// naming the topics left behind.
func (r *Reconciler) finalize(ctx context.Context, cc *chatv1.ChatCluster) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(cc, Finalizer) {
		return ctrl.Result{}, nil
	}
	topics := resources.Topics(cc)
	switch {
	case cc.Annotations[AnnotationSkipTopicDeletion] == "true":
		r.event(cc, corev1.EventTypeNormal, "TopicDeletionSkipped", "DeleteTopics", "topics %v kept: annotation %s", topics, AnnotationSkipTopicDeletion)
		return ctrl.Result{}, r.releaseFinalizer(ctx, cc)
	case !cc.Spec.Kafka.DeleteTopicsOnDelete:
		return ctrl.Result{}, r.releaseFinalizer(ctx, cc)
	}
	bound := r.topicDeletionTimeout()
	deadline := cc.DeletionTimestamp.Add(bound)
	remaining := time.Until(deadline)
	if remaining <= 0 {
		r.event(cc, corev1.EventTypeWarning, "TopicDeletionAbandoned", "DeleteTopics", "topics %v not deleted within %s: delete them by hand", topics, bound)
		return ctrl.Result{}, r.releaseFinalizer(ctx, cc)
	}

	// Consumers and producers still running would recreate what is deleted
	// (or fail noisily), so the workloads go first; half the bound is theirs.
	running, err := r.stopWorkloads(ctx, cc)
	if err != nil {
		return ctrl.Result{}, err
	}
	if running > 0 && time.Until(cc.DeletionTimestamp.Add(bound/2)) > 0 {
		return ctrl.Result{RequeueAfter: min(2*time.Second, remaining)}, nil
	}

	conn, err := r.kafkaConnection(ctx, cc)
	if err == nil {
		attempt, cancel := context.WithTimeout(ctx, min(20*time.Second, remaining))
		err = r.deleteTopics(attempt, conn, topics)
		cancel()
	} else if apierrors.IsNotFound(err) {
		// The credentials will not come back: waiting cannot help.
		r.event(cc, corev1.EventTypeWarning, "TopicDeletionAbandoned", "DeleteTopics", "topics %v not deleted: %v", topics, err)
		return ctrl.Result{}, r.releaseFinalizer(ctx, cc)
	}
	if err != nil {
		r.event(cc, corev1.EventTypeWarning, "TopicDeletionFailed", "DeleteTopics", "%v (retrying until %s)", err, deadline.UTC().Format(time.RFC3339))
		return ctrl.Result{RequeueAfter: min(deletionRetry, max(time.Until(deadline), time.Second))}, nil
	}
	r.event(cc, corev1.EventTypeNormal, "TopicsDeleted", "DeleteTopics", "deleted topics %v", topics)
	return ctrl.Result{}, r.releaseFinalizer(ctx, cc)
}

// stopWorkloads deletes the cluster's Deployments, gateway StatefulSet and
// migration Jobs, and counts the pods still there.
func (r *Reconciler) stopWorkloads(ctx context.Context, cc *chatv1.ChatCluster) (int, error) {
	ns := cc.Namespace
	objs := []client.Object{&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: resources.Name(cc, resources.Gateway)}}}
	for _, c := range []string{resources.Logic, resources.Repo, resources.Task} {
		objs = append(objs, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: resources.Name(cc, c)}})
	}
	var jobs batchv1.JobList
	if err := r.List(ctx, &jobs, client.InNamespace(ns), client.MatchingLabels(resources.SelectorLabels(cc, resources.Migrate))); err != nil {
		return 0, fmt.Errorf("list migration jobs: %w", err)
	}
	for i := range jobs.Items {
		objs = append(objs, &jobs.Items[i])
	}
	for _, o := range objs {
		if err := r.Delete(ctx, o, client.PropagationPolicy(metav1.DeletePropagationBackground)); err == nil {
			r.eventAbout(cc, o, corev1.EventTypeNormal, "WorkloadStopped", "Delete", "deleted %s %s before the topics", kindOf(o), o.GetName())
		} else if !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("delete %s: %w", o.GetName(), err)
		}
	}
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/name": "gochat", "app.kubernetes.io/instance": cc.Name}); err != nil {
		return 0, fmt.Errorf("list pods: %w", err)
	}
	return len(pods.Items), nil
}

func (r *Reconciler) releaseFinalizer(ctx context.Context, cc *chatv1.ChatCluster) error {
	patch := client.MergeFromWithOptions(cc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(cc, Finalizer)
	if err := r.Patch(ctx, cc, patch); err != nil {
		return client.IgnoreNotFound(fmt.Errorf("remove finalizer: %w", err))
	}
	return nil
}

func kindOf(o client.Object) string {
	switch o.(type) {
	case *appsv1.StatefulSet:
		return "StatefulSet"
	case *appsv1.Deployment:
		return "Deployment"
	case *batchv1.Job:
		return "Job"
	}
	return fmt.Sprintf("%T", o)
}

func (r *Reconciler) deleteTopics(ctx context.Context, conn kafka.Connection, topics []string) error {
	adm, closeAdm, err := kafka.Admin(conn)
	if err != nil {
		return err
	}
	defer closeAdm()
	return kafka.Delete(ctx, adm, topics)
}
