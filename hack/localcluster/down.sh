#!/usr/bin/env bash
# Tears the local cluster down and leaves no process, mount, network
# namespace, bridge, address or iptables rule behind, also after a failed or
# half-finished up.sh. Safe to run any number of times. Logs are kept under
# $GOCHAT_TEST_ARTIFACTS/localcluster (default: ./artifacts).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

# stopped PID: gone or a zombie (PID 1 here reaps slowly, so kill -0 lies).
stopped() {
  local st
  st=$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 0
  [ -z "$st" ] || [ "$st" = Z ]
}
stop_pid() { # pid [grace seconds]
  local pid=$1 grace=${2:-10}
  stopped "$pid" && return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 $((grace * 10))); do stopped "$pid" && return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  for _ in $(seq 1 50); do stopped "$pid" && return 0; sleep 0.1; done
  echo "down: pid $pid did not stop" >&2
}
stop_daemon() { # name [grace]
  local f="$LC_DIR/pids/$1.pid"
  [ -f "$f" ] || return 0
  stop_pid "$(cat "$f")" "${2:-10}"
  rm -f "$f"
}
# Processes whose command line names the harness's directory (containerd's
# shims, and anything else started with its paths), by PID.
harness_pids() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | grep -qF -- "$LC_DIR/" && echo "${p#/proc/}"
  done
}

if [ -d "$LC_DIR" ]; then
  # The node first, so nothing restarts what is being stopped.
  for d in kubelet kube-proxy coredns kube-scheduler kube-controller-manager; do stop_daemon "$d"; done

  # Every container process: kubelet puts them all under the kubepods cgroups.
  for _ in 1 2 3; do
    pids=$(cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
      $(find /sys/fs/cgroup/*/kubepods -name cgroup.procs 2>/dev/null) 2>/dev/null | sort -u)
    [ -z "$pids" ] && break
    kill -KILL $pids 2>/dev/null
    sleep 1
  done
  stop_daemon containerd
  for pid in $(harness_pids); do stop_pid "$pid" 5; done
  for d in mariadb redis kube-apiserver etcd; do stop_daemon "$d"; done
fi
# Empty kubepods cgroups, deepest first.
for root in /sys/fs/cgroup/*/kubepods; do
  [ -d "$root" ] && find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
done

# Network namespaces the CRI made (cni-*), then every mount under the directory.
for ns in /run/netns/cni-*; do
  [ -e "$ns" ] || continue
  umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null
  rm -f "$ns"
done
for _ in 1 2 3; do
  mnts=$(awk -v d="$LC_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
  [ -z "$mnts" ] && break
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done <<< "$mnts"
done

ip link del "$BRIDGE" 2>/dev/null
ip addr del "$NODE_IP/32" dev lo 2>/dev/null

# iptables: drop the KUBE-* and CNI-* chains and every rule that jumps to
# them, atomically per table; other rules stay as they were.
for ipt in iptables ip6tables; do
  command -v "$ipt-save" >/dev/null || continue
  for table in filter nat mangle raw; do
    rules=$("$ipt-save" -t "$table" 2>/dev/null) || continue
    grep -qE 'KUBE-|CNI-' <<< "$rules" || continue
    grep -vE '^:(KUBE|CNI)-|^-A (KUBE|CNI)-|-j (KUBE|CNI)-' <<< "$rules" | "$ipt-restore" -T "$table" \
      || echo "down: could not clean $ipt table $table" >&2
  done
done
if command -v nft >/dev/null; then
  for t in "ip kube-proxy" "ip6 kube-proxy"; do nft delete table $t 2>/dev/null; done
fi
rm -f /var/lib/cni/results/gochat-* 2>/dev/null

if [ -f "$LC_DIR/sysctl.orig" ]; then
  while read -r k v; do sysctl -qw "$k=$v" 2>/dev/null; done < "$LC_DIR/sysctl.orig"
fi
if [ -d "$LC_DIR/logs" ]; then
  art=${GOCHAT_TEST_ARTIFACTS:-$(cd "$here/../.." && pwd)/artifacts}/localcluster
  mkdir -p "$art" && cp -r "$LC_DIR/logs/." "$art/" 2>/dev/null
fi
left=$(harness_pids)
if [ -n "$left" ] || awk -v d="$LC_DIR/" 'index($5, d) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
  echo "down: processes or mounts left under $LC_DIR: $left" >&2
  exit 1
fi
rm -rf "$LC_DIR"
echo "local cluster down"
