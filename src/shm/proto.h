/* Records exchanged between the proxy and a replica over the segment's rings, and the
 * messages on the replica's control socket.
 *
 * All integers are native-endian (same machine). A request or response larger than one record
 * is split: a START record carries the metadata and the first body bytes, BODY records carry
 * the rest, in order, until body_len bytes have been sent. Variable parts follow the fixed
 * struct, in this order, with no padding between them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum proto_type {
        /* proxy -> replica (request ring) */
        PROTO_REQ_START = 1,  /* struct proto_req_start + method + path + query + headers + body chunk */
        PROTO_REQ_BODY = 2,   /* struct proto_body + data */
        PROTO_REQ_CANCEL = 3, /* struct proto_cancel: client gone or request timed out */
        PROTO_REQ_CREDIT = 4, /* struct proto_credit: a streaming response may send that many more bytes */
        PROTO_CALL_RESP_START = 5, /* struct proto_call_resp + body chunk: the answer to one of its calls */
        PROTO_CALL_RESP_BODY = 6,  /* struct proto_body (req_id = call id) + data */
        PROTO_CALL_RESP_END = 7,   /* struct proto_cancel (req_id = call id): a streamed answer is complete */
        /* replica -> proxy (response ring) */
        PROTO_RESP_START = 16, /* struct proto_resp_start + headers + body chunk */
        PROTO_RESP_BODY = 17,  /* struct proto_body + data */
        PROTO_RESP_END = 18,   /* struct proto_cancel: a streaming response is complete */
        PROTO_CALL_START = 19, /* struct proto_call_start + deployment + method + call path + arg chunk */
        PROTO_CALL_BODY = 20,  /* struct proto_body (req_id = call id) + data */
        PROTO_CALL_CANCEL = 21, /* struct proto_cancel (req_id = call id): nobody waits for it any more */
        PROTO_CALL_CREDIT = 22, /* struct proto_credit (req_id = call id): the caller read that many streamed bytes */
};

/* Bytes a streaming response (or a streamed call answer) may have in flight before the sender
 * waits for PROTO_*_CREDIT: what one stream can make its receiver hold. */
#define PROTO_STREAM_WINDOW (256u * 1024)

/* Each header in a START record: this struct, then name bytes, then value bytes. */
struct proto_header {
        uint32_t name_len;
        uint32_t value_len;
};

struct proto_req_start {
        uint64_t req_id;       /* chosen by the proxy; unique among the replica's in-flight ones */
        uint32_t handler;      /* index into the deployment's handlers; HTTP ingress uses 0 */
        uint32_t method_len;
        uint32_t path_len;     /* path after the route prefix, always starting with '/' */
        uint32_t query_len;
        uint16_t has_query;    /* 1 when the target had a '?' */
        uint16_t flags;        /* PROTO_REQ_* */
        uint32_t n_headers;
        uint32_t headers_len;  /* bytes of all proto_header entries with their names and values */
        uint32_t chunk_len;    /* body bytes in this record */
        uint64_t body_len;     /* total body bytes of the request */
};

/* proto_req_start.flags */
#define PROTO_REQ_CALL 1u      /* a handle call: method is the handler's name, path "/", headers
                                * "serve-caller" (the calling deployment) and "serve-call-path"
                                * (deployments the call chain went through, for cycle checks) */
#define PROTO_REQ_STREAM_OK 2u /* the sink takes a streaming response */

struct proto_body {
        uint64_t req_id;
        uint32_t len;
        uint32_t pad_;
};

struct proto_cancel {
        uint64_t req_id;
};

struct proto_resp_start {
        uint64_t req_id;
        uint32_t status;       /* 100..599 */
        uint32_t n_headers;
        uint32_t headers_len;
        uint32_t chunk_len;
        uint64_t body_len;     /* total body bytes of the response; 0 with PROTO_RESP_STREAM */
        uint32_t flags;        /* PROTO_RESP_STREAM: body in pieces until PROTO_RESP_END */
        uint32_t pad_;
};
#define PROTO_RESP_STREAM 1u

struct proto_credit {
        uint64_t req_id;
        uint64_t bytes;
};

/* A handle call. call_id is the replica's (never reused); parent_id is the request (req_id)
 * the calling handler serves, 0 when none: the call is cancelled with it. */
struct proto_call_start {
        uint64_t call_id;
        uint64_t parent_id;
        uint32_t flags;        /* PROTO_CALL_STREAM */
        uint32_t deployment_len;
        uint32_t method_len;
        uint32_t path_len;     /* the call path ("A>B>C": deployments it came through) */
        uint32_t chunk_len;    /* argument bytes in this record */
        uint32_t pad_;
        uint64_t body_len;     /* argument bytes in all */
};
#define PROTO_CALL_STREAM 1u

/* The answer to a call. status: the callee's, or the failure's (503 queue full, 504, 502...),
 * whose message is then the body. */
struct proto_call_resp {
        uint64_t call_id;
        uint32_t status;
        uint32_t flags;        /* PROTO_RESP_STREAM: pieces until PROTO_CALL_RESP_END */
        uint32_t chunk_len;
        uint32_t pad_;
        uint64_t body_len;     /* 0 with PROTO_RESP_STREAM */
};

/* A replica's outstanding calls: more is a protocol error (the replica is killed). */
#define PROTO_MAX_CALLS 4096u
#define PROTO_MAX_NAME 255u    /* deployment and method names in a call */
#define PROTO_MAX_CALL_PATH 1024u

/* Limits a replica's response must respect (the proxy answers 502 and kills the replica
 * otherwise). */
#define PROTO_MAX_RESP_HEADERS 64
#define PROTO_MAX_HEADER_BYTES (32u * 1024)
#define PROTO_MAX_RESP_BODY (1ull << 30)

/* Control socket (SOCK_SEQPACKET, one JSON object per message, at most PROTO_CTL_MAX bytes).
 *
 * supervisor -> replica, first message, with fds [memfd, req_bell, resp_bell]:
 *   {"type":"start","app":S,"deployment":S,"replica":S,"import_path":S,"module":PATH,
 *    "symbol":S,"args":JSON-text,"user_config":JSON-text|null,"max_ongoing_requests":N,
 *    "health_check_period_s":X}
 * supervisor -> replica later:
 *   {"type":"reconfigure","user_config":JSON-text|null}
 *   {"type":"stop","timeout_s":X}           finish in-flight work (at most X s), then exit 0
 * replica -> supervisor:
 *   {"type":"ready"}                        init done, serving the ring
 *   {"type":"error","message":S}            init (or reconfigure) failed; the replica exits
 *   {"type":"unhealthy","message":S}        check_health failed
 *   {"type":"reconfigured"}
 */
#define PROTO_CTL_MAX (256u * 1024)

/* A PROTO_*_BODY record: its struct proto_body, whose len must be what follows it. Returns
 * false for a record that is not one (the sender is broken). */
static inline bool proto_body_parse(const void *p, size_t len, struct proto_body *ret) {
        if (len < sizeof *ret)
                return false;
        memcpy(ret, p, sizeof *ret);
        return ret->len == len - sizeof *ret;
}

/* A name a handle call carries (deployment, method, call path): 1..max printable ASCII bytes
 * without spaces, since it travels in an HTTP header value. */
static inline bool proto_name_valid(const void *name, size_t len, size_t max) {
        const uint8_t *p = name;
        if (len == 0 || len > max)
                return false;
        for (size_t i = 0; i < len; i++)
                if (p[i] < 0x21 || p[i] > 0x7e)
                        return false;
        return true;
}
