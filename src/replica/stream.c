/* Streaming responses: serve_response_flush() sends what a handler wrote so far, while it goes
 * on producing the rest.
 *
 * The first flush sends RESP_START with PROTO_RESP_STREAM (body_len 0: the length is unknown)
 * and the body so far; later flushes send RESP_BODY records; the end (the handler returned) is
 * the rest of the body and RESP_END. A request whose REQ_START lacked PROTO_REQ_STREAM_OK is
 * not streamed: flush does nothing and the whole response goes out at the end, as before.
 *
 * Flow control: a stream may have PROTO_STREAM_WINDOW body bytes sent that the proxy has not
 * credited yet (PROTO_REQ_CREDIT: its client took them). Past that, flush waits on the stream's
 * condition variable, which the reader of the request ring signals when credit arrives, or
 * when the request is cancelled (then flush returns -ECANCELED). A slow client thus stops its
 * handler, and nothing on the way buffers more than the window. send_lock is held only to put
 * records into the ring, never while waiting for credit.
 *
 * Every request still gets exactly one complete response: a stream, cancelled or not, ends
 * with RESP_END. */

#include <errno.h>
#include <string.h>
#include <sys/types.h>

#include "log.h"
#include "replica-internal.h"
#include "shm/proto.h"

static int stream_flush(struct serve_response *resp);

static const struct serve_runtime_ops response_ops = {
        .flush = stream_flush,
};

void stream_init(struct stream *st, struct replica *rep, struct serve_request *req, struct serve_response *resp) {
        *st = (struct stream) {
                .rep = rep,
                .req = req,
                .allowed = req->flags & PROTO_REQ_STREAM_OK,
        };
        pthread_cond_init(&st->cond, NULL);
        resp->ops = &response_ops;
        resp->rt = st;
}

void stream_destroy(struct stream *st) {
        pthread_cond_destroy(&st->cond);
}

static struct stream *find_locked(struct replica *rep, uint64_t id) {
        for (struct stream *st = rep->streams; st; st = st->next)
                if (st->req->id == id)
                        return st;
        return NULL;
}

int stream_credit_locked(struct replica *rep, uint64_t id, uint64_t bytes) {
        struct stream *st = find_locked(rep, id);

        if (!st)
                return 0; /* it ended meanwhile */
        /* The proxy credits bytes it received, and `sent` counts them before they go out. */
        if (bytes > st->sent - st->credited)
                return -EINVAL;
        st->credited += bytes;
        pthread_cond_signal(&st->cond);
        return 0;
}

void stream_cancel_locked(struct replica *rep, uint64_t id) {
        struct stream *st = find_locked(rep, id);

        if (st)
                pthread_cond_signal(&st->cond);
}

void stream_forget_locked(struct stream *st) {
        for (struct stream **p = &st->rep->streams; *p; p = &(*p)->next)
                if (*p == st) {
                        *p = st->next;
                        return;
                }
}

/* Waits until the window has room (or the request is cancelled), then takes up to `want` bytes
 * of it. Returns the bytes taken (> 0), or -ECANCELED. */
static ssize_t take_window(struct stream *st, size_t want) {
        struct replica *rep = st->rep;
        uint64_t avail;

        pthread_mutex_lock(&rep->lock);
        while ((avail = st->credited + PROTO_STREAM_WINDOW - st->sent) == 0 && !serve_request_cancelled(st->req))
                pthread_cond_wait(&st->cond, &rep->lock);
        if (serve_request_cancelled(st->req)) {
                pthread_mutex_unlock(&rep->lock);
                return -ECANCELED;
        }
        size_t n = (size_t) MIN((uint64_t) want, avail);
        /* Counted before the bytes go out: the proxy may credit them as soon as they do. */
        st->sent += n;
        pthread_mutex_unlock(&rep->lock);
        return (ssize_t) n;
}

/* Sends body bytes [off, len) of resp as RESP_BODY records, as the window allows. Returns 0, or
 * -ECANCELED (the rest is dropped). Either way the body is consumed. */
static int send_body(struct stream *st, struct serve_response *resp, size_t off) {
        struct replica *rep = st->rep;
        uint32_t max = ring_max_payload(&rep->seg.resp) - (uint32_t) sizeof(struct proto_body);
        int r = 0;

        while (off < resp->body_len) {
                ssize_t n = take_window(st, resp->body_len - off);
                if (n < 0) {
                        r = (int) n;
                        break;
                }
                pthread_mutex_lock(&rep->send_lock);
                for (size_t end = off + (size_t) n; off < end;) {
                        size_t k = MIN(end - off, (size_t) max);
                        struct proto_body b = { .req_id = st->req->id, .len = (uint32_t) k };
                        uint8_t *q = resp_alloc(rep, PROTO_RESP_BODY, (uint32_t) (sizeof b + k));
                        memcpy(q, &b, sizeof b);
                        memcpy(q + sizeof b, resp->body + off, k);
                        /* Each piece reaches the client as soon as it is in the ring. */
                        resp_publish(rep);
                        off += k;
                }
                pthread_mutex_unlock(&rep->send_lock);
        }
        resp->body_len = 0; /* the buffer stays for the next writes */
        return r;
}

/* The first flush: RESP_START with the status, headers and what fits of the body (the window
 * is whole yet: nothing to wait for). Returns the body bytes it carried (>= 0), or -EMSGSIZE:
 * the headers do not fit in a record, the response is not a stream (and answers 500 at the
 * end). */
static ssize_t send_start(struct stream *st, struct serve_response *resp) {
        struct replica *rep = st->rep;
        uint32_t max = ring_max_payload(&rep->seg.resp);
        size_t fixed = sizeof(struct proto_resp_start), first;

        if (fixed + resp->headers_bytes >= max) {
                log_error("Response headers (%zu bytes) do not fit in one ring record (%u bytes): not streaming",
                          resp->headers_bytes, max);
                return -EMSGSIZE;
        }
        first = MIN(MIN(resp->body_len, (size_t) PROTO_STREAM_WINDOW), max - fixed - resp->headers_bytes);
        /* From here on, credit and cancels for this request find the stream. */
        pthread_mutex_lock(&rep->lock);
        st->next = rep->streams;
        rep->streams = st;
        st->started = true;
        st->sent = first;
        pthread_mutex_unlock(&rep->lock);
        resp->streaming = true;

        pthread_mutex_lock(&rep->send_lock);
        resp_put_start(rep, st->req->id, resp, 0, PROTO_RESP_STREAM, first);
        resp_publish(rep);
        pthread_mutex_unlock(&rep->send_lock);
        return (ssize_t) first;
}

/* serve_response_flush(). */
static int stream_flush(struct serve_response *resp) {
        struct stream *st = resp->rt;
        size_t off = 0;

        if (!st || !st->allowed)
                return 0; /* the receiver takes no stream: everything goes at the end */
        if (serve_request_cancelled(st->req)) {
                resp->body_len = 0;
                return -ECANCELED;
        }
        /* A stream's total is bounded like any response (the proxy kills a replica past it):
         * what would pass the bound is refused, not sent. */
        if (resp->body_len > PROTO_MAX_RESP_BODY - st->total) {
                resp->body_len = 0;
                return -EFBIG;
        }
        st->total += resp->body_len;
        if (!st->started) {
                ssize_t n = send_start(st, resp);
                if (n < 0) {
                        st->total = 0;
                        return (int) n;
                }
                off = (size_t) n;
        }
        return send_body(st, resp, off);
}

int stream_finish_body(struct stream *st, struct serve_response *resp) {
        if (!st->started)
                return 0;
        if (serve_request_cancelled(st->req) || resp->body_len > PROTO_MAX_RESP_BODY - st->total) {
                resp->body_len = 0;
                return serve_request_cancelled(st->req) ? -ECANCELED : -EFBIG;
        }
        st->total += resp->body_len;
        return send_body(st, resp, 0);
}

void stream_send_end(struct stream *st) {
        struct replica *rep = st->rep;
        struct proto_cancel e = { .req_id = st->req->id };

        pthread_mutex_lock(&rep->send_lock);
        memcpy(resp_alloc(rep, PROTO_RESP_END, sizeof e), &e, sizeof e);
        resp_publish(rep);
        pthread_mutex_unlock(&rep->send_lock);
}
