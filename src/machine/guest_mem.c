/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/guest_mem.h"

#include <errno.h>
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
    r->fd_offset = off;
    r->host = m->base + off;
}

int guest_mem_init(struct guest_mem *m, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    if (size == 0 || size % 4096)
        return -EINVAL;
    int fd = memfd_create("cella-guest-ram", MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        int e = -errno;
        close(fd);
        return e;
    }
    /* Guest RAM is large and mostly idle: no core dumps, THP welcome. */
    madvise(p, size, MADV_DONTDUMP);
    madvise(p, size, MADV_HUGEPAGE);
    m->fd = fd;
    m->base = p;
    m->size = size;
    uint64_t low = size < GUEST_PCI_HOLE_START ? size : GUEST_PCI_HOLE_START;
    add_region(m, 0, low, 0);
    if (size > low)
        add_region(m, GUEST_HIGH_RAM_START, size - low, low);
    return 0;
}

void guest_mem_init_buffer(struct guest_mem *m, void *buf, uint64_t size)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    m->base = buf;
    m->size = size;
    add_region(m, 0, size, 0);
}

void guest_mem_destroy(struct guest_mem *m)
{
    free(atomic_exchange(&m->dirty, NULL));
    if (m->fd >= 0) {
        munmap(m->base, m->size);
        close(m->fd);
    }
    memset(m, 0, sizeof(*m));
    m->fd = -1;
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

int guest_mem_holes(const struct guest_mem *m, uint64_t *bits)
{
    if (m->fd < 0)
        return -ENOTSUP;
    off_t size = (off_t)m->size, off = 0;
    while (off < size) {
        off_t hole = lseek(m->fd, off, SEEK_HOLE);
        if (hole < 0)
            return -errno;
        if (hole >= size)
            break;
        off_t data = lseek(m->fd, hole, SEEK_DATA);
        if (data < 0 && errno != ENXIO)
            return -errno;
        if (data < 0 || data > size)
            data = size; /* ENXIO: a hole up to the end */
        uint64_t first = ((uint64_t)hole + GUEST_PAGE_SIZE - 1) / GUEST_PAGE_SIZE;
        uint64_t end = (uint64_t)data / GUEST_PAGE_SIZE;
        for (uint64_t pg = first; pg < end; pg++)
            bits[pg / 64] |= 1ull << (pg % 64);
        off = data;
    }
    return 0;
}

uint64_t guest_mem_offset_of(const struct guest_mem *m, uint64_t gpa)
{
    const struct guest_mem_region *r = guest_mem_region_of(m, gpa);
    return r ? r->fd_offset + (gpa - r->gpa) : UINT64_MAX;
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
    uint64_t first = (r->fd_offset + rel) / GUEST_PAGE_SIZE;
    uint64_t last = (r->fd_offset + rel + len - 1) / GUEST_PAGE_SIZE;
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
