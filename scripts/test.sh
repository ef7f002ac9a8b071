#!/usr/bin/env bash
# Runs the whole test suite: `cargo test --locked`, with any arguments passed
# on to cargo test.
#
# Installs what the tests need when it is missing: the Debian packages cmake
# (and gcc, python3, python3-venv, nodejs, npm, openssl) through apt-get when run as
# root, a Python virtualenv in target/python-venv with
# tests/clients/requirements.txt, and the Node clients of
# tests/clients/package-lock.json (the OpenAI Node SDK and the Codex CLI)
# through `npm ci` in tests/clients/node_modules.
# Reruns install nothing and print nothing before cargo's own output.
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=target/python-venv
REQUIREMENTS=tests/clients/requirements.txt
# Digest of the requirements the virtualenv was last installed from.
REQUIREMENTS_STAMP=$VENV/.requirements.sha256
NODE_CLIENTS=tests/clients
# Digest of the lock file that node_modules was last installed from.
NODE_LOCK_STAMP=$NODE_CLIENTS/node_modules/.package-lock.sha256

fail() {
    echo "test.sh: $*" >&2
    exit 1
}

# Installs Debian packages, or explains how when not running as root.
apt_install() {
    if [[ $(id -u) -ne 0 ]]; then
        fail "missing Debian packages: install them with: sudo apt-get install $*"
    fi
    echo "test.sh: installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v cargo >/dev/null ||
    fail "cargo is missing: install a Rust toolchain with rustup, then run this script again"

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]} > 0)); then
    apt_install "${missing[@]}"
fi

if [[ ! -x $VENV/bin/python ]]; then
    echo "test.sh: creating the Python virtualenv $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 has no ensurepip until python3-venv is installed,
        # and the failed attempt leaves a virtualenv without pip behind.
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed"
    fi
fi

requirements_digest=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -f $REQUIREMENTS_STAMP || $(cat "$REQUIREMENTS_STAMP") != "$requirements_digest" ]]; then
    echo "test.sh: installing $REQUIREMENTS into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" ||
        fail "pip could not install $REQUIREMENTS into $VENV"
    echo "$requirements_digest" >"$REQUIREMENTS_STAMP"
fi

lock_digest=$(sha256sum "$NODE_CLIENTS/package-lock.json" | cut -d' ' -f1)
if [[ ! -f $NODE_LOCK_STAMP || $(cat "$NODE_LOCK_STAMP") != "$lock_digest" ]]; then
    echo "test.sh: installing the Node clients of $NODE_CLIENTS/package-lock.json with npm ci"
    (cd "$NODE_CLIENTS" && npm ci --no-audit --no-fund --loglevel=error) ||
        fail "npm ci could not install the Node clients in $NODE_CLIENTS"
    echo "$lock_digest" >"$NODE_LOCK_STAMP"
fi

TOLLGATE_TEST_PYTHON="$(pwd)/$VENV/bin/python"
export TOLLGATE_TEST_PYTHON

# cargo prints one result line per test binary, the last for the doc tests,
# which are none; the total over all binaries closes the run instead.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
set +e
cargo test --locked "$@" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
exit "$status"
