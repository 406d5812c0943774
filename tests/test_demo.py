"""The README's main job runs and checks its own claims (exit 0 only if every
job fired, the cancelled one did not, retries and priorities behaved, and
nothing acknowledged was lost to a SIGKILL)."""

import subprocess
import sys


def test_demo_runs_end_to_end():
    proc = subprocess.run([sys.executable, "-m", "wheelsched", "demo", "--jobs", "300"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo OK" in proc.stdout
    assert "300/300" in proc.stdout and "500/500 delivered" in proc.stdout
