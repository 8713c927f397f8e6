/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The storage backends of one instance, opened once from its spec and kept
 * across reboots (a reboot rebuilds the machine, but a blob disk keeps what
 * the guest wrote, an image keeps its lock and an NBD export its
 * connection). Network backends are not here: a tap carries no state, so
 * each machine opens its own.
 *
 * Devices hold a stable proxy per backend (backend_set_blk); the real
 * backend behind it can be released and opened again while the machine is
 * paused and drained, which is what live migration needs:
 *  - a migration source releases its backends at the finish handshake
 *    (flushed and closed, so the target may open them) and re-acquires
 *    them if the migration fails afterwards;
 *  - a migration target builds its machine against a *deferred* set (each
 *    backend probed for its size and block size, not opened: the source
 *    still holds the images) and activates it right before the guest runs.
 * A request reaching a proxy with no backend behind it fails with -EIO
 * (it cannot happen while the machine is paused, which is the only time
 * the backend is absent).
 *
 * Threading: open/activate/release/close from the owner's thread while no
 * request is in flight; lookups and I/O from any thread.
 */
#ifndef CELLA_BACKENDS_SET_H
#define CELLA_BACKENDS_SET_H

#include <stddef.h>
#include <stdint.h>

#include "backends/block.h"
#include "common/error.h"
#include "spec/spec.h"

struct backend_set;

/* backend_set_open flags. */
#define BACKEND_SET_DEFER 1u /* probe only; backend_set_activate opens */

typedef void (*backend_event_fn)(void *ctx, const char *key, enum blk_event ev, const char *detail);

/*
 * Opens (or, with BACKEND_SET_DEFER, probes) every storage backend of
 * `spec`. All failures are recorded, each with its component's pointer.
 * `event` (may be NULL) receives every backend's connection events.
 */
int backend_set_open(const struct instance_spec *spec, unsigned flags, backend_event_fn event,
                     void *ctx, struct backend_set **out, struct cella_errors *errs);

/* The proxy for component key `key`, or NULL. Stable for the set's life. */
struct blk_backend *backend_set_blk(const struct backend_set *s, const char *key);

/*
 * Opens every backend that is not open (deferred or released). A backend
 * whose size, block size or read-only flag differs from what the devices
 * were built against is refused. Blob contents given with
 * backend_set_blob_contents (or saved by a release) are loaded. On failure
 * nothing stays opened by this call. 0 or -errno.
 */
int backend_set_activate(struct backend_set *s, struct cella_errors *errs);

/* Drains, flushes and closes every backend, keeping blob contents. */
void backend_set_release(struct backend_set *s);

/* Contents for blob backend `key`, loaded at activation (migration target). */
int backend_set_blob_contents(struct backend_set *s, const char *key, const uint8_t *data,
                              size_t len);

/* Calls emit for each open blob backend with its current contents. */
int backend_set_foreach_blob(struct backend_set *s,
                             int (*emit)(void *ectx, const char *key, const uint8_t *data,
                                         size_t len),
                             void *ectx);

/* Drains and closes every backend. NULL is a no-op. */
void backend_set_close(struct backend_set *s);

#endif
