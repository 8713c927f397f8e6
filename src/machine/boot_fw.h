/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Booting through firmware (Propolis's way): the bootrom mapped read-only
 * below 4 GiB with its last 128 KiB also in RAM at 0xe0000 (the legacy BIOS
 * area), and a QEMU-compatible fw_cfg carrying what firmware asks a QEMU
 * host for: CPU count, RAM size, e820, ACPI tables through the
 * linker/loader, the serial console port, and optionally a Linux kernel
 * for SeaBIOS's linuxboot_dma option ROM.
 */
#ifndef CELLA_MACHINE_BOOT_FW_H
#define CELLA_MACHINE_BOOT_FW_H

#include "common/error.h"
#include "devices/acpi.h"
#include "devices/fw_cfg.h"
#include "machine/machine.h"

struct machine;

/* What the firmware path owns; zeroed before use. */
struct boot_fw {
    struct fw_cfg fw;
    bool fw_ok;
    void *rom;
    size_t rom_len;
};

/*
 * Maps the bootrom, fills fw_cfg and registers its ports. `acpi` describes
 * the platform for the ACPI tables. Returns 0 or a negative errno with a
 * record in errs.
 */
int boot_fw_setup(struct machine *m, struct boot_fw *b, const struct machine_host *host,
                  const struct acpi_platform *acpi, struct cella_errors *errs);
void boot_fw_destroy(struct boot_fw *b);

/* Reads a whole file of at most `max` bytes; caller frees *out. */
int read_boot_file(const char *path, size_t max, void **out, size_t *len,
                   struct cella_errors *errs);

#endif
