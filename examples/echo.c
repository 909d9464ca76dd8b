/* The smallest application: answers with the request body (or "hello\n").
 *
 *   curl -d 'hi' http://localhost:8000/       -> hi
 *   curl http://localhost:8000/               -> hello */

#include <string.h>

#include "serve.h"

static int echo(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *type = serve_request_header(req, "Content-Type");
        size_t n;
        const void *body = serve_request_body(req, &n);
        int r;

        if (n == 0) {
                body = "hello\n";
                n = strlen("hello\n");
                if (!type)
                        type = "text/plain";
        }
        if (type) {
                r = serve_response_add_header(resp, "Content-Type", type);
                if (r < 0)
                        return r;
        }
        return serve_response_write(resp, body, n);
}

static const struct serve_handler echo_handlers[] = {
        { "__call__", echo },
        { NULL, NULL },
};

static const struct serve_deployment Echo = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Echo",
        .handlers = echo_handlers,
};

SERVE_APPLICATION(app, &Echo, &Echo);
