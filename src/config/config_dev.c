/* SPDX-License-Identifier: MPL-2.0 */
/* [block_dev.NAME] and [dev.NAME]: backends and devices. */
#include "config/config_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spec/spec_json.h"

/* Longest Linux network interface name (IFNAMSIZ - 1). */
#define CFG_IFNAME_MAX 15
/* Largest file a blob may be read from: what fits SPEC_MAX_BLOB_BASE64 once encoded. */
#define CFG_MAX_BLOB_FILE ((size_t)SPEC_MAX_BLOB_BASE64 / 4 * 3)

/* ---- block_dev ---- */

static char *resolve_path(struct cfg *c, const char *path)
{
    const char *base = c->opts->base_dir;
    if (!base || !*base || path[0] == '/')
        return cfg_strdup(c, path);
    size_t bl = strlen(base);
    bool slash = base[bl - 1] == '/';
    char *out = malloc(bl + 1 + strlen(path) + 1);
    if (!out) {
        cfg_nomem(c);
        return NULL;
    }
    sprintf(out, "%s%s%s", base, slash ? "" : "/", path);
    return out;
}

static bool base64_valid(const char *s, size_t len)
{
    if (len % 4)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
        /* '=' only as padding: the last one or two characters. */
        bool pad = ch == '=' && i >= len - 2 && (i == len - 1 || s[len - 1] == '=');
        if (!alpha && !pad)
            return false;
    }
    return true;
}

static char *base64_encode(const unsigned char *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = '\0';
    return out;
}

/* Reads a whole regular file of at most max bytes; -errno (-EFBIG when too large). */
static int read_small_file(const char *path, size_t max, unsigned char **out, size_t *outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return -EFBIG;
    }
    size_t cap = (size_t)st.st_size, len = 0;
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    *out = buf;
    *outlen = len;
    return 0;
}

static void read_file_backend(struct cfg *c, const struct cfg_table *t, struct spec_component *comp)
{
    struct c_file_storage_backend *f = &comp->u.file_storage_backend;
    static const char *const keys[] = {"type", "path", "readonly", "block_size", "workers"};
    cfg_check_keys(c, t, keys, sizeof(keys) / sizeof(keys[0]), NULL, 0);
    const char *path;
    if (cfg_get_str(c, t, "path", true, SPEC_MAX_STRING, &path) > 0)
        f->path = resolve_path(c, path);
    cfg_get_bool(c, t, "readonly", false, &f->readonly);
    uint64_t n = CONFIG_DEFAULT_BLOCK_SIZE;
    cfg_get_uint(c, t, "block_size", false, 1, UINT32_MAX, &n);
    f->block_size = (uint32_t)n;
    if (cfg_get_uint(c, t, "workers", false, 1, UINT32_MAX, &n) > 0)
        f->workers = (struct opt_u64){true, n};
}

static void read_blob_backend(struct cfg *c, const struct cfg_table *t, struct spec_component *comp)
{
    struct c_blob_storage_backend *b = &comp->u.blob_storage_backend;
    static const char *const keys[] = {"type", "base64", "path", "readonly"};
    cfg_check_keys(c, t, keys, sizeof(keys) / sizeof(keys[0]), NULL, 0);
    cfg_get_bool(c, t, "readonly", false, &b->readonly);
    const struct toml_value *b64v = toml_table_get(t->v, "base64");
    const struct toml_value *pathv = toml_table_get(t->v, "path");
    if (b64v && pathv) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "path");
        cfg_diag(c, cfg_key_pos(t, "path"), &p,
                 "%s sets both \"base64\" and \"path\"; give the blob's contents one way",
                 t->display);
        return;
    }
    if (!b64v && !pathv) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "base64");
        cfg_diag(c, toml_value_pos(t->v), &p,
                 "%s needs the blob's contents: \"base64\" (inline) or \"path\" (a file read now)",
                 t->display);
        return;
    }
    const char *s;
    if (b64v) {
        if (cfg_get_str(c, t, "base64", true, SPEC_MAX_BLOB_BASE64, &s) <= 0)
            return;
        if (!base64_valid(s, strlen(s))) {
            struct jptr p;
            jptr_key(&p, &t->ptr, "base64");
            cfg_diag(c, toml_value_pos(b64v), &p,
                     "\"base64\" in %s is not valid base64 (RFC 4648, padded, no line breaks)",
                     t->display);
            return;
        }
        b->base64 = cfg_strdup(c, s);
        return;
    }
    if (cfg_get_str(c, t, "path", true, SPEC_MAX_STRING, &s) <= 0)
        return;
    char *path = resolve_path(c, s);
    if (!path)
        return;
    unsigned char *data = NULL;
    size_t len = 0;
    int r = read_small_file(path, CFG_MAX_BLOB_FILE, &data, &len);
    struct jptr p;
    jptr_key(&p, &t->ptr, "path");
    char q[160];
    cfg_quote(path, strlen(path), q, sizeof(q));
    if (r == -EFBIG)
        cfg_diag(c, toml_value_pos(pathv), &p,
                 "blob file %s is larger than %zu bytes; use type = \"file\" for large disks", q,
                 CFG_MAX_BLOB_FILE);
    else if (r == -EINVAL)
        cfg_diag(c, toml_value_pos(pathv), &p, "blob file %s is not a regular file", q);
    else if (r == -ENOMEM)
        cfg_nomem(c);
    else if (r < 0)
        cfg_diag(c, toml_value_pos(pathv), &p, "cannot read blob file %s: %s", q, strerror(-r));
    else if (len == 0)
        cfg_diag(c, toml_value_pos(pathv), &p, "blob file %s is empty", q);
    else if (!(b->base64 = base64_encode(data, len)))
        cfg_nomem(c);
    free(data);
    free(path);
}

static void read_nbd_backend(struct cfg *c, const struct cfg_table *t, struct spec_component *comp)
{
    struct c_nbd_storage_backend *n = &comp->u.nbd_storage_backend;
    static const char *const keys[] = {"type", "uri", "readonly"};
    cfg_check_keys(c, t, keys, sizeof(keys) / sizeof(keys[0]), NULL, 0);
    const char *uri;
    if (cfg_get_str(c, t, "uri", true, SPEC_MAX_STRING, &uri) > 0)
        n->uri = cfg_strdup(c, uri);
    cfg_get_bool(c, t, "readonly", false, &n->readonly);
}

static const char *const block_types[] = {"file", "blob", "nbd"};

static void read_block_dev(struct cfg *c, size_t index)
{
    const char *name = toml_table_key(c->block_dev.v, index, NULL);
    const struct toml_value *v = toml_table_value(c->block_dev.v, index);
    struct cfg_table t;
    cfg_table_child(&t, v, &c->block_dev, name);
    if (toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &t.ptr, "%s must be a table, not %s", t.display,
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    bool name_ok = cfg_check_name(c, &c->block_dev, index);
    const char *type;
    if (cfg_get_str(c, &t, "type", true, 64, &type) <= 0)
        return;
    struct spec_component comp;
    memset(&comp, 0, sizeof(comp));
    if (strcmp(type, "file") == 0) {
        comp.kind = SK_FILE_STORAGE_BACKEND;
        read_file_backend(c, &t, &comp);
    } else if (strcmp(type, "blob") == 0) {
        comp.kind = SK_BLOB_STORAGE_BACKEND;
        read_blob_backend(c, &t, &comp);
    } else if (strcmp(type, "nbd") == 0) {
        comp.kind = SK_NBD_STORAGE_BACKEND;
        read_nbd_backend(c, &t, &comp);
    } else {
        struct jptr p;
        jptr_key(&p, &t.ptr, "type");
        char q[96];
        cfg_quote(type, strlen(type), q, sizeof(q));
        const char *hint = cfg_suggest(type, block_types, 3);
        if (strcmp(type, "crucible") == 0)
            cfg_diag(c, toml_value_pos(toml_table_get(v, "type")), &p,
                     "block_dev type \"crucible\" needs Oxide's Crucible, which cella does not "
                     "include; use \"nbd\" for network storage or \"file\" for a local file");
        else
            cfg_diag(c, toml_value_pos(toml_table_get(v, "type")), &p,
                     "unknown block_dev type %s in %s; use \"file\", \"blob\" or \"nbd\"%s%s%s", q,
                     t.display, hint ? " (did you mean \"" : "", hint ? hint : "",
                     hint ? "\"?)" : "");
        return;
    }
    comp.key = name_ok ? cfg_strdup(c, name) : NULL;
    cfg_add(c, &comp, &t, NULL);
}

void cfg_read_block_devs(struct cfg *c)
{
    size_t n = toml_table_len(c->block_dev.v);
    if (n) {
        c->block_dev_used = calloc(n, sizeof(bool));
        if (!c->block_dev_used) {
            cfg_nomem(c);
            return;
        }
    }
    for (size_t i = 0; i < n; i++)
        read_block_dev(c, i);
}

/* ---- dev ---- */

/*
 * The block_dev a disk names: it must exist and no other device may use
 * it. Returns a copy of the name for backend_id, or NULL after a problem.
 */
static char *disk_backend(struct cfg *c, const struct cfg_table *t)
{
    const char *name;
    if (cfg_get_str(c, t, "block_dev", true, SPEC_MAX_KEY_LEN, &name) <= 0)
        return NULL;
    struct jptr p;
    jptr_key(&p, &t->ptr, "block_dev");
    struct toml_pos pos = toml_value_pos(toml_table_get(t->v, "block_dev"));
    char q[160];
    cfg_quote(name, strlen(name), q, sizeof(q));
    ptrdiff_t i = c->block_dev.v ? toml_table_index(c->block_dev.v, name, strlen(name)) : -1;
    if (i < 0) {
        cfg_diag(c, pos, &p, "%s names block_dev %s, but there is no [block_dev.%s]", t->display, q,
                 name);
        return NULL;
    }
    if (c->block_dev_used[i]) {
        cfg_diag(c, pos, &p,
                 "%s uses block_dev %s, which another device already uses; "
                 "each disk needs its own block_dev",
                 t->display, q);
        return NULL;
    }
    c->block_dev_used[i] = true;
    return cfg_strdup(c, name);
}

/* Builds the NVMe serial number: `serial`, else the device name, space padded. */
static void nvme_serial(struct cfg *c, const struct cfg_table *t, const char *name, uint8_t *out)
{
    const char *s = NULL;
    struct jptr p;
    jptr_key(&p, &t->ptr, "serial");
    int r = cfg_get_str(c, t, "serial", false, SPEC_NVME_SERIAL_LEN, &s);
    if (r < 0)
        return;
    struct toml_pos pos =
        r > 0 ? toml_value_pos(toml_table_get(t->v, "serial")) : toml_value_pos(t->v);
    if (r == 0) {
        s = name;
        if (strlen(s) > SPEC_NVME_SERIAL_LEN) {
            cfg_diag(c, pos, &p,
                     "%s has no \"serial\", and its name is longer than the %d bytes of an "
                     "NVMe serial number; set \"serial\"",
                     t->display, SPEC_NVME_SERIAL_LEN);
            return;
        }
    }
    for (const char *x = s; *x; x++) {
        if (*x < 0x20 || *x > 0x7e) {
            cfg_diag(c, pos, &p,
                     r > 0 ? "\"serial\" in %s must be printable ASCII"
                           : "%s has no \"serial\", and its name is not printable ASCII, "
                             "which an NVMe serial number must be; set \"serial\"",
                     t->display);
            return;
        }
    }
    memset(out, ' ', SPEC_NVME_SERIAL_LEN);
    memcpy(out, s, strlen(s));
}

static void read_disk(struct cfg *c, const struct cfg_table *t, const char *name, bool nvme,
                      struct spec_component *comp)
{
    static const char *const vkeys[] = {"driver", "block_dev", "pci-path"};
    static const char *const nkeys[] = {"driver", "block_dev", "pci-path", "serial"};
    if (nvme)
        cfg_check_keys(c, t, nkeys, 4, NULL, 0);
    else
        cfg_check_keys(c, t, vkeys, 3, NULL, 0);
    comp->kind = nvme ? SK_NVME_DISK : SK_VIRTIO_DISK;
    struct pci_path pp = {0, 0, 0};
    cfg_get_pci(c, t, "pci-path", true, &pp);
    char *backend = disk_backend(c, t);
    if (nvme) {
        comp->u.nvme_disk.backend_id = backend;
        comp->u.nvme_disk.pci_path = pp;
        /* Spec v2 default: Identify strings padded with spaces, as NVMe 1.2+ wants. */
        comp->u.nvme_disk.string_pad = ' ';
        nvme_serial(c, t, name, comp->u.nvme_disk.serial_number);
    } else {
        comp->u.virtio_disk.backend_id = backend;
        comp->u.virtio_disk.pci_path = pp;
    }
}

static int default_random(void *buf, size_t len, void *ctx)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((char *)buf + done, len - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        done += (size_t)n;
    }
    return 0;
}

static char *new_uuid(struct cfg *c, const struct cfg_table *t)
{
    uint8_t b[16];
    int (*rnd)(void *, size_t, void *) =
        c->opts->random_bytes ? c->opts->random_bytes : default_random;
    int r = rnd(b, sizeof(b), c->opts->random_ctx);
    if (r < 0) {
        cfg_diag(c, toml_value_pos(t->v), &t->ptr,
                 "cannot generate an interface-id for %s: %s; set \"interface-id\"", t->display,
                 strerror(-r));
        return NULL;
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char s[37];
    snprintf(s, sizeof(s), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
    return cfg_strdup(c, s);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int parse_mac(const char *s, uint8_t out[6])
{
    if (strlen(s) != 17)
        return -EINVAL;
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[i * 3]), lo = hexval(s[i * 3 + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[i * 3 + 2] != ':'))
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static void nic_mac(struct cfg *c, const struct cfg_table *t, struct opt_mac *mac)
{
    const char *s;
    if (cfg_get_str(c, t, "mac", false, 32, &s) <= 0)
        return;
    struct jptr p;
    jptr_key(&p, &t->ptr, "mac");
    struct toml_pos pos = toml_value_pos(toml_table_get(t->v, "mac"));
    if (parse_mac(s, mac->bytes) < 0) {
        cfg_diag(c, pos, &p, "\"mac\" in %s must be a MAC address like \"02:08:20:ab:cd:ef\"",
                 t->display);
        return;
    }
    static const uint8_t zero[6];
    if ((mac->bytes[0] & 1) || memcmp(mac->bytes, zero, 6) == 0) {
        cfg_diag(c, pos, &p,
                 "\"mac\" in %s must be a unicast address (lowest bit of the first byte clear, "
                 "not all zero)",
                 t->display);
        return;
    }
    mac->present = true;
}

static void read_nic(struct cfg *c, const struct cfg_table *t, const char *name,
                     struct spec_component *comp)
{
    static const char *const keys[] = {"driver", "vnic", "pci-path", "interface-id", "mac"};
    cfg_check_keys(c, t, keys, sizeof(keys) / sizeof(keys[0]), NULL, 0);
    comp->kind = SK_VIRTIO_NIC;
    struct c_virtio_nic *nic = &comp->u.virtio_nic;
    cfg_get_pci(c, t, "pci-path", true, &nic->pci_path);
    nic_mac(c, t, &nic->mac);
    const char *id;
    int r = cfg_get_str(c, t, "interface-id", false, 64, &id);
    if (r > 0 && !cella_uuid_valid(id)) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "interface-id");
        cfg_diag(c, toml_value_pos(toml_table_get(t->v, "interface-id")), &p,
                 "\"interface-id\" in %s must be a UUID (8-4-4-4-12 hex digits)", t->display);
    } else if (r > 0) {
        nic->interface_id = cfg_strdup(c, id);
    } else if (r == 0) {
        nic->interface_id = new_uuid(c, t);
    }

    /* The tap backend, keyed "NAME-backend" (a device and its backend never share a key). */
    const char *vnic;
    if (cfg_get_str(c, t, "vnic", true, CFG_IFNAME_MAX, &vnic) <= 0)
        return;
    if (strchr(vnic, '/') || strpbrk(vnic, " \t\n:")) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "vnic");
        cfg_diag(c, toml_value_pos(toml_table_get(t->v, "vnic")), &p,
                 "\"vnic\" in %s must be a network interface name (no '/', ':' or spaces)",
                 t->display);
        return;
    }
    size_t klen = strlen(name) + sizeof("-backend");
    if (klen - 1 > SPEC_MAX_KEY_LEN) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "vnic");
        cfg_diag(c, toml_value_pos(t->v), &p,
                 "the name of %s is too long to derive its backend key \"NAME-backend\" "
                 "(at most %d bytes)",
                 t->display, SPEC_MAX_KEY_LEN);
        return;
    }
    struct spec_component be;
    memset(&be, 0, sizeof(be));
    be.kind = SK_VIRTIO_NETWORK_BACKEND;
    be.key = malloc(klen);
    be.u.virtio_network_backend.vnic_name = cfg_strdup(c, vnic);
    if (!be.key || !be.u.virtio_network_backend.vnic_name) {
        cfg_nomem(c);
        spec_component_free(&be);
        return;
    }
    snprintf(be.key, klen, "%s-backend", name);
    nic->backend_id = cfg_strdup(c, be.key);
    cfg_add(c, &be, t, "vnic");
}

static void read_pvpanic(struct cfg *c, const struct cfg_table *t, struct spec_component *comp)
{
    static const char *const keys[] = {"driver", "enable_isa"};
    cfg_check_keys(c, t, keys, 2, NULL, 0);
    comp->kind = SK_QEMU_PVPANIC;
    comp->u.qemu_pvpanic.enable_isa = true;
    cfg_get_bool(c, t, "enable_isa", false, &comp->u.qemu_pvpanic.enable_isa);
}

/* "com1".."com4" -> 1..4, else 0. */
static uint8_t com_number(const char *s)
{
    if (strlen(s) == 4 && strncmp(s, "com", 3) == 0 && s[3] >= '1' && s[3] <= '4')
        return (uint8_t)(s[3] - '0');
    return 0;
}

static void read_uart(struct cfg *c, const struct cfg_table *t, const char *name,
                      struct spec_component *comp)
{
    static const char *const keys[] = {"driver", "port"};
    cfg_check_keys(c, t, keys, 2, NULL, 0);
    comp->kind = SK_SERIAL_PORT;
    c->have_uart = true;
    const char *port;
    int r = cfg_get_str(c, t, "port", com_number(name) == 0, 16, &port);
    if (r < 0)
        return;
    if (r == 0) {
        comp->u.serial_port.num = com_number(name);
        return;
    }
    comp->u.serial_port.num = com_number(port);
    if (!comp->u.serial_port.num) {
        struct jptr p;
        jptr_key(&p, &t->ptr, "port");
        cfg_diag(c, toml_value_pos(toml_table_get(t->v, "port")), &p,
                 "\"port\" in %s must be \"com1\", \"com2\", \"com3\" or \"com4\"", t->display);
    }
}

static void read_injector(struct cfg *c, const struct cfg_table *t, struct spec_component *comp)
{
    static const char *const keys[] = {"driver", "fail_exports", "fail_imports"};
    cfg_check_keys(c, t, keys, 3, NULL, 0);
    comp->kind = SK_MIGRATION_FAILURE_INJECTOR;
    uint64_t n = 0;
    if (cfg_get_uint(c, t, "fail_exports", false, 0, UINT32_MAX, &n) > 0)
        comp->u.migration_failure_injector.fail_exports = (uint32_t)n;
    if (cfg_get_uint(c, t, "fail_imports", false, 0, UINT32_MAX, &n) > 0)
        comp->u.migration_failure_injector.fail_imports = (uint32_t)n;
}

static const char *const drivers[] = {
    "pci-virtio-block", "pci-nvme", "pci-virtio-viona",
    "qemu-pvpanic",     "uart",     "migration-failure-injector",
};
#define NDRIVERS (sizeof(drivers) / sizeof(drivers[0]))

static void unknown_driver(struct cfg *c, const struct cfg_table *t, const char *driver)
{
    struct jptr p;
    jptr_key(&p, &t->ptr, "driver");
    char q[96];
    cfg_quote(driver, strlen(driver), q, sizeof(q));
    const char *hint = cfg_suggest(driver, drivers, NDRIVERS);
    cfg_diag(c, toml_value_pos(toml_table_get(t->v, "driver")), &p,
             "unknown driver %s in %s%s%s%s; cella knows \"pci-virtio-block\", \"pci-nvme\", "
             "\"pci-virtio-viona\", \"qemu-pvpanic\", \"uart\" and "
             "\"migration-failure-injector\"",
             q, t->display, hint ? " (did you mean \"" : "", hint ? hint : "", hint ? "\"?)" : "");
}

static void read_dev(struct cfg *c, const struct cfg_table *devs, size_t index)
{
    const char *name = toml_table_key(devs->v, index, NULL);
    const struct toml_value *v = toml_table_value(devs->v, index);
    struct cfg_table t;
    cfg_table_child(&t, v, devs, name);
    if (toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &t.ptr, "%s must be a table, not %s", t.display,
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    bool name_ok = cfg_check_name(c, devs, index);
    const char *driver;
    if (cfg_get_str(c, &t, "driver", true, 64, &driver) <= 0)
        return;
    struct spec_component comp;
    memset(&comp, 0, sizeof(comp));
    if (strcmp(driver, "pci-virtio-block") == 0)
        read_disk(c, &t, name, false, &comp);
    else if (strcmp(driver, "pci-nvme") == 0)
        read_disk(c, &t, name, true, &comp);
    else if (strcmp(driver, "pci-virtio-viona") == 0)
        read_nic(c, &t, name, &comp);
    else if (strcmp(driver, "qemu-pvpanic") == 0)
        read_pvpanic(c, &t, &comp);
    else if (strcmp(driver, "uart") == 0)
        read_uart(c, &t, name, &comp);
    else if (strcmp(driver, "migration-failure-injector") == 0)
        read_injector(c, &t, &comp);
    else {
        unknown_driver(c, &t, driver);
        return;
    }
    comp.key = name_ok ? cfg_strdup(c, name) : NULL;
    cfg_add(c, &comp, &t, NULL);
}

void cfg_read_devs(struct cfg *c)
{
    const struct toml_value *v = toml_table_get(c->root, "dev");
    if (!v)
        return;
    struct cfg_table devs;
    cfg_table_top(&devs, v, "dev");
    if (toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &devs.ptr, "\"dev\" must be a table of devices, not %s",
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    for (size_t i = 0; i < toml_table_len(v); i++)
        read_dev(c, &devs, i);
}
