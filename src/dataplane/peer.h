/* Cross-node requests: a worker sends a request for a deployment without a free local replica
 * to a peer worker that has one, over one persistent TCP connection per peer on which many
 * requests travel at once (multiplexed by stream id; wire format in peer_wire.h). The peer
 * puts it into its own rings and streams the response back.
 *
 * Both directions are request-model citizens (request.h): a peer's replica set of a deployment
 * is a *backend* here (struct remote_target), and a request that arrives from a peer is served
 * through a *sink* (a stream of that peer's link). A peer is untrusted even when it is one of
 * ours: everything it sends is validated, its requests obey the HTTP limits of this node
 * (max_request_body_bytes, header limits, request_timeout_s) and the global request-body
 * budget, its link has a cap on streams, a budget of queued response bytes (past it, its
 * streams' replicas wait; a link that makes no progress is closed) and a progress timeout. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "http_parser.h"
#include "loop.h"
#include "netconn.h"
#include "peer_wire.h"
#include "router.h"
#include "tls.h"
#include "util.h"

/* A replica set of (app, deployment) on one peer, as the head last described it. */
struct remote_target {
        struct backend be;  /* be.link: in its group's backends */
        struct peer *peer;
        int ready;          /* ready replicas there */
        int capacity;       /* ready * max_ongoing: what we send at most at once */
        int inflight;       /* our requests there now */
        bool rejected;      /* it said it has none; skipped until the next update */
        struct remote_group *group;
        struct remote_target *hash_next; /* in the peers' target index */
};

struct remote_group {
        char *app, *name;
        struct list backends;            /* struct remote_target; never freed while requests may point at them */
        int placed;                      /* replicas placed in the whole cluster (maybe starting) */
        struct list link;
};

struct peers_options {
        struct http_limits limits;       /* for the heads of requests from peers */
        uint64_t max_body;               /* max_request_body_bytes */
        double request_timeout_s;        /* 0: none */
        double link_timeout_s;           /* a link that makes no progress this long is closed */
};

struct peers;

/* Creates the peer table; listens for peers' connections on host:port. Returns 0 or a
 * negative errno (logged). */
int peers_new(struct loop *loop, struct router *router, const char *host, int port, const struct peers_options *opts,
              struct peers **ret);
/* New limits from a reloaded config. */
void peers_set_options(struct peers *ps, const struct peers_options *opts);
/* Makes every data link mutually authenticated TLS: ours connect with `client` and peers'
 * are accepted with `server` (both verify against the cluster CA; the contexts are shared
 * with the caller, who may renew their certificate in place). A link is used only when the
 * certificate's unit is `unit` and it names the node we meant (outgoing) or a node of the
 * current peer list whose certificate is not revoked (incoming); anything else is closed
 * before a byte of it is read, and logged (rate-limited). Call before the first update. */
void peers_set_tls(struct peers *ps, struct tls_ctx *client, struct tls_ctx *server, const char *unit);
/* (Both contexts NULL: TLS is required but this node has no certificate yet: the data port
 * refuses every link and no link is made, until peers_set_tls() gives them.) */

/* Closes the listener and every connection (requests at peers fail). The loop must run
 * (loop_drain) before peers_free(), which frees the memory those operations refer to. */
void peers_stop(struct peers *ps);
void peers_free(struct peers *ps);

/* Starts describing a new peer list: every peer and target is marked unseen. */
void peers_update_begin(struct peers *ps);
/* Adds or refreshes peer `name` at address:port (connects in the background, reconnecting
 * with backoff). With TLS, its certificates with a serial below min_serial are revoked.
 * Returns the peer or NULL on allocation failure. */
struct peer *peers_update_node(struct peers *ps, const char *name, const char *address, int port, uint64_t min_serial);
/* The remote group of app/name (created when new), or NULL on allocation failure. */
struct remote_group *peers_group(struct peers *ps, const char *app, const char *name);
/* Says that `peer` has `ready` replicas of group g's deployment taking max_ongoing requests each. */
int peers_update_target(struct peers *ps, struct peer *peer, struct remote_group *g, int ready, int max_ongoing);
/* Ends the update: unseen targets get ready = 0, unseen peers are disconnected (their
 * requests fail over). */
void peers_update_end(struct peers *ps);

/* Points a deployment at its remote group (call after the supervisor applied a spec). */
void peers_attach(struct peers *ps, struct deployment *d);

/* Reconnects peers whose backoff passed, closes links without progress. Returns nanoseconds
 * until the next attempt. */
uint64_t peers_tick(struct peers *ps, uint64_t now);

/* True once after a peer connection came up: queued requests should be dispatched again. */
bool peers_take_kick(struct peers *ps);

/* Counters for /metrics. */
struct peer_stats {
        uint64_t sent, received, rejected, failed_over;
        uint64_t refused;     /* requests from peers refused by a limit (413, 503) */
        uint64_t links_dropped; /* peer links closed for misbehaving or not reading */
        uint64_t links_refused; /* TLS: no, foreign, revoked or unlisted certificate */
};
void peers_stats(const struct peers *ps, struct peer_stats *ret);
