"""Jobs as the engine holds them, and the validation that builds them.

A job is one flat, immutable tuple (``Job``) of atoms: strings, bytes, ints
and floats. Immutable, because a snapshot is then a shallow copy of the job
table taken in one step while the live table moves on; flat atoms, because a
node holds millions of them and each extra object per job costs memory and
garbage-collector time (DESIGN §5). A state change replaces the tuple.

The first fields are the *spec* — what the client asked for, compared for
idempotency — and the rest are the *status* that the engine changes. Every
time is an int of microseconds since the Unix epoch (UTC); every duration an
int of microseconds.
"""

from __future__ import annotations

import enum
import functools
import re
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from wheelsched import cron
from wheelsched.errors import InvalidArgument, ResourceExhausted
from wheelsched.gcutil import untracked

US = 1_000_000  # microseconds per second


class JobState(enum.IntEnum):
    """Values match proto ``JobState``."""

    SCHEDULED = 1
    DISPATCHED = 2
    SUCCEEDED = 3
    DEAD = 4
    CANCELLED = 5
    # Has dependencies that have not all resolved yet (wheelsched.engine.deps).
    WAITING = 6


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})


class ScheduleKind(enum.IntEnum):
    DUE = 0  # absolute time: when_us is the due time
    DELAY = 1  # relative: when_us is the delay (the due time is first_fire_us)
    CRON = 2  # recurring: cron_expr / time_zone / misfire


class Misfire(enum.IntEnum):
    """Values match proto ``MisfirePolicy`` (0 there means FIRE_ONCE)."""

    FIRE_ONCE = 1
    FIRE_ALL = 2
    SKIP = 3


class Job(NamedTuple):
    # ---- spec: what the client asked for (compared for idempotency) ----
    id: str
    queue: str
    payload: bytes
    kind: int  # ScheduleKind
    when_us: int  # DUE: due time; DELAY: the delay; CRON: 0
    cron_expr: str
    time_zone: str
    misfire: int  # Misfire
    priority: int
    max_attempts: int
    min_backoff_us: int
    max_backoff_us: int
    max_doublings: int
    jitter: float
    lease_us: int
    # ---- status: changed by the engine ----
    num: int  # the shard-local timer id of this job in the timing wheel
    created_us: int
    state: int  # JobState
    attempt: int  # attempts made in the current execution
    next_us: int  # SCHEDULED: fire time; DISPATCHED: lease deadline; final: 0
    fire_us: int  # nominal due time of the current execution
    last_error: str
    finished_us: int
    executions: int  # cron: executions that succeeded
    misfires: int  # cron: occurrences that did not fire on time
    dead_executions: int  # cron: executions that used up their attempts


SPEC_FIELDS = 15  # Job[:SPEC_FIELDS] is the spec
STATUS_START = Job._fields.index("state")  # Job[STATUS_START:] is what UPDATE ops carry
_FIELD_INDEX = {name: i for i, name in enumerate(Job._fields)}

# Jobs are built by ``wheelsched.gcutil.untracked`` (or ``with_fields``),
# without NamedTuple's argument handling (Job(*values) costs ~3x
# ``tuple.__new__(Job, values)``; Job._replace, which re-maps all 26 fields
# through a generator, ~20x), on the fire and replay paths. Every Job is
# also untracked from the cyclic GC (see wheelsched/_gc_c.pyx): it holds
# only atoms, and a million tracked jobs make every full collection walk
# them all.


def make_job(values) -> Job:
    """A Job from a sequence of its 26 field values (e.g. a decoded log record)."""
    return untracked(Job, values)


def replace(job: Job, **changes) -> Job:
    """``job._replace(**changes)``, fast."""
    values = list(job)
    for name, value in changes.items():
        values[_FIELD_INDEX[name]] = value
    return untracked(Job, values)


def spec_of(job: Job) -> tuple:
    return job[:SPEC_FIELDS]


# ---------------------------------------------------------------------------
# Limits and defaults


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for. Hitting one is a clear error
    (INVALID_ARGUMENT for malformed values, RESOURCE_EXHAUSTED for capacity)
    and changes nothing."""

    max_payload_bytes: int = 64 * 1024
    max_id_bytes: int = 256
    max_queue_chars: int = 128
    max_batch_jobs: int = 10_000
    max_pending_per_shard: int = 5_000_000
    max_attempts: int = 1000
    max_backoff_us: int = 30 * 86_400 * US
    min_lease_us: int = 100_000  # 100 ms: shorter leases cannot be honoured across a network
    max_lease_us: int = 86_400 * US
    max_in_flight: int = 10_000
    max_dependencies: int = 10_000  # ids in one job's ``after``
    # Due times beyond this are almost certainly unit mistakes (ms for s).
    max_due_us: int = 253_402_300_799 * US  # 9999-12-31T23:59:59Z


@dataclass(frozen=True)
class Defaults:
    max_attempts: int = 5
    min_backoff_us: int = 1 * US
    max_backoff_us: int = 3600 * US
    max_doublings: int = 16
    jitter: float = 0.1
    lease_us: int = 30 * US

    @functools.cached_property
    def resolved(self) -> tuple:
        """The Job fields max_attempts .. lease_us for a request that sets none."""
        return (self.max_attempts, self.min_backoff_us, max(self.max_backoff_us, self.min_backoff_us),
                self.max_doublings, self.jitter, self.lease_us)


# ---------------------------------------------------------------------------
# Requests


class JobRequest(NamedTuple):
    """What a client asks for, already in engine units; ``None`` means the
    default. The server builds these from protobuf, tests build them directly."""

    queue: str
    payload: bytes = b""
    id: str = ""
    due_us: int | None = None
    delay_us: int | None = None
    cron_expr: str | None = None
    time_zone: str = ""
    misfire: int = 0  # 0 = FIRE_ONCE
    priority: int = 0
    max_attempts: int | None = None
    min_backoff_us: int | None = None
    max_backoff_us: int | None = None
    max_doublings: int | None = None
    jitter: float | None = None
    lease_us: int | None = None
    # Dependencies (wheelsched.engine.deps): ids of the jobs this one runs
    # after, and what a DEAD or CANCELLED dependency does (0 = CANCEL).
    after: tuple[str, ...] = ()
    on_dependency_failure: int = 0


_QUEUE_RE = re.compile(r"[A-Za-z0-9._:\-]+")
# Plain ints on the hot path: an IntEnum member lookup plus int() costs ~1 µs.
_DUE, _DELAY, _CRON = int(ScheduleKind.DUE), int(ScheduleKind.DELAY), int(ScheduleKind.CRON)
_FIRE_ONCE = int(Misfire.FIRE_ONCE)
_MISFIRE_VALUES = frozenset(int(m) for m in Misfire)
_SCHEDULED_STATE = int(JobState.SCHEDULED)
_UNSET_RETRY = (None,) * 6  # JobRequest[9:15]: max_attempts .. lease_us
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


# Control characters, and lone surrogates (which cannot be encoded as UTF-8).
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def check_job_id(job_id: str, limits: Limits, field: str = "id") -> None:
    """Validate a job id (on create, get, cancel, ack: the same rules).
    On the write path for every job, so: one regex pass, no per-char Python."""
    if not isinstance(job_id, str) or not job_id:
        raise InvalidArgument(field, "must be a non-empty string")
    if _BAD_ID_CHAR.search(job_id):
        raise InvalidArgument(field, "contains control characters or is not valid UTF-8")
    # A character is at most 4 bytes of UTF-8: short ids need no encoding.
    if len(job_id) * 4 > limits.max_id_bytes and (
            len(job_id) > limits.max_id_bytes or len(job_id.encode("utf-8")) > limits.max_id_bytes):
        raise InvalidArgument(field, f"longer than {limits.max_id_bytes} bytes")


def _duration(value: int | None, default: int, lo: int, hi: int, field: str) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(field, "must be an integer number of microseconds")
    if not lo <= value <= hi:
        raise InvalidArgument(field, f"must be between {lo / US:g} s and {hi / US:g} s")
    return value


def build_job(
    req: JobRequest,
    *,
    now_us: int,
    num: int,
    limits: Limits,
    defaults: Defaults,
    field: str = "job",
    check_id: bool = True,
) -> Job:
    """Validate a request and build the SCHEDULED job it describes.

    Raises InvalidArgument naming the offending field. Pure: ``now_us``
    (for delays and cron) and ``num`` are passed in.
    """
    queue, payload, job_id, due, delay, cron_in, time_zone, misfire, priority = req[:9]
    if not job_id:
        job_id = uuid.uuid4().hex
    elif check_id:
        check_job_id(job_id, limits, f"{field}.id")
    if type(queue) is not str or not queue:
        raise InvalidArgument(f"{field}.queue", "must be a non-empty string")
    if len(queue) > limits.max_queue_chars or not _QUEUE_RE.fullmatch(queue):
        raise InvalidArgument(
            f"{field}.queue", f"must be 1-{limits.max_queue_chars} characters of [A-Za-z0-9._:-]"
        )
    if type(payload) is not bytes:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise InvalidArgument(f"{field}.payload", "must be bytes")
        payload = bytes(payload)
    if len(payload) > limits.max_payload_bytes:
        # Capacity, not form: the same payload would be fine on a node with a higher limit.
        raise ResourceExhausted(
            f"{field}.payload: {len(payload)} bytes exceeds the limit of {limits.max_payload_bytes}"
        )
    if type(priority) is not int or not _INT32_MIN <= priority <= _INT32_MAX:
        raise InvalidArgument(f"{field}.priority", "must be a 32-bit integer")

    if (due is not None) + (delay is not None) + (cron_in is not None) != 1:
        chosen = [n for n, v in (("due_time", due), ("delay", delay), ("cron", cron_in)) if v is not None]
        raise InvalidArgument(
            f"{field}.schedule", "exactly one of due_time, delay or cron must be set"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if due is not None:
        if type(due) is not int or not 0 <= due <= limits.max_due_us:
            raise InvalidArgument(f"{field}.schedule.due_time", "out of range (1970-01-01 .. 9999-12-31)")
        kind, when, first, cron_expr, misfire = _DUE, due, due, "", _FIRE_ONCE
    elif delay is not None:
        if type(delay) is not int or delay < 0:
            raise InvalidArgument(f"{field}.schedule.delay", "must be zero or positive")
        if now_us + delay > limits.max_due_us:
            raise InvalidArgument(f"{field}.schedule.delay", "reaches past 9999-12-31")
        kind, when, first, cron_expr, misfire = _DELAY, delay, now_us + delay, "", _FIRE_ONCE
    else:
        kind, when, cron_expr, time_zone = _CRON, 0, cron_in, time_zone or ""
        try:
            cron.validate(cron_expr, time_zone)
        except ValueError as exc:
            raise InvalidArgument(f"{field}.schedule.cron", str(exc)) from None
        misfire = misfire or _FIRE_ONCE
        if misfire not in _MISFIRE_VALUES:
            raise InvalidArgument(f"{field}.schedule.cron.misfire_policy", f"unknown value {misfire}")
        first = cron.next_after(cron_expr, time_zone, now_us)
    if time_zone and kind != _CRON:
        raise InvalidArgument(f"{field}.schedule.time_zone", "only applies to cron schedules")

    retry = req[9:15]
    if retry == _UNSET_RETRY:  # the common case: defaults, validated once
        retry = defaults.resolved
    else:
        retry = _retry_fields(req, limits, defaults, field)
    return untracked(Job, (
        job_id, queue, payload, kind, when, cron_expr, time_zone, misfire, priority, *retry,
        num, now_us, _SCHEDULED_STATE, 0, first, first, "", 0, 0, 0, 0,
    ))


def _retry_fields(req: JobRequest, limits: Limits, defaults: Defaults, field: str) -> tuple:
    """Validate the retry policy and lease of a request that sets any of them."""
    max_attempts = req.max_attempts if req.max_attempts else defaults.max_attempts
    if type(max_attempts) is not int or not 1 <= max_attempts <= limits.max_attempts:
        raise InvalidArgument(f"{field}.retry_policy.max_attempts", f"must be 1-{limits.max_attempts}")
    min_b = _duration(req.min_backoff_us, defaults.min_backoff_us, 0, limits.max_backoff_us,
                      f"{field}.retry_policy.min_backoff")
    max_b = _duration(req.max_backoff_us, max(defaults.max_backoff_us, min_b), 0,
                      limits.max_backoff_us, f"{field}.retry_policy.max_backoff")
    if max_b < min_b:
        raise InvalidArgument(f"{field}.retry_policy.max_backoff", "is less than min_backoff")
    doublings = defaults.max_doublings if req.max_doublings is None else req.max_doublings
    if type(doublings) is not int or not 0 <= doublings <= 62:
        raise InvalidArgument(f"{field}.retry_policy.max_doublings", "must be 0-62")
    jitter = defaults.jitter if req.jitter is None else float(req.jitter)
    if not 0.0 <= jitter <= 1.0:  # also rejects NaN
        raise InvalidArgument(f"{field}.retry_policy.jitter", "must be between 0 and 1")
    lease = _duration(req.lease_us, defaults.lease_us, limits.min_lease_us, limits.max_lease_us,
                      f"{field}.lease_timeout")
    return max_attempts, min_b, max_b, doublings, jitter, lease


def backoff_us(job: Job, failed_attempt: int, rand: float) -> int:
    """Delay before the next attempt after ``failed_attempt`` (1-based) failed.

    Cloud Tasks' rule: the backoff starts at min_backoff, doubles
    max_doublings times, then grows linearly by the last doubled step, capped
    at max_backoff; then ``jitter`` adds up to that fraction more (``rand`` in
    [0, 1) is passed in so the engine stays deterministic under test).
    """
    k = failed_attempt - 1
    if k <= job.max_doublings:
        base = job.min_backoff_us << k
    else:
        step = job.min_backoff_us << job.max_doublings
        base = step * (k - job.max_doublings + 1)
    base = min(base, job.max_backoff_us)
    return base + int(base * job.jitter * rand)
