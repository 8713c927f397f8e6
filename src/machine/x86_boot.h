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
 *   0x100000  the protected-mode kernel (bzImage path)
 *   pref_address (16 MiB): the kernel proper, up to pref_address + init_size:
 *             decompressed there by the guest (bzImage path) or by cella
 *             (vmlinux path: the payload's ELF segments at their p_paddr)
 *   top of low RAM (below initrd_addr_max): the initrd
 *
 * Everything here is pure: it writes through the checked guest_mem accessor
 * and returns the register values the vCPU code loads; it never touches KVM.
 */
#ifndef CELLA_MACHINE_X86_BOOT_H
#define CELLA_MACHINE_X86_BOOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "machine/guest_mem.h"
#include "machine/kernel_image.h"

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

/* Which way the kernel gets decompressed. */
enum x86_kernel_path {
    X86_KERNEL_AUTO,    /* vmlinux path when the payload allows, else bzImage path */
    X86_KERNEL_BZIMAGE, /* the guest runs the bzImage's own decompressor */
    X86_KERNEL_VMLINUX, /* cella decompresses; failing that is an error */
};

struct x86_boot_opts {
    enum x86_kernel_path path;
    enum kimg_cache_mode cache;
    char cache_dir[512]; /* "" = no cache */
};

/*
 * Options from the environment: CELLA_KERNEL_DECOMPRESS = 0 (bzImage path),
 * 1 (vmlinux path, required) or unset/auto; CELLA_KERNEL_CACHE = 0 (off),
 * 1 (every format) or unset/auto (kimg_cache_pays); the cache directory is
 * $CELLA_CACHE_DIR/kernels, else /var/cache/cella/kernels. Unknown values
 * mean auto.
 */
void x86_boot_opts_from_env(struct x86_boot_opts *o);

/* What x86_load_linux_opts did, for logs and tests. */
struct x86_boot_info {
    bool vmlinux;         /* booted the host-decompressed vmlinux */
    enum kimg_comp comp;  /* payload compression (vmlinux path) */
    bool from_cache;      /* vmlinux read from the cache */
    uint64_t kernel_end;  /* first byte above the kernel's footprint */
    uint64_t initrd_addr; /* 0 without an initrd */
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

/*
 * x86_load_linux with explicit options (x86_load_linux uses
 * x86_boot_opts_from_env) and an optional report (info may be NULL).
 *
 * The vmlinux path decompresses the bzImage's payload on the host straight
 * into guest RAM (kimg_load), which leaves each ELF segment at its physical
 * address with its bss tail zeroed, and enters at the physical address of
 * startup_64 with RSI = boot_params (KASLR_FLAG cleared). The boot_params
 * (from the bzImage's setup header), command line, initrd, e820, RSDP, GDT
 * and page tables are the same on both paths. The kernel is taken to occupy
 * up to max(the end of what was loaded, run address + init_size), where
 * the run address is the lowest segment (vmlinux) or pref_address (bzImage:
 * the decompressor moves a relocatable kernel loaded at 1 MiB there), and
 * the initrd goes above that. In auto mode a payload that cannot be used is
 * logged at debug level and the bzImage path taken instead.
 */
int x86_load_linux_opts(const struct guest_mem *m, const void *kernel, size_t kernel_len,
                        const void *initrd, size_t initrd_len, const char *cmdline, uint64_t rsdp,
                        const struct x86_boot_opts *opts, struct boot_entry *entry,
                        struct x86_boot_info *info, struct cella_errors *errs);

#endif
