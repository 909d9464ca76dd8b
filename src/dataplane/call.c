#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "log.h"
#include "macros.h"
#include "proto.h"

#define CALL_BUCKETS 64u                 /* a power of two */
/* Ring bytes left for the replica's own requests when answers are written into its ring. */
#define CALL_RING_RESERVE 4096u

/* One call a replica made. Lives until its answer is completely in the caller's ring (or the
 * caller cancelled it, or went away). */
struct call {
        uint64_t id;                    /* the caller's call id */
        struct replica *caller;
        struct request *q;              /* NULL once answered (pending may still hold records) */
        bool begun, stream, refused;
        bool want_stream;               /* the caller reads pieces (PROTO_CALL_STREAM) and credits them */
        int refuse_status;
        const char *refuse_why;
        uint64_t credit;                /* stream: bytes the caller will still take */
        uint64_t discard_left;          /* refused: argument bytes still to skip */
        struct buf pending;             /* encoded records that did not fit into the ring yet */
        struct list link;               /* in its bucket */
        struct list plink;              /* in the table's pending list */
        struct list wlink;              /* in the table's waiting list */
        bool in_pending, in_waiting;
};

struct call_table {
        struct list buckets[CALL_BUCKETS];
        struct list pending;            /* calls with records waiting for ring space */
        struct list waiting;            /* calls whose sink said "no room" */
        unsigned n;
        struct call *assembling;        /* its argument records are still coming */
};

/* How a record waits in call.pending. */
struct pending_hdr {
        uint16_t type;
        uint32_t len;
};

static const struct sink_ops call_sink_ops;

static struct call_table *table_of(struct replica *rep) {
        if (!rep->calls) {
                struct call_table *t = calloc(1, sizeof *t);
                if (!t)
                        return NULL;
                for (unsigned i = 0; i < CALL_BUCKETS; i++)
                        list_init(&t->buckets[i]);
                list_init(&t->pending);
                list_init(&t->waiting);
                rep->calls = t;
        }
        return rep->calls;
}

static struct list *bucket(struct call_table *t, uint64_t id) {
        return &t->buckets[(id ^ (id >> 17)) & (CALL_BUCKETS - 1)];
}

static struct call *call_find(struct replica *rep, uint64_t id) {
        struct list *b, *pos;

        if (!rep->calls)
                return NULL;
        b = bucket(rep->calls, id);
        for (pos = b->next; pos != b; pos = pos->next) {
                struct call *c = list_entry(pos, struct call, link);
                if (c->id == id)
                        return c;
        }
        return NULL;
}

unsigned call_link_count(const struct replica *rep) { return rep->calls ? rep->calls->n : 0; }

static void pending_del(struct call *c) {
        if (c->in_pending) {
                list_del(&c->plink);
                c->in_pending = false;
        }
}

static void waiting_del(struct call *c) {
        if (c->in_waiting) {
                list_del(&c->wlink);
                c->in_waiting = false;
        }
}

static void call_free(struct call *c) {
        struct call_table *t = c->caller->calls;

        if (t->assembling == c)
                t->assembling = NULL;
        list_del(&c->link);
        pending_del(c);
        waiting_del(c);
        t->n--;
        buf_free(&c->pending);
        free(c);
}

/* Publishes what was written into the caller's request ring (the bell rings once per loop
 * iteration, replica_link_ring_bells). */
static void publish(struct replica *rep) {
        if (ring_publish(&rep->seg.req))
                rep->req_bell_pending = true;
}

static int ring_put(struct replica *rep, uint16_t type, const void *h, size_t hl, const void *d, size_t dl) {
        void *mem;
        int r = ring_alloc(&rep->seg.req, type, 0, (uint32_t)(hl + dl), &mem);
        if (r < 0)
                return r;
        memcpy(mem, h, hl);
        if (dl)
                memcpy((uint8_t *)mem + hl, d, dl);
        return 0;
}

/* Writes one record of the answer, or keeps it (in order) until the ring has room. */
static void emit(struct call *c, uint16_t type, const void *h, size_t hl, const void *d, size_t dl) {
        struct replica *rep = c->caller;

        if (c->pending.len == 0 && ring_put(rep, type, h, hl, d, dl) == 0) {
                publish(rep);
                return;
        }
        struct pending_hdr ph = { type, (uint32_t)(hl + dl) };
        /* Bounded without a limit here: the backend stops delivering once room() says 0, so
         * at most one delivery (a ring record of the callee) waits, plus a failure message. */
        if (buf_append(&c->pending, &ph, sizeof ph, SIZE_MAX) < 0 || buf_append(&c->pending, h, hl, SIZE_MAX) < 0 ||
            (dl && buf_append(&c->pending, d, dl, SIZE_MAX) < 0)) {
                log_error("out of memory for the answer to a call of replica %s", rep->id);
                return; /* the caller's future then waits for its timeout */
        }
        if (!c->in_pending) {
                list_add_tail(&rep->calls->pending, &c->plink);
                c->in_pending = true;
        }
}

/* Body bytes of the answer as PROTO_CALL_RESP_BODY records. */
static void emit_body(struct call *c, const void *data, size_t len) {
        uint32_t max = ring_max_payload(&c->caller->seg.req) - (uint32_t)sizeof(struct proto_body);

        while (len > 0) {
                size_t n = MIN(len, (size_t)max);
                struct proto_body b = { .req_id = c->id, .len = (uint32_t)n };
                emit(c, PROTO_CALL_RESP_BODY, &b, sizeof b, data, n);
                data = (const uint8_t *)data + n;
                len -= n;
        }
}

static void emit_start(struct call *c, int status, bool stream, uint64_t body_len) {
        struct proto_call_resp s = {
                .call_id = c->id,
                .status = (uint32_t)status,
                .flags = stream ? PROTO_RESP_STREAM : 0,
                .body_len = stream ? 0 : body_len,
        };
        c->begun = true;
        emit(c, PROTO_CALL_RESP_START, &s, sizeof s, NULL, 0);
}

/* The answer is complete (as far as the request model goes): the call ends once its records
 * are in the ring. */
static void call_answered(struct call *c) {
        c->q = NULL;
        if (c->pending.len == 0)
                call_free(c);
}

/* ---- the sink: the calling replica ---- */

/* Whether c's caller takes more of its answer as far as flow control goes: one that reads a
 * streamed answer in pieces only while it has credit left (its CALL_CREDIT resumes it). */
static bool has_credit(const struct call *c) {
        return !(c->stream && c->want_stream) || c->credit > 0;
}

static void sink_begin(struct request *q, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        struct call *c = q->sink_ctx;

        (void)headers, (void)headers_len; /* a call answers bytes: headers are HTTP's */
        c->stream = body_len == REQUEST_LEN_STREAM;
        emit_start(c, status, c->stream, body_len);
}

static void sink_body(struct request *q, const void *data, size_t len) {
        struct call *c = q->sink_ctx;

        if (c->stream)
                c->credit -= MIN(c->credit, (uint64_t)len);
        emit_body(c, data, len);
}

static void sink_end(struct request *q) {
        struct call *c = q->sink_ctx;

        router_record(q, q->status);
        if (c->stream) {
                struct proto_cancel e = { .req_id = c->id };
                emit(c, PROTO_CALL_RESP_END, &e, sizeof e, NULL, 0);
        }
        call_answered(c);
}

/* A failure: a (second, when the answer had begun) CALL_RESP_START with the status and the
 * reason as its body; the caller's future takes the last START as the answer. */
static void sink_fail(struct request *q, int status, const char *why) {
        struct call *c = q->sink_ctx;
        size_t n = strlen(why);

        router_record(q, status);
        emit_start(c, status, false, n);
        emit_body(c, why, n);
        call_answered(c);
}

static size_t sink_room(const struct request *q) {
        struct call *c = q->sink_ctx;
        struct replica *rep = c->caller;
        uint32_t space;

        if (c->pending.len > 0)
                return 0;
        space = ring_free_space(&rep->seg.req);
        space = space > CALL_RING_RESERVE ? space - CALL_RING_RESERVE : 0;
        /* A caller that reads pieces says how many more it takes; one that waits for the whole
         * answer takes it all (its own memory). */
        size_t room = c->stream && c->want_stream ? (size_t)MIN((uint64_t)space, c->credit) : space;
        if (room == 0 && !c->in_waiting) {
                list_add_tail(&rep->calls->waiting, &c->wlink);
                c->in_waiting = true;
        }
        return room;
}

static const struct sink_ops call_sink_ops = {
        .begin = sink_begin,
        .body = sink_body,
        .end = sink_end,
        .fail = sink_fail,
        .room = sink_room,
};

/* ---- routing ---- */

/* Splits a call's target, "Deployment" or "APP/Deployment" ("APP/": APP's ingress), into the
 * application (`app` when unqualified) and the deployment. Returns false for a malformed one. */
static bool split_target(const char *v, size_t len, const char **app, size_t *app_len, const char **name,
                         size_t *name_len) {
        const char *slash = memchr(v, '/', len);

        if (!slash) {
                *name = v;
                *name_len = len;
                return true;
        }
        *app = v;
        *app_len = (size_t)(slash - v);
        *name = slash + 1;
        *name_len = len - *app_len - 1;
        return proto_name_valid(*app, *app_len, PROTO_MAX_NAME) && !memchr(*name, '/', *name_len) &&
               (*name_len == 0 || proto_name_valid(*name, *name_len, PROTO_MAX_NAME));
}

int call_route(struct router *r, struct request *q, const char *app, size_t app_len) {
        const struct http_header *h = http_request_header(&q->req, CALL_HDR_DEPLOYMENT);
        const char *name;
        size_t name_len;
        struct deployment *d;

        if (!h || !r->find || !split_target(h->value, h->value_len, &app, &app_len, &name, &name_len))
                return -ENOENT;
        d = r->find(r->find_userdata, app, app_len, name, name_len);
        if (!d)
                return -ENOENT;
        q->dep = d;
        q->path = "/";
        q->path_len = 1;
        return 0;
}

/* ---- records from the caller ---- */

/* Refuses a call (its argument bytes still coming are skipped): answered from the loop. */
static void refuse(struct call *c, int status, const char *why) {
        c->refused = true;
        c->refuse_status = status;
        c->refuse_why = why;
}

static void submit(struct call *c) {
        struct replica *rep = c->caller;
        struct router *r = router_get();
        struct request *q = c->q;
        int s;

        rep->calls->assembling = NULL;
        if (c->refused) {
                request_fail(q, c->refuse_status, c->refuse_why);
                return;
        }
        q->body_sent = 0;
        if (call_route(r, q, rep->dep->app, strlen(rep->dep->app)) < 0) {
                /* Within its application the SDK checks the graph first: only a caller that
                 * skipped it gets here. Another application's deployment is looked up here. */
                const struct http_header *h = http_request_header(&q->req, CALL_HDR_DEPLOYMENT);
                const char *app = rep->dep->app, *name = "";
                size_t app_len = strlen(app), name_len = 0;
                char why[160];
                if (h)
                        (void)split_target(h->value, h->value_len, &app, &app_len, &name, &name_len);
                if (name_len)
                        snprintf(why, sizeof why, "application '%.*s' has no deployment '%.*s' (or no such application)",
                                 (int)MIN(app_len, (size_t)48), app, (int)MIN(name_len, (size_t)48), name);
                else
                        snprintf(why, sizeof why, "no application '%.*s' (for its ingress)", (int)MIN(app_len, (size_t)96), app);
                q->dep = NULL;
                request_fail(q, 404, why); /* copies why */
                return;
        }
        q->start_ns = loop_now(request_loop());
        s = router_submit(r, q, r->call_timeout_s);
        if (s == -ENOENT)
                request_fail(q, 503, "no replica of the deployment is running");
        else if (s < 0)
                request_fail(q, 503, "the deployment's queue is full (max_queued_requests): back-pressure");
}

static int on_call_start(struct replica *rep, const uint8_t *p, uint32_t len) {
        static const struct http_limits limits = { .max_request_line = 64, .max_head = 4096, .max_headers = 8 };
        struct router *r = router_get();
        struct proto_call_start s;
        struct call_table *t = table_of(rep);
        _cleanup_(buf_free) struct buf head = {};
        struct call *c;
        struct request *q;

        if (!t)
                return -ENOMEM;
        if (len < sizeof s)
                return -EBADMSG;
        memcpy(&s, p, sizeof s);
        p += sizeof s;
        if ((uint64_t)s.deployment_len + s.method_len + s.path_len + s.chunk_len != len - sizeof s ||
            s.chunk_len > s.body_len || s.body_len > PROTO_MAX_RESP_BODY || (s.flags & ~PROTO_CALL_STREAM) ||
            !proto_name_valid(p, s.deployment_len, PROTO_MAX_NAME) ||
            !proto_name_valid(p + s.deployment_len, s.method_len, PROTO_MAX_NAME) ||
            (s.path_len && !proto_name_valid(p + s.deployment_len + s.method_len, s.path_len, PROTO_MAX_CALL_PATH)))
                return -EBADMSG;
        if (t->assembling || t->n >= PROTO_MAX_CALLS || call_find(rep, s.call_id))
                return -EBADMSG;

        /* A target "APP/Deployment" (another application's) is routed by the worker: the part
         * before the '/' must be a name too. */
        const char *tapp = rep->dep->app, *tname;
        size_t tapp_len = strlen(tapp), tname_len;
        if (!split_target((const char *)p, s.deployment_len, &tapp, &tapp_len, &tname, &tname_len))
                return -EBADMSG;
        bool other_app = tapp_len != strlen(rep->dep->app) || memcmp(tapp, rep->dep->app, tapp_len) != 0;

        /* The head: what routes it here and at a peer, and what the callee reads. The caller is
         * named with its application when the callee's is another one; the call path always
         * ("app/Deployment": the same name in two applications is not a cycle). */
        if (buf_printf(&head, SIZE_MAX,
                       "POST / HTTP/1.1\r\nhost: serve\r\n" CALL_HDR_DEPLOYMENT ": %.*s\r\n" CALL_HDR_METHOD
                       ": %.*s\r\n" CALL_HDR_CALLER ": %s%s%s\r\n" CALL_HDR_PATH ": %.*s%s%s/%s\r\n\r\n",
                       (int)s.deployment_len, (const char *)p, (int)s.method_len, (const char *)p + s.deployment_len,
                       other_app ? rep->dep->app : "", other_app ? "/" : "", rep->dep->name, (int)s.path_len,
                       (const char *)p + s.deployment_len + s.method_len, s.path_len ? ">" : "", rep->dep->app,
                       rep->dep->name) < 0)
                return -ENOMEM;

        c = calloc(1, sizeof *c);
        q = c ? request_new(&call_sink_ops, c, s.call_id) : NULL;
        if (!q) {
                free(c);
                return -ENOMEM;
        }
        c->id = s.call_id;
        c->caller = rep;
        c->q = q;
        c->credit = PROTO_STREAM_WINDOW;
        c->want_stream = (s.flags & PROTO_CALL_STREAM) != 0;
        list_add_tail(bucket(t, c->id), &c->link);
        t->n++;
        q->call = true;

        uint64_t max = r->max_call_body ? r->max_call_body : PROTO_MAX_RESP_BODY;
        if (s.body_len > max)
                refuse(c, 413, "the argument is larger than max_request_body_bytes");
        else if (request_body_reserve(q, head.len + s.body_len) < 0)
                refuse(c, 503, "the node's request-body budget is exhausted");
        else if (!(q->raw = malloc(head.len + s.body_len + 1)))
                refuse(c, 503, "out of memory");
        if (!c->refused) {
                memcpy(q->raw, head.data, head.len);
                if (http_parse_request(q->raw, head.len, 0, &limits, &q->req) != (int)head.len)
                        return -EBADMSG; /* cannot happen: the names were checked */
                q->head_len = head.len;
                q->body = q->raw + head.len;
                q->body_len = s.body_len;
                memcpy((char *)q->body, p + s.deployment_len + s.method_len + s.path_len, s.chunk_len);
                q->raw[head.len + s.body_len] = '\0';
        }
        q->body_sent = s.chunk_len; /* argument bytes here so far (reset when submitted) */
        c->discard_left = s.body_len - s.chunk_len;
        if (c->discard_left == 0)
                submit(c);
        else
                t->assembling = c;
        return 0;
}

static int on_call_body(struct replica *rep, const uint8_t *p, uint32_t len) {
        struct call_table *t = rep->calls;
        struct proto_body b;
        struct call *c;

        if (!proto_body_parse(p, len, &b))
                return -EBADMSG;
        c = t ? t->assembling : NULL;
        if (!c || c->id != b.req_id || b.len > c->discard_left || b.len == 0)
                return -EBADMSG;
        if (!c->refused)
                memcpy((char *)c->q->body + c->q->body_sent, p + sizeof b, b.len);
        c->q->body_sent += b.len;
        c->discard_left -= b.len;
        if (c->discard_left == 0)
                submit(c);
        return 0;
}

int call_link_record(struct replica *rep, uint16_t type, const uint8_t *p, uint32_t len) {
        struct proto_cancel cn;
        struct proto_credit cr;
        struct call *c;

        switch (type) {
        case PROTO_CALL_START:
                return on_call_start(rep, p, len);
        case PROTO_CALL_BODY:
                return on_call_body(rep, p, len);
        case PROTO_CALL_CANCEL:
                if (len != sizeof cn)
                        return -EBADMSG;
                memcpy(&cn, p, sizeof cn);
                c = call_find(rep, cn.req_id);
                if (!c)
                        return 0; /* answered already: the caller drops the answer */
                if (rep->calls->assembling == c)
                        return -EBADMSG; /* its argument records are contiguous */
                if (c->q)
                        request_abandon(c->q); /* cancels it where it runs */
                call_free(c);
                return 0;
        case PROTO_CALL_CREDIT:
                if (len != sizeof cr)
                        return -EBADMSG;
                memcpy(&cr, p, sizeof cr);
                c = call_find(rep, cr.req_id);
                if (!c)
                        return 0;
                /* More than a window outstanding would be the caller's own memory: cap it. */
                c->credit = MIN(c->credit + MIN(cr.bytes, (uint64_t)PROTO_STREAM_WINDOW), (uint64_t)PROTO_STREAM_WINDOW);
                if (c->q && c->q->sink_blocked && c->pending.len == 0 && has_credit(c)) {
                        waiting_del(c);
                        request_sink_ready(c->q);
                }
                return 0;
        default:
                return -EBADMSG;
        }
}

/* Writes c's waiting records while the ring has room. Returns true when all are written. */
static bool flush_pending(struct call *c) {
        struct replica *rep = c->caller;
        size_t off = 0;

        while (off < c->pending.len) {
                struct pending_hdr ph;
                memcpy(&ph, c->pending.data + off, sizeof ph);
                if (ring_put(rep, ph.type, c->pending.data + off + sizeof ph, ph.len, NULL, 0) < 0)
                        break;
                off += sizeof ph + ph.len;
        }
        if (off)
                publish(rep);
        buf_consume(&c->pending, off);
        return c->pending.len == 0;
}

bool call_link_flush(struct replica *rep) {
        struct call_table *t = rep->calls;
        struct list *pos, *tmp;

        if (!t)
                return false;
        list_for_each_safe(pos, tmp, &t->pending) {
                struct call *c = list_entry(pos, struct call, plink);
                if (!flush_pending(c))
                        break; /* the ring is full: keep the order */
                pending_del(c);
                if (!c->q)
                        call_free(c);
                else if (c->q->sink_blocked && has_credit(c))
                        request_sink_ready(c->q);
        }
        if (ring_free_space(&rep->seg.req) > CALL_RING_RESERVE) {
                list_for_each_safe(pos, tmp, &t->waiting) {
                        struct call *c = list_entry(pos, struct call, wlink);
                        waiting_del(c);
                        if (c->q && c->q->sink_blocked && has_credit(c))
                                request_sink_ready(c->q);
                }
        }
        return !list_empty(&t->pending) || !list_empty(&t->waiting);
}

void call_link_abandon_all(struct replica *rep) {
        struct call_table *t = rep->calls;

        if (!t)
                return;
        for (unsigned i = 0; i < CALL_BUCKETS; i++) {
                struct list *pos, *tmp;
                list_for_each_safe(pos, tmp, &t->buckets[i]) {
                        struct call *c = list_entry(pos, struct call, link);
                        if (c->q)
                                request_abandon(c->q);
                        call_free(c);
                }
        }
        free(t);
        rep->calls = NULL;
}
