/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The API bodies that carry specs (bodies.h): round trips, byte-stable
 * encoding and every decoding error at its exact JSON pointer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/bodies.h"

/* ---- helpers ---- */

/* JSON from text where single quotes stand for double quotes. */
static json_t *sq_json(const char *text)
{
    char *t = strdup(text);
    assert_non_null(t);
    for (char *c = t; *c; c++) {
        if (*c == '\'')
            *c = '"';
    }
    json_error_t e;
    json_t *j = json_loads(t, JSON_DECODE_ANY, &e);
    if (!j)
        fail_msg("bad test JSON (%s) in: %s", e.text, t);
    free(t);
    return j;
}

/* The value at a slash-separated path of object keys. */
static json_t *at(json_t *doc, const char *path)
{
    char *p = strdup(path), *save = NULL;
    json_t *cur = doc;
    for (char *tok = strtok_r(p, "/", &save); tok; tok = strtok_r(NULL, "/", &save))
        cur = json_object_get(cur, tok);
    free(p);
    assert_non_null(cur);
    return cur;
}

static const struct cella_error *find_error(const struct cella_errors *errs, const char *ptr)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (strcmp(errs->items[i].pointer, ptr) == 0)
            return &errs->items[i];
    }
    return NULL;
}

/* Asserts a problem at `ptr` whose message holds `word` (when not NULL). */
static void assert_error(const struct cella_errors *errs, const char *ptr, const char *word)
{
    const struct cella_error *e = find_error(errs, ptr);
    if (!e) {
        cella_errors_print(errs, stderr);
        fail_msg("no error at \"%s\"", ptr);
    }
    if (word && !strstr(e->message, word))
        fail_msg("error at %s says \"%s\", expected \"%s\"", ptr, e->message, word);
}

#define UUID_ID   "11111111-2222-3333-4444-555555555555"
#define UUID_PROJ "aaaaaaaa-0000-0000-0000-000000000001"
#define UUID_SILO "aaaaaaaa-0000-0000-0000-000000000002"
#define UUID_SLED "aaaaaaaa-0000-0000-0000-000000000003"
#define UUID_MIG  "0d5e7a1c-3f3e-4b0b-8d8e-2a9c1b7e6f00"

#define PROPS                                                                                      \
    "{'id': '" UUID_ID "', 'name': 'vm0', 'description': 'a test VM',"                             \
    " 'metadata': {'project_id': '" UUID_PROJ "', 'silo_id': '" UUID_SILO "',"                     \
    "  'sled_id': '" UUID_SLED "', 'sled_model': 'gimlet', 'sled_serial': 'BRM42',"                \
    "  'sled_revision': 4294967295}}"

#define SPEC                                                                                       \
    "{'board': {'cpus': 2, 'memory_mb': 512,"                                                      \
    "  'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': false}}},"                          \
    " 'components': {"                                                                             \
    "  'disk0': {'type': 'nvme_disk', 'component': {'backend_id': 'root',"                         \
    "    'pci_path': {'bus': 0, 'device': 4, 'function': 0},"                                      \
    "    'serial_number': [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}},"                 \
    "  'root': {'type': 'file_storage_backend', 'component': {'path': '/r.raw',"                   \
    "    'readonly': false, 'block_size': 512}}}}"

#define REPLACEMENTS                                                                               \
    "{'root': {'component': 'FileStorageBackend', 'spec': {'path': '/new.raw',"                    \
    "   'readonly': false, 'block_size': 512}},"                                                   \
    " 'net-be': {'component': 'VirtioNetworkBackend', 'spec': {'vnic_name': 'tap9'}},"             \
    " 'fail': {'component': 'MigrationFailureInjector', 'spec': {'fail_exports': 0,"               \
    "   'fail_imports': 2}}}"

static json_t *spec_request(void)
{
    return sq_json("{'properties': " PROPS ", 'init': {'method': 'Spec', 'value': {'spec': " SPEC
                   "}}}");
}

static json_t *migration_request(void)
{
    return sq_json("{'properties': " PROPS ", 'init': {'method': 'MigrationTarget', 'value': {"
                   " 'migration_id': '" UUID_MIG "', 'src_addr': '192.0.2.7:12400',"
                   " 'replace_components': " REPLACEMENTS "}}}");
}

static json_t *get_response(void)
{
    return sq_json("{'properties': " PROPS ", 'state': 'Running',"
                   " 'spec': {'type': 'Present', 'value': " SPEC "}}");
}

static int decode_request(const json_t *j, struct ensure_request *r, struct cella_errors *errs)
{
    struct jptr root;
    jptr_root(&root);
    return ensure_request_from_json(j, &root, r, errs);
}

static int decode_response(const json_t *j, struct spec_get_response *r, struct cella_errors *errs)
{
    struct jptr root;
    jptr_root(&root);
    return spec_get_response_from_json(j, &root, r, errs);
}

/* Asserts decoding the request `j` fails with a problem at ptr; drops j. */
static void expect_request_error(json_t *j, const char *ptr, const char *word)
{
    struct ensure_request r;
    struct cella_errors errs = {0};
    assert_int_equal(decode_request(j, &r, &errs), -EINVAL);
    assert_error(&errs, ptr, word);
    /* A failed decode leaves nothing behind. */
    assert_null(r.properties.id);
    assert_null(r.replace);
    assert_int_equal(r.spec.count, 0);
    cella_errors_clear(&errs);
    json_decref(j);
}

static void expect_response_error(json_t *j, const char *ptr, const char *word)
{
    struct spec_get_response r;
    struct cella_errors errs = {0};
    assert_int_equal(decode_response(j, &r, &errs), -EINVAL);
    assert_error(&errs, ptr, word);
    assert_null(r.properties.id);
    assert_int_equal(r.spec.count, 0);
    cella_errors_clear(&errs);
    json_decref(j);
}

/* Text -> request -> text -> request: equal, and the text is stable. */
static void assert_request_round_trip(const struct ensure_request *r, enum spec_encoding enc)
{
    char *text = ensure_request_dump(r, enc);
    assert_non_null(text);
    struct ensure_request back;
    struct cella_errors errs = {0};
    if (ensure_request_parse(text, strlen(text), &back, &errs) != 0) {
        cella_errors_print(&errs, stderr);
        fail_msg("re-decoding failed: %s", text);
    }
    assert_true(ensure_request_equal(r, &back));
    char *again = ensure_request_dump(&back, enc);
    assert_string_equal(text, again);
    free(again);
    free(text);
    ensure_request_free(&back);
}

static void assert_response_round_trip(const struct spec_get_response *r, enum spec_encoding enc)
{
    char *text = spec_get_response_dump(r, enc);
    assert_non_null(text);
    struct spec_get_response back;
    struct cella_errors errs = {0};
    if (spec_get_response_parse(text, strlen(text), &back, &errs) != 0) {
        cella_errors_print(&errs, stderr);
        fail_msg("re-decoding failed: %s", text);
    }
    assert_true(spec_get_response_equal(r, &back));
    char *again = spec_get_response_dump(&back, enc);
    assert_string_equal(text, again);
    free(again);
    free(text);
    spec_get_response_free(&back);
}

/* ---- InstanceProperties ---- */

static void decode_props(const char *text, struct instance_properties *p, int want,
                         struct cella_errors *errs)
{
    json_t *j = sq_json(text);
    struct jptr root;
    jptr_root(&root);
    assert_int_equal(instance_properties_from_json(j, &root, p, errs), want);
    json_decref(j);
}

static void test_properties_round_trip(void **state)
{
    (void)state;
    struct instance_properties p, copy, back;
    decode_props(PROPS, &p, 0, NULL);
    assert_string_equal(p.id, UUID_ID);
    assert_string_equal(p.name, "vm0");
    assert_string_equal(p.metadata.sled_serial, "BRM42");
    assert_int_equal(p.metadata.sled_revision, UINT32_MAX);
    assert_int_equal(instance_properties_copy(&copy, &p), 0);
    assert_true(instance_properties_equal(&p, &copy));
    json_t *j = instance_properties_to_json(&copy);
    json_t *orig = sq_json(PROPS);
    assert_true(json_equal(j, orig));
    struct jptr root;
    jptr_root(&root);
    assert_int_equal(instance_properties_from_json(j, &root, &back, NULL), 0);
    assert_true(instance_properties_equal(&p, &back));
    free(back.name);
    back.name = strdup("vm1");
    assert_false(instance_properties_equal(&p, &back));
    json_decref(orig);
    json_decref(j);
    instance_properties_free(&back);
    instance_properties_free(&copy);
    instance_properties_free(&p);
    instance_properties_free(NULL);
}

static void test_properties_errors(void **state)
{
    (void)state;
    json_t *j = sq_json(PROPS);
    json_object_set_new(j, "bogus", json_true());
    json_object_set_new(j, "id", json_string("not-a-uuid"));
    json_object_set_new(j, "name", json_integer(1));
    json_object_del(j, "description");
    json_object_set_new(at(j, "metadata"), "extra", json_null());
    json_object_set_new(at(j, "metadata"), "sled_revision", json_integer(4294967296));
    json_object_set_new(at(j, "metadata"), "silo_id", json_string("AAAAAAAA-0000-0000-0000"));
    struct instance_properties p;
    struct cella_errors errs = {0};
    struct jptr root;
    jptr_root(&root);
    assert_int_equal(instance_properties_from_json(j, &root, &p, &errs), -EINVAL);
    assert_int_equal(errs.count, 7);
    assert_error(&errs, "/bogus", "unknown field");
    assert_error(&errs, "/id", "not a UUID");
    assert_error(&errs, "/name", "string");
    assert_error(&errs, "/description", "missing");
    assert_error(&errs, "/metadata/extra", "unknown field");
    assert_error(&errs, "/metadata/sled_revision", "4294967295");
    assert_error(&errs, "/metadata/silo_id", "not a UUID");
    assert_null(p.name);
    cella_errors_clear(&errs);
    json_decref(j);

    decode_props("{'id': '" UUID_ID "', 'name': '', 'description': ''}", &p, -EINVAL, &errs);
    assert_error(&errs, "/metadata", "missing");
    cella_errors_clear(&errs);
    decode_props("[]", &p, -EINVAL, &errs);
    assert_error(&errs, "", "object");
    cella_errors_clear(&errs);
}

/* ---- InstanceState ---- */

static void test_instance_states(void **state)
{
    (void)state;
    static const char *const names[] = {"Creating", "Starting",  "Running",   "Stopping",
                                        "Stopped",  "Rebooting", "Migrating", "Repairing",
                                        "Failed",   "Destroyed"};
    assert_int_equal(INSTANCE_STATE__COUNT, 10);
    for (unsigned s = 0; s < INSTANCE_STATE__COUNT; s++) {
        enum instance_state back;
        assert_string_equal(instance_state_name((enum instance_state)s), names[s]);
        assert_int_equal(instance_state_from_name(names[s], &back), 0);
        assert_int_equal(back, s);
    }
    enum instance_state x;
    assert_int_equal(instance_state_from_name("running", &x), -ENOENT);
    assert_int_equal(instance_state_from_name("", &x), -ENOENT);
    assert_string_equal(instance_state_name(INSTANCE_STATE__COUNT), "unknown");
}

/* ---- ReplacementComponent ---- */

struct replacement_case {
    const char *tag;
    enum spec_kind kind;
    const char *spec;
};

static const struct replacement_case replacement_cases[] = {
    {"MigrationFailureInjector", SK_MIGRATION_FAILURE_INJECTOR,
     "{'fail_exports': 3, 'fail_imports': 0}"},
    {"CrucibleStorageBackend", SK_CRUCIBLE_STORAGE_BACKEND,
     "{'readonly': false, 'request_json': '{}'}"},
    {"VirtioNetworkBackend", SK_VIRTIO_NETWORK_BACKEND, "{'vnic_name': 'tap3'}"},
    {"FileStorageBackend", SK_FILE_STORAGE_BACKEND,
     "{'block_size': 4096, 'path': '/x.raw', 'readonly': true, 'workers': 2}"},
    {"BlobStorageBackend", SK_BLOB_STORAGE_BACKEND, "{'base64': '', 'readonly': true}"},
    {"NbdStorageBackend", SK_NBD_STORAGE_BACKEND, "{'readonly': false, 'uri': 'nbd://h/x'}"},
};
#define NREPLACEMENT_CASES (sizeof(replacement_cases) / sizeof(replacement_cases[0]))

static json_t *replacement_json(const struct replacement_case *c)
{
    char text[512];
    snprintf(text, sizeof(text), "{'component': '%s', 'spec': %s}", c->tag, c->spec);
    return sq_json(text);
}

static void test_replacement_kinds(void **state)
{
    (void)state;
    size_t replaceable = 0;
    for (unsigned k = 0; k < SK__COUNT; k++) {
        enum spec_kind kind;
        bool listed = false;
        for (size_t i = 0; i < NREPLACEMENT_CASES; i++) {
            if (replacement_cases[i].kind == k) {
                listed = true;
                assert_int_equal(replacement_kind_from_tag(replacement_cases[i].tag, &kind), 0);
                assert_int_equal(kind, k);
            }
        }
        replaceable += listed;
    }
    assert_int_equal(replaceable, NREPLACEMENT_CASES);
    enum spec_kind kind;
    assert_int_equal(replacement_kind_from_tag("VirtioDisk", &kind), -ENOENT);
    assert_int_equal(replacement_kind_from_tag("file_storage_backend", &kind), -ENOENT);
}

static void test_replacement_round_trip(void **state)
{
    (void)state;
    struct jptr root;
    jptr_root(&root);
    for (size_t i = 0; i < NREPLACEMENT_CASES; i++) {
        json_t *j = replacement_json(&replacement_cases[i]);
        struct spec_replacement r;
        struct cella_errors errs = {0};
        if (replacement_from_json(j, "k1", &root, &r, &errs) != 0) {
            cella_errors_print(&errs, stderr);
            fail_msg("replacement %s did not decode", replacement_cases[i].tag);
        }
        assert_string_equal(r.comp.key, "k1");
        assert_int_equal(r.comp.kind, replacement_cases[i].kind);
        json_t *api = replacement_to_json(&r, SPEC_ENC_API);
        assert_true(json_equal(api, j));
        json_t *full = replacement_to_json(&r, SPEC_ENC_FULL);
        struct spec_replacement back;
        assert_int_equal(replacement_from_json(full, "k1", &root, &back, NULL), 0);
        assert_true(spec_component_equal(&r.comp, &back.comp));
        spec_component_free(&back.comp);
        spec_component_free(&r.comp);
        json_decref(full);
        json_decref(api);
        json_decref(j);
    }
}

static void test_replacement_not_replaceable(void **state)
{
    (void)state;
    struct spec_replacement r = {0};
    r.comp.kind = SK_VIRTIO_DISK;
    assert_null(replacement_to_json(&r, SPEC_ENC_API));
    r.comp.kind = SK__COUNT;
    assert_null(replacement_to_json(&r, SPEC_ENC_API));
}

static void test_replacement_errors(void **state)
{
    (void)state;
    struct jptr root;
    jptr_root(&root);
    struct spec_replacement r;
    struct cella_errors errs = {0};
    json_t *j = sq_json("{'component': 'VirtioDisk', 'spec': {}}");
    assert_int_equal(replacement_from_json(j, "k", &root, &r, &errs), -EINVAL);
    assert_error(&errs, "/component", "NbdStorageBackend");
    assert_null(r.comp.key);
    cella_errors_clear(&errs);
    json_decref(j);

    j = sq_json("{'component': 'VirtioNetworkBackend', 'spec': {'vnic_name': 1, 'x': 2},"
                " 'extra': 3}");
    assert_int_equal(replacement_from_json(j, "k", &root, &r, &errs), -EINVAL);
    assert_int_equal(errs.count, 3);
    assert_error(&errs, "/extra", "unknown field");
    assert_error(&errs, "/spec/x", "unknown field");
    assert_error(&errs, "/spec/vnic_name", "string");
    assert_null(r.comp.key);
    cella_errors_clear(&errs);
    json_decref(j);

    j = sq_json("{'component': 'VirtioNetworkBackend'}");
    assert_int_equal(replacement_from_json(j, "k", &root, &r, &errs), -EINVAL);
    assert_error(&errs, "/spec", "missing");
    cella_errors_clear(&errs);
    json_decref(j);

    j = sq_json("{'spec': {}}");
    assert_int_equal(replacement_from_json(j, "k", &root, &r, &errs), -EINVAL);
    assert_error(&errs, "/component", "missing");
    cella_errors_clear(&errs);
    json_decref(j);
}

/* ---- InstanceEnsureRequest ---- */

static void test_ensure_spec_round_trip(void **state)
{
    (void)state;
    json_t *j = spec_request();
    struct ensure_request r;
    assert_int_equal(decode_request(j, &r, NULL), 0);
    assert_int_equal(r.method, ENSURE_METHOD_SPEC);
    assert_int_equal(r.spec.count, 2);
    assert_string_equal(r.properties.name, "vm0");
    assert_null(r.migration_id);
    assert_int_equal(r.nreplace, 0);
    /* The API encoding gives back exactly what the client sent. */
    json_t *api = ensure_request_to_json(&r, SPEC_ENC_API);
    assert_true(json_equal(api, j));
    assert_request_round_trip(&r, SPEC_ENC_API);
    assert_request_round_trip(&r, SPEC_ENC_FULL);
    json_decref(api);
    ensure_request_free(&r);
    ensure_request_free(&r);
    ensure_request_free(NULL);
    json_decref(j);
}

static void test_ensure_migration_round_trip(void **state)
{
    (void)state;
    json_t *j = migration_request();
    struct ensure_request r;
    assert_int_equal(decode_request(j, &r, NULL), 0);
    assert_int_equal(r.method, ENSURE_METHOD_MIGRATION_TARGET);
    assert_string_equal(r.migration_id, UUID_MIG);
    assert_string_equal(r.src_addr, "192.0.2.7:12400");
    assert_int_equal(r.spec.count, 0);
    assert_int_equal(r.nreplace, 3);
    /* Sorted by key whatever order the object had. */
    assert_string_equal(r.replace[0].comp.key, "fail");
    assert_string_equal(r.replace[1].comp.key, "net-be");
    assert_string_equal(r.replace[2].comp.key, "root");
    assert_int_equal(r.replace[2].comp.kind, SK_FILE_STORAGE_BACKEND);
    assert_string_equal(r.replace[2].comp.u.file_storage_backend.path, "/new.raw");
    json_t *api = ensure_request_to_json(&r, SPEC_ENC_API);
    assert_true(json_equal(api, j));
    assert_request_round_trip(&r, SPEC_ENC_API);
    assert_request_round_trip(&r, SPEC_ENC_FULL);
    json_decref(api);
    ensure_request_free(&r);
    json_decref(j);
}

static void test_ensure_migration_no_replacements(void **state)
{
    (void)state;
    json_t *j = migration_request();
    json_object_set_new(at(j, "init/value"), "replace_components", json_object());
    json_object_set_new(at(j, "init/value"), "src_addr", json_string("[2001:db8::1]:12400"));
    struct ensure_request r;
    assert_int_equal(decode_request(j, &r, NULL), 0);
    assert_int_equal(r.nreplace, 0);
    assert_null(r.replace);
    char *text = ensure_request_dump(&r, SPEC_ENC_API);
    assert_non_null(strstr(text, "\"replace_components\":{}"));
    free(text);
    assert_request_round_trip(&r, SPEC_ENC_API);
    ensure_request_free(&r);
    json_decref(j);
}

static void test_ensure_equal(void **state)
{
    (void)state;
    json_t *a = spec_request(), *b = migration_request();
    struct ensure_request x, y, z;
    assert_int_equal(decode_request(a, &x, NULL), 0);
    assert_int_equal(decode_request(b, &y, NULL), 0);
    assert_int_equal(decode_request(b, &z, NULL), 0);
    assert_false(ensure_request_equal(&x, &y));
    assert_true(ensure_request_equal(&y, &z));
    z.replace[0].comp.u.migration_failure_injector.fail_imports = 9;
    assert_false(ensure_request_equal(&y, &z));
    z.replace[0].comp.u.migration_failure_injector.fail_imports = 2;
    free(z.src_addr);
    z.src_addr = strdup("192.0.2.8:12400");
    assert_false(ensure_request_equal(&y, &z));
    ensure_request_free(&x);
    ensure_request_free(&y);
    ensure_request_free(&z);
    json_decref(a);
    json_decref(b);
}

static void test_ensure_stable_text(void **state)
{
    (void)state;
    json_t *j = migration_request();
    struct ensure_request r;
    assert_int_equal(decode_request(j, &r, NULL), 0);
    char *a = ensure_request_dump(&r, SPEC_ENC_API);
    char *b = ensure_request_dump(&r, SPEC_ENC_API);
    assert_string_equal(a, b);
    assert_non_null(strstr(a, "{\"init\":{\"method\":\"MigrationTarget\",\"value\":{"
                              "\"migration_id\":\"" UUID_MIG "\",\"replace_components\":{"
                              "\"fail\":{\"component\":\"MigrationFailureInjector\","
                              "\"spec\":{\"fail_exports\":0,\"fail_imports\":2}},"));
    free(a);
    free(b);
    ensure_request_free(&r);
    json_decref(j);
}

static void test_ensure_top_level_errors(void **state)
{
    (void)state;
    json_t *j = spec_request();
    json_object_set_new(j, "bogus", json_true());
    expect_request_error(j, "/bogus", "unknown field");
    j = spec_request();
    json_object_del(j, "init");
    expect_request_error(j, "/init", "missing");
    j = spec_request();
    json_object_del(j, "properties");
    expect_request_error(j, "/properties", "missing");
    j = spec_request();
    json_object_set_new(at(j, "properties/metadata"), "sled_id", json_string("x"));
    expect_request_error(j, "/properties/metadata/sled_id", "not a UUID");
    expect_request_error(json_string("Spec"), "", "object");
}

static void test_ensure_init_errors(void **state)
{
    (void)state;
    json_t *j = spec_request();
    json_object_set_new(at(j, "init"), "method", json_string("Migrate"));
    expect_request_error(j, "/init/method", "\"Spec\", \"MigrationTarget\"");
    j = spec_request();
    json_object_del(at(j, "init"), "method");
    expect_request_error(j, "/init/method", "missing");
    j = spec_request();
    json_object_del(at(j, "init"), "value");
    expect_request_error(j, "/init/value", "missing");
    j = spec_request();
    json_object_set_new(at(j, "init"), "extra", json_true());
    expect_request_error(j, "/init/extra", "unknown field");
    j = spec_request();
    json_object_set_new(at(j, "init/value"), "bogus", json_true());
    expect_request_error(j, "/init/value/bogus", "unknown field");
    j = spec_request();
    json_object_del(at(j, "init/value"), "spec");
    expect_request_error(j, "/init/value/spec", "missing");
    /* A Spec body with MigrationTarget's fields is refused, not mixed. */
    j = spec_request();
    json_object_set_new(at(j, "init/value"), "migration_id", json_string(UUID_MIG));
    expect_request_error(j, "/init/value/migration_id", "unknown field");
}

static void test_ensure_nested_spec_errors(void **state)
{
    (void)state;
    json_t *j = spec_request();
    json_object_set_new(at(j, "init/value/spec/components/disk0/component"), "bogus", json_true());
    expect_request_error(j, "/init/value/spec/components/disk0/component/bogus", "unknown field");
    j = spec_request();
    json_array_remove(at(j, "init/value/spec/components/disk0/component/serial_number"), 0);
    expect_request_error(j, "/init/value/spec/components/disk0/component/serial_number",
                         "exactly 20");
    j = spec_request();
    json_object_set_new(at(j, "init/value/spec/board"), "cpus", json_integer(256));
    expect_request_error(j, "/init/value/spec/board/cpus", "0 to 255");
}

static void test_ensure_migration_errors(void **state)
{
    (void)state;
    json_t *j = migration_request();
    json_object_set_new(at(j, "init/value"), "migration_id", json_string("12345"));
    expect_request_error(j, "/init/value/migration_id", "not a UUID");
    j = migration_request();
    json_object_del(at(j, "init/value"), "replace_components");
    expect_request_error(j, "/init/value/replace_components", "missing");
    j = migration_request();
    json_object_set_new(at(j, "init/value"), "replace_components", json_array());
    expect_request_error(j, "/init/value/replace_components", "object");
    j = migration_request();
    json_object_set_new(at(j, "init/value"), "spec", json_object());
    expect_request_error(j, "/init/value/spec", "unknown field");
    j = migration_request();
    json_object_set_new(at(j, "init/value/replace_components/root"), "component",
                        json_string("NvmeDisk"));
    expect_request_error(j, "/init/value/replace_components/root/component", "replaceable");
    j = migration_request();
    json_object_set_new(at(j, "init/value/replace_components/root/spec"), "bogus", json_true());
    expect_request_error(j, "/init/value/replace_components/root/spec/bogus", "unknown field");
    j = migration_request();
    json_object_set(at(j, "init/value/replace_components"), "",
                    json_object_get(at(j, "init/value/replace_components"), "root"));
    expect_request_error(j, "/init/value/replace_components/", "1 to 128");
}

static void test_ensure_src_addr(void **state)
{
    (void)state;
    static const char *const good[] = {"192.0.2.7:12400", "[::1]:0", "[2001:db8::1]:65535",
                                       "0.0.0.0:1"};
    static const char *const bad[] = {
        "localhost:12400", "192.0.2.7", "192.0.2.7:",         "192.0.2.7:65536",
        "::1:80",          "[::1]80",   "192.0.2.7:-1",       "192.0.2.7:1x",
        "[192.0.2.7]:80",  "",          "http://192.0.2.7:80"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        json_t *j = migration_request();
        json_object_set_new(at(j, "init/value"), "src_addr", json_string(good[i]));
        struct ensure_request r;
        if (decode_request(j, &r, NULL) != 0)
            fail_msg("src_addr \"%s\" refused", good[i]);
        ensure_request_free(&r);
        json_decref(j);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *j = migration_request();
        json_object_set_new(at(j, "init/value"), "src_addr", json_string(bad[i]));
        expect_request_error(j, "/init/value/src_addr", "socket address");
    }
    char long_addr[BODY_MAX_ADDR + 2];
    memset(long_addr, '1', sizeof(long_addr) - 1);
    long_addr[sizeof(long_addr) - 1] = '\0';
    json_t *j = migration_request();
    json_object_set_new(at(j, "init/value"), "src_addr", json_string(long_addr));
    expect_request_error(j, "/init/value/src_addr", "limit");
}

static void test_ensure_replacement_cap(void **state)
{
    (void)state;
    json_t *j = migration_request();
    json_t *rc = at(j, "init/value/replace_components");
    json_t *one = json_object_get(rc, "net-be");
    char key[32];
    for (size_t i = json_object_size(rc); i <= SPEC_MAX_COMPONENTS; i++) {
        snprintf(key, sizeof(key), "be%03zu", i);
        json_object_set(rc, key, one);
    }
    assert_int_equal(json_object_size(rc), SPEC_MAX_COMPONENTS + 1);
    expect_request_error(j, "/init/value/replace_components", "limit");

    /* Exactly the limit is fine. */
    j = migration_request();
    rc = at(j, "init/value/replace_components");
    one = json_object_get(rc, "net-be");
    for (size_t i = json_object_size(rc); i < SPEC_MAX_COMPONENTS; i++) {
        snprintf(key, sizeof(key), "be%03zu", i);
        json_object_set(rc, key, one);
    }
    struct ensure_request r;
    assert_int_equal(decode_request(j, &r, NULL), 0);
    assert_int_equal(r.nreplace, SPEC_MAX_COMPONENTS);
    ensure_request_free(&r);
    json_decref(j);
}

static void test_ensure_multiple_errors(void **state)
{
    (void)state;
    json_t *j = migration_request();
    json_object_set_new(at(j, "properties"), "id", json_string("nope"));
    json_object_set_new(at(j, "init/value"), "src_addr", json_string("nope"));
    json_object_set_new(at(j, "init/value/replace_components/net-be/spec"), "vnic_name",
                        json_false());
    json_object_set_new(at(j, "init/value/replace_components/fail"), "component",
                        json_string("Nope"));
    struct ensure_request r;
    struct cella_errors errs = {0};
    assert_int_equal(decode_request(j, &r, &errs), -EINVAL);
    assert_true(cella_errors_total(&errs) >= 3);
    assert_error(&errs, "/properties/id", "UUID");
    assert_error(&errs, "/init/value/src_addr", "socket address");
    assert_error(&errs, "/init/value/replace_components/net-be/spec/vnic_name", "string");
    assert_error(&errs, "/init/value/replace_components/fail/component", "replaceable");
    cella_errors_clear(&errs);
    json_decref(j);
}

static void test_ensure_parse_text(void **state)
{
    (void)state;
    json_t *j = spec_request();
    char *text = cella_json_dump(j);
    struct ensure_request r;
    struct cella_errors errs = {0};
    assert_int_equal(ensure_request_parse(text, strlen(text), &r, &errs), 0);
    assert_int_equal(r.method, ENSURE_METHOD_SPEC);
    ensure_request_free(&r);

    /* Duplicate keys, malformed text and oversize text are refused. */
    static const char dup[] = "{\"properties\": {}, \"properties\": {}}";
    assert_int_equal(ensure_request_parse(dup, strlen(dup), &r, &errs), -EINVAL);
    assert_non_null(strstr(errs.items[0].message, "duplicate"));
    cella_errors_clear(&errs);
    assert_int_equal(ensure_request_parse(text, strlen(text) - 1, &r, &errs), -EINVAL);
    assert_non_null(strstr(errs.items[0].message, "malformed"));
    cella_errors_clear(&errs);
    /* The size is checked before any byte is read. */
    assert_int_equal(ensure_request_parse(text, SPEC_MAX_JSON_TEXT + 1ul, &r, &errs), -E2BIG);
    assert_int_equal(r.spec.count, 0);
    cella_errors_clear(&errs);
    free(text);
    json_decref(j);
}

/* ---- InstanceSpecGetResponse ---- */

static void test_spec_get_present_round_trip(void **state)
{
    (void)state;
    json_t *j = get_response();
    struct spec_get_response r;
    assert_int_equal(decode_response(j, &r, NULL), 0);
    assert_int_equal(r.state, INSTANCE_RUNNING);
    assert_int_equal(r.status, SPEC_STATUS_PRESENT);
    assert_int_equal(r.spec.count, 2);
    json_t *api = spec_get_response_to_json(&r, SPEC_ENC_API);
    assert_true(json_equal(api, j));
    assert_response_round_trip(&r, SPEC_ENC_API);
    assert_response_round_trip(&r, SPEC_ENC_FULL);
    char *full = spec_get_response_dump(&r, SPEC_ENC_FULL);
    assert_non_null(strstr(full, "\"string_pad\":32"));
    free(full);
    json_decref(api);
    spec_get_response_free(&r);
    spec_get_response_free(NULL);
    json_decref(j);
}

static void test_spec_get_waiting_round_trip(void **state)
{
    (void)state;
    json_t *j = get_response();
    json_object_set_new(j, "spec", sq_json("{'type': 'WaitingForMigrationSource'}"));
    json_object_set_new(j, "state", json_string("Migrating"));
    struct spec_get_response r;
    assert_int_equal(decode_response(j, &r, NULL), 0);
    assert_int_equal(r.status, SPEC_STATUS_WAITING_FOR_MIGRATION_SOURCE);
    assert_int_equal(r.state, INSTANCE_MIGRATING);
    assert_int_equal(r.spec.count, 0);
    char *text = spec_get_response_dump(&r, SPEC_ENC_API);
    assert_non_null(
        strstr(text, "\"spec\":{\"type\":\"WaitingForMigrationSource\"},\"state\":\"Migrating\"}"));
    free(text);
    assert_response_round_trip(&r, SPEC_ENC_API);
    spec_get_response_free(&r);
    json_decref(j);
}

static void test_spec_get_every_state(void **state)
{
    (void)state;
    json_t *j = get_response();
    struct spec_get_response r;
    assert_int_equal(decode_response(j, &r, NULL), 0);
    for (unsigned s = 0; s < INSTANCE_STATE__COUNT; s++) {
        r.state = (enum instance_state)s;
        assert_response_round_trip(&r, SPEC_ENC_API);
    }
    spec_get_response_free(&r);
    json_decref(j);
}

static void test_spec_get_errors(void **state)
{
    (void)state;
    json_t *j = get_response();
    json_object_set_new(j, "state", json_string("Paused"));
    expect_response_error(j, "/state", "\"Destroyed\"");
    j = get_response();
    json_object_set_new(at(j, "spec"), "type", json_string("Absent"));
    expect_response_error(j, "/spec/type", "\"Present\"");
    j = get_response();
    json_object_del(at(j, "spec"), "value");
    expect_response_error(j, "/spec/value", "missing");
    j = get_response();
    json_object_set_new(at(j, "spec"), "type", json_string("WaitingForMigrationSource"));
    expect_response_error(j, "/spec/value", "unknown field");
    j = get_response();
    json_object_set_new(at(j, "spec/value/board"), "bogus", json_true());
    expect_response_error(j, "/spec/value/board/bogus", "unknown field");
    j = get_response();
    json_object_set_new(j, "extra", json_true());
    expect_response_error(j, "/extra", "unknown field");
    j = get_response();
    json_object_del(j, "spec");
    expect_response_error(j, "/spec", "missing");

    /* Several at once. */
    j = get_response();
    json_object_set_new(j, "state", json_integer(3));
    json_object_del(at(j, "properties"), "name");
    json_object_set_new(at(j, "spec"), "junk", json_true());
    struct spec_get_response r;
    struct cella_errors errs = {0};
    assert_int_equal(decode_response(j, &r, &errs), -EINVAL);
    assert_int_equal(errs.count, 3);
    assert_error(&errs, "/state", "string");
    assert_error(&errs, "/properties/name", "missing");
    assert_error(&errs, "/spec/junk", "unknown field");
    cella_errors_clear(&errs);
    json_decref(j);
}

static void test_spec_get_parse_text(void **state)
{
    (void)state;
    json_t *j = get_response();
    char *text = cella_json_dump(j);
    struct spec_get_response r;
    struct cella_errors errs = {0};
    assert_int_equal(spec_get_response_parse(text, strlen(text), &r, &errs), 0);
    spec_get_response_free(&r);
    assert_int_equal(spec_get_response_parse("{\"state\":1,\"state\":2}", 21, &r, &errs), -EINVAL);
    assert_non_null(strstr(errs.items[0].message, "duplicate"));
    cella_errors_clear(&errs);
    free(text);
    json_decref(j);
}

/* ---- InstanceEnsureResponse ---- */

static void test_ensure_response(void **state)
{
    (void)state;
    char *none = ensure_response_dump(NULL);
    char *mig = ensure_response_dump(UUID_MIG);
    assert_string_equal(none, "{\"migrate\":null}");
    assert_string_equal(mig, "{\"migrate\":{\"migration_id\":\"" UUID_MIG "\"}}");
    struct jptr root;
    jptr_root(&root);
    char *id = (char *)"sentinel";
    json_t *j = json_loads(none, 0, NULL);
    assert_int_equal(ensure_response_from_json(j, &root, &id, NULL), 0);
    assert_null(id);
    json_decref(j);
    j = json_loads(mig, 0, NULL);
    assert_int_equal(ensure_response_from_json(j, &root, &id, NULL), 0);
    assert_string_equal(id, UUID_MIG);
    free(id);
    json_decref(j);
    /* An absent "migrate" is None, as serde reads an Option. */
    j = json_object();
    assert_int_equal(ensure_response_from_json(j, &root, &id, NULL), 0);
    assert_null(id);
    json_decref(j);
    free(none);
    free(mig);
}

static void test_ensure_response_errors(void **state)
{
    (void)state;
    struct jptr root;
    jptr_root(&root);
    char *id = NULL;
    struct cella_errors errs = {0};
    json_t *j = sq_json("{'migrate': {'migration_id': 'x', 'extra': 1}, 'more': 2}");
    assert_int_equal(ensure_response_from_json(j, &root, &id, &errs), -EINVAL);
    assert_null(id);
    assert_int_equal(errs.count, 3);
    assert_error(&errs, "/more", "unknown field");
    assert_error(&errs, "/migrate/extra", "unknown field");
    assert_error(&errs, "/migrate/migration_id", "UUID");
    cella_errors_clear(&errs);
    json_decref(j);
    j = sq_json("{'migrate': 'x'}");
    assert_int_equal(ensure_response_from_json(j, &root, &id, &errs), -EINVAL);
    assert_error(&errs, "/migrate", "object");
    cella_errors_clear(&errs);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_properties_round_trip),
        cmocka_unit_test(test_properties_errors),
        cmocka_unit_test(test_instance_states),
        cmocka_unit_test(test_replacement_kinds),
        cmocka_unit_test(test_replacement_round_trip),
        cmocka_unit_test(test_replacement_not_replaceable),
        cmocka_unit_test(test_replacement_errors),
        cmocka_unit_test(test_ensure_spec_round_trip),
        cmocka_unit_test(test_ensure_migration_round_trip),
        cmocka_unit_test(test_ensure_migration_no_replacements),
        cmocka_unit_test(test_ensure_equal),
        cmocka_unit_test(test_ensure_stable_text),
        cmocka_unit_test(test_ensure_top_level_errors),
        cmocka_unit_test(test_ensure_init_errors),
        cmocka_unit_test(test_ensure_nested_spec_errors),
        cmocka_unit_test(test_ensure_migration_errors),
        cmocka_unit_test(test_ensure_src_addr),
        cmocka_unit_test(test_ensure_replacement_cap),
        cmocka_unit_test(test_ensure_multiple_errors),
        cmocka_unit_test(test_ensure_parse_text),
        cmocka_unit_test(test_spec_get_present_round_trip),
        cmocka_unit_test(test_spec_get_waiting_round_trip),
        cmocka_unit_test(test_spec_get_every_state),
        cmocka_unit_test(test_spec_get_errors),
        cmocka_unit_test(test_spec_get_parse_text),
        cmocka_unit_test(test_ensure_response),
        cmocka_unit_test(test_ensure_response_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
