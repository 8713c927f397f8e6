/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/virtqueue.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/le.h"
#include "devices/dma_dirty.h"

/*
 * The ring indices are 16-bit fields the guest reads and writes
 * concurrently; they are accessed with atomics on the host's native
 * representation, which is the rings' little-endian one only on a
 * little-endian host (x86, the one KVM target cella has).
 */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "virtqueue rings need a LE host");

/* Ring layout (virtio 1.x 2.7): avail = flags, idx, ring[num], used_event;
 * used = flags, idx, ring[num] of {id, len}, avail_event. */
#define AVAIL_IDX       2u
#define AVAIL_RING(i)   (4u + 2u * (i))
#define USED_IDX        2u
#define USED_RING(i)    (4u + 8u * (i))
#define AVAIL_SIZE(num) (6u + 2u * (uint64_t)(num))
#define USED_SIZE(num)  (6u + 8u * (uint64_t)(num))

static uint16_t load16_acquire(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_ACQUIRE);
}

static uint16_t load16(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED);
}

static void store16(uint8_t *p, uint16_t v, int order)
{
    __atomic_store_n((uint16_t *)(void *)p, v, order);
}

int vq_init(struct virtqueue *vq, const struct guest_mem *mem)
{
    memset(vq, 0, sizeof(*vq));
    vq->mem = mem;
    int rc = pthread_mutex_init(&vq->lock, NULL);
    return rc ? -rc : 0;
}

void vq_destroy(struct virtqueue *vq)
{
    pthread_mutex_destroy(&vq->lock);
}

static void reset_locked(struct virtqueue *vq)
{
    vq->ready = false;
    vq->broken = false;
    vq->event_idx = vq->indirect = false;
    vq->num = 0;
    vq->desc = vq->avail = vq->used = NULL;
    vq->used_gpa = 0;
    vq->last_avail = vq->used_idx = 0;
    vq->signalled_used = 0;
    vq->signalled_valid = false;
}

void vq_reset(struct virtqueue *vq)
{
    pthread_mutex_lock(&vq->lock);
    reset_locked(vq);
    pthread_mutex_unlock(&vq->lock);
}

int vq_enable(struct virtqueue *vq, uint16_t num, uint64_t desc_gpa, uint64_t avail_gpa,
              uint64_t used_gpa, bool event_idx, bool indirect)
{
    if (num == 0 || num > VQ_MAX_SIZE || (num & (num - 1)) != 0)
        return -EINVAL;
    if ((desc_gpa & 15) || (avail_gpa & 1) || (used_gpa & 3))
        return -EINVAL;
    uint8_t *d = guest_mem_ptr(vq->mem, desc_gpa, (uint64_t)num * VIRTQ_DESC_SIZE);
    uint8_t *a = guest_mem_ptr(vq->mem, avail_gpa, AVAIL_SIZE(num));
    uint8_t *u = guest_mem_ptr(vq->mem, used_gpa, USED_SIZE(num));
    if (!d || !a || !u)
        return -EINVAL;
    pthread_mutex_lock(&vq->lock);
    reset_locked(vq);
    vq->num = num;
    vq->desc = d;
    vq->avail = a;
    vq->used = u;
    vq->used_gpa = used_gpa;
    vq->event_idx = event_idx;
    vq->indirect = indirect;
    /* Indices start at 0 (reset_locked); the driver zeroed the rings. */
    vq->ready = true;
    pthread_mutex_unlock(&vq->lock);
    return 0;
}

void vq_set_broken(struct virtqueue *vq)
{
    pthread_mutex_lock(&vq->lock);
    vq->broken = true;
    pthread_mutex_unlock(&vq->lock);
}

bool vq_ready(struct virtqueue *vq)
{
    pthread_mutex_lock(&vq->lock);
    bool r = vq->ready && !vq->broken;
    pthread_mutex_unlock(&vq->lock);
    return r;
}

/* One descriptor, read once. */
struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags, next;
};

static struct desc read_desc(const uint8_t *table, unsigned i)
{
    uint8_t raw[VIRTQ_DESC_SIZE];
    memcpy(raw, table + (size_t)i * VIRTQ_DESC_SIZE, sizeof(raw));
    return (struct desc){le64(raw), le32(raw + 8), le16(raw + 12), le16(raw + 14)};
}

/*
 * Walks the chain starting at `head`. Every loop iteration spends one unit
 * of `budget`, which is the size of the table being walked, so a cycle
 * ends as "too long" instead of spinning.
 */
static int walk_chain(struct virtqueue *vq, uint16_t head, struct vq_chain *c, struct iovec *iov,
                      unsigned max_iov)
{
    const uint8_t *table = vq->desc;
    unsigned tsize = vq->num, budget = vq->num, i = head;
    bool in_indirect = false, seen_write = false;
    uint64_t total = 0;

    *c = (struct vq_chain){.head = head};
    if (i >= tsize)
        return -EINVAL;
    for (;;) {
        if (budget-- == 0)
            return -E2BIG; /* longer than its table: a loop or a lie */
        struct desc d = read_desc(table, i);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            if (!vq->indirect || in_indirect || (d.flags & VIRTQ_DESC_F_NEXT))
                return -EINVAL;
            if (d.len == 0 || d.len % VIRTQ_DESC_SIZE || d.len / VIRTQ_DESC_SIZE > VQ_MAX_INDIRECT)
                return -EINVAL;
            const uint8_t *t = guest_mem_ptr(vq->mem, d.addr, d.len);
            if (!t)
                return -EFAULT;
            table = t;
            tsize = budget = d.len / VIRTQ_DESC_SIZE;
            in_indirect = true;
            i = 0;
            continue;
        }
        bool writable = d.flags & VIRTQ_DESC_F_WRITE;
        if (!writable && seen_write)
            return -EINVAL; /* readable after writable */
        seen_write |= writable;
        total += d.len;
        if (total > VQ_MAX_CHAIN_BYTES)
            return -E2BIG;
        if (d.len) {
            void *p = guest_mem_ptr(vq->mem, d.addr, d.len);
            if (!p)
                return -EFAULT;
            if (c->niov == max_iov)
                return -E2BIG;
            iov[c->niov++] = (struct iovec){p, d.len};
            if (writable)
                c->write_len += d.len;
            else
                c->read_len += d.len;
        }
        if (!writable)
            c->nread = c->niov;
        if (!(d.flags & VIRTQ_DESC_F_NEXT))
            return 0;
        i = d.next;
        if (i >= tsize)
            return -EINVAL;
    }
}

/* We wrote the used ring: migration must send its pages again. */
static void mark_used(struct virtqueue *vq)
{
    guest_mem_dirty(vq->mem, vq->used_gpa, USED_SIZE(vq->num));
}

static void set_avail_event(struct virtqueue *vq, uint16_t v)
{
    store16(vq->used + USED_RING(vq->num), v, __ATOMIC_RELAXED);
    mark_used(vq);
}

static int pop_locked(struct virtqueue *vq, struct vq_chain *c, struct iovec *iov, unsigned max_iov)
{
    if (!vq->ready)
        return 0;
    if (vq->broken)
        return -EIO;
    uint16_t avail = load16_acquire(vq->avail + AVAIL_IDX);
    if (avail == vq->last_avail && vq->event_idx) {
        /* Ask for a kick on the next buffer, then look again: the driver
         * may have added one before it saw avail_event. */
        set_avail_event(vq, vq->last_avail);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        avail = load16_acquire(vq->avail + AVAIL_IDX);
    }
    if (avail == vq->last_avail)
        return 0;
    if ((uint16_t)(avail - vq->last_avail) > vq->num) {
        vq->broken = true; /* the driver claims more buffers than the ring holds */
        return -EINVAL;
    }
    uint16_t head = load16(vq->avail + AVAIL_RING(vq->last_avail & (vq->num - 1)));
    int rc = walk_chain(vq, head, c, iov, max_iov);
    if (rc < 0) {
        vq->broken = true;
        return rc;
    }
    vq->last_avail++;
    if (vq->event_idx)
        set_avail_event(vq, vq->last_avail);
    return 1;
}

int vq_pop(struct virtqueue *vq, struct vq_chain *c, struct iovec *iov, unsigned max_iov)
{
    if (vq->dma_ok && !vq->dma_ok(vq->dma_ctx))
        return 0;
    pthread_mutex_lock(&vq->lock);
    int rc = pop_locked(vq, c, iov, max_iov);
    pthread_mutex_unlock(&vq->lock);
    return rc;
}

void vq_unpop(struct virtqueue *vq, unsigned n)
{
    pthread_mutex_lock(&vq->lock);
    if (vq->ready) {
        vq->last_avail = (uint16_t)(vq->last_avail - n);
        if (vq->event_idx)
            set_avail_event(vq, vq->last_avail);
    }
    pthread_mutex_unlock(&vq->lock);
}

/* virtio 1.x 2.7.10: interrupt iff used_event lies in (old, new]. */
static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

static bool push_locked(struct virtqueue *vq, const struct vq_used *u, unsigned n)
{
    if (!vq->ready || n == 0)
        return false;
    uint16_t old = vq->used_idx;
    for (unsigned k = 0; k < n; k++) {
        uint8_t *e = vq->used + USED_RING((uint16_t)(old + k) & (vq->num - 1));
        put32(e, u[k].head);
        put32(e + 4, u[k].len);
    }
    vq->used_idx = (uint16_t)(old + n);
    store16(vq->used + USED_IDX, vq->used_idx, __ATOMIC_RELEASE);
    mark_used(vq);
    /* Our used->idx store must be visible before we read the driver's
     * suppression state, which it writes before reading used->idx. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!vq->event_idx)
        return !(load16(vq->avail) & VIRTQ_AVAIL_F_NO_INTERRUPT);
    uint16_t ev = load16(vq->avail + AVAIL_RING(vq->num));
    bool valid = vq->signalled_valid;
    uint16_t since = vq->signalled_used;
    vq->signalled_valid = true;
    vq->signalled_used = vq->used_idx;
    return !valid || need_event(ev, vq->used_idx, since);
}

bool vq_push(struct virtqueue *vq, const struct vq_used *u, unsigned n)
{
    pthread_mutex_lock(&vq->lock);
    bool notify = push_locked(vq, u, n);
    pthread_mutex_unlock(&vq->lock);
    return notify;
}

void vq_debug(struct virtqueue *vq, char *buf, size_t len)
{
    if (pthread_mutex_trylock(&vq->lock) != 0) { /* a stuck holder must not stall the dump */
        snprintf(buf, len, "busy (lock held)");
        return;
    }
    if (!vq->ready)
        snprintf(buf, len, "not ready");
    else
        snprintf(buf, len,
                 "num %u last_avail %u avail.idx %u avail.flags %#x used_event %u used_idx %u "
                 "used.idx %u avail_event %u signalled %s%u%s",
                 vq->num, vq->last_avail, load16_acquire(vq->avail + AVAIL_IDX), load16(vq->avail),
                 load16(vq->avail + AVAIL_RING(vq->num)), vq->used_idx, load16(vq->used + USED_IDX),
                 load16(vq->used + USED_RING(vq->num)), vq->signalled_valid ? "" : "(invalid) ",
                 vq->signalled_used, vq->broken ? " BROKEN" : "");
    pthread_mutex_unlock(&vq->lock);
}

void vq_mark_written(struct virtqueue *vq, const struct iovec *iov, unsigned n, uint64_t nbytes)
{
    dma_dirty_iov(vq->mem, iov, n, nbytes);
}

/* ---- migration ---- */

void vq_save(struct virtqueue *vq, struct mig_out *o)
{
    pthread_mutex_lock(&vq->lock);
    mig_put_bool(o, vq->ready);
    mig_put_bool(o, vq->broken);
    mig_put_u16(o, vq->last_avail);
    mig_put_u16(o, vq->used_idx);
    mig_put_u16(o, vq->signalled_used);
    mig_put_bool(o, vq->signalled_valid);
    pthread_mutex_unlock(&vq->lock);
}

int vq_load(struct virtqueue *vq, struct mig_in *in)
{
    bool ready = mig_get_bool(in), broken = mig_get_bool(in);
    uint16_t last_avail = mig_get_u16(in), used_idx = mig_get_u16(in);
    uint16_t signalled = mig_get_u16(in);
    bool signalled_valid = mig_get_bool(in);
    if (!mig_in_ok(in))
        return -EINVAL;
    pthread_mutex_lock(&vq->lock);
    int rc = 0;
    if (ready != vq->ready) {
        rc = -EINVAL; /* the transport's enabled flag and the queue disagree */
    } else if (!ready) {
        if (broken || last_avail || used_idx || signalled || signalled_valid)
            rc = -EINVAL;
    } else if ((uint16_t)(last_avail - used_idx) > vq->num || (signalled_valid && !vq->event_idx)) {
        rc = -EINVAL; /* more chains outstanding than the ring holds */
    } else {
        vq->broken = broken;
        vq->last_avail = last_avail;
        vq->used_idx = used_idx;
        vq->signalled_used = signalled;
        vq->signalled_valid = signalled_valid;
    }
    pthread_mutex_unlock(&vq->lock);
    if (rc < 0)
        mig_in_fail(in);
    return rc;
}

size_t iov_to_buf(const struct iovec *iov, unsigned n, void *dst, size_t len)
{
    size_t done = 0;
    for (unsigned i = 0; i < n && done < len; i++) {
        size_t k = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
        memcpy((uint8_t *)dst + done, iov[i].iov_base, k);
        done += k;
    }
    return done;
}

size_t iov_from_buf(const struct iovec *iov, unsigned n, const void *src, size_t len)
{
    size_t done = 0;
    for (unsigned i = 0; i < n && done < len; i++) {
        size_t k = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
        memcpy(iov[i].iov_base, (const uint8_t *)src + done, k);
        done += k;
    }
    return done;
}
