/* Handle calls between deployments, for tests/integration/pipeline.sh. The application `app`:
 *
 *   Front (ingress) binds Mid, Leaf and Busy; its HTTP paths:
 *     /call?m=M        serve_call(Leaf.M, body): answers the result body (status: the callee's)
 *     /fanout?n=N      N async calls to Leaf.echo ("0".."N-1") at once, then waits: "0,1,..."
 *     /error           Leaf.fail: "status=S rc=R msg=..." (the error the caller sees)
 *     /unbound         a call to Other, which Front does not bind: the error message
 *     /nomethod        a call to Leaf.nosuch: the error message
 *     /busy?n=N        N async calls to Busy.hold: "ok=A busy=B" (Busy takes 1 + queues 1)
 *     /chain           Front -> Mid.relay -> Leaf.wait: waits until cancelled (client gone)
 *     /where           Leaf.where: the node (SERVE_NODE_NAME) and pid of the Leaf replica
 *     /batch?n=N       N async calls to Leaf.size: the batch sizes each saw, "4,4,4,4,..."
 *     /pieces?n=N      a streaming call to Leaf.pieces: "pieces=K bytes=B first=..."
 *     /loop?n=N&w=W    N calls to Leaf.echo, W in flight at once, timed (tests/bench/handles):
 *                      "calls=N seconds=S p50_us=X p99_us=Y"
 *     /x?t=APP/DEP&m=M serve_call(APP/DEP.M, body) — another application's deployment, no bind
 *                      (tests/integration/xapp.sh): "status=S rc=R msg=..."
 *   Leaf: echo, fail, wait (writes DIR/cancelled-leaf when it sees its cancellation), where,
 *         pieces (N flushed pieces), and the batched handler size.
 *   Mid: relay (calls Leaf.wait, notes DIR/cancelled-mid when its own request is cancelled).
 *   Busy: hold (holds until DIR/release exists).
 * DIR comes from the application's args: {"dir": "..."}.
 *
 * The symbols `cyclic` and `dangling` are applications with a bad graph: loading them fails. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "serve.h"

static char dir[512] = "/tmp";

static int init(serve_ctx *ctx, const char *args, const char *user_config) {
        const char *p = strstr(args, "\"dir\"");
        (void) ctx, (void) user_config;
        if (p && (p = strchr(p + 5, '"'))) {
                const char *e = strchr(p + 1, '"');
                if (e && (size_t) (e - p - 1) < sizeof dir)
                        snprintf(dir, sizeof dir, "%.*s", (int) (e - p - 1), p + 1);
        }
        return 0;
}

static void touch(const char *name) {
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        if (f)
                fclose(f);
}

static bool exists(const char *name) {
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        return access(path, F_OK) == 0;
}

static void nap(void) { nanosleep(&(struct timespec) { .tv_nsec = 10 * 1000 * 1000 }, NULL); }

static long qlong(const serve_request *req, const char *name, long dflt) {
        char v[32];
        return serve_request_query_param(req, name, v, sizeof v) > 0 ? strtol(v, NULL, 10) : dflt;
}

/* ---- Leaf ---- */

static int leaf_echo(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        size_t n;
        const void *b = serve_request_body(req, &n);
        (void) ctx;
        serve_response_printf(resp, "%s:", serve_request_caller(req) ? serve_request_caller(req) : "http");
        return serve_response_write(resp, b, n);
}

static int leaf_fail(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        (void) ctx, (void) req;
        serve_response_set_status(resp, 500);
        return serve_response_printf(resp, "leaf failed on purpose");
}

static int leaf_wait(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        (void) ctx;
        touch("leaf-started");
        for (int i = 0; i < 6000 && !serve_request_cancelled(req); i++)
                nap();
        if (serve_request_cancelled(req))
                touch("cancelled-leaf");
        return serve_response_printf(resp, "leaf done");
}

static int leaf_where(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *node = getenv("SERVE_NODE_NAME");
        (void) ctx, (void) req;
        return serve_response_printf(resp, "%s %d", node ? node : "-", (int) getpid());
}

static int leaf_pieces(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        size_t len;
        long n = strtol(serve_request_body(req, &len), NULL, 10);
        (void) ctx;
        for (long i = 0; i < n; i++) {
                serve_response_printf(resp, "piece %ld\n", i);
                if (serve_response_flush(resp) < 0)
                        break;
        }
        return 0;
}

static int leaf_size(serve_ctx *ctx, size_t n, const serve_request *const *reqs, serve_response *const *resps) {
        (void) ctx, (void) reqs;
        for (size_t i = 0; i < n; i++)
                serve_response_printf(resps[i], "%zu", n);
        return 0;
}

static const struct serve_handler leaf_handlers[] = {
        { "echo", leaf_echo }, { "fail", leaf_fail }, { "wait", leaf_wait },
        { "where", leaf_where }, { "pieces", leaf_pieces }, { NULL, NULL },
};
static const struct serve_batch_handler leaf_batched[] = {
        { .name = "size", .fn = leaf_size, .max_batch_size = 4, .batch_wait_timeout_s = 0.05 },
        { .name = NULL },
};
static const struct serve_deployment Leaf = {
        .abi_version = SERVE_ABI_VERSION, .name = "Leaf", .init = init,
        .handlers = leaf_handlers, .batched = leaf_batched,
        .defaults = { .max_ongoing_requests = 8 },
};

/* ---- Mid ---- */

static int mid_relay(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        struct serve_result res;
        size_t n;
        const void *b = serve_request_body(req, &n);
        int r = serve_call(ctx, "Leaf", "wait", b, n, &res);
        if (serve_request_cancelled(req))
                touch("cancelled-mid");
        serve_response_printf(resp, "mid: %d %s", r, (char *) res.data);
        serve_result_free(&res);
        return 0;
}

static const struct serve_handler mid_handlers[] = { { "relay", mid_relay }, { NULL, NULL } };
static const char *const mid_binds[] = { "Leaf", NULL };
static const struct serve_deployment Mid = {
        .abi_version = SERVE_ABI_VERSION, .name = "Mid", .init = init,
        .handlers = mid_handlers, .binds = mid_binds,
};

/* ---- Busy ---- */

static int busy_hold(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        (void) ctx;
        touch("busy-holding");
        for (int i = 0; i < 6000 && !exists("release") && !serve_request_cancelled(req); i++)
                nap();
        return serve_response_printf(resp, "held");
}

static const struct serve_handler busy_handlers[] = { { "hold", busy_hold }, { NULL, NULL } };
static const struct serve_deployment Busy = {
        .abi_version = SERVE_ABI_VERSION, .name = "Busy", .init = init, .handlers = busy_handlers,
        .defaults = { .max_ongoing_requests = 1, .max_queued_requests = 1 },
};

/* ---- Front ---- */

static int answer(serve_response *resp, int r, struct serve_result *res) {
        serve_response_printf(resp, "status=%d rc=%d msg=%s", res->status, r, (char *) res->data);
        serve_result_free(res);
        return 0;
}

static double now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

/* n calls, w in flight (a ring of futures): throughput and each call's latency. */
static int timed_loop(serve_ctx *ctx, long n, long w, serve_response *resp) {
        serve_future *f[64];
        double t0[64], *lat;
        struct serve_result res;
        long started = 0, done = 0, failed = 0;

        if (n < 1 || n > 10000000 || w < 1 || w > 64)
                return serve_response_set_status(resp, 400), 0;
        lat = malloc((size_t) n * sizeof *lat);
        if (!lat)
                return -ENOMEM;
        double begin = now_us();
        for (; started < w && started < n; started++) {
                t0[started % w] = now_us();
                if (serve_call_async(ctx, "Leaf", "echo", "x", 1, &f[started % w]) < 0)
                        return free(lat), -EIO;
        }
        while (done < n) {
                long k = done % w;
                failed += serve_future_wait(f[k], &res) != 0;
                serve_result_free(&res);
                lat[done++] = now_us() - t0[k];
                if (started < n) {
                        t0[k] = now_us();
                        if (serve_call_async(ctx, "Leaf", "echo", "x", 1, &f[k]) < 0)
                                return free(lat), -EIO;
                        started++;
                }
        }
        double secs = (now_us() - begin) / 1e6;
        qsort(lat, (size_t) n, sizeof *lat, cmp_double);
        serve_response_printf(resp, "calls=%ld failed=%ld seconds=%.3f calls_per_s=%.0f p50_us=%.1f p99_us=%.1f\n", n,
                              failed, secs, n / secs, lat[n / 2], lat[(n * 99) / 100]);
        free(lat);
        return 0;
}

static int front(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *path = serve_request_path(req);
        struct serve_result res;
        size_t len;
        const void *body = serve_request_body(req, &len);
        char m[64];
        int r;

        if (strcmp(path, "/call") == 0) {
                if (serve_request_query_param(req, "m", m, sizeof m) < 0)
                        snprintf(m, sizeof m, "echo");
                r = serve_call(ctx, "Leaf", m, body, len, &res);
                serve_response_set_status(resp, res.status);
                serve_response_write(resp, res.data, res.len);
                serve_result_free(&res);
                return 0;
        }
        if (strcmp(path, "/fanout") == 0 || strcmp(path, "/batch") == 0 || strcmp(path, "/busy") == 0) {
                long n = qlong(req, "n", 4);
                serve_future *f[64];
                int ok = 0, busy = 0;
                const char *dep = path[1] == 'b' && path[2] == 'u' ? "Busy" : "Leaf";
                const char *meth = path[1] == 'f' ? "echo" : path[2] == 'a' ? "size" : "hold";
                if (n < 1 || n > 64)
                        return serve_response_set_status(resp, 400), 0;
                for (long i = 0; i < n; i++) {
                        char arg[16];
                        int k = snprintf(arg, sizeof arg, "%ld", i);
                        if (serve_call_async(ctx, dep, meth, arg, (size_t) k, &f[i]) < 0)
                                f[i] = NULL;
                }
                for (long i = 0; i < n; i++) {
                        if (!f[i]) {
                                serve_response_printf(resp, "%sstart-failed", i ? "," : "");
                                continue;
                        }
                        r = serve_future_wait(f[i], &res);
                        ok += r == 0;
                        busy += r == -EBUSY;
                        if (*dep == 'L')
                                serve_response_printf(resp, "%s%s", i ? "," : "", r == 0 ? (char *) res.data : "ERR");
                        serve_result_free(&res);
                }
                if (*dep == 'B')
                        serve_response_printf(resp, "ok=%d busy=%d", ok, busy);
                return 0;
        }
        if (strcmp(path, "/error") == 0)
                return r = serve_call(ctx, "Leaf", "fail", "", 0, &res), answer(resp, r, &res);
        if (strcmp(path, "/unbound") == 0)
                return r = serve_call(ctx, "Other", "echo", "", 0, &res), answer(resp, r, &res);
        if (strcmp(path, "/nomethod") == 0)
                return r = serve_call(ctx, "Leaf", "nosuch", "", 0, &res), answer(resp, r, &res);
        if (strcmp(path, "/chain") == 0)
                return r = serve_call(ctx, "Mid", "relay", "", 0, &res), answer(resp, r, &res);
        if (strcmp(path, "/where") == 0)
                return r = serve_call(ctx, "Leaf", "where", "", 0, &res), answer(resp, r, &res);
        if (strcmp(path, "/pieces") == 0) {
                serve_future *f;
                const void *d;
                size_t n, bytes = 0;
                long pieces = 0;
                char first[32] = "";
                if (serve_call_stream(ctx, "Leaf", "pieces", body, len, &f) < 0)
                        return -EIO;
                while ((r = serve_future_next(f, &d, &n)) > 0) {
                        if (!pieces)
                                snprintf(first, sizeof first, "%.*s", (int) (n < 7 ? n : 7), (const char *) d);
                        pieces++;
                        bytes += n;
                }
                serve_future_free(f);
                return serve_response_printf(resp, "rc=%d pieces>0=%d bytes=%zu first=%s", r, pieces > 0, bytes, first);
        }
        if (strcmp(path, "/x") == 0) {
                char t[300];
                if (serve_request_query_param(req, "t", t, sizeof t) < 0)
                        return serve_response_set_status(resp, 400), 0;
                if (serve_request_query_param(req, "m", m, sizeof m) < 0)
                        snprintf(m, sizeof m, "__call__");
                return r = serve_call(ctx, t, m, body, len, &res), answer(resp, r, &res);
        }
        if (strcmp(path, "/loop") == 0)
                return timed_loop(ctx, qlong(req, "n", 10000), qlong(req, "w", 1), resp);
        serve_response_set_status(resp, 404);
        return 0;
}

static const struct serve_handler front_handlers[] = { { "__call__", front }, { NULL, NULL } };
static const char *const front_binds[] = { "Mid", "Leaf", "Busy", NULL };
static const struct serve_deployment Front = {
        .abi_version = SERVE_ABI_VERSION, .name = "Front", .init = init,
        .handlers = front_handlers, .binds = front_binds,
        .defaults = { .max_ongoing_requests = 16 },
};

SERVE_APPLICATION(app, &Front, &Front, &Mid, &Leaf, &Busy);

/* ---- bad graphs ---- */

static const char *const a_binds[] = { "B", NULL };
static const char *const b_binds[] = { "A", NULL };
static const char *const d_binds[] = { "Missing", NULL };
static const struct serve_deployment A = {
        .abi_version = SERVE_ABI_VERSION, .name = "A", .handlers = mid_handlers, .binds = a_binds,
};
static const struct serve_deployment B = {
        .abi_version = SERVE_ABI_VERSION, .name = "B", .handlers = mid_handlers, .binds = b_binds,
};
static const struct serve_deployment D = {
        .abi_version = SERVE_ABI_VERSION, .name = "D", .handlers = mid_handlers, .binds = d_binds,
};
SERVE_APPLICATION(cyclic, &A, &A, &B);
SERVE_APPLICATION(dangling, &D, &D);
