/* Buffered TCP connections and listeners on the io_uring loop, for the control plane (worker
 * <-> head), the data connections between workers and the head's REST API. The HTTP proxy has
 * its own, leaner connection code (provided buffers, pipelining); this one favours simplicity:
 * one recv at a time into a growable input buffer, writes appended to an output buffer.
 *
 * Callbacks are never called after netconn_close(). A connection is freed once closed and no
 * io_uring operation refers to it any more. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "util.h"

struct netconn;

/* Immutable bytes shared by many connections (a broadcast): sent without a copy per
 * connection when the connection has nothing else queued. Reference counted. */
struct netblob {
        unsigned refs;
        size_t len;
        char data[];
};
/* Returns a blob holding a copy of data (one reference), or NULL. */
struct netblob *netblob_new(const void *data, size_t len);
void netblob_unref(struct netblob *b);

struct netconn_ops {
        /* Connected (outgoing connections only). */
        void (*on_connect)(struct netconn *nc);
        /* New bytes are at the end of nc->in; consume what was handled with buf_consume(). */
        void (*on_data)(struct netconn *nc);
        /* The connection failed or the peer closed it (err: negative errno, or 0 for EOF). The
         * owner drops its references; the connection frees itself. Not called after
         * netconn_close(). */
        void (*on_close)(struct netconn *nc, int err);
        /* Everything written so far was sent (optional). */
        void (*on_drain)(struct netconn *nc);
};

struct netconn {
        struct loop *loop;
        int fd;
        const struct netconn_ops *ops;
        void *userdata;
        struct buf in;
        size_t in_limit;         /* bytes buffered unconsumed before the connection is dropped */
        size_t out_limit;        /* bytes queued unsent before the connection is dropped */
        char peer[64];           /* "ADDR:PORT", for log lines */

        /* private */
        struct loop_op op_recv, op_send, op_connect, op_close;
        struct buf out, pending;
        struct netblob *blob;      /* being sent before anything in out/pending */
        size_t blob_off;
        unsigned refs;
        bool connecting, recv_armed, sending, closed, close_after_write, in_callback;
};

/* Starts connecting to host:port (numeric or a name, resolved now). Returns 0 and the
 * connection (on_connect or on_close follows), or a negative errno. */
int netconn_connect(struct loop *loop, const char *host, int port, const struct netconn_ops *ops, void *userdata,
                    struct netconn **ret);

/* Wraps an accepted socket and starts reading. Returns 0 or -ENOMEM (the fd is closed). */
int netconn_adopt(struct loop *loop, int fd, const struct netconn_ops *ops, void *userdata, struct netconn **ret);

/* Queues bytes. Returns 0, or -ENOBUFS when out_limit would be passed (the connection is then
 * closed and on_close is called with -ENOBUFS). */
int netconn_write(struct netconn *nc, const void *data, size_t len);
/* Direct access to the output buffer for encoders; call netconn_flush() after. */
struct buf *netconn_outbuf(struct netconn *nc);
/* Queues a shared blob (takes a new reference; copies it when other output is queued).
 * Returns 0 or -ENOBUFS as netconn_write(). */
int netconn_write_blob(struct netconn *nc, struct netblob *b);
void netconn_flush(struct netconn *nc);
size_t netconn_unsent(const struct netconn *nc);

/* Closes now (queued output is dropped), or once queued output is sent when `after_write`. */
void netconn_close(struct netconn *nc, bool after_write);

struct netlistener {
        struct loop *loop;
        int fd;
        struct loop_op op_accept;
        bool armed;
        void (*on_accept)(struct netlistener *l, int fd);
        void *userdata;
};

/* Binds and listens on host:port (port 0: the kernel picks; see netlistener_port()). Returns 0
 * or a negative errno; logs nothing (the caller names what the port is for). */
int netlistener_open(struct netlistener *l, struct loop *loop, const char *host, int port,
                     void (*on_accept)(struct netlistener *l, int fd), void *userdata);
int netlistener_port(const struct netlistener *l);
void netlistener_close(struct netlistener *l);

/* Splits "HOST:PORT" or "[V6]:PORT" into ret_host (malloc'd) and ret_port. Returns 0 or -EINVAL. */
int net_split_hostport(const char *s, char **ret_host, int *ret_port);
