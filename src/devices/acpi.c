/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/acpi.h"

#include "devices/aml.h"
#include "devices/pci.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * How this file works: build_set() builds every table into its own buffer
 * with pointer fields left 0 and records each pointer as a link (table,
 * field offset, size, target table). The two layouts then place the
 * buffers and resolve the links: acpi_build_at() with absolute guest
 * addresses and final checksums, acpi_build_fw() with offsets and loader
 * commands. Field offsets below are from the ACPI 6.3 specification,
 * chapter 5 (tables named in each builder).
 */

enum table_id { T_FACS, T_DSDT, T_FADT, T_MADT, T_MCFG, T_XSDT, T_RSDT, T_RSDP, T_COUNT };

struct link {
    enum table_id from, to;
    uint32_t offset; /* of the pointer field in `from` */
    uint8_t size;
};

#define MAX_LINKS 16

/* Invariant: a table is absent when its buffer is empty (MCFG without ECAM). */
struct table_set {
    struct aml_buf t[T_COUNT];
    struct link links[MAX_LINKS];
    size_t nlinks;
};

/* Where the tables of a set go: offsets in the tables blob, RSDP apart. */
struct layout {
    size_t off[T_COUNT]; /* T_RSDP: offset in layout (a)'s single buffer */
    size_t tables_len;   /* bytes of everything but the RSDP */
};

#define HDR_LEN          36
#define HDR_LENGTH_OFF   4
#define HDR_CHECKSUM_OFF 9

#define RSDP_LEN          36
#define RSDP_CHECKSUM_OFF 8
#define RSDP_V1_LEN       20
#define RSDP_RSDT_OFF     16
#define RSDP_XSDT_OFF     24
#define RSDP_XCHECKSUM    32

#define FACS_LEN    64
#define FACS_ALIGN  64
#define RSDP_ALIGN  16
#define TABLE_ALIGN 8

#define GIB4 0x100000000ull

/* ---- platform description ---------------------------------------------- */

void acpi_platform_default(struct acpi_platform *p, unsigned ncpus)
{
    *p = (struct acpi_platform){
        .ncpus = ncpus,
        .ioapic_addr = 0xfec00000,
        .lapic_addr = 0xfee00000,
        .pm1a_evt = 0x600,
        .pm1a_cnt = 0x604,
        .pm_tmr = 0x608,
        .gpe0_blk = 0x620,
        .gpe0_len = 4,
        .sci_irq = 9,
        .slp_typ_s5 = ACPI_SLP_TYP_S5,
        .reset_reg = true,
        .pci_bus_max = 0xff,
        .pci_io_base = 0xc000,
        .pci_io_limit = 0xffff,
        .pci_mmio32_base = 0xc0000000,
        .pci_mmio32_limit = 0xfebfffff,
    };
}

static bool overlaps(uint64_t a_lo, uint64_t a_hi, uint64_t b_lo, uint64_t b_hi)
{
    return a_lo <= b_hi && b_lo <= a_hi;
}

int acpi_platform_check(const struct acpi_platform *p)
{
    if (p->ncpus < 1 || p->ncpus > ACPI_MAX_CPUS)
        return -EINVAL;
    if (p->ioapic_addr >= GIB4 || p->lapic_addr >= GIB4)
        return -EINVAL;
    if (!p->pm1a_evt || !p->pm1a_cnt)
        return -EINVAL;
    if ((p->gpe0_len & 1) || p->gpe0_len > ACPI_MAX_GPE0_LEN ||
        (p->gpe0_blk == 0) != (p->gpe0_len == 0))
        return -EINVAL;
    if (p->sci_irq == 0 || p->sci_irq == 2 || p->sci_irq > 15)
        return -EINVAL;
    if (p->slp_typ_s5 > 7)
        return -EINVAL;
    if (p->pci_io_limit && (p->pci_io_base > p->pci_io_limit || p->pci_io_base < 0xd00))
        return -EINVAL;
    if (p->pci_mmio32_base > p->pci_mmio32_limit || p->pci_mmio32_limit >= GIB4)
        return -EINVAL;
    bool mmio64 = p->pci_mmio64_limit != 0;
    if (mmio64 && p->pci_mmio64_base > p->pci_mmio64_limit)
        return -EINVAL;
    if (p->ecam) {
        uint64_t size = ((uint64_t)p->pci_bus_max + 1) * ACPI_ECAM_BUS_SIZE, end;
        if (p->ecam_base % ACPI_ECAM_BUS_SIZE ||
            __builtin_add_overflow(p->ecam_base, size - 1, &end))
            return -EINVAL;
        if (overlaps(p->ecam_base, end, p->pci_mmio32_base, p->pci_mmio32_limit) ||
            (mmio64 && overlaps(p->ecam_base, end, p->pci_mmio64_base, p->pci_mmio64_limit)))
            return -EINVAL;
    }
    if (p->ncom > ACPI_MAX_COM)
        return -EINVAL;
    return 0;
}

uint32_t acpi_pci_irq(unsigned device, unsigned pin)
{
    if (pin < 1 || pin > 4)
        return 0;
    return pci_intx_gsi((uint8_t)(device & 31), (uint8_t)pin);
}

int acpi_com_port(unsigned index, uint16_t *base, uint8_t *irq)
{
    static const uint16_t bases[ACPI_MAX_COM] = {0x3f8, 0x2f8, 0x3e8, 0x2e8};
    static const uint8_t irqs[ACPI_MAX_COM] = {4, 3, 4, 3};
    if (index >= ACPI_MAX_COM)
        return -EINVAL;
    *base = bases[index];
    *irq = irqs[index];
    return 0;
}

/* ---- common table pieces ------------------------------------------------ */

/* Appends a System Description Table Header (5.2.6) with length and checksum 0. */
static void header(struct aml_buf *b, const char *sig, uint8_t revision)
{
    aml_append(b, sig, 4);
    aml_append_le(b, 0, 4); /* length: set by finish() */
    aml_append_u8(b, revision);
    aml_append_u8(b, 0); /* checksum: set by the layout */
    aml_append(b, ACPI_OEM_ID, 6);
    aml_append(b, ACPI_OEM_TABLE_ID, 8);
    aml_append_le(b, 1, 4); /* OEM revision */
    aml_append(b, ACPI_CREATOR_ID, 4);
    aml_append_le(b, 1, 4); /* creator revision */
}

/* Stores the table length into the header. */
static void finish(struct aml_buf *b)
{
    aml_patch_le(b, HDR_LENGTH_OFF, b->len, 4);
}

static void add_link(struct table_set *s, enum table_id from, uint32_t offset, uint8_t size,
                     enum table_id to)
{
    if (s->nlinks == MAX_LINKS) {
        aml_buf_fail(&s->t[from], -E2BIG); /* a builder bug; tests catch it */
        return;
    }
    s->links[s->nlinks++] = (struct link){.from = from, .to = to, .offset = offset, .size = size};
}

static uint8_t sum8(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = (uint8_t)(s + p[i]);
    return s;
}

/* ---- DSDT (5.2.11.1) ---------------------------------------------------- */

/* Name(_CRS, ResourceTemplate() { ... }) of the PCI root bridge. */
static void pci0_crs(struct aml_buf *b, const struct acpi_platform *p)
{
    struct aml_buf rt;
    aml_buf_init(&rt);
    aml_rt_word_bus(&rt, AML_RT_PRODUCER, 0, p->pci_bus_max);
    aml_rt_io(&rt, 0xcf8, 0xcf8, 1, 8); /* config address/data, and reset at 0xCF9 */
    aml_rt_word_io(&rt, AML_RT_PRODUCER, 0x0000, 0x0cf7);
    if (p->pci_io_limit)
        aml_rt_word_io(&rt, AML_RT_PRODUCER, p->pci_io_base, p->pci_io_limit);
    else
        aml_rt_word_io(&rt, AML_RT_PRODUCER, 0x0d00, 0xffff);
    aml_rt_dword_memory(&rt, AML_RT_PRODUCER, AML_RT_CACHEABLE, 0xa0000, 0xbffff); /* VGA */
    aml_rt_dword_memory(&rt, AML_RT_PRODUCER, AML_RT_NON_CACHEABLE, (uint32_t)p->pci_mmio32_base,
                        (uint32_t)p->pci_mmio32_limit);
    if (p->pci_mmio64_limit)
        aml_rt_qword_memory(&rt, AML_RT_PRODUCER, AML_RT_NON_CACHEABLE, p->pci_mmio64_base,
                            p->pci_mmio64_limit);
    aml_rt_end(&rt);
    aml_name(b, "_CRS");
    aml_resource_template(b, &rt);
    aml_buf_free(&rt);
}

/*
 * Name(_PRT, Package() { Package() { 0xDDDDFFFF, pin, Zero, gsi }, ... }):
 * every pin of every bus 0 device straight to its GSI (Source Zero, 6.2.13).
 */
static void pci0_prt(struct aml_buf *b)
{
    aml_name(b, "_PRT");
    size_t prt = aml_package_begin(b, 32 * 4);
    for (unsigned dev = 0; dev < 32; dev++) {
        for (unsigned pin = 1; pin <= 4; pin++) {
            size_t e = aml_package_begin(b, 4);
            aml_integer(b, ((uint64_t)dev << 16) | 0xffff);
            aml_integer(b, pin - 1); /* _PRT pins: 0 = INTA */
            aml_integer(b, 0);
            aml_integer(b, acpi_pci_irq(dev, pin));
            aml_end(b, e);
        }
    }
    aml_end(b, prt);
}

static void dsdt_pci0(struct aml_buf *b, const struct acpi_platform *p)
{
    size_t dev = aml_device_begin(b, "PCI0");
    aml_name(b, "_HID");
    aml_eisaid(b, p->ecam ? "PNP0A08" : "PNP0A03");
    if (p->ecam) {
        aml_name(b, "_CID");
        aml_eisaid(b, "PNP0A03");
    }
    aml_name(b, "_UID");
    aml_integer(b, 0);
    aml_name(b, "_SEG");
    aml_integer(b, 0);
    aml_name(b, "_BBN");
    aml_integer(b, 0);
    pci0_crs(b, p);
    pci0_prt(b);
    aml_end(b, dev);
}

/* A PNP0C02 motherboard resource reserving the ECAM window. */
static void dsdt_ecam_reservation(struct aml_buf *b, const struct acpi_platform *p)
{
    uint64_t size = ((uint64_t)p->pci_bus_max + 1) * ACPI_ECAM_BUS_SIZE;
    struct aml_buf rt;
    aml_buf_init(&rt);
    if (p->ecam_base + size <= GIB4)
        aml_rt_memory32_fixed(&rt, true, (uint32_t)p->ecam_base, (uint32_t)size);
    else
        aml_rt_qword_memory(&rt, AML_RT_CONSUMER, AML_RT_NON_CACHEABLE, p->ecam_base,
                            p->ecam_base + size - 1);
    aml_rt_end(&rt);

    size_t dev = aml_device_begin(b, "MRES");
    aml_name(b, "_HID");
    aml_eisaid(b, "PNP0C02");
    aml_name(b, "_UID");
    aml_integer(b, 0);
    aml_name(b, "_CRS");
    aml_resource_template(b, &rt);
    aml_end(b, dev);
    aml_buf_free(&rt);
}

/* Device(COMn) { _HID PNP0501, _UID n, _CRS { IO, IRQNoFlags } }. */
static void dsdt_com(struct aml_buf *b, unsigned index)
{
    uint16_t base;
    uint8_t irq;
    if (acpi_com_port(index, &base, &irq) < 0) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    struct aml_buf rt;
    aml_buf_init(&rt);
    aml_rt_io(&rt, base, base, 1, 8);
    aml_rt_irq_noflags(&rt, irq);
    aml_rt_end(&rt);

    char name[16];
    snprintf(name, sizeof(name), "COM%u", index + 1);
    size_t dev = aml_device_begin(b, name);
    aml_name(b, "_HID");
    aml_eisaid(b, "PNP0501");
    aml_name(b, "_UID");
    aml_integer(b, index + 1);
    aml_name(b, "_CRS");
    aml_resource_template(b, &rt);
    aml_end(b, dev);
    aml_buf_free(&rt);
}

/* The pvpanic device: one I/O port, found by Linux's pvpanic driver. */
static void dsdt_pvpanic(struct aml_buf *b)
{
    struct aml_buf rt;
    aml_buf_init(&rt);
    aml_rt_io(&rt, ACPI_PVPANIC_PORT, ACPI_PVPANIC_PORT, 1, 1);
    aml_rt_end(&rt);

    size_t dev = aml_device_begin(b, "PEVT");
    aml_name(b, "_HID");
    aml_string(b, "QEMU0001");
    aml_name(b, "_UID");
    aml_integer(b, 0);
    aml_name(b, "_CRS");
    aml_resource_template(b, &rt);
    aml_end(b, dev);
    aml_buf_free(&rt);
}

/*
 * One processor device (ACPI0007, 8.4) per vCPU; its _UID is the ACPI
 * processor UID in the MADT, which lets the guest tie the two together.
 */
static void dsdt_cpus(struct aml_buf *b, const struct acpi_platform *p)
{
    for (unsigned i = 0; i < p->ncpus; i++) {
        char name[16];
        snprintf(name, sizeof(name), "C%03X", i);
        size_t dev = aml_device_begin(b, name);
        aml_name(b, "_HID");
        aml_string(b, "ACPI0007");
        aml_name(b, "_UID");
        aml_integer(b, i);
        aml_end(b, dev);
    }
}

static void build_dsdt(struct aml_buf *b, const struct acpi_platform *p)
{
    header(b, "DSDT", 2); /* revision 2: 64-bit integers */

    /* \_S5: SLP_TYPa, SLP_TYPb, two reserved values. */
    aml_name(b, "\\_S5");
    size_t s5 = aml_package_begin(b, 4);
    aml_integer(b, p->slp_typ_s5);
    aml_integer(b, p->slp_typ_s5);
    aml_integer(b, 0);
    aml_integer(b, 0);
    aml_end(b, s5);

    size_t sb = aml_scope_begin(b, "\\_SB");
    dsdt_cpus(b, p);
    dsdt_pci0(b, p);
    if (p->ecam)
        dsdt_ecam_reservation(b, p);
    for (unsigned i = 0; i < p->ncom; i++)
        dsdt_com(b, i);
    if (p->pvpanic)
        dsdt_pvpanic(b);
    aml_end(b, sb);
    finish(b);
}

/* ---- FACS (5.2.10) and FADT (5.2.9) ------------------------------------ */

static void build_facs(struct aml_buf *b)
{
    uint8_t *f = aml_append_zero(b, FACS_LEN);
    if (!f)
        return;
    memcpy(f, "FACS", 4);
    aml_store_le(f + 4, FACS_LEN, 4);
    f[32] = 2; /* version */
}

/* Generic Address Structure (5.2.3.2) access sizes and spaces. */
enum {
    GAS_SYSTEM_IO = 1,
    GAS_ACCESS_BYTE = 1,
    GAS_ACCESS_WORD = 2,
    GAS_ACCESS_DWORD = 3,
};

static void gas(struct aml_buf *b, size_t off, uint8_t bits, uint8_t access, uint64_t port)
{
    if (!port)
        return; /* an absent block: all zero */
    aml_patch_le(b, off, GAS_SYSTEM_IO, 1);
    aml_patch_le(b, off + 1, bits, 1);
    aml_patch_le(b, off + 2, 0, 1); /* bit offset */
    aml_patch_le(b, off + 3, access, 1);
    aml_patch_le(b, off + 4, port, 8);
}

/* FADT fixed feature flags (Table 5-34) and IA-PC boot flags (Table 5-35). */
enum {
    FADT_WBINVD = 1u << 0,
    FADT_PROC_C1 = 1u << 2,
    FADT_SLP_BUTTON = 1u << 5, /* no fixed sleep button */
    FADT_FIX_RTC = 1u << 6,    /* no RTC wake status in PM1 */
    FADT_RESET_REG_SUP = 1u << 10,
    BOOT_LEGACY_DEVICES = 1u << 0,
};

#define FADT_LEN        276
#define FADT_REVISION   6
#define FADT_MINOR      3 /* ACPI 6.3 */
#define FADT_FACS_OFF   36
#define FADT_DSDT_OFF   40
#define FADT_X_DSDT_OFF 140

static void build_fadt(struct aml_buf *b, const struct acpi_platform *p)
{
    header(b, "FACP", FADT_REVISION);
    if (!aml_append_zero(b, FADT_LEN - HDR_LEN))
        return;
    /* FIRMWARE_CTRL (36), DSDT (40), X_DSDT (140): links. */
    aml_patch_le(b, 45, 0, 1); /* Preferred_PM_Profile: unspecified */
    aml_patch_le(b, 46, p->sci_irq, 2);
    /* SMI_CMD (48), ACPI_ENABLE/DISABLE: 0, always in ACPI mode. */
    aml_patch_le(b, 56, p->pm1a_evt, 4);
    aml_patch_le(b, 64, p->pm1a_cnt, 4);
    aml_patch_le(b, 76, p->pm_tmr, 4);
    aml_patch_le(b, 80, p->gpe0_blk, 4);
    aml_patch_le(b, 88, 4, 1);                 /* PM1_EVT_LEN */
    aml_patch_le(b, 89, 2, 1);                 /* PM1_CNT_LEN */
    aml_patch_le(b, 91, p->pm_tmr ? 4 : 0, 1); /* PM_TMR_LEN */
    aml_patch_le(b, 92, p->gpe0_len, 1);
    aml_patch_le(b, 96, 0x0fff, 2);               /* P_LVL2_LAT > 100: no C2 */
    aml_patch_le(b, 98, 0x0fff, 2);               /* P_LVL3_LAT > 1000: no C3 */
    aml_patch_le(b, 109, BOOT_LEGACY_DEVICES, 2); /* IAPC_BOOT_ARCH, see acpi.h */
    uint32_t flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC;
    if (p->reset_reg) {
        flags |= FADT_RESET_REG_SUP;
        gas(b, 116, 8, GAS_ACCESS_BYTE, ACPI_RESET_PORT);
        aml_patch_le(b, 128, ACPI_RESET_VALUE, 1);
    }
    aml_patch_le(b, 112, flags, 4);
    aml_patch_le(b, 131, FADT_MINOR, 1);
    gas(b, 148, 32, GAS_ACCESS_WORD, p->pm1a_evt);                         /* X_PM1a_EVT_BLK */
    gas(b, 172, 16, GAS_ACCESS_WORD, p->pm1a_cnt);                         /* X_PM1a_CNT_BLK */
    gas(b, 208, 32, GAS_ACCESS_DWORD, p->pm_tmr);                          /* X_PM_TMR_BLK */
    gas(b, 220, (uint8_t)(p->gpe0_len * 8), GAS_ACCESS_BYTE, p->gpe0_blk); /* X_GPE0_BLK */
    finish(b);
}

/* ---- MADT (5.2.12) ------------------------------------------------------ */

enum {
    MADT_LAPIC = 0,
    MADT_IOAPIC = 1,
    MADT_ISO = 2,
    MADT_LAPIC_NMI = 4,
    MADT_PCAT_COMPAT = 1,
    MPS_ACTIVE_HIGH = 1,
    MPS_EDGE = 1 << 2,
    MPS_LEVEL = 3 << 2,
};

/* Interrupt Source Override from ISA IRQ `irq`. */
static void madt_iso(struct aml_buf *b, uint8_t irq, uint32_t gsi, uint16_t flags)
{
    aml_append_u8(b, MADT_ISO);
    aml_append_u8(b, 10);
    aml_append_u8(b, 0); /* bus: ISA */
    aml_append_u8(b, irq);
    aml_append_le(b, gsi, 4);
    aml_append_le(b, flags, 2);
}

static void build_madt(struct aml_buf *b, const struct acpi_platform *p)
{
    header(b, "APIC", 5);
    aml_append_le(b, p->lapic_addr, 4);
    aml_append_le(b, MADT_PCAT_COMPAT, 4);
    for (unsigned i = 0; i < p->ncpus; i++) {
        aml_append_u8(b, MADT_LAPIC);
        aml_append_u8(b, 8);
        aml_append_u8(b, (uint8_t)i); /* ACPI processor UID */
        aml_append_u8(b, (uint8_t)i); /* APIC id */
        aml_append_le(b, 1, 4);       /* enabled */
    }
    aml_append_u8(b, MADT_IOAPIC);
    aml_append_u8(b, 12);
    aml_append_u8(b, ACPI_IOAPIC_ID);
    aml_append_u8(b, 0);
    aml_append_le(b, p->ioapic_addr, 4);
    aml_append_le(b, 0, 4); /* GSI base */
    madt_iso(b, 0, 2, MPS_ACTIVE_HIGH | MPS_EDGE);
    madt_iso(b, p->sci_irq, p->sci_irq, MPS_ACTIVE_HIGH | MPS_LEVEL);
    aml_append_u8(b, MADT_LAPIC_NMI);
    aml_append_u8(b, 6);
    aml_append_u8(b, 0xff); /* all processors */
    aml_append_le(b, 0, 2); /* flags: conform to the bus */
    aml_append_u8(b, 1);    /* LINT1 */
    finish(b);
}

/* ---- MCFG (PCI Firmware Specification 3.0, 4.1.2) ---------------------- */

static void build_mcfg(struct aml_buf *b, const struct acpi_platform *p)
{
    header(b, "MCFG", 1);
    aml_append_le(b, 0, 8); /* reserved */
    aml_append_le(b, p->ecam_base, 8);
    aml_append_le(b, 0, 2); /* segment */
    aml_append_u8(b, 0);    /* first bus */
    aml_append_u8(b, p->pci_bus_max);
    aml_append_le(b, 0, 4);
    finish(b);
}

/* ---- XSDT (5.2.8), RSDT (5.2.7), RSDP (5.2.5.3) ------------------------- */

static void build_sdt(struct table_set *s, enum table_id id, const char *sig, uint8_t size)
{
    static const enum table_id listed[] = {T_FADT, T_MADT, T_MCFG};
    struct aml_buf *b = &s->t[id];
    header(b, sig, 1);
    for (size_t i = 0; i < sizeof(listed) / sizeof(listed[0]); i++) {
        if (!s->t[listed[i]].len)
            continue;
        add_link(s, id, (uint32_t)b->len, size, listed[i]);
        aml_append_le(b, 0, size);
    }
    finish(b);
}

static void build_rsdp(struct table_set *s)
{
    struct aml_buf *b = &s->t[T_RSDP];
    uint8_t *r = aml_append_zero(b, RSDP_LEN);
    if (!r)
        return;
    memcpy(r, "RSD PTR ", 8);
    memcpy(r + 9, ACPI_OEM_ID, 6);
    r[15] = 2; /* revision: ACPI 2.0+ layout */
    aml_store_le(r + 20, RSDP_LEN, 4);
    add_link(s, T_RSDP, RSDP_RSDT_OFF, 4, T_RSDT);
    add_link(s, T_RSDP, RSDP_XSDT_OFF, 8, T_XSDT);
}

static void table_set_free(struct table_set *s)
{
    for (int i = 0; i < T_COUNT; i++)
        aml_buf_free(&s->t[i]);
}

/* Builds every table of p, unresolved. Returns 0, -EINVAL or -ENOMEM. */
static int build_set(const struct acpi_platform *p, struct table_set *s)
{
    memset(s, 0, sizeof(*s));
    int r = acpi_platform_check(p);
    if (r < 0)
        return r;
    build_facs(&s->t[T_FACS]);
    build_dsdt(&s->t[T_DSDT], p);
    build_fadt(&s->t[T_FADT], p);
    add_link(s, T_FADT, FADT_FACS_OFF, 4, T_FACS);
    add_link(s, T_FADT, FADT_DSDT_OFF, 4, T_DSDT);
    add_link(s, T_FADT, FADT_X_DSDT_OFF, 8, T_DSDT);
    build_madt(&s->t[T_MADT], p);
    if (p->ecam)
        build_mcfg(&s->t[T_MCFG], p);
    build_sdt(s, T_XSDT, "XSDT", 8);
    build_sdt(s, T_RSDT, "RSDT", 4);
    build_rsdp(s);
    for (int i = 0; i < T_COUNT; i++) {
        if (s->t[i].err) {
            r = s->t[i].err;
            table_set_free(s);
            return r;
        }
    }
    return 0;
}

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Places the tables one after another; FACS first so it is 64-aligned. */
static void place(const struct table_set *s, struct layout *lo)
{
    size_t off = 0;
    for (int i = 0; i < T_RSDP; i++) {
        off = align_up(off, i == T_FACS ? FACS_ALIGN : TABLE_ALIGN);
        lo->off[i] = off;
        off += s->t[i].len;
    }
    lo->tables_len = off;
    lo->off[T_RSDP] = align_up(off, RSDP_ALIGN);
}

/* Copies the tables (not the RSDP) to dst at their layout offsets. */
static void copy_tables(const struct table_set *s, const struct layout *lo, uint8_t *dst)
{
    memset(dst, 0, lo->tables_len);
    for (int i = 0; i < T_RSDP; i++) {
        if (s->t[i].len)
            memcpy(dst + lo->off[i], s->t[i].data, s->t[i].len);
    }
}

static bool has_checksum(enum table_id id)
{
    return id != T_FACS && id != T_RSDP;
}

/* ---- layout (a): absolute addresses ------------------------------------ */

int acpi_build_at(const struct acpi_platform *p, uint64_t base_gpa, uint8_t *buf, size_t cap,
                  size_t *len, uint64_t *rsdp_gpa)
{
    if (base_gpa % FACS_ALIGN)
        return -EINVAL;
    struct table_set s;
    int r = build_set(p, &s);
    if (r < 0)
        return r;
    struct layout lo;
    place(&s, &lo);
    size_t total = lo.off[T_RSDP] + RSDP_LEN;
    if (base_gpa >= GIB4 || total > GIB4 - base_gpa) {
        table_set_free(&s);
        return -EINVAL; /* RSDT and FADT hold 32-bit pointers */
    }
    *len = total;
    if (cap < total) {
        table_set_free(&s);
        return -ENOSPC;
    }
    copy_tables(&s, &lo, buf);
    memset(buf + lo.tables_len, 0, lo.off[T_RSDP] - lo.tables_len);
    memcpy(buf + lo.off[T_RSDP], s.t[T_RSDP].data, RSDP_LEN);
    for (size_t i = 0; i < s.nlinks; i++) {
        const struct link *l = &s.links[i];
        aml_store_le(buf + lo.off[l->from] + l->offset, base_gpa + lo.off[l->to], l->size);
    }
    for (int i = 0; i < T_RSDP; i++) {
        if (!s.t[i].len || !has_checksum(i))
            continue;
        uint8_t *t = buf + lo.off[i];
        t[HDR_CHECKSUM_OFF] = (uint8_t)-sum8(t, s.t[i].len);
    }
    uint8_t *rsdp = buf + lo.off[T_RSDP];
    rsdp[RSDP_CHECKSUM_OFF] = (uint8_t)-sum8(rsdp, RSDP_V1_LEN);
    rsdp[RSDP_XCHECKSUM] = (uint8_t)-sum8(rsdp, RSDP_LEN);
    *rsdp_gpa = base_gpa + lo.off[T_RSDP];
    table_set_free(&s);
    return 0;
}

/* ---- layout (b): firmware blobs and loader commands -------------------- */

void acpi_fw_tables_free(struct acpi_fw_tables *t)
{
    if (!t)
        return;
    free(t->rsdp);
    free(t->tables);
    memset(t, 0, sizeof(*t));
}

static const char *file_of(enum table_id id)
{
    return id == T_RSDP ? ACPI_FW_RSDP_FILE : ACPI_FW_TABLES_FILE;
}

static void add_cmd(struct acpi_fw_tables *t, struct acpi_loader_cmd c)
{
    /* The count is bounded by the table set (at most MAX_LINKS + T_COUNT + 2). */
    if (t->ncmds < ACPI_LOADER_MAX_CMDS)
        t->cmds[t->ncmds++] = c;
}

static void add_checksum(struct acpi_fw_tables *t, const char *file, size_t result, size_t start,
                         size_t length)
{
    add_cmd(t, (struct acpi_loader_cmd){.op = ACPI_LOADER_ADD_CHECKSUM,
                                        .file = file,
                                        .offset = (uint32_t)result,
                                        .start = (uint32_t)start,
                                        .length = (uint32_t)length});
}

int acpi_build_fw(const struct acpi_platform *p, struct acpi_fw_tables *out)
{
    _Static_assert(MAX_LINKS + T_COUNT + 2 <= ACPI_LOADER_MAX_CMDS, "loader command budget");
    memset(out, 0, sizeof(*out));
    struct table_set s;
    int r = build_set(p, &s);
    if (r < 0)
        return r;
    struct layout lo;
    place(&s, &lo);
    out->tables = malloc(lo.tables_len);
    out->rsdp = malloc(RSDP_LEN);
    if (!out->tables || !out->rsdp) {
        table_set_free(&s);
        acpi_fw_tables_free(out);
        return -ENOMEM;
    }
    out->tables_len = lo.tables_len;
    out->rsdp_len = RSDP_LEN;
    copy_tables(&s, &lo, out->tables);
    memcpy(out->rsdp, s.t[T_RSDP].data, RSDP_LEN);

    /* The tables first: the RSDP's ALLOCATE may have to fit in the F segment. */
    add_cmd(out, (struct acpi_loader_cmd){.op = ACPI_LOADER_ALLOCATE,
                                          .file = ACPI_FW_TABLES_FILE,
                                          .align = FACS_ALIGN,
                                          .zone = ACPI_LOADER_ZONE_HIGH});
    add_cmd(out, (struct acpi_loader_cmd){.op = ACPI_LOADER_ALLOCATE,
                                          .file = ACPI_FW_RSDP_FILE,
                                          .align = RSDP_ALIGN,
                                          .zone = ACPI_LOADER_ZONE_FSEG});
    /* Pointers hold offsets into the tables blob; the loader adds its address. */
    for (size_t i = 0; i < s.nlinks; i++) {
        const struct link *l = &s.links[i];
        size_t field = (l->from == T_RSDP ? 0 : lo.off[l->from]) + l->offset;
        uint8_t *blob = l->from == T_RSDP ? out->rsdp : out->tables;
        aml_store_le(blob + field, lo.off[l->to], l->size);
        add_cmd(out, (struct acpi_loader_cmd){.op = ACPI_LOADER_ADD_POINTER,
                                              .file = file_of(l->from),
                                              .target = ACPI_FW_TABLES_FILE,
                                              .offset = (uint32_t)field,
                                              .size = l->size});
    }
    for (int i = 0; i < T_RSDP; i++) {
        if (s.t[i].len && has_checksum(i))
            add_checksum(out, ACPI_FW_TABLES_FILE, lo.off[i] + HDR_CHECKSUM_OFF, lo.off[i],
                         s.t[i].len);
    }
    add_checksum(out, ACPI_FW_RSDP_FILE, RSDP_CHECKSUM_OFF, 0, RSDP_V1_LEN);
    add_checksum(out, ACPI_FW_RSDP_FILE, RSDP_XCHECKSUM, 0, RSDP_LEN);
    table_set_free(&s);
    return 0;
}
