/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Internals of the HTTP server shared by its files: the server and
 * per-request structs, the route table, reply helpers and the websocket
 * session. Nothing here is used outside src/api/.
 *
 * Threading: a struct api_req belongs to one libmicrohttpd connection
 * thread (its access handler, upgrade handler and completion callback all
 * run there, one after the other). struct api_server is shared: its
 * counters are atomic, its websocket bookkeeping is under `lock`.
 */
#ifndef CELLA_API_API_INT_H
#define CELLA_API_API_INT_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "api/api.h"
#include "common/error.h"

/* Bytes of a too-large body the server reads and drops so that it can
 * still answer 413 on a clean connection; beyond this it answers at once
 * (or, mid-body, closes the connection). */
#define API_DRAIN_MAX (1u << 20)

/* How long one instance_wait slice of a state monitor lasts. */
#define API_MONITOR_SLICE_MS 250

struct serial_sub;
struct api_req;

/* The running server (api.h). */
struct api_server {
    struct MHD_Daemon *daemon;
    struct instance *inst;
    struct api_config cfg; /* defaults filled in; cfg.address points at `address` */
    char address[64];
    uint16_t port;
    atomic_bool stopping;
    int stop_fd; /* eventfd; becomes readable (for good) when stopping */
    atomic_size_t inflight_body;
    atomic_uint_fast64_t counter; /* request ids when getrandom fails */
    pthread_mutex_t lock;         /* guards ws_active and the api_req websocket flags */
    pthread_cond_t ws_idle;       /* signalled when ws_active drops to 0 */
    unsigned ws_active;
};

/* Answers r with one of the api_reply_* helpers (or sets r->abort). */
typedef void (*api_handler)(struct api_req *r);

/* How a route's request body is read. */
enum api_body_kind {
    API_BODY_NONE, /* any body is read (within the small limit) and ignored */
    API_BODY_JSON, /* a JSON body is required; content type checked */
};

/* One method of a route: its handler (runs once the body is read). */
struct api_method {
    const char *method; /* "GET", "PUT", ... */
    api_handler fn;
    enum api_body_kind body;
    bool big_body; /* limit is cfg.max_ensure_body, else cfg.max_body */
};

/* A path and the methods it answers; any other method there is 405. */
struct api_route {
    const char *path;  /* exact path, or a pattern handled by api_route_match */
    const char *allow; /* Allow header for 405 */
    struct api_method methods[2];
};

/* One HTTP request, from its first byte to its completion (or its websocket's end). */
struct api_req {
    struct api_server *srv;
    struct MHD_Connection *conn;
    char id[40];
    struct timespec start;
    char method[16];
    char path[160]; /* for logs; truncated */
    const struct api_route *route;
    const struct api_method *m;
    char arg[64]; /* path parameter ({migration_id}) */

    /* An error found before the body was read, answered after it. */
    unsigned err_status;
    const char *err_code;
    char err_msg[200];

    /* The request body. */
    char *body;
    size_t len, cap, limit;
    size_t received; /* every byte seen, kept or dropped */
    size_t reserved; /* bytes counted in srv->inflight_body */

    /* The answer. */
    unsigned status; /* 0 until a response is queued */
    bool abort;      /* close the connection without an answer */

    /* Websocket (GET /instance/serial). */
    struct serial_sub *sub; /* owned until the session starts */
    bool ws_queued;         /* a 101 response was queued */
    bool ws_started;        /* the upgrade handler runs or ran */
    bool ws_done;           /* the session ended */
    bool completed;         /* libmicrohttpd reported the request complete */
    bool ws_offset_known;   /* ws_offset is exact (not "from now" past the end) */
    uint64_t ws_offset;     /* absolute offset of the first byte the session sends */
    /* What runs on the upgraded socket (connection thread, blocking). */
    void (*ws_run)(struct api_req *r, const char *extra_in, size_t extra_len, int sock);
};

/* ---- routes.c ---- */

/*
 * The route for `path`: exact match, or the /instance/migrate/{id}/start
 * pattern (the id, bounded, copied into r->arg). NULL when unknown.
 */
const struct api_route *api_route_match(struct api_req *r, const char *path);

/* ---- serial.c ---- */

/* GET /instance/serial/history. Connection thread. */
void api_h_serial_history(struct api_req *r);
/*
 * GET /instance/serial: checks the handshake, subscribes (r->sub) and
 * queues the 101 whose upgrade handler runs the session (ws.c).
 * Connection thread.
 */
void api_h_serial_ws(struct api_req *r);

/*
 * For any websocket endpoint: checks the client's handshake headers (an
 * error answer is queued and false returned when they are wrong), then
 * api_ws_upgrade queues the 101 whose upgrade handler calls r->ws_run.
 */
bool api_ws_handshake_ok(struct api_req *r);
void api_ws_upgrade(struct api_req *r);

/* ---- ws.c ---- */

/*
 * The console websocket session on an upgraded socket; returns when it
 * ends (client closed, VM gone, server stopping, client stalled).
 * Connection thread; blocks it for the session's life.
 */
void api_ws_session(struct api_req *r, const char *extra_in, size_t extra_len, int sock);

/* ---- server.c: replies (each queues the response; the first one wins) ---- */

/* JSON body (reference stolen). 0, or -ENOMEM (a 500 was attempted). */
int api_reply_json(struct api_req *r, unsigned status, json_t *body);

/* Body text already encoded (malloc'd, stolen). */
int api_reply_text(struct api_req *r, unsigned status, char *text, size_t len);

/* 204 (or another status) with no body. */
int api_reply_empty(struct api_req *r, unsigned status);

/* {request_id, message, error_code?}; error_code may be NULL. */
int api_reply_error(struct api_req *r, unsigned status, const char *error_code, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

/*
 * An error whose message is `summary` followed by one line per record,
 * "pointer: message", with `prefix` put before every non-empty pointer
 * (so spec-relative pointers name the field in the request body).
 */
int api_reply_errors(struct api_req *r, unsigned status, const char *error_code,
                     const char *summary, const struct cella_errors *errs, const char *prefix);

/* Queues an already built response (adds x-request-id). */
int api_queue(struct api_req *r, unsigned status, struct MHD_Response *resp);

/* ---- server.c: request helpers ---- */

/*
 * Parses the body as JSON (`any`: any JSON value, else an object). On
 * failure answers 400 naming line and column and returns -EINVAL.
 */
int api_body_json(struct api_req *r, bool any, json_t **out);

/*
 * Checks the query string: only the names in `allowed`, each at most
 * once. Answers 400 and returns -EINVAL otherwise.
 */
int api_query_check(struct api_req *r, const char *const *allowed, size_t n);

/*
 * A query parameter as a uint64 (decimal, no sign, no spaces, no
 * overflow). 0 with *present false when absent; -EINVAL after answering
 * 400 when malformed.
 */
int api_query_u64(struct api_req *r, const char *name, bool *present, uint64_t *out);

/* A request header, or NULL. */
const char *api_header(struct api_req *r, const char *name);

/* Whether the client hung up (long polls check between waits). */
bool api_client_gone(struct api_req *r);

/*
 * Maps an instance return code shared by every endpoint (-ENOENT: 424
 * NoInstance) and anything unexpected (500) to an answer.
 */
void api_reply_instance_error(struct api_req *r, int rc, const struct cella_errors *errs);

/* Monotonic milliseconds. */
uint64_t api_now_ms(void);

/* One log line for a finished request (status 0: no answer was sent). */
void api_log_request(struct api_req *r, const char *note);

/* Frees a request (and a subscription it still owns). */
void api_req_free(struct api_req *r);

#endif
