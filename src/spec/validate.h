/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Cross-field rules of the instance spec, the host-support check, the
 * replacement rules used by migration targets, and the guest-visible diff.
 */
#ifndef CELLA_SPEC_VALIDATE_H
#define CELLA_SPEC_VALIDATE_H

#include "spec/spec.h"

/* Largest guest memory a spec may ask for (the host check may refuse less). */
#define SPEC_MAX_MEMORY_MB (1024u * 1024u) /* 1 TiB */

/*
 * Checks every rule of the contract (docs/spec.md lists them) and records
 * every violation with the pointer of the offending field. Returns 0 when
 * the spec is valid, else -EINVAL. Does not look at the host.
 */
int spec_validate(const struct instance_spec *s, struct cella_errors *errs);

/*
 * Records a problem for every component this build of cella cannot provide
 * (Crucible, DLPI, SoftNPU, p9fs, vsock), saying why and what to use instead.
 * Returns 0 or -ENOTSUP.
 */
int spec_check_host_support(const struct instance_spec *s, struct cella_errors *errs);

/* One entry of a replace_components map: `comp.key` is the map key. */
struct spec_replacement {
    struct spec_component comp;
};

/*
 * Applies replacements to a copy of `src` with Propolis's rules: each key
 * exists in src, names a component of the same kind, and that kind is a
 * backend or the migration failure injector. On success *out is the
 * amended spec (caller frees) and 0 is returned; otherwise every problem is
 * recorded at /replace_components/<key> and -EINVAL returned (*out empty).
 * The amended spec is validated too.
 */
int spec_apply_replacements(const struct instance_spec *src, const struct spec_replacement *r,
                            size_t n, struct instance_spec *out, struct cella_errors *errs);

/* One guest-visible difference between two specs. */
struct spec_difference {
    char pointer[CELLA_ERR_POINTER_MAX]; /* where, in either spec */
    char text[CELLA_ERR_MESSAGE_MAX];    /* what differs, with both values */
};

struct spec_diff {
    struct spec_difference *items;
    size_t count;
};

/*
 * Lists every difference between a and b that a guest could see: board,
 * CPUID, SMBIOS, the set of devices and their kinds and guest-visible
 * fields (PCI paths, serial numbers, MACs, ...), and the guest-visible
 * attributes of the backends behind disks (read-only, block size).
 * Backend identities (paths, URIs, tap names) and keys of backends are
 * ignored. Returns the number of differences (>= 0) or -ENOMEM.
 */
int spec_guest_diff(const struct instance_spec *a, const struct instance_spec *b,
                    struct spec_diff *out);
void spec_diff_free(struct spec_diff *d);

#endif
