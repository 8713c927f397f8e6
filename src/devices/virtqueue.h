/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Virtio 1.x split virtqueues, and the transport-independent interface a
 * virtio device type (blk, net) implements.
 *
 * The virtqueue core reads the guest's rings only through guest_mem_ptr()
 * (translated once, when the driver enables the queue) and trusts nothing
 * in them: vq_pop() walks one descriptor chain with every index bounded by
 * the table it indexes, every step counted (no loops), every buffer
 * overflow-checked and wholly inside guest RAM, indirect tables in bounds
 * and never nested, device-readable buffers strictly before
 * device-writable ones, and the total length capped. A malformed chain
 * makes vq_pop() fail and marks the queue broken; the device then asks its
 * transport to set DEVICE_NEEDS_RESET (virtio_dev_fail) and nothing more
 * is taken from the queue until the driver resets the device.
 *
 * Each descriptor is read once into locals, so a guest rewriting its
 * descriptors under us cannot make the checked and the used values differ.
 *
 * Threading: each queue has a mutex. vq_pop, vq_unpop and vq_push take it,
 * so pops on one thread (a vCPU kicking virtio-blk) and pushes on another
 * (a block backend completing) are safe. vq_enable/vq_reset are called by
 * the transport while the device is quiesced.
 */
#ifndef CELLA_DEVICES_VIRTQUEUE_H
#define CELLA_DEVICES_VIRTQUEUE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/mig_buf.h"
#include "machine/guest_mem.h"

/* ---- spec constants ---- */

#define VIRTIO_F_INDIRECT_DESC 28 /* VIRTIO_RING_F_INDIRECT_DESC */
#define VIRTIO_F_EVENT_IDX     29 /* VIRTIO_RING_F_EVENT_IDX */
#define VIRTIO_F_VERSION_1     32

#define VIRTIO_STATUS_ACKNOWLEDGE 0x01
#define VIRTIO_STATUS_DRIVER      0x02
#define VIRTIO_STATUS_DRIVER_OK   0x04
#define VIRTIO_STATUS_FEATURES_OK 0x08
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLOCK 2

#define VIRTQ_DESC_F_NEXT          1
#define VIRTQ_DESC_F_WRITE         2
#define VIRTQ_DESC_F_INDIRECT      4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_DESC_SIZE            16u

#define VQ_MAX_SIZE        1024u       /* largest queue size a device may offer */
#define VQ_MAX_INDIRECT    VQ_MAX_SIZE /* entries in one indirect table */
#define VQ_MAX_CHAIN_BYTES (64u << 20) /* sum of buffer lengths in one chain */

/* ---- virtqueue ---- */

/*
 * One split virtqueue. Fields after `lock` are guarded by it.
 * Invariants while `ready`: num is a power of two in 1..VQ_MAX_SIZE;
 * desc/avail/used point at the whole rings inside guest RAM (checked at
 * vq_enable); used_idx is what we last published in used->idx.
 */
struct virtqueue {
    const struct guest_mem *mem;
    /* DMA gate (the transport's bus-master bit); NULL means always on. */
    bool (*dma_ok)(void *ctx);
    void *dma_ctx;

    pthread_mutex_t lock;
    bool ready;
    bool broken; /* a malformed chain was seen: nothing more until reset */
    bool event_idx, indirect;
    uint16_t num;
    uint8_t *desc, *avail, *used;
    uint64_t used_gpa;   /* for dirty marks */
    uint16_t last_avail; /* next avail ring slot to take */
    uint16_t used_idx;   /* next used ring slot to fill */
    uint16_t signalled_used;
    bool signalled_valid;
};

/*
 * A popped chain: `head` goes back to vq_push; iov[0..nread) are the
 * device-readable buffers, iov[nread..niov) the device-writable ones
 * (zero-length descriptors are skipped), with byte totals.
 */
struct vq_chain {
    uint16_t head;
    unsigned niov, nread;
    uint64_t read_len, write_len;
};

struct vq_used {
    uint16_t head;
    uint32_t len; /* bytes the device wrote into the chain */
};

/* Zeroes vq and initialises its lock. 0 or a negative errno. */
int vq_init(struct virtqueue *vq, const struct guest_mem *mem);
void vq_destroy(struct virtqueue *vq);

/*
 * Makes the queue live with the rings the driver programmed: `num`
 * entries (power of two, 1..VQ_MAX_SIZE), descriptor table at desc_gpa
 * (16-byte aligned), driver (avail) ring at avail_gpa (2-aligned), device
 * (used) ring at used_gpa (4-aligned), all inside guest RAM. `event_idx`
 * and `indirect` are the negotiated ring features. -EINVAL when anything
 * is out of place (the queue stays disabled).
 */
int vq_enable(struct virtqueue *vq, uint16_t num, uint64_t desc_gpa, uint64_t avail_gpa,
              uint64_t used_gpa, bool event_idx, bool indirect);

/* Back to disabled, not broken, indices zero. */
void vq_reset(struct virtqueue *vq);

/*
 * Takes the next available chain into iov (at most max_iov buffers).
 * Returns 1 with *c filled, 0 when the driver has nothing for us (or the
 * queue is not ready, or DMA is gated off), or a negative errno for a
 * malformed ring or chain (-EINVAL, -E2BIG for too many buffers or bytes,
 * -EFAULT for a buffer outside guest RAM); the queue is then broken and
 * every later pop returns -EIO. With EVENT_IDX, leaves avail_event at the
 * next index so the driver kicks for any new buffer.
 */
int vq_pop(struct virtqueue *vq, struct vq_chain *c, struct iovec *iov, unsigned max_iov);

/* Gives back the last n popped (not pushed) chains, newest first. */
void vq_unpop(struct virtqueue *vq, unsigned n);

/*
 * Returns n used chains to the driver (written, then used->idx published
 * with release order) and decides whether the driver wants an interrupt
 * (EVENT_IDX used_event, or VIRTQ_AVAIL_F_NO_INTERRUPT). Any thread.
 * Returns true when the caller should signal the queue's interrupt.
 */
bool vq_push(struct virtqueue *vq, const struct vq_used *u, unsigned n);

/* Marks the queue broken (the device found a malformed request in it). */
void vq_set_broken(struct virtqueue *vq);

/* True when the queue has been enabled and not broken (a snapshot). */
bool vq_ready(struct virtqueue *vq);

/*
 * One line of the queue's state for a debug dump (cella-standalone
 * SIGUSR2): our indices and the driver's, as guest memory has them now.
 */
void vq_debug(struct virtqueue *vq, char *buf, size_t len);

/*
 * Marks the first `nbytes` (UINT64_MAX: all) of the device-writable
 * buffers iov[0..n) dirty for migration (guest_mem_dirty), after the
 * device wrote them. Any thread.
 */
void vq_mark_written(struct virtqueue *vq, const struct iovec *iov, unsigned n, uint64_t nbytes);

/*
 * Migration: the queue's indices (last_avail, used_idx, the EVENT_IDX
 * signalling shadow) and its broken flag; the ring addresses belong to
 * the transport, which vq_enable()s the queue before vq_load(). A
 * section of the transport's payload (no version of its own). The queue
 * must be idle (device quiesced).
 */
void vq_save(struct virtqueue *vq, struct mig_out *o);
/*
 * Reads what vq_save wrote into a queue that is enabled (or, when the
 * saved queue was not ready, disabled: then the indices must be zero).
 * -EINVAL on a bad value or a short input.
 */
int vq_load(struct virtqueue *vq, struct mig_in *in);

/* Copies up to len bytes from the start of iov[0..n) into dst; returns bytes copied. */
size_t iov_to_buf(const struct iovec *iov, unsigned n, void *dst, size_t len);
/* Copies len bytes of src into the start of iov[0..n); returns bytes copied. */
size_t iov_from_buf(const struct iovec *iov, unsigned n, const void *src, size_t len);

/* ---- device types ---- */

struct virtio_dev;

/*
 * What a device type implements. The transport calls these with its own
 * lock held (serialised with each other); `queue_notify` runs on a vCPU
 * thread or the machine's ioeventfd thread.
 */
struct virtio_dev_ops {
    /* Device config space; offsets < config_len, size 1/2/4/8. */
    uint64_t (*config_read)(struct virtio_dev *d, uint32_t off, unsigned size);
    void (*config_write)(struct virtio_dev *d, uint32_t off, unsigned size, uint64_t value);
    /*
     * The driver set FEATURES_OK with `features` (already a subset of what
     * was offered, VERSION_1 included). A negative errno refuses them.
     */
    int (*set_features)(struct virtio_dev *d, uint64_t features);
    /* The driver set DRIVER_OK: queues that are enabled are live. */
    void (*driver_ok)(struct virtio_dev *d);
    /* The driver notified queue q (enabled, DRIVER_OK, DMA on). */
    void (*queue_notify)(struct virtio_dev *d, unsigned q);
    /* Optional: the device's own state of queue q, one line (debug dump). */
    void (*queue_debug)(struct virtio_dev *d, unsigned q, char *buf, size_t len);
    /*
     * Device reset: stop taking requests, wait for every in-flight backend
     * request, then vq_reset every queue. May sleep.
     */
    void (*reset)(struct virtio_dev *d);
    /*
     * Optional (migration). quiesce: stop taking requests from the queues
     * and wait until nothing is in flight; from then on the device writes
     * no guest RAM (receive paths included) until resume. resume: undo it
     * (the transport kicks every live queue afterwards). save/load: the
     * device type's own state as a section of the transport's payload,
     * after the transport restored features (set_features was called) and
     * queues; save fails (-EBUSY) with requests in flight, load validates
     * everything (-EINVAL) and leaves the device quiesced.
     */
    void (*quiesce)(struct virtio_dev *d);
    void (*resume)(struct virtio_dev *d);
    int (*save)(struct virtio_dev *d, struct mig_out *o);
    int (*load)(struct virtio_dev *d, struct mig_in *in);
};

/* What the transport gives the device; set by the transport's init. */
struct virtio_transport {
    void *ctx;
    /* Interrupt for queue q (MSI-X vector or INTx + ISR bit 0). Any thread. */
    void (*notify_queue)(void *ctx, unsigned q);
    /* Sets DEVICE_NEEDS_RESET and raises a config interrupt once. Any thread. */
    void (*needs_reset)(void *ctx);
};

#define VIRTIO_MAX_QUEUES 8

/*
 * A device as a transport sees it. The device type fills everything up to
 * `t`; the transport fills `t` and `features` (negotiated).
 */
struct virtio_dev {
    const struct virtio_dev_ops *ops;
    const char *name;       /* for guest_error */
    uint16_t type;          /* VIRTIO_ID_* */
    uint32_t class_code;    /* PCI class */
    uint64_t host_features; /* device-type bits offered (transport adds ring bits) */
    uint32_t config_len;
    unsigned nqueues;      /* 1..VIRTIO_MAX_QUEUES */
    uint16_t queue_max;    /* offered queue size, power of two <= VQ_MAX_SIZE */
    struct virtqueue *vqs; /* nqueues of them, owned by the device */
    struct virtio_transport t;
    uint64_t features; /* negotiated; valid from set_features until reset */
};

static inline void virtio_dev_notify(struct virtio_dev *d, unsigned q)
{
    if (d->t.notify_queue)
        d->t.notify_queue(d->t.ctx, q);
}

static inline void virtio_dev_fail(struct virtio_dev *d)
{
    if (d->t.needs_reset)
        d->t.needs_reset(d->t.ctx);
}

static inline bool virtio_has(const struct virtio_dev *d, unsigned bit)
{
    return (d->features >> bit) & 1u;
}

#endif
