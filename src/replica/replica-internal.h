/* What the files of serve-replica share (replica.c: the process, its rings and threads). */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "macros.h"
#include "sdk-internal.h"
#include "shm/segment.h"

/* Who reads the request ring. */
enum ring_owner {
        RING_VACANT, /* nobody: kick_locked() finds someone */
        RING_WORKER, /* a handler thread, the leader */
        RING_MAIN,   /* the main thread: every handler thread was busy */
};

struct batcher;

struct replica {
        int ctl_fd;
        int sig_fd;
        struct segment seg;
        const struct serve_application *app; /* the loaded module's application (the graph) */
        const struct serve_deployment *dep;
        size_t n_handlers;
        /* Batched handlers (batch.c). The handler numbering is dep->handlers (0 .. n_handlers-1),
         * then dep->batched (n_handlers + j, run by batchers[j]). Set at start, before the
         * handler threads; fixed after (a batcher's parameters change under its own lock). */
        size_t n_batched;
        struct batcher **batchers;
        uint32_t http_handler;               /* where HTTP requests go (see replica.c) */
        struct serve_ctx ctx;
        unsigned max_ongoing;
        double health_period_s;

        /* Guards everything down to `main_kicked`. Whoever ring_owner names is the request
         * ring's one consumer and alone touches seg.req; handing it over under this lock orders
         * one owner's use of seg.req before the next one's. */
        pthread_mutex_t lock;
        pthread_cond_t cond;                 /* for idle handler threads: see kick_locked() */
        struct serve_request **table;        /* received, not yet answered */
        size_t n_table, table_cap;
        struct serve_request *queue_head, *queue_tail;
        size_t outstanding;                  /* received, response not completely sent */
        bool draining;                       /* new requests get 503 */
        bool stopping;                       /* handler threads exit when the queue is empty */
        enum ring_owner ring_owner;
        unsigned n_idle;                     /* handler threads waiting on cond */
        bool wake_pending;                   /* cond signalled, no waiter has looked yet */
        bool main_kicked;                    /* main_wake rung, the main thread has not looked yet */
        int main_wake;                       /* eventfd: the main thread should look at ring_owner */

        struct stream *streams;              /* streaming responses under way (stream.c); lock */

        pthread_mutex_t send_lock;           /* makes the handler threads one ring producer */

        pthread_t *workers;
        size_t n_workers;
        pthread_t health;
        bool health_started;
        /* Set by main before joining the health thread (release), polled there (acquire). */
        _Atomic bool exiting;
        /* Set by main once init succeeded (release); the health thread only runs check_health
         * after it (acquire). */
        _Atomic bool ready;

        uint64_t drain_deadline;
        int exit_status;
};

/* ---- handlers (replica.c) ---- */

/* The index of d's handler called `name` in the handler numbering (plain handlers, then
 * batched ones), or -ENOENT: what a handle call's method names, here and at the callee. */
int deployment_handler_index(const struct serve_deployment *d, const char *name);

/* ---- the response ring (replica.c) ---- */

/* Reserves a response record, waiting for the proxy to free space. Call with send_lock held: a
 * response's records stay contiguous in the ring. */
void *resp_alloc(struct replica *rep, uint16_t type, uint32_t len);
/* Writes resp's RESP_START record for request id (status, headers, the first `first` body
 * bytes; body_len and flags as given), send_lock held; not yet published. */
void resp_put_start(struct replica *rep, uint64_t id, const struct serve_response *resp, uint64_t body_len,
                    uint32_t flags, size_t first);
/* Makes the records allocated so far visible to the proxy (rings its doorbell if it sleeps). */
void resp_publish(struct replica *rep);
/* The proxy broke the protocol: end the process (exit 2). */
_noreturn_ void peer_broken(int r, const char *what);
/* Replaces resp with a plain 500 (response.c). */
void response_internal_error(struct serve_response *resp);

/* ---- streaming responses (stream.c) ---- */

/* One response's stream: serve_response_flush() sends what the handler wrote so far. Lives on
 * the handler thread's stack for one request. */
struct stream {
        struct replica *rep;
        struct serve_request *req;
        bool allowed;            /* its sink takes a stream (PROTO_REQ_STREAM_OK) */
        bool started;            /* RESP_START went out: the response is a stream */
        uint64_t total;          /* body bytes taken into the stream (<= PROTO_MAX_RESP_BODY) */
        /* Guarded by rep->lock: body bytes sent (counted before they go out), and credited by
         * the proxy; sent - credited <= PROTO_STREAM_WINDOW. */
        uint64_t sent, credited;
        pthread_cond_t cond;     /* with rep->lock: credit arrived, or the request was cancelled */
        struct stream *next;     /* in rep->streams once started */
};

/* Makes resp's serve_response_flush() stream it (resp->ops, resp->rt). */
void stream_init(struct stream *st, struct replica *rep, struct serve_request *req, struct serve_response *resp);
void stream_destroy(struct stream *st);
/* The handler returned: sends the rest of a started stream's body, waiting for credit (a no-op
 * for a response that is not a stream). Returns 0, -ECANCELED or -EFBIG (the rest was dropped). */
int stream_finish_body(struct stream *st, struct serve_response *resp);
/* Takes a started stream out of rep->streams (rep->lock held): before its end is visible. */
void stream_forget_locked(struct stream *st);
/* Sends RESP_END: the stream is complete. */
void stream_send_end(struct stream *st);
/* For the reader of the request ring (rep->lock held). A credit (or cancel) for a request that
 * is not streaming is ignored: it ended meanwhile. stream_credit_locked() returns 0, or -EINVAL
 * for credit beyond what the stream sent (the proxy is broken). */
int stream_credit_locked(struct replica *rep, uint64_t id, uint64_t bytes);
void stream_cancel_locked(struct replica *rep, uint64_t id);
