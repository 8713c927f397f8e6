/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/host_opts.h"

#include <errno.h>
#include <stdio.h>

#include "common/log.h"

int machine_host_option(int opt, const char *arg, struct machine_host *h, const char *prog)
{
    enum log_level lvl;
    switch (opt) {
    case 'k':
        h->kernel = arg;
        return 1;
    case 'i':
        h->initrd = arg;
        return 1;
    case 'c':
        h->cmdline = arg;
        return 1;
    case 'b':
        h->bootrom = arg;
        return 1;
    case 'l':
        h->linuxboot_rom = arg;
        return 1;
    case 'L':
        if (log_level_from_name(arg, &lvl) < 0) {
            fprintf(stderr, "%s: unknown log level %s (debug, info, warn, error)\n", prog, arg);
            return -EINVAL;
        }
        log_set_level(lvl);
        return 1;
    default:
        return 0;
    }
}

int machine_host_check(const struct machine_host *h)
{
    return h->kernel || h->bootrom ? 0 : -EINVAL;
}
