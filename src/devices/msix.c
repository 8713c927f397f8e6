/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/msix.h"

#include <errno.h>
#include <string.h>

/*
 * Capability layout (PCI Local Bus 3.0 §6.8.2): ID, next, Message Control
 * (table size - 1 in bits 10:0, function mask bit 14, enable bit 15), then
 * the Table and PBA offset/BIR dwords. Message Control is generated from
 * x->enabled/x->fmasked on read, so msix_reset needs no config access.
 */
#define MSIX_CAP_LEN       12u
#define MSIX_CAP_MC        2u
#define MSIX_CAP_TABLE     4u
#define MSIX_CAP_PBA       8u
#define MSIX_MC_FMASK      0x4000u
#define MSIX_MC_ENABLE     0x8000u
#define MSIX_CTRL_MASKED   0x1u
#define MSIX_ADDR_WIN_MASK 0xfff00000u
#define MSIX_ADDR_WIN      0xfee00000u

static uint64_t ones64(unsigned size)
{
    return size >= 8 ? UINT64_MAX : (1ull << (8 * size)) - 1u;
}

static bool pending_get(const struct msix *x, unsigned v)
{
    return (x->pending[v / 64] >> (v % 64)) & 1u;
}

static void pending_set(struct msix *x, unsigned v, bool on)
{
    uint64_t bit = 1ull << (v % 64);
    if (on)
        x->pending[v / 64] |= bit;
    else
        x->pending[v / 64] &= ~bit;
}

/* Whether vector v may fire now. Lock held. */
static bool can_fire(const struct msix *x, unsigned v)
{
    return x->enabled && !x->fmasked && !(x->table[v].ctrl & MSIX_CTRL_MASKED);
}

/* Sends vector v's message, or drops it when its address is bogus. Lock held. */
static void deliver(struct msix *x, unsigned v)
{
    const struct msix_entry *e = &x->table[v];
    pending_set(x, v, false);
    if (e->addr_hi != 0 || (e->addr_lo & MSIX_ADDR_WIN_MASK) != MSIX_ADDR_WIN) {
        guest_error(x->f ? x->f->name : "msix", "MSI-X vector %u: address 0x%08x%08x dropped", v,
                    e->addr_hi, e->addr_lo);
        return;
    }
    if (x->sink && x->sink->msi)
        x->sink->msi(x->sink->ctx, ((uint64_t)e->addr_hi << 32) | e->addr_lo, e->data);
}

/* Delivers every pending vector that may fire now. Lock held. */
static void flush_pending(struct msix *x)
{
    for (unsigned v = 0; v < x->nvec; v++) {
        if (pending_get(x, v) && can_fire(x, v))
            deliver(x, v);
    }
}

/* ---- Message Control (cfg hook; topology lock held, then ours) ---- */

static uint16_t msg_control(struct msix *x)
{
    uint16_t mc = (uint16_t)(x->nvec - 1u);
    if (x->fmasked)
        mc |= MSIX_MC_FMASK;
    if (x->enabled)
        mc |= MSIX_MC_ENABLE;
    return mc;
}

static uint32_t mc_read(void *opaque, struct pci_func *f, uint16_t offset, unsigned size)
{
    struct msix *x = opaque;
    pthread_mutex_lock(&x->lock);
    uint16_t mc = msg_control(x);
    pthread_mutex_unlock(&x->lock);
    unsigned shift = 8u * (unsigned)(offset - (x->cap + MSIX_CAP_MC));
    return (uint32_t)(mc >> shift) & (size >= 2 ? 0xffffu : 0xffu);
}

static void mc_write(void *opaque, struct pci_func *f, uint16_t offset, unsigned size,
                     uint32_t value)
{
    struct msix *x = opaque;
    pthread_mutex_lock(&x->lock);
    unsigned shift = 8u * (unsigned)(offset - (x->cap + MSIX_CAP_MC));
    uint32_t mask = (size >= 2 ? 0xffffu : 0xffu) << shift;
    uint32_t mc = ((uint32_t)msg_control(x) & ~mask) | ((value << shift) & mask);
    x->enabled = (mc & MSIX_MC_ENABLE) != 0;
    x->fmasked = (mc & MSIX_MC_FMASK) != 0;
    flush_pending(x);
    pthread_mutex_unlock(&x->lock);
}

static const struct pci_cfg_ops mc_ops = {.read = mc_read, .write = mc_write};

/* ---- setup ---- */

int msix_init(struct msix *x, struct pci_func *f, unsigned nvec, unsigned bar, uint32_t table_off,
              uint32_t pba_off, const struct irq_sink *sink)
{
    if (!x || !f || nvec < 1 || nvec > MSIX_MAX_VECTORS || bar >= PCI_MAX_BARS || table_off % 8 ||
        pba_off % 8)
        return -EINVAL;
    uint64_t t_end = (uint64_t)table_off + msix_table_size(nvec);
    uint64_t p_end = (uint64_t)pba_off + msix_pba_size(nvec);
    if (t_end > UINT32_MAX || p_end > UINT32_MAX || (table_off < p_end && pba_off < t_end))
        return -EINVAL;

    int cap = pci_add_capability(f, PCI_CAP_ID_MSIX, MSIX_CAP_LEN);
    if (cap < 0)
        return cap;
    int r = pci_add_cfg_hook(f, (uint16_t)(cap + MSIX_CAP_MC), 2, &mc_ops, x);
    if (r < 0)
        return r;

    memset(x, 0, sizeof(*x));
    x->f = f;
    x->sink = sink;
    x->nvec = (uint16_t)nvec;
    x->cap = (uint16_t)cap;
    x->bar = (uint8_t)bar;
    x->table_off = table_off;
    x->pba_off = pba_off;
    pthread_mutex_init(&x->lock, NULL);
    for (unsigned v = 0; v < MSIX_MAX_VECTORS; v++)
        x->table[v].ctrl = MSIX_CTRL_MASKED;

    pci_cfg_poke(f, (uint16_t)(cap + MSIX_CAP_MC), 2, nvec - 1u);
    pci_cfg_poke(f, (uint16_t)(cap + MSIX_CAP_TABLE), 4, table_off | bar);
    pci_cfg_poke(f, (uint16_t)(cap + MSIX_CAP_PBA), 4, pba_off | bar);
    return 0;
}

void msix_destroy(struct msix *x)
{
    if (!x || !x->f)
        return;
    pthread_mutex_destroy(&x->lock);
    x->f = NULL;
}

void msix_reset(struct msix *x)
{
    pthread_mutex_lock(&x->lock);
    x->enabled = false;
    x->fmasked = false;
    for (unsigned v = 0; v < MSIX_MAX_VECTORS; v++)
        x->table[v] = (struct msix_entry){.ctrl = MSIX_CTRL_MASKED};
    memset(x->pending, 0, sizeof(x->pending));
    pthread_mutex_unlock(&x->lock);
}

/* ---- BAR accesses ---- */

/* Whether a size-byte access at off fits in a region of len bytes. */
static bool access_ok(uint64_t off, unsigned size, uint64_t len)
{
    return (size == 4 || size == 8) && off % size == 0 && off < len && size <= len - off;
}

/* Dword i (0 addr_lo, 1 addr_hi, 2 data, 3 ctrl) of vector v. Lock held. */
static uint32_t load_dword(const struct msix *x, unsigned v, unsigned i)
{
    const struct msix_entry *e = &x->table[v];
    switch (i) {
    case 0:
        return e->addr_lo;
    case 1:
        return e->addr_hi;
    case 2:
        return e->data;
    default:
        return e->ctrl;
    }
}

uint64_t msix_table_read(struct msix *x, uint64_t off, unsigned size)
{
    if (!access_ok(off, size, msix_table_size(x->nvec))) {
        guest_error(x->f->name, "MSI-X table read at 0x%llx size %u", (unsigned long long)off,
                    size);
        return ones64(size);
    }
    unsigned v = (unsigned)(off / MSIX_ENTRY_SIZE);
    unsigned i = (unsigned)(off % MSIX_ENTRY_SIZE) / 4;
    pthread_mutex_lock(&x->lock);
    uint64_t val = load_dword(x, v, i);
    if (size == 8)
        val |= (uint64_t)load_dword(x, v, i + 1) << 32;
    pthread_mutex_unlock(&x->lock);
    return val;
}

/* Stores dword i of vector v (see load_dword). Lock held. */
static void store_dword(struct msix *x, unsigned v, unsigned i, uint32_t val)
{
    struct msix_entry *e = &x->table[v];
    switch (i) {
    case 0:
        e->addr_lo = val & ~3u; /* dword aligned: bits 1:0 read as zero */
        break;
    case 1:
        e->addr_hi = val;
        break;
    case 2:
        e->data = val;
        break;
    default:
        /* Only the mask bit is defined; the rest is reserved (reads 0). */
        e->ctrl = val & MSIX_CTRL_MASKED;
        if (pending_get(x, v) && can_fire(x, v))
            deliver(x, v);
        break;
    }
}

void msix_table_write(struct msix *x, uint64_t off, unsigned size, uint64_t value)
{
    if (!access_ok(off, size, msix_table_size(x->nvec))) {
        guest_error(x->f->name, "MSI-X table write at 0x%llx size %u", (unsigned long long)off,
                    size);
        return;
    }
    pthread_mutex_lock(&x->lock);
    unsigned v = (unsigned)(off / MSIX_ENTRY_SIZE);
    unsigned i = (unsigned)(off % MSIX_ENTRY_SIZE) / 4;
    store_dword(x, v, i, (uint32_t)value);
    if (size == 8)
        store_dword(x, v, i + 1, (uint32_t)(value >> 32));
    pthread_mutex_unlock(&x->lock);
}

uint64_t msix_pba_read(struct msix *x, uint64_t off, unsigned size)
{
    if (!access_ok(off, size, msix_pba_size(x->nvec))) {
        guest_error(x->f->name, "MSI-X PBA read at 0x%llx size %u", (unsigned long long)off, size);
        return ones64(size);
    }
    pthread_mutex_lock(&x->lock);
    uint64_t q = x->pending[off / 8];
    pthread_mutex_unlock(&x->lock);
    return size == 8 ? q : (q >> (8 * (off % 8))) & 0xffffffffu;
}

bool msix_enabled(struct msix *x)
{
    pthread_mutex_lock(&x->lock);
    bool on = x->enabled;
    pthread_mutex_unlock(&x->lock);
    return on;
}

void msix_notify(struct msix *x, unsigned v)
{
    if (v >= x->nvec)
        return;
    pthread_mutex_lock(&x->lock);
    if (can_fire(x, v))
        deliver(x, v);
    else
        pending_set(x, v, true);
    pthread_mutex_unlock(&x->lock);
}

/* ---- migration ---- */

void msix_save(const struct msix *cx, struct mig_out *o)
{
    struct msix *x = (struct msix *)cx; /* for the lock only */
    pthread_mutex_lock(&x->lock);
    mig_put_u16(o, x->nvec);
    mig_put_bool(o, x->enabled);
    mig_put_bool(o, x->fmasked);
    for (unsigned v = 0; v < x->nvec; v++) {
        mig_put_u32(o, x->table[v].addr_lo);
        mig_put_u32(o, x->table[v].addr_hi);
        mig_put_u32(o, x->table[v].data);
        mig_put_u32(o, x->table[v].ctrl);
    }
    for (unsigned w = 0; w < (x->nvec + 63u) / 64u; w++)
        mig_put_u64(o, x->pending[w]);
    pthread_mutex_unlock(&x->lock);
}

int msix_load(struct msix *x, struct mig_in *in)
{
    struct msix t;
    memset(&t, 0, sizeof(t));
    t.nvec = mig_get_u16(in);
    if (!mig_in_ok(in) || t.nvec != x->nvec) {
        mig_in_fail(in);
        return -EINVAL;
    }
    t.enabled = mig_get_bool(in);
    t.fmasked = mig_get_bool(in);
    bool ok = true;
    for (unsigned v = 0; v < t.nvec; v++) {
        struct msix_entry *e = &t.table[v];
        e->addr_lo = mig_get_u32(in);
        e->addr_hi = mig_get_u32(in);
        e->data = mig_get_u32(in);
        e->ctrl = mig_get_u32(in);
        ok &= !(e->addr_lo & 3u) && !(e->ctrl & ~MSIX_CTRL_MASKED);
    }
    for (unsigned v = t.nvec; v < MSIX_MAX_VECTORS; v++)
        t.table[v].ctrl = MSIX_CTRL_MASKED;
    for (unsigned w = 0; w < (t.nvec + 63u) / 64u; w++)
        t.pending[w] = mig_get_u64(in);
    if (t.nvec % 64)
        ok &= !(t.pending[t.nvec / 64] >> (t.nvec % 64));
    for (unsigned v = 0; ok && v < t.nvec; v++)
        ok = !(pending_get(&t, v) && can_fire(&t, v));
    if (!ok || !mig_in_ok(in)) {
        mig_in_fail(in);
        return -EINVAL;
    }
    pthread_mutex_lock(&x->lock);
    x->enabled = t.enabled;
    x->fmasked = t.fmasked;
    memcpy(x->table, t.table, sizeof(x->table));
    memcpy(x->pending, t.pending, sizeof(x->pending));
    pthread_mutex_unlock(&x->lock);
    return 0;
}
