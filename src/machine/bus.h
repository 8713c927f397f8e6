/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Address-range dispatch for port I/O and MMIO exits.
 *
 * A bus is a sorted list of non-overlapping ranges, each with the device's
 * io_ops. vCPU threads look a range up under a read lock and call the
 * device without it, so a handler may itself (re)map ranges — e.g. when the
 * guest moves a PCI BAR; registration takes the write lock.
 * An access that hits no range reads as all ones and writes are dropped,
 * like an empty bus.
 */
#ifndef CELLA_MACHINE_BUS_H
#define CELLA_MACHINE_BUS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "devices/io.h"

#define BUS_MAX_RANGES 512

struct bus_range {
    uint64_t base, len;
    const struct io_ops *ops;
    void *opaque;
    const char *name;
};

struct bus {
    const char *name; /* "pio" or "mmio", for logs */
    pthread_rwlock_t lock;
    size_t count;
    struct bus_range ranges[BUS_MAX_RANGES];
    unsigned long unclaimed; /* accesses that hit nothing */
};

void bus_init(struct bus *b, const char *name);
void bus_destroy(struct bus *b);

/*
 * Maps [base, base+len) to ops/opaque. -EEXIST if it overlaps a range,
 * -E2BIG when full, -EINVAL for an empty or wrapping range. Any thread.
 */
int bus_register(struct bus *b, uint64_t base, uint64_t len, const struct io_ops *ops, void *opaque,
                 const char *name);
/* Removes the range starting at base owned by opaque; -ENOENT if none. */
int bus_unregister(struct bus *b, uint64_t base, void *opaque);

/*
 * Dispatches one access of 1, 2, 4 or 8 bytes (vCPU thread). An access that
 * straddles a range end is split into bytes so no device sees an offset
 * outside its range.
 */
uint64_t bus_read(struct bus *b, uint64_t addr, unsigned size);
void bus_write(struct bus *b, uint64_t addr, unsigned size, uint64_t value);

#endif
