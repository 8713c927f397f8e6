/* SPDX-License-Identifier: MPL-2.0 */
/*
 * QEMU-compatible firmware configuration device (fw_cfg), x86 I/O-port
 * flavour, plus the two firmware blobs built on top of it: the ACPI
 * linker/loader script ("etc/table-loader") and the "bootorder" file.
 *
 * Guest interface (QEMU docs/specs/fw_cfg.rst), ports relative to 0x510:
 *
 *   +0  selector, 16-bit write: selects an item and rewinds its offset.
 *       Bit 14 (the old "write channel") is ignored for lookup, as in QEMU.
 *   +0, +1  data, 8-bit read: the next byte of the selected item, 0 past
 *       the end (the offset then stays put). Writes are ignored (QEMU 2.4+).
 *   +4..+11  DMA address, big-endian 64-bit. A 32-bit write at +4 sets the
 *       high half (and clears the low half); a 32-bit write at +8 ors in the
 *       low half and starts the transfer; a 64-bit write at +4 sets both and
 *       starts it. Reads return the bytes "QEMU CFG" (0x51454d5520434647
 *       read big-endian), which is how a guest detects the DMA interface.
 *
 * A DMA descriptor {be32 control; be32 length; be64 address} is read once
 * from guest RAM. control bit 3 (SELECT) selects item control >> 16; then
 * READ (bit 1) copies `length` bytes of the item to `address` (zero-filling
 * what lies past the item's end), else WRITE (bit 4) copies guest bytes
 * into a writable item (never past its end), else SKIP (bit 2) advances the
 * offset. When done the device stores the big-endian control word back:
 * 0 on success, ERROR (bit 0) on failure. The transfer runs synchronously
 * on the vCPU thread that wrote the trigger, so the guest never sees a
 * transfer "in progress".
 *
 * Guest mistakes never hurt cella: a descriptor outside RAM is logged and
 * nothing is written (unless the control word alone lies in RAM, which then
 * gets ERROR, as QEMU does); a target range outside RAM, wrapping around
 * 2^64, longer than FW_CFG_DMA_MAX_LEN, or a write to a read-only item is
 * logged and answered with ERROR, moving neither data nor the offset.
 *
 * Items: 0x0000 "QEMU", 0x0001 features (traditional | DMA) and the file
 * directory 0x0019 exist from fw_cfg_init. The machine adds the rest
 * (numbered items below 0x0020, arch-local items 0x8000.., and named files)
 * before any vCPU runs. Files get selectors 0x0020 + their index in the
 * directory, which is sorted by name (strcmp): that is what QEMU's
 * fw_cfg_add_file_callback does for current machine types (only old pc
 * machine types, through legacy_fw_cfg_order, keep a fixed ad-hoc order).
 * Firmware does not care about the order -- SeaBIOS, OVMF and Linux
 * read the count, then the entries, and look files up by name -- but
 * sorting makes the selectors independent of the order in which devices
 * were created. Adding a file renumbers the files after it, so all items
 * must be added before the guest runs.
 *
 * The directory is exactly 4 + 64 * count bytes. (QEMU allocates a fixed
 * number of slots and pads with zero entries; no consumer reads past
 * `count`, so the padding is not part of the contract.)
 *
 * Threading: the io callbacks run on vCPU threads and may race; every
 * entry point takes the device's own mutex. Adding items is meant for
 * machine construction, but is safe at any time.
 */
#ifndef CELLA_DEVICES_FW_CFG_H
#define CELLA_DEVICES_FW_CFG_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/mig_buf.h"
#include "devices/io.h"
#include "machine/guest_mem.h"

/* Port range: register fw_cfg_io_ops at FW_CFG_IO_BASE for FW_CFG_IO_SIZE ports. */
#define FW_CFG_IO_BASE   0x510
#define FW_CFG_IO_SIZE   12
#define FW_CFG_PORT_SEL  0x0 /* offsets within the range */
#define FW_CFG_PORT_DATA 0x1
#define FW_CFG_PORT_DMA  0x4

/* Item selectors (QEMU include/standard-headers/linux/qemu_fw_cfg.h numbering). */
#define FW_CFG_SIGNATURE      0x00
#define FW_CFG_ID             0x01
#define FW_CFG_UUID           0x02
#define FW_CFG_RAM_SIZE       0x03
#define FW_CFG_NOGRAPHIC      0x04
#define FW_CFG_NB_CPUS        0x05
#define FW_CFG_MACHINE_ID     0x06
#define FW_CFG_KERNEL_ADDR    0x07
#define FW_CFG_KERNEL_SIZE    0x08
#define FW_CFG_KERNEL_CMDLINE 0x09
#define FW_CFG_INITRD_ADDR    0x0a
#define FW_CFG_INITRD_SIZE    0x0b
#define FW_CFG_BOOT_DEVICE    0x0c
#define FW_CFG_NUMA           0x0d
#define FW_CFG_BOOT_MENU      0x0e
#define FW_CFG_MAX_CPUS       0x0f
#define FW_CFG_KERNEL_ENTRY   0x10
#define FW_CFG_KERNEL_DATA    0x11
#define FW_CFG_INITRD_DATA    0x12
#define FW_CFG_CMDLINE_ADDR   0x13
#define FW_CFG_CMDLINE_SIZE   0x14
#define FW_CFG_CMDLINE_DATA   0x15
#define FW_CFG_SETUP_ADDR     0x16
#define FW_CFG_SETUP_SIZE     0x17
#define FW_CFG_SETUP_DATA     0x18
#define FW_CFG_FILE_DIR       0x19
#define FW_CFG_FILE_FIRST     0x20
#define FW_CFG_WRITE_CHANNEL  0x4000 /* ignored on select */
#define FW_CFG_ARCH_LOCAL     0x8000
#define FW_CFG_ENTRY_MASK     0x3fff
/* x86 arch-local items (legacy; SeaBIOS still probes them, absent reads as 0). */
#define FW_CFG_ACPI_TABLES    (FW_CFG_ARCH_LOCAL + 0)
#define FW_CFG_SMBIOS_ENTRIES (FW_CFG_ARCH_LOCAL + 1)
#define FW_CFG_IRQ0_OVERRIDE  (FW_CFG_ARCH_LOCAL + 2)
#define FW_CFG_E820_TABLE     (FW_CFG_ARCH_LOCAL + 3) /* legacy: use fw_cfg_add_e820 */
#define FW_CFG_HPET           (FW_CFG_ARCH_LOCAL + 4)

/* FW_CFG_ID feature bits. */
#define FW_CFG_F_TRADITIONAL 0x1
#define FW_CFG_F_DMA         0x2

/* DMA control bits. */
#define FW_CFG_DMA_CTL_ERROR  0x01
#define FW_CFG_DMA_CTL_READ   0x02
#define FW_CFG_DMA_CTL_SKIP   0x04
#define FW_CFG_DMA_CTL_SELECT 0x08
#define FW_CFG_DMA_CTL_WRITE  0x10
#define FW_CFG_DMA_DESC_SIZE  16
#define FW_CFG_DMA_SIGNATURE  0x51454d5520434647ull /* "QEMU CFG", big-endian */

/* Limits. */
#define FW_CFG_MAX_NAME       55         /* file name bytes, without the NUL */
#define FW_CFG_MAX_FILES      256        /* named files */
#define FW_CFG_MAX_ITEMS      64         /* numbered items, built-ins included */
#define FW_CFG_MAX_ITEM_LEN   (1u << 30) /* bytes in one item */
#define FW_CFG_DMA_MAX_LEN    (1u << 30) /* bytes one READ/WRITE descriptor may move */
#define FW_CFG_DIR_ENTRY_SIZE 64         /* {be32 size, be16 select, be16 0, name[56]} */

/* One item's bytes. Owned by the device. */
struct fw_cfg_item {
    uint16_t key;  /* selector without FW_CFG_WRITE_CHANNEL (files: unused) */
    bool writable; /* DMA WRITE allowed */
    uint32_t len;
    uint8_t *data; /* NULL when len == 0 */
};

struct fw_cfg_file {
    char name[FW_CFG_MAX_NAME + 1];
    struct fw_cfg_item item;
};

/*
 * The device. Fields are private to fw_cfg.c; the struct is public only so
 * the machine can embed it.
 *
 * Invariants (under lock): files[] is sorted by name and files[i] answers
 * selector FW_CFG_FILE_FIRST + i; items[] holds the numbered items, one per
 * key, including the directory, whose bytes always describe files[];
 * `cur` is the item `selector` resolves to (NULL if none), `offset` <=
 * cur->len whenever cur is set.
 */
struct fw_cfg {
    const struct guest_mem *mem;
    pthread_mutex_t lock;
    struct fw_cfg_item items[FW_CFG_MAX_ITEMS];
    size_t nitems;
    struct fw_cfg_file *files;
    size_t nfiles;
    uint16_t selector;
    uint32_t offset;
    uint64_t dma_addr;
    const struct fw_cfg_item *cur;
};

/*
 * Initialises fw with the signature, ID and (empty) directory items; DMA
 * transfers go through `mem`, which must outlive fw. Selector, offset and
 * DMA address start at 0. Returns 0, or -ENOMEM (fw is then destroyed).
 */
int fw_cfg_init(struct fw_cfg *fw, const struct guest_mem *mem);

/* Frees everything fw_cfg_init and the add functions made; accepts NULL. */
void fw_cfg_destroy(struct fw_cfg *fw);

/*
 * Machine reset: selector, offset and DMA address back to 0. Item contents,
 * including guest writes to writable items, are kept. State-driver thread,
 * while paused.
 */
void fw_cfg_reset(struct fw_cfg *fw);

/*
 * Live migration (FW_CFG_STATE_VERSION): selector, offset and DMA address
 * register, plus the contents of every guest-writable file (by name, in
 * directory order), since firmware may have written them. The target was
 * built from the same spec, so it has the same files: fw_cfg_load refuses
 * (-EINVAL) other writable files or sizes, an offset past the selected
 * item's end, and anything left unread; -EPROTO for another version.
 * State driver, vCPUs paused.
 */
#define FW_CFG_STATE_VERSION 1
int fw_cfg_save(const struct fw_cfg *fw, struct mig_out *o);
int fw_cfg_load(struct fw_cfg *fw, struct mig_in *in, uint32_t version);

/*
 * Adds numbered item `key` with a copy of data[0..len) (data may be NULL
 * when len is 0). key is a generic selector below FW_CFG_FILE_FIRST or an
 * arch-local one (FW_CFG_ARCH_LOCAL | n); files use fw_cfg_add_file.
 * Returns 0, -EINVAL (bad key or data), -EEXIST (key taken, including the
 * built-in 0x00, 0x01, 0x19), -E2BIG (len or item count over a limit),
 * -ENOMEM.
 */
int fw_cfg_add_bytes(struct fw_cfg *fw, uint16_t key, const void *data, size_t len);

/* fw_cfg_add_bytes of a value stored little-endian, as QEMU stores them. */
int fw_cfg_add_u16(struct fw_cfg *fw, uint16_t key, uint16_t value);
int fw_cfg_add_u32(struct fw_cfg *fw, uint16_t key, uint32_t value);
int fw_cfg_add_u64(struct fw_cfg *fw, uint16_t key, uint64_t value);

/* fw_cfg_add_bytes of s with its terminating NUL (like QEMU's add_string). */
int fw_cfg_add_string(struct fw_cfg *fw, uint16_t key, const char *s);

/*
 * Adds a read-only named file with a copy of data[0..len). name: 1 to
 * FW_CFG_MAX_NAME printable ASCII bytes. The directory is re-sorted, so the
 * selectors of files sorting after `name` move up by one.
 * Returns 0, -EINVAL (bad name or data), -E2BIG (name, len or file count
 * over a limit), -EEXIST (name taken), -ENOMEM.
 */
int fw_cfg_add_file(struct fw_cfg *fw, const char *name, const void *data, size_t len);

/* As fw_cfg_add_file, but the guest may overwrite the bytes with DMA WRITE. */
int fw_cfg_add_file_rw(struct fw_cfg *fw, const char *name, const void *data, size_t len);

/*
 * Copies up to `cap` bytes of file `name` (as the guest may have rewritten
 * it) into out. Returns the file's length (which may exceed cap), or
 * -ENOENT.
 */
int fw_cfg_get_file(struct fw_cfg *fw, const char *name, void *out, size_t cap);

/* Selector of file `name` as the guest sees it now, or -ENOENT. */
int fw_cfg_file_selector(struct fw_cfg *fw, const char *name);

/*
 * Port I/O callbacks for FW_CFG_IO_BASE..+FW_CFG_IO_SIZE; opaque is the
 * struct fw_cfg. vCPU threads.
 */
extern const struct io_ops fw_cfg_io_ops;

/* ---- etc/e820 ---------------------------------------------------------- */

#define FW_CFG_E820_RAM        1
#define FW_CFG_E820_RESERVED   2
#define FW_CFG_E820_ENTRY_SIZE 20 /* {le64 address, le64 length, le32 type}, packed */
#define FW_CFG_E820_MAX        128

struct fw_cfg_e820_entry {
    uint64_t address;
    uint64_t length;
    uint32_t type;
};

/*
 * Adds file "etc/e820" (what SeaBIOS and OVMF read for the memory map) from
 * n entries. Returns as fw_cfg_add_file; -E2BIG over FW_CFG_E820_MAX.
 */
int fw_cfg_add_e820(struct fw_cfg *fw, const struct fw_cfg_e820_entry *entries, size_t n);

/* ---- ACPI linker/loader ("etc/table-loader") --------------------------- */

/*
 * A builder for the script SeaBIOS (src/fw/romfile_loader.c) and OVMF run to
 * place cella's ACPI tables: 128-byte little-endian commands
 *
 *   ALLOCATE     (1) {char file[56]; le32 align; u8 zone}
 *   ADD_POINTER  (2) {char dest_file[56]; char src_file[56]; le32 offset; u8 size}
 *   ADD_CHECKSUM (3) {char file[56]; le32 result_offset; le32 start; le32 length}
 *
 * each after a le32 command word, zero-padded to 128 bytes. The firmware
 * copies each ALLOCATEd fw_cfg file into memory of the zone; ADD_POINTER
 * adds the address of src_file's copy to the `size`-byte little-endian
 * integer at dest_file+offset (so that integer must hold the offset into
 * src_file the pointer should point to); ADD_CHECKSUM makes the bytes
 * [start, start+length) of the file sum to 0 by adjusting the byte at
 * result_offset. A file must be allocated exactly once, before any command
 * names it.
 *
 * Usage: init, allocate/add_*, then fw_cfg_add_table_loader (which checks
 * every offset against the files already added to fw) or, unchecked,
 * fw_cfg_add_file(fw, "etc/table-loader", l->buf, l->len); then free.
 * Not thread-safe; one builder per thread.
 */
#define FW_CFG_LOADER_FILE          "etc/table-loader"
#define FW_CFG_LOADER_CMD_SIZE      128
#define FW_CFG_LOADER_MAX_CMDS      1024
#define FW_CFG_LOADER_ALLOCATE      1
#define FW_CFG_LOADER_ADD_POINTER   2
#define FW_CFG_LOADER_ADD_CHECKSUM  3
#define FW_CFG_LOADER_WRITE_POINTER 4 /* not generated */

enum fw_cfg_loader_zone {
    FW_CFG_LOADER_ZONE_HIGH = 1, /* anywhere in RAM below 4 GiB */
    FW_CFG_LOADER_ZONE_FSEG = 2, /* the BIOS F segment, 0xf0000-0xfffff (RSDP) */
};

struct fw_cfg_loader {
    uint8_t *buf; /* len bytes of commands */
    size_t len;
    size_t cap;
};

/* Empties l. */
void fw_cfg_loader_init(struct fw_cfg_loader *l);

/* Frees l's buffer and re-initialises it; accepts NULL. */
void fw_cfg_loader_free(struct fw_cfg_loader *l);

/*
 * Appends ALLOCATE of `file` aligned to `align` (a power of two) in `zone`.
 * Returns 0, -EINVAL (bad name, align or zone), -E2BIG (name or command
 * count), -EEXIST (file already allocated), -ENOMEM.
 */
int fw_cfg_loader_allocate(struct fw_cfg_loader *l, const char *file, uint32_t align,
                           enum fw_cfg_loader_zone zone);

/*
 * Appends ADD_POINTER: dest_file+dest_offset holds a `size`-byte (1, 2, 4
 * or 8) little-endian offset into src_file, to which the firmware adds
 * src_file's address. Both files must be allocated already.
 * Returns 0, -EINVAL (bad name, size, or dest_offset + size overflows),
 * -ENOENT (file not allocated), -E2BIG, -ENOMEM.
 */
int fw_cfg_loader_add_pointer(struct fw_cfg_loader *l, const char *dest_file, uint32_t dest_offset,
                              uint8_t size, const char *src_file);

/*
 * Appends ADD_CHECKSUM over file[start, start+length) stored at
 * file[result_offset] (normally inside the range, holding 0). The file must
 * be allocated already. Returns 0, -EINVAL (bad name, start + length
 * overflows), -ENOENT, -E2BIG, -ENOMEM.
 */
int fw_cfg_loader_add_checksum(struct fw_cfg_loader *l, const char *file, uint32_t result_offset,
                               uint32_t start, uint32_t length);

/*
 * Checks every command of l against the files of fw (each allocated file
 * exists and is not empty, every pointer and checksum lies inside its
 * file), then adds l as FW_CFG_LOADER_FILE. Returns 0, -EINVAL (l is empty
 * or malformed), -ENOENT (a file is missing or empty), -ERANGE (an offset
 * or range is outside its file), or what fw_cfg_add_file returns.
 */
int fw_cfg_add_table_loader(struct fw_cfg *fw, const struct fw_cfg_loader *l);

/* ---- bootorder ---------------------------------------------------------- */

/*
 * The "bootorder" file is one OpenFirmware device path per line, highest
 * priority first, optionally ending with "HALT" (SeaBIOS then boots nothing
 * that is not listed). cella writes paths exactly as QEMU does for the same
 * device, because SeaBIOS and OVMF were written against QEMU's paths:
 *
 *   virtio-blk  /pci@i0cf8/scsi@S[,F]/disk@0,0
 *   NVMe        /pci@i0cf8/pciVVVV,DDDD@S[,F]/namespace@N,0
 *   virtio-net  /pci@i0cf8/ethernet@S[,F]/ethernet-phy@0
 *   behind PCI-PCI bridges, one /pci-bridge@S[,F] node per bridge from the
 *   root bus outward:  /pci@i0cf8/pci-bridge@6/scsi@1/disk@0,0
 *
 * S and F are the slot and function in lower-case hex, ",F" only when F is
 * not 0. The node names are QEMU's (hw/pci/pci.c class table): virtio-blk
 * reports class 0x0100 ("scsi"), virtio-net 0x0200 ("ethernet"), a bridge
 * 0x0604 ("pci-bridge"); NVMe's class 0x0108 has no name there, so QEMU
 * falls back to "pci<vendor>,<device>" in hex. The suffixes are the
 * bootindex suffixes QEMU's devices register.
 *
 * SeaBIOS (src/boot.c, bootprio_find_pci_device, which both its virtio-blk
 * and NVMe drivers call for the controller's PCI function) builds a glob:
 * "/pci@i0cf8", a literal "/pci-bridge@S[,F]" for each bridge above the
 * controller, then "/<star>@S[,F]" for the controller, <star> matching any
 * node name; a bootorder line matches when the glob matches its beginning
 * and is followed by '/' or the end of the line. So for SeaBIOS the device
 * node's name and the suffix are free, but bridges must be spelled
 * "pci-bridge" and the numbers must be exact. OVMF parses the names and
 * suffixes too, which is why QEMU's are kept.
 */
#define FW_CFG_BOOT_MAX_DEPTH 8 /* bridges + the device */
#define FW_CFG_BOOT_MAX_DEVS  64

enum fw_cfg_boot_kind {
    FW_CFG_BOOT_VIRTIO_BLK,
    FW_CFG_BOOT_NVME,
    FW_CFG_BOOT_VIRTIO_NET,
};

struct fw_cfg_pci_loc {
    uint8_t slot; /* 0..31 */
    uint8_t func; /* 0..7 */
};

struct fw_cfg_boot_dev {
    enum fw_cfg_boot_kind kind;
    /* path[0] is on the root bus; path[depth-1] is the device, the others bridges */
    struct fw_cfg_pci_loc path[FW_CFG_BOOT_MAX_DEPTH];
    size_t depth;
    uint16_t vendor_id, device_id; /* NVMe: names the node */
    uint32_t nsid;                 /* NVMe: namespace to boot from (normally 1) */
};

/*
 * Writes dev's path, NUL-terminated, into out[0..cap). Returns its length
 * without the NUL, -EINVAL (bad kind, depth, slot or function), or -E2BIG
 * (cap too small; out then holds a truncated, NUL-terminated prefix when
 * cap > 0).
 */
int fw_cfg_bootorder_path(char *out, size_t cap, const struct fw_cfg_boot_dev *dev);

/*
 * Adds file "bootorder": the paths of devs[0..n) joined by '\n', then
 * "HALT" when `strict`, with a terminating NUL counted in the file's size
 * (as QEMU does). With n == 0 and !strict nothing is added. Returns 0,
 * -E2BIG (n over FW_CFG_BOOT_MAX_DEVS), or what fw_cfg_bootorder_path and
 * fw_cfg_add_file return.
 */
int fw_cfg_add_bootorder(struct fw_cfg *fw, const struct fw_cfg_boot_dev *devs, size_t n,
                         bool strict);

#endif
