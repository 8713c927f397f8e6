/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A fake COM1 hub with the semantics of instance/serial_hub.h, for the API
 * tests: head + tail history with absolute offsets, per-subscriber bounded
 * queues where a full queue drops bytes and leaves a lag marker at the gap
 * (serial_sub_read returns -ENOBUFS there, in stream order), control
 * messages in order with the data, and an eventfd per subscriber that the
 * hub keeps readable exactly while a read would return something (as the
 * real hub does). Reads that start at or beyond the end give no bytes;
 * starts in the gap between head and tail are -ERANGE.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "fake_instance.h"

enum marker_kind { MK_LAG, MK_CONTROL };

struct marker {
    uint64_t pos; /* queue stream position (bytes enqueued before it) */
    enum marker_kind kind;
    uint64_t lost;
    char *text;
};

struct serial_sub {
    struct serial_hub *h;
    int efd;
    bool notified; /* efd holds a count: readable exactly while something is pending */
    uint8_t *q;
    size_t qcap, qhead, qlen;
    uint64_t enq, deq;
    struct marker *m;
    size_t nm, mcap;
    bool closed;
};

struct serial_hub {
    pthread_mutex_t lock;
    size_t sub_queue; /* queue bytes of new subscribers (SERIAL_SUB_QUEUE) */
    uint8_t *head;
    uint8_t *tail; /* ring: byte at offset o is tail[o % SERIAL_HISTORY_TAIL] */
    uint64_t total;
    struct serial_sub *subs[SERIAL_MAX_SUBS];
    size_t nsubs;
    serial_input_fn in;
    void *in_ctx;
    bool closed;
};

static bool sub_pending(const struct serial_sub *s)
{
    return s->qlen || s->nm || s->closed;
}

/* Makes the eventfd readable exactly while a read would return non-zero. */
static void signal_sub(struct serial_sub *s)
{
    uint64_t v = 1;
    if (sub_pending(s) && !s->notified) {
        s->notified = write(s->efd, &v, sizeof(v)) == (ssize_t)sizeof(v);
    } else if (!sub_pending(s) && s->notified) {
        s->notified = read(s->efd, &v, sizeof(v)) != (ssize_t)sizeof(v);
    }
}

static int push_marker(struct serial_sub *s, struct marker mk)
{
    if (s->nm == s->mcap) {
        size_t cap = s->mcap ? 2 * s->mcap : 8;
        struct marker *m = realloc(s->m, cap * sizeof(*m));
        if (!m)
            return -ENOMEM;
        s->m = m;
        s->mcap = cap;
    }
    s->m[s->nm++] = mk;
    return 0;
}

static void pop_marker(struct serial_sub *s)
{
    free(s->m[0].text);
    memmove(s->m, s->m + 1, (s->nm - 1) * sizeof(*s->m));
    s->nm--;
}

/* Hub lock held. */
static void sub_lose(struct serial_sub *s, uint64_t n)
{
    if (s->nm && s->m[s->nm - 1].kind == MK_LAG && s->m[s->nm - 1].pos == s->enq)
        s->m[s->nm - 1].lost += n;
    else
        push_marker(s, (struct marker){.pos = s->enq, .kind = MK_LAG, .lost = n});
}

/* Hub lock held. */
static void sub_enqueue(struct serial_sub *s, const uint8_t *p, size_t len)
{
    size_t room = s->qcap - s->qlen;
    size_t take = len < room ? len : room;
    for (size_t i = 0; i < take; i++)
        s->q[(s->qhead + s->qlen + i) % s->qcap] = p[i];
    s->qlen += take;
    s->enq += take;
    if (len > take)
        sub_lose(s, len - take);
}

static bool kept(const struct serial_hub *h, uint64_t o)
{
    uint64_t tail_start = h->total > SERIAL_HISTORY_TAIL ? h->total - SERIAL_HISTORY_TAIL : 0;
    return o < SERIAL_HISTORY_HEAD || o >= tail_start;
}

static uint8_t hist_byte(const struct serial_hub *h, uint64_t o)
{
    uint64_t tail_start = h->total > SERIAL_HISTORY_TAIL ? h->total - SERIAL_HISTORY_TAIL : 0;
    return o >= tail_start ? h->tail[o % SERIAL_HISTORY_TAIL] : h->head[o];
}

int serial_hub_new(struct serial_hub **out)
{
    struct serial_hub *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    h->head = malloc(SERIAL_HISTORY_HEAD);
    h->tail = malloc(SERIAL_HISTORY_TAIL);
    if (!h->head || !h->tail) {
        free(h->head);
        free(h->tail);
        free(h);
        return -ENOMEM;
    }
    pthread_mutex_init(&h->lock, NULL);
    h->sub_queue = SERIAL_SUB_QUEUE;
    *out = h;
    return 0;
}

void fake_hub_set_sub_queue(struct serial_hub *h, size_t bytes)
{
    pthread_mutex_lock(&h->lock);
    h->sub_queue = bytes ? bytes : SERIAL_SUB_QUEUE;
    pthread_mutex_unlock(&h->lock);
}

static void sub_free(struct serial_sub *s)
{
    while (s->nm)
        pop_marker(s);
    free(s->m);
    free(s->q);
    close(s->efd);
    free(s);
}

void serial_hub_free(struct serial_hub *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->nsubs; i++)
        sub_free(h->subs[i]); /* only at shutdown, after the API stopped */
    pthread_mutex_destroy(&h->lock);
    free(h->head);
    free(h->tail);
    free(h);
}

void serial_hub_write(struct serial_hub *h, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < len; i++) {
        uint64_t o = h->total + i;
        if (o < SERIAL_HISTORY_HEAD)
            h->head[o] = buf[i];
        h->tail[o % SERIAL_HISTORY_TAIL] = buf[i];
    }
    h->total += len;
    for (size_t i = 0; i < h->nsubs; i++) {
        sub_enqueue(h->subs[i], buf, len);
        signal_sub(h->subs[i]);
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

static int read_locked(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                       uint8_t *out, size_t *len, uint64_t *last_offset)
{
    uint64_t start = from_start ? offset : offset >= h->total ? 0 : h->total - offset;
    if (start >= h->total) {
        *len = 0;
        *last_offset = h->total; /* nothing there yet: no bytes, as Propolis */
        return 0;
    }
    if (!kept(h, start))
        return -ERANGE;
    size_t n = 0;
    while (n < max && start + n < h->total && kept(h, start + n)) {
        out[n] = hist_byte(h, start + n);
        n++;
    }
    *len = n;
    *last_offset = start + n;
    return 0;
}

int serial_hub_read(struct serial_hub *h, bool from_start, uint64_t offset, size_t max,
                    uint8_t *out, size_t *len, uint64_t *last_offset)
{
    *len = 0;
    *last_offset = 0;
    pthread_mutex_lock(&h->lock);
    int rc = read_locked(h, from_start, offset, max, out, len, last_offset);
    pthread_mutex_unlock(&h->lock);
    return rc;
}

static int subscribe_locked(struct serial_hub *h, uint64_t start, struct serial_sub **out)
{
    if (h->nsubs >= SERIAL_MAX_SUBS)
        return -E2BIG;
    if (start > h->total)
        start = h->total;
    if (start < h->total && !kept(h, start))
        return -ERANGE;
    struct serial_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->h = h;
    s->qcap = h->sub_queue + (size_t)(h->total - start);
    s->q = malloc(s->qcap);
    s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!s->q || s->efd < 0) {
        free(s->q);
        if (s->efd >= 0)
            close(s->efd);
        free(s);
        return -ENOMEM;
    }
    /* Replay: kept history from start, with a lag marker at the gap. */
    for (uint64_t o = start; o < h->total;) {
        if (!kept(h, o)) {
            uint64_t next = h->total - SERIAL_HISTORY_TAIL;
            sub_lose(s, next - o);
            o = next;
            continue;
        }
        uint8_t b = hist_byte(h, o);
        sub_enqueue(s, &b, 1);
        o++;
    }
    s->closed = h->closed;
    h->subs[h->nsubs++] = s;
    signal_sub(s);
    *out = s;
    return 0;
}

int serial_hub_subscribe(struct serial_hub *h, uint64_t start, struct serial_sub **out)
{
    pthread_mutex_lock(&h->lock);
    int rc = subscribe_locked(h, start, out);
    pthread_mutex_unlock(&h->lock);
    return rc;
}

void serial_sub_close(struct serial_sub *s)
{
    if (!s)
        return;
    struct serial_hub *h = s->h;
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->nsubs; i++) {
        if (h->subs[i] == s) {
            h->subs[i] = h->subs[--h->nsubs];
            break;
        }
    }
    pthread_mutex_unlock(&h->lock);
    sub_free(s);
}

int serial_sub_fd(struct serial_sub *s)
{
    return s->efd;
}

static int sub_read_locked(struct serial_sub *s, uint8_t *out, size_t max, uint64_t *lost)
{
    if (s->nm && s->m[0].pos == s->deq) {
        if (s->m[0].kind != MK_LAG)
            return -EAGAIN;
        *lost = s->m[0].lost;
        pop_marker(s);
        return -ENOBUFS;
    }
    size_t limit = s->qlen;
    if (s->nm && s->m[0].pos - s->deq < limit)
        limit = (size_t)(s->m[0].pos - s->deq);
    size_t n = limit < max ? limit : max;
    for (size_t i = 0; i < n; i++)
        out[i] = s->q[(s->qhead + i) % s->qcap];
    s->qhead = (s->qhead + n) % s->qcap;
    s->qlen -= n;
    s->deq += n;
    return n ? (int)n : (s->closed && !s->nm ? -EPIPE : 0);
}

int serial_sub_read(struct serial_sub *s, uint8_t *out, size_t max, uint64_t *lost)
{
    *lost = 0;
    if (max > INT32_MAX)
        max = INT32_MAX;
    pthread_mutex_lock(&s->h->lock);
    int rc = sub_read_locked(s, out, max, lost);
    signal_sub(s);
    pthread_mutex_unlock(&s->h->lock);
    return rc;
}

void serial_hub_set_input(struct serial_hub *h, serial_input_fn fn, void *ctx)
{
    pthread_mutex_lock(&h->lock);
    h->in = fn;
    h->in_ctx = ctx;
    pthread_mutex_unlock(&h->lock);
}

size_t serial_hub_input(struct serial_hub *h, const uint8_t *buf, size_t len)
{
    pthread_mutex_lock(&h->lock);
    serial_input_fn fn = h->in;
    void *ctx = h->in_ctx;
    pthread_mutex_unlock(&h->lock);
    return fn ? fn(ctx, buf, len) : 0;
}

void serial_hub_broadcast_control(struct serial_hub *h, const char *json)
{
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->nsubs; i++) {
        struct serial_sub *s = h->subs[i];
        char *t = strdup(json);
        if (t && push_marker(s, (struct marker){.pos = s->enq, .kind = MK_CONTROL, .text = t}) < 0)
            free(t);
        signal_sub(s);
    }
    pthread_mutex_unlock(&h->lock);
}

char *serial_sub_take_control(struct serial_sub *s)
{
    struct serial_hub *h = s->h;
    char *t = NULL;
    pthread_mutex_lock(&h->lock);
    if (s->nm && s->m[0].pos == s->deq && s->m[0].kind == MK_CONTROL) {
        t = s->m[0].text;
        s->m[0].text = NULL;
        pop_marker(s);
    }
    signal_sub(s);
    pthread_mutex_unlock(&h->lock);
    return t;
}

void fake_hub_close(struct serial_hub *h)
{
    pthread_mutex_lock(&h->lock);
    h->closed = true;
    for (size_t i = 0; i < h->nsubs; i++) {
        h->subs[i]->closed = true;
        signal_sub(h->subs[i]);
    }
    pthread_mutex_unlock(&h->lock);
}
