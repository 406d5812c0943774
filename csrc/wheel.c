/*
 * wheel.c -- a hierarchical timing wheel with exact expiry.
 *
 * Overview
 * --------
 * Time is an int64 tick. Internally every tick t is mapped to the unsigned
 * tick u = t XOR 2**63, which preserves order, so "the past", "far future"
 * and negative ticks need no special cases: the whole int64 range is one
 * unsigned 64-bit line.
 *
 * The wheel has WHEEL_LEVELS = 11 levels of 64 slots. Level L looks at bits
 * [6L, 6L + 6) of a tick: a slot of level L spans 64**L ticks and the level
 * spans 64**(L+1). Eleven levels cover 66 >= 64 bits, so any deadline up to
 * 2**63 - 1 ticks away fits without an overflow list and without the top
 * level wrapping around (tokio caps deadlines at 2 years and wraps its top
 * level; we have bits to spare, so we do neither). The top level only uses
 * 16 of its slots.
 *
 *   level  slot width (1 ms ticks)   level span
 *     0    1 ms                      64 ms
 *     1    64 ms                     4.1 s
 *     2    4.1 s                     4.4 min
 *     3    4.4 min                   4.7 h
 *     4    4.7 h                     12.4 days
 *     5    12.4 days                 2.2 years
 *    ...   ...                       ...
 *    10    2**60 ticks               2**64 ticks (the whole line)
 *
 * A pending timer with deadline `when` > `elapsed` (the current tick) lives
 * at the level of the highest bit in which `when` and `elapsed` differ
 * (level_for()), in the slot given by `when`'s 6 bits at that level. So all
 * timers of level L share `elapsed`'s bits above level L and sit in slots
 * strictly after `elapsed`'s own slot of that level: no level wraps, the
 * earliest slot of a level is simply its lowest occupied bit, and every
 * timer of a lower level is due before any timer of a higher one. The next
 * slot with work is therefore the lowest set bit of the lowest non-empty
 * level: O(1) through `level_mask` and the per-level occupancy bitmaps.
 *
 * Expiry is exact (unlike the Linux kernel's wheel since 4.8, which gave up
 * cascading and lets far timers fire late by up to 12.5% of their distance:
 * a job scheduler promises fire times). advance(now) repeatedly takes the
 * next occupied slot whose start tick is <= now, moves `elapsed` to that
 * start, and either fires each of its timers (deadline == start; always the
 * case on level 0, where a slot is one tick) or re-files it with
 * level_for(), which now picks a strictly lower level (cascading). When no
 * slot starts at or before `now`, `elapsed` jumps to `now`; that keeps the
 * placement rule true because every pending timer is then in a slot after
 * `now`. A timer therefore moves down at most 10 times in its life, once per
 * level it skips, and typically ~4 times for deadlines a day out at 1 ms.
 *
 * Deadlines at or before the current tick go onto the "due" list and fire on
 * the next advance, first (they are earlier than anything in the wheel),
 * sorted by (deadline, id). While it is not empty, next_expiry() is a lower
 * bound of its deadlines (`due_min`), so at or before the current tick.
 *
 * next_expiry() is the start of the next occupied slot, raised to a lower
 * bound of the deadlines in that slot kept per slot (`slot_min`; reset when a
 * slot empties, lowered on insert, never raised on cancel, so it can only be
 * early, never late). Without cancellations it is the earliest deadline
 * itself, so a ticker that sleeps until next_expiry() wakes once per firing
 * instead of once per cascade step.
 *
 * Memory
 * ------
 * A timer is a 24-byte node (id, deadline, two uint32 links) in one arena
 * (wheel_arena.h) that grows by half when full, plus a 4-byte entry in the
 * id index (wheel_index.h), at a load between 3/8 and 3/4. At 10M timers
 * that is 24 * arena slack (<= 1.5) + 4 / load: about 31-35 bytes. A
 * Python heapq entry (tuple + two ints + list slot) costs ~170.
 *
 * Slot lists are circular doubly-linked lists through a sentinel node; the
 * sentinels are the first 705 arena nodes (11 * 64 slots + the due list), so
 * unlinking a node (cancel) needs neither its slot nor its level: when the
 * list becomes empty, the neighbour left is the sentinel, whose index names
 * the occupancy bit to clear. Lists are FIFO: inserting appends at the tail,
 * whose node was usually touched recently (timers are inserted in bursts
 * into the same few far slots), and cascading walks a slot in arena order
 * when timers were inserted in order, which the hardware prefetcher likes.
 *
 * Advance without allocating per timer
 * ------------------------------------
 * Expired timers are set aside as arena indices in a reusable uint32 buffer
 * (`fired`), so that the Python wrapper can allocate the result array with
 * its exact size before wheel_collect() writes the ids into it and frees the
 * nodes. The collect loop reads nodes by index from a plain array, so the
 * CPU overlaps the cache misses (and we prefetch ahead); walking a linked
 * list would serialise them. If the buffer cannot grow, the remaining
 * expired timers go back on the due list and the call reports ENOMEM with
 * nothing lost.
 *
 * Trade-offs
 * ----------
 * - Cascading costs a pass over a far timer per level it crosses, paid in
 *   advance(); the kernel's no-cascade wheel avoids that at the price of
 *   lateness we cannot accept. With 64-slot levels, a day of 1 ms ticks
 *   costs ~4 moves per timer.
 * - Ids are arbitrary 63-bit integers, so the wheel needs the hash index;
 *   a caller that could live with dense small ids would not.
 * - Arena indices are 27 bits (134M nodes); more timers than that per wheel
 *   fail with WHEEL_EFULL.
 */
#define _GNU_SOURCE /* madvise(MADV_HUGEPAGE) in wheel_arena.h */
#include "wheel.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "wheel_arena.h"
#include "wheel_index.h"

#define WHEEL_SLOT_BITS 6                       /* one uint64 bitmap per level */
#define WHEEL_SLOTS (1u << WHEEL_SLOT_BITS)     /* 64 */
#define WHEEL_SLOT_MASK (WHEEL_SLOTS - 1)
#define WHEEL_LEVELS 11                         /* ceil(64 bits / 6 bits) */
#define WHEEL_DUE (WHEEL_LEVELS * WHEEL_SLOTS)  /* sentinel of the due list */
#define WHEEL_NSENT (WHEEL_DUE + 1)             /* sentinels: 705 nodes */
#define WHEEL_ARENA_MIN 2048                    /* sentinels + ~1300 timers */
#define WHEEL_ARENA_MAX ((size_t)IX_IDX_MASK + 1)
#define WHEEL_FIRED_MIN 1024
#define WHEEL_FIRED_KEEP (1u << 16)             /* larger buffers are freed */
#define WHEEL_SIGN (UINT64_C(1) << 63)

struct wheel {
    uint64_t elapsed;                      /* current tick (unsigned space) */
    uint64_t due_min;                      /* lower bound of the due list */
    uint64_t occupied[WHEEL_LEVELS];       /* bit s: slot s is non-empty */
    uint32_t level_mask;                   /* bit L: occupied[L] != 0 */
    size_t count;                          /* pending timers */
    warena_t arena;
    windex_t index;
    uint32_t *fired;                       /* expired, not yet collected */
    size_t nfired, fired_cap;
    uint64_t slot_min[WHEEL_LEVELS][WHEEL_SLOTS]; /* lower bound per slot */
};

/* ---- ticks and placement ------------------------------------------------ */

static inline uint64_t to_tick(int64_t t) { return (uint64_t)t ^ WHEEL_SIGN; }
static inline int64_t from_tick(uint64_t u) { return (int64_t)(u ^ WHEEL_SIGN); }

/* Level of a deadline `when` > `elapsed`: the 6-bit group of the highest
 * differing bit. OR-ing in the slot mask maps "same level-0 block" to 0. */
static inline unsigned level_for(uint64_t elapsed, uint64_t when) {
    uint64_t diff = (elapsed ^ when) | WHEEL_SLOT_MASK;
    return (unsigned)(63 - __builtin_clzll(diff)) / WHEEL_SLOT_BITS;
}

static inline unsigned slot_for(uint64_t when, unsigned level) {
    return (unsigned)(when >> (level * WHEEL_SLOT_BITS)) & WHEEL_SLOT_MASK;
}

/* First tick of slot `slot` of `level` in the current rotation. */
static inline uint64_t slot_start(uint64_t elapsed, unsigned level, unsigned slot) {
    unsigned span_bits = (level + 1) * WHEEL_SLOT_BITS;
    uint64_t base = span_bits >= 64 ? 0 : elapsed & ~((UINT64_C(1) << span_bits) - 1);
    return base | ((uint64_t)slot << (level * WHEEL_SLOT_BITS));
}

/* ---- slot lists ------------------------------------------------------- */

static inline void list_init(wnode_t *nodes, uint32_t s) {
    nodes[s].next = nodes[s].prev = s;
}

static inline bool list_empty(const wnode_t *nodes, uint32_t s) {
    return nodes[s].next == s;
}

static inline void list_push_tail(wnode_t *nodes, uint32_t s, uint32_t x) {
    uint32_t last = nodes[s].prev;
    nodes[x].prev = last;
    nodes[x].next = s;
    nodes[last].next = x;
    nodes[s].prev = x;
}

/* Put x (when <= elapsed) on the due list. */
static inline void due_push(wheel_t *w, uint32_t x) {
    wnode_t *nodes = w->arena.nodes;
    if (list_empty(nodes, WHEEL_DUE) || nodes[x].when < w->due_min) w->due_min = nodes[x].when;
    list_push_tail(nodes, WHEEL_DUE, x);
}

/* File timer x (when > elapsed into its slot, else onto the due list). */
static inline void place(wheel_t *w, uint32_t x) {
    wnode_t *nodes = w->arena.nodes;
    uint64_t when = nodes[x].when;
    if (when <= w->elapsed) {
        due_push(w, x);
        return;
    }
    unsigned level = level_for(w->elapsed, when);
    unsigned slot = slot_for(when, level);
    uint64_t bit = UINT64_C(1) << slot;
    if (!(w->occupied[level] & bit)) {
        w->occupied[level] |= bit;
        w->level_mask |= 1u << level;
        w->slot_min[level][slot] = when;
    } else if (when < w->slot_min[level][slot]) {
        w->slot_min[level][slot] = when;
    }
    list_push_tail(nodes, level * WHEEL_SLOTS + slot, x);
}

/* Unlink x from whatever list holds it; clear the slot's bit if it empties. */
static inline void unlink_node(wheel_t *w, uint32_t x) {
    wnode_t *nodes = w->arena.nodes;
    uint32_t p = nodes[x].prev, n = nodes[x].next;
    nodes[p].next = n;
    nodes[n].prev = p;
    if (p == n && p < WHEEL_DUE) { /* only the sentinel p is left */
        unsigned level = p / WHEEL_SLOTS;
        w->occupied[level] &= ~(UINT64_C(1) << (p % WHEEL_SLOTS));
        if (!w->occupied[level]) w->level_mask &= ~(1u << level);
    }
}

/* ---- lifecycle ---------------------------------------------------------- */

size_t wheel_max_timers(void) { return WHEEL_ARENA_MAX - WHEEL_NSENT; }

static int arena_init(warena_t *a) {
    a->nodes = (wnode_t *)malloc(WHEEL_ARENA_MIN * sizeof(wnode_t));
    if (a->nodes == NULL) return -1;
    a->cap = WHEEL_ARENA_MIN;
    a->top = WHEEL_NSENT;
    a->free = ARENA_NIL;
    a->nfree = 0;
    for (uint32_t s = 0; s < WHEEL_NSENT; s++) {
        a->nodes[s].id = -1; /* never equal to a timer id */
        a->nodes[s].when = 0;
        list_init(a->nodes, s);
    }
    return 0;
}

wheel_t *wheel_new(int64_t now) {
    wheel_t *w = (wheel_t *)calloc(1, sizeof(wheel_t));
    if (w == NULL) return NULL;
    w->elapsed = to_tick(now);
    if (arena_init(&w->arena) != 0) {
        free(w);
        return NULL;
    }
    if (ix_init(&w->index) != 0) {
        free(w->arena.nodes);
        free(w);
        return NULL;
    }
    return w;
}

void wheel_free(wheel_t *w) {
    if (w == NULL) return;
    free(w->arena.nodes);
    free(w->index.slots);
    free(w->fired);
    free(w);
}

int wheel_clear(wheel_t *w) {
    if (w->nfired) return WHEEL_EBUSY;
    /* Build the empty state first so that a failed allocation changes
     * nothing; the node calls clear() to give memory back. */
    warena_t a;
    windex_t ix;
    if (arena_init(&a) != 0) goto in_place;
    if (ix_init(&ix) != 0) {
        free(a.nodes);
        goto in_place;
    }
    free(w->arena.nodes);
    free(w->index.slots);
    w->arena = a;
    w->index = ix;
    goto done;
in_place: /* out of memory: reset the structures we have */
    w->arena.top = WHEEL_NSENT;
    w->arena.free = ARENA_NIL;
    w->arena.nfree = 0;
    for (uint32_t s = 0; s < WHEEL_NSENT; s++) list_init(w->arena.nodes, s);
    memset(w->index.slots, 0, ix_size(&w->index) * sizeof(uint32_t));
    w->index.live = 0;
done:
    free(w->fired);
    w->fired = NULL;
    w->nfired = w->fired_cap = 0;
    memset(w->occupied, 0, sizeof(w->occupied));
    w->level_mask = 0;
    w->count = 0;
    return WHEEL_OK;
}

/* ---- insert and cancel -------------------------------------------------- */

static int reserve(wheel_t *w, size_t extra) {
    int rc = arena_reserve(&w->arena, extra, WHEEL_ARENA_MAX);
    if (rc == -2) return WHEEL_EFULL;
    if (rc != 0) return WHEEL_ENOMEM;
    if (ix_reserve(&w->index, &w->arena, WHEEL_NSENT, extra) != 0) return WHEEL_ENOMEM;
    return WHEEL_OK;
}

#define PREFETCH_INSERT 8 /* ids ahead whose index line insert_many prefetches */

/* Insert with room reserved. */
static int insert_one(wheel_t *w, int64_t id, int64_t deadline) {
    uint64_t h = ix_hash(id);
    if (ix_find(&w->index, w->arena.nodes, id, h) != SIZE_MAX) return WHEEL_EEXIST;
    uint32_t x = arena_alloc(&w->arena);
    w->arena.nodes[x].id = id;
    w->arena.nodes[x].when = to_tick(deadline);
    ix_put(&w->index, w->arena.nodes, h, x);
    place(w, x);
    w->count++;
    return WHEEL_OK;
}

int wheel_insert(wheel_t *w, int64_t id, int64_t deadline) {
    if (id < 0) return WHEEL_EINVAL;
    if (w->nfired) return WHEEL_EBUSY;
    int rc = reserve(w, 1);
    if (rc != WHEEL_OK) return rc;
    return insert_one(w, id, deadline);
}

static void remove_node(wheel_t *w, size_t pos, uint32_t x) {
    unlink_node(w, x);
    ix_erase_at(&w->index, w->arena.nodes, pos);
    arena_release(&w->arena, x);
    w->count--;
}

int wheel_cancel(wheel_t *w, int64_t id) {
    if (id < 0) return WHEEL_EINVAL;
    if (w->nfired) return WHEEL_EBUSY;
    size_t pos = ix_find(&w->index, w->arena.nodes, id, ix_hash(id));
    if (pos == SIZE_MAX) return 0;
    remove_node(w, pos, w->index.slots[pos] & IX_IDX_MASK);
    return 1;
}

int wheel_insert_many(wheel_t *w, const int64_t *ids, const int64_t *deadlines,
                      size_t n, size_t *bad) {
    if (w->nfired) return WHEEL_EBUSY;
    for (size_t k = 0; k < n; k++) {
        if (ids[k] < 0) {
            *bad = k;
            return WHEEL_EINVAL;
        }
    }
    int rc = reserve(w, n);
    if (rc != WHEEL_OK) return rc;
    for (size_t k = 0; k < n; k++) {
        /* Random ids miss in the index: start those misses early. */
        if (k + PREFETCH_INSERT < n) __builtin_prefetch(ix_home(&w->index, ix_hash(ids[k + PREFETCH_INSERT])));
        if (insert_one(w, ids[k], deadlines[k]) == WHEEL_OK) continue;
        /* Already pending, or repeated in the batch: undo this batch. */
        *bad = k;
        while (k-- > 0) wheel_cancel(w, ids[k]);
        return WHEEL_EEXIST;
    }
    return WHEEL_OK;
}

/* ---- queries ------------------------------------------------------------ */

int wheel_deadline(const wheel_t *w, int64_t id, int64_t *deadline) {
    if (id < 0) return WHEEL_ENOENT;
    size_t pos = ix_find(&w->index, w->arena.nodes, id, ix_hash(id));
    if (pos == SIZE_MAX) return WHEEL_ENOENT;
    *deadline = from_tick(w->arena.nodes[w->index.slots[pos] & IX_IDX_MASK].when);
    return WHEEL_OK;
}

int wheel_contains(const wheel_t *w, int64_t id) {
    if (id < 0) return 0;
    return ix_find(&w->index, w->arena.nodes, id, ix_hash(id)) != SIZE_MAX;
}

size_t wheel_len(const wheel_t *w) { return w->count; }

int64_t wheel_now(const wheel_t *w) { return from_tick(w->elapsed); }

int wheel_next_expiry(const wheel_t *w, int64_t *tick) {
    if (!list_empty(w->arena.nodes, WHEEL_DUE)) {
        *tick = from_tick(w->due_min); /* <= every due deadline <= now */
        return 1;
    }
    if (!w->level_mask) return 0;
    unsigned level = (unsigned)__builtin_ctz(w->level_mask);
    unsigned slot = (unsigned)__builtin_ctzll(w->occupied[level]);
    uint64_t start = slot_start(w->elapsed, level, slot);
    uint64_t lower = w->slot_min[level][slot];
    *tick = from_tick(lower > start ? lower : start);
    return 1;
}

size_t wheel_memory_bytes(const wheel_t *w) {
    return sizeof(*w) + (size_t)w->arena.cap * sizeof(wnode_t) +
           ix_size(&w->index) * sizeof(uint32_t) + w->fired_cap * sizeof(uint32_t);
}

/* ---- advance ------------------------------------------------------------ */

/* Due-list order: (deadline, id). Plain heapsort over arena indices: no
 * allocation, O(n log n) even for a burst of past-deadline inserts. */
static inline bool node_less(const wnode_t *nodes, uint32_t a, uint32_t b) {
    if (nodes[a].when != nodes[b].when) return nodes[a].when < nodes[b].when;
    return nodes[a].id < nodes[b].id;
}

static void sift_down(const wnode_t *nodes, uint32_t *v, size_t root, size_t n) {
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && node_less(nodes, v[child], v[child + 1])) child++;
        if (!node_less(nodes, v[root], v[child])) return;
        uint32_t t = v[root];
        v[root] = v[child];
        v[child] = t;
        root = child;
    }
}

static void sort_by_deadline(const wnode_t *nodes, uint32_t *v, size_t n) {
    size_t i;
    for (i = 1; i < n && !node_less(nodes, v[i], v[i - 1]); i++) {
    }
    if (i >= n) return; /* already sorted: the usual case */
    for (i = n / 2; i-- > 0;) sift_down(nodes, v, i, n);
    for (i = n; i-- > 1;) {
        uint32_t t = v[0];
        v[0] = v[i];
        v[i] = t;
        sift_down(nodes, v, 0, i);
    }
}

static int grow_fired(wheel_t *w) {
    size_t cap = w->fired_cap ? w->fired_cap * 2 : WHEEL_FIRED_MIN;
    uint32_t *fired = (uint32_t *)realloc(w->fired, cap * sizeof(uint32_t));
    if (fired == NULL) return -1;
    w->fired = fired;
    w->fired_cap = cap;
    return 0;
}

/* Set x aside as expired; if that needs memory we lack, keep it pending on
 * the due list instead (its deadline is <= the new now). */
static inline void fire(wheel_t *w, uint32_t x, bool *oom) {
    if (w->nfired == w->fired_cap && (*oom || grow_fired(w) != 0)) {
        *oom = true;
        due_push(w, x);
        return;
    }
    w->fired[w->nfired++] = x;
}

int wheel_advance(wheel_t *w, int64_t now_signed, size_t *nfired) {
    if (w->nfired) return WHEEL_EBUSY;
    uint64_t now = to_tick(now_signed);
    if (now < w->elapsed) return WHEEL_EBACKWARDS;
    wnode_t *nodes = w->arena.nodes; /* the arena does not move in here */
    bool oom = false;

    /* 1. The due list: every deadline in it is <= elapsed, so it goes first. */
    if (!list_empty(nodes, WHEEL_DUE)) {
        uint32_t x = nodes[WHEEL_DUE].next;
        list_init(nodes, WHEEL_DUE);
        while (x != WHEEL_DUE) {
            uint32_t next = nodes[x].next;
            fire(w, x, &oom);
            x = next;
        }
        sort_by_deadline(nodes, w->fired, w->nfired);
    }

    /* 2. Slots in time order, up to now. */
    while (w->level_mask) {
        unsigned level = (unsigned)__builtin_ctz(w->level_mask);
        unsigned slot = (unsigned)__builtin_ctzll(w->occupied[level]);
        uint64_t start = slot_start(w->elapsed, level, slot);
        if (start > now) break;
        w->elapsed = start;
        uint32_t s = level * WHEEL_SLOTS + slot;
        uint32_t x = nodes[s].next;
        list_init(nodes, s);
        w->occupied[level] &= ~(UINT64_C(1) << slot);
        if (!w->occupied[level]) w->level_mask &= ~(1u << level);
        while (x != s) {
            uint32_t next = nodes[x].next;
            if (nodes[x].when == start)
                fire(w, x, &oom);
            else
                place(w, x); /* strictly lower level: never back into s */
            x = next;
        }
    }
    w->elapsed = now;

    if (oom) {
        wheel_unfire(w);
        return WHEEL_ENOMEM;
    }
    *nfired = w->nfired;
    return WHEEL_OK;
}

void wheel_unfire(wheel_t *w) {
    /* Back on the due list, still deadline-ordered; they fire next time. */
    for (size_t k = 0; k < w->nfired; k++) due_push(w, w->fired[k]);
    w->nfired = 0;
}

/* How far ahead the collect loop prefetches nodes, and index slots. */
#define PREFETCH_NODE 16
#define PREFETCH_SLOT 8

void wheel_collect(wheel_t *w, int64_t *dst) {
    wnode_t *nodes = w->arena.nodes;
    const uint32_t *fired = w->fired;
    size_t n = w->nfired;
    for (size_t k = 0; k < n; k++) {
        if (k + PREFETCH_NODE < n) __builtin_prefetch(&nodes[fired[k + PREFETCH_NODE]]);
        if (k + PREFETCH_SLOT < n) {
            uint64_t ph = ix_hash(nodes[fired[k + PREFETCH_SLOT]].id);
            __builtin_prefetch(&w->index.slots[ph & w->index.mask]);
        }
        uint32_t x = fired[k];
        int64_t id = nodes[x].id;
        dst[k] = id;
        ix_remove(&w->index, nodes, ix_hash(id), x);
        arena_release(&w->arena, x);
    }
    w->count -= n;
    w->nfired = 0;
    if (w->fired_cap > WHEEL_FIRED_KEEP) { /* a big jump: give the buffer back */
        free(w->fired);
        w->fired = NULL;
        w->fired_cap = 0;
    }
}
