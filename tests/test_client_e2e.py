"""End to end: the Client, the Worker and the CLI against a real node
(``wheelsched serve`` in a subprocess, see node_helpers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from node_helpers import REPO, NodeProcess, running_node, wait_until

from wheelsched import errors
from wheelsched.client import Client, Delivery, PermanentFailure, Worker


@pytest.fixture
def queue() -> str:
    """A queue of its own per test: the module's node is shared."""
    return f"t-{uuid.uuid4().hex[:10]}"




class Collector:
    """A handler that records deliveries and optionally fails or sleeps."""

    def __init__(self, action: Callable[[Delivery], None] | None = None) -> None:
        self.seen: list[Delivery] = []
        self.lock = threading.Lock()
        self.action = action

    def __call__(self, d: Delivery) -> None:
        with self.lock:
            self.seen.append(d)
        if self.action is not None:
            self.action(d)

    def ids(self) -> list[str]:
        with self.lock:
            return [d.job_id for d in self.seen]


# ---------------------------------------------------------------- Client


def test_schedule_get_list_cancel(client: Client, queue: str) -> None:
    due = datetime.now(UTC) + timedelta(hours=1)
    one = client.schedule(queue, "hello", id=f"{queue}-one", due=due, priority=7, max_attempts=3,
                          lease_timeout=timedelta(seconds=45))  # fmt: skip
    assert one.state == "SCHEDULED" and one.id == f"{queue}-one" and one.queue == queue
    assert one.due == due.replace(microsecond=due.microsecond)  # microseconds survive
    assert one.next_fire_time == one.due
    assert one.priority == 7 and one.max_attempts == 3
    assert one.lease_timeout == timedelta(seconds=45)
    assert one.create_time is not None and one.payload == b""  # basic view

    got = client.get(one.id, full=True)
    assert got.payload == b"hello" and got.state == "SCHEDULED" and got.epoch >= 1

    many = client.schedule_many(
        [{"queue": queue, "id": f"{queue}-{i:02}", "delay": 3600} for i in range(25)], chunk=10
    )
    assert [j.id for j in many] == [f"{queue}-{i:02}" for i in range(25)]
    # The default (minimal) view: id, state, next fire time, shard, epoch; no spec echo.
    assert all(j.state == "SCHEDULED" and j.next_fire_time and j.epoch >= 1 for j in many)
    assert all(j.delay is None for j in many)
    again = client.schedule_many(
        [{"queue": queue, "id": f"{queue}-{i:02}", "delay": 3600} for i in range(25)], view="basic"
    )  # idempotent: the same jobs, now with their specs
    assert all(j.delay == timedelta(hours=1) and j.queue == queue for j in again)

    listed = [j.id for j in client.list(queue=queue, page_size=7)]
    assert sorted(listed) == sorted([one.id] + [j.id for j in many])
    assert len(listed) == len(set(listed)) == 26  # pagination: no duplicates, nothing missed

    for j in many[:3]:
        assert client.cancel(j.id).state == "CANCELLED"
    again = client.cancel(many[0].id)  # cancelling twice returns it unchanged
    assert again.state == "CANCELLED" and again.finish_time is not None
    cancelled = {j.id for j in client.list(queue=queue, states=["CANCELLED"], page_size=2)}
    assert cancelled == {j.id for j in many[:3]}
    scheduled = list(client.list(queue=queue, states="scheduled"))
    assert len(scheduled) == 23
    assert all(j.state == "SCHEDULED" for j in scheduled)
    assert list(client.list(queue=f"{queue}-nothing")) == []


def test_cron_job(client: Client, queue: str) -> None:
    job = client.schedule(queue, id=f"{queue}-cron", cron="0 9 * * *", tz="Europe/Paris", misfire="skip")
    assert (job.cron, job.tz, job.misfire) == ("0 9 * * *", "Europe/Paris", "skip")
    assert job.next_fire_time is not None and job.next_fire_time > datetime.now(UTC)
    paris = job.next_fire_time.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute) == (9, 0)


def test_error_mapping(client: Client, queue: str) -> None:
    job_id = f"{queue}-dup"
    first = client.schedule(queue, "a", id=job_id, delay=60)
    assert client.schedule(queue, "a", id=job_id, delay=60).id == first.id  # idempotent
    with pytest.raises(errors.AlreadyExists):
        client.schedule(queue, "b", id=job_id, delay=60)
    with pytest.raises(errors.NotFound):
        client.get(f"{queue}-missing")
    with pytest.raises(errors.NotFound):
        client.cancel(f"{queue}-missing")
    with pytest.raises(errors.InvalidArgument) as ei:
        client.schedule("no spaces allowed", delay=1)
    assert "queue" in ei.value.field
    with pytest.raises(errors.InvalidArgument) as ei:
        client.schedule(queue, cron="not a cron")
    assert "cron" in ei.value.field
    with pytest.raises(errors.InvalidArgument):
        client.schedule(queue, cron="* * * * *", tz="Mars/Olympus_Mons")
    with pytest.raises(errors.FailedPrecondition):
        client.requeue(job_id)  # only DEAD jobs
    with pytest.raises(errors.InvalidArgument):  # atomic batch: one bad job fails them all
        client.schedule_many([{"queue": queue, "id": f"{queue}-ok", "delay": 1},
                              {"queue": "bad queue", "delay": 1}])  # fmt: skip
    with pytest.raises(errors.NotFound):
        client.get(f"{queue}-ok")


def test_node_calls(client: Client) -> None:
    sm = client.shard_map()
    assert sm.shard_count == 4 and len(sm.shards) == 4
    assert all(s.owner_address and s.epoch >= 1 for s in sm.shards)
    st = client.status()
    assert st.serving and st.version and len(st.shards) == 4 and st.start_time is not None


# ---------------------------------------------------------------- Worker


def test_worker_runs_due_jobs_and_acks(client: Client, node: NodeProcess, queue: str) -> None:
    rec = Collector()
    ids = [f"{queue}-{i:03}" for i in range(60)]
    with Worker(node.target, [queue], rec, concurrency=4) as w:
        client.schedule_many([{"queue": queue, "id": i, "payload": i, "delay": 0.2} for i in ids])
        assert wait_until(lambda: w.succeeded == 60), (w.received, w.succeeded, w.ack_errors)
        assert wait_until(lambda: len(list(client.list(queue, states=["SUCCEEDED"]))) == 60)
    assert sorted(rec.ids()) == ids
    assert w.failed == 0 and w.ack_errors == 0 and w.received == 60
    d = rec.seen[0]
    assert d.payload == d.job_id.encode() and d.attempt == 1 and d.queue == queue
    assert d.due_time is not None and d.received_at >= d.due_time - timedelta(milliseconds=50)
    assert d.lease_deadline is not None and d.lease_deadline > d.due_time
    job = client.get(d.job_id)
    assert job.state == "SUCCEEDED" and job.finish_time is not None and d.epoch == job.epoch


class CountingWorker(Worker):
    """Counts the requests the worker's stream sends and the acks in them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests_sent = 0
        self.acks_sent = 0

        self.dispatch_messages = 0

    def _requests(self, gen):  # type: ignore[override]
        for req in super()._requests(gen):
            self.requests_sent += 1
            self.acks_sent += len(req.acks)
            yield req

    def _on_dispatches(self, dispatches) -> None:  # type: ignore[override]
        self.dispatch_messages += 1
        super()._on_dispatches(dispatches)


def test_worker_batches_acks_under_load_and_sends_a_lone_ack_at_once(
        client: Client, node: NodeProcess, queue: str) -> None:
    rec = Collector()
    n = 3000
    with CountingWorker(node.target, [queue], rec, concurrency=4, max_in_flight=2000) as w:
        # a lone job: its ack is not held back waiting for company
        client.schedule(queue, id=f"{queue}-lone", delay=0.0)
        assert wait_until(lambda: w.succeeded == 1)
        sent_at = time.monotonic()
        assert wait_until(lambda: len(list(client.list(queue, states=["SUCCEEDED"]))) == 1, 2.0)
        assert time.monotonic() - sent_at < 1.0
        # a steady stream (5,000 jobs/s, one every 0.2 ms): acks share requests
        before = w.requests_sent
        start = time.time() + 0.5
        client.schedule_many([{"queue": queue, "id": f"{queue}-{i:05}", "due": start + i / 5000}
                              for i in range(n)])
        assert wait_until(lambda: w.succeeded == n + 1, 60), (w.received, w.succeeded, w.ack_errors)
    assert w.acks_sent == n + 1 and w.ack_errors == 0
    stream_requests = w.requests_sent - before
    assert stream_requests <= n / 5, f"{stream_requests} requests carried {n} acks"


def test_node_coalesces_dispatches_on_a_busy_stream(client: Client, node: NodeProcess, queue: str) -> None:
    """At most one dispatch message per ms while the stream is busy (the
    node's _STREAM_MIN_GAP_S), so a worker is not buried in tiny messages."""
    rec = Collector()
    n, rate = 3000, 5000
    with CountingWorker(node.target, [queue], rec, concurrency=4, max_in_flight=2000) as w:
        start = time.time() + 0.5
        client.schedule_many([{"queue": queue, "id": f"{queue}-{i:05}", "due": start + i / rate}
                              for i in range(n)])
        assert wait_until(lambda: w.succeeded == n, 60), (w.received, w.succeeded, w.ack_errors)
        first = min(d.received_at for d in rec.seen).timestamp()
        last = max(d.received_at for d in rec.seen).timestamp()
    # one per ms over the span they came in, plus the first
    assert w.dispatch_messages <= (last - first) * 1000 + 2, (w.dispatch_messages, last - first)
    assert w.dispatch_messages >= 10  # spread over the span, not held back to the end
    assert w.ack_errors == 0 and sorted(rec.ids()) == [f"{queue}-{i:05}" for i in range(n)]
    # and the node runs with grpc.aio's completion wake-ups patched (aio_poller)
    assert "wake-ups not found" not in node.log_text()


def test_failing_handler_retries_then_dead(client: Client, node: NodeProcess, queue: str) -> None:
    healthy = threading.Event()

    def action(d: Delivery) -> None:
        if d.job_id.endswith("perm"):
            raise PermanentFailure("bad input")
        if not healthy.is_set():
            raise RuntimeError(f"boom {d.attempt}")

    rec = Collector(action)
    with Worker(node.target, queue, rec) as w:
        job = client.schedule(queue, id=f"{queue}-retry", delay=0, max_attempts=3,
                              min_backoff=0.05, max_backoff=0.1, jitter=0)  # fmt: skip
        client.schedule(queue, id=f"{queue}-perm", delay=0, max_attempts=5)
        assert wait_until(lambda: client.get(job.id).state == "DEAD")
        assert wait_until(lambda: client.get(f"{queue}-perm").state == "DEAD")
        dead = client.get(job.id)
        assert [d.attempt for d in rec.seen if d.job_id == job.id] == [1, 2, 3]
        assert dead.attempt == 3 and dead.last_error == "RuntimeError('boom 3')"
        perm = client.get(f"{queue}-perm")
        assert perm.attempt == 1 and "PermanentFailure('bad input')" in perm.last_error
        assert w.failed == 4

        healthy.set()
        assert client.requeue(job.id).state == "SCHEDULED"
        assert wait_until(lambda: client.get(job.id).state == "SUCCEEDED")
    assert w.ack_errors == 0 and w.succeeded == 1


def test_long_handler_keeps_its_lease(client: Client, node: NodeProcess, queue: str) -> None:
    rec = Collector(lambda d: time.sleep(2.2))
    with Worker(node.target, queue, rec) as w:
        job = client.schedule(queue, id=f"{queue}-slow", delay=0, lease_timeout=1.0)
        assert wait_until(lambda: client.get(job.id).state == "SUCCEEDED")
    assert rec.ids() == [job.id]  # never re-delivered
    assert w.extended >= 2 and w.extension_errors == 0 and w.ack_errors == 0


def test_stop_is_prompt_and_clean(client: Client, node: NodeProcess, queue: str) -> None:
    w = Worker(node.target, queue, Collector(lambda d: time.sleep(0.3))).start()
    client.schedule(queue, id=f"{queue}-a", delay=0)
    assert wait_until(lambda: w.received == 1)
    t0 = time.monotonic()
    w.stop(timeout=10)
    assert time.monotonic() - t0 < 3
    assert w.succeeded == 1 and w.ack_errors == 0
    assert client.get(f"{queue}-a").state == "SUCCEEDED"


def test_worker_survives_node_crash(tmp_path: Path) -> None:
    """SIGKILL the node under a running Worker: it reconnects to the
    restarted node, the job it held is re-delivered under the new epoch (its
    old ack is refused), and new jobs flow."""
    release = threading.Event()

    def action(d: Delivery) -> None:
        if d.job_id == "held" and d.attempt == 1 and d.epoch == 1:
            release.wait(20)

    rec = Collector(action)
    with running_node(tmp_path, fsync="always", shards=2) as node:
        with Client(node.target) as c:
            c.schedule("crash", id="held", delay=0, lease_timeout=30)
        w = Worker(node.target, "crash", rec, reconnect_initial=0.05, reconnect_max=0.5).start()
        try:
            assert wait_until(lambda: "held" in rec.ids())
            node.kill()
            release.set()  # its ack now has nowhere to go but the next stream
            node.start()
            with Client(node.target) as c:
                c.schedule("crash", id="after", delay=0)
                assert wait_until(lambda: c.get("after").state == "SUCCEEDED")
                assert wait_until(lambda: c.get("held").state == "SUCCEEDED")
                held = c.get("held")
            assert held.epoch > 1
            epochs = [d.epoch for d in rec.seen if d.job_id == "held"]
            assert epochs[0] == 1 and epochs[-1] == held.epoch
            assert w.reconnects >= 1
            assert wait_until(lambda: w.ack_errors >= 1)  # the stale-epoch ack, refused
        finally:
            w.stop(timeout=10)
        assert w.error is None


def test_worker_survives_graceful_restart(tmp_path: Path) -> None:
    rec = Collector()
    with running_node(tmp_path, fsync="never", shards=2, drain_seconds=1) as node:
        w = Worker(node.target, "grace", rec, reconnect_initial=0.05, reconnect_max=0.5).start()
        try:
            with Client(node.target) as c:
                c.schedule("grace", id="g1", delay=0)
                assert wait_until(lambda: w.succeeded == 1)
            assert node.terminate() == 0
            node.start()
            with Client(node.target) as c:
                c.schedule("grace", id="g2", delay=0)
                assert wait_until(lambda: w.succeeded == 2)
                assert c.get("g1").state == "SUCCEEDED"
        finally:
            w.stop(timeout=10)
    assert sorted(rec.ids()) == ["g1", "g2"]
    # g1's ack may have been applied with its confirmation lost in the
    # shutdown; the resent copy is then refused. Nothing else may be.
    assert w.ack_errors <= w.acks_resent


# ---------------------------------------------------------------- CLI


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WHEELSCHED_TARGET": node.target}
    return subprocess.run([sys.executable, "-m", "wheelsched", "jobs", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_cli(node: NodeProcess, queue: str, tmp_path: Path) -> None:
    payload = tmp_path / "payload.json"
    payload.write_text('{"to": "a@example.com"}')
    r = cli(node, "schedule", "--queue", queue, "--id", f"{queue}-1", "--payload", f"@{payload}",
            "--due", "2099-01-01T09:00:00Z", "--priority", "2", "--max-attempts", "4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "id:" in r.stdout and f"{queue}-1" in r.stdout and "SCHEDULED" in r.stdout
    assert "2099-01-01T09:00:00.000Z" in r.stdout

    r = cli(node, "schedule", "-q", queue, "--id", f"{queue}-2", "--cron", "*/5 * * * *",
            "--tz", "Asia/Tokyo", "--misfire", "fire_all", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["cron"] == "*/5 * * * *" and data["tz"] == "Asia/Tokyo" and data["misfire"] == "fire_all"

    r = cli(node, "get", f"{queue}-1", "--full", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["payload"] == '{"to": "a@example.com"}' and data["priority"] == 2
    assert data["due"] == "2099-01-01T09:00:00Z" and data["max_attempts"] == 4

    r = cli(node, "list", "--queue", queue)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ID") and "(2 jobs)" in lines[-1]
    assert any(f"{queue}-2" in ln and "cron */5 * * * * Asia/Tokyo" in ln for ln in lines)

    r = cli(node, "cancel", f"{queue}-2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "CANCELLED"
    r = cli(node, "list", "-q", queue, "--state", "CANCELLED", "--state", "DEAD", "--json")
    assert [j["id"] for j in json.loads(r.stdout)] == [f"{queue}-2"]
    r = cli(node, "list", "-q", queue, "--limit", "1", "--json")
    assert len(json.loads(r.stdout)) == 1

    r = cli(node, "schedule", "-q", queue, "--id", f"{queue}-d", "--delay", "0", "--max-attempts", "1")
    assert r.returncode == 0, r.stderr

    def handler(d: Delivery) -> None:
        raise PermanentFailure("nope")

    with Worker(node.target, queue, handler), Client(node.target) as c:
        assert wait_until(lambda: c.get(f"{queue}-d").state == "DEAD")
    r = cli(node, "requeue", f"{queue}-d")
    assert r.returncode == 0 and "SCHEDULED" in r.stdout


def test_cli_errors(node: NodeProcess, queue: str) -> None:
    r = cli(node, "get", f"{queue}-missing")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: NOT_FOUND: ")
    r = cli(node, "schedule", "-q", "bad queue", "--delay", "1")
    assert r.returncode == 2 and r.stderr.startswith("error: INVALID_ARGUMENT: ")
    r = cli(node, "schedule", "-q", queue, "--cron", "61 * * * *")
    assert r.returncode == 2 and r.stderr.startswith("error: INVALID_ARGUMENT: ")
    r = cli(node, "schedule", "-q", queue)
    assert r.returncode == 2 and "exactly one of due, delay or cron" in r.stderr
    assert cli(node, "schedule", "-q", queue, "--id", f"{queue}-x", "--delay", "60").returncode == 0
    r = cli(node, "schedule", "-q", queue, "--id", f"{queue}-x", "--delay", "61")
    assert r.returncode == 1 and r.stderr.startswith("error: ALREADY_EXISTS: ")
    r = cli(node, "get", "x", "--target", "127.0.0.1:1", "--timeout", "10")  # retries ~3 s
    assert r.returncode == 1 and r.stderr.startswith("error: UNAVAILABLE: ")


def test_schedule_many_partial_failure_says_what_was_scheduled(client: Client, queue: str) -> None:
    # Chunk 1 is accepted; chunk 2 collides with an existing job (a server-side
    # ALREADY_EXISTS): the error tells which jobs were durably scheduled.
    client.schedule(queue, id=f"{queue}-p3", delay=60, payload=b"original")
    specs = [{"queue": queue, "id": f"{queue}-p{i}", "delay": 60} for i in range(5)]
    with pytest.raises(errors.AlreadyExists) as ei:
        client.schedule_many(specs, chunk=2)
    assert [j.id for j in ei.value.scheduled] == [f"{queue}-p0", f"{queue}-p1"]  # type: ignore[attr-defined]
    with pytest.raises(errors.NotFound):
        client.get(f"{queue}-p2")  # chunk 2 was rejected whole
