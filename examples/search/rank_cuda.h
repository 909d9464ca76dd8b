/* The GPU ranker (rank_cuda.cu, built only when configure found nvcc: HAVE_CUDA). Same scores
 * (to float rounding) and the same hit order as rank_cpu(): the scores are computed on the
 * GPU, the top-k selection is rank.h's, on the host. Thread-safe: each call has its own
 * stream and device memory. */
#pragma once

#include <stddef.h>

#include "rank.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns 0 when a GPU is visible (its name into name, truncated to name_cap), or -ENODEV when
 * none is: no driver, no device, or any error asking (the normal case on a machine without
 * one). */
int rank_cuda_init(char *name, size_t name_cap);

/* rank_cpu() on the GPU: the number of hits into *ret_n. Returns 0, -E2BIG when n_docs or dim
 * is beyond what one launch handles, or -EIO on any CUDA error (the caller falls back to the
 * CPU). */
int rank_cuda(const float *query, const float *docs, size_t n_docs, size_t dim, size_t top_k,
              struct rank_hit *out, size_t *ret_n);

#ifdef __cplusplus
}
#endif
