package resources

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestTLSMounts(t *testing.T) {
	cc := cluster()
	in := Inputs{SecretHash: map[string]string{}}
	specs := map[string]corev1.PodSpec{
		Gateway: GatewayStatefulSet(cc, in).Spec.Template.Spec,
		Logic:   Deployment(cc, Logic, in).Spec.Template.Spec,
		Repo:    Deployment(cc, Repo, in).Spec.Template.Spec,
		Task:    Deployment(cc, Task, in).Spec.Template.Spec,
		Migrate: MigrationJob(cc, in).Spec.Template.Spec,
	}
	for component, spec := range specs {
		t.Run(component, func(t *testing.T) {
			var secret string
			var mode *int32
			for _, v := range spec.Volumes {
				if v.Name == "tls" && v.Secret != nil {
					secret, mode = v.Secret.SecretName, v.Secret.DefaultMode
				}
			}
			env := map[string]string{}
			for _, e := range spec.Containers[0].Env {
				env[e.Name] = e.Value
			}
			if component == Migrate {
				if secret != "" || env["GOCHAT_TLS_CERT"] != "" {
					t.Fatalf("the migration Job calls no gRPC but mounts %q", secret)
				}
				return
			}
			if secret != "demo-"+component+"-tls" || env["GOCHAT_TLS_KEY"] != "/etc/gochat/tls/tls.key" {
				t.Fatalf("secret %q, env %v", secret, env)
			}
			// The key is readable by the pod's group only, and the pod's
			// user is in that group.
			sc := spec.SecurityContext
			if mode == nil || *mode != 0o440 || sc == nil || sc.FSGroup == nil || sc.RunAsGroup == nil || *sc.FSGroup != *sc.RunAsGroup {
				t.Fatalf("TLS files mode %v, pod security context %+v: want 0440 owned by the pod's group", mode, sc)
			}
			for _, m := range spec.Containers[0].VolumeMounts {
				if m.Name == "tls" && !m.ReadOnly {
					t.Fatal("the TLS Secret is mounted writable")
				}
			}
		})
	}
	// Renewals update files in place: the certificate Secrets are not among
	// the Secrets whose values roll pods.
	for _, name := range SecretNames(cc) {
		if name == CASecretName(cc) || name == TLSSecretName(cc, Gateway) {
			t.Fatalf("%s is hashed into the pod templates", name)
		}
	}
	if p := Deployment(cc, Logic, in).Spec.Template.Spec.Containers[0].ReadinessProbe; p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != LogicMetrics {
		t.Fatalf("logic readiness probe %+v: kubelet gRPC probes cannot do mutual TLS", p)
	}
	// Readiness follows the dependencies; liveness only the process, so a
	// database outage never restarts the pods.
	for c, port := range map[string]int{Logic: LogicMetrics, Repo: RepoMetrics, Task: TaskMetrics} {
		ctr := Deployment(cc, c, in).Spec.Template.Spec.Containers[0]
		if r, l := ctr.ReadinessProbe, ctr.LivenessProbe; r == nil || l == nil || r.HTTPGet.Path != "/readyz" || l.HTTPGet.Path != "/livez" || r.HTTPGet.Port.IntValue() != port {
			t.Errorf("%s probes: readiness %+v, liveness %+v; want /readyz and /livez on port %d", c, r, l, port)
		}
	}
}
