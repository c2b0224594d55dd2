#!/usr/bin/env bash
# The main demo: nova's 16-vif live migration timing out on oslo.concurrency's lock, and not on
# fairlock's (native threads and eventlet, about 20 s). Sets up .venv by itself.
# Extra arguments go to the example (see --help), e.g. ./run_demo.sh --plot timeline.png
set -euo pipefail
cd "$(dirname "$0")"
source tools/bootstrap.sh
exec python examples/nova_16vif_timeout.py "$@"
