/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The HTTP server: Propolis's server API (v5) over libmicrohttpd, with the
 * COM1 console as a websocket (wslay). docs/api.md describes the endpoints,
 * limits, error codes and the threading; docs/openapi.json is the contract.
 *
 * The server is a thin edge over the instance state driver
 * (instance/instance.h): it decodes requests, calls the driver, encodes
 * the answer and reports every error once, in the response body
 * {request_id, message, error_code?}. It keeps no VM state of its own.
 *
 * Threading: libmicrohttpd runs one thread per connection (bounded by
 * max_connections), so a long-polling state monitor or a websocket blocks
 * only its own thread. Every handler may run on any of those threads at
 * once; the instance functions are thread-safe by their contract.
 *
 * Linking: api_dep does not include the instance library. A program links
 * api_dep plus the real instance library (cella-server) or a fake one
 * (tests/api/).
 */
#ifndef CELLA_API_API_H
#define CELLA_API_API_H

#include <stddef.h>
#include <stdint.h>

#include "spec/spec_json.h"

struct instance;
struct api_server;

/* Defaults used when a field of struct api_config is 0 / NULL. */
#define API_DEFAULT_ADDRESS         "127.0.0.1"
#define API_DEFAULT_MAX_CONNECTIONS 256
#define API_DEFAULT_IDLE_TIMEOUT_S  120
#define API_DEFAULT_MAX_BODY        (4u << 10) /* every body but PUT /instance */
#define API_DEFAULT_WS_STALL_MS     60000
/* PUT /instance: as large as the spec library parses (blob backends). */
#define API_DEFAULT_MAX_ENSURE_BODY ((size_t)SPEC_MAX_JSON_TEXT)

/* Largest value of max_bytes a serial history request is granted. */
#define API_MAX_HISTORY_BYTES (1u << 20)
/* max_bytes when the request does not say. */
#define API_DEFAULT_HISTORY_BYTES (16u << 10)
/* Largest websocket message a console client may send (keystrokes). */
#define API_WS_MAX_MSG (64u << 10)

/*
 * Server settings. Zeroed fields take the defaults above; strings are
 * copied by api_server_start.
 */
struct api_config {
    const char *address;      /* IPv4 or IPv6 literal ("127.0.0.1", "::1", "::"); NULL: default */
    uint16_t port;            /* 0: the kernel picks one (see api_server_port) */
    unsigned max_connections; /* open connections (= threads); more are refused */
    unsigned idle_timeout_s;  /* an idle keep-alive connection is closed after this */
    size_t max_body;          /* request body limit, bytes, except PUT /instance */
    size_t max_ensure_body;   /* request body limit for PUT /instance */
    /*
     * Bytes of request bodies all connections together may hold at once
     * (0: twice max_ensure_body); a body over the budget gets 503.
     */
    size_t max_inflight_body;
    /* A websocket whose client takes no data for this long is closed. */
    unsigned ws_stall_ms;
};

/*
 * Starts serving `inst` on cfg->address:cfg->port. The instance must
 * outlive the server (stop the server before instance_free). Returns 0 and
 * the server in *out, or a negative errno: -EINVAL bad address or config,
 * -EADDRINUSE / other socket errors when the address cannot be bound,
 * -ENOMEM. Any thread; not concurrently with api_server_stop on the same
 * server.
 */
int api_server_start(const struct api_config *cfg, struct instance *inst, struct api_server **out);

/* The TCP port the server listens on (useful after port 0). */
uint16_t api_server_port(const struct api_server *s);

/*
 * Stops accepting, ends long polls (503) and websockets (close 1001),
 * waits for every connection thread and frees the server. Accepts NULL.
 * Must not be called from one of the server's own handler threads.
 */
void api_server_stop(struct api_server *s);

#endif
