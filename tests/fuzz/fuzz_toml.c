/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the TOML parser: parses arbitrary bytes, walks the
 * whole tree through every accessor, and frees it. A second parse with tiny
 * limits exercises the -E2BIG paths.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "toml/toml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Keeps the compiler from dropping reads whose results are unused. */
static volatile size_t sink;

static void check_pos(struct toml_pos pos)
{
    if (pos.line == 0 || pos.col == 0)
        abort();
}

/* Recursion is bounded by the depth limit the tree was parsed with. */
static void walk(const struct toml_value *v, unsigned depth)
{
    size_t len;

    if (depth > TOML_DEFAULT_MAX_DEPTH + 1)
        abort(); /* the parser let nesting exceed its limit */
    check_pos(toml_value_pos(v));
    sink += strlen(toml_type_name(toml_type(v)));
    switch (toml_type(v)) {
    case TOML_TABLE:
        for (size_t i = 0; i < toml_table_len(v); i++) {
            struct toml_pos kp;
            const char *key = toml_table_key(v, i, &kp);
            size_t klen = toml_table_key_len(v, i);
            check_pos(kp);
            if (!key || key[klen] != '\0')
                abort();
            /* keys are unique, so a lookup finds this very entry */
            if (toml_table_index(v, key, klen) != (ptrdiff_t)i ||
                toml_table_getn(v, key, klen) != toml_table_value(v, i))
                abort();
            sink += toml_table_get(v, key) != NULL;
            walk(toml_table_value(v, i), depth + 1);
        }
        if (toml_table_value(v, toml_table_len(v)) || toml_array_len(v))
            abort();
        break;
    case TOML_ARRAY:
        for (size_t i = 0; i < toml_array_len(v); i++)
            walk(toml_array_get(v, i), depth + 1);
        if (toml_array_get(v, toml_array_len(v)) || toml_table_len(v))
            abort();
        break;
    case TOML_STRING: {
        const char *s = toml_string(v, &len);
        if (!s || s[len] != '\0')
            abort();
        sink += len;
        break;
    }
    case TOML_INTEGER:
        sink += (size_t)toml_integer(v);
        break;
    case TOML_FLOAT:
        sink += isnan(toml_float(v));
        break;
    case TOML_BOOL:
        sink += toml_bool(v);
        break;
    default:
        if (!toml_datetime_text(v))
            abort();
        sink += strlen(toml_datetime_text(v));
        break;
    }
    /* accessors of the other types answer with defaults */
    sink += toml_string(v, NULL) != NULL;
    sink += (size_t)toml_integer(v) + toml_bool(v);
}

static void parse_and_walk(const uint8_t *data, size_t size, const struct toml_limits *lim)
{
    struct toml_value *root = NULL;
    struct toml_error err;
    int rc = toml_parse((const char *)data, size, lim, &root, &err);

    if (rc == 0) {
        if (!root || toml_type(root) != TOML_TABLE)
            abort();
        walk(root, 0);
    } else {
        if (root || (rc != -EINVAL && rc != -E2BIG && rc != -ENOMEM))
            abort();
        check_pos(err.pos);
        if (!memchr(err.msg, '\0', sizeof(err.msg)) || !err.msg[0])
            abort();
    }
    toml_free(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct toml_limits tiny = {.max_input = 256, .max_depth = 3, .max_string = 8};

    parse_and_walk(data, size, NULL);
    parse_and_walk(data, size, &tiny);
    return 0;
}
