/* Feature hashing: each feature's 64-bit FNV-1a, spread by MurmurHash3's 64-bit finaliser,
 * picks a bucket (the top 8 bits) and a sign (bit 55), so that colliding features cancel out on
 * average instead of piling up. The finaliser is needed: FNV-1a's last byte only reaches the
 * middle bits (its prime is 2^40 + 0x1b3), so "at$" and "ats" would share their top bits.
 * Words and trigrams hash in separate namespaces (a tag byte first): the word "cat" and the
 * trigram "cat" are different features. A token is hashed as it is read, so a token of any
 * length needs no buffer. */

#include <math.h>
#include <stdbool.h>

#include "embed.h"

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

#define TAG_WORD 'w'
#define TAG_TRIGRAM 't'
#define BOUNDARY_START '^'
#define BOUNDARY_END '$'

_Static_assert(EMBED_DIM == 256, "the bucket is the top 8 bits of the hash");

static inline uint64_t fnv_byte(uint64_t h, unsigned char c) {
        return (h ^ c) * FNV_PRIME;
}

uint64_t embed_fnv1a64(const void *data, size_t len) {
        const unsigned char *p = data;
        uint64_t h = FNV_OFFSET;

        for (size_t i = 0; i < len; i++)
                h = fnv_byte(h, p[i]);
        return h;
}

static uint64_t fmix64(uint64_t h) {
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 33;
        return h;
}

static void add_feature(float out[EMBED_DIM], uint64_t fnv, float weight) {
        uint64_t h = fmix64(fnv);

        out[h >> 56] += (h >> 55) & 1 ? -weight : weight;
}

static void add_trigram(float out[EMBED_DIM], char a, char b, char c) {
        const char t[4] = { TAG_TRIGRAM, a, b, c };

        add_feature(out, embed_fnv1a64(t, sizeof t), EMBED_TRIGRAM_WEIGHT);
}

/* ASCII only: a locale must not change the embedding. */
static inline char token_char(char c) {
        if (c >= 'A' && c <= 'Z')
                return (char) (c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
                return c;
        return 0;
}

void embed_text(const char *text, size_t len, float out[EMBED_DIM]) {
        uint64_t word = 0;
        char prev2 = 0, prev1 = 0; /* the token's last two characters (with '^' before it) */
        bool in_token = false;
        double sum = 0;

        for (size_t i = 0; i < EMBED_DIM; i++)
                out[i] = 0;

        /* One step past the end: the end of the text ends the last token. */
        for (size_t i = 0; i <= len; i++) {
                char c = i < len ? token_char(text[i]) : 0;

                if (c) {
                        if (!in_token) {
                                in_token = true;
                                word = fnv_byte(FNV_OFFSET, TAG_WORD);
                                prev2 = 0;
                                prev1 = BOUNDARY_START;
                        }
                        word = fnv_byte(word, (unsigned char) c);
                        if (prev2)
                                add_trigram(out, prev2, prev1, c);
                        prev2 = prev1;
                        prev1 = c;
                } else if (in_token) {
                        in_token = false;
                        add_feature(out, word, EMBED_WORD_WEIGHT);
                        /* "^a$" for a one-character token: prev2 is '^' then. */
                        add_trigram(out, prev2, prev1, BOUNDARY_END);
                }
        }

        for (size_t i = 0; i < EMBED_DIM; i++)
                sum += (double) out[i] * out[i];
        if (sum == 0)
                return;
        double inv = 1.0 / sqrt(sum);
        for (size_t i = 0; i < EMBED_DIM; i++)
                out[i] = (float) (out[i] * inv);
}
