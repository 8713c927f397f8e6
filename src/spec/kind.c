/* SPDX-License-Identifier: MPL-2.0 */
#include "spec/spec.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "spec/kind_table.h"

#define OFF(kind, member) offsetof(struct kind, member)

/* clang-format off */
#define FIELD(kind, member, type, flags) \
    { #member, type, OFF(kind, member), flags, 1, 0, 0, 0, 0 }
#define FIELD_R(kind, member, type, flags, lo, hi) \
    { #member, type, OFF(kind, member), flags, 1, 0, 0, lo, hi }

static const struct field_desc f_virtio_disk[] = {
    FIELD(c_virtio_disk, backend_id, FT_KEY, 0),
    FIELD(c_virtio_disk, pci_path, FT_PCI, F_GUEST),
};
static const struct field_desc f_nvme_disk[] = {
    FIELD(c_nvme_disk, backend_id, FT_KEY, 0),
    FIELD(c_nvme_disk, pci_path, FT_PCI, F_GUEST),
    FIELD(c_nvme_disk, serial_number, FT_SERIAL20, F_GUEST),
    /*
     * Spec v2. Propolis pads the NVMe Identify strings with NUL bytes
     * (its issue #790); NVMe 1.2+ wants spaces. A v1 spec keeps what its
     * guest saw (NUL); a spec without the field today gets spaces.
     */
    { "string_pad", FT_U8, OFF(c_nvme_disk, string_pad),
      F_OPTIONAL | F_GUEST | F_EXT, 2, ' ', 0, 0, 0 },
};
static const struct field_desc f_virtio_nic[] = {
    FIELD(c_virtio_nic, backend_id, FT_KEY, 0),
    FIELD(c_virtio_nic, interface_id, FT_UUID, 0),
    FIELD(c_virtio_nic, pci_path, FT_PCI, F_GUEST),
    FIELD(c_virtio_nic, mac, FT_OPT_MAC, F_OPTIONAL | F_GUEST | F_EXT),
};
static const struct field_desc f_serial_port[] = {
    FIELD(c_serial_port, num, FT_COM, F_GUEST),
};
static const struct field_desc f_pci_pci_bridge[] = {
    FIELD(c_pci_pci_bridge, downstream_bus, FT_U8, F_GUEST),
    FIELD(c_pci_pci_bridge, pci_path, FT_PCI, F_GUEST),
};
static const struct field_desc f_qemu_pvpanic[] = {
    FIELD(c_qemu_pvpanic, enable_isa, FT_BOOL, F_GUEST),
};
static const struct field_desc f_boot_settings[] = {
    FIELD(c_boot_settings, order, FT_BOOT_ORDER, F_GUEST),
};
static const struct field_desc f_virtio_socket[] = {
    FIELD(c_virtio_socket, guest_cid, FT_U64, F_GUEST),
    FIELD(c_virtio_socket, pci_path, FT_PCI, F_GUEST),
};
static const struct field_desc f_soft_npu_pci_port[] = {
    FIELD(c_soft_npu_pci_port, pci_path, FT_PCI, F_GUEST),
};
static const struct field_desc f_soft_npu_port[] = {
    FIELD(c_soft_npu_port, backend_id, FT_KEY, 0),
    FIELD(c_soft_npu_port, link_name, FT_STR, F_GUEST),
};
static const struct field_desc f_soft_npu_p9[] = {
    FIELD(c_soft_npu_p9, pci_path, FT_PCI, F_GUEST),
};
static const struct field_desc f_p9fs[] = {
    FIELD(c_p9fs, chunk_size, FT_U32, F_GUEST),
    FIELD(c_p9fs, pci_path, FT_PCI, F_GUEST),
    FIELD(c_p9fs, source, FT_STR, 0),
    FIELD(c_p9fs, target, FT_STR, F_GUEST),
};
static const struct field_desc f_migration_failure_injector[] = {
    FIELD(c_migration_failure_injector, fail_exports, FT_U32, 0),
    FIELD(c_migration_failure_injector, fail_imports, FT_U32, 0),
};
static const struct field_desc f_crucible_storage_backend[] = {
    FIELD(c_crucible_storage_backend, readonly, FT_BOOL, F_GUEST),
    FIELD(c_crucible_storage_backend, request_json, FT_STR, 0),
};
static const struct field_desc f_file_storage_backend[] = {
    FIELD(c_file_storage_backend, block_size, FT_U32, F_GUEST),
    FIELD(c_file_storage_backend, path, FT_STR, 0),
    FIELD(c_file_storage_backend, readonly, FT_BOOL, F_GUEST),
    FIELD_R(c_file_storage_backend, workers, FT_OPT_U64, F_OPTIONAL, 1, 0),
};
static const struct field_desc f_blob_storage_backend[] = {
    FIELD(c_blob_storage_backend, base64, FT_BASE64, 0),
    FIELD(c_blob_storage_backend, readonly, FT_BOOL, F_GUEST),
};
static const struct field_desc f_virtio_network_backend[] = {
    FIELD(c_virtio_network_backend, vnic_name, FT_STR, 0),
};
static const struct field_desc f_dlpi_network_backend[] = {
    FIELD(c_dlpi_network_backend, vnic_name, FT_STR, 0),
};
static const struct field_desc f_nbd_storage_backend[] = {
    FIELD(c_nbd_storage_backend, uri, FT_STR, 0),
    FIELD(c_nbd_storage_backend, readonly, FT_BOOL, F_GUEST),
};

#define KIND(tag, table, repl, cls, why) \
    [tag] = { .replace_name = repl, .class_bits = cls, .since = 1, .unsupported = why, \
              .fields = table, .nfields = sizeof(table) / sizeof(table[0]) }

static const char no_falcon[] =
    "is an illumos/Falcon-only device that cella does not provide";

const struct kind_desc spec_kinds[SK__COUNT] = {
    KIND(SK_VIRTIO_DISK, f_virtio_disk, NULL, KC_DISK, NULL),
    KIND(SK_NVME_DISK, f_nvme_disk, NULL, KC_DISK, NULL),
    KIND(SK_VIRTIO_NIC, f_virtio_nic, NULL, KC_NIC, NULL),
    KIND(SK_SERIAL_PORT, f_serial_port, NULL, 0, NULL),
    KIND(SK_PCI_PCI_BRIDGE, f_pci_pci_bridge, NULL, 0, NULL),
    KIND(SK_QEMU_PVPANIC, f_qemu_pvpanic, NULL, 0, NULL),
    KIND(SK_BOOT_SETTINGS, f_boot_settings, NULL, 0, NULL),
    KIND(SK_VIRTIO_SOCKET, f_virtio_socket, NULL, 0,
         "is not provided by this build of cella yet (no vhost-vsock device); "
         "remove it from the spec"),
    KIND(SK_SOFT_NPU_PCI_PORT, f_soft_npu_pci_port, NULL, 0, no_falcon),
    KIND(SK_SOFT_NPU_PORT, f_soft_npu_port, NULL, 0, no_falcon),
    KIND(SK_SOFT_NPU_P9, f_soft_npu_p9, NULL, 0, no_falcon),
    KIND(SK_P9FS, f_p9fs, NULL, 0,
         "is a Falcon-only 9P share that cella does not provide; "
         "use a virtio_disk with a file_storage_backend to give the guest files"),
    KIND(SK_MIGRATION_FAILURE_INJECTOR, f_migration_failure_injector, "MigrationFailureInjector", 0, NULL),
    KIND(SK_CRUCIBLE_STORAGE_BACKEND, f_crucible_storage_backend, "CrucibleStorageBackend", KC_BACKEND | KC_STORAGE,
         "needs Oxide's Crucible, which cella does not include; "
         "use nbd_storage_backend for network storage or file_storage_backend for a local file"),
    KIND(SK_FILE_STORAGE_BACKEND, f_file_storage_backend, "FileStorageBackend", KC_BACKEND | KC_STORAGE, NULL),
    KIND(SK_BLOB_STORAGE_BACKEND, f_blob_storage_backend, "BlobStorageBackend", KC_BACKEND | KC_STORAGE, NULL),
    KIND(SK_VIRTIO_NETWORK_BACKEND, f_virtio_network_backend, "VirtioNetworkBackend", KC_BACKEND | KC_NETWORK, NULL),
    KIND(SK_DLPI_NETWORK_BACKEND, f_dlpi_network_backend, NULL, KC_BACKEND | KC_NETWORK,
         "is an illumos DLPI link, which Linux does not have; "
         "use virtio_network_backend with a tap interface name"),
    KIND(SK_NBD_STORAGE_BACKEND, f_nbd_storage_backend, "NbdStorageBackend", KC_BACKEND | KC_STORAGE, NULL),
};
/* clang-format on */

static const char *const kind_names[SK__COUNT] = {
    [SK_VIRTIO_DISK] = "virtio_disk",
    [SK_NVME_DISK] = "nvme_disk",
    [SK_VIRTIO_NIC] = "virtio_nic",
    [SK_SERIAL_PORT] = "serial_port",
    [SK_PCI_PCI_BRIDGE] = "pci_pci_bridge",
    [SK_QEMU_PVPANIC] = "qemu_pvpanic",
    [SK_BOOT_SETTINGS] = "boot_settings",
    [SK_VIRTIO_SOCKET] = "virtio_socket",
    [SK_SOFT_NPU_PCI_PORT] = "soft_npu_pci_port",
    [SK_SOFT_NPU_PORT] = "soft_npu_port",
    [SK_SOFT_NPU_P9] = "soft_npu_p9",
    [SK_P9FS] = "p9fs",
    [SK_MIGRATION_FAILURE_INJECTOR] = "migration_failure_injector",
    [SK_CRUCIBLE_STORAGE_BACKEND] = "crucible_storage_backend",
    [SK_FILE_STORAGE_BACKEND] = "file_storage_backend",
    [SK_BLOB_STORAGE_BACKEND] = "blob_storage_backend",
    [SK_VIRTIO_NETWORK_BACKEND] = "virtio_network_backend",
    [SK_DLPI_NETWORK_BACKEND] = "dlpi_network_backend",
    [SK_NBD_STORAGE_BACKEND] = "nbd_storage_backend",
};

const char *spec_kind_name(enum spec_kind k)
{
    return (unsigned)k < SK__COUNT ? kind_names[k] : "unknown";
}

int spec_kind_from_name(const char *name, enum spec_kind *out)
{
    for (unsigned k = 0; k < SK__COUNT; k++) {
        if (strcmp(kind_names[k], name) == 0) {
            *out = (enum spec_kind)k;
            return 0;
        }
    }
    return -ENOENT;
}

bool spec_kind_is_backend(enum spec_kind k)
{
    return spec_kinds[k].class_bits & KC_BACKEND;
}

bool spec_kind_is_disk(enum spec_kind k)
{
    return spec_kinds[k].class_bits & KC_DISK;
}

bool spec_kind_is_storage_backend(enum spec_kind k)
{
    return spec_kinds[k].class_bits & KC_STORAGE;
}

bool spec_kind_is_network_backend(enum spec_kind k)
{
    return spec_kinds[k].class_bits & KC_NETWORK;
}

const char *spec_kind_unsupported_reason(enum spec_kind k)
{
    return spec_kinds[k].unsupported;
}

uint64_t field_type_max(const struct field_desc *f)
{
    switch (f->type) {
    case FT_U8:
        return UINT8_MAX;
    case FT_U32:
        return UINT32_MAX;
    default:
        return UINT64_MAX;
    }
}

const char *spec_component_backend_id(const struct spec_component *c)
{
    switch (c->kind) {
    case SK_VIRTIO_DISK:
        return c->u.virtio_disk.backend_id;
    case SK_NVME_DISK:
        return c->u.nvme_disk.backend_id;
    case SK_VIRTIO_NIC:
        return c->u.virtio_nic.backend_id;
    case SK_SOFT_NPU_PORT:
        return c->u.soft_npu_port.backend_id;
    default:
        return NULL;
    }
}

const struct pci_path *spec_component_pci_path(const struct spec_component *c)
{
    const struct kind_desc *kd = &spec_kinds[c->kind];
    for (size_t i = 0; i < kd->nfields; i++) {
        if (kd->fields[i].type == FT_PCI)
            return field_cptr(c, &kd->fields[i]);
    }
    return NULL;
}

void pci_path_format(const struct pci_path *p, char out[12])
{
    snprintf(out, 12, "%u.%u.%u", p->bus, p->device, p->function);
}
