"""The ticker: wakes the event loop when the next job is due, and not before.

asyncio's own timers are too coarse for us: the selector rounds every
timeout up to a whole millisecond, which alone costs ~0.5 ms of lateness on
average. So a dedicated thread sleeps on a condition variable with a
precise timeout until the engine's next expiry, then asks the loop (through
``call_soon_threadsafe``, which wakes ``epoll`` at once) to run the tick.
The engine itself is only ever touched on the loop thread; the thread only
keeps time. When nothing is pending the thread sleeps without a timeout, so
an idle node uses no CPU.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


def wall_us() -> int:
    return time.time_ns() // 1000


class Ticker:
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
        self._thread.join(timeout=2)

    def set_target(self, target_us: int | None) -> None:
        """Called on the loop thread whenever the next due time may have changed."""
        with self._cond:
            old = self._target
            self._target = target_us
            if target_us is not None and (old is None or target_us < old):
                self._cond.notify()

    def _tick_on_loop(self) -> None:
        with self._cond:
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
