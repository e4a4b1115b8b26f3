#!/usr/bin/env bash
# Brings up a real single-node Kubernetes on this machine, without Docker:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy built from Go modules (hack/envtest/build.sh node, cached in
# ~/.cache/gochat), CoreDNS (go install, cached there too), and containerd,
# runc and the CNI plugins from Debian. Imports the image tarballs from
# bin/images (make images), starts a MariaDB and a Redis for the pods on the
# node address, and exposes them in the cluster as Services with manual
# EndpointSlices in namespace gochat-backends.
# Prints the kubeconfig path last. hack/localcluster/down.sh undoes all of it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/env.sh"
images=${GOCHAT_IMAGES_DIR:-$root/bin/images}
start=$(date +%s)
log() { echo "localcluster: $* ($(( $(date +%s) - start ))s)" >&2; }

for t in containerd containerd-shim-runc-v2 runc ctr iptables conntrack openssl mariadbd mariadb-install-db redis-server; do
  command -v "$t" >/dev/null || { echo "localcluster: $t is missing (apt-get install containerd runc containernetworking-plugins iptables conntrack)" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] || { echo "localcluster: CNI plugins missing (apt-get install containernetworking-plugins)" >&2; exit 1; }
for i in gochat operator pause; do
  [ -f "$images/$i.tar" ] || { echo "localcluster: $images/$i.tar missing: run make images" >&2; exit 1; }
done

# A previous run that failed half-way leaves state: clear it first.
[ -e "$LC_DIR" ] && "$here/down.sh" >&2
trap 'echo "localcluster: up failed; logs in $LC_DIR/logs (down.sh cleans up)" >&2' ERR

kbin=$("$root/hack/envtest/build.sh" node)
log "binaries ready in $kbin"

mkdir -p "$LC_DIR"/{pids,logs,pki,etcd,containerd,cni/net.d,cni/ipam,kubelet,mysql,redis}
daemon() { # name, command...: start in the background, record the PID
  local name=$1; shift
  # A session of its own: a signal to the caller's process group (make,
  # timeout) does not take the cluster down half-way; down.sh stops it.
  setsid "$@" > "$LC_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$LC_DIR/pids/$name.pid"
}
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "localcluster: $what did not come up in ${secs}s; see $LC_DIR/logs" >&2
  return 1
}

# Kernel: overlay snapshots, bridged traffic through iptables (Services), forwarding.
modprobe overlay 2>/dev/null || true
modprobe br_netfilter 2>/dev/null || true
: > "$LC_DIR/sysctl.orig"
for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables; do
  echo "$k $(sysctl -n $k)" >> "$LC_DIR/sysctl.orig"
  sysctl -qw "$k=1"
done
ip addr add "$NODE_IP/32" dev lo

# PKI: a CA, the API server's serving cert, the service-account key pair.
pki=$LC_DIR/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=gochat-localcluster-ca \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
  "$NODE_IP" "$API_SERVICE_IP" > "$pki/san.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
  -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
token=$(openssl rand -hex 24)
echo "$token,admin,admin,system:masters" > "$pki/tokens.csv"
kubeconfig=$LC_DIR/kubeconfig
cat > "$kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$pki/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
KC
kc() { "$kbin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

daemon etcd "$kbin/etcd" --data-dir "$LC_DIR/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:${ETCD_PORTS[0]}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORTS[0]}" \
  --listen-peer-urls "http://127.0.0.1:${ETCD_PORTS[1]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PORTS[1]}" \
  --initial-cluster "default=http://127.0.0.1:${ETCD_PORTS[1]}"
daemon kube-apiserver "$kbin/kube-apiserver" --etcd-servers "http://127.0.0.1:${ETCD_PORTS[0]}" \
  --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$pki/tokens.csv" --authorization-mode Node,RBAC \
  --service-cluster-ip-range "$SERVICE_CIDR" --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --enable-priority-and-fairness=false --kubelet-preferred-address-types InternalIP,Hostname \
  --allow-privileged=true
wait_for kube-apiserver 300 "$kbin/kubectl" --kubeconfig "$kubeconfig" get --raw /readyz
log "API server ready"

daemon kube-controller-manager "$kbin/kube-controller-manager" --kubeconfig "$kubeconfig" \
  --leader-elect=false --use-service-account-credentials --root-ca-file "$pki/ca.crt" \
  --service-account-private-key-file "$pki/sa.key" --cluster-signing-cert-file "$pki/ca.crt" \
  --cluster-signing-key-file "$pki/ca.key" --service-cluster-ip-range "$SERVICE_CIDR" \
  --bind-address 127.0.0.1 --secure-port 0
daemon kube-scheduler "$kbin/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false \
  --bind-address 127.0.0.1 --secure-port 0

# containerd with everything under the harness's directory.
cat > "$LC_DIR/containerd/config.toml" <<TOML
version = 2
root = "$LC_DIR/containerd/root"
state = "$LC_DIR/containerd/state"
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$LC_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$LC_DIR/cni/net.d"
TOML
cat > "$LC_DIR/cni/net.d/10-gochat.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "gochat", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$LC_DIR/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
daemon containerd containerd --config "$LC_DIR/containerd/config.toml"
wait_for containerd 30 ctr -a "$CTR_SOCK" version
for i in pause gochat operator; do
  ctr -a "$CTR_SOCK" -n k8s.io images import --no-unpack=false "$images/$i.tar" >/dev/null
done
# The e2e roll changes the gateways' image tag: a second tag of the same image
# (LC_EXTRA_TAGS="source=target ...", from make e2e-local).
for pair in ${LC_EXTRA_TAGS:-}; do
  ctr -a "$CTR_SOCK" -n k8s.io images tag --force "${pair%%=*}" "${pair#*=}" >/dev/null
done
log "containerd ready, images imported"

cat > "$LC_DIR/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTR_SOCK
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
YAML
daemon kubelet "$kbin/kubelet" --config "$LC_DIR/kubelet/config.yaml" --kubeconfig "$kubeconfig" \
  --root-dir "$LC_DIR/kubelet/root" --cert-dir "$LC_DIR/kubelet/pki" \
  --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
cat > "$LC_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$kubeconfig"}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
YAML
daemon kube-proxy "$kbin/kube-proxy" --config "$LC_DIR/kube-proxy.yaml"
cat > "$LC_DIR/Corefile" <<DNS
.:53 {
    bind $DNS_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
    ready 127.0.0.1:18181
}
DNS
coredns=$("$here/coredns.sh")
daemon coredns "$coredns" -conf "$LC_DIR/Corefile"

# The pods' backends: own data directories and ports, on the node address.
mariadb-install-db --no-defaults --user=root --datadir="$LC_DIR/mysql/data" --auth-root-authentication-method=normal \
  > "$LC_DIR/logs/mariadb-install.log" 2>&1
daemon mariadb mariadbd --no-defaults --user=root --datadir="$LC_DIR/mysql/data" --socket="$LC_DIR/mysql/mysql.sock" \
  --pid-file="$LC_DIR/mysql/mariadb.pid" --bind-address="$NODE_IP" --port="$MYSQL_PORT" --skip-name-resolve \
  --innodb-flush-log-at-trx-commit=0 --max-connections=500
daemon redis redis-server --bind "$NODE_IP" --port "$REDIS_PORT" --dir "$LC_DIR/redis" --save "" --appendonly no --protected-mode no
wait_for MariaDB 120 mariadb --no-defaults -uroot --socket="$LC_DIR/mysql/mysql.sock" -e 'SELECT 1'
mariadb --no-defaults -uroot --socket="$LC_DIR/mysql/mysql.sock" -e \
  "CREATE USER 'gochat'@'%' IDENTIFIED BY 'gochat'; GRANT ALL ON *.* TO 'gochat'@'%'; CREATE DATABASE gochat;"
wait_for Redis 30 redis-cli -h "$NODE_IP" -p "$REDIS_PORT" ping
log "MariaDB and Redis ready"

wait_for "node $NODE_NAME" 300 bash -c "'$kbin/kubectl' --kubeconfig '$kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "default ServiceAccount" 120 "$kbin/kubectl" --kubeconfig "$kubeconfig" get serviceaccount default
log "node Ready"

# Services without selectors and hand-made EndpointSlices: how a cluster
# reaches a managed database outside it.
kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $BACKENDS_NS}
---
apiVersion: v1
kind: Service
metadata: {name: mysql, namespace: $BACKENDS_NS}
spec:
  ports: [{name: mysql, port: 3306, targetPort: $MYSQL_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: mysql-external
  namespace: $BACKENDS_NS
  labels: {kubernetes.io/service-name: mysql, endpointslice.kubernetes.io/managed-by: gochat-localcluster}
addressType: IPv4
ports: [{name: mysql, port: $MYSQL_PORT, protocol: TCP}]
endpoints: [{addresses: ["$NODE_IP"]}]
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: $BACKENDS_NS}
spec:
  ports: [{name: redis, port: 6379, targetPort: $REDIS_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: redis-external
  namespace: $BACKENDS_NS
  labels: {kubernetes.io/service-name: redis, endpointslice.kubernetes.io/managed-by: gochat-localcluster}
addressType: IPv4
ports: [{name: redis, port: $REDIS_PORT, protocol: TCP}]
endpoints: [{addresses: ["$NODE_IP"]}]
YAML
# CoreDNS is ready once its kubernetes plugin has synced with the API server.
wait_for "CoreDNS" 120 curl -fsS http://127.0.0.1:18181/ready
log "up: export KUBECONFIG=$kubeconfig"
echo "$kubeconfig"
