package controller_test

import (
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/resources"
)

// TestDefaultImage: a cluster without spec.image runs the operator's release
// image, recorded in an annotation and an Event; setting spec.image takes over.
func TestDefaultImage(t *testing.T) {
	const release = "registry.example/gochat:9.9.9"
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) { c.Spec.Image = "" },
		func(r *controller.Reconciler) { r.DefaultImage = release })
	passMigration(t, ns)
	imageOf := func(want string) func() error {
		return func() error {
			var d appsv1.Deployment
			if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-logic"}, &d); err != nil {
				return err
			}
			if got := d.Spec.Template.Spec.Containers[0].Image; got != want {
				return fmt.Errorf("logic runs %s", got)
			}
			return nil
		}
	}
	eventually(t, 30*time.Second, "logic on the release image", imageOf(release))
	if got := getCluster(t, ns, "demo").Annotations[resources.AnnotationDefaultImage]; got != release {
		t.Fatalf("annotation %q", got)
	}
	waitEvent(t, ns, "ImageDefaulted", release)

	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) { c.Spec.Image = image })
	passMigration(t, ns)
	eventually(t, 30*time.Second, "logic on spec.image", imageOf(image))
	eventually(t, 10*time.Second, "annotation dropped", func() error {
		if got, ok := getCluster(t, ns, "demo").Annotations[resources.AnnotationDefaultImage]; ok {
			return fmt.Errorf("annotation still %q", got)
		}
		return nil
	})
}

// TestNoImage: without spec.image and without a default, the cluster gets a
// Warning saying what to set, and no workload with an empty image.
func TestNoImage(t *testing.T) {
	ns, _, _ := setup(t, func(c *chatv1.ChatCluster) { c.Spec.Image = "" })
	waitEvent(t, ns, "NoImage", "set spec.image")
}
