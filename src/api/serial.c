/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The COM1 console endpoints: GET /instance/serial/history (a JSON byte
 * array) and GET /instance/serial (the websocket handshake; the session
 * itself is in ws.c).
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "api/api_int.h"
#include "common/sha1.h"
#include "instance/instance.h"
#include "instance/serial_hub.h"

/* The hub of an existing instance, or NULL after answering 424/500. */
static struct serial_hub *hub_of(struct api_req *r)
{
    struct instance_view v;
    memset(&v, 0, sizeof(v));
    int rc = instance_get(r->srv->inst, &v);
    instance_view_free(&v);
    if (rc < 0) {
        api_reply_instance_error(r, rc, NULL);
        return NULL;
    }
    struct serial_hub *h = instance_serial(r->srv->inst);
    if (!h)
        api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "the instance has no console");
    return h;
}

/* ---- GET /instance/serial/history ---- */

void api_h_serial_history(struct api_req *r)
{
    static const char *const allowed[] = {"from_start", "most_recent", "max_bytes"};
    bool has_from, has_recent, has_max;
    uint64_t from, recent, max;
    if (api_query_check(r, allowed, 3) < 0 ||
        api_query_u64(r, "from_start", &has_from, &from) < 0 ||
        api_query_u64(r, "most_recent", &has_recent, &recent) < 0 ||
        api_query_u64(r, "max_bytes", &has_max, &max) < 0)
        return;
    if (has_from == has_recent) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "exactly one of the query parameters from_start and most_recent must be "
                        "given");
        return;
    }
    if (!has_max)
        max = API_DEFAULT_HISTORY_BYTES;
    if (max > API_MAX_HISTORY_BYTES)
        max = API_MAX_HISTORY_BYTES;
    struct serial_hub *h = hub_of(r);
    if (!h)
        return;
    uint8_t *buf = malloc(max ? max : 1);
    if (!buf) {
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "out of memory");
        return;
    }
    size_t len = 0;
    uint64_t last = 0;
    uint64_t offset = has_from ? from : recent;
    int rc = serial_hub_read(h, has_from, offset, max, buf, &len, &last);
    if (rc == -ERANGE) {
        free(buf);
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "serial history from %s=%llu is not available: the server keeps the "
                        "first %u and the last %u bytes of console output (%llu written so far)",
                        has_from ? "from_start" : "most_recent", (unsigned long long)offset,
                        SERIAL_HISTORY_HEAD, SERIAL_HISTORY_TAIL,
                        (unsigned long long)serial_hub_total(h));
        return;
    }
    if (rc < 0) {
        free(buf);
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    if (len > max)
        len = max; /* never trust a length beyond the buffer */
    /* {"data":[b,...],"last_byte_offset":N}: at most 4 bytes per data byte. */
    size_t cap = 64 + 4 * len;
    char *text = malloc(cap);
    if (!text) {
        free(buf);
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "out of memory");
        return;
    }
    size_t n = (size_t)snprintf(text, cap, "{\"data\":[");
    for (size_t i = 0; i < len; i++)
        n += (size_t)snprintf(text + n, cap - n, i ? ",%u" : "%u", buf[i]);
    n += (size_t)snprintf(text + n, cap - n, "],\"last_byte_offset\":%llu}",
                          (unsigned long long)last);
    free(buf);
    api_reply_text(r, MHD_HTTP_OK, text, n);
}

/* ---- GET /instance/serial (websocket) ---- */

/* Whether a comma-separated header value holds `token` (case-insensitive). */
static bool header_has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *e = end;
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = end;
    }
    return false;
}

/* A Sec-WebSocket-Key: base64 of 16 bytes (22 symbols and "=="). */
static bool ws_key_valid(const char *k)
{
    if (!k || strlen(k) != 24 || strcmp(k + 22, "==") != 0)
        return false;
    for (int i = 0; i < 22; i++) {
        if (!isalnum((unsigned char)k[i]) && k[i] != '+' && k[i] != '/')
            return false;
    }
    return true;
}

static void on_upgrade(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
                       size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
    struct api_req *r = cls;
    struct api_server *s = r->srv;
    pthread_mutex_lock(&s->lock);
    r->ws_started = true;
    s->ws_active++;
    pthread_mutex_unlock(&s->lock);

    r->ws_run(r, extra_in, extra_in_size, sock);
    shutdown(sock, SHUT_RDWR);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);

    pthread_mutex_lock(&s->lock);
    r->ws_done = true;
    bool free_now = r->completed;
    if (--s->ws_active == 0)
        pthread_cond_broadcast(&s->ws_idle);
    pthread_mutex_unlock(&s->lock);
    if (free_now)
        api_req_free(r);
}

void api_h_serial_ws(struct api_req *r)
{
    static const char *const allowed[] = {"from_start", "most_recent"};
    bool has_from, has_recent;
    uint64_t from, recent;
    if (api_query_check(r, allowed, 2) < 0 ||
        api_query_u64(r, "from_start", &has_from, &from) < 0 ||
        api_query_u64(r, "most_recent", &has_recent, &recent) < 0)
        return;
    if (has_from && has_recent) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "at most one of the query parameters from_start and most_recent may be "
                        "given");
        return;
    }
    if (!api_ws_handshake_ok(r))
        return;
    struct serial_hub *h = hub_of(r);
    if (!h)
        return;
    uint64_t total = serial_hub_total(h);
    uint64_t start = total; /* neither: live output from now on */
    if (has_from)
        start = from;
    else if (has_recent)
        start = recent < total ? total - recent : 0;
    int rc = serial_hub_subscribe(h, start, &r->sub);
    if (rc == -ERANGE) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "console output from offset %llu is not available: the server keeps "
                        "the first %u and the last %u bytes (%llu written so far)",
                        (unsigned long long)start, SERIAL_HISTORY_HEAD, SERIAL_HISTORY_TAIL,
                        (unsigned long long)total);
        return;
    }
    if (rc == -EPIPE) {
        api_reply_error(r, MHD_HTTP_GONE, NULL, "the console is closed");
        return;
    }
    if (rc == -E2BIG) {
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
                        "too many console clients (at most %u at once)", SERIAL_MAX_SUBS);
        return;
    }
    if (rc < 0) {
        r->sub = NULL;
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    r->ws_offset = start;
    r->ws_offset_known = start <= total;
    r->ws_run = api_ws_session;
    api_ws_upgrade(r);
}

bool api_ws_handshake_ok(struct api_req *r)
{
    const char *upgrade = api_header(r, MHD_HTTP_HEADER_UPGRADE);
    const char *connection = api_header(r, MHD_HTTP_HEADER_CONNECTION);
    const char *version = api_header(r, "Sec-WebSocket-Version");
    const char *key = api_header(r, "Sec-WebSocket-Key");
    if (!upgrade || !header_has_token(upgrade, "websocket") || !connection ||
        !header_has_token(connection, "upgrade")) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "this endpoint is a websocket: send \"Connection: Upgrade\" and "
                        "\"Upgrade: websocket\"");
        return false;
    }
    if (!version || strcmp(version, "13") != 0) {
        api_reply_error(r, MHD_HTTP_UPGRADE_REQUIRED, NULL,
                        "unsupported websocket version; this server speaks version 13");
        return false;
    }
    if (!ws_key_valid(key)) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "Sec-WebSocket-Key must be the base64 encoding of 16 bytes");
        return false;
    }
    return true;
}

void api_ws_upgrade(struct api_req *r)
{
    const char *key = api_header(r, "Sec-WebSocket-Key");
    char accept[29];
    cella_ws_accept(key, accept);
    struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgrade, r);
    if (!resp) {
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "out of memory");
        return;
    }
    if (MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket") != MHD_YES ||
        MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept) != MHD_YES) {
        MHD_destroy_response(resp);
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "out of memory");
        return;
    }
    r->ws_queued = true;
    if (api_queue(r, MHD_HTTP_SWITCHING_PROTOCOLS, resp) < 0)
        r->ws_queued = false;
}
