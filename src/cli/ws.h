/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A websocket client connection (RFC 6455) for the `cella` commands: the
 * opening handshake over a plain TCP socket, then wslay's event API for
 * framing. The caller runs the poll loop (cmd_serial.c).
 */
#ifndef CELLA_CLI_WS_H
#define CELLA_CLI_WS_H

#include <stddef.h>
#include <stdint.h>
#include <wslay/wslay.h>

#include "cli/http.h"

/* Longest message accepted from the server (wslay drops the connection). */
#define CLI_WS_MAX_MSG ((uint64_t)1 << 20)

/* Largest handshake answer (status line and headers) accepted. */
#define CLI_WS_MAX_HEADER 16384

struct cli_ws {
    int fd; /* non-blocking TCP socket, -1 when closed */
    wslay_event_context_ptr ctx;
    /* Bytes that arrived with the handshake answer: the first frames. */
    uint8_t *early;
    size_t early_len, early_off;
    bool eof;   /* the server closed the TCP connection */
    void *user; /* the caller's, for cli_ws_user() */
};

/*
 * Connects to srv, sends the opening handshake for `path` (with its query)
 * and checks the answer: status 101, Upgrade: websocket, Connection:
 * Upgrade, Sec-WebSocket-Accept matching the random key, no extension.
 * On success sets up ws->ctx as a wslay client with `cb` (recv, send and
 * genmask are filled in here) and `user` passed to cb's callbacks through
 * cli_ws_user(), and returns CLI_OK. *ws must stay where it is while the
 * connection lives (wslay's callbacks point at it). Otherwise prints why and returns
 * CLI_UNREACHABLE (no connection within CLI_CONNECT_TIMEOUT_S, or it broke),
 * or CLI_INVALID (the server refused: its error is printed; or it does not
 * speak websocket).
 */
int cli_ws_connect(const struct cli_server *srv, const char *path,
                   const struct wslay_event_callbacks *cb, void *user, struct cli_ws *ws);

/* The `user` of cli_ws_connect, from inside a wslay callback. */
void *cli_ws_user(void *callback_user_data);

/* Frees the context and closes the socket; accepts a closed ws. */
void cli_ws_close(struct cli_ws *ws);

/*
 * The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2):
 * base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")). out holds 29.
 */
void cli_ws_accept_for(const char *key, char out[29]);

#endif
