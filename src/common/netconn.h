/* Buffered TCP connections and listeners on the io_uring loop, for the control plane (worker
 * <-> head), the data connections between workers and the head's REST API. The HTTP proxy has
 * its own, leaner connection code (provided buffers, pipelining); this one favours simplicity:
 * reads go to a growable input buffer, writes are appended to an output buffer.
 *
 * Callbacks run only from the loop, never inside a netconn_* call. A failure found inside a call
 * (netconn_write() or netconn_flush() passing out_limit, netconn_tick() finding a timeout)
 * closes the connection at once (later writes return -EPIPE) and its on_close runs from the
 * loop after the current batch of completions; so a caller may keep using its own state after
 * any netconn_* call, and an owner may free itself in on_close. Callbacks are never called after
 * netconn_close() (which also cancels an on_close not yet run).
 *
 * Memory: an idle connection holds no receive buffer. It waits for readability without one
 * (a poll), then reads what arrived; the buffer is freed once on_data has consumed everything,
 * and output buffers grown by a burst are freed once sent.
 *
 * A connection is freed once closed and no io_uring operation or pending callback refers to it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "util.h"

struct netconn;
struct netconn_timerq;
struct netconn_tls;
struct netlistener;

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
        /* New bytes are at the end of nc->in; consume what was handled with buf_consume(). nc->in
         * is freed when it is empty after this returns: keep no pointer into it. */
        void (*on_data)(struct netconn *nc);
        /* The connection failed or the peer closed it (err: negative errno, or 0 for EOF;
         * -ETIMEDOUT for the progress timeout, -ENOBUFS past out_limit, -EMSGSIZE past in_limit).
         * Runs from the loop. The owner drops its references (it may free itself); the connection
         * frees itself. Not called after netconn_close(). */
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

        uint64_t idle_timeout_ns; /* read-only: set with netconn_set_idle_timeout() */

        /* private */
        struct loop_op op_recv, op_send, op_connect, op_close;
        struct buf out, pending;
        struct netblob *blob;      /* being sent before anything in out/pending */
        size_t blob_off;
        unsigned refs;
        bool connecting, recv_armed, sending, closed, close_after_write, in_callback, paused;
        bool close_pending;        /* on_close(close_err) waits in the loop's deferred queue */
        int close_err;
        struct loop_deferred deferred;
        struct loop_deferred send_deferred; /* TLS: the write after this batch of completions */
        struct netconn_timerq *timerq; /* the FIFO of connections sharing its idle timeout */
        struct list timer_link;
        uint64_t progress_ns;      /* last byte received or sent */
        struct netlistener *listener; /* counts this connection against its limit */
        struct list listener_link;
        struct netconn_tls *tls;   /* NULL for plaintext; see tls.h, netconn_start_tls() */
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

/* Closes now (queued output is dropped), or once queued output is sent when `after_write`.
 * No callback runs after this, not even an on_close already due. Accepts NULL. */
void netconn_close(struct netconn *nc, bool after_write);

/* Stops (paused) or resumes reading from the peer: backpressure for an owner whose budget for
 * this peer is full. The peer's bytes then wait in the kernel, and TCP slows the peer down.
 * While paused, the progress timeout counts only queued output: a paused connection with nothing
 * to send waits on us, not on the peer. */
void netconn_pause(struct netconn *nc, bool paused);

/* The progress timeout: the connection is closed with on_close(-ETIMEDOUT) once, for
 * timeout_ns, no byte arrived and no queued byte was sent (a peer that neither talks nor reads;
 * a connect that does not complete). 0 turns it off. It is checked by netconn_tick(), so it
 * fires at the first tick after it passed. Returns 0 or -ENOMEM. */
int netconn_set_idle_timeout(struct netconn *nc, uint64_t timeout_ns);

/* Closes the connections of `loop` whose progress timeout passed at `now` (CLOCK_MONOTONIC ns,
 * as now_ns()); their on_close(-ETIMEDOUT) runs from the loop. Owners call it from their
 * periodic tick. After a burst of closed connections (64 or more since), it also gives the
 * memory they held back to the system (malloc_trim), at most once a second. Returns the earliest deadline still pending, or UINT64_MAX when none.
 * Cost: connections with the same timeout on a loop sit in one FIFO ordered by last progress;
 * progress moves a connection to the tail (O(1) per event, one clock read), and a tick looks
 * only at the heads that expired. */
uint64_t netconn_tick(struct loop *loop, uint64_t now);

struct netlistener {
        struct loop *loop;
        int fd;
        struct loop_op op_accept;
        bool armed;
        void (*on_accept)(struct netlistener *l, int fd);
        void *userdata;
        unsigned n_open;         /* read-only: connections adopted from on_accept, not closed */
        uint64_t n_refused;      /* read-only: connections closed at once for the limit */

        /* private */
        unsigned max_open;
        char what[48];
        struct list conns;       /* netconn.listener_link */
        uint64_t refused_unlogged, last_log_ns;
};

/* Binds and listens on host:port (port 0: the kernel picks; see netlistener_port()). Returns 0
 * or a negative errno; logs nothing (the caller names what the port is for). */
int netlistener_open(struct netlistener *l, struct loop *loop, const char *host, int port,
                     void (*on_accept)(struct netlistener *l, int fd), void *userdata);
int netlistener_port(const struct netlistener *l);
/* Caps the connections open at once: beyond `max`, a new connection is closed as soon as it is
 * accepted (on_accept is not called). The first refusal is logged, then at most one line a
 * minute with the count; `what` names the port in them ("the REST API"). A connection counts
 * when the owner wraps it with netconn_adopt() inside on_accept, and stops counting when it
 * closes. max 0: no limit. Call after netlistener_open(). */
void netlistener_set_limit(struct netlistener *l, unsigned max, const char *what);
void netlistener_close(struct netlistener *l);

/* Splits "HOST:PORT" or "[V6]:PORT" into ret_host (malloc'd) and ret_port. Returns 0 or -EINVAL. */
int net_split_hostport(const char *s, char **ret_host, int *ret_port);

/* The local address the kernel would send from to reach host:port (a UDP connect: no packet is
 * sent), as text (malloc'd): what a node on an unknown network advertises. Returns 0, or
 * -EADDRNOTAVAIL (host does not resolve, or no route to it) or another negative errno. */
int net_local_address_towards(const char *host, int port, char **ret);
