/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/pci.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- little helpers ---- */

static uint32_t ones(unsigned size)
{
    return size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1u;
}

static bool is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

static uint32_t get_le(const uint8_t *p, unsigned size)
{
    uint32_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static void put_le(uint8_t *p, unsigned size, uint32_t v)
{
    for (unsigned i = 0; i < size; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Whether [off, off + size) overlaps [start, start + len). */
static bool overlaps(unsigned off, unsigned size, unsigned start, unsigned len)
{
    return off < start + len && start < off + size;
}

static bool sane_access(const struct pci_func *f, unsigned off, unsigned size)
{
    return (size == 1 || size == 2 || size == 4) && off + size <= f->cfg_size;
}

static bool is_type1(const struct pci_func *f)
{
    return (f->cfg[PCI_REG_HEADER_TYPE] & 0x7f) == PCI_HEADER_TYPE_BRIDGE;
}

/* ---- raw access and setup ---- */

void pci_cfg_poke(struct pci_func *f, uint16_t offset, unsigned size, uint32_t value)
{
    if (sane_access(f, offset, size))
        put_le(&f->cfg[offset], size, value);
}

uint32_t pci_cfg_peek(const struct pci_func *f, uint16_t offset, unsigned size)
{
    return sane_access(f, offset, size) ? get_le(&f->cfg[offset], size) : 0;
}

void pci_cfg_set_mask(struct pci_func *f, uint16_t offset, unsigned size, uint32_t wmask,
                      uint32_t w1cmask)
{
    if (!sane_access(f, offset, size))
        return;
    put_le(&f->wmask[offset], size, wmask);
    put_le(&f->w1cmask[offset], size, w1cmask);
}

void pci_func_init(struct pci_func *f, const char *name, uint8_t header_type)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->name, sizeof(f->name), "%s", name ? name : "pci");
    f->cfg_size = PCI_CFG_SIZE;
    f->cap_free = PCI_CAP_START;
    header_type &= 0x7f;
    f->nbars = header_type == PCI_HEADER_TYPE_BRIDGE ? 2 : PCI_MAX_BARS;
    for (unsigned i = 0; i < PCI_MAX_BARS; i++)
        f->bars[i].mapped = PCI_BAR_UNMAPPED;
    atomic_init(&f->bus_master, false);

    pci_cfg_poke(f, PCI_REG_VENDOR_ID, 2, 0xffff);
    f->cfg[PCI_REG_HEADER_TYPE] = header_type;
    pci_cfg_set_mask(f, PCI_REG_COMMAND, 2, PCI_CMD_WRITABLE, 0);
    pci_cfg_set_mask(f, PCI_REG_STATUS, 2, 0, PCI_STS_W1C);
    f->wmask[PCI_REG_CACHE_LINE] = 0xff;
    f->wmask[PCI_REG_INT_LINE] = 0xff;
}

void pci_func_set_ids(struct pci_func *f, uint16_t vendor, uint16_t device)
{
    pci_cfg_poke(f, PCI_REG_VENDOR_ID, 2, vendor);
    pci_cfg_poke(f, PCI_REG_DEVICE_ID, 2, device);
}

void pci_func_set_class(struct pci_func *f, uint32_t class_code)
{
    put_le(&f->cfg[PCI_REG_CLASS], 3, class_code & 0xffffff);
}

void pci_func_set_revision(struct pci_func *f, uint8_t revision)
{
    f->cfg[PCI_REG_REVISION] = revision;
}

int pci_func_set_subsystem(struct pci_func *f, uint16_t vendor, uint16_t id)
{
    if (is_type1(f))
        return -EINVAL;
    pci_cfg_poke(f, PCI_REG_SUBSYS_VENDOR, 2, vendor);
    pci_cfg_poke(f, PCI_REG_SUBSYS_ID, 2, id);
    return 0;
}

int pci_func_set_intx_pin(struct pci_func *f, uint8_t pin)
{
    if (pin > 4)
        return -EINVAL;
    if (f->topo)
        return -EBUSY;
    f->cfg[PCI_REG_INT_PIN] = pin;
    return 0;
}

void pci_func_set_multifunction(struct pci_func *f, bool on)
{
    if (on)
        f->cfg[PCI_REG_HEADER_TYPE] |= PCI_HEADER_TYPE_MULTI;
    else
        f->cfg[PCI_REG_HEADER_TYPE] &= (uint8_t)~PCI_HEADER_TYPE_MULTI;
}

void pci_func_enable_extended(struct pci_func *f)
{
    f->cfg_size = PCI_CFG_SIZE_EXT;
}

/* ---- BARs ---- */

static unsigned bar_reg(unsigned idx)
{
    return PCI_REG_BAR0 + 4 * idx;
}

/* Whether BAR slot idx is taken (by its own BAR or a 64-bit BAR below). */
static bool bar_slot_used(const struct pci_func *f, unsigned idx)
{
    if (f->bars[idx].kind != PCI_BAR_NONE)
        return true;
    return idx > 0 && f->bars[idx - 1].kind == PCI_BAR_MEM64;
}

int pci_set_bar(struct pci_func *f, unsigned idx, enum pci_bar_kind kind, uint64_t size,
                bool prefetchable, const struct io_ops *ops, void *opaque)
{
    uint64_t min, max;
    unsigned slots = 1;
    uint32_t flags;

    if (f->topo)
        return -EBUSY;
    switch (kind) {
    case PCI_BAR_IO:
        if (prefetchable)
            return -EINVAL;
        min = 4, max = PCI_IO_SPACE_SIZE, flags = PCI_BAR_IO_FLAG;
        break;
    case PCI_BAR_MEM32:
        min = 16, max = 1ull << 31, flags = 0;
        break;
    case PCI_BAR_MEM64:
        min = 16, max = 1ull << 63, flags = PCI_BAR_MEM64_FLAG, slots = 2;
        break;
    default:
        return -EINVAL;
    }
    if (!is_pow2(size) || size < min || size > max || idx >= f->nbars || idx + slots > f->nbars)
        return -EINVAL;
    for (unsigned s = 0; s < slots; s++) {
        if (bar_slot_used(f, idx + s))
            return -EEXIST;
    }
    if (prefetchable)
        flags |= PCI_BAR_PREFETCH_FLG;

    /* The register's address bits below the size read back as zero. */
    uint64_t addr_mask = ~(size - 1);
    uint32_t low_mask = (uint32_t)addr_mask & (kind == PCI_BAR_IO ? ~3u : ~0xfu);
    pci_cfg_poke(f, (uint16_t)bar_reg(idx), 4, flags);
    pci_cfg_set_mask(f, (uint16_t)bar_reg(idx), 4, low_mask, 0);
    if (kind == PCI_BAR_MEM64) {
        pci_cfg_poke(f, (uint16_t)bar_reg(idx + 1), 4, 0);
        pci_cfg_set_mask(f, (uint16_t)bar_reg(idx + 1), 4, (uint32_t)(addr_mask >> 32), 0);
    }
    f->bars[idx] = (struct pci_bar){
        .kind = kind,
        .prefetchable = prefetchable,
        .size = size,
        .ops = ops,
        .opaque = opaque,
        .mapped = PCI_BAR_UNMAPPED,
    };
    return 0;
}

uint64_t pci_bar_address(const struct pci_func *f, unsigned idx)
{
    if (idx >= f->nbars)
        return 0;
    uint16_t reg = (uint16_t)bar_reg(idx);
    uint32_t low = pci_cfg_peek(f, reg, 4);
    switch (f->bars[idx].kind) {
    case PCI_BAR_IO:
        return low & ~3u;
    case PCI_BAR_MEM32:
        return low & ~0xfu;
    case PCI_BAR_MEM64:
        return (low & ~0xfu) | (uint64_t)pci_cfg_peek(f, (uint16_t)(reg + 4), 4) << 32;
    default:
        return 0;
    }
}

/* Where BAR idx should be mapped now, or PCI_BAR_UNMAPPED. */
static uint64_t bar_effective(const struct pci_func *f, unsigned idx, uint16_t cmd)
{
    const struct pci_bar *b = &f->bars[idx];
    uint64_t addr = pci_bar_address(f, idx);

    if (addr == 0)
        return PCI_BAR_UNMAPPED;
    switch (b->kind) {
    case PCI_BAR_IO:
        /* addr < 2^32 and size <= 64 KiB: the sum cannot overflow. */
        if (!(cmd & PCI_CMD_IO) || addr + b->size > PCI_IO_SPACE_SIZE)
            return PCI_BAR_UNMAPPED;
        return addr;
    case PCI_BAR_MEM32:
        if (!(cmd & PCI_CMD_MEM) || addr + b->size > (1ull << 32))
            return PCI_BAR_UNMAPPED;
        return addr;
    case PCI_BAR_MEM64:
        if (!(cmd & PCI_CMD_MEM) || addr + (b->size - 1) < addr)
            return PCI_BAR_UNMAPPED;
        return addr;
    default:
        return PCI_BAR_UNMAPPED;
    }
}

/* Tells the machine about every BAR whose mapping changed. Topology lock held. */
static void update_bars(struct pci_func *f)
{
    uint16_t cmd = (uint16_t)pci_cfg_peek(f, PCI_REG_COMMAND, 2);
    const struct pci_topology_hooks *h = f->topo ? &f->topo->hooks : NULL;

    for (unsigned i = 0; i < f->nbars; i++) {
        struct pci_bar *b = &f->bars[i];
        if (b->kind == PCI_BAR_NONE)
            continue;
        uint64_t now = bar_effective(f, i, cmd);
        if (now == b->mapped)
            continue;
        uint64_t old = b->mapped;
        b->mapped = now;
        if (h && h->bar_moved)
            h->bar_moved(h->ctx, f, i, old, now, now != PCI_BAR_UNMAPPED);
    }
}

/* ---- INTx ---- */

/* Drives the line from level and disable. topo->intx_lock held. */
static void intx_update(struct pci_func *f)
{
    /* A function without a pin has no line (intx.sink stays NULL). */
    bool want = f->intx_level && !f->intx_disabled && f->intx.sink;
    if (want == f->intx_asserted)
        return;
    f->intx_asserted = want;
    irq_line_set(&f->intx, want);
}

void pci_set_irq(struct pci_func *f, bool level)
{
    struct pci_topology *t = f->topo;
    if (!t) {
        f->intx_level = level;
        return;
    }
    pthread_mutex_lock(&t->intx_lock);
    f->intx_level = level;
    intx_update(f);
    pthread_mutex_unlock(&t->intx_lock);
}

bool pci_func_bus_master(const struct pci_func *f)
{
    return atomic_load(&f->bus_master);
}

/*
 * The sink every function's irq_line points at: counts asserted functions
 * per GSI and passes only 0 <-> 1 transitions on, so functions sharing a
 * GSI are wired-OR. Each function sends transitions only (intx_update),
 * which keeps the counts exact. topo->intx_lock held.
 */
static void intx_or_set_level(void *ctx, uint32_t gsi, bool level)
{
    struct pci_topology *t = ctx;
    const struct irq_sink *out = t->intx_out;

    if (gsi >= PCI_INTX_GSI_BASE && gsi < PCI_INTX_GSI_BASE + PCI_INTX_GSI_COUNT) {
        unsigned *c = &t->intx_count[gsi - PCI_INTX_GSI_BASE];
        if (level) {
            if ((*c)++ != 0)
                return;
        } else {
            if (*c == 0 || --*c != 0)
                return;
        }
    }
    if (out && out->set_level)
        out->set_level(out->ctx, gsi, level);
}

/* Applies COMMAND's side effects other than BAR decoding. Topology lock held. */
static void command_changed(struct pci_func *f)
{
    uint16_t cmd = (uint16_t)pci_cfg_peek(f, PCI_REG_COMMAND, 2);
    atomic_store(&f->bus_master, (cmd & PCI_CMD_BUS_MASTER) != 0);
    bool disabled = (cmd & PCI_CMD_INTX_DISABLE) != 0;
    if (!f->topo) {
        f->intx_disabled = disabled;
        return;
    }
    pthread_mutex_lock(&f->topo->intx_lock);
    f->intx_disabled = disabled;
    intx_update(f);
    pthread_mutex_unlock(&f->topo->intx_lock);
}

/* ---- config access ---- */

uint32_t pci_cfg_default_read(struct pci_func *f, uint16_t offset, unsigned size)
{
    if (!sane_access(f, offset, size))
        return ones(size);
    uint32_t v = get_le(&f->cfg[offset], size);
    unsigned sts = PCI_REG_STATUS;
    if (overlaps(offset, size, sts, 1)) {
        bool level;
        if (f->topo) {
            pthread_mutex_lock(&f->topo->intx_lock);
            level = f->intx_level;
            pthread_mutex_unlock(&f->topo->intx_lock);
        } else {
            level = f->intx_level;
        }
        uint32_t bit = (uint32_t)PCI_STS_INTX << (8 * (sts - offset));
        v = level ? v | bit : v & ~bit;
    }
    return v;
}

void pci_cfg_default_write(struct pci_func *f, uint16_t offset, unsigned size, uint32_t value)
{
    if (!sane_access(f, offset, size))
        return;
    for (unsigned i = 0; i < size; i++) {
        unsigned o = offset + i;
        uint8_t b = (uint8_t)(value >> (8 * i));
        uint8_t v = (uint8_t)((f->cfg[o] & ~f->wmask[o]) | (b & f->wmask[o]));
        f->cfg[o] = (uint8_t)(v & ~(b & f->w1cmask[o]));
    }
}

/* The hook holding byte off, or NULL. */
static const struct pci_cfg_hook *hook_at(const struct pci_func *f, unsigned off)
{
    for (unsigned i = 0; i < f->nhooks; i++) {
        const struct pci_cfg_hook *h = &f->hooks[i];
        if (off >= h->offset && off < (unsigned)h->offset + h->len)
            return h;
    }
    return NULL;
}

static bool any_hook(const struct pci_func *f, unsigned off, unsigned size)
{
    for (unsigned i = 0; i < f->nhooks; i++) {
        if (overlaps(off, size, f->hooks[i].offset, f->hooks[i].len))
            return true;
    }
    return false;
}

/* Whether [off, off + size) lies wholly inside hook h. */
static bool hook_holds(const struct pci_cfg_hook *h, unsigned off, unsigned size)
{
    return h && off + size <= (unsigned)h->offset + h->len;
}

/* A guest read of one function. Topology lock held; access already sane. */
static uint32_t func_read(struct pci_func *f, uint16_t off, unsigned size)
{
    const struct pci_cfg_hook *h = hook_at(f, off);
    if (hook_holds(h, off, size)) {
        if (h->ops && h->ops->read)
            return h->ops->read(h->opaque, f, off, size) & ones(size);
        return pci_cfg_default_read(f, off, size);
    }
    if (!any_hook(f, off, size))
        return pci_cfg_default_read(f, off, size);
    /* Straddles a hook's edge: byte by byte, each to its owner. */
    uint32_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= func_read(f, (uint16_t)(off + i), 1) << (8 * i);
    return v;
}

/* A guest write of one function. Topology lock held; access already sane. */
static void func_write(struct pci_func *f, uint16_t off, unsigned size, uint32_t value)
{
    const struct pci_cfg_hook *h = hook_at(f, off);
    if (hook_holds(h, off, size)) {
        if (h->ops && h->ops->write)
            h->ops->write(h->opaque, f, off, size, value & ones(size));
        else
            pci_cfg_default_write(f, off, size, value);
        return;
    }
    if (any_hook(f, off, size)) {
        for (unsigned i = 0; i < size; i++)
            func_write(f, (uint16_t)(off + i), 1, (value >> (8 * i)) & 0xff);
        return;
    }
    /* Hooks never cover the header, so only this path has side effects. */
    pci_cfg_default_write(f, off, size, value);
    bool cmd = overlaps(off, size, PCI_REG_COMMAND, 2);
    if (cmd)
        command_changed(f);
    if (cmd || overlaps(off, size, PCI_REG_BAR0, 4u * f->nbars))
        update_bars(f);
}

/* ---- capabilities and hooks ---- */

int pci_add_capability(struct pci_func *f, uint8_t id, unsigned len)
{
    if (f->topo)
        return -EBUSY;
    if (len < 2)
        return -EINVAL;
    unsigned off = f->cap_free;
    if (off + len > PCI_CFG_SIZE)
        return -ENOSPC;
    f->cfg[off] = id;
    f->cfg[off + 1] = 0;
    if (f->cap_last)
        f->cfg[f->cap_last + 1] = (uint8_t)off;
    else
        f->cfg[PCI_REG_CAP_PTR] = (uint8_t)off;
    f->cfg[PCI_REG_STATUS] |= PCI_STS_CAP_LIST;
    f->cap_last = (uint16_t)off;
    f->cap_free = (uint16_t)((off + len + 3) & ~3u);
    return (int)off;
}

int pci_add_cfg_hook(struct pci_func *f, uint16_t offset, uint16_t len,
                     const struct pci_cfg_ops *ops, void *opaque)
{
    if (f->topo)
        return -EBUSY;
    if (!ops || len == 0 || offset < PCI_CAP_START || (unsigned)offset + len > f->cfg_size)
        return -EINVAL;
    if (any_hook(f, offset, len))
        return -EEXIST;
    if (f->nhooks >= PCI_MAX_CFG_HOOKS)
        return -E2BIG;
    f->hooks[f->nhooks++] = (struct pci_cfg_hook){offset, len, ops, opaque};
    return 0;
}

/* ---- topology ---- */

int pci_topology_init(struct pci_topology *t, const struct pci_topology_hooks *hooks,
                      const struct irq_sink *intx)
{
    memset(t, 0, sizeof(*t));
    t->buses[0] = calloc(1, sizeof(struct pci_bus));
    if (!t->buses[0])
        return -ENOMEM;
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->intx_lock, NULL);
    if (hooks)
        t->hooks = *hooks;
    t->intx_out = intx;
    t->intx_sink = (struct irq_sink){.ctx = t, .set_level = intx_or_set_level};
    return 0;
}

void pci_topology_destroy(struct pci_topology *t)
{
    if (!t || !t->buses[0])
        return;
    for (unsigned i = 0; i < 256; i++)
        free(t->buses[i]);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->intx_lock);
    memset(t, 0, sizeof(*t));
}

/* The GSI of f's pin at logical path p, swizzled up to bus 0. Lock held. */
static uint32_t route_intx(const struct pci_topology *t, const struct pci_path *p, uint8_t pin)
{
    uint8_t dev = p->device, bus = p->bus;
    /* Each bridge's bus was created before it, so this walk ends at bus 0. */
    for (unsigned depth = 0; bus != 0 && depth < 256; depth++) {
        const struct pci_func *up = t->buses[bus]->upstream;
        pin = pci_intx_swizzle(dev, pin);
        dev = up->path.device;
        bus = up->path.bus;
    }
    return pci_intx_gsi(dev, pin);
}

/* Links bridge f into bus b's bridge list, in (device, function) order. */
static void link_bridge(struct pci_bus *b, struct pci_func *f)
{
    struct pci_func **pp = &b->bridges;
    unsigned key = f->path.device * 8u + f->path.function;
    while (*pp && (*pp)->path.device * 8u + (*pp)->path.function < key)
        pp = &(*pp)->next_bridge;
    f->next_bridge = *pp;
    *pp = f;
}

/* Sets the multifunction bit on function 0 of a device that has others. */
static void fix_multifunction(struct pci_bus *b, uint8_t dev)
{
    struct pci_func *f0 = b->slots[dev][0];
    if (!f0)
        return;
    for (unsigned fn = 1; fn < 8; fn++) {
        if (b->slots[dev][fn]) {
            f0->cfg[PCI_REG_HEADER_TYPE] |= PCI_HEADER_TYPE_MULTI;
            f0->reset_cfg[PCI_REG_HEADER_TYPE] |= PCI_HEADER_TYPE_MULTI;
            return;
        }
    }
}

static int topology_add_locked(struct pci_topology *t, const struct pci_path *p, struct pci_func *f)
{
    struct pci_bus *bus = t->buses[p->bus];
    struct pci_bus *down = NULL;

    if (f->topo)
        return -EINVAL;
    if (!bus)
        return -ENOENT;
    if (bus->slots[p->device][p->function])
        return -EEXIST;
    if (f->is_bridge) {
        if (f->downstream_bus == 0 || t->buses[f->downstream_bus])
            return -EEXIST;
        down = calloc(1, sizeof(*down));
        if (!down)
            return -ENOMEM;
        down->upstream = f;
        t->buses[f->downstream_bus] = down;
    }

    f->topo = t;
    f->path = *p;
    bus->slots[p->device][p->function] = f;
    if (f->is_bridge)
        link_bridge(bus, f);
    uint8_t pin = f->cfg[PCI_REG_INT_PIN];
    if (pin >= 1 && pin <= 4)
        f->intx = (struct irq_line){.sink = &t->intx_sink, .gsi = route_intx(t, p, pin)};
    memcpy(f->reset_cfg, f->cfg, f->cfg_size);
    fix_multifunction(bus, p->device);

    command_changed(f);
    update_bars(f);
    return 0;
}

int pci_topology_add(struct pci_topology *t, const struct pci_path *p, struct pci_func *f)
{
    if (!t || !p || !f || p->device > 31 || p->function > 7)
        return -EINVAL;
    pthread_mutex_lock(&t->lock);
    int r = topology_add_locked(t, p, f);
    pthread_mutex_unlock(&t->lock);
    return r;
}

struct pci_func *pci_topology_get(struct pci_topology *t, const struct pci_path *p)
{
    if (p->device > 31 || p->function > 7)
        return NULL;
    pthread_mutex_lock(&t->lock);
    struct pci_bus *b = t->buses[p->bus];
    struct pci_func *f = b ? b->slots[p->device][p->function] : NULL;
    pthread_mutex_unlock(&t->lock);
    return f;
}

/*
 * The logical bus a configuration cycle for routed bus `bus` ends up on as
 * a type-0 cycle, following the bridges' programmed bus numbers from the
 * root down, or NULL when no bridge claims it. Lock held.
 */
static struct pci_bus *route_bus(struct pci_topology *t, uint8_t bus)
{
    struct pci_bus *b = t->buses[0];
    if (bus == 0)
        return b;
    /* The logical tree has at most 256 levels; the bound is belt and braces. */
    for (unsigned depth = 0; b && depth < 256; depth++) {
        struct pci_func *br;
        for (br = b->bridges; br; br = br->next_bridge) {
            uint8_t sec = br->cfg[PCI_REG_SECONDARY_BUS];
            uint8_t sub = br->cfg[PCI_REG_SUBORDINATE_BUS];
            if (sec <= bus && bus <= sub)
                break; /* the first claimant wins if the guest made them overlap */
        }
        if (!br)
            return NULL;
        b = t->buses[br->downstream_bus];
        if (br->cfg[PCI_REG_SECONDARY_BUS] == bus)
            return b; /* type 1 -> type 0 conversion */
    }
    return NULL;
}

static struct pci_func *route(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn)
{
    struct pci_bus *b = route_bus(t, bus);
    return b && dev < 32 && fn < 8 ? b->slots[dev][fn] : NULL;
}

struct pci_func *pci_topology_lookup(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn)
{
    pthread_mutex_lock(&t->lock);
    struct pci_func *f = route(t, bus, dev, fn);
    pthread_mutex_unlock(&t->lock);
    return f;
}

static bool cfg_access_ok(uint8_t dev, uint8_t fn, uint32_t offset, unsigned size)
{
    return dev < 32 && fn < 8 && (size == 1 || size == 2 || size == 4) && offset % size == 0 &&
           offset < PCI_CFG_SIZE_EXT;
}

uint32_t pci_topology_cfg_read(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn,
                               uint32_t offset, unsigned size)
{
    if (!cfg_access_ok(dev, fn, offset, size)) {
        guest_error("pci", "bad config read %02x:%02x.%x offset 0x%x size %u", bus, dev, fn, offset,
                    size);
        return ones(size);
    }
    uint32_t v = ones(size);
    pthread_mutex_lock(&t->lock);
    struct pci_func *f = route(t, bus, dev, fn);
    if (f && offset + size <= f->cfg_size)
        v = func_read(f, (uint16_t)offset, size);
    pthread_mutex_unlock(&t->lock);
    return v;
}

void pci_topology_cfg_write(struct pci_topology *t, uint8_t bus, uint8_t dev, uint8_t fn,
                            uint32_t offset, unsigned size, uint32_t value)
{
    if (!cfg_access_ok(dev, fn, offset, size)) {
        guest_error("pci", "bad config write %02x:%02x.%x offset 0x%x size %u", bus, dev, fn,
                    offset, size);
        return;
    }
    pthread_mutex_lock(&t->lock);
    struct pci_func *f = route(t, bus, dev, fn);
    if (f && offset + size <= f->cfg_size)
        func_write(f, (uint16_t)offset, size, value & ones(size));
    pthread_mutex_unlock(&t->lock);
}

void pci_topology_reset(struct pci_topology *t)
{
    pthread_mutex_lock(&t->lock);
    for (unsigned bus = 0; bus < 256; bus++) {
        struct pci_bus *b = t->buses[bus];
        if (!b)
            continue;
        for (unsigned d = 0; d < 32; d++) {
            for (unsigned fn = 0; fn < 8; fn++) {
                struct pci_func *f = b->slots[d][fn];
                if (!f)
                    continue;
                memcpy(f->cfg, f->reset_cfg, f->cfg_size);
                update_bars(f);
                command_changed(f);
                if (f->on_reset)
                    f->on_reset(f);
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
}

void pci_topology_remap_all(struct pci_topology *t)
{
    pthread_mutex_lock(&t->lock);
    for (unsigned bus = 0; bus < 256; bus++) {
        struct pci_bus *b = t->buses[bus];
        for (unsigned d = 0; b && d < 32; d++) {
            for (unsigned fn = 0; fn < 8; fn++) {
                struct pci_func *f = b->slots[d][fn];
                if (!f)
                    continue;
                update_bars(f);
                command_changed(f);
            }
        }
    }
    pthread_mutex_unlock(&t->lock);
}

/* ---- migration ---- */

int pci_func_save(const struct pci_func *cf, struct mig_out *o)
{
    struct pci_func *f = (struct pci_func *)cf; /* for the locks only */
    struct pci_topology *t = f->topo;
    if (t)
        pthread_mutex_lock(&t->lock);
    mig_put_u16(o, f->cfg_size);
    mig_put_bytes(o, f->cfg, f->cfg_size);
    if (t)
        pthread_mutex_lock(&t->intx_lock);
    mig_put_bool(o, f->intx_level);
    if (t) {
        pthread_mutex_unlock(&t->intx_lock);
        pthread_mutex_unlock(&t->lock);
    }
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

/* Whether cfg byte i may become v: only bits the guest or the device changes. */
static bool cfg_byte_ok(const struct pci_func *f, unsigned i, uint8_t v)
{
    if (any_hook(f, i, 1))
        return true;
    uint8_t fixed = (uint8_t) ~(f->wmask[i] | f->w1cmask[i]);
    return ((v ^ f->cfg[i]) & fixed) == 0;
}

int pci_func_load(struct pci_func *f, struct mig_in *in, uint32_t version)
{
    if (version != PCI_FUNC_STATE_VERSION)
        return -EPROTO;
    uint8_t cfg[PCI_CFG_SIZE_EXT];
    uint16_t size = mig_get_u16(in);
    if (size != f->cfg_size) {
        mig_in_fail(in);
        return -EINVAL;
    }
    mig_get_bytes(in, cfg, size);
    bool level = mig_get_bool(in);
    struct pci_topology *t = f->topo;
    if (t)
        pthread_mutex_lock(&t->lock);
    bool ok = mig_in_done(in);
    for (unsigned i = 0; ok && i < size; i++)
        ok = cfg_byte_ok(f, i, cfg[i]);
    if (ok) {
        memcpy(f->cfg, cfg, size);
        command_changed(f);
        update_bars(f);
    }
    if (t)
        pthread_mutex_unlock(&t->lock);
    if (!ok) {
        mig_in_fail(in);
        return -EINVAL;
    }
    pci_set_irq(f, level);
    return 0;
}
