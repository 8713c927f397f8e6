/* SPDX-License-Identifier: MPL-2.0 */
/* Shared by the backend implementations; not for other layers. */
#ifndef CELLA_BACKENDS_BACKENDS_INT_H
#define CELLA_BACKENDS_BACKENDS_INT_H

#include <pthread.h>
#include <stdbool.h>

#include "backends/block.h"
#include "common/jsonptr.h"

/* Sets p to "/components/<key>" or "/components/<key>/<field>" (field may be NULL). */
void be_comp_ptr(struct jptr *p, const struct spec_component *c, const char *field);

/*
 * Checks req against b->info: a known op, iovecs that add up to len within
 * BLK_MAX_IOV and BLK_MAX_REQ_LEN, offset and len aligned to the block size
 * and inside the disk, no change to a read-only disk. 0 or a negative errno.
 */
int blk_req_check(const struct blk_backend *b, const struct blk_req *req);

/* Seconds from a monotonic clock. */
double be_now(void);

int blk_file_open(const struct spec_component *c, unsigned flags, struct blk_backend **out,
                  struct cella_errors *errs);
int blk_blob_open(const struct spec_component *c, struct blk_backend **out,
                  struct cella_errors *errs);
int blk_nbd_open(const struct spec_component *c, struct blk_backend **out,
                 struct cella_errors *errs);

/*
 * A pool of worker threads serving a FIFO of requests (linked through
 * blk_req.be_next). `run` executes one request on worker `worker` and
 * returns its result; the pool then calls req->done. Used by the file
 * backend when io_uring is unavailable and by the NBD backend.
 */
struct be_pool {
    pthread_mutex_t lock;
    pthread_cond_t work; /* queue non-empty or stopping */
    pthread_cond_t idle; /* inflight reached 0 */
    struct blk_req *head, *tail;
    unsigned inflight; /* queued + running */
    bool stopping;
    unsigned nthreads;
    pthread_t *threads;
    int (*run)(void *ctx, unsigned worker, struct blk_req *req);
    void *ctx;
    char name[12];
};

/* Starts n threads named "<name><index>". 0 or a negative errno. */
int be_pool_start(struct be_pool *p, unsigned n, const char *name,
                  int (*run)(void *ctx, unsigned worker, struct blk_req *req), void *ctx);
void be_pool_submit(struct be_pool *p, struct blk_req *req);
/* Waits until no request is queued or running. */
void be_pool_drain(struct be_pool *p);
/* Drains, stops and joins the threads. Safe on a pool that never started. */
void be_pool_stop(struct be_pool *p);

/* Tracks requests in flight so drain can wait for them. */
struct be_inflight {
    pthread_mutex_t lock;
    pthread_cond_t idle;
    unsigned count;
};

void be_inflight_init(struct be_inflight *f);
void be_inflight_destroy(struct be_inflight *f);
void be_inflight_inc(struct be_inflight *f);
void be_inflight_dec(struct be_inflight *f);
void be_inflight_wait(struct be_inflight *f);
/* Waits up to ms milliseconds; true once nothing is in flight. */
bool be_inflight_wait_ms(struct be_inflight *f, unsigned ms);

#endif
