#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up .venv by itself, then runs pytest.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k core -x).
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh
exec python -m pytest "$@"
