#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "peer.h"
#include "proto.h"

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
 * small frames: the link is dropped only beyond this. */
#define LINK_OUT_LIMIT (LINK_OUT_BUDGET + (8u << 20))
/* Our own requests queued to a peer before it counts as busy (the router tries others). */
#define LINK_REQ_BUDGET (4u << 20)

struct peer {
        struct peers *ps;
        char *name, *address;
        int port;
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
};

/* A connection from a peer that sends us its requests. Its streams are sinks. */
struct peer_in {
        struct peers *ps;
        struct netconn *nc;
        struct list buckets[STREAM_BUCKETS]; /* requests by stream id (request.sink_link) */
        unsigned n_streams, n_blocked;
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
        struct loop_deferred teardown;
        struct list link;
};

struct peers {
        struct loop *loop;
        struct router *router;
        struct peers_options opts;
        struct netlistener listener;
        struct list peers, groups, ins;
        struct peer_stats stats;
        bool kick;
};

static const struct netconn_ops out_ops, in_ops;
static void out_on_data(struct netconn *nc);
static void on_unblock(struct loop_deferred *d);
static void remote_resume(struct request *q);
static const struct backend_ops remote_backend_ops;
static const struct sink_ops stream_sink_ops;

/* ---- the peer table ---- */

static struct remote_group *group_find(struct peers *ps, const char *app, const char *name, bool create) {
        struct list *pos, *tmp;
        struct remote_group *g;

        list_for_each_safe(pos, tmp, &ps->groups) {
                g = list_entry(pos, struct remote_group, link);
                if (streq(g->app, app) && streq(g->name, name))
                        return g;
        }
        if (!create)
                return NULL;
        g = calloc(1, sizeof *g);
        if (!g || !(g->app = strdup(app)) || !(g->name = strdup(name))) {
                if (g)
                        free(g->app);
                free(g);
                return NULL;
        }
        list_init(&g->backends);
        list_add_tail(&ps->groups, &g->link);
        return g;
}

/* q is done at its peer (answered, failed or rejected): release its slot. */
static void out_release(struct peer *p, struct request *q) {
        uint32_t slot = (uint32_t)q->backend_id;
        struct remote_target *t = list_entry(q->backend, struct remote_target, be);

        p->slots[slot] = NULL;
        p->free_slots[p->n_free++] = slot;
        p->n_used--;
        t->inflight--;
        q->dep->remote_inflight--;
        q->backend = NULL;
}

static void peer_fail_all(struct peer *p, const char *why) {
        p->blocked_on = NULL;
        loop_undefer(&p->unblock);
        for (uint32_t i = 0; i < p->n_slots; i++) {
                struct request *q = p->slots[i];
                if (!q)
                        continue;
                out_release(p, q);
                if (request_waiting(q))
                        request_fail(q, 502, why);
                else
                        request_release(q);
        }
        p->generation++;
}

static void peer_disconnect(struct peer *p, const char *why) {
        if (p->nc) {
                p->nc->userdata = NULL;
                netconn_close(p->nc, false);
                p->nc = NULL;
        }
        p->up = false;
        peer_fail_all(p, why);
}

static void out_on_connect(struct netconn *nc) {
        struct peer *p = nc->userdata;
        p->up = true;
        p->backoff_ns = 0;
        log_info("data connection to node %s (%s) is up", p->name, nc->peer);
        p->ps->kick = true; /* requests that waited for a peer may go now */
}

static void backoff(struct peer *p) {
        p->backoff_ns = p->backoff_ns ? MIN(BACKOFF_MAX_NS, p->backoff_ns * 2) : BACKOFF_MIN_NS;
        p->next_connect_ns = now_ns() + p->backoff_ns;
}

static void out_on_close(struct netconn *nc, int err) {
        struct peer *p = nc->userdata;
        if (!p)
                return;
        if (p->up)
                log_warning("data connection to node %s lost: %s", p->name, err ? strerror(-err) : "closed by the peer");
        p->nc = NULL;
        p->up = false;
        backoff(p);
        peer_fail_all(p, "the node serving the request went away");
}

static void peer_connect(struct peer *p) {
        int r = netconn_connect(p->ps->loop, p->address, p->port, &out_ops, p, &p->nc);
        if (r < 0) {
                p->nc = NULL;
                backoff(p);
                log_debug("cannot connect to node %s at %s:%d: %s", p->name, p->address, p->port, strerror(-r));
                return;
        }
        /* Our own requests: at most the busy budget plus one request's body. */
        p->nc->out_limit = LINK_REQ_BUDGET + (size_t)MIN(p->ps->opts.max_body, (uint64_t)SIZE_MAX / 4) + (2u << 20);
        p->nc->in_limit = 2 * PEER_FRAME_MAX + 64;
}

void peers_update_begin(struct peers *ps) {
        struct list *pos, *tmp, *p2;
        list_for_each_safe(pos, tmp, &ps->peers)
                list_entry(pos, struct peer, link)->seen = false;
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                for (p2 = g->backends.next; p2 != &g->backends; p2 = p2->next) {
                        struct remote_target *t = list_entry(p2, struct remote_target, be.link);
                        t->ready = 0;
                        t->capacity = 0;
                }
        }
}

struct peer *peers_update_node(struct peers *ps, const char *name, const char *address, int port) {
        struct list *pos, *tmp;
        struct peer *p;

        list_for_each_safe(pos, tmp, &ps->peers) {
                p = list_entry(pos, struct peer, link);
                if (!streq(p->name, name))
                        continue;
                p->seen = true;
                if (p->gone) {
                        p->gone = false;
                        p->next_connect_ns = 0;
                }
                if (!streq(p->address, address) || p->port != port) {
                        char *a = strdup(address);
                        if (!a)
                                return NULL;
                        free(p->address);
                        p->address = a;
                        p->port = port;
                        peer_disconnect(p, "the node moved");
                        peer_connect(p);
                }
                return p;
        }
        p = calloc(1, sizeof *p);
        if (!p || !(p->name = strdup(name)) || !(p->address = strdup(address))) {
                if (p)
                        free(p->name);
                free(p);
                return NULL;
        }
        p->ps = ps;
        p->port = port;
        p->seen = true;
        p->unblock.fn = on_unblock;
        list_init(&p->unblock.link);
        list_add_tail(&ps->peers, &p->link);
        peer_connect(p);
        return p;
}

int peers_update_target(struct peers *ps, struct peer *peer, const char *app, const char *name, int ready, int max_ongoing) {
        struct remote_group *g = group_find(ps, app, name, true);
        struct remote_target *t = NULL;
        struct list *pos;

        if (!g)
                return -ENOMEM;
        for (pos = g->backends.next; pos != &g->backends; pos = pos->next)
                if (list_entry(pos, struct remote_target, be.link)->peer == peer)
                        t = list_entry(pos, struct remote_target, be.link);
        if (!t) {
                t = calloc(1, sizeof *t);
                if (!t)
                        return -ENOMEM;
                t->peer = peer;
                t->be.ops = &remote_backend_ops;
                list_add_tail(&g->backends, &t->be.link);
        }
        t->ready = ready;
        t->capacity = ready * MAX(max_ongoing, 1);
        t->rejected = false;
        return 0;
}

void peers_update_end(struct peers *ps) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                if (p->seen || p->gone)
                        continue;
                p->gone = true;
                /* A dead or removed node: fail over now; targets pointing at it have ready 0 and
                 * stay (requests may still reference them) until we exit. */
                log_info("node %s left the cluster: no longer routing to it", p->name);
                peer_disconnect(p, "the node serving the request left the cluster");
                p->next_connect_ns = UINT64_MAX;
        }
}

int peers_set_placed(struct peers *ps, const char *app, const char *name, int placed) {
        struct remote_group *g = group_find(ps, app, name, true);
        if (!g)
                return -ENOMEM;
        g->placed = placed;
        return 0;
}

void peers_attach(struct peers *ps, struct deployment *d) {
        struct remote_group *g = group_find(ps, d->app, d->name, true);

        d->remote = g;
        d->remote_backends = g ? &g->backends : NULL;
        d->remote_placed = g ? &g->placed : NULL;
        if (d->queue_len > 0)
                router_dispatch(ps->router, d);
}

uint64_t peers_tick(struct peers *ps, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t next = 100 * NSEC_PER_MSEC;

        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                if (p->nc || !p->seen)
                        continue;
                if (now >= p->next_connect_ns)
                        peer_connect(p);
                else
                        next = MIN(next, p->next_connect_ns - now);
        }
        return next;
}

/* ---- our requests at peers: a remote target is a backend ---- */

static bool remote_available(const struct backend *b) {
        const struct remote_target *t = list_entry(b, struct remote_target, be);
        return t->peer->up && !t->rejected && t->ready > 0 && t->inflight < t->capacity &&
               netconn_unsent(t->peer->nc) < LINK_REQ_BUDGET;
}

static bool remote_may_serve(const struct backend *b) {
        const struct remote_target *t = list_entry(b, struct remote_target, be);
        return t->ready > 0 && !t->rejected && t->peer->seen;
}

static double remote_load(const struct backend *b) {
        const struct remote_target *t = list_entry(b, struct remote_target, be);
        return t->capacity > 0 ? (double)t->inflight / t->capacity : 1e9;
}

static int slot_alloc(struct peer *p, uint32_t *ret) {
        if (p->n_free == 0) {
                uint32_t n = p->n_slots ? p->n_slots * 2 : 64;
                struct request **s = realloc(p->slots, n * sizeof *s);
                if (!s)
                        return -ENOMEM;
                p->slots = s;
                uint32_t *f = realloc(p->free_slots, n * sizeof *f);
                if (!f)
                        return -ENOMEM;
                p->free_slots = f;
                for (uint32_t i = n; i > p->n_slots; i--) {
                        p->slots[i - 1] = NULL;
                        p->free_slots[p->n_free++] = i - 1;
                }
                p->n_slots = n;
        }
        *ret = p->free_slots[--p->n_free];
        return 0;
}

static void remote_send(struct backend *b, struct request *q) {
        struct remote_target *t = list_entry(b, struct remote_target, be);
        struct peer *p = t->peer;
        uint64_t sid;
        uint32_t slot;
        int r;

        if (slot_alloc(p, &slot) < 0) {
                request_fail(q, 503, "out of memory");
                return;
        }
        sid = (uint64_t)p->generation << 32 | slot;
        r = peer_wire_put_req(netconn_outbuf(p->nc), p->nc->out_limit, sid, q->dep->app, strlen(q->dep->app), q->raw,
                              q->head_len, q->body, q->body_len);
        if (r < 0) {
                p->free_slots[p->n_free++] = slot;
                request_fail(q, r == -EMSGSIZE ? 431 : 503,
                             r == -EMSGSIZE ? "the request head is too large to forward" : "the link to the node is full");
                return;
        }
        p->slots[slot] = q;
        p->n_used++;
        q->backend = b;
        q->backend_id = sid;
        q->state = REQUEST_SENT;
        t->inflight++;
        q->dep->remote_inflight++;
        p->ps->stats.sent++;
        netconn_flush(p->nc);
}

static void remote_cancel(struct request *q) {
        struct peer *p = list_entry(q->backend, struct remote_target, be)->peer;

        remote_resume(q);
        /* The slot stays until the peer answers; the rest of its response is discarded. */
        if (p->nc && peer_wire_put(netconn_outbuf(p->nc), p->nc->out_limit, PEER_CANCEL, 0, q->backend_id, NULL, 0,
                                   NULL, 0) == 0)
                netconn_flush(p->nc);
}

/* Reading the link again (from the loop: the caller may be the sink itself). */
static void on_unblock(struct loop_deferred *d) {
        struct peer *p = list_entry(d, struct peer, unblock);

        if (!p->nc || p->blocked_on)
                return;
        netconn_pause(p->nc, false);
        out_on_data(p->nc); /* frames that were already here */
}

/* The sink that stopped the link has room again, or is gone. Other responses on the link
 * waited meanwhile (one link per peer); a sink that never reads is dropped by its own send
 * timeout, which ends the wait. */
static void remote_resume(struct request *q) {
        struct peer *p = list_entry(q->backend, struct remote_target, be)->peer;

        if (p->blocked_on != q)
                return;
        p->blocked_on = NULL;
        loop_defer(p->ps->loop, &p->unblock);
}

static const struct backend_ops remote_backend_ops = {
        .available = remote_available,
        .may_serve = remote_may_serve,
        .load = remote_load,
        .send = remote_send,
        .cancel = remote_cancel,
        .resume = remote_resume,
};

static struct request *out_lookup(struct peer *p, uint64_t sid) {
        uint32_t slot = (uint32_t)sid;
        if ((uint32_t)(sid >> 32) != p->generation || slot >= p->n_slots)
                return NULL;
        return p->slots[slot];
}

static void finish_out(struct peer *p, struct request *q) {
        struct deployment *dep = q->dep;

        out_release(p, q);
        q->state = REQUEST_DONE;
        if (request_waiting(q))
                request_end(q);
        else
                request_release(q);
        router_dispatch(p->ps->router, dep);
}

/* After delivering to q: when its sink is full, stop reading the link until it has room. */
static void block_if_full(struct peer *p, struct request *q) {
        if (!request_waiting(q) || request_room(q) > 0)
                return;
        q->sink_blocked = true;
        p->blocked_on = q;
        netconn_pause(p->nc, true);
}

/* Returns 0, or -EBADMSG to drop the connection. */
static int out_frame(struct peer *p, const struct peer_frame_header *h, const char *pl) {
        struct request *q = out_lookup(p, h->stream);
        struct deployment *dep;
        struct peer_resp resp;

        if (!q)
                return -EBADMSG;
        switch (h->type) {
        case PEER_RESP:
                if (q->state == REQUEST_RESPONDING || peer_wire_parse_resp(h, pl, PROTO_MAX_RESP_BODY, &resp) < 0)
                        return -EBADMSG;
                q->state = REQUEST_RESPONDING;
                q->resp_body_len = resp.body_len;
                q->resp_received = resp.body_here;
                request_begin(q, h->status, resp.headers, resp.headers_len, resp.body_len);
                request_body(q, resp.body, resp.body_here);
                if (q->resp_received == q->resp_body_len)
                        finish_out(p, q);
                else
                        block_if_full(p, q);
                return 0;
        case PEER_RESP_BODY:
                if (q->state != REQUEST_RESPONDING || h->len > q->resp_body_len - q->resp_received)
                        return -EBADMSG;
                q->resp_received += h->len;
                request_body(q, pl, h->len);
                if (q->resp_received == q->resp_body_len)
                        finish_out(p, q);
                else
                        block_if_full(p, q);
                return 0;
        case PEER_REJECT:
        case PEER_FAIL:
                if (q->state == REQUEST_RESPONDING)
                        return -EBADMSG;
                dep = q->dep;
                if (h->type == PEER_REJECT)
                        list_entry(q->backend, struct remote_target, be)->rejected = true;
                out_release(p, q);
                if (!request_waiting(q)) {
                        request_release(q);
                } else if (h->type == PEER_REJECT && q->tries < MAX_TRIES) {
                        /* It has no replica after all (scaled away since the head told us):
                         * offer it elsewhere, here or on another node. */
                        p->ps->stats.failed_over++;
                        q->state = REQUEST_NEW;
                        if (router_submit(p->ps->router, q, 0) < 0)
                                request_fail(q, 503, "no replicas for this deployment");
                } else {
                        char why[256];
                        int st = h->status >= 400 && h->status <= 599 ? h->status : 502;
                        snprintf(why, sizeof why, "%.*s", (int)MIN(h->len, 200u), h->type == PEER_FAIL ? pl : "no replica");
                        request_fail(q, st, why);
                }
                router_dispatch(p->ps->router, dep);
                return 0;
        default:
                return -EBADMSG;
        }
}

static void out_on_data(struct netconn *nc) {
        struct peer *p = nc->userdata;
        struct peer_frame_header h;
        const char *pl;
        int r;

        while (p && !p->blocked_on && (r = peer_wire_next(nc->in.data, nc->in.len, &h, &pl)) != 0) {
                if (r < 0 || out_frame(p, &h, pl) < 0) {
                        log_error("node %s sent an invalid frame (type %u): disconnecting", p->name, h.type);
                        p->ps->stats.links_dropped++;
                        peer_disconnect(p, "the node serving the request sent garbage");
                        backoff(p);
                        return;
                }
                buf_consume(&nc->in, sizeof h + h.len);
                p = nc->userdata;
        }
}

static const struct netconn_ops out_ops = {
        .on_connect = out_on_connect,
        .on_data = out_on_data,
        .on_close = out_on_close,
};

/* ---- requests from peers: a stream is a sink ---- */

static struct list *bucket_of(struct peer_in *pin, uint64_t stream) {
        uint64_t h = stream * 0x9e3779b97f4a7c15ull;
        return &pin->buckets[(h >> 32) & (STREAM_BUCKETS - 1)];
}

/* The request of `stream`, in O(1) (streams are capped, buckets are as many). */
static struct request *stream_find(struct peer_in *pin, uint64_t stream) {
        struct list *b = bucket_of(pin, stream), *pos;

        for (pos = b->next; pos != b; pos = pos->next) {
                struct request *q = list_entry(pos, struct request, sink_link);
                if (q->sink_id == stream)
                        return q;
        }
        return NULL;
}

/* Queues a frame to the peer. A peer that lets more than LINK_OUT_LIMIT pile up is torn down. */
static void in_send(struct peer_in *pin, uint8_t type, uint16_t status, uint64_t stream, const void *p, size_t l);
static void in_teardown_later(struct peer_in *pin, const char *why);

static bool in_writable(const struct peer_in *pin) { return !pin->dead && pin->nc && !pin->nc->closed; }

static void in_send(struct peer_in *pin, uint8_t type, uint16_t status, uint64_t stream, const void *p, size_t l) {
        if (!in_writable(pin))
                return;
        if (peer_wire_put(netconn_outbuf(pin->nc), LINK_OUT_LIMIT, type, status, stream, p, l, NULL, 0) < 0) {
                in_teardown_later(pin, "it does not read its responses");
                return;
        }
        netconn_flush(pin->nc);
}

static void stream_gone(struct request *q) {
        struct peer_in *pin = q->sink_ctx;

        pin->n_streams--;
        if (q->sink_blocked && pin->n_blocked)
                pin->n_blocked--;
        q->sink_blocked = false;
}

static void stream_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        struct peer_in *pin = q->sink_ctx;

        if (!in_writable(pin))
                return;
        if (peer_wire_put_resp(netconn_outbuf(pin->nc), LINK_OUT_LIMIT, q->sink_id, status, headers, headers_len,
                               body_len) < 0) {
                in_teardown_later(pin, "it does not read its responses");
                return;
        }
        netconn_flush(pin->nc);
}

static void stream_body(struct request *q, const void *data, size_t len) {
        struct peer_in *pin = q->sink_ctx;

        if (!in_writable(pin))
                return;
        if (peer_wire_put_body(netconn_outbuf(pin->nc), LINK_OUT_LIMIT, PEER_RESP_BODY, q->sink_id, data, len) < 0) {
                in_teardown_later(pin, "it does not read its responses");
                return;
        }
        netconn_flush(pin->nc);
}

static size_t stream_room(const struct request *q) {
        struct peer_in *pin = q->sink_ctx;
        size_t unsent;

        if (!in_writable(pin))
                return SIZE_MAX; /* being torn down: what comes is discarded */
        unsent = netconn_unsent(pin->nc);
        if (unsent < LINK_OUT_BUDGET)
                return LINK_OUT_BUDGET - unsent;
        if (!q->sink_blocked)
                pin->n_blocked++; /* the backend sets sink_blocked when it stops */
        return 0;
}

static void stream_end(struct request *q) { stream_gone(q); }

static void stream_fail(struct request *q, int status, const char *why) {
        in_send(q->sink_ctx, PEER_FAIL, (uint16_t)status, q->sink_id, why, strlen(why));
        stream_gone(q);
}

static void stream_reject(struct request *q, int status) {
        struct peer_in *pin = q->sink_ctx;

        pin->ps->stats.rejected++;
        in_send(pin, PEER_REJECT, (uint16_t)status, q->sink_id, NULL, 0);
        stream_gone(q);
}

static const struct sink_ops stream_sink_ops = {
        .begin = stream_begin,
        .body = stream_body,
        .end = stream_end,
        .fail = stream_fail,
        .reject = stream_reject,
        .room = stream_room,
};

static void in_on_data(struct netconn *nc);

/* The peer reads again: streams whose replicas waited may go on, and so may its requests. */
static void in_on_drain(struct netconn *nc) {
        struct peer_in *pin = nc->userdata;

        if (!pin || pin->dead)
                return;
        if (nc->paused) {
                netconn_pause(nc, false);
                (void)netconn_set_idle_timeout(nc, 0);
                in_on_data(nc);
        }
        if (pin->n_blocked == 0)
                return;
        pin->n_blocked = 0;
        for (unsigned i = 0; i < STREAM_BUCKETS; i++) {
                struct list *pos, *tmp;
                list_for_each_safe(pos, tmp, &pin->buckets[i]) {
                        struct request *q = list_entry(pos, struct request, sink_link);
                        if (q->sink_blocked)
                                request_sink_ready(q);
                }
        }
}

/* Refuses a request that arrived whole or whose body is still coming: answers it now and drops
 * its body frames as they arrive. */
static void in_refuse(struct peer_in *pin, uint64_t stream, uint64_t body_left, uint8_t type, int status, const char *why) {
        pin->ps->stats.refused += type == PEER_FAIL;
        if (type == PEER_REJECT)
                pin->ps->stats.rejected++;
        in_send(pin, type, (uint16_t)status, stream, why, why ? strlen(why) : 0);
        if (body_left) {
                pin->discarding = true;
                pin->discard_stream = stream;
                pin->discard_left = body_left;
        }
}

/* The whole request is here: route it like one from a client, on its normalised path. */
static void in_submit(struct peer_in *pin, struct request *q, const char *app, size_t app_len) {
        int r;

        pin->assembling = NULL;
        if (!router_route_of_app(pin->ps->router, app, app_len)) {
                /* Not (or no longer) an application here: the sender tries elsewhere. */
                request_reject(q, 503);
                return;
        }
        if (!router_route(pin->ps->router, q, app, app_len)) {
                request_fail(q, 404, "the path is not under the application's route_prefix");
                return;
        }
        q->start_ns = loop_now(pin->ps->loop);
        pin->ps->stats.received++;
        r = router_submit(pin->ps->router, q, pin->ps->opts.request_timeout_s);
        if (r == -ENOENT)
                request_reject(q, 503);
        else if (r < 0)
                request_fail(q, 503, "queue full: too many requests waiting for this deployment");
}

/* The start of a REQ frame (its body comes after, as frame_left bytes and REQ_BODY frames).
 * Returns 0, or -EBADMSG to drop the connection. */
static int in_request(struct peer_in *pin, const struct peer_frame_header *h, const struct peer_req *req) {
        const struct peers_options *o = &pin->ps->opts;
        struct peer_req pr = *req;
        struct request *q;
        int r;

        if (stream_find(pin, h->stream))
                return -EBADMSG; /* a stream id still in use is a protocol error */
        uint64_t body_left = pr.body_len;
        if (pin->n_streams >= MAX_STREAMS_IN) {
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 503, "too many requests from this node at once");
                return 0;
        }
        if (pr.body_len > o->max_body) {
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 413, "the body is larger than max_request_body_bytes");
                return 0;
        }
        if (pr.head_len > o->limits.max_head) {
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 431, "the request head is too large");
                return 0;
        }
        q = request_new(&stream_sink_ops, pin, h->stream);
        if (!q)
                return -EBADMSG;
        if (request_body_reserve(q, pr.head_len + pr.body_len) < 0) {
                request_free(q);
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 503, "the node's request-body budget is exhausted");
                return 0;
        }
        q->raw = malloc(pr.head_len + (size_t)pr.body_len + 1);
        if (!q->raw) {
                request_free(q);
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 503, "out of memory");
                return 0;
        }
        memcpy(q->raw, pr.head, pr.head_len);
        r = http_parse_request(q->raw, pr.head_len, 0, &o->limits, &q->req);
        if (r != (int)pr.head_len) {
                request_free(q);
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 400, "invalid request head");
                return 0;
        }
        if (request_normalize_path(q) < 0) {
                request_free(q);
                in_refuse(pin, h->stream, body_left, PEER_FAIL, 400, "the path climbs above /");
                return 0;
        }
        q->head_len = pr.head_len;
        q->body = q->raw + pr.head_len;
        q->body_len = pr.body_len;
        q->local_only = true;
        q->body_sent = 0; /* body bytes received so far (reset when submitted) */
        list_add_tail(bucket_of(pin, h->stream), &q->sink_link);
        pin->n_streams++;
        if (body_left == 0) {
                q->body_sent = 0;
                in_submit(pin, q, pr.app, pr.app_len);
                return 0;
        }
        pin->assembling = q;
        memcpy(pin->assembling_app, pr.app, pr.app_len);
        pin->assembling_app[pr.app_len] = 0;
        return 0;
}

/* n body bytes of the request being received (or of one being dropped). */
static void in_body_bytes(struct peer_in *pin, const char *data, size_t n) {
        struct request *q = pin->assembling;

        if (pin->discarding) {
                pin->discard_left -= n;
                pin->discarding = pin->discard_left > 0;
                return;
        }
        memcpy((char *)q->body + q->body_sent, data, n);
        q->body_sent += n;
        if (q->body_sent == q->body_len) {
                q->body_sent = 0;
                in_submit(pin, q, pin->assembling_app, strlen(pin->assembling_app));
        }
}

/* The next frame's header (and for REQ its head) at the start of the link's input. Returns the
 * bytes to consume (> 0), 0 when more must arrive, or -EBADMSG to drop the connection. */
static ssize_t in_frame_start(struct peer_in *pin, const char *data, size_t len) {
        const size_t hdr = sizeof(struct peer_frame_header);
        struct peer_frame_header h;
        struct request *q = pin->assembling;
        struct peer_req pr;
        size_t need;
        int r;

        if (len < hdr)
                return 0;
        memcpy(&h, data, hdr);
        if (h.len > PEER_FRAME_MAX)
                return -EBADMSG;
        /* The frames of one request are contiguous. */
        if ((q || pin->discarding) &&
            (h.type != PEER_REQ_BODY || h.stream != (q ? q->sink_id : pin->discard_stream)))
                return -EBADMSG;
        switch (h.type) {
        case PEER_REQ:
                r = peer_wire_req_start(&h, data + hdr, len - hdr, &pr, &need);
                if (r == -EAGAIN)
                        return need <= PEER_MAX_PREFIX ? 0 : -EBADMSG;
                if (r < 0 || pr.prefix_len > PEER_MAX_PREFIX || in_request(pin, &h, &pr) < 0)
                        return -EBADMSG;
                pin->frame_left = h.len - pr.prefix_len;
                return (ssize_t)(hdr + pr.prefix_len);
        case PEER_REQ_BODY:
                if (!q && !pin->discarding)
                        return -EBADMSG;
                if (h.len > (q ? q->body_len - q->body_sent : pin->discard_left))
                        return -EBADMSG;
                pin->frame_left = h.len;
                return (ssize_t)hdr;
        case PEER_CANCEL:
                if (h.len != 0)
                        return -EBADMSG;
                /* Unknown streams are ignored: the answer may have crossed the cancel. */
                if ((q = stream_find(pin, h.stream))) {
                        stream_gone(q);
                        request_abandon(q);
                }
                return (ssize_t)hdr;
        default:
                return -EBADMSG; /* responses never travel this way */
        }
}

/* Every request of the link is abandoned like those of a client that went away. */
static void in_free(struct peer_in *pin) {
        loop_undefer(&pin->teardown);
        for (unsigned i = 0; i < STREAM_BUCKETS; i++) {
                while (!list_empty(&pin->buckets[i])) {
                        struct request *q = list_first(&pin->buckets[i], struct request, sink_link);
                        stream_gone(q);
                        request_abandon(q); /* takes it off the bucket */
                }
        }
        list_del(&pin->link);
        free(pin);
}

static void on_teardown(struct loop_deferred *d) {
        struct peer_in *pin = list_entry(d, struct peer_in, teardown);

        if (pin->nc) {
                pin->nc->userdata = NULL;
                netconn_close(pin->nc, false);
                pin->nc = NULL;
        }
        in_free(pin);
}

/* Drops the link from the loop: callers may be inside one of its streams' callbacks. */
static void in_teardown_later(struct peer_in *pin, const char *why) {
        if (pin->dead)
                return;
        pin->dead = true;
        pin->ps->stats.links_dropped++;
        static struct log_limiter limiter;
        log_limited(&limiter, LOG_WARNING, "peer %s: closing its data link: %s", pin->nc ? pin->nc->peer : "?", why);
        loop_defer(pin->ps->loop, &pin->teardown);
}

static void in_on_data(struct netconn *nc) {
        struct peer_in *pin = nc->userdata;
        ssize_t n;

        while (pin && !pin->dead) {
                if (netconn_unsent(nc) >= LINK_OUT_BUDGET) {
                        /* It does not read what we owe it: read nothing more from it (its bytes
                         * wait in the kernel) until it does; if it never does, the progress
                         * timeout drops the link. */
                        netconn_pause(nc, true);
                        (void)netconn_set_idle_timeout(nc, sec_to_ns(pin->ps->opts.link_timeout_s));
                        return;
                }
                if (pin->frame_left > 0) {
                        n = (ssize_t)MIN(pin->frame_left, (uint64_t)nc->in.len);
                        if (n == 0)
                                break;
                        pin->frame_left -= (uint64_t)n;
                        in_body_bytes(pin, nc->in.data, (size_t)n);
                } else if ((n = in_frame_start(pin, nc->in.data, nc->in.len)) == 0)
                        break;
                if (n < 0) {
                        in_teardown_later(pin, "it sent an invalid frame");
                        return;
                }
                buf_consume(&nc->in, (size_t)n);
        }
        if (!pin || pin->dead)
                return;
        /* Idle between requests, a link may stay open (it is capped); in the middle of a frame
         * or a request it must make progress, or it holds a request's body budget for nothing. */
        bool midway = nc->in.len > 0 || pin->frame_left > 0 || pin->assembling || pin->discarding;
        (void)netconn_set_idle_timeout(nc, midway ? sec_to_ns(pin->ps->opts.link_timeout_s) : 0);
}

static void in_on_close(struct netconn *nc, int err) {
        struct peer_in *pin = nc->userdata;

        if (!pin)
                return;
        if (err < 0 && err != -ECONNRESET && err != -EPIPE) {
                /* Closed for the peer's behaviour (no progress, too much unread), not by it. */
                static struct log_limiter limiter;
                pin->ps->stats.links_dropped++;
                log_limited(&limiter, LOG_WARNING, "peer %s: closed its data link: %s", nc->peer,
                            err == -ETIMEDOUT ? "no progress within the link timeout" : strerror(-err));
        }
        pin->nc = NULL;
        in_free(pin);
}

static const struct netconn_ops in_ops = {
        .on_data = in_on_data,
        .on_close = in_on_close,
        .on_drain = in_on_drain,
};

static void on_peer_accept(struct netlistener *l, int fd) {
        struct peers *ps = l->userdata;
        struct peer_in *pin = calloc(1, sizeof *pin);

        if (!pin) {
                close(fd);
                return;
        }
        pin->ps = ps;
        for (unsigned i = 0; i < STREAM_BUCKETS; i++)
                list_init(&pin->buckets[i]);
        pin->teardown.fn = on_teardown;
        list_init(&pin->teardown.link);
        if (netconn_adopt(ps->loop, fd, &in_ops, pin, &pin->nc) < 0) {
                free(pin);
                return;
        }
        /* Body bytes are copied out as they arrive: a link buffers at most a frame's head part
         * and what one read brings. */
        pin->nc->in_limit = PEER_MAX_PREFIX + sizeof(struct peer_frame_header) + (512u << 10);
        pin->nc->out_limit = LINK_OUT_LIMIT + PEER_FRAME_MAX;
        list_add_tail(&ps->ins, &pin->link);
        log_debug("peer connected from %s", pin->nc->peer);
}

int peers_new(struct loop *loop, struct router *router, const char *host, int port, const struct peers_options *opts,
              struct peers **ret) {
        struct peers *ps = calloc(1, sizeof *ps);
        int r;

        if (!ps)
                return -ENOMEM;
        ps->loop = loop;
        ps->router = router;
        ps->opts = *opts;
        list_init(&ps->peers);
        list_init(&ps->groups);
        list_init(&ps->ins);
        r = netlistener_open(&ps->listener, loop, host, port, on_peer_accept, ps);
        if (r < 0) {
                log_error_errno(r, "Cannot listen for peer nodes on %s:%d (data_port): %m", host, port);
                free(ps);
                return r;
        }
        netlistener_set_limit(&ps->listener, MAX_LINKS_IN, "the data port");
        *ret = ps;
        return 0;
}

void peers_set_options(struct peers *ps, const struct peers_options *opts) { ps->opts = *opts; }

void peers_stop(struct peers *ps) {
        struct list *pos, *tmp;

        if (!ps)
                return;
        netlistener_close(&ps->listener);
        list_for_each_safe(pos, tmp, &ps->ins) {
                struct peer_in *pin = list_entry(pos, struct peer_in, link);
                if (pin->nc) {
                        pin->nc->userdata = NULL;
                        netconn_close(pin->nc, false);
                        pin->nc = NULL;
                }
                in_free(pin);
        }
        list_for_each_safe(pos, tmp, &ps->peers)
                peer_disconnect(list_entry(pos, struct peer, link), "the worker is stopping");
}

void peers_free(struct peers *ps) {
        struct list *pos, *tmp;

        if (!ps)
                return;
        peers_stop(ps);
        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                list_del(&p->link);
                loop_undefer(&p->unblock);
                free(p->slots);
                free(p->free_slots);
                free(p->name);
                free(p->address);
                free(p);
        }
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                while (!list_empty(&g->backends)) {
                        struct remote_target *t = list_first(&g->backends, struct remote_target, be.link);
                        list_del(&t->be.link);
                        free(t);
                }
                free(g->app);
                free(g->name);
                free(g);
        }
        free(ps);
}

void peers_stats(const struct peers *ps, struct peer_stats *ret) { *ret = ps->stats; }

bool peers_take_kick(struct peers *ps) {
        bool k = ps->kick;
        ps->kick = false;
        return k;
}
