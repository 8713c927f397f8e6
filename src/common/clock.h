/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Monotonic-clock helpers shared by the threads that wait or sleep:
 * condition variables timed on CLOCK_MONOTONIC (a wall-clock step never
 * stretches or cuts a wait), absolute deadlines for them, and a sleep that
 * a signal does not cut short.
 */
#ifndef CELLA_COMMON_CLOCK_H
#define CELLA_COMMON_CLOCK_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* pthread_cond_init whose pthread_cond_timedwait deadlines are CLOCK_MONOTONIC. */
static inline void cella_cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

/* The CLOCK_MONOTONIC time `ns` nanoseconds from now (a timedwait deadline). */
static inline struct timespec cella_deadline_ns(uint64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns += (uint64_t)ts.tv_nsec;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    return ts;
}

/* Sleeps `us` microseconds in full (a signal does not end it early). */
static inline void cella_sleep_us(uint64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000u),
                          .tv_nsec = (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

#endif
