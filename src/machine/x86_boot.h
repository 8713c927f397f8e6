/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Direct Linux boot (the x86 boot protocol, 64-bit entry) and the fixed
 * low-memory layout cella uses for it.
 *
 *   0x000500  GDT (null, null, code64 = 0x10, data = 0x18)
 *   0x007000  boot_params ("zero page")
 *   0x009000  PML4, 0x00a000 PDPT, 0x00b000-0x00efff page directories:
 *             the first 4 GiB identity-mapped with 2 MiB pages
 *   0x020000  kernel command line
 *   0x09fc00  EBDA-sized hole below 640 KiB (reserved in e820)
 *   0x0e0000  ACPI tables and the RSDP (reserved in e820)
 *   0x100000  the protected-mode kernel
 *   top of low RAM (below initrd_addr_max): the initrd
 *
 * Everything here is pure: it writes through the checked guest_mem accessor
 * and returns the register values the vCPU code loads; it never touches KVM.
 */
#ifndef CELLA_MACHINE_X86_BOOT_H
#define CELLA_MACHINE_X86_BOOT_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "machine/guest_mem.h"

#define BOOT_GDT_ADDR     0x500
#define BOOT_PARAMS_ADDR  0x7000
#define BOOT_PML4_ADDR    0x9000
#define BOOT_CMDLINE_ADDR 0x20000
#define BOOT_CMDLINE_MAX  0x10000
#define BOOT_ACPI_ADDR    0xe0000
#define BOOT_ACPI_SIZE    0x20000
#define BOOT_KERNEL_ADDR  0x100000
#define BOOT_EBDA_START   0x9fc00

#define E820_RAM      1
#define E820_RESERVED 2
#define E820_ACPI     3

struct e820_entry {
    uint64_t addr, size;
    uint32_t type;
};

#define E820_MAX 16

struct e820_map {
    size_t count;
    struct e820_entry e[E820_MAX];
};

/* The guest's memory map: RAM around the PCI hole, low reserved areas. */
void e820_build(const struct guest_mem *m, struct e820_map *out);

/* What the boot vCPU starts with. */
struct boot_entry {
    uint64_t rip, rsi, rsp;
    uint64_t cr0, cr3, cr4, efer;
    uint64_t gdt_base;
    uint16_t gdt_limit;
};

/*
 * Loads a bzImage and optional initrd into guest RAM, writes the command
 * line, boot_params (with the e820 map and, if rsdp != 0, acpi_rsdp_addr),
 * the GDT and identity page tables, and fills *entry. Refuses images that
 * are not bzImages with a 64-bit entry (boot protocol >= 2.12 and
 * XLF_KERNEL_64), or that do not fit. Errors name the file and reason.
 */
int x86_load_linux(const struct guest_mem *m, const void *kernel, size_t kernel_len,
                   const void *initrd, size_t initrd_len, const char *cmdline, uint64_t rsdp,
                   struct boot_entry *entry, struct cella_errors *errs);

#endif
