"""``wheelsched bench NAME [ARGS]``: run a benchmark from ``bench/``.

The benchmarks live beside the package in a source checkout (they are not
installed); this runs ``python -m bench.<name>`` from there.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = {
    "fire-latency": "fire_latency",
    "crash-replay": "crash_replay",
    "failover": "failover",
    "dag": "dag",
    "schedule": "schedule",
    "engine-cycle": "engine_cycle",
    "wheel": "wheel",
    "wal": "wal",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark (source checkout only)", description=__doc__)
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark (e.g. --quick)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / f"{BENCHMARKS[args.name]}.py").exists():
        print(f"error: bench/ not found next to {root / 'wheelsched'}: benchmarks run from a source "
              "checkout", file=sys.stderr)
        return 2
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", f"bench.{BENCHMARKS[args.name]}", *args.args]
    return subprocess.run(cmd, cwd=root, env=env).returncode
