/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Replacement of spec components on a migration target, with Propolis's
 * rules: the key exists in the source's spec, the replacement has the same
 * kind, and only backends and the migration failure injector may change.
 * On top of Propolis's rules cella proves with the guest-visible diff that
 * the amended spec shows the guest nothing new.
 */
#include "spec/validate.h"

#include <errno.h>
#include <string.h>

static bool replaceable(enum spec_kind k)
{
    return spec_kind_is_backend(k) || k == SK_MIGRATION_FAILURE_INJECTOR;
}

static int check_one(const struct instance_spec *src, const struct spec_component *rc,
                     struct cella_errors *errs)
{
    struct jptr root, p;
    jptr_root(&root);
    jptr_key(&p, &root, "replace_components");
    jptr_key(&p, &p, rc->key ? rc->key : "");
    const struct spec_component *orig = rc->key ? spec_find(src, rc->key) : NULL;
    if (!orig)
        return cella_err(errs, -EINVAL, p.buf, "the source spec has no component \"%s\"",
                         rc->key ? rc->key : "");
    if (!replaceable(orig->kind))
        return cella_err(errs, -EINVAL, p.buf,
                         "\"%s\" is a %s device; only backends and the migration failure "
                         "injector can be replaced, never devices or the board",
                         rc->key, spec_kind_name(orig->kind));
    if (orig->kind != rc->kind)
        return cella_err(errs, -EINVAL, p.buf,
                         "\"%s\" is a %s in the source spec; its replacement must be the same "
                         "kind, not %s",
                         rc->key, spec_kind_name(orig->kind), spec_kind_name(rc->kind));
    return 0;
}

static int diff_to_errors(const struct instance_spec *a, const struct instance_spec *b,
                          struct cella_errors *errs)
{
    struct spec_diff d = {0};
    int n = spec_guest_diff(a, b, &d);
    if (n < 0)
        return cella_err(errs, n, "", "cannot compare specs: out of memory");
    for (size_t i = 0; i < d.count; i++)
        cella_err(errs, -EINVAL, d.items[i].pointer,
                  "the replacement changes what the guest sees: %s", d.items[i].text);
    spec_diff_free(&d);
    return n ? -EINVAL : 0;
}

int spec_apply_replacements(const struct instance_spec *src, const struct spec_replacement *r,
                            size_t n, struct instance_spec *out, struct cella_errors *errs)
{
    spec_init(out);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (check_one(src, &r[i].comp, errs) < 0)
            bad = -EINVAL;
        for (size_t k = 0; k < i; k++) {
            if (r[i].comp.key && r[k].comp.key && !strcmp(r[i].comp.key, r[k].comp.key)) {
                struct jptr root, p;
                jptr_root(&root);
                jptr_key(&p, &root, "replace_components");
                jptr_key(&p, &p, r[i].comp.key);
                bad = cella_err(errs, -EINVAL, p.buf, "\"%s\" is replaced twice", r[i].comp.key);
            }
        }
    }
    if (bad)
        return bad;
    int rc = spec_copy(out, src);
    if (rc < 0)
        return cella_err(errs, rc, "", "out of memory copying the spec");
    for (size_t i = 0; i < n; i++) {
        struct spec_component *slot = spec_find_mut(out, r[i].comp.key);
        struct spec_component fresh;
        rc = spec_component_copy(&fresh, &r[i].comp);
        if (rc < 0) {
            spec_free(out);
            return cella_err(errs, rc, "", "out of memory copying a replacement");
        }
        spec_component_free(slot);
        *slot = fresh;
    }
    if (spec_validate(out, errs) < 0 || diff_to_errors(src, out, errs) < 0) {
        spec_free(out);
        return -EINVAL;
    }
    return 0;
}
