#!/usr/bin/env bash
# Builds Kubernetes from the Go module proxy, once, into a cache outside the
# checkout; later runs and fresh clones reuse it.
#   hack/envtest/build.sh        the envtest control plane (kube-apiserver,
#                                etcd, kube-controller-manager)
#   hack/envtest/build.sh node   also the node and client binaries the local
#                                cluster needs (kubelet, kube-proxy,
#                                kube-scheduler, kubectl), from the same module
# Prints the directory to use as KUBEBUILDER_ASSETS (and the local cluster's).
# With GOCHAT_ENVTEST_NO_BUILD set it only looks: missing binaries fail it
# (the operator tests' TestMain, which must never build under a timeout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/kube/go.mod")
etcd_version=$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")
out=${GOCHAT_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gochat/k8s-$k8s_version-etcd-$etcd_version}
cmds=(kube-apiserver kube-controller-manager)
case "${1:-}" in
  "") ;;
  node) cmds+=(kube-scheduler kubelet kube-proxy kubectl) ;;
  *) echo "usage: $0 [node]" >&2; exit 2 ;;
esac
missing=()
for cmd in "${cmds[@]}"; do [ -x "$out/$cmd" ] || missing+=("$cmd"); done
if [ ${#missing[@]} -eq 0 ] && [ -x "$out/etcd" ]; then
  echo "$out"; exit 0
fi
if [ -n "${GOCHAT_ENVTEST_NO_BUILD:-}" ]; then
  echo "the envtest control plane is not built in $out: run 'make envtest' first (a cold build takes several minutes)" >&2
  exit 1
fi
mkdir -p "$out"
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "building ${missing[*]} $k8s_version (several minutes, once)" >&2
  minor=${k8s_version#v1.}; minor=${minor%%.*}
  v=k8s.io/component-base/version
  c=k8s.io/client-go/pkg/version
  tmp="$out/build.$$"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp"
  # One go build for all of them: the shared packages compile once.
  pkgs=(); for cmd in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  (cd "$here/kube" && go build -trimpath -o "$tmp/" \
    -ldflags "-s -w -X $v.gitVersion=$k8s_version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean -X $c.gitVersion=$k8s_version -X $c.gitMajor=1 -X $c.gitMinor=$minor" \
    "${pkgs[@]}") >&2
  for cmd in "${missing[@]}"; do mv "$tmp/$cmd" "$out/$cmd"; done
fi
if [ ! -x "$out/etcd" ]; then
  echo "building etcd $etcd_version" >&2
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .) >&2
  mv "$out/etcd.tmp" "$out/etcd"
fi
echo "$out"
