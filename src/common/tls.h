/* TLS 1.3 for netconn connections (OpenSSL 3): the links between nodes are mutually
 * authenticated with certificates the cluster's CA issued (see src/cluster/pki.h).
 *
 * A tls_ctx holds our identity (certificate chain and key) and the trust anchor (the CA
 * certificate). netconn_start_tls() turns a netconn into a TLS connection driven by the same
 * io_uring loop: the socket stays non-blocking, readiness comes from io_uring polls, OpenSSL
 * reads and writes the socket itself (so it can hand the record layer to the kernel: kTLS,
 * where the kernel offers the "tls" ULP; otherwise the encryption runs in user space, and
 * nothing else changes). Only TLS 1.3; no session tickets (a link is long-lived).
 *
 * This layer knows nothing of nodes or roles: it verifies the chain against the anchor and
 * reports what the peer's certificate says (struct tls_peer); the owner decides whether that
 * peer may talk to it, in on_connect, before any application byte is read. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct netconn;
struct tls_ctx;

enum tls_side { TLS_CLIENT, TLS_SERVER };

struct tls_config {
        /* Our certificate chain (leaf first, PEM) and its private key (PEM). Both NULL: no
         * certificate (a client that is joining). */
        const char *cert_pem, *key_pem;
        /* The trust anchor (PEM, one or more certificates). NULL: the peer's chain is not
         * verified by this layer (a worker bootstrapping from a pinned CA hash checks it
         * itself with netconn_tls_peer_chain_pem()); a peer certificate is still required of a server. */
        const char *ca_pem;
        /* Server side: refuse a client that presents no certificate (the data port). false:
         * a certificate is optional, but verified when present (the control port, where
         * joining nodes have none yet). Ignored for clients (a server must always present one). */
        bool require_peer_cert;
};

/* Returns 0 and a context (one reference), or a negative errno with *ret_error (malloc'd,
 * OpenSSL's reason, e.g. "key values mismatch"). */
int tls_ctx_new(enum tls_side side, const struct tls_config *cfg, struct tls_ctx **ret, char **ret_error);
/* Replaces our certificate and key (renewal): connections made from now on present the new
 * ones; established ones are unaffected. Returns 0 or a negative errno with *ret_error. */
int tls_ctx_set_identity(struct tls_ctx *ctx, const char *cert_pem, const char *key_pem, char **ret_error);
/* Replaces the trust anchor for connections made from now on. */
int tls_ctx_set_ca(struct tls_ctx *ctx, const char *ca_pem, char **ret_error);
struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx);
void tls_ctx_unref(struct tls_ctx *ctx); /* accepts NULL */

/* What the verified peer certificate says. */
struct tls_peer {
        bool has_cert;          /* the peer presented a certificate (verified, unless ca_pem was NULL) */
        char name[256];         /* subject commonName ("" when absent) */
        char unit[64];          /* subject organizationalUnitName ("" when absent) */
        uint64_t serial;        /* the certificate's serial number (0 if it does not fit 64 bits) */
        int64_t not_before, not_after; /* validity, Unix seconds */
};

/* Starts TLS on nc: at once for an adopted (server) connection, after the TCP connect for an
 * outgoing (client) one; call right after netconn_adopt()/netconn_connect(), before the loop
 * runs. From then on on_connect runs once the handshake succeeded, on both sides (the owner
 * checks netconn_tls_peer() there and may close); on_data sees only decrypted bytes and
 * netconn_write() takes plaintext. A failed handshake closes the connection: on_close(-EPROTO)
 * (or the socket's errno), with netconn_tls_error() saying why. The handshake is bounded by
 * the connection's progress timeout (netconn_set_idle_timeout()), which the owner sets.
 * Returns 0 or a negative errno (nothing was changed). */
int netconn_start_tls(struct netconn *nc, struct tls_ctx *ctx);

/* netconn_connect() then netconn_start_tls() with ctx (NULL: a plaintext connection), and the
 * progress timeout set to timeout_ns, so a connect or handshake that hangs ends (the owner may
 * set another once on_connect ran). On failure nothing is left open. Returns 0 and *ret, or a
 * negative errno. */
struct netconn_ops;
int netconn_connect_tls(struct loop *loop, const char *host, int port, const struct netconn_ops *ops, void *userdata,
                        struct tls_ctx *ctx, uint64_t timeout_ns, struct netconn **ret);

bool netconn_is_tls(const struct netconn *nc);
/* The peer's certificate (valid from on_connect on). NULL for a plaintext connection or
 * before the handshake completed. */
const struct tls_peer *netconn_tls_peer(const struct netconn *nc);
/* The peer's certificate chain as sent (leaf first, PEM, malloc'd), or NULL. For a client
 * that verifies the server against a pinned CA hash. */
char *netconn_tls_peer_chain_pem(const struct netconn *nc);
/* Why the handshake failed ("certificate verify failed: unable to get local issuer
 * certificate", "peer did not return a certificate", "wrong version number"...), or NULL. */
const char *netconn_tls_error(const struct netconn *nc);

/* Whether the kernel carries the record layer of this connection (kTLS) per direction. */
#define TLS_KTLS_TX 1u
#define TLS_KTLS_RX 2u
unsigned netconn_tls_ktls(const struct netconn *nc);

/* Process-wide counters for logs and /metrics (updated from the loops that own connections). */
struct tls_stats {
        uint64_t handshakes;        /* completed */
        uint64_t failures;          /* handshakes that failed */
        uint64_t handshake_ns;      /* total time of completed handshakes (start_tls to done) */
        uint64_t ktls_tx, ktls_rx;  /* completed handshakes with kTLS in that direction */
};
void tls_stats_get(struct tls_stats *ret);
/* The TLS families of a daemon's /metrics: serve_transport_tls (1, or 0 with tls false: the
 * plaintext opt-out), serve_tls_handshakes_total, serve_tls_handshake_failures_total,
 * serve_tls_handshake_seconds_total and serve_tls_ktls_handshakes_total{direction="tx"|"rx"}
 * (handshakes whose link the kernel encrypts: kTLS in use). Returns 0 or the error of
 * metrics.h's renderers. */
struct buf;
int tls_render_metrics(struct buf *b, bool tls);
/* "kTLS (tx+rx)", "kTLS (tx only)" or "user-space TLS": for one log line per link. */
const char *tls_mode_name(unsigned ktls);
