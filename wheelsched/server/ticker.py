"""The ticker: wakes the event loop when the next job is due, and not before.

asyncio's own timers are too coarse for us: the selector rounds every
timeout up to a whole millisecond, which alone costs ~0.5 ms of lateness on
average. So something else keeps time with a precise timeout until the
engine's next expiry (wall-clock µs) and then wakes the loop, which runs the
tick. The engine itself is only ever touched on the loop thread. When nothing
is pending nothing runs, so an idle node uses no CPU. There are two
implementations of the same ``Ticker`` API (``start``, ``stop``,
``set_target``):

``CTicker`` (the default when ``wheelsched._ticker_c`` is built): a native
thread that never takes the GIL waits on a pthread condition variable until
the target (CLOCK_REALTIME) and writes an eventfd, which the loop watches
with ``add_reader`` (see csrc/waketimer.c). The wake-up is then an epoll
event delivered to the loop thread by the kernel.

``PyTicker`` (the fallback): a Python thread sleeps on a
``threading.Condition`` and asks the loop to tick through
``call_soon_threadsafe``. Both steps need the GIL, so while the loop thread
is busy (holding the GIL) the thread wakes late: measured p50 150-400 µs
after the target instead of the ~60 µs a plain sleep gets, which is why the
C one exists.

``Ticker(loop, on_due)`` returns a ``CTicker`` when the extension imports,
``WHEELSCHED_PURE_PYTHON`` is unset (or "" or "0") and the clock is
``wall_us`` (the C timer only knows the wall clock); otherwise a
``PyTicker``. ``IMPLEMENTATION`` says which one the default is: ``"c"`` or
``"python"``.

Either way ``on_due`` runs on the loop thread, once per wake-up; the target
is then cleared, and ``on_due`` (or whoever else) sets the next one. A target
in the past fires at once; setting an earlier target wakes earlier.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from wheelsched import native


def wall_us() -> int:
    return time.time_ns() // 1000


WakeTimer: Any = None  # wheelsched._ticker_c.WakeTimer when it is used
IMPLEMENTATION: str = "python"
_c = native.extension("wheelsched._ticker_c")
if _c is not None:
    WakeTimer = _c.WakeTimer
    IMPLEMENTATION = "c"


class Ticker:
    """Calls ``on_due`` on the loop thread once the target set last has passed.

    Instantiating ``Ticker`` itself picks ``CTicker`` or ``PyTicker`` (see the
    module docstring); both subclasses can also be used directly.
    """

    implementation: str = ""

    def __new__(cls, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None],
                clock: Callable[[], int] = wall_us) -> Ticker:
        if cls is Ticker:
            cls = CTicker if WakeTimer is not None and clock is wall_us else PyTicker
        return super().__new__(cls)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop for good. Idempotent; on_due is not called afterwards."""
        raise NotImplementedError

    def set_target(self, target_us: int | None) -> None:
        """Called on the loop thread whenever the next due time may have changed."""
        raise NotImplementedError


class CTicker(Ticker):
    """The GIL-free ticker: a native timer thread and an eventfd (wall clock only)."""

    implementation = "c"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None],
                 clock: Callable[[], int] = wall_us) -> None:
        if WakeTimer is None:
            raise RuntimeError("wheelsched._ticker_c is not in use")
        if clock is not wall_us:
            raise ValueError("CTicker keeps wall-clock time (wall_us) only")
        self._loop = loop
        self._on_due = on_due
        self._timer = WakeTimer()
        self._fd: int = self._timer.fileno()
        self._reading = False
        self._stopped = False

    def start(self) -> None:
        if self._stopped or self._reading:
            return
        self._loop.add_reader(self._fd, self._on_ready)
        self._reading = True

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._reading:  # before close(): the fd number may be reused
            self._loop.remove_reader(self._fd)
            self._reading = False
        self._timer.close()

    def set_target(self, target_us: int | None) -> None:
        self._timer.set_target(target_us)  # a no-op once stopped

    def _on_ready(self) -> None:
        self._timer.clear()  # read the eventfd and allow the next wake
        self._on_due()


class PyTicker(Ticker):
    """The pure-Python ticker: a thread on a condition variable (any clock)."""

    implementation = "python"

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None],
                 clock: Callable[[], int] = wall_us) -> None:
        self._loop = loop
        self._on_due = on_due
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._target: int | None = None  # µs; None: nothing pending
        self._requested = False  # a tick is queued on the loop and has not run yet
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="wheelsched-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2)

    def set_target(self, target_us: int | None) -> None:
        with self._cond:
            old = self._target
            self._target = target_us
            if target_us is not None and (old is None or target_us < old):
                self._cond.notify()

    def _tick_on_loop(self) -> None:
        with self._cond:
            if self._stopped:
                return
            self._requested = False
            # The thread may be waiting without a timeout on a target that
            # was set while this tick was pending: make it look again.
            self._cond.notify()
        self._on_due()

    def _run(self) -> None:
        cond = self._cond
        clock = self._clock
        call = self._loop.call_soon_threadsafe
        with cond:
            while not self._stopped:
                if self._target is None or self._requested:
                    cond.wait()
                    continue
                delay = self._target - clock()
                if delay > 0:
                    cond.wait(delay / 1e6)
                    continue
                self._requested = True
                self._target = None  # the tick sets the next one
                try:
                    call(self._tick_on_loop)
                except RuntimeError:  # loop closed during shutdown
                    return
