/* Responses of every shape, for the data-plane tests (tests/integration/dataplane.sh):
 *
 *   /status?code=N  answers status N with the body "status N\n" (also for N = 204, 304, where
 *                   the proxy must drop the body, and for N outside 200..599, which the SDK
 *                   turns into 500)
 *   /big?mb=N       answers N MiB of body ('x' bytes; N <= 1023)
 *   other           answers the path the handler saw, then "?query" when there is one, then
 *                   "\n": what a route prefix and path normalisation left of the request */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static long query_long(const serve_request *req, const char *name, long dflt) {
        char v[32], *end;
        long n;

        if (serve_request_query_param(req, name, v, sizeof v) <= 0)
                return dflt;
        errno = 0;
        n = strtol(v, &end, 10);
        return errno || *end ? dflt : n;
}

static int shapes(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *path = serve_request_path(req);
        const char *query = serve_request_query(req);

        (void) ctx;
        if (strcmp(path, "/status") == 0) {
                long code = query_long(req, "code", 200);
                serve_response_set_status(resp, (int) code);
                return serve_response_printf(resp, "status %ld\n", code);
        }
        if (strcmp(path, "/big") == 0) {
                long mb = query_long(req, "mb", 1);
                if (mb < 0 || mb > 1023) {
                        serve_response_set_status(resp, 400);
                        return serve_response_printf(resp, "mb must be 0..1023\n");
                }
                /* One MiB at a time: the SDK copies each write into the response. */
                char *chunk = malloc(1u << 20);
                int r = 0;
                if (!chunk)
                        return -ENOMEM;
                memset(chunk, 'x', 1u << 20);
                for (long i = 0; i < mb && r == 0; i++)
                        r = serve_response_write(resp, chunk, 1u << 20);
                free(chunk);
                return r;
        }
        return serve_response_printf(resp, "%s%s%s\n", path, *query ? "?" : "", query);
}

static const struct serve_handler shapes_handlers[] = {
        { "__call__", shapes },
        { NULL, NULL },
};

static const struct serve_deployment Shapes = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Shapes",
        .handlers = shapes_handlers,
};

SERVE_APPLICATION(app, &Shapes, &Shapes);
