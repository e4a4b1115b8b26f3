package resources

import (
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

func TestMigrationJob(t *testing.T) {
	cc := cluster()
	in := Inputs{SecretHash: map[string]string{Migrate: "dsn-1"}}
	job := MigrationJob(cc, in)
	spec := job.Spec
	if spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Fatalf("restartPolicy %s: failed pods must be kept for their logs", spec.Template.Spec.RestartPolicy)
	}
	if *spec.ActiveDeadlineSeconds != 900 || *spec.TTLSecondsAfterFinished != 86400 || *spec.BackoffLimit != MigrationBackoffLimit {
		t.Fatalf("deadline %d ttl %d backoff %d", *spec.ActiveDeadlineSeconds, *spec.TTLSecondsAfterFinished, *spec.BackoffLimit)
	}
	if MigrationAttempt(job) != 1 {
		t.Fatalf("attempt %d", MigrationAttempt(job))
	}
	in.MigrationAttempt = 3
	if again := MigrationJob(cc, in); MigrationAttempt(again) != 3 || again.Annotations[AnnotationMigrationInputs] != job.Annotations[AnnotationMigrationInputs] {
		t.Fatal("the attempt is counted apart from the inputs")
	}

	// What could make a failed migration pass changes the inputs hash.
	changes := []struct {
		name   string
		mutate func(*chatv1.ChatCluster, *Inputs)
	}{
		{"the DSN Secret's value", func(_ *chatv1.ChatCluster, in *Inputs) { in.SecretHash = map[string]string{Migrate: "dsn-2"} }},
		{"the repo's pod settings", func(c *chatv1.ChatCluster, _ *Inputs) {
			c.Spec.Repo.Pods.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "registry"}}
		}},
		{"the settings ConfigMap", func(c *chatv1.ChatCluster, _ *Inputs) { c.Spec.Redis.Address = "elsewhere:6379" }},
	}
	for _, ch := range changes {
		c, in := cluster(), Inputs{SecretHash: map[string]string{Migrate: "dsn-1"}}
		ch.mutate(c, &in)
		if MigrationJob(c, in).Annotations[AnnotationMigrationInputs] == job.Annotations[AnnotationMigrationInputs] {
			t.Errorf("%s changed, the inputs hash did not", ch.name)
		}
	}
	c, in2 := cluster(), Inputs{SecretHash: map[string]string{Migrate: "dsn-1", Logic: "other"}}
	if MigrationJob(c, in2).Annotations[AnnotationMigrationInputs] != job.Annotations[AnnotationMigrationInputs] {
		t.Error("a Secret the migration does not read changed its inputs hash")
	}
}

func TestServedImages(t *testing.T) {
	all := func(img string) map[string]string {
		return map[string]string{Logic: img, Task: img, Gateway: img, Repo: img}
	}
	tests := []struct {
		name     string
		migrated string
		running  map[string]string
		want     map[string]string
	}{
		{"first install, not migrated yet: nothing", "", nil, map[string]string{}},
		{"first install, migrated: every spec image", "gochat:1", nil,
			map[string]string{Logic: "gochat-logic:2", Task: "gochat:1", Gateway: "gochat:1", Repo: "gochat:1"}},
		{"new image not migrated yet: each keeps what it runs", "gochat:0", all("gochat:0"), all("gochat:0")},
		{"new image not migrated, a workload deleted by hand: back on the migrated image", "gochat:0",
			map[string]string{Logic: "gochat-logic:2", Gateway: "gochat:0", Repo: "gochat:0"},
			map[string]string{Logic: "gochat-logic:2", Task: "gochat:0", Gateway: "gochat:0", Repo: "gochat:0"}},
		{"new image migrated: every spec image", "gochat:1", all("gochat:0"),
			map[string]string{Logic: "gochat-logic:2", Task: "gochat:1", Gateway: "gochat:1", Repo: "gochat:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// spec.image gochat:1, logic's own image gochat-logic:2.
			if got := ServedImages(cluster(), tt.migrated, tt.running); !maps.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}
