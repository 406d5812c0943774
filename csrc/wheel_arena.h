/*
 * wheel_arena.h -- the node slab of the timing wheel (private to wheel.c).
 *
 * Every timer is one 24-byte node in a single growable array. Nodes refer to
 * each other by uint32 index, not by pointer, which halves the link size and
 * lets the array move when it grows (realloc of a large block is an mremap on
 * Linux: no copy). Freed nodes are kept on a free list threaded through
 * `next` and reused before the array grows, so steady-state insert/fire/cancel
 * never allocates.
 *
 * The first WHEEL_NSENT nodes are list sentinels (one per wheel slot plus the
 * due list), see wheel.c.
 */
#ifndef WHEELSCHED_WHEEL_ARENA_H
#define WHEELSCHED_WHEEL_ARENA_H

#include <stdint.h>
#include <stdlib.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* "No node": ends the free list and marks a free node (in `prev`). */
#define ARENA_NIL UINT32_MAX

typedef struct {
    int64_t id;    /* the caller's timer id; -1 in sentinels */
    uint64_t when; /* deadline in the wheel's unsigned tick space (wheel.c) */
    uint32_t next; /* slot list links (circular, through a sentinel) */
    uint32_t prev; /* ARENA_NIL when the node is free */
} wnode_t;

typedef struct {
    wnode_t *nodes;
    uint32_t cap;   /* nodes allocated */
    uint32_t top;   /* nodes [0, top) have been handed out at least once */
    uint32_t free;  /* head of the free list, or ARENA_NIL */
    uint32_t nfree; /* length of the free list */
} warena_t;

/* Ask for transparent huge pages on a big block (the id index): index
 * probes touch memory at random, and with 4 KiB pages each of those
 * accesses also misses the TLB. Only a hint; systems with THP set to
 * "madvise" (common) would otherwise never use them. */
static inline void wheel_hint_hugepages(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (bytes < 2 * huge) return;
    uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t end = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (end > start) (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Grow by half (not double): at 10M timers doubling would leave up to half
 * the arena empty, which alone would blow the 40-bytes-per-timer budget. */
static inline uint32_t arena_grown_cap(uint32_t cap) { return cap + cap / 2; }

/* Make room for `extra` more allocations without further growth.
 * `limit` is the largest capacity allowed. 0 ok, -1 no memory, -2 full. */
static inline int arena_reserve(warena_t *a, size_t extra, size_t limit) {
    if (extra <= a->nfree) return 0;
    size_t need = (size_t)a->top + (extra - a->nfree);
    if (need <= a->cap) return 0;
    if (need > limit) return -2;
    size_t cap = arena_grown_cap(a->cap);
    if (cap < need) cap = need; /* a big batch: size it exactly */
    if (cap > limit) cap = limit;
    wnode_t *nodes = (wnode_t *)realloc(a->nodes, cap * sizeof(wnode_t));
    if (nodes == NULL) return -1;
    a->nodes = nodes;
    a->cap = (uint32_t)cap;
    /* No wheel_hint_hugepages() here: measured, faulting huge pages in at
     * every growth step cost more in insert than it saved in advance. */
    return 0;
}

/* Caller has reserved. */
static inline uint32_t arena_alloc(warena_t *a) {
    uint32_t i = a->free;
    if (i != ARENA_NIL) {
        a->free = a->nodes[i].next;
        a->nfree--;
        return i;
    }
    return a->top++;
}

static inline void arena_release(warena_t *a, uint32_t i) {
    a->nodes[i].next = a->free;
    a->nodes[i].prev = ARENA_NIL;
    a->free = i;
    a->nfree++;
}

#endif /* WHEELSCHED_WHEEL_ARENA_H */
