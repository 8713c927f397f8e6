/* SPDX-License-Identifier: MPL-2.0 */
/* The websocket client handshake (RFC 6455 section 4.1) and wslay glue. */
#include "cli/ws.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/sha1.h"

void cli_ws_accept_for(const char *key, char out[29])
{
    cella_ws_accept(key, out);
}

static int fill_random(void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((uint8_t *)buf + done, len - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        done += (size_t)n;
    }
    return 0;
}

static long ms_until(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms > 0 ? ms : 0;
}

/* Waits until fd has `events` or the deadline passes; 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, const struct timespec *deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)ms_until(deadline));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        return n == 0 ? -ETIMEDOUT : 0;
    }
}

/* A non-blocking socket connected to srv, or a negative errno (why says more). */
static int tcp_connect(const struct cli_server *srv, const struct timespec *deadline, char *why,
                       size_t why_len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    int g = getaddrinfo(srv->host, srv->port, &hints, &res);
    if (g != 0) {
        snprintf(why, why_len, "cannot resolve \"%s\": %s", srv->host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int err = ECONNREFUSED;
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            err = errno;
        } else {
            int r = wait_fd(fd, POLLOUT, deadline);
            socklen_t sl = sizeof(err);
            if (r < 0)
                err = -r;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
                err = errno;
            if (err == 0)
                break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(why, why_len, "%s", strerror(err));
        return -err;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* keystrokes, one by one */
    return fd;
}

static int send_all(int fd, const char *buf, size_t len, const struct timespec *deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        if (n < 0)
            return -errno;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/*
 * Reads into buf (cap bytes, plus one for a NUL) until it holds `stop`
 * (then *end is the offset after it) or `want` bytes (when not 0), the peer
 * closes or the deadline passes. Returns the bytes held or a negative errno.
 */
static ssize_t read_until(int fd, char *buf, size_t have, size_t cap, const char *stop, size_t want,
                          size_t *end, const struct timespec *deadline)
{
    *end = 0;
    for (;;) {
        buf[have] = '\0';
        char *hit = stop ? strstr(buf, stop) : NULL;
        if (hit) {
            *end = (size_t)(hit - buf) + strlen(stop);
            return (ssize_t)have;
        }
        if (have >= cap || (want && have >= want))
            return (ssize_t)have;
        ssize_t n = recv(fd, buf + have, cap - have, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLIN, deadline);
            if (r < 0)
                return r;
            continue;
        }
        if (n < 0)
            return -errno;
        if (n == 0)
            return (ssize_t)have;
        have += (size_t)n;
    }
}

/* The value of header `name` in the header block (after the status line), or NULL. */
static const char *header(const char *headers, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    for (const char *line = strstr(headers, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
            *vlen = n;
            return v;
        }
    }
    return NULL;
}

/* Whether the comma-separated list v (len) holds token, ignoring case. */
static bool has_token(const char *v, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && v[e - 1] == ' ')
            e--;
        if (e - s == tlen && strncasecmp(v + s, token, tlen) == 0)
            return true;
    }
    return false;
}

/* Decodes a chunked body in place; returns its length (what decodes). */
static size_t dechunk(char *b, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        char *end;
        unsigned long n = strtoul(b + in, &end, 16);
        char *crlf = strstr(b + in, "\r\n");
        if (!crlf || end == b + in || n == 0)
            break;
        in = (size_t)(crlf - b) + 2;
        if (n > len - in)
            n = len - in;
        memmove(b + out, b + in, n);
        out += n;
        in += n + 2;
    }
    b[out] = '\0';
    return out;
}

/* Reads and reports the error answer to a refused upgrade; CLI_INVALID. */
static int report_refusal(int fd, char *buf, size_t have, size_t hdr_end, long status,
                          const struct timespec *deadline)
{
    size_t clen = 0;
    const char *v = header(buf, "Content-Length", &clen);
    size_t want = v ? strtoul(v, NULL, 10) : 0;
    size_t te_len = 0;
    const char *te = header(buf, "Transfer-Encoding", &te_len);
    bool chunked = te && has_token(te, te_len, "chunked");
    size_t cap = CLI_WS_MAX_HEADER * 4;
    if (chunked || (v && hdr_end + want > have)) {
        size_t end;
        ssize_t n = read_until(fd, buf, have, cap, chunked ? "\r\n0\r\n\r\n" : NULL,
                               chunked ? 0 : hdr_end + want, &end, deadline);
        if (n > 0)
            have = (size_t)n;
    }
    struct cli_http_reply rep = {.status = status, .body = buf + hdr_end, .len = have - hdr_end};
    if (v && want < rep.len)
        rep.len = want;
    if (chunked)
        rep.len = dechunk(rep.body, rep.len);
    return cli_http_report(&rep);
}

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *user)
{
    struct cli_ws *ws = user;
    if (ws->early_off < ws->early_len) {
        size_t n = ws->early_len - ws->early_off;
        if (n > len)
            n = len;
        memcpy(buf, ws->early + ws->early_off, n);
        ws->early_off += n;
        return (ssize_t)n;
    }
    for (;;) {
        ssize_t n = recv(ws->fd, buf, len, 0);
        if (n > 0)
            return n;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            ws->eof = true;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user)
{
    struct cli_ws *ws = user;
    for (;;) {
        ssize_t n = send(ws->fd, data, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        } else {
            ws->eof = true;
            wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        }
        return -1;
    }
}

static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
    if (fill_random(buf, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

void *cli_ws_user(void *callback_user_data)
{
    return ((struct cli_ws *)callback_user_data)->user;
}

void cli_ws_close(struct cli_ws *ws)
{
    if (ws->ctx)
        wslay_event_context_free(ws->ctx);
    if (ws->fd >= 0)
        close(ws->fd);
    free(ws->early);
    memset(ws, 0, sizeof(*ws));
    ws->fd = -1;
}

/* Checks a 101 answer; NULL when it is a valid upgrade, else what is wrong. */
static const char *check_upgrade(const char *buf, const char *accept)
{
    size_t n;
    const char *v = header(buf, "Upgrade", &n);
    if (!v || !has_token(v, n, "websocket"))
        return "no \"Upgrade: websocket\" header";
    v = header(buf, "Connection", &n);
    if (!v || !has_token(v, n, "upgrade"))
        return "no \"Connection: Upgrade\" header";
    v = header(buf, "Sec-WebSocket-Accept", &n);
    if (!v)
        return "no Sec-WebSocket-Accept header";
    if (n != strlen(accept) || strncmp(v, accept, n) != 0)
        return "Sec-WebSocket-Accept does not match the key sent";
    if (header(buf, "Sec-WebSocket-Extensions", &n))
        return "the server chose an extension cella did not offer";
    if (header(buf, "Sec-WebSocket-Protocol", &n))
        return "the server chose a subprotocol cella did not offer";
    return NULL;
}

int cli_ws_connect(const struct cli_server *srv, const char *path,
                   const struct wslay_event_callbacks *cb, void *user, struct cli_ws *ws)
{
    memset(ws, 0, sizeof(*ws));
    ws->fd = -1;
    ws->user = user;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += CLI_CONNECT_TIMEOUT_S;
    char why[CLI_HTTP_WHY_MAX];
    int fd = tcp_connect(srv, &deadline, why, sizeof(why));
    if (fd < 0)
        return cli_unreachable(srv->hostport, why);
    ws->fd = fd;

    uint8_t nonce[16];
    char key[25], accept[29];
    if (fill_random(nonce, sizeof(nonce)) < 0) {
        cli_error("cannot generate a websocket key: %s", strerror(errno));
        cli_ws_close(ws);
        return CLI_INVALID;
    }
    cella_base64(nonce, sizeof(nonce), key);
    cli_ws_accept_for(key, accept);
    char req[2048];
    int len = snprintf(req, sizeof(req),
                       "GET %s HTTP/1.1\r\n"
                       "Host: %s\r\n"
                       "User-Agent: cella/" CELLA_VERSION "\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "\r\n",
                       path, srv->hostport, key);
    if (len < 0 || (size_t)len >= sizeof(req)) {
        cli_error("request path too long");
        cli_ws_close(ws);
        return CLI_INVALID;
    }
    int r = send_all(fd, req, (size_t)len, &deadline);
    if (r < 0) {
        cli_ws_close(ws);
        return cli_unreachable(srv->hostport, strerror(-r));
    }

    /* Room for an error body after the headers (report_refusal). */
    char *buf = malloc(CLI_WS_MAX_HEADER * 4 + 1);
    if (!buf) {
        cli_error("out of memory");
        cli_ws_close(ws);
        return CLI_INVALID;
    }
    size_t end;
    ssize_t got = read_until(fd, buf, 0, CLI_WS_MAX_HEADER, "\r\n\r\n", 0, &end, &deadline);
    long status = 0;
    const char *bad = NULL;
    if (got < 0 || (end == 0 && got == 0)) {
        free(buf);
        cli_ws_close(ws);
        return cli_unreachable(srv->hostport,
                               got < 0 ? strerror((int)-got) : "the server closed the connection");
    }
    if (end == 0)
        bad = "no complete HTTP answer to the websocket handshake";
    else if (sscanf(buf, "HTTP/1.%*[01] %ld", &status) != 1)
        bad = "the answer to the websocket handshake is not HTTP/1.1";
    if (!bad && status != 101) {
        r = report_refusal(fd, buf, (size_t)got, end, status, &deadline);
        free(buf);
        cli_ws_close(ws);
        return r;
    }
    if (!bad) {
        char save = buf[end];
        buf[end] = '\0';
        bad = check_upgrade(buf, accept);
        buf[end] = save;
    }
    if (bad) {
        cli_error("%s does not speak websocket: %s", srv->hostport, bad);
        free(buf);
        cli_ws_close(ws);
        return CLI_INVALID;
    }
    if ((size_t)got > end) {
        ws->early_len = (size_t)got - end;
        ws->early = malloc(ws->early_len);
        if (ws->early)
            memcpy(ws->early, buf + end, ws->early_len);
    }
    free(buf);
    struct wslay_event_callbacks c = *cb;
    c.recv_callback = ws_recv_cb;
    c.send_callback = ws_send_cb;
    c.genmask_callback = ws_genmask_cb;
    if ((ws->early_len && !ws->early) || wslay_event_context_client_init(&ws->ctx, &c, ws) != 0) {
        ws->ctx = NULL;
        cli_error("out of memory");
        cli_ws_close(ws);
        return CLI_INVALID;
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, CLI_WS_MAX_MSG);
    return CLI_OK;
}
