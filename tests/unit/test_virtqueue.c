/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The split virtqueue core on a plain buffer: well-formed chains (direct,
 * indirect, zero-length buffers, 16-bit index wrap), every malformed case
 * (loop, index out of table, buffer outside RAM, address overflow, nested
 * or misshapen or unnegotiated indirect tables, readable after writable,
 * too many buffers, too many bytes, avail index jump), the broken state
 * and reset, ring placement checks, the used ring, interrupt suppression
 * with and without EVENT_IDX, avail_event, unpop, the DMA gate, and
 * pushes from another thread.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/le.h"
#include "devices/virtqueue.h"

#define RAM   (2u << 20)
#define DESC  0x1000u
#define AVAIL 0x2000u
#define USED  0x3000u
#define ITAB  0x4000u
#define BUF   0x10000u
#define NUM   8u

struct env {
    uint8_t *ram;
    struct guest_mem mem;
    struct virtqueue vq;
    uint16_t avail_idx;
    struct iovec iov[64];
    struct vq_chain c;
    bool dma;
};

static int setup_flags(void **state, bool event_idx, bool indirect)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->ram = calloc(1, RAM);
    assert_non_null(e->ram);
    guest_mem_init_buffer(&e->mem, e->ram, RAM);
    assert_int_equal(vq_init(&e->vq, &e->mem), 0);
    assert_int_equal(vq_enable(&e->vq, NUM, DESC, AVAIL, USED, event_idx, indirect), 0);
    *state = e;
    return 0;
}

static int setup(void **state)
{
    return setup_flags(state, false, true);
}

static int setup_event(void **state)
{
    return setup_flags(state, true, true);
}

static int setup_noindirect(void **state)
{
    return setup_flags(state, false, false);
}

static int teardown(void **state)
{
    struct env *e = *state;
    vq_destroy(&e->vq);
    free(e->ram);
    free(e);
    return 0;
}

static void desc_at(struct env *e, uint64_t table, unsigned i, uint64_t addr, uint32_t len,
                    uint16_t flags, uint16_t next)
{
    uint8_t *p = e->ram + table + 16u * i;
    put64(p, addr);
    put32(p + 8, len);
    put16(p + 12, flags);
    put16(p + 14, next);
}

static void desc(struct env *e, unsigned i, uint64_t addr, uint32_t len, uint16_t flags,
                 uint16_t next)
{
    desc_at(e, DESC, i, addr, len, flags, next);
}

static void make_avail(struct env *e, uint16_t head)
{
    put16(e->ram + AVAIL + 4 + 2u * (e->avail_idx % NUM), head);
    e->avail_idx++;
    put16(e->ram + AVAIL + 2, e->avail_idx);
}

static int pop(struct env *e)
{
    return vq_pop(&e->vq, &e->c, e->iov, 64);
}

/* A failed pop breaks the queue: later pops say -EIO until reset. */
static void assert_broken(struct env *e, int rc, int want)
{
    assert_int_equal(rc, want);
    assert_false(vq_ready(&e->vq));
    assert_int_equal(pop(e), -EIO);
}

static void test_simple_chain(void **state)
{
    struct env *e = *state;
    assert_int_equal(pop(e), 0); /* nothing yet */
    desc(e, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
    desc(e, 1, BUF + 0x100, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    desc(e, 2, BUF + 0x400, 1, VIRTQ_DESC_F_WRITE, 0);
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.head, 0);
    assert_int_equal(e->c.niov, 3);
    assert_int_equal(e->c.nread, 1);
    assert_int_equal(e->c.read_len, 16);
    assert_int_equal(e->c.write_len, 513);
    assert_ptr_equal(e->iov[0].iov_base, e->ram + BUF);
    assert_ptr_equal(e->iov[1].iov_base, e->ram + BUF + 0x100);
    assert_int_equal(e->iov[2].iov_len, 1);
    assert_int_equal(pop(e), 0);
    assert_true(vq_ready(&e->vq));
}

/* The debug line shows both sides' indices as they are. */
static void test_debug_line(void **state)
{
    struct env *e = *state;
    char line[256];
    desc(e, 0, BUF, 16, 0, 0);
    make_avail(e, 0);
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
    struct vq_used u = {.head = 0, .len = 0};
    vq_push(&e->vq, &u, 1);
    vq_debug(&e->vq, line, sizeof(line));
    assert_non_null(strstr(line, "num 8 last_avail 1 avail.idx 2 "));
    assert_non_null(strstr(line, " used_idx 1 used.idx 1 "));
    assert_null(strstr(line, "BROKEN"));
    vq_reset(&e->vq);
    vq_debug(&e->vq, line, sizeof(line));
    assert_string_equal(line, "not ready");
}

static void test_zero_length_skipped(void **state)
{
    struct env *e = *state;
    desc(e, 3, BUF, 0, VIRTQ_DESC_F_NEXT, 4);
    desc(e, 4, BUF, 8, VIRTQ_DESC_F_WRITE, 0);
    make_avail(e, 3);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.niov, 1);
    assert_int_equal(e->c.nread, 0);
    assert_int_equal(e->c.write_len, 8);
}

static void test_loop_refused(void **state)
{
    struct env *e = *state;
    desc(e, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
    desc(e, 1, BUF, 16, VIRTQ_DESC_F_NEXT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -E2BIG);
}

static void test_self_loop_refused(void **state)
{
    struct env *e = *state;
    desc(e, 5, BUF, 0, VIRTQ_DESC_F_NEXT, 5);
    make_avail(e, 5);
    assert_broken(e, pop(e), -E2BIG);
}

static void test_longest_chain_ok(void **state)
{
    struct env *e = *state;
    for (unsigned i = 0; i < NUM; i++)
        desc(e, i, BUF + 64 * i, 64, i + 1 < NUM ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.niov, NUM);
}

static void test_next_out_of_table(void **state)
{
    struct env *e = *state;
    desc(e, 0, BUF, 16, VIRTQ_DESC_F_NEXT, NUM);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_head_out_of_table(void **state)
{
    struct env *e = *state;
    make_avail(e, NUM + 3);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_buffer_outside_ram(void **state)
{
    struct env *e = *state;
    desc(e, 0, RAM - 8, 16, 0, 0); /* straddles the end */
    make_avail(e, 0);
    assert_broken(e, pop(e), -EFAULT);
}

static void test_buffer_far_outside(void **state)
{
    struct env *e = *state;
    desc(e, 0, 0x100000000ull, 16, VIRTQ_DESC_F_WRITE, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EFAULT);
}

static void test_address_overflow(void **state)
{
    struct env *e = *state;
    desc(e, 0, UINT64_MAX - 7, 64, 0, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EFAULT);
}

static void test_readable_after_writable(void **state)
{
    struct env *e = *state;
    desc(e, 0, BUF, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    desc(e, 1, BUF, 16, 0, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_too_many_buffers(void **state)
{
    struct env *e = *state;
    for (unsigned i = 0; i < NUM; i++)
        desc(e, i, BUF, 4, i + 1 < NUM ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
    make_avail(e, 0);
    assert_int_equal(vq_pop(&e->vq, &e->c, e->iov, NUM - 1), -E2BIG);
    assert_false(vq_ready(&e->vq));
}

static void test_too_many_bytes(void **state)
{
    struct env *e = *state;
    /* 65 indirect entries of 1 MiB each: more than VQ_MAX_CHAIN_BYTES. */
    for (unsigned i = 0; i < 65; i++)
        desc_at(e, ITAB, i, 0x100000, 0x100000, i < 64 ? VIRTQ_DESC_F_NEXT : 0, (uint16_t)(i + 1));
    desc(e, 0, ITAB, 65 * 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, vq_pop(&e->vq, &e->c, e->iov, 64), -E2BIG);
}

static void test_avail_idx_jump(void **state)
{
    struct env *e = *state;
    put16(e->ram + AVAIL + 2, NUM + 1);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_indirect_ok(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 2);
    desc_at(e, ITAB, 2, BUF + 0x200, 100, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1);
    desc_at(e, ITAB, 1, BUF + 0x400, 1, VIRTQ_DESC_F_WRITE, 0);
    /* the WRITE flag of an indirect descriptor is ignored */
    desc(e, 6, ITAB, 3 * 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, 0);
    make_avail(e, 6);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.head, 6);
    assert_int_equal(e->c.niov, 3);
    assert_int_equal(e->c.nread, 1);
    assert_int_equal(e->c.write_len, 101);
    assert_ptr_equal(e->iov[1].iov_base, e->ram + BUF + 0x200);
}

static void test_direct_then_indirect(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF + 0x400, 1, VIRTQ_DESC_F_WRITE, 0);
    desc(e, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
    desc(e, 1, ITAB, 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.niov, 2);
    assert_int_equal(e->c.nread, 1);
}

static void test_indirect_not_negotiated(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF, 16, 0, 0);
    desc(e, 0, ITAB, 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_nested_indirect(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB + 0x100, 0, BUF, 16, 0, 0);
    desc_at(e, ITAB, 0, ITAB + 0x100, 16, VIRTQ_DESC_F_INDIRECT, 0);
    desc(e, 0, ITAB, 16, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_indirect_with_next(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF, 16, 0, 0);
    desc(e, 0, ITAB, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);
    desc(e, 1, BUF, 16, 0, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_indirect_bad_len(void **state)
{
    static const uint32_t lens[] = {0, 15, 17, 24, (VQ_MAX_INDIRECT + 1) * 16};
    for (unsigned k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        struct env *e = *state;
        vq_reset(&e->vq);
        assert_int_equal(vq_enable(&e->vq, NUM, DESC, AVAIL, USED, false, true), 0);
        e->avail_idx = 0;
        put16(e->ram + AVAIL + 2, 0);
        desc(e, 0, 0, lens[k], VIRTQ_DESC_F_INDIRECT, 0);
        make_avail(e, 0);
        assert_broken(e, pop(e), -EINVAL);
    }
}

static void test_indirect_outside_ram(void **state)
{
    struct env *e = *state;
    desc(e, 0, RAM - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EFAULT);
}

static void test_indirect_loop(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 1);
    desc_at(e, ITAB, 1, BUF, 16, VIRTQ_DESC_F_NEXT, 0);
    desc(e, 0, ITAB, 32, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -E2BIG);
}

static void test_indirect_next_out_of_table(void **state)
{
    struct env *e = *state;
    desc_at(e, ITAB, 0, BUF, 16, VIRTQ_DESC_F_NEXT, 2); /* table has 2 entries */
    desc(e, 0, ITAB, 32, VIRTQ_DESC_F_INDIRECT, 0);
    make_avail(e, 0);
    assert_broken(e, pop(e), -EINVAL);
}

static void test_reset_clears_broken(void **state)
{
    struct env *e = *state;
    make_avail(e, NUM);
    assert_int_equal(pop(e), -EINVAL);
    vq_reset(&e->vq);
    assert_int_equal(pop(e), 0); /* not ready */
    memset(e->ram + AVAIL, 0, 0x100);
    e->avail_idx = 0;
    assert_int_equal(vq_enable(&e->vq, NUM, DESC, AVAIL, USED, false, true), 0);
    desc(e, 0, BUF, 16, 0, 0);
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
}

static void test_enable_checks(void **state)
{
    struct env *e = *state;
    struct virtqueue *vq = &e->vq;
    assert_int_equal(vq_enable(vq, 0, DESC, AVAIL, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 6, DESC, AVAIL, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 2048, DESC, AVAIL, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, DESC + 8, AVAIL, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, DESC, AVAIL + 1, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, DESC, AVAIL, USED + 2, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, RAM - 64, AVAIL, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, DESC, RAM - 16, USED, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 8, DESC, AVAIL, UINT64_MAX - 3, false, false), -EINVAL);
    assert_int_equal(vq_enable(vq, 1024, DESC, AVAIL, USED, false, false), 0);
}

static void test_push_and_used_ring(void **state)
{
    struct env *e = *state;
    struct vq_used u[2] = {{3, 100}, {5, 7}};
    assert_true(vq_push(&e->vq, u, 2));
    assert_int_equal(le16(e->ram + USED + 2), 2);
    assert_int_equal(le32(e->ram + USED + 4), 3);
    assert_int_equal(le32(e->ram + USED + 8), 100);
    assert_int_equal(le32(e->ram + USED + 12), 5);
    assert_int_equal(le32(e->ram + USED + 16), 7);
    /* The driver suppresses interrupts. */
    put16(e->ram + AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT);
    assert_false(vq_push(&e->vq, u, 1));
    put16(e->ram + AVAIL, 0);
    assert_true(vq_push(&e->vq, u, 1));
    assert_int_equal(le16(e->ram + USED + 2), 4);
}

static void test_index_wrap(void **state)
{
    struct env *e = *state;
    e->vq.last_avail = e->vq.used_idx = 65534;
    e->avail_idx = 65534;
    put16(e->ram + AVAIL + 2, 65534);
    for (unsigned k = 0; k < 4; k++) {
        desc(e, k, BUF, 16, 0, 0);
        make_avail(e, (uint16_t)k);
        assert_int_equal(pop(e), 1);
        assert_int_equal(e->c.head, k);
        struct vq_used u = {e->c.head, 0};
        vq_push(&e->vq, &u, 1);
    }
    assert_int_equal(le16(e->ram + USED + 2), 2);
    assert_int_equal(pop(e), 0);
}

static void test_event_idx(void **state)
{
    struct env *e = *state;
    uint8_t *used_event = e->ram + AVAIL + 4 + 2 * NUM;
    uint8_t *avail_event = e->ram + USED + 4 + 8 * NUM;

    /* An empty pop asks for a kick at the current index. */
    put16(avail_event, 0xffff);
    assert_int_equal(pop(e), 0);
    assert_int_equal(le16(avail_event), 0);
    desc(e, 0, BUF, 16, 0, 0);
    make_avail(e, 0);
    make_avail(e, 0);
    assert_int_equal(pop(e), 1);
    assert_int_equal(le16(avail_event), 1);

    struct vq_used u = {0, 0};
    assert_true(vq_push(&e->vq, &u, 1)); /* first push always signals */
    /* used_event = 3: no interrupt until used idx passes 3. */
    put16(used_event, 3);
    assert_false(vq_push(&e->vq, &u, 1)); /* idx 2 */
    assert_false(vq_push(&e->vq, &u, 1)); /* idx 3 */
    assert_true(vq_push(&e->vq, &u, 1));  /* idx 4: crossed 3 */
    assert_false(vq_push(&e->vq, &u, 1)); /* 5: event is behind */
    put16(used_event, 5);
    struct vq_used two[2] = {{0, 0}, {0, 0}};
    assert_true(vq_push(&e->vq, two, 2)); /* 7: batch crossing 5 */
}

static void test_unpop(void **state)
{
    struct env *e = *state;
    desc(e, 0, BUF, 16, 0, 0);
    desc(e, 1, BUF, 32, 0, 0);
    make_avail(e, 0);
    make_avail(e, 1);
    assert_int_equal(pop(e), 1);
    assert_int_equal(pop(e), 1);
    assert_int_equal(pop(e), 0);
    vq_unpop(&e->vq, 2);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.head, 0);
    assert_int_equal(pop(e), 1);
    assert_int_equal(e->c.head, 1);
}

static bool gate(void *ctx)
{
    return *(bool *)ctx;
}

static void test_dma_gate(void **state)
{
    struct env *e = *state;
    e->vq.dma_ok = gate;
    e->vq.dma_ctx = &e->dma;
    desc(e, 0, BUF, 16, 0, 0);
    make_avail(e, 0);
    e->dma = false;
    assert_int_equal(pop(e), 0);
    e->dma = true;
    assert_int_equal(pop(e), 1);
}

static void test_iov_copy(void **state)
{
    (void)state;
    uint8_t a[3], b[5], out[8];
    struct iovec iov[2] = {{a, 3}, {b, 5}};
    assert_int_equal(iov_from_buf(iov, 2, "abcdefghij", 10), 8);
    assert_memory_equal(a, "abc", 3);
    assert_memory_equal(b, "defgh", 5);
    assert_int_equal(iov_to_buf(iov, 2, out, 6), 6);
    assert_memory_equal(out, "abcdef", 6);
}

/* Pushes from another thread while this one pops: the used ring stays exact. */
struct pusher {
    struct env *e;
    unsigned n;
};

static void *push_thread(void *arg)
{
    struct pusher *p = arg;
    for (unsigned i = 0; i < p->n; i++) {
        struct vq_used u = {(uint16_t)(i % NUM), i};
        vq_push(&p->e->vq, &u, 1);
    }
    return NULL;
}

static void test_concurrent_push(void **state)
{
    struct env *e = *state;
    struct pusher p = {e, 20000};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, push_thread, &p), 0);
    desc(e, 0, BUF, 16, 0, 0);
    for (unsigned i = 0; i < 20000; i++) {
        make_avail(e, 0);
        assert_int_equal(pop(e), 1);
    }
    pthread_join(t, NULL);
    assert_int_equal(le16(e->ram + USED + 2), (uint16_t)20000);
}

#define T(fn)  cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TE(fn) cmocka_unit_test_setup_teardown(fn, setup_event, teardown)
#define TN(fn) cmocka_unit_test_setup_teardown(fn, setup_noindirect, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_simple_chain),
        TE(test_debug_line),
        T(test_zero_length_skipped),
        T(test_loop_refused),
        T(test_self_loop_refused),
        T(test_longest_chain_ok),
        T(test_next_out_of_table),
        T(test_head_out_of_table),
        T(test_buffer_outside_ram),
        T(test_buffer_far_outside),
        T(test_address_overflow),
        T(test_readable_after_writable),
        T(test_too_many_buffers),
        T(test_too_many_bytes),
        T(test_avail_idx_jump),
        T(test_indirect_ok),
        T(test_direct_then_indirect),
        TN(test_indirect_not_negotiated),
        T(test_nested_indirect),
        T(test_indirect_with_next),
        T(test_indirect_bad_len),
        T(test_indirect_outside_ram),
        T(test_indirect_loop),
        T(test_indirect_next_out_of_table),
        T(test_reset_clears_broken),
        T(test_enable_checks),
        T(test_push_and_used_ring),
        T(test_index_wrap),
        TE(test_event_idx),
        T(test_unpop),
        T(test_dma_gate),
        T(test_iov_copy),
        T(test_concurrent_push),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
