/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Blob backend: a disk image given inline in the spec as base64, decoded
 * into memory. Volatile: writes live as long as the backend (migration
 * carries them with blk_blob_contents()); flush has nothing to do.
 * Requests complete inline in blk_submit(), under a read-write lock.
 */
#include "backends/backends.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends_int.h"

#define BLOB_MAX_BYTES (64u << 20)

struct blob_backend {
    struct blk_backend b;
    pthread_rwlock_t lock;
    uint8_t *data;
    size_t len;
};

static const struct blk_backend_ops blob_ops;

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/*
 * Strict RFC 4648 base64: length a multiple of 4, the standard alphabet,
 * '=' only as the last one or two characters, and zero bits where padding
 * leaves some unused (so every image has exactly one encoding).
 * *out is malloc'd. -EINVAL if malformed.
 */
static int b64_decode(const char *s, uint8_t **out, size_t *outlen)
{
    size_t n = strlen(s);
    if (n == 0 || n % 4)
        return -EINVAL;
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    size_t len = n / 4 * 3 - pad;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int v[4];
        for (int k = 0; k < 4; k++) {
            bool is_pad = last && k >= 4 - (int)pad;
            v[k] = is_pad ? 0 : b64_value((unsigned char)s[i + k]);
            if (v[k] < 0) {
                free(buf);
                return -EINVAL;
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if (last && ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))) {
            free(buf);
            return -EINVAL; /* non-zero bits under the padding */
        }
        uint8_t bytes[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
        size_t take = last ? 3 - pad : 3;
        memcpy(buf + o, bytes, take);
        o += take;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

static void blob_submit(struct blk_backend *b, struct blk_req *req)
{
    struct blob_backend *bb = (struct blob_backend *)b;
    int r = blk_req_check(b, req);
    if (r < 0) {
        req->done(req, r);
        return;
    }
    uint64_t off = req->offset;
    switch (req->op) {
    case BLK_READ:
        pthread_rwlock_rdlock(&bb->lock);
        for (unsigned i = 0; i < req->iovcnt; i++) {
            memcpy(req->iov[i].iov_base, bb->data + off, req->iov[i].iov_len);
            off += req->iov[i].iov_len;
        }
        break;
    case BLK_WRITE:
        pthread_rwlock_wrlock(&bb->lock);
        for (unsigned i = 0; i < req->iovcnt; i++) {
            memcpy(bb->data + off, req->iov[i].iov_base, req->iov[i].iov_len);
            off += req->iov[i].iov_len;
        }
        break;
    case BLK_DISCARD:
    case BLK_WRITE_ZEROES:
        pthread_rwlock_wrlock(&bb->lock);
        memset(bb->data + off, 0, req->len);
        break;
    case BLK_FLUSH:
    default:
        req->done(req, 0);
        return;
    }
    pthread_rwlock_unlock(&bb->lock);
    req->done(req, 0);
}

static void blob_drain(struct blk_backend *b)
{
    /* Requests complete inline: nothing is ever in flight. */
}

static void blob_close(struct blk_backend *b)
{
    struct blob_backend *bb = (struct blob_backend *)b;
    pthread_rwlock_destroy(&bb->lock);
    free(bb->data);
    free(bb);
}

static const struct blk_backend_ops blob_ops = {
    .submit = blob_submit,
    .drain = blob_drain,
    .close = blob_close,
};

int blk_blob_contents(struct blk_backend *b, const uint8_t **data, size_t *len)
{
    if (!b || b->ops != &blob_ops)
        return -EINVAL;
    struct blob_backend *bb = (struct blob_backend *)b;
    *data = bb->data;
    *len = bb->len;
    return 0;
}

int blk_blob_set_contents(struct blk_backend *b, const uint8_t *data, size_t len)
{
    if (!b || b->ops != &blob_ops)
        return -EINVAL;
    struct blob_backend *bb = (struct blob_backend *)b;
    if (len != bb->len)
        return -EINVAL;
    pthread_rwlock_wrlock(&bb->lock);
    memcpy(bb->data, data, len);
    pthread_rwlock_unlock(&bb->lock);
    return 0;
}

int blk_blob_open(const struct spec_component *c, struct blk_backend **out,
                  struct cella_errors *errs)
{
    const struct c_blob_storage_backend *spec = &c->u.blob_storage_backend;
    struct jptr p;
    be_comp_ptr(&p, c, "base64");
    const char *s = spec->base64 ? spec->base64 : "";
    size_t n = strlen(s);
    if (n / 4 * 3 > BLOB_MAX_BYTES)
        return cella_err(errs, -E2BIG, p.buf, "decodes to more than the %u MiB a blob may hold",
                         BLOB_MAX_BYTES >> 20);
    uint8_t *data = NULL;
    size_t len = 0;
    int r = b64_decode(s, &data, &len);
    if (r == -ENOMEM)
        return cella_err(errs, r, p.buf, "out of memory decoding the blob");
    if (r < 0)
        return cella_err(errs, r, p.buf, "is not valid, non-empty, canonical base64");
    if (len == 0 || len % BLK_SECTOR) {
        free(data);
        return cella_err(errs, -EINVAL, p.buf,
                         "decodes to %zu bytes, which is not a whole, non-zero number of "
                         "512-byte sectors",
                         len);
    }
    struct blob_backend *bb = calloc(1, sizeof(*bb));
    if (!bb) {
        free(data);
        return cella_err(errs, -ENOMEM, p.buf, "out of memory");
    }
    pthread_rwlock_init(&bb->lock, NULL);
    bb->b.ops = &blob_ops;
    bb->data = data;
    bb->len = len;
    bb->b.info.size = len;
    bb->b.info.block_size = BLK_SECTOR;
    bb->b.info.readonly = spec->readonly;
    bb->b.info.can_discard = !spec->readonly;
    bb->b.info.can_write_zeroes = !spec->readonly;
    bb->b.info.can_flush = false;
    *out = &bb->b;
    return 0;
}
