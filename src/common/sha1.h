/* SPDX-License-Identifier: MPL-2.0 */
/*
 * SHA-1 and base64, just enough for the websocket handshake (RFC 6455
 * section 4: Sec-WebSocket-Accept is base64(SHA-1(key + GUID))). SHA-1 is
 * no security measure here; the handshake only proves the server speaks
 * websocket.
 */
#ifndef CELLA_COMMON_SHA1_H
#define CELLA_COMMON_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define CELLA_SHA1_LEN 20

/* The SHA-1 digest (FIPS 180-4) of len bytes at data. */
void cella_sha1(const void *data, size_t len, uint8_t out[CELLA_SHA1_LEN]);

/*
 * Writes the padded base64 (RFC 4648) of len bytes at data and a NUL to
 * out, which holds at least 4 * ((len + 2) / 3) + 1 bytes.
 */
void cella_base64(const void *data, size_t len, char *out);

/*
 * Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2):
 * base64(SHA-1(key + the protocol GUID)), 28 characters and a NUL. Used by
 * the server's handshake and checked by the CLI's client.
 */
void cella_ws_accept(const char *key, char out[29]);

#endif
