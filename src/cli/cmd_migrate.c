/* SPDX-License-Identifier: MPL-2.0 */
/*
 * `cella migrate`: moves a running instance from one server to another.
 *
 * Sends the target a MigrationTarget ensure (the source's properties, a new
 * migration id, the --replace components), follows both servers'
 * migration-status until the migration finished or failed, and prints the
 * source's report (blackout and per-phase breakdown). With --start-target it
 * first starts an empty cella-server at the target address when nothing
 * answers there (spawn.c).
 */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/http.h"
#include "cli/spawn.h"
#include "spec/bodies.h"

enum {
    MIG_FROM,
    MIG_TO,
    MIG_REPLACE,
    MIG_DOWNTIME,
    MIG_TIMEOUT,
    MIG_START,
    MIG_TARGET_ARG,
    MIG_TARGET_LOG,
    MIG_BANDWIDTH,
    MIG_NO_AUTO_CONVERGE,
    MIG_AUTO_CONVERGE,
    MIG_DELTA_CACHE,
};
_Static_assert(MIG_DELTA_CACHE < CLI_MAX_OPTIONS, "cella migrate has too many options");

/* Longest wait for a server started by --start-target to answer. */
#define START_WAIT_S 10.0

#define REPLACE_FILE_MAX (1u << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* One exchange; CLI_OK with the JSON answer (or NULL), else a reported failure. */
static int call(const struct cli_server *srv, const char *method, const char *path,
                const char *body, long timeout_ms, json_t **out)
{
    struct cli_http_reply rep;
    char why[CLI_HTTP_WHY_MAX];
    if (out)
        *out = NULL;
    int r = cli_http(srv, method, path, body, timeout_ms, &rep, why, sizeof(why));
    if (r < 0)
        return cli_unreachable(srv->hostport, why);
    if (rep.status < 200 || rep.status > 299) {
        fprintf(stderr, "cella: %s %s on %s:\n", method, path, srv->hostport);
        r = cli_http_report(&rep);
        cli_http_reply_free(&rep);
        return r;
    }
    if (out && rep.len)
        *out = json_loadb(rep.body, rep.len, 0, NULL);
    cli_http_reply_free(&rep);
    return CLI_OK;
}

/* "KEY=FILE[,KEY=FILE...]" into obj {KEY: <ReplacementComponent from FILE>}. */
static int add_replacements(json_t *obj, const char *list)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        return CLI_INVALID;
    int rc = CLI_OK;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == CLI_OK;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok || !eq[1]) {
            cli_error("--replace wants KEY=FILE.json, not \"%s\"", tok);
            rc = CLI_USAGE;
            break;
        }
        *eq = '\0';
        char *text = NULL;
        size_t len = 0;
        int r = cli_read_input(eq + 1, REPLACE_FILE_MAX, &text, &len);
        if (r < 0) {
            cli_error("cannot read %s: %s", eq + 1, strerror(-r));
            rc = CLI_INVALID;
            break;
        }
        json_error_t je;
        json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
        free(text);
        if (!json_is_object(j)) {
            cli_error("%s: not a JSON ReplacementComponent object (%s)", eq + 1,
                      j ? "not an object" : je.text);
            json_decref(j);
            rc = CLI_INVALID;
            break;
        }
        json_object_set_new(obj, tok, j);
    }
    free(copy);
    return rc;
}

static const char *side_state(const json_t *status, const char *side)
{
    const json_t *m = json_object_get(status, side);
    return json_is_object(m) ? json_string_value(json_object_get(m, "state")) : NULL;
}

static bool ended(const char *s)
{
    return s && (strcmp(s, "Finish") == 0 || strcmp(s, "Error") == 0);
}

static void print_report(const json_t *rep)
{
    printf("outcome: %s\n", json_string_value(json_object_get(rep, "outcome")));
    printf("blackout: %.1f ms\n", json_real_value(json_object_get(rep, "blackout_ms")));
    printf("total: %.1f ms\n", json_real_value(json_object_get(rep, "total_ms")));
    printf("passes: %lld (%s)\n", (long long)json_integer_value(json_object_get(rep, "passes")),
           json_string_value(json_object_get(rep, "precopy_end")));
    json_int_t throttle = json_integer_value(json_object_get(rep, "throttle_pct"));
    if (throttle)
        printf("throttle: vCPUs slowed by %lld%% (%lld passes throttled)\n", (long long)throttle,
               (long long)json_integer_value(json_object_get(rep, "throttled_passes")));
    json_int_t delta = json_integer_value(json_object_get(rep, "delta_pages"));
    if (delta)
        printf("delta pages: %lld sent again as the bytes that changed (cache %lld MiB)\n",
               (long long)delta,
               (long long)(json_integer_value(json_object_get(rep, "delta_cache_bytes")) >> 20));
    const json_t *ph = json_object_get(rep, "phases");
    const char *name;
    const json_t *v;
    printf("%-14s %10s %14s %10s %8s\n", "phase", "ms", "bytes", "pages", "passes");
    json_object_foreach((json_t *)ph, name, v)
    {
        printf("%-14s %10.1f %14lld %10lld %8lld\n", name,
               json_real_value(json_object_get(v, "ms")),
               (long long)json_integer_value(json_object_get(v, "bytes")),
               (long long)json_integer_value(json_object_get(v, "pages")),
               (long long)json_integer_value(json_object_get(v, "passes")));
    }
    const char *err = json_string_value(json_object_get(rep, "error"));
    if (err && *err)
        printf("error: %s\n", err);
}

/* Follows both sides to the end and prints the source's report. */
static int follow(const struct cli_server *src, const struct cli_server *dst, const char *id,
                  double t0, double timeout)
{
    int rc = CLI_OK;
    const char *last_s = NULL, *last_t = NULL;
    char ls[32] = "", lt[32] = "";
    bool done = false;
    while (!done) {
        if (now_s() - t0 > timeout) {
            cli_error("the migration did not end within %.0f s", timeout);
            return CLI_INVALID;
        }
        json_t *ss = NULL, *ts = NULL;
        if (call(src, "GET", "/instance/migration-status", NULL, 10000, &ss) != CLI_OK ||
            call(dst, "GET", "/instance/migration-status", NULL, 10000, &ts) != CLI_OK) {
            json_decref(ss);
            json_decref(ts);
            return CLI_INVALID;
        }
        last_s = side_state(ss, "migration_out");
        last_t = side_state(ts, "migration_in");
        if ((last_s && strcmp(last_s, ls)) || (last_t && strcmp(last_t, lt))) {
            snprintf(ls, sizeof(ls), "%s", last_s ? last_s : "-");
            snprintf(lt, sizeof(lt), "%s", last_t ? last_t : "-");
            fprintf(stderr, "%7.2f s  source %-13s target %s\n", now_s() - t0, ls, lt);
        }
        done = ended(last_t) && (ended(last_s) || strcmp(lt, "Error") == 0);
        bool ok = last_t && strcmp(last_t, "Finish") == 0;
        json_decref(ss);
        json_decref(ts);
        if (!done)
            usleep(100000);
        else if (!ok)
            rc = CLI_INVALID;
    }
    /* The source files its report as the migration ends: wait for this one. */
    for (double until = now_s() + 10; now_s() < until; usleep(100000)) {
        struct cli_http_reply hr;
        char why[CLI_HTTP_WHY_MAX];
        int r =
            cli_http(src, "GET", "/instance/migration-report", NULL, 10000, &hr, why, sizeof(why));
        if (r < 0)
            break;
        json_t *rep = hr.status == 200 ? json_loadb(hr.body, hr.len, 0, NULL) : NULL;
        cli_http_reply_free(&hr);
        const char *rid = json_string_value(json_object_get(rep, "migration_id"));
        if (rid && strcmp(rid, id) == 0) {
            print_report(rep);
            json_decref(rep);
            break;
        }
        json_decref(rep);
    }
    if (rc != CLI_OK)
        cli_error("the migration failed; the instance runs on at %s", src->hostport);
    return rc;
}

/*
 * --start-target: uses a server that answers at dst, or starts an empty
 * cella-server there when nothing does (connection refused).
 */
static int prepare_target(const struct cli_args *a, const struct cli_server *dst, double timeout,
                          struct cli_spawned *spawned)
{
    struct cli_http_reply rep;
    char why[CLI_HTTP_WHY_MAX];
    int r = cli_http(dst, "GET", "/instance", NULL, 5000, &rep, why, sizeof(why));
    if (r == 0 || r == -E2BIG) {
        /* Already serving: it is the target, empty or not (the ensure says). */
        cli_http_reply_free(&rep);
        fprintf(stderr, "cella: a server answers at %s: migrating to it\n", dst->hostport);
        return CLI_OK;
    }
    if (r != -ECONNREFUSED)
        return cli_unreachable(dst->hostport, why);
    double wait_s = timeout < START_WAIT_S ? timeout : START_WAIT_S;
    return cli_spawn_server(dst, a->values[MIG_TARGET_ARG], a->count[MIG_TARGET_ARG],
                            a->value[MIG_TARGET_LOG], wait_s, spawned);
}

int cli_cmd_migrate(const struct cli_command *cmd, const struct cli_args *a)
{
    (void)cmd;
    struct cli_server src, dst;
    if (!a->set[MIG_FROM] || !a->set[MIG_TO]) {
        cli_error("give both --from ADDR:PORT and --to ADDR:PORT");
        return CLI_USAGE;
    }
    if (cli_server_parse(a->value[MIG_FROM], &src) < 0 ||
        cli_server_parse(a->value[MIG_TO], &dst) < 0) {
        cli_error("invalid server address (expected ADDR:PORT)");
        return CLI_USAGE;
    }
    double timeout = 600;
    if (a->set[MIG_TIMEOUT]) {
        char *end;
        timeout = strtod(a->value[MIG_TIMEOUT], &end);
        if (*end || !(timeout > 0 && timeout < 1e7)) {
            cli_error("--timeout \"%s\" is not a positive number of seconds",
                      a->value[MIG_TIMEOUT]);
            return CLI_USAGE;
        }
    }
    unsigned long downtime_ms = 0;
    if (a->set[MIG_DOWNTIME]) {
        char *end;
        downtime_ms = strtoul(a->value[MIG_DOWNTIME], &end, 10);
        if (*end || !a->value[MIG_DOWNTIME][0] || downtime_ms == 0 || downtime_ms > 600000) {
            cli_error("--downtime-ms \"%s\" is not 1..600000", a->value[MIG_DOWNTIME]);
            return CLI_USAGE;
        }
    }
    unsigned long bandwidth = 0;
    if (a->set[MIG_BANDWIDTH]) {
        char *end;
        bandwidth = strtoul(a->value[MIG_BANDWIDTH], &end, 10);
        if (*end || !a->value[MIG_BANDWIDTH][0] || a->value[MIG_BANDWIDTH][0] == '-' ||
            bandwidth > (1ul << 20)) {
            cli_error("--max-bandwidth \"%s\" is not 0..1048576 (MiB/s, 0: unlimited)",
                      a->value[MIG_BANDWIDTH]);
            return CLI_USAGE;
        }
    }
    unsigned long delta_cache = 0;
    if (a->set[MIG_DELTA_CACHE]) {
        char *end;
        delta_cache = strtoul(a->value[MIG_DELTA_CACHE], &end, 10);
        if (*end || !a->value[MIG_DELTA_CACHE][0] || a->value[MIG_DELTA_CACHE][0] == '-' ||
            delta_cache > 65536) {
            cli_error("--delta-cache-mib \"%s\" is not 0..65536 (MiB, 0: no delta pages)",
                      a->value[MIG_DELTA_CACHE]);
            return CLI_USAGE;
        }
    }
    if (a->set[MIG_AUTO_CONVERGE] && a->set[MIG_NO_AUTO_CONVERGE]) {
        cli_error("--auto-converge and --no-auto-converge contradict each other");
        return CLI_USAGE;
    }
    if (!a->set[MIG_START] && (a->set[MIG_TARGET_ARG] || a->set[MIG_TARGET_LOG])) {
        cli_error("--target-arg and --target-log go with --start-target");
        return CLI_USAGE;
    }
    if (a->set[MIG_START]) {
        int local = cli_local_address(dst.host);
        if (local < 0) {
            cli_error("--start-target: --to must be an IP address of this host (such as "
                      "127.0.0.1:PORT), not the name \"%s\"",
                      dst.host);
            return CLI_USAGE;
        }
        if (local == 0) {
            cli_error("--start-target starts the target server on this host, and %s is not "
                      "an address of this host",
                      dst.host);
            return CLI_USAGE;
        }
    }
    json_t *inst = NULL;
    int rc = call(&src, "GET", "/instance", NULL, 30000, &inst);
    if (rc != CLI_OK)
        return rc;
    json_t *props = json_object_get(json_object_get(inst, "instance"), "properties");
    if (!json_is_object(props)) {
        json_decref(inst);
        cli_error("the source's GET /instance has no properties");
        return CLI_INVALID;
    }
    char id[37];
    json_t *replace = json_object();
    if (cli_new_uuid(id) < 0 || !replace) {
        json_decref(inst);
        json_decref(replace);
        return CLI_INVALID;
    }
    for (int i = 0; rc == CLI_OK && i < a->argc; i++)
        rc = add_replacements(replace, a->argv[i]);
    if (rc == CLI_OK && a->set[MIG_REPLACE])
        rc = add_replacements(replace, a->value[MIG_REPLACE]);
    if (rc != CLI_OK) {
        json_decref(inst);
        json_decref(replace);
        return rc;
    }
    json_t *body = json_pack("{s:O,s:{s:s,s:{s:s,s:s,s:o}}}", "properties", props, "init", "method",
                             "MigrationTarget", "value", "migration_id", id, "src_addr",
                             src.hostport, "replace_components", replace);
    json_decref(inst);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text)
        return CLI_INVALID;
    struct cli_spawned spawned = {0};
    if (a->set[MIG_START] && (rc = prepare_target(a, &dst, timeout, &spawned)) != CLI_OK) {
        free(text);
        return rc;
    }
    if (a->set[MIG_DOWNTIME] || a->set[MIG_BANDWIDTH] || a->set[MIG_NO_AUTO_CONVERGE] ||
        a->set[MIG_AUTO_CONVERGE] || a->set[MIG_DELTA_CACHE]) {
        json_t *s = json_object();
        if (a->set[MIG_DOWNTIME])
            json_object_set_new(s, "downtime_ms", json_integer((json_int_t)downtime_ms));
        if (a->set[MIG_BANDWIDTH])
            json_object_set_new(s, "max_bandwidth_mibps", json_integer((json_int_t)bandwidth));
        if (a->set[MIG_NO_AUTO_CONVERGE] || a->set[MIG_AUTO_CONVERGE])
            json_object_set_new(s, "auto_converge", json_boolean(a->set[MIG_AUTO_CONVERGE]));
        if (a->set[MIG_DELTA_CACHE])
            json_object_set_new(s, "delta_cache_mib", json_integer((json_int_t)delta_cache));
        char *settings = s ? json_dumps(s, JSON_COMPACT) : NULL;
        json_decref(s);
        rc = settings ? call(&src, "PUT", "/instance/migration-settings", settings, 30000, NULL)
                      : CLI_INVALID;
        free(settings);
    }
    double t0 = 0;
    if (rc == CLI_OK) {
        fprintf(stderr, "migration %s: %s -> %s\n", id, src.hostport, dst.hostport);
        t0 = now_s();
        rc = call(&dst, "PUT", "/instance", text, (long)(timeout * 1000), NULL);
    }
    free(text);
    if (rc == CLI_OK)
        rc = follow(&src, &dst, id, t0, timeout);
    cli_spawned_report(&spawned, &dst, rc == CLI_OK);
    return rc;
}

const struct cli_option cli_migrate_options[] = {
    [MIG_FROM] = {"from", "ADDR:PORT", "The source server (its instance must be Running)"},
    [MIG_TO] = {"to", "ADDR:PORT", "The target server (it must have no instance)"},
    [MIG_REPLACE] = {"replace", "KEY=FILE[,...]",
                     "Replace backend KEY with the ReplacementComponent in FILE (JSON)"},
    [MIG_DOWNTIME] = {"downtime-ms", "N", "The source's downtime budget (default 300)"},
    [MIG_TIMEOUT] = {"timeout", "SECONDS", "Give up after SECONDS (default 600)"},
    [MIG_START] = {"start-target", NULL,
                   "Start an empty cella-server at --to (a local address) if none answers"},
    [MIG_TARGET_ARG] = {"target-arg", "ARG",
                        "With --start-target: pass ARG to cella-server (repeatable)"},
    [MIG_TARGET_LOG] = {"target-log", "FILE",
                        "With --start-target: append the server's output to FILE"},
    [MIG_BANDWIDTH] =
        {"max-bandwidth", "MIBPS",
         "Cap the source's live passes at MIBPS MiB/s (0: no cap; the source keeps it)"},
    [MIG_NO_AUTO_CONVERGE] = {"no-auto-converge", NULL,
                              "Never throttle the guest's vCPUs (the source keeps it)"},
    [MIG_AUTO_CONVERGE] = {"auto-converge", NULL,
                           "Throttle a guest that dirties memory too fast again (the default)"},
    [MIG_DELTA_CACHE] = {"delta-cache-mib", "MIB",
                         "Keep up to MIB MiB of sent pages to send rewritten pages as deltas "
                         "(0: never; default a quarter of guest RAM; the source keeps it)"},
    {0},
};
