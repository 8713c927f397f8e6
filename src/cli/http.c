/* SPDX-License-Identifier: MPL-2.0 */
/* HTTP requests to a Propolis v5 server through libcurl. */
#include "cli/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- addresses ---- */

/* Letters, digits and what names use; an IPv6 literal: hex digits, ':' and '.'. */
static bool host_char_ok(char c, bool v6)
{
    if (v6)
        return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') ||
               c == ':' || c == '.';
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

static int parse_port(const char *s, size_t len, char out[6])
{
    if (len == 0 || len > 5)
        return -EINVAL;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return -EINVAL;
    snprintf(out, 6, "%u", v);
    return 0;
}

int cli_server_parse(const char *addr, struct cli_server *out)
{
    memset(out, 0, sizeof(*out));
    if (strncmp(addr, "http://", 7) == 0)
        addr += 7;
    size_t len = strlen(addr);
    if (len > 0 && addr[len - 1] == '/')
        len--;
    const char *host = addr, *port = NULL;
    size_t hlen = len, plen = 0;
    bool v6 = false;
    if (len > 0 && addr[0] == '[') {
        const char *close = memchr(addr, ']', len);
        if (!close)
            return -EINVAL;
        host = addr + 1;
        hlen = (size_t)(close - host);
        v6 = true;
        size_t rest = len - (size_t)(close + 1 - addr);
        if (rest > 0) {
            if (close[1] != ':')
                return -EINVAL;
            port = close + 2;
            plen = rest - 1;
        }
    } else {
        const char *colon = memchr(addr, ':', len);
        if (colon && !memchr(colon + 1, ':', len - (size_t)(colon + 1 - addr))) {
            hlen = (size_t)(colon - addr);
            port = colon + 1;
            plen = len - hlen - 1;
        } else if (colon) {
            v6 = true; /* a bare IPv6 literal */
        }
    }
    if (hlen == 0 || hlen >= sizeof(out->host))
        return -EINVAL;
    for (size_t i = 0; i < hlen; i++) {
        if (!host_char_ok(host[i], v6))
            return -EINVAL;
    }
    memcpy(out->host, host, hlen);
    if (port ? parse_port(port, plen, out->port) < 0 : parse_port("12400", 5, out->port) < 0)
        return -EINVAL;
    snprintf(out->hostport, sizeof(out->hostport), v6 ? "[%s]:%s" : "%s:%s", out->host, out->port);
    return 0;
}

/* ---- requests ---- */

void cli_http_reply_free(struct cli_http_reply *r)
{
    if (!r)
        return;
    free(r->body);
    memset(r, 0, sizeof(*r));
}

struct sink {
    char *buf;
    size_t len, cap;
    bool too_big, no_mem;
};

static size_t sink_write(char *data, size_t size, size_t nmemb, void *user)
{
    struct sink *s = user;
    size_t n = size * nmemb; /* curl guarantees size == 1 */
    if (n > CLI_HTTP_MAX_BODY - s->len) {
        s->too_big = true;
        return 0;
    }
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *g = realloc(s->buf, cap);
        if (!g) {
            s->no_mem = true;
            return 0;
        }
        s->buf = g;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    s->buf[s->len] = '\0';
    return n;
}

int cli_http(const struct cli_server *srv, const char *method, const char *path, const char *body,
             long timeout_ms, struct cli_http_reply *reply, char *why, size_t why_len)
{
    static bool curl_ready;
    memset(reply, 0, sizeof(*reply));
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            snprintf(why, why_len, "cannot initialise libcurl");
            return -ENOMEM;
        }
        curl_ready = true;
    }
    char url[1024];
    if ((size_t)snprintf(url, sizeof(url), "http://%s%s", srv->hostport, path) >= sizeof(url)) {
        snprintf(why, why_len, "request path too long");
        return -ENOMEM;
    }
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL, *g;
    const char *lines[] = {"Accept: application/json",
                           "Expect:", body ? "Content-Type: application/json" : NULL};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]) && h; i++) {
        if (!lines[i])
            continue;
        if (!(g = curl_slist_append(hdr, lines[i]))) {
            curl_slist_free_all(hdr);
            curl_easy_cleanup(h);
            h = NULL;
        }
        hdr = g;
    }
    if (!h) {
        snprintf(why, why_len, "out of memory");
        return -ENOMEM;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    struct sink s = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* a VMM's server is never behind a proxy */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, (long)CLI_CONNECT_TIMEOUT_S);
    if (timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "cella/" CELLA_VERSION);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    if (body || strcmp(method, "GET") != 0) {
        /* Every PUT/POST carries a Content-Length, even when empty. */
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? strlen(body) : 0));
    }
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    CURLcode c = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    int r = 0;
    if (c == CURLE_OK) {
        reply->status = status;
        reply->body = s.buf ? s.buf : calloc(1, 1);
        reply->len = s.len;
        if (reply->body)
            return 0;
        r = -ENOMEM;
    } else if (s.too_big) {
        r = -E2BIG;
        snprintf(why, why_len, "the answer is larger than %zu bytes", CLI_HTTP_MAX_BODY);
    } else if (s.no_mem || c == CURLE_OUT_OF_MEMORY) {
        r = -ENOMEM;
    } else {
        r = c == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -ECONNREFUSED;
        snprintf(why, why_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(c));
    }
    if (r == -ENOMEM)
        snprintf(why, why_len, "out of memory");
    free(s.buf);
    return r;
}

int cli_unreachable(const char *addr, const char *why)
{
    cli_error("cannot reach the server at %s: %s", addr, why);
    return CLI_UNREACHABLE;
}

int cli_call(const struct cli_args *args, const char *method, const char *path, const char *body,
             json_t **out)
{
    if (out)
        *out = NULL;
    struct cli_server srv;
    if (cli_server_parse(args->server, &srv) < 0) {
        cli_error("invalid server address \"%s\" (expected ADDR:PORT)", args->server);
        return CLI_USAGE;
    }
    struct cli_http_reply rep;
    char why[CLI_HTTP_WHY_MAX];
    int r = cli_http(&srv, method, path, body, 0, &rep, why, sizeof(why));
    if (r == -E2BIG || r == -ENOMEM) {
        cli_error("%s %s: %s", method, path, why);
        return CLI_INVALID;
    }
    if (r < 0)
        return cli_unreachable(srv.hostport, why);
    if (rep.status < 200 || rep.status > 299) {
        r = cli_http_report(&rep);
        cli_http_reply_free(&rep);
        return r;
    }
    r = CLI_OK;
    if (out && rep.len > 0) {
        json_error_t jerr;
        *out = json_loadb(rep.body, rep.len, JSON_REJECT_DUPLICATES, &jerr);
        if (!*out) {
            cli_error("the server's answer to %s %s is not JSON: %s", method, path, jerr.text);
            r = CLI_INVALID;
        }
    }
    cli_http_reply_free(&rep);
    return r;
}

/* ---- errors ---- */

void cli_print_sanitized(void *file, const char *s, size_t len, int keep_newlines)
{
    FILE *f = file;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && !(c == '\n' && keep_newlines)) || c == 0x7f)
            c = '?';
        fputc(c, f);
    }
}

/* One "error (CODE): LINE [ID]" line. */
static void report_line(const char *code, const char *line, size_t len, const char *id)
{
    fprintf(stderr, "error (");
    cli_print_sanitized(stderr, code, strlen(code), 0);
    fprintf(stderr, "): ");
    cli_print_sanitized(stderr, line, len, 0);
    if (id && id[0]) {
        fprintf(stderr, " [");
        cli_print_sanitized(stderr, id, strlen(id), 0);
        fputc(']', stderr);
    }
    fputc('\n', stderr);
}

int cli_http_report(const struct cli_http_reply *r)
{
    char status[32];
    snprintf(status, sizeof(status), "HTTP %ld", r->status);
    json_t *j = json_loadb(r->body, r->len, 0, NULL);
    const char *msg = json_string_value(json_object_get(j, "message"));
    if (!msg) {
        /* Not Propolis's Error body: show its beginning. */
        size_t n = r->len < 300 ? r->len : 300;
        while (n > 0 && (r->body[n - 1] == '\n' || r->body[n - 1] == '\r'))
            n--;
        if (n == 0)
            report_line(status, "(no message)", 12, NULL);
        else
            report_line(status, r->body, n, NULL);
        json_decref(j);
        return CLI_INVALID;
    }
    const char *code = json_string_value(json_object_get(j, "error_code"));
    const char *id = json_string_value(json_object_get(j, "request_id"));
    if (!code || !code[0])
        code = status;
    /* A message of several lines is several problems: one line each. */
    const char *p = msg;
    size_t lines = 0;
    for (;;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n > 0 || (!nl && lines == 0)) {
            report_line(code, p, n, id);
            lines++;
        }
        if (!nl)
            break;
        p = nl + 1;
    }
    json_decref(j);
    return CLI_INVALID;
}
