/* Batched handlers (src/replica/batch.c): threads submitting at once form batches of the
 * configured size, each caller gets its own answer, failures and cancellations are settled per
 * request, parameters change from the next batch on, and user_config overrides parse.
 *
 * Arrival is made deterministic with barriers and long wait timeouts (batches close because
 * they are full, not by time); nothing asserts on timing. */

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macros.h"
#include "replica/batch.h"
#include "sdk-internal.h"
#include "tap.h"

#define LONG_WAIT_S 5.0 /* batches in these tests fill long before this */

/* What the handler saw: one entry per call. */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t seen_sizes[64];
static size_t seen_calls;
static char seen_bodies[256][32];
static size_t seen_n_bodies;

static void seen_reset(void) {
        pthread_mutex_lock(&seen_lock);
        seen_calls = seen_n_bodies = 0;
        pthread_mutex_unlock(&seen_lock);
}

static size_t seen_count(void) {
        pthread_mutex_lock(&seen_lock);
        size_t n = seen_calls;
        pthread_mutex_unlock(&seen_lock);
        return n;
}

static bool seen_body(const char *body) {
        bool found = false;
        pthread_mutex_lock(&seen_lock);
        for (size_t i = 0; i < seen_n_bodies; i++)
                found = found || streq(seen_bodies[i], body);
        pthread_mutex_unlock(&seen_lock);
        return found;
}

/* Sorted sizes of the calls so far, as "4,4". */
static void seen_sizes_str(char *buf, size_t cap) {
        size_t s[64], n;

        pthread_mutex_lock(&seen_lock);
        n = seen_calls;
        memcpy(s, seen_sizes, n * sizeof *s);
        pthread_mutex_unlock(&seen_lock);
        for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && s[j - 1] < s[j]; j--) {
                        size_t t = s[j];
                        s[j] = s[j - 1];
                        s[j - 1] = t;
                }
        buf[0] = '\0';
        for (size_t i = 0; i < n; i++)
                snprintf(buf + strlen(buf), cap - strlen(buf), "%s%zu", i ? "," : "", s[i]);
}

static void record(size_t n, const serve_request *const *reqs) {
        pthread_mutex_lock(&seen_lock);
        if (seen_calls < 64)
                seen_sizes[seen_calls++] = n;
        for (size_t i = 0; i < n && seen_n_bodies < 256; i++)
                snprintf(seen_bodies[seen_n_bodies++], sizeof seen_bodies[0], "%s",
                         (const char *) serve_request_body(reqs[i], NULL));
        pthread_mutex_unlock(&seen_lock);
}

/* Answers each request with its own body and the batch size. A request whose body is
 * "cancel-me" is cancelled while the handler runs (as a REQ_CANCEL would). */
static int echo_batch(serve_ctx *ctx, size_t n, const serve_request *const *reqs, serve_response *const *resps) {
        record(n, reqs);
        for (size_t i = 0; i < n; i++) {
                const char *body = serve_request_body(reqs[i], NULL);
                serve_response_printf(resps[i], "%s n=%zu", body, n);
                if (streq(body, "cancel-me"))
                        /* Pairs with the acquire load in serve_request_cancelled(). */
                        atomic_store_explicit(&((serve_request *) reqs[i])->cancelled, true,
                                              memory_order_release);
        }
        return 0;
}

/* Answers 404 to requests whose body starts with "4xx", writes something for the others, and
 * fails. */
static int failing_batch(serve_ctx *ctx, size_t n, const serve_request *const *reqs, serve_response *const *resps) {
        record(n, reqs);
        for (size_t i = 0; i < n; i++) {
                const char *body = serve_request_body(reqs[i], NULL);
                if (strncmp(body, "4xx", 3) == 0) {
                        serve_response_set_status(resps[i], 404);
                        serve_response_printf(resps[i], "not found");
                } else
                        serve_response_printf(resps[i], "partial %s", body);
        }
        return -EIO;
}

static serve_ctx ctx;

struct submitter {
        struct batcher *b;
        serve_request *req;
        serve_response resp;
        pthread_barrier_t *start; /* NULL: go at once */
        size_t batch_size;
        pthread_t thread;
};

static serve_request *request_new(const char *body) {
        serve_request *req = calloc(1, sizeof *req);
        if (!req)
                abort();
        req->body = (uint8_t *) strdup(body);
        if (!req->body)
                abort();
        req->body_len = strlen(body);
        req->method = "POST";
        req->path = "/";
        req->query = "";
        return req;
}

static void *submit_main(void *userdata) {
        struct submitter *s = userdata;

        if (s->start)
                pthread_barrier_wait(s->start);
        s->batch_size = batch_run(s->b, &ctx, s->req, &s->resp);
        return NULL;
}

static void submit_start(struct submitter *s, struct batcher *b, const char *body, pthread_barrier_t *start) {
        *s = (struct submitter) { .b = b, .req = request_new(body), .start = start };
        serve_response_init(&s->resp);
        if (pthread_create(&s->thread, NULL, submit_main, s) != 0)
                abort();
}

static void submit_join(struct submitter *s) {
        pthread_join(s->thread, NULL);
}

static void submit_free(struct submitter *s) {
        serve_response_clear(&s->resp);
        serve_request_free(s->req);
}

static const char *resp_body(const struct submitter *s) {
        return s->resp.body_len ? s->resp.body : "";
}

static bool body_is(const struct submitter *s, const char *want) {
        return s->resp.body_len == strlen(want) && memcmp(s->resp.body, want, s->resp.body_len) == 0;
}

/* Waits until the open batch holds n requests (the test's own threads got there). */
static bool wait_pending(struct batcher *b, size_t n) {
        for (int i = 0; i < 10000; i++) {
                if (batch_pending(b) == n)
                        return true;
                nanosleep(&(struct timespec) { .tv_nsec = 1000 * 1000 }, NULL);
        }
        return false;
}

static struct batcher *batcher_new(const struct serve_batch_handler *h) {
        struct batcher *b = NULL;
        if (batch_new(h, &b) < 0)
                abort();
        return b;
}

static void test_full_batches(void) {
        const struct serve_batch_handler h = { "embed", echo_batch, 4, LONG_WAIT_S };
        struct batcher *b = batcher_new(&h);
        struct submitter s[8];
        pthread_barrier_t start;
        char sizes[128];

        seen_reset();
        pthread_barrier_init(&start, NULL, 8);
        for (int i = 0; i < 8; i++) {
                char body[16];
                snprintf(body, sizeof body, "req-%d", i);
                submit_start(&s[i], b, body, &start);
        }
        for (int i = 0; i < 8; i++)
                submit_join(&s[i]);
        seen_sizes_str(sizes, sizeof sizes);
        ok(streq(sizes, "4,4"), "8 requests with max_batch_size 4 make two batches of 4 (got %s)", sizes);

        bool routed = true;
        for (int i = 0; i < 8; i++) {
                char want[32];
                snprintf(want, sizeof want, "req-%d n=4", i);
                if (s[i].resp.status != 200 || !body_is(&s[i], want) || s[i].batch_size != 4) {
                        routed = false;
                        printf("#   request %d: status %d, body '%.*s', batch_size %zu\n", i, s[i].resp.status,
                               (int) s[i].resp.body_len, resp_body(&s[i]), s[i].batch_size);
                }
                submit_free(&s[i]);
        }
        ok(routed, "each caller gets its own answer, from a batch of 4");
        pthread_barrier_destroy(&start);
        batch_free(b);
}

static void test_lone_request(void) {
        const struct serve_batch_handler h = { "embed", echo_batch, 4, 0.02 };
        struct batcher *b = batcher_new(&h);
        struct submitter s;

        seen_reset();
        submit_start(&s, b, "solo", NULL);
        submit_join(&s);
        is_int(seen_count(), 1, "a lone request runs once its deadline passes");
        ok(s.batch_size == 1 && s.resp.status == 200 && body_is(&s, "solo n=1"),
           "... as a batch of 1 (status %d, body '%.*s')", s.resp.status, (int) s.resp.body_len, resp_body(&s));
        submit_free(&s);
        batch_free(b);
}

static void test_max_one(void) {
        /* A batch of at most 1 is full at once: were it waiting, this would take a minute. */
        const struct serve_batch_handler h = { "embed", echo_batch, 1, 60 };
        struct batcher *b = batcher_new(&h);
        struct submitter s[3];
        pthread_barrier_t start;
        char sizes[64];

        seen_reset();
        pthread_barrier_init(&start, NULL, 3);
        for (int i = 0; i < 3; i++)
                submit_start(&s[i], b, "one", &start);
        for (int i = 0; i < 3; i++)
                submit_join(&s[i]);
        seen_sizes_str(sizes, sizeof sizes);
        ok(streq(sizes, "1,1,1"), "max_batch_size 1 runs every request alone (got %s)", sizes);
        bool all = true;
        for (int i = 0; i < 3; i++) {
                all = all && s[i].batch_size == 1 && body_is(&s[i], "one n=1");
                submit_free(&s[i]);
        }
        ok(all, "... each with its own answer");
        pthread_barrier_destroy(&start);
        batch_free(b);
}

static void test_failure(void) {
        const struct serve_batch_handler h = { "embed", failing_batch, 4, LONG_WAIT_S };
        static const char *const bodies[4] = { "a", "b", "4xx-c", "d" };
        struct batcher *b = batcher_new(&h);
        struct submitter s[4];
        pthread_barrier_t start;

        seen_reset();
        pthread_barrier_init(&start, NULL, 4);
        for (int i = 0; i < 4; i++)
                submit_start(&s[i], b, bodies[i], &start);
        for (int i = 0; i < 4; i++)
                submit_join(&s[i]);
        is_int(seen_count(), 1, "the failing handler was called once for the 4 requests");
        bool internal = true;
        for (int i = 0; i < 4; i++) {
                if (i == 2)
                        continue;
                if (s[i].resp.status != 500 || !body_is(&s[i], "internal error\n")) {
                        internal = false;
                        printf("#   request '%s': status %d, body '%.*s'\n", bodies[i], s[i].resp.status,
                               (int) s[i].resp.body_len, resp_body(&s[i]));
                }
        }
        ok(internal, "a failing batch answers 500 'internal error' to each request without a 4xx");
        ok(s[2].resp.status == 404 && body_is(&s[2], "not found"),
           "a request the handler answered 404 keeps it (status %d, body '%.*s')", s[2].resp.status,
           (int) s[2].resp.body_len, resp_body(&s[2]));
        for (int i = 0; i < 4; i++)
                submit_free(&s[i]);
        pthread_barrier_destroy(&start);
        batch_free(b);
}

static void test_set_params(void) {
        const struct serve_batch_handler h = { "embed", echo_batch, 4, LONG_WAIT_S };
        struct batcher *b = batcher_new(&h);
        struct submitter first, s[7];
        pthread_barrier_t start;
        unsigned max;
        double wait_s;
        char sizes[64];

        seen_reset();
        is_int(batch_set_params(b, 0, 1), -EINVAL, "max_batch_size 0 is refused");
        is_int(batch_set_params(b, 2, -1), -EINVAL, "a negative batch_wait_timeout_s is refused");
        batch_get_params(b, &max, &wait_s);
        ok(max == 4 && wait_s == LONG_WAIT_S, "refused parameters change nothing (%u, %g)", max, wait_s);

        /* The first request opens a batch of up to 4; the change comes while it is open. */
        submit_start(&first, b, "first", NULL);
        ok(wait_pending(b, 1), "the first request opened a batch");
        is_int(batch_set_params(b, 2, LONG_WAIT_S), 0, "max_batch_size 2 is set while a batch is open");
        batch_get_params(b, &max, &wait_s);
        is_int(max, 2, "batch_get_params() tells the new max_batch_size");

        pthread_barrier_init(&start, NULL, 7);
        for (int i = 0; i < 7; i++)
                submit_start(&s[i], b, "next", &start);
        submit_join(&first);
        for (int i = 0; i < 7; i++)
                submit_join(&s[i]);
        seen_sizes_str(sizes, sizeof sizes);
        /* The open batch keeps 4; the 4 requests after it go 2 by 2. */
        ok(streq(sizes, "4,2,2"), "the open batch keeps its size, the next ones have the new one (got %s)", sizes);
        ok(first.batch_size == 4 && body_is(&first, "first n=4"), "the first request ran in the batch of 4");
        submit_free(&first);
        for (int i = 0; i < 7; i++)
                submit_free(&s[i]);
        pthread_barrier_destroy(&start);
        batch_free(b);
}

static void cancel(serve_request *req) {
        /* Pairs with the acquire load in serve_request_cancelled(). */
        atomic_store_explicit(&req->cancelled, true, memory_order_release);
}

static void test_cancelled(void) {
        const struct serve_batch_handler h = { "embed", echo_batch, 3, LONG_WAIT_S };
        struct batcher *b = batcher_new(&h);
        struct submitter s[4], a, x, c;
        pthread_barrier_t start;

        /* Cancelled before it arrives: it never takes a place. */
        seen_reset();
        pthread_barrier_init(&start, NULL, 4);
        for (int i = 0; i < 4; i++) {
                submit_start(&s[i], b, i == 2 ? "gone" : "live", &start);
                if (i == 2)
                        cancel(s[i].req);
        }
        for (int i = 0; i < 4; i++)
                submit_join(&s[i]);
        is_int(seen_count(), 1, "3 live requests and a cancelled one make one batch");
        ok(!seen_body("gone"), "the handler never sees the cancelled request");
        ok(s[2].resp.status == 499 && s[2].resp.body_len == 0 && s[2].batch_size == 0,
           "the cancelled request gets 499 and no body (status %d, %zu bytes)", s[2].resp.status,
           s[2].resp.body_len);
        bool live = true;
        for (int i = 0; i < 4; i++) {
                if (i != 2)
                        live = live && s[i].batch_size == 3 && body_is(&s[i], "live n=3");
                submit_free(&s[i]);
        }
        ok(live, "the live ones ran as a batch of 3");
        pthread_barrier_destroy(&start);

        /* Cancelled while its batch is open: left out when the batch starts. */
        seen_reset();
        submit_start(&a, b, "a", NULL);
        ok(wait_pending(b, 1), "a opened a batch");
        submit_start(&x, b, "x", NULL);
        ok(wait_pending(b, 2), "x joined it");
        cancel(x.req);
        submit_start(&c, b, "c", NULL); /* fills the batch */
        submit_join(&a);
        submit_join(&x);
        submit_join(&c);
        is_int(seen_count(), 1, "the batch ran once");
        ok(!seen_body("x"), "without the request cancelled while waiting");
        ok(x.resp.status == 499 && x.resp.body_len == 0 && x.batch_size == 0,
           "which gets 499 and no body (status %d, %zu bytes)", x.resp.status, x.resp.body_len);
        ok(body_is(&a, "a n=2") && body_is(&c, "c n=2"), "the others ran as a batch of 2 ('%.*s', '%.*s')",
           (int) a.resp.body_len, resp_body(&a), (int) c.resp.body_len, resp_body(&c));
        submit_free(&a);
        submit_free(&x);
        submit_free(&c);

        /* Cancelled while the handler runs: the answer is 499, its body dropped. */
        seen_reset();
        pthread_barrier_init(&start, NULL, 3);
        for (int i = 0; i < 3; i++)
                submit_start(&s[i], b, i == 1 ? "cancel-me" : "stay", &start);
        for (int i = 0; i < 3; i++)
                submit_join(&s[i]);
        ok(s[1].resp.status == 499 && s[1].resp.body_len == 0,
           "a request cancelled while its batch runs gets 499 and no body (status %d, %zu bytes)",
           s[1].resp.status, s[1].resp.body_len);
        ok(body_is(&s[0], "stay n=3") && body_is(&s[2], "stay n=3"), "the others keep their answers");
        for (int i = 0; i < 3; i++)
                submit_free(&s[i]);
        pthread_barrier_destroy(&start);
        batch_free(b);
}

static void test_overrides(void) {
        const struct serve_batch_handler h = { "embed", echo_batch, 0, 0 };
        const struct serve_batch_handler bad = { "embed", echo_batch, 4, -1 };
        struct batcher *b = batcher_new(&h), *nb = NULL;
        struct batch_overrides o;
        unsigned max;
        double wait_s;

        batch_get_params(b, &max, &wait_s);
        ok(max == BATCH_DEFAULT_MAX_SIZE && wait_s == BATCH_DEFAULT_WAIT_S,
           "0 in the handler means the defaults (%u, %g)", max, wait_s);
        is_int(batch_new(&bad, &nb), -EINVAL, "a handler with a negative wait is refused");

        batch_overrides_parse("{\"max_batch_size\": 3, \"batch_wait_timeout_s\": 0.5, \"other\": 1}", &o);
        ok(o.has_max && o.max_batch_size == 3 && o.has_wait && o.wait_s == 0.5,
           "user_config sets max_batch_size and batch_wait_timeout_s");
        batch_apply_overrides(b, &o);
        batch_get_params(b, &max, &wait_s);
        ok(max == 3 && wait_s == 0.5, "... and the batcher takes them (%u, %g)", max, wait_s);

        batch_overrides_parse("{\"batch_wait_timeout_s\": 0}", &o);
        ok(!o.has_max && o.has_wait && o.wait_s == 0, "batch_wait_timeout_s 0 is valid");
        batch_apply_overrides(b, &o);
        batch_get_params(b, &max, &wait_s);
        ok(max == BATCH_DEFAULT_MAX_SIZE && wait_s == 0,
           "a key gone from user_config gives the handler's own value back (%u, %g)", max, wait_s);

        static const char *const invalid[] = {
                "{\"max_batch_size\": 0}", "{\"max_batch_size\": 2.5}", "{\"max_batch_size\": \"4\"}",
                "{\"max_batch_size\": -3}", "{\"batch_wait_timeout_s\": -1}",
                "{\"batch_wait_timeout_s\": \"fast\"}", "{\"batch_wait_timeout_s\": 1e9}",
                "[1, 2]", "not json", "\"a string\"", NULL,
        };
        bool none = true;
        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                batch_overrides_parse(invalid[i], &o);
                if (o.has_max || o.has_wait) {
                        none = false;
                        printf("#   '%s' was taken\n", invalid[i] ? invalid[i] : "(null)");
                }
        }
        ok(none, "invalid values and non-objects override nothing");

        batch_overrides_parse("{\"max_batch_size\": 0, \"batch_wait_timeout_s\": 2}", &o);
        ok(!o.has_max && o.has_wait && o.wait_s == 2, "an invalid value does not hide a valid one");
        batch_apply_overrides(b, NULL);
        batch_get_params(b, &max, &wait_s);
        ok(max == BATCH_DEFAULT_MAX_SIZE && wait_s == BATCH_DEFAULT_WAIT_S,
           "no overrides: the handler's own values (%u, %g)", max, wait_s);
        batch_free(b);
}

int main(void) {
        if (serve_ctx_init(&ctx) < 0)
                return 1;
        test_full_batches();
        test_lone_request();
        test_max_one();
        test_failure();
        test_set_params();
        test_cancelled();
        test_overrides();
        return tap_done();
}
