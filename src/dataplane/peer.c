#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "peer.h"
#include "proto.h"
#include "proxy.h"
#include "replica_link.h"

#define MAX_STREAMS_IN 65536u      /* requests one peer may have here at once */
#define MAX_TRIES 3                /* nodes a request may be offered to */
#define BACKOFF_MIN_NS (100 * NSEC_PER_MSEC)
#define BACKOFF_MAX_NS (5 * NSEC_PER_SEC)
#define PEER_MAX_HEADERS (64u * 1024)

struct peer {
        struct peers *ps;
        char *name, *address;
        int port;
        struct netconn *nc;
        bool up, seen, gone;
        uint64_t next_connect_ns, backoff_ns;
        /* Our requests there: stream id = (generation << 32) | slot. */
        struct upreq **slots;
        uint32_t n_slots, n_used, generation;
        uint32_t *free_slots;
        uint32_t n_free;
        struct list link;
};

/* A connection from a peer that sends us its requests. */
struct peer_in {
        struct peers *ps;
        struct netconn *nc;
        struct list streams;        /* upreqs we owe an answer */
        unsigned n_streams;
        struct upreq *assembling;   /* a request whose body frames are still coming */
        char assembling_app[256];   /* its application ("" = unknown here: reject it) */
        struct list link;
};

struct peers {
        struct loop *loop;
        struct router *router;
        struct http_limits limits;
        struct netlistener listener;
        struct list peers, groups, ins;
        struct peer_stats stats;
        bool kick;
};

static const struct netconn_ops out_ops, in_ops;

/* ---- framing ---- */

static void frame_put(struct buf *b, uint8_t type, uint16_t status, uint64_t stream, const void *p1, size_t l1,
                      const void *p2, size_t l2) {
        struct peer_frame_header h = { .len = (uint32_t)(l1 + l2), .type = type, .status = status, .stream = stream };
        if (buf_reserve(b, sizeof h + l1 + l2, SIZE_MAX) < 0)
                return; /* the connection is dropped by its size check */
        memcpy(b->data + b->len, &h, sizeof h);
        b->len += sizeof h;
        if (l1)
                memcpy(b->data + b->len, p1, l1);
        b->len += l1;
        if (l2)
                memcpy(b->data + b->len, p2, l2);
        b->len += l2;
}

/* Body bytes as REQ_BODY/RESP_BODY frames of at most PEER_FRAME_MAX. */
static void frame_body(struct buf *b, uint8_t type, uint64_t stream, const char *data, size_t len) {
        while (len > 0) {
                size_t n = MIN(len, (size_t)PEER_FRAME_MAX);
                frame_put(b, type, 0, stream, data, n, NULL, 0);
                data += n;
                len -= n;
        }
}

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
        list_add_tail(&ps->groups, &g->link);
        return g;
}

static void peer_fail_all(struct peer *p, const char *why) {
        for (uint32_t i = 0; i < p->n_slots; i++) {
                struct upreq *u = p->slots[i];
                if (!u)
                        continue;
                p->slots[i] = NULL;
                p->free_slots[p->n_free++] = i;
                p->n_used--;
                u->rt->inflight--;
                u->dep->remote_inflight--;
                u->rt = NULL;
                if (upreq_waiting(u))
                        proxy_upreq_fail(u, 502, why);
                else
                        upreq_free(u);
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

static void out_on_close(struct netconn *nc, int err) {
        struct peer *p = nc->userdata;
        if (!p)
                return;
        if (p->up)
                log_warning("data connection to node %s lost: %s", p->name, err ? strerror(-err) : "closed by the peer");
        p->nc = NULL;
        p->up = false;
        p->backoff_ns = p->backoff_ns ? MIN(BACKOFF_MAX_NS, p->backoff_ns * 2) : BACKOFF_MIN_NS;
        p->next_connect_ns = now_ns() + p->backoff_ns;
        peer_fail_all(p, "the node serving the request went away");
}

static void peer_connect(struct peer *p) {
        int r = netconn_connect(p->ps->loop, p->address, p->port, &out_ops, p, &p->nc);
        if (r < 0) {
                p->nc = NULL;
                p->backoff_ns = p->backoff_ns ? MIN(BACKOFF_MAX_NS, p->backoff_ns * 2) : BACKOFF_MIN_NS;
                p->next_connect_ns = now_ns() + p->backoff_ns;
                log_debug("cannot connect to node %s at %s:%d: %s", p->name, p->address, p->port, strerror(-r));
        }
}

void peers_update_begin(struct peers *ps) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &ps->peers)
                list_entry(pos, struct peer, link)->seen = false;
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                for (size_t i = 0; i < g->n_targets; i++) {
                        g->targets[i]->ready = 0;
                        g->targets[i]->capacity = 0;
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
        list_add_tail(&ps->peers, &p->link);
        peer_connect(p);
        return p;
}

int peers_update_target(struct peers *ps, struct peer *peer, const char *app, const char *name, int ready, int max_ongoing) {
        struct remote_group *g = group_find(ps, app, name, true);
        struct remote_target *t = NULL;

        if (!g)
                return -ENOMEM;
        for (size_t i = 0; i < g->n_targets; i++)
                if (g->targets[i]->peer == peer)
                        t = g->targets[i];
        if (!t) {
                struct remote_target **n = realloc(g->targets, (g->n_targets + 1) * sizeof *n);
                if (!n)
                        return -ENOMEM;
                g->targets = n;
                t = calloc(1, sizeof *t);
                if (!t)
                        return -ENOMEM;
                t->peer = peer;
                g->targets[g->n_targets++] = t;
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

void peers_attach(struct peers *ps, struct deployment *d) {
        d->remote = group_find(ps, d->app, d->name, true);
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

/* ---- sending requests to peers ---- */

static bool target_usable(const struct remote_target *t) {
        return t->peer->up && !t->rejected && t->ready > 0 && t->inflight < t->capacity;
}

bool peer_group_available(const struct remote_group *g, int local_target) {
        for (size_t i = 0; i < g->n_targets; i++)
                if (g->targets[i]->ready > 0 && !g->targets[i]->rejected && g->targets[i]->peer->seen)
                        return true;
        return g->placed > local_target;
}

int peers_set_placed(struct peers *ps, const char *app, const char *name, int placed) {
        struct remote_group *g = group_find(ps, app, name, true);
        if (!g)
                return -ENOMEM;
        g->placed = placed;
        return 0;
}

struct remote_target *peer_pick(struct remote_group *g) {
        struct remote_target *a = NULL, *b = NULL;
        unsigned seen = 0;

        for (size_t i = 0; i < g->n_targets; i++) {
                struct remote_target *t = g->targets[i];
                if (!target_usable(t))
                        continue;
                seen++;
                if (!a)
                        a = t;
                else if (!b)
                        b = t;
                else if ((unsigned)random() % seen < 1)
                        b = t;
        }
        if (!b)
                return a;
        /* Less loaded relative to its capacity wins. */
        return (double)a->inflight / a->capacity <= (double)b->inflight / b->capacity ? a : b;
}

static int slot_alloc(struct peer *p, uint32_t *ret) {
        if (p->n_free == 0) {
                uint32_t n = p->n_slots ? p->n_slots * 2 : 64;
                struct upreq **s = realloc(p->slots, n * sizeof *s);
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

void peer_send(struct remote_target *t, struct upreq *u) {
        struct peer *p = t->peer;
        struct buf *b = netconn_outbuf(p->nc);
        size_t head_len = (size_t)(u->body - u->raw), app_len = strlen(u->dep->app);
        uint32_t slot;
        uint8_t fixed[16];

        if (slot_alloc(p, &slot) < 0) {
                proxy_upreq_fail(u, 503, "out of memory");
                return;
        }
        p->slots[slot] = u;
        p->n_used++;
        u->peer_sid = (uint64_t)p->generation << 32 | slot;
        u->rt = t;
        u->state = UPREQ_SENT;
        u->tries++;
        t->inflight++;
        u->dep->remote_inflight++;
        p->ps->stats.sent++;

        uint16_t al = (uint16_t)app_len, zero = 0;
        uint32_t hl = (uint32_t)head_len;
        uint64_t bl = u->body_len;
        memcpy(fixed, &al, 2);
        memcpy(fixed + 2, &zero, 2);
        memcpy(fixed + 4, &hl, 4);
        memcpy(fixed + 8, &bl, 8);
        size_t first = MIN((size_t)u->body_len, (size_t)PEER_FRAME_MAX - MIN((size_t)PEER_FRAME_MAX, 16 + app_len + head_len));
        struct buf tmp = {};
        (void)buf_append(&tmp, fixed, 16, SIZE_MAX);
        (void)buf_append(&tmp, u->dep->app, app_len, SIZE_MAX);
        (void)buf_append(&tmp, u->raw, head_len, SIZE_MAX);
        frame_put(b, PEER_REQ, 0, u->peer_sid, tmp.data, tmp.len, u->body, first);
        buf_free(&tmp);
        frame_body(b, PEER_REQ_BODY, u->peer_sid, u->body + first, (size_t)u->body_len - first);
        netconn_flush(p->nc);
}

/* u is done at its peer (answered, failed or rejected): release its slot. */
static void out_release(struct peer *p, struct upreq *u) {
        uint32_t slot = (uint32_t)u->peer_sid;
        p->slots[slot] = NULL;
        p->free_slots[p->n_free++] = slot;
        p->n_used--;
        u->rt->inflight--;
        u->dep->remote_inflight--;
        u->rt = NULL;
}

void peer_cancel(struct upreq *u) {
        struct peer *p = u->rt->peer;

        u->conn = NULL;
        if (u->cancelled)
                return;
        u->cancelled = true;
        if (p->nc && !p->nc->closed) {
                frame_put(netconn_outbuf(p->nc), PEER_CANCEL, 0, u->peer_sid, NULL, 0, NULL, 0);
                netconn_flush(p->nc);
        }
}

static struct upreq *out_lookup(struct peer *p, uint64_t sid) {
        uint32_t slot = (uint32_t)sid;
        if ((uint32_t)(sid >> 32) != p->generation || slot >= p->n_slots)
                return NULL;
        return p->slots[slot];
}

/* Header lines from a peer: "Name: value\r\n"..., no bare CR/LF, bounded. */
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

static void finish_out(struct peer *p, struct upreq *u) {
        struct deployment *dep = u->dep;
        out_release(p, u);
        if (upreq_waiting(u))
                proxy_response_end(u);
        else
                upreq_free(u);
        router_dispatch(p->ps->router, dep);
}

/* Returns 0, or -EBADMSG to drop the connection. */
static int out_frame(struct peer *p, const struct peer_frame_header *h, const char *pl) {
        struct upreq *u = out_lookup(p, h->stream);
        struct deployment *dep;

        if (!u)
                return -EBADMSG;
        switch (h->type) {
        case PEER_RESP: {
                uint64_t body_len;
                uint32_t hl;
                if (u->state == UPREQ_RESPONDING || h->len < 16)
                        return -EBADMSG;
                memcpy(&body_len, pl, 8);
                memcpy(&hl, pl + 8, 4);
                if (h->status < 100 || h->status > 599 || hl > PEER_MAX_HEADERS || hl > h->len - 16 ||
                    body_len > PROTO_MAX_RESP_BODY || h->len - 16 - hl > body_len || !headers_valid(pl + 16, hl))
                        return -EBADMSG;
                u->state = UPREQ_RESPONDING;
                u->resp_body_len = body_len;
                u->resp_received = h->len - 16 - hl;
                if (upreq_waiting(u)) {
                        proxy_response_begin(u, h->status, pl + 16, hl, body_len);
                        if (u->resp_received && upreq_waiting(u))
                                proxy_response_body(u, pl + 16 + hl, (size_t)u->resp_received);
                }
                if (u->resp_received == u->resp_body_len)
                        finish_out(p, u);
                return 0;
        }
        case PEER_RESP_BODY:
                if (u->state != UPREQ_RESPONDING || h->len > u->resp_body_len - u->resp_received)
                        return -EBADMSG;
                u->resp_received += h->len;
                if (upreq_waiting(u) && h->len)
                        proxy_response_body(u, pl, h->len);
                if (u->resp_received == u->resp_body_len)
                        finish_out(p, u);
                return 0;
        case PEER_REJECT:
        case PEER_FAIL:
                if (u->state == UPREQ_RESPONDING)
                        return -EBADMSG;
                dep = u->dep;
                if (h->type == PEER_REJECT)
                        u->rt->rejected = true;
                out_release(p, u);
                if (!upreq_waiting(u)) {
                        upreq_free(u);
                } else if (h->type == PEER_REJECT && u->tries < MAX_TRIES) {
                        /* It has no replica after all (scaled away since the head told us):
                         * offer it elsewhere, here or on another node. */
                        p->ps->stats.failed_over++;
                        int r = router_submit(p->ps->router, u);
                        if (r < 0)
                                proxy_upreq_fail(u, 503, "no replicas for this deployment");
                } else {
                        char why[256];
                        snprintf(why, sizeof why, "%.*s", (int)MIN(h->len, 200u), h->type == PEER_FAIL ? pl : "no replica");
                        proxy_upreq_fail(u, h->status >= 400 && h->status <= 599 ? h->status : 502, why);
                }
                router_dispatch(p->ps->router, dep);
                return 0;
        default:
                return -EBADMSG;
        }
}

static void out_on_data(struct netconn *nc) {
        struct peer *p = nc->userdata;

        while (p && nc->in.len >= sizeof(struct peer_frame_header)) {
                struct peer_frame_header h;
                memcpy(&h, nc->in.data, sizeof h);
                if (h.len > PEER_FRAME_MAX) {
                        log_error("node %s sent an oversized frame: disconnecting", p->name);
                        peer_disconnect(p, "the node serving the request sent garbage");
                        return;
                }
                if (nc->in.len < sizeof h + h.len)
                        return;
                if (out_frame(p, &h, nc->in.data + sizeof h) < 0) {
                        log_error("node %s sent an invalid frame (type %u): disconnecting", p->name, h.type);
                        peer_disconnect(p, "the node serving the request sent garbage");
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

/* ---- requests from peers ---- */

static void in_reply(struct upreq *u, uint8_t type, uint16_t status, const void *p1, size_t l1, const void *p2, size_t l2) {
        struct peer_in *pin = u->stream;
        if (!pin->nc || pin->nc->closed)
                return;
        frame_put(netconn_outbuf(pin->nc), type, status, u->stream_id, p1, l1, p2, l2);
        netconn_flush(pin->nc);
}

void peer_stream_detach(struct upreq *u) {
        if (u->stream) {
                u->stream->n_streams--;
                list_del(&u->slink);
                u->stream = NULL;
        }
}

static void in_done(struct upreq *u) {
        peer_stream_detach(u);
        upreq_free(u);
}

void peer_stream_response_begin(struct upreq *u, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        uint8_t fixed[16] = {};
        uint32_t hl = (uint32_t)headers_len;
        memcpy(fixed, &body_len, 8);
        memcpy(fixed + 8, &hl, 4);
        in_reply(u, PEER_RESP, (uint16_t)status, fixed, 16, headers, headers_len);
}

void peer_stream_response_body(struct upreq *u, const void *data, size_t len) {
        struct peer_in *pin = u->stream;
        if (!pin->nc || pin->nc->closed)
                return;
        frame_body(netconn_outbuf(pin->nc), PEER_RESP_BODY, u->stream_id, data, len);
        netconn_flush(pin->nc);
}

void peer_stream_response_end(struct upreq *u) { in_done(u); }

void peer_stream_fail(struct upreq *u, int status, const char *why) {
        in_reply(u, PEER_FAIL, (uint16_t)status, why, strlen(why), NULL, 0);
        in_done(u);
}

void peer_stream_reject(struct upreq *u, int status) {
        u->stream->ps->stats.rejected++;
        in_reply(u, PEER_REJECT, (uint16_t)status, NULL, 0, NULL, 0);
        in_done(u);
}

static const struct route *route_for_app(struct router *r, const char *app, size_t len) {
        for (size_t i = 0; i < r->n_routes; i++)
                if (strlen(r->routes[i].app) == len && memcmp(r->routes[i].app, app, len) == 0)
                        return &r->routes[i];
        return NULL;
}

/* The whole request is here: hand it to the router like one from a client. */
static void in_submit(struct peer_in *pin, struct upreq *u, const struct route *rt) {
        int r;

        pin->assembling = NULL;
        u->dep = rt->ingress;
        router_set_path(rt, u);
        pin->ps->stats.received++;
        r = router_submit(pin->ps->router, u);
        if (r == -ENOENT)
                peer_stream_reject(u, 503);
        else if (r < 0)
                peer_stream_fail(u, 503, "queue full: too many requests waiting for this deployment");
}

/* Returns 0, or -EBADMSG to drop the connection. */
static int in_frame(struct peer_in *pin, const struct peer_frame_header *h, const char *pl) {
        struct upreq *u = pin->assembling;

        if (u && h->type != PEER_REQ_BODY)
                return -EBADMSG; /* frames of one request are contiguous */
        switch (h->type) {
        case PEER_REQ: {
                uint16_t al;
                uint32_t hl;
                uint64_t bl;
                const struct route *rt;
                int r;

                if (h->len < 16)
                        return -EBADMSG;
                memcpy(&al, pl, 2);
                memcpy(&hl, pl + 4, 4);
                memcpy(&bl, pl + 8, 8);
                if (al == 0 || al >= sizeof pin->assembling_app || hl == 0 || (uint64_t)16 + al + hl > h->len || bl > (1ull << 32) ||
                    h->len - 16 - al - hl > bl)
                        return -EBADMSG;
                u = calloc(1, sizeof *u);
                if (!u)
                        return -EBADMSG;
                list_init(&u->link);
                list_init(&u->tlink);
                list_init(&u->slink);
                u->raw = malloc((size_t)hl + (size_t)bl + 1);
                if (!u->raw) {
                        free(u);
                        return -EBADMSG;
                }
                memcpy(u->raw, pl + 16 + al, hl);
                r = http_parse_request(u->raw, hl, 0, &pin->ps->limits, &u->req);
                if (r != (int)hl) {
                        upreq_free(u);
                        return -EBADMSG;
                }
                u->body = u->raw + hl;
                u->body_len = bl;
                u->resp_received = h->len - 16 - al - hl; /* body bytes so far (reused until submitted) */
                memcpy(u->raw + hl, pl + 16 + al + hl, (size_t)u->resp_received);
                u->stream = pin;
                u->stream_id = h->stream;
                list_add_tail(&pin->streams, &u->slink);
                pin->n_streams++;
                rt = route_for_app(pin->ps->router, pl + 16, al);
                if (rt && pin->n_streams <= MAX_STREAMS_IN)
                        snprintf(pin->assembling_app, sizeof pin->assembling_app, "%.*s", (int)al, pl + 16);
                else
                        pin->assembling_app[0] = 0;
                if (!rt || pin->n_streams > MAX_STREAMS_IN) {
                        /* Not (or no longer) an application here: the sender tries elsewhere. */
                        if (u->resp_received == bl)
                                peer_stream_reject(u, 503);
                        else
                                pin->assembling = u; /* reject once its body passed */
                        return 0;
                }
                if (u->resp_received == bl) {
                        u->resp_received = 0;
                        in_submit(pin, u, rt);
                } else
                        pin->assembling = u;
                return 0;
        }
        case PEER_REQ_BODY: {
                if (!u || h->len > u->body_len - u->resp_received)
                        return -EBADMSG;
                memcpy((char *)u->body + u->resp_received, pl, h->len);
                u->resp_received += h->len;
                if (u->resp_received == u->body_len) {
                        /* Find the app again: routes may have changed while the body came. */
                        const struct route *rt = pin->assembling_app[0]
                                ? route_for_app(pin->ps->router, pin->assembling_app, strlen(pin->assembling_app))
                                : NULL;
                        u->resp_received = 0;
                        pin->assembling = NULL;
                        if (!rt) {
                                peer_stream_reject(u, 503);
                                return 0;
                        }
                        in_submit(pin, u, rt);
                }
                return 0;
        }
        case PEER_CANCEL: {
                struct list *pos, *tmp;
                list_for_each_safe(pos, tmp, &pin->streams) {
                        struct upreq *x = list_entry(pos, struct upreq, slink);
                        if (x->stream_id != h->stream || x == pin->assembling)
                                continue;
                        if (x->state == UPREQ_QUEUED) {
                                router_unqueue(x);
                                in_done(x);
                        } else
                                replica_link_cancel(x); /* detaches it from us (peer_stream_detach) */
                        break;
                }
                return 0;
        }
        default:
                return -EBADMSG;
        }
}

static void in_free(struct peer_in *pin) {
        struct list *pos, *tmp;

        /* Its requests are cancelled like those of a client that went away. */
        list_for_each_safe(pos, tmp, &pin->streams) {
                struct upreq *u = list_entry(pos, struct upreq, slink);
                if (u == pin->assembling || u->state == UPREQ_QUEUED) {
                        if (u != pin->assembling)
                                router_unqueue(u);
                        in_done(u);
                } else
                        replica_link_cancel(u);
        }
        list_del(&pin->link);
        free(pin);
}

static void in_on_data(struct netconn *nc) {
        struct peer_in *pin = nc->userdata;

        while (nc->in.len >= sizeof(struct peer_frame_header)) {
                struct peer_frame_header h;
                memcpy(&h, nc->in.data, sizeof h);
                if (h.len <= PEER_FRAME_MAX && nc->in.len < sizeof h + h.len)
                        return;
                if (h.len > PEER_FRAME_MAX || in_frame(pin, &h, nc->in.data + sizeof h) < 0) {
                        log_error("peer %s sent an invalid frame (type %u): disconnecting", nc->peer, h.type);
                        nc->userdata = NULL;
                        netconn_close(nc, false);
                        in_free(pin);
                        return;
                }
                buf_consume(&nc->in, sizeof h + h.len);
        }
}

static void in_on_close(struct netconn *nc, int err) {
        struct peer_in *pin = nc->userdata;
        if (!pin)
                return;
        pin->nc = NULL;
        in_free(pin);
}

static const struct netconn_ops in_ops = {
        .on_data = in_on_data,
        .on_close = in_on_close,
};

static void on_peer_accept(struct netlistener *l, int fd) {
        struct peers *ps = l->userdata;
        struct peer_in *pin = calloc(1, sizeof *pin);

        if (!pin) {
                close(fd);
                return;
        }
        pin->ps = ps;
        list_init(&pin->streams);
        if (netconn_adopt(ps->loop, fd, &in_ops, pin, &pin->nc) < 0) {
                free(pin);
                return;
        }
        pin->nc->in_limit = 2 * PEER_FRAME_MAX + 64;
        list_add_tail(&ps->ins, &pin->link);
        log_debug("peer connected from %s", pin->nc->peer);
}

int peers_new(struct loop *loop, struct router *router, const char *host, int port, const struct http_limits *limits,
              struct peers **ret) {
        struct peers *ps = calloc(1, sizeof *ps);
        int r;

        if (!ps)
                return -ENOMEM;
        ps->loop = loop;
        ps->router = router;
        ps->limits = *limits;
        list_init(&ps->peers);
        list_init(&ps->groups);
        list_init(&ps->ins);
        r = netlistener_open(&ps->listener, loop, host, port, on_peer_accept, ps);
        if (r < 0) {
                log_error_errno(r, "Cannot listen for peer nodes on %s:%d (data_port): %m", host, port);
                free(ps);
                return r;
        }
        *ret = ps;
        return 0;
}

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
                free(p->slots);
                free(p->free_slots);
                free(p->name);
                free(p->address);
                free(p);
        }
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                for (size_t i = 0; i < g->n_targets; i++)
                        free(g->targets[i]);
                free(g->targets);
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
