# Settings shared by up.sh and down.sh (sourced). Every address is from the
# benchmarking range 198.18.0.0/15, so no test traffic can look as if it
# could leave the machine; it stays on loopback and the harness's bridge.
LC_DIR=${GOCHAT_LOCALCLUSTER_DIR:-/tmp/gochat-localcluster}
NODE_NAME=gochat-node
NODE_IP=198.18.255.1          # a /32 on lo (no dummy module here)
POD_CIDR=198.18.0.0/24        # on the bridge below
SERVICE_CIDR=198.18.1.0/24
API_SERVICE_IP=198.18.1.1     # the kubernetes Service, first of SERVICE_CIDR
DNS_IP=$NODE_IP               # CoreDNS runs on the node
BRIDGE=gochat0
API_PORT=6443
ETCD_PORTS=(12379 12380)
MYSQL_PORT=13306              # the harness's own MariaDB, on NODE_IP
REDIS_PORT=16379              # the harness's own Redis, on NODE_IP
BACKENDS_NS=gochat-backends   # in-cluster Services for them
PAUSE_IMAGE=localhost/gochat/pause:1
CTR_SOCK=$LC_DIR/containerd/containerd.sock
