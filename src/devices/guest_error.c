/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/io.h"

#include "common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>

/*
 * A token bucket shared by all devices: at most GUEST_ERROR_BURST messages,
 * refilled at one per second. Simple and enough: the point is that a guest
 * hammering a bad register cannot fill the disk with logs.
 */
#define GUEST_ERROR_BURST 20

static atomic_long tokens = GUEST_ERROR_BURST;
static atomic_long last_refill;
static atomic_ulong suppressed;

static bool take_token(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long now = (long)ts.tv_sec, prev = atomic_load(&last_refill);
    if (now > prev && atomic_compare_exchange_strong(&last_refill, &prev, now)) {
        long t = atomic_load(&tokens) + (now - prev);
        atomic_store(&tokens, t > GUEST_ERROR_BURST ? GUEST_ERROR_BURST : t);
    }
    return atomic_fetch_sub(&tokens, 1) > 0;
}

void guest_error(const char *device, const char *fmt, ...)
{
    if (!take_token()) {
        atomic_fetch_add(&tokens, 1);
        atomic_fetch_add(&suppressed, 1);
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_GUEST_ERROR, device, fmt, ap);
    va_end(ap);
}

unsigned long guest_error_suppressed(void)
{
    return atomic_load(&suppressed);
}
