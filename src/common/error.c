/* SPDX-License-Identifier: MPL-2.0 */
#include "common/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cella_verr(struct cella_errors *errs, int code, const char *pointer, const char *fmt,
               va_list ap)
{
    if (!errs)
        return code;
    if (errs->count >= CELLA_ERR_MAX_RECORDS) {
        errs->dropped++;
        return code;
    }
    struct cella_error *grown = realloc(errs->items, (errs->count + 1) * sizeof(*grown));
    if (!grown) {
        errs->dropped++;
        return code;
    }
    errs->items = grown;
    struct cella_error *e = &errs->items[errs->count++];
    e->code = code;
    snprintf(e->pointer, sizeof(e->pointer), "%s", pointer ? pointer : "");
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    return code;
}

int cella_err(struct cella_errors *errs, int code, const char *pointer, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = cella_verr(errs, code, pointer, fmt, ap);
    va_end(ap);
    return r;
}

void cella_errors_clear(struct cella_errors *errs)
{
    if (!errs)
        return;
    free(errs->items);
    errs->items = NULL;
    errs->count = 0;
    errs->dropped = 0;
}

static int cmp_error(const void *a, const void *b)
{
    const struct cella_error *x = a, *y = b;
    int c = strcmp(x->pointer, y->pointer);
    return c ? c : strcmp(x->message, y->message);
}

void cella_errors_sort(struct cella_errors *errs)
{
    if (errs && errs->count > 1)
        qsort(errs->items, errs->count, sizeof(errs->items[0]), cmp_error);
}

void cella_errors_print(const struct cella_errors *errs, void *file)
{
    FILE *f = file;
    if (!errs)
        return;
    for (size_t i = 0; i < errs->count; i++) {
        const struct cella_error *e = &errs->items[i];
        if (e->pointer[0])
            fprintf(f, "%s: %s\n", e->pointer, e->message);
        else
            fprintf(f, "%s\n", e->message);
    }
    if (errs->dropped)
        fprintf(f, "(%zu more problems not shown)\n", errs->dropped);
}
