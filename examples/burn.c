/* Burns CPU: spins for ?ms=N milliseconds of its own CPU time (default 10), then answers "ok".
 * CPU time, not wall time: on a shared CPU a request takes longer but costs the same, which
 * makes it a known load for the load monitor (and for trying out autoscaling).
 *
 *   curl 'http://localhost:8000/burn?ms=50' */

#include <stdlib.h>
#include <time.h>

#include "serve.h"

#define BURN_DEFAULT_MS 10
#define BURN_MAX_MS 60000

static long cpu_ms(void) {
        struct timespec t;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
        return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int burn(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        char buf[32];
        long ms = BURN_DEFAULT_MS;
        volatile unsigned long spin = 0;

        if (serve_request_query_param(req, "ms", buf, sizeof buf) >= 0)
                ms = strtol(buf, NULL, 10);
        if (ms < 0)
                ms = 0;
        if (ms > BURN_MAX_MS)
                ms = BURN_MAX_MS;
        for (long end = cpu_ms() + ms; cpu_ms() < end;) {
                for (int i = 0; i < 10000; i++)
                        spin++;
                if (serve_request_cancelled(req))
                        return 0;
        }
        return serve_response_write(resp, "ok\n", 3);
}

static const struct serve_handler burn_handlers[] = {
        { "__call__", burn },
        { NULL, NULL },
};

static const struct serve_deployment Burn = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Burn",
        .handlers = burn_handlers,
};

SERVE_APPLICATION(app, &Burn, &Burn);
