/* SPDX-License-Identifier: MPL-2.0 */
/*
 * MSI-X for a PCI function: the capability in config space, the vector
 * table and pending-bit array (PBA) in a BAR, and delivery through the
 * irq_sink's msi callback.
 *
 * The device places the table and PBA in one of its memory BARs (offsets
 * given at init) and forwards BAR accesses inside those ranges to
 * msix_table_read/write and msix_pba_read. The capability's Message
 * Control (enable, function mask) is handled by a cfg hook msix_init adds.
 *
 * msix_notify() delivers vector v's message when MSI-X is enabled and
 * neither the function nor the vector is masked; otherwise it sets the
 * vector's pending bit, and the message is delivered when the mask is
 * cleared. A vector whose address is not in the 0xfeeXXXXX window is
 * dropped (logged as a guest error).
 *
 * Threading: msix_notify may be called from any thread; table accesses come
 * from vCPU threads; an internal mutex orders them. Never call msix_notify
 * with a lock held that a BAR access path takes.
 */
#ifndef CELLA_DEVICES_MSIX_H
#define CELLA_DEVICES_MSIX_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/mig_buf.h"
#include "devices/io.h"
#include "devices/pci.h"

#define MSIX_MAX_VECTORS 128u
#define MSIX_ENTRY_SIZE  16u
#define MSIX_NO_VECTOR   0xffffu /* virtio's "no vector" */
#define PCI_CAP_ID_MSIX  0x11

struct msix_entry {
    uint32_t addr_lo, addr_hi, data, ctrl; /* ctrl bit 0: vector masked */
};

struct msix {
    struct pci_func *f;
    const struct irq_sink *sink;
    uint16_t nvec;
    uint16_t cap; /* config offset of the capability */
    uint8_t bar;
    uint32_t table_off, pba_off; /* inside the BAR */
    pthread_mutex_t lock;
    bool enabled, fmasked; /* Message Control bits */
    struct msix_entry table[MSIX_MAX_VECTORS];
    uint64_t pending[MSIX_MAX_VECTORS / 64];
};

/*
 * Adds the MSI-X capability to f (setup thread, before pci_topology_add):
 * `nvec` vectors (1..MSIX_MAX_VECTORS), table at `table_off` and PBA at
 * `pba_off` inside BAR `bar` (8-byte aligned, non-overlapping; the caller
 * declares the BAR big enough). All vectors start masked, MSI-X disabled.
 * Returns 0 or a negative errno.
 */
int msix_init(struct msix *x, struct pci_func *f, unsigned nvec, unsigned bar, uint32_t table_off,
              uint32_t pba_off, const struct irq_sink *sink);
void msix_destroy(struct msix *x);

/* Bytes the table and PBA occupy, for sizing the BAR. */
static inline uint32_t msix_table_size(unsigned nvec)
{
    return nvec * MSIX_ENTRY_SIZE;
}
static inline uint32_t msix_pba_size(unsigned nvec)
{
    return ((nvec + 63u) / 64u) * 8u;
}

/* BAR accesses; `off` is relative to the table (or PBA) start. size 4 or 8. */
uint64_t msix_table_read(struct msix *x, uint64_t off, unsigned size);
void msix_table_write(struct msix *x, uint64_t off, unsigned size, uint64_t value);
uint64_t msix_pba_read(struct msix *x, uint64_t off, unsigned size);

/* True when the guest has enabled MSI-X (the device must not use INTx then). */
bool msix_enabled(struct msix *x);

/* Signals vector v (see above). v >= nvec is ignored. */
void msix_notify(struct msix *x, unsigned v);

/* Back to power-on state (disabled, all masked, nothing pending). */
void msix_reset(struct msix *x);

/*
 * Migration: Message Control (enable, function mask), the vector table
 * and the pending bits, as a section of the owning device's payload (the
 * device's version covers it). msix_load reads it into an MSI-X of the
 * same vector count: -EINVAL (reader failed) for another count, reserved
 * bits set, a pending bit beyond nvec, or a vector pending although it
 * could fire (a state the device never reaches). Nothing is delivered by
 * the load. Any thread; the device quiesced.
 */
void msix_save(const struct msix *x, struct mig_out *o);
int msix_load(struct msix *x, struct mig_in *in);

#endif
