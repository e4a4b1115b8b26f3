#!/usr/bin/env bash
# The send path's latency curve on this machine (make bench-send): for each
# offered rate, a fresh database, a Kafka broker process and `gochat dev` on
# MariaDB and Redis, then `gochat-load send` with senders at PER_SENDER
# messages a second each (a person typing fast, not a bot), and MariaDB's
# deadlock counter read before and after. Then, with LONG set, one long run
# at LONG_RATE. docs/benchmarks.md "The send path" has the method and the
# figures.
#
#   hack/bench-send.sh                          # 1k, 2k, 5k, 8k, 10k msg/s for 30 s each
#   LONG=10m hack/bench-send.sh                 # and 10 minutes at 5,000 msg/s
#   RATES="5000" DURATION=60s hack/bench-send.sh
#   TOPOLOGY=split hack/bench-send.sh           # the services as separate processes, as deployed
#   ALIGNED=1 hack/bench-send.sh                # the senders in step: bursts, not a steady rate
set -euo pipefail
RATES=${RATES:-"1000 2000 5000 8000 10000"}
PER_SENDER=${PER_SENDER:-5}
DURATION=${DURATION:-30s}
LONG=${LONG:-}
LONG_RATE=${LONG_RATE:-5000}
STORE_WORKERS=${STORE_WORKERS:-1}
# ALIGNED=1: every sender sends at the same instant (bursts of all the
# senders' sends, 5 a second) instead of their ticks spread over the period.
ALIGNED=${ALIGNED:-}
# dev: the four services in one `gochat dev` process; split: im-repo,
# im-logic, im-task and one gateway as their own processes, with mutual TLS
# between them, as a deployment runs them.
TOPOLOGY=${TOPOLOGY:-dev}
MYSQL=${MYSQL:-mysql -uroot -h127.0.0.1}
KAFKA_PORT=19492
HTTP_PORT=19400

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/hack/lib/services.sh"
work=$(mktemp -d /tmp/gochat-bench-send.XXXXXX)
ulimit -n "$(ulimit -Hn)"
(cd "$root/services" && go build -o "$work/gochat" ./cmd/gochat && go build -o "$work/gochat-load" ./cmd/gochat-load)
case $TOPOLOGY in
  dev) ;;
  split) mint_certs "$work/tls" "$work/gochat" repo logic task gateway ;;
  *) echo "TOPOLOGY is dev or split, not $TOPOLOGY" >&2; exit 1 ;;
esac
for port in $KAFKA_PORT $HTTP_PORT 19490 19491 19493 19494 19401 19402 19403; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is taken: is another run going?" >&2; exit 1; fi
done

pids=()
db=""
stopall() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  pids=()
  if [ -n "$db" ]; then $MYSQL -e "DROP DATABASE IF EXISTS $db" || true; db=""; fi
}
trap 'stopall; echo "logs in $work"' EXIT
waitport() {
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing on port $1; the end of $2's log:" >&2; tail -5 "$work/$2.log" >&2; exit 1
}
# cpusnap "name=pid ...": each process's CPU ticks so far (0 once it is gone).
cpusnap() {
  for np in $1; do
    local name=${np%%=*} pid=${np#*=}
    echo "$name=$(awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null || echo 0)"
  done
}
# cpureport SNAP0 SNAP1 T0 T1 ACKED: each process's share of a core over the
# interval, and its CPU per acked message.
cpureport() {
  awk -v a="$1" -v b="$2" -v t0="$3" -v t1="$4" -v n="$5" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(a, x, " "); for (i in x) { split(x[i], kv, "="); s0[kv[1]] = kv[2] }
    split(b, y, " "); total = 0; line = ""
    for (i in y) { split(y[i], kv, "="); name[i] = kv[1]; d[kv[1]] = (kv[2] - s0[kv[1]]) / hz }
    secs = t1 - t0
    for (k in d) { total += d[k]; line = line sprintf(" %s %.0f %% (%.0f µs/msg)", k, 100 * d[k] / secs, (n > 0 ? 1e6 * d[k] / n : 0)) }
    printf "CPU over %.1f s of sending, %% of a core (per acked message):%s; all %.0f %% (%.0f µs/msg)\n", secs, line, 100 * total / secs, (n > 0 ? 1e6 * total / n : 0)
  }'
}
deadlocks() { $MYSQL -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'" | awk '{print $2}'; }

# run RATE DURATION LABEL
run() {
  local rate=$1 duration=$2 label=$3
  local pairs=$(( rate / PER_SENDER ))
  db=bench_send_$RANDOM$RANDOM
  $MYSQL -e "CREATE DATABASE $db"
  "$work/gochat" dev-kafka --addr 127.0.0.1:$KAFKA_PORT >"$work/kafka-$label.log" 2>&1 & pids+=($!)
  local kafka=$!
  waitport $KAFKA_PORT "kafka-$label"
  local services
  if [ "$TOPOLOGY" = dev ]; then
    GOCHAT_PPROF=${GOCHAT_PPROF:-} "$work/gochat" dev --http-addr 127.0.0.1:$HTTP_PORT --data-dir "$work/data-$label" --metrics-addr 127.0.0.1:19490 \
      --mysql-dsn "root@tcp(127.0.0.1:3306)/$db" --redis-addr 127.0.0.1:6379 \
      --kafka-brokers 127.0.0.1:$KAFKA_PORT --log-level warn --store-workers "$STORE_WORKERS" \
      >"$work/dev-$label.log" 2>&1 & pids+=($!)
    services="dev=$!"
    waitport $HTTP_PORT "dev-$label"
  else
    # im-repo's metrics are on 19490 in both topologies (the store batches').
    local common=(GOCHAT_PPROF=${GOCHAT_PPROF:-} GOCHAT_JWT_SECRET=$(openssl rand -hex 32) GOCHAT_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
      GOCHAT_KAFKA_TOPIC_PREFIX=$db GOCHAT_LOG_LEVEL=warn)
    env "${common[@]}" $(as repo) GOCHAT_MYSQL_DSN="root@tcp(127.0.0.1:3306)/$db" GOCHAT_REDIS_ADDR=127.0.0.1:6379 GOCHAT_REDIS_PREFIX=$db: \
      "$work/gochat" repo --grpc-addr 127.0.0.1:19402 --metrics-addr 127.0.0.1:19490 --migrate --store-workers "$STORE_WORKERS" \
      >"$work/repo-$label.log" 2>&1 & pids+=($!)
    services="repo=$!"
    waitport 19402 "repo-$label"
    env "${common[@]}" $(as logic) "$work/gochat" logic --grpc-addr 127.0.0.1:19401 --metrics-addr 127.0.0.1:19491 --repo-addr 127.0.0.1:19402 \
      >"$work/logic-$label.log" 2>&1 & pids+=($!)
    services="$services logic=$!"
    waitport 19401 "logic-$label"
    env "${common[@]}" $(as task) GOCHAT_CONSUMER_GROUP=$db "$work/gochat" task --metrics-addr 127.0.0.1:19493 --repo-addr 127.0.0.1:19402 \
      >"$work/task-$label.log" 2>&1 & pids+=($!)
    services="$services task=$!"
    waitport 19493 "task-$label"
    env "${common[@]}" $(as gateway) "$work/gochat" gateway --http-addr 127.0.0.1:$HTTP_PORT --grpc-addr 127.0.0.1:19403 --metrics-addr 127.0.0.1:19494 \
      --logic-addr 127.0.0.1:19401 --repo-addr 127.0.0.1:19402 "${LOOPBACK_GATEWAY_FLAGS[@]}" \
      >"$work/gateway-$label.log" 2>&1 & pids+=($!)
    services="$services gateway=$!"
    waitport $HTTP_PORT "gateway-$label"
  fi
  local before; before=$(deadlocks)
  echo "== $label: $rate msg/s offered ($pairs senders at $PER_SENDER/s) for $duration, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  # CPU over the sending and the wait for its last deliveries (not the
  # setup), per process: the services (one gochat dev, or each of them), the Kafka broker,
  # MariaDB, Redis and the load tool itself.
  local procs="$services kafka=$kafka mariadb=$(pgrep -xo mariadbd || echo 0) redis=$(pgrep -xo redis-server || echo 0)"
  "$work/gochat-load" send --url http://127.0.0.1:$HTTP_PORT --pairs "$pairs" --rate "$PER_SENDER" --duration "$duration" \
    ${ALIGNED:+--aligned} >"$work/send-$label.txt" &
  local load=$!
  until grep -q '^sending$' "$work/send-$label.txt" 2>/dev/null || ! kill -0 $load 2>/dev/null; do sleep 0.05; done
  local t0; t0=$(date +%s.%N)
  local snap0; snap0=$(cpusnap "$procs load=$load")
  local snap1=""
  local snap
  while kill -0 $load 2>/dev/null; do
    snap=$(cpusnap "$procs load=$load")
    # The load tool's last reading is the one taken before it exited.
    if ! grep -qx 'load=0' <<<"$snap"; then snap1=$snap; fi
    sleep 0.2
  done
  wait $load || { cat "$work/send-$label.txt"; exit 1; }
  local t1; t1=$(date +%s.%N)
  grep -v '^sending$' "$work/send-$label.txt"
  local acked; acked=$(sed -n 's/.*acked \([0-9]*\),.*/\1/p' "$work/send-$label.txt")
  echo "deadlocks during the run: $(( $(deadlocks) - before )); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  cpureport "$snap0" "$snap1" "$t0" "$t1" "$acked"
  stopall
}

echo "topology: $TOPOLOGY; machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3); MariaDB innodb_flush_log_at_trx_commit=$($MYSQL -N -e 'SELECT @@innodb_flush_log_at_trx_commit')"
for r in $RATES; do run "$r" "$DURATION" "$r"; done
if [ -n "$LONG" ]; then run "$LONG_RATE" "$LONG" "long-$LONG_RATE"; fi
