/* SPDX-License-Identifier: MPL-2.0 */
/* The migration target driver (see target.h and docs/migration.md). */
#include "migrate/target.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "common/log.h"
#include "migrate/delta.h"

#define PATH_MAX_LEN 200

struct blob_acc {
    char key[MIG_MAX_BLOB_KEY + 1];
    uint8_t *buf;
    size_t len, cap;
    uint64_t total;
    bool open;
};

struct mig_target {
    struct mig_target_params p;
    struct mig_stream *s;
    struct cella_errors *errs;
    struct mig_out out;
    struct mig_stats st;
    uint32_t version;

    struct mig_target_vm vm;
    bool built;
    struct guest_mem *mem;
    uint64_t npages;
    uint64_t *seen; /* pages received at least once */
    uint64_t nseen;
    /*
     * Pages known to hold zeroes (NULL: none known): RAM's holes at
     * the first RAM batch, then kept true (a zero page written sets it, a
     * data page clears it), so a zero page is only written where needed.
     * Untouched RAM is not allocated by writing zeroes into it.
     */
    uint64_t *zero;
    bool zero_ready;

    struct mig_kind_version accepted[MIG_MAX_KINDS];
    size_t naccepted;

    enum mig_phase phase;
    uint64_t t0, phase_t0, deadline;

    bool serial_started;
    uint64_t serial_next, serial_total;

    struct blob_acc blob;
    char (*blobs_done)[MIG_MAX_BLOB_KEY + 1];
    size_t nblobs_done;

    bool peer_gave_up;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void enter(struct mig_target *t, enum mig_phase ph)
{
    uint64_t n = now_us();
    t->st.phase[t->phase].us += n - t->phase_t0;
    t->phase_t0 = n;
    t->phase = ph;
    if (t->p.hooks->phase)
        t->p.hooks->phase(t->p.ctx, ph);
}

static int stream_err(struct mig_target *t, int r, const char *doing)
{
    return cella_err(t->errs, r, "", "migration: %s: %s", doing, mig_stream_error(t->s));
}

static int send_msg(struct mig_target *t, const struct mig_msg *m)
{
    t->out.len = 0;
    int r = mig_msg_encode(m, &t->out);
    if (r < 0)
        return cella_err(t->errs, r, "", "migration: cannot encode %s", mig_msg_type_name(m->type));
    r = mig_stream_send(t->s, t->out.buf, t->out.len);
    return r < 0 ? stream_err(t, r, mig_msg_type_name(m->type)) : 0;
}

/* Receives and decodes; the source's ERROR becomes a failure with its reason. */
static int recv_msg(struct mig_target *t, struct mig_msg *m, const char *waiting_for)
{
    const uint8_t *buf;
    size_t len;
    int r = mig_stream_recv(t->s, &buf, &len);
    if (r < 0) {
        char what[96];
        snprintf(what, sizeof(what), "waiting for %s", waiting_for);
        return stream_err(t, r, what);
    }
    t->st.phase[t->phase].bytes += len;
    t->st.phase[t->phase].messages++;
    if ((r = mig_msg_decode(buf, len, m, t->errs)) < 0)
        return r;
    if (m->type == MIG_MSG_ERROR) {
        t->peer_gave_up = true;
        return cella_err(t->errs, -ECONNABORTED, "", "source: %.*s", (int)m->u.reason.len,
                         m->u.reason.p);
    }
    return 0;
}

static int unexpected(struct mig_target *t, const struct mig_msg *m, const char *wanted)
{
    return cella_err(t->errs, -EPROTO, "", "migration: the source sent %s where %s was due",
                     mig_msg_type_name(m->type), wanted);
}

/* Best effort: tells the peer why we give up (not if it gave up first). */
static void send_error(struct mig_target *t, enum mig_msg_type type, size_t first_err)
{
    if (t->peer_gave_up)
        return;
    char why[MIG_MAX_REASON];
    if (t->errs && t->errs->count > first_err)
        snprintf(why, sizeof(why), "%s", t->errs->items[first_err].message);
    else
        snprintf(why, sizeof(why), "the target gave up");
    struct mig_msg m = {.type = type, .u.reason = mig_str_of(why)};
    t->out.len = 0;
    if (mig_msg_encode(&m, &t->out) == 0)
        mig_stream_send(t->s, t->out.buf, t->out.len);
}

/* ---- stage 1 ------------------------------------------------------------ */

static int hello(struct mig_target *t)
{
    struct mig_msg m = {.type = MIG_MSG_HELLO};
    uint32_t newest = MIG_PROTO_VERSION_NEWEST;
    if (t->p.cfg.max_version >= MIG_PROTO_VERSION_OLDEST && t->p.cfg.max_version < newest)
        newest = t->p.cfg.max_version;
    for (uint32_t v = newest; v >= MIG_PROTO_VERSION_OLDEST && v; v--)
        m.u.hello.versions[m.u.hello.nversions++] = v;
    m.u.hello.addr = mig_str_of(t->p.advertise_addr);
    if (m.u.hello.addr.len > MIG_MAX_ADDR)
        m.u.hello.addr.len = 0;
    int r = send_msg(t, &m);
    if (r < 0 || (r = recv_msg(t, &m, "HELLO_ACK")) < 0)
        return r;
    if (m.type != MIG_MSG_HELLO_ACK)
        return unexpected(t, &m, "HELLO_ACK");
    if (m.u.version < MIG_PROTO_VERSION_OLDEST || m.u.version > MIG_PROTO_VERSION_NEWEST)
        return cella_err(t->errs, -EPROTO, "",
                         "migration: the source chose protocol version %u, which was not offered",
                         m.u.version);
    t->version = t->st.version = m.u.version;
    return 0;
}

static void add_reason(struct mig_msg_preamble_ack *a, const struct cella_error *e)
{
    if (a->nreasons == MIG_MAX_REASONS)
        return;
    a->reasons[a->nreasons].pointer = mig_str_of(e->pointer);
    a->reasons[a->nreasons].message = mig_str_of(e->message);
    a->nreasons++;
}

/* Negotiates payload versions and calls prepare; fills the ack. */
static int preamble(struct mig_target *t, struct mig_msg *m, struct mig_msg *ack)
{
    int r = recv_msg(t, m, "PREAMBLE");
    if (r < 0)
        return r;
    if (m->type != MIG_MSG_PREAMBLE)
        return unexpected(t, m, "PREAMBLE");
    const struct mig_msg_preamble *pre = &m->u.preamble;
    size_t first = t->errs ? t->errs->count : 0;
    int bad = 0;
    for (uint32_t i = 0; i < pre->nkinds; i++) {
        const struct mig_kind_version *k = &pre->kinds[i];
        uint32_t acc = 0;
        int a = t->p.hooks->payload_accepts
                    ? t->p.hooks->payload_accepts(t->p.ctx, k->kind, k->version, &acc)
                    : -ENOTSUP;
        if (a < 0) {
            bad =
                cella_err(t->errs, -ENOTSUP, "",
                          "payload kind \"%s\" (versions %u to %u) cannot be loaded by this build",
                          k->kind, k->min_version, k->version);
        } else if (acc < k->min_version || acc > k->version) {
            bad = cella_err(t->errs, -ENOTSUP, "",
                            "payload kind \"%s\": the source writes versions %u to %u, this build "
                            "reads version %u",
                            k->kind, k->min_version, k->version, acc);
        } else {
            struct mig_kind_version *out = &t->accepted[t->naccepted++];
            *out = *k;
            out->version = out->min_version = acc;
        }
    }
    /* prepare sees the spec even when negotiation failed, to report every reason. */
    memset(&t->vm, 0, sizeof(t->vm));
    size_t before = cella_errors_total(t->errs);
    int pr = t->p.hooks->prepare(t->p.ctx, pre->spec_json.p, pre->spec_json.len, bad < 0, &t->vm,
                                 t->errs);
    if (pr < 0 && cella_errors_total(t->errs) == before)
        pr = cella_err(t->errs, pr, "", "the target cannot host this VM: %s", strerror(-pr));
    if (pr == 0 && bad == 0) {
        t->built = true;
        t->mem = t->vm.ops && t->vm.ops->guest_mem ? t->vm.ops->guest_mem(t->vm.vm) : NULL;
        if (!t->mem || !t->mem->base || t->mem->size != pre->ram_bytes)
            bad = cella_err(t->errs, -EINVAL, "/board/memory_mb",
                            "the machine built here has %llu bytes of RAM, the source %llu",
                            t->mem ? (unsigned long long)t->mem->size : 0ull,
                            (unsigned long long)pre->ram_bytes);
    }
    if (pr < 0 || bad < 0) {
        ack->u.ack.accepted = false;
        for (size_t i = first; t->errs && i < t->errs->count; i++)
            add_reason(&ack->u.ack, &t->errs->items[i]);
        if (!ack->u.ack.nreasons) {
            static const struct cella_error generic = {.message = "the target refused"};
            add_reason(&ack->u.ack, &generic);
        }
        return pr < 0 ? pr : bad;
    }
    ack->u.ack.accepted = true;
    ack->u.ack.nkinds = (uint32_t)t->naccepted;
    memcpy(ack->u.ack.kinds, t->accepted, t->naccepted * sizeof(t->accepted[0]));
    return 0;
}

static int stage1(struct mig_target *t)
{
    enter(t, MIG_PHASE_SYNC);
    int r = hello(t);
    if (r < 0)
        return r;
    struct mig_msg *m = calloc(1, sizeof(*m));
    struct mig_msg *ack = calloc(1, sizeof(*ack));
    if (!m || !ack) {
        free(m);
        free(ack);
        return -ENOMEM;
    }
    ack->type = MIG_MSG_PREAMBLE_ACK;
    r = preamble(t, m, ack);
    if (r < 0 && ack->u.ack.nreasons) {
        send_msg(t, ack);       /* the refusal, best effort */
        t->peer_gave_up = true; /* no ERROR after it */
    } else if (r == 0) {
        r = send_msg(t, ack);
    }
    free(m);
    free(ack);
    if (r == 0) {
        t->npages = t->mem->size / GUEST_PAGE_SIZE;
        t->seen = calloc((size_t)((t->npages + 63) / 64), 8);
        if (!t->seen)
            r = cella_err(t->errs, -ENOMEM, "", "migration: out of memory");
    }
    return r;
}

int mig_target_start(const struct mig_target_params *p, struct mig_target **out,
                     struct cella_errors *errs)
{
    *out = NULL;
    struct mig_target *t = calloc(1, sizeof(*t));
    if (!t) {
        mig_stream_free(p->stream);
        return cella_err(errs, -ENOMEM, "", "migration: out of memory");
    }
    t->p = *p;
    t->p.stream = NULL;
    t->errs = errs;
    size_t first = errs ? errs->count : 0;
    t->t0 = t->phase_t0 = now_us();
    mig_out_init(&t->out);
    int r = 0;
    if (p->stream) {
        t->s = p->stream;
    } else {
        char path[PATH_MAX_LEN];
        int n = snprintf(path, sizeof(path), "/instance/migrate/%s/start",
                         p->migration_id ? p->migration_id : "");
        if (n < 0 || (size_t)n >= sizeof(path) || !p->migration_id)
            r = cella_err(errs, -EINVAL, "/init/value/migration_id", "migration id is not usable");
        else
            r = mig_stream_connect(p->src_addr, path,
                                   p->cfg.connect_timeout_ms ? p->cfg.connect_timeout_ms
                                                             : MIG_CONNECT_MS_DEFAULT,
                                   &t->s, errs);
    }
    if (r == 0) {
        mig_stream_set_stall(t->s, p->cfg.stall_ms ? p->cfg.stall_ms : MIG_STREAM_STALL_MS_DEFAULT);
        r = stage1(t);
    }
    if (r < 0) {
        if (t->s)
            send_error(t, MIG_MSG_ERROR, first);
        if (p->hooks->phase)
            p->hooks->phase(p->ctx, MIG_PHASE_ERROR);
        if (t->s)
            mig_stream_close(t->s, 1011, "migration failed", 1000);
        t->built = false;
        mig_target_free(t);
        return r;
    }
    *out = t;
    return 0;
}

/* ---- stage 2 ------------------------------------------------------------ */

static bool seen_all(const struct mig_target *t)
{
    return t->nseen == t->npages;
}

static int ram_batch(struct mig_target *t, const struct mig_msg_ram *r)
{
    /* Check every run first: a batch is applied whole or not at all. */
    for (uint32_t i = 0; i < r->nruns; i++) {
        uint64_t first;
        uint32_t count;
        mig_ram_run(r, i, &first, &count);
        if (first >= t->npages || count > t->npages - first)
            return cella_err(t->errs, -ERANGE, "",
                             "migration: the source sent pages %llu..%llu, guest RAM has %llu",
                             (unsigned long long)first, (unsigned long long)(first + count - 1),
                             (unsigned long long)t->npages);
    }
    if (!t->zero_ready) {
        t->zero_ready = true;
        t->zero = calloc((size_t)((t->npages + 63) / 64), 8);
        if (t->zero && guest_mem_holes(t->mem, t->zero) < 0) {
            free(t->zero);
            t->zero = NULL;
        }
    }
    uint32_t k = 0;
    const uint8_t *data = r->data;
    for (uint32_t i = 0; i < r->nruns; i++) {
        uint64_t first;
        uint32_t count;
        mig_ram_run(r, i, &first, &count);
        for (uint64_t pg = first; pg < first + count; pg++, k++) {
            uint8_t *dst = t->mem->base + pg * GUEST_PAGE_SIZE;
            uint64_t bit = 1ull << (pg % 64);
            if (mig_ram_is_zero(r, k)) {
                if (!t->zero || !(t->zero[pg / 64] & bit))
                    memset(dst, 0, GUEST_PAGE_SIZE);
                if (t->zero)
                    t->zero[pg / 64] |= bit;
            } else {
                memcpy(dst, data, GUEST_PAGE_SIZE);
                data += GUEST_PAGE_SIZE;
                if (t->zero)
                    t->zero[pg / 64] &= ~bit;
            }
            if (!(t->seen[pg / 64] & bit)) {
                t->seen[pg / 64] |= bit;
                t->nseen++;
            }
        }
    }
    t->st.phase[t->phase].pages += r->npages;
    t->st.phase[t->phase].zero_pages += r->npages - r->nnz;
    return 0;
}

/*
 * Version 3: pages as deltas against what the source sent before, so only
 * pages this target already received (and were not zero pages since).
 * Checked whole before any is applied.
 */
static int ram_delta(struct mig_target *t, const struct mig_msg_ram_delta *r)
{
    size_t pos = 0, len;
    uint64_t pg;
    const uint8_t *d;
    while (mig_ram_delta_next(r, &pos, &pg, &d, &len)) {
        if (pg >= t->npages || !(t->seen[pg / 64] >> (pg % 64) & 1))
            return cella_err(t->errs, -EPROTO, "",
                             "migration: the source sent a delta for page %llu, which it never "
                             "sent whole",
                             (unsigned long long)pg);
    }
    pos = 0;
    while (mig_ram_delta_next(r, &pos, &pg, &d, &len)) {
        mig_delta_apply(t->mem->base + pg * GUEST_PAGE_SIZE, d, len);
        if (t->zero)
            t->zero[pg / 64] &= ~(1ull << (pg % 64));
    }
    t->st.phase[t->phase].pages += r->count;
    return 0;
}

static int device(struct mig_target *t, const struct mig_msg_device *d)
{
    const struct mig_kind_version *k = NULL;
    for (size_t i = 0; i < t->naccepted; i++)
        if (strcmp(t->accepted[i].kind, d->kind) == 0)
            k = &t->accepted[i];
    if (!k)
        return cella_err(t->errs, -EPROTO, "", "migration: payload kind \"%s\" was not negotiated",
                         d->kind);
    if (k->version != d->version)
        return cella_err(t->errs, -EPROTO, "",
                         "migration: payload %s/%s has version %u, version %u was agreed", d->kind,
                         d->id, d->version, k->version);
    if (t->vm.fail_imports)
        return cella_err(t->errs, -EIO, "",
                         "migration: device state import failed (migration failure injector)");
    size_t before = cella_errors_total(t->errs);
    int r = t->vm.ops->load_state(t->vm.vm, d->kind, d->id, d->version, d->data, d->len, t->errs);
    if (r < 0 && cella_errors_total(t->errs) == before)
        r = cella_err(t->errs, r, "", "migration: payload %s/%s does not load: %s", d->kind, d->id,
                      strerror(-r));
    return r;
}

static int serial(struct mig_target *t, const struct mig_msg_serial *s)
{
    if (t->serial_started && (s->total != t->serial_total || s->offset < t->serial_next))
        return cella_err(t->errs, -EPROTO, "",
                         "migration: serial history chunks overlap or disagree on the total");
    t->serial_started = true;
    t->serial_total = s->total;
    t->serial_next = s->offset + s->len;
    if (!t->p.hooks->serial_history)
        return 0;
    return t->p.hooks->serial_history(t->p.ctx, s->offset, s->data, s->len, s->total, t->errs);
}

static int blob_complete(struct mig_target *t)
{
    struct blob_acc *b = &t->blob;
    int r = 0;
    if (t->p.hooks->blob)
        r = t->p.hooks->blob(t->p.ctx, b->key, b->buf, b->len, t->errs);
    memcpy(t->blobs_done[t->nblobs_done++], b->key, sizeof(b->key));
    free(b->buf);
    memset(b, 0, sizeof(*b));
    return r;
}

static int blob(struct mig_target *t, const struct mig_msg_blob *c)
{
    struct blob_acc *b = &t->blob;
    if (!b->open) {
        if (c->offset != 0)
            return cella_err(t->errs, -EPROTO, "", "migration: blob \"%s\" does not start at 0",
                             c->key);
        for (size_t i = 0; i < t->nblobs_done; i++)
            if (strcmp(t->blobs_done[i], c->key) == 0)
                return cella_err(t->errs, -EPROTO, "", "migration: blob \"%s\" sent twice", c->key);
        if (!t->blobs_done) {
            t->blobs_done = calloc(MIG_MAX_BLOBS, sizeof(*t->blobs_done));
            if (!t->blobs_done)
                return cella_err(t->errs, -ENOMEM, "", "migration: out of memory");
        }
        if (t->nblobs_done == MIG_MAX_BLOBS)
            return cella_err(t->errs, -E2BIG, "", "migration: too many blobs");
        memcpy(b->key, c->key, sizeof(b->key));
        b->total = c->total;
        b->open = true;
    } else if (strcmp(b->key, c->key) != 0 || c->offset != b->len || c->total != b->total) {
        return cella_err(t->errs, -EPROTO, "", "migration: blob \"%s\" chunks are out of order",
                         b->key);
    }
    if (c->len) {
        /* Grow with what arrived, never with what the peer claims. */
        if (b->len + c->len > b->cap) {
            size_t cap = b->cap ? b->cap * 2 : c->len;
            while (cap < b->len + c->len)
                cap *= 2;
            if (cap > b->total)
                cap = (size_t)b->total;
            uint8_t *n = realloc(b->buf, cap);
            if (!n)
                return cella_err(t->errs, -ENOMEM, "", "migration: out of memory for a blob");
            b->buf = n;
            b->cap = cap;
        }
        memcpy(b->buf + b->len, c->data, c->len);
        b->len += c->len;
    }
    return b->len == b->total ? blob_complete(t) : 0;
}

/* PHASE: the next phase in order, with the checks each boundary needs. */
static int phase(struct mig_target *t, enum mig_phase ph)
{
    if (ph != t->phase + 1)
        return cella_err(t->errs, -EPROTO, "", "migration: phase %s cannot follow %s",
                         mig_phase_name(ph), mig_phase_name(t->phase));
    if (ph == MIG_PHASE_DEVICE && !seen_all(t))
        return cella_err(t->errs, -EPROTO, "",
                         "migration: RAM ended with %llu of %llu pages never sent",
                         (unsigned long long)(t->npages - t->nseen), (unsigned long long)t->npages);
    if (ph == MIG_PHASE_RESUME) {
        size_t before = cella_errors_total(t->errs);
        int r = t->vm.ops->load_finish ? t->vm.ops->load_finish(t->vm.vm, t->errs) : 0;
        if (r < 0) {
            if (cella_errors_total(t->errs) == before)
                cella_err(t->errs, r, "", "migration: device state is incomplete: %s",
                          strerror(-r));
            return r;
        }
    }
    if (ph == MIG_PHASE_FINISH && t->blob.open)
        return cella_err(t->errs, -EPROTO, "", "migration: blob \"%s\" is incomplete", t->blob.key);
    enter(t, ph);
    return 0;
}

/* Whether message type `type` may arrive in the current phase. */
static bool allowed(const struct mig_target *t, enum mig_msg_type type)
{
    switch (type) {
    case MIG_MSG_PHASE:
        return t->phase < MIG_PHASE_FINISH;
    case MIG_MSG_RAM_DELTA:
        if (t->version < 3)
            return false;
        /* fall through */
    case MIG_MSG_RAM_BATCH:
    case MIG_MSG_RAM_PASS_END:
        return t->phase == MIG_PHASE_RAM_PUSH || t->phase == MIG_PHASE_RAM_PUSH_DIRTY;
    case MIG_MSG_DEVICE:
        return t->phase == MIG_PHASE_DEVICE;
    case MIG_MSG_SERIAL_HISTORY:
    case MIG_MSG_BLOB:
        return t->phase == MIG_PHASE_SERVER;
    default:
        return false;
    }
}

static int check_deadline(struct mig_target *t)
{
    if (t->deadline && now_us() >= t->deadline)
        return cella_err(t->errs, -ETIMEDOUT, "",
                         "migration: not finished within the total timeout of %u ms",
                         t->p.cfg.total_timeout_ms);
    return 0;
}

/* Receives state until the source's Finish phase. */
static int receive_state(struct mig_target *t)
{
    struct mig_msg *m = malloc(sizeof(*m));
    if (!m)
        return cella_err(t->errs, -ENOMEM, "", "migration: out of memory");
    int r = 0;
    while (r == 0 && t->phase != MIG_PHASE_FINISH) {
        if ((r = check_deadline(t)) < 0 || (r = recv_msg(t, m, "migration state")) < 0)
            break;
        if (!allowed(t, m->type)) {
            r = cella_err(t->errs, -EPROTO, "", "migration: the source sent %s in phase %s",
                          mig_msg_type_name(m->type), mig_phase_name(t->phase));
            break;
        }
        switch (m->type) {
        case MIG_MSG_PHASE:
            r = phase(t, m->u.phase);
            break;
        case MIG_MSG_RAM_BATCH:
            r = ram_batch(t, &m->u.ram);
            break;
        case MIG_MSG_RAM_DELTA:
            r = ram_delta(t, &m->u.delta);
            break;
        case MIG_MSG_RAM_PASS_END:
            t->st.phase[t->phase].passes++;
            t->st.passes++;
            if (t->version >= 2 && t->phase == MIG_PHASE_RAM_PUSH) {
                /* Everything before it is applied: tell the source. */
                struct mig_msg ack = {.type = MIG_MSG_RAM_PASS_APPLIED,
                                      .u.pass_end = m->u.pass_end};
                r = send_msg(t, &ack);
            }
            break;
        case MIG_MSG_DEVICE:
            r = device(t, &m->u.device);
            break;
        case MIG_MSG_SERIAL_HISTORY:
            r = serial(t, &m->u.serial);
            break;
        case MIG_MSG_BLOB:
            r = blob(t, &m->u.blob);
            break;
        default:
            r = -EPROTO;
            break;
        }
    }
    free(m);
    return r;
}

/* The finish handshake; *decided is set once the guest runs here. */
static int handshake(struct mig_target *t, bool *released)
{
    struct mig_msg ready = {.type = MIG_MSG_READY}, m;
    int r = send_msg(t, &ready);
    if (r < 0 || (r = recv_msg(t, &m, "RELEASED")) < 0)
        return r;
    if (m.type != MIG_MSG_RELEASED)
        return unexpected(t, &m, "RELEASED");
    *released = true;
    log_msg(LOG_DEBUG, "migrate", "target: RELEASED; opening the backends");
    size_t before = cella_errors_total(t->errs);
    r = t->p.hooks->open_backends ? t->p.hooks->open_backends(t->p.ctx, t->errs) : 0;
    if (r < 0) {
        if (cella_errors_total(t->errs) == before)
            cella_err(t->errs, r, "", "migration: cannot open the backends: %s", strerror(-r));
        return r;
    }
    log_msg(LOG_DEBUG, "migrate", "target: backends open; resuming the machine");
    r = t->vm.ops->resume(t->vm.vm);
    if (r < 0)
        return cella_err(t->errs, r, "", "migration: cannot start the machine: %s", strerror(-r));
    log_msg(LOG_DEBUG, "migrate", "target: machine resumed; sending COMMIT");
    /*
     * Committed: the guest runs here. COMMIT only tells the source; if it
     * cannot be delivered the source stays paused (UNKNOWN), never runs.
     */
    struct mig_msg commit = {.type = MIG_MSG_COMMIT};
    t->out.len = 0;
    if (mig_msg_encode(&commit, &t->out) == 0)
        mig_stream_send(t->s, t->out.buf, t->out.len);
    return 0;
}

int mig_target_run(struct mig_target *t, struct cella_errors *errs)
{
    t->errs = errs;
    size_t first = errs ? errs->count : 0;
    if (t->p.cfg.total_timeout_ms)
        t->deadline = now_us() + (uint64_t)t->p.cfg.total_timeout_ms * 1000;
    bool released = false;
    int r = receive_state(t);
    if (r == 0)
        r = handshake(t, &released);
    if (r == 0) {
        mig_stream_close(t->s, 1000, "migrated", 1000);
        uint64_t n = now_us();
        t->st.phase[t->phase].us += n - t->phase_t0;
        t->phase_t0 = n;
    } else {
        send_error(t, released ? MIG_MSG_ABORT : MIG_MSG_ERROR, first);
        enter(t, MIG_PHASE_ERROR);
        mig_stream_close(t->s, 1011, "migration failed", 1000);
    }
    t->st.total_us = now_us() - t->t0;
    return r;
}

const struct mig_stats *mig_target_stats(const struct mig_target *t)
{
    return &t->st;
}

struct mig_stream *mig_target_stream(struct mig_target *t)
{
    return t->s;
}

uint32_t mig_target_version(const struct mig_target *t)
{
    return t->version;
}

void mig_target_free(struct mig_target *t)
{
    if (!t)
        return;
    mig_stream_free(t->s);
    mig_out_free(&t->out);
    free(t->seen);
    free(t->zero);
    free(t->blob.buf);
    free(t->blobs_done);
    free(t);
}
