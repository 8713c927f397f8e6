/* SPDX-License-Identifier: MPL-2.0 */
/*
 * `cella`: the client command line. This file holds the top command table
 * and the dispatcher; each group of commands lives in its own file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

#ifndef CELLA_VERSION
#define CELLA_VERSION "unknown"
#endif

static const struct cli_command top_commands[] = {
    {
        .name = "spec",
        .operands = "COMMAND [ARGS]",
        .summary = "Convert, check and compare instance specs",
        .help = "Work with instance specs: turn a config TOML file into a spec, check a\n"
                "spec, compare two specs as a guest sees them (all without a server), or\n"
                "fetch the spec of a server's instance (get).\n",
        .subs = cli_spec_commands,
        .more_subs = cli_spec_server_commands,
    },
    {0},
};

static const struct cli_command top = {
    .name = "cella",
    .operands = "COMMAND [ARGS]",
    .help = "cella is a VMM for Linux/KVM that follows Oxide Propolis's design: one\n"
            "instance spec describes a VM. This is its client command line.\n"
            "\n"
            "Commands that talk to a server use --server ADDR:PORT (before or after\n"
            "COMMAND), else the environment variable CELLA_SERVER, else\n" CLI_DEFAULT_SERVER
            ". Any server speaking Propolis's API version 5 will do.\n",
    .subs = top_commands,
    .more_subs = cli_server_commands,
};

static const char status_help[] = "Exit status: 0 success, 1 invalid input, 2 usage error.\n";
static const char top_status_help[] =
    "Exit status: 0 success, 1 invalid input or the server said no, 2 usage\n"
    "error, 3 the server cannot be reached (`spec diff`: differences found).\n";

/* The global --server, $CELLA_SERVER or the default; set once by main(). */
static const char *server_addr = CLI_DEFAULT_SERVER;

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

static void print_usage(FILE *f, const char *path, const struct cli_command *cmd)
{
    bool has_opts = cmd->options && cmd->options[0].name;
    fprintf(f, "Usage: %s%s%s%s\n", path, cmd->subs || has_opts ? " [OPTIONS]" : "",
            cmd->operands && cmd->operands[0] ? " " : "", cmd->operands ? cmd->operands : "");
}

static void print_help(const char *path, const struct cli_command *cmd)
{
    print_usage(stdout, path, cmd);
    if (cmd->help)
        printf("\n%s", cmd->help);
    if (cmd->subs) {
        printf("\nCommands:\n");
        for (const struct cli_command *s = cmd->subs; s->name; s++)
            printf("  %-12s %s\n", s->name, s->summary);
        for (const struct cli_command *s = cmd->more_subs; s && s->name; s++)
            printf("  %-12s %s\n", s->name, s->summary);
    }
    printf("\nOptions:\n");
    for (const struct cli_option *o = cmd->options; o && o->name; o++) {
        char left[48];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->value ? " " : "",
                 o->value ? o->value : "");
        printf("  %-20s %s\n", left, o->help);
    }
    printf("  %-20s %s\n", "-h, --help", "Show this help and exit");
    if (cmd == &top) {
        printf("  %-20s %s\n", "--server ADDR:PORT", "The server to talk to");
        printf("  %-20s %s\n", "--version", "Show the version and exit");
    }
    if (cmd->subs)
        printf("\nRun '%s COMMAND --help' for more about a command.\n", path);
    bool own_status = cmd->help && strstr(cmd->help, "Exit status:");
    if ((!cmd->subs || cmd == &top) && !own_status)
        printf("\n%s", cmd == &top ? top_status_help : status_help);
}

static int usage_error(const char *path, const struct cli_command *cmd, const char *what)
{
    cli_error("%s", what);
    print_usage(stderr, path, cmd);
    fprintf(stderr, "Run '%s --help' for more.\n", path);
    return CLI_USAGE;
}

/*
 * Parses the options and operands of a leaf command into *a. Returns -1 when
 * the command is to run, else an exit status (help was shown, or a usage
 * error reported).
 */
static int parse_leaf(const char *path, const struct cli_command *cmd, int argc, char **argv,
                      struct cli_args *a)
{
    bool options_done = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || strcmp(arg, "-") == 0) {
            argv[a->argc++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (is_help(arg)) {
            print_help(path, cmd);
            return CLI_OK;
        }
        if (strncmp(arg, "--server", 8) == 0 && (arg[8] == '\0' || arg[8] == '=')) {
            /* The global option, also accepted after the command. */
            if (arg[8] == '=')
                a->server = arg + 9;
            else if (i + 1 < argc)
                a->server = argv[++i];
            else
                return usage_error(path, cmd, "option --server needs a value (ADDR:PORT)");
            continue;
        }
        const char *eq = strchr(arg, '=');
        size_t nlen = eq ? (size_t)(eq - arg) - 2 : strlen(arg) - 2;
        int found = -1;
        for (int k = 0; arg[1] == '-' && cmd->options && cmd->options[k].name; k++) {
            if (strlen(cmd->options[k].name) == nlen &&
                !strncmp(arg + 2, cmd->options[k].name, nlen))
                found = k;
        }
        char msg[160];
        if (found < 0) {
            snprintf(msg, sizeof(msg), "unknown option \"%s\"", arg);
            return usage_error(path, cmd, msg);
        }
        const struct cli_option *o = &cmd->options[found];
        if (o->value && !eq && i + 1 >= argc) {
            snprintf(msg, sizeof(msg), "option --%s needs a value (%s)", o->name, o->value);
            return usage_error(path, cmd, msg);
        }
        if (!o->value && eq) {
            snprintf(msg, sizeof(msg), "option --%s takes no value", o->name);
            return usage_error(path, cmd, msg);
        }
        a->set[found] = true;
        if (!o->value)
            continue;
        a->value[found] = eq ? eq + 1 : argv[++i];
        /* Every value is kept too, for options that may repeat (one per word at most). */
        if (!a->values[found] && !(a->values[found] = calloc((size_t)argc, sizeof(char *)))) {
            cli_error("out of memory");
            return CLI_INVALID;
        }
        a->values[found][a->count[found]++] = a->value[found];
    }
    if (a->argc < cmd->min_args || a->argc > cmd->max_args) {
        char msg[160];
        snprintf(msg, sizeof(msg), "%s operands: expected %s",
                 a->argc < cmd->min_args ? "missing" : "too many", cmd->operands);
        return usage_error(path, cmd, msg);
    }
    return -1;
}

/* Parses the options and operands of a leaf command, then runs it. */
static int run_leaf(const char *path, const struct cli_command *cmd, int argc, char **argv)
{
    struct cli_args a;
    memset(&a, 0, sizeof(a));
    a.argv = argv; /* operands are compacted in place */
    a.server = server_addr;
    int r = parse_leaf(path, cmd, argc, argv, &a);
    if (r < 0)
        r = cmd->run(cmd, &a);
    for (int k = 0; k < CLI_MAX_OPTIONS; k++)
        free(a.values[k]);
    return r;
}

/* Runs argv (the words after the group's name) against a group. */
static int dispatch(const char *path, const struct cli_command *group, int argc, char **argv)
{
    if (argc == 0)
        return usage_error(path, group, "missing command");
    if (is_help(argv[0])) {
        print_help(path, group);
        return CLI_OK;
    }
    if (group == &top && strcmp(argv[0], "--version") == 0) {
        printf("cella %s\n", CELLA_VERSION);
        return CLI_OK;
    }
    char msg[200];
    if (group == &top && strncmp(argv[0], "--server", 8) == 0 &&
        (argv[0][8] == '\0' || argv[0][8] == '=')) {
        if (argv[0][8] == '=') {
            server_addr = argv[0] + 9;
            return dispatch(path, group, argc - 1, argv + 1);
        }
        if (argc < 2)
            return usage_error(path, group, "option --server needs a value (ADDR:PORT)");
        server_addr = argv[1];
        return dispatch(path, group, argc - 2, argv + 2);
    }
    if (argv[0][0] == '-') {
        snprintf(msg, sizeof(msg), "unknown option \"%s\"", argv[0]);
        return usage_error(path, group, msg);
    }
    for (int list = 0; list < 2; list++) {
        const struct cli_command *subs = list ? group->more_subs : group->subs;
        for (const struct cli_command *c = subs; c && c->name; c++) {
            if (strcmp(c->name, argv[0]) != 0)
                continue;
            char sub[128];
            snprintf(sub, sizeof(sub), "%s %s", path, c->name);
            if (c->subs)
                return dispatch(sub, c, argc - 1, argv + 1);
            return run_leaf(sub, c, argc - 1, argv + 1);
        }
    }
    snprintf(msg, sizeof(msg), "unknown command \"%s\"", argv[0]);
    return usage_error(path, group, msg);
}

int main(int argc, char **argv)
{
    const char *env = getenv("CELLA_SERVER");
    if (env && env[0])
        server_addr = env;
    int r = dispatch("cella", &top, argc - 1, argv + 1);
    if (fflush(stdout) != 0 && r == CLI_OK) {
        cli_error("cannot write the output");
        r = CLI_INVALID;
    }
    return r;
}
