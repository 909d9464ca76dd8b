#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "macros.h"
#include "netconn.h"
#include "tls-internal.h"

/* Reserved once bytes arrive (never while idle), and what an emptied buffer shrinks back to. */
#define RECV_CHUNK (16u * 1024)
/* Read per readiness before the loop serves others; the next poll fires at once if more wait. */
#define RECV_BUDGET (256u * 1024)
/* Output buffers grown past this by a burst are freed once sent. */
#define OUT_KEEP (64u * 1024)

#define REFUSAL_LOG_INTERVAL_NS (60 * NSEC_PER_SEC)
/* Freed connections after which netconn_tick() gives memory back to the system. */
#define TRIM_AFTER_FREED 64

/* Connections of one loop with the same progress timeout, oldest progress first: progress
 * moves a connection to the tail, so the head is always the next to expire. Few exist (one per
 * distinct timeout), kept per thread like the loops they serve. */
struct netconn_timerq {
        struct loop *loop;
        uint64_t timeout_ns;
        struct list conns; /* netconn.timer_link */
        struct list link;  /* timerqs */
};
static _Thread_local struct list timerqs;

/* The listener whose on_accept is running, and the fd it was given: netconn_adopt() of that fd
 * counts the connection against the listener's limit without the owner passing it along. */
static _Thread_local struct netlistener *accepting;
static _Thread_local int accepting_fd = -1;

static void arm_recv(struct netconn *nc);

struct netblob *netblob_new(const void *data, size_t len) {
        struct netblob *b = malloc(sizeof *b + len);
        if (!b)
                return NULL;
        b->refs = 1;
        b->len = len;
        memcpy(b->data, data, len);
        return b;
}

void netblob_unref(struct netblob *b) {
        if (b && --b->refs == 0)
                free(b);
}

/* Connections freed on this thread since memory was last given back (netconn_tick). */
static _Thread_local unsigned freed_since_trim;
static _Thread_local uint64_t last_trim_ns;

static void maybe_free(struct netconn *nc) {
        if (!nc->closed || nc->refs > 0 || nc->in_callback)
                return;
        freed_since_trim++;
        netblob_unref(nc->blob);
        buf_free(&nc->in);
        buf_free(&nc->out);
        buf_free(&nc->pending);
        tls_conn_free(nc->tls); /* only now: no io_uring operation refers to the fd any more */
        free(nc);
}

static void timer_unlink(struct netconn *nc) {
        struct netconn_timerq *tq = nc->timerq;

        if (!tq)
                return;
        list_del(&nc->timer_link);
        nc->timerq = NULL;
        if (list_empty(&tq->conns)) {
                list_del(&tq->link);
                free(tq);
        }
}

/* Progress: the deadline moves to now + timeout, and the connection to the FIFO's tail. */
static void timer_touch(struct netconn *nc, uint64_t now) {
        if (!nc->timerq)
                return;
        nc->progress_ns = now;
        list_del(&nc->timer_link);
        list_add_tail(&nc->timerq->conns, &nc->timer_link);
}

static void progress(struct netconn *nc) {
        if (nc->timerq)
                timer_touch(nc, now_ns());
}

static void do_close(struct netconn *nc) {
        timer_unlink(nc);
        if (nc->listener) {
                list_del(&nc->listener_link);
                nc->listener->n_open--;
                nc->listener = NULL;
        }
        if (nc->fd >= 0) {
                tls_conn_shutdown(nc->tls);
                /* Shutting the socket down completes any recv/send in flight; their completions
                 * then drop the last references. */
                shutdown(nc->fd, SHUT_RDWR);
                struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_close);
                io_uring_prep_close(sqe, nc->fd);
                nc->refs++;
                nc->fd = -1;
        }
        nc->closed = true;
}

/* The connection died under us: close it now, and tell the owner once, from the loop (the
 * caller may be the owner itself, in the middle of a write). An owner that already called
 * netconn_close() is not told. */
static void fail(struct netconn *nc, int err) {
        if (nc->closed)
                return;
        tls_conn_failed_early(nc->tls, err);
        do_close(nc);
        if (!nc->ops->on_close || nc->close_after_write)
                return;
        nc->close_err = err;
        nc->close_pending = true;
        nc->refs++;
        loop_defer(nc->loop, &nc->deferred);
}

static void run_on_close(struct loop_deferred *d) {
        struct netconn *nc = container_of(d, struct netconn, deferred);

        nc->refs--;
        if (nc->close_pending) {
                nc->close_pending = false;
                nc->in_callback = true;
                nc->ops->on_close(nc, nc->close_err);
                nc->in_callback = false;
        }
        maybe_free(nc);
}

static void on_close_done(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_close);
        nc->refs--;
        maybe_free(nc);
}

/* TLS: what is queued is encrypted and written after the current batch of completions (deferred
 * work), so whatever the owner queued until then goes out together, in full records, with no
 * round trip through the ring; only a socket that is full (wait_ready) is polled for. on_drain
 * follows from the loop as after a send. Nothing goes out before the handshake is done. */
static void start_send_tls(struct netconn *nc, bool wait_ready) {
        if (!nc->tls->handshake_done)
                return;
        if (netconn_unsent(nc) == 0) {
                if (nc->close_after_write)
                        do_close(nc);
                return;
        }
        if (wait_ready) {
                struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_send);
                io_uring_prep_poll_add(sqe, nc->fd, nc->tls->send_events);
        } else
                loop_defer(nc->loop, &nc->send_deferred);
        nc->sending = true;
        nc->refs++;
}

static void on_send(struct loop_op *op, int res, unsigned flags);

/* The deferred TLS write: as a poll that found the socket writable. */
static void run_send_deferred(struct loop_deferred *d) {
        struct netconn *nc = container_of(d, struct netconn, send_deferred);
        on_send(&nc->op_send, 0, 0);
}

static void start_send(struct netconn *nc) {
        if (nc->sending || nc->closed || nc->connecting)
                return;
        if (nc->tls) {
                start_send_tls(nc, false);
                return;
        }
        if (nc->blob) {
                struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_send);
                io_uring_prep_send(sqe, nc->fd, nc->blob->data + nc->blob_off, nc->blob->len - nc->blob_off, MSG_NOSIGNAL);
                nc->sending = true;
                nc->refs++;
                return;
        }
        if (nc->out.len == 0 && nc->pending.len > 0) {
                struct buf t = nc->out;
                nc->out = nc->pending;
                nc->pending = t;
                nc->pending.len = 0;
        }
        if (nc->out.len == 0) {
                if (nc->close_after_write)
                        do_close(nc);
                return;
        }
        struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_send);
        io_uring_prep_send(sqe, nc->fd, nc->out.data, nc->out.len, MSG_NOSIGNAL);
        nc->sending = true;
        nc->refs++;
}

/* n bytes of the blob, or else of out, were sent. */
static void sent(struct netconn *nc, size_t n) {
        if (nc->blob) {
                nc->blob_off += n;
                if (nc->blob_off == nc->blob->len) {
                        netblob_unref(nc->blob);
                        nc->blob = NULL;
                        nc->blob_off = 0;
                }
        } else
                buf_consume(&nc->out, n);
}

/* The socket is ready for what the last TLS write waited for: writes what is queued until the
 * socket is full (then polls again). Returns 0 or a negative errno. */
static int send_tls(struct netconn *nc) {
        int r = 1;

        while (r > 0) {
                const char *p;
                size_t len, n;

                if (nc->blob) {
                        p = nc->blob->data + nc->blob_off;
                        len = nc->blob->len - nc->blob_off;
                } else {
                        if (nc->out.len == 0 && nc->pending.len > 0)
                                SWAP(nc->out, nc->pending);
                        if (nc->out.len == 0)
                                break;
                        p = nc->out.data;
                        len = nc->out.len;
                }
                /* After -EAGAIN the same bytes are offered again, at the start of blob or out
                 * (the owner's writes meanwhile went to pending): OpenSSL requires it. */
                r = tls_conn_write(nc->tls, p, len, &n);
                if (r > 0)
                        sent(nc, n);
        }
        if (tls_conn_moved(nc->tls))
                progress(nc);
        if (r == -EAGAIN) {
                start_send_tls(nc, true);
                return 0;
        }
        return r < 0 ? r : 0;
}

static void on_send(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_send);

        nc->refs--;
        nc->sending = false;
        if (nc->closed) {
                maybe_free(nc);
                return;
        }
        if (nc->tls) {
                int r = res < 0 ? res : send_tls(nc);
                if (r < 0) {
                        fail(nc, r);
                        maybe_free(nc);
                        return;
                }
        } else {
                if (res <= 0) {
                        fail(nc, res < 0 ? res : -EPIPE);
                        maybe_free(nc);
                        return;
                }
                progress(nc);
                sent(nc, (size_t)res);
        }
        /* A burst (a broadcast, a big response) must not stay reserved for an idle connection. */
        if (nc->out.len == 0 && nc->out.cap > OUT_KEEP)
                buf_free(&nc->out);
        if (nc->pending.len == 0 && nc->pending.cap > OUT_KEEP)
                buf_free(&nc->pending);
        start_send(nc);
        if (!nc->closed && !nc->sending && !nc->close_after_write && nc->ops->on_drain) {
                nc->in_callback = true;
                nc->ops->on_drain(nc);
                nc->in_callback = false;
        }
        maybe_free(nc);
}

/* Reads what the socket holds, up to RECV_BUDGET. Returns 1 when the peer may send more, 0 at
 * the end of its stream, or a negative errno; *ret_got is set to the bytes read either way. */
static int read_available(struct netconn *nc, size_t *ret_got) {
        size_t got = 0;
        int r = 1;

        for (;;) {
                /* in.len <= in_limit here (checked after every on_data), so this reserves. */
                if (buf_reserve(&nc->in, RECV_CHUNK, nc->in_limit + RECV_CHUNK) < 0) {
                        r = -ENOMEM;
                        break;
                }
                size_t room = nc->in.cap - nc->in.len;
                ssize_t n = recv(nc->fd, nc->in.data + nc->in.len, room, MSG_DONTWAIT);
                if (n > 0) {
                        nc->in.len += (size_t)n;
                        got += (size_t)n;
                        /* A short read emptied the socket: no second recv just to see EAGAIN. */
                        if ((size_t)n < room || got >= RECV_BUDGET || nc->in.len > nc->in_limit)
                                break;
                } else if (n == 0) {
                        r = 0;
                        break;
                } else if (errno != EINTR) {
                        if (errno != EAGAIN && errno != EWOULDBLOCK)
                                r = -errno;
                        break;
                }
        }
        *ret_got = got;
        return r;
}

/* read_available() for TLS: OpenSSL reads the socket and hands out at most one record per call,
 * so only its "want read" says the socket is empty. */
static int read_available_tls(struct netconn *nc, size_t *ret_got) {
        size_t got = 0, n;
        int r;

        for (;;) {
                if (buf_reserve(&nc->in, RECV_CHUNK, nc->in_limit + RECV_CHUNK) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = tls_conn_read(nc->tls, nc->in.data + nc->in.len, nc->in.cap - nc->in.len, &n);
                if (r <= 0)
                        break;
                nc->in.len += n;
                got += n;
                if (got >= RECV_BUDGET || nc->in.len > nc->in_limit)
                        break;
                /* OpenSSL holds nothing more: as after a short recv(), the poll says whether the
                 * socket does, rather than a read() that finds it empty. */
                if (!tls_conn_buffered(nc->tls))
                        break;
        }
        if (r == -EAGAIN)
                r = 1; /* arm_recv() polls for what OpenSSL waits for */
        /* Bytes that made no application data yet (part of a record) are progress too. */
        if (tls_conn_moved(nc->tls) && got == 0)
                progress(nc);
        *ret_got = got;
        return r;
}

/* Takes the handshake as far as the socket allows. Once it is done the owner hears of the
 * connection (on_connect, on both sides: it checks the peer there), then what it queued
 * meanwhile goes out, encrypted. */
static void tls_step(struct netconn *nc) {
        int r = tls_conn_handshake(nc->tls);

        if (tls_conn_moved(nc->tls))
                progress(nc);
        if (r == -EAGAIN) {
                arm_recv(nc);
                return;
        }
        if (r < 0) {
                fail(nc, r);
                return;
        }
        if (!nc->close_after_write && nc->ops->on_connect) { /* no callback after netconn_close() */
                nc->in_callback = true;
                nc->ops->on_connect(nc);
                nc->in_callback = false;
        }
        if (!nc->closed) {
                arm_recv(nc);
                start_send(nc);
        }
}

/* What on_data left in the buffer is kept; the room around it is given back. */
static void shrink_in(struct netconn *nc) {
        if (nc->in.len == 0) {
                buf_free(&nc->in);
                return;
        }
        if (nc->in.cap > 4 * RECV_CHUNK && nc->in.len <= nc->in.cap / 4) {
                size_t cap = ALIGN_TO(nc->in.len, (size_t)RECV_CHUNK);
                char *p = realloc(nc->in.data, cap);
                if (p) {
                        nc->in.data = p;
                        nc->in.cap = cap;
                }
        }
}

static void on_readable(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_recv);
        size_t got;
        int r;

        nc->refs--;
        nc->recv_armed = false;
        if (nc->closed || nc->paused) { /* netconn_pause(nc, false) arms it again */
                maybe_free(nc);
                return;
        }
        if (res < 0) {
                fail(nc, res);
                maybe_free(nc);
                return;
        }
        if (nc->tls && !nc->tls->handshake_done) {
                tls_step(nc);
                maybe_free(nc);
                return;
        }
        r = nc->tls ? read_available_tls(nc, &got) : read_available(nc, &got);
        if (got > 0) {
                progress(nc);
                if (nc->close_after_write)
                        nc->in.len = 0; /* the owner is done: read and drop, so closing sends no RST */
                else {
                        nc->in_callback = true;
                        nc->ops->on_data(nc);
                        nc->in_callback = false;
                }
        }
        if (!nc->closed && nc->in.len > nc->in_limit)
                fail(nc, -EMSGSIZE);
        else if (!nc->closed && r < 0)
                fail(nc, r);
        else if (!nc->closed && r == 0) {
                /* A peer that finished sending may still read what the owner writes last. */
                if (!nc->close_after_write)
                        fail(nc, 0);
                maybe_free(nc);
                return;
        }
        if (!nc->closed) {
                shrink_in(nc);
                arm_recv(nc);
        }
        maybe_free(nc);
}

static void arm_recv(struct netconn *nc) {
        if (nc->recv_armed || nc->closed || nc->connecting || nc->paused)
                return;
        /* Wait for bytes without a buffer, so an idle connection costs no receive memory. */
        struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_recv);
        if (!nc->tls)
                io_uring_prep_poll_add(sqe, nc->fd, POLLIN);
        else if (nc->tls->handshake_done && tls_conn_has_pending(nc->tls))
                /* Decrypted bytes wait in OpenSSL (reading stopped, or the owner paused): no poll
                 * would report them, so the next batch reads them. */
                io_uring_prep_nop(sqe);
        else
                /* Readable, or writable when OpenSSL must write before it reads on. */
                io_uring_prep_poll_add(sqe, nc->fd, nc->tls->recv_events);
        nc->recv_armed = true;
        nc->refs++;
}

static void on_connect(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_connect);

        nc->refs--;
        nc->connecting = false;
        if (nc->closed) {
                maybe_free(nc);
                return;
        }
        if (res < 0) {
                fail(nc, res);
                maybe_free(nc);
                return;
        }
        if (nc->tls) { /* the owner hears of it once the handshake is done */
                int r = fd_nonblock(nc->fd, true);
                if (r < 0)
                        fail(nc, r);
                else if (nc->close_after_write && netconn_unsent(nc) == 0)
                        do_close(nc);
                else
                        tls_step(nc);
                maybe_free(nc);
                return;
        }
        nc->in_callback = true;
        if (nc->ops->on_connect)
                nc->ops->on_connect(nc);
        nc->in_callback = false;
        if (!nc->closed) {
                arm_recv(nc);
                start_send(nc);
        }
        maybe_free(nc);
}

static struct netconn *netconn_alloc(struct loop *loop, int fd, const struct netconn_ops *ops, void *userdata) {
        struct netconn *nc = calloc(1, sizeof *nc);
        int one = 1;

        if (!nc)
                return NULL;
        nc->loop = loop;
        nc->fd = fd;
        nc->ops = ops;
        nc->userdata = userdata;
        nc->in_limit = 32u << 20;
        nc->out_limit = 256u << 20;
        nc->op_recv.cb = on_readable;
        nc->op_send.cb = on_send;
        nc->op_connect.cb = on_connect;
        nc->op_close.cb = on_close_done;
        nc->deferred.fn = run_on_close;
        nc->send_deferred.fn = run_send_deferred;
        list_init(&nc->timer_link);
        list_init(&nc->listener_link);
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return nc;
}

static void format_addr(const struct sockaddr *sa, char *out, size_t n) {
        char host[INET6_ADDRSTRLEN] = "?";
        int port = 0;

        if (sa->sa_family == AF_INET) {
                const struct sockaddr_in *s4 = (const void *)sa;
                inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
                port = ntohs(s4->sin_port);
                snprintf(out, n, "%s:%d", host, port);
        } else if (sa->sa_family == AF_INET6) {
                const struct sockaddr_in6 *s6 = (const void *)sa;
                inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
                port = ntohs(s6->sin6_port);
                snprintf(out, n, "[%s]:%d", host, port);
        } else
                snprintf(out, n, "?");
}

int netconn_connect(struct loop *loop, const char *host, int port, const struct netconn_ops *ops, void *userdata,
                    struct netconn **ret) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
        struct addrinfo *ai = NULL;
        char portstr[16];
        struct netconn *nc;
        int fd, r;

        snprintf(portstr, sizeof portstr, "%d", port);
        r = getaddrinfo(host, portstr, &hints, &ai);
        if (r != 0)
                return r == EAI_SYSTEM ? negative_errno() : -EHOSTUNREACH;
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                freeaddrinfo(ai);
                return r;
        }
        nc = netconn_alloc(loop, fd, ops, userdata);
        if (!nc) {
                close(fd);
                freeaddrinfo(ai);
                return -ENOMEM;
        }
        format_addr(ai->ai_addr, nc->peer, sizeof nc->peer);
        struct io_uring_sqe *sqe = loop_sqe(loop, &nc->op_connect);
        /* The address must outlive the submission: the SQE is submitted later, so copy it. */
        static _Thread_local struct sockaddr_storage addr_copy[64];
        static _Thread_local unsigned addr_next;
        struct sockaddr_storage *sa = &addr_copy[addr_next++ % ELEMENTSOF(addr_copy)];
        memcpy(sa, ai->ai_addr, ai->ai_addrlen);
        io_uring_prep_connect(sqe, fd, (struct sockaddr *)sa, ai->ai_addrlen);
        io_uring_submit(&loop->ring); /* the copy above is reused after 64 more connects */
        freeaddrinfo(ai);
        nc->connecting = true;
        nc->refs++;
        *ret = nc;
        return 0;
}

int netconn_adopt(struct loop *loop, int fd, const struct netconn_ops *ops, void *userdata, struct netconn **ret) {
        struct netconn *nc = netconn_alloc(loop, fd, ops, userdata);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;

        if (!nc) {
                close(fd);
                return -ENOMEM;
        }
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
                format_addr((struct sockaddr *)&ss, nc->peer, sizeof nc->peer);
        if (accepting && accepting_fd == fd) {
                nc->listener = accepting;
                list_add_tail(&accepting->conns, &nc->listener_link);
                accepting->n_open++;
        }
        arm_recv(nc);
        *ret = nc;
        return 0;
}

struct buf *netconn_outbuf(struct netconn *nc) { return nc->sending || nc->blob ? &nc->pending : &nc->out; }

int netconn_write_blob(struct netconn *nc, struct netblob *b) {
        if (nc->closed)
                return -EPIPE;
        if (nc->blob || nc->sending || nc->out.len || nc->pending.len || nc->connecting)
                return netconn_write(nc, b->data, b->len);
        b->refs++;
        nc->blob = b;
        nc->blob_off = 0;
        start_send(nc);
        return 0;
}

void netconn_flush(struct netconn *nc) {
        if (nc->closed)
                return;
        if (nc->out.len + nc->pending.len > nc->out_limit) {
                fail(nc, -ENOBUFS);
                return;
        }
        start_send(nc);
}

int netconn_write(struct netconn *nc, const void *data, size_t len) {
        if (nc->closed)
                return -EPIPE;
        if (buf_append(netconn_outbuf(nc), data, len, SIZE_MAX) < 0 || nc->out.len + nc->pending.len > nc->out_limit) {
                fail(nc, -ENOBUFS);
                return -ENOBUFS;
        }
        start_send(nc);
        return 0;
}

size_t netconn_unsent(const struct netconn *nc) {
        return nc->out.len + nc->pending.len + (nc->blob ? nc->blob->len - nc->blob_off : 0);
}

void netconn_close(struct netconn *nc, bool after_write) {
        if (!nc)
                return;
        if (nc->close_pending) { /* failed already: the owner takes over, on_close is not run */
                loop_undefer(&nc->deferred);
                nc->close_pending = false;
                nc->refs--;
                maybe_free(nc);
                return;
        }
        if (nc->closed)
                return;
        if (after_write && (nc->sending || nc->blob || nc->out.len || nc->pending.len || nc->connecting)) {
                nc->close_after_write = true;
                start_send(nc);
                return;
        }
        do_close(nc);
        maybe_free(nc);
}

void netconn_pause(struct netconn *nc, bool paused) {
        if (nc->closed || nc->paused == paused)
                return;
        nc->paused = paused;
        if (!paused) {
                progress(nc); /* the time it was paused was ours, not the peer's */
                arm_recv(nc);
        }
}

int netconn_set_idle_timeout(struct netconn *nc, uint64_t timeout_ns) {
        struct netconn_timerq *tq = NULL;
        struct list *pos;

        timer_unlink(nc);
        nc->idle_timeout_ns = timeout_ns;
        if (timeout_ns == 0 || nc->closed)
                return 0;
        if (!timerqs.next)
                list_init(&timerqs);
        for (pos = timerqs.next; pos != &timerqs; pos = pos->next) {
                struct netconn_timerq *q = list_entry(pos, struct netconn_timerq, link);
                if (q->loop == nc->loop && q->timeout_ns == timeout_ns) {
                        tq = q;
                        break;
                }
        }
        if (!tq) {
                tq = calloc(1, sizeof *tq);
                if (!tq) {
                        nc->idle_timeout_ns = 0;
                        return -ENOMEM;
                }
                tq->loop = nc->loop;
                tq->timeout_ns = timeout_ns;
                list_init(&tq->conns);
                list_add_tail(&timerqs, &tq->link);
        }
        nc->timerq = tq;
        nc->progress_ns = now_ns();
        list_add_tail(&tq->conns, &nc->timer_link);
        return 0;
}

/* Thousands of links that closed (a peer's burst, an attacker's) leave their buffers and TLS
 * state in holes of the heap that glibc keeps: give those pages back once the burst is over,
 * at most once a second (malloc_trim walks the heap: a few ms for 100 MiB). */
static void trim_after_burst(uint64_t now) {
        if (freed_since_trim < TRIM_AFTER_FREED || now - last_trim_ns < NSEC_PER_SEC)
                return;
        freed_since_trim = 0;
        last_trim_ns = now;
        (void)malloc_trim(0);
}

uint64_t netconn_tick(struct loop *loop, uint64_t now) {
        uint64_t next = UINT64_MAX;
        struct list *pos, *tmp;

        trim_after_burst(now);

        if (!timerqs.next)
                return next;
        list_for_each_safe(pos, tmp, &timerqs) {
                struct netconn_timerq *tq = list_entry(pos, struct netconn_timerq, link);
                if (tq->loop != loop)
                        continue;
                for (;;) {
                        struct netconn *nc = list_first(&tq->conns, struct netconn, timer_link);
                        uint64_t deadline = nc->progress_ns + tq->timeout_ns;
                        if (deadline > now) {
                                next = MIN(next, deadline);
                                break;
                        }
                        if (nc->paused && netconn_unsent(nc) == 0) {
                                /* Waiting on us, not on the peer. A stale `now` must not put
                                 * it before connections that progressed since. */
                                timer_touch(nc, MAX(now, now_ns()));
                                continue;
                        }
                        bool last = nc->timer_link.next == &tq->conns && nc->timer_link.prev == &tq->conns;
                        log_debug("Connection with %s made no progress for %.1f s, closing", nc->peer,
                                  tq->timeout_ns / 1e9);
                        fail(nc, -ETIMEDOUT); /* unlinks it; frees tq with the last one */
                        if (last)
                                break;
                }
        }
        return next;
}

int netconn_start_tls(struct netconn *nc, struct tls_ctx *ctx) {
        int r;

        if (nc->tls || nc->closed)
                return -EINVAL;
        /* OpenSSL reads and writes the socket itself, so it must never block; the plaintext
         * path needs no O_NONBLOCK (MSG_DONTWAIT, io_uring). An outgoing connection gets it
         * once connected: io_uring's connect is left as plaintext has it. */
        if (!nc->connecting && (r = fd_nonblock(nc->fd, true)) < 0)
                return r;
        nc->tls = tls_conn_new(ctx, nc->fd);
        if (!nc->tls)
                return -ENOMEM;
        /* A client on an accepted socket speaks first: its hello goes out now (no callback can
         * run: the handshake cannot finish before the server answers), and the poll that
         * netconn_adopt() armed waits for the answer. A server waits for the hello on that poll;
         * an outgoing connection starts once connected. */
        if (nc->tls->side == TLS_CLIENT && !nc->connecting)
                tls_step(nc);
        return 0;
}

/* ---- listeners ---- */

/* One line for the first refusal, then at most one a minute: a flood must not flood the log. */
static void refused(struct netlistener *l) {
        uint64_t now = now_ns();

        l->n_refused++;
        l->refused_unlogged++;
        if (l->last_log_ns && now - l->last_log_ns < REFUSAL_LOG_INTERVAL_NS)
                return;
        if (!l->last_log_ns)
                log_warning("Refusing new connections to %s: %u are open, the limit (further refusals are "
                            "counted once a minute)", l->what, l->max_open);
        else
                log_warning("Refused %" PRIu64 " connection%s to %s since the last message: %u open is the limit",
                            l->refused_unlogged, l->refused_unlogged == 1 ? "" : "s", l->what, l->max_open);
        l->refused_unlogged = 0;
        l->last_log_ns = now;
}

void netlistener_set_limit(struct netlistener *l, unsigned max, const char *what) {
        l->max_open = max;
        snprintf(l->what, sizeof l->what, "%s", what ? what : "a listener");
}

static void arm_accept(struct netlistener *l) {
        struct io_uring_sqe *sqe = loop_sqe(l->loop, &l->op_accept);
        io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
        l->armed = true;
}

static void on_accept(struct loop_op *op, int res, unsigned flags) {
        struct netlistener *l = container_of(op, struct netlistener, op_accept);

        if (!(flags & IORING_CQE_F_MORE)) {
                l->armed = false;
                if (l->fd >= 0)
                        arm_accept(l);
        }
        if (res < 0)
                return;
        if (l->fd < 0) {
                close(res);
                return;
        }
        if (l->max_open && l->n_open >= l->max_open) {
                close(res);
                refused(l);
                return;
        }
        accepting = l;
        accepting_fd = res;
        l->on_accept(l, res);
        accepting = NULL;
        accepting_fd = -1;
}

int netlistener_open(struct netlistener *l, struct loop *loop, const char *host, int port,
                     void (*cb)(struct netlistener *l, int fd), void *userdata) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
        struct addrinfo *ai = NULL;
        char portstr[16];
        int fd, one = 1, r;

        *l = (struct netlistener){ .loop = loop, .fd = -1, .on_accept = cb, .userdata = userdata };
        l->op_accept.cb = on_accept;
        list_init(&l->conns);
        snprintf(portstr, sizeof portstr, "%d", port);
        r = getaddrinfo(host, portstr, &hints, &ai);
        if (r != 0)
                return -EADDRNOTAVAIL;
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = -errno;
                freeaddrinfo(ai);
                return r;
        }
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
                r = -errno;
                close(fd);
                freeaddrinfo(ai);
                return r;
        }
        freeaddrinfo(ai);
        l->fd = fd;
        arm_accept(l);
        return 0;
}

int net_local_address_towards(const char *host, int port, char **ret) {
        struct addrinfo hints = { .ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV }, *ai = NULL;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char portstr[16], text[INET6_ADDRSTRLEN];
        _cleanup_close_ int fd = -1;
        const void *a;

        snprintf(portstr, sizeof portstr, "%d", port);
        if (getaddrinfo(host, portstr, &hints, &ai) != 0)
                return -EADDRNOTAVAIL;
        fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 || getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
                int r = errno == ENETUNREACH || errno == EHOSTUNREACH ? -EADDRNOTAVAIL : -errno;
                freeaddrinfo(ai);
                return r;
        }
        freeaddrinfo(ai);
        a = ss.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                     : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
        if (!inet_ntop(ss.ss_family, a, text, sizeof text))
                return -errno;
        *ret = strdup(text);
        return *ret ? 0 : -ENOMEM;
}

int netlistener_port(const struct netlistener *l) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;

        if (l->fd < 0 || getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0)
                return -1;
        if (ss.ss_family == AF_INET)
                return ntohs(((struct sockaddr_in *)&ss)->sin_port);
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void netlistener_close(struct netlistener *l) {
        struct list *pos, *tmp;

        /* Its connections may outlive it: they must not count against it any more. */
        if (l->conns.next)
                list_for_each_safe(pos, tmp, &l->conns) {
                        struct netconn *nc = list_entry(pos, struct netconn, listener_link);
                        list_del(&nc->listener_link);
                        nc->listener = NULL;
                }
        l->n_open = 0;
        if (l->fd < 0)
                return;
        if (l->armed) {
                struct io_uring_sqe *sqe = loop_sqe(l->loop, NULL);
                io_uring_prep_cancel(sqe, &l->op_accept, 0);
        }
        close(l->fd);
        l->fd = -1;
}

int net_split_hostport(const char *s, char **ret_host, int *ret_port) {
        const char *colon, *hs = s, *he;
        char *end;
        long port;

        if (!s || !*s)
                return -EINVAL;
        if (*s == '[') {
                he = strchr(s, ']');
                if (!he || he[1] != ':')
                        return -EINVAL;
                hs = s + 1;
                colon = he + 1;
        } else {
                colon = strrchr(s, ':');
                if (!colon || memchr(s, ':', (size_t)(colon - s)))
                        return -EINVAL;
                he = colon;
        }
        if (he == hs)
                return -EINVAL;
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || *end || end == colon + 1 || port < 1 || port > 65535)
                return -EINVAL;
        char *h = strndup(hs, (size_t)(he - hs));
        if (!h)
                return -ENOMEM;
        *ret_host = h;
        *ret_port = (int)port;
        return 0;
}
