package controller_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
)

var (
	cfg       *rest.Config
	k8s       client.Client
	scheme    = k8sruntime.NewScheme()
	kafkaAddr string
)

func repoRoot() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "..")
}

// TestMain starts a real control plane: kube-apiserver and etcd (envtest),
// and kube-controller-manager for the Deployment, ReplicaSet, StatefulSet,
// Job and garbage collector controllers, built by hack/envtest/build.sh.
// Tests play the kubelet by setting pod status.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("GOCHAT_TEST_VERBOSE") != "" {
		logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.DebugLevel)))
	} else {
		logf.SetLogger(logr.Discard())
	}
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(chatv1.AddToScheme(scheme))
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		// Only found here, never built: a cold build under the test's
		// timeout would eat most of it (make test-go builds it first).
		cmd := exec.Command(filepath.Join(repoRoot(), "hack", "envtest", "build.sh"))
		cmd.Env, cmd.Stderr = append(os.Environ(), "GOCHAT_ENVTEST_NO_BUILD=1"), os.Stderr
		out, err := cmd.Output()
		if err != nil {
			fmt.Fprintf(os.Stderr, "find the envtest control plane: %v\n", err)
			return 1
		}
		assets = strings.TrimSpace(string(out))
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	var err error
	cfg, err = env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		_ = env.Stop() // a failed CRD install leaves the control plane running
		return 1
	}
	defer env.Stop() //nolint:errcheck
	stopKCM, err := startControllerManager(env, assets)
	if err != nil {
		fmt.Fprintf(os.Stderr, "start kube-controller-manager: %v\n", err)
		return 1
	}
	defer stopKCM()
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	broker, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer broker.Close()
	kafkaAddr = broker.ListenAddrs()[0]
	return m.Run()
}

// ctrlConfig lets several managers (one per test) in one process register
// the same controller name.
func ctrlConfig() config.Controller {
	skip := true
	return config.Controller{SkipNameValidation: &skip}
}

func startControllerManager(env *envtest.Environment, assets string) (func(), error) {
	user, err := env.ControlPlane.AddUser(envtest.User{Name: "kube-controller-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kcm-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "kcm.log")
	if d := os.Getenv("GOCHAT_TEST_ARTIFACTS"); d != "" {
		_ = os.MkdirAll(d, 0o755)
		logPath = filepath.Join(d, "kube-controller-manager.log")
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(assets, "kube-controller-manager"),
		"--kubeconfig="+path, "--leader-elect=false", "--secure-port=0",
		"--controllers=deployment-controller,replicaset-controller,statefulset-controller,job-controller,garbage-collector-controller",
		"--kube-api-qps=100", "--kube-api-burst=200", "--concurrent-gc-syncs=5")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		os.RemoveAll(dir)
	}, nil
}

// startManager runs the operator's manager for one namespace until the
// returned stop is called (or the test ends).
func startManager(t *testing.T, ns string, opts ...func(*controller.Reconciler)) (stop func()) {
	t.Helper()
	return startManagerWith(t, cfg, ns, opts...)
}

// startManagerWith runs a manager as cfg's user, with each opt changing the
// reconciler before it starts.
func startManagerWith(t *testing.T, cfg *rest.Config, ns string, opts ...func(*controller.Reconciler)) (stop func()) {
	t.Helper()
	return runManager(t, cfg, ns, nil, nil, opts...).stop
}

// testManager is one operator manager a test runs.
type testManager struct {
	mgr  ctrl.Manager
	stop func()
}

// runManager runs the operator's manager for ns as cfg's user, with the
// operator's own cache and client, until stop is called (or the test
// ends): edit changes the manager's options, wrap the reconciler's client,
// and each opt the reconciler before it starts (nil: as they are).
func runManager(t *testing.T, cfg *rest.Config, ns string, edit func(*ctrl.Options), wrap func(client.Client) client.Client, opts ...func(*controller.Reconciler)) *testManager {
	t.Helper()
	o := ctrl.Options{
		Scheme:     scheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Cache:      controller.CacheOptions(map[string]cache.Config{ns: {}}),
		NewClient:  controller.NewClient,
		Controller: ctrlConfig(),
	}
	if edit != nil {
		edit(&o)
	}
	mgr, err := ctrl.NewManager(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	c := mgr.GetClient()
	if wrap != nil {
		c = wrap(c)
	}
	r := &controller.Reconciler{Client: c, APIReader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("gochat-operator"), Resync: 2 * time.Second}
	for _, o := range opts {
		o(r)
	}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return &testManager{mgr: mgr, stop: stop}
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// eventually retries f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s: %v", what, timeout, err)
}

func restClient() (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &chatv1.GroupVersion
	c.APIPath = "/apis"
	c.NegotiatedSerializer = clientgoscheme.Codecs.WithoutConversion()
	return rest.RESTClientFor(c)
}
