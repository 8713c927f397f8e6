/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The instance-spec JSON codec: every component kind decodes and survives
 * a round trip in both encodings, encoding is byte-stable, the API encoding
 * hides cella's defaults, decoding reports each problem at its exact
 * pointer, and the migration wire form handles old and new versions.
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

#include "spec/spec.h"
#include "spec/spec_json.h"

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

#define BOARD                                                                                      \
    "{'cpus': 2, 'memory_mb': 512,"                                                                \
    " 'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': false}}}"

#define PCI(d) "{'bus': 0, 'device': " #d ", 'function': 0}"
#define UUID1  "6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f"
#define SERIAL "[110,118,109,101,48,32,32,32,32,32,32,32,32,32,32,32,32,32,32,32]"

/* A spec with one component `key` of `type` whose body is `body`. */
static json_t *one_component_spec(const char *key, const char *type, const char *body)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "{'board': %s, 'components': {'%s': {'type': '%s', 'component': %s}}}", BOARD, key,
             type, body);
    return sq_json(text);
}

static int decode(const json_t *j, unsigned version, struct instance_spec *s,
                  struct cella_errors *errs)
{
    struct jptr root;
    jptr_root(&root);
    return spec_from_json(j, &root, version, s, errs);
}

/* Decodes, asserting success and printing the problems when it fails. */
static void decode_ok(const json_t *j, struct instance_spec *s)
{
    struct cella_errors errs = {0};
    int r = decode(j, SPEC_VERSION_CURRENT, s, &errs);
    if (r != 0)
        cella_errors_print(&errs, stderr);
    assert_int_equal(r, 0);
    assert_int_equal(cella_errors_total(&errs), 0);
    cella_errors_clear(&errs);
}

static const struct cella_error *find_error(const struct cella_errors *errs, const char *ptr)
{
    for (size_t i = 0; i < errs->count; i++) {
        if (strcmp(errs->items[i].pointer, ptr) == 0)
            return &errs->items[i];
    }
    return NULL;
}

/* Asserts that decoding `j` fails with a problem at `ptr` whose message holds `word`. */
static void expect_error(json_t *j, const char *ptr, const char *word)
{
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(decode(j, SPEC_VERSION_CURRENT, &s, &errs), -EINVAL);
    const struct cella_error *e = find_error(&errs, ptr);
    if (!e) {
        cella_errors_print(&errs, stderr);
        fail_msg("no error at %s", ptr);
    }
    if (word && !strstr(e->message, word))
        fail_msg("error at %s says \"%s\", expected \"%s\"", ptr, e->message, word);
    /* A failed decode leaves the spec empty. */
    assert_int_equal(s.count, 0);
    assert_null(s.components);
    cella_errors_clear(&errs);
    json_decref(j);
}

/* decode(encode(s, enc)) == s, and the text is the same on a second pass. */
static void assert_round_trip(const struct instance_spec *s, enum spec_encoding enc)
{
    char *text = spec_dump(s, enc);
    assert_non_null(text);
    struct instance_spec back;
    struct cella_errors errs = {0};
    int r = spec_parse(text, strlen(text), &back, &errs);
    if (r != 0) {
        cella_errors_print(&errs, stderr);
        fail_msg("re-decoding failed: %s", text);
    }
    assert_true(spec_equal(s, &back));
    char *again = spec_dump(&back, enc);
    assert_string_equal(text, again);
    free(again);
    free(text);
    spec_free(&back);
}

/* Walks a parsed document and asserts every object's keys are in strcmp order. */
static void assert_keys_sorted(const json_t *j)
{
    if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j); i++)
            assert_keys_sorted(json_array_get(j, i));
        return;
    }
    if (!json_is_object(j))
        return;
    const char *prev = NULL, *key;
    json_t *v;
    json_object_foreach((json_t *)j, key, v)
    {
        if (prev && strcmp(prev, key) >= 0)
            fail_msg("key \"%s\" follows \"%s\"", key, prev);
        prev = key;
        assert_keys_sorted(v);
    }
}

/* ---- every kind ---- */

struct kind_case {
    enum spec_kind kind;
    const char *type;
    const char *body;
};

static const struct kind_case kind_cases[] = {
    {SK_VIRTIO_DISK, "virtio_disk", "{'backend_id': 'be0', 'pci_path': " PCI(4) "}"},
    {SK_NVME_DISK, "nvme_disk",
     "{'backend_id': 'be0', 'pci_path': " PCI(5) ", 'serial_number': " SERIAL "}"},
    {SK_NVME_DISK, "nvme_disk",
     "{'backend_id': 'be0', 'pci_path': " PCI(5) ", 'serial_number': " SERIAL ", 'string_pad': 0}"},
    {SK_VIRTIO_NIC, "virtio_nic",
     "{'backend_id': 'nb', 'interface_id': '" UUID1 "', 'pci_path': " PCI(6) "}"},
    {SK_VIRTIO_NIC, "virtio_nic",
     "{'backend_id': 'nb', 'interface_id': '" UUID1
     "', 'pci_path': " PCI(6) ", 'mac': '02:00:00:00:00:01'}"},
    {SK_SERIAL_PORT, "serial_port", "{'num': 'com2'}"},
    {SK_PCI_PCI_BRIDGE, "pci_pci_bridge", "{'downstream_bus': 1, 'pci_path': " PCI(7) "}"},
    {SK_QEMU_PVPANIC, "qemu_pvpanic", "{'enable_isa': true}"},
    {SK_BOOT_SETTINGS, "boot_settings", "{'order': [{'id': 'disk0'}, {'id': 'disk1'}]}"},
    {SK_VIRTIO_SOCKET, "virtio_socket", "{'guest_cid': 3, 'pci_path': " PCI(8) "}"},
    {SK_SOFT_NPU_PCI_PORT, "soft_npu_pci_port", "{'pci_path': " PCI(9) "}"},
    {SK_SOFT_NPU_PORT, "soft_npu_port", "{'backend_id': 'dlpi0', 'link_name': 'sc0_1'}"},
    {SK_SOFT_NPU_P9, "soft_npu_p9", "{'pci_path': " PCI(10) "}"},
    {SK_P9FS, "p9fs",
     "{'chunk_size': 65536, 'pci_path': " PCI(11) ", 'source': '/opt/src', 'target': 'falcon'}"},
    {SK_MIGRATION_FAILURE_INJECTOR, "migration_failure_injector",
     "{'fail_exports': 1, 'fail_imports': 4294967295}"},
    {SK_CRUCIBLE_STORAGE_BACKEND, "crucible_storage_backend",
     "{'readonly': true, 'request_json': '{}'}"},
    {SK_FILE_STORAGE_BACKEND, "file_storage_backend",
     "{'block_size': 512, 'path': '/var/lib/vm/root.raw', 'readonly': false}"},
    {SK_FILE_STORAGE_BACKEND, "file_storage_backend",
     "{'block_size': 4096, 'path': '/r.raw', 'readonly': true, 'workers': 4}"},
    {SK_BLOB_STORAGE_BACKEND, "blob_storage_backend", "{'base64': 'aGVsbG8=', 'readonly': true}"},
    {SK_VIRTIO_NETWORK_BACKEND, "virtio_network_backend", "{'vnic_name': 'tap0'}"},
    {SK_DLPI_NETWORK_BACKEND, "dlpi_network_backend", "{'vnic_name': 'vnic0'}"},
    {SK_NBD_STORAGE_BACKEND, "nbd_storage_backend",
     "{'uri': 'nbd://127.0.0.1:10809/data', 'readonly': false}"},
};
#define NKIND_CASES (sizeof(kind_cases) / sizeof(kind_cases[0]))

static void test_cases_cover_every_kind(void **state)
{
    (void)state;
    bool seen[SK__COUNT] = {false};
    for (size_t i = 0; i < NKIND_CASES; i++) {
        assert_string_equal(spec_kind_name(kind_cases[i].kind), kind_cases[i].type);
        seen[kind_cases[i].kind] = true;
    }
    for (unsigned k = 0; k < SK__COUNT; k++) {
        if (!seen[k])
            fail_msg("no test case for kind %s", spec_kind_name((enum spec_kind)k));
    }
    assert_int_equal(SK__COUNT, 19);
}

static void test_every_kind_decodes(void **state)
{
    (void)state;
    for (size_t i = 0; i < NKIND_CASES; i++) {
        json_t *j = one_component_spec("c0", kind_cases[i].type, kind_cases[i].body);
        struct instance_spec s;
        decode_ok(j, &s);
        assert_int_equal(s.count, 1);
        assert_string_equal(s.components[0].key, "c0");
        assert_int_equal(s.components[0].kind, kind_cases[i].kind);
        spec_free(&s);
        json_decref(j);
    }
}

static void test_every_kind_round_trips(void **state)
{
    (void)state;
    for (size_t i = 0; i < NKIND_CASES; i++) {
        json_t *j = one_component_spec("c0", kind_cases[i].type, kind_cases[i].body);
        struct instance_spec s;
        decode_ok(j, &s);
        assert_round_trip(&s, SPEC_ENC_API);
        assert_round_trip(&s, SPEC_ENC_FULL);
        json_t *api = spec_to_json(&s, SPEC_ENC_API);
        /* The API form of a component is exactly what the client sent. */
        assert_true(json_equal(api, j));
        json_decref(api);
        spec_free(&s);
        json_decref(j);
    }
}

static void test_field_values_decoded(void **state)
{
    (void)state;
    json_t *j = one_component_spec("n", "nvme_disk", kind_cases[1].body);
    struct instance_spec s;
    decode_ok(j, &s);
    const struct c_nvme_disk *d = &s.components[0].u.nvme_disk;
    assert_string_equal(d->backend_id, "be0");
    assert_int_equal(d->pci_path.device, 5);
    assert_memory_equal(d->serial_number, "nvme0               ", 20);
    assert_int_equal(d->string_pad, ' ');
    spec_free(&s);
    json_decref(j);

    j = one_component_spec("f", "file_storage_backend", kind_cases[17].body);
    decode_ok(j, &s);
    const struct c_file_storage_backend *f = &s.components[0].u.file_storage_backend;
    assert_int_equal(f->block_size, 4096);
    assert_true(f->readonly);
    assert_true(f->workers.present);
    assert_int_equal(f->workers.value, 4);
    spec_free(&s);
    json_decref(j);
}

/* A spec with every board feature, SMBIOS and several components. */
static const char full_spec[] =
    "{'board': {'cpus': 4, 'memory_mb': 2048,"
    "  'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': true}},"
    "  'guest_hv_interface': {'type': 'hyper_v', 'value': {'features': ['reference_tsc']}},"
    "  'cpuid': {'vendor': 'intel', 'entries': ["
    "    {'leaf': 0, 'subleaf': null, 'eax': 13, 'ebx': 1, 'ecx': 2, 'edx': 3},"
    "    {'leaf': 7, 'subleaf': 0, 'eax': 0, 'ebx': 4294967295, 'ecx': 0, 'edx': 0}]}},"
    " 'smbios': {'manufacturer': 'Oxide', 'product_name': 'cella', 'serial_number': 'S1',"
    "  'version': 2},"
    " 'components': {"
    "  'disk0': {'type': 'virtio_disk', 'component': {'backend_id': 'root', 'pci_path': " PCI(
        4) "}},"
           "  'root': {'type': 'file_storage_backend', 'component': {'path': '/r.raw',"
           "     'readonly': false, 'block_size': 512}},"
           "  'com1': {'type': 'serial_port', 'component': {'num': 'com1'}}}}";

static void test_full_spec_round_trips(void **state)
{
    (void)state;
    json_t *j = sq_json(full_spec);
    struct instance_spec s;
    decode_ok(j, &s);
    assert_int_equal(s.board.hv, GUEST_HV_HYPER_V);
    assert_int_equal(s.board.hyperv_features, HYPERV_FEAT_REFERENCE_TSC);
    assert_true(s.board.has_cpuid);
    assert_int_equal(s.board.cpuid.count, 2);
    assert_false(s.board.cpuid.entries[0].has_subleaf);
    assert_true(s.board.cpuid.entries[1].has_subleaf);
    assert_true(s.has_smbios);
    assert_round_trip(&s, SPEC_ENC_API);
    assert_round_trip(&s, SPEC_ENC_FULL);
    /* Components come out sorted by key. */
    assert_string_equal(s.components[0].key, "com1");
    assert_string_equal(s.components[2].key, "root");
    spec_free(&s);
    json_decref(j);
}

/* ---- stable encoding ---- */

static void test_encoding_is_stable_and_sorted(void **state)
{
    (void)state;
    json_t *j = sq_json(full_spec);
    struct instance_spec s, copy;
    decode_ok(j, &s);
    assert_int_equal(spec_copy(&copy, &s), 0);
    for (int e = SPEC_ENC_API; e <= SPEC_ENC_FULL; e++) {
        char *a = spec_dump(&s, (enum spec_encoding)e);
        char *b = spec_dump(&s, (enum spec_encoding)e);
        char *c = spec_dump(&copy, (enum spec_encoding)e);
        assert_string_equal(a, b);
        assert_string_equal(a, c);
        assert_null(strchr(a, '\n'));
        assert_null(strstr(a, ": "));
        json_t *parsed = json_loads(a, 0, NULL);
        assert_non_null(parsed);
        assert_keys_sorted(parsed);
        json_decref(parsed);
        free(a);
        free(b);
        free(c);
    }
    spec_free(&copy);
    spec_free(&s);
    json_decref(j);
}

static void test_encoding_exact_bytes(void **state)
{
    (void)state;
    json_t *j = one_component_spec("com1", "serial_port", "{'num': 'com1'}");
    struct instance_spec s;
    decode_ok(j, &s);
    char *api = spec_dump(&s, SPEC_ENC_API);
    assert_string_equal(api,
                        "{\"board\":{\"chipset\":{\"type\":\"i440_fx\",\"value\":{\"enable_pcie\":"
                        "false}},\"cpus\":2,\"memory_mb\":512},\"components\":{\"com1\":{"
                        "\"component\":{\"num\":\"com1\"},\"type\":\"serial_port\"}}}");
    char *full = spec_dump(&s, SPEC_ENC_FULL);
    assert_string_equal(full,
                        "{\"board\":{\"chipset\":{\"type\":\"i440_fx\",\"value\":{\"enable_pcie\":"
                        "false}},\"cpuid\":null,\"cpus\":2,\"guest_hv_interface\":{\"type\":"
                        "\"bhyve\"},\"memory_mb\":512},\"components\":{\"com1\":{\"component\":{"
                        "\"num\":\"com1\"},\"type\":\"serial_port\"}},\"smbios\":null}");
    free(api);
    free(full);
    spec_free(&s);
    json_decref(j);
}

static void test_api_omits_defaults(void **state)
{
    (void)state;
    json_t *j = one_component_spec("n", "nvme_disk", kind_cases[1].body);
    struct instance_spec s;
    decode_ok(j, &s);
    assert_int_equal(s.board.hv, GUEST_HV_BHYVE);
    char *api = spec_dump(&s, SPEC_ENC_API);
    char *full = spec_dump(&s, SPEC_ENC_FULL);
    assert_null(strstr(api, "guest_hv_interface"));
    assert_null(strstr(api, "string_pad"));
    assert_non_null(strstr(full, "\"guest_hv_interface\":{\"type\":\"bhyve\"}"));
    assert_non_null(strstr(full, "\"string_pad\":32"));
    free(api);
    free(full);

    /* Non-default values are written in both encodings. */
    s.board.hv = GUEST_HV_HYPER_V;
    s.components[0].u.nvme_disk.string_pad = 0;
    api = spec_dump(&s, SPEC_ENC_API);
    assert_non_null(strstr(api, "\"guest_hv_interface\":{\"type\":\"hyper_v\""));
    assert_non_null(strstr(api, "\"string_pad\":0"));
    free(api);
    spec_free(&s);
    json_decref(j);
}

static void test_api_omits_absent_optionals(void **state)
{
    (void)state;
    json_t *j = one_component_spec("f", "file_storage_backend", kind_cases[16].body);
    struct instance_spec s;
    decode_ok(j, &s);
    char *api = spec_dump(&s, SPEC_ENC_API);
    char *full = spec_dump(&s, SPEC_ENC_FULL);
    assert_null(strstr(api, "workers"));
    assert_non_null(strstr(full, "\"workers\":null"));
    free(api);
    free(full);
    spec_free(&s);
    json_decref(j);
}

/* ---- decode errors ---- */

static json_t *base_spec(void)
{
    return sq_json(
        "{'board': " BOARD ", 'components': {"
        " 'disk0': {'type': 'virtio_disk', 'component': {'backend_id': 'root',"
        "   'pci_path': " PCI(
            4) "}},"
               " 'root': {'type': 'file_storage_backend', 'component': {'path': '/r',"
               "   'readonly': false, 'block_size': 512}},"
               " 'nvme0': {'type': 'nvme_disk', 'component': {'backend_id': 'root',"
               "   'pci_path': " PCI(
                   5) ", 'serial_number': " SERIAL "}},"
                      " 'net0': {'type': 'virtio_nic', 'component': {'backend_id': 'nb',"
                      "   'interface_id': '" UUID1 "', 'pci_path': " PCI(
                          6) "}},"
                             " 'com1': {'type': 'serial_port', 'component': {'num': 'com1'}}}}");
}

/* The object at a pointer of base_spec(), e.g. "components/disk0/component". */
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

static void test_base_spec_decodes(void **state)
{
    (void)state;
    json_t *j = base_spec();
    struct instance_spec s;
    decode_ok(j, &s);
    assert_int_equal(s.count, 5);
    spec_free(&s);
    json_decref(j);
}

static void test_unknown_field_top_level(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(j, "bogus", json_true());
    expect_error(j, "/bogus", "unknown field");
}

static void test_unknown_field_in_board(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "board"), "bogus", json_integer(1));
    expect_error(j, "/board/bogus", "unknown field");
}

static void test_unknown_field_in_component(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "components/disk0/component"), "bogus", json_integer(1));
    expect_error(j, "/components/disk0/component/bogus", "unknown field");
    j = base_spec();
    json_object_set_new(at(j, "components/disk0"), "extra", json_integer(1));
    expect_error(j, "/components/disk0/extra", "unknown field");
}

static void test_unknown_component_type(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "components/com1"), "type", json_string("serial_porrt"));
    expect_error(j, "/components/com1/type", "unknown component type");
}

static void test_wrong_type(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "board"), "cpus", json_string("two"));
    expect_error(j, "/board/cpus", "integer");
    j = base_spec();
    json_object_set_new(at(j, "components/root/component"), "readonly", json_string("no"));
    expect_error(j, "/components/root/component/readonly", "true or false");
    j = base_spec();
    json_object_set_new(at(j, "components/root/component"), "path", json_integer(7));
    expect_error(j, "/components/root/component/path", "string");
    j = base_spec();
    json_object_set_new(j, "components", json_array());
    expect_error(j, "/components", "object");
}

static void test_out_of_range_u8(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "components/disk0/component/pci_path"), "device", json_integer(300));
    expect_error(j, "/components/disk0/component/pci_path/device", "0 to 255");
    j = base_spec();
    json_object_set_new(at(j, "board"), "cpus", json_integer(-1));
    expect_error(j, "/board/cpus", "0 to 255");
}

static void test_missing_required_field(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_del(at(j, "components/disk0/component"), "backend_id");
    expect_error(j, "/components/disk0/component/backend_id", "missing");
    j = base_spec();
    json_object_del(at(j, "board"), "memory_mb");
    expect_error(j, "/board/memory_mb", "missing");
    j = base_spec();
    json_object_del(j, "board");
    expect_error(j, "/board", "missing");
}

static void test_bad_uuid(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "components/net0/component"), "interface_id",
                        json_string("6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6"));
    expect_error(j, "/components/net0/component/interface_id", "not a UUID");
    j = base_spec();
    json_object_set_new(at(j, "components/net0/component"), "interface_id",
                        json_string("6f1d5c3e_0d3a_4a55_9d6e_1c2b3a4d5e6f"));
    expect_error(j, "/components/net0/component/interface_id", "not a UUID");
}

static void test_bad_com_port(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "components/com1/component"), "num", json_string("com5"));
    expect_error(j, "/components/com1/component/num", "com4");
    j = base_spec();
    json_object_set_new(at(j, "components/com1/component"), "num", json_integer(1));
    expect_error(j, "/components/com1/component/num", "com1");
}

static void test_serial_number_19_bytes(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_array_remove(at(j, "components/nvme0/component/serial_number"), 0);
    expect_error(j, "/components/nvme0/component/serial_number", "exactly 20");
    j = base_spec();
    json_array_set_new(at(j, "components/nvme0/component/serial_number"), 3, json_integer(256));
    expect_error(j, "/components/nvme0/component/serial_number/3", "0 to 255");
}

static void test_multiple_errors_in_one_pass(void **state)
{
    (void)state;
    json_t *j = base_spec();
    json_object_set_new(at(j, "board"), "bogus", json_true());
    json_object_set_new(at(j, "board"), "cpus", json_string("two"));
    json_object_set_new(at(j, "components/disk0/component/pci_path"), "device", json_integer(300));
    json_object_set_new(at(j, "components/com1/component"), "num", json_string("com9"));
    json_object_del(at(j, "components/root/component"), "path");
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(decode(j, SPEC_VERSION_CURRENT, &s, &errs), -EINVAL);
    assert_true(cella_errors_total(&errs) >= 3);
    assert_int_equal(errs.count, 5);
    static const char *const ptrs[] = {
        "/board/bogus", "/board/cpus", "/components/disk0/component/pci_path/device",
        "/components/com1/component/num", "/components/root/component/path"};
    for (size_t i = 0; i < 5; i++) {
        if (!find_error(&errs, ptrs[i]))
            fail_msg("no error at %s", ptrs[i]);
    }
    cella_errors_sort(&errs);
    assert_string_equal(errs.items[0].pointer, "/board/bogus");
    cella_errors_clear(&errs);
    json_decref(j);
}

static void test_duplicate_keys_rejected(void **state)
{
    (void)state;
    static const char text[] = "{\"board\": {}, \"board\": {}}";
    json_t *j = NULL;
    struct cella_errors errs = {0};
    assert_int_equal(cella_json_parse(text, strlen(text), &j, &errs), -EINVAL);
    assert_null(j);
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.items[0].message, "duplicate"));
    cella_errors_clear(&errs);

    /* The same through spec_parse, with a duplicate component key. */
    json_t *base = base_spec();
    char *good = cella_json_dump(base);
    json_decref(base);
    size_t cap = strlen(good) + 128;
    char *dup = malloc(cap);
    assert_non_null(dup);
    char *comps = strstr(good, "\"components\":{") + strlen("\"components\":{");
    snprintf(dup, cap,
             "%.*s\"com1\":{\"type\":\"serial_port\",\"component\":{\"num\":\"com2\"}},%s",
             (int)(comps - good), good, comps);
    struct instance_spec s;
    assert_int_equal(spec_parse(dup, strlen(dup), &s, &errs), -EINVAL);
    assert_non_null(strstr(errs.items[0].message, "duplicate"));
    assert_int_equal(spec_parse(good, strlen(good), &s, NULL), 0);
    spec_free(&s);
    cella_errors_clear(&errs);
    free(dup);
    free(good);
}

static void test_oversize_text_rejected(void **state)
{
    (void)state;
    size_t len = SPEC_MAX_JSON_TEXT + 1;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, ' ', len);
    text[0] = '{';
    text[len - 1] = '}';
    json_t *j = NULL;
    struct cella_errors errs = {0};
    assert_int_equal(cella_json_parse(text, len, &j, &errs), -E2BIG);
    assert_null(j);
    assert_non_null(strstr(errs.items[0].message, "limit"));
    struct instance_spec s;
    assert_int_equal(spec_parse(text, len, &s, NULL), -E2BIG);
    cella_errors_clear(&errs);
    /* One byte under the limit is parsed (and is an empty object). */
    assert_int_equal(cella_json_parse(text + 1, len - 1, &j, NULL), -EINVAL);
    text[1] = '{';
    assert_int_equal(cella_json_parse(text + 1, len - 1, &j, NULL), 0);
    json_decref(j);
    free(text);
}

static void test_malformed_text(void **state)
{
    (void)state;
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(spec_parse("{\"board\":", 9, &s, &errs), -EINVAL);
    assert_non_null(strstr(errs.items[0].message, "line 1"));
    assert_string_equal(errs.items[0].pointer, "");
    cella_errors_clear(&errs);
}

/* ---- the migration wire form ---- */

static void test_wire_round_trip(void **state)
{
    (void)state;
    json_t *j = sq_json(full_spec);
    struct instance_spec s, back;
    decode_ok(j, &s);
    json_t *wire = spec_to_wire(&s);
    assert_non_null(wire);
    assert_int_equal(json_integer_value(json_object_get(wire, "spec_version")),
                     SPEC_VERSION_CURRENT);
    struct cella_errors errs = {0};
    assert_int_equal(spec_from_wire(wire, &back, &errs), 0);
    assert_true(spec_equal(&s, &back));
    /* The wire form spells every field out. */
    char *text = cella_json_dump(wire);
    assert_non_null(strstr(text, "\"smbios\":{"));
    assert_non_null(strstr(text, "\"guest_hv_interface\""));
    free(text);
    spec_free(&back);
    spec_free(&s);
    json_decref(wire);
    json_decref(j);
}

static json_t *nvme_wire(unsigned version, const char *extra)
{
    char body[512], text[2048];
    snprintf(body, sizeof(body),
             "{'backend_id': 'be', 'pci_path': " PCI(5) ", 'serial_number': " SERIAL "%s}", extra);
    snprintf(text, sizeof(text),
             "{'spec_version': %u, 'spec': {'board': " BOARD ", 'components': {'nvme0':"
             " {'type': 'nvme_disk', 'component': %s}}, 'smbios': null}}",
             version, body);
    return sq_json(text);
}

static void test_wire_v1_without_string_pad_is_nul(void **state)
{
    (void)state;
    json_t *w = nvme_wire(1, "");
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(spec_from_wire(w, &s, &errs), 0);
    assert_int_equal(s.components[0].u.nvme_disk.string_pad, 0);
    /* Re-encoded, the legacy value stays explicit in both encodings. */
    char *api = spec_dump(&s, SPEC_ENC_API);
    assert_non_null(strstr(api, "\"string_pad\":0"));
    free(api);
    json_t *w2 = spec_to_wire(&s);
    struct instance_spec s2;
    assert_int_equal(spec_from_wire(w2, &s2, &errs), 0);
    assert_int_equal(s2.components[0].u.nvme_disk.string_pad, 0);
    spec_free(&s2);
    json_decref(w2);
    spec_free(&s);
    json_decref(w);

    /* The current version without the field gets the new default. */
    w = nvme_wire(2, "");
    assert_int_equal(spec_from_wire(w, &s, &errs), 0);
    assert_int_equal(s.components[0].u.nvme_disk.string_pad, ' ');
    spec_free(&s);
    json_decref(w);
    cella_errors_clear(&errs);
}

static void test_api_without_string_pad_is_space(void **state)
{
    (void)state;
    json_t *j = one_component_spec("nvme0", "nvme_disk", kind_cases[1].body);
    char *text = cella_json_dump(j);
    struct instance_spec s;
    assert_int_equal(spec_parse(text, strlen(text), &s, NULL), 0);
    assert_int_equal(s.components[0].u.nvme_disk.string_pad, 0x20);
    spec_free(&s);
    free(text);
    json_decref(j);
}

static void test_wire_v1_rejects_string_pad(void **state)
{
    (void)state;
    json_t *w = nvme_wire(1, ", 'string_pad': 32");
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(spec_from_wire(w, &s, &errs), -EINVAL);
    const struct cella_error *e = find_error(&errs, "/spec/components/nvme0/component/string_pad");
    assert_non_null(e);
    assert_non_null(strstr(e->message, "unknown field"));
    cella_errors_clear(&errs);
    json_decref(w);
    w = nvme_wire(2, ", 'string_pad': 32");
    assert_int_equal(spec_from_wire(w, &s, NULL), 0);
    spec_free(&s);
    json_decref(w);
}

static void test_wire_version_bounds(void **state)
{
    (void)state;
    json_t *w = nvme_wire(SPEC_VERSION_CURRENT + 1, "");
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_true(spec_from_wire(w, &s, &errs) < 0);
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.items[0].pointer, "/spec_version");
    assert_non_null(strstr(errs.items[0].message, "newer"));
    cella_errors_clear(&errs);
    json_decref(w);

    w = nvme_wire(0, "");
    assert_true(spec_from_wire(w, &s, &errs) < 0);
    assert_string_equal(errs.items[0].pointer, "/spec_version");
    assert_null(strstr(errs.items[0].message, "newer"));
    assert_int_equal(s.count, 0);
    cella_errors_clear(&errs);
    json_decref(w);
}

static void test_wire_shape_errors(void **state)
{
    (void)state;
    struct instance_spec s;
    struct cella_errors errs = {0};
    json_t *w = sq_json("{'spec_version': 2}");
    assert_int_equal(spec_from_wire(w, &s, &errs), -EINVAL);
    assert_string_equal(errs.items[0].pointer, "/spec");
    cella_errors_clear(&errs);
    json_decref(w);
    w = sq_json("{'spec_version': 2, 'spec': {}, 'extra': 1}");
    assert_int_equal(spec_from_wire(w, &s, &errs), -EINVAL);
    assert_non_null(find_error(&errs, "/extra"));
    cella_errors_clear(&errs);
    json_decref(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases_cover_every_kind),
        cmocka_unit_test(test_every_kind_decodes),
        cmocka_unit_test(test_every_kind_round_trips),
        cmocka_unit_test(test_field_values_decoded),
        cmocka_unit_test(test_full_spec_round_trips),
        cmocka_unit_test(test_encoding_is_stable_and_sorted),
        cmocka_unit_test(test_encoding_exact_bytes),
        cmocka_unit_test(test_api_omits_defaults),
        cmocka_unit_test(test_api_omits_absent_optionals),
        cmocka_unit_test(test_base_spec_decodes),
        cmocka_unit_test(test_unknown_field_top_level),
        cmocka_unit_test(test_unknown_field_in_board),
        cmocka_unit_test(test_unknown_field_in_component),
        cmocka_unit_test(test_unknown_component_type),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_out_of_range_u8),
        cmocka_unit_test(test_missing_required_field),
        cmocka_unit_test(test_bad_uuid),
        cmocka_unit_test(test_bad_com_port),
        cmocka_unit_test(test_serial_number_19_bytes),
        cmocka_unit_test(test_multiple_errors_in_one_pass),
        cmocka_unit_test(test_duplicate_keys_rejected),
        cmocka_unit_test(test_oversize_text_rejected),
        cmocka_unit_test(test_malformed_text),
        cmocka_unit_test(test_wire_round_trip),
        cmocka_unit_test(test_wire_v1_without_string_pad_is_nul),
        cmocka_unit_test(test_api_without_string_pad_is_space),
        cmocka_unit_test(test_wire_v1_rejects_string_pad),
        cmocka_unit_test(test_wire_version_bounds),
        cmocka_unit_test(test_wire_shape_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
