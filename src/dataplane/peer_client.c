/* Our requests at peer nodes: a peer's replica set of a deployment is a backend (struct
 * remote_target); one link per peer carries them, multiplexed by stream id. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "peer_link.h"
#include "proto.h"

static const struct netconn_ops out_ops;
static void out_on_data(struct netconn *nc);
static void remote_resume(struct request *q);

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

void peer_disconnect(struct peer *p, const char *why) {
        if (p->nc) {
                p->nc->userdata = NULL;
                netconn_close(p->nc, false);
                p->nc = NULL;
        }
        p->up = false;
        peer_fail_all(p, why);
}

static struct log_limiter refused_limiter;
static void backoff(struct peer *p);

static void out_on_connect(struct netconn *nc) {
        struct peer *p = nc->userdata;
        const struct tls_peer *tp = netconn_tls_peer(nc);

        /* The node we meant, not whatever answers at its address. */
        if (p->ps->tls_client && (!tp || !streq(tp->unit, p->ps->tls_unit) || !streq(tp->name, p->name))) {
                p->ps->stats.links_refused++;
                log_limited(&refused_limiter, LOG_WARNING, "data connection to node %s (%s) refused: it presented %s%s",
                            p->name, nc->peer, tp ? "the certificate of " : "no certificate", tp ? tp->name : "");
                p->nc = NULL;
                nc->userdata = NULL;
                netconn_close(nc, false);
                backoff(p);
                return;
        }
        (void)netconn_set_idle_timeout(nc, 0);
        p->up = true;
        p->backoff_ns = 0;
        if (tp)
                log_info("data connection to node %s (%s) is up: %s", p->name, nc->peer, tls_mode_name(netconn_tls_ktls(nc)));
        else
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
        if (!p->up && netconn_is_tls(nc) && netconn_tls_error(nc)) {
                p->ps->stats.links_refused++;
                log_limited(&refused_limiter, LOG_WARNING, "data connection to node %s (%s): TLS handshake failed (%s)",
                            p->name, nc->peer, netconn_tls_error(nc));
        }
        if (p->up)
                log_warning("data connection to node %s lost: %s", p->name, err ? strerror(-err) : "closed by the peer");
        p->nc = NULL;
        p->up = false;
        backoff(p);
        peer_fail_all(p, "the node serving the request went away");
}

void peer_connect(struct peer *p) {
        int r;

        if (p->ps->tls_unit && !p->ps->tls_client) { /* no certificate yet */
                backoff(p);
                return;
        }
        /* A connect or handshake that hangs must not keep the peer down forever. */
        r = netconn_connect_tls(p->ps->loop, p->address, p->port, &out_ops, p, p->ps->tls_client,
                                sec_to_ns(p->ps->opts.link_timeout_s), &p->nc);
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
        r = peer_wire_put_req(netconn_outbuf(p->nc), p->nc->out_limit, sid, q->call ? PEER_REQ_F_CALL : 0, q->dep->app,
                              strlen(q->dep->app), q->raw,
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
void peer_unblock(struct loop_deferred *d) {
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

const struct backend_ops peer_remote_backend_ops = {
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

/* After delivering to q: when its sink is full, stop reading the link until it has room. For a
 * streamed response too: one slow client then holds the whole link (its other responses wait,
 * as the peer's replicas wait for credit) until it reads or its send timeout drops it. Simple
 * and bounded; per-stream credit on the link would free the others. */
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
                q->resp_stream = resp.stream;
                if (resp.stream) {
                        request_begin(q, h->status, resp.headers, resp.headers_len, REQUEST_LEN_STREAM);
                        block_if_full(p, q);
                        return 0;
                }
                request_begin(q, h->status, resp.headers, resp.headers_len, resp.body_len);
                request_body(q, resp.body, resp.body_here);
                if (q->resp_received == q->resp_body_len)
                        finish_out(p, q);
                else
                        block_if_full(p, q);
                return 0;
        case PEER_RESP_BODY:
                if (q->state == REQUEST_RESPONDING && q->resp_stream) {
                        if (h->len > PROTO_MAX_RESP_BODY - q->resp_received)
                                return -EBADMSG;
                        q->resp_received += h->len;
                        request_body(q, pl, h->len);
                        block_if_full(p, q);
                        return 0;
                }
                if (q->state != REQUEST_RESPONDING || h->len > q->resp_body_len - q->resp_received)
                        return -EBADMSG;
                q->resp_received += h->len;
                request_body(q, pl, h->len);
                if (q->resp_received == q->resp_body_len)
                        finish_out(p, q);
                else
                        block_if_full(p, q);
                return 0;
        case PEER_RESP_END:
                if (q->state != REQUEST_RESPONDING || !q->resp_stream || h->len != 0)
                        return -EBADMSG;
                finish_out(p, q);
                return 0;
        case PEER_REJECT:
        case PEER_FAIL:
                /* A FAIL may cut a response off (the request timed out there, its replica died),
                 * or answer our CANCEL; a REJECT comes before any response. */
                if (q->state == REQUEST_RESPONDING && h->type == PEER_REJECT)
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
