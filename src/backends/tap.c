/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Tap backend: attaches to an existing Linux tap interface (it never
 * creates one: the operator or the control plane owns interfaces).
 *
 * The fd is non-blocking. One receive thread polls it while the device is
 * "armed" (it has asked for frames); when frames wait it disarms and calls
 * rx_ready. The device re-arms by reading until net_recv() returns 0 or by
 * calling net_rx_resume(); both wake the thread through an eventfd unless
 * they run on the thread itself (inside rx_ready).
 */
#include "backends/net.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "backends/backends_int.h"

#define TAP_MAX_IOV 1024u

struct tap_backend {
    struct net_backend b;
    char name[IFNAMSIZ];
    int fd;
    int wake; /* eventfd */
    pthread_t thread;
    bool started;
    atomic_bool armed;
    atomic_bool stop;
    struct net_rx_ops rx;
    uint8_t *scratch; /* catches the tail of a frame too big for the guest's buffers */
    struct iovec iov[TAP_MAX_IOV + 1];
};

static void wake(struct tap_backend *t)
{
    uint64_t one = 1;
    ssize_t n = write(t->wake, &one, sizeof(one));
    (void)n; /* a full counter still wakes the thread */
}

/* The backend whose receive thread this is (NULL on other threads). */
static __thread struct tap_backend *rx_self;

static void *rx_main(void *arg)
{
    struct tap_backend *t = arg;
    rx_self = t;
    while (!atomic_load(&t->stop)) {
        bool armed = atomic_load(&t->armed);
        struct pollfd pf[2] = {{.fd = t->wake, .events = POLLIN}, {.fd = t->fd, .events = POLLIN}};
        int n = poll(pf, armed ? 2 : 1, -1);
        if (n < 0)
            continue; /* EINTR */
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            ssize_t r = read(t->wake, &v, sizeof(v));
            (void)r;
        }
        if (armed && (pf[1].revents & (POLLIN | POLLERR | POLLHUP)) &&
            atomic_exchange(&t->armed, false))
            t->rx.rx_ready(t->rx.ctx);
    }
    return NULL;
}

static void rearm(struct tap_backend *t)
{
    if (atomic_exchange(&t->armed, true))
        return;
    if (rx_self == t)
        return; /* the thread polls again once rx_ready returns */
    wake(t);
}

static int tap_start(struct net_backend *b, const struct net_rx_ops *ops)
{
    struct tap_backend *t = (struct tap_backend *)b;
    if (t->started)
        return -EBUSY;
    if (!ops || !ops->rx_ready)
        return -EINVAL;
    t->rx = *ops;
    atomic_store(&t->armed, true);
    int e = pthread_create(&t->thread, NULL, rx_main, t);
    if (e)
        return -e;
    pthread_setname_np(t->thread, "cella-tap-rx");
    t->started = true; /* only start() and close() read it */
    return 0;
}

static long tap_recv(struct net_backend *b, const struct iovec *iov, unsigned iovcnt)
{
    struct tap_backend *t = (struct tap_backend *)b;
    if (iovcnt > TAP_MAX_IOV || (iovcnt && !iov))
        return -EINVAL;
    size_t room = 0;
    for (unsigned i = 0; i < iovcnt; i++) {
        t->iov[i] = iov[i];
        room += iov[i].iov_len;
    }
    if (room < NET_VNET_HDR_LEN)
        return -EINVAL;
    t->iov[iovcnt].iov_base = t->scratch;
    t->iov[iovcnt].iov_len = NET_MAX_FRAME;
    for (;;) {
        ssize_t n = readv(t->fd, t->iov, (int)iovcnt + 1);
        if (n >= 0) {
            if ((size_t)n > room)
                return -EMSGSIZE; /* dropped */
            return n;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            rearm(t);
            return 0;
        }
        return -errno;
    }
}

static void tap_rx_resume(struct net_backend *b)
{
    rearm((struct tap_backend *)b);
}

static int tap_send(struct net_backend *b, const struct iovec *iov, unsigned iovcnt)
{
    struct tap_backend *t = (struct tap_backend *)b;
    if (!iovcnt || iovcnt > TAP_MAX_IOV || !iov)
        return -EINVAL;
    for (;;) {
        ssize_t n = writev(t->fd, iov, (int)iovcnt);
        if (n >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

static int tap_set_offloads(struct net_backend *b, unsigned offloads)
{
    struct tap_backend *t = (struct tap_backend *)b;
    if (offloads & ~b->offloads_supported)
        return -EINVAL;
    return ioctl(t->fd, TUNSETOFFLOAD, (unsigned long)offloads) < 0 ? -errno : 0;
}

static void tap_free(struct tap_backend *t)
{
    if (t->started) {
        atomic_store(&t->stop, true);
        wake(t);
        pthread_join(t->thread, NULL);
    }
    if (t->fd >= 0)
        close(t->fd);
    if (t->wake >= 0)
        close(t->wake);
    free(t->scratch);
    free(t);
}

static void tap_close(struct net_backend *b)
{
    tap_free((struct tap_backend *)b);
}

static const struct net_backend_ops tap_ops = {
    .start = tap_start,
    .recv = tap_recv,
    .rx_resume = tap_rx_resume,
    .send = tap_send,
    .set_offloads = tap_set_offloads,
    .close = tap_close,
};

static bool ifname_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= IFNAMSIZ || !strcmp(name, ".") || !strcmp(name, ".."))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch <= ' ' || ch == '/' || ch == ':' || ch >= 0x7f)
            return false;
    }
    return true;
}

/* Which offloads the tap accepts: each with checksum offload, one at a time. */
static unsigned probe_offloads(int fd)
{
    static const unsigned bits[] = {NET_OFF_TSO4, NET_OFF_TSO6, NET_OFF_UFO};
    if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)TUN_F_CSUM) < 0)
        return 0;
    unsigned ok = NET_OFF_CSUM;
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        if (ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | bits[i])) == 0)
            ok |= bits[i];
    }
    ioctl(fd, TUNSETOFFLOAD, 0ul); /* nothing until the guest negotiates */
    return ok;
}

static int attach(struct tap_backend *t, const char *ptr, struct cella_errors *errs)
{
    t->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (t->fd < 0) {
        int e = errno;
        return cella_err(errs, -e, ptr, "cannot open /dev/net/tun for tap \"%s\": %s", t->name,
                         strerror(e));
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", t->name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(t->fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        if (e == EPERM || e == EACCES)
            return cella_err(errs, -e, ptr,
                             "no permission to attach to tap \"%s\" (it must belong to this "
                             "user or group, or cella needs CAP_NET_ADMIN)",
                             t->name);
        if (e == EBUSY)
            return cella_err(errs, -e, ptr,
                             "tap \"%s\" is in use by another process, or is not a "
                             "single-queue tap with a virtio-net header",
                             t->name);
        if (e == EINVAL)
            return cella_err(errs, -e, ptr, "interface \"%s\" is not a tap", t->name);
        return cella_err(errs, -e, ptr, "cannot attach to tap \"%s\": %s", t->name, strerror(e));
    }
    int hdr = NET_VNET_HDR_LEN;
    if (ioctl(t->fd, TUNSETVNETHDRSZ, &hdr) < 0) {
        int e = errno;
        return cella_err(errs, -e, ptr, "tap \"%s\": cannot set the virtio-net header size: %s",
                         t->name, strerror(e));
    }
    t->b.offloads_supported = probe_offloads(t->fd);
    return 0;
}

int net_open(const struct spec_component *c, struct net_backend **out, struct cella_errors *errs)
{
    struct jptr p;
    *out = NULL;
    if (c->kind != SK_VIRTIO_NETWORK_BACKEND) {
        be_comp_ptr(&p, c, NULL);
        return cella_err(errs, -ENOTSUP, p.buf, "is not a network backend this build can open");
    }
    be_comp_ptr(&p, c, "vnic_name");
    const char *name = c->u.virtio_network_backend.vnic_name;
    if (!name || !ifname_ok(name))
        return cella_err(errs, -EINVAL, p.buf,
                         "\"%s\" is not a Linux interface name (1-15 characters, no spaces, "
                         "'/' or ':')",
                         name ? name : "");
    /* TUNSETIFF would create a missing interface; cella only attaches. */
    if (if_nametoindex(name) == 0)
        return cella_err(errs, -ENODEV, p.buf,
                         "there is no interface \"%s\" (create it first, e.g. "
                         "`ip tuntap add dev %s mode tap user $USER vnet_hdr`)",
                         name, name);
    struct tap_backend *t = calloc(1, sizeof(*t));
    if (!t || !(t->scratch = malloc(NET_MAX_FRAME))) {
        free(t);
        return cella_err(errs, -ENOMEM, p.buf, "out of memory");
    }
    t->b.ops = &tap_ops;
    t->fd = -1;
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int r = t->wake < 0 ? cella_err(errs, -errno, p.buf, "eventfd: %s", strerror(errno))
                        : attach(t, p.buf, errs);
    if (r < 0) {
        tap_free(t);
        return r;
    }
    *out = &t->b;
    return 0;
}
