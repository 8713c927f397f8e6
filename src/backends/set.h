/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The storage backends of one instance, opened once from its spec and kept
 * across reboots (a reboot rebuilds the machine, but a blob disk keeps what
 * the guest wrote, an image keeps its lock and an NBD export its
 * connection). Network backends are not here: a tap carries no state, so
 * each machine opens its own.
 *
 * Threading: open/close from the owner's thread; lookups from any thread
 * while the set is open (the set never changes after open).
 */
#ifndef CELLA_BACKENDS_SET_H
#define CELLA_BACKENDS_SET_H

#include "backends/block.h"
#include "common/error.h"
#include "spec/spec.h"

struct backend_set;

/*
 * Opens every storage backend a device of `spec` refers to (unreferenced
 * ones are opened too: they may be referenced after a replacement). All
 * failures are recorded, each with its component's pointer. `event` (may
 * be NULL) receives every backend's connection events with its key.
 */
int backend_set_open(const struct instance_spec *spec,
                     void (*event)(void *ctx, const char *key, enum blk_event ev,
                                   const char *detail),
                     void *ctx, struct backend_set **out, struct cella_errors *errs);

/* The backend with component key `key`, or NULL. */
struct blk_backend *backend_set_blk(const struct backend_set *s, const char *key);

/* Drains and closes every backend. NULL is a no-op. */
void backend_set_close(struct backend_set *s);

#endif
