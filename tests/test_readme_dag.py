"""The README's DAG example runs as written, against a real node."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from node_helpers import REPO, running_node


def readme_dag_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- dag-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its DAG example"
    return match.group(1)


def test_readme_dag_example_runs(tmp_path):
    code = readme_dag_example()
    with running_node(tmp_path, fsync="never", shards=4) as node:
        env = {**os.environ, "WHEELSCHED_TARGET": node.target}
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, second = proc.stdout.splitlines()[-2:]
    assert first.startswith("WAITING") and "clean" in first and "enrich" in first
    assert second.startswith("extract -> ") and second.endswith(" -> load")
