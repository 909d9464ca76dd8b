/* Byte order is explicit for the integers (one byte at a time) and for the floats (their bit
 * patterns through a u32). Bulk float copies are a memcpy on little-endian hosts, every
 * machine this runs on today; big-endian ones swap each float. */

#include <errno.h>
#include <string.h>

#include "wire.h"

_Static_assert(sizeof(float) == 4, "float32 on the wire");

static uint32_t get_u32(const unsigned char *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static void put_u32(unsigned char *p, uint32_t v) {
        p[0] = (unsigned char) v;
        p[1] = (unsigned char) (v >> 8);
        p[2] = (unsigned char) (v >> 16);
        p[3] = (unsigned char) (v >> 24);
}

static float get_f32(const unsigned char *p) {
        uint32_t u = get_u32(p);
        float f;

        memcpy(&f, &u, sizeof f);
        return f;
}

static void put_f32(unsigned char *p, float f) {
        uint32_t u;

        memcpy(&u, &f, sizeof u);
        put_u32(p, u);
}

void wire_load_f32(float *dst, const void *src, size_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(dst, src, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++)
                dst[i] = get_f32((const unsigned char *) src + 4 * i);
#endif
}

void wire_store_f32(void *dst, const float *src, size_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(dst, src, n * sizeof(float));
#else
        for (size_t i = 0; i < n; i++)
                put_f32((unsigned char *) dst + 4 * i, src[i]);
#endif
}

int wire_rank_request_size(size_t dim, size_t n_docs, size_t *ret_size) {
        /* With these limits the size stays below 17 MiB: no multiplication can overflow. */
        if (dim > WIRE_RANK_MAX_DIM || n_docs > WIRE_RANK_MAX_DOCS)
                return -E2BIG;
        *ret_size = WIRE_RANK_HEADER_SIZE + (1 + n_docs) * dim * 4;
        return 0;
}

void wire_rank_pack_header(void *buf, uint32_t dim, uint32_t n_docs, uint32_t top_k) {
        unsigned char *p = buf;

        put_u32(p, WIRE_RANK_MAGIC);
        put_u32(p + 4, dim);
        put_u32(p + 8, n_docs);
        put_u32(p + 12, top_k);
}

void *wire_rank_vector(void *buf, size_t dim, size_t i) {
        return (unsigned char *) buf + WIRE_RANK_HEADER_SIZE + i * dim * 4;
}

static bool finite_f32(const unsigned char *p) {
        return (get_u32(p) & 0x7f800000u) != 0x7f800000u; /* exponent all ones: inf or NaN */
}

int wire_rank_parse(const void *buf, size_t len, uint32_t want_dim, struct wire_rank_request *ret) {
        const unsigned char *p = buf;
        uint32_t dim, n_docs, top_k;
        size_t want;

        if (len < WIRE_RANK_HEADER_SIZE || get_u32(p) != WIRE_RANK_MAGIC)
                return -EBADMSG;
        dim = get_u32(p + 4);
        n_docs = get_u32(p + 8);
        top_k = get_u32(p + 12);
        if (dim != want_dim || top_k == 0)
                return -EINVAL;
        if (wire_rank_request_size(dim, n_docs, &want) < 0)
                return -E2BIG;
        if (len != want)
                return -EBADMSG;
        for (size_t off = WIRE_RANK_HEADER_SIZE; off < len; off += 4)
                if (!finite_f32(p + off))
                        return -EDOM;

        *ret = (struct wire_rank_request) {
                .dim = dim,
                .n_docs = n_docs,
                .top_k = top_k,
                .vectors = p + WIRE_RANK_HEADER_SIZE,
        };
        return 0;
}

size_t wire_hits_size(size_t n) {
        return 4 + n * WIRE_HIT_SIZE;
}

void wire_hits_pack(void *buf, const struct rank_hit *hits, size_t n) {
        unsigned char *p = buf;

        put_u32(p, (uint32_t) n);
        for (size_t i = 0; i < n; i++) {
                put_u32(p + 4 + i * WIRE_HIT_SIZE, hits[i].index);
                put_f32(p + 8 + i * WIRE_HIT_SIZE, hits[i].score);
        }
}

int wire_hits_parse(const void *buf, size_t len, size_t max, struct rank_hit *out, size_t *ret_n) {
        const unsigned char *p = buf;
        uint32_t n;

        if (len < 4)
                return -EBADMSG;
        n = get_u32(p);
        /* n <= max first: then n * 8 cannot overflow (max is an array's length). */
        if (n > max || len != wire_hits_size(n))
                return -EBADMSG;
        for (size_t i = 0; i < n; i++) {
                out[i].index = get_u32(p + 4 + i * WIRE_HIT_SIZE);
                out[i].score = get_f32(p + 8 + i * WIRE_HIT_SIZE);
        }
        *ret_n = n;
        return 0;
}
