/* SPDX-License-Identifier: MPL-2.0 */
/*
 * What the migration drivers need from a VM, as a table of operations, and
 * the statistics both sides keep.
 *
 * The drivers (source.h, target.h) never call the machine directly: they
 * go through struct mig_vm_ops, so tests and the fuzzer run them over a
 * plain RAM buffer and fake payloads, without KVM. mig_machine_vm_ops
 * (machine_ops.c) is the real table over machine/machine_mig.h, with the
 * `vm` pointer being a `struct machine *`.
 *
 * Threading: every operation is called on the thread running the driver.
 */
#ifndef CELLA_MIGRATE_OPS_H
#define CELLA_MIGRATE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "machine/guest_mem.h"
#include "machine/machine_mig.h"
#include "migrate/proto.h"

struct mig_vm_ops {
    /* Guest RAM; page index = RAM offset / 4096, host address base + index * 4096. */
    struct guest_mem *(*guest_mem)(void *vm);

    /* Source side (machine_mig.h has the contracts). */
    size_t (*payload_kinds)(void *vm, struct mig_kind_version *out, size_t max);
    int (*pause)(void *vm);
    int (*dirty_start)(void *vm);
    int (*dirty_fetch)(void *vm, uint64_t *out);
    int (*dirty_clear)(void *vm, const uint64_t *bits);
    void (*dirty_stop)(void *vm);
    /* Pages written since their last clear, taking nothing (may be NULL). */
    int (*dirty_peek)(void *vm, uint64_t *out);
    /* Lets the vCPUs run only (100 - pct) % of the time; 0 ends it (may be NULL). */
    int (*throttle)(void *vm, unsigned pct);
    int (*save_state)(void *vm, const struct mig_kind_version *want, size_t nwant, mig_emit_fn emit,
                      void *ctx);

    /* Both: the source after a failure, the target to run the guest. */
    int (*resume)(void *vm);

    /* Target side. */
    int (*load_state)(void *vm, const char *kind, const char *id, uint32_t version,
                      const uint8_t *data, size_t len, struct cella_errors *errs);
    int (*load_finish)(void *vm, struct cella_errors *errs);
};

/* The real table: vm is a struct machine *. */
extern const struct mig_vm_ops mig_machine_vm_ops;

/* One phase's share of a migration (as seen by the side that keeps it). */
struct mig_phase_stats {
    uint64_t us;         /* time spent in the phase */
    uint64_t bytes;      /* protocol message bytes sent (source) or received (target) */
    uint64_t pages;      /* RAM pages moved, zero markers included */
    uint64_t zero_pages; /* of which zero markers */
    uint64_t messages;
    uint32_t passes; /* RAM passes that ended in this phase */
};

struct mig_stats {
    struct mig_phase_stats phase[MIG_PHASE_COUNT];
    uint32_t version;        /* protocol version spoken */
    uint64_t total_us;       /* from the first message to the end */
    uint64_t blackout_us;    /* source: from pause to COMMIT (or to resume after a failure) */
    uint32_t passes;         /* pre-copy passes, the final paused one included */
    bool converged;          /* pre-copy met the downtime budget */
    const char *precopy_end; /* "converged", "no dirty pages", "max passes", "time limit" */
    uint64_t bandwidth_bps;  /* last estimate (bytes per second on the wire) */
    uint64_t predicted_downtime_ms; /* for the final pass, when the source paused */
    uint64_t final_dirty_pages;     /* pages sent while paused */
    uint32_t throttle_pct;          /* vCPU throttle (auto-converge) when the source paused */
    uint32_t throttled_passes;      /* live passes run with the vCPUs throttled */
    uint64_t delta_pages;           /* pages sent again as deltas (version 3), unchanged ones too */
    uint64_t delta_cache_bytes;     /* the source's cache of sent pages (0: no deltas) */
    uint64_t deferred_pages; /* pass 1: pages left to pass 2, written again before their turn */
};

#endif
