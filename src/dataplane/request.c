#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macros.h"
#include "request.h"
#include "router.h"

/* One data-plane loop per process (the proxy thread); failures are delivered from it. */
static struct loop *the_loop;
static uint64_t body_budget, body_buffered;

void request_init(struct loop *loop, uint64_t budget) {
        the_loop = loop;
        body_budget = budget;
}

struct loop *request_loop(void) { return the_loop; }

void request_set_body_budget(uint64_t budget) { body_budget = budget; }

uint64_t request_body_buffered(void) { return body_buffered; }

static void on_done(struct loop_deferred *d);

struct request *request_new(const struct sink_ops *sink, void *sink_ctx, uint64_t sink_id) {
        struct request *q = calloc(1, sizeof *q);

        if (!q)
                return NULL;
        q->sink = sink;
        q->sink_ctx = sink_ctx;
        q->sink_id = sink_id;
        list_init(&q->sink_link);
        list_init(&q->link);
        list_init(&q->tlink);
        list_init(&q->done.link);
        q->done.fn = on_done;
        return q;
}

int request_budget_take(uint64_t n) {
        if (body_budget && (n > body_budget || body_buffered > body_budget - n))
                return -ENOBUFS;
        body_buffered += n;
        return 0;
}

void request_budget_return(uint64_t n) { body_buffered -= MIN(n, body_buffered); }

int request_body_reserve(struct request *q, uint64_t n) {
        int r = request_budget_take(n);
        if (r == 0)
                q->body_budget += n;
        return r;
}

int request_normalize_path(struct request *q) {
        const char *path = q->req.path;
        size_t len = q->req.path_len;
        char stack[512], *out = len < sizeof stack ? stack : malloc(len + 1);
        ssize_t n;

        if (!out)
                return -ENOMEM;
        n = http_path_normalize(path, len, out);
        if (n < 0 || ((size_t)n == len && memcmp(out, path, len) == 0)) {
                if (out != stack)
                        free(out);
                return n < 0 ? -EINVAL : 0;
        }
        out[n] = 0;
        q->norm_path = out == stack ? strdup(stack) : out;
        return q->norm_path ? 0 : -ENOMEM;
}

void request_free(struct request *q) {
        if (!q)
                return;
        loop_undefer(&q->done);
        list_del(&q->tlink);
        list_del(&q->sink_link);
        request_budget_return(q->body_budget);
        free(q->norm_path);
        free(q->raw);
        free(q);
}

void request_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        q->status = status;
        q->resp_stream = body_len == REQUEST_LEN_STREAM;
        if (q->sink)
                q->sink->begin(q, status, headers, headers_len, body_len);
}

void request_body(struct request *q, const void *data, size_t len) {
        if (q->sink && len)
                q->sink->body(q, data, len);
}

size_t request_room(const struct request *q) {
        if (!q->sink || !q->sink->room)
                return SIZE_MAX;
        return q->sink->room(q);
}

void request_end(struct request *q) {
        list_del(&q->tlink);
        if (q->sink)
                q->sink->end(q);
        request_free(q);
}

static void on_done(struct loop_deferred *d) {
        struct request *q = list_entry(d, struct request, done);

        if (q->sink) {
                if (q->fail_reject && q->sink->reject)
                        q->sink->reject(q, q->fail_status);
                else
                        q->sink->fail(q, q->fail_status, q->fail_why);
        }
        request_free(q);
}

static void fail_later(struct request *q, int status, const char *why, bool reject) {
        q->state = REQUEST_DONE;
        q->backend = NULL;
        q->fail_status = status;
        q->fail_reject = reject;
        snprintf(q->fail_why, sizeof q->fail_why, "%s", why);
        list_del(&q->tlink);
        loop_defer(the_loop, &q->done);
}

void request_fail(struct request *q, int status, const char *why) { fail_later(q, status, why, false); }

void request_reject(struct request *q, int status) { fail_later(q, status, "no replica for this deployment", true); }

/* The sink has let go of q: let the backend go too. */
static void drop_backend(struct request *q) {
        switch (q->state) {
        case REQUEST_NEW:
                request_free(q);
                break;
        case REQUEST_QUEUED:
                router_unqueue(q);
                request_free(q);
                break;
        case REQUEST_DONE:
                break; /* its completion is queued on the loop and frees it */
        default:
                q->cancelled = true;
                q->backend->ops->cancel(q);
        }
}

void request_abandon(struct request *q) {
        q->sink = NULL;
        q->sink_ctx = NULL;
        list_del(&q->sink_link);
        list_del(&q->tlink);
        drop_backend(q);
}

void request_expire(struct request *q, int status, const char *why) {
        const struct sink_ops *sink = q->sink;

        list_del(&q->tlink);
        if (sink && q->state != REQUEST_DONE) {
                sink->fail(q, status, why);
                q->sink = NULL;
                q->sink_ctx = NULL;
                list_del(&q->sink_link);
        }
        drop_backend(q);
}

void request_sink_ready(struct request *q) {
        if (!q->sink_blocked)
                return;
        q->sink_blocked = false;
        if (q->backend && q->state == REQUEST_RESPONDING)
                q->backend->ops->resume(q);
}

void request_release(struct request *q) { request_free(q); }
