/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/boot_fw.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/le.h"
#include "machine/machine_int.h"
#include "machine/x86_boot.h"

#define BOOTROM_MAX     (16u << 20)
#define ISA_BIOS_SIZE   0x20000u /* the last 128 KiB, also at 0xe0000 */
#define ROM_SLOT        2
#define KERNEL_FILE_MAX (512u << 20)
#define SERIAL_CONSOLE  0x3f8
/* Where SeaBIOS's linuxboot_dma ROM puts things (as QEMU's pc machine). */
#define LB_SETUP_ADDR   0x10000u
#define LB_CMDLINE_ADDR 0x20000u
#define LB_KERNEL_ADDR  0x100000u
#define LB_ACPI_RESERVE 0x20000u /* kept free below the top of low RAM for ACPI */

int read_boot_file(const char *path, size_t max, void **out, size_t *len, struct cella_errors *errs)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cella_err(errs, -errno, "", "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
        (uint64_t)st.st_size > max) {
        close(fd);
        return cella_err(errs, -EINVAL, "", "%s is not a regular file of 1 byte to %zu MiB", path,
                         max >> 20);
    }
    uint8_t *buf = malloc((size_t)st.st_size);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (!buf || got != (size_t)st.st_size) {
        free(buf);
        return cella_err(errs, -EIO, "", "cannot read %s", path);
    }
    *out = buf;
    *len = got;
    return 0;
}

static int map_rom(struct machine *m, struct boot_fw *b, const char *path,
                   struct cella_errors *errs)
{
    void *data;
    size_t len;
    int r = read_boot_file(path, BOOTROM_MAX, &data, &len, errs);
    if (r < 0)
        return r;
    if (len % 4096 || len < ISA_BIOS_SIZE) {
        free(data);
        return cella_err(errs, -EINVAL, "",
                         "bootrom %s: %zu bytes is not a whole number of "
                         "pages of at least 128 KiB",
                         path, len);
    }
    b->rom = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->rom == MAP_FAILED) {
        b->rom = NULL;
        free(data);
        return cella_err(errs, -ENOMEM, "", "cannot map the bootrom");
    }
    b->rom_len = len;
    memcpy(b->rom, data, len);
    /* The legacy BIOS area is plain RAM holding the ROM's tail (PAM is not emulated). */
    r = guest_mem_write(&m->mem, 0x100000 - ISA_BIOS_SIZE, (uint8_t *)data + len - ISA_BIOS_SIZE,
                        ISA_BIOS_SIZE);
    free(data);
    if (r < 0)
        return cella_err(errs, r, "", "guest RAM too small for the BIOS area");
    struct kvm_userspace_memory_region slot = {
        .slot = ROM_SLOT,
        .flags = KVM_MEM_READONLY,
        .guest_phys_addr = 0x100000000ull - len,
        .memory_size = len,
        .userspace_addr = (uint64_t)(uintptr_t)b->rom,
    };
    if (ioctl(m->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
        return cella_err(errs, -errno, "", "cannot map the bootrom read-only: %s", strerror(errno));
    return 0;
}

static int add_e820(struct machine *m, struct fw_cfg *fw)
{
    struct fw_cfg_e820_entry e[GUEST_MEM_MAX_REGIONS];
    for (size_t i = 0; i < m->mem.nregions; i++)
        e[i] = (struct fw_cfg_e820_entry){m->mem.regions[i].gpa, m->mem.regions[i].size,
                                          FW_CFG_E820_RAM};
    return fw_cfg_add_e820(fw, e, m->mem.nregions);
}

static int add_acpi(struct fw_cfg *fw, const struct acpi_platform *p)
{
    struct acpi_fw_tables t;
    int r = acpi_build_fw(p, &t);
    if (r < 0)
        return r;
    struct fw_cfg_loader l;
    fw_cfg_loader_init(&l);
    r = fw_cfg_add_file(fw, ACPI_FW_RSDP_FILE, t.rsdp, t.rsdp_len);
    if (r == 0)
        r = fw_cfg_add_file(fw, ACPI_FW_TABLES_FILE, t.tables, t.tables_len);
    for (size_t i = 0; r == 0 && i < t.ncmds; i++) {
        const struct acpi_loader_cmd *c = &t.cmds[i];
        switch (c->op) {
        case ACPI_LOADER_ALLOCATE:
            r = fw_cfg_loader_allocate(&l, c->file, c->align,
                                       c->zone == ACPI_LOADER_ZONE_FSEG ? FW_CFG_LOADER_ZONE_FSEG
                                                                        : FW_CFG_LOADER_ZONE_HIGH);
            break;
        case ACPI_LOADER_ADD_POINTER:
            r = fw_cfg_loader_add_pointer(&l, c->file, c->offset, c->size, c->target);
            break;
        case ACPI_LOADER_ADD_CHECKSUM:
            r = fw_cfg_loader_add_checksum(&l, c->file, c->offset, c->start, c->length);
            break;
        default:
            r = -EINVAL;
        }
    }
    if (r == 0)
        r = fw_cfg_add_table_loader(fw, &l);
    fw_cfg_loader_free(&l);
    acpi_fw_tables_free(&t);
    return r;
}

/*
 * The kernel for SeaBIOS's linuxboot_dma option ROM, split as QEMU does:
 * the real-mode setup (with its header filled in), the protected-mode
 * kernel, the initrd and the command line, each with its load address.
 */
struct linux_files {
    uint8_t *kernel, *initrd, *rom;
    size_t klen, ilen, romlen;
};

static int fill_linux(struct machine *m, struct fw_cfg *fw, struct linux_files *f,
                      const char *cmdline, struct cella_errors *errs)
{
    uint8_t *k = f->kernel;
    if (f->klen < 0x1000 || le32(k + 0x202) != 0x53726448)
        return cella_err(errs, -EINVAL, "", "the kernel is not a bzImage");
    unsigned sects = k[0x1f1] ? k[0x1f1] : 4;
    size_t setup_len = (size_t)(sects + 1) * 512;
    if (setup_len >= f->klen)
        return cella_err(errs, -EINVAL, "", "the kernel's setup covers the whole file");
    uint64_t initrd_max = le32(k + 0x22c);
    uint64_t low_top = m->mem.regions[0].size - LB_ACPI_RESERVE;
    if (initrd_max > low_top - 1)
        initrd_max = low_top - 1;
    if (f->ilen > initrd_max - LB_KERNEL_ADDR)
        return cella_err(errs, -E2BIG, "", "the initrd does not fit in low memory");
    uint32_t initrd_addr = (uint32_t)((initrd_max - f->ilen) & ~0xfffull);
    uint16_t heap_end = (uint16_t)(LB_CMDLINE_ADDR - LB_SETUP_ADDR - 0x200);
    k[0x210] = 0xb0;  /* type_of_loader: QEMU's, which linuxboot expects */
    k[0x211] |= 0x80; /* CAN_USE_HEAP */
    k[0x224] = (uint8_t)heap_end;
    k[0x225] = (uint8_t)(heap_end >> 8);
    put32(k + 0x228, LB_CMDLINE_ADDR);
    put32(k + 0x218, f->ilen ? initrd_addr : 0);
    put32(k + 0x21c, (uint32_t)f->ilen);
    size_t clen = strlen(cmdline) + 1;
    int r = fw_cfg_add_u32(fw, FW_CFG_SETUP_ADDR, LB_SETUP_ADDR);
    r = r ?: fw_cfg_add_u32(fw, FW_CFG_SETUP_SIZE, (uint32_t)setup_len);
    r = r ?: fw_cfg_add_bytes(fw, FW_CFG_SETUP_DATA, k, setup_len);
    r = r ?: fw_cfg_add_u32(fw, FW_CFG_KERNEL_ADDR, LB_KERNEL_ADDR);
    r = r ?: fw_cfg_add_u32(fw, FW_CFG_KERNEL_SIZE, (uint32_t)(f->klen - setup_len));
    r = r ?: fw_cfg_add_bytes(fw, FW_CFG_KERNEL_DATA, k + setup_len, f->klen - setup_len);
    r = r ?: fw_cfg_add_u32(fw, FW_CFG_CMDLINE_ADDR, LB_CMDLINE_ADDR);
    r = r ?: fw_cfg_add_u32(fw, FW_CFG_CMDLINE_SIZE, (uint32_t)clen);
    r = r ?: fw_cfg_add_bytes(fw, FW_CFG_CMDLINE_DATA, cmdline, clen);
    if (f->ilen) {
        r = r ?: fw_cfg_add_u32(fw, FW_CFG_INITRD_ADDR, initrd_addr);
        r = r ?: fw_cfg_add_u32(fw, FW_CFG_INITRD_SIZE, (uint32_t)f->ilen);
        r = r ?: fw_cfg_add_bytes(fw, FW_CFG_INITRD_DATA, f->initrd, f->ilen);
    }
    if (f->rom)
        r = r ?: fw_cfg_add_file(fw, "genroms/linuxboot_dma.bin", f->rom, f->romlen);
    if (r < 0)
        return cella_err(errs, r, "", "fw_cfg: cannot add the kernel: %s", strerror(-r));
    return 0;
}

/*
 * The kernel for SeaBIOS's linuxboot_dma option ROM, split as QEMU does:
 * the real-mode setup (with its header filled in), the protected-mode
 * kernel, the initrd and the command line, each with its load address.
 */
static int add_linux(struct machine *m, struct fw_cfg *fw, const struct machine_host *host,
                     struct cella_errors *errs)
{
    struct linux_files f = {0};
    void *p = NULL;
    int r = read_boot_file(host->kernel, KERNEL_FILE_MAX, &p, &f.klen, errs);
    f.kernel = p;
    if (r == 0 && host->initrd) {
        r = read_boot_file(host->initrd, KERNEL_FILE_MAX, &p, &f.ilen, errs);
        f.initrd = r == 0 ? p : NULL;
    }
    if (r == 0 && host->linuxboot_rom) {
        r = read_boot_file(host->linuxboot_rom, 1u << 20, &p, &f.romlen, errs);
        f.rom = r == 0 ? p : NULL;
    }
    if (r == 0)
        r = fill_linux(m, fw, &f, host->cmdline ? host->cmdline : "", errs);
    free(f.kernel);
    free(f.initrd);
    free(f.rom);
    return r;
}

int boot_fw_setup(struct machine *m, struct boot_fw *b, const struct machine_host *host,
                  const struct acpi_platform *acpi, struct cella_errors *errs)
{
    int r = map_rom(m, b, host->bootrom, errs);
    if (r < 0)
        return r;
    if ((r = fw_cfg_init(&b->fw, &m->mem)) < 0)
        return cella_err(errs, r, "", "fw_cfg: %s", strerror(-r));
    b->fw_ok = true;
    struct fw_cfg *fw = &b->fw;
    uint16_t sercon = SERIAL_CONSOLE;
    r = fw_cfg_add_u16(fw, FW_CFG_NB_CPUS, (uint16_t)m->ncpus);
    r = r ?: fw_cfg_add_u16(fw, FW_CFG_MAX_CPUS, (uint16_t)m->ncpus);
    r = r ?: fw_cfg_add_u64(fw, FW_CFG_RAM_SIZE, m->mem.size);
    r = r ?: fw_cfg_add_u16(fw, FW_CFG_NOGRAPHIC, 1);
    r = r ?: fw_cfg_add_u16(fw, FW_CFG_BOOT_MENU, 0);
    r = r ?: add_e820(m, fw);
    r = r ?: fw_cfg_add_file(fw, "etc/sercon-port", &sercon, sizeof(sercon));
    r = r ?: add_acpi(fw, acpi);
    if (r < 0)
        return cella_err(errs, r, "", "fw_cfg: %s", strerror(-r));
    /*
     * OVMF loads a fw_cfg kernel by itself; SeaBIOS needs the linuxboot
     * option ROM for it, which is then required.
     */
    if (host->kernel && (r = add_linux(m, fw, host, errs)) < 0)
        return r;
    r = bus_register(&m->pio, FW_CFG_IO_BASE, FW_CFG_IO_SIZE, &fw_cfg_io_ops, fw, "fw_cfg");
    if (r < 0)
        return cella_err(errs, r, "", "cannot map fw_cfg: %s", strerror(-r));
    return 0;
}

void boot_fw_destroy(struct boot_fw *b)
{
    if (b->fw_ok)
        fw_cfg_destroy(&b->fw);
    if (b->rom)
        munmap(b->rom, b->rom_len);
    memset(b, 0, sizeof(*b));
}
