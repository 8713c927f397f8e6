/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The instance state driver: the one place that changes the VM's
 * lifecycle. It owns at most one machine, the effective spec, the instance
 * properties, the generation counter and the serial hub.
 *
 * States (Propolis's): Creating (ensure accepted, VM built, vCPUs not yet
 * started) -> Starting -> Running -> Stopping -> Stopped -> Destroyed;
 * Rebooting (Running -> Rebooting -> Running); Failed (a vCPU, device or
 * backend failure). Every published change bumps the generation (starting
 * at 1); monitors wait for a generation.
 *
 * Threading: every function may be called from any thread (the HTTP
 * server's connection threads). Lifecycle work is serialised by an
 * internal worker thread and a request queue, so two requests never race;
 * requests that wait (state monitor) block only their own caller.
 */
#ifndef CELLA_INSTANCE_INSTANCE_H
#define CELLA_INSTANCE_INSTANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/error.h"
#include "instance/serial_hub.h"
#include "machine/machine.h"
#include "spec/bodies.h"

struct instance;

/* Host facts for every VM this server builds. Strings are copied. */
struct instance_host {
    struct machine_host boot;
    /* This server's API address ("ip:port"), told to serial clients of a
     * migration source so they can follow the VM; may be NULL. */
    const char *api_addr;
};

int instance_new(const struct instance_host *host, struct instance **out);
/* Stops and destroys any VM, then frees. */
void instance_free(struct instance *inst);

/*
 * PUT /instance. 0: created (201). -EEXIST: a VM exists or existed
 * (409 AlreadyInitialized). -EINVAL: invalid spec, every problem in errs
 * (400). -ENOTSUP: unsupported request, e.g. MigrationTarget before the
 * migration issue, or a kind or CPUID this host cannot provide (errs;
 * 501/400). -EIO: the VM could not be built (500, errs).
 * Error pointers are relative to the spec (/board/...), except those that
 * start with /init/, which are relative to the request.
 */
int instance_ensure(struct instance *inst, const struct ensure_request *req,
                    struct cella_errors *errs);

/* Snapshot of what GET /instance and the monitor report. */
/* One direction of a live migration, as migration-status reports it. */
struct instance_migration {
    bool present;
    char id[40];       /* the migration id (a UUID) */
    const char *state; /* MigrationState name: "Sync", "RamPush", ..., "Finish", "Error" */
};

struct instance_view {
    uint64_t gen;
    enum instance_state state;
    struct instance_properties properties; /* deep copy; free with instance_view_free */
    struct instance_migration migration_in, migration_out;
};
void instance_view_free(struct instance_view *v);

/* GET /instance. -ENOENT before any ensure (424 NoInstance). */
int instance_get(struct instance *inst, struct instance_view *out);

/* GET /instance/spec: the effective spec (CPUID filled in). -ENOENT as above. */
int instance_spec_get(struct instance *inst, struct spec_get_response *out);

enum instance_request { INSTANCE_REQ_RUN, INSTANCE_REQ_STOP, INSTANCE_REQ_REBOOT };

/*
 * PUT /instance/state. 0 accepted (204). -ENOENT no instance (424).
 * -EPERM not allowed in this state (403, reason in errs). -EAGAIN still
 * initialising (503).
 */
int instance_request_state(struct instance *inst, enum instance_request req,
                           struct cella_errors *errs);

/*
 * GET /instance/state-monitor: waits until the generation is >= gen or
 * timeout_ms passes (then returns the current view anyway with -ETIMEDOUT
 * so the caller may re-poll). -ENOENT no instance (424); -ESHUTDOWN when the
 * instance is destroyed and gen is beyond its last generation (410 Gone).
 */
int instance_wait(struct instance *inst, uint64_t gen, int timeout_ms, struct instance_view *out);

/* POST /instance/nmi. -ENOENT (424), -EAGAIN when not running (409?). */
int instance_nmi(struct instance *inst);

/* The COM1 hub (exists for the server's life; history survives reboots). */
struct serial_hub *instance_serial(struct instance *inst);

/* For tests and logs. */
const char *instance_request_name(enum instance_request r);

/*
 * Why request `req` is refused in state `s` (a sentence), or NULL when it
 * is allowed: Run in Creating/Starting/Running/Rebooting (a no-op once
 * running), Stop in every state but Destroyed, Reboot in Running and
 * Rebooting only. Pure; policy.c.
 */
const char *instance_refusal(enum instance_request req, enum instance_state s);

/*
 * GET /instance/migrate/{id}/start on a migration source: runs the source
 * side over `sock` (an upgraded websocket; `early` bytes already read)
 * and returns when the migration ended. Blocking: call it on the
 * connection's own thread. 0 when the VM moved (the instance is then
 * Destroyed), -EPERM when the instance is not Running (nothing was sent),
 * -ENOENT without an instance, -EBUSY when a migration runs, or the
 * migration's error (the VM runs on here).
 */
int instance_migrate_out(struct instance *inst, const char *migration_id, int sock,
                         const void *early, size_t early_len, struct cella_errors *errs);

/* Settings for the next outgoing migrations (cella extension); a field left unset keeps its value.
 */
struct instance_mig_settings {
    bool set_downtime, set_bandwidth, set_auto_converge, set_delta_cache;
    uint32_t downtime_ms;   /* the paused part's budget, 1..600000 */
    uint64_t max_bandwidth; /* bytes per second for the live passes; 0: unlimited */
    bool auto_converge;     /* throttle the vCPUs of a guest that dirties faster than the link */
    uint64_t delta_cache; /* bytes of sent pages kept to send pages again as deltas; 0: no deltas */
};

/* -ENOENT without an instance. */
int instance_set_migration_settings(struct instance *inst, const struct instance_mig_settings *s);

/*
 * The last outgoing migration's report (cella extension): blackout, per
 * phase time/bytes/pages/passes. -ENOENT if there was none. Caller frees
 * *json with free().
 */
int instance_migration_report(struct instance *inst, char **json);

#endif
