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
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
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
    atomic_bool throttle_due; /* the throttle thread asks this vCPU to sleep its share */
    atomic_bool dump_due;     /* machine_debug_dump asks this vCPU to log its state */
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
/* Thread body; arg is the struct vcpu. Parks while the machine pauses. */
void *vcpu_thread(void *arg);

/* ---- state for live migration (vcpu_state.c) ---- */

struct mig_out;
struct mig_in;

/* What this host's KVM offers for vCPU state; one per machine. */
struct vcpu_state_info {
    bool sregs2;       /* KVM_GET/SET_SREGS2 */
    bool xsave2;       /* KVM_GET_XSAVE2 (an area larger than 4 KiB) */
    size_t xsave_size; /* bytes of the XSAVE area */
    uint32_t *all;     /* KVM_GET_MSR_INDEX_LIST: what a payload may set */
    size_t nall;
    uint32_t *index; /* the subset vCPU `v` can read: what is saved */
    size_t n;
};

/* Probes KVM (and vCPU v for readable MSRs). 0 or -errno. */
int vcpu_state_info_init(int kvm_fd, int vm_fd, const struct vcpu *v, struct vcpu_state_info *info);
void vcpu_state_info_free(struct vcpu_state_info *info);
/* Writes the "vcpu" payload (version 1) of a vCPU outside KVM_RUN. */
int vcpu_state_save(struct vcpu *v, const struct vcpu_state_info *info, struct mig_out *o);
/* Validates and loads it (untrusted input; -EINVAL with a reason in errs). */
int vcpu_state_load(struct vcpu *v, const struct vcpu_state_info *info, struct mig_in *in,
                    struct cella_errors *errs);

#endif
