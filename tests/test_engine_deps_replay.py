"""Replay equivalence with dependencies: the random operations of
test_engine_replay plus jobs that run after others (any policy, across
shards and within a {tag}), and every restart must rebuild the same jobs,
the same open dependencies and the same reverse index."""

from __future__ import annotations

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from test_engine_replay import IDS, ReplayMachine, _settings

from wheelsched.engine import US, JobRequest


def dependency_state(engine) -> tuple[dict, dict]:
    deps = {job_id: (d.after, d.policy, frozenset(d.open), dict(d.seen), frozenset(d.done))
            for s in engine.shards for job_id, d in s.deps.items()}
    links = {(s.id, dep): frozenset(w) for s in engine.shards for dep, w in s.links.items()}
    return deps, links


class DependencyReplayMachine(ReplayMachine):
    @precondition(lambda self: any(s.jobs for s in self.h.engine.shards))
    @rule(data=st.data(), job_id=st.sampled_from(IDS), at=st.floats(-5, 30),
          policy=st.sampled_from([0, 1, 2]), cron=st.booleans())
    def schedule_after(self, data, job_id, at, policy, cron):
        existing = sorted(j for s in self.h.engine.shards for j in s.jobs if j != job_id) or IDS
        after = data.draw(st.lists(st.sampled_from(existing), min_size=1, max_size=3, unique=True))
        common = dict(queue="q", id=job_id, after=tuple(after), on_dependency_failure=policy,
                      max_attempts=2, min_backoff_us=US, lease_us=5 * US)
        if cron:
            r = JobRequest(cron_expr="*/20 * * * * *", **common)
        else:
            r = JobRequest(due_us=self.h.clock.now + int(at * US), **common)
        jobs = self._try(self.h.engine.schedule, [r])
        event("scheduled with dependencies" if jobs else "refused")

    @rule()
    def restart(self):
        before = dependency_state(self.h.engine)
        if any(d[2] for d in before[0].values()):
            event("restart with open dependencies")
        super().restart()
        assert dependency_state(self.h.engine) == before


class MemoryDependencyReplayMachine(DependencyReplayMachine):
    log_kind = "memory"


_more = settings(_settings, max_examples=100, stateful_step_count=50)
TestDependencyReplayWAL = DependencyReplayMachine.TestCase
TestDependencyReplayWAL.settings = _more
TestDependencyReplayMemory = MemoryDependencyReplayMachine.TestCase
TestDependencyReplayMemory.settings = _more
