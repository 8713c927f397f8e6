/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/virtio_net.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/le.h"

#define HDR_NUM_BUFFERS 10 /* offset of num_buffers in virtio_net_hdr_v1 */

#define BIT(b) (1ull << (b))

/*
 * Receive state is under rx_lock: `rx_live` between DRIVER_OK and reset;
 * `rx_starved` when we stopped reading frames for lack of guest buffers
 * (or before DRIVER_OK) and owe the backend a net_rx_resume(). The
 * transmit side runs only on the kick path, under the transport lock.
 */
struct virtio_net {
    struct virtio_dev dev;
    struct virtqueue vqs[2];
    struct virtio_pci vp;
    struct net_backend *be;
    uint8_t config[VIRTIO_NET_CONFIG_LEN];

    pthread_mutex_t rx_lock;
    bool rx_live, rx_starved;
    bool rx_paused; /* quiesced for migration: no receive into guest RAM */
    struct iovec rx_iov[VIRTIO_NET_RX_MAX_IOV];
    struct vq_used rx_used[VIRTIO_NET_RX_MAX_BUFS];
    uint64_t rx_len[VIRTIO_NET_RX_MAX_BUFS];

    struct iovec tx_iov[VIRTIO_NET_TX_MAX_IOV];
    struct net_rx_ops rx_ops; /* handed to the backend, lives as long as we do */
};

static struct virtio_net *to_net(struct virtio_dev *d)
{
    return (struct virtio_net *)((char *)d - offsetof(struct virtio_net, dev));
}

/* ---- receive ---- */

static bool guest_gso(const struct virtio_dev *d)
{
    return virtio_has(d, VIRTIO_NET_F_GUEST_TSO4) || virtio_has(d, VIRTIO_NET_F_GUEST_TSO6);
}

/* Writes len bytes at byte offset `at` of iov[0..n). */
static void iov_write_at(const struct iovec *iov, unsigned n, size_t at, const void *src,
                         size_t len)
{
    for (unsigned i = 0; i < n && len; i++) {
        if (at >= iov[i].iov_len) {
            at -= iov[i].iov_len;
            continue;
        }
        size_t k = iov[i].iov_len - at < len ? iov[i].iov_len - at : len;
        memcpy((uint8_t *)iov[i].iov_base + at, src, k);
        src = (const uint8_t *)src + k;
        len -= k;
        at = 0;
    }
}

enum gather { G_OK, G_EMPTY, G_BROKEN };

/*
 * Pops guest receive chains into rx_iov until they can hold `need` bytes
 * (one chain without MRG_RXBUF). *nbufs chains were popped either way.
 */
static enum gather rx_gather(struct virtio_net *n, uint64_t need, bool mrg, unsigned *nbufs,
                             unsigned *niov, unsigned *first_iovs)
{
    struct virtqueue *vq = &n->vqs[VIRTIO_NET_RXQ];
    uint64_t total = 0;
    *nbufs = *niov = 0;
    while (*nbufs == 0 || (mrg && total < need)) {
        if (*nbufs == VIRTIO_NET_RX_MAX_BUFS || *niov == VIRTIO_NET_RX_MAX_IOV)
            return G_OK; /* as much as one frame may take */
        struct vq_chain c;
        int rc = vq_pop(vq, &c, n->rx_iov + *niov, VIRTIO_NET_RX_MAX_IOV - *niov);
        if (rc > 0 && (c.nread || c.write_len < NET_VNET_HDR_LEN)) {
            guest_error(n->dev.name, "receive buffer readable or shorter than the header");
            vq_set_broken(vq);
            rc = -EINVAL;
        }
        if (rc < 0) {
            virtio_dev_fail(&n->dev);
            return G_BROKEN;
        }
        if (rc == 0) /* a ring the guest filled completely is all we will get */
            return *nbufs && (!mrg || *nbufs >= vq->num) ? G_OK : G_EMPTY;
        if (*nbufs == 0)
            *first_iovs = c.niov;
        n->rx_used[*nbufs] = (struct vq_used){.head = c.head};
        n->rx_len[*nbufs] = c.write_len;
        (*nbufs)++;
        *niov += c.niov;
        total += c.write_len;
    }
    return G_OK;
}

/* Reads frames into guest buffers until the backend or the guest runs dry. rx_lock held. */
static void rx_fill(struct virtio_net *n)
{
    struct virtqueue *vq = &n->vqs[VIRTIO_NET_RXQ];
    bool mrg = virtio_has(&n->dev, VIRTIO_NET_F_MRG_RXBUF);
    uint64_t need = guest_gso(&n->dev) ? NET_MAX_FRAME : VIRTIO_NET_RX_SMALL;
    for (;;) {
        if (!n->rx_live || n->rx_paused) {
            n->rx_starved = true;
            return;
        }
        unsigned nbufs, niov, first_iovs = 0;
        enum gather g = rx_gather(n, need, mrg, &nbufs, &niov, &first_iovs);
        if (g == G_BROKEN)
            return;
        if (g == G_EMPTY) {
            vq_unpop(vq, nbufs);
            n->rx_starved = true;
            return;
        }
        long len = net_recv(n->be, n->rx_iov, niov);
        /* What the backend may have written; a refused frame: anything. */
        if (len > 0 || len == -EMSGSIZE)
            vq_mark_written(vq, n->rx_iov, niov, len > 0 ? (uint64_t)len : UINT64_MAX);
        if (len == -EMSGSIZE || (len > 0 && len < (long)NET_VNET_HDR_LEN)) {
            vq_unpop(vq, nbufs); /* frame dropped; buffers stay the guest's */
            continue;
        }
        if (len <= 0) {
            vq_unpop(vq, nbufs);
            return; /* no more frames (or a backend error: wait for rx_ready) */
        }
        unsigned used = 0;
        for (uint64_t left = (uint64_t)len; left && used < nbufs; used++) {
            uint64_t take = left < n->rx_len[used] ? left : n->rx_len[used];
            n->rx_used[used].len = (uint32_t)take;
            left -= take;
        }
        vq_unpop(vq, nbufs - used);
        uint8_t nb[2];
        put16(nb, (uint16_t)used);
        iov_write_at(n->rx_iov, first_iovs, HDR_NUM_BUFFERS, nb, sizeof(nb));
        vq_mark_written(vq, n->rx_iov, first_iovs, HDR_NUM_BUFFERS + sizeof(nb));
        if (vq_push(vq, n->rx_used, used))
            virtio_dev_notify(&n->dev, VIRTIO_NET_RXQ);
    }
}

/* Backend thread: frames are waiting. */
static void rx_ready(void *ctx)
{
    struct virtio_net *n = ctx;
    pthread_mutex_lock(&n->rx_lock);
    rx_fill(n);
    pthread_mutex_unlock(&n->rx_lock);
}

/* The guest added receive buffers (or the device went live): resume if we owe it. */
static void rx_kick(struct virtio_net *n)
{
    pthread_mutex_lock(&n->rx_lock);
    bool resume = n->rx_starved && n->rx_live && !n->rx_paused;
    if (resume)
        n->rx_starved = false;
    pthread_mutex_unlock(&n->rx_lock);
    if (resume)
        net_rx_resume(n->be);
}

/* ---- transmit ---- */

static void tx_run(struct virtio_net *n)
{
    struct virtqueue *vq = &n->vqs[VIRTIO_NET_TXQ];
    bool notify = false;
    for (;;) {
        struct vq_chain c;
        int rc = vq_pop(vq, &c, n->tx_iov, VIRTIO_NET_TX_MAX_IOV);
        if (rc < 0)
            virtio_dev_fail(&n->dev);
        if (rc <= 0)
            break;
        if (c.read_len < NET_VNET_HDR_LEN || c.read_len > NET_MAX_FRAME)
            guest_error(n->dev.name, "transmit frame of %llu bytes dropped",
                        (unsigned long long)c.read_len);
        else
            (void)net_send(n->be, n->tx_iov, c.nread); /* a lost frame is the network's */
        struct vq_used u = {c.head, 0};
        notify |= vq_push(vq, &u, 1);
    }
    if (notify)
        virtio_dev_notify(&n->dev, VIRTIO_NET_TXQ);
}

/* ---- device ops ---- */

static uint64_t cfg_read(struct virtio_dev *d, uint32_t off, unsigned size)
{
    struct virtio_net *n = to_net(d);
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)n->config[off + i] << (8 * i);
    return v;
}

static void cfg_write(struct virtio_dev *d, uint32_t off, unsigned size, uint64_t value)
{
    (void)size, (void)value;
    guest_error(d->name, "write to config at 0x%x ignored", off);
}

static int set_features(struct virtio_dev *d, uint64_t f)
{
    struct virtio_net *n = to_net(d);
    bool csum = f & BIT(VIRTIO_NET_F_CSUM), gcsum = f & BIT(VIRTIO_NET_F_GUEST_CSUM);
    if ((f & (BIT(VIRTIO_NET_F_HOST_TSO4) | BIT(VIRTIO_NET_F_HOST_TSO6))) && !csum)
        return -EINVAL;
    if ((f & (BIT(VIRTIO_NET_F_GUEST_TSO4) | BIT(VIRTIO_NET_F_GUEST_TSO6))) && !gcsum)
        return -EINVAL;
    unsigned off = (gcsum ? NET_OFF_CSUM : 0) |
                   (f & BIT(VIRTIO_NET_F_GUEST_TSO4) ? NET_OFF_TSO4 : 0) |
                   (f & BIT(VIRTIO_NET_F_GUEST_TSO6) ? NET_OFF_TSO6 : 0);
    return net_set_offloads(n->be, off);
}

static void driver_ok(struct virtio_dev *d)
{
    struct virtio_net *n = to_net(d);
    pthread_mutex_lock(&n->rx_lock);
    n->rx_live = true;
    n->rx_starved = true; /* frames may have waited for us: ask again */
    pthread_mutex_unlock(&n->rx_lock);
    rx_kick(n);
}

static void queue_notify(struct virtio_dev *d, unsigned q)
{
    struct virtio_net *n = to_net(d);
    if (q == VIRTIO_NET_RXQ)
        rx_kick(n);
    else if (q == VIRTIO_NET_TXQ)
        tx_run(n);
}

static void reset(struct virtio_dev *d)
{
    struct virtio_net *n = to_net(d);
    pthread_mutex_lock(&n->rx_lock);
    n->rx_live = false;
    n->rx_starved = false;
    vq_reset(&n->vqs[VIRTIO_NET_RXQ]);
    vq_reset(&n->vqs[VIRTIO_NET_TXQ]);
    pthread_mutex_unlock(&n->rx_lock);
}

/* ---- migration ---- */

/*
 * Transmit runs only on the kick path, under the transport lock the
 * caller holds, so only receive needs stopping: rx_fill sees rx_paused
 * under rx_lock and leaves, owing the backend a resume.
 */
static void op_quiesce(struct virtio_dev *d)
{
    struct virtio_net *n = to_net(d);
    pthread_mutex_lock(&n->rx_lock);
    n->rx_paused = true;
    pthread_mutex_unlock(&n->rx_lock);
}

static void op_resume(struct virtio_dev *d)
{
    struct virtio_net *n = to_net(d);
    pthread_mutex_lock(&n->rx_lock);
    n->rx_paused = false;
    n->rx_starved = true; /* frames may wait: the transport's kick asks for them */
    pthread_mutex_unlock(&n->rx_lock);
}

/* The receive side's life; offloads follow from the features the transport restores. */
static int op_save(struct virtio_dev *d, struct mig_out *o)
{
    struct virtio_net *n = to_net(d);
    pthread_mutex_lock(&n->rx_lock);
    mig_put_bool(o, n->rx_live);
    pthread_mutex_unlock(&n->rx_lock);
    mig_put_bytes(o, n->config, 6);
    return 0;
}

static int op_load(struct virtio_dev *d, struct mig_in *in)
{
    struct virtio_net *n = to_net(d);
    bool live = mig_get_bool(in);
    uint8_t mac[6];
    mig_get_bytes(in, mac, sizeof(mac));
    if (!mig_in_ok(in) || memcmp(mac, n->config, sizeof(mac)) != 0) {
        mig_in_fail(in);
        return -EINVAL;
    }
    pthread_mutex_lock(&n->rx_lock);
    n->rx_live = live;
    n->rx_starved = true;
    pthread_mutex_unlock(&n->rx_lock);
    return 0;
}

static const struct virtio_dev_ops net_ops = {
    .config_read = cfg_read,
    .config_write = cfg_write,
    .set_features = set_features,
    .driver_ok = driver_ok,
    .queue_notify = queue_notify,
    .reset = reset,
    .quiesce = op_quiesce,
    .resume = op_resume,
    .save = op_save,
    .load = op_load,
};

/* ---- setup ---- */

static uint64_t features_for(unsigned sup, bool mac)
{
    uint64_t f = BIT(VIRTIO_NET_F_STATUS) | BIT(VIRTIO_NET_F_MRG_RXBUF);
    if (mac)
        f |= BIT(VIRTIO_NET_F_MAC);
    if (sup & NET_OFF_CSUM) {
        f |= BIT(VIRTIO_NET_F_CSUM) | BIT(VIRTIO_NET_F_GUEST_CSUM);
        if (sup & NET_OFF_TSO4)
            f |= BIT(VIRTIO_NET_F_HOST_TSO4) | BIT(VIRTIO_NET_F_GUEST_TSO4);
        if (sup & NET_OFF_TSO6)
            f |= BIT(VIRTIO_NET_F_HOST_TSO6) | BIT(VIRTIO_NET_F_GUEST_TSO6);
    }
    return f;
}

int virtio_net_create(const struct virtio_net_params *p, struct virtio_net **out)
{
    *out = NULL;
    uint16_t qs = p->queue_size ? p->queue_size : VIRTIO_NET_QUEUE_SIZE;
    if (!p->mem || !p->backend || qs < 2 || qs > VQ_MAX_SIZE || (qs & (qs - 1)))
        return -EINVAL;
    struct virtio_net *n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->be = p->backend;
    bool mac = p->mac && p->mac->present;
    if (mac)
        memcpy(n->config, p->mac->bytes, 6);
    put16(n->config + 6, VIRTIO_NET_S_LINK_UP);
    put16(n->config + 8, 1);
    n->dev = (struct virtio_dev){.ops = &net_ops,
                                 .name = p->name ? p->name : "virtio-net",
                                 .type = VIRTIO_ID_NET,
                                 .class_code = 0x020000, /* network, Ethernet */
                                 .host_features = features_for(p->backend->offloads_supported, mac),
                                 .config_len = VIRTIO_NET_CONFIG_LEN,
                                 .nqueues = 2,
                                 .queue_max = qs,
                                 .vqs = n->vqs};
    int rc = vq_init(&n->vqs[0], p->mem);
    if (rc < 0)
        goto fail_free;
    if ((rc = vq_init(&n->vqs[1], p->mem)) < 0)
        goto fail_vq0;
    if ((rc = -pthread_mutex_init(&n->rx_lock, NULL)) < 0)
        goto fail_vq1;
    if ((rc = virtio_pci_init(&n->vp, &n->dev, n->dev.name, p->msi)) < 0)
        goto fail_lock;
    n->rx_ops = (struct net_rx_ops){.rx_ready = rx_ready, .ctx = n};
    if ((rc = net_start(n->be, &n->rx_ops)) < 0)
        goto fail_pci;
    *out = n;
    return 0;
fail_pci:
    virtio_pci_destroy(&n->vp);
fail_lock:
    pthread_mutex_destroy(&n->rx_lock);
fail_vq1:
    vq_destroy(&n->vqs[1]);
fail_vq0:
    vq_destroy(&n->vqs[0]);
fail_free:
    free(n);
    return rc;
}

struct virtio_pci *virtio_net_pci(struct virtio_net *n)
{
    return &n->vp;
}

void virtio_net_destroy(struct virtio_net *n)
{
    if (!n)
        return;
    virtio_pci_destroy(&n->vp);
    pthread_mutex_destroy(&n->rx_lock);
    vq_destroy(&n->vqs[0]);
    vq_destroy(&n->vqs[1]);
    free(n);
}
