/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for host-side kernel decompression
 * (src/machine/kernel_image.h). The input is used three ways:
 *
 *   1. as a whole bzImage (kimg_find_payload, then kimg_decompress with a
 *      small cap);
 *   2. as a bzImage payload: wrapped in a fixed setup header whose
 *      init_size and pref_address come from the first 8 input bytes, then
 *      kimg_load into a 4 MiB guest RAM buffer (decompress into RAM, parse,
 *      place segments) with a 1 MiB output cap;
 *   3. as an ELF file (kimg_parse_elf).
 *
 * Properties: no crash, leak or sanitizer report; output never exceeds
 * the cap; a parsed ELF's segments and entry lie inside [lo, hi) and the
 * segments do not overlap; RAM below lo is never written.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "machine/kernel_image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE (4u << 20)
#define LO       0x100000u
#define CAP      (1u << 20)
#define SETUP    0x400u

static uint8_t ram[RAM_SIZE];
static uint8_t bz[SETUP + CAP + 64];

static void check_elf(const struct kimg_elf *e, uint64_t lo, uint64_t hi)
{
    if (e->nsegs == 0 || e->nsegs > KIMG_SEGMENTS_MAX || e->entry < lo || e->entry >= hi)
        abort();
    for (size_t i = 0; i < e->nsegs; i++) {
        const struct kimg_segment *s = &e->seg[i];
        if (s->filesz > s->memsz || s->paddr < lo || s->memsz > hi - s->paddr)
            abort();
        for (size_t j = 0; j < i; j++) {
            const struct kimg_segment *o = &e->seg[j];
            if (s->paddr < o->paddr + o->memsz && o->paddr < s->paddr + s->memsz)
                abort();
        }
    }
}

static void as_bzimage(const uint8_t *data, size_t size)
{
    struct kimg_payload p;
    if (kimg_find_payload(data, size, &p, NULL) < 0)
        return;
    if (p.data < data || p.len > size || p.data + p.len > data + size)
        abort();
    uint8_t *out;
    size_t n;
    if (kimg_decompress(&p, CAP, &out, &n, NULL) == 0) {
        if (n != p.out_len || n > CAP)
            abort();
        free(out);
    }
}

static void as_payload(const uint8_t *data, size_t size)
{
    if (size < 8 || size - 8 > CAP)
        return;
    uint32_t init_size, pref;
    memcpy(&init_size, data, 4);
    memcpy(&pref, data + 4, 4);
    data += 8;
    size -= 8;
    size_t len = SETUP + size;
    if (len < 0x1000)
        len = 0x1000;
    memset(bz, 0, len);
    bz[0x1f1] = 1;
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    memcpy(bz + 0x202, "HdrS", 4);
    bz[0x206] = 0x0f;
    bz[0x207] = 0x02;
    uint32_t off = 0, plen = (uint32_t)size;
    memcpy(bz + 0x248, &off, 4);
    memcpy(bz + 0x24c, &plen, 4);
    memcpy(bz + 0x258, &pref, 4);
    memcpy(bz + 0x260, &init_size, 4);
    memcpy(bz + SETUP, data, size);

    memset(ram, 0x5a, LO);
    struct kimg_opts o = {.cap = CAP, .lo = LO, .hi = RAM_SIZE, .cache = KIMG_CACHE_OFF};
    struct kimg_loaded l;
    if (kimg_load(bz, len, &o, ram, &l, NULL) == 0) {
        check_elf(&l.elf, LO, RAM_SIZE);
        if (l.payload.out_len > CAP || l.image_at < LO || l.payload.out_len > RAM_SIZE - l.image_at)
            abort();
    }
    for (size_t i = 0; i < LO; i += 4096)
        if (ram[i] != 0x5a)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    as_bzimage(data, size);
    as_payload(data, size);
    struct kimg_elf e;
    if (kimg_parse_elf(data, size, LO, RAM_SIZE, &e, NULL) == 0)
        check_elf(&e, LO, RAM_SIZE);
    return 0;
}
