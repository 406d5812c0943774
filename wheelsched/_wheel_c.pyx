# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""C timing wheel (csrc/wheel.c) behind the same API as the pure-Python twin
``wheelsched._wheel_py.PyTimingWheel``; see that module for the semantics."""

from cpython.array cimport array, clone
from cpython.buffer cimport (
    PyBUF_C_CONTIGUOUS,
    PyBUF_FORMAT,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.long cimport PyLong_Check
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *op)

import array as _array_mod

cdef array _Q_TEMPLATE = _array_mod.array("q")

# Buffer formats that are exactly a C int64 on the platforms we build for
# ("l" is 8 bytes on LP64 Linux/macOS; itemsize is checked too).
cdef frozenset _INT64_FORMATS = frozenset(
    {"q", "@q", "=q", "<q", "l", "@l", "=l", "<l"} if _array_mod.array("l").itemsize == 8
    else {"q", "@q", "=q", "<q"}
)


cdef int _raise(int rc, object key=None) except -1:
    if rc == WHEEL_ENOMEM:
        raise MemoryError("timing wheel: out of memory")
    if rc == WHEEL_EEXIST:
        raise KeyError(key)
    if rc == WHEEL_ENOENT:
        raise KeyError(key)
    if rc == WHEEL_EFULL:
        raise MemoryError(f"timing wheel: more than {wheel_max_timers()} pending timers")
    if rc == WHEEL_EINVAL:
        raise ValueError(f"timer id must be in [0, 2**63), got {key!r}")
    if rc == WHEEL_EBUSY:
        raise RuntimeError("timing wheel: re-entrant call while advance() collects")
    raise SystemError(f"timing wheel: unexpected error {rc}")


cdef inline int64_t _i64(object value) except? -1:
    """An int64 from an int or an object with __index__ (never a float: Cython's
    own conversion would truncate 1.5 to 1). OverflowError out of range."""
    if not PyLong_Check(value):
        value = PyNumber_Index(value)
    return <int64_t>value


cdef object _as_int64_exporter(object seq):
    """An object exporting ``seq`` as a C-contiguous int64 buffer: ``seq``
    itself when it already is one (array('q'), memoryview of 'q' ...), else a
    converted array('q') (lists, ranges, buffers of other integer types)."""
    cdef memoryview mv
    if PyObject_CheckBuffer(seq):
        mv = memoryview(seq)
        if (
            mv.ndim == 1
            and mv.itemsize == 8
            and mv.format in _INT64_FORMATS
            and mv.c_contiguous
        ):
            return seq
    return _array_mod.array("q", seq)


cdef class TimingWheel:
    """Hierarchical timing wheel over int64 ticks, in C."""

    def __cinit__(self, now=0):
        self._w = wheel_new(_i64(now))
        if self._w == NULL:
            raise MemoryError("timing wheel: out of memory")

    def __dealloc__(self):
        wheel_free(self._w)

    def insert(self, timer_id, deadline) -> None:
        """Add a timer; KeyError if ``timer_id`` is already pending."""
        cdef int64_t tid = _i64(timer_id)
        cdef int rc = wheel_insert(self._w, tid, _i64(deadline))
        if rc != WHEEL_OK:
            _raise(rc, tid)

    def insert_many(self, timer_ids, deadlines) -> None:
        """Add many timers at once, all or nothing."""
        cdef object ids_obj = _as_int64_exporter(timer_ids)
        cdef object dls_obj = _as_int64_exporter(deadlines)
        cdef Py_buffer ids_buf
        cdef Py_buffer dls_buf
        cdef size_t n, bad = 0
        cdef int rc
        PyObject_GetBuffer(ids_obj, &ids_buf, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        try:
            PyObject_GetBuffer(dls_obj, &dls_buf, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
            try:
                n = <size_t>(ids_buf.len // 8)
                if n != <size_t>(dls_buf.len // 8):
                    raise ValueError(
                        f"timer_ids and deadlines differ in length: {n} != {dls_buf.len // 8}"
                    )
                rc = wheel_insert_many(
                    self._w, <const int64_t *>ids_buf.buf, <const int64_t *>dls_buf.buf, n, &bad
                )
                if rc != WHEEL_OK:
                    if rc == WHEEL_EEXIST or rc == WHEEL_EINVAL:
                        _raise(rc, (<const int64_t *>ids_buf.buf)[bad])
                    _raise(rc)
            finally:
                PyBuffer_Release(&dls_buf)
        finally:
            PyBuffer_Release(&ids_buf)

    def cancel(self, timer_id) -> bool:
        """Remove a pending timer; True if it was pending."""
        cdef int64_t tid = _i64(timer_id)
        cdef int rc = wheel_cancel(self._w, tid)
        if rc < 0:
            _raise(rc, tid)
        return rc == 1

    def advance(self, now) -> array:
        """Move to tick ``now``; return the ids of every timer due by then, as
        an array('q') ordered by deadline."""
        cdef int64_t tick = _i64(now)
        cdef size_t n = 0
        cdef int rc = wheel_advance(self._w, tick, &n)
        cdef array out
        if rc == WHEEL_EBACKWARDS:
            raise ValueError(f"cannot advance backwards: now={wheel_now(self._w)}, asked {tick}")
        if rc != WHEEL_OK:
            _raise(rc)
        try:
            out = clone(_Q_TEMPLATE, <Py_ssize_t>n, False)
        except BaseException:
            wheel_unfire(self._w)  # keep them pending: they fire next time
            raise
        wheel_collect(self._w, <int64_t *>out.data.as_longlongs)
        # An array holds no references, so it can never be part of a cycle;
        # untracked, the collector never walks it. The engine keeps each
        # tick's batch (``Shard.ready_batches``) for a while: tracked, the
        # engine benchmark at 20,000 jobs/s had 3,000-7,000 of them in the
        # young generations, and generation-1 collections took 1-7 ms
        # walking them (cold memory), a stall of every job due meanwhile.
        PyObject_GC_UnTrack(<void *>out)
        return out

    def next_expiry(self):
        """A tick at or before the earliest deadline at which advance() has
        work to do; None when no timer is pending."""
        cdef int64_t tick
        if wheel_next_expiry(self._w, &tick):
            return tick
        return None

    def deadline(self, timer_id) -> int:
        """The deadline of a pending timer; KeyError if it is not pending."""
        cdef int64_t tid = _i64(timer_id)
        cdef int64_t d
        if tid < 0:
            _raise(WHEEL_EINVAL, tid)
        if wheel_deadline(self._w, tid, &d) != WHEEL_OK:
            raise KeyError(tid)
        return d

    def clear(self) -> None:
        """Drop every pending timer (the current tick stays)."""
        cdef int rc = wheel_clear(self._w)
        if rc != WHEEL_OK:
            _raise(rc)

    def memory_bytes(self) -> int:
        """Bytes held by the wheel (C structures, plus this object)."""
        return wheel_memory_bytes(self._w) + sizeof(TimingWheel)

    @property
    def now(self) -> int:
        """The current tick."""
        return wheel_now(self._w)

    def __len__(self) -> int:
        return wheel_len(self._w)

    def __contains__(self, timer_id) -> bool:
        if type(timer_id) is not int and not isinstance(timer_id, int):
            return False
        if timer_id < 0 or timer_id >= 2**63:
            return False
        return wheel_contains(self._w, <int64_t>timer_id) == 1

    def __repr__(self) -> str:
        return f"<TimingWheel (C) now={self.now} pending={len(self)}>"


# -- across wheels: one call per engine tick, not one per shard ---------------
#
# A node keeps one wheel per shard (16 by default) and asks all of them on
# every tick which are due, and after it when the next one is: two Python
# loops of 16 method calls per tick, about a fifth of what a one-job tick
# cost. These walk the list in C. A wheel that is not exactly this type (the
# twin, a subclass) is asked through its next_expiry() method.

cdef inline int _next_of(object obj, int64_t *tick) except -1:
    """1 and *tick if ``obj`` has a timer pending, else 0."""
    if type(obj) is TimingWheel:
        return wheel_next_expiry((<TimingWheel>obj)._w, tick)
    value = obj.next_expiry()
    if value is None:
        return 0
    tick[0] = _i64(value)
    return 1


def earliest_expiry(list wheels):
    """The smallest ``next_expiry()`` of ``wheels``; None if none has a timer."""
    cdef int64_t tick = 0, best = 0
    cdef bint found = False
    for obj in wheels:
        if _next_of(obj, &tick) and (not found or tick < best):
            best = tick
            found = True
    return best if found else None


def due_positions(list wheels, now_tick) -> list:
    """Positions in ``wheels`` of those whose ``next_expiry()`` is at or
    before ``now_tick`` (advance(now_tick) has work for them), in order."""
    cdef int64_t now = _i64(now_tick), tick = 0
    cdef Py_ssize_t i = 0
    out = []
    for obj in wheels:
        if _next_of(obj, &tick) and tick <= now:
            out.append(i)
        i += 1
    return out
