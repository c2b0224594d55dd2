#!/usr/bin/env bash
# The main demo: nova's 16-vif live migration waiting on refresh_cache-<uuid>, in two regimes:
# 2017 (eventlet, full refreshes: oslo's default lock times out, any FIFO lock fixes it) and today
# (nova 34: native threads, the 64-thread RPC pool, port-scoped refreshes, a sustained storm: oslo
# fair=True and fairlock FIFO time out too, fairlock's migration lane does not). About 20 s.
# Sets up .venv by itself. Extra arguments go to the example (see --help), e.g.
# ./run_demo.sh --plot timeline.png
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh
exec python examples/nova_16vif_timeout.py "$@"
