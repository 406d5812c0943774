"""The Client, Worker and CLI against a scripted in-process node (fake_node).

These pin the client's own behaviour (request shapes, pagination, chunking,
error mapping, ack batching, lease extension, reconnect, drain) whatever the
real engine does; test_client_e2e.py runs the same paths against the server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from fake_node import FakeNodeServer, make_dispatch

from wheelsched import errors
from wheelsched.cli import main as cli_main
from wheelsched.client import Client, Delivery, JobSpec, PermanentFailure, Worker
from wheelsched.v1 import job_pb2


@pytest.fixture
def node() -> Iterator[FakeNodeServer]:
    server = FakeNodeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(node: FakeNodeServer) -> Iterator[Client]:
    with Client(node.target, timeout=5) as c:
        yield c


def wait_until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------- Client


class TestClient:
    def test_schedule_sends_the_spec(self, client: Client, node: FakeNodeServer) -> None:
        job = client.schedule("emails", "hi", id="a", delay=90, priority=3, max_attempts=2)
        assert (job.id, job.queue, job.state, job.shard, job.epoch) == ("a", "emails", "SCHEDULED", 3, 7)
        assert job.payload == b""  # basic view
        req = node.scheduler.schedule_requests[-1]
        assert req.job.schedule.delay.seconds == 90 and req.job.priority == 3
        assert req.job.retry_policy.max_attempts == 2 and req.job.payload == b"hi"
        assert req.view == job_pb2.BASIC
        full = client.schedule("emails", "hi", id="a", delay=90, view="full")
        assert full.payload == b"hi"

    def test_bad_spec_fails_before_any_rpc(self, client: Client, node: FakeNodeServer) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            client.schedule("q", due=1, cron="* * * * *")
        with pytest.raises(errors.InvalidArgument):
            client.schedule_many([{"queue": "q", "delay": 1}, {"queue": "q"}])
        assert node.scheduler.schedule_requests == [] and node.scheduler.batch_sizes == []

    def test_schedule_many_chunks(self, client: Client, node: FakeNodeServer) -> None:
        specs = [{"queue": "q", "id": f"j{i:04}", "delay": 1} for i in range(2500)]
        specs[5] = JobSpec("q", id="j0005", delay=1)
        jobs = client.schedule_many(specs)
        assert node.scheduler.batch_sizes == [1000, 1000, 500]
        assert [j.id for j in jobs] == [f"j{i:04}" for i in range(2500)]

    def test_schedule_many_partial_failure(self, client: Client, node: FakeNodeServer) -> None:
        specs = [{"queue": "q", "id": f"p{i}", "delay": 1} for i in range(5)]
        specs[3]["queue"] = "bad queue"
        with pytest.raises(errors.InvalidArgument) as ei:
            client.schedule_many(specs, chunk=2)
        assert [j.id for j in ei.value.scheduled] == ["p0", "p1"]  # type: ignore[attr-defined]

    def test_error_mapping(self, client: Client) -> None:
        with pytest.raises(errors.NotFound) as nf:
            client.get("missing")
        assert isinstance(nf.value.__cause__, grpc.RpcError)
        assert "missing" in str(nf.value)
        client.schedule("q", "x", id="dup", delay=1)
        assert client.schedule("q", "x", id="dup", delay=1).id == "dup"  # idempotent
        with pytest.raises(errors.AlreadyExists):
            client.schedule("q", "other", id="dup", delay=1)
        with pytest.raises(errors.InvalidArgument) as ia:
            client.schedule("bad queue", delay=1)
        assert ia.value.field == "queue"
        client.cancel("dup")
        with pytest.raises(errors.FailedPrecondition):
            client.requeue("dup")

    def test_get_cancel(self, client: Client) -> None:
        client.schedule("q", b"body", id="g", delay=5)
        assert client.get("g").payload == b""
        assert client.get("g", full=True).payload == b"body"
        job = client.cancel("g")
        assert job.state == "CANCELLED" and job.done and job.finish_time is not None

    def test_list_follows_pages_and_filters(self, client: Client, node: FakeNodeServer) -> None:
        client.schedule_many([{"queue": "a", "id": f"a{i:02}", "delay": 1} for i in range(25)])
        client.schedule_many([{"queue": "b", "id": f"b{i:02}", "delay": 1} for i in range(3)])
        client.cancel("a03")
        node.scheduler.list_requests.clear()
        ids = [j.id for j in client.list(queue="a", states=["scheduled"], page_size=10)]
        assert ids == [f"a{i:02}" for i in range(25) if i != 3]
        reqs = node.scheduler.list_requests
        assert len(reqs) == 3 and [r.page_token for r in reqs] == ["", "10", "20"]
        assert reqs[0].queue == "a" and list(reqs[0].states) == [job_pb2.SCHEDULED]
        assert [j.id for j in client.list(states="CANCELLED")] == ["a03"]
        assert len(list(client.list())) == 28

    def test_list_validates_eagerly(self, client: Client, node: FakeNodeServer) -> None:
        with pytest.raises(errors.InvalidArgument):
            client.list(page_size=5000)
        with pytest.raises(errors.InvalidArgument):
            client.list(states=["RUNNING"])
        assert node.scheduler.list_requests == []

    def test_node_calls(self, client: Client) -> None:
        sm = client.shard_map()
        assert sm.shard_count == 2 and [s.epoch for s in sm.shards] == [1, 2]
        st = client.status()
        assert st.node_id == "n1" and st.serving and st.shards[0].jobs == 5
        assert st.start_time is not None

    def test_unavailable(self) -> None:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with Client(f"127.0.0.1:{port}", timeout=10) as c, pytest.raises(errors.Unavailable):
            c.schedule("q", id="x", delay=1)


# ---------------------------------------------------------------- Worker


class Recorder:
    def __init__(self, fail: dict[str, BaseException] | None = None, sleep: float = 0.0) -> None:
        self.seen: list[Delivery] = []
        self.fail = fail or {}
        self.sleep = sleep
        self.lock = threading.Lock()

    def __call__(self, d: Delivery) -> None:
        with self.lock:
            self.seen.append(d)
        if self.sleep:
            time.sleep(self.sleep)
        if d.job_id in self.fail:
            raise self.fail[d.job_id]


class TestWorker:
    def test_subscribe_run_and_ack(self, node: FakeNodeServer) -> None:
        fake = node.worker
        rec = Recorder(fail={"bad": ValueError("boom"), "perm": PermanentFailure("nope")})
        w = Worker(node.target, ["q", "r"], rec, concurrency=3, worker_id="w1").start()
        try:
            assert fake.wait_for(lambda: len(fake.streams) == 1)
            sub = fake.subscriptions[0]
            assert list(sub.queues) == ["q", "r"] and sub.max_in_flight == 6 and sub.worker_id == "w1"
            fake.dispatch(*[make_dispatch(f"ok{i}", payload=b"p") for i in range(20)])
            fake.dispatch(make_dispatch("bad", attempt=2, epoch=4), make_dispatch("perm"))
            assert fake.wait_for(lambda: len(fake.acks) == 22)
            assert wait_until(lambda: w.succeeded == 20 and w.failed == 2)
        finally:
            w.stop(timeout=5)
        acks = {a.job_id: a for a in fake.acks}
        assert all(acks[f"ok{i}"].success for i in range(20))
        bad = acks["bad"]
        assert (bad.success, bad.retryable, bad.attempt, bad.epoch) == (False, True, 2, 4)
        assert bad.error == "ValueError('boom')"
        assert (acks["perm"].success, acks["perm"].retryable) == (False, False)
        assert w.received == 22 and w.ack_errors == 0
        assert fake.unary_acks == []  # everything went on the stream
        assert fake.half_closed.is_set()  # stop() closed the stream cleanly
        d = next(x for x in rec.seen if x.job_id == "ok0")
        assert d.payload == b"p" and d.queue == "q" and d.received_at >= d.due_time

    def test_ack_errors_counted(self, node: FakeNodeServer) -> None:
        node.worker.ack_code = lambda a: 9  # FAILED_PRECONDITION: stale epoch
        w = Worker(node.target, "q", Recorder()).start()
        try:
            assert node.worker.wait_for(lambda: len(node.worker.streams) == 1)
            node.worker.dispatch(make_dispatch("a"), make_dispatch("b"))
            assert wait_until(lambda: w.ack_errors == 2)
        finally:
            w.stop(timeout=5)

    def test_long_handler_gets_lease_extended(self, node: FakeNodeServer) -> None:
        w = Worker(node.target, "q", Recorder(sleep=1.4)).start()
        try:
            assert node.worker.wait_for(lambda: len(node.worker.streams) == 1)
            node.worker.dispatch(make_dispatch("slow", lease=1.0), make_dispatch("quick", lease=30))
            assert node.worker.wait_for(lambda: len(node.worker.acks) == 2)
        finally:
            w.stop(timeout=5)
        exts = node.worker.extensions
        # extended at ~0.5 s and ~1.0 s, each time by the lease length (1 s)
        assert [e.job_id for e in exts] == ["slow"] * len(exts) and 2 <= len(exts) <= 3
        assert all(900 <= e.extend_by_ms <= 1000 for e in exts)
        assert w.extended == len(exts)

    def test_stop_lets_running_handlers_finish(self, node: FakeNodeServer) -> None:
        started = threading.Event()

        def handler(d: Delivery) -> None:
            started.set()
            time.sleep(0.5)

        w = Worker(node.target, "q", handler).start()
        assert node.worker.wait_for(lambda: len(node.worker.streams) == 1)
        node.worker.dispatch(make_dispatch("a"))
        assert started.wait(5)
        t0 = time.monotonic()
        w.stop(timeout=10)
        assert time.monotonic() - t0 < 3
        assert [a.job_id for a in node.worker.acks] == ["a"] and node.worker.acks[0].success
        assert node.worker.half_closed.is_set() and w.wait(0)

    def test_reconnects_and_resends_unconfirmed_acks(self, node: FakeNodeServer) -> None:
        fake = node.worker
        fake.confirm_acks = False  # the node "crashes" before confirming
        gate = threading.Event()

        def handler(d: Delivery) -> None:
            if d.job_id.startswith("late"):
                gate.wait(10)

        w = Worker(node.target, "q", handler, reconnect_initial=0.05, reconnect_max=0.2).start()
        try:
            assert fake.wait_for(lambda: len(fake.streams) == 1)
            fake.dispatch(make_dispatch("early"), *[make_dispatch(f"late{i}") for i in range(3)])
            assert fake.wait_for(lambda: len(fake.acks) == 1)  # "early" sent, never confirmed
            node.stop()
            gate.set()  # the late handlers finish while the node is down
            assert wait_until(lambda: w.succeeded == 4)
            time.sleep(0.3)  # a few failed reconnect attempts
            fake.confirm_acks = True
            node.start()  # same port
            assert fake.wait_for(lambda: len(fake.streams) == 2)
            assert fake.wait_for(lambda: len(fake.acks) == 5)
            # after the reconnect the buffered acks went out together, the
            # unconfirmed one again
            after = [r for r in fake.requests if r.acks][1:]
            assert sorted(a.job_id for a in after[0].acks) == ["early", "late0", "late1", "late2"]
            fake.dispatch(make_dispatch("new"))
            assert fake.wait_for(lambda: len(fake.acks) == 6)
            assert w.reconnects >= 1
        finally:
            w.stop(timeout=5)
        assert w.error is None

    def test_fatal_subscription_error_raises(self, node: FakeNodeServer) -> None:
        w = Worker(node.target, ["bad queue"], Recorder())
        t0 = time.monotonic()
        with pytest.raises(errors.InvalidArgument, match="bad queue"):
            w.run()
        assert time.monotonic() - t0 < 5

    def test_argument_validation(self) -> None:
        with pytest.raises(errors.InvalidArgument):
            Worker("x:1", [], print)
        with pytest.raises(errors.InvalidArgument):
            Worker("x:1", "q", print, concurrency=0)
        with pytest.raises(errors.InvalidArgument):
            Worker("x:1", "q", print, max_in_flight=20_000)
        with pytest.raises(errors.InvalidArgument):
            Worker("x:1", "q", "not callable")  # type: ignore[arg-type]

    def test_stop_before_start_and_run_once(self, node: FakeNodeServer) -> None:
        w = Worker(node.target, "q", Recorder())
        w.stop()
        w.run()  # returns at once
        with pytest.raises(RuntimeError):
            w.run()


# ---------------------------------------------------------------- CLI (in-process)


class TestCli:
    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = cli_main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    def test_schedule_get_list_cancel(
        self, node: FakeNodeServer, capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch
    ) -> None:  # type: ignore[no-untyped-def]
        monkeypatch.setenv("WHEELSCHED_TARGET", node.target)
        body = tmp_path / "body.bin"
        body.write_bytes(b"from a file")
        code, out, _ = self.run(
            capsys, "jobs", "schedule", "-q", "q", "--id", "c1", "--payload", f"@{body}",
            "--delay", "60", "--max-attempts", "3", "--lease-timeout", "5", "--json",
        )  # fmt: skip
        assert code == 0
        data = json.loads(out)
        assert data["id"] == "c1" and data["state"] == "SCHEDULED"
        assert node.scheduler.jobs["c1"].payload == b"from a file"
        assert node.scheduler.jobs["c1"].lease_timeout.seconds == 5

        code, out, _ = self.run(capsys, "jobs", "get", "c1", "--full")
        assert code == 0 and "state:" in out and "SCHEDULED" in out and "'from a file'" in out

        self.run(capsys, "jobs", "schedule", "-q", "q", "--id", "c2", "--due", "2030-01-01T00:00:00Z")
        self.run(
            capsys, "jobs", "schedule", "-q", "r", "--id", "c3",
            "--cron", "0 9 * * *", "--tz", "Europe/Paris",
        )  # fmt: skip
        assert node.scheduler.jobs["c3"].schedule.cron.time_zone == "Europe/Paris"
        code, out, _ = self.run(capsys, "jobs", "list", "-q", "q")
        assert code == 0 and "c1" in out and "c2" in out and "c3" not in out and "(2 jobs)" in out
        code, out, _ = self.run(capsys, "jobs", "list", "--limit", "2", "--json")
        assert [j["id"] for j in json.loads(out)] == ["c1", "c2"]
        code, out, _ = self.run(capsys, "jobs", "cancel", "c1", "--json")
        assert json.loads(out)["state"] == "CANCELLED"
        code, out, _ = self.run(capsys, "jobs", "list", "--state", "cancelled", "--json")
        assert [j["id"] for j in json.loads(out)] == ["c1"]

    def test_errors_and_exit_codes(self, node: FakeNodeServer, capsys: pytest.CaptureFixture[str]) -> None:
        t = ("--target", node.target)
        code, out, err = self.run(capsys, "jobs", "get", "nope", *t)
        assert code == 1 and out == "" and err.startswith("error: NOT_FOUND: ")
        code, _, err = self.run(capsys, "jobs", "schedule", "-q", "q", *t)
        assert code == 2 and err.startswith("error: INVALID_ARGUMENT: schedule: ")
        code, _, err = self.run(capsys, "jobs", "schedule", "-q", "bad queue", "--delay", "1", *t)
        assert code == 2 and err.startswith("error: INVALID_ARGUMENT: queue: ")
        code, _, err = self.run(capsys, "jobs", "schedule", "-q", "q", "--due", "soon", *t)
        assert code == 2 and "neither ISO 8601 nor unix seconds" in err
        self.run(capsys, "jobs", "schedule", "-q", "q", "--id", "d", "--delay", "1", *t)
        code, _, err = self.run(
            capsys, "jobs", "schedule", "-q", "q", "--id", "d", "--delay", "1", "--payload", "x", *t
        )
        assert code == 1 and err.startswith("error: ALREADY_EXISTS: ")
        code, _, err = self.run(capsys, "jobs", "requeue", "d", *t)
        assert code == 1 and err.startswith("error: FAILED_PRECONDITION: ")
        with pytest.raises(SystemExit) as ei:
            cli_main(["jobs", "schedule", "-q", "q", "--due", "1", "--delay", "2"])
        assert ei.value.code == 2
