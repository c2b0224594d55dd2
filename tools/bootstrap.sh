# Sourced by run_tests.sh and run_demo.sh: make .venv with everything the tests and demos need.
# Works on a fresh Debian machine with only python3: installs python3-venv if venv is missing.
set -euo pipefail
FAIRLOCK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FAIRLOCK_VENV:-$FAIRLOCK_ROOT/.venv}"
PY="$VENV/bin/python"

_as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x "$PY" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        echo "bootstrap: python3 -m venv failed; installing python3-venv" >&2
        rm -rf "$VENV"
        _as_root apt-get update -qq
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
fi

# etcd for the etcd tests: Debian's etcd-server (3.4.x, /usr/bin/etcd). The tests start their own
# etcd on free loopback ports with a temporary data dir (fairlock.testing), never the system one,
# so the package's service is kept from starting (policy-rc.d answering 101 = "action forbidden")
# and is stopped if the init system started it anyway.
if ! command -v etcd >/dev/null 2>&1 && [ -z "${FAIRLOCK_SKIP_ETCD_INSTALL:-}" ]; then
    echo "bootstrap: etcd not on PATH; installing Debian package etcd-server" >&2
    _policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | _as_root tee /usr/sbin/policy-rc.d >/dev/null
        _as_root chmod 755 /usr/sbin/policy-rc.d
        _policy_added=1
    fi
    _as_root apt-get update -qq
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        etcd-server >/dev/null
    if [ -n "$_policy_added" ]; then _as_root rm -f /usr/sbin/policy-rc.d; fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        _as_root systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
    command -v etcd >/dev/null 2>&1 || { echo "bootstrap: etcd still not on PATH" >&2; exit 1; }
fi

# Reinstall only when the declared dependencies change.
_stamp="$VENV/.fairlock-deps"
_want="$(cat "$FAIRLOCK_ROOT/setup.cfg" "$FAIRLOCK_ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$FAIRLOCK_ROOT[test,plot,bench]"
    echo "$_want" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
