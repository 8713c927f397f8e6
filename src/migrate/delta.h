/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Delta pages for live migration (protocol version 3, docs/migration.md):
 * a page the source sent before and the guest wrote again goes as the
 * bytes that changed, not as 4 KiB.
 *
 * Encoding of one page's delta: runs of (u16 skip, u16 len, len bytes),
 * little-endian: `skip` bytes are unchanged, then `len` (>= 1) bytes are
 * new; skips and lens add up to at most 4096. An empty delta is no run.
 *
 * The source keeps a copy of what it sent for a bounded number of pages
 * (struct mig_page_cache, fully associative) and encodes
 * against that copy, never against guest RAM as it is now: the encoder
 * reads each word of the live page once, and writes every changed word it
 * emits into the copy as well, so the copy equals the target's page
 * exactly even while the guest writes the page under it.
 *
 * Threading: no locks; one thread uses a cache.
 */
#ifndef CELLA_MIGRATE_DELTA_H
#define CELLA_MIGRATE_DELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_DELTA_MAX 2048u /* bytes of one page's delta; more goes as the whole page */

/*
 * Encodes the difference from `old` (the cached copy, updated in place
 * with what is emitted) to `page` (live guest memory, read once per word)
 * into out[0..cap). Returns the delta's length (0: unchanged), or -1 if it
 * would exceed cap (old is then partly updated: the caller must replace
 * the whole copy, mig_page_cache_fill).
 */
int mig_delta_encode(uint8_t *old, const uint8_t *page, uint8_t *out,
                     size_t cap); /* page: 8-aligned */

/* Whether d[0..len) is a well-formed delta for a 4 KiB page. */
bool mig_delta_valid(const uint8_t *d, size_t len);

/* Applies a valid delta to page. */
void mig_delta_apply(uint8_t *page, const uint8_t *d, size_t len);

struct mig_page_cache;

/*
 * A cache of `bytes` (rounded down to pages; at least MIG_CACHE_MIN_PAGES
 * pages) for a guest of npages pages. Slot memory is reserved, not
 * touched: a cache costs what it holds. NULL on failure.
 */
#define MIG_CACHE_MIN_PAGES 1024u
struct mig_page_cache *mig_page_cache_new(uint64_t npages, uint64_t bytes);
void mig_page_cache_free(struct mig_page_cache *c);

/* The cached copy of page, or NULL. */
uint8_t *mig_page_cache_get(struct mig_page_cache *c, uint64_t page);

/*
 * Copies the live page into its slot (taking one if it has none: a free
 * one, or one whose page was used neither in this pass nor the one before)
 * and returns the copy, pinned: it stays in place until
 * mig_page_cache_unpin, which the caller must call before
 * MIG_CACHE_MIN_PAGES fills (after each message it built from copies).
 * NULL if no slot can be taken (the page goes whole, uncached) or page is
 * beyond guest RAM.
 */
uint8_t *mig_page_cache_fill(struct mig_page_cache *c, uint64_t page, const uint8_t *live);
void mig_page_cache_unpin(struct mig_page_cache *c);

/* A new pass begins (what was used in the one before it is kept over what was not). */
void mig_page_cache_pass(struct mig_page_cache *c);

/* Forgets every cached page not set in bits (a bitmap over guest pages). */
void mig_page_cache_keep(struct mig_page_cache *c, const uint64_t *bits);

/* Forgets page (it went as a zero page). */
void mig_page_cache_drop(struct mig_page_cache *c, uint64_t page);

/* Slots in use, slots in all. */
uint64_t mig_page_cache_used(const struct mig_page_cache *c);
uint64_t mig_page_cache_slots(const struct mig_page_cache *c);

#endif
