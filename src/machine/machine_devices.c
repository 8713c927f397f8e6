/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The platform a Propolis guest expects, wired to the machine: COM1-COM4
 * from the spec's serial_port components, and the boot source.
 *
 * Device cores live in src/devices and know nothing of KVM; this file maps
 * them on the buses and connects their interrupt lines and callbacks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "devices/acpi.h"
#include "devices/cmos.h"
#include "devices/pci.h"
#include "devices/pci_bridge.h"
#include "devices/pci_host.h"
#include "devices/platform.h"
#include "devices/uart16550.h"
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

struct machine_devices {
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

/* The guest moved a BAR: unmap the old range and map the new one. vCPU thread. */
static void on_bar_moved(void *ctx, struct pci_func *f, unsigned bar, uint64_t old_addr,
                         uint64_t new_addr, bool enabled)
{
    struct machine *m = ctx;
    const struct pci_bar *b = &f->bars[bar];
    struct bus *bus = b->kind == PCI_BAR_IO ? &m->pio : &m->mmio;
    if (old_addr != PCI_BAR_UNMAPPED)
        bus_unregister(bus, old_addr, b->opaque);
    if (!enabled || new_addr == PCI_BAR_UNMAPPED)
        return;
    int r = bus_register(bus, new_addr, b->size, b->ops, b->opaque, f->name);
    if (r < 0)
        guest_error(f->name, "BAR %u at %#llx overlaps another device; not mapped", bar,
                    (unsigned long long)new_addr);
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

/*
 * Devices the spec may name but this build does not emulate yet are
 * refused by name rather than silently left out of the guest.
 */
static int refuse_unbuilt(const struct instance_spec *spec, struct cella_errors *errs)
{
    int r = 0;
    for (size_t i = 0; i < spec->count; i++) {
        const struct spec_component *c = &spec->components[i];
        if (c->kind != SK_VIRTIO_DISK && c->kind != SK_NVME_DISK && c->kind != SK_VIRTIO_NIC)
            continue;
        char ptr[CELLA_ERR_POINTER_MAX];
        snprintf(ptr, sizeof(ptr), "/components/%s", c->key);
        r = cella_err(errs, -ENOTSUP, ptr, "%s devices are not emulated by this build yet",
                      spec_kind_name(c->kind));
    }
    return r;
}

int machine_devices_create(struct machine *m, const struct instance_spec *spec,
                           const struct machine_host *host, struct cella_errors *errs)
{
    if (refuse_unbuilt(spec, errs) < 0)
        return -ENOTSUP;
    m->dev = calloc(1, sizeof(*m->dev));
    if (!m->dev)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    int r = add_serial_ports(m, spec, errs);
    if (r == 0)
        r = add_platform(m, spec, errs);
    if (r == 0)
        r = add_pci(m, spec, errs);
    if (r < 0)
        return r;
    if (host->bootrom) {
        struct acpi_platform p;
        describe_platform(m, &p);
        return boot_fw_setup(m, &m->dev->fw, host, &p, errs);
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
