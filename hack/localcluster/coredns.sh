#!/usr/bin/env bash
# Builds CoreDNS with only the plugins the local cluster uses (the module in
# hack/localcluster/coredns pins the version), once, into ~/.cache/gochat;
# prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^require github.com\/coredns\/coredns \(v[0-9.]*\)$/\1/p' "$here/coredns/go.mod")
dir=${XDG_CACHE_HOME:-$HOME/.cache}/gochat/coredns-slim-$version
if [ ! -x "$dir/coredns" ]; then
  echo "building CoreDNS $version (once)" >&2
  mkdir -p "$dir"
  (cd "$here/coredns" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/coredns.tmp" . && mv "$dir/coredns.tmp" "$dir/coredns") >&2
fi
echo "$dir/coredns"
