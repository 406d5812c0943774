"""Job records the cyclic garbage collector never sees (``_gc_c``, C).

``untrack(obj)``, ``untracked(cls, values)`` and ``with_fields(old, start,
values, offset=0)``: the C helpers when built, else the pure-Python twins
below, which build the same records and leave them tracked (the pure-Python
build keeps working, only with more garbage-collector work).
``WHEELSCHED_PURE_PYTHON=1`` forces the twins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from wheelsched import native

T = TypeVar("T", bound=tuple)
_new_tuple = tuple.__new__


def _untrack_py(obj: Any) -> Any:
    return obj


def _untracked_py(cls: type[T], values: Sequence[Any]) -> T:
    if not (isinstance(cls, type) and issubclass(cls, tuple)):
        raise TypeError(f"{getattr(cls, '__name__', cls)!r} is not a tuple subclass")
    return _new_tuple(cls, values)


def _with_fields_py(old: T, start: int, values: Sequence[Any], offset: int = 0) -> T:
    if not isinstance(old, tuple):
        raise TypeError("old must be a tuple")
    n, k = len(old), len(values) - offset
    if offset < 0 or k < 0 or start < 0 or start + k > n:
        raise IndexError(f"{k} values from offset {offset} do not fit at {start} "
                         f"in a record of {n}")
    return _new_tuple(type(old), (*old[:start], *values[offset:], *old[start + k:]))


untrack, untracked, with_fields = _untrack_py, _untracked_py, _with_fields_py
IMPLEMENTATION = "python"
_c = native.extension("wheelsched._gc_c")
if _c is not None:
    untrack, untracked, with_fields = _c.untrack, _c.untracked, _c.with_fields
    IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "untrack", "untracked", "with_fields"]
