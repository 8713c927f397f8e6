/* SPDX-License-Identifier: MPL-2.0 */
/* Input and error printing shared by the cella commands. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_read_input(const char *path, size_t max, char **out, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 0, n = 0;
    char *buf = NULL;
    int r = 0;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) {
                r = -EFBIG;
                break;
            }
            size_t ncap = cap ? cap * 2 : 65536;
            char *g = realloc(buf, ncap);
            if (!g) {
                r = -ENOMEM;
                break;
            }
            buf = g;
            cap = ncap;
        }
        ssize_t got = read(fd, buf + n, cap - n - 1);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            r = -errno;
            break;
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    if (!is_stdin)
        close(fd);
    if (r == 0 && n > max)
        r = -EFBIG;
    if (r < 0) {
        free(buf);
        return r;
    }
    if (!buf && !(buf = malloc(1)))
        return -ENOMEM;
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cella: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void cli_print_errors(void *file, const char *prefix, const struct cella_errors *errs)
{
    FILE *f = file;
    for (size_t i = 0; i < errs->count; i++) {
        const struct cella_error *e = &errs->items[i];
        if (prefix)
            fprintf(f, "%s: ", prefix);
        if (e->pointer[0])
            fprintf(f, "%s: ", e->pointer);
        fprintf(f, "%s\n", e->message);
    }
    if (errs->dropped) {
        if (prefix)
            fprintf(f, "%s: ", prefix);
        fprintf(f, "(%zu more problems not shown)\n", errs->dropped);
    }
}
