package controller

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/resources"
	"github.com/gochat/gochat/operator/internal/status"
)

// A failed migration whose inputs did not change is run again after a wait
// that doubles with each attempt, from DefaultMigrationRetryBase up to
// DefaultMigrationRetryMax; a change of the spec or of the DSN Secret runs it
// again at once.
const (
	DefaultMigrationRetryBase = time.Minute
	DefaultMigrationRetryMax  = time.Hour
)

// The failed pod's log copied into the condition and the Event: its last
// lines, bounded in bytes, since a condition message is read in a terminal.
const (
	logTailLines = 20
	logTailBytes = 2048
	logTimeout   = 5 * time.Second
)

// MySQL probe timeouts: the probe runs in every reconcile, so an
// unreachable server costs it at most this.
const (
	mysqlDialTimeout = 2 * time.Second
	mysqlPingTimeout = 3 * time.Second
)

// imagePullReasons are the kubelet's waiting reasons for an image it cannot
// pull: none of them counts toward a Job's backoff limit, so a pod in one
// waits until someone looks.
var imagePullReasons = map[string]bool{
	"ErrImagePull": true, "ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
}

// PodLogs reads a pod's log through the pods/log subresource.
type PodLogs interface {
	Pods(namespace string) corev1client.PodInterface
}

func (r *Reconciler) retryDelay(attempt int) time.Duration {
	base, most := r.MigrationRetryBase, r.MigrationRetryMax
	if base <= 0 {
		base = DefaultMigrationRetryBase
	}
	if most <= 0 {
		most = DefaultMigrationRetryMax
	}
	d := base
	for i := 1; i < attempt && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}

// migrate runs the migration Job of the spec's repo image and records its
// success; it reports a failure (with the tail of the failed pod's log) or an
// image that cannot be pulled, runs a failed Job again when its inputs
// changed or its backoff passed, and deletes the Jobs of images no longer
// wanted. retryIn > 0 asks to look again then: a failed Job waits it out.
func (r *Reconciler) migrate(ctx context.Context, cc *chatv1.ChatCluster, in resources.Inputs, obs *status.Observed) (retryIn time.Duration, err error) {
	want := resources.Image(cc, resources.Migrate)
	name := resources.MigrationJobName(cc)
	if err := r.deleteAbandonedJobs(ctx, cc, name); err != nil {
		return 0, err
	}
	if obs.MigratedImage == want {
		return 0, nil
	}
	var cur batchv1.Job
	err = r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: name}, &cur)
	if apierrors.IsNotFound(err) {
		return 0, r.startMigration(ctx, cc, in, 1, "", obs)
	}
	if err != nil {
		return 0, fmt.Errorf("get migration job %s: %w", name, err)
	}
	obs.Migration = &cur
	if status.JobSucceeded(&cur) {
		obs.MigratedImage = want
		r.eventAbout(cc, &cur, corev1.EventTypeNormal, "MigrationSucceeded", "Migrate", "schema migrated for %s by Job %s", want, cur.Name)
		return 0, nil
	}
	if !cur.DeletionTimestamp.IsZero() {
		return 0, nil // a rerun waits for it to go
	}
	pods, err := r.jobPods(ctx, &cur)
	if err != nil {
		return 0, err
	}
	failed := status.JobFailed(&cur)
	pull := imagePullFailure(pods)
	attempt := resources.MigrationAttempt(&cur)
	fresh := resources.MigrationJob(cc, in)
	if changed := fresh.Annotations[resources.AnnotationMigrationInputs] != cur.Annotations[resources.AnnotationMigrationInputs]; changed && (failed || pull != nil) {
		// Nothing ran (an image that never pulled) or it failed: a spec or
		// Secret change is what a person does to fix it, so try it now.
		return 0, r.rerunMigration(ctx, cc, &cur, in, 1, "its spec or a Secret it reads changed", obs)
	}
	switch {
	case failed:
		report, err := r.failureReport(ctx, cc, &cur, pods)
		if err != nil {
			return 0, err
		}
		wait := time.Until(failedAt(&cur).Add(r.retryDelay(attempt)))
		if wait <= 0 {
			return 0, r.rerunMigration(ctx, cc, &cur, in, attempt+1, fmt.Sprintf("attempt %d failed and its backoff passed", attempt), obs)
		}
		at := time.Now().Add(wait).UTC().Truncate(time.Second).Format(time.RFC3339)
		obs.MigrationCheck = status.Check{Reason: status.ReasonMigrationFailed,
			Err: fmt.Errorf("%s; attempt %d is run at %s, or at once when the spec or the DSN Secret changes", report, attempt+1, at)}
		return wait, nil
	case pull != nil:
		obs.MigrationCheck = *pull
		if prev := condition(cc.Status.Conditions, chatv1.ConditionDatabaseMigrated); prev.Reason != status.ReasonImagePullFailed || prev.Message != pull.Err.Error() {
			r.eventAbout(cc, &cur, corev1.EventTypeWarning, status.ReasonImagePullFailed, "Migrate", "migration Job %s: %v", cur.Name, pull.Err)
		}
	}
	return 0, nil
}

// startMigration creates the Job for the spec's repo image.
func (r *Reconciler) startMigration(ctx context.Context, cc *chatv1.ChatCluster, in resources.Inputs, attempt int, why string, obs *status.Observed) error {
	in.MigrationAttempt = attempt
	job := resources.MigrationJob(cc, in)
	if err := r.Create(ctx, job); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil // the one it replaces is still going; the next pass creates it
		}
		return fmt.Errorf("create migration job %s: %w", job.Name, err)
	}
	msg := fmt.Sprintf("migrating the schema for %s (Job %s, attempt %d)", resources.Image(cc, resources.Migrate), job.Name, attempt)
	if why != "" {
		msg += ": " + why
	}
	r.eventAbout(cc, job, corev1.EventTypeNormal, "MigrationStarted", "Migrate", "%s", msg)
	obs.Migration = job
	return nil
}

// rerunMigration replaces a failed (or never started) Job by a new one.
func (r *Reconciler) rerunMigration(ctx context.Context, cc *chatv1.ChatCluster, old *batchv1.Job, in resources.Inputs, attempt int, why string, obs *status.Observed) error {
	// The UID precondition never deletes a Job that replaced this one meanwhile.
	err := r.Delete(ctx, old, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &old.UID})
	if err != nil && !apierrors.IsNotFound(err) {
		if apierrors.IsConflict(err) {
			return nil
		}
		return fmt.Errorf("delete migration job %s to run it again: %w", old.Name, err)
	}
	obs.Migration = nil
	return r.startMigration(ctx, cc, in, attempt, why, obs)
}

// deleteAbandonedJobs deletes the migration Jobs of images no longer wanted:
// earlier images once migrated, and images reverted before their migration
// succeeded (a Job stuck on an image that cannot be pulled would else stay).
func (r *Reconciler) deleteAbandonedJobs(ctx context.Context, cc *chatv1.ChatCluster, keep string) error {
	var jobs batchv1.JobList
	if err := r.List(ctx, &jobs, client.InNamespace(cc.Namespace), client.MatchingLabels(resources.SelectorLabels(cc, resources.Migrate))); err != nil {
		return fmt.Errorf("list migration jobs: %w", err)
	}
	for i := range jobs.Items {
		j := &jobs.Items[i]
		if j.Name == keep || !j.DeletionTimestamp.IsZero() || !metav1.IsControlledBy(j, cc) {
			continue
		}
		err := r.Delete(ctx, j, client.PropagationPolicy(metav1.DeletePropagationBackground), client.Preconditions{UID: &j.UID})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete migration job %s: %w", j.Name, err)
		}
		r.eventAbout(cc, j, corev1.EventTypeNormal, "MigrationJobDeleted", "Delete", "deleted migration Job %s: the image it migrates is no longer wanted", j.Name)
	}
	return nil
}

// jobPods are the pods of one Job (by its UID: a Job of the same name that
// it replaced may still have pods), oldest first.
func (r *Reconciler) jobPods(ctx context.Context, job *batchv1.Job) ([]corev1.Pod, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabels{batchv1.ControllerUidLabel: string(job.UID)}); err != nil {
		return nil, fmt.Errorf("list pods of migration job %s: %w", job.Name, err)
	}
	sort.Slice(pods.Items, func(i, j int) bool {
		return pods.Items[i].CreationTimestamp.Before(&pods.Items[j].CreationTimestamp)
	})
	return pods.Items, nil
}

// imagePullFailure reports the first pod waiting on an image it cannot pull.
func imagePullFailure(pods []corev1.Pod) *status.Check {
	for i := range pods {
		if c := podImagePullFailure(&pods[i]); c != nil {
			return c
		}
	}
	return nil
}

func podImagePullFailure(p *corev1.Pod) *status.Check {
	if !p.DeletionTimestamp.IsZero() {
		return nil
	}
	for _, cs := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && imagePullReasons[w.Reason] {
			msg := fmt.Sprintf("pod %s cannot pull image %q (%s)", p.Name, cs.Image, w.Reason)
			if w.Message != "" {
				msg += ": " + w.Message
			}
			return &status.Check{Reason: status.ReasonImagePullFailed, Err: errors.New(msg)}
		}
	}
	return nil
}

// checkComponentImages reports the first pod of a workload (not the
// migration, which migrate reports) waiting on an image it cannot pull, with
// a Warning Event when it starts.
func (r *Reconciler) checkComponentImages(ctx context.Context, cc *chatv1.ChatCluster) (status.Check, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(cc.Namespace), client.MatchingLabels{"app.kubernetes.io/name": "gochat", "app.kubernetes.io/instance": cc.Name}); err != nil {
		return status.Check{}, fmt.Errorf("list pods: %w", err)
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.Labels["app.kubernetes.io/component"] != resources.Migrate {
			live = append(live, p)
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].Name < live[j].Name })
	c := imagePullFailure(live)
	if c == nil {
		return status.Check{}, nil
	}
	// Ready carries the failure once reported: a new one is a new Event.
	if prev := condition(cc.Status.Conditions, chatv1.ConditionReady); !strings.Contains(prev.Message, c.Err.Error()) {
		r.event(cc, corev1.EventTypeWarning, status.ReasonImagePullFailed, "Pull", "%v", c.Err)
	}
	return *c, nil
}

// failedAt is when the Job failed.
func failedAt(job *batchv1.Job) time.Time {
	for _, c := range job.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return c.LastTransitionTime.Time
		}
	}
	return time.Now()
}

// failureReport says why a Job failed, with the tail of its last pod's log.
// It is read once per Job and kept in the Job's annotation: the Warning
// Event goes out then, and the kubelet is not asked again on every pass.
func (r *Reconciler) failureReport(ctx context.Context, cc *chatv1.ChatCluster, job *batchv1.Job, pods []corev1.Pod) (string, error) {
	if report := job.Annotations[resources.AnnotationMigrationFailure]; report != "" {
		return report, nil
	}
	var why string
	for _, c := range job.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			why = strings.TrimSuffix(fmt.Sprintf("%s: %s", c.Reason, c.Message), ": ")
		}
	}
	summary := fmt.Sprintf("migration Job %s (attempt %d) failed", job.Name, resources.MigrationAttempt(job))
	if why != "" {
		summary += " (" + why + ")"
	}
	var tail string
	if pod := lastPod(pods); pod == nil {
		summary += "; no pod is left to read a log from"
	} else {
		if exit := exitOf(pod); exit != "" {
			summary += fmt.Sprintf("; pod %s %s", pod.Name, exit)
		}
		lines, err := r.logTail(ctx, cc, pod)
		switch {
		case err != nil:
			summary += fmt.Sprintf("; logs unavailable: %v", err)
		case lines == "":
			summary += fmt.Sprintf("; pod %s's log is empty", pod.Name)
		default:
			summary += fmt.Sprintf("; last lines of pod %s's log:", pod.Name)
			tail = lines
		}
	}
	report := summary
	if tail != "" {
		report += "\n" + tail
	}
	patch := client.MergeFrom(job.DeepCopy())
	if job.Annotations == nil {
		job.Annotations = map[string]string{}
	}
	job.Annotations[resources.AnnotationMigrationFailure] = report
	if err := r.Patch(ctx, job, patch); err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("record the failure on migration job %s: %w", job.Name, err)
	}
	r.eventAbout(cc, job, corev1.EventTypeWarning, status.ReasonMigrationFailed, "Migrate", "%s", eventNote(summary, tail))
	return report, nil
}

// eventNoteLimit is the API server's limit on an Event's note.
const eventNoteLimit = 1024

// eventNote fits a summary and the end of a log tail into an Event's note:
// the summary first (cut if it must be), then as many of the last lines as fit.
func eventNote(summary, tail string) string {
	if len(summary) > eventNoteLimit {
		return strings.ToValidUTF8(summary[:eventNoteLimit-3], "") + "..."
	}
	room := eventNoteLimit - len(summary) - 1
	if tail == "" || room <= 0 {
		return summary
	}
	if len(tail) > room {
		tail = tail[len(tail)-room:]
		i := strings.IndexByte(tail, '\n')
		if i < 0 {
			return summary
		}
		tail = tail[i+1:]
	}
	return summary + "\n" + tail
}

// lastPod is the pod whose log tells why the Job failed: the newest failed
// one, else the newest (a deadline ends running pods too).
func lastPod(pods []corev1.Pod) *corev1.Pod {
	for i := len(pods) - 1; i >= 0; i-- {
		if pods[i].Status.Phase == corev1.PodFailed {
			return &pods[i]
		}
	}
	if len(pods) > 0 {
		return &pods[len(pods)-1]
	}
	return nil
}

func exitOf(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			return strings.TrimSuffix(fmt.Sprintf("exited with code %d (%s)", t.ExitCode, t.Reason), " ()")
		}
	}
	return ""
}

// logTail reads the last lines of a pod's log, bounded in bytes, with the
// DSN and its password blanked should the program have printed them.
func (r *Reconciler) logTail(ctx context.Context, cc *chatv1.ChatCluster, pod *corev1.Pod) (string, error) {
	if r.PodLogs == nil {
		return "", errors.New("the operator has no client for pod logs")
	}
	lines, limit := int64(logTailLines), int64(64*1024)
	lctx, cancel := context.WithTimeout(ctx, logTimeout)
	defer cancel()
	// Stream, not DoRaw: its error carries the API server's reason (such as
	// a refusal), and the reader is bounded whatever the server sends.
	body, err := r.PodLogs.Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: resources.Migrate, TailLines: &lines, LimitBytes: &limit}).Stream(lctx)
	if err != nil {
		return "", fmt.Errorf("read the log of pod %s: %w", pod.Name, err)
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, limit))
	if err != nil {
		return "", fmt.Errorf("read the log of pod %s: %w", pod.Name, err)
	}
	raw = bytes.TrimRight(raw, "\n")
	if len(raw) > logTailBytes {
		raw = raw[len(raw)-logTailBytes:]
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[i+1:] // whole lines only
		}
	}
	return r.redactDSN(ctx, cc, strings.ToValidUTF8(string(raw), "?")), nil
}

// redactDSN blanks the DSN, and its password, wherever they appear in s.
func (r *Reconciler) redactDSN(ctx context.Context, cc *chatv1.ChatCluster, s string) string {
	dsn, err := r.readDSN(ctx, cc)
	if err != nil || dsn == "" {
		return s
	}
	s = strings.ReplaceAll(s, dsn, "<dsn>")
	if cfg, err := mysql.ParseDSN(dsn); err == nil && cfg.Passwd != "" {
		s = strings.ReplaceAll(s, cfg.Passwd, "***")
	}
	return s
}

func (r *Reconciler) readDSN(ctx context.Context, cc *chatv1.ChatCluster) (string, error) {
	ref := cc.Spec.MySQL.DSNSecretRef
	var s corev1.Secret
	if err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: ref.Name}, &s); err != nil {
		return "", fmt.Errorf("mysql dsn secret %s: %w", ref.Name, err)
	}
	v, ok := s.Data[ref.Key]
	if !ok || len(v) == 0 {
		return "", fmt.Errorf("secret %s has no key %q", ref.Name, ref.Key)
	}
	return string(v), nil
}

// servedImages decides the image of each workload from what runs now
// (resources.ServedImages): nothing rolls to an image whose migration has
// not succeeded.
func (r *Reconciler) servedImages(ctx context.Context, cc *chatv1.ChatCluster, migrated string, gateway *appsv1.StatefulSet) (map[string]string, error) {
	running := map[string]string{}
	for _, c := range []string{resources.Logic, resources.Repo, resources.Task} {
		var d appsv1.Deployment
		err := r.Get(ctx, types.NamespacedName{Namespace: cc.Namespace, Name: resources.Name(cc, c)}, &d)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get deployment %s: %w", d.Name, err)
		}
		running[c] = runningImage(d.Annotations, d.Spec.Template.Spec)
	}
	if gateway != nil {
		running[resources.Gateway] = runningImage(gateway.Annotations, gateway.Spec.Template.Spec)
	}
	return resources.ServedImages(cc, migrated, running), nil
}

// runningImage is a workload's image: its annotation, else (a workload
// written before the annotation) its container's.
func runningImage(annotations map[string]string, spec corev1.PodSpec) string {
	if img := annotations[resources.AnnotationImage]; img != "" {
		return img
	}
	if len(spec.Containers) > 0 {
		return spec.Containers[0].Image
	}
	return ""
}

// quietMySQL drops the MySQL driver's own log lines: a failed probe is
// reported in the DatabaseReachable condition, with its error, instead.
type quietMySQL struct{}

func (quietMySQL) Print(...any) {}

// checkMySQL connects to the DSN's server and pings it, within
// mysqlPingTimeout. Neither the DSN nor its password is ever in what it
// reports.
func (r *Reconciler) checkMySQL(ctx context.Context, cc *chatv1.ChatCluster) status.Check {
	ref := cc.Spec.MySQL.DSNSecretRef
	dsn, err := r.readDSN(ctx, cc)
	if err != nil {
		return status.Check{Reason: status.ReasonSecretMissing, Err: err}
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return status.Check{Reason: status.ReasonInvalidDSN, Err: fmt.Errorf("the DSN in secret %s key %q does not parse: %s", ref.Name, ref.Key, redact(err.Error(), dsn, dsnPassword(dsn)))}
	}
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = mysqlDialTimeout, mysqlDialTimeout, mysqlDialTimeout
	cfg.Logger = quietMySQL{}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return status.Check{Reason: status.ReasonInvalidDSN, Err: fmt.Errorf("the DSN in secret %s key %q: %s", ref.Name, ref.Key, redact(err.Error(), dsn, cfg.Passwd))}
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	pctx, cancel := context.WithTimeout(ctx, mysqlPingTimeout)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		reason := status.ReasonUnreachable
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1044 || me.Number == 1045 || me.Number == 1698) {
			reason = status.ReasonAccessDenied // it answered, and refused these credentials
		}
		return status.Check{Reason: reason, Err: fmt.Errorf("mysql at %s: %s", cfg.Addr, redact(err.Error(), dsn, cfg.Passwd))}
	}
	return status.Check{Message: "MySQL answers at " + cfg.Addr}
}

// dsnPassword guesses the password of a DSN that does not parse: what lies
// between the first colon and the last @, as user:password@net(addr)/db.
func dsnPassword(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	if at < 0 {
		return ""
	}
	if colon := strings.Index(dsn[:at], ":"); colon >= 0 {
		return dsn[colon+1 : at]
	}
	return ""
}

// redact blanks a DSN and a password in an error's text: the driver's
// errors are not known to leave them out.
func redact(s, dsn, password string) string {
	if dsn != "" {
		s = strings.ReplaceAll(s, dsn, "<dsn>")
	}
	if password != "" {
		s = strings.ReplaceAll(s, password, "***")
	}
	return s
}
