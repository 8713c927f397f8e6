/* SPDX-License-Identifier: MPL-2.0 */
/*
 * selfmig: live-migrates a running guest between two machines in one
 * process, on real KVM, and checks that it carries on.
 *
 * Machine A is built from a config TOML and boots the guest kit; once the
 * kit's ready line shows on COM1 a background counter starts in the guest.
 * Machine B is built from the same spec and not started. Then: dirty
 * tracking on A, a few pre-copy passes of A's dirty RAM into B's, A paused,
 * a final pass, every state payload saved from A and loaded into B, B
 * resumed, A destroyed. --pre-cmd runs a command on A first (e.g. a
 * background disk writer, so requests are in flight when A pauses). On B the counter must still
 * run, a command must answer, and (--disk-check CMD) CMD must exit 0 (e.g. a write + sync to a
 * virtio disk).
 *
 * usage: selfmig CONFIG.toml --kernel K [--initrd I] [--cmdline C]
 *                [--bootrom B [--linuxboot-rom L]] [--passes N] [--pre-cmd CMD]
 *                [--disk-check CMD]
 * Exit status 0 on success, 1 on failure, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backends/set.h"
#include "common/log.h"
#include "config/config.h"
#include "machine/machine.h"
#include "machine/machine_mig.h"
#include "spec/validate.h"

#define READY_LINE "CELLA-GUEST-READY"
#define EXIT_MARK  "CELLA-EXIT "

/* Everything the guest wrote to COM1 (of A, then of B), for matching. */
struct console {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    char *buf;
    size_t len, cap;
    size_t pos; /* consumed up to here */
    const char *who;
    bool failed; /* a terminal machine event came */
    char event[256];
};

static struct console con = {
    .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .who = "A"};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "selfmig: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void on_serial(void *ctx, unsigned com, const uint8_t *buf, size_t len)
{
    (void)ctx;
    if (com != 1)
        return;
    pthread_mutex_lock(&con.lock);
    if (con.len + len + 1 > con.cap) {
        size_t cap = (con.cap ? con.cap * 2 : 65536) + len;
        char *p = realloc(con.buf, cap);
        if (!p) {
            pthread_mutex_unlock(&con.lock);
            return;
        }
        con.buf = p;
        con.cap = cap;
    }
    memcpy(con.buf + con.len, buf, len);
    con.len += len;
    con.buf[con.len] = 0;
    pthread_cond_broadcast(&con.cond);
    pthread_mutex_unlock(&con.lock);
    fwrite(buf, 1, len, stdout);
    fflush(stdout);
}

static void on_event(void *ctx, enum machine_event ev, const char *detail)
{
    (void)ctx;
    pthread_mutex_lock(&con.lock);
    if (ev != MACHINE_EV_PANIC || !con.failed) {
        con.failed = true;
        snprintf(con.event, sizeof(con.event), "%s: %s", machine_event_name(ev),
                 detail ? detail : "");
    }
    pthread_cond_broadcast(&con.cond);
    pthread_mutex_unlock(&con.lock);
}

/*
 * Waits until `needle` appears after the consumed position; copies what
 * came before it into out (if any) and consumes through it. false on
 * timeout or a machine event.
 */
static bool wait_for(const char *needle, double timeout, char *out, size_t outcap)
{
    double deadline = now_s() + timeout;
    bool ok = false;
    pthread_mutex_lock(&con.lock);
    for (;;) {
        char *hit = con.buf ? strstr(con.buf + con.pos, needle) : NULL;
        if (hit) {
            size_t n = (size_t)(hit - (con.buf + con.pos));
            if (out && outcap) {
                size_t c = n < outcap - 1 ? n : outcap - 1;
                memcpy(out, con.buf + con.pos, c);
                out[c] = 0;
            }
            con.pos = (size_t)(hit - con.buf) + strlen(needle);
            ok = true;
            break;
        }
        if (con.failed || now_s() > deadline)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&con.cond, &con.lock, &ts);
    }
    if (!ok)
        say("machine %s: no \"%s\" (%s)", con.who, needle, con.failed ? con.event : "timeout");
    pthread_mutex_unlock(&con.lock);
    return ok;
}

static bool type_line(struct machine *m, const char *line)
{
    size_t len = strlen(line);
    char *buf = malloc(len + 1);
    if (!buf)
        return false;
    memcpy(buf, line, len);
    buf[len] = '\n';
    size_t off = 0;
    double deadline = now_s() + 30;
    while (off < len + 1 && now_s() < deadline) {
        size_t took = machine_serial_input(m, 1, (const uint8_t *)buf + off, len + 1 - off);
        off += took;
        if (!took)
            usleep(1000);
    }
    free(buf);
    return off == len + 1;
}

/* Runs a command in the guest; its output into out, its status returned (-1: no answer). */
static int run_cmd(struct machine *m, const char *cmd, double timeout, char *out, size_t outcap)
{
    say("machine %s: $ %s", con.who, cmd);
    if (!type_line(m, cmd))
        return -1;
    char tmp[4096];
    if (!out) {
        out = tmp;
        outcap = sizeof(tmp);
    }
    if (!wait_for(EXIT_MARK, timeout, out, outcap) || !wait_for("\n", 5, tmp, sizeof(tmp))) {
        /* What the devices and vCPUs were doing, for the log (vCPUs log at their next exit). */
        machine_debug_dump(m);
        usleep(500000);
        return -1;
    }
    return atoi(tmp);
}

/* The last number in s, or -1. */
static long long last_number(const char *s)
{
    long long v = -1;
    for (const char *p = s; *p; p++) {
        if (*p >= '0' && *p <= '9' && (p == s || p[-1] < '0' || p[-1] > '9'))
            v = strtoll(p, NULL, 10);
    }
    return v;
}

/* The guest's counter; the file is empty for an instant while it is rewritten. */
static long long read_counter(struct machine *m)
{
    for (int i = 0; i < 10; i++) {
        char out[4096];
        if (run_cmd(m, "cat /tmp/c", 60, out, sizeof(out)) != 0)
            return -1;
        long long v = last_number(out);
        if (v >= 0)
            return v;
    }
    return -1;
}

/* ---- migration ---- */

struct load_ctx {
    struct machine *target;
    size_t count, bytes;
    int failed;
};

static int emit_into(void *ctx, const char *kind, const char *id, uint32_t version,
                     const uint8_t *data, size_t len)
{
    struct load_ctx *l = ctx;
    struct cella_errors errs = {0};
    int r = machine_load_state(l->target, kind, id, version, data, len, &errs);
    if (r < 0) {
        say("loading %s %s (v%u, %zu bytes): %s", kind, id, version, len, strerror(-r));
        cella_errors_print(&errs, stderr);
    }
    cella_errors_clear(&errs);
    l->count++;
    l->bytes += len;
    return r;
}

static size_t popcount_bits(const uint64_t *bm, size_t words)
{
    size_t n = 0;
    for (size_t i = 0; i < words; i++)
        n += (size_t)__builtin_popcountll(bm[i]);
    return n;
}

/* One pass: fetch A's dirty pages, re-arm them, copy them into B. Returns pages or -errno. */
static long copy_pass(struct machine *a, struct machine *b, uint64_t *bm, size_t words)
{
    memset(bm, 0, words * sizeof(uint64_t));
    int r = machine_dirty_fetch(a, bm);
    if (r == 0)
        r = machine_dirty_clear(a, bm);
    if (r < 0)
        return r;
    struct guest_mem *ma = machine_guest_mem(a), *mb = machine_guest_mem(b);
    uint64_t pages = ma->size / GUEST_PAGE_SIZE;
    for (uint64_t p = 0; p < pages; p++) {
        if (bm[p / 64] & (1ull << (p % 64)))
            memcpy(mb->base + p * GUEST_PAGE_SIZE, ma->base + p * GUEST_PAGE_SIZE, GUEST_PAGE_SIZE);
    }
    return (long)popcount_bits(bm, words);
}

static int migrate(struct machine *a, struct machine *b, int passes)
{
    struct guest_mem *ma = machine_guest_mem(a);
    size_t words = (size_t)((ma->size / GUEST_PAGE_SIZE + 63) / 64);
    uint64_t *bm = calloc(words, sizeof(uint64_t));
    if (!bm)
        return -ENOMEM;
    int r = machine_dirty_start(a);
    for (int i = 0; i < passes && r == 0; i++) {
        double t0 = now_s();
        long n = copy_pass(a, b, bm, words);
        if (n < 0)
            r = (int)n;
        else
            say("pre-copy pass %d: %ld pages in %.1f ms", i + 1, n, (now_s() - t0) * 1e3);
    }
    double t_pause = now_s();
    if (r == 0)
        r = machine_pause(a);
    double t_paused = now_s();
    long last = r == 0 ? copy_pass(a, b, bm, words) : 0;
    if (last < 0)
        r = (int)last;
    double t_copied = now_s();
    struct load_ctx l = {.target = b};
    if (r == 0)
        r = machine_save_state(a, NULL, 0, emit_into, &l);
    struct cella_errors errs = {0};
    if (r == 0 && (r = machine_load_finish(b, &errs)) < 0)
        cella_errors_print(&errs, stderr);
    cella_errors_clear(&errs);
    double t_loaded = now_s();
    machine_dirty_stop(a);
    if (r == 0)
        r = machine_resume(b);
    double t_resumed = now_s();
    free(bm);
    if (r < 0)
        return r;
    say("paused in %.1f ms; final pass %ld pages in %.1f ms; %zu payloads (%zu bytes) in %.1f ms",
        (t_paused - t_pause) * 1e3, last, (t_copied - t_paused) * 1e3, l.count, l.bytes,
        (t_loaded - t_copied) * 1e3);
    say("pause -> resume: %.1f ms", (t_resumed - t_pause) * 1e3);
    return 0;
}

/* ---- setup ---- */

struct args {
    const char *config;
    struct machine_host host;
    int passes;
    const char *disk_check;
    const char *pre_cmd;
};

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        {"kernel", required_argument, NULL, 'k'},
        {"initrd", required_argument, NULL, 'i'},
        {"cmdline", required_argument, NULL, 'c'},
        {"bootrom", required_argument, NULL, 'b'},
        {"linuxboot-rom", required_argument, NULL, 'l'},
        {"passes", required_argument, NULL, 'p'},
        {"disk-check", required_argument, NULL, 'd'},
        {"pre-cmd", required_argument, NULL, 'P'},
        {0},
    };
    a->passes = 3;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            a->host.kernel = optarg;
            break;
        case 'i':
            a->host.initrd = optarg;
            break;
        case 'c':
            a->host.cmdline = optarg;
            break;
        case 'b':
            a->host.bootrom = optarg;
            break;
        case 'l':
            a->host.linuxboot_rom = optarg;
            break;
        case 'p':
            a->passes = atoi(optarg);
            break;
        case 'd':
            a->disk_check = optarg;
            break;
        case 'P':
            a->pre_cmd = optarg;
            break;
        default:
            return -EINVAL;
        }
    }
    if (optind != argc - 1 || !a->host.kernel || a->passes < 0)
        return -EINVAL;
    a->config = argv[optind];
    return 0;
}

static struct machine *build(const struct instance_spec *spec, const struct machine_host *host,
                             struct backend_set *bs)
{
    struct machine_callbacks cb = {.event = on_event, .serial_out = on_serial};
    struct cella_errors errs = {0};
    struct machine *m = NULL;
    if (machine_create(spec, host, bs, &cb, &m, &errs) < 0) {
        say("cannot build the machine:");
        cella_errors_print(&errs, stderr);
    }
    cella_errors_clear(&errs);
    return m;
}

static bool check_target(struct machine *b, long long before, const char *disk_check)
{
    long long c1 = read_counter(b), c2 = c1;
    /* A busy nested host may starve the guest's loop for a while: give it 5 s. */
    for (int i = 0; i < 10 && c1 >= 0 && c2 <= c1; i++) {
        usleep(500 * 1000);
        c2 = read_counter(b);
    }
    say("counter on B: %lld then %lld (A had %lld)", c1, c2, before);
    if (c1 < before || c2 <= c1) {
        say("FAIL: the guest's counter did not carry on");
        return false;
    }
    char out[4096];
    if (run_cmd(b, "echo ok", 30, out, sizeof(out)) != 0 || !strstr(out, "ok")) {
        say("FAIL: echo ok did not answer");
        return false;
    }
    if (disk_check && run_cmd(b, disk_check, 120, out, sizeof(out)) != 0) {
        say("FAIL: %s: %s", disk_check, out);
        return false;
    }
    return true;
}

static int run(const struct instance_spec *spec, const struct args *a, struct backend_set *bs)
{
    struct machine *ma = build(spec, &a->host, bs);
    if (!ma || machine_start(ma) < 0) {
        machine_destroy(ma);
        return 1;
    }
    double t0 = now_s();
    long long before = -1;
    bool ok = wait_for(READY_LINE, 300, NULL, 0);
    if (ok)
        say("A ready after %.1f s", now_s() - t0);
    ok = ok &&
         run_cmd(ma, "(i=0; while :; do i=$((i+1)); echo $i > /tmp/c; done) &", 30, NULL, 0) == 0;
    ok = ok && (!a->pre_cmd || run_cmd(ma, a->pre_cmd, 60, NULL, 0) == 0);
    ok = ok && (before = read_counter(ma)) > 0;
    struct machine_host incoming = a->host;
    incoming.incoming = true; /* B's RAM and registers come from A */
    struct machine *mb = ok ? build(spec, &incoming, bs) : NULL;
    ok = ok && mb;
    int r = ok ? migrate(ma, mb, a->passes) : 0;
    if (r < 0)
        say("migration failed: %s", strerror(-r));
    ok = ok && r == 0;
    machine_destroy(ma);
    pthread_mutex_lock(&con.lock);
    con.who = "B";
    pthread_mutex_unlock(&con.lock);
    ok = ok && check_target(mb, before, a->disk_check);
    machine_destroy(mb);
    say("%s", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    struct args a = {0};
    if (parse_args(argc, argv, &a) < 0) {
        fprintf(stderr, "usage: selfmig CONFIG.toml --kernel K [--initrd I] [--cmdline C]\n"
                        "               [--bootrom B [--linuxboot-rom L]] [--passes N]\n"
                        "               [--pre-cmd CMD] [--disk-check CMD]\n");
        return 2;
    }
    struct instance_spec spec;
    struct cella_errors errs = {0};
    int r = config_file_to_spec(a.config, &spec, &errs);
    if (r == 0)
        r = spec_check_host_support(&spec, &errs);
    if (r < 0) {
        say("%s is not a VM this host can run:", a.config);
        cella_errors_print(&errs, stderr);
        cella_errors_clear(&errs);
        return 1;
    }
    struct backend_set *bs = NULL;
    if (backend_set_open(&spec, 0, NULL, NULL, &bs, &errs) < 0) {
        say("cannot open the backends:");
        cella_errors_print(&errs, stderr);
        cella_errors_clear(&errs);
        spec_free(&spec);
        return 1;
    }
    int status = run(&spec, &a, bs);
    backend_set_close(bs);
    spec_free(&spec);
    free(con.buf);
    return status;
}
