/* SPDX-License-Identifier: MPL-2.0 */
#include "common/mig_buf.h"

#include <stdlib.h>
#include <string.h>

void mig_out_init(struct mig_out *o)
{
    memset(o, 0, sizeof(*o));
}

void mig_out_free(struct mig_out *o)
{
    free(o->buf);
    mig_out_init(o);
}

void mig_put_bytes(struct mig_out *o, const void *p, size_t n)
{
    if (o->failed || n == 0)
        return;
    if (n > MIG_PAYLOAD_MAX || o->len > MIG_PAYLOAD_MAX - n) {
        o->failed = true;
        return;
    }
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + n)
            cap *= 2;
        uint8_t *b = realloc(o->buf, cap);
        if (!b) {
            o->failed = true;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}

static void put_le(struct mig_out *o, uint64_t v, unsigned n)
{
    uint8_t b[8];
    for (unsigned i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    mig_put_bytes(o, b, n);
}

void mig_put_u8(struct mig_out *o, uint8_t v)
{
    put_le(o, v, 1);
}

void mig_put_u16(struct mig_out *o, uint16_t v)
{
    put_le(o, v, 2);
}

void mig_put_u32(struct mig_out *o, uint32_t v)
{
    put_le(o, v, 4);
}

void mig_put_u64(struct mig_out *o, uint64_t v)
{
    put_le(o, v, 8);
}

void mig_put_bool(struct mig_out *o, bool v)
{
    put_le(o, v ? 1 : 0, 1);
}

void mig_put_blob(struct mig_out *o, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        o->failed = true;
        return;
    }
    mig_put_u32(o, (uint32_t)n);
    mig_put_bytes(o, p, n);
}

void mig_in_init(struct mig_in *in, const void *buf, size_t len)
{
    in->buf = buf;
    in->len = buf ? len : 0;
    in->pos = 0;
    in->failed = false;
}

static const uint8_t *take(struct mig_in *in, size_t n)
{
    if (in->failed || n > in->len - in->pos) {
        in->failed = true;
        return NULL;
    }
    const uint8_t *p = in->buf + in->pos;
    in->pos += n;
    return p;
}

static uint64_t get_le(struct mig_in *in, unsigned n)
{
    const uint8_t *p = take(in, n);
    uint64_t v = 0;
    for (unsigned i = 0; p && i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint8_t mig_get_u8(struct mig_in *in)
{
    return (uint8_t)get_le(in, 1);
}

uint16_t mig_get_u16(struct mig_in *in)
{
    return (uint16_t)get_le(in, 2);
}

uint32_t mig_get_u32(struct mig_in *in)
{
    return (uint32_t)get_le(in, 4);
}

uint64_t mig_get_u64(struct mig_in *in)
{
    return get_le(in, 8);
}

bool mig_get_bool(struct mig_in *in)
{
    uint8_t v = mig_get_u8(in);
    if (v > 1)
        in->failed = true;
    return v == 1;
}

void mig_get_bytes(struct mig_in *in, void *dst, size_t n)
{
    const uint8_t *p = take(in, n);
    if (p)
        memcpy(dst, p, n);
    else if (n)
        memset(dst, 0, n);
}

const uint8_t *mig_get_blob(struct mig_in *in, size_t max, size_t *len)
{
    uint32_t n = mig_get_u32(in);
    if (!in->failed && n > max)
        in->failed = true;
    const uint8_t *p = take(in, in->failed ? 0 : n);
    *len = p ? n : 0;
    return in->failed ? NULL : p;
}
