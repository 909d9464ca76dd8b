/* Responses of every shape, for the data-plane tests (tests/integration/dataplane.sh):
 *
 *   /status?code=N  answers status N with the body "status N\n" (also for N = 204, 304, where
 *                   the proxy must drop the body, and for N outside 200..599, which the SDK
 *                   turns into 500)
 *   /big?mb=N       answers N MiB of body ('x' bytes; N <= 1023)
 *   /stream?n=N&size=S&ms=M&gate=FILE&log=FILE
 *                   streams N pieces (default 3), flushing after each (streaming.sh): "piece I\n",
 *                   or with size=S, S bytes of 'a' + I % 26 each (S <= 16 MiB). n=0: until the
 *                   client goes away (at most 10^7 pieces). ms: sleeps M ms between pieces.
 *                   gate: after the first piece, waits (at most 60 s) until FILE exists before
 *                   it goes on. log: after each flush FILE says "flushed BYTES\n" (bytes flushed
 *                   so far), at the end "done RC BYTES\n", RC being 0 or the error of the flush
 *                   that stopped it (-125: ECANCELED, the client went away)
 *   other           answers the path the handler saw, then "?query" when there is one, then
 *                   "\n": what a route prefix and path normalisation left of the request */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* Replaces FILE's content at once (a reader never sees half a line). */
static void put_file(const char *file, const char *text) {
        char tmp[4200];
        FILE *f;

        if (!*file || snprintf(tmp, sizeof tmp, "%s.tmp", file) >= (int) sizeof tmp || !(f = fopen(tmp, "w")))
                return;
        fputs(text, f);
        if (fclose(f) == 0)
                rename(tmp, file);
}

static void sleep_ms(long ms) {
        nanosleep(&(struct timespec) { .tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000L }, NULL);
}

static int stream(const serve_request *req, serve_response *resp) {
        long n = query_long(req, "n", 3), size = query_long(req, "size", 0), ms = query_long(req, "ms", 0);
        char gate[4096] = "", log[4096] = "", line[64];
        long long flushed = 0;
        char *piece = NULL;
        int r = 0;

        if (n < 0 || n > 10000000 || size < 0 || size > (16l << 20) || ms < 0 || ms > 60000) {
                serve_response_set_status(resp, 400);
                return serve_response_printf(resp, "n, size or ms out of range\n");
        }
        if (n == 0)
                n = 10000000;
        (void) serve_request_query_param(req, "gate", gate, sizeof gate);
        (void) serve_request_query_param(req, "log", log, sizeof log);
        if (size > 0 && !(piece = malloc((size_t) size)))
                return -ENOMEM;
        serve_response_add_header(resp, "Content-Type", "text/plain");
        for (long i = 0; i < n && r == 0; i++) {
                if (i == 1 && *gate)
                        for (int t = 0; t < 6000 && access(gate, F_OK) < 0; t++)
                                sleep_ms(10);
                else if (i > 0 && ms > 0)
                        sleep_ms(ms);
                if (piece) {
                        memset(piece, 'a' + (int) (i % 26), (size_t) size);
                        r = serve_response_write(resp, piece, (size_t) size);
                } else
                        r = serve_response_printf(resp, "piece %ld\n", i);
                if (r == 0) {
                        long long len = size ? size : snprintf(NULL, 0, "piece %ld\n", i);
                        r = serve_response_flush(resp);
                        if (r == 0)
                                flushed += len;
                        snprintf(line, sizeof line, "flushed %lld\n", flushed);
                        put_file(log, line);
                }
        }
        snprintf(line, sizeof line, "done %d %lld\n", r, flushed);
        put_file(log, line);
        free(piece);
        /* A client that went away gets nothing more anyway. */
        return r == -ECANCELED ? 0 : r;
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
        if (strcmp(path, "/stream") == 0)
                return stream(req, resp);
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
