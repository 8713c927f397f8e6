/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The machine side of live migration: dirty tracking of guest RAM through
 * KVM's dirty log, and the machine's state as payloads (vCPUs, the
 * in-kernel irqchip, PIT and clock, and every device machine_devices.c
 * lists). Pause and resume are in machine.c.
 *
 * Payload ids: "vcpu" by vCPU index ("0", "1", ...); "irqchip", "pit" and
 * "clock" once per VM with id "0"; devices as machine_devices_mig_list()
 * names them.
 */
#include "machine/machine_mig.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "common/log.h"
#include "common/mig_buf.h"
#include "devices/cmos.h"
#include "devices/fw_cfg.h"
#include "devices/nvme.h"
#include "devices/pci.h"
#include "devices/platform.h"
#include "devices/uart16550.h"
#include "devices/virtio_blk.h"
#include "devices/virtio_net.h"
#include "devices/virtio_pci.h"
#include "machine/machine_int.h"

#define VM_ID "0"

struct machine_mig {
    bool info_ok;
    struct vcpu_state_info info;

    /* Dirty tracking. */
    bool manual_enabled; /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on for this VM */
    bool initially_set;  /* ... with KVM_DIRTY_LOG_INITIALLY_SET */
    bool tracking;
    bool report_all;     /* the next fetch reports every page (no INITIALLY_SET) */
    uint64_t *slot_bits; /* scratch: one slot's bitmap */
    size_t slot_words;

    /* Loading: what came, against what this machine expects. */
    struct machine_mig_dev *devs;
    size_t ndevs;
    bool *loaded; /* [0, ncpus): vCPUs; then irqchip, pit, clock; then devs */
};

enum { LOADED_IRQCHIP, LOADED_PIT, LOADED_CLOCK, LOADED_VM_COUNT };

/* ---- payload kinds ---- */

struct kvm_kind {
    const char *kind;
    uint32_t version, min_version;
};

static const struct kvm_kind kvm_kinds[] = {
    {"vcpu", 1, 1},
    {"irqchip", 1, 1},
    {"pit", 1, 1},
    {"clock", 1, 1},
};
#define NKVM_KINDS (sizeof(kvm_kinds) / sizeof(kvm_kinds[0]))

/* Every device kind this build knows (machine_payload_accepts has no machine). */
static const struct machine_mig_ops *const device_kinds[] = {
    &machine_mig_uart_ops,       &machine_mig_cmos_ops,       &machine_mig_pm_ops,
    &machine_mig_i8042_ops,      &machine_mig_pvpanic_ops,    &machine_mig_fw_cfg_ops,
    &machine_mig_virtio_blk_ops, &machine_mig_virtio_net_ops, &machine_mig_nvme_ops,
    &machine_mig_pci_config_ops,
};
#define NDEVICE_KINDS (sizeof(device_kinds) / sizeof(device_kinds[0]))

static void add_kind(struct mig_kind_version *out, size_t max, size_t *n, const char *kind,
                     uint32_t version, uint32_t min_version)
{
    for (size_t i = 0; i < *n && i < max; i++) {
        if (strcmp(out[i].kind, kind) == 0)
            return;
    }
    if (*n < max) {
        snprintf(out[*n].kind, sizeof(out[*n].kind), "%s", kind);
        out[*n].version = version;
        out[*n].min_version = min_version;
    }
    (*n)++;
}

/* The device list; *n may exceed what fits in a fixed array, so allocate. */
static int list_devices(struct machine *m, struct machine_mig_dev **out, size_t *n)
{
    size_t cnt = machine_devices_mig_list(m, NULL, 0);
    struct machine_mig_dev *d = calloc(cnt ? cnt : 1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    *n = machine_devices_mig_list(m, d, cnt);
    if (*n > cnt)
        *n = cnt;
    *out = d;
    return 0;
}

size_t machine_payload_kinds(const struct machine *m, struct mig_kind_version *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < NKVM_KINDS; i++)
        add_kind(out, max, &n, kvm_kinds[i].kind, kvm_kinds[i].version, kvm_kinds[i].min_version);
    struct machine_mig_dev *devs = NULL;
    size_t ndevs = 0;
    /* The list only reads the machine's device tables. */
    if (list_devices((struct machine *)m, &devs, &ndevs) == 0) {
        for (size_t i = 0; i < ndevs; i++)
            add_kind(out, max, &n, devs[i].ops->kind, devs[i].ops->version,
                     devs[i].ops->min_version);
    }
    free(devs);
    return n;
}

static bool lookup_kind(const char *kind, uint32_t *version, uint32_t *min_version)
{
    for (size_t i = 0; i < NKVM_KINDS; i++) {
        if (strcmp(kvm_kinds[i].kind, kind) == 0) {
            *version = kvm_kinds[i].version;
            *min_version = kvm_kinds[i].min_version;
            return true;
        }
    }
    for (size_t i = 0; i < NDEVICE_KINDS; i++) {
        if (strcmp(device_kinds[i]->kind, kind) == 0) {
            *version = device_kinds[i]->version;
            *min_version = device_kinds[i]->min_version;
            return true;
        }
    }
    return false;
}

int machine_payload_accepts(const char *kind, uint32_t offered, uint32_t *accept)
{
    uint32_t version, min_version;
    if (!lookup_kind(kind, &version, &min_version) || offered < min_version)
        return -ENOTSUP;
    *accept = offered < version ? offered : version;
    return 0;
}

/* The version to write for `kind`: the target's choice, or the newest. */
static int pick_version(const struct mig_kind_version *want, size_t nwant, const char *kind,
                        uint32_t *out)
{
    uint32_t version, min_version;
    if (!lookup_kind(kind, &version, &min_version))
        return -ENOTSUP;
    *out = version;
    for (size_t i = 0; want && i < nwant; i++) {
        if (strncmp(want[i].kind, kind, sizeof(want[i].kind)) != 0)
            continue;
        if (want[i].version < min_version || want[i].version > version)
            return -EPROTO;
        *out = want[i].version;
    }
    return 0;
}

/* ---- common ---- */

static int mig_state(struct machine *m)
{
    if (!m->mig && !(m->mig = calloc(1, sizeof(*m->mig))))
        return -ENOMEM;
    return 0;
}

static int vcpu_info(struct machine *m)
{
    int r = mig_state(m);
    if (r == 0 && !m->mig->info_ok) {
        r = vcpu_state_info_init(m->kvm_fd, m->vm_fd, &m->vcpus[0], &m->mig->info);
        m->mig->info_ok = r == 0;
    }
    return r;
}

void machine_mig_free(struct machine *m)
{
    if (!m->mig)
        return;
    if (m->mig->tracking)
        machine_dirty_stop(m);
    vcpu_state_info_free(&m->mig->info);
    free(m->mig->slot_bits);
    free(m->mig->devs);
    free(m->mig->loaded);
    free(m->mig);
    m->mig = NULL;
}

struct guest_mem *machine_guest_mem(struct machine *m)
{
    return &m->mem;
}

/* ---- dirty tracking ---- */

static uint64_t region_pages(const struct guest_mem_region *r)
{
    return r->size / GUEST_PAGE_SIZE;
}

static int set_slot_logging(struct machine *m, size_t i, bool on)
{
    const struct guest_mem_region *r = &m->mem.regions[i];
    struct kvm_userspace_memory_region slot = {
        .slot = (uint32_t)i,
        .flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
        .guest_phys_addr = r->gpa,
        .memory_size = r->size,
        .userspace_addr = (uint64_t)(uintptr_t)r->host,
    };
    return ioctl(m->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0 ? -errno : 0;
}

/* Manual protection: GET_DIRTY_LOG no longer clears, CLEAR_DIRTY_LOG re-arms. */
static void enable_manual_protect(struct machine *m)
{
    struct machine_mig *g = m->mig;
    if (g->manual_enabled)
        return;
    int caps = ioctl(m->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
    if (caps <= 0)
        return; /* old KVM: GET_DIRTY_LOG clears and re-protects itself */
    uint64_t want = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
    if ((uint64_t)caps & KVM_DIRTY_LOG_INITIALLY_SET)
        want |= KVM_DIRTY_LOG_INITIALLY_SET;
    struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .args = {want}};
    if (ioctl(m->vm_fd, KVM_ENABLE_CAP, &cap) == 0) {
        g->manual_enabled = true;
        g->initially_set = want & KVM_DIRTY_LOG_INITIALLY_SET;
    }
}

int machine_dirty_start(struct machine *m)
{
    int r = mig_state(m);
    if (r < 0)
        return r;
    struct machine_mig *g = m->mig;
    if (g->tracking)
        return 0;
    size_t words = 0;
    for (size_t i = 0; i < m->mem.nregions; i++) {
        /* Slot bitmaps are ORed into the RAM bitmap word by word. */
        if (m->mem.regions[i].ram_offset % (64 * GUEST_PAGE_SIZE))
            return -EINVAL;
        size_t w = (size_t)((region_pages(&m->mem.regions[i]) + 63) / 64);
        words = w > words ? w : words;
    }
    free(g->slot_bits);
    g->slot_bits = calloc(words ? words : 1, sizeof(uint64_t));
    if (!g->slot_bits)
        return -ENOMEM;
    g->slot_words = words;
    enable_manual_protect(m);
    if ((r = guest_mem_dirty_start(&m->mem)) < 0)
        return r;
    for (size_t i = 0; i < m->mem.nregions && r == 0; i++)
        r = set_slot_logging(m, i, true);
    if (r < 0) {
        for (size_t i = 0; i < m->mem.nregions; i++)
            set_slot_logging(m, i, false);
        guest_mem_dirty_stop(&m->mem);
        return r;
    }
    g->tracking = true;
    g->report_all = !g->initially_set;
    return 0;
}

/* KVM's log of every slot ORed into out (RAM page order). */
static int get_logs(struct machine *m, uint64_t *out)
{
    struct machine_mig *g = m->mig;
    for (size_t i = 0; i < m->mem.nregions; i++) {
        const struct guest_mem_region *r = &m->mem.regions[i];
        size_t words = (size_t)((region_pages(r) + 63) / 64);
        memset(g->slot_bits, 0, words * sizeof(uint64_t));
        struct kvm_dirty_log log = {.slot = (uint32_t)i, .dirty_bitmap = g->slot_bits};
        if (ioctl(m->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0)
            return -errno;
        uint64_t *dst = out + r->ram_offset / GUEST_PAGE_SIZE / 64;
        for (size_t w = 0; w < words; w++)
            dst[w] |= g->slot_bits[w];
    }
    return 0;
}

int machine_dirty_peek(struct machine *m, uint64_t *out)
{
    struct machine_mig *g = m->mig;
    if (!g || !g->tracking)
        return -EINVAL;
    if (!g->manual_enabled)
        return -ENOTSUP;
    return get_logs(m, out);
}

int machine_dirty_fetch(struct machine *m, uint64_t *out)
{
    struct machine_mig *g = m->mig;
    if (!g || !g->tracking)
        return -EINVAL;
    if (atomic_load(&m->event_sent))
        return -ECANCELED; /* the guest reset, powered off or failed: nothing to migrate */
    int r = get_logs(m, out);
    if (r < 0)
        return r;
    for (size_t i = 0; g->report_all && i < m->mem.nregions; i++) {
        const struct guest_mem_region *rg = &m->mem.regions[i];
        uint64_t *dst = out + rg->ram_offset / GUEST_PAGE_SIZE / 64;
        for (uint64_t p = 0; p < region_pages(rg); p++)
            dst[p / 64] |= 1ull << (p % 64);
    }
    g->report_all = false;
    guest_mem_dirty_take(&m->mem, out);
    return 0;
}

int machine_dirty_clear(struct machine *m, const uint64_t *bits)
{
    struct machine_mig *g = m->mig;
    if (!g || !g->tracking)
        return -EINVAL;
    if (!g->manual_enabled)
        return 0; /* fetch already re-armed them */
    for (size_t i = 0; i < m->mem.nregions; i++) {
        const struct guest_mem_region *r = &m->mem.regions[i];
        uint64_t pages = region_pages(r);
        size_t words = (size_t)((pages + 63) / 64);
        const uint64_t *src = bits + r->ram_offset / GUEST_PAGE_SIZE / 64;
        bool any = false;
        for (size_t w = 0; w < words; w++) {
            g->slot_bits[w] = src[w];
            any |= src[w] != 0;
        }
        if (!any)
            continue;
        /* The whole slot: first_page 0, and num_pages reaches its end. */
        struct kvm_clear_dirty_log c = {
            .slot = (uint32_t)i,
            .num_pages = (uint32_t)pages,
            .first_page = 0,
            .dirty_bitmap = g->slot_bits,
        };
        if (pages > UINT32_MAX)
            return -E2BIG;
        if (ioctl(m->vm_fd, KVM_CLEAR_DIRTY_LOG, &c) < 0)
            return -errno;
    }
    return 0;
}

void machine_dirty_stop(struct machine *m)
{
    struct machine_mig *g = m->mig;
    if (!g || !g->tracking)
        return;
    for (size_t i = 0; i < m->mem.nregions; i++)
        set_slot_logging(m, i, false);
    guest_mem_dirty_stop(&m->mem);
    g->tracking = false;
}

/* ---- KVM VM state: irqchip, PIT, clock ---- */

static int save_irqchip(struct machine *m, struct mig_out *o)
{
    for (uint32_t chip = KVM_IRQCHIP_PIC_MASTER; chip <= KVM_IRQCHIP_IOAPIC; chip++) {
        struct kvm_irqchip c;
        memset(&c, 0, sizeof(c));
        c.chip_id = chip;
        if (ioctl(m->vm_fd, KVM_GET_IRQCHIP, &c) < 0)
            return -errno;
        mig_put_blob(o, &c, sizeof(c));
    }
    return 0;
}

static bool get_exact(struct mig_in *in, void *dst, size_t size)
{
    size_t len = 0;
    const uint8_t *p = mig_get_blob(in, size, &len);
    if (!p || len != size) {
        mig_in_fail(in);
        return false;
    }
    memcpy(dst, p, size);
    return true;
}

static int load_irqchip(struct machine *m, struct mig_in *in, struct cella_errors *errs)
{
    struct kvm_irqchip c[3];
    for (uint32_t chip = 0; chip < 3; chip++) {
        if (!get_exact(in, &c[chip], sizeof(c[chip])) || c[chip].chip_id != chip || c[chip].pad)
            return cella_err(errs, -EINVAL, "", "irqchip: bad state for chip %u", chip);
    }
    if (!mig_in_done(in))
        return cella_err(errs, -EINVAL, "", "irqchip: trailing bytes");
    for (uint32_t chip = 0; chip < 3; chip++) {
        if (ioctl(m->vm_fd, KVM_SET_IRQCHIP, &c[chip]) < 0)
            return cella_err(errs, -EINVAL, "", "irqchip: KVM refused chip %u: %s", chip,
                             strerror(errno));
    }
    return 0;
}

static int save_pit(struct machine *m, struct mig_out *o)
{
    struct kvm_pit_state2 p;
    memset(&p, 0, sizeof(p));
    if (ioctl(m->vm_fd, KVM_GET_PIT2, &p) < 0)
        return -errno;
    mig_put_blob(o, &p, sizeof(p));
    return 0;
}

static int load_pit(struct machine *m, struct mig_in *in, struct cella_errors *errs)
{
    struct kvm_pit_state2 p;
    if (!get_exact(in, &p, sizeof(p)) || !mig_in_done(in))
        return cella_err(errs, -EINVAL, "", "pit: bad state size");
    if (p.flags & ~(uint32_t)(KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON))
        return cella_err(errs, -EINVAL, "", "pit: unknown flags %#x", p.flags);
    for (int i = 0; i < 3; i++) {
        const struct kvm_pit_channel_state *c = &p.channels[i];
        /* Modes 6 and 7 alias 2 and 3; KVM leaves a never-programmed channel at 0xff. */
        if ((c->mode > 7 && c->mode != 0xff) || c->bcd > 1 || c->gate > 1 || c->rw_mode > 3 ||
            c->read_state > 4 || c->write_state > 4 || c->status_latched > 1 ||
            c->count_latched > 4)
            return cella_err(errs, -EINVAL, "",
                             "pit: channel %d state out of range (mode %u bcd %u gate %u rw %u "
                             "read %u write %u latched %u/%u)",
                             i, c->mode, c->bcd, c->gate, c->rw_mode, c->read_state, c->write_state,
                             c->status_latched, c->count_latched);
    }
    if (ioctl(m->vm_fd, KVM_SET_PIT2, &p) < 0)
        return cella_err(errs, -EINVAL, "", "pit: KVM refused the state: %s", strerror(errno));
    return 0;
}

/*
 * The kvmclock: its value when saved, and (when KVM gives it) the host's
 * realtime at that instant, so the target can advance the clock by the
 * time the migration took (KVM_CLOCK_REALTIME on KVM_SET_CLOCK). Without
 * it the guest's clock resumes from the saved value.
 */
static int save_clock(struct machine *m, struct mig_out *o)
{
    struct kvm_clock_data c;
    memset(&c, 0, sizeof(c));
    if (ioctl(m->vm_fd, KVM_GET_CLOCK, &c) < 0)
        return -errno;
    mig_put_u64(o, c.clock);
    mig_put_bool(o, (c.flags & KVM_CLOCK_REALTIME) != 0);
    mig_put_u64(o, (c.flags & KVM_CLOCK_REALTIME) ? c.realtime : 0);
    return 0;
}

static int load_clock(struct machine *m, struct mig_in *in, struct cella_errors *errs)
{
    struct kvm_clock_data c;
    memset(&c, 0, sizeof(c));
    c.clock = mig_get_u64(in);
    bool realtime = mig_get_bool(in);
    c.realtime = mig_get_u64(in);
    if (!mig_in_done(in))
        return cella_err(errs, -EINVAL, "", "clock: bad state");
    int caps = ioctl(m->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK);
    if (realtime && caps > 0 && (caps & KVM_CLOCK_REALTIME)) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        uint64_t now_ns = (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
        /* KVM only ever advances; a source clock ahead of ours just sets. */
        if (c.realtime <= now_ns)
            c.flags = KVM_CLOCK_REALTIME;
    }
    if (ioctl(m->vm_fd, KVM_SET_CLOCK, &c) < 0)
        return cella_err(errs, -EINVAL, "", "clock: KVM refused it: %s", strerror(errno));
    return 0;
}

/* ---- device payloads: adapters over the device cores' save/load ---- */

/*
 * Each device core writes and reads its own payload (FOO_save/FOO_load);
 * these adapters give them one signature and turn a refusal into a
 * record. Loaders return -EPROTO for a version they do not read and
 * -EINVAL for bad bytes; both are -EINVAL to the caller here.
 */
static int load_result(int r, const char *kind, struct cella_errors *errs)
{
    if (r >= 0)
        return 0;
    if (r == -ENOMEM)
        return r;
    return cella_err(errs, -EINVAL, "", "%s: the payload was refused: %s", kind, strerror(-r));
}

#define MIG_ADAPTER(name, type, kind_, version_, save_fn, load_fn)                                 \
    static int name##_save_adapter(void *dev, uint32_t version, struct mig_out *o)                 \
    {                                                                                              \
        (void)version;                                                                             \
        return save_fn((const type *)dev, o);                                                      \
    }                                                                                              \
    static int name##_load_adapter(void *dev, uint32_t version, struct mig_in *in,                 \
                                   struct cella_errors *errs)                                      \
    {                                                                                              \
        return load_result(load_fn((type *)dev, in, version), kind_, errs);                        \
    }                                                                                              \
    const struct machine_mig_ops machine_mig_##name##_ops = {                                      \
        .kind = kind_,                                                                             \
        .version = version_,                                                                       \
        .min_version = 1,                                                                          \
        .save = name##_save_adapter,                                                               \
        .load = name##_load_adapter,                                                               \
    }

MIG_ADAPTER(uart, struct uart, UART_STATE_KIND, UART_STATE_VERSION, uart_mig_save, uart_mig_load);
MIG_ADAPTER(cmos, struct cmos, CMOS_STATE_KIND, CMOS_STATE_VERSION, cmos_mig_save, cmos_mig_load);
MIG_ADAPTER(pm, struct pm, "pm", PM_STATE_VERSION, pm_mig_save, pm_mig_load);
MIG_ADAPTER(i8042, struct i8042, "i8042", I8042_STATE_VERSION, i8042_save, i8042_load);
MIG_ADAPTER(pvpanic, struct pvpanic, "pvpanic", PVPANIC_STATE_VERSION, pvpanic_save, pvpanic_load);
MIG_ADAPTER(fw_cfg, struct fw_cfg, "fw_cfg", FW_CFG_STATE_VERSION, fw_cfg_save, fw_cfg_load);
MIG_ADAPTER(virtio_blk, struct virtio_pci, "virtio-blk", VIRTIO_BLK_STATE_VERSION, virtio_pci_save,
            virtio_pci_load);
MIG_ADAPTER(virtio_net, struct virtio_pci, "virtio-net", VIRTIO_NET_STATE_VERSION, virtio_pci_save,
            virtio_pci_load);
/* NVMe saves in the negotiated version (version 1 cannot carry shadow doorbells). */
static int nvme_save_negotiated(void *dev, uint32_t version, struct mig_out *o)
{
    int r = nvme_save_version(dev, o, version);
    if (r == -EPROTO)
        log_msg(LOG_ERROR, "migrate",
                "%s: the target reads NVMe payload version %u, which cannot carry the "
                "guest's shadow doorbells (Doorbell Buffer Config); update the target's cella",
                nvme_pci_func(dev)->name, version);
    return r;
}

static int nvme_load_adapter(void *dev, uint32_t version, struct mig_in *in,
                             struct cella_errors *errs)
{
    return load_result(nvme_load(dev, in, version), "nvme", errs);
}

const struct machine_mig_ops machine_mig_nvme_ops = {
    .kind = "nvme",
    .version = NVME_STATE_VERSION,
    .min_version = 1,
    .save = nvme_save_negotiated,
    .load = nvme_load_adapter,
};
MIG_ADAPTER(pci_config, struct pci_func, "pci-config", PCI_FUNC_STATE_VERSION, pci_func_save,
            pci_func_load);

/* ---- save ---- */

static int emit_out(mig_emit_fn emit, void *ctx, const char *kind, const char *id, uint32_t version,
                    struct mig_out *o)
{
    if (!mig_out_ok(o))
        return -ENOMEM;
    if (o->len > MIG_PAYLOAD_MAX)
        return -E2BIG;
    return emit(ctx, kind, id, version, o->buf, o->len);
}

typedef int (*vm_save_fn)(struct machine *m, struct mig_out *o);

static int save_vm_part(struct machine *m, const struct mig_kind_version *want, size_t nwant,
                        const char *kind, vm_save_fn fn, mig_emit_fn emit, void *ctx)
{
    uint32_t version;
    int r = pick_version(want, nwant, kind, &version);
    if (r < 0)
        return r;
    struct mig_out o;
    mig_out_init(&o);
    r = fn(m, &o);
    if (r == 0)
        r = emit_out(emit, ctx, kind, VM_ID, version, &o);
    mig_out_free(&o);
    return r;
}

static int save_vcpus(struct machine *m, const struct mig_kind_version *want, size_t nwant,
                      mig_emit_fn emit, void *ctx)
{
    uint32_t version;
    int r = pick_version(want, nwant, "vcpu", &version);
    if (r == 0)
        r = vcpu_info(m);
    for (unsigned i = 0; i < m->ncpus && r == 0; i++) {
        struct mig_out o;
        mig_out_init(&o);
        char id[16];
        snprintf(id, sizeof(id), "%u", i);
        r = vcpu_state_save(&m->vcpus[i], &m->mig->info, &o);
        if (r == 0)
            r = emit_out(emit, ctx, "vcpu", id, version, &o);
        mig_out_free(&o);
    }
    return r;
}

static int save_devices(struct machine *m, const struct mig_kind_version *want, size_t nwant,
                        mig_emit_fn emit, void *ctx)
{
    struct machine_mig_dev *devs = NULL;
    size_t n = 0;
    int r = list_devices(m, &devs, &n);
    for (size_t i = 0; i < n && r == 0; i++) {
        uint32_t version;
        r = pick_version(want, nwant, devs[i].ops->kind, &version);
        struct mig_out o;
        mig_out_init(&o);
        if (r == 0)
            r = devs[i].ops->save(devs[i].dev, version, &o);
        if (r == 0)
            r = emit_out(emit, ctx, devs[i].ops->kind, devs[i].id, version, &o);
        mig_out_free(&o);
    }
    free(devs);
    return r;
}

int machine_save_state(struct machine *m, const struct mig_kind_version *want, size_t nwant,
                       mig_emit_fn emit, void *ctx)
{
    if (m->started && !m->paused)
        return -EBUSY;
    if (atomic_load(&m->event_sent))
        return -ECANCELED;
    int r = save_vcpus(m, want, nwant, emit, ctx);
    if (r == 0)
        r = save_vm_part(m, want, nwant, "irqchip", save_irqchip, emit, ctx);
    if (r == 0)
        r = save_vm_part(m, want, nwant, "pit", save_pit, emit, ctx);
    if (r == 0)
        r = save_vm_part(m, want, nwant, "clock", save_clock, emit, ctx);
    if (r == 0)
        r = save_devices(m, want, nwant, emit, ctx);
    return r;
}

/* ---- load ---- */

static int load_table(struct machine *m)
{
    int r = mig_state(m);
    if (r < 0 || m->mig->loaded)
        return r;
    if ((r = list_devices(m, &m->mig->devs, &m->mig->ndevs)) < 0)
        return r;
    m->mig->loaded = calloc(m->ncpus + LOADED_VM_COUNT + m->mig->ndevs, sizeof(bool));
    return m->mig->loaded ? 0 : -ENOMEM;
}

/* A vCPU index in canonical decimal ("0", "12"; not "012" or "+1"). */
static bool parse_index(const char *id, unsigned limit, unsigned *out)
{
    if (!id[0] || (id[0] == '0' && id[1]) || strlen(id) > 5)
        return false;
    unsigned v = 0;
    for (const char *p = id; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    *out = v;
    return v < limit;
}

static int check_version(const char *kind, const char *id, uint32_t version,
                         struct cella_errors *errs)
{
    uint32_t newest, oldest;
    if (!lookup_kind(kind, &newest, &oldest))
        return -ENOENT;
    if (version < oldest || version > newest)
        return cella_err(errs, -EINVAL, "",
                         "%s %s: version %" PRIu32 " is not one this build reads", kind, id,
                         version);
    return 0;
}

static int load_vm_kind(struct machine *m, const char *kind, struct mig_in *in,
                        struct cella_errors *errs, size_t *slot)
{
    if (strcmp(kind, "irqchip") == 0) {
        *slot = m->ncpus + LOADED_IRQCHIP;
        return load_irqchip(m, in, errs);
    }
    if (strcmp(kind, "pit") == 0) {
        *slot = m->ncpus + LOADED_PIT;
        return load_pit(m, in, errs);
    }
    *slot = m->ncpus + LOADED_CLOCK;
    return load_clock(m, in, errs);
}

int machine_load_state(struct machine *m, const char *kind, const char *id, uint32_t version,
                       const uint8_t *data, size_t len, struct cella_errors *errs)
{
    if (m->started && !m->paused)
        return -EBUSY;
    if (len > MIG_PAYLOAD_MAX)
        return cella_err(errs, -EINVAL, "", "%s %s: payload of %zu bytes is too large", kind, id,
                         len);
    int r = load_table(m);
    if (r < 0)
        return r;
    if ((r = check_version(kind, id, version, errs)) < 0)
        return r;
    struct mig_in in;
    mig_in_init(&in, data, len);
    size_t slot = SIZE_MAX;
    unsigned idx;
    if (strcmp(kind, "vcpu") == 0) {
        if (!parse_index(id, m->ncpus, &idx))
            return -ENOENT;
        if ((r = vcpu_info(m)) < 0)
            return r;
        slot = idx;
        r = vcpu_state_load(&m->vcpus[idx], &m->mig->info, &in, errs);
    } else if (!strcmp(kind, "irqchip") || !strcmp(kind, "pit") || !strcmp(kind, "clock")) {
        if (strcmp(id, VM_ID) != 0)
            return -ENOENT;
        r = load_vm_kind(m, kind, &in, errs, &slot);
    } else {
        struct machine_mig *g = m->mig;
        for (size_t i = 0; i < g->ndevs && slot == SIZE_MAX; i++) {
            if (strcmp(g->devs[i].ops->kind, kind) || strcmp(g->devs[i].id, id))
                continue;
            slot = m->ncpus + LOADED_VM_COUNT + i;
            r = g->devs[i].ops->load(g->devs[i].dev, version, &in, errs);
            if (r == 0 && !mig_in_done(&in))
                r = cella_err(errs, -EINVAL, "", "%s %s: trailing bytes", kind, id);
            /* Loaded devices are left quiesced: machine_resume starts them. */
            m->devices_quiesced = true;
        }
        if (slot == SIZE_MAX)
            return -ENOENT;
    }
    if (r == 0)
        m->mig->loaded[slot] = true;
    return r;
}

int machine_load_finish(struct machine *m, struct cella_errors *errs)
{
    int r = load_table(m);
    if (r < 0)
        return r;
    const bool *done = m->mig->loaded;
    static const char *const vm_kinds[] = {"irqchip", "pit", "clock"};
    for (unsigned i = 0; i < m->ncpus; i++) {
        if (!done[i])
            r = cella_err(errs, -EINVAL, "", "no state came for vCPU %u", i);
    }
    for (unsigned i = 0; i < LOADED_VM_COUNT; i++) {
        if (!done[m->ncpus + i])
            r = cella_err(errs, -EINVAL, "", "no %s state came", vm_kinds[i]);
    }
    for (size_t i = 0; i < m->mig->ndevs; i++) {
        if (!done[m->ncpus + LOADED_VM_COUNT + i])
            r = cella_err(errs, -EINVAL, "", "no state came for %s %s", m->mig->devs[i].ops->kind,
                          m->mig->devs[i].id);
    }
    if (r < 0)
        return r;
    machine_devices_remap(m);
    return 0;
}
