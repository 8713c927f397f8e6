/* SPDX-License-Identifier: MPL-2.0 */
/*
 * cella-standalone: runs one VM from a config TOML, COM1 on stdio, until
 * the guest powers off. Like propolis-standalone, for development and
 * tests; the server (cella-server) is the product.
 *
 * Exit status: 0 the guest powered off; 1 bad config/spec or the VM could
 * not be built; 2 usage; 3 the guest panicked (pvpanic); 4 the VM failed
 * (vCPU or device failure); 5 the detach key (Ctrl-]) was pressed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "backends/set.h"
#include "common/log.h"
#include "config/config.h"
#include "machine/host_opts.h"
#include "machine/machine.h"
#include "spec/validate.h"

#define EXIT_POWEROFF 0
#define EXIT_INVALID  1
#define EXIT_USAGE    2
#define EXIT_PANIC    3
#define EXIT_FAILURE_ 4
#define EXIT_DETACH   5
#define DETACH_KEY    0x1d /* Ctrl-] */

struct standalone {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool have_event;
    enum machine_event event;
    char detail[256];
    struct machine *m; /* guarded by lock while the input thread uses it */
    int serial_fd[5];  /* where com1..com4 output goes; -1 to drop */
    atomic_bool detach;
    struct backend_set *backends;
};

static void on_event(void *ctx, enum machine_event ev, const char *detail)
{
    struct standalone *s = ctx;
    pthread_mutex_lock(&s->lock);
    if (!s->have_event) {
        s->have_event = true;
        s->event = ev;
        snprintf(s->detail, sizeof(s->detail), "%s", detail ? detail : "");
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void on_serial(void *ctx, unsigned com, const uint8_t *buf, size_t len)
{
    struct standalone *s = ctx;
    int fd = com <= 4 ? s->serial_fd[com] : -1;
    while (fd >= 0 && len) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0)
            return; /* a closed sink must not stall the guest */
        buf += n;
        len -= (size_t)n;
    }
}

/* Feeds stdin to COM1; the detach key ends the run. */
static void *input_thread(void *arg)
{
    struct standalone *s = arg;
    uint8_t buf[256];
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
        if (n <= 0)
            return NULL;
        size_t off = 0;
        while (off < (size_t)n) {
            if (memchr(buf + off, DETACH_KEY, (size_t)n - off)) {
                atomic_store(&s->detach, true);
                on_event(s, MACHINE_EV_FAILURE, "detach key");
                return NULL;
            }
            pthread_mutex_lock(&s->lock);
            size_t took = s->m ? machine_serial_input(s->m, 1, buf + off, (size_t)n - off) : 0;
            pthread_mutex_unlock(&s->lock);
            off += took;
            if (!took)
                usleep(1000); /* the guest has not drained the FIFO yet */
        }
    }
}

static void usage(FILE *f)
{
    fprintf(f, "usage: cella-standalone CONFIG.toml [--bootrom FILE [--linuxboot-rom FILE]]\n"
               "                        [--kernel FILE [--initrd FILE] [--cmdline TEXT]]\n"
               "                        [--serial comN=PATH] [--log-level LEVEL]\n"
               "\n"
               "Runs one VM from a config TOML with COM1 on stdin/stdout until the guest\n"
               "powers off. Ctrl-] detaches (stops the VM). With --kernel alone the kernel\n"
               "is booted directly; with --bootrom the firmware boots (and, given --kernel\n"
               "and the linuxboot_dma.bin option ROM, loads that kernel through fw_cfg).\n"
               "Exit status: 0 powered off, 1 invalid config or VM build failure, 2 usage,\n"
               "3 guest panic, 4 VM failure, 5 detached.\n");
}

struct args {
    const char *config;
    struct machine_host host;
    const char *serial_path[5];
};

static int parse_serial(struct args *a, const char *v)
{
    if (strncmp(v, "com", 3) || v[3] < '1' || v[3] > '4' || v[4] != '=' || !v[5])
        return -EINVAL;
    a->serial_path[v[3] - '0'] = v + 5;
    return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    static const struct option opts[] = {
        MACHINE_HOST_OPTIONS,
        {"serial", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int r = machine_host_option(c, optarg, &a->host, "cella-standalone");
        if (r < 0)
            return r;
        if (r > 0)
            continue;
        switch (c) {
        case 's':
            if (parse_serial(a, optarg) < 0) {
                fprintf(stderr, "cella-standalone: --serial wants comN=PATH, not %s\n", optarg);
                return -EINVAL;
            }
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            return -EINVAL;
        }
    }
    if (optind != argc - 1 || machine_host_check(&a->host) < 0) {
        usage(stderr);
        return -EINVAL;
    }
    a->config = argv[optind];
    return 0;
}

static int load_spec(const char *path, struct instance_spec *spec)
{
    struct cella_errors errs = {0};
    int r = config_file_to_spec(path, spec, &errs);
    if (r == 0)
        r = spec_check_host_support(spec, &errs);
    if (r < 0) {
        cella_errors_sort(&errs);
        fprintf(stderr, "cella-standalone: %s is not a VM this host can run:\n", path);
        cella_errors_print(&errs, stderr);
    }
    cella_errors_clear(&errs);
    return r;
}

/* Builds and starts a machine; returns 0 or prints why not. */
static int boot(struct standalone *s, const struct instance_spec *spec,
                const struct machine_host *host)
{
    struct machine_callbacks cb = {.ctx = s, .event = on_event, .serial_out = on_serial};
    struct cella_errors errs = {0};
    struct machine *m;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int r = machine_create(spec, host, s->backends, &cb, &m, &errs);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    log_msg(LOG_DEBUG, "standalone", "machine built in %.1f ms",
            (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    if (r < 0) {
        fprintf(stderr, "cella-standalone: cannot build the VM:\n");
        cella_errors_print(&errs, stderr);
        cella_errors_clear(&errs);
        return r;
    }
    pthread_mutex_lock(&s->lock);
    s->m = m;
    s->have_event = false;
    pthread_mutex_unlock(&s->lock);
    return machine_start(m);
}

static void teardown(struct standalone *s)
{
    pthread_mutex_lock(&s->lock);
    struct machine *m = s->m;
    s->m = NULL;
    pthread_mutex_unlock(&s->lock);
    machine_destroy(m);
}

static void on_backend_event(void *ctx, const char *key, enum blk_event ev, const char *detail)
{
    static const char *const names[] = {"degraded", "recovered", "failed"};
    log_msg(ev == BLK_EV_RECOVERED ? LOG_INFO : LOG_WARN, "standalone", "backend %s %s: %s", key,
            names[ev], detail ? detail : "");
}

static int run_machines(struct standalone *s, const struct instance_spec *spec,
                        const struct machine_host *host);

/* Opens the disks' backends once (they outlive reboots), then runs machines. */
static int run(struct standalone *s, const struct instance_spec *spec,
               const struct machine_host *host)
{
    struct cella_errors errs = {0};
    if (backend_set_open(spec, 0, on_backend_event, s, &s->backends, &errs) < 0) {
        cella_errors_sort(&errs);
        fprintf(stderr, "cella-standalone: cannot open the backends:\n");
        cella_errors_print(&errs, stderr);
        cella_errors_clear(&errs);
        return EXIT_INVALID;
    }
    int rc = run_machines(s, spec, host);
    backend_set_close(s->backends);
    s->backends = NULL;
    return rc;
}

static int run_machines(struct standalone *s, const struct instance_spec *spec,
                        const struct machine_host *host)
{
    for (;;) {
        if (boot(s, spec, host) < 0)
            return EXIT_INVALID;
        pthread_mutex_lock(&s->lock);
        while (!s->have_event)
            pthread_cond_wait(&s->cond, &s->lock);
        enum machine_event ev = s->event;
        char detail[256];
        snprintf(detail, sizeof(detail), "%s", s->detail);
        pthread_mutex_unlock(&s->lock);
        teardown(s);
        if (atomic_load(&s->detach)) {
            fprintf(stderr, "\ncella-standalone: detached; VM stopped\n");
            return EXIT_DETACH;
        }
        switch (ev) {
        case MACHINE_EV_RESET:
            log_msg(LOG_INFO, "standalone", "guest reset (%s); booting again", detail);
            continue;
        case MACHINE_EV_POWEROFF:
            fprintf(stderr, "cella-standalone: the guest powered off\n");
            return EXIT_POWEROFF;
        case MACHINE_EV_PANIC:
            fprintf(stderr, "cella-standalone: the guest panicked (pvpanic: %s)\n", detail);
            return EXIT_PANIC;
        case MACHINE_EV_FAILURE:
            fprintf(stderr, "cella-standalone: the VM failed: %s\n", detail);
            return EXIT_FAILURE_;
        }
    }
}

static int open_sinks(struct standalone *s, const struct args *a)
{
    s->serial_fd[1] = STDOUT_FILENO;
    for (int i = 2; i <= 4; i++)
        s->serial_fd[i] = -1;
    for (int i = 1; i <= 4; i++) {
        if (!a->serial_path[i])
            continue;
        s->serial_fd[i] = open(a->serial_path[i], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (s->serial_fd[i] < 0) {
            fprintf(stderr, "cella-standalone: cannot open %s: %s\n", a->serial_path[i],
                    strerror(errno));
            return -errno;
        }
    }
    return 0;
}

/* SIGUSR2: log the machine's device state (a stuck guest's queues and interrupts). */
static void *debug_thread(void *arg)
{
    struct standalone *s = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0)
            return NULL;
        pthread_mutex_lock(&s->lock);
        if (s->m)
            machine_debug_dump(s->m);
        pthread_mutex_unlock(&s->lock);
    }
}

int main(int argc, char **argv)
{
    struct args a = {0};
    if (parse_args(argc, argv, &a) < 0)
        return EXIT_USAGE;
    struct instance_spec spec;
    if (load_spec(a.config, &spec) < 0)
        return EXIT_INVALID;
    struct standalone s = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    if (open_sinks(&s, &a) < 0) {
        spec_free(&spec);
        return EXIT_INVALID;
    }
    struct termios saved;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        struct termios raw = saved;
        cfmakeraw(&raw);
        raw.c_oflag |= OPOST | ONLCR;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    /* Every thread (they inherit this mask) leaves SIGUSR2 to debug_thread. */
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);
    pthread_t input, debug;
    pthread_create(&input, NULL, input_thread, &s);
    pthread_detach(input);
    if (pthread_create(&debug, NULL, debug_thread, &s) == 0)
        pthread_detach(debug);
    int status = run(&s, &spec, &a.host);
    if (tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    spec_free(&spec);
    return status;
}
