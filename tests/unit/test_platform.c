/* SPDX-License-Identifier: MPL-2.0 */
/*
 * CMOS/RTC (devices/cmos.h) and the small PC pieces (devices/platform.h):
 * RTC time in every format, guest clock setting, SeaBIOS memory fields,
 * reset paths (0xCF9, i8042), pvpanic, and the ACPI PM block.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "devices/cmos.h"
#include "devices/platform.h"

#define NS 1000000000ll

/* ---- recorders ---- */

struct events {
    unsigned resets, poweroffs, panics;
    uint8_t panic_value;
    bool level;
    unsigned level_calls;
    uint32_t gsi;
};

static void on_reset(void *ctx)
{
    ((struct events *)ctx)->resets++;
}

static void on_poweroff(void *ctx)
{
    ((struct events *)ctx)->poweroffs++;
}

static void on_panic(void *ctx, uint8_t value)
{
    struct events *e = ctx;
    e->panics++;
    e->panic_value = value;
}

static void on_level(void *ctx, uint32_t gsi, bool level)
{
    struct events *e = ctx;
    e->level = level;
    e->level_calls++;
    e->gsi = gsi;
}

/* A settable clock for the RTC (realtime ns) and the PM timer (monotonic ns). */
static int64_t fake_realtime;
static uint64_t fake_monotonic;

static int64_t fake_realtime_ns(void *ctx)
{
    (void)ctx;
    return fake_realtime;
}

static uint64_t fake_monotonic_ns(void *ctx)
{
    (void)ctx;
    return fake_monotonic;
}

/* Sets the fake wall clock to a UTC date plus `frac_ns`. */
static void set_fake_time(int year, int mon, int mday, int hour, int min, int sec, int64_t frac_ns)
{
    struct tm tm = {.tm_year = year - 1900,
                    .tm_mon = mon - 1,
                    .tm_mday = mday,
                    .tm_hour = hour,
                    .tm_min = min,
                    .tm_sec = sec};
    fake_realtime = (int64_t)timegm(&tm) * NS + frac_ns;
}

/* ---- CMOS helpers ---- */

static void cmos_setup(struct cmos *c, bool fake_clock)
{
    struct cmos_config cfg = {.clock_ns = fake_clock ? fake_realtime_ns : NULL};
    assert_int_equal(cmos_init(c, &cfg), 0);
}

static uint8_t cmos_rd(struct cmos *c, uint8_t idx)
{
    cmos_io_ops.write(c, 0, 1, idx);
    return (uint8_t)cmos_io_ops.read(c, 1, 1);
}

static void cmos_wr(struct cmos *c, uint8_t idx, uint8_t v)
{
    cmos_io_ops.write(c, 0, 1, idx);
    cmos_io_ops.write(c, 1, 1, v);
}

static unsigned from_bcd(uint8_t v)
{
    assert_true((v >> 4) <= 9 && (v & 0xf) <= 9);
    return (v >> 4) * 10 + (v & 0xf);
}

static uint8_t to_bcd(unsigned v)
{
    return (uint8_t)((v / 10) << 4 | (v % 10));
}

/* The RTC's date and time as a struct tm (24-hour mode), in BCD or binary. */
static struct tm cmos_read_tm(struct cmos *c, bool bcd)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    for (;;) { /* read twice around the seconds, like Linux, to skip a tick */
        uint8_t s0 = cmos_rd(c, 0x00);
        uint8_t raw[10], century = cmos_rd(c, CMOS_REG_CENTURY);
        for (uint8_t i = 0; i < 10; i++)
            raw[i] = cmos_rd(c, i);
        if (s0 != cmos_rd(c, 0x00) || raw[0] != s0)
            continue;
        unsigned v[10], cent;
        for (int i = 0; i < 10; i++)
            v[i] = bcd ? from_bcd(raw[i]) : raw[i];
        cent = bcd ? from_bcd(century) : century;
        tm.tm_sec = (int)v[0];
        tm.tm_min = (int)v[2];
        tm.tm_hour = (int)v[4];
        tm.tm_wday = (int)v[6] - 1;
        tm.tm_mday = (int)v[7];
        tm.tm_mon = (int)v[8] - 1;
        tm.tm_year = (int)(cent * 100 + v[9]) - 1900;
        return tm;
    }
}

static void assert_tm_near_now(struct tm tm)
{
    int wday = tm.tm_wday;
    time_t rtc = timegm(&tm);
    time_t now = time(NULL);
    assert_true(rtc <= now && now - rtc <= 1);
    struct tm g;
    gmtime_r(&rtc, &g);
    assert_int_equal(wday, g.tm_wday);
}

/* ---- CMOS / RTC ---- */

static void test_cmos_time_matches_host(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, false);
    assert_int_equal(cmos_rd(&c, CMOS_REG_B), 0x02); /* 24-hour BCD, as SeaBIOS sets */
    assert_tm_near_now(cmos_read_tm(&c, true));

    cmos_wr(&c, CMOS_REG_B, 0x06); /* binary */
    assert_tm_near_now(cmos_read_tm(&c, false));
    cmos_destroy(&c);
}

static void test_cmos_12_hour_mode(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    cmos_wr(&c, CMOS_REG_B, 0x00); /* 12-hour BCD */
    set_fake_time(2024, 3, 10, 13, 5, 9, 0);
    assert_int_equal(cmos_rd(&c, 0x04), 0x81); /* 1 PM */
    assert_int_equal(cmos_rd(&c, 0x06), 1);    /* a Sunday */
    set_fake_time(2024, 3, 10, 0, 30, 0, 0);
    assert_int_equal(cmos_rd(&c, 0x04), 0x12); /* 12 AM */
    set_fake_time(2024, 3, 10, 12, 0, 0, 0);
    assert_int_equal(cmos_rd(&c, 0x04), 0x92); /* 12 PM */
    set_fake_time(2024, 3, 10, 23, 0, 0, 0);
    cmos_wr(&c, CMOS_REG_B, 0x04); /* 12-hour binary */
    assert_int_equal(cmos_rd(&c, 0x04), 0x80 | 11);
    cmos_wr(&c, CMOS_REG_B, 0x06); /* 24-hour binary */
    assert_int_equal(cmos_rd(&c, 0x04), 23);
    assert_int_equal(cmos_rd(&c, 0x09), 24);
    assert_int_equal(cmos_rd(&c, CMOS_REG_CENTURY), 20);
    cmos_destroy(&c);
}

/* Sets the clock the way Linux's mc146818_set_time() does. */
static void guest_set_time_bcd(struct cmos *c, unsigned cent, unsigned yy, unsigned mon,
                               unsigned mday, uint8_t hour_raw, unsigned min, unsigned sec)
{
    uint8_t b = cmos_rd(c, CMOS_REG_B);
    cmos_wr(c, CMOS_REG_B, b | 0x80);
    uint8_t a = cmos_rd(c, CMOS_REG_A);
    cmos_wr(c, CMOS_REG_A, a | 0x70); /* divider reset while setting */
    cmos_wr(c, 0x09, to_bcd(yy));
    cmos_wr(c, 0x08, to_bcd(mon));
    cmos_wr(c, 0x07, to_bcd(mday));
    cmos_wr(c, 0x04, hour_raw);
    cmos_wr(c, 0x02, to_bcd(min));
    cmos_wr(c, 0x00, to_bcd(sec));
    cmos_wr(c, CMOS_REG_CENTURY, to_bcd(cent));
    cmos_wr(c, CMOS_REG_B, b);
    cmos_wr(c, CMOS_REG_A, a);
}

static void test_cmos_guest_sets_time(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    set_fake_time(2024, 1, 1, 0, 0, 0, 300000000);
    guest_set_time_bcd(&c, 20, 30, 6, 15, 0x10, 20, 30);
    assert_int_equal(cmos_rd(&c, 0x00), 0x30);
    assert_int_equal(cmos_rd(&c, 0x02), 0x20);
    assert_int_equal(cmos_rd(&c, 0x04), 0x10);
    assert_int_equal(cmos_rd(&c, 0x07), 0x15);
    assert_int_equal(cmos_rd(&c, 0x08), 0x06);
    assert_int_equal(cmos_rd(&c, 0x09), 0x30);
    assert_int_equal(cmos_rd(&c, 0x06), 0x07); /* 2030-06-15 is a Saturday */

    fake_realtime += 95 * NS; /* the guest clock runs on */
    assert_int_equal(cmos_rd(&c, 0x00), 0x05);
    assert_int_equal(cmos_rd(&c, 0x02), 0x22);

    /* While SET is on, the registers hold what the guest wrote. */
    cmos_wr(&c, CMOS_REG_B, 0x82);
    fake_realtime += 10 * NS;
    assert_int_equal(cmos_rd(&c, 0x00), 0x05);
    assert_int_equal(cmos_rd(&c, CMOS_REG_B), 0x82);
    cmos_wr(&c, CMOS_REG_B, 0x02);
    assert_int_equal(cmos_rd(&c, 0x00), 0x05); /* the frozen time resumes */

    /* A single register written without SET takes effect at once. */
    cmos_wr(&c, 0x02, 0x45);
    assert_int_equal(cmos_rd(&c, 0x02), 0x45);
    assert_int_equal(cmos_rd(&c, 0x04), 0x10);

    /* An impossible date is refused and the clock keeps its offset. */
    guest_set_time_bcd(&c, 20, 31, 13, 1, 0x00, 0, 0);
    assert_int_equal(cmos_rd(&c, 0x09), 0x30);
    assert_int_equal(cmos_rd(&c, 0x08), 0x06);
    cmos_wr(&c, CMOS_REG_B, 0x82);
    cmos_wr(&c, 0x00, 0x5a); /* not BCD */
    cmos_wr(&c, CMOS_REG_B, 0x02);
    assert_int_equal(cmos_rd(&c, 0x07), 0x15);

    /* 12-hour mode: 11 PM written with the PM flag. */
    cmos_wr(&c, CMOS_REG_B, 0x00);
    guest_set_time_bcd(&c, 19, 99, 12, 31, 0x80 | 0x11, 59, 50);
    cmos_wr(&c, CMOS_REG_B, 0x02);
    assert_int_equal(cmos_rd(&c, 0x04), 0x23);
    assert_int_equal(cmos_rd(&c, CMOS_REG_CENTURY), 0x19);
    fake_realtime += 10 * NS; /* into the new millennium */
    assert_int_equal(cmos_rd(&c, 0x09), 0x00);
    assert_int_equal(cmos_rd(&c, CMOS_REG_CENTURY), 0x20);
    assert_int_equal(cmos_rd(&c, 0x08), 0x01);

    /* 12 AM is hour 0 and 12 PM is hour 12. */
    cmos_wr(&c, CMOS_REG_B, 0x00);
    guest_set_time_bcd(&c, 20, 25, 1, 1, 0x12, 0, 0);
    cmos_wr(&c, CMOS_REG_B, 0x02);
    assert_int_equal(cmos_rd(&c, 0x04), 0x00);
    cmos_wr(&c, CMOS_REG_B, 0x00);
    guest_set_time_bcd(&c, 20, 25, 1, 1, 0x80 | 0x12, 0, 0);
    cmos_wr(&c, CMOS_REG_B, 0x02);
    assert_int_equal(cmos_rd(&c, 0x04), 0x12);
    cmos_destroy(&c);
}

/* Without a usable century byte the year is read as Linux does: < 70 is 20xx. */
static void test_cmos_century_fallback(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    set_fake_time(2024, 1, 1, 0, 0, 0, 0);
    guest_set_time_bcd(&c, 0, 99, 3, 1, 0x00, 0, 0);
    assert_int_equal(cmos_rd(&c, CMOS_REG_CENTURY), 0x19);
    assert_int_equal(cmos_rd(&c, 0x09), 0x99);
    guest_set_time_bcd(&c, 0, 5, 3, 1, 0x00, 0, 0);
    assert_int_equal(cmos_rd(&c, CMOS_REG_CENTURY), 0x20);
    assert_int_equal(cmos_rd(&c, 0x09), 0x05);

    /* Setting SET clears UIE (MC146818 datasheet). */
    cmos_wr(&c, CMOS_REG_B, 0x80 | 0x10 | 0x02);
    assert_int_equal(cmos_rd(&c, CMOS_REG_B), 0x82);
    cmos_wr(&c, CMOS_REG_B, 0x10 | 0x02);
    assert_int_equal(cmos_rd(&c, CMOS_REG_B), 0x12);
    cmos_destroy(&c);
}

static void test_cmos_guest_sets_time_real_clock(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, false);
    guest_set_time_bcd(&c, 20, 41, 2, 28, 0x08, 15, 0);
    struct tm tm = cmos_read_tm(&c, true);
    assert_int_equal(tm.tm_year, 2041 - 1900);
    assert_int_equal(tm.tm_mon, 1);
    assert_int_equal(tm.tm_mday, 28);
    assert_int_equal(tm.tm_hour, 8);
    assert_int_equal(tm.tm_min, 15);
    assert_true(tm.tm_sec <= 1);
    cmos_destroy(&c);
}

static void test_cmos_uip(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    set_fake_time(2024, 5, 5, 5, 5, 5, 500000000);
    assert_int_equal(cmos_rd(&c, CMOS_REG_A), 0x26);
    set_fake_time(2024, 5, 5, 5, 5, 5, 999900000); /* 100 us before the tick */
    assert_int_equal(cmos_rd(&c, CMOS_REG_A), 0x80 | 0x26);
    set_fake_time(2024, 5, 5, 5, 5, 5, 999700000); /* 300 us before */
    assert_int_equal(cmos_rd(&c, CMOS_REG_A), 0x26);
    set_fake_time(2024, 5, 5, 5, 5, 5, 999900000);
    cmos_wr(&c, CMOS_REG_B, 0x82); /* no updates while SET */
    assert_int_equal(cmos_rd(&c, CMOS_REG_A), 0x26);
    cmos_wr(&c, CMOS_REG_B, 0x02);
    cmos_wr(&c, CMOS_REG_A, 0xf6); /* divider held in reset; UIP is read-only */
    assert_int_equal(cmos_rd(&c, CMOS_REG_A), 0x76);
    cmos_destroy(&c);
}

static void test_cmos_registers_and_ram(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    assert_int_equal(cmos_rd(&c, CMOS_REG_D), 0x80); /* valid RAM and time */
    assert_int_equal(cmos_rd(&c, CMOS_REG_C), 0x00);
    cmos_wr(&c, CMOS_REG_C, 0xff);
    cmos_wr(&c, CMOS_REG_D, 0x00);
    assert_int_equal(cmos_rd(&c, CMOS_REG_C), 0x00);
    assert_int_equal(cmos_rd(&c, CMOS_REG_D), 0x80);

    cmos_wr(&c, 0x40, 0xa5);
    cmos_wr(&c, 0x7f, 0x5a);
    cmos_wr(&c, 0x01, 0x33); /* alarm seconds: plain storage */
    assert_int_equal(cmos_rd(&c, 0x40), 0xa5);
    assert_int_equal(cmos_rd(&c, 0x7f), 0x5a);
    assert_int_equal(cmos_rd(&c, 0x01), 0x33);
    assert_int_equal(cmos_rd(&c, 0x80 | 0x40), 0xa5); /* bit 7 is the NMI mask */

    struct cmos_state s;
    cmos_save(&c, &s);
    assert_int_equal(s.nmi_masked, 1);
    cmos_io_ops.write(&c, 0, 1, 0x0f);
    cmos_save(&c, &s);
    assert_int_equal(s.nmi_masked, 0);
    assert_int_equal(cmos_io_ops.read(&c, 0, 1), 0xff); /* index is write-only */
    assert_int_equal(cmos_io_ops.read(&c, 2, 1), 0xff); /* beyond the two ports */

    /* A 16-bit access is two byte accesses: index, then data. */
    cmos_io_ops.write(&c, 0, 2, 0x7740);
    assert_int_equal(cmos_rd(&c, 0x40), 0x77);
    assert_int_equal(cmos_io_ops.read(&c, 0, 2), 0x77ff);
    assert_int_equal(cmos_io_ops.read(&c, UINT64_MAX, 2), 0xffff);

    /* Reset drops interrupt enables, keeps RAM and format. */
    cmos_wr(&c, CMOS_REG_B, 0x02 | 0x40 | 0x20 | 0x08);
    cmos_reset(&c);
    assert_int_equal(cmos_rd(&c, CMOS_REG_B), 0x02);
    assert_int_equal(cmos_rd(&c, 0x40), 0x77);
    cmos_destroy(&c);
}

static uint16_t cmos_rd16(struct cmos *c, uint8_t idx)
{
    return (uint16_t)(cmos_rd(c, idx) | cmos_rd(c, idx + 1) << 8);
}

static uint32_t cmos_rd24(struct cmos *c, uint8_t idx)
{
    return (uint32_t)cmos_rd16(c, idx) | (uint32_t)cmos_rd(c, idx + 2) << 16;
}

static void test_cmos_memory_fields(void **state)
{
    (void)state;
    const uint64_t mib = 1ull << 20, gib = 1ull << 30;
    struct cmos c;
    cmos_setup(&c, true);
    assert_int_equal(cmos_rd16(&c, 0x15), 640);

    cmos_set_memory(&c, 512 * mib, 0);
    assert_int_equal(cmos_rd16(&c, 0x15), 640);
    assert_int_equal(cmos_rd16(&c, 0x17), 0xffff); /* 511 MiB in KiB: saturated */
    assert_int_equal(cmos_rd16(&c, 0x30), 0xffff);
    assert_int_equal(cmos_rd16(&c, 0x34), (512 - 16) * 16);
    assert_int_equal(cmos_rd24(&c, 0x5b), 0);

    /* 3.5 GiB as the machine lays it out: 3 GiB below the hole, 0.5 above 4 GiB. */
    cmos_set_memory(&c, 3 * gib, 512 * mib);
    assert_int_equal(cmos_rd16(&c, 0x34), 0xbf00);
    assert_int_equal(cmos_rd24(&c, 0x5b), 0x2000);
    assert_int_equal(cmos_rd(&c, 0x5c), 0x20);
    /* ... and 3.5 GiB all below 4 GiB, the most 0x34/0x35 describes in practice. */
    cmos_set_memory(&c, 3 * gib + 512 * mib, 0);
    assert_int_equal(cmos_rd16(&c, 0x34), 0xdf00);
    assert_int_equal(cmos_rd24(&c, 0x5b), 0);

    cmos_set_memory(&c, 3 * gib, 3 * gib); /* 6 GiB */
    assert_int_equal(cmos_rd16(&c, 0x30), 0xffff);
    assert_int_equal(cmos_rd16(&c, 0x34), 0xbf00);
    assert_int_equal(cmos_rd24(&c, 0x5b), 0xc000);

    cmos_set_memory(&c, 8 * mib, 2048 * gib); /* small low RAM, saturated high */
    assert_int_equal(cmos_rd16(&c, 0x30), 7 * 1024);
    assert_int_equal(cmos_rd16(&c, 0x17), 7 * 1024);
    assert_int_equal(cmos_rd16(&c, 0x34), 0);
    assert_int_equal(cmos_rd24(&c, 0x5b), 0xffffff);
    cmos_destroy(&c);
}

static void test_cmos_cpus(void **state)
{
    (void)state;
    struct cmos c;
    cmos_setup(&c, true);
    assert_int_equal(cmos_rd(&c, 0x5f), 0);
    cmos_set_cpus(&c, 4);
    assert_int_equal(cmos_rd(&c, 0x5f), 3);
    cmos_set_cpus(&c, 256);
    assert_int_equal(cmos_rd(&c, 0x5f), 255);
    cmos_set_cpus(&c, 1000);
    assert_int_equal(cmos_rd(&c, 0x5f), 255);
    cmos_set_cpus(&c, 0);
    assert_int_equal(cmos_rd(&c, 0x5f), 0);
    cmos_destroy(&c);
}

static void test_cmos_save_restore(void **state)
{
    (void)state;
    struct cmos a, b;
    cmos_setup(&a, true);
    cmos_setup(&b, true);
    set_fake_time(2024, 1, 1, 0, 0, 0, 0);
    guest_set_time_bcd(&a, 20, 35, 7, 4, 0x12, 0, 0);
    cmos_wr(&a, 0x50, 0x99);
    cmos_set_cpus(&a, 8);

    struct cmos_state s, again;
    cmos_save(&a, &s);
    assert_int_equal(cmos_restore(&b, &s), 0);
    cmos_save(&b, &again);
    assert_memory_equal(&s, &again, sizeof(s));
    fake_realtime += 3 * NS;
    assert_int_equal(cmos_rd(&b, 0x09), 0x35);
    assert_int_equal(cmos_rd(&b, 0x00), 0x03);
    assert_int_equal(cmos_rd(&b, 0x50), 0x99);
    assert_int_equal(cmos_rd(&b, 0x5f), 7);

    struct cmos_state bad = s;
    bad.index = 0x80;
    assert_int_equal(cmos_restore(&b, &bad), -EINVAL);
    bad = s;
    bad.ram[CMOS_REG_D] = 0;
    assert_int_equal(cmos_restore(&b, &bad), -EINVAL);
    bad = s;
    bad.offset_s = INT64_MAX;
    assert_int_equal(cmos_restore(&b, &bad), -EINVAL);
    cmos_destroy(&a);
    cmos_destroy(&b);
}

/* ---- reset control, i8042, pvpanic ---- */

static void test_cf9_reset(void **state)
{
    (void)state;
    struct events e = {0};
    struct cf9 r;
    cf9_init(&r, on_reset, &e);
    assert_int_equal(cf9_io_ops.read(&r, 0, 1), 0);
    cf9_io_ops.write(&r, 0, 1, 0x02); /* Linux's "prepare" write */
    assert_int_equal(e.resets, 0);
    assert_int_equal(cf9_io_ops.read(&r, 0, 1), 0x02);
    cf9_io_ops.write(&r, 0, 1, CF9_RESET_VALUE);
    assert_int_equal(e.resets, 1);
    assert_int_equal(cf9_io_ops.read(&r, 0, 1), 0x06);
    cf9_io_ops.write(&r, 0, 1, 0x0e); /* full reset */
    assert_int_equal(e.resets, 2);
    cf9_io_ops.write(&r, 0, 4, 0x06); /* not a byte access: ignored */
    assert_int_equal(e.resets, 2);
    assert_int_equal(cf9_io_ops.read(&r, 0, 2), 0xffff);
    cf9_reset(&r);
    assert_int_equal(cf9_io_ops.read(&r, 0, 1), 0);
}

static void test_i8042(void **state)
{
    (void)state;
    struct events e = {0};
    struct i8042 k;
    i8042_init(&k, on_reset, &e);

    /* Linux's kb_wait(): the input buffer is empty at once. */
    assert_int_equal(i8042_cmd_ops.read(&k, 0, 1) & 0x02, 0);
    /* Linux's i8042_flush(): OBF never drains, so it gives up after 16 reads. */
    unsigned reads = 0;
    while ((i8042_cmd_ops.read(&k, 0, 1) & 0x01) && reads <= 16) {
        assert_int_equal(i8042_data_ops.read(&k, 0, 1), 0);
        reads++;
    }
    assert_int_equal(reads, 17);

    i8042_cmd_ops.write(&k, 0, 1, 0xaa); /* self-test, read CTR: ignored */
    i8042_cmd_ops.write(&k, 0, 1, 0x20);
    i8042_cmd_ops.write(&k, 0, 1, 0xff); /* pulse nothing */
    assert_int_equal(e.resets, 0);
    i8042_cmd_ops.write(&k, 0, 1, 0xfe);
    assert_int_equal(e.resets, 1);
    i8042_cmd_ops.write(&k, 0, 1, 0xf0); /* pulses every line, reset included */
    assert_int_equal(e.resets, 2);

    /* Write output port: bit 0 low resets, bit 0 high (A20 on) does not. */
    i8042_cmd_ops.write(&k, 0, 1, 0xd1);
    i8042_data_ops.write(&k, 0, 1, 0xdf);
    assert_int_equal(e.resets, 2);
    i8042_cmd_ops.write(&k, 0, 1, 0xd1);
    i8042_data_ops.write(&k, 0, 1, 0xde);
    assert_int_equal(e.resets, 3);
    i8042_data_ops.write(&k, 0, 1, 0xde); /* keyboard data, no command: nothing */
    i8042_cmd_ops.write(&k, 0, 1, 0x60);  /* write CTR takes the next data byte */
    i8042_data_ops.write(&k, 0, 1, 0x00);
    i8042_cmd_ops.write(&k, 0, 1, 0xd1);
    i8042_reset(&k);
    i8042_data_ops.write(&k, 0, 1, 0x00);
    assert_int_equal(e.resets, 3);
    assert_int_equal(i8042_data_ops.read(&k, 1, 1), 0xff);
}

static void test_pvpanic(void **state)
{
    (void)state;
    struct events e = {0};
    struct pvpanic p;
    pvpanic_init(&p, on_panic, &e);
    assert_int_equal(pvpanic_io_ops.read(&p, 0, 1), 0x03);
    pvpanic_io_ops.write(&p, 0, 1, PVPANIC_PANICKED);
    assert_int_equal(e.panics, 1);
    assert_int_equal(e.panic_value, PVPANIC_PANICKED);
    pvpanic_io_ops.write(&p, 0, 1, PVPANIC_CRASH_LOADED);
    assert_int_equal(e.panics, 2);
    assert_int_equal(e.panic_value, PVPANIC_CRASH_LOADED);
    pvpanic_io_ops.write(&p, 0, 1, 0x81); /* unknown bit dropped, known one kept */
    assert_int_equal(e.panics, 3);
    assert_int_equal(e.panic_value, PVPANIC_PANICKED);
    pvpanic_io_ops.write(&p, 0, 1, 0x80);
    pvpanic_io_ops.write(&p, 0, 1, 0x00);
    pvpanic_io_ops.write(&p, 1, 1, 0x01);
    assert_int_equal(e.panics, 3);
}

static void test_post_ports(void **state)
{
    (void)state;
    post_io_ops.write(NULL, 0, 1, 0x55);
    post_io_ops.write(NULL, 0, 4, 0xdeadbeef);
    assert_int_equal(post_io_ops.read(NULL, 0, 1), 0xff);
    assert_int_equal(post_io_ops.read(NULL, 0, 4), 0xffffffff);
}

/* ---- ACPI PM block ---- */

struct pm_fixture {
    struct pm pm;
    struct irq_sink sink;
    struct events e;
};

static int pm_setup(void **state)
{
    struct pm_fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->sink = (struct irq_sink){.ctx = &f->e, .set_level = on_level};
    struct pm_config cfg = {
        .sci = {.sink = &f->sink, .gsi = PM_SCI_IRQ},
        .poweroff = on_poweroff,
        .ctx = &f->e,
        .clock_ns = fake_monotonic_ns,
    };
    assert_int_equal(pm_init(&f->pm, &cfg), 0);
    *state = f;
    return 0;
}

static int pm_teardown(void **state)
{
    struct pm_fixture *f = *state;
    pm_destroy(&f->pm);
    free(f);
    return 0;
}

static uint64_t pm_rd(struct pm_fixture *f, uint16_t port, unsigned size)
{
    return pm_io_ops.read(&f->pm, port - PM_IO_BASE, size);
}

static void pm_wr(struct pm_fixture *f, uint16_t port, unsigned size, uint64_t v)
{
    pm_io_ops.write(&f->pm, port - PM_IO_BASE, size, v);
}

static void test_pm_timer(void **state)
{
    struct pm_fixture *f = *state;
    fake_monotonic = 0;
    assert_int_equal(pm_rd(f, PM_TMR_BLK, 4), 0);
    fake_monotonic = 1000000000ull;
    assert_int_equal(pm_rd(f, PM_TMR_BLK, 4), PM_TMR_FREQ);
    assert_int_equal(pm_rd(f, PM_TMR_BLK + 1, 1), (PM_TMR_FREQ >> 8) & 0xff);
    assert_int_equal(pm_rd(f, PM_TMR_BLK + 3, 1), 0); /* 24 bits only */

    /* Monotonic between wraps, 24 bits always, and it wraps every ~4.69 s. */
    uint32_t prev = (uint32_t)pm_rd(f, PM_TMR_BLK, 4);
    unsigned wraps = 0;
    for (unsigned i = 0; i < 2000; i++) {
        fake_monotonic += 7919000; /* ~7.9 ms */
        uint32_t now = (uint32_t)pm_rd(f, PM_TMR_BLK, 4);
        assert_true(now < (1u << 24));
        if (now < prev)
            wraps++;
        else
            assert_true(now - prev >= 28000 && now - prev <= 28400);
        prev = now;
    }
    assert_int_equal(wraps, 3); /* 15.8 s from 1 s */

    /* Exactly 2^24 ticks after zero reads zero again. */
    fake_monotonic = (uint64_t)((1ull << 24) * 1000000000ull + PM_TMR_FREQ - 1) / PM_TMR_FREQ;
    assert_int_equal(pm_rd(f, PM_TMR_BLK, 4), 0);
    fake_monotonic = 1ull << 62; /* no overflow far into the future */
    assert_true(pm_rd(f, PM_TMR_BLK, 4) < (1u << 24));
    pm_wr(f, PM_TMR_BLK, 4, 0); /* read-only */
}

static void test_pm_s5_poweroff(void **state)
{
    struct pm_fixture *f = *state;
    assert_int_equal(pm_rd(f, PM1A_CNT_BLK, 2), PM1_CNT_SCI_EN); /* SCI_EN hardwired */
    pm_wr(f, PM1A_CNT_BLK, 2, 0);                                /* cannot clear SCI_EN */
    assert_int_equal(pm_rd(f, PM1A_CNT_BLK, 2), PM1_CNT_SCI_EN);

    /* ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN. */
    uint16_t typ = PM_SLP_TYP_S5 << PM1_CNT_SLP_TYP_SHIFT;
    pm_wr(f, PM1A_CNT_BLK, 2, typ | PM1_CNT_SCI_EN);
    assert_int_equal(f->e.poweroffs, 0);
    pm_wr(f, PM1A_CNT_BLK, 2, typ | PM1_CNT_SLP_EN | PM1_CNT_SCI_EN);
    assert_int_equal(f->e.poweroffs, 1);

    /* Other sleep types do not power off; they wake at once. */
    for (unsigned t = 0; t < 8; t++) {
        if (t == PM_SLP_TYP_S5)
            continue;
        pm_wr(f, PM1A_EVT_BLK, 2, PM1_STS_WAK);
        uint16_t v = (uint16_t)(t << PM1_CNT_SLP_TYP_SHIFT);
        pm_wr(f, PM1A_CNT_BLK, 2, v | PM1_CNT_SLP_EN);
        assert_int_equal(f->e.poweroffs, 1);
        assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 2) & PM1_STS_WAK, PM1_STS_WAK);
        /* SLP_EN reads as 0; SLP_TYP reads back. */
        assert_int_equal(pm_rd(f, PM1A_CNT_BLK, 2), v | PM1_CNT_SCI_EN);
    }

    /* Byte-wide writes: SLP_TYP and SLP_EN share the high byte. */
    pm_wr(f, PM1A_CNT_BLK, 1, 0x00);
    pm_wr(f, PM1A_CNT_BLK + 1, 1, (typ | PM1_CNT_SLP_EN) >> 8);
    assert_int_equal(f->e.poweroffs, 2);
}

static void test_pm1_status_write_one_to_clear(void **state)
{
    struct pm_fixture *f = *state;
    pm_press_power_button(&f->pm);
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 2), PM1_STS_PWRBTN);
    pm_wr(f, PM1A_EVT_BLK, 2, 0); /* zeros change nothing */
    pm_wr(f, PM1A_EVT_BLK, 2, PM1_STS_WAK);
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 2), PM1_STS_PWRBTN);
    pm_wr(f, PM1A_EVT_BLK, 2, PM1_STS_PWRBTN);
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 2), 0);

    pm_press_power_button(&f->pm);
    pm_wr(f, PM1A_EVT_BLK + 1, 1, PM1_STS_PWRBTN >> 8); /* byte lane 1 */
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 2), 0);

    /* A 32-bit write covers status and enable: clear one, set the other. */
    pm_press_power_button(&f->pm);
    pm_wr(f, PM1A_EVT_BLK, 4, (uint32_t)PM1_EN_PWRBTN << 16 | PM1_STS_PWRBTN);
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 4), (uint32_t)PM1_EN_PWRBTN << 16);
    pm_wr(f, PM1A_EVT_BLK + 2, 2, 0xffff); /* reserved enable bits stay 0 */
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK + 2, 2), 0x4721);
}

static void test_pm_power_button_sci(void **state)
{
    struct pm_fixture *f = *state;
    pm_press_power_button(&f->pm); /* not enabled: status only */
    assert_int_equal(f->e.level_calls, 0);
    pm_wr(f, PM1A_EVT_BLK, 2, PM1_STS_PWRBTN);

    pm_wr(f, PM1A_EVT_BLK + 2, 2, PM1_EN_PWRBTN); /* what Linux's ACPI button does */
    assert_int_equal(f->e.level_calls, 0);
    pm_press_power_button(&f->pm);
    assert_true(f->e.level);
    assert_int_equal(f->e.gsi, 9);
    assert_int_equal(f->e.level_calls, 1);
    pm_press_power_button(&f->pm); /* still pending: no new call */
    assert_int_equal(f->e.level_calls, 1);
    pm_wr(f, PM1A_EVT_BLK, 2, PM1_STS_PWRBTN);
    assert_false(f->e.level);

    /* Enabling with the status already set raises the line; disabling lowers it. */
    pm_wr(f, PM1A_EVT_BLK + 2, 2, 0);
    pm_press_power_button(&f->pm);
    assert_false(f->e.level);
    pm_wr(f, PM1A_EVT_BLK + 2, 2, PM1_EN_PWRBTN);
    assert_true(f->e.level);
    pm_wr(f, PM1A_EVT_BLK + 2, 2, 0);
    assert_false(f->e.level);

    pm_wr(f, PM1A_EVT_BLK + 2, 2, PM1_EN_PWRBTN);
    assert_true(f->e.level);
    pm_reset(&f->pm);
    assert_false(f->e.level);
    assert_int_equal(pm_rd(f, PM1A_EVT_BLK, 4), 0);
}

static void test_pm_gpe0_and_holes(void **state)
{
    struct pm_fixture *f = *state;
    pm_wr(f, GPE0_BLK + 2, 2, 0x1234);
    assert_int_equal(pm_rd(f, GPE0_BLK, 4), 0x12340000);
    pm_wr(f, GPE0_BLK, 2, 0xffff); /* nothing to clear */
    assert_int_equal(pm_rd(f, GPE0_BLK, 2), 0);
    assert_int_equal(f->e.level_calls, 0);
    assert_int_equal(pm_rd(f, PM_IO_BASE + 0x0c, 4), 0xffffffff);
    assert_int_equal(pm_rd(f, PM_IO_BASE + 0x22, 4), 0xffff1234); /* runs off the end */
    pm_io_ops.write(&f->pm, UINT64_MAX, 4, 0xffffffff);
    assert_int_equal(pm_io_ops.read(&f->pm, UINT64_MAX - 1, 8), ~0ull);
    assert_int_equal(pm_rd(f, GPE0_BLK + 2, 2), 0x1234);
}

static void test_pm_save_restore(void **state)
{
    struct pm_fixture *f = *state;
    pm_wr(f, PM1A_EVT_BLK + 2, 2, PM1_EN_PWRBTN);
    pm_press_power_button(&f->pm);
    pm_wr(f, PM1A_CNT_BLK, 2, 5 << PM1_CNT_SLP_TYP_SHIFT | 0x0002);
    pm_wr(f, GPE0_BLK + 2, 2, 0x0003);
    struct pm_state s;
    pm_save(&f->pm, &s);

    void *other = NULL;
    pm_setup(&other);
    struct pm_fixture *g = other;
    assert_int_equal(pm_restore(&g->pm, &s), 0);
    assert_true(g->e.level); /* the pending power button carries over */
    assert_int_equal(pm_rd(g, PM1A_EVT_BLK, 4), pm_rd(f, PM1A_EVT_BLK, 4));
    assert_int_equal(pm_rd(g, PM1A_CNT_BLK, 2), pm_rd(f, PM1A_CNT_BLK, 2));
    assert_int_equal(pm_rd(g, GPE0_BLK, 4), 0x00030000);

    struct pm_state bad = s;
    bad.pm1_en = 0x8000;
    assert_int_equal(pm_restore(&g->pm, &bad), -EINVAL);
    bad = s;
    bad.pm1_cnt = PM1_CNT_SLP_EN;
    assert_int_equal(pm_restore(&g->pm, &bad), -EINVAL);
    pm_teardown(&other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmos_time_matches_host),
        cmocka_unit_test(test_cmos_12_hour_mode),
        cmocka_unit_test(test_cmos_guest_sets_time),
        cmocka_unit_test(test_cmos_century_fallback),
        cmocka_unit_test(test_cmos_guest_sets_time_real_clock),
        cmocka_unit_test(test_cmos_uip),
        cmocka_unit_test(test_cmos_registers_and_ram),
        cmocka_unit_test(test_cmos_memory_fields),
        cmocka_unit_test(test_cmos_cpus),
        cmocka_unit_test(test_cmos_save_restore),
        cmocka_unit_test(test_cf9_reset),
        cmocka_unit_test(test_i8042),
        cmocka_unit_test(test_pvpanic),
        cmocka_unit_test(test_post_ports),
        cmocka_unit_test_setup_teardown(test_pm_timer, pm_setup, pm_teardown),
        cmocka_unit_test_setup_teardown(test_pm_s5_poweroff, pm_setup, pm_teardown),
        cmocka_unit_test_setup_teardown(test_pm1_status_write_one_to_clear, pm_setup, pm_teardown),
        cmocka_unit_test_setup_teardown(test_pm_power_button_sci, pm_setup, pm_teardown),
        cmocka_unit_test_setup_teardown(test_pm_gpe0_and_holes, pm_setup, pm_teardown),
        cmocka_unit_test_setup_teardown(test_pm_save_restore, pm_setup, pm_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
