/* SPDX-License-Identifier: MPL-2.0 */
/* The migration message codec (see proto.h for the layout rules). */
#include "migrate/proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include "common/le.h"
#include "migrate/delta.h"

static const char *const phase_names[MIG_PHASE_COUNT] = {
    [MIG_PHASE_SYNC] = "Sync",        [MIG_PHASE_RAM_PUSH] = "RamPush",
    [MIG_PHASE_PAUSE] = "Pause",      [MIG_PHASE_RAM_PUSH_DIRTY] = "RamPushDirty",
    [MIG_PHASE_DEVICE] = "Device",    [MIG_PHASE_RESUME] = "Resume",
    [MIG_PHASE_RAM_PULL] = "RamPull", [MIG_PHASE_SERVER] = "Server",
    [MIG_PHASE_FINISH] = "Finish",    [MIG_PHASE_ERROR] = "Error",
};

static const char *const type_names[MIG_MSG_TYPE_MAX + 1] = {
    [MIG_MSG_HELLO] = "HELLO",
    [MIG_MSG_HELLO_ACK] = "HELLO_ACK",
    [MIG_MSG_PREAMBLE] = "PREAMBLE",
    [MIG_MSG_PREAMBLE_ACK] = "PREAMBLE_ACK",
    [MIG_MSG_PHASE] = "PHASE",
    [MIG_MSG_RAM_BATCH] = "RAM_BATCH",
    [MIG_MSG_RAM_PASS_END] = "RAM_PASS_END",
    [MIG_MSG_DEVICE] = "DEVICE",
    [MIG_MSG_SERIAL_HISTORY] = "SERIAL_HISTORY",
    [MIG_MSG_BLOB] = "BLOB",
    [MIG_MSG_READY] = "READY",
    [MIG_MSG_RELEASED] = "RELEASED",
    [MIG_MSG_COMMIT] = "COMMIT",
    [MIG_MSG_ABORT] = "ABORT",
    [MIG_MSG_ERROR] = "ERROR",
    [MIG_MSG_RAM_PASS_APPLIED] = "RAM_PASS_APPLIED",
    [MIG_MSG_RAM_DELTA] = "RAM_DELTA",
};

const char *mig_phase_name(enum mig_phase p)
{
    return (unsigned)p < MIG_PHASE_COUNT ? phase_names[p] : "unknown";
}

const char *mig_msg_type_name(unsigned type)
{
    return type >= 1 && type <= MIG_MSG_TYPE_MAX ? type_names[type] : "unknown";
}

struct mig_str mig_str_of(const char *s)
{
    return (struct mig_str){.p = s ? s : "", .len = s ? strlen(s) : 0};
}

bool mig_page_is_zero(const uint8_t *page)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < GUEST_PAGE_SIZE; i += 8) {
        uint64_t w;
        memcpy(&w, page + i, 8);
        acc |= w;
        if ((i & 511) == 504 && acc)
            return false;
    }
    return acc == 0;
}

/* ---- character classes -------------------------------------------------- */

enum charset {
    CS_KIND,  /* [a-z0-9._-] */
    CS_TOKEN, /* printable ASCII, no space */
    CS_NAME,  /* no control characters (UTF-8 allowed) */
    CS_TEXT,  /* like NAME, plus tab and newline */
};

static bool char_ok(uint8_t c, enum charset cs)
{
    switch (cs) {
    case CS_KIND:
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    case CS_TOKEN:
        return c > 0x20 && c < 0x7f;
    case CS_NAME:
        return c >= 0x20 && c != 0x7f;
    case CS_TEXT:
        return (c >= 0x20 && c != 0x7f) || c == '\t' || c == '\n';
    }
    return false;
}

static bool str_ok(const uint8_t *p, size_t len, enum charset cs)
{
    for (size_t i = 0; i < len; i++)
        if (!char_ok(p[i], cs))
            return false;
    return true;
}

/* ---- decoding ----------------------------------------------------------- */

struct dec {
    struct mig_in in;
    struct cella_errors *errs;
    const char *what; /* message type name */
    bool bad;         /* a record was written */
};

static int fail(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct dec *d, const char *fmt, ...)
{
    if (!d->bad) {
        d->bad = true;
        char text[200];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        cella_err(d->errs, -EPROTO, "", "malformed %s message: %s", d->what, text);
    }
    d->in.failed = true;
    return -EPROTO;
}

/* A string of min..max bytes in charset cs, or a failure naming `field`. */
static struct mig_str get_str(struct dec *d, const char *field, size_t min, size_t max,
                              enum charset cs)
{
    struct mig_str s = {"", 0};
    if (d->in.failed)
        return s;
    size_t len;
    const uint8_t *p = mig_get_blob(&d->in, max, &len);
    if (!p) {
        fail(d, "%s is truncated or too long", field);
        return s;
    }
    if (len < min) {
        fail(d, "%s is empty", field);
        return s;
    }
    if (!str_ok(p, len, cs)) {
        fail(d, "%s holds a character that is not allowed", field);
        return s;
    }
    s.p = (const char *)p;
    s.len = len;
    return s;
}

/* Like get_str into a NUL-terminated buffer of cap bytes. */
static void get_cstr(struct dec *d, const char *field, char *out, size_t cap, enum charset cs)
{
    struct mig_str s = get_str(d, field, 1, cap - 1, cs);
    memcpy(out, s.p, s.len);
    out[s.len] = '\0';
}

static const uint8_t *get_bytes(struct dec *d, const char *field, size_t max, size_t *len)
{
    if (d->in.failed)
        return NULL;
    const uint8_t *p = mig_get_blob(&d->in, max, len);
    if (!p)
        fail(d, "%s is truncated or too long", field);
    return p;
}

static uint32_t get_count(struct dec *d, const char *field, uint32_t min, uint32_t max)
{
    uint32_t n = mig_get_u32(&d->in);
    if (d->in.failed)
        return 0;
    if (n < min || n > max) {
        fail(d, "%s is out of range", field);
        return 0;
    }
    return n;
}

static void dec_hello(struct dec *d, struct mig_msg_hello *h)
{
    h->nversions = get_count(d, "the version count", 1, MIG_MAX_VERSIONS);
    for (uint32_t i = 0; i < h->nversions && !d->in.failed; i++) {
        h->versions[i] = mig_get_u32(&d->in);
        if (!d->in.failed && h->versions[i] == 0)
            fail(d, "%s", "version 0 is not a version");
    }
    h->addr = get_str(d, "the address", 0, MIG_MAX_ADDR, CS_TOKEN);
}

static bool kind_dup(const struct mig_kind_version *k, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(k[i].kind, k[n].kind) == 0)
            return true;
    return false;
}

static void dec_preamble(struct dec *d, struct mig_msg_preamble *p)
{
    p->spec_json = get_str(d, "the spec", 1, MIG_MAX_SPEC_JSON, CS_TEXT);
    p->ram_bytes = mig_get_u64(&d->in);
    if (!d->in.failed &&
        (p->ram_bytes == 0 || p->ram_bytes % GUEST_PAGE_SIZE || p->ram_bytes > MIG_RAM_MAX_BYTES))
        fail(d, "%s", "the RAM size is not a positive multiple of 4 KiB within limits");
    p->nkinds = get_count(d, "the kind count", 0, MIG_MAX_KINDS);
    for (uint32_t i = 0; i < p->nkinds && !d->in.failed; i++) {
        struct mig_kind_version *k = &p->kinds[i];
        get_cstr(d, "a payload kind", k->kind, sizeof(k->kind), CS_KIND);
        k->version = mig_get_u32(&d->in);
        k->min_version = mig_get_u32(&d->in);
        if (d->in.failed)
            break;
        if (k->min_version == 0 || k->min_version > k->version)
            fail(d, "payload kind \"%s\" has an empty version range", k->kind);
        else if (kind_dup(p->kinds, i))
            fail(d, "payload kind \"%s\" is listed twice", k->kind);
    }
}

static void dec_ack(struct dec *d, struct mig_msg_preamble_ack *a)
{
    a->accepted = mig_get_bool(&d->in);
    if (d->in.failed) {
        fail(d, "%s", "the verdict is not a boolean");
        return;
    }
    if (a->accepted) {
        a->nkinds = get_count(d, "the kind count", 0, MIG_MAX_KINDS);
        for (uint32_t i = 0; i < a->nkinds && !d->in.failed; i++) {
            struct mig_kind_version *k = &a->kinds[i];
            get_cstr(d, "a payload kind", k->kind, sizeof(k->kind), CS_KIND);
            k->version = k->min_version = mig_get_u32(&d->in);
            if (d->in.failed)
                break;
            if (k->version == 0)
                fail(d, "payload kind \"%s\" is accepted at version 0", k->kind);
            else if (kind_dup(a->kinds, i))
                fail(d, "payload kind \"%s\" is listed twice", k->kind);
        }
        return;
    }
    a->nreasons = get_count(d, "the reason count", 1, MIG_MAX_REASONS);
    for (uint32_t i = 0; i < a->nreasons && !d->in.failed; i++) {
        a->reasons[i].pointer =
            get_str(d, "a reason's pointer", 0, CELLA_ERR_POINTER_MAX - 1, CS_NAME);
        a->reasons[i].message = get_str(d, "a reason", 1, MIG_MAX_REASON, CS_TEXT);
    }
}

static void dec_ram(struct dec *d, struct mig_msg_ram *r)
{
    r->nruns = get_count(d, "the run count", 1, MIG_RAM_BATCH_PAGES);
    r->npages = get_count(d, "the page count", 1, MIG_RAM_BATCH_PAGES);
    if (d->in.failed)
        return;
    if (r->nruns > r->npages) {
        fail(d, "%s", "more runs than pages");
        return;
    }
    size_t runs_len = (size_t)r->nruns * 12;
    if (d->in.len - d->in.pos < runs_len) {
        fail(d, "%s", "the runs are truncated");
        return;
    }
    r->runs = d->in.buf + d->in.pos;
    uint64_t sum = 0, next = 0;
    for (uint32_t i = 0; i < r->nruns; i++) {
        uint64_t first = mig_get_u64(&d->in);
        uint32_t count = mig_get_u32(&d->in);
        uint64_t end;
        if (count == 0 || __builtin_add_overflow(first, count, &end) ||
            end > MIG_RAM_MAX_BYTES / GUEST_PAGE_SIZE) {
            fail(d, "%s", "a run is empty or out of range");
            return;
        }
        /* Runs ascend with a gap between them (adjacent runs would be one). */
        if (i > 0 && first <= next) {
            fail(d, "%s", "runs are not ascending and apart");
            return;
        }
        next = end;
        sum += count;
    }
    if (sum != r->npages) {
        fail(d, "%s", "the runs do not add up to the page count");
        return;
    }
    size_t zlen = ((size_t)r->npages + 7) / 8;
    if (d->in.len - d->in.pos < zlen) {
        fail(d, "%s", "the zero bitmap is truncated");
        return;
    }
    r->zero = d->in.buf + d->in.pos;
    d->in.pos += zlen;
    uint32_t zeros = 0;
    for (uint32_t k = 0; k < r->npages; k++)
        zeros += mig_ram_is_zero(r, k);
    if ((r->npages & 7) && (r->zero[zlen - 1] >> (r->npages & 7)) != 0) {
        fail(d, "%s", "padding bits of the zero bitmap are set");
        return;
    }
    r->nnz = r->npages - zeros;
    if (r->nnz > MIG_RAM_BATCH_DATA) {
        fail(d, "%s", "too many pages with data");
        return;
    }
    size_t dlen = (size_t)r->nnz * GUEST_PAGE_SIZE;
    if (d->in.len - d->in.pos != dlen) {
        fail(d, "%s", "the page data does not match the zero bitmap");
        return;
    }
    r->data = d->in.buf + d->in.pos;
    d->in.pos += dlen;
}

static void dec_delta(struct dec *d, struct mig_msg_ram_delta *r)
{
    r->count = get_count(d, "the page count", 1, MIG_RAM_DELTA_PAGES);
    if (d->in.failed)
        return;
    r->entries = d->in.buf + d->in.pos;
    r->len = d->in.len - d->in.pos;
    uint64_t prev = 0;
    for (uint32_t i = 0; i < r->count; i++) {
        uint64_t page = mig_get_u64(&d->in);
        uint16_t len = mig_get_u16(&d->in);
        if (d->in.failed)
            return;
        if (page >= MIG_RAM_MAX_BYTES / GUEST_PAGE_SIZE || (i > 0 && page <= prev)) {
            fail(d, "%s", "pages are out of range or not ascending");
            return;
        }
        prev = page;
        if (len > MIG_DELTA_MAX || len > d->in.len - d->in.pos ||
            !mig_delta_valid(d->in.buf + d->in.pos, len)) {
            fail(d, "page %llu's delta is malformed", (unsigned long long)page);
            return;
        }
        d->in.pos += len;
    }
}

static void dec_device(struct dec *d, struct mig_msg_device *v)
{
    get_cstr(d, "the payload kind", v->kind, sizeof(v->kind), CS_KIND);
    get_cstr(d, "the payload id", v->id, sizeof(v->id), CS_TOKEN);
    v->version = mig_get_u32(&d->in);
    if (!d->in.failed && v->version == 0)
        fail(d, "%s", "version 0 is not a version");
    v->data = get_bytes(d, "the payload", MIG_PAYLOAD_MAX, &v->len);
}

/* offset + len <= total, overflow-safe. */
static bool within(uint64_t offset, size_t len, uint64_t total)
{
    uint64_t end;
    return !__builtin_add_overflow(offset, (uint64_t)len, &end) && end <= total;
}

static void dec_serial(struct dec *d, struct mig_msg_serial *s)
{
    s->offset = mig_get_u64(&d->in);
    s->total = mig_get_u64(&d->in);
    s->data = get_bytes(d, "the history", MIG_SERIAL_CHUNK, &s->len);
    if (!d->in.failed && !within(s->offset, s->len, s->total))
        fail(d, "%s", "the bytes lie beyond the total");
}

static void dec_blob(struct dec *d, struct mig_msg_blob *b)
{
    get_cstr(d, "the backend key", b->key, sizeof(b->key), CS_NAME);
    b->total = mig_get_u64(&d->in);
    b->offset = mig_get_u64(&d->in);
    if (!d->in.failed && b->total > MIG_BLOB_MAX)
        fail(d, "%s", "the blob is larger than allowed");
    b->data = get_bytes(d, "the chunk", MIG_BLOB_CHUNK, &b->len);
    if (!d->in.failed && !within(b->offset, b->len, b->total))
        fail(d, "%s", "the chunk lies beyond the blob's size");
}

int mig_msg_decode(const uint8_t *buf, size_t len, struct mig_msg *m, struct cella_errors *errs)
{
    memset(m, 0, sizeof(*m));
    struct dec d = {.errs = errs, .what = "migration"};
    mig_in_init(&d.in, buf, len);
    uint8_t type = mig_get_u8(&d.in);
    if (d.in.failed)
        return fail(&d, "%s", "it is empty");
    if (type < 1 || type > MIG_MSG_TYPE_MAX) {
        return fail(&d, "unknown message type %u", type);
    }
    m->type = type;
    d.what = type_names[type];
    switch (m->type) {
    case MIG_MSG_HELLO:
        dec_hello(&d, &m->u.hello);
        break;
    case MIG_MSG_HELLO_ACK:
        m->u.version = mig_get_u32(&d.in);
        if (!d.in.failed && m->u.version == 0)
            fail(&d, "%s", "version 0 is not a version");
        break;
    case MIG_MSG_PREAMBLE:
        dec_preamble(&d, &m->u.preamble);
        break;
    case MIG_MSG_PREAMBLE_ACK:
        dec_ack(&d, &m->u.ack);
        break;
    case MIG_MSG_PHASE: {
        uint8_t p = mig_get_u8(&d.in);
        if (!d.in.failed && p >= MIG_PHASE_ERROR)
            fail(&d, "%s", "unknown phase");
        m->u.phase = p;
        break;
    }
    case MIG_MSG_RAM_BATCH:
        dec_ram(&d, &m->u.ram);
        break;
    case MIG_MSG_RAM_DELTA:
        dec_delta(&d, &m->u.delta);
        break;
    case MIG_MSG_RAM_PASS_END:
    case MIG_MSG_RAM_PASS_APPLIED:
        m->u.pass_end.pass = mig_get_u32(&d.in);
        m->u.pass_end.pages = mig_get_u64(&d.in);
        break;
    case MIG_MSG_DEVICE:
        dec_device(&d, &m->u.device);
        break;
    case MIG_MSG_SERIAL_HISTORY:
        dec_serial(&d, &m->u.serial);
        break;
    case MIG_MSG_BLOB:
        dec_blob(&d, &m->u.blob);
        break;
    case MIG_MSG_READY:
    case MIG_MSG_RELEASED:
    case MIG_MSG_COMMIT:
        break;
    case MIG_MSG_ABORT:
    case MIG_MSG_ERROR:
        m->u.reason = get_str(&d, "the reason", 1, MIG_MAX_REASON, CS_TEXT);
        break;
    }
    if (d.in.failed)
        return fail(&d, "%s", "it is truncated");
    if (d.in.pos != d.in.len)
        return fail(&d, "%s", "bytes follow its end");
    return 0;
}

/* ---- RAM batches -------------------------------------------------------- */

void mig_ram_run(const struct mig_msg_ram *r, uint32_t i, uint64_t *first, uint32_t *count)
{
    *first = le64(r->runs + (size_t)i * 12);
    *count = le32(r->runs + (size_t)i * 12 + 8);
}

bool mig_ram_is_zero(const struct mig_msg_ram *r, uint32_t k)
{
    return (r->zero[k / 8] >> (k % 8)) & 1;
}

void mig_ram_batch_reset(struct mig_ram_batch *b)
{
    b->nruns = b->npages = b->nnz = 0;
    b->last = 0;
    memset(b->zero, 0, sizeof(b->zero));
}

bool mig_ram_batch_add(struct mig_ram_batch *b, uint64_t page, const uint8_t *data)
{
    if (b->npages == MIG_RAM_BATCH_PAGES || (data && b->nnz == MIG_RAM_BATCH_DATA))
        return false;
    if (b->npages && page <= b->last)
        return false;
    if (b->npages && page == b->last + 1) {
        uint8_t *run = b->runs + (size_t)(b->nruns - 1) * 12;
        put32(run + 8, le32(run + 8) + 1);
    } else {
        uint8_t *run = b->runs + (size_t)b->nruns * 12;
        put64(run, page);
        put32(run + 8, 1);
        b->nruns++;
    }
    if (data)
        b->data[b->nnz++] = data;
    else
        b->zero[b->npages / 8] |= (uint8_t)(1u << (b->npages % 8));
    b->npages++;
    b->last = page;
    return true;
}

int mig_ram_batch_encode(struct mig_ram_batch *b, struct mig_out *o)
{
    struct iovec iov[MIG_RAM_BATCH_IOV];
    size_t n = mig_ram_batch_iov(b, iov);
    for (size_t i = 0; i < n; i++)
        mig_put_bytes(o, iov[i].iov_base, iov[i].iov_len);
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

bool mig_ram_delta_next(const struct mig_msg_ram_delta *r, size_t *pos, uint64_t *page,
                        const uint8_t **delta, size_t *len)
{
    if (*pos >= r->len)
        return false;
    *page = le64(r->entries + *pos);
    *len = le16(r->entries + *pos + 8);
    *delta = r->entries + *pos + 10;
    *pos += 10 + *len;
    return true;
}

void mig_ram_delta_begin(struct mig_out *o)
{
    mig_put_u8(o, MIG_MSG_RAM_DELTA);
    mig_put_u32(o, 0);
}

void mig_ram_delta_add(struct mig_out *o, uint64_t page, const uint8_t *delta, uint16_t len)
{
    mig_put_u64(o, page);
    mig_put_u16(o, len);
    mig_put_bytes(o, delta, len);
}

int mig_ram_delta_finish(struct mig_out *o, uint32_t count)
{
    if (!mig_out_ok(o) || o->len < 5)
        return -ENOMEM;
    put32(o->buf + 1, count); /* the message starts o (begin on an empty o) */
    return 0;
}

size_t mig_ram_batch_iov(struct mig_ram_batch *b, struct iovec *iov)
{
    b->head[0] = MIG_MSG_RAM_BATCH;
    put32(b->head + 1, b->nruns);
    put32(b->head + 5, b->npages);
    size_t n = 0;
    iov[n++] = (struct iovec){b->head, sizeof(b->head)};
    iov[n++] = (struct iovec){b->runs, (size_t)b->nruns * 12};
    iov[n++] = (struct iovec){b->zero, ((size_t)b->npages + 7) / 8};
    for (uint32_t i = 0; i < b->nnz; i++)
        iov[n++] = (struct iovec){(void *)(uintptr_t)b->data[i], GUEST_PAGE_SIZE};
    return n;
}

/* ---- encoding ----------------------------------------------------------- */

static int put_str(struct mig_out *o, struct mig_str s, size_t max)
{
    if (s.len > max)
        return -EINVAL;
    mig_put_blob(o, s.p, s.len);
    return 0;
}

static int enc_kinds(struct mig_out *o, const struct mig_kind_version *k, uint32_t n, bool range)
{
    if (n > MIG_MAX_KINDS)
        return -EINVAL;
    mig_put_u32(o, n);
    for (uint32_t i = 0; i < n; i++) {
        if (put_str(o, mig_str_of(k[i].kind), MIG_KIND_MAX - 1) < 0)
            return -EINVAL;
        mig_put_u32(o, k[i].version);
        if (range)
            mig_put_u32(o, k[i].min_version);
    }
    return 0;
}

static int enc_ack(struct mig_out *o, const struct mig_msg_preamble_ack *a)
{
    mig_put_bool(o, a->accepted);
    if (a->accepted)
        return enc_kinds(o, a->kinds, a->nkinds, false);
    if (a->nreasons > MIG_MAX_REASONS)
        return -EINVAL;
    mig_put_u32(o, a->nreasons);
    for (uint32_t i = 0; i < a->nreasons; i++) {
        if (put_str(o, a->reasons[i].pointer, CELLA_ERR_POINTER_MAX - 1) < 0 ||
            put_str(o, a->reasons[i].message, MIG_MAX_REASON) < 0)
            return -EINVAL;
    }
    return 0;
}

static int enc_body(const struct mig_msg *m, struct mig_out *o)
{
    switch (m->type) {
    case MIG_MSG_HELLO:
        if (m->u.hello.nversions > MIG_MAX_VERSIONS)
            return -EINVAL;
        mig_put_u32(o, m->u.hello.nversions);
        for (uint32_t i = 0; i < m->u.hello.nversions; i++)
            mig_put_u32(o, m->u.hello.versions[i]);
        return put_str(o, m->u.hello.addr, MIG_MAX_ADDR);
    case MIG_MSG_HELLO_ACK:
        mig_put_u32(o, m->u.version);
        return 0;
    case MIG_MSG_PREAMBLE:
        if (put_str(o, m->u.preamble.spec_json, MIG_MAX_SPEC_JSON) < 0)
            return -EINVAL;
        mig_put_u64(o, m->u.preamble.ram_bytes);
        return enc_kinds(o, m->u.preamble.kinds, m->u.preamble.nkinds, true);
    case MIG_MSG_PREAMBLE_ACK:
        return enc_ack(o, &m->u.ack);
    case MIG_MSG_PHASE:
        mig_put_u8(o, (uint8_t)m->u.phase);
        return 0;
    case MIG_MSG_RAM_BATCH: {
        const struct mig_msg_ram *r = &m->u.ram;
        mig_put_u32(o, r->nruns);
        mig_put_u32(o, r->npages);
        mig_put_bytes(o, r->runs, (size_t)r->nruns * 12);
        mig_put_bytes(o, r->zero, ((size_t)r->npages + 7) / 8);
        mig_put_bytes(o, r->data, (size_t)r->nnz * GUEST_PAGE_SIZE);
        return 0;
    }
    case MIG_MSG_RAM_DELTA:
        mig_put_u32(o, m->u.delta.count);
        mig_put_bytes(o, m->u.delta.entries, m->u.delta.len);
        return 0;
    case MIG_MSG_RAM_PASS_END:
    case MIG_MSG_RAM_PASS_APPLIED:
        mig_put_u32(o, m->u.pass_end.pass);
        mig_put_u64(o, m->u.pass_end.pages);
        return 0;
    case MIG_MSG_DEVICE:
        if (put_str(o, mig_str_of(m->u.device.kind), MIG_KIND_MAX - 1) < 0 ||
            put_str(o, mig_str_of(m->u.device.id), MIG_ID_MAX - 1) < 0 ||
            m->u.device.len > MIG_PAYLOAD_MAX)
            return -EINVAL;
        mig_put_u32(o, m->u.device.version);
        mig_put_blob(o, m->u.device.data, m->u.device.len);
        return 0;
    case MIG_MSG_SERIAL_HISTORY:
        if (m->u.serial.len > MIG_SERIAL_CHUNK)
            return -EINVAL;
        mig_put_u64(o, m->u.serial.offset);
        mig_put_u64(o, m->u.serial.total);
        mig_put_blob(o, m->u.serial.data, m->u.serial.len);
        return 0;
    case MIG_MSG_BLOB:
        if (put_str(o, mig_str_of(m->u.blob.key), MIG_MAX_BLOB_KEY) < 0 ||
            m->u.blob.len > MIG_BLOB_CHUNK)
            return -EINVAL;
        mig_put_u64(o, m->u.blob.total);
        mig_put_u64(o, m->u.blob.offset);
        mig_put_blob(o, m->u.blob.data, m->u.blob.len);
        return 0;
    case MIG_MSG_READY:
    case MIG_MSG_RELEASED:
    case MIG_MSG_COMMIT:
        return 0;
    case MIG_MSG_ABORT:
    case MIG_MSG_ERROR: {
        /* Reasons are cut to fit rather than refused: they are for people. */
        struct mig_str r = m->u.reason;
        if (r.len > MIG_MAX_REASON)
            r.len = MIG_MAX_REASON;
        return put_str(o, r, MIG_MAX_REASON);
    }
    }
    return -EINVAL;
}

int mig_msg_encode(const struct mig_msg *m, struct mig_out *o)
{
    if (m->type < 1 || m->type > MIG_MSG_TYPE_MAX)
        return -EINVAL;
    size_t start = o->len;
    mig_put_u8(o, (uint8_t)m->type);
    int r = enc_body(m, o);
    if (r < 0) {
        o->len = start;
        return r;
    }
    return mig_out_ok(o) ? 0 : -ENOMEM;
}
