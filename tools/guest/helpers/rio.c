/*
 * rio - a small O_DIRECT block I/O benchmark and data-integrity checker for
 * guest tests.  Built statically and shipped in the guest initramfs by
 * tools/guest/build.
 *
 *   rio DEV seqread|seqwrite|randread|randwrite BS TOTAL_MB [QD]
 *   rio DEV fill SEED MB [BS]      write MB MiB of the seeded pattern from 0
 *   rio DEV verify SEED MB [BS]    check them; exit 0 if good, 1 if not
 *
 * Benchmarks move TOTAL_MB MiB in requests of BS bytes (a multiple of 512;
 * suffixes k/K and m/M allowed) with plain pread/pwrite on a descriptor
 * opened O_DIRECT: QD 1 is one thread, QD > 1 is QD threads, each with one
 * request in flight.  Sequential runs share one cursor that wraps at the
 * end of the device; random runs pick BS-aligned offsets uniformly over the
 * device (a fixed-seed generator per thread, so runs repeat).  Writes carry
 * a non-zero pattern that differs per request.  The result is one line:
 *
 *   RIO op=randread bs=4096 qd=1 bytes=67108864 usec=1234567 MBps=54.36 iops=13271
 *
 * MBps is 10^6 bytes per second; iops is requests per second.  Timing
 * covers the requests only (not opening, not a final flush).  Where the
 * file system refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6) rio says so
 * on stderr, uses buffered I/O and adds ` direct=0` to the line; this is
 * for checking an image file on the host, not for benchmarks.
 *
 * fill/verify use a pattern that depends only on SEED and the byte offset
 * (each 8-byte word w at offset o is mix(SEED, o/8)), so data written with
 * one block size can be checked with another.  fill ends with fdatasync.
 * verify prints `RIO op=verify ... ok` or, at the first mismatch,
 * `RIO-BAD offset=N want=X got=Y` and exits 1.  Errors (open, short I/O,
 * EIO...) print `rio: ...` on stderr and exit 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ALIGN  4096u
#define MIB    ((uint64_t)1 << 20)
#define MAX_QD 64

static const char *dev;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("rio: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void usage(void)
{
    fputs("usage: rio DEV seqread|seqwrite|randread|randwrite BS TOTAL_MB [QD]\n"
          "       rio DEV fill|verify SEED MB [BS]\n",
          stderr);
    exit(2);
}

static uint64_t mix(uint64_t x)
{
    /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t word_at(uint64_t seed, uint64_t off)
{
    return mix(seed * 0x100000001b3ull ^ mix(off / 8));
}

/* Parses a non-negative number with an optional k/K/m/M/g/G suffix. */
static uint64_t parse_num(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *s == '-')
        die("bad %s '%s'", what, s);
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        end++;
        break;
    default:
        break;
    }
    if (*end)
        die("bad %s '%s'", what, s);
    return v;
}

static uint64_t dev_size(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("%s: fstat: %s", dev, strerror(errno));
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
            die("%s: BLKGETSIZE64: %s", dev, strerror(errno));
        return sz;
    }
    return (uint64_t)st.st_size;
}

static int direct = 1; /* 0 once open fell back to buffered I/O */

static int open_dev(int write)
{
    int flags = (write ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    int fd = open(dev, flags | O_DIRECT);
    if (fd < 0 && errno == EINVAL) {
        /* A file system without O_DIRECT (tmpfs before Linux 6.6): say so. */
        fd = open(dev, flags);
        if (fd >= 0) {
            direct = 0;
            fprintf(stderr, "rio: %s: no O_DIRECT here, using buffered I/O\n", dev);
        }
    }
    if (fd < 0)
        die("open %s: %s", dev, strerror(errno));
    return fd;
}

static void *abuf(size_t n)
{
    void *p;
    if (posix_memalign(&p, ALIGN, n ? n : ALIGN))
        die("out of memory (%zu bytes)", n);
    return p;
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Full-length pread/pwrite at off; dies on errors and short transfers. */
static void io(int fd, int write, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = write ? pwrite(fd, (char *)buf + done, len - done, (off_t)(off + done))
                          : pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            die("%s %s at %" PRIu64 " (%zu bytes): %s", write ? "pwrite" : "pread", dev, off + done,
                len - done, strerror(errno));
        }
        if (r == 0)
            die("%s %s at %" PRIu64 ": unexpected end of device", write ? "pwrite" : "pread", dev,
                off + done);
        done += (size_t)r;
    }
}

/* ---- benchmark ---- */

struct bench {
    int fd;
    int write, random;
    uint64_t bs, size, nreq;
    atomic_uint_fast64_t next_req; /* requests handed out */
    atomic_uint_fast64_t cursor;   /* sequential: next block index */
};

static void *bench_thread(void *arg)
{
    struct bench *b = arg;
    static atomic_uint tid_counter;
    unsigned tid = atomic_fetch_add(&tid_counter, 1);
    uint64_t blocks = b->size / b->bs;
    uint64_t rng = mix(0x5eed0000ull + tid);
    uint64_t *buf = abuf(b->bs);
    for (size_t i = 0; i < b->bs / 8; i++)
        buf[i] = mix(tid * 0x10000ull + i) | 1;
    for (;;) {
        uint64_t n = atomic_fetch_add(&b->next_req, 1);
        if (n >= b->nreq)
            break;
        uint64_t blk;
        if (b->random) {
            rng = mix(rng);
            blk = rng % blocks;
        } else {
            blk = atomic_fetch_add(&b->cursor, 1) % blocks;
        }
        if (b->write)
            buf[0] = n; /* every request's data differs */
        io(b->fd, b->write, buf, b->bs, blk * b->bs);
    }
    free(buf);
    return NULL;
}

static int bench(const char *op, int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        usage();
    struct bench b = {0};
    b.write = strstr(op, "write") != NULL;
    b.random = strncmp(op, "rand", 4) == 0;
    b.bs = parse_num(argv[0], "block size");
    uint64_t total = parse_num(argv[1], "TOTAL_MB") * MIB;
    uint64_t qd = argc == 3 ? parse_num(argv[2], "QD") : 1;
    if (b.bs == 0 || b.bs % 512 || b.bs > 64 * MIB)
        die("block size %" PRIu64 " is not a multiple of 512 in 512..64M", b.bs);
    if (qd < 1 || qd > MAX_QD)
        die("QD %" PRIu64 " out of 1..%d", qd, MAX_QD);
    b.fd = open_dev(b.write);
    b.size = dev_size(b.fd);
    if (b.size < b.bs)
        die("%s: %" PRIu64 " bytes is smaller than one block", dev, b.size);
    b.nreq = (total + b.bs - 1) / b.bs;
    if (b.nreq == 0)
        b.nreq = 1;

    pthread_t th[MAX_QD];
    double t0 = now_us();
    if (qd == 1) {
        bench_thread(&b);
    } else {
        for (uint64_t i = 0; i < qd; i++) {
            int e = pthread_create(&th[i], NULL, bench_thread, &b);
            if (e)
                die("pthread_create: %s", strerror(e));
        }
        for (uint64_t i = 0; i < qd; i++)
            pthread_join(th[i], NULL);
    }
    double us = now_us() - t0;
    close(b.fd);
    uint64_t bytes = b.nreq * b.bs;
    if (us < 1)
        us = 1;
    printf("RIO op=%s bs=%" PRIu64 " qd=%" PRIu64 " bytes=%" PRIu64 " usec=%.0f MBps=%.2f "
           "iops=%.0f%s\n",
           op, b.bs, qd, bytes, us, bytes / us, b.nreq / (us / 1e6), direct ? "" : " direct=0");
    return 0;
}

/* ---- fill / verify ---- */

static int pattern(int verify, int argc, char **argv)
{
    if (argc < 2 || argc > 3)
        usage();
    uint64_t seed = parse_num(argv[0], "SEED");
    uint64_t total = parse_num(argv[1], "MB") * MIB;
    uint64_t bs = argc == 3 ? parse_num(argv[2], "block size") : MIB;
    if (bs == 0 || bs % 512 || bs > 64 * MIB)
        die("block size %" PRIu64 " is not a multiple of 512 in 512..64M", bs);
    int fd = open_dev(!verify);
    uint64_t size = dev_size(fd);
    if (total > size)
        die("%s: %" PRIu64 " MiB asked, the device has %" PRIu64 " bytes", dev, total / MIB, size);
    uint64_t *buf = abuf(bs);
    double t0 = now_us();
    for (uint64_t off = 0; off < total; off += bs) {
        size_t len = (size_t)(total - off < bs ? total - off : bs);
        if (!verify) {
            for (size_t i = 0; i < len / 8; i++)
                buf[i] = word_at(seed, off + i * 8);
            io(fd, 1, buf, len, off);
            continue;
        }
        io(fd, 0, buf, len, off);
        for (size_t i = 0; i < len / 8; i++) {
            uint64_t want = word_at(seed, off + i * 8);
            if (buf[i] != want) {
                printf("RIO-BAD offset=%" PRIu64 " want=%016" PRIx64 " got=%016" PRIx64 "\n",
                       off + i * 8, want, buf[i]);
                return 1;
            }
        }
    }
    if (!verify && fdatasync(fd) < 0)
        die("fdatasync %s: %s", dev, strerror(errno));
    double us = now_us() - t0;
    close(fd);
    free(buf);
    if (us < 1)
        us = 1;
    printf("RIO op=%s seed=%" PRIu64 " bs=%" PRIu64 " bytes=%" PRIu64 " usec=%.0f MBps=%.2f%s%s\n",
           verify ? "verify" : "fill", seed, bs, total, us, total / us, direct ? "" : " direct=0",
           verify ? " ok" : "");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        usage();
    dev = argv[1];
    const char *op = argv[2];
    if (!strcmp(op, "seqread") || !strcmp(op, "seqwrite") || !strcmp(op, "randread") ||
        !strcmp(op, "randwrite"))
        return bench(op, argc - 3, argv + 3);
    if (!strcmp(op, "fill"))
        return pattern(0, argc - 3, argv + 3);
    if (!strcmp(op, "verify"))
        return pattern(1, argc - 3, argv + 3);
    usage();
}
