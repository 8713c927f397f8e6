/* SPDX-License-Identifier: MPL-2.0 */
/*
 * An NVMe controller (NVM Express Base 1.4) with one namespace backed by a
 * block backend: the `nvme_disk` spec component.
 *
 * Guest view. PCI 1b36:0010 (the ID QEMU uses for its emulated NVMe
 * controller, so guests and their drivers already know it; drivers bind by
 * class 01:08:02 anyway), subsystem 1af4:1100, INTA. BAR0 (64-bit, 16 KiB):
 * controller registers at 0, doorbells from 0x1000 (stride 4), the MSI-X
 * table at 0x2000 and its PBA at 0x3000. One MSI-X vector per completion
 * queue (NVME_MAX_IO_QUEUES + 1 for the admin queue); without MSI-X, INTx
 * (masked by INTMS/INTMC). Page size 4 KiB only, PRPs only (no SGLs),
 * MDTS 512 KiB, queues up to NVME_MAX_QUEUE_ENTRIES entries, physically
 * contiguous (CAP.CQR). Identify strings (serial, model, firmware) are
 * padded with the spec's string_pad byte (0x20 per NVMe, 0 for legacy
 * Propolis specs).
 *
 * Processing. A submission doorbell write (vCPU thread) fetches and decodes
 * the new entries inline: admin commands complete there; I/O is handed to
 * the block backend, whose completion callback (any thread) posts the
 * completion entry. With shadow doorbells (below) an I/O submission queue
 * is processed by whoever kicks it: nvme_kick from the machine's I/O thread
 * (an ioeventfd), or a doorbell write that still exits. A command is
 * fetched only when its completion queue has room for it counting the
 * commands already in flight, so a completion queue never overflows: a full
 * queue holds submissions until the guest frees entries with the completion
 * head doorbell, which resumes them. CC.EN 1 -> 0 waits for in-flight
 * requests and deletes every queue. Entries are fetched only while
 * COMMAND.BUS_MASTER is set (a doorbell written without it records the
 * tail; the next one resumes); completions of requests already at the
 * backend are still posted.
 *
 * Everything the guest writes (registers, queue entries, PRP lists, data
 * ranges) is untrusted: each guest address goes through guest_mem_ptr() and
 * each count is capped; a bad command completes with an error status and a
 * bad doorbell write is ignored and reported through an Asynchronous Event
 * when the guest has one outstanding. Nothing a guest does fails cella.
 *
 * Shadow doorbells (Doorbell Buffer Config, NVMe 1.3 §5.7 and §7.13;
 * Identify OACS bit 8). The guest gives two page-aligned pages of its RAM:
 * the shadow doorbells, where it writes every I/O SQ tail and CQ head it
 * would write to a doorbell (slot 2*qid for SQ qid, 2*qid + 1 for CQ qid,
 * 4 bytes each, CAP.DSTRD 0), and the EventIdx page, where the controller
 * writes the value past which the guest must also ring the real doorbell
 * (Linux: nvme_dbbuf_update_and_check_event). Only I/O queues use them:
 * the admin queue keeps its register doorbells, as Linux and SPDK drive it
 * (the spec also covers the admin queue; such a host would have to ring
 * the admin doorbells anyway). With the buffers set:
 *  - an I/O SQ's tail is read from its shadow slot whenever the queue is
 *    kicked; a tail doorbell write is only a kick (its value is not used,
 *    as an ioeventfd loses it). When the controller has consumed every
 *    entry it writes the tail to the SQ's EventIdx, then (full barrier)
 *    reads the shadow again and goes on if it moved, so a submission the
 *    guest made without ringing, because it still saw the old EventIdx,
 *    is never missed;
 *  - an I/O CQ's head is read from its shadow slot when the controller
 *    needs room it does not see; EventIdx is set to the head (with the same
 *    barrier and re-read) only when the controller must hear of the next
 *    head update: a submission waits for room, or INTx is asserted. So a
 *    guest with MSI-X rings no CQ doorbell in the common case;
 *  - every I/O SQ tail doorbell is offered to the machine to back with an
 *    ioeventfd (nvme_hooks.doorbell_backing); the I/O thread then calls
 *    nvme_kick. A queue that still has entries after one pass of its size
 *    asks for another kick (nvme_hooks.kick_later) rather than holding the
 *    lock.
 * A shadow value out of range is ignored (logged). The buffers are cleared
 * by a controller reset, and queues created while they are set use them.
 *
 * Locks: `lock` serialises register accesses and submission processing
 * (vCPU threads, and the I/O thread through nvme_kick); `cq_lock` (taken
 * after `lock`; only the INTx and MSI-X locks nest inside it) guards
 * completion queue state and is what backend completion callbacks take. The
 * backend is never called with `cq_lock` held, and MSI-X messages are sent
 * without it (a backend completing inline sends them under `lock`, which
 * the MSI-X BAR path never takes).
 */
#ifndef CELLA_DEVICES_NVME_H
#define CELLA_DEVICES_NVME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/block.h"
#include "common/mig_buf.h"
#include "devices/io.h"
#include "devices/msix.h"
#include "devices/pci.h"
#include "machine/guest_mem.h"
#include "spec/spec.h"

#define NVME_PCI_VENDOR        0x1b36
#define NVME_PCI_DEVICE        0x0010
#define NVME_PCI_SUBSYS_VENDOR 0x1af4
#define NVME_PCI_SUBSYS_ID     0x1100
#define NVME_PCI_CLASS         0x010802 /* mass storage, NVM, NVMe */

#define NVME_MAX_IO_QUEUES     32u   /* I/O SQs and CQs each; ids 1..32 */
#define NVME_MAX_QUEUE_ENTRIES 1024u /* CAP.MQES + 1 */
#define NVME_MDTS              7u    /* 2^7 pages: 512 KiB per command */
#define NVME_PAGE_SIZE         4096u
#define NVME_MAX_XFER          (NVME_PAGE_SIZE << NVME_MDTS)
#define NVME_AER_LIMIT         4u /* outstanding Asynchronous Event Requests */

#define NVME_BAR_SIZE      0x4000u
#define NVME_DOORBELL_BASE 0x1000u
#define NVME_MSIX_TABLE    0x2000u
#define NVME_MSIX_PBA      0x3000u
#define NVME_MSIX_VECTORS  (NVME_MAX_IO_QUEUES + 1u)

/* Controller registers (offsets in BAR0). */
#define NVME_REG_CAP   0x00
#define NVME_REG_VS    0x08
#define NVME_REG_INTMS 0x0c
#define NVME_REG_INTMC 0x10
#define NVME_REG_CC    0x14
#define NVME_REG_CSTS  0x1c
#define NVME_REG_NSSR  0x20
#define NVME_REG_AQA   0x24
#define NVME_REG_ASQ   0x28
#define NVME_REG_ACQ   0x30

#define NVME_CC_EN          0x1u
#define NVME_CC_SHN_MASK    (3u << 14)
#define NVME_CSTS_RDY       0x1u
#define NVME_CSTS_CFS       0x2u
#define NVME_CSTS_SHST_MASK (3u << 2)
#define NVME_CSTS_SHST_DONE (2u << 2)

struct nvme_sq;
struct nvme_cq;

/*
 * What the machine gives the controller to move I/O submission doorbells
 * off the vCPU threads (all optional; nvme_set_hooks). Both callbacks run
 * with the controller's `lock` held and must not call back into it.
 */
struct nvme_hooks {
    void *ctx;
    /*
     * SQ qid's tail now comes from the shadow doorbell (on: the machine
     * may back the doorbell with an ioeventfd and call nvme_kick when it
     * fires) or from doorbell writes again (off: remove the ioeventfd, the
     * write's value matters). vCPU thread (admin commands, CC writes) or
     * state driver (reset, load, destroy).
     */
    void (*doorbell_backing)(void *ctx, uint16_t qid, bool on);
    /* SQ qid still has entries after a bounded pass: call nvme_kick(qid)
     * again soon, from another context. Any thread that processes SQs. */
    void (*kick_later)(void *ctx, uint16_t qid);
};

/* A doorbell the machine may back with a KVM ioeventfd (see nvme_hooks). */
struct nvme_doorbell {
    unsigned bar;    /* BAR index (0) */
    uint64_t offset; /* inside the BAR */
    unsigned width;  /* access size in bytes the driver uses */
    uint16_t qid;    /* the I/O SQ whose tail doorbell it is: pass to nvme_kick */
};

/*
 * The controller. Embeds its PCI function (nvme_pci_func) and MSI-X state.
 * Fields are private to nvme.c; the struct is public only so the machine
 * can embed it.
 */
struct nvme_disk {
    struct pci_func func;
    struct msix msix;
    char name[PCI_MAX_FUNC_NAME];
    struct blk_backend *blk;
    const struct guest_mem *mem;

    /* Identity and namespace geometry, fixed at init. */
    uint8_t serial[SPEC_NVME_SERIAL_LEN];
    uint8_t string_pad;
    uint32_t lba_shift; /* log2(block size) */
    uint64_t nsze;      /* namespace size in blocks */

    pthread_mutex_t lock; /* registers, queue tables, submission processing */
    uint32_t cc, csts, aqa, intms;
    uint64_t asq, acq;
    struct nvme_sq *sq[NVME_MAX_IO_QUEUES + 1];
    struct nvme_cq *cq[NVME_MAX_IO_QUEUES + 1];

    /* Features (lock). */
    uint32_t feat_arbitration, feat_temp_thresh, feat_err_recovery, feat_irq_coalesce;
    uint32_t feat_async_cfg, feat_wan;
    uint32_t feat_irq_cfg[NVME_MSIX_VECTORS]; /* coalescing disable bit per vector */

    /* Asynchronous events (lock): held AER command ids, pending events. */
    uint16_t aer_cid[NVME_AER_LIMIT];
    unsigned naer;
    uint32_t aen_pending;  /* bit n: error event with info n waiting */
    bool aen_error_masked; /* until the error log is read */
    bool paused;           /* nvme_quiesce: nothing fetched until nvme_resume (lock) */

    /* Doorbell Buffer Config: offered; set, the two pages (both locks to change). */
    bool dbbuf_offer; /* Identify OACS bit 8; setup only */
    bool dbbuf_on;
    uint64_t dbs_gpa, eis_gpa;
    uint8_t *dbs, *eis;
    struct nvme_hooks hooks; /* setup only */

    pthread_mutex_t cq_lock; /* completion queue state; see above */
    pthread_cond_t idle;     /* inflight reached 0 */
    unsigned io_inflight;    /* commands at the backend (cq_lock) */
    bool intx_level;         /* what we drive on INTx (cq_lock) */
    atomic_bool wce;         /* volatile write cache enabled */

    /* SMART counters. */
    atomic_uint_least64_t blocks_read, blocks_written, reads, writes;
};

/*
 * Builds the controller as PCI function `name` (copied, for logs) from the
 * spec: its serial number and string_pad, on backend `blk` (block size a
 * power of two, 512..65536; not owned), DMA through `mem`, MSI-X messages
 * to `msi`. All three must outlive the controller. Setup thread; the
 * caller then adds nvme_pci_func(n) to the PCI topology. Returns 0 or
 * -EINVAL (bad block size or arguments).
 */
int nvme_init(struct nvme_disk *n, const char *name, const struct c_nvme_disk *spec,
              struct blk_backend *blk, const struct guest_mem *mem, const struct irq_sink *msi);

/* Waits for in-flight requests and frees the queues. Accepts a zeroed n, or one
 * whose nvme_init failed. */
void nvme_destroy(struct nvme_disk *n);

/* The PCI function to add to the topology. */
struct pci_func *nvme_pci_func(struct nvme_disk *n);

/* Installs the machine's hooks (copied; h may be NULL). Setup thread, before the guest runs. */
void nvme_set_hooks(struct nvme_disk *n, const struct nvme_hooks *h);

/*
 * Whether Identify offers Doorbell Buffer Config (OACS bit 8) and the
 * command is accepted; on by default. Setup thread, before the guest runs.
 */
void nvme_set_dbbuf(struct nvme_disk *n, bool offer);

/* Fills up to max doorbells (one per I/O SQ); returns how many exist. */
unsigned nvme_doorbells(const struct nvme_disk *n, struct nvme_doorbell *out, unsigned max);

/*
 * Logs the controller's state (debug dump, cella-standalone SIGUSR2): per
 * queue pair the heads, tails, phase and interrupt vector. Any thread.
 */
void nvme_debug(struct nvme_disk *n);

/*
 * SQ qid was kicked (its ioeventfd fired, or kick_later): processes it
 * from its shadow tail, exactly as a write to its tail doorbell would.
 * Ignored unless the controller is ready and the queue uses a shadow
 * doorbell. I/O thread (any thread).
 */
void nvme_kick(struct nvme_disk *n, uint16_t qid);

/*
 * Back to power-on state: waits for in-flight requests, deletes queues,
 * clears registers, features and MSI-X. State driver (vCPUs stopped); also
 * run from the function's on_reset by pci_topology_reset().
 */
void nvme_reset(struct nvme_disk *n);

/* ---- live migration ---- */

/*
 * Payload versions: 2 appends, only while the shadow doorbells are set,
 * their two page addresses (u64 each); without them its bytes are those
 * of version 1, which nvme_load still reads (a version-1 payload never
 * carries them).
 */
#define NVME_STATE_VERSION 2

/*
 * Stops fetching commands (doorbells still record tails and heads) and
 * waits until no request is at the backend; afterwards the controller
 * writes no guest RAM. Idempotent. State driver; may sleep.
 */
void nvme_quiesce(struct nvme_disk *n);

/*
 * Undoes nvme_quiesce (and starts a controller loaded by nvme_load):
 * processes what every submission queue holds and a pending event.
 */
void nvme_resume(struct nvme_disk *n);

/*
 * Appends the controller's state: registers (CC, CSTS, AQA, ASQ, ACQ,
 * INTMS), every SQ and CQ (id, ring address, size, head, tail, phase,
 * CQ id, vector, interrupt enable), features, held AER command ids and
 * pending events, SMART counters, MSI-X, the namespace geometry, and
 * the shadow doorbell pages when set (NVME_STATE_VERSION above).
 * -EBUSY unless quiesced with nothing in flight; -ENOMEM if the writer
 * failed. The PCI config space is a payload of its own (pci_func_save).
 */
int nvme_save(const struct nvme_disk *n, struct mig_out *o);
/*
 * The same in payload `version` (1..NVME_STATE_VERSION) for a target that
 * reads no newer: -EPROTO when the guest uses shadow doorbells and version
 * 1 cannot carry them (that guest cannot move to such a target).
 */
int nvme_save_version(const struct nvme_disk *n, struct mig_out *o, uint32_t version);

/*
 * Loads a payload (untrusted) into a controller built from the same spec:
 * every value is validated (register reserved bits, CSTS consistent with
 * CC and the admin queues, queue ids unique and in range, sizes within
 * limits, rings page-aligned and inside guest RAM, heads and tails below
 * the size, SQs pointing at existing CQs, vectors < nvec, feature values
 * in range, at most NVME_AER_LIMIT held AERs, same namespace geometry,
 * shadow doorbell pages page-aligned, inside guest RAM and only on a
 * ready controller that offers them) and the whole input must be
 * consumed. The controller is left quiesced: nvme_resume starts it (and
 * reads every shadow tail). Versions 1 and 2: -EPROTO for another,
 * -EINVAL for bad data (the controller is then back at power-on state).
 * State driver.
 */
int nvme_load(struct nvme_disk *n, struct mig_in *in, uint32_t version);

/* BAR0 accesses (what nvme_init registers as the BAR's io_ops). vCPU thread. */
uint64_t nvme_bar_read(void *opaque, uint64_t offset, unsigned size);
void nvme_bar_write(void *opaque, uint64_t offset, unsigned size, uint64_t value);

#endif
