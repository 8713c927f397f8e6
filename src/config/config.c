/* SPDX-License-Identifier: MPL-2.0 */
/* Config TOML -> InstanceSpec: the top level, [main], [chipset], [[pci_bridge]]. */
#include "config/config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config_int.h"
#include "spec/validate.h"

/* Key of the boot_settings component made from [main] boot_order. */
#define BOOT_SETTINGS_KEY "boot-settings"

static const char *const top_keys[] = {"main",      "chipset", "pci_bridge",
                                       "block_dev", "dev",     "cpuid"};

/* ---- [main] ---- */

static const struct cfg_refusal main_refusals[] = {
    {"bootrom", "the bootrom is a host setting; give it to cella-server in its own configuration"},
    {"exit_on_halt", "cella-server reports a guest halt through the instance state"},
    {"exit_on_reboot", "cella-server reports a guest reboot through the instance state"},
    {"use_reservoir", "the illumos VMM memory reservoir has no Linux counterpart"},
};

static void read_main(struct cfg *c)
{
    static const char *const keys[] = {"cpus", "memory", "name", "boot_order", "cpuid_profile"};
    struct spec_board *b = &c->spec->board;
    const struct cfg_table *t = &c->main;
    if (!t->v) {
        cfg_diag(c, (struct toml_pos){1, 1}, &t->ptr,
                 "the config has no [main] table; it needs at least \"memory\" (MiB)");
        return;
    }
    cfg_check_keys(c, t, keys, sizeof(keys) / sizeof(keys[0]), main_refusals,
                   sizeof(main_refusals) / sizeof(main_refusals[0]));
    uint64_t n = CONFIG_DEFAULT_CPUS;
    cfg_get_uint(c, t, "cpus", false, 1, UINT8_MAX, &n);
    b->cpus = (uint8_t)n;
    if (cfg_get_uint(c, t, "memory", true, 1, SPEC_MAX_MEMORY_MB, &n) > 0)
        b->memory_mb = n;
    const char *s;
    if (cfg_get_str(c, t, "name", false, SPEC_MAX_STRING, &s) > 0)
        c->name_out = cfg_strdup(c, s);
    if (cfg_get_str(c, t, "cpuid_profile", false, SPEC_MAX_STRING, &s) > 0) {
        c->cpuid_profile = s;
        c->cpuid_profile_v = toml_table_get(t->v, "cpuid_profile");
    }
}

/* boot_order = ["disk0", ...]: every entry a disk device, none twice. */
static void read_boot_order(struct cfg *c)
{
    const struct cfg_table *t = &c->main;
    const struct toml_value *arr;
    if (!t->v || cfg_get(c, t, "boot_order", TOML_ARRAY, false, &arr) <= 0)
        return;
    struct jptr bp;
    jptr_key(&bp, &t->ptr, "boot_order");
    size_t n = toml_array_len(arr);
    if (n == 0)
        return; /* same as leaving it out */
    if (n > SPEC_MAX_BOOT_ENTRIES) {
        cfg_diag(c, toml_value_pos(arr), &bp, "boot_order has %zu entries; the limit is %d", n,
                 SPEC_MAX_BOOT_ENTRIES);
        return;
    }
    struct spec_component comp;
    memset(&comp, 0, sizeof(comp));
    comp.kind = SK_BOOT_SETTINGS;
    struct boot_order *bo = &comp.u.boot_settings.order;
    bo->ids = calloc(n, sizeof(char *));
    if (!bo->ids) {
        cfg_nomem(c);
        return;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        const struct toml_value *e = toml_array_get(arr, i);
        struct jptr p;
        jptr_index(&p, &bp, i);
        size_t len = 0;
        const char *id = toml_string(e, &len);
        if (!id || strlen(id) != len) {
            cfg_diag(c, toml_value_pos(e), &p,
                     "boot_order entries must be names of [dev] disks (strings), not %s",
                     id ? "strings with NUL" : cfg_type_phrase(toml_type(e)));
            ok = false;
            continue;
        }
        char q[160];
        cfg_quote(id, len, q, sizeof(q));
        const struct spec_component *d = spec_find(c->spec, id);
        const struct toml_value *devs = toml_table_get(c->root, "dev");
        bool is_dev = devs && toml_type(devs) == TOML_TABLE && toml_table_get(devs, id);
        if (!is_dev) {
            cfg_diag(c, toml_value_pos(e), &p, "boot_order names %s, but there is no [dev.%s]", q,
                     id);
            ok = false;
            continue;
        }
        if (d && !spec_kind_is_disk(d->kind)) {
            cfg_diag(c, toml_value_pos(e), &p,
                     "boot_order names %s, which is not a disk (pci-virtio-block or pci-nvme)", q);
            ok = false;
            continue;
        }
        for (size_t k = 0; k < bo->count; k++) {
            if (strcmp(bo->ids[k], id) == 0) {
                cfg_diag(c, toml_value_pos(e), &p, "boot_order lists %s twice", q);
                ok = false;
            }
        }
        if (!(bo->ids[bo->count] = cfg_strdup(c, id)))
            break;
        bo->count++;
    }
    comp.key = ok ? cfg_strdup(c, BOOT_SETTINGS_KEY) : NULL;
    struct cfg_table origin = *t;
    cfg_add(c, &comp, &origin, "boot_order");
}

/* ---- [chipset] ---- */

static void read_chipset(struct cfg *c)
{
    const struct toml_value *v = toml_table_get(c->root, "chipset");
    if (!v)
        return;
    struct cfg_table t;
    cfg_table_top(&t, v, "chipset");
    static const char *const keys[] = {"enable-pcie"};
    cfg_check_keys(c, &t, keys, 1, NULL, 0);
    cfg_get_bool(c, &t, "enable-pcie", false, &c->spec->board.enable_pcie);
}

/* ---- [[pci_bridge]] ---- */

static void read_bridge(struct cfg *c, const struct toml_value *v, size_t i)
{
    struct cfg_table t;
    cfg_table_elem(&t, v, "pci_bridge", i);
    if (toml_type(v) != TOML_TABLE) {
        cfg_diag(c, toml_value_pos(v), &t.ptr, "%s must be a table, not %s", t.display,
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    static const char *const keys[] = {"pci-path", "downstream-bus"};
    cfg_check_keys(c, &t, keys, 2, NULL, 0);
    struct spec_component comp;
    memset(&comp, 0, sizeof(comp));
    comp.kind = SK_PCI_PCI_BRIDGE;
    cfg_get_pci(c, &t, "pci-path", true, &comp.u.pci_pci_bridge.pci_path);
    uint64_t bus = 0;
    if (cfg_get_uint(c, &t, "downstream-bus", true, 1, UINT8_MAX, &bus) > 0)
        comp.u.pci_pci_bridge.downstream_bus = (uint8_t)bus;
    char key[32];
    snprintf(key, sizeof(key), "pci-bridge-%zu", i);
    comp.key = cfg_strdup(c, key);
    cfg_add(c, &comp, &t, NULL);
}

static void read_bridges(struct cfg *c)
{
    const struct toml_value *v = toml_table_get(c->root, "pci_bridge");
    if (!v)
        return;
    if (toml_type(v) != TOML_ARRAY) {
        struct jptr p, root;
        jptr_root(&root);
        jptr_key(&p, &root, "pci_bridge");
        cfg_diag(c, toml_value_pos(v), &p,
                 "\"pci_bridge\" must be an array of tables ([[pci_bridge]]), not %s",
                 cfg_type_phrase(toml_type(v)));
        return;
    }
    for (size_t i = 0; i < toml_array_len(v); i++)
        read_bridge(c, toml_array_get(v, i), i);
}

/* ---- cross checks ---- */

static void check_unused_block_devs(struct cfg *c)
{
    for (size_t i = 0; i < toml_table_len(c->block_dev.v); i++) {
        if (c->block_dev_used[i])
            continue;
        struct toml_pos pos;
        const char *name = toml_table_key(c->block_dev.v, i, &pos);
        const struct toml_value *v = toml_table_value(c->block_dev.v, i);
        if (toml_type(v) != TOML_TABLE)
            continue; /* already reported */
        struct cfg_table t;
        cfg_table_child(&t, v, &c->block_dev, name);
        cfg_diag(c, toml_value_pos(v), &t.ptr,
                 "%s is not used by any device; attach it with block_dev = \"%s\" in a disk, "
                 "or remove it",
                 t.display, name);
    }
}

/* Gives the VM a COM1 unless the config declares its serial ports itself. */
static void add_default_uart(struct cfg *c)
{
    if (c->have_uart)
        return;
    struct spec_component comp;
    memset(&comp, 0, sizeof(comp));
    comp.kind = SK_SERIAL_PORT;
    comp.u.serial_port.num = 1;
    comp.key = cfg_strdup(c, "com1");
    struct cfg_table t;
    cfg_table_top(&t, c->main.v ? c->main.v : c->root, "main");
    snprintf(t.display, sizeof(t.display), "the default serial port");
    cfg_add(c, &comp, &t, NULL);
}

/* ---- top level ---- */

static void read_top(struct cfg *c)
{
    struct cfg_table root;
    root.v = c->root;
    snprintf(root.display, sizeof(root.display), "the top level");
    jptr_root(&root.ptr);
    cfg_check_keys(c, &root, top_keys, sizeof(top_keys) / sizeof(top_keys[0]), NULL, 0);

    const struct toml_value *v = toml_table_get(c->root, "main");
    cfg_table_top(&c->main, NULL, "main");
    if (v && toml_type(v) != TOML_TABLE)
        cfg_diag(c, toml_value_pos(v), &c->main.ptr, "\"main\" must be a table, not %s",
                 cfg_type_phrase(toml_type(v)));
    else
        c->main.v = v;

    v = toml_table_get(c->root, "chipset");
    if (v && toml_type(v) != TOML_TABLE) {
        struct cfg_table t;
        cfg_table_top(&t, v, "chipset");
        cfg_diag(c, toml_value_pos(v), &t.ptr, "\"chipset\" must be a table, not %s",
                 cfg_type_phrase(toml_type(v)));
    }

    v = toml_table_get(c->root, "block_dev");
    cfg_table_top(&c->block_dev, NULL, "block_dev");
    if (v && toml_type(v) != TOML_TABLE)
        cfg_diag(c, toml_value_pos(v), &c->block_dev.ptr,
                 "\"block_dev\" must be a table of backends, not %s",
                 cfg_type_phrase(toml_type(v)));
    else
        c->block_dev.v = v;
}

static void convert(struct cfg *c)
{
    read_top(c);
    read_main(c);
    const struct toml_value *cs = toml_table_get(c->root, "chipset");
    if (cs && toml_type(cs) == TOML_TABLE)
        read_chipset(c);
    read_bridges(c);
    cfg_read_block_devs(c);
    if (c->nomem)
        return;
    cfg_read_devs(c);
    read_boot_order(c);
    cfg_read_cpuid(c);
    if (c->block_dev_used)
        check_unused_block_devs(c);
    add_default_uart(c);
}

static void cfg_free(struct cfg *c)
{
    for (size_t i = 0; i < c->norigins; i++)
        free(c->origins[i].key);
    free(c->origins);
    free(c->diags);
    free(c->block_dev_used);
    free(c->cpuid_pos);
}

int config_convert(const char *text, size_t len, const struct config_options *opts,
                   struct config_result *out, struct cella_errors *errs)
{
    static const struct config_options defaults;
    memset(out, 0, sizeof(*out));
    spec_init(&out->spec);
    if (len > CONFIG_MAX_TEXT)
        return cella_err(errs, -E2BIG, "", "the config is %zu bytes; the limit is %zu", len,
                         CONFIG_MAX_TEXT);
    struct toml_limits lim = {
        .max_input = CONFIG_MAX_TEXT,
        .max_depth = 16,
        .max_string = SPEC_MAX_BLOB_BASE64,
    };
    struct toml_value *root = NULL;
    struct toml_error te;
    memset(&te, 0, sizeof(te));
    int r = toml_parse(text, len, &lim, &root, &te);
    if (r < 0) {
        if (r == -ENOMEM)
            return cella_err(errs, r, "", "out of memory while parsing the config");
        return cella_err(errs, r, "", "line %u, column %u: %s", te.pos.line, te.pos.col, te.msg);
    }

    struct cfg c;
    memset(&c, 0, sizeof(c));
    c.opts = opts ? opts : &defaults;
    c.spec = &out->spec;
    c.root = root;
    convert(&c);
    out->name = c.name_out;

    if (!cfg_failed(&c)) {
        struct cella_errors verrs = {0};
        if (spec_validate(&out->spec, &verrs) < 0 || cella_errors_total(&verrs)) {
            cfg_map_spec_errors(&c, &verrs);
            if (!cfg_failed(&c))
                cfg_diag(&c, (struct toml_pos){0, 0}, NULL, "the spec is not valid");
        }
        cella_errors_clear(&verrs);
    }
    r = 0;
    if (cfg_failed(&c)) {
        r = c.nomem ? -ENOMEM : -EINVAL;
        cfg_emit(&c, errs);
        spec_free(&out->spec);
    }
    cfg_free(&c);
    toml_free(root);
    return r;
}

/* Reads a whole file (or stdin for "-") of at most max bytes. */
static int read_all(const char *path, size_t max, char **out, size_t *outlen)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 0, len = 0;
    char *buf = NULL;
    int r = 0;
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            if (ncap > max + 1)
                ncap = max + 1;
            if (len == ncap) {
                r = -EFBIG;
                break;
            }
            char *g = realloc(buf, ncap);
            if (!g) {
                r = -ENOMEM;
                break;
            }
            buf = g;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (fd != STDIN_FILENO)
        close(fd);
    if (r == 0 && len > max)
        r = -EFBIG;
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *outlen = len;
    return 0;
}

/* The absolute directory of path, or NULL (errno set). */
static char *dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return NULL;
    char *slash = strrchr(copy, '/');
    if (!slash)
        strcpy(copy, ".");
    else if (slash == copy)
        copy[1] = '\0';
    else
        *slash = '\0';
    char *abs = realpath(copy, NULL);
    free(copy);
    return abs;
}

int config_convert_file(const char *path, const struct config_options *opts,
                        struct config_result *out, struct cella_errors *errs)
{
    memset(out, 0, sizeof(*out));
    spec_init(&out->spec);
    char *text = NULL;
    size_t len = 0;
    int r = read_all(path, CONFIG_MAX_TEXT, &text, &len);
    if (r == -EFBIG)
        return cella_err(errs, -E2BIG, "", "%s is larger than the %zu byte limit of a config", path,
                         CONFIG_MAX_TEXT);
    if (r < 0)
        return cella_err(errs, r, "", "cannot read %s: %s", path, strerror(-r));
    struct config_options o = opts ? *opts : (struct config_options){0};
    char *dir = NULL;
    if (!o.base_dir) {
        dir = strcmp(path, "-") == 0 ? getcwd(NULL, 0) : dir_of(path);
        if (!dir) {
            r = -errno;
            free(text);
            return cella_err(errs, r, "", "cannot find the directory of %s: %s", path,
                             strerror(-r));
        }
        o.base_dir = dir;
    }
    r = config_convert(text, len, &o, out, errs);
    free(dir);
    free(text);
    return r;
}

void config_result_free(struct config_result *r)
{
    if (!r)
        return;
    spec_free(&r->spec);
    free(r->name);
    r->name = NULL;
}

int config_to_spec(const char *toml_text, size_t len, struct instance_spec *out,
                   struct cella_errors *errs)
{
    struct config_result res;
    int r = config_convert(toml_text, len, NULL, &res, errs);
    *out = res.spec;
    free(res.name);
    return r;
}

int config_file_to_spec(const char *path, struct instance_spec *out, struct cella_errors *errs)
{
    struct config_result res;
    int r = config_convert_file(path, NULL, &res, errs);
    *out = res.spec;
    free(res.name);
    return r;
}
