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
set -euo pipefail
RATES=${RATES:-"1000 2000 5000 8000 10000"}
PER_SENDER=${PER_SENDER:-5}
DURATION=${DURATION:-30s}
LONG=${LONG:-}
LONG_RATE=${LONG_RATE:-5000}
STORE_WORKERS=${STORE_WORKERS:-1}
MYSQL=${MYSQL:-mysql -uroot -h127.0.0.1}
KAFKA_PORT=19492
HTTP_PORT=19400

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/gochat-bench-send.XXXXXX)
ulimit -n "$(ulimit -Hn)"
(cd "$root/services" && go build -o "$work/gochat" ./cmd/gochat && go build -o "$work/gochat-load" ./cmd/gochat-load)
for port in $KAFKA_PORT $HTTP_PORT; do
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
deadlocks() { $MYSQL -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'" | awk '{print $2}'; }

# run RATE DURATION LABEL
run() {
  local rate=$1 duration=$2 label=$3
  local pairs=$(( rate / PER_SENDER ))
  db=bench_send_$RANDOM$RANDOM
  $MYSQL -e "CREATE DATABASE $db"
  "$work/gochat" dev-kafka --addr 127.0.0.1:$KAFKA_PORT >"$work/kafka-$label.log" 2>&1 & pids+=($!)
  waitport $KAFKA_PORT "kafka-$label"
  GOCHAT_PPROF=${GOCHAT_PPROF:-} "$work/gochat" dev --http-addr 127.0.0.1:$HTTP_PORT --data-dir "$work/data-$label" --metrics-addr 127.0.0.1:19490 \
    --mysql-dsn "root@tcp(127.0.0.1:3306)/$db" --redis-addr 127.0.0.1:6379 \
    --kafka-brokers 127.0.0.1:$KAFKA_PORT --log-level warn --store-workers "$STORE_WORKERS" \
    >"$work/dev-$label.log" 2>&1 & pids+=($!)
  local dev=$!
  waitport $HTTP_PORT "dev-$label"
  local before; before=$(deadlocks)
  echo "== $label: $rate msg/s offered ($pairs senders at $PER_SENDER/s) for $duration, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  local cpu0; cpu0=$(awk '{print $14+$15}' /proc/$dev/stat)
  "$work/gochat-load" send --url http://127.0.0.1:$HTTP_PORT --pairs "$pairs" --rate "$PER_SENDER" --duration "$duration" \
    | tee "$work/send-$label.txt"
  local cpu1; cpu1=$(awk '{print $14+$15}' /proc/$dev/stat)
  echo "deadlocks during the run: $(( $(deadlocks) - before )); gochat dev CPU: $(( (cpu1 - cpu0) / $(getconf CLK_TCK) )) s (setup included); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  stopall
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3); MariaDB innodb_flush_log_at_trx_commit=$($MYSQL -N -e 'SELECT @@innodb_flush_log_at_trx_commit')"
for r in $RATES; do run "$r" "$DURATION" "$r"; done
if [ -n "$LONG" ]; then run "$LONG_RATE" "$LONG" "long-$LONG_RATE"; fi
