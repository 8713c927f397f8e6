/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/pci_host.h"

#include <stddef.h>
#include <string.h>

static uint64_t ones64(unsigned size)
{
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1u;
}

static bool natural(uint64_t off, unsigned size)
{
    return (size == 1 || size == 2 || size == 4) && off % size == 0;
}

/* ---- configuration mechanism #1 ---- */

/* The latched target, or false when the enable bit is clear. */
static bool latched(const struct pci_host *h, unsigned data_off, uint8_t *bus, uint8_t *dev,
                    uint8_t *fn, uint32_t *reg)
{
    uint32_t a = atomic_load(&h->addr);
    if (!(a & PCI_HOST_CF8_ENABLE))
        return false;
    *bus = (uint8_t)(a >> 16);
    *dev = (a >> 11) & 31;
    *fn = (a >> 8) & 7;
    *reg = (a & 0xfc) | data_off;
    return true;
}

static uint64_t pio_read(void *opaque, uint64_t offset, unsigned size)
{
    struct pci_host *h = opaque;
    uint8_t bus, dev, fn;
    uint32_t reg;

    if (offset == 0 && size == 4)
        return atomic_load(&h->addr);
    if (offset == 1 && size == 1)
        return atomic_load(&h->rcr);
    if (offset >= 4 && offset < 8 && natural(offset - 4, size) && offset + size <= 8) {
        if (!latched(h, (unsigned)(offset - 4), &bus, &dev, &fn, &reg))
            return ones64(size);
        return pci_topology_cfg_read(h->topo, bus, dev, fn, reg, size);
    }
    if (offset < 4 && size <= 2 && offset + size <= 4)
        return ones64(size); /* not decoded by the host bridge: quiet */
    guest_error("pci-host", "bad config-port read at 0x%x size %u",
                (unsigned)(PCI_HOST_PIO_BASE + offset), size);
    return ones64(size);
}

static void pio_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct pci_host *h = opaque;
    uint8_t bus, dev, fn;
    uint32_t reg;

    if (offset == 0 && size == 4) {
        atomic_store(&h->addr, (uint32_t)value & PCI_HOST_CF8_MASK);
        return;
    }
    if (offset == 1 && size == 1) {
        atomic_store(&h->rcr, (uint8_t)(value & PIIX3_RCR_HARD));
        if ((value & PIIX3_RCR_RESET) && h->hooks.reset_request)
            h->hooks.reset_request(h->hooks.ctx, (uint8_t)value);
        return;
    }
    if (offset >= 4 && offset < 8 && natural(offset - 4, size) && offset + size <= 8) {
        if (latched(h, (unsigned)(offset - 4), &bus, &dev, &fn, &reg))
            pci_topology_cfg_write(h->topo, bus, dev, fn, reg, size, (uint32_t)value);
        return;
    }
    if (offset < 4 && size <= 2 && offset + size <= 4)
        return; /* not decoded by the host bridge: quiet */
    guest_error("pci-host", "bad config-port write at 0x%x size %u",
                (unsigned)(PCI_HOST_PIO_BASE + offset), size);
}

const struct io_ops pci_host_pio_ops = {.read = pio_read, .write = pio_write};

/* ---- ECAM ---- */

static bool ecam_decode(uint64_t offset, unsigned size, uint8_t *bus, uint8_t *dev, uint8_t *fn,
                        uint32_t *reg)
{
    if (offset >= PCI_HOST_ECAM_SIZE || !natural(offset, size))
        return false;
    *bus = (uint8_t)(offset >> 20);
    *dev = (offset >> 15) & 31;
    *fn = (offset >> 12) & 7;
    *reg = offset & 0xfff;
    return true;
}

static uint64_t ecam_read(void *opaque, uint64_t offset, unsigned size)
{
    struct pci_host *h = opaque;
    uint8_t bus, dev, fn;
    uint32_t reg;

    if (!ecam_decode(offset, size, &bus, &dev, &fn, &reg)) {
        guest_error("pci-host", "bad ECAM read at 0x%llx size %u", (unsigned long long)offset,
                    size);
        return ones64(size);
    }
    return pci_topology_cfg_read(h->topo, bus, dev, fn, reg, size);
}

static void ecam_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct pci_host *h = opaque;
    uint8_t bus, dev, fn;
    uint32_t reg;

    if (!ecam_decode(offset, size, &bus, &dev, &fn, &reg)) {
        guest_error("pci-host", "bad ECAM write at 0x%llx size %u", (unsigned long long)offset,
                    size);
        return;
    }
    pci_topology_cfg_write(h->topo, bus, dev, fn, reg, size, (uint32_t)value);
}

const struct io_ops pci_host_ecam_ops = {.read = ecam_read, .write = ecam_write};

/* ---- chipset functions ---- */

#define PAM_HOOK_START 0x58 /* dword-aligned range holding PAM0..PAM6 */
#define PAM_HOOK_LEN   8

static void notify_pam(struct pci_host *h)
{
    if (h->hooks.pam_changed)
        h->hooks.pam_changed(h->hooks.ctx, &h->host_bridge.cfg[I440FX_PAM0]);
}

static void notify_pirq(struct pci_host *h)
{
    if (h->hooks.pirq_changed)
        h->hooks.pirq_changed(h->hooks.ctx, &h->isa_bridge.cfg[PIIX3_PIRQRC]);
}

static void pam_write(void *opaque, struct pci_func *f, uint16_t offset, unsigned size,
                      uint32_t value)
{
    uint8_t before[I440FX_PAM_COUNT];
    memcpy(before, &f->cfg[I440FX_PAM0], sizeof(before));
    pci_cfg_default_write(f, offset, size, value);
    if (memcmp(before, &f->cfg[I440FX_PAM0], sizeof(before)) != 0)
        notify_pam(opaque);
}

static void pirq_write(void *opaque, struct pci_func *f, uint16_t offset, unsigned size,
                       uint32_t value)
{
    uint8_t before[PIIX3_PIRQ_COUNT];
    memcpy(before, &f->cfg[PIIX3_PIRQRC], sizeof(before));
    pci_cfg_default_write(f, offset, size, value);
    if (memcmp(before, &f->cfg[PIIX3_PIRQRC], sizeof(before)) != 0)
        notify_pirq(opaque);
}

static const struct pci_cfg_ops pam_ops = {.write = pam_write};
static const struct pci_cfg_ops pirq_ops = {.write = pirq_write};

static void host_bridge_reset(struct pci_func *f)
{
    notify_pam((struct pci_host *)((char *)f - offsetof(struct pci_host, host_bridge)));
}

static void isa_bridge_reset(struct pci_func *f)
{
    notify_pirq((struct pci_host *)((char *)f - offsetof(struct pci_host, isa_bridge)));
}

void pci_host_init(struct pci_host *h, struct pci_topology *topo,
                   const struct pci_host_hooks *hooks)
{
    memset(h, 0, sizeof(*h));
    h->topo = topo;
    if (hooks)
        h->hooks = *hooks;
    atomic_init(&h->addr, 0);
    atomic_init(&h->rcr, 0);
}

static int build_host_bridge(struct pci_host *h)
{
    struct pci_func *f = &h->host_bridge;
    pci_func_init(f, "i440fx", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(f, PCI_VENDOR_INTEL, PCI_DEVICE_I440FX);
    pci_func_set_class(f, 0x060000);
    pci_func_set_revision(f, 0x02);
    pci_func_set_subsystem(f, PCI_CHIPSET_SUBSYS_VEND, PCI_CHIPSET_SUBSYS_ID);
    /* PAM0 has only the high-half enables (0xF0000-0xFFFFF). */
    pci_cfg_set_mask(f, I440FX_PAM0, 1, 0x30, 0);
    for (unsigned i = 1; i < I440FX_PAM_COUNT; i++)
        pci_cfg_set_mask(f, (uint16_t)(I440FX_PAM0 + i), 1, 0x33, 0);
    pci_cfg_poke(f, I440FX_SMRAM, 1, I440FX_SMRAM_RESET);
    pci_cfg_set_mask(f, I440FX_SMRAM, 1, 0x78, 0);
    f->on_reset = host_bridge_reset;
    return pci_add_cfg_hook(f, PAM_HOOK_START, PAM_HOOK_LEN, &pam_ops, h);
}

static int build_isa_bridge(struct pci_host *h)
{
    struct pci_func *f = &h->isa_bridge;
    pci_func_init(f, "piix3-isa", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(f, PCI_VENDOR_INTEL, PCI_DEVICE_PIIX3_ISA);
    pci_func_set_class(f, 0x060100);
    pci_func_set_subsystem(f, PCI_CHIPSET_SUBSYS_VEND, PCI_CHIPSET_SUBSYS_ID);
    pci_func_set_multifunction(f, true);
    for (unsigned i = 0; i < PIIX3_PIRQ_COUNT; i++) {
        pci_cfg_poke(f, (uint16_t)(PIIX3_PIRQRC + i), 1, PIIX3_PIRQ_DISABLED);
        pci_cfg_set_mask(f, (uint16_t)(PIIX3_PIRQRC + i), 1, 0x8f, 0);
    }
    f->on_reset = isa_bridge_reset;
    return pci_add_cfg_hook(f, PIIX3_PIRQRC, PIIX3_PIRQ_COUNT, &pirq_ops, h);
}

int pci_host_add_chipset(struct pci_host *h)
{
    static const struct pci_path hb_path = {0, 0, 0}, isa_path = {0, 1, 0};
    int r = build_host_bridge(h);
    if (r < 0)
        return r;
    r = build_isa_bridge(h);
    if (r < 0)
        return r;
    r = pci_topology_add(h->topo, &hb_path, &h->host_bridge);
    if (r < 0)
        return r;
    return pci_topology_add(h->topo, &isa_path, &h->isa_bridge);
}
