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

# Reinstall only when the declared dependencies change.
_stamp="$VENV/.fairlock-deps"
_want="$(cat "$FAIRLOCK_ROOT/setup.cfg" "$FAIRLOCK_ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$FAIRLOCK_ROOT[test,plot]"
    echo "$_want" > "$_stamp"
fi
export PATH="$VENV/bin:$PATH"
