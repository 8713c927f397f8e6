/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A small AML (ACPI Machine Language) encoder and the byte buffer the ACPI
 * table builders write into. Written from the ACPI 6.3 specification,
 * chapter 20 (AML grammar) and section 6.4 (resource descriptors).
 *
 * The buffer has a sticky error: every append after a failure is a no-op
 * and aml_buf_error() reports the first failure, so a builder emits a whole
 * table and checks once at the end. Appends never fail silently otherwise.
 *
 * Objects whose encoding starts with a PkgLength (Scope, Device, Method,
 * Package, Buffer) are written as begin/end pairs: `*_begin()` returns a
 * mark, the caller appends the contents, and aml_end() inserts the PkgLength
 * in front of them using the shortest encoding (1 to 4 bytes). Pairs nest;
 * inner ones must be ended first (like brackets).
 *
 * Resource templates (the contents of _CRS buffers) are built in their own
 * aml_buf with the aml_rt_* functions, terminated with aml_rt_end(), and
 * emitted as a Buffer with aml_resource_template().
 *
 * Also here: little-endian load/store helpers for fixed-layout table fields
 * (no struct casts onto byte buffers).
 *
 * Threading: no global state; an aml_buf belongs to one thread at a time.
 */
#ifndef CELLA_DEVICES_AML_H
#define CELLA_DEVICES_AML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Hard cap on one buffer, far above any table cella builds. */
#define AML_BUF_MAX (16u << 20)

/* Largest value a PkgLength can encode (4-byte form: 28 bits). */
#define AML_PKGLEN_MAX 0x0fffffffu

/*
 * A growable byte buffer. Zero-initialised is a valid empty buffer.
 * Invariant: len <= cap <= AML_BUF_MAX; data is NULL when cap == 0;
 * err is 0 or the first negative errno met (-ENOMEM, -E2BIG, -EINVAL).
 */
struct aml_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int err;
};

/* Stores the low `size` (1..8) bytes of v at p, little-endian. */
static inline void aml_store_le(uint8_t *p, uint64_t v, unsigned size)
{
    for (unsigned i = 0; i < size; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Loads a `size`-byte (1..8) little-endian unsigned integer from p. */
static inline uint64_t aml_load_le(const uint8_t *p, unsigned size)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < size; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Makes b an empty buffer (does not free; use on fresh or freed buffers). */
void aml_buf_init(struct aml_buf *b);

/* Frees b's memory and re-initialises it; accepts NULL. */
void aml_buf_free(struct aml_buf *b);

/* The first error met by b (negative errno), or 0. */
int aml_buf_error(const struct aml_buf *b);

/* Records err (negative) in b unless an earlier error is already recorded. */
void aml_buf_fail(struct aml_buf *b, int err);

/*
 * Appends n zero bytes and returns a pointer to them, valid until the next
 * append. Returns NULL (and records -ENOMEM or -E2BIG) on failure or when b
 * already failed.
 */
uint8_t *aml_append_zero(struct aml_buf *b, size_t n);

/* Appends n bytes from p (which must not point into b: b may move). */
void aml_append(struct aml_buf *b, const void *p, size_t n);

/* Appends the low `size` (1..8) bytes of v, little-endian. */
void aml_append_le(struct aml_buf *b, uint64_t v, unsigned size);

/* Appends one byte. */
void aml_append_u8(struct aml_buf *b, uint8_t v);

/*
 * Overwrites `size` bytes at offset off with v, little-endian. Records
 * -EINVAL if the range is not inside b (a builder bug).
 */
void aml_patch_le(struct aml_buf *b, size_t off, uint64_t v, unsigned size);

/*
 * Encodes the PkgLength for `body_len` bytes that follow it: writes 1..4
 * bytes to out and returns how many. The encoded value counts the PkgLength
 * bytes themselves (ACPI 6.3, 20.2.4), so it is body_len + return value.
 * Returns -E2BIG when the total does not fit in 28 bits.
 */
int aml_pkglen_encode(size_t body_len, uint8_t out[4]);

/*
 * Ends the object opened by the *_begin() call that returned mark: inserts
 * the PkgLength covering every byte appended since. Records -EINVAL for a
 * mark past the end of b and -E2BIG for an over-long object.
 */
void aml_end(struct aml_buf *b, size_t mark);

/*
 * Appends a NameSeg: 1 to 4 characters, the first 'A'-'Z' or '_', the rest
 * 'A'-'Z', '0'-'9' or '_'; shorter names are padded with '_'. Records
 * -EINVAL for anything else.
 */
void aml_nameseg(struct aml_buf *b, const char *seg);

/*
 * Appends a NameString from ASL path syntax: an optional root prefix '\'
 * or parent prefixes '^', then NameSegs separated by '.', e.g.
 * "\\_SB.PCI0", "^^FOO", "_HID". Two segments use DualNamePrefix, three or
 * more MultiNamePrefix, none after a prefix ("\\", "^") a NullName. Records
 * -EINVAL for a malformed path (including "").
 */
void aml_namestring(struct aml_buf *b, const char *path);

/*
 * Appends an integer constant in its shortest form: ZeroOp, OneOp, or a
 * Byte/Word/DWord/QWord prefix. (OnesOp is never used: its value depends on
 * the table revision.) QWord constants need a DSDT of revision 2 or more.
 */
void aml_integer(struct aml_buf *b, uint64_t v);

/* Appends a String constant; s must be ASCII 0x01-0x7f (else -EINVAL). */
void aml_string(struct aml_buf *b, const char *s);

/*
 * Computes the 32-bit compressed EISA ID of a 7-character id such as
 * "PNP0A03" (3 letters 'A'-'Z', 4 hex digits 0-9/A-F) as AML stores it: the
 * little-endian reading of bytes {letters (5 bits each, big-endian), product
 * byte 1, product byte 2}. "PNP0A03" gives 0x030AD041. Returns 0 on success
 * or -EINVAL for a malformed id.
 */
int aml_eisaid_value(const char *id, uint32_t *out);

/* Appends EisaId(id) as a DWord constant; records -EINVAL for a bad id. */
void aml_eisaid(struct aml_buf *b, const char *id);

/* Appends NameOp and the name; the caller appends the object (one item). */
void aml_name(struct aml_buf *b, const char *path);

/* Opens Scope(path) { ... }; returns the mark for aml_end(). */
size_t aml_scope_begin(struct aml_buf *b, const char *path);

/* Opens Device(path) { ... }; returns the mark for aml_end(). */
size_t aml_device_begin(struct aml_buf *b, const char *path);

/*
 * Opens Method(path, nargs (0..7), serialized) { ... }; returns the mark
 * for aml_end(). Records -EINVAL for nargs > 7.
 */
size_t aml_method_begin(struct aml_buf *b, const char *path, unsigned nargs, bool serialized);

/* Appends ReturnOp; the caller appends the returned term. */
void aml_return(struct aml_buf *b);

/*
 * Opens Package(nelems) { ... } (nelems <= 255); the caller appends exactly
 * nelems data objects. Returns the mark for aml_end().
 */
size_t aml_package_begin(struct aml_buf *b, unsigned nelems);

/* Appends Buffer(len) { data } (a complete object). */
void aml_buffer(struct aml_buf *b, const uint8_t *data, size_t len);

/*
 * Appends ResourceTemplate() { ... }: a Buffer holding rt's bytes. rt must
 * end with aml_rt_end(); an errored rt is propagated as b's error.
 */
void aml_resource_template(struct aml_buf *b, const struct aml_buf *rt);

/* --- Resource descriptors (ACPI 6.3, 6.4), appended to a template ---- */

/* Who uses an address-space resource (general flags bit 0). */
enum aml_rt_usage {
    AML_RT_PRODUCER = 0, /* a bridge: decodes it for its children */
    AML_RT_CONSUMER = 1, /* the device itself */
};

/* Memory caching attribute (memory type-specific flags bits 1-2). */
enum aml_rt_cache {
    AML_RT_NON_CACHEABLE = 0,
    AML_RT_CACHEABLE = 1,
    AML_RT_WRITE_COMBINING = 2,
    AML_RT_PREFETCHABLE = 3,
};

/*
 * IO(Decode16, min, max, align, len): small I/O port descriptor with
 * 16-bit decode. Records -EINVAL when min > max.
 */
void aml_rt_io(struct aml_buf *rt, uint16_t min, uint16_t max, uint8_t align, uint8_t len);

/* IRQNoFlags() { irq }: ISA IRQ 0..15, edge, active high. */
void aml_rt_irq_noflags(struct aml_buf *rt, unsigned irq);

/*
 * Interrupt(usage, level/edge, active low/high, shared/exclusive) { gsi }:
 * extended interrupt descriptor with one interrupt.
 */
void aml_rt_interrupt(struct aml_buf *rt, enum aml_rt_usage usage, bool level, bool active_low,
                      bool shared, uint32_t gsi);

/*
 * WordBusNumber(usage, MinFixed, MaxFixed, PosDecode, 0, min, max, 0,
 * max - min + 1). Records -EINVAL when min > max.
 */
void aml_rt_word_bus(struct aml_buf *rt, enum aml_rt_usage usage, uint16_t min, uint16_t max);

/*
 * WordIO(usage, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0,
 * max - min + 1). Records -EINVAL when min > max.
 */
void aml_rt_word_io(struct aml_buf *rt, enum aml_rt_usage usage, uint16_t min, uint16_t max);

/*
 * DWordMemory(usage, PosDecode, MinFixed, MaxFixed, cache, ReadWrite, 0,
 * min, max, 0, max - min + 1). Records -EINVAL when min > max.
 */
void aml_rt_dword_memory(struct aml_buf *rt, enum aml_rt_usage usage, enum aml_rt_cache cache,
                         uint32_t min, uint32_t max);

/*
 * QWordMemory(...), as aml_rt_dword_memory with 64-bit bounds. Records
 * -EINVAL when min > max or the range is all 2^64 bytes.
 */
void aml_rt_qword_memory(struct aml_buf *rt, enum aml_rt_usage usage, enum aml_rt_cache cache,
                         uint64_t min, uint64_t max);

/* Memory32Fixed(ReadWrite/ReadOnly, base, len). */
void aml_rt_memory32_fixed(struct aml_buf *rt, bool read_write, uint32_t base, uint32_t len);

/*
 * EndTag with checksum byte 0 ("the template is treated as correctly
 * checksummed", ACPI 6.3, 6.4.2.9). Must be the last descriptor.
 */
void aml_rt_end(struct aml_buf *rt);

#endif
