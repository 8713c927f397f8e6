/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Migration protocol: the codec (round trips, every malformed message
 * refused), the websocket stream, and whole source <-> target runs over a
 * socketpair or loopback TCP with fake machines (RAM buffers, fake
 * payloads): RAM identical at the end, payloads/history/blobs arrive,
 * convergence policy, and the failure cases (peer dies, garbage, stall,
 * failure injector, ABORT after RELEASED, cut in the finish window,
 * version mismatch, preamble refusal).
 */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/le.h"
#include "common/sha1.h"
#include "migrate/delta.h"
#include "migrate/proto.h"
#include "migrate/source.h"
#include "migrate/stream.h"
#include "migrate/target.h"

/* ---- codec helpers ------------------------------------------------------ */

static int decode(const uint8_t *buf, size_t len, struct mig_msg *m)
{
    struct cella_errors errs = {0};
    int r = mig_msg_decode(buf, len, m, &errs);
    if (r < 0)
        assert_true(errs.count == 1);
    cella_errors_clear(&errs);
    return r;
}

/* Encodes m; checks it decodes, that every shorter prefix and one extra byte fail. */
static void roundtrip(const struct mig_msg *m, struct mig_msg *back)
{
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(mig_msg_encode(m, &o), 0);
    assert_int_equal(decode(o.buf, o.len, back), 0);
    assert_int_equal(back->type, m->type);
    for (size_t n = 0; n < o.len; n++) {
        struct mig_msg tmp;
        /* Prefixes: a copy of exactly n bytes, so ASan sees reads past them. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, o.buf, n);
        if (decode(p, n, &tmp) == 0) {
            /* Only a message whose tail is an optional-looking empty list may
             * decode shorter: none exists in this protocol. */
            fail_msg("prefix of %zu/%zu bytes of %s decoded", n, o.len, mig_msg_type_name(m->type));
        }
        free(p);
    }
    mig_put_u8(&o, 0);
    struct mig_msg tmp;
    assert_int_equal(decode(o.buf, o.len, &tmp), -EPROTO);
    mig_out_free(&o);
}

static void test_codec_small(void **state)
{
    struct mig_msg m = {0}, b;

    m.type = MIG_MSG_HELLO;
    m.u.hello.nversions = 2;
    m.u.hello.versions[0] = 3;
    m.u.hello.versions[1] = 1;
    m.u.hello.addr = mig_str_of("10.0.0.2:12400");
    roundtrip(&m, &b);
    assert_int_equal(b.u.hello.nversions, 2);
    assert_int_equal(b.u.hello.versions[0], 3);
    assert_int_equal(b.u.hello.addr.len, 14);
    assert_memory_equal(b.u.hello.addr.p, "10.0.0.2:12400", 14);

    memset(&m, 0, sizeof(m));
    m.type = MIG_MSG_HELLO_ACK;
    m.u.version = 1;
    roundtrip(&m, &b);
    assert_int_equal(b.u.version, 1);

    m.type = MIG_MSG_PHASE;
    m.u.phase = MIG_PHASE_SERVER;
    roundtrip(&m, &b);
    assert_int_equal(b.u.phase, MIG_PHASE_SERVER);

    m.type = MIG_MSG_RAM_PASS_END;
    m.u.pass_end.pass = 7;
    m.u.pass_end.pages = 1ull << 40;
    roundtrip(&m, &b);
    assert_int_equal(b.u.pass_end.pass, 7);
    assert_true(b.u.pass_end.pages == 1ull << 40);

    m.type = MIG_MSG_RAM_PASS_APPLIED;
    m.u.pass_end.pass = 3;
    m.u.pass_end.pages = 12;
    roundtrip(&m, &b);
    assert_int_equal(b.type, MIG_MSG_RAM_PASS_APPLIED);
    assert_int_equal(b.u.pass_end.pass, 3);
    assert_true(b.u.pass_end.pages == 12);
    assert_string_equal(mig_msg_type_name(MIG_MSG_RAM_PASS_APPLIED), "RAM_PASS_APPLIED");

    static const enum mig_msg_type empty[] = {MIG_MSG_READY, MIG_MSG_RELEASED, MIG_MSG_COMMIT};
    for (size_t i = 0; i < 3; i++) {
        m.type = empty[i];
        roundtrip(&m, &b);
    }
    m.type = MIG_MSG_ERROR;
    m.u.reason = mig_str_of("disk on fire\nreally");
    roundtrip(&m, &b);
    assert_int_equal(b.u.reason.len, strlen("disk on fire\nreally"));
    m.type = MIG_MSG_ABORT;
    roundtrip(&m, &b);
}

static void test_codec_preamble(void **state)
{
    struct mig_msg *m = calloc(1, sizeof(*m)), *b = calloc(1, sizeof(*b));
    const char *spec = "{\"spec\":{},\"spec_version\":2}";
    m->type = MIG_MSG_PREAMBLE;
    m->u.preamble.spec_json = mig_str_of(spec);
    m->u.preamble.ram_bytes = 1ull << 30;
    m->u.preamble.nkinds = 2;
    strcpy(m->u.preamble.kinds[0].kind, "vcpu");
    m->u.preamble.kinds[0].version = 3;
    m->u.preamble.kinds[0].min_version = 1;
    strcpy(m->u.preamble.kinds[1].kind, "virtio-blk");
    m->u.preamble.kinds[1].version = 1;
    m->u.preamble.kinds[1].min_version = 1;
    roundtrip(m, b);
    assert_int_equal(b->u.preamble.spec_json.len, strlen(spec));
    assert_true(b->u.preamble.ram_bytes == 1ull << 30);
    assert_int_equal(b->u.preamble.nkinds, 2);
    assert_string_equal(b->u.preamble.kinds[1].kind, "virtio-blk");
    assert_int_equal(b->u.preamble.kinds[0].min_version, 1);

    memset(m, 0, sizeof(*m));
    m->type = MIG_MSG_PREAMBLE_ACK;
    m->u.ack.accepted = true;
    m->u.ack.nkinds = 1;
    strcpy(m->u.ack.kinds[0].kind, "vcpu");
    m->u.ack.kinds[0].version = 2;
    roundtrip(m, b);
    assert_true(b->u.ack.accepted);
    assert_int_equal(b->u.ack.kinds[0].version, 2);

    memset(m, 0, sizeof(*m));
    m->type = MIG_MSG_PREAMBLE_ACK;
    m->u.ack.nreasons = 2;
    m->u.ack.reasons[0].pointer = mig_str_of("/components/disk0");
    m->u.ack.reasons[0].message = mig_str_of("backend missing");
    m->u.ack.reasons[1].pointer = mig_str_of("");
    m->u.ack.reasons[1].message = mig_str_of("kind x unsupported");
    roundtrip(m, b);
    assert_false(b->u.ack.accepted);
    assert_int_equal(b->u.ack.nreasons, 2);
    assert_int_equal(b->u.ack.reasons[1].pointer.len, 0);
    free(m);
    free(b);
}

static void test_codec_payloads(void **state)
{
    struct mig_msg m = {0}, b;
    uint8_t data[100];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    m.type = MIG_MSG_DEVICE;
    strcpy(m.u.device.kind, "uart");
    strcpy(m.u.device.id, "com1");
    m.u.device.version = 4;
    m.u.device.data = data;
    m.u.device.len = sizeof(data);
    roundtrip(&m, &b);
    assert_string_equal(b.u.device.id, "com1");
    assert_int_equal(b.u.device.len, sizeof(data));
    assert_memory_equal(b.u.device.data, data, sizeof(data));

    memset(&m, 0, sizeof(m));
    m.type = MIG_MSG_SERIAL_HISTORY;
    m.u.serial.offset = 10;
    m.u.serial.total = 200;
    m.u.serial.data = data;
    m.u.serial.len = 50;
    roundtrip(&m, &b);
    assert_true(b.u.serial.offset == 10 && b.u.serial.total == 200 && b.u.serial.len == 50);

    memset(&m, 0, sizeof(m));
    m.type = MIG_MSG_BLOB;
    strcpy(m.u.blob.key, "cloud-init");
    m.u.blob.total = 1000;
    m.u.blob.offset = 900;
    m.u.blob.data = data;
    m.u.blob.len = 100;
    roundtrip(&m, &b);
    assert_string_equal(b.u.blob.key, "cloud-init");
    assert_true(b.u.blob.offset == 900);
}

static void test_codec_ram(void **state)
{
    static uint8_t pages[3][4096];
    memset(pages[0], 1, 4096);
    memset(pages[2], 3, 4096);
    struct mig_ram_batch *bt = malloc(sizeof(*bt));
    mig_ram_batch_reset(bt);
    assert_true(mig_ram_batch_add(bt, 5, pages[0]));
    assert_true(mig_ram_batch_add(bt, 6, NULL));
    assert_true(mig_ram_batch_add(bt, 7, pages[2]));
    assert_true(mig_ram_batch_add(bt, 100, NULL));
    assert_false(mig_ram_batch_add(bt, 100, NULL)); /* not ascending */
    assert_int_equal(bt->nruns, 2);
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(mig_ram_batch_encode(bt, &o), 0);
    assert_int_equal(o.len, 1 + 8 + 24 + 1 + 2 * 4096);
    struct mig_msg m;
    assert_int_equal(decode(o.buf, o.len, &m), 0);
    assert_int_equal(m.type, MIG_MSG_RAM_BATCH);
    assert_int_equal(m.u.ram.npages, 4);
    assert_int_equal(m.u.ram.nnz, 2);
    uint64_t first;
    uint32_t count;
    mig_ram_run(&m.u.ram, 0, &first, &count);
    assert_true(first == 5 && count == 3);
    mig_ram_run(&m.u.ram, 1, &first, &count);
    assert_true(first == 100 && count == 1);
    assert_false(mig_ram_is_zero(&m.u.ram, 0));
    assert_true(mig_ram_is_zero(&m.u.ram, 1));
    assert_true(mig_ram_is_zero(&m.u.ram, 3));
    assert_int_equal(m.u.ram.data[4096], 3);
    struct mig_msg back;
    roundtrip(&m, &back);
    mig_out_free(&o);

    /* Full batches: page count and data page count. */
    mig_ram_batch_reset(bt);
    for (uint32_t i = 0; i < MIG_RAM_BATCH_DATA; i++)
        assert_true(mig_ram_batch_add(bt, i * 2, pages[0]));
    assert_false(mig_ram_batch_add(bt, 10000, pages[0]));
    assert_true(mig_ram_batch_add(bt, 10000, NULL));
    mig_ram_batch_reset(bt);
    for (uint32_t i = 0; i < MIG_RAM_BATCH_PAGES; i++)
        assert_true(mig_ram_batch_add(bt, i, NULL));
    assert_false(mig_ram_batch_add(bt, MIG_RAM_BATCH_PAGES, NULL));
    mig_out_init(&o);
    assert_int_equal(mig_ram_batch_encode(bt, &o), 0);
    assert_int_equal(decode(o.buf, o.len, &m), 0);
    assert_int_equal(m.u.ram.nruns, 1);
    assert_int_equal(m.u.ram.nnz, 0);
    mig_out_free(&o);
    free(bt);
    assert_true(mig_page_is_zero(pages[1]));
    pages[1][4095] = 1;
    assert_false(mig_page_is_zero(pages[1]));
    pages[1][4095] = 0;
}

/* A hand-built message: type byte then fields appended by the caller. */
static void expect_bad(struct mig_out *o, const char *what)
{
    struct mig_msg m;
    if (decode(o->buf, o->len, &m) != -EPROTO)
        fail_msg("malformed message accepted: %s", what);
    o->len = 0;
}

static void put_ram_header(struct mig_out *o, uint32_t nruns, uint32_t npages)
{
    mig_put_u8(o, MIG_MSG_RAM_BATCH);
    mig_put_u32(o, nruns);
    mig_put_u32(o, npages);
}

static void test_codec_malformed(void **state)
{
    struct mig_out o;
    mig_out_init(&o);
    static uint8_t page[4096];

    expect_bad(&o, "empty");
    mig_put_u8(&o, 0);
    expect_bad(&o, "type 0");
    mig_put_u8(&o, MIG_MSG_TYPE_MAX + 1);
    expect_bad(&o, "type too big");

    /* HELLO */
    mig_put_u8(&o, MIG_MSG_HELLO);
    mig_put_u32(&o, 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "no versions");
    mig_put_u8(&o, MIG_MSG_HELLO);
    mig_put_u32(&o, MIG_MAX_VERSIONS + 1);
    expect_bad(&o, "too many versions");
    mig_put_u8(&o, MIG_MSG_HELLO);
    mig_put_u32(&o, 1);
    mig_put_u32(&o, 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "version 0");
    mig_put_u8(&o, MIG_MSG_HELLO);
    mig_put_u32(&o, 1);
    mig_put_u32(&o, 1);
    mig_put_blob(&o, "a b", 3);
    expect_bad(&o, "space in address");
    mig_put_u8(&o, MIG_MSG_HELLO_ACK);
    mig_put_u32(&o, 0);
    expect_bad(&o, "hello ack 0");

    /* PREAMBLE */
    struct {
        const char *spec;
        uint64_t ram;
        const char *kind;
        uint32_t v, min;
        int nk;
    } pre[] = {
        {"", 4096, "vcpu", 1, 1, 1},                                 /* empty spec */
        {"{}", 0, "vcpu", 1, 1, 1},                                  /* no RAM */
        {"{}", 4097, "vcpu", 1, 1, 1},                               /* RAM not page-aligned */
        {"{}", 1ull << 50, "vcpu", 1, 1, 1},                         /* RAM over the cap */
        {"{}", 4096, "VCPU", 1, 1, 1},                               /* kind charset */
        {"{}", 4096, "", 1, 1, 1},                                   /* empty kind */
        {"{}", 4096, "vcpu", 1, 2, 1},                               /* min > version */
        {"{}", 4096, "vcpu", 0, 0, 1},                               /* version 0 */
        {"{}", 4096, "vcpu", 1, 1, 2},                               /* duplicate kind */
        {"{\0}", 4096, "vcpu", 1, 1, 1},                             /* NUL in spec */
        {"{}", 4096, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1, 1, 1}, /* kind too long */
    };
    for (size_t i = 0; i < sizeof(pre) / sizeof(pre[0]); i++) {
        mig_put_u8(&o, MIG_MSG_PREAMBLE);
        mig_put_blob(&o, pre[i].spec, i == 9 ? 3 : strlen(pre[i].spec));
        mig_put_u64(&o, pre[i].ram);
        mig_put_u32(&o, (uint32_t)pre[i].nk);
        for (int k = 0; k < pre[i].nk; k++) {
            mig_put_blob(&o, pre[i].kind, strlen(pre[i].kind));
            mig_put_u32(&o, pre[i].v);
            mig_put_u32(&o, pre[i].min);
        }
        char what[32];
        snprintf(what, sizeof(what), "preamble case %zu", i);
        expect_bad(&o, what);
    }
    mig_put_u8(&o, MIG_MSG_PREAMBLE);
    mig_put_blob(&o, "{}", 2);
    mig_put_u64(&o, 4096);
    mig_put_u32(&o, MIG_MAX_KINDS + 1);
    expect_bad(&o, "too many kinds");

    /* PREAMBLE_ACK */
    mig_put_u8(&o, MIG_MSG_PREAMBLE_ACK);
    mig_put_u8(&o, 2);
    expect_bad(&o, "verdict not bool");
    mig_put_u8(&o, MIG_MSG_PREAMBLE_ACK);
    mig_put_u8(&o, 0);
    mig_put_u32(&o, 0);
    expect_bad(&o, "refusal without reasons");
    mig_put_u8(&o, MIG_MSG_PREAMBLE_ACK);
    mig_put_u8(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_blob(&o, "", 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "empty reason");
    mig_put_u8(&o, MIG_MSG_PREAMBLE_ACK);
    mig_put_u8(&o, 1);
    mig_put_u32(&o, 1);
    mig_put_blob(&o, "vcpu", 4);
    mig_put_u32(&o, 0);
    expect_bad(&o, "accepted version 0");

    /* PHASE */
    mig_put_u8(&o, MIG_MSG_PHASE);
    mig_put_u8(&o, MIG_PHASE_ERROR);
    expect_bad(&o, "phase Error as notice");
    mig_put_u8(&o, MIG_MSG_PHASE);
    mig_put_u8(&o, 200);
    expect_bad(&o, "phase out of range");

    /* RAM_BATCH */
    put_ram_header(&o, 0, 1);
    expect_bad(&o, "no runs");
    put_ram_header(&o, 1, 0);
    expect_bad(&o, "no pages");
    put_ram_header(&o, 1, MIG_RAM_BATCH_PAGES + 1);
    expect_bad(&o, "too many pages");
    put_ram_header(&o, 2, 1);
    expect_bad(&o, "more runs than pages");
    put_ram_header(&o, 1, 2); /* run of 1, 2 pages claimed */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 3);
    expect_bad(&o, "sum mismatch");
    put_ram_header(&o, 1, 1); /* zero-length run */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 0);
    mig_put_u8(&o, 1);
    expect_bad(&o, "empty run");
    put_ram_header(&o, 2, 2); /* adjacent runs */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_u64(&o, 1);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 3);
    expect_bad(&o, "adjacent runs");
    put_ram_header(&o, 2, 2); /* descending */
    mig_put_u64(&o, 9);
    mig_put_u32(&o, 1);
    mig_put_u64(&o, 2);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 3);
    expect_bad(&o, "descending runs");
    put_ram_header(&o, 1, 1); /* overflow */
    mig_put_u64(&o, UINT64_MAX);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 1);
    expect_bad(&o, "run overflows");
    put_ram_header(&o, 1, 1); /* padding bit set */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 0x3);
    expect_bad(&o, "padding bits");
    put_ram_header(&o, 1, 1); /* data missing */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 0);
    mig_put_bytes(&o, page, 100);
    expect_bad(&o, "short page");
    put_ram_header(&o, 1, 1); /* zero page with data */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, 1);
    mig_put_u8(&o, 1);
    mig_put_bytes(&o, page, 4096);
    expect_bad(&o, "data for a zero page");
    put_ram_header(&o, 1, MIG_RAM_BATCH_DATA + 8); /* too many data pages (bits clear) */
    mig_put_u64(&o, 0);
    mig_put_u32(&o, MIG_RAM_BATCH_DATA + 8);
    for (int i = 0; i < (MIG_RAM_BATCH_DATA + 8) / 8; i++)
        mig_put_u8(&o, 0);
    for (int i = 0; i < MIG_RAM_BATCH_DATA + 8; i++)
        mig_put_bytes(&o, page, 4096);
    expect_bad(&o, "too many data pages");

    /* DEVICE */
    mig_put_u8(&o, MIG_MSG_DEVICE);
    mig_put_blob(&o, "uart", 4);
    mig_put_blob(&o, "com 1", 5);
    mig_put_u32(&o, 1);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "space in id");
    mig_put_u8(&o, MIG_MSG_DEVICE);
    mig_put_blob(&o, "uart", 4);
    mig_put_blob(&o, "com1", 4);
    mig_put_u32(&o, 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "device version 0");
    mig_put_u8(&o, MIG_MSG_DEVICE);
    mig_put_blob(&o, "uart", 4);
    mig_put_blob(&o, "com1", 4);
    mig_put_u32(&o, 1);
    mig_put_u32(&o, MIG_PAYLOAD_MAX + 1);
    expect_bad(&o, "payload too long");

    /* SERIAL_HISTORY */
    mig_put_u8(&o, MIG_MSG_SERIAL_HISTORY);
    mig_put_u64(&o, 10);
    mig_put_u64(&o, 12);
    mig_put_blob(&o, "abc", 3);
    expect_bad(&o, "history past total");
    mig_put_u8(&o, MIG_MSG_SERIAL_HISTORY);
    mig_put_u64(&o, UINT64_MAX);
    mig_put_u64(&o, UINT64_MAX);
    mig_put_blob(&o, "abc", 3);
    expect_bad(&o, "history offset overflow");

    /* BLOB */
    mig_put_u8(&o, MIG_MSG_BLOB);
    mig_put_blob(&o, "k", 1);
    mig_put_u64(&o, (uint64_t)MIG_BLOB_MAX + 1);
    mig_put_u64(&o, 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "blob too big");
    mig_put_u8(&o, MIG_MSG_BLOB);
    mig_put_blob(&o, "k", 1);
    mig_put_u64(&o, 2);
    mig_put_u64(&o, 1);
    mig_put_blob(&o, "ab", 2);
    expect_bad(&o, "chunk past the blob");
    mig_put_u8(&o, MIG_MSG_BLOB);
    mig_put_blob(&o, "k\x01", 2);
    mig_put_u64(&o, 0);
    mig_put_u64(&o, 0);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "control char in key");

    /* ERROR / ABORT */
    mig_put_u8(&o, MIG_MSG_ERROR);
    mig_put_blob(&o, "", 0);
    expect_bad(&o, "empty error");
    mig_put_u8(&o, MIG_MSG_ABORT);
    mig_put_blob(&o, "a\0b", 3);
    expect_bad(&o, "NUL in reason");
    mig_put_u8(&o, MIG_MSG_ERROR);
    mig_put_u32(&o, MIG_MAX_REASON + 1);
    expect_bad(&o, "reason too long");
    mig_out_free(&o);
}

/* ---- fake machines ------------------------------------------------------ */

#define RAM_PAGES 4096 /* 16 MiB */

struct fake_vm {
    struct guest_mem mem;
    uint8_t *ram;
    uint64_t npages;
    uint64_t *dirty;
    bool tracking, paused, running;
    int resumes, pauses;
    uint32_t dirty_rate; /* pages the "guest" writes per dirty fetch while running */
    uint32_t seed;
    /* target */
    int loaded;
    bool load_finished;
    bool fail_resume;
    int reset_at_fetch; /* source: the guest "resets" at this dirty fetch (1-based); 0 never */
    int fetches;
    unsigned throttle, max_throttle; /* auto-converge: the current and the highest throttle */
    int throttle_calls;
    uint32_t rewrite_pages; /* pages [0, n) rewritten whole at each dirty fetch while running */
    uint8_t rewrites;
    atomic_bool stop_writer;    /* set by pause: a writer thread stops */
    atomic_bool writer_running; /* pause waits for it to clear, like vCPUs leaving KVM_RUN */
    int peeks;
};

static void fake_init(struct fake_vm *v, uint64_t npages, bool source)
{
    memset(v, 0, sizeof(*v));
    v->npages = npages;
    v->ram = malloc(npages * 4096);
    v->dirty = calloc((npages + 63) / 64, 8);
    v->seed = 12345;
    if (source) {
        memset(v->ram, 0, npages * 4096);
        for (uint64_t p = 0; p < npages; p += 3) /* two pages in three carry data */
            for (int i = 0; i < 4096; i += 512)
                v->ram[p * 4096 + (uint64_t)i] = (uint8_t)(p * 7 + (uint64_t)i + 1);
        v->running = true;
    } else {
        memset(v->ram, 0xaa, npages * 4096); /* zero markers must clear this */
    }
    guest_mem_init_buffer(&v->mem, v->ram, npages * 4096);
}

static void fake_free(struct fake_vm *v)
{
    if (v->mem.owned)
        guest_mem_destroy(&v->mem); /* fake_use_guest_ram */
    else
        free(v->ram);
    free(v->dirty);
}

/* A target whose RAM is real guest RAM (as cella's): its untouched pages are holes. */
static void fake_use_guest_ram(struct fake_vm *v)
{
    free(v->ram);
    assert_int_equal(guest_mem_init(&v->mem, v->npages * 4096), 0);
    v->ram = v->mem.base;
    memset(v->ram + 4096, 0xaa, 4096); /* an allocated page a zero marker must clear */
}

static uint32_t rnd(struct fake_vm *v)
{
    v->seed = v->seed * 1103515245u + 12345u;
    return v->seed >> 8;
}

static struct guest_mem *f_mem(void *vm)
{
    return &((struct fake_vm *)vm)->mem;
}

static const struct mig_kind_version fake_kinds[] = {
    {"vcpu", 2, 1},
    {"uart", 1, 1},
};

static size_t f_kinds(void *vm, struct mig_kind_version *out, size_t max)
{
    for (size_t i = 0; i < 2 && i < max; i++)
        out[i] = fake_kinds[i];
    return 2;
}

static int f_pause(void *vm)
{
    struct fake_vm *v = vm;
    v->paused = true;
    v->running = false;
    v->pauses++;
    atomic_store(&v->stop_writer, true);
    while (atomic_load(&v->writer_running))
        sched_yield();
    return 0;
}

static int f_resume(void *vm)
{
    struct fake_vm *v = vm;
    if (v->fail_resume)
        return -EIO;
    v->paused = false;
    v->running = true;
    v->resumes++;
    return 0;
}

static int f_dirty_start(void *vm)
{
    struct fake_vm *v = vm;
    v->tracking = true;
    memset(v->dirty, 0, (v->npages + 63) / 64 * 8);
    return 0;
}

static int f_dirty_fetch(void *vm, uint64_t *out)
{
    struct fake_vm *v = vm;
    assert_true(v->tracking);
    if (v->reset_at_fetch && ++v->fetches >= v->reset_at_fetch)
        return -ECANCELED;
    if (!v->paused) {
        /* A throttled "guest" runs (100 - throttle) % of the time: it writes that much less. */
        uint32_t rate = (uint32_t)((uint64_t)v->dirty_rate * (100 - v->throttle) / 100);
        for (uint32_t i = 0; i < rate; i++) {
            uint64_t p = rnd(v) % v->npages;
            v->ram[p * 4096 + rnd(v) % 4096] = (uint8_t)rnd(v);
            v->dirty[p / 64] |= 1ull << (p % 64);
        }
        v->rewrites++;
        for (uint64_t p = 0; p < v->rewrite_pages && p < v->npages; p++) {
            memset(v->ram + p * 4096, 0x11 * (v->rewrites % 15 + 1), 4096);
            v->dirty[p / 64] |= 1ull << (p % 64);
        }
    }
    for (uint64_t w = 0; w < (v->npages + 63) / 64; w++)
        out[w] |= __atomic_load_n(&v->dirty[w], __ATOMIC_ACQUIRE);
    return 0;
}

static int f_dirty_clear(void *vm, const uint64_t *bits)
{
    struct fake_vm *v = vm;
    for (uint64_t w = 0; w < (v->npages + 63) / 64; w++)
        __atomic_fetch_and(&v->dirty[w], ~bits[w], __ATOMIC_ACQ_REL);
    return 0;
}

static int f_throttle(void *vm, unsigned pct)
{
    struct fake_vm *v = vm;
    assert_true(pct <= 99);
    v->throttle = pct;
    v->throttle_calls++;
    if (pct > v->max_throttle)
        v->max_throttle = pct;
    return 0;
}

static int f_dirty_peek(void *vm, uint64_t *out)
{
    struct fake_vm *v = vm;
    assert_true(v->tracking);
    v->peeks++;
    for (uint64_t w = 0; w < (v->npages + 63) / 64; w++)
        out[w] |= __atomic_load_n(&v->dirty[w], __ATOMIC_ACQUIRE);
    return 0;
}

static void f_dirty_stop(void *vm)
{
    ((struct fake_vm *)vm)->tracking = false;
}

static int f_save(void *vm, const struct mig_kind_version *want, size_t nwant, mig_emit_fn emit,
                  void *ctx)
{
    assert_int_equal(nwant, 2);
    assert_true(((struct fake_vm *)vm)->paused);
    uint8_t big[5000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 13);
    int r = emit(ctx, "vcpu", "0", want[0].version, big, sizeof(big));
    if (r == 0)
        r = emit(ctx, "vcpu", "1", want[0].version, big, 10);
    if (r == 0)
        r = emit(ctx, "uart", "com1", want[1].version, (const uint8_t *)"uart", 4);
    return r;
}

static int f_load(void *vm, const char *kind, const char *id, uint32_t version, const uint8_t *data,
                  size_t len, struct cella_errors *errs)
{
    struct fake_vm *v = vm;
    if (strcmp(kind, "vcpu") == 0) {
        if (version != 2 || (strcmp(id, "0") != 0 && strcmp(id, "1") != 0))
            return cella_err(errs, -EINVAL, "", "bad vcpu payload");
        for (size_t i = 0; i < len; i++)
            if (data[i] != (uint8_t)(i * 13))
                return cella_err(errs, -EINVAL, "", "vcpu payload corrupt");
    } else if (strcmp(kind, "uart") != 0 || len != 4 || memcmp(data, "uart", 4) != 0) {
        return -ENOENT;
    }
    v->loaded++;
    return 0;
}

static int f_load_finish(void *vm, struct cella_errors *errs)
{
    struct fake_vm *v = vm;
    if (v->loaded != 3)
        return cella_err(errs, -EINVAL, "", "expected 3 payloads, got %d", v->loaded);
    v->load_finished = true;
    return 0;
}

static const struct mig_vm_ops fake_ops = {
    .guest_mem = f_mem,
    .payload_kinds = f_kinds,
    .pause = f_pause,
    .dirty_start = f_dirty_start,
    .dirty_fetch = f_dirty_fetch,
    .dirty_peek = f_dirty_peek,
    .dirty_clear = f_dirty_clear,
    .dirty_stop = f_dirty_stop,
    .throttle = f_throttle,
    .save_state = f_save,
    .resume = f_resume,
    .load_state = f_load,
    .load_finish = f_load_finish,
};

/* ---- source and target hooks --------------------------------------------- */

#define BLOB_SIZE ((5u << 20) + 17) /* two chunks */
static uint8_t *blob_data;

struct src_side {
    struct fake_vm vm;
    int released, reacquired;
    enum mig_phase last_phase;
    int fail_release;
};

static int s_serial(void *ctx, mig_serial_emit_fn emit, void *ectx)
{
    int r = emit(ectx, 0, (const uint8_t *)"hello", 5, 1005);
    return r < 0 ? r : emit(ectx, 1000, (const uint8_t *)"world", 5, 1005);
}

static int s_blobs(void *ctx, mig_blob_emit_fn emit, void *ectx)
{
    int r = emit(ectx, "blob0", blob_data, BLOB_SIZE);
    return r < 0 ? r : emit(ectx, "empty", NULL, 0);
}

static int s_release(void *ctx, struct cella_errors *errs)
{
    struct src_side *s = ctx;
    s->released++;
    return s->fail_release ? cella_err(errs, -EIO, "", "flush failed") : 0;
}

static int s_reacquire(void *ctx, struct cella_errors *errs)
{
    ((struct src_side *)ctx)->reacquired++;
    return 0;
}

static void s_phase(void *ctx, enum mig_phase p)
{
    ((struct src_side *)ctx)->last_phase = p;
}

static const struct mig_source_hooks src_hooks = {
    .serial_history = s_serial,
    .blobs = s_blobs,
    .release_backends = s_release,
    .reacquire_backends = s_reacquire,
    .phase = s_phase,
};

struct tgt_side {
    struct fake_vm vm;
    bool prepared, fail_prepare, fail_open, fail_imports, refuse_uart;
    char history[1005];
    uint64_t history_total;
    int blobs;
    bool blob_ok;
    int opened;
    enum mig_phase phases[32];
    int nphases;
};

static const char spec_json[] = "{\"spec\":{\"board\":{}},\"spec_version\":2}";

static int t_accepts(void *ctx, const char *kind, uint32_t offered, uint32_t *accept)
{
    struct tgt_side *t = ctx;
    if (strcmp(kind, "vcpu") == 0) {
        *accept = offered < 2 ? offered : 2;
        return 0;
    }
    if (strcmp(kind, "uart") == 0 && !t->refuse_uart) {
        *accept = 1;
        return 0;
    }
    return -ENOTSUP;
}

static int t_prepare(void *ctx, const char *json, size_t len, bool check_only,
                     struct mig_target_vm *out, struct cella_errors *errs)
{
    struct tgt_side *t = ctx;
    assert_int_equal(len, strlen(spec_json));
    assert_memory_equal(json, spec_json, len);
    if (t->fail_prepare) {
        cella_err(errs, -EINVAL, "/components/disk0", "backend \"root\" does not exist");
        return cella_err(errs, -EINVAL, "/board/cpus", "cannot host 999 vCPUs");
    }
    if (check_only)
        return 0;
    t->prepared = true;
    out->ops = &fake_ops;
    out->vm = &t->vm;
    out->fail_imports = t->fail_imports;
    return 0;
}

static int t_serial(void *ctx, uint64_t offset, const uint8_t *data, size_t len, uint64_t total,
                    struct cella_errors *errs)
{
    struct tgt_side *t = ctx;
    assert_true(offset + len <= sizeof(t->history));
    memcpy(t->history + offset, data, len);
    t->history_total = total;
    return 0;
}

static int t_blob(void *ctx, const char *key, const uint8_t *data, size_t len,
                  struct cella_errors *errs)
{
    struct tgt_side *t = ctx;
    t->blobs++;
    if (strcmp(key, "blob0") == 0)
        t->blob_ok = len == BLOB_SIZE && memcmp(data, blob_data, len) == 0;
    else
        assert_true(strcmp(key, "empty") == 0 && len == 0);
    return 0;
}

static int t_open(void *ctx, struct cella_errors *errs)
{
    struct tgt_side *t = ctx;
    t->opened++;
    return t->fail_open ? cella_err(errs, -ENOENT, "", "cannot open /dev/nope") : 0;
}

static void t_phase(void *ctx, enum mig_phase p)
{
    struct tgt_side *t = ctx;
    if (t->nphases < 32)
        t->phases[t->nphases++] = p;
}

static const struct mig_target_hooks tgt_hooks = {
    .payload_accepts = t_accepts,
    .prepare = t_prepare,
    .serial_history = t_serial,
    .blob = t_blob,
    .open_backends = t_open,
    .phase = t_phase,
};

/* ---- running both sides --------------------------------------------------- */

struct src_run {
    struct src_side side;
    struct mig_stream *s;
    struct mig_source_config cfg;
    struct mig_source_result res;
    struct cella_errors errs;
    int rc;
    pthread_t th;
    int listen_fd; /* TCP mode: accept and answer the upgrade first */
};

static void *source_thread(void *arg)
{
    struct src_run *sr = arg;
    struct mig_source_params p = {
        .vm_ops = &fake_ops,
        .vm = &sr->side.vm,
        .hooks = &src_hooks,
        .ctx = &sr->side,
        .spec_wire_json = spec_json,
        .spec_len = strlen(spec_json),
        .cfg = sr->cfg,
    };
    sr->rc = mig_source_run(sr->s, &p, &sr->res, &sr->errs);
    return NULL;
}

static void src_start(struct src_run *sr, int fd)
{
    assert_int_equal(mig_stream_server(fd, true, NULL, 0, &sr->s), 0);
    assert_int_equal(pthread_create(&sr->th, NULL, source_thread, sr), 0);
}

static void src_join(struct src_run *sr)
{
    pthread_join(sr->th, NULL);
    mig_stream_free(sr->s);
    sr->s = NULL;
}

static bool errs_have(const struct cella_errors *e, const char *needle)
{
    for (size_t i = 0; i < e->count; i++)
        if (strstr(e->items[i].message, needle))
            return true;
    return false;
}

static void dump_errs(const char *who, const struct cella_errors *e)
{
    for (size_t i = 0; i < e->count; i++)
        printf("  %s: %s: %s\n", who, e->items[i].pointer, e->items[i].message);
}

struct pair {
    struct src_run *sr;
    struct tgt_side *tg;
    struct mig_target *t;
    struct cella_errors terrs;
    int t_start, t_run;
};

static void pair_init(struct pair *p)
{
    memset(p, 0, sizeof(*p));
    p->sr = calloc(1, sizeof(*p->sr));
    p->tg = calloc(1, sizeof(*p->tg));
    fake_init(&p->sr->side.vm, RAM_PAGES, true);
    fake_init(&p->tg->vm, RAM_PAGES, false);
}

/* Runs target stages 1 and 2 over a socketpair against the source thread. */
static void pair_run(struct pair *p, struct mig_target_config tcfg)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    src_start(p->sr, sv[0]);
    struct mig_stream *ts;
    assert_int_equal(mig_stream_client(sv[1], NULL, 0, &ts), 0);
    struct mig_target_params tp = {
        .advertise_addr = "192.0.2.7:12400",
        .stream = ts,
        .hooks = &tgt_hooks,
        .ctx = p->tg,
        .cfg = tcfg,
    };
    p->t_start = mig_target_start(&tp, &p->t, &p->terrs);
    if (p->t_start == 0)
        p->t_run = mig_target_run(p->t, &p->terrs);
    mig_target_free(p->t);
    p->t = NULL;
    src_join(p->sr);
    if (getenv("MIG_TEST_VERBOSE")) {
        dump_errs("source", &p->sr->errs);
        dump_errs("target", &p->terrs);
    }
}

static void pair_free(struct pair *p)
{
    fake_free(&p->sr->side.vm);
    fake_free(&p->tg->vm);
    cella_errors_clear(&p->sr->errs);
    cella_errors_clear(&p->terrs);
    free(p->sr);
    free(p->tg);
}

/*
 * The migration committed: no failure on either side (errors printed if
 * there was one), RAM identical on both, the guest resumed on the target once.
 */
static void assert_committed(struct pair *p)
{
    if (p->sr->rc != 0 || p->t_run != 0) {
        dump_errs("source", &p->sr->errs);
        dump_errs("target", &p->terrs);
    }
    assert_int_equal(p->t_start, 0);
    assert_int_equal(p->t_run, 0);
    assert_int_equal(p->sr->rc, 0);
    assert_int_equal(p->sr->res.outcome, MIG_OUTCOME_COMMITTED);
    assert_memory_equal(p->sr->side.vm.ram, p->tg->vm.ram, RAM_PAGES * 4096);
    assert_int_equal(p->tg->vm.resumes, 1);
}

static void assert_source_resumed(struct pair *p)
{
    assert_int_not_equal(p->sr->rc, 0);
    assert_int_equal(p->sr->res.outcome, MIG_OUTCOME_FAILED);
    assert_true(p->sr->res.resumed);
    assert_true(p->sr->side.vm.running);
    assert_false(p->sr->side.vm.tracking);
    assert_int_equal(p->sr->side.released, p->sr->side.reacquired);
    assert_int_equal(p->tg->vm.resumes, 0); /* the target never ran the guest */
}

static void test_full_migration(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 20;
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    assert_string_equal(p.sr->res.target_addr, "192.0.2.7:12400");
    /* Device state and extras arrived, guest runs on the target only. */
    assert_int_equal(p.tg->vm.loaded, 3);
    assert_true(p.tg->vm.load_finished);
    assert_true(p.sr->side.vm.paused);
    assert_int_equal(p.sr->side.vm.resumes, 0);
    assert_int_equal(p.sr->side.released, 1);
    assert_int_equal(p.sr->side.reacquired, 0);
    assert_int_equal(p.tg->opened, 1);
    assert_memory_equal(p.tg->history, "hello", 5);
    assert_memory_equal(p.tg->history + 1000, "world", 5);
    assert_true(p.tg->history_total == 1005);
    assert_int_equal(p.tg->blobs, 2);
    assert_true(p.tg->blob_ok);
    /* Phases: the target saw every one, in order. */
    static const enum mig_phase order[] = {
        MIG_PHASE_SYNC,           MIG_PHASE_RAM_PUSH, MIG_PHASE_PAUSE,
        MIG_PHASE_RAM_PUSH_DIRTY, MIG_PHASE_DEVICE,   MIG_PHASE_RESUME,
        MIG_PHASE_RAM_PULL,       MIG_PHASE_SERVER,   MIG_PHASE_FINISH};
    assert_int_equal(p.tg->nphases, 9);
    for (int i = 0; i < 9; i++)
        assert_int_equal(p.tg->phases[i], order[i]);
    assert_int_equal(p.sr->side.last_phase, MIG_PHASE_FINISH);
    /* Statistics. */
    const struct mig_stats *st = &p.sr->res.stats;
    assert_true(st->converged);
    assert_true(st->passes >= 1);
    assert_int_equal(st->version, MIG_PROTO_VERSION_NEWEST);
    assert_true(st->phase[MIG_PHASE_RAM_PUSH].pages >= RAM_PAGES);
    assert_true(st->phase[MIG_PHASE_RAM_PUSH].zero_pages >= RAM_PAGES / 3);
    /* Zero pages cost nothing: the first pass is ~2/3 of RAM on the wire. */
    assert_true(st->phase[MIG_PHASE_RAM_PUSH].bytes < (uint64_t)RAM_PAGES * 4096);
    assert_true(st->blackout_us > 0);
    assert_true(st->blackout_us <= st->total_us);
    assert_true(st->phase[MIG_PHASE_DEVICE].messages == 4); /* PHASE + 3 payloads */
    pair_free(&p);
}

/* The same with the target's RAM mapped as cella maps it (holes from pagemap). */
static void test_full_migration_guest_ram(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    fake_use_guest_ram(&p.tg->vm);
    p.sr->side.vm.dirty_rate = 200;
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 4;
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    pair_free(&p);
}

/*
 * A target that speaks only version 1 (no RAM_PASS_APPLIED): the source
 * picks version 1 and does not wait for acknowledgements.
 */
static void test_version1_target(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 20;
    pair_run(&p, (struct mig_target_config){.max_version = 1});
    assert_committed(&p);
    assert_int_equal(p.sr->res.stats.version, 1);
    pair_free(&p);
}

/* The guest resets on the source during pre-copy: the migration ends, nothing is moved. */
static void test_guest_reset_during_precopy(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000; /* never converges by itself */
    p.sr->cfg.downtime_ms = 1;
    p.sr->side.vm.reset_at_fetch = 2;
    pair_run(&p, (struct mig_target_config){0});
    assert_int_equal(p.sr->rc, -ECANCELED);
    assert_int_equal(p.sr->res.outcome, MIG_OUTCOME_FAILED);
    assert_true(p.sr->res.resumed);
    assert_true(errs_have(&p.sr->errs, "the guest reset, powered off or failed on the source"));
    assert_int_not_equal(p.t_run, 0);
    assert_int_equal(p.tg->vm.resumes, 0);
    pair_free(&p);
}

static void test_convergence_max_passes(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000; /* ~9 MiB per pass: at 256 MiB/s never fits 1 ms */
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 4;
    p.sr->cfg.max_bandwidth = 256u << 20;
    p.sr->cfg.no_auto_converge = true;
    p.sr->cfg.no_delta = true; /* the bandwidth model: 4 KiB a page */
    pair_run(&p, (struct mig_target_config){0});
    assert_int_equal(p.sr->rc, 0);
    assert_int_equal(p.t_run, 0);
    const struct mig_stats *st = &p.sr->res.stats;
    assert_false(st->converged);
    assert_string_equal(st->precopy_end, "max passes");
    assert_int_equal(st->passes, 5); /* 4 live, 1 paused */
    assert_int_equal(st->phase[MIG_PHASE_RAM_PUSH].passes, 4);
    assert_int_equal(st->phase[MIG_PHASE_RAM_PUSH_DIRTY].passes, 1);
    assert_true(st->final_dirty_pages > 0);
    assert_true(st->bandwidth_bps > 0);
    assert_memory_equal(p.sr->side.vm.ram, p.tg->vm.ram, RAM_PAGES * 4096);
    pair_free(&p);
}

static void test_convergence_time_limit(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000;
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 100000;
    p.sr->cfg.precopy_ms = 100;
    p.sr->cfg.max_bandwidth = 256u << 20;
    p.sr->cfg.no_auto_converge = true;
    p.sr->cfg.no_delta = true; /* the bandwidth model: 4 KiB a page */
    pair_run(&p, (struct mig_target_config){0});
    assert_int_equal(p.sr->rc, 0);
    assert_string_equal(p.sr->res.stats.precopy_end, "time limit");
    assert_int_equal(p.sr->side.vm.throttle_calls, 0);
    assert_memory_equal(p.sr->side.vm.ram, p.tg->vm.ram, RAM_PAGES * 4096);
    pair_free(&p);
}

/*
 * A guest that dirties faster than the link: auto-converge throttles its
 * vCPUs step by step until the final pass fits the budget, and ends the
 * throttle at the pause.
 */
static void test_auto_converge(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000;
    p.sr->cfg.downtime_ms = 10;
    p.sr->cfg.max_bandwidth = 256u << 20; /* 10 ms: about 650 dirty pages */
    p.sr->cfg.no_delta = true;            /* the bandwidth model: 4 KiB a page */
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    const struct mig_stats *st = &p.sr->res.stats;
    assert_true(st->converged);
    assert_string_equal(st->precopy_end, "converged");
    assert_true(st->throttle_pct >= MIG_THROTTLE_INITIAL + MIG_THROTTLE_STEP);
    assert_int_equal(st->throttle_pct, p.sr->side.vm.max_throttle);
    assert_true(st->throttled_passes >= 2);
    assert_int_equal(p.sr->side.vm.throttle, 0); /* ended at the pause */
    assert_true(st->bandwidth_bps <= (256u << 20) + (256u << 20) / 20);
    pair_free(&p);
}

/* The same guest without auto-converge: pre-copy gives up at max passes. */
static void test_auto_converge_off(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000;
    p.sr->cfg.downtime_ms = 10;
    p.sr->cfg.max_passes = 12;
    p.sr->cfg.max_bandwidth = 256u << 20;
    p.sr->cfg.no_auto_converge = true;
    p.sr->cfg.no_delta = true; /* the bandwidth model: 4 KiB a page */
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    assert_false(p.sr->res.stats.converged);
    assert_string_equal(p.sr->res.stats.precopy_end, "max passes");
    assert_int_equal(p.sr->res.stats.throttle_pct, 0);
    assert_int_equal(p.sr->side.vm.throttle_calls, 0);
    pair_free(&p);
}

/* A failure while throttled: the source resumes unthrottled. */
static void test_throttle_ends_on_failure(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 3000;
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_bandwidth = 256u << 20;
    p.sr->side.vm.reset_at_fetch = 6; /* throttled from the second pass on */
    p.sr->cfg.no_delta = true;        /* the bandwidth model: 4 KiB a page */
    pair_run(&p, (struct mig_target_config){0});
    assert_int_equal(p.sr->rc, -ECANCELED);
    assert_true(p.sr->res.resumed);
    assert_true(p.sr->side.vm.max_throttle >= MIG_THROTTLE_INITIAL);
    assert_int_equal(p.sr->side.vm.throttle, 0);
    pair_free(&p);
}

/* max_bandwidth holds the live passes to the rate. */
static void test_max_bandwidth(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->cfg.max_bandwidth = 64u << 20;
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    const struct mig_stats *st = &p.sr->res.stats;
    uint64_t live = st->phase[MIG_PHASE_RAM_PUSH].bytes;
    assert_true(live > (4u << 20));
    /* the pass took at least bytes / rate */
    assert_true(st->phase[MIG_PHASE_RAM_PUSH].us >= live * 1000000 / (64u << 20));
    assert_true(st->bandwidth_bps <= (64u << 20) + (64u << 20) / 20);
    pair_free(&p);
}

static void test_converges_quickly(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 0;
    pair_run(&p, (struct mig_target_config){0});
    assert_int_equal(p.sr->rc, 0);
    assert_string_equal(p.sr->res.stats.precopy_end, "no dirty pages");
    assert_int_equal(p.sr->res.stats.passes, 2); /* one live, the (empty) paused one */
    assert_true(p.sr->res.stats.final_dirty_pages == 0);
    pair_free(&p);
}

static void test_fail_exports(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->cfg.fail_exports = true;
    pair_run(&p, (struct mig_target_config){0});
    assert_source_resumed(&p);
    assert_true(errs_have(&p.sr->errs, "failure injector"));
    assert_int_not_equal(p.t_run, 0);
    assert_true(errs_have(&p.terrs, "source: "));
    assert_int_equal(p.tg->phases[p.tg->nphases - 1], MIG_PHASE_ERROR);
    assert_int_equal(p.sr->side.last_phase, MIG_PHASE_ERROR);
    pair_free(&p);
}

static void test_fail_imports(void **state)
{
    struct pair p;
    pair_init(&p);
    p.tg->fail_imports = true;
    pair_run(&p, (struct mig_target_config){0});
    assert_source_resumed(&p);
    assert_true(errs_have(&p.terrs, "failure injector"));
    assert_true(errs_have(&p.sr->errs, "target: "));
    pair_free(&p);
}

static void test_abort_after_released(void **state)
{
    struct pair p;
    pair_init(&p);
    p.tg->fail_open = true;
    pair_run(&p, (struct mig_target_config){0});
    assert_source_resumed(&p);
    assert_int_equal(p.sr->side.released, 1);
    assert_int_equal(p.sr->side.reacquired, 1);
    assert_true(errs_have(&p.sr->errs, "cannot open /dev/nope"));
    pair_free(&p);
}

static void test_target_resume_fails(void **state)
{
    struct pair p;
    pair_init(&p);
    p.tg->vm.fail_resume = true;
    pair_run(&p, (struct mig_target_config){0});
    assert_source_resumed(&p);
    assert_int_equal(p.sr->side.reacquired, 1);
    pair_free(&p);
}

static void test_release_fails(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.fail_release = 1;
    pair_run(&p, (struct mig_target_config){0});
    assert_source_resumed(&p);
    assert_int_equal(p.sr->side.reacquired, 1);
    assert_int_equal(p.tg->opened, 0);
    pair_free(&p);
}

static void test_preamble_refused(void **state)
{
    struct pair p;
    pair_init(&p);
    p.tg->fail_prepare = true;
    p.tg->refuse_uart = true;
    pair_run(&p, (struct mig_target_config){0});
    /* Every reason, on both sides; nothing built, the source never paused. */
    assert_int_not_equal(p.t_start, 0);
    assert_false(p.tg->prepared);
    assert_int_equal(p.terrs.count, 3);
    assert_true(errs_have(&p.terrs, "uart"));
    assert_true(errs_have(&p.terrs, "999 vCPUs"));
    assert_int_equal(p.sr->errs.count, 3);
    assert_true(errs_have(&p.sr->errs, "target: backend \"root\" does not exist"));
    bool ptr = false;
    for (size_t i = 0; i < p.sr->errs.count; i++)
        ptr |= strcmp(p.sr->errs.items[i].pointer, "/components/disk0") == 0;
    assert_true(ptr);
    assert_source_resumed(&p);
    assert_int_equal(p.sr->side.vm.pauses, 0);
    pair_free(&p);
}

/* ---- delta pages ---------------------------------------------------------- */

static void test_delta_codec(void **state)
{
    (void)state;
    static uint8_t page[4096] __attribute__((aligned(8))), old[4096], target[4096],
        out[MIG_DELTA_MAX];
    uint32_t seed = 7;
    for (int round = 0; round < 200; round++) {
        for (int i = 0; i < 4096; i++) {
            seed = seed * 1103515245u + 12345u;
            page[i] = (uint8_t)(seed >> 16);
        }
        memcpy(old, page, 4096);
        memcpy(target, page, 4096);
        /* a few scattered changes, at word edges and inside words */
        int changes = round % 40;
        for (int k = 0; k < changes; k++) {
            seed = seed * 1103515245u + 12345u;
            page[(seed >> 8) % 4096] ^= (uint8_t)(1 + (seed >> 24) % 255);
        }
        int n = mig_delta_encode(old, page, out, sizeof(out));
        assert_true(n >= 0);
        assert_true(mig_delta_valid(out, (size_t)n));
        assert_memory_equal(old, page, 4096); /* the copy follows what was emitted */
        mig_delta_apply(target, out, (size_t)n);
        assert_memory_equal(target, page, 4096);
        if (changes == 0)
            assert_int_equal(n, 0);
    }
    /* The first and last words; an unchanged page is an empty delta. */
    memset(old, 0, 4096);
    memset(page, 0, 4096);
    page[0] = 1;
    page[4095] = 2;
    int n = mig_delta_encode(old, page, out, sizeof(out));
    assert_int_equal(n, 2 * (4 + 8));
    assert_int_equal(mig_delta_encode(old, page, out, sizeof(out)), 0);
    /* A page that changed everywhere does not fit. */
    memset(page, 0x5a, 4096);
    assert_int_equal(mig_delta_encode(old, page, out, sizeof(out)), -1);

    /* Malformed deltas. */
    uint8_t d[16] = {0};
    assert_true(mig_delta_valid(d, 0));
    put16(d, 0);
    put16(d + 2, 0);
    assert_false(mig_delta_valid(d, 4)); /* an empty run */
    put16(d, 4095);
    put16(d + 2, 2);
    assert_false(mig_delta_valid(d, 6)); /* past the page */
    put16(d, 4094);
    assert_true(mig_delta_valid(d, 6));
    assert_false(mig_delta_valid(d, 5)); /* truncated data */
    assert_false(mig_delta_valid(d, 3)); /* truncated header */
    put16(d, 65535);
    put16(d + 2, 1);
    assert_false(mig_delta_valid(d, 5));
    /* two runs: 4000 + 1, then 94 + 1 ends at the last byte; 95 + 1 is one past */
    put16(d, 4000);
    put16(d + 2, 1);
    put16(d + 5, 94);
    put16(d + 7, 1);
    assert_true(mig_delta_valid(d, 10));
    put16(d + 5, 95);
    assert_false(mig_delta_valid(d, 10));

    /* RAM_DELTA messages: round trip and what the decoder refuses. */
    struct mig_out o;
    mig_out_init(&o);
    mig_ram_delta_begin(&o);
    uint8_t one[12];
    put16(one, 8);
    put16(one + 2, 8);
    memset(one + 4, 7, 8);
    mig_ram_delta_add(&o, 5, one, 12);
    mig_ram_delta_add(&o, 9, NULL, 0);
    assert_int_equal(mig_ram_delta_finish(&o, 2), 0);
    struct mig_msg m;
    assert_int_equal(decode(o.buf, o.len, &m), 0);
    assert_int_equal(m.type, MIG_MSG_RAM_DELTA);
    assert_int_equal(m.u.delta.count, 2);
    size_t pos = 0, len;
    uint64_t pg;
    const uint8_t *dd;
    assert_true(mig_ram_delta_next(&m.u.delta, &pos, &pg, &dd, &len));
    assert_true(pg == 5 && len == 12 && dd[4] == 7);
    assert_true(mig_ram_delta_next(&m.u.delta, &pos, &pg, &dd, &len));
    assert_true(pg == 9 && len == 0);
    assert_false(mig_ram_delta_next(&m.u.delta, &pos, &pg, &dd, &len));
    struct mig_msg back;
    roundtrip(&m, &back);
    static const struct {
        uint64_t page2;
        uint16_t len1;
        uint32_t count;
        const char *why;
    } bad[] = {
        {5, 12, 2, "not ascending"}, {1ull << 40, 12, 2, "out of range"},
        {9, 11, 2, "malformed"},     {9, 12, 3, "truncated"},
        {9, 12, 0, "page count"},    {9, 12, 1, "bytes follow"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.len = 0;
        mig_ram_delta_begin(&o);
        mig_ram_delta_add(&o, 5, one, bad[i].len1);
        mig_ram_delta_add(&o, bad[i].page2, NULL, 0);
        assert_int_equal(mig_ram_delta_finish(&o, bad[i].count), 0);
        struct cella_errors errs = {0};
        assert_int_equal(mig_msg_decode(o.buf, o.len, &m, &errs), -EPROTO);
        if (!errs_have(&errs, bad[i].why)) {
            dump_errs("decode", &errs);
            fail_msg("case %zu: no \"%s\"", i, bad[i].why);
        }
        cella_errors_clear(&errs);
    }
    mig_out_free(&o);
}

static void test_page_cache(void **state)
{
    (void)state;
    static uint8_t live[4096];
    struct mig_page_cache *c = mig_page_cache_new(1 << 20, 0);
    assert_non_null(c);
    assert_int_equal(mig_page_cache_slots(c), MIG_CACHE_MIN_PAGES);
    assert_null(mig_page_cache_get(c, 3));
    memset(live, 3, 4096);
    uint8_t *a = mig_page_cache_fill(c, 3, live);
    assert_ptr_equal(mig_page_cache_get(c, 3), a);
    assert_int_equal(a[100], 3);
    assert_null(mig_page_cache_fill(c, 1 << 20, live)); /* beyond guest RAM */
    /*
     * A guest writing twice as many pages as the cache holds, pass after
     * pass: the pages cached first stay (each pass hits them), the rest go
     * uncached, and nothing cached moves while pinned.
     */
    uint64_t n = 2 * MIG_CACHE_MIN_PAGES;
    for (int pass = 0; pass < 3; pass++) {
        mig_page_cache_pass(c);
        uint64_t hits = 0, fills = 0;
        for (uint64_t p = 10; p < 10 + n; p++) {
            uint8_t *copy = mig_page_cache_get(c, p);
            hits += copy != NULL;
            live[0] = (uint8_t)(p + pass);
            if (!copy && (copy = mig_page_cache_fill(c, p, live)) != NULL) {
                fills++;
                assert_int_equal(copy[0], (uint8_t)(p + pass));
            }
            if (p % 100 == 0)
                mig_page_cache_unpin(c);
        }
        if (pass == 0)
            assert_int_equal(fills, MIG_CACHE_MIN_PAGES - 1); /* page 3 holds one slot */
        else if (pass == 1) /* page 3, unused for two passes, gives its slot up */
            assert_true(hits == MIG_CACHE_MIN_PAGES - 1 && fills == 1);
        else
            assert_true(hits == MIG_CACHE_MIN_PAGES && fills == 0);
    }
    assert_int_equal(mig_page_cache_used(c), MIG_CACHE_MIN_PAGES);
    /* Pages not used for two passes make room. */
    mig_page_cache_pass(c);
    mig_page_cache_pass(c);
    assert_non_null(mig_page_cache_fill(c, 1, live));
    mig_page_cache_drop(c, 1);
    assert_null(mig_page_cache_get(c, 1));
    mig_page_cache_drop(c, 5); /* not cached: nothing */
    assert_int_equal(mig_page_cache_used(c), MIG_CACHE_MIN_PAGES - 1);
    /* Pinned copies are not taken even when nothing else is free. */
    mig_page_cache_pass(c);
    mig_page_cache_pass(c);
    for (uint64_t p = 100000; p < 100000 + MIG_CACHE_MIN_PAGES / 2; p++) {
        live[0] = (uint8_t)p;
        assert_non_null(mig_page_cache_fill(c, p, live));
    }
    for (uint64_t p = 100000; p < 100000 + MIG_CACHE_MIN_PAGES / 2; p++)
        assert_int_equal(mig_page_cache_get(c, p)[0], (uint8_t)p);
    mig_page_cache_free(c);
}

/* The "guest" of the delta test: bumps words of its hot pages while it runs, like memtouch. */
struct writer {
    struct fake_vm *vm;
    uint64_t first, pages;
    pthread_t th;
    uint64_t writes;
};

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    uint32_t seed = 99;
    while (!atomic_load(&w->vm->stop_writer)) {
        seed = seed * 1103515245u + 12345u;
        uint64_t p = w->first + (seed >> 8) % w->pages, off = (uint64_t)((seed >> 4) % 8) * 64;
        uint64_t *word = (uint64_t *)(void *)(w->vm->ram + p * 4096 + off);
        __atomic_store_n(word, __atomic_load_n(word, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
        /* Marked dirty after the write, as a re-armed write-protect fault would. */
        __atomic_fetch_or(&w->vm->dirty[p / 64], 1ull << (p % 64), __ATOMIC_RELEASE);
        w->writes++;
    }
    atomic_store(&w->vm->writer_running, false);
    return NULL;
}

/*
 * Pages written again go as deltas while a thread keeps writing them
 * under the encoder (it stops at the pause): RAM ends the same on both
 * sides. Pass 1 leaves the written pages at the end of RAM to pass 2.
 */
static void test_delta_pages(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    struct writer *w = calloc(1, sizeof(*w));
    w->vm = &p.sr->side.vm;
    w->first = RAM_PAGES - 512;
    w->pages = 512;
    p.sr->cfg.peek_every = 256;
    p.sr->cfg.max_bandwidth = 256u << 20; /* pass 1 does not fit the budget */
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 8;
    p.sr->cfg.no_auto_converge = true;
    atomic_store(&p.sr->side.vm.writer_running, true);
    assert_int_equal(pthread_create(&w->th, NULL, writer_main, w), 0);
    pair_run(&p, (struct mig_target_config){0});
    atomic_store(&p.sr->side.vm.stop_writer, true);
    pthread_join(w->th, NULL);
    assert_committed(&p);
    const struct mig_stats *st = &p.sr->res.stats;
    printf("delta test: %u passes (%s), %" PRIu64 " delta pages, %" PRIu64 " deferred, %" PRIu64
           " writes\n",
           st->passes, st->precopy_end, st->delta_pages, st->deferred_pages, w->writes);
    assert_int_equal(st->version, 3);
    assert_true(st->delta_pages > 0);
    assert_true(st->delta_cache_bytes >= (uint64_t)MIG_CACHE_MIN_PAGES * 4096);
    assert_true(w->writes > 0);
    assert_true(p.sr->side.vm.peeks >= 1);
    assert_true(st->deferred_pages > 0);
    free(w);
    pair_free(&p);
}

/* A version 2 target: no deltas, the same RAM. */
static void test_delta_needs_v3(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 500;
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 4;
    pair_run(&p, (struct mig_target_config){.max_version = 2});
    assert_committed(&p);
    assert_int_equal(p.sr->res.stats.version, 2);
    assert_true(p.sr->res.stats.delta_pages == 0);
    assert_true(p.sr->res.stats.delta_cache_bytes == 0);
    pair_free(&p);
}

/* A guest whose pages change wholesale: deltas are given up after one pass. */
static void test_delta_gives_up(void **state)
{
    (void)state;
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.rewrite_pages = 1024; /* each fetch rewrites these pages whole */
    p.sr->cfg.downtime_ms = 1;
    p.sr->cfg.max_passes = 5;
    p.sr->cfg.no_auto_converge = true;
    pair_run(&p, (struct mig_target_config){0});
    assert_committed(&p);
    const struct mig_stats *st = &p.sr->res.stats;
    assert_true(st->delta_cache_bytes > 0);
    assert_true(st->delta_pages == 0);
    pair_free(&p);
}

/* ---- a hand-driven peer --------------------------------------------------- */

static int peer_send(struct mig_stream *s, const struct mig_msg *m)
{
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(mig_msg_encode(m, &o), 0);
    int r = mig_stream_send(s, o.buf, o.len);
    mig_out_free(&o);
    return r;
}

static int peer_recv(struct mig_stream *s, struct mig_msg *m)
{
    const uint8_t *buf;
    size_t len;
    int r = mig_stream_recv(s, &buf, &len);
    if (r < 0)
        return r;
    return mig_msg_decode(buf, len, m, NULL);
}

/* Plays target through the accepted preamble. */
static struct mig_stream *peer_target_sync(struct src_run *sr, uint32_t version)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    src_start(sr, sv[0]);
    struct mig_stream *s;
    assert_int_equal(mig_stream_client(sv[1], NULL, 0, &s), 0);
    struct mig_msg *m = calloc(1, sizeof(*m));
    m->type = MIG_MSG_HELLO;
    m->u.hello.nversions = 1;
    m->u.hello.versions[0] = version;
    assert_int_equal(peer_send(s, m), 0);
    if (version < MIG_PROTO_VERSION_OLDEST || version > MIG_PROTO_VERSION_NEWEST) {
        free(m);
        return s;
    }
    assert_int_equal(peer_recv(s, m), 0);
    assert_int_equal(m->type, MIG_MSG_HELLO_ACK);
    assert_int_equal(peer_recv(s, m), 0);
    assert_int_equal(m->type, MIG_MSG_PREAMBLE);
    m->type = MIG_MSG_PREAMBLE_ACK;
    m->u.ack.accepted = true;
    m->u.ack.nkinds = 2;
    m->u.ack.kinds[0] = (struct mig_kind_version){"vcpu", 2, 2};
    m->u.ack.kinds[1] = (struct mig_kind_version){"uart", 1, 1};
    assert_int_equal(peer_send(s, m), 0);
    free(m);
    return s;
}

static struct src_run *src_new(void)
{
    struct src_run *sr = calloc(1, sizeof(*sr));
    fake_init(&sr->side.vm, RAM_PAGES, true);
    sr->side.vm.dirty_rate = 10;
    return sr;
}

static void src_del(struct src_run *sr)
{
    fake_free(&sr->side.vm);
    cella_errors_clear(&sr->errs);
    free(sr);
}

static void assert_resumed(struct src_run *sr)
{
    assert_int_not_equal(sr->rc, 0);
    assert_int_equal(sr->res.outcome, MIG_OUTCOME_FAILED);
    assert_true(sr->res.resumed);
    assert_true(sr->side.vm.running);
    assert_false(sr->side.vm.tracking);
}

static void test_target_dies_mid_ram(void **state)
{
    struct src_run *sr = src_new();
    struct mig_stream *s = peer_target_sync(sr, 1);
    struct mig_msg *m = malloc(sizeof(*m));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(peer_recv(s, m), 0);
        assert_true(m->type == MIG_MSG_PHASE || m->type == MIG_MSG_RAM_BATCH);
    }
    free(m);
    mig_stream_free(s); /* killed */
    src_join(sr);
    assert_resumed(sr);
    assert_int_equal(sr->rc, -ECONNRESET);
    src_del(sr);
}

static void test_garbage_from_target(void **state)
{
    struct src_run *sr = src_new();
    struct mig_stream *s = peer_target_sync(sr, 1);
    static const uint8_t junk[] = {0x42, 1, 2, 3};
    assert_int_equal(mig_stream_send(s, junk, sizeof(junk)), 0);
    /* Drain until the source gives up and closes. */
    const uint8_t *buf;
    size_t len;
    bool saw_error = false;
    while (mig_stream_recv(s, &buf, &len) == 0)
        saw_error |= len && buf[0] == MIG_MSG_ERROR;
    mig_stream_free(s);
    src_join(sr);
    assert_resumed(sr);
    assert_int_equal(sr->rc, -EPROTO);
    assert_true(saw_error);
    assert_true(errs_have(&sr->errs, "unknown message type 66"));
    src_del(sr);
}

/* Version 2: an acknowledgement of another pass is a protocol error. */
static void test_wrong_pass_applied(void **state)
{
    struct src_run *sr = src_new();
    struct mig_stream *s = peer_target_sync(sr, 2);
    struct mig_msg *m = malloc(sizeof(*m));
    do
        assert_int_equal(peer_recv(s, m), 0);
    while (m->type != MIG_MSG_RAM_PASS_END);
    assert_int_equal(m->u.pass_end.pass, 1);
    m->type = MIG_MSG_RAM_PASS_APPLIED;
    m->u.pass_end.pass = 2;
    assert_int_equal(peer_send(s, m), 0);
    while (peer_recv(s, m) == 0)
        ;
    free(m);
    mig_stream_free(s);
    src_join(sr);
    assert_resumed(sr);
    assert_int_equal(sr->rc, -EPROTO);
    assert_true(errs_have(&sr->errs, "acknowledged pass 2 where pass 1 was due"));
    src_del(sr);
}

static void test_stall_timeout(void **state)
{
    struct src_run *sr = src_new();
    sr->cfg.stall_ms = 200;
    struct mig_stream *s = peer_target_sync(sr, 1);
    /* Read nothing more: the source's sends stall. */
    src_join(sr);
    mig_stream_free(s);
    assert_resumed(sr);
    assert_int_equal(sr->rc, -ETIMEDOUT);
    assert_true(errs_have(&sr->errs, "no progress for 200 ms"));
    src_del(sr);
}

static void test_version_mismatch(void **state)
{
    struct src_run *sr = src_new();
    struct mig_stream *s = peer_target_sync(sr, 99);
    struct mig_msg m;
    assert_int_equal(peer_recv(s, &m), 0);
    assert_int_equal(m.type, MIG_MSG_ERROR);
    char text[300];
    snprintf(text, sizeof(text), "%.*s", (int)m.u.reason.len, m.u.reason.p);
    assert_non_null(strstr(text, "no common protocol version: the target offers 99"));
    mig_stream_free(s);
    src_join(sr);
    assert_resumed(sr);
    assert_int_equal(sr->rc, -EPROTO);
    assert_int_equal(sr->side.vm.pauses, 0);
    src_del(sr);
}

/* Plays target to the end of the state, answers READY, then `after_released`. */
static void finish_window(bool commit)
{
    struct src_run *sr = src_new();
    struct mig_stream *s = peer_target_sync(sr, 1);
    struct mig_msg *m = malloc(sizeof(*m));
    for (;;) {
        assert_int_equal(peer_recv(s, m), 0);
        if (m->type == MIG_MSG_PHASE && m->u.phase == MIG_PHASE_FINISH)
            break;
    }
    m->type = MIG_MSG_READY;
    assert_int_equal(peer_send(s, m), 0);
    assert_int_equal(peer_recv(s, m), 0);
    assert_int_equal(m->type, MIG_MSG_RELEASED);
    if (commit) {
        m->type = MIG_MSG_COMMIT;
        assert_int_equal(peer_send(s, m), 0);
    }
    free(m);
    mig_stream_free(s); /* cut */
    src_join(sr);
    if (commit) {
        assert_int_equal(sr->rc, 0);
        assert_int_equal(sr->res.outcome, MIG_OUTCOME_COMMITTED);
    } else {
        /* Unknown: the target may run; the source must not. */
        assert_int_not_equal(sr->rc, 0);
        assert_int_equal(sr->res.outcome, MIG_OUTCOME_UNKNOWN);
        assert_false(sr->res.resumed);
        assert_true(sr->side.vm.paused);
        assert_int_equal(sr->side.vm.resumes, 0);
        assert_int_equal(sr->side.reacquired, 0);
        assert_true(errs_have(&sr->errs, "finish handshake"));
    }
    src_del(sr);
}

static void test_cut_in_finish_window(void **state)
{
    finish_window(false);
    finish_window(true);
}

/* A source that never answers: the target's stage 1 times out. */
static void test_target_stall(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct mig_stream *ts;
    assert_int_equal(mig_stream_client(sv[1], NULL, 0, &ts), 0);
    struct tgt_side *tg = calloc(1, sizeof(*tg));
    struct mig_target_params tp = {
        .stream = ts, .hooks = &tgt_hooks, .ctx = tg, .cfg = {.stall_ms = 150}};
    struct mig_target *t;
    struct cella_errors errs = {0};
    assert_int_equal(mig_target_start(&tp, &t, &errs), -ETIMEDOUT);
    assert_null(t);
    assert_false(tg->prepared);
    assert_true(errs_have(&errs, "waiting for HELLO_ACK"));
    cella_errors_clear(&errs);
    close(sv[0]);
    free(tg);
}

/* ---- the stream on its own, and the client handshake over TCP ----------- */

static void test_stream_basics(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    /* A server that got the first frame together with the upgrade request. */
    struct mig_stream *c, *srv;
    assert_int_equal(mig_stream_client(sv[1], NULL, 0, &c), 0);
    assert_int_equal(mig_stream_send(c, "abc", 3), 0);
    uint8_t early[64];
    ssize_t n = recv(sv[0], early, sizeof(early), 0);
    assert_true(n > 3);
    assert_int_equal(mig_stream_server(sv[0], true, early, (size_t)n, &srv), 0);
    const uint8_t *buf;
    size_t len;
    assert_int_equal(mig_stream_try_recv(srv, &buf, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "abc", 3);
    assert_int_equal(mig_stream_try_recv(srv, &buf, &len), -EAGAIN);
    /* Empty message, and a message over the cap. */
    assert_int_equal(mig_stream_send(srv, "", 0), 0);
    assert_int_equal(mig_stream_recv(c, &buf, &len), 0);
    assert_int_equal(len, 0);
    mig_stream_set_max_msg(srv, 100);
    uint8_t big[200] = {0};
    assert_int_equal(mig_stream_send(c, big, sizeof(big)), 0);
    assert_int_equal(mig_stream_recv(srv, &buf, &len), -EPROTO);
    assert_int_equal(mig_stream_recv(srv, &buf, &len), -EPROTO); /* sticky */
    assert_int_equal(mig_stream_recv(c, &buf, &len), -EPROTO);   /* told: too big */
    mig_stream_free(c);
    mig_stream_free(srv);

    /* Clean close is seen as ECONNRESET with the reason; shutdown cancels. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mig_stream_client(sv[1], NULL, 0, &c), 0);
    assert_int_equal(mig_stream_server(sv[0], true, NULL, 0, &srv), 0);
    mig_stream_set_stall(c, 100);
    assert_int_equal(mig_stream_close(c, 1000, "bye", 100), 0);
    assert_int_equal(mig_stream_recv(srv, &buf, &len), -ECONNRESET);
    assert_non_null(strstr(mig_stream_error(srv), "closed the stream"));
    mig_stream_free(c);
    mig_stream_shutdown(srv);
    mig_stream_free(srv);

    /* Text frames are a protocol error: write one by hand (masked client frame). */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mig_stream_server(sv[0], true, NULL, 0, &srv), 0);
    static const uint8_t text[] = {0x81, 0x81, 0, 0, 0, 0, 'x'};
    assert_int_equal(write(sv[1], text, sizeof(text)), (ssize_t)sizeof(text));
    assert_int_equal(mig_stream_recv(srv, &buf, &len), -EPROTO);
    assert_non_null(strstr(mig_stream_error(srv), "text"));
    mig_stream_free(srv);
    close(sv[1]);

    /*
     * A fragmented message with a ping between its frames arrives whole;
     * one that grows over the cap is refused (masked client frames by hand).
     */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mig_stream_server(sv[0], true, NULL, 0, &srv), 0);
    static const uint8_t frags[] = {0x02, 0x82, 0, 0,   0,    0,    'a', 'b', 0x89, 0x81, 0,
                                    0,    0,    0, 'p', 0x80, 0x81, 0,   0,   0,    0,    'c'};
    assert_int_equal(write(sv[1], frags, sizeof(frags)), (ssize_t)sizeof(frags));
    int fr = mig_stream_recv(srv, &buf, &len);
    if (fr)
        printf("fragmented: %s\n", mig_stream_error(srv));
    assert_int_equal(fr, 0);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "abc", 3);
    mig_stream_set_max_msg(srv, 4);
    static const uint8_t over[] = {0x02, 0x83, 0, 0, 0, 0, 'a', 'b', 'c',
                                   0x80, 0x83, 0, 0, 0, 0, 'd', 'e', 'f'};
    assert_int_equal(write(sv[1], over, sizeof(over)), (ssize_t)sizeof(over));
    fr = mig_stream_recv(srv, &buf, &len);
    if (fr == 0)
        printf("over: got %zu bytes %.*s\n", len, (int)len, (const char *)buf);
    assert_int_equal(fr, -EPROTO);
    assert_non_null(strstr(mig_stream_error(srv), "over 4 bytes"));
    mig_stream_free(srv);
    close(sv[1]);

    /* A borrowed socket stays open after the stream is freed. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(mig_stream_server(sv[0], false, NULL, 0, &srv), 0);
    mig_stream_free(srv);
    assert_true(fcntl(sv[0], F_GETFD) >= 0);
    close(sv[0]);
    close(sv[1]);

    /* Memory streams. */
    uint8_t mem[4 + 2 + 4 + 1000];
    put32(mem, 2);
    memcpy(mem + 4, "hi", 2);
    put32(mem + 6, 1000);
    struct mig_stream *ms;
    assert_int_equal(mig_stream_memory(mem, 6 + 4 + 10, &ms), 0);
    assert_int_equal(mig_stream_recv(ms, &buf, &len), 0);
    assert_int_equal(len, 2);
    assert_int_equal(mig_stream_send(ms, "x", 1), 0);
    assert_int_equal(mig_stream_recv(ms, &buf, &len), -ECONNRESET);
    mig_stream_free(ms);
}

struct tcp_src {
    struct src_run *sr;
    int lfd;
    int status; /* answer with this status instead of 101 (0: 101) */
};

static void *tcp_source_thread(void *arg)
{
    struct tcp_src *ts = arg;
    int fd = accept(ts->lfd, NULL, NULL);
    assert_true(fd >= 0);
    char req[4096];
    size_t have = 0;
    while (!strstr(req, "\r\n\r\n") && have < sizeof(req) - 1) {
        ssize_t n = recv(fd, req + have, sizeof(req) - 1 - have, 0);
        assert_true(n > 0);
        have += (size_t)n;
        req[have] = '\0';
    }
    assert_non_null(
        strstr(req, "GET /instance/migrate/11111111-2222-3333-4444-555555555555/start "));
    char *k = strstr(req, "Sec-WebSocket-Key: ");
    assert_non_null(k);
    k += strlen("Sec-WebSocket-Key: ");
    char key[64];
    size_t kl = strcspn(k, "\r");
    memcpy(key, k, kl);
    key[kl] = '\0';
    char acc[29], ans[512];
    cella_ws_accept(key, acc);
    if (ts->status) {
        const char *body = "{\"message\":\"no such migration\",\"request_id\":\"x\"}";
        snprintf(ans, sizeof(ans), "HTTP/1.1 %d Nope\r\nContent-Length: %zu\r\n\r\n%s", ts->status,
                 strlen(body), body);
        assert_true(write(fd, ans, strlen(ans)) > 0);
        close(fd);
        return NULL;
    }
    snprintf(ans, sizeof(ans),
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
             "Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
             acc);
    assert_true(write(fd, ans, strlen(ans)) > 0);
    assert_int_equal(mig_stream_server(fd, true, NULL, 0, &ts->sr->s), 0);
    source_thread(ts->sr);
    return NULL;
}

static int tcp_listener(char *addr, size_t cap)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 1), 0);
    socklen_t sl = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    snprintf(addr, cap, "127.0.0.1:%u", ntohs(sa.sin_port));
    return lfd;
}

static void test_tcp_migration(void **state)
{
    struct pair p;
    pair_init(&p);
    p.sr->side.vm.dirty_rate = 50;
    char addr[64];
    struct tcp_src ts = {.sr = p.sr, .lfd = tcp_listener(addr, sizeof(addr))};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, tcp_source_thread, &ts), 0);
    struct mig_target_params tp = {
        .src_addr = addr,
        .migration_id = "11111111-2222-3333-4444-555555555555",
        .hooks = &tgt_hooks,
        .ctx = p.tg,
    };
    assert_int_equal(mig_target_start(&tp, &p.t, &p.terrs), 0);
    assert_int_equal(mig_target_version(p.t), MIG_PROTO_VERSION_NEWEST);
    assert_int_equal(mig_target_run(p.t, &p.terrs), 0);
    const struct mig_stats *tst = mig_target_stats(p.t);
    assert_true(tst->phase[MIG_PHASE_RAM_PUSH].pages >= RAM_PAGES);
    mig_target_free(p.t);
    pthread_join(th, NULL);
    mig_stream_free(p.sr->s);
    close(ts.lfd);
    assert_int_equal(p.sr->rc, 0);
    assert_memory_equal(p.sr->side.vm.ram, p.tg->vm.ram, RAM_PAGES * 4096);
    pair_free(&p);
}

static void test_tcp_refused(void **state)
{
    char addr[64];
    struct tcp_src ts = {.lfd = tcp_listener(addr, sizeof(addr)), .status = 404};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, tcp_source_thread, &ts), 0);
    struct cella_errors errs = {0};
    struct mig_stream *s;
    assert_int_equal(
        mig_stream_connect(addr, "/instance/migrate/11111111-2222-3333-4444-555555555555/start",
                           2000, &s, &errs),
        -ECONNREFUSED);
    pthread_join(th, NULL);
    close(ts.lfd);
    assert_true(errs_have(&errs, "status 404: no such migration"));
    cella_errors_clear(&errs);
    /* Nobody listening, and a malformed address. */
    assert_true(mig_stream_connect(addr, "/x", 500, &s, &errs) < 0);
    assert_true(mig_stream_connect("nohostport", "/x", 500, &s, &errs) == -EINVAL);
    assert_true(errs.count == 2);
    cella_errors_clear(&errs);
}

/* ---- the target fed from memory (as the fuzzer does) --------------------- */

static void put_msg(struct mig_out *o, const struct mig_msg *m)
{
    struct mig_out one;
    mig_out_init(&one);
    assert_int_equal(mig_msg_encode(m, &one), 0);
    mig_put_u32(o, (uint32_t)one.len);
    mig_put_bytes(o, one.buf, one.len);
    mig_out_free(&one);
}

static void test_target_validates(void **state)
{
    /* A sync, then a RAM batch beyond guest RAM: refused, never run. */
    struct mig_out o;
    mig_out_init(&o);
    struct mig_msg *m = calloc(1, sizeof(*m));
    static const struct {
        enum mig_msg_type type;
        uint64_t page;
        enum mig_phase phase;
        const char *why;
        uint32_t version;
    } cases[] = {
        {MIG_MSG_RAM_BATCH, 64, MIG_PHASE_RAM_PUSH, "guest RAM has 64", 1},
        {MIG_MSG_RAM_BATCH, 0, MIG_PHASE_SYNC, "RAM_BATCH in phase Sync", 1},
        {MIG_MSG_PHASE, 0, MIG_PHASE_DEVICE, "cannot follow", 1},
        {MIG_MSG_COMMIT, 0, MIG_PHASE_RAM_PUSH, "COMMIT in phase RamPush", 1},
        /* Deltas: only in version 3, and only for pages the target has. */
        {MIG_MSG_RAM_DELTA, 3, MIG_PHASE_RAM_PUSH, "RAM_DELTA in phase RamPush", 2},
        {MIG_MSG_RAM_DELTA, 3, MIG_PHASE_RAM_PUSH, "page 3, which it never sent whole", 3},
        {MIG_MSG_RAM_DELTA, 64, MIG_PHASE_RAM_PUSH, "page 64, which it never sent whole", 3},
    };
    static uint8_t zero_bit = 1;
    uint8_t runs[12], delta[14];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        o.len = 0;
        memset(m, 0, sizeof(*m));
        m->type = MIG_MSG_HELLO_ACK;
        m->u.version = cases[i].version;
        put_msg(&o, m);
        memset(m, 0, sizeof(*m));
        m->type = MIG_MSG_PREAMBLE;
        m->u.preamble.spec_json = mig_str_of(spec_json);
        m->u.preamble.ram_bytes = 64 * 4096;
        put_msg(&o, m);
        if (cases[i].phase != MIG_PHASE_SYNC) {
            memset(m, 0, sizeof(*m));
            m->type = MIG_MSG_PHASE;
            m->u.phase = cases[i].phase;
            put_msg(&o, m);
        }
        memset(m, 0, sizeof(*m));
        m->type = cases[i].type;
        if (m->type == MIG_MSG_RAM_BATCH) {
            put64(runs, cases[i].page);
            put32(runs + 8, 1);
            m->u.ram =
                (struct mig_msg_ram){.nruns = 1, .npages = 1, .runs = runs, .zero = &zero_bit};
        }
        if (m->type == MIG_MSG_RAM_DELTA) {
            put64(delta, cases[i].page);
            put16(delta + 8, 0);
            m->u.delta = (struct mig_msg_ram_delta){.count = 1, .entries = delta, .len = 10};
        }
        if (m->type == MIG_MSG_PHASE)
            m->u.phase = MIG_PHASE_DEVICE;
        put_msg(&o, m);
        struct tgt_side *tg = calloc(1, sizeof(*tg));
        fake_init(&tg->vm, 64, false);
        struct mig_stream *ms;
        assert_int_equal(mig_stream_memory(o.buf, o.len, &ms), 0);
        struct mig_target_params tp = {.stream = ms, .hooks = &tgt_hooks, .ctx = tg};
        struct mig_target *t;
        struct cella_errors errs = {0};
        assert_int_equal(mig_target_start(&tp, &t, &errs), 0);
        assert_true(mig_target_run(t, &errs) < 0);
        if (!errs_have(&errs, cases[i].why)) {
            dump_errs("target", &errs);
            fail_msg("case %zu: no \"%s\"", i, cases[i].why);
        }
        assert_int_equal(tg->vm.resumes, 0);
        mig_target_free(t);
        cella_errors_clear(&errs);
        fake_free(&tg->vm);
        free(tg);
    }
    free(m);
    mig_out_free(&o);
}

int main(void)
{
    blob_data = malloc(BLOB_SIZE);
    for (size_t i = 0; i < BLOB_SIZE; i++)
        blob_data[i] = (uint8_t)(i * 31 + (i >> 12));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec_small),
        cmocka_unit_test(test_codec_preamble),
        cmocka_unit_test(test_codec_payloads),
        cmocka_unit_test(test_codec_ram),
        cmocka_unit_test(test_codec_malformed),
        cmocka_unit_test(test_stream_basics),
        cmocka_unit_test(test_full_migration),
        cmocka_unit_test(test_version1_target),
        cmocka_unit_test(test_wrong_pass_applied),
        cmocka_unit_test(test_guest_reset_during_precopy),
        cmocka_unit_test(test_convergence_max_passes),
        cmocka_unit_test(test_convergence_time_limit),
        cmocka_unit_test(test_converges_quickly),
        cmocka_unit_test(test_auto_converge),
        cmocka_unit_test(test_auto_converge_off),
        cmocka_unit_test(test_throttle_ends_on_failure),
        cmocka_unit_test(test_max_bandwidth),
        cmocka_unit_test(test_fail_exports),
        cmocka_unit_test(test_fail_imports),
        cmocka_unit_test(test_abort_after_released),
        cmocka_unit_test(test_target_resume_fails),
        cmocka_unit_test(test_release_fails),
        cmocka_unit_test(test_preamble_refused),
        cmocka_unit_test(test_target_dies_mid_ram),
        cmocka_unit_test(test_garbage_from_target),
        cmocka_unit_test(test_stall_timeout),
        cmocka_unit_test(test_version_mismatch),
        cmocka_unit_test(test_cut_in_finish_window),
        cmocka_unit_test(test_target_stall),
        cmocka_unit_test(test_tcp_migration),
        cmocka_unit_test(test_tcp_refused),
        cmocka_unit_test(test_target_validates),
        cmocka_unit_test(test_full_migration_guest_ram),
        cmocka_unit_test(test_delta_codec),
        cmocka_unit_test(test_page_cache),
        cmocka_unit_test(test_delta_pages),
        cmocka_unit_test(test_delta_needs_v3),
        cmocka_unit_test(test_delta_gives_up),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    free(blob_data);
    return r;
}
