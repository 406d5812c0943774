"""The scheduling engine: every shard of a node, and the rules of a job's life.

The engine does no I/O of its own. It is given a clock (``() -> int`` µs), a
function that opens a shard's log, and a source of randomness (backoff
jitter); the node gives it the real clock and write-ahead logs, tests give
it a manual clock and in-memory logs. It is not thread-safe: the node calls
it from its event-loop thread only.

Write path (DESIGN §1): validate → append the op to the shard's log → apply
it → the caller replies only after the log made the op durable. Methods that
write return ``Waits``: the (log, seq) pairs the caller must await before it
answers. Reads (``get``, ``list``) see applied state.

Fire path: ``tick()`` advances each shard's wheel to the clock, moves due
jobs into per-queue ready heaps (higher priority first, then earlier due,
then FIFO), and ``_dispatch`` hands them to subscribed workers within their
in-flight credit, logging one DISPATCH op per shard per round. Dispatches do
not wait for the log: delivery is at-least-once, and a dispatch lost in a
crash only means the job is delivered again under the next epoch.

Epochs: each recovery starts a new epoch per shard (``EPOCH`` op, durable
before the node serves). Leases from an older epoch are released at once
(the job is due again, the lost attempt counted), and acks quoting an older
epoch are refused — so (job id, attempt, epoch) names one delivery.

Dependencies (``wheelsched.engine.deps`` has the rules and the design): a
state change of a job that others wait for queues its id in ``_changed``;
``_settle`` then writes each waiting dependent's RESOLVE (or cancel) to the
dependent's shard, in the same call, before its ops are flushed. Jobs nobody
waits for cost one dict test per state change.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from wheelsched import cron
from wheelsched.engine.deps import CANCEL, check_after, find_cycle
from wheelsched.engine.model import (
    FINAL_STATES,
    STATUS_START,
    US,
    Defaults,
    Job,
    JobRequest,
    JobState,
    Limits,
    ScheduleKind,
    backoff_us,
    build_job,
    check_job_id,
    replace,
    spec_of,
)
from wheelsched.engine.shard import (
    DISPATCH,
    EPOCH,
    REOPEN,
    RESOLVE,
    SCHEDULE,
    SUCCEED,
    UPDATE,
    Shard,
)
from wheelsched.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotOwner,
    ResourceExhausted,
    WheelschedError,
)
from wheelsched.gcutil import untracked
from wheelsched.sharding import shard_of
from wheelsched.wal import SNAPSHOT
from wheelsched.wheel import due_positions, earliest_expiry

_SCHEDULED = int(JobState.SCHEDULED)
_DISPATCHED = int(JobState.DISPATCHED)
_SUCCEEDED = int(JobState.SUCCEEDED)
_DEAD = int(JobState.DEAD)
_CANCELLED = int(JobState.CANCELLED)
_WAITING = int(JobState.WAITING)
_FINAL = frozenset(int(s) for s in FINAL_STATES)
_CRON = int(ScheduleKind.CRON)
# Where each status field sits in an UPDATE op ([UPDATE, job_id, *status]).
_OP_INDEX = {name: 2 + i for i, name in enumerate(Job._fields[STATUS_START:])}

Waits = dict  # log -> highest seq the caller must see durable before replying

# Per-queue job counters (Engine.queue_counters: queue -> one int per name,
# in this order). Queue names are chosen by clients: past MAX_QUEUE_SERIES
# queues, the rest are counted under OTHER_QUEUE.
QUEUE_COUNTERS = ("scheduled", "fired", "dispatched", "succeeded", "failed", "retried", "dead",
                  "cancelled")
(_Q_SCHEDULED, _Q_FIRED, _Q_DISPATCHED, _Q_SUCCEEDED, _Q_FAILED, _Q_RETRIED, _Q_DEAD,
 _Q_CANCELLED) = range(len(QUEUE_COUNTERS))
MAX_QUEUE_SERIES = 200
OTHER_QUEUE = "_other"
DEAD_EXAMPLES = 3  # job ids kept per take_dead() report


@dataclass(frozen=True)
class EngineConfig:
    shard_count: int = 16
    # Wheel resolution. A due time is rounded up to the next tick, so the
    # tick adds up to one tick (half on average) of lateness; the ticker
    # sleeps until the next due tick, so a fine tick costs little when idle.
    tick_us: int = 100
    limits: Limits = field(default_factory=Limits)
    defaults: Defaults = field(default_factory=Defaults)
    # A cron occurrence later than this when it can fire is a misfire.
    misfire_threshold_us: int = 60 * US
    # How long final jobs stay listable (and their ids stay idempotent).
    retention_us: int = 86_400 * US
    dead_retention_us: int = 7 * 86_400 * US
    # Lease extensions may reach at most this many lease timeouts ahead.
    max_extension_leases: int = 10


class AckItem(NamedTuple):
    job_id: str
    attempt: int
    epoch: int
    success: bool
    error: str = ""
    retryable: bool = True


class Extension(NamedTuple):
    job_id: str
    attempt: int
    epoch: int
    extend_by_us: int


class ItemResult(NamedTuple):
    """Per-item result of a batch of acks or extensions: ``error`` is None on success."""

    job_id: str
    attempt: int
    error: WheelschedError | None
    lease_deadline_us: int = 0


class RemoteJob(NamedTuple):
    """What the owner of another shard said of one of its jobs (cluster
    mode): enough to resolve the dependents waiting for it here."""

    id: str
    state: int
    kind: int
    executions: int
    last_error: str


class DependencyInfo(NamedTuple):
    """A job's dependencies as reads show them."""

    after: tuple[str, ...]  # as submitted
    policy: int  # DependencyPolicy; 0 when the job has no dependencies
    open: list[str]  # not resolved yet (sorted)
    dependents: list[str]  # jobs still waiting for this one (sorted)


class Delivery(NamedTuple):
    job: Job  # as leased: state DISPATCHED, attempt, next_us = lease deadline
    shard: int
    epoch: int
    due_us: int  # when this attempt was due (the fire time, or the retry time)


class Subscription:
    """A worker stream's subscription: queues and in-flight credit."""

    __slots__ = ("closed", "deliver", "in_flight", "max_in_flight", "name", "queues")

    def __init__(self, queues: tuple[str, ...], max_in_flight: int,
                 deliver: Callable[[list[Delivery]], None], name: str) -> None:
        self.queues = queues
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.deliver = deliver
        self.name = name
        self.closed = False


@dataclass
class RecoveryStats:
    records: int = 0
    snapshot_records: int = 0
    jobs: int = 0
    released_leases: int = 0
    seconds: float = 0.0


# ItemResult / Delivery are built once per job on the fire and ack paths,
# with ``untracked``, not NamedTuple's own __new__ (a Python-level function,
# ~2x the cost of tuple.__new__, itself ~2.5x ``untracked``). A Delivery
# holds a Job and ints and a successful ItemResult only atoms, so neither
# can be part of a reference cycle: the collector need not see them. A
# failed ItemResult holds its exception (which can be), and stays tracked.


def _in_batch(exc: WheelschedError, index: int) -> WheelschedError:
    """The same error, naming ``jobs[index]`` instead of ``job`` (batches
    validate with the plain name, so no per-job field strings are built)."""
    where = f"jobs[{index}]"
    if isinstance(exc, NotOwner):
        return exc  # a redirect, the same for every job of its shard
    if isinstance(exc, InvalidArgument):
        field = exc.field
        return InvalidArgument(where + field[3:] if field.startswith("job") else field, exc.message)
    text = str(exc)
    return type(exc)(where + text[3:] if text.startswith("job") else text)


def _always() -> bool:
    return True


def _nobody(shard_id: int) -> tuple[str, int]:
    return "", 0


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        clock: Callable[[], int],
        open_log: Callable[[int], Any],
        wheel_factory: Callable[[int], Any],
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.rand = rand
        self._open_log = open_log
        self._wheel_factory = wheel_factory
        retention = {_SUCCEEDED: config.retention_us, _CANCELLED: config.retention_us,
                     _DEAD: config.dead_retention_us}
        self._retention_of = retention.__getitem__
        self.shards: list[Shard] = []  # the shards this node owns, by id
        # The firing ones and their wheels (a shard's wheel never changes),
        # for tick and next_wakeup_us: _refresh_firing after any change.
        self._firing_shards: list[Shard] = []
        self._firing_wheels: list[Any] = []
        self._by_id: list[Shard | None] = [None] * config.shard_count
        # Cluster mode passes the leadership check (True while this node can
        # prove its etcd lease alive) and who owns the shards it does not;
        # standalone, the node owns every shard for good.
        self.may_fire: Callable[[], bool] = _always
        self.owner_of: Callable[[int], tuple[str, int]] = _nobody
        # queue -> heap of (-priority, next_us, seq, shard, num, job): an
        # entry is current while num is in its shard's ``ready`` (any change
        # to the job, or the shard leaving, takes it out), and then ``job``
        # is still the job's record; stale entries are skipped when popped.
        self._ready: dict[str, list] = {}
        self._ready_seq = itertools.count(1)  # FIFO among equals
        self._subs: dict[str, list[Subscription]] = {}
        self._rr: dict[str, int] = {}
        # job id -> (the subscription holding its lease, its shard). Job ids
        # are unique across shards (the id picks the shard), and an ack that
        # names a job found here needs neither id validation nor shard
        # hashing: the id is one this node dispatched, on a shard it owns.
        self._lease_owner: dict[str, tuple[Subscription, Shard]] = {}
        self._unlogged: dict[Shard, list] = {}  # ops applied in this call, not yet appended
        self.dispatch_paused = False  # set while a node drains for shutdown
        self.counters: dict[str, int] = dict.fromkeys(
            ("scheduled", "fired", "dispatched", "succeeded", "failed", "retried", "dead",
             "cancelled", "lease_expired", "misfired", "requeued", "purged"), 0)
        # queue -> counts in QUEUE_COUNTERS order (one dict lookup + add per job)
        self.queue_counters: dict[str, list[int]] = {}
        # jobs (or cron executions) that went DEAD since take_dead(), and a few of their ids
        self.dead_recent = 0
        self.dead_examples: list[str] = []
        # Dependencies: the attached shards that hold jobs with dependencies
        # (each has its reverse index, Shard.links; empty when no job has any,
        # so the others pay one test), and ids of jobs whose state changed
        # while others wait for them (see _settle).
        self._linked: list[Shard] = []
        self._changed: list[str] = []
        # Jobs of shards other nodes own, as their owners reported them, for
        # the duration of one engine call (schedule, settle_remote).
        self._remote: Mapping[str, RemoteJob] = {}

    def _qrow(self, queue: str) -> list[int]:
        """The per-queue counter row (created on first use; capped)."""
        rows = self.queue_counters
        row = rows.get(queue)
        if row is None:
            if len(rows) >= MAX_QUEUE_SERIES:
                row = rows.get(OTHER_QUEUE)
                queue = OTHER_QUEUE
            if row is None:
                row = rows[queue] = [0] * len(QUEUE_COUNTERS)
        return row

    # ------------------------------------------------------------------ start

    def recover(self, progress: Callable[[int, int], None] | None = None) -> tuple[RecoveryStats, Waits]:
        """Open every shard's log, replay it, and begin a new epoch.

        Returns stats and the waits that make the new epochs durable; the
        node must not serve before they are.
        """
        stats = RecoveryStats()
        # Replay allocates millions of short-lived containers (decoded
        # records) and creates no cycles: cyclic collections would only
        # re-walk what is being built (measured: 1M jobs, 6.1 s -> 3.4 s).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._recover(stats, progress)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _recover(self, stats: RecoveryStats,
                 progress: Callable[[int, int], None] | None) -> tuple[RecoveryStats, Waits]:
        start = self.clock()
        shards = []
        for shard_id in range(self.config.shard_count):
            shard = self._load(shard_id, self._open_log(shard_id), stats)
            shards.append(shard)
            if progress is not None:
                progress(shard_id + 1, self.config.shard_count)
        waits: Waits = {}
        for shard in shards:
            stats.released_leases += self._attach(shard, shard.epoch + 1, "lease lost: node restarted")
            shard.firing = True  # the node serves only once ``waits`` are durable
        self._refresh_firing()
        self._recheck_dependencies()
        self._flush(waits)
        stats.seconds = (self.clock() - start) / US
        return stats, waits

    def _load(self, shard_id: int, log: Any, stats: RecoveryStats) -> Shard:
        """Replay a shard's log into a new, detached Shard and open the log
        for appending. Touches no engine state, so a node can load a shard it
        is taking over on another thread while the engine serves the rest."""
        shard = Shard(shard_id, log, self._wheel_factory(self.clock() // self.config.tick_us),
                      tick_us=self.config.tick_us, retention_us=self._retention_of)
        shard.begin_replay()
        for kind, _first_seq, payloads in log.replay_batches():
            if kind == SNAPSHOT:
                restore = shard.restore
                for payload in payloads:
                    restore(payload)
                stats.snapshot_records += len(payloads)
            else:
                apply = shard.apply
                for payload in payloads:
                    apply(payload)
                stats.records += len(payloads)
        shard.end_replay()
        log.open()
        stats.jobs += len(shard.jobs)
        return shard

    def load_shard(self, shard_id: int, log: Any) -> tuple[Shard, RecoveryStats]:
        """Cluster mode, any thread: replay a shard this node is taking over.
        Pair with ``attach_shard`` on the engine's thread."""
        stats = RecoveryStats()
        start = self.clock()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            shard = self._load(shard_id, log, stats)
        finally:
            if gc_was_enabled:
                gc.enable()
        stats.seconds = (self.clock() - start) / US
        return shard, stats

    def attach_shard(self, shard: Shard, epoch: int) -> tuple[int, Waits]:
        """Cluster mode: serve a loaded shard under ``epoch`` (its leader
        key's create_revision). Returns the leases released and the waits
        that make the epoch durable; call ``start_firing`` after them."""
        if epoch <= 0:
            raise InvalidArgument("epoch", "must be positive")
        released = self._attach(shard, epoch, "lease lost: shard changed owner")
        self._recheck_dependencies()
        waits: Waits = {}
        self._flush(waits)
        return released, waits

    def _attach(self, shard: Shard, epoch: int, reason: str) -> int:
        if self._by_id[shard.id] is not None:
            raise FailedPrecondition(f"shard {shard.id} is already attached")
        self._by_id[shard.id] = shard
        self.shards.append(shard)
        self.shards.sort(key=lambda s: s.id)
        if shard.deps:
            self._note_linked(shard)
        self._begin_epoch(shard, epoch)
        return self._release_leases(shard, reason)

    def start_firing(self, shard_id: int) -> None:
        shard = self._by_id[shard_id]
        if shard is not None and not shard.draining:
            shard.firing = True
            self._refresh_firing()

    def _refresh_firing(self) -> None:
        firing = [shard for shard in self.shards if shard.firing]
        self._firing_shards = firing
        self._firing_wheels = [shard.wheel for shard in firing]

    def drain_shard(self, shard_id: int) -> Shard | None:
        """Stop firing and dispatching a shard and refuse new writes to it;
        acks and lease extensions of what it already dispatched go on, so a
        graceful hand-over redelivers nothing. Jobs that fired but were not
        dispatched stay SCHEDULED and due: the next owner fires them."""
        shard = self._by_id[shard_id]
        if shard is not None:
            shard.firing = False
            self._refresh_firing()
            shard.draining = True
            shard.clear_ready()
            # Its ready-queue entries go now (they would be skipped, but
            # until popped they keep the shard's records alive).
            for queue, heap in list(self._ready.items()):
                kept = [entry for entry in heap if entry[3] is not shard]
                if len(kept) != len(heap):
                    heapq.heapify(kept)
                    if kept:
                        self._ready[queue] = kept
                    else:
                        del self._ready[queue]
        return shard

    def detach_shard(self, shard_id: int) -> Shard | None:
        """Forget a shard (handed over, or leadership lost): nothing more is
        fired, dispatched, acked or written for it here. Its leases return
        their workers' credit; the next owner releases them under its new
        epoch. The caller closes the returned shard's log."""
        shard = self.drain_shard(shard_id)
        if shard is None:
            return None
        self._by_id[shard_id] = None
        self.shards.remove(shard)
        if shard in self._linked:
            self._linked.remove(shard)
        self._unlogged.pop(shard, None)
        owner = self._lease_owner
        for job_id in [j for j, lease in owner.items() if lease[1] is shard]:
            owner.pop(job_id)[0].in_flight -= 1
        return shard

    def _begin_epoch(self, shard: Shard, epoch: int) -> None:
        self._write(shard, [EPOCH, epoch])

    def _release_leases(self, shard: Shard, reason: str) -> int:
        """Every lease of an older epoch ends now. Its job is due again at
        once and the lost attempt does not count against max_attempts (the
        node failed, not the job); the redelivery reuses the attempt number
        under the new epoch, so (id, attempt, epoch) still names one delivery."""
        now = self.clock()
        leased = [j for j in shard.jobs.values() if j.state == _DISPATCHED]
        for job in leased:
            self._update(shard, job, state=_SCHEDULED, attempt=job.attempt - 1,
                         next_us=now, last_error=reason)
        return len(leased)

    # ------------------------------------------------------------------ writes

    def _write(self, shard: Shard, op: list) -> None:
        """Apply an op now; it reaches the log at the end of the engine call.

        Every public method that changes state ends with ``_flush``, which
        appends all ops of the call to each shard's log with one
        ``append_many`` (one queue operation and one writer wake-up per
        shard, not per op) before the method returns. Nothing can observe
        the state in between — the engine is single-threaded and never
        waits — and callers answer only after the returned waits are
        durable, so this is still write-ahead at the granularity of a call.
        """
        shard.apply(op)
        self._log_later(shard, op)

    def _log_later(self, shard: Shard, op: list) -> None:
        """Queue ``op``, applied already, for the shard's log (see ``_write``)."""
        ops = self._unlogged.get(shard)
        if ops is None:
            self._unlogged[shard] = [op]
        else:
            ops.append(op)

    def _flush(self, waits: Waits | None = None) -> None:
        if self._changed:
            self._settle(self.clock(), fire=False)
        if not self._unlogged:
            return
        unlogged, self._unlogged = self._unlogged, {}
        for shard, ops in unlogged.items():
            log = shard.log
            seq = log.append_many(ops)
            if waits is not None and seq > waits.get(log, 0):
                waits[log] = seq
            if log.snapshot_due():
                log.snapshot(shard.snapshot_records())

    def shard_for(self, job_id: str) -> Shard:
        """The job's shard, if this node owns it; else a redirect."""
        shard_id = shard_of(job_id, self.config.shard_count)
        shard = self._by_id[shard_id]
        if shard is None:
            raise NotOwner(shard_id, *self.owner_of(shard_id))
        return shard

    def _writable_shard(self, job_id: str) -> Shard:
        """As ``shard_for``, but a shard being handed over takes no new work."""
        shard = self.shard_for(job_id)
        if shard.draining:
            raise NotOwner(shard.id, *self.owner_of(shard.id))
        return shard

    def schedule(self, requests: Sequence[JobRequest],
                 remote: Mapping[str, RemoteJob] | None = None) -> tuple[list[Job], Waits]:
        """Schedule jobs, all or nothing: every request is validated (and
        checked against existing jobs and limits) before any is written.
        Returns the jobs in request order (for an id that exists with the
        same spec, the existing job: scheduling is idempotent).

        ``remote``: in cluster mode, the dependencies named by the requests
        that live on shards other nodes own (``remote_dependencies_of``), as
        their owners reported them; one missing from it is unknown."""
        self._remote = remote or {}
        try:
            return self._schedule(requests)
        finally:
            self._remote = {}

    def _schedule(self, requests: Sequence[JobRequest]) -> tuple[list[Job], Waits]:
        limits = self.config.limits
        if not requests:
            raise InvalidArgument("jobs", "at least one job is required")
        if len(requests) > limits.max_batch_jobs:
            raise ResourceExhausted(f"jobs: {len(requests)} jobs exceeds the batch limit of "
                                    f"{limits.max_batch_jobs}")
        now = self.clock()
        waits: Waits = {}
        picked: list[tuple[Shard, str]] = []  # per request: where its job is (or will be)
        new: dict[str, tuple[Shard, Job]] = {}
        added: dict[Shard, int] = {}
        defaults = self.config.defaults
        # new jobs with dependencies: id -> (request index, after, policy)
        graph: dict[str, tuple[int, tuple[str, ...], int]] = {}
        for i, req in enumerate(requests):
            try:
                if not isinstance(req, JobRequest):
                    raise InvalidArgument("job", "is not a job request")
                if not req.id:
                    req = req._replace(id=uuid.uuid4().hex)
                check_job_id(req.id, limits, "job.id")
                shard = self._writable_shard(req.id)
                job = build_job(req, now_us=now, num=shard.next_num + added.get(shard, 0),
                                limits=limits, defaults=defaults, check_id=False)
                after, policy = (), 0
                if req.after or req.on_dependency_failure:
                    after, policy = check_after(req.after, req.on_dependency_failure, job.id, limits)
            except WheelschedError as exc:
                if len(requests) == 1:
                    raise
                raise _in_batch(exc, i) from None
            existing = shard.jobs.get(job.id)
            existing_deps = None
            if existing is None and job.id in new:
                existing = new[job.id][1]
                if job.id in graph:
                    existing_deps = graph[job.id][1:]
            elif existing is not None and shard.deps:
                deps = shard.deps.get(job.id)
                if deps is not None:
                    existing_deps = (deps.after, deps.policy)
            if existing is not None:
                if spec_of(existing) != spec_of(job) or existing_deps != ((after, policy) if after else None):
                    where = "job" if len(requests) == 1 else f"jobs[{i}]"
                    raise AlreadyExists(f"{where}.id: job {job.id!r} exists with a different spec")
                # The existing job's own op may not be durable yet: wait for the log's tip.
                waits[shard.log] = max(waits.get(shard.log, 0), shard.log.last_seq)
            else:
                count = added.get(shard, 0) + 1
                if shard.active + count > limits.max_pending_per_shard:
                    raise ResourceExhausted(
                        f"shard {shard.id} holds {shard.active} pending jobs; the limit is "
                        f"{limits.max_pending_per_shard}")
                added[shard] = count
                new[job.id] = (shard, job)
                if after:
                    graph[job.id] = (i, after, policy)
            picked.append((shard, job.id))
        dep_ops = self._dependency_ops(graph, new, len(requests) == 1) if graph else {}
        # Everything is valid: write, one log call per shard.
        by_shard: dict[Shard, list[list]] = {}
        rows = self.queue_counters
        for shard, job in new.values():
            op = dep_ops.get(job.id) if dep_ops else None
            if op is not None:
                self._note_linked(shard)
            by_shard.setdefault(shard, []).append(op or [SCHEDULE, job])
            (rows.get(job.queue) or self._qrow(job.queue))[_Q_SCHEDULED] += 1
        for shard, ops in by_shard.items():
            seq = shard.log.append_many(ops)
            for op in ops:
                shard.apply(op)
            waits[shard.log] = max(waits.get(shard.log, 0), seq)
            if shard.log.snapshot_due():
                shard.log.snapshot(shard.snapshot_records())
        self.counters["scheduled"] += len(new)
        if self._changed:  # dependencies that had already failed: their policy, now
            self._flush(waits)
        return [shard.jobs[job_id] for shard, job_id in picked], waits

    def _dependency_ops(self, graph: dict[str, tuple[int, tuple[str, ...], int]],
                        new: dict[str, tuple[Shard, Job]], single: bool) -> dict[str, list]:
        """Check the dependencies of a batch's new jobs against the batch and
        the existing jobs (unknown ids, cycles), and build their SCHEDULE ops.
        Raises before anything is written. Dependencies that already ended
        badly are queued in ``_changed``: their policy applies once written."""
        def where(i: int) -> str:
            return "job" if single else f"jobs[{i}]"

        ops: dict[str, list] = {}
        failed: set[str] = set()
        for job_id, (i, after, policy) in graph.items():
            open_ids: list[str] = []
            seen: dict[str, int] = {}
            for k, dep_id in enumerate(after):
                dep = new[dep_id][1] if dep_id in new else (self._find(dep_id)
                                                             or self._remote.get(dep_id))
                if dep is None:
                    raise InvalidArgument(f"{where(i)}.after[{k}]", f"unknown job {dep_id!r} (neither "
                                          "in this batch nor an existing job)")
                state = dep.state
                if state == _SUCCEEDED:
                    continue  # resolved at submission
                if dep.kind == _CRON:
                    seen[dep_id] = dep.executions  # only later successes count
                if state in (_DEAD, _CANCELLED):
                    failed.add(dep_id)
                open_ids.append(dep_id)
            shard, job = new[job_id]
            if open_ids:
                job = replace(job, state=_WAITING)
                new[job_id] = (shard, job)
            ops[job_id] = [SCHEDULE, job, [policy, list(after),
                                           None if len(open_ids) == len(after) else open_ids,
                                           seen or None]]
        cycle = find_cycle({job_id: after for job_id, (_, after, _) in graph.items()})
        if cycle is not None:
            raise InvalidArgument(f"{where(graph[cycle[0]][0])}.after",
                                  "dependency cycle: " + " -> ".join(map(repr, cycle)))
        self._changed.extend(failed)
        return ops

    def _find(self, job_id: str) -> Job | None:
        """A job of a shard this node owns (None: unknown, or not owned here)."""
        shard = self._by_id[shard_of(job_id, self.config.shard_count)]
        return None if shard is None else shard.jobs.get(job_id)

    # -- dependencies across nodes (cluster mode) ----------------------------------
    #
    # The waiting side pulls: the node asks the owners of the dependencies
    # its waiting jobs name but whose shards it does not own
    # (``remote_dependencies``) for their state, and hands the answers to
    # ``settle_remote``, which writes the same RESOLVE (or cancel) ops a local
    # dependency would. RESOLVE is idempotent, so asking again after a crash
    # or an owner change is safe, and nothing is written on the dependency's
    # side: a dependency's shard moving between nodes needs no hand-over.

    def _remote_shard(self, job_id: str) -> bool:
        return self._by_id[shard_of(job_id, self.config.shard_count)] is None

    def remote_dependencies_of(self, requests: Sequence[JobRequest]) -> list[str]:
        """Dependencies named by ``requests`` that live on shards this node
        does not own (and are not in the batch itself)."""
        batch = {r.id for r in requests if isinstance(r, JobRequest)}
        out: dict[str, None] = {}
        for r in requests:
            if isinstance(r, JobRequest) and r.after and not isinstance(r.after, str | bytes):
                for dep_id in r.after:
                    if isinstance(dep_id, str) and dep_id and dep_id not in batch \
                            and self._remote_shard(dep_id):
                        out[dep_id] = None
        return list(out)

    def remote_dependencies(self) -> list[str]:
        """Open dependencies of this node's waiting jobs on shards it does not own."""
        out: set[str] = set()
        for shard in self._linked:
            for dep_id in shard.links:
                if dep_id not in out and self._remote_shard(dep_id):
                    out.add(dep_id)
        return sorted(out)

    def settle_remote(self, jobs: Iterable[RemoteJob]) -> Waits:
        """Resolve the dependents waiting here for jobs other nodes own."""
        remote = {j.id: j for j in jobs}
        waits: Waits = {}
        if not remote:
            return waits
        self._remote = remote
        try:
            self._changed.extend(remote)
            self._settle(self.clock(), fire=True)
            self._dispatch()
            self._flush(waits)
        finally:
            self._remote = {}
        return waits

    def job_states(self, ids: Iterable[str]) -> list[tuple[str, Job | None, bool]]:
        """(id, job or None, whether this node owns its shard) per id: what
        another node asks to settle its dependents."""
        limits = self.config.limits
        out = []
        for job_id in ids:
            check_job_id(job_id, limits, "ids")
            out.append((job_id, self._find(job_id), not self._remote_shard(job_id)))
        return out

    def _waited_for(self, job_id: str) -> bool:
        return any(job_id in shard.links for shard in self._linked)

    def _note_linked(self, shard: Shard) -> None:
        if shard not in self._linked:
            self._linked.append(shard)

    def _recheck_dependencies(self) -> None:
        """Re-derive what a crash (or a hand-over) may have lost between a
        dependency's end, in its shard's log, and its dependents' RESOLVE, in
        theirs: every open dependency is checked against its current state
        at the next ``_flush`` (see deps)."""
        open_deps: set[str] = set()
        for shard in self._linked:
            for deps in shard.deps.values():
                open_deps.update(deps.open)
        self._changed.extend(open_deps)

    def cancel(self, job_id: str) -> tuple[Job, Waits]:
        check_job_id(job_id, self.config.limits)
        shard = self._writable_shard(job_id)
        job = shard.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        waits: Waits = {shard.log: shard.log.last_seq}
        if job.state == _CANCELLED:
            return job, waits
        if job.state in FINAL_STATES:
            raise FailedPrecondition(f"job {job_id!r} is {JobState(job.state).name}; only a job "
                                     "that has not finished can be cancelled")
        now = self.clock()
        self._update(shard, job, state=_CANCELLED, next_us=0, finished_us=now)
        self._flush(waits)
        self.counters["cancelled"] += 1
        self._qrow(job.queue)[_Q_CANCELLED] += 1
        return shard.jobs[job_id], waits

    def requeue(self, job_id: str) -> tuple[Job, Waits]:
        check_job_id(job_id, self.config.limits)
        shard = self._writable_shard(job_id)
        job = shard.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if job.state != _DEAD:
            raise FailedPrecondition(f"job {job_id!r} is {JobState(job.state).name}; only a DEAD "
                                     "job can be requeued")
        if shard.active + 1 > self.config.limits.max_pending_per_shard:
            raise ResourceExhausted(f"shard {shard.id} is at its pending-jobs limit")
        now = self.clock()
        waits: Waits = {}
        self._update(shard, job, state=_SCHEDULED, attempt=0, next_us=now, fire_us=now,
                     finished_us=0)
        self._flush(waits)
        self.counters["requeued"] += 1
        return shard.jobs[job_id], waits

    def _update(self, shard: Shard, job: Job, **status: Any) -> None:
        """Log and apply a change of ``job``'s status fields."""
        op = [UPDATE, job.id, *job[STATUS_START:]]
        for name, value in status.items():
            op[_OP_INDEX[name]] = value
        if job.state == _DISPATCHED:
            self._end_lease(job.id)
        self._write(shard, op)
        if self._linked and self._waited_for(job.id):
            self._changed.append(job.id)

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> tuple[Job, Shard]:
        check_job_id(job_id, self.config.limits)
        shard = self.shard_for(job_id)
        job = shard.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job, shard

    def list(self, *, queue: str = "", states: Iterable[int] = (), page_size: int = 100,
             page_token: str = "") -> tuple[list[tuple[Job, Shard]], str]:
        """Jobs in (shard, id) order. The page token is the last (shard, id)
        returned, so pages stay consistent while jobs come and go."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        page_size = min(page_size or 100, 1000)
        wanted = frozenset(int(s) for s in states)
        if any(s not in JobState.__members__.values() for s in wanted):
            raise InvalidArgument("states", "unknown job state")
        start_shard, after = 0, ""
        if page_token:
            shard_part, sep, after = page_token.partition(":")
            if not sep or not shard_part.isdigit() or int(shard_part) >= self.config.shard_count:
                raise InvalidArgument("page_token", "is not a token this node issued")
            start_shard = int(shard_part)
        out: list[tuple[Job, Shard]] = []
        for shard in self.shards:
            if shard.id < start_shard:
                continue
            if shard.id > start_shard:
                after = ""
            ids = shard.sorted_ids()
            jobs = shard.jobs
            for i in range(bisect.bisect_right(ids, after) if after else 0, len(ids)):
                job = jobs[ids[i]]
                if (queue and job.queue != queue) or (wanted and job.state not in wanted):
                    continue
                if len(out) == page_size:  # one more match: there is a next page
                    last_job, last_shard = out[-1]
                    return out, f"{last_shard.id}:{last_job.id}"
                out.append((job, shard))
        return out, ""

    # ------------------------------------------------------------------ workers

    def subscribe(self, queues: Sequence[str], max_in_flight: int,
                  deliver: Callable[[list[Delivery]], None], name: str = "") -> Subscription:
        limits = self.config.limits
        if not queues:
            raise InvalidArgument("queues", "name at least one queue")
        for q in queues:
            if not isinstance(q, str) or not q or len(q) > limits.max_queue_chars:
                raise InvalidArgument("queues", f"invalid queue name {q!r}")
        if not 1 <= max_in_flight <= limits.max_in_flight:
            raise InvalidArgument("max_in_flight", f"must be 1-{limits.max_in_flight}")
        sub = Subscription(tuple(dict.fromkeys(queues)), max_in_flight, deliver, name)
        for q in sub.queues:
            self._subs.setdefault(q, []).append(sub)
        self._dispatch()
        self._flush()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The worker's leases stay until they are acked (possibly on a new
        stream) or run out; only its credit goes away."""
        sub.closed = True
        for q in sub.queues:
            subs = self._subs.get(q)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs[q]

    def _end_lease(self, job_id: str) -> None:
        lease = self._lease_owner.pop(job_id, None)
        if lease is not None:
            lease[0].in_flight -= 1

    def _leased(self, job_id: str, attempt: int, epoch: int) -> tuple[Shard, Job]:
        """The job if (id, attempt, epoch) is its current lease; else why not."""
        lease = self._lease_owner.get(job_id) if type(job_id) is str else None
        if lease is not None:
            shard = lease[1]
        else:  # not leased on a stream of this node (or not a valid id)
            check_job_id(job_id, self.config.limits, "job_id")
            shard = self.shard_for(job_id)
        job = shard.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if epoch != shard.epoch:
            raise FailedPrecondition(f"stale epoch {epoch} for job {job_id!r}: shard {shard.id} "
                                     f"is at epoch {shard.epoch}")
        if job.state != _DISPATCHED or job.attempt != attempt:
            raise FailedPrecondition(
                f"attempt {attempt} of job {job_id!r} is not leased (state "
                f"{JobState(job.state).name}, attempt {job.attempt})")
        return shard, job

    def _each_lease(self, items: Sequence[AckItem] | Sequence[Extension],
                    act: Callable[[Shard, Job, Any], int]) -> list[ItemResult]:
        """For each item, find the lease it quotes and ``act`` on it; a
        WheelschedError (stale epoch, not leased, bad value) fails only that
        item and changes nothing. ``act`` returns a new lease deadline or 0."""
        results = []
        add = results.append
        leased = self._leased
        for item in items:
            job_id, attempt, epoch = item[0], item[1], item[2]
            try:
                shard, job = leased(job_id, attempt, epoch)
                deadline = act(shard, job, item)
            except WheelschedError as exc:
                add(ItemResult(job_id, attempt, exc))
                continue
            add(untracked(ItemResult, (job_id, attempt, None, deadline)))
        return results

    def ack(self, items: Sequence[AckItem]) -> tuple[list[ItemResult], Waits]:
        """Apply acks; each item succeeds or fails on its own (no change on failure).

        The loop is ``_each_lease`` with the success of a one-shot job (the
        ack a node takes most) written out in it, not behind three calls
        per item (an action, a success handler, the end of the lease), and
        the node-wide counter is added once per call."""
        now = self.clock()
        results: list[ItemResult] = []
        add = results.append
        leased, owner, unlogged = self._leased, self._lease_owner, self._unlogged
        rows = self.queue_counters
        succeeded = 0
        for item in items:
            job_id, attempt = item[0], item[1]
            try:
                shard, job = leased(job_id, attempt, item[2])
                if not item.success:
                    self._fail(shard, job, now, (item.error or "failed")[:1024], item.retryable)
                else:
                    succeeded += 1
                    (rows.get(job.queue) or self._qrow(job.queue))[_Q_SUCCEEDED] += 1
                    if job.kind == _CRON:
                        self._next_execution(shard, job, now, executions=job.executions + 1,
                                             last_error="")
                    else:
                        # A SUCCEED op, applied now (a second ack of this
                        # lease in the same call must find it ended), and
                        # logged as one op per run of successes: the call's
                        # last op of this shard, if that is a SUCCEED, takes
                        # the job too, so the log keeps the order in which
                        # the ops were applied. The lease ends as in
                        # _end_lease, written out.
                        lease = owner.pop(job_id, None)
                        if lease is not None:
                            lease[0].in_flight -= 1
                        shard.succeed(job, now)
                        ops = unlogged.get(shard)
                        last = ops[-1] if ops else None
                        if last is not None and last[0] == SUCCEED and last[1] == now:
                            last[2].append(job_id)
                        else:
                            self._log_later(shard, [SUCCEED, now, [job_id]])
                        if self._linked and self._waited_for(job_id):
                            self._changed.append(job_id)
            except WheelschedError as exc:
                add(ItemResult(job_id, attempt, exc))
                continue
            add(untracked(ItemResult, (job_id, attempt, None, 0)))
        self.counters["succeeded"] += succeeded
        if self._changed:  # dependents this made due are dispatched in this call
            self._settle(now, fire=True)
        self._dispatch()
        waits: Waits = {}
        self._flush(waits)
        return results, waits

    def extend(self, items: Sequence[Extension]) -> tuple[list[ItemResult], Waits]:
        now = self.clock()
        limit_leases = self.config.max_extension_leases

        def prolong(shard: Shard, job: Job, item: Extension) -> int:
            limit = job.lease_us * limit_leases
            if not 0 < item.extend_by_us <= limit:
                raise InvalidArgument("extend_by_ms", f"must be positive and at most "
                                      f"{limit // 1000} ms for job {item.job_id!r}")
            deadline = now + item.extend_by_us
            # Not through _update: the lease (and its owner) continues.
            self._write(shard, [UPDATE, job.id, *replace(job, next_us=deadline)[STATUS_START:]])
            return deadline

        results = self._each_lease(items, prolong)
        waits: Waits = {}
        self._flush(waits)
        return results, waits

    # -- outcomes of an attempt ---------------------------------------------------

    def _fail(self, shard: Shard, job: Job, now: int, error: str, retryable: bool) -> None:
        self.counters["failed"] += 1
        row = self.queue_counters.get(job.queue) or self._qrow(job.queue)
        row[_Q_FAILED] += 1
        if retryable and job.attempt < job.max_attempts:
            self.counters["retried"] += 1
            row[_Q_RETRIED] += 1
            delay = backoff_us(job, job.attempt, self.rand())
            self._update(shard, job, state=_SCHEDULED, next_us=now + delay,
                         last_error=error)
        elif job.kind == _CRON:
            # This execution is dead; the schedule goes on.
            self.counters["dead"] += 1
            row[_Q_DEAD] += 1
            self._note_dead(job.id)
            self._next_execution(shard, job, now, last_error=error,
                                 dead_executions=job.dead_executions + 1)
        else:
            self.counters["dead"] += 1
            row[_Q_DEAD] += 1
            self._note_dead(job.id)
            self._update(shard, job, state=_DEAD, next_us=0, finished_us=now,
                         last_error=error)

    def _note_dead(self, job_id: str) -> None:
        self.dead_recent += 1
        if len(self.dead_examples) < DEAD_EXAMPLES:
            self.dead_examples.append(job_id)

    def take_dead(self) -> tuple[int, list[str]]:
        """How many jobs went DEAD since the last call, and up to
        ``DEAD_EXAMPLES`` of their ids (for one aggregated log line)."""
        n, examples = self.dead_recent, self.dead_examples
        self.dead_recent, self.dead_examples = 0, []
        return n, examples

    def _next_execution(self, shard: Shard, job: Job, now: int, **status: Any) -> None:
        """Arm the cron job for its next occurrence. If that is already past
        (the execution ran long), it fires at once and the misfire policy is
        applied then, in ``_late_cron`` — the one place misfires are decided."""
        occurrence = cron.next_after(job.cron_expr, job.time_zone, job.fire_us)
        deps = shard.deps.get(job.id) if shard.deps else None
        if deps is not None and deps.seen:
            reopened = deps.reopen_ids()
            if reopened:  # it waits for new successes of recurring dependencies (see deps)
                self._reopen(shard, job, reopened, state=_WAITING, attempt=0, next_us=occurrence,
                             fire_us=occurrence, **status)
                return
        self._update(shard, job, state=_SCHEDULED, attempt=0, next_us=occurrence,
                     fire_us=occurrence, **status)

    def _reopen(self, shard: Shard, job: Job, reopened: set[str], **status: Any) -> None:
        """Log and apply REOPEN: like ``_update``, and the recurring
        dependencies open again; those that succeeded meanwhile resolve now."""
        if job.state == _DISPATCHED:
            self._end_lease(job.id)
        op = [REOPEN, job.id, *job[STATUS_START:]]
        for name, value in status.items():
            op[_OP_INDEX[name]] = value
        self._write(shard, op)
        self._changed.extend(reopened)
        if self._waited_for(job.id):
            self._changed.append(job.id)

    # ------------------------------------------------------------------ time

    def next_wakeup_us(self) -> int | None:
        """When ``tick`` next has work: the earliest wheel expiry of any shard
        (the ticker sleeps until then), or now if jobs wait for a worker."""
        best = earliest_expiry(self._firing_wheels)
        return None if best is None else best * self.config.tick_us

    def tick(self) -> int:
        """Fire everything due by the clock; returns how many jobs fired."""
        if not self.may_fire():
            return 0
        now = self.clock()
        now_tick = now // self.config.tick_us
        fired_total = 0
        ready, ready_seq, heappush = self._ready, self._ready_seq, heapq.heappush
        rows = self.queue_counters
        shards, wheels = self._firing_shards, self._firing_wheels
        for i in due_positions(wheels, now_tick):
            shard = shards[i]
            fired = wheels[i].advance(now_tick)
            if not len(fired):
                continue
            jobs, by_num = shard.jobs, shard.by_num
            shard_ready = shard.ready
            for num in fired:
                job = jobs[by_num[num]]
                state = job.state
                if state == _SCHEDULED:
                    if job.kind == _CRON and now - job.next_us > self.config.misfire_threshold_us:
                        job = self._late_cron(shard, job, now)
                        if job.next_us > now:
                            continue  # SKIP: re-armed for its next occurrence
                    queue = job.queue
                    heap = ready.get(queue)
                    if heap is None:
                        heap = ready[queue] = []
                    heappush(heap, (-job.priority, job.next_us, next(ready_seq), shard, num, job))
                    shard_ready.add(num)
                    fired_total += 1
                    (rows.get(queue) or self._qrow(queue))[_Q_FIRED] += 1
                elif state == _DISPATCHED:
                    self.counters["lease_expired"] += 1
                    self._fail(shard, job, now, "lease expired", True)
                else:
                    if self._linked and self._waited_for(job.id):
                        # Resolve its waiting dependents first (only a crash
                        # can have left any; recovery resolves them too).
                        self._changed.append(job.id)
                        self._settle(now, fire=False)
                    self.counters["purged"] += 1
                    shard.purge(job)
            shard.note_ready(fired)
        self.counters["fired"] += fired_total
        if self._changed:  # e.g. a lease ran out for the last time: DEAD
            self._settle(now, fire=True)
        if ready:
            self._dispatch()
        self._flush()
        return fired_total

    # -- dependencies (wheelsched.engine.deps) -------------------------------------

    def _settle(self, now: int, fire: bool) -> None:
        """Resolve the waiting dependents of every job in ``_changed``: a
        RESOLVE to each dependent's shard (routed by its id: in cluster mode
        the one place that becomes a message to another node), or, for a
        failed dependency under CANCEL, the dependent's cancel, whose own
        dependents are then settled the same way (a work list, not recursion:
        chains can be long). With ``fire``, dependents that became due go
        straight to the ready queues, for the caller's ``_dispatch``."""
        changed = self._changed
        threshold = self.config.misfire_threshold_us
        while changed:
            dep_id = changed.pop()
            waiters = [(shard, job_id) for shard in self._linked
                       for job_id in shard.links.get(dep_id, ())]
            if not waiters:
                continue
            dep = self._find(dep_id) or self._remote.get(dep_id)
            if dep is None:
                continue  # unknown after a crash cut its batch, or not owned here: stays open
            outcome, count = dep.state, 0
            if outcome in _FINAL:
                pass
            elif dep.kind == _CRON and dep.executions:
                outcome, count = _SUCCEEDED, dep.executions
            else:
                continue  # not resolved by this change
            for shard, job_id in waiters:
                deps = shard.deps[job_id]
                if count and count <= deps.seen.get(dep_id, 0):
                    continue  # this success was consumed by an earlier execution
                job = shard.jobs[job_id]
                if outcome != _SUCCEEDED and deps.policy == CANCEL:
                    reason = f"dependency {dep_id!r} ended {JobState(outcome).name}"
                    if dep.last_error:
                        reason += f": {dep.last_error}"
                    self._update(shard, job, state=_CANCELLED, next_us=0, finished_us=now,
                                 last_error=reason[:1024])
                    self.counters["cancelled"] += 1
                    self._qrow(job.queue)[_Q_CANCELLED] += 1
                    continue
                self._write(shard, [RESOLVE, job_id, dep_id, outcome, count])
                if fire and shard.firing:
                    job = shard.jobs[job_id]
                    if (job.state == _SCHEDULED and job.next_us <= now
                            and not (job.kind == _CRON and now - job.next_us > threshold)):
                        self._make_ready(shard, job)

    def _make_ready(self, shard: Shard, job: Job) -> None:
        """A job that is due now goes to its ready queue without waiting for
        the next tick (its timer is cancelled), as ``tick`` would put it."""
        shard.wheel.cancel(job.num)
        heap = self._ready.get(job.queue)
        if heap is None:
            heap = self._ready[job.queue] = []
        heapq.heappush(heap, (-job.priority, job.next_us, next(self._ready_seq), shard, job.num, job))
        shard.ready.add(job.num)
        shard.note_ready((job.num,))
        self.counters["fired"] += 1
        self._qrow(job.queue)[_Q_FIRED] += 1

    def dependency_info(self, job: Job, shard: Shard, dependents: bool = True) -> DependencyInfo | None:
        """What ``job`` waits for and (with ``dependents``) who waits for it;
        None when neither applies."""
        deps = shard.deps.get(job.id) if shard.deps else None
        waiting = [w for s in self._linked for w in s.links.get(job.id, ())] if dependents else None
        if deps is None and not waiting:
            return None
        if deps is None:
            return DependencyInfo((), 0, [], sorted(waiting or ()))
        return DependencyInfo(deps.after, deps.policy, sorted(deps.open), sorted(waiting or ()))

    def _late_cron(self, shard: Shard, job: Job, now: int) -> Job:
        """A cron occurrence fires later than the misfire threshold: apply
        the job's policy and count the misfires. The decision is logged, and
        a job that fires now gets ``next_us = now``, so neither a replay nor
        the next tick takes it for late again."""
        fire_at, nominal, missed = cron.plan(job.cron_expr, job.time_zone, job.misfire,
                                             job.next_us, now, self.config.misfire_threshold_us)
        self.counters["misfired"] += missed
        self._update(shard, job, next_us=fire_at, fire_us=nominal,
                     misfires=job.misfires + missed)
        if fire_at <= now:
            shard.wheel.cancel(job.num)  # it goes to the ready queue now, not back to the wheel
        return shard.jobs[job.id]

    def _dispatch(self) -> None:
        """Hand ready jobs to subscribers with credit (round robin per queue)."""
        if not self._ready or not self._subs or self.dispatch_paused or not self.may_fire():
            return
        now = self.clock()
        per_shard: dict[Shard, list] = {}
        per_sub: dict[Subscription, list] = {}
        owner = self._lease_owner
        heappop = heapq.heappop
        for queue in list(self._ready):
            subs = [s for s in self._subs.get(queue, ()) if s.in_flight < s.max_in_flight]
            if not subs:
                continue
            heap = self._ready[queue]
            turn = self._rr.get(queue, 0)
            sent = 0
            while heap and subs:
                _, due, _, shard, num, job = heappop(heap)
                try:
                    shard.ready.remove(num)
                except KeyError:
                    continue  # changed since it fired (cancelled, or the shard handed over)
                job_id = job.id  # still the job's record: any change takes it out of ready
                turn = (turn + 1) % len(subs)
                sub = subs[turn]
                sub.in_flight += 1
                if sub.in_flight >= sub.max_in_flight:
                    subs.pop(turn)
                owner[job_id] = (sub, shard)
                # Applied now, logged below as one DISPATCH op per shard.
                attempt, deadline = job.attempt + 1, now + job.lease_us
                leased = shard.lease(job, attempt, deadline)
                items = per_shard.get(shard)
                if items is None:
                    items = per_shard[shard] = []
                items.append((job_id, attempt, deadline))
                lst = per_sub.get(sub)
                if lst is None:
                    lst = per_sub[sub] = []
                lst.append(untracked(Delivery, (leased, shard.id, shard.epoch, due)))
                sent += 1
            if sent:
                self._qrow(queue)[_Q_DISPATCHED] += sent
            self._rr[queue] = turn
            if not heap:
                del self._ready[queue]
        if not per_shard:
            return
        for shard, items in per_shard.items():
            self._log_later(shard, [DISPATCH, items])
            self.counters["dispatched"] += len(items)
        for sub, lst in per_sub.items():
            sub.deliver(lst)

    # ------------------------------------------------------------------ status

    def backlog(self, shard: Shard, now: int) -> tuple[int, int]:
        """Jobs of ``shard`` that are due and wait for a worker, and how late
        the oldest of them is (µs): the shard's lag, for status pages."""
        oldest = shard.oldest_ready_us()
        return len(shard.ready), 0 if oldest is None else max(0, now - oldest)

    def close(self) -> None:
        for shard in self.shards:
            shard.log.close()
