/* SPDX-License-Identifier: MPL-2.0 */
/*
 * JSON pointers (RFC 6901) built up while walking a document, so every
 * error can name the exact field. A pointer lives in a fixed buffer; a
 * pointer too long to fit is truncated with "..." (it is only ever shown to
 * people).
 */
#ifndef CELLA_COMMON_JSONPTR_H
#define CELLA_COMMON_JSONPTR_H

#include <stddef.h>

#include "common/error.h"

struct jptr {
    char buf[CELLA_ERR_POINTER_MAX];
};

/* Sets p to "" (the whole document). */
void jptr_root(struct jptr *p);
/* Sets out to base + "/" + escaped token (~ -> ~0, / -> ~1). */
void jptr_key(struct jptr *out, const struct jptr *base, const char *token);
/* Sets out to base + "/" + index. */
void jptr_index(struct jptr *out, const struct jptr *base, size_t index);

#endif
