/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Starting an empty cella-server on this host for `cella migrate
 * --start-target`: the server runs detached (its own session, stdin from
 * /dev/null, stdout and stderr to a log file) so that it outlives the
 * command and keeps running the instance after the migration.
 */
#ifndef CELLA_CLI_SPAWN_H
#define CELLA_CLI_SPAWN_H

#include <limits.h>
#include <stdbool.h>
#include <sys/types.h>

#include "cli/http.h"

/* A server this command started. */
struct cli_spawned {
    pid_t pid; /* 0: none was started */
    char bin[PATH_MAX];
    char log[PATH_MAX];
};

/*
 * Whether host (as cli_server_parse leaves it) is an IP literal a server on
 * this host can listen on: a loopback address or one of this host's
 * interface addresses. 1 yes, 0 an IP address of another host, -EINVAL not
 * an IP literal (a host name).
 */
int cli_local_address(const char *host);

/*
 * Starts `cella-server run srv->hostport ARGS...` detached, with stdout and
 * stderr appended to log_path (NULL: a new file under $TMPDIR), and waits at
 * most wait_s seconds until it answers GET /instance with 424 NoInstance.
 * The binary is $CELLA_SERVER_BIN, else cella-server next to this program
 * (or in the build tree's src/server), else cella-server on $PATH.
 *
 * Returns CLI_OK with *out filled, or a failure already reported (the exit
 * status of the server or why it could not run, and its log), with nothing
 * left running: CLI_INVALID when the log cannot be created, CLI_UNREACHABLE
 * when the server could not be started.
 */
int cli_spawn_server(const struct cli_server *srv, const char *const *args, int nargs,
                     const char *log_path, double wait_s, struct cli_spawned *out);

/*
 * After the migration (`migrated`: it succeeded), tells on stderr what
 * became of a started server: it runs on at srv (its pid and log), or it
 * ended (its exit status and log). Nothing is stopped.
 */
void cli_spawned_report(const struct cli_spawned *s, const struct cli_server *srv, bool migrated);

#endif
