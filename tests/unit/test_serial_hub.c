/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The COM1 serial hub (instance/serial_hub.h): history offsets before and
 * after the head/tail gap and beyond 4 GiB, Propolis's history semantics,
 * subscribers (replay, live, lag, close, control messages, eventfds), the
 * input sink, and a writer racing five readers.
 *
 * Built with the hub's source and -DCELLA_SERIAL_HUB_TEST_HOOKS, which adds
 * serial_hub_test_advance() to reach offsets beyond 4 GiB quickly.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "instance/serial_hub.h"

void serial_hub_test_advance(struct serial_hub *h, uint64_t n);

#define HEAD  ((uint64_t)SERIAL_HISTORY_HEAD)
#define TAIL  ((uint64_t)SERIAL_HISTORY_TAIL)
#define QUEUE ((uint64_t)SERIAL_SUB_QUEUE)
#define GiB   (1ull << 30)

/* ---- helpers ---- */

/* The byte the tests write at absolute offset `off`. */
static uint8_t pat(uint64_t off)
{
    return (uint8_t)((off * 0x9E3779B97F4A7C15ull) >> 56);
}

/* Index of the first byte that is not pat(off + i), or n. */
static size_t pat_mismatch(const uint8_t *buf, uint64_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (buf[i] != pat(off + i))
            return i;
    return n;
}

/* Writes pat bytes for [off, off + len) in chunks of `chunk`. */
static void write_pat(struct serial_hub *h, uint64_t off, uint64_t len, size_t chunk)
{
    uint8_t *buf = malloc(chunk);
    assert_non_null(buf);
    while (len) {
        size_t n = len < chunk ? (size_t)len : chunk;
        for (size_t i = 0; i < n; i++)
            buf[i] = pat(off + i);
        serial_hub_write(h, buf, n);
        off += n;
        len -= n;
    }
    free(buf);
}

static struct serial_hub *new_hub(void)
{
    struct serial_hub *h = NULL;
    assert_int_equal(serial_hub_new(&h), 0);
    assert_non_null(h);
    return h;
}

/* A history read that must succeed; returns the byte count. */
static size_t hist(struct serial_hub *h, bool from_start, uint64_t offset, size_t max, uint8_t *out,
                   uint64_t *last)
{
    size_t len = 12345;
    assert_int_equal(serial_hub_read(h, from_start, offset, max, out, &len, last), 0);
    return len;
}

/* Checks a history read returns pat bytes [start, start + want), ending there. */
static void expect_hist(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                        uint64_t start, size_t want)
{
    uint8_t *buf = malloc(max ? max : 1);
    assert_non_null(buf);
    uint64_t last = 0;
    size_t n = hist(h, from_start, offset, max, buf, &last);
    assert_int_equal(n, want);
    assert_int_equal(last, start + want);
    assert_int_equal(pat_mismatch(buf, start, n), n);
    free(buf);
}

static void expect_erange(struct serial_hub *h, bool from_start, uint64_t offset)
{
    uint8_t b[8];
    size_t len = 77;
    uint64_t last = 77;
    assert_int_equal(serial_hub_read(h, from_start, offset, sizeof(b), b, &len, &last), -ERANGE);
    assert_int_equal(len, 77); /* untouched on failure */
    assert_int_equal(last, 77);
}

/* A from_start read at or past the end: no bytes, last offset = total (Propolis). */
static void expect_past_end(struct serial_hub *h, uint64_t offset)
{
    uint8_t b[8];
    uint64_t last = 77;
    assert_int_equal(hist(h, true, offset, sizeof(b), b, &last), 0);
    assert_int_equal(last, serial_hub_total(h));
}

static bool fd_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, 0);
    assert_true(r >= 0);
    return r == 1 && (p.revents & POLLIN);
}

/* Reads everything a subscriber has until it returns `stop` (0 or -EPIPE),
 * checking the bytes are pat from *pos on and that no loss is reported. */
static uint64_t drain_sub(struct serial_sub *s, uint64_t pos, int stop)
{
    static uint8_t buf[65536];
    uint64_t got = 0;
    for (;;) {
        uint64_t lost = 0;
        int r = serial_sub_read(s, buf, sizeof(buf), &lost);
        if (r == stop)
            break;
        assert_true(r > 0);
        assert_int_equal(pat_mismatch(buf, pos + got, (size_t)r), (size_t)r);
        got += (uint64_t)r;
    }
    return got;
}

static struct serial_sub *sub_at(struct serial_hub *h, uint64_t start)
{
    struct serial_sub *s = NULL;
    assert_int_equal(serial_hub_subscribe(h, start, &s), 0);
    assert_non_null(s);
    return s;
}

/* ---- history ---- */

static void test_empty_hub(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    uint8_t b[4];
    uint64_t last = 99;
    assert_int_equal(serial_hub_total(h), 0);
    assert_int_equal(hist(h, true, 0, sizeof(b), b, &last), 0);
    assert_int_equal(last, 0);
    assert_int_equal(hist(h, false, 10, sizeof(b), b, &last), 0);
    assert_int_equal(last, 0);
    expect_past_end(h, 1);

    size_t len;
    assert_int_equal(serial_hub_read(h, true, 0, 4, NULL, &len, &last), -EINVAL);
    assert_int_equal(serial_hub_read(h, true, 0, 0, NULL, &len, &last), 0);
    serial_hub_write(h, b, 0);
    assert_int_equal(serial_hub_total(h), 0);
    serial_hub_free(h);
    serial_hub_free(NULL);
}

static size_t str_hist(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                       char *out, uint64_t *last)
{
    size_t n = hist(h, from_start, offset, max, (uint8_t *)out, last);
    out[n] = '\0';
    return n;
}

/* Propolis's own HistoryBuffer test vectors (the part without a gap). */
static void test_propolis_vectors(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    char s[128];
    uint64_t last;
    const char *line = "This is an example of text.";

    assert_int_equal(str_hist(h, true, 0, 16384, s, &last), 0);
    assert_int_equal(last, 0);
    assert_int_equal(str_hist(h, true, 0, 11, s, &last), 0);
    /* Propolis answers FromStart(11) on an empty buffer with ([], 0). */
    assert_int_equal(str_hist(h, true, 11, 16384, s, &last), 0);
    assert_string_equal(s, "");
    assert_int_equal(last, 0);

    serial_hub_write(h, (const uint8_t *)line, 9);
    str_hist(h, true, 8, 5, s, &last);
    assert_string_equal(s, "a");
    assert_int_equal(last, 9);
    serial_hub_write(h, (const uint8_t *)line + 9, strlen(line) - 9);

    str_hist(h, true, 0, 16384, s, &last);
    assert_string_equal(s, line);
    assert_int_equal(last, strlen(line));
    str_hist(h, true, 8, 5, s, &last);
    assert_string_equal(s, "an ex");
    assert_int_equal(last, 13);
    str_hist(h, false, 10, 4, s, &last);
    assert_string_equal(s, "e of");
    assert_int_equal(last, 21);
    str_hist(h, false, 10, 400 > sizeof(s) - 1 ? sizeof(s) - 1 : 400, s, &last);
    assert_string_equal(s, "e of text.");
    assert_int_equal(last, strlen(line));
    str_hist(h, false, 100, 4, s, &last);
    assert_string_equal(s, "This");
    assert_int_equal(last, 4);
    str_hist(h, false, 0, 4, s, &last);
    assert_string_equal(s, "");
    assert_int_equal(last, strlen(line));
    str_hist(h, true, strlen(line), 4, s, &last);
    assert_string_equal(s, "");
    assert_int_equal(last, strlen(line));
    expect_past_end(h, strlen(line) + 1);

    const char *more = "\nNo thing beside remains.";
    serial_hub_write(h, (const uint8_t *)more, strlen(more));
    str_hist(h, false, 10, 4, s, &last);
    assert_string_equal(s, "e re");
    assert_int_equal(last, 46);
    str_hist(h, true, 8, 8, s, &last);
    assert_string_equal(s, "an examp");
    assert_int_equal(last, 16);
    assert_int_equal(serial_hub_total(h), strlen(line) + strlen(more));
    serial_hub_free(h);
}

/* Up to HEAD + TAIL bytes everything is kept and reads cross head -> tail. */
static void test_contiguous_two_mib(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    const uint64_t all = HEAD + TAIL;
    write_pat(h, 0, all, 4093);
    assert_int_equal(serial_hub_total(h), all);

    expect_hist(h, true, 0, 3u << 20, 0, all);
    expect_hist(h, true, HEAD - 5, 10, HEAD - 5, 10);
    expect_hist(h, false, all, 3u << 20, 0, all);
    expect_hist(h, false, TAIL + 7, 100, HEAD - 7, 100);
    expect_hist(h, true, all - 3, 100, all - 3, 3);

    /* One more byte: offset HEAD leaves the ring, the gap opens. */
    write_pat(h, all, 1, 1);
    expect_hist(h, true, 0, 3u << 20, 0, HEAD); /* stops at the head's end */
    expect_hist(h, true, HEAD - 5, 10, HEAD - 5, 5);
    expect_erange(h, true, HEAD);
    expect_hist(h, true, HEAD + 1, 3u << 20, HEAD + 1, TAIL);
    expect_hist(h, false, TAIL, 3u << 20, HEAD + 1, TAIL);
    expect_erange(h, false, TAIL + 1);
    serial_hub_free(h);
}

static void test_gap(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    const uint64_t total = (3u << 20) + 12345;
    write_pat(h, 0, total, 7777);
    assert_int_equal(serial_hub_total(h), total);
    const uint64_t ts = total - TAIL; /* first byte the tail keeps */

    /* from_start */
    expect_hist(h, true, 0, 16384, 0, 16384);
    expect_hist(h, true, 0, 4u << 20, 0, HEAD);
    expect_hist(h, true, HEAD - 10, 100, HEAD - 10, 10);
    expect_erange(h, true, HEAD);
    expect_erange(h, true, HEAD + 1);
    expect_erange(h, true, ts - 1);
    expect_hist(h, true, ts, 16, ts, 16);
    expect_hist(h, true, ts, 4u << 20, ts, TAIL);
    expect_hist(h, true, total - 5, 100, total - 5, 5);
    expect_hist(h, true, total, 100, total, 0);
    expect_past_end(h, total + 1);

    /* most_recent, max_bytes counted from the start of the range */
    expect_hist(h, false, 100, 40, total - 100, 40);
    expect_hist(h, false, TAIL, 4u << 20, ts, TAIL);
    expect_erange(h, false, TAIL + 1);
    expect_erange(h, false, total - HEAD); /* starts exactly where the gap starts */
    expect_hist(h, false, total - HEAD + 1, 4u << 20, HEAD - 1, 1);
    expect_hist(h, false, total, 64, 0, 64); /* all of it: from offset 0 */
    expect_hist(h, false, total + 1000, 4u << 20, 0, HEAD);
    expect_hist(h, false, 0, 64, total, 0);

    /* max_bytes = 0 */
    expect_hist(h, true, 5, 0, 5, 0);
    serial_hub_free(h);
}

/* The way a vCPU writes: one byte per call, across the ring's wrap. */
static void test_byte_at_a_time(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    const uint64_t total = HEAD + TAIL + (300u << 10) + 3;
    for (uint64_t off = 0; off < total; off++) {
        uint8_t b = pat(off);
        serial_hub_write(h, &b, 1);
    }
    assert_int_equal(serial_hub_total(h), total);
    expect_hist(h, true, 0, 4u << 20, 0, HEAD);
    expect_hist(h, false, TAIL, 4u << 20, total - TAIL, TAIL);
    /* Across the ring index wrap (offset a multiple of TAIL). */
    expect_hist(h, true, 2 * TAIL - 9, 18, 2 * TAIL - 9, 18);
    expect_erange(h, true, total - TAIL - 1);
    serial_hub_free(h);
}

/* Offsets beyond 4 GiB through the test hook; data straddles 2^32. */
static void test_offsets_beyond_4gib(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    const uint64_t base = (1ull << 32) - (300u << 10);
    write_pat(h, 0, 100, 100);
    serial_hub_test_advance(h, base - 100);
    assert_int_equal(serial_hub_total(h), base);
    write_pat(h, base, TAIL + (200u << 10), 65536 + 13);
    const uint64_t total = base + TAIL + (200u << 10);
    assert_int_equal(serial_hub_total(h), total);
    assert_true(total > (1ull << 32));

    /* The head kept the first bytes and the hook's zeros. */
    uint8_t b[200];
    uint64_t last;
    assert_int_equal(hist(h, true, 0, sizeof(b), b, &last), sizeof(b));
    assert_int_equal(pat_mismatch(b, 0, 100), 100);
    for (size_t i = 100; i < sizeof(b); i++)
        assert_int_equal(b[i], 0);

    expect_hist(h, true, (1ull << 32) - 10, 20, (1ull << 32) - 10, 20);
    expect_hist(h, true, total - 1000, 4096, total - 1000, 1000);
    expect_hist(h, false, TAIL, 4u << 20, total - TAIL, TAIL);
    expect_hist(h, false, 10, 4, total - 10, 4);
    expect_erange(h, false, TAIL + 1);
    expect_erange(h, true, HEAD);

    struct serial_sub *s = sub_at(h, total - 500);
    assert_int_equal(drain_sub(s, total - 500, 0), 500);
    write_pat(h, total, 10, 10);
    assert_int_equal(drain_sub(s, total, 0), 10);

    /* Beyond 5 GiB, one more time through the hook. */
    serial_hub_test_advance(h, 5 * GiB - (total + 10));
    write_pat(h, 5 * GiB, 4096, 4096);
    expect_hist(h, false, 4096, 8192, 5 * GiB, 4096);
    expect_hist(h, true, 5 * GiB + 4000, 8192, 5 * GiB + 4000, 96);
    /* The same offsets truncated to 32 bits land in the gap. */
    expect_erange(h, true, (uint32_t)(5 * GiB + 4000));
    struct serial_sub *bad = NULL;
    assert_int_equal(serial_hub_subscribe(h, (uint32_t)(5 * GiB + 4000), &bad), -ERANGE);
    assert_null(bad);
    bad = sub_at(h, 5 * GiB + 4000);
    assert_int_equal(drain_sub(bad, 5 * GiB + 4000, 0), 96);
    serial_sub_close(bad);
    uint64_t lost = 0;
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 5 * GiB + 4096 - QUEUE - (total + 10));
    serial_sub_close(s);
    serial_hub_free(h);
}

/* ---- subscribers ---- */

static void test_sub_replay_then_live(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    write_pat(h, 0, 100, 100);
    struct serial_sub *s = sub_at(h, 40);
    int fd = serial_sub_fd(s);
    assert_true(fd >= 0);
    assert_true(fd_readable(fd));

    uint8_t b[1000];
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 60);
    assert_int_equal(pat_mismatch(b, 40, 60), 60);
    assert_false(fd_readable(fd));
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 0);

    write_pat(h, 100, 50, 7);
    assert_true(fd_readable(fd));
    assert_int_equal(serial_sub_read(s, b, 20, NULL), 20);
    assert_int_equal(pat_mismatch(b, 100, 20), 20);
    assert_true(fd_readable(fd)); /* 30 bytes still pending */
    assert_int_equal(serial_sub_read(s, b, 0, NULL), 0);
    assert_true(fd_readable(fd));
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 30);
    assert_int_equal(pat_mismatch(b, 120, 30), 30);
    assert_false(fd_readable(fd));
    assert_int_equal(serial_sub_read(s, NULL, 4, NULL), -EINVAL);
    serial_sub_close(s);
    serial_sub_close(NULL);
    serial_hub_free(h);
}

static void test_sub_live_only(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    write_pat(h, 0, 100, 100);
    struct serial_sub *at_end = sub_at(h, 100);
    struct serial_sub *beyond = sub_at(h, UINT64_MAX);
    uint8_t b[64];
    assert_false(fd_readable(serial_sub_fd(at_end)));
    assert_false(fd_readable(serial_sub_fd(beyond)));
    assert_int_equal(serial_sub_read(at_end, b, sizeof(b), NULL), 0);
    assert_int_equal(serial_sub_read(beyond, b, sizeof(b), NULL), 0);

    write_pat(h, 100, 10, 10);
    assert_true(fd_readable(serial_sub_fd(beyond)));
    assert_int_equal(drain_sub(at_end, 100, 0), 10);
    assert_int_equal(drain_sub(beyond, 100, 0), 10);
    serial_sub_close(at_end);
    serial_sub_close(beyond);
    serial_hub_free(h);
}

static void test_sub_two_independent(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    struct serial_sub *a = sub_at(h, 0), *b = sub_at(h, 0);
    write_pat(h, 0, 1000, 33);

    uint8_t buf[300];
    uint64_t apos = 0;
    int r;
    while ((r = serial_sub_read(a, buf, 7, NULL)) > 0) {
        assert_int_equal(pat_mismatch(buf, apos, (size_t)r), (size_t)r);
        apos += (uint64_t)r;
    }
    assert_int_equal(r, 0);
    assert_int_equal(apos, 1000);
    assert_int_equal(serial_sub_read(b, buf, 300, NULL), 300);
    assert_int_equal(pat_mismatch(buf, 0, 300), 300);

    write_pat(h, 1000, 500, 500);
    assert_int_equal(drain_sub(b, 300, 0), 1200);
    serial_sub_close(b); /* does not disturb a */
    write_pat(h, 1500, 5, 5);
    assert_int_equal(drain_sub(a, 1000, 0), 505);
    serial_sub_close(a);
    serial_hub_free(h);
}

static void test_sub_start_in_gap(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    const uint64_t total = (3u << 20) + 999;
    write_pat(h, 0, total, 65536);
    const uint64_t ts = total - TAIL;
    struct serial_sub *s = NULL;
    assert_int_equal(serial_hub_subscribe(h, HEAD, &s), -ERANGE);
    assert_int_equal(serial_hub_subscribe(h, ts - 1, &s), -ERANGE);
    assert_null(s);

    /* From the tail: the whole replay, beyond the live queue bound. */
    s = sub_at(h, ts);
    assert_int_equal(drain_sub(s, ts, 0), TAIL);
    serial_sub_close(s);

    /* From the head: the head, then the gap as one loss, then the tail. */
    s = sub_at(h, 5);
    assert_int_equal(drain_sub(s, 5, -ENOBUFS), HEAD - 5);
    uint64_t lost = 0;
    uint8_t b[16];
    /* the -ENOBUFS that ended drain_sub was the gap; it is not repeated */
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), sizeof(b));
    assert_int_equal(pat_mismatch(b, ts, sizeof(b)), sizeof(b));
    assert_int_equal(drain_sub(s, ts + sizeof(b), 0), TAIL - sizeof(b));
    serial_sub_close(s);

    s = sub_at(h, 0);
    assert_int_equal(drain_sub(s, 0, -ENOBUFS), HEAD);
    serial_sub_close(s);

    /* Reads the gap's size. */
    s = sub_at(h, HEAD - 1);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), 1);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, ts - HEAD);
    serial_sub_close(s);
    serial_hub_free(h);
}

/* A replay whose tail bytes are overwritten before the reader gets there. */
static void test_sub_replay_overrun(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    write_pat(h, 0, HEAD + TAIL, 65536);
    struct serial_sub *s = sub_at(h, HEAD + 100); /* kept, replay */
    write_pat(h, HEAD + TAIL, 1000, 1000);        /* overwrites up to HEAD + 1000 */
    uint8_t b[64];
    uint64_t lost = 0;
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 900);
    assert_int_equal(drain_sub(s, HEAD + 1000, 0), TAIL);
    serial_sub_close(s);
    serial_hub_free(h);
}

/* A subscriber that never reads: writes go on, other readers are unaffected,
 * and it gets one -ENOBUFS with the exact loss, then the newest bytes. */
static void test_sub_lag(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    struct serial_sub *idle = sub_at(h, 0);
    struct serial_sub *busy = sub_at(h, 0);
    const uint64_t total = QUEUE + 1000;
    uint64_t bpos = 0;
    for (uint64_t off = 0; off < total; off += 4096) {
        uint64_t n = total - off < 4096 ? total - off : 4096;
        write_pat(h, off, n, 4096);
        bpos += drain_sub(busy, bpos, 0);
    }
    assert_int_equal(bpos, total);
    assert_true(fd_readable(serial_sub_fd(idle)));

    uint8_t b[64];
    uint64_t lost = 0;
    assert_int_equal(serial_sub_read(idle, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 1000);
    assert_true(fd_readable(serial_sub_fd(idle)));
    assert_int_equal(drain_sub(idle, 1000, 0), QUEUE);
    assert_false(fd_readable(serial_sub_fd(idle)));

    /* Resumes with live data, no second report. */
    write_pat(h, total, 10, 10);
    assert_int_equal(drain_sub(idle, total, 0), 10);

    /* Exactly QUEUE behind is no loss; one more byte is a loss of one. */
    write_pat(h, total + 10, QUEUE, 65536);
    assert_int_equal(drain_sub(idle, total + 10, 0), QUEUE);
    write_pat(h, total + 10 + QUEUE, QUEUE + 1, 65536);
    assert_int_equal(serial_sub_read(idle, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 1);
    assert_int_equal(drain_sub(idle, total + 11 + QUEUE, 0), QUEUE);

    /* Replay is exempt from the bound; the live part after it is not. */
    struct serial_sub *r = sub_at(h, serial_hub_total(h) - 100);
    const uint64_t rstart = serial_hub_total(h) - 100;
    write_pat(h, rstart + 100, QUEUE + 200, 65536);
    assert_int_equal(drain_sub(r, rstart, -ENOBUFS), 100);
    assert_int_equal(drain_sub(r, rstart + 300, 0), QUEUE);

    serial_sub_close(r);
    serial_sub_close(idle);
    serial_sub_close(busy);
    serial_hub_free(h);
}

static void test_sub_limit(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    struct serial_sub *subs[SERIAL_MAX_SUBS];
    for (unsigned i = 0; i < SERIAL_MAX_SUBS; i++)
        subs[i] = sub_at(h, 0);
    struct serial_sub *extra = NULL;
    assert_int_equal(serial_hub_subscribe(h, 0, &extra), -E2BIG);
    assert_null(extra);
    serial_sub_close(subs[7]);
    subs[7] = sub_at(h, 0);
    write_pat(h, 0, 3, 3);
    for (unsigned i = 0; i < SERIAL_MAX_SUBS; i++) {
        assert_int_equal(drain_sub(subs[i], 0, 0), 3);
        serial_sub_close(subs[i]);
    }
    serial_hub_free(h);
}

/* Closing the hub: subscribers drain, then -EPIPE for good; the history
 * lives until the last subscriber closes (ASan checks the frees). */
static void test_close_drains(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    write_pat(h, 0, 100, 100);
    struct serial_sub *a = sub_at(h, 50), *b = sub_at(h, 100);
    serial_hub_broadcast_control(h, "{\"bye\":1}");
    assert_int_equal(serial_sub_read(b, (uint8_t[4]){0}, 4, NULL), -EAGAIN);
    free(serial_sub_take_control(b));
    assert_false(fd_readable(serial_sub_fd(b)));

    serial_hub_free(h);
    assert_true(fd_readable(serial_sub_fd(a)));
    assert_true(fd_readable(serial_sub_fd(b)));
    assert_int_equal(drain_sub(a, 50, -EAGAIN), 50);
    char *c = serial_sub_take_control(a);
    assert_string_equal(c, "{\"bye\":1}");
    free(c);
    uint8_t buf[8];
    assert_int_equal(serial_sub_read(a, buf, sizeof(buf), NULL), -EPIPE);
    assert_int_equal(serial_sub_read(a, buf, sizeof(buf), NULL), -EPIPE);
    assert_true(fd_readable(serial_sub_fd(a)));
    assert_int_equal(serial_sub_read(b, buf, sizeof(buf), NULL), -EPIPE);
    serial_sub_close(a);
    serial_sub_close(b); /* frees the hub */
}

static void test_control_order(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    struct serial_sub *s = sub_at(h, 0);
    int fd = serial_sub_fd(s);

    /* Due at once on an idle subscriber. */
    serial_hub_broadcast_control(h, "{\"first\":0}");
    assert_true(fd_readable(fd));
    uint8_t b[100];
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
    char *c = serial_sub_take_control(s);
    assert_string_equal(c, "{\"first\":0}");
    free(c);
    assert_false(fd_readable(fd));
    assert_null(serial_sub_take_control(s));

    serial_hub_write(h, (const uint8_t *)"abc", 3);
    serial_hub_broadcast_control(h, "{\"a\":1}");
    serial_hub_write(h, (const uint8_t *)"def", 3);
    serial_hub_broadcast_control(h, "{\"b\":2}");
    serial_hub_broadcast_control(h, "{\"c\":3}");
    serial_hub_write(h, (const uint8_t *)"g", 1);

    assert_null(serial_sub_take_control(s)); /* "abc" comes first */
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 3);
    assert_memory_equal(b, "abc", 3);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
    c = serial_sub_take_control(s);
    assert_string_equal(c, "{\"a\":1}");
    free(c);
    assert_int_equal(serial_sub_read(s, b, 2, NULL), 2);
    assert_memory_equal(b, "de", 2);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 1);
    assert_memory_equal(b, "f", 1);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
    c = serial_sub_take_control(s);
    assert_string_equal(c, "{\"b\":2}");
    free(c);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
    c = serial_sub_take_control(s);
    assert_string_equal(c, "{\"c\":3}");
    free(c);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 1);
    assert_memory_equal(b, "g", 1);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 0);
    assert_false(fd_readable(fd));

    /* Control messages are not history: a later subscriber sees bytes only. */
    struct serial_sub *late = sub_at(h, 0);
    assert_int_equal(serial_sub_read(late, b, sizeof(b), NULL), 7);
    assert_memory_equal(b, "abcdefg", 7);
    assert_int_equal(serial_sub_read(late, b, sizeof(b), NULL), 0);
    assert_null(serial_sub_take_control(late));

    /* The oldest of too many pending messages go. */
    for (int i = 0; i < 40; i++) {
        char m[32];
        snprintf(m, sizeof(m), "{\"n\":%d}", i);
        serial_hub_broadcast_control(h, m);
    }
    for (int i = 40 - 32; i < 40; i++) {
        char m[32];
        snprintf(m, sizeof(m), "{\"n\":%d}", i);
        assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), -EAGAIN);
        c = serial_sub_take_control(s);
        assert_string_equal(c, m);
        free(c);
    }
    assert_int_equal(serial_sub_read(s, b, sizeof(b), NULL), 0);
    serial_sub_close(late); /* pending messages are freed */
    serial_sub_close(s);
    serial_hub_free(h);
}

/* Loss is reported on the right side of a control message. */
static void test_control_and_lag(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    struct serial_sub *s = sub_at(h, 0);
    uint8_t b[64];
    uint64_t lost = 0;

    /* Message after the lost bytes: loss, bytes up to it, it, the rest. */
    write_pat(h, 0, QUEUE + 100, 65536);
    serial_hub_broadcast_control(h, "{\"m\":1}");
    write_pat(h, QUEUE + 100, 50, 50);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 150);
    assert_int_equal(drain_sub(s, 150, -EAGAIN), QUEUE - 50);
    free(serial_sub_take_control(s));
    assert_int_equal(drain_sub(s, QUEUE + 100, 0), 50);

    /* Message inside the lost range: loss before it, it, loss after it. */
    const uint64_t base = QUEUE + 150;
    write_pat(h, base, 100, 100);
    serial_hub_broadcast_control(h, "{\"m\":2}");
    write_pat(h, base + 100, QUEUE + 50, 65536);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 100);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -EAGAIN);
    char *c = serial_sub_take_control(s);
    assert_string_equal(c, "{\"m\":2}");
    free(c);
    assert_int_equal(serial_sub_read(s, b, sizeof(b), &lost), -ENOBUFS);
    assert_int_equal(lost, 50);
    assert_int_equal(drain_sub(s, base + 150, 0), QUEUE);
    serial_sub_close(s);
    serial_hub_free(h);
}

/* ---- input ---- */

struct sink_rec {
    uint8_t got[64];
    size_t n;
    size_t accept; /* bytes the sink claims per call */
};

static size_t rec_input(void *ctx, const uint8_t *buf, size_t len)
{
    struct sink_rec *r = ctx;
    size_t take = len < r->accept ? len : r->accept;
    if (take > sizeof(r->got) - r->n)
        take = sizeof(r->got) - r->n;
    memcpy(r->got + r->n, buf, take);
    r->n += take;
    return r->accept; /* may claim more than it was given */
}

static void test_input(void **state)
{
    (void)state;
    struct serial_hub *h = new_hub();
    assert_int_equal(serial_hub_input(h, (const uint8_t *)"ls\r", 3), 0);

    struct sink_rec r = {.accept = 2};
    serial_hub_set_input(h, rec_input, &r);
    assert_int_equal(serial_hub_input(h, (const uint8_t *)"ls\r", 3), 2);
    assert_int_equal(r.n, 2);
    assert_memory_equal(r.got, "ls", 2);
    r.accept = 100;
    assert_int_equal(serial_hub_input(h, (const uint8_t *)"\r", 1), 1); /* capped at len */
    assert_int_equal(serial_hub_input(h, (const uint8_t *)"x", 0), 0);
    assert_int_equal(r.n, 3);

    /* Input is not output: nothing reaches the history. */
    assert_int_equal(serial_hub_total(h), 0);

    serial_hub_set_input(h, NULL, NULL);
    assert_int_equal(serial_hub_input(h, (const uint8_t *)"y", 1), 0);
    assert_int_equal(r.n, 3);
    serial_hub_free(h);
}

/* ---- stress: one writer, five readers, one history poller ---- */

#define STRESS_READERS 5

struct stress {
    struct serial_hub *h;
    atomic_bool stop_writer;
    atomic_bool stop_history;
    uint64_t start;   /* offset the writer continues from */
    uint64_t written; /* writer's final offset, read after join */
};

struct reader {
    struct stress *st;
    struct serial_sub *sub;
    uint64_t pos;  /* absolute offset of the next byte expected */
    unsigned slow; /* sleep this many microseconds between reads */
    size_t bufsz;
    uint64_t bytes, lost, lags, controls;
    unsigned errors;
    char first_error[160];
};

static void reader_fail(struct reader *r, const char *what, uint64_t a, uint64_t b)
{
    if (!r->errors++)
        snprintf(r->first_error, sizeof(r->first_error), "%s: %llu vs %llu", what,
                 (unsigned long long)a, (unsigned long long)b);
}

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    uint8_t *buf = malloc(r->bufsz);
    if (!buf) {
        reader_fail(r, "malloc", 0, 0);
        return NULL;
    }
    int fd = serial_sub_fd(r->sub);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) == 0) {
            reader_fail(r, "stalled at", r->pos, 0);
            break;
        }
        uint64_t lost = 0;
        int n = serial_sub_read(r->sub, buf, r->bufsz, &lost);
        if (n == -EPIPE)
            break;
        if (n == -ENOBUFS) {
            r->lost += lost;
            r->lags++;
            r->pos += lost;
        } else if (n == -EAGAIN) {
            char *c = serial_sub_take_control(r->sub);
            unsigned long long at = 0;
            if (!c || sscanf(c, "{\"at\":%llu}", &at) != 1 || at != r->pos)
                reader_fail(r, "control at", at, r->pos);
            free(c);
            r->controls++;
        } else if (n < 0) {
            reader_fail(r, "read error", (uint64_t)-n, 0);
            break;
        } else if (n == 0) {
            /* readable means something is pending, and only we consume it */
            reader_fail(r, "readable but nothing to read at", r->pos, 0);
        } else {
            size_t bad = pat_mismatch(buf, r->pos, (size_t)n);
            if (bad != (size_t)n)
                reader_fail(r, "byte mismatch at", r->pos + bad, 0);
            r->pos += (uint64_t)n;
            r->bytes += (uint64_t)n;
        }
        if (r->slow)
            nanosleep(&(struct timespec){.tv_nsec = r->slow * 1000L}, NULL);
    }
    free(buf);
    return NULL;
}

static void *writer_main(void *arg)
{
    struct stress *st = arg;
    uint8_t buf[256];
    uint64_t off = st->start, rng = 0x12345678abcdefull, iter = 0;
    while (!atomic_load(&st->stop_writer)) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        size_t n = (rng & 3) == 0 ? 1 : 1 + (size_t)(rng >> 40) % sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = pat(off + i);
        serial_hub_write(st->h, buf, n);
        off += n;
        if (iter % 512 == 0) /* let fast readers keep up now and then */
            nanosleep(&(struct timespec){.tv_nsec = 20 * 1000L}, NULL);
        if (++iter % 20000 == 0) {
            char m[48];
            snprintf(m, sizeof(m), "{\"at\":%llu}", (unsigned long long)off);
            serial_hub_broadcast_control(st->h, m);
        }
    }
    st->written = off;
    return NULL;
}

/* Reads recent history and checks it against the pattern and total. */
static void *history_main(void *arg)
{
    struct stress *st = arg;
    static uint8_t buf[8192];
    unsigned errors = 0;
    while (!atomic_load(&st->stop_history)) {
        size_t len = 0;
        uint64_t last = 0;
        uint64_t before = serial_hub_total(st->h);
        if (serial_hub_read(st->h, false, sizeof(buf), sizeof(buf), buf, &len, &last) < 0) {
            errors++;
            continue;
        }
        if (last < before || len > last || pat_mismatch(buf, last - len, len) != len)
            errors++;
    }
    return (void *)(uintptr_t)errors;
}

static void test_stress(void **state)
{
    (void)state;
    struct stress st = {.h = new_hub()};
    struct reader rd[STRESS_READERS] = {
        {.bufsz = 65536},              /* replay from 0, fast */
        {.bufsz = 17},                 /* small reads */
        {.bufsz = 4096, .slow = 2000}, /* slow: lags */
        {.bufsz = 1},                  /* a byte at a time */
        {.bufsz = 65536},              /* joins late, from the tail */
    };
    pthread_t rt[STRESS_READERS], wt, ht;

    write_pat(st.h, 0, 1000, 1000);
    for (int i = 0; i < STRESS_READERS - 1; i++) {
        rd[i].st = &st;
        rd[i].pos = i == 0 ? 0 : 1000;
        rd[i].sub = sub_at(st.h, rd[i].pos);
        assert_int_equal(pthread_create(&rt[i], NULL, reader_main, &rd[i]), 0);
    }
    struct serial_sub *idle = sub_at(st.h, 1000); /* never reads until the end */
    st.start = 1000;
    assert_int_equal(pthread_create(&wt, NULL, writer_main, &st), 0);
    assert_int_equal(pthread_create(&ht, NULL, history_main, &st), 0);

    nanosleep(&(struct timespec){.tv_nsec = 300 * 1000 * 1000L}, NULL);
    struct reader *late = &rd[STRESS_READERS - 1];
    late->st = &st;
    uint64_t t = serial_hub_total(st.h);
    late->pos = t > 1000 ? t - 1000 : 0;
    late->sub = sub_at(st.h, late->pos);
    assert_int_equal(pthread_create(&rt[STRESS_READERS - 1], NULL, reader_main, late), 0);
    nanosleep(&(struct timespec){.tv_nsec = 700 * 1000 * 1000L}, NULL);

    atomic_store(&st.stop_writer, true);
    pthread_join(wt, NULL);
    atomic_store(&st.stop_history, true);
    void *herr;
    pthread_join(ht, &herr);
    assert_int_equal((uintptr_t)herr, 0);
    const uint64_t total = serial_hub_total(st.h);
    assert_int_equal(total, st.written);

    /* The idle subscriber: losses, the newest SERIAL_MAX_CONTROLS messages
     * each at its offset, and the newest bytes; positions add up. */
    static uint8_t b[65536];
    uint64_t ipos = 1000, ilost = 0;
    unsigned ictl = 0;
    for (;;) {
        uint64_t lost = 0;
        int r = serial_sub_read(idle, b, sizeof(b), &lost);
        if (r == 0)
            break;
        if (r == -ENOBUFS) {
            ipos += lost;
            ilost += lost;
        } else if (r == -EAGAIN) {
            char *c = serial_sub_take_control(idle);
            unsigned long long at = 0;
            assert_non_null(c);
            assert_int_equal(sscanf(c, "{\"at\":%llu}", &at), 1);
            assert_int_equal(at, ipos);
            free(c);
            ictl++;
        } else {
            assert_true(r > 0);
            assert_int_equal(pat_mismatch(b, ipos, (size_t)r), (size_t)r);
            ipos += (uint64_t)r;
        }
    }
    assert_int_equal(ipos, total);
    assert_true(ictl <= 32);
    if (total - 1000 > QUEUE)
        assert_true(ilost >= total - 1000 - QUEUE);

    serial_hub_free(st.h); /* readers drain and see -EPIPE */
    for (int i = 0; i < STRESS_READERS; i++) {
        pthread_join(rt[i], NULL);
        if (rd[i].errors)
            fail_msg("reader %d: %u errors, first: %s", i, rd[i].errors, rd[i].first_error);
        assert_int_equal(rd[i].pos, total);
        print_message("reader %d: %llu bytes, %llu lost in %llu lags, %llu controls\n", i,
                      (unsigned long long)rd[i].bytes, (unsigned long long)rd[i].lost,
                      (unsigned long long)rd[i].lags, (unsigned long long)rd[i].controls);
        serial_sub_close(rd[i].sub);
    }
    print_message("writer: %llu bytes\n", (unsigned long long)total);
    serial_sub_close(idle);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_hub),
        cmocka_unit_test(test_propolis_vectors),
        cmocka_unit_test(test_contiguous_two_mib),
        cmocka_unit_test(test_gap),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_offsets_beyond_4gib),
        cmocka_unit_test(test_sub_replay_then_live),
        cmocka_unit_test(test_sub_live_only),
        cmocka_unit_test(test_sub_two_independent),
        cmocka_unit_test(test_sub_start_in_gap),
        cmocka_unit_test(test_sub_replay_overrun),
        cmocka_unit_test(test_sub_lag),
        cmocka_unit_test(test_sub_limit),
        cmocka_unit_test(test_close_drains),
        cmocka_unit_test(test_control_order),
        cmocka_unit_test(test_control_and_lag),
        cmocka_unit_test(test_input),
        cmocka_unit_test(test_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
