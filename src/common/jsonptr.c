/* SPDX-License-Identifier: MPL-2.0 */
#include "common/jsonptr.h"

#include <stdio.h>
#include <string.h>

void jptr_root(struct jptr *p)
{
    p->buf[0] = '\0';
}

static void mark_truncated(struct jptr *p)
{
    size_t n = sizeof(p->buf);
    memcpy(p->buf + n - 4, "...", 4);
}

void jptr_key(struct jptr *out, const struct jptr *base, const char *token)
{
    size_t cap = sizeof(out->buf);
    size_t n = strnlen(base->buf, cap - 1);
    if (out != base)
        memmove(out->buf, base->buf, n);
    if (n + 1 >= cap) {
        mark_truncated(out);
        return;
    }
    out->buf[n++] = '/';
    for (const char *c = token; *c; c++) {
        const char *esc = *c == '~' ? "~0" : *c == '/' ? "~1" : NULL;
        size_t need = esc ? 2 : 1;
        if (n + need >= cap) {
            mark_truncated(out);
            return;
        }
        if (esc) {
            out->buf[n++] = esc[0];
            out->buf[n++] = esc[1];
        } else {
            out->buf[n++] = *c;
        }
    }
    out->buf[n] = '\0';
}

void jptr_index(struct jptr *out, const struct jptr *base, size_t index)
{
    char num[24];
    snprintf(num, sizeof(num), "%zu", index);
    jptr_key(out, base, num);
}
