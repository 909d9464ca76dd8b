/* The HTTP front end: one io_uring loop (multishot accept, provided-buffer multishot recv,
 * batched sends). It parses requests strictly, normalises their paths, answers built-in routes
 * and limits itself, and hands everything else to the router as requests (request.h) whose sink
 * is the connection: responses come back into the connection's output buffer, bounded by a
 * budget (past it the replica waits until the client reads). A streamed response goes out
 * as it comes, one chunk per piece (Transfer-Encoding: chunked; HTTP/1.0: until the connection
 * closes). One request per connection is in flight at a time; pipelined requests wait in the
 * input buffer and are answered in order. */
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
        uint64_t max_buffered_body; /* the request-body budget of the node (0: none) */
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
