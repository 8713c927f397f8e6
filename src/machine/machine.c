/* SPDX-License-Identifier: MPL-2.0 */
/* KVM VM lifecycle: fds, RAM slots, in-kernel irqchip and PIT, vCPU threads. */
#include "machine/machine.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "machine/machine_int.h"
#include "machine/machine_mig.h"

/* Where KVM keeps its real-mode TSS and identity map (as QEMU: below the IOAPIC). */
#define KVM_IDENTITY_MAP_ADDR 0xfeffc000ull
#define KVM_TSS_ADDR          0xfeffd000ull

const char *machine_event_name(enum machine_event ev)
{
    static const char *const names[] = {"poweroff", "reset", "panic", "failure"};
    return (unsigned)ev < 4 ? names[ev] : "unknown";
}

void machine_kick(struct machine *m)
{
    for (unsigned i = 0; i < m->ncpus; i++) {
        struct vcpu *v = &m->vcpus[i];
        if (v->run)
            __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
        if (v->thread_started)
            pthread_kill(v->thread, MACHINE_KICK_SIGNAL);
    }
}

void machine_event(struct machine *m, enum machine_event ev, const char *detail)
{
    bool terminal = ev != MACHINE_EV_PANIC;
    if (terminal) {
        if (atomic_exchange(&m->event_sent, true))
            return;
        atomic_store(&m->stopping, true);
        machine_kick(m);
    }
    log_msg(terminal && ev == MACHINE_EV_FAILURE ? LOG_ERROR : LOG_INFO, "machine", "%s: %s",
            machine_event_name(ev), detail ? detail : "");
    if (m->cb.event)
        m->cb.event(m->cb.ctx, ev, detail);
}

void machine_eventf(struct machine *m, enum machine_event ev, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    machine_event(m, ev, buf);
}

static void kvm_set_irq(void *ctx, uint32_t gsi, bool level)
{
    struct machine *m = ctx;
    struct kvm_irq_level irq = {.irq = gsi, .level = level};
    if (ioctl(m->vm_fd, KVM_IRQ_LINE, &irq) < 0)
        log_msg(LOG_WARN, "machine", "KVM_IRQ_LINE %u: %s", gsi, strerror(errno));
}

static void kvm_msi(void *ctx, uint64_t address, uint32_t data)
{
    struct machine *m = ctx;
    struct kvm_msi msi = {
        .address_lo = (uint32_t)address, .address_hi = (uint32_t)(address >> 32), .data = data};
    if (ioctl(m->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
        log_msg(LOG_WARN, "machine", "KVM_SIGNAL_MSI: %s", strerror(errno));
}

static void on_kick(int sig)
{
    (void)sig;
}

static int open_kvm(struct machine *m, struct cella_errors *errs)
{
    m->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (m->kvm_fd < 0)
        return cella_err(errs, -errno, "", "cannot open /dev/kvm: %s", strerror(errno));
    if (ioctl(m->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
        return cella_err(errs, -ENOTSUP, "", "/dev/kvm speaks an unknown KVM API version");
    static const int caps[] = {KVM_CAP_IRQCHIP, KVM_CAP_PIT2, KVM_CAP_IMMEDIATE_EXIT,
                               KVM_CAP_USER_MEMORY, KVM_CAP_SET_TSS_ADDR};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        if (ioctl(m->kvm_fd, KVM_CHECK_EXTENSION, caps[i]) <= 0)
            return cella_err(errs, -ENOTSUP, "", "KVM lacks capability %d that cella needs",
                             caps[i]);
    }
    m->vm_fd = ioctl(m->kvm_fd, KVM_CREATE_VM, 0);
    if (m->vm_fd < 0)
        return cella_err(errs, -errno, "", "KVM_CREATE_VM: %s", strerror(errno));
    return 0;
}

static int setup_vm(struct machine *m, struct cella_errors *errs)
{
    uint64_t ident = KVM_IDENTITY_MAP_ADDR;
    if (ioctl(m->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0 ||
        ioctl(m->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)KVM_TSS_ADDR) < 0)
        return cella_err(errs, -errno, "", "KVM TSS/identity map: %s", strerror(errno));
    if (ioctl(m->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return cella_err(errs, -errno, "", "KVM_CREATE_IRQCHIP: %s", strerror(errno));
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(m->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return cella_err(errs, -errno, "", "KVM_CREATE_PIT2: %s", strerror(errno));
    for (size_t i = 0; i < m->mem.nregions; i++) {
        const struct guest_mem_region *r = &m->mem.regions[i];
        struct kvm_userspace_memory_region slot = {
            .slot = (uint32_t)i,
            .guest_phys_addr = r->gpa,
            .memory_size = r->size,
            .userspace_addr = (uint64_t)(uintptr_t)r->host,
        };
        if (ioctl(m->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
            return cella_err(errs, -errno, "", "KVM memory slot %zu: %s", i, strerror(errno));
    }
    return 0;
}

static int create_vcpus(struct machine *m, struct cella_errors *errs)
{
    m->vcpus = calloc(m->ncpus, sizeof(*m->vcpus));
    if (!m->vcpus)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    for (unsigned i = 0; i < m->ncpus; i++)
        m->vcpus[i].fd = -1;
    for (unsigned i = 0; i < m->ncpus; i++) {
        struct vcpu *v = &m->vcpus[i];
        int r = vcpu_create(m, i, v);
        if (r == 0)
            r = vcpu_set_cpuid(v, &m->cpuid, m->ncpus);
        if (r == 0)
            r = vcpu_setup_lapic(v);
        if (r == 0)
            r = vcpu_setup_fpu_msrs(v);
        if (r < 0)
            return cella_err(errs, r, "", "vCPU %u: %s", i, strerror(-r));
    }
    return 0;
}

int machine_create(const struct instance_spec *spec, const struct machine_host *host,
                   struct backend_set *backends, const struct machine_callbacks *cb,
                   struct machine **out, struct cella_errors *errs)
{
    *out = NULL;
    struct machine *m = calloc(1, sizeof(*m));
    if (!m)
        return cella_err(errs, -ENOMEM, "", "out of memory");
    m->kvm_fd = m->vm_fd = -1;
    m->mem.pagemap_fd = -1;
    m->ncpus = spec->board.cpus;
    m->cb = *cb;
    m->backends = backends;
    m->irq = (struct irq_sink){.ctx = m, .set_level = kvm_set_irq, .msi = kvm_msi};
    pthread_mutex_init(&m->run_lock, NULL);
    pthread_cond_init(&m->run_cond, NULL);
    pthread_mutex_init(&m->throttle_lock, NULL);
    cella_cond_init_monotonic(&m->throttle_cond);
    bus_init(&m->pio, "pio");
    bus_init(&m->mmio, "mmio");
    struct sigaction sa = {.sa_handler = on_kick};
    sigaction(MACHINE_KICK_SIGNAL, &sa, NULL);

    int r = open_kvm(m, errs);
    struct cpuid_table host_cpuid;
    if (r == 0 && (r = cpuid_host_supported(m->kvm_fd, &host_cpuid)) < 0)
        cella_err(errs, r, "", "KVM_GET_SUPPORTED_CPUID: %s", strerror(-r));
    if (r == 0)
        r = cpuid_resolve(&host_cpuid, &spec->board, &m->cpuid, errs);
    if (r == 0 && (r = guest_mem_init(&m->mem, spec->board.memory_mb << 20)) < 0)
        cella_err(errs, r, "/board/memory_mb", "cannot allocate %llu MiB of guest RAM: %s",
                  (unsigned long long)spec->board.memory_mb, strerror(-r));
    if (r == 0)
        r = setup_vm(m, errs);
    if (r == 0)
        r = create_vcpus(m, errs);
    if (r == 0)
        r = machine_devices_create(m, spec, host, errs);
    if (r < 0) {
        machine_destroy(m);
        return r;
    }
    *out = m;
    return 0;
}

int machine_effective_cpuid(const struct machine *m, struct spec_cpuid *out)
{
    return cpuid_template_to_spec(&m->cpuid, out);
}

int machine_start(struct machine *m)
{
    if (m->started)
        return -EALREADY;
    /* vCPU threads get the kick signal unblocked themselves; others keep it blocked. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, MACHINE_KICK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    int r = 0;
    for (unsigned i = 0; i < m->ncpus && r == 0; i++) {
        struct vcpu *v = &m->vcpus[i];
        r = -pthread_create(&v->thread, NULL, vcpu_thread, v);
        v->thread_started = r == 0;
        m->nthreads += r == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    m->started = true;
    if (r < 0)
        machine_stop(m);
    return r;
}

void machine_stop(struct machine *m)
{
    machine_throttle(m, 0);
    atomic_store(&m->stopping, true);
    machine_kick(m);
    /* Parked vCPUs (machine_pause) wake up, see `stopping` and return. */
    pthread_mutex_lock(&m->run_lock);
    pthread_cond_broadcast(&m->run_cond);
    pthread_mutex_unlock(&m->run_lock);
    for (unsigned i = 0; i < m->ncpus; i++) {
        struct vcpu *v = &m->vcpus[i];
        if (v->thread_started) {
            pthread_join(v->thread, NULL);
            v->thread_started = false;
        }
    }
}

/*
 * The throttle thread: once per period (the run slice plus the sleep),
 * asks every vCPU to sleep its share and kicks it out of KVM_RUN.
 */
static void *throttle_thread(void *arg)
{
    struct machine *m = arg;
    pthread_mutex_lock(&m->throttle_lock);
    for (;;) {
        unsigned pct = atomic_load(&m->throttle_pct);
        if (!pct)
            break;
        struct timespec ts = cella_deadline_ns(MACHINE_THROTTLE_SLICE_NS * 100 / (100 - pct));
        if (pthread_cond_timedwait(&m->throttle_cond, &m->throttle_lock, &ts) != ETIMEDOUT)
            continue; /* changed or ended */
        for (unsigned i = 0; i < m->ncpus; i++)
            atomic_store(&m->vcpus[i].throttle_due, true);
        machine_kick(m);
    }
    pthread_mutex_unlock(&m->throttle_lock);
    return NULL;
}

int machine_throttle(struct machine *m, unsigned pct)
{
    if (pct > 99)
        pct = 99;
    pthread_mutex_lock(&m->throttle_lock);
    atomic_store(&m->throttle_pct, pct);
    pthread_cond_broadcast(&m->throttle_cond);
    bool join = !pct && m->throttle_started;
    int r = 0;
    if (pct && !m->throttle_started && m->vcpus) {
        /* The thread keeps the kick signal blocked, like every non-vCPU thread. */
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, MACHINE_KICK_SIGNAL);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        r = -pthread_create(&m->throttle_thread, NULL, throttle_thread, m);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        m->throttle_started = r == 0;
        if (r < 0)
            atomic_store(&m->throttle_pct, 0);
    }
    pthread_t th = m->throttle_thread;
    if (join)
        m->throttle_started = false;
    pthread_mutex_unlock(&m->throttle_lock);
    if (join)
        pthread_join(th, NULL);
    if (!pct && m->vcpus)
        for (unsigned i = 0; i < m->ncpus; i++)
            atomic_store(&m->vcpus[i].throttle_due, false);
    return r;
}

void machine_destroy(struct machine *m)
{
    if (!m)
        return;
    if (m->vcpus) {
        machine_stop(m);
        for (unsigned i = 0; i < m->ncpus; i++)
            vcpu_destroy(&m->vcpus[i]);
        free(m->vcpus);
    }
    machine_devices_destroy(m);
    machine_mig_free(m);
    if (m->vm_fd >= 0)
        close(m->vm_fd);
    if (m->kvm_fd >= 0)
        close(m->kvm_fd);
    guest_mem_destroy(&m->mem);
    bus_destroy(&m->pio);
    bus_destroy(&m->mmio);
    pthread_cond_destroy(&m->run_cond);
    pthread_mutex_destroy(&m->run_lock);
    pthread_cond_destroy(&m->throttle_cond);
    pthread_mutex_destroy(&m->throttle_lock);
    free(m);
}

void machine_vcpu_parked_wait(struct machine *m)
{
    pthread_mutex_lock(&m->run_lock);
    m->parked++;
    pthread_cond_broadcast(&m->run_cond);
    while (atomic_load(&m->pausing) && !atomic_load(&m->stopping))
        pthread_cond_wait(&m->run_cond, &m->run_lock);
    m->parked--;
    pthread_mutex_unlock(&m->run_lock);
}

void machine_vcpu_exited(struct machine *m)
{
    pthread_mutex_lock(&m->run_lock);
    m->exited++;
    pthread_cond_broadcast(&m->run_cond);
    pthread_mutex_unlock(&m->run_lock);
}

/* Parks every vCPU thread (or sees it gone); owner's thread. */
static void park_vcpus(struct machine *m)
{
    pthread_mutex_lock(&m->run_lock);
    atomic_store(&m->pausing, true);
    pthread_mutex_unlock(&m->run_lock);
    machine_kick(m);
    pthread_mutex_lock(&m->run_lock);
    while (m->parked + m->exited < m->nthreads)
        pthread_cond_wait(&m->run_cond, &m->run_lock);
    pthread_mutex_unlock(&m->run_lock);
}

static void unpark_vcpus(struct machine *m)
{
    pthread_mutex_lock(&m->run_lock);
    atomic_store(&m->pausing, false);
    pthread_cond_broadcast(&m->run_cond);
    pthread_mutex_unlock(&m->run_lock);
}

int machine_pause(struct machine *m)
{
    if (m->paused)
        return 0;
    if (m->started)
        park_vcpus(m);
    if (!m->devices_quiesced) {
        int r = machine_devices_quiesce(m);
        if (r < 0) {
            if (m->started)
                unpark_vcpus(m);
            return r;
        }
        m->devices_quiesced = true;
    }
    m->paused = true;
    return 0;
}

int machine_resume(struct machine *m)
{
    if (m->devices_quiesced) {
        machine_devices_resume(m);
        m->devices_quiesced = false;
    }
    m->paused = false;
    if (!m->started)
        return machine_start(m);
    if (atomic_load(&m->stopping))
        return -ESHUTDOWN;
    unpark_vcpus(m);
    return 0;
}

size_t machine_serial_input(struct machine *m, unsigned com, const uint8_t *buf, size_t len)
{
    return machine_devices_serial_input(m, com, buf, len);
}

void machine_debug_dump(struct machine *m)
{
    log_msg(LOG_WARN, "debug", "machine: %u vCPUs, %s%s%s", m->ncpus,
            m->started ? "started" : "not started", atomic_load(&m->pausing) ? ", pausing" : "",
            atomic_load(&m->stopping) ? ", stopping" : "");
    if (m->dev)
        machine_devices_debug(m);
    /* Each running vCPU logs its own state between two KVM_RUNs (vcpu.c). */
    for (unsigned i = 0; i < m->ncpus && m->vcpus; i++)
        atomic_store(&m->vcpus[i].dump_due, true);
    machine_kick(m);
}

int machine_nmi(struct machine *m)
{
    /*
     * An MSI with NMI delivery mode to each APIC id: unlike KVM_NMI it may
     * be sent from any thread while the vCPUs run.
     */
    for (unsigned i = 0; i < m->ncpus; i++) {
        struct kvm_msi msi = {.address_lo = 0xfee00000u | (i << 12), .data = 4u << 8};
        if (ioctl(m->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
            return -errno;
    }
    return 0;
}

unsigned machine_ncpus(const struct machine *m)
{
    return m->ncpus;
}

uint64_t machine_ram_bytes(const struct machine *m)
{
    return m->mem.size;
}
