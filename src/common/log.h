/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Structured logs: one JSON object per line on stderr
 * ({"time", "level", "component", "msg"} plus optional fields), in the
 * spirit of Propolis's bunyan logs. Thread-safe (one fprintf per line).
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

#endif
