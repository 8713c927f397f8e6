/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The COM1 serial hub (serial_hub.h).
 *
 * History is two fixed buffers inside the hub: `head` holds offsets
 * [0, SERIAL_HISTORY_HEAD) as they are first written, `tail` is a ring that
 * holds every offset >= SERIAL_HISTORY_HEAD at index (offset mod
 * SERIAL_HISTORY_TAIL). So with `total` bytes written the hub keeps
 *   [0, min(total, HEAD))  and  [max(HEAD, total - TAIL), total)
 * and both ranges touch (nothing is lost) until total exceeds HEAD + TAIL.
 * A write is a memcpy into one or two places plus a pass over the
 * subscriber table; it never allocates and never blocks on a client.
 *
 * Subscribers have no buffer of their own: a subscriber's queue is a window
 * on the hub's history, described by its read position `pos`. Bytes in
 * [pos, replay_end) are the replay it asked for and are served for as long
 * as the hub keeps them; bytes from replay_end on are live and the
 * subscriber may hold at most the most recent SERIAL_SUB_QUEUE of them (the
 * tail ring is at least that big, so they are always still there). When a
 * subscriber's next byte is no longer available to it, its next read skips
 * to the oldest byte it can still have and returns -ENOBUFS with the number
 * of bytes skipped; the read after that continues from there. Offsets stay
 * exact: position before + bytes read + bytes lost = position after.
 *
 * Control messages are queued per subscriber with the hub's total at the
 * time of the broadcast: they come out after every byte below that offset
 * and before every byte at or above it.
 *
 * Each subscriber's eventfd carries at most one count: it is written when a
 * subscriber goes from "nothing pending" to "something pending" and read
 * back empty when a read or take leaves nothing pending, so it is readable
 * exactly while serial_sub_read would return something other than 0.
 *
 * Lifetime: the hub is reference counted by its owner and its subscribers.
 * serial_hub_free() marks the hub closed and drops the owner's reference;
 * the history stays until the last subscriber is closed, so subscribers
 * drain what they have not read yet and then see -EPIPE. The owner must
 * have stopped every writer (vCPU) before calling serial_hub_free().
 */
#include "instance/serial_hub.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

_Static_assert((SERIAL_HISTORY_TAIL & (SERIAL_HISTORY_TAIL - 1)) == 0,
               "the tail ring is indexed with a mask");
_Static_assert(SERIAL_SUB_QUEUE <= SERIAL_HISTORY_TAIL,
               "a subscriber's live window must fit in the tail ring");
_Static_assert(SERIAL_HISTORY_HEAD + SERIAL_HISTORY_TAIL <= 64u << 20,
               "a contiguous history run fits in an int");

/* Control messages a subscriber may have pending; beyond, the oldest go. */
#define SERIAL_MAX_CONTROLS 32

#define TAIL_MASK ((uint64_t)SERIAL_HISTORY_TAIL - 1)

struct serial_ctl {
    struct serial_ctl *next;
    uint64_t at; /* delivered before the byte at this offset */
    char *json;
};

struct serial_sub {
    struct serial_hub *hub;
    int efd;
    uint64_t pos;        /* absolute offset of the next byte to hand out */
    uint64_t replay_end; /* below: requested replay, exempt from the queue bound */
    bool notified;       /* efd holds a count */
    struct serial_ctl *ctl_first, *ctl_last;
    unsigned n_ctl;
};

struct serial_hub {
    pthread_mutex_t lock; /* everything below but the input fields */
    uint64_t total;
    bool closed;
    unsigned refs; /* the owner (until serial_hub_free) + one per subscriber */
    unsigned n_subs;
    struct serial_sub *subs[SERIAL_MAX_SUBS];

    pthread_mutex_t input_lock; /* held while the sink runs */
    serial_input_fn input_fn;
    void *input_ctx;

    uint8_t head[SERIAL_HISTORY_HEAD];
    uint8_t tail[SERIAL_HISTORY_TAIL];
};

/* ---- history geometry (hub lock held) ---- */

/* First offset the tail keeps; every offset in [tail_start, total) is kept. */
static uint64_t tail_start(const struct serial_hub *h)
{
    if (h->total <= (uint64_t)SERIAL_HISTORY_HEAD + SERIAL_HISTORY_TAIL)
        return SERIAL_HISTORY_HEAD;
    return h->total - SERIAL_HISTORY_TAIL;
}

static bool kept(const struct serial_hub *h, uint64_t off)
{
    return off < h->total && (off < SERIAL_HISTORY_HEAD || off >= tail_start(h));
}

/* One past the last byte of the kept run that contains `off` (kept). */
static uint64_t run_end(const struct serial_hub *h, uint64_t off)
{
    if (off < SERIAL_HISTORY_HEAD && tail_start(h) > SERIAL_HISTORY_HEAD)
        return SERIAL_HISTORY_HEAD; /* the gap follows the head */
    return h->total;
}

/* Copies kept bytes [off, off + n) out of the history. */
static void copy_out(const struct serial_hub *h, uint64_t off, size_t n, uint8_t *dst)
{
    while (n) {
        size_t chunk;
        if (off < SERIAL_HISTORY_HEAD) {
            chunk = SERIAL_HISTORY_HEAD - off;
            if (chunk > n)
                chunk = n;
            memcpy(dst, h->head + off, chunk);
        } else {
            size_t idx = off & TAIL_MASK;
            chunk = SERIAL_HISTORY_TAIL - idx;
            if (chunk > n)
                chunk = n;
            memcpy(dst, h->tail + idx, chunk);
        }
        dst += chunk;
        off += chunk;
        n -= chunk;
    }
}

/* Appends len bytes (zeros when src is NULL) to the history. */
static void append(struct serial_hub *h, const uint8_t *src, uint64_t len)
{
    uint64_t off = h->total;
    h->total += len;
    while (len) {
        size_t chunk;
        if (off < SERIAL_HISTORY_HEAD) {
            chunk = SERIAL_HISTORY_HEAD - off;
            if (chunk > len)
                chunk = len;
            if (src)
                memcpy(h->head + off, src, chunk);
            else
                memset(h->head + off, 0, chunk);
        } else {
            if (len > SERIAL_HISTORY_TAIL) {
                /* Only the last lap of the ring survives. */
                uint64_t skip = len - SERIAL_HISTORY_TAIL;
                off += skip;
                len -= skip;
                if (src)
                    src += skip;
            }
            size_t idx = off & TAIL_MASK;
            chunk = SERIAL_HISTORY_TAIL - idx;
            if (chunk > len)
                chunk = len;
            if (src)
                memcpy(h->tail + idx, src, chunk);
            else
                memset(h->tail + idx, 0, chunk);
        }
        if (src)
            src += chunk;
        off += chunk;
        len -= chunk;
    }
}

/* ---- subscriber readiness (hub lock held) ---- */

static void sub_signal(struct serial_sub *s)
{
    if (s->notified)
        return;
    s->notified = true;
    uint64_t one = 1;
    /* Cannot block or overflow: the count is 0 here and the fd nonblocking. */
    ssize_t r = write(s->efd, &one, sizeof(one));
    (void)r;
}

static bool sub_pending(const struct serial_sub *s)
{
    const struct serial_hub *h = s->hub;
    return h->closed || s->pos < h->total || (s->ctl_first && s->ctl_first->at <= s->pos);
}

/* Makes the eventfd match sub_pending(). */
static void sub_update_ready(struct serial_sub *s)
{
    if (sub_pending(s)) {
        sub_signal(s);
    } else if (s->notified) {
        uint64_t v;
        ssize_t r = read(s->efd, &v, sizeof(v));
        (void)r;
        s->notified = false;
    }
}

static void notify_all(struct serial_hub *h)
{
    for (unsigned i = 0; i < h->n_subs; i++)
        sub_signal(h->subs[i]);
}

/* ---- hub ---- */

int serial_hub_new(struct serial_hub **out)
{
    struct serial_hub *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    int r = pthread_mutex_init(&h->lock, NULL);
    if (r) {
        free(h);
        return -r;
    }
    r = pthread_mutex_init(&h->input_lock, NULL);
    if (r) {
        pthread_mutex_destroy(&h->lock);
        free(h);
        return -r;
    }
    h->refs = 1;
    *out = h;
    return 0;
}

static void hub_destroy(struct serial_hub *h)
{
    pthread_mutex_destroy(&h->input_lock);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

void serial_hub_free(struct serial_hub *h)
{
    if (!h)
        return;
    /* Waits for a sink call in flight; no sink runs after this. */
    pthread_mutex_lock(&h->input_lock);
    h->input_fn = NULL;
    h->input_ctx = NULL;
    pthread_mutex_unlock(&h->input_lock);

    pthread_mutex_lock(&h->lock);
    h->closed = true;
    notify_all(h);
    bool last = --h->refs == 0;
    pthread_mutex_unlock(&h->lock);
    if (last)
        hub_destroy(h);
}

void serial_hub_write(struct serial_hub *h, const uint8_t *buf, size_t len)
{
    if (!len)
        return;
    pthread_mutex_lock(&h->lock);
    if (!h->closed) {
        append(h, buf, len);
        notify_all(h);
    }
    pthread_mutex_unlock(&h->lock);
}

void serial_hub_restore(struct serial_hub *h, uint64_t offset, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&h->lock);
    if (!h->closed) {
        if (offset > h->total)
            append(h, NULL, offset - h->total); /* the gap: zeros no one can read */
        uint64_t skip = h->total - offset > len ? len : h->total - offset;
        if (offset < h->total)
            append(h, buf + skip, len - skip);
        else
            append(h, buf, len);
        notify_all(h);
    }
    pthread_mutex_unlock(&h->lock);
}

uint64_t serial_hub_total(struct serial_hub *h)
{
    pthread_mutex_lock(&h->lock);
    uint64_t t = h->total;
    pthread_mutex_unlock(&h->lock);
    return t;
}

/*
 * Propolis's HistoryBuffer semantics: the start is `offset` (from_start) or
 * total - offset, or 0 when offset >= total (most_recent); up to max bytes
 * follow from there, within the kept run that holds the start (a read that
 * starts in the head stops where the head ends when the gap follows).
 * A start at or beyond total gives no bytes and last_offset = total, as
 * Propolis answers; a start in the gap -ERANGE.
 */
int serial_hub_read(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                    uint8_t *out, size_t *len, uint64_t *last_offset)
{
    if (!h || !len || !last_offset || (max && !out))
        return -EINVAL;
    pthread_mutex_lock(&h->lock);
    uint64_t total = h->total, start;
    if (from_start)
        start = offset;
    else
        start = offset >= total ? 0 : total - offset;
    int r = 0;
    size_t n = 0;
    if (start < total) {
        if (!kept(h, start)) {
            r = -ERANGE;
        } else {
            uint64_t avail = run_end(h, start) - start;
            n = avail < max ? (size_t)avail : max;
            copy_out(h, start, n, out);
        }
    }
    pthread_mutex_unlock(&h->lock);
    if (r == 0) {
        *len = n;
        *last_offset = start < total ? start + n : total;
    }
    return r;
}

/* ---- subscribers ---- */

int serial_hub_subscribe(struct serial_hub *h, uint64_t start, struct serial_sub **out)
{
    if (!h || !out)
        return -EINVAL;
    struct serial_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        int e = -errno;
        free(s);
        return e;
    }
    s->hub = h;

    int r = 0;
    pthread_mutex_lock(&h->lock);
    if (h->closed)
        r = -EPIPE;
    else if (h->n_subs >= SERIAL_MAX_SUBS)
        r = -E2BIG;
    else if (start < h->total && !kept(h, start))
        r = -ERANGE;
    if (r == 0) {
        s->pos = start < h->total ? start : h->total;
        s->replay_end = h->total;
        h->subs[h->n_subs++] = s;
        h->refs++;
        sub_update_ready(s);
    }
    pthread_mutex_unlock(&h->lock);
    if (r < 0) {
        close(s->efd);
        free(s);
        return r;
    }
    *out = s;
    return 0;
}

static void ctl_free_all(struct serial_sub *s)
{
    struct serial_ctl *c = s->ctl_first;
    while (c) {
        struct serial_ctl *next = c->next;
        free(c->json);
        free(c);
        c = next;
    }
    s->ctl_first = s->ctl_last = NULL;
    s->n_ctl = 0;
}

void serial_sub_close(struct serial_sub *s)
{
    if (!s)
        return;
    struct serial_hub *h = s->hub;
    pthread_mutex_lock(&h->lock);
    for (unsigned i = 0; i < h->n_subs; i++) {
        if (h->subs[i] == s) {
            h->subs[i] = h->subs[--h->n_subs];
            h->subs[h->n_subs] = NULL;
            break;
        }
    }
    ctl_free_all(s);
    bool last = --h->refs == 0;
    pthread_mutex_unlock(&h->lock);
    close(s->efd);
    free(s);
    if (last)
        hub_destroy(h);
}

int serial_sub_fd(struct serial_sub *s)
{
    return s->efd;
}

/*
 * The oldest offset >= pos that s can still be given: the next kept byte
 * while replaying, the most recent SERIAL_SUB_QUEUE bytes once live.
 */
static uint64_t sub_first_available(const struct serial_sub *s)
{
    const struct serial_hub *h = s->hub;
    uint64_t off = s->pos;
    if (off < s->replay_end && off < h->total && !kept(h, off))
        off = tail_start(h); /* in the gap or overwritten: the tail is next */
    if (off >= s->replay_end && h->total - off > SERIAL_SUB_QUEUE)
        off = h->total - SERIAL_SUB_QUEUE;
    return off;
}

static int sub_read_locked(struct serial_sub *s, uint8_t *out, size_t max, uint64_t *lost)
{
    const struct serial_hub *h = s->hub;
    const struct serial_ctl *c = s->ctl_first;
    if (c && c->at <= s->pos)
        return -EAGAIN;

    uint64_t avail = sub_first_available(s);
    if (c && c->at < avail)
        avail = c->at; /* report the loss before the control, the rest after */
    if (avail > s->pos) {
        if (lost)
            *lost = avail - s->pos;
        s->pos = avail;
        return -ENOBUFS;
    }

    if (s->pos == h->total)
        return h->closed ? -EPIPE : 0;

    uint64_t end = run_end(h, s->pos);
    if (s->pos < s->replay_end && s->replay_end < end)
        end = s->replay_end; /* the live part is bounded; judge it on its own */
    if (c && c->at < end)
        end = c->at;
    uint64_t n = end - s->pos;
    if (n > max)
        n = max;
    copy_out(h, s->pos, (size_t)n, out);
    s->pos += n;
    return (int)n;
}

int serial_sub_read(struct serial_sub *s, uint8_t *out, size_t max, uint64_t *lost)
{
    if (!s || (max && !out))
        return -EINVAL;
    struct serial_hub *h = s->hub;
    pthread_mutex_lock(&h->lock);
    int r = sub_read_locked(s, out, max, lost);
    sub_update_ready(s);
    pthread_mutex_unlock(&h->lock);
    return r;
}

/* ---- control messages ---- */

void serial_hub_broadcast_control(struct serial_hub *h, const char *json)
{
    if (!h || !json)
        return;
    pthread_mutex_lock(&h->lock);
    for (unsigned i = 0; i < h->n_subs; i++) {
        struct serial_sub *s = h->subs[i];
        struct serial_ctl *c = malloc(sizeof(*c));
        char *copy = strdup(json);
        if (!c || !copy) {
            /* Nothing to report to; this subscriber misses the message. */
            free(c);
            free(copy);
            continue;
        }
        if (s->n_ctl == SERIAL_MAX_CONTROLS) {
            struct serial_ctl *old = s->ctl_first;
            s->ctl_first = old->next;
            if (!s->ctl_first)
                s->ctl_last = NULL;
            s->n_ctl--;
            free(old->json);
            free(old);
        }
        c->next = NULL;
        c->at = h->total;
        c->json = copy;
        if (s->ctl_last)
            s->ctl_last->next = c;
        else
            s->ctl_first = c;
        s->ctl_last = c;
        s->n_ctl++;
        sub_update_ready(s);
    }
    pthread_mutex_unlock(&h->lock);
}

/* Only a message that is due (no unread byte before it) is handed out. */
char *serial_sub_take_control(struct serial_sub *s)
{
    if (!s)
        return NULL;
    struct serial_hub *h = s->hub;
    char *json = NULL;
    pthread_mutex_lock(&h->lock);
    struct serial_ctl *c = s->ctl_first;
    if (c && c->at <= s->pos) {
        s->ctl_first = c->next;
        if (!s->ctl_first)
            s->ctl_last = NULL;
        s->n_ctl--;
        json = c->json;
        free(c);
    }
    sub_update_ready(s);
    pthread_mutex_unlock(&h->lock);
    return json;
}

/* ---- input ---- */

void serial_hub_set_input(struct serial_hub *h, serial_input_fn fn, void *ctx)
{
    pthread_mutex_lock(&h->input_lock);
    h->input_fn = fn;
    h->input_ctx = ctx;
    pthread_mutex_unlock(&h->input_lock);
}

/*
 * The sink runs under input_lock only, never the hub lock, so a sink may
 * take device locks that a vCPU holds while it calls serial_hub_write().
 */
size_t serial_hub_input(struct serial_hub *h, const uint8_t *buf, size_t len)
{
    if (!h || !len)
        return 0;
    pthread_mutex_lock(&h->input_lock);
    size_t n = h->input_fn ? h->input_fn(h->input_ctx, buf, len) : 0;
    pthread_mutex_unlock(&h->input_lock);
    return n < len ? n : len;
}

#ifdef CELLA_SERIAL_HUB_TEST_HOOKS
/*
 * Test hook (built only with -DCELLA_SERIAL_HUB_TEST_HOOKS): advances the
 * history by n zero bytes as if the guest had written them, touching at
 * most HEAD + TAIL bytes of memory, so tests reach offsets beyond 4 GiB.
 */
void serial_hub_test_advance(struct serial_hub *h, uint64_t n);
void serial_hub_test_advance(struct serial_hub *h, uint64_t n)
{
    if (!n)
        return;
    pthread_mutex_lock(&h->lock);
    append(h, NULL, n);
    notify_all(h);
    pthread_mutex_unlock(&h->lock);
}
#endif
