// Command coredns is CoreDNS with only the plugins the local cluster's
// Corefile uses (hack/localcluster/up.sh). The stock build links every
// plugin, cloud DNS SDKs included, and was the slowest step of a cold CI run;
// this one shares client-go with the rest of the build.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() { coremain.Run() }
