"""Replay equivalence: random operations, and every few steps the engine is
rebuilt from its logs (the real write-ahead log, and the in-memory one). The
rebuilt state must equal the live state, except for what a restart is
documented to do: each shard starts a new epoch, and every lease is released
(the job is due at once, its lost attempt not counted)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine_harness import T0, Harness
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from wheelsched.engine import US, AckItem, EngineConfig, Extension, JobRequest, JobState
from wheelsched.errors import WheelschedError
from wheelsched.wheel import TimingWheel

IDS = [f"job-{i}" for i in range(10)] + ["{t}a", "{t}b"]
_DISPATCHED = int(JobState.DISPATCHED)
_WAITING = int(JobState.WAITING)


def expected_after_restart(job, now_us):
    if job.state == _DISPATCHED:
        return job._replace(state=int(JobState.SCHEDULED), attempt=job.attempt - 1, next_us=now_us,
                            last_error="lease lost: node restarted")
    return job


class ReplayMachine(RuleBasedStateMachine):
    log_kind = "wal"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ws-replay-"))
        self.h = Harness(TimingWheel, self.log_kind, self.dir, config=EngineConfig(shard_count=3),
                         snapshot_every=7, rand=lambda: 0.25)
        self.h.subscribe(max_in_flight=3)
        self.leases = []

    def teardown(self) -> None:
        self.h.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def start(self) -> None:
        self.h.clock.now = T0

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except WheelschedError:
            return None

    @rule(job_id=st.sampled_from(IDS), at=st.floats(-5, 60), kind=st.sampled_from(["due", "delay", "cron"]),
          priority=st.integers(-2, 2), payload=st.binary(max_size=8), attempts=st.integers(1, 3))
    def schedule(self, job_id, at, kind, priority, payload, attempts):
        common = dict(queue="q", id=job_id, priority=priority, payload=payload, max_attempts=attempts,
                      min_backoff_us=US, lease_us=5 * US)
        if kind == "due":
            r = JobRequest(due_us=self.h.clock.now + int(at * US), **common)
        elif kind == "delay":
            r = JobRequest(delay_us=int(abs(at) * US), **common)
        else:
            r = JobRequest(cron_expr="*/20 * * * * *", **common)
        self._try(self.h.engine.schedule, [r])

    @rule(job_id=st.sampled_from(IDS))
    def cancel(self, job_id):
        self._try(self.h.engine.cancel, job_id)

    @rule(job_id=st.sampled_from(IDS))
    def requeue(self, job_id):
        self._try(self.h.engine.requeue, job_id)

    @rule(seconds=st.sampled_from([0.0, 0.3, 1.0, 3.0, 7.0, 25.0]))
    def advance(self, seconds):
        self.h.clock.advance(seconds)
        self.h.engine.tick()
        self.leases += self.h.take()

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), success=st.booleans(), retryable=st.booleans())
    def ack(self, data, success, retryable):
        d = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self.h.engine.ack([AckItem(d.job.id, d.job.attempt, d.epoch, success, "err", retryable)])

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def ack_many(self, data):
        """Several acks in one call (successes of one shard share one SUCCEED
        op), failures between them, and items repeated: a lease ends once."""
        picks = data.draw(st.lists(st.tuples(st.integers(0, len(self.leases) - 1), st.booleans()),
                                   min_size=2, max_size=8))
        items = [AckItem(self.leases[i].job.id, self.leases[i].job.attempt, self.leases[i].epoch,
                         success, "err", True) for i, success in picks]
        results, _ = self.h.engine.ack(items)
        ended = set()
        for (i, _), result in zip(picks, results, strict=True):
            if i in ended:
                assert result.error is not None
            elif result.error is None:
                ended.add(i)
        picked = {i for i, _ in picks}
        self.leases = [d for i, d in enumerate(self.leases) if i not in picked]

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def extend(self, data):
        d = data.draw(st.sampled_from(self.leases))
        self.h.engine.extend([Extension(d.job.id, d.job.attempt, d.epoch, 4 * US)])

    @rule()
    def restart(self):
        now = self.h.clock.now
        before = {j.id: expected_after_restart(j, now) for s in self.h.engine.shards for j in s.jobs.values()}
        epochs = [s.epoch for s in self.h.engine.shards]
        self.h.restart()
        after = {j.id: j for s in self.h.engine.shards for j in s.jobs.values()}
        assert after == before
        assert [s.epoch for s in self.h.engine.shards] == [e + 1 for e in epochs]
        self.leases = []
        self.h.subscribe(max_in_flight=3)

    @invariant()
    def counts_match_states(self):
        for s in self.h.engine.shards:
            states = [j.state for j in s.jobs.values()]
            assert s.active == sum(1 for x in states if x in (1, 2, _WAITING))
            assert s.in_flight == states.count(_DISPATCHED)
            for j in s.jobs.values():  # every job has a timer, except the ones waiting for a
                if j.state == _WAITING:  # worker or for their dependencies
                    assert j.num not in s.wheel and s.deps[j.id].open
                else:
                    assert (j.num in s.wheel) or (j.num in s.ready)


class MemoryReplayMachine(ReplayMachine):
    log_kind = "memory"


_settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestReplayWAL = ReplayMachine.TestCase
TestReplayWAL.settings = _settings
TestReplayMemory = MemoryReplayMachine.TestCase
TestReplayMemory.settings = _settings
