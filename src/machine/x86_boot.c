/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/x86_boot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/le.h"
#include "common/log.h"

/* Offsets in a bzImage / boot_params (Documentation/arch/x86/boot.rst). */
#define HDR_SETUP_SECTS     0x1f1
#define HDR_BOOT_FLAG       0x1fe
#define HDR_JUMP            0x200
#define HDR_MAGIC           0x202
#define HDR_VERSION         0x206
#define HDR_TYPE_OF_LOADER  0x210
#define HDR_LOADFLAGS       0x211
#define HDR_RAMDISK_IMAGE   0x218
#define HDR_RAMDISK_SIZE    0x21c
#define HDR_HEAP_END_PTR    0x224
#define HDR_CMD_LINE_PTR    0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_XLOADFLAGS      0x236
#define HDR_CMDLINE_SIZE    0x238
#define HDR_PREF_ADDRESS    0x258
#define HDR_INIT_SIZE       0x260
#define BP_ACPI_RSDP_ADDR   0x070
#define BP_E820_ENTRIES     0x1e8
#define BP_E820_TABLE       0x2d0
#define BP_E820_MAX         128

#define LOADFLAG_LOADED_HIGH  0x01
#define LOADFLAG_KASLR        0x02
#define LOADFLAG_CAN_USE_HEAP 0x80
#define XLF_KERNEL_64         0x01

static void add_e820(struct e820_map *m, uint64_t addr, uint64_t size, uint32_t type)
{
    if (size && m->count < E820_MAX)
        m->e[m->count++] = (struct e820_entry){addr, size, type};
}

void e820_build(const struct guest_mem *m, struct e820_map *out)
{
    out->count = 0;
    const struct guest_mem_region *low = &m->regions[0];
    add_e820(out, 0, BOOT_EBDA_START, E820_RAM);
    add_e820(out, BOOT_EBDA_START, 0xa0000 - BOOT_EBDA_START, E820_RESERVED);
    add_e820(out, BOOT_ACPI_ADDR, 0x100000 - BOOT_ACPI_ADDR, E820_RESERVED);
    if (low->size > 0x100000)
        add_e820(out, 0x100000, low->size - 0x100000, E820_RAM);
    for (size_t i = 1; i < m->nregions; i++)
        add_e820(out, m->regions[i].gpa, m->regions[i].size, E820_RAM);
}

static int write_tables(const struct guest_mem *m, struct boot_entry *entry)
{
    /* GDT: null, null, 64-bit code (0x10), flat data (0x18) as the boot protocol wants. */
    static const uint64_t gdt[4] = {0, 0, 0x00af9b000000ffffull, 0x00cf93000000ffffull};
    if (guest_mem_write(m, BOOT_GDT_ADDR, gdt, sizeof(gdt)) < 0)
        return -EFAULT;
    /* Identity map 0-4 GiB: PML4[0] -> PDPT, PDPT[0..3] -> 4 PDs of 2 MiB pages. */
    uint64_t pml4 = BOOT_PML4_ADDR, pdpt = pml4 + 0x1000, pd = pdpt + 0x1000;
    uint64_t e = pdpt | 0x3;
    if (guest_mem_write(m, pml4, &e, 8) < 0)
        return -EFAULT;
    for (uint64_t i = 0; i < 4; i++) {
        e = (pd + i * 0x1000) | 0x3;
        if (guest_mem_write(m, pdpt + i * 8, &e, 8) < 0)
            return -EFAULT;
    }
    for (uint64_t i = 0; i < 4 * 512; i++) {
        e = (i << 21) | 0x83; /* present, writable, 2 MiB */
        if (guest_mem_write(m, pd + i * 8, &e, 8) < 0)
            return -EFAULT;
    }
    entry->gdt_base = BOOT_GDT_ADDR;
    entry->gdt_limit = sizeof(gdt) - 1;
    entry->cr3 = pml4;
    entry->cr4 = 0x20;                    /* PAE */
    entry->cr0 = 0x80050033;              /* PG WP NE ET MP PE */
    entry->efer = (1u << 8) | (1u << 10); /* LME LMA */
    return 0;
}

static int check_header(const uint8_t *k, size_t len, struct cella_errors *errs)
{
    if (len < 0x1000 || le16(k + HDR_BOOT_FLAG) != 0xaa55 || le32(k + HDR_MAGIC) != 0x53726448)
        return cella_err(errs, -EINVAL, "", "kernel: not a bzImage (no boot sector or HdrS)");
    uint16_t version = le16(k + HDR_VERSION);
    if (version < 0x020c || !(le16(k + HDR_XLOADFLAGS) & XLF_KERNEL_64))
        return cella_err(errs, -EINVAL, "",
                         "kernel: boot protocol %u.%02u without a 64-bit entry point "
                         "(need 2.12+ with XLF_KERNEL_64)",
                         version >> 8, version & 0xff);
    return 0;
}

static int load_initrd(const struct guest_mem *m, const uint8_t *k, uint64_t kernel_end,
                       const void *initrd, size_t initrd_len, uint8_t *bp,
                       struct cella_errors *errs)
{
    if (!initrd || !initrd_len)
        return 0;
    uint64_t max = (uint64_t)le32(k + HDR_INITRD_ADDR_MAX) + 1;
    uint64_t top = m->regions[0].size < max ? m->regions[0].size : max;
    if (initrd_len > top || ((top - initrd_len) & ~0xfffull) < kernel_end)
        return cella_err(errs, -E2BIG, "",
                         "initrd: %zu bytes do not fit below %#llx after the kernel; give the VM "
                         "more memory",
                         initrd_len, (unsigned long long)top);
    uint64_t at = (top - initrd_len) & ~0xfffull;
    if (guest_mem_write(m, at, initrd, initrd_len) < 0)
        return cella_err(errs, -EFAULT, "", "initrd: cannot write at %#llx",
                         (unsigned long long)at);
    put32(bp + HDR_RAMDISK_IMAGE, (uint32_t)at);
    put32(bp + HDR_RAMDISK_SIZE, (uint32_t)initrd_len);
    return 0;
}

static void write_e820(const struct guest_mem *m, uint8_t *bp)
{
    struct e820_map map;
    e820_build(m, &map);
    bp[BP_E820_ENTRIES] = (uint8_t)map.count;
    for (size_t i = 0; i < map.count && i < BP_E820_MAX; i++) {
        uint8_t *e = bp + BP_E820_TABLE + i * 20;
        put64(e, map.e[i].addr);
        put64(e + 8, map.e[i].size);
        put32(e + 16, map.e[i].type);
    }
}

void x86_boot_opts_from_env(struct x86_boot_opts *o)
{
    memset(o, 0, sizeof(*o));
    const char *v = getenv("CELLA_KERNEL_DECOMPRESS");
    /*
     * The host-side decompression fast path is opt-in ("auto" or "1") until
     * a rare hang seen once in the nested test host is understood.
     */
    o->path = !v                       ? X86_KERNEL_BZIMAGE
              : strcmp(v, "auto") == 0 ? X86_KERNEL_AUTO
              : strcmp(v, "1") == 0    ? X86_KERNEL_VMLINUX
                                       : X86_KERNEL_BZIMAGE;
    v = getenv("CELLA_KERNEL_CACHE");
    o->cache = !v                    ? KIMG_CACHE_AUTO
               : strcmp(v, "0") == 0 ? KIMG_CACHE_OFF
               : strcmp(v, "1") == 0 ? KIMG_CACHE_ALWAYS
                                     : KIMG_CACHE_AUTO;
    v = getenv("CELLA_CACHE_DIR");
    int n = snprintf(o->cache_dir, sizeof(o->cache_dir), "%s/kernels",
                     v && *v ? v : "/var/cache/cella");
    if (n < 0 || (size_t)n >= sizeof(o->cache_dir))
        o->cache_dir[0] = '\0';
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Host-side decompression straight into guest RAM, or (at debug level) why not. */
static int try_vmlinux(const struct guest_mem *m, const void *kernel, size_t kernel_len,
                       const struct x86_boot_opts *opts, struct kimg_loaded *vm,
                       struct cella_errors *errs)
{
    struct kimg_opts ko = {
        .lo = BOOT_KERNEL_ADDR,
        .hi = m->regions[0].size,
        .cache = opts->cache,
        .cache_dir = opts->cache_dir[0] ? opts->cache_dir : NULL,
    };
    struct cella_errors why = {0};
    double t0 = now_ms();
    uint8_t *ram = guest_mem_ptr(m, 0, ko.hi);
    int r = ram ? kimg_load(kernel, kernel_len, &ko, ram, vm, &why)
                : cella_err(&why, -EFAULT, "", "no low RAM");
    if (r == 0) {
        log_msg(LOG_DEBUG, "boot",
                "kernel: %s payload -> %u-byte vmlinux (%s) in %.1f ms, entry %#llx, "
                "segments [%#llx, %#llx)",
                kimg_comp_name(vm->payload.comp), vm->payload.out_len,
                vm->from_cache ? "from cache"
                : vm->cached   ? "decompressed, cached"
                               : "decompressed",
                now_ms() - t0, (unsigned long long)vm->elf.entry, (unsigned long long)vm->elf.start,
                (unsigned long long)vm->elf.end);
    } else {
        const char *msg = why.count ? why.items[0].message : strerror(-r);
        if (opts->path == X86_KERNEL_VMLINUX)
            cella_err(errs, r, "", "kernel: cannot boot it as a vmlinux: %s", msg);
        else
            log_msg(LOG_DEBUG, "boot", "kernel: using the in-guest decompressor: %s", msg);
    }
    cella_errors_clear(&why);
    return r;
}

int x86_load_linux(const struct guest_mem *m, const void *kernel, size_t kernel_len,
                   const void *initrd, size_t initrd_len, const char *cmdline, uint64_t rsdp,
                   struct boot_entry *entry, struct cella_errors *errs)
{
    struct x86_boot_opts opts;
    x86_boot_opts_from_env(&opts);
    return x86_load_linux_opts(m, kernel, kernel_len, initrd, initrd_len, cmdline, rsdp, &opts,
                               entry, NULL, errs);
}

int x86_load_linux_opts(const struct guest_mem *m, const void *kernel, size_t kernel_len,
                        const void *initrd, size_t initrd_len, const char *cmdline, uint64_t rsdp,
                        const struct x86_boot_opts *opts, struct boot_entry *entry,
                        struct x86_boot_info *info, struct cella_errors *errs)
{
    const uint8_t *k = kernel;
    struct x86_boot_info dummy;
    if (!info)
        info = &dummy;
    memset(info, 0, sizeof(*info));
    int r = check_header(k, kernel_len, errs);
    if (r < 0)
        return r;
    unsigned setup_sects = k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4;
    size_t setup_len = (size_t)(setup_sects + 1) * 512;
    if (setup_len >= kernel_len)
        return cella_err(errs, -EINVAL, "", "kernel: setup (%zu bytes) is the whole file",
                         setup_len);
    size_t pm_len = kernel_len - setup_len;
    uint64_t low_end = m->regions[0].size;

    struct kimg_loaded vm = {0};
    if (opts->path != X86_KERNEL_BZIMAGE) {
        r = try_vmlinux(m, kernel, kernel_len, opts, &vm, errs);
        if (r < 0 && opts->path == X86_KERNEL_VMLINUX)
            return r;
        info->vmlinux = r == 0;
        r = 0;
    }

    /*
     * The kernel proper runs at pref_address (a relocatable kernel loaded
     * below it moves there; without KASLR) and needs init_size bytes from
     * there: its _end plus what its early boot uses. The bzImage itself
     * sits at 1 MiB; the vmlinux's segments wherever their p_paddr says.
     */
    uint64_t init_size = le32(k + HDR_INIT_SIZE), run_at, kernel_end;
    if (info->vmlinux) {
        run_at = vm.elf.start;
        kernel_end = vm.elf.end;
    } else {
        run_at = le64(k + HDR_PREF_ADDRESS);
        if (run_at < BOOT_KERNEL_ADDR)
            run_at = BOOT_KERNEL_ADDR;
        kernel_end = BOOT_KERNEL_ADDR + pm_len;
    }
    uint64_t footprint_end;
    if (__builtin_add_overflow(run_at, init_size, &footprint_end))
        footprint_end = UINT64_MAX;
    if (footprint_end > kernel_end)
        kernel_end = footprint_end;
    uint64_t rip = BOOT_KERNEL_ADDR + 0x200;
    if (kernel_end > low_end)
        r = cella_err(errs, -E2BIG, "",
                      "kernel: needs %llu bytes from %#llx (init_size); too little memory",
                      (unsigned long long)(kernel_end - run_at), (unsigned long long)run_at);
    else if (!info->vmlinux && guest_mem_write(m, BOOT_KERNEL_ADDR, k + setup_len, pm_len) < 0)
        r = cella_err(errs, -E2BIG, "", "kernel: cannot write %zu bytes at 1 MiB", pm_len);
    if (info->vmlinux) {
        rip = vm.elf.entry;
        info->comp = vm.payload.comp;
        info->from_cache = vm.from_cache;
    }
    if (r < 0)
        return r;
    info->kernel_end = kernel_end;

    uint8_t bp[4096] = {0};
    size_t hdr_end = HDR_JUMP + 2 + k[HDR_JUMP + 1];
    memcpy(bp + HDR_SETUP_SECTS, k + HDR_SETUP_SECTS, hdr_end - HDR_SETUP_SECTS);
    bp[HDR_TYPE_OF_LOADER] = 0xff;
    bp[HDR_LOADFLAGS] |= LOADFLAG_LOADED_HIGH | LOADFLAG_CAN_USE_HEAP;
    /* KASLR_FLAG tells the kernel its decompressor randomised it; ours did not. */
    bp[HDR_LOADFLAGS] &= (uint8_t)~LOADFLAG_KASLR;
    put16(bp + HDR_HEAP_END_PTR, 0xfe00 - 0x200);

    size_t clen = cmdline ? strlen(cmdline) : 0;
    uint32_t cmax = le32(k + HDR_CMDLINE_SIZE);
    if (clen >= BOOT_CMDLINE_MAX || (cmax && clen > cmax))
        return cella_err(errs, -E2BIG, "", "kernel command line of %zu bytes is too long", clen);
    if (guest_mem_write(m, BOOT_CMDLINE_ADDR, cmdline ? cmdline : "", clen + 1) < 0)
        return -EFAULT;
    put32(bp + HDR_CMD_LINE_PTR, BOOT_CMDLINE_ADDR);

    r = load_initrd(m, k, kernel_end, initrd, initrd_len, bp, errs);
    if (r < 0)
        return r;
    info->initrd_addr = initrd_len ? le32(bp + HDR_RAMDISK_IMAGE) : 0;
    write_e820(m, bp);
    if (rsdp)
        put64(bp + BP_ACPI_RSDP_ADDR, rsdp);
    if (guest_mem_write(m, BOOT_PARAMS_ADDR, bp, sizeof(bp)) < 0)
        return -EFAULT;
    memset(entry, 0, sizeof(*entry));
    if (write_tables(m, entry) < 0)
        return cella_err(errs, -EFAULT, "", "guest memory too small for boot tables");
    entry->rip = rip;
    entry->rsi = BOOT_PARAMS_ADDR;
    entry->rsp = 0x8ff0;
    return 0;
}
