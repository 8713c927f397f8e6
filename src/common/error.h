/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Error records for failures a person or an API client must understand.
 *
 * Fallible functions return an int: >= 0 on success, a negative errno on
 * failure. Where the reason matters to a person (spec decoding, validation,
 * replacement, config conversion), the function also appends to a
 * caller-owned list of error records, each with the JSON pointer of the
 * offending field and a sentence. Validators append every problem they find
 * instead of stopping at the first, so a client fixes its spec in one round.
 *
 * Errors are reported once, at the edge (CLI output, HTTP body, log).
 */
#ifndef CELLA_COMMON_ERROR_H
#define CELLA_COMMON_ERROR_H

#include <stdarg.h>
#include <stddef.h>

#define CELLA_ERR_POINTER_MAX 256
#define CELLA_ERR_MESSAGE_MAX 512
/* Hard cap on records kept; later ones are counted but dropped. */
#define CELLA_ERR_MAX_RECORDS 256

struct cella_error {
    int code;                            /* negative errno */
    char pointer[CELLA_ERR_POINTER_MAX]; /* JSON pointer, "" for the whole document */
    char message[CELLA_ERR_MESSAGE_MAX];
};

struct cella_errors {
    struct cella_error *items;
    size_t count;   /* records kept */
    size_t dropped; /* records over CELLA_ERR_MAX_RECORDS */
};

/*
 * Appends a record and returns `code` (which must be negative), so a failure
 * path is one line: `return cella_err(errs, -EINVAL, ptr, "bad %s", x);`.
 * `errs` may be NULL (the record is discarded). Out of memory while
 * recording is counted in `dropped`; the return value is still `code`.
 */
int cella_err(struct cella_errors *errs, int code, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int cella_verr(struct cella_errors *errs, int code, const char *pointer, const char *fmt,
               va_list ap) __attribute__((format(printf, 4, 0)));

/* Total number of problems seen (kept + dropped). */
static inline size_t cella_errors_total(const struct cella_errors *errs)
{
    return errs ? errs->count + errs->dropped : 0;
}

/* Frees the records and resets the list; accepts NULL. */
void cella_errors_clear(struct cella_errors *errs);

/*
 * Sorts records by pointer, then message, so output is stable whatever
 * order a validator walked its maps in.
 */
void cella_errors_sort(struct cella_errors *errs);

/* Writes "pointer: message" lines to a FILE* (given as void* to keep stdio out). */
void cella_errors_print(const struct cella_errors *errs, void *file);

#endif
