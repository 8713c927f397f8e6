/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The NVMe controller core, driven like a guest driver drives it: BAR0
 * registers and doorbells, admin and I/O queues in a plain buffer used as
 * guest RAM, PRPs and PRP lists, a memory disk as the backend, MSI-X and
 * INTx observed through recording sinks. Every rule gets a failing case
 * next to a passing one. Status values are spelled out from the NVMe 1.4
 * specification here rather than taken from nvme.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/le.h"
#include "devices/nvme.h"
#include "nvme_fake_blk.h"

/* Status field values (SCT << 8 | SC), DNR masked off by cmd(). */
#define S_OK             0x000
#define S_BAD_OPCODE     0x001
#define S_BAD_FIELD      0x002
#define S_XFER_ERROR     0x004
#define S_BAD_NS         0x00b
#define S_PRP_OFFSET     0x013
#define S_WRITE_PROT     0x020
#define S_LBA_RANGE      0x080
#define S_CQ_INVALID     0x100
#define S_BAD_QID        0x101
#define S_BAD_QSIZE      0x102
#define S_AER_LIMIT      0x105
#define S_BAD_VECTOR     0x108
#define S_BAD_LOG        0x109
#define S_BAD_QDEL       0x10c
#define S_NOT_SAVEABLE   0x10d
#define S_WRITE_FAULT    0x280
#define S_READ_ERROR     0x281
#define S_INTERNAL_ERROR 0x006
#define S_NONE           0xffff /* no completion arrived */

#define RAM_SIZE   (4u << 20)
#define DISK_SIZE  (1u << 20)
#define ASQ_GPA    0x10000u
#define ACQ_GPA    0x11000u
#define IOSQ_GPA   0x20000u
#define IOCQ_GPA   0x30000u
#define DATA_GPA   0x100000u
#define LIST_GPA   0x200000u
#define DBS_GPA    0x40000u /* shadow doorbells */
#define EIS_GPA    0x41000u /* EventIdx */
#define ADMIN_SIZE 16u

struct queue {
    uint16_t qid;
    uint64_t sq_gpa, cq_gpa;
    uint32_t sq_size, cq_size, sq_tail, cq_head;
    bool phase;
};

struct cqe {
    uint32_t dw0;
    uint16_t sqhd, sqid, cid, status;
};

struct env {
    uint8_t *ram;
    struct guest_mem mem;
    struct fake_blk *blk;
    struct pci_topology topo;
    struct nvme_disk *n;
    struct c_nvme_disk spec;
    struct irq_sink msi_sink, intx_sink;
    struct {
        uint64_t addr;
        uint32_t data;
    } msi[256];
    unsigned nmsi;
    bool intx;
    unsigned intx_edges;
    struct queue aq, ioq;
    uint16_t next_cid;
    /* nvme_hooks, as the machine would see them. */
    bool db_on[NVME_MAX_IO_QUEUES + 1];
    unsigned nbacking, kick_later[NVME_MAX_IO_QUEUES + 1];
    unsigned sq_rings, cq_rings; /* doorbells the shadow driver rang */
};

static void rec_msi(void *ctx, uint64_t addr, uint32_t data)
{
    struct env *e = ctx;
    if (e->nmsi < 256) {
        e->msi[e->nmsi].addr = addr;
        e->msi[e->nmsi].data = data;
    }
    e->nmsi++;
}

static void rec_level(void *ctx, uint32_t gsi, bool level)
{
    struct env *e = ctx;
    e->intx = level;
    e->intx_edges++;
}

/* ---- register and config access ---- */

static uint64_t rd(struct env *e, uint64_t off, unsigned size)
{
    return nvme_bar_read(e->n, off, size);
}

static void wr(struct env *e, uint64_t off, unsigned size, uint64_t v)
{
    nvme_bar_write(e->n, off, size, v);
}

static uint32_t cfg_rd(struct env *e, unsigned off, unsigned size)
{
    return pci_topology_cfg_read(&e->topo, 0, 4, 0, off, size);
}

static void cfg_wr(struct env *e, unsigned off, unsigned size, uint32_t v)
{
    pci_topology_cfg_write(&e->topo, 0, 4, 0, off, size, v);
}

/* ---- fixture ---- */

static void env_build(struct env *e, uint64_t disk_size, uint32_t bs, uint8_t pad)
{
    e->ram = aligned_alloc(4096, RAM_SIZE);
    assert_non_null(e->ram);
    memset(e->ram, 0, RAM_SIZE);
    guest_mem_init_buffer(&e->mem, e->ram, RAM_SIZE);
    e->blk = fake_blk_new(disk_size, bs);
    assert_non_null(e->blk);
    e->blk->ram_lo = e->ram;
    e->blk->ram_hi = e->ram + RAM_SIZE;
    for (uint64_t i = 0; i < disk_size; i++)
        e->blk->disk[i] = (uint8_t)(i * 7 + i / 4096);
    memcpy(e->spec.serial_number, "SN-0001", 7);
    e->spec.string_pad = pad;
    e->msi_sink = (struct irq_sink){.ctx = e, .msi = rec_msi};
    e->intx_sink = (struct irq_sink){.ctx = e, .set_level = rec_level};
    e->n = calloc(1, sizeof(*e->n));
    assert_non_null(e->n);
    assert_int_equal(nvme_init(e->n, "nvme0", &e->spec, &e->blk->b, &e->mem, &e->msi_sink), 0);
    assert_int_equal(pci_topology_init(&e->topo, NULL, &e->intx_sink), 0);
    struct pci_path p = {.bus = 0, .device = 4, .function = 0};
    assert_int_equal(pci_topology_add(&e->topo, &p, nvme_pci_func(e->n)), 0);
    cfg_wr(e, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    e->next_cid = 1;
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    env_build(e, DISK_SIZE, 512, 0x20);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    nvme_destroy(e->n);
    nvme_destroy(e->n); /* twice is harmless */
    pci_topology_destroy(&e->topo);
    assert_int_equal(e->blk->nbad, 0); /* the device never sent a bad request */
    blk_close(&e->blk->b);
    free(e->n);
    free(e->ram);
    free(e);
    return 0;
}

/* ---- a small driver ---- */

static void sqe_init(uint8_t *s, uint8_t opc, uint32_t nsid)
{
    memset(s, 0, 64);
    s[0] = opc;
    put32(s + 4, nsid);
}

static void sqe_set(uint8_t *s, uint64_t prp1, uint64_t prp2, uint32_t c10, uint32_t c11,
                    uint32_t c12)
{
    put64(s + 24, prp1);
    put64(s + 32, prp2);
    put32(s + 40, c10);
    put32(s + 44, c11);
    put32(s + 48, c12);
}

/* Writes one entry at the tail without ringing. Returns its command id. */
static uint16_t sq_put(struct env *e, struct queue *q, uint8_t *s)
{
    uint16_t cid = e->next_cid++;
    put16(s + 2, cid);
    memcpy(e->ram + q->sq_gpa + (uint64_t)q->sq_tail * 64, s, 64);
    q->sq_tail = (q->sq_tail + 1) % q->sq_size;
    return cid;
}

static void sq_ring(struct env *e, struct queue *q)
{
    wr(e, 0x1000 + 8u * q->qid, 4, q->sq_tail);
}

/* Takes the next completion if its phase says it is new; rings the head if asked. */
static bool cq_take(struct env *e, struct queue *q, struct cqe *c, bool ring)
{
    const uint8_t *p = e->ram + q->cq_gpa + (uint64_t)q->cq_head * 16;
    uint32_t dw3 = le32(p + 12);
    if (((dw3 >> 16) & 1) != q->phase)
        return false;
    c->dw0 = le32(p);
    c->sqhd = le16(p + 8);
    c->sqid = le16(p + 10);
    c->cid = (uint16_t)dw3;
    c->status = (uint16_t)((dw3 >> 17) & 0x3fff); /* without DNR */
    if (++q->cq_head == q->cq_size) {
        q->cq_head = 0;
        q->phase = !q->phase;
    }
    if (ring)
        wr(e, 0x1000 + 8u * q->qid + 4, 4, q->cq_head);
    return true;
}

/* Submits one command and returns its status (S_NONE if it did not complete). */
static uint16_t cmd(struct env *e, struct queue *q, uint8_t *s, uint32_t *dw0)
{
    uint16_t cid = sq_put(e, q, s);
    sq_ring(e, q);
    struct cqe c;
    if (!cq_take(e, q, &c, true))
        return S_NONE;
    assert_int_equal(c.cid, cid);
    assert_int_equal(c.sqid, q->qid);
    assert_int_equal(c.sqhd, q->sq_tail);
    if (dw0)
        *dw0 = c.dw0;
    return c.status;
}

static void enable(struct env *e)
{
    e->aq = (struct queue){.qid = 0,
                           .sq_gpa = ASQ_GPA,
                           .cq_gpa = ACQ_GPA,
                           .sq_size = ADMIN_SIZE,
                           .cq_size = ADMIN_SIZE,
                           .phase = true};
    memset(e->ram + ACQ_GPA, 0, ADMIN_SIZE * 16);
    wr(e, NVME_REG_AQA, 4, (ADMIN_SIZE - 1) << 16 | (ADMIN_SIZE - 1));
    wr(e, NVME_REG_ASQ, 8, ASQ_GPA);
    wr(e, NVME_REG_ACQ, 4, ACQ_GPA);
    wr(e, NVME_REG_ACQ + 4, 4, 0);
    wr(e, NVME_REG_CC, 4, 4u << 20 | 6u << 16 | 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 1);
}

static void disable(struct env *e)
{
    wr(e, NVME_REG_CC, 4, 4u << 20 | 6u << 16);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 1, 0);
}

static uint16_t create_cq(struct env *e, uint16_t qid, uint64_t gpa, uint32_t size, uint32_t c11)
{
    uint8_t s[64];
    sqe_init(s, 0x05, 0);
    sqe_set(s, gpa, 0, (size - 1) << 16 | qid, c11, 0);
    return cmd(e, &e->aq, s, NULL);
}

static uint16_t create_sq(struct env *e, uint16_t qid, uint64_t gpa, uint32_t size, uint16_t cqid,
                          uint32_t flags)
{
    uint8_t s[64];
    sqe_init(s, 0x01, 0);
    sqe_set(s, gpa, 0, (size - 1) << 16 | qid, (uint32_t)cqid << 16 | flags, 0);
    return cmd(e, &e->aq, s, NULL);
}

static uint16_t delete_q(struct env *e, uint8_t opc, uint16_t qid)
{
    uint8_t s[64];
    sqe_init(s, opc, 0);
    sqe_set(s, 0, 0, qid, 0, 0);
    return cmd(e, &e->aq, s, NULL);
}

/* Enables the controller and creates I/O queue pair 1 of `size` entries. */
static void io_setup(struct env *e, uint32_t size)
{
    enable(e);
    memset(e->ram + IOCQ_GPA, 0, size * 16);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, size, 0x3), S_OK);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, size, 1, 1), S_OK);
    e->ioq = (struct queue){.qid = 1,
                            .sq_gpa = IOSQ_GPA,
                            .cq_gpa = IOCQ_GPA,
                            .sq_size = size,
                            .cq_size = size,
                            .phase = true};
}

static uint16_t rw(struct env *e, uint8_t opc, uint64_t slba, uint32_t nlb, uint64_t prp1,
                   uint64_t prp2)
{
    uint8_t s[64];
    sqe_init(s, opc, 1);
    sqe_set(s, prp1, prp2, (uint32_t)slba, (uint32_t)(slba >> 32), nlb - 1);
    return cmd(e, &e->ioq, s, NULL);
}

static uint16_t identify(struct env *e, uint8_t cns, uint32_t nsid, uint64_t gpa)
{
    uint8_t s[64];
    sqe_init(s, 0x06, nsid);
    sqe_set(s, gpa, gpa + 4096, cns, 0, 0);
    return cmd(e, &e->aq, s, NULL);
}

static uint16_t get_log(struct env *e, uint8_t lid, uint32_t ndw, uint64_t off, bool rae,
                        uint64_t gpa)
{
    uint8_t s[64];
    sqe_init(s, 0x02, 0xffffffffu);
    sqe_set(s, gpa, gpa + 4096, (ndw - 1) << 16 | (rae ? 1u << 15 : 0) | lid, (ndw - 1) >> 16,
            (uint32_t)off);
    put32(s + 52, (uint32_t)(off >> 32));
    return cmd(e, &e->aq, s, NULL);
}

static uint16_t feature(struct env *e, uint8_t opc, uint32_t c10, uint32_t c11, uint32_t *dw0)
{
    uint8_t s[64];
    sqe_init(s, opc, 0);
    sqe_set(s, 0, 0, c10, c11, 0);
    return cmd(e, &e->aq, s, dw0);
}

/* ---- tests: registers and PCI ---- */

static void test_pci_identity(void **state)
{
    struct env *e = *state;
    assert_int_equal(cfg_rd(e, PCI_REG_VENDOR_ID, 2), 0x1b36);
    assert_int_equal(cfg_rd(e, PCI_REG_DEVICE_ID, 2), 0x0010);
    assert_int_equal(cfg_rd(e, PCI_REG_REVISION, 4) >> 8, 0x010802);
    assert_int_equal(cfg_rd(e, PCI_REG_INT_PIN, 1), 1);
    assert_int_equal(cfg_rd(e, PCI_REG_BAR0, 4) & 0x7, PCI_BAR_MEM64_FLAG);
    /* BAR sizing: 16 KiB. */
    cfg_wr(e, PCI_REG_BAR0, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, PCI_REG_BAR0, 4) & ~0xfu, 0xffffc000u);
    /* MSI-X capability: 33 vectors, table at 0x2000 and PBA at 0x3000 of BAR0. */
    unsigned cap = cfg_rd(e, PCI_REG_CAP_PTR, 1);
    assert_int_equal(cfg_rd(e, cap, 1), 0x11);
    assert_int_equal(cfg_rd(e, cap + 2, 2) & 0x7ff, NVME_MSIX_VECTORS - 1);
    assert_int_equal(cfg_rd(e, cap + 4, 4), 0x2000);
    assert_int_equal(cfg_rd(e, cap + 8, 4), 0x3000);
}

static void test_registers(void **state)
{
    struct env *e = *state;
    uint64_t cap = rd(e, NVME_REG_CAP, 8);
    assert_int_equal(cap & 0xffff, 1023);    /* MQES */
    assert_true(cap >> 16 & 1);              /* CQR */
    assert_true(((cap >> 24) & 0xff) != 0);  /* TO */
    assert_int_equal((cap >> 32) & 0xf, 0);  /* DSTRD */
    assert_int_equal((cap >> 37) & 0xff, 1); /* CSS: NVM */
    assert_int_equal((cap >> 48) & 0xf, 0);  /* MPSMIN 4 KiB */
    assert_int_equal(rd(e, NVME_REG_CAP, 4), (uint32_t)cap);
    assert_int_equal(rd(e, NVME_REG_CAP + 4, 4), cap >> 32);
    assert_int_equal(rd(e, NVME_REG_VS, 4), 0x00010400);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4), 0);
    /* CAP and VS are read-only. */
    wr(e, NVME_REG_CAP, 8, 0);
    wr(e, NVME_REG_VS, 4, 0);
    assert_int_equal(rd(e, NVME_REG_CAP, 8), cap);
    assert_int_equal(rd(e, NVME_REG_VS, 4), 0x00010400);
    /* ASQ/ACQ low 12 bits are reserved; 64-bit and split writes. */
    wr(e, NVME_REG_ASQ, 8, 0x123456789abcdfffull);
    assert_int_equal(rd(e, NVME_REG_ASQ, 8), 0x123456789abcd000ull);
    wr(e, NVME_REG_ACQ + 4, 4, 0x1);
    wr(e, NVME_REG_ACQ, 4, 0x5001);
    assert_int_equal(rd(e, NVME_REG_ACQ, 8), 0x100005000ull);
    wr(e, NVME_REG_AQA, 4, 0xffffffff);
    assert_int_equal(rd(e, NVME_REG_AQA, 4), 0x0fff0fff);
    /* INTMS/INTMC set and clear the same mask. */
    wr(e, NVME_REG_INTMS, 4, 0x5);
    assert_int_equal(rd(e, NVME_REG_INTMC, 4), 0x5);
    wr(e, NVME_REG_INTMC, 4, 0x1);
    assert_int_equal(rd(e, NVME_REG_INTMS, 4), 0x4);
    /* Bad sizes, alignments and offsets are ignored; reads return ones. */
    assert_int_equal(rd(e, 0x3, 4), 0xffffffff);
    assert_int_equal(rd(e, NVME_BAR_SIZE, 4), 0xffffffff);
    assert_int_equal(rd(e, UINT64_MAX - 3, 4), 0xffffffff);
    assert_int_equal(rd(e, 0, 3), 0xffffff);
    wr(e, NVME_REG_CC, 2, 1);
    wr(e, NVME_REG_CC + 1, 4, 1);
    wr(e, NVME_BAR_SIZE + 0x14, 4, 1);
    wr(e, UINT64_MAX - 3, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CC, 4), 0);
    /* Small reads of registers work (byte of VS). */
    assert_int_equal(rd(e, NVME_REG_VS + 2, 1), 1);
    /* Doorbells read as zero; writes while disabled are ignored. */
    wr(e, 0x1000, 4, 1);
    assert_int_equal(rd(e, 0x1000, 4), 0);
}

static void test_enable_disable(void **state)
{
    struct env *e = *state;
    enable(e);
    uint32_t dw0;
    assert_int_equal(feature(e, 0x0a, 0x07, 0, &dw0), S_OK);
    disable(e);
    /* Admin queue registers survive a controller reset. */
    assert_int_equal(rd(e, NVME_REG_ASQ, 8), ASQ_GPA);
    assert_int_equal(rd(e, NVME_REG_AQA, 4), (ADMIN_SIZE - 1) << 16 | (ADMIN_SIZE - 1));
    /* Doorbells of a disabled controller do nothing. */
    uint8_t s[64];
    sqe_init(s, 0x0a, 0);
    put32(s + 40, 0x07);
    memcpy(e->ram + ASQ_GPA, s, 64);
    memset(e->ram + ACQ_GPA, 0, 16);
    wr(e, 0x1000, 4, 1);
    assert_int_equal(le32(e->ram + ACQ_GPA + 12), 0);
    /* Enable again: the admin queue starts over at entry 0. */
    enable(e);
    assert_int_equal(feature(e, 0x0a, 0x07, 0, &dw0), S_OK);

    /* Shutdown: SHST goes to complete, and back to normal when SHN clears. */
    wr(e, NVME_REG_CC, 4, 4u << 20 | 6u << 16 | 1u << 14 | 1);
    assert_int_equal((rd(e, NVME_REG_CSTS, 4) >> 2) & 3, 2);
    wr(e, NVME_REG_CC, 4, 4u << 20 | 6u << 16 | 1);
    assert_int_equal((rd(e, NVME_REG_CSTS, 4) >> 2) & 3, 0);
    disable(e);

    /* Bad configurations: CFS, not RDY. Each is fixed by the next reset. */
    wr(e, NVME_REG_CC, 4, 1u << 7 | 1); /* MPS 8 KiB */
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 2);
    disable(e);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4), 0);
    wr(e, NVME_REG_CC, 4, 1u << 4 | 1); /* CSS not NVM */
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 2);
    disable(e);
    wr(e, NVME_REG_AQA, 4, 0); /* one-entry queues */
    wr(e, NVME_REG_CC, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 2);
    disable(e);
    wr(e, NVME_REG_AQA, 4, 0x000f0040);
    wr(e, NVME_REG_ASQ, 8, RAM_SIZE - 0x1fff); /* low bits dropped: RAM_SIZE - 0x2000 */
    assert_int_equal(rd(e, NVME_REG_ASQ, 8), RAM_SIZE - 0x2000);
    wr(e, NVME_REG_ASQ, 8, RAM_SIZE - 0x1000); /* 65 x 64 bytes run past RAM */
    wr(e, NVME_REG_CC, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 2);
    disable(e);
    wr(e, NVME_REG_ASQ, 8, RAM_SIZE);
    wr(e, NVME_REG_CC, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 2);
    disable(e);
    wr(e, NVME_REG_AQA, 4, 0x000f003f);
    wr(e, NVME_REG_ASQ, 8, RAM_SIZE - 0x1000); /* 64 x 64 bytes fit exactly */
    wr(e, NVME_REG_CC, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 3, 1);
    disable(e);
}

/* ---- tests: Identify ---- */

static void test_identify(void **state)
{
    struct env *e = *state;
    enable(e);
    uint8_t *d = e->ram + DATA_GPA;
    memset(d, 0xaa, 8192);
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(le16(d + 0), 0x1b36);
    assert_memory_equal(d + 4, "SN-0001             ", 20);
    assert_memory_equal(d + 24, "cella NVMe disk                         ", 40);
    assert_memory_equal(d + 64, "1.0     ", 8);
    assert_int_equal(d[77], 7);                 /* MDTS */
    assert_int_equal(le32(d + 80), 0x00010400); /* VER */
    assert_int_equal(d[111], 1);                /* CNTRLTYPE */
    assert_int_equal(d[259], 3);                /* AERL */
    assert_int_equal(d[512], 0x66);
    assert_int_equal(d[513], 0x44);
    assert_int_equal(le32(d + 516), 1);      /* NN */
    assert_int_equal(le16(d + 520), 0x000c); /* ONCS: DSM, Write Zeroes */
    assert_int_equal(d[524] & 1, 1);         /* VWC */
    assert_int_equal(le32(d + 536), 0);      /* SGLS */
    char nqn[96] = "nqn.2019-10.dev.cella:nvme:534e2d30303031";
    for (unsigned i = 7; i < 20; i++)
        strcat(nqn, "20"); /* the serial's padding is part of it */
    assert_string_equal((char *)d + 768, nqn);
    assert_int_equal(d[4096], 0xaa); /* exactly one page written */

    memset(d, 0xaa, 4096);
    assert_int_equal(identify(e, 0, 1, DATA_GPA), S_OK);
    assert_int_equal(le64(d + 0), DISK_SIZE / 512); /* NSZE */
    assert_int_equal(le64(d + 8), DISK_SIZE / 512); /* NCAP */
    assert_int_equal(d[25], 0);                     /* NLBAF */
    assert_int_equal((le32(d + 128) >> 16) & 0xff, 9);
    uint8_t nguid[16];
    memcpy(nguid, d + 104, 16);

    memset(d, 0xaa, 4096);
    assert_int_equal(identify(e, 2, 0, DATA_GPA), S_OK);
    assert_int_equal(le32(d), 1);
    assert_int_equal(le32(d + 4), 0);
    assert_int_equal(identify(e, 2, 1, DATA_GPA), S_OK);
    assert_int_equal(le32(d), 0);
    assert_int_equal(identify(e, 2, 0xfffffffe, DATA_GPA), S_BAD_NS);

    assert_int_equal(identify(e, 3, 1, DATA_GPA), S_OK);
    assert_int_equal(d[0], 2);
    assert_int_equal(d[1], 16);
    assert_memory_equal(d + 4, nguid, 16);
    assert_int_equal(d[20], 0); /* end of list */

    assert_int_equal(identify(e, 0, 2, DATA_GPA), S_BAD_NS);
    assert_int_equal(identify(e, 0, 0, DATA_GPA), S_BAD_NS);
    assert_int_equal(identify(e, 0, 0xffffffff, DATA_GPA), S_BAD_NS);
    assert_int_equal(identify(e, 3, 7, DATA_GPA), S_BAD_NS);
    assert_int_equal(identify(e, 0x10, 0, DATA_GPA), S_BAD_FIELD);
    /* Data buffer outside RAM, or PRP1 not dword aligned. */
    assert_int_equal(identify(e, 1, 0, RAM_SIZE), S_XFER_ERROR);
    assert_int_equal(identify(e, 1, 0, DATA_GPA + 2), S_PRP_OFFSET);
    /* PRP1 at an offset: PRP2 covers the rest and must be page aligned. */
    uint8_t s[64];
    sqe_init(s, 0x06, 0);
    sqe_set(s, DATA_GPA + 0x800, DATA_GPA + 0x1010, 1, 0, 0);
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_PRP_OFFSET);
    sqe_set(s, DATA_GPA + 0x800, DATA_GPA + 0x3000, 1, 0, 0);
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_OK);
    assert_int_equal(le16(e->ram + DATA_GPA + 0x800), 0x1b36);
    assert_memory_equal(e->ram + DATA_GPA + 0x800 + 24, "cella NVMe disk ", 16);
    assert_int_equal(le16(e->ram + DATA_GPA + 0x3000), 2500); /* byte 2048: power state 0 */
}

static void test_identify_nul_pad(void **state)
{
    struct env *e = *state;
    /* Rebuild with the legacy NUL padding and a 4 KiB-sector disk. */
    teardown(state);
    e = calloc(1, sizeof(*e));
    assert_non_null(e);
    env_build(e, DISK_SIZE, 4096, 0x00);
    *state = e;
    enable(e);
    uint8_t *d = e->ram + DATA_GPA;
    memset(d, 0xaa, 4096);
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_memory_equal(d + 4, "SN-0001\0\0\0\0\0\0\0\0\0\0\0\0\0", 20);
    assert_memory_equal(d + 24, "cella NVMe disk", 16); /* includes one NUL */
    for (unsigned i = 24 + 15; i < 64; i++)
        assert_int_equal(d[i], 0);
    assert_memory_equal(d + 64, "1.0\0\0\0\0\0", 8);
    assert_int_equal(identify(e, 0, 1, DATA_GPA), S_OK);
    assert_int_equal(le64(d), DISK_SIZE / 4096);
    assert_int_equal((le32(d + 128) >> 16) & 0xff, 12);
}

static void test_init_rejects(void **state)
{
    (void)state;
    struct fake_blk *b = fake_blk_new(4096, 520);
    struct nvme_disk *n = calloc(1, sizeof(*n));
    struct c_nvme_disk spec = {.string_pad = 0x20};
    uint8_t buf[4096];
    struct guest_mem mem;
    guest_mem_init_buffer(&mem, buf, sizeof(buf));
    assert_int_equal(nvme_init(n, "x", &spec, &b->b, &mem, NULL), -EINVAL);
    b->b.info.block_size = 256;
    assert_int_equal(nvme_init(n, "x", &spec, &b->b, &mem, NULL), -EINVAL);
    b->b.info.block_size = 131072;
    assert_int_equal(nvme_init(n, "x", &spec, &b->b, &mem, NULL), -EINVAL);
    assert_int_equal(nvme_init(n, "x", NULL, &b->b, &mem, NULL), -EINVAL);
    b->b.info.block_size = 512;
    assert_int_equal(nvme_init(n, NULL, &spec, &b->b, &mem, NULL), 0);
    nvme_destroy(n);
    free(n);
    blk_close(&b->b);
}

/* ---- tests: queues ---- */

static void test_queue_create_delete(void **state)
{
    struct env *e = *state;
    enable(e);
    /* CQ: bad ids, sizes, PC, vectors, addresses. */
    assert_int_equal(create_cq(e, 0, IOCQ_GPA, 16, 1), S_BAD_QID);
    assert_int_equal(create_cq(e, NVME_MAX_IO_QUEUES + 1, IOCQ_GPA, 16, 1), S_BAD_QID);
    assert_int_equal(create_cq(e, 0xffff, IOCQ_GPA, 16, 1), S_BAD_QID);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 1, 1), S_BAD_QSIZE);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 1025, 1), S_BAD_QSIZE);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 65536, 1), S_BAD_QSIZE);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 0), S_BAD_FIELD);             /* PC=0 */
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 1 | 1u << 16), S_BAD_VECTOR); /* no MSI-X */
    assert_int_equal(create_cq(e, 1, IOCQ_GPA + 8, 16, 1), S_BAD_FIELD);
    assert_int_equal(create_cq(e, 1, RAM_SIZE - 0x1000, 1024, 1), S_BAD_FIELD);
    assert_int_equal(create_cq(e, 1, UINT64_MAX & ~0xfffull, 2, 1), S_BAD_FIELD);
    assert_int_equal(create_cq(e, 1, RAM_SIZE - 0x1000, 256, 1), S_OK); /* exactly fits */
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 1), S_BAD_QID);      /* exists */
    assert_int_equal(create_cq(e, NVME_MAX_IO_QUEUES, IOCQ_GPA, 1024, 3), S_OK);
    /* SQ: bad ids, missing CQ, sizes. */
    assert_int_equal(create_sq(e, 0, IOSQ_GPA, 16, 1, 1), S_BAD_QID);
    assert_int_equal(create_sq(e, 33, IOSQ_GPA, 16, 1, 1), S_BAD_QID);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 0, 1), S_CQ_INVALID);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 2, 1), S_CQ_INVALID);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 0xffff, 1), S_CQ_INVALID);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 1, 1, 1), S_BAD_QSIZE);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 1025, 1, 1), S_BAD_QSIZE);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 1, 0), S_BAD_FIELD);
    assert_int_equal(create_sq(e, 1, RAM_SIZE - 0x1000, 65, 1, 1), S_BAD_FIELD);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 1, 1), S_OK);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 1, 1), S_BAD_QID);
    assert_int_equal(create_sq(e, 2, IOSQ_GPA + 0x1000, 16, 1, 1), S_OK); /* two SQs, one CQ */
    /* Deletion: the CQ only after its SQs. */
    assert_int_equal(delete_q(e, 0x04, 1), S_BAD_QDEL);
    assert_int_equal(delete_q(e, 0x00, 0), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x04, 0), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x00, 3), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x00, 0xffff), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x00, 1), S_OK);
    assert_int_equal(delete_q(e, 0x04, 1), S_BAD_QDEL);
    assert_int_equal(delete_q(e, 0x00, 2), S_OK);
    assert_int_equal(delete_q(e, 0x00, 2), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x04, 1), S_OK);
    assert_int_equal(delete_q(e, 0x04, 1), S_BAD_QID);
    assert_int_equal(delete_q(e, 0x04, NVME_MAX_IO_QUEUES), S_OK);
    /* Wrong CC.IOSQES/IOCQES refuse I/O queues. */
    disable(e);
    wr(e, NVME_REG_CC, 4, 1);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4) & 1, 1);
    e->aq.sq_tail = 0, e->aq.cq_head = 0, e->aq.phase = true;
    memset(e->ram + ACQ_GPA, 0, ADMIN_SIZE * 16);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 1), S_BAD_FIELD);
    /* Unknown admin opcode; fused; SGL. */
    uint8_t s[64];
    sqe_init(s, 0x7f, 0);
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_BAD_OPCODE);
    sqe_init(s, 0x06, 0);
    s[1] = 1;
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_BAD_FIELD);
    s[1] = 0x40;
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_BAD_FIELD);
}

/* ---- tests: I/O ---- */

static void test_read_write_prp(void **state)
{
    struct env *e = *state;
    io_setup(e, 64);
    uint8_t *disk = e->blk->disk;
    uint8_t *buf = e->ram + DATA_GPA;

    /* One block, PRP1 at a dword offset inside a page. */
    assert_int_equal(rw(e, 0x02, 3, 1, DATA_GPA + 0x104, 0), S_OK);
    assert_memory_equal(buf + 0x104, disk + 3 * 512, 512);

    /* Two pages exactly: PRP1 + PRP2. */
    memset(buf, 0, 0x10000);
    assert_int_equal(rw(e, 0x02, 8, 16, DATA_GPA, DATA_GPA + 0x5000), S_OK);
    assert_memory_equal(buf, disk + 8 * 512, 4096);
    assert_memory_equal(buf + 0x5000, disk + 8 * 512 + 4096, 4096);

    /* Crossing one page boundary from an offset. */
    assert_int_equal(rw(e, 0x02, 0, 2, DATA_GPA + 0xe00, DATA_GPA + 0x7000), S_OK);
    assert_memory_equal(buf + 0xe00, disk, 512);
    assert_memory_equal(buf + 0x7000, disk + 512, 512);

    /* A PRP list of scattered pages (64 KiB). */
    uint64_t pages[16];
    for (unsigned i = 0; i < 16; i++)
        pages[i] = DATA_GPA + 0x20000 + (uint64_t)((i * 5) % 16) * 0x1000;
    for (unsigned i = 1; i < 16; i++)
        put64(e->ram + LIST_GPA + 8 * (i - 1), pages[i]);
    assert_int_equal(rw(e, 0x02, 100, 128, pages[0], LIST_GPA), S_OK);
    for (unsigned i = 0; i < 16; i++)
        assert_memory_equal(e->ram + pages[i], disk + 100 * 512 + i * 4096, 4096);

    /* Write through a list that chains: it starts 2 slots before a page end. */
    uint64_t list = LIST_GPA + 0x2000 - 16;
    for (unsigned i = 0; i < 16; i++)
        memset(e->ram + pages[i], 0x40 + i, 4096);
    put64(e->ram + list, pages[1]);
    put64(e->ram + list + 8, LIST_GPA + 0x5000); /* chain pointer */
    for (unsigned i = 2; i < 16; i++)
        put64(e->ram + LIST_GPA + 0x5000 + 8 * (i - 2), pages[i]);
    assert_int_equal(rw(e, 0x01, 512, 128, pages[0], list), S_OK);
    for (unsigned i = 0; i < 16; i++)
        assert_memory_equal(e->ram + pages[i], disk + 512 * 512 + i * 4096, 4096);
    assert_int_equal(e->blk->nwrite, 1);

    /* The largest transfer (MDTS, 512 KiB) works; one block more does not. */
    for (unsigned i = 1; i < 128; i++)
        put64(e->ram + LIST_GPA + 8 * (i - 1), 0x280000 + (uint64_t)i * 0x1000);
    assert_int_equal(rw(e, 0x02, 0, 1024, 0x280000, LIST_GPA), S_OK);
    assert_memory_equal(e->ram + 0x280000, disk, 512 * 1024);
    assert_int_equal(rw(e, 0x02, 0, 1025, 0x280000, LIST_GPA), S_BAD_FIELD);

    /* The last block of the namespace, and one past it. */
    uint64_t last = DISK_SIZE / 512 - 1;
    assert_int_equal(rw(e, 0x02, last, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(rw(e, 0x02, last, 2, DATA_GPA, 0), S_LBA_RANGE);
    assert_int_equal(rw(e, 0x02, last + 1, 1, DATA_GPA, 0), S_LBA_RANGE);
    assert_int_equal(rw(e, 0x02, UINT64_MAX, 1, DATA_GPA, 0), S_LBA_RANGE);
    assert_int_equal(rw(e, 0x01, UINT64_MAX - 1, 65536, DATA_GPA, 0), S_LBA_RANGE);

    /* SMART counts the successful reads and writes. */
    assert_int_equal(get_log(e, 0x02, 128, 0, true, DATA_GPA), S_OK);
    assert_int_equal(le64(buf + 64), 6); /* host read commands */
    assert_int_equal(le64(buf + 80), 1); /* host write commands */
    assert_int_equal(le64(buf + 48), 1); /* 128 blocks written: 1 data unit */
    assert_int_equal(le64(buf + 32), 2); /* 1173 blocks read: 2 data units */
}

static void test_bad_prp(void **state)
{
    struct env *e = *state;
    io_setup(e, 64);
    unsigned nread = e->blk->nread;
    /* PRP1 outside RAM, or straddling its end. */
    assert_int_equal(rw(e, 0x02, 0, 1, RAM_SIZE, 0), S_XFER_ERROR);
    assert_int_equal(rw(e, 0x02, 0, 8, RAM_SIZE - 0x800, RAM_SIZE), S_XFER_ERROR);
    assert_int_equal(rw(e, 0x02, 0, 1, UINT64_MAX - 3, 0), S_XFER_ERROR);
    /* PRP1 not dword aligned. */
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA + 1, 0), S_PRP_OFFSET);
    /* PRP2 data pointer with an offset. */
    assert_int_equal(rw(e, 0x02, 0, 16, DATA_GPA, DATA_GPA + 0x1200), S_PRP_OFFSET);
    /* PRP2 data pointer outside RAM. */
    assert_int_equal(rw(e, 0x02, 0, 16, DATA_GPA, RAM_SIZE + 0x1000), S_XFER_ERROR);
    /* PRP list pointer not qword aligned, outside RAM, or its entries bad. */
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, LIST_GPA + 4), S_PRP_OFFSET);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, RAM_SIZE), S_XFER_ERROR);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, UINT64_MAX - 7), S_XFER_ERROR);
    put64(e->ram + LIST_GPA, DATA_GPA + 0x1000);
    put64(e->ram + LIST_GPA + 8, DATA_GPA + 0x2008);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, LIST_GPA), S_PRP_OFFSET);
    put64(e->ram + LIST_GPA + 8, RAM_SIZE);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, LIST_GPA), S_XFER_ERROR);
    put64(e->ram + LIST_GPA + 8, DATA_GPA + 0x2000);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, LIST_GPA), S_OK);
    /* A list whose last slot sits at the end of RAM and chains outside it. */
    uint64_t tail = RAM_SIZE - 8;
    put64(e->ram + tail, RAM_SIZE);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, tail), S_XFER_ERROR);
    /* A chain pointer with an offset. */
    put64(e->ram + tail, LIST_GPA + 0x10);
    assert_int_equal(rw(e, 0x02, 0, 24, DATA_GPA, tail), S_PRP_OFFSET);
    /* List entries may repeat a page; a chain to itself is only followed as far as needed. */
    for (unsigned i = 0; i < 511; i++)
        put64(e->ram + LIST_GPA + 0x3000 + 8 * i, DATA_GPA);
    put64(e->ram + LIST_GPA + 0x3000 + 8 * 511, LIST_GPA + 0x3000);
    put64(e->ram + tail, LIST_GPA + 0x3000);
    assert_int_equal(rw(e, 0x02, 0, 1024, DATA_GPA, tail), S_OK);
    /* Wrong namespace, unknown opcode, fused, SGL. */
    uint8_t s[64];
    sqe_init(s, 0x02, 2);
    sqe_set(s, DATA_GPA, 0, 0, 0, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_NS);
    sqe_init(s, 0x02, 0xffffffff);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_NS);
    sqe_init(s, 0x7e, 1);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_OPCODE);
    sqe_init(s, 0x02, 1);
    s[1] = 0x02;
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_FIELD);
    s[1] = 0x80;
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_FIELD);
    assert_int_equal(e->blk->nread, nread + 2); /* only the two good ones */
}

static void test_flush_zeroes_dsm(void **state)
{
    struct env *e = *state;
    io_setup(e, 64);
    uint8_t s[64];
    sqe_init(s, 0x00, 1);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    sqe_init(s, 0x00, 0xffffffff);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    sqe_init(s, 0x00, 3);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_NS);
    assert_int_equal(e->blk->nflush, 2);

    /* Write Zeroes. */
    assert_int_equal(rw(e, 0x08, 10, 4, 0, 0), S_OK);
    for (unsigned i = 0; i < 4 * 512; i++)
        assert_int_equal(e->blk->disk[10 * 512 + i], 0);
    assert_int_not_equal(e->blk->disk[14 * 512 + 1], 0);
    assert_int_equal(rw(e, 0x08, DISK_SIZE / 512 - 1, 2, 0, 0), S_LBA_RANGE);
    assert_int_equal(rw(e, 0x08, 0, 65536, 0, 0), S_LBA_RANGE); /* the disk has 2048 */
    assert_int_equal(rw(e, 0x08, 0, 2048, 0, 0), S_OK);

    /* Dataset Management: deallocate two ranges (one empty one skipped). */
    uint8_t *r = e->ram + DATA_GPA;
    memset(r, 0, 4096);
    put32(r + 4, 2), put64(r + 8, 20);
    put32(r + 16 + 4, 0), put64(r + 16 + 8, 999999);
    put32(r + 32 + 4, 1), put64(r + 32 + 8, 40);
    sqe_init(s, 0x09, 1);
    sqe_set(s, DATA_GPA, 0, 2, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    assert_int_equal(e->blk->ndiscard, 2);
    assert_int_equal(e->blk->disk[20 * 512], 0xdd);
    assert_int_equal(e->blk->disk[40 * 512 + 511], 0xdd);
    /* Without AD: nothing happens. A range out of bounds fails it all. */
    sqe_set(s, DATA_GPA, 0, 2, 0, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    put64(r + 32 + 8, DISK_SIZE / 512);
    sqe_set(s, DATA_GPA, 0, 2, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_LBA_RANGE);
    assert_int_equal(e->blk->ndiscard, 2);
    /* 256 ranges span a page boundary from an offset: PRP2 needed. */
    sqe_set(s, DATA_GPA + 0x800, RAM_SIZE, 255, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_XFER_ERROR);
    sqe_set(s, DATA_GPA + 0x800, DATA_GPA + 0x1001, 255, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_PRP_OFFSET);
    memset(r, 0, 0x3000);
    put32(r + 0x800 + 4, 1), put64(r + 0x800 + 8, 100); /* range 0: PRP1's page */
    put32(r + 0x7f0 + 4, 3), put64(r + 0x7f0 + 8, 7);   /* range 255: PRP2's page */
    sqe_set(s, DATA_GPA + 0x800, DATA_GPA, 255, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    assert_int_equal(e->blk->ndiscard, 4);
    assert_int_equal(e->blk->disk[100 * 512], 0xdd);
    assert_int_equal(e->blk->disk[9 * 512 + 511], 0xdd);
    assert_int_equal(e->blk->disk[10 * 512], 0);

    /* A backend without discard and write zeroes: invalid opcodes. */
    e->blk->b.info.can_discard = false;
    e->blk->b.info.can_write_zeroes = false;
    assert_int_equal(rw(e, 0x08, 0, 1, 0, 0), S_BAD_OPCODE);
    sqe_set(s, DATA_GPA, 0, 0, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_BAD_OPCODE);
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(le16(e->ram + DATA_GPA + 520), 0);
    /* Nor flush: Flush succeeds without reaching it; no VWC. */
    e->blk->b.info.can_flush = false;
    unsigned nflush = e->blk->nflush;
    sqe_init(s, 0x00, 1);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    assert_int_equal(e->blk->nflush, nflush);
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(e->ram[DATA_GPA + 524] & 1, 0);
    assert_int_equal(feature(e, 0x0a, 0x06, 0, NULL), S_BAD_FIELD);
}

static void test_readonly(void **state)
{
    struct env *e = *state;
    e->blk->b.info.readonly = true;
    io_setup(e, 16);
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_WRITE_PROT);
    assert_int_equal(rw(e, 0x08, 0, 1, 0, 0), S_WRITE_PROT);
    uint8_t s[64];
    sqe_init(s, 0x09, 1);
    sqe_set(s, DATA_GPA, 0, 0, 1u << 2, 0);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_WRITE_PROT);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(e->blk->nwrite + e->blk->nwz + e->blk->ndiscard, 0);
    assert_int_equal(get_log(e, 0x02, 128, 0, true, DATA_GPA), S_OK);
    assert_int_equal(e->ram[DATA_GPA] & 0x08, 0x08); /* critical warning: read-only */
}

static void test_backend_errors(void **state)
{
    struct env *e = *state;
    io_setup(e, 16);
    e->blk->fail_with = -EIO;
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_READ_ERROR);
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_WRITE_FAULT);
    assert_int_equal(rw(e, 0x08, 0, 1, 0, 0), S_WRITE_FAULT);
    uint8_t s[64];
    sqe_init(s, 0x00, 1);
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_INTERNAL_ERROR);
    e->blk->fail_with = -EROFS;
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_WRITE_PROT);
    e->blk->fail_with = -ENOMEM;
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_INTERNAL_ERROR);
    e->blk->fail_with = 0;
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
}

/* ---- tests: features, logs, events ---- */

static void test_features(void **state)
{
    struct env *e = *state;
    io_setup(e, 16);
    uint32_t dw0 = 0;
    assert_int_equal(feature(e, 0x09, 0x07, 0x00030003, &dw0), S_OK);
    assert_int_equal(dw0, (NVME_MAX_IO_QUEUES - 1) * 0x10001u);
    assert_int_equal(feature(e, 0x09, 0x07, 0xffff0000, NULL), S_BAD_FIELD);
    assert_int_equal(feature(e, 0x09, 0x07, 0x0000ffff, NULL), S_BAD_FIELD);
    assert_int_equal(feature(e, 0x0a, 0x07, 0, &dw0), S_OK);
    assert_int_equal(dw0, (NVME_MAX_IO_QUEUES - 1) * 0x10001u);
    /* Interrupt coalescing: accepted, remembered, ignored. */
    assert_int_equal(feature(e, 0x09, 0x08, 0x0a05, NULL), S_OK);
    assert_int_equal(feature(e, 0x0a, 0x08, 0, &dw0), S_OK);
    assert_int_equal(dw0, 0x0a05);
    assert_int_equal(feature(e, 0x0a, 0x08 | 1u << 8, 0, &dw0), S_OK); /* default */
    assert_int_equal(dw0, 0);
    assert_int_equal(feature(e, 0x0a, 0x08 | 3u << 8, 0, &dw0), S_OK); /* capabilities */
    assert_int_equal(dw0, 1u << 2);
    assert_int_equal(feature(e, 0x0a, 0x08 | 4u << 8, 0, &dw0), S_BAD_FIELD);
    /* Interrupt vector configuration: per vector, bounded. */
    assert_int_equal(feature(e, 0x09, 0x09, 1u << 16 | 3, NULL), S_OK);
    assert_int_equal(feature(e, 0x0a, 0x09, 3, &dw0), S_OK);
    assert_int_equal(dw0, 1u << 16 | 3);
    assert_int_equal(feature(e, 0x0a, 0x09, NVME_MSIX_VECTORS, &dw0), S_BAD_FIELD);
    assert_int_equal(feature(e, 0x09, 0x09, 0xffff, NULL), S_BAD_FIELD);
    /* Saving is not supported; unknown features are invalid. */
    assert_int_equal(feature(e, 0x09, 0x08 | 1u << 31, 0, NULL), S_NOT_SAVEABLE);
    assert_int_equal(feature(e, 0x0a, 0x0c, 0, NULL), S_BAD_FIELD);
    assert_int_equal(feature(e, 0x09, 0x80, 0, NULL), S_BAD_FIELD);
    assert_int_equal(feature(e, 0x09, 0x02, 1, NULL), S_BAD_FIELD); /* power state 1 */
    assert_int_equal(feature(e, 0x09, 0x02, 0, NULL), S_OK);
    assert_int_equal(feature(e, 0x09, 0x04, 0x150, NULL), S_OK);
    assert_int_equal(feature(e, 0x0a, 0x04, 0, &dw0), S_OK);
    assert_int_equal(dw0, 0x150);
    assert_int_equal(feature(e, 0x09, 0x0b, 0x1ff, NULL), S_OK);
    assert_int_equal(feature(e, 0x0a, 0x0b, 0, &dw0), S_OK);
    assert_int_equal(dw0, 0x1ff);
    for (uint8_t fid = 1; fid <= 0x0b; fid++) {
        if (fid == 3)
            assert_int_equal(feature(e, 0x0a, fid, 0, &dw0), S_BAD_FIELD);
        else
            assert_int_equal(feature(e, 0x0a, fid, 0, &dw0), S_OK);
    }

    /* Volatile write cache: on by default; off makes every write durable. */
    assert_int_equal(feature(e, 0x0a, 0x06, 0, &dw0), S_OK);
    assert_int_equal(dw0, 1);
    unsigned f0 = e->blk->nflush;
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(e->blk->nflush, f0);
    uint8_t s[64];
    sqe_init(s, 0x01, 1);
    sqe_set(s, DATA_GPA, 0, 0, 0, 1u << 30); /* FUA */
    assert_int_equal(cmd(e, &e->ioq, s, NULL), S_OK);
    assert_int_equal(e->blk->nflush, f0 + 1);
    assert_int_equal(feature(e, 0x09, 0x06, 0, NULL), S_OK);
    assert_int_equal(feature(e, 0x0a, 0x06, 0, &dw0), S_OK);
    assert_int_equal(dw0, 0);
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(rw(e, 0x08, 0, 1, 0, 0), S_OK);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(e->blk->nflush, f0 + 3);
    /* A failed write is not followed by a flush. */
    e->blk->fail_with = -EIO;
    assert_int_equal(rw(e, 0x01, 0, 1, DATA_GPA, 0), S_WRITE_FAULT);
    e->blk->fail_with = 0;
    assert_int_equal(e->blk->nflush, f0 + 3);
    /* A controller reset restores the defaults. */
    disable(e);
    enable(e);
    assert_int_equal(feature(e, 0x0a, 0x06, 0, &dw0), S_OK);
    assert_int_equal(dw0, 1);
    assert_int_equal(feature(e, 0x0a, 0x08, 0, &dw0), S_OK);
    assert_int_equal(dw0, 0);
}

static void test_log_pages(void **state)
{
    struct env *e = *state;
    enable(e);
    uint8_t *d = e->ram + DATA_GPA;
    memset(d, 0xaa, 8192);
    assert_int_equal(get_log(e, 0x01, 16, 0, true, DATA_GPA), S_OK);
    for (unsigned i = 0; i < 64; i++)
        assert_int_equal(d[i], 0);
    assert_int_equal(d[64], 0xaa);
    /* More than the log: the rest reads as zero. */
    memset(d, 0xaa, 8192);
    assert_int_equal(get_log(e, 0x01, 1024, 0, true, DATA_GPA), S_OK);
    assert_int_equal(d[4095], 0);
    assert_int_equal(d[4096], 0xaa);
    /* SMART. */
    assert_int_equal(get_log(e, 0x02, 128, 0, true, DATA_GPA), S_OK);
    assert_int_equal(d[0], 0);
    assert_int_equal(le16(d + 1), 0x012f);
    assert_int_equal(d[3], 100);
    /* Offset inside the log, and NUMDU (extended length). */
    assert_int_equal(get_log(e, 0x02, 4, 4, true, DATA_GPA), S_OK);
    assert_int_equal(d[0], 10); /* byte 4 of the log: spare threshold */
    assert_int_equal(get_log(e, 0x02, 4, 2, true, DATA_GPA), S_BAD_FIELD);   /* unaligned */
    assert_int_equal(get_log(e, 0x02, 4, 516, true, DATA_GPA), S_BAD_FIELD); /* beyond */
    assert_int_equal(get_log(e, 0x02, 4, 1ull << 40, true, DATA_GPA), S_BAD_FIELD);
    for (unsigned i = 0; i < 127; i++) /* PRP2 (DATA_GPA + 4 KiB) as a list */
        put64(d + 4096 + 8 * i, 0x280000 + (uint64_t)i * 0x1000);
    assert_int_equal(get_log(e, 0x02, 0x20000, 0, true, DATA_GPA), S_OK); /* 512 KiB */
    assert_int_equal(get_log(e, 0x02, 0x20001, 0, true, DATA_GPA), S_BAD_FIELD);
    assert_int_equal(get_log(e, 0x02, 0x10001, 0, true, DATA_GPA), S_OK);
    assert_int_equal(e->ram[0x280000 + 126 * 0x1000], 0); /* zero filled */
    put64(d + 4096, 0x280001);
    assert_int_equal(get_log(e, 0x02, 0x20000, 0, true, DATA_GPA), S_PRP_OFFSET);
    /* Firmware slots: slot 1 active, revision padded. */
    assert_int_equal(get_log(e, 0x03, 128, 0, true, DATA_GPA), S_OK);
    assert_int_equal(d[0], 1);
    assert_memory_equal(d + 8, "1.0     ", 8);
    /* Unknown log pages. */
    assert_int_equal(get_log(e, 0x04, 16, 0, true, DATA_GPA), S_BAD_LOG);
    assert_int_equal(get_log(e, 0xc0, 16, 0, true, DATA_GPA), S_BAD_LOG);
    /* Abort: accepted, nothing aborted. */
    uint8_t s[64];
    uint32_t dw0 = 0;
    sqe_init(s, 0x08, 0);
    sqe_set(s, 0, 0, 1u << 16 | 1, 0, 0);
    assert_int_equal(cmd(e, &e->aq, s, &dw0), S_OK);
    assert_int_equal(dw0 & 1, 1);
}

static void test_async_events_and_bad_doorbells(void **state)
{
    struct env *e = *state;
    io_setup(e, 16);
    uint8_t s[64];
    /* Four AERs are held (no completion), a fifth exceeds the limit. */
    for (unsigned i = 0; i < 4; i++) {
        sqe_init(s, 0x0c, 0);
        assert_int_equal(cmd(e, &e->aq, s, NULL), S_NONE);
    }
    uint16_t last_aer = e->next_cid - 1;
    sqe_init(s, 0x0c, 0);
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_AER_LIMIT);
    /* Other admin commands still complete around the held ones. */
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);

    /* SQ tail beyond its size: ignored, an AER completes (invalid value). */
    wr(e, 0x1000 + 8, 4, 16);
    struct cqe c;
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal(c.cid, last_aer);
    assert_int_equal(c.status, S_OK);
    assert_int_equal(c.dw0 & 7, 0);            /* AET: error status */
    assert_int_equal((c.dw0 >> 8) & 0xff, 1);  /* invalid doorbell value */
    assert_int_equal((c.dw0 >> 16) & 0xff, 1); /* read the error log */
    /* Masked until the error log is read: the next one waits. */
    wr(e, 0x1000 + 8 * 9, 4, 0); /* SQ 9 does not exist */
    assert_false(cq_take(e, &e->aq, &c, true));
    assert_int_equal(get_log(e, 0x01, 16, 0, true, DATA_GPA), S_OK); /* RAE: still masked */
    assert_false(cq_take(e, &e->aq, &c, true));
    uint16_t st = get_log(e, 0x01, 16, 0, false, DATA_GPA);
    /* The log read completes first, then the event. */
    assert_int_equal(st, S_OK);
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal((c.dw0 >> 8) & 0xff, 0); /* invalid doorbell register */
    assert_int_equal(get_log(e, 0x01, 16, 0, false, DATA_GPA), S_OK);

    /* CQ head beyond what was posted, beyond size, unknown CQ. */
    wr(e, 0x1000 + 8 + 4, 4, 5);
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal((c.dw0 >> 8) & 0xff, 1);
    assert_int_equal(get_log(e, 0x01, 16, 0, false, DATA_GPA), S_OK);
    wr(e, 0x1000 + 8 + 4, 4, 1000);
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal(get_log(e, 0x01, 16, 0, false, DATA_GPA), S_OK);
    /* No AER left: events stay pending, one is delivered when one arrives. */
    wr(e, 0x1000 + 8 * 20 + 4, 4, 0);
    wr(e, 0x1ffc, 4, 0); /* past the last queue's doorbells */
    sqe_init(s, 0x0c, 0);
    uint16_t cid = sq_put(e, &e->aq, s);
    sq_ring(e, &e->aq);
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal(c.cid, cid);
    assert_int_equal((c.dw0 >> 8) & 0xff, 0);
    /* Doorbell writes of other sizes are dropped without an event. */
    wr(e, 0x1000 + 8, 8, 1);
    wr(e, 0x1000 + 8, 2, 1);

    /* I/O still works after all that. */
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
}

/* ---- tests: completion queue full, asynchronous backend ---- */

static void test_cq_full_holds_submissions(void **state)
{
    struct env *e = *state;
    io_setup(e, 4); /* 3 usable completion slots */
    uint8_t s[64];
    uint16_t cids[3];
    for (unsigned i = 0; i < 3; i++) {
        sqe_init(s, 0x02, 1);
        sqe_set(s, DATA_GPA, 0, i, 0, 0);
        cids[i] = sq_put(e, &e->ioq, s);
    }
    sq_ring(e, &e->ioq); /* 3 entries: the whole SQ */
    /* Only... all 3 fit in the CQ (size 4 holds 3). */
    assert_int_equal(e->blk->nread, 3);
    /* Three more, while none was consumed: held. */
    for (unsigned i = 0; i < 3; i++) {
        sqe_init(s, 0x02, 1);
        sqe_set(s, DATA_GPA, 0, 10 + i, 0, 0);
        sq_put(e, &e->ioq, s);
    }
    sq_ring(e, &e->ioq);
    assert_int_equal(e->blk->nread, 3);
    struct cqe c;
    /* Consume one without ringing yet: still held. */
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(c.cid, cids[0]);
    assert_int_equal(e->blk->nread, 3);
    /* Ring the head: one slot frees, exactly one more runs. */
    wr(e, 0x1000 + 8 + 4, 4, e->ioq.cq_head);
    assert_int_equal(e->blk->nread, 4);
    /* The CQ never got an entry it had no room for: the slot after the newest is old. */
    for (unsigned i = 0; i < 5; i++) {
        assert_true(cq_take(e, &e->ioq, &c, true));
        assert_int_equal(c.status, S_OK);
    }
    assert_false(cq_take(e, &e->ioq, &c, true));
    assert_int_equal(e->blk->nread, 6);
    assert_int_equal(c.sqhd, e->ioq.sq_tail);

    /* The admin queue holds too. */
    for (unsigned i = 0; i < ADMIN_SIZE - 1; i++) {
        uint8_t a[64];
        sqe_init(a, 0x0a, 0);
        put32(a + 40, 0x07);
        sq_put(e, &e->aq, a);
    }
    sq_ring(e, &e->aq); /* 15 commands, 15 CQ slots */
    unsigned got = 0;
    while (cq_take(e, &e->aq, &c, false))
        got++;
    assert_int_equal(got, ADMIN_SIZE - 1);
    wr(e, 0x1004, 4, e->aq.cq_head);
}

static void test_deferred_backend_and_reset(void **state)
{
    struct env *e = *state;
    io_setup(e, 16);
    e->blk->defer = true;
    uint8_t s[64];
    for (unsigned i = 0; i < 8; i++) {
        sqe_init(s, i % 2 ? 0x01 : 0x02, 1);
        sqe_set(s, DATA_GPA + i * 0x1000, 0, i, 0, 0);
        sq_put(e, &e->ioq, s);
    }
    sq_ring(e, &e->ioq);
    assert_int_equal(e->blk->npending, 8);
    struct cqe c;
    assert_false(cq_take(e, &e->ioq, &c, true));
    /* Completions in another order than submission. */
    assert_int_equal(fake_blk_complete(e->blk, 3), 3);
    for (unsigned i = 0; i < 3; i++)
        assert_true(cq_take(e, &e->ioq, &c, true));
    assert_false(cq_take(e, &e->ioq, &c, true));
    /* Deleting the SQ waits for its requests. */
    assert_int_equal(delete_q(e, 0x00, 1), S_OK);
    assert_int_equal(e->blk->npending, 0);
    unsigned got = 0;
    while (cq_take(e, &e->ioq, &c, true))
        got++;
    assert_int_equal(got, 5);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 1, 1), S_OK);
    e->ioq.sq_tail = 0;
    /* A write with FUA: the flush follows only when the write is done. */
    sqe_init(s, 0x01, 1);
    sqe_set(s, DATA_GPA, 0, 0, 0, 1u << 30);
    sq_put(e, &e->ioq, s);
    sq_ring(e, &e->ioq);
    assert_int_equal(e->blk->npending, 1);
    assert_int_equal(fake_blk_complete(e->blk, 1), 1);
    assert_int_equal(e->blk->npending, 1); /* the flush */
    assert_false(cq_take(e, &e->ioq, &c, true));
    assert_int_equal(fake_blk_complete(e->blk, 1), 1);
    assert_true(cq_take(e, &e->ioq, &c, true));
    /* A controller reset with requests in flight drains them first. */
    for (unsigned i = 0; i < 4; i++) {
        sqe_init(s, 0x02, 1);
        sqe_set(s, DATA_GPA, 0, i, 0, 0);
        sq_put(e, &e->ioq, s);
    }
    sq_ring(e, &e->ioq);
    assert_int_equal(e->blk->npending, 4);
    disable(e);
    assert_int_equal(e->blk->npending, 0);
    e->blk->defer = false;
    /* The old I/O queues are gone after the reset. */
    io_setup(e, 16);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
}

struct completer {
    struct fake_blk *blk;
    atomic_bool stop;
};

static void *completer_main(void *arg)
{
    struct completer *c = arg;
    while (!atomic_load(&c->stop))
        fake_blk_complete(c->blk, 1);
    return NULL;
}

static void test_completions_on_another_thread(void **state)
{
    struct env *e = *state;
    io_setup(e, 64);
    e->blk->defer = true;
    struct completer comp = {.blk = e->blk};
    atomic_init(&comp.stop, false);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, completer_main, &comp), 0);
    unsigned submitted = 0, completed = 0;
    uint8_t s[64];
    struct cqe c;
    while (completed < 2000) {
        if (submitted < 2000 && submitted - completed < 48) {
            sqe_init(s, submitted % 3 ? 0x02 : 0x01, 1);
            sqe_set(s, DATA_GPA + (submitted % 16) * 0x1000, 0, submitted % 1000, 0, 0);
            sq_put(e, &e->ioq, s);
            sq_ring(e, &e->ioq);
            submitted++;
        }
        while (cq_take(e, &e->ioq, &c, true)) {
            assert_int_equal(c.status, S_OK);
            completed++;
        }
    }
    atomic_store(&comp.stop, true);
    pthread_join(t, NULL);
    e->blk->defer = false;
    assert_int_equal(e->blk->npending, 0);
}

/* ---- tests: interrupts ---- */

static void test_intx(void **state)
{
    struct env *e = *state;
    io_setup(e, 16);
    /* Admin completions so far were consumed: line low. */
    assert_false(e->intx);
    uint8_t s[64];
    sqe_init(s, 0x02, 1);
    sqe_set(s, DATA_GPA, 0, 0, 0, 0);
    sq_put(e, &e->ioq, s);
    sq_ring(e, &e->ioq);
    assert_true(e->intx);
    assert_true(cfg_rd(e, PCI_REG_STATUS, 2) & PCI_STS_INTX);
    /* INTMS masks it, INTMC unmasks it. */
    wr(e, NVME_REG_INTMS, 4, 1);
    assert_false(e->intx);
    wr(e, NVME_REG_INTMC, 4, 1);
    assert_true(e->intx);
    struct cqe c;
    assert_true(cq_take(e, &e->ioq, &c, true));
    assert_false(e->intx);
    /* A CQ without IEN never interrupts. */
    assert_int_equal(create_cq(e, 2, IOCQ_GPA + 0x1000, 16, 1), S_OK);
    assert_int_equal(create_sq(e, 2, IOSQ_GPA + 0x1000, 16, 2, 1), S_OK);
    struct queue q2 = {.qid = 2,
                       .sq_gpa = IOSQ_GPA + 0x1000,
                       .cq_gpa = IOCQ_GPA + 0x1000,
                       .sq_size = 16,
                       .cq_size = 16,
                       .phase = true};
    memset(e->ram + q2.cq_gpa, 0, 256);
    assert_int_equal(cmd(e, &q2, s, NULL), S_OK);
    assert_false(e->intx);
    assert_int_equal(e->nmsi, 0);
    /* Deleting a CQ with unconsumed entries lowers its share of the line. */
    sq_put(e, &e->ioq, s);
    sq_ring(e, &e->ioq);
    assert_true(e->intx);
    assert_int_equal(delete_q(e, 0x00, 1), S_OK);
    assert_int_equal(delete_q(e, 0x04, 1), S_OK);
    assert_false(e->intx);
}

static void msix_vector(struct env *e, unsigned v, uint32_t data)
{
    wr(e, NVME_MSIX_TABLE + 16 * v, 8, 0xfee00000u);
    wr(e, NVME_MSIX_TABLE + 16 * v + 8, 4, data);
    wr(e, NVME_MSIX_TABLE + 16 * v + 12, 4, 0);
}

static void test_msix(void **state)
{
    struct env *e = *state;
    unsigned cap = cfg_rd(e, PCI_REG_CAP_PTR, 1);
    cfg_wr(e, cap + 2, 2, 0x8000);
    msix_vector(e, 0, 0x40);
    msix_vector(e, 5, 0x45);
    assert_int_equal(rd(e, NVME_MSIX_TABLE + 16 * 5 + 8, 4), 0x45);
    enable(e);
    unsigned before = e->nmsi;
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(e->nmsi, before + 1);
    assert_int_equal(e->msi[e->nmsi - 1].data, 0x40);
    assert_false(e->intx); /* never INTx while MSI-X is on */
    /* Vector out of range; then a CQ on vector 5. */
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 3 | (uint32_t)NVME_MSIX_VECTORS << 16),
                     S_BAD_VECTOR);
    memset(e->ram + IOCQ_GPA, 0, 256);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, 16, 3 | 5u << 16), S_OK);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, 16, 1, 1), S_OK);
    e->ioq = (struct queue){.qid = 1,
                            .sq_gpa = IOSQ_GPA,
                            .cq_gpa = IOCQ_GPA,
                            .sq_size = 16,
                            .cq_size = 16,
                            .phase = true};
    before = e->nmsi;
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(e->nmsi, before + 1);
    assert_int_equal(e->msi[e->nmsi - 1].data, 0x45);
    /* Masked vector: pending bit, delivered on unmask. */
    wr(e, NVME_MSIX_TABLE + 16 * 5 + 12, 4, 1);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(e->nmsi, before + 1);
    assert_int_equal(rd(e, NVME_MSIX_PBA, 8), 1u << 5);
    wr(e, NVME_MSIX_TABLE + 16 * 5 + 12, 4, 0);
    assert_int_equal(e->nmsi, before + 2);
    assert_int_equal(rd(e, NVME_MSIX_PBA, 8), 0);
    /* PBA writes are ignored. */
    wr(e, NVME_MSIX_PBA, 8, ~0ull);
    assert_int_equal(rd(e, NVME_MSIX_PBA, 8), 0);
    /* A device reset turns MSI-X off and empties everything. */
    nvme_reset(e->n);
    assert_int_equal(rd(e, NVME_REG_CSTS, 4), 0);
    assert_int_equal(rd(e, NVME_REG_AQA, 4), 0);
    assert_int_equal(cfg_rd(e, cap + 2, 2) & 0x8000, 0);
    assert_int_equal(rd(e, NVME_MSIX_TABLE + 12, 4), 1);
}

static void test_bus_master_gates_dma(void **state)
{
    struct env *e = *state;
    enable(e);
    cfg_wr(e, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    uint8_t s[64];
    sqe_init(s, 0x06, 0);
    sqe_set(s, DATA_GPA, 0, 1, 0, 0);
    assert_int_equal(cmd(e, &e->aq, s, NULL), S_NONE);
    cfg_wr(e, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    sq_ring(e, &e->aq);
    struct cqe c;
    assert_true(cq_take(e, &e->aq, &c, true));
    assert_int_equal(c.status, S_OK);
}

/* A long run of random register writes and queue entries: nothing breaks. */
static void test_hostile_random(void **state)
{
    struct env *e = *state;
    io_setup(e, 8);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (unsigned i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned what = x % 8;
        if (what < 3) {
            /* A random entry into a random queue slot, then ring. */
            struct queue *q = (x >> 8) & 1 ? &e->ioq : &e->aq;
            uint8_t s[64];
            for (unsigned k = 0; k < 64; k++)
                s[k] = (uint8_t)(x >> (k % 56));
            s[0] = (uint8_t)((x >> 20) % 16);
            put32(s + 4, (x >> 30) & 1 ? 1 : (uint32_t)(x >> 32));
            put64(s + 24, (x >> 12) % RAM_SIZE);
            put64(s + 32, (x >> 16) % RAM_SIZE);
            sq_put(e, q, s);
            sq_ring(e, q);
        } else if (what < 5) {
            struct cqe c;
            while (cq_take(e, &e->ioq, &c, true))
                ;
            while (cq_take(e, &e->aq, &c, true))
                ;
        } else if (what == 5) {
            wr(e, 0x1000 + ((x >> 8) % 0x400) * 4, 4, (uint32_t)(x >> 40) % 32);
        } else if (what == 6) {
            wr(e, ((x >> 8) % 0x10) * 4, 4, (uint32_t)(x >> 32));
        } else {
            rd(e, ((x >> 8) % NVME_BAR_SIZE) & ~3ull, 4);
        }
        if (!(rd(e, NVME_REG_CSTS, 4) & 1) && (x >> 50) % 64 == 0) {
            disable(e);
            io_setup(e, 8);
        }
    }
}

/* ---- tests: shadow doorbells (Doorbell Buffer Config, NVMe 1.3 §5.7, §7.13) ---- */

static void rec_backing(void *ctx, uint16_t qid, bool on)
{
    struct env *e = ctx;
    assert_true(qid >= 1 && qid <= NVME_MAX_IO_QUEUES);
    e->db_on[qid] = on;
    e->nbacking++;
}

static void rec_kick_later(void *ctx, uint16_t qid)
{
    struct env *e = ctx;
    assert_true(qid >= 1 && qid <= NVME_MAX_IO_QUEUES);
    e->kick_later[qid]++;
}

static void hooks_install(struct env *e)
{
    struct nvme_hooks h = {.ctx = e, .doorbell_backing = rec_backing, .kick_later = rec_kick_later};
    nvme_set_hooks(e->n, &h);
}

static uint16_t dbbuf_cmd(struct env *e, uint64_t dbs, uint64_t eis, uint8_t flags)
{
    uint8_t s[64];
    sqe_init(s, 0x7c, 0);
    s[1] = flags;
    sqe_set(s, dbs, eis, 0, 0, 0);
    return cmd(e, &e->aq, s, NULL);
}

/* A queue's slot in the shadow doorbell or the EventIdx page (CAP.DSTRD 0). */
static uint8_t *slot(struct env *e, uint64_t page, uint16_t qid, bool cq)
{
    return e->ram + page + 8u * qid + (cq ? 4u : 0u);
}

static uint32_t slot_get(struct env *e, uint64_t page, uint16_t qid, bool cq)
{
    uint32_t raw = __atomic_load_n((uint32_t *)(void *)slot(e, page, qid, cq), __ATOMIC_ACQUIRE);
    return le32((const uint8_t *)&raw);
}

static void slot_set(struct env *e, uint64_t page, uint16_t qid, bool cq, uint32_t v)
{
    uint8_t le[4];
    uint32_t raw;
    put32(le, v);
    memcpy(&raw, le, 4);
    __atomic_store_n((uint32_t *)(void *)slot(e, page, qid, cq), raw, __ATOMIC_RELEASE);
}

/* Linux's nvme_dbbuf_need_event. */
static bool need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

/*
 * Linux's nvme_dbbuf_update_and_check_event: the new value into the
 * shadow doorbell, full barrier, then EventIdx decides whether the driver
 * must also ring.
 */
static bool db_update(struct env *e, uint16_t qid, bool cq, uint32_t v)
{
    uint16_t old = (uint16_t)slot_get(e, DBS_GPA, qid, cq);
    slot_set(e, DBS_GPA, qid, cq, v);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return need_event((uint16_t)slot_get(e, EIS_GPA, qid, cq), (uint16_t)v, old);
}

/* An SQ tail doorbell as the guest reaches it: the ioeventfd while the machine backs it, else the
 * register. */
static void sq_doorbell(struct env *e, struct queue *q)
{
    e->sq_rings++;
    if (e->db_on[q->qid])
        nvme_kick(e->n, q->qid);
    else
        wr(e, 0x1000 + 8u * q->qid, 4, q->sq_tail);
}

/* Publishes the tail as Linux does with shadow doorbells; rings only when asked to. */
static bool sq_ring_shadow(struct env *e, struct queue *q)
{
    bool ring = db_update(e, q->qid, false, q->sq_tail);
    if (ring)
        sq_doorbell(e, q);
    return ring;
}

/* Takes every new completion, then publishes the head once (nvme_ring_cq_doorbell). */
static unsigned cq_drain_shadow(struct env *e, struct queue *q, struct cqe *last)
{
    unsigned got = 0;
    struct cqe c;
    while (cq_take(e, q, &c, false)) {
        got++;
        if (last)
            *last = c;
    }
    if (got && db_update(e, q->qid, true, q->cq_head)) {
        e->cq_rings++;
        wr(e, 0x1000 + 8u * q->qid + 4, 4, q->cq_head);
    }
    return got;
}

static uint16_t put_read(struct env *e, struct queue *q, uint64_t slba, uint64_t gpa)
{
    uint8_t s[64];
    sqe_init(s, 0x02, 1);
    sqe_set(s, gpa, 0, (uint32_t)slba, 0, 0);
    return sq_put(e, q, s);
}

/*
 * Controller up with the machine's hooks recorded, I/O queue pair 1 (SQ
 * and CQ sizes) on MSI-X vector 1 or INTx, and the shadow doorbells set
 * on pages that held garbage.
 */
static void dbbuf_up(struct env *e, uint32_t sq_size, uint32_t cq_size, bool msix)
{
    hooks_install(e);
    if (msix) {
        unsigned cap = cfg_rd(e, PCI_REG_CAP_PTR, 1);
        cfg_wr(e, cap + 2, 2, 0x8000);
        msix_vector(e, 0, 0x40);
        msix_vector(e, 1, 0x41);
    }
    enable(e);
    memset(e->ram + IOCQ_GPA, 0, cq_size * 16);
    assert_int_equal(create_cq(e, 1, IOCQ_GPA, cq_size, 0x3 | (msix ? 1u << 16 : 0)), S_OK);
    assert_int_equal(create_sq(e, 1, IOSQ_GPA, sq_size, 1, 1), S_OK);
    e->ioq = (struct queue){.qid = 1,
                            .sq_gpa = IOSQ_GPA,
                            .cq_gpa = IOCQ_GPA,
                            .sq_size = sq_size,
                            .cq_size = cq_size,
                            .phase = true};
    memset(e->ram + DBS_GPA, 0xee, 4096);
    memset(e->ram + EIS_GPA, 0xee, 4096);
    assert_false(e->db_on[1]);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA, 0), S_OK);
    assert_true(e->db_on[1]);
    e->sq_rings = e->cq_rings = 0;
}

static void test_dbbuf_config(void **state)
{
    struct env *e = *state;
    hooks_install(e);
    io_setup(e, 16);
    /* Offered: Identify OACS bit 8. */
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(le16(e->ram + DATA_GPA + 256), 1u << 8);
    memset(e->ram + DBS_GPA, 0xee, 8192);
    /* Refused: each buffer a page-aligned page of RAM, PRPs only. Nothing changes. */
    assert_int_equal(dbbuf_cmd(e, DBS_GPA + 8, EIS_GPA, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA + 0x800, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, RAM_SIZE, EIS_GPA, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, RAM_SIZE, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, 1ull << 52, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, UINT64_MAX & ~0xfffull, EIS_GPA, 0), S_BAD_FIELD);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA, 0x40), S_BAD_FIELD); /* PSDT: SGL */
    assert_int_equal(e->nbacking, 0);
    assert_int_equal(slot_get(e, DBS_GPA, 1, false), 0xeeeeeeeeu);
    /* So the register doorbells still carry the values. */
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    /* The last page of RAM is a page of RAM. */
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, RAM_SIZE - 4096, 0), S_OK);
    assert_true(e->db_on[1]);
    /* Set again (elsewhere): the I/O queue's slots get the controller's tail
     * and head, and so does EventIdx; the admin queue's are left alone. */
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA, 0), S_OK);
    assert_true(e->db_on[1]);
    assert_int_equal(slot_get(e, DBS_GPA, 1, false), 1);
    assert_int_equal(slot_get(e, DBS_GPA, 1, true), 1);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 1);
    assert_int_equal(slot_get(e, EIS_GPA, 1, true), 1);
    assert_int_equal(slot_get(e, DBS_GPA, 0, false), 0xeeeeeeeeu);
    assert_int_equal(slot_get(e, EIS_GPA, 0, true), 0xeeeeeeeeu);
    assert_int_equal(slot_get(e, DBS_GPA, 2, false), 0xeeeeeeeeu);
    /* The admin queue keeps its register doorbells: its shadow slots mean nothing. */
    slot_set(e, DBS_GPA, 0, false, 3);
    assert_int_equal(feature(e, 0x0a, 0x07, 0, NULL), S_OK);
    /* Queues created now use the buffers from entry 0; deleting the SQ gives its doorbell back. */
    memset(e->ram + IOCQ_GPA + 0x1000, 0, 16 * 16);
    assert_int_equal(create_cq(e, 2, IOCQ_GPA + 0x1000, 16, 0x3), S_OK);
    assert_int_equal(slot_get(e, DBS_GPA, 2, true), 0);
    assert_false(e->db_on[2]);
    assert_int_equal(create_sq(e, 2, IOSQ_GPA + 0x8000, 16, 2, 1), S_OK);
    assert_true(e->db_on[2]);
    assert_int_equal(slot_get(e, DBS_GPA, 2, false), 0);
    assert_int_equal(slot_get(e, EIS_GPA, 2, false), 0);
    struct queue q2 = {.qid = 2,
                       .sq_gpa = IOSQ_GPA + 0x8000,
                       .cq_gpa = IOCQ_GPA + 0x1000,
                       .sq_size = 16,
                       .cq_size = 16,
                       .phase = true};
    put_read(e, &q2, 5, DATA_GPA);
    assert_true(sq_ring_shadow(e, &q2));
    struct cqe c;
    assert_int_equal(cq_drain_shadow(e, &q2, &c), 1);
    assert_int_equal(c.status, S_OK);
    assert_int_equal(c.sqid, 2);
    assert_int_equal(delete_q(e, 0x00, 2), S_OK);
    assert_false(e->db_on[2]);
    assert_true(e->db_on[1]);
    assert_int_equal(delete_q(e, 0x04, 2), S_OK);
}

static void test_dbbuf_not_offered(void **state)
{
    struct env *e = *state;
    hooks_install(e);
    nvme_set_dbbuf(e->n, false);
    io_setup(e, 16);
    assert_int_equal(identify(e, 1, 0, DATA_GPA), S_OK);
    assert_int_equal(le16(e->ram + DATA_GPA + 256), 0);
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA, 0), S_BAD_OPCODE);
    assert_int_equal(e->nbacking, 0);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
}

static void test_dbbuf_shadow_tail(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 16, true);
    assert_int_equal(slot_get(e, DBS_GPA, 1, false), 0);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 0);
    /* EventIdx 0 is the driver's old tail: it rings, here the ioeventfd. */
    uint16_t cid = put_read(e, &e->ioq, 3, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    struct cqe c;
    assert_int_equal(cq_drain_shadow(e, &e->ioq, &c), 1);
    assert_int_equal(c.cid, cid);
    assert_int_equal(c.status, S_OK);
    assert_int_equal(c.sqhd, 1);
    assert_memory_equal(e->ram + DATA_GPA, e->blk->disk + 3 * 512, 512);
    /* EventIdx now holds the tail the controller consumed. */
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 1);
    /* A batch published once: all of it runs. */
    for (unsigned i = 0; i < 3; i++)
        put_read(e, &e->ioq, 10 + i, DATA_GPA + 0x1000 * i);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 3);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 4);
    /* A register write is a kick only: its value is not the tail (an ioeventfd would drop it). */
    put_read(e, &e->ioq, 20, DATA_GPA);
    assert_true(db_update(e, 1, false, e->ioq.sq_tail));
    wr(e, 0x1000 + 8, 4, 9);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, &c), 1);
    assert_int_equal(c.sqhd, 5);
    /* The shadow alone is no doorbell: nothing runs until the kick EventIdx asked for. */
    put_read(e, &e->ioq, 21, DATA_GPA);
    assert_true(db_update(e, 1, false, e->ioq.sq_tail));
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 0);
    nvme_kick(e->n, 1);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 1);
    /* Many I/Os: an MSI for each, but the CQ head doorbell is rung only
     * when the head passes EventIdx, about once a lap of the CQ. */
    unsigned msi = e->nmsi, cq_rings = e->cq_rings;
    for (unsigned i = 0; i < 40; i++) {
        put_read(e, &e->ioq, i, DATA_GPA);
        assert_true(sq_ring_shadow(e, &e->ioq)); /* the controller was idle */
        assert_int_equal(cq_drain_shadow(e, &e->ioq, &c), 1);
        assert_int_equal(c.status, S_OK);
    }
    assert_int_equal(e->nmsi, msi + 40);
    assert_in_range(e->cq_rings - cq_rings, 1, 3);
    assert_int_equal(e->kick_later[1], 0);
    assert_int_equal(e->blk->nread, 46);
}

/* A backend that, on its next `left` submissions, lets "another vCPU" submit first. */
struct race {
    struct env *e;
    unsigned left;
    bool rang;
    uint16_t cid;
    bool consume; /* also consume completions and publish the CQ head */
};
static struct race race;
static struct blk_backend_ops racing_ops;

static void racing_submit(struct blk_backend *b, struct blk_req *r)
{
    struct env *e = race.e;
    if (race.left) {
        race.left--;
        /* The driver cannot ring from here (the controller is mid-pass); it records whether it
         * would. */
        race.cid = put_read(e, &e->ioq, 7, DATA_GPA + 0x1000);
        race.rang |= db_update(e, 1, false, e->ioq.sq_tail);
    }
    fake_blk_submit(b, r);
}

static void racing_install(struct env *e, unsigned left)
{
    race = (struct race){.e = e, .left = left};
    racing_ops = fake_blk_ops;
    racing_ops.submit = racing_submit;
    e->blk->b.ops = &racing_ops;
}

static void test_dbbuf_recheck(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 16, true);
    racing_install(e, 1);
    /*
     * The guest publishes a second entry while the controller works on
     * the first. It still sees the old EventIdx (0, before the pass), so it
     * does not ring; the controller's read after it updates EventIdx finds it.
     */
    uint16_t first = put_read(e, &e->ioq, 3, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(race.left, 0);
    assert_false(race.rang);
    struct cqe c;
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(c.cid, first);
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(c.cid, race.cid);
    assert_int_equal(c.sqhd, 2);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 2);
    assert_int_equal(e->sq_rings, 1);
    /* And after the pass, the next submission rings again. */
    put_read(e, &e->ioq, 4, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(e->blk->nread, 3);
}

static void test_dbbuf_bounded_pass(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 4, 16, true);
    /* The guest adds an entry for each one fetched: one call does a queue's worth (4). */
    racing_install(e, 10);
    put_read(e, &e->ioq, 0, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->nread, 4);
    assert_int_equal(e->kick_later[1], 1);
    /* The machine kicks again (the I/O thread, from its eventfd) until it is done. */
    unsigned kicks = 0;
    while (e->kick_later[1]) {
        e->kick_later[1]--;
        nvme_kick(e->n, 1);
        assert_true(++kicks < 10);
    }
    assert_int_equal(kicks, 2);
    assert_int_equal(e->blk->nread, 11);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 11);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 11 % 4);
}

static void test_dbbuf_cq_room(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 4, 4, true); /* the CQ holds 3 */
    struct cqe c;
    /* The first head update passes EventIdx 0: rung once. */
    put_read(e, &e->ioq, 0, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 1);
    assert_int_equal(e->cq_rings, 1);
    /* Three fill the CQ; consumed, the head is published without a doorbell. */
    for (unsigned i = 0; i < 3; i++)
        put_read(e, &e->ioq, 1 + i, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->nread, 4);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 3);
    assert_int_equal(e->cq_rings, 1);
    /* The controller thinks the CQ full; it reads the shadow head and finds room. */
    for (unsigned i = 0; i < 2; i++)
        put_read(e, &e->ioq, 4 + i, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->nread, 6);
    assert_int_equal(e->cq_rings, 1);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 2);
    /* Really full: three run, the fourth waits and EventIdx asks for the next head update. */
    for (unsigned i = 0; i < 3; i++)
        put_read(e, &e->ioq, 6 + i, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->nread, 9);
    uint16_t held = put_read(e, &e->ioq, 9, DATA_GPA);
    sq_ring_shadow(e, &e->ioq);
    assert_int_equal(e->blk->nread, 9);
    assert_int_equal(slot_get(e, EIS_GPA, 1, true), e->ioq.cq_head);
    /* So consuming them rings the head doorbell, which resumes the held command. */
    unsigned rings = e->cq_rings;
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 3);
    assert_int_equal(e->cq_rings, rings + 1);
    assert_int_equal(e->blk->nread, 10);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, &c), 1);
    assert_int_equal(c.cid, held);
}

static void test_dbbuf_intx(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 16, false);
    for (unsigned i = 0; i < 5; i++) {
        put_read(e, &e->ioq, i, DATA_GPA);
        assert_true(sq_ring_shadow(e, &e->ioq));
        /* Asserted: EventIdx is the head, so consuming rings and the level drops. */
        assert_true(e->intx);
        assert_int_equal(slot_get(e, EIS_GPA, 1, true), e->ioq.cq_head);
        assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 1);
        assert_false(e->intx);
    }
    assert_int_equal(e->cq_rings, 5);
}

/*
 * INTx: a submission waits for CQ room; the guest consumes and publishes
 * its head, and before it checks EventIdx an admin completion re-arms the
 * CQ (taking that head, EventIdx = head), so the guest does not ring. The
 * controller must run the waiting SQ again by itself.
 */
static void test_dbbuf_intx_room_without_ring(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 4, false); /* the CQ holds 3 */
    for (unsigned i = 0; i < 3; i++)
        put_read(e, &e->ioq, i, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->nread, 3);
    uint16_t held = put_read(e, &e->ioq, 3, DATA_GPA);
    sq_ring_shadow(e, &e->ioq);
    assert_int_equal(e->blk->nread, 3); /* no room */
    struct cqe c;
    for (unsigned i = 0; i < 3; i++)
        assert_true(cq_take(e, &e->ioq, &c, false));
    slot_set(e, DBS_GPA, 1, true, e->ioq.cq_head); /* published, not yet checked */
    unsigned rings = e->cq_rings;
    memset(e->kick_later, 0, sizeof(e->kick_later));
    uint32_t dw0;
    assert_int_equal(feature(e, 0x0a, 0x07, 0, &dw0), S_OK); /* Get Features: an admin completion */
    assert_int_equal(slot_get(e, EIS_GPA, 1, true),
                     e->ioq.cq_head); /* so the guest skips the ring */
    assert_int_equal(e->cq_rings, rings);
    assert_true(e->kick_later[1] >= 1);
    nvme_kick(e->n, 1);
    assert_int_equal(e->blk->nread, 4);
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(c.cid, held);
}

static void test_dbbuf_bad_shadow(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 4, true);
    struct cqe c;
    /* A tail past the queue: ignored. */
    put_read(e, &e->ioq, 1, DATA_GPA);
    slot_set(e, DBS_GPA, 1, false, 16);
    nvme_kick(e->n, 1);
    slot_set(e, DBS_GPA, 1, false, 0xffffffffu);
    nvme_kick(e->n, 1);
    wr(e, 0x1000 + 8, 4, 1);
    assert_false(cq_take(e, &e->ioq, &c, false));
    slot_set(e, DBS_GPA, 1, false, 1);
    nvme_kick(e->n, 1);
    assert_int_equal(cq_drain_shadow(e, &e->ioq, &c), 1);
    assert_int_equal(c.status, S_OK);
    /* A CQ head outside [head, tail] is ignored: three reads at the
     * backend (nothing posted yet), so a fourth finds no room and waits. */
    e->blk->defer = true;
    for (unsigned i = 0; i < 3; i++)
        put_read(e, &e->ioq, 2 + i, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(e->blk->npending, 3);
    slot_set(e, DBS_GPA, 1, true, (e->ioq.cq_head + 2) % 4);
    uint16_t held = put_read(e, &e->ioq, 5, DATA_GPA);
    sq_ring_shadow(e, &e->ioq);
    assert_int_equal(e->blk->npending, 3);
    e->blk->defer = false;
    assert_int_equal(fake_blk_complete(e->blk, 3), 3);
    for (unsigned i = 0; i < 3; i++)
        assert_true(cq_take(e, &e->ioq, &c, false));
    /* The register doorbell still sets the head; the held one runs. */
    wr(e, 0x1000 + 12, 4, e->ioq.cq_head);
    assert_int_equal(e->blk->nread, 5);
    assert_true(cq_take(e, &e->ioq, &c, false));
    assert_int_equal(c.cid, held);
    /* Kicks for queues without shadow doorbells, or none, do nothing. */
    nvme_kick(e->n, 0);
    nvme_kick(e->n, 2);
    nvme_kick(e->n, NVME_MAX_IO_QUEUES + 1);
    nvme_kick(e->n, UINT16_MAX);
}

static void test_dbbuf_reset_clears(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 16, false);
    put_read(e, &e->ioq, 0, DATA_GPA);
    assert_true(sq_ring_shadow(e, &e->ioq));
    assert_int_equal(cq_drain_shadow(e, &e->ioq, NULL), 1);
    /* CC.EN 1 -> 0: the doorbell goes back to the register. */
    disable(e);
    assert_false(e->db_on[1]);
    /* New queues use register doorbells; the pages are not touched. */
    memset(e->ram + DBS_GPA, 0xee, 8192);
    io_setup(e, 16);
    assert_false(e->db_on[1]);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(rw(e, 0x02, 1, 1, DATA_GPA, 0), S_OK);
    assert_int_equal(slot_get(e, DBS_GPA, 1, false), 0xeeeeeeeeu);
    assert_int_equal(slot_get(e, EIS_GPA, 1, false), 0xeeeeeeeeu);
    /* Set once more, then the device reset (state driver) clears it too. */
    assert_int_equal(dbbuf_cmd(e, DBS_GPA, EIS_GPA, 0), S_OK);
    assert_true(e->db_on[1]);
    assert_int_equal(slot_get(e, DBS_GPA, 1, false), 2);
    nvme_reset(e->n);
    assert_false(e->db_on[1]);
    io_setup(e, 16);
    assert_false(e->db_on[1]);
    assert_int_equal(rw(e, 0x02, 0, 1, DATA_GPA, 0), S_OK);
}

/* ---- migration of the shadow doorbells ---- */

static struct env *env_new(void)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    env_build(e, DISK_SIZE, 512, 0x20);
    return e;
}

static void env_free(struct env *e)
{
    void *st = e;
    teardown(&st);
}

static int load_bytes(struct env *e, const uint8_t *buf, size_t len, uint32_t version)
{
    struct mig_in in;
    mig_in_init(&in, buf, len);
    return nvme_load(e->n, &in, version);
}

/* b becomes a's migration target: RAM and the driver's view copied. */
static void follow(struct env *b, const struct env *a)
{
    memcpy(b->ram, a->ram, RAM_SIZE);
    b->aq = a->aq;
    b->ioq = a->ioq;
    b->next_cid = a->next_cid;
}

static void test_dbbuf_migration(void **state)
{
    struct env *a = *state;
    /* Without the buffers: version 2 writes version 1's bytes; both load. */
    io_setup(a, 16);
    assert_int_equal(rw(a, 0x02, 0, 1, DATA_GPA, 0), S_OK);
    nvme_quiesce(a->n);
    struct mig_out o1;
    mig_out_init(&o1);
    assert_int_equal(nvme_save(a->n, &o1), 0);
    struct mig_out o1v1;
    mig_out_init(&o1v1);
    assert_int_equal(nvme_save_version(a->n, &o1v1, 1), 0); /* for an older target */
    assert_int_equal(o1v1.len, o1.len);
    assert_memory_equal(o1v1.buf, o1.buf, o1.len);
    mig_out_free(&o1v1);
    for (uint32_t v = 1; v <= 2; v++) {
        struct env *b = env_new();
        hooks_install(b);
        follow(b, a);
        assert_int_equal(load_bytes(b, o1.buf, o1.len, v), 0);
        assert_false(b->db_on[1]);
        nvme_resume(b->n);
        assert_int_equal(rw(b, 0x02, 1, 1, DATA_GPA, 0), S_OK);
        assert_int_equal(load_bytes(b, o1.buf, o1.len, 3), -EPROTO);
        assert_int_equal(load_bytes(b, o1.buf, o1.len, 0), -EPROTO);
        env_free(b);
    }
    nvme_resume(a->n);
    disable(a);

    /* With them: a submission published while quiesced (its kick dropped). */
    dbbuf_up(a, 16, 16, true);
    put_read(a, &a->ioq, 2, DATA_GPA);
    assert_true(sq_ring_shadow(a, &a->ioq));
    assert_int_equal(cq_drain_shadow(a, &a->ioq, NULL), 1);
    nvme_quiesce(a->n);
    uint16_t late = put_read(a, &a->ioq, 5, DATA_GPA + 0x1000);
    assert_true(sq_ring_shadow(a, &a->ioq));
    struct cqe c;
    assert_false(cq_take(a, &a->ioq, &c, false));
    struct mig_out o2;
    mig_out_init(&o2);
    struct mig_out o2v1;
    mig_out_init(&o2v1);
    /* Version 1 cannot carry the buffers: refused, the guest stays here. */
    assert_int_equal(nvme_save_version(a->n, &o2v1, 1), -EPROTO);
    mig_out_free(&o2v1);
    assert_int_equal(nvme_save(a->n, &o2), 0);
    assert_int_equal(o2.len, o1.len + 16); /* the two page addresses */
    assert_int_equal(le64(o2.buf + o2.len - 16), DBS_GPA);
    assert_int_equal(le64(o2.buf + o2.len - 8), EIS_GPA);

    struct env *b = env_new();
    hooks_install(b);
    follow(b, a);
    unsigned cap = cfg_rd(b, PCI_REG_CAP_PTR, 1);
    cfg_wr(b, cap + 2, 2, 0x8000);
    assert_int_equal(load_bytes(b, o2.buf, o2.len, 2), 0);
    assert_true(b->db_on[1]);
    /* The guest's shadow tail is newer than the payload's: not overwritten. */
    assert_int_equal(slot_get(b, DBS_GPA, 1, false), b->ioq.sq_tail);
    assert_false(cq_take(b, &b->ioq, &c, false));
    nvme_resume(b->n); /* reads the shadow: the late command runs */
    assert_int_equal(cq_drain_shadow(b, &b->ioq, &c), 1);
    assert_int_equal(c.cid, late);
    assert_memory_equal(b->ram + DATA_GPA + 0x1000, b->blk->disk + 5 * 512, 512);
    put_read(b, &b->ioq, 6, DATA_GPA);
    assert_true(sq_ring_shadow(b, &b->ioq));
    assert_int_equal(cq_drain_shadow(b, &b->ioq, &c), 1);
    assert_int_equal(c.status, S_OK);

    /* Refused: as version 1, cut short, misaligned, outside RAM, on a
     * target that does not offer them, or on a controller not ready. */
    struct env *t = env_new();
    hooks_install(t);
    follow(t, a);
    assert_int_equal(load_bytes(t, o2.buf, o2.len, 1), -EINVAL);
    assert_int_equal(load_bytes(t, o2.buf, o2.len - 8, 2), -EINVAL);
    assert_int_equal(load_bytes(t, o2.buf, o2.len - 1, 2), -EINVAL);
    uint8_t *p = malloc(o2.len + 1);
    assert_non_null(p);
    memcpy(p, o2.buf, o2.len);
    p[o2.len] = 0;
    assert_int_equal(load_bytes(t, p, o2.len + 1, 2), -EINVAL);
    p[o2.len - 16] |= 0x08;
    assert_int_equal(load_bytes(t, p, o2.len, 2), -EINVAL);
    p[o2.len - 16] = o2.buf[o2.len - 16];
    p[o2.len - 8 + 3] = 0x40; /* EventIdx at 1 GiB + ... */
    assert_int_equal(load_bytes(t, p, o2.len, 2), -EINVAL);
    p[o2.len - 8 + 3] = 0;
    assert_int_equal(load_bytes(t, p, o2.len, 2), 0);
    assert_true(t->db_on[1]);
    assert_int_equal(load_bytes(t, o1.buf, o1.len, 2), 0); /* a reload drops them */
    assert_false(t->db_on[1]);
    nvme_set_dbbuf(t->n, false);
    assert_int_equal(load_bytes(t, o2.buf, o2.len, 2), -EINVAL);
    assert_int_equal(load_bytes(t, o1.buf, o1.len, 2), 0);
    free(p);
    struct env *idle = env_new();
    nvme_quiesce(idle->n);
    struct mig_out o3;
    mig_out_init(&o3);
    assert_int_equal(nvme_save(idle->n, &o3), 0);
    mig_put_u64(&o3, DBS_GPA);
    mig_put_u64(&o3, EIS_GPA);
    assert_int_equal(load_bytes(idle, o3.buf, o3.len - 16, 2), 0);
    assert_int_equal(load_bytes(idle, o3.buf, o3.len, 2), -EINVAL);
    mig_out_free(&o3);
    env_free(idle);
    env_free(t);
    env_free(b);
    mig_out_free(&o1);
    mig_out_free(&o2);
}

/* ---- the I/O thread and a vCPU at once ---- */

struct kicker {
    struct env *e;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned pending;
    bool stop;
    pthread_t thread;
};

/* An eventfd and the thread reading it: kicks coalesce. */
static void kicker_post(struct kicker *k)
{
    pthread_mutex_lock(&k->lock);
    k->pending++;
    pthread_cond_signal(&k->cond);
    pthread_mutex_unlock(&k->lock);
}

static void *kicker_main(void *arg)
{
    struct kicker *k = arg;
    for (;;) {
        pthread_mutex_lock(&k->lock);
        while (!k->pending && !k->stop)
            pthread_cond_wait(&k->cond, &k->lock);
        bool go = k->pending != 0;
        k->pending = 0;
        pthread_mutex_unlock(&k->lock);
        if (!go)
            return NULL;
        nvme_kick(k->e->n, 1);
    }
}

static void kicker_later(void *ctx, uint16_t qid)
{
    (void)qid;
    kicker_post(ctx);
}

static void kicker_backing(void *ctx, uint16_t qid, bool on)
{
    (void)ctx, (void)qid, (void)on;
}

/* The next completion of q if its phase says new (the controller writes on another thread). */
static bool cq_take_sync(struct env *e, struct queue *q, struct cqe *c)
{
    uint8_t *p = e->ram + q->cq_gpa + (uint64_t)q->cq_head * 16;
    uint32_t raw = __atomic_load_n((uint32_t *)(void *)(p + 12), __ATOMIC_ACQUIRE);
    uint32_t dw3 = le32((const uint8_t *)&raw);
    if (((dw3 >> 16) & 1) != q->phase)
        return false;
    c->cid = (uint16_t)dw3;
    c->status = (uint16_t)((dw3 >> 17) & 0x3fff);
    if (++q->cq_head == q->cq_size) {
        q->cq_head = 0;
        q->phase = !q->phase;
    }
    return true;
}

static void test_dbbuf_threads(void **state)
{
    struct env *e = *state;
    dbbuf_up(e, 16, 16, true);
    struct kicker k = {.e = e};
    pthread_mutex_init(&k.lock, NULL);
    pthread_cond_init(&k.cond, NULL);
    struct nvme_hooks h = {
        .ctx = &k, .doorbell_backing = kicker_backing, .kick_later = kicker_later};
    nvme_set_hooks(e->n, &h);
    assert_int_equal(pthread_create(&k.thread, NULL, kicker_main, &k), 0);
    /*
     * The vCPU: up to 8 reads in flight, published the Linux way and rung
     * (to the kicker) only when EventIdx says so; completions consumed and
     * the head published the same way, its doorbell rung here; an admin
     * command now and then. A missed submission hangs: caught by the clock.
     */
    const unsigned total = 4000;
    unsigned sent = 0, done = 0, spins = 0, rings = 0;
    while (done < total) {
        while (sent < total && sent - done < 8) {
            put_read(e, &e->ioq, sent % 64, DATA_GPA + 0x1000 * (sent % 8));
            sent++;
            if (db_update(e, 1, false, e->ioq.sq_tail)) {
                rings++;
                kicker_post(&k);
            }
        }
        struct cqe c;
        unsigned got = 0;
        while (cq_take_sync(e, &e->ioq, &c)) {
            assert_int_equal(c.status, S_OK);
            got++;
        }
        if (got) {
            done += got;
            spins = 0;
            if (db_update(e, 1, true, e->ioq.cq_head))
                wr(e, 0x1000 + 12, 4, e->ioq.cq_head);
        } else {
            assert_true(++spins < 50000000u);
            sched_yield();
        }
        if (done % 256 == 0 && got)
            assert_int_equal(feature(e, 0x0a, 0x07, 0, NULL), S_OK);
    }
    pthread_mutex_lock(&k.lock);
    k.stop = true;
    pthread_cond_signal(&k.cond);
    pthread_mutex_unlock(&k.lock);
    pthread_join(k.thread, NULL);
    pthread_cond_destroy(&k.cond);
    pthread_mutex_destroy(&k.lock);
    nvme_set_hooks(e->n, NULL);
    assert_int_equal(e->blk->nread, total);
    assert_true(rings <= total);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pci_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enable_disable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identify_nul_pad, setup, teardown),
        cmocka_unit_test(test_init_rejects),
        cmocka_unit_test_setup_teardown(test_queue_create_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_write_prp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_prp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_zeroes_dsm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backend_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_features, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_events_and_bad_doorbells, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cq_full_holds_submissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deferred_backend_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_completions_on_another_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_intx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_msix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bus_master_gates_dma, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_not_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_shadow_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_recheck, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_bounded_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_cq_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_intx, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_intx_room_without_ring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_bad_shadow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_reset_clears, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_migration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbbuf_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
