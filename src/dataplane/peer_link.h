/* What the data links' three files share (dataplane-internal): the peer table (peer.c), our
 * requests at peers, where a peer's replica set is a backend (peer_client.c), and peers'
 * requests here, where a stream of a link is a sink (peer_server.c). */
#pragma once

#include "peer.h"

#define MAX_TRIES 3                     /* nodes a request may be offered to */
#define BACKOFF_MIN_NS (100 * NSEC_PER_MSEC)
#define BACKOFF_MAX_NS (5 * NSEC_PER_SEC)
#define MAX_STREAMS_IN 1024u            /* requests one peer may have here at once */
#define STREAM_BUCKETS 256u             /* a power of two; chains stay short (<= 4 on average) */
#define MAX_LINKS_IN 4096u              /* peer links open at once on the data port */
/* A REQ frame's part before its body: fixed fields, application, HTTP head (<= 64 KiB). */
#define PEER_MAX_PREFIX (16u + PEER_MAX_APP + 65536u)
/* Response bytes queued to one peer before its streams stop taking more from the replicas
 * (they resume when it reads): what a peer that never reads can make us hold. */
#define LINK_OUT_BUDGET (4u << 20)
/* Past the budget, a sink may still receive one ring record (<= a quarter of a ring) and a few
 * small frames: the link is dropped only beyond this, plus PROTO_STREAM_WINDOW per streamed
 * response under way (its replica may send that much after room() said 0). */
#define LINK_OUT_LIMIT (LINK_OUT_BUDGET + (8u << 20))
/* Our own requests queued to a peer before it counts as busy (the router tries others). */
#define LINK_REQ_BUDGET (4u << 20)

struct peer {
        struct peers *ps;
        char *name, *address;
        int port;
        uint64_t min_serial;    /* TLS: its certificates below this serial are revoked */
        struct netconn *nc;
        bool up, seen, gone;
        uint64_t next_connect_ns, backoff_ns;
        /* Our requests there: stream id = (generation << 32) | slot. */
        struct request **slots;
        uint32_t n_slots, n_used, generation;
        uint32_t *free_slots;
        uint32_t n_free;
        /* A response whose sink is full: the link is not read until it has room. */
        struct request *blocked_on;
        struct loop_deferred unblock;
        struct list link;
        struct peer *hash_next;  /* in ps->peer_index's chain */
};

/* A connection from a peer that sends us its requests. Its streams are sinks. */
struct peer_in {
        struct peers *ps;
        struct netconn *nc;
        struct list buckets[STREAM_BUCKETS]; /* requests by stream id (request.sink_link) */
        unsigned n_streams, n_blocked;
        unsigned n_streaming;        /* streamed responses under way (each may overshoot the budget) */
        /* The request whose body frames are still coming (at most one: they are contiguous). */
        struct request *assembling;
        char assembling_app[PEER_MAX_APP + 1];
        uint64_t discard_stream;     /* or the stream whose body frames we drop */
        uint64_t discard_left;
        bool discarding;
        /* Body bytes of the current frame still to come: they are copied into the request (or
         * dropped) as they arrive, so a link never buffers a whole frame. */
        uint64_t frame_left;
        bool dead;                   /* torn down from the loop (teardown) */
        char *node;                  /* TLS: the node its certificate names, once authenticated */
        uint64_t serial;             /* ... and that certificate's serial */
        struct loop_deferred teardown;
        struct list link;
};

struct peers {
        struct loop *loop;
        struct router *router;
        struct peers_options opts;
        struct netlistener listener;
        struct list peers, groups, ins;
        /* Chained hash indexes (peers and targets are never freed before the table): a routing
         * update touches every node and ready count, so finding one must not scan them all. */
        struct peer **peer_index;           /* by name */
        struct remote_target **target_index; /* by (group, peer) */
        size_t peer_index_size, n_peers, target_index_size, n_targets;
        struct peer_stats stats;
        bool kick;
        struct tls_ctx *tls_client, *tls_server; /* NULL: plaintext, or not yet (tls_unit set) */
        const char *tls_unit;                    /* NULL: plaintext */
};

/* peer.c */
/* A node of the current peer list called name whose certificate serial is not revoked. */
bool peers_may_link(const struct peers *ps, const char *name, uint64_t serial);

/* peer_client.c */
extern const struct backend_ops peer_remote_backend_ops;
/* Connects to p in the background (with backoff on failure). */
void peer_connect(struct peer *p);
/* Drops p's link; its requests fail over (502 where they cannot). */
void peer_disconnect(struct peer *p, const char *why);
void peer_unblock(struct loop_deferred *d);

/* peer_server.c */
/* A peer connected to the data port. */
void peer_in_accept(struct netlistener *l, int fd);
/* Closes a peer's link now (the worker stops): its requests are abandoned. */
void peer_in_close(struct peer_in *pin);

