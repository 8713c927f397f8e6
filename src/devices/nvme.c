/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/nvme.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "common/le.h"
#include "common/log.h"
#include "devices/dma_dirty.h"

/*
 * Written from the NVM Express Base Specification 1.4. Section numbers
 * below refer to it (Doorbell Buffer Config: 1.3's §5.7 and §7.13).
 *
 * Lock rules (see nvme.h): `lock` is taken first, `cq_lock` second. The
 * queue tables n->sq[] and n->cq[] change only with both held, so either
 * one is enough to read them. A queue's fields fixed at creation (ring,
 * size, ids, its SQ's cq pointer) are read without locks. cq_lock guards
 * every completion queue's head, tail, phase and reservations, INTMS, the
 * INTx level and io_inflight. The shadow doorbell state (n->dbs, n->eis,
 * their addresses, dbbuf_on and each queue's `shadow`) also changes only
 * with both held: submission processing reads it under `lock`, completion
 * posting under `cq_lock`. The MSI-X lock is taken after either of ours
 * and never before, so notifying under `lock` (a backend that completes
 * inline) cannot deadlock; we still notify with cq_lock released.
 */

/* ---- wire constants ---- */

#define NVME_SQE_SIZE 64u
#define NVME_CQE_SIZE 16u
#define PAGE_MASK     ((uint64_t)NVME_PAGE_SIZE - 1)
#define NVME_MAX_IOV  (NVME_MAX_XFER / NVME_PAGE_SIZE + 1u)
#define NSID_ALL      0xffffffffu

#define NVME_VERSION 0x00010400u /* 1.4.0 */
#define NVME_CAP_TO  30u         /* CAP.TO in 500 ms units: 15 s to become ready */
#define NVME_CAP                                                                                   \
    ((uint64_t)(NVME_MAX_QUEUE_ENTRIES - 1) | 1ull << 16 /* CQR */ | (uint64_t)NVME_CAP_TO << 24 | \
     1ull << 37 /* CSS: NVM command set */)
#define NVME_CC_WRITABLE 0x00fffff1u /* EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES */

/* Admin opcodes (§5). */
#define ADM_DELETE_SQ    0x00
#define ADM_CREATE_SQ    0x01
#define ADM_GET_LOG_PAGE 0x02
#define ADM_DELETE_CQ    0x04
#define ADM_CREATE_CQ    0x05
#define ADM_IDENTIFY     0x06
#define ADM_ABORT        0x08
#define ADM_SET_FEATURES 0x09
#define ADM_GET_FEATURES 0x0a
#define ADM_ASYNC_EVENT  0x0c
#define ADM_DBBUF        0x7c /* Doorbell Buffer Config (1.3 §5.7) */

/* NVM opcodes (NVM command set §6). */
#define NVM_FLUSH        0x00
#define NVM_WRITE        0x01
#define NVM_READ         0x02
#define NVM_WRITE_ZEROES 0x08
#define NVM_DSM          0x09

/* Feature identifiers (§5.21.1). */
#define FEAT_ARBITRATION   0x01
#define FEAT_POWER_MGMT    0x02
#define FEAT_TEMP_THRESH   0x04
#define FEAT_ERR_RECOVERY  0x05
#define FEAT_VWC           0x06
#define FEAT_NUM_QUEUES    0x07
#define FEAT_IRQ_COALESCE  0x08
#define FEAT_IRQ_CONFIG    0x09
#define FEAT_WRITE_ATOMIC  0x0a
#define FEAT_ASYNC_EVENT   0x0b
#define FEAT_TEMP_DEFAULT  0x0157u /* 343 K warning threshold, as WCTEMP */
#define FEAT_DEFAULT_ARBIT 0u

/* Log pages (§5.14.1). */
#define LOG_ERROR    0x01
#define LOG_SMART    0x02
#define LOG_FW_SLOT  0x03
#define LOG_ERR_SIZE 64u
#define LOG_PG_SIZE  512u

/* Status: SC in bits 7:0, SCT in 10:8, DNR bit 14 (§4.6.1). */
#define ST_SUCCESS          0x000u
#define ST_INVALID_OPCODE   0x001u
#define ST_INVALID_FIELD    0x002u
#define ST_DATA_XFER_ERROR  0x004u
#define ST_INTERNAL_ERROR   0x006u
#define ST_INVALID_NS       0x00bu
#define ST_PRP_OFFSET       0x013u
#define ST_WRITE_PROTECTED  0x020u
#define ST_LBA_RANGE        0x080u
#define ST_CQ_INVALID       0x100u
#define ST_INVALID_QID      0x101u
#define ST_INVALID_QSIZE    0x102u
#define ST_AER_LIMIT        0x105u
#define ST_INVALID_VECTOR   0x108u
#define ST_INVALID_LOG_PAGE 0x109u
#define ST_INVALID_QDEL     0x10cu
#define ST_NOT_SAVEABLE     0x10du
#define ST_WRITE_FAULT      0x280u
#define ST_READ_ERROR       0x281u
#define ST_DNR              0x4000u

/* Asynchronous event information for error events (§5.2). */
#define AEI_BAD_DB_REG   0x00
#define AEI_BAD_DB_VALUE 0x01

/* Byte offsets of a queue's slots in the shadow doorbell and EventIdx pages (CAP.DSTRD 0). */
#define SQ_SLOT(qid) (8u * (qid))
#define CQ_SLOT(qid) (8u * (qid) + 4u)

static const char MODEL[] = "cella NVMe disk";
static const char FIRMWARE[] = "1.0";

/* ---- queues ---- */

/*
 * A completion queue. `used` entries are posted and not yet consumed by
 * the guest ((tail - head) mod size); `reserved` commands are fetched and
 * will post one entry each. used + reserved <= size - 1 always holds, so
 * posting never overwrites an unconsumed entry.
 */
struct nvme_cq {
    uint16_t qid, vector;
    bool ien;
    uint32_t size;
    uint8_t *ring;
    uint64_t gpa; /* of the ring: dirty marks, migration */
    unsigned nsq; /* SQs posting here (lock) */
    bool shadow;  /* head from the shadow doorbell (both locks to change) */
    /* cq_lock: */
    uint32_t head, tail, reserved;
    bool phase;
};

/* A submission queue; head advances as commands are fetched (lock). */
struct nvme_sq {
    uint16_t qid;
    uint32_t size;
    uint8_t *ring;
    uint64_t gpa; /* of the ring: migration */
    struct nvme_cq *cq;
    bool shadow;           /* tail from the shadow doorbell (both locks to change) */
    uint32_t tail;         /* the last one written or read from the shadow (lock) */
    _Atomic uint32_t head; /* read by completions on other threads */
};

/* One fetched I/O command that went to the backend. */
struct nvme_io {
    struct nvme_disk *n;
    struct nvme_sq *sq;
    uint16_t cid;
    uint8_t opc;
    bool flush_after; /* FUA or write cache off: flush once the write is done */
    atomic_uint parts;
    atomic_int err;
    uint64_t nblocks;
    struct blk_req *reqs; /* `one`, or an array for Dataset Management */
    unsigned nreqs;
    struct blk_req one;
    struct iovec iov[NVME_MAX_IOV];
};

/* A submission queue entry, copied out of guest memory before use. */
struct nvme_cmd {
    uint8_t opc, flags;
    uint16_t cid;
    uint32_t nsid;
    uint64_t prp1, prp2;
    uint32_t cdw10, cdw11, cdw12, cdw13;
};

static void cmd_decode(struct nvme_cmd *c, const uint8_t *e)
{
    c->opc = e[0];
    c->flags = e[1];
    c->cid = le16(e + 2);
    c->nsid = le32(e + 4);
    c->prp1 = le64(e + 24);
    c->prp2 = le64(e + 32);
    c->cdw10 = le32(e + 40);
    c->cdw11 = le32(e + 44);
    c->cdw12 = le32(e + 48);
    c->cdw13 = le32(e + 52);
}

/* ---- shadow doorbells and EventIdx (1.3 §7.13) ---- */

/*
 * A queue's shadow doorbell as the guest last wrote it. Acquire: the
 * entries the guest wrote before it are read after it. Either lock held
 * (the pages do not change under it).
 */
static uint32_t db_read(const struct nvme_disk *n, unsigned slot)
{
    uint32_t raw =
        __atomic_load_n((const uint32_t *)(const void *)(n->dbs + slot), __ATOMIC_ACQUIRE);
    return le32((const uint8_t *)&raw);
}

static void page_put(const struct nvme_disk *n, uint8_t *page, uint64_t gpa, unsigned slot,
                     uint32_t v)
{
    uint8_t le[4];
    uint32_t raw;
    put32(le, v);
    memcpy(&raw, le, 4);
    __atomic_store_n((uint32_t *)(void *)(page + slot), raw, __ATOMIC_RELEASE);
    guest_mem_dirty(n->mem, gpa + slot, 4);
}

static void db_write(const struct nvme_disk *n, unsigned slot, uint32_t v)
{
    page_put(n, n->dbs, n->dbs_gpa, slot, v);
}

static void ei_write(const struct nvme_disk *n, unsigned slot, uint32_t v)
{
    page_put(n, n->eis, n->eis_gpa, slot, v);
}

/*
 * The other half of the guest's "write the shadow, full barrier, read
 * EventIdx" (Linux nvme_dbbuf_update_and_check_event): our EventIdx store
 * is ordered before our next shadow load, so either the guest sees the new
 * EventIdx and rings, or we see its new shadow value.
 */
static void ei_fence(void)
{
    atomic_thread_fence(memory_order_seq_cst);
}

/* ---- interrupts and completion posting ---- */

/* Entries posted and not consumed. cq_lock held. */
static uint32_t cq_used(const struct nvme_cq *cq)
{
    return (cq->tail + cq->size - cq->head) % cq->size;
}

static bool cq_has_room(const struct nvme_cq *cq)
{
    return cq_used(cq) + cq->reserved < cq->size - 1;
}

/* Whether a new CQ head lies between the old head and the tail. cq_lock held. */
static bool cq_head_ok(const struct nvme_cq *cq, uint32_t v)
{
    return v < cq->size && (v + cq->size - cq->head) % cq->size <= cq_used(cq);
}

/*
 * Takes cq's head from its shadow doorbell; a value outside [head, tail]
 * is ignored. Returns whether the head moved. cq_lock held.
 */
static bool cq_shadow_head(struct nvme_disk *n, struct nvme_cq *cq)
{
    uint32_t v = db_read(n, CQ_SLOT(cq->qid));
    if (v == cq->head)
        return false;
    if (!cq_head_ok(cq, v)) {
        guest_error(n->name, "bad CQ %u shadow head %u", cq->qid, v);
        return false;
    }
    cq->head = v;
    return true;
}

/*
 * Makes the guest ring cq's head doorbell at its next head update:
 * EventIdx = head, barrier, and the shadow again; if the guest moved the
 * head meanwhile (it may have checked the old EventIdx), take it and
 * repeat. Each round moves the head towards the tail, so this ends.
 * Returns whether the head moved. cq_lock held, cq->shadow.
 */
static bool cq_arm(struct nvme_disk *n, struct nvme_cq *cq)
{
    bool moved = cq_shadow_head(n, cq);
    for (uint32_t i = 0; i < cq->size; i++) {
        ei_write(n, CQ_SLOT(cq->qid), cq->head);
        ei_fence();
        if (!cq_shadow_head(n, cq))
            break;
        moved = true;
    }
    return moved;
}

/*
 * Drives INTx from the completion queues: asserted while an interrupt
 * enabled CQ holds unconsumed entries, MSI-X is off and INTMS bit 0 (the
 * only pin-based vector) is clear. cq_lock held.
 */
static bool intx_wanted(struct nvme_disk *n)
{
    bool level = false;
    if (!(n->intms & 1u) && !msix_enabled(&n->msix)) {
        for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES && !level; q++) {
            const struct nvme_cq *cq = n->cq[q];
            level = cq && cq->ien && cq->head != cq->tail;
        }
    }
    return level;
}

/*
 * While INTx is asserted, a CQ whose head comes from a shadow doorbell
 * must have the guest ring as it consumes, or the level never drops.
 * Returns whether a head moved. A head taken here frees room the guest
 * will not ring about (it saw the new EventIdx), so a submission that
 * waited for room would wait for ever: every I/O SQ is kicked again
 * (kick_later; a queue with nothing to do ignores it). cq_lock held.
 */
static bool intx_arm(struct nvme_disk *n)
{
    bool moved = false;
    for (unsigned q = 1; q <= NVME_MAX_IO_QUEUES; q++) {
        struct nvme_cq *cq = n->cq[q];
        if (cq && cq->shadow && cq->ien && cq->head != cq->tail)
            moved |= cq_arm(n, cq);
    }
    if (moved && n->hooks.kick_later)
        for (uint16_t q = 1; q <= NVME_MAX_IO_QUEUES; q++)
            n->hooks.kick_later(n->hooks.ctx, q);
    return moved;
}

static void intx_update(struct nvme_disk *n)
{
    bool level = intx_wanted(n);
    if (level && intx_arm(n))
        level = intx_wanted(n);
    if (level != n->intx_level) {
        n->intx_level = level;
        pci_set_irq(&n->func, level);
    }
}

/* Writes one entry at the tail, phase tag last. cq_lock held, room checked. */
static void cq_write(struct nvme_disk *n, struct nvme_cq *cq, uint16_t sqid, uint32_t sqhd,
                     uint16_t cid, uint16_t status, uint32_t dw0)
{
    uint8_t *e = cq->ring + (size_t)cq->tail * NVME_CQE_SIZE;
    put32(e, dw0);
    put32(e + 4, 0);
    put32(e + 8, (sqhd & 0xffffu) | (uint32_t)sqid << 16);
    uint32_t dw3 = cid | (uint32_t)cq->phase << 16 | (uint32_t)(status & 0x7fffu) << 17;
    uint8_t le[4];
    put32(le, dw3);
    uint32_t raw;
    memcpy(&raw, le, 4);
    /* The guest polls the phase bit: the rest of the entry must be visible first. */
    __atomic_store_n((uint32_t *)(void *)(e + 12), raw, __ATOMIC_RELEASE);
    guest_mem_dirty(n->mem, cq->gpa + (uint64_t)cq->tail * NVME_CQE_SIZE, NVME_CQE_SIZE);
    if (++cq->tail == cq->size) {
        cq->tail = 0;
        cq->phase = !cq->phase;
    }
}

/* Sends a CQ's MSI-X message. No cq_lock held. */
static void msi_signal(struct nvme_disk *n, bool ien, uint16_t vector)
{
    if (ien && msix_enabled(&n->msix))
        msix_notify(&n->msix, vector);
}

/*
 * Completes a fetched command of sq: releases its reservation, posts the
 * entry and raises the interrupt. Any thread.
 */
static void complete(struct nvme_disk *n, struct nvme_sq *sq, uint16_t cid, uint16_t status,
                     uint32_t dw0)
{
    struct nvme_cq *cq = sq->cq;
    pthread_mutex_lock(&n->cq_lock);
    cq->reserved--;
    cq_write(n, cq, sq->qid, atomic_load(&sq->head), cid, status, dw0);
    intx_update(n);
    bool ien = cq->ien;
    uint16_t vector = cq->vector;
    pthread_mutex_unlock(&n->cq_lock);
    msi_signal(n, ien, vector);
}

/*
 * Reserves a completion slot for a command about to be fetched. A CQ
 * with a shadow head that looks full may not be: the guest consumes
 * without ringing. Then it is read, and if still full, armed so the
 * guest rings when it frees room (that doorbell resumes the SQs).
 */
static bool cq_reserve(struct nvme_disk *n, struct nvme_cq *cq)
{
    pthread_mutex_lock(&n->cq_lock);
    bool ok = cq_has_room(cq);
    if (!ok && cq->shadow) {
        bool moved = cq_shadow_head(n, cq);
        if (!cq_has_room(cq))
            moved |= cq_arm(n, cq);
        if (moved)
            intx_update(n);
        ok = cq_has_room(cq);
    }
    if (ok)
        cq->reserved++;
    pthread_mutex_unlock(&n->cq_lock);
    return ok;
}

/* ---- asynchronous events ---- */

/*
 * Completes a held Asynchronous Event Request for the lowest pending error
 * event when there is one, the error type is not masked and the admin CQ
 * has room (an AER holds no reservation). Reading the error log unmasks.
 * lock held.
 */
static void aer_try_complete(struct nvme_disk *n)
{
    struct nvme_sq *asq = n->sq[0];
    if (!asq || n->paused || n->aen_error_masked || !n->aen_pending || !n->naer)
        return;
    struct nvme_cq *cq = asq->cq;
    pthread_mutex_lock(&n->cq_lock);
    if (!cq_has_room(cq)) {
        pthread_mutex_unlock(&n->cq_lock);
        return;
    }
    unsigned aei = (unsigned)__builtin_ctz(n->aen_pending);
    n->aen_pending &= ~(1u << aei);
    n->aen_error_masked = true;
    uint16_t cid = n->aer_cid[--n->naer];
    /* AET 0 (error status), the event, and the log page to read (error). */
    cq_write(n, cq, 0, atomic_load(&asq->head), cid, ST_SUCCESS, aei << 8 | LOG_ERROR << 16);
    intx_update(n);
    bool ien = cq->ien;
    uint16_t vector = cq->vector;
    pthread_mutex_unlock(&n->cq_lock);
    msi_signal(n, ien, vector);
}

static void aen_raise(struct nvme_disk *n, unsigned aei)
{
    n->aen_pending |= 1u << aei;
    aer_try_complete(n);
}

/* ---- DMA: PRPs (§4.3) ---- */

struct prp_map {
    struct iovec *iov;
    unsigned cnt, max;
};

static uint16_t map_add(struct nvme_disk *n, struct prp_map *m, uint64_t gpa, uint64_t len)
{
    uint8_t *p = guest_mem_ptr(n->mem, gpa, len);
    if (!p) {
        guest_error(n->name, "PRP 0x%llx+%llu outside RAM", (unsigned long long)gpa,
                    (unsigned long long)len);
        return ST_DATA_XFER_ERROR;
    }
    if (m->cnt && (uint8_t *)m->iov[m->cnt - 1].iov_base + m->iov[m->cnt - 1].iov_len == p) {
        m->iov[m->cnt - 1].iov_len += len;
        return ST_SUCCESS;
    }
    if (m->cnt == m->max)
        return ST_INVALID_FIELD; /* cannot happen within MDTS; belt and braces */
    m->iov[m->cnt].iov_base = p;
    m->iov[m->cnt].iov_len = len;
    m->cnt++;
    return ST_SUCCESS;
}

/*
 * Walks a PRP list from `list` for `rem` bytes of whole pages. The last
 * slot of a list page chains to the next page when more than one page is
 * still to come; every entry and chain pointer must be page aligned, which
 * bounds the walk to MDTS pages plus a chain every 511 of them.
 */
static uint16_t prp_walk_list(struct nvme_disk *n, struct prp_map *m, uint64_t list, uint64_t rem)
{
    for (unsigned chains = 0; rem > 0; chains++) {
        if (chains > NVME_MAX_IOV)
            return ST_INVALID_FIELD;
        unsigned slots = (unsigned)((NVME_PAGE_SIZE - (list & PAGE_MASK)) / 8);
        const uint8_t *ents = guest_mem_ptr(n->mem, list, (uint64_t)slots * 8);
        if (!ents) {
            guest_error(n->name, "PRP list 0x%llx outside RAM", (unsigned long long)list);
            return ST_DATA_XFER_ERROR;
        }
        uint64_t next = 0;
        for (unsigned i = 0; i < slots && rem > 0; i++) {
            uint64_t e = le64(ents + 8 * i);
            if (e & PAGE_MASK)
                return ST_PRP_OFFSET;
            if (i == slots - 1 && rem > NVME_PAGE_SIZE) {
                next = e;
                break;
            }
            uint64_t chunk = rem < NVME_PAGE_SIZE ? rem : NVME_PAGE_SIZE;
            uint16_t st = map_add(n, m, e, chunk);
            if (st)
                return st;
            rem -= chunk;
        }
        list = next;
    }
    return ST_SUCCESS;
}

/*
 * Maps a `len`-byte transfer described by PRP1/PRP2 to host iovecs (at
 * most NVME_MAX_IOV). Returns ST_SUCCESS or the status to complete with.
 */
static uint16_t prp_map(struct nvme_disk *n, uint64_t prp1, uint64_t prp2, uint64_t len,
                        struct iovec *iov, unsigned *cnt)
{
    struct prp_map m = {iov, 0, NVME_MAX_IOV};
    *cnt = 0;
    if (len == 0)
        return ST_SUCCESS;
    if (len > NVME_MAX_XFER)
        return ST_INVALID_FIELD;
    if (prp1 & 3)
        return ST_PRP_OFFSET;
    uint64_t first = NVME_PAGE_SIZE - (prp1 & PAGE_MASK);
    if (first > len)
        first = len;
    uint16_t st = map_add(n, &m, prp1, first);
    uint64_t rem = len - first;
    if (st == ST_SUCCESS && rem > 0) {
        if (rem <= NVME_PAGE_SIZE) {
            st = (prp2 & PAGE_MASK) ? ST_PRP_OFFSET : map_add(n, &m, prp2, rem);
        } else {
            st = (prp2 & 7) ? ST_PRP_OFFSET : prp_walk_list(n, &m, prp2, rem);
        }
    }
    *cnt = m.cnt;
    return st;
}

/* Copies `len` bytes of src to the guest buffer, zero-filling up to xfer. */
static uint16_t dma_to_guest(struct nvme_disk *n, const struct nvme_cmd *c, const void *src,
                             size_t len, uint64_t xfer)
{
    struct iovec iov[NVME_MAX_IOV];
    unsigned cnt;
    uint16_t st = prp_map(n, c->prp1, c->prp2, xfer, iov, &cnt);
    if (st)
        return st;
    const uint8_t *s = src;
    for (unsigned i = 0; i < cnt; i++) {
        size_t k = iov[i].iov_len < len ? iov[i].iov_len : len;
        memcpy(iov[i].iov_base, s, k);
        memset((uint8_t *)iov[i].iov_base + k, 0, iov[i].iov_len - k);
        s += k;
        len -= k;
    }
    dma_dirty_iov(n->mem, iov, cnt, UINT64_MAX);
    return ST_SUCCESS;
}

static uint16_t dma_from_guest(struct nvme_disk *n, const struct nvme_cmd *c, void *dst, size_t len)
{
    struct iovec iov[NVME_MAX_IOV];
    unsigned cnt;
    uint16_t st = prp_map(n, c->prp1, c->prp2, len, iov, &cnt);
    if (st)
        return st;
    uint8_t *d = dst;
    for (unsigned i = 0; i < cnt; i++) {
        memcpy(d, iov[i].iov_base, iov[i].iov_len);
        d += iov[i].iov_len;
    }
    return ST_SUCCESS;
}

/* ---- Identify (§5.15) ---- */

/* Copies str into a fixed field, padded with the spec's pad byte. */
static void put_str(const struct nvme_disk *n, uint8_t *dst, size_t width, const char *str,
                    size_t len)
{
    memset(dst, n->string_pad, width);
    for (size_t i = 0; i < len && i < width && str[i]; i++)
        dst[i] = (uint8_t)str[i];
}

/* The namespace's NGUID, derived from the (unique) serial number. */
static void ns_nguid(const struct nvme_disk *n, uint8_t out[16])
{
    uint64_t h[2] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};
    for (unsigned k = 0; k < 2; k++) {
        for (unsigned i = 0; i < SPEC_NVME_SERIAL_LEN; i++) {
            h[k] ^= n->serial[i] + k;
            h[k] *= 0x100000001b3ull;
        }
        put64(out + 8 * k, h[k]);
    }
}

static void identify_ctrl(const struct nvme_disk *n, uint8_t *d)
{
    const struct blk_info *bi = &n->blk->info;
    put16(d + 0, NVME_PCI_VENDOR);
    put16(d + 2, NVME_PCI_SUBSYS_VENDOR);
    put_str(n, d + 4, 20, (const char *)n->serial, SPEC_NVME_SERIAL_LEN);
    put_str(n, d + 24, 40, MODEL, sizeof(MODEL));
    put_str(n, d + 64, 8, FIRMWARE, sizeof(FIRMWARE));
    d[72] = 6;         /* RAB */
    d[77] = NVME_MDTS; /* MDTS */
    put16(d + 78, 0);  /* CNTLID */
    put32(d + 80, NVME_VERSION);
    d[111] = 1;                        /* CNTRLTYPE: I/O controller */
    d[258] = 3;                        /* ACL: 4 Aborts */
    d[259] = NVME_AER_LIMIT - 1;       /* AERL */
    d[260] = 1u << 1 | 1u;             /* FRMW: 1 slot, read-only */
    d[261] = 1u << 2;                  /* LPA: extended Get Log Page data */
    d[262] = 0;                        /* ELPE: 1 error log entry */
    put16(d + 266, FEAT_TEMP_DEFAULT); /* WCTEMP */
    put16(d + 268, 0x0175);            /* CCTEMP: 373 K */
    d[512] = 0x66;                     /* SQES: 64 bytes */
    d[513] = 0x44;                     /* CQES: 16 bytes */
    put32(d + 516, 1);                 /* NN */
    if (n->dbbuf_offer)
        put16(d + 256, 1u << 8); /* OACS: Doorbell Buffer Config */
    uint16_t oncs = 0;
    if (bi->can_discard)
        oncs |= 1u << 2; /* Dataset Management */
    if (bi->can_write_zeroes)
        oncs |= 1u << 3; /* Write Zeroes */
    put16(d + 520, oncs);
    d[524] = bi->can_flush ? 1 : 0; /* VWC */
    put32(d + 536, 0);              /* SGLS: not supported */
    /* SUBNQN: unique per disk, since guests merge controllers with equal NQNs. */
    static const char hex[] = "0123456789abcdef";
    char nqn[96] = "nqn.2019-10.dev.cella:nvme:";
    size_t k = strlen(nqn);
    for (unsigned i = 0; i < SPEC_NVME_SERIAL_LEN; i++) {
        nqn[k++] = hex[n->serial[i] >> 4];
        nqn[k++] = hex[n->serial[i] & 15];
    }
    memcpy(d + 768, nqn, k); /* NUL padded, as NQNs are */
    put16(d + 2048, 2500);   /* power state 0: 25 W */
}

static void identify_ns(const struct nvme_disk *n, uint8_t *d)
{
    put64(d + 0, n->nsze);  /* NSZE */
    put64(d + 8, n->nsze);  /* NCAP */
    put64(d + 16, n->nsze); /* NUSE */
    d[25] = 0;              /* NLBAF: one format */
    d[26] = 0;              /* FLBAS: format 0 */
    ns_nguid(n, d + 104);
    put32(d + 128, n->lba_shift << 16); /* LBAF0: no metadata, LBADS */
}

static uint16_t admin_identify(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint8_t d[NVME_PAGE_SIZE];
    memset(d, 0, sizeof(d));
    switch (c->cdw10 & 0xff) {
    case 0x00: /* namespace */
        if (c->nsid != 1)
            return ST_INVALID_NS | ST_DNR;
        identify_ns(n, d);
        break;
    case 0x01: /* controller */
        identify_ctrl(n, d);
        break;
    case 0x02: /* active namespace IDs above NSID */
        if (c->nsid >= 0xfffffffeu)
            return ST_INVALID_NS | ST_DNR;
        if (c->nsid < 1)
            put32(d, 1);
        break;
    case 0x03: /* namespace identification descriptors */
        if (c->nsid != 1)
            return ST_INVALID_NS | ST_DNR;
        d[0] = 2;  /* NIDT: NGUID */
        d[1] = 16; /* NIDL */
        ns_nguid(n, d + 4);
        break;
    default:
        return ST_INVALID_FIELD | ST_DNR;
    }
    return dma_to_guest(n, c, d, sizeof(d), sizeof(d));
}

/* ---- Get Log Page (§5.14) ---- */

/* Data units (1000 x 512 bytes, rounded up) for a block count. */
static uint64_t data_units(const struct nvme_disk *n, uint64_t blocks)
{
    uint64_t sectors = blocks << (n->lba_shift - 9);
    return sectors / 1000 + (sectors % 1000 != 0);
}

static uint16_t admin_get_log(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint8_t lid = c->cdw10 & 0xff;
    bool rae = (c->cdw10 >> 15) & 1;
    uint64_t ndw = ((uint64_t)(c->cdw11 & 0xffff) << 16 | c->cdw10 >> 16) + 1;
    uint64_t off = (uint64_t)c->cdw13 << 32 | c->cdw12;
    uint64_t xfer = ndw * 4;
    uint8_t log[LOG_PG_SIZE];
    size_t len;

    memset(log, 0, sizeof(log));
    switch (lid) {
    case LOG_ERROR:
        len = LOG_ERR_SIZE; /* one entry, error count 0: nothing logged */
        break;
    case LOG_SMART:
        len = LOG_PG_SIZE;
        log[0] = n->blk->info.readonly ? 1u << 3 : 0; /* critical warning: read-only */
        put16(log + 1, 0x012f);                       /* composite temperature: 303 K */
        log[3] = 100;                                 /* available spare */
        log[4] = 10;                                  /* spare threshold */
        put64(log + 32, data_units(n, atomic_load(&n->blocks_read)));
        put64(log + 48, data_units(n, atomic_load(&n->blocks_written)));
        put64(log + 64, atomic_load(&n->reads));
        put64(log + 80, atomic_load(&n->writes));
        break;
    case LOG_FW_SLOT:
        len = LOG_PG_SIZE;
        log[0] = 1; /* AFI: slot 1 active */
        put_str(n, log + 8, 8, FIRMWARE, sizeof(FIRMWARE));
        break;
    default:
        return ST_INVALID_LOG_PAGE | ST_DNR;
    }
    if ((off & 3) || off > len || xfer > NVME_MAX_XFER)
        return ST_INVALID_FIELD | ST_DNR;
    uint16_t st = dma_to_guest(n, c, log + off, len - (size_t)off, xfer);
    if (st == ST_SUCCESS && lid == LOG_ERROR && !rae)
        n->aen_error_masked = false; /* admin_cmd delivers what waits, after this */
    return st;
}

/* ---- features (§5.21) ---- */

static void features_default(struct nvme_disk *n)
{
    n->feat_arbitration = FEAT_DEFAULT_ARBIT;
    n->feat_temp_thresh = FEAT_TEMP_DEFAULT;
    n->feat_err_recovery = 0;
    n->feat_irq_coalesce = 0;
    n->feat_async_cfg = 0;
    n->feat_wan = 0;
    memset(n->feat_irq_cfg, 0, sizeof(n->feat_irq_cfg));
    atomic_store(&n->wce, n->blk->info.can_flush);
}

/* A feature's value; `dflt` for the default rather than the current one. */
static uint16_t feature_value(struct nvme_disk *n, uint8_t fid, uint32_t cdw11, bool dflt,
                              uint32_t *dw0)
{
    const uint32_t nq = NVME_MAX_IO_QUEUES - 1;
    switch (fid) {
    case FEAT_ARBITRATION:
        *dw0 = dflt ? FEAT_DEFAULT_ARBIT : n->feat_arbitration;
        return ST_SUCCESS;
    case FEAT_POWER_MGMT:
        *dw0 = 0;
        return ST_SUCCESS;
    case FEAT_TEMP_THRESH:
        *dw0 = dflt ? FEAT_TEMP_DEFAULT : n->feat_temp_thresh;
        return ST_SUCCESS;
    case FEAT_ERR_RECOVERY:
        *dw0 = dflt ? 0 : n->feat_err_recovery;
        return ST_SUCCESS;
    case FEAT_VWC:
        if (!n->blk->info.can_flush)
            return ST_INVALID_FIELD | ST_DNR;
        *dw0 = dflt ? 1 : atomic_load(&n->wce);
        return ST_SUCCESS;
    case FEAT_NUM_QUEUES:
        *dw0 = nq | nq << 16;
        return ST_SUCCESS;
    case FEAT_IRQ_COALESCE:
        *dw0 = dflt ? 0 : n->feat_irq_coalesce;
        return ST_SUCCESS;
    case FEAT_IRQ_CONFIG: {
        uint16_t iv = cdw11 & 0xffff;
        if (iv >= NVME_MSIX_VECTORS)
            return ST_INVALID_FIELD | ST_DNR;
        *dw0 = iv | (dflt ? 0 : n->feat_irq_cfg[iv]) << 16;
        return ST_SUCCESS;
    }
    case FEAT_WRITE_ATOMIC:
        *dw0 = dflt ? 0 : n->feat_wan;
        return ST_SUCCESS;
    case FEAT_ASYNC_EVENT:
        *dw0 = dflt ? 0 : n->feat_async_cfg;
        return ST_SUCCESS;
    default:
        return ST_INVALID_FIELD | ST_DNR;
    }
}

static uint16_t admin_get_features(struct nvme_disk *n, const struct nvme_cmd *c, uint32_t *dw0)
{
    uint8_t fid = c->cdw10 & 0xff;
    unsigned sel = (c->cdw10 >> 8) & 7;
    switch (sel) {
    case 0: /* current */
        return feature_value(n, fid, c->cdw11, false, dw0);
    case 1: /* default */
    case 2: /* saved: nothing is saveable, so the default */
        return feature_value(n, fid, c->cdw11, true, dw0);
    case 3: { /* supported capabilities: changeable, not saveable, per controller */
        uint16_t st = feature_value(n, fid, c->cdw11, true, dw0);
        *dw0 = st ? 0 : 1u << 2;
        return st;
    }
    default:
        return ST_INVALID_FIELD | ST_DNR;
    }
}

static uint16_t admin_set_features(struct nvme_disk *n, const struct nvme_cmd *c, uint32_t *dw0)
{
    uint8_t fid = c->cdw10 & 0xff;
    uint32_t v = c->cdw11;
    if (c->cdw10 >> 31)
        return ST_NOT_SAVEABLE | ST_DNR;
    switch (fid) {
    case FEAT_ARBITRATION:
        n->feat_arbitration = v;
        return ST_SUCCESS;
    case FEAT_POWER_MGMT:
        return (v & 0x1f) == 0 ? ST_SUCCESS : ST_INVALID_FIELD | ST_DNR; /* PS 0 only */
    case FEAT_TEMP_THRESH:
        n->feat_temp_thresh = v & 0xffff;
        return ST_SUCCESS;
    case FEAT_ERR_RECOVERY:
        n->feat_err_recovery = v & 0x1ffff;
        return ST_SUCCESS;
    case FEAT_VWC:
        if (!n->blk->info.can_flush)
            return ST_INVALID_FIELD | ST_DNR;
        atomic_store(&n->wce, v & 1);
        return ST_SUCCESS;
    case FEAT_NUM_QUEUES:
        /* 0's based; 65535 is invalid. We always grant our maximum. */
        if ((v & 0xffff) == 0xffff || (v >> 16) == 0xffff)
            return ST_INVALID_FIELD | ST_DNR;
        return feature_value(n, fid, v, false, dw0);
    case FEAT_IRQ_COALESCE: /* accepted and ignored: every completion interrupts */
        n->feat_irq_coalesce = v & 0xffff;
        return ST_SUCCESS;
    case FEAT_IRQ_CONFIG:
        if ((v & 0xffff) >= NVME_MSIX_VECTORS)
            return ST_INVALID_FIELD | ST_DNR;
        n->feat_irq_cfg[v & 0xffff] = (v >> 16) & 1;
        return ST_SUCCESS;
    case FEAT_WRITE_ATOMIC:
        n->feat_wan = v & 1;
        return ST_SUCCESS;
    case FEAT_ASYNC_EVENT:
        n->feat_async_cfg = v;
        return ST_SUCCESS;
    default:
        return ST_INVALID_FIELD | ST_DNR;
    }
}

/* ---- queue management (§5.3-5.6) ---- */

/* Host pointer to a queue ring of `bytes` at page-aligned `gpa`, or NULL. */
static uint8_t *ring_map(struct nvme_disk *n, uint64_t gpa, uint64_t bytes)
{
    if (gpa & PAGE_MASK)
        return NULL;
    return guest_mem_ptr(n->mem, gpa, bytes);
}

static void cq_install(struct nvme_disk *n, struct nvme_cq *cq)
{
    pthread_mutex_lock(&n->cq_lock);
    n->cq[cq->qid] = cq;
    pthread_mutex_unlock(&n->cq_lock);
}

static void sq_install(struct nvme_disk *n, struct nvme_sq *sq)
{
    pthread_mutex_lock(&n->cq_lock);
    n->sq[sq->qid] = sq;
    sq->cq->nsq++;
    pthread_mutex_unlock(&n->cq_lock);
}

static struct nvme_cq *cq_new(uint16_t qid, uint32_t size, uint8_t *ring, uint64_t gpa, bool ien,
                              uint16_t vector)
{
    struct nvme_cq *cq = calloc(1, sizeof(*cq));
    if (cq)
        *cq = (struct nvme_cq){.qid = qid,
                               .vector = vector,
                               .ien = ien,
                               .size = size,
                               .ring = ring,
                               .gpa = gpa,
                               .phase = true};
    return cq;
}

static struct nvme_sq *sq_new(uint16_t qid, uint32_t size, uint8_t *ring, uint64_t gpa,
                              struct nvme_cq *cq)
{
    struct nvme_sq *sq = calloc(1, sizeof(*sq));
    if (sq) {
        sq->qid = qid;
        sq->size = size;
        sq->ring = ring;
        sq->gpa = gpa;
        sq->cq = cq;
        atomic_init(&sq->head, 0);
    }
    return sq;
}

/*
 * Shadow doorbells for a new or existing I/O queue: from now on its SQ
 * tail or CQ head comes from the shadow page. `publish` writes the
 * controller's value to the shadow slot and EventIdx (the buffers mirror
 * the doorbells, §5.7; Linux has zeroed them and its queues start at 0);
 * a loaded controller does not, as the guest's shadow is newer than the
 * payload. Both locks held, n->dbbuf_on.
 */
static void cq_shadow_on(struct nvme_disk *n, struct nvme_cq *cq, bool publish)
{
    cq->shadow = true;
    if (publish) {
        db_write(n, CQ_SLOT(cq->qid), cq->head);
        ei_write(n, CQ_SLOT(cq->qid), cq->head);
    }
}

static void sq_shadow_on(struct nvme_disk *n, struct nvme_sq *sq, bool publish)
{
    sq->shadow = true;
    if (publish) {
        db_write(n, SQ_SLOT(sq->qid), sq->tail);
        ei_write(n, SQ_SLOT(sq->qid), sq->tail);
    }
}

/* Tells the machine whether SQ qid's doorbell is a shadow one. lock held, cq_lock not. */
static void backing(struct nvme_disk *n, uint16_t qid, bool on)
{
    if (n->hooks.doorbell_backing)
        n->hooks.doorbell_backing(n->hooks.ctx, qid, on);
}

/*
 * Sets the shadow doorbell and EventIdx pages (page-aligned, inside RAM)
 * and moves every I/O queue onto them. lock held.
 */
static void dbbuf_set(struct nvme_disk *n, uint64_t dbs_gpa, uint8_t *dbs, uint64_t eis_gpa,
                      uint8_t *eis, bool publish)
{
    pthread_mutex_lock(&n->cq_lock);
    n->dbbuf_on = true;
    n->dbs_gpa = dbs_gpa;
    n->dbs = dbs;
    n->eis_gpa = eis_gpa;
    n->eis = eis;
    for (unsigned q = 1; q <= NVME_MAX_IO_QUEUES; q++) {
        if (n->cq[q])
            cq_shadow_on(n, n->cq[q], publish);
        if (n->sq[q])
            sq_shadow_on(n, n->sq[q], publish);
    }
    pthread_mutex_unlock(&n->cq_lock);
    for (unsigned q = 1; q <= NVME_MAX_IO_QUEUES; q++) {
        if (n->sq[q])
            backing(n, (uint16_t)q, true);
    }
}

/* Forgets the pages; the queues are gone (queues_clear). lock held. */
static void dbbuf_clear(struct nvme_disk *n)
{
    pthread_mutex_lock(&n->cq_lock);
    n->dbbuf_on = false;
    n->dbs_gpa = n->eis_gpa = 0;
    n->dbs = n->eis = NULL;
    pthread_mutex_unlock(&n->cq_lock);
}

/* Doorbell Buffer Config (1.3 §5.7): PRP1 the shadow doorbells, PRP2 EventIdx. */
static uint16_t admin_dbbuf(struct nvme_disk *n, const struct nvme_cmd *c)
{
    if (!n->dbbuf_offer)
        return ST_INVALID_OPCODE | ST_DNR;
    /* Each a single memory page (CC.MPS: 4 KiB), so page-aligned; and inside RAM. */
    uint8_t *dbs = ring_map(n, c->prp1, NVME_PAGE_SIZE);
    uint8_t *eis = ring_map(n, c->prp2, NVME_PAGE_SIZE);
    if (!dbs || !eis) {
        guest_error(n->name, "doorbell buffers 0x%llx / 0x%llx not page-aligned RAM",
                    (unsigned long long)c->prp1, (unsigned long long)c->prp2);
        return ST_INVALID_FIELD | ST_DNR;
    }
    dbbuf_set(n, c->prp1, dbs, c->prp2, eis, true);
    return ST_SUCCESS;
}

static uint16_t admin_create_cq(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint16_t qid = c->cdw10 & 0xffff;
    uint32_t size = (c->cdw10 >> 16) + 1;
    uint16_t iv = c->cdw11 >> 16;
    bool ien = (c->cdw11 >> 1) & 1;

    if (qid == 0 || qid > NVME_MAX_IO_QUEUES || n->cq[qid])
        return ST_INVALID_QID | ST_DNR;
    if (size < 2 || size > NVME_MAX_QUEUE_ENTRIES)
        return ST_INVALID_QSIZE | ST_DNR;
    if (!(c->cdw11 & 1) || ((n->cc >> 20) & 0xf) != 4) /* CAP.CQR; CC.IOCQES 16 bytes */
        return ST_INVALID_FIELD | ST_DNR;
    if (iv >= NVME_MSIX_VECTORS || (iv != 0 && !msix_enabled(&n->msix)))
        return ST_INVALID_VECTOR | ST_DNR;
    uint8_t *ring = ring_map(n, c->prp1, (uint64_t)size * NVME_CQE_SIZE);
    if (!ring)
        return ST_INVALID_FIELD | ST_DNR;
    struct nvme_cq *cq = cq_new(qid, size, ring, c->prp1, ien, iv);
    if (!cq)
        return ST_INTERNAL_ERROR;
    cq_install(n, cq);
    if (n->dbbuf_on) {
        pthread_mutex_lock(&n->cq_lock);
        cq_shadow_on(n, cq, true);
        pthread_mutex_unlock(&n->cq_lock);
    }
    return ST_SUCCESS;
}

static uint16_t admin_create_sq(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint16_t qid = c->cdw10 & 0xffff;
    uint32_t size = (c->cdw10 >> 16) + 1;
    uint16_t cqid = c->cdw11 >> 16;

    if (qid == 0 || qid > NVME_MAX_IO_QUEUES || n->sq[qid])
        return ST_INVALID_QID | ST_DNR;
    if (cqid == 0 || cqid > NVME_MAX_IO_QUEUES || !n->cq[cqid])
        return ST_CQ_INVALID | ST_DNR;
    if (size < 2 || size > NVME_MAX_QUEUE_ENTRIES)
        return ST_INVALID_QSIZE | ST_DNR;
    if (!(c->cdw11 & 1) || ((n->cc >> 16) & 0xf) != 6) /* CAP.CQR; CC.IOSQES 64 bytes */
        return ST_INVALID_FIELD | ST_DNR;
    uint8_t *ring = ring_map(n, c->prp1, (uint64_t)size * NVME_SQE_SIZE);
    if (!ring)
        return ST_INVALID_FIELD | ST_DNR;
    struct nvme_sq *sq = sq_new(qid, size, ring, c->prp1, n->cq[cqid]);
    if (!sq)
        return ST_INTERNAL_ERROR;
    sq_install(n, sq);
    if (n->dbbuf_on) {
        pthread_mutex_lock(&n->cq_lock);
        sq_shadow_on(n, sq, true);
        pthread_mutex_unlock(&n->cq_lock);
        backing(n, qid, true);
    }
    return ST_SUCCESS;
}

/* Waits until no backend request is in flight. lock held. */
static void drain(struct nvme_disk *n)
{
    blk_drain(n->blk);
    pthread_mutex_lock(&n->cq_lock);
    while (n->io_inflight)
        pthread_cond_wait(&n->idle, &n->cq_lock);
    pthread_mutex_unlock(&n->cq_lock);
}

/* Removes and frees SQ qid after its commands finished. lock held. */
static void sq_delete(struct nvme_disk *n, uint16_t qid)
{
    struct nvme_sq *sq = n->sq[qid];
    bool shadow = sq->shadow;
    drain(n);
    pthread_mutex_lock(&n->cq_lock);
    n->sq[qid] = NULL;
    sq->cq->nsq--;
    pthread_mutex_unlock(&n->cq_lock);
    free(sq);
    if (shadow)
        backing(n, qid, false);
}

static void cq_delete(struct nvme_disk *n, uint16_t qid)
{
    struct nvme_cq *cq = n->cq[qid];
    pthread_mutex_lock(&n->cq_lock);
    n->cq[qid] = NULL;
    intx_update(n);
    pthread_mutex_unlock(&n->cq_lock);
    free(cq);
}

static uint16_t admin_delete_sq(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint16_t qid = c->cdw10 & 0xffff;
    if (qid == 0 || qid > NVME_MAX_IO_QUEUES || !n->sq[qid])
        return ST_INVALID_QID | ST_DNR;
    sq_delete(n, qid);
    return ST_SUCCESS;
}

static uint16_t admin_delete_cq(struct nvme_disk *n, const struct nvme_cmd *c)
{
    uint16_t qid = c->cdw10 & 0xffff;
    if (qid == 0 || qid > NVME_MAX_IO_QUEUES || !n->cq[qid])
        return ST_INVALID_QID | ST_DNR;
    if (n->cq[qid]->nsq)
        return ST_INVALID_QDEL | ST_DNR;
    cq_delete(n, qid);
    return ST_SUCCESS;
}

/* ---- admin command dispatch ---- */

/* Executes one admin command and completes it (except a held AER). lock held. */
static void admin_cmd(struct nvme_disk *n, struct nvme_sq *sq, const struct nvme_cmd *c)
{
    uint32_t dw0 = 0;
    uint16_t st;

    if (c->flags & 0xc3) { /* fused operations, SGLs */
        complete(n, sq, c->cid, ST_INVALID_FIELD | ST_DNR, 0);
        return;
    }
    switch (c->opc) {
    case ADM_DELETE_SQ:
        st = admin_delete_sq(n, c);
        break;
    case ADM_CREATE_SQ:
        st = admin_create_sq(n, c);
        break;
    case ADM_GET_LOG_PAGE:
        st = admin_get_log(n, c);
        break;
    case ADM_DELETE_CQ:
        st = admin_delete_cq(n, c);
        break;
    case ADM_CREATE_CQ:
        st = admin_create_cq(n, c);
        break;
    case ADM_IDENTIFY:
        st = admin_identify(n, c);
        break;
    case ADM_ABORT:
        st = ST_SUCCESS;
        dw0 = 1; /* not aborted: commands here are either done or at the backend */
        break;
    case ADM_SET_FEATURES:
        st = admin_set_features(n, c, &dw0);
        break;
    case ADM_GET_FEATURES:
        st = admin_get_features(n, c, &dw0);
        break;
    case ADM_DBBUF:
        st = admin_dbbuf(n, c);
        break;
    case ADM_ASYNC_EVENT:
        if (n->naer >= NVME_AER_LIMIT) {
            st = ST_AER_LIMIT | ST_DNR;
            break;
        }
        /* Held: it gives back its completion slot and completes on an event. */
        pthread_mutex_lock(&n->cq_lock);
        sq->cq->reserved--;
        pthread_mutex_unlock(&n->cq_lock);
        n->aer_cid[n->naer++] = c->cid;
        aer_try_complete(n);
        return;
    default:
        st = ST_INVALID_OPCODE | ST_DNR;
        break;
    }
    complete(n, sq, c->cid, st, dw0);
    aer_try_complete(n);
}

/* ---- I/O commands ---- */

static uint16_t io_status(const struct nvme_io *io, int err)
{
    switch (err) {
    case 0:
        return ST_SUCCESS;
    case -EROFS:
        return ST_WRITE_PROTECTED | ST_DNR;
    case -EINVAL:
        return ST_LBA_RANGE | ST_DNR;
    case -EIO:
        if (io->opc == NVM_READ)
            return ST_READ_ERROR;
        if (io->opc == NVM_WRITE || io->opc == NVM_WRITE_ZEROES)
            return ST_WRITE_FAULT;
        return ST_INTERNAL_ERROR;
    default:
        return ST_INTERNAL_ERROR;
    }
}

static void io_req_done(struct blk_req *req, int result);

/* Drops one reference; the last one finishes the command. Any thread. */
static void io_put(struct nvme_io *io)
{
    if (atomic_fetch_sub(&io->parts, 1) != 1)
        return;
    struct nvme_disk *n = io->n;
    int err = atomic_load(&io->err);
    if (!err && io->flush_after) {
        io->flush_after = false;
        atomic_store(&io->parts, 1);
        io->one = (struct blk_req){.op = BLK_FLUSH, .done = io_req_done, .opaque = io};
        blk_submit(n->blk, &io->one);
        return;
    }
    if (!err && io->opc == NVM_READ) {
        atomic_fetch_add(&n->reads, 1);
        atomic_fetch_add(&n->blocks_read, io->nblocks);
    } else if (!err && io->opc == NVM_WRITE) {
        atomic_fetch_add(&n->writes, 1);
        atomic_fetch_add(&n->blocks_written, io->nblocks);
    }
    if (io->opc == NVM_READ) /* even a failed read may have written some */
        dma_dirty_iov(n->mem, io->one.iov, io->one.iovcnt, UINT64_MAX);
    struct nvme_sq *sq = io->sq;
    uint16_t cid = io->cid, st = io_status(io, err);
    if (io->reqs != &io->one)
        free(io->reqs);
    free(io);
    complete(n, sq, cid, st, 0);
    /* Only now may a drain waiting for us free the queues. */
    pthread_mutex_lock(&n->cq_lock);
    if (--n->io_inflight == 0)
        pthread_cond_broadcast(&n->idle);
    pthread_mutex_unlock(&n->cq_lock);
}

static void io_req_done(struct blk_req *req, int result)
{
    struct nvme_io *io = req->opaque;
    int zero = 0;
    if (result < 0)
        atomic_compare_exchange_strong(&io->err, &zero, result);
    io_put(io);
}

/* Hands io's requests to the backend; io owns its completion from here. lock held. */
static void io_submit(struct nvme_disk *n, struct nvme_io *io)
{
    pthread_mutex_lock(&n->cq_lock);
    n->io_inflight++;
    pthread_mutex_unlock(&n->cq_lock);
    atomic_store(&io->parts, io->nreqs + 1);
    for (unsigned i = 0; i < io->nreqs; i++) {
        io->reqs[i].done = io_req_done;
        io->reqs[i].opaque = io;
        blk_submit(n->blk, &io->reqs[i]);
    }
    io_put(io);
}

static struct nvme_io *io_new(struct nvme_disk *n, struct nvme_sq *sq, const struct nvme_cmd *c)
{
    struct nvme_io *io = malloc(sizeof(*io));
    if (!io)
        return NULL;
    io->n = n;
    io->sq = sq;
    io->cid = c->cid;
    io->opc = c->opc;
    io->flush_after = false;
    atomic_init(&io->parts, 0);
    atomic_init(&io->err, 0);
    io->nblocks = 0;
    io->reqs = &io->one;
    io->nreqs = 1;
    io->one = (struct blk_req){0};
    return io;
}

/* Checks [slba, slba + nlb) against the namespace. */
static bool lba_ok(const struct nvme_disk *n, uint64_t slba, uint64_t nlb)
{
    return slba < n->nsze && nlb <= n->nsze - slba;
}

/* Read, Write and Write Zeroes: fills io or returns a status. */
static uint16_t io_rw(struct nvme_disk *n, const struct nvme_cmd *c, struct nvme_io *io)
{
    const struct blk_info *bi = &n->blk->info;
    uint64_t slba = (uint64_t)c->cdw11 << 32 | c->cdw10;
    uint64_t nlb = (uint64_t)(c->cdw12 & 0xffff) + 1;
    bool fua = (c->cdw12 >> 30) & 1;
    bool write = c->opc != NVM_READ;

    if (c->opc == NVM_WRITE_ZEROES && !bi->can_write_zeroes)
        return ST_INVALID_OPCODE | ST_DNR;
    if (c->nsid != 1)
        return ST_INVALID_NS | ST_DNR;
    if (!lba_ok(n, slba, nlb))
        return ST_LBA_RANGE | ST_DNR;
    if (write && bi->readonly)
        return ST_WRITE_PROTECTED | ST_DNR;
    uint64_t len = nlb << n->lba_shift;
    struct blk_req *r = &io->one;
    r->offset = slba << n->lba_shift;
    r->len = len;
    io->nblocks = nlb;
    io->flush_after = write && bi->can_flush && (fua || !atomic_load(&n->wce));
    if (c->opc == NVM_WRITE_ZEROES) {
        r->op = BLK_WRITE_ZEROES;
        return ST_SUCCESS;
    }
    if (len > NVME_MAX_XFER || len > BLK_MAX_REQ_LEN)
        return ST_INVALID_FIELD | ST_DNR;
    unsigned cnt;
    uint16_t st = prp_map(n, c->prp1, c->prp2, len, io->iov, &cnt);
    if (st)
        return st;
    r->op = write ? BLK_WRITE : BLK_READ;
    r->iov = io->iov;
    r->iovcnt = cnt;
    return ST_SUCCESS;
}

/* Dataset Management: one discard per non-empty range when AD is set. */
static uint16_t io_dsm(struct nvme_disk *n, const struct nvme_cmd *c, struct nvme_io *io)
{
    const struct blk_info *bi = &n->blk->info;
    unsigned nr = (c->cdw10 & 0xff) + 1;
    uint8_t ranges[256 * 16];

    if (!bi->can_discard)
        return ST_INVALID_OPCODE | ST_DNR;
    if (c->nsid != 1)
        return ST_INVALID_NS | ST_DNR;
    io->nreqs = 0;
    if (!(c->cdw11 & 4)) /* only attributes: hints we do not use */
        return ST_SUCCESS;
    if (bi->readonly)
        return ST_WRITE_PROTECTED | ST_DNR;
    uint16_t st = dma_from_guest(n, c, ranges, (size_t)nr * 16);
    if (st)
        return st;
    unsigned used = 0;
    for (unsigned i = 0; i < nr; i++) {
        uint64_t nlb = le32(ranges + 16 * i + 4), slba = le64(ranges + 16 * i + 8);
        if (nlb && !lba_ok(n, slba, nlb))
            return ST_LBA_RANGE | ST_DNR;
        used += nlb != 0;
    }
    if (!used)
        return ST_SUCCESS;
    struct blk_req *reqs = calloc(used, sizeof(*reqs));
    if (!reqs)
        return ST_INTERNAL_ERROR;
    io->reqs = reqs;
    for (unsigned i = 0; i < nr; i++) {
        uint64_t nlb = le32(ranges + 16 * i + 4), slba = le64(ranges + 16 * i + 8);
        if (!nlb)
            continue;
        reqs[io->nreqs++] = (struct blk_req){
            .op = BLK_DISCARD, .offset = slba << n->lba_shift, .len = nlb << n->lba_shift};
    }
    return ST_SUCCESS;
}

/* Executes one I/O command: to the backend, or completed here on error. lock held. */
static void io_cmd(struct nvme_disk *n, struct nvme_sq *sq, const struct nvme_cmd *c)
{
    if (c->flags & 0xc3) { /* fused operations, SGLs */
        complete(n, sq, c->cid, ST_INVALID_FIELD | ST_DNR, 0);
        return;
    }
    struct nvme_io *io = io_new(n, sq, c);
    if (!io) {
        complete(n, sq, c->cid, ST_INTERNAL_ERROR, 0);
        return;
    }
    uint16_t st;
    switch (c->opc) {
    case NVM_READ:
    case NVM_WRITE:
    case NVM_WRITE_ZEROES:
        st = io_rw(n, c, io);
        break;
    case NVM_DSM:
        st = io_dsm(n, c, io);
        break;
    case NVM_FLUSH:
        if (c->nsid != 1 && c->nsid != NSID_ALL)
            st = ST_INVALID_NS | ST_DNR;
        else if (!n->blk->info.can_flush) /* volatile backend: nothing to make durable */
            st = ST_SUCCESS, io->nreqs = 0;
        else
            st = ST_SUCCESS, io->one.op = BLK_FLUSH;
        break;
    default:
        st = ST_INVALID_OPCODE | ST_DNR;
        break;
    }
    if (st) {
        if (io->reqs != &io->one)
            free(io->reqs);
        free(io);
        complete(n, sq, c->cid, st, 0);
        return;
    }
    io_submit(n, io);
}

/* ---- submission processing ---- */

/* Reads sq's tail from its shadow doorbell into *v; false if out of range. lock held. */
static bool sq_shadow_tail(struct nvme_disk *n, const struct nvme_sq *sq, uint32_t *v)
{
    *v = db_read(n, SQ_SLOT(sq->qid));
    if (*v < sq->size)
        return true;
    guest_error(n->name, "bad SQ %u shadow tail %u", sq->qid, *v);
    return false;
}

/*
 * Fetches and executes sq's new entries while its CQ has room; the rest
 * wait for a CQ head doorbell. With a shadow doorbell, the tail is read
 * from it, and once every entry is consumed EventIdx gets that tail and
 * the shadow is read again (§7.13): the guest skips the doorbell when it
 * still saw the older EventIdx, and the second read is what sees its
 * entry then. At most a queue's size of entries per call; past that the
 * queue asks for another kick (a hostile guest cannot keep us here).
 * Needs bus mastering (the guest's permission to DMA). lock held.
 */
static void sq_process(struct nvme_disk *n, struct nvme_sq *sq)
{
    if (!pci_func_bus_master(&n->func) || n->paused)
        return;
    uint32_t budget = sq->size, v;
    if (sq->shadow && sq_shadow_tail(n, sq, &v))
        sq->tail = v;
    for (;;) {
        uint32_t head = atomic_load(&sq->head);
        if (head == sq->tail) {
            if (!sq->shadow)
                return;
            ei_write(n, SQ_SLOT(sq->qid), sq->tail);
            ei_fence();
            if (!sq_shadow_tail(n, sq, &v) || v == sq->tail)
                return;
            sq->tail = v;
            continue;
        }
        if (!budget) {
            if (n->hooks.kick_later)
                n->hooks.kick_later(n->hooks.ctx, sq->qid);
            return;
        }
        if (!cq_reserve(n, sq->cq))
            return;
        budget--;
        struct nvme_cmd c;
        cmd_decode(&c, sq->ring + (size_t)head * NVME_SQE_SIZE);
        atomic_store(&sq->head, (head + 1) % sq->size);
        if (sq->qid == 0)
            admin_cmd(n, sq, &c);
        else
            io_cmd(n, sq, &c);
        if (!(n->csts & NVME_CSTS_RDY) || n->sq[sq->qid] != sq)
            return; /* defensive: the queue went away */
    }
}

/* ---- controller state (§7.6) ---- */

/* Deletes every queue and forgets held AERs. lock held. */
static void queues_clear(struct nvme_disk *n)
{
    drain(n);
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        if (n->sq[q])
            sq_delete(n, (uint16_t)q);
    }
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        if (n->cq[q])
            cq_delete(n, (uint16_t)q);
    }
    n->naer = 0;
    n->aen_pending = 0;
    n->aen_error_masked = false;
    dbbuf_clear(n); /* not retained across a controller reset (§5.7) */
}

/* Controller reset (CC.EN 1 -> 0): AQA, ASQ and ACQ survive. lock held. */
static void ctrl_reset(struct nvme_disk *n)
{
    queues_clear(n);
    n->csts = 0;
    pthread_mutex_lock(&n->cq_lock);
    n->intms = 0;
    intx_update(n);
    pthread_mutex_unlock(&n->cq_lock);
    features_default(n);
}

/* CC.EN 0 -> 1: checks the configuration and creates the admin queues. lock held. */
static void ctrl_enable(struct nvme_disk *n)
{
    uint32_t asqs = (n->aqa & 0xfff) + 1, acqs = ((n->aqa >> 16) & 0xfff) + 1;
    uint8_t *sring = ring_map(n, n->asq, (uint64_t)asqs * NVME_SQE_SIZE);
    uint8_t *cring = ring_map(n, n->acq, (uint64_t)acqs * NVME_CQE_SIZE);
    bool ok = asqs >= 2 && acqs >= 2 && sring && cring && ((n->cc >> 4) & 7) == 0 /* CSS NVM */
              && ((n->cc >> 7) & 0xf) == 0 /* MPS 4 KiB */ && ((n->cc >> 11) & 7) == 0 /* AMS */;
    struct nvme_cq *cq = ok ? cq_new(0, acqs, cring, n->acq, true, 0) : NULL;
    struct nvme_sq *sq = cq ? sq_new(0, asqs, sring, n->asq, cq) : NULL;
    if (!sq) {
        free(cq);
        guest_error(n->name, "enable with bad CC 0x%x / AQA 0x%x / ASQ 0x%llx / ACQ 0x%llx", n->cc,
                    n->aqa, (unsigned long long)n->asq, (unsigned long long)n->acq);
        n->csts |= NVME_CSTS_CFS;
        return;
    }
    cq_install(n, cq);
    sq_install(n, sq);
    n->csts |= NVME_CSTS_RDY;
}

static void cc_write(struct nvme_disk *n, uint32_t v)
{
    uint32_t old = n->cc;
    n->cc = v & NVME_CC_WRITABLE;
    if ((old & NVME_CC_EN) && !(v & NVME_CC_EN))
        ctrl_reset(n);
    else if (!(old & NVME_CC_EN) && (v & NVME_CC_EN))
        ctrl_enable(n);
    if ((v & NVME_CC_SHN_MASK) && !(old & NVME_CC_SHN_MASK)) {
        drain(n); /* everything accepted is now at the backend's durable point */
        n->csts = (n->csts & ~NVME_CSTS_SHST_MASK) | NVME_CSTS_SHST_DONE;
    } else if (!(v & NVME_CC_SHN_MASK) && (old & NVME_CC_SHN_MASK)) {
        n->csts &= ~NVME_CSTS_SHST_MASK;
    }
}

/* ---- doorbells ---- */

static void doorbell(struct nvme_disk *n, unsigned idx, uint32_t v)
{
    unsigned qid = idx / 2;
    if (!(n->csts & NVME_CSTS_RDY)) {
        guest_error(n->name, "doorbell %u written while not ready", idx);
        return;
    }
    if (idx % 2 == 0) {
        struct nvme_sq *sq = qid <= NVME_MAX_IO_QUEUES ? n->sq[qid] : NULL;
        if (sq && sq->shadow) {
            sq_process(n, sq); /* a kick: the tail is in the shadow doorbell */
            return;
        }
        if (!sq || v >= sq->size) {
            guest_error(n->name, "bad SQ %u tail doorbell %u", qid, v);
            aen_raise(n, sq ? AEI_BAD_DB_VALUE : AEI_BAD_DB_REG);
            return;
        }
        sq->tail = v;
        sq_process(n, sq);
        return;
    }
    struct nvme_cq *cq = qid <= NVME_MAX_IO_QUEUES ? n->cq[qid] : NULL;
    bool ok = false;
    if (cq) {
        pthread_mutex_lock(&n->cq_lock);
        ok = cq_head_ok(cq, v);
        if (ok) {
            cq->head = v;
            intx_update(n);
        }
        pthread_mutex_unlock(&n->cq_lock);
    }
    if (!ok) {
        guest_error(n->name, "bad CQ %u head doorbell %u", qid, v);
        aen_raise(n, cq ? AEI_BAD_DB_VALUE : AEI_BAD_DB_REG);
        return;
    }
    /* Room freed: resume submissions held for this CQ, and a pending event. */
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        struct nvme_sq *sq = n->sq[q];
        if (sq && sq->cq == cq && (n->csts & NVME_CSTS_RDY))
            sq_process(n, sq);
    }
    if (qid == 0)
        aer_try_complete(n);
}

/* ---- BAR0 ---- */

static uint64_t ones(unsigned size)
{
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1;
}

static bool in_range(uint64_t off, unsigned size, uint64_t start, uint64_t len)
{
    return off >= start && off - start < len && size <= len - (off - start);
}

static uint64_t reg_read(struct nvme_disk *n, uint64_t off, unsigned size)
{
    uint8_t r[0x40];
    memset(r, 0, sizeof(r));
    pthread_mutex_lock(&n->lock);
    put64(r + NVME_REG_CAP, NVME_CAP);
    put32(r + NVME_REG_VS, NVME_VERSION);
    put32(r + NVME_REG_CC, n->cc);
    put32(r + NVME_REG_CSTS, n->csts);
    put32(r + NVME_REG_AQA, n->aqa);
    put64(r + NVME_REG_ASQ, n->asq);
    put64(r + NVME_REG_ACQ, n->acq);
    pthread_mutex_unlock(&n->lock);
    pthread_mutex_lock(&n->cq_lock);
    put32(r + NVME_REG_INTMS, n->intms);
    put32(r + NVME_REG_INTMC, n->intms);
    pthread_mutex_unlock(&n->cq_lock);
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)r[off + i] << (8 * i);
    return v;
}

uint64_t nvme_bar_read(void *opaque, uint64_t offset, unsigned size)
{
    struct nvme_disk *n = opaque;
    bool sized = size == 1 || size == 2 || size == 4 || size == 8;
    if (sized && offset % size == 0) {
        if (in_range(offset, size, 0, 0x40))
            return reg_read(n, offset, size);
        if (in_range(offset, size, NVME_MSIX_TABLE, msix_table_size(NVME_MSIX_VECTORS)))
            return msix_table_read(&n->msix, offset - NVME_MSIX_TABLE, size);
        if (in_range(offset, size, NVME_MSIX_PBA, msix_pba_size(NVME_MSIX_VECTORS)))
            return msix_pba_read(&n->msix, offset - NVME_MSIX_PBA, size);
        if (offset < NVME_BAR_SIZE)
            return 0; /* reserved registers and doorbells read as zero */
    }
    guest_error(n->name, "bad read at 0x%llx size %u", (unsigned long long)offset, size);
    return ones(size);
}

/* One dword register write. lock held. */
static void reg_write32(struct nvme_disk *n, uint64_t off, uint32_t v)
{
    switch (off) {
    case NVME_REG_INTMS:
    case NVME_REG_INTMC:
        pthread_mutex_lock(&n->cq_lock);
        n->intms = off == NVME_REG_INTMS ? n->intms | v : n->intms & ~v;
        intx_update(n);
        pthread_mutex_unlock(&n->cq_lock);
        break;
    case NVME_REG_CC:
        cc_write(n, v);
        break;
    case NVME_REG_AQA:
        n->aqa = v & 0x0fff0fffu;
        break;
    case NVME_REG_ASQ:
        n->asq = (n->asq & ~0xffffffffull) | (v & ~0xfffu);
        break;
    case NVME_REG_ASQ + 4:
        n->asq = (n->asq & 0xffffffffull) | (uint64_t)v << 32;
        break;
    case NVME_REG_ACQ:
        n->acq = (n->acq & ~0xffffffffull) | (v & ~0xfffu);
        break;
    case NVME_REG_ACQ + 4:
        n->acq = (n->acq & 0xffffffffull) | (uint64_t)v << 32;
        break;
    case NVME_REG_NSSR: /* NVM subsystem reset is not supported (CAP.NSSRS 0) */
    default:
        guest_error(n->name, "write 0x%x to read-only register 0x%llx", v, (unsigned long long)off);
        break;
    }
}

void nvme_bar_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct nvme_disk *n = opaque;
    bool sized = (size == 4 || size == 8) && offset % size == 0;
    uint64_t db_len = 8u * (NVME_MAX_IO_QUEUES + 1);

    if (sized && in_range(offset, size, NVME_MSIX_TABLE, msix_table_size(NVME_MSIX_VECTORS))) {
        msix_table_write(&n->msix, offset - NVME_MSIX_TABLE, size, value);
        return;
    }
    if (sized && in_range(offset, size, 0, 0x40)) {
        pthread_mutex_lock(&n->lock);
        reg_write32(n, offset, (uint32_t)value);
        if (size == 8)
            reg_write32(n, offset + 4, (uint32_t)(value >> 32));
        pthread_mutex_unlock(&n->lock);
        return;
    }
    if (size == 4 && offset % 4 == 0 && in_range(offset, 4, NVME_DOORBELL_BASE, 0x1000)) {
        unsigned idx = (unsigned)((offset - NVME_DOORBELL_BASE) / 4);
        pthread_mutex_lock(&n->lock);
        if (offset - NVME_DOORBELL_BASE < db_len)
            doorbell(n, idx, (uint32_t)value);
        else if (n->csts & NVME_CSTS_RDY)
            aen_raise(n, AEI_BAD_DB_REG);
        pthread_mutex_unlock(&n->lock);
        return;
    }
    guest_error(n->name, "bad write at 0x%llx size %u", (unsigned long long)offset, size);
}

static const struct io_ops bar_ops = {.read = nvme_bar_read, .write = nvme_bar_write};

/* ---- lifecycle ---- */

static void on_pci_reset(struct pci_func *f)
{
    nvme_reset((struct nvme_disk *)((char *)f - offsetof(struct nvme_disk, func)));
}

int nvme_init(struct nvme_disk *n, const char *name, const struct c_nvme_disk *spec,
              struct blk_backend *blk, const struct guest_mem *mem, const struct irq_sink *msi)
{
    if (!n)
        return -EINVAL;
    memset(n, 0, sizeof(*n)); /* so nvme_destroy after a failure is a no-op */
    if (!spec || !blk || !mem)
        return -EINVAL;
    uint32_t bs = blk->info.block_size;
    if (bs < 512 || bs > 65536 || (bs & (bs - 1)))
        return -EINVAL;
    snprintf(n->name, sizeof(n->name), "%s", name ? name : "nvme");
    n->blk = blk;
    memcpy(n->serial, spec->serial_number, SPEC_NVME_SERIAL_LEN);
    /* Bytes after the first NUL are padding, like the strings' tails. */
    for (size_t i = 0, end = 0; i < SPEC_NVME_SERIAL_LEN; i++) {
        end |= n->serial[i] == 0;
        if (end)
            n->serial[i] = spec->string_pad;
    }
    n->string_pad = spec->string_pad;
    n->lba_shift = (uint32_t)__builtin_ctz(bs);
    n->nsze = blk->info.size >> n->lba_shift;

    struct pci_func *f = &n->func;
    pci_func_init(f, n->name, PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(f, NVME_PCI_VENDOR, NVME_PCI_DEVICE);
    pci_func_set_class(f, NVME_PCI_CLASS);
    pci_func_set_subsystem(f, NVME_PCI_SUBSYS_VENDOR, NVME_PCI_SUBSYS_ID);
    pci_func_set_intx_pin(f, 1);
    f->on_reset = on_pci_reset;
    int r = pci_set_bar(f, 0, PCI_BAR_MEM64, NVME_BAR_SIZE, false, &bar_ops, n);
    if (r == 0)
        r = msix_init(&n->msix, f, NVME_MSIX_VECTORS, 0, NVME_MSIX_TABLE, NVME_MSIX_PBA, msi);
    if (r < 0)
        return r;

    n->mem = mem; /* from here on, nvme_destroy has work to do */
    pthread_mutex_init(&n->lock, NULL);
    pthread_mutex_init(&n->cq_lock, NULL);
    pthread_cond_init(&n->idle, NULL);
    atomic_init(&n->wce, false);
    atomic_init(&n->blocks_read, 0);
    atomic_init(&n->blocks_written, 0);
    atomic_init(&n->reads, 0);
    atomic_init(&n->writes, 0);
    features_default(n);
    n->dbbuf_offer = true;
    return 0;
}

struct pci_func *nvme_pci_func(struct nvme_disk *n)
{
    return &n->func;
}

void nvme_set_hooks(struct nvme_disk *n, const struct nvme_hooks *h)
{
    n->hooks = h ? *h : (struct nvme_hooks){0};
}

void nvme_set_dbbuf(struct nvme_disk *n, bool offer)
{
    n->dbbuf_offer = offer;
}

unsigned nvme_doorbells(const struct nvme_disk *n, struct nvme_doorbell *out, unsigned max)
{
    (void)n;
    for (unsigned q = 1; q <= NVME_MAX_IO_QUEUES && q <= max; q++)
        out[q - 1] = (struct nvme_doorbell){
            .bar = 0, .offset = NVME_DOORBELL_BASE + 8u * q, .width = 4, .qid = (uint16_t)q};
    return NVME_MAX_IO_QUEUES;
}

void nvme_kick(struct nvme_disk *n, uint16_t qid)
{
    pthread_mutex_lock(&n->lock);
    struct nvme_sq *sq = qid >= 1 && qid <= NVME_MAX_IO_QUEUES ? n->sq[qid] : NULL;
    /* A kick that raced with a reset or a queue deletion finds nothing. */
    if ((n->csts & NVME_CSTS_RDY) && sq && sq->shadow)
        sq_process(n, sq);
    pthread_mutex_unlock(&n->lock);
}

void nvme_reset(struct nvme_disk *n)
{
    pthread_mutex_lock(&n->lock);
    ctrl_reset(n);
    n->cc = n->aqa = 0;
    n->asq = n->acq = 0;
    pthread_mutex_unlock(&n->lock);
    msix_reset(&n->msix);
}

void nvme_destroy(struct nvme_disk *n)
{
    if (!n || !n->mem)
        return;
    pthread_mutex_lock(&n->lock);
    queues_clear(n);
    pthread_mutex_unlock(&n->lock);
    msix_destroy(&n->msix);
    pthread_cond_destroy(&n->idle);
    pthread_mutex_destroy(&n->cq_lock);
    pthread_mutex_destroy(&n->lock);
    n->mem = NULL;
}

/* ---- live migration ---- */

#define ADMIN_MAX_ENTRIES 4096u /* AQA's 12-bit sizes */

void nvme_quiesce(struct nvme_disk *n)
{
    pthread_mutex_lock(&n->lock);
    n->paused = true;
    drain(n);
    pthread_mutex_unlock(&n->lock);
}

void nvme_resume(struct nvme_disk *n)
{
    pthread_mutex_lock(&n->lock);
    n->paused = false;
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES && (n->csts & NVME_CSTS_RDY); q++) {
        if (n->sq[q])
            sq_process(n, n->sq[q]);
    }
    aer_try_complete(n);
    pthread_mutex_lock(&n->cq_lock);
    intx_update(n); /* an asserted INTx on shadow CQs asks for their doorbells */
    pthread_mutex_unlock(&n->cq_lock);
    pthread_mutex_unlock(&n->lock);
}

static void save_queues(const struct nvme_disk *n, struct mig_out *o)
{
    uint8_t ncq = 0, nsq = 0;
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        ncq += n->cq[q] != NULL;
        nsq += n->sq[q] != NULL;
    }
    mig_put_u8(o, ncq);
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        const struct nvme_cq *cq = n->cq[q];
        if (!cq)
            continue;
        mig_put_u16(o, cq->qid);
        mig_put_u64(o, cq->gpa);
        mig_put_u32(o, cq->size);
        mig_put_u32(o, cq->head);
        mig_put_u32(o, cq->tail);
        mig_put_bool(o, cq->phase);
        mig_put_bool(o, cq->ien);
        mig_put_u16(o, cq->vector);
    }
    mig_put_u8(o, nsq);
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        const struct nvme_sq *sq = n->sq[q];
        if (!sq)
            continue;
        mig_put_u16(o, sq->qid);
        mig_put_u64(o, sq->gpa);
        mig_put_u32(o, sq->size);
        mig_put_u32(o, atomic_load(&sq->head));
        mig_put_u32(o, sq->tail);
        mig_put_u16(o, sq->cq->qid);
    }
}

int nvme_save(const struct nvme_disk *n, struct mig_out *o)
{
    return nvme_save_version(n, o, NVME_STATE_VERSION);
}

int nvme_save_version(const struct nvme_disk *cn, struct mig_out *o, uint32_t version)
{
    struct nvme_disk *n = (struct nvme_disk *)cn; /* for the locks only */
    int rc = 0;
    pthread_mutex_lock(&n->lock);
    pthread_mutex_lock(&n->cq_lock);
    bool busy = !n->paused || n->io_inflight;
    if (version < 2 && n->dbbuf_on) {
        rc = -EPROTO;
        goto out;
    }
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++)
        busy |= n->cq[q] && n->cq[q]->reserved;
    if (busy) {
        rc = -EBUSY;
        goto out;
    }
    mig_put_u32(o, n->cc);
    mig_put_u32(o, n->csts);
    mig_put_u32(o, n->aqa);
    mig_put_u64(o, n->asq);
    mig_put_u64(o, n->acq);
    mig_put_u32(o, n->intms);
    save_queues(n, o);
    mig_put_u32(o, n->feat_arbitration);
    mig_put_u32(o, n->feat_temp_thresh);
    mig_put_u32(o, n->feat_err_recovery);
    mig_put_u32(o, n->feat_irq_coalesce);
    mig_put_u32(o, n->feat_async_cfg);
    mig_put_u32(o, n->feat_wan);
    for (unsigned v = 0; v < NVME_MSIX_VECTORS; v++)
        mig_put_u8(o, (uint8_t)n->feat_irq_cfg[v]);
    mig_put_bool(o, atomic_load(&n->wce));
    mig_put_u8(o, (uint8_t)n->naer);
    for (unsigned i = 0; i < n->naer; i++)
        mig_put_u16(o, n->aer_cid[i]);
    mig_put_u32(o, n->aen_pending);
    mig_put_bool(o, n->aen_error_masked);
    mig_put_u64(o, atomic_load(&n->blocks_read));
    mig_put_u64(o, atomic_load(&n->blocks_written));
    mig_put_u64(o, atomic_load(&n->reads));
    mig_put_u64(o, atomic_load(&n->writes));
    msix_save(&n->msix, o);
    mig_put_u64(o, n->nsze);
    mig_put_u32(o, n->lba_shift);
    if (n->dbbuf_on) { /* version 2 */
        mig_put_u64(o, n->dbs_gpa);
        mig_put_u64(o, n->eis_gpa);
    }
    if (!mig_out_ok(o))
        rc = -ENOMEM;
out:
    pthread_mutex_unlock(&n->cq_lock);
    pthread_mutex_unlock(&n->lock);
    return rc;
}

/* Queues read by nvme_load, installed only once everything checked out. */
struct nvme_staged {
    struct nvme_cq *cq[NVME_MAX_IO_QUEUES + 1];
    struct nvme_sq *sq[NVME_MAX_IO_QUEUES + 1];
};

static void staged_free(struct nvme_staged *st)
{
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        free(st->cq[q]);
        free(st->sq[q]);
    }
    memset(st, 0, sizeof(*st));
}

static bool qsize_ok(uint16_t qid, uint32_t size)
{
    return size >= 2 && size <= (qid == 0 ? ADMIN_MAX_ENTRIES : NVME_MAX_QUEUE_ENTRIES);
}

static int load_cqs(struct nvme_disk *n, struct mig_in *in, struct nvme_staged *st)
{
    uint8_t count = mig_get_u8(in);
    if (count > NVME_MAX_IO_QUEUES + 1)
        return -EINVAL;
    for (unsigned i = 0; i < count; i++) {
        uint16_t qid = mig_get_u16(in);
        uint64_t gpa = mig_get_u64(in);
        uint32_t size = mig_get_u32(in), head = mig_get_u32(in), tail = mig_get_u32(in);
        bool phase = mig_get_bool(in), ien = mig_get_bool(in);
        uint16_t vector = mig_get_u16(in);
        if (!mig_in_ok(in) || qid > NVME_MAX_IO_QUEUES || st->cq[qid] || !qsize_ok(qid, size) ||
            head >= size || tail >= size || vector >= NVME_MSIX_VECTORS ||
            (qid == 0 && (!ien || vector != 0)))
            return -EINVAL;
        uint8_t *ring = ring_map(n, gpa, (uint64_t)size * NVME_CQE_SIZE);
        if (!ring)
            return -EINVAL;
        struct nvme_cq *cq = cq_new(qid, size, ring, gpa, ien, vector);
        if (!cq)
            return -ENOMEM;
        cq->head = head;
        cq->tail = tail;
        cq->phase = phase;
        st->cq[qid] = cq;
    }
    return 0;
}

static int load_sqs(struct nvme_disk *n, struct mig_in *in, struct nvme_staged *st)
{
    uint8_t count = mig_get_u8(in);
    if (count > NVME_MAX_IO_QUEUES + 1)
        return -EINVAL;
    for (unsigned i = 0; i < count; i++) {
        uint16_t qid = mig_get_u16(in);
        uint64_t gpa = mig_get_u64(in);
        uint32_t size = mig_get_u32(in), head = mig_get_u32(in), tail = mig_get_u32(in);
        uint16_t cqid = mig_get_u16(in);
        if (!mig_in_ok(in) || qid > NVME_MAX_IO_QUEUES || st->sq[qid] || !qsize_ok(qid, size) ||
            head >= size || tail >= size || cqid > NVME_MAX_IO_QUEUES || !st->cq[cqid] ||
            (qid == 0) != (cqid == 0))
            return -EINVAL;
        uint8_t *ring = ring_map(n, gpa, (uint64_t)size * NVME_SQE_SIZE);
        if (!ring)
            return -EINVAL;
        struct nvme_sq *sq = sq_new(qid, size, ring, gpa, st->cq[cqid]);
        if (!sq)
            return -ENOMEM;
        atomic_store(&sq->head, head);
        sq->tail = tail;
        st->sq[qid] = sq;
    }
    return 0;
}

/* CSTS as the controller can reach it with this CC and these queues. */
static bool csts_ok(uint32_t cc, uint32_t csts, const struct nvme_staged *st)
{
    bool en = cc & NVME_CC_EN, rdy = csts & NVME_CSTS_RDY, cfs = csts & NVME_CSTS_CFS;
    if ((csts & ~(NVME_CSTS_RDY | NVME_CSTS_CFS | NVME_CSTS_SHST_MASK)) ||
        (csts & NVME_CSTS_SHST_MASK) == NVME_CSTS_SHST_MASK)
        return false;
    if ((rdy || cfs) != en || (rdy && cfs))
        return false;
    bool any = false;
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++)
        any |= st->cq[q] || st->sq[q];
    return rdy ? st->cq[0] && st->sq[0] : !any;
}

/* The shadow doorbell pages a payload carries (version 2). */
struct dbbuf_cfg {
    bool on;
    uint64_t dbs_gpa, eis_gpa;
    uint8_t *dbs, *eis;
};

/*
 * After the geometry: nothing, or (version 2) the two pages, which need a
 * ready controller that offers them. 0 or -EINVAL.
 */
static int load_dbbuf(struct nvme_disk *n, struct mig_in *in, uint32_t version, bool ready,
                      struct dbbuf_cfg *db)
{
    memset(db, 0, sizeof(*db));
    if (version < 2 || mig_in_done(in))
        return 0;
    db->dbs_gpa = mig_get_u64(in);
    db->eis_gpa = mig_get_u64(in);
    if (!mig_in_ok(in) || !ready || !n->dbbuf_offer)
        return -EINVAL;
    db->dbs = ring_map(n, db->dbs_gpa, NVME_PAGE_SIZE);
    db->eis = ring_map(n, db->eis_gpa, NVME_PAGE_SIZE);
    db->on = true;
    return db->dbs && db->eis ? 0 : -EINVAL;
}

/* Everything after the queues. lock held; applied only when valid. */
static int load_rest(struct nvme_disk *n, struct mig_in *in, bool ready, uint32_t version,
                     struct dbbuf_cfg *db)
{
    uint32_t f[6];
    uint8_t irq_cfg[NVME_MSIX_VECTORS];
    uint16_t cids[NVME_AER_LIMIT];
    for (unsigned i = 0; i < 6; i++)
        f[i] = mig_get_u32(in);
    bool ok = f[1] <= 0xffff && f[2] <= 0x1ffff && f[3] <= 0xffff && f[5] <= 1;
    for (unsigned v = 0; v < NVME_MSIX_VECTORS; v++) {
        irq_cfg[v] = mig_get_u8(in);
        ok &= irq_cfg[v] <= 1;
    }
    bool wce = mig_get_bool(in);
    ok &= !wce || n->blk->info.can_flush;
    uint8_t naer = mig_get_u8(in);
    ok &= naer <= NVME_AER_LIMIT && (ready || naer == 0);
    for (unsigned i = 0; ok && i < naer; i++)
        cids[i] = mig_get_u16(in);
    uint32_t aen = mig_get_u32(in);
    bool masked = mig_get_bool(in);
    ok &= aen <= (1u << AEI_BAD_DB_REG | 1u << AEI_BAD_DB_VALUE) && (ready || (!aen && !masked));
    uint64_t ctr[4];
    for (unsigned i = 0; i < 4; i++)
        ctr[i] = mig_get_u64(in);
    if (!ok || !mig_in_ok(in))
        return -EINVAL;
    n->feat_arbitration = f[0];
    n->feat_temp_thresh = f[1];
    n->feat_err_recovery = f[2];
    n->feat_irq_coalesce = f[3];
    n->feat_async_cfg = f[4];
    n->feat_wan = f[5];
    for (unsigned v = 0; v < NVME_MSIX_VECTORS; v++)
        n->feat_irq_cfg[v] = irq_cfg[v];
    atomic_store(&n->wce, wce);
    n->naer = naer;
    memcpy(n->aer_cid, cids, naer * sizeof(cids[0]));
    n->aen_pending = aen;
    n->aen_error_masked = masked;
    atomic_store(&n->blocks_read, ctr[0]);
    atomic_store(&n->blocks_written, ctr[1]);
    atomic_store(&n->reads, ctr[2]);
    atomic_store(&n->writes, ctr[3]);
    if (msix_load(&n->msix, in) < 0)
        return -EINVAL;
    uint64_t nsze = mig_get_u64(in);
    uint32_t lba_shift = mig_get_u32(in);
    if (!mig_in_ok(in) || nsze != n->nsze || lba_shift != n->lba_shift ||
        load_dbbuf(n, in, version, ready, db) < 0 || !mig_in_done(in))
        return -EINVAL;
    return 0;
}

/* Makes staged queues live. lock held; st is emptied. */
static void install_queues(struct nvme_disk *n, struct nvme_staged *st)
{
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        if (st->cq[q])
            cq_install(n, st->cq[q]);
    }
    for (unsigned q = 0; q <= NVME_MAX_IO_QUEUES; q++) {
        if (st->sq[q])
            sq_install(n, st->sq[q]);
    }
    memset(st, 0, sizeof(*st));
}

/* Power-on state, quiesced. lock held. */
static void load_reset(struct nvme_disk *n)
{
    ctrl_reset(n);
    n->cc = n->aqa = 0;
    n->asq = n->acq = 0;
    atomic_store(&n->blocks_read, 0);
    atomic_store(&n->blocks_written, 0);
    atomic_store(&n->reads, 0);
    atomic_store(&n->writes, 0);
    msix_reset(&n->msix);
    n->paused = true;
}

int nvme_load(struct nvme_disk *n, struct mig_in *in, uint32_t version)
{
    if (version < 1 || version > NVME_STATE_VERSION)
        return -EPROTO;
    struct nvme_staged st;
    struct dbbuf_cfg db;
    memset(&st, 0, sizeof(st));
    memset(&db, 0, sizeof(db));
    pthread_mutex_lock(&n->lock);
    load_reset(n);
    uint32_t cc = mig_get_u32(in), csts = mig_get_u32(in), aqa = mig_get_u32(in);
    uint64_t asq = mig_get_u64(in), acq = mig_get_u64(in);
    uint32_t intms = mig_get_u32(in);
    int rc = -EINVAL;
    if (mig_in_ok(in) && !(cc & ~NVME_CC_WRITABLE) && !(aqa & ~0x0fff0fffu) && !(asq & 0xfff) &&
        !(acq & 0xfff))
        rc = load_cqs(n, in, &st);
    if (rc == 0)
        rc = load_sqs(n, in, &st);
    if (rc == 0 && !csts_ok(cc, csts, &st))
        rc = -EINVAL;
    if (rc == 0)
        rc = load_rest(n, in, csts & NVME_CSTS_RDY, version, &db);
    if (rc == 0) {
        n->cc = cc;
        n->csts = csts;
        n->aqa = aqa;
        n->asq = asq;
        n->acq = acq;
        install_queues(n, &st);
        if (db.on) /* the guest's shadow values stay: resume reads them */
            dbbuf_set(n, db.dbs_gpa, db.dbs, db.eis_gpa, db.eis, false);
        pthread_mutex_lock(&n->cq_lock);
        n->intms = intms;
        n->intx_level = intx_wanted(n); /* driven even if we thought it was there */
        pci_set_irq(&n->func, n->intx_level);
        pthread_mutex_unlock(&n->cq_lock);
    } else {
        staged_free(&st);
        mig_in_fail(in);
        load_reset(n);
        rc = rc == -ENOMEM ? rc : -EINVAL;
    }
    pthread_mutex_unlock(&n->lock);
    return rc;
}

void nvme_debug(struct nvme_disk *n)
{
    /* Only trylocks: the dump is for a stuck controller, whose holder may never let go. */
    if (pthread_mutex_trylock(&n->lock) != 0) {
        log_msg(LOG_WARN, "debug", "%s: busy (controller lock held)", n->func.name);
        return;
    }
    if (pthread_mutex_trylock(&n->cq_lock) != 0) {
        pthread_mutex_unlock(&n->lock);
        log_msg(LOG_WARN, "debug", "%s: busy (completion lock held)", n->func.name);
        return;
    }
    log_msg(LOG_WARN, "debug", "%s: in flight %u%s%s msix %s%s", n->func.name, n->io_inflight,
            n->paused ? " paused" : "", n->dbbuf_on ? " shadow doorbells" : "",
            n->msix.enabled ? "on" : "off", n->msix.fmasked ? " (function masked)" : "");
    for (unsigned i = 0; i <= NVME_MAX_IO_QUEUES; i++) {
        const struct nvme_sq *sq = n->sq[i];
        const struct nvme_cq *cq = n->cq[i];
        if (!sq && !cq)
            continue;
        char sqs[96] = "no SQ", cqs[128] = "no CQ";
        if (sq)
            snprintf(sqs, sizeof(sqs), "SQ size %u head %u tail %u%s", sq->size,
                     atomic_load(&sq->head), sq->tail, sq->shadow ? " (shadow)" : "");
        if (cq) {
            unsigned v = cq->vector;
            bool masked = false, pending = false;
            if (pthread_mutex_trylock(&n->msix.lock) == 0) {
                masked = v < n->msix.nvec && (n->msix.table[v].ctrl & 1);
                pending = v < n->msix.nvec && (n->msix.pending[v / 64] >> (v % 64) & 1);
                pthread_mutex_unlock(&n->msix.lock);
            }
            snprintf(cqs, sizeof(cqs), "CQ size %u head %u tail %u phase %d vector %u%s%s%s",
                     cq->size, cq->head, cq->tail, cq->phase, v, cq->ien ? "" : " (no irq)",
                     masked ? " masked" : "", pending ? " PENDING" : "");
        }
        log_msg(LOG_WARN, "debug", "%s: qid %u: %s; %s", n->func.name, i, sqs, cqs);
    }
    pthread_mutex_unlock(&n->cq_lock);
    pthread_mutex_unlock(&n->lock);
}
