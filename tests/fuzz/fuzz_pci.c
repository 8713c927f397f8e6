/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the PCI core, driven the way a guest drives it:
 * through the 0xCF8-0xCFF ports and the ECAM window, with device-side
 * INTx changes and resets mixed in.
 *
 * The machine: i440FX + PIIX3, a device at 0.3.0 (I/O, MEM32 and
 * prefetchable MEM64 BARs, capabilities, a cfg hook, INTA), a two-function
 * device at 0.5.x, a bridge at 0.6.0 (logical bus 1) with a device at
 * 1.0.0 and a second bridge at 1.2.0 (logical bus 2) with an
 * extended-config device at 2.3.0.
 *
 * Input: a sequence of 10-byte records
 *     op, size, offset (4 bytes LE), value (4 bytes LE)
 * op % 8: 0/1 port read/write at offset % 9 (so one past the range too),
 * 2/3 ECAM read/write at offset (28 bits, or anywhere when op & 0x80),
 * 4 latch 0xCF8 with value, 5 set a device's INTx level, 6 reset,
 * 7 data-port write at the latched register's byte lane.
 *
 * After every record the target checks what must always hold, and aborts
 * otherwise: the bar_moved stream replays to exactly the mappings the
 * functions hold, mapped BARs sit at their register's address and are
 * size-aligned, read-only config bytes are unchanged, COMMAND has no
 * reserved bits, and INTx line levels and wired-OR counts match the
 * devices' levels.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/pci.h"
#include "devices/pci_bridge.h"
#include "devices/pci_host.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NFUNC 7
#define NGSI  32

static struct pci_topology topo;
static struct pci_host host;
static struct pci_func dev3, dev5a, dev5b, behind1, ext2;
static struct pci_bridge br1, br2;
static struct pci_func *funcs[NFUNC];
static uint64_t shadow[NFUNC][PCI_MAX_BARS];
static bool line[NGSI];
static bool want_level[NFUNC];
static uint32_t hook_reg;

static int func_index(const struct pci_func *f)
{
    for (int i = 0; i < NFUNC; i++) {
        if (funcs[i] == f)
            return i;
    }
    return -1;
}

static void on_bar(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                   uint64_t new_addr, bool enabled)
{
    (void)ctx;
    int i = func_index(f);
    if (i < 0 || bar >= PCI_MAX_BARS || shadow[i][bar] != old_addr || old_addr == new_addr ||
        enabled != (new_addr != PCI_BAR_UNMAPPED))
        abort();
    shadow[i][bar] = new_addr;
}

static void on_level(void *ctx, uint32_t gsi, bool level)
{
    (void)ctx;
    if (gsi >= NGSI || line[gsi] == level)
        abort(); /* only transitions may reach the machine */
    line[gsi] = level;
}

static const struct irq_sink sink = {.set_level = on_level};

static uint64_t bar_read(void *opaque, uint64_t offset, unsigned size)
{
    (void)opaque, (void)offset, (void)size;
    return 0;
}

static void bar_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    (void)opaque, (void)offset, (void)size, (void)value;
}

static const struct io_ops bar_ops = {bar_read, bar_write};

/* A device-owned register: writes of 1 to bit 0 raise INTx, like MSI-X mask games. */
static uint32_t hook_read(void *opaque, struct pci_func *f, uint16_t off, unsigned size)
{
    (void)opaque, (void)f;
    return (hook_reg >> (8 * (off & 3))) & (size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1);
}

static void hook_write(void *opaque, struct pci_func *f, uint16_t off, unsigned size, uint32_t v)
{
    (void)opaque;
    for (unsigned i = 0; i < size; i++) {
        unsigned sh = 8 * ((off + i) & 3);
        hook_reg = (hook_reg & ~(0xffu << sh)) | ((v >> (8 * i)) & 0xff) << sh;
    }
    /* Called with the topology lock held: pci_set_irq must still work. */
    want_level[func_index(f)] = hook_reg & 1;
    pci_set_irq(f, hook_reg & 1);
}

static const struct pci_cfg_ops hook_ops = {hook_read, hook_write};

static void must(int r)
{
    if (r < 0)
        abort();
}

static void add(const struct pci_path p, struct pci_func *f)
{
    must(pci_topology_add(&topo, &p, f));
}

static void build(void)
{
    const struct pci_topology_hooks th = {.bar_moved = on_bar};
    must(pci_topology_init(&topo, &th, &sink));
    pci_host_init(&host, &topo, NULL);
    must(pci_host_add_chipset(&host));

    pci_func_init(&dev3, "dev3", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&dev3, 0x1af4, 0x1042);
    must(pci_func_set_intx_pin(&dev3, 1));
    must(pci_set_bar(&dev3, 0, PCI_BAR_IO, 0x40, false, &bar_ops, NULL));
    must(pci_set_bar(&dev3, 1, PCI_BAR_MEM32, 0x1000, false, &bar_ops, NULL));
    must(pci_set_bar(&dev3, 4, PCI_BAR_MEM64, 0x4000, true, &bar_ops, NULL));
    must(pci_add_capability(&dev3, 0x09, 16));
    int cap = pci_add_capability(&dev3, 0x11, 12);
    must(cap);
    must(pci_add_cfg_hook(&dev3, (uint16_t)(cap + 2), 2, &hook_ops, NULL));
    pci_cfg_set_mask(&dev3, 0x44, 4, 0x00ff00ff, 0xff000000);
    add((struct pci_path){0, 3, 0}, &dev3);

    pci_func_init(&dev5a, "dev5a", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&dev5a, 0x8086, 0x100e);
    must(pci_func_set_intx_pin(&dev5a, 2));
    must(pci_set_bar(&dev5a, 0, PCI_BAR_MEM32, 0x20000, false, &bar_ops, NULL));
    pci_func_init(&dev5b, "dev5b", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&dev5b, 0x8086, 0x100f);
    must(pci_func_set_intx_pin(&dev5b, 1));
    add((struct pci_path){0, 5, 1}, &dev5b);
    add((struct pci_path){0, 5, 0}, &dev5a);

    must(pci_bridge_init(&br1, "br1", 1));
    add((struct pci_path){0, 6, 0}, &br1.func);
    pci_func_init(&behind1, "behind1", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&behind1, 0x1af4, 0x1041);
    must(pci_func_set_intx_pin(&behind1, 3));
    must(pci_set_bar(&behind1, 2, PCI_BAR_IO, 0x100, false, &bar_ops, NULL));
    add((struct pci_path){1, 0, 0}, &behind1);
    must(pci_bridge_init(&br2, "br2", 2));
    add((struct pci_path){1, 2, 0}, &br2.func);
    pci_func_init(&ext2, "ext2", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&ext2, 0x1b36, 0x0010);
    pci_func_enable_extended(&ext2);
    must(pci_func_set_intx_pin(&ext2, 4));
    must(pci_set_bar(&ext2, 0, PCI_BAR_MEM64, 1ull << 34, false, &bar_ops, NULL));
    pci_cfg_set_mask(&ext2, 0x800, 4, 0xffffffff, 0);
    add((struct pci_path){2, 3, 0}, &ext2);

    struct pci_func *all[NFUNC] = {&dev3, &dev5a, &dev5b, &br1.func, &behind1, &br2.func, &ext2};
    memcpy(funcs, all, sizeof(all));
    for (unsigned i = 0; i < NFUNC; i++)
        for (unsigned b = 0; b < PCI_MAX_BARS; b++)
            shadow[i][b] = PCI_BAR_UNMAPPED;
}

/* Read-only bytes never change (slow: every few records and at the end). */
static void check_readonly(void)
{
    for (unsigned i = 0; i < NFUNC; i++) {
        const struct pci_func *f = funcs[i];
        for (unsigned o = 0; o < f->cfg_size; o++) {
            if (!f->wmask[o] && !f->w1cmask[o] && f->cfg[o] != f->reset_cfg[o])
                abort();
        }
    }
}

static void check(void)
{
    unsigned count[PCI_INTX_GSI_COUNT] = {0};
    for (unsigned i = 0; i < NFUNC; i++) {
        const struct pci_func *f = funcs[i];
        uint16_t cmd = (uint16_t)pci_cfg_peek(f, PCI_REG_COMMAND, 2);
        if (cmd & ~PCI_CMD_WRITABLE)
            abort();
        for (unsigned b = 0; b < f->nbars; b++) {
            uint64_t m = f->bars[b].mapped;
            if (m != shadow[i][b])
                abort();
            if (m != PCI_BAR_UNMAPPED && (m != pci_bar_address(f, b) || m % f->bars[b].size))
                abort();
        }
        if (f->intx_level != want_level[i])
            abort();
        bool has_pin = f->cfg[PCI_REG_INT_PIN] != 0;
        bool asserted = want_level[i] && !(cmd & PCI_CMD_INTX_DISABLE) && has_pin;
        if (f->intx_asserted != asserted)
            abort();
        if (asserted)
            count[f->intx.gsi - PCI_INTX_GSI_BASE]++;
    }
    for (unsigned g = 0; g < PCI_INTX_GSI_COUNT; g++) {
        if (topo.intx_count[g] != count[g] || line[PCI_INTX_GSI_BASE + g] != (count[g] > 0))
            abort();
    }
    if (pci_cfg_peek(&host.host_bridge, 0, 4) != 0x12378086)
        abort();
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned sizes[] = {1, 2, 4, 4, 8, 3, 0, 2};
    memset(line, 0, sizeof(line));
    memset(want_level, 0, sizeof(want_level));
    hook_reg = 0;
    build();

    for (size_t at = 0; at + 10 <= size; at += 10) {
        const uint8_t *r = data + at;
        unsigned op = r[0], sz = sizes[r[1] & 7];
        uint32_t off = le32(r + 2), val = le32(r + 6);
        switch (op % 8) {
        case 0:
            (void)pci_host_pio_ops.read(&host, off % 9, sz);
            break;
        case 1:
            pci_host_pio_ops.write(&host, off % 9, sz, val);
            break;
        case 2:
            (void)pci_host_ecam_ops.read(&host, op & 0x80 ? off : off & 0xfffffff, sz);
            break;
        case 3:
            pci_host_ecam_ops.write(&host, op & 0x80 ? off : off & 0xfffffff, sz, val);
            break;
        case 4:
            pci_host_pio_ops.write(&host, 0, 4, off);
            break;
        case 5: {
            unsigned i = (unsigned)(val % NFUNC);
            want_level[i] = off & 1;
            pci_set_irq(funcs[i], off & 1);
            break;
        }
        case 6:
            pci_topology_reset(&topo);
            hook_reg = 0; /* the device's own reset, as the state driver would */
            break;
        case 7:
            pci_host_pio_ops.write(&host, 4 + (off & 3), sz, val);
            break;
        }
        check();
        if (at % 160 == 0)
            check_readonly();
    }
    check_readonly();
    pci_topology_destroy(&topo);
    return 0;
}
