/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The client side of Propolis's HTTP API for the `cella` commands: server
 * addresses, one request through libcurl, and how a server's error body is
 * shown to a person.
 *
 * Everything a server answers is untrusted: bodies are size-capped, and
 * text from a server is stripped of control characters before it reaches
 * a terminal.
 */
#ifndef CELLA_CLI_HTTP_H
#define CELLA_CLI_HTTP_H

#include <jansson.h>
#include <stddef.h>

#include "cli/cli.h"

/* Largest body accepted from a server (a spec, a serial history). */
#define CLI_HTTP_MAX_BODY ((size_t)100 << 20)

/* Size of the `why` buffers below (curl's error text and some words). */
#define CLI_HTTP_WHY_MAX 320

/* Seconds allowed to open a connection to the server. */
#define CLI_CONNECT_TIMEOUT_S 10

/* A server address, split for sockets and URLs. */
struct cli_server {
    char host[256];     /* host name or IP literal, IPv6 without brackets */
    char port[6];       /* decimal, 1..65535 */
    char hostport[272]; /* "host:port" / "[v6]:port": URLs and Host: headers */
};

/*
 * Parses "HOST:PORT", "[V6]:PORT", "HOST" or "V6" (port 12400), with an
 * optional "http://" in front and "/" behind. Returns 0, or -EINVAL for an
 * address that is empty, too long, has a bad port or characters that do not
 * belong in a host.
 */
int cli_server_parse(const char *addr, struct cli_server *out);

/* One answer from a server. */
struct cli_http_reply {
    long status; /* HTTP status */
    char *body;  /* NUL-terminated (may hold NULs before len), heap */
    size_t len;
};

void cli_http_reply_free(struct cli_http_reply *r);

/*
 * Sends `method` `path` (with its query) to srv, with the JSON text `body`
 * (NULL: no body) and waits for the answer, at most timeout_ms in total
 * (0: no limit beyond the connect timeout). Returns 0 with *reply filled
 * for any HTTP status, or a negative errno with *reply empty and `why`
 * (size why_len) saying what went wrong: -ETIMEDOUT (the connection or the
 * whole exchange took too long), -E2BIG (the answer is over
 * CLI_HTTP_MAX_BODY), -ENOMEM, or -ECONNREFUSED for every other transport
 * failure (cannot connect, connection dropped, not HTTP).
 */
int cli_http(const struct cli_server *srv, const char *method, const char *path, const char *body,
             long timeout_ms, struct cli_http_reply *reply, char *why, size_t why_len);

/*
 * The usual exchange of a command: parses args->server, sends the request
 * and reports failures. Returns CLI_OK with the 2xx answer's JSON in *out
 * (a new reference, or NULL when the body is empty or out is NULL);
 * CLI_USAGE for a bad server address; CLI_UNREACHABLE when the server
 * cannot be reached; CLI_INVALID when the server said no (its error is
 * printed) or answered something that is not JSON.
 */
int cli_call(const struct cli_args *args, const char *method, const char *path, const char *body,
             json_t **out);

/*
 * Prints a non-2xx answer to stderr, one line per line of the server's
 * message: "error (CODE): MESSAGE [REQUEST_ID]", where CODE is the body's
 * error_code, or "HTTP STATUS" when it has none. A body that is not
 * Propolis's Error shape is shown as its first bytes. Returns CLI_INVALID.
 */
int cli_http_report(const struct cli_http_reply *r);

/* Prints why the server at addr cannot be reached; returns CLI_UNREACHABLE. */
int cli_unreachable(const char *addr, const char *why);

/*
 * Writes s to f with every control character but newline (when
 * keep_newlines) shown as '?', so a server cannot drive the terminal.
 */
void cli_print_sanitized(void *f, const char *s, size_t len, int keep_newlines);

#endif
