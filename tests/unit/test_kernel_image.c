/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Unit tests of host-side kernel decompression (src/machine/kernel_image.h)
 * and of the vmlinux path of direct Linux boot (x86_load_linux_opts).
 *
 * Every image is synthetic: a tiny ELF64 vmlinux built here, compressed at
 * test time with the same libraries the loader uses (gzip, xz, zstd, LZ4
 * legacy frames plus the kernel's le32 length trailer), wrapped in a
 * minimal bzImage setup header.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "machine/kernel_image.h"
#include "machine/x86_boot.h"

#define RAM_SIZE  (8u << 20)
#define LO        0x100000u
#define PREF      0x200000u
#define INIT_SIZE 0x100000u

/* ---- little-endian writers ---- */

static void w16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void w32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void w64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- a synthetic vmlinux ---- */

struct seg {
    uint64_t offset, vaddr, paddr, filesz, memsz;
    uint32_t flags;
};

struct elf_spec {
    uint8_t cls, data;
    uint16_t type, machine;
    uint64_t entry;
    size_t nsegs;
    struct seg segs[4];
    size_t size; /* file size */
};

/* text: 12 KiB at 0x200000 (virtual 0xffffffff80200000), data: 4 KiB + 8 KiB bss at 0x204000. */
static struct elf_spec default_elf(void)
{
    return (struct elf_spec){
        .cls = 2,
        .data = 1,
        .type = 2,
        .machine = 62,
        .entry = 0xffffffff80200010ull,
        .nsegs = 2,
        .segs =
            {
                {0x1000, 0xffffffff80200000ull, 0x200000, 0x3000, 0x3000, 5},
                {0x4000, 0xffffffff80204000ull, 0x204000, 0x1000, 0x3000, 6},
            },
        .size = 0x5000,
    };
}

/* Segment bytes: a pattern that depends on the file offset, so misplacement shows. */
static uint8_t pattern(uint64_t off)
{
    return (uint8_t)(off * 7 + (off >> 8) + 1);
}

static uint8_t *build_elf(const struct elf_spec *s)
{
    uint8_t *e = calloc(1, s->size);
    assert_non_null(e);
    memcpy(e,
           "\x7f"
           "ELF",
           4);
    e[4] = s->cls;
    e[5] = s->data;
    e[6] = 1;
    w16(e + 16, s->type);
    w16(e + 18, s->machine);
    w32(e + 20, 1);
    w64(e + 24, s->entry);
    w64(e + 32, 64);
    w16(e + 52, 64);
    w16(e + 54, 56);
    w16(e + 56, (uint16_t)(s->nsegs + 1));
    for (size_t i = 0; i < s->nsegs; i++) {
        uint8_t *ph = e + 64 + i * 56;
        const struct seg *g = &s->segs[i];
        w32(ph, 1);
        w32(ph + 4, g->flags);
        w64(ph + 8, g->offset);
        w64(ph + 16, g->vaddr);
        w64(ph + 24, g->paddr);
        w64(ph + 32, g->filesz);
        w64(ph + 40, g->memsz);
        w64(ph + 48, 0x1000);
        for (uint64_t o = g->offset; o < g->offset + g->filesz && o < s->size; o++)
            e[o] = pattern(o);
    }
    /* A PT_NOTE the parser must skip. */
    w32(e + 64 + s->nsegs * 56, 4);
    return e;
}

/* ---- compressors (the kernel's formats, each with its le32 length trailer) ---- */

struct buf {
    uint8_t *p;
    size_t n;
};

static void put_trailer(struct buf *b, size_t cap, uint32_t len)
{
    assert_true(b->n + 4 <= cap);
    w32(b->p + b->n, len);
    b->n += 4;
}

static struct buf compress_lz4(const uint8_t *in, size_t n, size_t block)
{
    size_t cap = 16 + n + n / 8 + 64 * (n / block + 1);
    struct buf b = {malloc(cap), 0};
    assert_non_null(b.p);
    w32(b.p, 0x184c2102);
    b.n = 4;
    for (size_t off = 0; off < n; off += block) {
        size_t chunk = n - off < block ? n - off : block;
        int c = LZ4_compress_default((const char *)in + off, (char *)b.p + b.n + 4, (int)chunk,
                                     (int)(cap - b.n - 8));
        assert_true(c > 0);
        w32(b.p + b.n, (uint32_t)c);
        b.n += 4 + (size_t)c;
    }
    put_trailer(&b, cap, (uint32_t)n);
    return b;
}

static struct buf compress_gzip(const uint8_t *in, size_t n)
{
    z_stream s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(deflateInit2(&s, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&s, n) + 64;
    struct buf b = {malloc(cap), 0};
    assert_non_null(b.p);
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)n;
    s.next_out = b.p;
    s.avail_out = (uInt)cap;
    assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
    b.n = s.total_out;
    deflateEnd(&s);
    return b; /* gzip's ISIZE is the trailer */
}

static struct buf compress_xz(const uint8_t *in, size_t n)
{
    size_t cap = lzma_stream_buffer_bound(n) + 8;
    struct buf b = {malloc(cap), 0};
    assert_non_null(b.p);
    assert_int_equal(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, NULL, in, n, b.p, &b.n, cap),
                     LZMA_OK);
    put_trailer(&b, cap, (uint32_t)n);
    return b;
}

static struct buf compress_zstd(const uint8_t *in, size_t n)
{
    size_t cap = ZSTD_compressBound(n) + 8;
    struct buf b = {malloc(cap), 0};
    assert_non_null(b.p);
    b.n = ZSTD_compress(b.p, cap, in, n, 3);
    assert_false(ZSTD_isError(b.n));
    put_trailer(&b, cap, (uint32_t)n);
    return b;
}

static struct buf compress_as(enum kimg_comp c, const uint8_t *in, size_t n)
{
    switch (c) {
    case KIMG_COMP_GZIP:
        return compress_gzip(in, n);
    case KIMG_COMP_XZ:
        return compress_xz(in, n);
    case KIMG_COMP_ZSTD:
        return compress_zstd(in, n);
    default:
        return compress_lz4(in, n, KIMG_LZ4_BLOCK_MAX);
    }
}

/* ---- a synthetic bzImage ---- */

#define PAYLOAD_AT 0x100 /* payload_offset: from the protected-mode part */
#define SETUP_LEN  0x400 /* setup_sects = 1 */

struct bz_spec {
    uint16_t version;
    uint32_t init_size;
    uint64_t pref;
};

static struct buf build_bz_spec(const struct buf *payload, const struct bz_spec *s)
{
    size_t n = SETUP_LEN + PAYLOAD_AT + payload->n + 0x100;
    if (n < 0x1000)
        n = 0x1000;
    struct buf b = {calloc(1, n), n};
    assert_non_null(b.p);
    b.p[0x1f1] = 1;
    w16(b.p + 0x1fe, 0xaa55);
    b.p[0x200] = 0xeb;
    b.p[0x201] = 0x66;
    w32(b.p + 0x202, 0x53726448);
    w16(b.p + 0x206, s->version);
    b.p[0x211] = 0x01;
    w32(b.p + 0x22c, 0x7fffffff);
    w32(b.p + 0x230, 0x200000);
    w16(b.p + 0x236, 0x1);
    w32(b.p + 0x238, 2048);
    w32(b.p + 0x248, PAYLOAD_AT);
    w32(b.p + 0x24c, (uint32_t)payload->n);
    w64(b.p + 0x258, s->pref);
    w32(b.p + 0x260, s->init_size);
    memcpy(b.p + SETUP_LEN + PAYLOAD_AT, payload->p, payload->n);
    return b;
}

static struct buf build_bz(const struct buf *payload)
{
    struct bz_spec s = {0x020f, INIT_SIZE, PREF};
    return build_bz_spec(payload, &s);
}

/* A bzImage around `elf` compressed with c. */
static struct buf bz_with(enum kimg_comp c, const struct elf_spec *es)
{
    uint8_t *elf = build_elf(es);
    struct buf p = compress_as(c, elf, es->size);
    struct buf bz = build_bz(&p);
    free(p.p);
    free(elf);
    return bz;
}

/* ---- checks ---- */

static void check_loaded(const uint8_t *ram, const struct elf_spec *es)
{
    for (size_t i = 0; i < es->nsegs; i++) {
        const struct seg *g = &es->segs[i];
        for (uint64_t o = 0; o < g->filesz; o++)
            assert_int_equal(ram[g->paddr + o], pattern(g->offset + o));
        for (uint64_t o = g->filesz; o < g->memsz; o++)
            assert_int_equal(ram[g->paddr + o], 0);
    }
}

static int load(const struct buf *bz, uint8_t *ram, const struct kimg_opts *o,
                struct kimg_loaded *out)
{
    struct kimg_opts def = {.lo = LO, .hi = RAM_SIZE};
    return kimg_load(bz->p, bz->n, o ? o : &def, ram, out, NULL);
}

static void roundtrip(enum kimg_comp c)
{
    struct elf_spec es = default_elf();
    struct buf bz = bz_with(c, &es);
    struct kimg_payload p;
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), 0);
    assert_int_equal(p.comp, c);
    assert_int_equal(p.out_len, es.size);
    assert_int_equal(p.init_size, INIT_SIZE);
    assert_int_equal(p.pref_address, PREF);

    uint8_t *out;
    size_t n;
    assert_int_equal(kimg_decompress(&p, 0, &out, &n, NULL), 0);
    assert_int_equal(n, es.size);
    uint8_t *elf = build_elf(&es);
    assert_memory_equal(out, elf, n);
    free(out);
    free(elf);

    uint8_t *ram = calloc(1, RAM_SIZE);
    assert_non_null(ram);
    memset(ram + 0x204000, 0xcc, 0x3000); /* bss must be zeroed, not assumed zero */
    struct kimg_loaded l;
    assert_int_equal(load(&bz, ram, NULL, &l), 0);
    assert_int_equal(l.elf.nsegs, 2);
    assert_int_equal(l.elf.entry, 0x200010);
    assert_int_equal(l.elf.start, 0x200000);
    assert_int_equal(l.elf.end, 0x207000);
    assert_int_equal(l.image_at, LO);
    assert_false(l.from_cache);
    check_loaded(ram, &es);
    free(ram);
    free(bz.p);
}

static void test_lz4(void **state)
{
    roundtrip(KIMG_COMP_LZ4);
}

static void test_gzip(void **state)
{
    roundtrip(KIMG_COMP_GZIP);
}

static void test_xz(void **state)
{
    roundtrip(KIMG_COMP_XZ);
}

static void test_zstd(void **state)
{
    roundtrip(KIMG_COMP_ZSTD);
}

/* Several LZ4 blocks, and a second legacy magic in the middle (concatenated frames). */
static void test_lz4_blocks_and_frames(void **state)
{
    struct elf_spec es = default_elf();
    uint8_t *elf = build_elf(&es);
    struct buf a = compress_lz4(elf, 0x2000, 0x800);
    struct buf b = compress_lz4(elf + 0x2000, es.size - 0x2000, 0x1000);
    struct buf p = {malloc(a.n + b.n), 0};
    assert_non_null(p.p);
    memcpy(p.p, a.p, a.n - 4); /* drop a's trailer */
    memcpy(p.p + a.n - 4, b.p, b.n);
    p.n = a.n - 4 + b.n;
    w32(p.p + p.n - 4, (uint32_t)es.size);
    struct kimg_payload pl;
    struct buf bz = build_bz(&p);
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &pl, NULL), 0);
    uint8_t *out;
    size_t n;
    assert_int_equal(kimg_decompress(&pl, 0, &out, &n, NULL), 0);
    assert_memory_equal(out, elf, es.size);
    free(out);

    /* A block that runs past the stream, a block header cut short, a missing magic. */
    struct kimg_payload cut = pl;
    cut.len = 4 + 4 + 2 + 4; /* magic, a block's size and 2 of its bytes, trailer */
    assert_int_equal(kimg_decompress(&cut, 0, &out, &n, NULL), -EINVAL);
    cut.len = 4 + 2 + 4; /* magic, half a block header, trailer */
    assert_int_equal(kimg_decompress(&cut, 0, &out, &n, NULL), -EINVAL);
    assert_null(out);
    assert_int_equal(n, 0);
    cut.data += 4; /* starts with a block size */
    cut.len = pl.len - 4;
    assert_int_equal(kimg_decompress(&cut, 0, &out, &n, NULL), -EINVAL);
    free(bz.p);
    free(p.p);
    free(a.p);
    free(b.p);
    free(elf);
}

/* A stream cut in the middle (the trailer kept) fails in every format. */
static void test_truncated_payload(void **state)
{
    static const enum kimg_comp all[] = {KIMG_COMP_LZ4, KIMG_COMP_GZIP, KIMG_COMP_XZ,
                                         KIMG_COMP_ZSTD};
    struct elf_spec es = default_elf();
    uint8_t *elf = build_elf(&es);
    for (size_t i = 0; i < 4; i++) {
        struct buf p = compress_as(all[i], elf, es.size);
        size_t half = p.n / 2;
        memcpy(p.p + half, p.p + p.n - 4, 4);
        p.n = half + 4;
        struct buf bz = build_bz(&p);
        struct kimg_payload pl;
        assert_int_equal(kimg_find_payload(bz.p, bz.n, &pl, NULL), 0);
        if (all[i] != KIMG_COMP_GZIP)
            assert_int_equal(pl.out_len, es.size);
        uint8_t *out;
        size_t n;
        struct cella_errors errs = {0};
        assert_int_equal(kimg_decompress(&pl, 0, &out, &n, &errs), -EINVAL);
        assert_null(out);
        assert_true(errs.count >= 1);
        cella_errors_clear(&errs);
        free(bz.p);
        free(p.p);
    }
    free(elf);
}

static void test_payload_outside_file(void **state)
{
    struct elf_spec es = default_elf();
    struct buf bz = bz_with(KIMG_COMP_LZ4, &es);
    struct kimg_payload p;
    uint32_t plen = (uint32_t)(bz.n - SETUP_LEN - PAYLOAD_AT);
    w32(bz.p + 0x24c, plen); /* exactly to the end: fine */
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), 0);
    w32(bz.p + 0x24c, plen + 1);
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    w32(bz.p + 0x24c, 0xffffffff);
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    w32(bz.p + 0x24c, 16);
    w32(bz.p + 0x248, 0xfffffff0); /* offset past the file */
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    w32(bz.p + 0x248, PAYLOAD_AT);
    w32(bz.p + 0x24c, 7); /* too short for a stream and a trailer */
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    w16(bz.p + 0x206, 0x0207); /* no payload fields before 2.08 */
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    w16(bz.p + 0x1fe, 0);
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &p, NULL), -EINVAL);
    assert_int_equal(kimg_find_payload(bz.p, 0x100, &p, NULL), -EINVAL);
    free(bz.p);
}

/* Declared or actual output over a limit is refused before or while decompressing. */
static void test_oversize_output(void **state)
{
    static const enum kimg_comp all[] = {KIMG_COMP_LZ4, KIMG_COMP_GZIP, KIMG_COMP_XZ,
                                         KIMG_COMP_ZSTD};
    struct elf_spec es = default_elf();
    uint8_t *elf = build_elf(&es);
    for (size_t i = 0; i < 4; i++) {
        struct buf p = compress_as(all[i], elf, es.size);
        struct buf bz = build_bz(&p);
        struct kimg_payload pl;
        assert_int_equal(kimg_find_payload(bz.p, bz.n, &pl, NULL), 0);
        uint8_t *out;
        size_t n;
        /* Over the caller's cap, over the absolute cap. */
        assert_int_equal(kimg_decompress(&pl, es.size - 1, &out, &n, NULL), -E2BIG);
        assert_int_equal(kimg_decompress(&pl, es.size, &out, &n, NULL), 0);
        free(out);
        struct kimg_payload big = pl;
        big.out_len = 0xffffffff;
        assert_int_equal(kimg_decompress(&big, 0, &out, &n, NULL), -E2BIG);
        /* The stream produces more than the trailer says. */
        big.out_len = (uint32_t)es.size - 1;
        int r = kimg_decompress(&big, 0, &out, &n, NULL);
        if (all[i] == KIMG_COMP_LZ4)
            assert_int_equal(r, -EINVAL); /* liblz4 cannot tell overrun from corruption */
        else
            assert_int_equal(r, -E2BIG);
        /* ... or less. */
        big.out_len = (uint32_t)es.size + 1;
        assert_int_equal(kimg_decompress(&big, 0, &out, &n, NULL), -EINVAL);
        big.out_len = 0;
        assert_int_equal(kimg_decompress(&big, 0, &out, &n, NULL), -EINVAL);
        free(bz.p);
        free(p.p);
    }
    /* init_size bounds kimg_load's output. */
    struct buf p = compress_lz4(elf, es.size, KIMG_LZ4_BLOCK_MAX);
    struct bz_spec s = {0x020f, (uint32_t)es.size - 1, PREF};
    struct buf bz = build_bz_spec(&p, &s);
    uint8_t *ram = calloc(1, RAM_SIZE);
    assert_non_null(ram);
    struct kimg_loaded l;
    assert_int_equal(load(&bz, ram, NULL, &l), -E2BIG);
    /* No room for the scratch image in RAM. */
    free(bz.p);
    bz = build_bz(&p);
    struct kimg_opts o = {.lo = LO, .hi = LO + es.size - 1};
    assert_int_equal(load(&bz, ram, &o, &l), -E2BIG);
    free(ram);
    free(bz.p);
    free(p.p);
    free(elf);
}

static void test_unsupported_compression(void **state)
{
    struct buf p = {(uint8_t *)"BZh91AY&SY\x10\x00\x00\x00", 14};
    struct buf bz = build_bz(&p);
    struct kimg_payload pl;
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &pl, NULL), 0);
    assert_int_equal(pl.comp, KIMG_COMP_BZIP2);
    assert_string_equal(kimg_comp_name(pl.comp), "bzip2");
    uint8_t *out;
    size_t n;
    assert_int_equal(kimg_decompress(&pl, 0, &out, &n, NULL), -ENOTSUP);
    free(bz.p);
    p = (struct buf){(uint8_t *)"\x00\x01\x02\x03\x10\x00\x00\x00", 8};
    bz = build_bz(&p);
    assert_int_equal(kimg_find_payload(bz.p, bz.n, &pl, NULL), 0);
    assert_int_equal(pl.comp, KIMG_COMP_UNKNOWN);
    assert_int_equal(kimg_decompress(&pl, 0, &out, &n, NULL), -ENOTSUP);
    free(bz.p);
}

/* ---- the ELF parser ---- */

static int parse(const struct elf_spec *es, struct kimg_elf *out)
{
    uint8_t *e = build_elf(es);
    int r = kimg_parse_elf(e, es->size, LO, RAM_SIZE, out, NULL);
    free(e);
    return r;
}

static void test_elf_accepts(void **state)
{
    struct elf_spec es = default_elf();
    struct kimg_elf e;
    assert_int_equal(parse(&es, &e), 0);
    assert_int_equal(e.entry, 0x200010);
    /* A physical e_entry, as x86-64 vmlinux has (phys_startup_64). */
    es.entry = 0x200020;
    assert_int_equal(parse(&es, &e), 0);
    assert_int_equal(e.entry, 0x200020);
    /* Segments touching each other and the ends of RAM. */
    es.segs[0].paddr = LO;
    es.segs[1].paddr = RAM_SIZE - 0x3000;
    es.entry = LO;
    assert_int_equal(parse(&es, &e), 0);
    assert_int_equal(e.start, LO);
    assert_int_equal(e.end, RAM_SIZE);
    /* Empty PT_LOADs are skipped. */
    es = default_elf();
    es.segs[1].filesz = es.segs[1].memsz = 0;
    assert_int_equal(parse(&es, &e), 0);
    assert_int_equal(e.nsegs, 1);
}

static void test_elf_rejects_header(void **state)
{
    struct kimg_elf e;
    struct elf_spec es = default_elf();
    es.cls = 1; /* ELFCLASS32 */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.data = 2; /* big-endian */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.machine = 3; /* EM_386 */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.type = 3; /* ET_DYN */
    assert_int_equal(parse(&es, &e), -EINVAL);

    es = default_elf();
    uint8_t *b = build_elf(&es);
    assert_int_equal(kimg_parse_elf(b, 63, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w16(b + 54, 32); /* phentsize */
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w16(b + 54, 56);
    w16(b + 56, 0); /* no program headers */
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w16(b + 56, KIMG_PHDRS_MAX + 1);
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w16(b + 56, 3);
    w64(b + 32, es.size - 56); /* program headers past the end */
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w64(b + 32, 0xfffffffffffffff0ull);
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    w64(b + 32, 64);
    b[0] = 0;
    assert_int_equal(kimg_parse_elf(b, es.size, LO, RAM_SIZE, &e, NULL), -EINVAL);
    free(b);
}

static void test_elf_rejects_segments(void **state)
{
    struct kimg_elf e;
    struct elf_spec es = default_elf();
    es.segs[1].paddr = RAM_SIZE - 0x2000; /* runs past RAM */
    assert_int_equal(parse(&es, &e), -E2BIG);
    es = default_elf();
    es.segs[0].paddr = LO - 0x1000; /* below lo (the boot structures) */
    es.entry = 0xffffffff80200000ull;
    assert_int_equal(parse(&es, &e), -E2BIG);
    es = default_elf();
    es.segs[1].paddr = 0x202000; /* overlaps text */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[1].paddr = 0xfffffffffffff000ull; /* paddr + memsz wraps */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[1].vaddr = 0xfffffffffffff000ull; /* vaddr + memsz wraps */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[1].memsz = 0x800; /* filesz > memsz */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[1].filesz = 0x1001; /* past the file */
    es.segs[1].memsz = 0x3000;
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[1].offset = 0xfffffffffffff800ull; /* offset + filesz wraps */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.entry = 0xffffffff80204000ull; /* in the data segment, which is not executable */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es.entry = 0xffffffff80203000ull; /* just past text */
    assert_int_equal(parse(&es, &e), -EINVAL);
    es = default_elf();
    es.segs[0].filesz = es.segs[0].memsz = 0;
    es.segs[1].filesz = es.segs[1].memsz = 0; /* nothing to load */
    assert_int_equal(parse(&es, &e), -EINVAL);
}

/* ---- placement ---- */

/* Two segments whose sources and destinations swap places: needs the copy-aside path. */
static void test_place_cycle(void **state)
{
    uint8_t *ram = calloc(1, 0x10000);
    assert_non_null(ram);
    for (int i = 0; i < 0x2000; i++)
        ram[0x1000 + i] = (uint8_t)(i < 0x1000 ? 0xa0 + i % 7 : 0xb0 + i % 5);
    struct kimg_elf e = {
        .nsegs = 2,
        .seg = {{.offset = 0, .paddr = 0x2000, .filesz = 0x1000, .memsz = 0x1000},
                {.offset = 0x1000, .paddr = 0x1000, .filesz = 0x1000, .memsz = 0x2000 - 0x1000}}};
    assert_int_equal(kimg_place(&e, ram, 0x1000), 0);
    for (int i = 0; i < 0x1000; i++) {
        assert_int_equal(ram[0x2000 + i], 0xa0 + i % 7);
        assert_int_equal(ram[0x1000 + i], 0xb0 + (0x1000 + i) % 5);
    }
    /* A chain: seg 0 must wait until seg 1 has left its destination. */
    memset(ram, 0, 0x10000);
    memset(ram + 0x4000, 1, 0x1000);
    memset(ram + 0x5000, 2, 0x1000);
    e = (struct kimg_elf){
        .nsegs = 2,
        .seg = {{.offset = 0, .paddr = 0x5000, .filesz = 0x1000, .memsz = 0x1800},
                {.offset = 0x1000, .paddr = 0x8000, .filesz = 0x1000, .memsz = 0x1000}}};
    assert_int_equal(kimg_place(&e, ram, 0x4000), 0);
    assert_int_equal(ram[0x5000], 1);
    assert_int_equal(ram[0x5fff], 1);
    assert_int_equal(ram[0x6000], 0); /* bss */
    assert_int_equal(ram[0x67ff], 0);
    assert_int_equal(ram[0x8000], 2);
    free(ram);
}

/* The usual kernel layout: the image lands so that the first segment is already in place. */
static void test_in_place_layout(void **state)
{
    struct elf_spec es = default_elf();
    es.size = 0x204000;
    es.segs[0].offset = KIMG_FIRST_SEGMENT_OFFSET;
    es.segs[0].paddr = 0x400000;
    es.segs[1].offset = KIMG_FIRST_SEGMENT_OFFSET + 0x3000;
    es.segs[1].paddr = 0x404000; /* moves up by 0x1000 */
    es.entry = 0x400000;
    uint8_t *elf = build_elf(&es);
    struct buf p = compress_lz4(elf, es.size, KIMG_LZ4_BLOCK_MAX);
    struct bz_spec s = {0x020f, 0x300000, 0x400000};
    struct buf bz = build_bz_spec(&p, &s);
    uint8_t *ram = calloc(1, RAM_SIZE);
    assert_non_null(ram);
    struct kimg_loaded l;
    assert_int_equal(load(&bz, ram, NULL, &l), 0);
    assert_int_equal(l.image_at, 0x200000);
    assert_int_equal(l.elf.entry, 0x400000);
    check_loaded(ram, &es);
    free(ram);
    free(bz.p);
    free(p.p);
    free(elf);
}

/* ---- SHA-256 (FIPS 180-4 examples) ---- */

static void hex(const uint8_t d[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_sha256(void **state)
{
    uint8_t d[32];
    char h[65];
    kimg_sha256("", 0, d);
    hex(d, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    kimg_sha256("abc", 3, d);
    hex(d, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    kimg_sha256(two, strlen(two), d);
    hex(d, h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    char *mil = malloc(1000000);
    assert_non_null(mil);
    memset(mil, 'a', 1000000);
    kimg_sha256(mil, 1000000, d);
    hex(d, h);
    assert_string_equal(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(mil);
}

/* ---- the cache ---- */

static void test_cache(void **state)
{
    char dir[] = "/tmp/cella-kimg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[64];
    snprintf(sub, sizeof(sub), "%s/a/b", dir);
    struct elf_spec es = default_elf();
    struct buf bz = bz_with(KIMG_COMP_LZ4, &es);
    uint8_t *ram = calloc(1, RAM_SIZE);
    assert_non_null(ram);
    struct kimg_loaded l;

    /* AUTO: LZ4 does not pay, nothing is written. */
    struct kimg_opts o = {.lo = LO, .hi = RAM_SIZE, .cache = KIMG_CACHE_AUTO, .cache_dir = sub};
    assert_false(kimg_cache_pays(KIMG_COMP_LZ4));
    assert_true(kimg_cache_pays(KIMG_COMP_XZ));
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.cached);
    assert_false(l.from_cache);

    /* ALWAYS: a miss writes the file (creating the directories), a hit reads it. */
    o.cache = KIMG_CACHE_ALWAYS;
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_true(l.cached);
    assert_false(l.from_cache);
    uint8_t d[32];
    char h[65], path[256];
    kimg_sha256(bz.p, bz.n, d);
    hex(d, h);
    snprintf(path, sizeof(path), "%s/%s.vmlinux", sub, h);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, es.size);
    memset(ram, 0, RAM_SIZE);
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_true(l.from_cache);
    assert_false(l.cached);
    assert_int_equal(l.elf.entry, 0x200010);
    check_loaded(ram, &es);

    /* A damaged entry (valid length, no ELF) is ignored and rewritten. */
    FILE *f = fopen(path, "r+");
    assert_non_null(f);
    fputs("junk", f);
    fclose(f);
    memset(ram, 0, RAM_SIZE);
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.from_cache);
    assert_true(l.cached);
    check_loaded(ram, &es);
    /* A wrong-length entry too. */
    assert_int_equal(truncate(path, 100), 0);
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.from_cache);
    /* A group-writable entry is not trusted. */
    assert_int_equal(chmod(path, 0664), 0);
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.from_cache);
    assert_true(l.cached);

    /* A cache directory that cannot exist: decompress in memory. */
    char bad[300];
    snprintf(bad, sizeof(bad), "%s/kernels", path);
    o.cache_dir = bad;
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.cached);
    assert_false(l.from_cache);
    check_loaded(ram, &es);

    /* OFF: never touches the cache. */
    o.cache_dir = sub;
    o.cache = KIMG_CACHE_OFF;
    assert_int_equal(load(&bz, ram, &o, &l), 0);
    assert_false(l.cached || l.from_cache);

    unlink(path);
    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    assert_int_equal(system(path), 0);
    free(ram);
    free(bz.p);
}

/* ---- x86_load_linux_opts: both paths ---- */

static void boot(const struct buf *bz, enum x86_kernel_path path, uint8_t *ram, int want,
                 struct boot_entry *entry, struct x86_boot_info *info)
{
    struct guest_mem m;
    guest_mem_init_buffer(&m, ram, RAM_SIZE);
    struct x86_boot_opts o = {.path = path, .cache = KIMG_CACHE_OFF};
    static const uint8_t initrd[0x3000] = {1, 2, 3};
    assert_int_equal(x86_load_linux_opts(&m, bz->p, bz->n, initrd, sizeof(initrd), "console=ttyS0",
                                         0, &o, entry, info, NULL),
                     want);
}

static void test_boot_paths(void **state)
{
    struct elf_spec es = default_elf();
    struct buf bz = bz_with(KIMG_COMP_ZSTD, &es);
    uint8_t *ram = calloc(1, RAM_SIZE);
    assert_non_null(ram);
    struct boot_entry entry;
    struct x86_boot_info info;

    boot(&bz, X86_KERNEL_AUTO, ram, 0, &entry, &info);
    assert_true(info.vmlinux);
    assert_int_equal(info.comp, KIMG_COMP_ZSTD);
    assert_int_equal(entry.rip, 0x200010);
    assert_int_equal(entry.rsi, BOOT_PARAMS_ADDR);
    check_loaded(ram, &es);
    /* The footprint is pref_address + init_size (above the segments' end), the initrd above it. */
    assert_int_equal(info.kernel_end, PREF + INIT_SIZE);
    assert_true(info.initrd_addr >= info.kernel_end);
    assert_int_equal(ram[info.initrd_addr], 1);
    assert_int_equal(ram[BOOT_PARAMS_ADDR + 0x210], 0xff);     /* type_of_loader */
    assert_int_equal(ram[BOOT_PARAMS_ADDR + 0x211] & 0x02, 0); /* no KASLR flag */
    assert_string_equal((char *)ram + BOOT_CMDLINE_ADDR, "console=ttyS0");

    memset(ram, 0, RAM_SIZE);
    boot(&bz, X86_KERNEL_VMLINUX, ram, 0, &entry, &info);
    assert_true(info.vmlinux);
    assert_int_equal(entry.rip, 0x200010);

    memset(ram, 0, RAM_SIZE);
    boot(&bz, X86_KERNEL_BZIMAGE, ram, 0, &entry, &info);
    assert_false(info.vmlinux);
    assert_int_equal(entry.rip, BOOT_KERNEL_ADDR + 0x200);
    assert_memory_equal(ram + BOOT_KERNEL_ADDR, bz.p + SETUP_LEN, bz.n - SETUP_LEN);
    assert_int_equal(info.kernel_end, PREF + INIT_SIZE);
    assert_true(info.initrd_addr >= info.kernel_end);

    /* A payload that cannot be used: auto falls back, forcing the vmlinux path fails. */
    es.machine = 3;
    free(bz.p);
    bz = bz_with(KIMG_COMP_XZ, &es);
    memset(ram, 0, RAM_SIZE);
    boot(&bz, X86_KERNEL_AUTO, ram, 0, &entry, &info);
    assert_false(info.vmlinux);
    assert_int_equal(entry.rip, BOOT_KERNEL_ADDR + 0x200);
    /* The failed attempt's scratch image (at 1 MiB, past the bzImage) is zeroed again. */
    for (size_t i = BOOT_KERNEL_ADDR + bz.n - SETUP_LEN; i < BOOT_KERNEL_ADDR + es.size; i++)
        assert_int_equal(ram[i], 0);
    boot(&bz, X86_KERNEL_VMLINUX, ram, -EINVAL, &entry, &info);

    /* init_size beyond RAM: refused on both paths. */
    free(bz.p);
    es = default_elf();
    uint8_t *elf = build_elf(&es);
    struct buf p = compress_lz4(elf, es.size, KIMG_LZ4_BLOCK_MAX);
    struct bz_spec s = {0x020f, RAM_SIZE, PREF};
    bz = build_bz_spec(&p, &s);
    boot(&bz, X86_KERNEL_AUTO, ram, -E2BIG, &entry, &info);
    boot(&bz, X86_KERNEL_BZIMAGE, ram, -E2BIG, &entry, &info);
    free(p.p);
    free(elf);
    free(bz.p);
    free(ram);
}

/* x86_boot_opts_from_env reads the documented variables. */
static void test_opts_from_env(void **state)
{
    struct x86_boot_opts o;
    unsetenv("CELLA_KERNEL_DECOMPRESS");
    unsetenv("CELLA_KERNEL_CACHE");
    unsetenv("CELLA_CACHE_DIR");
    x86_boot_opts_from_env(&o);
    assert_int_equal(o.path, X86_KERNEL_BZIMAGE); /* the fast path is opt-in */
    assert_int_equal(o.cache, KIMG_CACHE_AUTO);
    assert_string_equal(o.cache_dir, "/var/cache/cella/kernels");
    setenv("CELLA_KERNEL_DECOMPRESS", "0", 1);
    setenv("CELLA_KERNEL_CACHE", "1", 1);
    setenv("CELLA_CACHE_DIR", "/x", 1);
    x86_boot_opts_from_env(&o);
    assert_int_equal(o.path, X86_KERNEL_BZIMAGE);
    assert_int_equal(o.cache, KIMG_CACHE_ALWAYS);
    assert_string_equal(o.cache_dir, "/x/kernels");
    setenv("CELLA_KERNEL_DECOMPRESS", "auto", 1);
    x86_boot_opts_from_env(&o);
    assert_int_equal(o.path, X86_KERNEL_AUTO);
    setenv("CELLA_KERNEL_DECOMPRESS", "1", 1);
    setenv("CELLA_KERNEL_CACHE", "0", 1);
    x86_boot_opts_from_env(&o);
    assert_int_equal(o.path, X86_KERNEL_VMLINUX);
    assert_int_equal(o.cache, KIMG_CACHE_OFF);
    unsetenv("CELLA_KERNEL_DECOMPRESS");
    unsetenv("CELLA_KERNEL_CACHE");
    unsetenv("CELLA_CACHE_DIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lz4),
        cmocka_unit_test(test_gzip),
        cmocka_unit_test(test_xz),
        cmocka_unit_test(test_zstd),
        cmocka_unit_test(test_lz4_blocks_and_frames),
        cmocka_unit_test(test_truncated_payload),
        cmocka_unit_test(test_payload_outside_file),
        cmocka_unit_test(test_oversize_output),
        cmocka_unit_test(test_unsupported_compression),
        cmocka_unit_test(test_elf_accepts),
        cmocka_unit_test(test_elf_rejects_header),
        cmocka_unit_test(test_elf_rejects_segments),
        cmocka_unit_test(test_place_cycle),
        cmocka_unit_test(test_in_place_layout),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_boot_paths),
        cmocka_unit_test(test_opts_from_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
