/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/aml.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* AML opcodes and prefixes (ACPI 6.3, 20.3). */
enum {
    AML_ZERO_OP = 0x00,
    AML_ONE_OP = 0x01,
    AML_NAME_OP = 0x08,
    AML_BYTE_PREFIX = 0x0a,
    AML_WORD_PREFIX = 0x0b,
    AML_DWORD_PREFIX = 0x0c,
    AML_STRING_PREFIX = 0x0d,
    AML_QWORD_PREFIX = 0x0e,
    AML_SCOPE_OP = 0x10,
    AML_BUFFER_OP = 0x11,
    AML_PACKAGE_OP = 0x12,
    AML_METHOD_OP = 0x14,
    AML_DUAL_NAME_PREFIX = 0x2e,
    AML_MULTI_NAME_PREFIX = 0x2f,
    AML_EXT_OP_PREFIX = 0x5b,
    AML_ROOT_CHAR = 0x5c,
    AML_PARENT_PREFIX = 0x5e,
    AML_RETURN_OP = 0xa4,
    AML_EXT_DEVICE_OP = 0x82, /* after AML_EXT_OP_PREFIX */
};

/* Resource descriptor tags (ACPI 6.3, 6.4). Small: type << 3 | length. */
enum {
    RT_SMALL_IRQ_NOFLAGS = (0x04 << 3) | 2,
    RT_SMALL_IO = (0x08 << 3) | 7,
    RT_SMALL_END = (0x0f << 3) | 1,
    RT_LARGE_MEMORY32_FIXED = 0x86,
    RT_LARGE_DWORD_ADDR = 0x87,
    RT_LARGE_WORD_ADDR = 0x88,
    RT_LARGE_EXT_IRQ = 0x89,
    RT_LARGE_QWORD_ADDR = 0x8a,
};

/* Address space resource types and flags (ACPI 6.3, 6.4.3.5). */
enum {
    RT_ADDR_MEMORY = 0,
    RT_ADDR_IO = 1,
    RT_ADDR_BUS = 2,
    RT_GEN_MIN_FIXED = 1 << 2,
    RT_GEN_MAX_FIXED = 1 << 3,
    RT_IO_ENTIRE_RANGE = 3,
    RT_MEM_READ_WRITE = 1,
};

void aml_buf_init(struct aml_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void aml_buf_free(struct aml_buf *b)
{
    if (!b)
        return;
    free(b->data);
    aml_buf_init(b);
}

int aml_buf_error(const struct aml_buf *b)
{
    return b->err;
}

void aml_buf_fail(struct aml_buf *b, int err)
{
    if (!b->err)
        b->err = err;
}

/* Makes room for n more bytes; false (error recorded) when impossible. */
static bool reserve(struct aml_buf *b, size_t n)
{
    if (b->err)
        return false;
    size_t need;
    if (__builtin_add_overflow(b->len, n, &need) || need > AML_BUF_MAX) {
        aml_buf_fail(b, -E2BIG);
        return false;
    }
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > AML_BUF_MAX)
        cap = AML_BUF_MAX;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        aml_buf_fail(b, -ENOMEM);
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

uint8_t *aml_append_zero(struct aml_buf *b, size_t n)
{
    if (!reserve(b, n))
        return NULL;
    uint8_t *p = b->data + b->len;
    if (n)
        memset(p, 0, n);
    b->len += n;
    return p;
}

void aml_append(struct aml_buf *b, const void *p, size_t n)
{
    uint8_t *dst = aml_append_zero(b, n);
    if (dst && n)
        memcpy(dst, p, n);
}

void aml_append_le(struct aml_buf *b, uint64_t v, unsigned size)
{
    uint8_t *dst = aml_append_zero(b, size);
    if (dst)
        aml_store_le(dst, v, size);
}

void aml_append_u8(struct aml_buf *b, uint8_t v)
{
    aml_append_le(b, v, 1);
}

void aml_patch_le(struct aml_buf *b, size_t off, uint64_t v, unsigned size)
{
    if (b->err)
        return;
    if (size > 8 || off > b->len || b->len - off < size) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    aml_store_le(b->data + off, v, size);
}

int aml_pkglen_encode(size_t body_len, uint8_t out[4])
{
    /*
     * One byte holds 6 bits (up to 63). Longer forms put the byte count
     * minus one in bits 7-6 of the lead byte, the low 4 bits of the length
     * in its bits 3-0 and the rest in the following bytes, least
     * significant first: 12, 20 or 28 bits. The length includes the
     * PkgLength bytes, so pick the smallest form the total fits.
     */
    static const uint32_t max_total[4] = {0x3f, 0xfff, 0xfffff, AML_PKGLEN_MAX};
    for (unsigned n = 1; n <= 4; n++) {
        if (body_len > max_total[n - 1] - n)
            continue;
        uint32_t total = (uint32_t)body_len + n;
        if (n == 1) {
            out[0] = (uint8_t)total;
            return 1;
        }
        out[0] = (uint8_t)(((n - 1) << 6) | (total & 0x0f));
        for (unsigned i = 1; i < n; i++)
            out[i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
        return (int)n;
    }
    return -E2BIG;
}

void aml_end(struct aml_buf *b, size_t mark)
{
    if (b->err)
        return;
    if (mark > b->len) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    uint8_t enc[4];
    int n = aml_pkglen_encode(b->len - mark, enc);
    if (n < 0) {
        aml_buf_fail(b, n);
        return;
    }
    size_t body = b->len - mark;
    if (!aml_append_zero(b, (size_t)n))
        return;
    memmove(b->data + mark + n, b->data + mark, body);
    memcpy(b->data + mark, enc, (size_t)n);
}

static bool is_lead_char(char c)
{
    return (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_name_char(char c)
{
    return is_lead_char(c) || (c >= '0' && c <= '9');
}

/* Appends the NameSeg in s[0..n) (n 1..4), padded with '_'. */
static void put_seg(struct aml_buf *b, const char *s, size_t n)
{
    if (n < 1 || n > 4 || !is_lead_char(s[0])) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    char seg[4] = {'_', '_', '_', '_'};
    for (size_t i = 0; i < n; i++) {
        if (!is_name_char(s[i])) {
            aml_buf_fail(b, -EINVAL);
            return;
        }
        seg[i] = s[i];
    }
    aml_append(b, seg, 4);
}

void aml_nameseg(struct aml_buf *b, const char *seg)
{
    put_seg(b, seg, strlen(seg));
}

void aml_namestring(struct aml_buf *b, const char *path)
{
    const char *p = path;
    if (*p == '\0') {
        aml_buf_fail(b, -EINVAL); /* NullName only after a prefix */
        return;
    }
    if (*p == '\\') {
        aml_append_u8(b, AML_ROOT_CHAR);
        p++;
    } else {
        while (*p == '^') {
            aml_append_u8(b, AML_PARENT_PREFIX);
            p++;
        }
    }
    if (*p == '\0') {
        aml_append_u8(b, AML_ZERO_OP); /* NullName */
        return;
    }
    size_t nsegs = 1;
    for (const char *q = p; *q; q++)
        nsegs += *q == '.';
    if (nsegs > 255) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    if (nsegs == 2) {
        aml_append_u8(b, AML_DUAL_NAME_PREFIX);
    } else if (nsegs > 2) {
        aml_append_u8(b, AML_MULTI_NAME_PREFIX);
        aml_append_u8(b, (uint8_t)nsegs);
    }
    while (true) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        put_seg(b, p, n);
        if (!dot)
            break;
        p = dot + 1;
    }
}

void aml_integer(struct aml_buf *b, uint64_t v)
{
    if (v == 0) {
        aml_append_u8(b, AML_ZERO_OP);
    } else if (v == 1) {
        aml_append_u8(b, AML_ONE_OP);
    } else if (v <= UINT8_MAX) {
        aml_append_u8(b, AML_BYTE_PREFIX);
        aml_append_le(b, v, 1);
    } else if (v <= UINT16_MAX) {
        aml_append_u8(b, AML_WORD_PREFIX);
        aml_append_le(b, v, 2);
    } else if (v <= UINT32_MAX) {
        aml_append_u8(b, AML_DWORD_PREFIX);
        aml_append_le(b, v, 4);
    } else {
        aml_append_u8(b, AML_QWORD_PREFIX);
        aml_append_le(b, v, 8);
    }
}

void aml_string(struct aml_buf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p > 0x7f) {
            aml_buf_fail(b, -EINVAL);
            return;
        }
    }
    aml_append_u8(b, AML_STRING_PREFIX);
    aml_append(b, s, strlen(s) + 1);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int aml_eisaid_value(const char *id, uint32_t *out)
{
    if (strlen(id) != 7)
        return -EINVAL;
    uint32_t letters = 0;
    for (int i = 0; i < 3; i++) {
        if (id[i] < 'A' || id[i] > 'Z')
            return -EINVAL;
        letters = (letters << 5) | (uint32_t)(id[i] - 'A' + 1);
    }
    uint32_t product = 0;
    for (int i = 3; i < 7; i++) {
        int d = hex_digit(id[i]);
        if (d < 0)
            return -EINVAL;
        product = (product << 4) | (uint32_t)d;
    }
    /* Byte order in memory: letters high, letters low, product high, low. */
    uint8_t bytes[4] = {(uint8_t)(letters >> 8), (uint8_t)letters, (uint8_t)(product >> 8),
                        (uint8_t)product};
    *out = (uint32_t)aml_load_le(bytes, 4);
    return 0;
}

void aml_eisaid(struct aml_buf *b, const char *id)
{
    uint32_t v;
    if (aml_eisaid_value(id, &v) < 0) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    /* Always a DWord constant, even for small values: it is an id, not a number. */
    aml_append_u8(b, AML_DWORD_PREFIX);
    aml_append_le(b, v, 4);
}

void aml_name(struct aml_buf *b, const char *path)
{
    aml_append_u8(b, AML_NAME_OP);
    aml_namestring(b, path);
}

size_t aml_scope_begin(struct aml_buf *b, const char *path)
{
    aml_append_u8(b, AML_SCOPE_OP);
    size_t mark = b->len;
    aml_namestring(b, path);
    return mark;
}

size_t aml_device_begin(struct aml_buf *b, const char *path)
{
    aml_append_u8(b, AML_EXT_OP_PREFIX);
    aml_append_u8(b, AML_EXT_DEVICE_OP);
    size_t mark = b->len;
    aml_namestring(b, path);
    return mark;
}

size_t aml_method_begin(struct aml_buf *b, const char *path, unsigned nargs, bool serialized)
{
    if (nargs > 7)
        aml_buf_fail(b, -EINVAL);
    aml_append_u8(b, AML_METHOD_OP);
    size_t mark = b->len;
    aml_namestring(b, path);
    aml_append_u8(b, (uint8_t)((nargs & 7) | (serialized ? 1u << 3 : 0)));
    return mark;
}

void aml_return(struct aml_buf *b)
{
    aml_append_u8(b, AML_RETURN_OP);
}

size_t aml_package_begin(struct aml_buf *b, unsigned nelems)
{
    if (nelems > 255)
        aml_buf_fail(b, -EINVAL);
    aml_append_u8(b, AML_PACKAGE_OP);
    size_t mark = b->len;
    aml_append_u8(b, (uint8_t)nelems);
    return mark;
}

void aml_buffer(struct aml_buf *b, const uint8_t *data, size_t len)
{
    aml_append_u8(b, AML_BUFFER_OP);
    size_t mark = b->len;
    aml_integer(b, len);
    aml_append(b, data, len);
    aml_end(b, mark);
}

void aml_resource_template(struct aml_buf *b, const struct aml_buf *rt)
{
    if (rt->err) {
        aml_buf_fail(b, rt->err);
        return;
    }
    if (rt->len < 2 || rt->data[rt->len - 2] != RT_SMALL_END) {
        aml_buf_fail(b, -EINVAL);
        return;
    }
    aml_buffer(b, rt->data, rt->len);
}

void aml_rt_io(struct aml_buf *rt, uint16_t min, uint16_t max, uint8_t align, uint8_t len)
{
    if (min > max) {
        aml_buf_fail(rt, -EINVAL);
        return;
    }
    aml_append_u8(rt, RT_SMALL_IO);
    aml_append_u8(rt, 1); /* decodes 16 address bits */
    aml_append_le(rt, min, 2);
    aml_append_le(rt, max, 2);
    aml_append_u8(rt, align);
    aml_append_u8(rt, len);
}

void aml_rt_irq_noflags(struct aml_buf *rt, unsigned irq)
{
    if (irq > 15) {
        aml_buf_fail(rt, -EINVAL);
        return;
    }
    aml_append_u8(rt, RT_SMALL_IRQ_NOFLAGS);
    aml_append_le(rt, 1u << irq, 2);
}

void aml_rt_interrupt(struct aml_buf *rt, enum aml_rt_usage usage, bool level, bool active_low,
                      bool shared, uint32_t gsi)
{
    uint8_t flags = (uint8_t)((usage == AML_RT_CONSUMER ? 1 : 0) | (level ? 0 : 1 << 1) |
                              (active_low ? 1 << 2 : 0) | (shared ? 1 << 3 : 0));
    aml_append_u8(rt, RT_LARGE_EXT_IRQ);
    aml_append_le(rt, 6, 2); /* flags, count, one DWord */
    aml_append_u8(rt, flags);
    aml_append_u8(rt, 1);
    aml_append_le(rt, gsi, 4);
}

/*
 * An address space descriptor (Word, DWord or QWord: `width` bytes per
 * field) with fixed minimum and maximum, positive decode, granularity and
 * translation 0.
 */
static void addr_space(struct aml_buf *rt, unsigned width, uint8_t type, enum aml_rt_usage usage,
                       uint8_t type_flags, uint64_t min, uint64_t max)
{
    static const uint8_t tag[9] = {
        [2] = RT_LARGE_WORD_ADDR, [4] = RT_LARGE_DWORD_ADDR, [8] = RT_LARGE_QWORD_ADDR};
    uint64_t len = max - min + 1;
    if (min > max || len == 0) {
        aml_buf_fail(rt, -EINVAL);
        return;
    }
    aml_append_u8(rt, tag[width]);
    aml_append_le(rt, 3 + 5 * width, 2);
    aml_append_u8(rt, type);
    aml_append_u8(
        rt, (uint8_t)(RT_GEN_MIN_FIXED | RT_GEN_MAX_FIXED | (usage == AML_RT_CONSUMER ? 1 : 0)));
    aml_append_u8(rt, type_flags);
    aml_append_le(rt, 0, width); /* granularity */
    aml_append_le(rt, min, width);
    aml_append_le(rt, max, width);
    aml_append_le(rt, 0, width); /* translation offset */
    aml_append_le(rt, len, width);
}

void aml_rt_word_bus(struct aml_buf *rt, enum aml_rt_usage usage, uint16_t min, uint16_t max)
{
    addr_space(rt, 2, RT_ADDR_BUS, usage, 0, min, max);
}

void aml_rt_word_io(struct aml_buf *rt, enum aml_rt_usage usage, uint16_t min, uint16_t max)
{
    addr_space(rt, 2, RT_ADDR_IO, usage, RT_IO_ENTIRE_RANGE, min, max);
}

void aml_rt_dword_memory(struct aml_buf *rt, enum aml_rt_usage usage, enum aml_rt_cache cache,
                         uint32_t min, uint32_t max)
{
    addr_space(rt, 4, RT_ADDR_MEMORY, usage, (uint8_t)(RT_MEM_READ_WRITE | (cache << 1)), min, max);
}

void aml_rt_qword_memory(struct aml_buf *rt, enum aml_rt_usage usage, enum aml_rt_cache cache,
                         uint64_t min, uint64_t max)
{
    addr_space(rt, 8, RT_ADDR_MEMORY, usage, (uint8_t)(RT_MEM_READ_WRITE | (cache << 1)), min, max);
}

void aml_rt_memory32_fixed(struct aml_buf *rt, bool read_write, uint32_t base, uint32_t len)
{
    aml_append_u8(rt, RT_LARGE_MEMORY32_FIXED);
    aml_append_le(rt, 9, 2);
    aml_append_u8(rt, read_write ? 1 : 0);
    aml_append_le(rt, base, 4);
    aml_append_le(rt, len, 4);
}

void aml_rt_end(struct aml_buf *rt)
{
    aml_append_u8(rt, RT_SMALL_END);
    aml_append_u8(rt, 0);
}
