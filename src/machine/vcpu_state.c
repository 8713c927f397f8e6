/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A vCPU's architectural state as a migration payload ("vcpu", version 1).
 *
 * The bytes are KVM's x86 UAPI structures (a stable ABI, little-endian),
 * each length-prefixed and checked for its exact size, in this order:
 *   regs (struct kvm_regs), sregs (struct kvm_sregs2, also when the source
 *   only had KVM_GET_SREGS), xsave (4 KiB or the larger KVM_CAP_XSAVE2
 *   size), xcrs, debugregs, vcpu events, u32 mp_state, lapic
 *   (struct kvm_lapic_state), then u32 n and n (u32 index, u64 value) MSRs.
 * Loading validates what cella can (sizes, flags, MSR indexes against
 * KVM's own list, mp_state) and KVM refuses the rest (reserved CR bits,
 * bad segments, ...), which is reported as -EINVAL.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "common/log.h"
#include "common/mig_buf.h"
#include "machine/machine_int.h"
#include "machine/vcpu.h"

#define MSR_IA32_TSC          0x10u
#define MSR_IA32_TSC_DEADLINE 0x6e0u
#define VCPU_MSRS_MAX         1024u
#define XSAVE_MAX             (1u << 20)

static const uint32_t events_flags_ok = KVM_VCPUEVENT_VALID_NMI_PENDING |
                                        KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                                        KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM;

static struct kvm_msrs *msrs_alloc(size_t n)
{
    struct kvm_msrs *k = calloc(1, sizeof(*k) + n * sizeof(k->entries[0]));
    if (k)
        k->nmsrs = (uint32_t)n;
    return k;
}

/* TSC first (other MSRs may be relative to it), TSC deadline last. */
static int msr_rank(uint32_t index)
{
    return index == MSR_IA32_TSC ? 0 : index == MSR_IA32_TSC_DEADLINE ? 2 : 1;
}

static int msr_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int rx = msr_rank(x), ry = msr_rank(y);
    if (rx != ry)
        return rx - ry;
    return x < y ? -1 : x > y;
}

int vcpu_state_info_init(int kvm_fd, int vm_fd, const struct vcpu *v, struct vcpu_state_info *info)
{
    memset(info, 0, sizeof(*info));
    info->sregs2 = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SREGS2) > 0;
    int xs = ioctl(vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    info->xsave_size = xs > (int)sizeof(struct kvm_xsave) ? (size_t)xs : sizeof(struct kvm_xsave);
    info->xsave2 = xs > (int)sizeof(struct kvm_xsave);
    if (info->xsave_size > XSAVE_MAX)
        return -E2BIG;

    struct kvm_msr_list probe = {.nmsrs = 0};
    if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
        return -errno;
    if (probe.nmsrs == 0 || probe.nmsrs > VCPU_MSRS_MAX)
        return -E2BIG;
    struct kvm_msr_list *list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(uint32_t));
    info->all = calloc(probe.nmsrs, sizeof(uint32_t));
    info->index = calloc(probe.nmsrs, sizeof(uint32_t));
    struct kvm_msrs *one = msrs_alloc(1);
    int r = list && info->all && info->index && one ? 0 : -ENOMEM;
    if (r == 0) {
        list->nmsrs = probe.nmsrs;
        if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0)
            r = -errno;
    }
    for (uint32_t i = 0; r == 0 && i < list->nmsrs; i++) {
        info->all[info->nall++] = list->indices[i];
        /* Only what this vCPU can read: the others depend on CPUID bits it lacks. */
        one->nmsrs = 1;
        one->entries[0] = (struct kvm_msr_entry){.index = list->indices[i]};
        if (ioctl(v->fd, KVM_GET_MSRS, one) == 1)
            info->index[info->n++] = list->indices[i];
    }
    free(list);
    free(one);
    if (r < 0) {
        vcpu_state_info_free(info);
        return r;
    }
    qsort(info->index, info->n, sizeof(uint32_t), msr_cmp);
    return 0;
}

void vcpu_state_info_free(struct vcpu_state_info *info)
{
    free(info->all);
    free(info->index);
    memset(info, 0, sizeof(*info));
}

static void sregs_to_2(const struct kvm_sregs *s, struct kvm_sregs2 *s2)
{
    memset(s2, 0, sizeof(*s2));
    s2->cs = s->cs, s2->ds = s->ds, s2->es = s->es, s2->fs = s->fs;
    s2->gs = s->gs, s2->ss = s->ss, s2->tr = s->tr, s2->ldt = s->ldt;
    s2->gdt = s->gdt, s2->idt = s->idt;
    s2->cr0 = s->cr0, s2->cr2 = s->cr2, s2->cr3 = s->cr3, s2->cr4 = s->cr4, s2->cr8 = s->cr8;
    s2->efer = s->efer;
    s2->apic_base = s->apic_base;
}

/* The pending interrupt is not lost: the vcpu events carry it. */
static void sregs_from_2(const struct kvm_sregs2 *s2, struct kvm_sregs *s)
{
    memset(s, 0, sizeof(*s));
    s->cs = s2->cs, s->ds = s2->ds, s->es = s2->es, s->fs = s2->fs;
    s->gs = s2->gs, s->ss = s2->ss, s->tr = s2->tr, s->ldt = s2->ldt;
    s->gdt = s2->gdt, s->idt = s2->idt;
    s->cr0 = s2->cr0, s->cr2 = s2->cr2, s->cr3 = s2->cr3, s->cr4 = s2->cr4, s->cr8 = s2->cr8;
    s->efer = s2->efer;
    s->apic_base = s2->apic_base;
}

static int get(int fd, unsigned long req, void *p)
{
    return ioctl(fd, req, p) < 0 ? -errno : 0;
}

static int save_msrs(struct vcpu *v, const struct vcpu_state_info *info, struct mig_out *o)
{
    struct kvm_msrs *k = msrs_alloc(info->n);
    if (!k)
        return -ENOMEM;
    for (size_t i = 0; i < info->n; i++)
        k->entries[i].index = info->index[i];
    int n = ioctl(v->fd, KVM_GET_MSRS, k);
    int r = n < 0 ? -errno : (size_t)n != info->n ? -EIO : 0;
    if (r == 0) {
        mig_put_u32(o, (uint32_t)info->n);
        for (size_t i = 0; i < info->n; i++) {
            mig_put_u32(o, k->entries[i].index);
            mig_put_u64(o, k->entries[i].data);
        }
    }
    free(k);
    return r;
}

int vcpu_state_save(struct vcpu *v, const struct vcpu_state_info *info, struct mig_out *o)
{
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_sregs2 sregs2;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs dbg;
    struct kvm_vcpu_events ev;
    struct kvm_mp_state mp;
    struct kvm_lapic_state lapic;
    memset(&xcrs, 0, sizeof(xcrs));
    void *xsave = calloc(1, info->xsave_size);
    if (!xsave)
        return -ENOMEM;
    int r = get(v->fd, KVM_GET_REGS, &regs);
    if (r == 0 && info->sregs2)
        r = get(v->fd, KVM_GET_SREGS2, &sregs2);
    else if (r == 0 && (r = get(v->fd, KVM_GET_SREGS, &sregs)) == 0)
        sregs_to_2(&sregs, &sregs2);
    if (r == 0)
        r = get(v->fd, info->xsave2 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, xsave);
    if (r == 0)
        r = get(v->fd, KVM_GET_XCRS, &xcrs);
    if (r == 0)
        r = get(v->fd, KVM_GET_DEBUGREGS, &dbg);
    if (r == 0)
        r = get(v->fd, KVM_GET_VCPU_EVENTS, &ev);
    if (r == 0)
        r = get(v->fd, KVM_GET_MP_STATE, &mp);
    if (r == 0)
        r = get(v->fd, KVM_GET_LAPIC, &lapic);
    if (r == 0) {
        /* NMI pending and the SIPI vector are only applied when flagged. */
        ev.flags = (ev.flags & events_flags_ok) | KVM_VCPUEVENT_VALID_NMI_PENDING |
                   KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        log_msg(LOG_DEBUG, "vcpu-state",
                "vCPU %u saved: rip %#llx cs %#x/%#llx cr0 %#llx mp %u ev-flags %#x init %u "
                "exc %u/%u irq %u/%u nmi %u/%u",
                v->index, (unsigned long long)regs.rip, sregs2.cs.selector,
                (unsigned long long)sregs2.cs.base, (unsigned long long)sregs2.cr0, mp.mp_state,
                ev.flags, ev.smi.latched_init, ev.exception.injected, ev.exception.nr,
                ev.interrupt.injected, ev.interrupt.nr, ev.nmi.injected, ev.nmi.pending);
        mig_put_blob(o, &regs, sizeof(regs));
        mig_put_blob(o, &sregs2, sizeof(sregs2));
        mig_put_blob(o, xsave, info->xsave_size);
        mig_put_blob(o, &xcrs, sizeof(xcrs));
        mig_put_blob(o, &dbg, sizeof(dbg));
        mig_put_blob(o, &ev, sizeof(ev));
        mig_put_u32(o, mp.mp_state);
        mig_put_blob(o, &lapic, sizeof(lapic));
        r = save_msrs(v, info, o);
    }
    free(xsave);
    return r == 0 && !mig_out_ok(o) ? -ENOMEM : r;
}

/* A blob of exactly `size` bytes into dst. */
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

static bool msr_known(const struct vcpu_state_info *info, uint32_t index)
{
    for (size_t i = 0; i < info->nall; i++) {
        if (info->all[i] == index)
            return true;
    }
    return false;
}

static int load_msrs(struct vcpu *v, const struct vcpu_state_info *info, struct mig_in *in,
                     struct cella_errors *errs)
{
    uint32_t n = mig_get_u32(in);
    if (!mig_in_ok(in) || n > VCPU_MSRS_MAX)
        return cella_err(errs, -EINVAL, "", "vCPU %u: bad MSR count", v->index);
    struct kvm_msrs *k = msrs_alloc(n);
    if (!k)
        return -ENOMEM;
    int r = 0;
    for (uint32_t i = 0; i < n && r == 0; i++) {
        k->entries[i].index = mig_get_u32(in);
        k->entries[i].data = mig_get_u64(in);
        if (mig_in_ok(in) && !msr_known(info, k->entries[i].index))
            r = cella_err(errs, -EINVAL, "", "vCPU %u: MSR %#x is not one KVM migrates", v->index,
                          k->entries[i].index);
    }
    if (r == 0 && !mig_in_done(in))
        r = cella_err(errs, -EINVAL, "", "vCPU %u: truncated or oversized state", v->index);
    if (r == 0) {
        qsort(k->entries, n, sizeof(k->entries[0]), msr_cmp);
        int done = ioctl(v->fd, KVM_SET_MSRS, k);
        if (done < 0)
            r = cella_err(errs, -errno, "", "vCPU %u: KVM_SET_MSRS: %s", v->index, strerror(errno));
        else if ((uint32_t)done < n)
            r = cella_err(errs, -EINVAL, "", "vCPU %u: KVM refused MSR %#x = %#llx", v->index,
                          k->entries[done].index, (unsigned long long)k->entries[done].data);
    }
    free(k);
    return r;
}

struct vcpu_raw {
    struct kvm_regs regs;
    struct kvm_sregs2 sregs2;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs dbg;
    struct kvm_vcpu_events ev;
    struct kvm_mp_state mp;
    struct kvm_lapic_state lapic;
    uint8_t *xsave;
};

static int parse(struct vcpu *v, const struct vcpu_state_info *info, struct mig_in *in,
                 struct vcpu_raw *s, struct cella_errors *errs)
{
    get_exact(in, &s->regs, sizeof(s->regs));
    get_exact(in, &s->sregs2, sizeof(s->sregs2));
    size_t xlen = 0;
    const uint8_t *xs = mig_get_blob(in, XSAVE_MAX, &xlen);
    if (xs && xlen > info->xsave_size)
        return cella_err(errs, -EINVAL, "", "vCPU %u: XSAVE area of %zu bytes; this host has %zu",
                         v->index, xlen, info->xsave_size);
    if (xs && xlen < sizeof(struct kvm_xsave))
        mig_in_fail(in);
    if (xs && mig_in_ok(in)) /* a smaller area from another host: zero-extended */
        memcpy(s->xsave, xs, xlen);
    get_exact(in, &s->xcrs, sizeof(s->xcrs));
    get_exact(in, &s->dbg, sizeof(s->dbg));
    get_exact(in, &s->ev, sizeof(s->ev));
    s->mp.mp_state = mig_get_u32(in);
    get_exact(in, &s->lapic, sizeof(s->lapic));
    if (!mig_in_ok(in))
        return cella_err(errs, -EINVAL, "", "vCPU %u: truncated state", v->index);
    if (s->sregs2.flags & ~(uint64_t)KVM_SREGS2_FLAGS_PDPTRS_VALID)
        return cella_err(errs, -EINVAL, "", "vCPU %u: unknown sregs flags", v->index);
    if (s->ev.flags & ~events_flags_ok)
        return cella_err(errs, -EINVAL, "", "vCPU %u: unknown vcpu event flags %#x", v->index,
                         s->ev.flags);
    if (s->mp.mp_state > KVM_MP_STATE_SIPI_RECEIVED)
        return cella_err(errs, -EINVAL, "", "vCPU %u: unknown mp_state %u", v->index,
                         s->mp.mp_state);
    if (s->xcrs.nr_xcrs > KVM_MAX_XCRS)
        return cella_err(errs, -EINVAL, "", "vCPU %u: %u XCRs", v->index, s->xcrs.nr_xcrs);
    return 0;
}

static int set(struct vcpu *v, unsigned long req, void *p, const char *what,
               struct cella_errors *errs)
{
    if (ioctl(v->fd, req, p) == 0)
        return 0;
    int e = errno;
    return cella_err(errs, e == EINVAL || e == EFAULT ? -EINVAL : -e, "",
                     "vCPU %u: KVM refused the %s: %s", v->index, what, strerror(e));
}

int vcpu_state_load(struct vcpu *v, const struct vcpu_state_info *info, struct mig_in *in,
                    struct cella_errors *errs)
{
    struct vcpu_raw s;
    memset(&s, 0, sizeof(s));
    s.xsave = calloc(1, info->xsave_size);
    if (!s.xsave)
        return -ENOMEM;
    int r = parse(v, info, in, &s, errs);
    /*
     * Order matters: KVM_SET_REGS drops a pending exception (the events
     * restore it); EFER/CR4 (sregs) before the MSRs; the LAPIC before the
     * TSC deadline MSR; mp_state last.
     */
    if (r == 0 && info->sregs2) {
        r = set(v, KVM_SET_SREGS2, &s.sregs2, "segment and control registers", errs);
    } else if (r == 0) {
        struct kvm_sregs sregs;
        sregs_from_2(&s.sregs2, &sregs);
        r = set(v, KVM_SET_SREGS, &sregs, "segment and control registers", errs);
    }
    if (r == 0)
        r = set(v, KVM_SET_REGS, &s.regs, "registers", errs);
    if (r == 0)
        r = set(v, KVM_SET_XCRS, &s.xcrs, "XCRs", errs);
    if (r == 0)
        r = set(v, KVM_SET_XSAVE, s.xsave, "XSAVE area", errs);
    if (r == 0)
        r = set(v, KVM_SET_LAPIC, &s.lapic, "local APIC", errs);
    if (r == 0)
        r = load_msrs(v, info, in, errs);
    if (r == 0)
        r = set(v, KVM_SET_VCPU_EVENTS, &s.ev, "pending events", errs);
    if (r == 0)
        r = set(v, KVM_SET_DEBUGREGS, &s.dbg, "debug registers", errs);
    if (r == 0)
        r = set(v, KVM_SET_MP_STATE, &s.mp, "run state", errs);
    if (r == 0)
        log_msg(LOG_DEBUG, "vcpu-state", "vCPU %u loaded: rip %#llx mp %u", v->index,
                (unsigned long long)s.regs.rip, s.mp.mp_state);
    free(s.xsave);
    return r;
}
