/* SPDX-License-Identifier: MPL-2.0 */
/* Starting an empty cella-server for `cella migrate --start-target`. */
#include "cli/spawn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long a server gets to end after SIGTERM before SIGKILL. */
#define STOP_GRACE_S 5.0
/* Lines of a failed server's log shown with the failure. */
#define LOG_TAIL_LINES 12

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- is the address ours ---- */

int cli_local_address(const char *host)
{
    struct in_addr v4;
    struct in6_addr v6;
    bool is_v4 = inet_pton(AF_INET, host, &v4) == 1;
    if (!is_v4 && inet_pton(AF_INET6, host, &v6) != 1)
        return -EINVAL;
    if (is_v4 && (ntohl(v4.s_addr) >> 24) == 127)
        return 1;
    if (!is_v4 && IN6_IS_ADDR_LOOPBACK(&v6))
        return 1;
    struct ifaddrs *list;
    if (getifaddrs(&list) < 0)
        return 0;
    int found = 0;
    for (struct ifaddrs *i = list; i && !found; i = i->ifa_next) {
        const struct sockaddr *sa = i->ifa_addr;
        if (!sa)
            continue;
        if (is_v4 && sa->sa_family == AF_INET)
            found = ((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr == v4.s_addr;
        else if (!is_v4 && sa->sa_family == AF_INET6)
            found = IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr,
                                       &v6);
    }
    freeifaddrs(list);
    return found;
}

/* ---- finding the binary ---- */

static bool executable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* dir + "/" + name into out when that is an executable file. */
static bool try_path(const char *dir, size_t dlen, const char *name, char out[PATH_MAX])
{
    if (dlen == 0) {
        dir = ".";
        dlen = 1;
    }
    int n = snprintf(out, PATH_MAX, "%.*s/%s", (int)dlen, dir, name);
    return n > 0 && n < PATH_MAX && executable_file(out);
}

static bool search_path(const char *name, char out[PATH_MAX])
{
    const char *path = getenv("PATH");
    if (!path || !path[0])
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (try_path(p, len, name, out))
            return true;
        if (!colon)
            return false;
        p = colon + 1;
    }
}

/* The cella-server to run, into out. 0, or -ENOENT (reported). */
static int find_server(char out[PATH_MAX])
{
    const char *env = getenv("CELLA_SERVER_BIN");
    if (env && env[0]) {
        /* Used as given: a missing file is reported when it cannot run. */
        if (strchr(env, '/') || !search_path(env, out))
            snprintf(out, PATH_MAX, "%s", env);
        return 0;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        size_t dlen = slash ? (size_t)(slash - self) : 0;
        /* Installed side by side, or the meson build tree (src/cli, src/server). */
        char cand[PATH_MAX];
        if (try_path(self, dlen, "cella-server", cand) ||
            try_path(self, dlen, "../server/cella-server", cand)) {
            if (!realpath(cand, out))
                snprintf(out, PATH_MAX, "%s", cand);
            return 0;
        }
    }
    if (search_path("cella-server", out))
        return 0;
    cli_error("--start-target: cannot find cella-server next to cella or on $PATH "
              "(set CELLA_SERVER_BIN to its path)");
    return -ENOENT;
}

/* ---- the log ---- */

static int open_log(const char *given, const struct cli_server *srv, char out[PATH_MAX])
{
    int fd;
    if (given) {
        snprintf(out, PATH_MAX, "%s", given);
        fd = open(given, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0644);
    } else {
        const char *tmp = getenv("TMPDIR");
        if (!tmp || !tmp[0])
            tmp = "/tmp";
        int n = snprintf(out, PATH_MAX, "%s/cella-server-%s-XXXXXX.log", tmp, srv->port);
        if (n < 0 || n >= PATH_MAX) {
            errno = ENAMETOOLONG;
            fd = -1;
        } else {
            fd = mkostemps(out, 4, O_APPEND | O_CLOEXEC);
        }
    }
    if (fd < 0)
        cli_error("--start-target: cannot create the server's log %s: %s", out, strerror(errno));
    return fd;
}

/* Prints the last lines of the log, marked, so a failure explains itself. */
static void print_log_tail(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    if (cli_read_input(path, 1u << 20, &text, &len) < 0)
        return;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    size_t start = len;
    for (int lines = 0; start > 0; start--) {
        if (text[start - 1] == '\n' && ++lines == LOG_TAIL_LINES)
            break;
    }
    for (size_t i = start; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) : len - i;
        fputs("  | ", stderr);
        cli_print_sanitized(stderr, text + i, n, 0);
        fputc('\n', stderr);
        i += n + 1;
    }
    free(text);
}

/* ---- the process ---- */

static void describe_status(int st, char *buf, size_t len)
{
    if (WIFEXITED(st))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else
        snprintf(buf, len, "ended (wait status 0x%x)", (unsigned)st);
}

/* Whether pid (our child) has ended, without reaping it: its id stays taken. */
static bool has_ended(pid_t pid)
{
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        return errno == ECHILD;
    return si.si_pid == pid;
}

/*
 * Ends what is left of pid's process group (pid leads its own session) and
 * reaps pid; with `term`, asks with SIGTERM first. Returns pid's wait status.
 */
static int stop_group(pid_t pid, bool term)
{
    if (term && !has_ended(pid)) {
        kill(-pid, SIGTERM);
        for (double until = now_s() + STOP_GRACE_S; !has_ended(pid) && now_s() < until;)
            usleep(20000);
    }
    /* The leader is alive or a zombie here, so its group id is still ours. */
    kill(-pid, SIGKILL);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

/* Forks and execs argv detached; 0 with *pid, or -errno of the exec (reaped). */
static int start_detached(char *const *argv, int log_fd, pid_t *pid)
{
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int p[2];
    if (devnull < 0)
        return -errno;
    if (pipe2(p, O_CLOEXEC) < 0) {
        int e = errno;
        close(devnull);
        return -e;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        /* Only async-signal-safe calls from here to exec. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        setsid();
        if (dup2(devnull, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
            dup2(log_fd, STDERR_FILENO) < 0) {
            int e = errno;
            (void)!write(p[1], &e, sizeof(e));
            _exit(127);
        }
        /* Nothing else the command holds goes to the server (best effort). */
        (void)close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
        execv(argv[0], argv);
        int e = errno;
        (void)!write(p[1], &e, sizeof(e));
        _exit(127);
    }
    int e = errno;
    close(devnull);
    close(p[1]);
    if (child < 0) {
        close(p[0]);
        return -e;
    }
    /* The pipe closes at the exec (O_CLOEXEC), or carries the exec's errno. */
    int err = 0;
    ssize_t got;
    while ((got = read(p[0], &err, sizeof(err))) < 0 && errno == EINTR)
        ;
    close(p[0]);
    if (got == (ssize_t)sizeof(err)) {
        stop_group(child, false);
        return -(err ? err : EIO);
    }
    *pid = child;
    return 0;
}

/* 1 when the reply is Propolis's 424 NoInstance (an empty server). */
static int says_no_instance(const struct cli_http_reply *rep)
{
    if (rep->status != 424)
        return 0;
    json_t *j = json_loadb(rep->body, rep->len, 0, NULL);
    const char *code = json_string_value(json_object_get(j, "error_code"));
    int r = code && strcmp(code, "NoInstance") == 0;
    json_decref(j);
    return r;
}

int cli_spawn_server(const struct cli_server *srv, const char *const *args, int nargs,
                     const char *log_path, double wait_s, struct cli_spawned *out)
{
    memset(out, 0, sizeof(*out));
    if (find_server(out->bin) < 0)
        return CLI_UNREACHABLE;
    int log_fd = open_log(log_path, srv, out->log);
    if (log_fd < 0)
        return CLI_INVALID;
    char **argv = calloc((size_t)nargs + 4, sizeof(char *));
    if (!argv) {
        close(log_fd);
        cli_error("out of memory");
        return CLI_INVALID;
    }
    argv[0] = out->bin;
    argv[1] = (char *)"run";
    argv[2] = (char *)srv->hostport;
    for (int i = 0; i < nargs; i++)
        argv[3 + i] = (char *)args[i];
    pid_t pid = 0;
    int r = start_detached(argv, log_fd, &pid);
    free(argv);
    close(log_fd);
    if (r < 0) {
        cli_error("--start-target: cannot run %s: %s", out->bin, strerror(-r));
        if (!log_path)
            unlink(out->log); /* empty: the server never ran */
        return CLI_UNREACHABLE;
    }
    fprintf(stderr, "cella: started %s for %s (pid %ld); its log: %s\n", out->bin, srv->hostport,
            (long)pid, out->log);
    char why[CLI_HTTP_WHY_MAX] = "";
    long answered = 0;
    double until = now_s() + wait_s;
    for (;;) {
        if (has_ended(pid)) {
            char how[96];
            describe_status(stop_group(pid, false), how, sizeof(how));
            cli_error("the cella-server started for %s %s before it answered; its log: %s",
                      srv->hostport, how, out->log);
            print_log_tail(out->log);
            return CLI_UNREACHABLE;
        }
        struct cli_http_reply rep;
        if (cli_http(srv, "GET", "/instance", NULL, 1000, &rep, why, sizeof(why)) == 0) {
            int empty = says_no_instance(&rep);
            answered = rep.status;
            cli_http_reply_free(&rep);
            /* The answer must come from our server, not one that beat it to the port. */
            if (empty && !has_ended(pid)) {
                out->pid = pid;
                return CLI_OK;
            }
            if (!empty)
                break;
            continue; /* it ended just now: reported above */
        }
        if (now_s() >= until)
            break;
        usleep(50000);
    }
    char how[96];
    describe_status(stop_group(pid, true), how, sizeof(how));
    if (answered)
        cli_error("%s answered GET /instance with HTTP %ld, not 424 NoInstance: not the empty "
                  "server started for it; stopped that server (it %s); its log: %s",
                  srv->hostport, answered, how, out->log);
    else
        cli_error("the cella-server started for %s did not answer within %.1f s (%s); stopped it "
                  "(it %s); its log: %s",
                  srv->hostport, wait_s, why, how, out->log);
    print_log_tail(out->log);
    return CLI_UNREACHABLE;
}

void cli_spawned_report(const struct cli_spawned *s, const struct cli_server *srv, bool migrated)
{
    if (!s->pid)
        return;
    if (has_ended(s->pid)) {
        char how[96];
        int st = 0;
        while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
            ;
        describe_status(st, how, sizeof(how));
        cli_error("the cella-server started for %s (pid %ld) %s; its log: %s", srv->hostport,
                  (long)s->pid, how, s->log);
        print_log_tail(s->log);
    } else if (migrated) {
        fprintf(stderr,
                "cella: the instance runs on the cella-server started for %s (pid %ld); "
                "its log: %s\n",
                srv->hostport, (long)s->pid, s->log);
    } else {
        fprintf(stderr,
                "cella: the cella-server started for %s still runs (pid %ld); its log: %s\n",
                srv->hostport, (long)s->pid, s->log);
    }
}
