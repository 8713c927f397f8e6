/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A memory disk behind struct blk_backend, for the NVMe unit test and
 * fuzzer. Requests complete inline, or (defer) wait in a list until
 * fake_blk_complete_all() or a drain completes them. Checks what a real
 * backend checks: ranges inside the disk, iov lengths summing to len,
 * writes refused when read-only.
 */
#ifndef CELLA_TESTS_NVME_FAKE_BLK_H
#define CELLA_TESTS_NVME_FAKE_BLK_H

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backends/block.h"

#define FAKE_BLK_MAX_PENDING 4096

struct fake_blk {
    struct blk_backend b;
    uint8_t *disk;
    bool defer;
    int fail_with; /* nonzero: every request fails with it */
    pthread_mutex_t lock;
    struct blk_req *pending[FAKE_BLK_MAX_PENDING];
    unsigned npending;
    unsigned nread, nwrite, nflush, ndiscard, nwz, nbad;
    /* When set: every buffer must lie in [ram_lo, ram_hi) (guest RAM). */
    const uint8_t *ram_lo, *ram_hi;
};

static bool fake_blk_iov_ok(const struct fake_blk *f, const struct iovec *v)
{
    const uint8_t *p = v->iov_base;
    if (!f->ram_lo)
        return true;
    return p >= f->ram_lo && p <= f->ram_hi && v->iov_len <= (size_t)(f->ram_hi - p);
}

static int fake_blk_exec(struct fake_blk *f, struct blk_req *r)
{
    const struct blk_info *bi = &f->b.info;
    if (f->fail_with)
        return f->fail_with;
    if (r->op != BLK_FLUSH && (r->offset > bi->size || r->len > bi->size - r->offset)) {
        f->nbad++;
        return -EINVAL;
    }
    if (bi->readonly && r->op != BLK_READ && r->op != BLK_FLUSH)
        return -EROFS;
    uint64_t sum = 0;
    switch (r->op) {
    case BLK_READ:
    case BLK_WRITE:
        if (r->iovcnt > BLK_MAX_IOV || r->len > BLK_MAX_REQ_LEN) {
            f->nbad++;
            return -EINVAL;
        }
        for (unsigned i = 0; i < r->iovcnt; i++) {
            if (!fake_blk_iov_ok(f, &r->iov[i])) {
                f->nbad++;
                return -EINVAL;
            }
            uint8_t *d = f->disk + r->offset + sum;
            sum += r->iov[i].iov_len;
            if (sum > r->len)
                break;
            if (r->op == BLK_READ)
                memcpy(r->iov[i].iov_base, d, r->iov[i].iov_len);
            else
                memcpy(d, r->iov[i].iov_base, r->iov[i].iov_len);
        }
        if (sum != r->len) {
            f->nbad++;
            return -EINVAL;
        }
        if (r->op == BLK_READ)
            f->nread++;
        else
            f->nwrite++;
        return 0;
    case BLK_FLUSH:
        f->nflush++;
        return 0;
    case BLK_DISCARD:
        f->ndiscard++;
        memset(f->disk + r->offset, 0xdd, r->len);
        return 0;
    case BLK_WRITE_ZEROES:
        f->nwz++;
        memset(f->disk + r->offset, 0, r->len);
        return 0;
    }
    return -EINVAL;
}

static void fake_blk_submit(struct blk_backend *b, struct blk_req *r)
{
    struct fake_blk *f = (struct fake_blk *)b;
    pthread_mutex_lock(&f->lock);
    if (f->defer && f->npending < FAKE_BLK_MAX_PENDING) {
        f->pending[f->npending++] = r;
        pthread_mutex_unlock(&f->lock);
        return;
    }
    int res = fake_blk_exec(f, r);
    pthread_mutex_unlock(&f->lock);
    r->done(r, res);
}

/* Completes up to `max` deferred requests, oldest first. Returns how many. */
static unsigned fake_blk_complete(struct fake_blk *f, unsigned max)
{
    unsigned done = 0;
    while (done < max) {
        pthread_mutex_lock(&f->lock);
        if (!f->npending) {
            pthread_mutex_unlock(&f->lock);
            break;
        }
        struct blk_req *r = f->pending[0];
        memmove(f->pending, f->pending + 1, --f->npending * sizeof(f->pending[0]));
        int res = fake_blk_exec(f, r);
        pthread_mutex_unlock(&f->lock);
        r->done(r, res);
        done++;
    }
    return done;
}

static void fake_blk_drain(struct blk_backend *b)
{
    fake_blk_complete((struct fake_blk *)b, ~0u);
}

static void fake_blk_close(struct blk_backend *b)
{
    struct fake_blk *f = (struct fake_blk *)b;
    fake_blk_drain(b);
    pthread_mutex_destroy(&f->lock);
    free(f->disk);
    free(f);
}

static const struct blk_backend_ops fake_blk_ops = {
    .submit = fake_blk_submit, .drain = fake_blk_drain, .close = fake_blk_close};

static struct fake_blk *fake_blk_new(uint64_t size, uint32_t block_size)
{
    struct fake_blk *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->disk = calloc(1, size ? size : 1);
    if (!f->disk) {
        free(f);
        return NULL;
    }
    pthread_mutex_init(&f->lock, NULL);
    f->b.ops = &fake_blk_ops;
    f->b.info = (struct blk_info){.size = size,
                                  .block_size = block_size,
                                  .can_discard = true,
                                  .can_write_zeroes = true,
                                  .can_flush = true};
    return f;
}

#endif
