/* SPDX-License-Identifier: MPL-2.0 */
/* [cpuid.PROFILE]: explicit CPUID leaves for the board. */
#include "config/config_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct leaf {
    struct cpuid_entry e;
    struct toml_pos pos;
};

/* One number of a leaf key: "0x1f" (hex) or "31" (decimal), up to UINT32_MAX. */
static int parse_num(const char *s, size_t len, uint32_t *out)
{
    unsigned base = 10;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
        len -= 2;
    }
    if (len == 0)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (base == 16 && ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else if (base == 16 && ch >= 'A' && ch <= 'F')
            d = (unsigned)(ch - 'A' + 10);
        else
            return -EINVAL;
        v = v * base + d;
        if (v > UINT32_MAX)
            return -ERANGE;
    }
    *out = (uint32_t)v;
    return 0;
}

/* "leaf" or "leaf-subleaf". */
static int parse_leaf_key(const char *key, struct cpuid_entry *e)
{
    const char *dash = strchr(key, '-');
    size_t llen = dash ? (size_t)(dash - key) : strlen(key);
    int r = parse_num(key, llen, &e->leaf);
    if (r < 0)
        return r;
    e->has_subleaf = dash != NULL;
    e->subleaf = 0;
    return dash ? parse_num(dash + 1, strlen(dash + 1), &e->subleaf) : 0;
}

static bool read_regs(struct cfg *c, const struct cfg_table *t, const char *key,
                      const struct toml_value *v, struct cpuid_entry *e)
{
    struct jptr p;
    jptr_key(&p, &t->ptr, key);
    if (toml_type(v) != TOML_ARRAY || toml_array_len(v) != 4) {
        cfg_diag(c, toml_value_pos(v), &p,
                 "leaf \"%s\" in %s must be an array of 4 integers [eax, ebx, ecx, edx]", key,
                 t->display);
        return false;
    }
    uint32_t regs[4];
    for (size_t i = 0; i < 4; i++) {
        const struct toml_value *r = toml_array_get(v, i);
        int64_t n = toml_integer(r);
        if (toml_type(r) != TOML_INTEGER || n < 0 || n > UINT32_MAX) {
            static const char *const names[] = {"eax", "ebx", "ecx", "edx"};
            struct jptr ep;
            jptr_index(&ep, &p, i);
            cfg_diag(c, toml_value_pos(r), &ep,
                     "%s of leaf \"%s\" in %s must be an integer from 0 to 0xffffffff", names[i],
                     key, t->display);
            return false;
        }
        regs[i] = (uint32_t)n;
    }
    e->eax = regs[0];
    e->ebx = regs[1];
    e->ecx = regs[2];
    e->edx = regs[3];
    return true;
}

static int cmp_leaf(const void *a, const void *b)
{
    const struct cpuid_entry *x = &((const struct leaf *)a)->e, *y = &((const struct leaf *)b)->e;
    if (x->leaf != y->leaf)
        return x->leaf < y->leaf ? -1 : 1;
    if (x->has_subleaf != y->has_subleaf)
        return x->has_subleaf ? 1 : -1;
    if (x->subleaf != y->subleaf)
        return x->subleaf < y->subleaf ? -1 : 1;
    return 0;
}

static bool pos_before(struct toml_pos a, struct toml_pos b)
{
    return a.line < b.line || (a.line == b.line && a.col < b.col);
}

/* Sorts the leaves and records a problem for each leaf written twice. */
static bool sort_leaves(struct cfg *c, const struct cfg_table *t, struct leaf *l, size_t n)
{
    qsort(l, n, sizeof(*l), cmp_leaf);
    bool ok = true;
    for (size_t i = 1; i < n; i++) {
        if (cmp_leaf(&l[i - 1], &l[i]) != 0)
            continue;
        const struct leaf *first = pos_before(l[i - 1].pos, l[i].pos) ? &l[i - 1] : &l[i];
        const struct leaf *second = first == &l[i] ? &l[i - 1] : &l[i];
        char name[32];
        if (second->e.has_subleaf)
            snprintf(name, sizeof(name), "0x%x-0x%x", second->e.leaf, second->e.subleaf);
        else
            snprintf(name, sizeof(name), "0x%x", second->e.leaf);
        cfg_diag(c, second->pos, &t->ptr, "%s sets leaf %s twice (also on line %u)", t->display,
                 name, first->pos.line);
        ok = false;
    }
    return ok;
}

/*
 * Reads one profile. When `use` is set and it is good, its entries become
 * the board's CPUID; other profiles are only checked.
 */
static void read_profile(struct cfg *c, const struct cfg_table *cpuid, size_t index, bool use)
{
    const char *name = toml_table_key(cpuid->v, index, NULL);
    const struct toml_value *v = toml_table_value(cpuid->v, index);
    struct cfg_table t;
    cfg_table_child(&t, v, cpuid, name);
    if (toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &t.ptr, "%s must be a table of leaves, not %s", t.display,
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    bool ok = true;
    enum cpuid_vendor vendor = CPUID_VENDOR_AMD;
    const char *vs;
    int r = cfg_get_str(c, &t, "vendor", true, 16, &vs);
    if (r > 0 && strcmp(vs, "amd") == 0) {
        vendor = CPUID_VENDOR_AMD;
    } else if (r > 0 && strcmp(vs, "intel") == 0) {
        vendor = CPUID_VENDOR_INTEL;
    } else if (r > 0) {
        struct jptr p;
        jptr_key(&p, &t.ptr, "vendor");
        cfg_diag(c, toml_value_pos(toml_table_get(v, "vendor")), &p,
                 "\"vendor\" in %s must be \"amd\" or \"intel\"", t.display);
        ok = false;
    } else {
        ok = false;
    }

    size_t nkeys = toml_table_len(v);
    struct leaf *leaves = calloc(nkeys ? nkeys : 1, sizeof(*leaves));
    if (!leaves) {
        cfg_nomem(c);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < nkeys; i++) {
        struct toml_pos kpos;
        const char *key = toml_table_key(v, i, &kpos);
        if (strcmp(key, "vendor") == 0)
            continue;
        struct jptr p;
        jptr_key(&p, &t.ptr, key);
        struct leaf *l = &leaves[n];
        if (toml_table_key_len(v, i) != strlen(key) || parse_leaf_key(key, &l->e) < 0) {
            char q[96];
            cfg_quote(key, toml_table_key_len(v, i), q, sizeof(q));
            cfg_diag(c, kpos, &p,
                     "unknown key %s in %s: a leaf is written \"leaf\" or \"leaf-subleaf\", "
                     "each a 32-bit number in decimal or 0x hex (like \"0x7-0\")",
                     q, t.display);
            ok = false;
            continue;
        }
        l->pos = kpos;
        if (!read_regs(c, &t, key, toml_table_value(v, i), &l->e)) {
            ok = false;
            continue;
        }
        n++;
    }
    if (n == 0 && ok) {
        cfg_diag(c, toml_value_pos(v), &t.ptr,
                 "%s has no leaves; a guest would see no CPUID at all (leave out "
                 "cpuid_profile for the host's defaults)",
                 t.display);
        ok = false;
    }
    if (n > SPEC_MAX_CPUID_ENTRIES) {
        cfg_diag(c, toml_value_pos(v), &t.ptr, "%s has %zu leaves; a spec holds at most %d",
                 t.display, n, SPEC_MAX_CPUID_ENTRIES);
        ok = false;
    }
    if (!sort_leaves(c, &t, leaves, n))
        ok = false;
    if (!use || !ok) {
        free(leaves);
        return;
    }
    struct spec_cpuid *cp = &c->spec->board.cpuid;
    cp->vendor = vendor;
    cp->entries = calloc(n ? n : 1, sizeof(*cp->entries));
    c->cpuid_pos = calloc(n ? n : 1, sizeof(*c->cpuid_pos));
    if (!cp->entries || !c->cpuid_pos) {
        cfg_nomem(c);
        free(leaves);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        cp->entries[i] = leaves[i].e;
        c->cpuid_pos[i] = leaves[i].pos;
    }
    cp->count = n;
    c->spec->board.has_cpuid = true;
    free(leaves);
}

void cfg_read_cpuid(struct cfg *c)
{
    const struct toml_value *v = toml_table_get(c->root, "cpuid");
    struct cfg_table cpuid;
    cfg_table_top(&cpuid, v, "cpuid");
    bool found = false;
    if (v && toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &cpuid.ptr, "\"cpuid\" must be a table of profiles, not %s",
                 cfg_type_phrase(toml_type(v)));
        v = NULL;
    }
    for (size_t i = 0; v && i < toml_table_len(v); i++) {
        const char *name = toml_table_key(v, i, NULL);
        bool use = c->cpuid_profile && strcmp(name, c->cpuid_profile) == 0 &&
                   toml_table_key_len(v, i) == strlen(name);
        found = found || use;
        read_profile(c, &cpuid, i, use);
    }
    if (c->cpuid_profile && !found) {
        struct jptr p;
        jptr_key(&p, &c->main.ptr, "cpuid_profile");
        char q[160];
        cfg_quote(c->cpuid_profile, strlen(c->cpuid_profile), q, sizeof(q));
        cfg_diag(c, toml_value_pos(c->cpuid_profile_v), &p,
                 "cpuid_profile %s in [main] names no [cpuid.%s] table", q, c->cpuid_profile);
    }
}
