/* One request model for the data plane.
 *
 * A request comes from a *sink* — where its response goes: an HTTP connection on :8000, a
 * stream of a peer node's data link, (later) a replica's handle call — and runs on a
 * *backend*: a local replica's rings, or a peer node. Both are small ops tables; the router
 * (router.h) picks a backend without knowing which kind of sink or backend it holds, and sinks
 * and backends never call each other directly: they go through the functions below.
 *
 * Lifetime: the sink creates the request (request_new) and hands it to the router. From then
 * on the request model owns it. It ends in exactly one of three ways:
 *   - the response completes: sink->end(), then the request is freed;
 *   - it fails (replica died, timeout, no capacity...): request_fail() — sink->fail() runs from
 *     the loop, never inside the call that found the failure, then the request is freed;
 *   - the sink goes away first (client disconnect, peer cancel): request_abandon() — the
 *     backend learns it is cancelled, and the request is freed once the backend lets go.
 * A sink's callbacks are never called after request_abandon(). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http_parser.h"
#include "loop.h"
#include "util.h"

struct request;
struct deployment;

/* A response whose length is not known when it starts (a handler that streams): its body
 * comes in pieces, each body() call one piece the handler flushed, until end(). */
#define REQUEST_LEN_STREAM UINT64_MAX

struct sink_ops {
        /* The response starts: its status, validated "Name: value\r\n" header lines and body
         * length, or REQUEST_LEN_STREAM: the length is unknown, the body comes in pieces until
         * end() (an HTTP client gets them as chunks). */
        void (*begin)(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len);
        /* Body bytes, in order (never 0 of them). For a stream, one call per piece, to be passed
         * on at once rather than collected. */
        void (*body)(struct request *q, const void *data, size_t len);
        /* The whole response was delivered. The request is freed after this returns. */
        void (*end)(struct request *q);
        /* The request failed (status 502, 503, 504...; why is a short reason). Runs from the
         * loop. The request is freed after this returns. */
        void (*fail)(struct request *q, int status, const char *why);
        /* Optional: the request cannot be placed on this node at all (no replica of its
         * deployment here any more); a peer sink tells its sender to try elsewhere. NULL:
         * treated as fail(status). */
        void (*reject)(struct request *q, int status);
        /* Response bytes the sink can take now without passing its budget. At 0 the backend
         * stops delivering until the sink calls request_sink_ready(). A stream's backend stops
         * its sender through a credit window instead, so a sink may still receive up to
         * PROTO_STREAM_WINDOW (proto.h) bytes per streaming request after saying 0: each sink
         * tolerates that much beyond its budget. */
        size_t (*room)(const struct request *q);
};

struct backend;
struct backend_ops {
        /* May take one more request now. */
        bool (*available)(const struct backend *b);
        /* Has or will have capacity: a request may wait in the deployment's queue for it. */
        bool (*may_serve)(const struct backend *b);
        /* Busy-ness relative to its capacity, for power of two choices. */
        double (*load)(const struct backend *b);
        /* Takes q (available() was true). May fail q with request_fail(). */
        void (*send)(struct backend *b, struct request *q);
        /* Nobody waits for q any more; the backend calls request_release() when it lets go. */
        void (*cancel)(struct request *q);
        /* q's sink has room again after room() said 0. */
        void (*resume)(struct request *q);
};

struct backend {
        const struct backend_ops *ops;
        struct list link;          /* in its deployment's local or remote set */
};

enum request_state {
        REQUEST_NEW,
        REQUEST_QUEUED,     /* waiting in its deployment's queue */
        REQUEST_SENDING,    /* at a backend, partly sent */
        REQUEST_SENT,       /* whole request at its backend, waiting for the response */
        REQUEST_RESPONDING, /* response under way */
        REQUEST_DONE,       /* released by its backend; completion runs from the loop */
};

struct request {
        /* Where the response goes; sink == NULL once nobody waits. */
        const struct sink_ops *sink;
        void *sink_ctx;
        uint64_t sink_id;
        struct list sink_link;     /* the sink's list of its requests */
        bool local_only;           /* never forwarded to a peer (it came from one) */
        bool call;                 /* a handle call (call.h): its head names deployment and method */
        bool sink_blocked;         /* room() said 0; waiting for request_sink_ready() */

        /* Where it runs. */
        struct deployment *dep;
        struct backend *backend;
        uint64_t backend_id;
        uint32_t slot;
        unsigned tries;            /* backends it was offered to */
        enum request_state state;
        bool cancelled;
        struct list link;          /* dep->queue, or the backend's backlog */

        /* The request, owned here: raw holds the head and the (decoded) body. */
        char *raw;
        size_t head_len;
        struct http_request req;
        char *norm_path;           /* the normalised path when it differs from req.path */
        const char *path;          /* after the route prefix; always starts with '/' */
        size_t path_len;
        const char *body;
        uint64_t body_len;
        uint64_t body_sent;
        uint64_t body_budget;      /* bytes of the global request-body budget it holds */
        bool start_sent;

        uint64_t resp_body_len, resp_received;
        bool resp_stream;          /* the response is a stream (request_begin with REQUEST_LEN_STREAM) */
        /* Replica link, streaming responses: body bytes credited back to the replica (it may
         * have PROTO_STREAM_WINDOW more in flight), and a REQ_CANCEL that did not fit in the
         * ring yet (sent by replica_link_flush()). */
        uint64_t resp_credited;
        bool cancel_owed;
        uint64_t start_ns;         /* when the whole request was here */
        int status;                /* the response's status (for metrics) */
        uint64_t deadline_ns;      /* request_timeout_s; 0 = none */
        struct list tlink;         /* the router's request-timeout list */

        /* A failure waiting to be delivered from the loop. */
        struct loop_deferred done;
        int fail_status;
        bool fail_reject;
        char fail_why[160];
};

/* Sets up the model for this process's loop (one data-plane loop per process) and the budget
 * for buffered request bodies across all sinks (0: none). */
void request_init(struct loop *loop, uint64_t body_budget);
void request_set_body_budget(uint64_t body_budget);
struct loop *request_loop(void);

/* A new request from `sink`. Returns it, or NULL on allocation failure. */
struct request *request_new(const struct sink_ops *sink, void *sink_ctx, uint64_t sink_id);

/* Takes n bytes of the body budget (for a body not yet in a request); returns 0 or -ENOBUFS.
 * request_budget_return() gives them back. */
int request_budget_take(uint64_t n);
void request_budget_return(uint64_t n);
/* Takes n more bytes of the body budget for q (given back when q is freed). Returns 0, or -ENOBUFS when the budget is
 * exhausted (answer 503 with Retry-After; nothing was taken). */
int request_body_reserve(struct request *q, uint64_t n);
/* Bytes of request bodies buffered now, and the budget (for metrics). */
uint64_t request_body_buffered(void);

/* Normalises q's path (http_path_normalize()): q->norm_path is set when it differs. Returns
 * 0, -EINVAL when the path climbs above "/" (answer 400) or -ENOMEM. */
int request_normalize_path(struct request *q);

/* Someone still waits for q's response. */
static inline bool request_waiting(const struct request *q) { return q->sink != NULL; }

/* The backend's response hooks: forward to the sink when it still waits. request_begin()
 * sets q->resp_stream for body_len == REQUEST_LEN_STREAM (sinks read it in end()). */
void request_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len);
void request_body(struct request *q, const void *data, size_t len);
/* Response bytes q's sink can take now (SIZE_MAX when nobody waits: the rest is discarded). */
size_t request_room(const struct request *q);
/* The response is complete: sink->end() and free. The backend has released q. */
void request_end(struct request *q);
/* q failed (the backend has released it, or it was never at one): sink->fail() from the loop,
 * then free. */
void request_fail(struct request *q, int status, const char *why);
/* Like request_fail(), but the sink may tell its sender to try another node. */
void request_reject(struct request *q, int status);

/* The sink no longer waits for q (client gone, peer cancelled, timeout answered already). No
 * sink callback runs for q after this. */
void request_abandon(struct request *q);
/* q's deadline passed: the sink gets fail(status) now (call from the loop, not from inside a
 * sink's own call), the backend a cancellation. */
void request_expire(struct request *q, int status, const char *why);
/* q's sink has room again: the backend resumes delivering. */
void request_sink_ready(struct request *q);

/* The backend lets go of an abandoned request (its response was discarded): free it. */
void request_release(struct request *q);

/* Frees q now (only for requests never handed to the router). */
void request_free(struct request *q);
