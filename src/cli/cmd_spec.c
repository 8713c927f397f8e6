/* SPDX-License-Identifier: MPL-2.0 */
/* `cella spec ...`: from-toml, check and diff, all offline. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "config/config.h"
#include "spec/spec_json.h"
#include "spec/validate.h"

/* Reads and decodes a JSON spec; prints why not and returns CLI_INVALID. */
static int load_spec(const char *path, struct instance_spec *out, struct cella_errors *errs)
{
    spec_init(out);
    char *text;
    size_t len;
    int r = cli_read_input(path, SPEC_MAX_JSON_TEXT, &text, &len);
    if (r == -EFBIG) {
        cli_error("%s is larger than the %u byte limit of a spec", path, SPEC_MAX_JSON_TEXT);
        return CLI_INVALID;
    }
    if (r < 0) {
        cli_error("cannot read %s: %s", path, strerror(-r));
        return CLI_INVALID;
    }
    r = spec_parse(text, len, out, errs);
    free(text);
    return r < 0 ? CLI_INVALID : CLI_OK;
}

/* ---- from-toml ---- */

enum { FROM_TOML_COMPACT };

static int cmd_from_toml(const struct cli_command *cmd, const struct cli_args *a)
{
    const char *path = a->argv[0];
    struct config_result res;
    struct cella_errors errs = {0};
    int r = config_convert_file(path, NULL, &res, &errs);
    if (r < 0) {
        cli_print_errors(stderr, strcmp(path, "-") ? path : "<stdin>", &errs);
        cella_errors_clear(&errs);
        config_result_free(&res);
        return CLI_INVALID;
    }
    json_t *j = spec_to_json(&res.spec, SPEC_ENC_API);
    size_t flags = JSON_SORT_KEYS | (a->set[FROM_TOML_COMPACT] ? JSON_COMPACT : JSON_INDENT(2));
    char *text = j ? json_dumps(j, flags) : NULL;
    json_decref(j);
    config_result_free(&res);
    if (!text) {
        cli_error("out of memory");
        return CLI_INVALID;
    }
    printf("%s\n", text);
    free(text);
    return CLI_OK;
}

/* ---- check ---- */

static int cmd_check(const struct cli_command *cmd, const struct cli_args *a)
{
    struct instance_spec s;
    struct cella_errors errs = {0};
    int r = load_spec(a->argv[0], &s, &errs);
    if (r == CLI_OK) {
        spec_validate(&s, &errs);
        spec_check_host_support(&s, &errs);
    }
    spec_free(&s);
    if (cella_errors_total(&errs) == 0 && r == CLI_OK) {
        printf("ok\n");
        return CLI_OK;
    }
    cella_errors_sort(&errs);
    cli_print_errors(stdout, NULL, &errs);
    cella_errors_clear(&errs);
    return CLI_INVALID;
}

/* ---- diff ---- */

static int cmd_diff(const struct cli_command *cmd, const struct cli_args *a)
{
    if (strcmp(a->argv[0], "-") == 0 && strcmp(a->argv[1], "-") == 0) {
        cli_error("only one of the two specs can come from stdin (\"-\")");
        return CLI_USAGE;
    }
    struct instance_spec s[2];
    int r = CLI_OK;
    for (int i = 0; i < 2; i++) {
        struct cella_errors errs = {0};
        if (load_spec(a->argv[i], &s[i], &errs) != CLI_OK) {
            const char *name = strcmp(a->argv[i], "-") ? a->argv[i] : "<stdin>";
            cli_print_errors(stderr, name, &errs);
            r = CLI_INVALID;
        }
        cella_errors_clear(&errs);
    }
    if (r == CLI_OK) {
        struct spec_diff d = {0};
        int n = spec_guest_diff(&s[0], &s[1], &d);
        if (n < 0) {
            cli_error("out of memory");
            r = CLI_INVALID;
        } else {
            for (size_t i = 0; i < d.count; i++)
                printf("%s: %s\n", d.items[i].pointer, d.items[i].text);
            r = d.count ? CLI_DIFFERENT : CLI_OK;
        }
        spec_diff_free(&d);
    }
    spec_free(&s[0]);
    spec_free(&s[1]);
    return r;
}

static const struct cli_option from_toml_options[] = {
    [FROM_TOML_COMPACT] = {"compact", NULL, "Print the stable one-line form instead"},
    {0},
};

const struct cli_command cli_spec_commands[] = {
    {
        .name = "from-toml",
        .operands = "FILE",
        .summary = "Convert a config TOML file into an instance spec (JSON)",
        .help = "Reads the config TOML file FILE (- for stdin), checks it, and prints the\n"
                "instance spec it describes as JSON in Propolis's API shape: keys sorted,\n"
                "pretty-printed. Relative file paths in FILE are made absolute against the\n"
                "directory of FILE (the current directory for stdin). Every problem is\n"
                "printed to stderr as \"FILE: POINTER: line L, column C: message\".\n"
                "A NIC without interface-id gets a random one.\n",
        .min_args = 1,
        .max_args = 1,
        .options = from_toml_options,
        .run = cmd_from_toml,
    },
    {
        .name = "check",
        .operands = "FILE",
        .summary = "Check a JSON instance spec",
        .help = "Decodes the JSON instance spec FILE (- for stdin), checks every rule of\n"
                "the spec and whether this build of cella can provide each component,\n"
                "and prints \"ok\" or every problem as \"POINTER: message\", one a line.\n",
        .min_args = 1,
        .max_args = 1,
        .run = cmd_check,
    },
    {
        .name = "diff",
        .operands = "A B",
        .summary = "List the guest-visible differences between two specs",
        .help = "Decodes the JSON instance specs A and B (one may be - for stdin) and\n"
                "prints every difference a guest could see as \"POINTER: what differs\",\n"
                "one a line. Backend identities (paths, URIs, tap names) and backend keys\n"
                "are not guest-visible. The specs are not validated.\n"
                "\n"
                "Exit status: 0 no guest-visible difference, 3 differences found,\n"
                "1 invalid input, 2 usage error.\n",
        .min_args = 2,
        .max_args = 2,
        .run = cmd_diff,
    },
    {0},
};
