/* Cosine scores on the GPU: one thread block per document, each thread summing a strided slice
 * of q.d and d.d in double, then a shared-memory tree reduction; thread 0 writes the score with
 * the same rank_cosine() formula as the CPU. The scores come back to the host, where
 * rank_topk_* selects the hits exactly as rank_cpu() does.
 *
 * Each call uses its own stream and stream-ordered allocations (cudaMallocAsync: a pool, no
 * device-wide synchronisation as cudaMalloc/cudaFree have), so concurrent handler threads do
 * not serialise on each other. */

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cuda_runtime.h>

#include "rank_cuda.h"

#define THREADS 128 /* a power of two: the reduction halves it */

static __global__ void cosine_kernel(const float *__restrict__ query, const float *__restrict__ docs,
                                     unsigned dim, double qq, float *__restrict__ scores) {
        __shared__ double s_qd[THREADS], s_dd[THREADS];
        const float *d = docs + (size_t) blockIdx.x * dim;
        double qd = 0, dd = 0;

        for (unsigned i = threadIdx.x; i < dim; i += THREADS) {
                double x = d[i];
                qd += (double) query[i] * x;
                dd += x * x;
        }
        s_qd[threadIdx.x] = qd;
        s_dd[threadIdx.x] = dd;
        __syncthreads();
        for (unsigned half = THREADS / 2; half > 0; half /= 2) {
                if (threadIdx.x < half) {
                        s_qd[threadIdx.x] += s_qd[threadIdx.x + half];
                        s_dd[threadIdx.x] += s_dd[threadIdx.x + half];
                }
                __syncthreads();
        }
        if (threadIdx.x == 0) {
                /* rank_cosine(), on the device. */
                double tqd = s_qd[0], tdd = s_dd[0];
                scores[blockIdx.x] = qq <= 0 || tdd <= 0 ? 0.0f : (float) (tqd / (sqrt(qq) * sqrt(tdd)));
        }
}

int rank_cuda_init(char *name, size_t name_cap) {
        cudaDeviceProp prop;
        int n = 0;

        if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
                (void) cudaGetLastError(); /* clear the sticky-less error state */
                return -ENODEV;
        }
        if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
                (void) cudaGetLastError();
                return -ENODEV;
        }
        if (name && name_cap > 0)
                snprintf(name, name_cap, "%s", prop.name);
        return 0;
}

int rank_cuda(const float *query, const float *docs, size_t n_docs, size_t dim, size_t top_k,
              struct rank_hit *out, size_t *ret_n) {
        cudaStream_t stream = NULL;
        float *d_vec = NULL, *d_scores = NULL, *scores = NULL;
        struct rank_topk t;
        int r = -EIO;

        if (n_docs > (size_t) INT_MAX || n_docs > UINT32_MAX || dim > UINT_MAX)
                return -E2BIG;
        if (n_docs == 0 || top_k == 0) {
                *ret_n = 0;
                return 0;
        }

        const double qq = rank_dot(query, query, dim);
        const size_t doc_bytes = n_docs * dim * sizeof(float);

        scores = (float *) malloc(n_docs * sizeof(float));
        if (!scores)
                return -ENOMEM;
        if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess)
                goto finish;
        /* One allocation for the query and the documents; one for the scores. */
        if (cudaMallocAsync((void **) &d_vec, doc_bytes + dim * sizeof(float), stream) != cudaSuccess ||
            cudaMallocAsync((void **) &d_scores, n_docs * sizeof(float), stream) != cudaSuccess)
                goto finish;
        if (cudaMemcpyAsync(d_vec, query, dim * sizeof(float), cudaMemcpyHostToDevice, stream) != cudaSuccess ||
            cudaMemcpyAsync(d_vec + dim, docs, doc_bytes, cudaMemcpyHostToDevice, stream) != cudaSuccess)
                goto finish;
        cosine_kernel<<<(unsigned) n_docs, THREADS, 0, stream>>>(d_vec, d_vec + dim, (unsigned) dim, qq, d_scores);
        if (cudaGetLastError() != cudaSuccess)
                goto finish;
        if (cudaMemcpyAsync(scores, d_scores, n_docs * sizeof(float), cudaMemcpyDeviceToHost, stream) != cudaSuccess ||
            cudaStreamSynchronize(stream) != cudaSuccess)
                goto finish;

        rank_topk_init(&t, out, top_k);
        for (size_t i = 0; i < n_docs; i++)
                rank_topk_push(&t, (uint32_t) i, scores[i]);
        *ret_n = rank_topk_finish(&t);
        r = 0;

finish:
        if (stream) {
                if (d_vec)
                        cudaFreeAsync(d_vec, stream);
                if (d_scores)
                        cudaFreeAsync(d_scores, stream);
                cudaStreamSynchronize(stream);
                cudaStreamDestroy(stream);
        }
        (void) cudaGetLastError(); /* a failed call must not fail the next one on this thread */
        free(scores);
        return r;
}
