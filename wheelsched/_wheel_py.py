"""Pure-Python twin of the C timing wheel (``csrc/wheel.c``).

Same API, same semantics, same structure: 11 levels of 64 slots over the
unsigned tick space ``u = tick + 2**63``, occupancy bitmaps per level,
cascading for exact expiry, a due list for past deadlines and a per-slot lower
bound for ``next_expiry``. Read the comment at the top of ``csrc/wheel.c`` for
the design; this module is the executable reference model used by the tests
and the fallback when the extension is not built.

Slots are dicts (timer id -> unsigned deadline) kept in insertion order, so
cascades and firing visit timers in the same order as the C lists.
"""

from __future__ import annotations

import operator
import sys
from array import array
from collections.abc import Iterable
from typing import Any

SLOT_BITS = 6  # one 64-bit occupancy word per level
SLOTS = 1 << SLOT_BITS
SLOT_MASK = SLOTS - 1
LEVELS = 11  # ceil(64 bits / 6 bits): any int64 deadline fits, no overflow list
SIGN = 1 << 63  # tick t lives at u = t + SIGN in [0, 2**64)

_INT64_FORMATS = frozenset(
    {"q", "@q", "=q", "<q", "l", "@l", "=l", "<l"}
    if array("l").itemsize == 8
    else {"q", "@q", "=q", "<q"}
)


def _tick(value: Any) -> int:
    t = operator.index(value)
    if not -SIGN <= t < SIGN:
        raise OverflowError(f"tick out of int64 range: {t}")
    return t


def _timer_id(value: Any) -> int:
    i = _tick(value)
    if i < 0:
        raise ValueError(f"timer id must be in [0, 2**63), got {i!r}")
    return i


def _int64s(seq: Iterable[int]) -> list[int]:
    """The values of an int64 buffer or of any sequence of ints (checked to be
    int64 by array('q'), as the C wrapper does)."""
    try:
        mv = memoryview(seq)  # type: ignore[arg-type]
    except TypeError:
        return array("q", seq).tolist()
    if mv.ndim == 1 and mv.itemsize == 8 and mv.format in _INT64_FORMATS and mv.c_contiguous:
        return mv.tolist()
    return array("q", seq).tolist()  # type: ignore[arg-type]


def _level_for(elapsed: int, when: int) -> int:
    """Level of a deadline ``when`` > ``elapsed``: the 6-bit group of the
    highest bit in which they differ."""
    return (((elapsed ^ when) | SLOT_MASK).bit_length() - 1) // SLOT_BITS


def _slot_start(elapsed: int, level: int, slot: int) -> int:
    span = (level + 1) * SLOT_BITS
    return ((elapsed >> span) << span) | (slot << (level * SLOT_BITS))


class PyTimingWheel:
    """Hierarchical timing wheel over int64 ticks, in pure Python."""

    __slots__ = ("_deadlines", "_due", "_due_min", "_elapsed", "_occupied", "_slot_min", "_slots")

    def __init__(self, now: int = 0) -> None:
        self._elapsed = _tick(now) + SIGN
        self._deadlines: dict[int, int] = {}  # id -> unsigned deadline (the index)
        self._due: dict[int, int] = {}  # deadlines <= elapsed
        self._due_min = 0  # lower bound of the due deadlines (when _due is not empty)
        self._slots: list[dict[int, int]] = [{} for _ in range(LEVELS * SLOTS)]
        self._occupied = [0] * LEVELS
        self._slot_min = [0] * (LEVELS * SLOTS)

    # -- placement -------------------------------------------------------

    def _place(self, timer_id: int, when: int) -> None:
        elapsed = self._elapsed
        if when <= elapsed:
            if not self._due or when < self._due_min:
                self._due_min = when
            self._due[timer_id] = when
            return
        level = (((elapsed ^ when) | SLOT_MASK).bit_length() - 1) // SLOT_BITS
        slot = (when >> (level * SLOT_BITS)) & SLOT_MASK
        k = level * SLOTS + slot
        bit = 1 << slot
        occ = self._occupied[level]
        if not occ & bit:
            self._occupied[level] = occ | bit
            self._slot_min[k] = when
        elif when < self._slot_min[k]:
            self._slot_min[k] = when
        self._slots[k][timer_id] = when

    def _unplace(self, timer_id: int, when: int) -> None:
        if when <= self._elapsed:
            del self._due[timer_id]
            return
        level = _level_for(self._elapsed, when)
        slot = (when >> (level * SLOT_BITS)) & SLOT_MASK
        d = self._slots[level * SLOTS + slot]
        del d[timer_id]
        if not d:
            self._occupied[level] &= ~(1 << slot)

    # -- public API ------------------------------------------------------

    def insert(self, timer_id: int, deadline: int) -> None:
        """Add a timer; KeyError if ``timer_id`` is already pending."""
        timer_id = _timer_id(timer_id)
        when = _tick(deadline) + SIGN
        if timer_id in self._deadlines:
            raise KeyError(timer_id)
        self._deadlines[timer_id] = when
        self._place(timer_id, when)

    def insert_many(self, timer_ids: Iterable[int], deadlines: Iterable[int]) -> None:
        """Add many timers at once, all or nothing."""
        ids = _int64s(timer_ids)
        dls = _int64s(deadlines)
        if len(ids) != len(dls):
            raise ValueError(
                f"timer_ids and deadlines differ in length: {len(ids)} != {len(dls)}"
            )
        for timer_id in ids:
            if timer_id < 0:
                raise ValueError(f"timer id must be in [0, 2**63), got {timer_id!r}")
        index = self._deadlines
        place = self._place
        for k, (timer_id, deadline) in enumerate(zip(ids, dls, strict=True)):
            if timer_id in index:
                for j in range(k - 1, -1, -1):  # undo the batch, like the C code
                    self.cancel(ids[j])
                raise KeyError(timer_id)
            when = deadline + SIGN
            index[timer_id] = when
            place(timer_id, when)

    def cancel(self, timer_id: int) -> bool:
        """Remove a pending timer; True if it was pending."""
        timer_id = _timer_id(timer_id)
        when = self._deadlines.pop(timer_id, None)
        if when is None:
            return False
        self._unplace(timer_id, when)
        return True

    def advance(self, now: int) -> array:
        """Move to tick ``now``; return the ids of every timer due by then, as
        an array('q') ordered by deadline."""
        target = _tick(now) + SIGN
        if target < self._elapsed:
            raise ValueError(
                f"cannot advance backwards: now={self._elapsed - SIGN}, asked {target - SIGN}"
            )
        index = self._deadlines
        fired: list[int] = []
        if self._due:
            due = sorted(self._due.items(), key=lambda kv: (kv[1], kv[0]))
            self._due = {}
            for timer_id, _ in due:
                fired.append(timer_id)
                del index[timer_id]
        occupied = self._occupied
        slots = self._slots
        place = self._place
        while True:
            for level in range(LEVELS):
                occ = occupied[level]
                if occ:
                    break
            else:
                break
            slot = (occ & -occ).bit_length() - 1
            start = _slot_start(self._elapsed, level, slot)
            if start > target:
                break
            self._elapsed = start
            k = level * SLOTS + slot
            d = slots[k]
            slots[k] = {}
            occupied[level] = occ & ~(1 << slot)
            if level == 0:  # a level-0 slot is one tick: everything fires
                fired.extend(d)
                for timer_id in d:
                    del index[timer_id]
                continue
            for timer_id, when in d.items():
                if when == start:
                    fired.append(timer_id)
                    del index[timer_id]
                else:
                    place(timer_id, when)  # a strictly lower level
        self._elapsed = target
        return array("q", fired)

    def next_expiry(self) -> int | None:
        """A tick at or before the earliest deadline at which advance() has
        work to do; None when no timer is pending."""
        if self._due:
            return self._due_min - SIGN  # <= every due deadline <= now
        for level in range(LEVELS):
            occ = self._occupied[level]
            if occ:
                slot = (occ & -occ).bit_length() - 1
                start = _slot_start(self._elapsed, level, slot)
                return max(start, self._slot_min[level * SLOTS + slot]) - SIGN
        return None

    def deadline(self, timer_id: int) -> int:
        """The deadline of a pending timer; KeyError if it is not pending."""
        when = self._deadlines.get(_timer_id(timer_id))
        if when is None:
            raise KeyError(timer_id)
        return when - SIGN

    def clear(self) -> None:
        """Drop every pending timer (the current tick stays)."""
        self._deadlines = {}
        self._due = {}
        self._slots = [{} for _ in range(LEVELS * SLOTS)]
        self._occupied = [0] * LEVELS

    def memory_bytes(self) -> int:
        """Estimate of the bytes this wheel holds: its containers plus the int
        objects they reference (shared ids and deadlines counted once)."""
        size = sys.getsizeof(self) + sys.getsizeof(self._deadlines) + sys.getsizeof(self._due)
        size += sys.getsizeof(self._slots) + sum(sys.getsizeof(d) for d in self._slots)
        size += sys.getsizeof(self._occupied) + sys.getsizeof(self._slot_min)
        getsizeof = sys.getsizeof
        for timer_id, when in self._deadlines.items():
            size += getsizeof(timer_id) + getsizeof(when)
        return size

    @property
    def now(self) -> int:
        """The current tick."""
        return self._elapsed - SIGN

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, timer_id: object) -> bool:
        return isinstance(timer_id, int) and timer_id in self._deadlines

    def __repr__(self) -> str:
        return f"<PyTimingWheel now={self.now} pending={len(self)}>"


# -- across wheels (the C module walks the list in C; see _wheel_c) ------------


def earliest_expiry(wheels: list[Any]) -> int | None:
    """The smallest ``next_expiry()`` of ``wheels``; None if none has a timer."""
    if not isinstance(wheels, list):
        raise TypeError(f"wheels must be a list, not {type(wheels).__name__}")
    best = None
    for wheel in wheels:
        tick = wheel.next_expiry()
        if tick is not None and (best is None or tick < best):
            best = tick
    return best


def due_positions(wheels: list[Any], now_tick: int) -> list[int]:
    """Positions in ``wheels`` of those whose ``next_expiry()`` is at or
    before ``now_tick`` (advance(now_tick) has work for them), in order."""
    if not isinstance(wheels, list):
        raise TypeError(f"wheels must be a list, not {type(wheels).__name__}")
    now = _tick(now_tick)
    out = []
    for i, wheel in enumerate(wheels):
        tick = wheel.next_expiry()
        if tick is not None and tick <= now:
            out.append(i)
    return out
