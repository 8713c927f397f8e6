/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Live-migration state of every device core: each device is driven into
 * a non-trivial state through its registers, saved, loaded into a twin
 * built the same way (with a copy of guest RAM, as migration gives it),
 * and the twin must then behave as the original would have. Every loader
 * also refuses each truncation of a good payload, trailing bytes, another
 * version and specific bad values. Also: device writes to guest RAM set
 * dirty marks (virtqueue, virtio-blk, virtio-net, NVMe, fw_cfg), and a
 * quiesced device writes nothing. Multiqueue virtio-blk: every queue's
 * state and vector migrates, another queue count is refused.
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

#include "common/le.h"
#include "common/mig_buf.h"
#include "devices/cmos.h"
#include "devices/fw_cfg.h"
#include "devices/nvme.h"
#include "devices/pci_bridge.h"
#include "devices/platform.h"
#include "devices/uart16550.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"
#include "nvme_fake_blk.h"
#include "virtio_driver.h"

#define FEAT(b) (1ull << (b))
#define PAGE    4096u

/* ---- helpers shared by every device ---- */

static struct mig_in in_of(const struct mig_out *o, size_t len)
{
    struct mig_in in;
    mig_in_init(&in, o->buf, len);
    return in;
}

/* A copy of o's bytes with one more byte at the end. */
static struct mig_out plus_one(const struct mig_out *o)
{
    struct mig_out p;
    mig_out_init(&p);
    mig_put_bytes(&p, o->buf, o->len);
    mig_put_u8(&p, 0);
    assert_true(mig_out_ok(&p));
    return p;
}

/*
 * Every strict prefix and the payload plus a byte: -EINVAL; another
 * version: -EPROTO. `load` is called as load(dev, &in, version).
 */
#define CHECK_REFUSALS(load, dev, o, version)                                                      \
    do {                                                                                           \
        for (size_t n_ = 0; n_ < (o)->len; n_++) {                                                 \
            struct mig_in in_ = in_of((o), n_);                                                    \
            assert_int_equal(load((dev), &in_, (version)), -EINVAL);                               \
            assert_false(mig_in_ok(&in_));                                                         \
        }                                                                                          \
        struct mig_out p_ = plus_one(o);                                                           \
        struct mig_in in_ = in_of(&p_, p_.len);                                                    \
        assert_int_equal(load((dev), &in_, (version)), -EINVAL);                                   \
        mig_out_free(&p_);                                                                         \
        in_ = in_of((o), (o)->len);                                                                \
        assert_int_equal(load((dev), &in_, (version) + 1), -EPROTO);                               \
        in_ = in_of((o), (o)->len);                                                                \
        assert_int_equal(load((dev), &in_, 0), -EPROTO);                                           \
    } while (0)

/* Loads o with byte i replaced by v: the result. */
#define LOAD_PATCHED(load, dev, o, version, i, v)                                                  \
    ({                                                                                             \
        struct mig_out q_;                                                                         \
        mig_out_init(&q_);                                                                         \
        mig_put_bytes(&q_, (o)->buf, (o)->len);                                                    \
        q_.buf[(i)] = (uint8_t)(v);                                                                \
        struct mig_in in_ = in_of(&q_, q_.len);                                                    \
        int r_ = load((dev), &in_, (version));                                                     \
        mig_out_free(&q_);                                                                         \
        r_;                                                                                        \
    })

#define LOAD_ALL(load, dev, o, version)                                                            \
    ({                                                                                             \
        struct mig_in in_ = in_of((o), (o)->len);                                                  \
        load((dev), &in_, (version));                                                              \
    })

static bool page_marked(const uint64_t *bm, uint64_t gpa)
{
    uint64_t p = gpa / PAGE;
    return (bm[p / 64] >> (p % 64)) & 1u;
}

/* ---- level recorder ---- */

struct levels {
    bool level[64];
    unsigned sets;
};

static void rec_level(void *ctx, uint32_t gsi, bool level)
{
    struct levels *l = ctx;
    if (gsi < 64)
        l->level[gsi] = level;
    l->sets++;
}

/* ================================================================== */
/* UART                                                               */
/* ================================================================== */

struct uart_env {
    struct levels lv;
    struct irq_sink sink;
    struct uart u;
};

static void uart_env_init(struct uart_env *e)
{
    memset(e, 0, sizeof(*e));
    e->sink = (struct irq_sink){.ctx = &e->lv, .set_level = rec_level};
    struct uart_config cfg = {.irq = {.sink = &e->sink, .gsi = 4}};
    assert_int_equal(uart_init(&e->u, &cfg), 0);
}

static uint8_t uart_rd(struct uart *u, unsigned reg)
{
    return (uint8_t)uart_io_ops.read(u, reg, 1);
}

static void uart_wr(struct uart *u, unsigned reg, uint8_t v)
{
    uart_io_ops.write(u, reg, 1, v);
}

static void test_uart(void **state)
{
    (void)state;
    struct uart_env a, b;
    uart_env_init(&a);
    uart_env_init(&b);
    uart_wr(&a.u, 3, 0x80); /* DLAB */
    uart_wr(&a.u, 0, 0x01); /* 115200 baud */
    uart_wr(&a.u, 1, 0x00);
    uart_wr(&a.u, 3, 0x03); /* 8N1 */
    uart_wr(&a.u, 2, 0xc1); /* FIFO, trigger 14 */
    uart_wr(&a.u, 1, 0x01); /* ERBFI */
    uart_wr(&a.u, 4, 0x0b); /* DTR RTS OUT2 */
    uart_wr(&a.u, 7, 0x5a);
    assert_int_equal(uart_receive(&a.u, (const uint8_t *)"hello", 5), 5);
    assert_int_equal(uart_rd(&a.u, 0), 'h'); /* one consumed: the FIFO head moved */
    assert_true(a.lv.level[4]);

    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(uart_mig_save(&a.u, &o), 0);
    assert_int_equal(LOAD_ALL(uart_mig_load, &b.u, &o, UART_STATE_VERSION), 0);
    assert_true(b.lv.level[4]);                      /* the twin drives its line at once */
    assert_int_equal(uart_rd(&b.u, 2) & 0x0f, 0x0c); /* character timeout: 4 < 14 */
    assert_int_equal(uart_rd(&b.u, 7), 0x5a);
    assert_int_equal(uart_rd(&b.u, 3), 0x03);
    assert_int_equal(uart_rd(&b.u, 4), 0x0b);
    const char *rest = "ello";
    for (int i = 0; i < 4; i++) {
        assert_true(uart_rd(&b.u, 5) & 0x01);
        assert_int_equal(uart_rd(&b.u, 0), rest[i]);
    }
    assert_false(uart_rd(&b.u, 5) & 0x01);
    assert_false(b.lv.level[4]);
    uart_wr(&b.u, 3, 0x83);
    assert_int_equal(uart_rd(&b.u, 0), 0x01); /* divisor came along */
    uart_wr(&b.u, 3, 0x03);

    /* Refusals; the twin is unchanged by them. */
    struct uart_env c;
    uart_env_init(&c);
    CHECK_REFUSALS(uart_mig_load, &c.u, &o, UART_STATE_VERSION);
    assert_int_equal(LOAD_PATCHED(uart_mig_load, &c.u, &o, UART_STATE_VERSION, 0, 0x10), -EINVAL);
    assert_int_equal(LOAD_PATCHED(uart_mig_load, &c.u, &o, UART_STATE_VERSION, 10, 17), -EINVAL);
    assert_int_equal(LOAD_PATCHED(uart_mig_load, &c.u, &o, UART_STATE_VERSION, 9, 2), -EINVAL);
    assert_int_equal(uart_rd(&c.u, 7), 0);
    mig_out_free(&o);
    uart_destroy(&a.u);
    uart_destroy(&b.u);
    uart_destroy(&c.u);
}

/* ================================================================== */
/* CMOS / RTC                                                         */
/* ================================================================== */

static int64_t clock_a, clock_b; /* ns since the epoch */

static int64_t clk_a(void *ctx)
{
    (void)ctx;
    return clock_a;
}

static int64_t clk_b(void *ctx)
{
    (void)ctx;
    return clock_b;
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

static void test_cmos(void **state)
{
    (void)state;
    struct tm tm = {
        .tm_year = 124, .tm_mon = 0, .tm_mday = 2, .tm_hour = 3, .tm_min = 4, .tm_sec = 5};
    clock_a = (int64_t)timegm(&tm) * 1000000000ll;
    clock_b = clock_a + 100ll * 1000000000ll; /* the target reads its clock 100 s later */
    struct cmos a, b, c;
    struct cmos_config ca = {.clock_ns = clk_a}, cb = {.clock_ns = clk_b};
    assert_int_equal(cmos_init(&a, &ca), 0);
    assert_int_equal(cmos_init(&b, &cb), 0);
    assert_int_equal(cmos_init(&c, &cb), 0);
    assert_int_equal(cmos_rd(&a, 0x04), 0x03);
    cmos_wr(&a, 0x04, 0x05); /* the guest sets the clock two hours ahead */
    assert_int_equal(cmos_rd(&a, 0x04), 0x05);
    cmos_wr(&a, 0x40, 0xab);
    cmos_io_ops.write(&a, 0, 1, 0x80 | 0x40); /* NMI masked, index 0x40 */

    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(cmos_mig_save(&a, &o), 0);
    assert_int_equal(LOAD_ALL(cmos_mig_load, &b, &o, CMOS_STATE_VERSION), 0);
    assert_int_equal(cmos_io_ops.read(&b, 1, 1), 0xab); /* the index came along */
    /* Guest time continues: 05:04:05 + 100 s. */
    assert_int_equal(cmos_rd(&b, 0x04), 0x05);
    assert_int_equal(cmos_rd(&b, 0x02), 0x05);
    assert_int_equal(cmos_rd(&b, 0x00), 0x45);
    assert_int_equal(cmos_rd(&b, 0x07), 0x02);

    CHECK_REFUSALS(cmos_mig_load, &c, &o, CMOS_STATE_VERSION);
    assert_int_equal(LOAD_PATCHED(cmos_mig_load, &c, &o, CMOS_STATE_VERSION, 0x0c, 1), -EINVAL);
    assert_int_equal(LOAD_PATCHED(cmos_mig_load, &c, &o, CMOS_STATE_VERSION, 0x0a, 0xa6), -EINVAL);
    assert_int_equal(LOAD_PATCHED(cmos_mig_load, &c, &o, CMOS_STATE_VERSION, 128, 0x80), -EINVAL);
    assert_int_equal(LOAD_PATCHED(cmos_mig_load, &c, &o, CMOS_STATE_VERSION, 129, 2), -EINVAL);
    assert_int_equal(LOAD_PATCHED(cmos_mig_load, &c, &o, CMOS_STATE_VERSION, 137, 0x7f), -EINVAL);
    assert_int_equal(cmos_rd(&c, 0x04), 0x03); /* untouched: no offset */
    mig_out_free(&o);
    cmos_destroy(&a);
    cmos_destroy(&b);
    cmos_destroy(&c);
}

/* ================================================================== */
/* ACPI PM, i8042, pvpanic                                            */
/* ================================================================== */

static uint64_t mono_a, mono_b;

static uint64_t mclk_a(void *ctx)
{
    (void)ctx;
    return mono_a;
}

static uint64_t mclk_b(void *ctx)
{
    (void)ctx;
    return mono_b;
}

static uint32_t pm_tmr(struct pm *pm)
{
    return (uint32_t)pm_io_ops.read(pm, PM_TMR_BLK - PM_IO_BASE, 4);
}

static void test_pm(void **state)
{
    (void)state;
    struct levels la = {0}, lb = {0};
    struct irq_sink sa = {.ctx = &la, .set_level = rec_level};
    struct irq_sink sb = {.ctx = &lb, .set_level = rec_level};
    struct pm_config ca = {.sci = {.sink = &sa, .gsi = PM_SCI_IRQ}, .clock_ns = mclk_a};
    struct pm_config cb = {.sci = {.sink = &sb, .gsi = PM_SCI_IRQ}, .clock_ns = mclk_b};
    struct pm a, b, c;
    assert_int_equal(pm_init(&a, &ca), 0);
    assert_int_equal(pm_init(&b, &cb), 0);
    assert_int_equal(pm_init(&c, &cb), 0);
    mono_a = 5000000000ull + 12345;
    mono_b = 987654321000ull; /* another host's monotonic clock */
    pm_io_ops.write(&a, 2, 2, PM1_EN_PWRBTN);
    pm_io_ops.write(&a, 4, 2, 5u << PM1_CNT_SLP_TYP_SHIFT);
    pm_io_ops.write(&a, 0x22, 2, 0x0004); /* GPE0_EN */
    pm_press_power_button(&a);
    assert_true(la.level[PM_SCI_IRQ]);
    uint32_t t = pm_tmr(&a);

    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(pm_mig_save(&a, &o), 0);
    assert_int_equal(LOAD_ALL(pm_mig_load, &b, &o, PM_STATE_VERSION), 0);
    assert_true(lb.level[PM_SCI_IRQ]);
    assert_int_equal(pm_io_ops.read(&b, 0, 2), PM1_STS_PWRBTN);
    assert_int_equal(pm_io_ops.read(&b, 4, 2), (5u << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SCI_EN);
    assert_int_equal(pm_io_ops.read(&b, 0x22, 2), 0x0004);
    assert_int_equal(pm_tmr(&b), t); /* the timer continues from the same value */
    mono_b += 1000000;               /* 1 ms later: 3579 ticks */
    assert_int_equal((pm_tmr(&b) - t) & 0xffffff, 3579);
    pm_io_ops.write(&b, 0, 2, PM1_STS_PWRBTN); /* the guest acknowledges */
    assert_false(lb.level[PM_SCI_IRQ]);

    CHECK_REFUSALS(pm_mig_load, &c, &o, PM_STATE_VERSION);
    assert_int_equal(LOAD_PATCHED(pm_mig_load, &c, &o, PM_STATE_VERSION, 0, 0x02), -EINVAL);
    assert_int_equal(LOAD_PATCHED(pm_mig_load, &c, &o, PM_STATE_VERSION, 5, 0x20), -EINVAL);
    assert_int_equal(pm_io_ops.read(&c, 0, 2), 0);
    mig_out_free(&o);
    pm_destroy(&a);
    pm_destroy(&b);
    pm_destroy(&c);
}

static unsigned resets;

static void on_reset(void *ctx)
{
    (void)ctx;
    resets++;
}

static void test_i8042_pvpanic(void **state)
{
    (void)state;
    struct i8042 a, b;
    i8042_init(&a, on_reset, NULL);
    i8042_init(&b, on_reset, NULL);
    i8042_cmd_ops.write(&a, 0, 1, 0xd1); /* write output port: a data byte follows */
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(i8042_save(&a, &o), 0);
    assert_int_equal(o.len, 1);
    CHECK_REFUSALS(i8042_load, &b, &o, I8042_STATE_VERSION);
    assert_int_equal(LOAD_PATCHED(i8042_load, &b, &o, I8042_STATE_VERSION, 0, 0x20), -EINVAL);
    assert_int_equal(LOAD_ALL(i8042_load, &b, &o, I8042_STATE_VERSION), 0);
    resets = 0;
    i8042_data_ops.write(&b, 0, 1, 0xfe); /* bit 0 clear: the CPU reset line */
    assert_int_equal(resets, 1);
    mig_out_free(&o);

    struct pvpanic p;
    pvpanic_init(&p, NULL, NULL);
    mig_out_init(&o);
    assert_int_equal(pvpanic_save(&p, &o), 0);
    assert_int_equal(o.len, 0);
    assert_int_equal(LOAD_ALL(pvpanic_load, &p, &o, PVPANIC_STATE_VERSION), 0);
    CHECK_REFUSALS(pvpanic_load, &p, &o, PVPANIC_STATE_VERSION);
    mig_out_free(&o);
}

/* ================================================================== */
/* fw_cfg                                                             */
/* ================================================================== */

#define FW_RAM (64u * PAGE)

static void fw_build(struct fw_cfg *fw, const struct guest_mem *m, uint32_t rw_len)
{
    static const uint8_t zero[16], ro[] = "read-only-data";
    assert_int_equal(fw_cfg_init(fw, m), 0);
    assert_int_equal(fw_cfg_add_file(fw, "etc/a-ro", ro, sizeof(ro)), 0);
    assert_int_equal(fw_cfg_add_file_rw(fw, "etc/b-rw", zero, rw_len), 0);
    assert_int_equal(fw_cfg_add_file_rw(fw, "etc/c-rw", zero, 4), 0);
}

/* Runs a DMA descriptor {control, length, address} placed at desc. */
static uint32_t fw_dma(struct fw_cfg *fw, uint8_t *ram, uint64_t desc, uint32_t control,
                       uint32_t len, uint64_t addr)
{
    uint8_t *d = ram + desc;
    for (int i = 0; i < 4; i++) {
        d[i] = (uint8_t)(control >> (24 - 8 * i));
        d[4 + i] = (uint8_t)(len >> (24 - 8 * i));
    }
    for (int i = 0; i < 8; i++)
        d[8 + i] = (uint8_t)(addr >> (56 - 8 * i));
    fw_cfg_io_ops.write(fw, FW_CFG_PORT_DMA, 4, 0);
    fw_cfg_io_ops.write(fw, FW_CFG_PORT_DMA + 4, 4, __builtin_bswap32((uint32_t)desc));
    return (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
}

static void test_fw_cfg(void **state)
{
    (void)state;
    uint8_t *ram = calloc(1, FW_RAM);
    struct guest_mem m;
    guest_mem_init_buffer(&m, ram, FW_RAM);
    struct fw_cfg a, b, c;
    fw_build(&a, &m, 8);
    fw_build(&b, &m, 8);
    fw_build(&c, &m, 9); /* another size: refuses the state */
    int rw = fw_cfg_file_selector(&a, "etc/b-rw"), ro = fw_cfg_file_selector(&a, "etc/a-ro");
    assert_true(rw > 0 && ro > 0);

    /* Firmware writes the rw file by DMA; dirty marks for DMA reads. */
    assert_int_equal(guest_mem_dirty_start(&m), 0);
    memcpy(ram + 5 * PAGE, "ABCDEFGH", 8);
    assert_int_equal(fw_dma(&a, ram, 1 * PAGE,
                            (uint32_t)rw << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE, 8,
                            5 * PAGE),
                     0);
    assert_int_equal(fw_dma(&a, ram, 2 * PAGE,
                            (uint32_t)ro << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4,
                            7 * PAGE + 100),
                     0);
    assert_memory_equal(ram + 7 * PAGE + 100, "read", 4);
    uint64_t bm[1] = {0};
    guest_mem_dirty_take(&m, bm);
    assert_true(page_marked(bm, 7 * PAGE) && page_marked(bm, 1 * PAGE) &&
                page_marked(bm, 2 * PAGE));
    assert_false(page_marked(bm, 5 * PAGE)); /* read by the device, not written */
    guest_mem_dirty_stop(&m);

    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(fw_cfg_save(&a, &o), 0);
    CHECK_REFUSALS(fw_cfg_load, &c, &o, FW_CFG_STATE_VERSION);
    assert_int_equal(LOAD_ALL(fw_cfg_load, &c, &o, FW_CFG_STATE_VERSION), -EINVAL);
    assert_int_equal(LOAD_PATCHED(fw_cfg_load, &b, &o, FW_CFG_STATE_VERSION, 2, 0xff), -EINVAL);
    assert_int_equal(LOAD_ALL(fw_cfg_load, &b, &o, FW_CFG_STATE_VERSION), 0);
    uint8_t got[8];
    assert_int_equal(fw_cfg_get_file(&b, "etc/b-rw", got, sizeof(got)), 8);
    assert_memory_equal(got, "ABCDEFGH", 8);
    /* The read continues at offset 4 of the selected file. */
    assert_int_equal(fw_cfg_io_ops.read(&b, FW_CFG_PORT_DATA, 1), '-');
    assert_int_equal(fw_cfg_io_ops.read(&b, FW_CFG_PORT_DATA, 1), 'o');
    mig_out_free(&o);
    fw_cfg_destroy(&a);
    fw_cfg_destroy(&b);
    fw_cfg_destroy(&c);
    free(ram);
}

/* ================================================================== */
/* PCI config space, bridge                                           */
/* ================================================================== */

struct moves {
    unsigned n;
    uint64_t addr[8];
    unsigned bar[8];
};

static void on_bar_moved(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                         uint64_t new_addr, bool enabled)
{
    (void)f, (void)old_addr, (void)enabled;
    struct moves *m = ctx;
    if (m->n < 8) {
        m->addr[m->n] = new_addr;
        m->bar[m->n] = bar;
    }
    m->n++;
}

static uint64_t dummy_rd(void *o, uint64_t off, unsigned size)
{
    (void)o, (void)off, (void)size;
    return 0;
}

static void dummy_wr(void *o, uint64_t off, unsigned size, uint64_t v)
{
    (void)o, (void)off, (void)size, (void)v;
}

static const struct io_ops dummy_ops = {dummy_rd, dummy_wr};

struct pci_env {
    struct levels lv;
    struct irq_sink sink;
    struct moves mv;
    struct pci_topology t;
    struct pci_func f;
    struct pci_bridge br;
    struct pci_func behind;
};

static void pci_env_init(struct pci_env *e, uint16_t device_id)
{
    memset(e, 0, sizeof(*e));
    e->sink = (struct irq_sink){.ctx = &e->lv, .set_level = rec_level};
    struct pci_topology_hooks h = {.ctx = &e->mv, .bar_moved = on_bar_moved};
    assert_int_equal(pci_topology_init(&e->t, &h, &e->sink), 0);
    pci_func_init(&e->f, "dev", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&e->f, 0x1234, device_id);
    assert_int_equal(pci_set_bar(&e->f, 0, PCI_BAR_MEM32, 0x1000, false, &dummy_ops, NULL), 0);
    assert_int_equal(pci_set_bar(&e->f, 1, PCI_BAR_IO, 0x20, false, &dummy_ops, NULL), 0);
    assert_int_equal(pci_func_set_intx_pin(&e->f, 1), 0);
    assert_true(pci_add_capability(&e->f, 0x09, 8) > 0);
    struct pci_path p = {0, 4, 0}, pb = {0, 5, 0}, pd = {1, 0, 0};
    assert_int_equal(pci_topology_add(&e->t, &p, &e->f), 0);
    assert_int_equal(pci_bridge_init(&e->br, "br", 1), 0);
    assert_int_equal(pci_topology_add(&e->t, &pb, &e->br.func), 0);
    pci_func_init(&e->behind, "behind", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&e->behind, 0x1234, 0x9999);
    assert_int_equal(pci_topology_add(&e->t, &pd, &e->behind), 0);
    e->mv.n = 0;
}

static void test_pci(void **state)
{
    (void)state;
    struct pci_env *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b)),
                   *c = calloc(1, sizeof(*c));
    pci_env_init(a, 0x5678);
    pci_env_init(b, 0x5678);
    pci_env_init(c, 0x5679); /* another device: refuses the state */
    pci_topology_cfg_write(&a->t, 0, 4, 0, PCI_REG_BAR0, 4, 0xfebf0000);
    pci_topology_cfg_write(&a->t, 0, 4, 0, PCI_REG_BAR0 + 4, 4, 0xc040);
    pci_topology_cfg_write(&a->t, 0, 4, 0, PCI_REG_INT_LINE, 1, 11);
    pci_topology_cfg_write(&a->t, 0, 4, 0, PCI_REG_COMMAND, 2,
                           PCI_CMD_MEM | PCI_CMD_IO | PCI_CMD_BUS_MASTER);
    pci_set_irq(&a->f, true);
    pci_topology_cfg_write(&a->t, 0, 5, 0, PCI_REG_SECONDARY_BUS, 1, 3);
    pci_topology_cfg_write(&a->t, 0, 5, 0, PCI_REG_SUBORDINATE_BUS, 1, 3);
    assert_ptr_equal(pci_topology_lookup(&a->t, 3, 0, 0), &a->behind);

    struct mig_out o, ob;
    mig_out_init(&o);
    mig_out_init(&ob);
    assert_int_equal(pci_func_save(&a->f, &o), 0);
    assert_int_equal(pci_bridge_save(&a->br, &ob), 0);
    CHECK_REFUSALS(pci_func_load, &b->f, &o, PCI_FUNC_STATE_VERSION);
    CHECK_REFUSALS(pci_bridge_load, &b->br, &ob, PCI_BRIDGE_STATE_VERSION);
    assert_int_equal(LOAD_ALL(pci_func_load, &c->f, &o, PCI_FUNC_STATE_VERSION), -EINVAL);
    /* Read-only bits must match: vendor ID, BAR flags, capability pointer, header type. */
    size_t cfg0 = 2;
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, cfg0 + 0, 0x35), -EINVAL);
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, cfg0 + 0x14, 0x40), -EINVAL);
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, cfg0 + 0x34, 0x50), -EINVAL);
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, cfg0 + 0x0e, 0x01), -EINVAL);
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, o.len - 1, 2), -EINVAL);
    /* Writable bits may differ: a scratch INT_LINE value is fine. */
    assert_int_equal(LOAD_PATCHED(pci_func_load, &b->f, &o, 1, cfg0 + 0x3c, 12), 0);
    assert_int_equal(b->mv.n, 2);
    b->mv.n = 0;

    assert_int_equal(LOAD_ALL(pci_func_load, &b->f, &o, PCI_FUNC_STATE_VERSION), 0);
    assert_int_equal(LOAD_ALL(pci_bridge_load, &b->br, &ob, PCI_BRIDGE_STATE_VERSION), 0);
    assert_int_equal(pci_topology_cfg_read(&b->t, 0, 4, 0, PCI_REG_INT_LINE, 1), 11);
    assert_true(pci_func_bus_master(&b->f));
    assert_true(pci_topology_cfg_read(&b->t, 0, 4, 0, PCI_REG_STATUS, 2) & PCI_STS_INTX);
    assert_true(b->lv.level[pci_intx_gsi(4, 1)]);
    assert_int_equal(pci_bar_address(&b->f, 0), 0xfebf0000);
    assert_int_equal(pci_bar_address(&b->f, 1), 0xc040);
    /* Already mapped by the scratch load: nothing moved. */
    assert_int_equal(b->mv.n, 0);
    assert_ptr_equal(pci_topology_lookup(&b->t, 3, 0, 0), &b->behind);
    assert_null(pci_topology_lookup(&c->t, 3, 0, 0));
    mig_out_free(&o);
    mig_out_free(&ob);
    pci_topology_destroy(&a->t);
    pci_topology_destroy(&b->t);
    pci_topology_destroy(&c->t);
    free(a);
    free(b);
    free(c);
}

/* ================================================================== */
/* virtio-blk on virtio PCI, MSI-X, virtqueue                         */
/* ================================================================== */

#define VB_DISK  (256u * 1024u)
#define VB_HDR   (VD_DATA)
#define VB_BUF   (VD_DATA + 0x1000u)
#define VB_STAT  (VD_DATA + 0x3000u)
#define VB_QSIZE 8u

/*
 * The twin of a saved virtio device: guest RAM and the driver's view copied
 * from `from`, then its PCI config space and the device payload `o` (from
 * virtio_pci_save) loaded into `to`. Asserts every step succeeded.
 */
static void vd_load_twin(struct vdrv *from, struct vdrv *to, struct mig_out *o)
{
    memcpy(to->ram, from->ram, VD_RAM_SIZE);
    memcpy(to->q, from->q, sizeof(from->q));
    struct mig_out oc;
    mig_out_init(&oc);
    assert_int_equal(pci_func_save(&from->vp->func, &oc), 0);
    assert_int_equal(LOAD_ALL(pci_func_load, &to->vp->func, &oc, PCI_FUNC_STATE_VERSION), 0);
    mig_out_free(&oc);
    assert_int_equal(LOAD_ALL(virtio_pci_load, to->vp, o, VIRTIO_PCI_STATE_VERSION), 0);
}

struct blk_env {
    struct vdrv d;
    struct fake_blk *fb;
    struct virtio_blk *blk;
};

static void blk_env_init_mq(struct blk_env *e, uint64_t disk, unsigned nqueues)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(vd_init(&e->d), 0);
    e->fb = fake_blk_new(disk, 512);
    assert_non_null(e->fb);
    for (uint64_t i = 0; i < disk; i++)
        e->fb->disk[i] = (uint8_t)(i * 7 + i / 512);
    struct virtio_blk_params p = {.name = "vblk",
                                  .mem = &e->d.mem,
                                  .backend = &e->fb->b,
                                  .msi = &e->d.sink,
                                  .queue_size = 16,
                                  .nqueues = nqueues};
    assert_int_equal(virtio_blk_create(&p, &e->blk), 0);
    assert_int_equal(vd_attach(&e->d, virtio_blk_pci(e->blk)), 0);
}

static void blk_env_init(struct blk_env *e, uint64_t disk)
{
    blk_env_init_mq(e, disk, 0);
}

static void blk_env_fini(struct blk_env *e)
{
    virtio_blk_destroy(e->blk);
    blk_close(&e->fb->b);
    vd_fini(&e->d);
}

/* Posts a one-sector read of `sector` on queue q into VB_BUF + 512 * k. */
static void blk_post_read_q(struct blk_env *e, unsigned q, uint64_t sector, unsigned k)
{
    uint8_t *h = e->d.ram + VB_HDR + 16u * k;
    put32(h, VIRTIO_BLK_T_IN);
    put32(h + 4, 0);
    put64(h + 8, sector);
    struct vd_buf b[3] = {
        {VB_HDR + 16u * k, 16, false}, {VB_BUF + 512u * k, 512, true}, {VB_STAT + k, 1, true}};
    vd_avail(&e->d, q, vd_chain(&e->d, q, b, 3));
}

static void blk_post_read(struct blk_env *e, uint64_t sector, unsigned k)
{
    blk_post_read_q(e, 0, sector, k);
}

static void blk_expect_done_q(struct blk_env *e, unsigned q, uint64_t sector, unsigned k)
{
    uint32_t id, len;
    assert_true(vd_used(&e->d, q, &id, &len));
    assert_int_equal(len, 513);
    assert_int_equal(e->d.ram[VB_STAT + k], VIRTIO_BLK_S_OK);
    assert_memory_equal(e->d.ram + VB_BUF + 512u * k, e->fb->disk + sector * 512, 512);
}

static void blk_expect_done(struct blk_env *e, uint64_t sector, unsigned k)
{
    blk_expect_done_q(e, 0, sector, k);
}

static void test_virtio_blk(void **state)
{
    (void)state;
    struct blk_env *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    blk_env_init(a, VB_DISK);
    blk_env_init(b, VB_DISK);
    struct vdrv *d = &a->d;
    assert_true(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_F_EVENT_IDX)) &
                VIRTIO_STATUS_FEATURES_OK);
    vd_queue(d, 0, VB_QSIZE);
    vd_msix_enable(d, 2);
    vd_wr(d, VPC_Q_SELECT, 2, 0);
    vd_wr(d, VPC_Q_MSIX, 2, 1);
    vd_wr(d, VPC_MSIX, 2, 0);
    vd_driver_ok(d);
    /* used_event far ahead: the driver wants no interrupt for a while. */
    put16(d->ram + VD_RING(0) + 0x4000 + 4 + 2 * VB_QSIZE, 100);

    /* Ten requests: the ring wraps; dirty marks for what the device writes. */
    assert_int_equal(guest_mem_dirty_start(&d->mem), 0);
    for (unsigned i = 0; i < 10; i++) {
        memset(d->ram + VB_BUF, 0, 512);
        blk_post_read(a, i, 0);
        vd_kick(d, 0);
        blk_expect_done(a, i, 0);
    }
    uint64_t bm[VD_RAM_SIZE / PAGE / 64] = {0};
    guest_mem_dirty_take(&d->mem, bm);
    assert_true(page_marked(bm, VB_BUF) && page_marked(bm, VB_STAT) &&
                page_marked(bm, VD_RING(0) + 0x8000));
    assert_false(page_marked(bm, VB_HDR) || page_marked(bm, VD_RING(0) + 0x4000) ||
                 page_marked(bm, VD_RING(0)));
    guest_mem_dirty_stop(&d->mem);

    /* Quiesce; a request kicked now is not processed, and nothing is written. */
    virtio_pci_quiesce(a->d.vp);
    blk_post_read(a, 20, 1);
    vd_kick(d, 0);
    assert_false(vd_used(d, 0, NULL, NULL));
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), 0);

    /* The twin: RAM and driver state copied, config space then device. */
    vd_load_twin(&a->d, &b->d, &o);
    /* Loaded means quiesced: a kick before resume does nothing. */
    vd_kick(&b->d, 0);
    assert_false(vd_used(&b->d, 0, NULL, NULL));
    assert_int_equal(virtio_pci_status(b->d.vp), virtio_pci_status(a->d.vp));
    assert_int_equal(vd_rd(&b->d, VPC_Q_SIZE, 2), VB_QSIZE);
    assert_int_equal(vd_rd(&b->d, VPC_Q_MSIX, 2), 1);
    virtio_pci_resume(b->d.vp);
    blk_expect_done(b, 20, 1); /* the request kicked on the source while paused */
    /* used->idx continues at 11, and the interrupt comes once used_event is passed. */
    assert_int_equal(le16(b->d.ram + VD_RING(0) + 0x8000 + 2), 11);
    assert_int_equal(b->d.msi_count[1], 0);
    put16(b->d.ram + VD_RING(0) + 0x4000 + 4 + 2 * VB_QSIZE, 11);
    blk_post_read(b, 21, 2);
    vd_kick(&b->d, 0);
    blk_expect_done(b, 21, 2);
    assert_int_equal(b->d.msi_count[1], 1); /* MSI-X table and vector came along */

    /* Refusals on a third device; each leaves it reset and quiesced. */
    struct blk_env *c = calloc(1, sizeof(*c));
    blk_env_init(c, VB_DISK);
    CHECK_REFUSALS(virtio_pci_load, c->d.vp, &o, VIRTIO_PCI_STATE_VERSION);
    assert_int_equal(virtio_pci_status(c->d.vp), 0);
    /* status: DRIVER_OK without FEATURES_OK; needs_reset 2; a vector beyond nvec. */
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 1, 0x07), -EINVAL);
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 2, 2), -EINVAL);
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 0, 2), -EINVAL);
    /* Queue 0 size (offset 22) not a power of two; the used ring outside RAM. */
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 22, 6), -EINVAL);
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 25 + 16 + 7, 0x80), -EINVAL);
    /* A disk of another size refuses the state. */
    struct blk_env *e2 = calloc(1, sizeof(*e2));
    blk_env_init(e2, VB_DISK * 2);
    assert_int_equal(LOAD_ALL(virtio_pci_load, e2->d.vp, &o, VIRTIO_PCI_STATE_VERSION), -EINVAL);
    /* No crash for any single corrupted byte. */
    for (size_t i = 0; i < o.len; i++) {
        int r = LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, i, o.buf[i] ^ 0xa5);
        assert_true(r == 0 || r == -EINVAL);
    }
    virtio_pci_resume(c->d.vp);

    /* Save needs a quiesced device. */
    mig_out_free(&o);
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(b->d.vp, &o), -EBUSY);
    mig_out_free(&o);
    blk_env_fini(a);
    blk_env_fini(b);
    blk_env_fini(c);
    blk_env_fini(e2);
    free(a);
    free(b);
    free(c);
    free(e2);
}

/* Saving with a request at the backend is refused; quiesce waits for it. */
static void test_virtio_blk_inflight(void **state)
{
    (void)state;
    struct blk_env *a = calloc(1, sizeof(*a));
    blk_env_init(a, VB_DISK);
    assert_true(vd_negotiate(&a->d, FEAT(VIRTIO_F_VERSION_1)) & VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&a->d, 0, VB_QSIZE);
    vd_driver_ok(&a->d);
    a->fb->defer = true;
    blk_post_read(a, 3, 0);
    vd_kick(&a->d, 0);
    assert_false(vd_used(&a->d, 0, NULL, NULL));
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), -EBUSY); /* not quiesced */
    virtio_pci_quiesce(a->d.vp);                            /* drains the backend */
    blk_expect_done(a, 3, 0);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), 0);
    virtio_pci_resume(a->d.vp);
    mig_out_free(&o);
    blk_env_fini(a);
    free(a);
}

/* Two queues with MQ, MSI-X vector q + 1 for queue q, each VB_QSIZE entries. */
static void blk_up_mq(struct blk_env *e)
{
    struct vdrv *d = &e->d;
    assert_true(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_MQ)) &
                VIRTIO_STATUS_FEATURES_OK);
    vd_msix_enable(d, 3);
    vd_wr(d, VPC_MSIX, 2, 0);
    for (unsigned q = 0; q < 2; q++) {
        vd_queue(d, q, VB_QSIZE);
        vd_wr(d, VPC_Q_SELECT, 2, q);
        vd_wr(d, VPC_Q_MSIX, 2, q + 1);
    }
    vd_driver_ok(d);
}

static uint16_t blk_used_idx(struct blk_env *e, unsigned q)
{
    return le16(e->d.ram + VD_RING(q) + 0x8000 + 2);
}

/* A multiqueue device: every queue's rings, indices and vector migrate. */
static void test_virtio_blk_mq(void **state)
{
    (void)state;
    struct blk_env *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    blk_env_init_mq(a, VB_DISK, 2);
    blk_env_init_mq(b, VB_DISK, 2);
    struct vdrv *d = &a->d;
    blk_up_mq(a);
    /* Queues at different points, both wrapping: 11 on queue 0, 13 on queue 1. */
    for (unsigned i = 0; i < 13; i++) {
        for (unsigned q = 0; q < 2; q++) {
            if (q == 0 && i >= 11)
                continue;
            blk_post_read_q(a, q, 2 * i + q, q);
            vd_kick(d, q);
            blk_expect_done_q(a, q, 2 * i + q, q);
        }
    }
    assert_int_equal(d->msi_count[1], 11);
    assert_int_equal(d->msi_count[2], 13);
    /* Quiesced, a request kicked on queue 1 waits. */
    virtio_pci_quiesce(a->d.vp);
    blk_post_read_q(a, 1, 77, 2);
    vd_kick(d, 1);
    assert_false(vd_used(d, 1, NULL, NULL));
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), 0);

    /* The twin. */
    vd_load_twin(&a->d, &b->d, &o);
    vd_wr(&b->d, VPC_GFSELECT, 4, 0);
    assert_true(vd_rd(&b->d, VPC_GF, 4) & FEAT(VIRTIO_BLK_F_MQ));
    for (unsigned q = 0; q < 2; q++) {
        vd_wr(&b->d, VPC_Q_SELECT, 2, q);
        assert_int_equal(vd_rd(&b->d, VPC_Q_ENABLE, 2), 1);
        assert_int_equal(vd_rd(&b->d, VPC_Q_MSIX, 2), q + 1);
    }
    virtio_pci_resume(b->d.vp);
    blk_expect_done_q(b, 1, 77, 2); /* kicked on the source while paused */
    assert_int_equal(blk_used_idx(b, 1), 14);
    assert_int_equal(blk_used_idx(b, 0), 11);
    assert_int_equal(b->d.msi_count[2], 1);
    assert_int_equal(b->d.msi_count[1], 0);
    blk_post_read_q(b, 0, 90, 3);
    vd_kick(&b->d, 0);
    blk_expect_done_q(b, 0, 90, 3);
    assert_int_equal(blk_used_idx(b, 0), 12);
    assert_int_equal(b->d.msi_count[1], 1);

    /* Refusals: truncations, another version; another queue count either way. */
    struct blk_env *c = calloc(1, sizeof(*c));
    blk_env_init_mq(c, VB_DISK, 2);
    CHECK_REFUSALS(virtio_pci_load, c->d.vp, &o, VIRTIO_BLK_STATE_VERSION);
    struct blk_env *one = calloc(1, sizeof(*one)), *four = calloc(1, sizeof(*four));
    blk_env_init_mq(one, VB_DISK, 1);
    blk_env_init_mq(four, VB_DISK, 4);
    assert_int_equal(LOAD_ALL(virtio_pci_load, one->d.vp, &o, VIRTIO_BLK_STATE_VERSION), -EINVAL);
    assert_int_equal(LOAD_ALL(virtio_pci_load, four->d.vp, &o, VIRTIO_BLK_STATE_VERSION), -EINVAL);
    mig_out_free(&o);
    mig_out_init(&o);
    virtio_pci_quiesce(one->d.vp);
    assert_int_equal(virtio_pci_save(one->d.vp, &o), 0);
    assert_int_equal(LOAD_ALL(virtio_pci_load, c->d.vp, &o, VIRTIO_BLK_STATE_VERSION), -EINVAL);
    virtio_pci_resume(one->d.vp);
    virtio_pci_resume(c->d.vp);
    mig_out_free(&o);
    struct blk_env *envs[] = {a, b, c, one, four};
    for (unsigned i = 0; i < 5; i++) {
        blk_env_fini(envs[i]);
        free(envs[i]);
    }
}

/* Requests in flight on both queues: save refuses, quiesce waits for all. */
static void test_virtio_blk_mq_inflight(void **state)
{
    (void)state;
    struct blk_env *a = calloc(1, sizeof(*a));
    blk_env_init_mq(a, VB_DISK, 2);
    blk_up_mq(a);
    a->fb->defer = true;
    blk_post_read_q(a, 1, 3, 0);
    vd_kick(&a->d, 1);
    blk_post_read_q(a, 0, 4, 1);
    vd_kick(&a->d, 0);
    assert_int_equal(a->fb->npending, 2);
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), -EBUSY);
    virtio_pci_quiesce(a->d.vp);
    assert_int_equal(a->fb->npending, 0);
    blk_expect_done_q(a, 1, 3, 0);
    blk_expect_done_q(a, 0, 4, 1);
    assert_int_equal(a->d.msi_count[2], 1);
    assert_int_equal(a->d.msi_count[1], 1);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), 0);
    virtio_pci_resume(a->d.vp);
    mig_out_free(&o);
    blk_env_fini(a);
    free(a);
}

/* ================================================================== */
/* virtio-net                                                         */
/* ================================================================== */

#define NRX  VIRTIO_NET_RXQ
#define NTX  VIRTIO_NET_TXQ
#define RXB  (VD_DATA)
#define TXB  (VD_DATA + 0x40000u)
#define NQSZ 8u

struct fnet {
    struct net_backend be;
    const struct net_rx_ops *rx;
    uint8_t frame[256];
    size_t frame_len;
    bool has_frame;
    unsigned resumes, nsent;
    int offloads;
};

static int fn_start(struct net_backend *b, const struct net_rx_ops *ops)
{
    ((struct fnet *)b)->rx = ops;
    return 0;
}

static long fn_recv(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    struct fnet *f = (struct fnet *)b;
    if (!f->has_frame)
        return 0;
    f->has_frame = false;
    return (long)iov_from_buf(iov, n, f->frame, f->frame_len);
}

static void fn_resume(struct net_backend *b)
{
    ((struct fnet *)b)->resumes++;
}

static int fn_send(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    (void)iov, (void)n;
    ((struct fnet *)b)->nsent++;
    return 0;
}

static int fn_offloads(struct net_backend *b, unsigned off)
{
    ((struct fnet *)b)->offloads = (int)off;
    return 0;
}

static void fn_close(struct net_backend *b)
{
    (void)b;
}

static const struct net_backend_ops fn_ops = {fn_start, fn_recv,     fn_resume,
                                              fn_send,  fn_offloads, fn_close};

struct net_env {
    struct vdrv d;
    struct fnet net;
    struct virtio_net *nic;
};

static void net_env_init(struct net_env *e)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(vd_init(&e->d), 0);
    e->net.be =
        (struct net_backend){.ops = &fn_ops, .offloads_supported = NET_OFF_CSUM | NET_OFF_TSO4};
    e->net.offloads = -1;
    struct opt_mac mac = {true, {0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}};
    struct virtio_net_params p = {.name = "nic",
                                  .mem = &e->d.mem,
                                  .backend = &e->net.be,
                                  .mac = &mac,
                                  .msi = &e->d.sink,
                                  .queue_size = 16};
    assert_int_equal(virtio_net_create(&p, &e->nic), 0);
    assert_int_equal(vd_attach(&e->d, virtio_net_pci(e->nic)), 0);
}

static void net_env_fini(struct net_env *e)
{
    virtio_net_destroy(e->nic);
    vd_fini(&e->d);
}

static void net_frame(struct net_env *e, uint8_t fill)
{
    memset(e->net.frame, fill, sizeof(e->net.frame));
    memset(e->net.frame, 0, NET_VNET_HDR_LEN);
    e->net.frame_len = 100;
    e->net.has_frame = true;
}

static void net_post_rx(struct net_env *e, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        struct vd_buf b = {RXB + 0x1000u * e->d.q[NRX].next, 2048, true};
        vd_avail(&e->d, NRX, vd_chain(&e->d, NRX, &b, 1));
    }
}

static void test_virtio_net(void **state)
{
    (void)state;
    struct net_env *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    net_env_init(a);
    net_env_init(b);
    uint64_t want = FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_NET_F_CSUM) |
                    FEAT(VIRTIO_NET_F_GUEST_CSUM) | FEAT(VIRTIO_NET_F_MRG_RXBUF);
    assert_true(vd_negotiate(&a->d, want) & VIRTIO_STATUS_FEATURES_OK);
    assert_int_equal(a->net.offloads, NET_OFF_CSUM);
    vd_queue(&a->d, NRX, NQSZ);
    vd_queue(&a->d, NTX, NQSZ);
    vd_driver_ok(&a->d);
    net_post_rx(a, 4);
    vd_kick(&a->d, NRX);

    assert_int_equal(guest_mem_dirty_start(&a->d.mem), 0);
    net_frame(a, 0x11);
    a->net.rx->rx_ready(a->net.rx->ctx);
    uint32_t id, len;
    assert_true(vd_used(&a->d, NRX, &id, &len));
    assert_int_equal(len, 100);
    uint64_t bm[VD_RAM_SIZE / PAGE / 64] = {0};
    guest_mem_dirty_take(&a->d.mem, bm);
    assert_true(page_marked(bm, RXB) && page_marked(bm, VD_RING(NRX) + 0x8000));
    assert_false(page_marked(bm, RXB + 0x1000));
    guest_mem_dirty_stop(&a->d.mem);

    /* Quiesced: a frame arriving now is not written into guest RAM. */
    virtio_pci_quiesce(a->d.vp);
    uint8_t *snap = malloc(VD_RAM_SIZE);
    memcpy(snap, a->d.ram, VD_RAM_SIZE);
    net_frame(a, 0x22);
    a->net.rx->rx_ready(a->net.rx->ctx);
    assert_memory_equal(snap, a->d.ram, VD_RAM_SIZE);
    free(snap);
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(virtio_pci_save(a->d.vp, &o), 0);

    vd_load_twin(&a->d, &b->d, &o);
    assert_int_equal(b->net.offloads, NET_OFF_CSUM); /* re-applied */
    /* Still quiesced on the target: the backend's frame waits. */
    net_frame(b, 0x33);
    b->net.rx->rx_ready(b->net.rx->ctx);
    assert_false(vd_used(&b->d, NRX, NULL, NULL));
    unsigned resumes = b->net.resumes;
    virtio_pci_resume(b->d.vp);
    assert_int_equal(b->net.resumes, resumes + 1); /* asked for frames again */
    b->net.rx->rx_ready(b->net.rx->ctx);
    assert_true(vd_used(&b->d, NRX, &id, &len));
    assert_int_equal(len, 100);
    assert_int_equal(b->d.ram[RXB + 0x1000 + 50], 0x33);     /* the second buffer */
    assert_int_equal(le16(b->d.ram + RXB + 0x1000 + 10), 1); /* num_buffers */
    assert_int_equal(le16(b->d.ram + VD_RING(NRX) + 0x8000 + 2), 2);

    /* Transmit works on the twin. */
    uint8_t *tx = b->d.ram + TXB;
    memset(tx, 0, 64);
    struct vd_buf tb = {TXB, 64, false};
    vd_avail(&b->d, NTX, vd_chain(&b->d, NTX, &tb, 1));
    vd_kick(&b->d, NTX);
    assert_int_equal(b->net.nsent, 1);

    struct net_env *c = calloc(1, sizeof(*c));
    net_env_init(c);
    CHECK_REFUSALS(virtio_pci_load, c->d.vp, &o, VIRTIO_PCI_STATE_VERSION);
    /* Another MAC: the last six bytes. */
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, o.len - 1, 0), -EINVAL);
    /* Features beyond what is offered (driver_features at offset 11). */
    assert_int_equal(LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, 11 + 2, 0xff), -EINVAL);
    for (size_t i = 0; i < o.len; i++) {
        int r = LOAD_PATCHED(virtio_pci_load, c->d.vp, &o, 1, i, o.buf[i] ^ 0x5a);
        assert_true(r == 0 || r == -EINVAL);
    }
    mig_out_free(&o);
    net_env_fini(a);
    net_env_fini(b);
    net_env_fini(c);
    free(a);
    free(b);
    free(c);
}

/* ================================================================== */
/* NVMe                                                               */
/* ================================================================== */

#define NV_RAM   (4u << 20)
#define NV_DISK  (1u << 20)
#define NV_ASQ   0x10000u
#define NV_ACQ   0x11000u
#define NV_IOSQ  0x20000u
#define NV_IOCQ  0x30000u
#define NV_DATA  0x100000u
#define NV_IDENT 0x180000u
#define NV_ADMQ  8u
#define NV_IOQ   4u

struct nq {
    uint16_t qid;
    uint64_t sq_gpa, cq_gpa;
    uint32_t size, sq_tail, cq_head;
    bool phase;
};

struct nv_env {
    uint8_t *ram;
    struct guest_mem mem;
    struct fake_blk *fb;
    struct pci_topology topo;
    struct nvme_disk n;
    struct c_nvme_disk spec;
    struct irq_sink msi_sink, intx_sink;
    struct levels lv;
    unsigned nmsi;
    struct nq aq, ioq;
    uint16_t cid;
};

static void nv_msi(void *ctx, uint64_t a, uint32_t d)
{
    (void)a, (void)d;
    ((struct nv_env *)ctx)->nmsi++;
}

static void nv_init(struct nv_env *e)
{
    memset(e, 0, sizeof(*e));
    e->ram = aligned_alloc(4096, NV_RAM);
    memset(e->ram, 0, NV_RAM);
    guest_mem_init_buffer(&e->mem, e->ram, NV_RAM);
    e->fb = fake_blk_new(NV_DISK, 512);
    for (unsigned i = 0; i < NV_DISK; i++)
        e->fb->disk[i] = (uint8_t)(i * 13 + i / 512);
    memcpy(e->spec.serial_number, "SN-42", 5);
    e->spec.string_pad = ' ';
    e->msi_sink = (struct irq_sink){.ctx = e, .msi = nv_msi};
    e->intx_sink = (struct irq_sink){.ctx = &e->lv, .set_level = rec_level};
    assert_int_equal(nvme_init(&e->n, "nvme", &e->spec, &e->fb->b, &e->mem, &e->msi_sink), 0);
    assert_int_equal(pci_topology_init(&e->topo, NULL, &e->intx_sink), 0);
    struct pci_path p = {0, 4, 0};
    assert_int_equal(pci_topology_add(&e->topo, &p, nvme_pci_func(&e->n)), 0);
    pci_topology_cfg_write(&e->topo, 0, 4, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    e->cid = 1;
}

static void nv_fini(struct nv_env *e)
{
    nvme_destroy(&e->n);
    pci_topology_destroy(&e->topo);
    assert_int_equal(e->fb->nbad, 0);
    blk_close(&e->fb->b);
    free(e->ram);
}

static void nv_wr(struct nv_env *e, uint64_t off, unsigned size, uint64_t v)
{
    nvme_bar_write(&e->n, off, size, v);
}

static uint16_t nv_put(struct nv_env *e, struct nq *q, uint8_t opc, uint32_t nsid, uint64_t prp1,
                       uint32_t c10, uint32_t c11, uint32_t c12)
{
    uint8_t *s = e->ram + q->sq_gpa + 64u * q->sq_tail;
    memset(s, 0, 64);
    s[0] = opc;
    uint16_t cid = e->cid++;
    put16(s + 2, cid);
    put32(s + 4, nsid);
    put64(s + 24, prp1);
    put32(s + 40, c10);
    put32(s + 44, c11);
    put32(s + 48, c12);
    q->sq_tail = (q->sq_tail + 1) % q->size;
    return cid;
}

static void nv_ring(struct nv_env *e, struct nq *q)
{
    nv_wr(e, 0x1000 + 8u * q->qid, 4, q->sq_tail);
}

/* The next completion (status without phase), or -1. */
static int nv_take(struct nv_env *e, struct nq *q, uint16_t *cid)
{
    const uint8_t *p = e->ram + q->cq_gpa + 16u * q->cq_head;
    uint32_t dw3 = le32(p + 12);
    if (((dw3 >> 16) & 1) != q->phase)
        return -1;
    if (cid)
        *cid = (uint16_t)dw3;
    if (++q->cq_head == q->size) {
        q->cq_head = 0;
        q->phase = !q->phase;
    }
    nv_wr(e, 0x1000 + 8u * q->qid + 4, 4, q->cq_head);
    return (int)((dw3 >> 17) & 0x3fff);
}

static int nv_cmd(struct nv_env *e, struct nq *q, uint8_t opc, uint32_t nsid, uint64_t prp1,
                  uint32_t c10, uint32_t c11, uint32_t c12)
{
    uint16_t cid = nv_put(e, q, opc, nsid, prp1, c10, c11, c12), got = 0;
    nv_ring(e, q);
    int st = nv_take(e, q, &got);
    if (st >= 0)
        assert_int_equal(got, cid);
    return st;
}

static void nv_up(struct nv_env *e)
{
    e->aq = (struct nq){0, NV_ASQ, NV_ACQ, NV_ADMQ, 0, 0, true};
    nv_wr(e, NVME_REG_AQA, 4, (NV_ADMQ - 1) << 16 | (NV_ADMQ - 1));
    nv_wr(e, NVME_REG_ASQ, 8, NV_ASQ);
    nv_wr(e, NVME_REG_ACQ, 8, NV_ACQ);
    nv_wr(e, NVME_REG_CC, 4, 4u << 20 | 6u << 16 | 1);
    assert_int_equal(nvme_bar_read(&e->n, NVME_REG_CSTS, 4) & 3, 1);
    assert_int_equal(nv_cmd(e, &e->aq, 0x05, 0, NV_IOCQ, (NV_IOQ - 1) << 16 | 1, 0x3, 0), 0);
    assert_int_equal(nv_cmd(e, &e->aq, 0x01, 0, NV_IOSQ, (NV_IOQ - 1) << 16 | 1, 1u << 16 | 1, 0),
                     0);
    e->ioq = (struct nq){1, NV_IOSQ, NV_IOCQ, NV_IOQ, 0, 0, true};
}

static void test_nvme(void **state)
{
    (void)state;
    struct nv_env *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    nv_init(a);
    nv_init(b);
    nv_up(a);
    assert_int_equal(guest_mem_dirty_start(&a->mem), 0);
    assert_int_equal(nv_cmd(a, &a->aq, 0x06, 0, NV_IDENT, 1, 0, 0), 0); /* identify */
    /* Five reads on a 4-entry queue: the phase flips. */
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(nv_cmd(a, &a->ioq, 0x02, 1, NV_DATA + PAGE * i, i, 0, 0), 0);
    assert_false(a->ioq.phase);
    uint64_t bm[NV_RAM / PAGE / 64] = {0};
    guest_mem_dirty_take(&a->mem, bm);
    assert_true(page_marked(bm, NV_IDENT) && page_marked(bm, NV_DATA) &&
                page_marked(bm, NV_DATA + 4 * PAGE) && page_marked(bm, NV_IOCQ) &&
                page_marked(bm, NV_ACQ));
    assert_false(page_marked(bm, NV_IOSQ) || page_marked(bm, NV_ASQ) ||
                 page_marked(bm, NV_DATA + 5 * PAGE));
    guest_mem_dirty_stop(&a->mem);
    /* Features, an AER held, INTMS. */
    assert_int_equal(nv_cmd(a, &a->aq, 0x09, 0, 0, 0x04, 0x0160, 0), 0);
    uint16_t aer = nv_put(a, &a->aq, 0x0c, 0, 0, 0, 0, 0);
    nv_ring(a, &a->aq);
    assert_int_equal(nv_take(a, &a->aq, NULL), -1);
    nv_wr(a, NVME_REG_INTMS, 4, 0x2);

    /* Quiesce; a command submitted now waits. */
    nvme_quiesce(&a->n);
    uint16_t late = nv_put(a, &a->ioq, 0x02, 1, NV_DATA + PAGE * 9, 9, 0, 0);
    nv_ring(a, &a->ioq);
    assert_int_equal(nv_take(a, &a->ioq, NULL), -1);
    struct mig_out o;
    mig_out_init(&o);
    assert_int_equal(nvme_save(&a->n, &o), 0);

    memcpy(b->ram, a->ram, NV_RAM);
    b->aq = a->aq;
    b->ioq = a->ioq;
    b->cid = a->cid;
    struct mig_out oc;
    mig_out_init(&oc);
    assert_int_equal(pci_func_save(nvme_pci_func(&a->n), &oc), 0);
    assert_int_equal(LOAD_ALL(pci_func_load, nvme_pci_func(&b->n), &oc, PCI_FUNC_STATE_VERSION), 0);
    mig_out_free(&oc);
    assert_int_equal(LOAD_ALL(nvme_load, &b->n, &o, NVME_STATE_VERSION), 0);
    assert_int_equal(nvme_bar_read(&b->n, NVME_REG_INTMS, 4), 0x2);
    assert_int_equal(nvme_bar_read(&b->n, NVME_REG_CC, 4), 4u << 20 | 6u << 16 | 1);
    assert_int_equal(nv_take(b, &b->ioq, NULL), -1); /* still quiesced */
    nvme_resume(&b->n);
    uint16_t cid;
    assert_int_equal(nv_take(b, &b->ioq, &cid), 0); /* the late command, right phase */
    assert_int_equal(cid, late);
    assert_memory_equal(b->ram + NV_DATA + 9 * PAGE, b->fb->disk + 9 * 512, 512);
    assert_int_equal(nv_cmd(b, &b->ioq, 0x02, 1, NV_DATA + PAGE * 10, 10, 0, 0), 0);
    /* Feature value came along. */
    assert_int_equal(nv_cmd(b, &b->aq, 0x0a, 0, 0, 0x04, 0, 0), 0);
    assert_int_equal(le32(b->ram + NV_ACQ + 16u * ((b->aq.cq_head + NV_ADMQ - 1) % NV_ADMQ)),
                     0x0160);
    /* A bad doorbell completes the held AER with its command id. */
    nv_wr(b, 0x1000 + 8u * 7, 4, 1);
    assert_int_equal(nv_take(b, &b->aq, &cid), 0);
    assert_int_equal(cid, aer);

    struct nv_env *c = calloc(1, sizeof(*c));
    nv_init(c);
    CHECK_REFUSALS(nvme_load, &c->n, &o, NVME_STATE_VERSION);
    assert_int_equal(nvme_bar_read(&c->n, NVME_REG_CSTS, 4), 0);
    /* CC reserved bit; CSTS.RDY without CC.EN; SQ/CQ values. */
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, 3, 0x80), -EINVAL);
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, 0, 0), -EINVAL);
    size_t q0 = 4 + 4 + 4 + 8 + 8 + 4 + 1;                                    /* the first CQ */
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, q0, 40), -EINVAL); /* qid */
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, q0 + 3, 0x01), -EINVAL);  /* gpa */
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, q0 + 13, 0x40), -EINVAL); /* size */
    assert_int_equal(LOAD_PATCHED(nvme_load, &c->n, &o, 1, q0 + 14, 0x08), -EINVAL); /* head */
    for (size_t i = 0; i < o.len; i++) {
        int r = LOAD_PATCHED(nvme_load, &c->n, &o, 1, i, o.buf[i] ^ 0x3c);
        assert_true(r == 0 || r == -EINVAL);
        nvme_resume(&c->n);
        nv_wr(c, 0x1000 + 8, 4, 1); /* a doorbell on whatever loaded */
        nvme_quiesce(&c->n);
    }
    mig_out_free(&o);

    /* Save refuses a running controller. */
    mig_out_init(&o);
    assert_int_equal(nvme_save(&b->n, &o), -EBUSY);
    mig_out_free(&o);
    nv_fini(a);
    nv_fini(b);
    nv_fini(c);
    free(a);
    free(b);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uart),
        cmocka_unit_test(test_cmos),
        cmocka_unit_test(test_pm),
        cmocka_unit_test(test_i8042_pvpanic),
        cmocka_unit_test(test_fw_cfg),
        cmocka_unit_test(test_pci),
        cmocka_unit_test(test_virtio_blk),
        cmocka_unit_test(test_virtio_blk_inflight),
        cmocka_unit_test(test_virtio_blk_mq),
        cmocka_unit_test(test_virtio_blk_mq_inflight),
        cmocka_unit_test(test_virtio_net),
        cmocka_unit_test(test_nvme),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
