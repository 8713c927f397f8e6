/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Backend-specific calls beyond block.h and net.h, for the machine,
 * migration and tests. Device cores never include this header.
 */
#ifndef CELLA_BACKENDS_BACKENDS_H
#define CELLA_BACKENDS_BACKENDS_H

#include <stddef.h>
#include <stdint.h>

#include "backends/block.h"

/*
 * The current contents of a blob backend (for migration). The pointer stays
 * valid until blk_close(); the caller must drain (and submit nothing) while
 * it reads. -EINVAL if b is not a blob backend.
 */
int blk_blob_contents(struct blk_backend *b, const uint8_t **data, size_t *len);

/*
 * blk_open with flags. BLK_OPEN_NOLOCK: do not take the image lock (a
 * migration target probing an image its source still holds; never for
 * I/O that a guest could see).
 */
#define BLK_OPEN_NOLOCK 1u
int blk_open_ex(const struct spec_component *c, unsigned flags, struct blk_backend **out,
                struct cella_errors *errs);

/* Replaces a blob backend's contents (same size). -EINVAL otherwise. */
int blk_blob_set_contents(struct blk_backend *b, const uint8_t *data, size_t len);

/*
 * How a file backend runs its requests: "io_uring" or "threads" (a worker
 * pool, used when io_uring is unavailable or CELLA_BLK_FILE_THREADS=1 is
 * set), or NULL if b is not a file backend.
 */
const char *blk_file_engine(const struct blk_backend *b);

/* Whether a file backend uses O_DIRECT for aligned requests. */
int blk_file_is_direct(const struct blk_backend *b);

#endif
