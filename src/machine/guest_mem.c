/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/guest_mem.h"

#include <errno.h>
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
