#!/usr/bin/env bash
# Builds CoreDNS (with its kubernetes plugin) from the Go module proxy, once,
# into ~/.cache/gochat; prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"
dir=${XDG_CACHE_HOME:-$HOME/.cache}/gochat/coredns-$COREDNS_VERSION
if [ ! -x "$dir/coredns" ]; then
  echo "building CoreDNS $COREDNS_VERSION (a few minutes, once)" >&2
  (cd /tmp && GOWORK=off GOFLAGS=-mod=mod GOBIN="$dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION") >&2
fi
echo "$dir/coredns"
