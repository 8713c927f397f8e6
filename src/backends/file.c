/* SPDX-License-Identifier: MPL-2.0 */
/*
 * File backend: a regular file or a block device holding a raw disk image.
 *
 * Two descriptors on the image: `fd` (page cache; holds the flock that keeps
 * a second VM off the image) and `dfd` (O_DIRECT, or -1 where the file
 * system refuses it). A read or write whose offset, iovec addresses and
 * lengths meet the direct-I/O alignment goes to dfd; anything else goes to
 * fd. Both reach the same inode, so fdatasync on fd covers both, and the
 * kernel keeps the page cache coherent with direct I/O.
 *
 * Engine: one io_uring; if io_uring cannot be set up (seccomp, old kernel,
 * kernel.io_uring_disabled, or CELLA_BLK_FILE_THREADS=1) a pool of
 * `workers` threads doing the same system calls synchronously.
 *
 * Completions of the ring are reaped by whoever gets there first: the
 * submitting thread looks at the completion queue right after each
 * submission (an I/O the kernel finished inside io_uring_enter, as on a
 * page-cache hit or a RAM-backed disk, then completes right there), and
 * everything that finishes later is reaped either by a completion thread
 * sleeping on the ring's eventfd or, once an event loop attached
 * (blk_attach_loop), by that loop, which polls the ring's own fd. The
 * ring fd is ready only while completions wait, so an I/O completed inline
 * wakes nobody, where the eventfd would wake the completion thread for
 * every request. `cq_lock` makes the reaping exclusive; completions run
 * after it is dropped.
 */
#include "backends/backends.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backends_int.h"
#include "common/log.h"

#define FILE_RING_DEPTH      128u /* ops in the ring at once; more wait in `pending` */
#define FILE_DEFAULT_WORKERS 4u
#define ZERO_CHUNK           (64u << 10)
#define ZERO_IOV             64u /* a zero-filling write covers up to 4 MiB */
#define REAP_BATCH           32u

static const uint8_t zero_buf[ZERO_CHUNK] __attribute__((aligned(4096)));

/* One request on its way through the ring. */
struct file_op {
    struct blk_req *req;
    struct file_op *next; /* pending list */
    int fd;
    bool zero_fill;  /* writing zeroes with writev (no ZERO_RANGE) */
    uint64_t offset; /* next byte to transfer */
    uint64_t left;   /* bytes still to transfer */
    struct iovec *cur;
    unsigned curcnt;
    struct iovec iov[]; /* the request's iovecs, or ZERO_IOV for zero_fill */
};

struct file_backend {
    struct blk_backend b; /* first: the ops table casts */
    char *path;
    int fd;
    int dfd;
    uint32_t mem_align, off_align; /* for dfd */
    atomic_bool no_punch, no_zero_range, dio_broken;
    bool uring;
    /* io_uring engine */
    struct io_uring ring;
    pthread_mutex_t sq_lock; /* ring submission side, pending, ring_ops */
    struct file_op *pend_head, *pend_tail;
    unsigned ring_ops;
    pthread_mutex_t cq_lock; /* ring completion side */
    int cq_efd;              /* the ring's eventfd: a completion was posted */
    atomic_bool cq_stop;
    atomic_ullong reaped_inline, reaped_thread, reaped_loop; /* completions, by who reaped them */
    pthread_mutex_t loop_lock;                               /* loop_epfd: attach and detach */
    int loop_epfd; /* the attached event loop's epoll set, or -1 */
    pthread_t cq_thread;
    bool cq_running;
    struct be_inflight inflight;
    /* thread engine */
    struct be_pool pool;
};

static const struct blk_backend_ops file_ops;

/* ---- shared helpers ---- */

static bool dio_ok(struct file_backend *f, const struct blk_req *req)
{
    if (f->dfd < 0 || atomic_load(&f->dio_broken))
        return false;
    if (req->offset % f->off_align)
        return false;
    for (unsigned i = 0; i < req->iovcnt; i++) {
        if ((uintptr_t)req->iov[i].iov_base % f->mem_align || req->iov[i].iov_len % f->off_align)
            return false;
    }
    return true;
}

/* Skips n bytes of an iovec array (modifies the entries). */
static void iov_skip(struct iovec **iov, unsigned *cnt, uint64_t n)
{
    while (n && *cnt) {
        if (n < (*iov)->iov_len) {
            (*iov)->iov_base = (uint8_t *)(*iov)->iov_base + n;
            (*iov)->iov_len -= n;
            return;
        }
        n -= (*iov)->iov_len;
        (*iov)++;
        (*cnt)--;
    }
    while (*cnt && (*iov)->iov_len == 0) {
        (*iov)++;
        (*cnt)--;
    }
}

/* Points op->iov at zero_buf for the next zero-filling write. */
static void zero_iov_fill(struct file_op *op)
{
    uint64_t left = op->left;
    unsigned n = 0;
    while (left && n < ZERO_IOV) {
        size_t len = left < ZERO_CHUNK ? (size_t)left : ZERO_CHUNK;
        op->iov[n].iov_base = (void *)zero_buf;
        op->iov[n].iov_len = len;
        left -= len;
        n++;
    }
    op->cur = op->iov;
    op->curcnt = n;
}

static struct file_op *op_new(struct file_backend *f, struct blk_req *req)
{
    unsigned n = req->op == BLK_WRITE_ZEROES ? ZERO_IOV : req->iovcnt;
    struct file_op *op = calloc(1, sizeof(*op) + n * sizeof(struct iovec));
    if (!op)
        return NULL;
    op->req = req;
    op->offset = req->offset;
    op->left = req->len;
    op->fd = f->fd;
    if (req->op == BLK_READ || req->op == BLK_WRITE) {
        if (req->iovcnt)
            memcpy(op->iov, req->iov, req->iovcnt * sizeof(struct iovec));
        op->cur = op->iov;
        op->curcnt = req->iovcnt;
        if (dio_ok(f, req))
            op->fd = f->dfd;
    }
    return op;
}

static int fallocate_mode(const struct file_op *op)
{
    return op->req->op == BLK_DISCARD ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                                      : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
}

static bool falloc_unsupported(int e)
{
    return e == -EOPNOTSUPP || e == -ENOSYS || e == -EINVAL || e == -ENODEV;
}

/*
 * Moves an op on after a transfer returned res (bytes or -errno). Returns
 * 1 if more remains to transfer, 0 when finished, or a negative errno.
 */
static int op_advance(struct file_backend *f, struct file_op *op, long long res)
{
    if (res == -EINTR || res == -EAGAIN)
        return 1;
    if (res == -EINVAL && op->fd == f->dfd && op->fd >= 0) {
        /* The file system accepted O_DIRECT at open but not this I/O. */
        if (!atomic_exchange(&f->dio_broken, true))
            log_msg(LOG_WARN, "blk-file", "%s: direct I/O failed; using the page cache", f->path);
        op->fd = f->fd;
        return 1;
    }
    if (res < 0)
        return (int)res;
    if (res == 0 && op->left)
        return -EIO; /* end of file inside the disk: the image shrank */
    op->offset += (uint64_t)res;
    op->left -= (uint64_t)res;
    if (!op->left)
        return 0;
    if (op->zero_fill)
        zero_iov_fill(op);
    else
        iov_skip(&op->cur, &op->curcnt, (uint64_t)res);
    return 1;
}

/* Turns a write-zeroes op into writes of zero_buf. */
static void op_to_zero_fill(struct file_backend *f, struct file_op *op)
{
    if (!atomic_exchange(&f->no_zero_range, true))
        log_msg(LOG_INFO, "blk-file", "%s: no FALLOC_FL_ZERO_RANGE; writing zeroes", f->path);
    op->zero_fill = true;
    op->fd = f->fd;
    zero_iov_fill(op);
}

/* ---- thread engine: synchronous system calls ---- */

static int sync_transfer(struct file_backend *f, struct file_op *op)
{
    for (;;) {
        long long res;
        if (op->req->op == BLK_READ)
            res = preadv(op->fd, op->cur, (int)op->curcnt, (off_t)op->offset);
        else
            res = pwritev(op->fd, op->cur, (int)op->curcnt, (off_t)op->offset);
        if (res < 0)
            res = -errno;
        int r = op_advance(f, op, res);
        if (r <= 0)
            return r;
    }
}

static int sync_run(struct file_backend *f, struct file_op *op)
{
    int mode;
    switch (op->req->op) {
    case BLK_READ:
    case BLK_WRITE:
        return op->left ? sync_transfer(f, op) : 0;
    case BLK_FLUSH:
        return fdatasync(f->fd) < 0 ? -errno : 0;
    case BLK_DISCARD:
        if (atomic_load(&f->no_punch) || !op->left)
            return 0;
        mode = fallocate_mode(op);
        if (fallocate(f->fd, mode, (off_t)op->offset, (off_t)op->left) == 0)
            return 0;
        if (falloc_unsupported(-errno)) {
            atomic_store(&f->no_punch, true);
            return 0; /* discard is advisory */
        }
        return -errno;
    case BLK_WRITE_ZEROES:
        if (!op->left)
            return 0;
        if (!atomic_load(&f->no_zero_range)) {
            mode = fallocate_mode(op);
            if (fallocate(f->fd, mode, (off_t)op->offset, (off_t)op->left) == 0)
                return 0;
            if (!falloc_unsupported(-errno))
                return -errno;
        }
        op_to_zero_fill(f, op);
        for (;;) {
            long long res = pwritev(op->fd, op->cur, (int)op->curcnt, (off_t)op->offset);
            int r = op_advance(f, op, res < 0 ? -errno : res);
            if (r <= 0)
                return r;
        }
    }
    return -EINVAL;
}

static int pool_run(void *ctx, unsigned worker, struct blk_req *req)
{
    struct file_backend *f = ctx;
    struct file_op *op = op_new(f, req);
    if (!op)
        return -ENOMEM;
    int r = sync_run(f, op);
    free(op);
    return r;
}

/* ---- io_uring engine ---- */

/* Fills one SQE for op. Called with sq_lock held; the ring has room. */
static void ring_prep(struct file_backend *f, struct file_op *op)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&f->ring);
    /* ring_ops <= FILE_RING_DEPTH and the SQ is flushed each time: never NULL. */
    switch (op->req->op) {
    case BLK_READ:
        io_uring_prep_readv(sqe, op->fd, op->cur, op->curcnt, op->offset);
        break;
    case BLK_WRITE:
        io_uring_prep_writev(sqe, op->fd, op->cur, op->curcnt, op->offset);
        break;
    case BLK_FLUSH:
        io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
        break;
    case BLK_DISCARD:
    case BLK_WRITE_ZEROES:
        if (op->zero_fill)
            io_uring_prep_writev(sqe, op->fd, op->cur, op->curcnt, op->offset);
        else
            io_uring_prep_fallocate(sqe, f->fd, fallocate_mode(op), op->offset, op->left);
        break;
    }
    io_uring_sqe_set_data(sqe, op);
}

/* Submits what is in the SQ. Called with sq_lock held. */
static void ring_flush(struct file_backend *f)
{
    for (int tries = 0;; tries++) {
        int r = io_uring_submit(&f->ring);
        if (r >= 0 || (r != -EINTR && r != -EAGAIN && r != -EBUSY) || tries > 1000) {
            if (r < 0)
                log_msg(LOG_ERROR, "blk-file", "%s: io_uring_submit: %s", f->path, strerror(-r));
            return;
        }
        sched_yield();
    }
}

static void ring_reap_inline(struct file_backend *f);

static void ring_submit(struct file_backend *f, struct file_op *op)
{
    pthread_mutex_lock(&f->sq_lock);
    if (f->ring_ops >= FILE_RING_DEPTH) {
        op->next = NULL;
        if (f->pend_tail)
            f->pend_tail->next = op;
        else
            f->pend_head = op;
        f->pend_tail = op;
    } else {
        f->ring_ops++;
        ring_prep(f, op);
        ring_flush(f);
    }
    pthread_mutex_unlock(&f->sq_lock);
    ring_reap_inline(f);
}

/* Puts op back into the ring for the rest of its transfer. */
static void ring_resubmit(struct file_backend *f, struct file_op *op)
{
    pthread_mutex_lock(&f->sq_lock);
    ring_prep(f, op);
    ring_flush(f);
    pthread_mutex_unlock(&f->sq_lock);
}

static void ring_finish(struct file_backend *f, struct file_op *op, int result)
{
    pthread_mutex_lock(&f->sq_lock);
    struct file_op *next = f->pend_head;
    if (next) {
        f->pend_head = next->next;
        if (!f->pend_head)
            f->pend_tail = NULL;
        ring_prep(f, next); /* takes op's slot */
        ring_flush(f);
    } else {
        f->ring_ops--;
    }
    pthread_mutex_unlock(&f->sq_lock);
    struct blk_req *req = op->req;
    free(op);
    req->done(req, result);
    be_inflight_dec(&f->inflight);
}

static void ring_complete(struct file_backend *f, struct file_op *op, int res)
{
    int r;
    switch (op->req->op) {
    case BLK_READ:
    case BLK_WRITE:
        r = op_advance(f, op, res);
        break;
    case BLK_FLUSH:
        r = res == -EINTR || res == -EAGAIN ? 1 : res;
        break;
    case BLK_DISCARD:
        if (res < 0 && falloc_unsupported(res)) {
            atomic_store(&f->no_punch, true);
            res = 0;
        }
        r = res == -EINTR || res == -EAGAIN ? 1 : res;
        break;
    case BLK_WRITE_ZEROES:
        if (op->zero_fill) {
            r = op_advance(f, op, res);
        } else if (res < 0 && falloc_unsupported(res)) {
            op_to_zero_fill(f, op);
            r = 1;
        } else {
            r = res == -EINTR || res == -EAGAIN ? 1 : res;
        }
        break;
    default:
        r = -EINVAL;
    }
    if (r > 0)
        ring_resubmit(f, op);
    else
        ring_finish(f, op, r);
}

/*
 * Takes the completions posted so far (up to a batch) and completes them.
 * Returns how many. A submitter passes wait = false and leaves if another
 * thread is reaping; the completion thread waits for the lock instead, so
 * a completion posted just after a submitter's look (whose eventfd signal
 * the completion thread may already have consumed) is never stranded.
 */
static unsigned ring_reap(struct file_backend *f, bool wait)
{
    struct io_uring_cqe *cqes[REAP_BATCH];
    struct {
        struct file_op *op;
        int res;
    } got[REAP_BATCH];
    if (!wait && pthread_mutex_trylock(&f->cq_lock) != 0)
        return 0;
    if (wait)
        pthread_mutex_lock(&f->cq_lock);
    unsigned n = io_uring_peek_batch_cqe(&f->ring, cqes, REAP_BATCH);
    for (unsigned i = 0; i < n; i++) {
        got[i].op = io_uring_cqe_get_data(cqes[i]);
        got[i].res = cqes[i]->res;
    }
    io_uring_cq_advance(&f->ring, n);
    pthread_mutex_unlock(&f->cq_lock);
    if (!wait)
        atomic_fetch_add(&f->reaped_inline, n);
    for (unsigned i = 0; i < n; i++)
        ring_complete(f, got[i].op, got[i].res);
    return n;
}

/*
 * After a submission: complete what the kernel already finished. Not
 * nested (a completion that submits again leaves the rest to the loop
 * above it or to the completion thread), so the stack stays bounded.
 */
static void ring_reap_inline(struct file_backend *f)
{
    static __thread bool reaping;
    if (reaping)
        return;
    reaping = true;
    while (ring_reap(f, false))
        ;
    reaping = false;
}

/* Completes what the ring has posted, for the thread named by `counter`. */
static void ring_reap_all(struct file_backend *f, atomic_ullong *counter)
{
    unsigned n, total = 0;
    while ((n = ring_reap(f, true)))
        total += n;
    atomic_fetch_add(counter, total);
}

static void *cq_main(void *arg)
{
    struct file_backend *f = arg;
    while (!atomic_load(&f->cq_stop)) {
        uint64_t n;
        if (read(f->cq_efd, &n, sizeof(n)) < 0 && errno != EINTR && errno != EAGAIN) {
            log_msg(LOG_ERROR, "blk-file", "%s: completion eventfd: %s", f->path, strerror(errno));
            return NULL;
        }
        ring_reap_all(f, &f->reaped_thread);
    }
    return NULL;
}

static int ring_start(struct file_backend *f)
{
    if (getenv("CELLA_BLK_FILE_THREADS") && strcmp(getenv("CELLA_BLK_FILE_THREADS"), "0"))
        return -ENOTSUP;
    int r = io_uring_queue_init(FILE_RING_DEPTH, &f->ring, 0);
    if (r < 0)
        return r;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&f->ring);
    static const int need[] = {IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC,
                               IORING_OP_FALLOCATE, IORING_OP_NOP};
    for (size_t i = 0; probe && i < sizeof(need) / sizeof(need[0]); i++) {
        if (!io_uring_opcode_supported(probe, need[i]))
            r = -ENOTSUP;
    }
    if (!probe)
        r = -ENOTSUP;
    io_uring_free_probe(probe);
    if (r == 0) {
        f->cq_efd = eventfd(0, EFD_CLOEXEC);
        r = f->cq_efd < 0 ? -errno : io_uring_register_eventfd(&f->ring, f->cq_efd);
    }
    if (r == 0)
        r = -pthread_create(&f->cq_thread, NULL, cq_main, f);
    if (r < 0) {
        if (f->cq_efd >= 0)
            close(f->cq_efd);
        f->cq_efd = -1;
        io_uring_queue_exit(&f->ring);
        return r;
    }
    pthread_setname_np(f->cq_thread, "cella-blk-cq");
    f->cq_running = true;
    return 0;
}

static void ring_stop(struct file_backend *f)
{
    if (!f->cq_running)
        return;
    atomic_store(&f->cq_stop, true);
    uint64_t one = 1;
    while (write(f->cq_efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    pthread_join(f->cq_thread, NULL);
    io_uring_queue_exit(&f->ring);
    close(f->cq_efd);
    f->cq_efd = -1;
    f->cq_running = false;
}

/* ---- ops ---- */

static void file_submit(struct blk_backend *b, struct blk_req *req)
{
    struct file_backend *f = (struct file_backend *)b;
    int r = blk_req_check(b, req);
    if (r < 0) {
        req->done(req, r);
        return;
    }
    if (!f->uring) {
        be_pool_submit(&f->pool, req);
        return;
    }
    struct file_op *op = op_new(f, req);
    if (!op) {
        req->done(req, -ENOMEM);
        return;
    }
    if ((req->op == BLK_DISCARD && atomic_load(&f->no_punch)) ||
        ((req->op != BLK_FLUSH) && req->len == 0)) {
        free(op);
        req->done(req, 0);
        return;
    }
    if (req->op == BLK_WRITE_ZEROES && atomic_load(&f->no_zero_range))
        op_to_zero_fill(f, op);
    be_inflight_inc(&f->inflight);
    ring_submit(f, op);
}

static bool loop_attached(struct file_backend *f)
{
    pthread_mutex_lock(&f->loop_lock);
    bool on = f->loop_epfd >= 0;
    pthread_mutex_unlock(&f->loop_lock);
    return on;
}

static void file_drain(struct blk_backend *b)
{
    struct file_backend *f = (struct file_backend *)b;
    if (!f->uring) {
        be_pool_drain(&f->pool);
        return;
    }
    /*
     * With a loop attached, reap here too: the drain may run on the loop's
     * own thread (or after the loop stopped polling), and then nobody else
     * would complete what is left.
     */
    while (loop_attached(f) && !be_inflight_wait_ms(&f->inflight, 1))
        ring_reap_all(f, &f->reaped_loop);
    be_inflight_wait(&f->inflight);
}

static int file_attach_loop(struct blk_backend *b, int epfd, uint64_t tag)
{
    struct file_backend *f = (struct file_backend *)b;
    if (!f->uring)
        return 0; /* worker threads complete on their own */
    pthread_mutex_lock(&f->loop_lock);
    int r = f->loop_epfd >= 0 ? -EBUSY : 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag};
    if (r == 0 && epoll_ctl(epfd, EPOLL_CTL_ADD, f->ring.ring_fd, &ev) < 0)
        r = -errno;
    /* From here the loop sees every completion the eventfd would have announced. */
    if (r == 0 && (r = io_uring_unregister_eventfd(&f->ring)) < 0)
        epoll_ctl(epfd, EPOLL_CTL_DEL, f->ring.ring_fd, NULL);
    if (r == 0)
        f->loop_epfd = epfd;
    pthread_mutex_unlock(&f->loop_lock);
    return r;
}

static void file_detach_loop(struct blk_backend *b)
{
    struct file_backend *f = (struct file_backend *)b;
    pthread_mutex_lock(&f->loop_lock);
    if (f->loop_epfd >= 0) {
        int r = io_uring_register_eventfd(&f->ring, f->cq_efd);
        if (r < 0)
            log_msg(LOG_ERROR, "blk-file", "%s: io_uring_register_eventfd: %s", f->path,
                    strerror(-r));
        epoll_ctl(f->loop_epfd, EPOLL_CTL_DEL, f->ring.ring_fd, NULL);
        f->loop_epfd = -1;
        /* What was posted while the loop had the ring goes to the completion thread. */
        uint64_t one = 1;
        while (write(f->cq_efd, &one, sizeof(one)) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&f->loop_lock);
}

static void file_poll(struct blk_backend *b)
{
    struct file_backend *f = (struct file_backend *)b;
    if (f->uring)
        ring_reap_all(f, &f->reaped_loop);
}

static void file_free(struct file_backend *f)
{
    if (f->uring) {
        file_detach_loop(&f->b);
        ring_stop(f);
    } else
        be_pool_stop(&f->pool);
    if (f->dfd >= 0)
        close(f->dfd);
    if (f->fd >= 0)
        close(f->fd);
    be_inflight_destroy(&f->inflight);
    pthread_mutex_destroy(&f->sq_lock);
    pthread_mutex_destroy(&f->cq_lock);
    pthread_mutex_destroy(&f->loop_lock);
    free(f->path);
    free(f);
}

static void file_close(struct blk_backend *b)
{
    struct file_backend *fb = (struct file_backend *)b;
    if (fb->uring)
        log_msg(LOG_DEBUG, "blk-file",
                "%s: %llu completions reaped by the submitter, %llu by the completion "
                "thread, %llu by the event loop",
                fb->path, atomic_load(&fb->reaped_inline), atomic_load(&fb->reaped_thread),
                atomic_load(&fb->reaped_loop));
    file_drain(b);
    file_free(fb);
}

static const struct blk_backend_ops file_ops = {
    .submit = file_submit,
    .drain = file_drain,
    .close = file_close,
    .attach_loop = file_attach_loop,
    .detach_loop = file_detach_loop,
    .poll = file_poll,
};

const char *blk_file_engine(const struct blk_backend *b)
{
    if (!b || b->ops != &file_ops)
        return NULL;
    return ((const struct file_backend *)b)->uring ? "io_uring" : "threads";
}

int blk_file_is_direct(const struct blk_backend *b)
{
    if (!b || b->ops != &file_ops)
        return -EINVAL;
    const struct file_backend *f = (const struct file_backend *)b;
    return f->dfd >= 0 && !atomic_load(&f->dio_broken);
}

/* ---- open ---- */

static int image_size(struct file_backend *f, uint64_t *size)
{
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode))
        return ioctl(f->fd, BLKGETSIZE64, size) < 0 ? -errno : 0;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    *size = (uint64_t)st.st_size;
    return 0;
}

/* Opens dfd and learns its alignment; leaves dfd -1 where O_DIRECT fails. */
static void open_direct(struct file_backend *f, int flags, uint64_t size)
{
    f->dfd = open(f->path, flags | O_DIRECT);
    if (f->dfd < 0) {
        log_msg(LOG_INFO, "blk-file", "%s: O_DIRECT not available (%s); using the page cache",
                f->path, strerror(errno));
        return;
    }
    f->mem_align = 4096;
    f->off_align = 4096;
    struct statx sx;
    if (statx(f->dfd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_mem_align && sx.stx_dio_offset_align) {
        f->mem_align = sx.stx_dio_mem_align;
        f->off_align = sx.stx_dio_offset_align;
    }
    /* Probe: some file systems accept the flag but fail the I/O. */
    if (size >= f->off_align) {
        void *buf = NULL;
        if (posix_memalign(&buf, f->mem_align < 4096 ? 4096 : f->mem_align, f->off_align))
            return;
        ssize_t n = pread(f->dfd, buf, f->off_align, 0);
        free(buf);
        if (n < 0) {
            log_msg(LOG_INFO, "blk-file", "%s: direct read failed (%s); using the page cache",
                    f->path, strerror(errno));
            close(f->dfd);
            f->dfd = -1;
        }
    }
}

static int open_image(struct file_backend *f, const struct c_file_storage_backend *spec,
                      unsigned oflags, const char *ptr, struct cella_errors *errs)
{
    int flags = (spec->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    f->fd = open(f->path, flags);
    if (f->fd < 0) {
        int e = errno;
        return cella_err(errs, -e, ptr, "cannot open \"%s\"%s: %s", f->path,
                         spec->readonly ? " for reading" : " for reading and writing", strerror(e));
    }
    if (!(oflags & BLK_OPEN_NOLOCK) &&
        flock(f->fd, (spec->readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK)
            return cella_err(errs, -EBUSY, ptr,
                             "\"%s\" is locked by another process (another VM may be using "
                             "this image%s)",
                             f->path, spec->readonly ? " read-write" : "");
        return cella_err(errs, -e, ptr, "cannot lock \"%s\": %s", f->path, strerror(e));
    }
    uint64_t size = 0;
    int r = image_size(f, &size);
    if (r == -EINVAL)
        return cella_err(errs, r, ptr, "\"%s\" is neither a regular file nor a block device",
                         f->path);
    if (r < 0)
        return cella_err(errs, r, ptr, "cannot get the size of \"%s\": %s", f->path, strerror(-r));
    if (size == 0)
        return cella_err(errs, -EINVAL, ptr, "\"%s\" is empty", f->path);
    if (size % BLK_SECTOR)
        return cella_err(errs, -EINVAL, ptr,
                         "\"%s\" is %llu bytes, which is not a whole number of 512-byte sectors",
                         f->path, (unsigned long long)size);
    if (size % spec->block_size)
        return cella_err(errs, -EINVAL, ptr,
                         "\"%s\" is %llu bytes, which is not a whole number of %u-byte blocks",
                         f->path, (unsigned long long)size, spec->block_size);
    f->b.info.size = size;
    open_direct(f, flags, size);
    return 0;
}

int blk_file_open(const struct spec_component *c, unsigned oflags, struct blk_backend **out,
                  struct cella_errors *errs)
{
    const struct c_file_storage_backend *spec = &c->u.file_storage_backend;
    struct jptr p;
    uint32_t bs = spec->block_size;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1))) {
        be_comp_ptr(&p, c, "block_size");
        return cella_err(errs, -EINVAL, p.buf,
                         "block size %u must be a power of two from 512 to 65536", bs);
    }
    be_comp_ptr(&p, c, "path");
    if (!spec->path || !spec->path[0])
        return cella_err(errs, -EINVAL, p.buf, "a file backend needs a path");
    struct file_backend *f = calloc(1, sizeof(*f));
    if (!f || !(f->path = strdup(spec->path))) {
        free(f);
        return cella_err(errs, -ENOMEM, p.buf, "out of memory");
    }
    f->b.ops = &file_ops;
    f->fd = f->dfd = f->cq_efd = -1;
    pthread_mutex_init(&f->sq_lock, NULL);
    pthread_mutex_init(&f->cq_lock, NULL);
    pthread_mutex_init(&f->loop_lock, NULL);
    f->loop_epfd = -1;
    be_inflight_init(&f->inflight);
    f->b.info.block_size = bs;
    f->b.info.readonly = spec->readonly;
    f->b.info.can_flush = true;
    f->b.info.can_discard = !spec->readonly;
    f->b.info.can_write_zeroes = !spec->readonly;
    int r = open_image(f, spec, oflags, p.buf, errs);
    if (r < 0) {
        file_free(f);
        return r;
    }
    r = ring_start(f);
    if (r == 0) {
        f->uring = true;
    } else {
        if (r != -ENOTSUP)
            log_msg(LOG_INFO, "blk-file", "%s: io_uring unavailable (%s); using worker threads",
                    f->path, strerror(-r));
        unsigned n = spec->workers.present ? (unsigned)spec->workers.value : FILE_DEFAULT_WORKERS;
        if (n < 1 || n > 64)
            n = FILE_DEFAULT_WORKERS;
        r = be_pool_start(&f->pool, n, "cella-blk-f", pool_run, f);
        if (r < 0) {
            file_free(f);
            return cella_err(errs, r, p.buf, "cannot start I/O threads: %s", strerror(-r));
        }
    }
    *out = &f->b;
    return 0;
}
