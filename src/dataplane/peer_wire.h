/* The wire format of the data links between workers (peer.c): frames of a 16-byte header
 * { u32 len; u8 type; u8 flags; u16 status; u64 stream } (little-endian) and `len` payload
 * bytes (<= PEER_FRAME_MAX). A request is one REQ frame and then REQ_BODY frames until its body
 * is complete; the frames of one request are contiguous on the link (one writer), so the
 * receiver assembles at most one request at a time.
 *   REQ        payload: u16 app_len, u16 flags, u32 head_len, u64 body_len, app, HTTP head, body...
 *              (flags: PEER_REQ_F_CALL: a handle call, routed by its head's serve-deployment
 *              header instead of its path; call.h)
 *   REQ_BODY   payload: body bytes
 *   CANCEL     the client went away
 *   RESP       status; payload: u64 body_len, u32 headers_len, u32 0, header lines, body...
 *              With flags PEER_FLAG_STREAM the length is unknown (body_len 0, no body here):
 *              the body comes in RESP_BODY frames, one per piece the handler flushed, until
 *              RESP_END.
 *   RESP_BODY  payload: body bytes
 *   REJECT     status; the peer has no replica for it (any more): the sender tries elsewhere
 *   FAIL       status (4xx/5xx); payload: reason text. The request failed at the peer (also
 *              while its response was under way: the receiver cuts the response off), or the
 *              peer let go of it after our CANCEL (499): a stream that was not complete when
 *              the CANCEL came gets one, so the sender knows it is over.
 *   RESP_END   no payload: a streamed response (RESP with PEER_FLAG_STREAM) is complete.
 * Everything here validates what it reads: lengths against the frame, the frame against its
 * type; a peer that sends something these functions refuse is disconnected. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define PEER_FRAME_MAX (1u << 20)
#define PEER_MAX_HEADERS (64u * 1024)  /* response header bytes */
#define PEER_MAX_APP 255u
#define PEER_REQ_F_CALL 1u

enum peer_frame_type {
        PEER_REQ = 1,
        PEER_REQ_BODY = 2,
        PEER_CANCEL = 3,
        PEER_RESP = 4,
        PEER_RESP_BODY = 5,
        PEER_REJECT = 6,
        PEER_FAIL = 7,
        PEER_RESP_END = 8,
};

/* peer_frame_header.flags of a RESP frame (other frames have none). */
#define PEER_FLAG_STREAM 1u

struct peer_frame_header {
        uint32_t len;
        uint8_t type;
        uint8_t flags;
        uint16_t status;
        uint64_t stream;
} __attribute__((packed));

/* The next whole frame at the start of [data, data+len). Returns 1 with *ret_h and
 * *ret_payload set, 0 when more bytes are needed, -EBADMSG for an oversized frame or an
 * unknown type. */
int peer_wire_next(const void *data, size_t len, struct peer_frame_header *ret_h, const char **ret_payload);

/* A REQ frame's payload. Pointers point into the payload. */
struct peer_req {
        const char *app;
        size_t app_len;
        uint16_t flags;         /* PEER_REQ_F_* */
        const char *head;       /* the HTTP request head, up to and including its empty line */
        size_t head_len;
        uint64_t body_len;      /* the whole body */
        const char *body;       /* the part of it in this frame (that arrived) */
        size_t body_here;
        size_t prefix_len;      /* payload bytes before the body: fixed part, app, head */
};
/* The start of a REQ frame from the first `avail` bytes of its payload (the rest of its body
 * may still be on its way): returns 0 with *ret set (body_here: the body bytes among them),
 * -EAGAIN with *ret_need (payload bytes needed before the body) or -EBADMSG. */
int peer_wire_req_start(const struct peer_frame_header *h, const char *payload, size_t avail, struct peer_req *ret,
                        size_t *ret_need);
/* Returns 0, or -EBADMSG when the lengths do not add up. body_len is not limited here: the
 * caller checks it against max_request_body_bytes and answers 413. */
int peer_wire_parse_req(const struct peer_frame_header *h, const char *payload, struct peer_req *ret);

/* A RESP frame's payload. */
struct peer_resp {
        bool stream;            /* PEER_FLAG_STREAM: body_len 0, pieces until RESP_END */
        uint64_t body_len;
        const char *headers;    /* "Name: value\r\n" lines, validated */
        size_t headers_len;
        const char *body;
        size_t body_here;
};
/* Returns 0, or -EBADMSG (bad status, lengths, flags, or header lines a client could be split
 * by; a stream with a body_len or body bytes). */
int peer_wire_parse_resp(const struct peer_frame_header *h, const char *payload, uint64_t max_body,
                         struct peer_resp *ret);

/* Appends one frame (payload p1 then p2) to b. Returns 0, or -ENOBUFS when b would pass
 * `limit` bytes (nothing appended). */
int peer_wire_put(struct buf *b, size_t limit, uint8_t type, uint16_t status, uint64_t stream, const void *p1,
                  size_t l1, const void *p2, size_t l2);
/* Appends a REQ frame with as much of the body as fits, then REQ_BODY frames for the rest.
 * Returns 0, -ENOBUFS (nothing appended) or -EMSGSIZE (no app or head, or too long for a frame). */
int peer_wire_put_req(struct buf *b, size_t limit, uint64_t stream, uint16_t flags, const char *app, size_t app_len,
                      const char *head, size_t head_len, const char *body, uint64_t body_len);
/* Appends a RESP frame (no body bytes); with `streamed`, of a streamed response (its body_len
 * is not known: pass 0). Returns 0, -ENOBUFS or -EMSGSIZE (headers too long). */
int peer_wire_put_resp(struct buf *b, size_t limit, uint64_t stream, int status, const char *headers,
                       size_t headers_len, uint64_t body_len, bool streamed);
/* Appends body bytes as frames of `type` (REQ_BODY, RESP_BODY) of at most PEER_FRAME_MAX.
 * Returns 0 or -ENOBUFS (nothing appended). */
int peer_wire_put_body(struct buf *b, size_t limit, uint8_t type, uint64_t stream, const char *data, size_t len);
