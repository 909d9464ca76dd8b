/* libFuzzer target for what a hostile replica can put into its response ring, as the proxy reads
 * it (replica_link_poll in src/dataplane/replica_link.c, ring_next in src/shm/ring.c).
 *
 * The input is a program the replica runs against its shared memory: write raw bytes anywhere in
 * the response ring's data area, move the published head (or the tail, or the request ring's
 * tail) to any value, append well-formed or malformed records at its own cursor. Between those
 * steps the proxy side acts: it polls the response ring, sends new requests (some with bodies
 * large enough to fill the request ring), cancels requests, flushes its backlog, lets a full
 * sink stall the ring and resumes it. The request-model functions replica_link.c calls are
 * stubbed here and check what a client would notice: a valid
 * status, a header block made only of "Name: value\r\n" lines, never more body bytes than
 * announced, an end only after exactly that many, nothing handed over that still lives in shared
 * memory, no request freed while still linked or assigned. After -EBADMSG the replica is killed
 * (replica_link_fail_all) and a fresh one takes over for the rest of the input. Any violation
 * abort()s.
 *
 * Streamed responses too (RESP_START with PROTO_RESP_STREAM, RESP_BODY pieces, RESP_END): the
 * sink gets REQUEST_LEN_STREAM and never more than one PROTO_STREAM_WINDOW past what the proxy
 * credited, a full sink stalls no ring (a streaming one still gets what is in flight), and the
 * PROTO_REQ_CREDIT records the proxy writes into the request ring (read back when the replica
 * consumes it) never credit more than its sink took.
 *
 * Handle calls: replica_link.c hands PROTO_CALL_* records to call.c, which has its own target
 * (fuzz_calls.c). Here call.c is stubbed rather than linked (its request-model and router needs
 * would take over this target): the replica also writes CALL_START, CALL_BODY, CALL_CANCEL and
 * CALL_CREDIT records, well-framed or not, among its responses. The stubs accept a record whose
 * framing is right (0) and reject garbage (-EBADMSG), as call_link_record() does before it looks
 * at its calls, and check that replica_link.c hands each one over only while polling, for this
 * replica, as a private copy of the ring's bytes, and that a rejected one kills the replica.
 * call_link_flush() reports calls waiting for ring space as the last call record said
 * (replica_link_flush() must pass that on), and the calls must be abandoned whenever the replica
 * is killed. */

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "macros.h"
#include "proto.h"
#include "request.h"
#include "ring.h"
#include "segment.h"
#include "replica_link.h"


#define N_SLOTS 4
#define REQ_RING_SIZE 4096u

/* An upreq and what the stubs learned about it. */
struct fake {
        struct request u;
        bool drop_in_begin;  /* the client goes away inside request_begin */
        bool drop_in_body;   /* ... inside request_body (a client that does not read) */
        bool full;           /* its sink says it has no room (until OP_RESUME) */
        bool begun;          /* request_begin was called */
        bool responding;     /* was seen in REQUEST_RESPONDING */
        bool stream;         /* request_begin got REQUEST_LEN_STREAM */
        uint64_t announced;  /* body_len given to request_begin */
        uint64_t delivered;  /* body bytes given to request_body */
        uint64_t credit_seen; /* PROTO_REQ_CREDIT bytes for it found in the request ring */
};

static struct fake *fake_of(struct request *u) {
        return (struct fake *)((char *)u - offsetof(struct fake, u));
}

/* The sink of every request here; its functions are never called (request_* are stubs). */
static const struct sink_ops SINK;

static struct {
        struct replica rep;
        uint8_t *resp_mem, *req_mem;
        uint32_t resp_size;
        uint32_t wpos;      /* the replica's own producer cursor */
        bool in_poll;
        unsigned finished;  /* responses completed (ended or discarded) during this poll */
        struct loop_deferred *deferred; /* the replica's repoll, when queued */
        struct ring req_cons; /* the replica's view of its request ring */
        bool calls_waiting;  /* what call_link_flush() reports */
        bool calls_abandoned; /* call_link_abandon_all() ran for this replica */
        bool call_rejected;  /* call_link_record() said -EBADMSG during this poll */
} W;

static uint8_t *resp_data(void) {
        return W.resp_mem + sizeof(struct ring_shared);
}

static struct ring_shared *resp_sh(void) {
        return (struct ring_shared *)(void *)W.resp_mem;
}

static struct ring_shared *req_sh(void) {
        return (struct ring_shared *)(void *)W.req_mem;
}

/* Whether [p, p+len) overlaps either ring's shared memory: what upstream.c hands to the proxy
 * must be a private copy (a replica can rewrite shared memory at any time). */
static bool in_shared(const void *p, size_t len) {
        uintptr_t a = (uintptr_t)p, b = a + len;
        uintptr_t r1 = (uintptr_t)W.resp_mem, r1e = r1 + ring_footprint(W.resp_size);
        uintptr_t r2 = (uintptr_t)W.req_mem, r2e = r2 + ring_footprint(REQ_RING_SIZE);
        return (a < r1e && b > r1) || (a < r2e && b > r2);
}

static bool in_slots(const struct request *u) {
        for (uint32_t i = 0; i < W.rep.n_slots; i++)
                if (W.rep.slots[i] == u)
                        return true;
        return false;
}

/* A request leaving replica_link.c for good: released from its slot and from the backlog. */
static void check_released(struct request *u) {
        check(u != NULL);
        check(u->backend == NULL);
        check(!in_slots(u));
        check(list_empty(&u->link));
}

/* ---- stubs of what replica_link.c calls ---- */

int doorbell_ring(int efd) {
        check(efd == -1);
        return -EBADF;
}

static bool is_tchar(uint8_t c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The header block must be zero or more "Name: value\r\n" lines, with a token name the proxy
 * does not set itself and a value without control characters (no CR/LF smuggling). */
static void check_header_block(const char *h, size_t len) {
        static const char *const forbidden[] = { "content-length", "transfer-encoding", "connection" };
        unsigned lines = 0;

        if (len == 0)
                return; /* h may be NULL: no pointer arithmetic on it */
        check(h != NULL);
        const uint8_t *p = (const uint8_t *)h, *end = p + len;
        while (p < end) {
                const uint8_t *name = p;
                while (p < end && is_tchar(*p))
                        p++;
                size_t name_len = (size_t)(p - name);
                check(name_len > 0);
                for (size_t i = 0; i < ELEMENTSOF(forbidden); i++)
                        check(!(name_len == strlen(forbidden[i]) &&
                                strncasecmp((const char *)name, forbidden[i], name_len) == 0));
                check(end - p >= 2 && p[0] == ':' && p[1] == ' ');
                p += 2;
                while (p < end && (*p >= 0x20 || *p == '\t') && *p != 0x7f)
                        p++;
                check(end - p >= 2 && p[0] == '\r' && p[1] == '\n');
                p += 2;
                lines++;
        }
        check(lines <= PROTO_MAX_RESP_HEADERS);
}

/* What request_abandon() does for a request at a backend: the sink lets go, the backend sees
 * a cancellation. */
static void abandon(struct request *u) {
        u->sink = NULL;
        u->cancelled = true;
        u->backend->ops->cancel(u);
}

void request_begin(struct request *u, int status, const char *headers, size_t headers_len, uint64_t body_len) {
        struct fake *f = fake_of(u);

        check(W.in_poll);
        check(u->backend == &W.rep.be && W.rep.slots[u->slot] == u && u->state == REQUEST_RESPONDING);
        check(status >= 200 && status <= 599);
        check(body_len <= PROTO_MAX_RESP_BODY || body_len == REQUEST_LEN_STREAM);
        check(u->resp_stream == (body_len == REQUEST_LEN_STREAM));
        check(headers_len <= PROTO_MAX_HEADER_BYTES + 4u * PROTO_MAX_RESP_HEADERS);
        check(!in_shared(headers, headers_len));
        check_header_block(headers, headers_len);
        if (!u->sink)
                return; /* cancelled: the model drops it */
        check(!u->cancelled && !f->begun);
        f->begun = true;
        f->stream = body_len == REQUEST_LEN_STREAM;
        f->announced = body_len;
        f->delivered = 0;
        if (f->drop_in_begin)
                abandon(u); /* what the proxy's conn_close() -> detach_request() does */
}

void request_body(struct request *u, const void *data, size_t len) {
        struct fake *f = fake_of(u);
        const volatile uint8_t *d = data;
        uint8_t sum = 0;

        check(W.in_poll);
        check(u->state == REQUEST_RESPONDING);
        check(len == 0 || data != NULL);
        check(!in_shared(data, len));
        for (size_t i = 0; i < len; i++) /* every byte must be readable (ASan) */
                sum ^= d[i];
        (void)sum;
        if (!u->sink || len == 0)
                return;
        check(!u->cancelled && f->begun);
        if (f->stream) {
                /* A full stream sink gets what the replica had in flight: at most a window past
                 * the credit. */
                check(u->resp_received <= u->resp_credited + PROTO_STREAM_WINDOW);
                check(len <= PROTO_MAX_RESP_BODY - f->delivered);
        } else {
                check(!u->sink_blocked); /* a stalled sink gets nothing until it is resumed */
                check(len <= f->announced - f->delivered);
        }
        f->delivered += len;
        if (f->drop_in_body)
                abandon(u); /* a client that does not read: conn_close() -> detach_request() */
}

size_t request_room(const struct request *u) {
        if (!u->sink)
                return SIZE_MAX;
        return fake_of((struct request *)u)->full ? 0 : 4096;
}

void request_end(struct request *u) {
        struct fake *f = fake_of(u);

        check(W.in_poll);
        check(u->sink == &SINK && !u->cancelled);
        if (f->stream)
                check(f->begun && u->resp_stream && f->delivered == u->resp_received);
        else {
                check(f->begun && f->delivered == f->announced);
                check(u->resp_received == u->resp_body_len && u->resp_body_len == f->announced);
        }
        check(u->state == REQUEST_DONE);
        check_released(u);
        W.finished++;
        free(f);
}

void request_release(struct request *u) {
        if (!u)
                return;
        check(u->sink == NULL && u->cancelled);
        check_released(u);
        if (W.in_poll) {
                /* replica_link.c only discards a finished response of a cancelled request */
                check(u->resp_stream || u->resp_received == u->resp_body_len);
                W.finished++;
        }
        free(fake_of(u));
}

void request_fail(struct request *u, int status, const char *why) {
        check(!W.in_poll);
        check(status == 502);
        check(why != NULL);
        check(u->sink == &SINK);
        check_released(u);
        free(fake_of(u));
}

static struct loop the_loop;
struct loop *request_loop(void) { return &the_loop; }

void loop_defer(struct loop *l, struct loop_deferred *d) {
        check(l == &the_loop);
        d->queued = true;
        W.deferred = d;
}

void loop_undefer(struct loop_deferred *d) {
        d->queued = false;
        if (W.deferred == d)
                W.deferred = NULL;
}

struct router *router_get(void) { return NULL; }

/* ---- stubs of call.c ---- */

static int call_verdict(uint16_t type, const uint8_t *p, uint32_t len);

int call_link_record(struct replica *rep, uint16_t type, const uint8_t *p, uint32_t len) {
        const volatile uint8_t *d = p;
        uint8_t sum = 0;

        check(rep == &W.rep && W.in_poll);
        check(!W.call_rejected); /* nothing is read after garbage */
        check(type >= PROTO_CALL_START && type <= PROTO_CALL_CREDIT);
        check(len == 0 || p != NULL);
        check(!in_shared(p, len)); /* parsed from a private copy: the replica can rewrite the ring */
        for (uint32_t i = 0; i < len; i++) /* every byte must be readable (ASan) */
                sum ^= d[i];
        (void)sum;
        int r = call_verdict(type, p, len);
        if (r < 0)
                W.call_rejected = true;
        return r;
}

static int call_verdict(uint16_t type, const uint8_t *p, uint32_t len) {
        switch (type) {
        case PROTO_CALL_START: {
                struct proto_call_start s;
                if (len < sizeof s)
                        return -EBADMSG;
                memcpy(&s, p, sizeof s);
                if ((uint64_t)s.deployment_len + s.method_len + s.path_len + s.chunk_len != len - sizeof s ||
                    s.chunk_len > s.body_len)
                        return -EBADMSG;
                return 0;
        }
        case PROTO_CALL_BODY: {
                struct proto_body b;
                if (len < sizeof b)
                        return -EBADMSG;
                memcpy(&b, p, sizeof b);
                return b.len == len - sizeof b ? 0 : -EBADMSG;
        }
        case PROTO_CALL_CANCEL:
                return len == sizeof(struct proto_cancel) ? 0 : -EBADMSG;
        default:
                return len == sizeof(struct proto_credit) ? 0 : -EBADMSG;
        }
}

bool call_link_flush(struct replica *rep) {
        check(rep == &W.rep);
        return W.calls_waiting;
}

void call_link_abandon_all(struct replica *rep) {
        check(rep == &W.rep);
        W.calls_abandoned = true;
}
void router_dispatch(struct router *r, struct deployment *dep) { (void)r, (void)dep; }

/* The supervisor's answer to garbage found while resuming: kill it (the world is replaced). */
static bool broken;
static void on_broken(struct replica *rep) {
        check(rep == &W.rep);
        broken = true;
}

/* ---- the world: one replica with its two rings ---- */

static uint8_t *ring_mem(uint32_t size) {
        size_t len = ring_footprint(size);
        uint8_t *m = aligned_alloc(RING_CACHELINE, len);
        check(m != NULL);
        memset(m, 0, len);
        return m;
}

static void world_open(uint32_t resp_size) {
        memset(&W.rep, 0, sizeof W.rep);
        W.resp_size = resp_size;
        W.resp_mem = ring_mem(resp_size);
        W.req_mem = ring_mem(REQ_RING_SIZE);
        W.wpos = 0;
        W.in_poll = false;
        check(ring_attach(&W.rep.seg.resp, W.resp_mem, resp_size, true) == 0);
        check(ring_attach(&W.rep.seg.req, W.req_mem, REQ_RING_SIZE, true) == 0);
        check(ring_attach(&W.req_cons, W.req_mem, REQ_RING_SIZE, false) == 0);
        W.rep.seg.fd = -1;
        W.rep.seg.req_bell = -1;
        W.rep.seg.resp_bell = -1;
        W.rep.pidfd = W.rep.ctl_fd = -1;
        check(replica_link_init(&W.rep, N_SLOTS) == 0);
        W.rep.state = REPLICA_READY;
        W.rep.on_broken = on_broken;
        W.deferred = NULL;
        W.calls_waiting = false;
        W.calls_abandoned = false;
}

/* The replica is killed: every request still assigned to it gets its 502. */
static void world_kill(void) {
        replica_link_fail_all(&W.rep, 502, "x");
        check(W.calls_abandoned); /* the calls it made are cancelled where they run */
        for (uint32_t i = 0; i < W.rep.n_slots; i++)
                check(W.rep.slots[i] == NULL);
        check(W.rep.ongoing == 0);
        check(list_empty(&W.rep.backlog));
        replica_link_free(&W.rep);
        free(W.resp_mem);
        free(W.req_mem);
        W.resp_mem = W.req_mem = NULL;
}

static void check_invariants(void) {
        int n = 0, sending = 0, linked = 0;
        struct list *pos, *tmp;

        for (uint32_t i = 0; i < W.rep.n_slots; i++) {
                struct request *u = W.rep.slots[i];
                if (!u)
                        continue;
                struct fake *f = fake_of(u);
                n++;
                check(u->backend == &W.rep.be && u->slot == i && (uint32_t)u->backend_id == i);
                check(u->state == REQUEST_SENDING || u->state == REQUEST_SENT || u->state == REQUEST_RESPONDING);
                check(!u->cancelled || u->sink == NULL);
                check(u->sink == NULL || u->sink == &SINK);
                if (u->state == REQUEST_SENDING)
                        sending++;
                /* Once its response started, a request stays RESPONDING until it is finished:
                 * otherwise the replica's next RESP_BODY is rejected and the replica killed. */
                if (f->responding)
                        check(u->state == REQUEST_RESPONDING);
                if (u->state == REQUEST_RESPONDING && u->resp_stream) {
                        f->responding = true;
                        /* Credit only for what arrived, and nothing past a window beyond it. */
                        check(u->resp_credited <= u->resp_received);
                        check(u->resp_received <= u->resp_credited + PROTO_STREAM_WINDOW);
                        check(u->resp_received <= PROTO_MAX_RESP_BODY);
                        check(W.rep.stalled != u); /* a stream never stalls the ring */
                        if (u->sink)
                                check(f->begun && f->stream && f->delivered == u->resp_received);
                } else if (u->state == REQUEST_RESPONDING) {
                        f->responding = true;
                        check(u->resp_received < u->resp_body_len);
                        check(u->resp_body_len <= PROTO_MAX_RESP_BODY);
                        if (u->sink) {
                                check(f->begun && f->announced == u->resp_body_len);
                                check(f->delivered == u->resp_received);
                        }
                }
                check(!u->cancel_owed || (u->cancelled && W.rep.ctl_owed));
        }
        check(n == W.rep.ongoing);
        list_for_each_safe(pos, tmp, &W.rep.backlog) {
                struct request *u = list_entry(pos, struct request, link);
                check(u->backend == &W.rep.be && W.rep.slots[u->slot] == u && u->state == REQUEST_SENDING);
                linked++;
        }
        check(linked == sending);
        /* A stalled ring waits for a request whose sink is full and still waits. */
        if (W.rep.stalled) {
                check(in_slots(W.rep.stalled) && W.rep.stalled->sink && W.rep.stalled->sink_blocked);
                check(W.rep.stalled->state == REQUEST_RESPONDING);
        }
}

static void do_poll(void) {
        W.finished = 0;
        W.in_poll = true;
        W.call_rejected = false;
        int r = replica_link_poll(&W.rep);
        W.in_poll = false;
        if (W.call_rejected)
                check(r == -EBADMSG);
        if (r >= 0) {
                check((unsigned)r == W.finished);
                if (W.rep.stalled)
                        check(replica_link_poll(&W.rep) == 0); /* nothing is read while stalled */
                check_invariants();
                return;
        }
        check(r == -EBADMSG);
        uint32_t size = W.resp_size;
        world_kill();
        world_open(size);
}

/* ---- what the replica does ---- */

static void publish(void) {
        atomic_store_explicit(&resp_sh()->head, W.wpos, memory_order_release);
}

/* Appends a record at the replica's cursor the way ring_alloc() would (PAD first when it does
 * not fit before the end), ignoring whether the proxy released the space: a hostile replica
 * can overwrite records the proxy has not read yet. */
static void put_record(uint16_t type, const void *payload, uint32_t len) {
        uint32_t size = W.resp_size, pos;
        struct ring_record_hdr h;

        W.wpos = ALIGN_TO(W.wpos, RING_ALIGN); /* after an OP_HEAD_SET anywhere */
        pos = W.wpos & (size - 1);

        len = MIN(len, size / 4);
        uint32_t rec = RING_HDR_SIZE + ALIGN_TO(len, RING_ALIGN);
        if (rec > size - pos) {
                h = (struct ring_record_hdr){ .len = size - pos - RING_HDR_SIZE, .type = RING_TYPE_PAD };
                memcpy(resp_data() + pos, &h, sizeof h);
                W.wpos += size - pos;
                pos = 0;
        }
        h = (struct ring_record_hdr){ .len = len, .type = type };
        memcpy(resp_data() + pos, &h, sizeof h);
        memcpy(resp_data() + pos + RING_HDR_SIZE, payload, len);
        W.wpos += rec;
}

/* A request id as the replica chooses it: right (the id of the request in that slot), stale
 * (an earlier generation), or whatever the input says. */
static uint64_t pick_id(struct input *in, uint8_t sel) {
        uint32_t slot = sel % N_SLOTS;
        struct request *u = W.rep.slots[slot];
        uint64_t right = u ? u->backend_id : ((uint64_t)W.rep.generation << 32 | slot);

        switch ((sel >> 2) & 3) {
        case 1:
                return right - (1ull << 32);
        case 2: {
                uint64_t v = get32(in);
                return v | (uint64_t)get32(in) << 32;
        }
        default:
                return right;
        }
}

#define MAX_REC 2048 /* ring_max_payload() of the largest ring used here */

static void op_resp_start(struct input *in) {
        uint8_t buf[MAX_REC];
        struct proto_resp_start s = {};
        uint8_t sel = get8(in), flags = get8(in);
        uint32_t room = W.resp_size / 4 - sizeof s, off = sizeof s, n = 0;

        s.req_id = pick_id(in, sel);
        if (flags & 32)
                s.flags = flags & 64 ? get32(in) : PROTO_RESP_STREAM; /* a stream, or any flags */
        s.status = flags & 1 ? get16(in) : 200 + get8(in) % 4 * 100;
        uint8_t n_headers = get8(in) % 8;
        for (uint8_t i = 0; i < n_headers; i++) {
                struct proto_header ph = { .name_len = get8(in) % 24 };
                ph.value_len = get8(in) % 48;
                if (sizeof ph + ph.name_len + ph.value_len > room)
                        break;
                memcpy(buf + off, &ph, sizeof ph);
                get_bytes(in, buf + off + sizeof ph, ph.name_len + ph.value_len);
                off += sizeof ph + ph.name_len + ph.value_len;
                room -= sizeof ph + ph.name_len + ph.value_len;
                n++;
        }
        s.n_headers = flags & 2 ? get8(in) : n;
        s.headers_len = off - sizeof s;
        s.body_len = flags & 4 ? get32(in) : get16(in);
        if (s.flags == PROTO_RESP_STREAM && !(flags & 128))
                s.body_len = 0; /* (a stream with a length, sometimes) */
        uint64_t chunk = get16(in); /* MIN() evaluates its arguments twice */
        s.chunk_len = (uint32_t)MIN(MIN(chunk, s.flags ? (uint64_t)UINT32_MAX : s.body_len), room);
        get_bytes(in, buf + off, s.chunk_len);
        off += s.chunk_len;
        if (flags & 8)
                s.chunk_len += get8(in); /* lie about the chunk */
        memcpy(buf, &s, sizeof s);
        put_record(PROTO_RESP_START, buf, off);
        if (flags & 16)
                publish();
}

static void op_resp_body(struct input *in) {
        uint8_t buf[MAX_REC];
        struct proto_body b = {};
        uint8_t sel = get8(in), flags = get8(in);
        uint32_t len = get16(in) % (W.resp_size / 4 - sizeof b + 1);

        b.req_id = pick_id(in, sel);
        b.len = flags & 8 ? len + get8(in) : len;
        memcpy(buf, &b, sizeof b);
        get_bytes(in, buf + sizeof b, len);
        put_record(PROTO_RESP_BODY, buf, sizeof b + len);
        if (flags & 16)
                publish();
}

static void op_resp_end(struct input *in) {
        struct proto_cancel e = { .req_id = pick_id(in, get8(in)) };
        uint8_t flags = get8(in);

        put_record(PROTO_RESP_END, &e, flags & 8 ? sizeof e - 1 - flags % 4 : sizeof e);
        if (flags & 16)
                publish();
}

/* A record with any type and payload; mostly small types (so 16 and 17 come up often), with an
 * optional request id patched into the first 8 bytes. */
static void op_call_record(struct input *in, uint16_t t);

static void op_raw_record(struct input *in) {
        uint8_t buf[MAX_REC];
        uint16_t t = get16(in);

        if ((t & 0xc000) == 0x4000) {
                op_call_record(in, t);
                return;
        }
        uint16_t type = t & 0x8000 ? t : t & 0x1f;
        uint32_t len = get16(in) % (W.resp_size / 4 + 1);

        get_bytes(in, buf, len);
        if (len >= 8 && !(t & 0x8000) && (t & 0x20)) {
                uint64_t id = pick_id(in, get8(in));
                memcpy(buf, &id, sizeof id);
        }
        put_record(type, buf, len);
        publish();
}

/* A handle-call record (for call.c, stubbed here): mostly well-framed, sometimes not. */
static void op_call_record(struct input *in, uint16_t t) {
        uint8_t buf[MAX_REC];
        uint16_t type = (uint16_t)(PROTO_CALL_START + (t & 3));
        bool lie = t & 4;
        uint32_t room = W.resp_size / 4, len;
        uint64_t id = get8(in);

        switch (type) {
        case PROTO_CALL_START: {
                struct proto_call_start s = { .call_id = id, .deployment_len = 2, .method_len = 1 };
                s.flags = t & 8 ? PROTO_CALL_STREAM : 0;
                s.body_len = get16(in);
                s.chunk_len = (uint32_t)MIN(s.body_len, (uint64_t)(room - sizeof s - 3));
                uint32_t want = get16(in); /* MIN() evaluates its arguments twice */
                s.chunk_len = MIN(s.chunk_len, want);
                memcpy(buf, &s, sizeof s);
                memcpy(buf + sizeof s, "Abm", 3);
                len = (uint32_t)sizeof s + 3 + s.chunk_len;
                get_bytes(in, buf + sizeof s + 3, s.chunk_len);
                break;
        }
        case PROTO_CALL_BODY: {
                struct proto_body b = { .req_id = id };
                b.len = get16(in) % (room - sizeof b + 1);
                memcpy(buf, &b, sizeof b);
                get_bytes(in, buf + sizeof b, b.len);
                len = (uint32_t)sizeof b + b.len;
                break;
        }
        case PROTO_CALL_CANCEL:
                memcpy(buf, &id, sizeof id);
                len = sizeof id;
                break;
        default: {
                struct proto_credit c = { .req_id = id, .bytes = get16(in) };
                memcpy(buf, &c, sizeof c);
                len = sizeof c;
        }
        }
        if (lie) { /* a record length that does not match its fields */
                if (get8(in) & 1 && len + 8 <= sizeof buf) {
                        memset(buf + len, 0, 8);
                        len += 8;
                } else {
                        uint32_t cut = 1u + get8(in) % 8u;
                        len -= MIN(len, cut);
                }
        }
        W.calls_waiting = t & 32; /* what call_link_flush() says from now on */
        put_record(type, buf, len);
        if (t & 16)
                publish();
}

static void op_write_raw(struct input *in) {
        uint32_t off = get16(in) & (W.resp_size - 1);
        uint32_t len = get8(in);
        len = MIN(len, W.resp_size - off);

        get_bytes(in, resp_data() + off, len);
}

/* ---- what the proxy does ---- */

static const char zeros[3000];

static void op_send(struct input *in) {
        static const uint64_t body_sizes[] = { 0, 10, 1000, 3000 };
        uint8_t flags = get8(in);

        if (W.rep.ongoing >= (int)W.rep.n_slots)
                return; /* the router never assigns beyond max_ongoing_requests */
        struct fake *f = calloc(1, sizeof *f);
        check(f != NULL);
        struct request *u = &f->u;
        struct http_request *q = &u->req;

        u->sink = &SINK;
        list_init(&u->link);
        list_init(&u->tlink);
        list_init(&u->sink_link);
        u->state = REQUEST_NEW;
        q->method = "GET";
        q->method_len = 3;
        q->target = "/x?a=1";
        q->target_len = 6;
        q->path = "/x";
        q->path_len = 2;
        q->query = flags & 1 ? "a=1" : NULL;
        q->query_len = flags & 1 ? 3 : 0;
        q->minor_version = 1;
        q->headers[0] = (struct http_header){ "Host", 4, "h", 1 };
        q->headers[1] = (struct http_header){ "Connection", 10, "keep-alive", 10 };
        q->headers[2] = (struct http_header){ "X-A", 3, "b", 1 };
        q->n_headers = 3;
        q->keep_alive = true;
        u->path = "/x";
        u->path_len = 2;
        u->body = zeros;
        u->body_len = body_sizes[(flags >> 1) & 3];
        f->drop_in_begin = flags & 8;
        f->drop_in_body = flags & 16;
        f->full = flags & 64;
        check(W.rep.be.ops->available(&W.rep.be));
        W.rep.be.ops->send(&W.rep.be, u);
        if (flags & 32)
                abandon(u);
}

static void op_cancel(struct input *in) {
        struct request *u = W.rep.slots[get8(in) % N_SLOTS];
        if (u && u->sink)
                abandon(u);
}

/* A full sink has room again: request_sink_ready() resumes its backend, whose repoll runs from
 * the loop. */
static void op_resume(struct input *in) {
        struct request *u = W.rep.slots[get8(in) % N_SLOTS];

        if (u && u->sink) {
                fake_of(u)->full = false;
                if (u->sink_blocked) {
                        u->sink_blocked = false;
                        if (u->state == REQUEST_RESPONDING)
                                u->backend->ops->resume(u);
                }
        }
        if (W.deferred) {
                struct loop_deferred *d = W.deferred;
                W.deferred = NULL;
                d->queued = false;
                broken = false;
                W.finished = 0;
                W.in_poll = true;
                W.call_rejected = false;
                d->fn(d);
                W.in_poll = false;
                if (W.call_rejected)
                        check(broken);
                if (broken) {
                        uint32_t size = W.resp_size;
                        world_kill();
                        world_open(size);
                }
        }
}

/* The replica consumes the whole request ring. */
static void check_req_record(const struct ring_record *rec) {
        if (rec->type == PROTO_REQ_START) {
                struct proto_req_start st;
                check(rec->len >= sizeof st);
                memcpy(&st, rec->payload, sizeof st);
                check(st.flags & PROTO_REQ_STREAM_OK); /* every sink here takes streams */
        } else if (rec->type == PROTO_REQ_CREDIT) {
                struct proto_credit c;
                check(rec->len == sizeof c);
                memcpy(&c, rec->payload, sizeof c);
                check(c.bytes > 0);
                uint32_t slot = (uint32_t)c.req_id;
                check(slot < W.rep.n_slots);
                struct request *u = W.rep.slots[slot];
                /* (A request that finished since cannot be checked any more.) */
                if (u && u->backend_id == c.req_id) {
                        struct fake *f = fake_of(u);
                        check(u->resp_stream);
                        f->credit_seen += c.bytes;
                        check(f->credit_seen <= u->resp_credited && u->resp_credited <= u->resp_received);
                }
        }
}

static void req_consume(void) {
        struct ring_record rec;
        int r;

        while ((r = ring_next(&W.req_cons, &rec)) > 0)
                check_req_record(&rec);
        /* Whatever is left (a tail the input set anywhere makes the rest unreadable) is skipped. */
        uint32_t h = atomic_load_explicit(&req_sh()->head, memory_order_acquire);
        W.req_cons.local = W.req_cons.cached = h;
        atomic_store_explicit(&req_sh()->tail, h, memory_order_release);
}

enum {
        OP_POLL,
        OP_RESP_START,
        OP_RESP_BODY,
        OP_RAW_RECORD,
        OP_PUBLISH,
        OP_WRITE_RAW,
        OP_HEAD_SET,
        OP_HEAD_ADVANCE,
        OP_RESP_TAIL_SET,
        OP_SEND,
        OP_CANCEL,
        OP_FLUSH,
        OP_REQ_CONSUME,
        OP_REQ_TAIL_SET,
        OP_KILL,
        OP_REQ_SLEEP,
        OP_RESUME,
        OP_RESP_END,
        N_OPS,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct input in = { data, size };
        uint8_t cfg = get8(&in);

        world_open(cfg & 1 ? 8192 : 4096);
        for (unsigned i = 0; i <= (cfg >> 1) % N_SLOTS; i++) {
                struct input none = { NULL, 0 };
                op_send(&none);
        }

        for (unsigned steps = 0; in.n > 0 && steps < 256; steps++) {
                switch (get8(&in) % N_OPS) {
                case OP_POLL:
                        do_poll();
                        break;
                case OP_RESP_START:
                        op_resp_start(&in);
                        break;
                case OP_RESP_BODY:
                        op_resp_body(&in);
                        break;
                case OP_RAW_RECORD:
                        op_raw_record(&in);
                        break;
                case OP_PUBLISH:
                        publish();
                        break;
                case OP_WRITE_RAW:
                        op_write_raw(&in);
                        break;
                case OP_HEAD_SET: {
                        uint32_t v = get32(&in);
                        W.wpos = v;
                        publish();
                        break;
                }
                case OP_HEAD_ADVANCE:
                        atomic_fetch_add_explicit(&resp_sh()->head, get16(&in), memory_order_release);
                        break;
                case OP_RESP_TAIL_SET:
                        atomic_store_explicit(&resp_sh()->tail, get32(&in), memory_order_relaxed);
                        break;
                case OP_SEND:
                        op_send(&in);
                        break;
                case OP_CANCEL:
                        op_cancel(&in);
                        break;
                case OP_FLUSH:
                        check(replica_link_flush(&W.rep) ==
                              (!list_empty(&W.rep.backlog) || W.rep.ctl_owed || W.calls_waiting));
                        break;
                case OP_REQ_CONSUME:
                        req_consume();
                        break;
                case OP_REQ_TAIL_SET:
                        atomic_store_explicit(&req_sh()->tail, get32(&in), memory_order_relaxed);
                        break;
                case OP_KILL:
                        world_kill();
                        world_open(W.resp_size);
                        break;
                case OP_REQ_SLEEP: /* the next request makes the proxy ring the doorbell */
                        atomic_store_explicit(&req_sh()->consumer_sleeping, 1, memory_order_relaxed);
                        break;
                case OP_RESUME:
                        op_resume(&in);
                        break;
                case OP_RESP_END:
                        op_resp_end(&in);
                        break;
                }
                check_invariants();
        }

        publish();
        do_poll();
        world_kill();
        return 0;
}
