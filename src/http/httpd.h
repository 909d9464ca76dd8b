/* A small HTTP/1.1 server for the control plane: the head's REST API and the /metrics
 * endpoints. Requests are answered by one handler, at once or later (httpd_defer()); bodies
 * need Content-Length; every response closes the connection (these are low-rate endpoints, not
 * the data plane).
 *
 * Anyone who can reach the port is a client, so every resource has a limit: connections open
 * at once (beyond it a new one is closed as soon as it is accepted), the time to send a request
 * head, the time without progress while a body arrives or a response leaves, the bytes of
 * bodies buffered across all connections. A connection holds no receive buffer until its first
 * bytes arrive (netconn waits for them with a poll). Each cause (the limit, a timeout) is logged
 * once, then at most once a minute with a count. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "http_parser.h"
#include "netconn.h"
#include "util.h"

#define HTTPD_MAX_CONNECTIONS 256
#define HTTPD_HEADER_TIMEOUT_S 10.0
#define HTTPD_IDLE_TIMEOUT_S 10.0

struct cJSON;
struct hconn;

struct httpd_request {
        const struct http_request *req;  /* method, path, query, headers */
        const char *body;
        size_t body_len;
        const char *peer;                /* "ADDR:PORT" */
        struct hconn *hc;                /* private: for httpd_defer() */
};

struct httpd_response {
        int status;                      /* default 200 */
        const char *content_type;        /* default "application/json" */
        struct buf body;
};

/* Fills resp, or calls httpd_defer() and leaves resp alone. Everything in rq is valid only
 * during the call. */
typedef void (*httpd_handler)(void *userdata, const struct httpd_request *rq, struct httpd_response *resp);

struct httpd_options {
        size_t max_body;                 /* larger request bodies get 413 */
        unsigned max_connections;        /* open at once; 0: HTTPD_MAX_CONNECTIONS */
        double header_timeout_s;         /* from accept to a complete request head; 0: the default */
        double idle_timeout_s;           /* no byte in (body) or out (response); 0: the default */
        const char *what;                /* names the port in log lines; NULL: "HTTP on HOST:PORT" */
};

/* A cause the server logs once, then once a minute with a count (private). */
struct httpd_notice {
        uint64_t count, logged_ns;
        bool logged;
};

struct httpd_timer;

struct httpd {
        struct netlistener listener;
        struct http_limits limits;
        struct httpd_options opts;
        char what[96];
        uint64_t header_timeout_ns, idle_timeout_ns;
        size_t bodies, max_bodies;       /* bytes of request bodies being received, and the budget */
        httpd_handler handler;
        void *userdata;
        struct list conns;
        unsigned n_conns;
        struct httpd_timer *timer;
        struct httpd_notice refused, timed_out, slow_reader, busy;
};

/* Listens on host:port. Returns 0 or a negative errno (not logged). */
int httpd_open_with(struct httpd *h, struct loop *loop, const char *host, int port, const struct httpd_options *o,
                    httpd_handler handler, void *userdata);
/* httpd_open_with() with the default limits and max_body. */
int httpd_open(struct httpd *h, struct loop *loop, const char *host, int port, size_t max_body, httpd_handler handler,
               void *userdata);
/* Closes the port and every connection; deferred requests not answered yet are dropped (their
 * handles stay valid: answering them does nothing). */
void httpd_close(struct httpd *h);

/* The port listened on (useful with port 0), or -1. */
int httpd_port(const struct httpd *h);

/* Inside a handler: the answer comes later, through the returned handle and httpd_answer().
 * The connection waits without a timeout (the owner bounds the wait) and stays counted.
 * Returns NULL when out of memory (answer now, as usual). */
struct httpd_deferred *httpd_defer(const struct httpd_request *rq);
/* Sends resp (NULL: closes without an answer) and frees d. Safe when the client went away or
 * the server closed meanwhile: then only d is freed. resp stays the caller's. */
void httpd_answer(struct httpd_deferred *d, struct httpd_response *resp);

/* Helpers for handlers. */
void httpd_respond_json(struct httpd_response *resp, int status, const struct cJSON *j);
void httpd_respond_error(struct httpd_response *resp, int status, const char *message);
/* True when method and the path (without query) match exactly. */
bool httpd_is(const struct httpd_request *rq, const char *method, const char *path);
/* True when method matches and the path (without query) starts with prefix; *ret_rest and
 * *ret_len are what follows it (not NUL-terminated). */
bool httpd_prefix_is(const struct httpd_request *rq, const char *method, const char *prefix, const char **ret_rest,
                     size_t *ret_len);
