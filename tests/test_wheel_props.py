"""Timing wheel property tests: Hypothesis state machines against a plain
sorted model, for each implementation, and a differential machine that runs
the C wheel and the twin side by side."""

from __future__ import annotations

import bisect
from array import array

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from wheelsched.wheel import PyTimingWheel

try:
    from wheelsched._wheel_c import TimingWheel as CTimingWheel
except ImportError:
    CTimingWheel = None

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

SETTINGS = settings(
    max_examples=250,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# A small id space so that duplicates, re-inserts and cancels of pending ids
# are common; a few big ids for the index's sake.
ids = st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 + 7, 2**62, INT64_MAX]))
# Jumps from tiny to huge: tick by tick, across level boundaries, 2**40+.
jumps = st.one_of(
    st.integers(0, 3),
    st.integers(0, 70),
    st.integers(0, 5000),
    st.sampled_from([63, 64, 65, 4095, 4096, 262144, 2**24, 2**30]),
    st.integers(2**40, 2**41),
    st.integers(0, 2**62),
)


def offsets():
    """Deadline offsets from now: past (incl. far past), now, near, far."""
    return st.one_of(
        st.integers(-100, 100),
        st.integers(-(2**63), 0),
        st.integers(1, 5000),
        st.integers(1, 2**26),
        st.integers(2**40, 2**41),
        st.integers(1, 2**64),
    )


def clamp(t: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, t))


# Ticks near slot boundaries of level k (the j-th next one, give or take a
# couple of ticks): where an off-by-one in cascading would fire early or late.
aligned = st.tuples(
    st.one_of(st.integers(1, 3), st.integers(1, 10)), st.integers(0, 2), st.integers(-2, 2)
)
boundary = st.tuples(st.one_of(st.integers(1, 3), st.integers(1, 10)), st.integers(1, 2), st.just(0))


def aligned_tick(now: int, spec: tuple[int, int, int]) -> int:
    k, j, delta = spec
    return clamp((((now >> (6 * k)) + j) << (6 * k)) + delta)


class Model:
    """The obvious implementation: a dict and a sorted list."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.deadline: dict[int, int] = {}
        self.order: list[tuple[int, int]] = []  # sorted (deadline, id)

    def insert(self, timer_id: int, deadline: int) -> None:
        self.deadline[timer_id] = deadline
        bisect.insort(self.order, (deadline, timer_id))

    def cancel(self, timer_id: int) -> bool:
        d = self.deadline.pop(timer_id, None)
        if d is None:
            return False
        self.order.remove((d, timer_id))
        return True

    def advance(self, now: int) -> list[tuple[int, int]]:
        self.now = now
        k = bisect.bisect_right(self.order, (now, INT64_MAX))
        fired, self.order = self.order[:k], self.order[k:]
        for _, i in fired:
            del self.deadline[i]
        return fired


def check_fired(out: array, expected: list[tuple[int, int]], deadlines: dict[int, int]) -> None:
    """Same set as the model, ordered by deadline (ties in any order)."""
    assert isinstance(out, array) and out.typecode == "q"
    got = [(deadlines[i], i) for i in out]
    assert [d for d, _ in got] == [d for d, _ in expected]
    assert sorted(got) == expected


class WheelVsModel(RuleBasedStateMachine):
    impl: type = PyTimingWheel

    @initialize(now=st.integers(-(2**62), 2**62))
    def init(self, now: int) -> None:
        self.w = self.impl(now)
        self.m = Model(now)

    @rule(timer_id=ids, offset=offsets())
    def insert(self, timer_id: int, offset: int) -> None:
        deadline = clamp(self.m.now + offset)
        if timer_id in self.m.deadline:
            with pytest.raises(KeyError):
                self.w.insert(timer_id, deadline)
        else:
            self.w.insert(timer_id, deadline)
            self.m.insert(timer_id, deadline)

    @rule(timer_id=ids, spec=aligned)
    def insert_aligned(self, timer_id: int, spec) -> None:
        self.insert(timer_id, aligned_tick(self.m.now, spec) - self.m.now)

    @rule(spec=boundary)
    def advance_aligned(self, spec) -> None:
        self.advance(max(0, aligned_tick(self.m.now, spec) - self.m.now))

    @rule(before=st.integers(1, 2))
    def advance_just_before_next_expiry(self, before: int) -> None:
        nxt = self.w.next_expiry()
        if nxt is not None and nxt - before > self.m.now:
            self.advance(nxt - before - self.m.now)

    @rule(
        batch=st.lists(st.tuples(ids, offsets()), max_size=12),
        kind=st.sampled_from(["array", "list", "memoryview"]),
    )
    def insert_many(self, batch: list[tuple[int, int]], kind: str) -> None:
        tids = [i for i, _ in batch]
        dls = [clamp(self.m.now + o) for _, o in batch]
        if kind == "array":
            args = (array("q", tids), array("q", dls))
        elif kind == "memoryview":
            args = (memoryview(array("q", tids)), memoryview(array("q", dls)))
        else:
            args = (tids, dls)
        clash = len(set(tids)) != len(tids) or any(i in self.m.deadline for i in tids)
        if clash:
            before = len(self.w)
            with pytest.raises(KeyError):
                self.w.insert_many(*args)
            assert len(self.w) == before
            for i in tids:
                assert (i in self.w) == (i in self.m.deadline)
        else:
            self.w.insert_many(*args)
            for i, d in zip(tids, dls, strict=True):
                self.m.insert(i, d)

    @rule(timer_id=ids)
    def cancel(self, timer_id: int) -> None:
        assert self.w.cancel(timer_id) == self.m.cancel(timer_id)

    @precondition(lambda self: self.m.deadline)
    @rule(data=st.data())
    def cancel_pending(self, data) -> None:
        timer_id = data.draw(st.sampled_from(sorted(self.m.deadline)))
        assert self.w.cancel(timer_id) is True
        self.m.cancel(timer_id)

    @rule(jump=jumps)
    def advance(self, jump: int) -> None:
        now = clamp(self.m.now + jump)
        deadlines = dict(self.m.deadline)
        check_fired(self.w.advance(now), self.m.advance(now), deadlines)
        assert self.w.now == now

    @rule()
    def advance_to_next_expiry(self) -> None:
        nxt = self.w.next_expiry()
        if nxt is None:
            return
        now = max(nxt, self.m.now)
        deadlines = dict(self.m.deadline)
        check_fired(self.w.advance(now), self.m.advance(now), deadlines)

    @rule(back=st.integers(1, 2**40))
    def advance_backwards(self, back: int) -> None:
        if self.m.now == INT64_MIN:
            return
        with pytest.raises(ValueError):
            self.w.advance(clamp(self.m.now - back))

    @rule(timer_id=ids)
    def deadline(self, timer_id: int) -> None:
        if timer_id in self.m.deadline:
            assert self.w.deadline(timer_id) == self.m.deadline[timer_id]
        else:
            with pytest.raises(KeyError):
                self.w.deadline(timer_id)

    @rule(timer_id=ids)
    def contains(self, timer_id: int) -> None:
        assert (timer_id in self.w) == (timer_id in self.m.deadline)

    @invariant()
    def agrees(self) -> None:
        assert len(self.w) == len(self.m.deadline)
        assert self.w.now == self.m.now
        nxt = self.w.next_expiry()
        if not self.m.order:
            assert nxt is None
        else:
            earliest = self.m.order[0][0]
            assert nxt is not None and nxt <= earliest
            if earliest > self.m.now:
                assert nxt > self.m.now  # no work is due yet
            else:
                assert nxt <= self.m.now  # a past deadline is pending


class PyWheelVsModel(WheelVsModel):
    impl = PyTimingWheel


TestPyWheelVsModel = SETTINGS(PyWheelVsModel).TestCase

if CTimingWheel is not None:

    class CWheelVsModel(WheelVsModel):
        impl = CTimingWheel

    TestCWheelVsModel = SETTINGS(CWheelVsModel).TestCase


class CVsTwin(RuleBasedStateMachine):
    """The same random operations on both implementations give identical
    results: errors, fired ids (exact order), next_expiry, lengths."""

    @initialize(now=st.integers(-(2**62), 2**62))
    def init(self, now: int) -> None:
        self.c = CTimingWheel(now)
        self.p = PyTimingWheel(now)

    def both(self, name: str, *args):
        results = []
        for w in (self.c, self.p):
            try:
                results.append(("ok", getattr(w, name)(*args)))
            except Exception as exc:
                results.append(("raised", type(exc)))
        assert results[0] == results[1], (name, args, results)
        return results[0]

    @rule(timer_id=st.one_of(ids, st.integers(-5, -1)), offset=offsets())
    def insert(self, timer_id: int, offset: int) -> None:
        self.both("insert", timer_id, clamp(self.p.now + offset))

    @rule(timer_id=ids, spec=aligned)
    def insert_aligned(self, timer_id: int, spec) -> None:
        self.both("insert", timer_id, aligned_tick(self.p.now, spec))

    @rule(spec=boundary)
    def advance_aligned(self, spec) -> None:
        self.both("advance", max(self.p.now, aligned_tick(self.p.now, spec)))

    @rule(batch=st.lists(st.tuples(ids, offsets()), max_size=10))
    def insert_many(self, batch) -> None:
        tids = array("q", [i for i, _ in batch])
        self.both("insert_many", tids, array("q", [clamp(self.p.now + o) for _, o in batch]))

    @rule(timer_id=ids)
    def cancel(self, timer_id: int) -> None:
        self.both("cancel", timer_id)

    @rule(jump=st.one_of(jumps, st.integers(-10, -1)))
    def advance(self, jump: int) -> None:
        self.both("advance", clamp(self.p.now + jump))

    @rule(timer_id=ids)
    def deadline(self, timer_id: int) -> None:
        self.both("deadline", timer_id)

    @rule()
    def clear(self) -> None:
        self.both("clear")

    @invariant()
    def same(self) -> None:
        assert self.c.next_expiry() == self.p.next_expiry()
        assert len(self.c) == len(self.p)
        assert self.c.now == self.p.now


if CTimingWheel is not None:
    TestCVsTwin = SETTINGS(CVsTwin).TestCase
