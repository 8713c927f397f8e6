/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The vmlinux inside a bzImage, for booting it without the in-guest
 * decompressor.
 *
 * A bzImage's protected-mode part carries the kernel proper as a compressed
 * payload (setup header: payload_offset at 0x248, payload_length at 0x24c,
 * boot protocol 2.08+). The kernel build appends the decompressed length as
 * a le32 after every compressed stream (for gzip that is ISIZE), and the
 * decompressed bytes are an ELF64 vmlinux (plus, with KASLR, relocations
 * after it). This module finds the payload, decompresses it on the host
 * (gzip, xz, zstd, LZ4 legacy frames) and parses the ELF into the segments
 * to place at their physical addresses and the physical entry point of
 * startup_64.
 *
 * kimg_load decompresses straight into guest RAM (a scratch area placed so
 * that the big segments are already where they belong) and moves the rest:
 * no intermediate buffer, no second copy of the text.
 *
 * Everything in the image is untrusted: each length is range- and
 * overflow-checked, decompressed output is bounded by the declared length,
 * the header's init_size, the caller's cap and KIMG_OUTPUT_MAX, and nothing
 * writes outside the buffer or RAM range it was given.
 *
 * An optional on-disk cache keeps decompressed images keyed by the SHA-256
 * of the whole bzImage (kimg_load). It is used by default only for the
 * slow formats (gzip, xz): hashing the bzImage and reading a cached LZ4 or
 * zstd image costs as much as decompressing it again (see kimg_cache_pays).
 *
 * Threading: no global state; any thread may call these on its own objects.
 */
#ifndef CELLA_MACHINE_KERNEL_IMAGE_H
#define CELLA_MACHINE_KERNEL_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

/* Absolute cap on decompressed output, whatever the image declares. */
#define KIMG_OUTPUT_MAX (256u << 20)
/* An LZ4 legacy-frame block decompresses to at most this. */
#define KIMG_LZ4_BLOCK_MAX (8u << 20)
/* PT_LOAD segments accepted in a vmlinux (x86-64 kernels have 4 or 5). */
#define KIMG_SEGMENTS_MAX 16
/* Program headers looked at (of any type). */
#define KIMG_PHDRS_MAX 64

enum kimg_comp {
    KIMG_COMP_UNKNOWN,
    KIMG_COMP_GZIP,
    KIMG_COMP_XZ,
    KIMG_COMP_ZSTD,
    KIMG_COMP_LZ4,
    /* Recognised but not decompressed here: callers fall back. */
    KIMG_COMP_BZIP2,
    KIMG_COMP_LZMA,
    KIMG_COMP_LZO,
};

/* "gzip", "xz", ... or "unknown"; never NULL. */
const char *kimg_comp_name(enum kimg_comp c);

/* Where the payload is and what the setup header says about it. */
struct kimg_payload {
    const uint8_t *data;   /* compressed stream, inside the caller's bzImage */
    size_t len;            /* payload_length: stream plus the le32 length trailer */
    enum kimg_comp comp;   /* from the stream's magic */
    uint32_t out_len;      /* decompressed length the trailer declares */
    uint32_t init_size;    /* setup header: memory the kernel needs from its load address */
    uint64_t pref_address; /* setup header: where the kernel runs (LOAD_PHYSICAL_ADDR) */
};

/*
 * Finds the payload of a bzImage of `len` bytes at `bz` (boot protocol
 * 2.08+, payload wholly inside the protected-mode part and at least 8
 * bytes) and detects its compression; does not decompress. `out->data`
 * points into `bz`. Returns 0, or -EINVAL (not a bzImage, payload outside
 * the file) with a record in errs (may be NULL).
 */
int kimg_find_payload(const void *bz, size_t len, struct kimg_payload *out,
                      struct cella_errors *errs);

/*
 * Decompresses p's stream into dst, which has room for exactly p->out_len
 * bytes; the stream must produce exactly that many (-EINVAL otherwise, or
 * on corrupt input; -E2BIG when it would produce more). -ENOTSUP for
 * formats this module does not decompress. Never writes outside
 * [dst, dst + p->out_len). Errors get a record in errs (may be NULL).
 */
int kimg_decompress_into(const struct kimg_payload *p, uint8_t *dst, struct cella_errors *errs);

/*
 * kimg_decompress_into a new malloc'd buffer of exactly p->out_len bytes,
 * refusing (-E2BIG) when that exceeds min(cap, KIMG_OUTPUT_MAX) (cap 0: no
 * extra limit) before allocating anything; -ENOMEM. On success *out (free
 * it) and *out_len are set; on failure they are NULL and 0.
 */
int kimg_decompress(const struct kimg_payload *p, size_t cap, uint8_t **out, size_t *out_len,
                    struct cella_errors *errs);

struct kimg_segment {
    uint64_t offset; /* in the ELF file */
    uint64_t paddr;  /* guest physical load address */
    uint64_t filesz; /* bytes copied from the file */
    uint64_t memsz;  /* bytes occupied in guest RAM; the tail past filesz is zeroed */
};

struct kimg_elf {
    size_t nsegs; /* PT_LOAD segments with memsz > 0, in file order */
    struct kimg_segment seg[KIMG_SEGMENTS_MAX];
    uint64_t entry; /* physical address of the entry point */
    uint64_t start; /* lowest segment paddr */
    uint64_t end;   /* highest segment paddr + memsz */
};

/*
 * Parses an ELF64 little-endian x86-64 ET_EXEC image of `len` bytes: every
 * PT_LOAD segment must have filesz <= memsz, lie inside the file, occupy
 * [paddr, paddr + memsz) inside [lo, hi) without overflow, and not overlap
 * another. The entry point e_entry may be virtual (translated through the
 * executable segment whose [vaddr, vaddr + filesz) holds it) or already
 * physical (inside an executable segment's [paddr, paddr + filesz)); either
 * way out->entry is physical. Returns 0 or -EINVAL / -E2BIG with a record
 * in errs (may be NULL).
 */
int kimg_parse_elf(const uint8_t *elf, size_t len, uint64_t lo, uint64_t hi, struct kimg_elf *out,
                   struct cella_errors *errs);

/*
 * Moves the segments of an ELF image that lies at guest address `image_at`
 * to their physical addresses and zeroes their bss tails. `ram` is the host
 * address of guest physical 0, valid for every byte of the image and of
 * every segment (the caller checked both lie inside one RAM region). Moves
 * run in an order that never overwrites a segment's source before it has
 * been moved (segments already in place cost nothing); when no such order
 * exists the sources are copied aside first (-ENOMEM if that fails, with
 * nothing moved).
 */
int kimg_place(const struct kimg_elf *e, uint8_t *ram, uint64_t image_at);

/* SHA-256 of len bytes at data into digest. */
void kimg_sha256(const void *data, size_t len, uint8_t digest[32]);

enum kimg_cache_mode {
    KIMG_CACHE_OFF,    /* always decompress in memory */
    KIMG_CACHE_AUTO,   /* cache the formats for which kimg_cache_pays() */
    KIMG_CACHE_ALWAYS, /* cache every format (for measuring) */
};

/*
 * True when reading a cached image is measurably faster than decompressing
 * it again: gzip and xz. Measured on Debian 12's 6.1 cloud kernel (53 MB
 * vmlinux) recompressed each way, kimg_load into a memfd, native host:
 * lz4 41 ms vs 80 ms from a warm cache, zstd 74 vs 65, gzip 165 vs 69,
 * xz 528 vs 60 (SHA-256 of the bzImage alone is ~40 ms).
 */
bool kimg_cache_pays(enum kimg_comp c);

struct kimg_opts {
    size_t cap;      /* output cap (0: KIMG_OUTPUT_MAX); init_size also bounds it */
    uint64_t lo, hi; /* guest RAM the image and segments may use (kimg_parse_elf) */
    enum kimg_cache_mode cache;
    const char *cache_dir; /* directory of cached images; NULL: no cache */
};

/*
 * Where the decompressed image goes: pref_address less the file offset
 * x86-64 linkers give the first PT_LOAD (2 MiB, the kernel's
 * max-page-size), so that with the usual layout the text and data segments
 * land in place and only the small ones move.
 */
#define KIMG_FIRST_SEGMENT_OFFSET 0x200000u

/* What kimg_load did. */
struct kimg_loaded {
    struct kimg_payload payload;
    struct kimg_elf elf;
    uint64_t image_at; /* guest address the ELF image was decompressed to */
    bool from_cache;   /* the image came from the cache */
    bool cached;       /* this call wrote it to the cache */
};

/*
 * Loads the vmlinux inside the bzImage `bz` straight into guest RAM: the
 * payload is decompressed (or read from the cache) to a scratch area at
 * pref_address - KIMG_FIRST_SEGMENT_OFFSET (or opts->lo), parsed, and its
 * segments placed with kimg_place. `ram` is the host address of guest
 * physical 0 and must be valid for [opts->lo, opts->hi), which has to hold
 * both the scratch image and the segments (-E2BIG otherwise). The scratch
 * bytes no segment covers keep image data (ELF headers, relocations); they
 * lie inside the kernel's init_size footprint on real kernels.
 *
 * With a cache_dir and a mode that applies to the payload's format, looks
 * for <cache_dir>/<sha256 of bz>.vmlinux (a regular file owned by this
 * user, not writable by others, of the declared length; its ELF is parsed
 * with the same checks) and on a miss stores the decompressed image there
 * atomically (temporary file, fdatasync, rename), creating cache_dir (mode
 * 0700) if needed. Cache problems never fail the call.
 *
 * Returns 0 with *out filled, or a negative errno from kimg_find_payload /
 * kimg_decompress_into / kimg_parse_elf / kimg_place with their records in
 * errs (may be NULL); on failure the scratch area it wrote is zeroed again.
 */
int kimg_load(const void *bz, size_t len, const struct kimg_opts *opts, uint8_t *ram,
              struct kimg_loaded *out, struct cella_errors *errs);

#endif
