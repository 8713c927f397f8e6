/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A minimal virtio 1.x PCI driver for tests and fuzzers: guest RAM in a
 * plain buffer, the device's function alone on a PCI topology (0.4.0,
 * INTA -> GSI 16), BAR accesses through the function's io_ops, split rings
 * written the way a guest writes them, and an interrupt recorder.
 * Header-only (static functions) so each test program stays one file.
 */
#ifndef CELLA_TESTS_VIRTIO_DRIVER_H
#define CELLA_TESTS_VIRTIO_DRIVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/le.h"
#include "devices/pci.h"
#include "devices/virtio_pci.h"
#include "machine/guest_mem.h"

#define VD_RAM_SIZE  (2u << 20)
#define VD_RING(q)   (0x10000u + 0x10000u * (q)) /* desc; avail +0x4000; used +0x8000 */
#define VD_DATA      0x100000u                   /* buffers the tests use */
#define VD_INTX_GSI  16u
#define VD_MAX_Q     4
#define VD_MSI_ADDR  0xfee00000u
#define VD_MSI_DATA0 0x40u

struct vd_q {
    uint16_t num, avail_idx, used_seen, next;
};

struct vdrv {
    uint8_t *ram;
    struct guest_mem mem;
    struct pci_topology topo;
    struct virtio_pci *vp;
    struct irq_sink sink;
    struct vd_q q[VD_MAX_Q];
    /* interrupt record */
    bool level;
    unsigned level_raises;
    unsigned msi_count[8]; /* by data - VD_MSI_DATA0 */
    unsigned msi_other;
};

static void vd_set_level(void *ctx, uint32_t gsi, bool level)
{
    struct vdrv *d = ctx;
    if (gsi == VD_INTX_GSI) {
        if (level && !d->level)
            d->level_raises++;
        d->level = level;
    }
}

static void vd_msi(void *ctx, uint64_t addr, uint32_t data)
{
    struct vdrv *d = ctx;
    if (addr == VD_MSI_ADDR && data >= VD_MSI_DATA0 && data < VD_MSI_DATA0 + 8)
        d->msi_count[data - VD_MSI_DATA0]++;
    else
        d->msi_other++;
}

/* RAM and the interrupt sink; call before creating the device. */
static inline int vd_init(struct vdrv *d)
{
    memset(d, 0, sizeof(*d));
    d->ram = aligned_alloc(4096, VD_RAM_SIZE);
    if (!d->ram)
        return -1;
    memset(d->ram, 0, VD_RAM_SIZE);
    guest_mem_init_buffer(&d->mem, d->ram, VD_RAM_SIZE);
    d->sink = (struct irq_sink){.ctx = d, .set_level = vd_set_level, .msi = vd_msi};
    return 0;
}

static inline void vd_cfg_write(struct vdrv *d, uint32_t off, unsigned size, uint32_t v)
{
    pci_topology_cfg_write(&d->topo, 0, 4, 0, off, size, v);
}

static inline uint32_t vd_cfg_read(struct vdrv *d, uint32_t off, unsigned size)
{
    return pci_topology_cfg_read(&d->topo, 0, 4, 0, off, size);
}

/* Puts the function at 0.4.0 and turns on memory decoding and bus mastering. */
static inline int vd_attach(struct vdrv *d, struct virtio_pci *vp)
{
    d->vp = vp;
    if (pci_topology_init(&d->topo, NULL, &d->sink) < 0)
        return -1;
    struct pci_path p = {0, 4, 0};
    if (pci_topology_add(&d->topo, &p, &vp->func) < 0)
        return -1;
    vd_cfg_write(d, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    return 0;
}

static inline void vd_fini(struct vdrv *d)
{
    pci_topology_destroy(&d->topo);
    free(d->ram);
}

static inline uint64_t vd_rd(struct vdrv *d, uint32_t off, unsigned size)
{
    const struct pci_bar *b = &d->vp->func.bars[VIRTIO_PCI_BAR];
    return b->ops->read(b->opaque, off, size);
}

static inline void vd_wr(struct vdrv *d, uint32_t off, unsigned size, uint64_t v)
{
    const struct pci_bar *b = &d->vp->func.bars[VIRTIO_PCI_BAR];
    b->ops->write(b->opaque, off, size, v);
}

static inline uint64_t vd_features(struct vdrv *d)
{
    vd_wr(d, VPC_DFSELECT, 4, 0);
    uint64_t lo = vd_rd(d, VPC_DF, 4);
    vd_wr(d, VPC_DFSELECT, 4, 1);
    return lo | vd_rd(d, VPC_DF, 4) << 32;
}

/* Reset, ACK, DRIVER, features, FEATURES_OK; returns the status read back. */
static inline uint8_t vd_negotiate(struct vdrv *d, uint64_t want)
{
    vd_wr(d, VPC_STATUS, 1, 0);
    vd_wr(d, VPC_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE);
    vd_wr(d, VPC_STATUS, 1, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    vd_wr(d, VPC_GFSELECT, 4, 0);
    vd_wr(d, VPC_GF, 4, (uint32_t)want);
    vd_wr(d, VPC_GFSELECT, 4, 1);
    vd_wr(d, VPC_GF, 4, (uint32_t)(want >> 32));
    vd_wr(d, VPC_STATUS, 1,
          VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    return (uint8_t)vd_rd(d, VPC_STATUS, 1);
}

/* Programs and enables queue q with num entries at VD_RING(q). */
static inline void vd_queue(struct vdrv *d, unsigned q, uint16_t num)
{
    uint64_t base = VD_RING(q);
    memset(d->ram + base, 0, 0x10000);
    d->q[q] = (struct vd_q){.num = num};
    vd_wr(d, VPC_Q_SELECT, 2, q);
    vd_wr(d, VPC_Q_SIZE, 2, num);
    vd_wr(d, VPC_Q_DESC, 8, base);
    vd_wr(d, VPC_Q_DRIVER, 4, (uint32_t)(base + 0x4000));
    vd_wr(d, VPC_Q_DRIVER + 4, 4, 0);
    vd_wr(d, VPC_Q_DEVICE, 8, base + 0x8000);
    vd_wr(d, VPC_Q_ENABLE, 2, 1);
}

static inline void vd_driver_ok(struct vdrv *d)
{
    uint8_t s = (uint8_t)vd_rd(d, VPC_STATUS, 1);
    vd_wr(d, VPC_STATUS, 1, s | VIRTIO_STATUS_DRIVER_OK);
}

/* Descriptor i of queue q's table (or of a table at gpa). */
static inline void vd_desc_at(struct vdrv *d, uint64_t table, unsigned i, uint64_t addr,
                              uint32_t len, uint16_t flags, uint16_t next)
{
    uint8_t *p = d->ram + table + 16u * i;
    put64(p, addr);
    put32(p + 8, len);
    put16(p + 12, flags);
    put16(p + 14, next);
}

static inline void vd_desc(struct vdrv *d, unsigned q, unsigned i, uint64_t addr, uint32_t len,
                           uint16_t flags, uint16_t next)
{
    vd_desc_at(d, VD_RING(q), i, addr, len, flags, next);
}

/* Makes head available (without kicking). */
static inline void vd_avail(struct vdrv *d, unsigned q, uint16_t head)
{
    struct vd_q *vq = &d->q[q];
    uint8_t *avail = d->ram + VD_RING(q) + 0x4000;
    put16(avail + 4 + 2u * (vq->avail_idx % vq->num), head);
    vq->avail_idx++;
    __atomic_store_n((uint16_t *)(void *)(avail + 2), vq->avail_idx, __ATOMIC_RELEASE);
}

struct vd_buf {
    uint64_t addr;
    uint32_t len;
    bool write;
};

/* Writes a direct chain of n buffers at the queue's next free slots; returns its head. */
static inline uint16_t vd_chain(struct vdrv *d, unsigned q, const struct vd_buf *b, unsigned n)
{
    struct vd_q *vq = &d->q[q];
    uint16_t head = vq->next;
    for (unsigned i = 0; i < n; i++) {
        uint16_t cur = (uint16_t)((head + i) % vq->num);
        uint16_t nxt = (uint16_t)((head + i + 1) % vq->num);
        vd_desc(
            d, q, cur, b[i].addr, b[i].len,
            (uint16_t)((b[i].write ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0)),
            nxt);
    }
    vq->next = (uint16_t)((head + n) % vq->num);
    return head;
}

static inline void vd_kick(struct vdrv *d, unsigned q)
{
    vd_wr(d, VIRTIO_PCI_NOTIFY_OFF + VIRTIO_PCI_NOTIFY_MUL * q, 2, q);
}

/* The next used element of queue q, if the device published one. */
static inline bool vd_used(struct vdrv *d, unsigned q, uint32_t *id, uint32_t *len)
{
    struct vd_q *vq = &d->q[q];
    uint8_t *used = d->ram + VD_RING(q) + 0x8000;
    uint16_t idx = __atomic_load_n((uint16_t *)(void *)(used + 2), __ATOMIC_ACQUIRE);
    if (idx == vq->used_seen)
        return false;
    uint8_t *e = used + 4 + 8u * (vq->used_seen % vq->num);
    if (id)
        *id = le32(e);
    if (len)
        *len = le32(e + 4);
    vq->used_seen++;
    return true;
}

/* Config offset of the first capability with this ID (vendor: with cfg_type), or 0. */
static inline uint16_t vd_find_cap(struct vdrv *d, uint8_t id, uint8_t cfg_type)
{
    uint16_t p = (uint16_t)vd_cfg_read(d, PCI_REG_CAP_PTR, 1);
    for (int guard = 0; p && guard < 48; guard++) {
        if (vd_cfg_read(d, p, 1) == id &&
            (id != PCI_CAP_ID_VNDR || vd_cfg_read(d, p + 3u, 1) == cfg_type))
            return p;
        p = (uint16_t)vd_cfg_read(d, p + 1u, 1);
    }
    return 0;
}

/* Enables MSI-X with vector v -> data VD_MSI_DATA0 + v, unmasked. */
static inline void vd_msix_enable(struct vdrv *d, unsigned nvec)
{
    const struct pci_bar *b = &d->vp->func.bars[VIRTIO_PCI_MSIX_BAR];
    for (unsigned v = 0; v < nvec; v++) {
        b->ops->write(b->opaque, 16u * v, 4, VD_MSI_ADDR);
        b->ops->write(b->opaque, 16u * v + 4, 4, 0);
        b->ops->write(b->opaque, 16u * v + 8, 4, VD_MSI_DATA0 + v);
        b->ops->write(b->opaque, 16u * v + 12, 4, 0);
    }
    uint16_t cap = vd_find_cap(d, PCI_CAP_ID_MSIX, 0);
    vd_cfg_write(d, cap + 2u, 2, 0x8000);
}

#endif
