/* SPDX-License-Identifier: MPL-2.0 */
#include "backends/set.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct set_entry {
    struct backend_set *set;
    char *key;
    struct blk_backend *b;
};

struct backend_set {
    void (*event)(void *ctx, const char *key, enum blk_event ev, const char *detail);
    void *ctx;
    size_t n;
    struct set_entry *e;
};

static void on_event(void *ctx, enum blk_event ev, const char *detail)
{
    struct set_entry *e = ctx;
    if (e->set->event)
        e->set->event(e->set->ctx, e->key, ev, detail);
}

int backend_set_open(const struct instance_spec *spec,
                     void (*event)(void *ctx, const char *key, enum blk_event ev,
                                   const char *detail),
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
        int rc = blk_open(c, &e->b, errs);
        if (rc < 0) {
            r = r ? r : rc;
            continue;
        }
        if (!(e->key = strdup(c->key))) {
            blk_close(e->b);
            r = cella_err(errs, -ENOMEM, "", "out of memory");
            continue;
        }
        e->b->event_cb = on_event;
        e->b->event_ctx = e;
        s->n++;
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
        if (strcmp(s->e[i].key, key) == 0)
            return s->e[i].b;
    }
    return NULL;
}

void backend_set_close(struct backend_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        blk_close(s->e[i].b);
        free(s->e[i].key);
    }
    free(s->e);
    free(s);
}
