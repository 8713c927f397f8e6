/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The migration source driver: runs one outgoing migration over a stream
 * whose websocket upgrade the API layer already answered
 * (`GET /instance/migrate/{id}/start`, mig_stream_server).
 *
 * Order (docs/migration.md): HELLO/HELLO_ACK (version), PREAMBLE/ACK
 * (spec, payload versions), iterative RAM pre-copy until the predicted
 * final pass fits the downtime budget (or max passes / the pre-copy time
 * limit say stop anyway), pause, final dirty pages, device payloads,
 * serial history, blob contents, then the finish handshake:
 *
 *   target READY -> source releases its backends -> RELEASED ->
 *   target opens its backends and resumes -> COMMIT (or ABORT)
 *
 * Outcomes:
 *   COMMITTED: the target runs the guest. The VM here is paused, its
 *     backends released; the caller destroys it (instance -> Destroyed)
 *     and tells serial clients where it went (result.target_addr).
 *   FAILED: the VM here was resumed (if it had been paused) with its
 *     backends re-acquired, and runs on; dirty tracking is off, so the
 *     next attempt starts with a full pass (no write can be lost). The
 *     reasons are in errs. `resumed` false means resuming failed too.
 *   UNKNOWN: the stream broke after RELEASED went out and before COMMIT
 *     or ABORT came back. The target may be running the guest, so this
 *     side must not: the VM stays paused with its backends released.
 *     The caller marks the instance Failed (an operator can ask the
 *     target). This window is one round trip long.
 *
 * The machine must be running when this is called. The stream is used,
 * not freed; another thread may mig_stream_shutdown() it to cancel
 * (which ends FAILED, or UNKNOWN inside the window).
 *
 * Threading: one thread (the instance worker); every hook runs on it.
 */
#ifndef CELLA_MIGRATE_SOURCE_H
#define CELLA_MIGRATE_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "migrate/ops.h"
#include "migrate/stream.h"

#define MIG_DOWNTIME_MS_DEFAULT 300
#define MIG_MAX_PASSES_DEFAULT  30
#define MIG_PRECOPY_MS_DEFAULT  120000
#define MIG_CLOSE_GRACE_MS      2000
/* Auto-converge: the first vCPU throttle, the step per pass, the ceiling (percent). */
/* High passes in a row before the first throttle. */
#define MIG_THROTTLE_HIGH_PASSES 1
#define MIG_THROTTLE_INITIAL     20
#define MIG_THROTTLE_STEP        10
#define MIG_THROTTLE_MAX         99
/* The default delta cache: a quarter of guest RAM, within these bounds (bytes). */
#define MIG_DELTA_CACHE_MIN (4ull << 20)
#define MIG_DELTA_CACHE_MAX (1ull << 30)

struct mig_source_config {
    uint32_t downtime_ms;      /* budget for the paused part; 0: 300 */
    uint32_t max_passes;       /* pre-copy passes before pausing anyway; 0: 30 */
    uint32_t precopy_ms;       /* pre-copy time before pausing anyway; 0: 120 s */
    uint32_t total_timeout_ms; /* give up if RELEASED is not reached by then; 0: never */
    int stall_ms;              /* peer silence that ends the migration; 0: 30 s */
    uint64_t max_bandwidth;    /* bytes per second for the live passes; 0: unlimited */
    bool no_auto_converge;     /* never throttle the vCPUs (auto-converge is on by default) */
    bool no_delta;             /* never send pages as deltas (on by default with version 3) */
    uint64_t delta_cache;      /* bytes of sent pages kept for deltas; 0: guest RAM / 4, capped */
    uint32_t peek_every;       /* pass 1 peeks at the dirty log every N data pages; 0: 2048 */
    bool fail_exports;         /* failure injector: device export fails */
};

/* One stretch of COM1 history: bytes [offset, offset+len) of `total` ever written. */
typedef int (*mig_serial_emit_fn)(void *ectx, uint64_t offset, const uint8_t *data, size_t len,
                                  uint64_t total);
/* One blob backend's whole contents. */
typedef int (*mig_blob_emit_fn)(void *ectx, const char *key, const uint8_t *data, size_t len);

struct mig_source_hooks {
    /* Calls emit for each kept stretch of history, oldest first (may be NULL). */
    int (*serial_history)(void *ctx, mig_serial_emit_fn emit, void *ectx);
    /* Calls emit for each blob backend (blk_blob_contents) (may be NULL). */
    int (*blobs)(void *ctx, mig_blob_emit_fn emit, void *ectx);
    /* Flush and close every backend (disks): after it, the target may open them. */
    int (*release_backends)(void *ctx, struct cella_errors *errs);
    /* Undo release_backends (the migration failed after it). */
    int (*reacquire_backends)(void *ctx, struct cella_errors *errs);
    /* The source entered a phase (may be NULL). */
    void (*phase)(void *ctx, enum mig_phase phase);
};

struct mig_source_params {
    const struct mig_vm_ops *vm_ops;
    void *vm;
    const struct mig_source_hooks *hooks;
    void *ctx;
    const char *spec_wire_json; /* the effective spec, spec_to_wire() text */
    size_t spec_len;
    struct mig_source_config cfg;
};

enum mig_outcome {
    MIG_OUTCOME_COMMITTED,
    MIG_OUTCOME_FAILED,
    MIG_OUTCOME_UNKNOWN,
};

struct mig_source_result {
    enum mig_outcome outcome;
    bool resumed;                       /* FAILED: the VM runs again here */
    char target_addr[MIG_MAX_ADDR + 1]; /* the target's advertised API address, or "" */
    struct mig_stats stats;
};

/*
 * Runs the migration to its end. 0 when COMMITTED; otherwise a negative
 * errno, res->outcome says FAILED or UNKNOWN, and errs holds the reasons
 * (the target's own reasons included, prefixed "target: ").
 */
int mig_source_run(struct mig_stream *s, const struct mig_source_params *p,
                   struct mig_source_result *res, struct cella_errors *errs);

/* "committed", "failed", "unknown". */
const char *mig_outcome_name(enum mig_outcome o);

#endif
