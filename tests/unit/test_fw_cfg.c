/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Unit tests of the fw_cfg device core (src/devices/fw_cfg.h), driven
 * through its port I/O callbacks over a guest_mem on a plain buffer, plus
 * the ACPI table-loader and bootorder builders.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "devices/fw_cfg.h"

#define RAM_SIZE 0x10000u

struct env {
    uint8_t *ram;
    struct guest_mem mem;
    struct fw_cfg fw;
};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->ram = calloc(1, RAM_SIZE);
    assert_non_null(e->ram);
    guest_mem_init_buffer(&e->mem, e->ram, RAM_SIZE);
    assert_int_equal(fw_cfg_init(&e->fw, &e->mem), 0);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    fw_cfg_destroy(&e->fw);
    free(e->ram);
    free(e);
    return 0;
}

/* ---- guest-side helpers ---- */

static void port_select(struct fw_cfg *fw, uint16_t key)
{
    fw_cfg_io_ops.write(fw, 0, 2, key);
}

static uint8_t port_byte(struct fw_cfg *fw)
{
    uint64_t v = fw_cfg_io_ops.read(fw, 1, 1);
    assert_true(v <= 0xff);
    return (uint8_t)v;
}

static void port_read(struct fw_cfg *fw, uint16_t key, uint8_t *out, size_t n)
{
    port_select(fw, key);
    for (size_t i = 0; i < n; i++)
        out[i] = port_byte(fw);
}

static void be32_at(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t be32_of(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Writes a descriptor {be32 control; be32 length; be64 address} at gpa. */
static void put_desc(uint8_t *ram, uint64_t gpa, uint32_t control, uint32_t length,
                     uint64_t address)
{
    be32_at(ram + gpa, control);
    be32_at(ram + gpa + 4, length);
    be32_at(ram + gpa + 8, (uint32_t)(address >> 32));
    be32_at(ram + gpa + 12, (uint32_t)address);
}

/* As SeaBIOS: high half to 0x514 (if any), low half to 0x518, big-endian. */
static void dma_kick(struct fw_cfg *fw, uint64_t desc)
{
    if (desc >> 32)
        fw_cfg_io_ops.write(fw, 4, 4, __builtin_bswap32((uint32_t)(desc >> 32)));
    fw_cfg_io_ops.write(fw, 8, 4, __builtin_bswap32((uint32_t)desc));
}

static uint32_t dma(struct env *e, uint64_t desc, uint32_t control, uint32_t length,
                    uint64_t address)
{
    put_desc(e->ram, desc, control, length, address);
    dma_kick(&e->fw, desc);
    return be32_of(e->ram + desc);
}

/* ---- capturing guest_error output ---- */

static int saved_stderr = -1;
static FILE *capture_file;
static unsigned long suppressed_before;

static void capture_begin(void)
{
    fflush(stderr);
    capture_file = tmpfile();
    assert_non_null(capture_file);
    saved_stderr = dup(2);
    assert_true(saved_stderr >= 0);
    assert_true(dup2(fileno(capture_file), 2) >= 0);
    suppressed_before = guest_error_suppressed();
}

/* True when fw_cfg logged a guest error since capture_begin (or the rate limiter ate it). */
static bool capture_end(void)
{
    char buf[8192] = "";

    fflush(stderr);
    assert_true(dup2(saved_stderr, 2) >= 0);
    close(saved_stderr);
    rewind(capture_file);
    size_t n = fread(buf, 1, sizeof(buf) - 1, capture_file);
    buf[n] = '\0';
    fclose(capture_file);
    bool logged =
        strstr(buf, "\"level\":\"guest-error\"") && strstr(buf, "\"component\":\"fw_cfg\"");
    return logged || guest_error_suppressed() > suppressed_before;
}

/* ---- signature, ID, port basics ---- */

static void test_signature_ports(void **state)
{
    struct env *e = *state;
    uint8_t b[6];

    port_read(&e->fw, FW_CFG_SIGNATURE, b, 6);
    assert_memory_equal(b, "QEMU\0\0", 6); /* past the end: zeros */
    /* Selecting again rewinds; port 0x510 reads data too (QEMU's combined port). */
    port_select(&e->fw, FW_CFG_SIGNATURE);
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 0, 1), 'Q');
    assert_int_equal(port_byte(&e->fw), 'E');
    /* Bit 14, the old write channel, is ignored on select. */
    port_read(&e->fw, FW_CFG_WRITE_CHANNEL | FW_CFG_SIGNATURE, b, 4);
    assert_memory_equal(b, "QEMU", 4);
}

static void test_id_features(void **state)
{
    struct env *e = *state;
    uint8_t b[4];

    port_read(&e->fw, FW_CFG_ID, b, 4);
    assert_memory_equal(b, "\x03\x00\x00\x00", 4); /* traditional | DMA, little-endian */
}

static void test_dma_signature(void **state)
{
    struct env *e = *state;

    /* 64-bit read: the bytes at 0x514.. are "QEMU CFG", i.e. 0x51454d5520434647 big-endian. */
    uint64_t v = fw_cfg_io_ops.read(&e->fw, 4, 8);
    assert_true(__builtin_bswap64(v) == 0x51454d5520434647ull);
    assert_int_equal(__builtin_bswap32((uint32_t)fw_cfg_io_ops.read(&e->fw, 4, 4)), 0x51454d55);
    assert_int_equal(__builtin_bswap32((uint32_t)fw_cfg_io_ops.read(&e->fw, 8, 4)), 0x20434647);
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 11, 1), 'G');
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 10, 2), 'F' | 'G' << 8);
}

static void test_bad_port_accesses(void **state)
{
    struct env *e = *state;

    port_select(&e->fw, FW_CFG_SIGNATURE);
    capture_begin();
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 0, 4), 0xffffffffu);           /* wide data read */
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 2, 1), 0xff);                  /* hole at 0x512 */
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 8, 8), 0xffffffffffffffffull); /* past 0x51b */
    assert_int_equal(fw_cfg_io_ops.read(&e->fw, 100, 1), 0xff);
    fw_cfg_io_ops.write(&e->fw, 1, 1, 0x55);   /* data writes are ignored */
    fw_cfg_io_ops.write(&e->fw, 0, 4, 0x0001); /* selector is 16-bit only */
    fw_cfg_io_ops.write(&e->fw, 2, 2, 0x0001); /* hole */
    fw_cfg_io_ops.write(&e->fw, 6, 2, 0x1234); /* DMA takes 4 or 8 bytes at 0x514/0x518 */
    fw_cfg_io_ops.write(&e->fw, 8, 8, 0x1234);
    assert_true(capture_end());
    /* None of it moved the selection. */
    assert_int_equal(port_byte(&e->fw), 'Q');
}

static void test_missing_and_arch_items(void **state)
{
    struct env *e = *state;
    uint8_t b[4];

    port_read(&e->fw, 0x0123, b, 4); /* unknown file selector */
    assert_memory_equal(b, "\0\0\0\0", 4);
    port_read(&e->fw, FW_CFG_NB_CPUS, b, 4); /* not added */
    assert_memory_equal(b, "\0\0\0\0", 4);
    assert_int_equal(fw_cfg_add_bytes(&e->fw, FW_CFG_IRQ0_OVERRIDE, "\x01", 1), 0);
    port_read(&e->fw, FW_CFG_IRQ0_OVERRIDE, b, 2);
    assert_memory_equal(b, "\x01\x00", 2);
    /* 0x0002 and 0x8002 are different items. */
    port_read(&e->fw, 0x0002, b, 1);
    assert_int_equal(b[0], 0);
}

static void test_numbered_items_le(void **state)
{
    struct env *e = *state;
    uint8_t b[9];

    assert_int_equal(fw_cfg_add_u16(&e->fw, FW_CFG_NB_CPUS, 0x0204), 0);
    assert_int_equal(fw_cfg_add_u16(&e->fw, FW_CFG_MAX_CPUS, 8), 0);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_KERNEL_SIZE, 0x11223344), 0);
    assert_int_equal(fw_cfg_add_u64(&e->fw, FW_CFG_RAM_SIZE, 0x0102030405060708ull), 0);
    assert_int_equal(fw_cfg_add_string(&e->fw, FW_CFG_CMDLINE_DATA, "ro"), 0);
    port_read(&e->fw, FW_CFG_NB_CPUS, b, 2);
    assert_memory_equal(b, "\x04\x02", 2);
    port_read(&e->fw, FW_CFG_MAX_CPUS, b, 2);
    assert_memory_equal(b, "\x08\x00", 2);
    port_read(&e->fw, FW_CFG_KERNEL_SIZE, b, 4);
    assert_memory_equal(b, "\x44\x33\x22\x11", 4);
    port_read(&e->fw, FW_CFG_RAM_SIZE, b, 9);
    assert_memory_equal(b, "\x08\x07\x06\x05\x04\x03\x02\x01\x00", 9);
    port_read(&e->fw, FW_CFG_CMDLINE_DATA, b, 4);
    assert_memory_equal(b, "ro\0\0", 4);
}

static void test_add_errors(void **state)
{
    struct env *e = *state;
    char name[80];

    /* Built-ins are taken; keys are checked. */
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_SIGNATURE, 1), -EEXIST);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_ID, 1), -EEXIST);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_FILE_DIR, 1), -EEXIST);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_FILE_FIRST, 1), -EINVAL);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_WRITE_CHANNEL | 5, 1), -EINVAL);
    assert_int_equal(fw_cfg_add_bytes(&e->fw, FW_CFG_NB_CPUS, NULL, 2), -EINVAL);
    assert_int_equal(fw_cfg_add_bytes(&e->fw, FW_CFG_NB_CPUS, "x", (size_t)FW_CFG_MAX_ITEM_LEN + 1),
                     -E2BIG);
    assert_int_equal(fw_cfg_add_u16(&e->fw, FW_CFG_NB_CPUS, 1), 0);
    assert_int_equal(fw_cfg_add_u16(&e->fw, FW_CFG_NB_CPUS, 2), -EEXIST);
    assert_int_equal(fw_cfg_add_bytes(&e->fw, FW_CFG_UUID, NULL, 0), 0); /* empty is fine */

    /* File names: 1..55 printable bytes, unique. */
    memset(name, 'a', 55);
    name[55] = '\0';
    assert_int_equal(fw_cfg_add_file(&e->fw, name, "x", 1), 0);
    name[55] = 'a';
    name[56] = '\0';
    assert_int_equal(fw_cfg_add_file(&e->fw, name, "x", 1), -E2BIG);
    assert_int_equal(fw_cfg_add_file(&e->fw, "", "x", 1), -EINVAL);
    assert_int_equal(fw_cfg_add_file(&e->fw, NULL, "x", 1), -EINVAL);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/a\nb", "x", 1), -EINVAL);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/x", "x", 1), 0);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/x", "y", 1), -EEXIST);
    assert_int_equal(fw_cfg_add_file_rw(&e->fw, "etc/x", "y", 1), -EEXIST);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/null", NULL, 3), -EINVAL);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/empty", NULL, 0), 0);
    assert_int_equal(fw_cfg_file_selector(&e->fw, "nope"), -ENOENT);
    assert_int_equal(fw_cfg_get_file(&e->fw, "nope", NULL, 0), -ENOENT);
}

static void test_limits(void **state)
{
    struct env *e = *state;
    char name[16];
    int rc = 0;
    size_t added = 0;

    for (int i = 0; i < FW_CFG_MAX_FILES + 1 && rc == 0; i++) {
        snprintf(name, sizeof(name), "f%04d", i);
        rc = fw_cfg_add_file(&e->fw, name, "x", 1);
        added += rc == 0;
    }
    assert_int_equal(rc, -E2BIG);
    assert_int_equal(added, FW_CFG_MAX_FILES);
    /* Numbered items: 3 built-ins, the rest fill up. */
    rc = 0;
    added = 0;
    for (uint16_t k = 0; rc == 0; k++) {
        rc = fw_cfg_add_u32(&e->fw, FW_CFG_ARCH_LOCAL | k, k);
        added += rc == 0;
    }
    assert_int_equal(rc, -E2BIG);
    assert_int_equal(added, FW_CFG_MAX_ITEMS - 3);
    /* The directory of a full house is still consistent. */
    uint8_t b[4];
    port_read(&e->fw, FW_CFG_FILE_DIR, b, 4);
    assert_int_equal(be32_of(b), FW_CFG_MAX_FILES);
}

static void test_add_while_selected(void **state)
{
    struct env *e = *state;

    /* The guest sits at offset 6 of "etc/long" (selector 0x20)... */
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/long", "0123456789", 10), 0);
    port_select(&e->fw, 0x20);
    for (int i = 0; i < 6; i++)
        (void)port_byte(&e->fw);
    /* ...when a file sorting first takes selector 0x20: the selector now names the short file
     * and the offset is clipped to its end (files must be added before the guest runs). */
    assert_int_equal(fw_cfg_add_file(&e->fw, "a", "xy", 2), 0);
    assert_int_equal(fw_cfg_file_selector(&e->fw, "etc/long"), 0x21);
    assert_int_equal(port_byte(&e->fw), 0);
    assert_true(e->fw.offset <= e->fw.cur->len);
}

/* ---- file directory ---- */

static void test_file_dir_layout(void **state)
{
    struct env *e = *state;
    uint8_t want[4 + 3 * 64], got[sizeof(want) + 4];
    uint8_t e820[20] = {0};

    /* Added out of order: the directory is sorted by name. */
    assert_int_equal(fw_cfg_add_file(&e->fw, "opt/z", "zz", 2), 0);
    assert_int_equal(fw_cfg_add_file(&e->fw, "bootorder", "abc", 3), 0);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/e820", e820, sizeof(e820)), 0);

    memset(want, 0, sizeof(want));
    memcpy(want, "\x00\x00\x00\x03", 4);
    memcpy(want + 4,
           "\x00\x00\x00\x03\x00\x20\x00\x00"
           "bootorder",
           8 + 9);
    memcpy(want + 68,
           "\x00\x00\x00\x14\x00\x21\x00\x00"
           "etc/e820",
           8 + 8);
    memcpy(want + 132,
           "\x00\x00\x00\x02\x00\x22\x00\x00"
           "opt/z",
           8 + 5);

    port_read(&e->fw, FW_CFG_FILE_DIR, got, sizeof(got));
    assert_memory_equal(got, want, sizeof(want));
    assert_memory_equal(got + sizeof(want), "\0\0\0\0", 4); /* exactly 4 + 64 * count */

    assert_int_equal(fw_cfg_file_selector(&e->fw, "bootorder"), 0x20);
    assert_int_equal(fw_cfg_file_selector(&e->fw, "etc/e820"), 0x21);
    assert_int_equal(fw_cfg_file_selector(&e->fw, "opt/z"), 0x22);
    uint8_t b[3];
    port_read(&e->fw, 0x22, b, 3);
    assert_memory_equal(b, "zz\0", 3);
}

static void test_empty_dir(void **state)
{
    struct env *e = *state;
    uint8_t b[8];

    port_read(&e->fw, FW_CFG_FILE_DIR, b, 8);
    assert_memory_equal(b, "\0\0\0\0\0\0\0\0", 8);
}

/* ---- reading files ---- */

static void test_file_read_ports_and_dma(void **state)
{
    struct env *e = *state;
    uint8_t data[300], b[300];

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 1);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/blob", data, sizeof(data)), 0);
    int sel = fw_cfg_file_selector(&e->fw, "etc/blob");
    assert_int_equal(sel, 0x20);

    port_read(&e->fw, (uint16_t)sel, b, sizeof(b));
    assert_memory_equal(b, data, sizeof(data));

    /* DMA, as SeaBIOS's qemu_cfg_read_entry: SELECT | READ in one descriptor. */
    uint32_t ctl = dma(e, 0x100, (uint32_t)sel << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ,
                       sizeof(data), 0x1000);
    assert_int_equal(ctl, 0); /* control cleared: done, no error */
    assert_memory_equal(e->ram + 0x1000, data, sizeof(data));
    /* Only the control word of the descriptor changed. */
    assert_int_equal(be32_of(e->ram + 0x104), sizeof(data));
    /* The transfer advanced the offset to the end. */
    assert_int_equal(port_byte(&e->fw), 0);
}

static void test_dma_select_skip_read(void **state)
{
    struct env *e = *state;

    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/abc", "abcdefghij", 10), 0);
    uint16_t sel = (uint16_t)fw_cfg_file_selector(&e->fw, "etc/abc");

    /* SELECT | SKIP 3, then READ 4, then port reads continue from there. */
    assert_int_equal(
        dma(e, 0x200, (uint32_t)sel << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_SKIP, 3, 0), 0);
    assert_int_equal(dma(e, 0x200, FW_CFG_DMA_CTL_READ, 4, 0x300), 0);
    assert_memory_equal(e->ram + 0x300, "defg", 4);
    assert_int_equal(port_byte(&e->fw), 'h');
    /* SKIP past the end stops at the end; a READ then yields zeros. */
    assert_int_equal(dma(e, 0x200, FW_CFG_DMA_CTL_SKIP, 1000, 0), 0);
    memset(e->ram + 0x300, 0xaa, 4);
    assert_int_equal(dma(e, 0x200, FW_CFG_DMA_CTL_READ, 4, 0x300), 0);
    assert_memory_equal(e->ram + 0x300, "\0\0\0\0", 4);
    /* SELECT alone selects and rewinds; an ERROR bit set by the guest is cleared. */
    assert_int_equal(
        dma(e, 0x200, (uint32_t)sel << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_ERROR, 5, 0x300),
        0);
    assert_int_equal(port_byte(&e->fw), 'a');
    /* READ wins over SKIP and WRITE when several bits are set. */
    assert_int_equal(
        dma(e, 0x200, FW_CFG_DMA_CTL_READ | FW_CFG_DMA_CTL_SKIP | FW_CFG_DMA_CTL_WRITE, 2, 0x300),
        0);
    assert_memory_equal(e->ram + 0x300, "bc", 2);
}

static void test_dma_triggers(void **state)
{
    struct env *e = *state;
    uint8_t b[4];

    /* A single 64-bit write of the big-endian address triggers too. */
    put_desc(e->ram, 0x400, FW_CFG_SIGNATURE << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4,
             0x500);
    fw_cfg_io_ops.write(&e->fw, 4, 8, __builtin_bswap64(0x400));
    assert_int_equal(be32_of(e->ram + 0x400), 0);
    assert_memory_equal(e->ram + 0x500, "QEMU", 4);

    /* Writing the high half alone does nothing; the low half then completes it. */
    put_desc(e->ram, 0x400, FW_CFG_ID << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4,
             0x510);
    fw_cfg_io_ops.write(&e->fw, 4, 4, 0);
    assert_int_equal(be32_of(e->ram + 0x400), FW_CFG_ID << 16 | 0xa);
    fw_cfg_io_ops.write(&e->fw, 8, 4, __builtin_bswap32(0x400));
    assert_int_equal(be32_of(e->ram + 0x400), 0);
    assert_memory_equal(e->ram + 0x510, "\x03\0\0\0", 4);

    /* A high half of 1 makes the descriptor 4 GiB up: outside RAM, nothing happens... */
    put_desc(e->ram, 0x400, FW_CFG_SIGNATURE << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4,
             0x520);
    capture_begin();
    fw_cfg_io_ops.write(&e->fw, 4, 4, __builtin_bswap32(1));
    fw_cfg_io_ops.write(&e->fw, 8, 4, __builtin_bswap32(0x400));
    assert_true(capture_end());
    assert_int_equal(be32_of(e->ram + 0x400), FW_CFG_SIGNATURE << 16 | 0xa);
    /* ...and the address register is 0 again afterwards: a low-half write alone works. */
    fw_cfg_io_ops.write(&e->fw, 8, 4, __builtin_bswap32(0x400));
    assert_int_equal(be32_of(e->ram + 0x400), 0);
    memcpy(b, e->ram + 0x520, 4);
    assert_memory_equal(b, "QEMU", 4);
}

/* ---- bad DMA ---- */

static void test_dma_target_outside_ram(void **state)
{
    struct env *e = *state;

    port_select(&e->fw, FW_CFG_SIGNATURE);
    capture_begin();
    uint32_t ctl = dma(e, 0x100, FW_CFG_DMA_CTL_READ, 4, RAM_SIZE - 2); /* straddles the end */
    assert_true(capture_end());
    assert_int_equal(ctl, FW_CFG_DMA_CTL_ERROR);
    assert_memory_equal(e->ram + RAM_SIZE - 2, "\0\0", 2); /* nothing partial */
    capture_begin();
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_READ, 4, 0x100000000ull), FW_CFG_DMA_CTL_ERROR);
    assert_true(capture_end());
    /* The failed transfers did not advance the offset. */
    assert_int_equal(port_byte(&e->fw), 'Q');
    /* A good descriptor afterwards works. */
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_READ, 3, 0x200), 0);
    assert_memory_equal(e->ram + 0x200, "EMU", 3);
}

static void test_dma_descriptor_outside_ram(void **state)
{
    struct env *e = *state;
    uint8_t *before = malloc(RAM_SIZE);
    assert_non_null(before);

    memset(e->ram, 0x5a, RAM_SIZE);
    memcpy(before, e->ram, RAM_SIZE);
    capture_begin();
    dma_kick(&e->fw, RAM_SIZE);              /* just past the end */
    dma_kick(&e->fw, 0xfffffffffffffff8ull); /* wraps */
    dma_kick(&e->fw, 0x123456789000ull);
    assert_true(capture_end());
    assert_memory_equal(e->ram, before, RAM_SIZE); /* nothing written */

    /* A descriptor straddling the end: its control word is RAM, so it gets ERROR (as QEMU). */
    capture_begin();
    dma_kick(&e->fw, RAM_SIZE - 8);
    assert_true(capture_end());
    assert_int_equal(be32_of(e->ram + RAM_SIZE - 8), FW_CFG_DMA_CTL_ERROR);
    assert_memory_equal(e->ram, before, RAM_SIZE - 8);
    free(before);
}

static void test_dma_length_overflow(void **state)
{
    struct env *e = *state;

    port_select(&e->fw, FW_CFG_SIGNATURE);
    capture_begin();
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_READ, 0x100, 0xffffffffffffff80ull),
                     FW_CFG_DMA_CTL_ERROR);
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_READ, 0xffffffffu, 0x10), FW_CFG_DMA_CTL_ERROR);
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_READ, FW_CFG_DMA_MAX_LEN + 1u, 0),
                     FW_CFG_DMA_CTL_ERROR);
    assert_true(capture_end());
    assert_int_equal(port_byte(&e->fw), 'Q');
}

static void test_read_past_end_zeros(void **state)
{
    struct env *e = *state;
    uint8_t b[8];

    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/two", "xy", 2), 0);
    uint16_t sel = (uint16_t)fw_cfg_file_selector(&e->fw, "etc/two");
    port_read(&e->fw, sel, b, 8);
    assert_memory_equal(b, "xy\0\0\0\0\0\0", 8);

    /* DMA: the item's bytes, then zeros up to the requested length. */
    memset(e->ram + 0x800, 0xaa, 16);
    assert_int_equal(
        dma(e, 0x100, (uint32_t)sel << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 8, 0x800),
        0);
    assert_memory_equal(e->ram + 0x800, "xy\0\0\0\0\0\0\xaa", 9);
    /* A missing item reads as zeros too. */
    memset(e->ram + 0x800, 0xaa, 16);
    assert_int_equal(
        dma(e, 0x100, 0x1234u << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ, 4, 0x800), 0);
    assert_memory_equal(e->ram + 0x800, "\0\0\0\0\xaa", 5);
}

static void test_dma_write(void **state)
{
    struct env *e = *state;
    uint8_t b[8];

    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/ro", "readonly", 8), 0);
    assert_int_equal(fw_cfg_add_file_rw(&e->fw, "etc/rw", "12345678", 8), 0);
    uint16_t ro = (uint16_t)fw_cfg_file_selector(&e->fw, "etc/ro");
    uint16_t rw = (uint16_t)fw_cfg_file_selector(&e->fw, "etc/rw");
    uint32_t wr = FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE;
    memcpy(e->ram + 0x600, "ABCDEFGHIJ", 10);

    /* Read-only: ERROR, item unchanged. Built-ins are read-only too. */
    capture_begin();
    assert_int_equal(dma(e, 0x100, (uint32_t)ro << 16 | wr, 4, 0x600), FW_CFG_DMA_CTL_ERROR);
    assert_int_equal(dma(e, 0x100, FW_CFG_SIGNATURE << 16 | wr, 4, 0x600), FW_CFG_DMA_CTL_ERROR);
    assert_int_equal(dma(e, 0x100, 0x0777u << 16 | wr, 4, 0x600), FW_CFG_DMA_CTL_ERROR);
    assert_true(capture_end());
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/ro", b, sizeof(b)), 8);
    assert_memory_equal(b, "readonly", 8);
    port_read(&e->fw, FW_CFG_SIGNATURE, b, 4);
    assert_memory_equal(b, "QEMU", 4);

    /* Writable: SKIP 2, WRITE 3 lands at offset 2. */
    assert_int_equal(
        dma(e, 0x100, (uint32_t)rw << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_SKIP, 2, 0), 0);
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_WRITE, 3, 0x600), 0);
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/rw", b, sizeof(b)), 8);
    assert_memory_equal(b, "12ABC678", 8);
    /* A write running past the end is dropped entirely. */
    capture_begin();
    assert_int_equal(dma(e, 0x100, FW_CFG_DMA_CTL_WRITE, 4, 0x600), FW_CFG_DMA_CTL_ERROR);
    assert_int_equal(dma(e, 0x100, (uint32_t)rw << 16 | wr, 9, 0x600), FW_CFG_DMA_CTL_ERROR);
    /* A write from outside RAM too. */
    assert_int_equal(dma(e, 0x100, (uint32_t)rw << 16 | wr, 8, RAM_SIZE - 4), FW_CFG_DMA_CTL_ERROR);
    assert_true(capture_end());
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/rw", b, sizeof(b)), 8);
    assert_memory_equal(b, "12ABC678", 8);
    /* The whole item, and the guest reads its own bytes back. */
    assert_int_equal(dma(e, 0x100, (uint32_t)rw << 16 | wr, 8, 0x600), 0);
    port_read(&e->fw, rw, b, 8);
    assert_memory_equal(b, "ABCDEFGH", 8);
    /* A zero-length write moves nothing and succeeds, even read-only (as QEMU). */
    assert_int_equal(dma(e, 0x100, (uint32_t)ro << 16 | wr, 0, 0x600), 0);
    /* The directory size of a writable file does not change. */
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/rw", NULL, 0), 8);
}

/* ---- lifecycle ---- */

static void test_reset(void **state)
{
    struct env *e = *state;

    assert_int_equal(fw_cfg_add_file_rw(&e->fw, "etc/rw", "1234", 4), 0);
    uint16_t rw = (uint16_t)fw_cfg_file_selector(&e->fw, "etc/rw");
    memcpy(e->ram + 0x600, "wxyz", 4);
    assert_int_equal(
        dma(e, 0x100, (uint32_t)rw << 16 | FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_WRITE, 4, 0x600),
        0);
    port_select(&e->fw, FW_CFG_ID);
    (void)port_byte(&e->fw);
    fw_cfg_io_ops.write(&e->fw, 4, 4, __builtin_bswap32(1)); /* pending high half */

    fw_cfg_reset(&e->fw);
    /* Selector 0, offset 0... */
    assert_int_equal(port_byte(&e->fw), 'Q');
    /* ...the pending DMA high half is gone (the descriptor at 0x100 is in RAM)... */
    put_desc(e->ram, 0x100, FW_CFG_DMA_CTL_SKIP, 1, 0);
    fw_cfg_io_ops.write(&e->fw, 8, 4, __builtin_bswap32(0x100));
    assert_int_equal(be32_of(e->ram + 0x100), 0);
    /* ...and the guest's writes are kept. */
    uint8_t b[4];
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/rw", b, sizeof(b)), 4);
    assert_memory_equal(b, "wxyz", 4);
}

static void test_destroy_null_and_reinit(void **state)
{
    (void)state;
    struct guest_mem mem;
    struct fw_cfg fw;
    uint8_t ram[64];

    fw_cfg_destroy(NULL);
    guest_mem_init_buffer(&mem, ram, sizeof(ram));
    assert_int_equal(fw_cfg_init(&fw, &mem), 0);
    assert_int_equal(fw_cfg_add_file(&fw, "a", "b", 1), 0);
    fw_cfg_destroy(&fw);
    assert_int_equal(fw_cfg_init(&fw, &mem), 0);
    assert_int_equal(fw_cfg_file_selector(&fw, "a"), -ENOENT);
    fw_cfg_destroy(&fw);
}

static void test_e820(void **state)
{
    struct env *e = *state;
    const struct fw_cfg_e820_entry map[2] = {
        {0, 0x9fc00, FW_CFG_E820_RAM},
        {0x100000000ull, 0x40000000, FW_CFG_E820_RAM},
    };
    uint8_t b[40];
    uint8_t want[40] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0xfc, 0x09, 0,    0, 0, 0, 0, 1, 0, 0, 0,
        0, 0, 0, 0, 1, 0, 0, 0, 0,    0,    0,    0x40, 0, 0, 0, 0, 1, 0, 0, 0,
    };

    assert_int_equal(fw_cfg_add_e820(&e->fw, map, 2), 0);
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/e820", b, sizeof(b)), 40);
    assert_memory_equal(b, want, sizeof(want));
    assert_int_equal(fw_cfg_add_e820(&e->fw, map, FW_CFG_E820_MAX + 1), -E2BIG);
}

/* ---- ACPI table loader ---- */

static void test_loader_encoding(void **state)
{
    (void)state;
    struct fw_cfg_loader l;
    uint8_t want[3 * 128];

    fw_cfg_loader_init(&l);
    assert_int_equal(fw_cfg_loader_allocate(&l, "etc/acpi/rsdp", 16, FW_CFG_LOADER_ZONE_FSEG), 0);
    assert_int_equal(fw_cfg_loader_allocate(&l, "etc/acpi/tables", 64, FW_CFG_LOADER_ZONE_HIGH), 0);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "etc/acpi/rsdp", 16, 4, "etc/acpi/tables"), 0);
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "etc/acpi/rsdp", 8, 0, 20), 0);
    assert_int_equal(l.len, 4 * 128);

    memset(want, 0, sizeof(want));
    /* ALLOCATE: command 1, file at 4, align le32 at 60, zone at 64. */
    memcpy(want,
           "\x01\0\0\0"
           "etc/acpi/tables",
           4 + 15);
    memcpy(want + 60, "\x40\0\0\0\x01", 5);
    /* ADD_POINTER: command 2, dest at 4, src at 60, offset le32 at 116, size at 120. */
    memcpy(want + 128,
           "\x02\0\0\0"
           "etc/acpi/rsdp",
           4 + 13);
    memcpy(want + 128 + 60, "etc/acpi/tables", 15);
    memcpy(want + 128 + 116, "\x10\0\0\0\x04", 5);
    /* ADD_CHECKSUM: command 3, file at 4, result le32 at 60, start at 64, length at 68. */
    memcpy(want + 256,
           "\x03\0\0\0"
           "etc/acpi/rsdp",
           4 + 13);
    memcpy(want + 256 + 60, "\x08\0\0\0\x00\0\0\0\x14\0\0\0", 12);
    assert_memory_equal(l.buf + 128, want, sizeof(want));
    /* The first ALLOCATE, in the F segment. */
    assert_memory_equal(l.buf,
                        "\x01\0\0\0"
                        "etc/acpi/rsdp\0",
                        18);
    assert_memory_equal(l.buf + 60, "\x10\0\0\0\x02\0\0\0", 8);
    fw_cfg_loader_free(&l);
    assert_null(l.buf);
    assert_int_equal(l.len, 0);
    fw_cfg_loader_free(NULL);
}

static void test_loader_errors(void **state)
{
    (void)state;
    struct fw_cfg_loader l;
    char name[64];

    fw_cfg_loader_init(&l);
    memset(name, 'n', 56);
    name[56] = '\0';
    assert_int_equal(fw_cfg_loader_allocate(&l, name, 8, FW_CFG_LOADER_ZONE_HIGH), -E2BIG);
    assert_int_equal(fw_cfg_loader_allocate(&l, "", 8, FW_CFG_LOADER_ZONE_HIGH), -EINVAL);
    assert_int_equal(fw_cfg_loader_allocate(&l, "t", 0, FW_CFG_LOADER_ZONE_HIGH), -EINVAL);
    assert_int_equal(fw_cfg_loader_allocate(&l, "t", 12, FW_CFG_LOADER_ZONE_HIGH), -EINVAL);
    assert_int_equal(fw_cfg_loader_allocate(&l, "t", 8, (enum fw_cfg_loader_zone)3), -EINVAL);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "t", 0, 4, "t"), -ENOENT);
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "t", 0, 0, 4), -ENOENT);
    assert_int_equal(l.len, 0);
    name[55] = '\0'; /* 55 bytes: the longest name */
    assert_int_equal(fw_cfg_loader_allocate(&l, name, 1, FW_CFG_LOADER_ZONE_HIGH), 0);
    assert_int_equal(fw_cfg_loader_allocate(&l, name, 1, FW_CFG_LOADER_ZONE_HIGH), -EEXIST);
    assert_int_equal(fw_cfg_loader_allocate(&l, "t", 8, FW_CFG_LOADER_ZONE_HIGH), 0);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "t", 0, 3, name), -EINVAL);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "t", 0xfffffffe, 4, name), -EINVAL);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "t", 0, 8, "u"), -ENOENT);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "t", 0, 8, name), 0);
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "t", 0, 0xfffffff0, 0x20), -EINVAL);
    assert_int_equal(l.len, 3 * 128);
    fw_cfg_loader_free(&l);
}

static void test_loader_limits_and_malformed(void **state)
{
    struct env *e = *state;
    struct fw_cfg_loader l;
    char name[16];
    int rc = 0;

    fw_cfg_loader_init(&l);
    for (int i = 0; i <= FW_CFG_LOADER_MAX_CMDS && rc == 0; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        rc = fw_cfg_loader_allocate(&l, name, 4, FW_CFG_LOADER_ZONE_HIGH);
    }
    assert_int_equal(rc, -E2BIG);
    assert_int_equal(l.len, FW_CFG_LOADER_MAX_CMDS * 128);
    fw_cfg_loader_free(&l);

    /* A hand-made script is checked too: unknown command, unterminated name. */
    assert_int_equal(fw_cfg_add_file(&e->fw, "t", "12345678", 8), 0);
    fw_cfg_loader_init(&l);
    assert_int_equal(fw_cfg_loader_allocate(&l, "t", 8, FW_CFG_LOADER_ZONE_HIGH), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), 0);
    l.buf[0] = 9;
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -EINVAL);
    l.buf[0] = 1;
    memset(l.buf + 4, 'x', 56);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -EINVAL);
    l.len = 100;
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -EINVAL);
    fw_cfg_loader_free(&l);
}

static void test_table_loader_checks(void **state)
{
    struct env *e = *state;
    struct fw_cfg_loader l;
    uint8_t tables[64] = {0}, rsdp[20] = {0};

    fw_cfg_loader_init(&l);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -EINVAL); /* empty */
    assert_int_equal(fw_cfg_loader_allocate(&l, "etc/acpi/tables", 64, FW_CFG_LOADER_ZONE_HIGH), 0);
    assert_int_equal(fw_cfg_loader_allocate(&l, "etc/acpi/rsdp", 16, FW_CFG_LOADER_ZONE_FSEG), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -ENOENT); /* files not added yet */
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/acpi/tables", tables, sizeof(tables)), 0);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/acpi/rsdp", rsdp, sizeof(rsdp)), 0);
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "etc/acpi/rsdp", 17, 4, "etc/acpi/tables"), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -ERANGE); /* 17 + 4 > 20 */
    l.len -= 128;
    assert_int_equal(fw_cfg_loader_add_pointer(&l, "etc/acpi/rsdp", 16, 4, "etc/acpi/tables"), 0);
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "etc/acpi/rsdp", 8, 0, 21), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -ERANGE); /* 0 + 21 > 20 */
    l.len -= 128;
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "etc/acpi/rsdp", 20, 0, 20), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -ERANGE); /* result at 20 */
    l.len -= 128;
    assert_int_equal(fw_cfg_loader_add_checksum(&l, "etc/acpi/rsdp", 8, 0, 20), 0);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), 0);

    /* The guest reads the very same bytes through the directory. */
    uint8_t *got = malloc(l.len);
    assert_non_null(got);
    port_read(&e->fw, (uint16_t)fw_cfg_file_selector(&e->fw, "etc/table-loader"), got, l.len);
    assert_memory_equal(got, l.buf, l.len);
    free(got);
    assert_int_equal(fw_cfg_add_table_loader(&e->fw, &l), -EEXIST);
    fw_cfg_loader_free(&l);
}

/* ---- bootorder ---- */

static struct fw_cfg_boot_dev boot_dev(enum fw_cfg_boot_kind kind, size_t depth, ...)
{
    struct fw_cfg_boot_dev d = {.kind = kind, .depth = depth, .nsid = 1};
    va_list ap;
    va_start(ap, depth);
    for (size_t i = 0; i < depth; i++) {
        d.path[i].slot = (uint8_t)va_arg(ap, int);
        d.path[i].func = (uint8_t)va_arg(ap, int);
    }
    va_end(ap);
    return d;
}

static void expect_path(const struct fw_cfg_boot_dev *d, const char *want)
{
    char buf[256];
    int n = fw_cfg_bootorder_path(buf, sizeof(buf), d);
    if (n < 0 || strcmp(buf, want) != 0)
        fail_msg("got %d \"%s\", want \"%s\"", n, n < 0 ? "" : buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_bootorder_paths(void **state)
{
    (void)state;
    struct fw_cfg_boot_dev d;

    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 4, 0);
    expect_path(&d, "/pci@i0cf8/scsi@4/disk@0,0");
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 0x1f, 3);
    expect_path(&d, "/pci@i0cf8/scsi@1f,3/disk@0,0");
    d = boot_dev(FW_CFG_BOOT_NVME, 1, 5, 0);
    d.vendor_id = 0x1de;
    d.device_id = 0x1000;
    expect_path(&d, "/pci@i0cf8/pci01de,1000@5/namespace@1,0");
    d.nsid = 0x1a;
    expect_path(&d, "/pci@i0cf8/pci01de,1000@5/namespace@1a,0");
    d = boot_dev(FW_CFG_BOOT_VIRTIO_NET, 1, 3, 0);
    expect_path(&d, "/pci@i0cf8/ethernet@3/ethernet-phy@0");
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 2, 6, 0, 1, 0);
    expect_path(&d, "/pci@i0cf8/pci-bridge@6/scsi@1/disk@0,0");
    d = boot_dev(FW_CFG_BOOT_NVME, 3, 0x1e, 1, 0, 0, 0xa, 2);
    d.vendor_id = 0x8086;
    d.device_id = 0x5845;
    expect_path(&d, "/pci@i0cf8/pci-bridge@1e,1/pci-bridge@0/pci8086,5845@a,2/namespace@1,0");

    /* The longest path fits the documented bound. */
    d = boot_dev(FW_CFG_BOOT_NVME, 8, 31, 7, 31, 7, 31, 7, 31, 7, 31, 7, 31, 7, 31, 7, 31, 7);
    d.vendor_id = 0xffff;
    d.device_id = 0xffff;
    d.nsid = 0xffffffff;
    char buf[256];
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), 161);

    /* Bad input. */
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 32, 0);
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 1, 8);
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 0);
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    d.depth = FW_CFG_BOOT_MAX_DEPTH + 1;
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    d = boot_dev((enum fw_cfg_boot_kind)42, 1, 1, 0);
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    d = boot_dev(FW_CFG_BOOT_NVME, 1, 1, 0);
    d.nsid = 0;
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), &d), -EINVAL);
    assert_int_equal(fw_cfg_bootorder_path(buf, sizeof(buf), NULL), -EINVAL);
    /* Too small: -E2BIG with a terminated prefix; exactly enough: fine. */
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 4, 0);
    assert_int_equal(fw_cfg_bootorder_path(buf, 10, &d), -E2BIG);
    assert_string_equal(buf, "/pci@i0cf");
    assert_int_equal(fw_cfg_bootorder_path(buf, 27, &d), 26);
    assert_int_equal(fw_cfg_bootorder_path(buf, 26, &d), -E2BIG);
    assert_int_equal(fw_cfg_bootorder_path(NULL, 0, &d), -E2BIG);
}

/*
 * SeaBIOS's matching rule (src/boot.c), restated: '*' in the glob matches
 * a run of characters that are not '/', and stops early at the character
 * that follows the '*' in the glob; the glob must match a prefix of the
 * line that is followed by '/' or the end of the line.
 */
static bool seabios_matches(const char *glob, const char *line)
{
    while (*glob) {
        if (*glob == '*') {
            while (*line && *line != '/' && *line != glob[1])
                line++;
            glob++;
        } else if (*glob++ != *line++) {
            return false;
        }
    }
    return *line == '\0' || *line == '/';
}

static void test_bootorder_matches_seabios(void **state)
{
    (void)state;
    char p[256];
    struct fw_cfg_boot_dev d;

    /* virtio-blk and NVMe: bootprio_find_pci_device's glob for the controller. */
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 1, 4, 0);
    assert_true(fw_cfg_bootorder_path(p, sizeof(p), &d) > 0);
    assert_true(seabios_matches("/pci@i0cf8/*@4", p));
    assert_false(seabios_matches("/pci@i0cf8/*@4,1", p));
    assert_false(seabios_matches("/pci@i0cf8/*@40", p));
    assert_false(seabios_matches("/pci@i0cf8/*@5", p));

    d = boot_dev(FW_CFG_BOOT_NVME, 1, 0x1a, 2);
    d.vendor_id = 0x1de;
    d.device_id = 0x1000;
    assert_true(fw_cfg_bootorder_path(p, sizeof(p), &d) > 0);
    assert_true(seabios_matches("/pci@i0cf8/*@1a,2", p));
    assert_false(seabios_matches("/pci@i0cf8/*@1a", p));

    /* Behind a bridge: the bridge node is literal "pci-bridge". */
    d = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 2, 6, 0, 1, 0);
    assert_true(fw_cfg_bootorder_path(p, sizeof(p), &d) > 0);
    assert_true(seabios_matches("/pci@i0cf8/pci-bridge@6/*@1", p));
    assert_false(seabios_matches("/pci@i0cf8/pci-bridge@6/*@2", p));

    /* NIC option ROMs use the same glob (bootprio_find_pci_rom, instance 0). */
    d = boot_dev(FW_CFG_BOOT_VIRTIO_NET, 1, 3, 0);
    assert_true(fw_cfg_bootorder_path(p, sizeof(p), &d) > 0);
    assert_true(seabios_matches("/pci@i0cf8/*@3", p));
}

static void test_bootorder_file(void **state)
{
    struct env *e = *state;
    struct fw_cfg_boot_dev devs[2];
    char b[128];

    devs[0] = boot_dev(FW_CFG_BOOT_NVME, 1, 5, 0);
    devs[0].vendor_id = 0x1de;
    devs[0].device_id = 0x1000;
    devs[1] = boot_dev(FW_CFG_BOOT_VIRTIO_BLK, 2, 6, 0, 1, 0);
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, devs, 2, false), 0);
    const char want[] = "/pci@i0cf8/pci01de,1000@5/namespace@1,0\n"
                        "/pci@i0cf8/pci-bridge@6/scsi@1/disk@0,0";
    assert_int_equal(fw_cfg_get_file(&e->fw, "bootorder", b, sizeof(b)), sizeof(want));
    assert_memory_equal(b, want, sizeof(want)); /* NUL included, as QEMU */
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, devs, 2, false), -EEXIST);
    fw_cfg_destroy(&e->fw);

    /* strict: "HALT" last. */
    assert_int_equal(fw_cfg_init(&e->fw, &e->mem), 0);
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, devs + 1, 1, true), 0);
    const char want_strict[] = "/pci@i0cf8/pci-bridge@6/scsi@1/disk@0,0\nHALT";
    assert_int_equal(fw_cfg_get_file(&e->fw, "bootorder", b, sizeof(b)), sizeof(want_strict));
    assert_memory_equal(b, want_strict, sizeof(want_strict));
    fw_cfg_destroy(&e->fw);

    /* Nothing listed: no file, unless strict. */
    assert_int_equal(fw_cfg_init(&e->fw, &e->mem), 0);
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, NULL, 0, false), 0);
    assert_int_equal(fw_cfg_file_selector(&e->fw, "bootorder"), -ENOENT);
    devs[0].depth = 0;
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, devs, 2, false), -EINVAL);
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, devs, FW_CFG_BOOT_MAX_DEVS + 1, false), -E2BIG);
    assert_int_equal(fw_cfg_add_bootorder(&e->fw, NULL, 0, true), 0);
    assert_int_equal(fw_cfg_get_file(&e->fw, "bootorder", b, sizeof(b)), 5);
    assert_memory_equal(b, "HALT", 5);
}

/* ---- hostile guest ---- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint64_t pick_addr(void)
{
    switch (rnd() % 6) {
    case 0:
        return rnd(); /* anywhere */
    case 1:
        return RAM_SIZE - rnd() % 32; /* around the end */
    case 2:
        return 0xffffffffffffffffull - rnd() % 32; /* wrapping */
    default:
        return rnd() % RAM_SIZE;
    }
}

static void test_hostile_sequence(void **state)
{
    struct env *e = *state;
    static const unsigned sizes[] = {1, 2, 4, 8, 3};
    static const uint32_t lengths[] = {0, 1, 4, 16, 64, 300, 0xffffffff, 0x80000000, RAM_SIZE};

    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/a", "aaaaaaaaaaaaaaaa", 16), 0);
    assert_int_equal(fw_cfg_add_file_rw(&e->fw, "etc/rw", "0123456789abcdef", 16), 0);
    assert_int_equal(fw_cfg_add_u32(&e->fw, FW_CFG_NB_CPUS, 4), 0);
    assert_int_equal(fw_cfg_add_file(&e->fw, "etc/empty", NULL, 0), 0);

    rng_state = 0x9e3779b97f4a7c15ull;
    capture_begin(); /* keep the (rate-limited) noise out of the test output */
    for (int i = 0; i < 100000; i++) {
        uint64_t r = rnd();
        switch (r % 8) {
        case 0:
            port_select(&e->fw, (uint16_t)(r % 3 ? rnd() % 0x28 : rnd()));
            break;
        case 1:
            (void)port_byte(&e->fw);
            break;
        case 2: {
            unsigned size = sizes[rnd() % 5];
            uint64_t v = fw_cfg_io_ops.read(&e->fw, rnd() % 14, size);
            if (size < 8)
                assert_true(v >> (8 * size) == 0);
            break;
        }
        case 3:
            fw_cfg_io_ops.write(&e->fw, rnd() % 14, sizes[rnd() % 5], rnd());
            break;
        case 4:
        case 5: {
            uint64_t desc = rnd() % (RAM_SIZE - 16);
            uint32_t ctl = (uint32_t)rnd() & (0xffff0000u | 0x1f);
            if (rnd() % 2)
                ctl = (ctl & 0x001f0000u) | (ctl & 0x1f); /* mostly valid selectors */
            put_desc(e->ram, desc, ctl, lengths[rnd() % 9] + (uint32_t)(rnd() % 3), pick_addr());
            dma_kick(&e->fw, rnd() % 4 ? desc : pick_addr());
            break;
        }
        case 6:
            e->ram[rnd() % RAM_SIZE] = (uint8_t)rnd();
            break;
        default:
            if (rnd() % 100 == 0)
                fw_cfg_reset(&e->fw);
            else
                fw_cfg_io_ops.write(&e->fw, 4, 4, (uint32_t)rnd());
            break;
        }
        assert_true(!e->fw.cur || e->fw.offset <= e->fw.cur->len);
    }
    (void)capture_end();

    /* The device still works and kept its shape. */
    uint8_t b[4];
    fw_cfg_reset(&e->fw);
    port_read(&e->fw, FW_CFG_SIGNATURE, b, 4);
    assert_memory_equal(b, "QEMU", 4);
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/rw", NULL, 0), 16);
    assert_int_equal(fw_cfg_get_file(&e->fw, "etc/a", b, 4), 16);
    assert_memory_equal(b, "aaaa", 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_signature_ports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_id_features, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_signature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_port_accesses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_and_arch_items, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numbered_items_le, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_while_selected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_dir_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_read_ports_and_dma, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_select_skip_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_triggers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_target_outside_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_descriptor_outside_ram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_length_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_past_end_zeros, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dma_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test(test_destroy_null_and_reinit),
        cmocka_unit_test_setup_teardown(test_e820, setup, teardown),
        cmocka_unit_test(test_loader_encoding),
        cmocka_unit_test(test_loader_errors),
        cmocka_unit_test_setup_teardown(test_loader_limits_and_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_loader_checks, setup, teardown),
        cmocka_unit_test(test_bootorder_paths),
        cmocka_unit_test(test_bootorder_matches_seabios),
        cmocka_unit_test_setup_teardown(test_bootorder_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_sequence, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
