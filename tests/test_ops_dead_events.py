"""Issue #7: dead jobs are logged as one aggregated line per interval, not one per job."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from node_helpers import running_node
from test_ops_metrics import wait_until

from wheelsched.client import Client, Worker
from wheelsched.engine import AckItem, Engine, EngineConfig, JobRequest
from wheelsched.engine.memlog import MemoryLog
from wheelsched.wheel import TimingWheel


def test_take_dead_counts_and_resets() -> None:
    now = [1_800_000_000_000_000]
    engine = Engine(EngineConfig(shard_count=2), clock=lambda: now[0], open_log=lambda i: MemoryLog(),
                    wheel_factory=TimingWheel)
    engine.recover()
    assert engine.take_dead() == (0, [])
    engine.schedule([JobRequest(queue="d", id=f"d{i}", due_us=now[0] + 1000, max_attempts=1)
                     for i in range(10)])
    got: list = []
    engine.subscribe(["d"], 100, got.extend)
    now[0] += 2000
    engine.tick()
    engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, False, "boom") for d in got])
    n, examples = engine.take_dead()
    assert n == 10 and len(examples) == 3 and set(examples) <= {f"d{i}" for i in range(10)}
    assert engine.take_dead() == (0, [])


def test_dead_jobs_logged_once_per_interval(tmp_path: Path) -> None:
    queue = f"dead-{uuid.uuid4().hex[:6]}"
    n = 40

    def fail(d) -> None:
        raise RuntimeError("boom")

    with running_node(tmp_path, fsync="never", shards=2, log_format="json", event_log_seconds=0.3) as node:
        with Client(node.target) as client:
            client.schedule_many([{"queue": queue, "id": f"{queue}-{i}", "delay": 0.05, "max_attempts": 1}
                                  for i in range(n)])
            with Worker(node.target, [queue], fail, concurrency=8):
                assert wait_until(lambda: all(j.state == "DEAD" for j in client.list(queue=queue)))

        def events() -> list[dict]:
            lines = [json.loads(line) for line in node.log_text().splitlines() if line.startswith("{")]
            return [e for e in lines if e.get("event") == "jobs_dead"]

        assert wait_until(lambda: sum(e["count"] for e in events()) == n)
        lines = events()
        assert len(lines) < n / 4  # aggregated, not one line per job
        for e in lines:
            assert e["level"] == "WARNING"
            assert e["msg"].startswith(f"{e['count']} jobs dead in the last 0.3 s, e.g. {queue}-")
            assert 1 <= len(e["examples"]) <= 3
            assert all(x.startswith(f"{queue}-") for x in e["examples"])
