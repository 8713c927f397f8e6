/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The libmicrohttpd daemon, the request life cycle (route, body, answer,
 * log) and the reply helpers every handler uses.
 */
#include "api/api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/api_int.h"
#include "common/log.h"
#include "instance/instance.h"

/* ---- small helpers ---- */

uint64_t api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Copies s into out (cap bytes), replacing bytes that are not valid UTF-8
 * or are control characters with '?', so client text is safe in JSON and
 * logs. */
static void copy_sanitized(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p && n + 1 < cap) {
        unsigned c = *p;
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && !(len == 1 && c < 0x20) && c != 0x7f;
        for (size_t i = 1; ok && i < len; i++)
            ok = (p[i] & 0xc0) == 0x80;
        if (ok && len == 2 && c < 0xc2)
            ok = false; /* overlong */
        if (!ok || n + len >= cap) {
            out[n++] = '?';
            p++;
            continue;
        }
        memcpy(out + n, p, len);
        n += len;
        p += len;
    }
    out[n] = '\0';
}

/* Whether s is valid UTF-8 (jansson refuses anything else). */
static bool utf8_valid(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

static void make_request_id(struct api_server *s, char out[40])
{
    uint8_t b[16];
    if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
        uint64_t n = atomic_fetch_add(&s->counter, 1) + 1;
        memset(b, 0, sizeof(b));
        for (int i = 0; i < 8; i++)
            b[15 - i] = (uint8_t)(n >> (8 * i));
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

const char *api_header(struct api_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

/* ---- replies ---- */

int api_queue(struct api_req *r, unsigned status, struct MHD_Response *resp)
{
    if (!resp) {
        r->abort = true;
        return -ENOMEM;
    }
    if (r->status) {
        MHD_destroy_response(resp);
        return -EALREADY;
    }
    MHD_add_response_header(resp, "x-request-id", r->id);
    enum MHD_Result ok = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    if (ok != MHD_YES) {
        r->abort = true;
        return -EIO;
    }
    r->status = status;
    return 0;
}

/* Last resort when an answer cannot be built: a fixed 500 body. */
static int reply_oom(struct api_req *r)
{
    char text[160];
    int n = snprintf(text, sizeof(text),
                     "{\"message\":\"out of memory while building the answer\","
                     "\"request_id\":\"%s\"}",
                     r->id);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer((size_t)n, text, MHD_RESPMEM_MUST_COPY);
    if (resp)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    api_queue(r, MHD_HTTP_INTERNAL_SERVER_ERROR, resp);
    return -ENOMEM;
}

int api_reply_text(struct api_req *r, unsigned status, char *text, size_t len)
{
    if (!text)
        return reply_oom(r);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return reply_oom(r);
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return api_queue(r, status, resp);
}

int api_reply_json(struct api_req *r, unsigned status, json_t *body)
{
    if (!body)
        return reply_oom(r);
    char *text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    json_decref(body);
    if (!text)
        return reply_oom(r);
    return api_reply_text(r, status, text, strlen(text));
}

int api_reply_empty(struct api_req *r, unsigned status)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    return api_queue(r, status, resp);
}

/* The error body, with the Allow header for 405. `msg` should be UTF-8;
 * if it is not, every byte outside ASCII becomes '?'. */
static int reply_error_msg(struct api_req *r, unsigned status, const char *code, const char *msg)
{
    json_t *m = json_string(msg);
    if (!m) {
        char *ascii = strdup(msg);
        for (char *c = ascii; c && *c; c++) {
            if ((unsigned char)*c >= 0x80)
                *c = '?';
        }
        m = ascii ? json_string(ascii) : NULL;
        free(ascii);
    }
    json_t *b = json_object();
    if (!b || !m) {
        json_decref(b);
        json_decref(m);
        return reply_oom(r);
    }
    /* json_object_set_new takes the value's reference even when it fails. */
    if (json_object_set_new(b, "message", m) < 0 ||
        json_object_set_new(b, "request_id", json_string(r->id)) < 0 ||
        (code && json_object_set_new(b, "error_code", json_string(code)) < 0)) {
        json_decref(b);
        return reply_oom(r);
    }
    char *text = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(b);
    if (!text)
        return reply_oom(r);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return reply_oom(r);
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED && r->route)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->route->allow);
    if (status == MHD_HTTP_UPGRADE_REQUIRED)
        MHD_add_response_header(resp, "Sec-WebSocket-Version", "13");
    return api_queue(r, status, resp);
}

int api_reply_error(struct api_req *r, unsigned status, const char *error_code, const char *fmt,
                    ...)
{
    char raw[1024], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    if (utf8_valid(raw))
        return reply_error_msg(r, status, error_code, raw);
    copy_sanitized(msg, sizeof(msg), raw);
    return reply_error_msg(r, status, error_code, msg);
}

int api_reply_errors(struct api_req *r, unsigned status, const char *error_code,
                     const char *summary, const struct cella_errors *errs, const char *prefix)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f)
        return reply_oom(r);
    size_t total = cella_errors_total(errs);
    fputs(summary, f);
    if (total)
        fprintf(f, " (%zu problem%s)", total, total == 1 ? "" : "s");
    for (size_t i = 0; errs && i < errs->count; i++) {
        const struct cella_error *e = &errs->items[i];
        bool has_prefix = prefix && *prefix && e->pointer[0] &&
                          strncmp(e->pointer, prefix, strlen(prefix)) != 0 &&
                          strncmp(e->pointer, "/init/", 6) != 0;
        fprintf(f, "\n%s%s%s%s", has_prefix ? prefix : "", e->pointer, e->pointer[0] ? ": " : "",
                e->message);
    }
    if (errs && errs->dropped)
        fprintf(f, "\n... and %zu more", errs->dropped);
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return reply_oom(r);
    }
    int rc;
    if (utf8_valid(buf)) {
        rc = reply_error_msg(r, status, error_code, buf);
    } else {
        char *clean = malloc(size + 1);
        if (!clean) {
            free(buf);
            return reply_oom(r);
        }
        /* copy_sanitized turns newlines into '?'; keep them. */
        size_t n = 0;
        for (char *line = buf, *next; line; line = next) {
            next = strchr(line, '\n');
            if (next)
                *next++ = '\0';
            if (n)
                clean[n++] = '\n';
            copy_sanitized(clean + n, size + 1 - n, line);
            n += strlen(clean + n);
        }
        rc = reply_error_msg(r, status, error_code, clean);
        free(clean);
    }
    free(buf);
    return rc;
}

void api_reply_instance_error(struct api_req *r, int rc, const struct cella_errors *errs)
{
    if (rc == -ENOENT) {
        api_reply_error(r, MHD_HTTP_FAILED_DEPENDENCY, "NoInstance",
                        "Server not initialized (no instance)");
    } else if (errs && cella_errors_total(errs)) {
        api_reply_errors(r, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "internal error", errs, NULL);
    } else {
        api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "internal error: %s",
                        strerror(rc < 0 ? -rc : rc));
    }
}

/* ---- request helpers ---- */

static void drop_body(struct api_req *r);

int api_body_json(struct api_req *r, bool any, json_t **out)
{
    *out = NULL;
    if (r->len == 0) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL, "request body is empty; expected %s",
                        any ? "a JSON value" : "a JSON object");
        return -EINVAL;
    }
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    drop_body(r); /* the text is not needed any more: free it (and its budget) now */
    if (!j) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL, "malformed JSON at line %d, column %d: %s",
                        je.line, je.column, je.text);
        return -EINVAL;
    }
    if (!any && !json_is_object(j)) {
        json_decref(j);
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL, "request body must be a JSON object");
        return -EINVAL;
    }
    *out = j;
    return 0;
}

struct query_scan {
    const char *const *allowed;
    size_t n;
    unsigned seen[8];
    char bad[96];
    bool dup;
};

static enum MHD_Result query_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    struct query_scan *q = cls;
    for (size_t i = 0; i < q->n; i++) {
        if (strcmp(key, q->allowed[i]) == 0) {
            if (++q->seen[i] > 1) {
                q->dup = true;
                copy_sanitized(q->bad, sizeof(q->bad), key);
                return MHD_NO;
            }
            return MHD_YES;
        }
    }
    copy_sanitized(q->bad, sizeof(q->bad), key);
    return MHD_NO;
}

int api_query_check(struct api_req *r, const char *const *allowed, size_t n)
{
    struct query_scan q = {.allowed = allowed, .n = n < 8 ? n : 8};
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, query_iter, &q);
    if (!q.bad[0])
        return 0;
    if (q.dup)
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL, "query parameter \"%s\" given twice", q.bad);
    else
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL, "unknown query parameter \"%s\"", q.bad);
    return -EINVAL;
}

int api_query_u64(struct api_req *r, const char *name, bool *present, uint64_t *out)
{
    const char *v = NULL;
    size_t vlen = 0;
    *present = false;
    *out = 0;
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v,
                                      &vlen) != MHD_YES)
        return 0;
    uint64_t x = 0;
    bool ok = v && vlen > 0 && vlen <= 20;
    for (size_t i = 0; ok && i < vlen; i++) {
        unsigned d = (unsigned char)v[i] - '0';
        ok = d <= 9 && !__builtin_mul_overflow(x, 10, &x) && !__builtin_add_overflow(x, d, &x);
    }
    if (!ok) {
        char shown[48];
        copy_sanitized(shown, sizeof(shown), v ? v : "");
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "query parameter \"%s\" must be an unsigned 64-bit integer, not \"%s\"",
                        name, shown);
        return -EINVAL;
    }
    *present = true;
    *out = x;
    return 0;
}

bool api_client_gone(struct api_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    char c;
    return recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* ---- request life cycle ---- */

void api_log_request(struct api_req *r, const char *note)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double ms = (double)(now.tv_sec - r->start.tv_sec) * 1e3 +
                (double)(now.tv_nsec - r->start.tv_nsec) / 1e6;
    enum log_level lvl = r->status >= 500 || r->status == 0 ? LOG_WARN : LOG_INFO;
    struct log_field f[] = {
        {"request_id", r->id, 0},      {"method", r->method, 0},
        {"path", r->path, 0},          {"status", NULL, r->status},
        {"duration_ms", NULL, ms},     {"body_bytes", NULL, (double)r->received},
        {"note", note ? note : "", 0},
    };
    /* request_id is a field of its own here: this may run off the request's thread. */
    log_set_request_id(NULL);
    log_fields(lvl, "api", f, note ? 7 : 6, "%s %s %u", r->method, r->path, r->status);
}

void api_req_free(struct api_req *r)
{
    if (!r)
        return;
    if (r->sub)
        serial_sub_close(r->sub);
    if (r->reserved)
        atomic_fetch_sub(&r->srv->inflight_body, r->reserved);
    free(r->body);
    free(r);
}

/* Media type of a Content-Type value is application/json (parameters allowed). */
static bool content_type_json(const char *ct)
{
    while (ct && (*ct == ' ' || *ct == '\t'))
        ct++;
    if (!ct || !*ct)
        return true; /* absent or empty: taken as JSON, as Propolis (dropshot) does */
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0)
        return false;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

static void set_early_error(struct api_req *r, unsigned status, const char *code, const char *fmt,
                            ...) __attribute__((format(printf, 4, 5)));
static void set_early_error(struct api_req *r, unsigned status, const char *code, const char *fmt,
                            ...)
{
    if (r->err_status)
        return;
    r->err_status = status;
    r->err_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_msg, sizeof(r->err_msg), fmt, ap);
    va_end(ap);
}

static void drop_body(struct api_req *r)
{
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
    if (r->reserved)
        atomic_fetch_sub(&r->srv->inflight_body, r->reserved);
    r->reserved = 0;
}

static void body_too_big(struct api_req *r)
{
    set_early_error(r, MHD_HTTP_CONTENT_TOO_LARGE, NULL,
                    "request body is over the %zu byte limit for %s %s", r->limit, r->method,
                    r->path);
}

/* First call: route, method, content type, declared length. */
static void req_start(struct api_req *r, const char *url)
{
    struct api_server *s = r->srv;
    r->route = api_route_match(r, url);
    r->limit = s->cfg.max_body;
    if (!r->route) {
        set_early_error(r, MHD_HTTP_NOT_FOUND, NULL, "Not Found");
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        const struct api_method *m = &r->route->methods[i];
        if (m->method && strcmp(m->method, r->method) == 0)
            r->m = m;
    }
    if (!r->m) {
        set_early_error(r, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, "Method Not Allowed");
        return;
    }
    if (r->m->big_body)
        r->limit = s->cfg.max_ensure_body;
    const char *ct = api_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (r->m->body == API_BODY_JSON && !content_type_json(ct)) {
        char shown[64];
        copy_sanitized(shown, sizeof(shown), ct);
        set_early_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL,
                        "expected content type \"application/json\", got \"%s\"", shown);
    }
}

/* Whether to answer before reading the (announced) body. */
static bool answer_before_body(struct api_req *r)
{
    const char *cl = api_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long n = cl ? strtoull(cl, NULL, 10) : 0;
    if (n > r->limit)
        body_too_big(r);
    if (!r->err_status)
        return false;
    const char *expect = api_header(r, MHD_HTTP_HEADER_EXPECT);
    if (expect && strcasecmp(expect, "100-continue") == 0)
        return true; /* the client waits for us before sending the body */
    return n > (unsigned long long)r->limit + API_DRAIN_MAX;
}

/* A piece of the body: kept, or counted and dropped after an error. */
static void body_take(struct api_req *r, const char *data, size_t n)
{
    struct api_server *s = r->srv;
    if (__builtin_add_overflow(r->received, n, &r->received))
        r->received = SIZE_MAX;
    if (!r->err_status && r->len + n > r->limit) {
        body_too_big(r);
        drop_body(r);
    }
    if (!r->err_status) {
        size_t before = atomic_fetch_add(&s->inflight_body, n);
        r->reserved += n;
        if (before + n > s->cfg.max_inflight_body) {
            set_early_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
                            "the server is receiving too many request bodies at once; retry");
            drop_body(r);
        }
    }
    if (!r->err_status && r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap *= 2;
        if (cap > r->limit)
            cap = r->limit;
        char *b = realloc(r->body, cap);
        if (!b) {
            set_early_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
                            "out of memory while reading the request body");
            drop_body(r);
        } else {
            r->body = b;
            r->cap = cap;
        }
    }
    if (!r->err_status) {
        memcpy(r->body + r->len, data, n);
        r->len += n;
        return;
    }
    /* Dropping: a client that keeps sending far past the limit is cut off. */
    if (r->received > r->limit + (size_t)API_DRAIN_MAX)
        r->abort = true;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct api_server *s = cls;
    struct api_req *r = *con_cls;
    log_set_request_id(r ? r->id : NULL);
    if (!r) {
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->srv = s;
        r->conn = conn;
        clock_gettime(CLOCK_MONOTONIC, &r->start);
        make_request_id(s, r->id);
        log_set_request_id(r->id);
        copy_sanitized(r->method, sizeof(r->method), method);
        copy_sanitized(r->path, sizeof(r->path), url);
        *con_cls = r;
        req_start(r, url);
        if (answer_before_body(r))
            api_reply_error(r, r->err_status, r->err_code, "%s", r->err_msg);
        return r->abort ? MHD_NO : MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!r->status)
            body_take(r, upload_data, n);
        return r->abort ? MHD_NO : MHD_YES;
    }
    if (r->status)
        return MHD_YES;
    if (r->err_status)
        api_reply_error(r, r->err_status, r->err_code, "%s", r->err_msg);
    else if (atomic_load(&s->stopping))
        api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "the server is shutting down");
    else
        r->m->fn(r);
    if (!r->status && !r->abort)
        api_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "the handler gave no answer");
    return r->abort ? MHD_NO : MHD_YES;
}

static const char *termination_note(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK:
        return NULL;
    case MHD_REQUEST_TERMINATED_WITH_ERROR:
        return "terminated_with_error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED:
        return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN:
        return "daemon_shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR:
        return "read_error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
        return "client_abort";
    }
    return "terminated";
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct api_server *s = cls;
    struct api_req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    /*
     * A websocket session frees its request when it ends. libmicrohttpd
     * runs the upgrade handler before reporting completion; if it ever
     * reports first (101 sent, handler pending), leave the request to it.
     */
    pthread_mutex_lock(&s->lock);
    bool session_owns = r->ws_queued && !r->ws_done &&
                        (r->ws_started || toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (session_owns)
        r->completed = true;
    pthread_mutex_unlock(&s->lock);
    if (session_owns)
        return;
    if (!r->ws_started) {
        const char *note = termination_note(toe);
        if (r->abort && !note)
            note = "aborted";
        api_log_request(r, note);
    }
    api_req_free(r);
}

__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_msg(LOG_WARN, "api", "libmicrohttpd: %s", msg);
}

/* ---- start / stop ---- */

static int listen_socket(const char *address, uint16_t port, uint16_t *bound)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        sl = sizeof(*v4);
    } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        sl = sizeof(*v6);
    } else {
        log_msg(LOG_ERROR, "api", "listen address \"%s\" is not an IPv4 or IPv6 literal", address);
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        log_msg(LOG_ERROR, "api", "cannot listen on %s port %u: %s", address, port, strerror(e));
        close(fd);
        return -e;
    }
    struct sockaddr_storage got;
    socklen_t gl = sizeof(got);
    if (getsockname(fd, (struct sockaddr *)&got, &gl) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *bound = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                            : ((struct sockaddr_in6 *)&got)->sin6_port);
    return fd;
}

int api_server_start(const struct api_config *cfg, struct instance *inst, struct api_server **out)
{
    *out = NULL;
    if (!inst)
        return -EINVAL;
    struct api_config c = cfg ? *cfg : (struct api_config){0};
    if (!c.address)
        c.address = API_DEFAULT_ADDRESS;
    if (strlen(c.address) >= sizeof(((struct api_server *)0)->address))
        return -EINVAL;
    if (!c.max_connections)
        c.max_connections = API_DEFAULT_MAX_CONNECTIONS;
    if (!c.idle_timeout_s)
        c.idle_timeout_s = API_DEFAULT_IDLE_TIMEOUT_S;
    if (!c.max_body)
        c.max_body = API_DEFAULT_MAX_BODY;
    if (!c.max_ensure_body)
        c.max_ensure_body = API_DEFAULT_MAX_ENSURE_BODY;
    if (!c.max_inflight_body)
        c.max_inflight_body = 2 * c.max_ensure_body;
    if (!c.ws_stall_ms)
        c.ws_stall_ms = API_DEFAULT_WS_STALL_MS;
    if (c.max_body > SPEC_MAX_JSON_TEXT || c.max_ensure_body > SPEC_MAX_JSON_TEXT ||
        c.max_inflight_body < c.max_ensure_body)
        return -EINVAL;

    struct api_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->inst = inst;
    snprintf(s->address, sizeof(s->address), "%s", c.address);
    c.address = s->address;
    s->cfg = c;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->ws_idle, NULL);
    s->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->stop_fd < 0) {
        int e = errno;
        free(s);
        return -e;
    }
    int fd = listen_socket(s->address, c.port, &s->port);
    if (fd < 0) {
        close(s->stop_fd);
        free(s);
        return fd;
    }
    /*
     * One thread per connection (poll-based, no FD_SETSIZE limit): long
     * polls and websockets simply block their own thread.
     */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_AUTO | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
        MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, c.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, c.idle_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        s, MHD_OPTION_THREAD_STACK_SIZE, (size_t)(1u << 20), MHD_OPTION_END);
    if (!s->daemon) {
        log_msg(LOG_ERROR, "api", "libmicrohttpd did not start");
        close(fd);
        close(s->stop_fd);
        free(s);
        return -EIO;
    }
    log_msg(LOG_INFO, "api", "listening on %s port %u (max %u connections)", s->address, s->port,
            c.max_connections);
    *out = s;
    return 0;
}

uint16_t api_server_port(const struct api_server *s)
{
    return s ? s->port : 0;
}

void api_server_stop(struct api_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    uint64_t one = 1;
    if (write(s->stop_fd, &one, sizeof(one)) < 0)
        log_msg(LOG_WARN, "api", "stop signal: %s", strerror(errno));
    /* Websocket sessions see stop_fd and close (1001) within a few seconds. */
    pthread_mutex_lock(&s->lock);
    while (s->ws_active)
        pthread_cond_wait(&s->ws_idle, &s->lock);
    pthread_mutex_unlock(&s->lock);
    /* Long polls notice `stopping` within one slice; MHD joins every thread. */
    MHD_stop_daemon(s->daemon);
    close(s->stop_fd);
    pthread_cond_destroy(&s->ws_idle);
    pthread_mutex_destroy(&s->lock);
    log_msg(LOG_INFO, "api", "stopped");
    free(s);
}
