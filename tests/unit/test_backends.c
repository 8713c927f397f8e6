/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Block and network backends (src/backends) against real files, an nbdkit
 * server on a unix socket and a real tap interface: data round trips,
 * request checks, locking, both file engines (io_uring and worker threads),
 * NBD reconnection and its retry deadline, tap attach errors and frames in
 * both directions. NBD tests skip only if nbdkit is not installed; tap tests
 * skip without root, /dev/net/tun or `ip`.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backends/backends.h"
#include "backends/block.h"
#include "backends/net.h"
#include "backends/set.h"

/* ---- helpers ---- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    if (tmpdir[0])
        return;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cella-backends-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    if (!tmpdir[0])
        return;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
}

/* Creates dir/name of `size` bytes filled with byte `fill`; returns its path (static). */
static const char *make_file_in(const char *dir, const char *name, size_t size, uint8_t fill)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    uint8_t *buf = malloc(size ? size : 1);
    memset(buf, fill, size);
    assert_int_equal(pwrite(fd, buf, size, 0), (ssize_t)size);
    free(buf);
    close(fd);
    return path;
}

static const char *make_file(const char *name, size_t size, uint8_t fill)
{
    make_tmpdir();
    return make_file_in(tmpdir, name, size, fill);
}

static struct spec_component file_comp(const char *path, uint32_t bs, bool ro)
{
    struct spec_component c;
    memset(&c, 0, sizeof(c));
    c.key = (char *)"disk0";
    c.kind = SK_FILE_STORAGE_BACKEND;
    c.u.file_storage_backend.block_size = bs;
    c.u.file_storage_backend.path = (char *)path;
    c.u.file_storage_backend.readonly = ro;
    return c;
}

static bool has_error(const struct cella_errors *e, const char *pointer, const char *needle)
{
    for (size_t i = 0; i < e->count; i++) {
        if (!strcmp(e->items[i].pointer, pointer) && strstr(e->items[i].message, needle))
            return true;
    }
    if (e->count)
        print_message("errors: %s: %s\n", e->items[0].pointer, e->items[0].message);
    return false;
}

/* A request with a waiter: submit() then wait(). */
struct waited {
    struct blk_req req;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    int result;
};

static void waited_done(struct blk_req *req, int result)
{
    struct waited *w = req->opaque;
    pthread_mutex_lock(&w->lock);
    w->done++;
    w->result = result;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void waited_init(struct waited *w, enum blk_op op, uint64_t off, uint64_t len,
                        struct iovec *iov, unsigned cnt)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->req.op = op;
    w->req.offset = off;
    w->req.len = len;
    w->req.iov = iov;
    w->req.iovcnt = cnt;
    w->req.done = waited_done;
    w->req.opaque = w;
}

static int waited_wait(struct waited *w)
{
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        pthread_cond_wait(&w->cond, &w->lock);
    int r = w->result;
    pthread_mutex_unlock(&w->lock);
    assert_int_equal(w->done, 1);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    return r;
}

static int do_io(struct blk_backend *b, enum blk_op op, uint64_t off, struct iovec *iov,
                 unsigned cnt)
{
    uint64_t len = 0;
    for (unsigned i = 0; i < cnt; i++)
        len += iov[i].iov_len;
    struct waited w;
    waited_init(&w, op, off, len, iov, cnt);
    blk_submit(b, &w.req);
    return waited_wait(&w);
}

static int do_buf(struct blk_backend *b, enum blk_op op, uint64_t off, void *buf, size_t len)
{
    struct iovec iov = {buf, len};
    return do_io(b, op, off, &iov, 1);
}

static int do_range(struct blk_backend *b, enum blk_op op, uint64_t off, uint64_t len)
{
    struct waited w;
    waited_init(&w, op, off, len, NULL, 0);
    blk_submit(b, &w.req);
    return waited_wait(&w);
}

static void *aligned(size_t len)
{
    void *p = NULL;
    assert_int_equal(posix_memalign(&p, 4096, len), 0);
    return p;
}

static void fill_pattern(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 7 + seed * 13 + (i >> 9));
}

static void file_pread(const char *path, void *buf, size_t len, off_t off)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

static struct blk_backend *open_ok(const struct spec_component *c)
{
    struct cella_errors errs = {0};
    struct blk_backend *b = NULL;
    int r = blk_open(c, &b, &errs);
    if (r < 0 && errs.count)
        print_message("open: %s: %s\n", errs.items[0].pointer, errs.items[0].message);
    assert_int_equal(r, 0);
    assert_non_null(b);
    cella_errors_clear(&errs);
    return b;
}

/* ---- file backend, run once per engine ---- */

/* Whether this kernel (and seccomp policy) lets a process set up an io_uring. */
static bool uring_available(void)
{
    struct io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) < 0) {
        print_message("io_uring is unavailable here: the file backend uses threads\n");
        return false;
    }
    io_uring_queue_exit(&ring);
    return true;
}

/* Whether the file system under path takes O_DIRECT (tmpfs before Linux 6.6 does not). */
static int direct_supported(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0)
        return 0;
    void *buf = aligned(4096);
    ssize_t n = pread(fd, buf, 4096, 0);
    free(buf);
    close(fd);
    return n == 4096;
}

static void set_engine(bool threads)
{
    if (threads)
        setenv("CELLA_BLK_FILE_THREADS", "1", 1);
    else
        unsetenv("CELLA_BLK_FILE_THREADS");
}

static void file_roundtrip(bool threads)
{
    set_engine(threads);
    const char *path = make_file("rt.img", 1 << 20, 0xaa);
    struct spec_component c = file_comp(path, 512, false);
    struct blk_backend *b = open_ok(&c);
    assert_string_equal(blk_file_engine(b), threads || !uring_available() ? "threads" : "io_uring");
    assert_int_equal(b->info.size, 1 << 20);
    assert_int_equal(b->info.block_size, 512);
    assert_false(b->info.readonly);
    assert_true(b->info.can_flush && b->info.can_discard && b->info.can_write_zeroes);
    assert_int_equal(blk_file_is_direct(b), direct_supported(path));

    /* Aligned buffers: the O_DIRECT path. */
    uint8_t *w = aligned(8192), *r = aligned(8192), chk[8192];
    fill_pattern(w, 8192, 1);
    assert_int_equal(do_buf(b, BLK_WRITE, 4096, w, 8192), 0);
    memset(r, 0, 8192);
    assert_int_equal(do_buf(b, BLK_READ, 4096, r, 8192), 0);
    assert_memory_equal(r, w, 8192);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    file_pread(path, chk, 8192, 4096);
    assert_memory_equal(chk, w, 8192);
    file_pread(path, chk, 512, 3584); /* the neighbour is untouched */
    for (int i = 0; i < 512; i++)
        assert_int_equal(chk[i], 0xaa);

    /* Unaligned iovecs (odd addresses and lengths): the page-cache path. */
    uint8_t *raw = malloc(2048 + 3), *u = raw + 3;
    fill_pattern(u, 1536, 2);
    struct iovec wv[3] = {{u, 100}, {u + 100, 412}, {u + 512, 1024}};
    assert_int_equal(do_io(b, BLK_WRITE, 512 * 3, wv, 3), 0);
    uint8_t *raw2 = malloc(2048 + 5), *u2 = raw2 + 5;
    memset(u2, 0, 1536);
    struct iovec rv[4] = {{u2, 1}, {u2 + 1, 1000}, {u2 + 1001, 35}, {u2 + 1036, 500}};
    assert_int_equal(do_io(b, BLK_READ, 512 * 3, rv, 4), 0);
    assert_memory_equal(u2, u, 1536);
    /* Mixed: the aligned read sees the buffered write. */
    assert_int_equal(do_buf(b, BLK_READ, 0, r, 4096), 0);
    assert_memory_equal(r + 1536, u, 1536);
    free(raw);
    free(raw2);

    /* Write zeroes: zeroes, neighbours kept, size kept. */
    fill_pattern(w, 8192, 3);
    assert_int_equal(do_buf(b, BLK_WRITE, 65536, w, 8192), 0);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 65536 + 1024, 4096), 0);
    assert_int_equal(do_buf(b, BLK_READ, 65536, r, 8192), 0);
    assert_memory_equal(r, w, 1024);
    for (int i = 1024; i < 1024 + 4096; i++)
        assert_int_equal(r[i], 0);
    assert_memory_equal(r + 5120, w + 5120, 3072);
    /* Discard: succeeds, data afterwards unspecified, size kept. */
    assert_int_equal(do_range(b, BLK_DISCARD, 128 << 10, 64 << 10), 0);
    assert_int_equal(do_range(b, BLK_DISCARD, 0, 0), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 1 << 20);
    /* A zero-length read is a no-op. */
    assert_int_equal(do_io(b, BLK_READ, 0, NULL, 0), 0);
    blk_close(b);
    free(w);
    free(r);
    set_engine(false);
}

static void test_file_roundtrip_uring(void **state)
{
    file_roundtrip(false);
}

static void test_file_roundtrip_threads(void **state)
{
    file_roundtrip(true);
}

static void file_checks(bool threads)
{
    set_engine(threads);
    const char *path = make_file("chk.img", 64 << 10, 0);
    struct spec_component c = file_comp(path, 4096, false);
    struct blk_backend *b = open_ok(&c);
    uint8_t *buf = aligned(1 << 20);
    /* Block size honoured. */
    assert_int_equal(b->info.block_size, 4096);
    assert_int_equal(do_buf(b, BLK_READ, 512, buf, 4096), -EINVAL);
    assert_int_equal(do_buf(b, BLK_READ, 0, buf, 512), -EINVAL);
    assert_int_equal(do_buf(b, BLK_READ, 4096, buf, 4096), 0);
    /* Range. */
    assert_int_equal(do_buf(b, BLK_READ, 64 << 10, buf, 4096), -EINVAL);
    assert_int_equal(do_buf(b, BLK_WRITE, 60 << 10, buf, 8192), -EINVAL);
    assert_int_equal(do_range(b, BLK_DISCARD, UINT64_MAX - 4095, 8192), -EINVAL);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 0, 128 << 10), -EINVAL);
    /* Malformed requests. */
    struct waited w;
    struct iovec iov = {buf, 4096};
    waited_init(&w, BLK_READ, 0, 8192, &iov, 1); /* len != iovecs */
    blk_submit(b, &w.req);
    assert_int_equal(waited_wait(&w), -EINVAL);
    waited_init(&w, (enum blk_op)42, 0, 0, NULL, 0);
    blk_submit(b, &w.req);
    assert_int_equal(waited_wait(&w), -EINVAL);
    struct iovec many[BLK_MAX_IOV + 1];
    for (unsigned i = 0; i <= BLK_MAX_IOV; i++)
        many[i] = (struct iovec){buf, 4096 / 8};
    assert_int_equal(do_io(b, BLK_READ, 0, many, BLK_MAX_IOV + 1), -EINVAL);
    assert_int_equal(do_io(b, BLK_READ, 0, many, 8), 0); /* the neighbour passes */
    blk_close(b);

    /* The image shrinks under the backend: a read past EOF is -EIO, not a hang. */
    b = open_ok(&c);
    assert_int_equal(truncate(path, 32 << 10), 0);
    assert_int_equal(do_buf(b, BLK_READ, 48 << 10, buf, 4096), -EIO);
    blk_close(b);
    free(buf);
    set_engine(false);
}

static void test_file_checks_uring(void **state)
{
    file_checks(false);
}

static void test_file_checks_threads(void **state)
{
    file_checks(true);
}

static void test_file_readonly(void **state)
{
    const char *path = make_file("ro.img", 64 << 10, 0x5a);
    struct spec_component c = file_comp(path, 512, true);
    struct blk_backend *b = open_ok(&c);
    assert_true(b->info.readonly);
    assert_false(b->info.can_discard || b->info.can_write_zeroes);
    uint8_t *buf = aligned(4096);
    assert_int_equal(do_buf(b, BLK_READ, 0, buf, 4096), 0);
    assert_int_equal(buf[100], 0x5a);
    assert_int_equal(do_buf(b, BLK_WRITE, 0, buf, 4096), -EROFS);
    assert_int_equal(do_range(b, BLK_DISCARD, 0, 4096), -EROFS);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 0, 4096), -EROFS);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    /* Two readers may share an image; a writer may not join them. */
    struct blk_backend *b2 = open_ok(&c);
    struct spec_component rw = file_comp(path, 512, false);
    struct cella_errors errs = {0};
    struct blk_backend *b3 = NULL;
    assert_int_equal(blk_open(&rw, &b3, &errs), -EBUSY);
    assert_null(b3);
    assert_true(has_error(&errs, "/components/disk0/path", path));
    cella_errors_clear(&errs);
    blk_close(b2);
    blk_close(b);
    free(buf);
}

static void test_file_lock(void **state)
{
    const char *path = make_file("lock.img", 64 << 10, 0);
    char p[256];
    snprintf(p, sizeof(p), "%s", path);
    struct spec_component c = file_comp(p, 512, false);
    struct blk_backend *b = open_ok(&c);
    struct cella_errors errs = {0};
    struct blk_backend *b2 = NULL;
    assert_int_equal(blk_open(&c, &b2, &errs), -EBUSY);
    assert_true(has_error(&errs, "/components/disk0/path", "locked by another process"));
    assert_true(has_error(&errs, "/components/disk0/path", p));
    cella_errors_clear(&errs);
    struct spec_component ro = file_comp(p, 512, true);
    assert_int_equal(blk_open(&ro, &b2, &errs), -EBUSY);
    cella_errors_clear(&errs);
    blk_close(b);
    /* Released on close. */
    b = open_ok(&c);
    blk_close(b);
}

static void test_file_open_errors(void **state)
{
    struct cella_errors errs = {0};
    struct blk_backend *b = NULL;
    const char *path = make_file("odd.img", 1000, 0);
    char p[256];
    snprintf(p, sizeof(p), "%s", path);
    struct spec_component c = file_comp(p, 512, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/disk0/path", "not a whole number of 512-byte"));
    cella_errors_clear(&errs);

    path = make_file("sz.img", 512 * 3, 0);
    snprintf(p, sizeof(p), "%s", path);
    c = file_comp(p, 1024, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/disk0/path", "1024-byte blocks"));
    cella_errors_clear(&errs);

    c = file_comp(p, 1000, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/disk0/block_size", "power of two"));
    cella_errors_clear(&errs);
    c = file_comp(p, 256, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    cella_errors_clear(&errs);

    path = make_file("empty.img", 0, 0);
    snprintf(p, sizeof(p), "%s", path);
    c = file_comp(p, 512, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/disk0/path", "empty"));
    cella_errors_clear(&errs);

    c = file_comp("/nonexistent/cella/disk.img", 512, false);
    assert_int_equal(blk_open(&c, &b, &errs), -ENOENT);
    assert_true(has_error(&errs, "/components/disk0/path", "/nonexistent/cella/disk.img"));
    cella_errors_clear(&errs);

    c = file_comp(tmpdir, 512, false); /* a directory */
    assert_true(blk_open(&c, &b, &errs) < 0);
    cella_errors_clear(&errs);

    /* A key with '/' is escaped in the pointer. */
    c = file_comp("/nonexistent", 512, false);
    c.key = (char *)"a/b";
    assert_int_equal(blk_open(&c, &b, &errs), -ENOENT);
    assert_true(has_error(&errs, "/components/a~1b/path", "nonexistent"));
    cella_errors_clear(&errs);

    /* Not a storage backend. */
    c.kind = SK_VIRTIO_DISK;
    assert_int_equal(blk_open(&c, &b, &errs), -ENOTSUP);
    cella_errors_clear(&errs);
    assert_null(b);
}

/* Many requests at once from several threads, more than the ring holds. */
#define CONC_THREADS 4
#define CONC_REQS    300 /* per thread */

struct conc {
    struct blk_backend *b;
    unsigned id;
    uint8_t *buf; /* CONC_REQS * 4096 */
    struct blk_req reqs[CONC_REQS];
    struct iovec iov[CONC_REQS];
    int errors;
    int completed;
    pthread_mutex_t lock;
};

static void conc_done(struct blk_req *req, int result)
{
    struct conc *c = req->opaque;
    pthread_mutex_lock(&c->lock);
    c->completed++;
    if (result)
        c->errors++;
    pthread_mutex_unlock(&c->lock);
}

static void *conc_main(void *arg)
{
    struct conc *c = arg;
    for (unsigned i = 0; i < CONC_REQS; i++) {
        uint64_t blk = (uint64_t)i * CONC_THREADS + c->id;
        c->iov[i] = (struct iovec){c->buf + i * 4096, 4096};
        fill_pattern(c->iov[i].iov_base, 4096, (unsigned)blk);
        c->reqs[i] = (struct blk_req){.op = BLK_WRITE,
                                      .offset = blk * 4096,
                                      .len = 4096,
                                      .iov = &c->iov[i],
                                      .iovcnt = 1,
                                      .done = conc_done,
                                      .opaque = c};
        blk_submit(c->b, &c->reqs[i]);
    }
    return NULL;
}

static void file_concurrent(bool threads)
{
    set_engine(threads);
    size_t size = (size_t)CONC_THREADS * CONC_REQS * 4096;
    const char *path = make_file("conc.img", size, 0);
    char p[256];
    snprintf(p, sizeof(p), "%s", path);
    struct spec_component c = file_comp(p, 512, false);
    c.u.file_storage_backend.workers = (struct opt_u64){.present = true, .value = 8};
    struct blk_backend *b = open_ok(&c);
    struct conc cs[CONC_THREADS];
    pthread_t th[CONC_THREADS];
    for (unsigned t = 0; t < CONC_THREADS; t++) {
        memset(&cs[t], 0, sizeof(cs[t]));
        cs[t].b = b;
        cs[t].id = t;
        cs[t].buf = aligned(CONC_REQS * 4096);
        pthread_mutex_init(&cs[t].lock, NULL);
        assert_int_equal(pthread_create(&th[t], NULL, conc_main, &cs[t]), 0);
    }
    for (unsigned t = 0; t < CONC_THREADS; t++)
        pthread_join(th[t], NULL);
    blk_drain(b);
    for (unsigned t = 0; t < CONC_THREADS; t++) {
        assert_int_equal(cs[t].completed, CONC_REQS);
        assert_int_equal(cs[t].errors, 0);
    }
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    blk_close(b);
    uint8_t *img = malloc(size), want[4096];
    file_pread(p, img, size, 0);
    for (uint64_t blk = 0; blk < size / 4096; blk++) {
        fill_pattern(want, 4096, (unsigned)blk);
        assert_memory_equal(img + blk * 4096, want, 4096);
    }
    free(img);
    for (unsigned t = 0; t < CONC_THREADS; t++) {
        free(cs[t].buf);
        pthread_mutex_destroy(&cs[t].lock);
    }
    set_engine(false);
}

/* ---- completions reaped by an event loop (blk_attach_loop) ---- */

#define LOOP_TAG 0x77ull

/*
 * One epoll_wait, again after EINTR: io_uring's task work interrupts the
 * submitting thread's system calls when it posts a completion.
 */
static int epoll_one(int epfd, struct epoll_event *ev, int timeout_ms)
{
    int n;
    while ((n = epoll_wait(epfd, ev, 1, timeout_ms)) < 0 && errno == EINTR)
        ;
    return n;
}

static bool waited_is_done(struct waited *w)
{
    pthread_mutex_lock(&w->lock);
    bool d = w->done != 0;
    pthread_mutex_unlock(&w->lock);
    return d;
}

/*
 * Flushes until one completes after its submission returned (the kernel
 * punts fsync to a worker): that one must wait, not completed by anybody,
 * until the loop's fd fires and blk_poll runs. Returns whether one did.
 */
static bool loop_reaps_late_completion(struct blk_backend *b, int epfd)
{
    for (int tries = 0; tries < 50; tries++) {
        struct waited w;
        waited_init(&w, BLK_FLUSH, 0, 0, NULL, 0);
        blk_submit(b, &w.req);
        if (waited_is_done(&w))
            continue; /* completed inside the submission */
        struct epoll_event ev;
        assert_int_equal(epoll_one(epfd, &ev, 5000), 1);
        assert_int_equal(ev.data.u64, LOOP_TAG);
        usleep(20000); /* no completion thread takes it meanwhile */
        assert_false(waited_is_done(&w));
        blk_poll(b);
        assert_true(waited_is_done(&w));
        assert_int_equal(w.result, 0);
        return true;
    }
    return false;
}

/* Waits for w as an event loop would: blk_poll whenever the loop's fd fires. */
static int loop_wait(struct blk_backend *b, int epfd, struct waited *w)
{
    while (!waited_is_done(w)) {
        struct epoll_event ev;
        assert_int_equal(epoll_one(epfd, &ev, 5000), 1);
        assert_int_equal(ev.data.u64, LOOP_TAG);
        blk_poll(b);
    }
    return w->result;
}

static void test_file_event_loop(void **state)
{
    set_engine(false);
    if (!uring_available())
        skip();
    const char *path = make_file("loop.img", 1 << 20, 0x5a);
    struct spec_component c = file_comp(path, 512, false);
    struct blk_backend *b = open_ok(&c);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    assert_true(epfd >= 0);
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), 0);
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), -EBUSY);

    /*
     * A read that completes inside its submission leaves the loop's fd
     * quiet; one the kernel finishes later waits for the loop.
     */
    uint8_t *r = aligned(4096);
    struct iovec iov = {r, 4096};
    struct waited w;
    waited_init(&w, BLK_READ, 0, 4096, &iov, 1);
    blk_submit(b, &w.req);
    struct epoll_event ev;
    if (waited_is_done(&w))
        assert_int_equal(epoll_one(epfd, &ev, 0), 0);
    assert_int_equal(loop_wait(b, epfd, &w), 0);
    assert_int_equal(r[0], 0x5a);

    assert_true(loop_reaps_late_completion(b, epfd));

    /* Drain completes what is left itself while the loop is attached but idle. */
    waited_init(&w, BLK_FLUSH, 0, 0, NULL, 0);
    blk_submit(b, &w.req);
    blk_drain(b);
    assert_true(waited_is_done(&w));

    /* Detached, the completion thread takes everything again, posted before or after. */
    waited_init(&w, BLK_FLUSH, 0, 0, NULL, 0);
    blk_submit(b, &w.req);
    blk_detach_loop(b);
    assert_int_equal(waited_wait(&w), 0);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    blk_detach_loop(b); /* twice: a no-op */
    /* And it can join a loop again. */
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), 0);
    assert_true(loop_reaps_late_completion(b, epfd));
    blk_close(b); /* closing an attached backend detaches it */
    close(epfd);
    free(r);
}

/* The worker-thread engine has no loop to join: attaching is a no-op. */
static void test_file_event_loop_threads(void **state)
{
    set_engine(true);
    const char *path = make_file("loopt.img", 1 << 20, 0);
    struct spec_component c = file_comp(path, 512, false);
    struct blk_backend *b = open_ok(&c);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), 0);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    struct epoll_event ev;
    assert_int_equal(epoll_one(epfd, &ev, 0), 0);
    blk_detach_loop(b);
    blk_close(b);
    close(epfd);
    set_engine(false);
}

/* The set's proxy carries the attachment across release and activation. */
static void test_set_event_loop(void **state)
{
    set_engine(false);
    if (!uring_available())
        skip();
    const char *path = make_file("setloop.img", 1 << 20, 0);
    struct spec_component comps[1] = {file_comp(path, 512, false)};
    struct instance_spec spec = {.components = comps, .count = 1};
    struct cella_errors errs = {0};
    struct backend_set *s = NULL;
    assert_int_equal(backend_set_open(&spec, BACKEND_SET_DEFER, NULL, NULL, &s, &errs), 0);
    struct blk_backend *b = backend_set_blk(s, "disk0");
    assert_non_null(b);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    /* Attached before any backend is open (a migration target). */
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), 0);
    assert_int_equal(blk_attach_loop(b, epfd, LOOP_TAG), -EBUSY);
    blk_poll(b); /* nothing open: a no-op */
    assert_int_equal(backend_set_activate(s, &errs), 0);
    assert_true(loop_reaps_late_completion(b, epfd));
    /* Released, then opened again: the new backend joins the loop too. */
    backend_set_release(s);
    struct epoll_event ev;
    assert_int_equal(epoll_one(epfd, &ev, 0), 0);
    assert_int_equal(backend_set_activate(s, &errs), 0);
    assert_true(loop_reaps_late_completion(b, epfd));
    blk_detach_loop(b);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    backend_set_close(s);
    close(epfd);
    cella_errors_clear(&errs);
}

static void test_file_concurrent_uring(void **state)
{
    file_concurrent(false);
}

static void test_file_concurrent_threads(void **state)
{
    file_concurrent(true);
}

/* tmpfs has no FALLOC_FL_ZERO_RANGE: write zeroes falls back to writing zeroes. */
static void file_tmpfs_zeroes(bool threads)
{
    struct stat st;
    if (stat("/dev/shm", &st) < 0 || !S_ISDIR(st.st_mode)) {
        skip();
        return;
    }
    set_engine(threads);
    char dir[64];
    snprintf(dir, sizeof(dir), "/dev/shm/cella-backends-XXXXXX");
    assert_non_null(mkdtemp(dir));
    const char *path = make_file_in(dir, "z.img", 16 << 20, 0xee);
    char p[256];
    snprintf(p, sizeof(p), "%s", path);
    struct spec_component c = file_comp(p, 512, false);
    struct blk_backend *b = open_ok(&c);
    /* 9 MiB: more than one zero-filling write (4 MiB each). */
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 1 << 20, 9 << 20), 0);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 512, 512), 0);
    assert_int_equal(do_range(b, BLK_DISCARD, 12 << 20, 1 << 20), 0);
    blk_close(b);
    uint8_t *img = malloc(16 << 20);
    file_pread(p, img, 16 << 20, 0);
    for (size_t i = 0; i < 16u << 20; i++) {
        bool zero = (i >= 512 && i < 1024) || (i >= (1u << 20) && i < (10u << 20));
        if (i >= (12u << 20) && i < (13u << 20))
            continue; /* discarded: unspecified */
        if (img[i] != (zero ? 0 : 0xee))
            fail_msg("byte %zu is %#x", i, img[i]);
    }
    free(img);
    unlink(p);
    rmdir(dir);
    set_engine(false);
}

static void test_file_tmpfs_zeroes_uring(void **state)
{
    file_tmpfs_zeroes(false);
}

static void test_file_tmpfs_zeroes_threads(void **state)
{
    file_tmpfs_zeroes(true);
}

/* ---- blob backend ---- */

static char *b64_encode(const uint8_t *d, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        *o++ = a[v >> 18 & 63];
        *o++ = a[v >> 12 & 63];
        *o++ = i + 1 < n ? a[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? a[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static struct spec_component blob_comp(char *b64, bool ro)
{
    struct spec_component c;
    memset(&c, 0, sizeof(c));
    c.key = (char *)"blob";
    c.kind = SK_BLOB_STORAGE_BACKEND;
    c.u.blob_storage_backend.base64 = b64;
    c.u.blob_storage_backend.readonly = ro;
    return c;
}

static void test_blob_bad(void **state)
{
    static const char *const bad[] = {
        "", "abc", "!!!!", "AA=A", "A===", "AAB=", "AB==", "AAAA\nAAA", "AA AAAAA", "AAAA===="};
    struct cella_errors errs = {0};
    struct blk_backend *b = NULL;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct spec_component c = blob_comp((char *)bad[i], false);
        assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
        assert_true(has_error(&errs, "/components/blob/base64", "base64"));
        cella_errors_clear(&errs);
    }
    /* Valid base64, wrong size. */
    uint8_t d[600] = {0};
    char *s = b64_encode(d, 100);
    struct spec_component c = blob_comp(s, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/blob/base64", "512-byte"));
    cella_errors_clear(&errs);
    free(s);
    s = b64_encode(d, 600);
    c = blob_comp(s, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    cella_errors_clear(&errs);
    free(s);
    /* Over the cap, rejected before decoding. */
    size_t big = (64u << 20) / 3 * 4 + 8;
    s = malloc(big + 1);
    memset(s, 'A', big);
    s[big] = '\0';
    c = blob_comp(s, false);
    assert_int_equal(blk_open(&c, &b, &errs), -E2BIG);
    cella_errors_clear(&errs);
    free(s);
    assert_null(b);
}

static void test_blob_roundtrip(void **state)
{
    uint8_t img[2048];
    fill_pattern(img, sizeof(img), 9);
    /* 2048 % 3 != 0: exercises padding. */
    char *s = b64_encode(img, sizeof(img));
    struct spec_component c = blob_comp(s, false);
    struct blk_backend *b = open_ok(&c);
    assert_int_equal(b->info.size, 2048);
    assert_int_equal(b->info.block_size, 512);
    assert_false(b->info.can_flush);
    assert_true(b->info.can_discard && b->info.can_write_zeroes);
    const uint8_t *data;
    size_t len;
    assert_int_equal(blk_blob_contents(b, &data, &len), 0);
    assert_int_equal(len, 2048);
    assert_memory_equal(data, img, 2048);

    uint8_t r[1024], w[1024];
    struct iovec rv[2] = {{r, 24}, {r + 24, 1000}};
    assert_int_equal(do_io(b, BLK_READ, 512, rv, 2), 0);
    assert_memory_equal(r, img + 512, 1024);
    fill_pattern(w, 1024, 4);
    assert_int_equal(do_buf(b, BLK_WRITE, 1024, w, 1024), 0);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 0, 512), 0);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    assert_int_equal(do_buf(b, BLK_READ, 2048, r, 512), -EINVAL);
    assert_int_equal(do_buf(b, BLK_READ, 100, r, 512), -EINVAL);
    assert_int_equal(blk_blob_contents(b, &data, &len), 0);
    for (int i = 0; i < 512; i++)
        assert_int_equal(data[i], 0);
    assert_memory_equal(data + 512, img + 512, 512);
    assert_memory_equal(data + 1024, w, 1024);
    blk_drain(b);
    blk_close(b);

    c = blob_comp(s, true);
    b = open_ok(&c);
    assert_true(b->info.readonly);
    assert_int_equal(do_buf(b, BLK_WRITE, 0, w, 512), -EROFS);
    assert_int_equal(do_range(b, BLK_DISCARD, 0, 512), -EROFS);
    assert_int_equal(do_buf(b, BLK_READ, 0, r, 512), 0);
    assert_memory_equal(r, img, 512);
    blk_close(b);
    blk_close(NULL);
    free(s);

    /* blk_blob_contents refuses other kinds. */
    const char *path = make_file("nb.img", 4096, 0);
    struct spec_component f = file_comp(path, 512, false);
    b = open_ok(&f);
    assert_int_equal(blk_blob_contents(b, &data, &len), -EINVAL);
    blk_close(b);
}

/* ---- NBD backend against nbdkit ---- */

struct nbdkit {
    pid_t pid;
    char sock[128];
    char pidfile[128];
    char uri[256];
};

static bool have_nbdkit(void)
{
    return system("command -v nbdkit >/dev/null 2>&1") == 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Starts nbdkit with the given plugin arguments (NULL-terminated) on k->sock. */
static void nbdkit_start(struct nbdkit *k, const char *const *plugin)
{
    unlink(k->sock);
    unlink(k->pidfile);
    const char *argv[16] = {"nbdkit", "-f", "--exit-with-parent", "-U", k->sock, "-P", k->pidfile};
    size_t n = 7;
    for (size_t i = 0; plugin[i] && n < 15; i++)
        argv[n++] = plugin[i];
    argv[n] = NULL;
    k->pid = fork();
    assert_true(k->pid >= 0);
    if (k->pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execvp("nbdkit", (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        if (access(k->pidfile, F_OK) == 0)
            return;
        int status;
        if (waitpid(k->pid, &status, WNOHANG) == k->pid)
            fail_msg("nbdkit exited with status %d", status);
        sleep_ms(10);
    }
    fail_msg("nbdkit did not start");
}

static void nbdkit_kill(struct nbdkit *k)
{
    if (k->pid <= 0)
        return;
    kill(k->pid, SIGKILL);
    waitpid(k->pid, NULL, 0);
    k->pid = 0;
}

static void nbdkit_init(struct nbdkit *k, const char *name)
{
    make_tmpdir();
    memset(k, 0, sizeof(*k));
    snprintf(k->sock, sizeof(k->sock), "%s/%s.sock", tmpdir, name);
    snprintf(k->pidfile, sizeof(k->pidfile), "%s/%s.pid", tmpdir, name);
    snprintf(k->uri, sizeof(k->uri), "nbd+unix:///?socket=%s", k->sock);
}

static struct spec_component nbd_comp(const char *uri, bool ro)
{
    struct spec_component c;
    memset(&c, 0, sizeof(c));
    c.key = (char *)"nbd0";
    c.kind = SK_NBD_STORAGE_BACKEND;
    c.u.nbd_storage_backend.uri = (char *)uri;
    c.u.nbd_storage_backend.readonly = ro;
    return c;
}

/* Event recorder. */
struct events {
    pthread_mutex_t lock;
    enum blk_event ev[16];
    int n;
};

static void record_event(void *ctx, enum blk_event ev, const char *detail)
{
    struct events *e = ctx;
    assert_non_null(detail);
    pthread_mutex_lock(&e->lock);
    if (e->n < 16)
        e->ev[e->n++] = ev;
    pthread_mutex_unlock(&e->lock);
}

static int events_count(struct events *e)
{
    pthread_mutex_lock(&e->lock);
    int n = e->n;
    pthread_mutex_unlock(&e->lock);
    return n;
}

static void test_nbd_memory(void **state)
{
    if (!have_nbdkit()) {
        print_message("nbdkit is not installed (tools/install-deps installs it); skipping\n");
        skip();
        return;
    }
    struct nbdkit k;
    nbdkit_init(&k, "mem");
    const char *const plugin[] = {"memory", "size=4M", NULL};
    nbdkit_start(&k, plugin);
    struct spec_component c = nbd_comp(k.uri, false);
    struct blk_backend *b = open_ok(&c);
    assert_int_equal(b->info.size, 4 << 20);
    assert_int_equal(b->info.block_size, 512);
    assert_false(b->info.readonly);
    assert_true(b->info.can_flush);
    assert_true(b->info.can_write_zeroes);

    uint8_t *w = malloc(1 << 20), *r = malloc(1 << 20);
    fill_pattern(w, 1 << 20, 5);
    assert_int_equal(do_buf(b, BLK_WRITE, 512, w, 1 << 20), 0);
    memset(r, 0, 1 << 20);
    assert_int_equal(do_buf(b, BLK_READ, 512, r, 1 << 20), 0);
    assert_memory_equal(r, w, 1 << 20);
    /* Scattered iovecs go through the bounce buffer. */
    struct iovec rv[3] = {{r, 7}, {r + 7, 1000}, {r + 1007, 17}};
    memset(r, 0, 1024);
    assert_int_equal(do_io(b, BLK_READ, 1024, rv, 3), 0);
    assert_memory_equal(r, w + 512, 1024);
    struct iovec wv[2] = {{w + 3, 509}, {w + 100, 515}};
    assert_int_equal(do_io(b, BLK_WRITE, 8192, wv, 2), 0);
    assert_int_equal(do_buf(b, BLK_READ, 8192, r, 1024), 0);
    assert_memory_equal(r, w + 3, 509);
    assert_memory_equal(r + 509, w + 100, 515);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    assert_int_equal(do_range(b, BLK_WRITE_ZEROES, 512, 4096), 0);
    assert_int_equal(do_buf(b, BLK_READ, 512, r, 4096), 0);
    for (int i = 0; i < 4096; i++)
        assert_int_equal(r[i], 0);
    assert_int_equal(do_range(b, BLK_DISCARD, 0, 1 << 20), 0);
    assert_int_equal(do_buf(b, BLK_READ, 4 << 20, r, 512), -EINVAL);
    assert_int_equal(do_buf(b, BLK_READ, 100, r, 512), -EINVAL);
    blk_close(b);

    /* Read-only by spec. */
    c = nbd_comp(k.uri, true);
    b = open_ok(&c);
    assert_true(b->info.readonly);
    assert_int_equal(do_buf(b, BLK_WRITE, 0, w, 512), -EROFS);
    blk_close(b);
    nbdkit_kill(&k);

    /* Read-only by the server. */
    const char *const ro_plugin[] = {"-r", "memory", "size=1M", NULL};
    nbdkit_start(&k, ro_plugin);
    c = nbd_comp(k.uri, false);
    b = open_ok(&c);
    assert_true(b->info.readonly);
    assert_int_equal(do_buf(b, BLK_WRITE, 0, w, 512), -EROFS);
    assert_int_equal(do_buf(b, BLK_READ, 0, r, 512), 0);
    blk_close(b);

    /* A size that is not whole sectors is refused. */
    nbdkit_kill(&k);
    const char *const odd_plugin[] = {"memory", "size=1000", NULL};
    nbdkit_start(&k, odd_plugin);
    struct cella_errors errs = {0};
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/nbd0/uri", "512-byte"));
    cella_errors_clear(&errs);
    nbdkit_kill(&k);
    free(w);
    free(r);
}

static void test_nbd_open_errors(void **state)
{
    struct cella_errors errs = {0};
    struct blk_backend *b = NULL;
    struct spec_component c = nbd_comp("http://example.com/x", false);
    assert_int_equal(blk_open(&c, &b, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/nbd0/uri", "is not an NBD URI"));
    cella_errors_clear(&errs);
    make_tmpdir();
    char uri[256];
    snprintf(uri, sizeof(uri), "nbd+unix:///?socket=%s/none.sock", tmpdir);
    c = nbd_comp(uri, false);
    assert_int_equal(blk_open(&c, &b, &errs), -EHOSTUNREACH);
    assert_true(has_error(&errs, "/components/nbd0/uri", uri));
    assert_true(has_error(&errs, "/components/nbd0/uri", "cannot connect"));
    cella_errors_clear(&errs);
    assert_null(b);
}

#define OUTAGE_REQS 8

static void test_nbd_reconnect(void **state)
{
    if (!have_nbdkit()) {
        skip();
        return;
    }
    struct nbdkit k;
    nbdkit_init(&k, "file");
    const char *img = make_file("nbd.img", 16 << 20, 0);
    char arg[300];
    snprintf(arg, sizeof(arg), "file=%s", img);
    const char *const plugin[] = {"file", arg, NULL};
    nbdkit_start(&k, plugin);
    setenv("CELLA_NBD_RETRY_SECONDS", "30", 1);
    struct spec_component c = nbd_comp(k.uri, false);
    struct blk_backend *b = open_ok(&c);
    struct events ev = {.lock = PTHREAD_MUTEX_INITIALIZER};
    b->event_cb = record_event;
    b->event_ctx = &ev;
    uint8_t buf[OUTAGE_REQS][4096];
    assert_int_equal(do_buf(b, BLK_WRITE, 0, buf[0], 4096), 0);

    nbdkit_kill(&k);
    struct waited w[OUTAGE_REQS];
    struct iovec iov[OUTAGE_REQS];
    for (int i = 0; i < OUTAGE_REQS; i++) {
        fill_pattern(buf[i], 4096, 100 + (unsigned)i);
        iov[i] = (struct iovec){buf[i], 4096};
        waited_init(&w[i], BLK_WRITE, (uint64_t)i * 8192, 4096, &iov[i], 1);
        blk_submit(b, &w[i].req);
    }
    sleep_ms(700);
    for (int i = 0; i < OUTAGE_REQS; i++) {
        pthread_mutex_lock(&w[i].lock);
        assert_int_equal(w[i].done, 0); /* nothing completes while the server is away */
        pthread_mutex_unlock(&w[i].lock);
    }
    assert_int_equal(events_count(&ev), 1);
    assert_int_equal(ev.ev[0], BLK_EV_DEGRADED);

    nbdkit_start(&k, plugin);
    for (int i = 0; i < OUTAGE_REQS; i++)
        assert_int_equal(waited_wait(&w[i]), 0);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    assert_int_equal(events_count(&ev), 2);
    assert_int_equal(ev.ev[1], BLK_EV_RECOVERED);
    uint8_t chk[4096];
    for (int i = 0; i < OUTAGE_REQS; i++) {
        file_pread(img, chk, 4096, (off_t)i * 8192);
        assert_memory_equal(chk, buf[i], 4096);
    }
    /* Restarted again between requests: a silent reconnect. */
    nbdkit_kill(&k);
    nbdkit_start(&k, plugin);
    for (int i = 0; i < OUTAGE_REQS; i++)
        assert_int_equal(do_buf(b, BLK_READ, (uint64_t)i * 8192, chk, 4096), 0);
    assert_int_equal(events_count(&ev), 2);

    /* Killed with large writes in flight: every write lands once it is back. */
    uint8_t *big = malloc(16 << 20);
    fill_pattern(big, 16 << 20, 77);
    struct waited bw[16];
    struct iovec biov[16];
    for (int i = 0; i < 16; i++) {
        biov[i] = (struct iovec){big + ((size_t)i << 20), 1 << 20};
        waited_init(&bw[i], BLK_WRITE, (uint64_t)i << 20, 1 << 20, &biov[i], 1);
        blk_submit(b, &bw[i].req);
    }
    nbdkit_kill(&k);
    sleep_ms(300);
    nbdkit_start(&k, plugin);
    for (int i = 0; i < 16; i++)
        assert_int_equal(waited_wait(&bw[i]), 0);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), 0);
    uint8_t *back = malloc(16 << 20);
    file_pread(img, back, 16 << 20, 0);
    assert_memory_equal(back, big, 16 << 20);
    free(back);
    free(big);
    blk_close(b);
    nbdkit_kill(&k);
    unsetenv("CELLA_NBD_RETRY_SECONDS");
}

static void test_nbd_deadline(void **state)
{
    if (!have_nbdkit()) {
        skip();
        return;
    }
    struct nbdkit k;
    nbdkit_init(&k, "dl");
    const char *const plugin[] = {"memory", "size=1M", NULL};
    nbdkit_start(&k, plugin);
    setenv("CELLA_NBD_RETRY_SECONDS", "1.5", 1);
    struct spec_component c = nbd_comp(k.uri, false);
    struct blk_backend *b = open_ok(&c);
    struct events ev = {.lock = PTHREAD_MUTEX_INITIALIZER};
    b->event_cb = record_event;
    b->event_ctx = &ev;
    uint8_t buf[4096] = {1};
    assert_int_equal(do_buf(b, BLK_WRITE, 0, buf, 4096), 0);
    nbdkit_kill(&k);
    double t0 = now_s();
    assert_int_equal(do_buf(b, BLK_WRITE, 0, buf, 4096), -EIO);
    double took = now_s() - t0;
    assert_true(took >= 1.4 && took < 10);
    assert_int_equal(events_count(&ev), 2);
    assert_int_equal(ev.ev[0], BLK_EV_DEGRADED);
    assert_int_equal(ev.ev[1], BLK_EV_FAILED);
    /* Failed is final: even with the server back, requests fail at once. */
    nbdkit_start(&k, plugin);
    t0 = now_s();
    assert_int_equal(do_buf(b, BLK_READ, 0, buf, 4096), -EIO);
    assert_int_equal(do_range(b, BLK_FLUSH, 0, 0), -EIO);
    assert_true(now_s() - t0 < 1);
    assert_int_equal(events_count(&ev), 2);
    blk_close(b);
    nbdkit_kill(&k);
    unsetenv("CELLA_NBD_RETRY_SECONDS");
}

/* ---- tap backend ---- */

static struct spec_component net_comp(const char *name)
{
    struct spec_component c;
    memset(&c, 0, sizeof(c));
    c.key = (char *)"net0";
    c.kind = SK_VIRTIO_NETWORK_BACKEND;
    c.u.virtio_network_backend.vnic_name = (char *)name;
    return c;
}

static void test_tap_open_errors(void **state)
{
    struct cella_errors errs = {0};
    struct net_backend *n = NULL;
    struct spec_component c = net_comp("cella-nonexist");
    assert_int_equal(net_open(&c, &n, &errs), -ENODEV);
    assert_true(has_error(&errs, "/components/net0/vnic_name", "no interface \"cella-nonexist\""));
    cella_errors_clear(&errs);
    c = net_comp("a/b");
    assert_int_equal(net_open(&c, &n, &errs), -EINVAL);
    assert_true(has_error(&errs, "/components/net0/vnic_name", "not a Linux interface name"));
    cella_errors_clear(&errs);
    c = net_comp("0123456789abcdef");
    assert_int_equal(net_open(&c, &n, &errs), -EINVAL);
    cella_errors_clear(&errs);
    c.kind = SK_DLPI_NETWORK_BACKEND;
    assert_int_equal(net_open(&c, &n, &errs), -ENOTSUP);
    cella_errors_clear(&errs);
    if (access("/dev/net/tun", R_OK | W_OK) == 0) {
        c = net_comp("lo"); /* exists, but is no tap */
        assert_true(net_open(&c, &n, &errs) < 0);
        assert_true(has_error(&errs, "/components/net0/vnic_name", "lo"));
        cella_errors_clear(&errs);
    }
    assert_null(n);
}

struct rx_state {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ready;
};

static void rx_ready(void *ctx)
{
    struct rx_state *s = ctx;
    pthread_mutex_lock(&s->lock);
    s->ready++;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static bool rx_wait(struct rx_state *s, int want)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&s->lock);
    while (s->ready < want) {
        if (pthread_cond_timedwait(&s->cond, &s->lock, &dl) == ETIMEDOUT)
            break;
    }
    bool ok = s->ready >= want;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

#define TEST_ETHERTYPE 0x88b5 /* IEEE local experimental */

static size_t make_frame(uint8_t *f, size_t len, uint8_t tag)
{
    memset(f, 0xff, 6);                           /* broadcast */
    memcpy(f + 6, "\x02\x00\x00\x00\x00\x01", 6); /* locally administered */
    f[12] = TEST_ETHERTYPE >> 8;
    f[13] = TEST_ETHERTYPE & 0xff;
    for (size_t i = 14; i < len; i++)
        f[i] = (uint8_t)(tag + i);
    return len;
}

/* Reads frames until one of ours (ethertype, tag) arrives; its length or -1. */
static long recv_ours(struct net_backend *n, struct rx_state *s, uint8_t *buf, size_t cap,
                      uint8_t tag)
{
    for (int round = 0; round < 20; round++) {
        int seen;
        pthread_mutex_lock(&s->lock);
        seen = s->ready;
        pthread_mutex_unlock(&s->lock);
        for (;;) {
            struct iovec iov = {buf, cap};
            long r = net_recv(n, &iov, 1);
            if (r <= 0)
                break;
            uint8_t *f = buf + NET_VNET_HDR_LEN;
            if (r > (long)NET_VNET_HDR_LEN + 14 && f[12] == TEST_ETHERTYPE >> 8 &&
                f[13] == (TEST_ETHERTYPE & 0xff) && f[14] == (uint8_t)(tag + 14)) {
                /* Drain the rest so the backend re-arms. */
                uint8_t junk[2048];
                struct iovec jv = {junk, sizeof(junk)};
                while (net_recv(n, &jv, 1) > 0)
                    ;
                return r;
            }
        }
        if (!rx_wait(s, seen + 1))
            return -1;
    }
    return -1;
}

static void test_tap_frames(void **state)
{
    if (geteuid() != 0 || access("/dev/net/tun", R_OK | W_OK) != 0 ||
        system("command -v ip >/dev/null 2>&1") != 0) {
        print_message("needs root, /dev/net/tun and ip(8); skipping\n");
        skip();
        return;
    }
    char name[IFNAMSIZ], cmd[160];
    snprintf(name, sizeof(name), "celt%u", (unsigned)getpid() % 100000u);
    snprintf(cmd, sizeof(cmd), "ip tuntap add dev %s mode tap 2>/dev/null", name);
    if (system(cmd) != 0) {
        print_message("cannot create a tap here; skipping\n");
        skip();
        return;
    }
    snprintf(cmd, sizeof(cmd), "sysctl -q -w net.ipv6.conf.%s.disable_ipv6=1 2>/dev/null", name);
    int ignored = system(cmd); /* less noise on the wire; fine if it fails */
    (void)ignored;
    struct spec_component c = net_comp(name);
    struct cella_errors errs = {0};
    struct net_backend *n = NULL;
    int r = net_open(&c, &n, &errs);
    if (r < 0)
        print_message("%s\n", errs.items[0].message);
    assert_int_equal(r, 0);
    assert_true(n->offloads_supported & NET_OFF_CSUM);
    assert_int_equal(net_set_offloads(n, NET_OFF_CSUM | (n->offloads_supported & NET_OFF_TSO4)), 0);
    assert_int_equal(net_set_offloads(n, 0x80), -EINVAL);
    assert_int_equal(net_set_offloads(n, 0), 0);

    /* A second attach to a single-queue tap is refused with a reason. */
    struct net_backend *n2 = NULL;
    assert_true(net_open(&c, &n2, &errs) < 0);
    assert_true(has_error(&errs, "/components/net0/vnic_name", name));
    cella_errors_clear(&errs);

    snprintf(cmd, sizeof(cmd), "ip link set %s up", name);
    assert_int_equal(system(cmd), 0);
    struct rx_state rs = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    struct net_rx_ops ops = {rx_ready, &rs};
    assert_int_equal(net_start(n, &ops), 0);
    assert_int_equal(net_start(n, &ops), -EBUSY);

    /* Host -> guest: a packet socket transmits on the tap. */
    int ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(TEST_ETHERTYPE));
    assert_true(ps >= 0);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET,
                              .sll_protocol = htons(TEST_ETHERTYPE),
                              .sll_ifindex = (int)if_nametoindex(name)};
    assert_int_equal(bind(ps, (struct sockaddr *)&sll, sizeof(sll)), 0);
    uint8_t frame[1500], buf[2048];
    size_t flen = make_frame(frame, 200, 1);
    assert_int_equal(send(ps, frame, flen, 0), (ssize_t)flen);
    long got = recv_ours(n, &rs, buf, sizeof(buf), 1);
    assert_int_equal(got, (long)(NET_VNET_HDR_LEN + flen));
    assert_memory_equal(buf + NET_VNET_HDR_LEN, frame, flen);

    /* A frame bigger than the buffers is dropped with -EMSGSIZE. */
    flen = make_frame(frame, 1000, 2);
    assert_int_equal(send(ps, frame, flen, 0), (ssize_t)flen);
    long small = 0;
    for (int i = 0; i < 50 && small != -EMSGSIZE; i++) {
        struct iovec iov = {buf, 100};
        small = net_recv(n, &iov, 1);
        if (small == 0)
            sleep_ms(20);
    }
    assert_int_equal(small, -EMSGSIZE);
    struct iovec tiny = {buf, 4};
    assert_int_equal(net_recv(n, &tiny, 1), -EINVAL);
    net_rx_resume(n);

    /* Guest -> host: net_send, seen by the packet socket. */
    uint8_t hdr[NET_VNET_HDR_LEN] = {0};
    flen = make_frame(frame, 300, 3);
    struct iovec sv[2] = {{hdr, sizeof(hdr)}, {frame, flen}};
    assert_int_equal(net_send(n, sv, 2), 0);
    bool seen = false;
    for (int i = 0; i < 20 && !seen; i++) {
        struct pollfd pf = {ps, POLLIN, 0};
        if (poll(&pf, 1, 250) <= 0)
            continue;
        ssize_t m = recv(ps, buf, sizeof(buf), 0);
        seen = m == (ssize_t)flen && !memcmp(buf, frame, flen);
    }
    assert_true(seen);
    assert_int_equal(net_send(n, sv, 0), -EINVAL);
    close(ps);
    net_close(n);
    net_close(NULL);
    snprintf(cmd, sizeof(cmd), "ip link del %s", name);
    assert_int_equal(system(cmd), 0);
}

static int teardown_all(void **state)
{
    rm_tmpdir();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_roundtrip_uring),
        cmocka_unit_test(test_file_roundtrip_threads),
        cmocka_unit_test(test_file_checks_uring),
        cmocka_unit_test(test_file_checks_threads),
        cmocka_unit_test(test_file_readonly),
        cmocka_unit_test(test_file_lock),
        cmocka_unit_test(test_file_open_errors),
        cmocka_unit_test(test_file_event_loop),
        cmocka_unit_test(test_file_event_loop_threads),
        cmocka_unit_test(test_set_event_loop),
        cmocka_unit_test(test_file_concurrent_uring),
        cmocka_unit_test(test_file_concurrent_threads),
        cmocka_unit_test(test_file_tmpfs_zeroes_uring),
        cmocka_unit_test(test_file_tmpfs_zeroes_threads),
        cmocka_unit_test(test_blob_bad),
        cmocka_unit_test(test_blob_roundtrip),
        cmocka_unit_test(test_nbd_open_errors),
        cmocka_unit_test(test_nbd_memory),
        cmocka_unit_test(test_nbd_reconnect),
        cmocka_unit_test(test_nbd_deadline),
        cmocka_unit_test(test_tap_open_errors),
        cmocka_unit_test(test_tap_frames),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_all);
}
