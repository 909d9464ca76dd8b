/* What Pipeline sends to Ranker.rank and gets back, packed little-endian:
 *
 *   request:  u32 magic "RNK1" | u32 dim | u32 n_docs | u32 top_k
 *             | (1 + n_docs) * dim float32: the query's vector, then each document's
 *   response: u32 n | n * (u32 index | float32 score), in hit order
 *
 * Embedder.embed answers EMBED_DIM float32 in the same byte order, so its answers are copied
 * into a request as they are. Vectors in a received buffer may be unaligned: read them with
 * wire_load_f32(). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "rank.h"

#define WIRE_RANK_MAGIC 0x314b4e52u /* the bytes "RNK1" read as a little-endian u32 */
#define WIRE_RANK_HEADER_SIZE 16
#define WIRE_RANK_MAX_DOCS 1024
#define WIRE_RANK_MAX_DIM 4096
#define WIRE_HIT_SIZE 8

struct wire_rank_request {
        uint32_t dim, n_docs, top_k;
        const void *vectors; /* (1 + n_docs) * dim float32, little-endian, maybe unaligned */
};

/* The size of a request with these dimensions into *ret_size. Returns 0, or -E2BIG when dim or
 * n_docs is over the limits (WIRE_RANK_MAX_DIM, WIRE_RANK_MAX_DOCS). */
int wire_rank_request_size(size_t dim, size_t n_docs, size_t *ret_size);

/* Writes the header; the vectors go after it, at wire_rank_vector(). */
void wire_rank_pack_header(void *buf, uint32_t dim, uint32_t n_docs, uint32_t top_k);

/* Where vector i of a request goes: 0 is the query, 1 + k document k. */
void *wire_rank_vector(void *buf, size_t dim, size_t i);

/* Checks a request of len bytes for ranking vectors of want_dim floats and points *ret into
 * buf. Returns 0, or:
 *   -EBADMSG  shorter than a header, wrong magic, or len is not exactly what the header says
 *   -EINVAL   dim is not want_dim, or top_k is 0
 *   -E2BIG    more than WIRE_RANK_MAX_DOCS documents
 *   -EDOM     a vector holds a NaN or an infinity */
int wire_rank_parse(const void *buf, size_t len, uint32_t want_dim, struct wire_rank_request *ret);

/* n float32 from little-endian bytes (any alignment) to host floats, and back. */
void wire_load_f32(float *dst, const void *src, size_t n);
void wire_store_f32(void *dst, const float *src, size_t n);

/* The size of a response with n hits. */
size_t wire_hits_size(size_t n);
void wire_hits_pack(void *buf, const struct rank_hit *hits, size_t n);

/* Reads a response of len bytes into out (room for max hits), its count into *ret_n. Returns
 * 0, or -EBADMSG when len is not exactly what its count says or the count is over max. */
int wire_hits_parse(const void *buf, size_t len, size_t max, struct rank_hit *out, size_t *ret_n);
