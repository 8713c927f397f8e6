/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/guest_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void add_region(struct guest_mem *m, uint64_t gpa, uint64_t size, uint64_t off)
{
    struct guest_mem_region *r = &m->regions[m->nregions++];
    r->gpa = gpa;
    r->size = size;
    r->ram_offset = off;
    r->host = m->base + off;
}

/* Lays out `size` bytes at m->base around the PCI hole. */
static void add_regions(struct guest_mem *m, uint64_t size)
{
    m->size = size;
    uint64_t low = size < GUEST_PCI_HOLE_START ? size : GUEST_PCI_HOLE_START;
    add_region(m, 0, low, 0);
    if (size > low)
        add_region(m, GUEST_HIGH_RAM_START, size - low, low);
}

int guest_mem_init(struct guest_mem *m, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    m->pagemap_fd = -1;
    if (size == 0 || size % GUEST_PAGE_SIZE || size > UINT64_MAX / 2)
        return -EINVAL;
    /*
     * Anonymous private memory, started on a 2 MiB boundary, so transparent
     * huge pages back it (shmem, hence a memfd, gets none unless the host
     * administrator turned shmem THP on) and KVM maps the guest with 2 MiB
     * pages where the host has them: fewer guest TLB misses and nested page
     * walks, and an O_DIRECT read into guest RAM pins and dirties one huge
     * page rather than 512 small ones. As QEMU's default RAM.
     */
    size_t span = (size_t)size + GUEST_RAM_ALIGN;
    uint8_t *raw = mmap(NULL, span, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return -errno;
    uint8_t *p =
        (uint8_t *)(((uintptr_t)raw + GUEST_RAM_ALIGN - 1) & ~(uintptr_t)(GUEST_RAM_ALIGN - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    size_t tail = (size_t)(raw + span - (p + size));
    if (tail)
        munmap(p + size, tail);
    /* Large and mostly idle: no core dumps; huge pages welcome; a fork (none
     * is planned) must not share it copy-on-write under KVM and O_DIRECT. */
    madvise(p, size, MADV_DONTDUMP);
    madvise(p, size, MADV_HUGEPAGE);
    madvise(p, size, MADV_DONTFORK);
    m->base = p;
    m->owned = true;
    /* Which pages were never touched (guest_mem_holes); opened now, before any sandbox. */
    m->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    add_regions(m, size);
    return 0;
}

void guest_mem_init_buffer(struct guest_mem *m, void *buf, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    m->pagemap_fd = -1;
    m->base = buf;
    m->size = size;
    add_region(m, 0, size, 0);
}

void guest_mem_destroy(struct guest_mem *m)
{
    free(atomic_exchange(&m->dirty, NULL));
    if (m->owned)
        munmap(m->base, m->size);
    if (m->pagemap_fd >= 0)
        close(m->pagemap_fd);
    memset(m, 0, sizeof(*m));
    m->pagemap_fd = -1;
}

const struct guest_mem_region *guest_mem_region_of(const struct guest_mem *m, uint64_t gpa)
{
    for (size_t i = 0; i < m->nregions; i++) {
        const struct guest_mem_region *r = &m->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    const struct guest_mem_region *r = guest_mem_region_of(m, gpa);
    if (!r)
        return NULL;
    uint64_t off = gpa - r->gpa, end;
    if (__builtin_add_overflow(off, len, &end) || end > r->size)
        return NULL;
    return r->host + off;
}

int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, size_t len)
{
    const void *p = guest_mem_ptr(m, gpa, len);
    if (!p)
        return -EFAULT;
    memcpy(dst, p, len);
    return 0;
}

int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, size_t len)
{
    void *p = guest_mem_ptr(m, gpa, len);
    if (!p)
        return -EFAULT;
    memcpy(p, src, len);
    return 0;
}

/* ---- dirty tracking of device writes ---- */

/* Words of the bitmap we keep: a bit for every page RAM touches. */
static uint64_t dirty_words(const struct guest_mem *m)
{
    uint64_t pages = (m->size + GUEST_PAGE_SIZE - 1) / GUEST_PAGE_SIZE;
    return (pages + 63) / 64;
}

/* Words of a caller's bitmap: size / 4096 bits (RAM is whole pages). */
static uint64_t out_words(const struct guest_mem *m)
{
    return (m->size / GUEST_PAGE_SIZE + 63) / 64;
}

/* /proc/self/pagemap entry bits: the page is in RAM, or in swap. */
#define PAGEMAP_PRESENT (1ull << 63)
#define PAGEMAP_SWAP    (1ull << 62)
#define PAGEMAP_CHUNK   8192u /* entries read at once (64 KiB) */

int guest_mem_holes(const struct guest_mem *m, uint64_t *bits)
{
    if (!m->owned || m->pagemap_fd < 0)
        return -ENOTSUP;
    /*
     * A page of private anonymous memory that is neither present nor
     * swapped out was never touched: it reads as zeroes (a read fault would
     * map the zero page). Anything else, including a page being migrated
     * or swapped (a swap entry), counts as data.
     */
    uint64_t *ent = malloc(PAGEMAP_CHUNK * sizeof(*ent));
    if (!ent)
        return -ENOMEM;
    uint64_t npages = m->size / GUEST_PAGE_SIZE;
    uint64_t first = (uintptr_t)m->base / GUEST_PAGE_SIZE;
    int r = 0;
    for (uint64_t pg = 0; pg < npages;) {
        uint64_t n = npages - pg < PAGEMAP_CHUNK ? npages - pg : PAGEMAP_CHUNK;
        ssize_t got =
            pread(m->pagemap_fd, ent, n * sizeof(*ent), (off_t)((first + pg) * sizeof(*ent)));
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            r = -errno;
        else if (got == 0 || got % (ssize_t)sizeof(*ent))
            r = -EIO;
        if (r < 0)
            break;
        uint64_t k = (uint64_t)got / sizeof(*ent);
        for (uint64_t i = 0; i < k; i++) {
            if (!(ent[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAP)))
                bits[(pg + i) / 64] |= 1ull << ((pg + i) % 64);
        }
        pg += k;
    }
    free(ent);
    return r;
}

uint64_t guest_mem_offset_of(const struct guest_mem *m, uint64_t gpa)
{
    const struct guest_mem_region *r = guest_mem_region_of(m, gpa);
    return r ? r->ram_offset + (gpa - r->gpa) : UINT64_MAX;
}

void guest_mem_dirty(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    uint64_t *bm = atomic_load_explicit(&m->dirty, memory_order_acquire);
    if (!bm || len == 0)
        return;
    const struct guest_mem_region *r = guest_mem_region_of(m, gpa);
    if (!r)
        return;
    /* Only the part inside the region: the rest is not RAM. */
    uint64_t rel = gpa - r->gpa;
    if (len > r->size - rel)
        len = r->size - rel;
    uint64_t first = (r->ram_offset + rel) / GUEST_PAGE_SIZE;
    uint64_t last = (r->ram_offset + rel + len - 1) / GUEST_PAGE_SIZE;
    /* The data was written before this call; the mark must not be seen first. */
    atomic_thread_fence(memory_order_release);
    for (uint64_t w = first / 64; w <= last / 64; w++) {
        uint64_t lo = w * 64 > first ? w * 64 : first;
        uint64_t hi = w * 64 + 63 < last ? w * 64 + 63 : last;
        unsigned n = (unsigned)(hi - lo + 1);
        uint64_t bits = (n == 64 ? ~0ull : ((1ull << n) - 1)) << (lo % 64);
        __atomic_fetch_or(&bm[w], bits, __ATOMIC_RELAXED);
    }
}

int guest_mem_dirty_start(struct guest_mem *m)
{
    uint64_t n = dirty_words(m);
    uint64_t *bm = atomic_load(&m->dirty);
    if (bm) {
        for (uint64_t i = 0; i < n; i++)
            __atomic_store_n(&bm[i], 0, __ATOMIC_RELAXED);
        return 0;
    }
    bm = calloc(n ? n : 1, sizeof(*bm));
    if (!bm)
        return -ENOMEM;
    atomic_store_explicit(&m->dirty, bm, memory_order_release);
    return 0;
}

void guest_mem_dirty_take(struct guest_mem *m, uint64_t *out)
{
    uint64_t *bm = atomic_load_explicit(&m->dirty, memory_order_acquire);
    if (!bm)
        return;
    uint64_t n = out_words(m);
    for (uint64_t i = 0; i < n; i++)
        out[i] |= __atomic_exchange_n(&bm[i], 0, __ATOMIC_ACQ_REL);
}

void guest_mem_dirty_stop(struct guest_mem *m)
{
    free(atomic_exchange(&m->dirty, NULL));
}
