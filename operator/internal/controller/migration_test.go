package controller_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/resources"
	tc "github.com/gochat/gochat/services/testcluster"
)

// migrationPods are the migration pods a kubelet would still be running.
func migrationPods(t *testing.T, ns string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": resources.Migrate}); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			out = append(out, p)
		}
	}
	return out
}

// playMigration sets the status of every live migration pod, as its kubelet would.
func playMigration(t *testing.T, ns string, set func(*corev1.Pod)) {
	t.Helper()
	for _, p := range migrationPods(t, ns) {
		set(&p)
		if err := k8s.Status().Update(bg, &p); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
}

func podSucceeds(p *corev1.Pod) {
	now := metav1.Now()
	p.Status.Phase, p.Status.StartTime = corev1.PodSucceeded, &now
}

// podFails is the migrate command exiting 1, as on a bad password.
func podFails(p *corev1.Pod) {
	now := metav1.Now()
	p.Status.Phase, p.Status.StartTime = corev1.PodFailed, &now
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: resources.Migrate, Image: p.Spec.Containers[0].Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error", StartedAt: now, FinishedAt: now}}}}
}

// cannotPull is the kubelet backing off an image that does not exist.
func cannotPull(p *corev1.Pod) {
	img := p.Spec.Containers[0].Image
	p.Status.Phase = corev1.PodPending
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: resources.Migrate, Image: img,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff",
			Message: fmt.Sprintf("Back-off pulling image %q: not found: manifest unknown", img)}}}}
}

// passMigration plays the kubelet until the spec's repo image is migrated.
func passMigration(t *testing.T, ns string) {
	t.Helper()
	eventually(t, 60*time.Second, "migrated", func() error {
		playMigration(t, ns, podSucceeds)
		cc := getCluster(t, ns, "demo")
		if want := resources.Image(cc, resources.Repo); want == "" || cc.Status.MigratedImage != want {
			return fmt.Errorf("migrated %q, want %q", cc.Status.MigratedImage, want)
		}
		return nil
	})
}

// failMigration lets the current Job fail at its first pod (its backoff
// limit lowered to 0, as the Job controller's retry delays would otherwise
// take minutes) and waits for the operator to report it.
func failMigration(t *testing.T, ns string) *batchv1.Job {
	t.Helper()
	name := resources.MigrationJobName(getCluster(t, ns, "demo"))
	var job batchv1.Job
	waitJob(t, ns, name, func(*batchv1.Job) error { return nil })
	edit(t, ns, name, &job, func(j *batchv1.Job) { j.Spec.BackoffLimit = new(int32) })
	failed := fmt.Sprintf("migration Job %s (attempt %s) failed", name, job.Annotations[resources.AnnotationMigrationAttempt])
	eventually(t, 60*time.Second, "migration failed", func() error {
		playMigration(t, ns, podFails)
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated)
		if c.Reason != "MigrationFailed" || !strings.Contains(c.Message, failed) {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		var now batchv1.Job
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, &now); err != nil {
			return err
		}
		if now.UID != job.UID {
			return errors.New("another Job took its place")
		}
		job = now
		return nil
	})
	return &job
}

func waitJob(t *testing.T, ns, name string, ok func(*batchv1.Job) error) *batchv1.Job {
	t.Helper()
	var job batchv1.Job
	eventually(t, 60*time.Second, "job "+name, func() error {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, &job); err != nil {
			return err
		}
		return ok(&job)
	})
	return &job
}

// workloadImages says whether every workload runs img, in its pod template
// and its image annotation.
func workloadImages(t *testing.T, ns, img string) error {
	t.Helper()
	objs := map[string]client.Object{"demo-logic": &appsv1.Deployment{}, "demo-task": &appsv1.Deployment{}, "demo-repo": &appsv1.Deployment{}, "demo-gateway": &appsv1.StatefulSet{}}
	for name, o := range objs {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, o); err != nil {
			return err
		}
		var spec corev1.PodSpec
		switch w := o.(type) {
		case *appsv1.Deployment:
			spec = w.Spec.Template.Spec
		case *appsv1.StatefulSet:
			spec = w.Spec.Template.Spec
		}
		if got := spec.Containers[0].Image; got != img || o.GetAnnotations()[resources.AnnotationImage] != img {
			return fmt.Errorf("%s runs %s (annotation %q), want %s", name, got, o.GetAnnotations()[resources.AnnotationImage], img)
		}
	}
	return nil
}

func assertImages(t *testing.T, ns, img string) {
	t.Helper()
	if err := workloadImages(t, ns, img); err != nil {
		t.Fatal(err)
	}
}

// countedLogs counts the reads of pod logs, through the real API.
type countedLogs struct {
	real  corev1client.PodsGetter
	reads *atomic.Int32
}

func (c countedLogs) Pods(ns string) corev1client.PodInterface {
	return countedPods{c.real.Pods(ns), c.reads}
}

type countedPods struct {
	corev1client.PodInterface
	reads *atomic.Int32
}

func (p countedPods) GetLogs(name string, o *corev1.PodLogOptions) *rest.Request {
	p.reads.Add(1)
	return p.PodInterface.GetLogs(name, o)
}

// TestMigrationJob: the Job keeps its pods (restartPolicy Never) and is
// bounded in time; a failure is reported with the failed pod's exit and
// what could be read of its log, as a condition and a Warning Event, and no
// workload is created on a schema that was never migrated.
func TestMigrationJob(t *testing.T) {
	var logReads atomic.Int32
	ns, cc, _ := setup(t, nil, func(r *controller.Reconciler) {
		r.MigrationRetryBase = time.Hour
		r.PodLogs = countedLogs{kubernetes.NewForConfigOrDie(cfg).CoreV1(), &logReads}
	})
	job := waitJob(t, ns, resources.MigrationJobName(cc), func(*batchv1.Job) error { return nil })
	spec := job.Spec
	if spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever || spec.ActiveDeadlineSeconds == nil || *spec.ActiveDeadlineSeconds != int64(resources.MigrationDeadline/time.Second) ||
		spec.TTLSecondsAfterFinished == nil || *spec.TTLSecondsAfterFinished != int32(resources.MigrationTTL/time.Second) || *spec.BackoffLimit != resources.MigrationBackoffLimit {
		t.Fatalf("job spec: restartPolicy %s, deadline %v, ttl %v, backoffLimit %d", spec.Template.Spec.RestartPolicy, spec.ActiveDeadlineSeconds, spec.TTLSecondsAfterFinished, *spec.BackoffLimit)
	}
	if job.Annotations[resources.AnnotationMigrationAttempt] != "1" || job.Annotations[resources.AnnotationMigrationInputs] == "" {
		t.Fatalf("job annotations %v", job.Annotations)
	}

	job = failMigration(t, ns)
	cc = getCluster(t, ns, "demo")
	c := condition(cc, chatv1.ConditionDatabaseMigrated)
	// The log was read through pods/log: envtest has no kubelet, and the API
	// server answers a pod without a node with an empty log.
	for _, want := range []string{"migration Job " + job.Name + " (attempt 1) failed", "BackoffLimitExceeded", "exited with code 1 (Error)", "'s log is empty", "attempt 2 is run at"} {
		if !strings.Contains(c.Message, want) {
			t.Fatalf("DatabaseMigrated message %q does not say %q", c.Message, want)
		}
	}
	if r := condition(cc, chatv1.ConditionReady); r.Status != metav1.ConditionFalse || r.Reason != "MigrationFailed" {
		t.Fatalf("Ready %+v", r)
	}
	if job.Annotations[resources.AnnotationMigrationFailure] == "" {
		t.Fatal("the failure is not recorded on the Job")
	}
	waitEvent(t, ns, "MigrationFailed", "exited with code 1 (Error)")
	// Read once: later passes (a Job change wakes one, as do the probes'
	// requeues) report the recorded failure without asking again.
	edit(t, ns, job.Name, &batchv1.Job{}, func(j *batchv1.Job) { j.Labels["touched"] = "1" })
	time.Sleep(3 * time.Second)
	if n := logReads.Load(); n != 1 {
		t.Fatalf("the failed pod's log was read %d times", n)
	}
	for _, name := range []string{"demo-logic", "demo-task", "demo-repo"} {
		if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: name}, &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			t.Fatalf("deployment %s exists without a migrated schema: %v", name, err)
		}
	}
	if err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: "demo-gateway"}, &appsv1.StatefulSet{}); !apierrors.IsNotFound(err) {
		t.Fatalf("gateway statefulset exists without a migrated schema: %v", err)
	}
}

// TestMigrationLogsUnavailable: when the log cannot be read (here the
// operator's log reader is a user the API server refuses), the failure says
// so and why, and is reported all the same.
func TestMigrationLogsUnavailable(t *testing.T) {
	nobody := rest.CopyConfig(cfg)
	nobody.Impersonate = rest.ImpersonationConfig{UserName: "no-log-access"}
	ns, _, _ := setup(t, nil, func(r *controller.Reconciler) {
		r.MigrationRetryBase = time.Hour
		r.PodLogs = kubernetes.NewForConfigOrDie(nobody).CoreV1()
	})
	failMigration(t, ns)
	c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated)
	if !strings.Contains(c.Message, "logs unavailable: read the log of pod") || !strings.Contains(c.Message, "forbidden") {
		t.Fatalf("DatabaseMigrated message %q", c.Message)
	}
	waitEvent(t, ns, "MigrationFailed", "logs unavailable")
}

// TestMigrationRetry: a failed migration runs again at once when the DSN
// Secret is fixed, and by itself after a backoff that grows.
func TestMigrationRetry(t *testing.T) {
	t.Run("after the DSN Secret is fixed", func(t *testing.T) {
		ns := newNamespace(t)
		server, err := mysql.ParseDSN(tc.MySQLServerDSN())
		if err != nil {
			t.Fatal(err)
		}
		createSecret(t, ns, "mysql", map[string]string{"dsn": "gochat_nobody:wrong-pw@tcp(" + server.Addr + ")/"})
		startManager(t, ns, func(r *controller.Reconciler) { r.MigrationRetryBase = time.Hour })
		if err := k8s.Create(bg, newCluster(ns, "demo")); err != nil {
			t.Fatal(err)
		}
		failed := failMigration(t, ns)
		eventually(t, 30*time.Second, "wrong credentials reported", func() error {
			if c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseReachable); c.Reason != "AccessDenied" {
				return fmt.Errorf("DatabaseReachable %+v", c)
			}
			return nil
		})

		edit(t, ns, "mysql", &corev1.Secret{}, func(s *corev1.Secret) { s.Data["dsn"] = []byte(tc.MySQLServerDSN()) })
		rerun := waitJob(t, ns, failed.Name, func(j *batchv1.Job) error {
			if j.UID == failed.UID {
				return errors.New("the failed Job is still there")
			}
			if j.Annotations[resources.AnnotationMigrationAttempt] != "1" || j.Annotations[resources.AnnotationMigrationInputs] == failed.Annotations[resources.AnnotationMigrationInputs] {
				return fmt.Errorf("annotations %v", j.Annotations)
			}
			return nil
		})
		waitEvent(t, ns, "MigrationStarted", "a Secret it reads changed")
		passMigration(t, ns)
		eventually(t, 30*time.Second, "workloads on the migrated image", func() error { return workloadImages(t, ns, image) })
		cc := getCluster(t, ns, "demo")
		if c := condition(cc, chatv1.ConditionDatabaseReachable); c.Status != metav1.ConditionTrue {
			t.Fatalf("DatabaseReachable %+v", c)
		}
		if j := get(t, ns, rerun.Name, &batchv1.Job{}); j.UID != rerun.UID {
			t.Fatal("a succeeded migration was run again")
		}
	})
	t.Run("after its backoff", func(t *testing.T) {
		ns, cc, _ := setup(t, nil, func(r *controller.Reconciler) { r.MigrationRetryBase = 2 * time.Second })
		name := resources.MigrationJobName(cc)
		first := failMigration(t, ns)
		second := waitJob(t, ns, name, func(j *batchv1.Job) error {
			if j.UID == first.UID || j.Annotations[resources.AnnotationMigrationAttempt] != "2" {
				return fmt.Errorf("attempt %s", j.Annotations[resources.AnnotationMigrationAttempt])
			}
			return nil
		})
		waitEvent(t, ns, "MigrationStarted", "attempt 1 failed and its backoff passed")
		if second.Annotations[resources.AnnotationMigrationInputs] != first.Annotations[resources.AnnotationMigrationInputs] {
			t.Fatal("the inputs changed, yet nothing was changed")
		}
		third := failMigration(t, ns)
		if third.UID != second.UID {
			t.Fatal("failMigration failed another Job")
		}
		waitJob(t, ns, name, func(j *batchv1.Job) error {
			if j.Annotations[resources.AnnotationMigrationAttempt] != "3" {
				return fmt.Errorf("attempt %s", j.Annotations[resources.AnnotationMigrationAttempt])
			}
			return nil
		})
		passMigration(t, ns)
	})
}

// TestMigrationImagePull: a migration pod that cannot pull its image is
// shown as ImagePullFailed with the image and the kubelet's message, with a
// Warning Event; new pull settings replace the Job that never ran.
func TestMigrationImagePull(t *testing.T) {
	ns, cc, _ := setup(t, nil)
	stuck := waitJob(t, ns, resources.MigrationJobName(cc), func(*batchv1.Job) error { return nil })
	waitPods(t, ns, resources.Migrate, 1)
	eventually(t, 30*time.Second, "ImagePullFailed", func() error {
		playMigration(t, ns, cannotPull)
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated)
		if c.Reason != "ImagePullFailed" || !strings.Contains(c.Message, `cannot pull image "`+image+`" (ImagePullBackOff): Back-off pulling image`) {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		return nil
	})
	waitEvent(t, ns, "ImagePullFailed", "manifest unknown")

	edit(t, ns, "demo", &chatv1.ChatCluster{}, func(c *chatv1.ChatCluster) {
		c.Spec.Pods.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "registry"}}
	})
	waitJob(t, ns, stuck.Name, func(j *batchv1.Job) error {
		if j.UID == stuck.UID {
			return errors.New("still the stuck Job")
		}
		if s := j.Spec.Template.Spec.ImagePullSecrets; len(s) != 1 || s[0].Name != "registry" {
			return fmt.Errorf("pull secrets %v", s)
		}
		return nil
	})
	passMigration(t, ns)
}

// TestMigrationGate: no workload rolls to an image whose migration has not
// succeeded; a reverted image's Job is deleted; once a new image is
// migrated, every workload moves to it.
func TestMigrationGate(t *testing.T) {
	ns, _, _ := setup(t, nil)
	bringUp(t, ns)
	assertImages(t, ns, image)
	setImage := func(img string) *chatv1.ChatCluster {
		var cc chatv1.ChatCluster
		edit(t, ns, "demo", &cc, func(c *chatv1.ChatCluster) { c.Spec.Image = img })
		return &cc
	}

	const broken = "ghcr.io/gochat/gochat:0.2.0-broken"
	cc := setImage(broken)
	brokenJob := waitJob(t, ns, resources.MigrationJobName(cc), func(*batchv1.Job) error { return nil })
	eventually(t, 30*time.Second, "the broken image's pull failure reported", func() error {
		playMigration(t, ns, cannotPull)
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated)
		if c.Reason != "ImagePullFailed" || !strings.Contains(c.Message, broken) {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		return nil
	})
	// The pass that reported it applied the workloads too: none moved.
	assertImages(t, ns, image)

	setImage(image)
	eventually(t, 30*time.Second, "the reverted image's Job deleted", func() error {
		err := k8s.Get(bg, types.NamespacedName{Namespace: ns, Name: brokenJob.Name}, &batchv1.Job{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("job %s: %v", brokenJob.Name, err)
		}
		if c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated); c.Status != metav1.ConditionTrue {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		return nil
	})
	waitEvent(t, ns, "MigrationJobDeleted", brokenJob.Name)
	assertImages(t, ns, image)

	const next = "ghcr.io/gochat/gochat:0.3.0"
	cc = setImage(next)
	waitJob(t, ns, resources.MigrationJobName(cc), func(*batchv1.Job) error { return nil })
	eventually(t, 30*time.Second, "migrating the next image", func() error {
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionDatabaseMigrated)
		if c.Reason != "Migrating" || !strings.Contains(c.Message, next) {
			return fmt.Errorf("DatabaseMigrated %+v", c)
		}
		return nil
	})
	assertImages(t, ns, image)
	passMigration(t, ns)
	eventually(t, 30*time.Second, "every workload on the migrated image", func() error { return workloadImages(t, ns, next) })
}

// TestDatabaseReachable: the operator pings MySQL with the DSN Secret and
// reports it, never showing the DSN or its password.
func TestDatabaseReachable(t *testing.T) {
	ns, _, _ := setup(t, nil)
	server, err := mysql.ParseDSN(tc.MySQLServerDSN())
	if err != nil {
		t.Fatal(err)
	}
	const pw = "s3cret-pw"
	tests := []struct {
		name, dsn       string
		ok              bool
		reason, message string
	}{
		{"the test MariaDB", tc.MySQLServerDSN(), true, "Reachable", "MySQL answers at " + server.Addr},
		{"nothing listening", "gochat:" + pw + "@tcp(" + closedPort(t) + ")/gochat", false, "Unreachable", "connection refused"},
		{"wrong credentials", "gochat_nobody:" + pw + "@tcp(" + server.Addr + ")/", false, "AccessDenied", "Access denied"},
		{"not a DSN", "gochat:" + pw + "@tcp(" + server.Addr + "/gochat", false, "InvalidDSN", "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			edit(t, ns, "mysql", &corev1.Secret{}, func(s *corev1.Secret) { s.Data["dsn"] = []byte(tt.dsn) })
			eventually(t, 30*time.Second, "DatabaseReachable", func() error {
				cc := getCluster(t, ns, "demo")
				c := condition(cc, chatv1.ConditionDatabaseReachable)
				if (c.Status == metav1.ConditionTrue) != tt.ok || c.Reason != tt.reason || !strings.Contains(c.Message, tt.message) {
					return fmt.Errorf("DatabaseReachable %+v", c)
				}
				if r := condition(cc, chatv1.ConditionReady); !tt.ok && (r.Status != metav1.ConditionFalse || r.Reason != tt.reason) {
					return fmt.Errorf("Ready %+v", r)
				}
				return nil
			})
		})
	}
	cc := getCluster(t, ns, "demo")
	for _, c := range cc.Status.Conditions {
		if strings.Contains(c.Message, pw) {
			t.Fatalf("the password reached condition %s: %s", c.Type, c.Message)
		}
	}
	evs, err := kubernetes.NewForConfigOrDie(cfg).EventsV1().Events(ns).List(bg, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if strings.Contains(e.Note, pw) {
			t.Fatalf("the password reached event %s: %s", e.Reason, e.Note)
		}
	}
}

// TestComponentImagePull: a workload's pod that cannot pull its image makes
// Ready say so, with the image and the kubelet's message, and a Warning Event.
func TestComponentImagePull(t *testing.T) {
	ns, _, _ := setup(t, nil)
	passMigration(t, ns)
	waitPods(t, ns, resources.Logic, 1)
	eventually(t, 30*time.Second, "Ready says ImagePullFailed", func() error {
		var pods corev1.PodList
		if err := k8s.List(bg, &pods, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/component": resources.Logic}); err != nil {
			return err
		}
		p := pods.Items[0]
		p.Status.Phase = corev1.PodPending
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: resources.Logic, Image: image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "pull access denied"}}}}
		if err := k8s.Status().Update(bg, &p); err != nil && !apierrors.IsConflict(err) {
			return err
		}
		c := condition(getCluster(t, ns, "demo"), chatv1.ConditionReady)
		if c.Reason != "ImagePullFailed" || !strings.Contains(c.Message, `cannot pull image "`+image+`" (ErrImagePull): pull access denied`) {
			return fmt.Errorf("Ready %+v", c)
		}
		return nil
	})
	waitEvent(t, ns, "ImagePullFailed", "pull access denied")
}
