/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/virtio_pci.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/le.h"
#include "common/log.h"

/* Ring features the transport offers on top of the device type's bits. */
#define TRANSPORT_FEATURES                                                                         \
    ((1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_F_EVENT_IDX) | (1ull << VIRTIO_F_INDIRECT_DESC))

static const char *vp_name(const struct virtio_pci *vp)
{
    return vp->func.name;
}

static uint64_t offered(const struct virtio_pci *vp)
{
    return vp->dev->host_features | TRANSPORT_FEATURES;
}

/* ---- interrupts ---- */

static void raise_irq(struct virtio_pci *vp, uint8_t isr_bit, uint16_t vector)
{
    if (msix_enabled(&vp->msix)) {
        if (vector != MSIX_NO_VECTOR)
            msix_notify(&vp->msix, vector);
        return;
    }
    pthread_mutex_lock(&vp->irq_lock);
    vp->isr |= isr_bit;
    pci_set_irq(&vp->func, true);
    pthread_mutex_unlock(&vp->irq_lock);
}

static void notify_queue(void *ctx, unsigned q)
{
    struct virtio_pci *vp = ctx;
    if (q >= vp->dev->nqueues)
        return;
    pthread_mutex_lock(&vp->irq_lock);
    uint16_t vec = vp->queue_vector[q];
    pthread_mutex_unlock(&vp->irq_lock);
    raise_irq(vp, VIRTIO_ISR_QUEUE, vec);
}

static void notify_config(struct virtio_pci *vp)
{
    pthread_mutex_lock(&vp->irq_lock);
    uint16_t vec = vp->config_vector;
    pthread_mutex_unlock(&vp->irq_lock);
    raise_irq(vp, VIRTIO_ISR_CONFIG, vec);
}

static void device_fail(void *ctx)
{
    struct virtio_pci *vp = ctx;
    if (!atomic_exchange(&vp->needs_reset, true)) {
        guest_error(vp_name(vp), "device needs reset (malformed request)");
        notify_config(vp);
    }
}

static uint8_t isr_read(struct virtio_pci *vp)
{
    pthread_mutex_lock(&vp->irq_lock);
    uint8_t v = vp->isr;
    vp->isr = 0;
    pci_set_irq(&vp->func, false);
    pthread_mutex_unlock(&vp->irq_lock);
    return v;
}

static bool dma_ok(void *ctx)
{
    struct virtio_pci *vp = ctx;
    return pci_func_bus_master(&vp->func);
}

/* ---- reset and status ---- */

/* Device reset (status 0). vp->lock held. */
static void do_reset(struct virtio_pci *vp)
{
    struct virtio_dev *d = vp->dev;
    d->ops->reset(d);
    for (unsigned i = 0; i < d->nqueues; i++)
        vq_reset(&d->vqs[i]);
    d->features = 0;
    vp->status = 0;
    vp->dfselect = vp->gfselect = 0;
    vp->driver_features = 0;
    vp->driver_features_bad = false;
    vp->queue_sel = 0;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++)
        vp->q[i] = (struct virtio_pci_queue){.size = i < d->nqueues ? d->queue_max : 0};
    atomic_store(&vp->needs_reset, false);
    pthread_mutex_lock(&vp->irq_lock);
    vp->isr = 0;
    vp->config_vector = MSIX_NO_VECTOR;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++)
        vp->queue_vector[i] = MSIX_NO_VECTOR;
    pci_set_irq(&vp->func, false);
    pthread_mutex_unlock(&vp->irq_lock);
}

static bool features_acceptable(struct virtio_pci *vp)
{
    uint64_t f = vp->driver_features;
    if (vp->driver_features_bad || (f & ~offered(vp)))
        return false;
    return (f >> VIRTIO_F_VERSION_1) & 1u; /* modern only */
}

/* A driver write of the status register. vp->lock held. */
static void status_write(struct virtio_pci *vp, uint8_t v)
{
    struct virtio_dev *d = vp->dev;
    if (v == 0) {
        do_reset(vp);
        return;
    }
    v &= (uint8_t)~VIRTIO_STATUS_NEEDS_RESET; /* device-owned */
    uint8_t set = v & (uint8_t)~vp->status;
    if (set & VIRTIO_STATUS_FEATURES_OK) {
        bool ok = features_acceptable(vp);
        if (ok) {
            d->features = vp->driver_features;
            ok = d->ops->set_features(d, d->features) >= 0;
        }
        if (!ok) {
            guest_error(vp_name(vp), "features 0x%llx refused",
                        (unsigned long long)vp->driver_features);
            d->features = 0;
            v &= (uint8_t)~VIRTIO_STATUS_FEATURES_OK;
        }
    }
    if ((vp->status & VIRTIO_STATUS_FEATURES_OK) && !(v & VIRTIO_STATUS_FEATURES_OK)) {
        guest_error(vp_name(vp), "FEATURES_OK cleared without reset");
        v |= VIRTIO_STATUS_FEATURES_OK;
    }
    if (set & VIRTIO_STATUS_DRIVER_OK) {
        if (!(v & VIRTIO_STATUS_FEATURES_OK)) {
            guest_error(vp_name(vp), "DRIVER_OK before FEATURES_OK");
            v &= (uint8_t)~VIRTIO_STATUS_DRIVER_OK;
        }
    }
    vp->status = v;
    if ((set & VIRTIO_STATUS_DRIVER_OK) && (v & VIRTIO_STATUS_DRIVER_OK))
        d->ops->driver_ok(d);
}

/* ---- common configuration ---- */

static uint16_t check_vector(struct virtio_pci *vp, uint16_t v)
{
    return v < vp->msix.nvec ? v : MSIX_NO_VECTOR;
}

static void common_snapshot(struct virtio_pci *vp, uint8_t *b)
{
    struct virtio_dev *d = vp->dev;
    uint64_t feat = offered(vp);
    memset(b, 0, VIRTIO_PCI_COMMON_LEN);
    put32(b + VPC_DFSELECT, vp->dfselect);
    put32(b + VPC_DF, vp->dfselect == 0   ? (uint32_t)feat
                      : vp->dfselect == 1 ? (uint32_t)(feat >> 32)
                                          : 0);
    put32(b + VPC_GFSELECT, vp->gfselect);
    put32(b + VPC_GF, vp->gfselect == 0   ? (uint32_t)vp->driver_features
                      : vp->gfselect == 1 ? (uint32_t)(vp->driver_features >> 32)
                                          : 0);
    put16(b + VPC_NUMQ, (uint16_t)d->nqueues);
    b[VPC_STATUS] = vp->status | (atomic_load(&vp->needs_reset) ? VIRTIO_STATUS_NEEDS_RESET : 0);
    b[VPC_CFGGEN] = 0;
    put16(b + VPC_Q_SELECT, vp->queue_sel);
    pthread_mutex_lock(&vp->irq_lock);
    put16(b + VPC_MSIX, vp->config_vector);
    uint16_t qvec = vp->queue_sel < d->nqueues ? vp->queue_vector[vp->queue_sel] : MSIX_NO_VECTOR;
    pthread_mutex_unlock(&vp->irq_lock);
    if (vp->queue_sel < d->nqueues) {
        const struct virtio_pci_queue *q = &vp->q[vp->queue_sel];
        put16(b + VPC_Q_SIZE, q->size);
        put16(b + VPC_Q_MSIX, qvec);
        put16(b + VPC_Q_ENABLE, q->enabled);
        put16(b + VPC_Q_NOFF, vp->queue_sel);
        put64(b + VPC_Q_DESC, q->desc);
        put64(b + VPC_Q_DRIVER, q->driver);
        put64(b + VPC_Q_DEVICE, q->device);
    } else {
        put16(b + VPC_Q_MSIX, MSIX_NO_VECTOR);
    }
}

static uint64_t common_read(struct virtio_pci *vp, uint32_t off, unsigned size)
{
    uint8_t b[VIRTIO_PCI_COMMON_LEN + 8] = {0};
    pthread_mutex_lock(&vp->lock);
    common_snapshot(vp, b);
    pthread_mutex_unlock(&vp->lock);
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)b[off + i] << (8 * i);
    return v;
}

static void queue_enable(struct virtio_pci *vp, unsigned qi)
{
    struct virtio_dev *d = vp->dev;
    struct virtio_pci_queue *q = &vp->q[qi];
    if (q->enabled)
        return;
    if (!(vp->status & VIRTIO_STATUS_FEATURES_OK)) {
        guest_error(vp_name(vp), "queue %u enabled before FEATURES_OK", qi);
        return;
    }
    int rc = vq_enable(&d->vqs[qi], q->size, q->desc, q->driver, q->device,
                       virtio_has(d, VIRTIO_F_EVENT_IDX), virtio_has(d, VIRTIO_F_INDIRECT_DESC));
    if (rc < 0) {
        guest_error(vp_name(vp), "queue %u: bad size %u or ring addresses", qi, q->size);
        device_fail(vp);
        return;
    }
    q->enabled = true;
}

/* Writes to the per-queue registers of the selected queue. vp->lock held. */
static void queue_write(struct virtio_pci *vp, uint32_t off, unsigned size, uint64_t v)
{
    unsigned qi = vp->queue_sel;
    if (qi >= vp->dev->nqueues) {
        guest_error(vp_name(vp), "write to queue register of absent queue %u", qi);
        return;
    }
    struct virtio_pci_queue *q = &vp->q[qi];
    if (off == VPC_Q_MSIX && size == 2) {
        pthread_mutex_lock(&vp->irq_lock);
        vp->queue_vector[qi] = check_vector(vp, (uint16_t)v);
        pthread_mutex_unlock(&vp->irq_lock);
        return;
    }
    if (off == VPC_Q_ENABLE && size == 2) {
        if (v == 1)
            queue_enable(vp, qi);
        else if (v != q->enabled)
            guest_error(vp_name(vp), "queue_enable %llu ignored", (unsigned long long)v);
        return;
    }
    if (q->enabled) {
        guest_error(vp_name(vp), "queue %u reprogrammed while enabled", qi);
        return;
    }
    if (off == VPC_Q_SIZE && size == 2) {
        uint16_t s = (uint16_t)v;
        if (s == 0 || s > vp->dev->queue_max || (s & (s - 1)))
            guest_error(vp_name(vp), "queue %u size %u invalid", qi, s);
        q->size = s; /* checked again at enable, which refuses it */
        return;
    }
    if (off >= VPC_Q_DESC && off < VPC_Q_DEVICE + 8 && (size == 8 || (size == 4))) {
        uint64_t *reg = off < VPC_Q_DRIVER   ? &q->desc
                        : off < VPC_Q_DEVICE ? &q->driver
                                             : &q->device;
        if (size == 8 && (off & 7) == 0)
            *reg = v;
        else if (size == 4 && (off & 7) == 0)
            *reg = (*reg & ~0xffffffffull) | (uint32_t)v;
        else if (size == 4)
            *reg = (*reg & 0xffffffffull) | ((uint64_t)(uint32_t)v << 32);
        else
            guest_error(vp_name(vp), "misaligned queue address write");
        return;
    }
    guest_error(vp_name(vp), "bad common cfg write at 0x%x size %u", off, size);
}

static void common_write(struct virtio_pci *vp, uint32_t off, unsigned size, uint64_t v)
{
    pthread_mutex_lock(&vp->lock);
    switch (off) {
    case VPC_DFSELECT:
        if (size == 4)
            vp->dfselect = (uint32_t)v;
        goto done;
    case VPC_GFSELECT:
        if (size == 4)
            vp->gfselect = (uint32_t)v;
        goto done;
    case VPC_GF:
        if (size != 4)
            break;
        if (vp->status & VIRTIO_STATUS_FEATURES_OK) {
            guest_error(vp_name(vp), "driver features written after FEATURES_OK");
        } else if (vp->gfselect == 0) {
            vp->driver_features = (vp->driver_features & ~0xffffffffull) | (uint32_t)v;
        } else if (vp->gfselect == 1) {
            vp->driver_features =
                (vp->driver_features & 0xffffffffull) | ((uint64_t)(uint32_t)v << 32);
        } else if ((uint32_t)v) {
            vp->driver_features_bad = true;
        }
        goto done;
    case VPC_MSIX:
        if (size != 2)
            break;
        pthread_mutex_lock(&vp->irq_lock);
        vp->config_vector = check_vector(vp, (uint16_t)v);
        pthread_mutex_unlock(&vp->irq_lock);
        goto done;
    case VPC_STATUS:
        if (size != 1)
            break;
        status_write(vp, (uint8_t)v);
        goto done;
    case VPC_Q_SELECT:
        if (size == 2)
            vp->queue_sel = (uint16_t)v;
        goto done;
    default:
        if (off >= VPC_Q_SIZE && off != VPC_Q_NOFF) {
            queue_write(vp, off, size, v);
            goto done;
        }
        break;
    }
    guest_error(vp_name(vp), "bad common cfg write at 0x%x size %u", off, size);
done:
    pthread_mutex_unlock(&vp->lock);
}

/* ---- BAR 4 ---- */

static bool access_ok(uint64_t off, unsigned size, uint64_t limit)
{
    if (size != 1 && size != 2 && size != 4 && size != 8)
        return false;
    return off < limit && size <= limit - off;
}

static uint64_t all_ones(unsigned size)
{
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1;
}

uint64_t virtio_pci_bar_read(void *opaque, uint64_t off, unsigned size)
{
    struct virtio_pci *vp = opaque;
    if (!access_ok(off, size, VIRTIO_PCI_BAR_SIZE)) {
        guest_error(vp_name(vp), "bad BAR read at 0x%llx size %u", (unsigned long long)off, size);
        return all_ones(size);
    }
    if (access_ok(off - VIRTIO_PCI_COMMON_OFF, size, VIRTIO_PCI_COMMON_LEN))
        return common_read(vp, (uint32_t)off, size);
    if (off == VIRTIO_PCI_ISR_OFF)
        return isr_read(vp);
    if (off >= VIRTIO_PCI_DEVICE_OFF &&
        access_ok(off - VIRTIO_PCI_DEVICE_OFF, size, vp->dev->config_len)) {
        pthread_mutex_lock(&vp->lock);
        uint64_t v =
            vp->dev->ops->config_read(vp->dev, (uint32_t)(off - VIRTIO_PCI_DEVICE_OFF), size);
        pthread_mutex_unlock(&vp->lock);
        return v;
    }
    return 0; /* notify area and the unused rest of each region */
}

void virtio_pci_bar_write(void *opaque, uint64_t off, unsigned size, uint64_t value)
{
    struct virtio_pci *vp = opaque;
    if (!access_ok(off, size, VIRTIO_PCI_BAR_SIZE)) {
        guest_error(vp_name(vp), "bad BAR write at 0x%llx size %u", (unsigned long long)off, size);
        return;
    }
    if (access_ok(off - VIRTIO_PCI_COMMON_OFF, size, VIRTIO_PCI_COMMON_LEN)) {
        common_write(vp, (uint32_t)off, size, value);
        return;
    }
    if (off >= VIRTIO_PCI_NOTIFY_OFF) {
        uint64_t rel = off - VIRTIO_PCI_NOTIFY_OFF;
        if (rel % VIRTIO_PCI_NOTIFY_MUL == 0 && rel / VIRTIO_PCI_NOTIFY_MUL < vp->dev->nqueues) {
            virtio_pci_kick(vp, (unsigned)(rel / VIRTIO_PCI_NOTIFY_MUL));
            return;
        }
    }
    if (off >= VIRTIO_PCI_DEVICE_OFF &&
        access_ok(off - VIRTIO_PCI_DEVICE_OFF, size, vp->dev->config_len)) {
        pthread_mutex_lock(&vp->lock);
        if (vp->dev->ops->config_write)
            vp->dev->ops->config_write(vp->dev, (uint32_t)(off - VIRTIO_PCI_DEVICE_OFF), size,
                                       value);
        pthread_mutex_unlock(&vp->lock);
        return;
    }
    guest_error(vp_name(vp), "write to read-only BAR offset 0x%llx", (unsigned long long)off);
}

static const struct io_ops bar_ops = {virtio_pci_bar_read, virtio_pci_bar_write};

/* ---- BAR 1: MSI-X ---- */

static uint64_t msix_bar_read(void *opaque, uint64_t off, unsigned size)
{
    struct virtio_pci *vp = opaque;
    uint32_t tsize = msix_table_size(vp->msix.nvec), psize = msix_pba_size(vp->msix.nvec);
    if ((size == 4 || size == 8) && access_ok(off, size, tsize))
        return msix_table_read(&vp->msix, off, size);
    if ((size == 4 || size == 8) && off >= VIRTIO_PCI_MSIX_PBA &&
        access_ok(off - VIRTIO_PCI_MSIX_PBA, size, psize))
        return msix_pba_read(&vp->msix, off - VIRTIO_PCI_MSIX_PBA, size);
    return 0;
}

static void msix_bar_write(void *opaque, uint64_t off, unsigned size, uint64_t value)
{
    struct virtio_pci *vp = opaque;
    if ((size == 4 || size == 8) && access_ok(off, size, msix_table_size(vp->msix.nvec))) {
        msix_table_write(&vp->msix, off, size, value);
        return;
    }
    guest_error(vp_name(vp), "MSI-X BAR write at 0x%llx size %u ignored", (unsigned long long)off,
                size);
}

static const struct io_ops msix_ops = {msix_bar_read, msix_bar_write};

/* ---- VIRTIO_PCI_CAP_PCI_CFG: BAR 4 through config space ---- */

#define CFG_CAP_BAR    4
#define CFG_CAP_OFFSET 8
#define CFG_CAP_LENGTH 12
#define CFG_CAP_DATA   16

/* The window's BAR access: cap.bar must be 4, length 1/2/4, aligned, inside. */
static bool cfg_window(struct virtio_pci *vp, struct pci_func *f, uint32_t *off, unsigned *len)
{
    uint8_t bar = (uint8_t)pci_cfg_peek(f, vp->cfg_cap + CFG_CAP_BAR, 1);
    *off = pci_cfg_peek(f, vp->cfg_cap + CFG_CAP_OFFSET, 4);
    *len = pci_cfg_peek(f, vp->cfg_cap + CFG_CAP_LENGTH, 4);
    if (bar != VIRTIO_PCI_BAR || (*len != 1 && *len != 2 && *len != 4) || *off % *len ||
        !access_ok(*off, *len, VIRTIO_PCI_BAR_SIZE)) {
        guest_error(vp_name(vp), "PCI_CFG window: bar %u offset 0x%x length %u refused", bar, *off,
                    *len);
        return false;
    }
    return true;
}

static uint32_t cfg_data_read(void *opaque, struct pci_func *f, uint16_t offset, unsigned size)
{
    struct virtio_pci *vp = opaque;
    uint32_t off;
    unsigned len;
    if (cfg_window(vp, f, &off, &len))
        pci_cfg_poke(f, vp->cfg_cap + CFG_CAP_DATA, 4, (uint32_t)virtio_pci_bar_read(vp, off, len));
    return pci_cfg_peek(f, offset, size);
}

static void cfg_data_write(void *opaque, struct pci_func *f, uint16_t offset, unsigned size,
                           uint32_t value)
{
    struct virtio_pci *vp = opaque;
    pci_cfg_poke(f, offset, size, value);
    uint32_t off;
    unsigned len;
    if (cfg_window(vp, f, &off, &len)) {
        uint32_t data = pci_cfg_peek(f, vp->cfg_cap + CFG_CAP_DATA, 4);
        virtio_pci_bar_write(vp, off, len, len == 4 ? data : data & ((1u << (8 * len)) - 1));
    }
}

static const struct pci_cfg_ops cfg_data_ops = {cfg_data_read, cfg_data_write};

/* ---- setup ---- */

static int add_vendor_cap(struct pci_func *f, uint8_t type, unsigned len, uint8_t bar,
                          uint32_t offset, uint32_t length)
{
    int cap = pci_add_capability(f, PCI_CAP_ID_VNDR, len);
    if (cap < 0)
        return cap;
    uint16_t c = (uint16_t)cap;
    pci_cfg_poke(f, c + 2, 1, len);
    pci_cfg_poke(f, c + 3, 1, type);
    pci_cfg_poke(f, c + 4, 1, bar);
    pci_cfg_poke(f, c + 8, 4, offset);
    pci_cfg_poke(f, c + 12, 4, length);
    return cap;
}

static int setup_caps(struct virtio_pci *vp)
{
    struct pci_func *f = &vp->func;
    int rc;
    if ((rc = add_vendor_cap(f, VIRTIO_PCI_CAP_COMMON_CFG, 16, VIRTIO_PCI_BAR,
                             VIRTIO_PCI_COMMON_OFF, VIRTIO_PCI_COMMON_LEN)) < 0)
        return rc;
    if ((rc = add_vendor_cap(f, VIRTIO_PCI_CAP_ISR_CFG, 16, VIRTIO_PCI_BAR, VIRTIO_PCI_ISR_OFF,
                             1)) < 0)
        return rc;
    if (vp->dev->config_len &&
        (rc = add_vendor_cap(f, VIRTIO_PCI_CAP_DEVICE_CFG, 16, VIRTIO_PCI_BAR,
                             VIRTIO_PCI_DEVICE_OFF, vp->dev->config_len)) < 0)
        return rc;
    if ((rc = add_vendor_cap(f, VIRTIO_PCI_CAP_NOTIFY_CFG, 20, VIRTIO_PCI_BAR,
                             VIRTIO_PCI_NOTIFY_OFF, VIRTIO_PCI_NOTIFY_MUL * vp->dev->nqueues)) < 0)
        return rc;
    pci_cfg_poke(f, (uint16_t)(rc + 16), 4, VIRTIO_PCI_NOTIFY_MUL);
    if ((rc = add_vendor_cap(f, VIRTIO_PCI_CAP_PCI_CFG, 20, 0, 0, 0)) < 0)
        return rc;
    vp->cfg_cap = (uint8_t)rc;
    pci_cfg_set_mask(f, vp->cfg_cap + CFG_CAP_BAR, 1, 0xff, 0);
    pci_cfg_set_mask(f, vp->cfg_cap + CFG_CAP_OFFSET, 4, 0xffffffff, 0);
    pci_cfg_set_mask(f, vp->cfg_cap + CFG_CAP_LENGTH, 4, 0xffffffff, 0);
    return pci_add_cfg_hook(f, vp->cfg_cap + CFG_CAP_DATA, 4, &cfg_data_ops, vp);
}

int virtio_pci_init(struct virtio_pci *vp, struct virtio_dev *dev, const char *name,
                    const struct irq_sink *msi)
{
    uint16_t qm = dev->queue_max;
    if (!dev->ops || dev->nqueues == 0 || dev->nqueues > VIRTIO_MAX_QUEUES || qm == 0 ||
        qm > VQ_MAX_SIZE || (qm & (qm - 1)) || dev->config_len > VIRTIO_PCI_DEVICE_MAX)
        return -EINVAL;
    memset(vp, 0, sizeof(*vp));
    vp->dev = dev;
    struct pci_func *f = &vp->func;
    pci_func_init(f, name, PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(f, VIRTIO_PCI_VENDOR, (uint16_t)VIRTIO_PCI_DEVICE(dev->type));
    pci_func_set_revision(f, 1);
    pci_func_set_class(f, dev->class_code);
    int rc = pci_func_set_subsystem(f, VIRTIO_PCI_VENDOR, VIRTIO_PCI_SUBSYS_ID);
    if (!rc)
        rc = pci_func_set_intx_pin(f, 1);
    if (!rc)
        rc = pci_set_bar(f, VIRTIO_PCI_MSIX_BAR, PCI_BAR_MEM32, VIRTIO_PCI_MSIX_SIZE, false,
                         &msix_ops, vp);
    if (!rc)
        rc = pci_set_bar(f, VIRTIO_PCI_BAR, PCI_BAR_MEM64, VIRTIO_PCI_BAR_SIZE, true, &bar_ops, vp);
    if (!rc)
        rc = setup_caps(vp);
    if (rc < 0)
        return rc;
    rc = pthread_mutex_init(&vp->lock, NULL);
    if (rc)
        return -rc;
    rc = pthread_mutex_init(&vp->irq_lock, NULL);
    if (rc) {
        pthread_mutex_destroy(&vp->lock);
        return -rc;
    }
    rc =
        msix_init(&vp->msix, f, dev->nqueues + 1, VIRTIO_PCI_MSIX_BAR, 0, VIRTIO_PCI_MSIX_PBA, msi);
    if (rc < 0) {
        pthread_mutex_destroy(&vp->irq_lock);
        pthread_mutex_destroy(&vp->lock);
        return rc;
    }
    dev->t = (struct virtio_transport){
        .ctx = vp, .notify_queue = notify_queue, .needs_reset = device_fail};
    for (unsigned i = 0; i < dev->nqueues; i++) {
        dev->vqs[i].dma_ok = dma_ok;
        dev->vqs[i].dma_ctx = vp;
    }
    /* Power-on state is the reset state, without calling into the device. */
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        vp->q[i].size = i < dev->nqueues ? qm : 0;
        vp->queue_vector[i] = MSIX_NO_VECTOR;
    }
    vp->config_vector = MSIX_NO_VECTOR;
    return 0;
}

void virtio_pci_destroy(struct virtio_pci *vp)
{
    if (!vp || !vp->dev)
        return;
    msix_destroy(&vp->msix);
    pthread_mutex_destroy(&vp->irq_lock);
    pthread_mutex_destroy(&vp->lock);
    vp->dev = NULL;
}

unsigned virtio_pci_doorbells(const struct virtio_pci *vp, struct virtio_doorbell *out,
                              unsigned max)
{
    unsigned n = vp->dev->nqueues;
    for (unsigned i = 0; i < n && i < max; i++)
        out[i] = (struct virtio_doorbell){.bar = VIRTIO_PCI_BAR,
                                          .offset = VIRTIO_PCI_NOTIFY_OFF +
                                                    (uint64_t)VIRTIO_PCI_NOTIFY_MUL * i,
                                          .width = 2,
                                          .queue = i};
    return n;
}

void virtio_pci_debug(struct virtio_pci *vp)
{
    /* Only trylocks: the dump is for a stuck device, whose holder may never let go. */
    if (pthread_mutex_trylock(&vp->lock) != 0) {
        log_msg(LOG_WARN, "debug", "%s: busy (transport lock held)", vp_name(vp));
        return;
    }
    uint8_t status = vp->status;
    bool paused = vp->paused;
    pthread_mutex_unlock(&vp->lock);
    log_msg(LOG_WARN, "debug", "%s: status %#x%s%s bus master %s msix %s%s", vp_name(vp), status,
            atomic_load(&vp->needs_reset) ? " NEEDS_RESET" : "", paused ? " paused" : "",
            pci_func_bus_master(&vp->func) ? "on" : "off", vp->msix.enabled ? "on" : "off",
            vp->msix.fmasked ? " (function masked)" : "");
    for (unsigned i = 0; i < vp->dev->nqueues; i++) {
        char ring[256], dev[160] = "";
        vq_debug(&vp->dev->vqs[i], ring, sizeof(ring));
        if (vp->dev->ops->queue_debug)
            vp->dev->ops->queue_debug(vp->dev, i, dev, sizeof(dev));
        unsigned v = __atomic_load_n(&vp->queue_vector[i], __ATOMIC_RELAXED);
        bool masked = false, pending = false;
        if (pthread_mutex_trylock(&vp->msix.lock) == 0) {
            masked = v < vp->msix.nvec && (vp->msix.table[v].ctrl & 1);
            pending = v < vp->msix.nvec && (vp->msix.pending[v / 64] >> (v % 64) & 1);
            pthread_mutex_unlock(&vp->msix.lock);
        }
        log_msg(LOG_WARN, "debug", "%s: q%u %s; %s; vector %u%s%s", vp_name(vp), i, ring, dev, v,
                masked ? " masked" : "", pending ? " PENDING" : "");
    }
}

void virtio_pci_kick(struct virtio_pci *vp, unsigned q)
{
    if (q >= vp->dev->nqueues)
        return;
    pthread_mutex_lock(&vp->lock);
    if (!(vp->status & VIRTIO_STATUS_DRIVER_OK) || !vp->q[q].enabled) {
        guest_error(vp_name(vp), "kick of queue %u before it is live", q);
    } else if (vp->paused) {
        /* Quiesced for migration: resume kicks every live queue. */
    } else if (atomic_load(&vp->needs_reset)) {
        guest_error(vp_name(vp), "kick of queue %u while the device needs reset", q);
    } else if (!pci_func_bus_master(&vp->func)) {
        guest_error(vp_name(vp), "kick of queue %u with bus mastering off", q);
    } else {
        vp->dev->ops->queue_notify(vp->dev, q);
    }
    pthread_mutex_unlock(&vp->lock);
}

uint8_t virtio_pci_status(struct virtio_pci *vp)
{
    pthread_mutex_lock(&vp->lock);
    uint8_t s = vp->status | (atomic_load(&vp->needs_reset) ? VIRTIO_STATUS_NEEDS_RESET : 0);
    pthread_mutex_unlock(&vp->lock);
    return s;
}

/* ---- live migration ---- */

#define STATUS_LOADABLE                                                                            \
    (VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |                \
     VIRTIO_STATUS_DRIVER_OK | VIRTIO_STATUS_FAILED)

void virtio_pci_quiesce(struct virtio_pci *vp)
{
    pthread_mutex_lock(&vp->lock);
    vp->paused = true;
    if (vp->dev->ops->quiesce)
        vp->dev->ops->quiesce(vp->dev);
    pthread_mutex_unlock(&vp->lock);
}

void virtio_pci_resume(struct virtio_pci *vp)
{
    struct virtio_dev *d = vp->dev;
    pthread_mutex_lock(&vp->lock);
    vp->paused = false;
    if (d->ops->resume)
        d->ops->resume(d);
    bool live = (vp->status & VIRTIO_STATUS_DRIVER_OK) && !atomic_load(&vp->needs_reset) &&
                pci_func_bus_master(&vp->func);
    for (unsigned q = 0; live && q < d->nqueues; q++) {
        if (vp->q[q].enabled)
            d->ops->queue_notify(d, q);
    }
    pthread_mutex_unlock(&vp->lock);
}

int virtio_pci_save(const struct virtio_pci *cvp, struct mig_out *o)
{
    struct virtio_pci *vp = (struct virtio_pci *)cvp; /* for the locks only */
    struct virtio_dev *d = vp->dev;
    int rc = 0;
    pthread_mutex_lock(&vp->lock);
    if (!vp->paused) {
        pthread_mutex_unlock(&vp->lock);
        return -EBUSY;
    }
    mig_put_u8(o, (uint8_t)d->nqueues);
    mig_put_u8(o, vp->status);
    mig_put_bool(o, atomic_load(&vp->needs_reset));
    mig_put_u32(o, vp->dfselect);
    mig_put_u32(o, vp->gfselect);
    mig_put_u64(o, vp->driver_features);
    mig_put_bool(o, vp->driver_features_bad);
    mig_put_u16(o, vp->queue_sel);
    for (unsigned i = 0; i < d->nqueues; i++) {
        const struct virtio_pci_queue *q = &vp->q[i];
        mig_put_u16(o, q->size);
        mig_put_bool(o, q->enabled);
        mig_put_u64(o, q->desc);
        mig_put_u64(o, q->driver);
        mig_put_u64(o, q->device);
        vq_save(&d->vqs[i], o);
    }
    pthread_mutex_lock(&vp->irq_lock);
    mig_put_u8(o, vp->isr);
    mig_put_u16(o, vp->config_vector);
    for (unsigned i = 0; i < d->nqueues; i++)
        mig_put_u16(o, vp->queue_vector[i]);
    pthread_mutex_unlock(&vp->irq_lock);
    msix_save(&vp->msix, o);
    if (d->ops->save)
        rc = d->ops->save(d, o);
    pthread_mutex_unlock(&vp->lock);
    if (rc == 0 && !mig_out_ok(o))
        rc = -ENOMEM;
    return rc;
}

static bool vector_ok(const struct virtio_pci *vp, uint16_t v)
{
    return v == MSIX_NO_VECTOR || v < vp->msix.nvec;
}

/* Transport registers and queues. vp->lock held, device reset and quiesced. */
static int load_transport(struct virtio_pci *vp, struct mig_in *in)
{
    struct virtio_dev *d = vp->dev;
    uint8_t nq = mig_get_u8(in);
    uint8_t status = mig_get_u8(in);
    bool needs_reset = mig_get_bool(in);
    vp->dfselect = mig_get_u32(in);
    vp->gfselect = mig_get_u32(in);
    vp->driver_features = mig_get_u64(in);
    vp->driver_features_bad = mig_get_bool(in);
    vp->queue_sel = mig_get_u16(in);
    if (!mig_in_ok(in) || nq != d->nqueues || (status & ~STATUS_LOADABLE) ||
        ((status & VIRTIO_STATUS_DRIVER_OK) && !(status & VIRTIO_STATUS_FEATURES_OK)))
        return -EINVAL;
    if (status & VIRTIO_STATUS_FEATURES_OK) {
        if (!features_acceptable(vp))
            return -EINVAL;
        d->features = vp->driver_features;
        if (d->ops->set_features(d, d->features) < 0)
            return -EINVAL;
    }
    vp->status = status;
    atomic_store(&vp->needs_reset, needs_reset);
    for (unsigned i = 0; i < d->nqueues; i++) {
        struct virtio_pci_queue *q = &vp->q[i];
        /* A disabled queue's registers are whatever the driver wrote;
         * vq_enable checks them if it ever enables the queue. */
        q->size = mig_get_u16(in);
        bool enabled = mig_get_bool(in);
        q->desc = mig_get_u64(in);
        q->driver = mig_get_u64(in);
        q->device = mig_get_u64(in);
        if (!mig_in_ok(in))
            return -EINVAL;
        if (enabled) {
            if (!(status & VIRTIO_STATUS_FEATURES_OK) || q->size > d->queue_max ||
                vq_enable(&d->vqs[i], q->size, q->desc, q->driver, q->device,
                          virtio_has(d, VIRTIO_F_EVENT_IDX),
                          virtio_has(d, VIRTIO_F_INDIRECT_DESC)) < 0)
                return -EINVAL;
            q->enabled = true;
        }
        if (vq_load(&d->vqs[i], in) < 0)
            return -EINVAL;
    }
    uint8_t isr = mig_get_u8(in);
    uint16_t cvec = mig_get_u16(in), qvec[VIRTIO_MAX_QUEUES];
    bool ok = vector_ok(vp, cvec) && !(isr & ~(VIRTIO_ISR_QUEUE | VIRTIO_ISR_CONFIG));
    for (unsigned i = 0; i < d->nqueues; i++) {
        qvec[i] = mig_get_u16(in);
        ok &= vector_ok(vp, qvec[i]);
    }
    if (!ok || !mig_in_ok(in))
        return -EINVAL;
    pthread_mutex_lock(&vp->irq_lock);
    vp->isr = isr;
    vp->config_vector = cvec;
    for (unsigned i = 0; i < d->nqueues; i++)
        vp->queue_vector[i] = qvec[i];
    pci_set_irq(&vp->func, isr != 0); /* the ISR and the level go together */
    pthread_mutex_unlock(&vp->irq_lock);
    return 0;
}

int virtio_pci_load(struct virtio_pci *vp, struct mig_in *in, uint32_t version)
{
    struct virtio_dev *d = vp->dev;
    if (version != VIRTIO_PCI_STATE_VERSION)
        return -EPROTO;
    pthread_mutex_lock(&vp->lock);
    /* From the reset state, quiesced until virtio_pci_resume. */
    do_reset(vp);
    vp->paused = true;
    if (d->ops->quiesce)
        d->ops->quiesce(d);
    int rc = load_transport(vp, in);
    if (rc == 0 && msix_load(&vp->msix, in) < 0)
        rc = -EINVAL;
    if (rc == 0 && d->ops->load && d->ops->load(d, in) < 0)
        rc = -EINVAL;
    if (rc == 0 && !mig_in_done(in))
        rc = -EINVAL;
    if (rc < 0) {
        mig_in_fail(in);
        do_reset(vp);
        msix_reset(&vp->msix);
        if (d->ops->quiesce)
            d->ops->quiesce(d);
    }
    pthread_mutex_unlock(&vp->lock);
    return rc;
}
