#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "macros.h"
#include "netconn.h"

#define RECV_CHUNK (64u * 1024)

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

static void maybe_free(struct netconn *nc) {
        if (!nc->closed || nc->refs > 0 || nc->in_callback)
                return;
        netblob_unref(nc->blob);
        buf_free(&nc->in);
        buf_free(&nc->out);
        buf_free(&nc->pending);
        free(nc);
}

static void do_close(struct netconn *nc) {
        if (nc->fd >= 0) {
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

/* The connection died under us: tell the owner once. */
static void fail(struct netconn *nc, int err) {
        if (nc->closed)
                return;
        do_close(nc);
        if (nc->ops->on_close) {
                nc->in_callback = true;
                nc->ops->on_close(nc, err);
                nc->in_callback = false;
        }
}

static void on_close_done(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_close);
        nc->refs--;
        maybe_free(nc);
}

static void start_send(struct netconn *nc) {
        if (nc->sending || nc->closed || nc->connecting)
                return;
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

static void on_send(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_send);

        nc->refs--;
        nc->sending = false;
        if (nc->closed) {
                maybe_free(nc);
                return;
        }
        if (res <= 0) {
                fail(nc, res < 0 ? res : -EPIPE);
                maybe_free(nc);
                return;
        }
        if (nc->blob) {
                nc->blob_off += (size_t)res;
                if (nc->blob_off == nc->blob->len) {
                        netblob_unref(nc->blob);
                        nc->blob = NULL;
                        nc->blob_off = 0;
                }
        } else
                buf_consume(&nc->out, (size_t)res);
        /* A burst (a broadcast, a big response) must not stay reserved for an idle connection. */
        if (nc->out.len == 0 && nc->out.cap > 64 * 1024)
                buf_free(&nc->out);
        if (nc->pending.len == 0 && nc->pending.cap > 64 * 1024)
                buf_free(&nc->pending);
        start_send(nc);
        if (!nc->closed && !nc->sending && nc->ops->on_drain) {
                nc->in_callback = true;
                nc->ops->on_drain(nc);
                nc->in_callback = false;
        }
        maybe_free(nc);
}

static void on_recv(struct loop_op *op, int res, unsigned flags) {
        struct netconn *nc = container_of(op, struct netconn, op_recv);

        nc->refs--;
        nc->recv_armed = false;
        if (nc->closed) {
                maybe_free(nc);
                return;
        }
        if (res <= 0) {
                fail(nc, res);
                maybe_free(nc);
                return;
        }
        nc->in.len += (size_t)res;
        nc->in_callback = true;
        nc->ops->on_data(nc);
        nc->in_callback = false;
        if (!nc->closed && nc->in.len > nc->in_limit) {
                fail(nc, -EMSGSIZE);
        }
        if (!nc->closed)
                arm_recv(nc);
        maybe_free(nc);
}

static void arm_recv(struct netconn *nc) {
        if (nc->recv_armed || nc->closed || nc->connecting)
                return;
        if (buf_reserve(&nc->in, RECV_CHUNK, nc->in_limit + RECV_CHUNK) < 0) {
                fail(nc, -ENOMEM);
                return;
        }
        if (nc->in.len == 0 && nc->in.cap > 4 * RECV_CHUNK) { /* give back what a burst took */
                buf_free(&nc->in);
                if (buf_reserve(&nc->in, RECV_CHUNK, nc->in_limit + RECV_CHUNK) < 0) {
                        fail(nc, -ENOMEM);
                        return;
                }
        }
        struct io_uring_sqe *sqe = loop_sqe(nc->loop, &nc->op_recv);
        io_uring_prep_recv(sqe, nc->fd, nc->in.data + nc->in.len, nc->in.cap - nc->in.len, 0);
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
        nc->op_recv.cb = on_recv;
        nc->op_send.cb = on_send;
        nc->op_connect.cb = on_connect;
        nc->op_close.cb = on_close_done;
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
        if (!nc || nc->closed)
                return;
        if (after_write && (nc->sending || nc->blob || nc->out.len || nc->pending.len || nc->connecting)) {
                nc->close_after_write = true;
                start_send(nc);
                return;
        }
        do_close(nc);
        maybe_free(nc);
}

/* ---- listeners ---- */

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
        l->on_accept(l, res);
}

int netlistener_open(struct netlistener *l, struct loop *loop, const char *host, int port,
                     void (*cb)(struct netlistener *l, int fd), void *userdata) {
        struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
        struct addrinfo *ai = NULL;
        char portstr[16];
        int fd, one = 1, r;

        *l = (struct netlistener){ .loop = loop, .fd = -1, .on_accept = cb, .userdata = userdata };
        l->op_accept.cb = on_accept;
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
