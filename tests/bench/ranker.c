/* Ranker benchmark (make tests/bench/ranker): how fast the search example ranks documents,
 * dim 256, top_k 10, for 16 documents (a small search) and 1024 (the most Pipeline accepts).
 * The CPU ranker always; the GPU ranker when this build has CUDA and a GPU is visible, with
 * its agreement with the CPU (indices equal, largest score difference). Prints numbers;
 * asserts nothing. RANKER_BENCH_SECONDS: how long each measurement runs (default 1). */

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "embed.h"
#include "rank.h"
#ifdef HAVE_CUDA
#include "rank_cuda.h"
#endif

#define DIM EMBED_DIM
#define TOP_K 10

typedef int (*ranker_fn)(const float *query, const float *docs, size_t n_docs, struct rank_hit *out, size_t *ret_n);

static int cpu(const float *query, const float *docs, size_t n_docs, struct rank_hit *out, size_t *ret_n) {
        *ret_n = rank_cpu(query, docs, n_docs, DIM, TOP_K, out);
        return 0;
}

#ifdef HAVE_CUDA
static int gpu(const float *query, const float *docs, size_t n_docs, struct rank_hit *out, size_t *ret_n) {
        return rank_cuda(query, docs, n_docs, DIM, TOP_K, out, ret_n);
}
#endif

static double now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

/* Unit vectors, as the Embedder makes them. */
static void random_unit(float *v, unsigned *seed) {
        double s = 0;
        for (size_t i = 0; i < DIM; i++) {
                v[i] = (float) rand_r(seed) / (float) RAND_MAX - 0.5f;
                s += (double) v[i] * v[i];
        }
        for (size_t i = 0; i < DIM; i++)
                v[i] = (float) (v[i] / sqrt(s));
}

/* Runs fn for about seconds; prints queries/s and documents/s. Returns false when it failed. */
static bool measure(const char *name, ranker_fn fn, const float *query, const float *docs, size_t n_docs,
                    double seconds) {
        struct rank_hit hits[TOP_K];
        size_t n, queries = 0;
        double start = now(), elapsed;

        do {
                for (int i = 0; i < 16; i++, queries++)
                        if (fn(query, docs, n_docs, hits, &n) < 0) {
                                printf("%-4s %5zu docs: failed\n", name, n_docs);
                                return false;
                        }
                elapsed = now() - start;
        } while (elapsed < seconds);
        printf("%-4s %5zu docs: %10.0f queries/s %12.0f docs/s  (%.1f us/query)\n", name, n_docs,
               (double) queries / elapsed, (double) (queries * n_docs) / elapsed, elapsed / (double) queries * 1e6);
        return true;
}

int main(void) {
        static const size_t sizes[] = { 16, 1024 };
        const char *env = getenv("RANKER_BENCH_SECONDS");
        double seconds = env ? atof(env) : 1.0;
        float *docs = malloc(1024 * DIM * sizeof *docs), query[DIM];
        unsigned seed = 42;

        if (!docs)
                return 1;
        if (seconds <= 0)
                seconds = 1.0;
        random_unit(query, &seed);
        for (size_t i = 0; i < 1024; i++)
                random_unit(docs + i * DIM, &seed);

        printf("ranker: dim %d, top_k %d\n", DIM, TOP_K);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
                measure("cpu", cpu, query, docs, sizes[i], seconds);

#ifdef HAVE_CUDA
        char name[256];
        if (rank_cuda_init(name, sizeof name) < 0) {
                printf("gpu: none visible\n");
                free(docs);
                return 0;
        }
        printf("gpu: %s\n", name);
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
                struct rank_hit c[TOP_K], g[TOP_K];
                size_t nc, ng = 0;
                double max_diff = 0;
                bool same;

                cpu(query, docs, sizes[i], c, &nc);
                same = gpu(query, docs, sizes[i], g, &ng) == 0 && ng == nc;
                for (size_t j = 0; same && j < nc; j++) {
                        same = c[j].index == g[j].index;
                        max_diff = fmax(max_diff, fabs((double) c[j].score - g[j].score));
                }
                if (!measure("gpu", gpu, query, docs, sizes[i], seconds))
                        continue;
                printf("     %5zu docs: indices %s the CPU's, max score difference %.3g\n", sizes[i],
                       same ? "equal" : "DIFFER from", max_diff);
        }
#else
        printf("gpu: none visible (this build has no CUDA)\n");
#endif
        free(docs);
        return 0;
}
