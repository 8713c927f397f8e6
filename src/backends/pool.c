/* SPDX-License-Identifier: MPL-2.0 */
/* A worker-thread pool for blocking backends, and the in-flight counter. */
#include "backends/backends_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pool_arg {
    struct be_pool *p;
    unsigned index;
};

static void *pool_main(void *arg)
{
    struct pool_arg a = *(struct pool_arg *)arg;
    struct be_pool *p = a.p;
    free(arg);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->work, &p->lock);
        if (!p->head)
            break; /* stopping, and the queue is empty */
        struct blk_req *req = p->head;
        p->head = req->be_next;
        if (!p->head)
            p->tail = NULL;
        pthread_mutex_unlock(&p->lock);
        int r = p->run(p->ctx, a.index, req);
        req->done(req, r); /* req may be gone after this */
        pthread_mutex_lock(&p->lock);
        if (--p->inflight == 0)
            pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int be_pool_start(struct be_pool *p, unsigned n, const char *name,
                  int (*run)(void *ctx, unsigned worker, struct blk_req *req), void *ctx)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->idle, NULL);
    p->run = run;
    p->ctx = ctx;
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->threads = calloc(n, sizeof(*p->threads));
    if (!p->threads)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        struct pool_arg *a = malloc(sizeof(*a));
        if (!a) {
            be_pool_stop(p);
            return -ENOMEM;
        }
        a->p = p;
        a->index = i;
        int e = pthread_create(&p->threads[i], NULL, pool_main, a);
        if (e) {
            free(a);
            be_pool_stop(p);
            return -e;
        }
        char tn[32];
        snprintf(tn, sizeof(tn), "%s%u", p->name, i);
        tn[15] = '\0'; /* the kernel's limit */
        pthread_setname_np(p->threads[i], tn);
        p->nthreads++;
    }
    return 0;
}

void be_pool_submit(struct be_pool *p, struct blk_req *req)
{
    req->be_next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->tail)
        p->tail->be_next = req;
    else
        p->head = req;
    p->tail = req;
    p->inflight++;
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->lock);
}

void be_pool_drain(struct be_pool *p)
{
    pthread_mutex_lock(&p->lock);
    while (p->inflight)
        pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void be_pool_stop(struct be_pool *p)
{
    if (!p->threads)
        return;
    be_pool_drain(p);
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    p->threads = NULL;
    p->nthreads = 0;
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->idle);
}

void be_inflight_init(struct be_inflight *f)
{
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->idle, NULL);
    f->count = 0;
}

void be_inflight_destroy(struct be_inflight *f)
{
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->idle);
}

void be_inflight_inc(struct be_inflight *f)
{
    pthread_mutex_lock(&f->lock);
    f->count++;
    pthread_mutex_unlock(&f->lock);
}

void be_inflight_dec(struct be_inflight *f)
{
    pthread_mutex_lock(&f->lock);
    if (--f->count == 0)
        pthread_cond_broadcast(&f->idle);
    pthread_mutex_unlock(&f->lock);
}

bool be_inflight_wait_ms(struct be_inflight *f, unsigned ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(ms % 1000u) * 1000000L;
    ts.tv_sec += ms / 1000u + ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&f->lock);
    while (f->count && pthread_cond_timedwait(&f->idle, &f->lock, &ts) == 0)
        ;
    bool idle = f->count == 0;
    pthread_mutex_unlock(&f->lock);
    return idle;
}

void be_inflight_wait(struct be_inflight *f)
{
    pthread_mutex_lock(&f->lock);
    while (f->count)
        pthread_cond_wait(&f->idle, &f->lock);
    pthread_mutex_unlock(&f->lock);
}
