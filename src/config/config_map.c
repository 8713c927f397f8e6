/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Places spec_validate()'s findings in the config: a problem at
 * /components/disk0/component/pci_path came from the "pci-path" key of
 * the table that made component "disk0", so the message names that line.
 * The pointer stays the spec's, since the finding is about the spec.
 */
#include "config/config_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Spec field -> the config keys that set it, most likely first. */
static const struct {
    const char *field;
    const char *keys[2];
} field_keys[] = {
    {"backend_id", {"block_dev", "vnic"}},
    {"pci_path", {"pci-path", NULL}},
    {"serial_number", {"serial", NULL}},
    {"interface_id", {"interface-id", NULL}},
    {"vnic_name", {"vnic", NULL}},
    {"num", {"port", NULL}},
    {"downstream_bus", {"downstream-bus", NULL}},
    {"order", {"boot_order", NULL}},
    {"base64", {"base64", "path"}},
    {"cpus", {"cpus", NULL}},
    {"memory_mb", {"memory", NULL}},
    {"chipset", {"enable-pcie", NULL}},
};

/* Splits the next token off *p into tok (unescaped); false at the end. */
static bool next_token(const char **p, char *tok, size_t cap)
{
    const char *s = *p;
    if (*s != '/')
        return false;
    s++;
    size_t n = 0;
    while (*s && *s != '/') {
        char ch = *s++;
        if (ch == '~' && (*s == '0' || *s == '1'))
            ch = *s++ == '0' ? '~' : '/';
        if (n + 1 < cap)
            tok[n++] = ch;
    }
    tok[n] = '\0';
    *p = s;
    return true;
}

/* Position of the config key that sets spec field `field` in t, or of t. */
static struct toml_pos field_pos(const struct cfg_table *t, const char *field)
{
    for (size_t i = 0; field && i < sizeof(field_keys) / sizeof(field_keys[0]); i++) {
        if (strcmp(field_keys[i].field, field) != 0)
            continue;
        for (size_t k = 0; k < 2 && field_keys[i].keys[k]; k++) {
            if (toml_table_get(t->v, field_keys[i].keys[k]))
                return cfg_key_pos(t, field_keys[i].keys[k]);
        }
    }
    if (field && toml_table_get(t->v, field))
        return cfg_key_pos(t, field);
    return toml_value_pos(t->v);
}

static const struct cfg_origin *origin_of(const struct cfg *c, const char *key)
{
    for (size_t i = 0; i < c->norigins; i++) {
        if (strcmp(c->origins[i].key, key) == 0)
            return &c->origins[i];
    }
    return NULL;
}

static void map_component(struct cfg *c, const struct cella_error *e, const char *rest,
                          const char *key)
{
    const struct cfg_origin *o = origin_of(c, key);
    if (!o) {
        cfg_diag(c, (struct toml_pos){0, 0}, NULL, "%s", e->message);
        return;
    }
    char tok[SPEC_MAX_KEY_LEN + 1] = "";
    const char *field = NULL;
    if (next_token(&rest, tok, sizeof(tok)) && strcmp(tok, "component") == 0)
        field = next_token(&rest, tok, sizeof(tok)) ? tok : NULL;
    else if (tok[0])
        field = tok;
    struct jptr p;
    snprintf(p.buf, sizeof(p.buf), "%s", e->pointer);
    cfg_diag(c, field_pos(&o->table, field), &p, "%s (from %s)", e->message, o->table.display);
}

static void map_board(struct cfg *c, const struct cella_error *e, const char *rest)
{
    struct jptr p;
    snprintf(p.buf, sizeof(p.buf), "%s", e->pointer);
    char tok[64];
    const char *field = next_token(&rest, tok, sizeof(tok)) ? tok : NULL;
    if (field && strcmp(field, "cpuid") == 0 && c->cpuid_profile) {
        struct cfg_table cpuid, prof;
        cfg_table_top(&cpuid, toml_table_get(c->root, "cpuid"), "cpuid");
        cfg_table_child(&prof, toml_table_get(cpuid.v, c->cpuid_profile), &cpuid, c->cpuid_profile);
        struct toml_pos pos = prof.v ? toml_value_pos(prof.v) : (struct toml_pos){0, 0};
        char idx[24];
        if (next_token(&rest, tok, sizeof(tok)) && strcmp(tok, "entries") == 0 &&
            next_token(&rest, idx, sizeof(idx))) {
            char *end;
            unsigned long i = strtoul(idx, &end, 10);
            if (!*end && i < c->spec->board.cpuid.count && c->cpuid_pos)
                pos = c->cpuid_pos[i];
        }
        cfg_diag(c, pos, &p, "%s (from %s)", e->message, prof.display);
        return;
    }
    if (field && strcmp(field, "chipset") == 0) {
        struct cfg_table t;
        cfg_table_top(&t, toml_table_get(c->root, "chipset"), "chipset");
        if (t.v) {
            cfg_diag(c, field_pos(&t, field), &p, "%s (from [chipset])", e->message);
            return;
        }
    }
    if (c->main.v)
        cfg_diag(c, field_pos(&c->main, field), &p, "%s (from [main])", e->message);
    else
        cfg_diag(c, (struct toml_pos){0, 0}, &p, "%s", e->message);
}

void cfg_map_spec_errors(struct cfg *c, const struct cella_errors *verrs)
{
    for (size_t i = 0; i < verrs->count; i++) {
        const struct cella_error *e = &verrs->items[i];
        const char *rest = e->pointer;
        char tok[SPEC_MAX_KEY_LEN + 1];
        if (next_token(&rest, tok, sizeof(tok)) && strcmp(tok, "components") == 0 &&
            next_token(&rest, tok, sizeof(tok))) {
            map_component(c, e, rest, tok);
            continue;
        }
        rest = e->pointer;
        if (next_token(&rest, tok, sizeof(tok)) && strcmp(tok, "board") == 0) {
            map_board(c, e, rest);
            continue;
        }
        struct jptr p;
        snprintf(p.buf, sizeof(p.buf), "%s", e->pointer);
        cfg_diag(c, (struct toml_pos){0, 0}, &p, "%s", e->message);
    }
    for (size_t i = 0; i < verrs->dropped; i++)
        cfg_diag(c, (struct toml_pos){0, 0}, NULL, "too many problems; fix the ones above first");
}
