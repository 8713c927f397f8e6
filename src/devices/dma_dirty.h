/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Dirty marks for device writes made through host pointers (iovecs from
 * guest_mem_ptr()): translates each pointer back to its guest address and
 * calls guest_mem_dirty(). Devices call it after the write, like
 * guest_mem_dirty(). A pointer outside guest RAM is ignored (it never
 * came from guest_mem_ptr()). Cheap when migration is not tracking:
 * one atomic load. Any thread.
 */
#ifndef CELLA_DEVICES_DMA_DIRTY_H
#define CELLA_DEVICES_DMA_DIRTY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "machine/guest_mem.h"

static inline bool dma_dirty_tracking(const struct guest_mem *m)
{
    return atomic_load_explicit(&m->dirty, memory_order_relaxed) != NULL;
}

/* Marks [p, p + len) of host memory, region by region. */
static inline void dma_dirty_host(const struct guest_mem *m, const void *p, uint64_t len)
{
    if (!dma_dirty_tracking(m))
        return;
    uintptr_t a = (uintptr_t)p;
    for (size_t i = 0; i < m->nregions && len; i++) {
        const struct guest_mem_region *r = &m->regions[i];
        uintptr_t lo = (uintptr_t)r->host;
        if (a < lo || a - lo >= r->size)
            continue;
        uint64_t k = r->size - (a - lo) < len ? r->size - (a - lo) : len;
        guest_mem_dirty(m, r->gpa + (a - lo), k);
        a += k;
        len -= k;
        i = (size_t)-1; /* the rest may lie in any region: look again */
    }
}

/* Marks the first `nbytes` (UINT64_MAX: all) of iov[0..n). */
static inline void dma_dirty_iov(const struct guest_mem *m, const struct iovec *iov, unsigned n,
                                 uint64_t nbytes)
{
    if (!dma_dirty_tracking(m))
        return;
    for (unsigned i = 0; i < n && nbytes; i++) {
        uint64_t k = iov[i].iov_len < nbytes ? iov[i].iov_len : nbytes;
        dma_dirty_host(m, iov[i].iov_base, k);
        nbytes -= k;
    }
}

#endif
