/* SPDX-License-Identifier: MPL-2.0 */
/*
 * What a device core needs from the machine, without KVM: register access
 * callbacks (port I/O and MMIO), interrupt lines, and a rate-limited log
 * for guest mistakes.
 *
 * Values are little-endian integers of 1, 2, 4 or 8 bytes; offsets are
 * relative to the start of the registered range. A device never fails a
 * guest access: an access it does not understand is logged as a guest
 * error and ignored (reads return all ones, like an empty bus).
 *
 * Threading: read/write run on a vCPU thread; several vCPUs may access one
 * device at once, so a device with state shared between registers takes
 * its own lock.
 */
#ifndef CELLA_DEVICES_IO_H
#define CELLA_DEVICES_IO_H

#include <stdbool.h>
#include <stdint.h>

struct io_ops {
    uint64_t (*read)(void *opaque, uint64_t offset, unsigned size);
    void (*write)(void *opaque, uint64_t offset, unsigned size, uint64_t value);
};

/*
 * An interrupt sink: the machine implements it with KVM_IRQ_LINE and
 * KVM_SIGNAL_MSI; tests implement it with a recorder.
 */
struct irq_sink {
    void *ctx;
    /* Sets a GSI's level (edge-triggered lines pulse true then false). */
    void (*set_level)(void *ctx, uint32_t gsi, bool level);
    /* Delivers an MSI. */
    void (*msi)(void *ctx, uint64_t address, uint32_t data);
};

struct irq_line {
    const struct irq_sink *sink;
    uint32_t gsi;
};

static inline void irq_line_set(const struct irq_line *l, bool level)
{
    if (l && l->sink && l->sink->set_level)
        l->sink->set_level(l->sink->ctx, l->gsi, level);
}

/*
 * Logs a guest mistake (bad register, bad DMA address) at "guest error"
 * level, rate-limited per call site so a hostile guest cannot flood the log.
 */
void guest_error(const char *device, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Number of guest_error messages suppressed so far (tests read it). */
unsigned long guest_error_suppressed(void);

#endif
