#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "httpd.h"
#include "log.h"
#include "macros.h"

#define NOTICE_INTERVAL_NS (60 * NSEC_PER_SEC)
#define MAX_HEAD 65536

/* Where a connection is. READING waits on the client for a request, SENDING for it to take
 * the answer; DEFERRED waits on the owner. */
enum hconn_phase {
        HC_READING,  /* the request arrives (netconn holds no buffer until bytes do) */
        HC_DEFERRED, /* the handler answers later */
        HC_SENDING,  /* the response is going out; closed once sent */
};

struct hconn {
        struct httpd *h;           /* NULL once unlinked from it */
        struct netconn *nc;
        enum hconn_phase phase;
        bool head_done;            /* the request head is in: the body is arriving */
        uint64_t accepted_ns, progress_ns;
        size_t unsent;             /* SENDING: queued bytes at the last look */
        size_t body_reserved;      /* counted in h->bodies */
        struct httpd_deferred *deferred;
        struct list link;          /* h->conns */
};

struct httpd_deferred {
        struct hconn *hc;          /* NULL once the connection is gone */
};

/* The periodic check of timeouts: its own allocation, because its completion may arrive after
 * the server (embedded in its owner) is gone. */
struct httpd_timer {
        struct loop_op op;
        struct __kernel_timespec ts;
        struct loop *loop;
        struct httpd *h;           /* NULL once the server closed: the completion frees it */
        bool armed;
};

/* ---- rate-limited notices ---- */

static void notice_flush(struct httpd *h, struct httpd_notice *n, const char *what, uint64_t now) {
        if (n->count == 0 || now - n->logged_ns < NOTICE_INTERVAL_NS)
                return;
        log_warning("%s: %llu more connection(s) %s in the last %llu s", h->what, (unsigned long long)n->count, what,
                    (unsigned long long)((now - n->logged_ns) / NSEC_PER_SEC));
        n->count = 0;
        n->logged_ns = now;
}

/* Logs `first` the first time, then only counts (flushed at most once a minute). */
static void notice(struct httpd *h, struct httpd_notice *n, const char *first, const char *what, uint64_t now) {
        if (!n->logged) {
                log_warning("%s: %s (further ones are counted once a minute)", h->what, first);
                n->logged = true;
                n->logged_ns = now;
                return;
        }
        n->count++;
        notice_flush(h, n, what, now);
}

/* ---- connections ---- */

static void arm_timer(struct httpd *h);

static void hconn_unlink(struct hconn *hc) {
        struct httpd *h = hc->h;

        if (!h)
                return;
        list_del(&hc->link);
        h->n_conns--;
        h->bodies -= hc->body_reserved;
        hc->body_reserved = 0;
        if (hc->deferred) {
                hc->deferred->hc = NULL;
                hc->deferred = NULL;
        }
        hc->h = NULL;
}

/* Closes a connection at once. */
static void hconn_close(struct hconn *hc) {
        hconn_unlink(hc);
        hc->nc->userdata = NULL;
        netconn_close(hc->nc, false);
        free(hc);
}

static void respond(struct hconn *hc, struct httpd_response *resp) {
        struct buf *o = netconn_outbuf(hc->nc);

        (void)buf_printf(o, SIZE_MAX,
                         "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
                         "Cache-Control: no-store\r\n%s\r\n",
                         resp->status, http_status_reason(resp->status), resp->content_type ?: "application/json",
                         resp->body.len, resp->status == 503 ? "Retry-After: 1\r\n" : "");
        if (resp->body.len)
                (void)buf_append(o, resp->body.data, resp->body.len, SIZE_MAX);
        hc->phase = HC_SENDING;
        hc->progress_ns = now_ns();
        hc->unsent = SIZE_MAX;
        /* What the body reserved is in the output now, bounded by the send timeout. */
        if (hc->h) {
                hc->h->bodies -= hc->body_reserved;
                hc->body_reserved = 0;
        }
        /* Last: with an older netconn, a failed flush may close (and free) hc right here. */
        netconn_flush(hc->nc);
}

static void on_data(struct netconn *nc) {
        struct hconn *hc = nc->userdata;
        struct http_request req;
        struct httpd_response resp = { .status = 200 };
        struct httpd *h;
        int r;

        if (!hc || !hc->h || hc->phase != HC_READING)
                return;
        h = hc->h;
        hc->progress_ns = now_ns();
        r = http_parse_request(nc->in.data, nc->in.len, 0, &h->limits, &req);
        if (r == 0)
                return;
        if (r < 0) {
                httpd_respond_error(&resp, -r, "malformed request");
                goto out;
        }
        if (req.body_kind == HTTP_BODY_CHUNKED) {
                httpd_respond_error(&resp, 411, "send the body with Content-Length");
                goto out;
        }
        uint64_t body_len = req.body_kind == HTTP_BODY_LENGTH ? req.content_length : 0;
        if (body_len > h->opts.max_body) {
                httpd_respond_error(&resp, 413, "request body too large");
                goto out;
        }
        if (!hc->head_done) {
                hc->head_done = true;
                /* Bodies arriving at once share one budget: many slow uploads must not hold
                 * max_connections times max_body. */
                if (body_len > h->max_bodies - h->bodies) {
                        notice(h, &h->busy, "request bodies at their memory budget: answering 503",
                               "answered 503 for the body budget", hc->progress_ns);
                        httpd_respond_error(&resp, 503, "busy: too many request bodies at once; try again");
                        goto out;
                }
                hc->body_reserved = (size_t)body_len;
                h->bodies += hc->body_reserved;
        }
        if (nc->in.len < (size_t)r + body_len)
                return; /* wait for the body */
        struct httpd_request rq = {
                .req = &req, .body = nc->in.data + r, .body_len = (size_t)body_len, .peer = nc->peer, .hc = hc
        };
        h->handler(h->userdata, &rq, &resp);
        if (hc->phase == HC_DEFERRED) {
                buf_free(&resp.body);
                return;
        }
out:
        respond(hc, &resp);
        buf_free(&resp.body);
}

static void on_drain(struct netconn *nc) {
        struct hconn *hc = nc->userdata;

        /* Sent: the connection is done (no keep-alive here). */
        if (hc && hc->phase == HC_SENDING && netconn_unsent(nc) == 0)
                hconn_close(hc);
}

static void on_close(struct netconn *nc, int err) {
        struct hconn *hc = nc->userdata;

        if (!hc)
                return;
        hconn_unlink(hc);
        free(hc);
}

static const struct netconn_ops ops = { .on_data = on_data, .on_close = on_close, .on_drain = on_drain };

static void on_accept(struct netlistener *l, int fd) {
        struct httpd *h = l->userdata;
        uint64_t now = now_ns();
        struct hconn *hc;

        if (h->n_conns >= h->opts.max_connections) {
                char first[160];
                snprintf(first, sizeof first, "%u connections open, the limit: refusing new ones",
                         h->opts.max_connections);
                notice(h, &h->refused, first, "refused at the connection limit", now);
                close(fd);
                return;
        }
        hc = calloc(1, sizeof *hc);
        if (!hc) {
                close(fd);
                return;
        }
        *hc = (struct hconn){ .h = h, .phase = HC_READING, .accepted_ns = now, .progress_ns = now };
        if (netconn_adopt(l->loop, fd, &ops, hc, &hc->nc) < 0) {
                free(hc);
                return;
        }
        hc->nc->in_limit = h->opts.max_body + MAX_HEAD;
        list_add_tail(&h->conns, &hc->link);
        h->n_conns++;
        notice_flush(h, &h->refused, "refused at the connection limit", now);
        arm_timer(h);
}

/* ---- timeouts ---- */

static void check_timeouts(struct httpd *h, uint64_t now) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &h->conns) {
                struct hconn *hc = list_entry(pos, struct hconn, link);
                switch (hc->phase) {
                case HC_READING:
                        if (!hc->head_done && now - hc->accepted_ns >= h->header_timeout_ns) {
                                notice(h, &h->timed_out, "closed a connection that sent no complete request in time",
                                       "closed without a complete request in time", now);
                                hconn_close(hc);
                        } else if (hc->head_done && now - hc->progress_ns >= h->idle_timeout_ns) {
                                notice(h, &h->timed_out, "closed a connection whose request body stopped arriving",
                                       "closed without a complete request in time", now);
                                hconn_close(hc);
                        }
                        break;
                case HC_SENDING: {
                        size_t u = netconn_unsent(hc->nc);
                        if (u < hc->unsent) {
                                hc->unsent = u;
                                hc->progress_ns = now;
                        } else if (now - hc->progress_ns >= h->idle_timeout_ns) {
                                notice(h, &h->slow_reader, "closed a connection that did not read its response",
                                       "closed for not reading their response", now);
                                hconn_close(hc);
                        }
                        break;
                }
                case HC_DEFERRED:
                        break;
                }
        }
        notice_flush(h, &h->timed_out, "closed without a complete request in time", now);
        notice_flush(h, &h->slow_reader, "closed for not reading their response", now);
        notice_flush(h, &h->busy, "answered 503 for the body budget", now);
}

static void on_timer(struct loop_op *op, int res, unsigned flags) {
        struct httpd_timer *t = container_of(op, struct httpd_timer, op);

        t->armed = false;
        if (!t->h) {
                free(t);
                return;
        }
        check_timeouts(t->h, now_ns());
        arm_timer(t->h);
}

/* Ticks while there are connections: a connection is closed within a quarter of its timeout
 * after it passed. */
static void arm_timer(struct httpd *h) {
        struct httpd_timer *t = h->timer;

        if (!t || t->armed || h->n_conns == 0)
                return;
        uint64_t period = MIN(h->header_timeout_ns, h->idle_timeout_ns) / 4;
        period = MAX(period, 50 * NSEC_PER_MSEC);
        period = MIN(period, NSEC_PER_SEC);
        t->ts = (struct __kernel_timespec){ .tv_sec = (long long)(period / NSEC_PER_SEC),
                                            .tv_nsec = (long long)(period % NSEC_PER_SEC) };
        struct io_uring_sqe *sqe = loop_sqe(t->loop, &t->op);
        io_uring_prep_timeout(sqe, &t->ts, 0, 0);
        t->armed = true;
}

/* ---- the server ---- */

int httpd_open_with(struct httpd *h, struct loop *loop, const char *host, int port, const struct httpd_options *o,
                    httpd_handler handler, void *userdata) {
        int r;

        *h = (struct httpd){ .opts = *o, .handler = handler, .userdata = userdata };
        h->limits = (struct http_limits){ .max_request_line = 8192, .max_head = MAX_HEAD, .max_headers = HTTP_MAX_HEADERS };
        if (!h->opts.max_connections)
                h->opts.max_connections = HTTPD_MAX_CONNECTIONS;
        h->header_timeout_ns = sec_to_ns(o->header_timeout_s > 0 ? o->header_timeout_s : HTTPD_HEADER_TIMEOUT_S);
        h->idle_timeout_ns = sec_to_ns(o->idle_timeout_s > 0 ? o->idle_timeout_s : HTTPD_IDLE_TIMEOUT_S);
        /* Room for two maximal bodies at once, and some for small ones. */
        h->max_bodies = 2 * h->opts.max_body + (1u << 20);
        if (o->what)
                snprintf(h->what, sizeof h->what, "%s", o->what);
        else
                snprintf(h->what, sizeof h->what, "HTTP on %s:%d", host, port);
        h->opts.what = NULL; /* not kept: the caller's string may go */
        list_init(&h->conns);
        h->timer = calloc(1, sizeof *h->timer);
        if (!h->timer)
                return -ENOMEM;
        h->timer->loop = loop;
        h->timer->h = h;
        h->timer->op.cb = on_timer;
        r = netlistener_open(&h->listener, loop, host, port, on_accept, h);
        if (r < 0) {
                free(h->timer);
                h->timer = NULL;
        }
        return r;
}

int httpd_open(struct httpd *h, struct loop *loop, const char *host, int port, size_t max_body, httpd_handler handler,
               void *userdata) {
        struct httpd_options o = { .max_body = max_body };
        return httpd_open_with(h, loop, host, port, &o, handler, userdata);
}

void httpd_close(struct httpd *h) {
        struct list *pos, *tmp;

        netlistener_close(&h->listener);
        list_for_each_safe(pos, tmp, &h->conns)
                hconn_close(list_entry(pos, struct hconn, link));
        if (h->timer) {
                if (h->timer->armed) {
                        struct io_uring_sqe *sqe = loop_sqe(h->timer->loop, NULL);
                        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&h->timer->op, 0);
                        h->timer->h = NULL;
                } else
                        free(h->timer);
                h->timer = NULL;
        }
}

int httpd_port(const struct httpd *h) { return netlistener_port(&h->listener); }

struct httpd_deferred *httpd_defer(const struct httpd_request *rq) {
        struct hconn *hc = rq->hc;
        struct httpd_deferred *d;

        if (!hc || hc->phase != HC_READING || hc->deferred)
                return NULL;
        d = calloc(1, sizeof *d);
        if (!d)
                return NULL;
        d->hc = hc;
        hc->deferred = d;
        hc->phase = HC_DEFERRED;
        return d;
}

void httpd_answer(struct httpd_deferred *d, struct httpd_response *resp) {
        struct hconn *hc;

        if (!d)
                return;
        hc = d->hc;
        free(d);
        if (!hc)
                return;
        hc->deferred = NULL;
        if (resp)
                respond(hc, resp);
        else
                hconn_close(hc);
}

void httpd_respond_json(struct httpd_response *resp, int status, const cJSON *j) {
        char *t = cJSON_Print(j);
        resp->status = status;
        resp->content_type = "application/json";
        resp->body.len = 0;
        if (t) {
                (void)buf_printf(&resp->body, SIZE_MAX, "%s\n", t);
                free(t);
        }
}

void httpd_respond_error(struct httpd_response *resp, int status, const char *message) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "error", message);
        httpd_respond_json(resp, status, j);
        cJSON_Delete(j);
}

bool httpd_is(const struct httpd_request *rq, const char *method, const char *path) {
        size_t ml = strlen(method), pl = strlen(path);
        return rq->req->method_len == ml && memcmp(rq->req->method, method, ml) == 0 && rq->req->path_len == pl &&
               memcmp(rq->req->path, path, pl) == 0;
}

bool httpd_prefix_is(const struct httpd_request *rq, const char *method, const char *prefix, const char **ret_rest,
                     size_t *ret_len) {
        size_t ml = strlen(method), pl = strlen(prefix);
        if (rq->req->method_len != ml || memcmp(rq->req->method, method, ml) != 0 || rq->req->path_len < pl ||
            memcmp(rq->req->path, prefix, pl) != 0)
                return false;
        *ret_rest = rq->req->path + pl;
        *ret_len = rq->req->path_len - pl;
        return true;
}
