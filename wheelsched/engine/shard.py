"""One shard: its job table, its timing wheel, and the one apply function.

Every change to a shard is an *op* (a short msgpack-able list) that is first
appended to the shard's write-ahead log and then passed to ``Shard.apply``.
Replay after a crash passes the same ops, read back from the log, to the same
function, so the live path and recovery cannot drift apart. Ops carry every
value that depends on time or chance (due times, backoffs with their jitter,
cron plans), so applying them is deterministic.

Ops (first element is the code):
  [SCHEDULE, job]                          a new job (the full Job tuple)
  [UPDATE, job_id, *status]                replace the job's status fields
  [DISPATCH, [[job_id, attempt, lease_deadline_us], ...]]   leases, in a batch
  [EPOCH, epoch]                           a new term of this shard begins
  [SCHEDULE, job, [policy, after, open, seen]]   a new job with dependencies
  [RESOLVE, dependent, dependency, outcome, count]   one dependency resolved
  [REOPEN, job_id, *status]                a recurring dependent waits again
  [SUCCEED, finished_us, [job_id, ...]]    leases that ended in success, in a batch

(RESOLVE, REOPEN and SCHEDULE with dependencies: see wheelsched.engine.deps)

SUCCEED is the ack of a one-shot job that succeeded, the op a node writes
most after DISPATCH: an UPDATE would carry all eleven status fields for a
change of four that the op implies (state SUCCEEDED, no timer, finished at
``finished_us``, no error), and one op lists every such job of an engine
call. It was added after UPDATE; a log that has one cannot be read by a
build from before it.

Snapshot records: first a header map {"shard", "epoch", "next_num"}, then one
Job tuple per job, then one map per job with dependencies
(``Dependencies.to_record``).

Timers: each job has one shard-local integer ``num`` and at most one timer in
the wheel under that id, armed by ``_store`` from the job's state — SCHEDULED
at its fire time, DISPATCHED at its lease deadline, final at the end of its
retention (then it is dropped from memory); WAITING jobs have none. What a timer means when it fires
is read off the job's state, so re-arming is a cancel and an insert, both O(1).
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from typing import Any

from wheelsched.engine.deps import Dependencies
from wheelsched.engine.model import STATUS_START, Job, JobState, make_job
from wheelsched.gcutil import with_fields

SCHEDULE, UPDATE, DISPATCH, EPOCH, RESOLVE, REOPEN, SUCCEED = 1, 2, 3, 4, 5, 6, 7

_SCHEDULED = int(JobState.SCHEDULED)
_DISPATCHED = int(JobState.DISPATCHED)
_SUCCEEDED = int(JobState.SUCCEEDED)
_DEAD = int(JobState.DEAD)
_CANCELLED = int(JobState.CANCELLED)
_WAITING = int(JobState.WAITING)
_STATE = Job._fields.index("state")
# DISPATCH writes state, attempt and next_us as one run, SUCCEED those and
# fire_us, last_error and finished_us.
if Job._fields[_STATE:_STATE + 6] != ("state", "attempt", "next_us", "fire_us", "last_error",
                                      "finished_us"):
    raise ImportError("Job fields state .. finished_us must be adjacent, in that order")


class Shard:
    """State of one shard. Not thread-safe: the node drives it from one thread."""

    def __init__(
        self,
        shard_id: int,
        log: Any,
        wheel: Any,
        *,
        tick_us: int,
        retention_us: Callable[[int], int],
    ) -> None:
        self.id = shard_id
        self.log = log
        self.wheel = wheel
        self.tick_us = tick_us
        self._retention_us = retention_us  # state -> how long a final job stays listable
        self.epoch = 0
        self.jobs: dict[str, Job] = {}
        self.by_num: dict[int, str] = {}
        self.next_num = 1
        self.active = 0  # jobs not in a final state (the pending-jobs limit counts these)
        self.in_flight = 0  # DISPATCHED jobs
        # nums of jobs that fired and wait in the engine's ready queues; any
        # change to such a job takes it out (the queue entry is then skipped).
        self.ready: set[int] = set()
        # An index for "how late is the oldest ready job" (status pages ask
        # it, most often while a node is behind, when ``ready`` is largest:
        # a scan of ``ready`` took 0.6 s at 1M). The fire path only appends
        # each tick's batch of fired nums (``note_ready``); the first
        # question after that files them into a heap of (next_us, num), with
        # stale entries left in and skipped. ``ready_nums`` counts what the
        # batches hold; once index and batches pass twice ``ready`` (+1024)
        # both are rebuilt from ``ready``: O(len(ready)), at most once per
        # len(ready) + 1024 fires, so amortised O(1) per fire.
        self.ready_batches: list[Any] = []
        self.ready_nums = 0
        self.ready_due: list[tuple[int, int]] = []
        # While replaying, timers are not armed one by one: the wheel is
        # derived from the job table and built in one batch at the end.
        self.replaying = False
        # Ownership (cluster mode, DESIGN §6): a shard fires only once its
        # new epoch is durable, and stops firing (but still takes acks) while
        # it is handed over. A standalone node's shards always fire.
        self.firing = False
        self.draining = False
        self._sorted_ids: list[str] | None = None  # for listing; None when jobs came or went
        # Dependencies of the jobs that have any (wheelsched.engine.deps).
        self.deps: dict[str, Dependencies] = {}
        # dependency id (of any shard) -> ids of this shard's jobs still
        # waiting for it: the reverse index, derived from this shard's ops (so
        # replaying them rebuilds it, and a shard loads on its own).
        self.links: dict[str, set[str]] = {}

    # -- the one apply function ------------------------------------------------

    def apply(self, op: list | tuple) -> None:
        code = op[0]
        jobs = self.jobs
        if code == DISPATCH:
            lease = self.lease
            for job_id, attempt, deadline in op[1]:
                lease(jobs[job_id], attempt, deadline)
        elif code == UPDATE:
            old = jobs[op[1]]
            self._store(old, with_fields(old, STATUS_START, op, 2))
        elif code == SUCCEED:
            finished_us, succeed = op[1], self.succeed
            for job_id in op[2]:
                succeed(jobs[job_id], finished_us)
        elif code == SCHEDULE:
            job = op[1]
            if type(job) is not Job:  # read back from the log: a list
                job = make_job(job)
            old = jobs.get(job.id)
            if old is not None:  # an id reused after its old job ended
                self._forget(old)
            if len(op) > 2:
                policy, after, open_ids, seen = op[2]
                self._add_deps(job.id, Dependencies(tuple(after), policy,
                                                    after if open_ids is None else open_ids, seen))
            self._store(None, job)
        elif code == RESOLVE:
            self._resolve(op[1], op[2], op[3], op[4])
        elif code == REOPEN:
            job_id = op[1]
            deps = self.deps[job_id]
            deps.open = deps.reopen_ids()
            self._link(job_id, deps.open)
            old = jobs[job_id]
            self._store(old, with_fields(old, STATUS_START, op, 2))
        elif code == EPOCH:
            self.epoch = op[1]
        else:
            raise ValueError(f"shard {self.id}: unknown op code {code!r}")

    def lease(self, old: Job, attempt: int, deadline_us: int) -> Job:
        """``old`` is leased as ``attempt`` until ``deadline_us``: the change
        one entry of a DISPATCH op makes; returns the new record. ``_store``,
        inlined for the one transition a dispatch makes (SCHEDULED ->
        DISPATCHED): the job fired, so it has no timer and is out of
        ``ready`` (the dispatch took it out); it stays active, is in flight
        now, and its lease deadline is its timer."""
        # state, attempt and next_us (the lease deadline), in that order
        new = with_fields(old, _STATE, (_DISPATCHED, attempt, deadline_us))
        if old.state != _SCHEDULED:  # not from the engine's dispatch: the general way
            self._store(old, new)
            return new
        self.jobs[old.id] = new
        self.in_flight += 1
        if not self.replaying:
            self.wheel.insert(old.num, -(-deadline_us // self.tick_us))
        return new

    def succeed(self, old: Job, finished_us: int) -> None:
        """``old`` (a one-shot job) succeeded at ``finished_us``: the change
        one entry of a SUCCEED op makes. ``_store``, inlined for the one
        transition a successful ack makes (DISPATCHED -> SUCCEEDED): the
        job is not ready, stops being active and in flight, and its timer
        moves from the lease deadline to the end of its retention."""
        # state .. finished_us, in that order
        new = with_fields(old, _STATE, (_SUCCEEDED, old.attempt, 0, old.fire_us, "", finished_us))
        if old.state != _DISPATCHED:
            self._store(old, new)
            return
        self.jobs[old.id] = new
        self.active -= 1
        self.in_flight -= 1
        if not self.replaying:
            num = old.num
            wheel = self.wheel
            wheel.cancel(num)
            wheel.insert(num, -(-(finished_us + self._retention_us(_SUCCEEDED)) // self.tick_us))

    def restore(self, record: Any) -> None:
        """Apply one snapshot record (see the module docstring)."""
        if isinstance(record, dict):
            if "deps" in record:
                self._add_deps(record["deps"], Dependencies.from_record(record))
                return
            self.epoch = record["epoch"]
            self.next_num = max(self.next_num, record["next_num"])
        else:
            self._store(None, make_job(record))

    def begin_replay(self) -> None:
        self.replaying = True

    def end_replay(self) -> None:
        """Arm every job's timer with one ``insert_many`` call."""
        self.replaying = False
        self._sorted_ids = None  # for listing; None when jobs came or went
        nums = array("q")
        ticks = array("q")
        tick_of = self.tick_of
        retention = self._retention_us
        for job in self.jobs.values():
            nums.append(job.num)
            state = job.state
            if state in (_SCHEDULED, _DISPATCHED):
                ticks.append(tick_of(job.next_us))
            elif state == _WAITING:
                nums.pop()
            else:
                ticks.append(tick_of(job.finished_us + retention(state)))
        self.wheel.insert_many(nums, ticks)

    def sorted_ids(self) -> list[str]:
        """Job ids in order, for paging. Cached until a job is added or
        dropped, so paging through a quiet shard costs a bisect per page."""
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.jobs)
        return self._sorted_ids

    def snapshot_records(self) -> list:
        """A consistent copy of the shard, cheap enough to take on the live
        path: the job tuples are immutable, so a shallow copy is a snapshot."""
        header = {"shard": self.id, "epoch": self.epoch, "next_num": self.next_num}
        records = [header, *self.jobs.values()]
        if self.deps:
            records.extend(deps.to_record(job_id) for job_id, deps in self.deps.items())
        return records

    # -- helpers ---------------------------------------------------------------

    def tick_of(self, us: int) -> int:
        """The wheel tick at which a deadline of ``us`` fires: rounded up, so a
        job never fires before its time."""
        return -(-us // self.tick_us)

    def _store(self, old: Job | None, new: Job) -> None:
        # Runs for every state change: locals and inlined helpers on purpose.
        num = new.num
        state = new.state
        replaying = self.replaying
        if old is None:
            self._sorted_ids = None
            self.by_num[num] = new.id
            if num >= self.next_num:
                self.next_num = num + 1
        else:
            if not replaying:
                self.wheel.cancel(num)
                self.ready.discard(num)
            # _count(old.state, -1), inlined
            was = old.state
            if was == _SCHEDULED:
                self.active -= 1
            elif was == _DISPATCHED:
                self.active -= 1
                self.in_flight -= 1
            elif was == _WAITING:
                self.active -= 1
                if state != _WAITING:  # cancelled while waiting: it waits no more
                    self._unlink(new.id, self.deps[new.id])
        self.jobs[new.id] = new
        if state == _SCHEDULED:
            self.active += 1
        elif state == _DISPATCHED:
            self.active += 1
            self.in_flight += 1
        elif state == _WAITING:
            self.active += 1
        if replaying:
            return
        if state == _SCHEDULED or state == _DISPATCHED:  # noqa: SIM109 - cheaper than a tuple test
            self.wheel.insert(num, -(-new.next_us // self.tick_us))
        elif state != _WAITING:  # a waiting job has no timer: a RESOLVE arms it
            self.wheel.insert(num, -(-(new.finished_us + self._retention_us(state)) // self.tick_us))

    def note_ready(self, nums: Any) -> None:
        """``nums`` (a batch the fire path took from the wheel, or one made
        ready at once) are in ``ready`` now, or were skipped: see ``ready``."""
        self.ready_batches.append(nums)
        self.ready_nums += len(nums)
        if self.ready_nums + len(self.ready_due) > 2 * len(self.ready) + 1024:
            self._rebuild_ready_due(self.ready)

    def clear_ready(self) -> None:
        self.ready.clear()
        self._rebuild_ready_due(())

    def _rebuild_ready_due(self, nums: Any) -> None:
        jobs, by_num = self.jobs, self.by_num
        self.ready_due = [(jobs[by_num[num]].next_us, num) for num in nums]
        heapq.heapify(self.ready_due)
        self.ready_batches = []
        self.ready_nums = 0

    def oldest_ready_us(self) -> int | None:
        """next_us of the most overdue ready job (None: none is ready).
        A heap entry is current while its job is ready with that next_us (a
        ready job's next_us never changes: any change to the job takes it
        out of ``ready``; going back in comes with a new entry)."""
        heap, ready, jobs, by_num = self.ready_due, self.ready, self.jobs, self.by_num
        if self.ready_batches:
            new = [(jobs[by_num[num]].next_us, num)
                   for batch in self.ready_batches for num in batch if num in ready]
            if len(new) > len(heap):
                heap += new
                heapq.heapify(heap)
            else:
                for entry in new:
                    heapq.heappush(heap, entry)
            self.ready_batches = []
            self.ready_nums = 0
        while heap:
            due, num = heap[0]
            if num in ready and jobs[by_num[num]].next_us == due:
                return due
            heapq.heappop(heap)
        return None

    def _count(self, state: int, delta: int) -> None:
        if state == _SCHEDULED or state == _WAITING:  # noqa: SIM109
            self.active += delta
        elif state == _DISPATCHED:
            self.active += delta
            self.in_flight += delta

    def _forget(self, job: Job) -> None:
        if not self.replaying:
            self.wheel.cancel(job.num)
            self.ready.discard(job.num)
        self._count(job.state, -1)
        del self.by_num[job.num]
        del self.jobs[job.id]
        self._sorted_ids = None
        if self.deps:
            deps = self.deps.pop(job.id, None)
            if deps is not None:
                self._unlink(job.id, deps)

    def purge(self, job: Job) -> None:
        """Drop a final job whose retention ran out. Not logged: on replay the
        same job's retention timer is already due and purges it again."""
        self._forget(job)

    # -- dependencies (wheelsched.engine.deps) ----------------------------------

    def _add_deps(self, job_id: str, deps: Dependencies) -> None:
        self.deps[job_id] = deps
        self._link(job_id, deps.open)

    def _link(self, job_id: str, dep_ids: set[str]) -> None:
        links = self.links
        for dep in dep_ids:
            waiters = links.get(dep)
            if waiters is None:
                links[dep] = {job_id}
            else:
                waiters.add(job_id)

    def _unlink(self, job_id: str, deps: Dependencies) -> None:
        """The job waits for nothing any more (cancelled or purged)."""
        links = self.links
        for dep in deps.open:
            waiters = links.get(dep)
            if waiters is not None:
                waiters.discard(job_id)
                if not waiters:
                    del links[dep]
        deps.open = set()

    def _resolve(self, job_id: str, dep: str, outcome: int, count: int) -> None:
        """Apply RESOLVE: ``dep`` no longer holds ``job_id`` back. A no-op when
        it is not open (a duplicate or replayed notification), or when a
        recurring dependency's ``count`` was already consumed."""
        deps = self.deps.get(job_id)
        if deps is None or dep not in deps.open:
            return
        if dep in deps.seen:  # a recurring dependency
            if outcome == _SUCCEEDED:
                if count <= deps.seen[dep]:
                    return
                deps.seen[dep] = count
            else:  # it ended (RUN_ANYWAY): satisfied for good
                deps.done.add(dep)
        deps.open.discard(dep)
        waiters = self.links.get(dep)
        if waiters is not None:
            waiters.discard(job_id)
            if not waiters:
                del self.links[dep]
        if not deps.open:
            old = self.jobs[job_id]
            if old.state == _WAITING:
                self._store(old, with_fields(old, _STATE, (_SCHEDULED,)))
