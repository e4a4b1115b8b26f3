#!/usr/bin/env bash
# Builds the control plane envtest needs (kube-apiserver, etcd,
# kube-controller-manager) from the Go module proxy, once, into a cache
# outside the checkout; later runs and fresh clones reuse it.
# Prints the directory to use as KUBEBUILDER_ASSETS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/kube/go.mod")
etcd_version=$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")
out=${GOCHAT_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/gochat/k8s-$k8s_version-etcd-$etcd_version}
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kube-controller-manager" ]; then
  echo "$out"; exit 0
fi
mkdir -p "$out"
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
for cmd in kube-apiserver kube-controller-manager; do
  if [ ! -x "$out/$cmd" ]; then
    echo "building $cmd $k8s_version (several minutes, once)" >&2
    minor=${k8s_version#v1.}; minor=${minor%%.*}
    v=k8s.io/component-base/version
    (cd "$here/kube" && go build -trimpath -o "$out/$cmd.tmp" \
      -ldflags "-s -w -X $v.gitVersion=$k8s_version -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean" \
      "k8s.io/kubernetes/cmd/$cmd") >&2
    mv "$out/$cmd.tmp" "$out/$cmd"
  fi
done
if [ ! -x "$out/etcd" ]; then
  echo "building etcd $etcd_version" >&2
  (cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .) >&2
  mv "$out/etcd.tmp" "$out/etcd"
fi
echo "$out"
