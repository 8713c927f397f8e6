/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Guest physical memory, and the one checked accessor every guest address
 * goes through.
 *
 * Guest RAM is one anonymous mapping (transparent huge pages welcome),
 * given to KVM as up to two regions: low RAM from 0 up to
 * the PCI hole at 3 GiB, and the rest from 4 GiB. Device cores never see
 * KVM: they get a `struct guest_mem` and translate guest addresses with
 * guest_mem_ptr(), which refuses any range that is not wholly inside one
 * RAM region (overflow-safe), so a guest cannot make cella touch memory
 * outside guest RAM. Tests and fuzzers build a guest_mem over a plain
 * buffer with guest_mem_init_buffer().
 *
 * Threading: after init the layout is immutable; any thread may translate.
 * Concurrent access to the bytes themselves is the guest's business.
 */
#ifndef CELLA_MACHINE_GUEST_MEM_H
#define CELLA_MACHINE_GUEST_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_PCI_HOLE_START  0xc0000000ull  /* 3 GiB: MMIO, LAPIC, IOAPIC, flash */
#define GUEST_HIGH_RAM_START  0x100000000ull /* 4 GiB */
#define GUEST_MEM_MAX_REGIONS 2

struct guest_mem_region {
    uint64_t gpa;        /* guest physical start */
    uint64_t size;       /* bytes */
    uint8_t *host;       /* cella's mapping */
    uint64_t ram_offset; /* offset of this region in the RAM mapping */
};

#define GUEST_RAM_ALIGN (2ull << 20) /* where the mapping starts: a huge page boundary */

struct guest_mem {
    bool owned;     /* guest_mem_init mapped it (not a plain buffer) */
    int pagemap_fd; /* /proc/self/pagemap for guest_mem_holes, or -1 */
    uint64_t size;  /* total RAM bytes */
    uint8_t *base;  /* the whole RAM mapping (regions point into it) */
    size_t nregions;
    struct guest_mem_region regions[GUEST_MEM_MAX_REGIONS];
    /*
     * Pages written by cella itself (device DMA) while migration tracks
     * dirty memory: one bit per 4 KiB page, indexed by offset in the RAM mapping
     * (the same index KVM's dirty log uses, region by region). NULL when
     * not tracking. KVM's dirty log does not see writes made through
     * cella's own mapping, hence this.
     */
    _Atomic(uint64_t *) dirty;
};

#define GUEST_PAGE_SIZE 4096ull

/*
 * Creates `size` bytes of guest RAM (a multiple of 4 KiB): anonymous
 * private memory on a 2 MiB boundary, laid out around the PCI hole.
 * Returns 0 or a negative errno.
 */
int guest_mem_init(struct guest_mem *m, uint64_t size);

/* Wraps caller-owned `buf` as RAM at guest address 0 (tests, fuzzers). */
void guest_mem_init_buffer(struct guest_mem *m, void *buf, uint64_t size);

/* Unmaps and closes what guest_mem_init made; accepts a buffer-backed m. */
void guest_mem_destroy(struct guest_mem *m);

/*
 * Host pointer for [gpa, gpa+len) if the whole range lies inside one RAM
 * region, else NULL. len == 0 is allowed (a valid gpa is still required).
 */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);

/* Copies between guest RAM and host buffers; -EFAULT when out of RAM. */
int guest_mem_read(const struct guest_mem *m, uint64_t gpa, void *dst, size_t len);
int guest_mem_write(const struct guest_mem *m, uint64_t gpa, const void *src, size_t len);

/*
 * Dirty tracking of device writes (see struct guest_mem). Devices call
 * guest_mem_dirty() after they wrote guest RAM through a pointer from
 * guest_mem_ptr() (the data first, then the mark, so a page whose mark was
 * taken is sent again if written afterwards). A no-op when not tracking,
 * and for ranges outside RAM. Any thread.
 */
void guest_mem_dirty(const struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Starts tracking (every bit clear). 0 or -ENOMEM. Owner thread. */
int guest_mem_dirty_start(struct guest_mem *m);
/*
 * ORs the marked pages into `out` (size/4096 bits, RAM order) and clears
 * them, atomically per word. Any thread while tracking.
 */
void guest_mem_dirty_take(struct guest_mem *m, uint64_t *out);
/* Stops tracking and frees the bitmap; the caller guarantees no device
 * is writing (machine paused or devices quiesced). */
void guest_mem_dirty_stop(struct guest_mem *m);

/*
 * Sets bit i of bits (size / 4096 bits, by RAM offset like the dirty log)
 * for every page i never touched (neither in memory nor in swap, per
 * /proc/self/pagemap): a hole, which reads as zeroes without reading it.
 * Other bits are left alone. -ENOTSUP for a plain buffer (or without
 * pagemap), else 0 or a negative errno.
 */
int guest_mem_holes(const struct guest_mem *m, uint64_t *bits);

/* The RAM offset of gpa (page index = offset / 4096), or UINT64_MAX. */
uint64_t guest_mem_offset_of(const struct guest_mem *m, uint64_t gpa);

/* The region holding gpa, or NULL. */
const struct guest_mem_region *guest_mem_region_of(const struct guest_mem *m, uint64_t gpa);

#endif
