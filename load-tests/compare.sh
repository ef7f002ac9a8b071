#!/usr/bin/env bash
# Measures what tollgate adds to a request: requests/s and latency
# percentiles of non-streaming chat completions sent with oha (a) straight to
# the mock upstream, (b) through nginx as a plain reverse proxy and (c)
# through tollgate, all to the same mock, then prints the ratios
# gateway/direct and gateway/nginx.
#
# Usage: load-tests/compare.sh [-z DURATION] [-c CONCURRENCY] [-m PORT] [-g PORT],
# see -h.
#
# Everything runs on 127.0.0.1. The script builds release binaries, starts
# its own mock and gateway on the ports below and stops them on exit. Raw
# oha reports go to target/load-tests/.
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=10s
CONCURRENCY=32
# Unwarmed connections and lazy initialisation would skew a short run, so
# each target first gets this long of the same load, not measured.
WARMUP=2s
HOST=127.0.0.1
MOCK_PORT=28081
GATEWAY_PORT=22000
NGINX_PORT=23000
OUT_DIR=target/load-tests
START_TIMEOUT=30
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_completion_tokens":16}'

usage() {
    cat <<EOF
Usage: load-tests/compare.sh [-z DURATION] [-c CONCURRENCY] [-m PORT] [-g PORT]
  -z  length of each measured run, in oha's format such as 10s or 1m (default 10s)
  -c  concurrent connections (default 32)
  -m  port of the mock upstream on 127.0.0.1 (default 28081)
  -g  port of the gateway on 127.0.0.1 (default 22000)
EOF
}

while getopts "z:c:m:g:h" option; do
    case $option in
    z) DURATION=$OPTARG ;;
    c) CONCURRENCY=$OPTARG ;;
    m) MOCK_PORT=$OPTARG ;;
    g) GATEWAY_PORT=$OPTARG ;;
    h)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
done

fail() {
    echo "compare.sh: $*" >&2
    exit 1
}

command -v cargo >/dev/null || fail "cargo is missing: install a Rust toolchain with rustup"
command -v python3 >/dev/null || fail "python3 is missing (it reads oha's JSON reports): install it with: apt-get install python3"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[[ -x $NGINX ]] || fail "nginx is missing (the plain-proxy reference): install it with: apt-get install nginx-light"
if ! command -v oha >/dev/null; then
    echo "==> oha is missing: installing it with cargo install oha --locked"
    cargo install oha --locked
fi

port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

for port in "$MOCK_PORT" "$GATEWAY_PORT" "$NGINX_PORT"; do
    if port_open "$HOST" "$port"; then
        fail "port $HOST:$port is already in use: stop that process (\`ss -ltnp 'sport = :$port'\` shows it) and run this script again"
    fi
done

echo "==> cargo build --release --bins"
cargo build --release --bins

mkdir -p "$OUT_DIR"
WORK_DIR=$(mktemp -d)
MOCK_PID=""
GATEWAY_PID=""
NGINX_PID=""

stop_all() {
    for pid in "$GATEWAY_PID" "$NGINX_PID" "$MOCK_PID"; do
        if [[ -n $pid ]]; then
            kill -INT "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    rm -rf "$WORK_DIR"
}
trap stop_all EXIT

# Waits until PID accepts connections on PORT, or exits with its log.
wait_for_port() {
    local name=$1 pid=$2 port=$3 log=$4
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$HOST" "$port"; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "compare.sh: $name did not start listening on $HOST:$port; the end of its log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

# bob's budget is far above what one run uses, so no request gets 429 and
# the gateway still does its full budget bookkeeping and sends the
# x-ratelimit headers.
cat >"$WORK_DIR/tollgate.yaml" <<EOF
listen: $HOST:$GATEWAY_PORT
upstream:
  url: http://$HOST:$MOCK_PORT
  api_key: sk-load-test
budgets:
  reset_period: 1d
users:
  - name: bob
    api_key: bob-key
    tokens: 1000000000000
server:
  threads: 2
  pid_file: $WORK_DIR/tollgate.pid
  upgrade_sock: $WORK_DIR/upgrade.sock
state:
  path: $WORK_DIR/tollgate.db
EOF

echo "==> Starting target/release/mock-upstream on $HOST:$MOCK_PORT"
RUST_LOG=warn target/release/mock-upstream --listen "$HOST:$MOCK_PORT" >"$WORK_DIR/mock.log" 2>&1 &
MOCK_PID=$!
wait_for_port mock-upstream "$MOCK_PID" "$MOCK_PORT" "$WORK_DIR/mock.log"

# The access log (one line per request) is written to a file, as it would be
# to journald in production.
echo "==> Starting target/release/tollgate on $HOST:$GATEWAY_PORT"
RUST_LOG=warn target/release/tollgate -c "$WORK_DIR/tollgate.yaml" >"$WORK_DIR/tollgate.log" 2>&1 &
GATEWAY_PID=$!
wait_for_port tollgate "$GATEWAY_PID" "$GATEWAY_PORT" "$WORK_DIR/tollgate.log"

# nginx as a plain reverse proxy with the same number of workers as
# tollgate's threads and pooled upstream connections, the usual production
# setup.
cat >"$WORK_DIR/nginx.conf" <<EOF
worker_processes 2;
pid $WORK_DIR/nginx.pid;
error_log $WORK_DIR/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    upstream mock { server $HOST:$MOCK_PORT; keepalive 64; }
    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
echo "==> Starting nginx on $HOST:$NGINX_PORT"
"$NGINX" -p "$WORK_DIR" -c "$WORK_DIR/nginx.conf" -g 'daemon off;' >"$WORK_DIR/nginx.log" 2>&1 &
NGINX_PID=$!
wait_for_port nginx "$NGINX_PID" "$NGINX_PORT" "$WORK_DIR/nginx.log"

# Runs oha against URL for DURATION, writing its JSON report to FILE.
run_oha() {
    local url=$1 duration=$2 report=$3
    oha --no-tui --output-format json -z "$duration" -w -c "$CONCURRENCY" \
        -m POST -H "Authorization: Bearer bob-key" -H "Content-Type: application/json" \
        -d "$BODY" "$url" >"$report"
}

# CPU time (user + system) that process PID has used, in clock ticks.
cpu_ticks() {
    # Fields 14 and 15 of /proc/PID/stat; the process names here have no
    # spaces, so plain field splitting is safe.
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

for target in direct nginx gateway; do
    case $target in
    direct) url="http://$HOST:$MOCK_PORT/v1/chat/completions" ;;
    nginx) url="http://$HOST:$NGINX_PORT/v1/chat/completions" ;;
    gateway) url="http://$HOST:$GATEWAY_PORT/v1/chat/completions" ;;
    esac
    echo "==> $target: $url, warm-up $WARMUP, then $DURATION at concurrency $CONCURRENCY"
    run_oha "$url" "$WARMUP" "$OUT_DIR/$target-warmup.json"
    gateway_ticks_before=$(cpu_ticks "$GATEWAY_PID")
    run_oha "$url" "$DURATION" "$OUT_DIR/$target.json"
    gateway_ticks=$(($(cpu_ticks "$GATEWAY_PID") - gateway_ticks_before))
done

python3 - "$OUT_DIR/direct.json" "$OUT_DIR/nginx.json" "$OUT_DIR/gateway.json" "$gateway_ticks" "$(getconf CLK_TCK)" <<'EOF'
import json
import sys

def load(path):
    with open(path) as file:
        report = json.load(file)
    statuses = report.get("statusCodeDistribution", {})
    failures = {code: count for code, count in statuses.items() if code != "200"}
    errors = report.get("errorDistribution", {})
    if failures or errors:
        sys.exit(f"compare.sh: {path}: responses other than 200: {failures} {errors}")
    summary = report["summary"]
    percentiles = report["latencyPercentiles"]
    return {
        "requests": sum(statuses.values()),
        "rps": summary["requestsPerSec"],
        "p50": percentiles["p50"] * 1000,
        "p90": percentiles["p90"] * 1000,
        "p99": percentiles["p99"] * 1000,
        "p99.9": percentiles["p99.9"] * 1000,
    }

direct = load(sys.argv[1])
nginx = load(sys.argv[2])
gateway = load(sys.argv[3])
print()
print(f"{'target':<8} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
for name, row in (("direct", direct), ("nginx", nginx), ("gateway", gateway)):
    print(
        f"{name:<8} {row['requests']:>9} {row['rps']:>9.0f} {row['p50']:>8.2f} "
        f"{row['p90']:>8.2f} {row['p99']:>8.2f} {row['p99.9']:>9.2f}"
    )
print()
for reference_name, reference in (("direct", direct), ("nginx", nginx)):
    print(f"ratio gateway/{reference_name}:")
    print(f"  requests/s   {gateway['rps'] / reference['rps']:.2f}")
    for key in ("p50", "p90", "p99"):
        print(f"  {key + ' latency':<12} {gateway[key] / reference[key]:.2f}")
gateway_cpu_seconds = int(sys.argv[4]) / int(sys.argv[5])
print()
print(
    f"gateway CPU time in the measured run: {gateway_cpu_seconds:.2f} s, "
    f"{gateway_cpu_seconds / gateway['requests'] * 1e6:.0f} us per request"
)
EOF
