/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The migration target driver, in two stages (docs/migration.md).
 *
 * Stage 1, mig_target_start (inside the `PUT /instance` MigrationTarget
 * request): connects to the source's `GET /instance/migrate/{id}/start`,
 * offers protocol versions, reads the preamble, negotiates a version for
 * every payload kind (hooks->payload_accepts), and calls hooks->prepare
 * with the source's spec wire JSON; prepare decodes it, applies
 * replace_components, proves with the guest-visible diff that nothing
 * the guest sees changed, checks the host can run it and builds the
 * machine, not started and with no backend opened. Every reason either
 * step found goes back to the source (PREAMBLE_ACK) and into errs; then
 * nothing was built and the ensure answers with them all. On success the
 * ensure answers 201.
 *
 * Stage 2, mig_target_run (on the instance worker thread): receives RAM
 * into guest memory, device payloads (vm_ops->load_state), serial
 * history and blob contents, then the finish handshake: READY, and on the
 * source's RELEASED it opens the backends (hooks->open_backends) and
 * resumes the machine, then sends COMMIT. A target that got RELEASED and
 * opened its backends and resumed runs the guest even if COMMIT cannot be
 * delivered (the source then stays paused: see source.h, UNKNOWN).
 * Anything else that goes wrong sends ERROR (or ABORT after RELEASED),
 * never runs the guest, and returns the reasons; the caller destroys the
 * machine and the instance ends Failed.
 *
 * Everything from the source is untrusted: page ranges are checked
 * against guest RAM, each page must have arrived before device state,
 * payloads must be of a negotiated (kind, version), history offsets must
 * ascend, blobs arrive whole and in order, and phases go forward one by
 * one.
 *
 * Threading: stage 1 on one thread, stage 2 on one (maybe another)
 * thread, never both at once; hooks run on the calling thread.
 */
#ifndef CELLA_MIGRATE_TARGET_H
#define CELLA_MIGRATE_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "migrate/ops.h"
#include "migrate/stream.h"

#define MIG_CONNECT_MS_DEFAULT 10000

struct mig_target_config {
    int connect_timeout_ms;    /* 0: 10 s */
    int stall_ms;              /* peer silence that ends the migration; 0: 30 s */
    uint32_t total_timeout_ms; /* stage 2 must reach RELEASED by then; 0: never */
    uint32_t max_version;      /* newest protocol version to offer; 0: this build's newest */
};

/* What prepare built. */
struct mig_target_vm {
    const struct mig_vm_ops *ops;
    void *vm;
    bool fail_imports; /* failure injector: importing device state fails */
};

struct mig_target_hooks {
    /*
     * Whether this build loads `offered` of kind (machine_payload_accepts
     * semantics: 0 and the version to use <= offered, or -ENOTSUP).
     */
    int (*payload_accepts)(void *ctx, const char *kind, uint32_t offered, uint32_t *accept);
    /*
     * The source's spec (wire form, not NUL-terminated). Decode, replace,
     * diff, host-check, and, unless check_only, build the machine (not
     * started, backends not opened) into *out. Appends every problem to
     * errs (with JSON pointers) and returns < 0 if there is any. Called
     * once; check_only is true when payload negotiation already failed
     * (then nothing is to be built).
     */
    int (*prepare)(void *ctx, const char *spec_json, size_t len, bool check_only,
                   struct mig_target_vm *out, struct cella_errors *errs);
    /* A stretch of COM1 history, offsets ascending (may be NULL: dropped). */
    int (*serial_history)(void *ctx, uint64_t offset, const uint8_t *data, size_t len,
                          uint64_t total, struct cella_errors *errs);
    /* A blob backend's whole contents, for when the backend opens (may be NULL). */
    int (*blob)(void *ctx, const char *key, const uint8_t *data, size_t len,
                struct cella_errors *errs);
    /* Open every backend of the built machine: the guest runs next. */
    int (*open_backends)(void *ctx, struct cella_errors *errs);
    /* The migration entered a phase (may be NULL). */
    void (*phase)(void *ctx, enum mig_phase phase);
};

struct mig_target_params {
    const char *src_addr;       /* "host:port" of the source's API */
    const char *migration_id;   /* a UUID (the URL's {id}) */
    const char *advertise_addr; /* this server's API "ip:port" for serial clients; may be NULL */
    /* If set, used instead of connecting (ownership taken, even on failure). */
    struct mig_stream *stream;
    const struct mig_target_hooks *hooks;
    void *ctx;
    struct mig_target_config cfg;
};

struct mig_target;

/*
 * Stage 1. 0 and *out, or -errno with every reason in errs (*out NULL).
 * If it fails after prepare built a machine (prepare returned 0 with
 * check_only false, and then the built RAM size did not match the
 * source's or the ack could not be sent), the caller destroys what
 * prepare built; the guest never ran and no backend was opened.
 */
int mig_target_start(const struct mig_target_params *p, struct mig_target **out,
                     struct cella_errors *errs);

/*
 * Stage 2. 0: the guest runs on the machine prepare built. -errno: it
 * never ran; errs says why (the source's own reasons prefixed "source: ").
 */
int mig_target_run(struct mig_target *t, struct cella_errors *errs);

/* Statistics (bytes/pages/messages per phase, as received). */
const struct mig_stats *mig_target_stats(const struct mig_target *t);

/* The stream, e.g. for mig_stream_shutdown() from another thread. */
struct mig_stream *mig_target_stream(struct mig_target *t);

/* The protocol version agreed. */
uint32_t mig_target_version(const struct mig_target *t);

/* Closes the stream and frees; accepts NULL. Never touches the machine. */
void mig_target_free(struct mig_target *t);

#endif
