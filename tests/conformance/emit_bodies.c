/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Prints cella's API encoding (SPEC_ENC_API) of the bodies Propolis clients
 * exchange with a server, for test_propolis_schemas.py to check against
 * Propolis's own OpenAPI document.
 *
 * Each body starts as JSON text a client could send, goes through cella's
 * decoder and comes back out of cella's encoder, so the check covers both
 * directions. Output: one JSON document per line,
 *   {"case": name, "schema": OpenAPI schema name, "body": cella's bytes}
 * with "cella_only": true added for cella's own additions, which Propolis's
 * schema does not describe. Exit status 1 (and the problems on stderr) if
 * any input fails to decode.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/bodies.h"

#define PCI(d) "{'bus': 0, 'device': " #d ", 'function': 0}"
#define UUID_A "6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f"
#define UUID_B "0d5e7a1c-3f3e-4b0b-8d8e-2a9c1b7e6f00"
#define SERIAL "[110,118,109,101,48,32,32,32,32,32,32,32,32,32,32,32,32,32,32,32]"

#define BOARD                                                                                      \
    "{'cpus': 2, 'memory_mb': 1024,"                                                               \
    " 'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': false}}}"

#define FULL_BOARD                                                                                 \
    "{'cpus': 8, 'memory_mb': 8192,"                                                               \
    " 'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': true}},"                             \
    " 'guest_hv_interface': {'type': 'hyper_v', 'value': {'features': ['reference_tsc']}},"        \
    " 'cpuid': {'vendor': 'amd', 'entries': ["                                                     \
    "   {'leaf': 0, 'subleaf': null, 'eax': 16, 'ebx': 1752462657, 'ecx': 1145913699,"             \
    "    'edx': 1769238117},"                                                                      \
    "   {'leaf': 7, 'subleaf': 0, 'eax': 0, 'ebx': 4294967295, 'ecx': 0, 'edx': 0},"               \
    "   {'leaf': 2147483648, 'eax': 2147483679, 'ebx': 0, 'ecx': 0, 'edx': 0}]}}"

#define SMBIOS                                                                                     \
    "{'manufacturer': 'Oxide', 'product_name': 'cella', 'serial_number': 'SN-1', 'version': 1}"

#define PROPS                                                                                      \
    "{'id': '" UUID_A "', 'name': 'vm0', 'description': 'conformance',"                            \
    " 'metadata': {'project_id': '" UUID_B "', 'silo_id': '" UUID_B "',"                           \
    "  'sled_id': '" UUID_B "', 'sled_model': 'gimlet', 'sled_serial': 'BRM42',"                   \
    "  'sled_revision': 4294967295}}"

/* One component: its key, JSON tag and body, and whether Propolis has the kind. */
struct component_case {
    const char *key;
    const char *type;
    const char *body;
    bool cella_only;
};

static const struct component_case components[] = {
    {"disk0", "virtio_disk", "{'backend_id': 'root', 'pci_path': " PCI(4) "}", false},
    {"disk1", "nvme_disk",
     "{'backend_id': '" UUID_B "', 'pci_path': " PCI(5) ", 'serial_number': " SERIAL "}", false},
    {"net0", "virtio_nic",
     "{'backend_id': 'net0-be', 'interface_id': '" UUID_A "', 'pci_path': " PCI(6) "}", false},
    {"com1", "serial_port", "{'num': 'com1'}", false},
    {"bridge0", "pci_pci_bridge", "{'downstream_bus': 1, 'pci_path': " PCI(7) "}", false},
    {"pvpanic", "qemu_pvpanic", "{'enable_isa': true}", false},
    {"boot", "boot_settings", "{'order': [{'id': 'disk0'}, {'id': 'disk1'}]}", false},
    {"vsock", "virtio_socket", "{'guest_cid': 3, 'pci_path': " PCI(8) "}", false},
    {"npu-pci", "soft_npu_pci_port", "{'pci_path': " PCI(9) "}", false},
    {"npu-port", "soft_npu_port", "{'backend_id': 'dlpi0', 'link_name': 'sc0_1'}", false},
    {"npu-p9", "soft_npu_p9", "{'pci_path': " PCI(10) "}", false},
    {"p9", "p9fs",
     "{'chunk_size': 65536, 'pci_path': " PCI(11) ", 'source': '/opt', 'target': 'falcon'}", false},
    {"fail", "migration_failure_injector", "{'fail_exports': 1, 'fail_imports': 0}", false},
    {UUID_B, "crucible_storage_backend", "{'readonly': false, 'request_json': '{}'}", false},
    {"root", "file_storage_backend",
     "{'block_size': 512, 'path': '/var/lib/vm/root.raw', 'readonly': false, 'workers': 2}", false},
    {"blob", "blob_storage_backend", "{'base64': 'aGVsbG8=', 'readonly': true}", false},
    {"net0-be", "virtio_network_backend", "{'vnic_name': 'tap0'}", false},
    {"dlpi0", "dlpi_network_backend", "{'vnic_name': 'vnic0'}", false},
    /* cella's network block backend; Propolis's schema has no such kind. */
    {"nbd0", "nbd_storage_backend", "{'uri': 'nbd://192.0.2.9:10809/data', 'readonly': false}",
     true},
};
#define NCOMPONENTS (sizeof(components) / sizeof(components[0]))

/* One replacement: map key, tag, spec body, and whether Propolis has the tag. */
struct replacement_case {
    const char *key;
    const char *tag;
    const char *spec;
    bool cella_only;
};

static const struct replacement_case replacements[] = {
    {"fail", "MigrationFailureInjector", "{'fail_exports': 0, 'fail_imports': 2}", false},
    {UUID_B, "CrucibleStorageBackend", "{'readonly': false, 'request_json': '{}'}", false},
    {"net0-be", "VirtioNetworkBackend", "{'vnic_name': 'tap7'}", false},
    /* cella lets these backends be replaced too; Propolis's schema does not. */
    {"root", "FileStorageBackend", "{'block_size': 512, 'path': '/new.raw', 'readonly': false}",
     true},
    {"blob", "BlobStorageBackend", "{'base64': '', 'readonly': false}", true},
    {"nbd0", "NbdStorageBackend", "{'uri': 'nbd://192.0.2.10:10809/data', 'readonly': false}",
     true},
};
#define NREPLACEMENTS (sizeof(replacements) / sizeof(replacements[0]))

static int failures;

/* ---- text building ---- */

/* A growing string; on allocation failure the program exits. */
struct buf {
    char *s;
    size_t len;
};

static void buf_add(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_add(struct buf *b, const char *fmt, ...)
{
    va_list ap, aq;
    va_start(ap, fmt);
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *grown = realloc(b->s, b->len + (size_t)n + 1);
    if (!grown)
        abort();
    vsnprintf(grown + b->len, (size_t)n + 1, fmt, aq);
    va_end(aq);
    b->s = grown;
    b->len += (size_t)n;
}

/* Turns the single quotes of test text into JSON's double quotes, in place. */
static char *dq(char *s)
{
    for (char *c = s; *c; c++) {
        if (*c == '\'')
            *c = '"';
    }
    return s;
}

/* {"key": {"type":..., "component":...}, ...} for the chosen components. */
static void add_components(struct buf *b, bool (*pick)(const struct component_case *))
{
    buf_add(b, "{");
    bool first = true;
    for (size_t i = 0; i < NCOMPONENTS; i++) {
        if (!pick(&components[i]))
            continue;
        buf_add(b, "%s'%s': {'type': '%s', 'component': %s}", first ? "" : ", ", components[i].key,
                components[i].type, components[i].body);
        first = false;
    }
    buf_add(b, "}");
}

static bool propolis_kind(const struct component_case *c)
{
    return !c->cella_only;
}

/* ---- output ---- */

static void report(const char *what, struct cella_errors *errs)
{
    fprintf(stderr, "emit-bodies: %s does not decode:\n", what);
    cella_errors_print(errs, stderr);
    cella_errors_clear(errs);
    failures++;
}

/* Prints one line for `body` (taken) unless it is NULL. */
static void emit(const char *name, const char *schema, bool cella_only, json_t *body)
{
    if (!body) {
        fprintf(stderr, "emit-bodies: %s: encoding failed\n", name);
        failures++;
        return;
    }
    char *text = cella_json_dump(body);
    json_decref(body);
    if (!text)
        abort();
    printf("{\"case\":\"%s\",\"schema\":\"%s\",%s\"body\":%s}\n", name, schema,
           cella_only ? "\"cella_only\":true," : "", text);
    free(text);
}

/* Decodes spec text (single-quoted) with cella and emits its API encoding. */
static void emit_spec(const char *name, char *text, bool cella_only)
{
    struct instance_spec s;
    struct cella_errors errs = {0};
    if (spec_parse(dq(text), strlen(text), &s, &errs) < 0) {
        report(name, &errs);
        return;
    }
    emit(name, "InstanceSpec", cella_only, spec_to_json(&s, SPEC_ENC_API));
    spec_free(&s);
}

/* ---- the cases ---- */

static void emit_each_component(void)
{
    for (size_t i = 0; i < NCOMPONENTS; i++) {
        const struct component_case *c = &components[i];
        struct buf b = {0};
        buf_add(&b, "{'board': %s, 'components': {'%s': {'type': '%s', 'component': %s}}}", BOARD,
                c->key, c->type, c->body);
        struct instance_spec s;
        struct cella_errors errs = {0};
        char name[96];
        snprintf(name, sizeof(name), "component/%s", c->type);
        if (spec_parse(dq(b.s), b.len, &s, &errs) < 0) {
            report(name, &errs);
        } else {
            emit(name, "Component", c->cella_only,
                 spec_component_to_json(&s.components[0], SPEC_ENC_API));
            snprintf(name, sizeof(name), "spec-with/%s", c->type);
            emit(name, "InstanceSpec", c->cella_only, spec_to_json(&s, SPEC_ENC_API));
            spec_free(&s);
        }
        free(b.s);
    }
}

/* A spec with every Propolis component kind, the full board and SMBIOS. */
static char *all_kinds_spec(const char *board, bool smbios)
{
    struct buf b = {0};
    buf_add(&b, "{'board': %s, 'components': ", board);
    add_components(&b, propolis_kind);
    if (smbios)
        buf_add(&b, ", 'smbios': %s", SMBIOS);
    buf_add(&b, "}");
    return b.s;
}

static void emit_specs(void)
{
    char *s = all_kinds_spec(BOARD, false);
    emit_spec("spec/all-propolis-kinds", s, false);
    free(s);
    s = all_kinds_spec(FULL_BOARD, true);
    emit_spec("spec/full-board-smbios", s, false);
    free(s);
    char minimal[] = "{'board': " BOARD ", 'components': {}}";
    emit_spec("spec/minimal", minimal, false);
}

static void emit_properties(void)
{
    char text[] = PROPS;
    json_t *j = json_loads(dq(text), 0, NULL);
    struct instance_properties p;
    struct cella_errors errs = {0};
    struct jptr root;
    jptr_root(&root);
    if (!j || instance_properties_from_json(j, &root, &p, &errs) < 0) {
        report("properties", &errs);
    } else {
        emit("properties", "InstanceProperties", false, instance_properties_to_json(&p));
        instance_properties_free(&p);
    }
    json_decref(j);
}

static void emit_ensure(const char *name, const char *init, bool cella_only)
{
    struct buf b = {0};
    buf_add(&b, "{'properties': %s, 'init': %s}", PROPS, init);
    struct ensure_request r;
    struct cella_errors errs = {0};
    if (ensure_request_parse(dq(b.s), b.len, &r, &errs) < 0) {
        report(name, &errs);
    } else {
        emit(name, "InstanceEnsureRequest", cella_only, ensure_request_to_json(&r, SPEC_ENC_API));
        ensure_request_free(&r);
    }
    free(b.s);
}

static void emit_ensure_spec(void)
{
    char *spec = all_kinds_spec(FULL_BOARD, true);
    struct buf init = {0};
    buf_add(&init, "{'method': 'Spec', 'value': {'spec': %s}}", spec);
    emit_ensure("ensure/spec", init.s, false);
    free(init.s);
    free(spec);
}

/* Adds the chosen replacements as a replace_components object. */
static void add_replacements(struct buf *b, bool cella_only)
{
    buf_add(b, "{");
    bool first = true;
    for (size_t i = 0; i < NREPLACEMENTS; i++) {
        if (replacements[i].cella_only != cella_only)
            continue;
        buf_add(b, "%s'%s': {'component': '%s', 'spec': %s}", first ? "" : ", ",
                replacements[i].key, replacements[i].tag, replacements[i].spec);
        first = false;
    }
    buf_add(b, "}");
}

static void emit_ensure_migration(const char *name, const char *addr, bool with, bool cella)
{
    struct buf b = {0};
    buf_add(&b,
            "{'method': 'MigrationTarget', 'value': {'migration_id': '%s', 'src_addr': '%s',"
            " 'replace_components': ",
            UUID_B, addr);
    if (with)
        add_replacements(&b, cella);
    else
        buf_add(&b, "{}");
    buf_add(&b, "}}");
    emit_ensure(name, b.s, cella);
    free(b.s);
}

static void emit_each_replacement(void)
{
    struct jptr root;
    jptr_root(&root);
    for (size_t i = 0; i < NREPLACEMENTS; i++) {
        const struct replacement_case *c = &replacements[i];
        struct buf b = {0};
        buf_add(&b, "{'component': '%s', 'spec': %s}", c->tag, c->spec);
        json_t *j = json_loads(dq(b.s), 0, NULL);
        struct spec_replacement r;
        struct cella_errors errs = {0};
        char name[96];
        snprintf(name, sizeof(name), "replacement/%s", c->tag);
        if (!j || replacement_from_json(j, c->key, &root, &r, &errs) < 0) {
            report(name, &errs);
        } else {
            emit(name, "ReplacementComponent", c->cella_only,
                 replacement_to_json(&r, SPEC_ENC_API));
            spec_component_free(&r.comp);
        }
        json_decref(j);
        free(b.s);
    }
}

static void emit_spec_get(const char *name, const char *state, const char *status)
{
    struct buf b = {0};
    buf_add(&b, "{'properties': %s, 'state': '%s', 'spec': %s}", PROPS, state, status);
    struct spec_get_response r;
    struct cella_errors errs = {0};
    if (spec_get_response_parse(dq(b.s), b.len, &r, &errs) < 0) {
        report(name, &errs);
    } else {
        emit(name, "InstanceSpecGetResponse", false, spec_get_response_to_json(&r, SPEC_ENC_API));
        spec_get_response_free(&r);
    }
    free(b.s);
}

static void emit_spec_gets(void)
{
    char *spec = all_kinds_spec(FULL_BOARD, true);
    struct buf status = {0};
    buf_add(&status, "{'type': 'Present', 'value': %s}", spec);
    emit_spec_get("spec-get/present", "Running", status.s);
    free(status.s);
    free(spec);
    for (unsigned s = 0; s < INSTANCE_STATE__COUNT; s++) {
        char name[64];
        const char *st = instance_state_name((enum instance_state)s);
        snprintf(name, sizeof(name), "spec-get/waiting/%s", st);
        emit_spec_get(name, st, "{'type': 'WaitingForMigrationSource'}");
    }
}

int main(void)
{
    emit_each_component();
    emit_specs();
    emit_properties();
    emit_ensure_spec();
    emit_ensure_migration("ensure/migration-target", "192.0.2.7:12400", true, false);
    emit_ensure_migration("ensure/migration-target-v6-empty", "[2001:db8::7]:12400", false, false);
    emit_ensure_migration("ensure/migration-target-cella-replacements", "192.0.2.7:12400", true,
                          true);
    emit_each_replacement();
    emit_spec_gets();
    emit("ensure-response/no-migration", "InstanceEnsureResponse", false,
         ensure_response_to_json(NULL));
    emit("ensure-response/migration", "InstanceEnsureResponse", false,
         ensure_response_to_json(UUID_B));
    if (fflush(stdout) != 0)
        return 1;
    return failures ? 1 : 0;
}
