"""Issue #7: per-queue job counters (``wheelsched_queue_jobs_*_total{queue}``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from node_helpers import running_node
from test_ops_metrics import metrics_url, scrape, total, wait_until

from wheelsched.client import Client, Worker
from wheelsched.engine import Engine, EngineConfig, JobRequest
from wheelsched.engine.engine import MAX_QUEUE_SERIES, OTHER_QUEUE, QUEUE_COUNTERS
from wheelsched.engine.memlog import MemoryLog
from wheelsched.wheel import TimingWheel


def test_queue_counters_per_queue(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    ok_q, bad_q, cancel_q = f"ok-{tag}", f"bad-{tag}", f"cancel-{tag}"

    def handler(d) -> None:
        if d.queue == bad_q:
            raise RuntimeError("boom")

    with running_node(tmp_path, fsync="never", shards=2, metrics="127.0.0.1:0") as node:
        url = metrics_url(node)
        with Client(node.target) as client:
            client.schedule_many([{"queue": ok_q, "id": f"{ok_q}-{i}", "delay": 0.05} for i in range(5)])
            for i in range(3):
                client.schedule(queue=bad_q, id=f"{bad_q}-{i}", delay=0.05, max_attempts=2,
                                min_backoff=0.05, max_backoff=0.1, jitter=0)
            for i in range(2):
                client.schedule(queue=cancel_q, id=f"{cancel_q}-{i}", delay=3600)
                client.cancel(f"{cancel_q}-{i}")
            with Worker(node.target, [ok_q, bad_q], handler, concurrency=4):
                assert wait_until(lambda: all(client.get(f"{bad_q}-{i}").state == "DEAD" for i in range(3)))
                assert wait_until(lambda: total(scrape(url), "wheelsched_queue_jobs_succeeded_total",
                                                queue=ok_q) == 5)
        s = scrape(url)

    def q(name: str, queue: str) -> float:
        return total(s, f"wheelsched_queue_jobs_{name}_total", queue=queue)

    assert [q(n, ok_q) for n in QUEUE_COUNTERS] == [5, 5, 5, 5, 0, 0, 0, 0]
    # two attempts each: fired and dispatched twice, failed twice, retried once, then dead
    assert [q(n, bad_q) for n in QUEUE_COUNTERS] == [3, 6, 6, 0, 6, 3, 3, 0]
    assert [q(n, cancel_q) for n in QUEUE_COUNTERS] == [2, 0, 0, 0, 0, 0, 0, 2]
    # the per-queue series add up to the node-wide counters
    for name in QUEUE_COUNTERS:
        assert total(s, f"wheelsched_queue_jobs_{name}_total") == total(s, f"wheelsched_jobs_{name}_total")


def test_queue_counters_cap_distinct_queues() -> None:
    now = [1_800_000_000_000_000]
    engine = Engine(EngineConfig(shard_count=2), clock=lambda: now[0], open_log=lambda i: MemoryLog(),
                    wheel_factory=TimingWheel)
    engine.recover()
    n = MAX_QUEUE_SERIES + 50
    engine.schedule([JobRequest(queue=f"q{i}", id=f"j{i}", due_us=now[0] + 10**9) for i in range(n)])
    rows = engine.queue_counters
    assert len(rows) == MAX_QUEUE_SERIES + 1
    assert rows[OTHER_QUEUE][0] == 50
    assert sum(r[0] for r in rows.values()) == n == engine.counters["scheduled"]
