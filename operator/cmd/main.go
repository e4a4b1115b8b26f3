// Command operator runs the GoChat operator: it reconciles ChatClusters.
package main

import (
	"crypto/tls"
	"flag"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/gatewayroll"
	"github.com/gochat/gochat/operator/internal/resources"
)

// version and imageRepository are set at build time with -ldflags
// "-X main.version=... -X main.imageRepository=...": together they name the
// GoChat image of this release, which runs clusters without spec.image.
var (
	version         = "dev"
	imageRepository = "ghcr.io/gochat/gochat"
)

func releaseImage() string {
	if version == "dev" || version == "" {
		return ""
	}
	return imageRepository + ":" + version
}

func main() {
	var (
		metricsAddr, probeAddr string
		defaultImage           string
		leaderElect            bool
		resync, readyTimeout   time.Duration
		topicDeletion          time.Duration
		ioTimeout              time.Duration
		concurrency            int
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "address of the metrics endpoint (HTTPS, authenticated); 0 disables it")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	flag.BoolVar(&leaderElect, "leader-elect", true, "elect a leader, so that only one replica acts at a time")
	flag.DurationVar(&resync, "resync", 30*time.Second, "how often a running cluster is checked again (topics, Redis, sessions)")
	flag.DurationVar(&readyTimeout, "gateway-ready-timeout", gatewayroll.DefaultReadyTimeout, "how long a replacement gateway may take to become Ready before the roll halts (RolloutStuck)")
	flag.DurationVar(&topicDeletion, "topic-deletion-timeout", controller.DefaultTopicDeletionTimeout, "longest a ChatCluster's deletion waits for its topics to be deleted before it lets go with a Warning")
	flag.IntVar(&concurrency, "max-concurrent-reconciles", controller.DefaultMaxConcurrentReconciles, "how many ChatClusters reconcile at once, so that one waiting on its Kafka or Redis does not hold up the others")
	flag.DurationVar(&ioTimeout, "io-timeout", controller.DefaultIOTimeout, "bound of each call to a cluster's Kafka and Redis during a reconcile")
	flag.StringVar(&defaultImage, "default-image", releaseImage(), "GoChat image of clusters without spec.image (default: this release's image; empty in a dev build)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(chatv1.AddToScheme(scheme))

	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme: scheme,
		// Only what the operator made is cached, users' Secrets by their
		// metadata alone (docs/operator.md, "Memory and API load").
		Cache:     controller.CacheOptions(nil),
		NewClient: controller.NewClient,
		Metrics: metricsserver.Options{
			BindAddress: metricsAddr, SecureServing: true,
			// Only callers the API server authenticates and authorizes (RBAC
			// on the /metrics non-resource URL) may read the metrics.
			FilterProvider: filters.WithAuthenticationAndAuthorization,
			TLSOpts:        []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
		},
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              "operator.chat.gochat.io",
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "start manager")
		os.Exit(1)
	}
	r := &controller.Reconciler{
		Client:    mgr.GetClient(),
		Recorder:  mgr.GetEventRecorder("gochat-operator"),
		APIReader: mgr.GetAPIReader(),
		Resync:    resync, ReadyTimeout: readyTimeout,
		DefaultImage: defaultImage, TopicDeletionTimeout: topicDeletion,
		MaxConcurrentReconciles: concurrency, IOTimeout: ioTimeout,
	}
	// Every call to a gateway is mutual TLS with the operator's certificate
	// from that cluster's CA.
	r.Admin = gatewayadmin.Dialer{Port: resources.GatewayGRPCPort, TLS: r.AdminTLSForPod}
	if err := r.SetupWithManager(mgr); err != nil {
		log.Error(err, "set up controller")
		os.Exit(1)
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))
	log.Info("starting the GoChat operator")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}
