/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for virtio-blk on the virtio PCI transport, driven the
 * way a guest drives it: BAR and config-space accesses, guest memory
 * writes (descriptors, rings, request headers) and doorbells, against a
 * memory disk that completes inline or later. The device has two queues
 * (VIRTIO_BLK_F_MQ), so requests on both interleave and complete on each
 * other's heels.
 *
 * Input: 12-byte records  op, arg, offset (2 bytes LE), value (8 bytes LE).
 * op % 9: 0 BAR 4 write, 1 BAR 4 read (size 1 << (arg % 4)), 2 bring the
 * device up (features from value, both queues of size 1 << (arg % 5), at
 * VD_RING(0) and VD_RING(1)), 3 write 8 bytes of guest RAM at offset * 4,
 * 4 put head `offset` in queue (arg & 1)'s avail ring and kick it,
 * 5 config-space write (offset % 256, size 1 << (arg % 3)), 6 complete
 * deferred requests (arg odd: defer from now on), 7 MSI-X BAR write,
 * 8 kick queue arg % 2 through virtio_pci_kick.
 *
 * Checked: no crash, no sanitizer report, no leak; the backend only ever
 * sees requests inside the disk with buffers inside guest RAM.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtio_blk.h"
#include "../unit/virtio_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_RAM  0x40000u /* rings at 0x10000 and 0x20000 (VD_RING(0..1)); data anywhere */
#define FUZZ_NQ   2
#define DISK_SIZE 0x10000u
#define MAX_DEFER 512

static uint8_t *ram;
static uint8_t disk_data[DISK_SIZE];

struct fdisk {
    struct blk_backend be;
    bool defer;
    struct blk_req *q[MAX_DEFER];
    unsigned n;
};

static void in_ram(const void *p, size_t len)
{
    const uint8_t *b = p;
    if (b < ram || b > ram + FUZZ_RAM || len > (size_t)(ram + FUZZ_RAM - b))
        abort();
}

static int run(struct blk_req *r)
{
    if (r->offset > DISK_SIZE || r->len > DISK_SIZE - r->offset || r->len % 512)
        abort(); /* the device must range-check before the backend */
    uint64_t off = r->offset, sum = 0;
    for (unsigned i = 0; i < r->iovcnt; i++) {
        in_ram(r->iov[i].iov_base, r->iov[i].iov_len);
        if (r->op == BLK_READ)
            memcpy(r->iov[i].iov_base, disk_data + off, r->iov[i].iov_len);
        else if (r->op == BLK_WRITE)
            memcpy(disk_data + off, r->iov[i].iov_base, r->iov[i].iov_len);
        off += r->iov[i].iov_len;
        sum += r->iov[i].iov_len;
    }
    if ((r->op == BLK_READ || r->op == BLK_WRITE) && (sum != r->len || r->iovcnt > BLK_MAX_IOV))
        abort();
    return 0;
}

static void complete_all(struct fdisk *f)
{
    while (f->n) {
        struct blk_req *r = f->q[--f->n];
        r->done(r, run(r));
    }
}

static void fd_submit(struct blk_backend *b, struct blk_req *r)
{
    struct fdisk *f = (struct fdisk *)b;
    if (f->defer && f->n < MAX_DEFER)
        f->q[f->n++] = r;
    else
        r->done(r, run(r));
}

static void fd_drain(struct blk_backend *b)
{
    complete_all((struct fdisk *)b);
}

static void fd_close(struct blk_backend *b)
{
    (void)b;
}

static const struct blk_backend_ops fd_ops = {
    .submit = fd_submit, .drain = fd_drain, .close = fd_close};

static uint64_t get_le(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ram && !(ram = aligned_alloc(4096, FUZZ_RAM)))
        abort();
    memset(ram, 0, FUZZ_RAM);
    struct vdrv d;
    memset(&d, 0, sizeof(d));
    d.ram = ram;
    guest_mem_init_buffer(&d.mem, ram, FUZZ_RAM);
    d.sink = (struct irq_sink){.ctx = &d, .set_level = vd_set_level, .msi = vd_msi};

    struct fdisk f = {.be = {.ops = &fd_ops,
                             .info = {.size = DISK_SIZE,
                                      .block_size = 512,
                                      .can_discard = true,
                                      .can_write_zeroes = true,
                                      .can_flush = true}}};
    struct virtio_blk *blk;
    struct virtio_blk_params p = {.name = "fz",
                                  .mem = &d.mem,
                                  .backend = &f.be,
                                  .serial = "fuzz",
                                  .msi = &d.sink,
                                  .queue_size = 16,
                                  .nqueues = FUZZ_NQ};
    if (virtio_blk_create(&p, &blk) < 0)
        abort();
    if (vd_attach(&d, virtio_blk_pci(blk)) < 0)
        abort();
    const struct pci_bar *msix = &d.vp->func.bars[VIRTIO_PCI_MSIX_BAR];

    for (; size >= 12; data += 12, size -= 12) {
        uint8_t op = data[0], arg = data[1];
        uint32_t off = (uint32_t)get_le(data + 2, 2);
        uint64_t val = get_le(data + 4, 8);
        unsigned sz = 1u << (arg % 4);
        switch (op % 9) {
        case 0:
            vd_wr(&d, off % VIRTIO_PCI_BAR_SIZE, sz, val);
            break;
        case 1:
            (void)vd_rd(&d, off % VIRTIO_PCI_BAR_SIZE, sz);
            break;
        case 2:
            vd_negotiate(&d, val | (1ull << VIRTIO_F_VERSION_1));
            for (unsigned q = 0; q < FUZZ_NQ; q++)
                vd_queue(&d, q, (uint16_t)(1u << (arg % 5)));
            vd_driver_ok(&d);
            break;
        case 3:
            if ((uint64_t)off * 4 + 8 <= FUZZ_RAM)
                memcpy(ram + (uint64_t)off * 4, data + 4, 8);
            break;
        case 4:
            if (d.q[arg & 1].num) {
                vd_avail(&d, arg & 1, (uint16_t)off);
                vd_kick(&d, arg & 1);
            }
            break;
        case 5:
            vd_cfg_write(&d, off % 256, 1u << (arg % 3), (uint32_t)val);
            break;
        case 6:
            complete_all(&f);
            f.defer = arg & 1;
            break;
        case 7:
            msix->ops->write(msix->opaque, off % VIRTIO_PCI_MSIX_SIZE, arg & 1 ? 8 : 4, val);
            break;
        case 8:
            virtio_pci_kick(d.vp, arg % FUZZ_NQ);
            break;
        }
    }
    virtio_blk_destroy(blk);
    if (f.n)
        abort(); /* destroy must have waited for everything */
    pci_topology_destroy(&d.topo);
    return 0;
}
