/* SPDX-License-Identifier: MPL-2.0 */
/*
 * virtio-net over the virtio PCI transport against a fake backend: PCI
 * identity, MAC and link status in config space, offloads offered only as
 * the backend allows and applied with net_set_offloads on FEATURES_OK
 * (TSO without CSUM refused), transmit (header + packet sent unchanged,
 * short frames dropped), receive into one buffer and across several with
 * MRG_RXBUF (num_buffers), frames too big for a buffer, running out of
 * buffers and resuming when the guest adds more, rx before DRIVER_OK,
 * a malformed receive buffer, and reset.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtio_net.h"
#include "virtio_driver.h"

/* ---- fake backend ---- */

#define MAX_FRAMES 8

struct fakenet {
    struct net_backend be;
    const struct net_rx_ops *rx;
    uint8_t frames[MAX_FRAMES][2048];
    size_t frame_len[MAX_FRAMES];
    unsigned nframes;
    uint8_t sent[2048];
    size_t sent_len;
    unsigned nsent, resumes, drops;
    int offloads;
    bool offload_fail;
};

static int fn_start(struct net_backend *b, const struct net_rx_ops *ops)
{
    ((struct fakenet *)b)->rx = ops;
    return 0;
}

static long fn_recv(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    struct fakenet *f = (struct fakenet *)b;
    if (!f->nframes)
        return 0;
    size_t cap = 0;
    for (unsigned i = 0; i < n; i++)
        cap += iov[i].iov_len;
    size_t len = f->frame_len[0];
    long rc = (long)len;
    if (len > cap) {
        f->drops++;
        rc = -EMSGSIZE;
    } else {
        iov_from_buf(iov, n, f->frames[0], len);
    }
    f->nframes--;
    memmove(f->frames, f->frames + 1, f->nframes * sizeof(f->frames[0]));
    memmove(f->frame_len, f->frame_len + 1, f->nframes * sizeof(f->frame_len[0]));
    return rc;
}

static void fn_resume(struct net_backend *b)
{
    ((struct fakenet *)b)->resumes++;
}

static int fn_send(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    struct fakenet *f = (struct fakenet *)b;
    f->sent_len = iov_to_buf(iov, n, f->sent, sizeof(f->sent));
    f->nsent++;
    return 0;
}

static int fn_offloads(struct net_backend *b, unsigned off)
{
    struct fakenet *f = (struct fakenet *)b;
    f->offloads = (int)off;
    return f->offload_fail ? -EINVAL : 0;
}

static void fn_close(struct net_backend *b)
{
    (void)b;
}

static const struct net_backend_ops fn_ops = {fn_start, fn_recv,     fn_resume,
                                              fn_send,  fn_offloads, fn_close};

static void queue_frame(struct fakenet *f, size_t len, uint8_t fill)
{
    assert_true(f->nframes < MAX_FRAMES && len <= sizeof(f->frames[0]));
    memset(f->frames[f->nframes], fill, len);
    memset(f->frames[f->nframes], 0, NET_VNET_HDR_LEN);
    f->frame_len[f->nframes++] = len;
}

static void rx_ready(struct fakenet *f)
{
    f->rx->rx_ready(f->rx->ctx);
}

/* ---- fixture ---- */

#define FEAT(b) (1ull << (b))
#define RXBUF   (VD_DATA)
#define TXBUF   (VD_DATA + 0x40000)
#define RXQ     VIRTIO_NET_RXQ
#define TXQ     VIRTIO_NET_TXQ

struct env {
    struct vdrv d;
    struct fakenet net;
    struct virtio_net *nic;
};

static struct env *make_env(unsigned offloads)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(vd_init(&e->d), 0);
    e->net.be = (struct net_backend){.ops = &fn_ops, .offloads_supported = offloads};
    e->net.offloads = -1;
    struct opt_mac mac = {true, {0x52, 0x54, 0x00, 0x12, 0x34, 0x56}};
    struct virtio_net_params p = {
        .name = "nic0", .mem = &e->d.mem, .backend = &e->net.be, .mac = &mac, .msi = &e->d.sink};
    assert_int_equal(virtio_net_create(&p, &e->nic), 0);
    assert_non_null(e->net.rx);
    assert_int_equal(vd_attach(&e->d, virtio_net_pci(e->nic)), 0);
    return e;
}

static void up(struct env *e, uint64_t extra)
{
    assert_true(vd_negotiate(&e->d, FEAT(VIRTIO_F_VERSION_1) | extra) & VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&e->d, RXQ, 16);
    vd_queue(&e->d, TXQ, 16);
    vd_driver_ok(&e->d);
}

static void free_env(struct env *e)
{
    virtio_net_destroy(e->nic);
    vd_fini(&e->d);
    free(e);
}

static int setup(void **state)
{
    struct env *e = make_env(NET_OFF_CSUM | NET_OFF_TSO4 | NET_OFF_TSO6);
    up(e, 0);
    *state = e;
    return 0;
}

static int setup_mrg(void **state)
{
    struct env *e = make_env(0);
    up(e, FEAT(VIRTIO_NET_F_MRG_RXBUF));
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    free_env(*state);
    return 0;
}

/* Posts n receive buffers of len bytes each (one descriptor per chain). */
static void post_rx(struct env *e, unsigned n, uint32_t len)
{
    for (unsigned i = 0; i < n; i++) {
        struct vd_buf b = {RXBUF + 0x1000u * (e->d.q[RXQ].next), len, true};
        vd_avail(&e->d, RXQ, vd_chain(&e->d, RXQ, &b, 1));
    }
}

/* ---- tests ---- */

static void test_identity_and_config(void **state)
{
    (void)state;
    struct env *e = make_env(0);
    struct vdrv *d = &e->d;
    assert_int_equal(vd_cfg_read(d, PCI_REG_DEVICE_ID, 2), 0x1041);
    assert_int_equal(vd_cfg_read(d, PCI_REG_CLASS + 2, 1), 0x02);
    assert_int_equal(vd_rd(d, VPC_NUMQ, 2), 2);
    struct virtio_doorbell db[4];
    assert_int_equal(virtio_pci_doorbells(d->vp, db, 4), 2);
    assert_int_equal(db[1].offset, 0x3004);
    assert_int_equal(db[1].queue, 1);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF, 4), 0x12005452);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + 4, 2), 0x5634);
    assert_int_equal(vd_rd(d, VIRTIO_PCI_DEVICE_OFF + 6, 2), VIRTIO_NET_S_LINK_UP);
    uint64_t f = vd_features(d);
    assert_true(f & FEAT(VIRTIO_NET_F_MAC));
    assert_true(f & FEAT(VIRTIO_NET_F_STATUS));
    assert_true(f & FEAT(VIRTIO_NET_F_MRG_RXBUF));
    assert_false(f & (FEAT(VIRTIO_NET_F_CSUM) | FEAT(VIRTIO_NET_F_GUEST_CSUM) |
                      FEAT(VIRTIO_NET_F_HOST_TSO4) | FEAT(VIRTIO_NET_F_GUEST_TSO4)));
    free_env(e);

    /* No MAC in the spec: no MAC feature. */
    e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(vd_init(&e->d), 0);
    e->net.be = (struct net_backend){.ops = &fn_ops};
    struct virtio_net_params p = {.mem = &e->d.mem, .backend = &e->net.be};
    assert_int_equal(virtio_net_create(&p, &e->nic), 0);
    assert_int_equal(vd_attach(&e->d, virtio_net_pci(e->nic)), 0);
    assert_false(vd_features(&e->d) & FEAT(VIRTIO_NET_F_MAC));
    free_env(e);
}

static void test_offloads(void **state)
{
    (void)state;
    struct env *e = make_env(NET_OFF_CSUM | NET_OFF_TSO4);
    uint64_t f = vd_features(&e->d);
    assert_true(f & FEAT(VIRTIO_NET_F_CSUM));
    assert_true(f & FEAT(VIRTIO_NET_F_GUEST_CSUM));
    assert_true(f & FEAT(VIRTIO_NET_F_HOST_TSO4));
    assert_true(f & FEAT(VIRTIO_NET_F_GUEST_TSO4));
    assert_false(f & FEAT(VIRTIO_NET_F_HOST_TSO6));
    assert_false(f & FEAT(VIRTIO_NET_F_GUEST_TSO6));
    const uint64_t v1 = FEAT(VIRTIO_F_VERSION_1);
    /* TSO without its checksum feature is refused. */
    assert_false(vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_GUEST_TSO4)) &
                 VIRTIO_STATUS_FEATURES_OK);
    assert_false(vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_HOST_TSO4)) &
                 VIRTIO_STATUS_FEATURES_OK);
    /* Guest-side offloads reach the backend. */
    assert_true(
        vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_GUEST_CSUM) | FEAT(VIRTIO_NET_F_GUEST_TSO4)) &
        VIRTIO_STATUS_FEATURES_OK);
    assert_int_equal(e->net.offloads, NET_OFF_CSUM | NET_OFF_TSO4);
    assert_true(vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_CSUM)) & VIRTIO_STATUS_FEATURES_OK);
    assert_int_equal(e->net.offloads, 0);
    /* Not offered: refused. */
    assert_false(
        vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_GUEST_TSO6) | FEAT(VIRTIO_NET_F_GUEST_CSUM)) &
        VIRTIO_STATUS_FEATURES_OK);
    /* A backend that refuses the offloads makes FEATURES_OK fail. */
    e->net.offload_fail = true;
    assert_false(vd_negotiate(&e->d, v1 | FEAT(VIRTIO_NET_F_GUEST_CSUM)) &
                 VIRTIO_STATUS_FEATURES_OK);
    free_env(e);
}

static void test_tx(void **state)
{
    struct env *e = *state;
    uint8_t *p = e->d.ram + TXBUF;
    memset(p, 0, 12);
    p[0] = 1; /* NEEDS_CSUM: passed through unchanged */
    for (int i = 0; i < 60; i++)
        p[0x100 + i] = (uint8_t)i;
    struct vd_buf b[2] = {{TXBUF, 12, false}, {TXBUF + 0x100, 60, false}};
    uint16_t head = vd_chain(&e->d, TXQ, b, 2);
    vd_avail(&e->d, TXQ, head);
    vd_kick(&e->d, TXQ);
    assert_int_equal(e->net.nsent, 1);
    assert_int_equal(e->net.sent_len, 72);
    assert_int_equal(e->net.sent[0], 1);
    assert_memory_equal(e->net.sent + 12, p + 0x100, 60);
    uint32_t id, len;
    assert_true(vd_used(&e->d, TXQ, &id, &len));
    assert_int_equal(id, head);
    assert_int_equal(len, 0);
    assert_true(e->d.level);

    /* Shorter than the header: dropped, but the buffer is returned. */
    struct vd_buf s = {TXBUF, 8, false};
    vd_avail(&e->d, TXQ, vd_chain(&e->d, TXQ, &s, 1));
    vd_kick(&e->d, TXQ);
    assert_int_equal(e->net.nsent, 1);
    assert_true(vd_used(&e->d, TXQ, NULL, NULL));
    /* Several frames in one kick. */
    for (int i = 0; i < 3; i++)
        vd_avail(&e->d, TXQ, vd_chain(&e->d, TXQ, b, 2));
    vd_kick(&e->d, TXQ);
    assert_int_equal(e->net.nsent, 4);
}

static void test_rx_single(void **state)
{
    struct env *e = *state;
    post_rx(e, 2, 1600);
    queue_frame(&e->net, 100, 0xab);
    rx_ready(&e->net);
    uint32_t id, len;
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 0);
    assert_int_equal(len, 100);
    uint8_t *buf = e->d.ram + RXBUF;
    assert_int_equal(le16(buf + 10), 1); /* num_buffers */
    assert_int_equal(buf[12], 0xab);
    assert_int_equal(buf[99], 0xab);
    assert_false(vd_used(&e->d, RXQ, NULL, NULL));
    assert_true(e->d.level);
    /* A frame bigger than a buffer (no MRG_RXBUF) is dropped; the buffer stays. */
    queue_frame(&e->net, 1700, 0xcd);
    queue_frame(&e->net, 80, 0xef);
    rx_ready(&e->net);
    assert_int_equal(e->net.drops, 1);
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 1);
    assert_int_equal(len, 80);
}

static void test_rx_starved_and_resume(void **state)
{
    struct env *e = *state;
    queue_frame(&e->net, 100, 1);
    queue_frame(&e->net, 100, 2);
    unsigned resumes = e->net.resumes;
    rx_ready(&e->net); /* no buffers */
    assert_int_equal(e->net.nframes, 2);
    post_rx(e, 1, 1600);
    vd_kick(&e->d, RXQ);
    assert_int_equal(e->net.resumes, resumes + 1);
    rx_ready(&e->net); /* the backend answers the resume */
    assert_int_equal(e->net.nframes, 1);
    assert_true(vd_used(&e->d, RXQ, NULL, NULL));
    /* Out of buffers again with a frame waiting: the next kick resumes. */
    post_rx(e, 1, 1600);
    vd_kick(&e->d, RXQ);
    assert_int_equal(e->net.resumes, resumes + 2);
    rx_ready(&e->net);
    assert_int_equal(e->net.nframes, 0);
    /* Buffers left and the backend dry: not starved, a kick does not resume. */
    post_rx(e, 2, 1600);
    vd_kick(&e->d, RXQ);
    assert_int_equal(e->net.resumes, resumes + 3);
    rx_ready(&e->net);
    vd_kick(&e->d, RXQ);
    assert_int_equal(e->net.resumes, resumes + 3);
}

static void test_rx_mergeable(void **state)
{
    struct env *e = *state;
    /* 6 buffers of 512 bytes: a 1530-byte frame fits in 3; room for 1530 needs 3. */
    post_rx(e, 6, 512);
    queue_frame(&e->net, 1200, 0x77);
    rx_ready(&e->net);
    uint32_t id, len;
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 0);
    assert_int_equal(len, 512);
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 1);
    assert_int_equal(len, 512);
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 2);
    assert_int_equal(len, 176);
    assert_false(vd_used(&e->d, RXQ, NULL, NULL));
    assert_int_equal(le16(e->d.ram + RXBUF + 10), 3);
    assert_int_equal(e->d.ram[RXBUF + 0x2000 + 175], 0x77);
    /* A small frame takes one buffer; the unused ones stay available. */
    queue_frame(&e->net, 64, 0x11);
    rx_ready(&e->net);
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 3);
    assert_int_equal(len, 64);
    assert_int_equal(le16(e->d.ram + RXBUF + 0x3000 + 10), 1);
    /* Two buffers left (1024 bytes) is less than a full frame: wait. */
    queue_frame(&e->net, 64, 0x22);
    unsigned resumes = e->net.resumes;
    rx_ready(&e->net);
    assert_false(vd_used(&e->d, RXQ, NULL, NULL));
    post_rx(e, 2, 512);
    vd_kick(&e->d, RXQ);
    assert_int_equal(e->net.resumes, resumes + 1);
    rx_ready(&e->net);
    assert_true(vd_used(&e->d, RXQ, &id, &len));
    assert_int_equal(id, 4);
}

static void test_rx_before_driver_ok(void **state)
{
    (void)state;
    struct env *e = make_env(0);
    queue_frame(&e->net, 100, 1);
    rx_ready(&e->net);
    assert_int_equal(e->net.nframes, 1);
    unsigned resumes = e->net.resumes;
    assert_true(vd_negotiate(&e->d, FEAT(VIRTIO_F_VERSION_1)) & VIRTIO_STATUS_FEATURES_OK);
    vd_queue(&e->d, RXQ, 16);
    vd_queue(&e->d, TXQ, 16);
    post_rx(e, 1, 1600);
    vd_driver_ok(&e->d);
    assert_int_equal(e->net.resumes, resumes + 1);
    rx_ready(&e->net);
    assert_int_equal(e->net.nframes, 0);
    assert_true(vd_used(&e->d, RXQ, NULL, NULL));
    free_env(e);
}

static void test_rx_malformed_buffer(void **state)
{
    struct env *e = *state;
    struct vd_buf b = {RXBUF, 1600, false}; /* device-readable: wrong direction */
    vd_avail(&e->d, RXQ, vd_chain(&e->d, RXQ, &b, 1));
    queue_frame(&e->net, 100, 1);
    rx_ready(&e->net);
    assert_true(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET);
    assert_int_equal(e->net.nframes, 1);
    assert_true(vd_rd(&e->d, VIRTIO_PCI_ISR_OFF, 1) & VIRTIO_ISR_CONFIG);
    /* Reset and bring it up again: it works. */
    up(e, 0);
    assert_false(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET);
    post_rx(e, 1, 1600);
    rx_ready(&e->net);
    assert_true(vd_used(&e->d, RXQ, NULL, NULL));
}

static void test_rx_short_buffer(void **state)
{
    struct env *e = *state;
    post_rx(e, 1, 8); /* cannot hold the header */
    queue_frame(&e->net, 100, 1);
    rx_ready(&e->net);
    assert_true(virtio_pci_status(e->d.vp) & VIRTIO_STATUS_NEEDS_RESET);
}

static void test_reset_stops_rx(void **state)
{
    struct env *e = *state;
    vd_wr(&e->d, VPC_STATUS, 1, 0);
    queue_frame(&e->net, 100, 1);
    rx_ready(&e->net);
    assert_int_equal(e->net.nframes, 1);
    assert_int_equal(vd_rd(&e->d, VPC_STATUS, 1), 0);
}

#define T(fn)  cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TM(fn) cmocka_unit_test_setup_teardown(fn, setup_mrg, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_and_config),
        cmocka_unit_test(test_offloads),
        T(test_tx),
        T(test_rx_single),
        T(test_rx_starved_and_resume),
        TM(test_rx_mergeable),
        cmocka_unit_test(test_rx_before_driver_ok),
        T(test_rx_malformed_buffer),
        T(test_rx_short_buffer),
        T(test_reset_stops_rx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
