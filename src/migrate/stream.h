/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A blocking, framed message stream for migration: one protocol message is
 * one binary websocket message (RFC 6455, framed by wslay) on a connected
 * TCP socket.
 *
 *  - Server role (the source): the API layer answered the HTTP upgrade of
 *    `GET /instance/migrate/{id}/start` and hands over the socket and any
 *    bytes it already read past the request (mig_stream_server).
 *  - Client role (the target): mig_stream_connect does the HTTP upgrade
 *    itself (random key, checks 101 and Sec-WebSocket-Accept).
 *
 * Sends and receives block for at most the stall timeout *without
 * progress* (no byte moving): a peer that stops reading or writing is
 * given up on with -ETIMEDOUT. Pings are answered; text frames and
 * messages over the size cap are protocol errors. While a send waits for
 * the socket, incoming messages are read and queued (bounded), so two
 * peers that both send never deadlock and a peer's ERROR is seen early.
 *
 * A stream that failed stays failed: every later call returns the same
 * negative errno, and mig_stream_error() says why in words.
 *
 * An in-memory stream (mig_stream_memory) replays a fixed byte string as
 * incoming messages and swallows what is sent: for fuzzers and tests.
 *
 * Threading: one thread uses a stream; mig_stream_shutdown may be called
 * from any other thread to make blocked calls fail (cancellation).
 */
#ifndef CELLA_MIGRATE_STREAM_H
#define CELLA_MIGRATE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"

#define MIG_STREAM_STALL_MS_DEFAULT 30000
#define MIG_STREAM_MAX_HEADER       16384 /* handshake answer accepted by the client */

struct mig_stream;

/*
 * Server role over a connected socket (made non-blocking here); `early`
 * (bytes read past the upgrade request, may be NULL) is copied. With
 * own_fd the stream closes fd when freed (and on failure here); without
 * it the caller keeps fd (e.g. libmicrohttpd's upgraded socket, which the
 * API layer closes with MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE)
 * after mig_stream_free). 0 or -errno.
 */
int mig_stream_server(int fd, bool own_fd, const void *early, size_t early_len,
                      struct mig_stream **out);

/*
 * Client role over a socket whose upgrade already happened (tests, or a
 * caller that did its own handshake). Takes ownership of fd.
 */
int mig_stream_client(int fd, const void *early, size_t early_len, struct mig_stream **out);

/*
 * Client role: connects to addr ("host:port", "[v6]:port"), sends the
 * upgrade for `path`, checks the answer (101, Upgrade: websocket,
 * Connection: Upgrade, the Sec-WebSocket-Accept of our random key), all
 * within timeout_ms. On failure a record says why (unreachable, refused
 * with status N and the server's message, not a websocket server).
 * Returns 0 or -errno (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, -EPROTO).
 */
int mig_stream_connect(const char *addr, const char *path, int timeout_ms, struct mig_stream **out,
                       struct cella_errors *errs);

/*
 * In-memory stream: `data` (not copied; must outlive the stream) is a
 * sequence of [u32 little-endian length][message] records received in
 * order; the end of data reads as the peer closing. Sends succeed and are
 * counted. For fuzzers and tests.
 */
int mig_stream_memory(const uint8_t *data, size_t len, struct mig_stream **out);

/* Stall timeout in ms (default MIG_STREAM_STALL_MS_DEFAULT); <= 0 waits forever. */
void mig_stream_set_stall(struct mig_stream *s, int stall_ms);
/* Largest message received (default MIG_MSG_MAX from proto.h). */
void mig_stream_set_max_msg(struct mig_stream *s, size_t max);

/* Sends one message; returns once it was handed to the kernel. 0 or -errno. */
int mig_stream_send(struct mig_stream *s, const void *buf, size_t len);

/*
 * Sends one message made of the n (<= MIG_STREAM_MAX_IOV) pieces of iov, in
 * order, and returns once all of it was handed to the kernel (the pieces
 * may be reused then). In the server role, when nothing else is waiting to
 * be sent, the frame goes out straight from the pieces (sendmsg, no copy);
 * otherwise they are joined and sent like mig_stream_send. 0 or -errno.
 */
#define MIG_STREAM_MAX_IOV 512
struct iovec;
int mig_stream_sendv(struct mig_stream *s, const struct iovec *iov, size_t n);

/*
 * Receives the next message. *buf stays valid until the next recv,
 * try_recv or free. 0; -ECONNRESET when the peer closed (cleanly or not);
 * -ETIMEDOUT on a stall; -EPROTO on a protocol violation; -errno.
 */
int mig_stream_recv(struct mig_stream *s, const uint8_t **buf, size_t *len);

/* Like recv but never waits: -EAGAIN when no whole message is there yet. */
int mig_stream_try_recv(struct mig_stream *s, const uint8_t **buf, size_t *len);

/*
 * Closes the websocket cleanly: sends a close frame (code, reason) and
 * waits up to grace_ms for the peer's close (messages still arriving are
 * dropped). The stream can then only be freed. 0 or -errno.
 */
int mig_stream_close(struct mig_stream *s, uint16_t code, const char *reason, int grace_ms);

/* Makes blocked and later calls fail with -ECANCELED. Any thread. */
void mig_stream_shutdown(struct mig_stream *s);

/* Why the stream failed ("" if it did not). */
const char *mig_stream_error(const struct mig_stream *s);

/* "ip:port" of the peer ("" unknown). */
const char *mig_stream_peer(const struct mig_stream *s);

/* Bytes moved on the socket (frames included). */
uint64_t mig_stream_bytes_sent(const struct mig_stream *s);
uint64_t mig_stream_bytes_received(const struct mig_stream *s);

/* Closes the socket and frees; accepts NULL. */
void mig_stream_free(struct mig_stream *s);

#endif
