# Sourced by the benchmark scripts that run GoChat's services as separate
# processes, as a deployment does, with mutual TLS between them.
#
# mint_certs DIR GOCHAT COMPONENT...: a throwaway CA (valid one day) in DIR
# and a certificate for each component, issued by the gochat binary.
mint_certs() {
  local dir=$1 gochat=$2; shift 2
  mkdir -p "$dir"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=gochat-bench-$RANDOM" -days 1 -out "$dir/ca.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  local c
  for c in "$@"; do
    "$gochat" issue-cert --ca-cert "$dir/ca.pem" --ca-key "$dir/ca.key" --component "$c" --validity 12h --out-dir "$dir" 2>/dev/null
  done
  CERT_DIR=$dir
}

# as COMPONENT: the environment that gives a process that component's
# identity (after mint_certs).
as() {
  echo GOCHAT_TLS_CA="$CERT_DIR/ca.crt" GOCHAT_TLS_CERT="$CERT_DIR/$1.crt" GOCHAT_TLS_KEY="$CERT_DIR/$1.key"
}

# Every benchmark client comes from loopback: a gateway's per-address
# login, guest and handshake limits are raised.
LOOPBACK_GATEWAY_FLAGS=(--auth-rate=100000 --auth-burst=100000 --guests-per-hour=100000000 --max-pending-per-ip=10000 --max-user-sessions=10)
