/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Private to src/config: the conversion context and the helpers that read
 * typed values out of TOML tables and record problems with their line.
 *
 * Problems are collected as diagnostics (position, TOML key path, sentence)
 * and handed to the caller's error list only at the end, sorted by position,
 * so the report reads top to bottom like the file whatever order the
 * converter looked at things in.
 */
#ifndef CELLA_CONFIG_CONFIG_INT_H
#define CELLA_CONFIG_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/jsonptr.h"
#include "config/config.h"
#include "toml/toml.h"

/* Longest table name shown in a message ("[dev.disk0]"). */
#define CFG_DISPLAY_MAX 192

struct cfg_diag {
    struct toml_pos pos; /* line 0: no position (sorted last) */
    size_t seq;          /* keeps recording order among equal positions */
    int code;
    char pointer[CELLA_ERR_POINTER_MAX];
    char message[CELLA_ERR_MESSAGE_MAX];
};

/* A table being read: the value, how messages name it, its key path. */
struct cfg_table {
    const struct toml_value *v;
    char display[CFG_DISPLAY_MAX];
    struct jptr ptr;
};

/* Where a component came from, to place spec_validate()'s findings. */
struct cfg_origin {
    char *key;
    struct cfg_table table;
};

/* A key some other program's config has that cella refuses, and why. */
struct cfg_refusal {
    const char *key;
    const char *reason;
};

struct cfg {
    const struct config_options *opts;
    struct instance_spec *spec;
    struct cfg_diag *diags;
    size_t ndiags;
    size_t dropped; /* diagnostics over the cap, or lost to ENOMEM */
    bool nomem;
    struct cfg_origin *origins;
    size_t norigins;

    const struct toml_value *root;
    struct cfg_table main;      /* v is NULL when [main] is absent */
    struct cfg_table block_dev; /* the [block_dev] table itself */
    bool *block_dev_used;       /* by index in block_dev.v */
    bool have_uart;
    char *name_out; /* [main] name, handed to the caller */
    /* Selected CPUID profile name (from [main]) and its key's value. */
    const char *cpuid_profile;
    const struct toml_value *cpuid_profile_v;
    /* TOML position of each board CPUID entry, in spec order. */
    struct toml_pos *cpuid_pos;
};

/* ---- diagnostics ---- */

/* Records a problem at pos with pointer ptr (NULL for ""). */
void cfg_diag(struct cfg *c, struct toml_pos pos, const struct jptr *ptr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records that memory ran out (reported once). */
void cfg_nomem(struct cfg *c);
/* Sorts the diagnostics and appends them to errs as "line L, column C: ...". */
void cfg_emit(struct cfg *c, struct cella_errors *errs);
/* Whether any problem was recorded. */
static inline bool cfg_failed(const struct cfg *c)
{
    return c->ndiags || c->dropped || c->nomem;
}

/*
 * Writes s (len bytes) as a double-quoted string for a message, escaping
 * quotes, backslashes and control bytes, truncated with "..." to fit cap.
 */
void cfg_quote(const char *s, size_t len, char *out, size_t cap);

/* "an integer", "a string", ... for messages. */
const char *cfg_type_phrase(enum toml_type t);

/* The allowed name closest to `got` if it is a likely typo, else NULL. */
const char *cfg_suggest(const char *got, const char *const *allowed, size_t n);

/* ---- tables ---- */

/* Describes top-level table `key` ("[chipset]", "/chipset"). */
void cfg_table_top(struct cfg_table *t, const struct toml_value *v, const char *key);
/* Describes child `key` of table parent ("[dev.disk0]", "/dev/disk0"). */
void cfg_table_child(struct cfg_table *t, const struct toml_value *v,
                     const struct cfg_table *parent, const char *key);
/* Describes element i of array-of-tables `key` ("[[pci_bridge]] #1", "/pci_bridge/0"). */
void cfg_table_elem(struct cfg_table *t, const struct toml_value *v, const char *key, size_t i);

/* Position of key in table t (the key itself), or of t when absent. */
struct toml_pos cfg_key_pos(const struct cfg_table *t, const char *key);

/*
 * Records every key of t that is not in allowed, with a suggestion; keys in
 * refused (may be NULL) get their reason instead.
 */
void cfg_check_keys(struct cfg *c, const struct cfg_table *t, const char *const *allowed, size_t n,
                    const struct cfg_refusal *refused, size_t nrefused);

/*
 * Typed getters. Each returns 1 when the key is present and its value good
 * (then *out is set), 0 when it is absent and not required (*out untouched),
 * and -1 after recording a problem: missing required key, wrong type, value
 * out of range.
 */
int cfg_get(struct cfg *c, const struct cfg_table *t, const char *key, enum toml_type type,
            bool required, const struct toml_value **out);
int cfg_get_uint(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                 uint64_t min, uint64_t max, uint64_t *out);
int cfg_get_bool(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                 bool *out);
/* A string of 1..maxlen bytes without NUL bytes. */
int cfg_get_str(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                size_t maxlen, const char **out);
/* A PCI path written "bus.device.function" (decimal). */
int cfg_get_pci(struct cfg *c, const struct cfg_table *t, const char *key, bool required,
                struct pci_path *out);

/* Parses "B.D.F" (decimal, device < 32, function < 8); -EINVAL if malformed. */
int cfg_parse_pci(const char *s, struct pci_path *out);

/* ---- building the spec ---- */

/*
 * Checks that a TOML table key can be a component key (non-empty, no NUL,
 * at most SPEC_MAX_KEY_LEN bytes); records a problem at the key otherwise.
 */
bool cfg_check_name(struct cfg *c, const struct cfg_table *parent, size_t index);

/*
 * Inserts comp (taking its contents in every case) under comp->key and
 * remembers that table t made it; records a clash with an existing key at
 * the position of t's key `what` (or t itself).
 */
void cfg_add(struct cfg *c, struct spec_component *comp, const struct cfg_table *t,
             const char *what);

/* strdup that records ENOMEM. */
char *cfg_strdup(struct cfg *c, const char *s);

/* The per-section readers (config.c, config_dev.c, config_cpuid.c). */
void cfg_read_block_devs(struct cfg *c);
void cfg_read_devs(struct cfg *c);
void cfg_read_cpuid(struct cfg *c);

/* Places spec_validate()'s findings at the TOML lines they came from. */
void cfg_map_spec_errors(struct cfg *c, const struct cella_errors *verrs);

#endif
