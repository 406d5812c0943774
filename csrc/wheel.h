/*
 * wheel.h -- public API of the hierarchical timing wheel (see wheel.c for the
 * design). Ticks are int64; timer ids are int64 in [0, 2**63).
 *
 * The wheel is not thread-safe: callers serialise access (the Python wrapper
 * holds the GIL for every call).
 */
#ifndef WHEELSCHED_WHEEL_H
#define WHEELSCHED_WHEEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. Success is 0 (or a count / boolean where documented). */
enum {
    WHEEL_OK = 0,
    WHEEL_ENOMEM = -1,    /* an allocation failed; the wheel is unchanged */
    WHEEL_EEXIST = -2,    /* the id is already pending (or repeated in a batch) */
    WHEEL_ENOENT = -3,    /* the id is not pending */
    WHEEL_EBACKWARDS = -4,/* advance() to a tick before the current one */
    WHEEL_EFULL = -5,     /* more pending timers than WHEEL_MAX_TIMERS */
    WHEEL_EINVAL = -6,    /* a negative timer id */
    WHEEL_EBUSY = -7      /* fired timers not collected yet (re-entrant call) */
};

typedef struct wheel wheel_t;

/* Upper bound on pending timers (arena indices must fit the id index's
 * 27 index bits, see wheel_index.h), minus the list sentinels. */
size_t wheel_max_timers(void);

wheel_t *wheel_new(int64_t now);
void wheel_free(wheel_t *w);
/* Drop every timer and release memory down to the initial size; keeps now. */
int wheel_clear(wheel_t *w);

int wheel_insert(wheel_t *w, int64_t id, int64_t deadline);
/* All-or-nothing. On error *bad is the index of the offending entry. */
int wheel_insert_many(wheel_t *w, const int64_t *ids, const int64_t *deadlines,
                      size_t n, size_t *bad);
/* 1 if the timer was pending (now cancelled), 0 if not, <0 on error. */
int wheel_cancel(wheel_t *w, int64_t id);
/* WHEEL_OK and *deadline, or WHEEL_ENOENT. */
int wheel_deadline(const wheel_t *w, int64_t id, int64_t *deadline);
int wheel_contains(const wheel_t *w, int64_t id);

/*
 * Advancing is two calls so that the caller can allocate the result with the
 * exact size in between:
 *   wheel_advance()  moves time to `now` and sets aside the expired timers
 *                    (*nfired of them), still counted as pending;
 *   wheel_collect()  writes their ids, deadline-ordered, to dst[0..nfired)
 *                    and releases them; or
 *   wheel_unfire()   puts them back (as past-deadline timers that fire on the
 *                    next advance) when the caller could not allocate.
 * Between the two, mutating calls fail with WHEEL_EBUSY.
 */
int wheel_advance(wheel_t *w, int64_t now, size_t *nfired);
void wheel_collect(wheel_t *w, int64_t *dst);
void wheel_unfire(wheel_t *w);

/* 1 and *tick (a tick at or before the earliest deadline at which advance()
 * has work to do), or 0 when no timer is pending. */
int wheel_next_expiry(const wheel_t *w, int64_t *tick);

size_t wheel_len(const wheel_t *w);
int64_t wheel_now(const wheel_t *w);
/* Bytes held by the wheel: struct, arena, index, scratch buffers. */
size_t wheel_memory_bytes(const wheel_t *w);

#ifdef __cplusplus
}
#endif
#endif /* WHEELSCHED_WHEEL_H */
