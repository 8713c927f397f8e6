/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The API server over the fake instance, for tests/api/test_api.py.
 *
 *   api-test-server [--address A] [--port P] [--max-body N]
 *                   [--max-ensure-body N] [--ws-stall-ms N]
 *                   [--max-connections N] [--idle-timeout S]
 *
 * Prints "port N" once listening, then reads commands on stdin, one per
 * line, answering each with one line that starts with "ok" (or "error"):
 *   state NAME    publish instance state NAME (Running, Failed, ...)
 *   busy 0|1      PUT /instance/state answers 503 while busy
 *   write HEX     guest console output (hex bytes)
 *   fill N        N bytes of console output, byte at offset o = o % 251
 *   control JSON  broadcast a console control message
 *   hubclose      close the console hub
 *   subqueue N    queue bytes of later console subscribers (0: default)
 *   fifo N        UART FIFO size for keystrokes (0: the guest takes none)
 *   input         "ok HEX": keystrokes the guest received (then cleared)
 *   nmi           "ok N": NMIs injected so far
 *   total         "ok N": console bytes written so far
 *   quit          stop the server and exit (so does end of input)
 * Logs (JSON lines) go to stderr.
 *
 * Built twice: api-test-server with the fake hub (fake_serial_hub.c), and
 * api-test-server-realhub with the real one (src/instance/serial_hub.c),
 * which has no hubclose/subqueue knobs (they answer "error unknown
 * command").
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "fake_instance.h"

static unsigned long arg_num(const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end) {
        fprintf(stderr, "bad number: %s\n", s);
        exit(2);
    }
    return v;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void command(struct instance *inst, char *line)
{
    char *arg = strchr(line, ' ');
    if (arg)
        *arg++ = '\0';
    else
        arg = line + strlen(line);
    if (strcmp(line, "state") == 0) {
        enum instance_state s;
        if (instance_state_from_name(arg, &s) < 0) {
            printf("error unknown state\n");
            return;
        }
        fake_publish(inst, s);
    } else if (strcmp(line, "busy") == 0) {
        fake_set_busy(inst, strcmp(arg, "1") == 0);
    } else if (strcmp(line, "write") == 0) {
        size_t n = strlen(arg) / 2;
        uint8_t *b = malloc(n + 1);
        for (size_t i = 0; b && i < n; i++)
            b[i] = (uint8_t)(hexval(arg[2 * i]) << 4 | hexval(arg[2 * i + 1]));
        if (b)
            serial_hub_write(instance_serial(inst), b, n);
        free(b);
    } else if (strcmp(line, "fill") == 0) {
        fake_fill(inst, strtoull(arg, NULL, 10));
    } else if (strcmp(line, "control") == 0) {
        serial_hub_broadcast_control(instance_serial(inst), arg);
#ifndef API_TEST_REAL_HUB
    } else if (strcmp(line, "hubclose") == 0) {
        fake_hub_close(instance_serial(inst));
    } else if (strcmp(line, "subqueue") == 0) {
        fake_hub_set_sub_queue(instance_serial(inst), strtoul(arg, NULL, 10));
#endif
    } else if (strcmp(line, "fifo") == 0) {
        fake_set_fifo(inst, strtoul(arg, NULL, 10));
    } else if (strcmp(line, "input") == 0) {
        static uint8_t buf[1 << 20];
        size_t n = fake_take_input(inst, buf, sizeof(buf));
        printf("ok ");
        for (size_t i = 0; i < n; i++)
            printf("%02x", buf[i]);
        printf("\n");
        return;
    } else if (strcmp(line, "nmi") == 0) {
        printf("ok %u\n", fake_nmi_count(inst));
        return;
    } else if (strcmp(line, "total") == 0) {
        printf("ok %llu\n", (unsigned long long)serial_hub_total(instance_serial(inst)));
        return;
    } else {
        printf("error unknown command\n");
        return;
    }
    printf("ok\n");
}

int main(int argc, char **argv)
{
    struct api_config cfg = {0};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "usage: see the comment at the top of api_test_server.c\n");
            return 2;
        }
        i++;
        if (strcmp(o, "--address") == 0)
            cfg.address = v;
        else if (strcmp(o, "--port") == 0)
            cfg.port = (uint16_t)arg_num(v);
        else if (strcmp(o, "--max-body") == 0)
            cfg.max_body = arg_num(v);
        else if (strcmp(o, "--max-ensure-body") == 0)
            cfg.max_ensure_body = arg_num(v);
        else if (strcmp(o, "--ws-stall-ms") == 0)
            cfg.ws_stall_ms = (unsigned)arg_num(v);
        else if (strcmp(o, "--max-connections") == 0)
            cfg.max_connections = (unsigned)arg_num(v);
        else if (strcmp(o, "--idle-timeout") == 0)
            cfg.idle_timeout_s = (unsigned)arg_num(v);
        else {
            fprintf(stderr, "unknown option %s\n", o);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct instance_host host = {0};
    struct instance *inst;
    int rc = instance_new(&host, &inst);
    if (rc < 0) {
        fprintf(stderr, "instance_new: %s\n", strerror(-rc));
        return 1;
    }
    struct api_server *srv;
    rc = api_server_start(&cfg, inst, &srv);
    if (rc < 0) {
        fprintf(stderr, "api_server_start: %s\n", strerror(-rc));
        instance_free(inst);
        return 1;
    }
    printf("port %u\n", api_server_port(srv));
    static char line[1 << 22];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strcmp(line, "quit") == 0)
            break;
        command(inst, line);
    }
    api_server_stop(srv);
    instance_free(inst);
    printf("ok bye\n");
    return 0;
}
