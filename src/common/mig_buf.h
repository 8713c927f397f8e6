/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Device state payloads for live migration: a growable little-endian
 * writer and a bounded reader.
 *
 * A payload is what one device (or one vCPU, the irqchip, ...) needs to
 * continue on another host: a flat byte string, version-tagged by its
 * owner (each device header defines FOO_STATE_VERSION), written with
 * mig_put_* and read back with mig_get_*. The bytes come from a migration
 * peer, so they are untrusted: every mig_get_* is bounds-checked and a
 * short or malformed payload makes the reader "failed" (sticky); loaders
 * check mig_in_ok() / mig_in_done() and validate every value before use.
 *
 * Writers record allocation failure the same way (mig_out_ok()).
 */
#ifndef CELLA_COMMON_MIG_BUF_H
#define CELLA_COMMON_MIG_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest payload one device may produce (a sanity cap for readers too). */
#define MIG_PAYLOAD_MAX (16u << 20)

struct mig_out {
    uint8_t *buf;
    size_t len, cap;
    bool failed;
};

struct mig_in {
    const uint8_t *buf;
    size_t len, pos;
    bool failed;
};

void mig_out_init(struct mig_out *o);
void mig_out_free(struct mig_out *o);
static inline bool mig_out_ok(const struct mig_out *o)
{
    return !o->failed;
}
void mig_put_u8(struct mig_out *o, uint8_t v);
void mig_put_u16(struct mig_out *o, uint16_t v);
void mig_put_u32(struct mig_out *o, uint32_t v);
void mig_put_u64(struct mig_out *o, uint64_t v);
void mig_put_bool(struct mig_out *o, bool v);
void mig_put_bytes(struct mig_out *o, const void *p, size_t n);
/* A length-prefixed (u32) byte string. */
void mig_put_blob(struct mig_out *o, const void *p, size_t n);

void mig_in_init(struct mig_in *in, const void *buf, size_t len);
static inline bool mig_in_ok(const struct mig_in *in)
{
    return !in->failed;
}
/* True when every byte was consumed and nothing failed. */
static inline bool mig_in_done(const struct mig_in *in)
{
    return !in->failed && in->pos == in->len;
}
/* Marks the reader failed (a loader found an invalid value). */
static inline void mig_in_fail(struct mig_in *in)
{
    in->failed = true;
}
uint8_t mig_get_u8(struct mig_in *in);
uint16_t mig_get_u16(struct mig_in *in);
uint32_t mig_get_u32(struct mig_in *in);
uint64_t mig_get_u64(struct mig_in *in);
/* Fails unless the byte is 0 or 1. */
bool mig_get_bool(struct mig_in *in);
/* Copies n bytes (zero-fills dst on failure). */
void mig_get_bytes(struct mig_in *in, void *dst, size_t n);
/*
 * A blob of at most `max` bytes: returns a pointer into the input and its
 * length (NULL and 0 on failure).
 */
const uint8_t *mig_get_blob(struct mig_in *in, size_t max, size_t *len);

#endif
