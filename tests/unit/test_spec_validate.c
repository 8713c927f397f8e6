/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Validation rules, host support, replacement and the guest-visible diff.
 * Each rule has a failing case (the error names the exact field) and a
 * passing neighbour (a close variant the rule must accept).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "spec/spec_json.h"
#include "spec/validate.h"
#include "spec_fixture.h"

struct op {
    const char *ptr;
    const char *value; /* single-quoted JSON, NULL deletes */
};

struct vcase {
    const char *name;
    struct op ops[4];
    const char *want_ptr; /* NULL: the spec must be valid */
    const char *want_text;
};

#define C "/components/"

/* clang-format off */
static const struct vcase cases[] = {
    {"base spec is valid", {{0}}, NULL, NULL},
    {"zero cpus", {{"/board/cpus", "0"}}, "/board/cpus", "at least one vCPU"},
    {"one cpu ok", {{"/board/cpus", "1"}}, NULL, NULL},
    {"zero memory", {{"/board/memory_mb", "0"}}, "/board/memory_mb", "memory must be"},
    {"too much memory", {{"/board/memory_mb", "2000000"}}, "/board/memory_mb", "memory must be"},
    {"1 TiB memory ok", {{"/board/memory_mb", "1048576"}}, NULL, NULL},
    {"missing backend", {{C "disk0/component/backend_id", "'nope'"}},
     C "disk0/component/backend_id", "backend \"nope\" does not exist"},
    {"backend is a device", {{C "disk0/component/backend_id", "'com1'"}},
     C "disk0/component/backend_id", "is a serial_port device, not a backend"},
    {"device shares key with backend", {{C "disk0/component/backend_id", "'disk0'"}},
     C "disk0/component/backend_id", "cannot share the key"},
    {"disk on a network backend", {{C "disk0/component/backend_id", "'net0-be'"}},
     C "disk0/component/backend_id", "needs a storage backend"},
    {"nic on a storage backend", {{C "net0/component/backend_id", "'root'"}},
     C "net0/component/backend_id", "needs a network backend"},
    {"backend used twice", {{C "nvme0/component/backend_id", "'root'"}},
     C "nvme0/component/backend_id", "already used by \"disk0\""},
    {"unused backend", {{C "spare", "{'type':'file_storage_backend','component':{'path':'/x',"
                                     "'readonly':true,'block_size':512}}"}},
     C "spare", "not used by any device"},
    {"two devices at one PCI path", {{C "nvme0/component/pci_path/device", "4"}},
     C "nvme0/component/pci_path", "already used by \"disk0\""},
    {"PCI device over 31", {{C "disk0/component/pci_path/device", "32"}},
     C "disk0/component/pci_path", "over 31"},
    {"PCI function over 7", {{C "disk0/component/pci_path/function", "8"}},
     C "disk0/component/pci_path", "over 7"},
    {"function without function 0", {{C "disk0/component/pci_path/function", "3"}},
     C "disk0/component/pci_path", "needs a device at function 0"},
    {"multifunction with function 0 ok", {{C "nvme0/component/pci_path/device", "4"},
                                          {C "nvme0/component/pci_path/function", "1"}},
     NULL, NULL},
    {"chipset slot", {{C "disk0/component/pci_path/device", "1"}},
     C "disk0/component/pci_path", "taken by the i440FX chipset"},
    {"bus without bridge", {{C "net0/component/pci_path/bus", "2"}},
     C "net0/component/pci_path", "bus 2 does not exist"},
    {"bridge to bus 0", {{C "bridge0/component/downstream_bus", "0"},
                         {C "net0/component/pci_path/bus", "0"},
                         {C "net0/component/pci_path/device", "8"}},
     C "bridge0/component/downstream_bus", "root bus"},
    {"two bridges one bus", {{C "bridge1", "{'type':'pci_pci_bridge','component':{'downstream_bus':1,"
                                           "'pci_path':{'bus':0,'device':9,'function':0}}}"}},
     C "bridge1/component/downstream_bus", "already the bus of bridge \"bridge0\""},
    {"nested bridges ok", {{C "bridge1", "{'type':'pci_pci_bridge','component':{'downstream_bus':2,"
                                         "'pci_path':{'bus':1,'device':3,'function':0}}}"}},
     NULL, NULL},
    {"duplicate serial port", {{C "com1b", "{'type':'serial_port','component':{'num':'com1'}}"}},
     C "com1b/component/num", "com1 is already \"com1\""},
    {"com2 ok", {{C "com2", "{'type':'serial_port','component':{'num':'com2'}}"}}, NULL, NULL},
    {"two pvpanics", {{C "pvpanic2", "{'type':'qemu_pvpanic','component':{'enable_isa':true}}"}},
     C "pvpanic2", "only one qemu_pvpanic"},
    {"two boot settings", {{C "boot2", "{'type':'boot_settings','component':{'order':[]}}"}},
     C "boot2", "only one boot_settings"},
    {"two failure injectors",
     {{C "fi1", "{'type':'migration_failure_injector','component':{'fail_exports':1,'fail_imports':0}}"},
      {C "fi2", "{'type':'migration_failure_injector','component':{'fail_exports':0,'fail_imports':1}}"}},
     C "fi2", "only one migration_failure_injector"},
    {"two vsocks",
     {{C "vs1", "{'type':'virtio_socket','component':{'guest_cid':3,'pci_path':{'bus':0,'device':10,'function':0}}}"},
      {C "vs2", "{'type':'virtio_socket','component':{'guest_cid':4,'pci_path':{'bus':0,'device':11,'function':0}}}"}},
     C "vs2", "only one virtio_socket"},
    {"vsock reserved cid",
     {{C "vs1", "{'type':'virtio_socket','component':{'guest_cid':2,'pci_path':{'bus':0,'device':10,'function':0}}}"}},
     C "vs1/component/guest_cid", "reserved"},
    {"boot entry not a disk", {{C "boot/component/order/0/id", "'net0'"}},
     C "boot/component/order/0/id", "not a disk device"},
    {"boot entry missing", {{C "boot/component/order/0/id", "'disk9'"}},
     C "boot/component/order/0/id", "does not exist"},
    {"boot entry twice", {{C "boot/component/order", "[{'id':'disk0'},{'id':'disk0'}]"}},
     C "boot/component/order/1/id", "already boot entry 0"},
    {"boot nvme then virtio ok", {{C "boot/component/order", "[{'id':'nvme0'},{'id':'disk0'}]"}},
     NULL, NULL},
    {"cpuid leaf out of range",
     {{"/board/cpuid", "{'vendor':'amd','entries':[{'leaf':1073741824,'eax':0,'ebx':0,'ecx':0,'edx':0}]}"}},
     "/board/cpuid/entries/0/leaf", "outside the standard"},
    {"cpuid duplicate leaf",
     {{"/board/cpuid", "{'vendor':'intel','entries':[{'leaf':1,'eax':0,'ebx':0,'ecx':0,'edx':0},"
                       "{'leaf':1,'eax':1,'ebx':0,'ecx':0,'edx':0}]}"}},
     "/board/cpuid/entries/1", "duplicate CPUID leaf 0x1"},
    {"cpuid leaf with and without subleaf",
     {{"/board/cpuid", "{'vendor':'intel','entries':[{'leaf':7,'eax':0,'ebx':0,'ecx':0,'edx':0},"
                       "{'leaf':7,'subleaf':0,'eax':1,'ebx':0,'ecx':0,'edx':0}]}"}},
     "/board/cpuid/entries/1", "both with and without a subleaf"},
    {"cpuid subleaves and extended ok",
     {{"/board/cpuid", "{'vendor':'amd','entries':[{'leaf':7,'subleaf':0,'eax':0,'ebx':0,'ecx':0,'edx':0},"
                       "{'leaf':7,'subleaf':1,'eax':1,'ebx':0,'ecx':0,'edx':0},"
                       "{'leaf':2147483649,'eax':1,'ebx':0,'ecx':0,'edx':0}]}"}},
     NULL, NULL},
    {"nvme serial not ascii", {{C "nvme0/component/serial_number/3", "200"}},
     C "nvme0/component/serial_number", "not printable ASCII"},
    {"nvme duplicate serial",
     {{C "nvme1", "{'type':'nvme_disk','component':{'backend_id':'root','pci_path':{'bus':0,'device':8,'function':0},"
                  "'serial_number':[110,118,109,101,48,32,32,32,32,32,32,32,32,32,32,32,32,32,32,32]}}"},
      {C "disk0", NULL}, {C "boot/component/order", "[]"}},
     C "nvme1/component/serial_number", "same as \"nvme0\""},
    {"nvme pad byte", {{C "nvme0/component/string_pad", "65"}},
     C "nvme0/component/string_pad", "must be 32"},
    {"nvme NUL pad ok", {{C "nvme0/component/string_pad", "0"}}, NULL, NULL},
    {"nic multicast mac", {{C "net0/component/mac", "'03:00:00:00:00:01'"}},
     C "net0/component/mac", "multicast"},
    {"nic mac ok", {{C "net0/component/mac", "'02:00:00:00:00:01'"}}, NULL, NULL},
    {"nic duplicate mac",
     {{C "net0/component/mac", "'02:00:00:00:00:01'"},
      {C "net1", "{'type':'virtio_nic','component':{'backend_id':'net1-be','mac':'02:00:00:00:00:01',"
                 "'interface_id':'6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e60','pci_path':{'bus':0,'device':9,'function':0}}}"},
      {C "net1-be", "{'type':'virtio_network_backend','component':{'vnic_name':'tap1'}}"}},
     C "net1/component/mac", "also \"net0\"'s"},
    {"nic duplicate interface id",
     {{C "net1", "{'type':'virtio_nic','component':{'backend_id':'net1-be',"
                 "'interface_id':'6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f','pci_path':{'bus':0,'device':9,'function':0}}}"},
      {C "net1-be", "{'type':'virtio_network_backend','component':{'vnic_name':'tap1'}}"}},
     C "net1/component/interface_id", "also \"net0\"'s"},
    {"bad tap name", {{C "net0-be/component/vnic_name", "'a very long tap name'"}},
     C "net0-be/component/vnic_name", "not a Linux interface name"},
    {"block size not power of two", {{C "root/component/block_size", "1000"}},
     C "root/component/block_size", "power of two"},
    {"block size 4096 ok", {{C "root/component/block_size", "4096"}}, NULL, NULL},
    {"empty file path", {{C "root/component/path", "''"}},
     C "root/component/path", "needs a path"},
    {"too many workers", {{C "root/component/workers", "100"}},
     C "root/component/workers", "from 1 to 64"},
    {"bad nbd uri", {{C "data/component/uri", "'http://x/y'"}},
     C "data/component/uri", "not an NBD URI"},
    {"nbd unix uri ok", {{C "data/component/uri", "'nbd+unix:///data?socket=/run/nbd.sock'"}},
     NULL, NULL},
    {"blob not base64",
     {{C "root", "{'type':'blob_storage_backend','component':{'base64':'@@@@','readonly':true}}"}},
     C "root/component/base64", "not valid"},
    {"blob not whole blocks",
     {{C "root", "{'type':'blob_storage_backend','component':{'base64':'AAAA','readonly':true}}"}},
     C "root/component/base64", "512-byte"},
};
/* clang-format on */

static json_t *apply_ops(const struct op *ops)
{
    json_t *doc = fixture_json(fixture_base_spec);
    for (int i = 0; i < 4 && ops[i].ptr; i++)
        fixture_set(doc, ops[i].ptr, ops[i].value ? fixture_json(ops[i].value) : NULL);
    return doc;
}

static bool has_error(const struct cella_errors *e, const char *ptr, const char *text)
{
    for (size_t i = 0; i < e->count; i++) {
        if (!strcmp(e->items[i].pointer, ptr) && strstr(e->items[i].message, text))
            return true;
    }
    return false;
}

static void run_case(const struct vcase *vc)
{
    json_t *doc = apply_ops(vc->ops);
    struct jptr root;
    jptr_root(&root);
    struct instance_spec s;
    struct cella_errors errs = {0};
    int r = spec_from_json(doc, &root, SPEC_VERSION_CURRENT, &s, &errs);
    if (r < 0) {
        cella_errors_print(&errs, stdout);
        fail_msg("case \"%s\": decode failed", vc->name);
    }
    r = spec_validate(&s, &errs);
    if (!vc->want_ptr) {
        if (r != 0 || errs.count) {
            cella_errors_print(&errs, stdout);
            fail_msg("case \"%s\": expected valid", vc->name);
        }
    } else if (r != -EINVAL || !has_error(&errs, vc->want_ptr, vc->want_text)) {
        cella_errors_print(&errs, stdout);
        fail_msg("case \"%s\": expected %s: ...%s...", vc->name, vc->want_ptr, vc->want_text);
    }
    cella_errors_clear(&errs);
    spec_free(&s);
    json_decref(doc);
}

static void test_rule(void **state)
{
    run_case(*state);
}

/* Many problems at once are all reported, in one pass. */
static void test_all_problems_in_one_pass(void **state)
{
    (void)state;
    static const struct op ops[] = {
        {"/board/cpus", "0"},
        {C "disk0/component/backend_id", "'nope'"},
        {C "nvme0/component/pci_path/device", "40"},
        {C "com2", "{'type':'serial_port','component':{'num':'com1'}}"}};
    json_t *doc = apply_ops(ops);
    struct jptr root;
    jptr_root(&root);
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(spec_from_json(doc, &root, SPEC_VERSION_CURRENT, &s, &errs), 0);
    assert_int_equal(spec_validate(&s, &errs), -EINVAL);
    assert_true(has_error(&errs, "/board/cpus", "vCPU"));
    assert_true(has_error(&errs, C "disk0/component/backend_id", "does not exist"));
    assert_true(has_error(&errs, C "nvme0/component/pci_path", "over 31"));
    assert_true(has_error(&errs, C "com2/component/num", "already"));
    /* root is now unused as well */
    assert_true(has_error(&errs, C "root", "not used"));
    cella_errors_clear(&errs);
    spec_free(&s);
    json_decref(doc);
}

static void load(const struct op *ops, struct instance_spec *s)
{
    json_t *doc = apply_ops(ops);
    struct jptr root;
    jptr_root(&root);
    struct cella_errors errs = {0};
    int r = spec_from_json(doc, &root, SPEC_VERSION_CURRENT, s, &errs);
    cella_errors_print(&errs, stdout);
    assert_int_equal(r, 0);
    cella_errors_clear(&errs);
    json_decref(doc);
}

static void test_host_support(void **state)
{
    (void)state;
    struct instance_spec s;
    static const struct op ok[] = {{0}};
    load(ok, &s);
    struct cella_errors errs = {0};
    assert_int_equal(spec_check_host_support(&s, &errs), 0);
    spec_free(&s);

    static const struct op bad[] = {
        {C "data", "{'type':'crucible_storage_backend','component':{'readonly':false,"
                   "'request_json':'{}'}}"},
        {C "net0-be", "{'type':'dlpi_network_backend','component':{'vnic_name':'vnic0'}}"},
        {C "share", "{'type':'p9fs','component':{'chunk_size':8192,'source':'/s','target':'t',"
                    "'pci_path':{'bus':0,'device':12,'function':0}}}"},
        {C "npu", "{'type':'soft_npu_pci_port','component':{'pci_path':{'bus':0,'device':13,"
                  "'function':0}}}"}};
    load(bad, &s);
    assert_int_equal(spec_check_host_support(&s, &errs), -ENOTSUP);
    assert_int_equal(errs.count, 4);
    assert_true(has_error(&errs, C "data/type", "use nbd_storage_backend"));
    assert_true(has_error(&errs, C "net0-be/type", "tap interface"));
    assert_true(has_error(&errs, C "share/type", "p9fs"));
    assert_true(has_error(&errs, C "npu/type", "illumos"));
    cella_errors_clear(&errs);
    spec_free(&s);
}

static int replacement(const char *key, const char *kind, const char *fields,
                       struct spec_replacement *out)
{
    json_t *j = fixture_json(fields);
    enum spec_kind k;
    assert_int_equal(spec_kind_from_name(kind, &k), 0);
    struct jptr root;
    jptr_root(&root);
    int r =
        spec_component_fields_from_json(j, k, key, &root, SPEC_VERSION_CURRENT, &out->comp, NULL);
    json_decref(j);
    return r;
}

static void test_replacement(void **state)
{
    (void)state;
    static const struct op none[] = {{0}};
    struct instance_spec src, out;
    load(none, &src);
    struct spec_replacement r[2];
    struct cella_errors errs = {0};

    /* Allowed: same-kind backends, new location of the same data. */
    assert_int_equal(replacement("root", "file_storage_backend",
                                 "{'path':'/mnt/other/root.raw','readonly':false,'block_size':512}",
                                 &r[0]),
                     0);
    assert_int_equal(
        replacement("net0-be", "virtio_network_backend", "{'vnic_name':'tap9'}", &r[1]), 0);
    assert_int_equal(spec_apply_replacements(&src, r, 2, &out, &errs), 0);
    assert_string_equal(spec_find(&out, "root")->u.file_storage_backend.path,
                        "/mnt/other/root.raw");
    assert_string_equal(spec_find(&out, "net0-be")->u.virtio_network_backend.vnic_name, "tap9");
    assert_string_equal(spec_find(&src, "root")->u.file_storage_backend.path,
                        "/var/lib/vm/root.raw");
    struct spec_diff d;
    assert_int_equal(spec_guest_diff(&src, &out, &d), 0);
    spec_diff_free(&d);
    spec_free(&out);
    spec_component_free(&r[0].comp);
    spec_component_free(&r[1].comp);

    /* Missing key. */
    replacement("ghost", "file_storage_backend", "{'path':'/x','readonly':false,'block_size':512}",
                &r[0]);
    assert_int_equal(spec_apply_replacements(&src, r, 1, &out, &errs), -EINVAL);
    assert_true(has_error(&errs, "/replace_components/ghost", "no component \"ghost\""));
    spec_component_free(&r[0].comp);
    cella_errors_clear(&errs);

    /* Kind change. */
    replacement("root", "nbd_storage_backend", "{'uri':'nbd://h/x','readonly':false}", &r[0]);
    assert_int_equal(spec_apply_replacements(&src, r, 1, &out, &errs), -EINVAL);
    assert_true(has_error(&errs, "/replace_components/root", "must be the same kind"));
    spec_component_free(&r[0].comp);
    cella_errors_clear(&errs);

    /* A device. */
    replacement("disk0", "virtio_disk",
                "{'backend_id':'root','pci_path':{'bus':0,'device':4,'function':0}}", &r[0]);
    assert_int_equal(spec_apply_replacements(&src, r, 1, &out, &errs), -EINVAL);
    assert_true(has_error(&errs, "/replace_components/disk0", "never devices"));
    spec_component_free(&r[0].comp);
    cella_errors_clear(&errs);

    /* Same kind, but the guest would see a read-only disk now. */
    replacement("root", "file_storage_backend", "{'path':'/y','readonly':true,'block_size':512}",
                &r[0]);
    assert_int_equal(spec_apply_replacements(&src, r, 1, &out, &errs), -EINVAL);
    assert_true(has_error(&errs, C "root/component/readonly", "changes what the guest sees"));
    spec_component_free(&r[0].comp);
    cella_errors_clear(&errs);

    /* The replacement itself must be valid. */
    replacement("net0-be", "virtio_network_backend", "{'vnic_name':'bad/name'}", &r[0]);
    assert_int_equal(spec_apply_replacements(&src, r, 1, &out, &errs), -EINVAL);
    assert_true(has_error(&errs, C "net0-be/component/vnic_name", "interface name"));
    spec_component_free(&r[0].comp);
    cella_errors_clear(&errs);
    spec_free(&src);
}

static bool diff_has(const struct spec_diff *d, const char *ptr, const char *text)
{
    for (size_t i = 0; i < d->count; i++) {
        if (!strcmp(d->items[i].pointer, ptr) && strstr(d->items[i].text, text))
            return true;
    }
    return false;
}

static void test_diff(void **state)
{
    (void)state;
    static const struct op none[] = {{0}};
    static const struct op changed[] = {{C "disk0/component/pci_path/device", "9"},
                                        {C "nvme0/component/serial_number/0", "65"},
                                        {"/board/cpus", "4"},
                                        {C "data/component/uri", "'nbd://elsewhere/data'"}};
    struct instance_spec a, b;
    load(none, &a);
    load(changed, &b);
    struct spec_diff d;
    assert_int_equal(spec_guest_diff(&a, &a, &d), 0);
    spec_diff_free(&d);
    int n = spec_guest_diff(&a, &b, &d);
    for (size_t i = 0; i < d.count; i++)
        printf("# %s: %s\n", d.items[i].pointer, d.items[i].text);
    /* pci path, serial, cpus, and the boot order (disk0 moved) -- not the NBD URI */
    assert_int_equal(n, 4);
    assert_true(diff_has(&d, C "disk0/component/pci_path", "0.4.0 vs 0.9.0"));
    assert_true(diff_has(&d, C "nvme0/component/serial_number", "\"nvme0"));
    assert_true(diff_has(&d, "/board/cpus", "2 vs 4"));
    assert_true(diff_has(&d, C "boot/component/order", "0.4.0 vs 0.9.0"));
    spec_diff_free(&d);
    spec_free(&b);

    static const struct op more[] = {
        {C "com2", "{'type':'serial_port','component':{'num':'com2'}}"},
        {C "pvpanic", NULL},
        {C "net0/component/mac", "'02:00:00:00:00:09'"},
        {"/smbios",
         "{'manufacturer':'cella','product_name':'vm','serial_number':'1','version':0}"}};
    load(more, &b);
    n = spec_guest_diff(&a, &b, &d);
    assert_int_equal(n, 4);
    assert_true(diff_has(&d, C "com2", "only in the second"));
    assert_true(diff_has(&d, C "pvpanic", "only in the first"));
    assert_true(diff_has(&d, C "net0/component/mac", "02:00:00:00:00:09"));
    assert_true(diff_has(&d, "/smbios", "SMBIOS"));
    spec_diff_free(&d);
    spec_free(&b);
    spec_free(&a);
}

#define NCASES (sizeof(cases) / sizeof(cases[0]))

int main(void)
{
    /* One cmocka test per rule case, so each is counted and named. */
    struct CMUnitTest tests[NCASES + 4] = {
        cmocka_unit_test(test_all_problems_in_one_pass),
        cmocka_unit_test(test_host_support),
        cmocka_unit_test(test_replacement),
        cmocka_unit_test(test_diff),
    };
    for (size_t i = 0; i < NCASES; i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_rule, (void *)&cases[i]);
        t.name = cases[i].name;
        tests[4 + i] = t;
    }
    return _cmocka_run_group_tests("spec_validate", tests, NCASES + 4, NULL, NULL);
}
