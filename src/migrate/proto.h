/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The live-migration protocol: message types and a pure codec.
 *
 * One protocol message travels as one binary websocket message
 * (stream.h). It starts with a u8 type; the body is little-endian
 * (common/mig_buf.h): integers are fixed width, strings and byte strings
 * are a u32 length and the bytes (no NUL). docs/migration.md describes the
 * conversation; this file only turns messages into bytes and back.
 *
 * Decoding is strict and total: every length and count is capped (the
 * MIG_MAX_* below), strings are checked for their character set, counts
 * must match the bytes present, and trailing bytes are an error. A
 * decoded message points into the input buffer (no copies), so it is
 * valid only as long as that buffer is. Range checks that need the
 * receiver's context (a page index against guest RAM, a payload kind
 * against the negotiated list) are the drivers' (target.c).
 *
 * Threading: no state; any thread.
 */
#ifndef CELLA_MIGRATE_PROTO_H
#define CELLA_MIGRATE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/error.h"
#include "common/mig_buf.h"
#include "machine/machine_mig.h"

/*
 * Protocol versions this build speaks, oldest first. Version 2 adds
 * RAM_PASS_APPLIED (the target acknowledges each pre-copy pass once it
 * has written it into guest RAM); version 3 adds RAM_DELTA (pages sent
 * again as the bytes that changed, delta.h).
 */
#define MIG_PROTO_VERSION_OLDEST 1
#define MIG_PROTO_VERSION_NEWEST 3

/* Caps on what a peer may send. */
#define MIG_MAX_VERSIONS    16           /* versions offered in HELLO */
#define MIG_MAX_ADDR        256          /* HELLO's advertised address */
#define MIG_MAX_SPEC_JSON   (8u << 20)   /* PREAMBLE's spec wire JSON */
#define MIG_MAX_KINDS       64           /* payload kinds in PREAMBLE */
#define MIG_MAX_REASONS     64           /* refusal reasons in PREAMBLE_ACK */
#define MIG_MAX_REASON      1024         /* one reason / error text */
#define MIG_RAM_BATCH_PAGES 4096         /* pages (zero or not) per RAM_BATCH */
#define MIG_RAM_BATCH_DATA  256          /* non-zero pages (4 KiB each) per RAM_BATCH */
#define MIG_RAM_DELTA_PAGES 4096         /* pages per RAM_DELTA */
#define MIG_SERIAL_CHUNK    (1u << 20)   /* bytes per SERIAL_HISTORY */
#define MIG_BLOB_CHUNK      (4u << 20)   /* bytes per BLOB */
#define MIG_BLOB_MAX        (48u << 20)  /* one blob backend's contents */
#define MIG_MAX_BLOB_KEY    128          /* = SPEC_MAX_KEY_LEN */
#define MIG_MAX_BLOBS       256          /* blobs per migration (= SPEC_MAX_COMPONENTS) */
#define MIG_RAM_MAX_BYTES   (1ull << 42) /* 4 TiB of guest RAM */
/* The largest protocol message (a DEVICE payload of MIG_PAYLOAD_MAX plus headers). */
#define MIG_MSG_MAX (MIG_PAYLOAD_MAX + 4096u)

enum mig_msg_type {
    MIG_MSG_HELLO = 1,             /* T->S: versions offered, advertised address */
    MIG_MSG_HELLO_ACK = 2,         /* S->T: the chosen version */
    MIG_MSG_PREAMBLE = 3,          /* S->T: spec wire JSON, RAM size, payload kinds */
    MIG_MSG_PREAMBLE_ACK = 4,      /* T->S: accepted versions per kind, or reasons */
    MIG_MSG_PHASE = 5,             /* S->T: the source entered a phase */
    MIG_MSG_RAM_BATCH = 6,         /* S->T: up to MIG_RAM_BATCH_PAGES pages */
    MIG_MSG_RAM_PASS_END = 7,      /* S->T: one pass over the dirty set is done */
    MIG_MSG_DEVICE = 8,            /* S->T: one state payload (kind, id, version) */
    MIG_MSG_SERIAL_HISTORY = 9,    /* S->T: COM1 history bytes */
    MIG_MSG_BLOB = 10,             /* S->T: a chunk of a blob backend's contents */
    MIG_MSG_READY = 11,            /* T->S: all state loaded; release your backends */
    MIG_MSG_RELEASED = 12,         /* S->T: source backends closed; the target decides */
    MIG_MSG_COMMIT = 13,           /* T->S: the target runs the guest */
    MIG_MSG_ABORT = 14,            /* T->S: the target will not run (after RELEASED) */
    MIG_MSG_ERROR = 15,            /* either: the sender gives up, with a reason */
    MIG_MSG_RAM_PASS_APPLIED = 16, /* T->S (v2): a pre-copy pass is in guest RAM */
    MIG_MSG_RAM_DELTA = 17,        /* S->T (v3): pages as deltas against what was sent */
};
#define MIG_MSG_TYPE_MAX MIG_MSG_RAM_DELTA

/* Phases (Propolis's MigrationState names), in the order a migration goes. */
enum mig_phase {
    MIG_PHASE_SYNC,
    MIG_PHASE_RAM_PUSH,
    MIG_PHASE_PAUSE,
    MIG_PHASE_RAM_PUSH_DIRTY,
    MIG_PHASE_DEVICE,
    MIG_PHASE_RESUME,
    MIG_PHASE_RAM_PULL,
    MIG_PHASE_SERVER,
    MIG_PHASE_FINISH,
    MIG_PHASE_ERROR,
    MIG_PHASE_COUNT
};

/* "Sync", "RamPush", ... as in the API; "unknown" out of range. */
const char *mig_phase_name(enum mig_phase p);
/* "HELLO", ...; "unknown" out of range. */
const char *mig_msg_type_name(unsigned type);

/* A string inside a decoded message (not NUL-terminated). */
struct mig_str {
    const char *p;
    size_t len;
};

struct mig_msg_hello {
    uint32_t nversions;
    uint32_t versions[MIG_MAX_VERSIONS];
    struct mig_str addr; /* where the target's API listens ("" if unknown) */
};

struct mig_msg_preamble {
    struct mig_str spec_json; /* {"spec_version": N, "spec": {...}} */
    uint64_t ram_bytes;       /* guest RAM size, a multiple of 4 KiB */
    uint32_t nkinds;
    struct mig_kind_version kinds[MIG_MAX_KINDS]; /* distinct kinds */
};

struct mig_reason {
    struct mig_str pointer; /* JSON pointer into the spec, may be empty */
    struct mig_str message;
};

struct mig_msg_preamble_ack {
    bool accepted;
    /* accepted: one version per offered kind (min_version == version). */
    uint32_t nkinds;
    struct mig_kind_version kinds[MIG_MAX_KINDS];
    /* refused: why (at least one). */
    uint32_t nreasons;
    struct mig_reason reasons[MIG_MAX_REASONS];
};

/*
 * RAM_BATCH body: u32 nruns, u32 npages, then nruns x (u64 first page,
 * u32 count) in ascending, non-overlapping, non-adjacent order, whose
 * counts add up to npages; then a zero bitmap of (npages + 7) / 8 bytes
 * (bit k set: the k-th page of the batch is all zeroes and has no data;
 * padding bits clear); then 4096 bytes for each page whose bit is clear,
 * in order. nnz is the number of those pages.
 */
struct mig_msg_ram {
    uint32_t nruns, npages, nnz;
    const uint8_t *runs; /* 12 bytes per run */
    const uint8_t *zero; /* bitmap */
    const uint8_t *data; /* nnz * 4096 bytes */
};

/*
 * RAM_DELTA body: u32 count (1..MIG_RAM_DELTA_PAGES), then count x (u64
 * page, u16 len, len bytes: the page's delta, delta.h, len <=
 * MIG_DELTA_MAX) with pages strictly ascending. Each delta applies to
 * the page as the source last sent it.
 */
struct mig_msg_ram_delta {
    uint32_t count;
    const uint8_t *entries; /* the count entries, checked */
    size_t len;
};

struct mig_msg_device {
    char kind[MIG_KIND_MAX];
    char id[MIG_ID_MAX];
    uint32_t version;
    const uint8_t *data;
    size_t len; /* <= MIG_PAYLOAD_MAX */
};

struct mig_msg_serial {
    uint64_t offset; /* stream offset of data[0] */
    uint64_t total;  /* bytes the guest ever wrote (last_byte_offset) */
    const uint8_t *data;
    size_t len; /* offset + len <= total */
};

struct mig_msg_blob {
    char key[MIG_MAX_BLOB_KEY + 1];
    uint64_t total;  /* the blob's size, <= MIG_BLOB_MAX */
    uint64_t offset; /* of this chunk */
    const uint8_t *data;
    size_t len; /* offset + len <= total, len <= MIG_BLOB_CHUNK */
};

struct mig_msg {
    enum mig_msg_type type;
    union {
        struct mig_msg_hello hello;
        uint32_t version; /* HELLO_ACK */
        struct mig_msg_preamble preamble;
        struct mig_msg_preamble_ack ack;
        enum mig_phase phase; /* PHASE (never MIG_PHASE_ERROR) */
        struct mig_msg_ram ram;
        struct mig_msg_ram_delta delta;
        struct {
            uint32_t pass;
            uint64_t pages;
        } pass_end; /* RAM_PASS_END, RAM_PASS_APPLIED */
        struct mig_msg_device device;
        struct mig_msg_serial serial;
        struct mig_msg_blob blob;
        struct mig_str reason; /* ABORT, ERROR */
    } u;
};

/*
 * Validates and decodes one message. 0, or -EPROTO with one record saying
 * what is wrong (the message is then unusable).
 */
int mig_msg_decode(const uint8_t *buf, size_t len, struct mig_msg *m, struct cella_errors *errs);

/*
 * Encodes m (as decoded: the same field rules) and appends it to o. The
 * encoder does not validate beyond what the layout needs; a peer's decoder
 * does. Returns 0, -EINVAL for a message that cannot be laid out (counts
 * over the caps, a string too long), -ENOMEM.
 */
int mig_msg_encode(const struct mig_msg *m, struct mig_out *o);

/* Convenience constructors for the common small messages. */
struct mig_str mig_str_of(const char *s);

/* Iterates a decoded (valid) RAM_BATCH: run i's first page and count. */
void mig_ram_run(const struct mig_msg_ram *r, uint32_t i, uint64_t *first, uint32_t *count);
/* Whether page k (0..npages) of a decoded batch is a zero marker. */
bool mig_ram_is_zero(const struct mig_msg_ram *r, uint32_t k);

/*
 * Builds a RAM_BATCH on the sending side: add pages in ascending order;
 * `data` NULL marks a zero page (else 4096 bytes, read when encoding).
 */
struct mig_ram_batch {
    uint32_t nruns, npages, nnz;
    uint64_t last; /* last page added */
    uint8_t runs[MIG_RAM_BATCH_PAGES * 12];
    uint8_t zero[MIG_RAM_BATCH_PAGES / 8];
    const uint8_t *data[MIG_RAM_BATCH_DATA];
    uint8_t head[9]; /* mig_ram_batch_iov: type, nruns, npages */
};
void mig_ram_batch_reset(struct mig_ram_batch *b);
/* false if the batch is full (or page not ascending): encode it, reset, add again. */
bool mig_ram_batch_add(struct mig_ram_batch *b, uint64_t page, const uint8_t *data);
/* Appends the RAM_BATCH message (copying page data) to o. 0 or -ENOMEM. */
int mig_ram_batch_encode(struct mig_ram_batch *b, struct mig_out *o);
/*
 * The same message as pieces without copying: header, runs, zero bitmap,
 * then each page's data where it lies. Fills iov (MIG_RAM_BATCH_IOV
 * entries at most) and returns how many it used.
 */
#define MIG_RAM_BATCH_IOV (3 + MIG_RAM_BATCH_DATA)
struct iovec;
size_t mig_ram_batch_iov(struct mig_ram_batch *b, struct iovec *iov);

/*
 * Iterates a decoded (valid) RAM_DELTA: *pos starts at 0; each call gives
 * the next entry. false after the last.
 */
bool mig_ram_delta_next(const struct mig_msg_ram_delta *r, size_t *pos, uint64_t *page,
                        const uint8_t **delta, size_t *len);
/* Sending side: begin a RAM_DELTA in an empty o, add entries (ascending), finish with the count. */
void mig_ram_delta_begin(struct mig_out *o);
void mig_ram_delta_add(struct mig_out *o, uint64_t page, const uint8_t *delta, uint16_t len);
int mig_ram_delta_finish(struct mig_out *o, uint32_t count);

/* Whether a 4 KiB page is all zeroes. */
bool mig_page_is_zero(const uint8_t *page);

#endif
