/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/kernel_image.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "common/le.h"

/* Setup header offsets (Documentation/arch/x86/boot.rst). */
#define HDR_SETUP_SECTS    0x1f1
#define HDR_BOOT_FLAG      0x1fe
#define HDR_MAGIC          0x202
#define HDR_VERSION        0x206
#define HDR_PAYLOAD_OFFSET 0x248
#define HDR_PAYLOAD_LENGTH 0x24c
#define HDR_PREF_ADDRESS   0x258
#define HDR_INIT_SIZE      0x260
#define HDR_END            0x264

#define LZ4_LEGACY_MAGIC 0x184c2102u
/* Memory liblzma may use for one stream (the kernel's xz uses a 32 MiB dictionary). */
#define XZ_MEMLIMIT (96ull << 20)

/* ELF64 layout (the System V gABI), read byte-wise so host endianness does not matter. */
#define EH_SIZE   64
#define PH_SIZE   56
#define ET_EXEC_  2
#define EM_X86_64 62
#define PT_LOAD_  1
#define PF_X_     1

const char *kimg_comp_name(enum kimg_comp c)
{
    switch (c) {
    case KIMG_COMP_GZIP:
        return "gzip";
    case KIMG_COMP_XZ:
        return "xz";
    case KIMG_COMP_ZSTD:
        return "zstd";
    case KIMG_COMP_LZ4:
        return "lz4";
    case KIMG_COMP_BZIP2:
        return "bzip2";
    case KIMG_COMP_LZMA:
        return "lzma";
    case KIMG_COMP_LZO:
        return "lzo";
    case KIMG_COMP_UNKNOWN:
        break;
    }
    return "unknown";
}

static enum kimg_comp detect(const uint8_t *p, size_t n)
{
    static const uint8_t xz[] = {0xfd, '7', 'z', 'X', 'Z', 0};
    static const uint8_t lzo[] = {0x89, 'L', 'Z', 'O', 0};
    if (n >= 2 && p[0] == 0x1f && p[1] == 0x8b)
        return KIMG_COMP_GZIP;
    if (n >= sizeof(xz) && memcmp(p, xz, sizeof(xz)) == 0)
        return KIMG_COMP_XZ;
    if (n >= 4 && le32(p) == 0xfd2fb528u)
        return KIMG_COMP_ZSTD;
    if (n >= 4 && le32(p) == LZ4_LEGACY_MAGIC)
        return KIMG_COMP_LZ4;
    if (n >= 3 && memcmp(p, "BZh", 3) == 0)
        return KIMG_COMP_BZIP2;
    if (n >= 3 && p[0] == 0x5d && p[1] == 0 && p[2] == 0)
        return KIMG_COMP_LZMA;
    if (n >= sizeof(lzo) && memcmp(p, lzo, sizeof(lzo)) == 0)
        return KIMG_COMP_LZO;
    return KIMG_COMP_UNKNOWN;
}

int kimg_find_payload(const void *bz, size_t len, struct kimg_payload *out,
                      struct cella_errors *errs)
{
    const uint8_t *k = bz;
    memset(out, 0, sizeof(*out));
    if (len < HDR_END || le16(k + HDR_BOOT_FLAG) != 0xaa55 || le32(k + HDR_MAGIC) != 0x53726448)
        return cella_err(errs, -EINVAL, "", "kernel: not a bzImage (no boot sector or HdrS)");
    uint16_t version = le16(k + HDR_VERSION);
    if (version < 0x0208)
        return cella_err(errs, -EINVAL, "",
                         "kernel: boot protocol %u.%02u has no payload fields (need 2.08+)",
                         version >> 8, version & 0xff);
    size_t setup_len = (size_t)(k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4) * 512 + 512;
    uint32_t off = le32(k + HDR_PAYLOAD_OFFSET), plen = le32(k + HDR_PAYLOAD_LENGTH);
    size_t start;
    if (__builtin_add_overflow(setup_len, (size_t)off, &start) || start > len || plen > len - start)
        return cella_err(errs, -EINVAL, "",
                         "kernel: payload (offset %u, %u bytes) runs past the %zu-byte file", off,
                         plen, len);
    if (plen < 8)
        return cella_err(errs, -EINVAL, "", "kernel: payload of %u bytes is too short", plen);
    out->data = k + start;
    out->len = plen;
    out->comp = detect(out->data, plen - 4);
    out->out_len = le32(out->data + plen - 4);
    if (version >= 0x020a) {
        out->init_size = le32(k + HDR_INIT_SIZE);
        out->pref_address = le64(k + HDR_PREF_ADDRESS);
    }
    return 0;
}

/* LZ4 legacy frames: magic, then (le32 size, block)... ; a repeated magic starts a new frame. */
static int dec_lz4(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *produced,
                   struct cella_errors *errs)
{
    const uint32_t bound = (uint32_t)LZ4_compressBound(KIMG_LZ4_BLOCK_MAX);
    size_t pos = 0, o = 0;
    while (pos < n) {
        if (n - pos < 4)
            return cella_err(errs, -EINVAL, "", "kernel: lz4 block header truncated at %zu", pos);
        uint32_t bs = le32(in + pos);
        pos += 4;
        if (bs == LZ4_LEGACY_MAGIC)
            continue;
        if (pos == 4)
            return cella_err(errs, -EINVAL, "", "kernel: lz4 stream without the legacy magic");
        if (bs == 0 || bs > bound || bs > n - pos)
            return cella_err(errs, -EINVAL, "",
                             "kernel: lz4 block of %u bytes at %zu is empty, too large or "
                             "truncated",
                             bs, pos - 4);
        size_t room = cap - o < KIMG_LZ4_BLOCK_MAX ? cap - o : KIMG_LZ4_BLOCK_MAX;
        if (room == 0)
            return cella_err(errs, -E2BIG, "",
                             "kernel: lz4 stream decompresses to more than %zu bytes", cap);
        int r = LZ4_decompress_safe((const char *)in + pos, (char *)out + o, (int)bs, (int)room);
        if (r < 0)
            return cella_err(errs, -EINVAL, "",
                             "kernel: lz4 block at %zu is corrupt or overruns %zu bytes", pos - 4,
                             cap);
        pos += bs;
        o += (size_t)r;
    }
    *produced = o;
    return 0;
}

static int dec_gzip(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *produced,
                    struct cella_errors *errs)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    if (n > UINT_MAX || cap > UINT_MAX)
        return cella_err(errs, -E2BIG, "", "kernel: gzip stream too large");
    if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK)
        return cella_err(errs, -ENOMEM, "", "kernel: cannot start zlib");
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)n;
    s.next_out = out;
    s.avail_out = (uInt)cap;
    int zr = inflate(&s, Z_FINISH);
    *produced = s.total_out;
    bool full = s.avail_out == 0;
    inflateEnd(&s);
    if (zr == Z_STREAM_END)
        return 0;
    if (zr == Z_BUF_ERROR && full)
        return cella_err(errs, -E2BIG, "",
                         "kernel: gzip stream decompresses to more than %zu bytes", cap);
    return cella_err(errs, -EINVAL, "", "kernel: gzip stream is corrupt or truncated (zlib %d)",
                     zr);
}

static int dec_xz(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *produced,
                  struct cella_errors *errs)
{
    lzma_stream s = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s, XZ_MEMLIMIT, 0) != LZMA_OK)
        return cella_err(errs, -ENOMEM, "", "kernel: cannot start liblzma");
    s.next_in = in;
    s.avail_in = n;
    s.next_out = out;
    s.avail_out = cap;
    lzma_ret lr;
    /* liblzma reports LZMA_BUF_ERROR after two calls without progress, so this ends. */
    while ((lr = lzma_code(&s, LZMA_FINISH)) == LZMA_OK)
        ;
    *produced = s.total_out;
    bool full = s.avail_out == 0;
    lzma_end(&s);
    if (lr == LZMA_STREAM_END)
        return 0;
    if (lr == LZMA_MEMLIMIT_ERROR || (lr == LZMA_BUF_ERROR && full))
        return cella_err(errs, -E2BIG, "",
                         "kernel: xz stream needs more than %zu bytes of output or %llu MiB of "
                         "decoder memory",
                         cap, (unsigned long long)(XZ_MEMLIMIT >> 20));
    return cella_err(errs, -EINVAL, "", "kernel: xz stream is corrupt or truncated (liblzma %d)",
                     (int)lr);
}

static int dec_zstd(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *produced,
                    struct cella_errors *errs)
{
    /* One frame, decoded in a single pass into out: no window buffer is allocated. */
    size_t fl = ZSTD_findFrameCompressedSize(in, n);
    if (ZSTD_isError(fl))
        return cella_err(errs, -EINVAL, "", "kernel: zstd frame is corrupt or truncated: %s",
                         ZSTD_getErrorName(fl));
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d)
        return cella_err(errs, -ENOMEM, "", "kernel: cannot start zstd");
    size_t r = ZSTD_decompressDCtx(d, out, cap, in, fl);
    ZSTD_freeDCtx(d);
    if (!ZSTD_isError(r)) {
        *produced = r;
        return 0;
    }
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
        return cella_err(errs, -E2BIG, "", "kernel: zstd frame decompresses to more than %zu bytes",
                         cap);
    return cella_err(errs, -EINVAL, "", "kernel: zstd frame is corrupt: %s", ZSTD_getErrorName(r));
}

int kimg_decompress_into(const struct kimg_payload *p, uint8_t *dst, struct cella_errors *errs)
{
    int (*dec)(const uint8_t *, size_t, uint8_t *, size_t, size_t *, struct cella_errors *);
    /* The kernel appends the length after every stream but gzip's, whose ISIZE it is. */
    size_t n = p->len - 4;
    switch (p->comp) {
    case KIMG_COMP_GZIP:
        dec = dec_gzip;
        n = p->len;
        break;
    case KIMG_COMP_XZ:
        dec = dec_xz;
        break;
    case KIMG_COMP_ZSTD:
        dec = dec_zstd;
        break;
    case KIMG_COMP_LZ4:
        dec = dec_lz4;
        break;
    default:
        return cella_err(errs, -ENOTSUP, "", "kernel: %s payloads are not decompressed by cella",
                         kimg_comp_name(p->comp));
    }
    size_t got = 0;
    int r = dec(p->data, n, dst, p->out_len, &got, errs);
    if (r == 0 && got != p->out_len)
        r = cella_err(errs, -EINVAL, "",
                      "kernel: %s payload decompressed to %zu bytes, the trailer says %u",
                      kimg_comp_name(p->comp), got, p->out_len);
    return r;
}

/* The limits every decompression obeys, checked before anything is allocated or written. */
static int check_out_len(const struct kimg_payload *p, size_t cap, struct cella_errors *errs)
{
    size_t limit = cap && cap < KIMG_OUTPUT_MAX ? cap : KIMG_OUTPUT_MAX;
    if (p->comp < KIMG_COMP_GZIP || p->comp > KIMG_COMP_LZ4)
        return cella_err(errs, -ENOTSUP, "", "kernel: %s payloads are not decompressed by cella",
                         kimg_comp_name(p->comp));
    if (p->out_len == 0)
        return cella_err(errs, -EINVAL, "", "kernel: payload declares an empty kernel");
    if (p->out_len > limit)
        return cella_err(errs, -E2BIG, "",
                         "kernel: payload declares %u decompressed bytes, more than the %zu "
                         "allowed",
                         p->out_len, limit);
    return 0;
}

int kimg_decompress(const struct kimg_payload *p, size_t cap, uint8_t **out, size_t *out_len,
                    struct cella_errors *errs)
{
    *out = NULL;
    *out_len = 0;
    int r = check_out_len(p, cap, errs);
    if (r < 0)
        return r;
    uint8_t *buf = malloc(p->out_len);
    if (!buf)
        return cella_err(errs, -ENOMEM, "", "kernel: cannot allocate %u bytes", p->out_len);
    r = kimg_decompress_into(p, buf, errs);
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *out_len = p->out_len;
    return 0;
}

int kimg_parse_elf(const uint8_t *elf, size_t len, uint64_t lo, uint64_t hi, struct kimg_elf *out,
                   struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    if (len < EH_SIZE || memcmp(elf,
                                "\x7f"
                                "ELF",
                                4) != 0)
        return cella_err(errs, -EINVAL, "", "vmlinux: not an ELF file");
    if (elf[4] != 2 || elf[5] != 1 || elf[6] != 1)
        return cella_err(errs, -EINVAL, "",
                         "vmlinux: ELF class %u, data %u, version %u (need ELF64 little-endian v1)",
                         elf[4], elf[5], elf[6]);
    uint16_t type = le16(elf + 16), machine = le16(elf + 18);
    if (type != ET_EXEC_ || machine != EM_X86_64)
        return cella_err(errs, -EINVAL, "",
                         "vmlinux: ELF type %u machine %u (need ET_EXEC for x86-64)", type,
                         machine);
    uint64_t e_entry = le64(elf + 24), phoff = le64(elf + 32);
    uint16_t phentsize = le16(elf + 54), phnum = le16(elf + 56);
    if (phentsize != PH_SIZE || phnum == 0 || phnum > KIMG_PHDRS_MAX)
        return cella_err(errs, -EINVAL, "",
                         "vmlinux: %u program headers of %u bytes (need 1-%u of %u)", phnum,
                         phentsize, KIMG_PHDRS_MAX, PH_SIZE);
    if (phoff > len || (uint64_t)phnum * PH_SIZE > len - phoff)
        return cella_err(errs, -EINVAL, "", "vmlinux: program headers run past the file");

    uint64_t vaddr[KIMG_SEGMENTS_MAX];
    uint32_t flags[KIMG_SEGMENTS_MAX];
    for (unsigned i = 0; i < phnum; i++) {
        const uint8_t *ph = elf + phoff + (uint64_t)i * PH_SIZE;
        if (le32(ph) != PT_LOAD_)
            continue;
        struct kimg_segment s = {
            .offset = le64(ph + 8),
            .paddr = le64(ph + 24),
            .filesz = le64(ph + 32),
            .memsz = le64(ph + 40),
        };
        uint64_t end, vend;
        if (s.filesz > s.memsz)
            return cella_err(errs, -EINVAL, "",
                             "vmlinux: segment %u has more file bytes than memory", i);
        if (s.memsz == 0)
            continue;
        if (s.offset > len || s.filesz > len - s.offset)
            return cella_err(errs, -EINVAL, "", "vmlinux: segment %u runs past the file", i);
        if (__builtin_add_overflow(s.paddr, s.memsz, &end) ||
            __builtin_add_overflow(le64(ph + 16), s.memsz, &vend))
            return cella_err(errs, -EINVAL, "", "vmlinux: segment %u wraps the address space", i);
        if (s.paddr < lo || end > hi)
            return cella_err(errs, -E2BIG, "",
                             "vmlinux: segment %u at [%#llx, %#llx) is outside guest RAM "
                             "[%#llx, %#llx)",
                             i, (unsigned long long)s.paddr, (unsigned long long)end,
                             (unsigned long long)lo, (unsigned long long)hi);
        if (out->nsegs == KIMG_SEGMENTS_MAX)
            return cella_err(errs, -E2BIG, "", "vmlinux: more than %d loadable segments",
                             KIMG_SEGMENTS_MAX);
        for (size_t j = 0; j < out->nsegs; j++) {
            const struct kimg_segment *o = &out->seg[j];
            if (s.paddr < o->paddr + o->memsz && o->paddr < end)
                return cella_err(errs, -EINVAL, "", "vmlinux: segment %u overlaps another", i);
        }
        if (out->nsegs == 0 || s.paddr < out->start)
            out->start = s.paddr;
        if (end > out->end)
            out->end = end;
        vaddr[out->nsegs] = le64(ph + 16);
        flags[out->nsegs] = le32(ph + 4);
        out->seg[out->nsegs++] = s;
    }
    if (out->nsegs == 0)
        return cella_err(errs, -EINVAL, "", "vmlinux: no loadable segment");
    for (size_t j = 0; j < out->nsegs; j++) {
        const struct kimg_segment *s = &out->seg[j];
        if (!(flags[j] & PF_X_))
            continue;
        if (e_entry >= vaddr[j] && e_entry - vaddr[j] < s->filesz) {
            out->entry = s->paddr + (e_entry - vaddr[j]);
            return 0;
        }
        if (e_entry >= s->paddr && e_entry - s->paddr < s->filesz) {
            out->entry = e_entry;
            return 0;
        }
    }
    return cella_err(errs, -EINVAL, "", "vmlinux: entry point %#llx is in no executable segment",
                     (unsigned long long)e_entry);
}

static bool ranges_meet(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

int kimg_place(const struct kimg_elf *e, uint8_t *ram, uint64_t image_at)
{
    bool done[KIMG_SEGMENTS_MAX];
    size_t left = 0;
    for (size_t i = 0; i < e->nsegs; i++) {
        done[i] = e->seg[i].filesz == 0 || image_at + e->seg[i].offset == e->seg[i].paddr;
        left += !done[i];
    }
    /* Move a segment once its destination holds no source still waiting to move. */
    while (left) {
        size_t pick = e->nsegs;
        for (size_t i = 0; i < e->nsegs && pick == e->nsegs; i++) {
            if (done[i])
                continue;
            pick = i;
            for (size_t j = 0; j < e->nsegs; j++) {
                if (j != i && !done[j] &&
                    ranges_meet(e->seg[i].paddr, e->seg[i].filesz, image_at + e->seg[j].offset,
                                e->seg[j].filesz)) {
                    pick = e->nsegs;
                    break;
                }
            }
        }
        if (pick == e->nsegs)
            break;
        const struct kimg_segment *s = &e->seg[pick];
        memmove(ram + s->paddr, ram + image_at + s->offset, s->filesz);
        done[pick] = true;
        left--;
    }
    if (left) {
        /* A cycle: copy the remaining sources aside, then into place. */
        uint64_t total = 0;
        for (size_t i = 0; i < e->nsegs; i++)
            total += done[i] ? 0 : e->seg[i].filesz;
        uint8_t *aside = malloc(total), *at = aside;
        if (!aside)
            return -ENOMEM;
        for (size_t i = 0; i < e->nsegs; i++) {
            if (!done[i]) {
                memcpy(at, ram + image_at + e->seg[i].offset, e->seg[i].filesz);
                at += e->seg[i].filesz;
            }
        }
        at = aside;
        for (size_t i = 0; i < e->nsegs; i++) {
            if (!done[i]) {
                memcpy(ram + e->seg[i].paddr, at, e->seg[i].filesz);
                at += e->seg[i].filesz;
            }
        }
        free(aside);
    }
    for (size_t i = 0; i < e->nsegs; i++)
        memset(ram + e->seg[i].paddr + e->seg[i].filesz, 0, e->seg[i].memsz - e->seg[i].filesz);
    return 0;
}

/* ---- SHA-256 (FIPS 180-4), for cache keys ---- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, unsigned n)
{
    return x >> n | x << (32 - n);
}

static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], x = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            x + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        x = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += x;
}

void kimg_sha256(const void *data, size_t len, uint8_t digest[32])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const uint8_t *p = data;
    size_t i = 0;
    for (; len - i >= 64; i += 64)
        sha_block(h, p + i);
    uint8_t tail[128] = {0};
    size_t rest = len - i, tl = rest < 56 ? 64 : 128;
    if (rest)
        memcpy(tail, p + i, rest);
    tail[rest] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int j = 0; j < 8; j++)
        tail[tl - 1 - j] = (uint8_t)(bits >> (8 * j));
    sha_block(h, tail);
    if (tl == 128)
        sha_block(h, tail + 64);
    for (int j = 0; j < 8; j++) {
        digest[4 * j] = (uint8_t)(h[j] >> 24);
        digest[4 * j + 1] = (uint8_t)(h[j] >> 16);
        digest[4 * j + 2] = (uint8_t)(h[j] >> 8);
        digest[4 * j + 3] = (uint8_t)h[j];
    }
}

/* ---- the on-disk cache ---- */

bool kimg_cache_pays(enum kimg_comp c)
{
    return c == KIMG_COMP_GZIP || c == KIMG_COMP_XZ;
}

/* A file or directory others cannot have planted or changed. */
static bool owned_safely(const struct stat *st)
{
    return st->st_uid == geteuid() && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* mkdir -p with mode 0700 for what it creates; then dir must be ours and private enough. */
static bool cache_dir_ready(const char *dir)
{
    char path[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(path))
        return false;
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
            return false;
        path[i] = c;
    }
    struct stat st;
    return lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && owned_safely(&st);
}

static int cache_path(const char *dir, const void *bz, size_t len, char *path, size_t cap)
{
    uint8_t d[32];
    char hex[65];
    kimg_sha256(bz, len, d);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    int n = snprintf(path, cap, "%s/%s.vmlinux", dir, hex);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

static bool read_all(int fd, uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t r = pread(fd, buf + off, len - off, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        off += (size_t)r;
    }
    return true;
}

static bool cache_read(const char *path, uint8_t *dst, size_t want)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return false;
    struct stat st;
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && owned_safely(&st) &&
              (uint64_t)st.st_size == want && read_all(fd, dst, want);
    close(fd);
    return ok;
}

static bool cache_write(const char *dir, const char *path, const uint8_t *data, size_t len)
{
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%s/.tmp-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return false;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t off = 0;
    bool ok = true;
    while (ok && off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        if (ok)
            off += (size_t)w;
    }
    ok = ok && fchmod(fd, 0644) == 0 && fdatasync(fd) == 0;
    ok = close(fd) == 0 && ok;
    ok = ok && rename(tmp, path) == 0;
    if (!ok)
        unlink(tmp);
    return ok;
}

int kimg_load(const void *bz, size_t len, const struct kimg_opts *opts, uint8_t *ram,
              struct kimg_loaded *out, struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    struct kimg_payload *p = &out->payload;
    int r = kimg_find_payload(bz, len, p, errs);
    if (r < 0)
        return r;
    size_t cap = opts->cap && opts->cap < KIMG_OUTPUT_MAX ? opts->cap : KIMG_OUTPUT_MAX;
    if (p->init_size && p->init_size < cap)
        cap = p->init_size;
    if ((r = check_out_len(p, cap, errs)) < 0)
        return r;
    uint64_t at = opts->lo;
    if (p->pref_address >= opts->lo + KIMG_FIRST_SEGMENT_OFFSET && p->pref_address < opts->hi)
        at = p->pref_address - KIMG_FIRST_SEGMENT_OFFSET;
    if (opts->hi < opts->lo || p->out_len > opts->hi - at)
        return cella_err(errs, -E2BIG, "",
                         "kernel: no room for the %u-byte vmlinux at %#llx below %#llx", p->out_len,
                         (unsigned long long)at, (unsigned long long)opts->hi);
    out->image_at = at;
    uint8_t *img = ram + at;

    bool use_cache =
        opts->cache_dir && (opts->cache == KIMG_CACHE_ALWAYS ||
                            (opts->cache == KIMG_CACHE_AUTO && kimg_cache_pays(p->comp)));
    char path[PATH_MAX];
    use_cache = use_cache && cache_dir_ready(opts->cache_dir) &&
                cache_path(opts->cache_dir, bz, len, path, sizeof(path)) == 0;
    if (use_cache && cache_read(path, img, p->out_len) &&
        kimg_parse_elf(img, p->out_len, opts->lo, opts->hi, &out->elf, NULL) == 0)
        out->from_cache = true;
    if (!out->from_cache) {
        r = kimg_decompress_into(p, img, errs);
        if (r == 0)
            r = kimg_parse_elf(img, p->out_len, opts->lo, opts->hi, &out->elf, errs);
        if (r < 0) {
            memset(img, 0, p->out_len);
            return r;
        }
        if (use_cache)
            out->cached = cache_write(opts->cache_dir, path, img, p->out_len);
    }
    r = kimg_place(&out->elf, ram, at);
    if (r < 0) {
        memset(img, 0, p->out_len);
        return cella_err(errs, r, "", "kernel: cannot place the vmlinux segments");
    }
    return 0;
}
