/* SPDX-License-Identifier: MPL-2.0 */
/* Private to src/machine: the machine's parts. */
#ifndef CELLA_MACHINE_MACHINE_INT_H
#define CELLA_MACHINE_MACHINE_INT_H

#include <signal.h>
#include <stdatomic.h>

#include "devices/io.h"
#include "machine/bus.h"
#include "machine/cpuid.h"
#include "machine/guest_mem.h"
#include "machine/machine.h"
#include "machine/vcpu.h"

/* Signal that interrupts KVM_RUN so a vCPU thread notices a stop request. */
#define MACHINE_KICK_SIGNAL SIGUSR1

struct machine_devices; /* machine_devices.c */

struct machine {
    int kvm_fd, vm_fd;
    struct guest_mem mem;
    unsigned ncpus;
    struct vcpu *vcpus;
    struct bus pio, mmio;
    struct irq_sink irq;
    struct cpuid_table cpuid; /* the template; vCPUs add their APIC ids */
    struct machine_callbacks cb;
    atomic_bool stopping;
    atomic_bool event_sent; /* only the first terminal event is reported */
    bool started;
    struct machine_devices *dev;
    struct backend_set *backends; /* not owned */
};

/* Reports an event to the owner; terminal events also stop the vCPUs. */
void machine_event(struct machine *m, enum machine_event ev, const char *detail);
void machine_eventf(struct machine *m, enum machine_event ev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Asks every vCPU thread to leave KVM_RUN. Any thread. */
void machine_kick(struct machine *m);

/* machine_devices.c: the platform devices and the boot source. */
int machine_devices_create(struct machine *m, const struct instance_spec *spec,
                           const struct machine_host *host, struct cella_errors *errs);
void machine_devices_destroy(struct machine *m);
size_t machine_devices_serial_input(struct machine *m, unsigned com, const uint8_t *buf,
                                    size_t len);

#endif
