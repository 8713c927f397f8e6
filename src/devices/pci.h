/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The PCI core: one function's configuration space (struct pci_func), the
 * topology of buses and bridges that routes configuration cycles to it
 * (struct pci_topology), BAR decoding, and INTx routing.
 *
 * Configuration space. A function holds 256 bytes (4096 with extended
 * config enabled) plus two per-byte masks: `wmask` (bits the guest may
 * write) and `w1cmask` (bits a guest write of 1 clears, the status error
 * bits). Everything else is read-only to the guest. A device describes its
 * registers once at setup (IDs, BARs, capabilities, masks) and the core
 * enforces them; ranges whose reads or writes need code (virtio's PCI
 * config window, MSI-X control, PAM) are handed to a cfg hook.
 *
 * Bus numbers. Two kinds exist and must not be confused:
 *  - the *logical* bus: the number a struct pci_path in the instance spec
 *    names (0, or a pci_pci_bridge's `downstream_bus`). It identifies a bus
 *    in cella for the VM's whole life and never appears in the guest.
 *  - the *routed* bus: the number in a configuration cycle (CF8/ECAM).
 *    Like real hardware, a cycle for bus N != 0 goes to the bridge on the
 *    root bus whose guest-programmed [secondary, subordinate] range holds
 *    N; if N is its secondary bus the cycle becomes a type-0 cycle on the
 *    bridge's (logical) downstream bus, otherwise it is forwarded further
 *    down the same way. Nothing is cached: routing reads the bridges'
 *    registers at each access, so it is always what the guest programmed.
 * Firmware (SeaBIOS, OVMF) and Linux number buses depth-first from 1 and
 * may renumber them; a device that the spec puts on logical bus 5 is found
 * at whatever number firmware gives that bridge's secondary bus. A bridge
 * resets with its bus registers at 0, so devices behind it are invisible
 * until something programs it, as on real hardware. (Propolis keeps a flat
 * table from programmed secondary number to logical bus and ignores the
 * subordinate number; walking the tree instead handles nested bridges and
 * guest-made conflicts without special cases, and it needs no extra state
 * to migrate: the routes are the registers.)
 *
 * Threading. All configuration state of the functions in a topology is
 * guarded by the topology's lock: pci_topology_cfg_read/write take it, and
 * cfg hooks and the bar_moved callback run with it held. INTx state has a
 * separate leaf lock so that pci_set_irq() may be called from any thread,
 * including from inside a cfg hook or a BAR access.
 *
 * Setup functions (pci_func_init, pci_func_set_*, pci_set_bar,
 * pci_add_capability, pci_add_cfg_hook, pci_cfg_poke, pci_cfg_set_mask)
 * are called by the thread that builds the machine, before the function is
 * added to a topology; afterwards they refuse (-EBUSY) or, for the void
 * ones, must only be called from inside a cfg hook of that function.
 */
#ifndef CELLA_DEVICES_PCI_H
#define CELLA_DEVICES_PCI_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/mig_buf.h"
#include "devices/io.h"
#include "spec/spec.h"

/* ---- standard registers ---- */

#define PCI_CFG_SIZE     256u  /* conventional configuration space */
#define PCI_CFG_SIZE_EXT 4096u /* with extended (ECAM) configuration space */

#define PCI_REG_VENDOR_ID     0x00
#define PCI_REG_DEVICE_ID     0x02
#define PCI_REG_COMMAND       0x04
#define PCI_REG_STATUS        0x06
#define PCI_REG_REVISION      0x08
#define PCI_REG_CLASS         0x09 /* 24 bits: prog-if, subclass, class */
#define PCI_REG_CACHE_LINE    0x0c
#define PCI_REG_LATENCY       0x0d
#define PCI_REG_HEADER_TYPE   0x0e
#define PCI_REG_BIST          0x0f
#define PCI_REG_BAR0          0x10
#define PCI_REG_SUBSYS_VENDOR 0x2c /* type 0 only */
#define PCI_REG_SUBSYS_ID     0x2e /* type 0 only */
#define PCI_REG_ROM           0x30 /* type 0; type 1 has it at 0x38 */
#define PCI_REG_CAP_PTR       0x34
#define PCI_REG_INT_LINE      0x3c
#define PCI_REG_INT_PIN       0x3d
#define PCI_CAP_START         0x40 /* first byte after the standard header */

/* Type-1 (bridge) header registers. */
#define PCI_REG_PRIMARY_BUS     0x18
#define PCI_REG_SECONDARY_BUS   0x19
#define PCI_REG_SUBORDINATE_BUS 0x1a
#define PCI_REG_SEC_LATENCY     0x1b
#define PCI_REG_IO_BASE         0x1c
#define PCI_REG_IO_LIMIT        0x1d
#define PCI_REG_SEC_STATUS      0x1e
#define PCI_REG_MEM_BASE        0x20
#define PCI_REG_MEM_LIMIT       0x22
#define PCI_REG_PREF_BASE       0x24
#define PCI_REG_PREF_LIMIT      0x26
#define PCI_REG_PREF_BASE_HI    0x28
#define PCI_REG_PREF_LIMIT_HI   0x2c
#define PCI_REG_IO_BASE_HI      0x30
#define PCI_REG_IO_LIMIT_HI     0x32
#define PCI_REG_BRIDGE_ROM      0x38
#define PCI_REG_BRIDGE_CONTROL  0x3e

#define PCI_HEADER_TYPE_NORMAL 0x00
#define PCI_HEADER_TYPE_BRIDGE 0x01
#define PCI_HEADER_TYPE_MULTI  0x80 /* multifunction bit of function 0 */

#define PCI_CMD_IO           0x0001
#define PCI_CMD_MEM          0x0002
#define PCI_CMD_BUS_MASTER   0x0004
#define PCI_CMD_PARITY       0x0040
#define PCI_CMD_SERR         0x0100
#define PCI_CMD_INTX_DISABLE 0x0400
/* The command bits a guest can change; all others read as 0. */
#define PCI_CMD_WRITABLE                                                                           \
    (PCI_CMD_IO | PCI_CMD_MEM | PCI_CMD_BUS_MASTER | PCI_CMD_PARITY | PCI_CMD_SERR |               \
     PCI_CMD_INTX_DISABLE)

#define PCI_STS_INTX       0x0008 /* read-only: the function's INTx is pending */
#define PCI_STS_CAP_LIST   0x0010 /* read-only: capability list present */
#define PCI_STS_PARITY_ERR 0x0100 /* master data parity error (W1C) */
#define PCI_STS_SIG_TABORT 0x0800 /* signaled target abort (W1C) */
#define PCI_STS_RCV_TABORT 0x1000 /* received target abort (W1C) */
#define PCI_STS_RCV_MABORT 0x2000 /* received master abort (W1C) */
#define PCI_STS_SIG_SERR   0x4000 /* signaled system error (W1C) */
#define PCI_STS_DET_PARITY 0x8000 /* detected parity error (W1C) */
#define PCI_STS_W1C                                                                                \
    (PCI_STS_PARITY_ERR | PCI_STS_SIG_TABORT | PCI_STS_RCV_TABORT | PCI_STS_RCV_MABORT |           \
     PCI_STS_SIG_SERR | PCI_STS_DET_PARITY)

#define PCI_BAR_IO_FLAG      0x1u /* BAR bit 0: I/O space */
#define PCI_BAR_MEM64_FLAG   0x4u /* BAR bits 2:1 = 10: 64-bit memory */
#define PCI_BAR_PREFETCH_FLG 0x8u /* BAR bit 3: prefetchable */

#define PCI_MAX_BARS       6 /* type 0; a type-1 header has 2 */
#define PCI_MAX_CFG_HOOKS  8 /* device-owned config ranges per function */
#define PCI_BAR_UNMAPPED   UINT64_MAX
#define PCI_IO_SPACE_SIZE  0x10000u /* x86 port space: I/O BARs map below it */
#define PCI_INTX_GSI_BASE  16u
#define PCI_INTX_GSI_COUNT 4u
#define PCI_MAX_FUNC_NAME  32

/* ---- INTx routing (pure; the ACPI _PRT is generated from these) ---- */

/*
 * The GSI (I/O APIC input) that INTx pin `pin` (1..4 = INTA#..INTD#) of
 * device `device` (0..31) on bus 0 drives:
 *
 *     GSI = 16 + ((device + pin - 1) mod 4)
 *
 * i.e. PIRQA..D are wired to I/O APIC inputs 16..19 and each slot rotates
 * its pins by its device number, the classic PC swizzle (SeaBIOS's PIIX
 * routing picks the same PIRQ: (pin - 1 + device) & 3). Examples:
 * 0.3 INTA -> 19, 0.4 INTA -> 16, 0.4 INTB -> 17, 0.7 INTD -> 18.
 *
 * The single source of truth for INTx: the topology wires functions with
 * it and the ACPI tables describe the same mapping. Devices behind bridges
 * are first swizzled up to bus 0 with pci_intx_swizzle(). Returns 0 (never
 * a PCI GSI) when pin is not 1..4. Pure, any thread.
 */
static inline uint32_t pci_intx_gsi(uint8_t device, uint8_t pin)
{
    if (pin < 1 || pin > 4)
        return 0;
    return PCI_INTX_GSI_BASE + ((uint32_t)device + pin - 1u) % 4u;
}

/*
 * The standard PCI-PCI bridge swizzle: the pin on a bridge's primary side
 * that INTx pin `pin` (1..4) of device `device` on its secondary bus comes
 * out on: ((pin - 1 + device) mod 4) + 1. Apply once per bridge on the way
 * to bus 0, with the device number on each secondary bus. Returns 0 when
 * pin is not 1..4. Pure, any thread.
 */
static inline uint8_t pci_intx_swizzle(uint8_t device, uint8_t pin)
{
    if (pin < 1 || pin > 4)
        return 0;
    return (uint8_t)((((unsigned)pin - 1u + device) % 4u) + 1u);
}

/* ---- functions ---- */

struct pci_func;
struct pci_topology;

enum pci_bar_kind {
    PCI_BAR_NONE,  /* unused, or the upper half of a 64-bit BAR */
    PCI_BAR_IO,    /* I/O ports, 32-bit register, decoded below 64 KiB */
    PCI_BAR_MEM32, /* memory below 4 GiB */
    PCI_BAR_MEM64, /* memory anywhere; takes this and the next BAR slot */
};

/*
 * One BAR. `ops`/`opaque` are what the machine maps at the BAR's address;
 * `mapped` is the address the machine was last told about (bar_moved), or
 * PCI_BAR_UNMAPPED. Read-only outside pci.c; guarded by the topology lock.
 */
struct pci_bar {
    enum pci_bar_kind kind;
    bool prefetchable;
    uint64_t size; /* power of two */
    const struct io_ops *ops;
    void *opaque;
    uint64_t mapped;
};

/*
 * A device-owned configuration range. `offset` is the absolute config
 * offset of the access (not relative to the hook) and an access never
 * leaves the range: one that straddles its edge is split into bytes. Both
 * callbacks run on a vCPU thread with the topology lock held, so they must
 * not call pci_topology_* functions; they may use pci_cfg_peek/poke, the
 * pci_cfg_default_* helpers and pci_set_irq. A NULL read falls back to the
 * default (stored bytes); a NULL write to the default (masked store).
 */
struct pci_cfg_ops {
    uint32_t (*read)(void *opaque, struct pci_func *f, uint16_t offset, unsigned size);
    void (*write)(void *opaque, struct pci_func *f, uint16_t offset, unsigned size, uint32_t value);
};

struct pci_cfg_hook {
    uint16_t offset, len;
    const struct pci_cfg_ops *ops;
    void *opaque;
};

/*
 * One PCI function. Embed it in the device's state, pci_func_init() it,
 * describe it with the setup functions, then pci_topology_add() it.
 *
 * Invariants: cfg bytes at or past cfg_size are never read or written;
 * `reset_cfg` is the guest-visible state at pci_topology_add() time and
 * pci_topology_reset() returns to it; a MEM64 BAR at index i leaves
 * bars[i + 1].kind == PCI_BAR_NONE and owns that register; `topo` is set
 * once, by pci_topology_add().
 */
struct pci_func {
    char name[PCI_MAX_FUNC_NAME]; /* for guest_error logs */
    uint16_t cfg_size;            /* PCI_CFG_SIZE or PCI_CFG_SIZE_EXT */
    uint8_t nbars;                /* 6 for type 0, 2 for type 1 */
    uint8_t cfg[PCI_CFG_SIZE_EXT];
    uint8_t wmask[PCI_CFG_SIZE_EXT];
    uint8_t w1cmask[PCI_CFG_SIZE_EXT];
    uint8_t reset_cfg[PCI_CFG_SIZE_EXT];
    struct pci_bar bars[PCI_MAX_BARS];
    struct pci_cfg_hook hooks[PCI_MAX_CFG_HOOKS];
    unsigned nhooks;
    uint16_t cap_last; /* offset of the last capability, 0 if none */
    uint16_t cap_free; /* where the next capability goes */

    /* Called after pci_topology_reset() restored cfg (topology lock held). */
    void (*on_reset)(struct pci_func *f);

    /* Bridges (pci_bridge_init): the logical bus behind this function. */
    bool is_bridge;
    uint8_t downstream_bus;
    struct pci_func *next_bridge; /* bridges on the same bus (topology) */

    /* Set by pci_topology_add(). */
    struct pci_topology *topo;
    struct pci_path path; /* logical */
    struct irq_line intx;

    /* INTx state, under topo->intx_lock. */
    bool intx_level;    /* what the device asks for */
    bool intx_disabled; /* COMMAND.INTX_DISABLE */
    bool intx_asserted; /* what the line carries */

    atomic_bool bus_master; /* mirror of COMMAND.BUS_MASTER */
};

/*
 * Initialises f as an empty function with the given header type
 * (PCI_HEADER_TYPE_NORMAL or _BRIDGE): IDs 0xffff/0, no BARs, no
 * capabilities, 256-byte config, the standard write masks (command,
 * status W1C bits, cache line size, interrupt line). `name` is copied
 * (truncated) for logs. Setup thread.
 */
void pci_func_init(struct pci_func *f, const char *name, uint8_t header_type);

/* Sets vendor and device ID. Setup thread. */
void pci_func_set_ids(struct pci_func *f, uint16_t vendor, uint16_t device);
/* Sets the 24-bit class code (class << 16 | subclass << 8 | prog-if). */
void pci_func_set_class(struct pci_func *f, uint32_t class_code);
void pci_func_set_revision(struct pci_func *f, uint8_t revision);
/* Subsystem vendor/ID (type-0 header only: -EINVAL on a bridge). */
int pci_func_set_subsystem(struct pci_func *f, uint16_t vendor, uint16_t id);
/*
 * INTx pin: 0 (none) or 1..4 (INTA#..INTD#); -EINVAL otherwise, -EBUSY
 * once the function is in a topology (the pin decides its GSI).
 */
int pci_func_set_intx_pin(struct pci_func *f, uint8_t pin);
/*
 * Sets or clears the multifunction bit. The topology also sets it on
 * function 0 whenever another function shares its device number.
 */
void pci_func_set_multifunction(struct pci_func *f, bool on);
/* Gives the function 4096 bytes of config space (offsets 0x100+ via ECAM). */
void pci_func_enable_extended(struct pci_func *f);

/*
 * Declares BAR idx: kind IO (4 B .. 64 KiB), MEM32 (16 B .. 2 GiB) or MEM64
 * (16 B .. 2^63, uses idx and idx + 1); size a power of two; prefetchable
 * only for memory BARs. `ops`/`opaque` are handed to the machine through
 * bar_moved. The register starts at address 0 (unmapped).
 * -EINVAL on bad arguments or an index outside the header's BARs,
 * -EEXIST if a slot is already in use, -EBUSY after pci_topology_add().
 */
int pci_set_bar(struct pci_func *f, unsigned idx, enum pci_bar_kind kind, uint64_t size,
                bool prefetchable, const struct io_ops *ops, void *opaque);

/*
 * The address BAR idx's register holds now (flag bits removed), whether or
 * not decoding is enabled; 0 for an unused BAR. Topology lock or setup.
 */
uint64_t pci_bar_address(const struct pci_func *f, unsigned idx);

/*
 * Appends a capability of `len` bytes (including the 2-byte ID/next
 * header) to the list, dword-aligned in 0x40..0xff, writes its ID, links it
 * from the previous one (or from the capability pointer) and sets
 * STATUS.CAP_LIST. The body is read-only and zero until the device fills it
 * (pci_cfg_poke) or gives it masks or a hook. Returns the capability's
 * offset; -EINVAL if len < 2, -ENOSPC when it does not fit, -EBUSY after
 * pci_topology_add().
 */
int pci_add_capability(struct pci_func *f, uint8_t id, unsigned len);

/*
 * Hands config bytes [offset, offset + len) to ops (see struct
 * pci_cfg_ops). The range must lie in 0x40..cfg_size-1 (the standard
 * header belongs to the core) and not overlap another hook.
 * -EINVAL, -EEXIST (overlap), -E2BIG (more than PCI_MAX_CFG_HOOKS), -EBUSY.
 */
int pci_add_cfg_hook(struct pci_func *f, uint16_t offset, uint16_t len,
                     const struct pci_cfg_ops *ops, void *opaque);

/*
 * Raw access to stored config bytes, little-endian, size 1, 2 or 4,
 * ignoring masks and hooks; out-of-range accesses are dropped (peek
 * returns 0). Setup thread, or inside a cfg hook of f.
 */
void pci_cfg_poke(struct pci_func *f, uint16_t offset, unsigned size, uint32_t value);
uint32_t pci_cfg_peek(const struct pci_func *f, uint16_t offset, unsigned size);
/* Sets the guest write mask and write-1-to-clear mask of a register. */
void pci_cfg_set_mask(struct pci_func *f, uint16_t offset, unsigned size, uint32_t wmask,
                      uint32_t w1cmask);

/*
 * What a guest access would do without hooks: the stored bytes (plus the
 * dynamic STATUS.INTX bit), and a store through wmask/w1cmask. For cfg
 * hooks that add side effects to ordinary registers. Topology lock held.
 */
uint32_t pci_cfg_default_read(struct pci_func *f, uint16_t offset, unsigned size);
void pci_cfg_default_write(struct pci_func *f, uint16_t offset, unsigned size, uint32_t value);

/*
 * Sets the level the function drives on its INTx pin. The pin is asserted
 * when level is true and COMMAND.INTX_DISABLE is clear; STATUS.INTX shows
 * `level` regardless. Functions sharing a GSI are wired-OR. A function
 * without a pin only records the level. Any thread once the function is
 * in a topology (before that, the setup thread only), including from
 * inside a cfg hook or a BAR access.
 */
void pci_set_irq(struct pci_func *f, bool level);

/* COMMAND.BUS_MASTER as the guest last wrote it: gate DMA on it. Any thread. */
bool pci_func_bus_master(const struct pci_func *f);

/*
 * Live migration of one function's configuration space
 * (PCI_FUNC_STATE_VERSION): cfg_size, the config bytes, and the INTx level
 * the device drives. The target function was built from the same spec, so
 * pci_func_load accepts a byte only where it differs from the target's
 * own value in guest-writable (wmask), write-1-to-clear or device-owned
 * (cfg hook) bits: IDs, class, header type, BAR flags and the capability
 * list must be identical, else -EINVAL (nothing changed). Loading applies
 * the new COMMAND (bus mastering, INTx disable) and BAR addresses at once:
 * bar_moved reports the new mappings. -EPROTO for another version. State
 * driver, vCPUs paused; takes the topology lock (not from a cfg hook).
 * Device state behind hooks (MSI-X) travels with the device's payload.
 */
#define PCI_FUNC_STATE_VERSION 1
int pci_func_save(const struct pci_func *f, struct mig_out *o);
int pci_func_load(struct pci_func *f, struct mig_in *in, uint32_t version);

/* ---- topology ---- */

/*
 * What the topology tells the machine. bar_moved runs whenever a BAR's
 * effective mapping changes: its address is written while decoding is on,
 * or COMMAND.IO/MEM toggles, or a reset turns decoding off. old_addr is
 * where the BAR was mapped (PCI_BAR_UNMAPPED if nowhere), new_addr where
 * it is mapped now (PCI_BAR_UNMAPPED if nowhere), and enabled ==
 * (new_addr != PCI_BAR_UNMAPPED). The machine unmaps old_addr and maps
 * f->bars[bar] (kind, size, ops, opaque) at new_addr.
 *
 * A BAR is mapped when its command bit is set, its address is not 0 and
 * the range ends inside its space (I/O: 64 KiB, MEM32: 4 GiB, MEM64: no
 * wrap). Addresses a guest writes during BAR sizing with decoding on are
 * mapped like any other; the machine resolves overlaps.
 *
 * Runs on a vCPU thread (or the state driver, for reset) with the
 * topology lock held: it must not call back into the topology.
 */
struct pci_topology_hooks {
    void *ctx;
    void (*bar_moved)(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                      uint64_t new_addr, bool enabled);
};

struct pci_bus {
    struct pci_func *slots[32][8];
    struct pci_func *bridges;  /* list through next_bridge, device order */
    struct pci_func *upstream; /* the bridge whose downstream bus this is */
};

/*
 * A PCI hierarchy: logical bus 0 and one logical bus per bridge added.
 * Does not own the functions, which must outlive it.
 */
struct pci_topology {
    pthread_mutex_t lock;       /* config state of every function */
    pthread_mutex_t intx_lock;  /* INTx state; taken after `lock`, never before */
    struct pci_bus *buses[256]; /* by logical number; NULL if absent */
    struct pci_topology_hooks hooks;
    const struct irq_sink *intx_out; /* the machine's interrupt sink */
    struct irq_sink intx_sink;       /* wired-OR in front of intx_out */
    unsigned intx_count[PCI_INTX_GSI_COUNT];
};

/*
 * Initialises an empty topology with bus 0. `hooks` (copied; may be NULL)
 * receive BAR moves; `intx` (may be NULL, must outlive the topology)
 * receives INTx levels on GSIs 16..19. 0 or -ENOMEM. Setup thread.
 */
int pci_topology_init(struct pci_topology *t, const struct pci_topology_hooks *hooks,
                      const struct irq_sink *intx);
/* Frees the buses (not the functions). Accepts a zeroed struct. */
void pci_topology_destroy(struct pci_topology *t);

/*
 * Puts f at the logical path p. A bridge (pci_bridge_init) also creates
 * its downstream logical bus. Wires INTx to pci_intx_gsi() of the pin
 * swizzled up to bus 0, sets the multifunction bit on function 0 of a
 * device with several functions, and snapshots f's config as its reset
 * state. -EINVAL (device > 31, function > 7, f already added),
 * -ENOENT (no such logical bus), -EEXIST (path taken, or the bridge's
 * downstream bus exists already), -ENOMEM. Setup thread.
 */
int pci_topology_add(struct pci_topology *t, const struct pci_path *p, struct pci_func *f);

/*
 * The function at a logical path, or NULL. Any thread, but not from inside
 * a cfg hook or bar_moved (they run under the lock this takes).
 */
struct pci_func *pci_topology_get(struct pci_topology *t, const struct pci_path *p);

/*
 * The function a configuration cycle to (bus, dev, fn) reaches through
 * the bridges' programmed bus numbers, or NULL. Threads as for
 * pci_topology_get(); the answer may be stale once it returns (for tests
 * and diagnostics).
 */
struct pci_func *pci_topology_lookup(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn);

/*
 * A configuration read/write as the host bridge issues it: routed bus
 * number, device, function, register offset (0..4095), size 1, 2 or 4,
 * naturally aligned. Reads of absent functions, of offsets past the
 * function's config space and of malformed accesses return all ones (of
 * `size` bytes); such writes are dropped; malformed ones are logged as
 * guest errors. vCPU thread.
 */
uint32_t pci_topology_cfg_read(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn,
                               uint32_t offset, unsigned size);
void pci_topology_cfg_write(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn,
                            uint32_t offset, unsigned size, uint32_t value);

/*
 * Returns every function to its reset state (pci_topology_add snapshot):
 * decoding off (bar_moved reports the unmaps), bridges unprogrammed,
 * INTx disable cleared; then runs each function's on_reset. Device cores
 * reset their own state separately. State driver, vCPUs stopped.
 */
void pci_topology_reset(struct pci_topology *t);

/*
 * Makes every function's config effective after its bytes were loaded
 * (migration): BARs are mapped where the config says (bar_moved reports
 * each change) and the COMMAND mirrors (bus master, INTx disable) are
 * refreshed. State driver, vCPUs stopped.
 */
void pci_topology_remap_all(struct pci_topology *t);

#endif
