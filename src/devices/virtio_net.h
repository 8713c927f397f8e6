/* SPDX-License-Identifier: MPL-2.0 */
/*
 * virtio-net (the spec's `virtio_nic`): one receive and one transmit
 * queue over a net backend (backends/net.h), no control queue.
 *
 * Offered: MAC (when the spec gives one), STATUS (link always up),
 * MRG_RXBUF, and the checksum/segmentation offloads the backend accepted
 * (backend->offloads_supported): CSUM and GUEST_CSUM need NET_OFF_CSUM,
 * HOST_TSO4/GUEST_TSO4 need CSUM + TSO4, HOST_TSO6/GUEST_TSO6 need CSUM +
 * TSO6. FEATURES_OK refuses TSO without the matching CSUM feature and
 * applies the guest-side offloads with net_set_offloads().
 *
 * Frames carry the 12-byte virtio_net_hdr_v1 both ways, unchanged between
 * guest and backend. Transmit sends each chain's readable buffers as one
 * frame (no copy). Receive runs on the backend's thread: frames go straight
 * into guest buffers, across several chains with MRG_RXBUF (num_buffers
 * set in the first), one chain each otherwise; when the guest has too few
 * buffers the device stops reading and calls net_rx_resume() once the
 * guest kicks the receive queue.
 *
 * Lifetime: close the backend (which stops its thread) before
 * virtio_net_destroy().
 */
#ifndef CELLA_DEVICES_VIRTIO_NET_H
#define CELLA_DEVICES_VIRTIO_NET_H

#include <stdint.h>

#include "backends/net.h"
#include "devices/io.h"
#include "devices/virtio_pci.h"
#include "machine/guest_mem.h"
#include "spec/spec.h"

#define VIRTIO_NET_F_CSUM       0
#define VIRTIO_NET_F_GUEST_CSUM 1
#define VIRTIO_NET_F_MAC        5
#define VIRTIO_NET_F_GUEST_TSO4 7
#define VIRTIO_NET_F_GUEST_TSO6 8
#define VIRTIO_NET_F_HOST_TSO4  11
#define VIRTIO_NET_F_HOST_TSO6  12
#define VIRTIO_NET_F_MRG_RXBUF  15
#define VIRTIO_NET_F_STATUS     16

#define VIRTIO_NET_S_LINK_UP   1
#define VIRTIO_NET_CONFIG_LEN  10 /* mac[6], status, max_virtqueue_pairs */
#define VIRTIO_NET_QUEUE_SIZE  256
#define VIRTIO_NET_RXQ         0
#define VIRTIO_NET_TXQ         1
#define VIRTIO_NET_RX_MAX_IOV  256 /* guest buffers one received frame may use */
#define VIRTIO_NET_RX_MAX_BUFS 64  /* chains one frame may use (MRG_RXBUF) */
#define VIRTIO_NET_TX_MAX_IOV  256
/* The largest frame without guest TSO: Ethernet + VLAN tag + 1500 MTU. */
#define VIRTIO_NET_RX_SMALL (NET_VNET_HDR_LEN + 1518u)

struct virtio_net;

struct virtio_net_params {
    const char *name;
    const struct guest_mem *mem;
    struct net_backend *backend; /* not owned; started by create */
    const struct opt_mac *mac;   /* may be NULL or not present: no MAC feature */
    const struct irq_sink *msi;
    uint16_t queue_size; /* 0: VIRTIO_NET_QUEUE_SIZE; else a power of two */
};

/* Creates the device and its PCI function and starts the backend. Setup thread. */
int virtio_net_create(const struct virtio_net_params *p, struct virtio_net **out);

struct virtio_pci *virtio_net_pci(struct virtio_net *n);

/*
 * Migration: the payload is the transport's (virtio_pci_save/load on
 * virtio_net_pci(n)); loading re-applies the negotiated offloads with
 * net_set_offloads. While quiesced, receive writes no guest RAM: an
 * rx_ready is answered later, by the resume.
 */
#define VIRTIO_NET_STATE_VERSION VIRTIO_PCI_STATE_VERSION

/* Frees; the backend must already be closed (no more rx_ready). NULL is a no-op. */
void virtio_net_destroy(struct virtio_net *n);

#endif
