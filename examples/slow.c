/* Takes its time: sleeps ?ms=N milliseconds (default 100), then answers "ok". Stops early when
 * the request is cancelled (client gone, request_timeout_s), which is what it demonstrates.
 *
 *   curl 'http://localhost:8000/slow?ms=2000' */

#include <stdlib.h>
#include <time.h>

#include "serve.h"

#define SLOW_DEFAULT_MS 100
#define SLOW_MAX_MS 600000
#define SLOW_POLL_MS 5

static int slow(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        char buf[32];
        long ms = SLOW_DEFAULT_MS;
        struct timespec start, now;

        if (serve_request_query_param(req, "ms", buf, sizeof buf) >= 0)
                ms = strtol(buf, NULL, 10);
        if (ms < 0)
                ms = 0;
        if (ms > SLOW_MAX_MS)
                ms = SLOW_MAX_MS;

        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
                if (elapsed >= ms)
                        break;
                /* The response of a cancelled request is dropped anyway. */
                if (serve_request_cancelled(req))
                        return 0;
                long step = ms - elapsed < SLOW_POLL_MS ? ms - elapsed : SLOW_POLL_MS;
                nanosleep(&(struct timespec) { .tv_nsec = step * 1000000L }, NULL);
        }
        return serve_response_write(resp, "ok\n", 3);
}

static const struct serve_handler slow_handlers[] = {
        { "__call__", slow },
        { NULL, NULL },
};

static const struct serve_deployment Slow = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Slow",
        .handlers = slow_handlers,
};

SERVE_APPLICATION(app, &Slow, &Slow);
