/* SPDX-License-Identifier: MPL-2.0 */
/*
 * guest_mem's dirty tracking of device writes: off by default (marks are
 * no-ops), one bit per page in RAM order across both RAM regions,
 * ranges clipped to RAM, take clears what it returns, restart clears,
 * stop and destroy free, and marks made concurrently with takes are never
 * lost.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "machine/guest_mem.h"

#define PAGE   GUEST_PAGE_SIZE
#define NPAGES 256u
#define WORDS  (NPAGES / 64)

static bool bit(const uint64_t *bm, uint64_t page)
{
    return (bm[page / 64] >> (page % 64)) & 1u;
}

static unsigned popcount(const uint64_t *bm, size_t words)
{
    unsigned n = 0;
    for (size_t i = 0; i < words; i++)
        n += (unsigned)__builtin_popcountll(bm[i]);
    return n;
}

struct buf_env {
    uint8_t *ram;
    struct guest_mem m;
};

static int buf_setup(void **state)
{
    struct buf_env *e = calloc(1, sizeof(*e));
    e->ram = calloc(NPAGES, PAGE);
    guest_mem_init_buffer(&e->m, e->ram, NPAGES * PAGE);
    *state = e;
    return 0;
}

static int buf_teardown(void **state)
{
    struct buf_env *e = *state;
    guest_mem_destroy(&e->m);
    free(e->ram);
    free(e);
    return 0;
}

static void test_off_by_default(void **state)
{
    struct buf_env *e = *state;
    assert_null(atomic_load(&e->m.dirty));
    uint64_t out[WORDS] = {0};
    guest_mem_dirty(&e->m, 0, 100);
    guest_mem_dirty_take(&e->m, out);
    assert_int_equal(popcount(out, WORDS), 0);
    /* Starting afterwards: earlier marks were never recorded. */
    assert_int_equal(guest_mem_dirty_start(&e->m), 0);
    guest_mem_dirty_take(&e->m, out);
    assert_int_equal(popcount(out, WORDS), 0);
    guest_mem_dirty_stop(&e->m);
    assert_null(atomic_load(&e->m.dirty));
}

static void test_mark_take(void **state)
{
    struct buf_env *e = *state;
    uint64_t out[WORDS] = {0};
    assert_int_equal(guest_mem_dirty_start(&e->m), 0);
    guest_mem_dirty(&e->m, 5 * PAGE + 10, 1);              /* page 5 */
    guest_mem_dirty(&e->m, 63 * PAGE + PAGE - 1, 2);       /* pages 63 and 64: a word edge */
    guest_mem_dirty(&e->m, 100 * PAGE, 70 * PAGE);         /* 100..169, several words */
    guest_mem_dirty(&e->m, 7 * PAGE, 0);                   /* empty: nothing */
    guest_mem_dirty(&e->m, NPAGES * PAGE, 10);             /* outside RAM */
    guest_mem_dirty(&e->m, (NPAGES - 1) * PAGE, 5 * PAGE); /* clipped to the last page */
    guest_mem_dirty(&e->m, UINT64_MAX - 2, 100);           /* wraps: outside */
    out[0] = 1;                                            /* take ORs into what the caller has */
    guest_mem_dirty_take(&e->m, out);
    assert_true(bit(out, 0) && bit(out, 5) && bit(out, 63) && bit(out, 64));
    assert_false(bit(out, 62) || bit(out, 65) || bit(out, 7) || bit(out, 99) || bit(out, 170));
    for (unsigned p = 100; p < 170; p++)
        assert_true(bit(out, p));
    assert_true(bit(out, NPAGES - 1));
    assert_int_equal(popcount(out, WORDS), 1 + 1 + 2 + 70 + 1);
    /* Taken means cleared. */
    memset(out, 0, sizeof(out));
    guest_mem_dirty_take(&e->m, out);
    assert_int_equal(popcount(out, WORDS), 0);
    /* A restart clears what was marked. */
    guest_mem_dirty(&e->m, 3 * PAGE, 1);
    assert_int_equal(guest_mem_dirty_start(&e->m), 0);
    guest_mem_dirty_take(&e->m, out);
    assert_int_equal(popcount(out, WORDS), 0);
    /* Still tracking at destroy: the teardown must free the bitmap (ASan). */
    guest_mem_dirty(&e->m, 3 * PAGE, 1);
}

static void test_offset_of_buffer(void **state)
{
    struct buf_env *e = *state;
    assert_int_equal(guest_mem_offset_of(&e->m, 0), 0);
    assert_int_equal(guest_mem_offset_of(&e->m, 12345), 12345);
    assert_int_equal(guest_mem_offset_of(&e->m, NPAGES * PAGE), UINT64_MAX);
}

/* Two regions: low RAM up to 3 GiB, the rest from 4 GiB (a sparse mapping). */
static void test_two_regions(void **state)
{
    (void)state;
    struct guest_mem m;
    uint64_t size = GUEST_PCI_HOLE_START + 16 * PAGE;
    if (guest_mem_init(&m, size) < 0) {
        skip();
        return;
    }
    assert_null(atomic_load(&m.dirty));
    uint64_t low_pages = GUEST_PCI_HOLE_START / PAGE;
    assert_int_equal(guest_mem_offset_of(&m, GUEST_HIGH_RAM_START + 5), GUEST_PCI_HOLE_START + 5);
    assert_int_equal(guest_mem_offset_of(&m, GUEST_PCI_HOLE_START), UINT64_MAX);
    assert_int_equal(guest_mem_offset_of(&m, GUEST_HIGH_RAM_START + 16 * PAGE), UINT64_MAX);
    size_t words = (size / PAGE + 63) / 64;
    uint64_t *out = calloc(words, sizeof(*out));
    assert_int_equal(guest_mem_dirty_start(&m), 0);
    guest_mem_dirty(&m, GUEST_HIGH_RAM_START + 2 * PAGE, PAGE);
    guest_mem_dirty(&m, GUEST_PCI_HOLE_START - 1, 2);    /* last low page; the hole is not RAM */
    guest_mem_dirty(&m, GUEST_PCI_HOLE_START + PAGE, 1); /* in the hole */
    guest_mem_dirty_take(&m, out);
    assert_int_equal(popcount(out, words), 2);
    assert_true(bit(out, low_pages + 2));
    assert_true(bit(out, low_pages - 1));
    free(out);
    guest_mem_destroy(&m); /* frees the bitmap still in use */
}

/* Holes: pages never written (or read) are reported; written ones are not. */
static void test_holes(void **state)
{
    (void)state;
    struct guest_mem m;
    uint64_t size = 256 * PAGE;
    if (guest_mem_init(&m, size) < 0) {
        skip();
        return;
    }
    assert_true(m.owned);
    assert_int_equal((uintptr_t)m.base % GUEST_RAM_ALIGN, 0); /* huge pages can back it */
    uint64_t bits[4] = {0};
    m.base[3 * PAGE] = 1;                     /* data */
    m.base[200 * PAGE + PAGE - 1] = 0;        /* a write of zero still allocates */
    volatile uint8_t sink = m.base[7 * PAGE]; /* a read maps the zero page */
    (void)sink;
    assert_int_equal(guest_mem_holes(&m, bits), 0);
    assert_false(bit(bits, 3));
    assert_false(bit(bits, 200));
    assert_true(bit(bits, 0));
    assert_true(bit(bits, 4));
    assert_true(bit(bits, 255));
    uint64_t n = popcount(bits, 4);
    assert_true(n == 253 || n == 254); /* page 7: a hole or not, by kernel */
    guest_mem_destroy(&m);

    /* A plain buffer has no holes to tell. */
    uint8_t *buf = calloc(16, PAGE);
    guest_mem_init_buffer(&m, buf, 16 * PAGE);
    assert_int_equal(guest_mem_holes(&m, bits), -ENOTSUP);
    guest_mem_destroy(&m);
    free(buf);
}

/* ---- concurrent marking while taking ---- */

#define NTHREADS 4
#define ROUNDS   2000

struct marker {
    struct guest_mem *m;
    unsigned id;
};

/* Thread t marks pages p with p % NTHREADS == t, over and over. */
static void *mark_thread(void *arg)
{
    struct marker *mk = arg;
    for (unsigned r = 0; r < ROUNDS; r++) {
        for (unsigned p = mk->id; p < NPAGES; p += NTHREADS * 3)
            guest_mem_dirty(mk->m, (uint64_t)p * PAGE + r % PAGE, 1);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    struct buf_env *e = *state;
    uint64_t seen[WORDS] = {0};
    pthread_t th[NTHREADS];
    struct marker mk[NTHREADS];
    assert_int_equal(guest_mem_dirty_start(&e->m), 0);
    for (unsigned t = 0; t < NTHREADS; t++) {
        mk[t] = (struct marker){&e->m, t};
        assert_int_equal(pthread_create(&th[t], NULL, mark_thread, &mk[t]), 0);
    }
    unsigned takes = 0, nonempty = 0;
    for (; takes < 5000; takes++) {
        uint64_t out[WORDS] = {0};
        guest_mem_dirty_take(&e->m, out);
        nonempty += popcount(out, WORDS) != 0;
        for (unsigned w = 0; w < WORDS; w++)
            seen[w] |= out[w];
    }
    for (unsigned t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    guest_mem_dirty_take(&e->m, seen);
    /* Exactly the marked pages: none lost, none invented. */
    for (unsigned p = 0; p < NPAGES; p++)
        assert_int_equal(bit(seen, p), p % (NTHREADS * 3) < NTHREADS);
    guest_mem_dirty_stop(&e->m);
    (void)nonempty;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_off_by_default, buf_setup, buf_teardown),
        cmocka_unit_test_setup_teardown(test_mark_take, buf_setup, buf_teardown),
        cmocka_unit_test_setup_teardown(test_offset_of_buffer, buf_setup, buf_teardown),
        cmocka_unit_test(test_two_regions),
        cmocka_unit_test(test_holes),
        cmocka_unit_test_setup_teardown(test_concurrent, buf_setup, buf_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
