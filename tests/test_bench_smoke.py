"""The benchmarks at their smallest sizes: they run, write the JSON they
promise, and fire every job once and never early. Correctness, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_bench(module: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", "--smoke", "--json", str(out), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_schedule_bench_smoke(tmp_path: Path) -> None:
    data = run_bench("schedule", tmp_path)
    assert data["bench"] == "schedule"
    cases = {"echo_1", "schedule_1", "echo_32t", "schedule_32t", "echo_32a", "schedule_32a",
             "echo_batch_1", "schedule_many_1", "echo_batch_4t", "schedule_many_4t"}
    assert set(data["results"]) == cases
    for name, r in data["results"].items():
        assert r["rate"] > 0, name
        assert {"min", "max", "rates", "server_cpu_us"} <= set(r), name
    assert data["pending_at_end"] > 0
    assert len(data["targets"]) == 4


def test_fire_latency_bench_smoke(tmp_path: Path) -> None:
    modes = ["engine", "grpc", "asyncio", "heapq", "floor"]
    try:
        import apscheduler  # noqa: F401

        modes.append("apscheduler")
    except ImportError:
        pass
    plot = tmp_path / "cdf.png"
    data = run_bench("fire_latency", tmp_path, "--modes", ",".join(modes), "--plot", str(plot))
    assert data["bench"] == "fire_latency"
    assert set(data["modes"]) == set(modes)
    for mode, r in data["modes"].items():
        for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "early", "lost", "count",
                    "achieved_rate"):
            assert key in r, (mode, key)
        assert r["early"] == 0, mode
        assert r["lost"] == 0, mode
        assert r["duplicates"] == 0, mode
        assert r["count"] == r["expected"], mode
        # the measured window (wall clock), and the VM's steal over it where /proc/stat has it
        start, end = r["window_wall_ns"]
        assert 0 < start < end, mode
        steal = r["steal_ms"]
        assert steal is None or steal >= 0, mode
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert plot.stat().st_size > 0


def test_steal_sampler_windows() -> None:
    """Steal within a window: from the last sample at or before its start to
    the first at or after its end, in ms of clock ticks; None if uncovered."""
    from bench._common import StealSampler

    s = StealSampler()
    tick_ms = s._tick_ms
    s._samples = [(100, 5), (200, 7), (300, 7), (400, 12)]
    assert s.steal_ms(100, 400) == 7 * tick_ms
    assert s.steal_ms(150, 250) == 2 * tick_ms  # samples 100 .. 300
    assert s.steal_ms(200, 300) == 0
    assert s.steal_ms(50, 300) is None and s.steal_ms(100, 401) is None
    with StealSampler(0.001) as live:  # a real run samples while the block runs
        time.sleep(0.02)
    if StealSampler.read() is None:
        assert live._samples == []
    else:
        assert len(live._samples) >= 2
        first, last = live._samples[0], live._samples[-1]
        assert live.steal_ms(first[0], last[0]) >= 0


def test_crash_replay_bench_smoke(tmp_path: Path) -> None:
    data = run_bench("crash_replay", tmp_path)
    res = data["result"]
    assert res["acked"] > 0 and res["cancelled"] > 0
    assert res["acked_before_kill"] <= res["acked"]
    for key in ("lost", "wrong_spec", "bad_payload_in_sample", "resurrected_cancels", "never_fired",
                "fired_cancelled"):
        assert res[key] == 0, (key, res["examples"])
    assert res["restart_to_serving_s"] > 0 and res["replayed_records"] > 0


def test_engine_cycle_bench_smoke(tmp_path: Path) -> None:
    data = run_bench("engine_cycle", tmp_path)
    for kind in ("memory", "wal"):
        r = data["results"][kind]
        assert r["fire_dispatch_us"] > 0 and r["ack_us"] > 0 and r["sustainable_per_s"] > 0


@pytest.mark.parametrize("what", ["memory", "wal", "spaced", "tens", "worker", "heapq"])
def test_engine_cycle_counted_flows_run(what: str) -> None:
    """The flows ``--instructions`` runs under callgrind, run plainly: each
    step of the engine's flow fires, dispatches and acks its 1,000 jobs, and the
    worker's flow ends with every job acked and confirmed."""
    proc = subprocess.run([sys.executable, "-m", "bench.engine_cycle", "--child", what, "3000", "4000"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_dag_bench_smoke(tmp_path: Path) -> None:
    data = run_bench("dag", tmp_path)
    assert data["bench"] == "dag"
    for mode in ("one_shard", "across_shards", "chained"):
        r = data["latency"][mode]
        assert r["count"] == data["pairs"] and r["p50_ms"] > 0, mode
    for case in ("dag", "independent"):
        r = data["throughput"][case]
        assert r["dispatched"] == r["jobs"] and r["jobs_per_s"] > 0, case
    assert set(data["targets"]) == {"one_shard", "across_shards"}


@pytest.mark.parametrize("how", ["gather", "wait_all"])
def test_wal_bench_multi_log_waits_run(tmp_path: Path, how: str) -> None:
    """bench.wal's case of one wait across many logs finishes every batch
    (both ways of waiting) and reports a cost per wait."""
    from bench.wal import multi_log_waits

    assert multi_log_waits(tmp_path, how, 200) > 0
    assert not list(tmp_path.iterdir())  # it cleans up after itself
