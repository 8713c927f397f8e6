/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Block backends: what a disk device (virtio-blk, NVMe) reads and writes.
 *
 * A backend is opened from one spec component (file_storage_backend,
 * blob_storage_backend, nbd_storage_backend) and serves asynchronous
 * requests whose buffers are host pointers into guest RAM (the device has
 * already bounds-checked them with guest_mem_ptr()). Completion is a
 * callback that may run on any thread, including inline inside
 * blk_submit(), so a device must not hold a lock in blk_submit() that its
 * completion callback takes.
 *
 * Guarantees:
 *  - BLK_FLUSH completes only once every write that completed before it was
 *    submitted is durable (fdatasync for files, NBD_CMD_FLUSH for NBD).
 *  - A read-only backend fails writes, discards and write-zeroes with -EROFS.
 *  - Requests out of range fail with -EINVAL (never touch the image).
 *  - A backend never loses an accepted write: if its transport fails
 *    (NBD connection lost), it reconnects and retries; while it cannot,
 *    requests wait (bounded by a retry deadline) and the event callback
 *    reports BLK_EV_DEGRADED / BLK_EV_RECOVERED / BLK_EV_FAILED. After
 *    BLK_EV_FAILED requests complete with -EIO.
 *
 * Threading: blk_submit() may be called from several threads at once.
 * blk_drain() waits for every request submitted before it to complete.
 *
 * Completions that do not arrive inline come from the backend's own thread,
 * unless an event loop takes them over: blk_attach_loop() puts a backend
 * fd into the loop's epoll set under a tag, and the loop calls blk_poll()
 * whenever that tag fires. A backend that completes on the submitting
 * thread (a RAM-backed file) then wakes no other thread at all. Backends
 * without the ops keep their threads; attaching them is a no-op.
 *
 * Device cores use only this header: a backend is a struct with an ops
 * table, so unit tests and fuzzers give devices fakes. blk_open() (the
 * real kinds) lives in the backends library, which the machine links.
 */
#ifndef CELLA_BACKENDS_BLOCK_H
#define CELLA_BACKENDS_BLOCK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/error.h"
#include "spec/spec.h"

#define BLK_SECTOR      512u
#define BLK_MAX_IOV     256u        /* buffers in one request */
#define BLK_MAX_REQ_LEN (32u << 20) /* bytes in one read/write request */

enum blk_op {
    BLK_READ,
    BLK_WRITE,
    BLK_FLUSH,
    BLK_DISCARD,      /* may be a no-op; data afterwards is unspecified */
    BLK_WRITE_ZEROES, /* data afterwards reads as zero */
};

struct blk_req {
    enum blk_op op;
    uint64_t offset;   /* bytes from the start of the disk */
    uint64_t len;      /* bytes; for READ/WRITE the sum of iov lengths */
    struct iovec *iov; /* READ/WRITE only; at most BLK_MAX_IOV entries */
    unsigned iovcnt;
    /* Called exactly once with 0 or a negative errno; any thread. */
    void (*done)(struct blk_req *req, int result);
    void *opaque; /* the device's */
    /* Private to the backend. */
    struct blk_req *be_next;
    int be_tries;
};

struct blk_info {
    uint64_t size;       /* bytes, a multiple of BLK_SECTOR */
    uint32_t block_size; /* logical block size the guest should see: 512..65536 */
    bool readonly;
    bool can_discard;
    bool can_write_zeroes;
    bool can_flush; /* false only for volatile backends (blob) */
};

enum blk_event { BLK_EV_DEGRADED, BLK_EV_RECOVERED, BLK_EV_FAILED };

struct blk_backend;

struct blk_backend_ops {
    void (*submit)(struct blk_backend *b, struct blk_req *req);
    void (*drain)(struct blk_backend *b);
    void (*close)(struct blk_backend *b); /* drains, then frees b */
    /* Optional, together (see blk_attach_loop); NULL: the backend's own threads. */
    int (*attach_loop)(struct blk_backend *b, int epfd, uint64_t tag);
    void (*detach_loop)(struct blk_backend *b);
    void (*poll)(struct blk_backend *b);
};

struct blk_backend {
    const struct blk_backend_ops *ops;
    struct blk_info info;
    /* Event reports (NBD connection state); set before the first submit. */
    void (*event_cb)(void *ctx, enum blk_event ev, const char *detail);
    void *event_ctx;
};

/*
 * Opens the backend described by component c (file_storage_backend,
 * blob_storage_backend or nbd_storage_backend). Errors go to errs with
 * pointer "/components/<key>[/field]". Returns 0 or a negative errno.
 */
int blk_open(const struct spec_component *c, struct blk_backend **out, struct cella_errors *errs);

/* Queues req; req->done is called exactly once (possibly before return). */
static inline void blk_submit(struct blk_backend *b, struct blk_req *req)
{
    b->ops->submit(b, req);
}

/* Waits until every request submitted before the call has completed. */
static inline void blk_drain(struct blk_backend *b)
{
    b->ops->drain(b);
}

/*
 * Hands b's late completions to the event loop of epoll set epfd: the
 * backend adds its fd with EPOLLIN and data.u64 = tag, and stops waking its
 * own completion thread. Returns 0 (also for a backend without the ops,
 * which stays as it was), -EBUSY if already attached, or a negative errno.
 * The caller detaches before it stops calling blk_poll or closes epfd.
 */
static inline int blk_attach_loop(struct blk_backend *b, int epfd, uint64_t tag)
{
    return b->ops->attach_loop ? b->ops->attach_loop(b, epfd, tag) : 0;
}

/* Gives b's completions back to its own thread (whatever is already posted included). */
static inline void blk_detach_loop(struct blk_backend *b)
{
    if (b->ops->detach_loop)
        b->ops->detach_loop(b);
}

/* The event loop's thread, when b's tag fired: completes what has arrived. */
static inline void blk_poll(struct blk_backend *b)
{
    if (b->ops->poll)
        b->ops->poll(b);
}

/* Drains and frees. NULL is a no-op. */
static inline void blk_close(struct blk_backend *b)
{
    if (b)
        b->ops->close(b);
}

#endif
