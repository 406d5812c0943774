/* The WAL's per-record walk in C: CRC32C and the record scanner.
 *
 * The on-disk format is specified in wheelsched/wal/__init__.py; the
 * reference (pure-Python) implementation of the same walk is
 * wheelsched/wal/decoder.py. This file only validates framing and copies
 * payload bytes; it never interprets msgpack and never allocates. */
#ifndef WHEELSCHED_WALSCAN_H
#define WHEELSCHED_WALSCAN_H

#include <stddef.h>
#include <stdint.h>

#define WS_REC_HEADER 16
#define WS_SEQ_BITS 56
#define WS_SEQ_MASK ((UINT64_C(1) << WS_SEQ_BITS) - 1)

/* Why a scan returned. Everything >= WS_PARTIAL means "the record at
 * state.off is bad"; state.off/expect then describe that record. */
enum ws_status {
    WS_END = 0,      /* every byte up to n was consumed by valid records */
    WS_LIMIT = 1,    /* `limit` records consumed; more may follow */
    WS_STOP = 2,     /* stop_other: a valid record of another type is at off */
    WS_FULL = 3,     /* the `others` array is full; resume to continue */
    WS_PARTIAL = 4,  /* fewer than 16 bytes left: partial record header */
    WS_PAST_END = 5, /* the record's length runs past n */
    WS_CRC = 6,      /* checksum mismatch */
    WS_SEQ = 7,      /* CRC-valid record with the wrong seq (found_seq) */
};

typedef struct {
    size_t off;         /* in/out: offset of the next record */
    uint64_t expect;    /* in/out: seq the record at off must carry */
    size_t count;       /* out: records consumed by this call */
    uint64_t found_seq; /* out: seq of the record at off (WS_SEQ, WS_STOP) */
    unsigned found_type;/* out: type of the record at off (WS_SEQ, WS_STOP) */
    size_t out_len;     /* in/out: payload bytes written to `out` */
    size_t n_others;    /* in/out: entries written to `others` */
} ws_scan_state;

/* Fill the software tables and pick the CRC implementation (hardware when
 * allow_hw and the CPU has SSE4.2). Call once before anything else. */
void ws_init(int allow_hw);
int ws_crc32c_uses_hw(void);

uint32_t ws_crc32c(uint32_t crc, const uint8_t *p, size_t n);
uint32_t ws_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n);
/* Hardware CRC32C; only call when ws_crc32c_hw_available(). */
uint32_t ws_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n);
int ws_crc32c_hw_available(void);

/* Walk records in buf[st->off, n) starting at seq st->expect, for at most
 * `limit` records. Payloads of records of type copy_type whose seq is >
 * min_seq are appended to out (if out is not NULL; it must have room for
 * n - st->off bytes, or be buf + st->off - k for some k >= 0: the payloads
 * are then compacted in place, overwriting only records already read); the seqs > min_seq of other valid records go to
 * others[] (up to others_cap). With stop_other, the walk stops at the first
 * valid record whose type is not copy_type instead (WS_STOP). */
int ws_scan(const uint8_t *buf, size_t n, ws_scan_state *st, size_t limit,
            unsigned copy_type, uint64_t min_seq, int stop_other,
            uint8_t *out, uint64_t *others, size_t others_cap);

/* Offset of the first record at or after `start` that passes its CRC and
 * has seq >= min_seq, or -1. */
int64_t ws_find_valid(const uint8_t *buf, size_t n, size_t start, uint64_t min_seq);

#endif
