package resources

import (
	"encoding/json"
	"strconv"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// The migration Job's bounds.
const (
	// MigrationBackoffLimit is how many failed pods a migration may have
	// before its Job fails: each is kept (restartPolicy Never), so that its
	// log can be read.
	MigrationBackoffLimit = 4
	// MigrationDeadline bounds a migration Job's whole life, retries and
	// image pulls included: a pod that can never start (an image that cannot
	// be pulled does not count toward the backoff limit) fails the Job then.
	MigrationDeadline = 15 * time.Minute
	// MigrationTTL is how long a finished migration Job (and its pods) is
	// kept before Kubernetes deletes it. A failed Job that goes is run again.
	MigrationTTL = 24 * time.Hour
)

// Annotations on migration Jobs.
const (
	// AnnotationMigrationInputs is the hash of everything the migration
	// reads (its image, settings, and the values of the Secrets it reads): a
	// failed Job whose inputs changed since is run again at once.
	AnnotationMigrationInputs = "chat.gochat.io/migration-inputs"
	// AnnotationMigrationAttempt counts the Jobs run for one image with the
	// same inputs; the wait before the next one grows with it.
	AnnotationMigrationAttempt = "chat.gochat.io/migration-attempt"
	// AnnotationMigrationFailure is set by the operator on a failed Job: why
	// it failed and the tail of its last pod's log, read once.
	AnnotationMigrationFailure = "chat.gochat.io/migration-failure"
)

// MigrationJob migrates the schema for the spec's repo image. Its pods are
// kept when they fail (restartPolicy Never), its life is bounded by
// MigrationDeadline, and Kubernetes deletes it MigrationTTL after it ends.
func MigrationJob(cc *chatv1.ChatCluster, in Inputs) *batchv1.Job {
	tpl := podTemplate(cc, Migrate, Image(cc, Migrate), in, cc.Spec.Repo.Resources)
	tpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	backoff := int32(MigrationBackoffLimit)
	deadline := int64(MigrationDeadline / time.Second)
	ttl := int32(MigrationTTL / time.Second)
	job := &batchv1.Job{
		TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: meta(cc, MigrationJobName(cc), Migrate),
		Spec: batchv1.JobSpec{
			BackoffLimit:            &backoff,
			ActiveDeadlineSeconds:   &deadline,
			TTLSecondsAfterFinished: &ttl,
			Template:                tpl,
		},
	}
	attempt := max(in.MigrationAttempt, 1)
	job.Annotations = map[string]string{
		AnnotationMigrationInputs:  MigrationInputsHash(job),
		AnnotationMigrationAttempt: strconv.Itoa(attempt),
	}
	return job
}

// MigrationInputsHash hashes a migration Job's spec: its pod template carries
// the image, the settings and the hashes of the ConfigMap and of the Secret
// values it reads, so any change that could make a failed migration pass
// changes it.
func MigrationInputsHash(job *batchv1.Job) string {
	raw, err := json.Marshal(job.Spec)
	if err != nil {
		// A JobSpec always marshals; should it not, every hash differs from
		// the last, which retries rather than waits.
		return ""
	}
	return ShortHash(string(raw))
}

// MigrationAttempt reads a Job's attempt count (1 when unset or unreadable).
func MigrationAttempt(job *batchv1.Job) int {
	n, err := strconv.Atoi(job.Annotations[AnnotationMigrationAttempt])
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// Workloads are the components the migration gates, in the order they are applied.
var Workloads = []string{Logic, Task, Gateway, Repo}

// ServedImages decides the image of each workload. Once the spec's repo
// image is migrated, each runs its spec image. Until then each keeps the
// image it runs (running, from its AnnotationImage), so that no component
// rolls ahead of a schema migration that has not succeeded. A workload that
// does not exist yet is created on the last migrated image (its own override
// when it has one), and not at all before the first migration succeeds.
func ServedImages(cc *chatv1.ChatCluster, migrated string, running map[string]string) map[string]string {
	out := map[string]string{}
	spec := Image(cc, Repo)
	for _, c := range Workloads {
		switch {
		case migrated != "" && migrated == spec:
			out[c] = Image(cc, c)
		case running[c] != "":
			out[c] = running[c]
		case migrated == "":
			// Not created before the first migration.
		case Image(cc, c) == spec:
			out[c] = migrated
		default:
			out[c] = Image(cc, c)
		}
	}
	return out
}
