/* The WAL's per-record walk in C (see walscan.h). Replay used to spend most
 * of its time in a Python loop doing one struct.unpack_from and one crc32c
 * call per record; here the whole walk is one call per chunk, and Python
 * only decodes the payloads this hands back, in bulk. */
#include "walscan.h"

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define WS_X86 1
#include <nmmintrin.h>
#endif

/* The format is little-endian whatever the host is; compilers turn these
 * into single loads on little-endian machines. */
static inline uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t ld64(const uint8_t *p)
{
    return (uint64_t)ld32(p) | (uint64_t)ld32(p + 4) << 32;
}

/* ------------------------------------------------------------------ CRC32C
 * Castagnoli polynomial, reflected, init and final xor ~0: the same function
 * as the `crc32c` package, so `crc` chains the same way (pass 0 to start). */

#define CRC32C_POLY 0x82F63B78u

/* Slicing-by-8: eight bytes per step instead of one keeps the fallback
 * within a few times of the hardware path (it matters on CPUs without
 * SSE4.2 and on non-x86 hosts). Filled once by ws_init(). */
static uint32_t sw_table[8][256];

static void sw_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        sw_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            sw_table[t][i] = (sw_table[t - 1][i] >> 8) ^ sw_table[0][sw_table[t - 1][i] & 0xFF];
}

uint32_t ws_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo = ld32(p) ^ c, hi = ld32(p + 4);
        c = sw_table[7][lo & 0xFF] ^ sw_table[6][(lo >> 8) & 0xFF] ^
            sw_table[5][(lo >> 16) & 0xFF] ^ sw_table[4][lo >> 24] ^
            sw_table[3][hi & 0xFF] ^ sw_table[2][(hi >> 8) & 0xFF] ^
            sw_table[1][(hi >> 16) & 0xFF] ^ sw_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ sw_table[0][(c ^ *p++) & 0xFF];
    return ~c;
}

#ifdef WS_X86
/* Compiled for SSE4.2 on its own, so the rest of the module still runs on
 * any x86-64; only called after the CPU check in ws_init(). */
__attribute__((target("sse4.2"))) uint32_t ws_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
#ifdef __x86_64__
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8); /* unaligned: records are packed back to back */
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
#else
    uint32_t c32 = ~crc;
#endif
    while (n--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

int ws_crc32c_hw_available(void)
{
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#else
uint32_t ws_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n)
{
    return ws_crc32c_sw(crc, p, n);
}

int ws_crc32c_hw_available(void)
{
    return 0;
}
#endif

static uint32_t (*crc_impl)(uint32_t, const uint8_t *, size_t) = ws_crc32c_sw;

void ws_init(int allow_hw)
{
    sw_init();
    crc_impl = (allow_hw && ws_crc32c_hw_available()) ? ws_crc32c_hw : ws_crc32c_sw;
}

int ws_crc32c_uses_hw(void)
{
    return crc_impl == ws_crc32c_hw;
}

uint32_t ws_crc32c(uint32_t crc, const uint8_t *p, size_t n)
{
    return crc_impl(crc, p, n);
}

/* ------------------------------------------------------------------ scanning */

int ws_scan(const uint8_t *buf, size_t n, ws_scan_state *st, size_t limit,
            unsigned copy_type, uint64_t min_seq, int stop_other,
            uint8_t *out, uint64_t *others, size_t others_cap)
{
    size_t off = st->off, count = 0, out_len = st->out_len, n_others = st->n_others;
    uint64_t expect = st->expect;
    int status;

    for (;;) {
        if (off >= n) {
            status = WS_END;
            break;
        }
        if (count >= limit) {
            status = WS_LIMIT;
            break;
        }
        if (n - off < WS_REC_HEADER) {
            status = WS_PARTIAL;
            break;
        }
        const uint8_t *r = buf + off;
        uint32_t len = ld32(r + 4);
        /* compared as a remainder, so a huge length cannot overflow off */
        if ((uint64_t)len > (uint64_t)(n - off - WS_REC_HEADER)) {
            status = WS_PAST_END;
            break;
        }
        if (crc_impl(0, r + 4, 12 + (size_t)len) != ld32(r)) {
            status = WS_CRC;
            break;
        }
        uint64_t type_seq = ld64(r + 8), seq = type_seq & WS_SEQ_MASK;
        unsigned type = (unsigned)(type_seq >> WS_SEQ_BITS);
        /* CRC-valid but out of order is never a torn write: the caller
         * raises at once, so it needs what was found. */
        if (seq != expect) {
            st->found_seq = seq;
            st->found_type = type;
            status = WS_SEQ;
            break;
        }
        if (type == copy_type) {
            if (out != NULL && seq > min_seq) {
                /* memmove: out may be buf itself (payloads compacted in
                 * place, always to the left of the record being read) */
                memmove(out + out_len, r + WS_REC_HEADER, len);
                out_len += len;
            }
        } else if (stop_other) {
            st->found_seq = seq;
            st->found_type = type;
            status = WS_STOP;
            break;
        } else if (out != NULL && seq > min_seq) {
            /* the caller numbers the copied payloads by counting seqs, so
             * it must know which seqs were not copied */
            if (n_others >= others_cap) {
                status = WS_FULL;
                break;
            }
            others[n_others++] = seq;
        }
        off += WS_REC_HEADER + (size_t)len;
        expect++;
        count++;
    }
    st->off = off;
    st->expect = expect;
    st->count = count;
    st->out_len = out_len;
    st->n_others = n_others;
    return status;
}

int64_t ws_find_valid(const uint8_t *buf, size_t n, size_t start, uint64_t min_seq)
{
    for (size_t p = start; n >= WS_REC_HEADER && p <= n - WS_REC_HEADER; p++) {
        const uint8_t *r = buf + p;
        if (r[15] == 0) /* type 0 is never written: zero runs are skipped cheaply */
            continue;
        uint32_t len = ld32(r + 4);
        if ((uint64_t)len > (uint64_t)(n - p - WS_REC_HEADER))
            continue;
        if ((ld64(r + 8) & WS_SEQ_MASK) < min_seq)
            continue;
        if (crc_impl(0, r + 4, 12 + (size_t)len) == ld32(r))
            return (int64_t)p;
    }
    return -1;
}
