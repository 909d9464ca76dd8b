/* libFuzzer target for handle calls, the worker's side (src/dataplane/call.c): what a hostile
 * replica writes as PROTO_CALL_* records (call_link_record), what the rest of the system does
 * with the requests those calls become, and what call.c writes back into the caller's request
 * ring as PROTO_CALL_RESP_* records.
 *
 * The input is a program. The replica's steps: CALL_START records (fresh, reused or arbitrary
 * call ids; well-formed, or with one field wrong: lengths that do not add up, a chunk larger
 * than the argument, unknown flags, empty, overlong or unprintable names, arguments over the
 * limits), CALL_BODY records (the right call and length, or not), CALL_CANCEL, CALL_CREDIT with
 * any value, raw records of any type and bytes, bursts of calls up to PROTO_MAX_CALLS and
 * beyond (once per input: that is slow), reading (some of) its request ring or not (the ring
 * fills up), sleeping on its doorbell, a garbage tail in its request ring, being killed. The
 * system's steps: the callee answering a call through the request model (sink begin with a
 * length or REQUEST_LEN_STREAM, body in chunks of any size while the sink is not blocked,
 * room() after each delivery the way the backends do, end), the backend failing it
 * (request_fail with any status 400..599 and message, delivered from the loop), its deadline
 * passing (request_expire: fail() at once), the backend letting go of an abandoned request, the
 * loop running deferred failures, call_link_flush. After -EBADMSG or -ENOMEM from
 * call_link_record the worker kills the replica: call_link_abandon_all, and a fresh replica
 * (with a fresh ring) runs the rest of the input.
 *
 * The request model and the router are stubbed here; the stubs check what a user would notice:
 * no request used after it was abandoned or freed (the backend frees abandoned ones later, so
 * ASan sees late uses), a request abandoned only when its call was cancelled or its replica
 * killed, failures only with call.c's statuses, the head and argument a callee receives byte
 * for byte what the replica sent, the request-body budget returned, a blocked sink resumed only
 * when it can take more (nothing of its answer still waiting in call.c, credit left for a
 * stream read in pieces: PROTO_STREAM_WINDOW holds) and never left blocked with nothing to
 * resume it, the doorbell rung for answers written while the replica sleeps.
 *
 * The caller's request ring is a real ring, read back with its own consumer view, and every
 * record call.c writes is checked against a model of the answer each call got through its sink:
 * records well-formed as the SDK checks them (lengths, status 100..599, flags, no body beyond
 * body_len, END only after a stream START), the answer exactly what the sink received (second
 * START for a failure after a begin, body bytes intact and in order), records only for calls
 * that were started, none written after the call was cancelled. The verdict of
 * call_link_record is predicted from the protocol wherever the model knows it. At the end of
 * an input every answered call must have its whole answer in the ring once the ring drains
 * (nothing lost or stuck in call.c), call.c must hold no call but the one still receiving its
 * argument, and everything is freed (ASan's leak check). Any violation abort()s. */

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "fuzz.h"
#include "log.h"
#include "macros.h"
#include "proto.h"
#include "request.h"
#include "ring.h"
#include "router.h"

#define MAX_DELIVERY 262144u /* body bytes one backend delivery hands the sink at most (a record of a 1 MiB ring) */
#define MAX_ARG_RECORD 65536u /* argument bytes in one CALL_START/CALL_BODY record at most */
#define ID_BUCKETS 1024u
#define UNKNOWN 1            /* a verdict the model cannot predict */

/* -DFUZZ_TRACE: what happens, on stderr (to check what an input does). */
#ifdef FUZZ_TRACE
#define trace(...) fprintf(stderr, __VA_ARGS__)
#else
#define trace(...) do { } while (0)
#endif

/* ---- the model of one call (one CALL_START that call.c accepted) ---- */

enum { SEG_START, SEG_END };

/* One part of the answer as the call's sink received it: a START (the callee's begin, or a
 * failure) with the body bytes that followed it, or the END of a stream. */
struct seg {
        int kind;
        bool stream;
        bool why;            /* the body is the failure message (else the callee's pattern) */
        uint32_t status;
        uint64_t body_len;   /* announced (non-stream) */
        uint64_t total;      /* body bytes the sink got so far */
        char whytext[160];
};

struct inst {
        uint64_t id;
        uint32_t created_pos;   /* the ring producer's position when call.c took the call */
        bool cancelled;
        uint32_t cancel_pos;    /* ... when call.c processed the caller's CALL_CANCEL */
        bool want_stream;
        uint64_t credit;        /* stream bytes the caller takes now (PROTO_STREAM_WINDOW flow control) */
        bool arg_known;         /* the argument is our pattern (a structured op wrote it) */
        char *expect_head;      /* "deployment\0method\0path" when known */
        uint64_t arg_len, arg_sent;
        int submit_verdict;     /* what router_submit answers for it */
        bool answered;          /* its sink got end() or fail() */
        struct seg *segs;
        size_t n_segs, cap_segs;
        size_t cseg;            /* the segment the ring's reader is in; SIZE_MAX before the first */
        uint64_t read_units;    /* records (START, END) and body bytes of it read from the ring */
        uint64_t cdone;         /* body bytes of it read from the ring */
        struct inst *hnext;     /* in its id bucket, newest first */
        struct inst *next;      /* in the world's list */
};

/* ---- the request model's requests ---- */

enum fq_state {
        FQ_NEW,     /* call.c holds it (argument still coming, or about to be submitted) */
        FQ_RUNNING, /* the router took it: at a backend (or queued) */
        FQ_FAILING, /* request_fail(): its failure waits for the loop */
        FQ_HELD,    /* abandoned while at a backend, which lets go later */
};

#define FQ_MAGIC 0x5e7c411u

struct fq {
        struct request q;
        uint32_t magic;
        enum fq_state st;
        struct inst *in;        /* NULL once its replica is gone */
        bool begun, stream;
        uint64_t announced, delivered;
        uint64_t reserved;      /* body budget it holds */
        int fail_status;
        char fail_why[160];
        struct list link;       /* G.reqs */
        struct list dlink;      /* G.deferred while FQ_FAILING */
};

static struct fq *fq_of(const struct request *q) {
        struct fq *f = (struct fq *)((char *)q - offsetof(struct fq, q));
        check(f->magic == FQ_MAGIC);
        return f;
}

/* ---- the world ---- */

static struct {
        struct list reqs, deferred;
        unsigned n_reqs;
        struct router router;
        struct loop loop;
        uint64_t budget, buffered;
        const struct sink_ops *call_ops; /* call.c's sink (static there): learned on first use */
        bool oom_next_new;
        unsigned in_sink;
        bool killing;                    /* in call_link_abandon_all */
        bool cancelling;                 /* in call_link_record(CALL_CANCEL) ... */
        uint64_t cancel_id;              /* ... of this id */
        struct inst *starting;           /* prepared for the CALL_START being processed */
        bool started;                    /* request_new took it */
        uint64_t next_id;
        unsigned world_gen;              /* replicas so far */
        bool big_burst;                  /* the input made PROTO_MAX_CALLS calls already */
} G;

static struct {
        struct replica rep;
        struct deployment caller, target;
        char caller_name[256];
        uint8_t *req_mem;
        uint32_t ring_size;
        struct ring cons;                /* the replica's view of its request ring */
        bool tainted;                    /* the replica broke its ring's tail: stop reading */
        bool asleep;                     /* the replica waits on its doorbell */
        struct inst *buckets[ID_BUCKETS];
        struct inst *insts;
        struct inst *assembling;         /* its argument records are still coming */
        uint8_t cfg;
} W;

static struct inst **bucket_of(uint64_t id) {
        return &W.buckets[(id ^ (id >> 11)) & (ID_BUCKETS - 1)];
}

/* The newest call with this id. */
static struct inst *inst_newest(uint64_t id) {
        for (struct inst *in = *bucket_of(id); in; in = in->hnext)
                if (in->id == id)
                        return in;
        return NULL;
}

/* The call a record with this id, written at producer position pos, belongs to: the newest
 * one call.c took before it (a call id is reused only after call.c let go of the previous). */
static struct inst *inst_at(uint64_t id, uint32_t pos) {
        for (struct inst *in = *bucket_of(id); in; in = in->hnext)
                if (in->id == id && (int32_t)(pos - in->created_pos) >= 0)
                        return in;
        return NULL;
}

static struct inst *inst_alloc(void) {
        struct inst *in = calloc(1, sizeof *in);
        check(in != NULL);
        in->cseg = SIZE_MAX;
        return in;
}

static void inst_free(struct inst *in) {
        if (!in)
                return;
        free(in->expect_head);
        free(in->segs);
        free(in);
}

static struct seg *seg_push(struct inst *in, int kind) {
        if (in->n_segs == in->cap_segs) {
                in->cap_segs = in->cap_segs ? 2 * in->cap_segs : 4;
                in->segs = realloc(in->segs, in->cap_segs * sizeof *in->segs);
                check(in->segs != NULL);
        }
        struct seg *s = &in->segs[in->n_segs++];
        memset(s, 0, sizeof *s);
        s->kind = kind;
        return s;
}

/* The harness's own byte loops stay out of the coverage feedback (they only slow it down). */
#ifdef __clang__
#define NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define NO_COVERAGE
#endif

NO_COVERAGE static uint8_t arg_byte(uint64_t id, uint64_t off) {
        return (uint8_t)(id * 13 + off * 5 + (off >> 8) + 1);
}

NO_COVERAGE static uint8_t ans_byte(uint64_t id, uint64_t off) {
        return (uint8_t)(id * 31 + off * 7 + (off >> 9) + 3);
}

NO_COVERAGE static void fill(uint8_t *dst, uint8_t (*pat)(uint64_t, uint64_t), uint64_t id, uint64_t off, uint64_t n) {
        for (uint64_t i = 0; i < n; i++)
                dst[i] = pat(id, off + i);
}

NO_COVERAGE static bool matches(const uint8_t *p, uint8_t (*pat)(uint64_t, uint64_t), uint64_t id, uint64_t off,
                                uint64_t n) {
        for (uint64_t i = 0; i < n; i++)
                if (p[i] != pat(id, off + i))
                        return false;
        return true;
}

/* ---- stubs: logging ---- */

int log_full_errno(int level, int err, const char *file, int line, const char *fmt, ...) {
        (void)level, (void)file, (void)line, (void)fmt;
        return err < 0 ? err : -err;
}

void log_limited(struct log_limiter *l, int level, const char *fmt, ...) {
        (void)l, (void)level, (void)fmt;
}

/* Records and body bytes in one record of the request ring that answer `in` (0 for others). */
static uint64_t units_of(const struct ring_record *rec, uint32_t pos, const struct inst *in);

/* Whether everything in's sink received is in the ring by now (read or not). */
static bool answer_in_ring(const struct inst *in) {
        struct ring peek = W.cons; /* a copy: reading through it releases nothing */
        struct ring_record rec;
        uint64_t units = in->read_units, produced = in->n_segs;

        for (size_t i = 0; i < in->n_segs; i++)
                produced += in->segs[i].total;
        while (ring_next(&peek, &rec) == 1)
                units += units_of(&rec, peek.local - RING_HDR_SIZE - ALIGN_TO(rec.len, RING_ALIGN), in);
        check(units <= produced);
        return units == produced;
}

/* ---- stubs: the request model ---- */

struct loop *request_loop(void) { return &G.loop; }

static void fq_free(struct fq *f) {
        list_del(&f->link);
        G.n_reqs--;
        check(G.buffered >= f->reserved);
        G.buffered -= f->reserved;
        free(f->q.raw);
        free(f->q.norm_path);
        f->magic = 0;
        free(f);
}

struct request *request_new(const struct sink_ops *sink, void *sink_ctx, uint64_t sink_id) {
        check(sink != NULL && sink_ctx != NULL);
        check(sink->begin && sink->body && sink->end && sink->fail && sink->room);
        if (G.call_ops)
                check(sink == G.call_ops);
        G.call_ops = sink;
        /* One request per accepted CALL_START, made while call.c processes it. */
        check(!G.started);
        if (G.oom_next_new) {
                G.oom_next_new = false;
                return NULL;
        }
        struct inst *in = G.starting; /* prepare() made it, for raw records too */
        check(in != NULL);
        G.starting = NULL;
        G.started = true;
        in->id = sink_id;
        in->credit = PROTO_STREAM_WINDOW;
        in->created_pos = W.rep.seg.req.local;
        in->hnext = *bucket_of(sink_id);
        *bucket_of(sink_id) = in;
        in->next = W.insts;
        W.insts = in;

        struct fq *f = calloc(1, sizeof *f);
        check(f != NULL);
        f->magic = FQ_MAGIC;
        f->st = FQ_NEW;
        f->in = in;
        f->q.sink = sink;
        f->q.sink_ctx = sink_ctx;
        f->q.sink_id = sink_id;
        list_init(&f->q.sink_link);
        list_init(&f->q.link);
        list_init(&f->q.tlink);
        list_init(&f->q.done.link);
        list_add_tail(&G.reqs, &f->link);
        list_init(&f->dlink);
        G.n_reqs++;
        return &f->q;
}

void request_free(struct request *q) {
        struct fq *f = fq_of(q);
        check(f->st == FQ_NEW); /* only for requests never handed to the router */
        fq_free(f);
}

int request_body_reserve(struct request *q, uint64_t n) {
        struct fq *f = fq_of(q);
        check(f->st == FQ_NEW && q->sink);
        if (G.budget && (n > G.budget || G.buffered > G.budget - n))
                return -ENOBUFS;
        G.buffered += n;
        f->reserved += n;
        return 0;
}

void request_fail(struct request *q, int status, const char *why) {
        struct fq *f = fq_of(q);
        /* call.c fails a call only before the router has it: refused, no such deployment, no
         * replica, queue full. */
        check(f->st == FQ_NEW && q->sink == G.call_ops && q->call);
        check(status == 404 || status == 413 || status == 503);
        check(why != NULL && strlen(why) > 0 && strlen(why) < sizeof f->fail_why);
        check(G.in_sink == 0);
        q->state = REQUEST_DONE;
        f->st = FQ_FAILING;
        f->fail_status = status;
        snprintf(f->fail_why, sizeof f->fail_why, "%s", why);
        list_add_tail(&G.deferred, &f->dlink);
}

void request_abandon(struct request *q) {
        struct fq *f = fq_of(q);
        check(q->sink != NULL);  /* not twice, not after its answer */
        check(G.in_sink == 0);
        /* Only when the caller cancelled this call, or went away. */
        check(G.killing || (G.cancelling && f->in && f->in->id == G.cancel_id));
        q->sink = NULL;
        q->sink_ctx = NULL;
        switch (f->st) {
        case FQ_NEW:
                fq_free(f);
                break;
        case FQ_RUNNING:
                q->cancelled = true;
                f->st = FQ_HELD; /* the backend lets go later */
                break;
        case FQ_FAILING:
                break; /* the loop frees it */
        case FQ_HELD:
                check(0);
        }
}

void request_sink_ready(struct request *q) {
        struct fq *f = fq_of(q);
        check(q->sink == G.call_ops);
        check(f->st == FQ_RUNNING || f->st == FQ_FAILING);
        if (!q->sink_blocked)
                return;
        /* Its sink has room again: nothing of its answer still waits in call.c for ring space
         * (else every resume lets one more delivery pile up there). */
        trace("  call.c resumes call %llu\n", f->in ? (unsigned long long)f->in->id : 0ull);
        if (!W.tainted && f->in)
                check(answer_in_ring(f->in));
        q->sink_blocked = false; /* the backend delivers again (from the loop: a later step) */
}

/* ---- stubs: the router ---- */

struct router *router_get(void) { return &G.router; }

static struct deployment *find_dep(void *userdata, const char *app, size_t app_len, const char *name,
                                   size_t name_len) {
        check(userdata == &W);
        /* The caller's application, or the one a target "APP/Deployment" names. */
        check(proto_name_valid(app, app_len, PROTO_MAX_NAME) && !memchr(app, '/', app_len));
        check(!memchr(name, '/', name_len));
        if (name_len == 0)
                return NULL; /* "APP/": no ingress known here */
        /* Deployments whose name starts with A..M exist (in every application). */
        return name[0] >= 'A' && name[0] <= 'M' ? &W.target : NULL;
}

static const struct http_header *header(const struct request *q, const char *name) {
        const struct http_header *h = http_request_header(&q->req, name);
        check(h != NULL);
        return h;
}

static bool header_is(const struct http_header *h, const char *v, size_t len) {
        return h->value_len == len && memcmp(h->value, v, len) == 0;
}

int router_submit(struct router *r, struct request *q, double timeout_s) {
        struct fq *f = fq_of(q);
        struct inst *in = f->in;

        check(r == &G.router && timeout_s == G.router.call_timeout_s);
        check(f->st == FQ_NEW && q->sink == G.call_ops && q->call);
        check(in != NULL && in != W.assembling);
        check(q->dep == &W.target && q->path_len == 1 && q->path[0] == '/');
        check(q->start_ns == G.loop.now);
        check(q->raw != NULL && q->head_len > 0);
        check(q->req.method_len == 4 && memcmp(q->req.method, "POST", 4) == 0);
        if (in->expect_head) {
                const char *dep = in->expect_head, *method = dep + strlen(dep) + 1, *path = method + strlen(method) + 1;
                const char *slash = strchr(dep, '/');
                bool other = slash && !((size_t)(slash - dep) == 3 && memcmp(dep, "app", 3) == 0);
                char want[PROTO_MAX_CALL_PATH + 300];
                check(header_is(header(q, CALL_HDR_DEPLOYMENT), dep, strlen(dep)));
                check(header_is(header(q, CALL_HDR_METHOD), method, strlen(method)));
                /* The caller: with its application when the callee's is another one. */
                int n = snprintf(want, sizeof want, "%s%s", other ? "app/" : "", W.caller_name);
                check(header_is(header(q, CALL_HDR_CALLER), want, (size_t)n));
                /* The call path names deployments with their application. */
                n = snprintf(want, sizeof want, "%s%sapp/%s", path, *path ? ">" : "", W.caller_name);
                check(header_is(header(q, CALL_HDR_PATH), want, (size_t)n));
        }
        /* The argument, whole. */
        check(q->body == q->raw + q->head_len);
        check(q->body_sent == 0);
        check(q->body_len == in->arg_len && in->arg_sent == in->arg_len);
        check(q->raw[q->head_len + q->body_len] == '\0');
        if (in->arg_known)
                check(matches((const uint8_t *)q->body, arg_byte, in->id, 0, q->body_len));
        if (in->submit_verdict == 0) {
                f->st = FQ_RUNNING;
                q->state = REQUEST_SENT;
        }
        return in->submit_verdict;
}

void router_record(const struct request *q, int status) {
        struct fq *f = fq_of(q);
        check(G.in_sink > 0 && q->sink == G.call_ops);
        check(f->st != FQ_HELD);
        check(status >= 100 && status <= 599);
}

/* ---- the system acting on a request: the sink's callbacks, as request.c calls them ---- */

static void answered(struct fq *f) {
        check(f->in != NULL);
        check(!f->in->answered && !f->in->cancelled);
        f->in->answered = true;
}

/* What a backend does after each delivery: a sink without room stops it. */
static void after_delivery(struct fq *f) {
        struct request *q = &f->q;

        if (!f->stream && f->delivered == f->announced) {
                /* request_end(): the whole response is delivered. */
                check(q->sink != NULL);
                answered(f);
                G.in_sink++;
                q->sink->end(q);
                G.in_sink--;
                fq_free(f);
                return;
        }
        G.in_sink++;
        size_t room = q->sink->room(q);
        G.in_sink--;
        check(room <= W.ring_size);
        if (room == 0)
                q->sink_blocked = true;
        trace("  delivered %llu of call %llu, room %zu\n", (unsigned long long)f->delivered,
              (unsigned long long)f->in->id, room);
}

static uint8_t dbuf[MAX_DELIVERY];

static void deliver(struct fq *f, uint64_t want) {
        struct request *q = &f->q;
        uint64_t n = MIN(want, (uint64_t)MAX_DELIVERY);
        struct seg *s = &f->in->segs[f->in->n_segs - 1];

        if (!f->stream)
                n = MIN(n, f->announced - f->delivered);
        if (f->stream && f->in->want_stream && n > 0) {
                /* A backend delivers only after room() said more than 0 (or with begin): to a
                 * caller that reads pieces, only while it has credit. */
                check(f->in->credit > 0);
                f->in->credit -= MIN(f->in->credit, n);
        }
        fill(dbuf, ans_byte, f->in->id, f->delivered, n);
        check(s->kind == SEG_START && s->total == f->delivered);
        s->total += n;
        f->delivered += n;
        if (n) {
                G.in_sink++;
                q->sink->body(q, dbuf, n);
                G.in_sink--;
        }
        after_delivery(f);
}

static void begin(struct fq *f, int status, uint64_t body_len, uint64_t first) {
        struct request *q = &f->q;
        struct seg *s = seg_push(f->in, SEG_START);

        s->status = (uint32_t)status;
        s->stream = body_len == REQUEST_LEN_STREAM;
        s->body_len = s->stream ? 0 : body_len;
        f->begun = true;
        f->stream = s->stream;
        f->announced = body_len;
        f->delivered = 0;
        q->status = status;
        q->state = REQUEST_RESPONDING;
        trace("begin call %llu: %d len %lld first %llu\n", (unsigned long long)f->in->id, status, (long long)body_len,
              (unsigned long long)first);
        G.in_sink++;
        q->sink->begin(q, status, "x-a: b\r\n", 8, body_len);
        G.in_sink--;
        deliver(f, first);
}

static void end_stream(struct fq *f) {
        struct request *q = &f->q;
        seg_push(f->in, SEG_END);
        answered(f);
        G.in_sink++;
        q->sink->end(q);
        G.in_sink--;
        fq_free(f);
}

static void fail_segment(struct inst *in, int status, const char *why) {
        struct seg *s = seg_push(in, SEG_START);
        s->status = (uint32_t)status;
        s->body_len = s->total = strlen(why);
        s->why = true;
        snprintf(s->whytext, sizeof s->whytext, "%s", why);
}

/* The backend fails the request (the replica died, a peer node failed it with its own status
 * 400..599 and any message): request_fail(), delivered from the loop. */
static void backend_fail(struct fq *f, int status, const char *why) {
        f->q.state = REQUEST_DONE;
        f->q.backend = NULL;
        f->st = FQ_FAILING;
        f->fail_status = status;
        snprintf(f->fail_why, sizeof f->fail_why, "%s", why);
        list_add_tail(&G.deferred, &f->dlink);
}

/* request_expire(): the sink gets fail() now, the backend a cancellation. */
static void expire(struct fq *f) {
        struct request *q = &f->q;
        static const char why[] = "the call timed out";

        fail_segment(f->in, 504, why);
        answered(f);
        G.in_sink++;
        q->sink->fail(q, 504, why);
        G.in_sink--;
        q->sink = NULL;
        q->sink_ctx = NULL;
        q->cancelled = true;
        f->st = FQ_HELD;
}

/* The loop runs one deferred failure: sink->fail() when the sink still waits, then free. */
static void run_deferred(void) {
        struct fq *f = list_entry(G.deferred.next, struct fq, dlink);
        struct request *q = &f->q;

        check(f->st == FQ_FAILING);
        list_del(&f->dlink);
        trace("loop: failure %d of a request (%s)\n", f->fail_status, q->sink ? "sink waits" : "abandoned");
        if (q->sink) {
                fail_segment(f->in, f->fail_status, f->fail_why);
                answered(f);
                G.in_sink++;
                q->sink->fail(q, f->fail_status, f->fail_why);
                G.in_sink--;
        }
        fq_free(f);
}

/* The n-th request (mod their number) in state st with its sink waiting and pred true. */
static struct fq *pick(uint8_t sel, enum fq_state st, bool need_sink, bool (*pred)(const struct fq *)) {
        struct list *pos;
        unsigned n = 0, k;

        for (pos = G.reqs.next; pos != &G.reqs; pos = pos->next) {
                struct fq *f = list_entry(pos, struct fq, link);
                if (f->st == st && (!need_sink || f->q.sink) && (!pred || pred(f)))
                        n++;
        }
        if (n == 0)
                return NULL;
        k = sel % n;
        for (pos = G.reqs.next; pos != &G.reqs; pos = pos->next) {
                struct fq *f = list_entry(pos, struct fq, link);
                if (f->st == st && (!need_sink || f->q.sink) && (!pred || pred(f)) && k-- == 0)
                        return f;
        }
        return NULL;
}

static bool not_begun(const struct fq *f) { return !f->begun; }
static bool can_deliver(const struct fq *f) { return f->begun && !f->q.sink_blocked; }
static bool streaming(const struct fq *f) { return f->begun && f->stream; }

/* ---- the replica reading its request ring ---- */

static void check_bytes(struct inst *in, const struct seg *s, const uint8_t *p, uint64_t len) {
        if (s->why)
                check(len <= sizeof s->whytext - in->cdone && memcmp(p, s->whytext + in->cdone, len) == 0);
        else
                check(matches(p, ans_byte, in->id, in->cdone, len));
}

/* The call a record of `id` at `pos` answers: one that was started and not cancelled before. */
static struct inst *answer_of(uint64_t id, uint32_t pos) {
        struct inst *in = inst_at(id, pos);
        check(in != NULL);
        check(!in->cancelled || (int32_t)(pos - in->cancel_pos) < 0);
        return in;
}

static void read_record(const struct ring_record *rec, uint32_t pos) {
        const uint8_t *p = rec->payload;
        uint32_t len = rec->len;
        struct inst *in;
        struct seg *s;

        switch (rec->type) {
        case PROTO_CALL_RESP_START: {
                struct proto_call_resp r;
                check(len >= sizeof r);
                memcpy(&r, p, sizeof r);
                /* What the SDK checks (src/replica/calls.c). */
                check(r.chunk_len == len - sizeof r);
                check(r.status >= 100 && r.status <= 599);
                check(!(r.flags & ~PROTO_RESP_STREAM));
                check(r.body_len <= PROTO_MAX_RESP_BODY && r.chunk_len <= r.body_len);
                check(!(r.flags & PROTO_RESP_STREAM) || r.body_len == 0);
                in = answer_of(r.call_id, pos);
                /* The next part of its answer, after the previous one completely. */
                if (in->cseg != SIZE_MAX)
                        check(in->segs[in->cseg].kind == SEG_START && in->cdone == in->segs[in->cseg].total);
                size_t next = in->cseg == SIZE_MAX ? 0 : in->cseg + 1;
                check(next < in->n_segs);
                s = &in->segs[next];
                check(s->kind == SEG_START && s->status == r.status);
                check(s->stream == ((r.flags & PROTO_RESP_STREAM) != 0));
                check(s->stream || s->body_len == r.body_len);
                in->cseg = next;
                in->cdone = 0;
                check(r.chunk_len <= s->total);
                check_bytes(in, s, p + sizeof r, r.chunk_len);
                in->cdone += r.chunk_len;
                in->read_units += 1 + r.chunk_len;
                break;
        }
        case PROTO_CALL_RESP_BODY: {
                struct proto_body b;
                check(len >= sizeof b);
                memcpy(&b, p, sizeof b);
                check(b.len == len - sizeof b);
                in = answer_of(b.req_id, pos);
                check(in->cseg != SIZE_MAX);
                s = &in->segs[in->cseg];
                check(s->kind == SEG_START);
                check(s->stream || b.len <= s->body_len - in->cdone);
                check(b.len <= s->total - in->cdone);
                check_bytes(in, s, p + sizeof b, b.len);
                in->cdone += b.len;
                in->read_units += b.len;
                break;
        }
        case PROTO_CALL_RESP_END: {
                struct proto_cancel e;
                check(len == sizeof e);
                memcpy(&e, p, sizeof e);
                in = answer_of(e.req_id, pos);
                check(in->cseg != SIZE_MAX);
                s = &in->segs[in->cseg];
                check(s->kind == SEG_START && s->stream && in->cdone == s->total);
                check(in->cseg + 1 < in->n_segs && in->segs[in->cseg + 1].kind == SEG_END);
                in->cseg++;
                in->read_units++;
                in->cdone = 0;
                break;
        }
        default:
                check(0); /* only call.c writes into this ring here */
        }
}

static struct ring_shared *req_sh(void) {
        return (struct ring_shared *)(void *)W.req_mem;
}

static uint64_t units_of(const struct ring_record *rec, uint32_t pos, const struct inst *in) {
        uint64_t id;

        check(rec->len >= sizeof id);
        memcpy(&id, rec->payload, sizeof id); /* every answer record starts with the call id */
        if (inst_at(id, pos) != in)
                return 0;
        switch (rec->type) {
        case PROTO_CALL_RESP_START:
                return 1 + rec->len - sizeof(struct proto_call_resp);
        case PROTO_CALL_RESP_BODY:
                return rec->len - sizeof(struct proto_body);
        default:
                return 1;
        }
}

/* The replica reads up to max records of its request ring and frees their space. */
static void consume(unsigned max) {
        struct ring_record rec;

        if (W.tainted) {
                atomic_store_explicit(&req_sh()->tail, atomic_load(&req_sh()->head), memory_order_release);
                return;
        }
        for (unsigned n = 0; n < max; n++) {
                int r = ring_next(&W.cons, &rec);
                if (r == 0)
                        break;
                check(r == 1); /* call.c is a well-behaved producer */
                uint32_t pos = W.cons.local - RING_HDR_SIZE - ALIGN_TO(rec.len, RING_ALIGN);
                trace("  ring: type %u len %u at %u\n", rec.type, rec.len, pos);
                read_record(&rec, pos);
        }
        ring_release(&W.cons);
}

/* ---- worlds: one calling replica with its request ring ---- */

static void world_open(uint8_t cfg) {
        static const uint32_t ring_sizes[] = { 8192, 16384 };
        static const char *const names[] = { "Caller", "ca.ll-er_2", NULL };

        memset(&W, 0, sizeof W);
        W.cfg = cfg;
        G.world_gen++;
        W.ring_size = ring_sizes[cfg & 1];
        if (names[(cfg >> 1) % 3])
                snprintf(W.caller_name, sizeof W.caller_name, "%s", names[(cfg >> 1) % 3]);
        else
                memset(W.caller_name, 'c', 200); /* the longest name a deployment can have */
        W.caller.app = "app";
        W.caller.name = W.caller_name;
        W.target.app = "app";
        W.target.name = "Target";
        size_t len = ring_footprint(W.ring_size);
        W.req_mem = aligned_alloc(RING_CACHELINE, len);
        check(W.req_mem != NULL);
        memset(W.req_mem, 0, len);
        check(ring_attach(&W.rep.seg.req, W.req_mem, W.ring_size, true) == 0);
        check(ring_attach(&W.cons, W.req_mem, W.ring_size, false) == 0);
        W.rep.seg.fd = W.rep.seg.req_bell = W.rep.seg.resp_bell = -1;
        W.rep.pidfd = W.rep.ctl_fd = -1;
        W.rep.dep = &W.caller;
        W.rep.state = REPLICA_READY;
        snprintf(W.rep.id, sizeof W.rep.id, "app/%.80s#1", W.caller_name);
}

/* Every request with a waiting sink belongs to a call that was neither cancelled nor answered. */
static void check_requests(void) {
        struct list *pos;
        unsigned n = 0;

        for (pos = G.reqs.next; pos != &G.reqs; pos = pos->next) {
                struct fq *f = list_entry(pos, struct fq, link);
                n++;
                if (f->q.sink) {
                        check(f->q.sink == G.call_ops);
                        check(f->in != NULL && !f->in->cancelled && !f->in->answered);
                        check(f->st != FQ_HELD);
                }
                if (f->st == FQ_NEW && f->q.sink)
                        check(f->in == W.assembling);
        }
        check(n == G.n_reqs);
}

/* The replica is gone (killed for garbage, crashed): its calls are abandoned. */
static void world_close(void) {
        struct list *pos;

        G.killing = true;
        call_link_abandon_all(&W.rep);
        G.killing = false;
        check(W.rep.calls == NULL && call_link_count(&W.rep) == 0);
        for (pos = G.reqs.next; pos != &G.reqs; pos = pos->next) {
                struct fq *f = list_entry(pos, struct fq, link);
                check(f->q.sink == NULL); /* every request of its calls was abandoned or answered */
                f->in = NULL;
        }
        while (W.insts) {
                struct inst *in = W.insts;
                W.insts = in->next;
                inst_free(in);
        }
        free(W.req_mem);
        W.req_mem = NULL;
}

static void world_restart(void) {
        uint8_t cfg = W.cfg;
        world_close();
        world_open(cfg);
}

/* call_link_flush() said nothing waits: then no request stays blocked that nothing will resume,
 * except a stream whose caller has to send CALL_CREDIT first. */
static void flush_checked(void) {
        struct list *pos;

        if (call_link_flush(&W.rep))
                return;
        for (pos = G.reqs.next; pos != &G.reqs; pos = pos->next) {
                struct fq *f = list_entry(pos, struct fq, link);
                if (f->q.sink && f->q.sink_blocked)
                        check(W.tainted || (f->stream && f->in->want_stream && f->in->credit == 0));
        }
}

/* The replica reads its ring while the worker flushes what waits for ring space, until the
 * worker writes nothing more (calls may still wait for credit or for their backends). */
static void drain(void) {
        if (W.tainted) {
                consume(UINT32_MAX);
                (void)call_link_flush(&W.rep);
                return;
        }
        for (unsigned round = 0;; round++) {
                check(round < 100000);
                consume(UINT32_MAX);
                flush_checked();
                if (atomic_load(&req_sh()->head) == W.cons.local)
                        break; /* it wrote nothing more */
        }
}

/* The backends let go of every abandoned request. */
static void release_held(void) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &G.reqs) {
                struct fq *f = list_entry(pos, struct fq, link);
                if (f->st == FQ_HELD)
                        fq_free(f);
        }
}

/* Everything the system still owes the replica happens and its ring drains: every call that
 * was answered has its whole answer in the ring, call.c keeps nothing but the call still
 * receiving its argument. */
static void settle(void) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &G.reqs) {
                struct fq *f = list_entry(pos, struct fq, link);
                if (f->st == FQ_RUNNING && f->q.sink)
                        backend_fail(f, 502, "the replica died");
        }
        release_held();
        while (!list_empty(&G.deferred))
                run_deferred();
        drain();
        check(!call_link_flush(&W.rep));
        check(call_link_count(&W.rep) == (W.assembling ? 1u : 0u));
        for (struct inst *in = W.insts; in; in = in->next) {
                check(in->answered || in->cancelled || in == W.assembling);
                if (!in->answered || in->cancelled)
                        continue;
                check(in->n_segs > 0 && in->cseg == in->n_segs - 1);
                struct seg *s = &in->segs[in->cseg];
                if (s->kind == SEG_START) {
                        check(!s->stream && s->total == s->body_len);
                        check(in->cdone == s->total);
                }
        }
}

/* ---- the replica's records ---- */

static bool name_ok(const uint8_t *p, uint32_t len, uint32_t max) {
        if (len == 0 || len > max)
                return false;
        for (uint32_t i = 0; i < len; i++)
                if (p[i] < 0x21 || p[i] > 0x7e)
                        return false;
        return true;
}

/* What call.c must answer to a record, from the protocol (proto.h, call.h) and what the model
 * knows: 0, -EBADMSG or UNKNOWN. */
static int predict(uint16_t type, const uint8_t *p, uint32_t len) {
        switch (type) {
        case PROTO_CALL_START: {
                struct proto_call_start s;
                if (len < sizeof s)
                        return -EBADMSG;
                memcpy(&s, p, sizeof s);
                const uint8_t *v = p + sizeof s;
                if ((uint64_t)s.deployment_len + s.method_len + s.path_len + s.chunk_len != len - sizeof s ||
                    s.chunk_len > s.body_len || s.body_len > PROTO_MAX_RESP_BODY || (s.flags & ~PROTO_CALL_STREAM) ||
                    !name_ok(v, s.deployment_len, PROTO_MAX_NAME) ||
                    !name_ok(v + s.deployment_len, s.method_len, PROTO_MAX_NAME) ||
                    (s.path_len && !name_ok(v + s.deployment_len + s.method_len, s.path_len, PROTO_MAX_CALL_PATH)))
                        return -EBADMSG;
                /* "APP/Deployment" (or "APP/"): a non-empty APP, one '/'. */
                const uint8_t *slash = memchr(v, '/', s.deployment_len);
                if (slash && (slash == v || memchr(slash + 1, '/', s.deployment_len - (size_t)(slash - v) - 1)))
                        return -EBADMSG;
                if (W.assembling || call_link_count(&W.rep) >= PROTO_MAX_CALLS)
                        return -EBADMSG;
                struct inst *prev = inst_newest(s.call_id);
                if (!prev || prev->cancelled)
                        return 0;
                if (!prev->answered)
                        return -EBADMSG; /* still outstanding */
                return UNKNOWN;          /* its answer may still wait for ring space */
        }
        case PROTO_CALL_BODY: {
                struct proto_body b;
                if (len < sizeof b)
                        return -EBADMSG;
                memcpy(&b, p, sizeof b);
                struct inst *a = W.assembling;
                if (!a || a->id != b.req_id || b.len != len - sizeof b || b.len == 0 || b.len > a->arg_len - a->arg_sent)
                        return -EBADMSG;
                return 0;
        }
        case PROTO_CALL_CANCEL: {
                struct proto_cancel c;
                if (len != sizeof c)
                        return -EBADMSG;
                memcpy(&c, p, sizeof c);
                return W.assembling && W.assembling->id == c.req_id ? -EBADMSG : 0;
        }
        case PROTO_CALL_CREDIT:
                return len == sizeof(struct proto_credit) ? 0 : -EBADMSG;
        default:
                return -EBADMSG;
        }
}

/* The model learns what an accepted record did. */
static void apply(uint16_t type, const uint8_t *p) {
        switch (type) {
        case PROTO_CALL_START: {
                struct proto_call_start s;
                memcpy(&s, p, sizeof s);
                check(G.started);
                struct inst *in = inst_newest(s.call_id);
                check(in != NULL && in->arg_len == s.body_len);
                in->want_stream = (s.flags & PROTO_CALL_STREAM) != 0;
                if (s.chunk_len < s.body_len)
                        W.assembling = in;
                break;
        }
        case PROTO_CALL_BODY:
                /* on_body() counted it already (it may have been submitted inside). */
                break;
        case PROTO_CALL_CANCEL: {
                struct proto_cancel c;
                memcpy(&c, p, sizeof c);
                struct inst *in = inst_newest(c.req_id);
                if (in && !in->cancelled) {
                        in->cancelled = true;
                        in->cancel_pos = W.rep.seg.req.local;
                }
                break;
        }
        case PROTO_CALL_CREDIT: {
                struct proto_credit c;
                memcpy(&c, p, sizeof c);
                struct inst *in = inst_newest(c.req_id);
                /* More than a window outstanding would be the caller's own memory: capped. */
                if (in && !in->cancelled)
                        in->credit = MIN(in->credit + MIN(c.bytes, (uint64_t)PROTO_STREAM_WINDOW),
                                         (uint64_t)PROTO_STREAM_WINDOW);
                break;
        }
        default:
                break;
        }
}

/* Before call.c sees a record: what the stubs must know while it runs. */
static void prepare(uint16_t type, const uint8_t *p, uint32_t len, struct inst *starting) {
        G.started = false;
        G.starting = NULL;
        G.cancelling = false;
        if (type == PROTO_CALL_START && len >= sizeof(struct proto_call_start)) {
                struct proto_call_start s;
                memcpy(&s, p, sizeof s);
                if (!starting)
                        starting = inst_alloc();
                starting->arg_len = s.body_len;
                starting->arg_sent = s.chunk_len;
                G.starting = starting;
                return;
        }
        inst_free(starting);
        if (type == PROTO_CALL_CANCEL && len == sizeof(struct proto_cancel)) {
                struct proto_cancel c;
                memcpy(&c, p, sizeof c);
                G.cancelling = true;
                G.cancel_id = c.req_id;
        }
        if (type == PROTO_CALL_BODY && len >= sizeof(struct proto_body) && W.assembling) {
                struct proto_body b;
                memcpy(&b, p, sizeof b);
                /* If call.c takes it, the argument grows before it may be submitted. */
                if (predict(type, p, len) == 0)
                        W.assembling->arg_sent += b.len;
        }
}

/* One record from the replica, as replica_link_poll hands it over. Returns call.c's verdict. */
static int record(uint16_t type, const uint8_t *p, uint32_t len, struct inst *starting) {
        int want = predict(type, p, len);
        struct inst *assembling = W.assembling;

        prepare(type, p, len, starting);
        if (type == PROTO_CALL_BODY && want == 0 && assembling->arg_sent == assembling->arg_len)
                W.assembling = NULL; /* complete: submitted inside */
        int r = call_link_record(&W.rep, type, p, len);
        trace("record type %u len %u: %d (predicted %d), %u calls\n", type, len, r, want, call_link_count(&W.rep));
        G.cancelling = false;
        if (G.starting) { /* call.c did not make a request of it */
                inst_free(G.starting);
                G.starting = NULL;
        }
        check(r == 0 || r == -EBADMSG || r == -ENOMEM);
        if (r == -ENOMEM)
                check(type == PROTO_CALL_START && !G.started);
        else if (want != UNKNOWN)
                check(r == want);
        if (r == 0) {
                if (type == PROTO_CALL_START)
                        check(G.started);
                apply(type, p);
        } else {
                world_restart(); /* the worker kills it */
        }
        G.started = false;
        return r;
}

static uint8_t rbuf[sizeof(struct proto_call_start) + 2 * PROTO_MAX_NAME + PROTO_MAX_CALL_PATH + MAX_ARG_RECORD + 64];

static uint64_t pick_id(struct input *in, uint8_t mode) {
        switch (mode & 3) {
        case 0:
        case 1:
                return G.next_id++;
        case 2: {
                /* an id the world has seen */
                uint8_t k = get8(in);
                for (struct inst *i = W.insts; i; i = i->next)
                        if (k-- == 0 || !i->next)
                                return i->id;
                return G.next_id++;
        }
        default:
                return get64(in);
        }
}

/* A name: one of a few, or bytes from the input. */
static uint32_t put_name(struct input *in, uint8_t sel, uint8_t *dst, bool deployment) {
        static const char *const deps[] = { "Ab", "Zed", "M.x-y_z", "other/Ab", "app/Zed", "other/", "/Ab", "a/b/C" };
        switch (sel & 3) {
        case 0:
        case 1: {
                const char *n = deployment ? deps[get8(in) % ELEMENTSOF(deps)] : "method";
                memcpy(dst, n, strlen(n));
                return (uint32_t)strlen(n);
        }
        case 2: /* the longest valid name */
                memset(dst, deployment ? 'B' : 'm', PROTO_MAX_NAME);
                return PROTO_MAX_NAME;
        default: {
                uint32_t n = get8(in) % 40;
                get_bytes(in, dst, n);
                return n;
        }
        }
}

static void op_start(struct input *in, bool quiet) {
        struct proto_call_start s = {};
        uint8_t f = quiet ? 0 : get8(in), f2 = quiet ? 0 : get8(in);
        uint8_t *v = rbuf + sizeof s;

        s.call_id = quiet ? G.next_id++ : pick_id(in, f >> 1);
        s.parent_id = quiet ? 0 : get8(in);
        s.flags = f & 1 ? PROTO_CALL_STREAM : 0;
        s.deployment_len = quiet ? 2 : put_name(in, f >> 4, v, true);
        if (quiet)
                memcpy(v, "Ab", 2);
        s.method_len = quiet ? 1 : put_name(in, f >> 6, v + s.deployment_len, false);
        if (quiet)
                v[s.deployment_len] = 'm';
        uint8_t *path = v + s.deployment_len + s.method_len;
        switch (f2 & 3) {
        case 0:
                s.path_len = 0;
                break;
        case 1:
                memcpy(path, "Ing>Mid", 7);
                s.path_len = 7;
                break;
        case 2:
                memset(path, 'p', PROTO_MAX_CALL_PATH);
                s.path_len = PROTO_MAX_CALL_PATH;
                break;
        default:
                s.path_len = get8(in) % 64;
                get_bytes(in, path, s.path_len);
        }
        switch ((f2 >> 2) & 7) {
        case 0:
        case 1:
                s.body_len = 0;
                break;
        case 2:
                s.body_len = get8(in);
                break;
        case 3:
                s.body_len = get16(in);
                break;
        case 4:
                s.body_len = (uint64_t)get16(in) * 8;
                break;
        case 5:
                s.body_len = get8(in) & 1 ? PROTO_MAX_RESP_BODY : PROTO_MAX_RESP_BODY + 1;
                break;
        default:
                s.body_len = get32(in);
        }
        uint32_t chunk = quiet ? 0 : get16(in);
        s.chunk_len = (uint32_t)MIN(MIN((uint64_t)chunk, s.body_len), (uint64_t)MAX_ARG_RECORD);
        if (f2 & 0x20)
                s.chunk_len = (uint32_t)MIN(s.body_len, (uint64_t)MAX_ARG_RECORD); /* all that fits */
        uint8_t *arg = path + s.path_len;
        fill(arg, arg_byte, s.call_id, 0, s.chunk_len);
        uint32_t len = (uint32_t)(sizeof s + s.deployment_len + s.method_len + s.path_len + s.chunk_len);

        struct inst *st = inst_alloc();
        st->arg_known = true;
        st->submit_verdict = 0;
        if (f2 & 0x40) {
                uint8_t k = get8(in);
                st->submit_verdict = k & 1 ? -ENOENT : -EBUSY;
        }
        if (f2 & 0x80) {
                /* One thing wrong (or the request model out of memory). */
                switch (get8(in) % 11) {
                case 0: {
                        uint32_t more = 1u + get8(in) % 8u; /* trailing bytes */
                        memset(rbuf + len, 0, more);
                        len += more;
                        break;
                }
                case 1: {
                        uint32_t cut = 1u + get8(in) % 8u; /* MIN() evaluates its arguments twice */
                        len -= MIN(cut, len);
                        break;
                }
                case 2:
                        s.chunk_len = (uint32_t)MIN(s.body_len + 1, (uint64_t)UINT32_MAX);
                        break;
                case 3:
                        s.flags |= 2u << (get8(in) % 31);
                        break;
                case 4:
                        s.method_len = 0;
                        break;
                case 5: {
                        uint32_t at = get8(in) % MAX(s.deployment_len, 1u);
                        v[at] = get8(in) & 1 ? ' ' : 0x7f;
                        break;
                }
                case 6:
                        s.deployment_len = PROTO_MAX_NAME + 1;
                        break;
                case 7:
                        s.path_len = s.path_len ? s.path_len + 1 : PROTO_MAX_CALL_PATH + 1;
                        break;
                case 8:
                        len = get8(in) % sizeof s;
                        break;
                case 9:
                        s.deployment_len += s.method_len; /* the lengths still add up */
                        s.method_len = 0;
                        break;
                default:
                        G.oom_next_new = true;
                }
        }
        memcpy(rbuf, &s, sizeof s);
        uint32_t names = s.deployment_len + s.method_len + s.path_len;
        if (names <= 2 * PROTO_MAX_NAME + PROTO_MAX_CALL_PATH && s.deployment_len <= PROTO_MAX_NAME &&
            s.method_len <= PROTO_MAX_NAME) {
                /* What the callee's head must say. */
                st->expect_head = malloc(names + 3);
                check(st->expect_head != NULL);
                char *h = st->expect_head;
                memcpy(h, v, s.deployment_len);
                h[s.deployment_len] = 0;
                memcpy(h + s.deployment_len + 1, v + s.deployment_len, s.method_len);
                h[s.deployment_len + 1 + s.method_len] = 0;
                memcpy(h + s.deployment_len + s.method_len + 2, path, s.path_len);
                h[names + 2] = 0;
        }
        record(PROTO_CALL_START, rbuf, len, st);
        G.oom_next_new = false;
}

static void op_body(struct input *in) {
        struct proto_body b = {};
        uint8_t f = get8(in);
        struct inst *a = W.assembling;
        uint64_t left = a ? a->arg_len - a->arg_sent : 0;
        uint32_t n;

        b.req_id = a && !(f & 1) ? a->id : pick_id(in, f >> 1);
        switch ((f >> 3) & 3) {
        case 0:
        case 1:
                n = (uint32_t)MIN(left, (uint64_t)MAX_ARG_RECORD); /* all it can */
                break;
        case 2:
                n = get16(in) % MAX_ARG_RECORD;
                n = (uint32_t)MIN(left, (uint64_t)n);
                break;
        default:
                n = 1u + get8(in) % 2u; /* too much */
                n = (uint32_t)MIN(left + n, (uint64_t)MAX_ARG_RECORD);
        }
        b.len = n;
        if (f & 0x20)
                b.len += get8(in) & 1 ? 1 : -1u; /* lie */
        uint64_t off = a ? a->arg_sent : 0;
        fill(rbuf + sizeof b, arg_byte, b.req_id, off, n);
        memcpy(rbuf, &b, sizeof b);
        record(PROTO_CALL_BODY, rbuf, (uint32_t)sizeof b + n, NULL);
}

static void op_cancel(struct input *in) {
        struct proto_cancel c;
        uint8_t f = get8(in);
        c.req_id = pick_id(in, (uint8_t)(f | 2)); /* mostly an id it used */
        if (f & 4)
                c.req_id = get64(in);
        memcpy(rbuf, &c, sizeof c);
        record(PROTO_CALL_CANCEL, rbuf, f & 8 ? (uint32_t)(get8(in) % 24) : (uint32_t)sizeof c, NULL);
}

static void op_credit(struct input *in) {
        struct proto_credit c;
        uint8_t f = get8(in);
        c.req_id = pick_id(in, (uint8_t)(f | 2));
        switch ((f >> 2) & 3) {
        case 0:
                c.bytes = get16(in);
                break;
        case 1:
                c.bytes = PROTO_STREAM_WINDOW;
                break;
        case 2:
                c.bytes = UINT64_MAX;
                break;
        default:
                c.bytes = get64(in);
        }
        memcpy(rbuf, &c, sizeof c);
        record(PROTO_CALL_CREDIT, rbuf, f & 16 ? (uint32_t)(get8(in) % 24) : (uint32_t)sizeof c, NULL);
}

/* Any record type and bytes, mostly the call types, with a call id patched in. */
static void op_raw(struct input *in) {
        uint16_t t = get16(in);
        uint16_t type = t & 0x8000 ? t : (uint16_t)(PROTO_CALL_START + t % 4);
        uint32_t len = get16(in) % 512;
        get_bytes(in, rbuf, len);
        if (W.assembling)
                W.assembling->arg_known = false; /* a raw CALL_BODY may add to it */
        if (len >= 8 && (t & 0x10)) {
                uint64_t id = pick_id(in, 2);
                memcpy(rbuf, &id, sizeof id);
        }
        record(type, rbuf, len, NULL);
}

/* ---- the program ---- */

enum {
        OP_START,
        OP_BODY,
        OP_CANCEL,
        OP_CREDIT,
        OP_RAW,
        OP_BURST,
        OP_CONSUME,
        OP_FLUSH,
        OP_BEGIN,
        OP_DELIVER,
        OP_END,
        OP_BACKEND_FAIL,
        OP_EXPIRE,
        OP_LOOP,
        OP_RELEASE,
        OP_KILL,
        OP_TAIL_GARBAGE,
        OP_DRAIN,
        OP_SLEEP,
        N_OPS,
};

static void step(struct input *in) {
        struct fq *f;
        uint8_t sel;
        uint8_t op = get8(in) % N_OPS;

        trace("step %u\n", op);
        switch (op) {
        case OP_START:
                op_start(in, false);
                break;
        case OP_BODY:
                op_body(in);
                break;
        case OP_CANCEL:
                op_cancel(in);
                break;
        case OP_CREDIT:
                op_credit(in);
                break;
        case OP_RAW:
                op_raw(in);
                break;
        case OP_BURST: {
                /* A few calls, or (once per input: it is slow) one past PROTO_MAX_CALLS. */
                uint8_t b = get8(in);
                unsigned have = call_link_count(&W.rep);
                unsigned n = 1u + b % 16u;
                if (b == 0xff && !G.big_burst) {
                        G.big_burst = true;
                        n = PROTO_MAX_CALLS - MIN(have, PROTO_MAX_CALLS) + 1u;
                }
                for (unsigned i = 0; i < n; i++) {
                        unsigned gen = G.world_gen;
                        op_start(in, true);
                        if (G.world_gen != gen)
                                break; /* killed */
                }
                break;
        }
        case OP_CONSUME:
                sel = get8(in);
                consume(sel & 0x80 ? UINT32_MAX : sel);
                break;
        case OP_FLUSH:
                flush_checked();
                break;
        case OP_DRAIN:
                drain();
                break;
        case OP_SLEEP:
                /* It found its ring empty: it sleeps until the doorbell rings. */
                if (!W.tainted && !W.asleep && ring_consumer_prepare_sleep(&W.cons))
                        W.asleep = true;
                break;
        case OP_BEGIN: {
                sel = get8(in);
                uint8_t m = get8(in);
                int status = 100 + get16(in) % 500;
                uint64_t len;
                switch (m & 3) {
                case 0:
                        len = REQUEST_LEN_STREAM;
                        break;
                case 1:
                        len = get8(in);
                        break;
                case 2:
                        len = get16(in);
                        break;
                default:
                        len = (uint64_t)get16(in) * 4;
                }
                uint64_t first = m & 4 ? get16(in) : 0;
                if ((f = pick(sel, FQ_RUNNING, true, not_begun)))
                        begin(f, status, len, first);
                break;
        }
        case OP_DELIVER: {
                sel = get8(in);
                uint8_t m = get8(in);
                uint64_t n = m & 2 ? (m & 1 ? UINT64_MAX : (uint64_t)get16(in) * 4) : m & 1 ? get16(in) : get8(in);
                if ((f = pick(sel, FQ_RUNNING, true, can_deliver)))
                        deliver(f, n);
                break;
        }
        case OP_END:
                if ((f = pick(get8(in), FQ_RUNNING, true, streaming)))
                        end_stream(f);
                break;
        case OP_BACKEND_FAIL: {
                char why[64];
                sel = get8(in);
                int status = 400 + get8(in) % 200;
                size_t n = get8(in) % sizeof why;
                get_bytes(in, why, n);
                for (size_t i = 0; i < n; i++)
                        why[i] = why[i] ? why[i] : '?';
                why[n] = 0;
                if ((f = pick(sel, FQ_RUNNING, true, NULL)))
                        backend_fail(f, status, why);
                break;
        }
        case OP_EXPIRE:
                if ((f = pick(get8(in), FQ_RUNNING, true, NULL)))
                        expire(f);
                break;
        case OP_LOOP:
                sel = get8(in);
                for (unsigned i = 0; i <= sel % 4 && !list_empty(&G.deferred); i++)
                        run_deferred();
                break;
        case OP_RELEASE:
                if ((f = pick(get8(in), FQ_HELD, false, NULL)))
                        fq_free(f);
                break;
        case OP_KILL:
                world_restart();
                break;
        case OP_TAIL_GARBAGE:
                atomic_store_explicit(&req_sh()->tail, get32(in), memory_order_relaxed);
                W.tainted = true;
                break;
        }
        /* An answer written while the replica sleeps rings its doorbell (once per loop
         * iteration: replica_link_ring_bells), and nothing else does. */
        if (!W.tainted && W.asleep && atomic_load(&req_sh()->head) != W.cons.local)
                check(W.rep.req_bell_pending);
        if (W.rep.req_bell_pending) {
                check(W.asleep || W.tainted);
                W.rep.req_bell_pending = false;
                W.asleep = false;
                ring_consumer_awake(&W.cons);
        }
        check_requests();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static const uint64_t budgets[] = { 4096, 65536, 1u << 20, 16u << 20 };
        static const uint64_t max_bodies[] = { 0, 1000, 65536, 1u << 30 };
        struct input in = { data, size };
        uint8_t cfg = get8(&in);

        memset(&G, 0, sizeof G);
        memset(rbuf, 0, sizeof rbuf); /* no bytes of an earlier input in malformed records */
        list_init(&G.reqs);
        list_init(&G.deferred);
        list_init(&G.loop.deferred);
        G.loop.now = 12345;
        G.budget = budgets[(cfg >> 3) & 3];
        G.router.max_call_body = max_bodies[(cfg >> 5) & 3];
        G.router.call_timeout_s = cfg & 0x80 ? 30 : 0;
        G.router.find = (cfg >> 1 & 3) == 3 ? NULL : find_dep; /* NULL: this node serves no calls */
        G.router.find_userdata = &W;
        G.next_id = 1;
        world_open(cfg);

        for (unsigned steps = 0; in.n > 0 && steps < 256; steps++)
                step(&in);

        if (!W.tainted)
                settle();
        world_close();
        /* The system lets go of what it still holds. */
        while (!list_empty(&G.deferred))
                run_deferred();
        release_held();
        check(list_empty(&G.reqs) && G.n_reqs == 0);
        check(G.buffered == 0);
        return 0;
}
