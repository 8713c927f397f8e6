/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The guest-visible difference between two specs. Migration uses it to
 * prove that an amended spec (replacement backends) changes nothing a guest
 * could observe; `cella spec diff` shows it to people.
 *
 * Devices are matched by key (keys are stable across migration and
 * reboot); backends only matter through what a guest sees of them.
 */
#include "spec/validate.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/kind_table.h"

struct differ {
    struct spec_diff *out;
    int err;
};

__attribute__((format(printf, 3, 4))) static void add(struct differ *d, const char *pointer,
                                                      const char *fmt, ...)
{
    if (d->err)
        return;
    struct spec_difference *grown = realloc(d->out->items, (d->out->count + 1) * sizeof(*grown));
    if (!grown) {
        d->err = -ENOMEM;
        return;
    }
    d->out->items = grown;
    struct spec_difference *e = &grown[d->out->count++];
    snprintf(e->pointer, sizeof(e->pointer), "%s", pointer);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->text, sizeof(e->text), fmt, ap);
    va_end(ap);
}

static void ptr2(struct jptr *p, const char *a, const char *b)
{
    struct jptr root;
    jptr_root(&root);
    jptr_key(p, &root, a);
    if (b)
        jptr_key(p, p, b);
}

static void diff_u64(struct differ *d, const char *a, const char *b, const char *what, uint64_t x,
                     uint64_t y)
{
    if (x == y)
        return;
    struct jptr p;
    ptr2(&p, a, b);
    add(d, p.buf, "%s: %llu vs %llu", what, (unsigned long long)x, (unsigned long long)y);
}

static int cmp_entry(const void *a, const void *b)
{
    const struct cpuid_entry *x = a, *y = b;
    if (x->leaf != y->leaf)
        return x->leaf < y->leaf ? -1 : 1;
    uint64_t xs = x->has_subleaf ? (uint64_t)x->subleaf + 1 : 0;
    uint64_t ys = y->has_subleaf ? (uint64_t)y->subleaf + 1 : 0;
    return xs < ys ? -1 : xs > ys;
}

static const struct cpuid_entry *find_entry(const struct spec_cpuid *c,
                                            const struct cpuid_entry *key)
{
    for (size_t i = 0; i < c->count; i++) {
        if (!cmp_entry(&c->entries[i], key))
            return &c->entries[i];
    }
    return NULL;
}

static void fmt_leaf(const struct cpuid_entry *e, char *buf, size_t n)
{
    if (e->has_subleaf)
        snprintf(buf, n, "leaf 0x%x subleaf 0x%x", e->leaf, e->subleaf);
    else
        snprintf(buf, n, "leaf 0x%x", e->leaf);
}

/* Entries of a missing from b, or different; `first` says which spec is a. */
static void diff_cpuid_one_way(struct differ *d, const struct spec_cpuid *a,
                               const struct spec_cpuid *b, bool first)
{
    struct jptr p;
    ptr2(&p, "board", "cpuid");
    char leaf[64];
    for (size_t i = 0; i < a->count; i++) {
        const struct cpuid_entry *x = &a->entries[i];
        const struct cpuid_entry *y = find_entry(b, x);
        fmt_leaf(x, leaf, sizeof(leaf));
        if (!y) {
            add(d, p.buf, "CPUID %s is only in the %s spec", leaf, first ? "first" : "second");
        } else if (first &&
                   (x->eax != y->eax || x->ebx != y->ebx || x->ecx != y->ecx || x->edx != y->edx)) {
            add(d, p.buf, "CPUID %s: %08x %08x %08x %08x vs %08x %08x %08x %08x", leaf, x->eax,
                x->ebx, x->ecx, x->edx, y->eax, y->ebx, y->ecx, y->edx);
        }
    }
}

static void diff_board(struct differ *d, const struct spec_board *a, const struct spec_board *b)
{
    diff_u64(d, "board", "cpus", "vCPUs", a->cpus, b->cpus);
    diff_u64(d, "board", "memory_mb", "memory (MiB)", a->memory_mb, b->memory_mb);
    struct jptr p;
    if (a->enable_pcie != b->enable_pcie) {
        ptr2(&p, "board", "chipset");
        add(d, p.buf, "PCIe extended configuration: %s vs %s", a->enable_pcie ? "on" : "off",
            b->enable_pcie ? "on" : "off");
    }
    if (a->hv != b->hv || a->hyperv_features != b->hyperv_features) {
        ptr2(&p, "board", "guest_hv_interface");
        add(d, p.buf, "hypervisor interface: %s (features 0x%x) vs %s (features 0x%x)",
            a->hv == GUEST_HV_BHYVE ? "bhyve" : "hyper_v", a->hyperv_features,
            b->hv == GUEST_HV_BHYVE ? "bhyve" : "hyper_v", b->hyperv_features);
    }
    ptr2(&p, "board", "cpuid");
    if (a->has_cpuid != b->has_cpuid) {
        add(d, p.buf,
            "CPUID is %s in the first spec and %s in the second (host defaults "
            "may differ)",
            a->has_cpuid ? "explicit" : "host default", b->has_cpuid ? "explicit" : "host default");
        return;
    }
    if (!a->has_cpuid)
        return;
    if (a->cpuid.vendor != b->cpuid.vendor)
        add(d, p.buf, "CPU vendor: %s vs %s", a->cpuid.vendor == CPUID_VENDOR_AMD ? "amd" : "intel",
            b->cpuid.vendor == CPUID_VENDOR_AMD ? "amd" : "intel");
    diff_cpuid_one_way(d, &a->cpuid, &b->cpuid, true);
    diff_cpuid_one_way(d, &b->cpuid, &a->cpuid, false);
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static void diff_smbios(struct differ *d, const struct instance_spec *a,
                        const struct instance_spec *b)
{
    struct jptr p;
    ptr2(&p, "smbios", NULL);
    if (a->has_smbios != b->has_smbios) {
        add(d, p.buf, "SMBIOS type 1 strings are %s in the first spec and %s in the second",
            a->has_smbios ? "set" : "default", b->has_smbios ? "set" : "default");
        return;
    }
    if (!a->has_smbios)
        return;
    const struct spec_smbios *x = &a->smbios, *y = &b->smbios;
    const char *const names[] = {"manufacturer", "product_name", "serial_number"};
    const char *xs[] = {x->manufacturer, x->product_name, x->serial_number};
    const char *ys[] = {y->manufacturer, y->product_name, y->serial_number};
    for (int i = 0; i < 3; i++) {
        if (strcmp(str_or_empty(xs[i]), str_or_empty(ys[i])) == 0)
            continue;
        ptr2(&p, "smbios", names[i]);
        add(d, p.buf, "SMBIOS %s: \"%s\" vs \"%s\"", names[i], str_or_empty(xs[i]),
            str_or_empty(ys[i]));
    }
    diff_u64(d, "smbios", "version", "SMBIOS version", x->version, y->version);
}

/* Human text of a field's value, for the diff message. */
static void fmt_field(const struct instance_spec *s, const struct spec_component *c,
                      const struct field_desc *f, char *buf, size_t n)
{
    const void *x = field_cptr(c, f);
    switch (f->type) {
    case FT_U8:
        snprintf(buf, n, "%u", *(const uint8_t *)x);
        return;
    case FT_U32:
        snprintf(buf, n, "%u", *(const uint32_t *)x);
        return;
    case FT_U64:
        snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)x);
        return;
    case FT_BOOL:
        snprintf(buf, n, "%s", *(const bool *)x ? "true" : "false");
        return;
    case FT_COM:
        snprintf(buf, n, "com%u", *(const uint8_t *)x);
        return;
    case FT_PCI:
        pci_path_format(x, buf);
        return;
    case FT_SERIAL20: {
        const uint8_t *b = x;
        size_t k = 0;
        buf[k++] = '"';
        for (size_t i = 0; i < SPEC_NVME_SERIAL_LEN && k + 5 < n; i++)
            k += (size_t)snprintf(buf + k, n - k, b[i] >= 0x20 && b[i] < 0x7f ? "%c" : "\\x%02x",
                                  b[i]);
        snprintf(buf + k, n - k, "\"");
        return;
    }
    case FT_OPT_MAC: {
        const struct opt_mac *m = x;
        if (!m->present)
            snprintf(buf, n, "(chosen by the server)");
        else
            snprintf(buf, n, "%02x:%02x:%02x:%02x:%02x:%02x", m->bytes[0], m->bytes[1], m->bytes[2],
                     m->bytes[3], m->bytes[4], m->bytes[5]);
        return;
    }
    case FT_BOOT_ORDER: {
        /* The guest sees boot devices by PCI path, not by key. */
        const struct boot_order *o = x;
        size_t k = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < o->count && k < n; i++) {
            const struct spec_component *t = o->ids[i] ? spec_find(s, o->ids[i]) : NULL;
            const struct pci_path *pp = t ? spec_component_pci_path(t) : NULL;
            char where[12];
            if (pp)
                pci_path_format(pp, where);
            k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? ", " : "",
                                  pp ? where : str_or_empty(o->ids[i]));
        }
        if (!o->count)
            snprintf(buf, n, "(empty)");
        return;
    }
    default: {
        const char *str = *(char *const *)x;
        snprintf(buf, n, "\"%s\"", str_or_empty(str));
        return;
    }
    }
}

static void comp_field_ptr(struct jptr *p, const char *key, const char *field)
{
    ptr2(p, "components", key);
    if (field) {
        jptr_key(p, p, "component");
        jptr_key(p, p, field);
    }
}

static void diff_fields(struct differ *d, const struct instance_spec *sa,
                        const struct instance_spec *sb, const struct spec_component *a,
                        const struct spec_component *b, const char *label)
{
    const struct kind_desc *kd = &spec_kinds[a->kind];
    for (size_t i = 0; i < kd->nfields; i++) {
        const struct field_desc *f = &kd->fields[i];
        if (!(f->flags & F_GUEST))
            continue;
        char x[160], y[160];
        fmt_field(sa, a, f, x, sizeof(x));
        fmt_field(sb, b, f, y, sizeof(y));
        /* Boot order compares what the guest sees (PCI paths), not keys. */
        bool same = f->type == FT_BOOT_ORDER ? !strcmp(x, y) : spec_field_equal(a, b, f);
        if (same)
            continue;
        struct jptr p;
        comp_field_ptr(&p, a->key, f->name);
        add(d, p.buf, "%s \"%s\" %s: %s vs %s", label, a->key, f->name, x, y);
    }
}

/* Read-only and block size of the backend behind a disk, as the guest sees them. */
static void backend_view(const struct instance_spec *s, const struct spec_component *dev,
                         const struct spec_component **be, bool *ro, uint32_t *bs)
{
    const char *id = spec_component_backend_id(dev);
    *be = id ? spec_find(s, id) : NULL;
    *ro = false;
    *bs = 512;
    if (!*be)
        return;
    switch ((*be)->kind) {
    case SK_FILE_STORAGE_BACKEND:
        *ro = (*be)->u.file_storage_backend.readonly;
        *bs = (*be)->u.file_storage_backend.block_size;
        break;
    case SK_BLOB_STORAGE_BACKEND:
        *ro = (*be)->u.blob_storage_backend.readonly;
        break;
    case SK_NBD_STORAGE_BACKEND:
        *ro = (*be)->u.nbd_storage_backend.readonly;
        break;
    case SK_CRUCIBLE_STORAGE_BACKEND:
        *ro = (*be)->u.crucible_storage_backend.readonly;
        break;
    default:
        break;
    }
}

static void diff_disk_backend(struct differ *d, const struct instance_spec *sa,
                              const struct instance_spec *sb, const struct spec_component *a,
                              const struct spec_component *b)
{
    const struct spec_component *ba, *bb;
    bool ra, rb;
    uint32_t xa, xb;
    backend_view(sa, a, &ba, &ra, &xa);
    backend_view(sb, b, &bb, &rb, &xb);
    if (!ba || !bb)
        return; /* a dangling backend is the validator's to report */
    struct jptr p;
    if (ra != rb) {
        comp_field_ptr(&p, bb->key, "readonly");
        add(d, p.buf, "disk \"%s\" is %s vs %s", a->key, ra ? "read-only" : "writable",
            rb ? "read-only" : "writable");
    }
    if (xa != xb) {
        comp_field_ptr(&p, bb->key, "block_size");
        add(d, p.buf, "disk \"%s\" block size: %u vs %u", a->key, xa, xb);
    }
}

/* The failure injector is a test hook the guest cannot see. */
static bool guest_sees(const struct spec_component *c)
{
    return spec_kind_is_device(c->kind) && c->kind != SK_MIGRATION_FAILURE_INJECTOR;
}

static void diff_devices(struct differ *d, const struct instance_spec *a,
                         const struct instance_spec *b)
{
    for (size_t i = 0; i < a->count; i++) {
        const struct spec_component *x = &a->components[i];
        if (!guest_sees(x))
            continue;
        const struct spec_component *y = spec_find(b, x->key);
        struct jptr p;
        comp_field_ptr(&p, x->key, NULL);
        if (!y || !guest_sees(y)) {
            add(d, p.buf, "device \"%s\" (%s) is only in the first spec", x->key,
                spec_kind_name(x->kind));
        } else if (x->kind != y->kind) {
            add(d, p.buf, "device \"%s\" is a %s vs a %s", x->key, spec_kind_name(x->kind),
                spec_kind_name(y->kind));
        } else {
            diff_fields(d, a, b, x, y, spec_kind_name(x->kind));
            if (spec_kind_is_disk(x->kind))
                diff_disk_backend(d, a, b, x, y);
        }
    }
    for (size_t i = 0; i < b->count; i++) {
        const struct spec_component *y = &b->components[i];
        const struct spec_component *x = spec_find(a, y->key);
        if (!guest_sees(y) || (x && guest_sees(x)))
            continue;
        struct jptr p;
        comp_field_ptr(&p, y->key, NULL);
        add(d, p.buf, "device \"%s\" (%s) is only in the second spec", y->key,
            spec_kind_name(y->kind));
    }
}

int spec_guest_diff(const struct instance_spec *a, const struct instance_spec *b,
                    struct spec_diff *out)
{
    out->items = NULL;
    out->count = 0;
    struct differ d = {.out = out, .err = 0};
    diff_board(&d, &a->board, &b->board);
    diff_smbios(&d, a, b);
    diff_devices(&d, a, b);
    if (d.err) {
        spec_diff_free(out);
        return d.err;
    }
    return (int)out->count;
}

void spec_diff_free(struct spec_diff *d)
{
    if (!d)
        return;
    free(d->items);
    d->items = NULL;
    d->count = 0;
}
