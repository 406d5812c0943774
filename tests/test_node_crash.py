"""End to end with real processes: a node is SIGKILLed at random moments
while a client schedules and cancels thousands of jobs and a worker takes
them; after every restart nothing acknowledged is lost.

Checked at the end:
- every acknowledged schedule exists with its spec (queue, payload);
- every acknowledged cancel is still CANCELLED, and no cancelled job was
  delivered after its cancel was acknowledged;
- every acknowledged, non-cancelled job was delivered at least once, never
  before its due time, and ends SUCCEEDED.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

import pytest
from node_helpers import running_node

from wheelsched.client import Client, Worker
from wheelsched.errors import WheelschedError


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: dict[str, list] = {}

    def __call__(self, d) -> None:
        with self.lock:
            self.deliveries.setdefault(d.job_id, []).append(d)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(20261122)
    acked: dict[str, tuple[float, bytes]] = {}  # id -> (due unix s, payload)
    cancelled: dict[str, float] = {}  # id -> when the cancel was acknowledged
    # cancels that failed (the node died): durable or not, the reply was lost
    unknown_cancels: set[str] = set()
    recorder = Recorder()
    with running_node(tmp_path, fsync="always", shards=4, snapshot_every=500) as node:
        worker = Worker(node.target, ["crash"], recorder, concurrency=8, max_in_flight=64,
                        reconnect_initial=0.05, reconnect_max=0.3)
        worker.start()
        client = Client(node.target, timeout=5.0)
        stop = threading.Event()
        errors_seen = []

        def load() -> None:
            n = 0
            while not stop.is_set():
                batch = []
                now = time.time()
                for _ in range(rng.randint(1, 40)):
                    n += 1
                    job_id = f"job-{n}"
                    payload = f"payload-{n}".encode()
                    due = now + rng.uniform(0.0, 4.0)
                    batch.append({"queue": "crash", "id": job_id, "payload": payload, "due": due,
                                  "lease_timeout": 5.0})
                try:
                    jobs = client.schedule_many(batch)
                except WheelschedError as exc:  # the node stayed down too long: not acknowledged
                    errors_seen.append(exc)
                    time.sleep(0.02)
                    continue
                for spec, job in zip(batch, jobs, strict=True):
                    assert job.id == spec["id"]
                    acked[spec["id"]] = (spec["due"], spec["payload"])
                # Cancel a few of the jobs due latest (not delivered yet).
                for spec in sorted(batch, key=lambda s: -s["due"])[: rng.randint(0, 3)]:
                    if spec["due"] - time.time() < 1.5:
                        continue
                    try:
                        client.cancel(spec["id"])
                        cancelled[spec["id"]] = time.time()
                    except WheelschedError as exc:
                        errors_seen.append(exc)
                        unknown_cancels.add(spec["id"])

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        for _ in range(6):
            time.sleep(rng.uniform(0.3, 1.2))
            node.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            node.restart()
        time.sleep(0.5)
        stop.set()
        loader.join(timeout=30)
        assert not loader.is_alive()

        # Let everything due fire and be acked.
        deadline = time.time() + 60
        last_due = max(d for d, _ in acked.values())
        while time.time() < deadline:
            done = all(j in recorder.deliveries for j in acked
                       if j not in cancelled and j not in unknown_cancels)
            if done and time.time() > last_due + 1:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # acks of the last deliveries
        worker.stop(timeout=10)

        assert len(acked) > 1000, f"only {len(acked)} schedules acknowledged"
        assert node.starts == 7
        stored = {}
        for job_id in acked:
            stored[job_id] = client.get(job_id, full=True)
        for job_id, (due, payload) in acked.items():
            job = stored[job_id]
            assert job.queue == "crash" and job.payload == payload, job_id
            if job_id in cancelled:
                assert job.state == "CANCELLED", (job_id, job.state)
                late = [d for d in recorder.deliveries.get(job_id, [])
                        if d.received_at.timestamp() > cancelled[job_id]]
                assert not late, f"{job_id} delivered after its cancel was acknowledged"
                continue
            if job_id in unknown_cancels and job.state == "CANCELLED":
                continue  # the cancel was made durable before the node died, its reply lost
            got = recorder.deliveries.get(job_id)
            assert got, f"acknowledged job {job_id} was never delivered: {job}"
            first = min(d.received_at for d in got)
            assert first >= datetime.fromtimestamp(due, UTC).replace(microsecond=0), job_id
            assert all(d.received_at.timestamp() >= due - 0.001 for d in got), f"{job_id} fired early"
        succeeded = sum(1 for j, job in stored.items() if job.state == "SUCCEEDED")
        assert succeeded == sum(1 for job in stored.values() if job.state != "CANCELLED")
        assert all(stored[j].state == "CANCELLED" for j in cancelled)
        client.close()
