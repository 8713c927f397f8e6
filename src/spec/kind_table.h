/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Private to src/spec: the field tables that describe every component
 * kind. The codec, copy/equality/free and the guest-visible diff all walk
 * them, so adding a field to a kind is one row here plus one struct member
 * in spec.h.
 */
#ifndef CELLA_SPEC_KIND_TABLE_H
#define CELLA_SPEC_KIND_TABLE_H

#include "spec/spec.h"

enum field_type {
    FT_U8,
    FT_U32,
    FT_U64,
    FT_BOOL,
    FT_STR,        /* char *, up to SPEC_MAX_STRING bytes */
    FT_BASE64,     /* char *, up to SPEC_MAX_BLOB_BASE64 bytes */
    FT_KEY,        /* char *, a component key */
    FT_UUID,       /* char *, canonical 8-4-4-4-12 hex form */
    FT_PCI,        /* struct pci_path */
    FT_SERIAL20,   /* uint8_t[20] as a JSON array of 20 integers */
    FT_COM,        /* uint8_t 1..4 as "com1".."com4" */
    FT_BOOT_ORDER, /* struct boot_order as [{"id": key}, ...] */
    FT_OPT_U64,    /* struct opt_u64, null/absent when not present */
    FT_OPT_MAC,    /* struct opt_mac as "aa:bb:cc:dd:ee:ff", absent when not present */
};

enum field_flags {
    /* May be absent from a body; then takes `dflt` (or `legacy` in older specs). */
    F_OPTIONAL = 1u << 0,
    /* A guest could observe a change of this field. */
    F_GUEST = 1u << 1,
    /*
     * cella's addition to Propolis's shape: the API encoding leaves it out
     * while it holds its default, so Propolis clients see their schema.
     */
    F_EXT = 1u << 2,
};

struct field_desc {
    const char *name;
    enum field_type type;
    size_t offset; /* within the kind's struct in the component union */
    unsigned flags;
    unsigned since;    /* spec version that introduced the field */
    uint64_t dflt;     /* value when absent from a spec of version >= since */
    uint64_t legacy;   /* value implied by a spec older than `since` */
    uint64_t min, max; /* integer range (max 0: the type's own maximum) */
};

enum kind_class {
    KC_DISK = 1u << 0,
    KC_STORAGE = 1u << 1,
    KC_NETWORK = 1u << 2,
    KC_BACKEND = 1u << 3,
    KC_NIC = 1u << 4,
};

struct kind_desc {
    const char *name;         /* JSON "type" tag */
    const char *replace_name; /* ReplacementComponent tag, or NULL if not replaceable */
    unsigned class_bits;      /* KC_* */
    unsigned since;           /* spec version that introduced the kind */
    const char *unsupported;  /* reason this build cannot provide it, or NULL */
    const struct field_desc *fields;
    size_t nfields;
};

extern const struct kind_desc spec_kinds[SK__COUNT];

static inline void *field_ptr(struct spec_component *c, const struct field_desc *f)
{
    return (char *)&c->u + f->offset;
}

static inline const void *field_cptr(const struct spec_component *c, const struct field_desc *f)
{
    return (const char *)&c->u + f->offset;
}

/* The largest value a field's integer type can hold. */
uint64_t field_type_max(const struct field_desc *f);

/* Equality of one field of two components of the same kind. */
bool spec_field_equal(const struct spec_component *a, const struct spec_component *b,
                      const struct field_desc *f);

#endif
