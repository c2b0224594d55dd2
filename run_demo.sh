#!/usr/bin/env bash
# The main demo: a migration waiting for a lock while event handlers keep taking it,
# under oslo.concurrency's lock and under fairlock. Sets up .venv by itself.
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh
exec python examples/fair_vs_unfair.py "$@"
