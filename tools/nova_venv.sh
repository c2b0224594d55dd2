#!/usr/bin/env bash
# Make a virtualenv with nova 34.0.0 from PyPI, what nova's unit tests import, and fairlock
# installed editable from this checkout; print the venv's python. Run it (or source it) from
# anywhere; it is idempotent: it reinstalls only when the pins below or fairlock's declared
# dependencies change (stamp file in the venv).
#
#   NOVA_VENV=/path/to/venv tools/nova_venv.sh     # default: <repo>/.venv-nova
#
# The test packages are nova's test-requirements.txt (nova master, which 34.0.0 branched from)
# minus the linters and coverage tools no unit test imports (hacking, coverage, bandit).
# Nova's own tests run with unittest/stestr, not pytest: see tools/nova_unit.py.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${NOVA_VENV:-$_root/.venv-nova}"
_py="$_venv/bin/python"

_pins=(
    "nova==34.0.0"
    "ddt>=1.2.1"
    "fixtures>=3.0.0"
    "psycopg2-binary>=2.8"
    "PyMySQL>=0.8.0"
    "python-barbicanclient>=4.5.2"
    "requests-mock>=1.2.0"
    "oslotest>=3.8.0"
    "stestr>=2.0.0"
    "osprofiler>=1.4.0"
    "testresources>=2.0.0"
    "testscenarios>=0.4"
    "testtools>=2.5.0"
    "wsgi-intercept>=1.7.0"
)

if [ ! -x "$_py" ]; then
    python3 -m venv "$_venv" >&2
fi

_stamp="$_venv/.fairlock-nova-deps"
_want="$( (printf '%s\n' "${_pins[@]}"; cat "$_root/setup.cfg" "$_root/pyproject.toml") \
    | sha256sum | cut -c1-16)"
if [ "$(cat "$_stamp" 2>/dev/null || true)" != "$_want" ]; then
    echo "nova_venv: installing nova 34.0.0 and its test requirements into $_venv" >&2
    _log="$_venv/.fairlock-nova-install.log"
    {
        "$_py" -m pip install -q --upgrade pip &&
        "$_py" -m pip install -q "${_pins[@]}" &&
        "$_py" -m pip install -q -e "$_root"
    } >"$_log" 2>&1 || {
        grep -v "^WARNING: Location" "$_log" | tail -20 >&2
        echo "nova_venv: pip failed; full log in $_log" >&2; exit 1; }
    "$_py" -c "import nova.tests.unit.test_utils, fairlock.lockutils" >/dev/null 2>&1 || {
        echo "nova_venv: nova's unit tests do not import in $_venv" >&2; exit 1; }
    echo "$_want" > "$_stamp"
fi
echo "$_py"
