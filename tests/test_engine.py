"""The engine's rules with a manual clock: every state transition, retries,
leases, priorities, cancel races, idempotency, cron with DST and misfires,
restarts. Each test runs on both wheels and on both logs (in-memory and the
real write-ahead log)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from engine_harness import T0, Harness

from wheelsched.engine import US, AckItem, EngineConfig, Extension, JobRequest, JobState, Limits, Misfire
from wheelsched.engine.model import Defaults, backoff_us, build_job
from wheelsched.engine.shard import SUCCEED, UPDATE
from wheelsched.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotOwner,
    ResourceExhausted,
)


@pytest.fixture(params=["memory", "wal"])
def h(request, wheel_cls, tmp_path):
    harness = Harness(wheel_cls, request.param, tmp_path)
    yield harness
    harness.close()


def due(seconds: float) -> int:
    return T0 + int(seconds * US)


def req(job_id: str, at: float = 1.0, **kw) -> JobRequest:
    return JobRequest(queue=kw.pop("queue", "q"), id=job_id, due_us=due(at), **kw)


def state(h: Harness, job_id: str) -> JobState:
    return JobState(h.engine.get(job_id)[0].state)


def ack(h: Harness, d, success=True, error="", retryable=True):
    results, _ = h.engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, success, error, retryable)])
    assert results[0].error is None, results[0].error
    return results


# --------------------------------------------------------------------------- life


def test_fires_at_due_time_never_before(h):
    h.engine.schedule([req("a", at=1.0)])
    h.subscribe()
    h.clock.now = due(1.0) - 1
    h.engine.tick()
    assert h.take() == []
    h.clock.now = due(1.0)
    h.engine.tick()
    (d,) = h.take()
    assert (d.job.id, d.job.attempt, d.due_us) == ("a", 1, due(1.0))
    assert d.epoch == h.engine.shard_for("a").epoch == 1
    assert state(h, "a") == JobState.DISPATCHED
    ack(h, d)
    job = h.engine.get("a")[0]
    assert (JobState(job.state), job.finished_us, job.next_us) == (JobState.SUCCEEDED, h.clock.now, 0)


def test_past_due_fires_on_next_tick(h):
    h.subscribe()
    h.engine.schedule([req("late", at=-60.0)])
    h.engine.tick()
    assert [d.job.id for d in h.take()] == ["late"]


def test_next_wakeup_never_after_earliest_due(h):
    h.engine.schedule([req("a", at=5.0), req("b", at=2.5)])
    assert h.engine.next_wakeup_us() <= due(2.5)


def test_retry_with_backoff_then_dead(h):
    h.engine.schedule([req("r", at=0.0, max_attempts=3, min_backoff_us=2 * US, max_backoff_us=60 * US,
                           jitter=0.0)])
    h.subscribe()
    h.engine.tick()
    (d,) = h.take()
    ack(h, d, success=False, error="boom")
    job = h.engine.get("r")[0]
    assert (JobState(job.state), job.attempt, job.last_error) == (JobState.SCHEDULED, 1, "boom")
    assert job.next_us == h.clock.now + 2 * US  # first backoff = min_backoff
    h.run(1.99)
    assert h.take() == []
    h.run(0.02)
    (d,) = h.take()
    assert d.job.attempt == 2
    ack(h, d, success=False, error="boom 2")
    assert h.engine.get("r")[0].next_us == h.clock.now + 4 * US  # doubled
    h.run(4.01)
    (d,) = h.take()
    assert d.job.attempt == 3
    ack(h, d, success=False, error="final")
    job = h.engine.get("r")[0]
    assert (JobState(job.state), job.attempt, job.last_error) == (JobState.DEAD, 3, "final")
    assert h.engine.counters["dead"] == 1


def test_non_retryable_failure_is_dead_at_once(h):
    h.engine.schedule([req("n", at=0.0)])
    h.subscribe()
    h.engine.tick()
    ack(h, h.take()[0], success=False, error="bad input", retryable=False)
    assert state(h, "n") == JobState.DEAD


def test_backoff_follows_cloud_tasks_rule():
    # Cloud Tasks' documented example: min 10 s, max 300 s, 3 doublings.
    job = build_job(JobRequest(queue="q", id="x", delay_us=0, min_backoff_us=10 * US,
                               max_backoff_us=300 * US, max_doublings=3, jitter=0.0),
                    now_us=T0, num=1, limits=Limits(), defaults=Defaults())
    assert [backoff_us(job, n, 0.0) // US for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]
    jittery = job._replace(jitter=0.5)
    assert backoff_us(jittery, 1, 0.99) == int(10 * US * 1.495)


def test_lease_expiry_redelivers_with_next_attempt(h):
    h.engine.schedule([req("l", at=0.0, lease_us=2 * US, min_backoff_us=0, jitter=0.0)])
    h.subscribe()
    h.engine.tick()
    (d,) = h.take()
    assert d.job.next_us == h.clock.now + 2 * US
    h.run(2.5)
    (d2,) = h.take()
    assert d2.job.attempt == 2
    assert h.engine.get("l")[0].last_error == "lease expired"
    # The first attempt's ack is now refused and changes nothing.
    results, _ = h.engine.ack([AckItem("l", 1, d.epoch, True)])
    assert isinstance(results[0].error, FailedPrecondition)
    assert state(h, "l") == JobState.DISPATCHED
    ack(h, d2)
    assert state(h, "l") == JobState.SUCCEEDED


def test_extend_lease_keeps_it(h):
    h.engine.schedule([req("e", at=0.0, lease_us=2 * US, min_backoff_us=0)])
    h.subscribe()
    h.engine.tick()
    (d,) = h.take()
    h.run(1.5)
    results, _ = h.engine.extend([Extension("e", 1, d.epoch, 3 * US)])
    assert results[0].error is None and results[0].lease_deadline_us == h.clock.now + 3 * US
    h.run(2.0)
    assert h.take() == [] and state(h, "e") == JobState.DISPATCHED
    too_far, _ = h.engine.extend([Extension("e", 1, d.epoch, 1000 * US)])
    assert isinstance(too_far[0].error, InvalidArgument)
    h.run(1.1)
    assert [x.job.attempt for x in h.take()] == [2]


def test_priority_among_jobs_due_together(h):
    h.engine.schedule([req(f"p{p}", at=1.0, priority=p) for p in (0, 5, -3, 9, 1)])
    h.subscribe(max_in_flight=1)
    h.run(1.0)
    order = []
    for _ in range(5):
        (d,) = h.take()
        order.append(d.job.priority)
        ack(h, d)
    assert order == [9, 5, 1, 0, -3]


@pytest.mark.parametrize("seed", range(4))
def test_dispatch_order_is_priority_then_due_under_any_credit(h, seed):
    """Whatever the credit (all of the ready jobs, or a few of them), each
    dispatch hands out the best ready jobs in order: higher priority, then
    earlier due time. Batches of fired jobs land in empty and non-empty
    ready queues alike."""
    rng = random.Random(seed)
    ids = [f"j{i}" for i in range(300)]
    h.engine.schedule([req(job_id, at=rng.choice((0.5, 0.5001, 0.6, 0.7)), priority=rng.randint(-2, 2))
                       for job_id in ids])
    sub = h.subscribe(max_in_flight=40)
    held: list = []
    for now in (0.5, 0.5001, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3):
        h.clock.now = due(now)
        h.engine.tick()
        got = h.take()
        keys = [(-d.job.priority, d.due_us) for d in got]
        assert keys == sorted(keys)
        left = [(-job.priority, job.next_us) for job in (h.engine.get(i)[0] for i in ids)
                if job.state == JobState.SCHEDULED and job.next_us <= h.clock.now]
        assert not keys or not left or min(left) >= keys[-1]  # nothing better was left behind
        held += got
        rng.shuffle(held)
        k = rng.randint(0, len(held))  # some credit comes back: more go out in those acks
        h.engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, True) for d in held[:k]])
        held = held[k:] + h.take()
    while held:
        h.engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, True) for d in held])
        held = h.take()
    assert sub.in_flight == 0
    assert {state(h, i) for i in ids} == {JobState.SUCCEEDED}


def test_in_flight_limit_and_round_robin(h):
    h.engine.schedule([req(f"j{i}", at=0.0) for i in range(10)])
    got_a, got_b = [], []
    a = h.engine.subscribe(["q"], 3, got_a.extend)
    b = h.engine.subscribe(["q"], 3, got_b.extend)
    h.engine.tick()
    assert len(got_a) == 3 and len(got_b) == 3
    assert a.in_flight == 3 and b.in_flight == 3
    ack(h, got_a[0])
    assert len(got_a) + len(got_b) == 7  # one credit came back
    h.engine.unsubscribe(b)
    for d in got_b:
        ack(h, d)  # acks from a closed stream still count
    assert a.in_flight == 3


def test_queues_are_separate(h):
    h.engine.schedule([req("x", at=0.0, queue="emails"), req("y", at=0.0, queue="reports")])
    h.subscribe(queues=["reports"])
    h.engine.tick()
    assert [d.job.id for d in h.take()] == ["y"]
    h.subscribe(queues=["emails"])
    assert [d.job.id for d in h.take()] == ["x"]


# --------------------------------------------------------------------------- cancel


def test_cancel_before_fire(h):
    h.engine.schedule([req("c", at=1.0)])
    job, waits = h.engine.cancel("c")
    assert JobState(job.state) == JobState.CANCELLED and waits
    h.subscribe()
    h.run(2.0)
    assert h.take() == []
    assert h.engine.cancel("c")[0].state == JobState.CANCELLED  # idempotent


def test_cancel_while_ready_is_not_dispatched(h):
    h.engine.schedule([req("c", at=0.0)])
    h.engine.tick()  # fired, waiting for a worker
    h.engine.cancel("c")
    h.subscribe()
    h.engine.tick()
    assert h.take() == []


def test_cancel_while_dispatched_wins_over_late_ack(h):
    h.engine.schedule([req("c", at=0.0)])
    sub = h.subscribe()
    h.engine.tick()
    (d,) = h.take()
    h.engine.cancel("c")
    assert sub.in_flight == 0  # the credit came back
    results, _ = h.engine.ack([AckItem("c", d.job.attempt, d.epoch, True)])
    assert isinstance(results[0].error, FailedPrecondition)
    assert state(h, "c") == JobState.CANCELLED
    h.run(60.0)  # the old lease timer must not resurrect it
    assert state(h, "c") == JobState.CANCELLED and h.take() == []


def test_cancel_final_or_unknown(h):
    h.engine.schedule([req("s", at=0.0)])
    h.subscribe()
    h.engine.tick()
    ack(h, h.take()[0])
    with pytest.raises(FailedPrecondition):
        h.engine.cancel("s")
    with pytest.raises(NotFound):
        h.engine.cancel("nope")


def test_requeue_dead_job(h):
    h.engine.schedule([req("d", at=0.0, max_attempts=1)])
    h.subscribe()
    h.engine.tick()
    ack(h, h.take()[0], success=False)
    assert state(h, "d") == JobState.DEAD
    with pytest.raises(FailedPrecondition):
        h.engine.requeue("nope" if False else "d") if False else h.engine.cancel("d")
    job, _ = h.engine.requeue("d")
    assert (JobState(job.state), job.attempt) == (JobState.SCHEDULED, 0)
    h.engine.tick()
    (d,) = h.take()
    assert d.job.attempt == 1
    ack(h, d)
    assert state(h, "d") == JobState.SUCCEEDED
    with pytest.raises(FailedPrecondition):
        h.engine.requeue("d")


# --------------------------------------------------------------------------- idempotency, validation


def test_same_id_same_spec_is_idempotent(h):
    (first,), _ = h.engine.schedule([req("i", at=5.0, payload=b"p")])
    seq = h.engine.shard_for("i").log.last_seq
    (again,), waits = h.engine.schedule([req("i", at=5.0, payload=b"p")])
    assert again == first
    assert h.engine.shard_for("i").log.last_seq == seq  # nothing written
    assert waits  # but the reply still waits for the original write to be durable
    with pytest.raises(AlreadyExists):
        h.engine.schedule([req("i", at=5.0, payload=b"other")])


def test_delay_idempotency_compares_the_request(h):
    h.engine.schedule([JobRequest(queue="q", id="d", delay_us=10 * US)])
    h.clock.advance(3)
    (again,), _ = h.engine.schedule([JobRequest(queue="q", id="d", delay_us=10 * US)])
    assert again.next_us == T0 + 10 * US


def test_batch_is_all_or_nothing(h):
    good = [req(f"b{i}", at=1.0) for i in range(5)]
    bad = [*good, JobRequest(queue="bad queue!", id="b5", due_us=due(1))]
    with pytest.raises(InvalidArgument) as err:
        h.engine.schedule(bad)
    assert err.value.field == "jobs[5].queue"
    assert all(not s.jobs for s in h.engine.shards)
    jobs, _ = h.engine.schedule(good)
    assert [j.id for j in jobs] == [f"b{i}" for i in range(5)]


def test_generated_ids_are_unique(h):
    jobs, _ = h.engine.schedule([JobRequest(queue="q", delay_us=0) for _ in range(50)])
    assert len({j.id for j in jobs}) == 50


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"queue": ""}, "job.queue"),
    ({"queue": "x" * 200}, "job.queue"),
    ({"id": "a\x00b"}, "job.id"),
    ({"id": "x" * 300}, "job.id"),
    ({"due_us": None}, "job.schedule"),
    ({"delay_us": 5}, "job.schedule"),
    ({"due_us": -1}, "job.schedule.due_time"),
    ({"due_us": 10**20}, "job.schedule.due_time"),
    ({"due_us": None, "cron_expr": "61 * * * *"}, "job.schedule.cron"),
    ({"due_us": None, "cron_expr": "* * * * *", "time_zone": "Mars/Olympus"}, "job.schedule.cron"),
    ({"time_zone": "Europe/Paris"}, "job.schedule.time_zone"),
    ({"max_attempts": -1}, "job.retry_policy.max_attempts"),
    ({"min_backoff_us": -5}, "job.retry_policy.min_backoff"),
    ({"min_backoff_us": 10 * US, "max_backoff_us": US}, "job.retry_policy.max_backoff"),
    ({"jitter": 2.0}, "job.retry_policy.jitter"),
    ({"jitter": float("nan")}, "job.retry_policy.jitter"),
    ({"lease_us": 10}, "job.lease_timeout"),
    ({"priority": 2**40}, "job.priority"),
])
def test_bad_input_names_the_field_and_changes_nothing(h, kwargs, field):
    base = {"queue": "q", "id": "ok", "due_us": due(1)}
    base.update(kwargs)
    with pytest.raises(InvalidArgument) as err:
        h.engine.schedule([JobRequest(**base)])
    assert err.value.field == field
    assert all(not s.jobs for s in h.engine.shards)
    assert all(s.log.last_seq == h.engine.shards[0].log.last_seq for s in h.engine.shards)


def test_limits_are_resource_exhausted(wheel_cls):
    cfg = EngineConfig(shard_count=1, limits=Limits(max_payload_bytes=10, max_pending_per_shard=3,
                                                    max_batch_jobs=5))
    h = Harness(wheel_cls, config=cfg)
    with pytest.raises(ResourceExhausted):
        h.engine.schedule([req("big", payload=b"x" * 11)])
    with pytest.raises(ResourceExhausted):
        h.engine.schedule([req(f"m{i}") for i in range(6)])
    h.engine.schedule([req(f"k{i}") for i in range(3)])
    with pytest.raises(ResourceExhausted):
        h.engine.schedule([req("one-more")])
    assert len(h.engine.shards[0].jobs) == 3


def test_ack_errors_change_nothing(h):
    h.engine.schedule([req("a", at=0.0)])
    h.subscribe()
    h.engine.tick()
    (d,) = h.take()
    bad = [AckItem("a", d.job.attempt, d.epoch + 1, True), AckItem("a", 7, d.epoch, True),
           AckItem("ghost", 1, d.epoch, True), AckItem("", 1, d.epoch, True)]
    results, _ = h.engine.ack(bad)
    assert [type(r.error) for r in results] == [FailedPrecondition, FailedPrecondition, NotFound,
                                                 InvalidArgument]
    assert state(h, "a") == JobState.DISPATCHED


def test_an_ack_finds_its_lease_only_while_this_node_holds_it(h):
    """Acks of jobs leased here skip id validation and shard hashing (the
    lease names the shard). Ids that are not strings still get a clear
    error; a shard that left the node takes its leases with it (the ack is
    a redirect, the worker's credit comes back); and after a restart the
    leases of the old epoch are refused as before."""
    ids = [f"job-{i}" for i in range(40)]
    shards = {i: h.engine.shard_for(i).id for i in ids}
    a = ids[0]
    b = next(i for i in ids if shards[i] != shards[a])
    h.engine.schedule([req(a, at=0.0), req(b, at=0.0)])
    sub = h.subscribe()
    h.engine.tick()
    ds = {d.job.id: d for d in h.take()}
    assert sub.in_flight == 2
    epoch = ds[a].epoch
    results, _ = h.engine.ack([AckItem(None, 1, epoch, True), AckItem(7, 1, epoch, True),
                               AckItem(["x"], 1, epoch, True), AckItem(a + "\x00", 1, epoch, True)])
    assert [type(r.error) for r in results] == [InvalidArgument] * 4
    assert state(h, a) == state(h, b) == JobState.DISPATCHED and sub.in_flight == 2
    h.engine.detach_shard(shards[b])
    assert sub.in_flight == 1
    results, _ = h.engine.ack([AckItem(b, 1, ds[b].epoch, True), AckItem(a, 1, epoch, True)])
    assert isinstance(results[0].error, NotOwner) and results[0].error.shard == shards[b]
    assert results[1].error is None and state(h, a) == JobState.SUCCEEDED and sub.in_flight == 0
    # the same ack again: no lease now, so the full checks answer
    results, _ = h.engine.ack([AckItem(a, 1, epoch, True)])
    assert isinstance(results[0].error, FailedPrecondition)


def test_only_firing_shards_fire_and_set_the_next_wakeup(h):
    """tick and next_wakeup_us ask only the shards that fire, and follow
    every change of that: a drained shard's due job neither fires nor wakes
    the node; the shard taken over again fires once start_firing says so."""
    h.engine.schedule([req("here", at=1.0), req("elsewhere", at=5.0)])
    here = h.engine.shard_for("here").id
    assert h.engine.shard_for("elsewhere").id != here
    assert h.engine.next_wakeup_us() <= h.clock.now + US
    h.subscribe()
    h.engine.drain_shard(here)
    assert h.engine.next_wakeup_us() > h.clock.now + 4 * US  # only "elsewhere" counts now
    h.clock.advance(2.0)
    h.engine.tick()
    assert h.take() == [] and state(h, "here") == JobState.SCHEDULED
    old = h.engine.detach_shard(here)
    if h.log_kind == "memory":  # the shard's log, reopened as a new owner would
        h._stored[here] = old.log.keep()
    else:
        old.log.close()
    shard, _ = h.engine.load_shard(here, h._open_log(here))
    h.engine.attach_shard(shard, old.epoch + 1)
    h.engine.tick()
    assert h.take() == []  # attached, not firing yet
    h.engine.start_firing(here)
    assert h.engine.next_wakeup_us() <= h.clock.now
    h.engine.tick()
    assert [d.job.id for d in h.take()] == ["here"]
    h.clock.advance(3.0)
    h.engine.tick()
    assert [d.job.id for d in h.take()] == ["elsewhere"]


def test_a_shard_that_leaves_takes_its_ready_jobs_out_of_the_queues(h):
    """Ready-queue entries carry their shard and job records: a shard that
    is drained or detached must leave none behind (they would keep its
    records alive), and what is dispatched afterwards is the other shards'."""
    ids = [f"job-{i}" for i in range(40)]
    by_shard: dict[int, list[str]] = {}
    for i in ids:
        by_shard.setdefault(h.engine.shard_for(i).id, []).append(i)
    gone, drained, *kept = sorted(by_shard, key=lambda s: -len(by_shard[s]))
    h.engine.schedule([req(i, at=0.0) for i in ids])
    h.engine.tick()  # no worker yet: every job waits in its queue
    assert sum(len(heap) for heap in h.engine._ready.values()) == len(ids)
    left = h.engine.detach_shard(gone)
    h.engine.drain_shard(drained)
    entries = [e for heap in h.engine._ready.values() for e in heap]
    assert all(e[3] is not left and e[3].id != drained for e in entries)
    h.subscribe()
    assert sorted(d.job.id for d in h.take()) == sorted(i for s in kept for i in by_shard[s])
    assert not h.engine._ready


# --------------------------------------------------------------------------- restart


def test_restart_keeps_everything_and_releases_leases(h):
    h.engine.schedule([req("done", at=0.0), req("leased", at=0.0), req("later", at=100.0),
                       req("cancelled", at=50.0)])
    h.engine.cancel("cancelled")
    h.subscribe()
    h.engine.tick()
    ds = {d.job.id: d for d in h.take()}
    ack(h, ds["done"])
    old_epoch = ds["leased"].epoch
    engine = h.restart()
    assert engine.shard_for("leased").epoch == old_epoch + 1
    assert state(h, "done") == JobState.SUCCEEDED
    assert state(h, "cancelled") == JobState.CANCELLED
    assert state(h, "later") == JobState.SCHEDULED
    leased = engine.get("leased")[0]
    assert (JobState(leased.state), leased.attempt) == (JobState.SCHEDULED, 0)
    # The old delivery's ack is refused: its epoch is over.
    results, _ = engine.ack([AckItem("leased", 1, old_epoch, True)])
    assert isinstance(results[0].error, FailedPrecondition)
    h.subscribe()
    engine.tick()
    (d,) = h.take()
    assert (d.job.id, d.job.attempt, d.epoch) == ("leased", 1, old_epoch + 1)
    ack(h, d)
    h.run(101)
    assert [x.job.id for x in h.take()] == ["later"]


def test_successes_of_one_call_are_one_succeed_op_in_order(wheel_cls, tmp_path):
    """A call's successes on one shard are logged as one SUCCEED op per run
    (a failure between them is its own UPDATE, in the order applied), a
    repeated ack of an ended lease fails, and replay rebuilds the same jobs."""
    for kind in ("memory", "wal"):
        h = Harness(wheel_cls, kind, tmp_path / kind, config=EngineConfig(shard_count=1))
        h.engine.schedule([req(f"j{i}", at=0.0) for i in range(5)])
        h.subscribe()
        h.engine.tick()
        ds = {d.job.id: d for d in h.take()}
        h.clock.advance(1.0)
        before_seq = h.engine.shards[0].log.last_seq
        items = [AckItem(ds[j].job.id, ds[j].job.attempt, ds[j].epoch, j != "j2", "boom", False)
                 for j in ("j0", "j1", "j2", "j3", "j0")]
        results, _ = h.engine.ack(items)
        assert [r.error is None for r in results] == [True, True, True, True, False]
        assert isinstance(results[4].error, FailedPrecondition)
        if kind == "memory":  # the engine writes the same ops to either log
            ops = [r.payload for r in h.engine.shards[0].log.replay() if r.seq > before_seq]
            assert [op[0] for op in ops] == [SUCCEED, UPDATE, SUCCEED]
            assert ops[0] == [SUCCEED, h.clock.now, ["j0", "j1"]]
            assert ops[1][1] == "j2"
            assert ops[2] == [SUCCEED, h.clock.now, ["j3"]]
        shard = h.engine.shards[0]
        assert (shard.active, shard.in_flight) == (1, 1)  # j4 is still leased
        for j in ("j0", "j1", "j3"):
            job = h.engine.get(j)[0]
            assert (job.state, job.next_us, job.finished_us, job.last_error) == (
                JobState.SUCCEEDED, 0, h.clock.now, "")
            assert job.num in shard.wheel  # its retention timer
        before = {j.id: j for j in shard.jobs.values() if j.id != "j4"}
        h.restart()
        after = {j.id: j for s in h.engine.shards for j in s.jobs.values() if j.id != "j4"}
        assert after == before
        h.close()


def test_succeed_op_on_a_job_that_is_not_leased_takes_the_general_way(wheel_cls):
    """A SUCCEED op for a job that is not DISPATCHED (not one the engine
    writes) still leaves the shard consistent: counts and timers as for
    any state change."""
    h = Harness(wheel_cls, config=EngineConfig(shard_count=1))
    h.engine.schedule([req("s", at=5.0)])
    shard = h.engine.shards[0]
    num = h.engine.get("s")[0].num
    shard.apply([SUCCEED, h.clock.now, ["s"]])
    job = h.engine.get("s")[0]
    assert (job.state, job.next_us, job.finished_us) == (JobState.SUCCEEDED, 0, h.clock.now)
    assert (shard.active, shard.in_flight) == (0, 0)
    assert num in shard.wheel
    h.subscribe()
    h.run(6.0, step=1.0)
    assert h.take() == [] and h.engine.counters["fired"] == 0  # its fire timer was cancelled
    h.close()


def test_snapshots_bound_replay(wheel_cls, tmp_path):
    for kind in ("memory", "wal"):
        h = Harness(wheel_cls, kind, tmp_path / kind, config=EngineConfig(shard_count=2), snapshot_every=50)
        h.engine.schedule([req(f"s{i}", at=10 + i) for i in range(300)])
        for i in range(0, 300, 3):
            h.engine.cancel(f"s{i}")
        before = {j.id: j for s in h.engine.shards for j in s.jobs.values()}
        h.restart()
        after = {j.id: j for s in h.engine.shards for j in s.jobs.values()}
        assert after == before
        assert h.stats.snapshot_records > 0
        assert h.stats.records < 200  # most of the 400 ops came back from snapshots
        h.close()


def test_final_jobs_are_purged_after_retention(wheel_cls):
    h = Harness(wheel_cls, config=EngineConfig(shard_count=1, retention_us=10 * US))
    h.engine.schedule([req("p", at=0.0)])
    h.engine.cancel("p")
    h.run(9.0, step=1.0)
    assert h.engine.get("p")
    h.run(2.0, step=1.0)
    with pytest.raises(NotFound):
        h.engine.get("p")
    h.engine.schedule([req("p", at=0.0, payload=b"new")])  # the id is free again
    assert h.engine.get("p")[0].payload == b"new"


# --------------------------------------------------------------------------- listing


@pytest.mark.parametrize("shards", [1, 4])
def test_backlog_is_the_ready_count_and_the_oldest_ready_lateness(wheel_cls, tmp_path, shards):
    """``backlog`` (status pages' ready and lag) against its definition, while
    jobs of mixed priorities and due times fire, wait without credit, are
    dispatched, cancelled, acked and fire again; with one shard, long enough
    for its index of ready jobs to be rebuilt from stale entries."""
    h = Harness(wheel_cls, "memory", tmp_path, config=EngineConfig(shard_count=shards))
    rng = random.Random(5)

    def expected(shard):
        dues = [shard.jobs[shard.by_num[num]].next_us for num in shard.ready]
        return len(dues), (h.clock.now - min(dues)) if dues else 0

    ids = [f"j{i}" for i in range(6000)]
    h.engine.schedule([req(i, at=rng.uniform(0.0, 3.0), priority=rng.randint(-2, 2)) for i in ids])
    # due early, ready only once a later job succeeds: made ready by an ack, not by a tick
    h.engine.schedule([JobRequest(queue="q", id=f"d{i}", due_us=due(0.0), after=(f"j{i}",))
                       for i in range(0, 6000, 10)])
    h.subscribe(max_in_flight=64)
    held: list = []
    biggest_ready = biggest_index = rebuilt = 0
    for step in range(400):
        before = [len(s.ready_due) for s in h.engine.shards]
        h.clock.now += rng.randint(1, 20_000)
        h.engine.tick()
        held = [d for d in held + h.take() if h.engine.get(d.job.id)[0].state == JobState.DISPATCHED
                and h.engine.get(d.job.id)[0].attempt == d.job.attempt]  # not cancelled meanwhile
        rng.shuffle(held)
        k = rng.randint(0, 12) if step < 200 else len(held)  # a backlog builds up, then drains
        for d in held[:k]:
            ack(h, d, success=rng.random() < 0.7)  # failures come back later (backoff)
        held = held[k:]
        for job_id in rng.sample(ids, 5):
            if state(h, job_id) in (JobState.SCHEDULED, JobState.DISPATCHED):
                h.engine.cancel(job_id)
        for shard, n in zip(h.engine.shards, before, strict=True):
            rebuilt += len(shard.ready_due) < n  # only a rebuild shrinks it between backlog calls
            biggest_ready = max(biggest_ready, len(shard.ready))
            biggest_index = max(biggest_index, len(shard.ready_due) + shard.ready_nums)
            if step % 25 == 0 or step > 390:  # rarely: stale entries pile up in between
                assert h.engine.backlog(shard, h.clock.now) == expected(shard)
    h.close()
    assert biggest_ready > 50  # jobs did wait for credit
    assert biggest_index <= 2 * biggest_ready + 1024  # bounded: rebuilt from ``ready`` when larger
    if shards == 1:
        assert rebuilt > 0


def test_list_pages_and_filters(h):
    h.engine.schedule([req(f"j{i:02d}", at=float(i), queue="a" if i % 2 else "b") for i in range(25)])
    h.engine.cancel("j03")
    seen, token = [], ""
    while True:
        page, token = h.engine.list(page_size=4, page_token=token)
        assert len(page) <= 4
        seen += [j.id for j, _ in page]
        if not token:
            break
    assert sorted(seen) == [f"j{i:02d}" for i in range(25)] and len(seen) == 25
    only_a, _ = h.engine.list(queue="a", page_size=100)
    assert len(only_a) == 12
    cancelled, _ = h.engine.list(states=[JobState.CANCELLED], page_size=100)
    assert [j.id for j, _ in cancelled] == ["j03"]
    with pytest.raises(InvalidArgument):
        h.engine.list(page_token="garbage")


# --------------------------------------------------------------------------- cron


def _local(tz: str, *args) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * US)


def _run_cron(wheel_cls, tz: str, expr: str, start_us: int, hours: float) -> list[datetime]:
    h = Harness(wheel_cls, config=EngineConfig(shard_count=1))
    h.clock.now = start_us
    h.engine.schedule([JobRequest(queue="q", id="c", cron_expr=expr, time_zone=tz)])
    h.subscribe()
    fired = []
    for _ in range(int(hours * 60)):
        h.run(60.0, step=60.0)
        for d in h.take():
            fired.append(datetime.fromtimestamp(d.due_us / US, UTC).astimezone(ZoneInfo(tz)))
            ack(h, d)
    return fired


@pytest.mark.parametrize(("tz", "day"), [("Europe/Paris", (2026, 3, 29)), ("America/New_York", (2026, 3, 8))])
def test_cron_dst_gap_runs_after_the_gap(wheel_cls, tz, day):
    start = _local(tz, *day, 0, 0)
    fired = _run_cron(wheel_cls, tz, "30 2 * * *", start, 24)
    assert len(fired) == 1  # the day still gets its run, at the first valid time after the gap
    assert (fired[0].hour, fired[0].minute) == (3, 0)


@pytest.mark.parametrize(("tz", "day"), [("Europe/Paris", (2026, 10, 25)),
                                         ("America/New_York", (2026, 11, 1))])
def test_cron_dst_overlap_fixed_hour_runs_once(wheel_cls, tz, day):
    start = _local(tz, *day, 0, 0)
    repeated = 1 if "New_York" in tz else 2  # the local hour that happens twice
    fixed = _run_cron(wheel_cls, tz, f"30 {repeated} * * *", start, 25)
    assert len(fixed) == 1
    assert fixed[0].fold == 0  # at the first of the two instants
    hourly = _run_cron(wheel_cls, tz, "15 * * * *", start, 25)
    assert len(hourly) == 25  # 25 real hours, one run each
    assert [f.hour for f in hourly].count(repeated) == 2  # the repeated hour runs in both


def test_cron_keeps_firing_and_counts_executions(h):
    h.engine.schedule([JobRequest(queue="q", id="every10", cron_expr="*/10 * * * * *")])
    h.subscribe()
    for _ in range(5):
        h.run(10.0, step=0.5)
        for d in h.take():
            ack(h, d)
    job = h.engine.get("every10")[0]
    assert job.executions == 5 and JobState(job.state) == JobState.SCHEDULED and job.misfires == 0


@pytest.mark.parametrize(("policy", "runs", "misfires"), [
    (Misfire.FIRE_ONCE, 1, 6),
    (Misfire.FIRE_ALL, 6, 6),
    (Misfire.SKIP, 0, 6),
])
def test_misfire_policies_after_downtime(wheel_cls, tmp_path, policy, runs, misfires):
    h = Harness(wheel_cls, "wal", tmp_path, config=EngineConfig(shard_count=1))
    h.clock.now = _local("UTC", 2026, 1, 1, 0, 5)
    h.engine.schedule([JobRequest(queue="q", id="c", cron_expr="*/10 * * * *", misfire=int(policy))])
    h.clock.advance(3600)  # down for an hour: 00:10 .. 01:00 were missed
    h.restart()
    h.subscribe()
    got = []
    for _ in range(20):  # a few seconds after restart (FIRE_ALL runs back to back)
        h.engine.tick()
        for d in h.take():
            got.append(d)
            ack(h, d)
        h.clock.advance(0.1)
    job = h.engine.get("c")[0]
    assert len(got) == runs
    assert job.misfires == misfires
    assert h.engine.counters["misfired"] == misfires
    h.close()
