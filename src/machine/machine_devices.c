/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The platform a Propolis guest expects, wired to the machine: COM1-COM4
 * from the spec's serial_port components, and the boot source.
 *
 * Device cores live in src/devices and know nothing of KVM; this file maps
 * them on the buses and connects their interrupt lines and callbacks.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "backends/net.h"
#include "backends/set.h"
#include "common/log.h"
#include "devices/acpi.h"
#include "devices/cmos.h"
#include "devices/fw_cfg.h"
#include "devices/nvme.h"
#include "devices/pci.h"
#include "devices/pci_bridge.h"
#include "devices/pci_host.h"
#include "devices/platform.h"
#include "devices/uart16550.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"
#include "machine/boot_fw.h"
#include "machine/machine_int.h"
#include "machine/x86_boot.h"

/* Largest kernel or initrd cella reads (a guard against reading a disk image by mistake). */
#define BOOT_FILE_MAX (512u << 20)

struct serial_port {
    struct machine *m;
    unsigned com; /* 1..4 */
    bool present;
    struct uart uart;
};

/*
 * A virtio function whose queue doorbells are KVM ioeventfds: a guest
 * notify then only signals an eventfd in the kernel (no exit to a vCPU
 * thread in cella) and the machine's I/O thread runs the queue.
 */
struct vdev {
    struct virtio_pci *vp;
    unsigned n;
    struct virtio_doorbell db[VIRTIO_MAX_QUEUES];
    int efd[VIRTIO_MAX_QUEUES];
    uint64_t gpa[VIRTIO_MAX_QUEUES]; /* where the ioeventfd is assigned, or PCI_BAR_UNMAPPED */
};

/*
 * An NVMe controller's I/O submission doorbells as KVM ioeventfds. Unlike
 * a virtio notify, an NVMe doorbell write carries the new tail, which an
 * ioeventfd drops; so a doorbell is assigned only while the controller
 * reads that queue's tail from the guest's shadow doorbell page (it says
 * so through nvme_hooks.doorbell_backing) and BAR0 is mapped. The I/O
 * thread then calls nvme_kick. The eventfds exist from the start and are
 * always in the epoll set: kick_later writes them too.
 */
struct ndev {
    struct machine *m;
    struct nvme_disk *n;
    pthread_mutex_t lock; /* bar, want, gpa; taken under the controller's lock (hooks) */
    uint64_t bar;         /* BAR0's address, or PCI_BAR_UNMAPPED */
    unsigned ndb;
    struct nvme_doorbell db[NVME_MAX_IO_QUEUES];
    int efd[NVME_MAX_IO_QUEUES];
    bool want[NVME_MAX_IO_QUEUES];    /* the controller reads this tail from its shadow */
    uint64_t gpa[NVME_MAX_IO_QUEUES]; /* where the ioeventfd is assigned, or PCI_BAR_UNMAPPED */
};

/*
 * epoll tags: a virtio queue is (vdev << 8 | queue); an NVMe SQ has this bit
 * too; a disk backend's completions are this bit | its index in `polled`.
 */
#define NDEV_TAG (1ull << 62)
#define BLK_TAG  (1ull << 61)

/* The disks and NICs of the spec. */
struct pci_devs {
    size_t nblk, nnvme, nnet, nvdev, nndev;
    struct virtio_blk **blk;
    struct nvme_disk **nvme;
    struct virtio_net **net;
    struct net_backend **taps;
    struct vdev *vdev;
    struct ndev *ndev;
    struct blk_backend **polled; /* disk backends whose completions the I/O thread reaps */
    size_t npolled;
    int epfd, stopfd;
    pthread_t io_thread;
    bool io_started;
};

struct machine_devices {
    struct pci_devs pd;
    struct serial_port com[4];
    struct cmos cmos;
    struct pm pm;
    struct i8042 i8042;
    struct pvpanic pvpanic;
    bool has_pvpanic;
    bool cmos_ok, pm_ok, pci_ok;
    struct pci_topology pci;
    struct pci_host host;
    struct pci_func piix4_pm; /* 0.1.3: only tells firmware where the PM block is */
    size_t nbridges;
    struct pci_bridge *bridges;
    bool ecam;
    struct boot_fw fw;
};

/* ECAM window for enable_pcie: 256 buses x 1 MiB, in the PCI hole. */
#define MACHINE_ECAM_BASE 0xe0000000ull

static const uint16_t com_base[4] = {UART_COM1_BASE, UART_COM2_BASE, UART_COM3_BASE,
                                     UART_COM4_BASE};
static const uint32_t com_irq[4] = {UART_COM1_IRQ, UART_COM2_IRQ, UART_COM1_IRQ, UART_COM2_IRQ};

static void serial_tx(void *ctx, const uint8_t *buf, size_t len)
{
    struct serial_port *p = ctx;
    if (p->m->cb.serial_out)
        p->m->cb.serial_out(p->m->cb.ctx, p->com, buf, len);
}

static int add_serial_ports(struct machine *m, const struct instance_spec *spec,
                            struct cella_errors *errs)
{
    for (size_t i = 0; i < spec->count; i++) {
        const struct spec_component *c = &spec->components[i];
        if (c->kind != SK_SERIAL_PORT)
            continue;
        unsigned n = c->u.serial_port.num;
        struct serial_port *p = &m->dev->com[n - 1];
        p->m = m;
        p->com = n;
        struct uart_config cfg = {
            .irq = {.sink = &m->irq, .gsi = com_irq[n - 1]},
            .tx = serial_tx,
            .ctx = p,
        };
        int r = uart_init(&p->uart, &cfg);
        if (r == 0)
            r = bus_register(&m->pio, com_base[n - 1], UART_NPORTS, &uart_io_ops, &p->uart, c->key);
        if (r < 0)
            return cella_err(errs, r, "", "serial port com%u: %s", n, strerror(-r));
        p->present = true;
    }
    return 0;
}

static void on_reset(void *ctx)
{
    machine_event(ctx, MACHINE_EV_RESET, "guest reset");
}

static void on_poweroff(void *ctx)
{
    machine_event(ctx, MACHINE_EV_POWEROFF, "ACPI S5");
}

static void on_pvpanic(void *ctx, uint8_t events)
{
    if (events & PVPANIC_PANICKED)
        machine_event(ctx, MACHINE_EV_PANIC, "guest panicked (pvpanic)");
    else
        log_msg(LOG_INFO, "machine", "guest loaded a crash kernel (pvpanic)");
}

struct pio_map {
    uint16_t base, len;
    const struct io_ops *ops;
    void *opaque;
    const char *name;
};

static int map_all(struct machine *m, const struct pio_map *maps, size_t n,
                   struct cella_errors *errs)
{
    for (size_t i = 0; i < n; i++) {
        int r = bus_register(&m->pio, maps[i].base, maps[i].len, maps[i].ops, maps[i].opaque,
                             maps[i].name);
        if (r < 0)
            return cella_err(errs, r, "", "cannot map %s at port %#x: %s", maps[i].name,
                             maps[i].base, strerror(-r));
    }
    return 0;
}

/* RTC/CMOS, ACPI PM block, reset paths, pvpanic, POST and delay ports. */
static int add_platform(struct machine *m, const struct instance_spec *spec,
                        struct cella_errors *errs)
{
    struct machine_devices *d = m->dev;
    struct cmos_config cc = {.irq = {.sink = &m->irq, .gsi = CMOS_ISA_IRQ}};
    int r = cmos_init(&d->cmos, &cc);
    if (r < 0)
        return cella_err(errs, r, "", "cmos: %s", strerror(-r));
    d->cmos_ok = true;
    const struct guest_mem_region *hi = m->mem.nregions > 1 ? &m->mem.regions[1] : NULL;
    cmos_set_memory(&d->cmos, m->mem.regions[0].size, hi ? hi->size : 0);
    cmos_set_cpus(&d->cmos, m->ncpus);
    struct pm_config pc = {
        .sci = {.sink = &m->irq, .gsi = PM_SCI_IRQ}, .poweroff = on_poweroff, .ctx = m};
    if ((r = pm_init(&d->pm, &pc)) < 0)
        return cella_err(errs, r, "", "pm: %s", strerror(-r));
    d->pm_ok = true;
    i8042_init(&d->i8042, on_reset, m);
    for (size_t i = 0; i < spec->count; i++) {
        if (spec->components[i].kind == SK_QEMU_PVPANIC &&
            spec->components[i].u.qemu_pvpanic.enable_isa)
            d->has_pvpanic = true;
    }
    struct pio_map maps[] = {
        {CMOS_PORT_BASE, CMOS_NPORTS, &cmos_io_ops, &d->cmos, "cmos"},
        {PM_IO_BASE, PM_IO_LEN, &pm_io_ops, &d->pm, "acpi-pm"},
        {I8042_DATA_PORT, 1, &i8042_data_ops, &d->i8042, "i8042-data"},
        {I8042_CMD_PORT, 1, &i8042_cmd_ops, &d->i8042, "i8042-cmd"},
        {POST_PORT, 1, &post_io_ops, NULL, "post"},
        {DELAY_PORT, 1, &post_io_ops, NULL, "io-delay"},
        {PVPANIC_PORT, 1, &pvpanic_io_ops, &d->pvpanic, "pvpanic"},
    };
    size_t n = sizeof(maps) / sizeof(maps[0]);
    if (d->has_pvpanic)
        pvpanic_init(&d->pvpanic, on_pvpanic, m);
    else
        n--;
    return map_all(m, maps, n, errs);
}

static int kvm_ioeventfd(struct machine *m, uint64_t gpa, unsigned len, int fd, bool on)
{
    struct kvm_ioeventfd io = {
        .addr = gpa,
        .len = len,
        .fd = fd,
        .flags = on ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN,
    };
    return ioctl(m->vm_fd, KVM_IOEVENTFD, &io) < 0 ? -errno : 0;
}

static int ioeventfd(struct machine *m, const struct vdev *v, unsigned i, uint64_t gpa, bool on)
{
    return kvm_ioeventfd(m, gpa, v->db[i].width, v->efd[i], on);
}

/* Takes f's doorbells in BAR `bar` away from KVM (new_addr unmapped) or moves them. */
static void doorbells_moved(struct machine *m, struct pci_func *f, unsigned bar, uint64_t new_addr)
{
    struct pci_devs *pd = &m->dev->pd;
    for (size_t k = 0; k < pd->nvdev; k++) {
        struct vdev *v = &pd->vdev[k];
        if (&v->vp->func != f)
            continue;
        for (unsigned i = 0; i < v->n; i++) {
            if (v->db[i].bar != bar || v->efd[i] < 0)
                continue;
            if (v->gpa[i] != PCI_BAR_UNMAPPED)
                ioeventfd(m, v, i, v->gpa[i], false);
            v->gpa[i] = PCI_BAR_UNMAPPED;
            if (new_addr == PCI_BAR_UNMAPPED)
                continue;
            uint64_t gpa = new_addr + v->db[i].offset;
            int r = ioeventfd(m, v, i, gpa, true);
            if (r == 0)
                v->gpa[i] = gpa;
            else /* the doorbell still works, through an exit */
                log_msg(LOG_WARN, "machine", "%s: no ioeventfd for queue %u: %s", f->name, i,
                        strerror(-r));
        }
    }
}

/* Brings doorbell i's ioeventfd in line with want[i] and the BAR. v->lock held. */
static void ndev_sync(struct ndev *v, unsigned i)
{
    uint64_t to =
        v->want[i] && v->bar != PCI_BAR_UNMAPPED ? v->bar + v->db[i].offset : PCI_BAR_UNMAPPED;
    if (v->gpa[i] == to)
        return;
    if (v->gpa[i] != PCI_BAR_UNMAPPED)
        kvm_ioeventfd(v->m, v->gpa[i], v->db[i].width, v->efd[i], false);
    v->gpa[i] = PCI_BAR_UNMAPPED;
    if (to == PCI_BAR_UNMAPPED)
        return;
    int r = kvm_ioeventfd(v->m, to, v->db[i].width, v->efd[i], true);
    if (r == 0)
        v->gpa[i] = to;
    else /* the doorbell still works, through an exit */
        log_msg(LOG_WARN, "machine", "%s: no ioeventfd for SQ %u: %s", v->n->func.name,
                v->db[i].qid, strerror(-r));
}

static struct ndev *ndev_of(struct machine *m, const struct pci_func *f)
{
    struct pci_devs *pd = &m->dev->pd;
    for (size_t k = 0; k < pd->nndev; k++) {
        if (nvme_pci_func(pd->ndev[k].n) == f)
            return &pd->ndev[k];
    }
    return NULL;
}

/* NVMe BAR0 went away (new_addr unmapped) or moved: its ioeventfds follow. */
static void nvme_doorbells_moved(struct machine *m, struct pci_func *f, unsigned bar,
                                 uint64_t new_addr)
{
    struct ndev *v = ndev_of(m, f);
    if (!v || bar != 0)
        return;
    pthread_mutex_lock(&v->lock);
    v->bar = new_addr;
    for (unsigned i = 0; i < v->ndb; i++)
        ndev_sync(v, i);
    pthread_mutex_unlock(&v->lock);
}

/* The guest moved a BAR: unmap the old range and map the new one. vCPU thread. */
static void on_bar_moved(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                         uint64_t new_addr, bool enabled)
{
    struct machine *m = ctx;
    const struct pci_bar *b = &f->bars[bar];
    struct bus *bus = b->kind == PCI_BAR_IO ? &m->pio : &m->mmio;
    if (old_addr != PCI_BAR_UNMAPPED) {
        bus_unregister(bus, old_addr, b->opaque);
        doorbells_moved(m, f, bar, PCI_BAR_UNMAPPED);
        nvme_doorbells_moved(m, f, bar, PCI_BAR_UNMAPPED);
    }
    if (!enabled || new_addr == PCI_BAR_UNMAPPED)
        return;
    int r = bus_register(bus, new_addr, b->size, b->ops, b->opaque, f->name);
    if (r < 0)
        guest_error(f->name, "BAR %u at %#llx overlaps another device; not mapped", bar,
                    (unsigned long long)new_addr);
    else {
        doorbells_moved(m, f, bar, new_addr);
        nvme_doorbells_moved(m, f, bar, new_addr);
    }
}

static void on_pci_reset(void *ctx, uint8_t rcr)
{
    (void)rcr;
    machine_event(ctx, MACHINE_EV_RESET, "reset control register 0xcf9");
}

static int add_bridges(struct machine *m, const struct instance_spec *spec,
                       struct cella_errors *errs)
{
    struct machine_devices *d = m->dev;
    for (size_t i = 0; i < spec->count; i++)
        d->nbridges += spec->components[i].kind == SK_PCI_PCI_BRIDGE;
    d->bridges = d->nbridges ? calloc(d->nbridges, sizeof(*d->bridges)) : NULL;
    if (d->nbridges && !d->bridges)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    /* Parents before children: a bridge's bus must exist before it is added. */
    size_t added = 0;
    for (unsigned pass = 0; pass < d->nbridges && added < d->nbridges; pass++) {
        for (size_t i = 0; i < spec->count; i++) {
            const struct spec_component *c = &spec->components[i];
            if (c->kind != SK_PCI_PCI_BRIDGE)
                continue;
            const struct c_pci_pci_bridge *b = &c->u.pci_pci_bridge;
            if (pci_topology_get(&d->pci, &b->pci_path))
                continue;
            struct pci_bridge *br = &d->bridges[added];
            int r = pci_bridge_init(br, c->key, b->downstream_bus);
            if (r < 0)
                return cella_err(errs, r, "", "bridge %s: %s", c->key, strerror(-r));
            if (pci_topology_add(&d->pci, &b->pci_path, &br->func) == 0)
                added++;
        }
    }
    if (added != d->nbridges)
        return cella_err(errs, -EINVAL, "", "PCI bridges form no tree rooted at bus 0");
    return 0;
}

/*
 * The PIIX4 power-management function at 0.1.3. cella's ACPI PM block sits
 * at fixed ports (PM_IO_BASE); this function only reports that base (PMBA,
 * read-only) and "enabled" (PMREGMISC) to firmware such as OVMF, which
 * finds the ACPI timer through it. SMBus and SMM are not provided.
 */
static int add_piix4_pm(struct machine_devices *d)
{
    struct pci_func *f = &d->piix4_pm;
    pci_func_init(f, "piix4-pm", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(f, 0x8086, 0x7113);
    pci_func_set_class(f, 0x068000);
    pci_func_set_revision(f, 0x03);
    pci_cfg_poke(f, 0x40, 4, PM_IO_BASE | 1); /* PMBA, I/O space indicator */
    pci_cfg_poke(f, 0x80, 1, 1);              /* PMREGMISC: PM I/O enabled */
    /*
     * DEVACTB with APMC_EN already set: "SMM is set up". There is no SMI
     * here, and SeaBIOS would otherwise trigger one and wait for it forever.
     */
    pci_cfg_poke(f, 0x58, 4, 1u << 25);
    struct pci_path p = {0, 1, 3};
    return pci_topology_add(&d->pci, &p, f);
}

static int add_pci(struct machine *m, const struct instance_spec *spec, struct cella_errors *errs)
{
    struct machine_devices *d = m->dev;
    struct pci_topology_hooks th = {.ctx = m, .bar_moved = on_bar_moved};
    int r = pci_topology_init(&d->pci, &th, &m->irq);
    if (r < 0)
        return cella_err(errs, r, "", "pci: %s", strerror(-r));
    d->pci_ok = true;
    struct pci_host_hooks hh = {.ctx = m, .reset_request = on_pci_reset};
    pci_host_init(&d->host, &d->pci, &hh);
    if ((r = pci_host_add_chipset(&d->host)) < 0 || (r = add_piix4_pm(d)) < 0)
        return cella_err(errs, r, "", "pci chipset: %s", strerror(-r));
    if ((r = add_bridges(m, spec, errs)) < 0)
        return r;
    r = bus_register(&m->pio, 0xcf8, 8, &pci_host_pio_ops, &d->host, "pci-host");
    if (r == 0 && spec->board.enable_pcie) {
        d->ecam = true;
        r = bus_register(&m->mmio, MACHINE_ECAM_BASE, PCI_HOST_ECAM_SIZE, &pci_host_ecam_ops,
                         &d->host, "pci-ecam");
    }
    if (r < 0)
        return cella_err(errs, r, "", "cannot map the PCI host bridge: %s", strerror(-r));
    return 0;
}

static void describe_platform(const struct machine *m, struct acpi_platform *p)
{
    acpi_platform_default(p, m->ncpus);
    if (m->dev->ecam) {
        p->ecam = true;
        p->ecam_base = MACHINE_ECAM_BASE;
        p->pci_mmio32_limit = MACHINE_ECAM_BASE - 1;
    }
    p->slp_typ_s5 = PM_SLP_TYP_S5;
    p->pvpanic = m->dev->has_pvpanic;
    p->ncom = 0;
    for (unsigned i = 0; i < 4; i++) {
        if (m->dev->com[i].present)
            p->ncom = i + 1;
    }
}

/* ACPI tables in the BIOS area for direct boot; returns the RSDP address. */
static int place_acpi(struct machine *m, uint64_t *rsdp, struct cella_errors *errs)
{
    struct acpi_platform p;
    describe_platform(m, &p);
    uint8_t *buf = guest_mem_ptr(&m->mem, BOOT_ACPI_ADDR, BOOT_ACPI_SIZE);
    size_t len = 0;
    int r = buf ? acpi_build_at(&p, BOOT_ACPI_ADDR, buf, BOOT_ACPI_SIZE, &len, rsdp) : -EFAULT;
    if (r < 0)
        return cella_err(errs, r, "", "cannot build ACPI tables: %s", strerror(-r));
    return 0;
}

static int boot_linux(struct machine *m, const struct machine_host *host, uint64_t rsdp,
                      struct cella_errors *errs)
{
    void *kernel = NULL, *initrd = NULL;
    size_t klen = 0, ilen = 0;
    int r = read_boot_file(host->kernel, BOOT_FILE_MAX, &kernel, &klen, errs);
    if (r == 0 && host->initrd)
        r = read_boot_file(host->initrd, BOOT_FILE_MAX, &initrd, &ilen, errs);
    struct boot_entry entry;
    if (r == 0)
        r = x86_load_linux(&m->mem, kernel, klen, initrd, ilen, host->cmdline, rsdp, &entry, errs);
    free(kernel);
    free(initrd);
    if (r == 0 && (r = vcpu_setup_linux(&m->vcpus[0], &entry)) < 0)
        cella_err(errs, r, "", "cannot set the boot vCPU's registers: %s", strerror(-r));
    return r;
}

/* ---- disks and NICs ---- */

static void comp_ptr(char out[CELLA_ERR_POINTER_MAX], const struct spec_component *c)
{
    snprintf(out, CELLA_ERR_POINTER_MAX, "/components/%s", c->key);
}

/* The I/O thread: runs the queues whose ioeventfds fired. */
static void *io_thread(void *arg)
{
    struct pci_devs *pd = arg;
    struct epoll_event ev[16];
    for (;;) {
        int n = epoll_wait(pd->epfd, ev, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        for (int i = 0; i < n; i++) {
            uint64_t tag = ev[i].data.u64, cnt;
            if (tag == UINT64_MAX)
                return NULL;
            if (tag & BLK_TAG) {
                blk_poll(pd->polled[tag & ~BLK_TAG]);
                continue;
            }
            if (tag & NDEV_TAG) {
                struct ndev *nd = &pd->ndev[(tag & ~NDEV_TAG) >> 8];
                unsigned q = (unsigned)(tag & 0xff);
                if (read(nd->efd[q], &cnt, sizeof(cnt)) == (ssize_t)sizeof(cnt))
                    nvme_kick(nd->n, nd->db[q].qid);
                continue;
            }
            struct vdev *v = &pd->vdev[tag >> 8];
            unsigned q = (unsigned)(tag & 0xff);
            if (read(v->efd[q], &cnt, sizeof(cnt)) == (ssize_t)sizeof(cnt))
                virtio_pci_kick(v->vp, v->db[q].queue);
        }
    }
}

/* Makes n doorbell eventfds in the I/O thread's epoll set, efd[i] tagged `tag | i`. */
static int add_doorbell_fds(struct pci_devs *pd, int *efd, unsigned n, uint64_t tag,
                            const char *name, struct cella_errors *errs)
{
    for (unsigned i = 0; i < n; i++) {
        efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = tag | i};
        if (efd[i] < 0 || epoll_ctl(pd->epfd, EPOLL_CTL_ADD, efd[i], &ev) < 0)
            return cella_err(errs, -errno, "", "%s: eventfd: %s", name, strerror(errno));
    }
    return 0;
}

static int add_vdev(struct machine *m, struct virtio_pci *vp, struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    struct vdev *v = &pd->vdev[pd->nvdev];
    v->vp = vp;
    v->n = virtio_pci_doorbells(vp, v->db, VIRTIO_MAX_QUEUES);
    if (v->n > VIRTIO_MAX_QUEUES)
        v->n = VIRTIO_MAX_QUEUES;
    for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
        v->efd[i] = -1;
        v->gpa[i] = PCI_BAR_UNMAPPED;
    }
    int r = add_doorbell_fds(pd, v->efd, v->n, (uint64_t)pd->nvdev << 8, vp->func.name, errs);
    if (r == 0)
        pd->nvdev++;
    return r;
}

/*
 * Lets the I/O thread reap b's late completions: the thread that kicked
 * the queue is the one that completes it, and no backend thread wakes for
 * an I/O that finished inside its submission. Not fatal: b then keeps its
 * own completion thread.
 */
static void poll_backend(struct pci_devs *pd, struct blk_backend *b, const char *name)
{
    int r = blk_attach_loop(b, pd->epfd, BLK_TAG | pd->npolled);
    if (r == 0)
        pd->polled[pd->npolled++] = b;
    else
        log_msg(LOG_WARN, "machine", "%s: backend completions stay on their own thread: %s", name,
                strerror(-r));
}

static int add_to_bus(struct machine *m, const struct spec_component *c, struct pci_func *f,
                      struct cella_errors *errs)
{
    int r = pci_topology_add(&m->dev->pci, spec_component_pci_path(c), f);
    if (r < 0) {
        char ptr[CELLA_ERR_POINTER_MAX];
        comp_ptr(ptr, c);
        return cella_err(errs, r, ptr, "cannot place the device at its PCI path: %s", strerror(-r));
    }
    return 0;
}

static struct blk_backend *disk_backend(struct machine *m, const struct spec_component *c,
                                        struct cella_errors *errs)
{
    struct blk_backend *b = backend_set_blk(m->backends, spec_component_backend_id(c));
    if (!b) {
        char ptr[CELLA_ERR_POINTER_MAX];
        snprintf(ptr, sizeof(ptr), "/components/%s/backend_id", c->key);
        cella_err(errs, -ENOENT, ptr, "storage backend %s is not open",
                  spec_component_backend_id(c));
    }
    return b;
}

static int add_virtio_disk(struct machine *m, const struct spec_component *c,
                           struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    struct blk_backend *b = disk_backend(m, c, errs);
    if (!b)
        return -ENOENT;
    /*
     * One queue per vCPU (capped), so the guest completes each request on
     * the vCPU that issued it. Guest-visible, but derived from the board,
     * which a migration's source and target share.
     */
    unsigned nq = m->ncpus < VIRTIO_BLK_MAX_QUEUES ? m->ncpus : VIRTIO_BLK_MAX_QUEUES;
    struct virtio_blk_params p = {.name = c->key,
                                  .mem = &m->mem,
                                  .backend = b,
                                  .serial = c->key,
                                  .msi = &m->irq,
                                  .nqueues = nq};
    struct virtio_blk *vb = NULL;
    int r = virtio_blk_create(&p, &vb);
    if (r < 0) {
        char ptr[CELLA_ERR_POINTER_MAX];
        comp_ptr(ptr, c);
        return cella_err(errs, r, ptr, "cannot create the virtio disk: %s", strerror(-r));
    }
    pd->blk[pd->nblk++] = vb;
    poll_backend(pd, b, c->key);
    r = add_vdev(m, virtio_blk_pci(vb), errs);
    return r < 0 ? r : add_to_bus(m, c, &virtio_blk_pci(vb)->func, errs);
}

/* Controller lock held (nvme_hooks): vCPU thread or state driver. */
static void ndev_backing(void *ctx, uint16_t qid, bool on)
{
    struct ndev *v = ctx;
    for (unsigned i = 0; i < v->ndb; i++) {
        if (v->db[i].qid != qid)
            continue;
        pthread_mutex_lock(&v->lock);
        v->want[i] = on;
        ndev_sync(v, i);
        pthread_mutex_unlock(&v->lock);
    }
}

/* Controller lock held (nvme_hooks): wakes the I/O thread to run the queue again. */
static void ndev_kick_later(void *ctx, uint16_t qid)
{
    struct ndev *v = ctx;
    uint64_t one = 1;
    for (unsigned i = 0; i < v->ndb; i++) {
        if (v->db[i].qid == qid && write(v->efd[i], &one, sizeof(one)) < 0)
            log_msg(LOG_WARN, "machine", "%s: cannot kick SQ %u: %s", v->n->func.name, qid,
                    strerror(errno));
    }
}

/* The ioeventfd side of NVMe controller n (struct ndev). */
static int add_ndev(struct machine *m, struct nvme_disk *n, struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    struct ndev *v = &pd->ndev[pd->nndev];
    v->m = m;
    v->n = n;
    v->bar = PCI_BAR_UNMAPPED;
    v->ndb = nvme_doorbells(n, v->db, NVME_MAX_IO_QUEUES);
    if (v->ndb > NVME_MAX_IO_QUEUES)
        v->ndb = NVME_MAX_IO_QUEUES;
    for (unsigned i = 0; i < NVME_MAX_IO_QUEUES; i++) {
        v->efd[i] = -1;
        v->gpa[i] = PCI_BAR_UNMAPPED;
    }
    pthread_mutex_init(&v->lock, NULL);
    pd->nndev++; /* destroy_disks_and_nics cleans up from here on */
    int r = add_doorbell_fds(pd, v->efd, v->ndb, NDEV_TAG | (uint64_t)(pd->nndev - 1) << 8,
                             n->func.name, errs);
    if (r < 0)
        return r;
    struct nvme_hooks h = {
        .ctx = v, .doorbell_backing = ndev_backing, .kick_later = ndev_kick_later};
    nvme_set_hooks(n, &h);
    return 0;
}

static int add_nvme_disk(struct machine *m, const struct spec_component *c,
                         struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    struct blk_backend *b = disk_backend(m, c, errs);
    if (!b)
        return -ENOENT;
    struct nvme_disk *n = calloc(1, sizeof(*n));
    if (!n)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    int r = nvme_init(n, c->key, &c->u.nvme_disk, b, &m->mem, &m->irq);
    if (r < 0) {
        free(n);
        char ptr[CELLA_ERR_POINTER_MAX];
        comp_ptr(ptr, c);
        return cella_err(errs, r, ptr, "cannot create the NVMe controller: %s", strerror(-r));
    }
    pd->nvme[pd->nnvme++] = n;
    poll_backend(pd, b, c->key);
    r = add_ndev(m, n, errs);
    return r < 0 ? r : add_to_bus(m, c, nvme_pci_func(n), errs);
}

static int add_virtio_nic(struct machine *m, const struct instance_spec *spec,
                          const struct spec_component *c, struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    const struct spec_component *be = spec_find(spec, c->u.virtio_nic.backend_id);
    char ptr[CELLA_ERR_POINTER_MAX];
    comp_ptr(ptr, c);
    if (!be)
        return cella_err(errs, -ENOENT, ptr, "its backend is missing");
    struct net_backend *nb = NULL;
    int r = net_open(be, &nb, errs);
    if (r < 0)
        return r;
    pd->taps[pd->nnet] = nb;
    struct virtio_net_params p = {
        .name = c->key, .mem = &m->mem, .backend = nb, .mac = &c->u.virtio_nic.mac, .msi = &m->irq};
    struct virtio_net *vn = NULL;
    if ((r = virtio_net_create(&p, &vn)) < 0) {
        net_close(nb);
        pd->taps[pd->nnet] = NULL;
        return cella_err(errs, r, ptr, "cannot create the virtio NIC: %s", strerror(-r));
    }
    pd->net[pd->nnet++] = vn;
    r = add_vdev(m, virtio_net_pci(vn), errs);
    return r < 0 ? r : add_to_bus(m, c, &virtio_net_pci(vn)->func, errs);
}

static int add_disks_and_nics(struct machine *m, const struct instance_spec *spec,
                              struct cella_errors *errs)
{
    struct pci_devs *pd = &m->dev->pd;
    size_t n = spec->count ? spec->count : 1;
    pd->blk = calloc(n, sizeof(*pd->blk));
    pd->nvme = calloc(n, sizeof(*pd->nvme));
    pd->net = calloc(n, sizeof(*pd->net));
    pd->taps = calloc(n + 1, sizeof(*pd->taps));
    pd->vdev = calloc(n, sizeof(*pd->vdev));
    pd->ndev = calloc(n, sizeof(*pd->ndev));
    pd->polled = calloc(n, sizeof(*pd->polled));
    pd->epfd = epoll_create1(EPOLL_CLOEXEC);
    pd->stopfd = eventfd(0, EFD_CLOEXEC);
    if (!pd->blk || !pd->nvme || !pd->net || !pd->taps || !pd->vdev || !pd->ndev || !pd->polled)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    if (pd->epfd < 0 || pd->stopfd < 0 || epoll_ctl(pd->epfd, EPOLL_CTL_ADD, pd->stopfd, &ev) < 0)
        return cella_err(errs, -errno, "", "epoll: %s", strerror(errno));
    int r = 0;
    for (size_t i = 0; i < spec->count && r == 0; i++) {
        const struct spec_component *c = &spec->components[i];
        if (c->kind == SK_VIRTIO_DISK)
            r = add_virtio_disk(m, c, errs);
        else if (c->kind == SK_NVME_DISK)
            r = add_nvme_disk(m, c, errs);
        else if (c->kind == SK_VIRTIO_NIC)
            r = add_virtio_nic(m, spec, c, errs);
    }
    if (r == 0 && (pd->nvdev || pd->nndev)) {
        r = -pthread_create(&pd->io_thread, NULL, io_thread, pd);
        if (r < 0)
            return cella_err(errs, r, "", "cannot start the I/O thread: %s", strerror(-r));
        pd->io_started = true;
    }
    return r;
}

static void destroy_disks_and_nics(struct pci_devs *pd)
{
    if (pd->io_started) {
        uint64_t one = 1;
        if (write(pd->stopfd, &one, sizeof(one)) < 0)
            log_msg(LOG_WARN, "machine", "cannot stop the I/O thread: %s", strerror(errno));
        pthread_join(pd->io_thread, NULL);
    }
    /* Nobody polls now: the backends (which outlive the machine) complete on their own again. */
    for (size_t i = 0; i < pd->npolled; i++)
        blk_detach_loop(pd->polled[i]);
    for (size_t i = 0; i < pd->nnet; i++)
        net_close(pd->taps[i]); /* no more receive callbacks after this */
    if (pd->taps && pd->taps[pd->nnet])
        net_close(pd->taps[pd->nnet]); /* opened, device not created */
    for (size_t i = 0; i < pd->nnet; i++)
        virtio_net_destroy(pd->net[i]);
    for (size_t i = 0; i < pd->nblk; i++)
        virtio_blk_destroy(pd->blk[i]);
    for (size_t i = 0; i < pd->nnvme; i++) {
        nvme_destroy(pd->nvme[i]); /* its hooks take the ioeventfds away */
        free(pd->nvme[i]);
    }
    for (size_t k = 0; k < pd->nndev; k++) {
        for (unsigned i = 0; i < NVME_MAX_IO_QUEUES; i++) {
            if (pd->ndev[k].efd[i] >= 0)
                close(pd->ndev[k].efd[i]);
        }
        pthread_mutex_destroy(&pd->ndev[k].lock);
    }
    for (size_t k = 0; k < pd->nvdev; k++) {
        for (unsigned i = 0; i < VIRTIO_MAX_QUEUES; i++) {
            if (pd->vdev[k].efd[i] >= 0)
                close(pd->vdev[k].efd[i]);
        }
    }
    if (pd->epfd >= 0)
        close(pd->epfd);
    if (pd->stopfd >= 0)
        close(pd->stopfd);
    free(pd->blk);
    free(pd->nvme);
    free(pd->net);
    free(pd->taps);
    free(pd->vdev);
    free(pd->ndev);
    free(pd->polled);
}

/* ---- boot order ---- */

/* The bridges from bus 0 down to `bus`, then the device: fw_cfg's path. */
static int boot_path(const struct instance_spec *spec, const struct pci_path *p,
                     struct fw_cfg_boot_dev *d)
{
    struct fw_cfg_pci_loc rev[FW_CFG_BOOT_MAX_DEPTH];
    size_t n = 0;
    rev[n++] = (struct fw_cfg_pci_loc){p->device, p->function};
    uint8_t bus = p->bus;
    while (bus != 0) {
        const struct spec_component *br = NULL;
        for (size_t i = 0; i < spec->count && !br; i++) {
            const struct spec_component *c = &spec->components[i];
            if (c->kind == SK_PCI_PCI_BRIDGE && c->u.pci_pci_bridge.downstream_bus == bus)
                br = c;
        }
        if (!br || n == FW_CFG_BOOT_MAX_DEPTH)
            return -EINVAL;
        const struct pci_path *bp = &br->u.pci_pci_bridge.pci_path;
        rev[n++] = (struct fw_cfg_pci_loc){bp->device, bp->function};
        bus = bp->bus;
    }
    d->depth = n;
    for (size_t i = 0; i < n; i++)
        d->path[i] = rev[n - 1 - i];
    return 0;
}

/*
 * The "bootorder" file from boot_settings: SeaBIOS and OVMF try the listed
 * disks first, in order, then everything else (not strict, like QEMU
 * without -boot strict=on).
 */
static int add_bootorder(struct machine *m, const struct instance_spec *spec,
                         struct cella_errors *errs)
{
    const struct spec_component *bs = NULL;
    for (size_t i = 0; i < spec->count && !bs; i++) {
        if (spec->components[i].kind == SK_BOOT_SETTINGS)
            bs = &spec->components[i];
    }
    if (!bs || !bs->u.boot_settings.order.count)
        return 0;
    const struct boot_order *o = &bs->u.boot_settings.order;
    struct fw_cfg_boot_dev devs[FW_CFG_BOOT_MAX_DEVS];
    size_t n = 0;
    for (size_t i = 0; i < o->count && n < FW_CFG_BOOT_MAX_DEVS; i++) {
        const struct spec_component *c = spec_find(spec, o->ids[i]);
        if (!c || (c->kind != SK_VIRTIO_DISK && c->kind != SK_NVME_DISK))
            continue; /* validation names these; nothing to boot here */
        struct fw_cfg_boot_dev *d = &devs[n];
        memset(d, 0, sizeof(*d));
        d->kind = c->kind == SK_VIRTIO_DISK ? FW_CFG_BOOT_VIRTIO_BLK : FW_CFG_BOOT_NVME;
        const struct pci_func *f = pci_topology_get(&m->dev->pci, spec_component_pci_path(c));
        if (c->kind == SK_NVME_DISK && f) {
            d->vendor_id = (uint16_t)pci_cfg_peek(f, PCI_REG_VENDOR_ID, 2);
            d->device_id = (uint16_t)pci_cfg_peek(f, PCI_REG_DEVICE_ID, 2);
            d->nsid = 1;
        }
        if (boot_path(spec, spec_component_pci_path(c), d) == 0)
            n++;
    }
    int r = fw_cfg_add_bootorder(&m->dev->fw.fw, devs, n, false);
    if (r < 0)
        return cella_err(errs, r, "", "fw_cfg bootorder: %s", strerror(-r));
    return 0;
}

int machine_devices_create(struct machine *m, const struct instance_spec *spec,
                           const struct machine_host *host, struct cella_errors *errs)
{
    m->dev = calloc(1, sizeof(*m->dev));
    if (!m->dev)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    m->dev->pd.epfd = m->dev->pd.stopfd = -1;
    int r = add_serial_ports(m, spec, errs);
    if (r == 0)
        r = add_platform(m, spec, errs);
    if (r == 0)
        r = add_pci(m, spec, errs);
    if (r == 0)
        r = add_disks_and_nics(m, spec, errs);
    if (r < 0)
        return r;
    if (host->bootrom) {
        struct acpi_platform p;
        describe_platform(m, &p);
        r = boot_fw_setup(m, &m->dev->fw, host, &p, errs);
        return r < 0 ? r : add_bootorder(m, spec, errs);
    }
    if (host->kernel && host->incoming) {
        /* RAM (ACPI tables and kernel included) and registers arrive. */
        if (access(host->kernel, R_OK) < 0 || (host->initrd && access(host->initrd, R_OK) < 0))
            return cella_err(errs, -errno, "", "cannot read the boot kernel or initrd: %s",
                             strerror(errno));
        return 0;
    }
    if (host->kernel) {
        uint64_t rsdp = 0;
        r = place_acpi(m, &rsdp, errs);
        return r < 0 ? r : boot_linux(m, host, rsdp, errs);
    }
    return cella_err(errs, -EINVAL, "", "no boot source: give a kernel or a bootrom");
}

void machine_devices_destroy(struct machine *m)
{
    if (!m->dev)
        return;
    destroy_disks_and_nics(&m->dev->pd);
    for (int i = 0; i < 4; i++) {
        if (m->dev->com[i].present)
            uart_destroy(&m->dev->com[i].uart);
    }
    if (m->dev->cmos_ok)
        cmos_destroy(&m->dev->cmos);
    if (m->dev->pm_ok)
        pm_destroy(&m->dev->pm);
    if (m->dev->pci_ok)
        pci_topology_destroy(&m->dev->pci);
    free(m->dev->bridges);
    boot_fw_destroy(&m->dev->fw);
    free(m->dev);
    m->dev = NULL;
}

size_t machine_devices_serial_input(struct machine *m, unsigned com, const uint8_t *buf, size_t len)
{
    if (!m->dev || com < 1 || com > 4 || !m->dev->com[com - 1].present)
        return 0;
    return uart_receive(&m->dev->com[com - 1].uart, buf, len);
}

/* ---- live migration: the devices with state, quiesce/resume, remap ---- */

static void mig_add(struct machine_mig_dev *out, size_t max, size_t *n,
                    const struct machine_mig_ops *ops, void *dev, const char *id)
{
    if (*n < max) {
        out[*n].ops = ops;
        out[*n].dev = dev;
        snprintf(out[*n].id, sizeof(out[*n].id), "%s", id);
    }
    (*n)++;
}

size_t machine_devices_mig_list(struct machine *m, struct machine_mig_dev *out, size_t max)
{
    struct machine_devices *d = m->dev;
    size_t n = 0;
    if (!d)
        return 0;
    for (unsigned i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof(id), "com%u", i + 1);
        if (d->com[i].present)
            mig_add(out, max, &n, &machine_mig_uart_ops, &d->com[i].uart, id);
    }
    if (d->cmos_ok)
        mig_add(out, max, &n, &machine_mig_cmos_ops, &d->cmos, "0");
    if (d->pm_ok)
        mig_add(out, max, &n, &machine_mig_pm_ops, &d->pm, "0");
    mig_add(out, max, &n, &machine_mig_i8042_ops, &d->i8042, "0");
    if (d->has_pvpanic)
        mig_add(out, max, &n, &machine_mig_pvpanic_ops, &d->pvpanic, "0");
    if (d->fw.fw_ok)
        mig_add(out, max, &n, &machine_mig_fw_cfg_ops, &d->fw.fw, "0");
    /* Every function's config space (chipset, bridges, devices) before the devices. */
    for (unsigned bus = 0; d->pci_ok && bus < 256; bus++) {
        const struct pci_bus *b = d->pci.buses[bus];
        for (unsigned dev = 0; b && dev < 32; dev++) {
            for (unsigned fn = 0; fn < 8; fn++) {
                char id[16];
                snprintf(id, sizeof(id), "%u.%u.%u", bus, dev, fn);
                if (b->slots[dev][fn])
                    mig_add(out, max, &n, &machine_mig_pci_config_ops, b->slots[dev][fn], id);
            }
        }
    }
    struct pci_devs *pd = &d->pd;
    for (size_t i = 0; i < pd->nblk; i++)
        mig_add(out, max, &n, &machine_mig_virtio_blk_ops, virtio_blk_pci(pd->blk[i]),
                virtio_blk_pci(pd->blk[i])->func.name);
    for (size_t i = 0; i < pd->nnet; i++)
        mig_add(out, max, &n, &machine_mig_virtio_net_ops, virtio_net_pci(pd->net[i]),
                virtio_net_pci(pd->net[i])->func.name);
    for (size_t i = 0; i < pd->nnvme; i++)
        mig_add(out, max, &n, &machine_mig_nvme_ops, pd->nvme[i], nvme_pci_func(pd->nvme[i])->name);
    return n;
}

void machine_devices_debug(struct machine *m)
{
    struct pci_devs *pd = &m->dev->pd;
    for (size_t k = 0; k < pd->nvdev; k++)
        virtio_pci_debug(pd->vdev[k].vp);
    for (size_t i = 0; i < pd->nnvme; i++)
        nvme_debug(pd->nvme[i]);
}

int machine_devices_quiesce(struct machine *m)
{
    struct pci_devs *pd = &m->dev->pd;
    for (size_t k = 0; k < pd->nvdev; k++)
        virtio_pci_quiesce(pd->vdev[k].vp);
    for (size_t i = 0; i < pd->nnvme; i++)
        nvme_quiesce(pd->nvme[i]);
    return 0;
}

void machine_devices_resume(struct machine *m)
{
    struct pci_devs *pd = &m->dev->pd;
    for (size_t k = 0; k < pd->nvdev; k++)
        virtio_pci_resume(pd->vdev[k].vp);
    for (size_t i = 0; i < pd->nnvme; i++)
        nvme_resume(pd->nvme[i]);
}

void machine_devices_remap(struct machine *m)
{
    if (m->dev && m->dev->pci_ok)
        pci_topology_remap_all(&m->dev->pci);
}
