/* A deterministic text embedding by feature hashing: no model, no allocation, the same vector
 * for the same text on every machine. Good enough to rank documents that share words (and
 * word pieces) with a query; it knows nothing of meaning. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMBED_DIM 256 /* buckets; a power of two (the bucket is the top bits of a hash) */

/* 64-bit FNV-1a of len bytes. */
uint64_t embed_fnv1a64(const void *data, size_t len);

/* Embeds len bytes of text (no NUL needed) into out: ASCII is lowercased, tokens are runs of
 * [a-z0-9] (every other byte separates), and each token adds its word unigram (weight
 * EMBED_WORD_WEIGHT) and each character trigram of "^token$" (weight EMBED_TRIGRAM_WEIGHT) to
 * the bucket its hash picks (FNV-1a, then a finaliser), with the sign another bit of the hash
 * picks. The result has L2 norm 1, or is all zeros when the text has no token. */
void embed_text(const char *text, size_t len, float out[EMBED_DIM]);

#define EMBED_WORD_WEIGHT 2.0f
#define EMBED_TRIGRAM_WEIGHT 1.0f

#ifdef __cplusplus
}
#endif
