/*
 * wheel_index.h -- id -> arena index map of the timing wheel (private to
 * wheel.c).
 *
 * An open-addressing hash table with linear probing in Robin Hood order and
 * backward-shift deletion (no tombstones). Entries are single uint32 words:
 * the low IX_IDX_BITS bits are the arena index of the node, the high
 * IX_DISP_BITS bits its displacement (how far past its home slot it sits),
 * saturated at IX_DISP_MAX. The id itself lives in the node, so the table
 * costs 4 bytes per entry.
 *
 * Why Robin Hood: timer ids in practice are dense (see ix_hash), so a full
 * table is one long run of entries at their home slots. Plain linear probing
 * with tombstones then made every lookup of an *absent* id inside the run
 * (re-arming a job: cancel, then insert with its existence check; or a job
 * whose timer just fired) scan to the end of the run: ~85 us per re-arm at
 * 100,000 timers. In Robin Hood order a lookup stops at the first entry
 * displaced less than the probe, and a deletion shifts back only entries
 * that are displaced, so both are O(1) for dense ids. The displacement also
 * does what a hash tag did: only entries with the probe's displacement (the
 * same home slot) are compared against their node.
 *
 * The table grows when live entries pass 3/4 of it, rebuilt from the arena
 * (a sequential scan, so no hashing of ids we cannot find), sized for a load
 * of at most 5/8: 16M entries (64 MiB) for 10M timers.
 *
 * Sentinel nodes (arena indices < 705) are never in the table, so the entry
 * value 0 is free to mean "empty", and a zero-filled allocation is an empty
 * table.
 */
#ifndef WHEELSCHED_WHEEL_INDEX_H
#define WHEELSCHED_WHEEL_INDEX_H

#include <stdint.h>
#include <stdlib.h>

#include "wheel_arena.h"

#define IX_IDX_BITS 27 /* up to 134M nodes: 3 GiB of arena, plenty per shard */
#define IX_DISP_BITS (32 - IX_IDX_BITS)
#define IX_DISP_MAX ((UINT32_C(1) << IX_DISP_BITS) - 1) /* 31 means "31 or more" */
#define IX_IDX_MASK ((UINT32_C(1) << IX_IDX_BITS) - 1)
#define IX_EMPTY UINT32_C(0)
#define IX_MIN_SIZE 1024 /* a fresh wheel's table: 4 KiB */

typedef struct {
    uint32_t *slots;
    size_t mask; /* size - 1; the size is a power of two */
    size_t live; /* entries in use */
} windex_t;

/* The value a home slot is taken from: the id itself folded with its high
 * half (the low 32 bits are more than any table uses). Timer ids in practice
 * are dense and sequential (the engine numbers its jobs 1, 2, 3, ... per
 * shard), and then consecutive ids land in consecutive slots: no probing
 * and no cache miss per insert, where a scattering hash costs one miss each
 * at 10M timers. A pathological id pattern (many ids equal modulo the table
 * size) makes probes long but is still correct. (Keeping blocks of 16
 * hashed ids in one cache line was tried: whole blocks displaced by linear
 * probing made probes long; slower.) */
static inline uint64_t ix_hash(int64_t id) {
    uint64_t u = (uint64_t)id;
    return (uint32_t)(u ^ (u >> 32));
}

/* Where a lookup of hash h starts (for prefetching). */
static inline const uint32_t *ix_home(const windex_t *ix, uint64_t h) {
    return &ix->slots[(size_t)h & ix->mask];
}

static inline size_t ix_size(const windex_t *ix) { return ix->mask + 1; }

/* Smallest table that holds n entries at a load of at most 5/8. */
static inline size_t ix_size_for(size_t n) {
    size_t size = IX_MIN_SIZE;
    while (size * 5 < n * 8) size *= 2;
    return size;
}

static inline int ix_init(windex_t *ix) {
    ix->slots = (uint32_t *)calloc(IX_MIN_SIZE, sizeof(uint32_t));
    if (ix->slots == NULL) return -1;
    ix->mask = IX_MIN_SIZE - 1;
    ix->live = 0;
    return 0;
}

static inline uint32_t ix_make(uint32_t idx, size_t disp) {
    return (uint32_t)(disp < IX_DISP_MAX ? disp : IX_DISP_MAX) << IX_IDX_BITS | idx;
}

/* Exact displacement of entry e at pos (reads the node only when saturated). */
static inline size_t ix_disp(const windex_t *ix, const wnode_t *nodes, size_t pos, uint32_t e) {
    size_t d = e >> IX_IDX_BITS;
    if (d < IX_DISP_MAX) return d;
    return (pos - ((size_t)ix_hash(nodes[e & IX_IDX_MASK].id) & ix->mask)) & ix->mask;
}

/* Position of id's entry, or SIZE_MAX. */
static inline size_t ix_find(const windex_t *ix, const wnode_t *nodes, int64_t id,
                             uint64_t h) {
    size_t pos = (size_t)h & ix->mask;
    for (size_t d = 0;; d++) {
        uint32_t e = ix->slots[pos];
        if (e == IX_EMPTY) return SIZE_MAX;
        size_t ed = e >> IX_IDX_BITS;
        if (ed >= IX_DISP_MAX && d >= IX_DISP_MAX) ed = ix_disp(ix, nodes, pos, e);
        /* Robin Hood order: id would sit before any entry displaced less. */
        if (ed < d) return SIZE_MAX;
        if (ed == d && nodes[e & IX_IDX_MASK].id == id) return pos;
        pos = (pos + 1) & ix->mask;
    }
}

/* Add an entry the caller knows is absent (load already checked): it takes
 * the first slot whose entry is displaced less than it would be, and that
 * entry moves on in its place. */
static inline void ix_put(windex_t *ix, const wnode_t *nodes, uint64_t h, uint32_t idx) {
    size_t pos = (size_t)h & ix->mask;
    size_t d = 0;
    for (;;) {
        uint32_t e = ix->slots[pos];
        if (e == IX_EMPTY) {
            ix->slots[pos] = ix_make(idx, d);
            break;
        }
        size_t ed = e >> IX_IDX_BITS;
        if (ed >= IX_DISP_MAX && d >= IX_DISP_MAX) ed = ix_disp(ix, nodes, pos, e);
        if (ed < d) { /* exact: a saturated ed is only compared when d is too */
            ix->slots[pos] = ix_make(idx, d);
            idx = e & IX_IDX_MASK;
            d = ed;
        }
        pos = (pos + 1) & ix->mask;
        d++;
    }
    ix->live++;
}

/* Empty the slot at pos and shift the displaced entries after it back by one. */
static inline void ix_erase_at(windex_t *ix, const wnode_t *nodes, size_t pos) {
    ix->live--;
    for (;;) {
        size_t next = (pos + 1) & ix->mask;
        uint32_t e = ix->slots[next];
        if (e == IX_EMPTY || (e >> IX_IDX_BITS) == 0) break; /* at home: stays */
        ix->slots[pos] = ix_make(e & IX_IDX_MASK, ix_disp(ix, nodes, next, e) - 1);
        pos = next;
    }
    ix->slots[pos] = IX_EMPTY;
}

/* Remove the entry of node idx (whose hash is h); it must be present. Needs
 * no node reads to find it: the entry word identifies the node. */
static inline void ix_remove(windex_t *ix, const wnode_t *nodes, uint64_t h, uint32_t idx) {
    size_t pos = (size_t)h & ix->mask;
    while ((ix->slots[pos] & IX_IDX_MASK) != idx) pos = (pos + 1) & ix->mask;
    ix_erase_at(ix, nodes, pos);
}

/* Rebuild for `want` live entries from the arena's live nodes [first, top). */
static inline int ix_rebuild(windex_t *ix, const warena_t *a, uint32_t first, size_t want) {
    size_t size = ix_size_for(want);
    uint32_t *slots = (uint32_t *)calloc(size, sizeof(uint32_t));
    if (slots == NULL) return -1;
    wheel_hint_hugepages(slots, size * sizeof(uint32_t));
    free(ix->slots);
    ix->slots = slots;
    ix->mask = size - 1;
    ix->live = 0;
    for (uint32_t i = first; i < a->top; i++) {
        if (a->nodes[i].prev == ARENA_NIL) continue; /* free node */
        ix_put(ix, a->nodes, ix_hash(a->nodes[i].id), i);
    }
    return 0;
}

/* Make room for `extra` more entries: grow when they would pass 3/4 of the
 * table. */
static inline int ix_reserve(windex_t *ix, const warena_t *a, uint32_t first, size_t extra) {
    if ((ix->live + extra) * 4 <= ix_size(ix) * 3) return 0;
    return ix_rebuild(ix, a, first, ix->live + extra);
}

#endif /* WHEELSCHED_WHEEL_INDEX_H */
