/* SPDX-License-Identifier: MPL-2.0 */
/*
 * virtio-blk over the virtio PCI transport, driven like a guest driver on
 * a plain-buffer RAM against a memory disk: PCI identity and capabilities,
 * feature negotiation (and refusals), config space, read/write/flush/
 * get-id/discard/write-zeroes, read-only refusal, range and length checks,
 * unknown requests, malformed requests and chains (DEVICE_NEEDS_RESET and
 * a config interrupt, then reset), indirect chains, asynchronous
 * completions with the in-flight cap, reset waiting for in-flight
 * requests, INTx with ISR versus MSI-X, the bus-master gate, the PCI_CFG
 * window and the doorbell list. Multiqueue: MQ offered (and num_queues in
 * the config) only with more than one queue, each queue's requests
 * completing on its own used ring and MSI-X vector, per-queue in-flight
 * caps, reset and the save-time busy check covering every queue, and the
 * queue-count limits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtio_blk.h"
#include "virtio_driver.h"

/* ---- a memory disk ---- */

#define DISK_SIZE (1u << 20) /* 2048 sectors */
#define MAX_DEFER 64

struct memdisk {
    struct blk_backend be;
    uint8_t data[DISK_SIZE];
    unsigned ops[5];
    bool defer;
    struct blk_req *deferred[MAX_DEFER];
    unsigned ndeferred;
    uint64_t last_off, last_len;
};

static int run_req(struct memdisk *m, struct blk_req *r)
{
    if (r->offset > DISK_SIZE || r->len > DISK_SIZE - r->offset)
        return -EINVAL;
    if (m->be.info.readonly && r->op != BLK_READ && r->op != BLK_FLUSH)
        return -EROFS;
    uint64_t off = r->offset;
    switch (r->op) {
    case BLK_READ:
    case BLK_WRITE:
        for (unsigned i = 0; i < r->iovcnt; i++) {
            if (r->op == BLK_READ)
                memcpy(r->iov[i].iov_base, m->data + off, r->iov[i].iov_len);
            else
                memcpy(m->data + off, r->iov[i].iov_base, r->iov[i].iov_len);
            off += r->iov[i].iov_len;
        }
        break;
    case BLK_WRITE_ZEROES:
    case BLK_DISCARD:
        memset(m->data + r->offset, 0, r->len);
        break;
    case BLK_FLUSH:
        break;
    }
    return 0;
}

static void md_submit(struct blk_backend *b, struct blk_req *r)
{
    struct memdisk *m = (struct memdisk *)b;
    m->ops[r->op]++;
    m->last_off = r->offset;
    m->last_len = r->len;
    if (m->defer && m->ndeferred < MAX_DEFER) {
        m->deferred[m->ndeferred++] = r;
        return;
    }
    r->done(r, run_req(m, r));
}

static void md_complete_all(struct memdisk *m)
{
    while (m->ndeferred) {
        /* Completing may submit more (the device refills): take one at a time. */
        struct blk_req *r = m->deferred[0];
        memmove(m->deferred, m->deferred + 1, --m->ndeferred * sizeof(r));
        r->done(r, run_req(m, r));
    }
}

static void md_drain(struct blk_backend *b)
{
    struct memdisk *m = (struct memdisk *)b;
    m->defer = false;
    md_complete_all(m);
}

static void md_close(struct blk_backend *b)
{
    (void)b;
}

static const struct blk_backend_ops md_ops = {
    .submit = md_submit, .drain = md_drain, .close = md_close};

/* ---- fixture ---- */

struct env {
    struct vdrv d;
    struct memdisk disk;
    struct virtio_blk *blk;
};

#define FEAT(b) (1ull << (b))
#define HDR     (VD_DATA)
#define DATA    (VD_DATA + 0x1000)
#define STATUS  (VD_DATA + 0x100)
#define ITAB    (VD_DATA + 0x80000)

static struct env *make_env_mq(bool ro, bool discard, uint16_t qsize, unsigned nqueues)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(vd_init(&e->d), 0);
    e->disk.be = (struct blk_backend){.ops = &md_ops,
                                      .info = {.size = DISK_SIZE,
                                               .block_size = 512,
                                               .readonly = ro,
                                               .can_discard = discard,
                                               .can_write_zeroes = discard,
                                               .can_flush = true}};
    for (unsigned i = 0; i < DISK_SIZE; i++)
        e->disk.data[i] = (uint8_t)(i * 7 + i / 512);
    struct virtio_blk_params p = {.name = "disk0",
                                  .mem = &e->d.mem,
                                  .backend = &e->disk.be,
                                  .serial = "disk0-serial",
                                  .msi = &e->d.sink,
                                  .queue_size = qsize,
                                  .nqueues = nqueues};
    assert_int_equal(virtio_blk_create(&p, &e->blk), 0);
    assert_int_equal(vd_attach(&e->d, virtio_blk_pci(e->blk)), 0);
    return e;
}

static struct env *make_env(bool ro, bool discard, uint16_t qsize)
{
    return make_env_mq(ro, discard, qsize, 0);
}

static void free_env(struct env *e)
{
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
}

static void up(struct env *e, uint64_t extra)
{
    uint64_t want = FEAT(VIRTIO_F_VERSION_1) | extra;
    assert_true(vd_negotiate(&e->d, want) & VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&e->d, 0, 16);
    vd_driver_ok(&e->d);
}

static int setup(void **state)
{
    struct env *e = make_env(false, true, 16);
    up(e, FEAT(VIRTIO_F_INDIRECT_DESC));
    *state = e;
    return 0;
}

static int setup_raw(void **state)
{
    *state = make_env(false, false, 0);
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
    return 0;
}

static void hdr(struct env *e, uint32_t type, uint64_t sector)
{
    uint8_t *h = e->d.ram + HDR;
    put32(h, type);
    put32(h + 4, 0);
    put64(h + 8, sector);
}

/* Runs one request on queue q: header, optional data, status; returns the status byte. */
static int request_q(struct env *e, unsigned q, uint32_t type, uint64_t sector, uint32_t len,
                     bool data_write, uint32_t *used_len)
{
    hdr(e, type, sector);
    e->d.ram[STATUS] = 0xee;
    struct vd_buf b[3] = {{HDR, 16, false}};
    unsigned n = 1;
    if (len)
        b[n++] = (struct vd_buf){DATA, len, data_write};
    b[n++] = (struct vd_buf){STATUS, 1, true};
    uint16_t head = vd_chain(&e->d, q, b, n);
    vd_avail(&e->d, q, head);
    vd_kick(&e->d, q);
    uint32_t id, ulen;
    if (!vd_used(&e->d, q, &id, &ulen))
        return -1;
    assert_int_equal(id, head);
    if (used_len)
        *used_len = ulen;
    return e->d.ram[STATUS];
}

static int request(struct env *e, uint32_t type, uint64_t sector, uint32_t len, bool data_write,
                   uint32_t *used_len)
{
    return request_q(e, 0, type, sector, len, data_write, used_len);
}

/* ---- tests ---- */

static void test_pci_identity(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    assert_int_equal(vd_cfg_read(d, PCI_REG_VENDOR_ID, 2), 0x1af4);
    assert_int_equal(vd_cfg_read(d, PCI_REG_DEVICE_ID, 2), 0x1042);
    assert_int_equal(vd_cfg_read(d, PCI_REG_REVISION, 1), 1);
    assert_int_equal(vd_cfg_read(d, PCI_REG_SUBSYS_VENDOR, 2), 0x1af4);
    assert_int_equal(vd_cfg_read(d, PCI_REG_CLASS + 1, 2), 0x0100);
    assert_int_equal(vd_cfg_read(d, PCI_REG_INT_PIN, 1), 1);

    static const uint32_t want_off[] = {0, 0x0000, 0x3000, 0x1000, 0x2000};
    for (uint8_t t = VIRTIO_PCI_CAP_COMMON_CFG; t <= VIRTIO_PCI_CAP_DEVICE_CFG; t++) {
        uint16_t c = vd_find_cap(d, PCI_CAP_ID_VNDR, t);
        assert_int_not_equal(c, 0);
        assert_int_equal(vd_cfg_read(d, c + 4u, 1), VIRTIO_PCI_BAR);
        assert_int_equal(vd_cfg_read(d, c + 8u, 4), want_off[t]);
    }
    uint16_t n = vd_find_cap(d, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_NOTIFY_CFG);
    assert_int_equal(vd_cfg_read(d, n + 16u, 4), 4);
    assert_int_equal(vd_cfg_read(d, vd_find_cap(d, PCI_CAP_ID_VNDR, 4) + 12u, 4),
                     VIRTIO_BLK_CONFIG_LEN);
    assert_int_not_equal(vd_find_cap(d, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_PCI_CFG), 0);
    assert_int_not_equal(vd_find_cap(d, PCI_CAP_ID_MSIX, 0), 0);
    assert_int_equal(e->d.vp->func.bars[VIRTIO_PCI_BAR].kind, PCI_BAR_MEM64);
    assert_int_equal(e->d.vp->func.bars[VIRTIO_PCI_BAR].size, 0x4000);

    struct virtio_doorbell db[4];
    assert_int_equal(virtio_pci_doorbells(d->vp, db, 4), 1);
    assert_int_equal(db[0].bar, 4);
    assert_int_equal(db[0].offset, 0x3000);
    assert_int_equal(db[0].width, 2);
    /* The queue's notify offset matches the doorbell. */
    vd_wr(d, VPC_Q_SELECT, 2, 0);
    assert_int_equal(vd_rd(d, VPC_Q_NOFF, 2) * 4 + 0x3000, db[0].offset);
}

static void test_features(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    uint64_t f = vd_features(d);
    assert_true(f & FEAT(VIRTIO_F_VERSION_1));
    assert_true(f & FEAT(VIRTIO_F_EVENT_IDX));
    assert_true(f & FEAT(VIRTIO_F_INDIRECT_DESC));
    assert_true(f & FEAT(VIRTIO_BLK_F_FLUSH));
    assert_true(f & FEAT(VIRTIO_BLK_F_BLK_SIZE));
    assert_true(f & FEAT(VIRTIO_BLK_F_SEG_MAX));
    assert_false(f & FEAT(VIRTIO_BLK_F_RO));
    assert_false(f & FEAT(VIRTIO_BLK_F_DISCARD)); /* this backend cannot */
    assert_false(f & FEAT(VIRTIO_BLK_F_WRITE_ZEROES));
    vd_wr(d, VPC_DFSELECT, 4, 2);
    assert_int_equal(vd_rd(d, VPC_DF, 4), 0);

    /* Legacy drivers (no VERSION_1) are refused. */
    assert_false(vd_negotiate(d, FEAT(VIRTIO_BLK_F_FLUSH)) & VIRTIO_STATUS_FEATURES_OK);
    /* So is a bit we did not offer. */
    assert_false(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_DISCARD)) &
                 VIRTIO_STATUS_FEATURES_OK);
    /* And a bit beyond 64. */
    vd_negotiate(d, 0);
    vd_wr(d, VPC_GFSELECT, 4, 2);
    vd_wr(d, VPC_GF, 4, 1);
    vd_wr(d, VPC_GFSELECT, 4, 1);
    vd_wr(d, VPC_GF, 4, 1);
    vd_wr(d, VPC_STATUS, 1, 0x0b);
    assert_int_equal(vd_rd(d, VPC_STATUS, 1), 0x03);
    /* DRIVER_OK without FEATURES_OK is refused too. */
    vd_wr(d, VPC_STATUS, 1, 0x07);
    assert_int_equal(vd_rd(d, VPC_STATUS, 1), 0x03);
    /* The right set is accepted, and features are frozen afterwards. */
    assert_true(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_FLUSH)) &
                VIRTIO_STATUS_FEATURES_OK);
    vd_wr(d, VPC_GFSELECT, 4, 0);
    vd_wr(d, VPC_GF, 4, 0);
    assert_int_equal(vd_rd(d, VPC_GF, 4), FEAT(VIRTIO_BLK_F_FLUSH));
    /* Reset clears everything. */
    vd_wr(d, VPC_STATUS, 1, 0);
    assert_int_equal(vd_rd(d, VPC_STATUS, 1), 0);
    assert_int_equal(vd_rd(d, VPC_GF, 4), 0);
}

static void test_optional_features(void **state)
{
    (void)state;
    struct env *e = make_env(true, true, 0);
    uint64_t f = vd_features(&e->d);
    assert_true(f & FEAT(VIRTIO_BLK_F_RO));
    assert_false(f & FEAT(VIRTIO_BLK_F_DISCARD)); /* read-only wins */
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
    e = make_env(false, true, 0);
    f = vd_features(&e->d);
    assert_true(f & FEAT(VIRTIO_BLK_F_DISCARD));
    assert_true(f & FEAT(VIRTIO_BLK_F_WRITE_ZEROES));
    assert_int_equal(vd_rd(&e->d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_MAX_DISCARD_SEG, 4), 1);
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
}

static void test_config(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_CAPACITY, 8), DISK_SIZE / 512);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_CAPACITY, 4), DISK_SIZE / 512);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_BLK_SIZE, 4), 512);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_SEG_MAX, 4), 14);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_SIZE_MAX, 4), VIRTIO_BLK_SIZE_MAX);
    /* Past the config: zero; writes are ignored. */
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + 0x100, 4), 0);
    vd_wr(d, VIRTIO_PCI_DEVICE_OFF, 4, 0);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF, 4), DISK_SIZE / 512);
    /* Queue registers: size offered, absent queues read size 0. */
    vd_wr(d, VPC_Q_SELECT, 2, 0);
    assert_int_equal(vd_rd(d, VPC_Q_SIZE, 2), 16);
    assert_int_equal(vd_rd(d, VPC_NUMQ, 2), 1);
    vd_wr(d, VPC_Q_SELECT, 2, 1);
    assert_int_equal(vd_rd(d, VPC_Q_SIZE, 2), 0);
    /* Bad accesses read as ones and do nothing. */
    assert_int_equal(vd_rd(d, 0x4000, 4), 0xffffffff);
    assert_int_equal(vd_rd(d, 0x3ffe, 4), 0xffffffff);
    assert_int_equal(vd_rd(d, 0, 3), 0xffffff);
}

static void test_read_write(void **state)
{
    struct env *e = *state;
    uint32_t ulen;
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 3, 1024, true, &ulen), VIRTIO_BLK_S_OK);
    assert_int_equal(ulen, 1025);
    assert_memory_equal(e->d.ram + DATA, e->disk.data + 3 * 512, 1024);

    memset(e->d.ram + DATA, 0x5a, 2048);
    assert_int_equal(request(e, VIRTIO_BLK_T_OUT, 10, 2048, false, &ulen), VIRTIO_BLK_S_OK);
    assert_int_equal(ulen, 1);
    assert_int_equal(e->disk.data[10 * 512], 0x5a);
    assert_int_equal(e->disk.data[14 * 512 - 1], 0x5a);
    assert_int_not_equal(e->disk.data[14 * 512], 0x5a);
    /* The last sector. */
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, DISK_SIZE / 512 - 1, 512, true, NULL),
                     VIRTIO_BLK_S_OK);
    assert_int_equal(e->disk.ops[BLK_READ], 2);
    assert_int_equal(e->disk.ops[BLK_WRITE], 1);
}

static void test_split_header_and_data(void **state)
{
    struct env *e = *state;
    /* Header in two pieces, data with the status byte in the same buffer. */
    hdr(e, VIRTIO_BLK_T_IN, 1);
    struct vd_buf b[3] = {{HDR, 5, false}, {HDR + 5, 11, false}, {DATA, 513, true}};
    uint16_t head = vd_chain(&e->d, 0, b, 3);
    e->d.ram[DATA + 512] = 0xee;
    vd_avail(&e->d, 0, head);
    vd_kick(&e->d, 0);
    uint32_t ulen;
    assert_true(vd_used(&e->d, 0, NULL, &ulen));
    assert_int_equal(ulen, 513);
    assert_int_equal(e->d.ram[DATA + 512], VIRTIO_BLK_S_OK);
    assert_memory_equal(e->d.ram + DATA, e->disk.data + 512, 512);
}

static void test_indirect_request(void **state)
{
    struct env *e = *state;
    hdr(e, VIRTIO_BLK_T_IN, 2);
    vd_desc_at(&e->d, ITAB, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    vd_desc_at(&e->d, ITAB, 1, DATA, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
    vd_desc_at(&e->d, ITAB, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    vd_desc(&e->d, 0, 9, ITAB, 48, VIRTQ_DESC_F_INDIRECT, 0);
    e->d.ram[STATUS] = 0xee;
    vd_avail(&e->d, 0, 9);
    vd_kick(&e->d, 0);
    uint32_t id;
    assert_true(vd_used(&e->d, 0, &id, NULL));
    assert_int_equal(id, 9);
    assert_int_equal(e->d.ram[STATUS], VIRTIO_BLK_S_OK);
    assert_memory_equal(e->d.ram + DATA, e->disk.data + 1024, 512);
}

static void test_flush_and_id(void **state)
{
    struct env *e = *state;
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(e->disk.ops[BLK_FLUSH], 1);
    uint32_t ulen;
    memset(e->d.ram + DATA, 0xff, 20);
    assert_int_equal(request(e, VIRTIO_BLK_T_GET_ID, 0, 20, true, &ulen), VIRTIO_BLK_S_OK);
    assert_int_equal(ulen, 21);
    assert_memory_equal(e->d.ram + DATA, "disk0-serial\0\0\0\0\0\0\0\0", 20);
    /* A short buffer gets what fits. */
    memset(e->d.ram + DATA, 0xff, 20);
    assert_int_equal(request(e, VIRTIO_BLK_T_GET_ID, 0, 4, true, &ulen), VIRTIO_BLK_S_OK);
    assert_int_equal(ulen, 5);
    assert_memory_equal(e->d.ram + DATA, "disk\xff", 5);
}

static void dwz(struct env *e, uint32_t type, uint64_t sector, uint32_t n, uint32_t flags, int want)
{
    uint8_t *seg = e->d.ram + DATA;
    put64(seg, sector);
    put32(seg + 8, n);
    put32(seg + 12, flags);
    hdr(e, type, 0);
    e->d.ram[STATUS] = 0xee;
    struct vd_buf b[3] = {{HDR, 16, false}, {DATA, 16, false}, {STATUS, 1, true}};
    vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 3));
    vd_kick(&e->d, 0);
    assert_true(vd_used(&e->d, 0, NULL, NULL));
    assert_int_equal(e->d.ram[STATUS], want);
}

static void test_discard_write_zeroes(void **state)
{
    struct env *e = *state;
    dwz(e, VIRTIO_BLK_T_WRITE_ZEROES, 4, 2, 0, VIRTIO_BLK_S_OK);
    assert_int_equal(e->disk.ops[BLK_WRITE_ZEROES], 1);
    assert_int_equal(e->disk.last_off, 2048);
    assert_int_equal(e->disk.last_len, 1024);
    assert_int_equal(e->disk.data[2048], 0);
    assert_int_equal(e->disk.data[3071], 0);
    dwz(e, VIRTIO_BLK_T_WRITE_ZEROES, 4, 2, 1, VIRTIO_BLK_S_OK); /* unmap allowed */
    dwz(e, VIRTIO_BLK_T_DISCARD, 8, 1, 0, VIRTIO_BLK_S_OK);
    assert_int_equal(e->disk.ops[BLK_DISCARD], 1);
    dwz(e, VIRTIO_BLK_T_DISCARD, 8, 1, 1, VIRTIO_BLK_S_UNSUPP);   /* unmap on discard */
    dwz(e, VIRTIO_BLK_T_DISCARD, 8, 1, 4, VIRTIO_BLK_S_UNSUPP);   /* reserved flag */
    dwz(e, VIRTIO_BLK_T_DISCARD, 2047, 2, 0, VIRTIO_BLK_S_IOERR); /* past the end */
    dwz(e, VIRTIO_BLK_T_DISCARD, UINT64_MAX, 2, 0, VIRTIO_BLK_S_IOERR);
    assert_int_equal(e->disk.ops[BLK_DISCARD], 1);
}

static void test_discard_unsupported(void **state)
{
    struct env *e = *state; /* setup_raw: no discard */
    up(e, 0);
    dwz(e, VIRTIO_BLK_T_DISCARD, 0, 1, 0, VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(e->disk.ops[BLK_DISCARD], 0);
}

static void test_read_only(void **state)
{
    (void)state;
    struct env *e = make_env(true, false, 16);
    up(e, FEAT(VIRTIO_BLK_F_RO));
    uint8_t before[1024];
    memcpy(before, e->disk.data, sizeof(before));
    memset(e->d.ram + DATA, 0x11, 1024);
    assert_int_equal(request(e, VIRTIO_BLK_T_OUT, 0, 1024, false, NULL), VIRTIO_BLK_S_IOERR);
    assert_memory_equal(before, e->disk.data, sizeof(before));
    assert_int_equal(e->disk.ops[BLK_WRITE], 0);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), VIRTIO_BLK_S_OK);
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
}

static void test_bad_ranges(void **state)
{
    struct env *e = *state;
    const uint64_t cap = DISK_SIZE / 512;
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, cap, 512, true, NULL), VIRTIO_BLK_S_IOERR);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, cap - 1, 1024, true, NULL), VIRTIO_BLK_S_IOERR);
    assert_int_equal(request(e, VIRTIO_BLK_T_OUT, UINT64_MAX, 512, false, NULL),
                     VIRTIO_BLK_S_IOERR);
    assert_int_equal(request(e, VIRTIO_BLK_T_OUT, UINT64_MAX / 512 + 1, 512, false, NULL),
                     VIRTIO_BLK_S_IOERR);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 100, true, NULL), VIRTIO_BLK_S_IOERR);
    assert_int_equal(request(e, VIRTIO_BLK_T_OUT, 0, 513, false, NULL), VIRTIO_BLK_S_IOERR);
    assert_int_equal(e->disk.ops[BLK_READ] + e->disk.ops[BLK_WRITE], 0);
    assert_int_equal(request(e, 99, 0, 0, false, NULL), VIRTIO_BLK_S_UNSUPP);
    assert_int_equal(request(e, 0x80000000u, 0, 0, false, NULL), VIRTIO_BLK_S_UNSUPP);
    /* The device is still healthy. */
    assert_int_equal(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET, 0);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), VIRTIO_BLK_S_OK);
}

static void expect_needs_reset(struct env *e)
{
    assert_true(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET);
    assert_true(vd_rd(&e->d, VPC_STATUS, 1) & VIRTIO_STATUS_NEEDS_RESET);
    /* INTx: the config bit is set in the ISR. */
    assert_true(e->d.level);
    assert_int_equal(vd_rd(&e->d, VIRTIO_PCI_ISR_OFF, 1) & VIRTIO_ISR_CONFIG, VIRTIO_ISR_CONFIG);
    assert_false(e->d.level);
    /* Nothing more is taken until reset; then the device works again. */
    unsigned reads = e->disk.ops[BLK_READ];
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), -1);
    assert_int_equal(e->disk.ops[BLK_READ], reads);
    up(e, 0);
    assert_int_equal(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET, 0);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), VIRTIO_BLK_S_OK);
}

static void test_missing_header(void **state)
{
    struct env *e = *state;
    struct vd_buf b[2] = {{HDR, 8, false}, {STATUS, 1, true}};
    vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 2));
    vd_kick(&e->d, 0);
    assert_false(vd_used(&e->d, 0, NULL, NULL));
    expect_needs_reset(e);
}

static void test_missing_status(void **state)
{
    struct env *e = *state;
    hdr(e, VIRTIO_BLK_T_FLUSH, 0);
    struct vd_buf b[1] = {{HDR, 16, false}};
    vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 1));
    vd_kick(&e->d, 0);
    expect_needs_reset(e);
}

static void test_malformed_chain(void **state)
{
    struct env *e = *state;
    vd_desc(&e->d, 0, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    vd_desc(&e->d, 0, 1, DATA, 16, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0);
    vd_avail(&e->d, 0, 0);
    vd_kick(&e->d, 0);
    expect_needs_reset(e);
}

static void test_chain_outside_ram(void **state)
{
    struct env *e = *state;
    hdr(e, VIRTIO_BLK_T_IN, 0);
    struct vd_buf b[3] = {{HDR, 16, false}, {VD_RAM_SIZE - 256, 512, true}, {STATUS, 1, true}};
    vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 3));
    vd_kick(&e->d, 0);
    assert_int_equal(e->disk.ops[BLK_READ], 0);
    expect_needs_reset(e);
}

static void test_msix_vs_intx(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    /* INTx: level up after a completion, ISR bit 0, cleared by the read. */
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_true(d->level);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_ISR_OFF, 1), VIRTIO_ISR_QUEUE);
    assert_false(d->level);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_ISR_OFF, 1), 0);

    /* MSI-X: vectors 0 (config) and 1 (queue 0). */
    vd_msix_enable(d, 2);
    vd_wr(d, VPC_MSIX, 2, 0);
    vd_wr(d, VPC_Q_SELECT, 2, 0);
    vd_wr(d, VPC_Q_MSIX, 2, 1);
    assert_int_equal(vd_rd(d, VPC_Q_MSIX, 2), 1);
    assert_int_equal(vd_rd(d, VPC_MSIX, 2), 0);
    unsigned raises = d->level_raises;
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(d->msi_count[1], 1);
    assert_int_equal(d->msi_count[0], 0);
    assert_int_equal(d->level_raises, raises);
    assert_false(d->level);
    /* A vector out of range reads back as NO_VECTOR; then no interrupt. */
    vd_wr(d, VPC_Q_MSIX, 2, 7);
    assert_int_equal(vd_rd(d, VPC_Q_MSIX, 2), MSIX_NO_VECTOR);
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(d->msi_count[1], 1);
    /* The config vector signals DEVICE_NEEDS_RESET. */
    struct vd_buf b[1] = {{HDR, 4, false}};
    vd_avail(d, 0, vd_chain(d, 0, b, 1));
    vd_kick(d, 0);
    assert_int_equal(d->msi_count[0], 1);
    assert_false(d->level);
}

static void test_event_idx_suppression(void **state)
{
    struct env *e = *state;
    up(e, FEAT(VIRTIO_F_EVENT_IDX));
    struct vdrv *d = &e->d;
    uint8_t *used_event = d->ram + VD_RING(0) + 0x4000 + 4 + 2 * 16;
    put16(used_event, 5); /* interrupt only once used idx passes 5 */
    unsigned raises = d->level_raises;
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(d->level_raises, raises + 1); /* first completion always signals */
    vd_rd(d, VIRTIO_PCI_ISR_OFF, 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(d->level_raises, raises + 1);
    assert_int_equal(request(e, VIRTIO_BLK_T_FLUSH, 0, 0, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(d->level_raises, raises + 2);
}

static void test_bus_master_gate(void **state)
{
    struct env *e = *state;
    vd_cfg_write(&e->d, PCI_REG_COMMAND, 2, PCI_CMD_MEM);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), -1);
    assert_int_equal(e->disk.ops[BLK_READ], 0);
    vd_cfg_write(&e->d, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    virtio_pci_kick(e->d.vp, 0); /* the ioeventfd path */
    assert_true(vd_used(&e->d, 0, NULL, NULL));
    assert_int_equal(e->disk.ops[BLK_READ], 1);
}

static void test_kick_before_driver_ok(void **state)
{
    struct env *e = *state;
    assert_true(vd_negotiate(&e->d, FEAT(VIRTIO_F_VERSION_1)) & VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&e->d, 0, 16);
    assert_int_equal(request(e, VIRTIO_BLK_T_IN, 0, 512, true, NULL), -1);
    vd_driver_ok(&e->d);
    vd_kick(&e->d, 0);
    assert_true(vd_used(&e->d, 0, NULL, NULL));
}

static void test_queue_programming(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1));
    vd_wr(d, VPC_Q_SELECT, 2, 0);
    vd_wr(d, VPC_Q_SIZE, 2, 12); /* not a power of two */
    vd_wr(d, VPC_Q_DESC, 8, VD_RING(0));
    vd_wr(d, VPC_Q_DRIVER, 8, VD_RING(0) + 0x4000);
    vd_wr(d, VPC_Q_DEVICE, 8, VD_RING(0) + 0x8000);
    vd_wr(d, VPC_Q_ENABLE, 2, 1);
    assert_int_equal(vd_rd(d, VPC_Q_ENABLE, 2), 0);
    assert_true(vd_rd(d, VPC_STATUS, 1) & VIRTIO_STATUS_NEEDS_RESET);
    vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1));
    vd_wr(d, VPC_Q_SIZE, 2, 8);
    vd_wr(d, VPC_Q_DESC, 8, VD_RAM_SIZE); /* outside RAM */
    vd_wr(d, VPC_Q_ENABLE, 2, 1);
    assert_int_equal(vd_rd(d, VPC_Q_ENABLE, 2), 0);
    vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1));
    vd_queue(d, 0, 8);
    assert_int_equal(vd_rd(d, VPC_Q_ENABLE, 2), 1);
    assert_int_equal(vd_rd(d, VPC_Q_DESC, 4), VD_RING(0));
    assert_int_equal(vd_rd(d, VPC_Q_DESC + 4, 4), 0);
    /* Reprogramming an enabled queue is ignored. */
    vd_wr(d, VPC_Q_DESC, 8, 0x5000);
    assert_int_equal(vd_rd(d, VPC_Q_DESC, 8), VD_RING(0));
}

static void test_async_and_inflight_cap(void **state)
{
    (void)state;
    struct env *e = make_env(false, false, 4);
    assert_true(vd_negotiate(&e->d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_F_INDIRECT_DESC)) &
                VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&e->d, 0, 4);
    vd_driver_ok(&e->d);
    e->disk.defer = true;
    /* Each flush is one direct descriptor pointing at a 2-entry indirect table. */
    for (unsigned i = 0; i < 4; i++) {
        uint64_t h = HDR + 0x40 * i, t = ITAB + 0x100 * i;
        put32(e->d.ram + h, VIRTIO_BLK_T_FLUSH);
        vd_desc_at(&e->d, t, 0, h, 16, VIRTQ_DESC_F_NEXT, 1);
        vd_desc_at(&e->d, t, 1, STATUS + i, 1, VIRTQ_DESC_F_WRITE, 0);
        vd_desc(&e->d, 0, i, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    }
    for (unsigned i = 0; i < 4; i++)
        vd_avail(&e->d, 0, (uint16_t)i);
    vd_kick(&e->d, 0);
    assert_int_equal(e->disk.ndeferred, 4);
    /* The ring lets the driver offer 4 more; the in-flight cap holds them back. */
    for (unsigned i = 0; i < 4; i++)
        vd_avail(&e->d, 0, (uint16_t)i);
    vd_kick(&e->d, 0);
    assert_int_equal(e->disk.ndeferred, 4);
    assert_false(vd_used(&e->d, 0, NULL, NULL));
    /* Completions let the device take the rest. */
    md_complete_all(&e->disk);
    for (unsigned i = 0; i < 8; i++)
        assert_true(vd_used(&e->d, 0, NULL, NULL));
    assert_false(vd_used(&e->d, 0, NULL, NULL));
    assert_int_equal(e->disk.ops[BLK_FLUSH], 8);

    /* Reset with requests in flight waits for them (the drain completes them). */
    e->disk.defer = true;
    put32(e->d.ram + HDR, VIRTIO_BLK_T_IN);
    put64(e->d.ram + HDR + 8, 0);
    struct vd_buf b[3] = {{HDR, 16, false}, {DATA, 512, true}, {STATUS, 1, true}};
    vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 3));
    vd_kick(&e->d, 0);
    assert_int_equal(e->disk.ndeferred, 1);
    vd_wr(&e->d, VPC_STATUS, 1, 0);
    assert_int_equal(e->disk.ndeferred, 0);
    assert_memory_equal(e->d.ram + DATA, e->disk.data, 512);
    virtio_blk_destroy(e->blk);
    vd_fini(&e->d);
    free(e);
}

/* Completions from another thread while the vCPU keeps submitting. */
struct completer {
    struct memdisk *m;
    pthread_mutex_t *lock;
    volatile bool stop;
};

static void *complete_thread(void *arg)
{
    struct completer *c = arg;
    while (!c->stop) {
        struct blk_req *r = NULL;
        pthread_mutex_lock(c->lock);
        if (c->m->ndeferred) {
            r = c->m->deferred[0];
            memmove(c->m->deferred, c->m->deferred + 1, --c->m->ndeferred * sizeof(r));
        }
        pthread_mutex_unlock(c->lock);
        if (r)
            r->done(r, 0);
    }
    return NULL;
}

static pthread_mutex_t md_lock = PTHREAD_MUTEX_INITIALIZER;

static void md_submit_locked(struct blk_backend *b, struct blk_req *r)
{
    pthread_mutex_lock(&md_lock);
    md_submit(b, r);
    pthread_mutex_unlock(&md_lock);
}

static void md_drain_wait(struct blk_backend *b)
{
    struct memdisk *m = (struct memdisk *)b;
    for (;;) {
        pthread_mutex_lock(&md_lock);
        unsigned n = m->ndeferred;
        pthread_mutex_unlock(&md_lock);
        if (!n)
            return;
    }
}

static const struct blk_backend_ops md_thread_ops = {
    .submit = md_submit_locked, .drain = md_drain_wait, .close = md_close};

static void test_threaded_completions(void **state)
{
    struct env *e = *state;
    e->disk.be.ops = &md_thread_ops;
    e->disk.defer = true;
    struct completer c = {&e->disk, &md_lock, false};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, complete_thread, &c), 0);
    unsigned done = 0;
    for (unsigned i = 0; i < 3000; i++) {
        uint64_t h = HDR + 0x20 * (i % 8);
        put32(e->d.ram + h, VIRTIO_BLK_T_FLUSH);
        struct vd_buf b[2] = {{h, 16, false}, {STATUS + (i % 8), 1, true}};
        /* keep at most 8 chains (16 descriptors) outstanding */
        while (e->d.q[0].avail_idx - done >= 8)
            done += vd_used(&e->d, 0, NULL, NULL);
        vd_avail(&e->d, 0, vd_chain(&e->d, 0, b, 2));
        vd_kick(&e->d, 0);
    }
    while (done < 3000)
        done += vd_used(&e->d, 0, NULL, NULL);
    c.stop = true;
    pthread_join(t, NULL);
    assert_int_equal(e->disk.ops[BLK_FLUSH], 3000);
}

static void test_pci_cfg_window(void **state)
{
    struct env *e = *state;
    struct vdrv *d = &e->d;
    uint16_t c = vd_find_cap(d, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_PCI_CFG);
    vd_cfg_write(d, c + 4u, 1, VIRTIO_PCI_BAR);
    vd_cfg_write(d, c + 8u, 4, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_CAPACITY);
    vd_cfg_write(d, c + 12u, 4, 4);
    assert_int_equal(vd_cfg_read(d, c + 16u, 4), DISK_SIZE / 512);
    /* Writes go through too: select queue 0 via the window. */
    vd_cfg_write(d, c + 8u, 4, VPC_Q_SELECT);
    vd_cfg_write(d, c + 12u, 4, 2);
    vd_cfg_write(d, c + 16u, 2, 0);
    vd_cfg_write(d, c + 8u, 4, VPC_Q_SIZE);
    assert_int_equal(vd_cfg_read(d, c + 16u, 2), 16);
    /* A bad window (wrong BAR, misaligned) reads back what was there. */
    vd_cfg_write(d, c + 4u, 1, 2);
    assert_int_equal(vd_cfg_read(d, c + 16u, 2), 16);
    vd_cfg_write(d, c + 4u, 1, VIRTIO_PCI_BAR);
    vd_cfg_write(d, c + 8u, 4, 0x3fff);
    vd_cfg_write(d, c + 12u, 4, 4);
    assert_int_equal(vd_cfg_read(d, c + 16u, 2), 16);
    /* A doorbell through the window kicks. */
    hdr(e, VIRTIO_BLK_T_FLUSH, 0);
    struct vd_buf b[2] = {{HDR, 16, false}, {STATUS, 1, true}};
    vd_avail(d, 0, vd_chain(d, 0, b, 2));
    vd_cfg_write(d, c + 8u, 4, VIRTIO_PCI_NOTIFY_OFF);
    vd_cfg_write(d, c + 12u, 4, 2);
    vd_cfg_write(d, c + 16u, 2, 0);
    assert_true(vd_used(d, 0, NULL, NULL));
}

/* ---- multiqueue ---- */

#define MQ_N 4 /* VD_MAX_Q: the test driver's ring slots */

/* FEATURES_OK with MQ (and extra), queues 0..n) of qsize entries, DRIVER_OK. */
static void up_mq(struct env *e, unsigned n, uint16_t qsize, uint64_t extra)
{
    uint64_t want = FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_MQ) | extra;
    assert_true(vd_negotiate(&e->d, want) & VIRTIO_STATUS_FEATURES_OK);
    for (unsigned q = 0; q < n; q++)
        vd_queue(&e->d, q, qsize);
    vd_driver_ok(&e->d);
}

/* MSI-X on: vector 0 for config, vector q + 1 for queue q. */
static void msix_per_queue(struct env *e, unsigned n)
{
    struct vdrv *d = &e->d;
    vd_msix_enable(d, n + 1);
    vd_wr(d, VPC_MSIX, 2, 0);
    for (unsigned q = 0; q < n; q++) {
        vd_wr(d, VPC_Q_SELECT, 2, q);
        vd_wr(d, VPC_Q_MSIX, 2, q + 1);
        assert_int_equal(vd_rd(d, VPC_Q_MSIX, 2), q + 1);
    }
}

static uint16_t used_idx(struct env *e, unsigned q)
{
    return le16(e->d.ram + VD_RING(q) + 0x8000 + 2);
}

static void test_mq_config(void **state)
{
    (void)state;
    struct env *e = make_env_mq(false, false, 16, MQ_N);
    struct vdrv *d = &e->d;
    assert_true(vd_features(d) & FEAT(VIRTIO_BLK_F_MQ));
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_NUM_QUEUES, 2), MQ_N);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_NUM_QUEUES - 2, 2), 0);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_BLK_SIZE, 4), 512);
    /* The transport: num_queues, each queue's size and notify offset, doorbells. */
    assert_int_equal(vd_rd(d, VPC_NUMQ, 2), MQ_N);
    struct virtio_doorbell db[VIRTIO_MAX_QUEUES];
    assert_int_equal(virtio_pci_doorbells(d->vp, db, VIRTIO_MAX_QUEUES), MQ_N);
    for (unsigned q = 0; q < MQ_N; q++) {
        vd_wr(d, VPC_Q_SELECT, 2, q);
        assert_int_equal(vd_rd(d, VPC_Q_SIZE, 2), 16);
        assert_int_equal(vd_rd(d, VPC_Q_NOFF, 2), q);
        assert_int_equal(db[q].offset, VIRTIO_PCI_NOTIFY_OFF + 4 * q);
        assert_int_equal(db[q].queue, q);
    }
    vd_wr(d, VPC_Q_SELECT, 2, MQ_N);
    assert_int_equal(vd_rd(d, VPC_Q_SIZE, 2), 0);
    uint16_t n = vd_find_cap(d, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_NOTIFY_CFG);
    assert_int_equal(vd_cfg_read(d, n + 12u, 4), 4 * MQ_N);
    /* One MSI-X vector per queue plus config. */
    uint16_t x = vd_find_cap(d, PCI_CAP_ID_MSIX, 0);
    assert_int_equal((vd_cfg_read(d, x + 2u, 2) & 0x7ff) + 1, MQ_N + 1);
    /* The driver may take MQ; it reads back. */
    assert_true(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_MQ)) &
                VIRTIO_STATUS_FEATURES_OK);
    vd_wr(d, VPC_GFSELECT, 4, 0);
    assert_int_equal(vd_rd(d, VPC_GF, 4), FEAT(VIRTIO_BLK_F_MQ));
    free_env(e);
}

/* One queue (nqueues 0 or 1): no MQ, num_queues 0, the same config bytes. */
static void test_single_queue_no_mq(void **state)
{
    (void)state;
    struct env *e0 = make_env_mq(false, true, 16, 0), *e1 = make_env_mq(false, true, 16, 1);
    for (int i = 0; i < 2; i++) {
        struct vdrv *d = i ? &e1->d : &e0->d;
        assert_false(vd_features(d) & FEAT(VIRTIO_BLK_F_MQ));
        assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + VBLK_CFG_NUM_QUEUES, 2), 0);
        assert_int_equal(vd_rd(d, VPC_NUMQ, 2), 1);
        assert_false(vd_negotiate(d, FEAT(VIRTIO_F_VERSION_1) | FEAT(VIRTIO_BLK_F_MQ)) &
                     VIRTIO_STATUS_FEATURES_OK);
    }
    assert_int_equal(vd_features(&e0->d), vd_features(&e1->d));
    for (uint32_t off = 0; off < VIRTIO_BLK_CONFIG_LEN; off++)
        assert_int_equal(vd_rd(&e0->d, VIRTIO_PCI_DEVICE_OFF + off, 1),
                         vd_rd(&e1->d, VIRTIO_PCI_DEVICE_OFF + off, 1));
    /* A kick of a queue that does not exist does nothing. */
    up(e1, 0);
    virtio_pci_kick(e1->d.vp, 1);
    vd_wr(&e1->d, VIRTIO_PCI_NOTIFY_OFF + 4, 2, 1);
    assert_int_equal(request(e1, VIRTIO_BLK_T_IN, 0, 512, true, NULL), VIRTIO_BLK_S_OK);
    free_env(e0);
    free_env(e1);
}

/* Each queue's requests complete on its own used ring and its own vector. */
static void test_mq_own_ring_and_vector(void **state)
{
    (void)state;
    struct env *e = make_env_mq(false, false, 16, 2);
    struct vdrv *d = &e->d;
    up_mq(e, 2, 16, 0);
    msix_per_queue(e, 2);
    uint32_t ulen;
    assert_int_equal(request_q(e, 1, VIRTIO_BLK_T_IN, 5, 512, true, &ulen), VIRTIO_BLK_S_OK);
    assert_int_equal(ulen, 513);
    assert_memory_equal(d->ram + DATA, e->disk.data + 5 * 512, 512);
    assert_int_equal(used_idx(e, 1), 1);
    assert_int_equal(used_idx(e, 0), 0);
    assert_int_equal(d->msi_count[2], 1);
    assert_int_equal(d->msi_count[1], 0);
    assert_int_equal(d->msi_count[0], 0);

    memset(d->ram + DATA, 0x3c, 512);
    assert_int_equal(request_q(e, 0, VIRTIO_BLK_T_OUT, 7, 512, false, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(e->disk.data[7 * 512], 0x3c);
    assert_int_equal(used_idx(e, 0), 1);
    assert_int_equal(used_idx(e, 1), 1);
    assert_int_equal(d->msi_count[1], 1);
    assert_int_equal(d->msi_count[2], 1);

    /* Through the ioeventfd path too, and the queues keep their own indices. */
    for (unsigned i = 0; i < 3; i++) {
        hdr(e, VIRTIO_BLK_T_FLUSH, 0);
        struct vd_buf b[2] = {{HDR, 16, false}, {STATUS, 1, true}};
        vd_avail(d, 1, vd_chain(d, 1, b, 2));
        virtio_pci_kick(d->vp, 1);
        assert_true(vd_used(d, 1, NULL, NULL));
    }
    assert_int_equal(used_idx(e, 1), 4);
    assert_int_equal(used_idx(e, 0), 1);
    assert_int_equal(d->msi_count[2], 4);
    assert_int_equal(d->msi_count[1], 1);
    assert_int_equal(d->level_raises, 0);

    /* A malformed chain on queue 1 makes the whole device need a reset. */
    struct vd_buf bad[1] = {{HDR, 4, false}};
    vd_avail(d, 1, vd_chain(d, 1, bad, 1));
    vd_kick(d, 1);
    assert_true(vd_rd(d, VPC_STATUS, 1) & VIRTIO_STATUS_NEEDS_RESET);
    assert_int_equal(d->msi_count[0], 1);
    free_env(e);
}

/* Posts flush i on queue q as one descriptor pointing at a 2-entry indirect table. */
static void post_flush(struct env *e, unsigned q, unsigned i)
{
    unsigned slot = q * 8 + i;
    uint64_t h = HDR + 0x10 * slot, t = ITAB + 0x100 * slot;
    put32(e->d.ram + h, VIRTIO_BLK_T_FLUSH);
    vd_desc_at(&e->d, t, 0, h, 16, VIRTQ_DESC_F_NEXT, 1);
    vd_desc_at(&e->d, t, 1, STATUS + slot, 1, VIRTQ_DESC_F_WRITE, 0);
    vd_desc(&e->d, q, i, t, 32, VIRTQ_DESC_F_INDIRECT, 0);
    vd_avail(&e->d, q, (uint16_t)i);
}

/* Completes the deferred request at position k. */
static void md_complete_at(struct memdisk *m, unsigned k)
{
    struct blk_req *r = m->deferred[k];
    memmove(m->deferred + k, m->deferred + k + 1, (--m->ndeferred - k) * sizeof(r));
    r->done(r, run_req(m, r));
}

static void test_mq_async(void **state)
{
    (void)state;
    struct env *e = make_env_mq(false, false, 4, 2);
    struct vdrv *d = &e->d;
    up_mq(e, 2, 4, FEAT(VIRTIO_F_INDIRECT_DESC));
    msix_per_queue(e, 2);
    e->disk.defer = true;
    /* Queue 0 at its in-flight cap: four taken, four more held back. */
    for (unsigned i = 0; i < 4; i++)
        post_flush(e, 0, i);
    vd_kick(d, 0);
    for (unsigned i = 0; i < 4; i++)
        vd_avail(d, 0, (uint16_t)i);
    vd_kick(d, 0);
    assert_int_equal(e->disk.ndeferred, 4);
    /* Queue 1 is not held back by queue 0's cap. */
    post_flush(e, 1, 0);
    post_flush(e, 1, 1);
    vd_kick(d, 1);
    assert_int_equal(e->disk.ndeferred, 6);
    /* Queue 1's second request completes first: on queue 1's ring and vector only. */
    md_complete_at(&e->disk, 5);
    assert_int_equal(used_idx(e, 1), 1);
    assert_int_equal(used_idx(e, 0), 0);
    assert_int_equal(d->msi_count[2], 1);
    assert_int_equal(d->msi_count[1], 0);
    uint32_t id;
    assert_true(vd_used(d, 1, &id, NULL));
    assert_int_equal(id, 1);
    /* One of queue 0's: it takes one held-back request, queue 1 unchanged. */
    md_complete_at(&e->disk, 0);
    assert_int_equal(e->disk.ndeferred, 5);
    assert_int_equal(used_idx(e, 0), 1);
    assert_int_equal(used_idx(e, 1), 1);
    assert_int_equal(d->msi_count[1], 1);
    /* The rest: eight on queue 0, two on queue 1, each interrupt on its vector. */
    md_complete_all(&e->disk);
    assert_int_equal(used_idx(e, 0), 8);
    assert_int_equal(used_idx(e, 1), 2);
    assert_int_equal(d->msi_count[1], 8);
    assert_int_equal(d->msi_count[2], 2);
    assert_int_equal(e->disk.ops[BLK_FLUSH], 10);
    for (unsigned i = 0; i < 4; i++)
        assert_int_equal(d->ram[STATUS + i], VIRTIO_BLK_S_OK);
    assert_int_equal(d->ram[STATUS + 8], VIRTIO_BLK_S_OK);
    assert_int_equal(d->ram[STATUS + 9], VIRTIO_BLK_S_OK);

    /* Reset with requests in flight on both queues waits for all of them. */
    e->disk.defer = true;
    post_flush(e, 0, 0);
    post_flush(e, 1, 2);
    vd_kick(d, 0);
    vd_kick(d, 1);
    assert_int_equal(e->disk.ndeferred, 2);
    vd_wr(d, VPC_STATUS, 1, 0);
    assert_int_equal(e->disk.ndeferred, 0);
    assert_int_equal(e->disk.ops[BLK_FLUSH], 12);
    /* And both queues work after it. */
    up_mq(e, 2, 4, 0);
    assert_int_equal(request_q(e, 1, VIRTIO_BLK_T_IN, 0, 512, true, NULL), VIRTIO_BLK_S_OK);
    assert_int_equal(request_q(e, 0, VIRTIO_BLK_T_IN, 1, 512, true, NULL), VIRTIO_BLK_S_OK);
    free_env(e);
}

/* The device's save refuses while any queue has a request in flight. */
static void test_mq_save_busy(void **state)
{
    (void)state;
    for (unsigned busy = 0; busy < 2; busy++) {
        struct env *e = make_env_mq(false, false, 8, 2);
        up_mq(e, 2, 8, FEAT(VIRTIO_F_INDIRECT_DESC));
        struct virtio_dev *dev = e->d.vp->dev;
        struct mig_out o;
        mig_out_init(&o);
        e->disk.defer = true;
        post_flush(e, busy, 0);
        vd_kick(&e->d, busy);
        assert_int_equal(e->disk.ndeferred, 1);
        assert_int_equal(dev->ops->save(dev, &o), -EBUSY);
        assert_int_equal(virtio_pci_save(e->d.vp, &o), -EBUSY);
        md_complete_all(&e->disk);
        assert_true(vd_used(&e->d, busy, NULL, NULL));
        assert_int_equal(dev->ops->save(dev, &o), 0);
        mig_out_free(&o);
        mig_out_init(&o);
        virtio_pci_quiesce(e->d.vp);
        assert_int_equal(virtio_pci_save(e->d.vp, &o), 0);
        virtio_pci_resume(e->d.vp);
        mig_out_free(&o);
        free_env(e);
    }
}

/* Two queues kicked alternately while another thread completes requests from both. */
static void test_mq_threaded_completions(void **state)
{
    (void)state;
    struct env *e = make_env_mq(false, false, 16, 2);
    up_mq(e, 2, 16, 0);
    msix_per_queue(e, 2);
    e->disk.be.ops = &md_thread_ops;
    e->disk.defer = true;
    struct completer c = {&e->disk, &md_lock, false};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, complete_thread, &c), 0);
    unsigned done[2] = {0, 0}, n = 2000;
    for (unsigned i = 0; i < n; i++) {
        unsigned q = i % 2, slot = q * 8 + (i / 2) % 8;
        uint64_t h = ITAB + 0x20 * slot;
        put32(e->d.ram + h, VIRTIO_BLK_T_FLUSH);
        struct vd_buf b[2] = {{h, 16, false}, {STATUS + slot, 1, true}};
        while ((uint16_t)(e->d.q[q].avail_idx - done[q]) >= 8)
            done[q] += vd_used(&e->d, q, NULL, NULL);
        vd_avail(&e->d, q, vd_chain(&e->d, q, b, 2));
        vd_kick(&e->d, q);
    }
    while (done[0] < n / 2 || done[1] < n / 2)
        for (unsigned q = 0; q < 2; q++)
            done[q] += vd_used(&e->d, q, NULL, NULL);
    c.stop = true;
    pthread_join(t, NULL);
    assert_int_equal(e->disk.ops[BLK_FLUSH], n);
    assert_int_equal(used_idx(e, 0), n / 2);
    assert_int_equal(used_idx(e, 1), n / 2);
    /* Every completion interrupted on its own queue's vector (no EVENT_IDX). */
    assert_int_equal(e->d.msi_count[1], n / 2);
    assert_int_equal(e->d.msi_count[2], n / 2);
    e->disk.be.ops = &md_ops;
    free_env(e);
}

static void test_create_checks(void **state)
{
    (void)state;
    struct memdisk *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    struct guest_mem mem;
    uint8_t buf[4096];
    guest_mem_init_buffer(&mem, buf, sizeof(buf));
    m->be = (struct blk_backend){.ops = &md_ops, .info = {.size = 4096, .block_size = 512}};
    struct virtio_blk *b;
    struct virtio_blk_params p = {.mem = &mem, .backend = &m->be, .queue_size = 12};
    assert_int_equal(virtio_blk_create(&p, &b), -EINVAL);
    p.queue_size = 0;
    m->be.info.block_size = 100;
    assert_int_equal(virtio_blk_create(&p, &b), -EINVAL);
    m->be.info.block_size = 512;
    /* Queue counts: 0 means 1, up to VIRTIO_BLK_MAX_QUEUES, nothing beyond. */
    p.nqueues = VIRTIO_BLK_MAX_QUEUES + 1;
    assert_int_equal(virtio_blk_create(&p, &b), -EINVAL);
    assert_null(b);
    p.nqueues = 1000;
    assert_int_equal(virtio_blk_create(&p, &b), -EINVAL);
    p.nqueues = UINT32_MAX;
    assert_int_equal(virtio_blk_create(&p, &b), -EINVAL);
    p.nqueues = VIRTIO_BLK_MAX_QUEUES;
    assert_int_equal(virtio_blk_create(&p, &b), 0);
    assert_int_equal(virtio_blk_pci(b)->dev->nqueues, VIRTIO_BLK_MAX_QUEUES);
    assert_true(virtio_blk_pci(b)->dev->host_features & FEAT(VIRTIO_BLK_F_MQ));
    virtio_blk_destroy(b);
    p.nqueues = 0;
    assert_int_equal(virtio_blk_create(&p, &b), 0);
    assert_int_equal(virtio_blk_pci(b)->dev->nqueues, 1);
    assert_false(virtio_blk_pci(b)->dev->host_features & FEAT(VIRTIO_BLK_F_MQ));
    virtio_blk_destroy(b);
    m->be.info.block_size = 4096;
    p.serial = "a-serial-longer-than-twenty-bytes";
    assert_int_equal(virtio_blk_create(&p, &b), 0);
    virtio_blk_destroy(b);
    virtio_blk_destroy(NULL);
    free(m);
}

#define T(fn)  cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TR(fn) cmocka_unit_test_setup_teardown(fn, setup_raw, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        TR(test_pci_identity),
        TR(test_features),
        cmocka_unit_test(test_optional_features),
        T(test_config),
        T(test_read_write),
        T(test_split_header_and_data),
        T(test_indirect_request),
        T(test_flush_and_id),
        T(test_discard_write_zeroes),
        TR(test_discard_unsupported),
        cmocka_unit_test(test_read_only),
        T(test_bad_ranges),
        T(test_missing_header),
        T(test_missing_status),
        T(test_malformed_chain),
        T(test_chain_outside_ram),
        T(test_msix_vs_intx),
        T(test_event_idx_suppression),
        T(test_bus_master_gate),
        TR(test_kick_before_driver_ok),
        TR(test_queue_programming),
        cmocka_unit_test(test_async_and_inflight_cap),
        T(test_threaded_completions),
        T(test_pci_cfg_window),
        cmocka_unit_test(test_create_checks),
        cmocka_unit_test(test_mq_config),
        cmocka_unit_test(test_single_queue_no_mq),
        cmocka_unit_test(test_mq_own_ring_and_vector),
        cmocka_unit_test(test_mq_async),
        cmocka_unit_test(test_mq_save_busy),
        cmocka_unit_test(test_mq_threaded_completions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
