#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "log.h"
#include "proxy.h"
#include "request.h"

#define BUF_GROUP 1
#define BUF_COUNT 256u            /* provided receive buffers, shared by all connections */
#define BUF_SIZE (16u * 1024)
#define PIPELINE_SOFT_LIMIT (64u * 1024) /* buffered bytes of later requests before we stop reading */
/* Response bytes buffered for one client before we stop taking its response from the replica
 * (resumed when half of it was sent): what a client that never reads can make us hold, plus one
 * ring record. */
#define OUT_BUDGET (256u * 1024)
#define OUT_LIMIT (64ull << 20)  /* hard stop: generated answers and one record past the budget */

enum conn_state {
        CONN_IDLE,     /* between requests */
        CONN_HEAD,     /* reading a request head */
        CONN_BODY,     /* reading a request body */
        CONN_UPSTREAM, /* request queued or at a replica; pipelined input waits */
        CONN_WAIT,     /* a request arrived before the proxy had routes: held until it has */
};

struct conn {
        struct loop_op op_recv, op_send, op_close;
        struct proxy *p;
        int fd;
        enum conn_state state;
        unsigned refs;              /* io_uring operations in flight */
        bool recv_armed, sending, closing, close_after_write, lingering, response_begun, keep_alive, continue_sent;
        bool discard_body;          /* HEAD, 204, 304: the response has no body on the wire */
        bool resp_chunked;          /* a streamed response: its pieces go out as chunks */

        struct buf in;              /* received, unprocessed bytes (head + body of the request) */
        size_t parse_prev;

        /* The request being read: head length, framing, body progress. */
        size_t head_len;
        enum http_body_kind body_kind;
        uint64_t content_length;
        struct http_chunked chunked;
        size_t raw_off;             /* chunked: first undecoded byte */
        uint64_t body_have;         /* decoded body bytes, stored at in.data + head_len */
        const struct route *route;
        uint64_t body_reserved;     /* of the global request-body budget, for the body being read */
        char *norm_path;            /* its normalised path when that differs from what was sent */

        struct request *cur;        /* queued or in flight */
        uint64_t last_send_ns;      /* when a send last made progress */

        struct buf out, pending;    /* out: being sent (never moved meanwhile); pending: next */

        uint64_t deadline_ns;
        uint64_t linger_end_ns;         /* lingering: read and drop until then at most ... */
        size_t linger_bytes;            /* ... and at most LINGER_MAX_BYTES */
        struct list tlink;          /* on *tlist: p->idle_list or p->active_list */
        struct list *tlist;
        struct list link;           /* p->conns */
        struct list wlink;          /* p->waiting, in CONN_WAIT */
};

struct proxy {
        struct loop *loop;
        struct router *router;
        struct proxy_options opts;
        struct http_limits limits;
        int listen_fd;
        struct loop_op op_accept;
        bool accept_armed, accepting, draining, not_ready;
        struct io_uring_buf_ring *br;
        uint8_t *bufs;
        unsigned n_conns;
        struct list conns;
        struct list idle_list, active_list, waiting;
        struct http_request scratch;
};

static const struct sink_ops conn_sink_ops;
static double send_timeout_s(const struct proxy *p);

static void conn_process(struct conn *c);
static void conn_close(struct conn *c);
static void conn_flush(struct conn *c);
static void arm_recv(struct conn *c);

/* ---- timers: FIFO lists, since every deadline in one list has the same duration ---- */

static void timer_set(struct conn *c, struct list *lst, double seconds) {
        list_del(&c->tlink);
        c->tlist = NULL;
        if (seconds <= 0)
                return;
        c->deadline_ns = loop_now(c->p->loop) + sec_to_ns(seconds);
        list_add_tail(lst, &c->tlink);
        c->tlist = lst;
}

static void timer_clear(struct conn *c) {
        list_del(&c->tlink);
        c->tlist = NULL;
}

/* ---- output ---- */

static struct buf *out_buf(struct conn *c) { return c->sending ? &c->pending : &c->out; }

static void respond_simple(struct conn *c, int status, const char *body, bool close_conn) {
        struct buf *o = out_buf(c);
        const char *extra = status == 503 ? "Retry-After: 1\r\n" : "";
        size_t blen = strlen(body);

        if (close_conn || c->p->draining)
                c->keep_alive = false;
        (void)buf_printf(o, OUT_LIMIT,
                         "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n%s%s\r\n%s",
                         status, http_status_reason(status), blen, extra, c->keep_alive ? "" : "Connection: close\r\n",
                         body);
        if (!c->keep_alive)
                c->close_after_write = true;
        conn_flush(c);
}

static void respond_error(struct conn *c, int status, bool close_conn) {
        char body[128];
        snprintf(body, sizeof body, "%d %s\n", status, http_status_reason(status));
        respond_simple(c, status, body, close_conn);
}

static void on_send(struct loop_op *op, int res, unsigned flags) {
        struct conn *c = list_entry(op, struct conn, op_send) ;

        c->refs--;
        c->sending = false;
        if (res < 0 || c->closing) {
                if (!c->closing)
                        conn_close(c);
                else if (c->refs == 0)
                        conn_close(c); /* finishes freeing */
                return;
        }
        buf_consume(&c->out, (size_t)res);
        c->last_send_ns = loop_now(c->p->loop);
        if (c->out.len == 0) {
                struct buf t = c->out;
                c->out = c->pending;
                c->pending = t;
                c->pending.len = 0;
        }
        conn_flush(c);
        /* The client reads again: its response may come on from the replica. */
        if (c->cur && c->cur->sink_blocked && !c->closing && c->out.len + c->pending.len <= OUT_BUDGET / 2)
                request_sink_ready(c->cur);
}

/* After the last response on a connection we are closing: half-close and read what the client
 * still sends until it closes too, so that unread request bytes do not turn our close into a
 * reset that destroys the response before the client reads it. A client still uploading (a
 * large body answered early with 413 or 503) keeps the connection while it sends (2 s of
 * silence ends it), for LINGER_MAX_S and LINGER_MAX_BYTES at most (nginx's lingering_close). */
#define LINGER_IDLE_S 2.0
#define LINGER_MAX_S 30
#define LINGER_MAX_BYTES (64u << 20)
static void conn_linger(struct conn *c) {
        if (c->lingering)
                return;
        c->lingering = true;
        c->linger_end_ns = loop_now(c->p->loop) + (uint64_t)LINGER_MAX_S * NSEC_PER_SEC;
        /* A plain syscall, not an untracked io_uring operation: one still in flight when the
         * connection is closed (the client closes at once) could run after the close, on the fd
         * number the next accepted connection got, and shut down that client's responses. */
        if (shutdown(c->fd, SHUT_WR) < 0 && errno != ENOTCONN)
                log_full_errno(LOG_DEBUG, errno, __FILE__, __LINE__, "shutdown() of a lingering connection failed: %m");
        timer_set(c, &c->p->active_list, LINGER_IDLE_S);
        arm_recv(c);
}

static void conn_flush(struct conn *c) {
        struct io_uring_sqe *sqe;

        if (c->closing || c->sending)
                return;
        if (c->out.len == 0 && c->pending.len) {
                struct buf t = c->out;
                c->out = c->pending;
                c->pending = t;
                c->pending.len = 0;
        }
        if (c->out.len == 0) {
                if (c->close_after_write)
                        conn_linger(c);
                else if (c->out.cap > BUF_SIZE) {
                        buf_free(&c->out);
                        buf_free(&c->pending);
                }
                return;
        }
        sqe = loop_sqe(c->p->loop, &c->op_send);
        io_uring_prep_send(sqe, c->fd, c->out.data, c->out.len, MSG_NOSIGNAL);
        if (!c->sending && c->out.len)
                c->last_send_ns = loop_now(c->p->loop);
        c->sending = true;
        c->refs++;
}

/* ---- connection lifetime ---- */

static void conn_free(struct conn *c) {
        struct proxy *p = c->p;

        list_del(&c->link);
        timer_clear(c);
        request_budget_return(c->body_reserved);
        free(c->norm_path);
        buf_free(&c->in);
        buf_free(&c->out);
        buf_free(&c->pending);
        p->n_conns--;
        free(c);
}

static void on_close(struct loop_op *op, int res, unsigned flags) {
        struct conn *c = list_entry(op, struct conn, op_close);
        c->refs--;
        c->fd = -1;
        if (c->refs == 0)
                conn_free(c);
}

static void detach_request(struct conn *c) {
        struct request *q = c->cur;

        if (!q)
                return;
        c->cur = NULL;
        request_abandon(q); /* the backend learns it is cancelled */
}

static void conn_close(struct conn *c) {
        struct io_uring_sqe *sqe;

        if (c->closing) {
                if (c->refs == 0 && c->fd < 0)
                        conn_free(c);
                return;
        }
        c->closing = true;
        if (c->state == CONN_WAIT)
                list_del(&c->wlink);
        detach_request(c);
        timer_clear(c);
        if (c->recv_armed) {
                sqe = loop_sqe(c->p->loop, NULL);
                io_uring_prep_cancel(sqe, &c->op_recv, 0);
        }
        if (c->sending) {
                sqe = loop_sqe(c->p->loop, NULL);
                io_uring_prep_cancel(sqe, &c->op_send, 0);
        }
        /* The fd is closed by io_uring after the cancels (linked ordering is not needed: close
         * fails pending operations on the socket). */
        sqe = loop_sqe(c->p->loop, &c->op_close);
        io_uring_prep_close(sqe, c->fd);
        c->refs++;
}

/* ---- input ---- */

static void return_buffer(struct proxy *p, unsigned bid) {
        io_uring_buf_ring_add(p->br, p->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                              io_uring_buf_ring_mask(BUF_COUNT), 0);
        io_uring_buf_ring_advance(p->br, 1);
}

static size_t input_limit(const struct conn *c) {
        const struct proxy *p = c->p;
        switch (c->state) {
        case CONN_BODY:
                /* chunked framing costs at most a few bytes per data byte; bound it generously */
                return c->head_len + p->opts.max_body + p->opts.max_body / 4 + 65536;
        case CONN_UPSTREAM:
                return PIPELINE_SOFT_LIMIT * 4;
        default:
                return p->limits.max_head + PIPELINE_SOFT_LIMIT;
        }
}

static void on_recv(struct loop_op *op, int res, unsigned flags) {
        struct conn *c = list_entry(op, struct conn, op_recv);
        struct proxy *p = c->p;

        if (!(flags & IORING_CQE_F_MORE)) {
                c->recv_armed = false;
                c->refs--;
        }
        if (c->lingering && !c->closing) {
                if (res > 0 && (flags & IORING_CQE_F_BUFFER))
                        return_buffer(p, flags >> IORING_CQE_BUFFER_SHIFT);
                if (res > 0) {
                        c->linger_bytes += (size_t)res;
                        if (c->linger_bytes > LINGER_MAX_BYTES || loop_now(p->loop) >= c->linger_end_ns) {
                                conn_close(c);
                                return;
                        }
                        timer_set(c, &p->active_list, LINGER_IDLE_S); /* still sending: more time */
                }
                if (res <= 0 && res != -ENOBUFS)
                        conn_close(c);
                else if (!c->recv_armed)
                        arm_recv(c);
                return;
        }
        if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
                unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
                int r = c->closing ? 0 : buf_append(&c->in, p->bufs + (size_t)bid * BUF_SIZE, (size_t)res, input_limit(c));
                return_buffer(p, bid);
                if (c->closing) {
                        if (c->refs == 0)
                                conn_close(c);
                        return;
                }
                if (r < 0) {
                        /* More buffered input than any request may have: answer by state. */
                        if (c->state == CONN_BODY)
                                respond_error(c, 413, true);
                        else
                                conn_close(c);
                        return;
                }
                conn_process(c);
        } else if (res == 0 || (res < 0 && res != -ENOBUFS && res != -ECANCELED)) {
                /* EOF or error: the client is gone; a request it left behind is cancelled. */
                if (!c->closing)
                        conn_close(c);
                else if (c->refs == 0)
                        conn_close(c);
                return;
        }
        if (c->closing) {
                if (c->refs == 0)
                        conn_close(c);
                return;
        }
        if (!c->recv_armed && (c->state != CONN_UPSTREAM || c->in.len < PIPELINE_SOFT_LIMIT))
                arm_recv(c);
}

static void arm_recv(struct conn *c) {
        struct io_uring_sqe *sqe;

        if (c->recv_armed || c->closing)
                return;
        sqe = loop_sqe(c->p->loop, &c->op_recv);
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = BUF_GROUP;
        c->recv_armed = true;
        c->refs++;
}

/* ---- built-in routes ---- */

static bool builtin(struct conn *c, const struct http_request *q) {
        struct proxy *p = c->p;

        if (q->path_len == 10 && memcmp(q->path, "/-/healthz", 10) == 0) {
                if (p->draining)
                        respond_simple(c, 503, "draining\n", false);
                else if (p->not_ready)
                        respond_simple(c, 503, "no routes yet: waiting for the head\n", false);
                else
                        respond_simple(c, 200, "success", false);
                return true;
        }
        if (q->path_len == 9 && memcmp(q->path, "/-/routes", 9) == 0) {
                struct buf b = {};
                (void)buf_append(&b, "{", 1, SIZE_MAX);
                for (size_t i = 0; i < p->router->n_routes; i++) {
                        const struct route *rt = &p->router->routes[i];
                        (void)buf_printf(&b, SIZE_MAX, "%s\"%s\":\"%s\"", i ? "," : "", rt->prefix, rt->app);
                }
                (void)buf_append(&b, "}", 2, SIZE_MAX); /* includes the NUL */
                struct buf *o = out_buf(c);
                (void)buf_printf(o, OUT_LIMIT,
                                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                                 b.len - 1, c->keep_alive ? "" : "Connection: close\r\n", b.data);
                if (!c->keep_alive)
                        c->close_after_write = true;
                buf_free(&b);
                conn_flush(c);
                return true;
        }
        return false;
}

/* Too many request bodies are buffered on this node: 503 with Retry-After, and the
 * connection closes (its unread body would be taken for the next request). */
static void budget_exhausted(struct conn *c) {
        static struct log_limiter limiter;

        log_limited(&limiter, LOG_WARNING, "the request-body budget (http_options.max_buffered_request_bytes) is "
                                           "exhausted: answering 503 until bodies drain");
        respond_simple(c, 503, "503 Service Unavailable: too many request bodies buffered; retry later\n", true);
}

/* The request head is complete: check it, route it, set up body reading. Returns false when
 * the connection was answered and must not read this request further. */
static bool head_complete(struct conn *c, const struct http_request *q) {
        struct proxy *p = c->p;

        c->head_len = q->head_len;
        c->body_kind = q->body_kind;
        c->content_length = q->content_length;
        c->keep_alive = q->keep_alive && !p->draining;
        c->body_have = 0;
        c->raw_off = q->head_len;
        c->continue_sent = false;
        memset(&c->chunked, 0, sizeof c->chunked);

        if (q->body_kind == HTTP_BODY_NONE && builtin(c, q)) {
                buf_consume(&c->in, q->head_len);
                c->parse_prev = 0;
                c->state = CONN_IDLE;
                return false;
        }
        if (p->not_ready) {
                /* No routes yet (a worker that just started, e.g. restarted under socket
                 * activation): hold the request rather than answer 404; give up after the
                 * header timeout if the routes never come. */
                c->state = CONN_WAIT;
                list_add_tail(&p->waiting, &c->wlink);
                timer_set(c, &p->active_list, MAX(p->opts.header_timeout_s, 30.0));
                return false;
        }
        /* Route on the normalised path (dot-segments removed), as the replica will see it. */
        char norm[q->path_len + 1];
        ssize_t nl = q->path_len && q->path[0] == '/' ? http_path_normalize(q->path, q->path_len, norm) : -EINVAL;
        if (nl < 0) {
                respond_error(c, 400, true);
                return false;
        }
        free(c->norm_path);
        c->norm_path = NULL;
        if ((size_t)nl != q->path_len || memcmp(norm, q->path, q->path_len) != 0) {
                norm[nl] = 0;
                c->norm_path = strdup(norm); /* rare: the request keeps it */
                if (!c->norm_path) {
                        respond_error(c, 503, true);
                        return false;
                }
        }
        c->route = router_match(p->router, norm, (size_t)nl);
        if (!c->route || !c->route->ingress) {
                /* Unread bodies would be taken for the next request: close instead. */
                respond_error(c, 404, q->body_kind != HTTP_BODY_NONE);
                if (q->body_kind == HTTP_BODY_NONE) {
                        buf_consume(&c->in, q->head_len);
                        c->state = CONN_IDLE;
                }
                return false;
        }
        if (q->body_kind == HTTP_BODY_LENGTH && q->content_length > p->opts.max_body) {
                respond_error(c, 413, true); /* before buffering any of it */
                return false;
        }
        /* A known length takes its share of the request-body budget before any of it is read. */
        if (q->body_kind == HTTP_BODY_LENGTH && q->content_length > 0) {
                if (request_budget_take(q->content_length) < 0) {
                        budget_exhausted(c);
                        return false;
                }
                c->body_reserved = q->content_length;
        }
        if (q->expect_continue && q->body_kind != HTTP_BODY_NONE && q->minor_version == 1) {
                (void)buf_append(out_buf(c), "HTTP/1.1 100 Continue\r\n\r\n", 25, OUT_LIMIT);
                conn_flush(c);
        }
        c->state = CONN_BODY;
        return true;
}

/* Reads body bytes from c->in. Returns 1 when the body is complete, 0 for more, < 0 (status). */
static int body_progress(struct conn *c) {
        if (c->body_kind == HTTP_BODY_NONE)
                return 1;
        if (c->body_kind == HTTP_BODY_LENGTH) {
                c->body_have = MIN((uint64_t)(c->in.len - c->head_len), c->content_length);
                return c->body_have == c->content_length;
        }
        for (;;) {
                size_t out_len = 0;
                bool done = false;
                char *src = c->in.data + c->raw_off;
                ssize_t n = http_chunked_decode(&c->chunked, src, c->in.len - c->raw_off, src,
                                                c->p->opts.max_body, &out_len, &done);
                if (n < 0)
                        return (int)n;
                if (out_len) {
                        if (request_budget_take(out_len) < 0)
                                return -503; /* the request-body budget is exhausted */
                        c->body_reserved += out_len;
                }
                /* Move the decoded bytes down next to the body decoded so far. */
                memmove(c->in.data + c->head_len + c->body_have, src, out_len);
                c->body_have += out_len;
                c->raw_off += (size_t)n;
                if (done)
                        return 1;
                if (n == 0 || c->raw_off == c->in.len)
                        return 0;
        }
}

/* Bytes of c->in that belong to the current request. */
static size_t conn_request_end(const struct conn *c) {
        return c->body_kind == HTTP_BODY_CHUNKED ? c->raw_off : c->head_len + c->body_have;
}

/* The whole request is in c->in: hand it to the router. `parsed` is the head as just parsed
 * (pointing into c->in) when it is still valid, else NULL and the head is parsed again. */
static void request_complete(struct conn *c, const struct http_request *parsed) {
        struct proxy *p = c->p;
        struct request *q;
        size_t end = conn_request_end(c);
        int r;

        q = request_new(&conn_sink_ops, c, 0);
        if (!q) {
                respond_error(c, 503, true);
                return;
        }
        /* The request's bytes move to the request; later pipelined bytes start a new buffer. */
        if (c->in.len > end) {
                struct buf rest = {};
                if (buf_append(&rest, c->in.data + end, c->in.len - end, SIZE_MAX) < 0) {
                        request_free(q);
                        respond_error(c, 503, true);
                        return;
                }
                q->raw = c->in.data;
                c->in = rest;
        } else {
                q->raw = c->in.data;
                c->in = (struct buf){};
        }
        q->body_budget = c->body_reserved;
        c->body_reserved = 0;
        c->parse_prev = 0;
        if (parsed) {
                /* The buffer did not move: the pointers stay valid in q->raw. */
                memcpy(&q->req, parsed, offsetof(struct http_request, headers) + parsed->n_headers * sizeof parsed->headers[0]);
                q->req.n_headers = parsed->n_headers;
                q->req.body_kind = parsed->body_kind;
                q->req.content_length = parsed->content_length;
                q->req.keep_alive = parsed->keep_alive;
                q->req.expect_continue = parsed->expect_continue;
                q->req.head_len = parsed->head_len;
                r = (int)parsed->head_len;
        } else /* re-parse the head from its final home (the buffer may have moved while the body came) */
                r = http_parse_request(q->raw, c->head_len, 0, &p->limits, &q->req);
        q->norm_path = c->norm_path; /* normalised once, when the head arrived */
        c->norm_path = NULL;
        if (r <= 0 || router_set_path(c->route, q) < 0) {
                request_free(q); /* cannot happen: it parsed and routed before */
                respond_error(c, 400, true);
                return;
        }
        q->head_len = c->head_len;
        q->body = q->raw + c->head_len;
        q->body_len = c->body_have;
        q->dep = c->route->ingress;
        c->cur = q;
        q->start_ns = loop_now(p->loop);
        c->state = CONN_UPSTREAM;
        c->response_begun = false;
        c->discard_body = false;
        c->resp_chunked = false;
        timer_clear(c);
        r = router_submit(p->router, q, p->opts.request_timeout_s);
        if (r < 0) {
                c->cur = NULL;
                router_record(q, 503);
                request_free(q);
                c->state = CONN_IDLE;
                respond_simple(c, 503, r == -EBUSY ? "queue full: too many requests waiting for this deployment\n"
                                                   : "no replicas for this deployment\n", false);
                if (!c->closing && !c->close_after_write)
                        conn_process(c);
        }
}

static void conn_process(struct conn *c) {
        struct proxy *p = c->p;
        const struct http_request *parsed = NULL; /* the head parsed in this pass, in p->scratch */
        const char *parsed_in = NULL;             /* ... pointing into this buffer */

        while (!c->closing && !c->close_after_write) {
                if (c->state == CONN_UPSTREAM || c->state == CONN_WAIT)
                        return;
                if (c->state == CONN_IDLE || c->state == CONN_HEAD) {
                        int r;
                        if (c->in.len == 0) {
                                /* Between requests: the keep-alive timeout, whatever ran before. */
                                if (c->state == CONN_IDLE && c->tlist != &p->idle_list)
                                        timer_set(c, &p->idle_list, p->opts.keep_alive_timeout_s);
                                if (c->in.cap > BUF_SIZE)
                                        buf_free(&c->in);
                                break;
                        }
                        r = http_parse_request(c->in.data, c->in.len, c->parse_prev, &p->limits, &p->scratch);
                        if (r == 0) {
                                if (c->state == CONN_IDLE) {
                                        c->state = CONN_HEAD;
                                        timer_set(c, &p->active_list, p->opts.header_timeout_s);
                                }
                                c->parse_prev = c->in.len;
                                break;
                        }
                        if (r < 0) {
                                respond_error(c, -r, true);
                                return;
                        }
                        c->parse_prev = 0;
                        if (c->state == CONN_IDLE)
                                timer_set(c, &p->active_list, p->opts.header_timeout_s);
                        if (!head_complete(c, &p->scratch))
                                continue;
                        parsed = &p->scratch;
                        parsed_in = c->in.data;
                }
                if (c->state == CONN_BODY) {
                        int r = body_progress(c);
                        if (r < 0) {
                                respond_error(c, -r, true);
                                return;
                        }
                        if (r == 0) {
                                timer_set(c, &p->active_list, p->opts.header_timeout_s);
                                break;
                        }
                        request_complete(c, parsed && parsed_in == c->in.data ? parsed : NULL);
                        parsed = NULL;
                }
        }
        if (!c->closing && !c->recv_armed && (c->state != CONN_UPSTREAM || c->in.len < PIPELINE_SOFT_LIMIT))
                arm_recv(c);
}

/* ---- the connection as a request's sink ---- */

/* "HTTP/1.1 200 OK\r\nContent-Length: N\r\n" without printf (it is on every response). */
static void put_status_line(struct buf *o, int status, bool with_length, uint64_t body_len) {
        const char *reason = http_status_reason(status);
        size_t rl = strlen(reason);
        char line[96], digits[24];
        size_t n = 0, nd = 0;

        if (rl > 40)
                rl = 40;
        memcpy(line, "HTTP/1.1 ", 9);
        n = 9;
        line[n++] = (char)('0' + status / 100 % 10);
        line[n++] = (char)('0' + status / 10 % 10);
        line[n++] = (char)('0' + status % 10);
        line[n++] = ' ';
        memcpy(line + n, reason, rl);
        n += rl;
        memcpy(line + n, "\r\n", 2);
        n += 2;
        if (with_length) {
                memcpy(line + n, "Content-Length: ", 16);
                n += 16;
                do
                        digits[nd++] = (char)('0' + body_len % 10);
                while ((body_len /= 10) > 0);
                while (nd > 0)
                        line[n++] = digits[--nd];
                memcpy(line + n, "\r\n", 2);
                n += 2;
        }
        (void)buf_append(o, line, n, OUT_LIMIT);
}

static void sink_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        struct conn *c = q->sink_ctx;
        struct buf *o = out_buf(c);
        bool head = q->req.method_len == 4 && memcmp(q->req.method, "HEAD", 4) == 0;
        bool stream = body_len == REQUEST_LEN_STREAM, framed = status != 204 && status != 304;

        if (c->p->draining)
                c->keep_alive = false;
        /* HEAD, 204 and 304 have no body on the wire (RFC 9110 §6.4.1): whatever the handler
         * wrote is dropped, or the client would take it for the next response. HEAD says what
         * a GET would get; 204 and 304 have no Content-Length (a 304's would have to be the
         * length of the 200 it stands for, which the handler did not say). */
        c->discard_body = head || !framed;
        /* A stream of unknown length: chunks for HTTP/1.1 (one per piece the handler flushed);
         * an HTTP/1.0 client knows no chunks, so its body ends with the connection. */
        c->resp_chunked = stream && framed && q->req.minor_version >= 1;
        if (stream && !c->discard_body && !c->resp_chunked)
                c->keep_alive = false;
        put_status_line(o, status, framed && !stream, body_len);
        if (c->resp_chunked)
                (void)buf_append(o, "Transfer-Encoding: chunked\r\n", 28, OUT_LIMIT);
        (void)buf_append(o, headers, headers_len, OUT_LIMIT);
        (void)buf_append(o, c->keep_alive ? "\r\n" : "Connection: close\r\n\r\n", c->keep_alive ? 2 : 21, OUT_LIMIT);
        c->response_begun = true;
        conn_flush(c);
}

static void sink_body(struct request *q, const void *data, size_t len) {
        struct conn *c = q->sink_ctx;
        struct buf *o = out_buf(c);
        char size[24];

        if (c->discard_body)
                return;
        /* One chunk per piece (len > 0: an empty chunk would end the body), sent at once. */
        if ((c->resp_chunked && buf_append(o, size, (size_t)snprintf(size, sizeof size, "%zx\r\n", len), OUT_LIMIT) < 0) ||
            buf_append(o, data, len, OUT_LIMIT) < 0 || (c->resp_chunked && buf_append(o, "\r\n", 2, OUT_LIMIT) < 0)) {
                /* Past the hard limit (the budget stops the replica long before): give up. */
                c->cur = NULL;
                request_abandon(q);
                conn_close(c);
                return;
        }
        conn_flush(c);
}

static size_t sink_room(const struct request *q) {
        struct conn *c = q->sink_ctx;
        size_t held = c->out.len + c->pending.len;

        if (c->discard_body)
                return SIZE_MAX;
        if (held < OUT_BUDGET)
                return OUT_BUDGET - held;
        /* Full: the replica waits for this client. One that stops reading is dropped after the
         * send timeout (proxy_tick), which cancels the request and frees the replica's ring. */
        if (!c->tlist)
                timer_set(c, &c->p->active_list, send_timeout_s(c->p));
        return 0;
}

static void conn_request_done(struct conn *c) {
        c->cur = NULL;
        c->state = CONN_IDLE;
        if (!c->keep_alive)
                c->close_after_write = true;
        conn_flush(c);
        if (!c->closing)
                conn_process(c);
}

static void sink_end(struct request *q) {
        struct conn *c = q->sink_ctx;

        if (c->resp_chunked && !c->discard_body)
                (void)buf_append(out_buf(c), "0\r\n\r\n", 5, OUT_LIMIT);
        router_record(q, q->status);
        conn_request_done(c);
}

static void sink_fail(struct request *q, int status, const char *why) {
        struct conn *c = q->sink_ctx;
        char body[256];

        router_record(q, status);
        log_debug("request %s: %d (%s)", q->dep ? q->dep->name : "?", status, why);
        c->cur = NULL;
        if (c->response_begun) {
                conn_close(c); /* half a response went out: closing is the only honest signal */
                return;
        }
        snprintf(body, sizeof body, "%d %s: %s\n", status, http_status_reason(status), why);
        c->state = CONN_IDLE;
        respond_simple(c, status, body, false);
        if (!c->closing && !c->close_after_write)
                conn_process(c);
}

static const struct sink_ops conn_sink_ops = {
        .begin = sink_begin,
        .body = sink_body,
        .end = sink_end,
        .fail = sink_fail,
        .room = sink_room,
};

/* ---- accept ---- */

static void arm_accept(struct proxy *p) {
        struct io_uring_sqe *sqe = loop_sqe(p->loop, &p->op_accept);
        io_uring_prep_multishot_accept(sqe, p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        p->accept_armed = true;
}

static void on_accept(struct loop_op *op, int res, unsigned flags) {
        struct proxy *p = list_entry(op, struct proxy, op_accept);
        struct conn *c;
        int one = 1;

        if (!(flags & IORING_CQE_F_MORE)) {
                p->accept_armed = false;
                if (p->accepting && p->listen_fd >= 0)
                        arm_accept(p);
        }
        if (res < 0) {
                if (res != -ECANCELED)
                        log_warning_errno(res, "accept failed: %m");
                return;
        }
        if (!p->accepting || (int)p->n_conns >= p->opts.max_connections) {
                static struct log_limiter limiter;
                if (p->accepting)
                        log_limited(&limiter, LOG_WARNING, "connection limit (http_options.max_connections = %d) reached: "
                                    "refusing connections", p->opts.max_connections);
                close(res);
                return;
        }
        c = calloc(1, sizeof *c);
        if (!c) {
                close(res);
                return;
        }
        (void)setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->p = p;
        c->fd = res;
        c->op_recv.cb = on_recv;
        c->op_send.cb = on_send;
        c->op_close.cb = on_close;
        c->keep_alive = true;
        list_init(&c->tlink);
        list_init(&c->wlink);
        list_add_tail(&p->conns, &c->link);
        p->n_conns++;
        timer_set(c, &p->idle_list, p->opts.keep_alive_timeout_s);
        arm_recv(c);
}

/* ---- setup ---- */

static int listen_on(const char *host, int port) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
        struct addrinfo *ai = NULL;
        char portstr[16];
        int fd = -1, one = 1, r;

        snprintf(portstr, sizeof portstr, "%d", port);
        r = getaddrinfo(host, portstr, &hints, &ai);
        if (r != 0) {
                log_error("Cannot resolve listen address %s: %s", host, gai_strerror(r));
                return -EINVAL;
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
                r = -errno;
                log_error_errno(r, "Cannot listen on %s:%d: %m", host, port);
                close(fd);
                fd = -1;
                goto out;
        }
        r = fd;
out:
        freeaddrinfo(ai);
        return r;
}

static void apply_options(struct proxy *p, const struct proxy_options *o) {
        p->opts = *o;
        p->opts.host = NULL;
        p->limits = (struct http_limits){
                .max_request_line = o->max_request_line ? o->max_request_line : 8192,
                .max_head = o->max_head ? o->max_head : 65536,
                .max_headers = HTTP_MAX_HEADERS,
        };
        if (p->opts.max_connections <= 0)
                p->opts.max_connections = 16384;
        request_set_body_budget(o->max_buffered_body);
        /* Handle calls obey the node's HTTP request limits too. */
        router_get()->call_timeout_s = o->request_timeout_s;
        router_get()->max_call_body = o->max_body;
}

void proxy_update_options(struct proxy *p, const struct proxy_options *opts) { apply_options(p, opts); }

int proxy_new(struct loop *loop, struct router *router, const struct proxy_options *opts, struct proxy **ret) {
        struct proxy *p;
        int r;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->loop = loop;
        p->router = router;
        request_init(loop, opts->max_buffered_body);
        apply_options(p, opts);
        list_init(&p->conns);
        list_init(&p->idle_list);
        list_init(&p->active_list);
        list_init(&p->waiting);
        p->op_accept.cb = on_accept;

        p->bufs = mmap(NULL, (size_t)BUF_COUNT * BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p->bufs == MAP_FAILED) {
                free(p);
                return -ENOMEM;
        }
        p->br = mmap(NULL, BUF_COUNT * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p->br == MAP_FAILED) {
                munmap(p->bufs, (size_t)BUF_COUNT * BUF_SIZE);
                free(p);
                return -ENOMEM;
        }
        io_uring_buf_ring_init(p->br);
        struct io_uring_buf_reg reg = { .ring_addr = (unsigned long)p->br, .ring_entries = BUF_COUNT, .bgid = BUF_GROUP };
        r = io_uring_register_buf_ring(&loop->ring, &reg, 0);
        if (r < 0) {
                log_error_errno(r, "io_uring provided buffer rings are not available: %m");
                proxy_free(p);
                return r;
        }
        for (unsigned i = 0; i < BUF_COUNT; i++)
                io_uring_buf_ring_add(p->br, p->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                                      io_uring_buf_ring_mask(BUF_COUNT), (int)i);
        io_uring_buf_ring_advance(p->br, BUF_COUNT);

        p->listen_fd = opts->listen_fd >= 0 ? opts->listen_fd : listen_on(opts->host, opts->port);
        if (p->listen_fd < 0) {
                r = p->listen_fd;
                p->listen_fd = -1;
                proxy_free(p);
                return r;
        }
        p->accepting = true;
        arm_accept(p);
        *ret = p;
        return 0;
}

void proxy_free(struct proxy *p) {
        struct list *pos, *tmp;

        if (!p)
                return;
        list_for_each_safe(pos, tmp, &p->conns) {
                struct conn *c = list_entry(pos, struct conn, link);
                if (c->fd >= 0)
                        close(c->fd);
                conn_free(c);
        }
        if (p->listen_fd >= 0)
                close(p->listen_fd);
        if (p->br && p->br != MAP_FAILED)
                munmap(p->br, BUF_COUNT * sizeof(struct io_uring_buf));
        if (p->bufs && p->bufs != MAP_FAILED)
                munmap(p->bufs, (size_t)BUF_COUNT * BUF_SIZE);
        free(p);
}

void proxy_set_draining(struct proxy *p) { p->draining = true; }

void proxy_set_ready(struct proxy *p, bool ready) {
        struct list *pos, *tmp;

        p->not_ready = !ready;
        if (!ready)
                return;
        /* The held requests are parsed again from their first byte, now with routes. */
        list_for_each_safe(pos, tmp, &p->waiting) {
                struct conn *c = list_entry(pos, struct conn, wlink);
                list_del(&c->wlink);
                c->state = CONN_IDLE;
                c->parse_prev = 0;
                conn_process(c);
        }
}

void proxy_stop_accepting(struct proxy *p) {
        struct list *pos, *tmp;

        p->draining = true;
        if (p->accepting) {
                p->accepting = false;
                if (p->accept_armed) {
                        struct io_uring_sqe *sqe = loop_sqe(p->loop, NULL);
                        io_uring_prep_cancel(sqe, &p->op_accept, 0);
                }
                close(p->listen_fd);
                p->listen_fd = -1;
        }
        /* Every response from now on says Connection: close, so busy clients reconnect (to the
         * next process, when systemd holds the socket) without losing a request. Connections
         * idle now get a second to send one more request before they are closed: closing
         * them at once would race with a request already on its way. */
        list_for_each_safe(pos, tmp, &p->conns) {
                struct conn *c = list_entry(pos, struct conn, link);
                if (c->state == CONN_IDLE && c->in.len == 0 && !c->sending && !c->closing)
                        timer_set(c, &p->idle_list, 1.0);
        }
}

unsigned proxy_connections(const struct proxy *p) { return p->n_conns; }

/* A client that reads nothing of its response for this long is dropped. */
static double send_timeout_s(const struct proxy *p) {
        return MAX(MAX(p->opts.keep_alive_timeout_s, p->opts.header_timeout_s), 1.0);
}

uint64_t proxy_tick(struct proxy *p, uint64_t now) {
        uint64_t next = 100 * NSEC_PER_MSEC;
        struct list *lists[] = { &p->idle_list, &p->active_list };

        for (size_t i = 0; i < ELEMENTSOF(lists); i++) {
                while (!list_empty(lists[i])) {
                        struct conn *c = list_first(lists[i], struct conn, tlink);
                        if (c->deadline_ns > now) {
                                next = MIN(next, c->deadline_ns - now);
                                break;
                        }
                        /* A client still reading a response is not idle, unless its reads made
                         * no progress for the send timeout: then it holds memory (and maybe a
                         * replica's ring) for nothing. */
                        if (c->state == CONN_UPSTREAM && !c->sending) {
                                timer_clear(c); /* waiting for its backend: request_timeout_s rules */
                                continue;
                        }
                        if (c->sending && now - c->last_send_ns < sec_to_ns(send_timeout_s(p))) {
                                c->deadline_ns = c->last_send_ns + sec_to_ns(send_timeout_s(p));
                                list_del(&c->tlink);
                                list_add_tail(&p->active_list, &c->tlink);
                                c->tlist = &p->active_list;
                                continue;
                        }
                        /* Header/idle timeouts just close (a 408 would race with a new request). */
                        timer_clear(c);
                        conn_close(c);
                }
        }
        return next;
}
