/* SPDX-License-Identifier: MPL-2.0 */
/* The fake instance state driver: see fake_instance.h. */
#include "fake_instance.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "spec/validate.h"

#define FIFO_MAX     256
#define RECEIVED_MAX (1u << 20)

struct instance {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC; signalled on every publish */
    bool exists;
    uint64_t gen;
    enum instance_state state;
    struct instance_properties props;
    struct instance_spec spec;
    struct serial_hub *hub;
    bool busy;
    unsigned nmi;
    uint64_t filled; /* bytes written by fake_fill (pattern offset) */

    uint8_t fifo[FIFO_MAX];
    size_t fifo_len, fifo_cap;
    uint8_t *received;
    size_t received_len;
    pthread_t drain;
    bool stop;
};

static size_t uart_input(void *ctx, const uint8_t *buf, size_t len)
{
    struct instance *in = ctx;
    pthread_mutex_lock(&in->lock);
    size_t room = in->fifo_cap > in->fifo_len ? in->fifo_cap - in->fifo_len : 0;
    size_t n = len < room ? len : room;
    memcpy(in->fifo + in->fifo_len, buf, n);
    in->fifo_len += n;
    pthread_mutex_unlock(&in->lock);
    return n;
}

static void *drain_main(void *arg)
{
    struct instance *in = arg;
    for (;;) {
        usleep(5000);
        pthread_mutex_lock(&in->lock);
        if (in->stop) {
            pthread_mutex_unlock(&in->lock);
            return NULL;
        }
        size_t room = RECEIVED_MAX - in->received_len;
        size_t n = in->fifo_len < room ? in->fifo_len : room;
        memcpy(in->received + in->received_len, in->fifo, n);
        in->received_len += n;
        memmove(in->fifo, in->fifo + n, in->fifo_len - n);
        in->fifo_len -= n;
        pthread_mutex_unlock(&in->lock);
    }
}

int instance_new(const struct instance_host *host, struct instance **out)
{
    struct instance *in = calloc(1, sizeof(*in));
    if (!in)
        return -ENOMEM;
    in->received = malloc(RECEIVED_MAX);
    int rc = in->received ? serial_hub_new(&in->hub) : -ENOMEM;
    if (rc < 0) {
        free(in->received);
        free(in);
        return rc;
    }
    pthread_mutex_init(&in->lock, NULL);
    cella_cond_init_monotonic(&in->cond);
    spec_init(&in->spec);
    in->fifo_cap = 16;
    serial_hub_set_input(in->hub, uart_input, in);
    pthread_create(&in->drain, NULL, drain_main, in);
    *out = in;
    return 0;
}

void instance_free(struct instance *in)
{
    if (!in)
        return;
    pthread_mutex_lock(&in->lock);
    in->stop = true;
    pthread_mutex_unlock(&in->lock);
    pthread_join(in->drain, NULL);
    serial_hub_free(in->hub);
    instance_properties_free(&in->props);
    spec_free(&in->spec);
    pthread_cond_destroy(&in->cond);
    pthread_mutex_destroy(&in->lock);
    free(in->received);
    free(in);
}

/* Caller holds the lock. */
static void publish_locked(struct instance *in, enum instance_state s)
{
    in->state = s;
    in->gen++;
    pthread_cond_broadcast(&in->cond);
}

void fake_publish(struct instance *in, enum instance_state s)
{
    pthread_mutex_lock(&in->lock);
    publish_locked(in, s);
    pthread_mutex_unlock(&in->lock);
}

void fake_set_busy(struct instance *in, bool busy)
{
    pthread_mutex_lock(&in->lock);
    in->busy = busy;
    pthread_mutex_unlock(&in->lock);
}

unsigned fake_nmi_count(struct instance *in)
{
    pthread_mutex_lock(&in->lock);
    unsigned n = in->nmi;
    pthread_mutex_unlock(&in->lock);
    return n;
}

void fake_set_fifo(struct instance *in, size_t cap)
{
    pthread_mutex_lock(&in->lock);
    in->fifo_cap = cap < FIFO_MAX ? cap : FIFO_MAX;
    pthread_mutex_unlock(&in->lock);
}

size_t fake_take_input(struct instance *in, uint8_t *out, size_t max)
{
    pthread_mutex_lock(&in->lock);
    size_t n = in->received_len < max ? in->received_len : max;
    memcpy(out, in->received, n);
    memmove(in->received, in->received + n, in->received_len - n);
    in->received_len -= n;
    pthread_mutex_unlock(&in->lock);
    return n;
}

void fake_fill(struct instance *in, uint64_t n)
{
    uint8_t buf[4096];
    while (n) {
        size_t k = n < sizeof(buf) ? (size_t)n : sizeof(buf);
        for (size_t i = 0; i < k; i++)
            buf[i] = (uint8_t)((serial_hub_total(in->hub) + i) % 251);
        serial_hub_write(in->hub, buf, k);
        n -= k;
    }
}

int instance_ensure(struct instance *in, const struct ensure_request *req,
                    struct cella_errors *errs)
{
    pthread_mutex_lock(&in->lock);
    bool exists = in->exists;
    pthread_mutex_unlock(&in->lock);
    if (exists)
        return cella_err(errs, -EEXIST, "", "an instance already exists on this server");
    if (req->method == ENSURE_METHOD_MIGRATION_TARGET)
        return cella_err(errs, -EINVAL, "/init/value/src_addr",
                         "cannot reach the migration source at %s (fake instance)", req->src_addr);
    if (spec_validate(&req->spec, errs) < 0)
        return -EINVAL;
    if (spec_check_host_support(&req->spec, errs) < 0)
        return -ENOTSUP;
    if (req->properties.name && strcmp(req->properties.name, "fail-create") == 0)
        return cella_err(errs, -EIO, "", "the machine could not be built (fake failure)");
    struct instance_properties p;
    struct instance_spec s;
    spec_init(&s);
    if (instance_properties_copy(&p, &req->properties) < 0)
        return -ENOMEM;
    if (spec_copy(&s, &req->spec) < 0) {
        instance_properties_free(&p);
        return -ENOMEM;
    }
    pthread_mutex_lock(&in->lock);
    if (in->exists) {
        pthread_mutex_unlock(&in->lock);
        instance_properties_free(&p);
        spec_free(&s);
        return cella_err(errs, -EEXIST, "", "an instance already exists on this server");
    }
    in->props = p;
    in->spec = s;
    in->exists = true;
    in->gen = 0;
    publish_locked(in, INSTANCE_CREATING);
    pthread_mutex_unlock(&in->lock);
    return 0;
}

void instance_view_free(struct instance_view *v)
{
    if (v)
        instance_properties_free(&v->properties);
}

/* Caller holds the lock. */
static int view_locked(struct instance *in, struct instance_view *out)
{
    out->gen = in->gen;
    out->state = in->state;
    return instance_properties_copy(&out->properties, &in->props);
}

int instance_get(struct instance *in, struct instance_view *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&in->lock);
    int rc = in->exists ? view_locked(in, out) : -ENOENT;
    pthread_mutex_unlock(&in->lock);
    return rc;
}

int instance_spec_get(struct instance *in, struct spec_get_response *out)
{
    spec_get_response_init(out);
    pthread_mutex_lock(&in->lock);
    int rc = -ENOENT;
    if (in->exists) {
        out->state = in->state;
        out->status = SPEC_STATUS_PRESENT;
        rc = instance_properties_copy(&out->properties, &in->props);
        if (rc == 0)
            rc = spec_copy(&out->spec, &in->spec);
    }
    pthread_mutex_unlock(&in->lock);
    if (rc < 0)
        spec_get_response_free(out);
    return rc;
}

int instance_request_state(struct instance *in, enum instance_request req,
                           struct cella_errors *errs)
{
    int rc = 0;
    pthread_mutex_lock(&in->lock);
    enum instance_state s = in->state;
    if (!in->exists) {
        rc = -ENOENT;
    } else if (in->busy) {
        rc = cella_err(errs, -EAGAIN, "", "the instance is still initializing");
    } else if (instance_refusal(req, s)) {
        rc =
            cella_err(errs, -EPERM, "", "%s cannot be done now: %s (state %s)",
                      instance_request_name(req), instance_refusal(req, s), instance_state_name(s));
    } else if (req == INSTANCE_REQ_RUN) {
        if (s == INSTANCE_CREATING) {
            publish_locked(in, INSTANCE_STARTING);
            publish_locked(in, INSTANCE_RUNNING);
        }
    } else if (req == INSTANCE_REQ_REBOOT) {
        publish_locked(in, INSTANCE_REBOOTING);
        publish_locked(in, INSTANCE_RUNNING);
    } else {
        publish_locked(in, INSTANCE_STOPPING);
        publish_locked(in, INSTANCE_STOPPED);
        publish_locked(in, INSTANCE_DESTROYED);
    }
    pthread_mutex_unlock(&in->lock);
    return rc;
}

int instance_wait(struct instance *in, uint64_t gen, int timeout_ms, struct instance_view *out)
{
    memset(out, 0, sizeof(*out));
    struct timespec dl = cella_deadline_ns((uint64_t)timeout_ms * 1000000u);
    pthread_mutex_lock(&in->lock);
    int rc = 0;
    if (!in->exists) {
        rc = -ENOENT;
        goto out;
    }
    while (in->gen < gen) {
        if (in->state == INSTANCE_DESTROYED) {
            rc = -ESHUTDOWN;
            goto out;
        }
        if (pthread_cond_timedwait(&in->cond, &in->lock, &dl) == ETIMEDOUT && in->gen < gen) {
            rc = view_locked(in, out) < 0 ? -ENOMEM : -ETIMEDOUT;
            goto out;
        }
    }
    rc = view_locked(in, out);
out:
    pthread_mutex_unlock(&in->lock);
    return rc;
}

int instance_nmi(struct instance *in)
{
    pthread_mutex_lock(&in->lock);
    int rc = !in->exists ? -ENOENT : in->state != INSTANCE_RUNNING ? -EAGAIN : 0;
    if (rc == 0)
        in->nmi++;
    pthread_mutex_unlock(&in->lock);
    return rc;
}

struct serial_hub *instance_serial(struct instance *in)
{
    return in->hub;
}

const char *instance_request_name(enum instance_request r)
{
    switch (r) {
    case INSTANCE_REQ_RUN:
        return "Run";
    case INSTANCE_REQ_STOP:
        return "Stop";
    case INSTANCE_REQ_REBOOT:
        return "Reboot";
    }
    return "unknown";
}

int instance_migrate_out(struct instance *in, const char *migration_id, int sock, const void *early,
                         size_t early_len, struct cella_errors *errs)
{
    (void)in;
    (void)migration_id;
    (void)sock;
    (void)early;
    (void)early_len;
    return cella_err(errs, -EPERM, "", "the fake instance cannot migrate");
}

int instance_migration_report(struct instance *in, char **json)
{
    (void)in;
    *json = NULL;
    return -ENOENT;
}

int instance_set_migration_settings(struct instance *in, const struct instance_mig_settings *s)
{
    (void)s;
    pthread_mutex_lock(&in->lock);
    bool exists = in->exists;
    pthread_mutex_unlock(&in->lock);
    return exists ? 0 : -ENOENT;
}
