/* serve.h — write a deployment in C.
 *
 * A deployment is a `struct serve_deployment` in a shared object; an application is a
 * `struct serve_application` exported under a symbol (conventionally `app`) that names the
 * ingress deployment and every deployment it binds. `import_path: libfoo.so:app` in apps.yaml
 * points at it. Each replica is its own process: `init` runs once in it, then handlers run on
 * `max_ongoing_requests` threads at once, so a handler must be thread-safe with respect to the
 * state it shares through serve_ctx_state().
 *
 *   static int echo(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
 *           size_t n;
 *           const void *body = serve_request_body(req, &n);
 *           serve_response_write(resp, body, n);
 *           return 0;
 *   }
 *   static const struct serve_handler handlers[] = { { "__call__", echo }, { NULL, NULL } };
 *   static const struct serve_deployment Echo = { SERVE_ABI_VERSION, "Echo", .handlers = handlers };
 *   SERVE_APPLICATION(app, &Echo, &Echo);   // ingress, then every deployment
 *
 * Build: cc -shared -fPIC -o libecho.so echo.c $(pkg-config --cflags --libs serve) */
#ifndef SERVE_H
#define SERVE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SERVE_ABI_VERSION 3u /* 2: batched handlers, binds (handles); 3: user_config and
                              * autoscaling_config defaults in code */

typedef struct serve_ctx serve_ctx;           /* one per replica */
typedef struct serve_request serve_request;   /* valid during the handler call only */
typedef struct serve_response serve_response;

/* A request handler. Return 0 after filling resp (status defaults to 200), or a negative errno
 * for an internal error: the client gets 500 unless the handler already set a status >= 400. */
typedef int (*serve_handler_fn)(serve_ctx *ctx, const serve_request *req, serve_response *resp);

/* A batched handler (Ray's @serve.batch): called once for n requests that arrived together
 * (1 <= n <= max_batch_size), each with its own response to fill; reqs[i] is answered with
 * resps[i]. Return 0, or a negative errno to answer 500 to every request of the batch whose
 * response has no status >= 400 yet. */
typedef int (*serve_batch_fn)(serve_ctx *ctx, size_t n, const serve_request *const *reqs,
                              serve_response *const *resps);

struct serve_handler {
        const char *name;   /* "__call__" (or the first handler) receives HTTP traffic */
        serve_handler_fn fn;
};

/* A batched handler: requests for `name` are collected into one call of fn, up to
 * max_batch_size of them (default 10; a replica holds at most max_ongoing_requests requests at
 * once, so raise that too), the first one waiting at most batch_wait_timeout_s for more
 * (default 0.01 s). A user_config with "max_batch_size" and/or "batch_wait_timeout_s"
 * overrides both for every batched handler of the deployment (at start and on reconfigure). */
struct serve_batch_handler {
        const char *name;
        serve_batch_fn fn;
        unsigned max_batch_size;
        double batch_wait_timeout_s;
};

/* Defaults in code; apps.yaml overrides each one it sets. 0 means "use the system default". */
struct serve_deployment_options {
        int num_replicas;            /* default 1 */
        int max_ongoing_requests;    /* default 5 */
        int max_queued_requests;     /* default -1 (unbounded); write SERVE_UNBOUNDED */
        double health_check_period_s;    /* default 10 */
        double health_check_timeout_s;   /* default 30 */
        double graceful_shutdown_timeout_s; /* default 20 */
        double num_cpus;             /* default 1 */
        double num_gpus;             /* default 0 */
};
#define SERVE_UNBOUNDED (-1)

struct serve_deployment {
        uint32_t abi_version;        /* SERVE_ABI_VERSION */
        const char *name;
        /* Runs once per replica before any request. args: the application's `args` as JSON
         * text ("{}" when none); user_config: JSON text or NULL. Return 0, or a negative errno
         * (and optionally serve_ctx_set_error()) to fail the replica start. */
        int (*init)(serve_ctx *ctx, const char *args_json, const char *user_config_json);
        const struct serve_handler *handlers; /* terminated by { NULL, NULL } */
        /* Optional: a new user_config without restarting the replica. */
        int (*reconfigure)(serve_ctx *ctx, const char *user_config_json);
        /* Optional: called every health_check_period_s; non-zero = unhealthy (replaced). */
        int (*check_health)(serve_ctx *ctx);
        /* Optional: runs once when the replica stops, after in-flight requests finished. */
        void (*destroy)(serve_ctx *ctx);
        struct serve_deployment_options defaults;
        /* The deployments of the application this one calls through handles (the graph:
         * Pipeline binds Embedder and Ranker), NULL-terminated; NULL when it calls none. Each
         * must be a deployment of the application, and the graph must have no cycle: both are
         * checked when the application is loaded (a config error naming them). */
        const char *const *binds;
        /* Batched handlers, terminated by { NULL }; NULL when none. Their names are handler
         * names like the others' (unique across both lists); they come after `handlers` in the
         * handler numbering. */
        const struct serve_batch_handler *batched;
        /* ABI 3 (read only from modules that say abi_version >= 3). Code defaults, as JSON text
         * (NULL: none), that apps.yaml overrides like the options above: the user_config given
         * to init/reconfigure, and an autoscaling_config object (apps.yaml's keys). An invalid
         * one is a config error naming the deployment. */
        const char *user_config_json;
        const char *autoscaling_config_json;
};

struct serve_application {
        uint32_t abi_version;        /* SERVE_ABI_VERSION */
        const struct serve_deployment *ingress;
        const struct serve_deployment *const *deployments; /* NULL-terminated, ingress included */
};

/* Declares `const struct serve_application SYMBOL` with the given ingress and deployments. */
#define SERVE_APPLICATION(symbol, ingress_, ...)                                                   \
        static const struct serve_deployment *const symbol##_deployments_[] = { __VA_ARGS__, NULL }; \
        __attribute__((visibility("default"))) const struct serve_application symbol = {           \
                SERVE_ABI_VERSION, (ingress_), symbol##_deployments_ }

/* ---- the replica context ---- */
void serve_ctx_set_state(serve_ctx *ctx, void *state); /* your per-replica state */
void *serve_ctx_state(const serve_ctx *ctx);
const char *serve_ctx_deployment(const serve_ctx *ctx);
const char *serve_ctx_app(const serve_ctx *ctx);
const char *serve_ctx_replica_id(const serve_ctx *ctx);
/* A message reported with a failing init/reconfigure/check_health (copied). */
void serve_ctx_set_error(serve_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs through the replica's logger (journald fields SERVE_APP/DEPLOYMENT/REPLICA).
 * level: syslog priority (3 error .. 7 debug). */
void serve_log(serve_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- the request ---- */
const char *serve_request_method(const serve_request *req);   /* "GET", ... */
const char *serve_request_path(const serve_request *req);     /* after route_prefix, starts with '/' */
const char *serve_request_query(const serve_request *req);    /* without '?'; "" when none */
/* Query parameter value (URL-decoded, copied into buf, NUL-terminated); returns its length,
 * or -1 when absent or longer than cap-1. */
int serve_request_query_param(const serve_request *req, const char *name, char *buf, size_t cap);
/* Case-insensitive header lookup; NULL when absent. */
const char *serve_request_header(const serve_request *req, const char *name);
size_t serve_request_header_count(const serve_request *req);
/* The i-th header; returns false past the end. */
bool serve_request_header_at(const serve_request *req, size_t i, const char **ret_name, const char **ret_value);
/* The whole body (NUL-terminated for convenience; *ret_len excludes it). */
const void *serve_request_body(const serve_request *req, size_t *ret_len);
/* True once the client went away or request_timeout_s passed: stop work, any response is
 * dropped. Cheap (one atomic load): poll it in long loops. Handle calls the request made are
 * cancelled with it (and theirs, transitively). */
bool serve_request_cancelled(const serve_request *req);
/* For a request that is a handle call from another deployment: that deployment's name; NULL
 * for HTTP requests. A handle call's method is "POST" and its path "/"; the argument is the
 * body. */
const char *serve_request_caller(const serve_request *req);

/* ---- the response ---- */
/* The status of the (final) response: 200..599. Anything else (1xx interim responses
 * included) is a handler bug: it is logged and the client gets 500. */
void serve_response_set_status(serve_response *resp, int status);
/* Adds a header (name: token chars; value: no CR/LF). Content-Length and Connection are the
 * proxy's. Returns 0 or -EINVAL (also once serve_response_flush() sent the headers). */
int serve_response_add_header(serve_response *resp, const char *name, const char *value);
/* Appends body bytes. Returns 0 or -ENOMEM / -EFBIG (over 1 GiB). */
int serve_response_write(serve_response *resp, const void *data, size_t len);
int serve_response_printf(serve_response *resp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Streaming: sends the status, headers and body written so far now, and makes the response a
 * stream (HTTP clients get chunked transfer encoding, one chunk per flush; a handle caller gets
 * each flushed piece from serve_future_next()). Later writes are sent at the next flush or when
 * the handler returns. Blocks while the receiver is slow (each stream may have 256 KiB in flight): backpressure,
 * not buffering. Returns 0, or -ECANCELED once the client went away (stop producing: the rest
 * is dropped), -EFBIG when the stream would pass 1 GiB in all (what was written since the last
 * flush is dropped), -EMSGSIZE when the headers are too large to stream (the response then
 * answers 500). The status and headers cannot change after the first flush. A receiver that
 * takes no stream (yet) gets the whole response when the handler returns: flush returns 0. */
int serve_response_flush(serve_response *resp);

/* ---- handles: calling another deployment of the application ---- */

/* What a call returned: the callee's status and body (NUL-terminated; *data is never NULL
 * after a call returned). For a failed call, status is the failure's (503 backpressure, 504
 * timeout, 499 cancelled, 502 the callee died, 404 no such method, 500 the callee failed, or
 * what the callee answered >= 400) and data holds the message. Free with serve_result_free(). */
struct serve_result {
        int status;
        void *data;
        size_t len;
};
void serve_result_free(struct serve_result *res);

typedef struct serve_future serve_future;

/* Calls `method` of `deployment` (a deployment this one binds) with arg bytes and waits for the
 * result. `deployment` may also be "APP/DEPLOYMENT": that deployment of application APP (any
 * application of the config, C or Python; Ray's serve.get_deployment_handle()), or "APP/" for
 * APP's ingress (serve.get_app_handle()). Such a call needs no bind — applications do not know
 * each other when they load — and a missing application or deployment is found at call time
 * (-ENOENT, 404, naming both); the whole name is at most 255 bytes. Routed by this node's
 * worker over shared memory (or to a peer node), never through HTTP; max_ongoing_requests and
 * max_queued_requests of the callee apply. Called from inside a handler, the call belongs to
 * that request: when it is cancelled (client gone, timeout), so is the call. Returns 0 when the
 * callee answered 2xx, or:
 *   -ENOENT     the deployment is not bound by this one (or not in the application, or no such
 *               APP/DEPLOYMENT), or has no such method (status 404; also a callee's own 404)
 *   -EDEADLK    calling it would close a cycle of calls, across applications too (status 508)
 *   -EBUSY      the callee's queue is full (status 503: Ray's BackPressureError)
 *   -ECANCELED  the calling request (or the call) was cancelled (499)
 *   -ETIMEDOUT  request_timeout_s passed (504)
 *   -EREMOTEIO  the callee failed or answered >= 400 (its status and message)
 *   -ENOMEM, -E2BIG (arg larger than max_request_body_bytes), -EINVAL
 * *ret is filled in every case (free it). */
int serve_call(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
               struct serve_result *ret);
/* The same, without waiting: *ret_future is waited on with serve_future_wait() (fan-out: start
 * several, then wait for each). Returns 0 or the errors above that are known at once. */
int serve_call_async(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
                     serve_future **ret_future);
/* A streaming call: the callee's flushed pieces are read one by one with serve_future_next(). */
int serve_call_stream(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
                      serve_future **ret_future);
/* Waits for the result of an async call and frees the future. Returns as serve_call(). */
int serve_future_wait(serve_future *f, struct serve_result *ret);
/* The next piece of a streaming call: returns 1 with the piece in *ret_data and *ret_len (valid
 * until the next call on f), 0 at the end of the stream, or a negative error as serve_call()
 * (then serve_future_error() tells the status and message). Reading frees room for the callee:
 * a caller that stops reading stops the callee (backpressure). */
int serve_future_next(serve_future *f, const void **ret_data, size_t *ret_len);
/* Status and message of a failed streaming call (message valid until serve_future_free()). */
int serve_future_error(const serve_future *f, const char **ret_message);
/* Frees a future; a call still running is cancelled. */
void serve_future_free(serve_future *f);

#ifdef __cplusplus
}
#endif
#endif
