/* SPDX-License-Identifier: MPL-2.0 */
/*
 * CMOS RAM and MC146818 RTC. See cmos.h for the contract.
 *
 * Time keeping: guest time = host UTC seconds + offset_s. While register
 * B's SET bit is clear, reading a time register first re-encodes the
 * current guest time into all of them (in the format register B selects),
 * so the values are consistent within a second. A guest sets the clock the
 * way Linux's mc146818_set_time() does: set SET (which freezes the
 * registers), write them, clear SET; clearing SET turns the registers back
 * into an offset. A write to a time register while SET is clear takes
 * effect at once. Invalid register contents (a BCD digit above 9, month
 * 13, ...) are a guest error and leave the offset unchanged.
 *
 * The offset is whole seconds, so the guest's seconds tick with the
 * host's; the sub-second phase at which the guest set its clock is lost
 * (a difference below one second).
 */
#include "devices/cmos.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#define REG_SEC     0x00
#define REG_SEC_ALM 0x01
#define REG_MIN     0x02
#define REG_MIN_ALM 0x03
#define REG_HOUR    0x04
#define REG_HOUR_AL 0x05
#define REG_WDAY    0x06
#define REG_MDAY    0x07
#define REG_MON     0x08
#define REG_YEAR    0x09

#define A_UIP       0x80
#define A_DV_MASK   0x70
#define A_DV_NORMAL 0x20 /* 32.768 kHz time base, clock running */
#define B_SET       0x80
#define B_UIE       0x10
#define B_INT_MASK  0x78 /* PIE, AIE, UIE, SQWE */
#define B_DM_BINARY 0x04
#define B_24H       0x02
#define D_VRT       0x80
#define HOUR_PM     0x80

/* UIP rises this long before each update (MC146818 datasheet, t_BUC). */
#define UIP_LEAD_NS 244000
#define NS_PER_S    1000000000

/* |offset_s| limit: far beyond year 9999 yet far from int64 overflow. */
#define MAX_OFFSET_S 1000000000000ll

#define KIB 1024ull
#define MIB (1024 * KIB)

/* CMOS RAM fields read by SeaBIOS. */
#define RAM_BASE_MEM      0x15 /* 16-bit, KiB */
#define RAM_EXT_MEM       0x17 /* 16-bit, KiB above 1 MiB */
#define RAM_EXT_MEM2      0x30 /* 16-bit, same value */
#define RAM_MEM_ABOVE_16M 0x34 /* 16-bit, 64 KiB units */
#define RAM_MEM_ABOVE_4G  0x5b /* 24-bit, 64 KiB units */
#define RAM_SMP_COUNT     0x5f /* CPUs - 1 */

static const char DEV[] = "cmos";

/* ---- clock (lock held) ---- */

static int64_t clock_now_ns(const struct cmos *c)
{
    if (c->cfg.clock_ns)
        return c->cfg.clock_ns(c->cfg.clock_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Floor division of ns into seconds and the nanoseconds into that second. */
static void clock_now(const struct cmos *c, int64_t *sec, int64_t *frac)
{
    int64_t ns = clock_now_ns(c);
    *sec = ns / NS_PER_S;
    *frac = ns % NS_PER_S;
    if (*frac < 0) {
        *frac += NS_PER_S;
        (*sec)--;
    }
}

static bool time_frozen(const struct cmos *c)
{
    return c->ram[CMOS_REG_B] & B_SET;
}

static bool is_time_reg(uint8_t idx)
{
    return idx == REG_SEC || idx == REG_MIN || idx == REG_HOUR || idx == REG_WDAY ||
           idx == REG_MDAY || idx == REG_MON || idx == REG_YEAR || idx == CMOS_REG_CENTURY;
}

/* ---- register encoding (lock held) ---- */

static uint8_t encode(const struct cmos *c, unsigned v)
{
    if (c->ram[CMOS_REG_B] & B_DM_BINARY)
        return (uint8_t)v;
    return (uint8_t)(((v / 10) % 10) << 4 | (v % 10));
}

/* Decodes a register in the current format; false for a bad BCD digit. */
static bool decode(const struct cmos *c, uint8_t raw, unsigned *v)
{
    if (c->ram[CMOS_REG_B] & B_DM_BINARY) {
        *v = raw;
        return true;
    }
    if ((raw >> 4) > 9 || (raw & 0xf) > 9)
        return false;
    *v = (raw >> 4) * 10 + (raw & 0xf);
    return true;
}

static uint8_t encode_hour(const struct cmos *c, unsigned hour)
{
    if (c->ram[CMOS_REG_B] & B_24H)
        return encode(c, hour);
    unsigned h12 = hour % 12 ? hour % 12 : 12;
    return encode(c, h12) | (hour >= 12 ? HOUR_PM : 0);
}

static bool decode_hour(const struct cmos *c, uint8_t raw, unsigned *hour)
{
    if (c->ram[CMOS_REG_B] & B_24H)
        return decode(c, raw, hour) && *hour < 24;
    unsigned h12;
    if (!decode(c, (uint8_t)(raw & 0x7f), &h12) || h12 < 1 || h12 > 12)
        return false;
    *hour = h12 % 12 + ((raw & HOUR_PM) ? 12 : 0);
    return true;
}

/* Writes the current guest time into the time registers (SET clear only). */
static void refresh_time(struct cmos *c)
{
    int64_t sec, frac;
    clock_now(c, &sec, &frac);
    time_t t = (time_t)(sec + c->offset_s);
    struct tm tm;
    if (!gmtime_r(&t, &tm))
        return; /* unreachable with a bounded offset; keep the old values */
    unsigned year = (unsigned)tm.tm_year + 1900;
    c->ram[REG_SEC] = encode(c, (unsigned)tm.tm_sec);
    c->ram[REG_MIN] = encode(c, (unsigned)tm.tm_min);
    c->ram[REG_HOUR] = encode_hour(c, (unsigned)tm.tm_hour);
    c->ram[REG_WDAY] = encode(c, (unsigned)tm.tm_wday + 1);
    c->ram[REG_MDAY] = encode(c, (unsigned)tm.tm_mday);
    c->ram[REG_MON] = encode(c, (unsigned)tm.tm_mon + 1);
    c->ram[REG_YEAR] = encode(c, year % 100);
    c->ram[CMOS_REG_CENTURY] = encode(c, year / 100);
}

/* The full year from the year and century registers. */
static unsigned full_year(const struct cmos *c, unsigned yy)
{
    unsigned century;
    if (decode(c, c->ram[CMOS_REG_CENTURY], &century) && century >= 19 && century <= 99)
        return century * 100 + yy;
    return yy < 70 ? 2000 + yy : 1900 + yy; /* what Linux assumes without one */
}

/* Reads the time registers as UTC seconds; false if they are not a date. */
static bool regs_to_time(const struct cmos *c, int64_t *out)
{
    unsigned sec, min, hour, mday, mon, yy;
    if (!decode(c, c->ram[REG_SEC], &sec) || !decode(c, c->ram[REG_MIN], &min) ||
        !decode_hour(c, c->ram[REG_HOUR], &hour) || !decode(c, c->ram[REG_MDAY], &mday) ||
        !decode(c, c->ram[REG_MON], &mon) || !decode(c, c->ram[REG_YEAR], &yy))
        return false;
    if (sec > 59 || min > 59 || mday < 1 || mday > 31 || mon < 1 || mon > 12 || yy > 99)
        return false;
    struct tm tm = {
        .tm_sec = (int)sec,
        .tm_min = (int)min,
        .tm_hour = (int)hour,
        .tm_mday = (int)mday,
        .tm_mon = (int)mon - 1,
        .tm_year = (int)full_year(c, yy) - 1900,
    };
    *out = (int64_t)timegm(&tm);
    return true;
}

/* Turns the time registers into the new offset. */
static void apply_time(struct cmos *c)
{
    int64_t t, sec, frac;
    if (!regs_to_time(c, &t)) {
        guest_error(DEV, "time registers do not hold a valid date; clock unchanged");
        return;
    }
    clock_now(c, &sec, &frac);
    int64_t offset = t - sec;
    if (offset > MAX_OFFSET_S || offset < -MAX_OFFSET_S) {
        guest_error(DEV, "time registers are too far from the host clock; clock unchanged");
        return;
    }
    c->offset_s = offset;
}

/* ---- register access (lock held) ---- */

static uint8_t read_reg_a(const struct cmos *c)
{
    uint8_t a = c->ram[CMOS_REG_A];
    if ((a & A_DV_MASK) != A_DV_NORMAL || time_frozen(c))
        return a;
    int64_t sec, frac;
    clock_now(c, &sec, &frac);
    return frac >= NS_PER_S - UIP_LEAD_NS ? a | A_UIP : a;
}

static uint8_t read_data(struct cmos *c)
{
    uint8_t idx = c->index;
    if (is_time_reg(idx) && !time_frozen(c))
        refresh_time(c);
    if (idx == CMOS_REG_A)
        return read_reg_a(c);
    return c->ram[idx]; /* C stays 0 and D 0x80: see the invariants */
}

static void write_reg_b(struct cmos *c, uint8_t v)
{
    uint8_t old = c->ram[CMOS_REG_B];
    if (!(old & B_SET) && (v & B_SET))
        refresh_time(c); /* freeze the current time, in the old format */
    if (v & B_SET)
        v &= ~B_UIE; /* the datasheet: SET clears UIE */
    c->ram[CMOS_REG_B] = v;
    if ((old & B_SET) && !(v & B_SET))
        apply_time(c);
}

static void write_time_reg(struct cmos *c, uint8_t idx, uint8_t v)
{
    if (time_frozen(c)) {
        c->ram[idx] = v;
        return;
    }
    refresh_time(c);
    c->ram[idx] = v;
    apply_time(c);
}

static void write_data(struct cmos *c, uint8_t v)
{
    uint8_t idx = c->index;
    if (is_time_reg(idx))
        write_time_reg(c, idx, v);
    else if (idx == CMOS_REG_A)
        c->ram[idx] = v & ~A_UIP;
    else if (idx == CMOS_REG_B)
        write_reg_b(c, v);
    else if (idx == CMOS_REG_C || idx == CMOS_REG_D)
        guest_error(DEV, "write 0x%02x to read-only RTC register 0x%02x ignored", v, idx);
    else
        c->ram[idx] = v; /* alarms and RAM */
}

static uint8_t read_port(struct cmos *c, uint64_t port)
{
    if (port == 0)
        return 0xff; /* the index register is write-only */
    if (port == 1)
        return read_data(c);
    guest_error(DEV, "read at offset 0x%llx beyond the CMOS ports", (unsigned long long)port);
    return 0xff;
}

static void write_port(struct cmos *c, uint64_t port, uint8_t v)
{
    if (port == 0) {
        c->index = v & 0x7f;
        c->nmi_masked = v & 0x80;
    } else if (port == 1) {
        write_data(c, v);
    } else {
        guest_error(DEV, "write at offset 0x%llx beyond the CMOS ports", (unsigned long long)port);
    }
}

/* ---- io_ops: wide accesses split into bytes, overflow-safe ---- */

static uint64_t cmos_io_read(void *opaque, uint64_t offset, unsigned size)
{
    struct cmos *c = opaque;
    uint64_t value = 0;
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < size && i < 8; i++) {
        uint64_t port = offset <= CMOS_NPORTS ? offset + i : CMOS_NPORTS;
        value |= (uint64_t)read_port(c, port) << (8 * i);
    }
    pthread_mutex_unlock(&c->lock);
    return value;
}

static void cmos_io_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct cmos *c = opaque;
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < size && i < 8; i++) {
        uint64_t port = offset <= CMOS_NPORTS ? offset + i : CMOS_NPORTS;
        write_port(c, port, (uint8_t)(value >> (8 * i)));
    }
    pthread_mutex_unlock(&c->lock);
}

const struct io_ops cmos_io_ops = {
    .read = cmos_io_read,
    .write = cmos_io_write,
};

/* ---- setup and lifecycle ---- */

static void put16(struct cmos *c, uint8_t reg, uint64_t v)
{
    if (v > 0xffff)
        v = 0xffff;
    c->ram[reg] = (uint8_t)v;
    c->ram[reg + 1] = (uint8_t)(v >> 8);
}

int cmos_init(struct cmos *c, const struct cmos_config *cfg)
{
    memset(c, 0, sizeof(*c));
    int rc = pthread_mutex_init(&c->lock, NULL);
    if (rc)
        return -rc;
    c->cfg = *cfg;
    c->ram[CMOS_REG_A] = 0x26; /* 32.768 kHz, 1024 Hz periodic rate */
    c->ram[CMOS_REG_B] = B_24H;
    c->ram[CMOS_REG_D] = D_VRT;
    put16(c, RAM_BASE_MEM, 640);
    return 0;
}

void cmos_destroy(struct cmos *c)
{
    pthread_mutex_destroy(&c->lock);
}

void cmos_reset(struct cmos *c)
{
    pthread_mutex_lock(&c->lock);
    c->ram[CMOS_REG_B] &= ~B_INT_MASK;
    c->ram[CMOS_REG_C] = 0;
    pthread_mutex_unlock(&c->lock);
}

void cmos_set_memory(struct cmos *c, uint64_t low_bytes, uint64_t high_bytes)
{
    uint64_t ext_kib = low_bytes > MIB ? (low_bytes - MIB) / KIB : 0;
    uint64_t above_16m = low_bytes > 16 * MIB ? (low_bytes - 16 * MIB) / (64 * KIB) : 0;
    uint64_t above_4g = high_bytes / (64 * KIB);
    if (above_4g > 0xffffff)
        above_4g = 0xffffff;
    pthread_mutex_lock(&c->lock);
    put16(c, RAM_EXT_MEM, ext_kib);
    put16(c, RAM_EXT_MEM2, ext_kib);
    put16(c, RAM_MEM_ABOVE_16M, above_16m);
    c->ram[RAM_MEM_ABOVE_4G] = (uint8_t)above_4g;
    c->ram[RAM_MEM_ABOVE_4G + 1] = (uint8_t)(above_4g >> 8);
    c->ram[RAM_MEM_ABOVE_4G + 2] = (uint8_t)(above_4g >> 16);
    pthread_mutex_unlock(&c->lock);
}

void cmos_set_cpus(struct cmos *c, uint32_t ncpus)
{
    if (ncpus < 1)
        ncpus = 1;
    if (ncpus > 256)
        ncpus = 256;
    pthread_mutex_lock(&c->lock);
    c->ram[RAM_SMP_COUNT] = (uint8_t)(ncpus - 1);
    pthread_mutex_unlock(&c->lock);
}

void cmos_save(struct cmos *c, struct cmos_state *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&c->lock);
    memcpy(s->ram, c->ram, sizeof(s->ram));
    s->index = c->index;
    s->nmi_masked = c->nmi_masked;
    s->offset_s = c->offset_s;
    pthread_mutex_unlock(&c->lock);
}

int cmos_restore(struct cmos *c, const struct cmos_state *s)
{
    if (s->index >= CMOS_SIZE || s->nmi_masked > 1 || (s->ram[CMOS_REG_A] & A_UIP) ||
        s->ram[CMOS_REG_C] != 0 || s->ram[CMOS_REG_D] != D_VRT || s->offset_s > MAX_OFFSET_S ||
        s->offset_s < -MAX_OFFSET_S)
        return -EINVAL;
    pthread_mutex_lock(&c->lock);
    memcpy(c->ram, s->ram, sizeof(c->ram));
    c->index = s->index;
    c->nmi_masked = s->nmi_masked;
    c->offset_s = s->offset_s;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

/* ---- migration payload ---- */

int cmos_mig_save(const struct cmos *c, struct mig_out *o)
{
    struct cmos_state s;
    cmos_save((struct cmos *)c, &s); /* takes the lock; changes nothing */
    mig_put_bytes(o, s.ram, sizeof(s.ram));
    mig_put_u8(o, s.index);
    mig_put_u8(o, s.nmi_masked);
    mig_put_u64(o, (uint64_t)s.offset_s);
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

int cmos_mig_load(struct cmos *c, struct mig_in *in, uint32_t version)
{
    if (version != CMOS_STATE_VERSION)
        return -EPROTO;
    struct cmos_state s;
    memset(&s, 0, sizeof(s));
    mig_get_bytes(in, s.ram, sizeof(s.ram));
    s.index = mig_get_u8(in);
    s.nmi_masked = mig_get_u8(in);
    s.offset_s = (int64_t)mig_get_u64(in);
    if (!mig_in_done(in) || cmos_restore(c, &s) < 0) {
        mig_in_fail(in);
        return -EINVAL;
    }
    return 0;
}
