/* SPDX-License-Identifier: MPL-2.0 */
/*
 * vCPUs: one KVM vCPU fd and one thread each, running KVM_RUN and sending
 * port I/O and MMIO exits to the machine's buses.
 *
 * Threading: vcpu_create/vcpu_setup_* run on the creating thread before
 * the vCPU thread starts; the run loop owns the vCPU afterwards. Stopping is
 * cooperative: machine_kick() sets immediate_exit and signals the thread.
 */
#ifndef CELLA_MACHINE_VCPU_H
#define CELLA_MACHINE_VCPU_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>

#include "machine/cpuid.h"
#include "machine/x86_boot.h"

struct machine;

struct vcpu {
    struct machine *m;
    unsigned index;
    int fd;
    struct kvm_run *run;
    size_t run_size;
    pthread_t thread;
    bool thread_started;
};

int vcpu_create(struct machine *m, unsigned index, struct vcpu *v);
void vcpu_destroy(struct vcpu *v);
int vcpu_set_cpuid(struct vcpu *v, const struct cpuid_table *template, unsigned ncpus);
/* The boot processor for direct Linux boot: 64-bit mode at the kernel entry. */
int vcpu_setup_linux(struct vcpu *v, const struct boot_entry *e);
/* Local APIC LINT0 = ExtINT, LINT1 = NMI, as PC firmware leaves them. */
int vcpu_setup_lapic(struct vcpu *v);
/* Common MSR and FPU state at reset. */
int vcpu_setup_fpu_msrs(struct vcpu *v);
/* Thread body; arg is the struct vcpu. */
void *vcpu_thread(void *arg);

#endif
