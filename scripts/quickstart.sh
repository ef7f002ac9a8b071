#!/usr/bin/env bash
# Builds tollgate and the mock upstream, starts both on loopback, sends one
# chat completion as alice and prints her budget. Both keep running in the
# foreground until Ctrl-C, which stops them.
#
# Needs a Rust toolchain, cmake, a C compiler and curl. Listens on
# 127.0.0.1:8081 (mock), and on 127.0.0.1:2000 and 127.0.0.1:9464 (gateway
# and its admin listener, from conf/tollgate.yaml).
set -euo pipefail

cd "$(dirname "$0")/.."

MOCK_HOST=127.0.0.1
MOCK_PORT=8081
GATEWAY_HOST=127.0.0.1
GATEWAY_PORT=2000
# admin_listen in the config: /metrics, /healthz, /readyz, /admin/usage.
ADMIN_PORT=9464
CONFIG=conf/tollgate.yaml
LOG_DIR=target/quickstart
# Seconds each process gets to accept connections after it starts.
START_TIMEOUT=30

fail() {
    echo "quickstart: $*" >&2
    exit 1
}

if [[ $(id -u) -eq 0 ]]; then
    SUDO=""
else
    SUDO="sudo "
fi

command -v cargo >/dev/null ||
    fail "cargo is missing: install a Rust toolchain with rustup, then run this script again"
command -v cmake >/dev/null ||
    fail "cmake is missing (Pingora's build needs it): install it with: ${SUDO}apt-get install cmake"
command -v cc >/dev/null ||
    fail "a C compiler is missing (Pingora's build needs one): install it with: ${SUDO}apt-get install gcc"
command -v curl >/dev/null ||
    fail "curl is missing: install it with: ${SUDO}apt-get install curl"

# Succeeds when something accepts TCP connections on HOST PORT.
port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

for address in "$MOCK_HOST:$MOCK_PORT" "$GATEWAY_HOST:$GATEWAY_PORT" "$GATEWAY_HOST:$ADMIN_PORT"; do
    if port_open "${address%:*}" "${address#*:}"; then
        fail "port $address is already in use, perhaps by an earlier quickstart: stop that process (\`ss -ltnp 'sport = :${address#*:}'\` shows it) and run this script again"
    fi
done

echo "==> Building tollgate and mock-upstream (cargo build --bins; the first build takes a few minutes)"
cargo build --bins

mkdir -p "$LOG_DIR"
MOCK_PID=""
GATEWAY_PID=""
TAIL_PID=""

# Stops the log follower and both processes, and waits for them so the
# ports are free on return.
# SIGINT makes the gateway exit at once, while SIGTERM would wait out its
# grace period.
stop_all() {
    trap - EXIT INT TERM
    if [[ -n $TAIL_PID ]]; then
        kill -TERM "$TAIL_PID" 2>/dev/null || true
    fi
    if [[ -n $GATEWAY_PID ]]; then
        kill -INT "$GATEWAY_PID" 2>/dev/null || true
    fi
    if [[ -n $MOCK_PID ]]; then
        kill -TERM "$MOCK_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'echo; echo "==> Stopping tollgate and mock-upstream"; exit 0' INT TERM

# Waits until NAME (process PID) accepts connections on HOST PORT. Prints the
# end of its log and exits when the process dies first or times out.
wait_for_port() {
    local name=$1 pid=$2 host=$3 port=$4 log=$5
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$host" "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "quickstart: $name exited before it listened on $host:$port; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "quickstart: $name did not listen on $host:$port within ${START_TIMEOUT} s; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
}

echo "==> Starting mock-upstream on $MOCK_HOST:$MOCK_PORT (log: $LOG_DIR/mock-upstream.log)"
target/debug/mock-upstream --listen "$MOCK_HOST:$MOCK_PORT" >"$LOG_DIR/mock-upstream.log" 2>&1 &
MOCK_PID=$!
wait_for_port mock-upstream "$MOCK_PID" "$MOCK_HOST" "$MOCK_PORT" "$LOG_DIR/mock-upstream.log"

echo "==> Starting tollgate -c $CONFIG on $GATEWAY_HOST:$GATEWAY_PORT (log: $LOG_DIR/tollgate.log)"
target/debug/tollgate -c "$CONFIG" >"$LOG_DIR/tollgate.log" 2>&1 &
GATEWAY_PID=$!
wait_for_port tollgate "$GATEWAY_PID" "$GATEWAY_HOST" "$GATEWAY_PORT" "$LOG_DIR/tollgate.log"

GATEWAY_URL="http://$GATEWAY_HOST:$GATEWAY_PORT"

echo
echo "==> POST $GATEWAY_URL/v1/chat/completions as alice (Authorization: Bearer alice-key)"
curl --silent --show-error --include --fail-with-body \
    "$GATEWAY_URL/v1/chat/completions" \
    -H "Authorization: Bearer alice-key" \
    -H "Content-Type: application/json" \
    -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}' ||
    fail "the chat completion failed; the end of $LOG_DIR/tollgate.log: $(tail -n 5 "$LOG_DIR/tollgate.log")"
echo

# The gateway settles a request's tokens just after the response is sent, so
# poll briefly until nothing is reserved any more.
usage=""
for _ in $(seq 20); do
    usage=$(curl --silent --show-error --fail-with-body \
        "$GATEWAY_URL/v1/gateway/usage" -H "Authorization: Bearer alice-key") ||
        fail "GET /v1/gateway/usage failed: $usage"
    [[ $usage == *'"tokens_reserved":0'* ]] && break
    sleep 0.1
done
echo
echo "==> GET $GATEWAY_URL/v1/gateway/usage as alice"
echo "$usage"

cat <<EOF

tollgate is listening on $GATEWAY_URL in front of the mock upstream on http://$MOCK_HOST:$MOCK_PORT.
Users from $CONFIG: alice (alice-key, 100000 tokens an hour), bob (bob-key, 20000), ci (ci-key, unlimited).
Try for example:
  curl $GATEWAY_URL/v1/models -H "Authorization: Bearer bob-key"
  curl http://$GATEWAY_HOST:$ADMIN_PORT/metrics
The gateway's log, one JSON line per request, follows below.
Press Ctrl-C to stop both processes.

EOF

tail -n 0 -f "$LOG_DIR/tollgate.log" &
TAIL_PID=$!
# Ctrl-C reaches tollgate too, which then exits with status 0 before the
# INT trap above may run; any other status means it failed.
status=0
wait "$GATEWAY_PID" || status=$?
if ((status == 0)); then
    echo
    echo "==> Stopping tollgate and mock-upstream"
    exit 0
fi
fail "tollgate exited with status $status; see $LOG_DIR/tollgate.log"
