/* SPDX-License-Identifier: MPL-2.0 */
/* The value tree: building blocks for the parser, accessors, freeing. */
#include "toml/toml_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Tables up to this size are searched linearly; larger ones get a hash index. */
#define TAB_LINEAR_MAX 8

struct toml_value *tv_new(enum toml_type type, struct toml_pos pos)
{
    struct toml_value *v = calloc(1, sizeof(*v));

    if (v) {
        v->type = type;
        v->pos = pos;
    }
    return v;
}

/* 64-bit FNV-1a over the key, started from a per-tree seed and finalised
 * with a murmur-style mix so the seed affects every output bit. */
static uint64_t key_hash(uint64_t seed, const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static bool kv_is(const struct toml_kv *kv, const char *key, size_t len)
{
    return kv->keylen == len && memcmp(kv->key, key, len) == 0;
}

ptrdiff_t tab_find(const struct toml_value *t, const char *key, size_t keylen)
{
    const struct toml_index *idx = t->u.tab.idx;

    if (!idx) {
        for (size_t i = 0; i < t->u.tab.len; i++)
            if (kv_is(&t->u.tab.kv[i], key, keylen))
                return (ptrdiff_t)i;
        return -1;
    }
    size_t mask = idx->cap - 1;
    for (size_t s = key_hash(idx->seed, key, keylen) & mask;; s = (s + 1) & mask) {
        uint32_t slot = idx->slot[s];
        if (!slot)
            return -1;
        if (kv_is(&t->u.tab.kv[slot - 1], key, keylen))
            return (ptrdiff_t)slot - 1;
    }
}

static void idx_put(struct toml_index *idx, const struct toml_kv *kv, size_t i)
{
    size_t mask = idx->cap - 1;
    size_t s = key_hash(idx->seed, kv->key, kv->keylen) & mask;

    while (idx->slot[s])
        s = (s + 1) & mask;
    idx->slot[s] = (uint32_t)(i + 1);
}

/* Rebuilds the index of t with room for `want` keys at load <= 1/2. */
static int idx_grow(struct toml_value *t, size_t want)
{
    size_t cap = 16;

    while (cap / 2 < want) {
        if (cap > (SIZE_MAX - sizeof(struct toml_index)) / 2 / sizeof(uint32_t))
            return -ENOMEM;
        cap *= 2;
    }
    struct toml_index *idx = calloc(1, sizeof(*idx) + cap * sizeof(uint32_t));
    if (!idx)
        return -ENOMEM;
    idx->seed = (uintptr_t)t ^ 0x9e3779b97f4a7c15ull;
    idx->cap = cap;
    for (size_t i = 0; i < t->u.tab.len; i++)
        idx_put(idx, &t->u.tab.kv[i], i);
    free(t->u.tab.idx);
    t->u.tab.idx = idx;
    return 0;
}

void *toml_grow(void *arr, size_t *cap, size_t len, size_t n, size_t sz)
{
    if (n <= *cap - len)
        return arr;
    size_t ncap = *cap ? *cap : 4;
    while (n > ncap - len) {
        if (ncap > SIZE_MAX / 2 / sz)
            return NULL;
        ncap *= 2;
    }
    void *p = realloc(arr, ncap * sz);
    if (p)
        *cap = ncap;
    return p;
}

int tab_add(struct toml_value *t, char *key, size_t keylen, struct toml_pos pos,
            struct toml_value *v)
{
    size_t len = t->u.tab.len;

    /* slots are uint32_t; a table this big cannot come from a sane limit */
    if (len >= UINT32_MAX - 1)
        return -ENOMEM;
    struct toml_kv *kv = toml_grow(t->u.tab.kv, &t->u.tab.cap, len, 1, sizeof(*kv));
    if (!kv)
        return -ENOMEM;
    t->u.tab.kv = kv;
    if (len + 1 > TAB_LINEAR_MAX && (!t->u.tab.idx || (len + 1) * 2 > t->u.tab.idx->cap)) {
        if (idx_grow(t, (len + 1) * 2))
            return -ENOMEM;
    }
    t->u.tab.kv[len] = (struct toml_kv){.key = key, .keylen = keylen, .pos = pos, .val = v};
    t->u.tab.len = len + 1;
    if (t->u.tab.idx)
        idx_put(t->u.tab.idx, &t->u.tab.kv[len], len);
    return 0;
}

int arr_add(struct toml_value *a, struct toml_value *v)
{
    struct toml_value **arr = toml_grow(a->u.arr.v, &a->u.arr.cap, a->u.arr.len, 1, sizeof(v));
    if (!arr)
        return -ENOMEM;
    a->u.arr.v = arr;
    a->u.arr.v[a->u.arr.len++] = v;
    return 0;
}

/* Pushes v on the work list of toml_free(). */
static void free_push(struct toml_value **list, struct toml_value *v)
{
    v->free_lnk = *list;
    *list = v;
}

void toml_free(struct toml_value *v)
{
    struct toml_value *list = NULL;

    if (v)
        free_push(&list, v);
    /* A work list instead of recursion: depth limits are the caller's
     * choice, the stack is not. */
    while (list) {
        struct toml_value *x = list;
        list = x->free_lnk;
        switch (x->type) {
        case TOML_TABLE:
            for (size_t i = 0; i < x->u.tab.len; i++) {
                free(x->u.tab.kv[i].key);
                free_push(&list, x->u.tab.kv[i].val);
            }
            free(x->u.tab.kv);
            free(x->u.tab.idx);
            break;
        case TOML_ARRAY:
            for (size_t i = 0; i < x->u.arr.len; i++)
                free_push(&list, x->u.arr.v[i]);
            free(x->u.arr.v);
            break;
        case TOML_STRING:
        case TOML_DATETIME:
        case TOML_DATETIME_LOCAL:
        case TOML_DATE_LOCAL:
        case TOML_TIME_LOCAL:
            free(x->u.str.s);
            break;
        default:
            break;
        }
        free(x);
    }
}

enum toml_type toml_type(const struct toml_value *v)
{
    return v->type;
}

struct toml_pos toml_value_pos(const struct toml_value *v)
{
    return v ? v->pos : (struct toml_pos){0, 0};
}

static bool is_table(const struct toml_value *t)
{
    return t && t->type == TOML_TABLE;
}

size_t toml_table_len(const struct toml_value *t)
{
    return is_table(t) ? t->u.tab.len : 0;
}

const char *toml_table_key(const struct toml_value *t, size_t i, struct toml_pos *keypos)
{
    if (!is_table(t) || i >= t->u.tab.len)
        return NULL;
    if (keypos)
        *keypos = t->u.tab.kv[i].pos;
    return t->u.tab.kv[i].key;
}

size_t toml_table_key_len(const struct toml_value *t, size_t i)
{
    return is_table(t) && i < t->u.tab.len ? t->u.tab.kv[i].keylen : 0;
}

const struct toml_value *toml_table_value(const struct toml_value *t, size_t i)
{
    return is_table(t) && i < t->u.tab.len ? t->u.tab.kv[i].val : NULL;
}

ptrdiff_t toml_table_index(const struct toml_value *t, const char *key, size_t len)
{
    return is_table(t) && key ? tab_find(t, key, len) : -1;
}

const struct toml_value *toml_table_getn(const struct toml_value *t, const char *key, size_t len)
{
    ptrdiff_t i = toml_table_index(t, key, len);

    return i < 0 ? NULL : t->u.tab.kv[i].val;
}

const struct toml_value *toml_table_get(const struct toml_value *t, const char *key)
{
    return key ? toml_table_getn(t, key, strlen(key)) : NULL;
}

size_t toml_array_len(const struct toml_value *a)
{
    return a && a->type == TOML_ARRAY ? a->u.arr.len : 0;
}

const struct toml_value *toml_array_get(const struct toml_value *a, size_t i)
{
    return i < toml_array_len(a) ? a->u.arr.v[i] : NULL;
}

const char *toml_string(const struct toml_value *v, size_t *len)
{
    if (!v || v->type != TOML_STRING) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = v->u.str.len;
    return v->u.str.s;
}

int64_t toml_integer(const struct toml_value *v)
{
    return v && v->type == TOML_INTEGER ? v->u.i : 0;
}

double toml_float(const struct toml_value *v)
{
    return v && v->type == TOML_FLOAT ? v->u.f : 0.0;
}

bool toml_bool(const struct toml_value *v)
{
    return v && v->type == TOML_BOOL ? v->u.b : false;
}

const char *toml_datetime_text(const struct toml_value *v)
{
    if (!v)
        return NULL;
    switch (v->type) {
    case TOML_DATETIME:
    case TOML_DATETIME_LOCAL:
    case TOML_DATE_LOCAL:
    case TOML_TIME_LOCAL:
        return v->u.str.s;
    default:
        return NULL;
    }
}

const char *toml_type_name(enum toml_type t)
{
    static const char *const names[] = {
        [TOML_TABLE] = "table",           [TOML_ARRAY] = "array",
        [TOML_STRING] = "string",         [TOML_INTEGER] = "integer",
        [TOML_FLOAT] = "float",           [TOML_BOOL] = "bool",
        [TOML_DATETIME] = "datetime",     [TOML_DATETIME_LOCAL] = "datetime-local",
        [TOML_DATE_LOCAL] = "date-local", [TOML_TIME_LOCAL] = "time-local",
    };

    if ((unsigned)t >= sizeof(names) / sizeof(names[0]))
        return "?";
    return names[t];
}
