// Module etcd builds the etcd server envtest runs (hack/envtest/build.sh).
module github.com/gochat/gochat/hack/envtest/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.7.0
