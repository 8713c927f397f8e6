/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Network backends: a Linux tap interface, named by a
 * virtio_network_backend's `vnic_name`.
 *
 * Frames cross the interface with a 12-byte virtio_net_hdr_v1 in front
 * (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so checksum and segmentation offload
 * metadata pass between guest and host unchanged. Offloads the guest
 * negotiates are applied with net_set_offloads() (TUNSETOFFLOAD); the
 * device offers the guest only what the tap accepted.
 *
 * Threading: net_send() may be called from any thread (one at a time per
 * backend); the receive callback runs on the backend's own thread.
 */
#ifndef CELLA_BACKENDS_NET_H
#define CELLA_BACKENDS_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/error.h"
#include "spec/spec.h"

#define NET_VNET_HDR_LEN 12u
#define NET_MAX_FRAME    (65536u + NET_VNET_HDR_LEN)

/* Offload bits for net_set_offloads (mirror TUN_F_*). */
#define NET_OFF_CSUM 0x01u
#define NET_OFF_TSO4 0x02u
#define NET_OFF_TSO6 0x04u
#define NET_OFF_UFO  0x10u

struct net_backend;

/*
 * Receive side. `rx_ready` is called on the backend's thread when frames are
 * waiting; the device then calls net_recv() until it returns 0, or until it
 * has no guest buffers left, in which case it calls net_rx_resume() once it
 * has some again. No further rx_ready comes until net_recv() returned 0 or
 * net_rx_resume() was called.
 */
struct net_rx_ops {
    void (*rx_ready)(void *ctx);
    void *ctx;
};

struct net_backend_ops {
    int (*start)(struct net_backend *b, const struct net_rx_ops *ops);
    long (*recv)(struct net_backend *b, const struct iovec *iov, unsigned iovcnt);
    void (*rx_resume)(struct net_backend *b);
    int (*send)(struct net_backend *b, const struct iovec *iov, unsigned iovcnt);
    int (*set_offloads)(struct net_backend *b, unsigned offloads);
    void (*close)(struct net_backend *b); /* stops the thread, frees b */
};

/* Device cores use only this struct (tests give devices fakes). */
struct net_backend {
    const struct net_backend_ops *ops;
    unsigned offloads_supported; /* NET_OFF_* the tap accepted */
};

/* Opens the tap named by component c (virtio_network_backend). */
int net_open(const struct spec_component *c, struct net_backend **out, struct cella_errors *errs);

/* Starts delivering receive notifications. */
static inline int net_start(struct net_backend *b, const struct net_rx_ops *ops)
{
    return b->ops->start(b, ops);
}

/*
 * Reads one frame (vnet header + packet) into iov. Returns its length,
 * 0 when none is waiting, or a negative errno. A frame larger than iov is
 * dropped and -EMSGSIZE returned.
 */
static inline long net_recv(struct net_backend *b, const struct iovec *iov, unsigned iovcnt)
{
    return b->ops->recv(b, iov, iovcnt);
}

static inline void net_rx_resume(struct net_backend *b)
{
    b->ops->rx_resume(b);
}

/* Sends one frame (vnet header + packet). Returns 0 or a negative errno. */
static inline int net_send(struct net_backend *b, const struct iovec *iov, unsigned iovcnt)
{
    return b->ops->send(b, iov, iovcnt);
}

static inline int net_set_offloads(struct net_backend *b, unsigned offloads)
{
    return b->ops->set_offloads(b, offloads);
}

static inline void net_close(struct net_backend *b)
{
    if (b)
        b->ops->close(b);
}

#endif
