/*
 * memtouch - a memory-pattern writer/checker for guest tests (migration,
 * snapshots, dirty tracking).  Built statically and shipped in the guest
 * initramfs by tools/guest/build.
 *
 *   memtouch write MB SEED [FILE]  fill FILE with MB MiB of the pattern
 *   memtouch loop MB [SEED] [FILE] (write if needed, then) forever bump the
 *                                  counter word of every page, pass by pass
 *   memtouch check [FILE]          verify FILE; exit 0 if good, 1 if not
 *   memtouch gen BYTES SEED        write BYTES pattern bytes to stdout
 *
 * FILE defaults to /dev/shm/memtouch: a tmpfs file lives in guest RAM just
 * like anonymous memory, and outlives the process that wrote it, so a
 * separate `check` (e.g. after a migration) can verify it.
 *
 * Layout: one header page, then MB*256 data pages of 4 KiB.  Word 0 of
 * each data page is a counter (starts at 0; `loop` adds 1 per pass); words
 * 1..511 are mix(SEED, page, word).  `loop` walks the pages in order and
 * stores the number of finished passes and its pid in the header.
 *
 * `check` verifies every pattern word and that the counters look like one
 * consistent point of the loop: pages [0,k) hold n+1 and pages [k,end) hold
 * n, for some k (all equal when k = 0).  A page whose contents went stale
 * (say, a dirty page a migration failed to resend) breaks that.  If the
 * `loop` process is still running, check stops it (SIGSTOP) while it reads,
 * and resumes it (SIGCONT) afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE         4096u
#define WORDS        (PAGE / 8u)
#define MAGIC        0x3154414c4c4543ull /* "CELLAT1" */
#define DEFAULT_FILE "/dev/shm/memtouch"

struct header {
    uint64_t magic;
    uint64_t mb;
    uint64_t seed;
    volatile uint64_t passes; /* finished passes of `loop` */
    volatile uint64_t loop_pid;
};

static uint64_t mix(uint64_t x)
{
    /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t pattern(uint64_t seed, uint64_t page, uint64_t word)
{
    return mix(seed ^ mix(page * WORDS + word));
}

static void die(const char *what)
{
    fprintf(stderr, "memtouch: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t number(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *s == '\0' || *end != '\0') {
        fprintf(stderr, "memtouch: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

/* map FILE; with mb != 0 create/resize it to hold mb MiB of data pages */
static void *map_file(const char *file, uint64_t mb, size_t *len)
{
    if (mb > (1u << 20)) {
        fprintf(stderr, "memtouch: %" PRIu64 " MiB is too much\n", mb);
        exit(2);
    }
    int fd = open(file, mb ? O_RDWR | O_CREAT : O_RDWR, 0600);
    if (fd < 0)
        die(file);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    if (mb) {
        *len = PAGE + mb * 256u * PAGE;
        if ((uint64_t)st.st_size != *len && ftruncate(fd, (off_t)*len) < 0)
            die("ftruncate");
    } else {
        *len = (size_t)st.st_size;
        if (*len < PAGE) {
            fprintf(stderr, "memtouch: %s: too small\n", file);
            exit(1);
        }
    }
    void *p = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    close(fd);
    return p;
}

static void fill(void *base, uint64_t mb, uint64_t seed)
{
    struct header *h = base;
    uint64_t pages = mb * 256u;
    h->magic = 0;
    for (uint64_t pg = 0; pg < pages; pg++) {
        uint64_t *w = (uint64_t *)((char *)base + PAGE * (pg + 1));
        w[0] = 0;
        for (uint64_t i = 1; i < WORDS; i++)
            w[i] = pattern(seed, pg, i);
    }
    h->mb = mb;
    h->seed = seed;
    h->passes = 0;
    h->loop_pid = 0;
    __sync_synchronize();
    h->magic = MAGIC;
}

static int cmd_write(uint64_t mb, uint64_t seed, const char *file)
{
    size_t len;
    void *base = map_file(file, mb, &len);
    fill(base, mb, seed);
    printf("memtouch: wrote %" PRIu64 " MiB seed %" PRIu64 " to %s\n", mb, seed, file);
    return 0;
}

static _Noreturn void cmd_loop(uint64_t mb, uint64_t seed, const char *file)
{
    size_t len;
    void *base = map_file(file, mb, &len);
    struct header *h = base;
    if (h->magic != MAGIC || h->mb != mb || h->seed != seed)
        fill(base, mb, seed);
    h->loop_pid = (uint64_t)getpid();
    uint64_t pages = mb * 256u;
    printf("memtouch: looping over %" PRIu64 " pages of %s (pid %d)\n", pages, file, (int)getpid());
    fflush(stdout);
    for (;;) {
        for (uint64_t pg = 0; pg < pages; pg++) {
            volatile uint64_t *w = (uint64_t *)((char *)base + PAGE * (pg + 1));
            w[0] = w[0] + 1;
        }
        h->passes = h->passes + 1;
    }
}

static int pid_alive(pid_t pid)
{
    return pid > 0 && pid != getpid() && kill(pid, 0) == 0;
}

static int cmd_check(const char *file)
{
    size_t len;
    void *base = map_file(file, 0, &len);
    struct header *h = base;
    if (h->magic != MAGIC) {
        printf("memtouch: FAIL %s: bad magic\n", file);
        return 1;
    }
    uint64_t pages = h->mb * 256u, seed = h->seed;
    if (len != PAGE + pages * PAGE) {
        printf("memtouch: FAIL %s: size %zu does not match %" PRIu64 " MiB\n", file, len, h->mb);
        return 1;
    }

    pid_t looper = (pid_t)h->loop_pid;
    int stopped = 0;
    if (pid_alive(looper) && kill(looper, SIGSTOP) == 0) {
        stopped = 1;
        /* wait until it really stopped */
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)looper);
        for (int tries = 0; tries < 1000; tries++) {
            FILE *f = fopen(path, "r");
            if (!f)
                break;
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            fclose(f);
            buf[n] = '\0';
            char *p = strrchr(buf, ')');
            if (p && p[1] == ' ' && (p[2] == 'T' || p[2] == 't'))
                break;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }

    uint64_t bad_words = 0, bad_pages = 0, first_bad = UINT64_MAX;
    uint64_t hi = 0, lo = 0, steps = 0, step_at = 0, counter_bad = 0;
    for (uint64_t pg = 0; pg < pages; pg++) {
        const uint64_t *w = (const uint64_t *)((char *)base + PAGE * (pg + 1));
        uint64_t bad = 0;
        for (uint64_t i = 1; i < WORDS; i++)
            if (w[i] != pattern(seed, pg, i))
                bad++;
        if (bad) {
            bad_words += bad;
            bad_pages++;
            if (first_bad == UINT64_MAX)
                first_bad = pg;
        }
        if (pg == 0) {
            hi = lo = w[0];
        } else if (w[0] != lo) {
            if (steps == 0 && w[0] + 1 == hi) {
                steps = 1;
                step_at = pg;
                lo = w[0];
            } else {
                if (!counter_bad)
                    printf("memtouch: FAIL counter of page %" PRIu64 " is %" PRIu64
                           " (expected %" PRIu64 "%s)\n",
                           pg, w[0], lo, steps ? "" : " or one less");
                counter_bad++;
            }
        }
    }
    uint64_t passes = h->passes;
    if (stopped)
        kill(looper, SIGCONT);

    if (passes + 1 < lo || passes > hi) {
        printf("memtouch: FAIL header says %" PRIu64 " passes, counters are %" PRIu64 "..%" PRIu64
               "\n",
               passes, lo, hi);
        counter_bad++;
    }
    if (bad_pages)
        printf("memtouch: FAIL %" PRIu64 " bad words in %" PRIu64 " pages (first page %" PRIu64
               ")\n",
               bad_words, bad_pages, first_bad);
    if (bad_pages || counter_bad)
        return 1;
    printf("memtouch: ok %" PRIu64 " MiB seed %" PRIu64 " passes %" PRIu64, h->mb, seed, hi);
    if (steps)
        printf(" (pass %" PRIu64 " at page %" PRIu64 ")", hi, step_at);
    printf("%s\n", stopped ? " loop paused for check" : "");
    return 0;
}

static int cmd_gen(uint64_t bytes, uint64_t seed)
{
    uint64_t buf[512];
    uint64_t idx = 0;
    while (bytes) {
        for (unsigned i = 0; i < 512; i++)
            buf[i] = pattern(seed, 0, idx++);
        size_t n = bytes < sizeof(buf) ? (size_t)bytes : sizeof(buf);
        if (fwrite(buf, 1, n, stdout) != n)
            die("write");
        bytes -= n;
    }
    return fflush(stdout) ? 2 : 0;
}

static void usage(void)
{
    fputs("usage: memtouch write MB SEED [FILE]\n"
          "       memtouch loop MB [SEED] [FILE]\n"
          "       memtouch check [FILE]\n"
          "       memtouch gen BYTES SEED\n"
          "FILE defaults to " DEFAULT_FILE "\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    if ((!strcmp(cmd, "write") || !strcmp(cmd, "loop")) && argc >= 3 && !strcmp(argv[2], "0"))
        usage();
    if (!strcmp(cmd, "write") && (argc == 4 || argc == 5))
        return cmd_write(number(argv[2], "MB"), number(argv[3], "SEED"),
                         argc == 5 ? argv[4] : DEFAULT_FILE);
    if (!strcmp(cmd, "loop") && argc >= 3 && argc <= 5)
        cmd_loop(number(argv[2], "MB"), argc >= 4 ? number(argv[3], "SEED") : 0,
                 argc == 5 ? argv[4] : DEFAULT_FILE);
    if (!strcmp(cmd, "check") && argc <= 3)
        return cmd_check(argc == 3 ? argv[2] : DEFAULT_FILE);
    if (!strcmp(cmd, "gen") && argc == 4)
        return cmd_gen(number(argv[2], "BYTES"), number(argv[3], "SEED"));
    usage();
    return 2;
}
