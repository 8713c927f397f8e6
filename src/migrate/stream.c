/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The migration message stream: wslay's event API on a non-blocking
 * socket, driven by poll from blocking calls (see stream.h).
 */
#include "migrate/stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include <jansson.h>

#include "common/le.h"
#include "common/sha1.h"
#include "migrate/proto.h"

struct inmsg {
    struct inmsg *next;
    size_t len;
    uint8_t data[];
};

#define READ_AHEAD (256u << 10)

struct mig_stream {
    int fd;
    bool own_fd;
    bool client; /* frames we send are masked */
    wslay_event_context_ptr ctx;
    /*
     * Read-ahead: bytes taken from the socket (first those the handshake
     * read past its end) that wslay has not consumed yet. wslay asks for a
     * few KiB at a time; one recv() of up to READ_AHEAD bytes serves many
     * of those requests (a system call per 4 KiB cost most of the target's
     * time with RAM arriving at full speed).
     */
    uint8_t *early;
    size_t early_len, early_off, early_cap;

    int stall_ms;
    size_t max_msg;

    struct inmsg *head, *tail;
    size_t queued;     /* bytes in the queue */
    struct inmsg *cur; /* returned by the last recv */
    /* The message being received (wslay does not buffer: no_buffering). */
    struct inmsg *asm_msg;
    size_t asm_cap;
    bool in_ctrl;  /* the frame being received is a control frame (wslay keeps those) */
    bool oversize; /* a fragmented message grew over max_msg */

    uint64_t last_progress; /* ms, monotonic */
    uint64_t sent, received;

    int err; /* sticky failure */
    char why[256];
    const char *cb_why; /* set by a callback that failed */
    bool proto_text;    /* the peer sent a text message */
    bool discard;       /* closing: incoming messages are dropped */
    atomic_bool cancelled;
    char peer[INET6_ADDRSTRLEN + 8];

    bool memory;
    const uint8_t *mem;
    size_t mem_len, mem_pos;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int fail(struct mig_stream *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct mig_stream *s, int code, const char *fmt, ...)
{
    if (s->err)
        return s->err;
    if (atomic_load(&s->cancelled)) {
        code = -ECANCELED;
        snprintf(s->why, sizeof(s->why), "migration cancelled");
    } else {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->why, sizeof(s->why), fmt, ap);
        va_end(ap);
    }
    s->err = code;
    return code;
}

/* The queue's bound: what a peer can make us hold beyond one message. */
static size_t queue_cap(const struct mig_stream *s)
{
    return s->max_msg + (1u << 20);
}

/* ---- wslay callbacks ---------------------------------------------------- */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
    struct mig_stream *s = user;
    if (s->queued >= queue_cap(s)) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (s->early_off < s->early_len) {
        size_t n = s->early_len - s->early_off;
        if (n > len)
            n = len;
        memcpy(buf, s->early + s->early_off, n);
        s->early_off += n;
        return (ssize_t)n;
    }
    for (;;) {
        ssize_t n = recv(s->fd, s->early, s->early_cap, 0);
        if (n > 0) {
            s->received += (uint64_t)n;
            s->last_progress = now_ms();
            size_t k = (size_t)n < len ? (size_t)n : len;
            memcpy(buf, s->early, k);
            s->early_len = (size_t)n;
            s->early_off = k;
            return (ssize_t)k;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
            return -1;
        }
        s->cb_why = n == 0 ? "the peer closed the connection" : "receive error (connection reset)";
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    struct mig_stream *s = user;
    int f = MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0);
    for (;;) {
        ssize_t n = send(s->fd, data, len, f);
        if (n >= 0) {
            if (n > 0) {
                s->sent += (uint64_t)n;
                s->last_progress = now_ms();
            }
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
            return -1;
        }
        s->cb_why = "send error (the peer is gone)";
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

static int fill_random(uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom(buf + done, len - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        done += (size_t)n;
    }
    return 0;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
    if (fill_random(buf, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

/*
 * Messages are put together here rather than by wslay (no_buffering): each
 * chunk of a frame's payload is copied once, straight into the message
 * that gets queued, instead of into wslay's chunks, then a flattened copy,
 * then ours. The size cap covers the whole message (wslay checks each
 * frame against it; a fragmented message is checked here).
 */
static void on_frame_start(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
    struct mig_stream *s = user;
    s->in_ctrl = (arg->opcode & 0x8) != 0;
    if (s->in_ctrl)
        return;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        s->proto_text = true;
        wslay_event_shutdown_read(ctx);
        return;
    }
    size_t have = s->asm_msg ? s->asm_msg->len : 0;
    if (arg->payload_length > s->max_msg - have) {
        s->oversize = true;
        wslay_event_shutdown_read(ctx);
        return;
    }
    size_t need = have + (size_t)arg->payload_length;
    struct inmsg *m = realloc(s->asm_msg, sizeof(*m) + need);
    if (!m) {
        s->cb_why = "out of memory for a message";
        wslay_event_shutdown_read(ctx);
        return;
    }
    if (!s->asm_msg) {
        m->next = NULL;
        m->len = 0;
    }
    s->asm_msg = m;
    s->asm_cap = need;
}

static void on_frame_chunk(wslay_event_context_ptr ctx,
                           const struct wslay_event_on_frame_recv_chunk_arg *arg, void *user)
{
    struct mig_stream *s = user;
    /* wslay finishes the frame it is in after a callback stopped reading: ignore the rest. */
    if (s->in_ctrl || !s->asm_msg || !arg->data_length || !wslay_event_get_read_enabled(ctx))
        return;
    if (arg->data_length > s->asm_cap - s->asm_msg->len) { /* wslay keeps to the frame's length */
        s->cb_why = "a frame carried more than its length";
        wslay_event_shutdown_read(ctx);
        return;
    }
    memcpy(s->asm_msg->data + s->asm_msg->len, arg->data, arg->data_length);
    s->asm_msg->len += arg->data_length;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
    struct mig_stream *s = user;
    if (arg->opcode == WSLAY_TEXT_FRAME) {
        s->proto_text = true;
        wslay_event_shutdown_read(ctx);
        return;
    }
    if (arg->opcode != WSLAY_BINARY_FRAME)
        return; /* ping/pong/close: wslay answers */
    struct inmsg *m = s->asm_msg;
    s->asm_msg = NULL;
    s->asm_cap = 0;
    if (!m || s->discard || !wslay_event_get_read_enabled(ctx)) { /* closing, or failed: dropped */
        free(m);
        return;
    }
    if (s->tail)
        s->tail->next = m;
    else
        s->head = m;
    s->tail = m;
    s->queued += m->len;
}

/* ---- construction ------------------------------------------------------- */

static void set_peer(struct mig_stream *s)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "";
    if (getpeername(s->fd, (struct sockaddr *)&ss, &sl) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(s->peer, sizeof(s->peer), "%s:%u", host, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(s->peer, sizeof(s->peer), "[%s]:%u", host, ntohs(in6->sin6_port));
    }
}

static int make(int fd, bool own_fd, const void *early, size_t early_len, bool client,
                struct mig_stream **out)
{
    *out = NULL;
    struct mig_stream *s = calloc(1, sizeof(*s));
    if (s)
        s->client = client;
    int fl = fcntl(fd, F_GETFL);
    if (!s || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = s ? -errno : -ENOMEM;
        free(s);
        if (own_fd)
            close(fd);
        return e;
    }
    s->fd = fd;
    s->own_fd = own_fd;
    s->stall_ms = MIG_STREAM_STALL_MS_DEFAULT;
    s->max_msg = MIG_MSG_MAX;
    s->last_progress = now_ms();
    atomic_init(&s->cancelled, false);
    s->early_cap = early_len > READ_AHEAD ? early_len : READ_AHEAD;
    s->early = malloc(s->early_cap);
    if (!s->early) {
        mig_stream_free(s);
        return -ENOMEM;
    }
    if (early && early_len) {
        memcpy(s->early, early, early_len);
        s->early_len = early_len;
    }
    struct wslay_event_callbacks cb = {
        .recv_callback = recv_cb,
        .send_callback = send_cb,
        .genmask_callback = genmask_cb,
        .on_frame_recv_start_callback = on_frame_start,
        .on_frame_recv_chunk_callback = on_frame_chunk,
        .on_msg_recv_callback = on_msg,
    };
    int r = client ? wslay_event_context_client_init(&s->ctx, &cb, s)
                   : wslay_event_context_server_init(&s->ctx, &cb, s);
    if (r != 0) {
        s->ctx = NULL;
        mig_stream_free(s);
        return -ENOMEM;
    }
    wslay_event_config_set_max_recv_msg_length(s->ctx, s->max_msg);
    wslay_event_config_set_no_buffering(s->ctx, 1);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    set_peer(s);
    *out = s;
    return 0;
}

int mig_stream_server(int fd, bool own_fd, const void *early, size_t early_len,
                      struct mig_stream **out)
{
    return make(fd, own_fd, early, early_len, false, out);
}

int mig_stream_client(int fd, const void *early, size_t early_len, struct mig_stream **out)
{
    return make(fd, true, early, early_len, true, out);
}

int mig_stream_memory(const uint8_t *data, size_t len, struct mig_stream **out)
{
    struct mig_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->fd = -1;
    s->memory = true;
    s->mem = data;
    s->mem_len = len;
    s->max_msg = MIG_MSG_MAX;
    atomic_init(&s->cancelled, false);
    *out = s;
    return 0;
}

void mig_stream_set_stall(struct mig_stream *s, int stall_ms)
{
    s->stall_ms = stall_ms;
}

void mig_stream_set_max_msg(struct mig_stream *s, size_t max)
{
    s->max_msg = max;
    if (s->ctx)
        wslay_event_config_set_max_recv_msg_length(s->ctx, max);
}

const char *mig_stream_error(const struct mig_stream *s)
{
    return s->err ? s->why : "";
}

const char *mig_stream_peer(const struct mig_stream *s)
{
    return s->peer;
}

uint64_t mig_stream_bytes_sent(const struct mig_stream *s)
{
    return s->sent;
}

uint64_t mig_stream_bytes_received(const struct mig_stream *s)
{
    return s->received;
}

void mig_stream_shutdown(struct mig_stream *s)
{
    atomic_store(&s->cancelled, true);
    if (s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR);
}

void mig_stream_free(struct mig_stream *s)
{
    if (!s)
        return;
    if (s->ctx)
        wslay_event_context_free(s->ctx);
    if (s->fd >= 0 && s->own_fd)
        close(s->fd);
    free(s->cur);
    free(s->asm_msg);
    while (s->head) {
        struct inmsg *n = s->head->next;
        free(s->head);
        s->head = n;
    }
    free(s->early);
    free(s);
}

/* ---- the I/O pump ------------------------------------------------------- */

enum want { WANT_SENT, WANT_MSG, WANT_CLOSED };

static bool satisfied(struct mig_stream *s, enum want w)
{
    switch (w) {
    case WANT_SENT:
        return !wslay_event_want_write(s->ctx);
    case WANT_MSG:
        return s->head != NULL;
    case WANT_CLOSED:
        return wslay_event_get_close_received(s->ctx) && !wslay_event_want_write(s->ctx);
    }
    return true;
}

/* After wslay stopped reading: why, as a failure. */
static int read_ended(struct mig_stream *s)
{
    if (s->cb_why)
        return fail(s, -ECONNRESET, "%s", s->cb_why);
    if (s->proto_text)
        return fail(s, -EPROTO, "the peer sent a text message (the protocol is binary)");
    if (s->oversize)
        return fail(s, -EPROTO, "the peer sent a message over %zu bytes", s->max_msg);
    if (wslay_event_get_close_received(s->ctx)) {
        uint16_t code = wslay_event_get_status_code_received(s->ctx);
        if (code == WSLAY_CODE_MESSAGE_TOO_BIG)
            return fail(s, -EPROTO, "the peer refused a message as too big");
        return fail(s, -ECONNRESET, "the peer closed the stream (code %u)", code);
    }
    return fail(s, -EPROTO,
                "the peer broke the websocket protocol or sent a message over %zu bytes",
                s->max_msg);
}

static int do_recv(struct mig_stream *s)
{
    if (wslay_event_recv(s->ctx) != 0)
        return read_ended(s);
    return 0;
}

static int do_send(struct mig_stream *s)
{
    if (wslay_event_send(s->ctx) != 0) {
        /* The peer may have said why before it left: keep what is readable. */
        const char *why = s->cb_why;
        if (wslay_event_get_read_enabled(s->ctx))
            wslay_event_recv(s->ctx);
        return fail(s, -ECONNRESET, "%s", why ? why : "send failed");
    }
    return 0;
}

/* Moves bytes until `w` holds; blocks (poll) only if `block`. */
/*
 * One poll for p's events, bounded by what is left of the stall timeout:
 * 1 (p->revents set), 0 to look again (interrupted, or timed out: the next
 * call fails with the stall), or a failure.
 */
static int poll_stall(struct mig_stream *s, struct pollfd *p)
{
    int timeout = -1;
    if (s->stall_ms > 0) {
        uint64_t idle = now_ms() - s->last_progress;
        if (idle >= (uint64_t)s->stall_ms)
            return fail(s, -ETIMEDOUT, "the peer made no progress for %d ms", s->stall_ms);
        timeout = (int)((uint64_t)s->stall_ms - idle);
    }
    int n = poll(p, 1, timeout);
    if (n < 0 && errno != EINTR)
        return fail(s, -errno, "poll failed");
    return n > 0;
}

static int pump(struct mig_stream *s, enum want w, bool block)
{
    for (;;) {
        if (s->err)
            return s->err;
        if (atomic_load(&s->cancelled))
            return fail(s, -ECANCELED, "cancelled");
        if (wslay_event_want_write(s->ctx) && do_send(s) < 0)
            return s->err;
        if (satisfied(s, w))
            return 0;
        bool can_read = wslay_event_get_read_enabled(s->ctx) && s->queued < queue_cap(s);
        if (can_read && s->early_off < s->early_len) {
            if (do_recv(s) < 0)
                return s->err;
            continue;
        }
        bool can_write = wslay_event_want_write(s->ctx) && wslay_event_get_write_enabled(s->ctx);
        if (!wslay_event_get_read_enabled(s->ctx) && (w != WANT_SENT || !can_write)) {
            /* Nothing more will come in; flush what we can (a close reply). */
            if (can_write)
                do_send(s);
            if (w == WANT_CLOSED && wslay_event_get_close_received(s->ctx))
                return 0;
            return read_ended(s);
        }
        if (!can_write && w == WANT_SENT && wslay_event_want_write(s->ctx))
            return fail(s, -ECONNRESET, "the stream is closed for sending");
        if (!block) {
            /* One non-blocking read attempt before giving up. */
            if (can_read) {
                uint64_t before = s->received;
                if (do_recv(s) < 0)
                    return s->err;
                if (satisfied(s, w))
                    return 0;
                if (s->received != before || s->early_off < s->early_len)
                    continue;
            }
            return -EAGAIN;
        }
        struct pollfd p = {.fd = s->fd,
                           .events = (short)((can_read ? POLLIN : 0) | (can_write ? POLLOUT : 0))};
        int r = poll_stall(s, &p);
        if (r < 0)
            return r;
        if (r == 0)
            continue; /* the stall check decides */
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) && can_read && do_recv(s) < 0)
            return s->err;
        if ((p.revents & (POLLOUT | POLLERR | POLLHUP)) && can_write && do_send(s) < 0)
            return s->err;
        if ((p.revents & (POLLHUP | POLLERR)) && !can_read && !can_write)
            return fail(s, -ECONNRESET, "the connection broke");
    }
}

/*
 * Waits (poll) until the socket takes more or something arrives, reading
 * what arrives (so two peers that both send never deadlock), for at most
 * the stall timeout without progress. Used while writing a frame by hand:
 * wslay only reads here (any answer it queues waits until the frame is out).
 */
static int wait_writable(struct mig_stream *s)
{
    for (;;) {
        if (s->err)
            return s->err;
        if (atomic_load(&s->cancelled))
            return fail(s, -ECANCELED, "cancelled");
        bool can_read = wslay_event_get_read_enabled(s->ctx) && s->queued < queue_cap(s);
        if (can_read && s->early_off < s->early_len) {
            if (do_recv(s) < 0)
                return s->err;
            continue;
        }
        struct pollfd p = {.fd = s->fd, .events = (short)(POLLOUT | (can_read ? POLLIN : 0))};
        int r = poll_stall(s, &p);
        if (r < 0)
            return r;
        if (r == 0)
            continue;
        if ((p.revents & POLLIN) && can_read && do_recv(s) < 0)
            return s->err;
        if (p.revents & (POLLOUT | POLLERR | POLLHUP))
            return 0; /* the next sendmsg says which */
    }
}

/* One unmasked binary frame (server role), header then the pieces, by sendmsg. */
static int send_frame_direct(struct mig_stream *s, const struct iovec *iov, size_t n, size_t len)
{
    uint8_t hdr[10];
    size_t hl = 2;
    hdr[0] = 0x80 | WSLAY_BINARY_FRAME; /* FIN */
    if (len < 126) {
        hdr[1] = (uint8_t)len;
    } else if (len <= UINT16_MAX) {
        hdr[1] = 126;
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        hl = 4;
    } else {
        hdr[1] = 127;
        for (int i = 0; i < 8; i++)
            hdr[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hl = 10;
    }
    struct iovec v[MIG_STREAM_MAX_IOV + 1];
    v[0] = (struct iovec){hdr, hl};
    memcpy(v + 1, iov, n * sizeof(*iov));
    struct iovec *cur = v;
    size_t cnt = n + 1;
    while (cnt) {
        struct msghdr mh = {.msg_iov = cur, .msg_iovlen = cnt};
        ssize_t w = sendmsg(s->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            s->sent += (uint64_t)w;
            s->last_progress = now_ms();
            size_t k = (size_t)w;
            while (cnt && k >= cur->iov_len) {
                k -= cur->iov_len;
                cur++;
                cnt--;
            }
            if (cnt) {
                cur->iov_base = (uint8_t *)cur->iov_base + k;
                cur->iov_len -= k;
            }
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(s, -ECONNRESET, "send error (the peer is gone)");
        int r = wait_writable(s);
        if (r < 0)
            return r;
    }
    return 0;
}

int mig_stream_sendv(struct mig_stream *s, const struct iovec *iov, size_t n)
{
    if (s->err)
        return s->err;
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += iov[i].iov_len;
    if (s->memory) {
        s->sent += len;
        return 0;
    }
    if (!s->client && n <= MIG_STREAM_MAX_IOV && !wslay_event_want_write(s->ctx) &&
        wslay_event_get_write_enabled(s->ctx))
        return send_frame_direct(s, iov, n, len);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return fail(s, -ENOMEM, "out of memory queueing a message");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    int r = mig_stream_send(s, buf, len);
    free(buf);
    return r;
}

int mig_stream_send(struct mig_stream *s, const void *buf, size_t len)
{
    if (s->err)
        return s->err;
    if (s->memory) {
        s->sent += len;
        return 0;
    }
    struct wslay_event_msg m = {.opcode = WSLAY_BINARY_FRAME, .msg = buf, .msg_length = len};
    int r = wslay_event_queue_msg(s->ctx, &m);
    if (r == WSLAY_ERR_NOMEM)
        return fail(s, -ENOMEM, "out of memory queueing a message");
    if (r != 0) {
        if (!wslay_event_get_read_enabled(s->ctx))
            return read_ended(s);
        return fail(s, -ECONNRESET, "the stream is closed for sending");
    }
    return pump(s, WANT_SENT, true);
}

static int pop(struct mig_stream *s, const uint8_t **buf, size_t *len)
{
    struct inmsg *m = s->head;
    s->head = m->next;
    if (!s->head)
        s->tail = NULL;
    s->queued -= m->len;
    s->cur = m;
    *buf = m->data;
    *len = m->len;
    return 0;
}

static int memory_recv(struct mig_stream *s, const uint8_t **buf, size_t *len)
{
    if (s->mem_len - s->mem_pos < 4)
        return fail(s, -ECONNRESET, "the peer closed the connection");
    uint32_t n = le32(s->mem + s->mem_pos);
    if (n > s->max_msg)
        return fail(s, -EPROTO, "message over %zu bytes", s->max_msg);
    if (s->mem_len - s->mem_pos - 4 < n)
        return fail(s, -ECONNRESET, "the peer closed the connection mid-message");
    /* A private copy, so decoders see exactly the bytes and ASan sees their bounds. */
    struct inmsg *m = malloc(sizeof(*m) + n);
    if (!m)
        return fail(s, -ENOMEM, "out of memory");
    memcpy(m->data, s->mem + s->mem_pos + 4, n);
    m->len = n;
    s->mem_pos += 4 + (size_t)n;
    s->received += 4 + (uint64_t)n;
    s->cur = m;
    *buf = m->data;
    *len = n;
    return 0;
}

static int recv_common(struct mig_stream *s, const uint8_t **buf, size_t *len, bool block)
{
    free(s->cur);
    s->cur = NULL;
    *buf = NULL;
    *len = 0;
    if (s->head)
        return pop(s, buf, len); /* what arrived before a failure is still delivered */
    if (s->err)
        return s->err;
    if (s->memory)
        return memory_recv(s, buf, len);
    if (!s->head) {
        int r = pump(s, WANT_MSG, block);
        if (r < 0 && !s->head)
            return r;
    }
    return pop(s, buf, len);
}

int mig_stream_recv(struct mig_stream *s, const uint8_t **buf, size_t *len)
{
    return recv_common(s, buf, len, true);
}

int mig_stream_try_recv(struct mig_stream *s, const uint8_t **buf, size_t *len)
{
    return recv_common(s, buf, len, false);
}

int mig_stream_close(struct mig_stream *s, uint16_t code, const char *reason, int grace_ms)
{
    if (s->memory || s->err)
        return s->err;
    if (!wslay_event_get_close_sent(s->ctx))
        wslay_event_queue_close(s->ctx, code, (const uint8_t *)reason, reason ? strlen(reason) : 0);
    int saved = s->stall_ms;
    s->discard = true;
    s->stall_ms = grace_ms;
    s->last_progress = now_ms();
    int r = pump(s, WANT_CLOSED, true);
    s->stall_ms = saved;
    /* Drop what arrived meanwhile. */
    while (s->head) {
        struct inmsg *n = s->head->next;
        free(s->head);
        s->head = n;
    }
    s->tail = NULL;
    s->queued = 0;
    shutdown(s->fd, SHUT_WR);
    if (r < 0 && wslay_event_get_close_sent(s->ctx))
        return 0; /* our close went out; the peer need not answer */
    return r;
}

/* ---- client handshake --------------------------------------------------- */

static int split_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon;
    const char *h = addr;
    size_t hlen;
    if (addr[0] == '[') {
        const char *e = strchr(addr, ']');
        if (!e || e[1] != ':')
            return -EINVAL;
        h = addr + 1;
        hlen = (size_t)(e - h);
        colon = e + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return -EINVAL;
        hlen = (size_t)(colon - addr);
    }
    size_t plen = strlen(colon + 1);
    if (hlen == 0 || hlen >= hcap || plen == 0 || plen >= pcap)
        return -EINVAL;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen + 1);
    for (size_t i = 0; i < plen; i++)
        if (port[i] < '0' || port[i] > '9')
            return -EINVAL;
    return 0;
}

static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n > 0)
            return 0;
    }
}

static int tcp_connect(const char *host, const char *port, uint64_t deadline)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -EHOSTUNREACH;
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
    return fd >= 0 ? fd : -err;
}

static int write_all(int fd, const char *p, size_t len, uint64_t deadline)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Header `name`'s value (trimmed) in the block after the status line; NULL if absent. */
static const char *find_header(const char *hdrs, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    for (const char *line = strstr(hdrs, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
            *vlen = n;
            return v;
        }
    }
    return NULL;
}

static bool header_has_token(const char *hdrs, const char *name, const char *token)
{
    size_t vlen;
    const char *v = find_header(hdrs, name, &vlen);
    size_t tlen = strlen(token);
    for (size_t i = 0; v && i < vlen;) {
        while (i < vlen && (v[i] == ' ' || v[i] == ','))
            i++;
        size_t st = i;
        while (i < vlen && v[i] != ',')
            i++;
        size_t e = i;
        while (e > st && v[e - 1] == ' ')
            e--;
        if (e - st == tlen && strncasecmp(v + st, token, tlen) == 0)
            return true;
    }
    return false;
}

/* The "message" of a JSON error body, if the body is one. */
static void body_message(const char *body, size_t len, char *out, size_t cap)
{
    out[0] = '\0';
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *m = json_string_value(json_object_get(j, "message"));
    if (m)
        snprintf(out, cap, ": %s", m);
    json_decref(j);
}

static int handshake(int fd, const char *host_hdr, const char *path, uint64_t deadline,
                     struct mig_stream **out, struct cella_errors *errs)
{
    uint8_t raw[16];
    char key[25], want[29];
    if (fill_random(raw, sizeof(raw)) < 0) {
        close(fd);
        return cella_err(errs, -EIO, "", "migration: no random bytes for the websocket key");
    }
    cella_base64(raw, sizeof(raw), key);
    cella_ws_accept(key, want);
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: "
                     "Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, host_hdr, key);
    int r = n < 0 || (size_t)n >= sizeof(req) ? -E2BIG : write_all(fd, req, (size_t)n, deadline);
    if (r < 0) {
        close(fd);
        return cella_err(errs, r, "", "migration: cannot send the upgrade request to %s: %s",
                         host_hdr, strerror(-r));
    }
    char *buf = malloc(MIG_STREAM_MAX_HEADER + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t have = 0;
    char *end = NULL;
    r = 0;
    while (!end) {
        if (have == MIG_STREAM_MAX_HEADER) {
            r = -EPROTO;
            break;
        }
        ssize_t k = recv(fd, buf + have, MIG_STREAM_MAX_HEADER - have, 0);
        if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
            r = wait_fd(fd, POLLIN, deadline);
            if (r < 0)
                break;
            continue;
        }
        if (k <= 0) {
            r = k == 0 ? -ECONNRESET : -errno;
            break;
        }
        have += (size_t)k;
        buf[have] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    if (!end) {
        free(buf);
        close(fd);
        if (r == -EPROTO)
            return cella_err(errs, -EPROTO, "",
                             "migration: the source's answer headers are too long");
        return cella_err(errs, r, "", "migration: no upgrade answer from %s: %s", host_hdr,
                         r == -ETIMEDOUT ? "timed out" : strerror(-r));
    }
    *end = '\0';
    size_t hdr_len = (size_t)(end - buf) + 4;
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        free(buf);
        close(fd);
        return cella_err(errs, -EPROTO, "", "migration: %s does not answer HTTP", host_hdr);
    }
    if (status != 101) {
        char msg[300];
        body_message(buf + hdr_len, have - hdr_len, msg, sizeof(msg));
        free(buf);
        close(fd);
        return cella_err(errs, -ECONNREFUSED, "",
                         "migration: the source refused %s with status %d%s", path, status, msg);
    }
    size_t alen;
    const char *accept = find_header(buf, "Sec-WebSocket-Accept", &alen);
    bool ok = header_has_token(buf, "Upgrade", "websocket") &&
              header_has_token(buf, "Connection", "upgrade") && accept && alen == 28 &&
              memcmp(accept, want, 28) == 0 && !find_header(buf, "Sec-WebSocket-Extensions", &alen);
    if (!ok) {
        free(buf);
        close(fd);
        return cella_err(errs, -EPROTO, "",
                         "migration: %s answered 101 but not a valid websocket upgrade", host_hdr);
    }
    r = mig_stream_client(fd, buf + hdr_len, have - hdr_len, out);
    free(buf);
    if (r < 0)
        return cella_err(errs, r, "", "migration: cannot set up the stream: %s", strerror(-r));
    return 0;
}

int mig_stream_connect(const char *addr, const char *path, int timeout_ms, struct mig_stream **out,
                       struct cella_errors *errs)
{
    *out = NULL;
    char host[256], port[16];
    if (!addr || split_addr(addr, host, sizeof(host), port, sizeof(port)) < 0)
        return cella_err(errs, -EINVAL, "/init/value/src_addr",
                         "migration: source address \"%s\" is not host:port", addr ? addr : "");
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 10000);
    int fd = tcp_connect(host, port, deadline);
    if (fd < 0)
        return cella_err(errs, fd, "/init/value/src_addr", "migration: cannot connect to %s: %s",
                         addr, fd == -EHOSTUNREACH ? "cannot resolve the host" : strerror(-fd));
    return handshake(fd, addr, path, deadline, out, errs);
}
