#include <errno.h>
#include <string.h>

#include "macros.h"
#include "peer_wire.h"

#define HDR sizeof(struct peer_frame_header)

int peer_wire_next(const void *data, size_t len, struct peer_frame_header *ret_h, const char **ret_payload) {
        struct peer_frame_header h;

        if (len < HDR)
                return 0;
        memcpy(&h, data, HDR);
        if (h.len > PEER_FRAME_MAX || h.type < PEER_REQ || h.type > PEER_RESP_END)
                return -EBADMSG;
        if (len - HDR < h.len)
                return 0;
        *ret_h = h;
        *ret_payload = (const char *)data + HDR;
        return 1;
}

int peer_wire_req_start(const struct peer_frame_header *h, const char *pl, size_t avail, struct peer_req *ret,
                        size_t *ret_need) {
        uint16_t al, fl;
        uint32_t hl;
        uint64_t bl, prefix;

        if (h->type != PEER_REQ || h->len < 16)
                return -EBADMSG;
        avail = MIN(avail, (size_t)h->len);
        if (avail < 16) {
                *ret_need = 16;
                return -EAGAIN;
        }
        memcpy(&al, pl, 2);
        memcpy(&fl, pl + 2, 2);
        memcpy(&hl, pl + 4, 4);
        memcpy(&bl, pl + 8, 8);
        /* All sums in 64 bits: h->len <= 2^20, al < 2^16, hl < 2^32. */
        prefix = (uint64_t)16 + al + hl;
        if (al == 0 || al > PEER_MAX_APP || hl == 0 || prefix > h->len || h->len - prefix > bl ||
            (fl & ~PEER_REQ_F_CALL))
                return -EBADMSG;
        if (avail < prefix) {
                *ret_need = (size_t)prefix;
                return -EAGAIN;
        }
        *ret = (struct peer_req){
                .app = pl + 16,
                .app_len = al,
                .flags = fl,
                .head = pl + 16 + al,
                .head_len = hl,
                .body_len = bl,
                .body = pl + prefix,
                .body_here = avail - (size_t)prefix,
                .prefix_len = (size_t)prefix,
        };
        return 0;
}

int peer_wire_parse_req(const struct peer_frame_header *h, const char *pl, struct peer_req *ret) {
        size_t need;
        int r = peer_wire_req_start(h, pl, h->len, ret, &need);
        return r == -EAGAIN ? -EBADMSG : r;
}

/* Header lines from a peer: "Name: value\r\n"..., no bare CR or LF, no empty name. */
static bool headers_valid(const char *h, size_t len) {
        size_t i = 0;

        while (i < len) {
                const char *eol = memchr(h + i, '\r', len - i);
                if (!eol || (size_t)(eol - h) + 1 >= len || eol[1] != '\n')
                        return false;
                const char *colon = memchr(h + i, ':', (size_t)(eol - (h + i)));
                if (!colon || colon == h + i || memchr(h + i, '\n', (size_t)(eol - (h + i))))
                        return false;
                i = (size_t)(eol - h) + 2;
        }
        return true;
}

int peer_wire_parse_resp(const struct peer_frame_header *h, const char *pl, uint64_t max_body, struct peer_resp *ret) {
        uint64_t body_len;
        uint32_t hl;

        if (h->type != PEER_RESP || h->len < 16)
                return -EBADMSG;
        memcpy(&body_len, pl, 8);
        memcpy(&hl, pl + 8, 4);
        /* (A stream's body_len is 0, so it has no body bytes here either.) */
        if (h->status < 200 || h->status > 599 || (h->flags & ~PEER_FLAG_STREAM) ||
            ((h->flags & PEER_FLAG_STREAM) && body_len != 0) || hl > PEER_MAX_HEADERS || hl > h->len - 16 ||
            body_len > max_body || h->len - 16 - hl > body_len || !headers_valid(pl + 16, hl))
                return -EBADMSG;
        *ret = (struct peer_resp){
                .stream = h->flags & PEER_FLAG_STREAM,
                .body_len = body_len,
                .headers = pl + 16,
                .headers_len = hl,
                .body = pl + 16 + hl,
                .body_here = h->len - 16 - hl,
        };
        return 0;
}

static bool fits(const struct buf *b, size_t limit, size_t n) { return n <= limit && b->len <= limit - n; }

static void put_flags(struct buf *b, uint8_t type, uint8_t flags, uint16_t status, uint64_t stream, const void *p1,
                      size_t l1, const void *p2, size_t l2) {
        struct peer_frame_header h = { .len = (uint32_t)(l1 + l2), .type = type, .flags = flags, .status = status,
                                       .stream = stream };

        memcpy(b->data + b->len, &h, HDR);
        b->len += HDR;
        if (l1)
                memcpy(b->data + b->len, p1, l1);
        b->len += l1;
        if (l2)
                memcpy(b->data + b->len, p2, l2);
        b->len += l2;
}

static void put(struct buf *b, uint8_t type, uint16_t status, uint64_t stream, const void *p1, size_t l1,
                const void *p2, size_t l2) {
        put_flags(b, type, 0, status, stream, p1, l1, p2, l2);
}

int peer_wire_put(struct buf *b, size_t limit, uint8_t type, uint16_t status, uint64_t stream, const void *p1,
                  size_t l1, const void *p2, size_t l2) {
        if (l1 + l2 > PEER_FRAME_MAX || !fits(b, limit, HDR + l1 + l2) || buf_reserve(b, HDR + l1 + l2, limit) < 0)
                return -ENOBUFS;
        put(b, type, status, stream, p1, l1, p2, l2);
        return 0;
}

/* Bytes that body frames for len body bytes take. */
static size_t body_frames_size(size_t len) {
        size_t frames = len / PEER_FRAME_MAX + (len % PEER_FRAME_MAX != 0);
        return frames * HDR + len;
}

static void put_body(struct buf *b, uint8_t type, uint64_t stream, const char *data, size_t len) {
        while (len > 0) {
                size_t n = MIN(len, (size_t)PEER_FRAME_MAX);
                put(b, type, 0, stream, data, n, NULL, 0);
                data += n;
                len -= n;
        }
}

int peer_wire_put_body(struct buf *b, size_t limit, uint8_t type, uint64_t stream, const char *data, size_t len) {
        size_t need = body_frames_size(len);

        if (!fits(b, limit, need) || buf_reserve(b, need, limit) < 0)
                return -ENOBUFS;
        put_body(b, type, stream, data, len);
        return 0;
}

int peer_wire_put_req(struct buf *b, size_t limit, uint64_t stream, uint16_t flags, const char *app, size_t app_len,
                      const char *head, size_t head_len, const char *body, uint64_t body_len) {
        uint8_t fixed[16 + PEER_MAX_APP];
        uint16_t al = (uint16_t)app_len;
        uint32_t hl = (uint32_t)head_len;
        size_t first, need;

        if (app_len == 0 || app_len > PEER_MAX_APP || head_len == 0 || 16 + app_len + head_len > PEER_FRAME_MAX ||
            body_len > SIZE_MAX / 2)
                return -EMSGSIZE;
        memcpy(fixed, &al, 2);
        memcpy(fixed + 2, &flags, 2);
        memcpy(fixed + 4, &hl, 4);
        memcpy(fixed + 8, &body_len, 8);
        memcpy(fixed + 16, app, app_len);
        /* The head and as much of the body as fits go in the REQ frame, the rest in REQ_BODY. */
        first = MIN((size_t)body_len, (size_t)PEER_FRAME_MAX - (16 + app_len + head_len));
        need = HDR + 16 + app_len + head_len + first + body_frames_size((size_t)body_len - first);
        if (!fits(b, limit, need) || buf_reserve(b, need, limit) < 0)
                return -ENOBUFS;
        {
                struct peer_frame_header h = { .len = (uint32_t)(16 + app_len + head_len + first), .type = PEER_REQ,
                                               .stream = stream };
                memcpy(b->data + b->len, &h, HDR);
                b->len += HDR;
                memcpy(b->data + b->len, fixed, 16 + app_len);
                b->len += 16 + app_len;
                memcpy(b->data + b->len, head, head_len);
                b->len += head_len;
                if (first)
                        memcpy(b->data + b->len, body, first);
                b->len += first;
        }
        put_body(b, PEER_REQ_BODY, stream, body + first, (size_t)body_len - first);
        return 0;
}

int peer_wire_put_resp(struct buf *b, size_t limit, uint64_t stream, int status, const char *headers,
                       size_t headers_len, uint64_t body_len, bool streamed) {
        uint8_t fixed[16] = {};
        uint32_t hl = (uint32_t)headers_len;

        if (headers_len > PEER_MAX_HEADERS)
                return -EMSGSIZE;
        if (streamed)
                body_len = 0;
        memcpy(fixed, &body_len, 8);
        memcpy(fixed + 8, &hl, 4);
        if (!fits(b, limit, HDR + 16 + headers_len) || buf_reserve(b, HDR + 16 + headers_len, limit) < 0)
                return -ENOBUFS;
        put_flags(b, PEER_RESP, streamed ? PEER_FLAG_STREAM : 0, (uint16_t)status, stream, fixed, 16, headers,
                  headers_len);
        return 0;
}
