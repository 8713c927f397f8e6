/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The command-line options every cella program that boots a VM shares
 * (cella-server, cella-standalone): the boot source and the log level.
 * Host facts only; nothing here describes the guest.
 */
#ifndef CELLA_MACHINE_HOST_OPTS_H
#define CELLA_MACHINE_HOST_OPTS_H

#include <getopt.h>

#include "machine/machine.h"

/* getopt_long table entries, to put first in a program's own table. */
/* clang-format off */
#define MACHINE_HOST_OPTIONS                          \
    {"kernel", required_argument, NULL, 'k'},         \
    {"initrd", required_argument, NULL, 'i'},         \
    {"cmdline", required_argument, NULL, 'c'},        \
    {"bootrom", required_argument, NULL, 'b'},        \
    {"linuxboot-rom", required_argument, NULL, 'l'},  \
    {"log-level", required_argument, NULL, 'L'}
/* clang-format on */

/*
 * Handles one getopt_long() result. Returns 1 when `opt` was one of the
 * shared options (stored in h, or the log level set), 0 when it is the
 * program's own, -EINVAL for a bad value (a line naming `prog` was printed).
 */
int machine_host_option(int opt, const char *arg, struct machine_host *h, const char *prog);

/* 0 when h names a boot source (a kernel, a bootrom or both), else -EINVAL. */
int machine_host_check(const struct machine_host *h);

#endif
