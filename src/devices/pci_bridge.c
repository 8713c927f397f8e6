/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/pci_bridge.h"

#include <errno.h>

int pci_bridge_init(struct pci_bridge *b, const char *name, uint8_t downstream_bus)
{
    if (downstream_bus == 0)
        return -EINVAL;
    struct pci_func *f = &b->func;
    pci_func_init(f, name, PCI_HEADER_TYPE_BRIDGE);
    pci_func_set_ids(f, PCI_BRIDGE_VENDOR_ID, PCI_BRIDGE_DEVICE_ID);
    pci_func_set_class(f, PCI_BRIDGE_CLASS);
    f->is_bridge = true;
    f->downstream_bus = downstream_bus;

    /* Bus numbers. */
    pci_cfg_set_mask(f, PCI_REG_PRIMARY_BUS, 1, 0xff, 0);
    pci_cfg_set_mask(f, PCI_REG_SECONDARY_BUS, 1, 0xff, 0);
    pci_cfg_set_mask(f, PCI_REG_SUBORDINATE_BUS, 1, 0xff, 0);
    /* I/O window, 16-bit decode: type nibble 0, address nibble writable. */
    pci_cfg_set_mask(f, PCI_REG_IO_BASE, 1, 0xf0, 0);
    pci_cfg_set_mask(f, PCI_REG_IO_LIMIT, 1, 0xf0, 0);
    pci_cfg_set_mask(f, PCI_REG_SEC_STATUS, 2, 0, PCI_STS_W1C);
    /* Memory window. */
    pci_cfg_set_mask(f, PCI_REG_MEM_BASE, 2, 0xfff0, 0);
    pci_cfg_set_mask(f, PCI_REG_MEM_LIMIT, 2, 0xfff0, 0);
    /* Prefetchable window, 64-bit (type nibble 1). */
    pci_cfg_poke(f, PCI_REG_PREF_BASE, 2, 0x0001);
    pci_cfg_poke(f, PCI_REG_PREF_LIMIT, 2, 0x0001);
    pci_cfg_set_mask(f, PCI_REG_PREF_BASE, 2, 0xfff0, 0);
    pci_cfg_set_mask(f, PCI_REG_PREF_LIMIT, 2, 0xfff0, 0);
    pci_cfg_set_mask(f, PCI_REG_PREF_BASE_HI, 4, 0xffffffff, 0);
    pci_cfg_set_mask(f, PCI_REG_PREF_LIMIT_HI, 4, 0xffffffff, 0);
    pci_cfg_set_mask(f, PCI_REG_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_WMASK, 0);
    return 0;
}

void pci_bridge_windows(const struct pci_bridge *b, struct pci_bridge_windows *out)
{
    const struct pci_func *f = &b->func;
    uint32_t io_base = pci_cfg_peek(f, PCI_REG_IO_BASE, 1);
    uint32_t io_limit = pci_cfg_peek(f, PCI_REG_IO_LIMIT, 1);
    uint32_t mem_base = pci_cfg_peek(f, PCI_REG_MEM_BASE, 2);
    uint32_t mem_limit = pci_cfg_peek(f, PCI_REG_MEM_LIMIT, 2);
    uint64_t pref_base = pci_cfg_peek(f, PCI_REG_PREF_BASE, 2);
    uint64_t pref_limit = pci_cfg_peek(f, PCI_REG_PREF_LIMIT, 2);

    out->io_base = (io_base & 0xf0) << 8;
    out->io_limit = ((io_limit & 0xf0) << 8) | 0xfff;
    out->mem_base = (mem_base & 0xfff0) << 16;
    out->mem_limit = ((mem_limit & 0xfff0) << 16) | 0xfffff;
    out->pref_base = (pref_base & 0xfff0) << 16 | (uint64_t)pci_cfg_peek(f, PCI_REG_PREF_BASE_HI, 4)
                                                      << 32;
    out->pref_limit = ((pref_limit & 0xfff0) << 16 | 0xfffff) |
                      (uint64_t)pci_cfg_peek(f, PCI_REG_PREF_LIMIT_HI, 4) << 32;
}

int pci_bridge_save(const struct pci_bridge *b, struct mig_out *o)
{
    return pci_func_save(&b->func, o);
}

int pci_bridge_load(struct pci_bridge *b, struct mig_in *in, uint32_t version)
{
    return pci_func_load(&b->func, in, version);
}
