/* SPDX-License-Identifier: MPL-2.0 */
#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int min_level = LOG_INFO;

#define LOG_ID_MAX 64
static pthread_mutex_t id_lock = PTHREAD_MUTEX_INITIALIZER;
static char instance_id[LOG_ID_MAX];
static _Thread_local char request_id[LOG_ID_MAX];

void log_set_instance_id(const char *id)
{
    pthread_mutex_lock(&id_lock);
    snprintf(instance_id, sizeof(instance_id), "%s", id ? id : "");
    pthread_mutex_unlock(&id_lock);
}

void log_set_request_id(const char *id)
{
    snprintf(request_id, sizeof(request_id), "%s", id ? id : "");
}

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

/* Appends ,"key":"value" (escaped). */
static size_t put_str(char *line, size_t cap, size_t n, const char *key, const char *val)
{
    if (n + 8 >= cap)
        return n;
    n += (size_t)snprintf(line + n, cap - n, ",\"");
    n = json_escape(line, cap, n, key);
    if (n + 4 < cap)
        n += (size_t)snprintf(line + n, cap - n, "\":\"");
    n = json_escape(line, cap, n, val);
    if (n + 2 < cap)
        n += (size_t)snprintf(line + n, cap - n, "\"");
    return n;
}

__attribute__((format(printf, 5, 0))) static void emit(enum log_level level, const char *component,
                                                       const struct log_field *fields,
                                                       unsigned nfields, const char *fmt,
                                                       va_list ap)
{
    if ((int)level < atomic_load(&min_level))
        return;
    char msg[1024], line[3072], inst[LOG_ID_MAX];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    pthread_mutex_lock(&id_lock);
    memcpy(inst, instance_id, sizeof(inst));
    pthread_mutex_unlock(&id_lock);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    const size_t cap = sizeof(line) - 4; /* room for the closing "}\n" */
    size_t n = (size_t)snprintf(
        line, cap, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"",
        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
        ts.tv_nsec / 1000000, names[level]);
    n = put_str(line, cap, n, "component", component);
    n = put_str(line, cap, n, "msg", msg);
    if (inst[0])
        n = put_str(line, cap, n, "instance_id", inst);
    if (request_id[0])
        n = put_str(line, cap, n, "request_id", request_id);
    for (unsigned i = 0; i < nfields; i++) {
        if (fields[i].str) {
            n = put_str(line, cap, n, fields[i].key, fields[i].str);
        } else if (n + 64 < cap) {
            n = put_str(line, cap, n, fields[i].key, "");
            n -= 3; /* drop the empty string's quotes: ,"key": */
            n += (size_t)snprintf(line + n, cap - n, ":%.10g", fields[i].num);
        }
    }
    snprintf(line + n, sizeof(line) - n, "}\n");
    fputs(line, stderr);
}

void log_vmsg(enum log_level level, const char *component, const char *fmt, va_list ap)
{
    emit(level, component, NULL, 0, fmt, ap);
}

void log_fields(enum log_level level, const char *component, const struct log_field *fields,
                unsigned nfields, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, component, fields, nfields, fmt, ap);
    va_end(ap);
}

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, component, fmt, ap);
    va_end(ap);
}
