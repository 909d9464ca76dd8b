/* The HTTP proxy: one io_uring loop (multishot accept, provided-buffer multishot recv, batched
 * sends). It parses requests strictly, answers built-in routes and limits itself, and hands
 * everything else to the router. Responses come back from upstream.c into the connection's
 * output buffer. One request per connection is in flight at a time; pipelined requests wait in
 * the input buffer and are answered in order. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"
#include "router.h"
#include "util.h"

struct proxy_options {
        const char *host;
        int port;
        int listen_fd;              /* >= 0: an inherited listening socket (socket activation) */
        uint64_t max_body;
        size_t max_request_line, max_head;
        double header_timeout_s, keep_alive_timeout_s, request_timeout_s;
        int max_connections;
};

struct proxy;

/* Creates the proxy and starts listening. Returns 0 or a negative errno (logged). */
int proxy_new(struct loop *loop, struct router *router, const struct proxy_options *opts, struct proxy **ret);
void proxy_free(struct proxy *p);

/* Applies new limits/timeouts from a reloaded config (listen address changes need a restart). */
void proxy_update_options(struct proxy *p, const struct proxy_options *opts);

/* Runs timeouts; returns the nanoseconds until the next deadline (capped). */
uint64_t proxy_tick(struct proxy *p, uint64_t now);

/* Stops accepting and closes idle connections (graceful shutdown). */
void proxy_stop_accepting(struct proxy *p);
/* Connections still open. */
unsigned proxy_connections(const struct proxy *p);
/* True while the proxy serves (for /-/healthz: 503 while draining). */
void proxy_set_draining(struct proxy *p);
/* /-/healthz answers 503 until the proxy has its routes (a worker waiting for the head). */
void proxy_set_ready(struct proxy *p, bool ready);

/* ---- called by upstream.c / router.c ---- */

/* Starts the response for u's connection: status line, Content-Length, the replica's header
 * block (already validated "Name: value\r\n" lines), connection handling. */
void proxy_response_begin(struct upreq *u, int status, const char *headers, size_t headers_len, uint64_t body_len);
void proxy_response_body(struct upreq *u, const void *data, size_t len);
/* The response (begun above) is complete: the connection moves on; frees u. */
void proxy_response_end(struct upreq *u);
/* Answers u with a generated error (502, 503, 504...) if its client still waits, and frees u. */
void proxy_upreq_fail(struct upreq *u, int status, const char *why);
/* Frees an upreq nobody waits for any more. */
void upreq_free(struct upreq *u);
