/* SPDX-License-Identifier: MPL-2.0 */
/* Delta pages and the source's page cache (see delta.h). */
#include "migrate/delta.h"

#include <string.h>
#include <sys/mman.h>
#include <stdlib.h>

#include "common/le.h"
#include "machine/guest_mem.h"

#define WORDS          (GUEST_PAGE_SIZE / 8)
#define RUN_HDR        4u
#define NO_PAGE        UINT64_MAX
#define POPULATE_SLOTS 512u /* 2 MiB */

int mig_delta_encode(uint8_t *old, const uint8_t *page, uint8_t *out, size_t cap)
{
    size_t n = 0, hdr = 0;
    unsigned skip = 0, run = 0; /* bytes unchanged since the last run; bytes in the open run */
    for (unsigned i = 0; i < WORDS; i++) {
        /* One load of the live word: what is emitted and what is cached are the same value. */
        uint64_t w =
            __atomic_load_n((const uint64_t *)(const void *)(page + i * 8), __ATOMIC_RELAXED);
        uint64_t o;
        memcpy(&o, old + i * 8, 8);
        if (w == o) {
            if (run) {
                put16(out + hdr + 2, (uint16_t)run);
                run = 0;
            }
            skip += 8;
            continue;
        }
        if (!run) {
            if (cap - n < RUN_HDR + 8)
                return -1;
            hdr = n;
            put16(out + hdr, (uint16_t)skip);
            n += RUN_HDR;
            skip = 0;
        } else if (cap - n < 8) {
            return -1;
        }
        memcpy(out + n, &w, 8);
        memcpy(old + i * 8, &w, 8);
        n += 8;
        run += 8;
    }
    if (run)
        put16(out + hdr + 2, (uint16_t)run);
    return (int)n;
}

bool mig_delta_valid(const uint8_t *d, size_t len)
{
    size_t pos = 0, at = 0; /* position in d; bytes of the page covered */
    while (pos < len) {
        if (len - pos < RUN_HDR)
            return false;
        size_t skip = le16(d + pos), n = le16(d + pos + 2);
        pos += RUN_HDR;
        if (n == 0 || skip > GUEST_PAGE_SIZE - at || n > GUEST_PAGE_SIZE - at - skip ||
            n > len - pos)
            return false;
        at += skip + n;
        pos += n;
    }
    return true;
}

void mig_delta_apply(uint8_t *page, const uint8_t *d, size_t len)
{
    size_t pos = 0, at = 0;
    while (pos < len) {
        size_t skip = le16(d + pos), n = le16(d + pos + 2);
        pos += RUN_HDR;
        at += skip;
        memcpy(page + at, d + pos, n);
        at += n;
        pos += n;
    }
}

/* ---- the page cache ------------------------------------------------------ */

struct mig_page_cache {
    uint64_t npages, nslots, used;
    uint64_t fresh;  /* slots never used yet: [fresh, nslots) */
    uint64_t hand;   /* the clock */
    bool exhausted;  /* this pass, a round of the clock found no slot to take */
    uint32_t *index; /* per guest page: slot + 1, or 0 */
    uint64_t *owner; /* per slot: the page it holds, or NO_PAGE */
    uint8_t *ref;    /* per slot: bit 1 used this pass, bit 0 used the pass before */
    uint32_t *pin;   /* per slot: == epoch while a message being built points at it */
    uint32_t epoch;
    uint8_t *data; /* nslots pages */
    size_t data_len;
};

struct mig_page_cache *mig_page_cache_new(uint64_t npages, uint64_t bytes)
{
    uint64_t nslots = bytes / GUEST_PAGE_SIZE;
    if (nslots < MIG_CACHE_MIN_PAGES)
        nslots = MIG_CACHE_MIN_PAGES;
    if (nslots > UINT32_MAX - 1)
        nslots = UINT32_MAX - 1;
    if (!npages || npages > SIZE_MAX / sizeof(uint32_t))
        return NULL;
    struct mig_page_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->npages = npages;
    c->nslots = nslots;
    c->index = calloc((size_t)npages, sizeof(uint32_t));
    c->owner = malloc((size_t)nslots * sizeof(uint64_t));
    c->ref = calloc((size_t)nslots, 1);
    c->pin = calloc((size_t)nslots, sizeof(uint32_t));
    c->epoch = 1;
    c->data_len = (size_t)nslots * GUEST_PAGE_SIZE;
    c->data = mmap(NULL, c->data_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (c->data == MAP_FAILED)
        c->data = NULL;
    if (!c->index || !c->owner || !c->ref || !c->pin || !c->data) {
        mig_page_cache_free(c);
        return NULL;
    }
    for (uint64_t s = 0; s < nslots; s++)
        c->owner[s] = NO_PAGE;
    return c;
}

void mig_page_cache_free(struct mig_page_cache *c)
{
    if (!c)
        return;
    if (c->data)
        munmap(c->data, c->data_len);
    free(c->index);
    free(c->owner);
    free(c->ref);
    free(c->pin);
    free(c);
}

uint8_t *mig_page_cache_get(struct mig_page_cache *c, uint64_t page)
{
    if (page >= c->npages || !c->index[page])
        return NULL;
    uint64_t s = c->index[page] - 1;
    c->ref[s] = 3;
    return c->data + s * GUEST_PAGE_SIZE;
}

/*
 * A free slot, or one whose page was used neither in this pass nor in the
 * previous one (and is not pinned); UINT64_MAX if there is none. A guest
 * that writes more pages than the cache holds, pass after pass, so keeps
 * the pages cached first instead of each pass evicting what the next needs.
 * After a round of the clock that found nothing, no search until the next pass.
 */
static uint64_t take_slot(struct mig_page_cache *c)
{
    if (c->fresh < c->nslots) {
        /*
         * Slot memory is allocated as it is first used, a stretch at a time:
         * one system call instead of a page fault per slot (a hint: if it
         * fails, the copy faults the page in).
         */
        if (c->fresh % POPULATE_SLOTS == 0) {
            uint64_t n =
                c->nslots - c->fresh < POPULATE_SLOTS ? c->nslots - c->fresh : POPULATE_SLOTS;
            madvise(c->data + c->fresh * GUEST_PAGE_SIZE, n * GUEST_PAGE_SIZE, MADV_POPULATE_WRITE);
        }
        return c->fresh++;
    }
    for (uint64_t n = 0; !c->exhausted && n < c->nslots; n++) {
        uint64_t s = c->hand;
        c->hand = (c->hand + 1) % c->nslots;
        if (c->owner[s] == NO_PAGE)
            return s;
        if (c->ref[s] || c->pin[s] == c->epoch)
            continue;
        mig_page_cache_drop(c, c->owner[s]);
        return s;
    }
    c->exhausted = true;
    return UINT64_MAX;
}

uint8_t *mig_page_cache_fill(struct mig_page_cache *c, uint64_t page, const uint8_t *live)
{
    if (page >= c->npages)
        return NULL;
    uint64_t s;
    if (c->index[page]) {
        s = c->index[page] - 1;
    } else {
        s = take_slot(c);
        if (s == UINT64_MAX)
            return NULL;
        c->owner[s] = page;
        c->index[page] = (uint32_t)(s + 1);
        c->used++;
    }
    c->ref[s] = 3;
    c->pin[s] = c->epoch;
    uint8_t *copy = c->data + s * GUEST_PAGE_SIZE;
    memcpy(copy, live, GUEST_PAGE_SIZE);
    return copy;
}

void mig_page_cache_pass(struct mig_page_cache *c)
{
    /* bit 1: used this pass, bit 0: used the pass before */
    for (uint64_t s = 0; s < c->nslots; s++)
        c->ref[s] >>= 1;
    c->exhausted = false;
}

void mig_page_cache_drop(struct mig_page_cache *c, uint64_t page)
{
    if (page >= c->npages || !c->index[page])
        return;
    uint64_t s = c->index[page] - 1;
    c->index[page] = 0;
    c->owner[s] = NO_PAGE;
    c->ref[s] = 0;
    c->used--;
}

void mig_page_cache_unpin(struct mig_page_cache *c)
{
    if (++c->epoch == 0) { /* wrapped: no slot may look pinned by an old epoch */
        memset(c->pin, 0, (size_t)c->nslots * sizeof(uint32_t));
        c->epoch = 1;
    }
}

void mig_page_cache_keep(struct mig_page_cache *c, const uint64_t *bits)
{
    for (uint64_t s = 0; s < c->fresh; s++) {
        uint64_t p = c->owner[s];
        if (p != NO_PAGE && !(bits[p / 64] >> (p % 64) & 1))
            mig_page_cache_drop(c, p);
    }
}

uint64_t mig_page_cache_used(const struct mig_page_cache *c)
{
    return c->used;
}

uint64_t mig_page_cache_slots(const struct mig_page_cache *c)
{
    return c->nslots;
}
