package resources

import (
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

// Inputs are what the controller resolved beside the spec.
type Inputs struct {
	// SecretHash per component: hash of the Secret values it reads.
	SecretHash map[string]string
	// Images is the image each workload runs (ServedImages): the spec's once
	// the spec's repo image is migrated, the one it ran until then. A
	// component missing here runs its spec image.
	Images map[string]string
	// GatewayReplicas is the gateway StatefulSet's replicas while a
	// scale-down drains the gateways it removes; nil: spec.gateway.replicas.
	GatewayReplicas *int32
	// KafkaCredentialsCA says the Kafka credentials Secret holds ca.crt.
	KafkaCredentialsCA bool
	// MigrationAttempt numbers the migration Job among those run for one
	// image with the same inputs (0 or 1: the first).
	MigrationAttempt int
}

// KafkaCA is the Secret key holding the brokers' CA: tls.caSecretRef, else
// ca.crt of the credentials Secret when it has one; nil means the system
// roots (or no TLS at all).
func KafkaCA(cc *chatv1.ChatCluster, in Inputs) *corev1.SecretKeySelector {
	k := cc.Spec.Kafka
	switch {
	case !k.KafkaTLSEnabled():
		return nil
	case k.TLS.CASecretRef != nil:
		return k.TLS.CASecretRef
	case k.CredentialsSecretRef != nil && in.KafkaCredentialsCA:
		return &corev1.SecretKeySelector{LocalObjectReference: *k.CredentialsSecretRef, Key: "ca.crt"}
	}
	return nil
}

func secretEnv(name string, ref corev1.SecretKeySelector, optional bool) corev1.EnvVar {
	r := ref
	if optional {
		t := true
		r.Optional = &t
	}
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &r}}
}

const kafkaCAPath = "/etc/gochat/kafka"

// env is the container's own variables: its secrets, and the pod IP for the gateway.
func env(cc *chatv1.ChatCluster, component string, in Inputs) []corev1.EnvVar {
	var out []corev1.EnvVar
	// The services refuse SASL over plaintext unless told it is wanted, as
	// the CRD does: both read the same three settings.
	kafkaCreds := func() {
		k := cc.Spec.Kafka
		if r := k.CredentialsSecretRef; r != nil {
			out = append(out,
				secretEnv("GOCHAT_KAFKA_SASL_USER", corev1.SecretKeySelector{LocalObjectReference: *r, Key: "username"}, true),
				secretEnv("GOCHAT_KAFKA_SASL_PASSWORD", corev1.SecretKeySelector{LocalObjectReference: *r, Key: "password"}, true))
		}
		if k.KafkaTLSEnabled() {
			out = append(out, corev1.EnvVar{Name: "GOCHAT_KAFKA_TLS", Value: "true"})
		} else if k.AllowPlaintextSASL {
			out = append(out, corev1.EnvVar{Name: "GOCHAT_KAFKA_ALLOW_PLAINTEXT_SASL", Value: "true"})
		}
		if KafkaCA(cc, in) != nil {
			out = append(out, corev1.EnvVar{Name: "GOCHAT_KAFKA_TLS_CA", Value: kafkaCAPath + "/ca.crt"})
		}
	}
	switch component {
	case Gateway:
		out = append(out,
			corev1.EnvVar{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			secretEnv("GOCHAT_JWT_SECRET", JWTSecretRef(cc), false))
	case Logic:
		out = append(out, secretEnv("GOCHAT_JWT_SECRET", JWTSecretRef(cc), false))
		kafkaCreds()
	case Repo, Migrate:
		out = append(out, secretEnv("GOCHAT_MYSQL_DSN", cc.Spec.MySQL.DSNSecretRef, false))
		if r := cc.Spec.Redis.PasswordSecretRef; r != nil && component == Repo {
			out = append(out, secretEnv("GOCHAT_REDIS_PASSWORD", *r, false))
		}
	case Task:
		kafkaCreds()
		if r := cc.Spec.Notifications.WebhookSecretRef; r != nil {
			out = append(out, secretEnv("GOCHAT_WEBHOOK_SECRET", *r, false))
		}
	}
	return out
}

func kafkaCAVolume(cc *chatv1.ChatCluster, component string, in Inputs) ([]corev1.Volume, []corev1.VolumeMount) {
	r := KafkaCA(cc, in)
	if r == nil || (component != Logic && component != Task) {
		return nil, nil
	}
	return []corev1.Volume{{Name: "kafka-ca", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: r.Name, Items: []corev1.KeyToPath{{Key: r.Key, Path: "ca.crt"}},
		}}}},
		[]corev1.VolumeMount{{Name: "kafka-ca", MountPath: kafkaCAPath, ReadOnly: true}}
}

func securityContext() *corev1.SecurityContext {
	t, f := true, false
	return &corev1.SecurityContext{
		RunAsNonRoot: &t, AllowPrivilegeEscalation: &f, ReadOnlyRootFilesystem: &t,
		Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func httpProbe(path string, port int32) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}}, PeriodSeconds: 5, FailureThreshold: 3}
}

// podTemplate is the pod of one component.
func podTemplate(cc *chatv1.ChatCluster, component, image string, in Inputs, res corev1.ResourceRequirements) corev1.PodTemplateSpec {
	c := corev1.Container{
		Name: component, Image: image, ImagePullPolicy: cc.Spec.ImagePullPolicy,
		Args:            []string{component},
		EnvFrom:         []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: ConfigMapName(cc)}}}},
		Env:             env(cc, component, in),
		Resources:       withDefaultRequests(res),
		SecurityContext: securityContext(),
	}
	switch component {
	case Gateway:
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: GatewayHTTPPort}, {Name: "grpc", ContainerPort: GatewayGRPCPort}, {Name: "metrics", ContainerPort: GatewayMetrics}}
		// Probed every second and out at the first failure: a gateway that
		// starts draining leaves the Service's endpoints within about a
		// second, so the reconnects it asks for land on the other gateways.
		c.ReadinessProbe = httpProbe("/readyz", GatewayHTTPPort)
		c.ReadinessProbe.PeriodSeconds, c.ReadinessProbe.FailureThreshold = 1, 1
		c.LivenessProbe = httpProbe("/healthz", GatewayHTTPPort)
	// Probes are HTTP on the metrics port: gRPC is mutual TLS, which kubelet
	// gRPC probes cannot speak. Readiness is /readyz, which fails while a
	// dependency is down (MySQL, Redis, im-repo, Kafka); liveness is /livez,
	// the process alone, so an outage elsewhere never restarts the pods.
	case Logic:
		c.Ports = []corev1.ContainerPort{{Name: "grpc", ContainerPort: LogicGRPCPort}, {Name: "metrics", ContainerPort: LogicMetrics}}
		c.ReadinessProbe, c.LivenessProbe = httpProbe("/readyz", LogicMetrics), httpProbe("/livez", LogicMetrics)
	case Repo:
		c.Ports = []corev1.ContainerPort{{Name: "grpc", ContainerPort: RepoGRPCPort}, {Name: "metrics", ContainerPort: RepoMetrics}}
		c.ReadinessProbe, c.LivenessProbe = httpProbe("/readyz", RepoMetrics), httpProbe("/livez", RepoMetrics)
	case Task:
		c.Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: TaskMetrics}}
		c.ReadinessProbe, c.LivenessProbe = httpProbe("/readyz", TaskMetrics), httpProbe("/livez", TaskMetrics)
	}
	vols, mounts := kafkaCAVolume(cc, component, in)
	tlsVols, tlsMounts, tlsEnv := tlsMount(cc, component)
	vols, mounts, c.Env = append(vols, tlsVols...), append(mounts, tlsMounts...), append(c.Env, tlsEnv...)
	c.VolumeMounts = mounts
	f := false
	tpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: Labels(cc, component),
			Annotations: map[string]string{
				AnnotationConfigHash: HashData(ConfigData(cc)),
				AnnotationSecretHash: in.SecretHash[component],
			},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:           ServiceAccountName(cc),
			AutomountServiceAccountToken: &f,
			Containers:                   []corev1.Container{c},
			Volumes:                      vols,
			SecurityContext:              &corev1.PodSecurityContext{RunAsNonRoot: boolPtr(true), RunAsUser: int64Ptr(nonRootID), RunAsGroup: int64Ptr(nonRootID), FSGroup: int64Ptr(nonRootID)},
		},
	}
	// The migration Job is created once per image and never updated, so a
	// restart has nothing to roll there.
	if at := cc.Annotations[AnnotationRestartedAt]; at != "" && component != Migrate {
		tpl.Annotations[AnnotationRestartedAt] = at
	}
	applyPodSettings(&tpl, PodSettings(cc, component))
	return tpl
}

// nonRootID is the user and group the pods run as (distroless' nonroot);
// the group owns the mounted certificate files.
const nonRootID = 65532

func boolPtr(b bool) *bool    { return &b }
func int64Ptr(i int64) *int64 { return &i }

// Deployment runs logic, repo or task.
func Deployment(cc *chatv1.ChatCluster, component string, in Inputs) *appsv1.Deployment {
	spec := map[string]chatv1.ComponentSpec{Logic: cc.Spec.Logic, Repo: cc.Spec.Repo, Task: cc.Spec.Task}[component]
	image := in.image(cc, component)
	d := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(cc, Name(cc, component), component),
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas(spec.Replicas, 2),
			Selector: &metav1.LabelSelector{MatchLabels: SelectorLabels(cc, component)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptrIntStr(intstr.FromInt32(0)),
					MaxSurge:       ptrIntStr(intstr.FromInt32(1)),
				},
			},
			Template: podTemplate(cc, component, image, in, spec.Resources),
		},
	}
	d.Annotations = map[string]string{AnnotationImage: image}
	return d
}

func ptrIntStr(v intstr.IntOrString) *intstr.IntOrString { return &v }

// Gateway termination timing. A gateway pod that is deleted (by the
// operator after its drain, or by an eviction or node drain it did not
// start) first sleeps in preStop, so that the endpoints controller and the
// load balancers stop sending it new clients before it closes anything; then
// it gets SIGTERM and drains within --drain-timeout, which ends before the
// grace period does, so the kubelet never has to SIGKILL live sessions.
const (
	// GatewayPreStopSleep is how long endpoints get to forget a deleted gateway.
	GatewayPreStopSleep = 5 * time.Second
	// gatewayExitMargin is left after the drain for closing and exiting.
	gatewayExitMargin = 5 * time.Second
)

// GatewayGracePeriod is the gateway pods' terminationGracePeriodSeconds:
// the preStop sleep, a full drain.timeout and the exit margin.
func GatewayGracePeriod(cc *chatv1.ChatCluster) time.Duration {
	return GatewayPreStopSleep + cc.Spec.Gateway.Drain.DrainTimeout().Truncate(time.Second) + gatewayExitMargin
}

// GatewayDrainTimeout is the gateway's --drain-timeout on SIGTERM: what
// the grace period leaves after the preStop sleep and the exit margin.
func GatewayDrainTimeout(cc *chatv1.ChatCluster) time.Duration {
	return GatewayGracePeriod(cc) - GatewayPreStopSleep - gatewayExitMargin
}

// GatewayDrainWindow is how long a drain spreads its clients' reconnects
// over: half the drain timeout, leaving the other half for slow clients.
func GatewayDrainWindow(cc *chatv1.ChatCluster) time.Duration {
	return cc.Spec.Gateway.Drain.DrainTimeout() / 2
}

// GatewayStatefulSet runs the gateways. Its update strategy is OnDelete: the
// operator replaces gateway pods itself, so that it can empty each one
// before it goes (docs/operator.md).
func GatewayStatefulSet(cc *chatv1.ChatCluster, in Inputs) *appsv1.StatefulSet {
	image := in.image(cc, Gateway)
	tpl := podTemplate(cc, Gateway, image, in, cc.Spec.Gateway.Resources)
	grace := int64(GatewayGracePeriod(cc) / time.Second)
	tpl.Spec.TerminationGracePeriodSeconds = &grace
	c := &tpl.Spec.Containers[0]
	c.Env = append(c.Env,
		corev1.EnvVar{Name: "GOCHAT_DRAIN_TIMEOUT", Value: GatewayDrainTimeout(cc).String()},
		corev1.EnvVar{Name: "GOCHAT_DRAIN_WINDOW", Value: GatewayDrainWindow(cc).String()})
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
		Sleep: &corev1.SleepAction{Seconds: int64(GatewayPreStopSleep / time.Second)},
	}}
	reps := replicas(cc.Spec.Gateway.Replicas, 2)
	if in.GatewayReplicas != nil {
		reps = in.GatewayReplicas
	}
	sts := &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: meta(cc, Name(cc, Gateway), Gateway),
		Spec: appsv1.StatefulSetSpec{
			Replicas:            reps,
			ServiceName:         GatewayPodsServiceName(cc),
			Selector:            &metav1.LabelSelector{MatchLabels: SelectorLabels(cc, Gateway)},
			PodManagementPolicy: appsv1.ParallelPodManagement,
			UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType},
			Template:            tpl,
		},
	}
	sts.Annotations = map[string]string{AnnotationImage: image}
	return sts
}

// image is the image a workload runs: the one decided for it, else its spec's.
func (in Inputs) image(cc *chatv1.ChatCluster, component string) string {
	if img, ok := in.Images[component]; ok {
		return img
	}
	return Image(cc, component)
}
