"""Protobuf messages <-> engine values, in one place.

The engine works in integer microseconds; the API in Timestamp/Duration.
Output-only fields of a request's Job are ignored (AIP-203).
"""

from __future__ import annotations

from wheelsched.engine import US, Delivery, DependencyInfo, Job, JobRequest, ScheduleKind
from wheelsched.errors import InvalidArgument
from wheelsched.v1 import job_pb2, worker_pb2

_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the Timestamp range


def ts_to_us(ts, field: str) -> int:
    if not 0 <= ts.nanos < 1_000_000_000 or not -62_135_596_800 <= ts.seconds <= _MAX_SECONDS:
        raise InvalidArgument(field, "is not a valid timestamp")
    return ts.seconds * US + ts.nanos // 1000


def dur_to_us(d, field: str) -> int:
    if not -999_999_999 <= d.nanos <= 999_999_999 or abs(d.seconds) > 315_576_000_000:
        raise InvalidArgument(field, "is not a valid duration")
    return d.seconds * US + int(d.nanos / 1000)


def set_ts(ts, us: int) -> None:
    ts.seconds, rem = divmod(us, US)
    ts.nanos = rem * 1000


def set_dur(d, us: int) -> None:
    d.seconds, rem = divmod(us, US)
    d.nanos = rem * 1000


def job_request(pb: job_pb2.Job, field: str = "job") -> JobRequest:
    """Build the engine's request from an API Job. Raises InvalidArgument."""
    sched = pb.schedule
    which = sched.WhichOneof("when")
    due = delay = None
    cron_expr = None
    tz = ""
    misfire = 0
    if which == "due_time":
        due = ts_to_us(sched.due_time, f"{field}.schedule.due_time")
    elif which == "delay":
        delay = dur_to_us(sched.delay, f"{field}.schedule.delay")
    elif which == "cron":
        cron_expr = sched.cron.expression
        tz = sched.cron.time_zone
        misfire = int(sched.cron.misfire_policy)
        if not cron_expr:
            raise InvalidArgument(f"{field}.schedule.cron.expression", "must not be empty")
    rp = pb.retry_policy
    return JobRequest(
        queue=pb.queue,
        payload=pb.payload,
        id=pb.id,
        due_us=due,
        delay_us=delay,
        cron_expr=cron_expr,
        time_zone=tz,
        misfire=misfire,
        priority=pb.priority,
        max_attempts=rp.max_attempts or None,
        min_backoff_us=dur_to_us(rp.min_backoff, f"{field}.retry_policy.min_backoff")
        if rp.HasField("min_backoff") else None,
        max_backoff_us=dur_to_us(rp.max_backoff, f"{field}.retry_policy.max_backoff")
        if rp.HasField("max_backoff") else None,
        max_doublings=rp.max_doublings if rp.HasField("max_doublings") else None,
        jitter=rp.jitter if rp.HasField("jitter") else None,
        lease_us=dur_to_us(pb.lease_timeout, f"{field}.lease_timeout")
        if pb.HasField("lease_timeout") else None,
        after=tuple(pb.after),
        on_dependency_failure=int(pb.on_dependency_failure),
    )


_FULL, _MINIMAL = job_pb2.JobView.FULL, job_pb2.JobView.MINIMAL


def job_to_proto(job: Job, shard: int, epoch: int, view: int, out: job_pb2.Job | None = None,
                 deps: DependencyInfo | None = None) -> job_pb2.Job:
    """The API Job for ``view`` (BASIC: everything but the payload and the
    dependents). ``deps``: the job's dependencies, if it has any."""
    pb = job_pb2.Job() if out is None else out
    pb.id = job.id
    pb.state = job.state
    pb.shard = shard
    pb.epoch = epoch
    if job.next_us:
        set_ts(pb.next_fire_time, job.next_us)
    if view == _MINIMAL:
        return pb
    pb.queue = job.queue
    if view == _FULL:
        pb.payload = job.payload
    kind = job.kind
    if kind == ScheduleKind.DUE:
        set_ts(pb.schedule.due_time, job.when_us)
    elif kind == ScheduleKind.DELAY:
        set_dur(pb.schedule.delay, job.when_us)
    else:
        pb.schedule.cron.expression = job.cron_expr
        pb.schedule.cron.time_zone = job.time_zone
        pb.schedule.cron.misfire_policy = job.misfire
    pb.priority = job.priority
    rp = pb.retry_policy
    rp.max_attempts = job.max_attempts
    set_dur(rp.min_backoff, job.min_backoff_us)
    set_dur(rp.max_backoff, job.max_backoff_us)
    rp.max_doublings = job.max_doublings
    rp.jitter = job.jitter
    set_dur(pb.lease_timeout, job.lease_us)
    pb.attempt = job.attempt
    pb.last_error = job.last_error
    set_ts(pb.create_time, job.created_us)
    if job.finished_us:
        set_ts(pb.finish_time, job.finished_us)
    pb.executions = job.executions
    pb.misfires = job.misfires
    pb.dead_executions = job.dead_executions
    if deps is not None:
        pb.after.extend(deps.after)
        pb.on_dependency_failure = deps.policy
        pb.open_dependencies.extend(deps.open)
        if view == _FULL:
            pb.dependents.extend(deps.dependents)
    return pb


def dispatches(deliveries: list[Delivery]) -> worker_pb2.StreamJobsResponse:
    """One stream message carrying a batch of dispatches."""
    msg = worker_pb2.StreamJobsResponse()
    add = msg.dispatches.add
    for job, shard, epoch, due_us in deliveries:
        d = add()
        d.job_id = job.id
        d.queue = job.queue
        d.payload = job.payload
        d.attempt = job.attempt
        d.epoch = epoch
        d.shard = shard
        d.priority = job.priority
        set_ts(d.due_time, due_us)
        set_ts(d.lease_deadline, job.next_us)
        set_dur(d.lease_timeout, job.lease_us)
    return msg
