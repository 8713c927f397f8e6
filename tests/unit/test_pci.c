/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The PCI core: configuration mechanism #1 and ECAM decoding, config-space
 * masks (read-only, read/write, write-1-to-clear), BAR sizing and the
 * bar_moved protocol, capabilities and cfg hooks, INTx routing and
 * wired-OR, the i440FX/PIIX3 chipset registers, PCI-PCI bridge registers
 * and bus-number routing (including firmware renumbering), reset, and a
 * long random run of hostile accesses. Pure logic: no KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devices/pci.h"
#include "devices/pci_bridge.h"
#include "devices/pci_host.h"

/* ---- fixture ---- */

#define MAX_EVENTS 64
#define NGSI       64

struct bar_event {
    struct pci_func *f;
    unsigned bar;
    uint64_t old_addr, new_addr;
    bool enabled;
};

struct env {
    struct pci_topology topo;
    struct pci_host host;
    struct pci_bridge bridge; /* 0.6.0, logical bus 1 */
    struct pci_func dev;      /* 0.3.0: IO 0x100, MEM32 0x1000, MEM64 0x100000 pf */
    struct pci_func behind;   /* logical 1.0.0, INTA */
    struct pci_irq_rec {
        bool level[NGSI];
        unsigned calls;
    } irq;
    struct irq_sink sink;
    struct bar_event ev[MAX_EVENTS];
    unsigned nev;
    uint8_t pam[I440FX_PAM_COUNT];
    unsigned pam_calls;
    uint8_t pirq[PIIX3_PIRQ_COUNT];
    unsigned pirq_calls;
    uint8_t rcr;
    unsigned rcr_calls;
};

static void rec_level(void *ctx, uint32_t gsi, bool level)
{
    struct env *e = ctx;
    assert_true(gsi < NGSI);
    /* The topology must only pass transitions on. */
    assert_true(e->irq.level[gsi] != level);
    e->irq.level[gsi] = level;
    e->irq.calls++;
}

static void rec_bar(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                    uint64_t new_addr, bool enabled)
{
    struct env *e = ctx;
    assert_int_equal(enabled, new_addr != PCI_BAR_UNMAPPED);
    assert_true(old_addr != new_addr);
    if (e->nev < MAX_EVENTS)
        e->ev[e->nev++] = (struct bar_event){f, bar, old_addr, new_addr, enabled};
}

static void rec_pam(void *ctx, const uint8_t pam[I440FX_PAM_COUNT])
{
    struct env *e = ctx;
    memcpy(e->pam, pam, I440FX_PAM_COUNT);
    e->pam_calls++;
}

static void rec_pirq(void *ctx, const uint8_t pirq[PIIX3_PIRQ_COUNT])
{
    struct env *e = ctx;
    memcpy(e->pirq, pirq, PIIX3_PIRQ_COUNT);
    e->pirq_calls++;
}

static void rec_reset(void *ctx, uint8_t rcr)
{
    struct env *e = ctx;
    e->rcr = rcr;
    e->rcr_calls++;
}

static uint64_t dummy_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque, (void)offset, (void)size;
    return 0;
}

static void dummy_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    (void)opaque, (void)offset, (void)size, (void)value;
}

static const struct io_ops dummy_ops = {dummy_read, dummy_write};

static const struct pci_path P_DEV = {0, 3, 0}, P_BRIDGE = {0, 6, 0}, P_BEHIND = {1, 0, 0};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->sink = (struct irq_sink){.ctx = e, .set_level = rec_level};
    struct pci_topology_hooks th = {.ctx = e, .bar_moved = rec_bar};
    assert_int_equal(pci_topology_init(&e->topo, &th, &e->sink), 0);
    struct pci_host_hooks hh = {
        .ctx = e, .pam_changed = rec_pam, .pirq_changed = rec_pirq, .reset_request = rec_reset};
    pci_host_init(&e->host, &e->topo, &hh);
    assert_int_equal(pci_host_add_chipset(&e->host), 0);

    pci_func_init(&e->dev, "dev", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&e->dev, 0x1af4, 0x1042);
    pci_func_set_class(&e->dev, 0x010000);
    assert_int_equal(pci_func_set_intx_pin(&e->dev, 1), 0);
    assert_int_equal(pci_set_bar(&e->dev, 0, PCI_BAR_IO, 0x100, false, &dummy_ops, e), 0);
    assert_int_equal(pci_set_bar(&e->dev, 1, PCI_BAR_MEM32, 0x1000, false, &dummy_ops, e), 0);
    assert_int_equal(pci_set_bar(&e->dev, 2, PCI_BAR_MEM64, 0x100000, true, &dummy_ops, e), 0);
    assert_int_equal(pci_topology_add(&e->topo, &P_DEV, &e->dev), 0);

    assert_int_equal(pci_bridge_init(&e->bridge, "bridge", 1), 0);
    assert_int_equal(pci_topology_add(&e->topo, &P_BRIDGE, &e->bridge.func), 0);

    pci_func_init(&e->behind, "behind", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&e->behind, 0x1af4, 0x1041);
    assert_int_equal(pci_func_set_intx_pin(&e->behind, 1), 0);
    assert_int_equal(pci_set_bar(&e->behind, 0, PCI_BAR_MEM32, 0x4000, false, &dummy_ops, e), 0);
    assert_int_equal(pci_topology_add(&e->topo, &P_BEHIND, &e->behind), 0);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    pci_topology_destroy(&e->topo);
    free(e);
    return 0;
}

/* ---- port and ECAM helpers ---- */

static uint32_t pin(struct env *e, uint16_t port, unsigned size)
{
    return (uint32_t)pci_host_pio_ops.read(&e->host, port - PCI_HOST_PIO_BASE, size);
}

static void pout(struct env *e, uint16_t port, unsigned size, uint32_t v)
{
    pci_host_pio_ops.write(&e->host, port - PCI_HOST_PIO_BASE, size, v);
}

static uint32_t cf8_addr(uint8_t bus, uint8_t dev, uint8_t fn, uint32_t reg)
{
    return PCI_HOST_CF8_ENABLE | (uint32_t)bus << 16 | (uint32_t)dev << 11 | (uint32_t)fn << 8 |
           (reg & 0xfc);
}

/* A config read through 0xCF8/0xCFC, as a guest does it. */
static uint32_t cfg_rd(struct env *e, uint8_t bus, uint8_t dev, uint8_t fn, uint32_t reg,
                       unsigned size)
{
    pout(e, 0xcf8, 4, cf8_addr(bus, dev, fn, reg));
    return pin(e, (uint16_t)(0xcfc + (reg & 3)), size);
}

static void cfg_wr(struct env *e, uint8_t bus, uint8_t dev, uint8_t fn, uint32_t reg, unsigned size,
                   uint32_t v)
{
    pout(e, 0xcf8, 4, cf8_addr(bus, dev, fn, reg));
    pout(e, (uint16_t)(0xcfc + (reg & 3)), size, v);
}

static uint64_t ecam_off(uint8_t bus, uint8_t dev, uint8_t fn, uint32_t reg)
{
    return (uint64_t)bus << 20 | (uint64_t)dev << 15 | (uint64_t)fn << 12 | reg;
}

static uint32_t ecam_rd(struct env *e, uint8_t bus, uint8_t dev, uint8_t fn, uint32_t reg,
                        unsigned size)
{
    return (uint32_t)pci_host_ecam_ops.read(&e->host, ecam_off(bus, dev, fn, reg), size);
}

/* ---- INTx mapping ---- */

static void test_intx_gsi_table(void **state)
{
    (void)state;
    assert_int_equal(pci_intx_gsi(0, 1), 16);
    assert_int_equal(pci_intx_gsi(3, 1), 19);
    assert_int_equal(pci_intx_gsi(4, 1), 16);
    assert_int_equal(pci_intx_gsi(4, 2), 17);
    assert_int_equal(pci_intx_gsi(5, 4), 16);
    assert_int_equal(pci_intx_gsi(7, 4), 18);
    assert_int_equal(pci_intx_gsi(31, 1), 19);
    assert_int_equal(pci_intx_gsi(3, 0), 0); /* no pin */
    assert_int_equal(pci_intx_gsi(3, 5), 0);

    assert_int_equal(pci_intx_swizzle(0, 1), 1);
    assert_int_equal(pci_intx_swizzle(1, 1), 2);
    assert_int_equal(pci_intx_swizzle(2, 3), 1);
    assert_int_equal(pci_intx_swizzle(3, 4), 3);
    assert_int_equal(pci_intx_swizzle(4, 2), 2);
    assert_int_equal(pci_intx_swizzle(4, 0), 0);
}

static void test_intx_routing_and_wired_or(void **state)
{
    struct env *e = *state;
    assert_int_equal(e->dev.intx.gsi, 19);    /* 0.3 INTA */
    assert_int_equal(e->behind.intx.gsi, 18); /* 1.0 INTA -> 0.6 INTA */

    /* Another function on GSI 19: 0.7 INTA -> (7 + 0) % 4 = 3. */
    struct pci_func other;
    pci_func_init(&other, "other", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&other, 0x1234, 0x5678);
    assert_int_equal(pci_func_set_intx_pin(&other, 1), 0);
    const struct pci_path p = {0, 7, 0};
    assert_int_equal(pci_topology_add(&e->topo, &p, &other), 0);
    assert_int_equal(other.intx.gsi, 19);
    assert_int_equal(pci_func_set_intx_pin(&other, 2), -EBUSY);

    pci_set_irq(&e->dev, true);
    assert_true(e->irq.level[19]);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_STATUS, 2) & PCI_STS_INTX, PCI_STS_INTX);
    pci_set_irq(&other, true);
    pci_set_irq(&e->dev, false);
    assert_true(e->irq.level[19]); /* still held by `other` */
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_STATUS, 2) & PCI_STS_INTX, 0);
    pci_set_irq(&other, false);
    assert_false(e->irq.level[19]);

    /* INTX_DISABLE masks the line but not the status bit. */
    pci_set_irq(&e->dev, true);
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_INTX_DISABLE);
    assert_false(e->irq.level[19]);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_STATUS, 1) & PCI_STS_INTX, PCI_STS_INTX);
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, 0);
    assert_true(e->irq.level[19]);
    pci_set_irq(&e->dev, true); /* no transition, no call */
    unsigned calls = e->irq.calls;
    pci_set_irq(&e->dev, true);
    assert_int_equal(e->irq.calls, calls);
    pci_set_irq(&e->dev, false);
    assert_false(e->irq.level[19]);

    /* Behind the bridge. */
    pci_set_irq(&e->behind, true);
    assert_true(e->irq.level[18]);
    pci_set_irq(&e->behind, false);
    assert_false(e->irq.level[18]);
}

static void test_intx_nested_swizzle(void **state)
{
    struct env *e = *state;
    /* Bridge at logical 1.2.0 -> logical bus 7, device at 7.3.0 INTA. */
    struct pci_bridge b2;
    struct pci_func d;
    assert_int_equal(pci_bridge_init(&b2, "b2", 7), 0);
    const struct pci_path pb = {1, 2, 0}, pd = {7, 3, 0};
    assert_int_equal(pci_topology_add(&e->topo, &pb, &b2.func), 0);
    pci_func_init(&d, "d", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&d, 0x1af4, 0x1000);
    assert_int_equal(pci_func_set_intx_pin(&d, 1), 0);
    assert_int_equal(pci_topology_add(&e->topo, &pd, &d), 0);
    /* INTA at dev 3 -> INTD on bus 1; at dev 2 -> INTB on bus 0; 0.6 INTB -> 19. */
    assert_int_equal(pci_intx_swizzle(3, 1), 4);
    assert_int_equal(pci_intx_swizzle(2, 4), 2);
    assert_int_equal(d.intx.gsi, pci_intx_gsi(6, 2));
    assert_int_equal(d.intx.gsi, 19);

    /* Firmware-style numbering: outer bridge 1..2, inner 2..2. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SECONDARY_BUS, 1, 1);
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 0xff);
    assert_int_equal(cfg_rd(e, 1, 2, 0, PCI_REG_VENDOR_ID, 2), PCI_BRIDGE_VENDOR_ID);
    cfg_wr(e, 1, 2, 0, PCI_REG_PRIMARY_BUS, 1, 1);
    cfg_wr(e, 1, 2, 0, PCI_REG_SECONDARY_BUS, 1, 2);
    cfg_wr(e, 1, 2, 0, PCI_REG_SUBORDINATE_BUS, 1, 2);
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 2);
    assert_int_equal(cfg_rd(e, 2, 3, 0, PCI_REG_VENDOR_ID, 4), 0x10001af4);
    assert_ptr_equal(pci_topology_lookup(&e->topo, 2, 3, 0), &d);
    /* The outer bridge's range no longer covers bus 3. */
    assert_null(pci_topology_lookup(&e->topo, 3, 3, 0));
    /* Shrinking the outer subordinate hides the inner bus. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 1);
    assert_int_equal(cfg_rd(e, 2, 3, 0, PCI_REG_VENDOR_ID, 4), 0xffffffff);
    pci_topology_destroy(&e->topo); /* before b2 and d go out of scope */
}

/* ---- mechanism #1 ---- */

static void test_cf8_latch(void **state)
{
    struct env *e = *state;
    pout(e, 0xcf8, 4, 0x80001234);
    assert_int_equal(pin(e, 0xcf8, 4), 0x80001234 & PCI_HOST_CF8_MASK);
    pout(e, 0xcf8, 4, 0xffffffff);
    assert_int_equal(pin(e, 0xcf8, 4), PCI_HOST_CF8_MASK); /* reserved bits read 0 */

    /* Byte and word writes do not latch (Linux's probe writes 0xCFB). */
    pout(e, 0xcf8, 4, 0x80000000);
    pout(e, 0xcfb, 1, 0x01);
    pout(e, 0xcf8, 1, 0x55);
    pout(e, 0xcf8, 2, 0x5555);
    pout(e, 0xcfa, 2, 0x5555);
    assert_int_equal(pin(e, 0xcf8, 4), 0x80000000);
    assert_int_equal(pin(e, 0xcf8, 1), 0xff);
    assert_int_equal(pin(e, 0xcfa, 2), 0xffff);

    /* Enable bit clear: the data port decodes nothing. */
    pout(e, 0xcf8, 4, cf8_addr(0, 0, 0, 0) & ~PCI_HOST_CF8_ENABLE);
    assert_int_equal(pin(e, 0xcfc, 4), 0xffffffff);
    assert_int_equal(pin(e, 0xcfc, 2), 0xffff);
    assert_int_equal(pin(e, 0xcfd, 1), 0xff);
    pout(e, 0xcf8, 4, cf8_addr(0, 3, 0, PCI_REG_COMMAND) & ~PCI_HOST_CF8_ENABLE);
    pout(e, 0xcfc, 2, PCI_CMD_MEM);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0);
    /* With it set, the same address works. */
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0, 4), 0x12378086);
}

static void test_cfc_sizes_and_offsets(void **state)
{
    struct env *e = *state;
    pout(e, 0xcf8, 4, cf8_addr(0, 0, 0, 0));
    assert_int_equal(pin(e, 0xcfc, 4), 0x12378086);
    assert_int_equal(pin(e, 0xcfc, 2), 0x8086);
    assert_int_equal(pin(e, 0xcfe, 2), 0x1237);
    assert_int_equal(pin(e, 0xcfc, 1), 0x86);
    assert_int_equal(pin(e, 0xcfd, 1), 0x80);
    assert_int_equal(pin(e, 0xcfe, 1), 0x37);
    assert_int_equal(pin(e, 0xcff, 1), 0x12);
    /* Misaligned shapes are not decoded. */
    assert_int_equal(pin(e, 0xcfd, 2), 0xffff);
    assert_int_equal(pin(e, 0xcfe, 4), 0xffffffff);
    assert_int_equal(pin(e, 0xcfa, 4), 0xffffffff);
    assert_int_equal(pci_host_pio_ops.read(&e->host, 4, 8), UINT64_MAX);
    pout(e, 0xcfd, 2, 0xffff); /* dropped */
    pout(e, 0xcfe, 4, 0xffffffff);
    assert_int_equal(pin(e, 0xcf8, 4), cf8_addr(0, 0, 0, 0));

    /* Register bits of the latch pick the dword; the port picks the byte. */
    assert_int_equal(cfg_rd(e, 0, 0, 0, PCI_REG_CLASS, 1), 0x00);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x0a, 2), 0x0600);
    assert_int_equal(cfg_rd(e, 0, 0, 0, PCI_REG_REVISION, 1), 0x02);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_DEVICE_ID, 2), 0x1042);
}

static void test_absent_functions(void **state)
{
    struct env *e = *state;
    assert_int_equal(cfg_rd(e, 0, 2, 0, 0, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 2, 0, 0, 2), 0xffff);
    assert_int_equal(cfg_rd(e, 0, 1, 1, 0, 4), 0xffffffff); /* no PIIX IDE */
    assert_int_equal(cfg_rd(e, 0, 1, 3, 0, 4), 0xffffffff); /* no PIIX PM */
    assert_int_equal(cfg_rd(e, 0, 31, 7, 0xfc, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 9, 0, 0, 0, 4), 0xffffffff); /* no such bus */
    cfg_wr(e, 0, 2, 0, PCI_REG_COMMAND, 2, 0xffff);         /* dropped */
    /* Direct entry point with malformed shapes. */
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 0, 0, 1, 2), 0xffff);
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 0, 0, 2, 4), 0xffffffff);
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 0, 0, 0, 3), 0xffffff);
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 32, 0, 0, 4), 0xffffffff);
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 0, 8, 0, 4), 0xffffffff);
    assert_int_equal(pci_topology_cfg_read(&e->topo, 0, 0, 0, 4096, 4), 0xffffffff);
    pci_topology_cfg_write(&e->topo, 0, 3, 0, PCI_REG_COMMAND + 1, 2, 0xffff);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0);
}

/* ---- header registers ---- */

static void test_command_mask(void **state)
{
    struct env *e = *state;
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, 0xffff);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0x0547);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), PCI_CMD_WRITABLE);
    assert_true(pci_func_bus_master(&e->dev));
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 1, 0x03); /* low byte only: PARITY, BM off */
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0x0503);
    assert_false(pci_func_bus_master(&e->dev));
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, 0);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0);

    /* IDs, class, header type and BIST are read-only. */
    cfg_wr(e, 0, 3, 0, 0, 4, 0);
    cfg_wr(e, 0, 3, 0, 0x08, 4, 0);
    cfg_wr(e, 0, 3, 0, 0x0c, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0, 4), 0x10421af4);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x08, 4), 0x01000000);
    /* Cache line size is read/write; latency, header type, BIST are not. */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x0c, 4), 0x000000ff);
    /* Interrupt line read/write, pin read-only. */
    cfg_wr(e, 0, 3, 0, PCI_REG_INT_LINE, 2, 0xff0b);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_INT_LINE, 2), 0x010b);
}

static void test_status_w1c(void **state)
{
    (void)state;
    struct pci_topology t;
    struct pci_func f;
    assert_int_equal(pci_topology_init(&t, NULL, NULL), 0);
    pci_func_init(&f, "f", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&f, 0x1af4, 0x1000);
    assert_true(pci_add_capability(&f, 0x09, 4) > 0);
    pci_cfg_poke(&f, PCI_REG_STATUS, 2,
                 PCI_STS_CAP_LIST | PCI_STS_RCV_MABORT | PCI_STS_SIG_TABORT | PCI_STS_DET_PARITY);
    const struct pci_path p = {0, 5, 0};
    assert_int_equal(pci_topology_add(&t, &p, &f), 0);

    uint16_t all = PCI_STS_CAP_LIST | PCI_STS_RCV_MABORT | PCI_STS_SIG_TABORT | PCI_STS_DET_PARITY;
    assert_int_equal(pci_topology_cfg_read(&t, 0, 5, 0, PCI_REG_STATUS, 2), all);
    pci_topology_cfg_write(&t, 0, 5, 0, PCI_REG_STATUS, 2, 0); /* writing 0 keeps */
    assert_int_equal(pci_topology_cfg_read(&t, 0, 5, 0, PCI_REG_STATUS, 2), all);
    pci_topology_cfg_write(&t, 0, 5, 0, PCI_REG_STATUS, 2, PCI_STS_RCV_MABORT);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 5, 0, PCI_REG_STATUS, 2),
                     all & ~PCI_STS_RCV_MABORT);
    /* Ones on read-only bits (CAP_LIST, INTX) change nothing. */
    pci_topology_cfg_write(&t, 0, 5, 0, PCI_REG_STATUS, 1, 0xff);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 5, 0, PCI_REG_STATUS, 2),
                     all & ~PCI_STS_RCV_MABORT);
    /* A dword write to COMMAND|STATUS clears status bits given as 1. */
    pci_topology_cfg_write(&t, 0, 5, 0, PCI_REG_COMMAND, 4, 0xffff0000u);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 5, 0, PCI_REG_STATUS, 2), PCI_STS_CAP_LIST);
    pci_topology_destroy(&t);
}

/* ---- BARs ---- */

static void test_bar_sizing(void **state)
{
    struct env *e = *state;
    /* Flags before sizing. */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x10, 4), 0x1);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x14, 4), 0x0);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x18, 4), 0xc);

    for (uint32_t reg = 0x10; reg < 0x28; reg += 4)
        cfg_wr(e, 0, 3, 0, reg, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x10, 4), 0xffffff01); /* IO, 0x100 */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x14, 4), 0xfffff000); /* MEM32, 0x1000 */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x18, 4), 0xfff0000c); /* MEM64 pf, low */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x1c, 4), 0xffffffff); /* MEM64 high */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x20, 4), 0);          /* unused */
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x24, 4), 0);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_ROM, 4), 0); /* no ROM */
    cfg_wr(e, 0, 3, 0, PCI_REG_ROM, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_ROM, 4), 0);

    /* Decoded sizes as a guest computes them. */
    assert_int_equal(~(cfg_rd(e, 0, 3, 0, 0x10, 4) & ~3u) + 1, 0x100);
    assert_int_equal(~(cfg_rd(e, 0, 3, 0, 0x14, 4) & ~0xfu) + 1, 0x1000);
    uint64_t m64 = (cfg_rd(e, 0, 3, 0, 0x18, 4) & ~0xfull) | (uint64_t)cfg_rd(e, 0, 3, 0, 0x1c, 4)
                                                                 << 32;
    assert_int_equal(~m64 + 1, 0x100000);
    assert_int_equal(e->nev, 0); /* decoding was off throughout */

    cfg_wr(e, 0, 3, 0, 0x10, 4, 0xc001);
    cfg_wr(e, 0, 3, 0, 0x18, 4, 0x80000000);
    cfg_wr(e, 0, 3, 0, 0x1c, 4, 0x1);
    assert_int_equal(pci_bar_address(&e->dev, 0), 0xc000);
    assert_int_equal(pci_bar_address(&e->dev, 2), 0x180000000ull);
    /* Bits below the size do not stick. */
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfebf1234);
    assert_int_equal(cfg_rd(e, 0, 3, 0, 0x14, 4), 0xfebf1000);
}

static void test_bar_moved(void **state)
{
    struct env *e = *state;
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfebf0000);
    assert_int_equal(e->nev, 0);

    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    assert_int_equal(e->nev, 1);
    assert_ptr_equal(e->ev[0].f, &e->dev);
    assert_int_equal(e->ev[0].bar, 1);
    assert_int_equal(e->ev[0].old_addr, PCI_BAR_UNMAPPED);
    assert_int_equal(e->ev[0].new_addr, 0xfebf0000);
    assert_true(e->ev[0].enabled);
    assert_int_equal(e->dev.bars[1].mapped, 0xfebf0000);

    /* Moving while enabled. */
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfebe0000);
    assert_int_equal(e->nev, 2);
    assert_int_equal(e->ev[1].old_addr, 0xfebf0000);
    assert_int_equal(e->ev[1].new_addr, 0xfebe0000);
    /* Writing the same address again is no change. */
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfebe0000);
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    assert_int_equal(e->nev, 2);

    /* IO enable maps the IO BAR only once it has an address. */
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_IO);
    assert_int_equal(e->nev, 2);
    cfg_wr(e, 0, 3, 0, 0x10, 4, 0xc000);
    assert_int_equal(e->nev, 3);
    assert_int_equal(e->ev[2].bar, 0);
    assert_int_equal(e->ev[2].new_addr, 0xc000);
    /* An I/O BAR past 64 KiB is not mapped. */
    cfg_wr(e, 0, 3, 0, 0x10, 4, 0x10000);
    assert_int_equal(e->nev, 4);
    assert_int_equal(e->ev[3].old_addr, 0xc000);
    assert_int_equal(e->ev[3].new_addr, PCI_BAR_UNMAPPED);
    assert_false(e->ev[3].enabled);
    cfg_wr(e, 0, 3, 0, 0x10, 4, 0xff00); /* ends exactly at 64 KiB: mapped */
    assert_int_equal(e->nev, 5);
    assert_int_equal(e->ev[4].new_addr, 0xff00);

    /* 64-bit BAR: each dword write is a move. */
    cfg_wr(e, 0, 3, 0, 0x18, 4, 0x00100000);
    assert_int_equal(e->nev, 6);
    assert_int_equal(e->ev[5].bar, 2);
    assert_int_equal(e->ev[5].new_addr, 0x00100000);
    cfg_wr(e, 0, 3, 0, 0x1c, 4, 0x8);
    assert_int_equal(e->nev, 7);
    assert_int_equal(e->ev[6].old_addr, 0x00100000);
    assert_int_equal(e->ev[6].new_addr, 0x800100000ull);

    /* Disabling memory decode unmaps both memory BARs, not the IO one. */
    e->nev = 0;
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_IO);
    assert_int_equal(e->nev, 2);
    assert_int_equal(e->ev[0].bar, 1);
    assert_int_equal(e->ev[0].old_addr, 0xfebe0000);
    assert_false(e->ev[0].enabled);
    assert_int_equal(e->ev[1].bar, 2);
    assert_int_equal(e->ev[1].old_addr, 0x800100000ull);
    /* Address writes while disabled: silent. */
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfe000000);
    assert_int_equal(e->nev, 2);
    /* Address 0 counts as unassigned. */
    cfg_wr(e, 0, 3, 0, 0x10, 4, 0);
    assert_int_equal(e->nev, 3);
    assert_int_equal(e->ev[2].new_addr, PCI_BAR_UNMAPPED);
    /* Re-enable: maps at the address written while disabled. */
    cfg_wr(e, 0, 3, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    assert_int_equal(e->nev, 5);
    assert_int_equal(e->ev[3].new_addr, 0xfe000000);

    /* Sizing with decoding on moves the BAR to the top and back. */
    e->nev = 0;
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xffffffff);
    cfg_wr(e, 0, 3, 0, 0x14, 4, 0xfe000000);
    assert_int_equal(e->nev, 2);
    assert_int_equal(e->ev[0].new_addr, 0xfffff000);
    assert_int_equal(e->ev[1].new_addr, 0xfe000000);
}

static void test_set_bar_errors(void **state)
{
    struct env *e = *state;
    struct pci_func f;
    pci_func_init(&f, "f", PCI_HEADER_TYPE_NORMAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_IO, 0x180, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_IO, 2, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_IO, 0x20000, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_IO, 0x100, true, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_MEM32, 8, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_MEM32, 1ull << 32, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 5, PCI_BAR_MEM64, 0x1000, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 6, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 0, PCI_BAR_NONE, 0x1000, false, NULL, NULL), -EINVAL);
    assert_int_equal(pci_set_bar(&f, 4, PCI_BAR_MEM64, 1ull << 40, false, NULL, NULL), 0);
    assert_int_equal(pci_set_bar(&f, 5, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), -EEXIST);
    assert_int_equal(pci_set_bar(&f, 4, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), -EEXIST);
    assert_int_equal(pci_set_bar(&f, 3, PCI_BAR_MEM64, 0x1000, false, NULL, NULL), -EEXIST);
    assert_int_equal(pci_set_bar(&f, 3, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), 0);
    /* A 1 TiB BAR: the low dword has no writable address bits. */
    assert_int_equal(f.wmask[0x20] | f.wmask[0x21] | f.wmask[0x22] | f.wmask[0x23], 0);
    assert_int_equal(pci_cfg_peek(&f, 0x24, 4) == 0 && f.wmask[0x24] == 0 && f.wmask[0x25] == 0xff,
                     true);
    /* Bridges have two BAR slots. */
    struct pci_bridge b;
    assert_int_equal(pci_bridge_init(&b, "b", 9), 0);
    assert_int_equal(pci_set_bar(&b.func, 2, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), -EINVAL);
    /* After add: refused. */
    assert_int_equal(pci_set_bar(&e->dev, 4, PCI_BAR_MEM32, 0x1000, false, NULL, NULL), -EBUSY);
    assert_int_equal(pci_add_capability(&e->dev, 0x09, 4), -EBUSY);
}

/* ---- capabilities and hooks ---- */

struct hook_rec {
    uint16_t last_off;
    unsigned last_size;
    uint32_t last_value;
    unsigned reads, writes;
    uint32_t reg; /* a register the hook owns at its first dword */
};

static uint32_t hook_read(void *opaque, struct pci_func *f, uint16_t off, unsigned size)
{
    struct hook_rec *r = opaque;
    (void)f;
    r->reads++;
    r->last_off = off, r->last_size = size;
    return 0xa0a0a0a0u | off;
}

static void hook_write(void *opaque, struct pci_func *f, uint16_t off, unsigned size, uint32_t v)
{
    struct hook_rec *r = opaque;
    (void)f;
    r->writes++;
    r->last_off = off, r->last_size = size, r->last_value = v;
}

static const struct pci_cfg_ops hook_ops = {hook_read, hook_write};

static void test_capabilities_and_hooks(void **state)
{
    (void)state;
    struct pci_topology t;
    struct pci_func f;
    struct hook_rec rec = {0};
    assert_int_equal(pci_topology_init(&t, NULL, NULL), 0);
    pci_func_init(&f, "caps", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&f, 0x1af4, 0x1042);
    assert_int_equal(pci_add_capability(&f, 0x09, 1), -EINVAL);
    assert_int_equal(pci_add_capability(&f, 0x09, 16), 0x40);
    assert_int_equal(pci_add_capability(&f, 0x11, 12), 0x50);
    assert_int_equal(pci_add_capability(&f, 0x05, 10), 0x5c); /* rounded to a dword */
    assert_int_equal(pci_add_capability(&f, 0x09, 0x100), -ENOSPC);
    pci_cfg_poke(&f, 0x42, 1, 16); /* cap_len of the vendor cap */
    pci_cfg_set_mask(&f, 0x48, 4, 0x0000ffff, 0);
    assert_int_equal(pci_add_cfg_hook(&f, 0x20, 4, &hook_ops, &rec), -EINVAL); /* header */
    assert_int_equal(pci_add_cfg_hook(&f, 0x56, 6, &hook_ops, &rec), 0);
    assert_int_equal(pci_add_cfg_hook(&f, 0x58, 4, &hook_ops, &rec), -EEXIST);
    assert_int_equal(pci_add_cfg_hook(&f, 0xfc, 8, &hook_ops, &rec), -EINVAL);
    const struct pci_path p = {0, 4, 0};
    assert_int_equal(pci_topology_add(&t, &p, &f), 0);
    assert_int_equal(pci_add_cfg_hook(&f, 0x80, 4, &hook_ops, &rec), -EBUSY);

    /* Walk the list as a guest does. */
    assert_true(pci_topology_cfg_read(&t, 0, 4, 0, PCI_REG_STATUS, 2) & PCI_STS_CAP_LIST);
    uint8_t want_id[] = {0x09, 0x11, 0x05}, want_off[] = {0x40, 0x50, 0x5c};
    uint32_t ptr = pci_topology_cfg_read(&t, 0, 4, 0, PCI_REG_CAP_PTR, 1);
    unsigned n = 0;
    while (ptr && n < 8) {
        assert_int_equal(ptr, want_off[n]);
        assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, ptr, 1), want_id[n]);
        ptr = pci_topology_cfg_read(&t, 0, 4, 0, ptr + 1, 1);
        n++;
    }
    assert_int_equal(n, 3);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x42, 1), 16);

    /* Capability headers and bodies are read-only unless given masks. */
    pci_topology_cfg_write(&t, 0, 4, 0, 0x40, 4, 0xffffffff);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x40, 4), 0x00105009);
    pci_topology_cfg_write(&t, 0, 4, 0, 0x48, 4, 0xffffffff);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x48, 4), 0x0000ffff);
    pci_topology_cfg_write(&t, 0, 4, 0, PCI_REG_CAP_PTR, 1, 0);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, PCI_REG_CAP_PTR, 1), 0x40);

    /* Accesses inside the hook reach it whole, with absolute offsets. */
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x58, 4), 0xa0a0a0a0u | 0x58);
    assert_int_equal(rec.last_off, 0x58);
    assert_int_equal(rec.last_size, 4);
    pci_topology_cfg_write(&t, 0, 4, 0, 0x56, 2, 0xbeef);
    assert_int_equal(rec.writes, 1);
    assert_int_equal(rec.last_off, 0x56);
    assert_int_equal(rec.last_value, 0xbeef);
    /* A dword straddling the hook's start is split into bytes. */
    rec.reads = 0;
    uint32_t v = pci_topology_cfg_read(&t, 0, 4, 0, 0x54, 4);
    assert_int_equal(rec.reads, 2);
    assert_int_equal(v, 0xf7f60000); /* two stored zero bytes, two hook bytes */
    rec.writes = 0;
    pci_topology_cfg_write(&t, 0, 4, 0, 0x54, 4, 0x12345678);
    assert_int_equal(rec.writes, 2);
    assert_int_equal(rec.last_off, 0x57);
    assert_int_equal(rec.last_size, 1);
    assert_int_equal(rec.last_value, 0x12);
    rec.writes = 0;
    pci_topology_cfg_write(&t, 0, 4, 0, 0x50, 4, 0x11223344); /* no hook bytes */
    assert_int_equal(rec.writes, 0);
    /* A byte after the hook is default storage again. */
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x5c, 1), 0x05);
    /* Past the 256-byte space: all ones. */
    assert_int_equal(pci_topology_cfg_read(&t, 0, 4, 0, 0x100, 4), 0xffffffff);
    pci_topology_destroy(&t);
}

static void test_extended_config(void **state)
{
    struct env *e = *state;
    (void)e;
    struct pci_topology t;
    struct pci_func f;
    assert_int_equal(pci_topology_init(&t, NULL, NULL), 0);
    pci_func_init(&f, "ext", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&f, 0x1b36, 0x0010);
    pci_func_enable_extended(&f);
    pci_cfg_set_mask(&f, 0xffc, 4, 0xffffffff, 0);
    const struct pci_path p = {0, 2, 0};
    assert_int_equal(pci_topology_add(&t, &p, &f), 0);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 2, 0, 0x100, 4), 0); /* empty ext list */
    pci_topology_cfg_write(&t, 0, 2, 0, 0xffc, 4, 0x12345678);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 2, 0, 0xffc, 4), 0x12345678);
    assert_int_equal(pci_topology_cfg_read(&t, 0, 2, 0, 0xffe, 2), 0x1234);
    pci_topology_destroy(&t);
}

/* ---- chipset ---- */

static void test_chipset(void **state)
{
    struct env *e = *state;
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0, 4), 0x12378086);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x08, 4), 0x06000002);
    assert_int_equal(cfg_rd(e, 0, 0, 0, PCI_REG_HEADER_TYPE, 1), 0x00);
    assert_int_equal(cfg_rd(e, 0, 0, 0, PCI_REG_SUBSYS_VENDOR, 4), 0x11001af4);
    assert_int_equal(cfg_rd(e, 0, 1, 0, 0, 4), 0x70008086);
    assert_int_equal(cfg_rd(e, 0, 1, 0, 0x08, 4), 0x06010000);
    assert_int_equal(cfg_rd(e, 0, 1, 0, PCI_REG_HEADER_TYPE, 1), 0x80);

    /* SeaBIOS's make_bios_writable: PAM1..6 = 0x33, PAM0 = 0x30. */
    for (unsigned i = 1; i < I440FX_PAM_COUNT; i++)
        cfg_wr(e, 0, 0, 0, I440FX_PAM0 + i, 1, 0x33);
    cfg_wr(e, 0, 0, 0, I440FX_PAM0, 1, 0x30);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x58, 4), 0x33333000);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x5c, 4), 0x33333333);
    assert_int_equal(e->pam_calls, 7);
    assert_int_equal(e->pam[0], 0x30);
    assert_int_equal(e->pam[6], 0x33);
    /* make_bios_readonly: 0x11 / 0x10; reserved bits never stick. */
    cfg_wr(e, 0, 0, 0, 0x58, 4, 0x111110ff);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x58, 4), 0x11111000);
    assert_int_equal(e->pam_calls, 8);
    cfg_wr(e, 0, 0, 0, 0x58, 4, 0x111110ff); /* same values: no call */
    assert_int_equal(e->pam_calls, 8);
    cfg_wr(e, 0, 0, 0, 0x5c, 2, 0xffff);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x5c, 2), 0x3333);
    /* SMRAM: bits 6:3 writable, 2:0 fixed at 010. */
    assert_int_equal(cfg_rd(e, 0, 0, 0, I440FX_SMRAM, 1), 0x02);
    cfg_wr(e, 0, 0, 0, I440FX_SMRAM, 1, 0xff);
    assert_int_equal(cfg_rd(e, 0, 0, 0, I440FX_SMRAM, 1), 0x7a);
    cfg_wr(e, 0, 0, 0, I440FX_SMRAM, 1, 0x00);
    assert_int_equal(cfg_rd(e, 0, 0, 0, I440FX_SMRAM, 1), 0x02);
    /* Other host bridge registers stay read-only. */
    cfg_wr(e, 0, 0, 0, 0x50, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x50, 4), 0);

    /* PIIX3 PIRQ routing as SeaBIOS programs it (10, 10, 11, 11). */
    assert_int_equal(cfg_rd(e, 0, 1, 0, PIIX3_PIRQRC, 4), 0x80808080);
    cfg_wr(e, 0, 1, 0, PIIX3_PIRQRC, 4, 0x0b0b0a0a);
    assert_int_equal(cfg_rd(e, 0, 1, 0, PIIX3_PIRQRC, 4), 0x0b0b0a0a);
    assert_int_equal(e->pirq_calls, 1);
    assert_int_equal(e->pirq[3], 0x0b);
    cfg_wr(e, 0, 1, 0, PIIX3_PIRQRC + 1, 1, 0xf5);
    assert_int_equal(cfg_rd(e, 0, 1, 0, PIIX3_PIRQRC + 1, 1), 0x85);

    /* Reset control at 0xCF9. */
    pout(e, 0xcf8, 4, 0x80000000);
    pout(e, 0xcf9, 1, 0x02);
    assert_int_equal(e->rcr_calls, 0);
    assert_int_equal(pin(e, 0xcf9, 1), 0x02);
    pout(e, 0xcf9, 1, 0x06);
    assert_int_equal(e->rcr_calls, 1);
    assert_int_equal(e->rcr, 0x06);
    assert_int_equal(pin(e, 0xcf8, 4), 0x80000000); /* latch untouched */

    /* Reset: PAM, SMRAM and PIRQ back to their defaults, hooks told. */
    pci_topology_reset(&e->topo);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0x58, 4), 0);
    assert_int_equal(e->pam[0], 0);
    assert_int_equal(e->pam_calls, 9);
    assert_int_equal(cfg_rd(e, 0, 1, 0, PIIX3_PIRQRC, 4), 0x80808080);
    assert_int_equal(e->pirq[0], 0x80);
    assert_int_equal(cfg_rd(e, 0, 1, 0, PCI_REG_HEADER_TYPE, 1), 0x80);
}

/* ---- topology ---- */

static void test_topology_add_errors(void **state)
{
    struct env *e = *state;
    struct pci_func f, g, h;
    struct pci_bridge b;
    pci_func_init(&f, "f", PCI_HEADER_TYPE_NORMAL);
    pci_func_init(&g, "g", PCI_HEADER_TYPE_NORMAL);
    pci_func_init(&h, "h", PCI_HEADER_TYPE_NORMAL);
    const struct pci_path taken = {0, 3, 0}, nobus = {4, 0, 0}, bad_dev = {0, 32, 0},
                          bad_fn = {0, 2, 8}, f1 = {0, 9, 2}, f0 = {0, 9, 0};
    assert_int_equal(pci_topology_add(&e->topo, &taken, &f), -EEXIST);
    assert_int_equal(pci_topology_add(&e->topo, &nobus, &f), -ENOENT);
    assert_int_equal(pci_topology_add(&e->topo, &bad_dev, &f), -EINVAL);
    assert_int_equal(pci_topology_add(&e->topo, &bad_fn, &f), -EINVAL);
    assert_int_equal(pci_topology_add(&e->topo, &P_BRIDGE, &f), -EEXIST);
    assert_int_equal(pci_topology_add(&e->topo, &P_BEHIND, &f), -EEXIST);
    /* A bridge whose downstream bus exists already. */
    assert_int_equal(pci_bridge_init(&b, "b", 1), 0);
    const struct pci_path pb = {0, 10, 0};
    assert_int_equal(pci_topology_add(&e->topo, &pb, &b.func), -EEXIST);
    assert_int_equal(pci_bridge_init(&b, "b", 0), -EINVAL);

    /* Function 2 first, then function 0: the multifunction bit appears. */
    pci_func_set_ids(&f, 0x1af4, 0x1000);
    pci_func_set_ids(&g, 0x1af4, 0x1001);
    assert_int_equal(pci_topology_add(&e->topo, &f1, &f), 0);
    assert_int_equal(pci_topology_add(&e->topo, &f1, &h), -EEXIST);
    assert_int_equal(pci_topology_add(&e->topo, &f0, &f), -EINVAL); /* already added */
    assert_int_equal(pci_topology_add(&e->topo, &f0, &g), 0);
    assert_int_equal(cfg_rd(e, 0, 9, 0, PCI_REG_HEADER_TYPE, 1), 0x80);
    assert_int_equal(cfg_rd(e, 0, 9, 2, PCI_REG_HEADER_TYPE, 1), 0x00);
    assert_ptr_equal(pci_topology_get(&e->topo, &f1), &f);
    pci_topology_reset(&e->topo);
    assert_int_equal(cfg_rd(e, 0, 9, 0, PCI_REG_HEADER_TYPE, 1), 0x80);
    pci_topology_destroy(&e->topo);
}

static void test_bridge_routing_and_renumbering(void **state)
{
    struct env *e = *state;
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0, 4), 0x00011b36);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x08, 4), 0x06040000);
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_HEADER_TYPE, 1), 0x01);
    /* Unprogrammed bridge: nothing behind it is reachable. */
    for (unsigned bus = 1; bus < 256; bus++)
        assert_null(pci_topology_lookup(&e->topo, (uint8_t)bus, 0, 0));

    /* Firmware numbers the bridge's bus 1. */
    cfg_wr(e, 0, 6, 0, PCI_REG_PRIMARY_BUS, 1, 0);
    cfg_wr(e, 0, 6, 0, PCI_REG_SECONDARY_BUS, 1, 1);
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 1);
    assert_int_equal(cfg_rd(e, 1, 0, 0, 0, 4), 0x10411af4);
    assert_int_equal(ecam_rd(e, 1, 0, 0, 0, 4), 0x10411af4);
    assert_int_equal(cfg_rd(e, 1, 1, 0, 0, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 2, 0, 0, 0, 4), 0xffffffff);

    /* Renumbered to 5 (as SeaBIOS/Linux may): found at 5, gone from 1. */
    cfg_wr(e, 0, 6, 0, 0x18, 4, 0x00050500); /* primary 0, secondary 5, subordinate 5 */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x18, 4), 0x00050500);
    assert_int_equal(cfg_rd(e, 1, 0, 0, 0, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 5, 0, 0, 0, 4), 0x10411af4);
    assert_ptr_equal(pci_topology_lookup(&e->topo, 5, 0, 0), &e->behind);
    /* The logical path is unchanged. */
    assert_ptr_equal(pci_topology_get(&e->topo, &P_BEHIND), &e->behind);

    /* Configure and map a BAR through the bridge. */
    cfg_wr(e, 5, 0, 0, 0x10, 4, 0xfd000000);
    cfg_wr(e, 5, 0, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    assert_int_equal(e->nev, 1);
    assert_ptr_equal(e->ev[0].f, &e->behind);
    assert_int_equal(e->ev[0].new_addr, 0xfd000000);

    /* A range with subordinate < secondary claims nothing. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 4);
    assert_int_equal(cfg_rd(e, 5, 0, 0, 0, 4), 0xffffffff);
    /* A wide range: only the secondary bus itself is type 0. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 0xff);
    assert_int_equal(cfg_rd(e, 5, 0, 0, 0, 4), 0x10411af4);
    assert_int_equal(cfg_rd(e, 6, 0, 0, 0, 4), 0xffffffff);
    /* Bus 0 never goes through the bridge, even if the guest says so. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SECONDARY_BUS, 1, 0);
    assert_int_equal(cfg_rd(e, 0, 0, 0, 0, 4), 0x12378086);

    /* Reset: bridge unprogrammed, BAR unmapped. */
    cfg_wr(e, 0, 6, 0, PCI_REG_SECONDARY_BUS, 1, 5);
    e->nev = 0;
    pci_topology_reset(&e->topo);
    assert_int_equal(e->nev, 1);
    assert_int_equal(e->ev[0].old_addr, 0xfd000000);
    assert_false(e->ev[0].enabled);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x18, 4), 0);
    assert_int_equal(cfg_rd(e, 5, 0, 0, 0, 4), 0xffffffff);
}

static void test_bridge_registers(void **state)
{
    struct env *e = *state;
    /* Everything to all ones, then read back what sticks. */
    for (uint32_t reg = 0x10; reg < 0x40; reg += 4)
        cfg_wr(e, 0, 6, 0, reg, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x10, 4), 0); /* no BARs */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x14, 4), 0);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x18, 4), 0x00ffffff); /* buses; latency 0 */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x1c, 2), 0xf0f0);     /* I/O, 16-bit */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x1e, 2), 0);          /* sec. status */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x20, 4), 0xfff0fff0); /* memory */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x24, 4), 0xfff1fff1); /* prefetchable, 64-bit */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x28, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x2c, 4), 0xffffffff);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x30, 4), 0); /* I/O upper 16 */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x34, 1), 0); /* no capabilities */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x38, 4), 0); /* no ROM */
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x3c, 4), 0x007f00ff);

    /* Realistic windows round trip and decode. */
    cfg_wr(e, 0, 6, 0, 0x1c, 2, 0xd0c0);
    cfg_wr(e, 0, 6, 0, 0x20, 4, 0xfe70fe00);
    cfg_wr(e, 0, 6, 0, 0x24, 4, 0x0011fff1);
    cfg_wr(e, 0, 6, 0, 0x28, 4, 0x8);
    cfg_wr(e, 0, 6, 0, 0x2c, 4, 0x8);
    cfg_wr(e, 0, 6, 0, PCI_REG_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_ISA | PCI_BRIDGE_CTL_VGA);
    assert_int_equal(cfg_rd(e, 0, 6, 0, 0x1c, 2), 0xd0c0);
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_BRIDGE_CONTROL, 2), 0x000c);
    struct pci_bridge_windows w;
    pci_bridge_windows(&e->bridge, &w);
    assert_int_equal(w.io_base, 0xc000);
    assert_int_equal(w.io_limit, 0xdfff);
    assert_int_equal(w.mem_base, 0xfe000000);
    assert_int_equal(w.mem_limit, 0xfe7fffff);
    assert_int_equal(w.pref_base, 0x8fff00000ull);
    assert_int_equal(w.pref_limit, 0x8001fffffull);

    /* Secondary status: W1C. */
    e->bridge.func.cfg[PCI_REG_SEC_STATUS + 1] = 0x20; /* received master abort */
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_SEC_STATUS, 2), 0x2000);
    cfg_wr(e, 0, 6, 0, PCI_REG_SEC_STATUS, 2, 0x2000);
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_SEC_STATUS, 2), 0);
    /* Command: forwarding bits writable. */
    cfg_wr(e, 0, 6, 0, PCI_REG_COMMAND, 2, 0xffff);
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_COMMAND, 2), 0x0547);
    assert_int_equal(cfg_rd(e, 0, 6, 0, PCI_REG_INT_PIN, 1), 0);
}

static void test_ecam_matches_cf8(void **state)
{
    struct env *e = *state;
    cfg_wr(e, 0, 6, 0, PCI_REG_SECONDARY_BUS, 1, 2);
    cfg_wr(e, 0, 6, 0, PCI_REG_SUBORDINATE_BUS, 1, 2);
    static const uint8_t where[][3] = {{0, 0, 0}, {0, 1, 0}, {0, 3, 0}, {0, 6, 0},
                                       {2, 0, 0}, {0, 2, 0}, {3, 0, 0}, {0, 1, 1}};
    for (size_t w = 0; w < sizeof(where) / sizeof(where[0]); w++) {
        for (uint32_t reg = 0; reg < 0x100; reg++) {
            for (unsigned size = 1; size <= 4; size *= 2) {
                if (reg % size)
                    continue;
                uint8_t b = where[w][0], d = where[w][1], fn = where[w][2];
                assert_int_equal(cfg_rd(e, b, d, fn, reg, size), ecam_rd(e, b, d, fn, reg, size));
            }
        }
    }
    /* Writes through ECAM land in the same registers. */
    pci_host_ecam_ops.write(&e->host, ecam_off(0, 3, 0, PCI_REG_INT_LINE), 1, 0x0b);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_INT_LINE, 1), 0x0b);
    /* Extended offsets of a conventional function, and bad shapes. */
    assert_int_equal(ecam_rd(e, 0, 0, 0, 0x100, 4), 0xffffffff);
    assert_int_equal(ecam_rd(e, 0, 0, 0, 0x1, 2), 0xffff);
    assert_int_equal(pci_host_ecam_ops.read(&e->host, 0, 8), UINT64_MAX);
    assert_int_equal(pci_host_ecam_ops.read(&e->host, PCI_HOST_ECAM_SIZE, 4), 0xffffffff);
    pci_host_ecam_ops.write(&e->host, PCI_HOST_ECAM_SIZE + 4, 4, 0);
    pci_host_ecam_ops.write(&e->host, ecam_off(0, 3, 0, 4), 8, UINT64_MAX);
    assert_int_equal(cfg_rd(e, 0, 3, 0, PCI_REG_COMMAND, 2), 0);
}

/* ---- hostile guest ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: fixed seed, reproducible. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Replays bar_moved events onto a shadow map and checks each is consistent. */
struct shadow {
    struct pci_func *f[4];
    uint64_t mapped[4][PCI_MAX_BARS];
    unsigned events;
};

static void shadow_bar(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                       uint64_t new_addr, bool enabled)
{
    struct shadow *s = ctx;
    s->events++;
    assert_int_equal(enabled, new_addr != PCI_BAR_UNMAPPED);
    assert_true(bar < PCI_MAX_BARS);
    for (unsigned i = 0; i < 4; i++) {
        if (s->f[i] == f) {
            assert_int_equal(s->mapped[i][bar], old_addr);
            assert_true(old_addr != new_addr);
            s->mapped[i][bar] = new_addr;
            return;
        }
    }
    fail_msg("bar_moved for an unknown function");
}

static void check_consistent(struct shadow *s)
{
    static const uint16_t ids[4][2] = {
        {0x8086, 0x1237}, {0x1af4, 0x1042}, {0x1b36, 0x0001}, {0x1af4, 0x1041}};
    for (unsigned i = 0; i < 4; i++) {
        struct pci_func *f = s->f[i];
        assert_int_equal(pci_cfg_peek(f, 0, 2), ids[i][0]);
        assert_int_equal(pci_cfg_peek(f, 2, 2), ids[i][1]);
        /* Read-only bytes still hold their reset value (status INTX aside). */
        for (unsigned o = 0; o < f->cfg_size; o++) {
            if (f->wmask[o] == 0 && f->w1cmask[o] == 0)
                assert_int_equal(f->cfg[o], f->reset_cfg[o]);
        }
        uint16_t cmd = (uint16_t)pci_cfg_peek(f, PCI_REG_COMMAND, 2);
        assert_int_equal(cmd & ~PCI_CMD_WRITABLE, 0);
        for (unsigned b = 0; b < f->nbars; b++) {
            assert_int_equal(s->mapped[i][b], f->bars[b].mapped);
            if (f->bars[b].mapped == PCI_BAR_UNMAPPED)
                continue;
            assert_int_equal(f->bars[b].mapped, pci_bar_address(f, b));
            assert_int_equal(f->bars[b].mapped % f->bars[b].size, 0);
        }
    }
}

/* Targets and values a guest would use, plus some noise. */
static void pick_target(uint8_t *bus, uint8_t *dev, uint8_t *fn, uint32_t *reg)
{
    static const uint8_t buses[] = {0, 0, 0, 0, 1, 5};
    static const uint8_t devs[] = {3, 3, 3, 6, 0, 1};
    static const uint16_t regs[] = {0x04, 0x04, 0x06, 0x10, 0x14, 0x18, 0x1c, 0x18,
                                    0x19, 0x1a, 0x3c, 0x58, 0x5c, 0x60, 0x34, 0x00};
    uint64_t r = rnd();
    *bus = (r & 3) == 0 ? (uint8_t)(r >> 8) : buses[(r >> 16) % 6];
    *dev = (r & 0x1c) == 0 ? (uint8_t)((r >> 24) & 31) : devs[(r >> 32) % 6];
    *fn = (r & 0xe0) == 0 ? (uint8_t)((r >> 40) & 7) : 0;
    *reg = (r & 0x700) == 0 ? (uint32_t)((r >> 44) & 0xfff) : regs[(r >> 56) % 16];
    if ((r & 0x1800) == 0)
        *reg += (r >> 48) & 3;
}

static uint32_t pick_value(void)
{
    static const uint32_t values[] = {
        0xffffffff, 0x0,        0xc000,     0xfe000000, 0x1,    0x3,        0x7,        0x407,
        0x00010100, 0x00050500, 0x00ff0100, 0x00020201, 0xfff0, 0xffff0000, 0x33333333, 0x80000000};
    uint64_t r = rnd();
    return r & 1 ? (uint32_t)(r >> 32) : values[(r >> 8) % 16];
}

static void test_hostile_random(void **state)
{
    struct env *e = *state;
    struct shadow s = {.f = {&e->host.host_bridge, &e->dev, &e->bridge.func, &e->behind}};
    for (unsigned i = 0; i < 4; i++)
        for (unsigned b = 0; b < PCI_MAX_BARS; b++)
            s.mapped[i][b] = PCI_BAR_UNMAPPED;
    e->topo.hooks = (struct pci_topology_hooks){.ctx = &s, .bar_moved = shadow_bar};
    rng_state = 0x9e3779b97f4a7c15ull;

    static const unsigned sizes[] = {1, 2, 4, 4, 4, 8, 3, 0};
    for (unsigned n = 0; n < 100000; n++) {
        uint64_t r = rnd();
        unsigned size = sizes[(r >> 8) % 8];
        uint8_t bus, dev, fn;
        uint32_t reg, v;
        pick_target(&bus, &dev, &fn, &reg);
        v = pick_value();
        if (r & 0x800000) /* mostly well-formed: the widest access reg allows */
            size = reg % 4 == 0 ? 4 : reg % 2 == 0 ? 2 : 1;
        switch (r % 8) {
        case 0: /* latch: mostly a plausible address */
            pout(e, 0xcf8, 4,
                 cf8_addr(bus, dev, fn, reg) ^ (r & 0x100000 ? PCI_HOST_CF8_ENABLE : 0) ^
                     (r & 0x200000 ? (uint32_t)rnd() : 0));
            break;
        case 1:
        case 2:
        case 3: { /* data or address port, any shape */
            uint64_t off = r & 0x20000 ? 4 + (reg & 3) : (r >> 16) % 9;
            if (r & 0x10000000)
                (void)pci_host_pio_ops.read(&e->host, off, size);
            else if (off != 1 || size != 1) /* 0xCF9 would request resets */
                pci_host_pio_ops.write(&e->host, off, size, v);
            break;
        }
        case 4:
        case 5: { /* ECAM at a plausible target, or anywhere */
            uint64_t off = r & 0x400000000 ? (r >> 20) % (PCI_HOST_ECAM_SIZE + 0x100)
                                           : ecam_off(bus, dev, fn, reg);
            if (r & 0x10000000)
                (void)pci_host_ecam_ops.read(&e->host, off, size);
            else
                pci_host_ecam_ops.write(&e->host, off, size, v);
            break;
        }
        case 6: /* interrupts from the devices */
            pci_set_irq(r & 0x100 ? &e->dev : &e->behind, (v & 1) != 0);
            break;
        case 7:
            if (rnd() % 4096 == 0)
                pci_topology_reset(&e->topo);
            break;
        }
        if (n % 1000 == 0)
            check_consistent(&s);
    }
    check_consistent(&s);
    printf("hostile run: %u BAR moves\n", s.events);
    assert_true(s.events > 200); /* the run reached the interesting states */
    /* Lines match what the devices ask for, through INTX_DISABLE. */
    pci_set_irq(&e->dev, false);
    pci_set_irq(&e->behind, false);
    assert_false(e->irq.level[19]);
    assert_false(e->irq.level[18]);
    for (unsigned i = 0; i < PCI_INTX_GSI_COUNT; i++)
        assert_int_equal(e->topo.intx_count[i], 0);
    /* The chipset still answers. */
    pout(e, 0xcf8, 4, cf8_addr(0, 0, 0, 0));
    assert_int_equal(pin(e, 0xcfc, 4), 0x12378086);
}

/* ---- concurrency: vCPU threads and a device thread at once ---- */

struct worker {
    struct env *e;
    uint64_t seed;
};

static void *cfg_worker(void *arg)
{
    struct worker *w = arg;
    uint64_t x = w->seed;
    for (unsigned n = 0; n < 20000; n++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        static const uint32_t regs[] = {0x04, 0x10, 0x14, 0x18, 0x1c, 0x06, 0x00, 0x58};
        uint32_t reg = regs[x % 8];
        uint8_t dev = (x >> 8) & 1 ? 3 : 0;
        uint64_t off = ecam_off(0, dev, 0, reg);
        if ((x >> 9) & 1)
            (void)pci_host_ecam_ops.read(&w->e->host, off, 4);
        else
            pci_host_ecam_ops.write(&w->e->host, off, 4, (uint32_t)(x >> 32));
    }
    return NULL;
}

static void *irq_worker(void *arg)
{
    struct worker *w = arg;
    for (unsigned n = 0; n < 20000; n++)
        pci_set_irq(&w->e->dev, n & 1);
    pci_set_irq(&w->e->dev, false);
    return NULL;
}

static void test_concurrent_access(void **state)
{
    struct env *e = *state;
    struct shadow s = {.f = {&e->host.host_bridge, &e->dev, &e->bridge.func, &e->behind}};
    for (unsigned i = 0; i < 4; i++)
        for (unsigned b = 0; b < PCI_MAX_BARS; b++)
            s.mapped[i][b] = PCI_BAR_UNMAPPED;
    e->topo.hooks = (struct pci_topology_hooks){.ctx = &s, .bar_moved = shadow_bar};
    pthread_t th[4];
    struct worker w[4];
    for (unsigned i = 0; i < 4; i++) {
        w[i] = (struct worker){e, 0x1234567ull * (i + 1)};
        assert_int_equal(pthread_create(&th[i], NULL, i == 3 ? irq_worker : cfg_worker, &w[i]), 0);
    }
    for (unsigned i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    check_consistent(&s);
    /* The irq worker ended low; whatever INTX_DISABLE says, the line is low. */
    assert_false(e->irq.level[19]);
    assert_int_equal(e->topo.intx_count[3], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intx_gsi_table),
        cmocka_unit_test_setup_teardown(test_intx_routing_and_wired_or, setup, teardown),
        cmocka_unit_test_setup_teardown(test_intx_nested_swizzle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cf8_latch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cfc_sizes_and_offsets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_absent_functions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_mask, setup, teardown),
        cmocka_unit_test(test_status_w1c),
        cmocka_unit_test_setup_teardown(test_bar_sizing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bar_moved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_bar_errors, setup, teardown),
        cmocka_unit_test(test_capabilities_and_hooks),
        cmocka_unit_test_setup_teardown(test_extended_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chipset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topology_add_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bridge_routing_and_renumbering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bridge_registers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ecam_matches_cf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_access, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
