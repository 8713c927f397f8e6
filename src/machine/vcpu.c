/* SPDX-License-Identifier: MPL-2.0 */
#include "machine/vcpu.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "machine/machine_int.h"

int vcpu_create(struct machine *m, unsigned index, struct vcpu *v)
{
    memset(v, 0, sizeof(*v));
    v->m = m;
    v->index = index;
    v->fd = ioctl(m->vm_fd, KVM_CREATE_VCPU, (unsigned long)index);
    if (v->fd < 0)
        return -errno;
    int size = ioctl(m->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < (int)sizeof(struct kvm_run)) {
        close(v->fd);
        v->fd = -1;
        return -EIO;
    }
    v->run_size = (size_t)size;
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED) {
        int e = -errno;
        close(v->fd);
        v->fd = -1;
        v->run = NULL;
        return e;
    }
    return 0;
}

void vcpu_destroy(struct vcpu *v)
{
    if (v->run)
        munmap(v->run, v->run_size);
    if (v->fd >= 0)
        close(v->fd);
    v->run = NULL;
    v->fd = -1;
}

int vcpu_set_cpuid(struct vcpu *v, const struct cpuid_table *template, unsigned ncpus)
{
    struct cpuid_table t;
    cpuid_for_vcpu(template, v->index, ncpus, &t);
    struct kvm_cpuid2 *buf = calloc(1, sizeof(*buf) + t.count * sizeof(t.entries[0]));
    if (!buf)
        return -ENOMEM;
    buf->nent = (uint32_t)t.count;
    memcpy(buf->entries, t.entries, t.count * sizeof(t.entries[0]));
    int r = ioctl(v->fd, KVM_SET_CPUID2, buf) < 0 ? -errno : 0;
    free(buf);
    return r;
}

static void flat_segment(struct kvm_segment *s, uint16_t selector, uint8_t type, bool code64)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = selector;
    s->type = type;
    s->present = 1;
    s->s = 1;
    s->g = 1;
    s->l = code64;
    s->db = !code64;
}

int vcpu_setup_linux(struct vcpu *v, const struct boot_entry *e)
{
    struct kvm_sregs sregs;
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        return -errno;
    flat_segment(&sregs.cs, 0x10, 0xb, true);
    flat_segment(&sregs.ds, 0x18, 0x3, false);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.gdt.base = e->gdt_base;
    sregs.gdt.limit = e->gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = e->cr0;
    sregs.cr3 = e->cr3;
    sregs.cr4 = e->cr4;
    sregs.efer = e->efer;
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        return -errno;
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = e->rip;
    regs.rsi = e->rsi;
    regs.rsp = e->rsp;
    regs.rflags = 0x2;
    return ioctl(v->fd, KVM_SET_REGS, &regs) < 0 ? -errno : 0;
}

#define APIC_LVT0        0x350
#define APIC_LVT1        0x360
#define APIC_MODE_EXTINT 0x7
#define APIC_MODE_NMI    0x4

static void set_lvt_mode(struct kvm_lapic_state *l, unsigned reg, uint32_t mode)
{
    uint32_t v;
    memcpy(&v, &l->regs[reg], 4);
    v = (v & ~0x700u) | (mode << 8);
    memcpy(&l->regs[reg], &v, 4);
}

int vcpu_setup_lapic(struct vcpu *v)
{
    struct kvm_lapic_state l;
    if (ioctl(v->fd, KVM_GET_LAPIC, &l) < 0)
        return -errno;
    set_lvt_mode(&l, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&l, APIC_LVT1, APIC_MODE_NMI);
    return ioctl(v->fd, KVM_SET_LAPIC, &l) < 0 ? -errno : 0;
}

int vcpu_setup_fpu_msrs(struct vcpu *v)
{
    struct kvm_fpu fpu;
    memset(&fpu, 0, sizeof(fpu));
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
        return -errno;
    struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + sizeof(struct kvm_msr_entry));
    if (!msrs)
        return -ENOMEM;
    msrs->nmsrs = 1;
    msrs->entries[0].index = 0x1a0; /* IA32_MISC_ENABLE: fast strings */
    msrs->entries[0].data = 1;
    int r = ioctl(v->fd, KVM_SET_MSRS, msrs) < 0 ? -errno : 0;
    free(msrs);
    return r;
}

static void handle_io(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    unsigned size = run->io.size;
    for (uint32_t i = 0; i < run->io.count; i++, data += size) {
        if (run->io.direction == KVM_EXIT_IO_OUT) {
            uint64_t val = 0;
            memcpy(&val, data, size);
            bus_write(&v->m->pio, run->io.port, size, val);
        } else {
            uint64_t val = bus_read(&v->m->pio, run->io.port, size);
            memcpy(data, &val, size);
        }
    }
}

static void handle_mmio(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    unsigned len = run->mmio.len;
    if (len == 0 || len > 8)
        return;
    if (run->mmio.is_write) {
        uint64_t val = 0;
        memcpy(&val, run->mmio.data, len);
        bus_write(&v->m->mmio, run->mmio.phys_addr, len, val);
    } else {
        uint64_t val = bus_read(&v->m->mmio, run->mmio.phys_addr, len);
        memcpy(run->mmio.data, &val, len);
    }
}

/* Returns false when the loop must end. */
static bool handle_exit(struct vcpu *v)
{
    struct kvm_run *run = v->run;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        handle_io(v);
        return true;
    case KVM_EXIT_MMIO:
        handle_mmio(v);
        return true;
    case KVM_EXIT_SHUTDOWN:
        /* Triple fault: the PC resets. */
        machine_event(v->m, MACHINE_EV_RESET, "triple fault");
        return false;
    case KVM_EXIT_HLT:
        return true;
    case KVM_EXIT_SYSTEM_EVENT:
        machine_event(v->m,
                      run->system_event.type == KVM_SYSTEM_EVENT_RESET ? MACHINE_EV_RESET
                                                                       : MACHINE_EV_POWEROFF,
                      "system event");
        return false;
    case KVM_EXIT_FAIL_ENTRY:
        machine_eventf(v->m, MACHINE_EV_FAILURE, "vCPU %u: entry failed, reason %#llx", v->index,
                       (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
        return false;
    case KVM_EXIT_INTERNAL_ERROR: {
        /* KVM's data words (for an emulation failure: the instruction, exit info). */
        char data[160] = "";
        size_t used = 0;
        for (uint32_t i = 0; i < run->internal.ndata && i < 8 && used < sizeof(data); i++) {
            int n = snprintf(data + used, sizeof(data) - used, " %#llx",
                             (unsigned long long)run->internal.data[i]);
            used += n > 0 ? (size_t)n : 0;
        }
        struct kvm_regs regs;
        unsigned long long rip = ioctl(v->fd, KVM_GET_REGS, &regs) == 0 ? regs.rip : 0;
        machine_eventf(v->m, MACHINE_EV_FAILURE,
                       "vCPU %u: KVM internal error, suberror %u, rip %#llx, data:%s", v->index,
                       run->internal.suberror, rip, data[0] ? data : " none");
        return false;
    }
    default:
        machine_eventf(v->m, MACHINE_EV_FAILURE, "vCPU %u: unexpected exit %u", v->index,
                       run->exit_reason);
        return false;
    }
}

/*
 * Parks the thread while the machine is pausing. First the exit in
 * progress is completed: KVM finishes an I/O or MMIO read only on the
 * next KVM_RUN, and that state is invisible to KVM_GET_* (so it would be
 * lost by a migration). KVM_RUN with immediate_exit set completes it and
 * returns EINTR without running the guest. Returns false when the thread
 * must end.
 */
static bool vcpu_park(struct vcpu *v)
{
    for (;;) {
        __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
        int r = ioctl(v->fd, KVM_RUN, 0);
        int e = errno;
        __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (r < 0 && (e == EINTR || e == EAGAIN))
            break;
        if (r < 0) {
            machine_eventf(v->m, MACHINE_EV_FAILURE, "vCPU %u: KVM_RUN failed: %s", v->index,
                           strerror(e));
            return false;
        }
        if (!handle_exit(v)) /* completing it needed another exit (string I/O) */
            return false;
    }
    machine_vcpu_parked_wait(v->m);
    return true;
}

static uint32_t lapic_reg(const struct kvm_lapic_state *l, unsigned off)
{
    uint32_t v;
    memcpy(&v, l->regs + off, 4);
    return v;
}

/*
 * Logs this vCPU's state (machine_debug_dump), on its own thread between
 * two KVM_RUNs, so no ioctl waits for the vCPU: where it is, whether it
 * halted with interrupts on, and its local APIC's timer, pending (IRR) and
 * in-service (ISR) vectors.
 */
static void vcpu_dump(struct vcpu *v)
{
    struct kvm_regs r;
    struct kvm_mp_state mp = {0};
    struct kvm_lapic_state l;
    struct kvm_vcpu_events ev = {0};
    if (ioctl(v->fd, KVM_GET_REGS, &r) < 0 || ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0 ||
        ioctl(v->fd, KVM_GET_LAPIC, &l) < 0 || ioctl(v->fd, KVM_GET_VCPU_EVENTS, &ev) < 0) {
        log_msg(LOG_WARN, "debug", "vCPU %u: cannot read its state: %s", v->index, strerror(errno));
        return;
    }
    char irr[80] = "", isr[80] = "";
    size_t ni = 0, ns = 0;
    for (unsigned vec = 16; vec < 256; vec++) {
        unsigned off = (vec / 32) * 16;
        if (lapic_reg(&l, 0x200 + off) >> (vec % 32) & 1 && ni < sizeof(irr) - 6)
            ni += (size_t)snprintf(irr + ni, sizeof(irr) - ni, " %u", vec);
        if (lapic_reg(&l, 0x100 + off) >> (vec % 32) & 1 && ns < sizeof(isr) - 6)
            ns += (size_t)snprintf(isr + ns, sizeof(isr) - ns, " %u", vec);
    }
    char inj[32] = "none";
    if (ev.interrupt.injected)
        snprintf(inj, sizeof(inj), "vector %u", ev.interrupt.nr);
    /* The TSC-deadline timer (LVTT mode 2): armed, and how far ahead of the TSC. */
    char dl[64] = "unknown";
    union {
        struct kvm_msrs h;
        uint8_t bytes[sizeof(struct kvm_msrs) + 2 * sizeof(struct kvm_msr_entry)];
    } msrs = {.h.nmsrs = 2};
    msrs.h.entries[0].index = 0x10;  /* IA32_TSC */
    msrs.h.entries[1].index = 0x6e0; /* IA32_TSC_DEADLINE */
    if (ioctl(v->fd, KVM_GET_MSRS, &msrs) == 2)
        snprintf(dl, sizeof(dl), msrs.h.entries[1].data ? "in %lld TSC ticks" : "off",
                 (long long)(msrs.h.entries[1].data - msrs.h.entries[0].data));
    log_msg(LOG_WARN, "debug",
            "vCPU %u: rip %#llx rflags %#llx (IF %s) mp_state %u; injected interrupt %s, nmi "
            "pending %u; LAPIC TPR %#x LVTT %#x TMICT %#x TMCCT %#x TDCR %#x, TSC deadline %s; "
            "IRR%s; ISR%s",
            v->index, (unsigned long long)r.rip, (unsigned long long)r.rflags,
            r.rflags & 0x200 ? "on" : "off", mp.mp_state, inj, ev.nmi.pending, lapic_reg(&l, 0x80),
            lapic_reg(&l, 0x320), lapic_reg(&l, 0x380), lapic_reg(&l, 0x390), lapic_reg(&l, 0x3e0),
            dl, ni ? irr : " none", ns ? isr : " none");
}

/*
 * Sleeps this vCPU's share of a throttle period (machine_throttle), in
 * steps of at most 10 ms so that a pause, a stop or the end of the
 * throttle is seen at once.
 */
static void vcpu_throttle_sleep(struct vcpu *v)
{
    struct machine *m = v->m;
    unsigned pct = atomic_load(&m->throttle_pct);
    if (!pct || pct > 99)
        return;
    uint64_t left = MACHINE_THROTTLE_SLICE_NS * pct / (100 - pct);
    while (left && atomic_load(&m->throttle_pct) && !atomic_load(&m->pausing) &&
           !atomic_load(&m->stopping)) {
        uint64_t ns = left < 10000000u ? left : 10000000u;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
        nanosleep(&ts, NULL); /* a kick (EINTR) only ends this step early */
        left -= ns;
    }
}

void *vcpu_thread(void *arg)
{
    struct vcpu *v = arg;
    struct machine *m = v->m;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, MACHINE_KICK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    while (!atomic_load(&m->stopping)) {
        if (atomic_load(&m->pausing)) {
            if (!vcpu_park(v))
                break;
            continue;
        }
        if (atomic_exchange(&v->dump_due, false))
            vcpu_dump(v);
        if (atomic_exchange(&v->throttle_due, false)) {
            vcpu_throttle_sleep(v);
            continue;
        }
        if (ioctl(v->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                /* seq_cst: cleared before `stopping`/`pausing` are read again, so a kick
                 * that lands after that read still ends the next KVM_RUN. */
                __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
                continue;
            }
            machine_eventf(m, MACHINE_EV_FAILURE, "vCPU %u: KVM_RUN failed: %s", v->index,
                           strerror(errno));
            break;
        }
        if (!handle_exit(v))
            break;
    }
    machine_vcpu_exited(m);
    return NULL;
}
