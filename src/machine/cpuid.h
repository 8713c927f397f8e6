/* SPDX-License-Identifier: MPL-2.0 */
/*
 * CPUID for the guest: the host's supported set (KVM_GET_SUPPORTED_CPUID)
 * filtered by the spec's explicit entries.
 *
 * - A spec without CPUID gets the host's supported set as its template;
 *   cpuid_template_to_spec() turns it into spec entries, which the caller
 *   writes back into the effective spec so the CPUID travels with the VM.
 * - A spec with CPUID is used as given, except that a feature bit the host
 *   cannot provide is refused (leaf, subleaf, register and bits named),
 *   before any VM exists.
 * - Per-vCPU fields (APIC ids, topology) are filled in by cpuid_for_vcpu()
 *   and are not part of the template.
 */
#ifndef CELLA_MACHINE_CPUID_H
#define CELLA_MACHINE_CPUID_H

#include <linux/kvm.h>

#include "common/error.h"
#include "spec/spec.h"

#define CPUID_MAX_ENTRIES 256

struct cpuid_table {
    size_t count;
    struct kvm_cpuid_entry2 entries[CPUID_MAX_ENTRIES];
};

/* Reads KVM_GET_SUPPORTED_CPUID from an open /dev/kvm fd. */
int cpuid_host_supported(int kvm_fd, struct cpuid_table *out);

/*
 * Builds the VM's CPUID template from the spec (or the host set when the
 * spec has none). Refuses unsupported feature bits with one error each,
 * pointing at /board/cpuid/entries/N. Returns 0 or -EINVAL/-ENOTSUP.
 */
int cpuid_resolve(const struct cpuid_table *host, const struct spec_board *board,
                  struct cpuid_table *out, struct cella_errors *errs);

/* The standard and extended leaves of a template, as spec entries. */
int cpuid_template_to_spec(const struct cpuid_table *t, struct spec_cpuid *out);

/* Copies the template with vCPU `index`'s APIC id and topology of `ncpus`. */
void cpuid_for_vcpu(const struct cpuid_table *t, unsigned index, unsigned ncpus,
                    struct cpuid_table *out);

#endif
