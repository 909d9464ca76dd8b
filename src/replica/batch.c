/* Batched handlers: see batch.h.
 *
 * A batch lives on its leader's stack and each member on its own thread's stack. Everything
 * they share is guarded by the batcher's lock: a joiner reaches the batch only through
 * b->open, which is cleared when the batch closes, and the leader reaches the members only
 * until it marks them done (under the lock): a member leaves as soon as it sees that. Between
 * closing and marking done the leader runs fn without the lock; the members are blocked then,
 * so their requests and responses stay valid, and the lock orders fn's writes to a response
 * before its member reads it. */

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "batch.h"
#include "log.h"
#include "macros.h"
#include "replica-internal.h"
#include "util.h"

struct batch {
        struct batch_item *head, **tail;
        size_t n;
        size_t max;         /* max_batch_size when it opened */
        bool closed;        /* no one joins any more; b->open no longer points here */
};

struct batcher {
        const struct serve_batch_handler *h;
        pthread_mutex_t lock;
        pthread_cond_t leader_cond; /* CLOCK_MONOTONIC: a leader waits for its batch to fill */
        /* Members wait for their response here, whatever their batch: a leader's broadcast
         * also wakes members of other batches, who look at their own flag and sleep again (at
         * most max_ongoing_requests threads wait; one condition needs no per-batch setup). */
        pthread_cond_t done_cond;
        /* Guarded by lock, like everything below. */
        unsigned max_batch_size;
        double wait_s;
        struct batch *open;         /* the batch arrivals join; NULL: the next one opens one */
};

bool batch_params_valid(unsigned max_batch_size, double wait_s) {
        return max_batch_size >= 1 && wait_s >= 0 && wait_s <= BATCH_MAX_WAIT_S; /* NaN: false */
}

void batch_handler_params(const struct serve_batch_handler *h, unsigned *ret_max, double *ret_wait_s) {
        *ret_max = h->max_batch_size > 0 ? h->max_batch_size : BATCH_DEFAULT_MAX_SIZE;
        /* Only 0 means the default: a negative or NaN wait stays invalid. */
        *ret_wait_s = h->batch_wait_timeout_s != 0 ? h->batch_wait_timeout_s : BATCH_DEFAULT_WAIT_S;
}

int batch_new(const struct serve_batch_handler *h, struct batcher **ret) {
        _cleanup_free_ struct batcher *b = NULL;
        pthread_condattr_t attr;
        int r;

        b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        b->h = h;
        batch_handler_params(h, &b->max_batch_size, &b->wait_s);
        if (!batch_params_valid(b->max_batch_size, b->wait_s))
                return -EINVAL;

        r = -pthread_condattr_init(&attr);
        if (r < 0)
                return r;
        r = -pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (r == 0)
                r = -pthread_cond_init(&b->leader_cond, &attr);
        pthread_condattr_destroy(&attr);
        if (r < 0)
                return r;
        r = -pthread_cond_init(&b->done_cond, NULL);
        if (r < 0) {
                pthread_cond_destroy(&b->leader_cond);
                return r;
        }
        r = -pthread_mutex_init(&b->lock, NULL);
        if (r < 0) {
                pthread_cond_destroy(&b->done_cond);
                pthread_cond_destroy(&b->leader_cond);
                return r;
        }
        *ret = TAKE_PTR(b);
        return 0;
}

void batch_free(struct batcher *b) {
        if (!b)
                return;
        pthread_mutex_destroy(&b->lock);
        pthread_cond_destroy(&b->leader_cond);
        pthread_cond_destroy(&b->done_cond);
        free(b);
}

int batch_set_params(struct batcher *b, unsigned max_batch_size, double wait_s) {
        if (!batch_params_valid(max_batch_size, wait_s))
                return -EINVAL;
        pthread_mutex_lock(&b->lock);
        b->max_batch_size = max_batch_size;
        b->wait_s = wait_s;
        pthread_mutex_unlock(&b->lock);
        return 0;
}

void batch_get_params(struct batcher *b, unsigned *ret_max, double *ret_wait_s) {
        pthread_mutex_lock(&b->lock);
        *ret_max = b->max_batch_size;
        *ret_wait_s = b->wait_s;
        pthread_mutex_unlock(&b->lock);
}

size_t batch_pending(struct batcher *b) {
        pthread_mutex_lock(&b->lock);
        size_t n = b->open ? b->open->n : 0;
        pthread_mutex_unlock(&b->lock);
        return n;
}

/* The answer to a cancelled request: the proxy drops it anyway, so no body. */
static void answer_cancelled(serve_response *resp) {
        serve_response_clear(resp);
        resp->status = 499;
}

static void join_locked(struct batch *g, struct batch_item *m) {
        *g->tail = m;
        g->tail = &m->next;
        g->n++;
}

/* b->lock held. No one joins g after this; its leader stops waiting. */
static void close_locked(struct batcher *b, struct batch *g) {
        if (b->open == g)
                b->open = NULL;
        g->closed = true;
        /* Broadcast: a leader that was signalled may not have left the wait yet when the next
         * leader starts waiting on the same condition. Each looks at its own batch. */
        pthread_cond_broadcast(&b->leader_cond);
}

static struct timespec deadline_after(double s) {
        struct timespec ts;
        uint64_t ns = sec_to_ns(s);

        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += (time_t) (ns / NSEC_PER_SEC);
        ts.tv_nsec += (long) (ns % NSEC_PER_SEC);
        if (ts.tv_nsec >= (long) NSEC_PER_SEC) {
                ts.tv_sec++;
                ts.tv_nsec -= (long) NSEC_PER_SEC;
        }
        return ts;
}

/* The leader, without the lock, on a closed batch: leaves out the members cancelled by now,
 * calls fn once for the others, and settles each answer. Sets every member's batch_size. */
static void batch_execute(struct batcher *b, serve_ctx *ctx, struct batch *g) {
        _cleanup_free_ const serve_request **reqs = NULL;
        _cleanup_free_ serve_response **resps = NULL;
        size_t n = 0;
        int r;

        reqs = malloc(g->n * sizeof *reqs);
        resps = malloc(g->n * sizeof *resps);
        if (!reqs || !resps) {
                log_error("Out of memory for a batch of %zu for handler %s, answering 500", g->n,
                          b->h->name);
                for (struct batch_item *m = g->head; m; m = m->next)
                        response_internal_error(m->resp);
                return;
        }
        for (struct batch_item *m = g->head; m; m = m->next) {
                if (serve_request_cancelled(m->req)) {
                        answer_cancelled(m->resp);
                        continue;
                }
                reqs[n] = m->req;
                resps[n] = m->resp;
                n++;
                m->batch_size = 1; /* in the batch; its size follows */
        }
        if (n == 0)
                return;
        for (struct batch_item *m = g->head; m; m = m->next)
                if (m->batch_size)
                        m->batch_size = n;

        r = b->h->fn(ctx, n, reqs, resps);
        if (r < 0)
                log_warning_errno(r, "Batched handler %s failed for a batch of %zu: %m", b->h->name, n);
        for (size_t i = 0; i < n; i++) {
                if (r < 0 && resps[i]->status < 400)
                        response_internal_error(resps[i]);
                /* The proxy drops the response of a cancelled request: do not ship its body. */
                if (serve_request_cancelled(reqs[i]))
                        answer_cancelled(resps[i]);
        }
}

void batch_submit(struct batcher *b, serve_ctx *ctx, struct batch_item *it, void (*complete)(struct batch_item *it)) {
        it->complete = complete;
        it->next = NULL;
        it->batch_size = 0;

        /* Left out at once: it would only take a place in the batch. */
        if (serve_request_cancelled(it->req)) {
                answer_cancelled(it->resp);
                complete(it);
                return;
        }

        pthread_mutex_lock(&b->lock);
        if (b->open) {
                /* A member: the leader answers it; this thread goes back to serving. */
                struct batch *g = b->open;
                join_locked(g, it);
                if (g->n >= g->max)
                        close_locked(b, g); /* full: it goes now */
                pthread_mutex_unlock(&b->lock);
                return;
        }

        /* We lead a new batch. */
        struct batch g = { .tail = &g.head, .max = b->max_batch_size };
        join_locked(&g, it);
        if (g.n < g.max) {
                struct timespec deadline = deadline_after(b->wait_s);
                b->open = &g;
                /* Until the batch is full (a joiner closes it) or its deadline passes. No
                 * error but ETIMEDOUT is possible; any ends the wait rather than spin. */
                while (!g.closed && pthread_cond_timedwait(&b->leader_cond, &b->lock, &deadline) == 0)
                        ;
                if (!g.closed)
                        close_locked(b, &g);
        } /* else full already (max_batch_size 1): it never opened */
        pthread_mutex_unlock(&b->lock);

        batch_execute(b, ctx, &g);
        for (struct batch_item *m = g.head, *next; m; m = next) {
                next = m->next; /* m may be gone once completed */
                m->complete(m);
        }
}

/* batch_run()'s item: its thread waits for the leader's completion. */
struct waiting_item {
        struct batch_item it;
        struct batcher *b;
        bool done;
};

static void waiting_complete(struct batch_item *it) {
        struct waiting_item *w = container_of(it, struct waiting_item, it);
        struct batcher *b = w->b;

        pthread_mutex_lock(&b->lock);
        w->done = true; /* w may leave once we unlock: the last touch */
        pthread_cond_broadcast(&b->done_cond);
        pthread_mutex_unlock(&b->lock);
}

size_t batch_run(struct batcher *b, serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        struct waiting_item w = { .it = { .req = req, .resp = resp }, .b = b };

        batch_submit(b, ctx, &w.it, waiting_complete);
        pthread_mutex_lock(&b->lock);
        while (!w.done)
                pthread_cond_wait(&b->done_cond, &b->lock);
        pthread_mutex_unlock(&b->lock);
        return w.it.batch_size;
}

/* ---- user_config ---- */

void batch_overrides_parse(const char *user_config_json, struct batch_overrides *ret) {
        *ret = (struct batch_overrides) {};
        if (!user_config_json)
                return;
        cJSON *j = cJSON_Parse(user_config_json);
        if (!cJSON_IsObject(j)) {
                cJSON_Delete(j);
                return;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "max_batch_size");
        if (v && !cJSON_IsNull(v)) {
                double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
                if (d >= 1 && d <= UINT_MAX && d == floor(d)) {
                        ret->has_max = true;
                        ret->max_batch_size = (unsigned) d;
                } else
                        log_warning("user_config: max_batch_size must be an integer >= 1, ignoring it");
        }
        v = cJSON_GetObjectItemCaseSensitive(j, "batch_wait_timeout_s");
        if (v && !cJSON_IsNull(v)) {
                double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
                if (d >= 0 && d <= BATCH_MAX_WAIT_S) {
                        ret->has_wait = true;
                        ret->wait_s = d;
                } else
                        log_warning("user_config: batch_wait_timeout_s must be a number of seconds from 0 to %g, ignoring it",
                                    BATCH_MAX_WAIT_S);
        }
        cJSON_Delete(j);
}

void batch_apply_overrides(struct batcher *b, const struct batch_overrides *o) {
        unsigned max;
        double wait_s;

        batch_handler_params(b->h, &max, &wait_s);
        if (o && o->has_max)
                max = o->max_batch_size;
        if (o && o->has_wait)
                wait_s = o->wait_s;
        /* Both were validated: the handler's by batch_new(), o's by batch_overrides_parse(). */
        (void) batch_set_params(b, max, wait_s);
}
