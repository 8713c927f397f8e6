/* SPDX-License-Identifier: MPL-2.0 */
/* JSON codec for components, driven by the kind tables. */
#include "spec/spec_json.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/kind_table.h"

static int decode_pci(const json_t *v, const struct jptr *p, struct pci_path *out,
                      struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"bus", "device", "function"};
    int r = cella_json_check_fields(v, names, 3, p, errs);
    uint64_t b = 0, d = 0, f = 0;
    if (cella_json_get_uint(v, "bus", UINT8_MAX, true, p, &b, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_uint(v, "device", UINT8_MAX, true, p, &d, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_uint(v, "function", UINT8_MAX, true, p, &f, errs) < 0)
        r = -EINVAL;
    *out = (struct pci_path){(uint8_t)b, (uint8_t)d, (uint8_t)f};
    return r;
}

static int decode_serial20(const json_t *v, const struct jptr *p, uint8_t *out,
                           struct cella_errors *errs)
{
    if (!json_is_array(v) || json_array_size(v) != SPEC_NVME_SERIAL_LEN)
        return cella_err(errs, -EINVAL, p->buf, "must be an array of exactly %d bytes",
                         SPEC_NVME_SERIAL_LEN);
    for (size_t i = 0; i < SPEC_NVME_SERIAL_LEN; i++) {
        const json_t *b = json_array_get(v, i);
        if (!json_is_integer(b) || json_integer_value(b) < 0 || json_integer_value(b) > 255) {
            struct jptr e;
            jptr_index(&e, p, i);
            return cella_err(errs, -EINVAL, e.buf, "must be an integer from 0 to 255");
        }
        out[i] = (uint8_t)json_integer_value(b);
    }
    return 0;
}

static int decode_com(const json_t *v, const struct jptr *p, uint8_t *out,
                      struct cella_errors *errs)
{
    const char *s = json_string_value(v);
    if (s && strlen(s) == 4 && !strncmp(s, "com", 3) && s[3] >= '1' && s[3] <= '4') {
        *out = (uint8_t)(s[3] - '0');
        return 0;
    }
    return cella_err(errs, -EINVAL, p->buf,
                     "must be one of \"com1\", \"com2\", \"com3\", \"com4\"");
}

static int decode_boot_order(const json_t *v, const struct jptr *p, struct boot_order *out,
                             struct cella_errors *errs)
{
    if (!json_is_array(v))
        return cella_err(errs, -EINVAL, p->buf, "must be an array of {\"id\": key} entries");
    size_t n = json_array_size(v);
    if (n > SPEC_MAX_BOOT_ENTRIES)
        return cella_err(errs, -EINVAL, p->buf, "has %zu entries; the limit is %d", n,
                         SPEC_MAX_BOOT_ENTRIES);
    out->ids = n ? calloc(n, sizeof(char *)) : NULL;
    if (n && !out->ids)
        return cella_err(errs, -ENOMEM, p->buf, "out of memory");
    int r = 0;
    static const char *const names[] = {"id"};
    for (size_t i = 0; i < n; i++) {
        struct jptr e;
        jptr_index(&e, p, i);
        const json_t *ent = json_array_get(v, i);
        if (cella_json_expect_object(ent, &e, errs) < 0) {
            r = -EINVAL;
            continue;
        }
        if (cella_json_check_fields(ent, names, 1, &e, errs) < 0)
            r = -EINVAL;
        char *id = NULL;
        if (cella_json_get_string(ent, "id", SPEC_MAX_KEY_LEN, true, &e, &id, errs) < 0)
            r = -EINVAL;
        out->ids[out->count++] = id;
    }
    return r;
}

static int parse_mac(const char *s, uint8_t out[6])
{
    unsigned b[6];
    char tail;
    if (strlen(s) != 17 || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4],
                                  &b[5], &tail) != 6)
        return -EINVAL;
    for (int i = 0; i < 6; i++) {
        if (!isxdigit((unsigned char)s[i * 3]) || !isxdigit((unsigned char)s[i * 3 + 1]))
            return -EINVAL;
        out[i] = (uint8_t)b[i];
    }
    return 0;
}

static int decode_string_like(const json_t *obj, const struct field_desc *f, const struct jptr *at,
                              char **out, struct cella_errors *errs)
{
    size_t max = f->type == FT_BASE64 ? SPEC_MAX_BLOB_BASE64
                 : f->type == FT_KEY  ? SPEC_MAX_KEY_LEN
                                      : SPEC_MAX_STRING;
    int r = cella_json_get_string(obj, f->name, max, true, at, out, errs);
    if (r < 0)
        return r;
    struct jptr p;
    jptr_key(&p, at, f->name);
    if (f->type == FT_UUID && !cella_uuid_valid(*out))
        return cella_err(errs, -EINVAL, p.buf, "\"%s\" is not a UUID (8-4-4-4-12 hex digits)",
                         *out);
    if (f->type == FT_KEY && !**out)
        return cella_err(errs, -EINVAL, p.buf, "must name a component (empty key)");
    return 0;
}

/* Sets a field that is absent from the body to its default. */
static void set_default(struct spec_component *c, const struct field_desc *f, unsigned version)
{
    uint64_t v = version < f->since ? f->legacy : f->dflt;
    void *x = field_ptr(c, f);
    switch (f->type) {
    case FT_U8:
        *(uint8_t *)x = (uint8_t)v;
        break;
    case FT_U32:
        *(uint32_t *)x = (uint32_t)v;
        break;
    case FT_U64:
        *(uint64_t *)x = v;
        break;
    case FT_BOOL:
        *(bool *)x = v != 0;
        break;
    default:
        /* Optional pointers and opt_* are already zero: "not present". */
        break;
    }
}

static int decode_field(const json_t *obj, const struct field_desc *f, const struct jptr *at,
                        struct spec_component *c, struct cella_errors *errs)
{
    struct jptr p;
    jptr_key(&p, at, f->name);
    const json_t *v = json_object_get(obj, f->name);
    void *x = field_ptr(c, f);
    uint64_t max = f->max ? f->max : field_type_max(f);
    uint64_t n = 0;
    int r;
    if (!v)
        return cella_err(errs, -EINVAL, p.buf, "missing required field \"%s\"", f->name);
    switch (f->type) {
    case FT_U8:
    case FT_U32:
    case FT_U64:
        r = cella_json_get_uint(obj, f->name, max, true, at, &n, errs);
        if (r == 0 && n < f->min)
            return cella_err(errs, -EINVAL, p.buf, "must be at least %llu",
                             (unsigned long long)f->min);
        if (f->type == FT_U8)
            *(uint8_t *)x = (uint8_t)n;
        else if (f->type == FT_U32)
            *(uint32_t *)x = (uint32_t)n;
        else
            *(uint64_t *)x = n;
        return r;
    case FT_BOOL:
        return cella_json_get_bool(obj, f->name, true, at, x, errs);
    case FT_STR:
    case FT_BASE64:
    case FT_KEY:
    case FT_UUID:
        return decode_string_like(obj, f, at, x, errs);
    case FT_PCI:
        return decode_pci(v, &p, x, errs);
    case FT_SERIAL20:
        return decode_serial20(v, &p, x, errs);
    case FT_COM:
        return decode_com(v, &p, x, errs);
    case FT_BOOT_ORDER:
        return decode_boot_order(v, &p, x, errs);
    case FT_OPT_U64: {
        struct opt_u64 *o = x;
        if (json_is_null(v))
            return 0;
        r = cella_json_get_uint(obj, f->name, max, true, at, &o->value, errs);
        if (r == 0 && o->value < f->min)
            return cella_err(errs, -EINVAL, p.buf, "must be at least %llu or null",
                             (unsigned long long)f->min);
        o->present = r == 0;
        return r;
    }
    case FT_OPT_MAC: {
        struct opt_mac *o = x;
        if (json_is_null(v))
            return 0;
        if (!json_is_string(v) || parse_mac(json_string_value(v), o->bytes) < 0)
            return cella_err(errs, -EINVAL, p.buf,
                             "must be a MAC address like \"02:00:00:00:00:01\" or null");
        o->present = true;
        return 0;
    }
    }
    return cella_err(errs, -EINVAL, p.buf, "field of unknown type");
}

int spec_component_fields_from_json(const json_t *j, enum spec_kind kind, const char *key,
                                    const struct jptr *at, unsigned version,
                                    struct spec_component *out, struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    out->key = strdup(key);
    if (!out->key)
        return cella_err(errs, -ENOMEM, at->buf, "out of memory");
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    const struct kind_desc *kd = &spec_kinds[kind];
    const char *names[16];
    size_t nnames = 0;
    for (size_t i = 0; i < kd->nfields && nnames < 16; i++) {
        if (kd->fields[i].since <= version)
            names[nnames++] = kd->fields[i].name;
    }
    int r = cella_json_check_fields(j, names, nnames, at, errs);
    for (size_t i = 0; i < kd->nfields; i++) {
        const struct field_desc *f = &kd->fields[i];
        bool present = json_object_get(j, f->name) != NULL;
        if (f->since > version || (!present && (f->flags & F_OPTIONAL))) {
            set_default(out, f, version);
            continue;
        }
        if (decode_field(j, f, at, out, errs) < 0)
            r = -EINVAL;
    }
    return r < 0 ? -EINVAL : 0;
}

int spec_component_from_json(const json_t *j, const char *key, const struct jptr *at,
                             unsigned version, struct spec_component *out,
                             struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"type", "component"};
    int r = cella_json_check_fields(j, names, 2, at, errs);
    char *type = NULL;
    if (cella_json_get_string(j, "type", 64, true, at, &type, errs) < 0)
        return -EINVAL;
    enum spec_kind kind;
    struct jptr p;
    jptr_key(&p, at, "type");
    if (spec_kind_from_name(type, &kind) < 0 || spec_kinds[kind].since > version) {
        r = cella_err(errs, -EINVAL, p.buf, "unknown component type \"%s\"", type);
        free(type);
        return r;
    }
    free(type);
    const json_t *body = json_object_get(j, "component");
    jptr_key(&p, at, "component");
    if (!body) {
        out->kind = kind;
        return cella_err(errs, -EINVAL, p.buf, "missing required field \"component\"");
    }
    int f = spec_component_fields_from_json(body, kind, key, &p, version, out, errs);
    return (r < 0 || f < 0) ? -EINVAL : 0;
}

static json_t *pci_to_json(const struct pci_path *p)
{
    return json_pack("{s:i,s:i,s:i}", "bus", p->bus, "device", p->device, "function", p->function);
}

static json_t *field_to_json(const struct spec_component *c, const struct field_desc *f)
{
    const void *x = field_cptr(c, f);
    switch (f->type) {
    case FT_U8:
        return json_integer(*(const uint8_t *)x);
    case FT_U32:
        return json_integer(*(const uint32_t *)x);
    case FT_U64:
        return json_integer((json_int_t) * (const uint64_t *)x);
    case FT_BOOL:
        return json_boolean(*(const bool *)x);
    case FT_STR:
    case FT_BASE64:
    case FT_KEY:
    case FT_UUID: {
        const char *s = *(char *const *)x;
        return json_string(s ? s : "");
    }
    case FT_PCI:
        return pci_to_json(x);
    case FT_SERIAL20: {
        json_t *a = json_array();
        for (size_t i = 0; a && i < SPEC_NVME_SERIAL_LEN; i++)
            json_array_append_new(a, json_integer(((const uint8_t *)x)[i]));
        return a;
    }
    case FT_COM: {
        char name[8];
        snprintf(name, sizeof(name), "com%u", *(const uint8_t *)x);
        return json_string(name);
    }
    case FT_BOOT_ORDER: {
        const struct boot_order *b = x;
        json_t *a = json_array();
        for (size_t i = 0; a && i < b->count; i++)
            json_array_append_new(a, json_pack("{s:s}", "id", b->ids[i] ? b->ids[i] : ""));
        return a;
    }
    case FT_OPT_U64: {
        const struct opt_u64 *o = x;
        return o->present ? json_integer((json_int_t)o->value) : json_null();
    }
    case FT_OPT_MAC: {
        const struct opt_mac *o = x;
        char mac[18];
        if (!o->present)
            return json_null();
        snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", o->bytes[0], o->bytes[1],
                 o->bytes[2], o->bytes[3], o->bytes[4], o->bytes[5]);
        return json_string(mac);
    }
    }
    return NULL;
}

/* Whether the API encoding leaves this field out (it holds its default). */
static bool api_omits(const struct spec_component *c, const struct field_desc *f)
{
    const void *x = field_cptr(c, f);
    if (f->type == FT_OPT_U64)
        return !((const struct opt_u64 *)x)->present;
    if (f->type == FT_OPT_MAC)
        return !((const struct opt_mac *)x)->present;
    if (!(f->flags & F_EXT))
        return false;
    switch (f->type) {
    case FT_U8:
        return *(const uint8_t *)x == f->dflt;
    case FT_U32:
        return *(const uint32_t *)x == f->dflt;
    case FT_U64:
        return *(const uint64_t *)x == f->dflt;
    case FT_BOOL:
        return *(const bool *)x == (f->dflt != 0);
    default:
        return false;
    }
}

json_t *spec_component_fields_to_json(const struct spec_component *c, enum spec_encoding enc)
{
    const struct kind_desc *kd = &spec_kinds[c->kind];
    json_t *o = json_object();
    for (size_t i = 0; o && i < kd->nfields; i++) {
        const struct field_desc *f = &kd->fields[i];
        if (enc == SPEC_ENC_API && api_omits(c, f))
            continue;
        json_t *v = field_to_json(c, f);
        if (!v || json_object_set_new(o, f->name, v) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

json_t *spec_component_to_json(const struct spec_component *c, enum spec_encoding enc)
{
    json_t *body = spec_component_fields_to_json(c, enc);
    if (!body)
        return NULL;
    return json_pack("{s:s,s:o}", "type", spec_kind_name(c->kind), "component", body);
}
