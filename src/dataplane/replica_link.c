#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "call.h"
#include "log.h"
#include "proto.h"
#include "replica_link.h"

/* Scratch space for one record copied out of a response ring before it is parsed (a replica
 * can keep writing to shared memory while we read: never parse in place). One proxy thread. */
static uint8_t *scratch;
static size_t scratch_cap;

static const struct backend_ops replica_backend_ops;
static void on_repoll(struct loop_deferred *d);

int replica_link_init(struct replica *rep, uint32_t max_ongoing) {
        rep->slots = calloc(max_ongoing, sizeof(*rep->slots));
        if (!rep->slots)
                return -ENOMEM;
        rep->n_slots = max_ongoing;
        rep->limit = max_ongoing;
        list_init(&rep->backlog);
        rep->be.ops = &replica_backend_ops;
        rep->repoll.fn = on_repoll;
        list_init(&rep->repoll.link);
        return 0;
}

int replica_link_set_limit(struct replica *rep, uint32_t max_ongoing) {
        if (max_ongoing > rep->n_slots) {
                struct request **n = realloc(rep->slots, max_ongoing * sizeof *n);
                if (!n)
                        return -ENOMEM;
                memset(n + rep->n_slots, 0, (max_ongoing - rep->n_slots) * sizeof *n);
                rep->slots = n;
                rep->n_slots = max_ongoing;
        }
        rep->limit = max_ongoing;
        return 0;
}

void replica_link_free(struct replica *rep) {
        call_link_abandon_all(rep);
        loop_undefer(&rep->repoll);
        free(rep->slots);
        rep->slots = NULL;
        rep->n_slots = 0;
}

static bool hop_by_hop(const struct http_header *h) {
        static const char *const names[] = { "connection", "keep-alive", "transfer-encoding", "te",
                                             "upgrade", "trailer", "proxy-connection" };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (h->name_len == strlen(names[i]) && strncasecmp(h->name, names[i], h->name_len) == 0)
                        return true;
        return false;
}

/* Publishes the request ring. The doorbell is not rung here but once per loop iteration
 * (upstream_ring_bells), so a replica woken up finds every request of the batch. */
static void publish_requests(struct replica *rep) {
        if (ring_publish(&rep->seg.req))
                rep->req_bell_pending = true;
}

void replica_link_ring_bells(struct replica *rep) {
        if (rep->req_bell_pending) {
                rep->req_bell_pending = false;
                (void)doorbell_ring(rep->seg.req_bell);
        }
}

/* Tries to allocate a record of header_len + up to want body bytes (at least min_body of them);
 * shrinks the body part when the ring is short of space. Returns the body bytes that fit (>= 0)
 * with *ret_p set, or -EAGAIN (nothing was allocated). */
static void slot_release(struct replica *rep, struct request *u);

static ssize_t alloc_chunked(struct ring *r, uint16_t type, size_t header_len, uint64_t want, uint64_t min_body,
                             void **ret_p) {
        uint64_t maxp = ring_max_payload(r);
        uint64_t chunk = MIN(want, maxp - header_len);

        for (int tries = 0; tries < 4; tries++) {
                uint32_t free_b = ring_free_space(r);
                if (free_b < header_len + 2 * RING_HDR_SIZE)
                        return -EAGAIN;
                chunk = MIN(chunk, free_b - header_len - 2 * RING_HDR_SIZE);
                if (chunk < min_body)
                        return -EAGAIN;
                if (ring_alloc(r, type, 0, (uint32_t)(header_len + chunk), ret_p) == 0)
                        return (ssize_t)chunk;
                chunk /= 2; /* the free space is split by the end of the data area */
        }
        return -EAGAIN;
}

static int send_start(struct replica *rep, struct request *u) {
        const struct http_request *q = &u->req;
        size_t hdr_bytes = 0, fixed;
        uint32_t n_headers = 0;
        uint8_t *p;
        void *mem;
        ssize_t chunk;

        for (size_t i = 0; i < q->n_headers; i++) {
                if (hop_by_hop(&q->headers[i]))
                        continue;
                hdr_bytes += sizeof(struct proto_header) + q->headers[i].name_len + q->headers[i].value_len;
                n_headers++;
        }
        fixed = sizeof(struct proto_req_start) + q->method_len + u->path_len + q->query_len + hdr_bytes;
        if (fixed > ring_max_payload(&rep->seg.req))
                return -EMSGSIZE; /* a head that can never fit (the proxy's header limits prevent it) */
        chunk = alloc_chunked(&rep->seg.req, PROTO_REQ_START, fixed, u->body_len, 0, &mem);
        if (chunk < 0)
                return (int)chunk;

        struct proto_req_start s = {
                .req_id = u->backend_id,
                .handler = 0,
                .method_len = (uint32_t)q->method_len,
                .path_len = (uint32_t)u->path_len,
                .query_len = (uint32_t)q->query_len,
                .has_query = q->query != NULL,
                .flags = (u->call ? PROTO_REQ_CALL : 0) | PROTO_REQ_STREAM_OK, /* the proxy, peer and call sinks take streams */
                .n_headers = n_headers,
                .headers_len = (uint32_t)hdr_bytes,
                .chunk_len = (uint32_t)chunk,
                .body_len = u->body_len,
        };
        p = mem;
        memcpy(p, &s, sizeof s);
        p += sizeof s;
        memcpy(p, q->method, q->method_len);
        p += q->method_len;
        memcpy(p, u->path, u->path_len);
        p += u->path_len;
        if (q->query_len)
                memcpy(p, q->query, q->query_len);
        p += q->query_len;
        for (size_t i = 0; i < q->n_headers; i++) {
                const struct http_header *h = &q->headers[i];
                struct proto_header ph = { (uint32_t)h->name_len, (uint32_t)h->value_len };
                if (hop_by_hop(h))
                        continue;
                memcpy(p, &ph, sizeof ph);
                p += sizeof ph;
                memcpy(p, h->name, h->name_len);
                p += h->name_len;
                memcpy(p, h->value, h->value_len);
                p += h->value_len;
        }
        if (chunk)
                memcpy(p, u->body, (size_t)chunk);
        u->body_sent = (uint64_t)chunk;
        u->start_sent = true;
        return 0;
}

static int send_body(struct replica *rep, struct request *u) {
        while (u->body_sent < u->body_len) {
                void *mem;
                ssize_t chunk = alloc_chunked(&rep->seg.req, PROTO_REQ_BODY, sizeof(struct proto_body),
                                              u->body_len - u->body_sent, 1, &mem);
                if (chunk < 0)
                        return -EAGAIN;
                struct proto_body b = { .req_id = u->backend_id, .len = (uint32_t)chunk };
                memcpy(mem, &b, sizeof b);
                memcpy((uint8_t *)mem + sizeof b, u->body + u->body_sent, (size_t)chunk);
                u->body_sent += (uint64_t)chunk;
        }
        return 0;
}

static int send_cancel(struct replica *rep, struct request *u) {
        void *mem;
        int r = ring_alloc(&rep->seg.req, PROTO_REQ_CANCEL, 0, sizeof(struct proto_cancel), &mem);
        if (r < 0)
                return r;
        struct proto_cancel c = { .req_id = u->backend_id };
        memcpy(mem, &c, sizeof c);
        return 0;
}

static int send_credit(struct replica *rep, struct request *u, uint64_t bytes) {
        void *mem;
        int r = ring_alloc(&rep->seg.req, PROTO_REQ_CREDIT, 0, sizeof(struct proto_credit), &mem);
        if (r < 0)
                return r;
        struct proto_credit c = { .req_id = u->backend_id, .bytes = bytes };
        memcpy(mem, &c, sizeof c);
        return 0;
}

/* Credit for the bytes of u's streamed response that its sink took: the replica may send as
 * many more. Granted in batches of a quarter window (the replica still has three quarters to
 * go on with, so it never waits for the batching), everything owed at once with `all` (the
 * sink has room again), and never while the sink is full: then u waits for
 * request_sink_ready() (link_resume). The sink may receive what the replica has in flight
 * meanwhile, at most one window. A cancelled stream gets no more credit: its handler learns of
 * the cancel and stops. */
static void stream_credit(struct replica *rep, struct request *u, bool all) {
        uint64_t owed = u->resp_received - u->resp_credited;

        if (u->cancelled || owed == 0 || (!all && owed < PROTO_STREAM_WINDOW / 4))
                return;
        if (request_room(u) == 0) {
                u->sink_blocked = true;
                return;
        }
        if (send_credit(rep, u, owed) < 0) {
                rep->ctl_owed = true; /* the request ring is full: replica_link_flush() retries */
                return;
        }
        u->resp_credited += owed;
        publish_requests(rep);
}

/* A stream's handler must learn of its cancel, or it waits for credit forever: a cancel that
 * does not fit now is sent by replica_link_flush(). */
static void owe_cancel(struct replica *rep, struct request *u) {
        u->cancel_owed = true;
        rep->ctl_owed = true;
}

/* Sends the credits and cancels of streams that did not fit in the request ring before. */
static void send_owed(struct replica *rep) {
        rep->ctl_owed = false;
        for (uint32_t i = 0; i < rep->n_slots && !rep->ctl_owed; i++) {
                struct request *u = rep->slots[i];
                if (!u || u->state != REQUEST_RESPONDING || !u->resp_stream)
                        continue;
                if (u->cancel_owed) {
                        if (send_cancel(rep, u) < 0) {
                                rep->ctl_owed = true;
                                break;
                        }
                        u->cancel_owed = false;
                } else if (!u->sink_blocked)
                        stream_credit(rep, u, true);
        }
        publish_requests(rep);
}

/* Pushes what it can of u. Returns 0 when the whole request (and a pending cancel) is in the
 * ring, -EAGAIN otherwise. */
static int push(struct replica *rep, struct request *u) {
        int r;

        if (!u->start_sent && (r = send_start(rep, u)) < 0)
                return r;
        if ((r = send_body(rep, u)) < 0)
                return r;
        if (u->cancelled && send_cancel(rep, u) < 0)
                return -EAGAIN;
        return 0;
}

static void link_send(struct backend *b, struct request *u) {
        struct replica *rep = list_entry(b, struct replica, be);
        uint32_t slot;
        int r;

        for (slot = 0; slot < rep->n_slots && rep->slots[slot]; slot++)
                ;
        /* The router only assigns to replicas with ongoing < n_slots. */
        if (slot == rep->n_slots) {
                request_fail(u, 503, "no free slot");
                return;
        }
        rep->generation++;
        u->slot = slot;
        u->backend_id = ((uint64_t)rep->generation << 32) | slot;
        u->backend = &rep->be;
        if (list_empty(&rep->backlog) && (r = push(rep, u)) != -EAGAIN) {
                if (r < 0) {
                        request_fail(u, 431, "the request head is larger than the replica's ring");
                        return;
                }
                rep->slots[slot] = u;
                rep->ongoing++;
                u->state = REQUEST_SENT;
        } else {
                rep->slots[slot] = u;
                rep->ongoing++;
                u->state = REQUEST_SENDING;
                list_add_tail(&rep->backlog, &u->link);
        }
        publish_requests(rep);
}

bool replica_link_flush(struct replica *rep) {
        struct list *pos, *tmp;
        bool calls = call_link_flush(rep);

        if (rep->ctl_owed)
                send_owed(rep);
        if (list_empty(&rep->backlog))
                return calls || rep->ctl_owed;
        list_for_each_safe(pos, tmp, &rep->backlog) {
                struct request *u = list_entry(pos, struct request, link);
                int r = push(rep, u);
                if (r == -EMSGSIZE) {
                        list_del(&u->link);
                        slot_release(rep, u);
                        request_fail(u, 431, "the request head is larger than the replica's ring");
                        continue;
                }
                if (r < 0)
                        break;
                list_del(&u->link);
                u->state = REQUEST_SENT;
        }
        /* Publish partial progress too: chunks of a request that did not fit whole must reach
         * the replica, or the ring stays full of records it cannot see. */
        if (rep->seg.req.local != atomic_load_explicit(&rep->seg.req.sh->head, memory_order_relaxed))
                publish_requests(rep);
        return !list_empty(&rep->backlog) || calls || rep->ctl_owed;
}

static void link_cancel(struct request *u) {
        struct replica *rep = list_entry(u->backend, struct replica, be);

        if (rep->stalled == u) {
                /* Its sink is gone: the rest of its response is discarded as it arrives. */
                rep->stalled = NULL;
                loop_defer(request_loop(), &rep->repoll);
        }
        u->cancelled = true;
        if (u->state == REQUEST_SENDING)
                return; /* push() sends the cancel after the rest of the body */
        if (send_cancel(rep, u) < 0) {
                /* Its response is underway: it must stay RESPONDING (and out of the backlog,
                 * since we may be called from within replica_link_poll(), which may finish and free
                 * u right after), so skip the cancel; the rest of the response is discarded as
                 * it arrives. A stream's handler, though, would wait for credit forever. */
                if (u->state == REQUEST_RESPONDING) {
                        if (u->resp_stream)
                                owe_cancel(rep, u);
                        return;
                }
                /* No room now: queue it behind the backlog (already fully sent: push() only
                 * adds the cancel record). */
                u->state = REQUEST_SENDING;
                list_add_tail(&rep->backlog, &u->link);
                return;
        }
        publish_requests(rep);
}

static void slot_release(struct replica *rep, struct request *u) {
        rep->slots[u->slot] = NULL;
        rep->ongoing--;
        u->backend = NULL;
        if (rep->stalled == u)
                rep->stalled = NULL;
}

/* A token character (RFC 9110). */
static bool is_tchar(uint8_t c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL); /* strchr finds the NUL terminator */
}

static bool forbidden_response_header(const uint8_t *n, size_t len) {
        static const char *const names[] = { "content-length", "transfer-encoding", "connection" };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (len == strlen(names[i]) && strncasecmp((const char *)n, names[i], len) == 0)
                        return true;
        return false;
}

/* Validates the header block of a RESP_START and renders it as "Name: value\r\n" lines. */
static int render_headers(const uint8_t *p, uint32_t len, uint32_t n, struct buf *out) {
        const uint8_t *end = p + len;

        for (uint32_t i = 0; i < n; i++) {
                struct proto_header h;
                if ((size_t)(end - p) < sizeof h)
                        return -EBADMSG;
                memcpy(&h, p, sizeof h);
                p += sizeof h;
                if (h.name_len == 0 || h.name_len > (size_t)(end - p) || h.value_len > (size_t)(end - p) - h.name_len)
                        return -EBADMSG;
                for (uint32_t k = 0; k < h.name_len; k++)
                        if (!is_tchar(p[k]))
                                return -EBADMSG;
                if (forbidden_response_header(p, h.name_len))
                        return -EBADMSG;
                for (uint32_t k = 0; k < h.value_len; k++) {
                        uint8_t c = p[h.name_len + k];
                        if ((c < 0x20 && c != '\t') || c == 0x7f)
                                return -EBADMSG; /* CR/LF would let a replica split the response */
                }
                if (buf_append(out, p, h.name_len, SIZE_MAX) < 0 || buf_append(out, ": ", 2, SIZE_MAX) < 0 ||
                    buf_append(out, p + h.name_len, h.value_len, SIZE_MAX) < 0 ||
                    buf_append(out, "\r\n", 2, SIZE_MAX) < 0)
                        return -ENOMEM;
                p += h.name_len + h.value_len;
        }
        return p == end ? 0 : -EBADMSG;
}

static struct request *lookup(struct replica *rep, uint64_t id) {
        uint32_t slot = (uint32_t)id;
        struct request *u;

        if (slot >= rep->n_slots)
                return NULL;
        u = rep->slots[slot];
        if (!u || u->backend_id != id)
                return NULL;
        return u;
}

/* The response of u is complete. */
static void finish(struct replica *rep, struct request *u) {
        slot_release(rep, u);
        u->state = REQUEST_DONE;
        if (request_waiting(u))
                request_end(u);
        else
                request_release(u);
}

/* After delivering to u: when its sink is full, stop reading this ring until it has room. */
static bool stall_if_full(struct replica *rep, struct request *u) {
        if (!request_waiting(u) || request_room(u) > 0)
                return false;
        u->sink_blocked = true;
        rep->stalled = u;
        return true;
}

static int on_resp_start(struct replica *rep, const uint8_t *p, uint32_t len) {
        struct proto_resp_start s;
        struct request *u;
        _cleanup_(buf_free) struct buf hdrs = {};
        bool stream, was_sending;

        if (len < sizeof s)
                return -EBADMSG;
        memcpy(&s, p, sizeof s);
        stream = s.flags & PROTO_RESP_STREAM;
        /* A stream announces no length, and its first piece counts against its window. */
        if (s.status < 200 || s.status > 599 || s.n_headers > PROTO_MAX_RESP_HEADERS ||
            s.headers_len > PROTO_MAX_HEADER_BYTES || s.body_len > PROTO_MAX_RESP_BODY ||
            (s.flags & ~PROTO_RESP_STREAM) || (uint64_t)s.headers_len + s.chunk_len != len - sizeof s ||
            (stream ? s.body_len != 0 || s.chunk_len > PROTO_STREAM_WINDOW : s.chunk_len > s.body_len))
                return -EBADMSG;
        u = lookup(rep, s.req_id);
        /* A response before the whole request was sent is only legitimate for a cancelled one. */
        if (!u || u->state == REQUEST_RESPONDING || (u->state != REQUEST_SENT && !u->cancelled))
                return -EBADMSG;
        if (render_headers(p + sizeof s, s.headers_len, s.n_headers, &hdrs) < 0)
                return -EBADMSG;
        was_sending = u->state == REQUEST_SENDING;
        if (was_sending)
                list_del(&u->link);
        u->state = REQUEST_RESPONDING;
        u->resp_body_len = s.body_len;
        u->resp_received = s.chunk_len;
        u->resp_stream = stream;
        u->resp_credited = 0;
        if (stream) {
                /* Still in the backlog, its cancel was not sent (push() sends it last). */
                if (was_sending && u->cancelled)
                        owe_cancel(rep, u);
                request_begin(u, (int)s.status, hdrs.data, hdrs.len, REQUEST_LEN_STREAM);
                if (s.chunk_len)
                        request_body(u, p + sizeof s + s.headers_len, s.chunk_len);
                stream_credit(rep, u, false);
                return 0;
        }
        request_begin(u, (int)s.status, hdrs.data, hdrs.len, s.body_len);
        if (s.chunk_len)
                request_body(u, p + sizeof s + s.headers_len, s.chunk_len);
        if (u->resp_received == u->resp_body_len) {
                finish(rep, u);
                return 1;
        }
        stall_if_full(rep, u);
        return 0;
}

static int on_resp_body(struct replica *rep, const uint8_t *p, uint32_t len) {
        struct proto_body b;
        struct request *u;

        if (!proto_body_parse(p, len, &b))
                return -EBADMSG;
        u = lookup(rep, b.req_id);
        if (!u || u->state != REQUEST_RESPONDING)
                return -EBADMSG;
        if (u->resp_stream) {
                /* Within its total and within what it was allowed to send. */
                if (b.len > PROTO_MAX_RESP_BODY - u->resp_received ||
                    u->resp_received + b.len > u->resp_credited + PROTO_STREAM_WINDOW)
                        return -EBADMSG;
                u->resp_received += b.len;
                request_body(u, p + sizeof b, b.len);
                stream_credit(rep, u, false);
                return 0;
        }
        if (b.len > u->resp_body_len - u->resp_received)
                return -EBADMSG;
        u->resp_received += b.len;
        request_body(u, p + sizeof b, b.len);
        if (u->resp_received == u->resp_body_len) {
                finish(rep, u);
                return 1;
        }
        stall_if_full(rep, u);
        return 0;
}

/* The end of a streaming response. */
static int on_resp_end(struct replica *rep, const uint8_t *p, uint32_t len) {
        struct proto_cancel e;
        struct request *u;

        if (len != sizeof e)
                return -EBADMSG;
        memcpy(&e, p, sizeof e);
        u = lookup(rep, e.req_id);
        if (!u || u->state != REQUEST_RESPONDING || !u->resp_stream)
                return -EBADMSG;
        finish(rep, u);
        return 1;
}

int replica_link_poll(struct replica *rep) {
        struct ring_record rec;
        int r, done = 0;

        while (!rep->stalled) {
                r = ring_next(&rep->seg.resp, &rec);
                if (r == 0)
                        break;
                if (r < 0)
                        return -EBADMSG;
                if (rec.len > scratch_cap) {
                        uint8_t *n = realloc(scratch, rec.len);
                        if (!n)
                                return -ENOMEM;
                        scratch = n;
                        scratch_cap = rec.len;
                }
                if (rec.len) /* scratch is still NULL before the first non-empty record */
                        memcpy(scratch, rec.payload, rec.len);
                switch (rec.type) {
                case PROTO_RESP_START:
                        r = on_resp_start(rep, scratch, rec.len);
                        break;
                case PROTO_RESP_BODY:
                        r = on_resp_body(rep, scratch, rec.len);
                        break;
                case PROTO_RESP_END:
                        r = on_resp_end(rep, scratch, rec.len);
                        break;
                case PROTO_CALL_START:
                case PROTO_CALL_BODY:
                case PROTO_CALL_CANCEL:
                case PROTO_CALL_CREDIT:
                        r = call_link_record(rep, rec.type, scratch, rec.len);
                        break;
                default:
                        r = -EBADMSG;
                }
                if (r < 0) {
                        ring_release(&rep->seg.resp);
                        return r;
                }
                done += r;
                /* Give space back early so a replica with a large response keeps going. */
                ring_release(&rep->seg.resp);
        }
        return done;
}

void replica_link_fail_all(struct replica *rep, int status, const char *why) {
        for (uint32_t i = 0; i < rep->n_slots; i++) {
                struct request *u = rep->slots[i];
                if (!u)
                        continue;
                if (u->state == REQUEST_SENDING)
                        list_del(&u->link);
                slot_release(rep, u);
                if (request_waiting(u))
                        request_fail(u, status, why);
                else
                        request_release(u);
        }
        list_init(&rep->backlog);
        rep->stalled = NULL;
        rep->ctl_owed = false;
        loop_undefer(&rep->repoll);
        call_link_abandon_all(rep); /* the calls it made are cancelled where they run */
}

static void link_resume(struct request *u) {
        struct replica *rep = list_entry(u->backend, struct replica, be);

        if (u->resp_stream) {
                stream_credit(rep, u, true);
                return;
        }
        if (rep->stalled != u)
                return;
        rep->stalled = NULL;
        loop_defer(request_loop(), &rep->repoll);
}

static void on_repoll(struct loop_deferred *d) {
        struct replica *rep = list_entry(d, struct replica, repoll);

        if (rep->state == REPLICA_DEAD || !rep->slots)
                return;
        int r = replica_link_poll(rep);
        if (r < 0)
                rep->on_broken(rep);
        else if (r > 0)
                router_dispatch(router_get(), rep->dep);
}

static bool link_available(const struct backend *b) {
        const struct replica *rep = list_entry(b, struct replica, be);
        return rep->state == REPLICA_READY && rep->ongoing < (int)rep->limit;
}

static bool link_may_serve(const struct backend *b) {
        const struct replica *rep = list_entry(b, struct replica, be);
        return rep->state == REPLICA_READY || rep->state == REPLICA_STARTING;
}

static double link_load(const struct backend *b) { return list_entry(b, struct replica, be)->ongoing; }

static const struct backend_ops replica_backend_ops = {
        .available = link_available,
        .may_serve = link_may_serve,
        .load = link_load,
        .send = link_send,
        .cancel = link_cancel,
        .resume = link_resume,
};
