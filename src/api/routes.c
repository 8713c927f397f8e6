/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The route table and the /instance handlers that carry JSON (ensure,
 * get, spec, state, state monitor, migration status, NMI, migrate start).
 * The serial console handlers are in serial.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "common/log.h"
#include "common/jsonptr.h"
#include "instance/instance.h"
#include "spec/bodies.h"
#include "spec/spec_json.h"

/* ---- PUT /instance ---- */

static void h_instance_put(struct api_req *r)
{
    json_t *j;
    if (api_body_json(r, false, &j) < 0)
        return;
    struct ensure_request req;
    struct cella_errors errs = {0};
    struct jptr root;
    jptr_root(&root);
    ensure_request_init(&req);
    int rc = ensure_request_from_json(j, &root, &req, &errs);
    json_decref(j);
    bool target = req.method == ENSURE_METHOD_MIGRATION_TARGET;
    /* instance_ensure reports spec problems relative to the spec (or, for
     * a migration target, to the init value); name them in the body. */
    const char *prefix = target ? "/init/value" : "/init/value/spec";
    if (rc < 0) {
        cella_errors_sort(&errs);
        api_reply_errors(r, MHD_HTTP_BAD_REQUEST, NULL, "invalid InstanceEnsureRequest", &errs,
                         NULL);
        goto out;
    }
    rc = instance_ensure(r->srv->inst, &req, &errs);
    cella_errors_sort(&errs);
    switch (rc) {
    case 0:
        log_set_instance_id(req.properties.id); /* every later log line names it */
        api_reply_json(r, MHD_HTTP_CREATED,
                       ensure_response_to_json(target ? req.migration_id : NULL));
        break;
    case -EEXIST:
        if (cella_errors_total(&errs))
            api_reply_errors(r, MHD_HTTP_CONFLICT, "AlreadyInitialized",
                             "this server already has an instance", &errs, NULL);
        else
            api_reply_error(r, MHD_HTTP_CONFLICT, "AlreadyInitialized",
                            "this server already has an instance");
        break;
    case -EINVAL:
        api_reply_errors(r, MHD_HTTP_BAD_REQUEST, NULL,
                         target ? "the migration cannot start" : "invalid instance spec", &errs,
                         target ? NULL : prefix);
        break;
    case -ENOTSUP:
        api_reply_errors(r, MHD_HTTP_BAD_REQUEST, NULL,
                         target ? "the source's VM cannot run on this host"
                                : "the spec asks for something this host cannot provide",
                         &errs, target ? NULL : prefix);
        break;
    default:
        api_reply_errors(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "CreateFailed",
                         "the instance could not be created", &errs, prefix);
        break;
    }
out:
    cella_errors_clear(&errs);
    ensure_request_free(&req);
}

/* ---- GET /instance ---- */

static void h_instance_get(struct api_req *r)
{
    struct instance_view v;
    memset(&v, 0, sizeof(v));
    int rc = instance_get(r->srv->inst, &v);
    if (rc < 0) {
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    json_t *props = instance_properties_to_json(&v.properties);
    json_t *body = props ? json_pack("{s:{s:o,s:s}}", "instance", "properties", props, "state",
                                     instance_state_name(v.state))
                         : NULL;
    instance_view_free(&v);
    api_reply_json(r, MHD_HTTP_OK, body);
}

/* ---- GET /instance/spec ---- */

static void h_spec_get(struct api_req *r)
{
    struct spec_get_response sr;
    spec_get_response_init(&sr);
    int rc = instance_spec_get(r->srv->inst, &sr);
    if (rc < 0) {
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    api_reply_json(r, MHD_HTTP_OK, spec_get_response_to_json(&sr, SPEC_ENC_API));
    spec_get_response_free(&sr);
}

/* ---- PUT /instance/state ---- */

static void h_state_put(struct api_req *r)
{
    static const char *const names[] = {"Run", "Stop", "Reboot"};
    static const enum instance_request reqs[] = {INSTANCE_REQ_RUN, INSTANCE_REQ_STOP,
                                                 INSTANCE_REQ_REBOOT};
    json_t *j;
    if (api_body_json(r, true, &j) < 0)
        return;
    int which = -1;
    for (int i = 0; json_is_string(j) && i < 3; i++) {
        if (strcmp(json_string_value(j), names[i]) == 0)
            which = i;
    }
    json_decref(j);
    if (which < 0) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "request body must be one of \"Run\", \"Stop\" or \"Reboot\" (a JSON "
                        "string)");
        return;
    }
    struct cella_errors errs = {0};
    int rc = instance_request_state(r->srv->inst, reqs[which], &errs);
    switch (rc) {
    case 0:
        api_reply_empty(r, MHD_HTTP_NO_CONTENT);
        break;
    case -ENOENT:
        api_reply_instance_error(r, rc, NULL);
        break;
    case -EPERM:
        api_reply_errors(r, MHD_HTTP_FORBIDDEN, NULL, "the requested state change is not allowed",
                         &errs, NULL);
        break;
    case -EAGAIN:
        api_reply_errors(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL,
                         "the instance is still initializing; retry", &errs, NULL);
        break;
    default:
        api_reply_instance_error(r, rc, &errs);
        break;
    }
    cella_errors_clear(&errs);
}

/* ---- GET /instance/state-monitor ---- */

/* One side of InstanceMigrateStatusResponse: null, or {id, state}. */
static json_t *migration_side(const struct instance_migration *m)
{
    if (!m->present)
        return json_null();
    return json_pack("{s:s,s:s}", "id", m->id, "state", m->state ? m->state : "Sync");
}

static json_t *migration_status_json(const struct instance_view *v)
{
    return json_pack("{s:o,s:o}", "migration_in", migration_side(&v->migration_in), "migration_out",
                     migration_side(&v->migration_out));
}

static void h_state_monitor(struct api_req *r)
{
    static const char *const fields[] = {"gen"};
    json_t *j;
    if (api_body_json(r, false, &j) < 0)
        return;
    struct cella_errors errs = {0};
    struct jptr root;
    jptr_root(&root);
    uint64_t gen = 0;
    int rc = cella_json_check_fields(j, fields, 1, &root, &errs);
    if (cella_json_get_uint(j, "gen", UINT64_MAX, true, &root, &gen, &errs) < 0)
        rc = -EINVAL;
    json_decref(j);
    if (rc < 0) {
        api_reply_errors(r, MHD_HTTP_BAD_REQUEST, NULL, "invalid InstanceStateMonitorRequest",
                         &errs, NULL);
        cella_errors_clear(&errs);
        return;
    }
    /*
     * Wait in bounded slices so that a client that went away, or a server
     * that is stopping, frees this thread within one slice.
     */
    for (;;) {
        struct instance_view v;
        memset(&v, 0, sizeof(v));
        rc = instance_wait(r->srv->inst, gen, API_MONITOR_SLICE_MS, &v);
        if (rc == 0) {
            json_t *body =
                json_pack("{s:I,s:s,s:o}", "gen", (json_int_t)v.gen, "state",
                          instance_state_name(v.state), "migration", migration_status_json(&v));
            instance_view_free(&v);
            api_reply_json(r, MHD_HTTP_OK, body);
            return;
        }
        instance_view_free(&v);
        if (rc == -ESHUTDOWN) {
            api_reply_error(r, MHD_HTTP_GONE, NULL,
                            "the instance is gone; generation %llu will never be reached",
                            (unsigned long long)gen);
            return;
        }
        if (rc != -ETIMEDOUT) {
            api_reply_instance_error(r, rc, NULL);
            return;
        }
        if (atomic_load(&r->srv->stopping)) {
            api_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, "the server is shutting down");
            return;
        }
        if (api_client_gone(r)) {
            r->abort = true;
            return;
        }
    }
}

/* ---- GET /instance/migration-status ---- */

static void h_migration_status(struct api_req *r)
{
    struct instance_view v;
    memset(&v, 0, sizeof(v));
    int rc = instance_get(r->srv->inst, &v);
    if (rc < 0) {
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    json_t *body = migration_status_json(&v);
    instance_view_free(&v);
    api_reply_json(r, MHD_HTTP_OK, body);
}

/* ---- GET /instance/migration-report (cella) ---- */

static void h_migration_report(struct api_req *r)
{
    char *text = NULL;
    int rc = instance_migration_report(r->srv->inst, &text);
    if (rc == -ENOENT) {
        struct instance_view v;
        memset(&v, 0, sizeof(v));
        if (instance_get(r->srv->inst, &v) == -ENOENT) {
            api_reply_instance_error(r, -ENOENT, NULL);
        } else {
            instance_view_free(&v);
            api_reply_error(r, MHD_HTTP_NOT_FOUND, NULL,
                            "no outgoing migration has run on this server");
        }
        return;
    }
    json_error_t je;
    json_t *j = text ? json_loads(text, 0, &je) : NULL;
    free(text);
    if (!j) {
        api_reply_instance_error(r, rc < 0 ? rc : -ENOMEM, NULL);
        return;
    }
    api_reply_json(r, MHD_HTTP_OK, j);
}

/* ---- POST /instance/nmi ---- */

static void h_nmi(struct api_req *r)
{
    int rc = instance_nmi(r->srv->inst);
    if (rc == 0)
        api_reply_json(r, MHD_HTTP_OK, json_null());
    else if (rc == -EAGAIN)
        api_reply_error(r, MHD_HTTP_CONFLICT, NULL, "the instance is not running");
    else
        api_reply_instance_error(r, rc, NULL);
}

/* ---- GET /instance/migrate/{migration_id}/start ---- */

/* ---- PUT /instance/migration-settings (cella) ---- */

static void h_migration_settings(struct api_req *r)
{
    static const char *const fields[] = {"downtime_ms", "max_bandwidth_mibps", "auto_converge",
                                         "delta_cache_mib"};
    json_t *j;
    if (api_body_json(r, false, &j) < 0)
        return;
    struct cella_errors errs = {0};
    struct jptr root;
    jptr_root(&root);
    struct instance_mig_settings s = {0};
    uint64_t ms = 0, mibps = 0, cache_mib = 0;
    int rc = cella_json_check_fields(j, fields, 4, &root, &errs);
    s.set_downtime = json_is_object(j) && json_object_get(j, "downtime_ms");
    s.set_bandwidth = json_is_object(j) && json_object_get(j, "max_bandwidth_mibps");
    s.set_auto_converge = json_is_object(j) && json_object_get(j, "auto_converge");
    s.set_delta_cache = json_is_object(j) && json_object_get(j, "delta_cache_mib");
    /* Every field is checked, so one answer names every problem. */
    if (cella_json_get_uint(j, "downtime_ms", 600000, false, &root, &ms, &errs) < 0)
        rc = -EINVAL;
    else if (s.set_downtime && ms == 0)
        rc = cella_err(&errs, -EINVAL, "/downtime_ms", "must be 1 or more");
    if (cella_json_get_uint(j, "max_bandwidth_mibps", 1u << 20, false, &root, &mibps, &errs) < 0)
        rc = -EINVAL;
    if (cella_json_get_bool(j, "auto_converge", false, &root, &s.auto_converge, &errs) < 0)
        rc = -EINVAL;
    if (cella_json_get_uint(j, "delta_cache_mib", 65536, false, &root, &cache_mib, &errs) < 0)
        rc = -EINVAL;
    if (!(s.set_downtime || s.set_bandwidth || s.set_auto_converge || s.set_delta_cache))
        rc = -EINVAL;
    json_decref(j);
    if (rc < 0) {
        api_reply_errors(r, MHD_HTTP_BAD_REQUEST, NULL,
                         "expected one or more of {\"downtime_ms\": 1..600000, "
                         "\"max_bandwidth_mibps\": 0..1048576 (0: unlimited), "
                         "\"auto_converge\": true|false, "
                         "\"delta_cache_mib\": 0..65536 (0: no delta pages)}",
                         &errs, NULL);
        cella_errors_clear(&errs);
        return;
    }
    s.downtime_ms = (uint32_t)ms;
    s.max_bandwidth = mibps << 20;
    s.delta_cache = cache_mib << 20;
    rc = instance_set_migration_settings(r->srv->inst, &s);
    if (rc < 0)
        api_reply_instance_error(r, rc, NULL);
    else
        api_reply_empty(r, MHD_HTTP_NO_CONTENT);
}

/* The source side runs on the upgraded connection's own thread. */
static void migrate_session(struct api_req *r, const char *extra_in, size_t extra_len, int sock)
{
    struct cella_errors errs = {0};
    int rc = instance_migrate_out(r->srv->inst, r->arg, sock, extra_in, extra_len, &errs);
    if (rc < 0)
        log_msg(LOG_WARN, "migrate", "outgoing migration %s ended without moving the VM: %s",
                r->arg, errs.count ? errs.items[0].message : strerror(-rc));
    cella_errors_clear(&errs);
}

static void h_migrate_start(struct api_req *r)
{
    if (!cella_uuid_valid(r->arg)) {
        api_reply_error(r, MHD_HTTP_BAD_REQUEST, NULL,
                        "path parameter migration_id \"%s\" is not a UUID", r->arg);
        return;
    }
    struct instance_view v;
    memset(&v, 0, sizeof(v));
    int rc = instance_get(r->srv->inst, &v);
    if (rc < 0) {
        api_reply_instance_error(r, rc, NULL);
        return;
    }
    enum instance_state s = v.state;
    bool busy = v.migration_out.present && v.migration_out.state &&
                strcmp(v.migration_out.state, "Finish") != 0 &&
                strcmp(v.migration_out.state, "Error") != 0;
    instance_view_free(&v);
    if (s != INSTANCE_RUNNING || busy) {
        api_reply_error(r, MHD_HTTP_CONFLICT, NULL, "this instance cannot migrate now (state %s%s)",
                        instance_state_name(s), busy ? ", a migration is running" : "");
        return;
    }
    if (!api_ws_handshake_ok(r))
        return;
    r->ws_run = migrate_session;
    api_ws_upgrade(r);
}

/* ---- the table ---- */

#define JSON_BODY   API_BODY_JSON
#define NO_BODY     API_BODY_NONE
#define MIGRATE_PFX "/instance/migrate/"
#define MIGRATE_SFX "/start"

static const struct api_route routes[] = {
    {"/instance",
     "GET, PUT",
     {{"GET", h_instance_get, NO_BODY, false}, {"PUT", h_instance_put, JSON_BODY, true}}},
    {"/instance/spec", "GET", {{"GET", h_spec_get, NO_BODY, false}}},
    {"/instance/state", "PUT", {{"PUT", h_state_put, JSON_BODY, false}}},
    {"/instance/state-monitor", "GET", {{"GET", h_state_monitor, JSON_BODY, false}}},
    {"/instance/migration-status", "GET", {{"GET", h_migration_status, NO_BODY, false}}},
    {"/instance/migration-report", "GET", {{"GET", h_migration_report, NO_BODY, false}}},
    {"/instance/migration-settings", "PUT", {{"PUT", h_migration_settings, JSON_BODY, false}}},
    {"/instance/nmi", "POST", {{"POST", h_nmi, NO_BODY, false}}},
    {"/instance/serial/history", "GET", {{"GET", api_h_serial_history, NO_BODY, false}}},
    {"/instance/serial", "GET", {{"GET", api_h_serial_ws, NO_BODY, false}}},
    {MIGRATE_PFX "{migration_id}" MIGRATE_SFX, "GET", {{"GET", h_migrate_start, NO_BODY, false}}},
};

const struct api_route *api_route_match(struct api_req *r, const char *path)
{
    size_t n = sizeof(routes) / sizeof(routes[0]);
    for (size_t i = 0; i + 1 < n; i++) {
        if (strcmp(path, routes[i].path) == 0)
            return &routes[i];
    }
    /* /instance/migrate/{migration_id}/start: one non-empty segment. */
    size_t len = strlen(path), pl = strlen(MIGRATE_PFX), sl = strlen(MIGRATE_SFX);
    if (len <= pl + sl || strncmp(path, MIGRATE_PFX, pl) != 0 ||
        strcmp(path + len - sl, MIGRATE_SFX) != 0)
        return NULL;
    size_t idlen = len - pl - sl;
    if (memchr(path + pl, '/', idlen))
        return NULL;
    if (idlen >= sizeof(r->arg))
        idlen = sizeof(r->arg) - 1; /* too long for a UUID anyway: 400 */
    memcpy(r->arg, path + pl, idlen);
    r->arg[idlen] = '\0';
    return &routes[n - 1];
}
