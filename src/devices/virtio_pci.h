/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The virtio 1.x PCI transport (modern only, no legacy I/O BAR).
 *
 * Guest-visible layout, like QEMU's:
 *   vendor 0x1af4, device 0x1040 + type, revision 1, subsystem 0x1af4/0x1100,
 *   INTA, class from the device type.
 *   BAR 1 (32-bit memory, 4 KiB): MSI-X table at 0, PBA at 0x800;
 *         nqueues + 1 vectors (config and one per queue, the driver chooses).
 *   BAR 4 (64-bit prefetchable memory, 16 KiB):
 *         0x0000 common configuration, 0x1000 ISR, 0x2000 device
 *         configuration, 0x3000 notifications: queue q's doorbell is at
 *         0x3000 + 4 * q (notify_off_multiplier 4, queue_notify_off q).
 *   Vendor capabilities for each of the four, plus the
 *   VIRTIO_PCI_CAP_PCI_CFG window that reaches BAR 4 through config space.
 *
 * The transport negotiates features (VERSION_1 required; EVENT_IDX and
 * INDIRECT_DESC offered with the device's own bits; FEATURES_OK refused
 * for anything not offered), runs the status state machine, programs and
 * enables queues, resets the device when the driver writes status 0
 * (waiting for in-flight backend requests), and delivers interrupts by
 * MSI-X when the driver enabled it, else by the ISR and INTx level
 * (cleared by reading the ISR). Queue processing needs COMMAND.BUS_MASTER.
 *
 * Threading: BAR and config accesses come from vCPU threads,
 * virtio_pci_kick from the machine's ioeventfd thread; both take the
 * transport lock, which the device type's callbacks run under. Interrupt
 * delivery (from backend threads too) takes only a leaf lock.
 */
#ifndef CELLA_DEVICES_VIRTIO_PCI_H
#define CELLA_DEVICES_VIRTIO_PCI_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/mig_buf.h"
#include "devices/io.h"
#include "devices/msix.h"
#include "devices/pci.h"
#include "devices/virtqueue.h"

#define VIRTIO_PCI_VENDOR    0x1af4
#define VIRTIO_PCI_DEVICE(t) (0x1040 + (t))
#define VIRTIO_PCI_SUBSYS_ID 0x1100

#define VIRTIO_PCI_MSIX_BAR   1
#define VIRTIO_PCI_MSIX_SIZE  0x1000u
#define VIRTIO_PCI_MSIX_PBA   0x800u
#define VIRTIO_PCI_BAR        4
#define VIRTIO_PCI_BAR_SIZE   0x4000u
#define VIRTIO_PCI_COMMON_OFF 0x0000u
#define VIRTIO_PCI_COMMON_LEN 0x38u
#define VIRTIO_PCI_ISR_OFF    0x1000u
#define VIRTIO_PCI_DEVICE_OFF 0x2000u
#define VIRTIO_PCI_DEVICE_MAX 0x1000u
#define VIRTIO_PCI_NOTIFY_OFF 0x3000u
#define VIRTIO_PCI_NOTIFY_MUL 4u

/* Vendor capability cfg_type values. */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG    5
#define PCI_CAP_ID_VNDR           0x09

/* Common configuration register offsets (struct virtio_pci_common_cfg). */
#define VPC_DFSELECT 0x00
#define VPC_DF       0x04
#define VPC_GFSELECT 0x08
#define VPC_GF       0x0c
#define VPC_MSIX     0x10
#define VPC_NUMQ     0x12
#define VPC_STATUS   0x14
#define VPC_CFGGEN   0x15
#define VPC_Q_SELECT 0x16
#define VPC_Q_SIZE   0x18
#define VPC_Q_MSIX   0x1a
#define VPC_Q_ENABLE 0x1c
#define VPC_Q_NOFF   0x1e
#define VPC_Q_DESC   0x20
#define VPC_Q_DRIVER 0x28
#define VPC_Q_DEVICE 0x30

#define VIRTIO_ISR_QUEUE  0x1
#define VIRTIO_ISR_CONFIG 0x2

/* Per-queue transport registers (guarded by the transport lock). */
struct virtio_pci_queue {
    uint16_t size;
    bool enabled;
    uint64_t desc, driver, device;
};

/*
 * One virtio PCI function. Embed or allocate; the device (struct
 * virtio_dev) must outlive it. Fields are private to virtio_pci.c except
 * `func`, which the machine adds to its PCI topology.
 */
struct virtio_pci {
    struct pci_func func;
    struct msix msix;
    struct virtio_dev *dev;

    pthread_mutex_t lock; /* everything below except the irq fields */
    uint8_t status;
    atomic_bool needs_reset;
    uint32_t dfselect, gfselect;
    uint64_t driver_features;
    bool driver_features_bad; /* a bit beyond 64 was written */
    uint16_t queue_sel;
    struct virtio_pci_queue q[VIRTIO_MAX_QUEUES];
    uint8_t cfg_cap; /* config offset of the PCI_CFG capability */
    bool paused;     /* virtio_pci_quiesce: kicks are dropped until resume */

    pthread_mutex_t irq_lock; /* leaf: isr and vectors */
    uint8_t isr;
    uint16_t config_vector;
    uint16_t queue_vector[VIRTIO_MAX_QUEUES];
};

/*
 * Builds the PCI function for dev (its nqueues, queue_max, config_len,
 * class and type set; vqs initialised). `msi` receives MSI-X messages (the
 * machine's sink; may be NULL in tests that only use INTx). Also installs
 * the transport callbacks in dev->t and the DMA gate in every queue.
 * Setup thread; afterwards add vp->func to the topology. 0 or -errno.
 */
int virtio_pci_init(struct virtio_pci *vp, struct virtio_dev *dev, const char *name,
                    const struct irq_sink *msi);

/* Frees what init made (not the device). Device quiesced, func unused. */
void virtio_pci_destroy(struct virtio_pci *vp);

/* A doorbell the machine may back with a KVM ioeventfd. */
struct virtio_doorbell {
    unsigned bar;    /* BAR index (its current address: pci_bar_address) */
    uint64_t offset; /* inside the BAR */
    unsigned width;  /* access size in bytes the driver uses */
    unsigned queue;  /* pass to virtio_pci_kick */
};

/* Fills up to max doorbells (one per queue); returns how many exist. */
unsigned virtio_pci_doorbells(const struct virtio_pci *vp, struct virtio_doorbell *out,
                              unsigned max);

/*
 * Queue q was notified (an ioeventfd fired): exactly what a guest write
 * to its doorbell does. Ignored unless DRIVER_OK, the queue is enabled and
 * bus mastering is on. ioeventfd or vCPU thread.
 */
void virtio_pci_kick(struct virtio_pci *vp, unsigned q);

/*
 * Logs the function's state (debug dump, cella-standalone SIGUSR2): the
 * status, and per live queue the ring indices, the device's own state and
 * its MSI-X vector (masked, pending). Any thread.
 */
void virtio_pci_debug(struct virtio_pci *vp);

/* BAR 4 and BAR 1 accesses (also reachable through func's BAR ops). */
uint64_t virtio_pci_bar_read(void *opaque, uint64_t off, unsigned size);
void virtio_pci_bar_write(void *opaque, uint64_t off, unsigned size, uint64_t value);

/* The device status as the driver reads it (tests). */
uint8_t virtio_pci_status(struct virtio_pci *vp);

/* ---- live migration ---- */

/*
 * Payload layout version of virtio_pci_save (transport, queues, MSI-X and
 * the device type's section together).
 */
#define VIRTIO_PCI_STATE_VERSION 1

/*
 * Stops the device: kicks are dropped from now on (the queues are kicked
 * again at resume), and the device type stops taking requests and waits
 * for every one in flight (ops->quiesce). Afterwards the device writes no
 * guest RAM. Idempotent. State driver (vCPUs paused); may sleep.
 */
void virtio_pci_quiesce(struct virtio_pci *vp);

/*
 * Undoes virtio_pci_quiesce (also starts a device loaded by
 * virtio_pci_load) and kicks every live queue, since a kick that came
 * while paused, or on the migration source, was dropped. State driver.
 */
void virtio_pci_resume(struct virtio_pci *vp);

/*
 * Appends the device's state: transport registers, per-queue registers
 * and indices, ISR and vectors, MSI-X table and pending bits, then the
 * device type's section. The device must be quiesced: -EBUSY otherwise
 * (or with requests in flight). The PCI config space is a payload of its
 * own (pci_func_save). 0, -EBUSY, or -ENOMEM (writer failed).
 */
int virtio_pci_save(const struct virtio_pci *vp, struct mig_out *o);

/*
 * Loads a payload (untrusted) into a device freshly built from the same
 * spec: every value is validated (status bits and their order, features
 * a subset of what this device offers and accepted by the device type,
 * queue sizes and ring addresses through vq_enable, vectors < nvec, ...)
 * and the whole input must be consumed. The device is left quiesced:
 * virtio_pci_resume starts it. -EPROTO for another version, -EINVAL for
 * bad data (the device is then reset). State driver.
 */
int virtio_pci_load(struct virtio_pci *vp, struct mig_in *in, uint32_t version);

#endif
