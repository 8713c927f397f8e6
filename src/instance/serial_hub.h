/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The serial console hub for COM1: keeps history and fans guest output out
 * to any number of clients, and carries keystrokes back to the guest.
 *
 * History: the first SERIAL_HISTORY_HEAD bytes ever written and the most
 * recent SERIAL_HISTORY_TAIL bytes are kept, with absolute byte offsets
 * (offset 0 = the first byte the guest ever wrote). A read asking for bytes
 * that are no longer kept fails with -ERANGE (the API answers 400).
 *
 * Clients: each subscriber has its own bounded queue. serial_hub_write()
 * never blocks; a subscriber whose queue is full is marked lagged and is
 * told so (it may re-sync from history or be closed by the API), so a slow
 * client never blocks the guest or other clients.
 *
 * Threading: serial_hub_write() runs on vCPU threads; everything else on
 * any thread. One mutex guards the hub; each subscriber has an eventfd
 * that becomes readable when it has data or is closed.
 */
#ifndef CELLA_INSTANCE_SERIAL_HUB_H
#define CELLA_INSTANCE_SERIAL_HUB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SERIAL_HISTORY_HEAD (1u << 20)
#define SERIAL_HISTORY_TAIL (1u << 20)
#define SERIAL_SUB_QUEUE    (256u << 10) /* bytes a subscriber may fall behind */
#define SERIAL_MAX_SUBS     64

struct serial_hub;
struct serial_sub;

int serial_hub_new(struct serial_hub **out);
/* Closes every subscriber (their eventfds fire) and frees the hub. */
void serial_hub_free(struct serial_hub *h);

/* Guest output. Never blocks. vCPU thread. */
void serial_hub_write(struct serial_hub *h, const uint8_t *buf, size_t len);

/*
 * History arriving with a migrated VM: bytes for absolute offsets
 * [offset, offset + len). Bytes before the current total are skipped; a
 * gap after it (the part between the kept head and tail) is skipped over
 * as bytes that are no longer kept. Offsets only grow.
 */
void serial_hub_restore(struct serial_hub *h, uint64_t offset, const uint8_t *buf, size_t len);

/* Total bytes ever written (= the offset of the next byte). */
uint64_t serial_hub_total(struct serial_hub *h);

/*
 * Copies up to max bytes of history into out. from_start: bytes starting at
 * absolute offset `offset`; otherwise the last `offset` bytes (most_recent).
 * *len gets the byte count, *last_offset the absolute offset one past the
 * last byte returned (Propolis's last_byte_offset). A start at or past the
 * end gives no bytes. -ERANGE when the requested start is no longer kept.
 */
int serial_hub_read(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                    uint8_t *out, size_t *len, uint64_t *last_offset);

/*
 * Subscribes to output from absolute offset `start` (history first, then
 * live); start > total means "from now". -ERANGE if start is no longer
 * kept; -E2BIG over SERIAL_MAX_SUBS.
 */
int serial_hub_subscribe(struct serial_hub *h, uint64_t start, struct serial_sub **out);
void serial_sub_close(struct serial_sub *s);
/*
 * eventfd: readable exactly while a read would return something other than
 * 0 (data, a control message, lag or closure). Callers poll it; they must
 * not read it themselves.
 */
int serial_sub_fd(struct serial_sub *s);
/*
 * Takes up to max queued bytes. Returns bytes copied, 0 if none, -EAGAIN
 * when a control message is next (take it with serial_sub_take_control),
 * -EPIPE once the hub is closed and drained, -ENOBUFS once if the
 * subscriber fell behind (bytes were dropped; *lost tells how many, all at
 * the current position, so they may be re-read from history while it still
 * keeps them), after which it resumes with the oldest bytes still kept.
 */
int serial_sub_read(struct serial_sub *s, uint8_t *out, size_t max, uint64_t *lost);

/*
 * Keystrokes for the guest: the hub forwards them to the sink the instance
 * sets (the UART of the current machine). Returns bytes accepted now.
 */
typedef size_t (*serial_input_fn)(void *ctx, const uint8_t *buf, size_t len);
void serial_hub_set_input(struct serial_hub *h, serial_input_fn fn, void *ctx);
size_t serial_hub_input(struct serial_hub *h, const uint8_t *buf, size_t len);

/*
 * Control message to every subscriber (e.g. the VM migrated away): queued
 * in order with the data; serial_sub_read returns it through
 * serial_sub_take_control(). Text is JSON for the websocket's text frame.
 */
void serial_hub_broadcast_control(struct serial_hub *h, const char *json);
/* The pending control message, or NULL; caller frees. */
char *serial_sub_take_control(struct serial_sub *s);

#endif
