/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the device migration loaders: a payload comes from
 * a migration peer and is untrusted.
 *
 * Input: byte 0 picks the device (mod 11: UART, CMOS, PM, i8042, pvpanic,
 * fw_cfg, PCI function, PCI bridge, virtio-blk, virtio-net, NVMe); the
 * rest is handed to that device's loader on a freshly built device over a
 * small guest RAM (filled with a pattern of the input) and fake backends.
 * Whatever the loader answered, the device is then exercised a little
 * (resumed, kicked, doorbells rung, registers read) and destroyed.
 *
 * Checked: no crash, no sanitizer report, no leak; loaders return 0 or
 * -EINVAL; backends only ever see buffers inside guest RAM and requests
 * inside the disk.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/mig_buf.h"
#include "devices/cmos.h"
#include "devices/fw_cfg.h"
#include "devices/nvme.h"
#include "devices/pci_bridge.h"
#include "devices/platform.h"
#include "devices/uart16550.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"
#include "../unit/nvme_fake_blk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE  0x40000u
#define DISK_SIZE 0x20000u

static uint8_t *ram;
static struct guest_mem mem;

static void check_rc(int rc)
{
    if (rc != 0 && rc != -EINVAL)
        abort();
}

static void in_ram(const void *p, size_t len)
{
    const uint8_t *b = p;
    if (b < ram || b > ram + RAM_SIZE || len > (size_t)(ram + RAM_SIZE - b))
        abort();
}

static void nop_level(void *ctx, uint32_t gsi, bool level)
{
    (void)ctx, (void)gsi, (void)level;
}

static void nop_msi(void *ctx, uint64_t addr, uint32_t data)
{
    (void)ctx, (void)addr, (void)data;
}

static struct irq_sink sink = {.set_level = nop_level, .msi = nop_msi};

/* ---- small devices ---- */

static int64_t fake_realtime(void *ctx)
{
    (void)ctx;
    return 1700000000ll * 1000000000ll;
}

static uint64_t fake_mono(void *ctx)
{
    (void)ctx;
    return 123456789ull;
}

static void run_uart(struct mig_in *in)
{
    struct uart u;
    struct uart_config cfg = {.irq = {.sink = &sink, .gsi = 4}};
    if (uart_init(&u, &cfg) < 0)
        return;
    check_rc(uart_mig_load(&u, in, UART_STATE_VERSION));
    for (unsigned r = 0; r < UART_NPORTS; r++)
        (void)uart_io_ops.read(&u, r, 1);
    (void)uart_receive(&u, (const uint8_t *)"xy", 2);
    uart_io_ops.write(&u, 0, 1, 'z');
    uart_destroy(&u);
}

static void run_cmos(struct mig_in *in)
{
    struct cmos c;
    struct cmos_config cfg = {.clock_ns = fake_realtime};
    if (cmos_init(&c, &cfg) < 0)
        return;
    check_rc(cmos_mig_load(&c, in, CMOS_STATE_VERSION));
    (void)cmos_io_ops.read(&c, 1, 1);
    for (unsigned i = 0; i < CMOS_SIZE; i++) {
        cmos_io_ops.write(&c, 0, 1, i);
        (void)cmos_io_ops.read(&c, 1, 1);
    }
    cmos_io_ops.write(&c, 0, 1, CMOS_REG_B);
    cmos_io_ops.write(&c, 1, 1, 0x02);
    cmos_destroy(&c);
}

static void run_pm(struct mig_in *in)
{
    struct pm pm;
    struct pm_config cfg = {.sci = {.sink = &sink, .gsi = PM_SCI_IRQ}, .clock_ns = fake_mono};
    if (pm_init(&pm, &cfg) < 0)
        return;
    check_rc(pm_mig_load(&pm, in, PM_STATE_VERSION));
    (void)pm_io_ops.read(&pm, 0, 8);
    (void)pm_io_ops.read(&pm, 8, 4);
    (void)pm_io_ops.read(&pm, 0x20, 4);
    pm_io_ops.write(&pm, 0, 2, 0xffff);
    pm_destroy(&pm);
}

static void run_i8042_pvpanic(struct mig_in *in, bool panic)
{
    if (panic) {
        struct pvpanic p;
        pvpanic_init(&p, NULL, NULL);
        check_rc(pvpanic_load(&p, in, PVPANIC_STATE_VERSION));
        return;
    }
    struct i8042 k;
    i8042_init(&k, NULL, NULL);
    check_rc(i8042_load(&k, in, I8042_STATE_VERSION));
    i8042_data_ops.write(&k, 0, 1, 0);
}

static void run_fw_cfg(struct mig_in *in)
{
    static const uint8_t blob[32] = "fuzz-fw-cfg-file";
    struct fw_cfg fw;
    if (fw_cfg_init(&fw, &mem) < 0)
        return;
    if (fw_cfg_add_file(&fw, "etc/ro", blob, sizeof(blob)) == 0 &&
        fw_cfg_add_file_rw(&fw, "etc/rw", blob, 8) == 0 &&
        fw_cfg_add_file_rw(&fw, "etc/rw2", NULL, 0) == 0) {
        check_rc(fw_cfg_load(&fw, in, FW_CFG_STATE_VERSION));
        for (unsigned i = 0; i < 16; i++)
            (void)fw_cfg_io_ops.read(&fw, FW_CFG_PORT_DATA, 1);
        /* A DMA read of the current item into RAM (descriptor at 0x1000). */
        static const uint8_t desc[16] = {0, 0, 0, 2, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0x20, 0};
        memcpy(ram + 0x1000, desc, sizeof(desc));
        fw_cfg_io_ops.write(&fw, FW_CFG_PORT_DMA + 4, 4, __builtin_bswap32(0x1000));
    }
    fw_cfg_destroy(&fw);
}

/* ---- PCI ---- */

static uint64_t bar_rd(void *o, uint64_t off, unsigned size)
{
    (void)o, (void)off, (void)size;
    return 0;
}

static void bar_wr(void *o, uint64_t off, unsigned size, uint64_t v)
{
    (void)o, (void)off, (void)size, (void)v;
}

static const struct io_ops bar_ops = {bar_rd, bar_wr};

static void run_pci(struct mig_in *in, bool bridge)
{
    struct pci_topology t;
    static struct pci_func f, behind;
    static struct pci_bridge br;
    if (pci_topology_init(&t, NULL, &sink) < 0)
        return;
    pci_func_init(&f, "f", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&f, 0x1234, 0x5678);
    pci_set_bar(&f, 0, PCI_BAR_MEM64, 0x4000, true, &bar_ops, NULL);
    pci_set_bar(&f, 2, PCI_BAR_IO, 0x40, false, &bar_ops, NULL);
    pci_func_set_intx_pin(&f, 2);
    int cap = pci_add_capability(&f, 0x09, 16);
    if (cap > 0)
        pci_cfg_set_mask(&f, (uint16_t)(cap + 4), 4, 0xffffffff, 0);
    pci_bridge_init(&br, "br", 1);
    pci_func_init(&behind, "behind", PCI_HEADER_TYPE_NORMAL);
    struct pci_path p = {0, 3, 0}, pb = {0, 4, 0}, pd = {1, 2, 0};
    pci_topology_add(&t, &p, &f);
    pci_topology_add(&t, &pb, &br.func);
    pci_topology_add(&t, &pd, &behind);
    if (bridge)
        check_rc(pci_bridge_load(&br, in, PCI_BRIDGE_STATE_VERSION));
    else
        check_rc(pci_func_load(&f, in, PCI_FUNC_STATE_VERSION));
    for (unsigned bus = 0; bus < 8; bus++)
        (void)pci_topology_cfg_read(&t, (uint8_t)bus, 2, 0, 0, 4);
    for (unsigned off = 0; off < PCI_CFG_SIZE; off += 4)
        (void)pci_topology_cfg_read(&t, 0, bridge ? 4 : 3, 0, off, 4);
    pci_topology_cfg_write(&t, 0, 3, 0, PCI_REG_COMMAND, 2, 0);
    pci_topology_reset(&t);
    pci_topology_destroy(&t);
}

/* ---- virtio ---- */

static void virtio_exercise(struct virtio_pci *vp)
{
    virtio_pci_resume(vp);
    for (unsigned q = 0; q < vp->dev->nqueues; q++) {
        virtio_pci_bar_write(vp, VIRTIO_PCI_NOTIFY_OFF + VIRTIO_PCI_NOTIFY_MUL * q, 2, q);
        virtio_pci_kick(vp, q);
    }
    for (unsigned off = 0; off < VIRTIO_PCI_COMMON_LEN; off += 4)
        (void)virtio_pci_bar_read(vp, off, 4);
    (void)virtio_pci_bar_read(vp, VIRTIO_PCI_ISR_OFF, 1);
    virtio_pci_quiesce(vp);
}

/* Adds vp's function at 0.4.0 so config space and INTx are live. */
static bool attach(struct pci_topology *t, struct virtio_pci *vp)
{
    if (pci_topology_init(t, NULL, &sink) < 0)
        return false;
    struct pci_path p = {0, 4, 0};
    if (pci_topology_add(t, &p, &vp->func) < 0) {
        pci_topology_destroy(t);
        return false;
    }
    pci_topology_cfg_write(t, 0, 4, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
    return true;
}

static void run_virtio_blk(struct mig_in *in)
{
    struct fake_blk *fb = fake_blk_new(DISK_SIZE, 512);
    if (!fb)
        return;
    fb->ram_lo = ram;
    fb->ram_hi = ram + RAM_SIZE;
    struct virtio_blk *b;
    struct virtio_blk_params p = {
        .name = "vblk", .mem = &mem, .backend = &fb->b, .msi = &sink, .queue_size = 16};
    struct pci_topology t;
    if (virtio_blk_create(&p, &b) == 0) {
        if (attach(&t, virtio_blk_pci(b))) {
            check_rc(virtio_pci_load(virtio_blk_pci(b), in, VIRTIO_BLK_STATE_VERSION));
            virtio_exercise(virtio_blk_pci(b));
            pci_topology_destroy(&t);
        }
        virtio_blk_destroy(b);
    }
    if (fb->nbad)
        abort(); /* the device must range-check before the backend */
    blk_close(&fb->b);
}

struct fnet {
    struct net_backend be;
    const struct net_rx_ops *rx;
};

static int fn_start(struct net_backend *b, const struct net_rx_ops *ops)
{
    ((struct fnet *)b)->rx = ops;
    return 0;
}

static long fn_recv(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    (void)b;
    size_t cap = 0;
    for (unsigned i = 0; i < n; i++) {
        in_ram(iov[i].iov_base, iov[i].iov_len);
        cap += iov[i].iov_len;
    }
    uint8_t frame[80];
    memset(frame, 0x5a, sizeof(frame));
    if (cap < sizeof(frame))
        return -EMSGSIZE;
    return (long)iov_from_buf(iov, n, frame, sizeof(frame));
}

static void fn_resume(struct net_backend *b)
{
    (void)b;
}

static int fn_send(struct net_backend *b, const struct iovec *iov, unsigned n)
{
    (void)b;
    for (unsigned i = 0; i < n; i++)
        in_ram(iov[i].iov_base, iov[i].iov_len);
    return 0;
}

static int fn_offloads(struct net_backend *b, unsigned off)
{
    (void)b, (void)off;
    return 0;
}

static void fn_close(struct net_backend *b)
{
    (void)b;
}

static const struct net_backend_ops fn_ops = {fn_start, fn_recv,     fn_resume,
                                              fn_send,  fn_offloads, fn_close};

static void run_virtio_net(struct mig_in *in)
{
    struct fnet f = {.be = {.ops = &fn_ops, .offloads_supported = NET_OFF_CSUM | NET_OFF_TSO4}};
    struct opt_mac mac = {true, {0x52, 0x54, 0, 1, 2, 3}};
    struct virtio_net_params p = {
        .name = "nic", .mem = &mem, .backend = &f.be, .mac = &mac, .msi = &sink, .queue_size = 16};
    struct virtio_net *n;
    struct pci_topology t;
    if (virtio_net_create(&p, &n) < 0)
        return;
    if (attach(&t, virtio_net_pci(n))) {
        check_rc(virtio_pci_load(virtio_net_pci(n), in, VIRTIO_NET_STATE_VERSION));
        f.rx->rx_ready(f.rx->ctx); /* quiesced after load: writes nothing */
        virtio_pci_resume(virtio_net_pci(n));
        f.rx->rx_ready(f.rx->ctx);
        virtio_exercise(virtio_net_pci(n));
        pci_topology_destroy(&t);
    }
    virtio_net_destroy(n);
}

/* ---- NVMe ---- */

static void run_nvme(struct mig_in *in)
{
    struct fake_blk *fb = fake_blk_new(DISK_SIZE, 512);
    if (!fb)
        return;
    fb->ram_lo = ram;
    fb->ram_hi = ram + RAM_SIZE;
    static struct nvme_disk n;
    struct c_nvme_disk spec;
    memset(&spec, 0, sizeof(spec));
    memcpy(spec.serial_number, "FUZZ", 4);
    struct pci_topology t;
    if (nvme_init(&n, "nvme", &spec, &fb->b, &mem, &sink) == 0 &&
        pci_topology_init(&t, NULL, &sink) == 0) {
        struct pci_path p = {0, 4, 0};
        pci_topology_add(&t, &p, nvme_pci_func(&n));
        pci_topology_cfg_write(&t, 0, 4, 0, PCI_REG_COMMAND, 2, PCI_CMD_MEM | PCI_CMD_BUS_MASTER);
        check_rc(nvme_load(&n, in, NVME_STATE_VERSION));
        nvme_resume(&n);
        for (unsigned q = 0; q <= 4; q++) {
            nvme_bar_write(&n, NVME_DOORBELL_BASE + 8u * q, 4, 1);
            nvme_bar_write(&n, NVME_DOORBELL_BASE + 8u * q + 4, 4, 1);
        }
        for (unsigned off = 0; off < 0x40; off += 4)
            (void)nvme_bar_read(&n, off, 4);
        nvme_quiesce(&n);
        nvme_bar_write(&n, NVME_REG_CC, 4, 0);
        pci_topology_destroy(&t);
    }
    nvme_destroy(&n);
    if (fb->nbad)
        abort();
    blk_close(&fb->b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!ram) {
        ram = aligned_alloc(4096, RAM_SIZE);
        if (!ram)
            abort();
        guest_mem_init_buffer(&mem, ram, RAM_SIZE);
    }
    /* Guest RAM: a pattern of the input, so loaded rings hold something. */
    for (size_t off = 0; off < RAM_SIZE; off += size)
        memcpy(ram + off, data, size < RAM_SIZE - off ? size : RAM_SIZE - off);
    struct mig_in in;
    mig_in_init(&in, data + 1, size - 1);
    switch (data[0] % 11) {
    case 0:
        run_uart(&in);
        break;
    case 1:
        run_cmos(&in);
        break;
    case 2:
        run_pm(&in);
        break;
    case 3:
        run_i8042_pvpanic(&in, false);
        break;
    case 4:
        run_i8042_pvpanic(&in, true);
        break;
    case 5:
        run_fw_cfg(&in);
        break;
    case 6:
        run_pci(&in, false);
        break;
    case 7:
        run_pci(&in, true);
        break;
    case 8:
        run_virtio_blk(&in);
        break;
    case 9:
        run_virtio_net(&in);
        break;
    default:
        run_nvme(&in);
        break;
    }
    return 0;
}
