/* Sanitizer driver for walscan.c (not part of the extension).
 *
 *   gcc -std=c11 -g -O1 -Wall -Wextra -fsanitize=address,undefined \
 *       -fno-sanitize-recover=all -Icsrc csrc/walscan.c csrc/walscan_check.c -o /tmp/walscan_check
 *   /tmp/walscan_check SEGMENT_OR_SNAPSHOT...
 *
 * For every input file (a real segment or snapshot; the record walk starts
 * right after its header) it walks every truncation, every single-byte
 * flip, zeroed blocks and zero/garbage tails, each in an exactly sized heap
 * buffer so that a read one byte past the end is reported. Every variant is
 * walked with both CRC implementations, with and without copying, with
 * stop_other, with small limits (resuming) and with a tiny `others` array;
 * ws_find_valid runs from every offset. It also checks hardware == software
 * CRC and that resumed walks end where one walk ends. Exit status 0 = OK. */
#include "walscan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static unsigned long variants, failures;

#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                 \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

/* Header size from the file header itself: 24 fixed bytes, meta, 4 CRC. */
static size_t header_size(const uint8_t *d, size_t n)
{
    if (n < 28)
        return n;
    uint32_t meta = (uint32_t)d[12] | (uint32_t)d[13] << 8 | (uint32_t)d[14] << 16 | (uint32_t)d[15] << 24;
    size_t h = 24 + (size_t)meta + 4;
    return h > n ? n : h;
}

static void walk_one(const uint8_t *src, size_t n, size_t start, uint64_t first_seq)
{
    uint8_t *buf = malloc(n ? n : 1); /* exact size: ASan sees any over-read */
    uint8_t *out = malloc(n + 1);
    uint64_t others[4];
    memcpy(buf, src, n);
    variants++;
    for (int hw = 0; hw < 2; hw++) {
        ws_init(hw);
        CHECK(ws_crc32c(0, buf, n) == ws_crc32c_sw(0, buf, n));
        for (int mode = 0; mode < 4; mode++) {
            int copy = mode & 1, stop_other = (mode >> 1) & 1;
            /* one walk */
            ws_scan_state a = {.off = start, .expect = first_seq};
            int sa = ws_scan(buf, n, &a, (size_t)-1, 1, 0, stop_other, copy ? out : NULL,
                             others, 0);
            /* the same walk resumed every 3 records (and after WS_FULL) */
            ws_scan_state b = {.off = start, .expect = first_seq};
            int sb;
            size_t total = 0;
            for (;;) {
                b.n_others = 0;
                sb = ws_scan(buf, n, &b, 3, 1, 0, stop_other, copy ? out : NULL, others, 4);
                total += b.count;
                if (sb != WS_LIMIT && sb != WS_FULL)
                    break;
            }
            if (sa != WS_FULL) {
                CHECK(sa == sb);
                CHECK(a.off == b.off && a.expect == b.expect);
                CHECK(a.count == total);
            }
            CHECK(a.off <= n && a.out_len <= n);
            if (copy && start >= 5) {
                /* in place, the way decoder.py uses it: the same payloads */
                uint8_t *inplace = malloc(n ? n : 1);
                memcpy(inplace, src, n);
                ws_scan_state c = {.off = start, .expect = first_seq, .out_len = 0};
                int sc = ws_scan(inplace, n, &c, (size_t)-1, 1, 0, stop_other,
                                 inplace + start - 5, others, 0);
                CHECK(sc == sa && c.off == a.off && c.out_len == a.out_len);
                CHECK(memcmp(inplace + start - 5, out, a.out_len) == 0);
                CHECK(memcmp(inplace + c.off, src + c.off, n - c.off) == 0); /* rest untouched */
                free(inplace);
            }
        }
    }
    for (size_t p = 0; p <= n + 1; p++) {
        int64_t f = ws_find_valid(buf, n, p, 0);
        CHECK(f < 0 || ((size_t)f >= p && (size_t)f + WS_REC_HEADER <= n));
    }
    free(out);
    free(buf);
}

int main(int argc, char **argv)
{
    ws_init(1);
    for (int i = 1; i < argc; i++) {
        FILE *fp = fopen(argv[i], "rb");
        if (!fp) {
            perror(argv[i]);
            return 2;
        }
        fseek(fp, 0, SEEK_END);
        size_t n = (size_t)ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *d = malloc(n + 8192);
        if (fread(d, 1, n, fp) != n) {
            perror(argv[i]);
            return 2;
        }
        fclose(fp);
        size_t h = header_size(d, n);
        uint64_t seq = 0;
        for (int k = 0; k < 8; k++)
            seq |= (uint64_t)d[16 + k] << (8 * k);
        if (memcmp(d, "WSSNP", 5) == 0)
            seq = 1; /* snapshot items count from 1 */
        for (size_t cut = h; cut <= n; cut++)
            walk_one(d, cut, h, seq);
        for (size_t p = h; p < n; p++) {
            d[p] ^= 0x5A;
            walk_one(d, n, h, seq);
            d[p] ^= 0x5A;
        }
        uint8_t *z = malloc(n + 8192);
        for (size_t p = h; p < n; p += 7) {
            memcpy(z, d, n);
            size_t len = n - p < 300 ? n - p : 300;
            memset(z + p, 0, len);
            walk_one(z, n, h, seq);
        }
        memcpy(z, d, n);
        memset(z + n, 0, 8192);
        walk_one(z, n + 8192, h, seq);
        for (size_t k = 0; k < 8192; k++)
            z[n + k] = (uint8_t)(k * 131 + 7);
        walk_one(z, n + 8192, h, seq);
        walk_one(z, n + 16, h, seq);
        free(z);
        free(d);
    }
    printf("%lu variants, %lu failures\n", variants, failures);
    return failures ? 1 : 0;
}
