/* SPDX-License-Identifier: MPL-2.0 */
/*
 * virtio-blk (the spec's `virtio_disk`): 1..VIRTIO_BLK_MAX_QUEUES request
 * queues served by one block backend (backends/block.h) with buffers
 * straight into guest RAM.
 *
 * Offered: SIZE_MAX, SEG_MAX, BLK_SIZE (the backend's block size), FLUSH,
 * RO for read-only backends, DISCARD and WRITE_ZEROES only when the
 * backend can do them, and MQ (with config num_queues) only when the
 * device has more than one queue: a single-queue device looks exactly as
 * it did before multiqueue existed. Requests: IN, OUT, FLUSH, GET_ID (the
 * serial: up to 20 bytes, NUL-padded), DISCARD and WRITE_ZEROES (one range
 * per request). A request with less than a 16-byte header or no status
 * byte is malformed and makes the device need a reset; otherwise bad
 * requests (data not a multiple of 512, out of range, too long, writes to
 * a read-only disk) complete with VIRTIO_BLK_S_IOERR and unknown types
 * with VIRTIO_BLK_S_UNSUPP.
 *
 * The machine gives a disk one queue per vCPU, so the guest's blk-mq
 * submits on, and takes each completion interrupt on, the vCPU that issued
 * the request instead of funnelling every interrupt through one vCPU.
 * Queues are independent: each has its own processing state and at most
 * queue-size requests in flight; completions (any backend thread) write
 * the status byte, push the used element on the request's own queue and
 * raise that queue's interrupt (its MSI-X vector). Reset waits for every
 * in-flight request on every queue.
 */
#ifndef CELLA_DEVICES_VIRTIO_BLK_H
#define CELLA_DEVICES_VIRTIO_BLK_H

#include <stdint.h>

#include "backends/block.h"
#include "devices/io.h"
#include "devices/virtio_pci.h"
#include "machine/guest_mem.h"

#define VIRTIO_BLK_F_SIZE_MAX     1
#define VIRTIO_BLK_F_SEG_MAX      2
#define VIRTIO_BLK_F_RO           5
#define VIRTIO_BLK_F_BLK_SIZE     6
#define VIRTIO_BLK_F_FLUSH        9
#define VIRTIO_BLK_F_MQ           12
#define VIRTIO_BLK_F_DISCARD      13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN           0
#define VIRTIO_BLK_T_OUT          1
#define VIRTIO_BLK_T_FLUSH        4
#define VIRTIO_BLK_T_GET_ID       8
#define VIRTIO_BLK_T_DISCARD      11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_ID_BYTES    20
#define VIRTIO_BLK_QUEUE_SIZE  256
#define VIRTIO_BLK_SIZE_MAX    (128u << 10) /* seg_max * size_max <= BLK_MAX_REQ_LEN */
#define VIRTIO_BLK_MAX_DISCARD (1u << 22)   /* sectors in one discard/write-zeroes */
#define VIRTIO_BLK_CONFIG_LEN  0x3c         /* through write_zeroes_may_unmap and its padding */
#define VIRTIO_BLK_MAX_QUEUES  VIRTIO_MAX_QUEUES

/* Config space offsets (struct virtio_blk_config). */
#define VBLK_CFG_CAPACITY        0x00
#define VBLK_CFG_SIZE_MAX        0x08
#define VBLK_CFG_SEG_MAX         0x0c
#define VBLK_CFG_BLK_SIZE        0x14
#define VBLK_CFG_NUM_QUEUES      0x22 /* le16; only with VIRTIO_BLK_F_MQ */
#define VBLK_CFG_MAX_DISCARD     0x24
#define VBLK_CFG_MAX_DISCARD_SEG 0x28
#define VBLK_CFG_DISCARD_ALIGN   0x2c
#define VBLK_CFG_MAX_WZ          0x30
#define VBLK_CFG_MAX_WZ_SEG      0x34

struct virtio_blk;

struct virtio_blk_params {
    const char *name;            /* for logs and the PCI function */
    const struct guest_mem *mem; /* outlives the device */
    struct blk_backend *backend; /* not owned; outlives the device */
    const char *serial;          /* GET_ID answer, truncated to 20 bytes; may be NULL */
    const struct irq_sink *msi;  /* MSI-X messages; may be NULL */
    uint16_t queue_size;         /* 0: VIRTIO_BLK_QUEUE_SIZE; else power of two >= 4 */
    unsigned nqueues;            /* 0: 1; else 1..VIRTIO_BLK_MAX_QUEUES (MQ when > 1) */
};

/*
 * Creates the device and its PCI function. 0, -EINVAL (bad params, such as
 * nqueues > VIRTIO_BLK_MAX_QUEUES) or -ENOMEM. Setup thread.
 */
int virtio_blk_create(const struct virtio_blk_params *p, struct virtio_blk **out);

/* The transport: add &pci->func to the topology, use its doorbells and kick. */
struct virtio_pci *virtio_blk_pci(struct virtio_blk *b);

/*
 * Migration: the payload is the transport's (virtio_pci_save/load on
 * virtio_blk_pci(b), VIRTIO_PCI_STATE_VERSION) with the disk geometry as
 * the device section: a target whose disk differs refuses it. The
 * transport's part carries the queue count and every queue's state, and
 * refuses a payload from a device with another number of queues. Quiesce
 * (virtio_pci_quiesce) waits for every in-flight request on every queue;
 * saving with a request in flight on any queue is -EBUSY.
 */
#define VIRTIO_BLK_STATE_VERSION VIRTIO_PCI_STATE_VERSION

/* Waits for in-flight requests and frees. NULL is a no-op. vCPUs stopped. */
void virtio_blk_destroy(struct virtio_blk *b);

#endif
