/* SPDX-License-Identifier: MPL-2.0 */
/* JSON codec for the instance spec: board, CPUID, SMBIOS, components, wire form. */
#include "spec/spec_json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int decode_chipset(const json_t *v, const struct jptr *p, struct spec_board *b,
                          struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"type", "value"};
    int r = cella_json_check_fields(v, names, 2, p, errs);
    struct jptr tp, vp;
    jptr_key(&tp, p, "type");
    jptr_key(&vp, p, "value");
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!type || strcmp(type, "i440_fx") != 0)
        return cella_err(errs, -EINVAL, tp.buf, "must be \"i440_fx\" (the only chipset)");
    const json_t *val = json_object_get(v, "value");
    if (!val)
        return cella_err(errs, -EINVAL, vp.buf, "missing required field \"value\"");
    if (cella_json_expect_object(val, &vp, errs) < 0)
        return -EINVAL;
    static const char *const vnames[] = {"enable_pcie"};
    if (cella_json_check_fields(val, vnames, 1, &vp, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_bool(val, "enable_pcie", true, &vp, &b->enable_pcie, errs) < 0)
        r = -EINVAL;
    return r;
}

static int decode_hv(const json_t *v, const struct jptr *p, struct spec_board *b,
                     struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    struct jptr tp, vp;
    jptr_key(&tp, p, "type");
    jptr_key(&vp, p, "value");
    const char *type = json_string_value(json_object_get(v, "type"));
    if (type && strcmp(type, "bhyve") == 0) {
        static const char *const names[] = {"type"};
        b->hv = GUEST_HV_BHYVE;
        return cella_json_check_fields(v, names, 1, p, errs);
    }
    if (!type || strcmp(type, "hyper_v") != 0)
        return cella_err(errs, -EINVAL, tp.buf, "must be \"bhyve\" or \"hyper_v\"");
    static const char *const names[] = {"type", "value"};
    int r = cella_json_check_fields(v, names, 2, p, errs);
    b->hv = GUEST_HV_HYPER_V;
    const json_t *val = json_object_get(v, "value");
    if (!val)
        return cella_err(errs, -EINVAL, vp.buf, "missing required field \"value\"");
    if (cella_json_expect_object(val, &vp, errs) < 0)
        return -EINVAL;
    static const char *const vnames[] = {"features"};
    if (cella_json_check_fields(val, vnames, 1, &vp, errs) < 0)
        r = -EINVAL;
    struct jptr fp;
    jptr_key(&fp, &vp, "features");
    const json_t *feats = json_object_get(val, "features");
    if (!json_is_array(feats))
        return cella_err(errs, -EINVAL, fp.buf, "must be an array of feature names");
    for (size_t i = 0; i < json_array_size(feats); i++) {
        struct jptr ep;
        jptr_index(&ep, &fp, i);
        const char *name = json_string_value(json_array_get(feats, i));
        if (!name || strcmp(name, "reference_tsc") != 0) {
            r = cella_err(errs, -EINVAL, ep.buf, "unknown Hyper-V feature (known: reference_tsc)");
            continue;
        }
        if (b->hyperv_features & HYPERV_FEAT_REFERENCE_TSC)
            r = cella_err(errs, -EINVAL, ep.buf, "feature \"%s\" is listed twice", name);
        b->hyperv_features |= HYPERV_FEAT_REFERENCE_TSC;
    }
    return r;
}

static int decode_cpuid_entry(const json_t *v, const struct jptr *p, struct cpuid_entry *e,
                              struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"eax", "ebx", "ecx", "edx", "leaf", "subleaf"};
    int r = cella_json_check_fields(v, names, 6, p, errs);
    uint64_t regs[5] = {0};
    for (int i = 0; i < 5; i++) {
        if (cella_json_get_uint(v, names[i], UINT32_MAX, true, p, &regs[i], errs) < 0)
            r = -EINVAL;
    }
    e->eax = (uint32_t)regs[0];
    e->ebx = (uint32_t)regs[1];
    e->ecx = (uint32_t)regs[2];
    e->edx = (uint32_t)regs[3];
    e->leaf = (uint32_t)regs[4];
    const json_t *sub = json_object_get(v, "subleaf");
    if (sub && !json_is_null(sub)) {
        uint64_t s = 0;
        if (cella_json_get_uint(v, "subleaf", UINT32_MAX, true, p, &s, errs) < 0)
            r = -EINVAL;
        e->has_subleaf = true;
        e->subleaf = (uint32_t)s;
    }
    return r;
}

static int decode_cpuid(const json_t *v, const struct jptr *p, struct spec_cpuid *c,
                        struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"entries", "vendor"};
    int r = cella_json_check_fields(v, names, 2, p, errs);
    struct jptr vp, ep;
    jptr_key(&vp, p, "vendor");
    jptr_key(&ep, p, "entries");
    const char *vendor = json_string_value(json_object_get(v, "vendor"));
    if (vendor && !strcmp(vendor, "amd"))
        c->vendor = CPUID_VENDOR_AMD;
    else if (vendor && !strcmp(vendor, "intel"))
        c->vendor = CPUID_VENDOR_INTEL;
    else
        r = cella_err(errs, -EINVAL, vp.buf, "must be \"amd\" or \"intel\"");
    const json_t *entries = json_object_get(v, "entries");
    if (!json_is_array(entries))
        return cella_err(errs, -EINVAL, ep.buf, "must be an array of CPUID entries");
    size_t n = json_array_size(entries);
    if (n > SPEC_MAX_CPUID_ENTRIES)
        return cella_err(errs, -EINVAL, ep.buf, "has %zu entries; the limit is %d", n,
                         SPEC_MAX_CPUID_ENTRIES);
    c->entries = n ? calloc(n, sizeof(*c->entries)) : NULL;
    if (n && !c->entries)
        return cella_err(errs, -ENOMEM, ep.buf, "out of memory");
    c->count = n;
    for (size_t i = 0; i < n; i++) {
        struct jptr ip;
        jptr_index(&ip, &ep, i);
        if (decode_cpuid_entry(json_array_get(entries, i), &ip, &c->entries[i], errs) < 0)
            r = -EINVAL;
    }
    return r;
}

static int decode_board(const json_t *v, const struct jptr *p, struct spec_board *b,
                        struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"chipset", "cpuid", "cpus", "guest_hv_interface",
                                        "memory_mb"};
    int r = cella_json_check_fields(v, names, 5, p, errs);
    uint64_t n = 0;
    if (cella_json_get_uint(v, "cpus", UINT8_MAX, true, p, &n, errs) < 0)
        r = -EINVAL;
    b->cpus = (uint8_t)n;
    n = 0;
    if (cella_json_get_uint(v, "memory_mb", INT64_MAX, true, p, &n, errs) < 0)
        r = -EINVAL;
    b->memory_mb = n;
    struct jptr sp;
    jptr_key(&sp, p, "chipset");
    const json_t *chipset = json_object_get(v, "chipset");
    if (!chipset)
        r = cella_err(errs, -EINVAL, sp.buf, "missing required field \"chipset\"");
    else if (decode_chipset(chipset, &sp, b, errs) < 0)
        r = -EINVAL;
    const json_t *hv = json_object_get(v, "guest_hv_interface");
    jptr_key(&sp, p, "guest_hv_interface");
    if (hv && decode_hv(hv, &sp, b, errs) < 0)
        r = -EINVAL;
    const json_t *cpuid = json_object_get(v, "cpuid");
    jptr_key(&sp, p, "cpuid");
    if (cpuid && !json_is_null(cpuid)) {
        b->has_cpuid = true;
        if (decode_cpuid(cpuid, &sp, &b->cpuid, errs) < 0)
            r = -EINVAL;
    }
    return r;
}

static int decode_smbios(const json_t *v, const struct jptr *p, struct spec_smbios *m,
                         struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"manufacturer", "product_name", "serial_number", "version"};
    int r = cella_json_check_fields(v, names, 4, p, errs);
    if (cella_json_get_string(v, "manufacturer", 255, true, p, &m->manufacturer, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(v, "product_name", 255, true, p, &m->product_name, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(v, "serial_number", 255, true, p, &m->serial_number, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_uint(v, "version", INT64_MAX, true, p, &m->version, errs) < 0)
        r = -EINVAL;
    return r;
}

static int decode_components(const json_t *v, const struct jptr *p, unsigned version,
                             struct instance_spec *s, struct cella_errors *errs)
{
    if (cella_json_expect_object(v, p, errs) < 0)
        return -EINVAL;
    if (json_object_size(v) > SPEC_MAX_COMPONENTS)
        return cella_err(errs, -EINVAL, p->buf, "has %zu components; the limit is %d",
                         json_object_size(v), SPEC_MAX_COMPONENTS);
    int r = 0;
    const char *key;
    json_t *body;
    json_object_foreach((json_t *)v, key, body)
    {
        struct jptr cp;
        jptr_key(&cp, p, key);
        size_t klen = strlen(key);
        if (klen == 0 || klen > SPEC_MAX_KEY_LEN) {
            r = cella_err(errs, -EINVAL, cp.buf, "component keys must be 1 to %d bytes long",
                          SPEC_MAX_KEY_LEN);
            continue;
        }
        struct spec_component c;
        if (spec_component_from_json(body, key, &cp, version, &c, errs) < 0) {
            spec_component_free(&c);
            r = -EINVAL;
            continue;
        }
        int ir = spec_insert(s, &c);
        if (ir < 0) {
            spec_component_free(&c);
            r = cella_err(errs, ir, cp.buf, "cannot add component: %s", strerror(-ir));
        }
    }
    return r;
}

int spec_from_json(const json_t *j, const struct jptr *at, unsigned version,
                   struct instance_spec *out, struct cella_errors *errs)
{
    spec_init(out);
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"board", "components", "smbios"};
    int r = cella_json_check_fields(j, names, 3, at, errs);
    struct jptr p;
    jptr_key(&p, at, "board");
    const json_t *board = json_object_get(j, "board");
    if (!board)
        r = cella_err(errs, -EINVAL, p.buf, "missing required field \"board\"");
    else if (decode_board(board, &p, &out->board, errs) < 0)
        r = -EINVAL;
    jptr_key(&p, at, "components");
    const json_t *comps = json_object_get(j, "components");
    if (!comps)
        r = cella_err(errs, -EINVAL, p.buf, "missing required field \"components\"");
    else if (decode_components(comps, &p, version, out, errs) < 0)
        r = -EINVAL;
    jptr_key(&p, at, "smbios");
    const json_t *smbios = json_object_get(j, "smbios");
    if (smbios && !json_is_null(smbios)) {
        out->has_smbios = true;
        if (decode_smbios(smbios, &p, &out->smbios, errs) < 0)
            r = -EINVAL;
    }
    if (r < 0) {
        spec_free(out);
        return -EINVAL;
    }
    return 0;
}

static json_t *cpuid_to_json(const struct spec_cpuid *c)
{
    json_t *entries = json_array();
    for (size_t i = 0; entries && i < c->count; i++) {
        const struct cpuid_entry *e = &c->entries[i];
        json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I}", "leaf", (json_int_t)e->leaf, "eax",
                              (json_int_t)e->eax, "ebx", (json_int_t)e->ebx, "ecx",
                              (json_int_t)e->ecx, "edx", (json_int_t)e->edx);
        if (o)
            json_object_set_new(o, "subleaf",
                                e->has_subleaf ? json_integer(e->subleaf) : json_null());
        json_array_append_new(entries, o);
    }
    return json_pack("{s:o,s:s}", "entries", entries, "vendor",
                     c->vendor == CPUID_VENDOR_AMD ? "amd" : "intel");
}

static json_t *hv_to_json(const struct spec_board *b)
{
    if (b->hv == GUEST_HV_BHYVE)
        return json_pack("{s:s}", "type", "bhyve");
    json_t *feats = json_array();
    if (b->hyperv_features & HYPERV_FEAT_REFERENCE_TSC)
        json_array_append_new(feats, json_string("reference_tsc"));
    return json_pack("{s:s,s:{s:o}}", "type", "hyper_v", "value", "features", feats);
}

static json_t *board_to_json(const struct spec_board *b, enum spec_encoding enc)
{
    json_t *o = json_pack("{s:i,s:I,s:{s:s,s:{s:b}}}", "cpus", b->cpus, "memory_mb",
                          (json_int_t)b->memory_mb, "chipset", "type", "i440_fx", "value",
                          "enable_pcie", b->enable_pcie);
    if (!o)
        return NULL;
    /* Propolis writes guest_hv_interface only when it is not the default. */
    if (enc == SPEC_ENC_FULL || b->hv != GUEST_HV_BHYVE)
        json_object_set_new(o, "guest_hv_interface", hv_to_json(b));
    if (b->has_cpuid)
        json_object_set_new(o, "cpuid", cpuid_to_json(&b->cpuid));
    else if (enc == SPEC_ENC_FULL)
        json_object_set_new(o, "cpuid", json_null());
    return o;
}

json_t *spec_to_json(const struct instance_spec *s, enum spec_encoding enc)
{
    json_t *comps = json_object();
    for (size_t i = 0; comps && i < s->count; i++) {
        json_t *c = spec_component_to_json(&s->components[i], enc);
        if (!c || json_object_set_new(comps, s->components[i].key, c) < 0) {
            json_decref(comps);
            return NULL;
        }
    }
    json_t *o = json_pack("{s:o,s:o}", "board", board_to_json(&s->board, enc), "components", comps);
    if (!o)
        return NULL;
    if (s->has_smbios) {
        const struct spec_smbios *m = &s->smbios;
        json_object_set_new(o, "smbios",
                            json_pack("{s:s,s:s,s:s,s:I}", "manufacturer", m->manufacturer,
                                      "product_name", m->product_name, "serial_number",
                                      m->serial_number, "version", (json_int_t)m->version));
    } else if (enc == SPEC_ENC_FULL) {
        json_object_set_new(o, "smbios", json_null());
    }
    return o;
}

int spec_parse(const char *text, size_t len, struct instance_spec *out, struct cella_errors *errs)
{
    spec_init(out);
    json_t *j;
    int r = cella_json_parse(text, len, &j, errs);
    if (r < 0)
        return r;
    struct jptr root;
    jptr_root(&root);
    r = spec_from_json(j, &root, SPEC_VERSION_CURRENT, out, errs);
    json_decref(j);
    return r;
}

char *spec_dump(const struct instance_spec *s, enum spec_encoding enc)
{
    json_t *j = spec_to_json(s, enc);
    if (!j)
        return NULL;
    char *text = cella_json_dump(j);
    json_decref(j);
    return text;
}

json_t *spec_to_wire(const struct instance_spec *s)
{
    return json_pack("{s:i,s:o}", "spec_version", SPEC_VERSION_CURRENT, "spec",
                     spec_to_json(s, SPEC_ENC_FULL));
}

int spec_from_wire(const json_t *j, struct instance_spec *out, struct cella_errors *errs)
{
    spec_init(out);
    struct jptr root, p;
    jptr_root(&root);
    if (cella_json_expect_object(j, &root, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"spec_version", "spec"};
    if (cella_json_check_fields(j, names, 2, &root, errs) < 0)
        return -EINVAL;
    uint64_t version = 0;
    if (cella_json_get_uint(j, "spec_version", UINT32_MAX, true, &root, &version, errs) < 0)
        return -EINVAL;
    jptr_key(&p, &root, "spec_version");
    if (version < SPEC_VERSION_OLDEST)
        return cella_err(errs, -EPROTO, p.buf, "spec version %llu is not a valid version",
                         (unsigned long long)version);
    if (version > SPEC_VERSION_CURRENT)
        return cella_err(errs, -EPROTO, p.buf,
                         "spec version %llu is newer than this cella understands (up to %d); "
                         "upgrade the target rather than drop fields",
                         (unsigned long long)version, SPEC_VERSION_CURRENT);
    jptr_key(&p, &root, "spec");
    const json_t *spec = json_object_get(j, "spec");
    if (!spec)
        return cella_err(errs, -EINVAL, p.buf, "missing required field \"spec\"");
    return spec_from_json(spec, &p, (unsigned)version, out, errs);
}
