#!/usr/bin/env bash
# Benchmark of a drained roll with real processes on this machine: a Kafka
# broker, im-repo (MariaDB, Redis), im-logic, im-task and GATEWAYS gateways,
# each its own process; gochat-load's roll scenario holds CLIENTS clients
# over them and drains the gateways one after another through their admin
# gRPC. This script plays the part of whoever replaces a drained gateway:
# once a gateway has drained and holds no session it stops it (SIGTERM) and
# starts a new process on the same ports.
#
#   hack/bench-roll.sh                       # 3 gateways, 2,000 clients
#   CLIENTS=10000 RATE=0.1 hack/bench-roll.sh
set -euo pipefail
GATEWAYS=${GATEWAYS:-3}
CLIENTS=${CLIENTS:-2000}
RATE=${RATE:-0.2}
WINDOW=${WINDOW:-10s}
TIMEOUT=${TIMEOUT:-20s}
WARMUP=${WARMUP:-20s}
MYSQL=${MYSQL:-mysql -uroot -h127.0.0.1}

for port in 19092 19001 19002 19013 $(seq 18080 $((18080+GATEWAYS-1))) $(seq 19100 $((19100+GATEWAYS-1))) $(seq 19200 $((19200+GATEWAYS-1))); do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is taken: is another run going?" >&2; exit 1; fi
done
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/gochat-bench-roll.XXXXXX)
(cd "$root/services" && go build -o "$work/gochat" ./cmd/gochat && go build -o "$work/gochat-load" ./cmd/gochat-load)
# Internal gRPC is mutual TLS: a throwaway CA, a certificate per component,
# and an admin credential for the load tool's Drain and Stats calls.
source "$root/hack/lib/services.sh"
tls=$work/tls
mint_certs "$tls" "$work/gochat" repo logic task gateway admin
db=bench_roll_$RANDOM$RANDOM
$MYSQL -e "CREATE DATABASE $db"
secret=bench-roll-secret-bench-roll-secret
prefix=benchroll$RANDOM:
topics=benchroll$RANDOM
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # The gateways' pids are in files: the replacer starts new ones.
  for f in "$work"/gateway*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  wait 2>/dev/null || true
  $MYSQL -e "DROP DATABASE IF EXISTS $db" || true
  echo "logs in $work"
}
trap cleanup EXIT
start() { # name, then the command
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  echo $!
}
waitport() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

export GOCHAT_JWT_SECRET=$secret GOCHAT_KAFKA_BROKERS=127.0.0.1:19092 GOCHAT_KAFKA_TOPIC_PREFIX=$topics GOCHAT_KAFKA_PARTITIONS=6
pids+=($(start kafka "$work/gochat" dev-kafka --addr 127.0.0.1:19092)); waitport 19092
pids+=($(start repo env $(as repo) GOCHAT_MYSQL_DSN="root@tcp(127.0.0.1:3306)/$db" GOCHAT_REDIS_PREFIX=$prefix "$work/gochat" repo --grpc-addr 127.0.0.1:19002 --metrics-addr 127.0.0.1:19012 --migrate)); waitport 19002
pids+=($(start logic env $(as logic) "$work/gochat" logic --grpc-addr 127.0.0.1:19001 --metrics-addr 127.0.0.1:19011 --repo-addr 127.0.0.1:19002)); waitport 19001
pids+=($(start task env $(as task) GOCHAT_CONSUMER_GROUP=$topics "$work/gochat" task --metrics-addr 127.0.0.1:19013 --repo-addr 127.0.0.1:19002)); waitport 19013

urls=() admins=()
startgw() {
  local i=$1
  # Every client comes from loopback: the per-address login, guest and
  # handshake limits are raised for the benchmark.
  start "gateway$i-$(date +%s)" env $(as gateway) "$work/gochat" gateway --http-addr 127.0.0.1:$((18080+i)) --grpc-addr 127.0.0.1:$((19100+i)) --metrics-addr 127.0.0.1:$((19200+i)) \
    --logic-addr 127.0.0.1:19001 --repo-addr 127.0.0.1:19002 --drain-window "$WINDOW" --drain-timeout "$TIMEOUT" \
    "${LOOPBACK_GATEWAY_FLAGS[@]}" >"$work/gateway$i.pid"
  waitport $((18080+i))
}
for i in $(seq 0 $((GATEWAYS-1))); do
  startgw "$i"
  urls+=("http://127.0.0.1:$((18080+i))"); admins+=("127.0.0.1:$((19100+i))")
done

# The replacer: a gateway that drains and is empty is stopped and started again.
replacer() {
  declare -A done
  while true; do
    for i in $(seq 0 $((GATEWAYS-1))); do
      [ -n "${done[$i]:-}" ] && continue
      m=$(curl -s "http://127.0.0.1:$((19200+i))/metrics" || true)
      if grep -q '^gochat_gateway_draining 1' <<<"$m" && grep -q '^gochat_gateway_sessions 0' <<<"$m"; then
        pid=$(cat "$work/gateway$i.pid")
        kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        startgw "$i"; done[$i]=1
        echo "replacer: gateway $i replaced at $(date +%T.%N | cut -c1-12)"
      fi
    done
    sleep 0.2
  done
}
replacer & pids+=($!)

urllist=$(IFS=,; echo "${urls[*]}"); adminlist=$(IFS=,; echo "${admins[*]}")
"$work/gochat-load" roll --urls "$urllist" --admin "$adminlist" --clients "$CLIENTS" --rate "$RATE" \
  --drain-window "$WINDOW" --drain-timeout "$TIMEOUT" --warmup "$WARMUP" $(as admin | sed 's/GOCHAT_TLS_\([A-Z]*\)=/--tls-\L\1 /g') ${LOADFLAGS:-}
