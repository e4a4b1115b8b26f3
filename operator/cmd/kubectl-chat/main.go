// Command kubectl-chat is the kubectl plugin for GoChat (docs/operator.md,
// "kubectl chat"): put it on the PATH and run
//
//	kubectl chat status NAME [-n NAMESPACE]
//	kubectl chat restart NAME [-n NAMESPACE]
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	chatv1 "github.com/gochat/gochat/api/v1alpha1"
	"github.com/gochat/gochat/operator/internal/chatctl"
	"github.com/gochat/gochat/operator/internal/controller"
	"github.com/gochat/gochat/operator/internal/gatewayadmin"
	"github.com/gochat/gochat/operator/internal/resources"
)

const usage = `kubectl chat: look at and steer GoChat clusters (ChatCluster resources).

Usage:
  kubectl chat status NAME [flags]    phase, conditions, components, every gateway pod with its live
                                      sessions and drain state, Kafka topics, latest events
  kubectl chat restart NAME [flags]   rolling restart of every component; gateways are drained first

Flags:
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("kubectl chat", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var (
		kubeconfig, kubeContext, namespace string
		adminPort, events                  int
		timeout                            time.Duration
		portForward                        bool
	)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&kubeContext, "context", "", "the kubeconfig context to use")
	fs.StringVarP(&namespace, "namespace", "n", "", "namespace of the ChatCluster (default: the context's)")
	fs.IntVar(&adminPort, "admin-port", resources.GatewayGRPCPort, "the gateways' admin gRPC port (status asks each pod for its sessions there)")
	fs.IntVar(&events, "events", chatctl.DefaultEvents, "how many of the latest events status shows")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "how long the command may take")
	fs.BoolVar(&portForward, "port-forward", false, "reach every gateway through the API server (pods/portforward), never at its pod IP (by default the pod IP is tried first)")
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return fmt.Errorf("want a command and a ChatCluster name, got %q", fs.Args())
	}
	cmd, name := fs.Arg(0), fs.Arg(1)
	if cmd != "status" && cmd != "restart" {
		fs.Usage()
		return fmt.Errorf("unknown command %q: want status or restart", cmd)
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext})
	cfg, err := loader.ClientConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	if namespace == "" {
		if namespace, _, err = loader.Namespace(); err != nil {
			return fmt.Errorf("namespace of the context: %w", err)
		}
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(chatv1.AddToScheme(scheme))
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	switch cmd {
	case "restart":
		return chatctl.Restart(ctx, c, stdout, namespace, name, time.Now())
	default:
		// The operator's own way to a gateway: mutual TLS with a client
		// certificate minted from the cluster's CA Secret (which the
		// caller must be allowed to read), at the pod's IP or, where that
		// is not routable, through a port-forward.
		r := &controller.Reconciler{Client: c}
		admin := gatewayadmin.Dialer{Port: adminPort, TLS: r.AdminTLSForPod, Dial: podDialer{cfg: cfg, always: portForward}.dial}
		return chatctl.Status(ctx, c, stdout, namespace, name, chatctl.StatusOptions{Admin: admin, Events: events})
	}
}
