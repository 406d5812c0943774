#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite: lint, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k wal -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bootstrap.sh
bash scripts/ensure_etcd.sh  # the cluster tests start real etcd servers

.venv/bin/ruff check wheelsched tests bench setup.py
.venv/bin/python -m pytest "$@"
