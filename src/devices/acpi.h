/* SPDX-License-Identifier: MPL-2.0 */
/*
 * ACPI tables for cella's PC platform, built from a description struct:
 * RSDP, XSDT and RSDT, FADT (revision 6, ACPI 6.3) with a FACS, DSDT, MADT
 * (revision 5) and, with ECAM, MCFG. Enough for a Linux guest to bring up
 * every vCPU, route PCI interrupts through the IOAPIC, find its serial
 * ports, power off (\_S5) and reset (FADT reset register).
 *
 * Platform decisions, which the machine must implement the same way:
 *
 * - IOAPIC id 0 (ACPI_IOAPIC_ID), GSI base 0, 24 pins. 0 is the reset value
 *   of KVM's IOAPIC id register, so the table matches the hardware without
 *   reprogramming it; IOAPIC ids only need to be unique among IOAPICs for
 *   an x86-64 guest (LAPIC ids are a separate name space on xAPIC).
 * - ISA IRQ n is GSI n, except IRQ 0 (PIT) which is GSI 2. The SCI
 *   (sci_irq, default 9) is level-triggered, active high.
 * - PCI INTx follows pci_intx_gsi() in devices/pci.h, the single source
 *   of truth: bus 0 device d, pin p (1 = INTA .. 4 = INTD, the Interrupt
 *   Pin register) is GSI 16 + ((d + p - 1) % 4), level-triggered; GSIs
 *   16-19 are used by nothing else. _PRT lists all 32 devices of bus 0.
 *   Devices behind a bridge are swizzled up to the bridge's slot on bus 0
 *   (pci_intx_swizzle()); the guest does the same because no bridge has
 *   its own _PRT. Linux programs these GSIs active low; KVM ignores IOAPIC
 *   polarity, so the machine asserts a line with level 1. The PIIX PIRQ
 *   route registers and the PCI Interrupt Line register do not affect
 *   this routing.
 * - \_S5 carries slp_typ_s5 (default ACPI_SLP_TYP_S5) for both PM1a and
 *   PM1b; the PM device powers off when PM1a_CNT is written with
 *   SLP_EN | SLP_TYP = slp_typ_s5.
 * - SMI_CMD is 0: the platform is always in ACPI mode; PM1a_CNT.SCI_EN
 *   should read 1. PM blocks: PM1a_EVT 4 bytes (status word, enable
 *   word), PM1a_CNT 2, PM_TMR 4 (24-bit timer: TMR_VAL_EXT clear; a 32-bit
 *   counter is fine, the guest masks it), GPE0 gpe0_len (status half, enable
 *   half). The power button is the fixed-feature one (PWR_BUTTON clear):
 *   the PM device requests a guest shutdown by setting PM1 PWRBTN_STS. No
 *   fixed sleep button, no RTC wake status (SLP_BUTTON, FIX_RTC set), no
 *   RTC century index.
 * - IAPC_BOOT_ARCH = LEGACY_DEVICES only. The 8042 flag is clear because
 *   cella's i8042 only implements the reset command: with the flag clear
 *   Linux does not probe for a keyboard controller, while its "kbd" reboot
 *   method (write 0xFE to port 0x64) still works. The guest resets through
 *   the FADT reset register first anyway (I/O 0xCF9, value 0x06).
 * - COM1-4 at 0x3F8/IRQ4, 0x2F8/IRQ3, 0x3E8/IRQ4, 0x2E8/IRQ3
 *   (acpi_com_port()), pvpanic at I/O 0x505 (ACPI_PVPANIC_PORT).
 * - With ECAM, MCFG covers buses 0..pci_bus_max of segment 0 at ecam_base
 *   (1 MiB per bus), and a PNP0C02 motherboard resource reserves that range
 *   so Linux accepts it. The host bridge is then _HID PNP0A08 with _CID
 *   PNP0A03 (ACPI's PCI Express root bridge identification); without ECAM
 *   it is _HID PNP0A03.
 *
 * Two layouts:
 *
 * (a) Direct (Linux) boot: acpi_build_at() lays every table out in one
 *     buffer that the caller copies to guest physical base_gpa, with
 *     absolute pointers and checksums filled in. The RSDP comes last,
 *     16-byte aligned. Put base_gpa in 0xE0000-0xFFFFF (e.g. 0xE0000) and
 *     Linux finds the RSDP by its BIOS-area scan; anywhere else in RAM
 *     below 4 GiB works too if the caller passes rsdp_gpa in the Linux
 *     boot_params field acpi_rsdp_addr (boot protocol 2.14+). Doing both is
 *     fine. The range must be guest RAM (no BIOS ROM is mapped there in a
 *     direct boot) that the guest does not use: e820 reserved or ACPI;
 *     Linux always reserves 0xA0000-0xFFFFF itself.
 *
 * (b) Firmware (SeaBIOS, OVMF) boot: acpi_build_fw() makes two blobs for
 *     fw_cfg files "etc/acpi/rsdp" and "etc/acpi/tables" and an ordered list
 *     of loader commands (allocate, add pointer, add checksum) that the
 *     fw_cfg table-loader builder turns into "etc/table-loader". Pointer
 *     fields hold offsets into their target blob; checksum bytes are 0 (OVMF
 *     computes the checksum over a range that includes the checksum byte,
 *     so it must start at 0).
 *
 * Threading: no global state; any thread may call these functions.
 */
#ifndef CELLA_DEVICES_ACPI_H
#define CELLA_DEVICES_ACPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Header identification written into every table. */
#define ACPI_OEM_ID       "CELLA "   /* 6 bytes */
#define ACPI_OEM_TABLE_ID "CELLAVM " /* 8 bytes */
#define ACPI_CREATOR_ID   "CELA"     /* 4 bytes */

#define ACPI_IOAPIC_ID     0
#define ACPI_IOAPIC_PINS   24
#define ACPI_MAX_CPUS      255 /* xAPIC ids 0..254; 255 is broadcast */
#define ACPI_SLP_TYP_S5    5   /* default SLP_TYP for soft-off */
#define ACPI_RESET_PORT    0xcf9
#define ACPI_RESET_VALUE   0x06
#define ACPI_PVPANIC_PORT  0x505
#define ACPI_MAX_COM       4
#define ACPI_MAX_GPE0_LEN  30           /* bytes; its GAS bit width is 8 bits */
#define ACPI_ECAM_BUS_SIZE (1ull << 20) /* ECAM bytes per bus */

/* fw_cfg file names of the firmware layout (b). */
#define ACPI_FW_RSDP_FILE   "etc/acpi/rsdp"
#define ACPI_FW_TABLES_FILE "etc/acpi/tables"

/*
 * What the guest platform looks like. Fill it with acpi_platform_default()
 * and change what differs. Invariants (checked by acpi_platform_check()):
 * 1 <= ncpus <= ACPI_MAX_CPUS; ioapic_addr and lapic_addr below 4 GiB;
 * pm1a_evt and pm1a_cnt nonzero; gpe0_len even, at most ACPI_MAX_GPE0_LEN,
 * and 0 exactly when gpe0_blk is 0; sci_irq an ISA IRQ other than 0 and 2; slp_typ_s5 <= 7;
 * windows have base <= limit; mmio32 below 4 GiB; the I/O window (when
 * pci_io_limit != 0) starts at 0xD00 or above; ecam_base 1 MiB aligned and
 * its window does not overlap an MMIO window; ncom <= ACPI_MAX_COM.
 */
struct acpi_platform {
    unsigned ncpus;       /* APIC ids and ACPI processor UIDs 0..ncpus-1 */
    uint64_t ioapic_addr; /* default 0xFEC00000; id ACPI_IOAPIC_ID */
    uint64_t lapic_addr;  /* default 0xFEE00000 */
    /* PM register blocks (I/O ports); pm_tmr or gpe0_blk 0 = absent. */
    uint16_t pm1a_evt, pm1a_cnt, pm_tmr, gpe0_blk; /* 0x600, 0x604, 0x608, 0x620 */
    uint8_t gpe0_len;                              /* bytes, default 4 */
    uint8_t sci_irq;                               /* ISA IRQ, default 9 */
    uint8_t slp_typ_s5;                            /* default ACPI_SLP_TYP_S5 */
    bool reset_reg; /* FADT reset register (I/O 0xCF9 = 0x06), default true */
    /* PCI root bridge resources for _CRS. */
    uint8_t pci_bus_max; /* last bus number, default 255 */
    /*
     * I/O window for PCI BARs, default 0xC000-0xFFFF. Ports 0-0xCF7 (ISA)
     * are always decoded; pci_io_limit 0 means "0xD00-0xFFFF".
     */
    uint16_t pci_io_base, pci_io_limit;
    uint64_t pci_mmio32_base, pci_mmio32_limit; /* default 0xC0000000-0xFEBFFFFF */
    uint64_t pci_mmio64_base, pci_mmio64_limit; /* limit 0 = no 64-bit window */
    bool ecam;                                  /* PCIe ECAM: MCFG + PNP0A08 */
    uint64_t ecam_base;
    unsigned ncom; /* COM1..COMn described in the DSDT (PNP0501) */
    bool pvpanic;  /* QEMU0001 at ACPI_PVPANIC_PORT in the DSDT */
};

/*
 * Fills p with the defaults documented in struct acpi_platform for ncpus
 * vCPUs: no ECAM, no 64-bit window, no COM ports, no pvpanic.
 */
void acpi_platform_default(struct acpi_platform *p, unsigned ncpus);

/* Checks p's invariants (see struct acpi_platform): 0 or -EINVAL. */
int acpi_platform_check(const struct acpi_platform *p);

/*
 * The GSI of PCI bus 0 device `device` (0..31), interrupt pin `pin` (1 =
 * INTA .. 4 = INTD): pci_intx_gsi(device, pin), which the DSDT's _PRT is
 * generated from. Returns 0 for a pin outside 1..4.
 */
uint32_t acpi_pci_irq(unsigned device, unsigned pin);

/*
 * The I/O base and ISA IRQ of COM port `index` (0 = COM1 .. 3 = COM4), as
 * the DSDT describes it. Returns 0, or -EINVAL for index >= ACPI_MAX_COM.
 */
int acpi_com_port(unsigned index, uint16_t *base, uint8_t *irq);

/*
 * Layout (a): builds every table into buf (capacity cap) for guest physical
 * address base_gpa, which must be 64-byte aligned (FACS), and the whole
 * range must end below 4 GiB. On success returns 0, sets *len to the bytes
 * used and *rsdp_gpa to the RSDP's guest address (16-byte aligned). Returns
 * -EINVAL for an invalid platform or base, -ENOSPC when cap is too small
 * (*len is then the size needed), -ENOMEM. buf is unspecified on failure.
 */
int acpi_build_at(const struct acpi_platform *p, uint64_t base_gpa, uint8_t *buf, size_t cap,
                  size_t *len, uint64_t *rsdp_gpa);

/* Table-loader commands (the fw_cfg "etc/table-loader" vocabulary). */
enum acpi_loader_op {
    /* Allocate guest memory for `file` and copy the blob in. */
    ACPI_LOADER_ALLOCATE = 1,
    /*
     * Add the guest address of `target` to the `size`-byte little-endian
     * field at `offset` in `file` (which holds an offset into target).
     */
    ACPI_LOADER_ADD_POINTER = 2,
    /*
     * Set the byte at `offset` in `file` so that bytes [start, start +
     * length) sum to 0 mod 256. The byte is in the range and is 0 before.
     */
    ACPI_LOADER_ADD_CHECKSUM = 3,
};

/* Where ALLOCATE should put a blob. */
enum acpi_loader_zone {
    ACPI_LOADER_ZONE_HIGH = 1, /* anywhere in RAM below 4 GiB */
    ACPI_LOADER_ZONE_FSEG = 2, /* the BIOS F segment (0xF0000-0xFFFFF) */
};

/*
 * One loader command. Only the fields named for its op are meaningful; the
 * others are 0/NULL. File names point to the static ACPI_FW_* strings.
 */
struct acpi_loader_cmd {
    enum acpi_loader_op op;
    const char *file;           /* all ops */
    uint32_t align;             /* ALLOCATE: power of two */
    enum acpi_loader_zone zone; /* ALLOCATE */
    const char *target;         /* ADD_POINTER */
    uint32_t offset;            /* ADD_POINTER: field; ADD_CHECKSUM: checksum byte */
    uint8_t size;               /* ADD_POINTER: 1, 2, 4 or 8 */
    uint32_t start, length;     /* ADD_CHECKSUM */
};

#define ACPI_LOADER_MAX_CMDS 32

/*
 * Layout (b) output. Invariant after a successful acpi_build_fw(): both
 * blobs are heap-owned; cmds[0..ncmds) must be executed in order (all
 * allocations, then pointers, then checksums).
 */
struct acpi_fw_tables {
    uint8_t *rsdp; /* contents of ACPI_FW_RSDP_FILE */
    size_t rsdp_len;
    uint8_t *tables; /* contents of ACPI_FW_TABLES_FILE */
    size_t tables_len;
    struct acpi_loader_cmd cmds[ACPI_LOADER_MAX_CMDS];
    size_t ncmds;
};

/*
 * Layout (b): builds the blobs and loader commands into *out (which need
 * not be initialised; free it with acpi_fw_tables_free()). Returns 0,
 * -EINVAL for an invalid platform, or -ENOMEM; on failure *out is empty.
 */
int acpi_build_fw(const struct acpi_platform *p, struct acpi_fw_tables *out);

/* Frees the blobs and empties t; accepts NULL. */
void acpi_fw_tables_free(struct acpi_fw_tables *t);

#endif
