/* SPDX-License-Identifier: MPL-2.0 */
/* blk_open(): picks the backend for a storage component; request checks. */
#include "backends/block.h"
#include "backends/backends.h"

#include <errno.h>
#include <time.h>

#include "backends/backends_int.h"

void be_comp_ptr(struct jptr *p, const struct spec_component *c, const char *field)
{
    struct jptr root;
    jptr_root(&root);
    jptr_key(p, &root, "components");
    jptr_key(p, p, c->key ? c->key : "");
    if (field)
        jptr_key(p, p, field);
}

double be_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int blk_open(const struct spec_component *c, struct blk_backend **out, struct cella_errors *errs)
{
    return blk_open_ex(c, 0, out, errs);
}

int blk_open_ex(const struct spec_component *c, unsigned flags, struct blk_backend **out,
                struct cella_errors *errs)
{
    struct jptr p;
    *out = NULL;
    switch (c->kind) {
    case SK_FILE_STORAGE_BACKEND:
        return blk_file_open(c, flags, out, errs);
    case SK_BLOB_STORAGE_BACKEND:
        return blk_blob_open(c, out, errs);
    case SK_NBD_STORAGE_BACKEND:
        return blk_nbd_open(c, out, errs);
    default:
        be_comp_ptr(&p, c, NULL);
        return cella_err(errs, -ENOTSUP, p.buf, "is not a storage backend this build can open");
    }
}

static int check_iov(const struct blk_req *req)
{
    if (req->iovcnt > BLK_MAX_IOV || (req->iovcnt && !req->iov))
        return -EINVAL;
    uint64_t sum = 0;
    for (unsigned i = 0; i < req->iovcnt; i++) {
        if (!req->iov[i].iov_base && req->iov[i].iov_len)
            return -EINVAL;
        if (__builtin_add_overflow(sum, (uint64_t)req->iov[i].iov_len, &sum))
            return -EINVAL;
    }
    if (sum != req->len || sum > BLK_MAX_REQ_LEN)
        return -EINVAL;
    return 0;
}

int blk_req_check(const struct blk_backend *b, const struct blk_req *req)
{
    const struct blk_info *in = &b->info;
    switch (req->op) {
    case BLK_FLUSH:
        return 0;
    case BLK_READ:
        break;
    case BLK_WRITE:
    case BLK_DISCARD:
    case BLK_WRITE_ZEROES:
        if (in->readonly)
            return -EROFS;
        break;
    default:
        return -EINVAL;
    }
    if (req->op == BLK_READ || req->op == BLK_WRITE) {
        int r = check_iov(req);
        if (r < 0)
            return r;
    }
    uint64_t bs = in->block_size ? in->block_size : BLK_SECTOR, end;
    if (req->offset % bs || req->len % bs)
        return -EINVAL;
    if (__builtin_add_overflow(req->offset, req->len, &end) || end > in->size)
        return -EINVAL;
    return 0;
}
