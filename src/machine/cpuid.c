/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/cpuid.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

int cpuid_host_supported(int kvm_fd, struct cpuid_table *out)
{
    struct kvm_cpuid2 *buf =
        calloc(1, sizeof(*buf) + CPUID_MAX_ENTRIES * sizeof(struct kvm_cpuid_entry2));
    if (!buf)
        return -ENOMEM;
    buf->nent = CPUID_MAX_ENTRIES;
    if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, buf) < 0) {
        int e = -errno;
        free(buf);
        return e;
    }
    out->count = buf->nent;
    memcpy(out->entries, buf->entries, out->count * sizeof(buf->entries[0]));
    free(buf);
    /*
     * KVM leaves two leaf-1 bits to userspace: "running under a hypervisor",
     * which the guest needs to look at the hypervisor leaves (kvmclock, PV
     * EOI), and the TSC-deadline timer, which KVM emulates whenever it has
     * KVM_CAP_TSC_DEADLINE_TIMER but does not report (QEMU's `-cpu host`
     * offers it the same way); Linux guests prefer it to the APIC timer.
     */
    bool deadline = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    for (size_t i = 0; i < out->count; i++) {
        if (out->entries[i].function != 1)
            continue;
        out->entries[i].ecx |= 1u << 31;
        if (deadline)
            out->entries[i].ecx |= 1u << 24;
    }
    return 0;
}

static const struct kvm_cpuid_entry2 *find(const struct cpuid_table *t, uint32_t leaf,
                                           uint32_t index)
{
    for (size_t i = 0; i < t->count; i++) {
        const struct kvm_cpuid_entry2 *e = &t->entries[i];
        if (e->function != leaf)
            continue;
        if (!(e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e->index == index)
            return e;
    }
    return NULL;
}

/*
 * Registers that are feature bitmaps: a spec may clear bits there but not
 * set bits the host lacks. Other registers (vendor, brand, cache and
 * topology descriptions) are taken as given.
 */
struct feature_reg {
    uint32_t leaf, subleaf;
    int reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
};

static const struct feature_reg feature_regs[] = {
    {0x1, 0, 2},        {0x1, 0, 3},        {0x7, 0, 1},        {0x7, 0, 2},
    {0x7, 0, 3},        {0x7, 1, 0},        {0xd, 1, 0},        {0x80000001, 0, 2},
    {0x80000001, 0, 3}, {0x80000007, 0, 3}, {0x80000008, 0, 1},
};

static uint32_t reg_of(const struct kvm_cpuid_entry2 *e, int reg)
{
    switch (reg) {
    case 0:
        return e->eax;
    case 1:
        return e->ebx;
    case 2:
        return e->ecx;
    default:
        return e->edx;
    }
}

static int check_entry(const struct cpuid_table *host, const struct cpuid_entry *s, size_t i,
                       struct cella_errors *errs)
{
    static const char *const regs[] = {"eax", "ebx", "ecx", "edx"};
    uint32_t vals[4] = {s->eax, s->ebx, s->ecx, s->edx};
    int r = 0;
    for (size_t k = 0; k < sizeof(feature_regs) / sizeof(feature_regs[0]); k++) {
        const struct feature_reg *f = &feature_regs[k];
        if (f->leaf != s->leaf || (s->has_subleaf ? s->subleaf : 0) != f->subleaf)
            continue;
        const struct kvm_cpuid_entry2 *h = find(host, f->leaf, f->subleaf);
        uint32_t extra = vals[f->reg] & ~(h ? reg_of(h, f->reg) : 0);
        if (!extra)
            continue;
        char ptr[96];
        snprintf(ptr, sizeof(ptr), "/board/cpuid/entries/%zu/%s", i, regs[f->reg]);
        r = cella_err(errs, -ENOTSUP, ptr,
                      "this host cannot provide CPUID leaf 0x%x subleaf %u %s bits 0x%08x", f->leaf,
                      f->subleaf, regs[f->reg], extra);
    }
    return r;
}

int cpuid_resolve(const struct cpuid_table *host, const struct spec_board *board,
                  struct cpuid_table *out, struct cella_errors *errs)
{
    if (!board->has_cpuid) {
        *out = *host;
        return 0;
    }
    if (board->cpuid.count > CPUID_MAX_ENTRIES)
        return cella_err(errs, -EINVAL, "/board/cpuid/entries", "too many CPUID entries");
    int r = 0;
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < board->cpuid.count; i++) {
        const struct cpuid_entry *s = &board->cpuid.entries[i];
        if (check_entry(host, s, i, errs) < 0)
            r = -ENOTSUP;
        struct kvm_cpuid_entry2 *e = &out->entries[out->count++];
        e->function = s->leaf;
        e->index = s->has_subleaf ? s->subleaf : 0;
        e->flags = s->has_subleaf ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
        e->eax = s->eax;
        e->ebx = s->ebx;
        e->ecx = s->ecx;
        e->edx = s->edx;
    }
    /* The hypervisor leaves are the host's own paravirtual interface. */
    for (size_t i = 0; i < host->count && out->count < CPUID_MAX_ENTRIES; i++) {
        uint32_t f = host->entries[i].function;
        if (f >= 0x40000000u && f <= 0x4fffffffu)
            out->entries[out->count++] = host->entries[i];
    }
    return r;
}

static bool in_spec_range(uint32_t leaf)
{
    return leaf <= 0xffff || (leaf >= 0x80000000u && leaf <= 0x8000ffffu);
}

int cpuid_template_to_spec(const struct cpuid_table *t, struct spec_cpuid *out)
{
    memset(out, 0, sizeof(*out));
    out->entries = calloc(t->count ? t->count : 1, sizeof(*out->entries));
    if (!out->entries)
        return -ENOMEM;
    out->vendor = CPUID_VENDOR_INTEL;
    for (size_t i = 0; i < t->count; i++) {
        const struct kvm_cpuid_entry2 *e = &t->entries[i];
        if (!in_spec_range(e->function))
            continue;
        if (e->function == 0 && e->ebx == 0x68747541) /* "Auth" of AuthenticAMD */
            out->vendor = CPUID_VENDOR_AMD;
        struct cpuid_entry *s = &out->entries[out->count++];
        s->leaf = e->function;
        s->has_subleaf = e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        s->subleaf = s->has_subleaf ? e->index : 0;
        s->eax = e->eax;
        s->ebx = e->ebx;
        s->ecx = e->ecx;
        s->edx = e->edx;
    }
    return 0;
}

void cpuid_for_vcpu(const struct cpuid_table *t, unsigned index, unsigned ncpus,
                    struct cpuid_table *out)
{
    *out = *t;
    /* One core per package-level thread: vCPU i is APIC id i, all in one socket. */
    unsigned shift = 0;
    while ((1u << shift) < ncpus)
        shift++;
    for (size_t i = 0; i < out->count; i++) {
        struct kvm_cpuid_entry2 *e = &out->entries[i];
        switch (e->function) {
        case 0x1:
            e->ebx = (e->ebx & 0x0000ffffu) | ((ncpus & 0xffu) << 16) | (index << 24);
            e->edx |= 1u << 28; /* HTT: the logical count above is valid */
            break;
        case 0xb:
        case 0x1f:
            /* Level 0: SMT (1 thread per core); level 1: core, all vCPUs. */
            if (e->index == 0) {
                e->eax = 0;
                e->ebx = 1;
                e->ecx = (1u << 8) | 0;
            } else if (e->index == 1) {
                e->eax = shift;
                e->ebx = ncpus;
                e->ecx = (2u << 8) | 1;
            } else {
                e->eax = e->ebx = 0;
                e->ecx = e->index;
            }
            e->edx = index;
            break;
        case 0x4:
            /* Cores per package - 1 in bits 31:26; threads sharing a cache left as is. */
            e->eax = (e->eax & 0x03ffffffu) | (((ncpus - 1) & 0x3fu) << 26);
            break;
        case 0x80000008:
            /* AMD: NC = cores - 1, ApicIdSize = bits needed for the APIC ids. */
            e->ecx = (e->ecx & ~0xf0ffu) | ((ncpus - 1) & 0xffu) | (shift << 12);
            break;
        case 0x8000001e:
            e->eax = index;
            e->ebx = (e->ebx & ~0xffu) | (index & 0xffu);
            break;
        default:
            break;
        }
    }
}
