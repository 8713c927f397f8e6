/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The host side of PCI on cella's i440FX-style PC: how the CPU reaches
 * configuration space, and the chipset's own PCI functions.
 *
 * Configuration mechanism #1 (ports 0xCF8-0xCFF, pci_host_pio_ops):
 *  - 0xCF8, dword: the address register. A dword write latches
 *    enable (bit 31), bus (23:16), device (15:11), function (10:8) and
 *    register (7:2); reserved bits 30:24 and 1:0 read back as 0. A dword
 *    read returns the latch.
 *  - 0xCFC-0xCFF: the data window onto the latched dword: a byte at any of
 *    the four ports, a word at 0xCFC or 0xCFE, a dword at 0xCFC. With the
 *    enable bit clear nothing is decoded: reads return all ones, writes
 *    are dropped.
 *  - byte and word accesses to 0xCF8-0xCFB do not touch the latch (guests
 *    probe with them: Linux writes a byte to 0xCFB); they read all ones
 *    and are dropped quietly. The exception is the byte at 0xCF9, the
 *    PIIX3 reset control register: a write with bit 2 (reset CPU) set calls
 *    hooks.reset_request, and a read returns bit 1 (hard reset) as written.
 *  - any other shape (dword at 0xCF9, an access across 0xCFB/0xCFC,
 *    8-byte accesses) is a guest error: logged, reads all ones.
 *
 * ECAM (pci_host_ecam_ops, mapped by the machine when the board has
 * `enable_pcie`): 256 MiB, offset = bus << 20 | device << 15 |
 * function << 12 | register; 1/2/4-byte naturally aligned accesses; other
 * shapes are guest errors. Bus numbers in both mechanisms are routed bus
 * numbers (pci.h, "Bus numbers").
 *
 * Chipset functions (pci_host_add_chipset):
 *  - 0.0.0 i440FX host bridge, 0x8086:0x1237 rev 2, class 0x060000,
 *    header type 0. SeaBIOS recognises this ID and takes its i440FX path:
 *    it writes the PAM registers (0x59-0x5f) to open and close shadow RAM
 *    and may write SMRAM (0x72). Those registers keep what is written
 *    (PAM: the defined enable bits; SMRAM: bits 6:3, with bits 2:0 fixed at
 *    010b; D_LCK is stored but not enforced, cella has no SMM) and a PAM
 *    change calls hooks.pam_changed. The memory side is the machine's: the
 *    simplest correct design, as bhyve/Propolis do, keeps 0xC0000-0xFFFFF
 *    plain RAM holding the BIOS image and ignores PAM; SeaBIOS's shadow
 *    copy then works because the RAM is already writable.
 *  - 0.1.0 PIIX3 PCI-to-ISA bridge, 0x8086:0x7000, class 0x060100,
 *    multifunction bit set. Its PIRQ route registers (0x60-0x63, reset
 *    0x80 = disabled, bits 7 and 3:0 writable) keep what SeaBIOS writes
 *    and call hooks.pirq_changed: only a guest using the 8259 PIC needs
 *    them; with the I/O APIC, INTx goes to GSIs 16-19 (pci_intx_gsi()).
 *  - no PIIX PM function at 0.1.3 and no IDE at 0.1.1: cella's ACPI PM
 *    block lives at fixed ports described by the FADT, and SeaBIOS
 *    (which looks for 0x8086:0x7113 to set up PM/SMM) skips it when absent.
 * Both functions carry subsystem 0x1af4:0x1100 like QEMU's, so guests
 * moved from QEMU/KVM see the same chipset identity.
 */
#ifndef CELLA_DEVICES_PCI_HOST_H
#define CELLA_DEVICES_PCI_HOST_H

#include <stdatomic.h>
#include <stdint.h>

#include "devices/io.h"
#include "devices/pci.h"

#define PCI_HOST_PIO_BASE   0xcf8
#define PCI_HOST_PIO_LEN    8
#define PCI_HOST_ECAM_SIZE  (256u << 20)
#define PCI_HOST_CF8_ENABLE 0x80000000u
#define PCI_HOST_CF8_MASK   0x80fffffcu /* bits that latch */

#define PCI_VENDOR_INTEL        0x8086
#define PCI_DEVICE_I440FX       0x1237
#define PCI_DEVICE_PIIX3_ISA    0x7000
#define PCI_CHIPSET_SUBSYS_VEND 0x1af4
#define PCI_CHIPSET_SUBSYS_ID   0x1100
#define I440FX_PAM0             0x59
#define I440FX_PAM_COUNT        7
#define I440FX_SMRAM            0x72
#define I440FX_SMRAM_RESET      0x02
#define PIIX3_PIRQRC            0x60
#define PIIX3_PIRQ_COUNT        4
#define PIIX3_PIRQ_DISABLED     0x80
#define PIIX3_RCR_HARD          0x02 /* reset control: hard reset */
#define PIIX3_RCR_RESET         0x04 /* reset control: reset CPU now */

/*
 * What the chipset tells the machine. Each may be NULL. pam_changed and
 * pirq_changed run on a vCPU thread (or the state driver during a
 * topology reset) with the topology lock held; the arrays are valid only
 * during the call. reset_request runs on a vCPU thread with no lock held;
 * `rcr` is the byte written (bit 1 set: hard reset).
 */
struct pci_host_hooks {
    void *ctx;
    void (*pam_changed)(void *ctx, const uint8_t pam[I440FX_PAM_COUNT]);
    void (*pirq_changed)(void *ctx, const uint8_t pirq[PIIX3_PIRQ_COUNT]);
    void (*reset_request)(void *ctx, uint8_t rcr);
};

/*
 * The host bridge. `addr` is the 0xCF8 latch (one per machine, as on real
 * hardware: vCPUs share it and guests serialise their use of it).
 */
struct pci_host {
    struct pci_topology *topo;
    struct pci_host_hooks hooks;
    _Atomic uint32_t addr;
    _Atomic uint8_t rcr;
    struct pci_func host_bridge; /* 0.0.0 */
    struct pci_func isa_bridge;  /* 0.1.0 */
};

/*
 * Initialises h over topology `topo` (which must outlive it) with the
 * latch cleared. `hooks` is copied; NULL for none. Setup thread.
 */
void pci_host_init(struct pci_host *h, struct pci_topology *topo,
                   const struct pci_host_hooks *hooks);

/*
 * Builds the i440FX host bridge and PIIX3 ISA bridge functions and adds
 * them at 0.0.0 and 0.1.0. Errors from pci_topology_add(). Setup thread.
 */
int pci_host_add_chipset(struct pci_host *h);

/*
 * Port I/O for 0xCF8..0xCFF (PCI_HOST_PIO_BASE, PCI_HOST_PIO_LEN) and MMIO
 * for the ECAM window (PCI_HOST_ECAM_SIZE); opaque is the struct pci_host.
 * vCPU threads.
 */
extern const struct io_ops pci_host_pio_ops;
extern const struct io_ops pci_host_ecam_ops;

#endif
