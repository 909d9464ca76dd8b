/* The seam between netconn.c and tls.c: netconn.c decides when to read, write and poll (as for
 * plaintext connections); tls.c makes the OpenSSL calls and says what the socket must become
 * (readable or writable) before the call that could not go on is tried again. Nothing here is
 * for other modules: they use tls.h. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls.h"

struct ssl_st;

/* The TLS state of one netconn (nc->tls), freed with the connection. */
struct netconn_tls {
        struct ssl_st *ssl;
        enum tls_side side;
        bool started;           /* the handshake began (a failure from here on counts as one) */
        bool handshake_done;
        bool fatal;             /* OpenSSL reported a fatal error: no close_notify may follow */
        bool failure_counted;
        bool read_starved;      /* the last read wanted more bytes than the socket had */
        /* What the connection's read (op_recv) and write (op_send) slots poll for next: POLLIN,
         * or POLLOUT when OpenSSL must write before it can read (a KeyUpdate's answer) or, for
         * writes, POLLIN when it must read first. The handshake runs on the read slot. */
        short recv_events, send_events;
        unsigned ktls;          /* TLS_KTLS_TX | TLS_KTLS_RX, known once the handshake is done */
        uint64_t start_ns;      /* netconn_start_tls() */
        uint64_t moved;         /* socket bytes read + written when last looked at */
        struct tls_peer peer;
        char error[160];
};

/* A connection's TLS state on the socket fd, for ctx's side. Returns NULL (out of memory). */
struct netconn_tls *tls_conn_new(struct tls_ctx *ctx, int fd);
void tls_conn_free(struct netconn_tls *t); /* accepts NULL */

/* One more handshake step. Returns 1 when it is done (t->peer, t->ktls and the stats are set),
 * -EAGAIN to be called again once the socket is ready for t->recv_events, or a negative errno
 * when it failed (-EPROTO, or the socket's: t->error says why, the failure is counted). */
int tls_conn_handshake(struct netconn_tls *t);

/* Decrypts up to len bytes into buf. Returns 1 with *ret_n > 0, 0 at the end of the peer's
 * stream, -EAGAIN (wait for t->recv_events), or a negative errno (t->error says why). */
int tls_conn_read(struct netconn_tls *t, void *buf, size_t len, size_t *ret_n);

/* Encrypts and sends from buf (len > 0). Returns 1 with *ret_n > 0 (maybe less than len: one
 * record at a time), -EAGAIN (wait for t->send_events, then call again with the same bytes at
 * the start of buf, which may have moved), or a negative errno (t->error says why). */
int tls_conn_write(struct netconn_tls *t, const void *buf, size_t len, size_t *ret_n);

/* Whether OpenSSL holds received bytes not handed out yet: a poll on the socket would not
 * report them. */
bool tls_conn_has_pending(const struct netconn_tls *t);
/* OpenSSL holds bytes read from the socket (decrypted or not): reading on needs no poll. */
bool tls_conn_buffered(const struct netconn_tls *t);

/* Whether bytes went through the socket since the last call (progress, for the timeout, even
 * when no application byte came of it: a handshake, a record still incomplete). */
bool tls_conn_moved(struct netconn_tls *t);

/* The connection closes: a close_notify, best effort (one call, no waiting, nothing after a
 * fatal error or before the handshake finished). */
void tls_conn_shutdown(struct netconn_tls *t);

/* The connection failed with err before the handshake finished, for a reason of its own (the
 * progress timeout, the peer leaving, a socket error): counted once as a failed handshake if
 * it had begun, and said in t->error unless a reason is there already. */
void tls_conn_failed_early(struct netconn_tls *t, int err);
