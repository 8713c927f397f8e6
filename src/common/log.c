/* SPDX-License-Identifier: MPL-2.0 */
#include "common/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int min_level = LOG_INFO;

static const char *const names[] = {"debug", "info", "warn", "error", "guest-error"};

void log_set_level(enum log_level level)
{
    atomic_store(&min_level, (int)level);
}

int log_level_from_name(const char *name, enum log_level *out)
{
    for (int i = 0; i <= LOG_ERROR; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* Appends s to out as the inside of a JSON string. */
static size_t json_escape(char *out, size_t cap, size_t n, const char *s)
{
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

void log_vmsg(enum log_level level, const char *component, const char *fmt, va_list ap)
{
    if ((int)level < atomic_load(&min_level))
        return;
    char msg[1024], line[2600];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n =
        (size_t)snprintf(line, sizeof(line),
                         "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
                         "\"component\":\"",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000, names[level]);
    n = json_escape(line, sizeof(line), n, component);
    n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"msg\":\"");
    n = json_escape(line, sizeof(line), n, msg);
    snprintf(line + n, sizeof(line) - n, "\"}\n");
    fputs(line, stderr);
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, component, fmt, ap);
    va_end(ap);
}
