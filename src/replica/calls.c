#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "calls.h"
#include "graph.h"
#include "log.h"
#include "shm/proto.h"
#include "util.h"

#define CALL_BUCKETS 256u /* a power of two */

enum future_state {
        FUTURE_WAITING,   /* no answer yet */
        FUTURE_ANSWERING, /* the answer started; body still coming */
        FUTURE_DONE,      /* complete (or failed, cancelled) */
};

struct serve_future {
        struct serve_future_head head;  /* first: libserve finds the ops through it */
        uint64_t id, parent;
        bool stream;                    /* serve_call_stream(): read with serve_future_next() */
        bool answer_stream;             /* the answer comes in pieces until CALL_RESP_END */
        enum future_state state;        /* guarded by calls.lock, like everything below */
        int status;
        uint64_t body_len;              /* non-stream: the announced length */
        struct buf body;                /* non-stream: the answer; stream: bytes not yet read */
        struct buf piece;               /* stream: what serve_future_next() handed out last */
        char target[PROTO_MAX_NAME + 1 + PROTO_MAX_NAME + 1]; /* "Deployment.method", for messages */
        pthread_cond_t cond;
        struct serve_future *hnext;     /* in its bucket while not DONE */
};

static struct {
        struct replica *rep;
        pthread_mutex_t lock;           /* guards the table and every future's answer */
        struct serve_future *buckets[CALL_BUCKETS];
        unsigned n;
        uint64_t next_id;
} calls = { .lock = PTHREAD_MUTEX_INITIALIZER, .next_id = 1 };

static __thread struct serve_request *current;

void calls_init(struct replica *rep) { calls.rep = rep; }

void calls_set_current(struct serve_request *req) { current = req; }

static struct serve_future **slot_of(uint64_t id) {
        struct serve_future **pp = &calls.buckets[(id ^ (id >> 13)) & (CALL_BUCKETS - 1)];
        while (*pp && (*pp)->id != id)
                pp = &(*pp)->hnext;
        return pp;
}

/* Takes f out of the table (calls.lock held). */
static void unlink_locked(struct serve_future *f) {
        struct serve_future **pp = slot_of(f->id);
        if (*pp == f) {
                *pp = f->hnext;
                calls.n--;
        }
}

static void future_destroy(struct serve_future *f) {
        buf_free(&f->body);
        buf_free(&f->piece);
        pthread_cond_destroy(&f->cond);
        free(f);
}

/* The answer is complete (calls.lock held): wakes the waiter. */
static void finish_locked(struct serve_future *f) {
        unlink_locked(f);
        f->state = FUTURE_DONE;
        pthread_cond_broadcast(&f->cond);
}

/* Ends f with status and message (calls.lock held). */
static void fail_locked(struct serve_future *f, int status, const char *msg) {
        f->status = status;
        f->body.len = 0;
        (void)buf_append(&f->body, msg, strlen(msg), SIZE_MAX);
        finish_locked(f);
}

/* ---- writing records (the response ring, under send_lock) ---- */

static void send_small(uint16_t type, const void *rec, size_t len) {
        struct replica *rep = calls.rep;

        pthread_mutex_lock(&rep->send_lock);
        memcpy(resp_alloc(rep, type, (uint32_t)len), rec, len);
        resp_publish(rep);
        pthread_mutex_unlock(&rep->send_lock);
}

static void send_cancel(uint64_t id) {
        struct proto_cancel c = { .req_id = id };
        send_small(PROTO_CALL_CANCEL, &c, sizeof c);
}

static void send_credit(uint64_t id, uint64_t bytes) {
        struct proto_credit c = { .req_id = id, .bytes = bytes };
        send_small(PROTO_CALL_CREDIT, &c, sizeof c);
}

static void send_call(uint64_t id, uint64_t parent, bool stream, const char *dep, const char *method, const char *path,
                      const void *arg, size_t len) {
        struct replica *rep = calls.rep;
        uint32_t max = ring_max_payload(&rep->seg.resp);
        struct proto_call_start s = {
                .call_id = id,
                .parent_id = parent,
                .flags = stream ? PROTO_CALL_STREAM : 0,
                .deployment_len = (uint32_t)strlen(dep),
                .method_len = (uint32_t)strlen(method),
                .path_len = (uint32_t)strlen(path),
                .body_len = len,
        };
        size_t fixed = sizeof s + s.deployment_len + s.method_len + s.path_len;
        size_t first = MIN(len, (size_t)max - fixed);
        s.chunk_len = (uint32_t)first;

        /* The records of one call stay contiguous: the worker assembles one call at a time. */
        pthread_mutex_lock(&rep->send_lock);
        uint8_t *p = resp_alloc(rep, PROTO_CALL_START, (uint32_t)(fixed + first));
        memcpy(p, &s, sizeof s);
        p += sizeof s;
        memcpy(p, dep, s.deployment_len);
        p += s.deployment_len;
        memcpy(p, method, s.method_len);
        p += s.method_len;
        memcpy(p, path, s.path_len);
        p += s.path_len;
        if (first)
                memcpy(p, arg, first);
        resp_publish(rep);
        for (size_t off = first; off < len;) {
                size_t n = MIN(len - off, (size_t)max - sizeof(struct proto_body));
                struct proto_body b = { .req_id = id, .len = (uint32_t)n };
                uint8_t *q = resp_alloc(rep, PROTO_CALL_BODY, (uint32_t)(sizeof b + n));
                memcpy(q, &b, sizeof b);
                memcpy(q + sizeof b, (const uint8_t *)arg + off, n);
                resp_publish(rep);
                off += n;
        }
        pthread_mutex_unlock(&rep->send_lock);
}

/* ---- the runtime ops ---- */

static int set_error(struct serve_result *ret, int status, int err, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
static int set_error(struct serve_result *ret, int status, int err, const char *fmt, ...) {
        char *msg = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (msg)
                log_warning("%s", msg); /* a graph error is a bug in the application: say it once per call */
        if (ret) {
                *ret = (struct serve_result) { .status = status, .data = msg };
                if (msg)
                        ret->len = strlen(msg);
        } else
                free(msg);
        return err;
}

/* Whether `name` is among the '>'-separated names of path. */
static bool path_has(const char *path, const char *name) {
        size_t n = strlen(name);
        for (const char *p = path; *p;) {
                size_t k = strcspn(p, ">");
                if (k == n && memcmp(p, name, n) == 0)
                        return true;
                p += k;
                if (*p == '>')
                        p++;
        }
        return false;
}

/* A name the worker takes in a call, without the call path's separator. */
static bool name_ok(const char *s) {
        return proto_name_valid(s, strlen(s), PROTO_MAX_NAME) && !strchr(s, '>');
}

static int op_call(serve_ctx *ctx, const serve_request *for_req, const char *dep, const char *method,
                   const void *arg, size_t len, bool stream, serve_future **ret_future,
                   struct serve_result *ret_error) {
        struct replica *rep = calls.rep;
        const struct serve_deployment *self = rep->dep, *target = NULL;
        const struct serve_request *parent = for_req ? for_req : current;
        const char *path = parent && parent->call_path ? parent->call_path : "";
        const char *slash = strchr(dep, '/');
        char binds[512], self_q[2 * PROTO_MAX_NAME + 2], target_q[2 * PROTO_MAX_NAME + 2];

        (void)ctx;
        if (!name_ok(dep) || !name_ok(method) || (slash && (slash == dep || strchr(slash + 1, '/'))))
                return set_error(ret_error, 400, -EINVAL, "handle call from '%s': invalid deployment or method name",
                                 self->name);
        /* Its name travels in the call path: the worker refuses (and kills) a path it cannot
         * carry in a header. */
        if (!name_ok(self->name))
                return set_error(ret_error, 400, -EINVAL,
                                 "deployment '%s' cannot make handle calls: names in a call need printable characters without spaces or '>'",
                                 self->name);
        /* The call path names deployments with their application ("app/Deployment"): the same
         * name in two applications is two deployments. */
        snprintf(self_q, sizeof self_q, "%s/%s", rep->ctx.app, self->name);
        if (slash) {
                /* "APP/DEPLOYMENT": another application's deployment (or "APP/", its ingress).
                 * Applications are not known to each other when they load: no bind needed, and
                 * the worker answers 404 when there is no such application or deployment. Within
                 * our own application the graph knows the answer now. */
                size_t al = (size_t)(slash - dep);
                snprintf(target_q, sizeof target_q, "%s", dep);
                if (strlen(rep->ctx.app) == al && memcmp(rep->ctx.app, dep, al) == 0 && slash[1]) {
                        target = graph_find(rep->app, slash + 1);
                        if (!target)
                                return set_error(ret_error, 404, -ENOENT, "application '%s' has no deployment '%s'",
                                                 rep->ctx.app, slash + 1);
                }
        } else {
                if (!graph_binds(self, dep)) {
                        graph_binds_list(self, binds, sizeof binds);
                        return set_error(ret_error, 404, -ENOENT,
                                         "deployment '%s' does not bind '%s' (it binds: %s): add it to its .binds to call it",
                                         self->name, dep, binds);
                }
                target = graph_find(rep->app, dep);
                if (!target)
                        return set_error(ret_error, 404, -ENOENT, "application '%s' has no deployment '%s'", rep->ctx.app,
                                         dep);
                snprintf(target_q, sizeof target_q, "%s/%s", rep->ctx.app, dep);
        }
        if (target && deployment_handler_index(target, method) < 0)
                return set_error(ret_error, 404, -ENOENT, "deployment '%s' has no method '%s'", dep, method);
        if (path_has(path, target_q) || streq(target_q, self_q))
                return set_error(ret_error, 508, -EDEADLK, "calling '%s' from '%s' would close a call cycle: %s%s%s > %s",
                                 target_q, self_q, path, *path ? " > " : "", self_q, target_q);
        if (strlen(path) + 1 + strlen(self_q) > PROTO_MAX_CALL_PATH)
                return set_error(ret_error, 508, -ELOOP, "handle call from '%s': the call chain is too deep", self->name);
        if (parent && serve_request_cancelled(parent))
                return set_error(ret_error, 499, -ECANCELED, "the request calling '%s.%s' was cancelled", dep, method);

        struct serve_future *f = calloc(1, sizeof *f);
        if (!f)
                return set_error(ret_error, 500, -ENOMEM, "out of memory for a handle call");
        f->head.ops = &calls_runtime_ops;
        f->stream = stream;
        f->parent = parent ? parent->id : 0;
        snprintf(f->target, sizeof f->target, "%s.%s", dep, method);
        pthread_cond_init(&f->cond, NULL);

        pthread_mutex_lock(&calls.lock);
        if (calls.n >= PROTO_MAX_CALLS) {
                pthread_mutex_unlock(&calls.lock);
                future_destroy(f);
                return set_error(ret_error, 503, -EBUSY, "too many handle calls outstanding (%u)", PROTO_MAX_CALLS);
        }
        f->id = calls.next_id++;
        struct serve_future **pp = slot_of(f->id);
        *pp = f;
        calls.n++;
        pthread_mutex_unlock(&calls.lock);

        send_call(f->id, f->parent, stream, dep, method, path, arg, len);
        *ret_future = f;
        return 0;
}

static int status_errno(int status) {
        if (status >= 200 && status < 300)
                return 0;
        switch (status) {
        case 404:
                return -ENOENT; /* no such deployment or method (also a callee that answers 404) */
        case 499:
                return -ECANCELED;
        case 503:
                return -EBUSY;
        case 504:
                return -ETIMEDOUT;
        case 508:
                return -EDEADLK;
        default:
                return -EREMOTEIO;
        }
}

/* Waits for f to be DONE (calls.lock held). A call made for a request that gets cancelled is
 * ended by calls_cancel_parent(). */
static void wait_done_locked(struct serve_future *f) {
        while (f->state != FUTURE_DONE)
                pthread_cond_wait(&f->cond, &calls.lock);
}

static int op_next(serve_future *f, const void **ret_data, size_t *ret_len);

static int op_wait(serve_future *f, struct serve_result *ret) {
        int r;

        if (f->stream) {
                /* A streaming call waited on as a whole: read its pieces (crediting the callee
                 * as they come) into one result. */
                _cleanup_(buf_free) struct buf all = {};
                const void *d;
                size_t n;
                while ((r = op_next(f, &d, &n)) > 0)
                        if (buf_append(&all, d, n, SIZE_MAX) < 0) {
                                serve_future_free(f);
                                return set_error(ret, 500, -ENOMEM, "out of memory for the answer of a call");
                        }
                if (r == 0)
                        SWAP(f->body, all);
        } else {
                pthread_mutex_lock(&calls.lock);
                wait_done_locked(f);
                pthread_mutex_unlock(&calls.lock);
        }
        /* DONE: nobody else touches f any more. */
        r = status_errno(f->status);
        if (buf_reserve(&f->body, 1, SIZE_MAX) == 0)
                f->body.data[f->body.len] = '\0';
        if (ret) {
                *ret = (struct serve_result) { .status = f->status, .data = f->body.data, .len = f->body.len };
                if (!ret->data)
                        ret->data = strdup(""), ret->len = 0;
                f->body = (struct buf) {};
        }
        future_destroy(f);
        return r;
}

static int op_next(serve_future *f, const void **ret_data, size_t *ret_len) {
        uint64_t id = f->id;
        bool done;

        pthread_mutex_lock(&calls.lock);
        while (f->state != FUTURE_DONE && f->body.len == 0)
                pthread_cond_wait(&f->cond, &calls.lock);
        done = f->state == FUTURE_DONE;
        if (done && status_errno(f->status) < 0) {
                pthread_mutex_unlock(&calls.lock);
                return status_errno(f->status); /* the message is in f->body: serve_future_error() */
        }
        /* Everything there is becomes the piece: one swap, no copy. */
        struct buf t = f->piece;
        f->piece = f->body;
        f->body = t;
        f->body.len = 0;
        pthread_mutex_unlock(&calls.lock);

        if (f->piece.len == 0)
                return 0; /* done, all read */
        if (!done)
                send_credit(id, f->piece.len); /* room for the callee to go on */
        *ret_data = f->piece.data;
        *ret_len = f->piece.len;
        return 1;
}

static int op_error(const serve_future *f, const char **ret_message) {
        int status;

        pthread_mutex_lock(&calls.lock);
        status = f->state == FUTURE_DONE ? f->status : 0;
        if (ret_message)
                *ret_message = f->state == FUTURE_DONE && status_errno(status) < 0 && f->body.data ? f->body.data : "";
        pthread_mutex_unlock(&calls.lock);
        return status;
}

static void op_free(serve_future *f) {
        bool cancel = false;

        pthread_mutex_lock(&calls.lock);
        if (f->state != FUTURE_DONE) {
                /* Nobody waits for it: tell the worker, forget it (a late answer is dropped). */
                unlink_locked(f);
                f->state = FUTURE_DONE;
                cancel = true;
        }
        pthread_mutex_unlock(&calls.lock);
        if (cancel)
                send_cancel(f->id);
        future_destroy(f);
}

const struct serve_runtime_ops calls_runtime_ops = {
        .call = op_call,
        .wait = op_wait,
        .next = op_next,
        .error = op_error,
        .free = op_free,
};

/* ---- answers (the request ring's reader) ---- */

_noreturn_ static void bad(const char *why) {
        log_error("Invalid call answer from the worker: %s; exiting", why);
        _exit(2);
}

static void on_resp_start(const uint8_t *p, uint32_t len) {
        struct proto_call_resp s;
        struct serve_future *f;

        if (len < sizeof s)
                bad("short CALL_RESP_START");
        memcpy(&s, p, sizeof s);
        if (s.chunk_len != len - sizeof s || s.status < 100 || s.status > 599 || (s.flags & ~PROTO_RESP_STREAM) ||
            s.body_len > PROTO_MAX_RESP_BODY || s.chunk_len > s.body_len ||
            ((s.flags & PROTO_RESP_STREAM) && s.body_len != 0))
                bad("CALL_RESP_START fields out of range");
        pthread_mutex_lock(&calls.lock);
        f = *slot_of(s.call_id);
        if (f) {
                /* A second START replaces the first: the call failed after its answer began.
                 * A streaming answer to a call that wanted a whole one accumulates. */
                f->status = (int)s.status;
                f->body.len = 0;
                f->body_len = s.body_len;
                f->answer_stream = (s.flags & PROTO_RESP_STREAM) != 0;
                f->state = FUTURE_ANSWERING;
                if (!f->answer_stream) {
                        if (buf_reserve(&f->body, s.body_len + 1, SIZE_MAX) < 0)
                                fail_locked(f, 502, "out of memory for the answer");
                        else {
                                (void)buf_append(&f->body, p + sizeof s, s.chunk_len, SIZE_MAX);
                                if (f->body.len == f->body_len)
                                        finish_locked(f);
                        }
                }
        }
        pthread_mutex_unlock(&calls.lock);
}

static void on_resp_body(const uint8_t *p, uint32_t len) {
        struct proto_body b;
        struct serve_future *f;

        if (!proto_body_parse(p, len, &b))
                bad("CALL_RESP_BODY length does not match its record");
        pthread_mutex_lock(&calls.lock);
        f = *slot_of(b.req_id);
        if (f) {
                if (f->state != FUTURE_ANSWERING)
                        bad("CALL_RESP_BODY before its START");
                bool stream = f->answer_stream;
                if (!stream && b.len > f->body_len - f->body.len)
                        bad("CALL_RESP_BODY beyond the announced length");
                if (buf_append(&f->body, p + sizeof b, b.len, SIZE_MAX) < 0)
                        fail_locked(f, 502, "out of memory for the answer");
                else if (!stream && f->body.len == f->body_len)
                        finish_locked(f);
                else if (stream)
                        pthread_cond_broadcast(&f->cond);
        }
        pthread_mutex_unlock(&calls.lock);
}

static void on_resp_end(const uint8_t *p, uint32_t len) {
        struct proto_cancel e;
        struct serve_future *f;

        if (len != sizeof e)
                bad("CALL_RESP_END of the wrong size");
        memcpy(&e, p, sizeof e);
        pthread_mutex_lock(&calls.lock);
        f = *slot_of(e.req_id);
        if (f) {
                if (f->state != FUTURE_ANSWERING || !f->answer_stream)
                        bad("CALL_RESP_END for an answer that is not a stream");
                finish_locked(f);
        }
        pthread_mutex_unlock(&calls.lock);
}

void calls_on_record(uint16_t type, const uint8_t *p, uint32_t len) {
        switch (type) {
        case PROTO_CALL_RESP_START:
                on_resp_start(p, len);
                break;
        case PROTO_CALL_RESP_BODY:
                on_resp_body(p, len);
                break;
        case PROTO_CALL_RESP_END:
                on_resp_end(p, len);
                break;
        default:
                bad("unknown call record");
        }
}

void calls_cancel_parent(uint64_t req_id) {
        uint64_t ids[64];
        size_t n;

        /* In rounds: CALL_CANCEL records are sent without the lock held. */
        do {
                n = 0;
                pthread_mutex_lock(&calls.lock);
                for (unsigned i = 0; i < CALL_BUCKETS && n < ELEMENTSOF(ids); i++) {
                        struct serve_future *f = calls.buckets[i], *next;
                        for (; f && n < ELEMENTSOF(ids); f = next) {
                                next = f->hnext;
                                if (f->parent != req_id)
                                        continue;
                                ids[n++] = f->id;
                                fail_locked(f, 499, "cancelled: the request that made the call was cancelled");
                        }
                }
                pthread_mutex_unlock(&calls.lock);
                for (size_t k = 0; k < n; k++)
                        send_cancel(ids[k]);
        } while (n == ELEMENTSOF(ids));
}
