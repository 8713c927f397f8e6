/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Structured logs: one JSON object per line on stderr
 * ({"time", "level", "component", "msg"} plus optional fields), in the
 * spirit of Propolis's bunyan logs. Thread-safe (one fputs per line).
 *
 * Context fields: every line carries "instance_id" once the process has
 * one (log_set_instance_id) and "request_id" while the logging thread is
 * serving a request (log_set_request_id, thread-local), so a reader can
 * follow one request or one VM through the log with a JSON filter.
 */
#ifndef CELLA_COMMON_LOG_H
#define CELLA_COMMON_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_GUEST_ERROR };

/* Messages below this level are dropped (default LOG_INFO). */
void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn", "error"; -EINVAL otherwise. */
int log_level_from_name(const char *name, enum log_level *out);

void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* A typed field for log_fields(): a string, or a number when str is NULL. */
struct log_field {
    const char *key;
    const char *str;
    double num;
};

/* Like log_msg, with extra top-level fields (keys must be plain ASCII). */
void log_fields(enum log_level level, const char *component, const struct log_field *fields,
                unsigned nfields, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Process-wide: the id of the instance this server hosts (NULL clears). */
void log_set_instance_id(const char *id);
/* This thread's current request id (NULL clears). */
void log_set_request_id(const char *id);

#endif
