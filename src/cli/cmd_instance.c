/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The commands that drive a Propolis v5 server, propolis-cli style: new,
 * get, state, monitor, nmi, `spec get` (this file) and serial
 * (cmd_serial.c).
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/http.h"
#include "config/config.h"
#include "spec/bodies.h"
#include "spec/spec_json.h"

#define NIL_UUID "00000000-0000-0000-0000-000000000000"

/* The exit statuses of a command that talks to a server. */
#define SERVER_STATUS                                                                              \
    "\nExit status: 0 success, 1 invalid input or the server said no, 2 usage\n"                   \
    "error, 3 the server cannot be reached.\n"

/* Prints j (sorted keys; pretty unless compact) and a newline to stdout. */
static int print_json(const json_t *j, bool compact)
{
    char *text = json_dumps(j, JSON_SORT_KEYS | (compact ? JSON_COMPACT : JSON_INDENT(2)));
    if (!text) {
        cli_error("out of memory");
        return CLI_INVALID;
    }
    printf("%s\n", text);
    free(text);
    return CLI_OK;
}

/* Reports an answer the codecs refused; returns CLI_INVALID. */
static int bad_answer(const char *what, struct cella_errors *errs)
{
    cli_error("the server's answer is not a valid %s:", what);
    cella_errors_sort(errs);
    cli_print_errors(stderr, "answer", errs);
    cella_errors_clear(errs);
    return CLI_INVALID;
}

/* Prints "label: value" with the value stripped of control characters. */
static void print_field(const char *label, const char *value)
{
    printf("%-14s ", label);
    cli_print_sanitized(stdout, value ? value : "", value ? strlen(value) : 0, 0);
    putchar('\n');
}

/* ---- new ---- */

enum { NEW_SPEC, NEW_CONFIG, NEW_ID, NEW_DESCRIPTION };

int cli_new_uuid(char out[37])
{
    uint8_t b[16];
    size_t done = 0;
    while (done < sizeof(b)) {
        ssize_t n = getrandom(b + done, sizeof(b) - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        done += (size_t)n;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return 0;
}

/* The spec of `cella new`, from --spec JSON or --config TOML. */
static int load_new_spec(const struct cli_args *a, struct instance_spec *out)
{
    struct cella_errors errs = {0};
    const char *path = a->set[NEW_SPEC] ? a->value[NEW_SPEC] : a->value[NEW_CONFIG];
    const char *shown = strcmp(path, "-") ? path : "<stdin>";
    spec_init(out);
    if (a->set[NEW_CONFIG]) {
        struct config_result res;
        int r = config_convert_file(path, NULL, &res, &errs);
        if (r < 0) {
            cli_print_errors(stderr, shown, &errs);
            cella_errors_clear(&errs);
            config_result_free(&res);
            return CLI_INVALID;
        }
        *out = res.spec; /* moved out of res */
        spec_init(&res.spec);
        config_result_free(&res);
        return CLI_OK;
    }
    char *text;
    size_t len;
    int r = cli_read_input(path, SPEC_MAX_JSON_TEXT, &text, &len);
    if (r < 0) {
        if (r == -EFBIG)
            cli_error("%s is larger than the %u byte limit of a spec", shown, SPEC_MAX_JSON_TEXT);
        else
            cli_error("cannot read %s: %s", shown, strerror(-r));
        return CLI_INVALID;
    }
    r = spec_parse(text, len, out, &errs);
    free(text);
    if (r < 0) {
        cli_print_errors(stderr, shown, &errs);
        cella_errors_clear(&errs);
        return CLI_INVALID;
    }
    return CLI_OK;
}

static int cmd_new(const struct cli_command *cmd, const struct cli_args *a)
{
    const char *name = a->argv[0];
    if (a->set[NEW_SPEC] == a->set[NEW_CONFIG]) {
        cli_error("give exactly one of --spec FILE.json and --config FILE.toml");
        return CLI_USAGE;
    }
    if (!name[0] || strlen(name) > SPEC_MAX_STRING) {
        cli_error("NAME must have 1 to %u characters", SPEC_MAX_STRING);
        return CLI_USAGE;
    }
    char id[37];
    if (a->set[NEW_ID]) {
        if (!cella_uuid_valid(a->value[NEW_ID])) {
            cli_error("--id \"%s\" is not a UUID (8-4-4-4-12 hex digits)", a->value[NEW_ID]);
            return CLI_USAGE;
        }
        snprintf(id, sizeof(id), "%s", a->value[NEW_ID]);
    } else if (cli_new_uuid(id) < 0) {
        cli_error("cannot generate an instance id: %s", strerror(errno));
        return CLI_INVALID;
    }
    const char *desc = a->set[NEW_DESCRIPTION] ? a->value[NEW_DESCRIPTION] : "created by cella new";
    if (strlen(desc) > SPEC_MAX_STRING) {
        cli_error("--description is longer than %u characters", SPEC_MAX_STRING);
        return CLI_USAGE;
    }

    struct ensure_request req;
    ensure_request_init(&req);
    int r = load_new_spec(a, &req.spec);
    if (r != CLI_OK) {
        ensure_request_free(&req);
        return r;
    }
    /*
     * Propolis's properties carry a control plane's bookkeeping; a person
     * at a shell has none, so the IDs are the nil UUID and the sled
     * strings say "cella" (propolis-cli does the same with its own name).
     */
    struct instance_properties *p = &req.properties;
    struct instance_metadata *m = &p->metadata;
    p->id = strdup(id);
    p->name = strdup(name);
    p->description = strdup(desc);
    m->project_id = strdup(NIL_UUID);
    m->silo_id = strdup(NIL_UUID);
    m->sled_id = strdup(NIL_UUID);
    m->sled_model = strdup("cella");
    m->sled_serial = strdup("cella");
    m->sled_revision = 0;
    req.method = ENSURE_METHOD_SPEC;
    char *body = NULL;
    if (p->id && p->name && p->description && m->project_id && m->silo_id && m->sled_id &&
        m->sled_model && m->sled_serial)
        body = ensure_request_dump(&req, SPEC_ENC_API);
    ensure_request_free(&req);
    if (!body) {
        cli_error("out of memory");
        return CLI_INVALID;
    }
    json_t *ans;
    r = cli_call(a, "PUT", "/instance", body, &ans);
    free(body);
    if (r != CLI_OK)
        return r;
    fprintf(stderr, "cella: instance \"%s\" has id %s\n", name, id);
    if (ans)
        r = print_json(ans, false);
    json_decref(ans);
    return r;
}

/* ---- get ---- */

enum { GET_JSON };

static int cmd_get(const struct cli_command *cmd, const struct cli_args *a)
{
    json_t *ans;
    int r = cli_call(a, "GET", "/instance", NULL, &ans);
    if (r != CLI_OK)
        return r;
    if (a->set[GET_JSON]) {
        r = ans ? print_json(ans, false) : CLI_OK;
        json_decref(ans);
        return r;
    }
    struct cella_errors errs = {0};
    struct jptr root, at, pp;
    jptr_root(&root);
    jptr_key(&at, &root, "instance");
    jptr_key(&pp, &at, "properties");
    json_t *inst = json_object_get(ans, "instance");
    const char *state = json_string_value(json_object_get(inst, "state"));
    enum instance_state st = INSTANCE_CREATING;
    struct instance_properties props;
    memset(&props, 0, sizeof(props));
    if (!json_is_object(inst))
        cella_err(&errs, -EINVAL, "/instance", "missing object \"instance\"");
    else if (!state || instance_state_from_name(state, &st) < 0)
        cella_err(&errs, -EINVAL, "/instance/state", "not an instance state");
    if (inst)
        instance_properties_from_json(json_object_get(inst, "properties"), &pp, &props, &errs);
    json_decref(ans);
    if (cella_errors_total(&errs)) {
        instance_properties_free(&props);
        return bad_answer("InstanceGetResponse", &errs);
    }
    char rev[16];
    snprintf(rev, sizeof(rev), "%u", (unsigned)props.metadata.sled_revision);
    print_field("state:", instance_state_name(st));
    print_field("id:", props.id);
    print_field("name:", props.name);
    print_field("description:", props.description);
    print_field("project_id:", props.metadata.project_id);
    print_field("silo_id:", props.metadata.silo_id);
    print_field("sled_id:", props.metadata.sled_id);
    print_field("sled_model:", props.metadata.sled_model);
    print_field("sled_serial:", props.metadata.sled_serial);
    print_field("sled_revision:", rev);
    instance_properties_free(&props);
    return CLI_OK;
}

/* ---- spec get ---- */

enum { SPEC_GET_COMPACT };

static int cmd_spec_get(const struct cli_command *cmd, const struct cli_args *a)
{
    json_t *ans;
    int r = cli_call(a, "GET", "/instance/spec", NULL, &ans);
    if (r != CLI_OK)
        return r;
    struct cella_errors errs = {0};
    struct spec_get_response resp;
    struct jptr root;
    jptr_root(&root);
    r = spec_get_response_from_json(ans, &root, &resp, &errs);
    json_decref(ans);
    if (r < 0)
        return bad_answer("InstanceSpecGetResponse", &errs);
    if (resp.status != SPEC_STATUS_PRESENT) {
        cli_error("the instance (%s) is waiting for its migration source and has no spec yet",
                  instance_state_name(resp.state));
        spec_get_response_free(&resp);
        return CLI_INVALID;
    }
    json_t *j = spec_to_json(&resp.spec, SPEC_ENC_API);
    spec_get_response_free(&resp);
    if (!j) {
        cli_error("out of memory");
        return CLI_INVALID;
    }
    r = print_json(j, a->set[SPEC_GET_COMPACT]);
    json_decref(j);
    return r;
}

/* ---- state ---- */

static int cmd_state(const struct cli_command *cmd, const struct cli_args *a)
{
    static const char *const names[] = {"Run", "Stop", "Reboot"};
    const char *want = NULL;
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(a->argv[0], names[i]) == 0)
            want = names[i];
    }
    if (!want) {
        cli_error("unknown state \"%s\": expected run, stop or reboot", a->argv[0]);
        return CLI_USAGE;
    }
    char body[16];
    snprintf(body, sizeof(body), "\"%s\"", want);
    return cli_call(a, "PUT", "/instance/state", body, NULL);
}

/* ---- nmi ---- */

static int cmd_nmi(const struct cli_command *cmd, const struct cli_args *a)
{
    return cli_call(a, "POST", "/instance/nmi", NULL, NULL);
}

/* ---- monitor ---- */

enum { MON_GEN, MON_UNTIL, MON_TIMEOUT };

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Parses a whole decimal number with no sign; -EINVAL otherwise. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

static int state_by_name_ci(const char *s, enum instance_state *out)
{
    for (int i = 0; i < INSTANCE_STATE__COUNT; i++) {
        if (strcasecmp(s, instance_state_name((enum instance_state)i)) == 0) {
            *out = (enum instance_state)i;
            return 0;
        }
    }
    return -ENOENT;
}

static int cmd_monitor(const struct cli_command *cmd, const struct cli_args *a)
{
    uint64_t gen = 0;
    if (a->set[MON_GEN] && parse_u64(a->value[MON_GEN], &gen) < 0) {
        cli_error("--gen \"%s\" is not a generation number", a->value[MON_GEN]);
        return CLI_USAGE;
    }
    bool until_set = a->set[MON_UNTIL];
    enum instance_state until = INSTANCE_DESTROYED;
    if (until_set && state_by_name_ci(a->value[MON_UNTIL], &until) < 0) {
        cli_error("--until \"%s\" is not an instance state (Creating, Starting, Running, "
                  "Stopping, Stopped, Rebooting, Migrating, Repairing, Failed, Destroyed)",
                  a->value[MON_UNTIL]);
        return CLI_USAGE;
    }
    double deadline = 0;
    if (a->set[MON_TIMEOUT]) {
        char *end;
        double t = strtod(a->value[MON_TIMEOUT], &end);
        if (*end || !(t > 0 && t < 1e7)) {
            cli_error("--timeout \"%s\" is not a positive number of seconds",
                      a->value[MON_TIMEOUT]);
            return CLI_USAGE;
        }
        deadline = now_s() + t;
    }
    struct cli_server srv;
    if (cli_server_parse(a->server, &srv) < 0) {
        cli_error("invalid server address \"%s\" (expected ADDR:PORT)", a->server);
        return CLI_USAGE;
    }
    const char *until_name = instance_state_name(until);
    bool printed = false;
    uint64_t last = 0;
    for (;;) {
        long left_ms = 0;
        if (deadline) {
            double left = deadline - now_s();
            if (left <= 0.001)
                goto timed_out;
            left_ms = (long)(left * 1000) + 1;
        }
        char body[48];
        snprintf(body, sizeof(body), "{\"gen\":%llu}", (unsigned long long)gen);
        struct cli_http_reply rep;
        char why[CLI_HTTP_WHY_MAX];
        int r =
            cli_http(&srv, "GET", "/instance/state-monitor", body, left_ms, &rep, why, sizeof(why));
        if (r == -ETIMEDOUT && deadline && now_s() >= deadline - 0.05)
            goto timed_out;
        if (r == -E2BIG || r == -ENOMEM) {
            cli_error("state-monitor: %s", why);
            return CLI_INVALID;
        }
        if (r < 0)
            return cli_unreachable(srv.hostport, why);
        if (rep.status == 410) {
            cli_http_reply_free(&rep);
            fprintf(stderr, "cella: the instance is gone (410 Gone)\n");
            if (until_set && until != INSTANCE_DESTROYED) {
                cli_error("the instance was destroyed before it reached %s", until_name);
                return CLI_INVALID;
            }
            return CLI_OK;
        }
        if (rep.status < 200 || rep.status > 299) {
            r = cli_http_report(&rep);
            cli_http_reply_free(&rep);
            return r;
        }
        json_t *j = json_loadb(rep.body, rep.len, JSON_REJECT_DUPLICATES, NULL);
        cli_http_reply_free(&rep);
        json_int_t g = -1;
        const char *sname = NULL;
        enum instance_state st;
        if (json_unpack(j, "{s:I,s:s}", "gen", &g, "state", &sname) < 0 || g < 0 ||
            instance_state_from_name(sname, &st) < 0) {
            json_decref(j);
            cli_error("the server's answer is not a valid InstanceStateMonitorResponse");
            return CLI_INVALID;
        }
        json_decref(j);
        if (!printed || (uint64_t)g > last) {
            printf("gen %llu: %s\n", (unsigned long long)g, instance_state_name(st));
            fflush(stdout);
            printed = true;
            last = (uint64_t)g;
        }
        if (until_set && st == until)
            return CLI_OK;
        if (st == INSTANCE_DESTROYED) {
            if (until_set) {
                cli_error("the instance was destroyed before it reached %s", until_name);
                return CLI_INVALID;
            }
            return CLI_OK;
        }
        if (until_set && st == INSTANCE_FAILED) {
            cli_error("the instance failed before it reached %s", until_name);
            return CLI_INVALID;
        }
        if ((uint64_t)g < gen)
            usleep(200 * 1000); /* the server answered too early: do not spin */
        gen = (uint64_t)g + 1;
    }
timed_out:
    if (until_set) {
        cli_error("timed out waiting for %s", until_name);
        return CLI_INVALID;
    }
    return CLI_OK;
}

/* ---- the tables ---- */

static const struct cli_option new_options[] = {
    [NEW_SPEC] = {"spec", "FILE.json", "The instance spec as JSON (- for stdin)"},
    [NEW_CONFIG] = {"config", "FILE.toml", "A config TOML file, converted here"},
    [NEW_ID] = {"id", "UUID", "The instance id (default: a new random one)"},
    [NEW_DESCRIPTION] = {"description", "TEXT", "Free-form description"},
    {0},
};

static const struct cli_option get_options[] = {
    [GET_JSON] = {"json", NULL, "Print the server's answer as JSON"},
    {0},
};

static const struct cli_option spec_get_options[] = {
    [SPEC_GET_COMPACT] = {"compact", NULL, "Print the one-line form instead"},
    {0},
};

static const struct cli_option monitor_options[] = {
    [MON_GEN] = {"gen", "N", "Start at generation N (default 0: the current one)"},
    [MON_UNTIL] = {"until", "STATE", "Stop once the instance is in STATE"},
    [MON_TIMEOUT] = {"timeout", "SECONDS", "Give up after SECONDS"},
    {0},
};

const struct cli_command cli_server_commands[] = {
    {
        .name = "new",
        .operands = "NAME",
        .summary = "Create an instance on the server from a spec or config",
        .help = "Sends PUT /instance with an InstanceEnsureRequest: properties {id, name\n"
                "NAME, description, metadata} and init {method: Spec, value: {spec}}. The\n"
                "spec is the JSON file of --spec, or the config TOML file of --config\n"
                "converted here (as `cella spec from-toml` does). Metadata holds\n"
                "placeholders: the nil UUID for project_id, silo_id and sled_id, \"cella\"\n"
                "for sled_model and sled_serial, 0 for sled_revision.\n"
                "\n"
                "Prints the instance id to stderr and the server's answer (JSON) to\n"
                "stdout. When the server refuses, prints each problem it names as\n"
                "\"error (CODE): message [request id]\".\n"
                "\n"
                "Exit status: 0 created, 1 invalid input or the server said no, 2 usage\n"
                "error, 3 the server cannot be reached.\n",
        .min_args = 1,
        .max_args = 1,
        .options = new_options,
        .run = cmd_new,
    },
    {
        .name = "get",
        .operands = "",
        .summary = "Show the instance's state and properties",
        .help = "Sends GET /instance and prints the instance's state and properties, one\n"
                "\"field: value\" a line, or the answer as JSON with --json.\n" SERVER_STATUS,
        .min_args = 0,
        .max_args = 0,
        .options = get_options,
        .run = cmd_get,
    },
    {
        .name = "state",
        .operands = "run|stop|reboot",
        .summary = "Ask the instance to run, stop or reboot",
        .help = "Sends PUT /instance/state with \"Run\", \"Stop\" or \"Reboot\". The request\n"
                "returns once the server accepted it; follow the change with `cella\n"
                "monitor`. A stopped instance is destroyed.\n" SERVER_STATUS,
        .min_args = 1,
        .max_args = 1,
        .run = cmd_state,
    },
    {
        .name = "monitor",
        .operands = "",
        .summary = "Follow the instance's state changes",
        .help = "Follows GET /instance/state-monitor, printing every new generation as\n"
                "\"gen N: STATE\". Ends when the instance reaches the --until STATE, or,\n"
                "without --until, when it is destroyed (or the server answers 410 Gone).\n"
                "\n"
                "Exit status: 0 done (without --until: also when --timeout ran out),\n"
                "1 the server said no, or the instance failed, was destroyed or --timeout\n"
                "ran out before --until STATE; 2 usage error, 3 the server cannot be reached.\n",
        .min_args = 0,
        .max_args = 0,
        .options = monitor_options,
        .run = cmd_monitor,
    },
    {
        .name = "migrate",
        .operands = "[KEY=FILE...]",
        .summary = "Move the running instance to another server (live migration)",
        .help = "Sends the --to server a MigrationTarget ensure for the --from server's\n"
                "instance (its properties, a new migration id, and replace_components\n"
                "from each KEY=FILE: a ReplacementComponent JSON file for backend KEY, as\n"
                "operands or with --replace), then follows both servers'\n"
                "migration-status until the target runs the guest or the migration\n"
                "failed, and prints the source's report: blackout time, pre-copy passes\n"
                "and per phase the time, bytes, pages and passes. --downtime-ms sets the\n"
                "source's downtime budget first (a cella extension).\n"
                "\n"
                "The --to server must have no instance. With --start-target, when nothing\n"
                "answers at --to (an IP address of this host), cella starts\n"
                "`cella-server run ADDR:PORT ARG...` there, with each --target-arg ARG in\n"
                "order (the host facts: --bootrom=FILE, --kernel=FILE, ...). The server is\n"
                "$CELLA_SERVER_BIN, else cella-server next to cella (or in its build\n"
                "tree), else on $PATH. It runs detached, in its own session, with its\n"
                "output appended to --target-log FILE (default: a new file in $TMPDIR,\n"
                "its path printed), and cella waits up to 10 s (or --timeout) for it to\n"
                "answer 424 NoInstance. It keeps running after cella ends, whether the\n"
                "migration succeeded (it runs the instance) or not; its pid is printed.\n"
                "A server that already answers at --to is used as is.\n"
                "\n"
                "Exit status: 0 migrated, 1 the migration failed (the instance runs on\n"
                "at the source) or a server said no, 2 usage error, 3 a server cannot be\n"
                "reached (or the --start-target server did not start; it was stopped).\n",
        .min_args = 0,
        .max_args = 16,
        .options = cli_migrate_options,
        .run = cli_cmd_migrate,
    },
    {
        .name = "nmi",
        .operands = "",
        .summary = "Inject an NMI into the guest",
        .help = "Sends POST /instance/nmi.\n" SERVER_STATUS,
        .min_args = 0,
        .max_args = 0,
        .run = cmd_nmi,
    },
    {
        .name = "serial",
        .operands = "",
        .summary = "Attach to the serial console, or print its history",
        .help = "Without --history: an interactive console over the websocket GET\n"
                "/instance/serial. Keystrokes go to the guest, its output to stdout, and\n"
                "the server's control messages (for example a migration) to stderr. On a\n"
                "terminal, Ctrl-] detaches. When stdin is not a terminal, what it holds is\n"
                "sent; at its end the console closes once the guest has been quiet for a\n"
                "second, or after --exit-after SECONDS when given. --from-start N or\n"
                "--most-recent N replays output from the server's buffer first.\n"
                "\n"
                "With --history: prints the buffered output (GET /instance/serial/history)\n"
                "from byte N (--from-start), or the last N bytes (--most-recent, the\n"
                "default with N = 16384), at most --max-bytes, and exits.\n"
                "\n"
                "Exit status: 0 success (also when the server ends the console), 1 the\n"
                "server said no, 2 usage error, 3 the server cannot be reached or the\n"
                "connection was lost.\n",
        .min_args = 0,
        .max_args = 0,
        .options = cli_serial_options,
        .run = cli_cmd_serial,
    },
    {0},
};

const struct cli_command cli_spec_server_commands[] = {
    {
        .name = "get",
        .operands = "",
        .summary = "Print the instance's effective spec from the server",
        .help = "Sends GET /instance/spec and prints the instance's effective spec (with\n"
                "the server's defaults filled in) as JSON in Propolis's API shape, keys\n"
                "sorted, pretty-printed; `cella new --spec` takes it back.\n" SERVER_STATUS,
        .min_args = 0,
        .max_args = 0,
        .options = spec_get_options,
        .run = cmd_spec_get,
    },
    {0},
};
