"""Job dependencies in the engine (wheelsched.engine.deps): chains, diamonds,
wide fan-out and fan-in, failure and cancel propagation under both policies,
validation (cycles, unknown ids, limits), recurring dependencies, and
restarts, including a crash that keeps a dependency's end but loses its
dependent's RESOLVE. Runs on both wheels and on both logs."""

from __future__ import annotations

import pytest
from engine_harness import T0, Harness

from wheelsched.engine import US, AckItem, DependencyPolicy, EngineConfig, JobRequest, JobState, Limits
from wheelsched.engine.deps import find_cycle
from wheelsched.engine.engine import shard_of
from wheelsched.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted

RUN_ANYWAY = int(DependencyPolicy.RUN_ANYWAY)


@pytest.fixture(params=["memory", "wal"])
def h(request, wheel_cls, tmp_path):
    harness = Harness(wheel_cls, request.param, tmp_path)
    yield harness
    harness.close()


def due(seconds: float) -> int:
    return T0 + int(seconds * US)


def req(job_id: str, *after: str, at: float = 0.0, **kw) -> JobRequest:
    return JobRequest(queue=kw.pop("queue", "q"), id=job_id, due_us=due(at), after=tuple(after), **kw)


def state(h: Harness, job_id: str) -> str:
    return JobState(h.engine.get(job_id)[0].state).name


def ack(h: Harness, d, success: bool = True, retryable: bool = True, error: str = "") -> None:
    results, _ = h.engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, success, error, retryable)])
    assert results[0].error is None, results[0].error


def run_all(h: Harness, fail: frozenset[str] = frozenset(), rounds: int = 10_000) -> list[str]:
    """Tick, and ack every delivery (failing those in ``fail`` for good)
    until nothing more is delivered; returns job ids in delivery order."""
    order: list[str] = []
    for _ in range(rounds):
        h.engine.tick()
        got = h.take()
        if not got:
            return order
        for d in got:
            order.append(d.job.id)
            ack(h, d, success=d.job.id not in fail, retryable=False, error="boom")
    raise AssertionError("still delivering")


def on_other_shards(prefix: str, n: int, shards: int = 4) -> list[str]:
    """``n`` ids on ``n`` different shards (n <= shards)."""
    out, used, i = [], set(), 0
    while len(out) < n:
        job_id = f"{prefix}{i}"
        s = shard_of(job_id, shards)
        if s not in used:
            used.add(s)
            out.append(job_id)
        i += 1
    return out


# --------------------------------------------------------------------------- shapes


def test_chain_runs_in_order_each_dispatched_in_the_ack_that_resolves_it(h):
    h.subscribe()
    jobs, _ = h.engine.schedule([req("c", "b"), req("b", "a"), req("a")])
    assert [JobState(j.state).name for j in jobs] == ["WAITING", "WAITING", "SCHEDULED"]
    h.engine.tick()
    (d,) = h.take()
    assert d.job.id == "a" and state(h, "b") == "WAITING"
    ack(h, d)
    (d,) = h.take()  # no tick in between: the ack itself dispatched b
    assert d.job.id == "b" and state(h, "c") == "WAITING"
    ack(h, d)
    (d,) = h.take()
    assert d.job.id == "c"
    ack(h, d)
    assert [state(h, j) for j in "abc"] == ["SUCCEEDED"] * 3


def test_diamond_waits_for_both_branches(h):
    h.subscribe()
    h.engine.schedule([req("a"), req("b", "a"), req("c", "a"), req("d", "b", "c")])
    h.engine.tick()
    ack(h, h.take()[0])
    first, second = h.take()
    assert {first.job.id, second.job.id} == {"b", "c"}
    ack(h, first)
    assert h.take() == [] and state(h, "d") == "WAITING"
    assert h.engine.dependency_info(*h.engine.get("d")).open == [second.job.id]
    ack(h, second)
    (d,) = h.take()
    assert d.job.id == "d"


def test_dependent_still_waits_for_its_own_schedule_time(h):
    h.subscribe()
    h.engine.schedule([req("a"), req("b", "a", at=5.0)])
    assert run_all(h) == ["a"]
    job = h.engine.get("b")[0]
    assert (state(h, "b"), job.next_us) == ("SCHEDULED", due(5.0))
    h.run(4.9)
    assert h.take() == []
    h.run(0.2)
    assert [d.job.id for d in h.take()] == ["b"]


def test_across_shards(h):
    a, b, c = on_other_shards("x", 3)
    h.subscribe()
    h.engine.schedule([req(a), req(b, a), req(c, b)])
    assert run_all(h) == [a, b, c]


def test_tagged_ids_share_a_shard(h):
    jobs, _ = h.engine.schedule([req("{etl}extract"), req("{etl}load", "{etl}extract")])
    assert len({h.engine.shard_for(j.id).id for j in jobs}) == 1
    h.subscribe()
    assert run_all(h) == ["{etl}extract", "{etl}load"]


@pytest.mark.parametrize("log_kind", ["memory"])
def test_wide_fan_out_and_fan_in(wheel_cls, tmp_path, log_kind):
    """One root, 10,000 children (over every shard), one merge after all of them."""
    h = Harness(wheel_cls, log_kind, tmp_path)
    children = [f"child-{i}" for i in range(10_000)]
    h.engine.schedule([req("root")] + [req(c, "root") for c in children[:9_999]])
    h.engine.schedule([req(children[-1], "root"), req("merge", *children)])
    info = h.engine.dependency_info(*h.engine.get("root"))
    assert len(info.dependents) == 10_000
    assert len(h.engine.dependency_info(*h.engine.get("merge")).open) == 10_000
    h.subscribe(max_in_flight=10_000)
    order = run_all(h)
    assert order[0] == "root" and order[-1] == "merge" and len(order) == 10_002
    assert h.engine.counters["succeeded"] == 10_002
    h.close()


def test_fan_in_from_existing_jobs_and_already_succeeded_ones(h):
    h.subscribe()
    h.engine.schedule([req("p1"), req("p2")])
    run_all(h)
    h.engine.schedule([req("p3")])
    (j,), _ = h.engine.schedule([req("m", "p1", "p2", "p3")])
    assert JobState(j.state) == JobState.WAITING
    assert h.engine.dependency_info(j, h.engine.shard_for("m")).open == ["p3"]
    assert run_all(h) == ["p3", "m"]


def test_all_dependencies_already_succeeded_is_scheduled_at_once(h):
    h.subscribe()
    h.engine.schedule([req("a")])
    run_all(h)
    (j,), _ = h.engine.schedule([req("b", "a")])
    assert JobState(j.state) == JobState.SCHEDULED
    assert run_all(h) == ["b"]


# --------------------------------------------------------------------------- failure


def test_dead_dependency_cancels_dependents_transitively(h):
    h.subscribe()
    h.engine.schedule([req("a"), req("b", "a"), req("c", "b"), req("other")])
    assert sorted(run_all(h, fail=frozenset({"a"}))) == ["a", "other"]
    b, c = h.engine.get("b")[0], h.engine.get("c")[0]
    assert (state(h, "b"), state(h, "c")) == ("CANCELLED", "CANCELLED")
    assert b.last_error == "dependency 'a' ended DEAD: boom"
    assert c.last_error.startswith("dependency 'b' ended CANCELLED: dependency 'a' ended DEAD")
    assert h.engine.counters["cancelled"] == 2


def test_run_anyway_runs_after_a_dead_dependency(h):
    h.subscribe()
    h.engine.schedule([req("a"), req("b", "a", on_dependency_failure=RUN_ANYWAY), req("c", "b")])
    assert run_all(h, fail=frozenset({"a"})) == ["a", "b", "c"]
    assert [state(h, j) for j in "abc"] == ["DEAD", "SUCCEEDED", "SUCCEEDED"]


def test_retries_do_not_resolve_only_the_last_failure_does(h):
    h.subscribe()
    h.engine.schedule([req("a", max_attempts=2, min_backoff_us=US, jitter=0.0), req("b", "a")])
    h.engine.tick()
    ack(h, h.take()[0], success=False)
    assert (state(h, "a"), state(h, "b")) == ("SCHEDULED", "WAITING")
    h.run(1.1)
    ack(h, h.take()[0], success=False)
    assert (state(h, "a"), state(h, "b")) == ("DEAD", "CANCELLED")


def test_cancelling_a_dependency_propagates_by_policy(h):
    h.engine.schedule([req("a", at=60), req("b", "a"), req("c", "a", on_dependency_failure=RUN_ANYWAY),
                       req("d", "b")])
    h.engine.cancel("a")
    assert [state(h, j) for j in "bcd"] == ["CANCELLED", "SCHEDULED", "CANCELLED"]
    assert h.engine.get("b")[0].last_error == "dependency 'a' ended CANCELLED"
    h.subscribe()
    assert run_all(h) == ["c"]


def test_cancelling_a_waiting_job_releases_its_edges(h):
    h.engine.schedule([req("a", at=60), req("b", "a")])
    h.engine.cancel("b")
    assert h.engine.dependency_info(*h.engine.get("a")) is None
    assert sum(s.active for s in h.engine.shards) == 1  # only a


def test_dependency_already_dead_or_cancelled_at_submission(h):
    h.subscribe()
    h.engine.schedule([req("a")])
    run_all(h, fail=frozenset({"a"}))
    jobs, _ = h.engine.schedule([req("b", "a"), req("c", "a", on_dependency_failure=RUN_ANYWAY),
                                 req("d", "b")])
    assert [JobState(j.state).name for j in jobs] == ["CANCELLED", "SCHEDULED", "CANCELLED"]
    assert run_all(h) == ["c"]


# --------------------------------------------------------------------------- validation


def _nothing_written(h, *ids):
    for job_id in ids:
        with pytest.raises(NotFound):
            h.engine.get(job_id)


def test_cycle_is_rejected_naming_a_job_and_nothing_is_written(h):
    with pytest.raises(InvalidArgument) as exc:
        h.engine.schedule([req("ok"), req("a", "c"), req("b", "a"), req("c", "b")])
    assert exc.value.field.startswith("jobs[") and exc.value.field.endswith("].after")
    assert "dependency cycle" in exc.value.message and "'a'" in exc.value.message
    _nothing_written(h, "ok", "a", "b", "c")


@pytest.mark.parametrize("bad, field, text", [
    (req("a", "a"), "job.after[0]", "cannot depend on itself"),
    (req("a", "nope"), "job.after[0]", "unknown job 'nope'"),
    (req("a", "x", "x"), "job.after[1]", "listed twice"),
    (req("a", ""), "job.after[0]", "non-empty"),
    (req("a", "x", on_dependency_failure=7), "job.on_dependency_failure", "unknown value"),
    (JobRequest(queue="q", id="a", due_us=T0, after="x"), "job.after", "list of job ids"),
])
def test_bad_dependencies_are_invalid_argument(h, bad, field, text):
    h.engine.schedule([req("x", at=60)])
    with pytest.raises(InvalidArgument) as exc:
        h.engine.schedule([bad])
    assert exc.value.field == field and text in exc.value.message, exc.value
    _nothing_written(h, "a")


def test_unknown_dependency_in_a_batch_names_job_and_dependency(h):
    with pytest.raises(InvalidArgument) as exc:
        h.engine.schedule([req("a"), req("b", "a", "ghost")])
    assert exc.value.field == "jobs[1].after[1]" and "'ghost'" in exc.value.message
    _nothing_written(h, "a", "b")


def test_dependency_limit(wheel_cls):
    h = Harness(wheel_cls, config=EngineConfig(shard_count=2, limits=Limits(max_dependencies=3)))
    h.engine.schedule([req(f"p{i}", at=60) for i in range(4)])
    h.engine.schedule([req("ok", "p0", "p1", "p2")])
    with pytest.raises(InvalidArgument, match="4 dependencies exceed the limit of 3"):
        h.engine.schedule([req("big", "p0", "p1", "p2", "p3")])


def test_pending_limit_counts_waiting_jobs(wheel_cls):
    h = Harness(wheel_cls, config=EngineConfig(shard_count=1, limits=Limits(max_pending_per_shard=2)))
    h.engine.schedule([req("a", at=60), req("b", "a")])
    with pytest.raises(ResourceExhausted):
        h.engine.schedule([req("c", "a")])


def test_idempotent_with_the_same_dependencies_only(h):
    h.engine.schedule([req("a", at=60), req("x", at=60), req("b", "a")])
    (j,), _ = h.engine.schedule([req("b", "a")])
    assert JobState(j.state) == JobState.WAITING
    with pytest.raises(AlreadyExists):
        h.engine.schedule([req("b", "x")])
    with pytest.raises(AlreadyExists):
        h.engine.schedule([req("b", "a", on_dependency_failure=RUN_ANYWAY)])
    with pytest.raises(AlreadyExists):
        h.engine.schedule([req("x", "a")])


def test_find_cycle_on_a_long_chain_is_iterative():
    n = 50_000
    graph = {f"j{i}": (f"j{i + 1}",) for i in range(n)}
    assert find_cycle(graph) is None
    graph[f"j{n}"] = ("j0",)
    cycle = find_cycle(graph)
    assert cycle[0] == cycle[-1] and len(cycle) == n + 2


def test_list_filters_waiting(h):
    h.engine.schedule([req("a", at=60), req("b", "a"), req("c", "a")])
    page, _ = h.engine.list(states=[JobState.WAITING])
    assert [j.id for j, _ in page] == sorted(["b", "c"], key=lambda i: (shard_of(i, 4), i))


# --------------------------------------------------------------------------- recurring


def test_one_shot_after_a_cron_job_waits_for_its_next_success(h):
    h.subscribe()
    h.engine.schedule([JobRequest(queue="q", id="hourly", cron_expr="0 * * * *")])
    h.run(3600)  # the first execution (01:00)
    ack(h, h.take()[0])
    assert h.engine.get("hourly")[0].executions == 1
    h.engine.schedule([req("report", "hourly")])  # the success before does not count
    assert state(h, "report") == "WAITING"
    h.run(3600)
    (d,) = h.take()
    assert d.job.id == "hourly"
    ack(h, d, success=False, retryable=False)  # a dead execution resolves nothing
    assert state(h, "report") == "WAITING"
    h.run(3600)
    ack(h, h.take()[0])
    (d,) = h.take()
    assert d.job.id == "report"


def test_cron_dependent_runs_once_after_each_success_of_a_cron_dependency(h):
    h.subscribe()
    h.engine.schedule([JobRequest(queue="q", id="extract", cron_expr="0 * * * *"),
                       JobRequest(queue="q", id="load", cron_expr="*/10 * * * *", after=("extract",),
                                  misfire=3)])  # SKIP: run at its first occurrence after the success
    ran: list[str] = []
    for _ in range(3 * 60 + 15):  # minute by minute until 03:15
        h.run(60, step=60)
        for d in h.take():
            ran.append(d.job.id)
            ack(h, d)
    assert ran.count("extract") == 3 and ran.count("load") == 3
    for i, job_id in enumerate(ran):
        if job_id == "load":
            assert ran[i - 1] == "extract"
    assert state(h, "load") == "WAITING"
    h.engine.cancel("extract")
    assert state(h, "load") == "CANCELLED"


# --------------------------------------------------------------------------- restarts


def test_waiting_state_survives_restart(h):
    h.engine.schedule([req("a"), req("b", "a"), req("c", "a", "b")])
    h.restart()
    assert [state(h, j) for j in "abc"] == ["SCHEDULED", "WAITING", "WAITING"]
    assert h.engine.dependency_info(*h.engine.get("a")).dependents == ["b", "c"]
    h.subscribe()
    assert run_all(h) == ["a", "b", "c"]


def test_restart_mid_dag_with_snapshots(wheel_cls, tmp_path):
    for kind in ("memory", "wal"):
        h = Harness(wheel_cls, kind, tmp_path / kind, snapshot_every=5)
        h.engine.schedule([req("a")] + [req(f"b{i}", "a") for i in range(5)]
                          + [req("m", *[f"b{i}" for i in range(5)])])
        h.subscribe()
        h.engine.tick()
        ack(h, h.take()[0])
        got = h.take()
        assert len(got) == 5
        for d in got[:3]:
            ack(h, d)
        h.restart()
        assert state(h, "m") == "WAITING"
        assert h.engine.dependency_info(*h.engine.get("m")).open == sorted(d.job.id for d in got[3:])
        h.subscribe()
        assert sorted(run_all(h)) == sorted([d.job.id for d in got[3:]] + ["m"])
        h.close()


def test_crash_between_end_and_resolve_is_recovered(wheel_cls):
    """The dependency's success reached its shard's log; the RESOLVE for
    the dependent on another shard did not. Recovery writes it."""
    h = Harness(wheel_cls)
    a, b = on_other_shards("y", 2)
    h.engine.schedule([req(a), req(b, a, at=1.0)])
    h.subscribe()
    h.engine.tick()
    ack(h, h.take()[0])
    dependent_log = h.engine.shard_for(b).log
    assert h.engine.shard_for(a).log is not dependent_log
    dropped = dependent_log._ops.pop()  # the RESOLVE, never made durable
    assert dropped[0] == 0x95 and state(h, b) == "SCHEDULED"
    h.restart()
    assert (state(h, a), state(h, b)) == ("SUCCEEDED", "SCHEDULED")
    h.subscribe()
    h.run(1.0)
    assert [d.job.id for d in h.take()] == [b]
    # The recovered RESOLVE is idempotent: a second restart changes nothing.
    h.restart()
    assert state(h, b) == "SCHEDULED"  # its lease released, not WAITING again


def test_resolve_replayed_twice_counts_once(wheel_cls):
    h = Harness(wheel_cls)
    h.engine.schedule([req("a"), req("b"), req("m", "a", "b")])
    shard = h.engine.shard_for("m")
    from wheelsched.engine.shard import RESOLVE

    shard.apply([RESOLVE, "m", "a", int(JobState.SUCCEEDED), 0])
    shard.apply([RESOLVE, "m", "a", int(JobState.SUCCEEDED), 0])
    assert state(h, "m") == "WAITING"
    assert h.engine.dependency_info(*h.engine.get("m")).open == ["b"]


def test_dependency_on_a_shard_owned_elsewhere_is_resolved_from_its_owners_answers(wheel_cls):
    """Cluster mode: the node asks the dependency's owner and passes what it
    said (``remote``); without an answer the dependency is unknown."""
    from wheelsched.engine import RemoteJob

    h = Harness(wheel_cls)
    h.subscribe()
    a, b, c = on_other_shards("z", 3)
    for job_id in (a, c):
        h.engine.detach_shard(shard_of(job_id, 4))
    with pytest.raises(InvalidArgument, match="unknown job"):
        h.engine.schedule([req(b, a)])
    _nothing_written(h, b)
    assert h.engine.remote_dependencies_of([req(b, a, c)]) == [a, c]
    scheduled = JobState.SCHEDULED.value
    h.engine.schedule([req(b, a, c)], remote={a: RemoteJob(a, scheduled, 0, 0, ""),
                                              c: RemoteJob(c, scheduled, 0, 0, "")})
    assert state(h, b) == "WAITING"
    assert h.engine.remote_dependencies() == sorted([a, c])
    # a not final yet: nothing; then a succeeds: b still waits for c
    h.engine.settle_remote([RemoteJob(a, scheduled, 0, 0, "")])
    assert state(h, b) == "WAITING"
    done = RemoteJob(a, JobState.SUCCEEDED.value, 0, 0, "")
    h.engine.settle_remote([done])
    h.engine.settle_remote([done])  # asked again: counted once
    assert h.engine.remote_dependencies() == [c]
    # c dies: b is cancelled with a reason naming it
    h.engine.settle_remote([RemoteJob(c, JobState.DEAD.value, 0, 0, "boom")])
    job = h.engine.get(b)[0]
    assert JobState(job.state).name == "CANCELLED" and repr(c) in job.last_error
    assert h.engine.remote_dependencies() == []
    assert not h.take()
