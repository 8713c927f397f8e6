/* SPDX-License-Identifier: MPL-2.0 */
/* Lifetime, copy, equality and lookup of specs, driven by the kind tables. */
#include "spec/spec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "spec/kind_table.h"

static bool is_heap_string(enum field_type t)
{
    return t == FT_STR || t == FT_BASE64 || t == FT_KEY || t == FT_UUID;
}

static void boot_order_free(struct boot_order *b)
{
    for (size_t i = 0; i < b->count; i++)
        free(b->ids[i]);
    free(b->ids);
    b->ids = NULL;
    b->count = 0;
}

void spec_component_free(struct spec_component *c)
{
    if (!c)
        return;
    if ((unsigned)c->kind < SK__COUNT) {
        const struct kind_desc *kd = &spec_kinds[c->kind];
        for (size_t i = 0; i < kd->nfields; i++) {
            const struct field_desc *f = &kd->fields[i];
            if (is_heap_string(f->type))
                free(*(char **)field_ptr(c, f));
            else if (f->type == FT_BOOT_ORDER)
                boot_order_free(field_ptr(c, f));
        }
    }
    free(c->key);
    memset(c, 0, sizeof(*c));
}

void spec_init(struct instance_spec *s)
{
    memset(s, 0, sizeof(*s));
}

static void smbios_free(struct spec_smbios *m)
{
    free(m->manufacturer);
    free(m->product_name);
    free(m->serial_number);
    memset(m, 0, sizeof(*m));
}

void spec_free(struct instance_spec *s)
{
    if (!s)
        return;
    free(s->board.cpuid.entries);
    smbios_free(&s->smbios);
    for (size_t i = 0; i < s->count; i++)
        spec_component_free(&s->components[i]);
    free(s->components);
    spec_init(s);
}

static int dup_str(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return 0;
    }
    *dst = strdup(src);
    return *dst ? 0 : -ENOMEM;
}

static int boot_order_copy(struct boot_order *dst, const struct boot_order *src)
{
    dst->count = 0;
    dst->ids = NULL;
    if (!src->count)
        return 0;
    dst->ids = calloc(src->count, sizeof(char *));
    if (!dst->ids)
        return -ENOMEM;
    for (size_t i = 0; i < src->count; i++) {
        if (dup_str(&dst->ids[i], src->ids[i]) < 0) {
            dst->count = i;
            boot_order_free(dst);
            return -ENOMEM;
        }
    }
    dst->count = src->count;
    return 0;
}

int spec_component_copy(struct spec_component *dst, const struct spec_component *src)
{
    /* Scalars and fixed arrays come along with the struct copy. */
    *dst = *src;
    dst->key = NULL;
    const struct kind_desc *kd = &spec_kinds[src->kind];
    for (size_t i = 0; i < kd->nfields; i++) {
        const struct field_desc *f = &kd->fields[i];
        if (is_heap_string(f->type))
            *(char **)field_ptr(dst, f) = NULL;
        else if (f->type == FT_BOOT_ORDER)
            memset(field_ptr(dst, f), 0, sizeof(struct boot_order));
    }
    int r = dup_str(&dst->key, src->key);
    for (size_t i = 0; r == 0 && i < kd->nfields; i++) {
        const struct field_desc *f = &kd->fields[i];
        if (is_heap_string(f->type))
            r = dup_str(field_ptr(dst, f), *(char *const *)field_cptr(src, f));
        else if (f->type == FT_BOOT_ORDER)
            r = boot_order_copy(field_ptr(dst, f), field_cptr(src, f));
    }
    if (r < 0)
        spec_component_free(dst);
    return r;
}

int spec_copy(struct instance_spec *dst, const struct instance_spec *src)
{
    spec_init(dst);
    dst->board = src->board;
    dst->board.cpuid.entries = NULL;
    dst->has_smbios = src->has_smbios;
    int r = 0;
    if (src->board.cpuid.count) {
        size_t n = src->board.cpuid.count;
        dst->board.cpuid.entries = malloc(n * sizeof(struct cpuid_entry));
        if (!dst->board.cpuid.entries)
            goto nomem;
        memcpy(dst->board.cpuid.entries, src->board.cpuid.entries, n * sizeof(struct cpuid_entry));
    }
    if (src->has_smbios) {
        dst->smbios.version = src->smbios.version;
        if (dup_str(&dst->smbios.manufacturer, src->smbios.manufacturer) < 0 ||
            dup_str(&dst->smbios.product_name, src->smbios.product_name) < 0 ||
            dup_str(&dst->smbios.serial_number, src->smbios.serial_number) < 0)
            goto nomem;
    }
    if (src->count) {
        dst->components = calloc(src->count, sizeof(struct spec_component));
        if (!dst->components)
            goto nomem;
        for (size_t i = 0; i < src->count; i++) {
            r = spec_component_copy(&dst->components[i], &src->components[i]);
            if (r < 0)
                goto nomem;
            dst->count = i + 1;
        }
    }
    return 0;
nomem:
    spec_free(dst);
    return -ENOMEM;
}

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

bool spec_field_equal(const struct spec_component *a, const struct spec_component *b,
                      const struct field_desc *f)
{
    const void *x = field_cptr(a, f), *y = field_cptr(b, f);
    switch (f->type) {
    case FT_U8:
    case FT_COM:
        return *(const uint8_t *)x == *(const uint8_t *)y;
    case FT_U32:
        return *(const uint32_t *)x == *(const uint32_t *)y;
    case FT_U64:
        return *(const uint64_t *)x == *(const uint64_t *)y;
    case FT_BOOL:
        return *(const bool *)x == *(const bool *)y;
    case FT_STR:
    case FT_BASE64:
    case FT_KEY:
    case FT_UUID:
        return str_eq(*(char *const *)x, *(char *const *)y);
    case FT_PCI:
        return memcmp(x, y, sizeof(struct pci_path)) == 0;
    case FT_SERIAL20:
        return memcmp(x, y, SPEC_NVME_SERIAL_LEN) == 0;
    case FT_OPT_U64: {
        const struct opt_u64 *p = x, *q = y;
        return p->present == q->present && (!p->present || p->value == q->value);
    }
    case FT_OPT_MAC: {
        const struct opt_mac *p = x, *q = y;
        return p->present == q->present && (!p->present || !memcmp(p->bytes, q->bytes, 6));
    }
    case FT_BOOT_ORDER: {
        const struct boot_order *p = x, *q = y;
        if (p->count != q->count)
            return false;
        for (size_t i = 0; i < p->count; i++) {
            if (!str_eq(p->ids[i], q->ids[i]))
                return false;
        }
        return true;
    }
    }
    return false;
}

bool spec_component_equal(const struct spec_component *a, const struct spec_component *b)
{
    if (a->kind != b->kind || !str_eq(a->key, b->key))
        return false;
    const struct kind_desc *kd = &spec_kinds[a->kind];
    for (size_t i = 0; i < kd->nfields; i++) {
        if (!spec_field_equal(a, b, &kd->fields[i]))
            return false;
    }
    return true;
}

static bool cpuid_equal(const struct spec_board *a, const struct spec_board *b)
{
    if (a->has_cpuid != b->has_cpuid)
        return false;
    if (!a->has_cpuid)
        return true;
    if (a->cpuid.vendor != b->cpuid.vendor || a->cpuid.count != b->cpuid.count)
        return false;
    for (size_t i = 0; i < a->cpuid.count; i++) {
        const struct cpuid_entry *x = &a->cpuid.entries[i], *y = &b->cpuid.entries[i];
        if (x->leaf != y->leaf || x->has_subleaf != y->has_subleaf ||
            (x->has_subleaf && x->subleaf != y->subleaf) || x->eax != y->eax || x->ebx != y->ebx ||
            x->ecx != y->ecx || x->edx != y->edx)
            return false;
    }
    return true;
}

bool spec_equal(const struct instance_spec *a, const struct instance_spec *b)
{
    const struct spec_board *x = &a->board, *y = &b->board;
    if (x->cpus != y->cpus || x->memory_mb != y->memory_mb || x->enable_pcie != y->enable_pcie ||
        x->hv != y->hv || x->hyperv_features != y->hyperv_features || !cpuid_equal(x, y))
        return false;
    if (a->has_smbios != b->has_smbios)
        return false;
    if (a->has_smbios && (a->smbios.version != b->smbios.version ||
                          !str_eq(a->smbios.manufacturer, b->smbios.manufacturer) ||
                          !str_eq(a->smbios.product_name, b->smbios.product_name) ||
                          !str_eq(a->smbios.serial_number, b->smbios.serial_number)))
        return false;
    if (a->count != b->count)
        return false;
    for (size_t i = 0; i < a->count; i++) {
        if (!spec_component_equal(&a->components[i], &b->components[i]))
            return false;
    }
    return true;
}

static int find_index(const struct instance_spec *s, const char *key, size_t *pos)
{
    size_t lo = 0, hi = s->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->components[mid].key, key);
        if (c == 0) {
            *pos = mid;
            return 0;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *pos = lo;
    return -ENOENT;
}

const struct spec_component *spec_find(const struct instance_spec *s, const char *key)
{
    size_t pos;
    return find_index(s, key, &pos) == 0 ? &s->components[pos] : NULL;
}

struct spec_component *spec_find_mut(struct instance_spec *s, const char *key)
{
    size_t pos;
    return find_index(s, key, &pos) == 0 ? &s->components[pos] : NULL;
}

int spec_insert(struct instance_spec *s, struct spec_component *c)
{
    size_t pos;
    if (find_index(s, c->key, &pos) == 0)
        return -EEXIST;
    if (s->count >= SPEC_MAX_COMPONENTS)
        return -E2BIG;
    struct spec_component *grown = realloc(s->components, (s->count + 1) * sizeof(*grown));
    if (!grown)
        return -ENOMEM;
    s->components = grown;
    memmove(&grown[pos + 1], &grown[pos], (s->count - pos) * sizeof(*grown));
    grown[pos] = *c;
    s->count++;
    memset(c, 0, sizeof(*c));
    return 0;
}
