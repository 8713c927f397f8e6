/* SPDX-License-Identifier: MPL-2.0 */
/*
 * NBD backend through libnbd.
 *
 * Requests run on a small pool of worker threads, each with its own NBD
 * connection and libnbd's synchronous calls (one command in flight per
 * connection). Several connections are used only when the server
 * advertises multi-conn, because only then does a flush on one connection
 * cover writes acknowledged on another; otherwise there is one worker.
 *
 * Lost connections: a worker whose connection dies closes it and
 * reconnects at once; if that fails the backend is degraded
 * (BLK_EV_DEGRADED, once), and every worker keeps retrying with backoff
 * (50 ms doubling to 1 s) until a connection succeeds (BLK_EV_RECOVERED)
 * or the retry deadline, CELLA_NBD_RETRY_SECONDS (default 60) after the
 * loss, passes (BLK_EV_FAILED; from then on every request fails with
 * -EIO). The interrupted request is then sent again in full: a write is
 * reported done only once the server acknowledged it.
 */
#include "backends/block.h"

#include <errno.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/backends_int.h"
#include "common/log.h"

#define NBD_WORKERS         4u
#define NBD_CONNECT_TIMEOUT 10.0 /* seconds, per attempt */
#define NBD_DEFAULT_RETRY   60.0
#define NBD_MAX_IO          (32u << 20)
#define NBD_MAX_ZERO        (1u << 30) /* bytes per trim / zero command */
#define NBD_ZERO_BUF        (1u << 20)
#define NBD_LOST            1 /* do_req(): the connection is gone */

enum nbd_state { NBD_OK, NBD_DEGRADED, NBD_FAILED };

struct nbd_worker {
    struct nbd_handle *h; /* NULL when not connected */
    uint8_t *bounce;      /* for scattered reads and writes */
    size_t bounce_len;
};

struct nbd_backend {
    struct blk_backend b;
    char *uri;
    unsigned nworkers;
    struct nbd_worker *w;
    bool can_flush, can_trim, can_zero;
    uint64_t max_io;
    uint8_t *zeroes; /* NBD_ZERO_BUF zero bytes when the server cannot zero */
    double retry_s;
    struct be_pool pool;
    pthread_mutex_t state_lock;
    enum nbd_state state;
    double lost_at; /* when the backend became degraded */
};

static const struct blk_backend_ops nbd_ops;

/* ---- connections ---- */

static void set_msg(char *msg, size_t len, const char *fallback)
{
    const char *e = nbd_get_error();
    snprintf(msg, len, "%s", e && *e ? e : fallback);
}

/* Connects within `timeout` seconds; NULL with a message in msg on failure. */
static struct nbd_handle *connect_bounded(const char *uri, double timeout, char *msg, size_t msglen)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        set_msg(msg, msglen, "cannot create an NBD handle");
        return NULL;
    }
    nbd_set_uri_allow_local_file(h, false);
    if (nbd_aio_connect_uri(h, uri) == -1) {
        set_msg(msg, msglen, "connection failed");
        nbd_close(h);
        return NULL;
    }
    double end = be_now() + timeout;
    while (nbd_aio_is_connecting(h)) {
        double left = end - be_now();
        if (left <= 0) {
            snprintf(msg, msglen, "timed out after %.0f s", timeout);
            nbd_close(h);
            return NULL;
        }
        if (nbd_poll(h, left > 0.1 ? 100 : (int)(left * 1000) + 1) == -1)
            break;
    }
    if (!nbd_aio_is_ready(h)) {
        set_msg(msg, msglen, "the server ended the handshake");
        nbd_close(h);
        return NULL;
    }
    return h;
}

static void drop_handle(struct nbd_worker *w)
{
    if (!w->h)
        return;
    if (nbd_aio_is_ready(w->h))
        nbd_shutdown(w->h, 0);
    nbd_close(w->h);
    w->h = NULL;
}

static void emit(struct nbd_backend *nb, enum blk_event ev, const char *detail)
{
    static const char *const names[] = {"degraded", "recovered", "failed"};
    log_msg(ev == BLK_EV_RECOVERED ? LOG_INFO : LOG_WARN, "blk-nbd", "%s: %s: %s", nb->uri,
            names[ev], detail);
    if (nb->b.event_cb)
        nb->b.event_cb(nb->b.event_ctx, ev, detail);
}

static enum nbd_state get_state(struct nbd_backend *nb, double *lost_at)
{
    pthread_mutex_lock(&nb->state_lock);
    enum nbd_state s = nb->state;
    if (lost_at)
        *lost_at = nb->lost_at;
    pthread_mutex_unlock(&nb->state_lock);
    return s;
}

/* Moves from `from` (or any state but FAILED if from < 0) to `to`; emits once. */
static void transition(struct nbd_backend *nb, int from, enum nbd_state to, enum blk_event ev,
                       const char *detail)
{
    pthread_mutex_lock(&nb->state_lock);
    bool moved = nb->state != NBD_FAILED && nb->state != to && (from < 0 || (int)nb->state == from);
    if (moved) {
        nb->state = to;
        if (to == NBD_DEGRADED)
            nb->lost_at = be_now();
    }
    pthread_mutex_unlock(&nb->state_lock);
    if (moved)
        emit(nb, ev, detail);
}

static bool same_export(struct nbd_backend *nb, struct nbd_handle *h, char *msg, size_t len)
{
    int64_t size = nbd_get_size(h);
    if (size >= 0 && (uint64_t)size == nb->b.info.size)
        return true;
    snprintf(msg, len, "the export's size changed from %llu to %lld bytes",
             (unsigned long long)nb->b.info.size, (long long)size);
    return false;
}

/* Connects worker w, riding out an outage up to the deadline. 0 or -EIO. */
static int reconnect(struct nbd_backend *nb, struct nbd_worker *w)
{
    char msg[512], detail[700];
    double backoff = 0.05;
    for (;;) {
        double lost_at;
        enum nbd_state s = get_state(nb, &lost_at);
        if (s == NBD_FAILED)
            return -EIO;
        double left = s == NBD_DEGRADED ? lost_at + nb->retry_s - be_now() : nb->retry_s;
        if (left > 0) {
            double t = left < NBD_CONNECT_TIMEOUT ? left : NBD_CONNECT_TIMEOUT;
            w->h = connect_bounded(nb->uri, t, msg, sizeof(msg));
        }
        if (w->h && !same_export(nb, w->h, msg, sizeof(msg))) {
            drop_handle(w);
            snprintf(detail, sizeof(detail), "%s; not using it", msg);
            transition(nb, -1, NBD_FAILED, BLK_EV_FAILED, detail);
            return -EIO;
        }
        if (w->h) {
            snprintf(detail, sizeof(detail), "reconnected to %s", nb->uri);
            transition(nb, NBD_DEGRADED, NBD_OK, BLK_EV_RECOVERED, detail);
            return 0;
        }
        snprintf(detail, sizeof(detail),
                 "connection lost and reconnecting failed (%s); retrying for %.0f s", msg,
                 nb->retry_s);
        transition(nb, NBD_OK, NBD_DEGRADED, BLK_EV_DEGRADED, detail);
        if (left <= 0) {
            snprintf(detail, sizeof(detail), "no connection for %.0f s (%s); failing requests",
                     nb->retry_s, msg);
            transition(nb, -1, NBD_FAILED, BLK_EV_FAILED, detail);
            return -EIO;
        }
        if (s != NBD_DEGRADED)
            continue; /* the clock starts now: try again at once */
        double nap = backoff < left ? backoff : left;
        struct timespec ts = {(time_t)nap, (long)((nap - (double)(time_t)nap) * 1e9)};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 < 1.0 ? backoff * 2 : 1.0;
    }
}

/* ---- requests ---- */

/* 0 if rc succeeded, NBD_LOST if the connection is gone, else -errno. */
static int outcome(struct nbd_handle *h, int rc)
{
    if (rc != -1)
        return 0;
    int e = nbd_get_errno();
    if (!nbd_aio_is_ready(h) || e == ENOTCONN || e == ESHUTDOWN || e == ECONNRESET || e == EPIPE)
        return NBD_LOST;
    return e > 0 ? -e : -EIO;
}

static int chunked(struct nbd_backend *nb, struct nbd_handle *h, enum blk_op op, uint8_t *buf,
                   uint64_t off, uint64_t len)
{
    uint64_t max = op == BLK_READ || op == BLK_WRITE ? nb->max_io : NBD_MAX_ZERO;
    if (op == BLK_WRITE_ZEROES && !nb->can_zero)
        max = NBD_ZERO_BUF < nb->max_io ? NBD_ZERO_BUF : nb->max_io;
    while (len) {
        uint64_t n = len < max ? len : max;
        int rc;
        switch (op) {
        case BLK_READ:
            rc = nbd_pread(h, buf, n, off, 0);
            break;
        case BLK_WRITE:
            rc = nbd_pwrite(h, buf, n, off, 0);
            break;
        case BLK_DISCARD:
            rc = nbd_trim(h, n, off, 0);
            break;
        case BLK_WRITE_ZEROES:
            rc = nb->can_zero ? nbd_zero(h, n, off, 0) : nbd_pwrite(h, nb->zeroes, n, off, 0);
            break;
        default:
            return -EINVAL;
        }
        int r = outcome(h, rc);
        if (r)
            return r;
        off += n;
        len -= n;
        if (buf && op != BLK_WRITE_ZEROES)
            buf += n;
    }
    return 0;
}

static uint8_t *bounce(struct nbd_worker *w, size_t len)
{
    if (w->bounce_len < len) {
        uint8_t *p = realloc(w->bounce, len);
        if (!p)
            return NULL;
        w->bounce = p;
        w->bounce_len = len;
    }
    return w->bounce;
}

static int do_req(struct nbd_backend *nb, struct nbd_worker *w, struct blk_req *req)
{
    struct nbd_handle *h = w->h;
    uint8_t *buf;
    int r;
    switch (req->op) {
    case BLK_READ:
    case BLK_WRITE:
        if (!req->len)
            return 0;
        if (req->iovcnt == 1)
            return chunked(nb, h, req->op, req->iov[0].iov_base, req->offset, req->len);
        if (!(buf = bounce(w, req->len)))
            return -ENOMEM;
        if (req->op == BLK_WRITE) {
            size_t o = 0;
            for (unsigned i = 0; i < req->iovcnt; i++) {
                memcpy(buf + o, req->iov[i].iov_base, req->iov[i].iov_len);
                o += req->iov[i].iov_len;
            }
        }
        r = chunked(nb, h, req->op, buf, req->offset, req->len);
        if (r == 0 && req->op == BLK_READ) {
            size_t o = 0;
            for (unsigned i = 0; i < req->iovcnt; i++) {
                memcpy(req->iov[i].iov_base, buf + o, req->iov[i].iov_len);
                o += req->iov[i].iov_len;
            }
        }
        return r;
    case BLK_FLUSH:
        return nb->can_flush ? outcome(h, nbd_flush(h, 0)) : 0;
    case BLK_DISCARD:
        return nb->can_trim ? chunked(nb, h, req->op, NULL, req->offset, req->len) : 0;
    case BLK_WRITE_ZEROES:
        return chunked(nb, h, req->op, NULL, req->offset, req->len);
    }
    return -EINVAL;
}

static int nbd_run(void *ctx, unsigned worker, struct blk_req *req)
{
    struct nbd_backend *nb = ctx;
    struct nbd_worker *w = &nb->w[worker];
    for (;;) {
        if (get_state(nb, NULL) == NBD_FAILED) {
            drop_handle(w);
            return -EIO;
        }
        if (!w->h && reconnect(nb, w) < 0)
            return -EIO;
        int r = do_req(nb, w, req);
        if (r != NBD_LOST)
            return r;
        log_msg(LOG_WARN, "blk-nbd", "%s: connection lost (%s); reconnecting", nb->uri,
                nbd_get_error() ? nbd_get_error() : "?");
        drop_handle(w);
    }
}

static void nbd_submit(struct blk_backend *b, struct blk_req *req)
{
    struct nbd_backend *nb = (struct nbd_backend *)b;
    int r = blk_req_check(b, req);
    if (r < 0) {
        req->done(req, r);
        return;
    }
    be_pool_submit(&nb->pool, req);
}

static void nbd_drain(struct blk_backend *b)
{
    be_pool_drain(&((struct nbd_backend *)b)->pool);
}

static void nbd_free(struct nbd_backend *nb)
{
    be_pool_stop(&nb->pool);
    for (unsigned i = 0; nb->w && i < nb->nworkers; i++) {
        drop_handle(&nb->w[i]);
        free(nb->w[i].bounce);
    }
    free(nb->w);
    free(nb->zeroes);
    free(nb->uri);
    pthread_mutex_destroy(&nb->state_lock);
    free(nb);
}

static void nbd_close_backend(struct blk_backend *b)
{
    nbd_free((struct nbd_backend *)b);
}

static const struct blk_backend_ops nbd_ops = {
    .submit = nbd_submit,
    .drain = nbd_drain,
    .close = nbd_close_backend,
};

/* ---- open ---- */

static bool uri_scheme_ok(const char *uri)
{
    static const char *const schemes[] = {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://"};
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        if (!strncmp(uri, schemes[i], strlen(schemes[i])))
            return true;
    }
    return false;
}

static double retry_seconds(void)
{
    const char *s = getenv("CELLA_NBD_RETRY_SECONDS");
    if (!s || !*s)
        return NBD_DEFAULT_RETRY;
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v > 0 && v <= 86400)) {
        log_msg(LOG_WARN, "blk-nbd", "ignoring CELLA_NBD_RETRY_SECONDS=\"%s\"", s);
        return NBD_DEFAULT_RETRY;
    }
    return v;
}

/* Reads what the server offers from the first connection. */
static int learn_export(struct nbd_backend *nb, struct nbd_handle *h, bool readonly,
                        const char *ptr, struct cella_errors *errs)
{
    int64_t size = nbd_get_size(h);
    if (size <= 0)
        return cella_err(errs, -EIO, ptr, "NBD server at \"%s\" reports an empty export", nb->uri);
    int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    uint32_t bs = BLK_SECTOR;
    if (min > BLK_SECTOR) {
        if (min > 65536 || (min & (min - 1)))
            return cella_err(errs, -ENOTSUP, ptr,
                             "NBD server at \"%s\" needs %lld-byte blocks; cella supports "
                             "powers of two up to 65536",
                             nb->uri, (long long)min);
        bs = (uint32_t)min;
    }
    if ((uint64_t)size % bs)
        return cella_err(errs, -EINVAL, ptr,
                         "NBD export at \"%s\" is %lld bytes, which is not a whole number of "
                         "%u-byte blocks",
                         nb->uri, (long long)size, bs);
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    nb->max_io = max >= 65536 && max < NBD_MAX_IO ? (uint64_t)max / bs * bs : NBD_MAX_IO;
    nb->b.info.size = (uint64_t)size;
    nb->b.info.block_size = bs;
    nb->b.info.readonly = readonly || nbd_is_read_only(h) == 1;
    nb->can_flush = nbd_can_flush(h) == 1;
    nb->can_trim = nbd_can_trim(h) == 1;
    nb->can_zero = nbd_can_zero(h) == 1;
    nb->b.info.can_flush = nb->can_flush;
    nb->b.info.can_discard = !nb->b.info.readonly && nb->can_trim;
    nb->b.info.can_write_zeroes = !nb->b.info.readonly;
    nb->nworkers = nbd_can_multi_conn(h) == 1 ? NBD_WORKERS : 1;
    if (!nb->can_zero && !(nb->zeroes = calloc(1, NBD_ZERO_BUF)))
        return cella_err(errs, -ENOMEM, ptr, "out of memory");
    return 0;
}

int blk_nbd_open(const struct spec_component *c, struct blk_backend **out,
                 struct cella_errors *errs)
{
    const struct c_nbd_storage_backend *spec = &c->u.nbd_storage_backend;
    struct jptr p;
    be_comp_ptr(&p, c, "uri");
    const char *uri = spec->uri ? spec->uri : "";
    if (!uri_scheme_ok(uri))
        return cella_err(errs, -EINVAL, p.buf,
                         "\"%s\" is not an NBD URI (nbd://host[:port]/export or "
                         "nbd+unix:///export?socket=PATH)",
                         uri);
    struct nbd_backend *nb = calloc(1, sizeof(*nb));
    if (!nb || !(nb->uri = strdup(uri))) {
        free(nb);
        return cella_err(errs, -ENOMEM, p.buf, "out of memory");
    }
    nb->b.ops = &nbd_ops;
    pthread_mutex_init(&nb->state_lock, NULL);
    nb->retry_s = retry_seconds();
    char msg[512];
    struct nbd_handle *h = connect_bounded(uri, NBD_CONNECT_TIMEOUT, msg, sizeof(msg));
    if (!h) {
        nbd_free(nb);
        return cella_err(errs, -EHOSTUNREACH, p.buf,
                         "cannot connect to the NBD server at \"%s\": %s", uri, msg);
    }
    int r = learn_export(nb, h, spec->readonly, p.buf, errs);
    if (r == 0 && !(nb->w = calloc(nb->nworkers, sizeof(*nb->w))))
        r = cella_err(errs, -ENOMEM, p.buf, "out of memory");
    if (r < 0) {
        nbd_close(h);
        nbd_free(nb);
        return r;
    }
    nb->w[0].h = h; /* the others connect on first use */
    r = be_pool_start(&nb->pool, nb->nworkers, "cella-blk-n", nbd_run, nb);
    if (r < 0) {
        nbd_free(nb);
        return cella_err(errs, r, p.buf, "cannot start NBD threads: %s", strerror(-r));
    }
    *out = &nb->b;
    return 0;
}
