#!/usr/bin/env bash
# Install, then run the main job: a standalone node with a demo client and
# worker (`wheelsched demo`). `scripts/run.sh bench [ARGS]` runs the
# fire-latency benchmark instead (--quick unless ARGS say otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

if [ "${1:-}" = "bench" ]; then
  shift
  exec .venv/bin/python -m bench.fire_latency "${@:---quick}"
fi
exec .venv/bin/wheelsched demo "$@"
