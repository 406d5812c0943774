#!/usr/bin/env bash
# Make .venv hold wheelsched (editable, C extension built, protos generated)
# and its dev dependencies. Safe to run again: it reinstalls only when a build
# input changed since the last install. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi

# Everything that changes what `pip install -e .` produces.
stamp_inputs() {
  cat pyproject.toml setup.py
  find csrc proto wheelsched -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.proto' \
    | LC_ALL=C sort | xargs -r cat
  echo "pure=${WHEELSCHED_PURE_PYTHON:-}"
}
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
have=$(cat "$VENV/.wheelsched-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "bootstrap: installing wheelsched and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cython grpcio-tools
  # --no-build-isolation: build with the venv's Cython and grpcio-tools
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[dev,bench]'
  echo "$want" > "$VENV/.wheelsched-stamp"
fi
