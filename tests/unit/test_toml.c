/* SPDX-License-Identifier: MPL-2.0 */
/* Unit tests of the TOML parser API (src/toml/toml.h). */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "toml/toml.h"

/* Parses a NUL-terminated document that must be valid. */
static struct toml_value *parse_ok(const char *doc)
{
    struct toml_value *root = NULL;
    struct toml_error err;
    int rc = toml_parse(doc, strlen(doc), NULL, &root, &err);

    if (rc)
        fail_msg("unexpected error %d at %u:%u: %s", rc, err.pos.line, err.pos.col, err.msg);
    assert_non_null(root);
    return root;
}

/* Parses doc, which must fail with rc at line:col and a message containing msg. */
static void expect_error(const char *doc, size_t len, const struct toml_limits *lim, int rc,
                         uint32_t line, uint32_t col, const char *msg)
{
    struct toml_value *root = (struct toml_value *)1;
    struct toml_error err;

    assert_int_equal(toml_parse(doc, len, lim, &root, &err), rc);
    assert_null(root);
    if (err.pos.line != line || err.pos.col != col || !strstr(err.msg, msg))
        fail_msg("got %u:%u \"%s\", want %u:%u \"...%s...\"", err.pos.line, err.pos.col, err.msg,
                 line, col, msg);
}

static void expect_invalid(const char *doc, uint32_t line, uint32_t col, const char *msg)
{
    expect_error(doc, strlen(doc), NULL, -EINVAL, line, col, msg);
}

static void assert_pos(struct toml_pos pos, uint32_t line, uint32_t col)
{
    if (pos.line != line || pos.col != col)
        fail_msg("position %u:%u, want %u:%u", pos.line, pos.col, line, col);
}

/* Position of key in table t. */
static struct toml_pos key_pos(const struct toml_value *t, const char *key)
{
    struct toml_pos pos = {0, 0};
    ptrdiff_t i = toml_table_index(t, key, strlen(key));

    assert_true(i >= 0);
    assert_string_equal(toml_table_key(t, (size_t)i, &pos), key);
    return pos;
}

static void test_scalars(void **state)
{
    (void)state;
    struct toml_value *root = parse_ok("s = \"a\\tb\\u00e9\"\n"
                                       "lit = 'C:\\path'\n");
    size_t len;

    assert_string_equal(toml_string(toml_table_get(root, "s"), &len), "a\tb\xc3\xa9");
    assert_int_equal(len, 5);
    assert_string_equal(toml_string(toml_table_get(root, "lit"), NULL), "C:\\path");
    toml_free(root);

    root = parse_ok("big = 9_223_372_036_854_775_807\n"
                    "min = -9223372036854775808\n"
                    "hex = 0xdead_BEEF\n"
                    "oct = 0o755\n"
                    "bin = 0b1010\n"
                    "f = 6.626e-34\n"
                    "ninf = -inf\n"
                    "nan = nan\n"
                    "t = true\n"
                    "odt = 1979-05-27 07:32:00.5z\n"
                    "ldt = 1979-05-27t07:32:00\n"
                    "ld = 1979-05-27\n"
                    "lt = 07:32:00.999999\n");
    assert_true(toml_integer(toml_table_get(root, "big")) == INT64_MAX);
    assert_true(toml_integer(toml_table_get(root, "min")) == INT64_MIN);
    assert_int_equal(toml_integer(toml_table_get(root, "hex")), 0xdeadbeef);
    assert_int_equal(toml_integer(toml_table_get(root, "oct")), 0755);
    assert_int_equal(toml_integer(toml_table_get(root, "bin")), 10);
    assert_true(toml_float(toml_table_get(root, "f")) == 6.626e-34);
    assert_true(isinf(toml_float(toml_table_get(root, "ninf"))));
    assert_true(toml_float(toml_table_get(root, "ninf")) < 0);
    assert_true(isnan(toml_float(toml_table_get(root, "nan"))));
    assert_true(toml_bool(toml_table_get(root, "t")));

    const struct toml_value *v = toml_table_get(root, "odt");
    assert_int_equal(toml_type(v), TOML_DATETIME);
    assert_string_equal(toml_datetime_text(v), "1979-05-27T07:32:00.500Z");
    v = toml_table_get(root, "ldt");
    assert_int_equal(toml_type(v), TOML_DATETIME_LOCAL);
    assert_string_equal(toml_datetime_text(v), "1979-05-27T07:32:00");
    v = toml_table_get(root, "ld");
    assert_int_equal(toml_type(v), TOML_DATE_LOCAL);
    assert_string_equal(toml_datetime_text(v), "1979-05-27");
    v = toml_table_get(root, "lt");
    assert_int_equal(toml_type(v), TOML_TIME_LOCAL);
    assert_string_equal(toml_datetime_text(v), "07:32:00.999999");
    toml_free(root);

    expect_invalid("i = -0x0\n", 1, 5, "sign");
}

static void test_wrong_type_accessors(void **state)
{
    (void)state;
    struct toml_value *root = parse_ok("s = 's'\ni = 1\na = [1]\n");
    const struct toml_value *s = toml_table_get(root, "s"), *i = toml_table_get(root, "i");
    const struct toml_value *a = toml_table_get(root, "a");
    size_t len = 99;

    assert_null(toml_string(i, &len));
    assert_int_equal(len, 0);
    assert_int_equal(toml_integer(s), 0);
    assert_true(toml_float(i) == 0.0);
    assert_false(toml_bool(i));
    assert_null(toml_datetime_text(s));
    assert_int_equal(toml_table_len(a), 0);
    assert_null(toml_table_key(a, 0, NULL));
    assert_null(toml_table_value(root, 3));
    assert_null(toml_table_get(s, "x"));
    assert_null(toml_table_get(root, "missing"));
    assert_int_equal(toml_array_len(root), 0);
    assert_null(toml_array_get(a, 1));
    assert_int_equal(toml_integer(toml_array_get(a, 0)), 1);
    assert_int_equal(toml_table_len(NULL), 0);
    assert_int_equal(toml_array_len(NULL), 0);
    assert_null(toml_string(NULL, NULL));
    assert_string_equal(toml_type_name(TOML_DATETIME_LOCAL), "datetime-local");
    assert_string_equal(toml_type_name(TOML_TABLE), "table");
    assert_string_equal(toml_type_name((enum toml_type)99), "?");
    toml_free(root);
    toml_free(NULL);
}

static void test_key_order_and_nul(void **state)
{
    (void)state;
    struct toml_value *root = parse_ok("z = 1\n\"a\\u0000b\" = 2\nm = 3\n");

    assert_int_equal(toml_table_len(root), 3);
    assert_string_equal(toml_table_key(root, 0, NULL), "z");
    assert_int_equal(toml_table_key_len(root, 1), 3);
    assert_memory_equal(toml_table_key(root, 1, NULL), "a\0b", 4);
    assert_string_equal(toml_table_key(root, 2, NULL), "m");
    assert_int_equal(toml_integer(toml_table_getn(root, "a\0b", 3)), 2);
    assert_null(toml_table_get(root, "a"));
    toml_free(root);
}

static void test_big_table_lookup(void **state)
{
    (void)state;
    size_t n = 5000, cap = n * 24, len = 0;
    char *doc = malloc(cap), key[32];

    assert_non_null(doc);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(doc + len, cap - len, "k%zu = %zu\n", i, i);
    struct toml_value *root = NULL;
    assert_int_equal(toml_parse(doc, len, NULL, &root, NULL), 0);
    assert_int_equal(toml_table_len(root), n);
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%zu", i);
        assert_int_equal(toml_integer(toml_table_get(root, key)), (int64_t)i);
        assert_int_equal(toml_table_index(root, key, strlen(key)), (ptrdiff_t)i);
    }
    assert_null(toml_table_get(root, "k5000"));
    toml_free(root);
    /* and a duplicate among many keys is still found */
    len += (size_t)snprintf(doc + len, cap - len, "k4321 = 0\n");
    expect_error(doc, len, NULL, -EINVAL, (uint32_t)n + 1, 1, "duplicate key \"k4321\"");
    free(doc);
}

static void test_positions(void **state)
{
    (void)state;
    struct toml_value *root = parse_ok("# comment\n"                  /* 1 */
                                       "top = 1\n"                    /* 2 */
                                       "  dot.ted  =  \"x\"\n"        /* 3 */
                                       "\"é\" = 'ü'\n"                /* 4 */
                                       "[ srv . http ]\n"             /* 5 */
                                       "port = 80\n"                  /* 6 */
                                       "inl = { a = 1, b.c = [2] }\n" /* 7 */
                                       "[[disk]]\n"                   /* 8 */
                                       "path = 'a'\n"                 /* 9 */
                                       "[[disk]]\n"                   /* 10 */
                                       "[srv]\n"                      /* 11 */
                                       "x = 1\n");                    /* 12 */

    assert_pos(toml_value_pos(root), 1, 1);
    assert_pos(key_pos(root, "top"), 2, 1);
    assert_pos(toml_value_pos(toml_table_get(root, "top")), 2, 7);

    const struct toml_value *dot = toml_table_get(root, "dot");
    assert_pos(key_pos(root, "dot"), 3, 3);
    assert_pos(toml_value_pos(dot), 3, 3);
    assert_pos(key_pos(dot, "ted"), 3, 7);
    assert_pos(toml_value_pos(toml_table_get(dot, "ted")), 3, 15);

    /* columns count characters, not bytes */
    assert_pos(key_pos(root, "\xc3\xa9"), 4, 1);
    assert_pos(toml_value_pos(toml_table_get(root, "\xc3\xa9")), 4, 7);

    /* srv was made implicitly by [srv.http], then defined by [srv] */
    const struct toml_value *srv = toml_table_get(root, "srv");
    assert_pos(key_pos(root, "srv"), 11, 2);
    assert_pos(toml_value_pos(srv), 11, 2);
    const struct toml_value *http = toml_table_get(srv, "http");
    assert_pos(key_pos(srv, "http"), 5, 9);
    assert_pos(toml_value_pos(http), 5, 9);
    assert_pos(key_pos(http, "port"), 6, 1);
    assert_pos(key_pos(srv, "x"), 12, 1);

    const struct toml_value *inl = toml_table_get(http, "inl");
    assert_pos(toml_value_pos(inl), 7, 7);
    assert_pos(key_pos(inl, "a"), 7, 9);
    const struct toml_value *b = toml_table_get(inl, "b");
    assert_pos(key_pos(inl, "b"), 7, 16);
    assert_pos(key_pos(b, "c"), 7, 18);
    const struct toml_value *arr = toml_table_get(b, "c");
    assert_pos(toml_value_pos(arr), 7, 22);
    assert_pos(toml_value_pos(toml_array_get(arr, 0)), 7, 23);

    const struct toml_value *disk = toml_table_get(root, "disk");
    assert_int_equal(toml_type(disk), TOML_ARRAY);
    assert_int_equal(toml_array_len(disk), 2);
    assert_pos(key_pos(root, "disk"), 8, 3);
    assert_pos(toml_value_pos(toml_array_get(disk, 0)), 8, 3);
    assert_pos(toml_value_pos(toml_array_get(disk, 1)), 10, 3);
    assert_pos(key_pos(toml_array_get(disk, 0), "path"), 9, 1);
    toml_free(root);
}

static void test_positions_crlf_bom(void **state)
{
    (void)state;
    struct toml_value *root = parse_ok("\xef\xbb\xbf"
                                       "a = 1\r\n"
                                       "s = \"\"\"\r\nx\r\ny\"\"\"\r\n"
                                       "b = 2\r\n");

    assert_pos(key_pos(root, "a"), 1, 1);
    assert_string_equal(toml_string(toml_table_get(root, "s"), NULL), "x\ny");
    assert_pos(key_pos(root, "b"), 5, 1);
    toml_free(root);
}

static void test_errors(void **state)
{
    (void)state;
    expect_invalid("a = 1\nb = 2\na = 3\n", 3, 1, "duplicate key \"a\"");
    expect_invalid("[t]\nx = 1\n[t]\n", 3, 2, "table \"t\" is already defined");
    expect_invalid("a = 1\nb = \n", 2, 5, "expected a value");
    expect_invalid("x = [1, 2\ny = 3\n", 2, 1, "expected ',' or ']'"); /* arrays span lines */
    expect_invalid("x = {a = 1,\n b = 2}\n", 1, 12, "expected a key");
    expect_invalid("x = {a = 1, }\n", 1, 13, "trailing comma");
    expect_invalid("s = \"abc\n", 1, 5, "unterminated string");
    expect_invalid("s = \"\"\"abc\n\n", 1, 5, "unterminated multi-line string");
    expect_invalid("s = \"a\\qb\"\n", 1, 7, "invalid escape");
    expect_invalid("s = \"\\uD800\"\n", 1, 6, "not a Unicode scalar value");
    expect_invalid("n = 0123\n", 1, 5, "leading zeros");
    expect_invalid("n = 1__0\n", 1, 5, "invalid number");
    expect_invalid("n = 99999999999999999999\n", 1, 5, "64 bits");
    expect_invalid("d = 2023-02-29\n", 1, 5, "has no day 29");
    expect_invalid("t = 24:00:00\n", 1, 5, "invalid time");
    expect_invalid("b = True\n", 1, 5, "invalid value \"True\"");
    expect_invalid("a = 1 b = 2\n", 1, 7, "expected end of line");
    expect_invalid("a.b = 1\n[a]\n", 2, 2, "table \"a\" is already defined");
    expect_invalid("[a.b]\n[a]\nb.c = 1\n", 3, 1, "dotted keys");
    expect_invalid("a = {}\n[a.b]\n", 2, 2, "inline table \"a\"");
    expect_invalid("a = []\n[[a]]\n", 2, 3, "already defined as a static array");
    expect_invalid("[[a]]\n[a]\n", 2, 2, "already defined as an array of tables");
    expect_invalid("a = 1\na.b = 2\n", 2, 1, "key \"a\" is already defined as an integer");
    expect_invalid("[a\n", 1, 3, "expected ']'");
    expect_invalid("\"\"\"k\"\"\" = 1\n", 1, 1, "multi-line string cannot be a key");
    expect_invalid("x = 1 # \x01\n", 1, 9, "control character U+0001");
    expect_invalid("x = 'a\rb'\n", 1, 7, "carriage return");
    expect_invalid("x = 1\n\xc3\xa9 = 'bad utf8 \xff'\n", 2, 15, "invalid UTF-8");
    expect_invalid("\xc3\xa9\xc3\xa9 = 1\n", 1, 1, "expected a key, found U+00E9");
    expect_invalid("x = \"\xed\xa0\x80\"\n", 1, 6, "invalid UTF-8"); /* a surrogate */
    /* an embedded NUL is a control character, not the end of the text */
    expect_error("a = 1\n\0", 7, NULL, -EINVAL, 2, 1, "control character U+0000");
}

static void test_deep_nesting(void **state)
{
    (void)state;
    size_t depth = 100000, len = 0;
    char *doc = malloc(depth * 4 + 16);

    assert_non_null(doc);
    len += (size_t)sprintf(doc, "a=");
    memset(doc + len, '[', depth);
    len += depth;
    memset(doc + len, ']', depth);
    len += depth;
    expect_error(doc, len, NULL, -E2BIG, 1, 3 + TOML_DEFAULT_MAX_DEPTH, "nesting");

    len = (size_t)sprintf(doc, "a=");
    for (size_t i = 0; i < depth; i++)
        len += (size_t)sprintf(doc + len, i % 2 ? "{b=" : "[");
    /* the 65th container: after 32 "[" and 32 "{b=" */
    expect_error(doc, len, NULL, -E2BIG, 1, 3 + 32 * 4, "nesting");

    len = 0;
    for (size_t i = 0; i < depth; i++)
        len += (size_t)sprintf(doc + len, "a.");
    len += (size_t)sprintf(doc + len, "a = 1");
    expect_error(doc, len, NULL, -E2BIG, 1, 131, "more than 65 parts");

    /* exactly at the limit is fine */
    struct toml_limits lim = {.max_depth = 3};
    struct toml_value *root;
    assert_int_equal(toml_parse("a = [[[1]]]", 11, &lim, &root, NULL), 0);
    toml_free(root);
    expect_error("a = [[[[1]]]]", 13, &lim, -E2BIG, 1, 8, "nesting");
    assert_int_equal(toml_parse("[a.b.c]", 7, &lim, &root, NULL), 0);
    toml_free(root);
    expect_error("[a.b.c.d]", 9, &lim, -E2BIG, 1, 8, "nesting");
    expect_error("[a.b]\nc.d = 1\nc.e.f = 1\n", 24, &lim, -E2BIG, 3, 3, "nesting");
    /* an array of tables and its elements are two levels */
    assert_int_equal(toml_parse("[[a.b]]", 7, &lim, &root, NULL), 0);
    toml_free(root);
    expect_error("[[a.b.c]]\n", 10, &lim, -E2BIG, 1, 7, "nesting");
    free(doc);
}

static void test_input_limit(void **state)
{
    (void)state;
    size_t big = TOML_DEFAULT_MAX_INPUT + 1;
    char *doc = malloc(big);

    assert_non_null(doc);
    memset(doc, '\n', big);
    expect_error(doc, big, NULL, -E2BIG, 1, 1, "input is larger");
    struct toml_value *root;
    assert_int_equal(toml_parse(doc, big - 1, NULL, &root, NULL), 0);
    assert_int_equal(toml_table_len(root), 0);
    toml_free(root);
    free(doc);

    struct toml_limits lim = {.max_input = 8};
    expect_error("a = 12345", 9, &lim, -E2BIG, 1, 1, "limit of 8 bytes");
    assert_int_equal(toml_parse("a = 1234", 8, &lim, &root, NULL), 0);
    toml_free(root);
}

static void test_string_limit(void **state)
{
    (void)state;
    struct toml_limits lim = {.max_string = 4};
    struct toml_value *root;

    assert_int_equal(toml_parse("abcd = 'abcd'", 13, &lim, &root, NULL), 0);
    toml_free(root);
    expect_error("a = 'abcde'", 11, &lim, -E2BIG, 1, 5, "string is longer");
    expect_error("a = \"\"\"abc\\u00e9\"\"\"", 19, &lim, -E2BIG, 1, 5, "string is longer");
    expect_error("abcde = 1", 9, &lim, -E2BIG, 1, 1, "key is longer");
    expect_error("[t.'abcde']", 11, &lim, -E2BIG, 1, 4, "key is longer");
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct toml_value *root = NULL;
    struct toml_error err;

    assert_int_equal(toml_parse("a=1", 3, NULL, NULL, &err), -EINVAL);
    assert_int_equal(toml_parse(NULL, 3, NULL, &root, &err), -EINVAL);
    assert_null(root);
    assert_int_equal(toml_parse(NULL, 0, NULL, &root, NULL), 0);
    assert_int_equal(toml_table_len(root), 0);
    toml_free(root);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalars),
        cmocka_unit_test(test_wrong_type_accessors),
        cmocka_unit_test(test_key_order_and_nul),
        cmocka_unit_test(test_big_table_lookup),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_positions_crlf_bom),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_input_limit),
        cmocka_unit_test(test_string_limit),
        cmocka_unit_test(test_bad_arguments),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
