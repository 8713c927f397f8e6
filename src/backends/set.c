/* SPDX-License-Identifier: MPL-2.0 */
#include "backends/set.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "common/log.h"

struct set_entry {
    struct blk_backend pub; /* the proxy devices hold; first member */
    struct backend_set *set;
    struct spec_component comp; /* a copy, to open again */
    _Atomic(struct blk_backend *) inner;
    uint8_t *blob; /* contents to load at activation */
    size_t blob_len;
    /*
     * The event loop the devices' owner attached (blk_attach_loop): every
     * inner backend opened while it is set joins it, and one is detached
     * before it closes. `loop_lock` covers these and the inner backend's
     * use by proxy_poll against its release.
     */
    pthread_mutex_t loop_lock;
    int loop_epfd; /* -1: none */
    uint64_t loop_tag;
};

struct backend_set {
    backend_event_fn event;
    void *ctx;
    size_t n;
    struct set_entry *e;
};

static void proxy_submit(struct blk_backend *b, struct blk_req *req)
{
    struct set_entry *e = (struct set_entry *)b;
    struct blk_backend *in = atomic_load(&e->inner);
    if (in)
        blk_submit(in, req);
    else
        req->done(req, -EIO);
}

static void proxy_drain(struct blk_backend *b)
{
    struct set_entry *e = (struct set_entry *)b;
    struct blk_backend *in = atomic_load(&e->inner);
    if (in)
        blk_drain(in);
}

static void proxy_close(struct blk_backend *b)
{
    (void)b; /* the set owns the backend */
}

static int proxy_attach_loop(struct blk_backend *b, int epfd, uint64_t tag)
{
    struct set_entry *e = (struct set_entry *)b;
    pthread_mutex_lock(&e->loop_lock);
    struct blk_backend *in = atomic_load(&e->inner);
    int r = e->loop_epfd >= 0 ? -EBUSY : in ? blk_attach_loop(in, epfd, tag) : 0;
    if (r == 0) {
        e->loop_epfd = epfd;
        e->loop_tag = tag;
    }
    pthread_mutex_unlock(&e->loop_lock);
    return r;
}

static void proxy_detach_loop(struct blk_backend *b)
{
    struct set_entry *e = (struct set_entry *)b;
    pthread_mutex_lock(&e->loop_lock);
    struct blk_backend *in = atomic_load(&e->inner);
    if (in && e->loop_epfd >= 0)
        blk_detach_loop(in);
    e->loop_epfd = -1;
    pthread_mutex_unlock(&e->loop_lock);
}

static void proxy_poll(struct blk_backend *b)
{
    struct set_entry *e = (struct set_entry *)b;
    pthread_mutex_lock(&e->loop_lock);
    struct blk_backend *in = atomic_load(&e->inner);
    if (in)
        blk_poll(in);
    pthread_mutex_unlock(&e->loop_lock);
}

static const struct blk_backend_ops proxy_ops = {.submit = proxy_submit,
                                                 .drain = proxy_drain,
                                                 .close = proxy_close,
                                                 .attach_loop = proxy_attach_loop,
                                                 .detach_loop = proxy_detach_loop,
                                                 .poll = proxy_poll};

/* Makes b e's inner backend, in the attached event loop if there is one. */
static void set_inner(struct set_entry *e, struct blk_backend *b)
{
    pthread_mutex_lock(&e->loop_lock);
    if (e->loop_epfd >= 0) {
        int r = blk_attach_loop(b, e->loop_epfd, e->loop_tag);
        if (r < 0)
            log_msg(LOG_WARN, "backends", "%s: completions stay on the backend's thread: %s",
                    e->comp.key, strerror(-r));
    }
    atomic_store(&e->inner, b);
    pthread_mutex_unlock(&e->loop_lock);
}

/* Takes e's inner backend out of the event loop and of e; returns it. */
static struct blk_backend *take_inner(struct set_entry *e)
{
    pthread_mutex_lock(&e->loop_lock);
    struct blk_backend *b = atomic_exchange(&e->inner, NULL);
    if (b && e->loop_epfd >= 0)
        blk_detach_loop(b);
    pthread_mutex_unlock(&e->loop_lock);
    return b;
}

static void on_event(void *ctx, enum blk_event ev, const char *detail)
{
    struct set_entry *e = ctx;
    if (e->set->event)
        e->set->event(e->set->ctx, e->comp.key, ev, detail);
}

static void comp_ptr(char out[CELLA_ERR_POINTER_MAX], const struct set_entry *e)
{
    snprintf(out, CELLA_ERR_POINTER_MAX, "/components/%s", e->comp.key);
}

/* Opens e's backend for I/O; checks it against what devices were told. */
static int open_entry(struct set_entry *e, bool check, struct cella_errors *errs)
{
    struct blk_backend *b = NULL;
    int r = blk_open(&e->comp, &b, errs);
    if (r < 0)
        return r;
    const struct blk_info *a = &e->pub.info, *n = &b->info;
    if (check &&
        (a->size != n->size || a->block_size != n->block_size || a->readonly != n->readonly ||
         a->can_discard != n->can_discard || a->can_write_zeroes != n->can_write_zeroes)) {
        char ptr[CELLA_ERR_POINTER_MAX];
        comp_ptr(ptr, e);
        blk_close(b);
        return cella_err(errs, -EINVAL, ptr,
                         "the backend now has %llu bytes in %u-byte blocks%s; the disk was "
                         "built for %llu bytes in %u-byte blocks%s",
                         (unsigned long long)n->size, n->block_size,
                         n->readonly ? ", read-only" : "", (unsigned long long)a->size,
                         a->block_size, a->readonly ? ", read-only" : "");
    }
    if (e->blob) {
        if (blk_blob_set_contents(b, e->blob, e->blob_len) < 0) {
            char ptr[CELLA_ERR_POINTER_MAX];
            comp_ptr(ptr, e);
            blk_close(b);
            return cella_err(errs, -EINVAL, ptr, "the blob contents have the wrong size");
        }
        free(e->blob);
        e->blob = NULL;
        e->blob_len = 0;
    }
    e->pub.info = b->info;
    b->event_cb = on_event;
    b->event_ctx = e;
    set_inner(e, b);
    return 0;
}

int backend_set_open(const struct instance_spec *spec, unsigned flags, backend_event_fn event,
                     void *ctx, struct backend_set **out, struct cella_errors *errs)
{
    *out = NULL;
    struct backend_set *s = calloc(1, sizeof(*s));
    size_t n = 0;
    for (size_t i = 0; i < spec->count; i++)
        n += spec_kind_is_storage_backend(spec->components[i].kind);
    if (!s || (n && !(s->e = calloc(n, sizeof(*s->e))))) {
        free(s);
        return cella_err(errs, -ENOMEM, "", "out of memory");
    }
    s->event = event;
    s->ctx = ctx;
    int r = 0;
    for (size_t i = 0; i < spec->count; i++) {
        const struct spec_component *c = &spec->components[i];
        if (!spec_kind_is_storage_backend(c->kind))
            continue;
        struct set_entry *e = &s->e[s->n];
        e->set = s;
        e->pub.ops = &proxy_ops;
        pthread_mutex_init(&e->loop_lock, NULL);
        e->loop_epfd = -1;
        if (spec_component_copy(&e->comp, c) < 0) {
            r = cella_err(errs, -ENOMEM, "", "out of memory");
            continue;
        }
        s->n++;
        int rc;
        if (flags & BACKEND_SET_DEFER) {
            /* Probe: learn what the devices need without taking the image. */
            struct blk_backend *b = NULL;
            rc = blk_open_ex(c, BLK_OPEN_NOLOCK, &b, errs);
            if (rc == 0) {
                e->pub.info = b->info;
                blk_close(b);
            }
        } else {
            rc = open_entry(e, false, errs);
        }
        if (rc < 0)
            r = r ? r : rc;
    }
    if (r < 0) {
        backend_set_close(s);
        return r;
    }
    *out = s;
    return 0;
}

struct blk_backend *backend_set_blk(const struct backend_set *s, const char *key)
{
    for (size_t i = 0; s && key && i < s->n; i++) {
        if (strcmp(s->e[i].comp.key, key) == 0)
            return &s->e[i].pub;
    }
    return NULL;
}

int backend_set_activate(struct backend_set *s, struct cella_errors *errs)
{
    int r = 0;
    size_t i;
    bool *opened = calloc(s->n ? s->n : 1, sizeof(*opened));
    if (!opened)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    for (i = 0; i < s->n && r == 0; i++) {
        if (atomic_load(&s->e[i].inner))
            continue;
        r = open_entry(&s->e[i], true, errs);
        opened[i] = r == 0;
    }
    if (r < 0) {
        for (i = 0; i < s->n; i++) {
            if (opened[i])
                blk_close(take_inner(&s->e[i]));
        }
    }
    free(opened);
    return r;
}

void backend_set_release(struct backend_set *s)
{
    for (size_t i = 0; s && i < s->n; i++) {
        struct set_entry *e = &s->e[i];
        struct blk_backend *b = atomic_load(&e->inner);
        if (!b)
            continue;
        /* Its own thread completes what is left: the loop may stop polling any time now. */
        pthread_mutex_lock(&e->loop_lock);
        if (e->loop_epfd >= 0)
            blk_detach_loop(b);
        pthread_mutex_unlock(&e->loop_lock);
        blk_drain(b);
        const uint8_t *data;
        size_t len;
        if (blk_blob_contents(b, &data, &len) == 0 && !e->blob) {
            /* A blob lives in memory: keep what the guest wrote. */
            e->blob = malloc(len ? len : 1);
            if (e->blob) {
                memcpy(e->blob, data, len);
                e->blob_len = len;
            }
        }
        blk_close(take_inner(e));
    }
}

int backend_set_blob_contents(struct backend_set *s, const char *key, const uint8_t *data,
                              size_t len)
{
    struct set_entry *e = (struct set_entry *)backend_set_blk(s, key);
    if (!e || e->comp.kind != SK_BLOB_STORAGE_BACKEND || len != e->pub.info.size)
        return -EINVAL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, data, len);
    free(e->blob);
    e->blob = copy;
    e->blob_len = len;
    return 0;
}

int backend_set_foreach_blob(struct backend_set *s,
                             int (*emit)(void *ectx, const char *key, const uint8_t *data,
                                         size_t len),
                             void *ectx)
{
    for (size_t i = 0; s && i < s->n; i++) {
        struct set_entry *e = &s->e[i];
        struct blk_backend *b = atomic_load(&e->inner);
        const uint8_t *data;
        size_t len;
        if (b && blk_blob_contents(b, &data, &len) == 0) {
            int r = emit(ectx, e->comp.key, data, len);
            if (r < 0)
                return r;
        } else if (!b && e->blob) {
            int r = emit(ectx, e->comp.key, e->blob, e->blob_len);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

void backend_set_close(struct backend_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        blk_close(take_inner(&s->e[i]));
        pthread_mutex_destroy(&s->e[i].loop_lock);
        spec_component_free(&s->e[i].comp);
        free(s->e[i].blob);
    }
    free(s->e);
    free(s);
}
