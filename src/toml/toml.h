/* SPDX-License-Identifier: MPL-2.0 */
/*
 * cella's TOML 1.0.0 parser.
 *
 * toml_parse() turns a buffer into an immutable tree of values. Every value
 * and every table key remembers where it was written (1-based line and
 * column, columns counted in Unicode code points), so callers can point a
 * person at the offending text ("line 3: unknown key ...").
 *
 * Hostile input is bounded by struct toml_limits: input size, nesting depth
 * and string length. Parsing and freeing are iterative, so neither the
 * input nor the tree can exhaust the stack. No dependencies beyond libc.
 *
 * Accessors never fail: asked for the wrong type or an out-of-range index
 * they return 0, NULL or false. A tree is safe to read from many threads.
 */
#ifndef CELLA_TOML_H
#define CELLA_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum toml_type {
    TOML_TABLE,
    TOML_ARRAY,
    TOML_STRING,
    TOML_INTEGER,
    TOML_FLOAT,
    TOML_BOOL,
    TOML_DATETIME,       /* offset date-time: 1979-05-27T07:32:00Z */
    TOML_DATETIME_LOCAL, /* 1979-05-27T07:32:00 */
    TOML_DATE_LOCAL,     /* 1979-05-27 */
    TOML_TIME_LOCAL,     /* 07:32:00 */
};

/* A place in the input: 1-based line, 1-based column in code points. */
struct toml_pos {
    uint32_t line, col;
};

/*
 * Why a parse failed. msg is a short sentence without the position, e.g.
 * `duplicate key "a"`; print it as "line %u, column %u: %s".
 */
struct toml_error {
    struct toml_pos pos;
    char msg[256];
};

/* Defaults used for a NULL limits pointer or for a field left at 0. */
#define TOML_DEFAULT_MAX_INPUT  ((size_t)4 << 20) /* 4 MiB */
#define TOML_DEFAULT_MAX_DEPTH  64u
#define TOML_DEFAULT_MAX_STRING ((size_t)1 << 20) /* 1 MiB */

/*
 * Resource bounds for one parse. max_input: bytes of input. max_depth:
 * tables, arrays and inline tables nested below the root, all kinds
 * counted together (`a = [[1]]` is depth 2, `[x.y]` is depth 2).
 * max_string: bytes of one decoded string or key.
 */
struct toml_limits {
    size_t max_input;
    unsigned max_depth;
    size_t max_string;
};

struct toml_value; /* opaque */

/*
 * Parses len bytes of buf (need not be NUL-terminated; a leading UTF-8 BOM
 * is skipped). Returns 0 and the root table in *out, which the caller frees
 * with toml_free(); or a negative errno: -EINVAL for input that is not
 * valid TOML 1.0.0, -E2BIG when a limit is exceeded, -ENOMEM; then *out is
 * NULL and *err (if err is not NULL) says where and why. lim may be NULL
 * for the defaults.
 */
int toml_parse(const char *buf, size_t len, const struct toml_limits *lim, struct toml_value **out,
               struct toml_error *err);

/* Frees a tree returned by toml_parse(); accepts NULL. */
void toml_free(struct toml_value *v);

/* Type of v, which must not be NULL. */
enum toml_type toml_type(const struct toml_value *v);

/*
 * Where v starts: the first character of a scalar, '[' of an array, '{' of
 * an inline table, the key naming a table made by a [header] (for implicit
 * or dotted-key tables, the first key that created it), 1:1 for the root.
 * Elements of an array of tables start at the key in their [[header]].
 */
struct toml_pos toml_value_pos(const struct toml_value *v);

/* Number of keys in table t; 0 if t is not a table. */
size_t toml_table_len(const struct toml_value *t);

/*
 * The i-th key of table t in document order (NUL-terminated; NULL if t is
 * not a table or i is out of range). If keypos is not NULL it receives the
 * key's position: for a key defined in a [header], where it is written in
 * the header that defined the table.
 */
const char *toml_table_key(const struct toml_value *t, size_t i, struct toml_pos *keypos);

/* Byte length of the i-th key (keys may contain NUL via "\u0000"); 0 if none. */
size_t toml_table_key_len(const struct toml_value *t, size_t i);

/* The i-th value of table t in document order; NULL if none. */
const struct toml_value *toml_table_value(const struct toml_value *t, size_t i);

/* The value of key (a NUL-terminated string) in table t; NULL if absent. */
const struct toml_value *toml_table_get(const struct toml_value *t, const char *key);

/* Like toml_table_get() for a key of len bytes that may contain NUL. */
const struct toml_value *toml_table_getn(const struct toml_value *t, const char *key, size_t len);

/* Index of key in table t (for toml_table_key() etc.), or -1 if absent. */
ptrdiff_t toml_table_index(const struct toml_value *t, const char *key, size_t len);

/* Number of elements of array a; 0 if a is not an array. */
size_t toml_array_len(const struct toml_value *a);

/* The i-th element of array a; NULL if a is not an array or i is out of range. */
const struct toml_value *toml_array_get(const struct toml_value *a, size_t i);

/*
 * A string value's bytes, NUL-terminated (it may also contain NUL; use
 * *len). NULL if v is not a string. len may be NULL.
 */
const char *toml_string(const struct toml_value *v, size_t *len);

/* An integer value; 0 if v is not an integer. */
int64_t toml_integer(const struct toml_value *v);

/* A float value (may be inf or nan); 0.0 if v is not a float. */
double toml_float(const struct toml_value *v);

/* A boolean value; false if v is not a boolean. */
bool toml_bool(const struct toml_value *v);

/*
 * Text of a date/time value of any of the four kinds, NULL for other types.
 * Normalised as toml-test expects: 'T' between date and time, upper-case
 * 'Z', fractional seconds padded to at least 3 digits (more are kept as
 * written), e.g. "1979-05-27T07:32:00.500-07:00", "07:32:00", "1979-05-27".
 */
const char *toml_datetime_text(const struct toml_value *v);

/* "table", "array", "string", "integer", "float", "bool", "datetime",
 * "datetime-local", "date-local", "time-local"; "?" for anything else. */
const char *toml_type_name(enum toml_type t);

#endif /* CELLA_TOML_H */
