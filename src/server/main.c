/* SPDX-License-Identifier: MPL-2.0 */
/*
 * cella-server: one process, one VM, driven over HTTP with Propolis's API.
 *
 *   cella-server run ADDR:PORT [--bootrom F [--linuxboot-rom F]]
 *                [--kernel K [--initrd I] [--cmdline C]] [--log-level L]
 *
 * Only host facts come from the command line (how VMs boot, where to
 * listen); every device comes from the spec a client sends with
 * PUT /instance. This is the only place in cella that may exit.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "common/log.h"
#include "machine/host_opts.h"
#include "instance/instance.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: cella-server run ADDR:PORT [--bootrom FILE [--linuxboot-rom FILE]]\n"
               "                    [--kernel FILE [--initrd FILE] [--cmdline TEXT]]\n"
               "                    [--log-level debug|info|warn|error]\n"
               "\n"
               "Serves the Propolis v5 API for one VM on ADDR:PORT (IPv6 as [ADDR]:PORT).\n"
               "The VM is created by PUT /instance with a complete instance spec; the boot\n"
               "source (a bootrom, a kernel, or both for SeaBIOS/OVMF fw_cfg boot) is a host\n"
               "fact given here.\n");
}

/* Splits "ADDR:PORT" or "[ADDR]:PORT". */
static int parse_listen(char *arg, const char **addr, uint16_t *port)
{
    char *colon = strrchr(arg, ':');
    if (!colon || colon == arg)
        return -EINVAL;
    *colon = '\0';
    char *end;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (*end || p > 65535 || colon[1] == '\0')
        return -EINVAL;
    if (arg[0] == '[') {
        size_t n = strlen(arg);
        if (n < 3 || arg[n - 1] != ']')
            return -EINVAL;
        arg[n - 1] = '\0';
        arg++;
    }
    *addr = arg;
    *port = (uint16_t)p;
    return 0;
}

static int parse_args(int argc, char **argv, struct instance_host *host, const char **addr,
                      uint16_t *port)
{
    static const struct option opts[] = {
        MACHINE_HOST_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        exit(0);
    }
    if (argc < 3 || strcmp(argv[1], "run") != 0) {
        usage(stderr);
        return -EINVAL;
    }
    int c;
    optind = 3;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int r = machine_host_option(c, optarg, &host->boot, "cella-server");
        if (r < 0)
            return r;
        if (r > 0)
            continue;
        switch (c) {
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return -EINVAL;
        }
    }
    if (optind != argc || machine_host_check(&host->boot) < 0) {
        fprintf(stderr, "cella-server: give a boot source: --kernel and/or --bootrom\n");
        return -EINVAL;
    }
    if (parse_listen(argv[2], addr, port) < 0) {
        fprintf(stderr, "cella-server: %s is not ADDR:PORT\n", argv[2]);
        return -EINVAL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct instance_host host = {0};
    const char *addr = NULL;
    uint16_t port = 0;
    if (parse_args(argc, argv, &host, &addr, &port) < 0)
        return 2;
    /* Signals are taken synchronously below; every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char api_addr[80];
    snprintf(api_addr, sizeof(api_addr), strchr(addr, ':') ? "[%s]:%u" : "%s:%u", addr,
             (unsigned)port);
    host.api_addr = api_addr;
    struct instance *inst;
    int r = instance_new(&host, &inst);
    if (r < 0) {
        fprintf(stderr, "cella-server: %s\n", strerror(-r));
        return 1;
    }
    struct api_config cfg = {.address = addr, .port = port};
    struct api_server *srv;
    r = api_server_start(&cfg, inst, &srv);
    if (r < 0) {
        fprintf(stderr, "cella-server: cannot listen on %s:%u: %s\n", addr, port, strerror(-r));
        instance_free(inst);
        return 1;
    }
    log_msg(LOG_INFO, "server", "listening on %s:%u", addr, api_server_port(srv));
    int sig = 0;
    sigwait(&set, &sig);
    log_msg(LOG_INFO, "server", "signal %d: shutting down", sig);
    api_server_stop(srv);
    instance_free(inst);
    return 0;
}
