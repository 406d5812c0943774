"""Job dependencies: a job may run after other jobs (a DAG).

The rules
---------
A job names the jobs it runs *after* (``JobRequest.after``). It is
``WAITING`` until every dependency is resolved, then ``SCHEDULED`` as usual:
it fires when its own schedule time has come, at once if that time passed
while it waited. A dependency resolves when it

- ends ``SUCCEEDED``: satisfied;
- ends ``DEAD`` or ``CANCELLED``: the dependent's ``on_dependency_failure``
  policy decides. ``CANCEL`` (the default) cancels the dependent with a
  reason naming the dependency (and so on down the graph: the cancelled
  dependent resolves *its* dependents the same way); ``RUN_ANYWAY`` counts the
  dependency as satisfied.

A dependency that already ended when the dependent is submitted resolves at
submission by the same rules (an already cancelled dependency cancels the new
job under ``CANCEL``). A dependency must exist when the dependent is
submitted, in the same batch or before; an unknown id (also one purged by
retention) is ``INVALID_ARGUMENT``, as are a self-dependency, a duplicate id,
more than ``Limits.max_dependencies`` ids and a cycle among the jobs of a
batch. Existing jobs never gain dependencies, so a cycle can only be formed
inside one batch. Requeueing a DEAD job does not bring back the dependents
it already resolved.

Recurring (cron) jobs:

- A dependency on a recurring job X is satisfied by a successful execution of
  X that ends *after* the dependent began waiting for it; executions before
  do not count. X's ``executions`` counter (successful executions) names
  them: the dependent remembers the count it has consumed (``seen``) and is
  satisfied once X's count is higher. An execution of X that dies (attempts
  used up) resolves nothing: X's schedule goes on and its next success
  counts. Cancelling X resolves its dependents as a CANCELLED dependency.
- A recurring dependent Y waits before each execution: when an execution of
  Y ends (succeeded or dead), its dependencies on recurring jobs open again,
  and the next execution needs a success of each of them newer than the one
  the previous execution consumed. So Y runs once after each success of X;
  several successes of X during one wait count once. Dependencies on
  one-shot jobs, once satisfied, stay satisfied. Occurrences of Y that pass
  while it waits are misfires, and Y's misfire policy applies when it can
  fire (FIRE_ONCE: one execution; SKIP: the next occurrence).

State and ops
-------------
The job table is not changed for dependencies: a job with dependencies has a
``Dependencies`` record in its shard (``Shard.deps``), jobs without any have
nothing, so they pay nothing on the fire, dispatch and ack paths. ``WAITING``
jobs have no timer in the wheel; the RESOLVE that empties a job's open set
turns it SCHEDULED and arms its timer.

The dependent's shard owns the edges: they are durable in its log, in the
SCHEDULE op of the dependent (``[SCHEDULE, job, [policy, after, open, seen]]``)
and in:

- ``[RESOLVE, dependent, dependency, outcome, count]``: one dependency of one
  dependent resolved (SUCCEEDED, or DEAD/CANCELLED under RUN_ANYWAY; a
  failure under CANCEL is the dependent's UPDATE to CANCELLED). ``count`` is
  the recurring dependency's execution count (0 for one-shot jobs). Applying
  it when the dependency is no longer open, or with a count already seen, is
  a no-op: a duplicate or replayed notification cannot count twice.
- ``[REOPEN, dependent, *status]``: a recurring dependent's execution ended;
  its recurring dependencies open again (and its status changes, as UPDATE).

The reverse index (dependency -> dependents still waiting for it) is
derived state, kept per dependent's shard (``Shard.links``: the
dependencies its own jobs wait for) and rebuilt by replaying that shard's
ops alone, so a shard still loads on its own; the dependency's shard writes
nothing about its dependents. When a job changes state and some shard's
jobs wait for it, the engine writes a RESOLVE (or a cancel) to each
dependent's shard in the same engine call; jobs nobody waits for cost one
membership test per attached shard that holds dependents (none at all when
no job has dependencies).

Crashes. Each shard's log is its own: the op that ends a dependency (shard
A) and the RESOLVE it causes (shard B) may reach the disk apart, so a crash
can keep the first and lose the second. Recovery therefore re-derives
rather than trusts: after every shard is replayed, each open dependency of
each waiting job is checked against the dependency's current state, and the
missing resolutions are written. The check is idempotent (RESOLVE is), so a
crash at any point neither loses nor double-counts a completion. A
dependency id that is unknown at recovery (a batch cut by the crash before
it was acknowledged, its dependency's SCHEDULE lost) stays open: submitting
the batch again, with the same ids, completes it. A finished job is purged
by retention only after its waiting dependents are resolved (the engine
resolves them first if a crash left any).

Between nodes (cluster mode): the waiting side pulls. A dependency on a
shard another node owns is checked with that node when the dependent is
submitted (the node asks it with ``GetJobStates`` and passes the answer to
``Engine.schedule(remote=...)``; an id it does not know is unknown, an owner
that cannot be asked is UNAVAILABLE), and while the dependent waits, its
node asks the owners of its open remote dependencies every 50 ms
(``Engine.remote_dependencies``) and settles what ended with the same
RESOLVE or cancel as a local dependency (``Engine.settle_remote``). RESOLVE
is idempotent and nothing is written on the dependency's side, so crashes
and owner changes on either side need nothing more: the next question
gets the answer. A graph that spans nodes is submitted dependencies first
(a batch is split by owner, and each node checks the dependencies on other
nodes' shards when its part arrives); within one node, a batch may carry a
whole graph.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from wheelsched.engine.model import Limits, check_job_id
from wheelsched.errors import InvalidArgument


class DependencyPolicy(enum.IntEnum):
    """What a DEAD or CANCELLED dependency does. Values match proto
    ``DependencyPolicy`` (0 there means CANCEL)."""

    CANCEL = 1
    RUN_ANYWAY = 2


CANCEL = int(DependencyPolicy.CANCEL)
RUN_ANYWAY = int(DependencyPolicy.RUN_ANYWAY)
_POLICIES = frozenset(int(p) for p in DependencyPolicy)


class Dependencies:
    """The dependencies of one job: its spec (``after``, ``policy``) and what
    is still open. Mutable: a RESOLVE removes one id from ``open`` in O(1)."""

    __slots__ = ("after", "done", "open", "policy", "seen")

    def __init__(self, after: tuple[str, ...], policy: int, open_ids: Iterable[str],
                 seen: Mapping[str, int] | None = None, done: Iterable[str] = ()) -> None:
        self.after = after
        self.policy = policy
        self.open: set[str] = set(open_ids)
        # recurring dependencies -> the execution count already consumed
        self.seen: dict[str, int] = dict(seen) if seen else {}
        # recurring dependencies resolved for good (they ended, RUN_ANYWAY)
        self.done: set[str] = set(done)

    def reopen_ids(self) -> set[str]:
        """What a recurring dependent waits for before its next execution."""
        return {dep for dep in self.seen if dep not in self.done}

    def to_record(self, job_id: str) -> dict[str, Any]:
        """A snapshot record (a copy: the live sets go on changing)."""
        return {"deps": job_id, "after": list(self.after), "policy": self.policy,
                "open": list(self.open), "seen": dict(self.seen), "done": list(self.done)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Dependencies:
        return cls(tuple(record["after"]), record["policy"], record["open"], record["seen"],
                   record["done"])


def check_after(after: Any, policy: Any, job_id: str, limits: Limits,
                field: str = "job") -> tuple[tuple[str, ...], int]:
    """Validate a request's dependency list and policy (the parts that need
    no engine state). Returns them normalized: ``((), 0)`` for none."""
    if after is None or (isinstance(after, Sequence) and not isinstance(after, str) and not after):
        return (), 0
    if isinstance(after, str) or not isinstance(after, Sequence):
        raise InvalidArgument(f"{field}.after", "must be a list of job ids")
    if len(after) > limits.max_dependencies:
        raise InvalidArgument(f"{field}.after", f"{len(after)} dependencies exceed the limit of "
                              f"{limits.max_dependencies}")
    policy = policy or CANCEL
    if policy not in _POLICIES:
        raise InvalidArgument(f"{field}.on_dependency_failure", f"unknown value {policy}")
    seen: set[str] = set()
    for k, dep in enumerate(after):
        where = f"{field}.after[{k}]"
        check_job_id(dep, limits, where)
        if dep == job_id:
            raise InvalidArgument(where, f"job {job_id!r} cannot depend on itself")
        if dep in seen:
            raise InvalidArgument(where, f"{dep!r} is listed twice")
        seen.add(dep)
    return tuple(after), int(policy)


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A dependency cycle among ``graph``'s jobs (id -> ids it runs after;
    ids outside ``graph`` are existing jobs, which cannot lead back), as the
    list of ids around it, or None. Iterative: graphs may be deep chains."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    for root in graph:
        if color[root] != WHITE:
            continue
        color[root] = GREY
        path = [root]
        stack = [iter(graph[root])]
        while stack:
            for dep in stack[-1]:
                c = color.get(dep)
                if c is None or c == BLACK:
                    continue
                if c == GREY:
                    return [*path[path.index(dep):], dep]
                color[dep] = GREY
                path.append(dep)
                stack.append(iter(graph[dep]))
                break
            else:
                color[path.pop()] = BLACK
                stack.pop()
    return None
