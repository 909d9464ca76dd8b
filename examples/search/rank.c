/* The CPU ranker. Sums run in double over four independent accumulators: exact enough that
 * the CPU and GPU agree to far below the 1e-4 the tests allow, and the four chains keep the
 * FPU busy (a single accumulator waits on each add's latency). */

#include <math.h>

#include "rank.h"

bool rank_hit_before(struct rank_hit a, struct rank_hit b) {
        bool a_nan = isnan(a.score), b_nan = isnan(b.score);

        if (a_nan != b_nan)
                return b_nan;
        if (!a_nan && a.score != b.score)
                return a.score > b.score;
        return a.index < b.index;
}

double rank_dot(const float *a, const float *b, size_t dim) {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = 0;

        for (; i + 4 <= dim; i += 4) {
                s0 += (double) a[i] * b[i];
                s1 += (double) a[i + 1] * b[i + 1];
                s2 += (double) a[i + 2] * b[i + 2];
                s3 += (double) a[i + 3] * b[i + 3];
        }
        for (; i < dim; i++)
                s0 += (double) a[i] * b[i];
        return (s0 + s1) + (s2 + s3);
}

float rank_cosine(double dot, double qq, double dd) {
        if (qq <= 0 || dd <= 0)
                return 0;
        return (float) (dot / (sqrt(qq) * sqrt(dd)));
}

void rank_topk_init(struct rank_topk *t, struct rank_hit *out, size_t top_k) {
        t->heap = out;
        t->cap = top_k;
        t->n = 0;
}

/* The heap keeps the worst hit at the root: a child never ranks after its parent. */
static void sift_down(struct rank_hit *h, size_t n, size_t i) {
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, worst = i;

                if (l < n && rank_hit_before(h[worst], h[l]))
                        worst = l;
                if (r < n && rank_hit_before(h[worst], h[r]))
                        worst = r;
                if (worst == i)
                        return;
                struct rank_hit tmp = h[i];
                h[i] = h[worst];
                h[worst] = tmp;
                i = worst;
        }
}

void rank_topk_push(struct rank_topk *t, uint32_t index, float score) {
        struct rank_hit hit = { index, score };

        if (t->n < t->cap) {
                size_t i = t->n++;
                while (i > 0) {
                        size_t parent = (i - 1) / 2;
                        if (!rank_hit_before(t->heap[parent], hit))
                                break;
                        t->heap[i] = t->heap[parent];
                        i = parent;
                }
                t->heap[i] = hit;
        } else if (t->cap > 0 && rank_hit_before(hit, t->heap[0])) {
                t->heap[0] = hit;
                sift_down(t->heap, t->n, 0);
        }
}

size_t rank_topk_finish(struct rank_topk *t) {
        /* Heap sort: moving the worst to the end each time leaves the best first. */
        for (size_t end = t->n; end > 1; end--) {
                struct rank_hit worst = t->heap[0];
                t->heap[0] = t->heap[end - 1];
                t->heap[end - 1] = worst;
                sift_down(t->heap, end - 1, 0);
        }
        return t->n;
}

/* q.d and d.d in one pass over d. */
static void dot_and_norm(const float *q, const float *d, size_t dim, double *ret_qd, double *ret_dd) {
        double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
        size_t i = 0;

        for (; i + 4 <= dim; i += 4) {
                a0 += (double) q[i] * d[i];
                a1 += (double) q[i + 1] * d[i + 1];
                a2 += (double) q[i + 2] * d[i + 2];
                a3 += (double) q[i + 3] * d[i + 3];
                b0 += (double) d[i] * d[i];
                b1 += (double) d[i + 1] * d[i + 1];
                b2 += (double) d[i + 2] * d[i + 2];
                b3 += (double) d[i + 3] * d[i + 3];
        }
        for (; i < dim; i++) {
                a0 += (double) q[i] * d[i];
                b0 += (double) d[i] * d[i];
        }
        *ret_qd = (a0 + a1) + (a2 + a3);
        *ret_dd = (b0 + b1) + (b2 + b3);
}

size_t rank_cpu(const float *query, const float *docs, size_t n_docs, size_t dim, size_t top_k,
                struct rank_hit *out) {
        struct rank_topk t;
        double qq = rank_dot(query, query, dim);

        rank_topk_init(&t, out, top_k);
        for (size_t i = 0; i < n_docs; i++) {
                double qd, dd;
                dot_and_norm(query, docs + i * dim, dim, &qd, &dd);
                rank_topk_push(&t, (uint32_t) i, rank_cosine(qd, qq, dd));
        }
        return rank_topk_finish(&t);
}
