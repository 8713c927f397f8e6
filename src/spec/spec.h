/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The instance spec: the complete description of a VM, as Propolis's API
 * (v5) defines it, plus cella's own additions.
 *
 * A spec is a board (vCPUs, memory, chipset, hypervisor interface, CPUID),
 * optional SMBIOS type 1 strings, and a map of named components. A
 * component is a device (what the guest sees) or a backend (what the host
 * provides); devices name their backend by key.
 *
 * Every component kind is described by a table of fields (kind.c), and the
 * JSON codec, copy, equality, free and guest-visible diff all walk those
 * tables, so a new field is one table row. Each field carries the spec
 * version that introduced it and the value an older spec implies (see
 * docs/spec.md, "Evolving the spec").
 *
 * Invariants of a decoded `struct instance_spec`:
 *  - components are sorted by key (strcmp), keys are unique and non-empty;
 *  - every string is NUL-terminated, heap-owned by the spec;
 *  - nothing has been validated beyond types and ranges of single fields:
 *    cross-field rules live in spec_validate().
 */
#ifndef CELLA_SPEC_SPEC_H
#define CELLA_SPEC_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/jsonptr.h"

/* The spec version this build writes in the migration wire form. */
#define SPEC_VERSION_CURRENT 2
/* The oldest wire-form version this build still reads. */
#define SPEC_VERSION_OLDEST 1

/* Limits on what a client may send. */
#define SPEC_MAX_COMPONENTS    256
#define SPEC_MAX_KEY_LEN       128
#define SPEC_MAX_CPUID_ENTRIES 512
#define SPEC_MAX_STRING        4096
#define SPEC_MAX_BOOT_ENTRIES  64
#define SPEC_MAX_BLOB_BASE64   (64u << 20)
#define SPEC_NVME_SERIAL_LEN   20

struct pci_path {
    uint8_t bus, device, function;
};

enum cpuid_vendor { CPUID_VENDOR_AMD, CPUID_VENDOR_INTEL };

struct cpuid_entry {
    uint32_t leaf;
    bool has_subleaf;
    uint32_t subleaf;
    uint32_t eax, ebx, ecx, edx;
};

struct spec_cpuid {
    enum cpuid_vendor vendor;
    size_t count;
    struct cpuid_entry *entries;
};

enum guest_hv { GUEST_HV_BHYVE, GUEST_HV_HYPER_V };
#define HYPERV_FEAT_REFERENCE_TSC (1u << 0)

struct spec_board {
    uint8_t cpus;
    uint64_t memory_mb;
    bool enable_pcie; /* chipset i440_fx is the only chipset */
    enum guest_hv hv;
    uint32_t hyperv_features; /* HYPERV_FEAT_* when hv == GUEST_HV_HYPER_V */
    bool has_cpuid;
    struct spec_cpuid cpuid;
};

struct spec_smbios {
    char *manufacturer;
    char *product_name;
    char *serial_number;
    uint64_t version;
};

enum spec_kind {
    /* devices */
    SK_VIRTIO_DISK,
    SK_NVME_DISK,
    SK_VIRTIO_NIC,
    SK_SERIAL_PORT,
    SK_PCI_PCI_BRIDGE,
    SK_QEMU_PVPANIC,
    SK_BOOT_SETTINGS,
    SK_VIRTIO_SOCKET,
    SK_SOFT_NPU_PCI_PORT,
    SK_SOFT_NPU_PORT,
    SK_SOFT_NPU_P9,
    SK_P9FS,
    SK_MIGRATION_FAILURE_INJECTOR,
    /* backends */
    SK_CRUCIBLE_STORAGE_BACKEND,
    SK_FILE_STORAGE_BACKEND,
    SK_BLOB_STORAGE_BACKEND,
    SK_VIRTIO_NETWORK_BACKEND,
    SK_DLPI_NETWORK_BACKEND,
    SK_NBD_STORAGE_BACKEND, /* cella's own */
    SK__COUNT
};

struct opt_u64 {
    bool present;
    uint64_t value;
};

struct opt_mac {
    bool present;
    uint8_t bytes[6];
};

struct boot_order {
    size_t count;
    char **ids; /* component keys, in boot order */
};

/* One struct per kind; field tables in kind.c describe them. */
struct c_virtio_disk {
    char *backend_id;
    struct pci_path pci_path;
};
struct c_nvme_disk {
    char *backend_id;
    struct pci_path pci_path;
    uint8_t serial_number[SPEC_NVME_SERIAL_LEN];
    /* cella, spec v2: byte that pads Identify strings (model, firmware). */
    uint8_t string_pad;
};
struct c_virtio_nic {
    char *backend_id;
    char *interface_id; /* UUID */
    struct pci_path pci_path;
    struct opt_mac mac; /* cella: guest-visible MAC; filled in when absent */
};
struct c_serial_port {
    uint8_t num; /* 1..4 for com1..com4 */
};
struct c_pci_pci_bridge {
    uint8_t downstream_bus;
    struct pci_path pci_path;
};
struct c_qemu_pvpanic {
    bool enable_isa;
};
struct c_boot_settings {
    struct boot_order order;
};
struct c_virtio_socket {
    uint64_t guest_cid;
    struct pci_path pci_path;
};
struct c_soft_npu_pci_port {
    struct pci_path pci_path;
};
struct c_soft_npu_port {
    char *backend_id;
    char *link_name;
};
struct c_soft_npu_p9 {
    struct pci_path pci_path;
};
struct c_p9fs {
    uint32_t chunk_size;
    struct pci_path pci_path;
    char *source;
    char *target;
};
struct c_migration_failure_injector {
    uint32_t fail_exports;
    uint32_t fail_imports;
};
struct c_crucible_storage_backend {
    bool readonly;
    char *request_json;
};
struct c_file_storage_backend {
    uint32_t block_size;
    char *path;
    bool readonly;
    struct opt_u64 workers;
};
struct c_blob_storage_backend {
    char *base64;
    bool readonly;
};
struct c_virtio_network_backend {
    char *vnic_name;
};
struct c_dlpi_network_backend {
    char *vnic_name;
};
struct c_nbd_storage_backend {
    char *uri;
    bool readonly;
};

struct spec_component {
    char *key;
    enum spec_kind kind;
    union {
        struct c_virtio_disk virtio_disk;
        struct c_nvme_disk nvme_disk;
        struct c_virtio_nic virtio_nic;
        struct c_serial_port serial_port;
        struct c_pci_pci_bridge pci_pci_bridge;
        struct c_qemu_pvpanic qemu_pvpanic;
        struct c_boot_settings boot_settings;
        struct c_virtio_socket virtio_socket;
        struct c_soft_npu_pci_port soft_npu_pci_port;
        struct c_soft_npu_port soft_npu_port;
        struct c_soft_npu_p9 soft_npu_p9;
        struct c_p9fs p9fs;
        struct c_migration_failure_injector migration_failure_injector;
        struct c_crucible_storage_backend crucible_storage_backend;
        struct c_file_storage_backend file_storage_backend;
        struct c_blob_storage_backend blob_storage_backend;
        struct c_virtio_network_backend virtio_network_backend;
        struct c_dlpi_network_backend dlpi_network_backend;
        struct c_nbd_storage_backend nbd_storage_backend;
    } u;
};

struct instance_spec {
    struct spec_board board;
    bool has_smbios;
    struct spec_smbios smbios;
    size_t count;
    struct spec_component *components; /* sorted by key */
};

/* How a spec is written out. */
enum spec_encoding {
    /*
     * Propolis's API shape: optional fields that hold their default are
     * left out (guest_hv_interface when bhyve, cella's additions when they
     * hold the default), so bodies stay valid against Propolis's schema.
     */
    SPEC_ENC_API,
    /* Every field explicit, for the migration wire form and hashing. */
    SPEC_ENC_FULL,
};

/* ---- kinds ---- */

/* "virtio_disk", ... as in the JSON "type" tag. */
const char *spec_kind_name(enum spec_kind k);
/* Kind from its JSON tag; -ENOENT when unknown. */
int spec_kind_from_name(const char *name, enum spec_kind *out);
bool spec_kind_is_backend(enum spec_kind k);
static inline bool spec_kind_is_device(enum spec_kind k)
{
    return !spec_kind_is_backend(k);
}
/* Disk devices (the only kinds a boot entry may name). */
bool spec_kind_is_disk(enum spec_kind k);
bool spec_kind_is_storage_backend(enum spec_kind k);
bool spec_kind_is_network_backend(enum spec_kind k);
/*
 * NULL when this build can provide the kind; otherwise a sentence saying why
 * not and what to use instead.
 */
const char *spec_kind_unsupported_reason(enum spec_kind k);

/* The backend key a device refers to, or NULL for kinds with none. */
const char *spec_component_backend_id(const struct spec_component *c);
/* The PCI path of a device, or NULL for kinds not on PCI. */
const struct pci_path *spec_component_pci_path(const struct spec_component *c);

/* ---- lifetime ---- */

void spec_init(struct instance_spec *s);
/* Frees everything the spec owns and re-initialises it; accepts NULL. */
void spec_free(struct instance_spec *s);
void spec_component_free(struct spec_component *c);
/* Deep copies; dst must be uninitialised or freed. -ENOMEM on failure. */
int spec_copy(struct instance_spec *dst, const struct instance_spec *src);
int spec_component_copy(struct spec_component *dst, const struct spec_component *src);
bool spec_equal(const struct instance_spec *a, const struct instance_spec *b);
bool spec_component_equal(const struct spec_component *a, const struct spec_component *b);

/* Component by key, or NULL. O(log n). */
const struct spec_component *spec_find(const struct instance_spec *s, const char *key);
struct spec_component *spec_find_mut(struct instance_spec *s, const char *key);
/*
 * Inserts c (taking ownership of its contents on success) keeping the order.
 * -EEXIST if the key is present, -E2BIG over SPEC_MAX_COMPONENTS.
 */
int spec_insert(struct instance_spec *s, struct spec_component *c);

/* Formats a PCI path as "bus.device.function". */
void pci_path_format(const struct pci_path *p, char out[12]);

#endif
