/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Config TOML -> InstanceSpec.
 *
 * Clients that like to write their VM down in a file (Propolis-standalone
 * and propolis-cli style) use this library to turn it into a complete,
 * valid instance spec; the server itself never reads devices from a file.
 * examples/README.md describes the file format; in short:
 *
 *   [main]        cpus (default 1), memory (MiB, required), name,
 *                 boot_order = ["disk0", ...], cpuid_profile = "NAME"
 *   [chipset]     enable-pcie (default false)
 *   [[pci_bridge]] pci-path = "B.D.F", downstream-bus = N
 *   [block_dev.NAME] type = "file" | "blob" | "nbd" and its keys
 *   [dev.NAME]    driver = "pci-virtio-block" | "pci-nvme" |
 *                 "pci-virtio-viona" | "qemu-pvpanic" | "uart" |
 *                 "migration-failure-injector" and its keys
 *   [cpuid.NAME]  vendor = "amd" | "intel", "leaf" or "leaf-subleaf" =
 *                 [eax, ebx, ecx, edx]
 *
 * Component keys are the block_dev and dev names; the converter adds
 * "boot-settings" (when boot_order is set), "pci-bridge-N" (the N-th
 * [[pci_bridge]]), "NAME-backend" (the tap backend of NIC NAME) and "com1"
 * (when the file declares no "uart" device).
 *
 * Errors: every problem is recorded, in document order, with a message that
 * starts "line L, column C: " and the TOML key path as its pointer
 * ("/dev/disk0/pci-path"). When the file itself is fine, the result is run
 * through spec_validate(); its problems keep their spec pointers
 * ("/components/disk0/component/pci_path") and their messages name the
 * TOML line of the key (or table) the field came from.
 *
 * Output is deterministic for the same input, except the interface-id of a
 * NIC that does not set one: that is a fresh random (version 4) UUID, and
 * the spec carries it from then on.
 */
#ifndef CELLA_CONFIG_CONFIG_H
#define CELLA_CONFIG_CONFIG_H

#include <stddef.h>

#include "common/error.h"
#include "spec/spec.h"

/* Defaults for keys a config may leave out. */
#define CONFIG_DEFAULT_CPUS       1
#define CONFIG_DEFAULT_BLOCK_SIZE 512

/* Largest config text accepted (inline base64 blobs make it large). */
#define CONFIG_MAX_TEXT ((size_t)SPEC_MAX_BLOB_BASE64 + ((size_t)1 << 20))

struct config_options {
    /*
     * Directory that relative file paths (file backends, blob files) are
     * resolved against, so the spec names the same file wherever the server
     * runs. NULL leaves relative paths as written.
     */
    const char *base_dir;
    /*
     * Fills buf with len random bytes for generated UUIDs; returns 0 or a
     * negative errno. NULL uses getrandom(2). Tests pass a fixed source.
     */
    int (*random_bytes)(void *buf, size_t len, void *ctx);
    void *random_ctx;
};

struct config_result {
    struct instance_spec spec;
    /* [main] name, or NULL when absent (the spec has no name field). */
    char *name;
};

/*
 * Converts len bytes of TOML text into *out (caller frees with
 * config_result_free(), also after a failure). opts may be NULL for the
 * defaults. Returns 0 when the spec is complete and passes
 * spec_validate(); otherwise records every problem in errs and returns
 * -EINVAL (or -E2BIG for text over a limit, -ENOMEM), and out->spec is
 * empty.
 */
int config_convert(const char *text, size_t len, const struct config_options *opts,
                   struct config_result *out, struct cella_errors *errs);

/*
 * Like config_convert() on the contents of the file at path. Relative
 * paths inside are resolved against the file's directory unless
 * opts->base_dir says otherwise. A file that cannot be read is recorded
 * with pointer "" and its errno returned.
 */
int config_convert_file(const char *path, const struct config_options *opts,
                        struct config_result *out, struct cella_errors *errs);

/* Frees what a conversion produced and re-initialises it; accepts NULL. */
void config_result_free(struct config_result *r);

/*
 * The short form: text -> spec with default options (relative paths left
 * as written, name discarded). *out is initialised by the call and empty
 * on failure; the caller frees it with spec_free(). Returns as
 * config_convert().
 */
int config_to_spec(const char *toml_text, size_t len, struct instance_spec *out,
                   struct cella_errors *errs);

/* config_to_spec() on a file, paths resolved against its directory. */
int config_file_to_spec(const char *path, struct instance_spec *out, struct cella_errors *errs);

#endif
