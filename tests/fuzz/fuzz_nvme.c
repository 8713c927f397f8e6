/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the NVMe controller, driven the way a guest drives
 * it: BAR0 register and doorbell accesses, queue entries and PRP lists in
 * fuzzer-written guest RAM, configuration writes (bus mastering, MSI-X),
 * with the memory-disk backend completing inline or later, failing, and
 * completing out of order.
 *
 * The controller is built fresh for each input on 256 KiB of guest RAM and
 * a 64 KiB disk. Input: a sequence of records, op byte first:
 *   0 BAR write  off(2) size(1) value(8)     1 BAR read off(2) size(1)
 *   2 RAM write  gpa(3) len(1) bytes(len)    3 standard enable (admin queues)
 *   4 standard I/O queue pair 1 via admin commands
 *   5 submit one 64-byte entry at the driver's tail of queue q(1), ring
 *   6 consume completions of queue q(1) and ring its head
 *   7 complete n(1) deferred backend requests
 *   8 backend mode(1): defer on/off, failure injection
 *   9 config write off(1) value(2) (command register, MSI-X control)
 *  10 Doorbell Buffer Config a(1) b(1): shadow doorbells at page a % 80,
 *     EventIdx at page b % 80 (past RAM from 64), misaligned by 8 when the
 *     top bit is set
 *  11 shadow doorbell write slot(1) value(4) kick(1): slot % 66 of the
 *     shadow page; kick bit 0: nvme_kick(slot / 2), as an ioeventfd would
 *  12 run the kicks the controller asked for (kick_later)
 * Once the shadow doorbells are set, submitting (5) and consuming (6) on
 * the I/O queue publish the tail and head the way Linux does and ring
 * only when EventIdx asks, the SQ doorbell through nvme_kick while the
 * controller says it is backed (the machine's ioeventfd).
 * Checks: no crash, leak or sanitizer report; every backend request lies
 * inside the disk and every buffer inside guest RAM (the fake counts
 * violations; one aborts); nothing is left in flight after destroy.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/le.h"
#include "devices/nvme.h"
#include "../unit/nvme_fake_blk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE  (256u << 10)
#define DISK_SIZE (64u << 10)
#define ASQ       0x1000u
#define ACQ       0x2000u
#define IOSQ      0x3000u
#define IOCQ      0x4000u
#define QSIZE     8u

static uint8_t ram[RAM_SIZE] __attribute__((aligned(4096)));

struct drv {
    uint32_t tail[2], head[2];
    bool phase[2];
    uint16_t cid;
    uint64_t dbs, eis; /* the shadow pages the driver asked for, or 0 */
};

/* What the machine learns through nvme_hooks. */
static bool backed[NVME_MAX_IO_QUEUES + 1];
static unsigned later[NVME_MAX_IO_QUEUES + 1];

static void hook_backing(void *ctx, uint16_t qid, bool on)
{
    (void)ctx;
    if (qid < 1 || qid > NVME_MAX_IO_QUEUES)
        abort();
    backed[qid] = on;
}

static void hook_kick_later(void *ctx, uint16_t qid)
{
    (void)ctx;
    if (qid < 1 || qid > NVME_MAX_IO_QUEUES)
        abort();
    later[qid]++;
}

static const struct nvme_hooks hooks = {.doorbell_backing = hook_backing,
                                        .kick_later = hook_kick_later};

/* Linux's nvme_dbbuf_update_and_check_event on the driver's pages: ring? */
static bool shadow_update(const struct drv *d, unsigned slot, uint32_t v)
{
    uint8_t *db = ram + d->dbs + 4u * slot, *ei = ram + d->eis + 4u * slot;
    uint16_t old = (uint16_t)le32(db);
    put32(db, v);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t e = (uint16_t)le32(ei), nv = (uint16_t)v;
    return (uint16_t)(nv - e - 1) < (uint16_t)(nv - old);
}

struct input {
    const uint8_t *p;
    size_t left;
};

static bool take(struct input *in, void *dst, size_t n)
{
    if (in->left < n)
        return false;
    memcpy(dst, in->p, n);
    in->p += n;
    in->left -= n;
    return true;
}

static void msi_noop(void *ctx, uint64_t a, uint32_t d)
{
    (void)ctx, (void)a, (void)d;
}

static void level_noop(void *ctx, uint32_t gsi, bool level)
{
    (void)ctx, (void)gsi, (void)level;
}

static const struct irq_sink msi_sink = {.msi = msi_noop};
static const struct irq_sink intx_sink = {.set_level = level_noop};

static void submit(struct nvme_disk *n, struct drv *d, unsigned q, const uint8_t *sqe)
{
    uint64_t base = q ? IOSQ : ASQ;
    memcpy(ram + base + (uint64_t)d->tail[q] * 64, sqe, 64);
    d->tail[q] = (d->tail[q] + 1) % QSIZE;
    if (q && d->dbs && !shadow_update(d, 2 * q, d->tail[q]))
        return;
    if (q && backed[q])
        nvme_kick(n, (uint16_t)q);
    else
        nvme_bar_write(n, NVME_DOORBELL_BASE + 8u * q, 4, d->tail[q]);
}

static void consume(struct nvme_disk *n, struct drv *d, unsigned q)
{
    uint64_t base = q ? IOCQ : ACQ;
    for (unsigned i = 0; i < QSIZE; i++) {
        uint32_t dw3 = le32(ram + base + (uint64_t)d->head[q] * 16 + 12);
        if (((dw3 >> 16) & 1) != d->phase[q])
            break;
        if (++d->head[q] == QSIZE) {
            d->head[q] = 0;
            d->phase[q] = !d->phase[q];
        }
    }
    if (q && d->dbs && !shadow_update(d, 2 * q + 1, d->head[q]))
        return;
    nvme_bar_write(n, NVME_DOORBELL_BASE + 8u * q + 4, 4, d->head[q]);
}

/* Shadow doorbell page from a fuzz byte: mostly inside RAM, sometimes not, sometimes misaligned. */
static uint64_t page_of(uint8_t b)
{
    return (uint64_t)(b & 0x7f) % 80 * 4096 + (b & 0x80 ? 8 : 0);
}

static void dbbuf_config(struct nvme_disk *n, struct drv *d, uint8_t a, uint8_t b)
{
    uint8_t s[64];
    memset(s, 0, sizeof(s));
    s[0] = 0x7c;
    put16(s + 2, d->cid++);
    uint64_t dbs = page_of(a), eis = page_of(b);
    put64(s + 24, dbs);
    put64(s + 32, eis);
    submit(n, d, 0, s);
    /* What the driver then uses, right or wrong: RAM it may write. */
    if (dbs + 4096 <= RAM_SIZE && eis + 4096 <= RAM_SIZE && dbs && eis) {
        d->dbs = dbs;
        d->eis = eis;
    }
}

static void std_enable(struct nvme_disk *n, struct drv *d)
{
    memset(d, 0, sizeof(*d));
    d->phase[0] = d->phase[1] = true;
    nvme_bar_write(n, NVME_REG_CC, 4, 0);
    memset(ram + ACQ, 0, QSIZE * 16);
    nvme_bar_write(n, NVME_REG_AQA, 4, (QSIZE - 1) << 16 | (QSIZE - 1));
    nvme_bar_write(n, NVME_REG_ASQ, 8, ASQ);
    nvme_bar_write(n, NVME_REG_ACQ, 8, ACQ);
    nvme_bar_write(n, NVME_REG_CC, 4, 4u << 20 | 6u << 16 | 1);
}

static void std_io_queues(struct nvme_disk *n, struct drv *d)
{
    uint8_t s[64];
    memset(ram + IOCQ, 0, QSIZE * 16);
    d->tail[1] = d->head[1] = 0;
    d->phase[1] = true;
    memset(s, 0, sizeof(s));
    s[0] = 0x05;
    put16(s + 2, d->cid++);
    put64(s + 24, IOCQ);
    put32(s + 40, (QSIZE - 1) << 16 | 1);
    put32(s + 44, 3);
    submit(n, d, 0, s);
    memset(s, 0, sizeof(s));
    s[0] = 0x01;
    put16(s + 2, d->cid++);
    put64(s + 24, IOSQ);
    put32(s + 40, (QSIZE - 1) << 16 | 1);
    put32(s + 44, 1u << 16 | 1);
    submit(n, d, 0, s);
    consume(n, d, 0);
}

static void run(struct nvme_disk *n, struct pci_topology *topo, struct fake_blk *b,
                struct input *in)
{
    struct drv d = {.phase = {true, true}};
    uint8_t op;
    while (take(in, &op, 1)) {
        uint8_t buf[256], sz, q;
        uint16_t off;
        uint64_t v = 0;
        switch (op % 13) {
        case 0:
            if (!take(in, &off, 2) || !take(in, &sz, 1) || !take(in, &v, 8))
                return;
            nvme_bar_write(n, off % 0x4100u, 1u << (sz % 4), v);
            break;
        case 1:
            if (!take(in, &off, 2) || !take(in, &sz, 1))
                return;
            (void)nvme_bar_read(n, off % 0x4100u, 1u << (sz % 4));
            break;
        case 2: {
            uint8_t a[3], len;
            if (!take(in, a, 3) || !take(in, &len, 1) || !take(in, buf, len))
                return;
            uint32_t gpa = (a[0] | a[1] << 8 | (uint32_t)a[2] << 16) % RAM_SIZE;
            if (len > RAM_SIZE - gpa)
                len = (uint8_t)(RAM_SIZE - gpa);
            memcpy(ram + gpa, buf, len);
            break;
        }
        case 3:
            std_enable(n, &d);
            break;
        case 4:
            std_io_queues(n, &d);
            break;
        case 5:
            if (!take(in, &q, 1) || !take(in, buf, 64))
                return;
            put16(buf + 2, d.cid++);
            submit(n, &d, q & 1, buf);
            break;
        case 6:
            if (!take(in, &q, 1))
                return;
            consume(n, &d, q & 1);
            break;
        case 7:
            if (!take(in, &q, 1))
                return;
            fake_blk_complete(b, q);
            break;
        case 8:
            if (!take(in, &q, 1))
                return;
            b->defer = q & 1;
            b->fail_with = (q & 6) == 2 ? -EIO : (q & 6) == 4 ? -EROFS : 0;
            break;
        case 9: {
            uint8_t reg;
            uint16_t val;
            if (!take(in, &reg, 1) || !take(in, &val, 2))
                return;
            /* The command register, or the MSI-X capability's control word. */
            unsigned cfg = reg & 1 ? n->msix.cap + 2u : PCI_REG_COMMAND;
            pci_topology_cfg_write(topo, 0, 4, 0, cfg, 2, val);
            break;
        }
        case 10: {
            uint8_t ab[2];
            if (!take(in, ab, 2))
                return;
            dbbuf_config(n, &d, ab[0], ab[1]);
            break;
        }
        case 11: {
            uint8_t slot, kick;
            uint32_t val;
            if (!take(in, &slot, 1) || !take(in, &val, 4) || !take(in, &kick, 1))
                return;
            slot %= 66;
            if (d.dbs)
                put32(ram + d.dbs + 4u * slot, val);
            if (kick & 1)
                nvme_kick(n, slot / 2);
            break;
        }
        case 12:
            for (uint16_t qid = 1; qid <= NVME_MAX_IO_QUEUES; qid++) {
                unsigned k = later[qid];
                later[qid] = 0; /* a kick may ask for more: next time */
                while (k--)
                    nvme_kick(n, qid);
            }
            break;
        }
        if (b->nbad)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct nvme_disk n;
    struct pci_topology topo;
    struct guest_mem mem;
    struct c_nvme_disk spec = {.serial_number = "FUZZ", .string_pad = 0x20};

    memset(ram, 0, sizeof(ram));
    guest_mem_init_buffer(&mem, ram, sizeof(ram));
    struct fake_blk *b = fake_blk_new(DISK_SIZE, 512);
    if (!b)
        return 0;
    b->ram_lo = ram;
    b->ram_hi = ram + sizeof(ram);
    if (nvme_init(&n, "fuzz-nvme", &spec, &b->b, &mem, &msi_sink) != 0)
        abort();
    memset(backed, 0, sizeof(backed));
    memset(later, 0, sizeof(later));
    nvme_set_hooks(&n, &hooks);
    if (pci_topology_init(&topo, NULL, &intx_sink) != 0)
        abort();
    struct pci_path path = {.bus = 0, .device = 4, .function = 0};
    if (pci_topology_add(&topo, &path, nvme_pci_func(&n)) != 0)
        abort();
    pci_topology_cfg_write(&topo, 0, 4, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);

    struct input in = {data, size};
    run(&n, &topo, b, &in);

    b->fail_with = 0;
    nvme_destroy(&n);
    if (b->npending || b->nbad)
        abort();
    for (unsigned q = 1; q <= NVME_MAX_IO_QUEUES; q++) {
        if (backed[q]) /* destroy gives every doorbell back */
            abort();
    }
    pci_topology_destroy(&topo);
    blk_close(&b->b);
    return 0;
}
