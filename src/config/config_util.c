/* SPDX-License-Identifier: MPL-2.0 */
/* Diagnostics, table naming and typed getters for the config converter. */
#include "config/config_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- diagnostics ---- */

void cfg_diag(struct cfg *c, struct toml_pos pos, const struct jptr *ptr, const char *fmt, ...)
{
    if (c->ndiags >= CELLA_ERR_MAX_RECORDS) {
        c->dropped++;
        return;
    }
    struct cfg_diag *grown = realloc(c->diags, (c->ndiags + 1) * sizeof(*grown));
    if (!grown) {
        c->nomem = true;
        return;
    }
    c->diags = grown;
    struct cfg_diag *d = &grown[c->ndiags];
    d->pos = pos;
    d->seq = c->ndiags++;
    d->code = -EINVAL;
    snprintf(d->pointer, sizeof(d->pointer), "%s", ptr ? ptr->buf : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->message, sizeof(d->message), fmt, ap);
    va_end(ap);
}

void cfg_nomem(struct cfg *c)
{
    c->nomem = true;
}

static int cmp_diag(const void *a, const void *b)
{
    const struct cfg_diag *x = a, *y = b;
    /* Diagnostics without a position go last. */
    uint64_t kx = x->pos.line ? ((uint64_t)x->pos.line << 32 | x->pos.col) : UINT64_MAX;
    uint64_t ky = y->pos.line ? ((uint64_t)y->pos.line << 32 | y->pos.col) : UINT64_MAX;
    if (kx != ky)
        return kx < ky ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

void cfg_emit(struct cfg *c, struct cella_errors *errs)
{
    if (c->ndiags > 1)
        qsort(c->diags, c->ndiags, sizeof(c->diags[0]), cmp_diag);
    for (size_t i = 0; i < c->ndiags; i++) {
        const struct cfg_diag *d = &c->diags[i];
        if (d->pos.line)
            cella_err(errs, d->code, d->pointer, "line %u, column %u: %s", d->pos.line, d->pos.col,
                      d->message);
        else
            cella_err(errs, d->code, d->pointer, "%s", d->message);
    }
    for (size_t i = 0; i < c->dropped; i++)
        cella_err(errs, -EINVAL, "", "too many problems; fix the ones above first");
    if (c->nomem)
        cella_err(errs, -ENOMEM, "", "out of memory while converting the config");
}

void cfg_quote(const char *s, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    if (cap < 8) {
        if (cap)
            out[0] = '\0';
        return;
    }
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == '"' || ch == '\\')
            snprintf(esc, sizeof(esc), "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            snprintf(esc, sizeof(esc), "\\x%02x", ch);
        else
            snprintf(esc, sizeof(esc), "%c", ch);
        size_t el = strlen(esc);
        /* Room for this, then "..." + quote + NUL. */
        if (n + el + 5 > cap) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        memcpy(out + n, esc, el);
        n += el;
    }
    out[n++] = '"';
    out[n] = '\0';
}

/* Edit distance where '-' and '_' count as the same letter. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            char x = a[i - 1] == '-' ? '_' : a[i - 1];
            char y = b[j - 1] == '-' ? '_' : b[j - 1];
            size_t sub = diag + (x != y);
            size_t del = row[j] + 1, ins = row[j - 1] + 1;
            diag = row[j];
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    }
    return row[lb];
}

const char *cfg_suggest(const char *got, const char *const *allowed, size_t n)
{
    const char *best = NULL;
    size_t best_d = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t d = distance(got, allowed[i]);
        if (d < best_d) {
            best_d = d;
            best = allowed[i];
        }
    }
    size_t len = strlen(got);
    size_t limit = len < 4 ? 1 : len < 8 ? 2 : 3;
    return best && best_d <= limit ? best : NULL;
}

/* ---- tables ---- */

static bool is_bare_key(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return false;
    }
    return true;
}

/* Appends a key to a dotted display name, quoting it when it is not bare. */
static void display_key(char *out, size_t cap, const char *key)
{
    if (is_bare_key(key)) {
        snprintf(out, cap, "%s", key);
        return;
    }
    cfg_quote(key, strlen(key), out, cap);
}

void cfg_table_top(struct cfg_table *t, const struct toml_value *v, const char *key)
{
    struct jptr root;
    jptr_root(&root);
    t->v = v;
    snprintf(t->display, sizeof(t->display), "[%s]", key);
    jptr_key(&t->ptr, &root, key);
}

void cfg_table_child(struct cfg_table *t, const struct toml_value *v,
                     const struct cfg_table *parent, const char *key)
{
    char name[CFG_DISPLAY_MAX - 32];
    display_key(name, sizeof(name), key);
    /* parent->display is "[section]"; drop its closing bracket. */
    size_t plen = strlen(parent->display);
    int keep = plen > 1 ? (int)(plen - 1) : 0;
    t->v = v;
    snprintf(t->display, sizeof(t->display), "%.*s.%s]", keep < 30 ? keep : 30, parent->display,
             name);
    jptr_key(&t->ptr, &parent->ptr, key);
}

void cfg_table_elem(struct cfg_table *t, const struct toml_value *v, const char *key, size_t i)
{
    struct jptr root, arr;
    jptr_root(&root);
    jptr_key(&arr, &root, key);
    t->v = v;
    snprintf(t->display, sizeof(t->display), "[[%s]] #%zu", key, i + 1);
    jptr_index(&t->ptr, &arr, i);
}

struct toml_pos cfg_key_pos(const struct cfg_table *t, const char *key)
{
    ptrdiff_t i = t->v ? toml_table_index(t->v, key, strlen(key)) : -1;
    struct toml_pos pos = {0, 0};
    if (i >= 0) {
        toml_table_key(t->v, (size_t)i, &pos);
        return pos;
    }
    return t->v ? toml_value_pos(t->v) : pos;
}

void cfg_check_keys(struct cfg *c, const struct cfg_table *t, const char *const *allowed, size_t n,
                    const struct cfg_refusal *refused, size_t nrefused)
{
    size_t len = toml_table_len(t->v);
    for (size_t i = 0; i < len; i++) {
        struct toml_pos pos;
        const char *key = toml_table_key(t->v, i, &pos);
        size_t klen = toml_table_key_len(t->v, i);
        bool ok = false;
        for (size_t k = 0; k < n && !ok; k++)
            ok = klen == strlen(allowed[k]) && strcmp(key, allowed[k]) == 0;
        if (ok)
            continue;
        struct jptr p;
        jptr_key(&p, &t->ptr, key);
        char q[160];
        cfg_quote(key, klen, q, sizeof(q));
        const char *reason = NULL;
        for (size_t k = 0; k < nrefused && !reason; k++) {
            if (strcmp(key, refused[k].key) == 0)
                reason = refused[k].reason;
        }
        if (reason) {
            cfg_diag(c, pos, &p, "key %s in %s is not part of an instance spec: %s", q, t->display,
                     reason);
            continue;
        }
        const char *hint = klen == strlen(key) ? cfg_suggest(key, allowed, n) : NULL;
        bool top = t->ptr.buf[0] == '\0';
        if (top && hint)
            cfg_diag(c, pos, &p, "unknown table or key %s at the top level (did you mean \"%s\"?)",
                     q, hint);
        else if (top)
            cfg_diag(c, pos, &p,
                     "unknown table or key %s at the top level; a config has [main], [chipset], "
                     "[[pci_bridge]], [block_dev.NAME], [dev.NAME] and [cpuid.NAME]",
                     q);
        else if (hint)
            cfg_diag(c, pos, &p, "unknown key %s in %s (did you mean \"%s\"?)", q, t->display,
                     hint);
        else
            cfg_diag(c, pos, &p, "unknown key %s in %s", q, t->display);
    }
}

/* ---- typed getters ---- */

const char *cfg_type_phrase(enum toml_type t)
{
    switch (t) {
    case TOML_TABLE:
        return "a table";
    case TOML_ARRAY:
        return "an array";
    case TOML_STRING:
        return "a string";
    case TOML_INTEGER:
        return "an integer";
    case TOML_FLOAT:
        return "a float";
    case TOML_BOOL:
        return "a boolean (true or false)";
    default:
        return "a date or time";
    }
}

int cfg_get(struct cfg *c, const struct cfg_table *t, const char *key, enum toml_type type,
            bool required, const struct toml_value **out)
{
    const struct toml_value *v = t->v ? toml_table_get(t->v, key) : NULL;
    struct jptr p;
    jptr_key(&p, &t->ptr, key);
    if (!v) {
        if (!required)
            return 0;
        struct toml_pos pos = t->v ? toml_value_pos(t->v) : (struct toml_pos){0, 0};
        cfg_diag(c, pos, &p, "%s is missing required key \"%s\"", t->display, key);
        return -1;
    }
    if (toml_type(v) != type) {
        const char *want = cfg_type_phrase(type);
        const char *got = cfg_type_phrase(toml_type(v));
        if (type == TOML_BOOL)
            want = "true or false";
        cfg_diag(c, toml_value_pos(v), &p, "\"%s\" in %s must be %s, not %s", key, t->display, want,
                 got);
        return -1;
    }
    *out = v;
    return 1;
}

int cfg_get_uint(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                 uint64_t min, uint64_t max, uint64_t *out)
{
    const struct toml_value *v;
    int r = cfg_get(c, t, key, TOML_INTEGER, required, &v);
    if (r <= 0)
        return r;
    int64_t n = toml_integer(v);
    if (n < 0 || (uint64_t)n < min || (uint64_t)n > max) {
        struct jptr p;
        jptr_key(&p, &t->ptr, key);
        cfg_diag(c, toml_value_pos(v), &p, "\"%s\" in %s must be from %llu to %llu, not %lld", key,
                 t->display, (unsigned long long)min, (unsigned long long)max, (long long)n);
        return -1;
    }
    *out = (uint64_t)n;
    return 1;
}

int cfg_get_bool(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                 bool *out)
{
    const struct toml_value *v;
    int r = cfg_get(c, t, key, TOML_BOOL, required, &v);
    if (r > 0)
        *out = toml_bool(v);
    return r;
}

int cfg_get_str(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                size_t maxlen, const char **out)
{
    const struct toml_value *v;
    int r = cfg_get(c, t, key, TOML_STRING, required, &v);
    if (r <= 0)
        return r;
    size_t len;
    const char *s = toml_string(v, &len);
    struct jptr p;
    jptr_key(&p, &t->ptr, key);
    if (len == 0) {
        cfg_diag(c, toml_value_pos(v), &p, "\"%s\" in %s must not be empty", key, t->display);
        return -1;
    }
    if (strlen(s) != len) {
        cfg_diag(c, toml_value_pos(v), &p, "\"%s\" in %s must not contain NUL characters", key,
                 t->display);
        return -1;
    }
    if (len > maxlen) {
        cfg_diag(c, toml_value_pos(v), &p, "\"%s\" in %s is %zu bytes long; the limit is %zu", key,
                 t->display, len, maxlen);
        return -1;
    }
    *out = s;
    return 1;
}

/* One decimal number of a PCI path, at most max; advances *s. */
static int pci_part(const char **s, unsigned max, uint8_t *out)
{
    const char *p = *s;
    unsigned v = 0;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 4) {
        v = v * 10 + (unsigned)(*p - '0');
        p++;
        digits++;
    }
    if (!digits || (*p >= '0' && *p <= '9') || v > max)
        return -EINVAL;
    *out = (uint8_t)v;
    *s = p;
    return 0;
}

int cfg_parse_pci(const char *s, struct pci_path *out)
{
    struct pci_path pp;
    if (pci_part(&s, 255, &pp.bus) < 0 || *s++ != '.')
        return -EINVAL;
    if (pci_part(&s, 31, &pp.device) < 0 || *s++ != '.')
        return -EINVAL;
    if (pci_part(&s, 7, &pp.function) < 0 || *s)
        return -EINVAL;
    *out = pp;
    return 0;
}

int cfg_get_pci(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                struct pci_path *out)
{
    const char *s;
    int r = cfg_get_str(c, t, key, required, 32, &s);
    if (r <= 0)
        return r;
    if (cfg_parse_pci(s, out) < 0) {
        const struct toml_value *v = toml_table_get(t->v, key);
        struct jptr p;
        jptr_key(&p, &t->ptr, key);
        char q[64];
        cfg_quote(s, strlen(s), q, sizeof(q));
        cfg_diag(c, toml_value_pos(v), &p,
                 "\"%s\" in %s must be a PCI path \"bus.device.function\" with bus 0-255, "
                 "device 0-31 and function 0-7 (like \"0.4.0\"), not %s",
                 key, t->display, q);
        return -1;
    }
    return 1;
}

/* ---- building the spec ---- */

bool cfg_check_name(struct cfg *c, const struct cfg_table *parent, size_t index)
{
    struct toml_pos pos;
    const char *key = toml_table_key(parent->v, index, &pos);
    size_t len = toml_table_key_len(parent->v, index);
    struct jptr p;
    jptr_key(&p, &parent->ptr, key);
    char q[160];
    cfg_quote(key, len, q, sizeof(q));
    if (len == 0) {
        cfg_diag(c, pos, &p, "the empty name \"\" in %s cannot be a component key",
                 parent->display);
        return false;
    }
    if (strlen(key) != len) {
        cfg_diag(c, pos, &p, "name %s in %s must not contain NUL characters", q, parent->display);
        return false;
    }
    if (len > SPEC_MAX_KEY_LEN) {
        cfg_diag(c, pos, &p, "name %s in %s is %zu bytes long; component keys are at most %d", q,
                 parent->display, len, SPEC_MAX_KEY_LEN);
        return false;
    }
    return true;
}

char *cfg_strdup(struct cfg *c, const char *s)
{
    char *d = strdup(s);
    if (!d)
        cfg_nomem(c);
    return d;
}

static const struct cfg_origin *find_origin(const struct cfg *c, const char *key)
{
    for (size_t i = 0; i < c->norigins; i++) {
        if (strcmp(c->origins[i].key, key) == 0)
            return &c->origins[i];
    }
    return NULL;
}

void cfg_add(struct cfg *c, struct spec_component *comp, const struct cfg_table *t,
             const char *what)
{
    if (!comp->key) {
        spec_component_free(comp);
        return;
    }
    const struct cfg_origin *prev = find_origin(c, comp->key);
    if (prev) {
        struct toml_pos ppos = toml_value_pos(prev->table.v);
        char q[160];
        cfg_quote(comp->key, strlen(comp->key), q, sizeof(q));
        struct jptr p = t->ptr;
        if (what)
            jptr_key(&p, &t->ptr, what);
        cfg_diag(c, what ? cfg_key_pos(t, what) : toml_value_pos(t->v), &p,
                 "%s needs component key %s, which %s (line %u) already uses; "
                 "rename one of them",
                 t->display, q, prev->table.display, ppos.line);
        spec_component_free(comp);
        return;
    }
    struct cfg_origin *grown = realloc(c->origins, (c->norigins + 1) * sizeof(*grown));
    if (!grown) {
        cfg_nomem(c);
        spec_component_free(comp);
        return;
    }
    c->origins = grown;
    char *key = strdup(comp->key);
    if (!key) {
        cfg_nomem(c);
        spec_component_free(comp);
        return;
    }
    int r = spec_insert(c->spec, comp);
    if (r < 0) {
        free(key);
        if (r == -E2BIG)
            cfg_diag(c, toml_value_pos(t->v), &t->ptr,
                     "%s is one component too many; a spec holds at most %d", t->display,
                     SPEC_MAX_COMPONENTS);
        else
            cfg_nomem(c);
        spec_component_free(comp);
        return;
    }
    grown[c->norigins].key = key;
    grown[c->norigins].table = *t;
    c->norigins++;
}
