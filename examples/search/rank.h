/* Ranking documents by cosine similarity to a query: the CPU path, and the top-k selection the
 * CPU and CUDA paths share (so both order hits the same way). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct rank_hit {
        uint32_t index; /* of the document */
        float score;    /* cosine similarity */
};

/* Hit order: score descending, then index ascending. A total order: NaN scores come after
 * every number (among themselves by index), -0 and +0 are equal. */
bool rank_hit_before(struct rank_hit a, struct rank_hit b);

/* The sum of a[i] * b[i], accumulated in double (no overflow for any finite float input). */
double rank_dot(const float *a, const float *b, size_t dim);

/* Cosine similarity from the dot product and both squared norms: 0 when either vector is
 * zero. Both paths compute the score with this, from their own sums. */
float rank_cosine(double dot, double qq, double dd);

/* Top-k selection in one pass: a bounded heap in the caller's array, the worst kept hit at its
 * root, so that n pushes cost O(n log k) and nothing is allocated. */
struct rank_topk {
        struct rank_hit *heap;
        size_t cap, n;
};
void rank_topk_init(struct rank_topk *t, struct rank_hit *out, size_t top_k);
void rank_topk_push(struct rank_topk *t, uint32_t index, float score);
/* Sorts the kept hits into hit order in the array given to init; returns how many there are
 * (min(top_k, pushes)). */
size_t rank_topk_finish(struct rank_topk *t);

/* The top_k documents (n_docs vectors of dim floats, one after the other) by cosine
 * similarity to query, in hit order, into out (room for min(top_k, n_docs) hits). Returns the
 * number of hits: min(top_k, n_docs). n_docs must fit in uint32_t. */
size_t rank_cpu(const float *query, const float *docs, size_t n_docs, size_t dim, size_t top_k,
                struct rank_hit *out);

#ifdef __cplusplus
}
#endif
