/* SPDX-License-Identifier: MPL-2.0 */
/*
 * ACPI tables and the AML encoder: byte-exact encodings (PkgLength, names,
 * integers, EisaId, resource descriptors), checksums of every table in
 * both layouts, the pointer graph RSDP -> XSDT/RSDT -> FADT -> DSDT/FACS,
 * MADT contents for several CPU counts, the DSDT's _PRT against the PCI
 * INTx routing, platform validation, and the firmware loader commands
 * replayed by a model loader.
 *
 * With CELLA_ACPI_DUMP_DIR set, test_dump writes the tables of three
 * platforms as files for tests/acpi/check_tables.sh (iasl, acpiexec).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "devices/acpi.h"
#include "devices/aml.h"

#define BUF_CAP (256 * 1024)
#define BASE    0xe0000ull

static uint8_t sum8(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s = (uint8_t)(s + p[i]);
    return s;
}

static uint64_t le(const uint8_t *p, unsigned size)
{
    return aml_load_le(p, size);
}

/* Asserts b holds exactly the n bytes of want. */
static void assert_bytes(const struct aml_buf *b, const uint8_t *want, size_t n)
{
    assert_int_equal(b->err, 0);
    assert_int_equal(b->len, n);
    assert_memory_equal(b->data, want, n);
}

/* ---- an independent AML reader for the checks below -------------------- */

/* Decodes a PkgLength at *p; advances *p past it; returns its value. */
static uint32_t read_pkglen(const uint8_t **p)
{
    const uint8_t *q = *p;
    unsigned extra = q[0] >> 6;
    uint32_t v;
    if (extra == 0) {
        v = q[0] & 0x3f;
    } else {
        assert_int_equal(q[0] & 0x30, 0); /* bits 5-4 reserved in long forms */
        v = q[0] & 0x0f;
        for (unsigned i = 0; i < extra; i++)
            v |= (uint32_t)q[1 + i] << (4 + 8 * i);
    }
    *p = q + 1 + extra;
    return v;
}

/* Decodes an integer constant at *p (Zero/One/Byte..QWord); advances *p. */
static uint64_t read_int(const uint8_t **p)
{
    const uint8_t *q = *p;
    switch (q[0]) {
    case 0x00:
        *p = q + 1;
        return 0;
    case 0x01:
        *p = q + 1;
        return 1;
    case 0x0a:
        *p = q + 2;
        return q[1];
    case 0x0b:
        *p = q + 3;
        return le(q + 1, 2);
    case 0x0c:
        *p = q + 5;
        return le(q + 1, 4);
    case 0x0e:
        *p = q + 9;
        return le(q + 1, 8);
    }
    fail_msg("not an integer constant: opcode 0x%02x", q[0]);
    return 0;
}

/* The first occurrence of n bytes of needle in hay, or NULL. */
static const uint8_t *find(const uint8_t *hay, size_t len, const void *needle, size_t n)
{
    return memmem(hay, len, needle, n);
}

/* ---- layout (a) helpers ------------------------------------------------- */

struct built {
    uint8_t *buf;
    size_t len;
    uint64_t base, rsdp;
};

static void build(const struct acpi_platform *p, struct built *b)
{
    b->buf = calloc(1, BUF_CAP);
    assert_non_null(b->buf);
    b->base = BASE;
    assert_int_equal(acpi_build_at(p, BASE, b->buf, BUF_CAP, &b->len, &b->rsdp), 0);
    assert_true(b->len <= BUF_CAP);
}

/* The bytes at guest address gpa, which must be inside the build. */
static const uint8_t *at(const struct built *b, uint64_t gpa, size_t n)
{
    assert_true(gpa >= b->base);
    assert_true(gpa - b->base + n <= b->len);
    return b->buf + (gpa - b->base);
}

/* A table by signature, reached through RSDP -> XSDT (-> FADT); NULL if absent. */
static const uint8_t *table(const struct built *b, const char *sig)
{
    const uint8_t *rsdp = at(b, b->rsdp, 36);
    const uint8_t *xsdt = at(b, le(rsdp + 24, 8), 36);
    if (!memcmp(sig, "XSDT", 4))
        return xsdt;
    if (!memcmp(sig, "RSDT", 4))
        return at(b, le(rsdp + 16, 4), 36);
    uint32_t xlen = (uint32_t)le(xsdt + 4, 4);
    for (uint32_t off = 36; off + 8 <= xlen; off += 8) {
        const uint8_t *t = at(b, le(xsdt + off, 8), 36);
        if (!memcmp(t, sig, 4))
            return at(b, le(xsdt + off, 8), le(t + 4, 4));
        if (!memcmp(t, "FACP", 4) && !memcmp(sig, "DSDT", 4)) {
            const uint8_t *d = at(b, le(t + 140, 8), 36);
            return at(b, le(t + 140, 8), le(d + 4, 4));
        }
        if (!memcmp(t, "FACP", 4) && !memcmp(sig, "FACS", 4))
            return at(b, le(t + 36, 4), 64);
    }
    return NULL;
}

static uint32_t tlen(const uint8_t *t)
{
    return (uint32_t)le(t + 4, 4);
}

/* A platform with every optional part: ECAM, 64-bit window, COM1-4, pvpanic. */
static void full_platform(struct acpi_platform *p, unsigned ncpus)
{
    acpi_platform_default(p, ncpus);
    p->pci_mmio32_limit = 0xdfffffff;
    p->ecam = true;
    p->ecam_base = 0xe0000000;
    p->pci_mmio64_base = 0x8000000000ull;
    p->pci_mmio64_limit = 0xffffffffffull;
    p->ncom = 4;
    p->pvpanic = true;
}

/* ---- AML encoder ---------------------------------------------------------- */

static void test_pkglen_boundaries(void **state)
{
    (void)state;
    struct {
        size_t body;
        int n;
        uint32_t total;
    } cases[] = {
        {0, 1, 1},
        {62, 1, 63}, /* the largest one-byte PkgLength is 63 */
        {63, 2, 65}, /* 64 would need two bytes, so the total becomes 65 */
        {64, 2, 66},
        {4093, 2, 4095}, /* the largest two-byte value */
        {4094, 3, 4097}, /* 4096 needs three bytes */
        {4095, 3, 4098},
        {0xfffff - 3, 3, 0xfffff}, /* 1 MiB - 1: the largest three-byte value */
        {0xfffff - 2, 4, 0x100001},
        {AML_PKGLEN_MAX - 4, 4, AML_PKGLEN_MAX},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t enc[4];
        int n = aml_pkglen_encode(cases[i].body, enc);
        assert_int_equal(n, cases[i].n);
        const uint8_t *p = enc;
        assert_int_equal(read_pkglen(&p), cases[i].total);
        assert_ptr_equal(p, enc + n);
    }
    uint8_t enc[4];
    assert_int_equal(aml_pkglen_encode(AML_PKGLEN_MAX - 3, enc), -E2BIG);
    /* Exact bytes of a few forms. */
    assert_int_equal(aml_pkglen_encode(62, enc), 1);
    assert_int_equal(enc[0], 0x3f);
    assert_int_equal(aml_pkglen_encode(63, enc), 2);
    assert_int_equal(enc[0], 0x41); /* 65 = 0x041: lead 0x40 | 1, then 0x04 */
    assert_int_equal(enc[1], 0x04);
    assert_int_equal(aml_pkglen_encode(0xfffff - 3, enc), 3);
    assert_memory_equal(enc, ((uint8_t[]){0x8f, 0xff, 0xff}), 3);
    assert_int_equal(aml_pkglen_encode(0xfffff - 2, enc), 4);
    assert_memory_equal(enc, ((uint8_t[]){0xc1, 0x00, 0x00, 0x01}), 4);
}

/* Nested objects whose inner sizes cross the 1/2/3-byte PkgLength limits. */
static void test_pkglen_nested(void **state)
{
    (void)state;
    static const size_t sizes[] = {10, 58, 59, 60, 4080, 4090, 4100, 70000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        struct aml_buf b = {0};
        uint8_t *blob = calloc(1, sizes[k]);
        assert_non_null(blob);
        size_t scope = aml_scope_begin(&b, "\\_SB");
        size_t dev = aml_device_begin(&b, "DEV0");
        aml_name(&b, "BLOB");
        aml_buffer(&b, blob, sizes[k]);
        aml_end(&b, dev);
        aml_end(&b, scope);
        assert_int_equal(b.err, 0);

        const uint8_t *p = b.data;
        assert_int_equal(*p++, 0x10); /* ScopeOp */
        const uint8_t *start = p;
        assert_int_equal(read_pkglen(&p), b.len - 1);
        assert_memory_equal(p, "\\_SB_", 5);
        p += 5;
        assert_int_equal(*p++, 0x5b); /* DeviceOp */
        assert_int_equal(*p++, 0x82);
        start = p;
        uint32_t devlen = read_pkglen(&p);
        assert_int_equal(devlen, b.len - (size_t)(start - b.data));
        assert_memory_equal(p, "DEV0", 4);
        p += 4;
        assert_memory_equal(p,
                            "\x08"
                            "BLOB",
                            5);
        p += 5;
        assert_int_equal(*p++, 0x11); /* BufferOp */
        start = p;
        uint32_t buflen = read_pkglen(&p);
        assert_int_equal(buflen, b.len - (size_t)(start - b.data));
        assert_int_equal(read_int(&p), sizes[k]);
        assert_int_equal(b.data + b.len - p, sizes[k]);
        free(blob);
        aml_buf_free(&b);
    }
}

static void test_integers(void **state)
{
    (void)state;
    struct {
        uint64_t v;
        uint8_t bytes[9];
        size_t n;
    } cases[] = {
        {0, {0x00}, 1},
        {1, {0x01}, 1},
        {2, {0x0a, 0x02}, 2},
        {0xff, {0x0a, 0xff}, 2},
        {0x100, {0x0b, 0x00, 0x01}, 3},
        {0xffff, {0x0b, 0xff, 0xff}, 3},
        {0x10000, {0x0c, 0x00, 0x00, 0x01, 0x00}, 5},
        {0xffffffff, {0x0c, 0xff, 0xff, 0xff, 0xff}, 5},
        {0x100000000ull, {0x0e, 0, 0, 0, 0, 1, 0, 0, 0}, 9},
        {UINT64_MAX, {0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 9},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct aml_buf b = {0};
        aml_integer(&b, cases[i].v);
        assert_bytes(&b, cases[i].bytes, cases[i].n);
        aml_buf_free(&b);
    }
}

static void test_names(void **state)
{
    (void)state;
    struct {
        const char *path;
        const char *bytes;
        size_t n;
    } cases[] = {
        {"_HID", "_HID", 4},
        {"_S5", "_S5_", 4},
        {"\\_S5", "\\_S5_", 5},
        {"\\_SB.PCI0", "\\\x2e_SB_PCI0", 10},
        {"\\_SB.PCI0.ISA", "\\\x2f\x03_SB_PCI0ISA_", 15},
        {"^^FOO", "^^FOO_", 6},
        {"^A.B",
         "^\x2e"
         "A___B___",
         10},
        {"\\", "\\\x00", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct aml_buf b = {0};
        aml_namestring(&b, cases[i].path);
        assert_bytes(&b, (const uint8_t *)cases[i].bytes, cases[i].n);
        aml_buf_free(&b);
    }
    static const char *bad[] = {"",     "1ABC", "ABCDE", "_SB.",    "a",
                                "\\^A", "A..B", "A-B",   "\\_SB..X"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct aml_buf b = {0};
        aml_namestring(&b, bad[i]);
        assert_int_equal(aml_buf_error(&b), -EINVAL);
        aml_buf_free(&b);
    }
    /* Errors are sticky: later appends do nothing. */
    struct aml_buf b = {0};
    aml_nameseg(&b, "bad");
    aml_integer(&b, 5);
    assert_int_equal(b.err, -EINVAL);
    assert_int_equal(b.len, 0);
    aml_buf_free(&b);
}

static void test_eisaid(void **state)
{
    (void)state;
    uint32_t v;
    assert_int_equal(aml_eisaid_value("PNP0A03", &v), 0);
    assert_int_equal(v, 0x030AD041);
    assert_int_equal(aml_eisaid_value("PNP0A08", &v), 0);
    assert_int_equal(v, 0x080AD041);
    assert_int_equal(aml_eisaid_value("PNP0501", &v), 0);
    assert_int_equal(v, 0x0105D041);
    struct aml_buf b = {0};
    aml_eisaid(&b, "PNP0A03");
    assert_bytes(&b, (const uint8_t[]){0x0c, 0x41, 0xd0, 0x0a, 0x03}, 5);
    aml_buf_free(&b);
    static const char *bad[] = {"pnp0a03", "PNP0A0", "PNP0A033", "PNP0G03", "P1P0A03", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(aml_eisaid_value(bad[i], &v), -EINVAL);
}

static void test_string_and_objects(void **state)
{
    (void)state;
    struct aml_buf b = {0};
    aml_name(&b, "_HID");
    aml_string(&b, "QEMU0001");
    assert_bytes(&b, (const uint8_t *)"\x08_HID\x0dQEMU0001", 15);
    aml_buf_free(&b);

    /* Method(_STA, 0, NotSerialized) { Return (0x0F) } */
    size_t m = aml_method_begin(&b, "_STA", 0, false);
    aml_return(&b);
    aml_integer(&b, 0x0f);
    aml_end(&b, m);
    assert_bytes(&b, (const uint8_t *)"\x14\x09_STA\x00\xa4\x0a\x0f", 10);
    aml_buf_free(&b);

    /* Package() { One, "A" } */
    size_t pk = aml_package_begin(&b, 2);
    aml_integer(&b, 1);
    aml_string(&b, "A");
    aml_end(&b, pk);
    assert_bytes(&b,
                 (const uint8_t *)"\x12\x06\x02\x01\x0d"
                                  "A",
                 7);
    aml_buf_free(&b);

    aml_method_begin(&b, "X", 8, false);
    assert_int_equal(b.err, -EINVAL);
    aml_buf_free(&b);
    aml_string(&b, "\xc3\xa9");
    assert_int_equal(b.err, -EINVAL);
    aml_buf_free(&b);
}

static void test_resource_template(void **state)
{
    (void)state;
    struct aml_buf rt = {0}, b = {0};
    aml_rt_io(&rt, 0x3f8, 0x3f8, 1, 8);
    aml_rt_irq_noflags(&rt, 4);
    aml_rt_end(&rt);
    static const uint8_t want_rt[] = {0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01,
                                      0x08, 0x22, 0x10, 0x00, 0x79, 0x00};
    assert_bytes(&rt, want_rt, sizeof(want_rt));
    /* The end tag: small item 0xF, length 1, checksum 0. */
    assert_int_equal(rt.data[rt.len - 2], 0x79);
    assert_int_equal(rt.data[rt.len - 1], 0x00);

    aml_resource_template(&b, &rt);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.data[0], 0x11); /* BufferOp */
    const uint8_t *p = b.data + 1;
    assert_int_equal(read_pkglen(&p), b.len - 1);
    assert_int_equal(read_int(&p), sizeof(want_rt));
    assert_memory_equal(p, want_rt, sizeof(want_rt));
    aml_buf_free(&b);
    aml_buf_free(&rt);

    /* A template without its end tag is refused. */
    aml_rt_io(&rt, 0x60, 0x60, 1, 1);
    aml_resource_template(&b, &rt);
    assert_int_equal(b.err, -EINVAL);
    aml_buf_free(&b);
    aml_buf_free(&rt);
}

static void test_address_descriptors(void **state)
{
    (void)state;
    struct aml_buf rt = {0};
    aml_rt_word_bus(&rt, AML_RT_PRODUCER, 0, 0xff);
    static const uint8_t bus[] = {0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0x00, 0x00,
                                  0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0x00, 0x01};
    assert_bytes(&rt, bus, sizeof(bus));
    aml_buf_free(&rt);

    aml_rt_word_io(&rt, AML_RT_PRODUCER, 0xd00, 0xffff);
    static const uint8_t io[] = {0x88, 0x0d, 0x00, 0x01, 0x0c, 0x03, 0x00, 0x00,
                                 0x00, 0x0d, 0xff, 0xff, 0x00, 0x00, 0x00, 0xf3};
    assert_bytes(&rt, io, sizeof(io));
    aml_buf_free(&rt);

    aml_rt_dword_memory(&rt, AML_RT_PRODUCER, AML_RT_NON_CACHEABLE, 0xc0000000, 0xfebfffff);
    assert_int_equal(rt.len, 26);
    assert_memory_equal(rt.data, ((uint8_t[]){0x87, 0x17, 0x00, 0x00, 0x0c, 0x01}), 6);
    assert_int_equal(le(rt.data + 10, 4), 0xc0000000);
    assert_int_equal(le(rt.data + 14, 4), 0xfebfffff);
    assert_int_equal(le(rt.data + 22, 4), 0x3ec00000);
    aml_buf_free(&rt);

    aml_rt_qword_memory(&rt, AML_RT_CONSUMER, AML_RT_CACHEABLE, 0x100000000ull, 0x1ffffffffull);
    assert_int_equal(rt.len, 46);
    assert_memory_equal(rt.data, ((uint8_t[]){0x8a, 0x2b, 0x00, 0x00, 0x0d, 0x03}), 6);
    assert_int_equal(le(rt.data + 38, 8), 0x100000000ull);
    aml_buf_free(&rt);

    aml_rt_interrupt(&rt, AML_RT_CONSUMER, true, true, true, 16);
    assert_bytes(&rt, (const uint8_t[]){0x89, 0x06, 0x00, 0x0d, 0x01, 0x10, 0, 0, 0}, 9);
    aml_buf_free(&rt);

    aml_rt_memory32_fixed(&rt, true, 0xe0000000, 0x10000000);
    assert_bytes(&rt, (const uint8_t[]){0x86, 0x09, 0x00, 0x01, 0, 0, 0, 0xe0, 0, 0, 0, 0x10}, 12);
    aml_buf_free(&rt);

    /* min > max, and a QWord range of all 2^64 bytes, are refused. */
    aml_rt_word_io(&rt, AML_RT_PRODUCER, 2, 1);
    assert_int_equal(rt.err, -EINVAL);
    aml_buf_free(&rt);
    aml_rt_qword_memory(&rt, AML_RT_PRODUCER, AML_RT_CACHEABLE, 0, UINT64_MAX);
    assert_int_equal(rt.err, -EINVAL);
    aml_buf_free(&rt);
    aml_rt_irq_noflags(&rt, 16);
    assert_int_equal(rt.err, -EINVAL);
    aml_buf_free(&rt);
}

/* ---- tables, layout (a) ------------------------------------------------- */

static void check_all_checksums(const struct built *b, bool ecam)
{
    static const char *sigs[] = {"XSDT", "RSDT", "FACP", "APIC", "DSDT", "MCFG"};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        const uint8_t *t = table(b, sigs[i]);
        if (!memcmp(sigs[i], "MCFG", 4) && !ecam) {
            assert_null(t);
            continue;
        }
        assert_non_null(t);
        assert_memory_equal(t, sigs[i], 4);
        assert_int_equal(sum8(t, tlen(t)), 0);
        assert_memory_equal(t + 10, "CELLA ", 6);
        assert_memory_equal(t + 16, "CELLAVM ", 8);
        assert_memory_equal(t + 28, "CELA", 4);
    }
    const uint8_t *rsdp = at(b, b->rsdp, 36);
    assert_memory_equal(rsdp, "RSD PTR ", 8);
    assert_int_equal(b->rsdp % 16, 0);
    assert_int_equal(rsdp[15], 2);
    assert_int_equal(le(rsdp + 20, 4), 36);
    assert_int_equal(sum8(rsdp, 20), 0);
    assert_int_equal(sum8(rsdp, 36), 0);
    /* Flipping any byte breaks the checksum: the test can fail. */
    uint8_t copy[36];
    memcpy(copy, rsdp, 36);
    copy[16] ^= 1;
    assert_int_not_equal(sum8(copy, 20), 0);
}

static void test_checksums(void **state)
{
    (void)state;
    static const unsigned counts[] = {1, 2, 4, 64, ACPI_MAX_CPUS};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        for (int full = 0; full < 2; full++) {
            struct acpi_platform p;
            if (full)
                full_platform(&p, counts[i]);
            else
                acpi_platform_default(&p, counts[i]);
            struct built b;
            build(&p, &b);
            check_all_checksums(&b, full);
            free(b.buf);
        }
    }
}

static void test_pointer_graph(void **state)
{
    (void)state;
    for (int full = 0; full < 2; full++) {
        struct acpi_platform p;
        if (full)
            full_platform(&p, 4);
        else
            acpi_platform_default(&p, 4);
        struct built b;
        build(&p, &b);
        const uint8_t *xsdt = table(&b, "XSDT"), *rsdt = table(&b, "RSDT");
        unsigned n = (tlen(xsdt) - 36) / 8;
        assert_int_equal(n, full ? 3 : 2);
        assert_int_equal((tlen(rsdt) - 36) / 4, n);
        static const char *want[] = {"FACP", "APIC", "MCFG"};
        for (unsigned i = 0; i < n; i++) {
            uint64_t x = le(xsdt + 36 + 8 * i, 8);
            assert_memory_equal(at(&b, x, 4), want[i], 4);
            assert_int_equal(le(rsdt + 36 + 4 * i, 4), x);
        }
        const uint8_t *fadt = table(&b, "FACP");
        assert_int_equal(le(fadt + 40, 4), le(fadt + 140, 8)); /* DSDT == X_DSDT */
        assert_memory_equal(at(&b, le(fadt + 140, 8), 4), "DSDT", 4);
        uint64_t facs = le(fadt + 36, 4);
        assert_int_equal(facs % 64, 0);
        assert_memory_equal(at(&b, facs, 4), "FACS", 4);
        assert_int_equal(le(at(&b, facs, 8) + 4, 4), 64);
        assert_int_equal(le(fadt + 132, 8), 0); /* X_FIRMWARE_CTRL unused */
        free(b.buf);
    }
}

static void test_madt(void **state)
{
    (void)state;
    static const unsigned counts[] = {1, 2, 4, 64, ACPI_MAX_CPUS};
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
        struct acpi_platform p;
        acpi_platform_default(&p, counts[k]);
        struct built b;
        build(&p, &b);
        const uint8_t *m = table(&b, "APIC");
        assert_int_equal(m[8], 5); /* revision */
        assert_int_equal(le(m + 36, 4), 0xfee00000);
        assert_int_equal(le(m + 40, 4), 1); /* PCAT_COMPAT */
        unsigned lapics = 0, ioapics = 0, isos = 0, nmis = 0;
        for (uint32_t off = 44; off < tlen(m); off += m[off + 1]) {
            const uint8_t *e = m + off;
            assert_true(e[1] >= 2);
            switch (e[0]) {
            case 0:
                assert_int_equal(e[1], 8);
                assert_int_equal(e[2], lapics); /* UID */
                assert_int_equal(e[3], lapics); /* APIC id */
                assert_int_equal(le(e + 4, 4), 1);
                lapics++;
                break;
            case 1:
                assert_int_equal(e[1], 12);
                assert_int_equal(e[2], ACPI_IOAPIC_ID);
                assert_int_equal(le(e + 4, 4), 0xfec00000);
                assert_int_equal(le(e + 8, 4), 0);
                ioapics++;
                break;
            case 2:
                assert_int_equal(e[1], 10);
                assert_int_equal(e[2], 0);
                if (e[3] == 0) {
                    assert_int_equal(le(e + 4, 4), 2);
                    assert_int_equal(le(e + 8, 2), 0x5); /* edge, active high */
                } else {
                    assert_int_equal(e[3], 9);
                    assert_int_equal(le(e + 4, 4), 9);
                    assert_int_equal(le(e + 8, 2), 0xd); /* level, active high */
                }
                isos++;
                break;
            case 4:
                assert_int_equal(e[1], 6);
                assert_int_equal(e[2], 0xff);
                assert_int_equal(e[5], 1); /* LINT1 */
                nmis++;
                break;
            default:
                fail_msg("unexpected MADT entry type %u", e[0]);
            }
        }
        assert_int_equal(lapics, counts[k]);
        assert_int_equal(ioapics, 1);
        assert_int_equal(isos, 2);
        assert_int_equal(nmis, 1);
        assert_int_equal(tlen(m), 44 + 8 * counts[k] + 12 + 20 + 6);
        free(b.buf);
    }
}

static void test_fadt(void **state)
{
    (void)state;
    struct acpi_platform p;
    acpi_platform_default(&p, 2);
    struct built b;
    build(&p, &b);
    const uint8_t *f = table(&b, "FACP");
    assert_int_equal(tlen(f), 276);
    assert_int_equal(f[8], 6);
    assert_int_equal(f[131], 3); /* minor: ACPI 6.3 */
    assert_int_equal(le(f + 46, 2), 9);
    assert_int_equal(le(f + 48, 4), 0); /* SMI_CMD */
    assert_int_equal(le(f + 56, 4), 0x600);
    assert_int_equal(le(f + 64, 4), 0x604);
    assert_int_equal(le(f + 76, 4), 0x608);
    assert_int_equal(le(f + 80, 4), 0x620);
    assert_memory_equal(f + 88, ((uint8_t[]){4, 2, 0, 4, 4, 0}), 6);
    assert_int_equal(le(f + 109, 2), 1); /* LEGACY_DEVICES, no 8042 */
    uint32_t flags = (uint32_t)le(f + 112, 4);
    assert_int_equal(flags, (1u << 0) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 10));
    assert_int_equal(flags & (1u << 20), 0); /* not hardware-reduced */
    /* RESET_REG: SystemIO, 8 bits, byte access, 0xCF9; value 6. */
    assert_memory_equal(f + 116, ((uint8_t[]){1, 8, 0, 1}), 4);
    assert_int_equal(le(f + 120, 8), 0xcf9);
    assert_int_equal(f[128], 6);
    /* X_ blocks mirror the legacy ones. */
    struct {
        size_t off;
        uint8_t bits, access;
        uint64_t port;
    } x[] = {{148, 32, 2, 0x600}, {172, 16, 2, 0x604}, {208, 32, 3, 0x608}, {220, 32, 1, 0x620}};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(f[x[i].off], 1);
        assert_int_equal(f[x[i].off + 1], x[i].bits);
        assert_int_equal(f[x[i].off + 3], x[i].access);
        assert_int_equal(le(f + x[i].off + 4, 8), x[i].port);
    }
    /* PM1b, PM2, GPE1 absent. */
    assert_int_equal(le(f + 60, 4), 0);
    assert_int_equal(le(f + 160, 8), 0);
    free(b.buf);

    /* Without a reset register, the flag and the GAS are clear. */
    p.reset_reg = false;
    build(&p, &b);
    f = table(&b, "FACP");
    assert_int_equal(le(f + 112, 4) & (1u << 10), 0);
    assert_int_equal(le(f + 120, 8), 0);
    assert_int_equal(f[128], 0);
    free(b.buf);
}

static void test_mcfg(void **state)
{
    (void)state;
    struct acpi_platform p;
    full_platform(&p, 1);
    p.pci_bus_max = 63;
    struct built b;
    build(&p, &b);
    const uint8_t *m = table(&b, "MCFG");
    assert_non_null(m);
    assert_int_equal(tlen(m), 60);
    assert_int_equal(le(m + 44, 8), 0xe0000000);
    assert_int_equal(le(m + 52, 2), 0);
    assert_int_equal(m[54], 0);
    assert_int_equal(m[55], 63);
    /* The ECAM window is reserved by a PNP0C02 device: Memory32Fixed(RW, base, 64 MiB). */
    const uint8_t *d = table(&b, "DSDT");
    static const uint8_t res[] = {0x86, 0x09, 0x00, 0x01, 0x00, 0x00,
                                  0x00, 0xe0, 0x00, 0x00, 0x00, 0x04};
    assert_non_null(find(d, tlen(d), res, sizeof(res)));
    assert_non_null(find(d, tlen(d), "\x0c\x41\xd0\x0c\x02", 5)); /* PNP0C02 */
    free(b.buf);
}

/* The _PRT package of the DSDT, decoded, must equal acpi_pci_irq(). */
static void test_dsdt_prt(void **state)
{
    (void)state;
    /* pci.h's documented examples: 0.3 INTA -> 19, 0.4 INTA -> 16, 0.4 INTB -> 17, 0.7 INTD -> 18.
     */
    assert_int_equal(acpi_pci_irq(3, 1), 19);
    assert_int_equal(acpi_pci_irq(4, 1), 16);
    assert_int_equal(acpi_pci_irq(4, 2), 17);
    assert_int_equal(acpi_pci_irq(7, 4), 18);
    assert_int_equal(acpi_pci_irq(7, 0), 0);
    assert_int_equal(acpi_pci_irq(7, 5), 0);

    struct acpi_platform p;
    acpi_platform_default(&p, 1);
    struct built b;
    build(&p, &b);
    const uint8_t *d = table(&b, "DSDT");
    const uint8_t *q = find(d, tlen(d), "\x08_PRT", 5);
    assert_non_null(q);
    q += 5;
    assert_int_equal(*q++, 0x12);
    const uint8_t *start = q;
    uint32_t len = read_pkglen(&q);
    const uint8_t *end = start + len;
    assert_int_equal(*q++, 128);
    bool seen[32][4] = {{false}};
    for (int i = 0; i < 128; i++) {
        assert_int_equal(*q++, 0x12);
        const uint8_t *s = q;
        uint32_t elen = read_pkglen(&q);
        assert_int_equal(*q++, 4);
        uint64_t addr = read_int(&q), pin = read_int(&q), src = read_int(&q), gsi = read_int(&q);
        assert_ptr_equal(q, s + elen);
        assert_int_equal(addr & 0xffff, 0xffff);
        unsigned dev = (unsigned)(addr >> 16);
        assert_true(dev < 32 && pin < 4);
        assert_false(seen[dev][pin]);
        seen[dev][pin] = true;
        assert_int_equal(src, 0);
        assert_int_equal(gsi, acpi_pci_irq(dev, (unsigned)pin + 1));
        assert_true(gsi >= 16 && gsi < ACPI_IOAPIC_PINS);
    }
    assert_ptr_equal(q, end);
    free(b.buf);
}

static void test_dsdt_content(void **state)
{
    (void)state;
    struct acpi_platform p;
    full_platform(&p, 2);
    p.slp_typ_s5 = 7;
    struct built b;
    build(&p, &b);
    const uint8_t *d = table(&b, "DSDT");
    uint32_t n = tlen(d);
    assert_int_equal(d[8], 2);
    /* Name(\_S5_, Package(4) { 7, 7, 0, 0 }) */
    assert_non_null(find(d, n, "\x08\\_S5_\x12\x08\x04\x0a\x07\x0a\x07\x00\x00", 15));
    assert_non_null(find(d, n, "\x10", 1));
    assert_non_null(find(d, n, "PCI0", 4));
    assert_non_null(find(d, n, "\x08_HID\x0c\x41\xd0\x0a\x08", 10)); /* PNP0A08 */
    assert_non_null(find(d, n, "\x08_CID\x0c\x41\xd0\x0a\x03", 10)); /* PNP0A03 */
    assert_non_null(find(d, n, "\x08_CRS", 5));
    assert_non_null(find(d, n, "\x08_BBN\x00", 6));
    assert_non_null(find(d, n, "\x08_SEG\x00", 6));
    static const char *coms[] = {"COM1", "COM2", "COM3", "COM4"};
    for (int i = 0; i < 4; i++)
        assert_non_null(find(d, n, coms[i], 4));
    /* COM2's resources: IO 0x2F8/8, IRQ 3. */
    assert_non_null(find(d, n, "\x47\x01\xf8\x02\xf8\x02\x01\x08\x22\x08\x00\x79\x00", 13));
    assert_non_null(find(d, n, "\x0dQEMU0001", 10));
    assert_non_null(find(d, n, "\x47\x01\x05\x05\x05\x05\x01\x01", 8)); /* pvpanic port */
    assert_non_null(find(d, n, "C001", 4));
    assert_null(find(d, n, "C002", 4));
    /* The 64-bit window is a QWordMemory. */
    uint8_t qw[8];
    aml_store_le(qw, 0x8000000000ull, 8);
    assert_non_null(find(d, n, qw, 8));
    free(b.buf);

    /* Without ECAM: PNP0A03, no _CID, no COM, no pvpanic. */
    acpi_platform_default(&p, 1);
    build(&p, &b);
    d = table(&b, "DSDT");
    n = tlen(d);
    assert_non_null(find(d, n, "\x08_HID\x0c\x41\xd0\x0a\x03", 10));
    assert_null(find(d, n, "_CID", 4));
    assert_null(find(d, n, "COM1", 4));
    assert_null(find(d, n, "QEMU0001", 8));
    assert_null(find(d, n, "MRES", 4));
    /* The default I/O window 0xC000-0xFFFF; with limit 0, 0x0D00-0xFFFF. */
    assert_non_null(find(d, n, "\x88\x0d\x00\x01\x0c\x03\x00\x00\x00\xc0\xff\xff", 12));
    free(b.buf);
    p.pci_io_base = p.pci_io_limit = 0;
    build(&p, &b);
    d = table(&b, "DSDT");
    assert_non_null(find(d, tlen(d), "\x88\x0d\x00\x01\x0c\x03\x00\x00\x00\x0d\xff\xff", 12));
    free(b.buf);
}

static void test_validation(void **state)
{
    (void)state;
    struct acpi_platform good, p;
    full_platform(&good, 4);
    assert_int_equal(acpi_platform_check(&good), 0);
#define BAD(stmt)                                                                                  \
    do {                                                                                           \
        p = good;                                                                                  \
        stmt;                                                                                      \
        assert_int_equal(acpi_platform_check(&p), -EINVAL);                                        \
    } while (0)
    BAD(p.ncpus = 0);
    BAD(p.ncpus = ACPI_MAX_CPUS + 1);
    BAD(p.ioapic_addr = 0x100000000ull);
    BAD(p.lapic_addr = 0x100000000ull);
    BAD(p.pm1a_evt = 0);
    BAD(p.pm1a_cnt = 0);
    BAD(p.gpe0_len = 3);
    BAD(p.gpe0_len = 32);
    BAD(p.gpe0_blk = 0);
    BAD(p.sci_irq = 0);
    BAD(p.sci_irq = 2);
    BAD(p.sci_irq = 16);
    BAD(p.slp_typ_s5 = 8);
    BAD(p.pci_io_base = 0xc00);
    BAD(p.pci_io_base = 0xf000; p.pci_io_limit = 0xefff);
    BAD(p.pci_mmio32_limit = 0x100000000ull);
    BAD(p.pci_mmio32_base = 0xd0000000; p.pci_mmio32_limit = 0xcfffffff);
    BAD(p.pci_mmio64_base = 0x9000000000ull; p.pci_mmio64_limit = 0x8fffffffffull);
    BAD(p.ecam_base = 0xe0001000);
    BAD(p.ecam_base = 0xd0000000);            /* overlaps mmio32 */
    BAD(p.ecam_base = 0x8000000000ull);       /* overlaps mmio64 */
    BAD(p.ecam_base = 0xfffffffffff00000ull); /* wraps */
    BAD(p.ncom = 5);
#undef BAD
    /* Passing neighbours of the rules above. */
    p = good;
    p.ncpus = ACPI_MAX_CPUS;
    p.gpe0_len = 30;
    p.sci_irq = 15;
    p.slp_typ_s5 = 7;
    p.pci_io_base = 0xd00;
    p.ecam = false;
    p.ecam_base = 0xd0000001; /* ignored without ECAM */
    p.pm_tmr = 0;
    p.gpe0_blk = 0;
    p.gpe0_len = 0;
    assert_int_equal(acpi_platform_check(&p), 0);

    uint8_t buf[64];
    size_t len;
    uint64_t rsdp;
    p = good;
    p.ncpus = 0;
    assert_int_equal(acpi_build_at(&p, BASE, buf, sizeof(buf), &len, &rsdp), -EINVAL);
    struct acpi_fw_tables fw;
    assert_int_equal(acpi_build_fw(&p, &fw), -EINVAL);
    assert_null(fw.tables);
    assert_int_equal(fw.ncmds, 0);
}

static void test_build_at_limits(void **state)
{
    (void)state;
    struct acpi_platform p;
    acpi_platform_default(&p, 4);
    uint8_t *buf = calloc(1, BUF_CAP);
    assert_non_null(buf);
    size_t len = 0, need;
    uint64_t rsdp;
    assert_int_equal(acpi_build_at(&p, BASE + 32, buf, BUF_CAP, &len, &rsdp), -EINVAL);
    assert_int_equal(acpi_build_at(&p, 0x100000000ull, buf, BUF_CAP, &len, &rsdp), -EINVAL);
    assert_int_equal(acpi_build_at(&p, 0xffffff00ull, buf, BUF_CAP, &len, &rsdp), -EINVAL);
    assert_int_equal(acpi_build_at(&p, BASE, buf, 100, &need, &rsdp), -ENOSPC);
    assert_true(need > 100);
    assert_int_equal(acpi_build_at(&p, BASE, buf, need - 1, &len, &rsdp), -ENOSPC);
    assert_int_equal(acpi_build_at(&p, BASE, buf, need, &len, &rsdp), 0);
    assert_int_equal(len, need);
    assert_int_equal(rsdp + 36, BASE + len); /* the RSDP is last */
    /* Fits easily in the BIOS area, even with every CPU. */
    acpi_platform_default(&p, ACPI_MAX_CPUS);
    p.ncom = 4;
    assert_int_equal(acpi_build_at(&p, BASE, buf, BUF_CAP, &len, &rsdp), 0);
    assert_true(BASE + len <= 0x100000);
    free(buf);
}

/* ---- layout (b): replay the loader commands like firmware does --------- */

struct blob {
    const char *name;
    const uint8_t *src;
    size_t len;
    uint8_t *mem; /* "guest memory" of the allocation */
    uint64_t addr;
    bool allocated;
};

static struct blob *blob_named(struct blob *bl, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(bl[i].name, name))
            return &bl[i];
    }
    fail_msg("unknown file %s", name);
    return NULL;
}

static void test_fw_loader(void **state)
{
    (void)state;
    for (int full = 0; full < 2; full++) {
        struct acpi_platform p;
        if (full)
            full_platform(&p, 8);
        else
            acpi_platform_default(&p, 8);
        struct acpi_fw_tables fw;
        assert_int_equal(acpi_build_fw(&p, &fw), 0);
        assert_int_equal(fw.rsdp_len, 36);
        assert_int_equal(fw.tables[0], 'F'); /* FACS at offset 0: 64-aligned */

        /* Where our model firmware puts things: tables high, RSDP in the F segment. */
        const uint64_t tables_addr = 0x7ffe0000, rsdp_addr = 0xf5a10;
        struct blob bl[2] = {
            {ACPI_FW_TABLES_FILE, fw.tables, fw.tables_len, NULL, tables_addr, false},
            {ACPI_FW_RSDP_FILE, fw.rsdp, fw.rsdp_len, NULL, rsdp_addr, false},
        };
        int phase = 0; /* allocations, then pointers, then checksums */
        for (size_t i = 0; i < fw.ncmds; i++) {
            const struct acpi_loader_cmd *c = &fw.cmds[i];
            struct blob *f = blob_named(bl, 2, c->file);
            switch (c->op) {
            case ACPI_LOADER_ALLOCATE:
                assert_int_equal(phase, 0);
                assert_false(f->allocated);
                assert_int_equal(f->addr % c->align, 0);
                if (f == &bl[1])
                    assert_int_equal(c->zone, ACPI_LOADER_ZONE_FSEG);
                f->mem = malloc(f->len);
                assert_non_null(f->mem);
                memcpy(f->mem, f->src, f->len);
                f->allocated = true;
                break;
            case ACPI_LOADER_ADD_POINTER: {
                assert_true(phase <= 1);
                phase = 1;
                struct blob *t = blob_named(bl, 2, c->target);
                assert_true(f->allocated && t->allocated);
                assert_true(c->size == 4 || c->size == 8);
                assert_true(c->offset + c->size <= f->len);
                uint64_t v = le(f->mem + c->offset, c->size);
                assert_true(v < t->len); /* an offset into the target */
                aml_store_le(f->mem + c->offset, v + t->addr, c->size);
                break;
            }
            case ACPI_LOADER_ADD_CHECKSUM:
                phase = 2;
                assert_true(f->allocated);
                assert_true(c->start + c->length <= f->len);
                assert_true(c->offset >= c->start && c->offset < c->start + c->length);
                /* OVMF's rule: the byte must be 0, then gets -sum. */
                assert_int_equal(f->mem[c->offset], 0);
                f->mem[c->offset] = (uint8_t)-sum8(f->mem + c->start, c->length);
                break;
            default:
                fail_msg("bad op %d", c->op);
            }
        }
        assert_int_equal(phase, 2);

        /* The result equals layout (a) built at the same address. */
        uint8_t *a = calloc(1, BUF_CAP);
        assert_non_null(a);
        size_t alen;
        uint64_t arsdp;
        assert_int_equal(acpi_build_at(&p, tables_addr, a, BUF_CAP, &alen, &arsdp), 0);
        assert_true(fw.tables_len <= alen);
        assert_memory_equal(bl[0].mem, a, fw.tables_len);
        assert_memory_equal(bl[1].mem, a + (arsdp - tables_addr), 36);
        free(a);
        free(bl[0].mem);
        free(bl[1].mem);
        acpi_fw_tables_free(&fw);
        acpi_fw_tables_free(&fw); /* idempotent */
    }
    acpi_fw_tables_free(NULL);
}

/* ---- dump for the iasl oracle ------------------------------------------- */

static void write_file(const char *dir, const char *name, const uint8_t *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void dump_platform(const char *root, const char *name, const struct acpi_platform *p)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", root, name);
    assert_true(mkdir(dir, 0755) == 0 || errno == EEXIST);
    struct built b;
    build(p, &b);
    static const char *sigs[] = {"DSDT", "FACP", "APIC", "MCFG", "XSDT", "RSDT"};
    static const char *files[] = {"dsdt.dat", "facp.dat", "apic.dat",
                                  "mcfg.dat", "xsdt.dat", "rsdt.dat"};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        const uint8_t *t = table(&b, sigs[i]);
        if (t)
            write_file(dir, files[i], t, tlen(t));
    }
    write_file(dir, "facs.dat", table(&b, "FACS"), 64);
    write_file(dir, "rsdp.dat", at(&b, b.rsdp, 36), 36);
    free(b.buf);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/*
 * Writes the tables to $CELLA_ACPI_DUMP_DIR for check_tables.sh; without
 * it, to a temporary directory that is removed again, so the dump path is
 * exercised on every run.
 */
static void test_dump(void **state)
{
    (void)state;
    const char *root = getenv("CELLA_ACPI_DUMP_DIR");
    char tmp[] = "/tmp/cella-acpi-dump.XXXXXX";
    bool temporary = !root || !*root;
    if (temporary) {
        root = mkdtemp(tmp);
        assert_non_null(root);
    }
    struct acpi_platform p;
    acpi_platform_default(&p, 1);
    dump_platform(root, "minimal", &p);
    full_platform(&p, 4);
    dump_platform(root, "full", &p);
    full_platform(&p, ACPI_MAX_CPUS);
    p.ecam_base = 0x100000000000ull; /* above 4 GiB: QWordMemory reservation */
    dump_platform(root, "large", &p);
    if (temporary) {
        struct stat st;
        char path[4096];
        snprintf(path, sizeof(path), "%s/full/dsdt.dat", root);
        assert_int_equal(stat(path, &st), 0);
        assert_true(st.st_size > 36);
        assert_int_equal(nftw(root, remove_entry, 8, FTW_DEPTH | FTW_PHYS), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pkglen_boundaries),
        cmocka_unit_test(test_pkglen_nested),
        cmocka_unit_test(test_integers),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_eisaid),
        cmocka_unit_test(test_string_and_objects),
        cmocka_unit_test(test_resource_template),
        cmocka_unit_test(test_address_descriptors),
        cmocka_unit_test(test_checksums),
        cmocka_unit_test(test_pointer_graph),
        cmocka_unit_test(test_madt),
        cmocka_unit_test(test_fadt),
        cmocka_unit_test(test_mcfg),
        cmocka_unit_test(test_dsdt_prt),
        cmocka_unit_test(test_dsdt_content),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_build_at_limits),
        cmocka_unit_test(test_fw_loader),
        cmocka_unit_test(test_dump),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
