/* The search pipeline: a graph of three deployments calling each other through handles.
 *
 *   curl -d '{"query": "cat", "docs": ["a cat sleeps", "a dog barks"], "top_k": 1}' \
 *        http://localhost:8000/search
 *   -> {"results":[{"index":0,"score":0.571429}]}
 *
 * Pipeline (the ingress) checks the request, embeds the query and every document through
 * Embedder.embed (all at once: the calls are batched on the Embedder's side), hands the vectors
 * to Ranker.rank and renders its hits. Embedder turns a text into EMBED_DIM float32 (embed.h);
 * Ranker scores documents by cosine similarity to the query on a GPU when it has one
 * (rank_cuda.cu), on the CPU otherwise, and returns the top_k. Between the deployments travel
 * raw bytes: a text, a vector, a packed ranking request and its hits (wire.h).
 *
 * Pipeline's errors are JSON ({"error": "..."}); Embedder's and Ranker's are plain text, which
 * Pipeline quotes in its own. */

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "macros.h"
#include "serve.h"

#include "embed.h"
#include "rank.h"
#include "wire.h"
#ifdef HAVE_CUDA
#include "rank_cuda.h"
#endif

#define SEARCH_MAX_DOCS WIRE_RANK_MAX_DOCS
#define SEARCH_MAX_TEXT (64 * 1024)  /* bytes, per query or document */
#define SEARCH_DEFAULT_TOP_K 10
/* Embedder calls one request keeps in flight: enough to fill the Embedder's batches on several
 * replicas, and a bound on what one request holds (futures, queue slots) however many docs. */
#define SEARCH_MAX_IN_FLIGHT 128
#define SEARCH_MAX_ERROR 512         /* bytes of an error message */
#define SEARCH_MAX_QUOTED 300        /* bytes of a callee's message quoted in ours */
#define EMBEDDING_BYTES (EMBED_DIM * 4)

static void cjson_deletep(cJSON **j) {
        cJSON_Delete(*j);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)

/* Cuts a message truncated by snprintf back to a whole UTF-8 sequence, so that the JSON we
 * print it into stays valid UTF-8. */
static void utf8_trim_tail(char *s) {
        size_t n = strlen(s), lead = n;

        while (lead > 0 && ((unsigned char) s[lead - 1] & 0xc0) == 0x80)
                lead--;
        if (lead == 0)
                return;
        unsigned char c = (unsigned char) s[lead - 1];
        size_t want = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (n - (lead - 1) < want)
                s[lead - 1] = 0;
}

/* Answers status with {"error": message}. Returns 0 (the error is the answer), or -ENOMEM. */
static int _printf_(3, 4) reply_error(serve_response *resp, int status, const char *fmt, ...) {
        _cleanup_cjson_ cJSON *j = NULL;
        _cleanup_free_ char *text = NULL;
        char msg[SEARCH_MAX_ERROR];
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (r >= (int) sizeof msg)
                utf8_trim_tail(msg);

        serve_response_set_status(resp, status);
        j = cJSON_CreateObject();
        if (!j || !cJSON_AddStringToObject(j, "error", msg) || !(text = cJSON_PrintUnformatted(j)))
                return -ENOMEM;
        r = serve_response_add_header(resp, "Content-Type", "application/json");
        if (r < 0)
                return r;
        return serve_response_write(resp, text, strlen(text));
}

/* For the deployments only Pipeline calls: a plain-text message Pipeline quotes. */
static int _printf_(3, 4) reply_text_error(serve_response *resp, int status, const char *fmt, ...) {
        char msg[SEARCH_MAX_ERROR];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        serve_response_set_status(resp, status);
        (void) serve_response_add_header(resp, "Content-Type", "text/plain");
        return serve_response_write(resp, msg, strlen(msg));
}

/* ---- Pipeline --------------------------------------------------------------------------------- */

/* A checked request: texts[0] is the query, texts[1 + i] document i (pointing into the parsed
 * JSON). */
struct search_request {
        const char **texts;
        size_t *lens;
        size_t n_docs;
        size_t top_k;
};

static void search_request_done(struct search_request *s) {
        free(s->texts);
        free(s->lens);
        s->texts = NULL;
        s->lens = NULL;
}

/* Writes why a request is refused into err; returns status. */
static int _printf_(4, 5) reject(char *err, size_t err_cap, int status, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(err, err_cap, fmt, ap);
        va_end(ap);
        return status;
}

/* Checks the parsed body. Returns 0, an HTTP status (400, 413) with the reason in err, or
 * -ENOMEM. */
static int search_request_parse(const cJSON *root, struct search_request *ret, char *err, size_t err_cap) {
        const cJSON *query, *docs, *top_k, *doc;
        size_t n, i;

        if (!cJSON_IsObject(root))
                return reject(err, err_cap, 400, "the body must be a JSON object");

        query = cJSON_GetObjectItemCaseSensitive(root, "query");
        if (!query)
                return reject(err, err_cap, 400, "missing field \"query\"");
        if (!cJSON_IsString(query))
                return reject(err, err_cap, 400, "\"query\" must be a string");
        if (strlen(query->valuestring) > SEARCH_MAX_TEXT)
                return reject(err, err_cap, 413, "\"query\" is longer than %d bytes", SEARCH_MAX_TEXT);

        docs = cJSON_GetObjectItemCaseSensitive(root, "docs");
        if (!docs)
                return reject(err, err_cap, 400, "missing field \"docs\"");
        if (!cJSON_IsArray(docs))
                return reject(err, err_cap, 400, "\"docs\" must be an array of strings");
        n = 0;
        cJSON_ArrayForEach(doc, docs) {
                if (!cJSON_IsString(doc))
                        return reject(err, err_cap, 400, "\"docs\"[%zu] must be a string", n);
                if (++n > SEARCH_MAX_DOCS)
                        return reject(err, err_cap, 413, "too many docs: at most %d", SEARCH_MAX_DOCS);
        }

        ret->top_k = SEARCH_DEFAULT_TOP_K;
        top_k = cJSON_GetObjectItemCaseSensitive(root, "top_k");
        if (top_k) {
                double v = cJSON_GetNumberValue(top_k);
                if (!cJSON_IsNumber(top_k) || !isfinite(v) || v < 1 || v != floor(v))
                        return reject(err, err_cap, 400, "\"top_k\" must be an integer >= 1");
                /* More than the documents means all of them. */
                ret->top_k = v > SEARCH_MAX_DOCS ? SEARCH_MAX_DOCS : (size_t) v;
        }

        ret->n_docs = n;
        ret->texts = calloc(n + 1, sizeof *ret->texts);
        ret->lens = calloc(n + 1, sizeof *ret->lens);
        if (!ret->texts || !ret->lens) {
                search_request_done(ret);
                return -ENOMEM;
        }
        ret->texts[0] = query->valuestring;
        ret->lens[0] = strlen(query->valuestring);
        i = 1;
        cJSON_ArrayForEach(doc, docs) {
                size_t len = strlen(doc->valuestring);
                if (len > SEARCH_MAX_TEXT) {
                        search_request_done(ret);
                        return reject(err, err_cap, 413, "\"docs\"[%zu] is longer than %d bytes", i - 1,
                                      SEARCH_MAX_TEXT);
                }
                ret->texts[i] = doc->valuestring;
                ret->lens[i++] = len;
        }
        return 0;
}

/* The first failed call of a request: the status Pipeline answers and why. */
struct call_failure {
        int status; /* 0 while every call succeeded */
        char message[SEARCH_MAX_ERROR];
};

/* Records the first failure of a request; later ones only follow from it. */
static void _printf_(3, 4) fail(struct call_failure *f, int status, const char *fmt, ...) {
        va_list ap;

        if (f->status)
                return;
        f->status = status;
        va_start(ap, fmt);
        vsnprintf(f->message, sizeof f->message, fmt, ap);
        va_end(ap);
        utf8_trim_tail(f->message);
}

/* Records a failed call. res: the call's result, NULL when the call did not start.
 * Backpressure (503) and timeouts (504) pass through: the client should retry later or with a
 * longer deadline. Anything else is a failure behind Pipeline: 502. */
static void call_failed(struct call_failure *f, const char *deployment, const char *method, int r,
                        const struct serve_result *res) {
        int status = res ? res->status : r == -EBUSY ? 503 : r == -ETIMEDOUT ? 504 : 0;

        status = status == 503 || status == 504 ? status : 502;
        if (res && res->len > 0)
                fail(f, status, "%s.%s: %.*s", deployment, method, (int) MIN(res->len, (size_t) SEARCH_MAX_QUOTED),
                     (const char *) res->data);
        else
                fail(f, status, "%s.%s: %s", deployment, method, strerror(-r));
}

/* Embeds every text of s through Embedder.embed into the vector slots of the ranking request
 * payload, at most SEARCH_MAX_IN_FLIGHT calls at a time. After a failure no call starts, but
 * every started one is waited for (and its result freed). */
static void embed_all(serve_ctx *ctx, const struct search_request *s, void *payload, struct call_failure *f) {
        serve_future *window[SEARCH_MAX_IN_FLIGHT];
        size_t n = s->n_docs + 1, started = 0, done = 0;

        while (done < n) {
                /* Start calls while there is room in the window, then wait for the oldest. */
                while (!f->status && started < n && started - done < SEARCH_MAX_IN_FLIGHT) {
                        int r = serve_call_async(ctx, "Embedder", "embed", s->texts[started], s->lens[started],
                                                 &window[started % SEARCH_MAX_IN_FLIGHT]);
                        if (r < 0) {
                                call_failed(f, "Embedder", "embed", r, NULL);
                                break;
                        }
                        started++;
                }
                if (done == started)
                        break; /* nothing left to wait for: a call failed to start */

                struct serve_result res = {};
                int r = serve_future_wait(window[done % SEARCH_MAX_IN_FLIGHT], &res);
                if (r < 0)
                        call_failed(f, "Embedder", "embed", r, &res);
                else if (res.len != EMBEDDING_BYTES)
                        fail(f, 502, "Embedder.embed: an answer of %zu bytes, not %d", res.len, EMBEDDING_BYTES);
                else if (!f->status)
                        memcpy(wire_rank_vector(payload, EMBED_DIM, done), res.data, EMBEDDING_BYTES);
                serve_result_free(&res);
                done++;
        }
}

/* {"results":[{"index":1,"score":0.530000},...]} */
static int render_hits(serve_response *resp, const struct rank_hit *hits, size_t n) {
        int r;

        r = serve_response_add_header(resp, "Content-Type", "application/json");
        if (r < 0)
                return r;
        r = serve_response_write(resp, "{\"results\":[", strlen("{\"results\":["));
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = serve_response_printf(resp, "%s{\"index\":%" PRIu32 ",\"score\":%.6f}", i ? "," : "",
                                          hits[i].index, (double) hits[i].score);
        if (r < 0)
                return r;
        return serve_response_write(resp, "]}\n", 3);
}

static int pipeline_call(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        _cleanup_cjson_ cJSON *root = NULL;
        _cleanup_free_ void *payload = NULL;
        _cleanup_free_ struct rank_hit *hits = NULL;
        struct search_request s = {};
        struct call_failure f = {};
        struct serve_result res = {};
        char err[SEARCH_MAX_ERROR];
        size_t body_len, size, n_hits, max_hits;
        const char *body;
        int r;

        if (strcmp(serve_request_method(req), "POST") != 0) {
                r = serve_response_add_header(resp, "Allow", "POST");
                if (r < 0)
                        return r;
                return reply_error(resp, 405, "method %s not allowed: POST a JSON search request",
                                   serve_request_method(req));
        }

        body = serve_request_body(req, &body_len);
        root = cJSON_ParseWithLength(body, body_len);
        if (!root)
                return reply_error(resp, 400, "the body is not valid JSON");
        r = search_request_parse(root, &s, err, sizeof err);
        if (r < 0)
                return r;
        if (r > 0)
                return reply_error(resp, r, "%s", err);

        /* The ranking request, filled with vectors as the Embedder answers. */
        r = wire_rank_request_size(EMBED_DIM, s.n_docs, &size);
        if (r < 0)
                goto finish;
        payload = malloc(size);
        max_hits = MIN(s.top_k, s.n_docs);
        hits = malloc(MAX(max_hits, (size_t) 1) * sizeof *hits);
        if (!payload || !hits) {
                r = -ENOMEM;
                goto finish;
        }
        wire_rank_pack_header(payload, EMBED_DIM, (uint32_t) s.n_docs, (uint32_t) s.top_k);

        embed_all(ctx, &s, payload, &f);
        if (f.status) {
                r = reply_error(resp, f.status, "%s", f.message);
                goto finish;
        }

        r = serve_call(ctx, "Ranker", "rank", payload, size, &res);
        if (r < 0)
                call_failed(&f, "Ranker", "rank", r, &res);
        else if (wire_hits_parse(res.data, res.len, max_hits, hits, &n_hits) < 0)
                fail(&f, 502, "Ranker.rank: a malformed answer of %zu bytes", res.len);
        else
                for (size_t i = 0; i < n_hits; i++)
                        if (hits[i].index >= s.n_docs)
                                fail(&f, 502, "Ranker.rank: a hit for document %" PRIu32 " of %zu",
                                     hits[i].index, s.n_docs);
        serve_result_free(&res);
        if (f.status)
                r = reply_error(resp, f.status, "%s", f.message);
        else
                r = render_hits(resp, hits, n_hits);

finish:
        search_request_done(&s);
        return r;
}

static const struct serve_handler pipeline_handlers[] = {
        { "__call__", pipeline_call },
        { NULL, NULL },
};

static const char *const pipeline_binds[] = { "Embedder", "Ranker", NULL };

static const struct serve_deployment Pipeline = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Pipeline",
        .handlers = pipeline_handlers,
        .binds = pipeline_binds,
        .defaults = { .num_replicas = 3 },
};

/* ---- Embedder --------------------------------------------------------------------------------- */

/* One text into one response: EMBED_DIM float32, little-endian (wire_store_f32 is a memcpy on
 * the little-endian hosts this runs on). */
static int embed_one(const serve_request *req, serve_response *resp) {
        unsigned char out[EMBEDDING_BYTES];
        float v[EMBED_DIM];
        size_t len;
        const char *text = serve_request_body(req, &len);

        if (len > SEARCH_MAX_TEXT)
                return reply_text_error(resp, 413, "a text of %zu bytes: at most %d", len, SEARCH_MAX_TEXT);
        embed_text(text, len, v);
        wire_store_f32(out, v, EMBED_DIM);
        (void) serve_response_add_header(resp, "Content-Type", "application/octet-stream");
        return serve_response_write(resp, out, sizeof out);
}

/* Each request of the batch is answered on its own: one that fails (out of memory) does not
 * turn the others' answers into 500s. Logs nothing: it runs for every text of every search. */
static int embed_batch(serve_ctx *ctx, size_t n, const serve_request *const *reqs, serve_response *const *resps) {
        for (size_t i = 0; i < n; i++)
                if (embed_one(reqs[i], resps[i]) < 0)
                        serve_response_set_status(resps[i], 500);
        return 0;
}

/* The same, unbatched, for a direct call (or HTTP, were Embedder an ingress). */
static int embed_call(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        return embed_one(req, resp);
}

static const struct serve_handler embedder_handlers[] = {
        { "__call__", embed_call },
        { NULL, NULL },
};

static const struct serve_batch_handler embedder_batched[] = {
        { "embed", embed_batch, .max_batch_size = 16, .batch_wait_timeout_s = 0.002 },
        { NULL },
};

static const struct serve_deployment Embedder = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Embedder",
        .handlers = embedder_handlers,
        .batched = embedder_batched,
        .defaults = { .num_replicas = 2, .max_ongoing_requests = 16 },
};

/* ---- Ranker ----------------------------------------------------------------------------------- */

struct ranker {
        bool gpu;                       /* decided once, in init */
        atomic_bool gpu_failure_logged; /* a failing GPU is logged once, not per request */
        char gpu_name[256];
};

static int ranker_init(serve_ctx *ctx, const char *args_json, const char *user_config_json) {
        struct ranker *rk = calloc(1, sizeof *rk);

        if (!rk)
                return -ENOMEM;
#ifdef HAVE_CUDA
        rk->gpu = rank_cuda_init(rk->gpu_name, sizeof rk->gpu_name) == 0;
#endif
        if (rk->gpu)
                serve_log(ctx, LOG_INFO, "Ranker: using GPU %s", rk->gpu_name);
        else
#ifdef HAVE_CUDA
                serve_log(ctx, LOG_INFO, "Ranker: no GPU visible, ranking on the CPU");
#else
                serve_log(ctx, LOG_INFO, "Ranker: no GPU visible, ranking on the CPU (built without CUDA)");
#endif
        serve_ctx_set_state(ctx, rk);
        return 0;
}

static void ranker_destroy(serve_ctx *ctx) {
        free(serve_ctx_state(ctx));
}

static size_t rank_hits(serve_ctx *ctx, struct ranker *rk, const float *vec, const struct wire_rank_request *rq,
                        struct rank_hit *hits) {
#ifdef HAVE_CUDA
        if (rk->gpu) {
                size_t n;
                int r = rank_cuda(vec, vec + rq->dim, rq->n_docs, rq->dim, rq->top_k, hits, &n);
                if (r >= 0)
                        return n;
                if (!atomic_exchange(&rk->gpu_failure_logged, true))
                        serve_log(ctx, LOG_WARNING, "Ranker: ranking on GPU %s failed (%s), ranking on the CPU "
                                  "instead (logged once)", rk->gpu_name, strerror(-r));
        }
#endif
        return rank_cpu(vec, vec + rq->dim, rq->n_docs, rq->dim, rq->top_k, hits);
}

static int ranker_rank(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        struct ranker *rk = serve_ctx_state(ctx);
        _cleanup_free_ float *vec = NULL;
        _cleanup_free_ struct rank_hit *hits = NULL;
        _cleanup_free_ void *out = NULL;
        struct wire_rank_request rq;
        size_t len, n_floats, n;
        const void *body = serve_request_body(req, &len);
        int r;

        r = wire_rank_parse(body, len, EMBED_DIM, &rq);
        switch (r) {
        case 0:
                break;
        case -EINVAL:
                return reply_text_error(resp, 400, "bad request: dim must be %d and top_k >= 1", EMBED_DIM);
        case -E2BIG:
                return reply_text_error(resp, 400, "bad request: more than %d documents", WIRE_RANK_MAX_DOCS);
        case -EDOM:
                return reply_text_error(resp, 400, "bad request: a vector holds a NaN or an infinity");
        default:
                return reply_text_error(resp, 400, "bad request: not a ranking request (%zu bytes)", len);
        }

        /* The body may be unaligned for floats: copy (at most 4 MiB, as parse checked). */
        n_floats = ((size_t) rq.n_docs + 1) * rq.dim;
        vec = malloc(n_floats * sizeof *vec);
        hits = malloc(MAX(MIN((size_t) rq.top_k, (size_t) rq.n_docs), (size_t) 1) * sizeof *hits);
        if (!vec || !hits)
                return -ENOMEM;
        wire_load_f32(vec, rq.vectors, n_floats);

        n = rank_hits(ctx, rk, vec, &rq, hits);

        out = malloc(wire_hits_size(n));
        if (!out)
                return -ENOMEM;
        wire_hits_pack(out, hits, n);
        (void) serve_response_add_header(resp, "Content-Type", "application/octet-stream");
        return serve_response_write(resp, out, wire_hits_size(n));
}

static const struct serve_handler ranker_handlers[] = {
        { "rank", ranker_rank },
        { NULL, NULL },
};

static const struct serve_deployment Ranker = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Ranker",
        .init = ranker_init,
        .destroy = ranker_destroy,
        .handlers = ranker_handlers,
        .defaults = { .num_replicas = 1 },
};

SERVE_APPLICATION(app, &Pipeline, &Pipeline, &Embedder, &Ranker);
