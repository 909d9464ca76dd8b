/* libFuzzer target for the wire format of the links between workers (src/dataplane/peer_wire.c),
 * which a peer on the data port controls completely.
 *
 * Decoding: the input is a stream of frames as it arrives on a link. peer_wire_next() takes
 * frames off its front until it asks for more bytes or refuses; each answer is checked against
 * an independent reading of the 16-byte header. Every frame's payload is copied into a buffer of
 * exactly its length (so AddressSanitizer catches a read past the frame) and given to
 * peer_wire_parse_req() and peer_wire_parse_resp() whatever its type: they must refuse the
 * wrong type, accept exactly what an independent check of the lengths accepts, and hand back
 * pointers and lengths that stay inside the payload (body_here <= body_len, headers_len <=
 * payload, header lines "Name: value\r\n" with no other CR or LF). A RESP's flags are only
 * PEER_FLAG_STREAM, and a streamed RESP announces no length and carries no body (its pieces
 * are RESP_BODY frames until a RESP_END, a frame type like the others).
 *
 * Encoding: the input, read again from its start, is also a program for the encoders
 * (peer_wire_put, _put_req, _put_resp (fixed-length or streamed), _put_body) writing into one struct buf under a tiny
 * limit (64..4159 bytes, or rarely 3 MiB so bodies split into several frames), with the front of
 * the buffer consumed now and then as a link sends it. Each call either fails with -ENOBUFS or
 * -EMSGSIZE leaving the buffer as it was (length and bytes), or appends frames within the limit
 * that peer_wire_next() and the parsers read back as what was put. Any violation abort()s. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "peer_wire.h"
#include "util.h"


#define HDR 16u
#define BIG (3u << 20)

static uint16_t rd16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const void *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static bool inside(const char *p, size_t n, const char *base, size_t len) {
        return p >= base && (size_t) (p - base) <= len && n <= len - (size_t) (p - base);
}

/* Header lines as a client may receive them: "Name: value\r\n"..., no other CR or LF, a name. */
static bool lines_ok(const char *h, size_t len) {
        size_t i = 0;
        while (i < len) {
                size_t j = i;
                bool colon = false;
                while (j < len && h[j] != '\r' && h[j] != '\n') {
                        if (h[j] == ':' && j > i)
                                colon = true;
                        j++;
                }
                if (j + 1 >= len || h[j] != '\r' || h[j + 1] != '\n' || !colon || h[i] == ':')
                        return false;
                i = j + 2;
        }
        return true;
}

/* Parses one frame's payload both ways and checks what comes back. */
static void check_frame(const struct peer_frame_header *h, const char *pl, uint64_t max_body) {
        struct peer_req rq;
        struct peer_resp rs;
        int r;

        r = peer_wire_parse_req(h, pl, &rq);
        check(r == 0 || r == -EBADMSG);
        if (h->type != PEER_REQ)
                check(r == -EBADMSG);
        if (h->type == PEER_REQ) {
                bool valid = false;
                if (h->len >= 16) {
                        uint64_t al = rd16(pl), hl = rd32(pl + 4), bl = rd64(pl + 8);
                        valid = al >= 1 && al <= PEER_MAX_APP && hl >= 1 && 16 + al + hl <= h->len &&
                                h->len - 16 - al - hl <= bl && (rd16(pl + 2) & ~PEER_REQ_F_CALL) == 0;
                }
                check(valid == (r == 0));
        }
        if (r == 0) {
                check(rq.app == pl + 16);
                check(rq.flags == rd16(pl + 2));
                check(rq.app_len >= 1 && rq.app_len <= PEER_MAX_APP);
                check(inside(rq.app, rq.app_len, pl, h->len));
                check(rq.head == rq.app + rq.app_len && rq.head_len >= 1);
                check(inside(rq.head, rq.head_len, pl, h->len));
                check(rq.body == rq.head + rq.head_len);
                check(inside(rq.body, rq.body_here, pl, h->len));
                check(rq.body + rq.body_here == pl + h->len);
                check(rq.body_here <= rq.body_len);
        }

        r = peer_wire_parse_resp(h, pl, max_body, &rs);
        check(r == 0 || r == -EBADMSG);
        if (h->type != PEER_RESP)
                check(r == -EBADMSG);
        if (h->type == PEER_RESP) {
                bool valid = false;
                if (h->len >= 16) {
                        uint64_t bl = rd64(pl), hl = rd32(pl + 8);
                        /* flags: only PEER_FLAG_STREAM, and a stream announces no length */
                        valid = h->status >= 200 && h->status <= 599 && hl <= PEER_MAX_HEADERS && hl <= h->len - 16 &&
                                bl <= max_body && h->len - 16 - hl <= bl && lines_ok(pl + 16, (size_t) hl) &&
                                (h->flags == 0 || (h->flags == PEER_FLAG_STREAM && bl == 0));
                }
                check(valid == (r == 0));
        }
        if (r == 0) {
                check(rs.headers == pl + 16);
                check(rs.headers_len <= PEER_MAX_HEADERS && inside(rs.headers, rs.headers_len, pl, h->len));
                check(lines_ok(rs.headers, rs.headers_len));
                check(rs.body == rs.headers + rs.headers_len);
                check(inside(rs.body, rs.body_here, pl, h->len) && rs.body + rs.body_here == pl + h->len);
                check(rs.body_here <= rs.body_len && rs.body_len <= max_body);
                check(rs.stream == (h->flags == PEER_FLAG_STREAM));
                if (rs.stream)
                        check(rs.body_len == 0 && rs.body_here == 0);
        }
}

/* ---- decoding a stream of frames ---- */

static void decode(const uint8_t *data, size_t size) {
        uint64_t max_body = size >= 8 ? rd64(data) >> (data[0] & 63) : 0;
        size_t off = 0;

        for (;;) {
                struct peer_frame_header h;
                const char *pl = NULL;
                size_t left = size - off;
                int r = peer_wire_next(data + off, left, &h, &pl);

                if (r == 0) {
                        /* More bytes needed: a short header, or a valid header with a short payload. */
                        if (left >= HDR) {
                                uint32_t len = rd32(data + off);
                                uint8_t type = data[off + 4];
                                check(len <= PEER_FRAME_MAX && type >= PEER_REQ && type <= PEER_RESP_END);
                                check(left - HDR < len);
                        }
                        return;
                }
                check(r == 1 || r == -EBADMSG);
                check(left >= HDR);
                if (r < 0) {
                        uint32_t len = rd32(data + off);
                        uint8_t type = data[off + 4];
                        check(len > PEER_FRAME_MAX || type < PEER_REQ || type > PEER_RESP_END);
                        return;
                }
                check(pl == (const char *) data + off + HDR);
                check(h.len == rd32(data + off) && h.type == data[off + 4] && h.flags == data[off + 5]);
                check(h.status == rd16(data + off + 6) && h.stream == rd64(data + off + 8));
                check(h.len <= PEER_FRAME_MAX && h.len <= left - HDR);
                check(h.type >= PEER_REQ && h.type <= PEER_RESP_END);

                /* Exactly the payload, so a read past it is caught. */
                char *copy = malloc(h.len ? h.len : 1);
                check(copy);
                memcpy(copy, pl, h.len);
                check_frame(&h, copy, max_body);
                free(copy);
                off += HDR + h.len;
        }
}

/* ---- encoding ---- */

struct reader {
        const uint8_t *p;
        size_t n, i;
};

static uint64_t take(struct reader *r, unsigned bytes) {
        uint64_t v = 0;
        for (unsigned k = 0; k < bytes; k++)
                v = v << 8 | (r->i < r->n ? r->p[r->i++] : 0);
        return v;
}

static bool more(const struct reader *r) { return r->i < r->n; }

static char *pattern; /* BIG bytes: bodies and heads larger than the input */

/* Bytes for an argument: from the input when it has them, else from the pattern. */
static const char *bytes_of(struct reader *r, size_t len) {
        if (r->n - r->i >= len && len <= 64) {
                const char *p = (const char *) r->p + r->i;
                r->i += len;
                return p;
        }
        return pattern + (r->i % 251);
}

/* Reads back the frames appended at [from, b->len) and returns them as a list of headers and
 * payload copies in *f, their count in *n. */
struct got {
        struct peer_frame_header h;
        const char *pl; /* into the buffer */
};

static size_t frames(const struct buf *b, size_t from, struct got *f, size_t max) {
        size_t n = 0;
        while (from < b->len) {
                struct got g;
                int r = peer_wire_next(b->data + from, b->len - from, &g.h, &g.pl);
                check(r == 1);    /* an encoder wrote a whole, valid frame */
                check(n < max);
                f[n++] = g;
                from += HDR + g.h.len;
        }
        check(from == b->len);
        return n;
}

#define MAX_FRAMES 16

static void encode(const uint8_t *data, size_t size) {
        struct reader rd = { data, size, 0 };
        struct buf b = {};
        char *shadow = NULL;
        size_t limit;
        struct got f[MAX_FRAMES];

        if (size < 2)
                return;
        limit = 64 + (take(&rd, 2) & 4095);
        if (limit == 64 + 4095)
                limit = BIG + 4096; /* rarely: room for bodies split over several frames */
        shadow = malloc(limit);
        check(shadow);

        /* Megabyte bodies cost milliseconds: few steps with the big limit. */
        for (int steps = 0; steps < (limit > BIG ? 4 : 64) && more(&rd); steps++) {
                unsigned op = (unsigned) take(&rd, 1);
                uint64_t stream = take(&rd, 1) * 0x0101010101010101ull;
                uint16_t status = (uint16_t) take(&rd, 2);
                size_t before = b.len;
                int r = 0;

                if (before)
                        memcpy(shadow, b.data, before);
                switch (op % 5) {
                case 0: { /* any frame */
                        uint8_t type = (uint8_t) (1 + take(&rd, 1) % PEER_RESP_END);
                        size_t l1 = (size_t) take(&rd, 1), l2 = (size_t) (take(&rd, 3) % (BIG / 2));
                        const char *p1 = bytes_of(&rd, l1), *p2 = bytes_of(&rd, l2);
                        r = peer_wire_put(&b, limit, type, status, stream, p1, l1, p2, l2);
                        check(r == 0 || r == -ENOBUFS);
                        if (r == 0) {
                                size_t n = frames(&b, before, f, MAX_FRAMES);
                                check(n == 1 && l1 + l2 <= PEER_FRAME_MAX);
                                check(f[0].h.type == type && f[0].h.status == status && f[0].h.stream == stream);
                                check(f[0].h.len == l1 + l2);
                                check(memcmp(f[0].pl, p1, l1) == 0 && memcmp(f[0].pl + l1, p2, l2) == 0);
                        } else
                                check(l1 + l2 > PEER_FRAME_MAX || HDR + l1 + l2 > limit - before);
                        break;
                }
                case 1: { /* a request */
                        size_t al = (size_t) take(&rd, 2) % 300, hl = (size_t) take(&rd, 3) % (PEER_FRAME_MAX + 16);
                        uint64_t bl = take(&rd, 3) % BIG;
                        const char *app = bytes_of(&rd, al), *head = bytes_of(&rd, hl), *body = bytes_of(&rd, (size_t) bl);
                        r = peer_wire_put_req(&b, limit, stream, (uint16_t)(stream & 1), app, al, head, hl, body, bl);
                        check(r == 0 || r == -ENOBUFS || r == -EMSGSIZE);
                        check((r == -EMSGSIZE) == (al == 0 || al > PEER_MAX_APP || hl == 0 || 16 + al + hl > PEER_FRAME_MAX));
                        if (r == 0) {
                                size_t n = frames(&b, before, f, MAX_FRAMES);
                                struct peer_req pr;
                                check(n >= 1 && f[0].h.type == PEER_REQ && f[0].h.stream == stream);
                                /* What the encoder writes, a receiver accepts (an empty head it refuses
                                 * to write at all). */
                                int pr_r = peer_wire_parse_req(&f[0].h, f[0].pl, &pr);
                                check(pr_r == 0);
                                check(rd16(f[0].pl) == al && rd32(f[0].pl + 4) == hl && rd64(f[0].pl + 8) == bl);
                                check(memcmp(f[0].pl + 16, app, al) == 0 && memcmp(f[0].pl + 16 + al, head, hl) == 0);
                                size_t got = f[0].h.len - 16 - al;
                                got -= hl;
                                check(memcmp(f[0].pl + 16 + al + hl, body, got) == 0);
                                for (size_t i = 1; i < n; i++) {
                                        check(f[i].h.type == PEER_REQ_BODY && f[i].h.stream == stream && f[i].h.len > 0);
                                        check(got + f[i].h.len <= bl && memcmp(f[i].pl, body + got, f[i].h.len) == 0);
                                        got += f[i].h.len;
                                }
                                check(got == bl);
                        }
                        break;
                }
                case 2: { /* a response head, of a fixed length or streamed */
                        size_t hl = (size_t) take(&rd, 3) % (PEER_MAX_HEADERS + 64);
                        uint8_t shift = (uint8_t) take(&rd, 1);
                        uint64_t bl = take(&rd, 8) >> (shift & 63);
                        bool streamed = shift & 64;
                        const char *headers = bytes_of(&rd, hl);
                        r = peer_wire_put_resp(&b, limit, stream, status, headers, hl, bl, streamed);
                        check(r == 0 || r == -ENOBUFS || r == -EMSGSIZE);
                        check((r == -EMSGSIZE) == (hl > PEER_MAX_HEADERS));
                        if (r == 0) {
                                size_t n = frames(&b, before, f, MAX_FRAMES);
                                check(n == 1 && f[0].h.type == PEER_RESP && f[0].h.status == status && f[0].h.stream == stream);
                                check(f[0].h.flags == (streamed ? PEER_FLAG_STREAM : 0));
                                check(f[0].h.len == 16 + hl && rd64(f[0].pl) == (streamed ? 0 : bl) && rd32(f[0].pl + 8) == hl);
                                check(memcmp(f[0].pl + 16, headers, hl) == 0);
                                /* A receiver accepts it exactly when its fields are acceptable. */
                                struct peer_resp pr;
                                bool ok = status >= 200 && status <= 599 && lines_ok(f[0].pl + 16, hl);
                                int pr_r = peer_wire_parse_resp(&f[0].h, f[0].pl, UINT64_MAX, &pr);
                                check((pr_r == 0) == ok);
                                if (pr_r == 0)
                                        check(pr.stream == streamed && pr.body_len == (streamed ? 0 : bl));
                        }
                        break;
                }
                case 3: { /* body frames */
                        uint8_t type = take(&rd, 1) & 1 ? PEER_RESP_BODY : PEER_REQ_BODY;
                        size_t len = (size_t) (take(&rd, 3) % BIG);
                        const char *body = bytes_of(&rd, len);
                        r = peer_wire_put_body(&b, limit, type, stream, body, len);
                        check(r == 0 || r == -ENOBUFS);
                        if (r == 0) {
                                size_t n = frames(&b, before, f, MAX_FRAMES), got = 0;
                                for (size_t i = 0; i < n; i++) {
                                        check(f[i].h.type == type && f[i].h.stream == stream && f[i].h.len > 0);
                                        check(memcmp(f[i].pl, body + got, f[i].h.len) == 0);
                                        got += f[i].h.len;
                                }
                                check(got == len && n == (len + PEER_FRAME_MAX - 1) / PEER_FRAME_MAX);
                        }
                        break;
                }
                default: /* the link sent some of it */
                        buf_consume(&b, (size_t) take(&rd, 2) % (b.len + 1));
                        before = b.len;
                        if (before)
                                memcpy(shadow, b.data, before);
                        break;
                }
                check(b.len <= limit);
                if (r < 0) {
                        check(b.len == before);
                        check(before == 0 || memcmp(shadow, b.data, before) == 0);
                }
        }
        buf_free(&b);
        free(shadow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (!pattern) {
                pattern = malloc(BIG + 256);
                check(pattern);
                for (size_t i = 0; i < BIG + 256; i++)
                        pattern[i] = (char) ('a' + i % 26);
        }
        decode(data, size);
        encode(data, size);
        return 0;
}
