/* SPDX-License-Identifier: MPL-2.0 */
/*
 * toml-decoder: the decoder interface of the toml-test suite. Reads TOML on
 * stdin and writes it on stdout as tagged JSON (tables are objects, arrays
 * are arrays, every leaf is {"type": T, "value": "text"}). Invalid input:
 * exit status 1 and the error on stderr.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "toml/toml.h"

/* Reads all of f, but no more than max + 1 bytes: enough for the parser to
 * see that the input is over its limit. */
static int read_all(FILE *f, size_t max, char **out, size_t *len)
{
    size_t cap = 0, n = 0;
    char *buf = NULL;

    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                return -ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0 || n > max)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return -EIO;
    }
    *out = buf;
    *len = n;
    return 0;
}

static void put_string(FILE *o, const char *s, size_t n)
{
    fputc('"', o);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            fputs("\\\"", o);
            break;
        case '\\':
            fputs("\\\\", o);
            break;
        case '\b':
            fputs("\\b", o);
            break;
        case '\f':
            fputs("\\f", o);
            break;
        case '\n':
            fputs("\\n", o);
            break;
        case '\r':
            fputs("\\r", o);
            break;
        case '\t':
            fputs("\\t", o);
            break;
        default:
            /* the parser guarantees valid UTF-8, which JSON takes as is */
            if (c < 0x20 || c == 0x7f)
                fprintf(o, "\\u%04x", c);
            else
                fputc(c, o);
        }
    }
    fputc('"', o);
}

/* The shortest %g form that reads back as the same double. */
static void put_float(FILE *o, double d)
{
    char buf[40];

    if (isnan(d)) {
        fputs("nan", o);
        return;
    }
    if (isinf(d)) {
        fputs(d < 0 ? "-inf" : "inf", o);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    fputs(buf, o);
}

static void put_value(FILE *o, const struct toml_value *v);

static void put_table(FILE *o, const struct toml_value *t)
{
    fputc('{', o);
    for (size_t i = 0; i < toml_table_len(t); i++) {
        if (i)
            fputs(", ", o);
        put_string(o, toml_table_key(t, i, NULL), toml_table_key_len(t, i));
        fputs(": ", o);
        put_value(o, toml_table_value(t, i));
    }
    fputc('}', o);
}

/* Recursion is bounded by the parser's depth limit (64 by default). */
static void put_value(FILE *o, const struct toml_value *v)
{
    enum toml_type type = toml_type(v);
    size_t n;

    if (type == TOML_TABLE) {
        put_table(o, v);
        return;
    }
    if (type == TOML_ARRAY) {
        fputc('[', o);
        for (size_t i = 0; i < toml_array_len(v); i++) {
            if (i)
                fputs(", ", o);
            put_value(o, toml_array_get(v, i));
        }
        fputc(']', o);
        return;
    }
    fprintf(o, "{\"type\": \"%s\", \"value\": ", toml_type_name(type));
    switch (type) {
    case TOML_STRING: {
        const char *s = toml_string(v, &n);
        put_string(o, s, n);
        break;
    }
    case TOML_INTEGER:
        fprintf(o, "\"%" PRId64 "\"", toml_integer(v));
        break;
    case TOML_FLOAT:
        fputc('"', o);
        put_float(o, toml_float(v));
        fputc('"', o);
        break;
    case TOML_BOOL:
        fputs(toml_bool(v) ? "\"true\"" : "\"false\"", o);
        break;
    default:
        put_string(o, toml_datetime_text(v), strlen(toml_datetime_text(v)));
        break;
    }
    fputc('}', o);
}

int main(int argc, char **argv)
{
    struct toml_value *root;
    struct toml_error err;
    char *buf;
    size_t len;

    (void)argv;
    if (argc != 1) {
        fputs("usage: toml-decoder < file.toml > file.json\n", stderr);
        return 2;
    }
    int rc = read_all(stdin, TOML_DEFAULT_MAX_INPUT, &buf, &len);
    if (rc) {
        fprintf(stderr, "toml-decoder: reading stdin: %s\n", strerror(-rc));
        return 2;
    }
    rc = toml_parse(buf, len, NULL, &root, &err);
    free(buf);
    if (rc) {
        fprintf(stderr, "toml-decoder: line %" PRIu32 ", column %" PRIu32 ": %s\n", err.pos.line,
                err.pos.col, err.msg);
        return 1;
    }
    put_value(stdout, root);
    fputc('\n', stdout);
    toml_free(root);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "toml-decoder: writing stdout: %s\n", strerror(errno));
        return 2;
    }
    return 0;
}
