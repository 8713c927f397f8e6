/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The TOML grammar: the document, [headers], dotted keys, and values.
 * Arrays and inline tables are parsed with an explicit stack of frames, not
 * recursion, so nesting is bounded by toml_limits.max_depth alone.
 */
#include "toml/toml_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define KEYQ 72 /* buffer for a quoted key in a message */

static void path_clear(struct tparser *p)
{
    for (size_t k = 0; k < p->npath; k++)
        free(p->path[k].s);
    p->npath = 0;
}

/* A key, simple or dotted (`a . "b" . 'c'`), at p->i into p->path. */
static int scan_key(struct tparser *p)
{
    path_clear(p);
    for (;;) {
        /* each part but the last opens a table, so longer keys cannot fit */
        if (p->npath > p->lim.max_depth)
            return tp_error(p, p->i, -E2BIG, "key has more than %u parts", p->lim.max_depth + 1);
        struct keypart *path = toml_grow(p->path, &p->cap_path, p->npath, 1, sizeof(*path));
        if (!path)
            return tp_nomem(p);
        p->path = path;
        tp_skip_ws(p);
        path[p->npath].s = NULL;
        int rc = tp_scan_key_part(p, &path[p->npath]);
        if (rc)
            return rc;
        p->npath++;
        tp_skip_ws(p);
        if (tp_peek(p) != '.')
            return 0;
        p->i++;
    }
}

static const char *quote_part(const struct keypart *kp, char *buf)
{
    return tp_quote(kp->s, kp->len, buf, KEYQ);
}

static int too_deep(struct tparser *p, size_t off)
{
    return tp_error(p, off, -E2BIG, "nesting is deeper than the limit of %u levels",
                    p->lim.max_depth);
}

/* A new table under key kp of t (which takes over kp->s). */
static int new_child_table(struct tparser *p, struct toml_value *t, struct keypart *kp,
                           uint32_t flags, struct toml_value **out)
{
    if (t->depth >= p->lim.max_depth)
        return too_deep(p, kp->off);
    struct toml_value *c = tv_new(TOML_TABLE, kp->pos);
    if (!c)
        return tp_nomem(p);
    c->flags = flags;
    c->depth = t->depth + 1;
    if (tab_add(t, kp->s, kp->len, kp->pos, c)) {
        free(c);
        return tp_nomem(p);
    }
    kp->s = NULL;
    *out = c;
    return 0;
}

/* What v is, with an article, for messages: "an integer", "a static array". */
static const char *a_type(const struct toml_value *v)
{
    switch (v->type) {
    case TOML_TABLE:
        return v->flags & TF_INLINE ? "an inline table" : "a table";
    case TOML_ARRAY:
        return v->flags & TF_AOT ? "an array of tables" : "a static array";
    case TOML_STRING:
        return "a string";
    case TOML_INTEGER:
        return "an integer";
    case TOML_FLOAT:
        return "a float";
    case TOML_BOOL:
        return "a boolean";
    case TOML_DATETIME:
        return "an offset date-time";
    case TOML_DATETIME_LOCAL:
        return "a local date-time";
    case TOML_DATE_LOCAL:
        return "a local date";
    default:
        return "a local time";
    }
}

/* Explains why key kp, holding v, cannot be entered as a table. */
static int cannot_extend(struct tparser *p, const struct keypart *kp, const struct toml_value *v)
{
    char q[KEYQ];

    if (v->type == TOML_TABLE && (v->flags & TF_INLINE))
        return tp_error(p, kp->off, -EINVAL, "cannot add to inline table %s", quote_part(kp, q));
    if (v->type == TOML_TABLE)
        return tp_error(p, kp->off, -EINVAL,
                        "cannot add to table %s with dotted keys after its [header]",
                        quote_part(kp, q));
    if (v->type == TOML_ARRAY)
        return tp_error(p, kp->off, -EINVAL, "cannot add to array %s: it is not an array of tables",
                        quote_part(kp, q));
    return tp_error(p, kp->off, -EINVAL, "key %s is already defined as %s", quote_part(kp, q),
                    a_type(v));
}

/* For a header: walks the tables of all key parts but the last from the
 * root, making missing ones implicitly; an array of tables stands for its
 * last element. */
static int walk_header(struct tparser *p, struct toml_value **out)
{
    struct toml_value *t = p->root;

    for (size_t k = 0; k + 1 < p->npath; k++) {
        struct keypart *kp = &p->path[k];
        ptrdiff_t i = tab_find(t, kp->s, kp->len);
        if (i < 0) {
            int rc = new_child_table(p, t, kp, TF_IMPLICIT, &t);
            if (rc)
                return rc;
            continue;
        }
        struct toml_value *v = t->u.tab.kv[i].val;
        if (v->type == TOML_ARRAY && (v->flags & TF_AOT))
            v = v->u.arr.v[v->u.arr.len - 1];
        else if (v->type != TOML_TABLE || (v->flags & TF_INLINE))
            return cannot_extend(p, kp, v);
        t = v;
    }
    *out = t;
    return 0;
}

/* For a key/value: walks the tables of all key parts but the last from t,
 * making missing ones. Dotted keys may not reach into tables defined by a
 * [header] or inline, nor into arrays (TOML 1.0, "Table"). */
static int walk_dotted(struct tparser *p, struct toml_value *t, struct toml_value **out)
{
    for (size_t k = 0; k + 1 < p->npath; k++) {
        struct keypart *kp = &p->path[k];
        ptrdiff_t i = tab_find(t, kp->s, kp->len);
        if (i < 0) {
            int rc = new_child_table(p, t, kp, TF_DOTTED, &t);
            if (rc)
                return rc;
            continue;
        }
        struct toml_value *v = t->u.tab.kv[i].val;
        if (v->type != TOML_TABLE || (v->flags & (TF_INLINE | TF_HEADER)))
            return cannot_extend(p, kp, v);
        v->flags |= TF_DOTTED;
        t = v;
    }
    *out = t;
    return 0;
}

/* [[a.b]]: appends a table to array of tables b in t. */
static int open_array_table(struct tparser *p, struct toml_value *t, struct keypart *kp)
{
    char q[KEYQ];
    struct toml_value *arr;
    ptrdiff_t i = tab_find(t, kp->s, kp->len);

    if (i >= 0) {
        arr = t->u.tab.kv[i].val;
        if (arr->type != TOML_ARRAY || !(arr->flags & TF_AOT))
            return tp_error(p, kp->off, -EINVAL, "key %s is already defined as %s",
                            quote_part(kp, q), a_type(arr));
    } else {
        if (t->depth >= p->lim.max_depth)
            return too_deep(p, kp->off);
        arr = tv_new(TOML_ARRAY, kp->pos);
        if (!arr)
            return tp_nomem(p);
        arr->flags = TF_AOT;
        arr->depth = t->depth + 1;
        if (tab_add(t, kp->s, kp->len, kp->pos, arr)) {
            free(arr);
            return tp_nomem(p);
        }
        kp->s = NULL;
    }
    if (arr->depth >= p->lim.max_depth)
        return too_deep(p, kp->off);
    struct toml_value *elem = tv_new(TOML_TABLE, kp->pos);
    if (!elem)
        return tp_nomem(p);
    elem->flags = TF_HEADER;
    elem->depth = arr->depth + 1;
    if (arr_add(arr, elem)) {
        free(elem);
        return tp_nomem(p);
    }
    p->cur = elem;
    return 0;
}

/* [a.b]: defines table b in t, unless something defined it already; a
 * table made implicitly by an earlier [a.b.c] may be defined once. */
static int open_table(struct tparser *p, struct toml_value *t, struct keypart *kp)
{
    char q[KEYQ];
    ptrdiff_t i = tab_find(t, kp->s, kp->len);

    if (i < 0)
        return new_child_table(p, t, kp, TF_HEADER, &p->cur);
    struct toml_value *v = t->u.tab.kv[i].val;
    if (v->type != TOML_TABLE)
        return tp_error(p, kp->off, -EINVAL, "key %s is already defined as %s", quote_part(kp, q),
                        a_type(v));
    if (v->flags != TF_IMPLICIT)
        return tp_error(p, kp->off, -EINVAL, "table %s is already defined", quote_part(kp, q));
    /* from now on it is known by its own header */
    v->flags = TF_HEADER;
    v->pos = kp->pos;
    t->u.tab.kv[i].pos = kp->pos;
    p->cur = v;
    return 0;
}

/* A [table] or [[array of tables]] header line, up to its closing bracket. */
static int parse_header(struct tparser *p)
{
    bool aot = tp_peek_at(p, 1) == '[';
    struct toml_value *t = NULL;
    char b[16];

    p->i += aot ? 2 : 1;
    int rc = scan_key(p);
    if (rc)
        return rc;
    if (tp_peek(p) != ']' || (aot && tp_peek_at(p, 1) != ']'))
        return tp_error(p, p->i, -EINVAL, "expected '%s' to close the header, found %s",
                        aot ? "]]" : "]", tp_describe(p, p->i, b, sizeof(b)));
    p->i += aot ? 2 : 1;
    rc = walk_header(p, &t);
    if (rc)
        return rc;
    struct keypart *kp = &p->path[p->npath - 1];
    return aot ? open_array_table(p, t, kp) : open_table(p, t, kp);
}

/*
 * `key =` (p->i at the key) whose value goes into t: walks the dotted
 * parts, rejects a duplicate, and moves the last part into *key.
 */
static int scan_key_eq(struct tparser *p, struct toml_value *t, struct toml_value **target,
                       struct keypart *key)
{
    char q[KEYQ], b[16];
    int rc = scan_key(p);

    if (!rc)
        rc = walk_dotted(p, t, target);
    if (rc)
        return rc;
    struct keypart *kp = &p->path[p->npath - 1];
    if (tab_find(*target, kp->s, kp->len) >= 0)
        return tp_error(p, kp->off, -EINVAL, "duplicate key %s", quote_part(kp, q));
    if (tp_peek(p) != '=')
        return tp_error(p, p->i, -EINVAL, "expected '=' after key %s, found %s", quote_part(kp, q),
                        tp_describe(p, p->i, b, sizeof(b)));
    p->i++;
    tp_skip_ws(p);
    *key = *kp;
    kp->s = NULL;
    return 0;
}

static int push_frame(struct tparser *p, struct toml_value *c)
{
    struct frame *f = toml_grow(p->frames, &p->cap_frames, p->nframes, 1, sizeof(*f));

    if (!f)
        return tp_nomem(p);
    p->frames = f;
    f[p->nframes++] = (struct frame){.c = c};
    return 0;
}

static struct frame *top(struct tparser *p)
{
    return &p->frames[p->nframes - 1];
}

/* Adds v to the innermost open array or inline table (at its pending key). */
static int attach(struct tparser *p, struct toml_value *v)
{
    struct frame *f = top(p);

    if (f->c->type == TOML_ARRAY)
        return arr_add(f->c, v) ? tp_nomem(p) : 0;
    if (tab_add(f->target, f->key.s, f->key.len, f->key.pos, v))
        return tp_nomem(p);
    f->key.s = NULL;
    return 0;
}

/* Depth of the container the next value goes into; base is the depth of
 * the table holding the whole value. */
static uint32_t parent_depth(struct tparser *p, uint32_t base)
{
    if (!p->nframes)
        return base;
    struct frame *f = top(p);
    return f->c->type == TOML_ARRAY ? f->c->depth : f->target->depth;
}

/* Opens the array or inline table at p->i, attached to its parent at once
 * so that one toml_free() of the outermost value cleans up after errors. */
static int open_container(struct tparser *p, uint32_t base, struct toml_value **outer)
{
    bool arr = tp_peek(p) == '[';
    uint32_t depth = parent_depth(p, base);

    if (depth >= p->lim.max_depth)
        return too_deep(p, p->i);
    struct toml_value *v = tv_new(arr ? TOML_ARRAY : TOML_TABLE, tp_pos(p, p->i));
    if (!v)
        return tp_nomem(p);
    v->depth = depth + 1;
    v->flags = arr ? 0 : TF_INLINE;
    int rc = 0;
    if (!p->nframes)
        *outer = v;
    else
        rc = attach(p, v);
    if (rc) {
        toml_free(v);
        return rc;
    }
    p->i++;
    return push_frame(p, v);
}

/*
 * In the innermost container, after an element (after_elem) or right after
 * its opening bracket: consumes separators and closing brackets, closing
 * as many levels as end here. Returns with *done when the outermost value
 * is complete, else with p->i at the next element (past `key =` in an
 * inline table). Arrays may span lines and end with a comma; inline tables
 * may do neither (TOML 1.0).
 */
static int continue_container(struct tparser *p, bool after_elem, bool *done)
{
    char b[16];

    for (;;) {
        struct frame *f = top(p);
        bool arr = f->c->type == TOML_ARRAY;
        if (arr)
            tp_skip_ws_nl(p);
        else
            tp_skip_ws(p);
        int c = tp_peek(p);
        if (c == (arr ? ']' : '}')) {
            p->i++;
            if (--p->nframes == 0) {
                *done = true;
                return 0;
            }
            after_elem = true;
            continue;
        }
        if (after_elem) {
            if (c != ',')
                return tp_error(p, p->i, -EINVAL, "expected ',' or '%c' after %s, found %s",
                                arr ? ']' : '}', arr ? "array element" : "inline table value",
                                tp_describe(p, p->i, b, sizeof(b)));
            p->i++;
            after_elem = false;
            if (arr)
                continue; /* a trailing comma may come before ']' */
            tp_skip_ws(p);
            if (tp_peek(p) == '}')
                return tp_error(p, p->i, -EINVAL, "trailing comma in inline table");
        }
        if (arr)
            return 0;
        return scan_key_eq(p, f->c, &f->target, &f->key);
    }
}

static void drop_frames(struct tparser *p)
{
    for (size_t k = 0; k < p->nframes; k++)
        free(p->frames[k].key.s);
    p->nframes = 0;
}

/* The value at p->i, going into table t; the caller owns *out. */
static int parse_value(struct tparser *p, const struct toml_value *t, struct toml_value **out)
{
    struct toml_value *outer = NULL;
    bool done = false;
    int rc;

    p->nframes = 0;
    do {
        int c = tp_peek(p);
        if (c == '[' || c == '{') {
            rc = open_container(p, t->depth, &outer);
            if (!rc)
                rc = continue_container(p, false, &done);
        } else {
            struct toml_value *v;
            rc = tp_scan_scalar(p, &v);
            if (!rc && !p->nframes) {
                *out = v;
                return 0;
            }
            if (!rc && (rc = attach(p, v)))
                toml_free(v);
            if (!rc)
                rc = continue_container(p, true, &done);
        }
    } while (!rc && !done);
    if (rc) {
        drop_frames(p);
        toml_free(outer);
        return rc;
    }
    *out = outer;
    return 0;
}

/* `key = value` at p->i in the table of the current section. */
static int parse_keyval(struct tparser *p)
{
    struct toml_value *t = NULL, *v = NULL;
    struct keypart key;
    int rc = scan_key_eq(p, p->cur, &t, &key);

    if (rc)
        return rc;
    rc = parse_value(p, t, &v);
    if (rc) {
        free(key.s);
        return rc;
    }
    if (tab_add(t, key.s, key.len, key.pos, v)) {
        free(key.s);
        toml_free(v);
        return tp_nomem(p);
    }
    return 0;
}

/* After a key/value or header: only a comment may follow on the line. */
static int parse_line_end(struct tparser *p)
{
    char b[16];

    tp_skip_ws(p);
    tp_skip_comment(p);
    if (tp_eof(p) || tp_eat_newline(p))
        return 0;
    return tp_error(p, p->i, -EINVAL, "expected end of line, found %s",
                    tp_describe(p, p->i, b, sizeof(b)));
}

static int parse_document(struct tparser *p)
{
    p->cur = p->root;
    for (;;) {
        tp_skip_ws_nl(p);
        if (tp_eof(p))
            return 0;
        int rc = tp_peek(p) == '[' ? parse_header(p) : parse_keyval(p);
        if (!rc)
            rc = parse_line_end(p);
        if (rc)
            return rc;
    }
}

static void set_limits(struct tparser *p, const struct toml_limits *lim)
{
    p->lim = lim ? *lim : (struct toml_limits){0};
    if (!p->lim.max_input)
        p->lim.max_input = TOML_DEFAULT_MAX_INPUT;
    if (!p->lim.max_depth)
        p->lim.max_depth = TOML_DEFAULT_MAX_DEPTH;
    if (!p->lim.max_string)
        p->lim.max_string = TOML_DEFAULT_MAX_STRING;
}

static int parse(struct tparser *p)
{
    if (p->n > p->lim.max_input)
        return tp_error(p, 0, -E2BIG, "input is larger than the limit of %zu bytes",
                        p->lim.max_input);
    if (p->n >= 3 && !memcmp(p->s, "\xef\xbb\xbf", 3))
        p->start = p->i = 3; /* a UTF-8 byte order mark */
    int rc = tp_check_text(p);
    if (rc)
        return rc;
    p->root = tv_new(TOML_TABLE, (struct toml_pos){1, 1});
    if (!p->root)
        return tp_nomem(p);
    return parse_document(p);
}

int toml_parse(const char *buf, size_t len, const struct toml_limits *lim, struct toml_value **out,
               struct toml_error *err)
{
    struct tparser p = {.s = buf ? buf : "", .n = len, .err = err, .pc = {1, 1}};

    if (err)
        memset(err, 0, sizeof(*err));
    if (!out)
        return -EINVAL;
    *out = NULL;
    set_limits(&p, lim);
    int rc = buf || !len ? parse(&p) : tp_error(&p, 0, -EINVAL, "no input buffer");
    path_clear(&p);
    free(p.path);
    free(p.frames);
    free(p.sb.p);
    if (p.cloc)
        freelocale(p.cloc);
    if (rc) {
        toml_free(p.root);
        return rc;
    }
    *out = p.root;
    return 0;
}
