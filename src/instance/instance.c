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
#include "migrate/source.h"
#include "migrate/target.h"
#include "spec/spec_json.h"
#include "common/clock.h"
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
    W_MIGRATE_OUT,  /* arg: struct mig_out_req */
    W_MIGRATE_IN,   /* stage 2 of a migration target */
    W_QUIT
};

struct work {
    enum work_kind kind;
    char detail[160];
    void *arg;
};

/* A source-side migration handed from a connection thread to the worker. */
struct mig_out_req {
    const char *id;
    int sock;
    const void *early;
    size_t early_len;
    struct cella_errors *errs;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int rc;
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

    /* Live migration. mig_in/mig_out under `lock`; the rest worker/ensure. */
    struct instance_migration mig_in, mig_out;
    bool mig_out_busy;                       /* under `lock` */
    uint32_t fail_exports_left;              /* migration_failure_injector.fail_exports */
    uint32_t downtime_ms;                    /* 0: the driver default (under `lock`) */
    uint64_t max_bandwidth;                  /* bytes/s, 0: unlimited (under `lock`) */
    bool no_auto_converge;                   /* under `lock` */
    bool no_delta;                           /* under `lock` */
    uint64_t delta_cache;                    /* bytes, 0: the default (under `lock`) */
    struct mig_target *target;               /* between stage 1 (ensure) and stage 2 (worker) */
    const struct ensure_request *target_req; /* during stage 1 only */
    struct machine *target_m;                /* what stage 1's prepare built */
    char *report;                            /* the last outgoing migration's report (JSON) */

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

static int enqueue_arg(struct instance *inst, enum work_kind kind, const char *detail, void *arg)
{
    pthread_mutex_lock(&inst->q_lock);
    int r = 0;
    if (inst->q_len == QUEUE_MAX) {
        r = -EAGAIN;
    } else {
        struct work *w = &inst->queue[(inst->q_head + inst->q_len++) % QUEUE_MAX];
        w->kind = kind;
        w->arg = arg;
        snprintf(w->detail, sizeof(w->detail), "%s", detail ? detail : "");
        pthread_cond_signal(&inst->q_cond);
    }
    pthread_mutex_unlock(&inst->q_lock);
    return r;
}

static int enqueue(struct instance *inst, enum work_kind kind, const char *detail)
{
    return enqueue_arg(inst, kind, detail, NULL);
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

static int build_machine(struct instance *inst, bool incoming, struct machine **out,
                         struct cella_errors *errs)
{
    struct machine_callbacks cb = {
        .ctx = inst, .event = on_machine_event, .serial_out = on_serial_out};
    struct machine_host host = inst->host.boot;
    host.incoming = incoming;
    return machine_create(&inst->spec, &host, inst->backends, &cb, out, errs);
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
    int r = build_machine(inst, false, &m, &errs);
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

static void do_migrate_out(struct instance *inst, struct mig_out_req *rq);
static void do_migrate_in(struct instance *inst);

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
        case W_MIGRATE_OUT:
            do_migrate_out(inst, w.arg);
            break;
        case W_MIGRATE_IN:
            do_migrate_in(inst);
            break;
        case W_QUIT:
            return NULL;
        }
    }
}

/* ---- live migration ---- */

static int check_spec(const struct instance_spec *spec, struct cella_errors *errs);

/* The failure injector's count (fail_imports when `imports`), 0 without one. */
static uint32_t injector(const struct instance_spec *spec, bool imports)
{
    for (size_t i = 0; i < spec->count; i++) {
        const struct spec_component *c = &spec->components[i];
        if (c->kind == SK_MIGRATION_FAILURE_INJECTOR)
            return imports ? c->u.migration_failure_injector.fail_imports
                           : c->u.migration_failure_injector.fail_exports;
    }
    return 0;
}

/* Publishes a migration phase: a new generation, so monitors see it. */
static void set_mig_phase(struct instance *inst, bool out, enum mig_phase ph)
{
    pthread_mutex_lock(&inst->lock);
    struct instance_migration *mg = out ? &inst->mig_out : &inst->mig_in;
    mg->state = mig_phase_name(ph);
    inst->gen++;
    pthread_cond_broadcast(&inst->changed);
    pthread_mutex_unlock(&inst->lock);
    log_msg(LOG_INFO, "migrate", "%s migration %s: %s", out ? "outgoing" : "incoming", mg->id,
            mig_phase_name(ph));
}

static void src_phase(void *ctx, enum mig_phase ph)
{
    set_mig_phase(ctx, true, ph);
}

/*
 * Tests only: CELLA_MIGRATE_TEST_HOLD="PHASE:MS" in a target server's
 * environment holds its incoming migration MS ms (at most 60 s) once it
 * announced PHASE, so a test can act inside a phase that is otherwise a
 * few milliseconds long (kill the target during device state).
 */
static void test_hold(enum mig_phase ph)
{
    const char *h = getenv("CELLA_MIGRATE_TEST_HOLD");
    const char *name = mig_phase_name(ph);
    size_t n = strlen(name);
    if (!h || strncmp(h, name, n) != 0 || h[n] != ':')
        return;
    long ms = strtol(h + n + 1, NULL, 10);
    if (ms <= 0 || ms > 60000)
        return;
    log_msg(LOG_WARN, "migrate", "holding the incoming migration %ld ms in %s (test hook)", ms,
            name);
    cella_sleep_us((uint64_t)ms * 1000);
}

static void tgt_phase(void *ctx, enum mig_phase ph)
{
    set_mig_phase(ctx, false, ph);
    test_hold(ph);
}

/* COM1 history, oldest first: the kept head, then the kept tail. */
static int src_serial(void *ctx, mig_serial_emit_fn emit, void *ectx)
{
    struct instance *inst = ctx;
    uint64_t total = serial_hub_total(inst->hub);
    static uint8_t buf[64 << 10]; /* worker thread only */
    uint64_t off = 0;
    while (off < total) {
        size_t len = 0;
        uint64_t last = 0;
        int r = serial_hub_read(inst->hub, true, off, sizeof(buf), buf, &len, &last);
        if (r == -ERANGE) {
            /* The gap between head and tail: continue where the tail starts. */
            off = total > SERIAL_HISTORY_TAIL ? total - SERIAL_HISTORY_TAIL : total;
            if (off <= SERIAL_HISTORY_HEAD)
                off = SERIAL_HISTORY_HEAD;
            continue;
        }
        if (r < 0 || len == 0)
            break;
        if ((r = emit(ectx, off, buf, len, total)) < 0)
            return r;
        off += len;
    }
    return 0;
}

static int src_blobs(void *ctx, mig_blob_emit_fn emit, void *ectx)
{
    struct instance *inst = ctx;
    return backend_set_foreach_blob(inst->backends, emit, ectx);
}

static int src_release(void *ctx, struct cella_errors *errs)
{
    (void)errs;
    struct instance *inst = ctx;
    backend_set_release(inst->backends);
    return 0;
}

static int src_reacquire(void *ctx, struct cella_errors *errs)
{
    struct instance *inst = ctx;
    return backend_set_activate(inst->backends, errs);
}

static void keep_report(struct instance *inst, const char *id, const struct mig_source_result *res,
                        const struct cella_errors *errs)
{
    const struct mig_stats *st = &res->stats;
    json_t *phases = json_object();
    for (int i = 0; i < MIG_PHASE_COUNT && phases; i++) {
        const struct mig_phase_stats *p = &st->phase[i];
        if (!p->us && !p->bytes && !p->messages)
            continue;
        json_object_set_new(phases, mig_phase_name((enum mig_phase)i),
                            json_pack("{s:f,s:I,s:I,s:I,s:i}", "ms", (double)p->us / 1e3, "bytes",
                                      (json_int_t)p->bytes, "pages", (json_int_t)p->pages,
                                      "zero_pages", (json_int_t)p->zero_pages, "passes",
                                      (int)p->passes));
    }
    json_t *j = json_pack(
        "{s:s,s:s,s:f,s:f,s:i,s:b,s:s,s:I,s:I,s:I,s:i,s:i,s:I,s:I,s:I,s:o,s:s}", "migration_id", id,
        "outcome", mig_outcome_name(res->outcome), "blackout_ms", (double)st->blackout_us / 1e3,
        "total_ms", (double)st->total_us / 1e3, "passes", (int)st->passes, "converged",
        st->converged, "precopy_end", st->precopy_end ? st->precopy_end : "", "bandwidth_bps",
        (json_int_t)st->bandwidth_bps, "predicted_downtime_ms",
        (json_int_t)st->predicted_downtime_ms, "final_dirty_pages",
        (json_int_t)st->final_dirty_pages, "throttle_pct", (int)st->throttle_pct,
        "throttled_passes", (int)st->throttled_passes, "delta_pages", (json_int_t)st->delta_pages,
        "delta_cache_bytes", (json_int_t)st->delta_cache_bytes, "deferred_pages",
        (json_int_t)st->deferred_pages, "phases", phases ? phases : json_object(), "error",
        errs->count ? errs->items[0].message : "");
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(j);
    pthread_mutex_lock(&inst->lock);
    free(inst->report);
    inst->report = text;
    pthread_mutex_unlock(&inst->lock);
    if (text)
        log_msg(LOG_INFO, "migrate", "outgoing migration report: %s", text);
}

static int run_source(struct instance *inst, struct mig_out_req *rq)
{
    int rc = 0;
    json_t *wire = spec_to_wire(&inst->spec);
    char *text = wire ? json_dumps(wire, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(wire);
    struct mig_stream *st = NULL;
    if (!text || (rc = mig_stream_server(rq->sock, false, rq->early, rq->early_len, &st)) < 0) {
        free(text);
        return cella_err(rq->errs, rc < 0 ? rc : -ENOMEM, "", "cannot start the migration stream");
    }
    pthread_mutex_lock(&inst->lock);
    inst->mig_out.present = true;
    snprintf(inst->mig_out.id, sizeof(inst->mig_out.id), "%s", rq->id);
    inst->mig_out.state = mig_phase_name(MIG_PHASE_SYNC);
    publish_locked(inst, INSTANCE_MIGRATING);
    pthread_mutex_unlock(&inst->lock);

    static const struct mig_source_hooks hooks = {
        .serial_history = src_serial,
        .blobs = src_blobs,
        .release_backends = src_release,
        .reacquire_backends = src_reacquire,
        .phase = src_phase,
    };
    struct mig_source_params p = {
        .vm_ops = &mig_machine_vm_ops,
        .vm = inst->m,
        .hooks = &hooks,
        .ctx = inst,
        .spec_wire_json = text,
        .spec_len = strlen(text),
    };
    pthread_mutex_lock(&inst->lock);
    p.cfg.downtime_ms = inst->downtime_ms;
    p.cfg.max_bandwidth = inst->max_bandwidth;
    p.cfg.no_auto_converge = inst->no_auto_converge;
    p.cfg.no_delta = inst->no_delta;
    p.cfg.delta_cache = inst->delta_cache;
    pthread_mutex_unlock(&inst->lock);
    const char *stall = getenv("CELLA_MIGRATE_STALL_MS");
    if (stall)
        p.cfg.stall_ms = (int)strtol(stall, NULL, 10);
    if (inst->fail_exports_left) {
        p.cfg.fail_exports = true;
        inst->fail_exports_left--;
    }
    struct mig_source_result res;
    memset(&res, 0, sizeof(res));
    rc = mig_source_run(st, &p, &res, rq->errs);
    mig_stream_free(st);
    free(text);
    keep_report(inst, rq->id, &res, rq->errs);
    if (res.outcome == MIG_OUTCOME_COMMITTED) {
        char ctl[MIG_MAX_ADDR + 96];
        snprintf(ctl, sizeof(ctl), "{\"Migrating\":{\"destination\":\"%s\",\"from_start\":%llu}}",
                 res.target_addr, (unsigned long long)serial_hub_total(inst->hub));
        serial_hub_broadcast_control(inst->hub, ctl);
        set_mig_phase(inst, true, MIG_PHASE_FINISH);
        publish(inst, INSTANCE_STOPPING);
        drop_machine(inst);
        close_backends(inst);
        publish(inst, INSTANCE_STOPPED);
        publish(inst, INSTANCE_DESTROYED);
        rc = 0;
    } else if (res.outcome == MIG_OUTCOME_FAILED && res.resumed) {
        set_mig_phase(inst, true, MIG_PHASE_ERROR);
        publish(inst, INSTANCE_RUNNING);
        if (rc >= 0)
            rc = -EIO;
    } else {
        set_mig_phase(inst, true, MIG_PHASE_ERROR);
        fail(inst, res.outcome == MIG_OUTCOME_UNKNOWN
                       ? "migration outcome unknown: the target may be running the guest"
                       : "migration failed and the guest could not be resumed");
        if (rc >= 0)
            rc = -EIO;
    }
    return rc;
}

static void do_migrate_out(struct instance *inst, struct mig_out_req *rq)
{
    int rc;
    enum instance_state s = current_state(inst);
    if (s != INSTANCE_RUNNING)
        rc = cella_err(rq->errs, -EPERM, "", "only a Running instance can migrate (it is %s)",
                       instance_state_name(s));
    else
        rc = run_source(inst, rq);
    pthread_mutex_lock(&rq->lock);
    rq->rc = rc;
    rq->done = true;
    pthread_cond_signal(&rq->cond);
    pthread_mutex_unlock(&rq->lock);
}

int instance_migrate_out(struct instance *inst, const char *migration_id, int sock,
                         const void *early, size_t early_len, struct cella_errors *errs)
{
    pthread_mutex_lock(&inst->lock);
    bool ensured = inst->ensured, busy = inst->mig_out_busy;
    if (ensured && !busy)
        inst->mig_out_busy = true;
    pthread_mutex_unlock(&inst->lock);
    if (!ensured)
        return cella_err(errs, -ENOENT, "", "no instance");
    if (busy)
        return cella_err(errs, -EBUSY, "", "a migration out of this instance is running");
    struct mig_out_req rq = {.id = migration_id,
                             .sock = sock,
                             .early = early,
                             .early_len = early_len,
                             .errs = errs,
                             .lock = PTHREAD_MUTEX_INITIALIZER,
                             .cond = PTHREAD_COND_INITIALIZER};
    int r = enqueue_arg(inst, W_MIGRATE_OUT, NULL, &rq);
    if (r == 0) {
        pthread_mutex_lock(&rq.lock);
        while (!rq.done)
            pthread_cond_wait(&rq.cond, &rq.lock);
        pthread_mutex_unlock(&rq.lock);
        r = rq.rc;
    } else {
        cella_err(errs, r, "", "the instance is busy");
    }
    pthread_mutex_lock(&inst->lock);
    inst->mig_out_busy = false;
    pthread_mutex_unlock(&inst->lock);
    return r;
}

int instance_set_migration_settings(struct instance *inst, const struct instance_mig_settings *s)
{
    pthread_mutex_lock(&inst->lock);
    bool ensured = inst->ensured;
    if (ensured && s->set_downtime)
        inst->downtime_ms = s->downtime_ms;
    if (ensured && s->set_bandwidth)
        inst->max_bandwidth = s->max_bandwidth;
    if (ensured && s->set_auto_converge)
        inst->no_auto_converge = !s->auto_converge;
    if (ensured && s->set_delta_cache) {
        inst->no_delta = s->delta_cache == 0;
        inst->delta_cache = s->delta_cache;
    }
    pthread_mutex_unlock(&inst->lock);
    return ensured ? 0 : -ENOENT;
}

int instance_migration_report(struct instance *inst, char **json)
{
    pthread_mutex_lock(&inst->lock);
    *json = inst->report ? strdup(inst->report) : NULL;
    bool had = inst->report != NULL;
    pthread_mutex_unlock(&inst->lock);
    if (!had)
        return -ENOENT;
    return *json ? 0 : -ENOMEM;
}

/* -- target -- */

static int tgt_accepts(void *ctx, const char *kind, uint32_t offered, uint32_t *accept)
{
    (void)ctx;
    return machine_payload_accepts(kind, offered, accept);
}

/*
 * The source's spec: decode, apply the caller's replacements (backends
 * only), prove the guest sees nothing different, check this host, then
 * build the machine against probed (not opened) backends.
 */
static int tgt_prepare(void *ctx, const char *json, size_t len, bool check_only,
                       struct mig_target_vm *out, struct cella_errors *errs)
{
    struct instance *inst = ctx;
    const struct ensure_request *req = inst->target_req;
    json_t *j = NULL;
    struct instance_spec src, amended;
    spec_init(&src);
    spec_init(&amended);
    int r = cella_json_parse(json, len, &j, errs);
    if (r == 0)
        r = spec_from_wire(j, &src, errs);
    json_decref(j);
    if (r == 0)
        r = spec_apply_replacements(&src, req->replace, req->nreplace, &amended, errs);
    if (r == 0) {
        struct spec_diff d = {0};
        int n = spec_guest_diff(&src, &amended, &d);
        for (int i = 0; i < n; i++)
            cella_err(errs, -EINVAL, d.items[i].pointer,
                      "the replacement changes what the guest sees: %s", d.items[i].text);
        spec_diff_free(&d);
        if (n != 0)
            r = n < 0 ? n : -EINVAL;
    }
    if (r == 0)
        r = check_spec(&amended, errs);
    spec_free(&src);
    if (r < 0 || check_only) {
        spec_free(&amended);
        return r < 0 ? r : 0;
    }
    pthread_mutex_lock(&inst->lock);
    spec_free(&inst->spec);
    inst->spec = amended;
    pthread_mutex_unlock(&inst->lock);
    r = backend_set_open(&inst->spec, BACKEND_SET_DEFER, on_backend_event, inst, &inst->backends,
                         errs);
    struct machine *m = NULL;
    if (r == 0)
        r = build_machine(inst, true, &m, errs);
    if (r < 0)
        return r;
    inst->target_m = m;
    out->ops = &mig_machine_vm_ops;
    out->vm = m;
    out->fail_imports = injector(&inst->spec, true) > 0;
    return 0;
}

static int tgt_serial(void *ctx, uint64_t offset, const uint8_t *data, size_t len, uint64_t total,
                      struct cella_errors *errs)
{
    (void)total;
    (void)errs;
    struct instance *inst = ctx;
    serial_hub_restore(inst->hub, offset, data, len);
    return 0;
}

static int tgt_blob(void *ctx, const char *key, const uint8_t *data, size_t len,
                    struct cella_errors *errs)
{
    struct instance *inst = ctx;
    int r = backend_set_blob_contents(inst->backends, key, data, len);
    if (r < 0)
        return cella_err(errs, r, "", "blob contents for %s do not fit its backend", key);
    return 0;
}

static int tgt_open_backends(void *ctx, struct cella_errors *errs)
{
    struct instance *inst = ctx;
    return backend_set_activate(inst->backends, errs);
}

static const struct mig_target_hooks target_hooks = {
    .payload_accepts = tgt_accepts,
    .prepare = tgt_prepare,
    .serial_history = tgt_serial,
    .blob = tgt_blob,
    .open_backends = tgt_open_backends,
    .phase = tgt_phase,
};

/* Stage 1, inside the ensure request. */
static int ensure_target(struct instance *inst, const struct ensure_request *req,
                         struct machine **m, struct cella_errors *errs)
{
    struct mig_target_params p = {
        .src_addr = req->src_addr,
        .migration_id = req->migration_id,
        .advertise_addr = inst->host.api_addr,
        .hooks = &target_hooks,
        .ctx = inst,
    };
    const char *stall = getenv("CELLA_MIGRATE_STALL_MS");
    if (stall)
        p.cfg.stall_ms = (int)strtol(stall, NULL, 10);
    inst->target_req = req;
    inst->target_m = NULL;
    struct mig_target *t = NULL;
    struct cella_errors mine = {0};
    int r = mig_target_start(&p, &t, &mine);
    inst->target_req = NULL;
    *m = inst->target_m; /* destroyed by the caller if r < 0 */
    inst->target_m = NULL;
    /* Whatever prepare found is the spec's problem (400); the rest is a 500. */
    bool spec_problem = false;
    for (size_t i = 0; i < mine.count; i++) {
        if (mine.items[i].pointer[0])
            spec_problem = true;
        cella_err(errs, mine.items[i].code, mine.items[i].pointer, "%s", mine.items[i].message);
    }
    cella_errors_clear(&mine);
    if (r < 0)
        return spec_problem ? -EINVAL : -EIO;
    inst->target = t;
    return 0;
}

/* Stage 2, on the worker. */
static void do_migrate_in(struct instance *inst)
{
    struct cella_errors errs = {0};
    int r = inst->target ? mig_target_run(inst->target, &errs) : -EINVAL;
    mig_target_free(inst->target);
    inst->target = NULL;
    if (r == 0) {
        set_mig_phase(inst, false, MIG_PHASE_FINISH);
        publish(inst, INSTANCE_RUNNING);
    } else {
        set_mig_phase(inst, false, MIG_PHASE_ERROR);
        char why[CELLA_ERR_MESSAGE_MAX + 32];
        snprintf(why, sizeof(why), "incoming migration failed: %s",
                 errs.count ? errs.items[0].message : strerror(-r));
        fail(inst, why);
    }
    cella_errors_clear(&errs);
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
    cella_cond_init_monotonic(&inst->changed);
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

/* An ensure with a complete spec: validate, open backends, build. */
static int ensure_spec(struct instance *inst, const struct ensure_request *req, struct machine **m,
                       struct cella_errors *errs)
{
    struct instance_spec spec;
    spec_init(&spec);
    int r = check_spec(&req->spec, errs);
    if (r == 0 && (r = spec_copy(&spec, &req->spec)) < 0)
        cella_err(errs, r, "", "out of memory");
    if (r < 0)
        return r;
    pthread_mutex_lock(&inst->lock);
    spec_free(&inst->spec);
    inst->spec = spec;
    pthread_mutex_unlock(&inst->lock);
    fill_macs(&inst->spec);
    if (backend_set_open(&inst->spec, 0, on_backend_event, inst, &inst->backends, errs) < 0)
        return -EINVAL; /* a backend that cannot be opened is the spec's problem: 400 */
    r = build_machine(inst, false, m, errs);
    /*
     * A CPUID the host cannot provide is the spec's problem (400);
     * anything else that stops the build is the server's (500).
     */
    if (r < 0)
        return r == -ENOTSUP ? r : -EIO;
    if ((r = fill_effective(inst, *m)) < 0)
        cella_err(errs, r, "", "cannot record the effective CPUID");
    return r;
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

    struct machine *m = NULL;
    bool target = req->method == ENSURE_METHOD_MIGRATION_TARGET;
    int r = target ? ensure_target(inst, req, &m, errs) : ensure_spec(inst, req, &m, errs);

    pthread_mutex_lock(&inst->lock);
    inst->initialising = false;
    if (r == 0) {
        instance_properties_free(&inst->props);
        r = instance_properties_copy(&inst->props, &req->properties);
    }
    if (r == 0) {
        inst->ensured = true;
        inst->fail_exports_left = injector(&inst->spec, false);
        if (target) {
            inst->mig_in.present = true;
            snprintf(inst->mig_in.id, sizeof(inst->mig_in.id), "%s", req->migration_id);
            inst->mig_in.state = mig_phase_name(MIG_PHASE_SYNC);
        }
        publish_locked(inst, target ? INSTANCE_MIGRATING : INSTANCE_CREATING);
    } else {
        spec_free(&inst->spec);
    }
    pthread_mutex_unlock(&inst->lock);
    if (r < 0) {
        mig_target_free(inst->target);
        inst->target = NULL;
        machine_destroy(m);
        close_backends(inst);
        return r;
    }
    set_machine(inst, m);
    if (target)
        enqueue(inst, W_MIGRATE_IN, NULL); /* stage 2 */
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
    out->migration_in = inst->mig_in;
    out->migration_out = inst->mig_out;
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
    struct timespec deadline = cella_deadline_ns((uint64_t)timeout_ms * 1000000u);
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
