"""Issue #7: hostile request messages against a real node (bounded Hypothesis).

Random field values in Job (ScheduleJob, BatchScheduleJobs),
StreamJobsRequest, AckItem and LeaseExtension go to a real ``wheelsched
serve``. Every answer must be OK or a precise status code (never INTERNAL or
UNKNOWN), a rejected request must change nothing (the node's WAL last
sequence numbers, from GetNodeStatus, are the same before and after), and
the node must stay up and log no error.

Longer runs: ``WHEELSCHED_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest
tests/test_fuzz_requests.py`` (see README, Operations).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_helpers import NodeProcess, running_node

from wheelsched.v1 import (
    job_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

EXAMPLES = int(os.environ.get("WHEELSCHED_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize=not os.environ.get("WHEELSCHED_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SCHEDULE_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   grpc.StatusCode.ALREADY_EXISTS}
ITEM_ERRORS = {grpc.StatusCode.NOT_FOUND.value[0], grpc.StatusCode.FAILED_PRECONDITION.value[0],
               grpc.StatusCode.INVALID_ARGUMENT.value[0]}
STREAM_QUEUE_PREFIX = "sfz-"  # jobs are never scheduled on these: a stream can dispatch nothing

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
long_text = st.one_of(text, st.integers(100, 2000).map(lambda n: "x" * n))
seconds = st.one_of(st.integers(-10**6, 10**6), st.integers(-315576000000, 315576000000), INT64)
nanos = st.one_of(st.just(0), st.integers(0, 999_999_999), INT32)


def _queue(q: str) -> str:
    return "j" + q if q.startswith(STREAM_QUEUE_PREFIX) else q


@st.composite
def jobs(draw) -> job_pb2.Job:
    job = job_pb2.Job(id=draw(long_text), queue=_queue(draw(long_text)), priority=draw(INT32))
    payload = draw(st.one_of(st.binary(max_size=64), st.integers(60_000, 70_000).map(lambda n: b"p" * n)))
    job.payload = payload
    when = draw(st.sampled_from(["none", "due", "delay", "cron"]))
    if when == "due":
        job.schedule.due_time.seconds = draw(seconds)
        job.schedule.due_time.nanos = draw(nanos)
    elif when == "delay":
        job.schedule.delay.seconds = draw(seconds)
        job.schedule.delay.nanos = draw(nanos)
    elif when == "cron":
        job.schedule.cron.expression = draw(st.one_of(
            st.sampled_from(["* * * * *", "0 9 * * *", "*/5 * * * * *", "61 * * * *", "0 0 31 2 *",
                             "", "* * *", "@daily"]), text))
        job.schedule.cron.time_zone = draw(st.one_of(
            st.sampled_from(["", "UTC", "Europe/Paris", "Mars/Olympus", "../../etc/passwd"]), text))
        job.schedule.cron.misfire_policy = draw(st.integers(-3, 9))
    if draw(st.booleans()):
        rp = job.retry_policy
        rp.max_attempts = draw(INT32)
        rp.min_backoff.seconds = draw(seconds)
        rp.min_backoff.nanos = draw(nanos)
        rp.max_backoff.seconds = draw(seconds)
        if draw(st.booleans()):
            rp.max_doublings = draw(INT32)
        if draw(st.booleans()):
            rp.jitter = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                       st.sampled_from([math.nan, math.inf, -0.0, 1.0, 1e308])))
    if draw(st.booleans()):
        job.lease_timeout.seconds = draw(seconds)
        job.lease_timeout.nanos = draw(nanos)
    if draw(st.booleans()):  # output-only fields a client should not set
        job.state = draw(st.integers(0, 9))
        job.attempt = draw(INT32)
        job.shard = draw(INT32)
        job.epoch = draw(INT64)
    return job


ack_items = st.builds(worker_pb2.AckItem, job_id=long_text, attempt=INT32, epoch=INT64,
                      success=st.booleans(), error=long_text, retryable=st.booleans())
extensions = st.builds(worker_pb2.LeaseExtension, job_id=long_text, attempt=INT32, epoch=INT64,
                       extend_by_ms=INT64)


class Node:
    def __init__(self, proc: NodeProcess) -> None:
        self.proc = proc
        self.channel = grpc.insecure_channel(proc.target)
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(self.channel)
        self.worker = worker_pb2_grpc.WorkerStub(self.channel)
        self.node = node_pb2_grpc.NodeStub(self.channel)

    def wal_seqs(self) -> list[int]:
        status = self.node.GetNodeStatus(node_pb2.GetNodeStatusRequest(), timeout=10)
        return [s.wal_last_seq for s in status.shards]

    def exists(self, job_id: str) -> bool:
        try:
            self.scheduler.GetJob(scheduler_pb2.GetJobRequest(id=job_id), timeout=10)
            return True
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), err
            return False


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("fuzz-node"), fsync="never", shards=2) as proc:
        n = Node(proc)
        yield n
        # the node is still up, serving, and logged no error
        assert proc.proc.poll() is None, proc.log_tail()
        health = health_pb2_grpc.HealthStub(n.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        n.channel.close()
        log = proc.log_text()
        assert "Traceback" not in log and " ERROR " not in log, proc.log_tail(80)


def _schedule_checked(node: Node, call, request, ids: list[str]) -> None:
    existed = {i for i in ids if node.exists(i)}
    before = node.wal_seqs()
    try:
        call(request, timeout=10)
    except grpc.RpcError as err:
        assert err.code() in SCHEDULE_ERRORS, (err.code(), err.details())
        assert err.details(), "a refusal says why"
        assert node.wal_seqs() == before, "a rejected request changed the log"
        for i in set(ids) - existed:
            assert not node.exists(i), f"rejected job {i!r} exists"


@FUZZ
@given(job=jobs(), view=st.integers(-1, 5))
def test_schedule_job(node: Node, job: job_pb2.Job, view: int) -> None:
    _schedule_checked(node, node.scheduler.ScheduleJob,
                      scheduler_pb2.ScheduleJobRequest(job=job, view=view), [job.id])


@settings(FUZZ, max_examples=max(10, EXAMPLES // 2))
@given(batch=st.lists(jobs(), max_size=6))
def test_batch_schedule_jobs(node: Node, batch: list[job_pb2.Job]) -> None:
    _schedule_checked(node, node.scheduler.BatchScheduleJobs,
                      scheduler_pb2.BatchScheduleJobsRequest(jobs=batch), [j.id for j in batch])


def _check_results(results) -> None:
    for r in results:
        assert r.code in ITEM_ERRORS, (r.code, r.message)


@FUZZ
@given(acks=st.lists(ack_items, max_size=5), exts=st.lists(extensions, max_size=5))
def test_unary_acks_and_extensions(node: Node, acks, exts) -> None:
    before = node.wal_seqs()
    _check_results(node.worker.Ack(worker_pb2.AckRequest(acks=acks), timeout=10).results)
    _check_results(node.worker.ExtendLeases(worker_pb2.ExtendLeasesRequest(extensions=exts),
                                            timeout=10).results)
    assert node.wal_seqs() == before


@FUZZ
@given(queues=st.lists(text.map(lambda q: STREAM_QUEUE_PREFIX + q), max_size=4),
       max_in_flight=st.one_of(st.integers(-5, 100), INT32), worker_id=long_text,
       acks=st.lists(ack_items, max_size=4), exts=st.lists(extensions, max_size=4),
       followups=st.integers(0, 2))
def test_stream_jobs(node: Node, queues, max_in_flight, worker_id, acks, exts, followups) -> None:
    before = node.wal_seqs()
    first = worker_pb2.StreamJobsRequest(queues=queues, max_in_flight=max_in_flight, worker_id=worker_id,
                                         acks=acks, extensions=exts)
    requests = [first] + [worker_pb2.StreamJobsRequest(acks=acks, extensions=exts)] * followups
    try:
        for resp in node.worker.StreamJobs(iter(requests), timeout=10):
            assert not resp.dispatches
            _check_results(resp.ack_results)
            _check_results(resp.extension_results)
    except grpc.RpcError as err:
        assert err.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, \
            (err.code(), err.details())
    assert node.wal_seqs() == before
