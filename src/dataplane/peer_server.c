/* Peers' requests here: each arrives as a stream of the peer's link, and the stream is the
 * request's sink. A peer is untrusted: its frames are validated, its requests obey this node's
 * limits, and its link has budgets (streams, queued responses, buffered input, progress). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "call.h"
#include "log.h"
#include "peer_link.h"
#include "proto.h"

static const struct netconn_ops in_ops;
static const struct sink_ops stream_sink_ops;
static struct log_limiter refused_limiter;

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

/* What may be queued to the peer before the link is dropped (see LINK_OUT_LIMIT). */
static size_t in_out_limit(const struct peer_in *pin) {
        return LINK_OUT_LIMIT + (size_t)pin->n_streaming * PROTO_STREAM_WINDOW;
}

static void in_count_streaming(struct peer_in *pin, bool more) {
        if (more)
                pin->n_streaming++;
        else if (pin->n_streaming > 0)
                pin->n_streaming--;
        if (pin->nc)
                pin->nc->out_limit = in_out_limit(pin) + PEER_FRAME_MAX;
}

static void in_send(struct peer_in *pin, uint8_t type, uint16_t status, uint64_t stream, const void *p, size_t l) {
        if (!in_writable(pin))
                return;
        if (peer_wire_put(netconn_outbuf(pin->nc), in_out_limit(pin), type, status, stream, p, l, NULL, 0) < 0) {
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
        if (q->resp_stream)
                in_count_streaming(pin, false);
}

/* A streamed response (REQUEST_LEN_STREAM) goes as RESP with PEER_FLAG_STREAM, its pieces as
 * RESP_BODY frames, its end as RESP_END. The link's budget holds it back like any response: a
 * peer that does not read stops its replica's handler (no credit while room() says 0). */
static void stream_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        struct peer_in *pin = q->sink_ctx;
        bool streamed = body_len == REQUEST_LEN_STREAM;

        if (streamed)
                in_count_streaming(pin, true); /* until stream_gone() */
        if (!in_writable(pin))
                return;
        if (peer_wire_put_resp(netconn_outbuf(pin->nc), in_out_limit(pin), q->sink_id, status, headers, headers_len,
                               streamed ? 0 : body_len, streamed) < 0) {
                in_teardown_later(pin, "it does not read its responses");
                return;
        }
        netconn_flush(pin->nc);
}

static void stream_body(struct request *q, const void *data, size_t len) {
        struct peer_in *pin = q->sink_ctx;

        if (!in_writable(pin))
                return;
        if (peer_wire_put_body(netconn_outbuf(pin->nc), in_out_limit(pin), PEER_RESP_BODY, q->sink_id, data, len) < 0) {
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

static void stream_end(struct request *q) {
        if (q->resp_stream)
                in_send(q->sink_ctx, PEER_RESP_END, 0, q->sink_id, NULL, 0);
        stream_gone(q);
}

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
        if (q->call) {
                /* A handle call: routed by the deployment its head names, within the app. */
                if (call_route(pin->ps->router, q, app, app_len) < 0) {
                        request_reject(q, 503);
                        return;
                }
        } else if (!router_route_of_app(pin->ps->router, app, app_len)) {
                /* Not (or no longer) an application here: the sender tries elsewhere. */
                request_reject(q, 503);
                return;
        }
        if (!q->call && !router_route(pin->ps->router, q, app, app_len)) {
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
        q->call = (pr.flags & PEER_REQ_F_CALL) != 0;
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
                /* Unknown streams are ignored: the answer may have crossed the cancel. A known
                 * one gets nothing more from us but the 499 that tells the sender it is over
                 * (it keeps the stream id until then). */
                if ((q = stream_find(pin, h.stream))) {
                        stream_gone(q);
                        request_abandon(q);
                        in_send(pin, PEER_FAIL, 499, h.stream, "cancelled", strlen("cancelled"));
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
        free(pin->node);
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
        if (netconn_is_tls(nc) && !netconn_tls_peer(nc)) {
                pin->ps->stats.links_refused++;
                log_limited(&refused_limiter, LOG_WARNING, "refused a data connection from %s: TLS handshake failed (%s)",
                            nc->peer, netconn_tls_error(nc) ?: "closed during the handshake");
        } else if (err < 0 && err != -ECONNRESET && err != -EPIPE) {
                /* Closed for the peer's behaviour (no progress, too much unread), not by it. */
                static struct log_limiter limiter;
                pin->ps->stats.links_dropped++;
                log_limited(&limiter, LOG_WARNING, "peer %s: closed its data link: %s", nc->peer,
                            err == -ETIMEDOUT ? "no progress within the link timeout" : strerror(-err));
        }
        pin->nc = NULL;
        in_free(pin);
}

/* TLS: the handshake is done. Only a node of the current peer list, with a certificate that is
 * not revoked, may send requests; nothing it sent has been read yet. */
static void in_on_secure(struct netconn *nc) {
        struct peer_in *pin = nc->userdata;
        const struct tls_peer *tp = netconn_tls_peer(nc);

        if (!pin)
                return;
        if (!tp || !tp->has_cert || !streq(tp->unit, pin->ps->tls_unit) || !peers_may_link(pin->ps, tp->name, tp->serial)) {
                pin->ps->stats.links_refused++;
                log_limited(&refused_limiter, LOG_WARNING,
                            "refused a data connection from %s: %s%s%s", nc->peer,
                            !tp || !tp->has_cert ? "no certificate" : "certificate of ",
                            tp && tp->has_cert ? tp->name : "",
                            tp && tp->has_cert ? ", which is not a current member of the cluster" : "");
                peer_in_close(pin);
                return;
        }
        pin->node = strdup(tp->name);
        pin->serial = tp->serial;
        if (!pin->node) {
                peer_in_close(pin);
                return;
        }
        (void)netconn_set_idle_timeout(nc, 0);
        log_debug("peer %s connected from %s (%s)", pin->node, nc->peer, tls_mode_name(netconn_tls_ktls(nc)));
}

static const struct netconn_ops in_ops = {
        .on_connect = in_on_secure,
        .on_data = in_on_data,
        .on_close = in_on_close,
        .on_drain = in_on_drain,
};

void peer_in_accept(struct netlistener *l, int fd) {
        struct peers *ps = l->userdata;
        struct peer_in *pin;

        if (ps->tls_unit && !ps->tls_server) { /* TLS, but no certificate yet: nobody gets in */
                close(fd);
                return;
        }
        pin = calloc(1, sizeof *pin);
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
        if (ps->tls_server) {
                /* A stranger gets the link timeout to finish its handshake. */
                if (netconn_start_tls(pin->nc, ps->tls_server) < 0 ||
                    netconn_set_idle_timeout(pin->nc, sec_to_ns(ps->opts.link_timeout_s)) < 0) {
                        peer_in_close(pin);
                        return;
                }
        }
        log_debug("peer connected from %s", pin->nc->peer);
}

void peer_in_close(struct peer_in *pin) {
        if (pin->nc) {
                pin->nc->userdata = NULL;
                netconn_close(pin->nc, false);
                pin->nc = NULL;
        }
        in_free(pin);
}
