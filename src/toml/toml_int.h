/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Internals of the TOML parser, shared by toml.c (the tree), scan.c (the
 * lexer) and parse.c (the grammar). Not for use outside src/toml/.
 */
#ifndef CELLA_TOML_INT_H
#define CELLA_TOML_INT_H

#include <locale.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "toml/toml.h"

/* How a table came to be; decides what may still add to it (TOML 1.0 sec. Table). */
enum {
    TF_IMPLICIT = 1u << 0, /* made as a parent of a [header]; one header may still define it */
    TF_HEADER = 1u << 1,   /* defined by a [header] or is a [[header]] element */
    TF_DOTTED = 1u << 2,   /* made or extended by dotted keys */
    TF_INLINE = 1u << 3,   /* an inline table: closed to everything outside it */
    TF_AOT = 1u << 4,      /* an array made by [[header]]s (others are static) */
};

struct toml_kv {
    char *key; /* NUL-terminated, keylen bytes before the NUL */
    size_t keylen;
    struct toml_pos pos;
    struct toml_value *val;
};

/*
 * Hash index of a large table: open addressing over kv positions. The seed
 * comes from the (ASLR-randomised) table address, so crafted keys cannot
 * aim for collisions.
 */
struct toml_index {
    uint64_t seed;
    size_t cap;      /* slots, a power of two */
    uint32_t slot[]; /* kv index + 1; 0 = empty */
};

/*
 * Kept small (56 bytes on LP64): a 4 MiB input of `[],` makes a million of
 * these. free_lnk shares space with flags and depth, which only the parser
 * needs; toml_free() never runs on a value the parser still works on.
 */
struct toml_value {
    union {
        struct {
            uint32_t flags; /* TF_*; only needed while parsing */
            uint32_t depth; /* containers: nesting below the root (root is 0) */
        };
        struct toml_value *free_lnk; /* toml_free()'s work list: no recursion */
    };
    struct toml_pos pos;
    enum toml_type type;
    union {
        struct {
            struct toml_kv *kv;
            size_t len, cap;
            struct toml_index *idx; /* NULL while the table is small */
        } tab;
        struct {
            struct toml_value **v;
            size_t len, cap;
        } arr;
        struct {
            char *s; /* strings and date/time text; NUL-terminated */
            size_t len;
        } str;
        int64_t i;
        double f;
        bool b;
    } u;
};

/* tree (toml.c) */
/* Makes room for n more elements of size sz after len in arr (capacity *cap).
 * Returns the array, maybe moved, or NULL (arr untouched) if out of memory. */
void *toml_grow(void *arr, size_t *cap, size_t len, size_t n, size_t sz);
struct toml_value *tv_new(enum toml_type type, struct toml_pos pos);
/* Appends key (taken over on success only) and v to table t; 0 or -ENOMEM. */
int tab_add(struct toml_value *t, char *key, size_t keylen, struct toml_pos pos,
            struct toml_value *v);
/* Index of key in t or -1. */
ptrdiff_t tab_find(const struct toml_value *t, const char *key, size_t keylen);
/* Appends v to array a; 0 or -ENOMEM (v stays the caller's). */
int arr_add(struct toml_value *a, struct toml_value *v);

/* A key part as scanned: decoded bytes (malloc'ed, NUL-terminated) and position. */
struct keypart {
    char *s;
    size_t len;
    size_t off; /* byte offset, for error messages */
    struct toml_pos pos;
};

/* A growable byte buffer for decoding strings. */
struct sbuf {
    char *p;
    size_t len, cap;
};

/* One open array or inline table while parse_value() runs. */
struct frame {
    struct toml_value *c;      /* the array or inline table */
    struct toml_value *target; /* inline table: the (sub)table the pending key goes into */
    struct keypart key;        /* inline table: pending key, s == NULL when none */
};

struct tparser {
    const char *s; /* input */
    size_t n;      /* input length */
    size_t i;      /* cursor */
    size_t start;  /* first byte after a BOM */
    struct toml_limits lim;
    struct toml_error *err;
    int failed; /* first error code, so only the first error is reported */

    /* position cache: pos_at() walks forward from here */
    size_t pc_off;
    struct toml_pos pc;

    locale_t cloc; /* "C" locale for strtod_l, made on first float */
    struct toml_value *root;
    struct toml_value *cur; /* table receiving key/values of the current section */

    struct sbuf sb;
    struct keypart *path; /* key parts of the key being parsed */
    size_t npath, cap_path;
    struct frame *frames;
    size_t nframes, cap_frames;
};

/* lexer (scan.c) */
int tp_error(struct tparser *p, size_t off, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int tp_nomem(struct tparser *p);
struct toml_pos tp_pos(struct tparser *p, size_t off);
/* Describes the character at off for messages: "'x'", "end of input", "newline". */
const char *tp_describe(struct tparser *p, size_t off, char *buf, size_t n);
/* Writes key for a message: quoted, escaped, shortened. Returns buf. */
const char *tp_quote(const char *key, size_t len, char *buf, size_t n);
int tp_check_text(struct tparser *p);
void tp_skip_ws(struct tparser *p);
void tp_skip_comment(struct tparser *p);
bool tp_eat_newline(struct tparser *p);
void tp_skip_ws_nl(struct tparser *p);
int tp_scan_key_part(struct tparser *p, struct keypart *kp);
int tp_scan_scalar(struct tparser *p, struct toml_value **out);

static inline bool tp_eof(const struct tparser *p)
{
    return p->i >= p->n;
}

static inline int tp_peek(const struct tparser *p)
{
    return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

static inline int tp_peek_at(const struct tparser *p, size_t k)
{
    return k < p->n - p->i ? (unsigned char)p->s[p->i + k] : -1;
}

#endif /* CELLA_TOML_INT_H */
