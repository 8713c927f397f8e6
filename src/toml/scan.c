/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The TOML lexer: encoding checks, positions, errors, whitespace, keys and
 * scalar values (strings, numbers, booleans, dates and times).
 */
#include "toml/toml_int.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tp_error(struct tparser *p, size_t off, int rc, const char *fmt, ...)
{
    va_list ap;

    if (p->failed)
        return rc;
    p->failed = rc;
    if (p->err) {
        p->err->pos = tp_pos(p, off);
        va_start(ap, fmt);
        vsnprintf(p->err->msg, sizeof(p->err->msg), fmt, ap);
        va_end(ap);
    }
    return rc;
}

int tp_nomem(struct tparser *p)
{
    return tp_error(p, p->i, -ENOMEM, "out of memory");
}

struct toml_pos tp_pos(struct tparser *p, size_t off)
{
    if (off > p->n)
        off = p->n;
    /* Positions are asked for in input order, so walking forward from the
     * last answer keeps the total cost linear; only errors go back. */
    if (off < p->pc_off || p->pc_off < p->start) {
        p->pc_off = p->start;
        p->pc = (struct toml_pos){1, 1};
    }
    for (size_t i = p->pc_off; i < off; i++) {
        unsigned char c = (unsigned char)p->s[i];
        if (c == '\n') {
            p->pc.line++;
            p->pc.col = 1;
        } else if ((c & 0xc0) != 0x80) { /* count code points, not bytes */
            p->pc.col++;
        }
    }
    p->pc_off = off;
    return p->pc;
}

/* Length of the UTF-8 sequence led by c (input is validated before use). */
static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Decodes the validated UTF-8 sequence at s, which has n bytes left. */
static uint32_t utf8_decode(const unsigned char *s, size_t n)
{
    size_t len = utf8_len(s[0]);
    static const unsigned char lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};

    if (len > n)
        return s[0];
    uint32_t cp = s[0] & lead_mask[len];
    for (size_t i = 1; i < len; i++)
        cp = cp << 6 | (s[i] & 0x3f);
    return cp;
}

const char *tp_describe(struct tparser *p, size_t off, char *buf, size_t n)
{
    if (off >= p->n)
        return "end of input";
    unsigned char c = (unsigned char)p->s[off];
    if (c == '\n' || c == '\r')
        return "end of line";
    if (c >= 0x20 && c < 0x7f)
        snprintf(buf, n, "'%c'", c);
    else
        snprintf(buf, n, "U+%04X",
                 (unsigned)utf8_decode((const unsigned char *)p->s + off, p->n - off));
    return buf;
}

const char *tp_quote(const char *key, size_t len, char *buf, size_t n)
{
    size_t o = 0, i = 0, room = n - 5; /* keep space for `..."` and the NUL */

    buf[o++] = '"';
    while (i < len) {
        unsigned char c = (unsigned char)key[i];
        char tmp[8];
        size_t tl, used;
        if (c < 0x20 || c == 0x7f) {
            tl = (size_t)snprintf(tmp, sizeof(tmp), "\\x%02x", c);
            used = 1;
        } else if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            tl = 2;
            used = 1;
        } else {
            /* whole characters only, so the message stays valid UTF-8 */
            tl = used = utf8_len(c) <= len - i ? utf8_len(c) : len - i;
            memcpy(tmp, key + i, tl);
        }
        if (o + tl > room)
            break;
        memcpy(buf + o, tmp, tl);
        o += tl;
        i += used;
    }
    if (i < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* Length of a valid UTF-8 scalar value at s[0..n), or 0 (overlong forms,
 * surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_valid(const unsigned char *s, size_t n)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t len;

    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (len > n)
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0; /* overlong */
    else if (s[0] == 0xed)
        hi = 0x9f; /* surrogates */
    else if (s[0] == 0xf0)
        lo = 0x90; /* overlong */
    else if (s[0] == 0xf4)
        hi = 0x8f; /* above U+10FFFF */
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/*
 * Checks the whole input once: valid UTF-8, and no control characters
 * other than tab and line feed (CR only as part of CRLF). No TOML context
 * allows any other raw control character, so the lexer can then assume
 * clean text.
 */
int tp_check_text(struct tparser *p)
{
    const unsigned char *s = (const unsigned char *)p->s;

    for (size_t i = p->start; i < p->n;) {
        unsigned char c = s[i];
        if (c >= 0x80) {
            size_t len = utf8_valid(s + i, p->n - i);
            if (!len)
                return tp_error(p, i, -EINVAL, "invalid UTF-8 byte 0x%02x", c);
            i += len;
            continue;
        }
        if (c == '\r' && (i + 1 == p->n || s[i + 1] != '\n'))
            return tp_error(p, i, -EINVAL, "carriage return not followed by line feed");
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f)
            return tp_error(p, i, -EINVAL, "control character U+%04X is not allowed", c);
        i++;
    }
    return 0;
}

void tp_skip_ws(struct tparser *p)
{
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t'))
        p->i++;
}

/* Skips a comment up to (not including) the end of its line. */
void tp_skip_comment(struct tparser *p)
{
    if (tp_peek(p) != '#')
        return;
    while (p->i < p->n && p->s[p->i] != '\n' && p->s[p->i] != '\r')
        p->i++;
}

bool tp_eat_newline(struct tparser *p)
{
    if (tp_peek(p) == '\n') {
        p->i++;
        return true;
    }
    if (tp_peek(p) == '\r' && tp_peek_at(p, 1) == '\n') {
        p->i += 2;
        return true;
    }
    return false;
}

/* Skips whitespace, comments and newlines (between array elements). */
void tp_skip_ws_nl(struct tparser *p)
{
    do {
        tp_skip_ws(p);
        tp_skip_comment(p);
    } while (tp_eat_newline(p));
}

static int sb_put(struct tparser *p, const char *s, size_t n)
{
    struct sbuf *b = &p->sb;

    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 64;
        while (n > cap - b->len) {
            if (cap > SIZE_MAX / 2)
                return tp_nomem(p);
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (!np)
            return tp_nomem(p);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int sb_putc(struct tparser *p, char c)
{
    return sb_put(p, &c, 1);
}

/* NUL-terminates the buffer (not counted in len) and checks the length limit. */
static int sb_finish(struct tparser *p, size_t start, const char *what)
{
    if (p->sb.len > p->lim.max_string)
        return tp_error(p, start, -E2BIG, "%s is longer than the limit of %zu bytes", what,
                        p->lim.max_string);
    int rc = sb_putc(p, '\0');
    if (rc)
        return rc;
    p->sb.len--;
    return 0;
}

/* A malloc'ed copy of the (finished) buffer. */
static char *sb_dup(struct tparser *p)
{
    char *s = malloc(p->sb.len + 1);

    if (s)
        memcpy(s, p->sb.p, p->sb.len + 1);
    else
        tp_nomem(p);
    return s;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int put_utf8(struct tparser *p, uint32_t cp)
{
    char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return sb_put(p, u, n);
}

/* \uXXXX or \UXXXXXXXX at p->i (the backslash). */
static int scan_unicode_escape(struct tparser *p)
{
    size_t bs = p->i;
    char u = (char)tp_peek_at(p, 1);
    int nd = u == 'u' ? 4 : 8;
    uint32_t cp = 0;

    for (int k = 0; k < nd; k++) {
        int h = hexval(tp_peek_at(p, 2 + (size_t)k));
        if (h < 0)
            return tp_error(p, bs, -EINVAL, "\\%c escape needs %d hex digits", u, nd);
        cp = cp << 4 | (uint32_t)h;
    }
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
        return tp_error(p, bs, -EINVAL, "escape \\%c%.*s is not a Unicode scalar value", u, nd,
                        p->s + bs + 2);
    p->i += 2 + (size_t)nd;
    return put_utf8(p, cp);
}

/* An escape sequence at p->i (the backslash) inside a basic string. */
static int scan_escape(struct tparser *p)
{
    static const char from[] = "btnfr\"\\", to[] = "\b\t\n\f\r\"\\";
    int c = tp_peek_at(p, 1);
    char buf[16];

    if (c == 'u' || c == 'U')
        return scan_unicode_escape(p);
    const char *hit = c > 0 ? strchr(from, c) : NULL;
    if (!hit)
        return tp_error(p, p->i, -EINVAL, "invalid escape sequence: backslash followed by %s",
                        tp_describe(p, p->i + 1, buf, sizeof(buf)));
    p->i += 2;
    return sb_putc(p, to[hit - from]);
}

/* c is one of the (non-NUL) characters of set; strchr alone would match NUL. */
static bool in_set(const char *set, char c)
{
    return c && strchr(set, c);
}

/* Copies bytes up to the first one in stop (or the end) into the buffer. */
static int copy_until(struct tparser *p, const char *stop)
{
    size_t run = p->i;

    while (p->i < p->n && !in_set(stop, p->s[p->i]))
        p->i++;
    return sb_put(p, p->s + run, p->i - run);
}

/* A string on one line, "..." or '...'; p->i at the opening quote. */
static int scan_line_string(struct tparser *p)
{
    size_t start = p->i;
    char q = p->s[p->i++];
    const char *stop = q == '"' ? "\"\\\n\r" : "'\n\r";

    for (;;) {
        int rc = copy_until(p, stop);
        if (rc)
            return rc;
        int c = tp_peek(p);
        if (c == q) {
            p->i++;
            return 0;
        }
        if (c != '\\')
            return tp_error(p, start, -EINVAL, "unterminated string");
        rc = scan_escape(p);
        if (rc)
            return rc;
    }
}

/* After a backslash in a multi-line basic string: true (and skips it all) if
 * only whitespace follows to the end of the line. */
static bool skip_line_ending_backslash(struct tparser *p)
{
    size_t j = p->i + 1;

    while (j < p->n && (p->s[j] == ' ' || p->s[j] == '\t'))
        j++;
    if (j >= p->n || (p->s[j] != '\n' && p->s[j] != '\r'))
        return false;
    p->i = j;
    while (p->i < p->n && in_set(" \t\r\n", p->s[p->i]))
        p->i++;
    return true;
}

/* Quotes at p->i inside a multi-line string: 1-2 are content, 3 close it,
 * 4-5 are 1-2 quotes of content followed by the closing delimiter. Returns
 * 1 when the string is closed. */
static int scan_quote_run(struct tparser *p, char q)
{
    size_t nq = 0;

    while (nq < 6 && tp_peek_at(p, nq) == q)
        nq++;
    if (nq == 6)
        return tp_error(p, p->i, -EINVAL, "too many quotes in a row in multi-line string");
    int rc = sb_put(p, p->s + p->i, nq >= 3 ? nq - 3 : nq);
    p->i += nq;
    return rc ? rc : nq >= 3;
}

/* A multi-line string (triple quotes); p->i at the opening delimiter. */
static int scan_multi_string(struct tparser *p)
{
    size_t start = p->i;
    char q = p->s[p->i];
    const char *stop = q == '"' ? "\"\\\r" : "'\r";

    p->i += 3;
    tp_eat_newline(p); /* a newline right after the delimiter is trimmed */
    for (;;) {
        int rc = copy_until(p, stop);
        if (rc)
            return rc;
        if (tp_eof(p))
            return tp_error(p, start, -EINVAL, "unterminated multi-line string");
        char c = p->s[p->i];
        if (c == '\r') { /* CRLF (checked up front) reads as LF */
            p->i += 2;
            rc = sb_putc(p, '\n');
        } else if (c == '\\') {
            rc = skip_line_ending_backslash(p) ? 0 : scan_escape(p);
        } else {
            rc = scan_quote_run(p, q);
            if (rc == 1)
                return 0;
        }
        if (rc)
            return rc;
    }
}

static bool is_triple(const struct tparser *p)
{
    int q = tp_peek(p);
    return tp_peek_at(p, 1) == q && tp_peek_at(p, 2) == q;
}

/* Any string form at p->i; decoded into p->sb. */
static int scan_string(struct tparser *p)
{
    size_t start = p->i;
    int rc;

    p->sb.len = 0;
    rc = is_triple(p) ? scan_multi_string(p) : scan_line_string(p);
    return rc ? rc : sb_finish(p, start, "string");
}

static bool is_bare_key_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

int tp_scan_key_part(struct tparser *p, struct keypart *kp)
{
    size_t start = p->i;
    int c = tp_peek(p), rc;
    char buf[16];

    kp->off = start;
    kp->pos = tp_pos(p, start);
    p->sb.len = 0;
    if (c == '"' || c == '\'') {
        if (is_triple(p))
            return tp_error(p, start, -EINVAL, "a multi-line string cannot be a key");
        rc = scan_line_string(p);
    } else if (is_bare_key_char(c)) {
        while (is_bare_key_char(tp_peek(p)))
            p->i++;
        rc = sb_put(p, p->s + start, p->i - start);
    } else {
        return tp_error(p, start, -EINVAL, "expected a key, found %s",
                        tp_describe(p, start, buf, sizeof(buf)));
    }
    if (!rc)
        rc = sb_finish(p, start, "key");
    if (rc)
        return rc;
    kp->s = sb_dup(p);
    if (!kp->s)
        return -ENOMEM;
    kp->len = p->sb.len;
    return 0;
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

/* Two decimal digits at s, or -1. */
static int dig2(const char *s)
{
    return is_digit(s[0]) && is_digit(s[1]) ? (s[0] - '0') * 10 + (s[1] - '0') : -1;
}

/* True if the n bytes at p->i match pat, where 'd' stands for a digit. */
static bool match(const struct tparser *p, const char *pat)
{
    size_t n = strlen(pat);

    if (n > p->n - p->i)
        return false;
    for (size_t k = 0; k < n; k++) {
        char c = p->s[p->i + k];
        if (pat[k] == 'd' ? !is_digit(c) : c != pat[k])
            return false;
    }
    return true;
}

static int days_in_month(int y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    return m == 2 && leap ? 29 : days[m - 1];
}

/* YYYY-MM-DD at p->i, appended to p->sb. */
static int scan_date(struct tparser *p)
{
    const char *s = p->s + p->i;

    if (!match(p, "dddd-dd-dd"))
        return tp_error(p, p->i, -EINVAL, "invalid date: expected YYYY-MM-DD");
    int y = dig2(s) * 100 + dig2(s + 2), m = dig2(s + 5), d = dig2(s + 8);
    if (m < 1 || m > 12)
        return tp_error(p, p->i, -EINVAL, "invalid date: month %02d", m);
    if (d < 1 || d > days_in_month(y, m))
        return tp_error(p, p->i, -EINVAL, "invalid date: %04d-%02d has no day %02d", y, m, d);
    p->i += 10;
    return sb_put(p, s, 10);
}

/* HH:MM:SS[.fraction] at p->i, appended to p->sb with the fraction padded
 * to milliseconds. */
static int scan_time(struct tparser *p)
{
    const char *s = p->s + p->i;
    size_t start = p->i;

    if (!match(p, "dd:dd:dd"))
        return tp_error(p, p->i, -EINVAL, "invalid time: expected HH:MM:SS");
    /* 60 seconds: RFC 3339 allows a leap second */
    if (dig2(s) > 23 || dig2(s + 3) > 59 || dig2(s + 6) > 60)
        return tp_error(p, p->i, -EINVAL, "invalid time %.8s", s);
    p->i += 8;
    if (tp_peek(p) != '.')
        return sb_put(p, s, 8);
    p->i++;
    size_t nd = 0;
    while (is_digit(tp_peek(p))) {
        p->i++;
        nd++;
    }
    if (!nd)
        return tp_error(p, p->i, -EINVAL, "invalid time: expected digits after '.'");
    int rc = sb_put(p, s, p->i - start);
    for (; !rc && nd < 3; nd++)
        rc = sb_putc(p, '0');
    return rc;
}

/* Z or +HH:MM / -HH:MM at p->i, appended to p->sb; no offset is fine. */
static int scan_offset(struct tparser *p, bool *has)
{
    const char *s = p->s + p->i;
    int c = tp_peek(p);

    *has = true;
    if (c == 'Z' || c == 'z') {
        p->i++;
        return sb_putc(p, 'Z');
    }
    if (c != '+' && c != '-') {
        *has = false;
        return 0;
    }
    if (!match(p, "+dd:dd") && !match(p, "-dd:dd"))
        return tp_error(p, p->i, -EINVAL, "invalid time offset: expected %cHH:MM", c);
    if (dig2(s + 1) > 23 || dig2(s + 4) > 59)
        return tp_error(p, p->i, -EINVAL, "invalid time offset %.6s", s);
    p->i += 6;
    return sb_put(p, s, 6);
}

/* A date, time or date-time at p->i; the caller saw its first digits. */
static int scan_datetime(struct tparser *p, enum toml_type *type)
{
    bool has_date = match(p, "dddd-"), has_time = !has_date, has_off = false;
    int rc = 0;

    p->sb.len = 0;
    if (has_date) {
        rc = scan_date(p);
        int c = tp_peek(p);
        /* "date time" with a space is allowed; a space before anything
         * but a digit ends a plain date */
        if (!rc && (c == 'T' || c == 't' || (c == ' ' && is_digit(tp_peek_at(p, 1))))) {
            p->i++;
            has_time = true;
            rc = sb_putc(p, 'T');
        }
    }
    if (!rc && has_time)
        rc = scan_time(p);
    if (!rc && has_date && has_time)
        rc = scan_offset(p, &has_off);
    if (rc)
        return rc;
    *type = !has_date   ? TOML_TIME_LOCAL
            : !has_time ? TOML_DATE_LOCAL
            : has_off   ? TOML_DATETIME
                        : TOML_DATETIME_LOCAL;
    return 0;
}

static bool is_base_digit(int c, int base)
{
    if (base == 16)
        return hexval(c) >= 0;
    return c >= '0' && c < '0' + base;
}

/*
 * Digits of base from t[*k] on, single underscores allowed between two
 * digits. Returns the number of digits or -1 for a misplaced underscore.
 */
static ptrdiff_t digit_run(const char *t, size_t n, size_t *k, int base)
{
    ptrdiff_t nd = 0;

    while (*k < n) {
        char c = t[*k];
        if (is_base_digit(c, base)) {
            nd++;
        } else if (c == '_') {
            if (!nd || *k + 1 >= n || !is_base_digit(t[*k + 1], base))
                return -1;
        } else {
            break;
        }
        (*k)++;
    }
    return nd;
}

/* Accumulates the digits of t[0..n) (underscores skipped) in base; false on
 * overflow past max. */
static bool to_u64(const char *t, size_t n, int base, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    for (size_t k = 0; k < n; k++) {
        if (t[k] == '_')
            continue;
        uint64_t d = (uint64_t)hexval(t[k]);
        if (v > (max - d) / (uint64_t)base)
            return false;
        v = v * (uint64_t)base + d;
    }
    *out = v;
    return true;
}

/* 0x, 0o or 0b integer in t[0..n). */
static int parse_prefixed(struct tparser *p, size_t start, const char *t, size_t n, int64_t *out)
{
    int base = t[1] == 'x' ? 16 : t[1] == 'o' ? 8 : 2;
    size_t k = 2;
    uint64_t v;

    ptrdiff_t nd = digit_run(t, n, &k, base);
    if (nd <= 0 || k != n)
        return tp_error(p, start, -EINVAL, "invalid %s integer",
                        base == 16  ? "hexadecimal"
                        : base == 8 ? "octal"
                                    : "binary");
    if (!to_u64(t + 2, n - 2, base, INT64_MAX, &v))
        return tp_error(p, start, -EINVAL, "integer does not fit in 64 bits");
    *out = (int64_t)v;
    return 0;
}

/* Converts a validated decimal float (underscores allowed) locale-independently. */
static int parse_float(struct tparser *p, size_t start, const char *t, size_t n, double *out)
{
    if (!p->cloc) {
        p->cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
        if (!p->cloc)
            return tp_nomem(p);
    }
    p->sb.len = 0;
    for (size_t k = 0; k < n; k++) {
        int rc = t[k] == '_' ? 0 : sb_putc(p, t[k]);
        if (rc)
            return rc;
    }
    int rc = sb_putc(p, '\0');
    if (rc)
        return rc;
    *out = strtod_l(p->sb.p, NULL, p->cloc);
    if (isinf(*out))
        return tp_error(p, start, -EINVAL, "float is out of range");
    return 0;
}

/*
 * A decimal integer or float in t[0..n) (sign included): dec-int, then an
 * optional fraction and exponent, which make it a float.
 */
static int parse_decimal(struct tparser *p, size_t start, const char *t, size_t n,
                         struct toml_value *v)
{
    size_t k = t[0] == '+' || t[0] == '-' ? 1 : 0, ip = k;
    bool is_float = false;

    ptrdiff_t nd = digit_run(t, n, &k, 10);
    if (nd > 1 && t[ip] == '0')
        return tp_error(p, start, -EINVAL, "leading zeros are not allowed");
    if (nd > 0 && k < n && t[k] == '.') {
        k++;
        nd = digit_run(t, n, &k, 10);
        is_float = true;
    }
    if (nd > 0 && k < n && (t[k] == 'e' || t[k] == 'E')) {
        k++;
        if (k < n && (t[k] == '+' || t[k] == '-'))
            k++;
        nd = digit_run(t, n, &k, 10);
        is_float = true;
    }
    if (nd <= 0 || k != n)
        return tp_error(p, start, -EINVAL, "invalid number");
    if (is_float) {
        v->type = TOML_FLOAT;
        return parse_float(p, start, t, n, &v->u.f);
    }
    bool neg = t[0] == '-';
    uint64_t mag;
    /* -2^63 has no positive counterpart, hence the larger bound */
    if (!to_u64(t + ip, n - ip, 10, neg ? (uint64_t)INT64_MAX + 1 : INT64_MAX, &mag))
        return tp_error(p, start, -EINVAL, "integer does not fit in 64 bits");
    v->type = TOML_INTEGER;
    v->u.i = !neg ? (int64_t)mag : mag > INT64_MAX ? INT64_MIN : -(int64_t)mag;
    return 0;
}

/* A bare value: boolean, integer or float in the token t[0..n). */
static int parse_bare(struct tparser *p, size_t start, const char *t, size_t n,
                      struct toml_value *v)
{
    size_t k = t[0] == '+' || t[0] == '-' ? 1 : 0;
    char buf[48];

    if ((n == 4 && !memcmp(t, "true", 4)) || (n == 5 && !memcmp(t, "false", 5))) {
        v->type = TOML_BOOL;
        v->u.b = n == 4;
        return 0;
    }
    if (n - k == 3 && (!memcmp(t + k, "inf", 3) || !memcmp(t + k, "nan", 3))) {
        v->type = TOML_FLOAT;
        v->u.f = t[k] == 'i' ? INFINITY : NAN;
        if (t[0] == '-')
            v->u.f = -v->u.f;
        return 0;
    }
    if (n - k > 2 && t[k] == '0' && (t[k + 1] == 'x' || t[k + 1] == 'o' || t[k + 1] == 'b')) {
        if (k)
            return tp_error(p, start, -EINVAL,
                            "hexadecimal, octal and binary integers cannot have a sign");
        v->type = TOML_INTEGER;
        return parse_prefixed(p, start, t, n, &v->u.i);
    }
    if (k < n && is_digit(t[k]))
        return parse_decimal(p, start, t, n, v);
    return tp_error(p, start, -EINVAL, "invalid value %s (strings need quotes)",
                    tp_quote(t, n, buf, sizeof(buf)));
}

static bool is_token_char(int c)
{
    return is_bare_key_char(c) || c == '+' || c == '.';
}

/* Fills a new string-like value from p->sb. */
static int take_text(struct tparser *p, struct toml_value *v, enum toml_type type)
{
    v->type = type;
    v->u.str.s = sb_dup(p);
    v->u.str.len = p->sb.len;
    return v->u.str.s ? 0 : -ENOMEM;
}

/* Scans a scalar at p->i (a string, number, boolean, date or time). */
static int scan_scalar_into(struct tparser *p, struct toml_value *v)
{
    size_t start = p->i;
    int c = tp_peek(p), rc;
    enum toml_type type;
    char buf[16];

    if (c == '"' || c == '\'') {
        rc = scan_string(p);
        return rc ? rc : take_text(p, v, TOML_STRING);
    }
    if (match(p, "dddd-") || match(p, "dd:")) {
        rc = scan_datetime(p, &type);
        if (!rc)
            rc = sb_finish(p, start, "date-time");
        return rc ? rc : take_text(p, v, type);
    }
    while (is_token_char(tp_peek(p)))
        p->i++;
    if (p->i == start)
        return tp_error(p, start, -EINVAL, "expected a value, found %s",
                        tp_describe(p, start, buf, sizeof(buf)));
    return parse_bare(p, start, p->s + start, p->i - start, v);
}

int tp_scan_scalar(struct tparser *p, struct toml_value **out)
{
    struct toml_value *v = tv_new(TOML_BOOL, tp_pos(p, p->i));

    if (!v)
        return tp_nomem(p);
    int rc = scan_scalar_into(p, v);
    if (rc) {
        toml_free(v); /* frees any text according to v->type */
        return rc;
    }
    *out = v;
    return 0;
}
