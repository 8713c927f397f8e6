/* SPDX-License-Identifier: MPL-2.0 */
/* The migration source driver (see source.h and docs/migration.md). */
#include "migrate/source.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "migrate/delta.h"

/* A pass moving less than this tells little about the link: keep the previous estimate. */
#define BW_MIN_SAMPLE (1u << 20)

struct src {
    const struct mig_source_params *p;
    const struct mig_vm_ops *vm;
    struct mig_stream *s;
    struct mig_source_result *res;
    struct mig_stats *st;
    struct cella_errors *errs;
    struct mig_out out;

    struct guest_mem *mem;
    uint64_t npages;
    size_t nwords;
    uint64_t *bits;
    uint64_t *holes;   /* pass 1: pages never touched (zero, not read) */
    uint64_t *redirty; /* pass 1: pages written again since the pass began (dirty_peek) */
    struct mig_ram_batch *batch;

    /* Delta pages (version 3): what was sent of pages sent again, and the RAM_DELTA being built. */
    struct mig_page_cache *cache;
    bool delta; /* pages of this pass go through the cache */
    struct mig_out dout;
    uint32_t dcount;
    uint64_t hits, overflows; /* this pass: cached pages, and those whose delta was too large */
    uint8_t dbuf[MIG_DELTA_MAX];

    enum mig_phase phase;
    uint64_t t0, phase_t0, t_pause;
    uint64_t deadline; /* total timeout, 0 none */

    struct mig_kind_version offered[MIG_MAX_KINDS];
    size_t noffered;
    struct mig_kind_version want[MIG_MAX_KINDS];
    size_t nwant;

    bool tracking, paused, released;
    bool peer_gave_up; /* the target sent ERROR/ABORT: no ERROR back */

    uint64_t pace_t0, pace_b0; /* max_bandwidth: when and at which byte count the pass began */
    unsigned throttle;         /* auto-converge: the vCPU throttle set, percent */
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

const char *mig_outcome_name(enum mig_outcome o)
{
    switch (o) {
    case MIG_OUTCOME_COMMITTED:
        return "committed";
    case MIG_OUTCOME_FAILED:
        return "failed";
    case MIG_OUTCOME_UNKNOWN:
        return "unknown";
    }
    return "unknown";
}

/* Adds the time since the last call to the current phase. */
static void account(struct src *x)
{
    uint64_t t = now_us();
    x->st->phase[x->phase].us += t - x->phase_t0;
    x->phase_t0 = t;
}

static void enter(struct src *x, enum mig_phase ph)
{
    account(x);
    x->phase = ph;
    if (x->p->hooks && x->p->hooks->phase)
        x->p->hooks->phase(x->p->ctx, ph);
}

/*
 * A machine operation failed; -ECANCELED means the guest itself stopped
 * (reset, power-off, failure): the migration ends and the source's owner
 * handles that event.
 */
static int vm_err(struct src *x, int r, const char *doing)
{
    if (r == -ECANCELED)
        return cella_err(x->errs, r, "",
                         "migration: the guest reset, powered off or failed on the source during "
                         "the migration; it is not migrated (the source handles the event)");
    return cella_err(x->errs, r, "", "migration: %s: %s", doing, strerror(-r));
}

static int stream_err(struct src *x, int r, const char *doing)
{
    return cella_err(x->errs, r, "", "migration: %s: %s", doing, mig_stream_error(x->s));
}

static int check_deadline(struct src *x)
{
    if (x->deadline && !x->released && now_us() >= x->deadline)
        return cella_err(x->errs, -ETIMEDOUT, "",
                         "migration: not finished within the total timeout of %u ms",
                         x->p->cfg.total_timeout_ms);
    return 0;
}

/* Records the target's ERROR/ABORT text. */
static int peer_reason(struct src *x, const struct mig_msg *m)
{
    x->peer_gave_up = true;
    return cella_err(x->errs, -ECONNABORTED, "", "target: %.*s", (int)m->u.reason.len,
                     m->u.reason.p);
}

/* After a failed send: the target's ERROR or ABORT, if it sent one before leaving. */
static void take_last_words(struct src *x)
{
    const uint8_t *buf;
    size_t len;
    struct mig_msg m;
    while (!x->peer_gave_up && mig_stream_try_recv(x->s, &buf, &len) == 0)
        if (mig_msg_decode(buf, len, &m, NULL) == 0 &&
            (m.type == MIG_MSG_ERROR || m.type == MIG_MSG_ABORT))
            peer_reason(x, &m);
}

/* After handing a message of len bytes to the stream: the failure, or the phase's count. */
static int sent(struct src *x, int r, size_t len, const char *what)
{
    if (r < 0) {
        take_last_words(x);
        return stream_err(x, r, what);
    }
    x->st->phase[x->phase].bytes += len;
    x->st->phase[x->phase].messages++;
    return 0;
}

static int send_buf(struct src *x, const struct mig_out *o, const char *what)
{
    return sent(x, mig_stream_send(x->s, o->buf, o->len), o->len, what);
}

static int send_out(struct src *x, const char *what)
{
    return send_buf(x, &x->out, what);
}

static int send_msg(struct src *x, const struct mig_msg *m)
{
    x->out.len = 0;
    int r = mig_msg_encode(m, &x->out);
    if (r < 0)
        return cella_err(x->errs, r, "", "migration: cannot encode %s", mig_msg_type_name(m->type));
    return send_out(x, mig_msg_type_name(m->type));
}

static int send_phase(struct src *x, enum mig_phase ph)
{
    enter(x, ph);
    struct mig_msg m = {.type = MIG_MSG_PHASE, .u.phase = ph};
    return send_msg(x, &m);
}

/* Decodes a received message; ERROR from the target becomes a failure. */
static int decode(struct src *x, const uint8_t *buf, size_t len, struct mig_msg *m)
{
    int r = mig_msg_decode(buf, len, m, x->errs);
    if (r < 0)
        return r;
    if (m->type == MIG_MSG_ERROR)
        return peer_reason(x, m);
    return 0;
}

static int recv_msg(struct src *x, struct mig_msg *m, const char *waiting_for)
{
    const uint8_t *buf;
    size_t len;
    int r = mig_stream_recv(x->s, &buf, &len);
    if (r < 0) {
        char what[96];
        snprintf(what, sizeof(what), "waiting for %s", waiting_for);
        return stream_err(x, r, what);
    }
    x->st->phase[x->phase].messages++;
    return decode(x, buf, len, m);
}

static int unexpected(struct src *x, const struct mig_msg *m, const char *wanted)
{
    return cella_err(x->errs, -EPROTO, "", "migration: the target sent %s where %s was due",
                     mig_msg_type_name(m->type), wanted);
}

/* Receives the one message type due now; anything else is a protocol error. */
static int recv_type(struct src *x, struct mig_msg *m, enum mig_msg_type want)
{
    int r = recv_msg(x, m, mig_msg_type_name(want));
    if (r == 0 && m->type != want)
        r = unexpected(x, m, mig_msg_type_name(want));
    return r;
}

/* The target may only speak up mid-stream to give up: check without waiting. */
static int poll_peer(struct src *x)
{
    const uint8_t *buf;
    size_t len;
    int r = mig_stream_try_recv(x->s, &buf, &len);
    if (r == -EAGAIN)
        return check_deadline(x);
    if (r < 0)
        return stream_err(x, r, "receiving");
    struct mig_msg m;
    r = decode(x, buf, len, &m);
    return r < 0 ? r : unexpected(x, &m, "nothing");
}

/* ---- Sync: versions and preamble ---------------------------------------- */

static int negotiate_version(struct src *x)
{
    struct mig_msg m;
    int r = recv_type(x, &m, MIG_MSG_HELLO);
    if (r < 0)
        return r;
    snprintf(x->res->target_addr, sizeof(x->res->target_addr), "%.*s", (int)m.u.hello.addr.len,
             m.u.hello.addr.p);
    uint32_t best = 0;
    char offered[MIG_MAX_VERSIONS * 12] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < m.u.hello.nversions; i++) {
        uint32_t v = m.u.hello.versions[i];
        if (v >= MIG_PROTO_VERSION_OLDEST && v <= MIG_PROTO_VERSION_NEWEST && v > best)
            best = v;
        int n = snprintf(offered + used, sizeof(offered) - used, "%s%u", i ? ", " : "", v);
        if (n > 0 && (size_t)n < sizeof(offered) - used)
            used += (size_t)n;
    }
    if (!best) {
        char why[300];
        snprintf(why, sizeof(why),
                 "no common protocol version: the target offers %s, the source speaks %u to %u",
                 offered, MIG_PROTO_VERSION_OLDEST, MIG_PROTO_VERSION_NEWEST);
        return cella_err(x->errs, -EPROTO, "", "migration: %s", why);
    }
    x->st->version = best;
    struct mig_msg ack = {.type = MIG_MSG_HELLO_ACK, .u.version = best};
    return send_msg(x, &ack);
}

static int send_preamble(struct src *x)
{
    size_t n = x->vm->payload_kinds(x->p->vm, x->offered, MIG_MAX_KINDS);
    if (n > MIG_MAX_KINDS)
        return cella_err(x->errs, -E2BIG, "",
                         "migration: the machine has %zu payload kinds (at most %d)", n,
                         MIG_MAX_KINDS);
    x->noffered = n;
    struct mig_msg *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->type = MIG_MSG_PREAMBLE;
    m->u.preamble.spec_json = (struct mig_str){x->p->spec_wire_json, x->p->spec_len};
    m->u.preamble.ram_bytes = x->mem->size;
    m->u.preamble.nkinds = (uint32_t)n;
    memcpy(m->u.preamble.kinds, x->offered, n * sizeof(x->offered[0]));
    int r = send_msg(x, m);
    free(m);
    return r;
}

/* Checks an accepted PREAMBLE_ACK: one answer per offered kind, in its range. */
static int take_versions(struct src *x, const struct mig_msg_preamble_ack *a)
{
    if (a->nkinds != x->noffered)
        return cella_err(x->errs, -EPROTO, "",
                         "migration: the target answered %u payload kinds, %zu were offered",
                         a->nkinds, x->noffered);
    for (size_t i = 0; i < x->noffered; i++) {
        const struct mig_kind_version *o = &x->offered[i];
        const struct mig_kind_version *k = NULL;
        for (uint32_t j = 0; j < a->nkinds; j++)
            if (strcmp(a->kinds[j].kind, o->kind) == 0)
                k = &a->kinds[j];
        if (!k || k->version < o->min_version || k->version > o->version)
            return cella_err(x->errs, -EPROTO, "",
                             "migration: the target accepted no usable version of payload kind "
                             "\"%s\"",
                             o->kind);
        x->want[x->nwant++] = *k;
    }
    return 0;
}

static int take_refusal(struct src *x, const struct mig_msg_preamble_ack *a)
{
    x->peer_gave_up = true;
    int r = -EINVAL;
    for (uint32_t i = 0; i < a->nreasons; i++) {
        char ptr[CELLA_ERR_POINTER_MAX];
        snprintf(ptr, sizeof(ptr), "%.*s", (int)a->reasons[i].pointer.len, a->reasons[i].pointer.p);
        r = cella_err(x->errs, -EINVAL, ptr, "target: %.*s", (int)a->reasons[i].message.len,
                      a->reasons[i].message.p);
    }
    return r;
}

static int read_ack(struct src *x)
{
    struct mig_msg *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    int r = recv_type(x, m, MIG_MSG_PREAMBLE_ACK);
    if (r == 0)
        r = m->u.ack.accepted ? take_versions(x, &m->u.ack) : take_refusal(x, &m->u.ack);
    free(m);
    return r;
}

/* ---- RAM ---------------------------------------------------------------- */

/*
 * max_bandwidth: during a live pass, sleeps until the bytes sent since the
 * pass began are due at that rate. The paused pass is never held back.
 */
static void pace(struct src *x)
{
    uint64_t cap = x->p->cfg.max_bandwidth;
    if (!cap || x->paused)
        return;
    uint64_t sent = x->st->phase[x->phase].bytes - x->pace_b0;
    uint64_t due = (uint64_t)((double)sent * 1e6 / (double)cap), spent = now_us() - x->pace_t0;
    if (due > spent)
        cella_sleep_us(due - spent);
}

/*
 * Sends the batch straight from where its pages lie (guest RAM, or the
 * delta cache's pinned copies), without copying them into a message.
 */
static int flush_batch(struct src *x)
{
    struct mig_ram_batch *b = x->batch;
    if (!b->npages)
        return 0;
    struct iovec iov[MIG_RAM_BATCH_IOV];
    size_t n = mig_ram_batch_iov(b, iov), len = 0;
    for (size_t i = 0; i < n; i++)
        len += iov[i].iov_len;
    int r = sent(x, mig_stream_sendv(x->s, iov, n), len, "sending RAM");
    if (r < 0)
        return r;
    x->st->phase[x->phase].pages += b->npages;
    x->st->phase[x->phase].zero_pages += b->npages - b->nnz;
    mig_ram_batch_reset(b);
    if (x->cache)
        mig_page_cache_unpin(x->cache); /* the batch's copies are with the kernel */
    pace(x);
    return poll_peer(x);
}

static int flush_delta(struct src *x)
{
    if (!x->dcount)
        return 0;
    if (mig_ram_delta_finish(&x->dout, x->dcount) < 0)
        return cella_err(x->errs, -ENOMEM, "", "migration: out of memory encoding RAM");
    int r = send_buf(x, &x->dout, "sending RAM");
    if (r < 0)
        return r;
    x->st->phase[x->phase].pages += x->dcount;
    x->dcount = 0;
    x->dout.len = 0;
    pace(x);
    return poll_peer(x);
}

/* A RAM_DELTA flushes at this many bytes (or MIG_RAM_DELTA_PAGES pages). */
#define DELTA_FLUSH_BYTES (1u << 20)

/*
 * A page sent before goes as its delta against the copy of what was sent
 * (nothing at all if it did not change). Returns 1 if it went so, 0 if it
 * must go whole (not cached, or its delta is too large), < 0 on failure.
 */
static int send_delta(struct src *x, uint64_t page, const uint8_t *live)
{
    uint8_t *copy = mig_page_cache_get(x->cache, page);
    if (!copy)
        return 0;
    x->hits++;
    int n = mig_delta_encode(copy, live, x->dbuf, sizeof(x->dbuf));
    if (n < 0) {
        x->overflows++;
        return 0;
    }
    x->st->delta_pages++;
    if (n == 0) {
        x->st->phase[x->phase].pages++; /* the target has it as it is */
        return 1;
    }
    if (!x->dcount)
        mig_ram_delta_begin(&x->dout);
    mig_ram_delta_add(&x->dout, page, x->dbuf, (uint16_t)n);
    x->dcount++;
    if (x->dcount == MIG_RAM_DELTA_PAGES || x->dout.len >= DELTA_FLUSH_BYTES) {
        int r = flush_delta(x);
        if (r < 0)
            return r;
    }
    return 1;
}

static void delta_start(struct src *x);
static uint64_t popcount(const uint64_t *bits, size_t nwords);

/*
 * Pass 1 caches what it sends (for deltas) from the moment a look at the
 * dirty log finds this many pages (16 MiB, or an eighth of RAM if less)
 * written again: a guest that rewrites memory; an idle one is not charged
 * the copies.
 */
#define DELTA_ARM_PAGES 4096u

/* Pass 1 looks at the dirty log again after this many data pages (8 MiB). */
#define PEEK_EVERY 2048u

/*
 * Sends every page set in bits (in ascending order); *count gets how many.
 * Pages set in holes (may be NULL) go as zero pages without being read.
 * With `defer` (pass 1), a page the guest has written again since the pass
 * began is left out: the log still has it, so pass 2 sends it (once, not
 * twice); the log is looked at every PEEK_EVERY data pages.
 * With x->delta, pages go through the cache: as deltas where they can,
 * and otherwise whole from the cache's copy (which then matches what the
 * target has, even if the guest writes the page meanwhile).
 */
static int send_pages(struct src *x, const uint64_t *bits, const uint64_t *holes, bool defer,
                      uint64_t *count)
{
    *count = 0;
    uint32_t since_peek = 0, peek_every = x->p->cfg.peek_every ? x->p->cfg.peek_every : PEEK_EVERY;
    uint64_t arm = x->npages / 8 < DELTA_ARM_PAGES ? x->npages / 8 : DELTA_ARM_PAGES;
    defer = defer && x->redirty && x->vm->dirty_peek;
    if (defer)
        memset(x->redirty, 0, x->nwords * 8);
    x->pace_t0 = now_us();
    x->pace_b0 = x->st->phase[x->phase].bytes;
    x->hits = x->overflows = 0;
    if (x->cache)
        mig_page_cache_pass(x->cache);
    mig_ram_batch_reset(x->batch);
    for (size_t w = 0; w < x->nwords; w++) {
        uint64_t word = bits[w];
        while (word) {
            uint64_t page = (uint64_t)w * 64 + (uint64_t)__builtin_ctzll(word);
            word &= word - 1;
            if (page >= x->npages)
                break;
            if (defer && (x->redirty[w] >> (page % 64) & 1)) {
                x->st->deferred_pages++;
                continue;
            }
            const uint8_t *ptr = x->mem->base + page * GUEST_PAGE_SIZE, *data;
            (*count)++;
            if (holes && (holes[page / 64] >> (page % 64) & 1)) {
                data = NULL;
            } else if (x->delta) {
                int r = send_delta(x, page, ptr);
                if (r < 0)
                    return r;
                if (r > 0)
                    continue;
                uint8_t *copy = mig_page_cache_fill(x->cache, page, ptr);
                if (!copy) {
                    data = mig_page_is_zero(ptr) ? NULL : ptr;
                } else {
                    data = mig_page_is_zero(copy) ? NULL : copy;
                    if (!data)
                        mig_page_cache_drop(x->cache, page);
                }
            } else {
                data = mig_page_is_zero(ptr) ? NULL : ptr;
            }
            if (!mig_ram_batch_add(x->batch, page, data)) {
                int r = flush_batch(x);
                if (r < 0)
                    return r;
                mig_ram_batch_add(x->batch, page, data);
            }
            if (defer && data && ++since_peek >= peek_every) {
                since_peek = 0;
                if (x->vm->dirty_peek(x->p->vm, x->redirty) < 0)
                    defer = false; /* no peeking here: send everything */
                else if (!x->cache && popcount(x->redirty, x->nwords) >= arm)
                    delta_start(x);
            }
        }
    }
    int r = flush_batch(x);
    return r < 0 ? r : flush_delta(x);
}

static int pass_end(struct src *x, uint32_t pass, uint64_t pages)
{
    x->st->phase[x->phase].passes++;
    x->st->passes = pass;
    struct mig_msg m = {.type = MIG_MSG_RAM_PASS_END, .u.pass_end = {pass, pages}};
    return send_msg(x, &m);
}

/*
 * Version 2: waits until the target has the pass in guest RAM, so the
 * pass's time (and the bandwidth estimate) is end to end, and the pause
 * never waits for a backlog of RAM still queued on the way to the target.
 */
static int pass_applied(struct src *x, uint32_t pass)
{
    if (x->st->version < 2)
        return 0;
    struct mig_msg m;
    int r = recv_type(x, &m, MIG_MSG_RAM_PASS_APPLIED);
    if (r < 0)
        return r;
    if (m.u.pass_end.pass != pass)
        return cella_err(x->errs, -EPROTO, "",
                         "migration: the target acknowledged pass %u where pass %u was due",
                         m.u.pass_end.pass, pass);
    return 0;
}

static uint64_t popcount(const uint64_t *bits, size_t nwords)
{
    uint64_t n = 0;
    for (size_t i = 0; i < nwords; i++)
        n += (uint64_t)__builtin_popcountll(bits[i]);
    return n;
}

/*
 * Auto-converge (like QEMU's): a live pass after which the dirty pages
 * would take more than half the pass's time to send is "high"; after
 * MIG_THROTTLE_HIGH_PASSES high passes in a row the vCPUs are throttled
 * (MIG_THROTTLE_INITIAL percent of their time taken away), and every
 * further high pass takes MIG_THROTTLE_STEP more, up to MIG_THROTTLE_MAX.
 * The throttle ends with the live passes (at the pause) or with a failure.
 */
static int auto_converge(struct src *x, uint32_t pass, bool high_pass, unsigned *high)
{
    if (x->p->cfg.no_auto_converge || !x->vm->throttle || pass < 2)
        return 0;
    if (!high_pass) {
        *high = 0;
        return 0;
    }
    ++*high;
    if (x->throttle ? x->throttle >= MIG_THROTTLE_MAX : *high < MIG_THROTTLE_HIGH_PASSES)
        return 0;
    unsigned pct = x->throttle ? x->throttle + MIG_THROTTLE_STEP : MIG_THROTTLE_INITIAL;
    if (pct > MIG_THROTTLE_MAX)
        pct = MIG_THROTTLE_MAX;
    int r = x->vm->throttle(x->p->vm, pct);
    if (r < 0)
        return vm_err(x, r, "cannot throttle the vCPUs");
    log_msg(LOG_INFO, "migrate",
            "pass %u: the guest dirtied pages faster than half the link's pace; vCPUs throttled "
            "by %u%%",
            pass, pct);
    x->throttle = pct;
    return 0;
}

/*
 * The cache that lets pages sent again go as deltas (version 3, unless
 * turned off): made in pass 1 once a peek shows the guest rewriting memory
 * (send_pages), else before pass 2. Once made, every page goes through it.
 */
static void delta_start(struct src *x)
{
    const struct mig_source_config *c = &x->p->cfg;
    if (x->cache || c->no_delta || x->st->version < 3)
        return;
    uint64_t bytes = c->delta_cache;
    if (!bytes) {
        bytes = x->mem->size / 4;
        bytes = bytes < MIG_DELTA_CACHE_MIN   ? MIG_DELTA_CACHE_MIN
                : bytes > MIG_DELTA_CACHE_MAX ? MIG_DELTA_CACHE_MAX
                                              : bytes;
    }
    x->cache = mig_page_cache_new(x->npages, bytes);
    if (!x->cache) {
        log_msg(LOG_WARN, "migrate",
                "no memory for a delta cache of %" PRIu64 " bytes; pages go whole", bytes);
        return;
    }
    x->delta = true;
    x->st->delta_cache_bytes = mig_page_cache_slots(x->cache) * GUEST_PAGE_SIZE;
}

/*
 * After a pass: a guest whose pages do not compress (more than half the
 * deltas too large) gets none from now on.
 */
static void delta_review(struct src *x, uint32_t pass)
{
    if (!x->delta || x->hits < 256 || x->overflows * 2 <= x->hits)
        return;
    log_msg(LOG_INFO, "migrate",
            "pass %u: %" PRIu64 " of %" PRIu64 " pages sent again changed too much for a delta; "
            "pages go whole from now on",
            pass, x->overflows, x->hits);
    x->delta = false;
    mig_page_cache_free(x->cache);
    x->cache = NULL;
}

static void unthrottle(struct src *x)
{
    if (x->throttle && x->vm->throttle)
        x->vm->throttle(x->p->vm, 0);
    x->throttle = 0;
}

/*
 * Pre-copy. Pass 1 sends every page; each pass re-arms the dirty
 * log for the pages it is about to send (so a page written while it is
 * being sent is sent again) and sends what the log reported. After each
 * pass the link's bandwidth is estimated from that pass (bytes on the wire
 * over its duration); the loop stops when the pages dirtied meanwhile
 * would take no longer than the downtime budget to send, or after
 * max_passes, or when the pre-copy time limit passed. On return x->bits
 * holds the pages still to send.
 */
static int precopy(struct src *x)
{
    const struct mig_source_config *c = &x->p->cfg;
    uint32_t budget = c->downtime_ms ? c->downtime_ms : MIG_DOWNTIME_MS_DEFAULT;
    uint32_t max_passes = c->max_passes ? c->max_passes : MIG_MAX_PASSES_DEFAULT;
    uint64_t limit_us = (uint64_t)(c->precopy_ms ? c->precopy_ms : MIG_PRECOPY_MS_DEFAULT) * 1000;
    uint64_t start = now_us();
    uint64_t bw = 0;   /* bytes per second */
    unsigned high = 0; /* consecutive passes that dirtied more than half what they sent */

    int r = x->vm->dirty_start(x->p->vm);
    if (r < 0)
        return cella_err(x->errs, r, "", "migration: cannot start dirty tracking: %s",
                         strerror(-r));
    x->tracking = true;
    memset(x->bits, 0xff, x->nwords * 8);
    for (uint32_t pass = 1;; pass++) {
        /* Pass 1 too: the log starts with every page dirty (initially set). */
        if ((r = x->vm->dirty_clear(x->p->vm, x->bits)) < 0)
            return cella_err(x->errs, r, "", "migration: cannot re-arm dirty tracking: %s",
                             strerror(-r));
        /*
         * Pass 1 does not read (and so allocate) RAM the guest never
         * touched: RAM's holes, taken after the log was armed, so a
         * page written since is sent again by a later pass.
         */
        const uint64_t *holes = NULL;
        if (pass == 1 && x->holes && guest_mem_holes(x->mem, x->holes) == 0)
            holes = x->holes;
        uint64_t t = now_us();
        uint64_t bytes0 = x->st->phase[x->phase].bytes, sent;
        if ((r = send_pages(x, x->bits, holes, pass == 1, &sent)) < 0 ||
            (r = pass_end(x, pass, sent)) < 0 || (r = pass_applied(x, pass)) < 0)
            return r;
        uint64_t dt = now_us() - t, db = x->st->phase[x->phase].bytes - bytes0;
        if (!dt)
            dt = 1;
        if (db >= BW_MIN_SAMPLE || !bw)
            bw = db * 1000000 / dt;
        if (!bw)
            bw = 1;
        memset(x->bits, 0, x->nwords * 8);
        if ((r = x->vm->dirty_fetch(x->p->vm, x->bits)) < 0)
            return vm_err(x, r, "cannot read the dirty log");
        uint64_t dirty = popcount(x->bits, x->nwords);
        /*
         * The final pass's time: at the link's bandwidth, 4 KiB a page; with
         * deltas, at this pass's time per page (most go as a few bytes, so
         * reading and comparing them is what takes the time).
         */
        uint64_t predicted_us = dirty * GUEST_PAGE_SIZE * 1000000 / bw;
        bool delta_pass = x->delta;
        delta_review(x, pass);
        if (delta_pass && x->delta && sent && pass > 1) /* pass 1 is mostly zero pages */
            predicted_us = dirty * dt / sent;
        if (pass == 1 && x->cache)
            mig_page_cache_keep(x->cache, x->bits); /* what was not written again is cold */
        uint64_t predicted = predicted_us / 1000;
        x->st->bandwidth_bps = bw;
        x->st->predicted_downtime_ms = predicted;
        log_msg(LOG_INFO, "migrate",
                "pass %u: %" PRIu64 " pages, %" PRIu64 " bytes in %" PRIu64 " ms (%" PRIu64
                " cached, %" PRIu64 " too changed for a delta); %" PRIu64
                " pages dirty, the final pass would take %" PRIu64 " ms",
                pass, sent, db, dt / 1000, x->hits, x->overflows, dirty, predicted);
        const char *why = NULL;
        if (dirty == 0)
            why = "no dirty pages";
        else if (predicted <= budget)
            why = "converged";
        else if (pass >= max_passes)
            why = "max passes";
        else if (now_us() - start >= limit_us)
            why = "time limit";
        if (why) {
            x->st->converged = dirty == 0 || predicted <= budget;
            x->st->precopy_end = why;
            x->st->throttle_pct = x->throttle;
            return 0;
        }
        if ((r = auto_converge(x, pass, predicted_us * 2 > dt, &high)) < 0)
            return r;
        x->st->throttled_passes += x->throttle != 0;
        delta_start(x);
    }
}

static int final_ram(struct src *x)
{
    int r = x->vm->pause(x->p->vm);
    if (r < 0)
        return cella_err(x->errs, r, "", "migration: cannot pause the machine: %s", strerror(-r));
    x->paused = true;
    x->t_pause = now_us();
    unthrottle(x);
    if ((r = send_phase(x, MIG_PHASE_PAUSE)) < 0 ||
        (r = send_phase(x, MIG_PHASE_RAM_PUSH_DIRTY)) < 0)
        return r;
    if ((r = x->vm->dirty_fetch(x->p->vm, x->bits)) < 0)
        return vm_err(x, r, "cannot read the dirty log");
    uint64_t sent;
    if ((r = send_pages(x, x->bits, NULL, false, &sent)) < 0)
        return r;
    x->st->final_dirty_pages = sent;
    return pass_end(x, x->st->passes + 1, sent);
}

/* ---- device state, serial history, blobs -------------------------------- */

static int emit_device(void *ctx, const char *kind, const char *id, uint32_t version,
                       const uint8_t *data, size_t len)
{
    struct src *x = ctx;
    const struct mig_kind_version *w = NULL;
    for (size_t i = 0; i < x->nwant; i++)
        if (strcmp(x->want[i].kind, kind) == 0)
            w = &x->want[i];
    if (!w || w->version != version)
        return cella_err(x->errs, -EPROTO, "",
                         "migration: the machine wrote payload %s/%s version %u, not negotiated",
                         kind, id, version);
    struct mig_msg m = {.type = MIG_MSG_DEVICE};
    if (strlen(kind) >= sizeof(m.u.device.kind) || strlen(id) >= sizeof(m.u.device.id) ||
        len > MIG_PAYLOAD_MAX)
        return cella_err(x->errs, -E2BIG, "", "migration: payload %s/%s is too large", kind, id);
    strcpy(m.u.device.kind, kind);
    strcpy(m.u.device.id, id);
    m.u.device.version = version;
    m.u.device.data = data;
    m.u.device.len = len;
    int r = send_msg(x, &m);
    return r < 0 ? r : poll_peer(x);
}

static int send_devices(struct src *x)
{
    int r = send_phase(x, MIG_PHASE_DEVICE);
    if (r < 0)
        return r;
    if (x->p->cfg.fail_exports)
        return cella_err(x->errs, -EIO, "",
                         "migration: device state export failed (migration failure injector)");
    size_t before = cella_errors_total(x->errs);
    r = x->vm->save_state(x->p->vm, x->want, x->nwant, emit_device, x);
    if (r < 0 && cella_errors_total(x->errs) == before)
        r = vm_err(x, r, "cannot export device state");
    return r;
}

static int emit_serial(void *ctx, uint64_t offset, const uint8_t *data, size_t len, uint64_t total)
{
    struct src *x = ctx;
    do {
        size_t n = len < MIG_SERIAL_CHUNK ? len : MIG_SERIAL_CHUNK;
        struct mig_msg m = {.type = MIG_MSG_SERIAL_HISTORY,
                            .u.serial = {.offset = offset, .total = total, .data = data, .len = n}};
        int r = send_msg(x, &m);
        if (r < 0)
            return r;
        offset += n;
        data = n ? data + n : data;
        len -= n;
    } while (len);
    return poll_peer(x);
}

static int emit_blob(void *ctx, const char *key, const uint8_t *data, size_t len)
{
    struct src *x = ctx;
    struct mig_msg m = {.type = MIG_MSG_BLOB};
    if (strlen(key) > MIG_MAX_BLOB_KEY || len > MIG_BLOB_MAX)
        return cella_err(x->errs, -E2BIG, "", "migration: blob backend \"%s\" is too large", key);
    strcpy(m.u.blob.key, key);
    m.u.blob.total = len;
    size_t off = 0;
    do {
        size_t n = len - off < MIG_BLOB_CHUNK ? len - off : MIG_BLOB_CHUNK;
        m.u.blob.offset = off;
        m.u.blob.data = data ? data + off : NULL;
        m.u.blob.len = n;
        int r = send_msg(x, &m);
        if (r < 0)
            return r;
        off += n;
    } while (off < len);
    return poll_peer(x);
}

static int send_server_state(struct src *x)
{
    int r;
    /* Resume and RamPull are Propolis's post-copy phases: markers here. */
    if ((r = send_phase(x, MIG_PHASE_RESUME)) < 0 || (r = send_phase(x, MIG_PHASE_RAM_PULL)) < 0 ||
        (r = send_phase(x, MIG_PHASE_SERVER)) < 0)
        return r;
    const struct mig_source_hooks *h = x->p->hooks;
    size_t before = cella_errors_total(x->errs);
    if (h && h->serial_history && (r = h->serial_history(x->p->ctx, emit_serial, x)) < 0) {
        if (cella_errors_total(x->errs) == before)
            cella_err(x->errs, r, "", "migration: cannot read the serial history: %s",
                      strerror(-r));
        return r;
    }
    if (h && h->blobs && (r = h->blobs(x->p->ctx, emit_blob, x)) < 0) {
        if (cella_errors_total(x->errs) == before)
            cella_err(x->errs, r, "", "migration: cannot read blob contents: %s", strerror(-r));
        return r;
    }
    return 0;
}

/* ---- the finish handshake ----------------------------------------------- */

static int reacquire(struct src *x)
{
    const struct mig_source_hooks *h = x->p->hooks;
    int r = h && h->reacquire_backends ? h->reacquire_backends(x->p->ctx, x->errs) : 0;
    if (r < 0)
        cella_err(x->errs, r, "", "migration: could not re-open the backends after the failure");
    x->released = false;
    return r;
}

/* Returns 0 when committed; -errno otherwise (x->released tells whether the outcome is open). */
static int finish(struct src *x)
{
    int r = send_phase(x, MIG_PHASE_FINISH);
    struct mig_msg m;
    if (r < 0 || (r = recv_type(x, &m, MIG_MSG_READY)) < 0)
        return r;
    if ((r = check_deadline(x)) < 0)
        return r;
    const struct mig_source_hooks *h = x->p->hooks;
    x->released = true; /* from here on, backends may be (partly) closed */
    if (h && h->release_backends && (r = h->release_backends(x->p->ctx, x->errs)) < 0) {
        cella_err(x->errs, r, "", "migration: cannot release the backends: %s", strerror(-r));
        reacquire(x);
        return r;
    }
    uint64_t before = mig_stream_bytes_sent(x->s);
    struct mig_msg rel = {.type = MIG_MSG_RELEASED};
    r = send_msg(x, &rel);
    if (r < 0) {
        /* Not one byte of RELEASED left: the target cannot run. */
        if (mig_stream_bytes_sent(x->s) == before)
            reacquire(x);
        return r;
    }
    /* The window: the target decides on RELEASED alone. */
    r = recv_msg(x, &m, "COMMIT");
    if (r == 0 && m.type == MIG_MSG_COMMIT)
        return 0;
    if (r == 0 && m.type == MIG_MSG_ABORT) {
        peer_reason(x, &m);
        reacquire(x);
        return -ECONNABORTED;
    }
    if (r == -ECONNABORTED && x->peer_gave_up) {
        /* ERROR: a target gives up only before it runs the guest. */
        reacquire(x);
        return r;
    }
    if (r == 0)
        r = unexpected(x, &m, "COMMIT");
    return r; /* x->released stays true: unknown */
}

/* ---- the run ------------------------------------------------------------ */

static int run(struct src *x)
{
    int r;
    enter(x, MIG_PHASE_SYNC);
    if ((r = negotiate_version(x)) < 0 || (r = send_preamble(x)) < 0 || (r = read_ack(x)) < 0)
        return r;
    if ((r = send_phase(x, MIG_PHASE_RAM_PUSH)) < 0 || (r = precopy(x)) < 0)
        return r;
    if ((r = final_ram(x)) < 0 || (r = send_devices(x)) < 0 || (r = send_server_state(x)) < 0)
        return r;
    return finish(x);
}

static void fail_cleanup(struct src *x, int code)
{
    if (!x->peer_gave_up && x->s) {
        char why[MIG_MAX_REASON];
        snprintf(why, sizeof(why), "%s",
                 x->errs && x->errs->count ? x->errs->items[0].message : strerror(-code));
        struct mig_msg m = {.type = MIG_MSG_ERROR, .u.reason = mig_str_of(why)};
        x->out.len = 0;
        if (mig_msg_encode(&m, &x->out) == 0)
            mig_stream_send(x->s, x->out.buf, x->out.len);
    }
    unthrottle(x);
    if (x->tracking)
        x->vm->dirty_stop(x->p->vm);
    x->tracking = false;
    x->res->resumed = !x->paused;
    if (x->paused) {
        int r = x->vm->resume(x->p->vm);
        if (r < 0)
            cella_err(x->errs, r, "", "migration: cannot resume the machine: %s", strerror(-r));
        else
            x->res->resumed = true;
        x->st->blackout_us = now_us() - x->t_pause;
    }
    mig_stream_close(x->s, 1011, "migration failed", MIG_CLOSE_GRACE_MS);
}

int mig_source_run(struct mig_stream *s, const struct mig_source_params *p,
                   struct mig_source_result *res, struct cella_errors *errs)
{
    memset(res, 0, sizeof(*res));
    res->outcome = MIG_OUTCOME_FAILED;
    res->resumed = true;
    struct src x = {.p = p, .vm = p->vm_ops, .s = s, .res = res, .st = &res->stats, .errs = errs};
    mig_out_init(&x.out);
    mig_out_init(&x.dout);
    x.t0 = x.phase_t0 = now_us();
    if (p->cfg.total_timeout_ms)
        x.deadline = x.t0 + (uint64_t)p->cfg.total_timeout_ms * 1000;
    mig_stream_set_stall(s, p->cfg.stall_ms ? p->cfg.stall_ms : MIG_STREAM_STALL_MS_DEFAULT);
    x.mem = p->vm_ops->guest_mem(p->vm);
    int r;
    if (!x.mem || !x.mem->base || !x.mem->size || x.mem->size % GUEST_PAGE_SIZE) {
        r = cella_err(errs, -EINVAL, "", "migration: the machine has no usable guest RAM");
    } else {
        x.npages = x.mem->size / GUEST_PAGE_SIZE;
        x.nwords = (size_t)((x.npages + 63) / 64);
        x.bits = calloc(x.nwords, 8);
        x.holes = calloc(x.nwords, 8);   /* optional: NULL only costs reads */
        x.redirty = calloc(x.nwords, 8); /* optional: NULL only sends pages twice */
        x.batch = malloc(sizeof(*x.batch));
        r = x.bits && x.batch ? run(&x) : cella_err(errs, -ENOMEM, "", "migration: out of memory");
    }
    uint64_t end = now_us();
    if (r == 0) {
        res->outcome = MIG_OUTCOME_COMMITTED;
        res->resumed = false;
        res->stats.blackout_us = end - x.t_pause;
        x.vm->dirty_stop(p->vm);
        account(&x);
        mig_stream_close(s, 1000, "migrated", MIG_CLOSE_GRACE_MS);
    } else if (x.released) {
        res->outcome = MIG_OUTCOME_UNKNOWN;
        res->resumed = false;
        cella_err(errs, r, "",
                  "migration: the connection broke during the finish handshake; the target may be "
                  "running the guest, so this side stays paused with its backends released");
        res->stats.blackout_us = end - x.t_pause;
        unthrottle(&x);
        x.vm->dirty_stop(p->vm);
        enter(&x, MIG_PHASE_ERROR);
    } else {
        fail_cleanup(&x, r);
        enter(&x, MIG_PHASE_ERROR);
    }
    res->stats.total_us = now_us() - x.t0;
    free(x.bits);
    free(x.holes);
    free(x.redirty);
    free(x.batch);
    mig_out_free(&x.out);
    mig_out_free(&x.dout);
    mig_page_cache_free(x.cache);
    return r;
}
