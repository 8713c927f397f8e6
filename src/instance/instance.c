/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The instance state driver.
 *
 * Locks, in the only order they may nest: `lock` (state, generation,
 * properties, effective spec; waiters sleep on `changed`) and `m_lock` (the
 * current machine pointer, for input and NMI) are never held while a
 * machine is created, stopped or destroyed, because vCPU threads call back
 * into the driver (events) and must never wait on a thread that is joining
 * them. Lifecycle work happens on one worker thread that takes requests and
 * machine events from a queue (`q_lock`), so requests never race.
 */
#include "instance/instance.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "backends/set.h"
#include "common/log.h"
#include "spec/validate.h"

enum work_kind {
    W_RUN,
    W_STOP,
    W_REBOOT,
    W_EV_POWEROFF,
    W_EV_RESET,
    W_EV_PANIC,
    W_EV_FAILURE,
    W_EV_DEGRADED,  /* a backend lost its connection and is retrying */
    W_EV_RECOVERED, /* ... and got it back */
    W_QUIT
};

struct work {
    enum work_kind kind;
    char detail[160];
};

#define QUEUE_MAX 64

struct instance {
    struct instance_host host;

    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool ensured;      /* a VM exists or existed */
    bool initialising; /* ensure in progress */
    bool gone;         /* destroyed: no further generations */
    enum instance_state state;
    uint64_t gen;
    struct instance_properties props;
    struct instance_spec spec; /* effective */

    pthread_mutex_t m_lock;
    struct machine *m;
    struct backend_set *backends; /* worker thread (and ensure, before it runs) */
    unsigned degraded;            /* backends retrying (worker thread) */

    pthread_mutex_t q_lock;
    pthread_cond_t q_cond;
    struct work queue[QUEUE_MAX];
    size_t q_head, q_len;
    pthread_t worker;
    bool worker_started;

    struct serial_hub *hub;
};

const char *instance_request_name(enum instance_request r)
{
    static const char *const names[] = {"Run", "Stop", "Reboot"};
    return (unsigned)r < 3 ? names[r] : "unknown";
}

/* ---- publishing ---- */

/* Caller holds inst->lock. */
static void publish_locked(struct instance *inst, enum instance_state s)
{
    inst->state = s;
    inst->gen++;
    if (s == INSTANCE_DESTROYED)
        inst->gone = true;
    pthread_cond_broadcast(&inst->changed);
    log_msg(LOG_INFO, "instance", "state %s (generation %llu)", instance_state_name(s),
            (unsigned long long)inst->gen);
}

static void publish(struct instance *inst, enum instance_state s)
{
    pthread_mutex_lock(&inst->lock);
    publish_locked(inst, s);
    pthread_mutex_unlock(&inst->lock);
}

static enum instance_state current_state(struct instance *inst)
{
    pthread_mutex_lock(&inst->lock);
    enum instance_state s = inst->state;
    pthread_mutex_unlock(&inst->lock);
    return s;
}

/* ---- the work queue ---- */

static int enqueue(struct instance *inst, enum work_kind kind, const char *detail)
{
    pthread_mutex_lock(&inst->q_lock);
    int r = 0;
    if (inst->q_len == QUEUE_MAX) {
        r = -EAGAIN;
    } else {
        struct work *w = &inst->queue[(inst->q_head + inst->q_len++) % QUEUE_MAX];
        w->kind = kind;
        snprintf(w->detail, sizeof(w->detail), "%s", detail ? detail : "");
        pthread_cond_signal(&inst->q_cond);
    }
    pthread_mutex_unlock(&inst->q_lock);
    return r;
}

static struct work dequeue(struct instance *inst)
{
    pthread_mutex_lock(&inst->q_lock);
    while (inst->q_len == 0)
        pthread_cond_wait(&inst->q_cond, &inst->q_lock);
    struct work w = inst->queue[inst->q_head];
    inst->q_head = (inst->q_head + 1) % QUEUE_MAX;
    inst->q_len--;
    pthread_mutex_unlock(&inst->q_lock);
    return w;
}

/* ---- machine callbacks (vCPU threads: no instance locks taken) ---- */

static void on_machine_event(void *ctx, enum machine_event ev, const char *detail)
{
    struct instance *inst = ctx;
    switch (ev) {
    case MACHINE_EV_POWEROFF:
        enqueue(inst, W_EV_POWEROFF, detail);
        break;
    case MACHINE_EV_RESET:
        enqueue(inst, W_EV_RESET, detail);
        break;
    case MACHINE_EV_FAILURE:
        enqueue(inst, W_EV_FAILURE, detail);
        break;
    case MACHINE_EV_PANIC:
        enqueue(inst, W_EV_PANIC, detail);
        break;
    }
}

/* Backend threads: connection events of a storage backend. */
static void on_backend_event(void *ctx, const char *key, enum blk_event ev, const char *detail)
{
    struct instance *inst = ctx;
    char d[160];
    snprintf(d, sizeof(d), "backend %s: %s", key, detail ? detail : "");
    if (ev == BLK_EV_DEGRADED)
        enqueue(inst, W_EV_DEGRADED, d);
    else if (ev == BLK_EV_RECOVERED)
        enqueue(inst, W_EV_RECOVERED, d);
    else
        enqueue(inst, W_EV_FAILURE, d);
}

static void on_serial_out(void *ctx, unsigned com, const uint8_t *buf, size_t len)
{
    struct instance *inst = ctx;
    if (com == 1)
        serial_hub_write(inst->hub, buf, len);
}

static size_t serial_input(void *ctx, const uint8_t *buf, size_t len)
{
    struct instance *inst = ctx;
    pthread_mutex_lock(&inst->m_lock);
    size_t n = inst->m ? machine_serial_input(inst->m, 1, buf, len) : 0;
    pthread_mutex_unlock(&inst->m_lock);
    return n;
}

/* ---- machine lifecycle (worker thread, or ensure) ---- */

static int build_machine(struct instance *inst, struct machine **out, struct cella_errors *errs)
{
    struct machine_callbacks cb = {
        .ctx = inst, .event = on_machine_event, .serial_out = on_serial_out};
    return machine_create(&inst->spec, &inst->host.boot, inst->backends, &cb, out, errs);
}

static void set_machine(struct instance *inst, struct machine *m)
{
    pthread_mutex_lock(&inst->m_lock);
    inst->m = m;
    pthread_mutex_unlock(&inst->m_lock);
}

/* Takes the machine away from input/NMI users, then destroys it. */
static void drop_machine(struct instance *inst)
{
    pthread_mutex_lock(&inst->m_lock);
    struct machine *m = inst->m;
    inst->m = NULL;
    pthread_mutex_unlock(&inst->m_lock);
    machine_destroy(m);
}

/* After the last machine: every write it made has reached its backend. */
static void close_backends(struct instance *inst)
{
    backend_set_close(inst->backends);
    inst->backends = NULL;
}

static void fail(struct instance *inst, const char *why)
{
    log_msg(LOG_ERROR, "instance", "instance failed: %s", why);
    drop_machine(inst);
    close_backends(inst);
    publish(inst, INSTANCE_FAILED);
}

static void do_run(struct instance *inst)
{
    if (current_state(inst) != INSTANCE_CREATING)
        return; /* already running, or stopped meanwhile */
    publish(inst, INSTANCE_STARTING);
    pthread_mutex_lock(&inst->m_lock);
    int r = inst->m ? machine_start(inst->m) : -ENODEV;
    pthread_mutex_unlock(&inst->m_lock);
    if (r < 0) {
        fail(inst, "cannot start vCPUs");
        return;
    }
    publish(inst, INSTANCE_RUNNING);
}

static void do_stop(struct instance *inst, const char *why)
{
    enum instance_state s = current_state(inst);
    if (s == INSTANCE_DESTROYED)
        return;
    if (s != INSTANCE_STOPPED) {
        publish(inst, INSTANCE_STOPPING);
        log_msg(LOG_INFO, "instance", "stopping: %s", why);
        drop_machine(inst); /* vCPUs are kicked out of KVM_RUN: bounded */
        close_backends(inst);
        publish(inst, INSTANCE_STOPPED);
    }
    publish(inst, INSTANCE_DESTROYED);
}

static void do_reboot(struct instance *inst, const char *why)
{
    enum instance_state s = current_state(inst);
    if (s != INSTANCE_RUNNING && s != INSTANCE_STARTING && s != INSTANCE_REPAIRING)
        return;
    publish(inst, INSTANCE_REBOOTING);
    log_msg(LOG_INFO, "instance", "rebooting: %s", why);
    /* A reboot is a fresh machine from the same effective spec. */
    drop_machine(inst);
    struct cella_errors errs = {0};
    struct machine *m = NULL;
    int r = build_machine(inst, &m, &errs);
    if (r == 0 && (r = machine_start(m)) < 0)
        machine_destroy(m);
    if (r < 0) {
        char why2[CELLA_ERR_MESSAGE_MAX + 16];
        snprintf(why2, sizeof(why2), "reboot: %s",
                 errs.count ? errs.items[0].message : strerror(-r));
        cella_errors_clear(&errs);
        fail(inst, why2);
        return;
    }
    set_machine(inst, m);
    publish(inst, INSTANCE_RUNNING);
}

static void *worker_main(void *arg)
{
    struct instance *inst = arg;
    for (;;) {
        struct work w = dequeue(inst);
        switch (w.kind) {
        case W_RUN:
            do_run(inst);
            break;
        case W_STOP:
            do_stop(inst, "requested");
            break;
        case W_REBOOT:
            do_reboot(inst, "requested");
            break;
        case W_EV_POWEROFF:
            do_stop(inst, "the guest powered off");
            break;
        case W_EV_RESET:
            do_reboot(inst, w.detail);
            break;
        case W_EV_PANIC:
            /*
             * Like QEMU's default panic action, a panicked guest is stopped
             * for good: the instance fails (its serial history stays
             * readable) rather than leaving a wedged guest Running.
             */
        case W_EV_FAILURE:
            if (current_state(inst) != INSTANCE_DESTROYED && current_state(inst) != INSTANCE_FAILED)
                fail(inst, w.detail);
            break;
        case W_EV_DEGRADED:
            /* Propolis's Repairing: running, but a backend is reconnecting. */
            log_msg(LOG_WARN, "instance", "%s", w.detail);
            if (inst->degraded++ == 0 && current_state(inst) == INSTANCE_RUNNING)
                publish(inst, INSTANCE_REPAIRING);
            break;
        case W_EV_RECOVERED:
            log_msg(LOG_INFO, "instance", "%s", w.detail);
            if (inst->degraded && --inst->degraded == 0 &&
                current_state(inst) == INSTANCE_REPAIRING)
                publish(inst, INSTANCE_RUNNING);
            break;
        case W_QUIT:
            return NULL;
        }
    }
}

/* ---- public API ---- */

int instance_new(const struct instance_host *host, struct instance **out)
{
    struct instance *inst = calloc(1, sizeof(*inst));
    if (!inst)
        return -ENOMEM;
    inst->host = *host;
    pthread_mutex_init(&inst->lock, NULL);
    pthread_mutex_init(&inst->m_lock, NULL);
    pthread_mutex_init(&inst->q_lock, NULL);
    pthread_cond_init(&inst->q_cond, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&inst->changed, &ca);
    pthread_condattr_destroy(&ca);
    spec_init(&inst->spec);
    int r = serial_hub_new(&inst->hub);
    if (r == 0)
        r = -pthread_create(&inst->worker, NULL, worker_main, inst);
    if (r < 0) {
        serial_hub_free(inst->hub);
        free(inst);
        return r;
    }
    inst->worker_started = true;
    serial_hub_set_input(inst->hub, serial_input, inst);
    *out = inst;
    return 0;
}

void instance_free(struct instance *inst)
{
    if (!inst)
        return;
    if (inst->worker_started) {
        enqueue(inst, W_QUIT, NULL);
        pthread_join(inst->worker, NULL);
    }
    drop_machine(inst);
    close_backends(inst);
    serial_hub_free(inst->hub);
    instance_properties_free(&inst->props);
    spec_free(&inst->spec);
    free(inst);
}

/*
 * A NIC without a MAC gets a random locally administered unicast one, once,
 * in the effective spec: it then survives reboots and migration, and is
 * never derived from a key.
 */
static void fill_macs(struct instance_spec *spec)
{
    for (size_t i = 0; i < spec->count; i++) {
        struct spec_component *c = &spec->components[i];
        if (c->kind != SK_VIRTIO_NIC || c->u.virtio_nic.mac.present)
            continue;
        uint8_t *b = c->u.virtio_nic.mac.bytes;
        if (getrandom(b, 6, 0) != 6) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)i;
            memcpy(b, &x, 6);
        }
        b[0] = (uint8_t)((b[0] & 0xfc) | 0x02);
        c->u.virtio_nic.mac.present = true;
    }
}

/* The effective spec: defaults made explicit so they travel with the VM. */
static int fill_effective(struct instance *inst, struct machine *m)
{
    if (inst->spec.board.has_cpuid)
        return 0;
    int r = machine_effective_cpuid(m, &inst->spec.board.cpuid);
    if (r == 0)
        inst->spec.board.has_cpuid = true;
    return r;
}

static int check_spec(const struct instance_spec *spec, struct cella_errors *errs)
{
    int r = spec_validate(spec, errs);
    int h = spec_check_host_support(spec, errs);
    return r < 0 ? r : h;
}

int instance_ensure(struct instance *inst, const struct ensure_request *req,
                    struct cella_errors *errs)
{
    pthread_mutex_lock(&inst->lock);
    if (inst->ensured || inst->initialising) {
        pthread_mutex_unlock(&inst->lock);
        return cella_err(errs, -EEXIST, "", "this server already has an instance");
    }
    inst->initialising = true;
    pthread_mutex_unlock(&inst->lock);

    int r;
    struct machine *m = NULL;
    struct instance_spec spec;
    spec_init(&spec);
    if (req->method != ENSURE_METHOD_SPEC) {
        r = cella_err(errs, -ENOTSUP, "/init/method",
                      "MigrationTarget is not supported by this build of cella yet");
    } else if ((r = check_spec(&req->spec, errs)) == 0 && (r = spec_copy(&spec, &req->spec)) < 0) {
        cella_err(errs, r, "", "out of memory");
    }
    pthread_mutex_lock(&inst->lock);
    if (r == 0) {
        spec_free(&inst->spec);
        inst->spec = spec;
        spec_init(&spec);
    }
    pthread_mutex_unlock(&inst->lock);
    if (r == 0)
        fill_macs(&inst->spec);
    if (r == 0 &&
        (r = backend_set_open(&inst->spec, on_backend_event, inst, &inst->backends, errs)) < 0)
        r = -EINVAL; /* a backend that cannot be opened is the spec's problem: 400 */
    if (r == 0) {
        r = build_machine(inst, &m, errs);
        /*
         * A CPUID the host cannot provide is the spec's problem (400);
         * anything else that stops the build is the server's (500).
         */
        if (r < 0 && r != -ENOTSUP)
            r = -EIO;
    }
    if (r == 0 && (r = fill_effective(inst, m)) < 0)
        cella_err(errs, r, "", "cannot record the effective CPUID");

    pthread_mutex_lock(&inst->lock);
    inst->initialising = false;
    if (r == 0) {
        instance_properties_free(&inst->props);
        r = instance_properties_copy(&inst->props, &req->properties);
    }
    if (r == 0) {
        inst->ensured = true;
        publish_locked(inst, INSTANCE_CREATING);
    } else {
        spec_free(&inst->spec);
    }
    pthread_mutex_unlock(&inst->lock);
    spec_free(&spec);
    if (r < 0) {
        machine_destroy(m);
        close_backends(inst);
        return r;
    }
    set_machine(inst, m);
    return 0;
}

void instance_view_free(struct instance_view *v)
{
    instance_properties_free(&v->properties);
}

/* Caller holds inst->lock. */
static int view_locked(struct instance *inst, struct instance_view *out)
{
    memset(out, 0, sizeof(*out));
    out->gen = inst->gen;
    out->state = inst->state;
    return instance_properties_copy(&out->properties, &inst->props);
}

int instance_get(struct instance *inst, struct instance_view *out)
{
    pthread_mutex_lock(&inst->lock);
    int r = inst->ensured ? view_locked(inst, out) : -ENOENT;
    pthread_mutex_unlock(&inst->lock);
    return r;
}

int instance_spec_get(struct instance *inst, struct spec_get_response *out)
{
    pthread_mutex_lock(&inst->lock);
    int r = -ENOENT;
    if (inst->ensured) {
        spec_get_response_init(out);
        out->state = inst->state;
        out->status = SPEC_STATUS_PRESENT;
        r = instance_properties_copy(&out->properties, &inst->props);
        if (r == 0)
            r = spec_copy(&out->spec, &inst->spec);
        if (r < 0)
            spec_get_response_free(out);
    }
    pthread_mutex_unlock(&inst->lock);
    return r;
}

int instance_request_state(struct instance *inst, enum instance_request req,
                           struct cella_errors *errs)
{
    pthread_mutex_lock(&inst->lock);
    bool ensured = inst->ensured, init = inst->initialising;
    enum instance_state s = inst->state;
    pthread_mutex_unlock(&inst->lock);
    if (init)
        return cella_err(errs, -EAGAIN, "", "the instance is still being created");
    if (!ensured)
        return cella_err(errs, -ENOENT, "", "no instance");
    const char *why = instance_refusal(req, s);
    if (why)
        return cella_err(errs, -EPERM, "", "%s cannot be done now: %s (state %s)",
                         instance_request_name(req), why, instance_state_name(s));
    static const enum work_kind kinds[] = {W_RUN, W_STOP, W_REBOOT};
    if (enqueue(inst, kinds[req], NULL) < 0)
        return cella_err(errs, -EAGAIN, "", "too many requests pending; try again");
    return 0;
}

int instance_wait(struct instance *inst, uint64_t gen, int timeout_ms, struct instance_view *out)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&inst->lock);
    int r = 0;
    while (r == 0 && inst->ensured && inst->gen < gen && !inst->gone) {
        if (pthread_cond_timedwait(&inst->changed, &inst->lock, &deadline) == ETIMEDOUT)
            r = -ETIMEDOUT;
    }
    if (!inst->ensured)
        r = -ENOENT;
    else if (inst->gen < gen && inst->gone)
        r = -ESHUTDOWN;
    if (r != -ENOENT && r != -ESHUTDOWN) {
        int v = view_locked(inst, out);
        r = v < 0 ? v : r;
    }
    pthread_mutex_unlock(&inst->lock);
    return r;
}

int instance_nmi(struct instance *inst)
{
    pthread_mutex_lock(&inst->lock);
    bool ensured = inst->ensured;
    enum instance_state s = inst->state;
    pthread_mutex_unlock(&inst->lock);
    if (!ensured)
        return -ENOENT;
    if (s != INSTANCE_RUNNING)
        return -EAGAIN;
    pthread_mutex_lock(&inst->m_lock);
    int r = inst->m ? machine_nmi(inst->m) : -EAGAIN;
    pthread_mutex_unlock(&inst->m_lock);
    return r;
}

struct serial_hub *instance_serial(struct instance *inst)
{
    return inst->hub;
}
