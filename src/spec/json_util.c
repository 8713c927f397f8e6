/* SPDX-License-Identifier: MPL-2.0 */
/* Strict JSON reading helpers shared by every body codec. */
#include "spec/spec_json.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int cella_json_parse(const char *text, size_t len, json_t **out, struct cella_errors *errs)
{
    *out = NULL;
    if (len > SPEC_MAX_JSON_TEXT)
        return cella_err(errs, -E2BIG, "", "JSON body of %zu bytes is over the %u byte limit", len,
                         SPEC_MAX_JSON_TEXT);
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j)
        return cella_err(errs, -EINVAL, "", "malformed JSON at line %d, column %d: %s", je.line,
                         je.column, je.text);
    *out = j;
    return 0;
}

bool cella_uuid_valid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

static const char *json_kind_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number with a fraction";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

int cella_json_expect_object(const json_t *j, const struct jptr *at, struct cella_errors *errs)
{
    if (json_is_object(j))
        return 0;
    return cella_err(errs, -EINVAL, at->buf, "must be an object, not %s", json_kind_name(j));
}

int cella_json_check_fields(const json_t *obj, const char *const *allowed, size_t n,
                            const struct jptr *at, struct cella_errors *errs)
{
    int r = 0;
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)obj, name, v)
    {
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = strcmp(allowed[i], name) == 0;
        if (!known) {
            struct jptr p;
            jptr_key(&p, at, name);
            r = cella_err(errs, -EINVAL, p.buf, "unknown field \"%s\"", name);
        }
    }
    return r;
}

/* 0 when present, 1 when absent and optional, negative when missing. */
static int lookup(const json_t *obj, const char *name, bool required, const struct jptr *at,
                  struct jptr *p, const json_t **v, struct cella_errors *errs)
{
    jptr_key(p, at, name);
    *v = json_object_get(obj, name);
    if (*v)
        return 0;
    if (!required)
        return 1;
    return cella_err(errs, -EINVAL, p->buf, "missing required field \"%s\"", name);
}

int cella_json_get_string(const json_t *obj, const char *name, size_t max, bool required,
                          const struct jptr *at, char **out, struct cella_errors *errs)
{
    struct jptr p;
    const json_t *v;
    int r = lookup(obj, name, required, at, &p, &v, errs);
    if (r != 0)
        return r;
    if (!json_is_string(v))
        return cella_err(errs, -EINVAL, p.buf, "must be a string, not %s", json_kind_name(v));
    size_t len = json_string_length(v);
    if (len > max)
        return cella_err(errs, -EINVAL, p.buf, "is %zu bytes long; the limit is %zu", len, max);
    if (memchr(json_string_value(v), '\0', len))
        return cella_err(errs, -EINVAL, p.buf, "must not contain NUL characters");
    char *s = strdup(json_string_value(v));
    if (!s)
        return cella_err(errs, -ENOMEM, p.buf, "out of memory");
    *out = s;
    return 0;
}

int cella_json_get_uint(const json_t *obj, const char *name, uint64_t max, bool required,
                        const struct jptr *at, uint64_t *out, struct cella_errors *errs)
{
    struct jptr p;
    const json_t *v;
    int r = lookup(obj, name, required, at, &p, &v, errs);
    if (r != 0)
        return r;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return cella_err(errs, -EINVAL, p.buf, "must be an integer from 0 to %llu",
                         (unsigned long long)max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int cella_json_get_bool(const json_t *obj, const char *name, bool required, const struct jptr *at,
                        bool *out, struct cella_errors *errs)
{
    struct jptr p;
    const json_t *v;
    int r = lookup(obj, name, required, at, &p, &v, errs);
    if (r != 0)
        return r;
    if (!json_is_boolean(v))
        return cella_err(errs, -EINVAL, p.buf, "must be true or false, not %s", json_kind_name(v));
    *out = json_is_true(v);
    return 0;
}

char *cella_json_dump(const json_t *j)
{
    return json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
}
