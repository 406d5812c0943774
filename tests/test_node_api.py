"""Bad input on every RPC of a real node, through raw stubs: each gets a
precise status code naming the field, and changes nothing — neither the
jobs nor the write-ahead log (its sequence numbers stay where they were)."""

from __future__ import annotations

import queue
import time

import grpc
import pytest
from node_helpers import running_node

from wheelsched.v1 import (
    job_pb2,
    node_pb2,
    node_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)

C = grpc.StatusCode


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    with running_node(tmp_path_factory.mktemp("api"), fsync="never", shards=2,
                      max_payload_bytes=1024) as n:
        yield n


@pytest.fixture(scope="module")
def stubs(node):
    channel = grpc.insecure_channel(node.target)
    yield (scheduler_pb2_grpc.SchedulerStub(channel), worker_pb2_grpc.WorkerStub(channel),
           node_pb2_grpc.NodeStub(channel))
    channel.close()


def wal_position(node_stub) -> tuple:
    status = node_stub.GetNodeStatus(node_pb2.GetNodeStatusRequest())
    return tuple((s.jobs, s.wal_last_seq) for s in status.shards)


def job(job_id="ok", queue="q", delay_ms=60_000, **kw) -> job_pb2.Job:
    j = job_pb2.Job(id=job_id, queue=queue, **kw)
    if delay_ms is not None:
        j.schedule.delay.FromMilliseconds(delay_ms)
    return j


def expect(call, code, text=""):
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert text in err.value.details(), err.value.details()
    return err.value.details()


def _bad_jobs():
    cron_bad = job(delay_ms=None)
    cron_bad.schedule.cron.expression = "99 * * * *"
    tz_bad = job(delay_ms=None)
    tz_bad.schedule.cron.expression = "* * * * *"
    tz_bad.schedule.cron.time_zone = "Nowhere/Atlantis"
    tz_path = job(delay_ms=None)
    tz_path.schedule.cron.expression = "* * * * *"
    tz_path.schedule.cron.time_zone = "../../etc/passwd"
    far = job(delay_ms=None)
    far.schedule.due_time.seconds = 253_402_300_800  # year 10000
    nanos = job(delay_ms=None)
    nanos.schedule.due_time.seconds = 1
    nanos.schedule.due_time.nanos = -5
    negative_delay = job(delay_ms=-1)
    lease = job()
    lease.lease_timeout.FromMilliseconds(1)
    backoff = job()
    backoff.retry_policy.min_backoff.FromSeconds(-1)
    attempts = job()
    attempts.retry_policy.max_attempts = -3
    jitter = job()
    jitter.retry_policy.jitter = 7.0
    misfire = job(delay_ms=None)
    misfire.schedule.cron.expression = "* * * * *"
    misfire.schedule.cron.misfire_policy = 42
    return [
        (job(queue=""), C.INVALID_ARGUMENT, "job.queue"),
        (job(queue="has space"), C.INVALID_ARGUMENT, "job.queue"),
        (job(queue="q" * 500), C.INVALID_ARGUMENT, "job.queue"),
        (job(job_id="x" * 300), C.INVALID_ARGUMENT, "job.id"),
        (job(job_id="tab\there"), C.INVALID_ARGUMENT, "job.id"),
        (job(delay_ms=None), C.INVALID_ARGUMENT, "job.schedule"),
        (job(payload=b"x" * 1025), C.RESOURCE_EXHAUSTED, "job.payload"),
        (cron_bad, C.INVALID_ARGUMENT, "job.schedule.cron"),
        (tz_bad, C.INVALID_ARGUMENT, "time zone"),
        (tz_path, C.INVALID_ARGUMENT, "time zone"),
        (far, C.INVALID_ARGUMENT, "job.schedule.due_time"),
        (nanos, C.INVALID_ARGUMENT, "job.schedule.due_time"),
        (negative_delay, C.INVALID_ARGUMENT, "job.schedule.delay"),
        (lease, C.INVALID_ARGUMENT, "job.lease_timeout"),
        (backoff, C.INVALID_ARGUMENT, "job.retry_policy.min_backoff"),
        (attempts, C.INVALID_ARGUMENT, "job.retry_policy.max_attempts"),
        (jitter, C.INVALID_ARGUMENT, "job.retry_policy.jitter"),
        (misfire, C.INVALID_ARGUMENT, "misfire_policy"),
    ]


@pytest.mark.parametrize(("bad", "code", "text"), _bad_jobs())
def test_schedule_rejects_bad_jobs_and_changes_nothing(stubs, bad, code, text):
    sched, _, node_stub = stubs
    before = wal_position(node_stub)
    expect(lambda: sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=bad)), code, text)
    assert wal_position(node_stub) == before


def test_batch_is_rejected_whole(stubs):
    sched, _, node_stub = stubs
    before = wal_position(node_stub)
    batch = [job(f"batch-{i}") for i in range(10)] + [job("batch-bad", queue="")]
    expect(lambda: sched.BatchScheduleJobs(scheduler_pb2.BatchScheduleJobsRequest(jobs=batch)),
           C.INVALID_ARGUMENT, "jobs[10].queue")
    too_many = [job(f"many-{i}") for i in range(10_001)]
    expect(lambda: sched.BatchScheduleJobs(scheduler_pb2.BatchScheduleJobsRequest(jobs=too_many)),
           C.RESOURCE_EXHAUSTED, "batch limit")
    expect(lambda: sched.BatchScheduleJobs(scheduler_pb2.BatchScheduleJobsRequest()),
           C.INVALID_ARGUMENT, "jobs")
    assert wal_position(node_stub) == before
    expect(lambda: sched.GetJob(scheduler_pb2.GetJobRequest(id="batch-0")), C.NOT_FOUND)


def test_idempotency_and_already_exists(stubs):
    sched, _, node_stub = stubs
    first = sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=job("idem", payload=b"a")))
    before = wal_position(node_stub)
    again = sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=job("idem", payload=b"a")))
    assert again.create_time == first.create_time
    expect(lambda: sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=job("idem", payload=b"b"))),
           C.ALREADY_EXISTS, "idem")
    assert wal_position(node_stub) == before


def test_get_list_cancel_requeue_errors(stubs):
    sched, _, node_stub = stubs
    before = wal_position(node_stub)
    expect(lambda: sched.GetJob(scheduler_pb2.GetJobRequest(id="")), C.INVALID_ARGUMENT, "id")
    expect(lambda: sched.GetJob(scheduler_pb2.GetJobRequest(id="nope")), C.NOT_FOUND)
    expect(lambda: sched.CancelJob(scheduler_pb2.CancelJobRequest(id="nope")), C.NOT_FOUND)
    expect(lambda: sched.CancelJob(scheduler_pb2.CancelJobRequest(id="x" * 300)), C.INVALID_ARGUMENT)
    expect(lambda: sched.RequeueJob(scheduler_pb2.RequeueJobRequest(id="nope")), C.NOT_FOUND)
    expect(lambda: sched.ListJobs(scheduler_pb2.ListJobsRequest(page_token="zz")),
           C.INVALID_ARGUMENT, "page_token")
    expect(lambda: sched.ListJobs(scheduler_pb2.ListJobsRequest(page_size=-1)), C.INVALID_ARGUMENT)
    expect(lambda: sched.ListJobs(scheduler_pb2.ListJobsRequest(states=[99])), C.INVALID_ARGUMENT,
           "states")
    assert wal_position(node_stub) == before
    sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=job("not-dead")))
    expect(lambda: sched.RequeueJob(scheduler_pb2.RequeueJobRequest(id="not-dead")),
           C.FAILED_PRECONDITION, "DEAD")


def test_garbage_bytes_do_not_hurt_the_node(node, stubs):
    channel = grpc.insecure_channel(node.target)
    raw = channel.unary_unary("/wheelsched.v1.Scheduler/ScheduleJob")
    before = wal_position(stubs[2])
    for garbage in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc"):
        with pytest.raises(grpc.RpcError) as err:
            raw(garbage, timeout=5)
        assert err.value.code() in (C.INTERNAL, C.INVALID_ARGUMENT, C.UNKNOWN)
    assert wal_position(stubs[2]) == before
    channel.close()


def _stream(worker_stub, first):
    requests: queue.Queue = queue.Queue()
    requests.put(first)

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    return requests, worker_stub.StreamJobs(gen(), timeout=10)


@pytest.mark.parametrize(("first", "text"), [
    (worker_pb2.StreamJobsRequest(max_in_flight=5), "queues"),
    (worker_pb2.StreamJobsRequest(queues=["q"], max_in_flight=20_000), "max_in_flight"),
    (worker_pb2.StreamJobsRequest(queues=["q"], max_in_flight=-1), "max_in_flight"),
    (worker_pb2.StreamJobsRequest(queues=[""], max_in_flight=1), "queue"),
])
def test_stream_rejects_bad_subscription(stubs, first, text):
    requests, responses = _stream(stubs[1], first)
    expect(lambda: next(responses), C.INVALID_ARGUMENT, text)
    requests.put(None)


def test_acks_and_extensions_for_wrong_leases(stubs):
    sched, worker, node_stub = stubs
    j = job("lease-me", queue="acks", delay_ms=0)
    sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=j))
    requests, responses = _stream(worker, worker_pb2.StreamJobsRequest(queues=["acks"], max_in_flight=1))
    d = next(responses).dispatches[0]
    assert (d.job_id, d.attempt) == ("lease-me", 1)
    assert d.lease_timeout.ToSeconds() == 30  # the default lease
    before = wal_position(node_stub)
    bad = [worker_pb2.AckItem(job_id=d.job_id, attempt=d.attempt, epoch=d.epoch + 1, success=True),
           worker_pb2.AckItem(job_id=d.job_id, attempt=9, epoch=d.epoch, success=True),
           worker_pb2.AckItem(job_id="ghost", attempt=1, epoch=d.epoch, success=True),
           worker_pb2.AckItem(job_id="", attempt=1, epoch=d.epoch, success=True)]
    results = worker.Ack(worker_pb2.AckRequest(acks=bad)).results
    assert [r.code for r in results] == [C.FAILED_PRECONDITION.value[0]] * 2 + [
        C.NOT_FOUND.value[0], C.INVALID_ARGUMENT.value[0]]
    assert "stale epoch" in results[0].message and "not leased" in results[1].message
    ext = worker.ExtendLeases(worker_pb2.ExtendLeasesRequest(extensions=[
        worker_pb2.LeaseExtension(job_id=d.job_id, attempt=d.attempt, epoch=d.epoch,
                                  extend_by_ms=10**9)])).results
    assert ext[0].code == C.INVALID_ARGUMENT.value[0]
    assert wal_position(node_stub) == before
    # The same wrong ack on the stream is answered on the stream.
    requests.put(worker_pb2.StreamJobsRequest(acks=bad[:1]))
    msg = next(responses)
    assert msg.ack_results[0].code == C.FAILED_PRECONDITION.value[0]
    # And the right one works.
    requests.put(worker_pb2.StreamJobsRequest(acks=[worker_pb2.AckItem(
        job_id=d.job_id, attempt=d.attempt, epoch=d.epoch, success=True)]))
    assert next(responses).ack_results[0].code == 0
    requests.put(None)
    deadline = time.time() + 5
    while time.time() < deadline:
        if sched.GetJob(scheduler_pb2.GetJobRequest(id="lease-me")).state == job_pb2.SUCCEEDED:
            break
        time.sleep(0.05)
    assert sched.GetJob(scheduler_pb2.GetJobRequest(id="lease-me")).state == job_pb2.SUCCEEDED


def test_shard_map_and_status(stubs):
    _, _, node_stub = stubs
    shard_map = node_stub.GetShardMap(node_pb2.GetShardMapRequest())
    assert shard_map.shard_count == 2 and [s.shard for s in shard_map.shards] == [0, 1]
    assert all(s.epoch >= 1 and s.owner_address for s in shard_map.shards)
    status = node_stub.GetNodeStatus(node_pb2.GetNodeStatusRequest())
    assert status.serving and len(status.shards) == 2


def test_health_and_reflection(node):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(node.target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "wheelsched.v1.Scheduler", "wheelsched.v1.Worker"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"wheelsched.v1.Scheduler", "wheelsched.v1.Worker", "wheelsched.v1.Node"} <= names
    channel.close()


def test_zero_doublings_means_linear_backoff(stubs):
    sched, _, _ = stubs
    j = job("linear")
    j.retry_policy.max_doublings = 0
    got = sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=j))
    assert got.retry_policy.HasField("max_doublings") and got.retry_policy.max_doublings == 0
    unset = sched.ScheduleJob(scheduler_pb2.ScheduleJobRequest(job=job("default-doublings")))
    assert unset.retry_policy.max_doublings == 16
