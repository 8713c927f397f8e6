/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The console websocket session (wslay's event API on a non-blocking
 * socket, driven by poll on this connection's own thread).
 *
 *  - Guest output: read from the client's serial_sub and sent as binary
 *    messages. The session pulls from the hub only while wslay holds less
 *    than WS_HIGH_WATER unsent bytes, so a slow client costs at most that
 *    much here plus the hub's bounded queue; the hub drops for it (never
 *    blocks the guest) and the session re-reads the dropped range from
 *    history when the client catches up.
 *  - Control messages from the hub (e.g. migration) go out as text.
 *  - Client binary messages are keystrokes for serial_hub_input(); what the
 *    UART cannot take now is retried every WS_INPUT_RETRY_MS, and the
 *    session reads nothing more from the client meanwhile (TCP
 *    back-pressure). Client text messages are ignored.
 *  - The session ends when the client closes, the hub closes, the instance
 *    is destroyed (close 1000), the server stops (close 1001) or the client
 *    takes no data for cfg.ws_stall_ms.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "api/api_int.h"
#include "common/log.h"
#include "instance/instance.h"
#include "instance/serial_hub.h"

#define WS_HIGH_WATER     (256u << 10)
#define WS_READ_CHUNK     (16u << 10)
#define WS_CLOSE_GRACE_MS 2000
#define WS_INPUT_RETRY_MS 10
#define WS_POLL_MS        250
#define WS_STATE_CHECK_MS 1000
#define WS_PENDING_MAX    (2 * API_WS_MAX_MSG + 8192)
#define WS_LINGER_MS      1000
#define WS_LINGER_BYTES   (1u << 20)

struct ws {
    struct api_req *r;
    struct api_server *srv;
    struct serial_hub *hub;
    struct serial_sub *sub;
    int sock;
    const char *extra;
    size_t extra_len;
    wslay_event_context_ptr ctx;

    uint8_t *pending; /* keystrokes the UART has not taken yet */
    size_t pending_len;

    bool offset_known;
    uint64_t offset;      /* stream offset of the next byte the sub returns */
    uint64_t resync_from; /* dropped range still to be re-read from history */
    uint64_t resync_end;
    uint64_t sent;   /* console bytes queued for the client */
    uint64_t lost;   /* console bytes the client never got */
    uint64_t resent; /* dropped bytes re-read from history */
    uint64_t input;  /* keystroke bytes taken by the UART */

    uint64_t last_progress;
    bool closing;      /* a close is due: no more console output is taken */
    bool close_queued; /* the close frame is in wslay's queue */
    uint16_t close_code;
    const char *close_why;
    uint64_t close_deadline;
    const char *reason;
};

static void set_reason(struct ws *w, const char *why)
{
    if (!w->reason)
        w->reason = why;
}

static void start_close(struct ws *w, uint16_t code, const char *why)
{
    if (w->closing)
        return;
    w->closing = true;
    w->close_code = code;
    w->close_why = why;
    w->close_deadline = api_now_ms() + WS_CLOSE_GRACE_MS;
    set_reason(w, why);
}

/*
 * wslay sends control frames ahead of queued data, so the close frame is
 * queued only once every console byte already queued has gone out: a
 * client sees the guest's last output before the close (bounded by the
 * close deadline for a client that stopped reading).
 */
static void queue_close_when_drained(struct ws *w)
{
    if (!w->closing || w->close_queued || wslay_event_get_queued_msg_count(w->ctx) != 0)
        return;
    w->close_queued = true;
    wslay_event_queue_close(w->ctx, w->close_code, (const uint8_t *)w->close_why,
                            strlen(w->close_why));
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *user)
{
    struct ws *w = user;
    if (w->pending_len) {
        /* Read nothing more until the guest took the earlier keystrokes. */
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    if (w->extra_len) {
        size_t n = w->extra_len < len ? w->extra_len : len;
        memcpy(buf, w->extra, n);
        w->extra += n;
        w->extra_len -= n;
        return (ssize_t)n;
    }
    for (;;) {
        ssize_t n = recv(w->sock, buf, len, 0);
        if (n > 0)
            return n;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
            return -1;
        }
        set_reason(w, n == 0 ? "client closed the connection" : "receive error");
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
    struct ws *w = user;
    int f = MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0);
    for (;;) {
        ssize_t n = send(w->sock, data, len, f);
        if (n >= 0) {
            if (n > 0)
                w->last_progress = api_now_ms();
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
            return -1;
        }
        set_reason(w, "send error (client gone)");
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
}

/* Offers keystrokes to the guest; keeps what it cannot take now. */
static void input(struct ws *w, const uint8_t *p, size_t len)
{
    if (!w->pending_len && len) {
        size_t took = serial_hub_input(w->hub, p, len);
        if (took > len)
            took = len;
        w->input += took;
        p += took;
        len -= took;
    }
    if (!len)
        return;
    if (!w->pending)
        w->pending = malloc(WS_PENDING_MAX);
    if (!w->pending || w->pending_len + len > WS_PENDING_MAX) {
        start_close(w, WSLAY_CODE_POLICY_VIOLATION,
                    "keystrokes arrive faster than the guest reads them");
        return;
    }
    memcpy(w->pending + w->pending_len, p, len);
    w->pending_len += len;
}

static void retry_input(struct ws *w)
{
    size_t took = serial_hub_input(w->hub, w->pending, w->pending_len);
    if (took > w->pending_len)
        took = w->pending_len;
    w->input += took;
    memmove(w->pending, w->pending + took, w->pending_len - took);
    w->pending_len -= took;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
    struct ws *w = user;
    if (arg->opcode == WSLAY_BINARY_FRAME)
        input(w, arg->msg, arg->msg_length);
    else if (arg->opcode == WSLAY_CONNECTION_CLOSE)
        set_reason(w, "client closed the websocket");
    /* Text messages carry no keystrokes; ping/pong are wslay's. */
}

static void queue_msg(struct ws *w, uint8_t opcode, const uint8_t *p, size_t len)
{
    struct wslay_event_msg m = {.opcode = opcode, .msg = p, .msg_length = len};
    if (wslay_event_queue_msg(w->ctx, &m) != 0) {
        /* wslay queued a close itself (protocol error, oversized message). */
        set_reason(w, "could not queue a message");
        if (!w->closing) {
            w->closing = true;
            w->close_deadline = api_now_ms() + WS_CLOSE_GRACE_MS;
        }
        w->close_queued = true; /* wslay's own close (or the client's) is under way */
        return;
    }
    if (opcode == WSLAY_BINARY_FRAME)
        w->sent += len;
}

/*
 * Moves console output from the hub (and dropped ranges from history) into
 * wslay's queue while it is below `limit` bytes.
 */
static void pump(struct ws *w, size_t limit)
{
    uint8_t buf[WS_READ_CHUNK];
    while (!w->closing && wslay_event_get_queued_msg_length(w->ctx) < limit) {
        if (w->resync_from < w->resync_end) {
            uint64_t want = w->resync_end - w->resync_from;
            size_t len = 0;
            uint64_t last = 0;
            int rc =
                serial_hub_read(w->hub, true, w->resync_from,
                                want < sizeof(buf) ? (size_t)want : sizeof(buf), buf, &len, &last);
            if (rc < 0 || len == 0 || len > sizeof(buf)) {
                /* Gone from history: skip to where the kept tail starts. */
                uint64_t total = serial_hub_total(w->hub);
                uint64_t next = total > SERIAL_HISTORY_TAIL ? total - SERIAL_HISTORY_TAIL : 0;
                if (next <= w->resync_from || next > w->resync_end)
                    next = w->resync_end;
                w->lost += next - w->resync_from;
                log_msg(LOG_WARN, "api", "console client lost %llu bytes (no longer in history)",
                        (unsigned long long)(next - w->resync_from));
                w->resync_from = next;
                continue;
            }
            queue_msg(w, WSLAY_BINARY_FRAME, buf, len);
            w->resync_from += len;
            w->resent += len;
            continue;
        }
        uint64_t lost = 0;
        int n = serial_sub_read(w->sub, buf, sizeof(buf), &lost);
        if (n > 0) {
            size_t len = (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf);
            queue_msg(w, WSLAY_BINARY_FRAME, buf, len);
            w->offset += len;
        } else if (n == 0) {
            return;
        } else if (n == -EAGAIN) {
            char *ctl = serial_sub_take_control(w->sub);
            if (!ctl)
                return;
            queue_msg(w, WSLAY_TEXT_FRAME, (const uint8_t *)ctl, strlen(ctl));
            free(ctl);
        } else if (n == -ENOBUFS) {
            if (w->offset_known) {
                w->resync_from = w->offset;
                w->resync_end = w->offset + lost;
            } else {
                w->lost += lost;
            }
            w->offset += lost;
        } else if (n == -EPIPE) {
            start_close(w, WSLAY_CODE_NORMAL_CLOSURE, "serial console closed");
        } else {
            start_close(w, WSLAY_CODE_INTERNAL_SERVER_ERROR, "serial console error");
        }
    }
}

static bool instance_gone(struct ws *w)
{
    struct instance_view v;
    memset(&v, 0, sizeof(v));
    int rc = instance_get(w->srv->inst, &v);
    bool gone = rc == -ENOENT || (rc == 0 && v.state == INSTANCE_DESTROYED);
    instance_view_free(&v);
    return gone;
}

/* The session's event loop; returns when the session is over. */
static void run(struct ws *w)
{
    int sock = w->sock;
    wslay_event_config_set_max_recv_msg_length(w->ctx, API_WS_MAX_MSG);
    uint64_t next_check = api_now_ms() + WS_STATE_CHECK_MS;
    unsigned stall_ms = w->srv->cfg.ws_stall_ms;

    for (;;) {
        uint64_t now = api_now_ms();
        if (!w->closing && atomic_load(&w->srv->stopping))
            start_close(w, WSLAY_CODE_GOING_AWAY, "server shutting down");
        if (!w->closing && now >= next_check) {
            next_check = now + WS_STATE_CHECK_MS;
            if (instance_gone(w)) {
                pump(w, SIZE_MAX); /* the last output goes out before the close */
                start_close(w, WSLAY_CODE_NORMAL_CLOSURE, "instance destroyed");
            }
        }
        pump(w, WS_HIGH_WATER);
        if (w->pending_len)
            retry_input(w);
        queue_close_when_drained(w);
        if (wslay_event_want_write(w->ctx) && wslay_event_send(w->ctx) != 0)
            break;
        if (w->closing && !w->close_queued) {
            queue_close_when_drained(w);
            if (w->close_queued && wslay_event_send(w->ctx) != 0)
                break;
        }
        if (!wslay_event_want_read(w->ctx) && !wslay_event_want_write(w->ctx))
            break; /* close handshake done, or a fatal error */
        now = api_now_ms();
        if (w->closing && now >= w->close_deadline) {
            set_reason(w, "close handshake timed out");
            break;
        }
        if (!wslay_event_want_write(w->ctx))
            w->last_progress = now;
        else if (now - w->last_progress >= stall_ms) {
            set_reason(w, "client stopped reading");
            break;
        }

        bool reading = wslay_event_want_read(w->ctx) && !w->pending_len;
        if (reading && w->extra_len) {
            /* Bytes that came with the handshake: no poll will announce them. */
            if (wslay_event_recv(w->ctx) != 0)
                break;
            continue;
        }
        struct pollfd p[3] = {
            {.fd = sock,
             .events = (short)((reading ? POLLIN : POLLRDHUP) |
                               (wslay_event_want_write(w->ctx) ? POLLOUT : 0))},
            /* Readable while the hub has something for us (the hub keeps it so). */
            {.fd = serial_sub_fd(w->sub),
             .events =
                 (short)(!w->closing && wslay_event_get_queued_msg_length(w->ctx) < WS_HIGH_WATER
                             ? POLLIN
                             : 0)},
            {.fd = w->srv->stop_fd, .events = (short)(w->closing ? 0 : POLLIN)},
        };
        int timeout = w->pending_len ? WS_INPUT_RETRY_MS : WS_POLL_MS;
        if (poll(p, 3, timeout) < 0) {
            if (errno == EINTR)
                continue;
            set_reason(w, "poll failed");
            break;
        }
        if (reading && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (wslay_event_recv(w->ctx) != 0)
                break;
        } else if (!reading && (p[0].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            set_reason(w, "client hung up");
            break;
        }
    }
}

/*
 * Lingering close: stop sending, then read and drop what the client still
 * sends (bounded in time and bytes), so that closing the socket does not
 * reset the connection before the client read our close frame.
 */
static void linger(int sock)
{
    shutdown(sock, SHUT_WR);
    uint64_t end = api_now_ms() + WS_LINGER_MS;
    size_t total = 0;
    char buf[4096];
    while (total < WS_LINGER_BYTES) {
        uint64_t now = api_now_ms();
        if (now >= end)
            return;
        struct pollfd p = {.fd = sock, .events = POLLIN};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            return;
        ssize_t n = recv(sock, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return;
        if (n > 0)
            total += (size_t)n;
    }
}

void api_ws_session(struct api_req *r, const char *extra_in, size_t extra_len, int sock)
{
    log_set_request_id(r->id);
    struct ws w = {
        .r = r,
        .srv = r->srv,
        .hub = instance_serial(r->srv->inst),
        .sub = r->sub,
        .sock = sock,
        .extra = extra_in,
        .extra_len = extra_in ? extra_len : 0,
        .offset_known = r->ws_offset_known,
        .offset = r->ws_offset,
        .last_progress = api_now_ms(),
    };
    r->sub = NULL; /* the session owns it now */
    int fl = fcntl(sock, F_GETFL);
    struct wslay_event_callbacks cb = {
        .recv_callback = recv_cb, .send_callback = send_cb, .on_msg_recv_callback = on_msg};
    if (!w.hub || !w.sub || fl < 0 || fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0 ||
        wslay_event_context_server_init(&w.ctx, &cb, &w) != 0)
        set_reason(&w, "could not start the session");
    else
        run(&w);
    linger(sock);
    if (w.ctx)
        wslay_event_context_free(w.ctx);
    if (w.sub)
        serial_sub_close(w.sub);
    free(w.pending);
    char note[200];
    snprintf(note, sizeof(note),
             "websocket_end reason=\"%s\" sent_bytes=%llu resent_bytes=%llu lost_bytes=%llu "
             "input_bytes=%llu",
             w.reason ? w.reason : "ended", (unsigned long long)w.sent,
             (unsigned long long)w.resent, (unsigned long long)w.lost, (unsigned long long)w.input);
    api_log_request(r, note);
}
