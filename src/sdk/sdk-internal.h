/* What libserve's opaque types hold. Only serve-replica includes this: it builds the request
 * from the ring records, runs the handler, and frames the response it reads back from here.
 *
 * libserve exports only serve_* symbols, so the helpers the replica needs are static inline. */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "serve.h"

/* What the replica plugs into libserve for handles and streaming: libserve knows no daemon. */
struct serve_runtime_ops {
        int (*call)(serve_ctx *ctx, const serve_request *parent, const char *deployment, const char *method,
                    const void *arg, size_t len, bool stream, serve_future **ret_future,
                    struct serve_result *ret_error);
        /* (call: parent is the request the call belongs to (cancelled with it); NULL: the one
         * this thread's handler serves, if any. On failure, ret_error, when not NULL, gets the
         * status and a message naming what is wrong.) */
        int (*wait)(serve_future *f, struct serve_result *ret);
        int (*next)(serve_future *f, const void **ret_data, size_t *ret_len);
        int (*error)(const serve_future *f, const char **ret_message);
        void (*free)(serve_future *f);
        int (*flush)(serve_response *resp);
};

/* The first member of the replica's struct serve_future. */
struct serve_future_head {
        const struct serve_runtime_ops *ops;
};

struct serve_ctx {
        const struct serve_runtime_ops *ops; /* NULL: no runtime (handles answer -ENOTSUP) */
        char *app;
        char *deployment;
        char *replica_id;
        void *state;
        pthread_mutex_t lock; /* guards error: init, reconfigure and check_health run on
                               * different threads */
        char *error;
};

/* serve_call_async()/serve_call_stream() on behalf of `parent` (a request being served, NULL as
 * they do): for code that runs a request's work on another thread than its handler's (the
 * Python bridge's asyncio loop), so that the call still belongs to that request. Returns as
 * serve_call_async(); when the call does not start, *ret_error (if not NULL) may get its status
 * and message (free it with serve_result_free(); untouched when the runtime had none). */
static inline int serve_call_start_for(serve_ctx *ctx, const serve_request *parent, const char *deployment,
                                       const char *method, const void *arg, size_t len, bool stream,
                                       serve_future **ret_future, struct serve_result *ret_error) {
        if (!ctx || !deployment || !method || (!arg && len > 0) || !ret_future)
                return -EINVAL;
        if (!ctx->ops || !ctx->ops->call)
                return -ENOTSUP;
        return ctx->ops->call(ctx, parent, deployment, method, arg, len, stream, ret_future, ret_error);
}

struct serve_req_header {
        const char *name;  /* NUL-terminated, inside serve_request.strings */
        const char *value;
};

enum serve_request_state {
        SERVE_REQUEST_ASSEMBLING, /* body chunks still arriving */
        SERVE_REQUEST_QUEUED,     /* waiting for a handler thread */
        SERVE_REQUEST_RUNNING,    /* a handler thread owns it */
};

struct serve_request {
        uint64_t id;
        uint32_t handler;
        enum serve_request_state state; /* guarded by the replica's table lock */
        int reject_status;              /* != 0: answer with this status, do not run */
        const char *method, *path, *query;
        struct serve_req_header *headers;
        size_t n_headers;
        char *strings;                  /* one allocation for method/path/query/headers */
        uint8_t *body;                  /* body_len + 1 bytes, NUL-terminated */
        uint64_t body_len;
        uint64_t body_received;
        /* Set by the replica's dispatcher on REQ_CANCEL (release), read by the handler through
         * serve_request_cancelled() (acquire). */
        _Atomic bool cancelled;
        uint16_t flags;                 /* PROTO_REQ_* */
        const char *caller;             /* handle calls: the calling deployment, else NULL */
        const char *call_path;          /* handle calls: "A>B" (deployments it came through), else "" */
        void *rt;                       /* the replica's per-request state (its calls, its stream) */
        struct serve_request *next;     /* handler queue link */
};

struct serve_resp_header {
        char *name;
        char *value;
};

struct serve_response {
        const struct serve_runtime_ops *ops; /* for serve_response_flush(); NULL: flush is a no-op */
        void *rt;              /* the replica's: the request this answers, its stream state */
        bool streaming;        /* flushed once: status and headers are gone, body is pieces */
        int status;
        struct serve_resp_header *headers;
        size_t n_headers;
        size_t headers_bytes;  /* as framed in a RESP_START record (struct proto_header + bytes) */
        char *body;
        size_t body_len, body_cap;
};

static inline void serve_request_free(struct serve_request *req) {
        if (!req)
                return;
        free(req->strings);
        free(req->headers);
        free(req->body);
        free(req);
}

static inline void serve_response_init(struct serve_response *resp) {
        *resp = (struct serve_response) { .status = 200 };
}

/* Drops headers and body (the status stays). */
static inline void serve_response_clear(struct serve_response *resp) {
        for (size_t i = 0; i < resp->n_headers; i++) {
                free(resp->headers[i].name);
                free(resp->headers[i].value);
        }
        free(resp->headers);
        free(resp->body);
        resp->headers = NULL;
        resp->n_headers = resp->headers_bytes = 0;
        resp->body = NULL;
        resp->body_len = resp->body_cap = 0;
}

static inline int serve_ctx_init(struct serve_ctx *ctx) {
        *ctx = (struct serve_ctx) {};
        return -pthread_mutex_init(&ctx->lock, NULL);
}

/* Hands out the message set with serve_ctx_set_error() (NULL when none) and forgets it. */
static inline char *serve_ctx_take_error(struct serve_ctx *ctx) {
        pthread_mutex_lock(&ctx->lock);
        char *e = ctx->error;
        ctx->error = NULL;
        pthread_mutex_unlock(&ctx->lock);
        return e;
}
