"""Timing wheel: edge cases, bad input, scale. Every test runs against both
implementations (the C extension and the pure-Python twin)."""

from __future__ import annotations

import importlib
import random
import time
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from impl_helpers import check_c_chosen

from wheelsched import _wheel_py
from wheelsched import wheel as wheel_mod
from wheelsched.wheel import PyTimingWheel

try:
    from wheelsched._wheel_c import TimingWheel as CTimingWheel

    from wheelsched import _wheel_c
except ImportError:  # the test below fails unless the twin was asked for
    _wheel_c = CTimingWheel = None
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

IMPLS = [
    pytest.param(PyTimingWheel, id="py"),
    pytest.param(
        CTimingWheel,
        id="c",
        marks=pytest.mark.skipif(CTimingWheel is None, reason="C extension not built"),
    ),
]


@pytest.fixture(params=IMPLS)
def W(request):
    return request.param


def fired_with_deadlines(w, now: int, deadlines: dict[int, int]) -> list[tuple[int, int]]:
    """advance(now) as (deadline, id) pairs, checking the deadline order."""
    out = w.advance(now)
    assert isinstance(out, array) and out.typecode == "q"
    pairs = [(deadlines[i], i) for i in out]
    assert [d for d, _ in pairs] == sorted(d for d, _ in pairs)
    return pairs


def test_c_extension_is_built():
    check_c_chosen(wheel_mod, _wheel_c, "TimingWheel", "earliest_expiry", "due_positions")


def test_pure_python_env_forces_twin(monkeypatch):
    monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", "1")
    try:
        mod = importlib.reload(wheel_mod)
        assert mod.IMPLEMENTATION == "python"
        assert mod.TimingWheel is PyTimingWheel
        monkeypatch.setenv("WHEELSCHED_PURE_PYTHON", "0")
        mod = importlib.reload(wheel_mod)
        assert ("python" if CTimingWheel is None else "c") == mod.IMPLEMENTATION
    finally:
        monkeypatch.undo()
        importlib.reload(wheel_mod)


def test_basic(W):
    w = W(100)
    assert w.now == 100 and len(w) == 0 and w.next_expiry() is None
    w.insert(1, 150)
    w.insert(2, 120)
    w.insert(3, 150)
    assert len(w) == 3 and 2 in w and 4 not in w
    assert w.deadline(1) == 150
    assert w.next_expiry() == 120
    assert list(w.advance(119)) == []
    assert list(w.advance(120)) == [2]
    assert sorted(w.advance(1000)) == [1, 3]
    assert w.now == 1000 and len(w) == 0 and w.next_expiry() is None


@pytest.mark.skipif(CTimingWheel is None, reason="C extension not built")
def test_c_fired_batches_are_untracked_and_usable():
    """The C wheel hands out its batches untracked (an engine keeps them a
    while, and the collector must not walk them); they are ordinary arrays
    otherwise, and freed by reference counting."""
    import gc
    import weakref

    w = CTimingWheel(0)
    w.insert_many(array("q", range(1000)), array("q", [5] * 1000))
    out = w.advance(5)
    assert not gc.is_tracked(out)
    assert sorted(out) == list(range(1000))
    out.append(7)
    assert out[-1] == 7 and len(out) == 1001
    empty = w.advance(6)
    assert len(empty) == 0 and not gc.is_tracked(empty)
    ref = weakref.ref(out)
    del out
    assert ref() is None


def test_fires_exactly_at_tick(W):
    """Cascading keeps every timer exact: walking tick by tick, each timer
    fires at its own deadline, at every level."""
    w = W(0)
    deadlines = {i: d for i, d in enumerate([1, 63, 64, 65, 4095, 4096, 4097, 262143, 262145, 300000])}
    for i, d in deadlines.items():
        w.insert(i, d)
    seen = {}
    t = 0
    while len(w):
        nxt = w.next_expiry()
        assert nxt is not None and nxt >= t
        t = max(nxt, t + 1) if nxt <= t else nxt
        for i in w.advance(t):
            seen[i] = t
    assert seen == deadlines


def test_far_future_and_extremes(W):
    w = W(0)
    far = {1: 2**40, 2: 2**40 + 1, 3: 2**62, 4: INT64_MAX, 5: 2**50 + 12345, 6: INT64_MAX - 1}
    for i, d in far.items():
        w.insert(i, d)
    assert w.next_expiry() <= 2**40
    assert list(w.advance(2**40 - 1)) == []
    assert fired_with_deadlines(w, 2**40, far) == [(2**40, 1)]
    got = fired_with_deadlines(w, 2**62, far)
    assert got == [(2**40 + 1, 2), (2**50 + 12345, 5), (2**62, 3)]
    assert w.next_expiry() <= INT64_MAX - 1
    assert fired_with_deadlines(w, INT64_MAX, far) == [(INT64_MAX - 1, 6), (INT64_MAX, 4)]
    assert len(w) == 0 and w.now == INT64_MAX
    # At the end of time every insert is a past deadline.
    w.insert(7, INT64_MAX)
    assert w.next_expiry() == INT64_MAX
    assert list(w.advance(INT64_MAX)) == [7]


def test_negative_ticks_and_past_deadlines(W):
    w = W(-(2**62))
    w.insert(1, INT64_MIN)  # long past
    w.insert(2, -(2**62))  # == now: fires on the next advance
    w.insert(3, -(2**62) + 5)
    w.insert(4, -5)
    assert w.next_expiry() == INT64_MIN
    got = w.advance(-(2**62))
    assert list(got) == [1, 2]
    assert w.next_expiry() == -(2**62) + 5
    assert list(w.advance(0)) == [3, 4]


def test_past_deadlines_fire_on_same_now_again(W):
    w = W(50)
    assert list(w.advance(50)) == []
    w.insert(1, 40)
    w.insert(2, 10)
    w.insert(3, 50)
    assert w.next_expiry() <= 10
    assert list(w.advance(50)) == [2, 1, 3]  # deadline order
    assert list(w.advance(50)) == []


def test_past_deadlines_before_wheel_timers(W):
    w = W(0)
    w.insert(1, 100)
    w.advance(50)
    w.insert(2, 49)
    w.insert(3, 20)
    assert fired_with_deadlines(w, 100, {1: 100, 2: 49, 3: 20}) == [(20, 3), (49, 2), (100, 1)]


def test_reinsert_after_fire_and_cancel(W):
    w = W(0)
    w.insert(1, 10)
    assert list(w.advance(10)) == [1]
    assert 1 not in w
    w.insert(1, 20)
    assert w.cancel(1) is True
    assert w.cancel(1) is False
    w.insert(1, 30)
    assert w.deadline(1) == 30
    assert list(w.advance(100)) == [1]


def test_duplicate_insert_raises(W):
    w = W(0)
    w.insert(5, 100)
    with pytest.raises(KeyError):
        w.insert(5, 200)
    assert w.deadline(5) == 100 and len(w) == 1


def test_cancel_timer_a_cascade_is_about_to_move(W):
    """Timers on a high level that share a slot; cancel some right before the
    advance that cascades them, and the rest still fire exactly."""
    w = W(0)
    base = 64**3  # one level-3 slot
    deadlines = {i: base + i * 1000 for i in range(50)}
    for i, d in deadlines.items():
        w.insert(i, d)
    w.advance(base - 1)  # the next advance cascades the slot
    for i in range(0, 50, 3):
        assert w.cancel(i)
        del deadlines[i]
    got = fired_with_deadlines(w, base + 10_000, deadlines)
    assert got == sorted((d, i) for i, d in deadlines.items() if d <= base + 10_000)
    # Cancel mid-way through the cascade levels too.
    for i in list(deadlines)[-5:]:
        assert w.cancel(i)
        del deadlines[i]
    got = fired_with_deadlines(w, base + 10**6, deadlines)
    assert sorted(i for _, i in got) == sorted(i for i, d in deadlines.items() if d > base + 10_000)
    assert len(w) == 0


def test_step_by_step_equals_one_jump(W):
    rng = random.Random(7)
    deadlines = {i: rng.randrange(-50, 20_000) for i in range(2000)}
    a, b = W(0), W(0)
    for i, d in deadlines.items():
        a.insert(i, d)
        b.insert(i, d)
    stepped: list[tuple[int, int]] = []
    for t in range(0, 20_001):
        stepped.extend(fired_with_deadlines(a, t, deadlines))
    jumped = fired_with_deadlines(b, 20_000, deadlines)
    assert sorted(stepped) == sorted(jumped)
    assert [d for d, _ in stepped] == [d for d, _ in jumped]
    assert len(a) == len(b) == 0


def test_insert_many_inputs(W):
    w = W(0)
    w.insert_many(array("q", [1, 2]), array("q", [10, 20]))
    w.insert_many([3, 4], [30, 40])
    w.insert_many(memoryview(array("q", [5])), memoryview(array("q", [50])))
    w.insert_many(range(6, 8), (60, 70))
    w.insert_many(array("i", [8]), array("l", [80]))
    w.insert_many([], [])
    assert len(w) == 8
    assert list(w.advance(100)) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_insert_many_all_or_nothing(W):
    w = W(0)
    w.insert(3, 5)
    before = (len(w), w.next_expiry())
    with pytest.raises(KeyError):
        w.insert_many([10, 11, 3, 12], [1, 2, 3, 4])  # 3 already pending
    with pytest.raises(KeyError):
        w.insert_many([20, 21, 20], [1, 2, 3])  # duplicated in the batch
    with pytest.raises(ValueError):
        w.insert_many([30, -1], [1, 2])  # bad id
    with pytest.raises(ValueError):
        w.insert_many([40, 41], [1])  # lengths differ
    with pytest.raises(OverflowError):
        w.insert_many([50, 2**63], [1, 2])
    with pytest.raises(TypeError):
        w.insert_many([60, 1.5], [1, 2])
    assert len(w) == before[0]
    for i in (10, 11, 12, 20, 21, 30, 40, 41, 50, 60):
        assert i not in w
    assert w.next_expiry() <= 5
    assert list(w.advance(10)) == [3]
    w.insert_many([10, 11, 12], [1, 2, 3])  # the rolled-back ids are free again
    assert list(w.advance(10)) == [10, 11, 12]


def test_bad_inputs_change_nothing(W):
    w = W(10)
    w.insert(1, 20)
    for bad_id, exc in ((-1, ValueError), (2**63, OverflowError), (-(2**64), OverflowError)):
        with pytest.raises(exc):
            w.insert(bad_id, 30)
        with pytest.raises(exc):
            w.cancel(bad_id)
        with pytest.raises(exc):
            w.deadline(bad_id)
        assert bad_id not in w
    with pytest.raises(OverflowError):
        w.insert(2, 2**63)
    with pytest.raises(OverflowError):
        w.insert(2, INT64_MIN - 1)
    with pytest.raises(TypeError):
        w.insert(1.0, 5)
    with pytest.raises(TypeError):
        w.insert(2, 5.0)
    with pytest.raises(ValueError):
        w.advance(9)
    with pytest.raises(OverflowError):
        w.advance(2**63)
    with pytest.raises(KeyError):
        w.deadline(2)
    assert "x" not in w and 1.5 not in w
    assert w.now == 10 and len(w) == 1 and w.deadline(1) == 20 and w.next_expiry() == 20
    assert list(w.advance(20)) == [1]
    with pytest.raises(TypeError):
        W("0")


def test_clear(W):
    w = W(5)
    w.insert_many(range(1000), range(0, 100_000, 100))
    w.insert(5000, 1)
    w.clear()
    assert len(w) == 0 and w.next_expiry() is None and w.now == 5 and 7 not in w
    assert list(w.advance(10**6)) == []
    w.insert(7, 10**6 + 1)
    assert list(w.advance(10**6 + 1)) == [7]


def test_next_expiry_bounds(W):
    """Never later than the earliest deadline; exact on the lowest level and
    whenever nothing was cancelled from the next slot."""
    rng = random.Random(3)
    w = W(0)
    deadlines = {}
    for i in range(300):
        d = rng.randrange(1, 10**7)
        w.insert(i, d)
        deadlines[i] = d
    while deadlines:
        assert w.next_expiry() == min(deadlines.values())  # no cancels: exact
        t = w.next_expiry()
        for i in w.advance(t):
            assert deadlines.pop(i) == t
    # With cancels it may be early, never late.
    for i in range(300):
        w.insert(i, w.now + rng.randrange(1, 10**7))
    for i in range(0, 300, 2):
        w.cancel(i)
    while len(w):
        earliest = min(w.deadline(i) for i in range(1, 300, 2) if i in w)
        t = w.next_expiry()
        assert w.now <= t <= earliest
        w.advance(t)


def test_memory_bytes_grows(W):
    w = W(0)
    empty = w.memory_bytes()
    assert empty > 0
    w.insert_many(range(10_000), range(10_000))
    assert w.memory_bytes() > empty


def _bulk(W, n: int) -> None:
    rng = random.Random(1)
    ticks = 86_400_000
    ids = array("q", range(n))
    deadlines = array("q", (rng.randrange(1, ticks) for _ in range(n)))
    w = W(0)
    t0 = time.perf_counter()
    w.insert_many(ids, deadlines)
    assert len(w) == n
    # cancel every 10th, then fire the rest in 1 s steps and one jump
    for i in range(0, n, 10):
        assert w.cancel(i)
    fired = 0
    last = -1
    for t in range(0, ticks // 2, 1_000_000):
        out = w.advance(t)
        if len(out):
            ds = [deadlines[i] for i in out[:: max(1, len(out) // 1000)]]
            assert ds == sorted(ds) and ds[0] >= last and ds[-1] <= t
            last = ds[-1]
        fired += len(out)
    out = w.advance(ticks)
    fired += len(out)
    assert fired == n - len(range(0, n, 10)) and len(w) == 0
    assert w.next_expiry() is None
    print(f"{W.__name__} {n:,} timers: {time.perf_counter() - t0:.1f}s")


@pytest.mark.slow
@pytest.mark.skipif(CTimingWheel is None, reason="C extension not built")
def test_ten_million_timers_c():
    _bulk(CTimingWheel, 10_000_000)


@pytest.mark.slow
def test_one_million_timers_twin():
    _bulk(PyTimingWheel, 1_000_000)


# -- across wheels: earliest_expiry and due_positions ---------------------------

ACROSS = [
    pytest.param(_wheel_py, id="py"),
    pytest.param(_wheel_c, id="c",
                 marks=pytest.mark.skipif(_wheel_c is None, reason="C extension not built")),
]


@pytest.mark.parametrize("mod", ACROSS)
@settings(max_examples=200, deadline=None)
@given(timers=st.lists(st.lists(st.integers(-(2**40), 2**40), max_size=4), max_size=20),
       twins=st.lists(st.booleans(), min_size=20, max_size=20),
       now=st.integers(-(2**40), 2**40))
def test_across_wheels_agree_with_asking_each(mod, timers, twins, now):
    """One call over a list of wheels (C wheels, twins, or both mixed) says
    what asking each wheel's next_expiry() says."""
    wheels = []
    for k, deadlines in enumerate(timers):
        cls = PyTimingWheel if twins[k] or CTimingWheel is None else CTimingWheel
        w = cls(-(2**41))
        for i, d in enumerate(deadlines):
            w.insert(i, d)
        wheels.append(w)
    expiries = [w.next_expiry() for w in wheels]
    pending = [t for t in expiries if t is not None]
    assert mod.earliest_expiry(wheels) == (min(pending) if pending else None)
    assert mod.due_positions(wheels, now) == [i for i, t in enumerate(expiries) if t is not None and t <= now]


@pytest.mark.parametrize("mod", ACROSS)
def test_across_wheels_refuse_what_is_not_a_list_of_wheels(mod):
    w = PyTimingWheel(0)
    w.insert(1, 5)
    with pytest.raises(TypeError):
        mod.earliest_expiry((w,))
    with pytest.raises(TypeError):
        mod.due_positions((w,), 10)
    with pytest.raises(AttributeError):
        mod.earliest_expiry([w, object()])
    with pytest.raises((TypeError, OverflowError)):
        mod.due_positions([w], 2**64)
    assert mod.earliest_expiry([]) is None and mod.due_positions([], 0) == []
