/* SPDX-License-Identifier: MPL-2.0 */
/*
 * `cella serial`: the guest's serial console over Propolis's websocket
 * (GET /instance/serial), or its buffered history.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/http.h"
#include "cli/ws.h"

enum { SER_FROM_START, SER_MOST_RECENT, SER_HISTORY, SER_MAX_BYTES, SER_EXIT_AFTER };

const struct cli_option cli_serial_options[] = {
    [SER_FROM_START] = {"from-start", "N", "Start at byte N of the guest's output"},
    [SER_MOST_RECENT] = {"most-recent", "N", "Start N bytes before the newest output"},
    [SER_HISTORY] = {"history", NULL, "Print the buffered output and exit"},
    [SER_MAX_BYTES] = {"max-bytes", "N", "With --history: print at most N bytes"},
    [SER_EXIT_AFTER] = {"exit-after", "SECONDS", "Close the console after SECONDS"},
    {0},
};

/* Ctrl-]: leaves the console, as telnet does. */
#define DETACH_KEY 0x1d

/* Seconds of silence after the end of stdin before the console closes. */
#define QUIET_S 1.0

/* Seconds to wait for the server's close frame after sending ours. */
#define CLOSE_WAIT_S 1.0

/* Stop reading stdin while this much is queued for the server. */
#define MAX_QUEUED ((size_t)1 << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int parse_count(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || errno || *end) {
        cli_error("--%s \"%s\" is not a number of bytes", opt, s);
        return CLI_USAGE;
    }
    *out = v;
    return CLI_OK;
}

/* "?from_start=N" / "?most_recent=N" / "" into q (size 64); CLI_USAGE on bad values. */
static int offset_query(const struct cli_args *a, char *q, size_t qlen)
{
    q[0] = '\0';
    if (a->set[SER_FROM_START] && a->set[SER_MOST_RECENT]) {
        cli_error("give at most one of --from-start and --most-recent");
        return CLI_USAGE;
    }
    for (int k = SER_FROM_START; k <= SER_MOST_RECENT; k++) {
        uint64_t v;
        if (!a->set[k])
            continue;
        if (parse_count(cli_serial_options[k].name, a->value[k], &v) != CLI_OK)
            return CLI_USAGE;
        snprintf(q, qlen, "?%s=%llu", k == SER_FROM_START ? "from_start" : "most_recent",
                 (unsigned long long)v);
    }
    return CLI_OK;
}

/* Writes all of buf to fd; false when fd is gone. */
static bool write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd pf = {.fd = fd, .events = POLLOUT};
            poll(&pf, 1, 100);
            continue;
        }
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* ---- --history ---- */

static int serial_history(const struct cli_args *a)
{
    char q[64], path[160];
    if (offset_query(a, q, sizeof(q)) != CLI_OK)
        return CLI_USAGE;
    if (!q[0])
        snprintf(q, sizeof(q), "?most_recent=16384");
    uint64_t max = 0;
    if (a->set[SER_MAX_BYTES] && parse_count("max-bytes", a->value[SER_MAX_BYTES], &max) != CLI_OK)
        return CLI_USAGE;
    if (a->set[SER_MAX_BYTES])
        snprintf(path, sizeof(path), "/instance/serial/history%s&max_bytes=%llu", q,
                 (unsigned long long)max);
    else
        snprintf(path, sizeof(path), "/instance/serial/history%s", q);
    json_t *ans;
    int r = cli_call(a, "GET", path, NULL, &ans);
    if (r != CLI_OK)
        return r;
    json_t *data = json_object_get(ans, "data");
    size_t n = json_array_size(data);
    uint8_t *bytes = malloc(n ? n : 1);
    bool ok = json_is_array(data) && json_is_integer(json_object_get(ans, "last_byte_offset"));
    for (size_t i = 0; ok && bytes && i < n; i++) {
        json_t *b = json_array_get(data, i);
        json_int_t v = json_integer_value(b);
        ok = json_is_integer(b) && v >= 0 && v <= 255;
        bytes[i] = (uint8_t)v;
    }
    json_decref(ans);
    if (!bytes) {
        cli_error("out of memory");
        return CLI_INVALID;
    }
    if (!ok) {
        free(bytes);
        cli_error("the server's answer is not a valid InstanceSerialConsoleHistoryResponse");
        return CLI_INVALID;
    }
    fflush(stdout);
    bool wrote = write_all(STDOUT_FILENO, bytes, n);
    free(bytes);
    if (!wrote) {
        cli_error("cannot write the output");
        return CLI_INVALID;
    }
    return CLI_OK;
}

/* ---- the console ---- */

struct console {
    struct cli_ws ws;
    bool tty;
    bool raw;
    struct termios saved;
    double last_rx;
    bool close_received;
    uint16_t close_code;
    bool out_gone; /* stdout cannot be written any more */
};

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
}

/* Prints a note on stderr; on a raw terminal, lines need their \r. */
static void note(const struct console *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void note(const struct console *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(c->raw ? "\r\ncella: " : "cella: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(c->raw ? "\r\n" : "\n", stderr);
    va_end(ap);
}

/* Reports a text frame: a control message from the server. */
static void control_message(struct console *c, const uint8_t *msg, size_t len)
{
    json_t *j = json_loadb((const char *)msg, len, 0, NULL);
    json_t *m = json_object_get(j, "Migrating");
    const char *dest = json_string_value(json_object_get(m, "destination"));
    json_t *from = json_object_get(m, "from_start");
    if (dest && json_is_integer(from)) {
        char d[128];
        snprintf(d, sizeof(d), "%s", dest);
        for (char *p = d; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
        }
        note(c,
             "the instance is migrating to %s; its console continues there from byte %lld "
             "(cella serial --server %s --from-start %lld)",
             d, (long long)json_integer_value(from), d, (long long)json_integer_value(from));
    } else {
        fputs(c->raw ? "\r\ncella: server says: " : "cella: server says: ", stderr);
        cli_print_sanitized(stderr, (const char *)msg, len < 1000 ? len : 1000, 0);
        fputs(c->raw ? "\r\n" : "\n", stderr);
    }
    json_decref(j);
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
    struct console *c = cli_ws_user(user);
    switch (arg->opcode) {
    case WSLAY_BINARY_FRAME:
        c->last_rx = now_s();
        if (!c->out_gone && !write_all(STDOUT_FILENO, arg->msg, arg->msg_length))
            c->out_gone = true;
        break;
    case WSLAY_TEXT_FRAME:
        c->last_rx = now_s();
        control_message(c, arg->msg, arg->msg_length);
        break;
    case WSLAY_CONNECTION_CLOSE:
        c->close_received = true;
        c->close_code = arg->status_code;
        break;
    default:
        break;
    }
}

static void restore_terminal(struct console *c)
{
    if (c->raw) {
        tcsetattr(STDIN_FILENO, TCSANOW, &c->saved);
        c->raw = false;
    }
}

/* Queues len bytes of input for the guest; false when wslay refuses. */
static bool send_input(struct console *c, const uint8_t *buf, size_t len)
{
    if (len == 0)
        return true;
    struct wslay_event_msg m = {.opcode = WSLAY_BINARY_FRAME, .msg = buf, .msg_length = len};
    return wslay_event_queue_msg(c->ws.ctx, &m) == 0;
}

static int serial_console(const struct cli_args *a)
{
    char q[64], path[160];
    if (offset_query(a, q, sizeof(q)) != CLI_OK)
        return CLI_USAGE;
    if (a->set[SER_MAX_BYTES]) {
        cli_error("--max-bytes goes with --history");
        return CLI_USAGE;
    }
    double exit_after = 0;
    if (a->set[SER_EXIT_AFTER]) {
        char *end;
        exit_after = strtod(a->value[SER_EXIT_AFTER], &end);
        if (*end || !(exit_after > 0 && exit_after < 1e7)) {
            cli_error("--exit-after \"%s\" is not a positive number of seconds",
                      a->value[SER_EXIT_AFTER]);
            return CLI_USAGE;
        }
    }
    struct cli_server srv;
    if (cli_server_parse(a->server, &srv) < 0) {
        cli_error("invalid server address \"%s\" (expected ADDR:PORT)", a->server);
        return CLI_USAGE;
    }
    snprintf(path, sizeof(path), "/instance/serial%s", q);

    struct console c;
    memset(&c, 0, sizeof(c));
    struct wslay_event_callbacks cb = {.on_msg_recv_callback = on_msg};
    int r = cli_ws_connect(&srv, path, &cb, &c, &c.ws);
    if (r != CLI_OK)
        return r;

    struct sigaction sa = {.sa_handler = on_signal}, old_int, old_term, old_hup, old_pipe;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigaction(SIGPIPE, &ign, &old_pipe);
    /* The signals are taken only inside ppoll(), so none slips past the check. */
    sigset_t block, poll_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &poll_mask);

    c.tty = isatty(STDIN_FILENO);
    if (c.tty && tcgetattr(STDIN_FILENO, &c.saved) == 0) {
        struct termios t = c.saved;
        cfmakeraw(&t);
        if (tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0)
            c.raw = true;
        fprintf(stderr, "cella: connected to %s; Ctrl-] detaches\r\n", srv.hostport);
    }

    /*
     * Ending: once a reason to end comes up (close_req), stdin is no longer
     * read; when what was queued has gone out, the close frame follows
     * (closing_at), and the server's close frame ends the loop. Each step is
     * bounded by CLOSE_WAIT_S, so a stuck server cannot hold the console.
     */
    double start = now_s(), eof_at = 0, close_req = 0, closing_at = 0;
    c.last_rx = start;
    bool stdin_open = true, lost = false, detached = false;
    int status = CLI_OK;
    for (;;) {
        double now = now_s();
        double quiet_since = c.last_rx > eof_at ? c.last_rx : eof_at;
        if (!close_req &&
            (got_signal || detached || c.out_gone || (exit_after && now - start >= exit_after) ||
             (!exit_after && !stdin_open && now - quiet_since >= QUIET_S))) {
            close_req = now;
            stdin_open = false;
        }
        if (close_req && !closing_at && wslay_event_get_queued_msg_count(c.ws.ctx) == 0) {
            wslay_event_queue_close(c.ws.ctx, 1000, NULL, 0);
            closing_at = now;
        }
        if (close_req && now - (closing_at ? closing_at : close_req) >= CLOSE_WAIT_S)
            break;
        bool want_read = wslay_event_want_read(c.ws.ctx);
        bool want_write = wslay_event_want_write(c.ws.ctx);
        if (!want_read && !want_write)
            break; /* the close handshake is done */

        struct pollfd pf[2] = {
            {.fd = c.ws.fd,
             .events = (short)((want_read ? POLLIN : 0) | (want_write ? POLLOUT : 0))},
            {.fd = STDIN_FILENO, .events = POLLIN},
        };
        bool poll_stdin = stdin_open && wslay_event_get_queued_msg_length(c.ws.ctx) < MAX_QUEUED;
        /* Sleep until the next deadline; not at all while early frames wait. */
        double wait = -1;
        if (close_req)
            wait = (closing_at ? closing_at : close_req) + CLOSE_WAIT_S - now;
        else if (exit_after)
            wait = start + exit_after - now;
        else if (!stdin_open)
            wait = quiet_since + QUIET_S - now;
        if (wait >= 0 && wait < 0.01)
            wait = 0.01;
        if (c.ws.early_off < c.ws.early_len)
            wait = 0;
        struct timespec ts = {.tv_sec = (time_t)wait,
                              .tv_nsec = (long)((wait - (double)(time_t)wait) * 1e9)};
        int n = ppoll(pf, poll_stdin ? 2 : 1, wait < 0 ? NULL : &ts, &poll_mask);
        if (n < 0 && errno != EINTR) {
            cli_error("poll: %s", strerror(errno));
            status = CLI_INVALID;
            break;
        }
        if (n < 0)
            continue;
        if ((pf[0].revents & (POLLIN | POLLHUP | POLLERR)) || c.ws.early_off < c.ws.early_len) {
            if (wslay_event_recv(c.ws.ctx) != 0 || c.ws.eof) {
                lost = !c.close_received && !close_req;
                break;
            }
        }
        if (poll_stdin && (pf[1].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))) {
            uint8_t buf[4096];
            ssize_t got = read(STDIN_FILENO, buf, sizeof(buf));
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            size_t len = got > 0 ? (size_t)got : 0;
            if (got <= 0) {
                stdin_open = false;
                eof_at = now_s();
            }
            uint8_t *key = c.raw ? memchr(buf, DETACH_KEY, len) : NULL;
            if (key) {
                len = (size_t)(key - buf);
                detached = true;
            }
            if (!send_input(&c, buf, len) && !c.close_received) {
                cli_error("cannot queue input for the server");
                status = CLI_INVALID;
                break;
            }
        }
        if (wslay_event_want_write(c.ws.ctx) && (wslay_event_send(c.ws.ctx) != 0 || c.ws.eof)) {
            lost = !c.close_received && !close_req;
            break;
        }
    }
    restore_terminal(&c);
    sigprocmask(SIG_SETMASK, &poll_mask, NULL); /* a pending signal lands in on_signal */
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    if (lost) {
        cli_error("the connection to %s was lost", srv.hostport);
        status = CLI_UNREACHABLE;
    } else if (c.close_received && !close_req) {
        fprintf(stderr, "cella: the server closed the console (code %u)\n", (unsigned)c.close_code);
    } else if (detached) {
        fprintf(stderr, "\r\ncella: detached\n");
    } else if (got_signal) {
        status = 128 + got_signal;
    }
    cli_ws_close(&c.ws);
    return status;
}

int cli_cmd_serial(const struct cli_command *cmd, const struct cli_args *a)
{
    if (a->set[SER_HISTORY]) {
        if (a->set[SER_EXIT_AFTER]) {
            cli_error("--exit-after goes with the console, not --history");
            return CLI_USAGE;
        }
        return serial_history(a);
    }
    return serial_console(a);
}
