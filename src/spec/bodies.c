/* SPDX-License-Identifier: MPL-2.0 */
/* JSON codec for the Propolis v5 API bodies that carry specs. */
#include "spec/bodies.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/kind_table.h"

/* ---- small helpers ---- */

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

/* The member `name` of obj, with its pointer in *p; records it when missing. */
static const json_t *get_member(const json_t *obj, const char *name, const struct jptr *at,
                                struct jptr *p, struct cella_errors *errs)
{
    jptr_key(p, at, name);
    const json_t *v = json_object_get(obj, name);
    if (!v)
        cella_err(errs, -EINVAL, p->buf, "missing required field \"%s\"", name);
    return v;
}

/* A required string member that must be a canonical UUID. */
static int get_uuid(const json_t *obj, const char *name, const struct jptr *at, char **out,
                    struct cella_errors *errs)
{
    int r = cella_json_get_string(obj, name, SPEC_MAX_STRING, true, at, out, errs);
    if (r < 0)
        return r;
    if (cella_uuid_valid(*out))
        return 0;
    struct jptr p;
    jptr_key(&p, at, name);
    return cella_err(errs, -EINVAL, p.buf, "\"%.64s\" is not a UUID (8-4-4-4-12 hex digits)", *out);
}

/* A required string member that must be one of `names` (n of them); *out its index. */
static int get_enum(const json_t *obj, const char *name, const char *const *names, size_t n,
                    const struct jptr *at, size_t *out, struct cella_errors *errs)
{
    char *s = NULL;
    if (cella_json_get_string(obj, name, 64, true, at, &s, errs) < 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            free(s);
            *out = i;
            return 0;
        }
    }
    char list[256] = "";
    for (size_t i = 0, len = 0; i < n && len < sizeof(list); i++)
        len +=
            (size_t)snprintf(list + len, sizeof(list) - len, "%s\"%s\"", i ? ", " : "", names[i]);
    struct jptr p;
    jptr_key(&p, at, name);
    int r = cella_err(errs, -EINVAL, p.buf, "\"%.64s\" is not one of %s", s, list);
    free(s);
    return r;
}

/* Component and replacement keys: 1 to SPEC_MAX_KEY_LEN bytes. */
static int check_key(const char *key, const struct jptr *p, struct cella_errors *errs)
{
    size_t len = strlen(key);
    if (len > 0 && len <= SPEC_MAX_KEY_LEN)
        return 0;
    return cella_err(errs, -EINVAL, p->buf, "component keys must be 1 to %d bytes long",
                     SPEC_MAX_KEY_LEN);
}

/* "a.b.c.d:port" or "[v6]:port", as Rust's SocketAddr parses it. */
static bool socket_addr_valid(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1] || strlen(colon + 1) > 5)
        return false;
    unsigned long port = 0;
    for (const char *c = colon + 1; *c; c++) {
        if (*c < '0' || *c > '9')
            return false;
        port = port * 10 + (unsigned long)(*c - '0');
    }
    if (port > 65535)
        return false;
    char host[INET6_ADDRSTRLEN + 2];
    size_t hlen = (size_t)(colon - s);
    if (hlen >= sizeof(host))
        return false;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    unsigned char buf[16];
    if (host[0] != '[')
        return inet_pton(AF_INET, host, buf) == 1;
    if (hlen < 2 || host[hlen - 1] != ']')
        return false;
    host[hlen - 1] = '\0';
    return inet_pton(AF_INET6, host + 1, buf) == 1;
}

/* ---- InstanceProperties ---- */

void instance_properties_free(struct instance_properties *p)
{
    if (!p)
        return;
    free(p->id);
    free(p->name);
    free(p->description);
    free(p->metadata.project_id);
    free(p->metadata.silo_id);
    free(p->metadata.sled_id);
    free(p->metadata.sled_model);
    free(p->metadata.sled_serial);
    memset(p, 0, sizeof(*p));
}

/* strdup that keeps NULL; 0 or -ENOMEM (so results can be OR-ed together). */
static int dup_opt(char **dst, const char *src)
{
    *dst = src ? strdup(src) : NULL;
    return (src && !*dst) ? -ENOMEM : 0;
}

int instance_properties_copy(struct instance_properties *dst, const struct instance_properties *src)
{
    const struct instance_metadata *m = &src->metadata;
    memset(dst, 0, sizeof(*dst));
    dst->metadata.sled_revision = m->sled_revision;
    int r = dup_opt(&dst->id, src->id) | dup_opt(&dst->name, src->name) |
            dup_opt(&dst->description, src->description) |
            dup_opt(&dst->metadata.project_id, m->project_id) |
            dup_opt(&dst->metadata.silo_id, m->silo_id) |
            dup_opt(&dst->metadata.sled_id, m->sled_id) |
            dup_opt(&dst->metadata.sled_model, m->sled_model) |
            dup_opt(&dst->metadata.sled_serial, m->sled_serial);
    if (r == 0)
        return 0;
    instance_properties_free(dst);
    return -ENOMEM;
}

bool instance_properties_equal(const struct instance_properties *a,
                               const struct instance_properties *b)
{
    const struct instance_metadata *x = &a->metadata, *y = &b->metadata;
    return str_eq(a->id, b->id) && str_eq(a->name, b->name) &&
           str_eq(a->description, b->description) && str_eq(x->project_id, y->project_id) &&
           str_eq(x->silo_id, y->silo_id) && str_eq(x->sled_id, y->sled_id) &&
           str_eq(x->sled_model, y->sled_model) && str_eq(x->sled_serial, y->sled_serial) &&
           x->sled_revision == y->sled_revision;
}

static int metadata_from_json(const json_t *j, const struct jptr *at, struct instance_metadata *m,
                              struct cella_errors *errs)
{
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"project_id", "silo_id",       "sled_id",
                                        "sled_model", "sled_revision", "sled_serial"};
    int r = cella_json_check_fields(j, names, 6, at, errs);
    if (get_uuid(j, "project_id", at, &m->project_id, errs) < 0)
        r = -EINVAL;
    if (get_uuid(j, "silo_id", at, &m->silo_id, errs) < 0)
        r = -EINVAL;
    if (get_uuid(j, "sled_id", at, &m->sled_id, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(j, "sled_model", SPEC_MAX_STRING, true, at, &m->sled_model, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(j, "sled_serial", SPEC_MAX_STRING, true, at, &m->sled_serial, errs) <
        0)
        r = -EINVAL;
    uint64_t rev = 0;
    if (cella_json_get_uint(j, "sled_revision", UINT32_MAX, true, at, &rev, errs) < 0)
        r = -EINVAL;
    m->sled_revision = (uint32_t)rev;
    return r < 0 ? -EINVAL : 0;
}

int instance_properties_from_json(const json_t *j, const struct jptr *at,
                                  struct instance_properties *out, struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"description", "id", "metadata", "name"};
    int r = cella_json_check_fields(j, names, 4, at, errs);
    if (get_uuid(j, "id", at, &out->id, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(j, "name", SPEC_MAX_STRING, true, at, &out->name, errs) < 0)
        r = -EINVAL;
    if (cella_json_get_string(j, "description", SPEC_MAX_STRING, true, at, &out->description,
                              errs) < 0)
        r = -EINVAL;
    struct jptr p;
    const json_t *meta = get_member(j, "metadata", at, &p, errs);
    if (!meta || metadata_from_json(meta, &p, &out->metadata, errs) < 0)
        r = -EINVAL;
    if (r < 0) {
        instance_properties_free(out);
        return -EINVAL;
    }
    return 0;
}

json_t *instance_properties_to_json(const struct instance_properties *p)
{
    const struct instance_metadata *m = &p->metadata;
    json_t *meta =
        json_pack("{s:s,s:s,s:s,s:s,s:I,s:s}", "project_id", str_or_empty(m->project_id), "silo_id",
                  str_or_empty(m->silo_id), "sled_id", str_or_empty(m->sled_id), "sled_model",
                  str_or_empty(m->sled_model), "sled_revision", (json_int_t)m->sled_revision,
                  "sled_serial", str_or_empty(m->sled_serial));
    if (!meta)
        return NULL;
    return json_pack("{s:s,s:s,s:s,s:o}", "id", str_or_empty(p->id), "name", str_or_empty(p->name),
                     "description", str_or_empty(p->description), "metadata", meta);
}

/* ---- InstanceState ---- */

static const char *const state_names[INSTANCE_STATE__COUNT] = {
    [INSTANCE_CREATING] = "Creating",   [INSTANCE_STARTING] = "Starting",
    [INSTANCE_RUNNING] = "Running",     [INSTANCE_STOPPING] = "Stopping",
    [INSTANCE_STOPPED] = "Stopped",     [INSTANCE_REBOOTING] = "Rebooting",
    [INSTANCE_MIGRATING] = "Migrating", [INSTANCE_REPAIRING] = "Repairing",
    [INSTANCE_FAILED] = "Failed",       [INSTANCE_DESTROYED] = "Destroyed",
};

const char *instance_state_name(enum instance_state s)
{
    return (unsigned)s < INSTANCE_STATE__COUNT ? state_names[s] : "unknown";
}

int instance_state_from_name(const char *name, enum instance_state *out)
{
    for (unsigned s = 0; s < INSTANCE_STATE__COUNT; s++) {
        if (strcmp(state_names[s], name) == 0) {
            *out = (enum instance_state)s;
            return 0;
        }
    }
    return -ENOENT;
}

/* ---- ReplacementComponent ---- */

int replacement_kind_from_tag(const char *tag, enum spec_kind *out)
{
    for (unsigned k = 0; k < SK__COUNT; k++) {
        const char *name = spec_kinds[k].replace_name;
        if (name && strcmp(name, tag) == 0 && spec_kinds[k].since <= SPEC_VERSION_CURRENT) {
            *out = (enum spec_kind)k;
            return 0;
        }
    }
    return -ENOENT;
}

/* Records that `tag` names no replaceable kind, listing the ones that exist. */
static int bad_replacement_tag(const char *tag, const struct jptr *p, struct cella_errors *errs)
{
    char list[512] = "";
    size_t len = 0;
    for (unsigned k = 0; k < SK__COUNT && len < sizeof(list); k++) {
        if (spec_kinds[k].replace_name)
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", len ? ", " : "",
                                    spec_kinds[k].replace_name);
    }
    return cella_err(errs, -EINVAL, p->buf,
                     "\"%.64s\" is not a replaceable component (replaceable: %s)", tag, list);
}

int replacement_from_json(const json_t *j, const char *key, const struct jptr *at,
                          struct spec_replacement *out, struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"component", "spec"};
    int r = cella_json_check_fields(j, names, 2, at, errs);
    char *tag = NULL;
    if (cella_json_get_string(j, "component", 64, true, at, &tag, errs) < 0)
        return -EINVAL;
    struct jptr p;
    jptr_key(&p, at, "component");
    enum spec_kind kind;
    int kr = replacement_kind_from_tag(tag, &kind);
    if (kr < 0)
        bad_replacement_tag(tag, &p, errs);
    free(tag);
    const json_t *body = get_member(j, "spec", at, &p, errs);
    if (kr < 0 || !body)
        return -EINVAL;
    int f = spec_component_fields_from_json(body, kind, key, &p, SPEC_VERSION_CURRENT, &out->comp,
                                            errs);
    if (r < 0 || f < 0) {
        spec_component_free(&out->comp);
        return -EINVAL;
    }
    return 0;
}

json_t *replacement_to_json(const struct spec_replacement *r, enum spec_encoding enc)
{
    if ((unsigned)r->comp.kind >= SK__COUNT || !spec_kinds[r->comp.kind].replace_name)
        return NULL;
    json_t *body = spec_component_fields_to_json(&r->comp, enc);
    if (!body)
        return NULL;
    return json_pack("{s:s,s:o}", "component", spec_kinds[r->comp.kind].replace_name, "spec", body);
}

/* ---- InstanceEnsureRequest ---- */

void ensure_request_init(struct ensure_request *r)
{
    memset(r, 0, sizeof(*r));
    spec_init(&r->spec);
}

void ensure_request_free(struct ensure_request *r)
{
    if (!r)
        return;
    instance_properties_free(&r->properties);
    spec_free(&r->spec);
    free(r->migration_id);
    free(r->src_addr);
    for (size_t i = 0; i < r->nreplace; i++)
        spec_component_free(&r->replace[i].comp);
    free(r->replace);
    ensure_request_init(r);
}

static bool replacements_equal(const struct ensure_request *a, const struct ensure_request *b)
{
    if (a->nreplace != b->nreplace)
        return false;
    for (size_t i = 0; i < a->nreplace; i++) {
        if (!spec_component_equal(&a->replace[i].comp, &b->replace[i].comp))
            return false;
    }
    return true;
}

bool ensure_request_equal(const struct ensure_request *a, const struct ensure_request *b)
{
    if (a->method != b->method || !instance_properties_equal(&a->properties, &b->properties))
        return false;
    if (a->method == ENSURE_METHOD_SPEC)
        return spec_equal(&a->spec, &b->spec);
    return str_eq(a->migration_id, b->migration_id) && str_eq(a->src_addr, b->src_addr) &&
           replacements_equal(a, b);
}

static int decode_spec_init(const json_t *v, const struct jptr *at, struct ensure_request *out,
                            struct cella_errors *errs)
{
    if (cella_json_expect_object(v, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"spec"};
    int r = cella_json_check_fields(v, names, 1, at, errs);
    struct jptr p;
    const json_t *spec = get_member(v, "spec", at, &p, errs);
    if (!spec || spec_from_json(spec, &p, SPEC_VERSION_CURRENT, &out->spec, errs) < 0)
        r = -EINVAL;
    return r;
}

static int cmp_replacement(const void *a, const void *b)
{
    const struct spec_replacement *x = a, *y = b;
    return strcmp(x->comp.key, y->comp.key);
}

static int decode_replacements(const json_t *v, const struct jptr *at, struct ensure_request *out,
                               struct cella_errors *errs)
{
    if (cella_json_expect_object(v, at, errs) < 0)
        return -EINVAL;
    size_t n = json_object_size(v);
    if (n > SPEC_MAX_COMPONENTS)
        return cella_err(errs, -EINVAL, at->buf, "has %zu replacements; the limit is %d", n,
                         SPEC_MAX_COMPONENTS);
    out->replace = n ? calloc(n, sizeof(*out->replace)) : NULL;
    if (n && !out->replace)
        return cella_err(errs, -ENOMEM, at->buf, "out of memory");
    int r = 0;
    const char *key;
    json_t *body;
    json_object_foreach((json_t *)v, key, body)
    {
        struct jptr p;
        jptr_key(&p, at, key);
        if (check_key(key, &p, errs) < 0 ||
            replacement_from_json(body, key, &p, &out->replace[out->nreplace], errs) < 0) {
            r = -EINVAL;
            continue;
        }
        out->nreplace++;
    }
    if (out->nreplace > 1)
        qsort(out->replace, out->nreplace, sizeof(*out->replace), cmp_replacement);
    return r;
}

static int decode_migration_init(const json_t *v, const struct jptr *at, struct ensure_request *out,
                                 struct cella_errors *errs)
{
    if (cella_json_expect_object(v, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"migration_id", "replace_components", "src_addr"};
    int r = cella_json_check_fields(v, names, 3, at, errs);
    if (get_uuid(v, "migration_id", at, &out->migration_id, errs) < 0)
        r = -EINVAL;
    struct jptr p;
    jptr_key(&p, at, "src_addr");
    if (cella_json_get_string(v, "src_addr", BODY_MAX_ADDR, true, at, &out->src_addr, errs) < 0)
        r = -EINVAL;
    else if (!socket_addr_valid(out->src_addr))
        r = cella_err(errs, -EINVAL, p.buf,
                      "\"%.64s\" is not a socket address (\"192.0.2.1:12400\" or "
                      "\"[2001:db8::1]:12400\")",
                      out->src_addr);
    const json_t *rc = get_member(v, "replace_components", at, &p, errs);
    if (!rc || decode_replacements(rc, &p, out, errs) < 0)
        r = -EINVAL;
    return r;
}

static const char *const method_names[] = {
    [ENSURE_METHOD_SPEC] = "Spec",
    [ENSURE_METHOD_MIGRATION_TARGET] = "MigrationTarget",
};

static int decode_init(const json_t *v, const struct jptr *at, struct ensure_request *out,
                       struct cella_errors *errs)
{
    if (cella_json_expect_object(v, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"method", "value"};
    int r = cella_json_check_fields(v, names, 2, at, errs);
    size_t method = 0;
    struct jptr p;
    if (get_enum(v, "method", method_names, 2, at, &method, errs) < 0)
        return -EINVAL;
    out->method = (enum ensure_method)method;
    const json_t *val = get_member(v, "value", at, &p, errs);
    if (!val)
        return -EINVAL;
    int d = out->method == ENSURE_METHOD_SPEC ? decode_spec_init(val, &p, out, errs)
                                              : decode_migration_init(val, &p, out, errs);
    return (r < 0 || d < 0) ? -EINVAL : 0;
}

int ensure_request_from_json(const json_t *j, const struct jptr *at, struct ensure_request *out,
                             struct cella_errors *errs)
{
    ensure_request_init(out);
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"init", "properties"};
    int r = cella_json_check_fields(j, names, 2, at, errs);
    struct jptr p;
    const json_t *props = get_member(j, "properties", at, &p, errs);
    if (!props || instance_properties_from_json(props, &p, &out->properties, errs) < 0)
        r = -EINVAL;
    const json_t *init = get_member(j, "init", at, &p, errs);
    if (!init || decode_init(init, &p, out, errs) < 0)
        r = -EINVAL;
    if (r < 0) {
        ensure_request_free(out);
        return -EINVAL;
    }
    return 0;
}

static json_t *replacements_to_json(const struct ensure_request *r, enum spec_encoding enc)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < r->nreplace; i++) {
        json_t *c = replacement_to_json(&r->replace[i], enc);
        if (!c || json_object_set_new(o, r->replace[i].comp.key, c) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *init_to_json(const struct ensure_request *r, enum spec_encoding enc)
{
    if (r->method == ENSURE_METHOD_SPEC)
        return json_pack("{s:s,s:{s:o}}", "method", "Spec", "value", "spec",
                         spec_to_json(&r->spec, enc));
    return json_pack("{s:s,s:{s:s,s:s,s:o}}", "method", "MigrationTarget", "value", "migration_id",
                     str_or_empty(r->migration_id), "src_addr", str_or_empty(r->src_addr),
                     "replace_components", replacements_to_json(r, enc));
}

json_t *ensure_request_to_json(const struct ensure_request *r, enum spec_encoding enc)
{
    return json_pack("{s:o,s:o}", "properties", instance_properties_to_json(&r->properties), "init",
                     init_to_json(r, enc));
}

int ensure_request_parse(const char *text, size_t len, struct ensure_request *out,
                         struct cella_errors *errs)
{
    ensure_request_init(out);
    json_t *j;
    int r = cella_json_parse(text, len, &j, errs);
    if (r < 0)
        return r;
    struct jptr root;
    jptr_root(&root);
    r = ensure_request_from_json(j, &root, out, errs);
    json_decref(j);
    return r;
}

/* Dumps j stably and drops it; NULL when j is NULL. */
static char *dump_and_drop(json_t *j)
{
    if (!j)
        return NULL;
    char *text = cella_json_dump(j);
    json_decref(j);
    return text;
}

char *ensure_request_dump(const struct ensure_request *r, enum spec_encoding enc)
{
    return dump_and_drop(ensure_request_to_json(r, enc));
}

/* ---- InstanceSpecGetResponse ---- */

void spec_get_response_init(struct spec_get_response *r)
{
    memset(r, 0, sizeof(*r));
    spec_init(&r->spec);
}

void spec_get_response_free(struct spec_get_response *r)
{
    if (!r)
        return;
    instance_properties_free(&r->properties);
    spec_free(&r->spec);
    spec_get_response_init(r);
}

bool spec_get_response_equal(const struct spec_get_response *a, const struct spec_get_response *b)
{
    if (a->state != b->state || a->status != b->status ||
        !instance_properties_equal(&a->properties, &b->properties))
        return false;
    return a->status != SPEC_STATUS_PRESENT || spec_equal(&a->spec, &b->spec);
}

static const char *const status_names[] = {
    [SPEC_STATUS_WAITING_FOR_MIGRATION_SOURCE] = "WaitingForMigrationSource",
    [SPEC_STATUS_PRESENT] = "Present",
};

static int decode_status(const json_t *v, const struct jptr *at, struct spec_get_response *out,
                         struct cella_errors *errs)
{
    if (cella_json_expect_object(v, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"type", "value"};
    size_t type = 0;
    if (get_enum(v, "type", status_names, 2, at, &type, errs) < 0) {
        cella_json_check_fields(v, names, 2, at, errs);
        return -EINVAL;
    }
    out->status = (enum spec_status)type;
    /* The unit variant has no "value"; Present must have one. */
    size_t nnames = out->status == SPEC_STATUS_PRESENT ? 2 : 1;
    int r = cella_json_check_fields(v, names, nnames, at, errs);
    if (out->status != SPEC_STATUS_PRESENT)
        return r;
    struct jptr p;
    const json_t *spec = get_member(v, "value", at, &p, errs);
    if (!spec || spec_from_json(spec, &p, SPEC_VERSION_CURRENT, &out->spec, errs) < 0)
        r = -EINVAL;
    return r;
}

int spec_get_response_from_json(const json_t *j, const struct jptr *at,
                                struct spec_get_response *out, struct cella_errors *errs)
{
    spec_get_response_init(out);
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"properties", "spec", "state"};
    int r = cella_json_check_fields(j, names, 3, at, errs);
    struct jptr p;
    const json_t *props = get_member(j, "properties", at, &p, errs);
    if (!props || instance_properties_from_json(props, &p, &out->properties, errs) < 0)
        r = -EINVAL;
    size_t state = 0;
    if (get_enum(j, "state", state_names, INSTANCE_STATE__COUNT, at, &state, errs) < 0)
        r = -EINVAL;
    out->state = (enum instance_state)state;
    const json_t *status = get_member(j, "spec", at, &p, errs);
    if (!status || decode_status(status, &p, out, errs) < 0)
        r = -EINVAL;
    if (r < 0) {
        spec_get_response_free(out);
        return -EINVAL;
    }
    return 0;
}

static json_t *status_to_json(const struct spec_get_response *r, enum spec_encoding enc)
{
    if (r->status == SPEC_STATUS_PRESENT)
        return json_pack("{s:s,s:o}", "type", "Present", "value", spec_to_json(&r->spec, enc));
    return json_pack("{s:s}", "type", "WaitingForMigrationSource");
}

json_t *spec_get_response_to_json(const struct spec_get_response *r, enum spec_encoding enc)
{
    return json_pack("{s:o,s:s,s:o}", "properties", instance_properties_to_json(&r->properties),
                     "state", instance_state_name(r->state), "spec", status_to_json(r, enc));
}

int spec_get_response_parse(const char *text, size_t len, struct spec_get_response *out,
                            struct cella_errors *errs)
{
    spec_get_response_init(out);
    json_t *j;
    int r = cella_json_parse(text, len, &j, errs);
    if (r < 0)
        return r;
    struct jptr root;
    jptr_root(&root);
    r = spec_get_response_from_json(j, &root, out, errs);
    json_decref(j);
    return r;
}

char *spec_get_response_dump(const struct spec_get_response *r, enum spec_encoding enc)
{
    return dump_and_drop(spec_get_response_to_json(r, enc));
}

/* ---- InstanceEnsureResponse ---- */

json_t *ensure_response_to_json(const char *migration_id)
{
    if (!migration_id)
        return json_pack("{s:n}", "migrate");
    return json_pack("{s:{s:s}}", "migrate", "migration_id", migration_id);
}

char *ensure_response_dump(const char *migration_id)
{
    return dump_and_drop(ensure_response_to_json(migration_id));
}

int ensure_response_from_json(const json_t *j, const struct jptr *at, char **migration_id,
                              struct cella_errors *errs)
{
    *migration_id = NULL;
    if (cella_json_expect_object(j, at, errs) < 0)
        return -EINVAL;
    static const char *const names[] = {"migrate"};
    static const char *const mnames[] = {"migration_id"};
    int r = cella_json_check_fields(j, names, 1, at, errs);
    struct jptr p;
    jptr_key(&p, at, "migrate");
    const json_t *m = json_object_get(j, "migrate");
    /* Absent and null both mean "no migration" (an Option in Propolis). */
    if (m && !json_is_null(m)) {
        if (cella_json_expect_object(m, &p, errs) < 0)
            r = -EINVAL;
        else if (cella_json_check_fields(m, mnames, 1, &p, errs) < 0)
            r = -EINVAL;
        if (json_is_object(m) && get_uuid(m, "migration_id", &p, migration_id, errs) < 0)
            r = -EINVAL;
    }
    if (r < 0) {
        free(*migration_id);
        *migration_id = NULL;
        return -EINVAL;
    }
    return 0;
}
