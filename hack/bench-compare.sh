#!/usr/bin/env bash
# Side-by-side benchmark of GoChat and Centrifugo on this machine (make
# bench-compare). Centrifugo is installed at a pinned version (cached in
# ~/.cache/gochat/), runs with a generated config (JWT connection tokens, the
# in-memory engine, a namespace clients subscribe to and the HTTP API publishes
# into) and is measured first; then GoChat runs as separate processes (a Kafka
# broker, im-repo on MariaDB and Redis, im-logic, im-task, one gateway) and is
# measured the same way. gochat-load's compare scenario drives both, through
# an adapter per server, and compare-table writes the table with ratios.
#
#   hack/bench-compare.sh                  # a small smoke run (500 connections, 200-member fan-out)
#   FULL=1 hack/bench-compare.sh           # the comparison of docs/benchmarks.md: run it on an idle machine
#   SERVERS=centrifugo FANOUT="5000@5" hack/bench-compare.sh
#
# Settings (environment):
#   CONNS      connections for the connect rate and idle memory (smoke 500, FULL 10000)
#   HOLD       how long they are held before the server's RSS is read (smoke 20s, FULL 60s)
#   FANOUT     fan-out runs, MEMBERS@RATE, space-separated (smoke "200@5"); empty skips them
#   SESSIONS   messages/s of the 10,000-session run (1,000 users x 10); empty skips it (smoke: skipped)
#   DURATION   how long each fan-out publishes (smoke 15s, FULL 30s)
#   SERVERS    which servers, in order (default "centrifugo gochat")
#   RESULTS    the results file (default: a new one in the run's directory; appended to)
#   TASK_FLAGS extra flags for im-task, to measure a setting (e.g. "--route-cache-ttl=10s")
#   GATEWAY_FLAGS extra flags for the gateway (e.g. "--gc-percent=100")
set -euo pipefail
CENTRIFUGO_VERSION=${CENTRIFUGO_VERSION:-v6.9.1}
if [ -n "${FULL:-}" ]; then
  CONNS=${CONNS:-10000} HOLD=${HOLD:-60s} DURATION=${DURATION:-30s}
  FANOUT=${FANOUT-"1000@1 1000@5 5000@1 5000@5 10000@1 10000@5"} SESSIONS=${SESSIONS-5}
fi
CONNS=${CONNS:-500}
HOLD=${HOLD:-20s}
FANOUT=${FANOUT-"200@5"}
SESSIONS=${SESSIONS:-}
DURATION=${DURATION:-15s}
SERVERS=${SERVERS:-"centrifugo gochat"}
MYSQL=${MYSQL:-mysql -uroot -h127.0.0.1}
CENTRIFUGO_PORT=18700
GW_HTTP=18780

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/hack/lib/services.sh"
cache=${GOCHAT_CACHE:-$HOME/.cache/gochat}/centrifugo-$CENTRIFUGO_VERSION
work=$(mktemp -d /tmp/gochat-bench-compare.XXXXXX)
RESULTS=${RESULTS:-$work/results.jsonl}

# Every session needs a descriptor in the server and one in the load tool.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((CONNS + 1000)) ]; then echo "ulimit -n is $(ulimit -n): too few for $CONNS connections" >&2; exit 1; fi

# The peer, at its pinned version, built from the module proxy once (only
# when it is measured).
if [[ " $SERVERS " == *" centrifugo "* ]]; then
  if [ ! -x "$cache/centrifugo" ]; then
    echo "installing Centrifugo $CENTRIFUGO_VERSION into $cache"
    mkdir -p "$cache"
    (cd "$work" && GOBIN=$cache GOFLAGS= GOWORK=off go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION")
  fi
  # go install stamps no version into the binary's own "version"; its module record has it.
  if ! go version -m "$cache/centrifugo" | grep -qE "^\s+mod\s+github.com/centrifugal/centrifugo/v6\s+$CENTRIFUGO_VERSION\s"; then
    echo "$cache/centrifugo is not $CENTRIFUGO_VERSION: $(go version -m "$cache/centrifugo" | sed -n 3p)" >&2; exit 1
  fi
  # The Centrifugo adapter is checked against this binary before it measures.
  (cd "$root/services" && GOCHAT_CENTRIFUGO=$cache/centrifugo go test -tags bench -count=1 -run '^TestCompareCentrifugo$' ./cmd/gochat-load)
fi
(cd "$root/services" && go build -o "$work/gochat" ./cmd/gochat && go build -o "$work/gochat-load" ./cmd/gochat-load)
# Checked after the builds, which take minutes: a run that started meanwhile
# holds the ports, and our load would go to its servers.
for port in $CENTRIFUGO_PORT 19392 19302 19301 19312 19311 19313 $GW_HTTP 19380 19390; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is taken: is another run going?" >&2; exit 1; fi
done

pids=()
db=""
redis_prefix=""
dropgochat() { # the run's database and its keys in the shared Redis (last-seen keys live 90 days)
  if [ -n "$db" ]; then $MYSQL -e "DROP DATABASE IF EXISTS $db" || true; db=""; fi
  if [ -n "$redis_prefix" ] && command -v redis-cli >/dev/null; then
    redis-cli --scan --pattern "$redis_prefix*" | xargs -r -n 500 redis-cli del >/dev/null || true
  fi
  redis_prefix=""
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  dropgochat
  echo "logs and results in $work"
}
trap cleanup EXIT
start() { # name, then the command; prints the pid
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  echo $!
}
waitport() { # port, name: the process whose log says why when nothing listens
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing on port $1; the end of $2's log:" >&2; tail -5 "$work/$2.log" >&2; exit 1
}
stopall() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  pids=()
}

# snapshot NAME: GoChat's services' metrics after a scenario (cumulative), kept
# beside the results so that a run's stages (the store, the push, GetMembers)
# can be read afterwards, with MariaDB's InnoDB counters (row-lock waits,
# pages flushed, log waits, fsyncs: what a slow commit waited on); nothing
# for Centrifugo (metrics is empty).
metrics=""
snapshot() {
  [ -n "$metrics" ] || return 0
  mkdir -p "$work/metrics"
  local m
  for m in $metrics; do
    curl -sf "http://${m#*=}/metrics" >"$work/metrics/$1-${m%%=*}.txt" || true
  done
  $MYSQL -N -e "SHOW GLOBAL STATUS WHERE Variable_name LIKE 'Innodb_row_lock%' OR Variable_name IN
    ('Innodb_buffer_pool_pages_dirty','Innodb_buffer_pool_pages_flushed','Innodb_buffer_pool_wait_free',
     'Innodb_checkpoint_age','Innodb_log_waits','Innodb_data_fsyncs','Innodb_data_pending_fsyncs','Innodb_lsn_current')" \
    >"$work/metrics/$1-mariadb.txt" || true
}

# diskprobe: the fsyncs a commit waits for on MariaDB's disk (its log's
# floor: GoChat's store commits once per batch), when MariaDB is on this
# machine; printed with the results.
diskprobe() {
  local dir
  dir=$($MYSQL -N -e 'SELECT @@datadir' 2>/dev/null || true)
  if [ -n "$dir" ] && [ -d "$dir" ] && [ -w "$dir" ]; then
    "$work/gochat-load" disk --dir "$dir" --n 1000 | tee -a "$work/disk.txt"
  else
    echo "disk: not measured (MariaDB's data directory ${dir:-unknown} is not on this machine or not writable)"
  fi
}

# scenarios SERVER URL PIDS [extra flags]: every measurement against one server.
scenarios() {
  local server=$1 url=$2 pidlist=$3; shift 3
  local load=(timeout 300 "$work/gochat-load" compare --server "$server" --url "$url" --pids "$pidlist" --out "$RESULTS" "$@")
  echo "== $server: $CONNS connections, held $HOLD"
  "${load[@]}" --scenario connect --conns "$CONNS" --hold "$HOLD" --label "$CONNS connections" || echo "$server connect: failed (see above)"
  snapshot connect
  for f in $FANOUT; do
    local members=${f%@*} rate=${f#*@}
    echo "== $server: fan-out to $members members at $rate msg/s for $DURATION"
    "${load[@]}" --scenario fanout --members "$members" --rate "$rate" --duration "$DURATION" \
      --label "fan-out to $members members, $rate msg/s" || echo "$server fan-out $f: failed (see above)"
    snapshot "fanout-$members-at-$rate"
  done
  if [ -n "$SESSIONS" ]; then
    echo "== $server: 10,000 sessions (1,000 users x 10) at $SESSIONS msg/s for $DURATION"
    "${load[@]}" --scenario sessions --rate "$SESSIONS" --duration "$DURATION" \
      --label "10,000 sessions (1,000 users x 10), $SESSIONS msg/s" || echo "$server sessions: failed (see above)"
    snapshot "sessions-at-$SESSIONS"
  fi
}

run_centrifugo() {
  local secret apikey
  secret=$(openssl rand -hex 32)
  apikey=$(openssl rand -hex 16)
  # JWT mode (HS256 connection tokens, nothing looked up at connect), the
  # in-memory engine, and one namespace clients may subscribe to, with a
  # short history so that publications carry offsets to count by.
  cat >"$work/centrifugo.json" <<EOF
{
  "log": {"level": "error"},
  "http_server": {"address": "127.0.0.1", "port": $CENTRIFUGO_PORT},
  "engine": {"type": "memory"},
  "client": {"token": {"hmac_secret_key": "$secret"}, "allowed_origins": ["*"]},
  "http_api": {"key": "$apikey"},
  "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true, "history_size": 1000, "history_ttl": "300s"}]}
}
EOF
  chmod 600 "$work/centrifugo.json"
  "$cache/centrifugo" checkconfig --config "$work/centrifugo.json" >/dev/null
  local pid
  pid=$(start centrifugo "$cache/centrifugo" --config "$work/centrifugo.json")
  pids+=("$pid")
  waitport $CENTRIFUGO_PORT centrifugo
  # The load tool signs tokens and publishes with these; they stay out of its command line.
  export CENTRIFUGO_HMAC_SECRET=$secret CENTRIFUGO_API_KEY=$apikey
  scenarios centrifugo "http://127.0.0.1:$CENTRIFUGO_PORT" "$pid"
  unset CENTRIFUGO_HMAC_SECRET CENTRIFUGO_API_KEY
  stopall
}

run_gochat() {
  diskprobe
  # Internal gRPC is mutual TLS: a throwaway CA and a certificate per component.
  mint_certs "$work/tls" "$work/gochat" repo logic task gateway
  db=bench_compare_$RANDOM$RANDOM
  $MYSQL -e "CREATE DATABASE $db"
  local topics=benchcmp$RANDOM
  redis_prefix=benchcmp$RANDOM$RANDOM:
  local members=0
  for f in $FANOUT; do members=$(( ${f%@*} > members ? ${f%@*} : members )); done
  export GOCHAT_JWT_SECRET=$(openssl rand -hex 32) GOCHAT_KAFKA_BROKERS=127.0.0.1:19392 GOCHAT_KAFKA_TOPIC_PREFIX=$topics GOCHAT_KAFKA_PARTITIONS=6
  local kafka repo logic task gw
  kafka=$(start kafka "$work/gochat" dev-kafka --addr 127.0.0.1:19392); pids+=("$kafka"); waitport 19392 kafka
  repo=$(start repo env $(as repo) GOCHAT_MYSQL_DSN="root@tcp(127.0.0.1:3306)/$db" GOCHAT_REDIS_PREFIX=$redis_prefix \
    "$work/gochat" repo --grpc-addr 127.0.0.1:19302 --metrics-addr 127.0.0.1:19312 --migrate); pids+=("$repo"); waitport 19302 repo
  # The group is the members plus the one who sends.
  logic=$(start logic env $(as logic) "$work/gochat" logic --grpc-addr 127.0.0.1:19301 --metrics-addr 127.0.0.1:19311 \
    --repo-addr 127.0.0.1:19302 --max-group-members $(( (members > 1000 ? members : 1000) + 1 ))); pids+=("$logic"); waitport 19301 logic
  task=$(start task env $(as task) GOCHAT_CONSUMER_GROUP=$topics "$work/gochat" task --metrics-addr 127.0.0.1:19313 \
    --repo-addr 127.0.0.1:19302 ${TASK_FLAGS:-}); pids+=("$task"); waitport 19313 task
  # Every client comes from loopback: the per-address limits are raised.
  gw=$(start gateway env $(as gateway) "$work/gochat" gateway --http-addr 127.0.0.1:$GW_HTTP --grpc-addr 127.0.0.1:19390 \
    --metrics-addr 127.0.0.1:19380 --logic-addr 127.0.0.1:19301 --repo-addr 127.0.0.1:19302 \
    "${LOOPBACK_GATEWAY_FLAGS[@]}" ${GATEWAY_FLAGS:-}); pids+=("$gw")
  waitport $GW_HTTP gateway
  # The gateway holds the sessions (its RSS is the per-connection figure);
  # the CPU is that of every GoChat process (MariaDB and Redis are shared
  # with the rest of the machine and not counted).
  metrics="gateway=127.0.0.1:19380 logic=127.0.0.1:19311 repo=127.0.0.1:19312 task=127.0.0.1:19313"
  scenarios gochat "http://127.0.0.1:$GW_HTTP" "$gw,$logic,$repo,$task,$kafka"
  metrics=""
  stopall
  dropgochat
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg); $(go version | cut -d' ' -f3); Centrifugo $CENTRIFUGO_VERSION"
for s in $SERVERS; do
  case $s in
    centrifugo) run_centrifugo ;;
    gochat) run_gochat ;;
    *) echo "unknown server $s" >&2; exit 1 ;;
  esac
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
[ ! -s "$work/disk.txt" ] || cat "$work/disk.txt"
"$work/gochat-load" compare-table --results "$RESULTS" | tee "$work/table.md"
