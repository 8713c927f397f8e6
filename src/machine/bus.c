/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/bus.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

void bus_init(struct bus *b, const char *name)
{
    memset(b, 0, sizeof(*b));
    b->name = name;
    pthread_rwlock_init(&b->lock, NULL);
}

void bus_destroy(struct bus *b)
{
    pthread_rwlock_destroy(&b->lock);
}

int bus_register(struct bus *b, uint64_t base, uint64_t len, const struct io_ops *ops, void *opaque,
                 const char *name)
{
    uint64_t end;
    if (len == 0 || __builtin_add_overflow(base, len - 1, &end))
        return -EINVAL;
    pthread_rwlock_wrlock(&b->lock);
    int r = 0;
    size_t pos = 0;
    while (pos < b->count && b->ranges[pos].base < base)
        pos++;
    if (b->count >= BUS_MAX_RANGES) {
        r = -E2BIG;
    } else if ((pos > 0 && b->ranges[pos - 1].base + (b->ranges[pos - 1].len - 1) >= base) ||
               (pos < b->count && b->ranges[pos].base <= end)) {
        r = -EEXIST;
    } else {
        memmove(&b->ranges[pos + 1], &b->ranges[pos], (b->count - pos) * sizeof(b->ranges[0]));
        b->ranges[pos] = (struct bus_range){base, len, ops, opaque, name};
        b->count++;
    }
    pthread_rwlock_unlock(&b->lock);
    return r;
}

int bus_unregister(struct bus *b, uint64_t base, void *opaque)
{
    pthread_rwlock_wrlock(&b->lock);
    int r = -ENOENT;
    for (size_t i = 0; i < b->count; i++) {
        if (b->ranges[i].base == base && b->ranges[i].opaque == opaque) {
            memmove(&b->ranges[i], &b->ranges[i + 1], (b->count - i - 1) * sizeof(b->ranges[0]));
            b->count--;
            r = 0;
            break;
        }
    }
    pthread_rwlock_unlock(&b->lock);
    return r;
}

/* Copies the range holding addr; false if none. */
static bool lookup(struct bus *b, uint64_t addr, struct bus_range *out)
{
    pthread_rwlock_rdlock(&b->lock);
    size_t lo = 0, hi = b->count;
    bool found = false;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct bus_range *r = &b->ranges[mid];
        if (addr < r->base) {
            hi = mid;
        } else if (addr - r->base >= r->len) {
            lo = mid + 1;
        } else {
            *out = *r;
            found = true;
            break;
        }
    }
    pthread_rwlock_unlock(&b->lock);
    return found;
}

/*
 * Devices are called without the bus lock held, so a device may remap
 * ranges (a PCI BAR write) from inside its handler. Devices outlive every
 * vCPU thread, so a range removed concurrently still points at a live device.
 */
uint64_t bus_read(struct bus *b, uint64_t addr, unsigned size)
{
    struct bus_range r;
    if (!lookup(b, addr, &r) || !r.ops->read) {
        __atomic_add_fetch(&b->unclaimed, 1, __ATOMIC_RELAXED);
        return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1;
    }
    uint64_t off = addr - r.base;
    if (size <= r.len - off)
        return r.ops->read(r.opaque, off, size);
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (bus_read(b, addr + i, 1) & 0xff) << (8 * i);
    return v;
}

void bus_write(struct bus *b, uint64_t addr, unsigned size, uint64_t value)
{
    struct bus_range r;
    if (!lookup(b, addr, &r) || !r.ops->write) {
        __atomic_add_fetch(&b->unclaimed, 1, __ATOMIC_RELAXED);
        return;
    }
    uint64_t off = addr - r.base;
    if (size <= r.len - off) {
        r.ops->write(r.opaque, off, size, value);
        return;
    }
    for (unsigned i = 0; i < size; i++)
        bus_write(b, addr + i, 1, (value >> (8 * i)) & 0xff);
}
