// Command memory measures the operator's resident memory in a cluster full
// of objects it does not own (docs/benchmarks.md, "Operator memory"). It
// starts an envtest control plane (kube-apiserver and etcd), fills it with
// --secrets unrelated Secrets and --configmaps unrelated ConfigMaps of
// --size bytes each, adds one ChatCluster (so that the operator reconciles
// and reads its Secrets), then runs each operator binary given with -bin in
// turn as a real process against it and samples its VmRSS from /proc. It
// also counts the GET requests the API server served while it sampled (its
// apiserver_request_total metric): the operator is the only client then.
//
//	go build -o /tmp/operator-after ./operator/cmd
//	go run ./operator/test/memory -assets $(hack/envtest/build.sh) -bin after=/tmp/operator-after
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
)

type binaries []string

func (b *binaries) String() string     { return strings.Join(*b, ",") }
func (b *binaries) Set(v string) error { *b = append(*b, v); return nil }

func main() {
	var (
		bins                      binaries
		assets, crds              string
		secrets, configMaps, size int
		settle, sample            time.Duration
	)
	flag.Var(&bins, "bin", "NAME=PATH of an operator binary to measure (repeatable)")
	flag.StringVar(&assets, "assets", os.Getenv("KUBEBUILDER_ASSETS"), "directory of kube-apiserver and etcd (hack/envtest/build.sh prints it)")
	flag.StringVar(&crds, "crds", "config/crd/bases", "directory of the CRDs")
	flag.IntVar(&secrets, "secrets", 1000, "unrelated Secrets")
	flag.IntVar(&configMaps, "configmaps", 1000, "unrelated ConfigMaps")
	flag.IntVar(&size, "size", 4096, "bytes of data in each")
	flag.DurationVar(&settle, "settle", 20*time.Second, "time after start before sampling (caches sync, first reconciles)")
	flag.DurationVar(&sample, "sample", 40*time.Second, "sampling time (VmRSS each second)")
	flag.Parse()
	if len(bins) == 0 || assets == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(bins, assets, crds, secrets, configMaps, size, settle, sample); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(bins []string, assets, crds string, secrets, configMaps, size int, settle, sample time.Duration) error {
	scheme := k8sruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(chatv1.AddToScheme(scheme))
	env := &envtest.Environment{CRDDirectoryPaths: []string{crds}, ErrorIfCRDPathMissing: true, BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("start envtest: %w", err)
	}
	defer env.Stop() //nolint:errcheck
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	for _, ns := range []string{"noise", "chat"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	blob := bytes.Repeat([]byte("x"), size)
	for i := range secrets {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "noise", Name: fmt.Sprintf("s-%04d", i)}, Data: map[string][]byte{"data": blob}}
		if err := c.Create(ctx, s); err != nil {
			return err
		}
	}
	for i := range configMaps {
		m := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "noise", Name: fmt.Sprintf("c-%04d", i)}, Data: map[string]string{"data": string(blob)}}
		if err := c.Create(ctx, m); err != nil {
			return err
		}
	}
	mysql := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "chat", Name: "mysql"}, StringData: map[string]string{"dsn": "gochat:pw@tcp(mysql:3306)/gochat"}}
	if err := c.Create(ctx, mysql); err != nil {
		return err
	}
	two := int32(2)
	cc := &chatv1.ChatCluster{
		ObjectMeta: metav1.ObjectMeta{Namespace: "chat", Name: "demo"},
		Spec: chatv1.ChatClusterSpec{
			Image:   "ghcr.io/gochat/gochat:0.1.0",
			Gateway: chatv1.GatewaySpec{Replicas: &two, Service: chatv1.GatewayServiceSpec{Type: corev1.ServiceTypeClusterIP, Port: 80}},
			Kafka:   chatv1.KafkaSpec{BootstrapServers: []string{"127.0.0.1:1"}, Partitions: 1, ReplicationFactor: 1, Retention: "1h"},
			Redis:   chatv1.RedisSpec{Address: "127.0.0.1:1"},
			MySQL:   chatv1.MySQLSpec{DSNSecretRef: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "mysql"}, Key: "dsn"}},
		},
	}
	if err := c.Create(ctx, cc); err != nil {
		return err
	}

	user, err := env.ControlPlane.AddUser(envtest.User{Name: "operator", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "operator-memory-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		return err
	}

	fmt.Printf("%d Secrets and %d ConfigMaps of %d bytes in namespace noise; one ChatCluster in namespace chat\n", secrets, configMaps, size)
	metrics := func() (map[string]float64, error) { return getRequests(ctx, cfg) }
	fmt.Printf("%-12s %12s %12s %12s  %s\n", "binary", "RSS median", "RSS max", "VmHWM", "GETs/min by resource while sampling")
	for _, b := range bins {
		name, bin, ok := strings.Cut(b, "=")
		if !ok {
			return fmt.Errorf("-bin %q: want NAME=PATH", b)
		}
		median, highest, hwm, gets, err := measure(bin, path, settle, sample, metrics)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("%-12s %9.1f MiB %9.1f MiB %9.1f MiB  %s\n", name, mib(median), mib(highest), mib(hwm), perMinute(gets, sample))
	}
	return nil
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

// measure runs one operator binary and samples its VmRSS (KiB) once a
// second after settle, for sample; it returns the median, the highest
// sample and the process's VmHWM (the peak).
func measure(bin, kubeconfig string, settle, sample time.Duration, metrics func() (map[string]float64, error)) (median, highest, hwm int64, gets map[string]float64, err error) {
	cmd := exec.Command(bin, "--leader-elect=false", "--metrics-bind-address=0", "--health-probe-bind-address=0", "--kubeconfig="+kubeconfig)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	select {
	case err := <-exited:
		exited <- err
		return 0, 0, 0, nil, fmt.Errorf("exited during settle (%v): %s", err, logs.String())
	case <-time.After(settle):
	}
	start, err := metrics()
	if err != nil {
		return 0, 0, 0, nil, err
	}
	var samples []int64
	for end := time.Now().Add(sample); time.Now().Before(end); time.Sleep(time.Second) {
		rss, peak, err := procStatus(cmd.Process.Pid)
		if err != nil {
			return 0, 0, 0, nil, err
		}
		samples = append(samples, rss)
		highest, hwm = max(highest, rss), peak
	}
	end, err := metrics()
	if err != nil {
		return 0, 0, 0, nil, err
	}
	gets = map[string]float64{}
	for r, n := range end {
		if d := n - start[r]; d > 0 {
			gets[r] = d
		}
	}
	slices.Sort(samples)
	return samples[len(samples)/2], highest, hwm, gets, nil
}

// getRequests reads the API server's GET counts by resource.
func getRequests(ctx context.Context, cfg *rest.Config) (map[string]float64, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("api server metrics: %w", err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `verb="GET"`) {
			continue
		}
		labels, value, _ := strings.Cut(line[len("apiserver_request_total{"):], "} ")
		resource := "?"
		for _, l := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(l, "="); ok && k == "resource" {
				resource = strings.Trim(v, `"`)
			}
		}
		n, _ := strconv.ParseFloat(strings.TrimSpace(value), 64)
		out[resource] += n
	}
	return out, nil
}

func perMinute(gets map[string]float64, over time.Duration) string {
	var parts []string
	total := 0.0
	for r, n := range gets {
		total += n
		parts = append(parts, fmt.Sprintf("%s %.0f", r, n*float64(time.Minute)/float64(over)))
	}
	slices.Sort(parts)
	return fmt.Sprintf("%.0f: %s", total*float64(time.Minute)/float64(over), strings.Join(parts, ", "))
}

func procStatus(pid int) (rss, hwm int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return rss, hwm, nil
}
