/*
 * wheel_index.h -- id -> arena index map of the timing wheel (private to
 * wheel.c).
 *
 * An open-addressing hash table with linear probing whose entries are single
 * uint32 words: the low IX_IDX_BITS bits are the arena index of the node, the
 * high IX_TAG_BITS bits are a tag taken from the id's hash. The id itself
 * lives in the node, so the table costs 4 bytes per entry; the tag lets a
 * probe skip almost every non-matching entry without touching its node (a
 * cache miss at 10M timers). A match on the tag is confirmed against the node.
 *
 * Deletion leaves a tombstone unless the next entry is empty, in which case
 * the entry and any tombstones just before it become empty again (no probe
 * chain can pass through them). Tombstones count towards the load; when live
 * entries plus tombstones pass 3/4 of the table we rebuild it from the arena
 * (a sequential scan, so no hashing of ids we cannot find), sized for the live
 * entries at a load of at most 5/8: 16M entries (64 MiB) for 10M timers.
 *
 * Sentinel nodes (arena indices < 705) are never in the table, so the entry
 * values 0 and 1 (tag 0, index 0 or 1) are free to mean "empty" and
 * "tombstone", and a zero-filled allocation is an empty table.
 */
#ifndef WHEELSCHED_WHEEL_INDEX_H
#define WHEELSCHED_WHEEL_INDEX_H

#include <stdint.h>
#include <stdlib.h>

#include "wheel_arena.h"

#define IX_IDX_BITS 27 /* up to 134M nodes: 3 GiB of arena, plenty per shard */
#define IX_TAG_BITS (32 - IX_IDX_BITS) /* 5 bits: 1 false match in 32 */
#define IX_IDX_MASK ((UINT32_C(1) << IX_IDX_BITS) - 1)
#define IX_EMPTY UINT32_C(0)
#define IX_TOMB UINT32_C(1)
#define IX_MIN_SIZE 1024 /* a fresh wheel's table: 4 KiB */

typedef struct {
    uint32_t *slots;
    size_t mask;  /* size - 1; the size is a power of two */
    size_t live;  /* entries in use */
    size_t tombs; /* tombstones */
} windex_t;

/* The value a slot and a tag are taken from. The tag (top bits) comes from
 * splitmix64's finaliser; the home slot (low 32 bits, more than any table
 * uses) is the id itself folded with its high half. Timer ids in practice
 * are dense and sequential (the engine numbers its jobs 1, 2, 3, ... per
 * shard), and then consecutive ids land in consecutive slots: no probing
 * and no cache miss per insert, where a scattering hash costs one miss each
 * at 10M timers. Random ids keep random homes. A pathological id pattern
 * (many ids equal modulo the table size) makes probes long but is still
 * correct. (Keeping blocks of 16 hashed ids in one cache line was tried:
 * whole blocks displaced by linear probing made probes long; slower.) */
static inline uint64_t ix_hash(int64_t id) {
    uint64_t u = (uint64_t)id;
    uint64_t h = u;
    h ^= h >> 30;
    h *= UINT64_C(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h *= UINT64_C(0x94d049bb133111eb);
    h ^= h >> 31;
    return (h & UINT64_C(0xffffffff00000000)) | (uint32_t)(u ^ (u >> 32));
}

/* The tag uses the top bits, the home slot the bottom bits: independent. */
static inline uint32_t ix_entry(uint64_t h, uint32_t idx) {
    return (uint32_t)(h >> (64 - IX_TAG_BITS)) << IX_IDX_BITS | idx;
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
    ix->live = ix->tombs = 0;
    return 0;
}

/* Position of id's entry, or SIZE_MAX. */
static inline size_t ix_find(const windex_t *ix, const wnode_t *nodes, int64_t id,
                             uint64_t h) {
    uint32_t tag = ix_entry(h, 0);
    size_t pos = (size_t)h & ix->mask;
    for (;;) {
        uint32_t e = ix->slots[pos];
        if (e == IX_EMPTY) return SIZE_MAX;
        if (e > IX_TOMB && (e & ~IX_IDX_MASK) == tag && nodes[e & IX_IDX_MASK].id == id)
            return pos;
        pos = (pos + 1) & ix->mask;
    }
}

/* Add an entry the caller knows is absent (load already checked). */
static inline void ix_put(windex_t *ix, uint64_t h, uint32_t idx) {
    size_t pos = (size_t)h & ix->mask;
    while (ix->slots[pos] > IX_TOMB) pos = (pos + 1) & ix->mask;
    if (ix->slots[pos] == IX_TOMB) ix->tombs--;
    ix->slots[pos] = ix_entry(h, idx);
    ix->live++;
}

static inline void ix_erase_at(windex_t *ix, size_t pos) {
    ix->live--;
    if (ix->slots[(pos + 1) & ix->mask] != IX_EMPTY) {
        ix->slots[pos] = IX_TOMB;
        ix->tombs++;
        return;
    }
    /* End of a probe chain: this entry and the tombstones before it can go. */
    ix->slots[pos] = IX_EMPTY;
    pos = (pos - 1) & ix->mask;
    while (ix->slots[pos] == IX_TOMB) {
        ix->slots[pos] = IX_EMPTY;
        ix->tombs--;
        pos = (pos - 1) & ix->mask;
    }
}

/* Remove the entry of node idx (whose hash is h); it must be present. Needs
 * no node reads: the entry word identifies the node. */
static inline void ix_remove(windex_t *ix, uint64_t h, uint32_t idx) {
    uint32_t want = ix_entry(h, idx);
    size_t pos = (size_t)h & ix->mask;
    while (ix->slots[pos] != want) pos = (pos + 1) & ix->mask;
    ix_erase_at(ix, pos);
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
    ix->live = ix->tombs = 0;
    for (uint32_t i = first; i < a->top; i++) {
        if (a->nodes[i].prev == ARENA_NIL) continue; /* free node */
        ix_put(ix, ix_hash(a->nodes[i].id), i);
    }
    return 0;
}

/* Make room for `extra` more entries: rebuild when live + tombstones would
 * pass 3/4 of the table. */
static inline int ix_reserve(windex_t *ix, const warena_t *a, uint32_t first, size_t extra) {
    if ((ix->live + ix->tombs + extra) * 4 <= ix_size(ix) * 3) return 0;
    return ix_rebuild(ix, a, first, ix->live + extra);
}

#endif /* WHEELSCHED_WHEEL_INDEX_H */
