# cython: language_level=3
"""``WakeTimer``: an eventfd that becomes readable at a wall-clock time.

A native thread (csrc/waketimer.c) that never takes the GIL waits for the
target and writes the eventfd; the event loop watches it with ``add_reader``.
So a busy loop thread holding the GIL cannot delay the wake-up itself, as it
did the Python ticker thread (see wheelsched/server/ticker.py).

The mutex shared with that thread is only ever held for a few instructions.
The calls here try it with the GIL held first; only when it is taken do they
release the GIL and wait. Releasing the GIL every time would hand it to any
other waiting Python thread, and the loop would then wait for it to come back.
"""

from libc.errno cimport errno
from libc.stdint cimport int64_t

import os


cdef extern from "waketimer.h" nogil:
    ctypedef struct wt_timer:
        pass
    int64_t WT_NONE
    int WT_BUSY
    wt_timer *wt_new()
    int wt_fd(const wt_timer *t)
    int wt_set_target(wt_timer *t, int64_t us, int block)
    void wt_drain(wt_timer *t)
    int wt_rearm(wt_timer *t, int block)
    void wt_free(wt_timer *t)


cdef class WakeTimer:
    """Wake the event loop at a wall-clock time (µs since the epoch).

    ``fileno()`` becomes readable once the target set with ``set_target``
    has passed; that clears the target (one wake per target). Until
    ``clear()`` is called no further wake is signalled: a target set in the
    meantime is stored and takes effect at ``clear()``. Methods are meant for
    one thread (the loop's); after ``close()`` they do nothing, except
    ``fileno()``, which raises ``ValueError``.
    """

    cdef wt_timer *_t

    def __cinit__(self):
        self._t = wt_new()
        if self._t is NULL:
            raise OSError(errno, os.strerror(errno))

    def __dealloc__(self):
        self._close()

    cdef void _close(self) noexcept:
        cdef wt_timer *t = self._t
        if t is NULL:
            return
        self._t = NULL
        with nogil:
            wt_free(t)  # joins the thread: it wakes and exits at once

    def fileno(self) -> int:
        if self._t is NULL:
            raise ValueError("WakeTimer is closed")
        return wt_fd(self._t)

    def set_target(self, target_us) -> None:
        """Wake at ``target_us`` (µs since the epoch, CLOCK_REALTIME); None: never.

        A target in the past wakes at once.
        """
        cdef wt_timer *t = self._t
        cdef int64_t us = WT_NONE if target_us is None else target_us
        if t is NULL:
            return
        if wt_set_target(t, us, 0) == WT_BUSY:
            with nogil:
                wt_set_target(t, us, 1)

    def clear(self) -> None:
        """Read the eventfd empty and allow the next wake."""
        cdef wt_timer *t = self._t
        if t is NULL:
            return
        wt_drain(t)
        if wt_rearm(t, 0) == WT_BUSY:
            with nogil:
                wt_rearm(t, 1)

    def close(self) -> None:
        """Stop and join the thread and close the eventfd. Idempotent."""
        self._close()

    @property
    def closed(self) -> bool:
        return self._t is NULL
