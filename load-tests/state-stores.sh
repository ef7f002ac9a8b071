#!/usr/bin/env bash
# Compares gateway throughput with the sqlite state store against the memory
# store, in one run. oha sends non-streaming chat completions through a
# release build of tollgate to the mock upstream. The two stores alternate
# for ROUNDS rounds, and the script prints requests/s per store and the
# ratio sqlite/memory. After each sqlite round it checks that the usage log has a
# row for every request oha saw answered.
#
# Usage: load-tests/state-stores.sh [-z DURATION] [-c CONCURRENCY] [-r ROUNDS]
#
# Everything runs on 127.0.0.1 and stops by itself. Raw oha reports go to
# target/load-tests/.
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=10s
CONCURRENCY=32
ROUNDS=2
WARMUP=2s
HOST=127.0.0.1
MOCK_PORT=18091
GATEWAY_PORT=12010
OUT_DIR=target/load-tests
START_TIMEOUT=30
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_completion_tokens":16}'

usage() {
    cat <<USAGE
Usage: load-tests/state-stores.sh [-z DURATION] [-c CONCURRENCY] [-r ROUNDS]
  -z  length of each measured run, in oha's format such as 10s (default 10s)
  -c  concurrent connections (default 32)
  -r  rounds; each round measures memory, then sqlite (default 2)
USAGE
}

while getopts "z:c:r:h" option; do
    case $option in
    z) DURATION=$OPTARG ;;
    c) CONCURRENCY=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
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
    echo "state-stores.sh: $*" >&2
    exit 1
}

command -v cargo >/dev/null || fail "cargo is missing: install a Rust toolchain with rustup"
command -v python3 >/dev/null ||
    fail "python3 is missing (it reads oha's JSON and the database): apt-get install python3"
command -v oha >/dev/null || fail "oha is missing: install it with cargo install oha --locked"

port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

for port in "$MOCK_PORT" "$GATEWAY_PORT"; do
    if port_open "$HOST" "$port"; then
        fail "port $HOST:$port is already in use: stop the process that listens there and run again"
    fi
done

echo "==> cargo build --release --bins"
cargo build --release --bins

mkdir -p "$OUT_DIR"
WORK_DIR=$(mktemp -d)
MOCK_PID=""
GATEWAY_PID=""

stop_gateway() {
    if [[ -n $GATEWAY_PID ]]; then
        # SIGTERM, so the sqlite store writes its last batch before exit.
        kill -TERM "$GATEWAY_PID" 2>/dev/null || true
        wait "$GATEWAY_PID" 2>/dev/null || true
        GATEWAY_PID=""
    fi
}

stop_all() {
    stop_gateway
    if [[ -n $MOCK_PID ]]; then
        kill -INT "$MOCK_PID" 2>/dev/null || true
        wait "$MOCK_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK_DIR"
}
trap stop_all EXIT

wait_for_port() {
    local name=$1 pid=$2 port=$3 log=$4
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$HOST" "$port"; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "state-stores.sh: $name did not start on $HOST:$port; the end of its log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

# Writes the gateway configuration for store $1 (memory or sqlite).
write_config() {
    local state="store: memory"
    if [[ $1 == sqlite ]]; then
        state="store: sqlite
  path: $WORK_DIR/tollgate.db"
    fi
    cat >"$WORK_DIR/tollgate.yaml" <<CONFIG
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
  grace_period: 0s
state:
  $state
CONFIG
}

# Runs oha against the gateway for $1 and writes its JSON report to $2.
run_oha() {
    oha --no-tui --output-format json -z "$1" -c "$CONCURRENCY" -m POST \
        -H "authorization: Bearer bob-key" -H "content-type: application/json" \
        -d "$BODY" "http://$HOST:$GATEWAY_PORT/v1/chat/completions" >"$2"
}

# Prints "requests/s successful-requests" from an oha JSON report.
read_report() {
    python3 - "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
codes = report.get("statusCodeDistribution", {})
print(f'{report["summary"]["requestsPerSec"]:.1f} {codes.get("200", 0)}')
PY
}

usage_rows() {
    python3 - "$WORK_DIR/tollgate.db" <<'PY'
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM usage_log").fetchone()[0])
PY
}

echo "==> Starting the mock upstream on $HOST:$MOCK_PORT"
target/release/mock-upstream --listen "$HOST:$MOCK_PORT" >"$OUT_DIR/state-mock.log" 2>&1 &
MOCK_PID=$!
wait_for_port mock-upstream "$MOCK_PID" "$MOCK_PORT" "$OUT_DIR/state-mock.log"

declare -A TOTAL=([memory]=0 [sqlite]=0)
for round in $(seq 1 "$ROUNDS"); do
    for store in memory sqlite; do
        rm -f "$WORK_DIR"/tollgate.db*
        write_config "$store"
        log="$OUT_DIR/state-$store-$round.log"
        RUST_LOG=warn target/release/tollgate -c "$WORK_DIR/tollgate.yaml" >"$log" 2>&1 &
        GATEWAY_PID=$!
        wait_for_port tollgate "$GATEWAY_PID" "$GATEWAY_PORT" "$log"

        run_oha "$WARMUP" "$OUT_DIR/state-$store-$round-warmup.json"
        report="$OUT_DIR/state-$store-$round.json"
        run_oha "$DURATION" "$report"
        read -r rps answered < <(read_report "$report")
        read -r warmup_rps warmup_answered < <(read_report "$OUT_DIR/state-$store-$round-warmup.json")
        stop_gateway

        line="round $round  $store  $rps requests/s"
        if [[ $store == sqlite ]]; then
            rows=$(usage_rows)
            expected=$((answered + warmup_answered))
            line="$line  usage rows $rows for $expected answered"
            # oha cancels the requests in flight when a run ends; the gateway
            # still logs them, so up to CONCURRENCY rows per run may be extra.
            ((rows >= expected)) || fail "$line: the usage log lost rows"
            ((rows <= expected + 2 * CONCURRENCY)) || fail "$line: more rows than requests"
        fi
        echo "$line"
        TOTAL[$store]=$(python3 -c "print(${TOTAL[$store]} + $rps)")
    done
done

python3 - "${TOTAL[memory]}" "${TOTAL[sqlite]}" "$ROUNDS" <<'PY'
import sys
memory, sqlite, rounds = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"mean memory {memory / rounds:.1f} requests/s, sqlite {sqlite / rounds:.1f} requests/s, "
      f"ratio sqlite/memory {sqlite / memory:.3f}")
PY
