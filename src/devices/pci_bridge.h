/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A conventional PCI-PCI bridge (type-1 header, no PCI Express capability),
 * the device behind the spec's `pci_pci_bridge` component.
 *
 * Identity: 0x1b36:0x0001 (Red Hat, Inc. "QEMU PCI-PCI bridge"), class
 * 0x060400 (normal decode), revision 0. Guests already know this ID from
 * QEMU VMs and bind their generic bridge driver by class code; Intel's
 * 0x244e would claim subtractive decode (prog-if 01), which this bridge
 * does not do. (Propolis uses an Oxide vendor ID; cella prefers an ID that
 * Windows images moved from QEMU/KVM already have drivers bound for.)
 *
 * Registers (all round-trip through config space):
 *  - primary, secondary, subordinate bus numbers: read/write, 0 at reset.
 *    The secondary/subordinate pair routes configuration cycles (pci.h,
 *    "Bus numbers"); the bridge's logical downstream bus is fixed when it
 *    is created (the spec's `downstream_bus`) and never guest-visible.
 *  - I/O base/limit: 16-bit decode (low nibble 0), bits 7:4 writable;
 *    the upper-16 registers read 0.
 *  - memory base/limit: bits 15:4 writable.
 *  - prefetchable base/limit: bits 15:4 writable, 64-bit type (low nibble
 *    1), upper-32 registers read/write.
 *  - secondary status: error bits write-1-to-clear (never set by cella).
 *  - bridge control: parity/SERR enable, ISA enable, VGA enable, VGA
 *    16-bit decode, master abort mode, secondary bus reset are stored; none
 *    has an effect (a secondary bus reset does not reset the devices).
 *  - no BARs, no expansion ROM, no INTx pin of its own, no capabilities.
 *
 * Windows. cella does not enforce the bridge's I/O and memory windows (nor
 * its COMMAND.IO/MEM forwarding bits): a BAR of a device behind a bridge
 * is mapped by the machine exactly like a bus-0 BAR, from that device's
 * own BAR and command register, as QEMU does by default. Firmware and
 * Linux always program windows that cover what they assign, so guests see
 * no difference; a guest that mis-programs a window only loses the
 * isolation it asked to break, and the machine's bus treats the BAR like
 * any other. The windows are kept for the guest to read back and can be
 * decoded with pci_bridge_windows().
 *
 * INTx from devices behind the bridge: pci_intx_swizzle() per bridge, then
 * pci_intx_gsi() at bus 0 (done by pci_topology_add()).
 */
#ifndef CELLA_DEVICES_PCI_BRIDGE_H
#define CELLA_DEVICES_PCI_BRIDGE_H

#include <stdint.h>

#include "devices/pci.h"

#define PCI_BRIDGE_VENDOR_ID 0x1b36
#define PCI_BRIDGE_DEVICE_ID 0x0001
#define PCI_BRIDGE_CLASS     0x060400
#define PCI_BRIDGE_CTL_WMASK 0x007f
#define PCI_BRIDGE_CTL_ISA   0x0004
#define PCI_BRIDGE_CTL_VGA   0x0008
#define PCI_BRIDGE_CTL_SBR   0x0040

struct pci_bridge {
    struct pci_func func; /* first, so a bridge is usable as its function */
};

/*
 * Initialises b as a bridge whose downstream side is logical bus
 * `downstream_bus` (1..255), created when b is pci_topology_add()ed.
 * -EINVAL for bus 0. Setup thread.
 */
int pci_bridge_init(struct pci_bridge *b, const char *name, uint8_t downstream_bus);

/* The windows as programmed; a window with limit < base is closed. */
struct pci_bridge_windows {
    uint32_t io_base, io_limit;     /* inclusive, 4 KiB granular */
    uint32_t mem_base, mem_limit;   /* inclusive, 1 MiB granular */
    uint64_t pref_base, pref_limit; /* inclusive, 1 MiB granular */
};

/*
 * Decodes the window registers. The caller holds the topology lock (or
 * the bridge is not in a topology yet); for diagnostics and tests.
 */
void pci_bridge_windows(const struct pci_bridge *b, struct pci_bridge_windows *out);

/*
 * Live migration: a bridge's whole state is its config space (bus numbers,
 * windows, bridge control), so these are pci_func_save/pci_func_load of
 * b->func, with PCI_FUNC_STATE_VERSION. Loaded bus numbers take effect
 * for routing at once.
 */
#define PCI_BRIDGE_STATE_VERSION PCI_FUNC_STATE_VERSION
int pci_bridge_save(const struct pci_bridge *b, struct mig_out *o);
int pci_bridge_load(struct pci_bridge *b, struct mig_in *in, uint32_t version);

#endif
