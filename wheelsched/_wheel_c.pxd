# Declarations of the C timing wheel (csrc/wheel.h) for Cython.
from libc.stdint cimport int64_t


cdef extern from "wheel.h" nogil:
    enum:
        WHEEL_OK
        WHEEL_ENOMEM
        WHEEL_EEXIST
        WHEEL_ENOENT
        WHEEL_EBACKWARDS
        WHEEL_EFULL
        WHEEL_EINVAL
        WHEEL_EBUSY

    ctypedef struct wheel_t:
        pass

    size_t wheel_max_timers()
    wheel_t *wheel_new(int64_t now)
    void wheel_free(wheel_t *w)
    int wheel_clear(wheel_t *w)
    int wheel_insert(wheel_t *w, int64_t id, int64_t deadline)
    int wheel_insert_many(wheel_t *w, const int64_t *ids, const int64_t *deadlines,
                          size_t n, size_t *bad)
    int wheel_cancel(wheel_t *w, int64_t id)
    int wheel_deadline(const wheel_t *w, int64_t id, int64_t *deadline)
    int wheel_contains(const wheel_t *w, int64_t id)
    int wheel_advance(wheel_t *w, int64_t now, size_t *nfired)
    void wheel_collect(wheel_t *w, int64_t *dst)
    void wheel_unfire(wheel_t *w)
    int wheel_next_expiry(const wheel_t *w, int64_t *tick)
    size_t wheel_len(const wheel_t *w)
    int64_t wheel_now(const wheel_t *w)
    size_t wheel_memory_bytes(const wheel_t *w)


cdef class TimingWheel:
    cdef wheel_t *_w
