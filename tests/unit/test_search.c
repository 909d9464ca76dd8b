/* Unit tests for the search example's parts: the embedding (deterministic, normalised, similar
 * texts closer), the CPU ranker against a plain reference (every cosine in double, qsort) on
 * random data with ties, the wire format (round trips, and every malformed payload refused),
 * and the GPU ranker against the CPU's when this build has CUDA and a GPU is visible. */

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macros.h"
#include "embed.h"
#include "rank.h"
#include "wire.h"
#ifdef HAVE_CUDA
#include "rank_cuda.h"
#endif
#include "tap.h"

static uint64_t rng_state = 0x5eed5eed12345678ull;

static uint64_t rng(void) {
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float rng_float(void) {
        return (float) ((double) (rng() >> 11) / (double) (1ull << 52) - 1.0);
}

static double norm(const float *v, size_t dim) {
        double s = 0;
        for (size_t i = 0; i < dim; i++)
                s += (double) v[i] * v[i];
        return sqrt(s);
}

static double cosine(const float *a, const float *b, size_t dim) {
        double dot = 0, na = norm(a, dim), nb = norm(b, dim);
        for (size_t i = 0; i < dim; i++)
                dot += (double) a[i] * b[i];
        return na == 0 || nb == 0 ? 0 : dot / (na * nb);
}

static void embed_str(const char *s, float out[EMBED_DIM]) {
        embed_text(s, strlen(s), out);
}

/* ---------------------------------------------------------------------------------------- */
/* the embedding */

static void test_fnv(void) {
        /* The reference values of the FNV-1a 64-bit test suite. */
        ok(embed_fnv1a64("", 0) == 0xcbf29ce484222325ull, "FNV-1a of \"\" is the offset basis");
        ok(embed_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cull, "FNV-1a of \"a\"");
        ok(embed_fnv1a64("foobar", 6) == 0x85944171f73967e8ull, "FNV-1a of \"foobar\"");
}

/* The embedding is a specification, not an implementation: these buckets and values were
 * computed from its description (embed.h) by an independent script. A change here changes
 * every vector ever stored. */
static void test_embed_golden(void) {
        static const struct { unsigned bucket; float value; } cat[] = {
                { 132, 0.377964f }, { 134, -0.755929f }, { 152, -0.377964f }, { 168, 0.377964f },
        };
        float v[EMBED_DIM];
        unsigned nonzero = 0;
        bool same = true;

        embed_str("cat", v);
        for (size_t i = 0; i < EMBED_DIM; i++)
                nonzero += v[i] != 0;
        for (size_t i = 0; i < ELEMENTSOF(cat); i++)
                same = same && fabsf(v[cat[i].bucket] - cat[i].value) < 1e-6f;
        ok(same && nonzero == ELEMENTSOF(cat),
           "\"cat\" as specified: the word -2 in bucket 134, \"^ca\" +1 in 132, \"cat\" -1 in 152, \"at$\" +1 in 168");
}

static bool all_zero(const float *v) {
        for (size_t i = 0; i < EMBED_DIM; i++)
                if (v[i] != 0)
                        return false;
        return true;
}

static void test_embed(void) {
        static const char *const texts[] = {
                "a", "cat", "The quick brown fox jumps over the lazy dog",
                "x1 y2 z3 0 9", "Ünïcödé words, and ASCII ones", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        };
        static const char *const empties[] = { "", "   ", "!!! ??? ...", "\xc3\xa9\xc3\xa8 \xe2\x82\xac" };
        float a[EMBED_DIM], b[EMBED_DIM], q[EMBED_DIM];

        embed_str("The quick brown fox", a);
        embed_str("The quick brown fox", b);
        ok(memcmp(a, b, sizeof a) == 0, "the same text embeds to the same bits");

        for (size_t i = 0; i < ELEMENTSOF(texts); i++) {
                embed_str(texts[i], a);
                double n = norm(a, EMBED_DIM);
                ok(fabs(n - 1) <= 1e-5, "\"%s\" embeds with norm 1 (%.8f)", texts[i], n);
        }
        for (size_t i = 0; i < ELEMENTSOF(empties); i++) {
                embed_str(empties[i], a);
                ok(all_zero(a), "\"%s\" has no token: the zero vector", empties[i]);
        }
        embed_text(NULL, 0, a);
        ok(all_zero(a), "no text at all: the zero vector");

        embed_str("Cat SLEEPS", a);
        embed_str("cat sleeps", b);
        ok(memcmp(a, b, sizeof a) == 0, "ASCII case does not matter");
        embed_str("cat,sleeps!", a);
        embed_str("  cat   sleeps", b);
        ok(memcmp(a, b, sizeof a) == 0, "only tokens matter, not what separates them");
        embed_text("cat dog", 3, a);
        embed_str("cat", b);
        ok(memcmp(a, b, sizeof a) == 0, "only len bytes are read");
        embed_str("cat dog", a);
        embed_str("dog cat", b);
        ok(memcmp(a, b, sizeof a) == 0, "a bag of words: order does not matter");
        embed_str("cats", b);
        embed_str("cat", q);
        embed_str("dog", a);
        ok(memcmp(q, b, sizeof q) != 0 && cosine(q, b, EMBED_DIM) > cosine(q, a, EMBED_DIM) + 0.1,
           "\"cats\" differs from \"cat\" but shares its trigrams: closer to it (%.3f) than \"dog\" (%.3f)",
           cosine(q, b, EMBED_DIM), cosine(q, a, EMBED_DIM));

        embed_str("cat", q);
        embed_str("a cat sleeps", a);
        embed_str("a dog barks", b);
        double ca = cosine(q, a, EMBED_DIM), cb = cosine(q, b, EMBED_DIM);
        ok(ca > cb + 0.2, "query \"cat\": \"a cat sleeps\" (%.3f) beats \"a dog barks\" (%.3f)", ca, cb);

        float docs[3 * EMBED_DIM];
        struct rank_hit hits[3];
        embed_str("a dog barks", docs);
        embed_str("the weather is nice", docs + EMBED_DIM);
        embed_str("my cat sleeps all day, cats do", docs + 2 * EMBED_DIM);
        size_t n = rank_cpu(q, docs, 3, EMBED_DIM, 3, hits);
        ok(n == 3 && hits[0].index == 2, "ranking for \"cat\" puts the document about cats first (hit 0: %" PRIu32 ")",
           hits[0].index);

        /* The longest text Pipeline accepts, one token of it, then many tokens. */
        char *big = malloc(64 * 1024);
        if (!big)
                abort();
        memset(big, 'z', 64 * 1024);
        embed_text(big, 64 * 1024, a);
        ok(fabs(norm(a, EMBED_DIM) - 1) <= 1e-5, "a 64 KiB token embeds with norm 1");
        for (size_t i = 0; i < 64 * 1024; i++)
                big[i] = i % 7 == 6 ? ' ' : (char) ('a' + rng() % 26);
        embed_text(big, 64 * 1024, a);
        ok(fabs(norm(a, EMBED_DIM) - 1) <= 1e-5, "64 KiB of words embed with norm 1");
        free(big);
}

/* ---------------------------------------------------------------------------------------- */
/* the CPU ranker */

struct ref_hit {
        uint32_t index;
        double score;
};

static int ref_cmp(const void *a, const void *b) {
        const struct ref_hit *x = a, *y = b;
        if (x->score != y->score)
                return x->score > y->score ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

/* Random documents with ties: exact copies and power-of-two multiples of earlier ones (the same
 * cosine to the last bit) and zero vectors. */
static void random_docs(float *docs, size_t n, size_t dim) {
        for (size_t i = 0; i < n; i++) {
                float *d = docs + i * dim;
                unsigned kind = (unsigned) (rng() % 8);
                if (i > 0 && kind == 0)
                        memcpy(d, docs + (rng() % i) * dim, dim * sizeof *d);
                else if (i > 0 && kind == 1) {
                        const float *src = docs + (rng() % i) * dim;
                        for (size_t j = 0; j < dim; j++)
                                d[j] = src[j] * 4;
                } else if (kind == 2 && rng() % 4 == 0)
                        memset(d, 0, dim * sizeof *d);
                else
                        for (size_t j = 0; j < dim; j++)
                                d[j] = rng_float();
        }
}

/* Whether hits (n of them) are what the reference says: the same count, within 1e-6 of the
 * reference's scores, and the same documents in the same order, except that documents whose
 * exact scores differ by less than float rounding may come in either order. */
static bool matches_reference(const float *query, const float *docs, size_t n_docs, size_t dim, size_t top_k,
                              const struct rank_hit *hits, size_t n, char *why, size_t why_cap) {
        struct ref_hit *ref = malloc((n_docs + 1) * sizeof *ref);
        size_t want = top_k < n_docs ? top_k : n_docs;
        bool good = true;

        if (!ref)
                abort();
        for (size_t i = 0; i < n_docs; i++)
                ref[i] = (struct ref_hit) { (uint32_t) i, cosine(query, docs + i * dim, dim) };
        qsort(ref, n_docs, sizeof *ref, ref_cmp);

        if (n != want) {
                snprintf(why, why_cap, "%zu hits, want %zu", n, want);
                good = false;
        }
        for (size_t i = 0; good && i < n; i++) {
                double exact = cosine(query, docs + (size_t) hits[i].index * dim, dim);
                if (hits[i].index >= n_docs || fabs(hits[i].score - ref[i].score) > 1e-6 ||
                    (hits[i].index != ref[i].index && fabs(exact - ref[i].score) > 1e-6)) {
                        snprintf(why, why_cap, "hit %zu: document %" PRIu32 " score %.9f, want document %" PRIu32
                                 " score %.9f", i, hits[i].index, (double) hits[i].score, ref[i].index, ref[i].score);
                        good = false;
                }
                if (good && i > 0 && !rank_hit_before(hits[i - 1], hits[i])) {
                        snprintf(why, why_cap, "hits %zu and %zu out of order", i - 1, i);
                        good = false;
                }
        }
        free(ref);
        return good;
}

static void test_rank_cpu(void) {
        static const size_t dims[] = { 1, 3, 256 };
        static const size_t ns[] = { 0, 1, 2, 5, 17, 100, 1024 };
        size_t runs = 0, failed = 0;
        char why[256] = "";

        for (size_t di = 0; di < ELEMENTSOF(dims); di++)
                for (size_t ni = 0; ni < ELEMENTSOF(ns); ni++) {
                        size_t dim = dims[di], n = ns[ni];
                        const size_t ks[] = { 1, 2, 5, 10, n, n + 1, 2000 };
                        float *docs = malloc((n + 1) * dim * sizeof *docs), query[256];
                        struct rank_hit *hits = malloc(2000 * sizeof *hits);
                        if (!docs || !hits)
                                abort();
                        for (int zero_query = 0; zero_query <= 1; zero_query++) {
                                random_docs(docs, n, dim);
                                for (size_t j = 0; j < dim; j++)
                                        query[j] = zero_query ? 0 : rng_float();
                                for (size_t ki = 0; ki < ELEMENTSOF(ks); ki++) {
                                        if (ks[ki] == 0)
                                                continue;
                                        size_t got = rank_cpu(query, docs, n, dim, ks[ki], hits);
                                        runs++;
                                        if (!matches_reference(query, docs, n, dim, ks[ki], hits, got, why,
                                                               sizeof why) && failed++ == 0)
                                                printf("# dim %zu, %zu docs, top_k %zu, %s query: %s\n", dim, n,
                                                       ks[ki], zero_query ? "zero" : "random", why);
                                }
                        }
                        free(docs);
                        free(hits);
                }
        ok(failed == 0, "rank_cpu equals the reference in %zu of %zu runs (n 0..1024, top_k 1..2000, ties)",
           runs - failed, runs);

        float q[2] = { 1, 0 }, d[2] = { 1, 0 };
        struct rank_hit h[1];
        is_int(rank_cpu(q, d, 1, 2, 0, h), 0, "top_k 0: no hits");
        is_int(rank_cpu(q, d, 0, 2, 5, h), 0, "no documents: no hits");
}

static void test_hit_order(void) {
        struct rank_hit a = { 3, 0.5f }, b = { 1, 0.5f }, c = { 0, NAN }, z = { 2, -0.0f }, pz = { 1, 0.0f };
        struct rank_hit out[4];
        struct rank_topk t;

        ok(rank_hit_before(b, a) && !rank_hit_before(a, b), "equal scores: the lower index first");
        ok(rank_hit_before(z, c) && !rank_hit_before(c, z), "NaN after every number");
        ok(rank_hit_before(pz, z) && !rank_hit_before(z, pz), "-0 and +0 tie");
        ok(!rank_hit_before(a, a), "a hit is not before itself");

        rank_topk_init(&t, out, 3);
        rank_topk_push(&t, 0, NAN);
        rank_topk_push(&t, 1, -1);
        rank_topk_push(&t, 2, 0.25f);
        rank_topk_push(&t, 3, NAN);
        rank_topk_push(&t, 4, 0.25f);
        size_t n = rank_topk_finish(&t);
        ok(n == 3 && out[0].index == 2 && out[1].index == 4 && out[2].index == 1,
           "top 3 of NaN, -1, 0.25, NaN, 0.25: documents 2, 4, 1");
}

/* ---------------------------------------------------------------------------------------- */
/* the wire format */

/* A packed request with n_docs random vectors of dim floats (dim is written as given). */
static unsigned char *pack_request(uint32_t dim, uint32_t n_docs, uint32_t top_k, float *vec, size_t *ret_len) {
        size_t len = WIRE_RANK_HEADER_SIZE + ((size_t) n_docs + 1) * dim * 4;
        unsigned char *buf = malloc(len);

        if (!buf)
                abort();
        wire_rank_pack_header(buf, dim, n_docs, top_k);
        for (size_t i = 0; i <= n_docs; i++) {
                float *v = vec + i * dim;
                for (size_t j = 0; j < dim; j++)
                        v[j] = rng_float();
                wire_store_f32(wire_rank_vector(buf, dim, i), v, dim);
        }
        *ret_len = len;
        return buf;
}

static void test_wire_request(void) {
        struct wire_rank_request rq;
        size_t len, size;
        float *vec = malloc((WIRE_RANK_MAX_DOCS + 2) * (size_t) EMBED_DIM * sizeof *vec);
        float *back = malloc((WIRE_RANK_MAX_DOCS + 2) * (size_t) EMBED_DIM * sizeof *back);
        unsigned char *buf;
        int r;

        if (!vec || !back)
                abort();

        buf = pack_request(EMBED_DIM, 3, 2, vec, &len);
        ok(memcmp(buf, "RNK1", 4) == 0, "a request starts with the bytes \"RNK1\"");
        ok(wire_rank_request_size(EMBED_DIM, 3, &size) == 0 && size == len, "request size: 16 + 4 vectors");
        r = wire_rank_parse(buf, len, EMBED_DIM, &rq);
        is_int(r, 0, "a packed request parses");
        ok(rq.dim == EMBED_DIM && rq.n_docs == 3 && rq.top_k == 2, "its header round-trips");
        wire_load_f32(back, rq.vectors, 4 * EMBED_DIM);
        ok(memcmp(back, vec, 4 * EMBED_DIM * sizeof *vec) == 0, "its vectors round-trip bit for bit");
        /* An unaligned copy: vectors are read with wire_load_f32, never through a float pointer. */
        unsigned char *odd = malloc(len + 1);
        if (!odd)
                abort();
        memcpy(odd + 1, buf, len);
        ok(wire_rank_parse(odd + 1, len, EMBED_DIM, &rq) == 0, "a request at an odd address parses");
        wire_load_f32(back, rq.vectors, 4 * EMBED_DIM);
        ok(memcmp(back, vec, 4 * EMBED_DIM * sizeof *vec) == 0, "and reads back the same vectors");
        free(odd);

        bool prefixes = true;
        for (size_t l = 0; l < len; l++)
                if (wire_rank_parse(buf, l, EMBED_DIM, &rq) >= 0)
                        prefixes = false;
        ok(prefixes, "every truncated prefix is refused");
        unsigned char *longer = malloc(len + 1);
        if (!longer)
                abort();
        memcpy(longer, buf, len);
        longer[len] = 0;
        is_int(wire_rank_parse(longer, len + 1, EMBED_DIM, &rq), -EBADMSG, "one byte too many is refused");
        free(longer);

        buf[0] = 'X';
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EBADMSG, "a wrong magic is refused");
        wire_rank_pack_header(buf, EMBED_DIM, 3, 0);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EINVAL, "top_k 0 is refused");
        wire_rank_pack_header(buf, EMBED_DIM - 1, 3, 2);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EINVAL, "another dim is refused");
        wire_rank_pack_header(buf, UINT32_MAX, 3, 2);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EINVAL, "dim 2^32-1 is refused");
        wire_rank_pack_header(buf, EMBED_DIM, UINT32_MAX, 2);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -E2BIG, "n_docs 2^32-1 is refused (no overflow)");
        wire_rank_pack_header(buf, EMBED_DIM, UINT32_MAX / EMBED_DIM / 4, 2);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -E2BIG, "an n_docs whose size wraps in 32 bits is refused");
        wire_rank_pack_header(buf, EMBED_DIM, 3, 2);
        float bad = NAN;
        wire_store_f32((unsigned char *) wire_rank_vector(buf, EMBED_DIM, 2) + 4 * 17, &bad, 1);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EDOM, "a NaN in a vector is refused");
        bad = -INFINITY;
        wire_store_f32((unsigned char *) wire_rank_vector(buf, EMBED_DIM, 2) + 4 * 17, &bad, 1);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -EDOM, "an infinity in a vector is refused");
        free(buf);

        buf = pack_request(EMBED_DIM, 0, 1, vec, &len);
        ok(wire_rank_parse(buf, len, EMBED_DIM, &rq) == 0 && rq.n_docs == 0 && len == 16 + EMBED_DIM * 4,
           "a request with no documents (the query only) parses");
        free(buf);

        buf = pack_request(EMBED_DIM, WIRE_RANK_MAX_DOCS, 10, vec, &len);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), 0, "%d documents (the limit) parse", WIRE_RANK_MAX_DOCS);
        free(buf);
        buf = pack_request(EMBED_DIM, WIRE_RANK_MAX_DOCS + 1, 10, vec, &len);
        is_int(wire_rank_parse(buf, len, EMBED_DIM, &rq), -E2BIG, "%d documents are refused", WIRE_RANK_MAX_DOCS + 1);
        free(buf);

        is_int(wire_rank_request_size(EMBED_DIM, WIRE_RANK_MAX_DOCS + 1, &size), -E2BIG, "no size past the doc limit");
        is_int(wire_rank_request_size(SIZE_MAX, 1, &size), -E2BIG, "no size for an absurd dim");
        is_int(wire_rank_request_size(1, SIZE_MAX, &size), -E2BIG, "no size for an absurd n_docs");
        free(vec);
        free(back);
}

static void test_wire_hits(void) {
        struct rank_hit hits[5] = { { 4, 0.75f }, { 0, 0.5f }, { 2, -0.0f }, { 1, -0.25f }, { 3, -1 } }, back[5];
        unsigned char buf[4 + 5 * 8];
        size_t n = 99;

        ok(wire_hits_size(5) == sizeof buf, "5 hits take 44 bytes");
        wire_hits_pack(buf, hits, 5);
        ok(wire_hits_parse(buf, sizeof buf, 5, back, &n) == 0 && n == 5 && memcmp(back, hits, sizeof hits) == 0,
           "hits round-trip");
        is_int(wire_hits_parse(buf, sizeof buf, 4, back, &n), -EBADMSG, "more hits than asked for are refused");
        is_int(wire_hits_parse(buf, sizeof buf - 1, 5, back, &n), -EBADMSG, "a truncated answer is refused");
        is_int(wire_hits_parse(buf, 3, 5, back, &n), -EBADMSG, "an answer shorter than its count is refused");
        wire_hits_pack(buf, hits, 0);
        ok(wire_hits_parse(buf, 4, 5, back, &n) == 0 && n == 0, "no hits round-trip");
        is_int(wire_hits_parse(buf, 12, 5, back, &n), -EBADMSG, "bytes past the hits are refused");
        buf[0] = buf[1] = buf[2] = buf[3] = 0xff;
        is_int(wire_hits_parse(buf, sizeof buf, SIZE_MAX, back, &n), -EBADMSG,
               "a count of 2^32-1 is refused (no overflow)");
}

/* ---------------------------------------------------------------------------------------- */
/* the GPU ranker */

static void test_rank_cuda(void) {
#ifdef HAVE_CUDA
        static const size_t ns[] = { 1, 2, 16, 100, 1024 };
        char name[256];
        size_t runs = 0, failed = 0;

        if (rank_cuda_init(name, sizeof name) < 0) {
                printf("# GPU comparison ran 0 times: built with CUDA, but no GPU is visible\n");
                return;
        }
        printf("# GPU: %s\n", name);
        for (size_t ni = 0; ni < ELEMENTSOF(ns); ni++) {
                size_t n = ns[ni], dim = EMBED_DIM;
                const size_t ks[] = { 1, 10, n, n + 1 };
                float *docs = malloc(n * dim * sizeof *docs), query[EMBED_DIM];
                struct rank_hit *cpu = malloc((n + 1) * sizeof *cpu), *gpu = malloc((n + 1) * sizeof *gpu);
                if (!docs || !cpu || !gpu)
                        abort();
                random_docs(docs, n, dim);
                for (size_t j = 0; j < dim; j++)
                        query[j] = rng_float();
                for (size_t ki = 0; ki < ELEMENTSOF(ks); ki++) {
                        size_t n_cpu = rank_cpu(query, docs, n, dim, ks[ki], cpu), n_gpu = 0;
                        int r = rank_cuda(query, docs, n, dim, ks[ki], gpu, &n_gpu);
                        bool same = r == 0 && n_gpu == n_cpu;
                        for (size_t i = 0; same && i < n_cpu; i++)
                                same = gpu[i].index == cpu[i].index && fabsf(gpu[i].score - cpu[i].score) <= 1e-4f;
                        runs++;
                        if (!same && failed++ == 0)
                                printf("# %zu docs, top_k %zu: rank_cuda returned %d, %zu hits (CPU: %zu)\n", n, ks[ki],
                                       r, n_gpu, n_cpu);
                }
                free(docs);
                free(cpu);
                free(gpu);
        }
        ok(failed == 0, "rank_cuda equals rank_cpu in %zu of %zu runs (indices equal, scores within 1e-4)",
           runs - failed, runs);
#else
        printf("# GPU comparison ran 0 times: this build has no CUDA (--with-cuda=no, or configure found no nvcc)\n");
#endif
}

int main(void) {
        test_fnv();
        test_embed_golden();
        test_embed();
        test_rank_cpu();
        test_hit_order();
        test_wire_request();
        test_wire_hits();
        test_rank_cuda();
        return tap_done();
}
