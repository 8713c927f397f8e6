/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Shared fixtures for spec unit tests: a valid spec that uses most kinds,
 * and a JSON-pointer setter to derive broken variants from it.
 */
#ifndef CELLA_TESTS_SPEC_FIXTURE_H
#define CELLA_TESTS_SPEC_FIXTURE_H

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Single quotes stand for double quotes, to keep the fixture readable. */
static const char fixture_base_spec[] =
    "{'board': {'cpus': 2, 'memory_mb': 1024,"
    "  'chipset': {'type': 'i440_fx', 'value': {'enable_pcie': false}}},"
    " 'components': {"
    "  'disk0': {'type': 'virtio_disk', 'component': {'backend_id': 'root',"
    "     'pci_path': {'bus': 0, 'device': 4, 'function': 0}}},"
    "  'root': {'type': 'file_storage_backend', 'component': {'path': '/var/lib/vm/root.raw',"
    "     'readonly': false, 'block_size': 512}},"
    "  'nvme0': {'type': 'nvme_disk', 'component': {'backend_id': 'data',"
    "     'pci_path': {'bus': 0, 'device': 5, 'function': 0},"
    "     'serial_number': [110,118,109,101,48,32,32,32,32,32,32,32,32,32,32,32,32,32,32,32]}},"
    "  'data': {'type': 'nbd_storage_backend', 'component': {'uri': 'nbd://127.0.0.1:10809/data',"
    "     'readonly': false}},"
    "  'net0': {'type': 'virtio_nic', 'component': {'backend_id': 'net0-be',"
    "     'interface_id': '6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f',"
    "     'pci_path': {'bus': 1, 'device': 0, 'function': 0}}},"
    "  'net0-be': {'type': 'virtio_network_backend', 'component': {'vnic_name': 'tap0'}},"
    "  'com1': {'type': 'serial_port', 'component': {'num': 'com1'}},"
    "  'pvpanic': {'type': 'qemu_pvpanic', 'component': {'enable_isa': true}},"
    "  'boot': {'type': 'boot_settings', 'component': {'order': [{'id': 'disk0'}]}},"
    "  'bridge0': {'type': 'pci_pci_bridge', 'component': {'downstream_bus': 1,"
    "     'pci_path': {'bus': 0, 'device': 7, 'function': 0}}}"
    " }}";

/* Returns a JSON value from single-quoted text; aborts on bad fixtures. */
static inline json_t *fixture_json(const char *text)
{
    char *t = strdup(text);
    for (char *c = t; *c; c++) {
        if (*c == '\'')
            *c = '"';
    }
    json_error_t e;
    json_t *j = json_loads(t, JSON_DECODE_ANY, &e);
    free(t);
    if (!j)
        abort();
    return j;
}

/*
 * Sets (or with value NULL deletes) the member at pointer `ptr`, creating
 * objects on the way. Array indices are supported for existing elements.
 * Steals `value`.
 */
static inline void fixture_set(json_t *doc, const char *ptr, json_t *value)
{
    char *path = strdup(ptr + 1);
    json_t *cur = doc;
    char *save = NULL;
    char *tok = strtok_r(path, "/", &save);
    while (tok) {
        char *next = strtok_r(NULL, "/", &save);
        if (!next) {
            if (json_is_array(cur)) {
                size_t i = strtoul(tok, NULL, 10);
                if (value)
                    json_array_set_new(cur, i, value);
                else
                    json_array_remove(cur, i);
            } else if (value) {
                json_object_set_new(cur, tok, value);
            } else {
                json_object_del(cur, tok);
            }
            break;
        }
        json_t *child = json_is_array(cur) ? json_array_get(cur, strtoul(tok, NULL, 10))
                                           : json_object_get(cur, tok);
        if (!child) {
            child = json_object();
            json_object_set_new(cur, tok, child);
        }
        cur = child;
        tok = next;
    }
    free(path);
}

#endif
