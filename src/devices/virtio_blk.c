/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/virtio_blk.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "common/le.h"

#define HDR_LEN     16u
#define DWZ_SEG_LEN 16u /* struct virtio_blk_discard_write_zeroes */

struct virtio_blk;

/*
 * One request queue and its processing state. Queues share nothing but the
 * backend (whose blk_submit is thread-safe) and the read-only device
 * fields, so a completion on one queue never waits for another queue's
 * lock and the guest's per-vCPU queues run side by side.
 *
 * Processing state, under `lock`: `processing` while some thread runs the
 * queue (others just set `pending` and leave, so completions arriving
 * inline inside blk_submit never recurse); `starved` when the queue was
 * left because queue-size requests were in flight on it (its next
 * completion runs it again); `stopped` while a reset or a migration
 * quiesce drains. `in_flight` counts this queue's requests between pop and
 * completion; `cond` is broadcast whenever `processing` or `in_flight`
 * drops, for quiesce.
 */
struct vblk_queue {
    struct virtio_blk *b;
    struct virtqueue *vq; /* &b->vqs[idx] */
    unsigned idx;         /* the queue number: its doorbell and interrupt */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool processing, pending, starved, stopped;
    unsigned in_flight;
};

/*
 * The virtqueues are an array of their own because the transport indexes
 * dev.vqs[0..nqueues); q[i] is their processing state. Only the first
 * `nqueues` of each are initialised.
 */
struct virtio_blk {
    struct virtio_dev dev;
    struct virtio_pci vp;
    const struct guest_mem *mem;
    struct blk_backend *be;
    uint8_t id[VIRTIO_BLK_ID_BYTES];
    uint64_t capacity; /* sectors */
    uint32_t seg_max;
    unsigned nqueues;
    uint8_t config[VIRTIO_BLK_CONFIG_LEN];
    struct virtqueue vqs[VIRTIO_BLK_MAX_QUEUES];
    struct vblk_queue q[VIRTIO_BLK_MAX_QUEUES];
};

struct vblk_req {
    struct blk_req br;
    struct vblk_queue *q; /* the queue it came from and completes on */
    uint16_t head;
    uint8_t *status;
    unsigned wfirst, wcnt; /* the device-writable data buffers in iov */
    struct iovec iov[BLK_MAX_IOV];
};

static void run_queue(struct vblk_queue *q);

/* ---- completion ---- */

/* Completes r on its own queue: used ring, that queue's interrupt, its slot. */
static void finish(struct vblk_req *r, uint8_t status, uint32_t written)
{
    struct vblk_queue *q = r->q;
    *r->status = status;
    /* All of the writable part: a failed read may have written some of it. */
    struct iovec st = {r->status, 1};
    vq_mark_written(q->vq, r->iov + r->wfirst, r->wcnt, UINT64_MAX);
    vq_mark_written(q->vq, &st, 1, 1);
    struct vq_used u = {r->head, written + 1};
    bool notify = vq_push(q->vq, &u, 1);
    free(r);
    if (notify)
        virtio_dev_notify(&q->b->dev, q->idx);

    bool again = false;
    pthread_mutex_lock(&q->lock);
    q->in_flight--;
    if (q->starved && !q->stopped) {
        q->starved = false;
        again = true;
    }
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (again)
        run_queue(q);
}

static void req_done(struct blk_req *br, int result)
{
    struct vblk_req *r = (struct vblk_req *)((char *)br - offsetof(struct vblk_req, br));
    uint8_t st = result == 0                                     ? VIRTIO_BLK_S_OK
                 : (result == -ENOTSUP || result == -EOPNOTSUPP) ? VIRTIO_BLK_S_UNSUPP
                                                                 : VIRTIO_BLK_S_IOERR;
    uint32_t written = (br->op == BLK_READ && result == 0) ? (uint32_t)br->len : 0;
    finish(r, st, written);
}

/* ---- request parsing ---- */

static bool in_range(const struct virtio_blk *b, uint64_t sector, uint64_t nsect)
{
    return sector <= b->capacity && nsect <= b->capacity - sector;
}

static void submit(struct virtio_blk *b, struct vblk_req *r, enum blk_op op, uint64_t off,
                   uint64_t len, struct iovec *iov, unsigned iovcnt)
{
    r->br = (struct blk_req){.op = op,
                             .offset = off,
                             .len = len,
                             .iov = iovcnt ? iov : NULL,
                             .iovcnt = iovcnt,
                             .done = req_done,
                             .opaque = r};
    blk_submit(b->be, &r->br);
}

/* Drops the first `n` bytes of iov[0..*cnt) in place; returns the new start. */
static struct iovec *iov_skip(struct iovec *iov, unsigned *cnt, size_t n)
{
    while (*cnt && n >= iov->iov_len) {
        n -= iov->iov_len;
        iov++;
        (*cnt)--;
    }
    if (*cnt && n) {
        iov->iov_base = (uint8_t *)iov->iov_base + n;
        iov->iov_len -= n;
    }
    return iov;
}

static void do_rw(struct virtio_blk *b, struct vblk_req *r, const struct vq_chain *c, bool write,
                  uint64_t sector, unsigned niov)
{
    struct iovec *data;
    unsigned cnt;
    uint64_t len;
    if (write) {
        cnt = c->nread;
        data = iov_skip(r->iov, &cnt, HDR_LEN);
        len = c->read_len - HDR_LEN;
    } else {
        cnt = niov - c->nread;
        data = r->iov + c->nread;
        len = c->write_len - 1;
    }
    if (write && b->be->info.readonly) {
        guest_error(b->dev.name, "write to a read-only disk");
        finish(r, VIRTIO_BLK_S_IOERR, 0);
    } else if (len % BLK_SECTOR || len > BLK_MAX_REQ_LEN ||
               !in_range(b, sector, len / BLK_SECTOR)) {
        guest_error(b->dev.name, "bad %s: sector %llu, %llu bytes", write ? "write" : "read",
                    (unsigned long long)sector, (unsigned long long)len);
        finish(r, VIRTIO_BLK_S_IOERR, 0);
    } else if (len == 0) {
        finish(r, VIRTIO_BLK_S_OK, 0);
    } else {
        submit(b, r, write ? BLK_WRITE : BLK_READ, sector * BLK_SECTOR, len, data, cnt);
    }
}

static void do_dwz(struct virtio_blk *b, struct vblk_req *r, const struct vq_chain *c, bool zeroes)
{
    bool offered = zeroes ? b->be->info.can_write_zeroes : b->be->info.can_discard;
    if (!offered) {
        finish(r, VIRTIO_BLK_S_UNSUPP, 0);
        return;
    }
    uint64_t payload = c->read_len - HDR_LEN;
    if (payload != DWZ_SEG_LEN) { /* max_discard_seg = max_write_zeroes_seg = 1 */
        guest_error(b->dev.name, "%llu bytes of discard ranges", (unsigned long long)payload);
        finish(r, VIRTIO_BLK_S_IOERR, 0);
        return;
    }
    uint8_t seg[HDR_LEN + DWZ_SEG_LEN];
    iov_to_buf(r->iov, c->nread, seg, sizeof(seg));
    uint64_t sector = le64(seg + HDR_LEN);
    uint32_t nsect = le32(seg + HDR_LEN + 8), flags = le32(seg + HDR_LEN + 12);
    /* Flag bit 0 is "unmap": allowed for write-zeroes only. */
    if (flags & ~(zeroes ? 1u : 0u)) {
        finish(r, VIRTIO_BLK_S_UNSUPP, 0);
    } else if (b->be->info.readonly || nsect > VIRTIO_BLK_MAX_DISCARD ||
               !in_range(b, sector, nsect)) {
        guest_error(b->dev.name, "bad discard/write-zeroes: sector %llu, %u sectors",
                    (unsigned long long)sector, nsect);
        finish(r, VIRTIO_BLK_S_IOERR, 0);
    } else {
        submit(b, r, zeroes ? BLK_WRITE_ZEROES : BLK_DISCARD, sector * BLK_SECTOR,
               (uint64_t)nsect * BLK_SECTOR, NULL, 0);
    }
}

/* Handles one popped chain; r->iov holds its buffers. */
static void handle(struct virtio_blk *b, struct vblk_req *r, const struct vq_chain *c)
{
    uint8_t hdr[HDR_LEN];
    iov_to_buf(r->iov, c->nread, hdr, HDR_LEN);
    uint32_t type = le32(hdr);
    uint64_t sector = le64(hdr + 8);

    /* The status byte is the last writable byte; take it off the data. */
    unsigned niov = c->niov;
    struct iovec *last = &r->iov[niov - 1];
    r->status = (uint8_t *)last->iov_base + last->iov_len - 1;
    if (--last->iov_len == 0)
        niov--;
    r->wfirst = c->nread;
    r->wcnt = niov > c->nread ? niov - c->nread : 0;

    switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
        do_rw(b, r, c, type == VIRTIO_BLK_T_OUT, sector, niov);
        break;
    case VIRTIO_BLK_T_FLUSH:
        if (b->be->info.can_flush)
            submit(b, r, BLK_FLUSH, 0, 0, NULL, 0);
        else
            finish(r, VIRTIO_BLK_S_OK, 0); /* volatile backend: nothing to make durable */
        break;
    case VIRTIO_BLK_T_GET_ID: {
        size_t n = iov_from_buf(r->iov + c->nread, niov - c->nread, b->id, sizeof(b->id));
        finish(r, VIRTIO_BLK_S_OK, (uint32_t)n);
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        do_dwz(b, r, c, type == VIRTIO_BLK_T_WRITE_ZEROES);
        break;
    default:
        finish(r, VIRTIO_BLK_S_UNSUPP, 0);
        break;
    }
}

static void release_slot(struct vblk_queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->in_flight--;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* Takes and starts one request from q: 1 done, 0 nothing (or starved), <0 broken. */
static int process_one(struct vblk_queue *q)
{
    struct virtio_blk *b = q->b;
    pthread_mutex_lock(&q->lock);
    if (q->stopped || q->in_flight >= q->vq->num) {
        q->starved = !q->stopped;
        pthread_mutex_unlock(&q->lock);
        return 0;
    }
    q->in_flight++;
    pthread_mutex_unlock(&q->lock);

    struct vblk_req *r = malloc(sizeof(*r));
    if (!r) {
        release_slot(q);
        return 0;
    }
    r->q = q;
    struct vq_chain c;
    int rc = vq_pop(q->vq, &c, r->iov, BLK_MAX_IOV);
    if (rc > 0 && (c.read_len < HDR_LEN || c.write_len < 1)) {
        guest_error(b->dev.name, "queue %u: request without header or status byte", q->idx);
        vq_set_broken(q->vq);
        rc = -EINVAL;
    }
    if (rc <= 0) {
        free(r);
        release_slot(q);
        if (rc < 0)
            virtio_dev_fail(&b->dev);
        return rc;
    }
    r->head = c.head;
    handle(b, r, &c);
    return 1;
}

static void run_queue(struct vblk_queue *q)
{
    pthread_mutex_lock(&q->lock);
    if (q->stopped) {
        pthread_mutex_unlock(&q->lock);
        return;
    }
    q->pending = true;
    if (q->processing) {
        pthread_mutex_unlock(&q->lock);
        return;
    }
    q->processing = true;
    while (q->pending && !q->stopped) {
        q->pending = false;
        pthread_mutex_unlock(&q->lock);
        while (process_one(q) > 0)
            ;
        pthread_mutex_lock(&q->lock);
    }
    q->processing = false;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* ---- device ops ---- */

static struct virtio_blk *to_blk(struct virtio_dev *d)
{
    return (struct virtio_blk *)((char *)d - offsetof(struct virtio_blk, dev));
}

static uint64_t cfg_read(struct virtio_dev *d, uint32_t off, unsigned size)
{
    struct virtio_blk *b = to_blk(d);
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)b->config[off + i] << (8 * i);
    return v;
}

static void cfg_write(struct virtio_dev *d, uint32_t off, unsigned size, uint64_t value)
{
    (void)size, (void)value;
    guest_error(d->name, "write to read-only config at 0x%x", off);
}

static int set_features(struct virtio_dev *d, uint64_t features)
{
    (void)d, (void)features;
    return 0;
}

static void driver_ok(struct virtio_dev *d)
{
    (void)d;
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    struct virtio_blk *b = to_blk(d);
    if (q < b->nqueues)
        run_queue(&b->q[q]);
}

/*
 * Stops every queue and waits until nothing is in flight on any: first
 * all queues stop taking requests (so none submits while we drain), then
 * the backend drains, then each queue's count reaches zero.
 */
static void quiesce(struct virtio_blk *b)
{
    for (unsigned i = 0; i < b->nqueues; i++) {
        struct vblk_queue *q = &b->q[i];
        pthread_mutex_lock(&q->lock);
        q->stopped = true;
        while (q->processing)
            pthread_cond_wait(&q->cond, &q->lock);
        pthread_mutex_unlock(&q->lock);
    }
    blk_drain(b->be);
    for (unsigned i = 0; i < b->nqueues; i++) {
        struct vblk_queue *q = &b->q[i];
        pthread_mutex_lock(&q->lock);
        while (q->in_flight)
            pthread_cond_wait(&q->cond, &q->lock);
        pthread_mutex_unlock(&q->lock);
    }
}

/* Every queue takes requests again: after a reset, or at resume (the transport kicks next). */
static void restart(struct virtio_blk *b)
{
    for (unsigned i = 0; i < b->nqueues; i++) {
        struct vblk_queue *q = &b->q[i];
        pthread_mutex_lock(&q->lock);
        q->stopped = q->starved = q->pending = false;
        pthread_mutex_unlock(&q->lock);
    }
}

static void reset(struct virtio_dev *d)
{
    struct virtio_blk *b = to_blk(d);
    quiesce(b);
    for (unsigned i = 0; i < b->nqueues; i++)
        vq_reset(&b->vqs[i]);
    restart(b);
}

/* ---- migration ---- */

static void op_quiesce(struct virtio_dev *d)
{
    quiesce(to_blk(d));
}

static void op_resume(struct virtio_dev *d)
{
    restart(to_blk(d)); /* the transport kicks every live queue next */
}

/*
 * The disk's geometry, so a target on another disk size refuses the state.
 * The queue count is the transport's (it refuses a mismatch), so this
 * section is the same for one queue or many.
 */
static int op_save(struct virtio_dev *d, struct mig_out *o)
{
    struct virtio_blk *b = to_blk(d);
    bool busy = false;
    for (unsigned i = 0; i < b->nqueues; i++) {
        struct vblk_queue *q = &b->q[i];
        pthread_mutex_lock(&q->lock);
        busy |= q->in_flight != 0 || q->processing;
        pthread_mutex_unlock(&q->lock);
    }
    if (busy)
        return -EBUSY;
    mig_put_u64(o, b->capacity);
    mig_put_u32(o, b->be->info.block_size);
    return 0;
}

static int op_load(struct virtio_dev *d, struct mig_in *in)
{
    struct virtio_blk *b = to_blk(d);
    uint64_t capacity = mig_get_u64(in);
    uint32_t block_size = mig_get_u32(in);
    if (!mig_in_ok(in) || capacity != b->capacity || block_size != b->be->info.block_size) {
        mig_in_fail(in);
        return -EINVAL;
    }
    return 0;
}

static void queue_debug(struct virtio_dev *d, unsigned idx, char *buf, size_t len)
{
    struct virtio_blk *b = (struct virtio_blk *)d;
    if (idx >= b->nqueues) {
        snprintf(buf, len, "no such queue");
        return;
    }
    struct vblk_queue *q = &b->q[idx];
    if (pthread_mutex_trylock(&q->lock) != 0) {
        snprintf(buf, len, "busy (queue lock held)");
        return;
    }
    snprintf(buf, len, "in flight %u%s%s%s%s", q->in_flight, q->processing ? " processing" : "",
             q->pending ? " pending" : "", q->starved ? " starved" : "",
             q->stopped ? " stopped" : "");
    pthread_mutex_unlock(&q->lock);
}

static const struct virtio_dev_ops blk_ops = {
    .config_read = cfg_read,
    .config_write = cfg_write,
    .set_features = set_features,
    .driver_ok = driver_ok,
    .queue_notify = queue_notify,
    .queue_debug = queue_debug,
    .reset = reset,
    .quiesce = op_quiesce,
    .resume = op_resume,
    .save = op_save,
    .load = op_load,
};

/* ---- setup ---- */

static void build_config(struct virtio_blk *b)
{
    uint8_t *c = b->config;
    const struct blk_info *info = &b->be->info;
    uint32_t align = info->block_size / BLK_SECTOR;
    put64(c + VBLK_CFG_CAPACITY, b->capacity);
    put32(c + VBLK_CFG_SIZE_MAX, VIRTIO_BLK_SIZE_MAX);
    put32(c + VBLK_CFG_SEG_MAX, b->seg_max);
    put32(c + VBLK_CFG_BLK_SIZE, info->block_size);
    if (info->can_discard) {
        put32(c + VBLK_CFG_MAX_DISCARD, VIRTIO_BLK_MAX_DISCARD);
        put32(c + VBLK_CFG_MAX_DISCARD_SEG, 1);
        put32(c + VBLK_CFG_DISCARD_ALIGN, align);
    }
    if (info->can_write_zeroes) {
        put32(c + VBLK_CFG_MAX_WZ, VIRTIO_BLK_MAX_DISCARD);
        put32(c + VBLK_CFG_MAX_WZ_SEG, 1);
    }
    if (b->nqueues > 1) /* the field exists only with MQ: one queue leaves it 0 */
        put16(c + VBLK_CFG_NUM_QUEUES, (uint16_t)b->nqueues);
}

static uint64_t features_for(const struct blk_info *info, unsigned nqueues)
{
    uint64_t f = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
                 1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH;
    if (info->readonly)
        f |= 1ull << VIRTIO_BLK_F_RO;
    if (info->can_discard && !info->readonly)
        f |= 1ull << VIRTIO_BLK_F_DISCARD;
    if (info->can_write_zeroes && !info->readonly)
        f |= 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
    if (nqueues > 1)
        f |= 1ull << VIRTIO_BLK_F_MQ;
    return f;
}

/* Tears down the first n queues' virtqueue, lock and cond. */
static void destroy_queues(struct virtio_blk *b, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        pthread_cond_destroy(&b->q[i].cond);
        pthread_mutex_destroy(&b->q[i].lock);
        vq_destroy(&b->vqs[i]);
    }
}

static int init_queue(struct virtio_blk *b, unsigned i)
{
    struct vblk_queue *q = &b->q[i];
    *q = (struct vblk_queue){.b = b, .vq = &b->vqs[i], .idx = i};
    int rc = vq_init(q->vq, b->mem);
    if (rc < 0)
        return rc;
    if ((rc = -pthread_mutex_init(&q->lock, NULL)) < 0)
        goto fail_vq;
    if ((rc = -pthread_cond_init(&q->cond, NULL)) < 0)
        goto fail_lock;
    return 0;
fail_lock:
    pthread_mutex_destroy(&q->lock);
fail_vq:
    vq_destroy(q->vq);
    return rc;
}

int virtio_blk_create(const struct virtio_blk_params *p, struct virtio_blk **out)
{
    *out = NULL;
    uint16_t qs = p->queue_size ? p->queue_size : VIRTIO_BLK_QUEUE_SIZE;
    unsigned nq = p->nqueues ? p->nqueues : 1;
    const struct blk_info *info = p->backend ? &p->backend->info : NULL;
    if (!p->mem || !info || qs < 4 || qs > VQ_MAX_SIZE || (qs & (qs - 1)) ||
        nq > VIRTIO_BLK_MAX_QUEUES || info->block_size < BLK_SECTOR || info->block_size > 65536 ||
        (info->block_size & (info->block_size - 1)) || info->size % BLK_SECTOR)
        return -EINVAL;
    struct virtio_blk *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->mem = p->mem;
    b->be = p->backend;
    b->capacity = info->size / BLK_SECTOR;
    b->seg_max = (qs < BLK_MAX_IOV ? qs : BLK_MAX_IOV) - 2u;
    b->nqueues = nq;
    if (p->serial)
        memcpy(b->id, p->serial, strnlen(p->serial, sizeof(b->id)));
    build_config(b);
    b->dev = (struct virtio_dev){.ops = &blk_ops,
                                 .name = p->name ? p->name : "virtio-blk",
                                 .type = VIRTIO_ID_BLOCK,
                                 .class_code = 0x010000, /* mass storage, SCSI (as QEMU) */
                                 .host_features = features_for(info, nq),
                                 .config_len = VIRTIO_BLK_CONFIG_LEN,
                                 .nqueues = nq,
                                 .queue_max = qs,
                                 .vqs = b->vqs};
    unsigned done = 0;
    int rc = 0;
    while (done < nq && (rc = init_queue(b, done)) == 0)
        done++;
    if (rc == 0)
        rc = virtio_pci_init(&b->vp, &b->dev, b->dev.name, p->msi);
    if (rc < 0) {
        destroy_queues(b, done);
        free(b);
        return rc;
    }
    *out = b;
    return 0;
}

struct virtio_pci *virtio_blk_pci(struct virtio_blk *b)
{
    return &b->vp;
}

void virtio_blk_destroy(struct virtio_blk *b)
{
    if (!b)
        return;
    quiesce(b);
    virtio_pci_destroy(&b->vp);
    destroy_queues(b, b->nqueues);
    free(b);
}
