/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the fw_cfg device core: the input is a program of
 * guest actions -- port reads and writes, DMA descriptors placed anywhere in
 * (and around the end of) a small guest RAM, DMA triggers with arbitrary
 * addresses, RAM scribbles, resets -- run against a device holding a few
 * read-only and writable items. Afterwards the device must still answer
 * with its signature and its items must keep their sizes.
 *
 * Opcodes (one byte, then operands, little-endian; missing bytes read 0):
 *   0 select(u16)        1 read data port N times (u8)
 *   2 read(off u8, size) 3 write(off u8, size, value u64)
 *   4 descriptor(gpa u16, 16 raw bytes) then trigger at gpa (two 32-bit writes)
 *   5 poke RAM(gpa u16, len u8, bytes)
 *   6 trigger with a 64-bit address (u64)
 *   7 reset
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/fw_cfg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE 4096u

struct input {
    const uint8_t *p;
    size_t n;
};

static uint64_t take(struct input *in, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        if (in->n) {
            v |= (uint64_t)in->p[0] << (8 * i);
            in->p++;
            in->n--;
        }
    }
    return v;
}

static void setup_items(struct fw_cfg *fw)
{
    static const char sixteen[] = "0123456789abcdef";
    struct fw_cfg_boot_dev boot = {.kind = FW_CFG_BOOT_VIRTIO_BLK, .depth = 1, .path = {{4, 0}}};
    struct fw_cfg_loader l;

    if (fw_cfg_add_file(fw, "etc/ro", sixteen, 16) ||
        fw_cfg_add_file_rw(fw, "etc/rw", sixteen, 16) ||
        fw_cfg_add_file_rw(fw, "etc/rw-empty", NULL, 0) || fw_cfg_add_u16(fw, FW_CFG_NB_CPUS, 2) ||
        fw_cfg_add_u64(fw, FW_CFG_RAM_SIZE, RAM_SIZE) ||
        fw_cfg_add_bytes(fw, FW_CFG_IRQ0_OVERRIDE, "\x01", 1) ||
        fw_cfg_add_bootorder(fw, &boot, 1, false))
        abort();
    fw_cfg_loader_init(&l);
    if (fw_cfg_loader_allocate(&l, "etc/ro", 16, FW_CFG_LOADER_ZONE_HIGH) ||
        fw_cfg_loader_add_checksum(&l, "etc/ro", 0, 0, 16) || fw_cfg_add_table_loader(fw, &l))
        abort();
    fw_cfg_loader_free(&l);
}

static void kick32(struct fw_cfg *fw, uint64_t addr)
{
    if (addr >> 32)
        fw_cfg_io_ops.write(fw, 4, 4, __builtin_bswap32((uint32_t)(addr >> 32)));
    fw_cfg_io_ops.write(fw, 8, 4, __builtin_bswap32((uint32_t)addr));
}

static void run(struct fw_cfg *fw, uint8_t *ram, struct input *in)
{
    static const unsigned sizes[4] = {1, 2, 4, 8};

    while (in->n) {
        switch (take(in, 1) % 8) {
        case 0:
            fw_cfg_io_ops.write(fw, 0, 2, take(in, 2));
            break;
        case 1:
            for (unsigned i = take(in, 1) % 64; i; i--)
                if (fw_cfg_io_ops.read(fw, 1, 1) > 0xff)
                    abort();
            break;
        case 2: {
            uint64_t off = take(in, 1) % 16;
            unsigned sz = sizes[take(in, 1) % 4];
            uint64_t v = fw_cfg_io_ops.read(fw, off, sz);
            if (sz < 8 && v >> (8 * sz))
                abort();
            break;
        }
        case 3: {
            uint64_t off = take(in, 1) % 16;
            unsigned sz = sizes[take(in, 1) % 4];
            fw_cfg_io_ops.write(fw, off, sz, take(in, 8));
            break;
        }
        case 4: {
            uint64_t gpa = take(in, 2) % (RAM_SIZE + 32);
            for (unsigned i = 0; i < FW_CFG_DMA_DESC_SIZE; i++) {
                uint8_t b = (uint8_t)take(in, 1);
                if (gpa + i < RAM_SIZE)
                    ram[gpa + i] = b;
            }
            kick32(fw, gpa);
            break;
        }
        case 5: {
            uint64_t gpa = take(in, 2) % RAM_SIZE;
            for (unsigned len = (unsigned)take(in, 1); len && in->n; len--, gpa++)
                ram[gpa % RAM_SIZE] = (uint8_t)take(in, 1);
            break;
        }
        case 6:
            fw_cfg_io_ops.write(fw, 4, 8, __builtin_bswap64(take(in, 8)));
            break;
        default:
            fw_cfg_reset(fw);
            break;
        }
        if (fw->cur && fw->offset > fw->cur->len)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t ram[RAM_SIZE];
    struct guest_mem mem;
    struct fw_cfg fw;
    struct input in = {data, size};
    uint8_t sig[4];

    memset(ram, 0, sizeof(ram));
    guest_mem_init_buffer(&mem, ram, sizeof(ram));
    if (fw_cfg_init(&fw, &mem))
        abort();
    setup_items(&fw);
    run(&fw, ram, &in);

    fw_cfg_reset(&fw);
    for (int i = 0; i < 4; i++)
        sig[i] = (uint8_t)fw_cfg_io_ops.read(&fw, 1, 1);
    if (memcmp(sig, "QEMU", 4) != 0 || fw_cfg_get_file(&fw, "etc/rw", NULL, 0) != 16 ||
        fw_cfg_get_file(&fw, "etc/rw-empty", NULL, 0) != 0 ||
        fw_cfg_get_file(&fw, "etc/ro", sig, sizeof(sig)) != 16 || memcmp(sig, "0123", 4) != 0)
        abort();
    fw_cfg_destroy(&fw);
    return 0;
}
