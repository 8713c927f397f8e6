/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Config TOML -> InstanceSpec: every section, its defaults, every kind of
 * problem (with the line it must name), and the shipped examples.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "spec/spec_json.h"
#include "spec/validate.h"

#ifndef CELLA_EXAMPLES_DIR
#define CELLA_EXAMPLES_DIR "examples"
#endif

/* A fixed "random" source: bytes 0, 1, 2, ... so generated UUIDs are known. */
static int counting_random(void *buf, size_t len, void *ctx)
{
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = (uint8_t)i;
    return 0;
}

static const struct config_options test_opts = {
    .random_bytes = counting_random,
};

/* Converts text; the caller frees res and errs. */
static int convert(const char *text, struct config_result *res, struct cella_errors *errs)
{
    return config_convert(text, strlen(text), &test_opts, res, errs);
}

/* Converts text that must be good; returns the result for inspection. */
static void convert_ok(const char *text, struct config_result *res)
{
    struct cella_errors errs = {0};
    int r = convert(text, res, &errs);
    if (r != 0 || errs.count) {
        for (size_t i = 0; i < errs.count; i++)
            print_message("unexpected: %s: %s\n", errs.items[i].pointer, errs.items[i].message);
    }
    assert_int_equal(r, 0);
    assert_int_equal(cella_errors_total(&errs), 0);
    cella_errors_clear(&errs);
    /* What config produces is always a valid spec. */
    struct cella_errors v = {0};
    assert_int_equal(spec_validate(&res->spec, &v), 0);
    cella_errors_clear(&v);
}

/*
 * Whether errs has a record at `line` (0: any) with exactly `pointer`
 * whose message contains `text`.
 */
static bool has_error(const struct cella_errors *errs, unsigned line, const char *pointer,
                      const char *text)
{
    char prefix[48];
    snprintf(prefix, sizeof(prefix), "line %u, ", line);
    for (size_t i = 0; i < errs->count; i++) {
        const struct cella_error *e = &errs->items[i];
        if (line && strncmp(e->message, prefix, strlen(prefix)) != 0)
            continue;
        if (pointer && strcmp(e->pointer, pointer) != 0)
            continue;
        if (strstr(e->message, text))
            return true;
    }
    return false;
}

static void dump_errors(const struct cella_errors *errs)
{
    for (size_t i = 0; i < errs->count; i++)
        print_message("  %s: %s\n", errs->items[i].pointer, errs->items[i].message);
}

/* Converts text that must fail with a problem at line/pointer containing text. */
static void expect_error(const char *text, unsigned line, const char *pointer, const char *want)
{
    struct config_result res;
    struct cella_errors errs = {0};
    int r = convert(text, &res, &errs);
    assert_int_equal(r, -EINVAL);
    assert_int_equal(res.spec.count, 0);
    if (!has_error(&errs, line, pointer, want)) {
        print_message("wanted line %u %s \"%s\"; got:\n", line, pointer, want);
        dump_errors(&errs);
        fail();
    }
    cella_errors_clear(&errs);
    config_result_free(&res);
}

static const struct spec_component *find(const struct config_result *res, const char *key,
                                         enum spec_kind kind)
{
    const struct spec_component *c = spec_find(&res->spec, key);
    assert_non_null(c);
    assert_int_equal(c->kind, kind);
    return c;
}

/* ---- sections and defaults ---- */

static void test_minimal_defaults(void **state)
{
    struct config_result res;
    convert_ok("[main]\nmemory = 256\n", &res);
    assert_int_equal(res.spec.board.cpus, CONFIG_DEFAULT_CPUS);
    assert_int_equal(res.spec.board.memory_mb, 256);
    assert_false(res.spec.board.enable_pcie);
    assert_false(res.spec.board.has_cpuid);
    assert_int_equal(res.spec.board.hv, GUEST_HV_BHYVE);
    assert_null(res.name);
    /* Only the default COM1. */
    assert_int_equal(res.spec.count, 1);
    assert_int_equal(find(&res, "com1", SK_SERIAL_PORT)->u.serial_port.num, 1);
    config_result_free(&res);
}

static const char disk_cfg[] = "[main]\n"
                               "name = \"vm1\"\n"
                               "cpus = 4\n"
                               "memory = 1024\n"
                               "boot_order = [\"disk1\", \"disk0\"]\n"
                               "[block_dev.a]\n"
                               "type = \"file\"\n"
                               "path = \"/images/a.raw\"\n"
                               "[block_dev.b]\n"
                               "type = \"file\"\n"
                               "path = \"b.raw\"\n"
                               "readonly = true\n"
                               "block_size = 4096\n"
                               "workers = 8\n"
                               "[dev.disk0]\n"
                               "driver = \"pci-virtio-block\"\n"
                               "block_dev = \"a\"\n"
                               "pci-path = \"0.4.0\"\n"
                               "[dev.disk1]\n"
                               "driver = \"pci-nvme\"\n"
                               "block_dev = \"b\"\n"
                               "pci-path = \"0.5.0\"\n";

static void test_main_and_disks(void **state)
{
    struct config_result res;
    convert_ok(disk_cfg, &res);
    assert_string_equal(res.name, "vm1");
    assert_int_equal(res.spec.board.cpus, 4);
    assert_int_equal(res.spec.board.memory_mb, 1024);

    const struct spec_component *c = find(&res, "boot-settings", SK_BOOT_SETTINGS);
    assert_int_equal(c->u.boot_settings.order.count, 2);
    assert_string_equal(c->u.boot_settings.order.ids[0], "disk1");
    assert_string_equal(c->u.boot_settings.order.ids[1], "disk0");

    c = find(&res, "disk0", SK_VIRTIO_DISK);
    assert_string_equal(c->u.virtio_disk.backend_id, "a");
    assert_int_equal(c->u.virtio_disk.pci_path.device, 4);

    c = find(&res, "a", SK_FILE_STORAGE_BACKEND);
    assert_string_equal(c->u.file_storage_backend.path, "/images/a.raw");
    assert_int_equal(c->u.file_storage_backend.block_size, CONFIG_DEFAULT_BLOCK_SIZE);
    assert_false(c->u.file_storage_backend.readonly);
    assert_false(c->u.file_storage_backend.workers.present);

    c = find(&res, "b", SK_FILE_STORAGE_BACKEND);
    assert_string_equal(c->u.file_storage_backend.path, "b.raw"); /* no base_dir */
    assert_int_equal(c->u.file_storage_backend.block_size, 4096);
    assert_true(c->u.file_storage_backend.readonly);
    assert_true(c->u.file_storage_backend.workers.present);
    assert_int_equal(c->u.file_storage_backend.workers.value, 8);

    c = find(&res, "disk1", SK_NVME_DISK);
    assert_int_equal(c->u.nvme_disk.pci_path.bus, 0);
    assert_int_equal(c->u.nvme_disk.pci_path.device, 5);
    assert_int_equal(c->u.nvme_disk.pci_path.function, 0);
    /* 7 components: 2 disks, 2 backends, boot settings, com1. */
    assert_int_equal(res.spec.count, 6);
    config_result_free(&res);
}

static void test_nvme_serial(void **state)
{
    struct config_result res;
    convert_ok(disk_cfg, &res);
    const struct spec_component *c = find(&res, "disk1", SK_NVME_DISK);
    /* Default: the device name padded with spaces to 20 bytes. */
    assert_memory_equal(c->u.nvme_disk.serial_number, "disk1               ", 20);
    assert_int_equal(c->u.nvme_disk.string_pad, ' ');
    config_result_free(&res);

    char text[2048];
    snprintf(text, sizeof(text), "%sserial = \"SN-42\"\n", disk_cfg);
    convert_ok(text, &res);
    c = find(&res, "disk1", SK_NVME_DISK);
    assert_memory_equal(c->u.nvme_disk.serial_number, "SN-42               ", 20);
    config_result_free(&res);

    snprintf(text, sizeof(text), "%sserial = \"12345678901234567890\"\n", disk_cfg);
    convert_ok(text, &res);
    c = find(&res, "disk1", SK_NVME_DISK);
    assert_memory_equal(c->u.nvme_disk.serial_number, "12345678901234567890", 20);
    config_result_free(&res);

    /* 21 bytes is one too many. */
    snprintf(text, sizeof(text), "%sserial = \"123456789012345678901\"\n", disk_cfg);
    expect_error(text, 23, "/dev/disk1/serial", "21 bytes long; the limit is 20");

    /* A name over 20 bytes cannot be the default serial. */
    expect_error("[main]\nmemory = 1\n"
                 "[block_dev.b]\ntype = \"nbd\"\nuri = \"nbd://h/x\"\n"
                 "[dev.a-very-long-nvme-device-name]\n"
                 "driver = \"pci-nvme\"\nblock_dev = \"b\"\npci-path = \"0.4.0\"\n",
                 6, "/dev/a-very-long-nvme-device-name/serial", "set \"serial\"");
    expect_error("[main]\nmemory = 1\n"
                 "[block_dev.b]\ntype = \"nbd\"\nuri = \"nbd://h/x\"\n"
                 "[dev.n]\n"
                 "driver = \"pci-nvme\"\nblock_dev = \"b\"\npci-path = \"0.4.0\"\n"
                 "serial = \"caf\\u00e9\"\n",
                 10, "/dev/n/serial", "printable ASCII");
}

static void test_chipset_and_bridges(void **state)
{
    struct config_result res;
    convert_ok("[main]\nmemory = 64\n"
               "[chipset]\nenable-pcie = true\n"
               "[[pci_bridge]]\npci-path = \"0.6.0\"\ndownstream-bus = 1\n"
               "[[pci_bridge]]\npci-path = \"1.2.0\"\ndownstream-bus = 2\n",
               &res);
    assert_true(res.spec.board.enable_pcie);
    const struct spec_component *c = find(&res, "pci-bridge-0", SK_PCI_PCI_BRIDGE);
    assert_int_equal(c->u.pci_pci_bridge.downstream_bus, 1);
    assert_int_equal(c->u.pci_pci_bridge.pci_path.device, 6);
    c = find(&res, "pci-bridge-1", SK_PCI_PCI_BRIDGE);
    assert_int_equal(c->u.pci_pci_bridge.downstream_bus, 2);
    assert_int_equal(c->u.pci_pci_bridge.pci_path.bus, 1);
    assert_int_equal(c->u.pci_pci_bridge.pci_path.device, 2);
    config_result_free(&res);
}

static void test_blob_and_nbd(void **state)
{
    char tmpl[] = "/tmp/cella-test-blob-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    /* Blobs are whole 512-byte blocks: "hello" and zeros. */
    char block[512] = "hello";
    assert_int_equal(write(fd, block, sizeof(block)), sizeof(block));
    close(fd);
    /* 512 zero bytes in base64: 683 'A's and one '='. */
    char zeros[685];
    memset(zeros, 'A', 683);
    zeros[683] = '=';
    zeros[684] = '\0';
    char text[2048];
    snprintf(text, sizeof(text),
             "[main]\nmemory = 64\n"
             "[block_dev.inline]\ntype = \"blob\"\nbase64 = \"%s\"\n"
             "[block_dev.fromfile]\ntype = \"blob\"\npath = \"%s\"\nreadonly = true\n"
             "[block_dev.net]\ntype = \"nbd\"\nuri = \"nbd://192.0.2.1:10809/x\"\n"
             "[dev.d0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"inline\"\n"
             "pci-path = \"0.4.0\"\n"
             "[dev.d1]\ndriver = \"pci-virtio-block\"\nblock_dev = \"fromfile\"\n"
             "pci-path = \"0.5.0\"\n"
             "[dev.d2]\ndriver = \"pci-nvme\"\nblock_dev = \"net\"\npci-path = \"0.6.0\"\n",
             zeros, tmpl);
    struct config_result res;
    convert_ok(text, &res);
    unlink(tmpl);
    const struct spec_component *c = find(&res, "inline", SK_BLOB_STORAGE_BACKEND);
    assert_string_equal(c->u.blob_storage_backend.base64, zeros);
    assert_false(c->u.blob_storage_backend.readonly);
    c = find(&res, "fromfile", SK_BLOB_STORAGE_BACKEND);
    assert_int_equal(strlen(c->u.blob_storage_backend.base64), 684);
    assert_memory_equal(c->u.blob_storage_backend.base64, "aGVsbG8AAAAA", 12);
    assert_true(c->u.blob_storage_backend.readonly);
    c = find(&res, "net", SK_NBD_STORAGE_BACKEND);
    assert_string_equal(c->u.nbd_storage_backend.uri, "nbd://192.0.2.1:10809/x");
    assert_false(c->u.nbd_storage_backend.readonly);
    config_result_free(&res);

    static const char head[] = "[main]\nmemory = 64\n[block_dev.b]\ntype = \"blob\"\n";
    static const char tail[] =
        "[dev.d]\ndriver = \"pci-virtio-block\"\nblock_dev = \"b\"\npci-path = \"0.4.0\"\n";
    snprintf(text, sizeof(text), "%sbase64 = \"aGk\"\n%s", head, tail);
    expect_error(text, 5, "/block_dev/b/base64", "not valid base64");
    snprintf(text, sizeof(text), "%sbase64 = \"aGk=\"\npath = \"/x\"\n%s", head, tail);
    expect_error(text, 6, "/block_dev/b/path", "both \"base64\" and \"path\"");
    snprintf(text, sizeof(text), "%s%s", head, tail);
    expect_error(text, 3, "/block_dev/b/base64", "needs the blob's contents");
    snprintf(text, sizeof(text), "%spath = \"/nonexistent/cella/blob\"\n%s", head, tail);
    expect_error(text, 5, "/block_dev/b/path", "cannot read blob file");
}

static void test_relative_paths(void **state)
{
    static const char text[] =
        "[main]\nmemory = 64\n"
        "[block_dev.rel]\ntype = \"file\"\npath = \"images/r.raw\"\n"
        "[block_dev.abs]\ntype = \"file\"\npath = \"/abs/a.raw\"\n"
        "[dev.d0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"rel\"\npci-path = \"0.4.0\"\n"
        "[dev.d1]\ndriver = \"pci-virtio-block\"\nblock_dev = \"abs\"\npci-path = \"0.5.0\"\n";
    struct config_options o = test_opts;
    o.base_dir = "/srv/vms";
    struct config_result res;
    struct cella_errors errs = {0};
    assert_int_equal(config_convert(text, strlen(text), &o, &res, &errs), 0);
    assert_string_equal(find(&res, "rel", SK_FILE_STORAGE_BACKEND)->u.file_storage_backend.path,
                        "/srv/vms/images/r.raw");
    assert_string_equal(find(&res, "abs", SK_FILE_STORAGE_BACKEND)->u.file_storage_backend.path,
                        "/abs/a.raw");
    config_result_free(&res);
}

static const char nic_head[] = "[main]\nmemory = 64\n"
                               "[dev.net0]\n"
                               "driver = \"pci-virtio-viona\"\n"
                               "vnic = \"tap0\"\n"
                               "pci-path = \"0.5.0\"\n";

static void test_nic(void **state)
{
    struct config_result res;
    convert_ok(nic_head, &res);
    const struct spec_component *c = find(&res, "net0", SK_VIRTIO_NIC);
    assert_string_equal(c->u.virtio_nic.backend_id, "net0-backend");
    /* Generated: version 4, RFC 4122 variant, from the test's byte source. */
    assert_string_equal(c->u.virtio_nic.interface_id, "00010203-0405-4607-8809-0a0b0c0d0e0f");
    assert_false(c->u.virtio_nic.mac.present);
    c = find(&res, "net0-backend", SK_VIRTIO_NETWORK_BACKEND);
    assert_string_equal(c->u.virtio_network_backend.vnic_name, "tap0");
    config_result_free(&res);

    char text[1024];
    snprintf(text, sizeof(text),
             "%sinterface-id = \"11111111-2222-4333-8444-555555555555\"\n"
             "mac = \"02:AB:cd:00:00:01\"\n",
             nic_head);
    convert_ok(text, &res);
    c = find(&res, "net0", SK_VIRTIO_NIC);
    assert_string_equal(c->u.virtio_nic.interface_id, "11111111-2222-4333-8444-555555555555");
    assert_true(c->u.virtio_nic.mac.present);
    static const uint8_t mac[6] = {0x02, 0xab, 0xcd, 0, 0, 1};
    assert_memory_equal(c->u.virtio_nic.mac.bytes, mac, 6);
    config_result_free(&res);

    snprintf(text, sizeof(text), "%sinterface-id = \"not-a-uuid\"\n", nic_head);
    expect_error(text, 7, "/dev/net0/interface-id", "must be a UUID");
    snprintf(text, sizeof(text), "%smac = \"02:00:00:00:00\"\n", nic_head);
    expect_error(text, 7, "/dev/net0/mac", "must be a MAC address");
    snprintf(text, sizeof(text), "%smac = \"03:00:00:00:00:01\"\n", nic_head);
    expect_error(text, 7, "/dev/net0/mac", "unicast");
    expect_error("[main]\nmemory = 64\n[dev.n]\ndriver = \"pci-virtio-viona\"\n"
                 "vnic = \"a-very-long-tap-name\"\npci-path = \"0.5.0\"\n",
                 5, "/dev/n/vnic", "the limit is 15");
    /* The derived backend key clashes with a block_dev of that name. */
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.net0-backend]\ntype = \"nbd\"\nuri = \"nbd://h/x\"\n"
                 "[dev.d]\ndriver = \"pci-virtio-block\"\nblock_dev = \"net0-backend\"\n"
                 "pci-path = \"0.4.0\"\n"
                 "[dev.net0]\ndriver = \"pci-virtio-viona\"\nvnic = \"tap0\"\n"
                 "pci-path = \"0.5.0\"\n",
                 12, "/dev/net0/vnic", "\"net0-backend\", which [block_dev.net0-backend] (line 3)");
}

static void test_pvpanic_uart_injector(void **state)
{
    struct config_result res;
    convert_ok("[main]\nmemory = 64\n"
               "[dev.pvpanic]\ndriver = \"qemu-pvpanic\"\n"
               "[dev.com2]\ndriver = \"uart\"\n"
               "[dev.console]\ndriver = \"uart\"\nport = \"com3\"\n"
               "[dev.inject]\ndriver = \"migration-failure-injector\"\nfail_exports = 2\n",
               &res);
    assert_true(find(&res, "pvpanic", SK_QEMU_PVPANIC)->u.qemu_pvpanic.enable_isa);
    assert_int_equal(find(&res, "com2", SK_SERIAL_PORT)->u.serial_port.num, 2);
    assert_int_equal(find(&res, "console", SK_SERIAL_PORT)->u.serial_port.num, 3);
    /* A declared uart turns the default COM1 off. */
    assert_null(spec_find(&res.spec, "com1"));
    const struct spec_component *c = find(&res, "inject", SK_MIGRATION_FAILURE_INJECTOR);
    assert_int_equal(c->u.migration_failure_injector.fail_exports, 2);
    assert_int_equal(c->u.migration_failure_injector.fail_imports, 0);
    config_result_free(&res);

    convert_ok("[main]\nmemory = 64\n[dev.p]\ndriver = \"qemu-pvpanic\"\nenable_isa = false\n",
               &res);
    assert_false(find(&res, "p", SK_QEMU_PVPANIC)->u.qemu_pvpanic.enable_isa);
    config_result_free(&res);

    expect_error("[main]\nmemory = 64\n[dev.console]\ndriver = \"uart\"\n", 3, "/dev/console/port",
                 "missing required key \"port\"");
    expect_error("[main]\nmemory = 64\n[dev.console]\ndriver = \"uart\"\nport = \"com5\"\n", 5,
                 "/dev/console/port", "must be \"com1\"");
}

static void test_cpuid(void **state)
{
    struct config_result res;
    convert_ok("[main]\nmemory = 64\ncpuid_profile = \"mine\"\n"
               "[cpuid.mine]\n"
               "vendor = \"intel\"\n"
               "\"0x7-0x1\" = [5, 6, 7, 8]\n"
               "\"1\" = [0x10, 0, 0, 0xffffffff]\n"
               "\"7-0\" = [1, 2, 3, 4]\n"
               "\"0\" = [0xd, 0, 0, 0]\n"
               "[cpuid.other]\n"
               "vendor = \"amd\"\n"
               "\"0x80000000\" = [0, 0, 0, 0]\n",
               &res);
    const struct spec_board *b = &res.spec.board;
    assert_true(b->has_cpuid);
    assert_int_equal(b->cpuid.vendor, CPUID_VENDOR_INTEL);
    assert_int_equal(b->cpuid.count, 4);
    /* Sorted by leaf, then subleaf. */
    assert_int_equal(b->cpuid.entries[0].leaf, 0);
    assert_int_equal(b->cpuid.entries[0].eax, 0xd);
    assert_int_equal(b->cpuid.entries[1].leaf, 1);
    assert_false(b->cpuid.entries[1].has_subleaf);
    assert_int_equal(b->cpuid.entries[1].edx, 0xffffffffu);
    assert_int_equal(b->cpuid.entries[2].leaf, 7);
    assert_true(b->cpuid.entries[2].has_subleaf);
    assert_int_equal(b->cpuid.entries[2].subleaf, 0);
    assert_int_equal(b->cpuid.entries[3].subleaf, 1);
    assert_int_equal(b->cpuid.entries[3].ecx, 7);
    config_result_free(&res);

    /* Profiles that are not selected do not reach the board. */
    convert_ok("[main]\nmemory = 64\n[cpuid.x]\nvendor = \"amd\"\n\"0\" = [0, 0, 0, 0]\n", &res);
    assert_false(res.spec.board.has_cpuid);
    config_result_free(&res);

    expect_error("[main]\nmemory = 64\ncpuid_profile = \"nope\"\n", 3, "/main/cpuid_profile",
                 "names no [cpuid.nope]");
    expect_error("[main]\nmemory = 64\ncpuid_profile = \"p\"\n"
                 "[cpuid.p]\nvendor = \"amd\"\n\"1\" = [1, 2, 3]\n",
                 6, "/cpuid/p/1", "array of 4 integers");
    expect_error("[main]\nmemory = 64\ncpuid_profile = \"p\"\n"
                 "[cpuid.p]\nvendor = \"amd\"\n\"1\" = [1, 2, 3, -1]\n",
                 6, "/cpuid/p/1/3", "edx");
    expect_error("[main]\nmemory = 64\ncpuid_profile = \"p\"\n"
                 "[cpuid.p]\nvendor = \"amd\"\n\"0x1\" = [1, 2, 3, 4]\n\"1\" = [1, 2, 3, 4]\n",
                 7, "/cpuid/p", "sets leaf 0x1 twice (also on line 6)");
    expect_error("[main]\nmemory = 64\n[cpuid.p]\nvendor = \"amd\"\n", 3, "/cpuid/p", "no leaves");
    expect_error("[main]\nmemory = 64\n[cpuid.p]\nvendor = \"via\"\n", 4, "/cpuid/p/vendor",
                 "\"amd\" or \"intel\"");
    expect_error("[main]\nmemory = 64\n[cpuid.p]\nvendor = \"amd\"\n\"leaf1\" = [1, 2, 3, 4]\n", 5,
                 "/cpuid/p/leaf1", "\"leaf\" or \"leaf-subleaf\"");
    expect_error(
        "[main]\nmemory = 64\n[cpuid.p]\nvendor = \"amd\"\n\"0x100000000\" = [1, 2, 3, 4]\n", 5,
        "/cpuid/p/0x100000000", "32-bit number");
    /* A rule of the spec validator, placed at the TOML line of the leaf. */
    expect_error("[main]\nmemory = 64\ncpuid_profile = \"p\"\n"
                 "[cpuid.p]\nvendor = \"amd\"\n\"1\" = [1, 2, 3, 4]\n\"1-0\" = [1, 2, 3, 4]\n",
                 7, "/board/cpuid/entries/1", "[cpuid.p]");
}

/* ---- problems ---- */

static void test_unknown_key(void **state)
{
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.r]\ntype = \"file\"\npath = \"/r\"\n"
                 "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\n"
                 "pci_path = \"0.4.0\"\n",
                 9, "/dev/disk0/pci_path",
                 "unknown key \"pci_path\" in [dev.disk0] (did you mean \"pci-path\"?)");
    expect_error("[main]\nmemory = 64\nflavour = 3\n", 3, "/main/flavour",
                 "unknown key \"flavour\" in [main]");
    expect_error("[main]\nmemory = 64\n[devs.x]\ndriver = \"uart\"\n", 3, "/devs",
                 "did you mean \"dev\"?");
    expect_error("[main]\nmemory = 64\n[chipset]\nenable_pcie = true\n", 4, "/chipset/enable_pcie",
                 "did you mean \"enable-pcie\"?");
    /* Propolis-standalone host keys are refused with the reason. */
    expect_error("[main]\nmemory = 64\nbootrom = \"/x.fd\"\n", 3, "/main/bootrom", "host setting");
    /* Unknown driver and type values. */
    expect_error("[main]\nmemory = 64\n[dev.d]\ndriver = \"pci-virtio-blk\"\n", 4, "/dev/d/driver",
                 "did you mean \"pci-virtio-block\"?");
    expect_error("[main]\nmemory = 64\n[block_dev.b]\ntype = \"crucible\"\n", 4,
                 "/block_dev/b/type", "Crucible");
}

static void test_wrong_type(void **state)
{
    expect_error("[main]\ncpus = \"two\"\nmemory = 64\n", 2, "/main/cpus",
                 "\"cpus\" in [main] must be an integer, not a string");
    expect_error("[main]\nmemory = 64\n[chipset]\nenable-pcie = 1\n", 4, "/chipset/enable-pcie",
                 "must be true or false, not an integer");
    expect_error("[main]\nmemory = 64\nboot_order = \"disk0\"\n", 3, "/main/boot_order",
                 "must be an array, not a string");
    expect_error("main = 3\n", 1, "/main", "\"main\" must be a table, not an integer");
    expect_error("[main]\nmemory = 64\npci_bridge = 1\n", 3, "/main/pci_bridge", "unknown key");
    expect_error("pci_bridge = 1\n[main]\nmemory = 64\n", 1, "/pci_bridge",
                 "must be an array of tables");
    expect_error("[main]\nmemory = 0\n", 2, "/main/memory", "must be from 1 to");
    expect_error("[main]\nmemory = 64\ncpus = 256\n", 3, "/main/cpus", "must be from 1 to 255");
    expect_error("[main]\nmemory = 64\n[[pci_bridge]]\npci-path = \"0.4\"\ndownstream-bus = 1\n", 4,
                 "/pci_bridge/0/pci-path", "must be a PCI path");
    expect_error("[main]\nmemory = 64\n[[pci_bridge]]\npci-path = \"0.4.8\"\ndownstream-bus = 1\n",
                 4, "/pci_bridge/0/pci-path", "function 0-7");
}

static void test_missing(void **state)
{
    expect_error("", 1, "/main", "no [main] table");
    expect_error("[main]\ncpus = 2\n", 1, "/main/memory", "missing required key \"memory\"");
    expect_error("[main]\nmemory = 64\n[dev.disk0]\ndriver = \"pci-virtio-block\"\n"
                 "block_dev = \"nope\"\npci-path = \"0.4.0\"\n",
                 5, "/dev/disk0/block_dev", "no [block_dev.nope]");
    expect_error("[main]\nmemory = 64\n[dev.disk0]\ndriver = \"pci-virtio-block\"\n"
                 "pci-path = \"0.4.0\"\n",
                 3, "/dev/disk0/block_dev", "missing required key \"block_dev\"");
    expect_error("[main]\nmemory = 64\n[block_dev.b]\ntype = \"file\"\n", 3, "/block_dev/b/path",
                 "missing required key \"path\"");
    expect_error("[main]\nmemory = 64\n[block_dev.b]\ntype = \"file\"\npath = \"/b\"\n", 3,
                 "/block_dev/b", "not used by any device");
}

static void test_duplicate_names(void **state)
{
    /* A block_dev and a dev with one name would share a component key. */
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.disk0]\ntype = \"file\"\npath = \"/r\"\n"
                 "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"disk0\"\n"
                 "pci-path = \"0.4.0\"\n",
                 6, "/dev/disk0", "which [block_dev.disk0] (line 3) already uses");
    /* The default COM1 meets a block_dev named com1. */
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.com1]\ntype = \"file\"\npath = \"/r\"\n"
                 "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"com1\"\n"
                 "pci-path = \"0.4.0\"\n",
                 1, NULL, "the default serial port needs component key \"com1\"");
    /* Two disks on one block_dev. */
    expect_error(
        "[main]\nmemory = 64\n"
        "[block_dev.r]\ntype = \"file\"\npath = \"/r\"\n"
        "[dev.a]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\npci-path = \"0.4.0\"\n"
        "[dev.b]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\npci-path = \"0.5.0\"\n",
        12, "/dev/b/block_dev", "another device already uses");
}

static void test_boot_order(void **state)
{
    static const char devs[] =
        "[block_dev.r]\ntype = \"file\"\npath = \"/r\"\n"
        "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\npci-path = \"0.4.0\"\n"
        "[dev.com1]\ndriver = \"uart\"\n";
    char text[1024];
    snprintf(text, sizeof(text), "[main]\nmemory = 64\nboot_order = [\"com1\"]\n%s", devs);
    expect_error(text, 3, "/main/boot_order/0", "not a disk");
    snprintf(text, sizeof(text), "[main]\nmemory = 64\nboot_order = [\"disk0\", \"x\"]\n%s", devs);
    expect_error(text, 3, "/main/boot_order/1", "no [dev.x]");
    snprintf(text, sizeof(text), "[main]\nmemory = 64\nboot_order = [\"disk0\", \"disk0\"]\n%s",
             devs);
    expect_error(text, 3, "/main/boot_order/1", "twice");

    /* An empty order is the same as none. */
    struct config_result res;
    snprintf(text, sizeof(text), "[main]\nmemory = 64\nboot_order = []\n%s", devs);
    convert_ok(text, &res);
    assert_null(spec_find(&res.spec, "boot-settings"));
    config_result_free(&res);
}

static void test_toml_syntax_error(void **state)
{
    expect_error("[main]\nmemory = 64\ncpus = = 2\n", 3, "", "");
    expect_error("[main]\nmemory = 64\nmemory = 65\n", 3, "", "");
}

static void test_all_problems_in_one_pass(void **state)
{
    static const char text[] = "[main]\n"                        /* 1 */
                               "cpus = \"x\"\n"                  /* 2 */
                               "memory = 64\n"                   /* 3 */
                               "[chipset]\n"                     /* 4 */
                               "enable-pci = true\n"             /* 5 */
                               "[dev.d]\n"                       /* 6 */
                               "driver = \"pci-virtio-block\"\n" /* 7 */
                               "block_dev = \"none\"\n"          /* 8 */
                               "pci-path = \"x\"\n"              /* 9 */
                               "[dev.n]\n"                       /* 10 */
                               "driver = \"pci-virtio-viona\"\n" /* 11 */
                               "vnic = \"tap0\"\n"               /* 12 */
                               "pci-path = \"0.5.0\"\n"          /* 13 */
                               "mac = \"zz\"\n";                 /* 14 */
    struct config_result res;
    struct cella_errors errs = {0};
    assert_int_equal(convert(text, &res, &errs), -EINVAL);
    assert_int_equal(errs.count, 5);
    /* Reported top to bottom. */
    assert_true(has_error(&errs, 2, "/main/cpus", "integer"));
    assert_true(has_error(&errs, 5, "/chipset/enable-pci", "did you mean \"enable-pcie\""));
    assert_true(has_error(&errs, 8, "/dev/d/block_dev", "no [block_dev.none]"));
    assert_true(has_error(&errs, 9, "/dev/d/pci-path", "PCI path"));
    assert_true(has_error(&errs, 14, "/dev/n/mac", "MAC address"));
    assert_true(strncmp(errs.items[0].message, "line 2,", 7) == 0);
    assert_true(strncmp(errs.items[4].message, "line 14,", 8) == 0);
    cella_errors_clear(&errs);
    config_result_free(&res);
}

static void test_spec_rules_mapped_to_lines(void **state)
{
    /* Two devices at one PCI path: a spec rule, reported at the TOML key. */
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.r]\ntype = \"file\"\npath = \"/r\"\n"
                 "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\n"
                 "pci-path = \"0.4.0\"\n"
                 "[dev.net0]\ndriver = \"pci-virtio-viona\"\nvnic = \"tap0\"\n"
                 "pci-path = \"0.4.0\"\n",
                 13, "/components/net0/component/pci_path", "(from [dev.net0])");
    expect_error("[main]\nmemory = 64\n"
                 "[block_dev.r]\ntype = \"file\"\npath = \"/r\"\nblock_size = 1000\n"
                 "[dev.disk0]\ndriver = \"pci-virtio-block\"\nblock_dev = \"r\"\n"
                 "pci-path = \"0.4.0\"\n",
                 6, "/components/r/component/block_size", "(from [block_dev.r])");
    expect_error("[main]\nmemory = 64\n[dev.a]\ndriver = \"uart\"\nport = \"com2\"\n"
                 "[dev.b]\ndriver = \"uart\"\nport = \"com2\"\n",
                 8, "/components/b/component/num", "(from [dev.b])");
}

static void test_deterministic(void **state)
{
    struct config_result a, b;
    convert_ok(disk_cfg, &a);
    convert_ok(disk_cfg, &b);
    assert_true(spec_equal(&a.spec, &b.spec));
    char *ja = spec_dump(&a.spec, SPEC_ENC_API), *jb = spec_dump(&b.spec, SPEC_ENC_API);
    assert_string_equal(ja, jb);
    free(ja);
    free(jb);
    config_result_free(&a);
    config_result_free(&b);
}

static void test_short_forms(void **state)
{
    struct instance_spec s;
    struct cella_errors errs = {0};
    assert_int_equal(config_to_spec(disk_cfg, strlen(disk_cfg), &s, &errs), 0);
    assert_int_equal(s.count, 6);
    spec_free(&s);
    assert_int_equal(config_to_spec("[main]\n", 7, &s, &errs), -EINVAL);
    assert_int_equal(s.count, 0);
    cella_errors_clear(&errs);
    assert_true(config_file_to_spec("/nonexistent/cella.toml", &s, &errs) < 0);
    assert_true(has_error(&errs, 0, "", "cannot read /nonexistent/cella.toml"));
    cella_errors_clear(&errs);
}

/* ---- examples ---- */

static void check_example(const char *name, size_t min_components)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", CELLA_EXAMPLES_DIR, name);
    struct config_result res;
    struct cella_errors errs = {0};
    int r = config_convert_file(path, NULL, &res, &errs);
    dump_errors(&errs);
    assert_int_equal(r, 0);
    assert_true(res.spec.count >= min_components);
    assert_int_equal(spec_validate(&res.spec, &errs), 0);
    assert_int_equal(spec_check_host_support(&res.spec, &errs), 0);
    /* The JSON round trip gives the same spec. */
    char *text = spec_dump(&res.spec, SPEC_ENC_API);
    assert_non_null(text);
    struct instance_spec back;
    assert_int_equal(spec_parse(text, strlen(text), &back, &errs), 0);
    assert_true(spec_equal(&back, &res.spec));
    spec_free(&back);
    free(text);
    assert_int_equal(cella_errors_total(&errs), 0);
    config_result_free(&res);
}

static void test_example_small(void **state)
{
    check_example("small.toml", 4);
}

static void test_example_nvme_bridge_2nic(void **state)
{
    check_example("nvme-bridge-2nic.toml", 12);
}

static void test_example_nbd(void **state)
{
    check_example("nbd.toml", 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_main_and_disks),
        cmocka_unit_test(test_nvme_serial),
        cmocka_unit_test(test_chipset_and_bridges),
        cmocka_unit_test(test_blob_and_nbd),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_nic),
        cmocka_unit_test(test_pvpanic_uart_injector),
        cmocka_unit_test(test_cpuid),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_missing),
        cmocka_unit_test(test_duplicate_names),
        cmocka_unit_test(test_boot_order),
        cmocka_unit_test(test_toml_syntax_error),
        cmocka_unit_test(test_all_problems_in_one_pass),
        cmocka_unit_test(test_spec_rules_mapped_to_lines),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_short_forms),
        cmocka_unit_test(test_example_small),
        cmocka_unit_test(test_example_nvme_bridge_2nic),
        cmocka_unit_test(test_example_nbd),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
