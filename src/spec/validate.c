/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Cross-field validation of an instance spec and the host-support check.
 *
 * Every rule records its violation and the walk goes on, so one call
 * reports everything wrong with a spec. docs/spec.md lists the rules.
 */
#include "spec/validate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spec/kind_table.h"

/* Pointer to /components/<key>[/component[/<field>]]. */
static void comp_ptr(struct jptr *p, const struct spec_component *c, const char *field)
{
    struct jptr root, comps;
    jptr_root(&root);
    jptr_key(&comps, &root, "components");
    jptr_key(p, &comps, c->key);
    if (field) {
        jptr_key(p, p, "component");
        jptr_key(p, p, field);
    }
}

static void board_ptr(struct jptr *p, const char *field)
{
    struct jptr root;
    jptr_root(&root);
    jptr_key(p, &root, "board");
    if (field)
        jptr_key(p, p, field);
}

static int check_board(const struct spec_board *b, struct cella_errors *errs)
{
    struct jptr p;
    int r = 0;
    if (b->cpus == 0) {
        board_ptr(&p, "cpus");
        r = cella_err(errs, -EINVAL, p.buf, "a VM needs at least one vCPU");
    }
    if (b->memory_mb == 0 || b->memory_mb > SPEC_MAX_MEMORY_MB) {
        board_ptr(&p, "memory_mb");
        r = cella_err(errs, -EINVAL, p.buf, "memory must be from 1 to %u MiB, not %llu",
                      SPEC_MAX_MEMORY_MB, (unsigned long long)b->memory_mb);
    }
    return r;
}

static bool leaf_in_range(uint32_t leaf)
{
    return leaf <= 0xffff || (leaf >= 0x80000000u && leaf <= 0x8000ffffu);
}

static int check_cpuid(const struct spec_board *b, struct cella_errors *errs)
{
    if (!b->has_cpuid)
        return 0;
    int r = 0;
    struct jptr entries;
    board_ptr(&entries, "cpuid");
    jptr_key(&entries, &entries, "entries");
    for (size_t i = 0; i < b->cpuid.count; i++) {
        const struct cpuid_entry *e = &b->cpuid.entries[i];
        struct jptr p;
        jptr_index(&p, &entries, i);
        if (!leaf_in_range(e->leaf)) {
            jptr_key(&p, &p, "leaf");
            r = cella_err(errs, -EINVAL, p.buf,
                          "leaf 0x%x is outside the standard (0-0xffff) and extended "
                          "(0x80000000-0x8000ffff) ranges",
                          e->leaf);
            continue;
        }
        for (size_t k = 0; k < i; k++) {
            const struct cpuid_entry *o = &b->cpuid.entries[k];
            if (o->leaf != e->leaf)
                continue;
            if (o->has_subleaf != e->has_subleaf) {
                r = cella_err(errs, -EINVAL, p.buf,
                              "leaf 0x%x appears both with and without a subleaf (entry %zu)",
                              e->leaf, k);
                break;
            }
            if (!e->has_subleaf || o->subleaf == e->subleaf) {
                r = cella_err(errs, -EINVAL, p.buf, "duplicate CPUID leaf 0x%x%s (entry %zu)",
                              e->leaf, e->has_subleaf ? " with the same subleaf" : "", k);
                break;
            }
        }
    }
    return r;
}

/* ---- PCI ---- */

static bool is_bridge_bus(const struct instance_spec *s, uint8_t bus)
{
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        if (c->kind == SK_PCI_PCI_BRIDGE && c->u.pci_pci_bridge.downstream_bus == bus)
            return true;
    }
    return false;
}

static int check_pci_path(const struct instance_spec *s, const struct spec_component *c,
                          const struct pci_path *pp, struct cella_errors *errs)
{
    struct jptr p;
    comp_ptr(&p, c, "pci_path");
    int r = 0;
    char where[12];
    pci_path_format(pp, where);
    if (pp->device >= 32)
        r = cella_err(errs, -EINVAL, p.buf, "PCI device number %u is over 31", pp->device);
    if (pp->function >= 8)
        r = cella_err(errs, -EINVAL, p.buf, "PCI function number %u is over 7", pp->function);
    if (pp->bus != 0 && !is_bridge_bus(s, pp->bus))
        r = cella_err(errs, -EINVAL, p.buf,
                      "bus %u does not exist: no pci_pci_bridge has it as downstream_bus", pp->bus);
    if (pp->bus == 0 && pp->device <= 1)
        r = cella_err(errs, -EINVAL, p.buf,
                      "%s is taken by the i440FX chipset (host bridge at 0.0.0, "
                      "PIIX3 functions at 0.1.x)",
                      where);
    return r;
}

static int check_pci(const struct instance_spec *s, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        const struct pci_path *pp = spec_component_pci_path(c);
        if (!pp)
            continue;
        if (check_pci_path(s, c, pp, errs) < 0)
            r = -EINVAL;
        struct jptr p;
        comp_ptr(&p, c, "pci_path");
        char where[12];
        pci_path_format(pp, where);
        bool has_fn0 = pp->function == 0;
        for (size_t k = 0; k < s->count; k++) {
            const struct spec_component *o = &s->components[k];
            const struct pci_path *op = spec_component_pci_path(o);
            if (!op || op->bus != pp->bus || op->device != pp->device)
                continue;
            if (op->function == 0)
                has_fn0 = true;
            if (k < i && op->function == pp->function)
                r = cella_err(errs, -EINVAL, p.buf, "PCI path %s is already used by \"%s\"", where,
                              o->key);
        }
        if (!has_fn0)
            r = cella_err(errs, -EINVAL, p.buf,
                          "function %u at %u.%u needs a device at function 0 (guests probe "
                          "function 0 first)",
                          pp->function, pp->bus, pp->device);
    }
    return r;
}

static int check_bridges(const struct instance_spec *s, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        if (c->kind != SK_PCI_PCI_BRIDGE)
            continue;
        const struct c_pci_pci_bridge *b = &c->u.pci_pci_bridge;
        struct jptr p;
        comp_ptr(&p, c, "downstream_bus");
        if (b->downstream_bus == 0)
            r = cella_err(errs, -EINVAL, p.buf, "bus 0 is the root bus; pick another number");
        else if (b->downstream_bus == b->pci_path.bus)
            r = cella_err(errs, -EINVAL, p.buf, "a bridge cannot sit on its own downstream bus %u",
                          b->downstream_bus);
        for (size_t k = 0; k < i; k++) {
            const struct spec_component *o = &s->components[k];
            if (o->kind == SK_PCI_PCI_BRIDGE &&
                o->u.pci_pci_bridge.downstream_bus == b->downstream_bus && b->downstream_bus)
                r = cella_err(errs, -EINVAL, p.buf,
                              "downstream bus %u is already the bus of bridge \"%s\"",
                              b->downstream_bus, o->key);
        }
    }
    return r;
}

/* ---- devices and backends ---- */

static bool backend_fits(enum spec_kind dev, enum spec_kind be)
{
    switch (dev) {
    case SK_VIRTIO_DISK:
    case SK_NVME_DISK:
        return spec_kind_is_storage_backend(be);
    case SK_VIRTIO_NIC:
        return be == SK_VIRTIO_NETWORK_BACKEND || be == SK_DLPI_NETWORK_BACKEND;
    case SK_SOFT_NPU_PORT:
        return be == SK_DLPI_NETWORK_BACKEND;
    default:
        return false;
    }
}

static const char *wanted_backend(enum spec_kind dev)
{
    return dev == SK_SOFT_NPU_PORT ? "a dlpi_network_backend"
           : dev == SK_VIRTIO_NIC  ? "a network backend"
                                   : "a storage backend";
}

static int check_backend_refs(const struct instance_spec *s, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        const char *id = spec_component_backend_id(c);
        if (!id)
            continue;
        struct jptr p;
        comp_ptr(&p, c, "backend_id");
        const struct spec_component *be = spec_find(s, id);
        if (strcmp(id, c->key) == 0) {
            r = cella_err(errs, -EINVAL, p.buf,
                          "a device and its backend cannot share the key \"%s\"", id);
        } else if (!be) {
            r = cella_err(errs, -EINVAL, p.buf, "backend \"%s\" does not exist", id);
        } else if (!spec_kind_is_backend(be->kind)) {
            r = cella_err(errs, -EINVAL, p.buf, "\"%s\" is a %s device, not a backend", id,
                          spec_kind_name(be->kind));
        } else if (!backend_fits(c->kind, be->kind)) {
            r = cella_err(errs, -EINVAL, p.buf, "a %s needs %s, but \"%s\" is a %s",
                          spec_kind_name(c->kind), wanted_backend(c->kind), id,
                          spec_kind_name(be->kind));
        }
        for (size_t k = 0; k < i; k++) {
            const char *oid = spec_component_backend_id(&s->components[k]);
            if (oid && strcmp(oid, id) == 0)
                r = cella_err(errs, -EINVAL, p.buf, "backend \"%s\" is already used by \"%s\"", id,
                              s->components[k].key);
        }
    }
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *be = &s->components[i];
        if (!spec_kind_is_backend(be->kind))
            continue;
        bool used = false;
        for (size_t k = 0; k < s->count && !used; k++) {
            const char *id = spec_component_backend_id(&s->components[k]);
            used = id && strcmp(id, be->key) == 0;
        }
        if (!used) {
            struct jptr p;
            comp_ptr(&p, be, NULL);
            r = cella_err(errs, -EINVAL, p.buf, "backend \"%s\" is not used by any device",
                          be->key);
        }
    }
    return r;
}

static int check_singletons(const struct instance_spec *s, struct cella_errors *errs)
{
    static const enum spec_kind once[] = {SK_QEMU_PVPANIC, SK_VIRTIO_SOCKET,
                                          SK_MIGRATION_FAILURE_INJECTOR, SK_BOOT_SETTINGS};
    int r = 0;
    for (size_t k = 0; k < sizeof(once) / sizeof(once[0]); k++) {
        const struct spec_component *first = NULL;
        for (size_t i = 0; i < s->count; i++) {
            const struct spec_component *c = &s->components[i];
            if (c->kind != once[k])
                continue;
            if (!first) {
                first = c;
                continue;
            }
            struct jptr p;
            comp_ptr(&p, c, NULL);
            r = cella_err(errs, -EINVAL, p.buf, "only one %s is allowed; \"%s\" is one already",
                          spec_kind_name(c->kind), first->key);
        }
    }
    return r;
}

static int check_serial_ports(const struct instance_spec *s, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        if (c->kind != SK_SERIAL_PORT)
            continue;
        for (size_t k = 0; k < i; k++) {
            const struct spec_component *o = &s->components[k];
            if (o->kind == SK_SERIAL_PORT && o->u.serial_port.num == c->u.serial_port.num) {
                struct jptr p;
                comp_ptr(&p, c, "num");
                r = cella_err(errs, -EINVAL, p.buf, "com%u is already \"%s\"", c->u.serial_port.num,
                              o->key);
            }
        }
    }
    return r;
}

static int check_boot(const struct instance_spec *s, const struct spec_component *c,
                      struct cella_errors *errs)
{
    const struct boot_order *b = &c->u.boot_settings.order;
    struct jptr order;
    comp_ptr(&order, c, "order");
    int r = 0;
    for (size_t i = 0; i < b->count; i++) {
        struct jptr p;
        jptr_index(&p, &order, i);
        jptr_key(&p, &p, "id");
        const struct spec_component *t = b->ids[i] ? spec_find(s, b->ids[i]) : NULL;
        if (!t)
            r = cella_err(errs, -EINVAL, p.buf, "boot entry \"%s\" does not exist",
                          b->ids[i] ? b->ids[i] : "");
        else if (!spec_kind_is_disk(t->kind))
            r = cella_err(errs, -EINVAL, p.buf, "boot entry \"%s\" is a %s, not a disk device",
                          t->key, spec_kind_name(t->kind));
        for (size_t k = 0; k < i && b->ids[i]; k++) {
            if (b->ids[k] && strcmp(b->ids[k], b->ids[i]) == 0)
                r = cella_err(errs, -EINVAL, p.buf, "\"%s\" is already boot entry %zu", b->ids[i],
                              k);
        }
    }
    return r;
}

static int check_nvme(const struct instance_spec *s, const struct spec_component *c,
                      struct cella_errors *errs)
{
    const struct c_nvme_disk *d = &c->u.nvme_disk;
    struct jptr p;
    int r = 0;
    comp_ptr(&p, c, "serial_number");
    for (size_t i = 0; i < SPEC_NVME_SERIAL_LEN; i++) {
        uint8_t b = d->serial_number[i];
        if (b != 0 && (b < 0x20 || b > 0x7e)) {
            r = cella_err(errs, -EINVAL, p.buf,
                          "byte %zu (0x%02x) is not printable ASCII; NVMe serial numbers are "
                          "ASCII text",
                          i, b);
            break;
        }
    }
    for (size_t k = 0; k < s->count; k++) {
        const struct spec_component *o = &s->components[k];
        if (o != c && o->kind == SK_NVME_DISK && o->key && strcmp(o->key, c->key) < 0 &&
            !memcmp(o->u.nvme_disk.serial_number, d->serial_number, SPEC_NVME_SERIAL_LEN))
            r = cella_err(errs, -EINVAL, p.buf,
                          "serial number is the same as \"%s\"'s; guests merge or reject "
                          "NVMe controllers with equal serials",
                          o->key);
    }
    if (d->string_pad != 0x00 && d->string_pad != 0x20) {
        comp_ptr(&p, c, "string_pad");
        r = cella_err(errs, -EINVAL, p.buf,
                      "must be 32 (space, as NVMe 1.2+ wants) or 0 (NUL, older cella/Propolis)");
    }
    return r;
}

static int check_nic(const struct instance_spec *s, const struct spec_component *c,
                     struct cella_errors *errs)
{
    const struct c_virtio_nic *n = &c->u.virtio_nic;
    struct jptr p;
    int r = 0;
    if (n->mac.present) {
        comp_ptr(&p, c, "mac");
        static const uint8_t zero[6];
        if (n->mac.bytes[0] & 1)
            r = cella_err(errs, -EINVAL, p.buf, "is a multicast address; a NIC needs unicast");
        else if (!memcmp(n->mac.bytes, zero, 6))
            r = cella_err(errs, -EINVAL, p.buf, "must not be all zeros");
    }
    for (size_t k = 0; k < s->count; k++) {
        const struct spec_component *o = &s->components[k];
        if (o->kind != SK_VIRTIO_NIC || strcmp(o->key, c->key) >= 0)
            continue;
        const struct c_virtio_nic *m = &o->u.virtio_nic;
        if (n->mac.present && m->mac.present && !memcmp(n->mac.bytes, m->mac.bytes, 6)) {
            comp_ptr(&p, c, "mac");
            r = cella_err(errs, -EINVAL, p.buf, "MAC address is also \"%s\"'s", o->key);
        }
        if (n->interface_id && m->interface_id && !strcasecmp(n->interface_id, m->interface_id)) {
            comp_ptr(&p, c, "interface_id");
            r = cella_err(errs, -EINVAL, p.buf, "interface_id is also \"%s\"'s", o->key);
        }
    }
    return r;
}

static bool base64_ok(const char *s, size_t *decoded)
{
    size_t n = strlen(s), pad = 0;
    if (n == 0 || n % 4)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
        if (ch == '=' && i >= n - 2) {
            pad++;
            continue;
        }
        if (!alpha || pad)
            return false;
    }
    *decoded = n / 4 * 3 - pad;
    return true;
}

static bool ifname_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 15 || !strcmp(name, ".") || !strcmp(name, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch <= ' ' || ch == '/' || ch == ':' || ch >= 0x7f)
            return false;
    }
    return true;
}

static bool nbd_uri_ok(const char *uri)
{
    static const char *const schemes[] = {"nbd://", "nbds://", "nbd+unix://", "nbds+unix://"};
    for (size_t i = 0; i < 4; i++) {
        size_t n = strlen(schemes[i]);
        if (!strncmp(uri, schemes[i], n) && uri[n - 1] == '/')
            return true;
    }
    return false;
}

static int check_backend(const struct spec_component *c, struct cella_errors *errs)
{
    struct jptr p;
    size_t bytes = 0;
    switch (c->kind) {
    case SK_FILE_STORAGE_BACKEND: {
        const struct c_file_storage_backend *f = &c->u.file_storage_backend;
        uint32_t bs = f->block_size;
        int r = 0;
        comp_ptr(&p, c, "block_size");
        if (bs < 512 || bs > 65536 || (bs & (bs - 1)))
            r = cella_err(errs, -EINVAL, p.buf,
                          "block size %u must be a power of two from 512 to 65536", bs);
        comp_ptr(&p, c, "path");
        if (!f->path || !f->path[0])
            r = cella_err(errs, -EINVAL, p.buf, "a file backend needs a path");
        comp_ptr(&p, c, "workers");
        if (f->workers.present && (f->workers.value < 1 || f->workers.value > 64))
            r = cella_err(errs, -EINVAL, p.buf, "workers must be from 1 to 64");
        return r;
    }
    case SK_BLOB_STORAGE_BACKEND:
        comp_ptr(&p, c, "base64");
        if (!base64_ok(c->u.blob_storage_backend.base64, &bytes))
            return cella_err(errs, -EINVAL, p.buf, "is not valid, non-empty base64");
        if (bytes % 512)
            return cella_err(errs, -EINVAL, p.buf,
                             "decodes to %zu bytes, which is not a whole number of 512-byte "
                             "blocks",
                             bytes);
        return 0;
    case SK_NBD_STORAGE_BACKEND:
        comp_ptr(&p, c, "uri");
        if (!nbd_uri_ok(c->u.nbd_storage_backend.uri))
            return cella_err(errs, -EINVAL, p.buf,
                             "\"%s\" is not an NBD URI (nbd://host[:port]/export or "
                             "nbd+unix:///export?socket=PATH)",
                             c->u.nbd_storage_backend.uri);
        return 0;
    case SK_VIRTIO_NETWORK_BACKEND:
        comp_ptr(&p, c, "vnic_name");
        if (!ifname_ok(c->u.virtio_network_backend.vnic_name))
            return cella_err(errs, -EINVAL, p.buf,
                             "\"%s\" is not a Linux interface name (1-15 characters, no "
                             "spaces, '/' or ':')",
                             c->u.virtio_network_backend.vnic_name);
        return 0;
    default:
        return 0;
    }
}

static int check_component(const struct instance_spec *s, const struct spec_component *c,
                           struct cella_errors *errs)
{
    struct jptr p;
    switch (c->kind) {
    case SK_NVME_DISK:
        return check_nvme(s, c, errs);
    case SK_VIRTIO_NIC:
        return check_nic(s, c, errs);
    case SK_BOOT_SETTINGS:
        return check_boot(s, c, errs);
    case SK_VIRTIO_SOCKET:
        comp_ptr(&p, c, "guest_cid");
        if (c->u.virtio_socket.guest_cid < 3 || c->u.virtio_socket.guest_cid > 0xfffffffeu)
            return cella_err(errs, -EINVAL, p.buf,
                             "guest CIDs 0-2 and 0xffffffff are reserved; use 3 to 4294967294");
        return 0;
    default:
        return spec_kind_is_backend(c->kind) ? check_backend(c, errs) : 0;
    }
}

int spec_validate(const struct instance_spec *s, struct cella_errors *errs)
{
    size_t before = cella_errors_total(errs);
    int r = 0;
    r |= check_board(&s->board, errs);
    r |= check_cpuid(&s->board, errs);
    r |= check_pci(s, errs);
    r |= check_bridges(s, errs);
    r |= check_backend_refs(s, errs);
    r |= check_singletons(s, errs);
    r |= check_serial_ports(s, errs);
    for (size_t i = 0; i < s->count; i++)
        r |= check_component(s, &s->components[i], errs);
    /* errs may be NULL: r alone then says whether anything failed. */
    return (r || cella_errors_total(errs) > before) ? -EINVAL : 0;
}

int spec_check_host_support(const struct instance_spec *s, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < s->count; i++) {
        const struct spec_component *c = &s->components[i];
        const char *why = spec_kind_unsupported_reason(c->kind);
        if (!why)
            continue;
        struct jptr p, root;
        jptr_root(&root);
        jptr_key(&p, &root, "components");
        jptr_key(&p, &p, c->key);
        jptr_key(&p, &p, "type");
        r = cella_err(errs, -ENOTSUP, p.buf, "%s %s", spec_kind_name(c->kind), why);
    }
    return r;
}
