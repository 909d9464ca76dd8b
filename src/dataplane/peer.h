/* Cross-node requests: a worker's proxy sends a request for a deployment without a free local
 * replica to a peer worker that has one, over one persistent TCP connection per peer on which
 * many requests travel at once (multiplexed by stream id). The peer puts it into its own rings
 * and streams the response back.
 *
 * Wire format: frames of a 16-byte header { u32 len; u8 type; u8 flags; u16 status; u64 stream }
 * (little-endian) and `len` payload bytes (<= PEER_FRAME_MAX). A request is one REQ frame and
 * then REQ_BODY frames until its body is complete; the frames of one request are contiguous on
 * the connection (one writer), so the receiver assembles at most one request at a time.
 *   REQ        payload: u16 app_len, u16 0, u32 head_len, u64 body_len, app, HTTP head, body...
 *   REQ_BODY   payload: body bytes
 *   CANCEL     the client went away
 *   RESP       status; payload: u64 body_len, u32 headers_len, u32 0, header lines, body...
 *   RESP_BODY  payload: body bytes
 *   REJECT     status; the peer has no replica for it (any more): the sender tries elsewhere
 *   FAIL       status (502/503/504); payload: reason text. The request failed at the peer.
 * Everything received is validated; a peer that sends nonsense is disconnected. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "netconn.h"
#include "router.h"
#include "util.h"

#define PEER_FRAME_MAX (1u << 20)

enum peer_frame_type {
        PEER_REQ = 1,
        PEER_REQ_BODY = 2,
        PEER_CANCEL = 3,
        PEER_RESP = 4,
        PEER_RESP_BODY = 5,
        PEER_REJECT = 6,
        PEER_FAIL = 7,
};

struct peer_frame_header {
        uint32_t len;
        uint8_t type;
        uint8_t flags;
        uint16_t status;
        uint64_t stream;
} __attribute__((packed));

/* A replica set of (app, deployment) on one peer, as the head last described it. */
struct remote_target {
        struct peer *peer;
        int ready;          /* ready replicas there */
        int capacity;       /* ready * max_ongoing: what we send at most at once */
        int inflight;       /* our requests there now */
        bool rejected;      /* it said it has none; skipped until the next update */
};

struct remote_group {
        char *app, *name;
        struct remote_target **targets; /* never freed while requests may point at them */
        size_t n_targets;
        int placed;                      /* replicas placed in the whole cluster (maybe starting) */
        struct list link;
};

struct peers;

/* Creates the peer table; listens for peers' connections on host:port. Returns 0 or a
 * negative errno (logged). */
int peers_new(struct loop *loop, struct router *router, const char *host, int port, const struct http_limits *limits,
              struct peers **ret);
/* Closes the listener and every connection (requests at peers fail). The loop must run
 * (loop_drain) before peers_free(), which frees the memory those operations refer to. */
void peers_stop(struct peers *ps);
void peers_free(struct peers *ps);

/* Starts describing a new peer list: every peer and target is marked unseen. */
void peers_update_begin(struct peers *ps);
/* Adds or refreshes peer `name` at address:port (connects in the background, reconnecting
 * with backoff). Returns the peer or NULL on allocation failure. */
struct peer *peers_update_node(struct peers *ps, const char *name, const char *address, int port);
/* Says that `peer` has `ready` replicas of app/name taking max_ongoing requests each. */
int peers_update_target(struct peers *ps, struct peer *peer, const char *app, const char *name, int ready, int max_ongoing);
/* Says how many replicas of app/name the head placed in the whole cluster. */
int peers_set_placed(struct peers *ps, const char *app, const char *name, int placed);
/* Ends the update: unseen targets get ready = 0, unseen peers are disconnected (their
 * requests fail over). */
void peers_update_end(struct peers *ps);

/* Points every deployment at its remote group (call after the supervisor applied a spec). */
void peers_attach(struct peers *ps, struct deployment *d);

/* Reconnects peers whose backoff passed. Returns nanoseconds until the next attempt. */
uint64_t peers_tick(struct peers *ps, uint64_t now);

/* ---- called by the router / proxy ---- */

/* A peer with free capacity for g (power of two choices on inflight/capacity), or NULL. */
struct remote_target *peer_pick(struct remote_group *g);
/* Sends u there. Never for requests that came from a peer (no forwarding loops). */
void peer_send(struct remote_target *t, struct upreq *u);
/* True when some peer has ready replicas of g, or replicas are placed on other nodes than
 * this one (local_target of them here) and will be ready: a request may wait for them. */
bool peer_group_available(const struct remote_group *g, int local_target);
/* The client went away: tell the peer, and stop waiting. */
void peer_cancel(struct upreq *u);

/* Responses for requests that came from a peer (u->stream != NULL). */
void peer_stream_response_begin(struct upreq *u, int status, const char *headers, size_t headers_len, uint64_t body_len);
void peer_stream_response_body(struct upreq *u, const void *data, size_t len);
void peer_stream_response_end(struct upreq *u);
void peer_stream_fail(struct upreq *u, int status, const char *why);
/* Forgets which peer waits for u (it was cancelled there). */
void peer_stream_detach(struct upreq *u);
/* The request could not be placed here at all: the sender should try another node. */
void peer_stream_reject(struct upreq *u, int status);

/* True once after a peer connection came up: queued requests should be dispatched again. */
bool peers_take_kick(struct peers *ps);

/* Counters for /metrics. */
struct peer_stats {
        uint64_t sent, received, rejected, failed_over;
};
void peers_stats(const struct peers *ps, struct peer_stats *ret);
