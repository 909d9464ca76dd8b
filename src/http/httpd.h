/* A small HTTP/1.1 server for the control plane: the head's REST API and the /metrics
 * endpoints. Requests are answered synchronously by one handler; bodies need Content-Length;
 * every response closes the connection (these are low-rate endpoints, not the data plane). */
#pragma once

#include <stddef.h>

#include "http_parser.h"
#include "netconn.h"
#include "util.h"

struct httpd_request {
        const struct http_request *req;  /* method, path, query, headers */
        const char *body;
        size_t body_len;
        const char *peer;                /* "ADDR:PORT" */
};

struct httpd_response {
        int status;                      /* default 200 */
        const char *content_type;        /* default "application/json" */
        struct buf body;
};

typedef void (*httpd_handler)(void *userdata, const struct httpd_request *rq, struct httpd_response *resp);

struct httpd {
        struct netlistener listener;
        struct http_limits limits;
        size_t max_body;
        httpd_handler handler;
        void *userdata;
        struct list conns;
};

/* Listens on host:port. Returns 0 or a negative errno (not logged). */
int httpd_open(struct httpd *h, struct loop *loop, const char *host, int port, size_t max_body, httpd_handler handler,
               void *userdata);
void httpd_close(struct httpd *h);

/* Helpers for handlers. */
void httpd_respond_json(struct httpd_response *resp, int status, const struct cJSON *j);
void httpd_respond_error(struct httpd_response *resp, int status, const char *message);
/* True when method and the path (without query) match exactly. */
bool httpd_is(const struct httpd_request *rq, const char *method, const char *path);
