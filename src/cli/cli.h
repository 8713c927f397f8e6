/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The `cella` command line: a table of commands, each with its help text
 * and handler, nested in groups (`cella spec from-toml`). A new command is
 * one table entry and one handler; the dispatcher does argument checks,
 * --help and usage errors for all of them.
 *
 * Handlers are thin: they read inputs, call the libraries, print results
 * and return an exit status. Only main() exits.
 */
#ifndef CELLA_CLI_CLI_H
#define CELLA_CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "common/error.h"

/* Exit statuses of every command. */
enum cli_status {
    CLI_OK = 0,        /* done; for `diff`: no guest-visible difference */
    CLI_INVALID = 1,   /* the input is invalid or could not be read */
    CLI_USAGE = 2,     /* the command line is wrong */
    CLI_DIFFERENT = 3, /* `spec diff`: the specs differ in what a guest sees */
    /* Commands that talk to a server: it cannot be reached (same value). */
    CLI_UNREACHABLE = 3,
};

/* Where the server commands go unless --server or $CELLA_SERVER says. */
#define CLI_DEFAULT_SERVER "127.0.0.1:12400"

/* An option a leaf command takes ("--compact"); only long forms. */
struct cli_option {
    const char *name;  /* without the dashes */
    const char *value; /* name of its value ("URL"), or NULL for a flag */
    const char *help;  /* one line */
};

#define CLI_MAX_OPTIONS 12

/* What the dispatcher hands a handler: operands, and options by table index. */
struct cli_args {
    int argc;
    char **argv; /* operands only, options removed */
    bool set[CLI_MAX_OPTIONS];
    const char *value[CLI_MAX_OPTIONS]; /* the last value given */
    /* Every value of each option, in order, for options that may repeat. */
    int count[CLI_MAX_OPTIONS];
    const char **values[CLI_MAX_OPTIONS];
    const char *server; /* the global --server ADDR:PORT, never NULL */
};

struct cli_command {
    const char *name;
    const char *operands; /* synopsis of operands ("FILE"), or "" */
    const char *summary;  /* one line for the parent's command list */
    const char *help;     /* shown by --help after the usage line */
    int min_args, max_args;
    const struct cli_option *options; /* terminated by a NULL name; may be NULL */
    /* Leaf commands: runs it and returns a cli_status. NULL for groups. */
    int (*run)(const struct cli_command *cmd, const struct cli_args *args);
    /* Groups: the subcommands, terminated by a NULL name. */
    const struct cli_command *subs;
    /* Groups: more subcommands defined in another file, listed after subs. */
    const struct cli_command *more_subs;
};

/* The `spec` group (cmd_spec.c). */
extern const struct cli_command cli_spec_commands[];

/*
 * Commands that drive a Propolis v5 server at args->server: the top-level
 * new, get, state, monitor, nmi and serial, and `spec get` (cmd_instance.c,
 * cmd_serial.c).
 */
extern const struct cli_command cli_server_commands[];
extern const struct cli_command cli_spec_server_commands[];

/* `cella migrate` (cmd_migrate.c), an entry of cli_server_commands. */
int cli_cmd_migrate(const struct cli_command *cmd, const struct cli_args *args);
extern const struct cli_option cli_migrate_options[];

/* A random (version 4) UUID. 0 or -errno. */
int cli_new_uuid(char out[37]);

/* `cella serial` (cmd_serial.c), an entry of cli_server_commands. */
int cli_cmd_serial(const struct cli_command *cmd, const struct cli_args *args);
extern const struct cli_option cli_serial_options[];

/*
 * Reads all of path ("-" is stdin) into a NUL-terminated buffer the caller
 * frees. Fails with -EFBIG over max bytes, or the errno of open/read.
 */
int cli_read_input(const char *path, size_t max, char **out, size_t *len);

/* Prints "cella: " + message to stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Prints error records one a line to f as "[PREFIX: ][POINTER: ]MESSAGE",
 * then a line for records that were dropped.
 */
void cli_print_errors(void *f, const char *prefix, const struct cella_errors *errs);

#endif
