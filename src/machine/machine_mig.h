/* SPDX-License-Identifier: MPL-2.0 */
/*
 * What live migration needs from a machine: pausing and resuming it,
 * tracking dirty guest RAM, and moving its state (vCPUs, in-kernel
 * irqchip, PIT, clock, every device) as versioned payloads.
 *
 * A payload is (kind, id, version, bytes): `kind` names a type of state
 * ("vcpu", "irqchip", "pit", "clock", "uart", "cmos", "pm", "i8042",
 * "pvpanic", "fw_cfg", "pci-config", "virtio-blk", "virtio-net", "nvme",
 * ...), `id` which instance of it ("0" for vCPU 0, the component key for a
 * device, "0.4.0" for a PCI function's config), `version` the layout of the
 * bytes (common/mig_buf.h). Versions are negotiated per kind: the source
 * lists (kind, version) pairs it would send, the target says which version
 * of each kind it accepts (machine_payload_accepts), and the source then
 * writes that version (machine_save_state's `want`).
 *
 * Threading: the owner's thread. Pause/resume do not destroy vCPU threads.
 */
#ifndef CELLA_MACHINE_MACHINE_MIG_H
#define CELLA_MACHINE_MACHINE_MIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "machine/guest_mem.h"
#include "machine/machine.h"

#define MIG_KIND_MAX 32
#define MIG_ID_MAX   64

/* One kind of payload and the versions a build can write or read. */
struct mig_kind_version {
    char kind[MIG_KIND_MAX];
    uint32_t version;     /* the newest version this build writes */
    uint32_t min_version; /* the oldest it still reads/writes */
};

/*
 * The kinds this machine will send (with the newest versions it can
 * write) into out[0..max); returns how many exist (may exceed max).
 */
size_t machine_payload_kinds(const struct machine *m, struct mig_kind_version *out, size_t max);

/*
 * Whether this build can load `version` of `kind`; if so, 0 and the
 * version it would like (the highest it reads that is <= offered) in
 * *accept; -ENOTSUP otherwise.
 */
int machine_payload_accepts(const char *kind, uint32_t offered, uint32_t *accept);

/*
 * Stops the vCPUs without destroying them (they wait in their threads)
 * and quiesces the devices: in-flight disk requests complete, queues stop
 * being processed, NIC receive stops. After it returns nothing writes
 * guest RAM. Idempotent. 0 or -errno.
 */
int machine_pause(struct machine *m);
/* Undoes machine_pause (or starts a machine that was built but never
 * started, e.g. a migration target after loading its state). */
int machine_resume(struct machine *m);

/* Guest RAM (for sending and receiving pages). */
struct guest_mem *machine_guest_mem(struct machine *m);

/*
 * Dirty tracking: KVM's dirty log (manual protect: KVM_CLEAR_DIRTY_LOG, so
 * a page's bit is re-armed only when the sender clears it just before
 * reading the page) merged with the devices' marks (guest_mem_dirty).
 * Bitmaps have one bit per 4 KiB page in RAM order (mem->size / 4096
 * bits). start: tracking on, every page counts as dirty (with
 * KVM_DIRTY_LOG_INITIALLY_SET KVM's bitmap starts all ones and pages are
 * write-protected only as they are cleared, so huge pages are not split
 * up front; without it the first fetch reports every page itself).
 * fetch: ORs the pages dirtied since they were last cleared into `out`;
 * the first fetch after start reports all of RAM. clear: re-arms tracking
 * for the pages set in `bits` (call right before reading those pages to
 * send them; a no-op on a KVM without manual protection, where fetch
 * re-arms). A pass is fetch, clear, copy. stop: tracking off. A machine
 * must be paused before the final pass: fetch then sees every write.
 */
int machine_dirty_start(struct machine *m);
/* -ECANCELED once the guest reset, powered off or failed (a terminal machine event). */
int machine_dirty_fetch(struct machine *m, uint64_t *out);
int machine_dirty_clear(struct machine *m, const uint64_t *bits);
void machine_dirty_stop(struct machine *m);
/*
 * ORs into `out` the pages the vCPUs wrote since they were last cleared,
 * taking nothing: a later fetch still reports them (and device writes,
 * which only fetch reports). Only with manual protection (-ENOTSUP
 * otherwise: KVM's GET_DIRTY_LOG would re-arm the pages itself).
 */
int machine_dirty_peek(struct machine *m, uint64_t *out);

/*
 * Writes every payload of a paused machine. For each kind, `want` gives
 * the version to write (from the target's answer); NULL: the newest.
 * emit() is called once per payload; a negative return stops and is
 * returned. 0 or -errno; -ECANCELED once the guest reset, powered off or
 * failed (its vCPUs no longer hold a state worth moving).
 */
typedef int (*mig_emit_fn)(void *ctx, const char *kind, const char *id, uint32_t version,
                           const uint8_t *data, size_t len);
int machine_save_state(struct machine *m, const struct mig_kind_version *want, size_t nwant,
                       mig_emit_fn emit, void *ctx);

/*
 * Loads one payload into a machine that was built from the same spec and
 * not started (or paused). Every value is validated; a bad payload is
 * -EINVAL with the reason in errs and leaves the machine unusable (the
 * target then destroys it). Unknown kind/id: -ENOENT.
 */
int machine_load_state(struct machine *m, const char *kind, const char *id, uint32_t version,
                       const uint8_t *data, size_t len, struct cella_errors *errs);

/*
 * After every payload was loaded: checks that each expected payload came
 * (a device with no state from the source is an error) and makes loaded
 * state effective (e.g. re-maps BARs from the loaded config space).
 */
int machine_load_finish(struct machine *m, struct cella_errors *errs);

#endif
