/* Records exchanged between the proxy and a replica over the segment's rings, and the
 * messages on the replica's control socket.
 *
 * All integers are native-endian (same machine). A request or response larger than one record
 * is split: a START record carries the metadata and the first body bytes, BODY records carry
 * the rest, in order, until body_len bytes have been sent. Variable parts follow the fixed
 * struct, in this order, with no padding between them. */
#pragma once

#include <stdint.h>

enum proto_type {
        /* proxy -> replica (request ring) */
        PROTO_REQ_START = 1,  /* struct proto_req_start + method + path + query + headers + body chunk */
        PROTO_REQ_BODY = 2,   /* struct proto_body + data */
        PROTO_REQ_CANCEL = 3, /* struct proto_cancel: client gone or request timed out */
        /* replica -> proxy (response ring) */
        PROTO_RESP_START = 16, /* struct proto_resp_start + headers + body chunk */
        PROTO_RESP_BODY = 17,  /* struct proto_body + data */
};

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
        uint32_t has_query;    /* 1 when the target had a '?' */
        uint32_t n_headers;
        uint32_t headers_len;  /* bytes of all proto_header entries with their names and values */
        uint32_t chunk_len;    /* body bytes in this record */
        uint64_t body_len;     /* total body bytes of the request */
};

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
        uint64_t body_len;     /* total body bytes of the response */
};

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
