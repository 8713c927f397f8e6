/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A fake of the instance state driver (instance/instance.h) and of the
 * COM1 hub (instance/serial_hub.h) so the HTTP layer can be tested alone,
 * without KVM. It keeps every contract of those headers that the API
 * relies on (return codes, generations, long-poll wait, history ranges,
 * bounded subscriber queues with lag, control messages, input sink) and
 * adds the knobs below, which the test server exposes on stdin.
 *
 * State machine of the fake (each arrow publishes one generation):
 *   ensure: (none) -> Creating (gen 1)
 *   Run:    Creating -> Starting -> Running; Running: accepted, no change
 *   Reboot: Running -> Rebooting -> Running; otherwise -EPERM
 *   Stop:   any live state -> Stopping -> Stopped -> Destroyed
 *   Run/Reboot/Stop after Destroyed: -EPERM
 * Ensure fails with -EIO (500) when properties.name is "fail-create".
 *
 * Threading: every function may be called from any thread.
 */
#ifndef CELLA_TESTS_API_FAKE_INSTANCE_H
#define CELLA_TESTS_API_FAKE_INSTANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "instance/instance.h"
#include "instance/serial_hub.h"

/* Publishes `s` as a new generation (as the real driver does on events). */
void fake_publish(struct instance *inst, enum instance_state s);

/* While busy, PUT /instance/state answers -EAGAIN (still initialising). */
void fake_set_busy(struct instance *inst, bool busy);

/* NMIs injected so far. */
unsigned fake_nmi_count(struct instance *inst);

/*
 * The fake UART: a FIFO of `cap` bytes (0..256; default 16) that a
 * background thread empties every 5 ms into a log of received keystrokes.
 */
void fake_set_fifo(struct instance *inst, size_t cap);

/* Takes up to max received keystroke bytes (oldest first). */
size_t fake_take_input(struct instance *inst, uint8_t *out, size_t max);

/* Guest output of n bytes, byte i of the stream being (offset % 251). */
void fake_fill(struct instance *inst, uint64_t n);

/* Queue size of later subscribers (0: SERIAL_SUB_QUEUE), to force lag. */
void fake_hub_set_sub_queue(struct serial_hub *h, size_t bytes);

/* Marks the hub closed: subscribers drain, then read -EPIPE. */
void fake_hub_close(struct serial_hub *h);

#endif
