/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Small PC platform pieces: i8042 reset, 0xCF9 reset control, pvpanic,
 * the ACPI PM block, and the POST/delay sinks. See platform.h for the
 * contracts and for why each behaves as it does.
 */
#include "devices/platform.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* The empty-bus answer for `size` bytes. */
static uint64_t all_ones(unsigned size)
{
    return size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;
}

/* True for the only access a one-byte port understands; logs the others. */
static bool single_byte_access(const char *dev, const char *what, uint64_t offset, unsigned size)
{
    if (offset == 0 && size == 1)
        return true;
    guest_error(dev, "%u-byte %s at offset 0x%llx ignored (a one-byte port)", size, what,
                (unsigned long long)offset);
    return false;
}

/* ---- i8042 ---- */

static const char I8042_DEV[] = "i8042";

#define I8042_CMD_WRITE_OUTPUT 0xd1

/* Controller commands followed by a data byte on port 0x60. */
static bool i8042_cmd_takes_data(uint8_t cmd)
{
    return (cmd >= 0x60 && cmd <= 0x7f) || (cmd >= 0xd1 && cmd <= 0xd4);
}

/* 0xF0-0xFF pulse the output-port bits whose command bit is 0; bit 0 is reset. */
static bool i8042_cmd_pulses_reset(uint8_t cmd)
{
    return (cmd & 0xf0) == 0xf0 && !(cmd & 0x01);
}

void i8042_init(struct i8042 *k, void (*reset)(void *ctx), void *ctx)
{
    atomic_init(&k->pending, 0);
    k->reset = reset;
    k->ctx = ctx;
}

void i8042_reset(struct i8042 *k)
{
    atomic_store(&k->pending, 0);
}

static void i8042_request_reset(struct i8042 *k)
{
    if (k->reset)
        k->reset(k->ctx);
}

static uint64_t i8042_data_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque;
    if (!single_byte_access(I8042_DEV, "read", offset, size))
        return all_ones(size);
    return 0;
}

static void i8042_data_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct i8042 *k = opaque;
    if (!single_byte_access(I8042_DEV, "write", offset, size))
        return;
    unsigned cmd = atomic_exchange(&k->pending, 0);
    if (cmd == I8042_CMD_WRITE_OUTPUT && !(value & 0x01))
        i8042_request_reset(k); /* output port bit 0 is the CPU reset line */
}

static uint64_t i8042_cmd_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque;
    if (!single_byte_access(I8042_DEV, "read", offset, size))
        return all_ones(size);
    return I8042_STATUS;
}

static void i8042_cmd_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct i8042 *k = opaque;
    if (!single_byte_access(I8042_DEV, "write", offset, size))
        return;
    uint8_t cmd = (uint8_t)value;
    atomic_store(&k->pending, i8042_cmd_takes_data(cmd) ? cmd : 0);
    if (i8042_cmd_pulses_reset(cmd))
        i8042_request_reset(k);
}

const struct io_ops i8042_data_ops = {
    .read = i8042_data_read,
    .write = i8042_data_write,
};

const struct io_ops i8042_cmd_ops = {
    .read = i8042_cmd_read,
    .write = i8042_cmd_write,
};

/* ---- reset control register (0xCF9) ---- */

static const char CF9_DEV[] = "cf9";

void cf9_init(struct cf9 *r, void (*reset)(void *ctx), void *ctx)
{
    atomic_init(&r->value, 0);
    r->reset = reset;
    r->ctx = ctx;
}

void cf9_reset(struct cf9 *r)
{
    atomic_store(&r->value, 0);
}

static uint64_t cf9_read(void *opaque, uint64_t offset, unsigned size)
{
    struct cf9 *r = opaque;
    if (!single_byte_access(CF9_DEV, "read", offset, size))
        return all_ones(size);
    return atomic_load(&r->value);
}

static void cf9_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct cf9 *r = opaque;
    if (!single_byte_access(CF9_DEV, "write", offset, size))
        return;
    atomic_store(&r->value, (uint8_t)value);
    if ((value & CF9_RST_CPU) && r->reset)
        r->reset(r->ctx);
}

const struct io_ops cf9_io_ops = {
    .read = cf9_read,
    .write = cf9_write,
};

/* ---- pvpanic ---- */

static const char PVPANIC_DEV[] = "pvpanic";

void pvpanic_init(struct pvpanic *p, void (*event)(void *ctx, uint8_t events), void *ctx)
{
    p->event = event;
    p->ctx = ctx;
}

static uint64_t pvpanic_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque;
    if (!single_byte_access(PVPANIC_DEV, "read", offset, size))
        return all_ones(size);
    return PVPANIC_CAPABILITIES;
}

static void pvpanic_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct pvpanic *p = opaque;
    if (!single_byte_access(PVPANIC_DEV, "write", offset, size))
        return;
    uint8_t events = (uint8_t)(value & PVPANIC_CAPABILITIES);
    if (value & ~(uint64_t)PVPANIC_CAPABILITIES)
        guest_error(PVPANIC_DEV, "unknown event bits 0x%02llx ignored",
                    (unsigned long long)(value & ~(uint64_t)PVPANIC_CAPABILITIES));
    if (events && p->event)
        p->event(p->ctx, events);
}

const struct io_ops pvpanic_io_ops = {
    .read = pvpanic_read,
    .write = pvpanic_write,
};

/* ---- ACPI PM block ---- */

static const char PM_DEV[] = "acpi-pm";

/* Offsets within the block. */
#define PM_OFF_STS     (PM1A_EVT_BLK - PM_IO_BASE)
#define PM_OFF_EN      (PM_OFF_STS + 2)
#define PM_OFF_CNT     (PM1A_CNT_BLK - PM_IO_BASE)
#define PM_OFF_TMR     (PM_TMR_BLK - PM_IO_BASE)
#define PM_OFF_GPE_STS (GPE0_BLK - PM_IO_BASE)
#define PM_OFF_GPE_EN  (PM_OFF_GPE_STS + 2)

/* Bits each register holds. */
#define PM1_STS_MASK   0xc731 /* TMR BM GBL PWRBTN SLPBTN RTC PCIEXP_WAKE WAK */
#define PM1_EN_MASK    0x4721 /* TMR GBL PWRBTN SLPBTN RTC PCIEXP_WAKE_DIS */
#define PM1_CNT_MASK   0x1c02 /* BM_RLD, SLP_TYP (SCI_EN, GBL_RLS, SLP_EN are not stored) */
#define PM1_SCI_EVENTS 0x0721 /* status bits that raise the SCI when enabled */

static uint64_t pm_clock_ns(const struct pm *pm)
{
    if (pm->cfg.clock_ns)
        return pm->cfg.clock_ns(pm->cfg.clock_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The 24-bit PM timer; the split keeps ns * 3579545 from overflowing. */
static uint32_t pm_timer(const struct pm *pm)
{
    uint64_t ns = pm_clock_ns(pm) + pm->tmr_offset_ns;
    uint64_t ticks =
        (ns / 1000000000ull) * PM_TMR_FREQ + (ns % 1000000000ull) * PM_TMR_FREQ / 1000000000ull;
    return (uint32_t)(ticks & 0xffffff);
}

/* The SCI level the registers imply: an enabled event is pending. */
static bool pm_sci_wanted(const struct pm *pm)
{
    return (pm->pm1_sts & pm->pm1_en & PM1_SCI_EVENTS) || (pm->gpe0_sts & pm->gpe0_en);
}

static void pm_update_sci(struct pm *pm)
{
    bool level = pm_sci_wanted(pm);
    if (level != pm->sci_level) {
        pm->sci_level = level;
        irq_line_set(&pm->cfg.sci, level);
    }
}

/* Reads one byte of a 16-bit register. */
static uint8_t reg_byte(uint16_t reg, unsigned lane)
{
    return (uint8_t)(reg >> (8 * lane));
}

/* Replaces one byte of a 16-bit register, keeping only `mask` bits. */
static uint16_t set_byte(uint16_t reg, unsigned lane, uint8_t v, uint16_t mask)
{
    uint16_t lane_mask = (uint16_t)(0xff << (8 * lane));
    uint16_t bits = (uint16_t)(v << (8 * lane));
    return (uint16_t)(((reg & ~lane_mask) | (bits & lane_mask)) & mask);
}

/* Clears the bits written as 1 in one byte of a write-1-to-clear register. */
static uint16_t clear_byte(uint16_t reg, unsigned lane, uint8_t v)
{
    return (uint16_t)(reg & ~(v << (8 * lane)));
}

/*
 * Reads one byte; `tmr` is the timer sampled once for the whole access.
 * Unused offsets read 0xff.
 */
static uint8_t pm_read_byte(const struct pm *pm, uint64_t off, uint32_t tmr)
{
    unsigned lane = off & 1;
    switch (off) {
    case PM_OFF_STS:
    case PM_OFF_STS + 1:
        return reg_byte(pm->pm1_sts, lane);
    case PM_OFF_EN:
    case PM_OFF_EN + 1:
        return reg_byte(pm->pm1_en, lane);
    case PM_OFF_CNT:
    case PM_OFF_CNT + 1:
        return reg_byte(pm->pm1_cnt | PM1_CNT_SCI_EN, lane);
    case PM_OFF_TMR:
    case PM_OFF_TMR + 1:
    case PM_OFF_TMR + 2:
    case PM_OFF_TMR + 3:
        return (uint8_t)(tmr >> (8 * (off - PM_OFF_TMR)));
    case PM_OFF_GPE_STS:
    case PM_OFF_GPE_STS + 1:
        return reg_byte(pm->gpe0_sts, lane);
    case PM_OFF_GPE_EN:
    case PM_OFF_GPE_EN + 1:
        return reg_byte(pm->gpe0_en, lane);
    default:
        return 0xff;
    }
}

/* Handles SLP_EN; returns true when the guest asked for S5. */
static bool pm_sleep(struct pm *pm)
{
    unsigned typ = (pm->pm1_cnt >> PM1_CNT_SLP_TYP_SHIFT) & 7;
    if (typ == PM_SLP_TYP_S5)
        return true;
    guest_error(PM_DEV, "sleep type %u is not offered; waking at once", typ);
    pm->pm1_sts |= PM1_STS_WAK;
    return false;
}

/* What a byte write did. */
enum pm_write_result { PM_WRITTEN, PM_IGNORED, PM_POWEROFF };

static enum pm_write_result pm_write_byte(struct pm *pm, uint64_t off, uint8_t v)
{
    unsigned lane = off & 1;
    switch (off) {
    case PM_OFF_STS:
    case PM_OFF_STS + 1:
        pm->pm1_sts = clear_byte(pm->pm1_sts, lane, v);
        return PM_WRITTEN;
    case PM_OFF_EN:
    case PM_OFF_EN + 1:
        pm->pm1_en = set_byte(pm->pm1_en, lane, v, PM1_EN_MASK);
        return PM_WRITTEN;
    case PM_OFF_CNT:
    case PM_OFF_CNT + 1:
        pm->pm1_cnt = set_byte(pm->pm1_cnt, lane, v, PM1_CNT_MASK);
        if (lane == 1 && (v & (PM1_CNT_SLP_EN >> 8)) && pm_sleep(pm))
            return PM_POWEROFF;
        return PM_WRITTEN;
    case PM_OFF_GPE_STS:
    case PM_OFF_GPE_STS + 1:
        pm->gpe0_sts = clear_byte(pm->gpe0_sts, lane, v);
        return PM_WRITTEN;
    case PM_OFF_GPE_EN:
    case PM_OFF_GPE_EN + 1:
        pm->gpe0_en = set_byte(pm->gpe0_en, lane, v, 0xffff);
        return PM_WRITTEN;
    default: /* unused, or the read-only PM timer */
        return PM_IGNORED;
    }
}

/* True when byte i of an access at `offset` is inside the block (overflow-safe). */
static bool pm_byte_in_block(uint64_t offset, unsigned i)
{
    return offset < PM_IO_LEN && i < PM_IO_LEN - offset;
}

/* Offsets inside the block that no register occupies. */
static bool pm_offset_unused(uint64_t off)
{
    return (off >= PM_OFF_TMR + PM_TMR_LEN && off < PM_OFF_GPE_STS) || off >= PM_IO_LEN;
}

static uint64_t pm_io_read(void *opaque, uint64_t offset, unsigned size)
{
    struct pm *pm = opaque;
    uint64_t value = 0;
    bool stray = false;
    if (size > 8)
        size = 8;
    pthread_mutex_lock(&pm->lock);
    uint32_t tmr = pm_timer(pm); /* one sample, so a 32-bit read is never torn */
    for (unsigned i = 0; i < size; i++) {
        uint64_t off = pm_byte_in_block(offset, i) ? offset + i : PM_IO_LEN;
        stray |= pm_offset_unused(off);
        value |= (uint64_t)pm_read_byte(pm, off, tmr) << (8 * i);
    }
    pthread_mutex_unlock(&pm->lock);
    if (stray)
        guest_error(PM_DEV, "%u-byte read at offset 0x%llx touches unused ports", size,
                    (unsigned long long)offset);
    return value;
}

static void pm_io_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct pm *pm = opaque;
    bool poweroff = false, ignored = false;
    if (size > 8)
        size = 8;
    pthread_mutex_lock(&pm->lock);
    for (unsigned i = 0; i < size; i++) {
        uint64_t off = pm_byte_in_block(offset, i) ? offset + i : PM_IO_LEN;
        enum pm_write_result r = pm_write_byte(pm, off, (uint8_t)(value >> (8 * i)));
        poweroff |= r == PM_POWEROFF;
        ignored |= r == PM_IGNORED;
    }
    pm_update_sci(pm);
    pthread_mutex_unlock(&pm->lock);
    if (ignored)
        guest_error(PM_DEV,
                    "%u-byte write of 0x%llx at offset 0x%llx hits unused or read-only ports", size,
                    (unsigned long long)value, (unsigned long long)offset);
    if (poweroff && pm->cfg.poweroff)
        pm->cfg.poweroff(pm->cfg.ctx);
}

const struct io_ops pm_io_ops = {
    .read = pm_io_read,
    .write = pm_io_write,
};

int pm_init(struct pm *pm, const struct pm_config *cfg)
{
    memset(pm, 0, sizeof(*pm));
    int rc = pthread_mutex_init(&pm->lock, NULL);
    if (rc)
        return -rc;
    pm->cfg = *cfg;
    return 0;
}

void pm_destroy(struct pm *pm)
{
    pthread_mutex_destroy(&pm->lock);
}

/* Drives the SCI to the registers' level even if we think it is there. */
static void pm_force_sci(struct pm *pm)
{
    pm->sci_level = pm_sci_wanted(pm);
    irq_line_set(&pm->cfg.sci, pm->sci_level);
}

void pm_reset(struct pm *pm)
{
    pthread_mutex_lock(&pm->lock);
    pm->pm1_sts = pm->pm1_en = pm->pm1_cnt = pm->gpe0_sts = pm->gpe0_en = 0;
    pm_force_sci(pm);
    pthread_mutex_unlock(&pm->lock);
}

void pm_press_power_button(struct pm *pm)
{
    pthread_mutex_lock(&pm->lock);
    pm->pm1_sts |= PM1_STS_PWRBTN;
    pm_update_sci(pm);
    pthread_mutex_unlock(&pm->lock);
}

void pm_save(struct pm *pm, struct pm_state *s)
{
    pthread_mutex_lock(&pm->lock);
    *s = (struct pm_state){
        .pm1_sts = pm->pm1_sts,
        .pm1_en = pm->pm1_en,
        .pm1_cnt = pm->pm1_cnt,
        .gpe0_sts = pm->gpe0_sts,
        .gpe0_en = pm->gpe0_en,
    };
    pthread_mutex_unlock(&pm->lock);
}

int pm_restore(struct pm *pm, const struct pm_state *s)
{
    if ((s->pm1_sts & ~PM1_STS_MASK) || (s->pm1_en & ~PM1_EN_MASK) || (s->pm1_cnt & ~PM1_CNT_MASK))
        return -EINVAL;
    pthread_mutex_lock(&pm->lock);
    pm->pm1_sts = s->pm1_sts;
    pm->pm1_en = s->pm1_en;
    pm->pm1_cnt = s->pm1_cnt;
    pm->gpe0_sts = s->gpe0_sts;
    pm->gpe0_en = s->gpe0_en;
    pm_force_sci(pm);
    pthread_mutex_unlock(&pm->lock);
    return 0;
}

/* ---- migration payloads ---- */

int i8042_save(const struct i8042 *k, struct mig_out *o)
{
    mig_put_u8(o, (uint8_t)atomic_load(&((struct i8042 *)k)->pending));
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

int i8042_load(struct i8042 *k, struct mig_in *in, uint32_t version)
{
    if (version != I8042_STATE_VERSION)
        return -EPROTO;
    uint8_t cmd = mig_get_u8(in);
    if (!mig_in_done(in) || (cmd && !i8042_cmd_takes_data(cmd))) {
        mig_in_fail(in);
        return -EINVAL;
    }
    atomic_store(&k->pending, cmd);
    return 0;
}

int pvpanic_save(const struct pvpanic *p, struct mig_out *o)
{
    (void)p;
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

int pvpanic_load(struct pvpanic *p, struct mig_in *in, uint32_t version)
{
    (void)p;
    if (version != PVPANIC_STATE_VERSION)
        return -EPROTO;
    if (!mig_in_done(in)) {
        mig_in_fail(in);
        return -EINVAL;
    }
    return 0;
}

int pm_mig_save(const struct pm *cpm, struct mig_out *o)
{
    struct pm *pm = (struct pm *)cpm; /* for the lock only */
    pthread_mutex_lock(&pm->lock);
    mig_put_u16(o, pm->pm1_sts);
    mig_put_u16(o, pm->pm1_en);
    mig_put_u16(o, pm->pm1_cnt);
    mig_put_u16(o, pm->gpe0_sts);
    mig_put_u16(o, pm->gpe0_en);
    mig_put_u64(o, pm_clock_ns(pm) + pm->tmr_offset_ns);
    pthread_mutex_unlock(&pm->lock);
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

int pm_mig_load(struct pm *pm, struct mig_in *in, uint32_t version)
{
    if (version != PM_STATE_VERSION)
        return -EPROTO;
    struct pm_state s;
    s.pm1_sts = mig_get_u16(in);
    s.pm1_en = mig_get_u16(in);
    s.pm1_cnt = mig_get_u16(in);
    s.gpe0_sts = mig_get_u16(in);
    s.gpe0_en = mig_get_u16(in);
    uint64_t tmr_ns = mig_get_u64(in);
    if (!mig_in_done(in) || pm_restore(pm, &s) < 0) {
        mig_in_fail(in);
        return -EINVAL;
    }
    pthread_mutex_lock(&pm->lock);
    pm->tmr_offset_ns = tmr_ns - pm_clock_ns(pm);
    pthread_mutex_unlock(&pm->lock);
    return 0;
}

/* ---- POST code and delay ports ---- */

static uint64_t post_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque;
    (void)offset;
    return all_ones(size);
}

static void post_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    (void)opaque;
    (void)offset;
    (void)size;
    (void)value;
}

const struct io_ops post_io_ops = {
    .read = post_read,
    .write = post_write,
};
