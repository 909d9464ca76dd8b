/* The search application (examples/search/search.c) in one process, against a fake SDK: the
 * serve_* functions it calls are defined here, a handle call runs the callee's handler at once,
 * and failures can be injected. It checks what Pipeline answers (results, every 4xx, how a
 * failed call maps to 502/503/504) and that every future and result is waited for and freed,
 * without a cluster. The real runtime's behaviour is the integration tests' job. */

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macros.h"
#include "serve.h"
#include "embed.h"
#include "rank.h"
#include "tap.h"

extern const struct serve_application app;

/* ---------------------------------------------------------------------------------------- */
/* the fake SDK */

struct serve_ctx {
        const struct serve_deployment *dep;
        void *state;
};

struct serve_request {
        const char *method;
        const void *body;
        size_t len;
};

struct serve_response {
        int status;
        char *body;
        size_t len;
        char content_type[64];
        bool allow_post;
};

struct serve_future {
        int r;
        struct serve_result res;
};

/* What the fake runtime does and counts. */
static struct {
        /* Injected failures: the Nth call (1-based, 0: never) of Embedder.embed answers
         * embed_fail_status; serve_call_async fails at once on the Nth start. */
        unsigned embed_fail_at, async_fail_at;
        int embed_fail_status, async_fail_errno;
        bool embed_short;      /* Embedder answers one byte short */
        int rank_fail_status;  /* Ranker.rank answers this (0: it runs) */
        /* Counters. */
        unsigned embed_calls, async_starts, futures_live, futures_max_live, results_live;
        char last_log[256];
} fake;

static struct serve_ctx pipeline_ctx, embedder_ctx, ranker_ctx;

void serve_ctx_set_state(serve_ctx *ctx, void *state) {
        ctx->state = state;
}

void *serve_ctx_state(const serve_ctx *ctx) {
        return ctx->state;
}

void serve_log(serve_ctx *ctx, int level, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(fake.last_log, sizeof fake.last_log, fmt, ap);
        va_end(ap);
        printf("# log: %s\n", fake.last_log);
}

const char *serve_request_method(const serve_request *req) {
        return req->method;
}

const void *serve_request_body(const serve_request *req, size_t *ret_len) {
        *ret_len = req->len;
        return req->body;
}

void serve_response_set_status(serve_response *resp, int status) {
        resp->status = status;
}

int serve_response_add_header(serve_response *resp, const char *name, const char *value) {
        if (strcasecmp(name, "Content-Type") == 0)
                snprintf(resp->content_type, sizeof resp->content_type, "%s", value);
        else if (strcasecmp(name, "Allow") == 0)
                resp->allow_post = strcmp(value, "POST") == 0;
        return 0;
}

int serve_response_write(serve_response *resp, const void *data, size_t len) {
        char *b = realloc(resp->body, resp->len + len + 1);

        if (!b)
                return -ENOMEM;
        memcpy(b + resp->len, data, len);
        resp->len += len;
        b[resp->len] = 0;
        resp->body = b;
        return 0;
}

int serve_response_printf(serve_response *resp, const char *fmt, ...) {
        char buf[256];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof buf)
                return -EINVAL;
        return serve_response_write(resp, buf, (size_t) n);
}

static const struct serve_deployment *deployment(const char *name) {
        for (size_t i = 0; app.deployments[i]; i++)
                if (strcmp(app.deployments[i]->name, name) == 0)
                        return app.deployments[i];
        return NULL;
}

/* Runs a handler (or a batched one with a batch of one) like the replica would, answering 500
 * for a negative return, and turns the response into a result. */
static int run_call(serve_ctx *ctx, const char *method, const void *arg, size_t len, struct serve_result *ret) {
        struct serve_request req = { "POST", arg, len };
        struct serve_response resp = { .status = 200 };
        const struct serve_request *reqs[1] = { &req };
        struct serve_response *resps[1] = { &resp };
        int r = -ENOENT;

        for (size_t i = 0; ctx->dep->handlers && ctx->dep->handlers[i].name; i++)
                if (strcmp(ctx->dep->handlers[i].name, method) == 0)
                        r = ctx->dep->handlers[i].fn(ctx, &req, &resp);
        for (size_t i = 0; ctx->dep->batched && ctx->dep->batched[i].name; i++)
                if (strcmp(ctx->dep->batched[i].name, method) == 0)
                        r = ctx->dep->batched[i].fn(ctx, 1, reqs, resps);
        if (r < 0 && resp.status < 400)
                resp.status = 500;
        if (!resp.body && serve_response_write(&resp, "", 0) < 0)
                abort();
        *ret = (struct serve_result) { resp.status, resp.body, resp.len };
        fake.results_live++;
        return resp.status >= 400 ? -EREMOTEIO : 0;
}

static int fail_result(int status, const char *msg, struct serve_result *ret) {
        ret->status = status;
        ret->data = strdup(msg);
        ret->len = strlen(msg);
        if (!ret->data)
                abort();
        fake.results_live++;
        return -EREMOTEIO;
}

static int call(serve_ctx *ctx, const char *dep, const char *method, const void *arg, size_t len,
                struct serve_result *ret) {
        if (strcmp(dep, "Embedder") == 0 && strcmp(method, "embed") == 0) {
                fake.embed_calls++;
                if (fake.embed_fail_at && fake.embed_calls == fake.embed_fail_at)
                        return fail_result(fake.embed_fail_status, "injected \"failure\"", ret);
                int r = run_call(&embedder_ctx, method, arg, len, ret);
                if (r == 0 && fake.embed_short)
                        ret->len--;
                return r;
        }
        if (strcmp(dep, "Ranker") == 0) {
                if (fake.rank_fail_status)
                        return fail_result(fake.rank_fail_status, "ranker down", ret);
                return run_call(&ranker_ctx, method, arg, len, ret);
        }
        return fail_result(404, "no such deployment", ret);
}

void serve_result_free(struct serve_result *res) {
        if (res->data)
                fake.results_live--;
        free(res->data);
        res->data = NULL;
}

int serve_call(serve_ctx *ctx, const char *dep, const char *method, const void *arg, size_t len,
               struct serve_result *ret) {
        return call(ctx, dep, method, arg, len, ret);
}

int serve_call_async(serve_ctx *ctx, const char *dep, const char *method, const void *arg, size_t len,
                     serve_future **ret_future) {
        serve_future *f;

        fake.async_starts++;
        if (fake.async_fail_at && fake.async_starts == fake.async_fail_at)
                return -fake.async_fail_errno;
        f = calloc(1, sizeof *f);
        if (!f)
                abort();
        f->r = call(ctx, dep, method, arg, len, &f->res);
        if (++fake.futures_live > fake.futures_max_live)
                fake.futures_max_live = fake.futures_live;
        *ret_future = f;
        return 0;
}

int serve_future_wait(serve_future *f, struct serve_result *ret) {
        int r = f->r;

        *ret = f->res;
        free(f);
        fake.futures_live--;
        return r;
}

/* ---------------------------------------------------------------------------------------- */
/* helpers */

static void fake_reset(void) {
        memset(&fake, 0, sizeof fake);
}

/* Pipeline's answer to method + body. */
static struct serve_response search(const char *method, const char *body) {
        struct serve_request req = { method, body, strlen(body) };
        struct serve_response resp = { .status = 200 };
        int r = app.ingress->handlers[0].fn(&pipeline_ctx, &req, &resp);

        if (r < 0 && resp.status < 400)
                resp.status = 500;
        return resp;
}

/* Whether resp is status with a JSON {"error": ...} containing needle. */
static bool is_error(const struct serve_response *resp, int status, const char *needle) {
        cJSON *j = resp->body ? cJSON_Parse(resp->body) : NULL;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        bool good = resp->status == status && strcmp(resp->content_type, "application/json") == 0 &&
                    cJSON_IsString(e) && strstr(e->valuestring, needle) && cJSON_GetArraySize(j) == 1;

        if (!good)
                printf("#   got %d %s: %s\n", resp->status, resp->content_type, resp->body ? resp->body : "(no body)");
        cJSON_Delete(j);
        return good;
}

static bool all_freed(void) {
        bool good = fake.futures_live == 0 && fake.results_live == 0;

        if (!good)
                printf("#   %u futures and %u results left\n", fake.futures_live, fake.results_live);
        return good;
}

/* A search request for query and n docs given by fmt(i). */
static char *request_json(const char *query, size_t n, const char *top_k) {
        cJSON *j = cJSON_CreateObject(), *docs = cJSON_AddArrayToObject(j, "docs");
        char doc[64];

        cJSON_AddStringToObject(j, "query", query);
        for (size_t i = 0; i < n; i++) {
                snprintf(doc, sizeof doc, "document %zu about %s", i, i % 3 ? "dogs" : "cats");
                cJSON_AddItemToArray(docs, cJSON_CreateString(doc));
        }
        if (top_k)
                cJSON_AddRawToObject(j, "top_k", top_k);
        char *s = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (!s)
                abort();
        return s;
}

/* ---------------------------------------------------------------------------------------- */
/* the tests */

static void test_graph(void) {
        const struct serve_deployment *p = deployment("Pipeline"), *e = deployment("Embedder"),
                                      *rk = deployment("Ranker");

        ok(app.abi_version == SERVE_ABI_VERSION && app.ingress == p && p && e && rk,
           "the application: ingress Pipeline, with Embedder and Ranker");
        ok(p && p->binds && strcmp(p->binds[0], "Embedder") == 0 && strcmp(p->binds[1], "Ranker") == 0 &&
           !p->binds[2], "Pipeline binds Embedder and Ranker");
        ok(p && p->defaults.num_replicas == 3 && e && e->defaults.num_replicas == 2 &&
           e->defaults.max_ongoing_requests == 16 && rk && rk->defaults.num_replicas == 1,
           "defaults: 3 Pipelines, 2 Embedders of 16 requests, 1 Ranker");
        ok(e && e->batched && strcmp(e->batched[0].name, "embed") == 0 && e->batched[0].max_batch_size == 16 &&
           e->batched[0].batch_wait_timeout_s == 0.002 && !e->batched[1].name,
           "Embedder.embed is batched: 16 requests, 2 ms");
        ok(rk && strcmp(rk->handlers[0].name, "rank") == 0, "Ranker.rank");

        pipeline_ctx.dep = p;
        embedder_ctx.dep = e;
        ranker_ctx.dep = rk;
        is_int(rk->init(&ranker_ctx, "{}", NULL), 0, "Ranker starts");
        ok(strstr(fake.last_log, "Ranker: no GPU visible, ranking on the CPU") ||
           strstr(fake.last_log, "Ranker: using GPU "), "and says where it ranks");
}

static void test_results(void) {
        static const char *const docs[] = { "a dog barks", "the weather is nice", "my cat sleeps", "cats and dogs" };
        float q[EMBED_DIM], d[4 * EMBED_DIM];
        struct rank_hit want[4];
        struct serve_response resp;
        cJSON *j;
        bool good;

        fake_reset();
        resp = search("POST", "{\"query\": \"Cat\", \"docs\": [\"a dog barks\", \"the weather is nice\", "
                              "\"my cat sleeps\", \"cats and dogs\"], \"top_k\": 3}");
        embed_text("Cat", 3, q);
        for (size_t i = 0; i < 4; i++)
                embed_text(docs[i], strlen(docs[i]), d + i * EMBED_DIM);
        size_t n = rank_cpu(q, d, 4, EMBED_DIM, 3, want);

        j = cJSON_Parse(resp.body);
        const cJSON *results = cJSON_GetObjectItemCaseSensitive(j, "results"), *hit;
        good = resp.status == 200 && strcmp(resp.content_type, "application/json") == 0 && cJSON_IsArray(results) &&
               (size_t) cJSON_GetArraySize(results) == n;
        size_t i = 0;
        cJSON_ArrayForEach(hit, results) {
                const cJSON *index = cJSON_GetObjectItemCaseSensitive(hit, "index"),
                            *score = cJSON_GetObjectItemCaseSensitive(hit, "score");
                good = good && i < n && cJSON_IsNumber(index) && index->valuedouble == want[i].index &&
                       cJSON_IsNumber(score) && fabs(score->valuedouble - want[i].score) < 1e-6;
                i++;
        }
        ok(good, "a search answers the CPU ranker's top 3, in order");
        ok(n == 3 && want[0].index == 2, "(\"my cat sleeps\" first)");
        is_int(fake.embed_calls, 5, "one Embedder call per text");
        ok(all_freed(), "every future and result freed");
        cJSON_Delete(j);
        free(resp.body);

        fake_reset();
        resp = search("POST", "{\"query\": \"cat\", \"docs\": [\"a cat sleeps\", \"a dog barks\"], \"top_k\": 1}");
        ok(resp.status == 200 && resp.body &&
           strcmp(resp.body, "{\"results\":[{\"index\":0,\"score\":0.571429}]}\n") == 0,
           "the example in search.c answers as it says");
        free(resp.body);

        fake_reset();
        char *body = request_json("cats", 7, NULL);
        resp = search("POST", body);
        j = cJSON_Parse(resp.body);
        ok(resp.status == 200 && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "results")) == 7,
           "top_k defaults to 10: all 7 documents");
        cJSON_Delete(j);
        free(resp.body);
        free(body);

        fake_reset();
        body = request_json("cats", 3, "1e9");
        resp = search("POST", body);
        j = cJSON_Parse(resp.body);
        ok(resp.status == 200 && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "results")) == 3,
           "top_k 1e9 (an integer) over 3 documents: all 3");
        cJSON_Delete(j);
        free(resp.body);
        free(body);

        fake_reset();
        resp = search("POST", "{\"query\": \"cats\", \"docs\": []}");
        ok(resp.status == 200 && resp.body && strcmp(resp.body, "{\"results\":[]}\n") == 0,
           "no documents: no results");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        body = request_json("cats", 1024, "5");
        resp = search("POST", body);
        j = cJSON_Parse(resp.body);
        ok(resp.status == 200 && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "results")) == 5,
           "1024 documents, top_k 5: 5 results");
        ok(fake.futures_max_live <= 128 && fake.futures_max_live >= 16,
           "at most 128 Embedder calls in flight (%u)", fake.futures_max_live);
        ok(all_freed(), "every future and result freed");
        cJSON_Delete(j);
        free(resp.body);
        free(body);
}

static void test_bad_requests(void) {
        static const struct {
                const char *method, *body;
                int status;
                const char *needle;
        } cases[] = {
                { "GET", "", 405, "POST" },
                { "PUT", "{}", 405, "POST" },
                { "POST", "", 400, "JSON" },
                { "POST", "{\"query\": ", 400, "JSON" },
                { "POST", "[1, 2]", 400, "object" },
                { "POST", "{\"docs\": []}", 400, "\"query\"" },
                { "POST", "{\"query\": 3, \"docs\": []}", 400, "\"query\"" },
                { "POST", "{\"query\": null, \"docs\": []}", 400, "\"query\"" },
                { "POST", "{\"query\": \"q\"}", 400, "\"docs\"" },
                { "POST", "{\"query\": \"q\", \"docs\": \"a doc\"}", 400, "\"docs\"" },
                { "POST", "{\"query\": \"q\", \"docs\": {\"0\": \"a\"}}", 400, "\"docs\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\", \"b\", 3]}", 400, "\"docs\"[2]" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\", null]}", 400, "\"docs\"[1]" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": 0}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": -3}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": 1.5}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": \"3\"}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": true}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": null}", 400, "\"top_k\"" },
                { "POST", "{\"query\": \"q\", \"docs\": [\"a\"], \"top_k\": 1e999}", 400, "\"top_k\"" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                fake_reset();
                struct serve_response resp = search(cases[i].method, cases[i].body);
                ok(is_error(&resp, cases[i].status, cases[i].needle) && fake.async_starts == 0,
                   "%s %s: %d naming %s", cases[i].method, cases[i].body, cases[i].status, cases[i].needle);
                if (cases[i].status == 405)
                        ok(resp.allow_post, "with Allow: POST");
                free(resp.body);
        }

        /* The limits: 1024 docs of 64 KiB each. */
        char *body = request_json("q", 1025, NULL);
        fake_reset();
        struct serve_response resp = search("POST", body);
        ok(is_error(&resp, 413, "too many docs") && fake.async_starts == 0, "1025 documents: 413");
        free(resp.body);
        free(body);

        char *text = malloc(64 * 1024 + 2);
        body = malloc(2 * 64 * 1024 + 100);
        if (!text || !body)
                abort();
        memset(text, 'a', 64 * 1024 + 1);
        text[64 * 1024 + 1] = 0;
        sprintf(body, "{\"query\": \"q\", \"docs\": [\"x\", \"%s\"]}", text);
        fake_reset();
        resp = search("POST", body);
        ok(is_error(&resp, 413, "\"docs\"[1] is longer than 65536") && fake.async_starts == 0,
           "a document of 64 KiB + 1: 413");
        free(resp.body);
        sprintf(body, "{\"query\": \"%s\", \"docs\": [\"x\"]}", text);
        fake_reset();
        resp = search("POST", body);
        ok(is_error(&resp, 413, "\"query\" is longer") && fake.async_starts == 0, "a query of 64 KiB + 1: 413");
        free(resp.body);
        text[64 * 1024] = 0;
        sprintf(body, "{\"query\": \"%s\", \"docs\": [\"%s\"]}", text, text);
        fake_reset();
        resp = search("POST", body);
        ok(resp.status == 200, "a query and a document of 64 KiB: 200");
        free(resp.body);
        free(body);
        free(text);
}

static void test_failed_calls(void) {
        char *body = request_json("cats", 300, "3");
        struct serve_response resp;

        fake_reset();
        fake.embed_fail_at = 7;
        fake.embed_fail_status = 503;
        resp = search("POST", body);
        ok(is_error(&resp, 503, "Embedder.embed: injected \"failure\""), "Embedder answers 503: Pipeline passes it on");
        ok(fake.async_starts < 301 && all_freed(), "no call starts after it (%u started), all are waited for",
           fake.async_starts);
        free(resp.body);

        fake_reset();
        fake.embed_fail_at = 200;
        fake.embed_fail_status = 504;
        resp = search("POST", body);
        ok(is_error(&resp, 504, "Embedder.embed"), "an Embedder call times out: 504");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        fake.embed_fail_at = 1;
        fake.embed_fail_status = 500;
        resp = search("POST", body);
        ok(is_error(&resp, 502, "Embedder.embed: injected"), "Embedder fails (500): 502");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        fake.async_fail_at = 150;
        fake.async_fail_errno = EBUSY;
        resp = search("POST", body);
        ok(is_error(&resp, 503, "Embedder.embed: "), "a call refused at once (backpressure): 503");
        ok(fake.async_starts == 150 && all_freed(), "the 149 started calls are waited for");
        free(resp.body);

        fake_reset();
        fake.async_fail_at = 2;
        fake.async_fail_errno = ENOENT;
        resp = search("POST", body);
        ok(is_error(&resp, 502, "Embedder.embed: "), "a call refused at once (not bound): 502");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        fake.embed_short = true;
        resp = search("POST", body);
        ok(is_error(&resp, 502, "Embedder.embed: an answer of 1023 bytes"), "a malformed embedding: 502");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        fake.rank_fail_status = 503;
        resp = search("POST", body);
        ok(is_error(&resp, 503, "Ranker.rank: ranker down"), "Ranker answers 503: 503");
        ok(all_freed(), "every future and result freed");
        free(resp.body);

        fake_reset();
        fake.rank_fail_status = 404;
        resp = search("POST", body);
        ok(is_error(&resp, 502, "Ranker.rank: ranker down"), "Ranker answers 404: 502");
        free(resp.body);
        free(body);
}

static void test_ranker_refuses(void) {
        static const unsigned char junk[] = "RNK1 but not really";
        struct serve_result res;

        fake_reset();
        ok(serve_call(&pipeline_ctx, "Ranker", "rank", junk, sizeof junk, &res) < 0 && res.status == 400,
           "Ranker answers 400 to a malformed request: %.*s", (int) res.len, (const char *) res.data);
        serve_result_free(&res);
        ok(serve_call(&pipeline_ctx, "Ranker", "rank", "", 0, &res) < 0 && res.status == 400,
           "and to an empty one");
        serve_result_free(&res);
}

int main(void) {
        test_graph();
        test_results();
        test_bad_requests();
        test_failed_calls();
        test_ranker_refuses();
        if (deployment("Ranker")->destroy)
                deployment("Ranker")->destroy(&ranker_ctx);
        return tap_done();
}
