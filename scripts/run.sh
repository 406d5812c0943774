#!/usr/bin/env bash
# Install, then run the main job. Arguments go to the job.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh

exec .venv/bin/python -m bench.wheel --quick "$@"
