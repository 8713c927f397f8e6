/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The machine: one KVM VM built from an instance spec plus host facts.
 *
 * The spec says what the guest sees; `struct machine_host` holds what only
 * the host knows (the boot source). The owner (cella-standalone, later the
 * instance state driver) creates the machine, starts it, receives events
 * (power-off, reset, panic, failure) through a callback, and stops and
 * destroys it. Reset is done by the owner rebuilding the machine from the
 * same spec (a clean new VM: no stale device or vCPU state can survive).
 *
 * Threading: create/start/stop/destroy from the owner's thread only.
 * Callbacks run on vCPU threads and must not call stop/destroy themselves.
 */
#ifndef CELLA_MACHINE_MACHINE_H
#define CELLA_MACHINE_MACHINE_H

#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "spec/spec.h"

struct machine;

/* Host facts: how the machine boots. Exactly one of kernel or bootrom. */
struct machine_host {
    const char *kernel;  /* bzImage for direct Linux boot */
    const char *initrd;  /* optional */
    const char *cmdline; /* optional */
    const char *bootrom; /* firmware image (SeaBIOS, OVMF) */
    /* Option ROM SeaBIOS runs to boot a fw_cfg kernel (linuxboot_dma.bin). */
    const char *linuxboot_rom;
    /*
     * The machine is a live-migration target: its RAM and vCPU state come
     * from the source, so a direct-boot kernel is only checked for being
     * readable, not decompressed and loaded (a reset rebuilds the machine
     * and boots it then). Not a host fact; set by the owner per build.
     */
    bool incoming;
};

enum machine_event {
    MACHINE_EV_POWEROFF, /* guest powered off (ACPI S5) */
    MACHINE_EV_RESET,    /* guest asked for a reset or triple-faulted */
    MACHINE_EV_PANIC,    /* guest reported a panic through pvpanic */
    MACHINE_EV_FAILURE,  /* a vCPU or device failed; the VM cannot go on */
};

const char *machine_event_name(enum machine_event ev);

struct machine_callbacks {
    void *ctx;
    /* Any vCPU thread. A POWEROFF/RESET/FAILURE stops all vCPUs first. */
    void (*event)(void *ctx, enum machine_event ev, const char *detail);
    /* Bytes the guest wrote to serial port `com` (1..4); vCPU thread. */
    void (*serial_out)(void *ctx, unsigned com, const uint8_t *buf, size_t len);
};

/*
 * Builds the VM (KVM objects, RAM, devices, boot image) from a validated,
 * host-checked spec. Problems a person must fix (unsupported CPUID, missing
 * kernel) are recorded in errs. Returns 0 and *out, or a negative errno.
 */
struct backend_set;
/*
 * `backends` holds the spec's storage backends (backends/set.h), opened by
 * the owner and kept across machines; it must outlive the machine. It may
 * be NULL when the spec has no disks.
 */
int machine_create(const struct instance_spec *spec, const struct machine_host *host,
                   struct backend_set *backends, const struct machine_callbacks *cb,
                   struct machine **out, struct cella_errors *errs);

/*
 * The CPUID template the machine uses, as spec entries, for the effective
 * spec (caller frees out->entries).
 */
int machine_effective_cpuid(const struct machine *m, struct spec_cpuid *out);

/* Starts the vCPU threads. */
int machine_start(struct machine *m);

/* Stops and joins the vCPU threads; idempotent. */
void machine_stop(struct machine *m);

/* Stops if needed and frees everything; accepts NULL. */
void machine_destroy(struct machine *m);

/*
 * Feeds bytes to serial port `com` (1..4) as if typed. Returns how many the
 * UART took (0 when its FIFO is full; try again later). Any thread.
 */
size_t machine_serial_input(struct machine *m, unsigned com, const uint8_t *buf, size_t len);

/*
 * Throttles the vCPUs: every vCPU thread runs about 10 ms, then sleeps
 * long enough that the guest gets only (100 - pct) % of the time (like
 * QEMU's auto-converge). pct 1..99 starts or changes it, 0 ends it (a
 * thread of its own kicks the vCPUs). machine_stop ends it too. Any one
 * thread at a time.
 */
int machine_throttle(struct machine *m, unsigned pct);

/*
 * Logs what a person debugging a stuck guest wants to see (the devices'
 * queues and interrupts), without stopping anything. Any thread.
 */
void machine_debug_dump(struct machine *m);

/* Injects an NMI into every vCPU. */
int machine_nmi(struct machine *m);

/* Number of vCPUs and bytes of guest RAM. */
unsigned machine_ncpus(const struct machine *m);
uint64_t machine_ram_bytes(const struct machine *m);

#endif
