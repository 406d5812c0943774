"""The timing wheel: the C implementation when it is built, else the twin.

``TimingWheel`` is ``wheelsched._wheel_c.TimingWheel`` when the extension
imports and ``WHEELSCHED_PURE_PYTHON`` is unset (or "" or "0"), otherwise the
pure-Python ``PyTimingWheel``, which is always exported too (the way
msgpack-python and yarl pick their implementations). ``IMPLEMENTATION`` says
which one ``TimingWheel`` is: ``"c"`` or ``"python"``. ``earliest_expiry``
and ``due_positions`` (a list of wheels in one call) come from the same
module; the C ones take twin wheels too.
"""

from __future__ import annotations

from wheelsched import native
from wheelsched._wheel_py import PyTimingWheel, due_positions, earliest_expiry

TimingWheel: type = PyTimingWheel
IMPLEMENTATION = "python"
_c = native.extension("wheelsched._wheel_c")
if _c is not None:
    TimingWheel, due_positions, earliest_expiry = _c.TimingWheel, _c.due_positions, _c.earliest_expiry
    IMPLEMENTATION = "c"

__all__ = ["IMPLEMENTATION", "PyTimingWheel", "TimingWheel", "due_positions", "earliest_expiry"]
