/* TLS 1.3 on netconn connections with OpenSSL 3: the contexts (identity, trust anchor), the
 * OpenSSL calls a connection makes, what the peer's certificate says, and the counters.
 * netconn.c drives the calls from the io_uring loop (see tls-internal.h). */

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "macros.h"
#include "metrics.h"
#include "netconn.h"
#include "tls-internal.h"
#include "tls.h"
#include "util.h"

/* AES-GCM first: the ciphers the kernel's TLS offload takes (and most CPUs accelerate). */
#define CIPHERSUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

struct tls_ctx {
        unsigned refs;          /* atomic: loops of several threads may share a context */
        enum tls_side side;
        bool require_peer_cert;
        /* Guards what a renewal replaces against connections being made on other threads
         * (taken once per connection, never on the data path). */
        pthread_mutex_t lock;
        SSL_CTX *ssl_ctx;       /* for new connections; a connection's SSL keeps its own reference */
        /* What the current SSL_CTX was built from: a renewal rebuilds it with one part changed. */
        char *cert_pem, *key_pem, *ca_pem;
};

/* Process-wide, updated with relaxed atomics (several loops, one counter each, no ordering). */
static struct tls_stats stats;

static void stat_add(uint64_t *counter, uint64_t n) { __atomic_fetch_add(counter, n, __ATOMIC_RELAXED); }

/* ---- contexts ---- */

/* A key in PEM must not be encrypted: refused, never prompted for on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
        (void)buf, (void)size, (void)rwflag, (void)u;
        return -1;
}

/* The reason of the oldest error in OpenSSL's queue (usually the cause, not its consequences),
 * which is cleared. */
static const char *queued_reason(const char *fallback) {
        unsigned long e = ERR_get_error();
        const char *reason = e ? ERR_reason_error_string(e) : NULL;

        ERR_clear_error();
        return reason ? reason : fallback;
}

/* Reading PEM blocks until none is left ends with "no start line": that is not a failure. */
static bool pem_ended_cleanly(void) {
        unsigned long e = ERR_peek_last_error();

        if (e && (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE))
                return false;
        ERR_clear_error();
        return true;
}

/* Returns 0 or a negative errno with *ret_error. */
static int use_identity(SSL_CTX *c, const char *cert_pem, const char *key_pem, char **ret_error) {
        BIO *b = BIO_new_mem_buf(cert_pem, -1);
        EVP_PKEY *key = NULL;
        X509 *x = NULL;
        int r = -EINVAL;

        if (!b)
                return error_set(-ENOMEM, ret_error, "out of memory");
        x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
        if (!x) {
                r = error_set(-EINVAL, ret_error, "no certificate in the PEM: %s", queued_reason("no PEM block"));
                goto out;
        }
        if (SSL_CTX_use_certificate(c, x) != 1) {
                r = error_set(-EINVAL, ret_error, "certificate refused: %s", queued_reason("unknown reason"));
                goto out;
        }
        X509_free(x);
        /* The rest of the chain (intermediates, the CA) is sent after the leaf, as given. */
        while ((x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL))) {
                if (SSL_CTX_add0_chain_cert(c, x) != 1) {
                        r = error_set(-EINVAL, ret_error, "chain certificate refused: %s",
                                      queued_reason("unknown reason"));
                        goto out;
                }
                x = NULL; /* the context owns it */
        }
        if (!pem_ended_cleanly()) {
                r = error_set(-EINVAL, ret_error, "bad certificate chain: %s", queued_reason("unknown reason"));
                goto out;
        }
        BIO_free(b);
        b = BIO_new_mem_buf(key_pem, -1);
        if (!b)
                return error_set(-ENOMEM, ret_error, "out of memory");
        key = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
        if (!key) {
                r = error_set(-EINVAL, ret_error, "bad private key: %s", queued_reason("no PEM block"));
                goto out;
        }
        if (SSL_CTX_use_PrivateKey(c, key) != 1 || SSL_CTX_check_private_key(c) != 1) {
                r = error_set(-EINVAL, ret_error, "%s", queued_reason("the key does not match the certificate"));
                goto out;
        }
        r = 0;
out:
        EVP_PKEY_free(key);
        X509_free(x);
        BIO_free(b);
        return r;
}

/* The anchor: every certificate in ca_pem. Returns 0 or a negative errno with *ret_error. */
static int use_ca(SSL_CTX *c, const char *ca_pem, char **ret_error) {
        X509_STORE *store = X509_STORE_new();
        BIO *b = BIO_new_mem_buf(ca_pem, -1);
        unsigned n = 0;
        X509 *x;
        int r;

        if (!store || !b) {
                r = error_set(-ENOMEM, ret_error, "out of memory");
                goto out;
        }
        while ((x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL))) {
                int ok = X509_STORE_add_cert(store, x); /* takes its own reference */
                X509_free(x);
                if (ok != 1) {
                        r = error_set(-EINVAL, ret_error, "CA certificate refused: %s",
                                      queued_reason("unknown reason"));
                        goto out;
                }
                n++;
        }
        if (!pem_ended_cleanly() || n == 0) {
                r = error_set(-EINVAL, ret_error, "no CA certificate in the PEM: %s", queued_reason("no PEM block"));
                goto out;
        }
        SSL_CTX_set_cert_store(c, store); /* the context owns it */
        store = NULL;
        r = 0;
out:
        X509_STORE_free(store);
        BIO_free(b);
        return r;
}

/* The chain was verified against no anchor here: the owner checks it (a pinned CA hash). */
static int accept_unverified(int preverify_ok, X509_STORE_CTX *x) {
        (void)preverify_ok, (void)x;
        return 1;
}

/* Builds an SSL_CTX from the parts. Returns 0 or a negative errno with *ret_error. */
static int ctx_build(enum tls_side side, bool require_peer_cert, const char *cert_pem, const char *key_pem,
                     const char *ca_pem, SSL_CTX **ret, char **ret_error) {
        SSL_CTX *c;
        int r;

        if (!cert_pem != !key_pem)
                return error_set(-EINVAL, ret_error, "a certificate needs its key, and a key its certificate");
        if (side == TLS_SERVER && !cert_pem)
                return error_set(-EINVAL, ret_error, "a TLS server needs a certificate");
        ERR_clear_error();
        c = SSL_CTX_new(side == TLS_SERVER ? TLS_server_method() : TLS_client_method());
        if (!c)
                return error_set(-ENOMEM, ret_error, "cannot create a TLS context: %s", queued_reason("out of memory"));
        if (SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) != 1 || SSL_CTX_set_ciphersuites(c, CIPHERSUITES) != 1) {
                r = error_set(-EINVAL, ret_error, "TLS 1.3 unavailable: %s", queued_reason("unknown reason"));
                goto fail;
        }
        /* Links are long-lived: no tickets, no session cache. The kernel may take the record
         * layer (kTLS). Partial writes: a write returns after each record, so the loop never
         * waits for a whole buffer; the buffer may move between retries (it is a growable
         * netconn buffer). Idle connections give their record buffers back, as netconn does. */
        SSL_CTX_set_num_tickets(c, 0);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(c, SSL_OP_ENABLE_KTLS | SSL_OP_NO_TICKET |
                                       (side == TLS_SERVER ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
        SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                    SSL_MODE_RELEASE_BUFFERS);
        /* One read() takes every record that arrived, not a header and then a body each. */
        SSL_CTX_set_read_ahead(c, 1);
        if (cert_pem && (r = use_identity(c, cert_pem, key_pem, ret_error)) < 0)
                goto fail;
        if (ca_pem && (r = use_ca(c, ca_pem, ret_error)) < 0)
                goto fail;
        if (side == TLS_SERVER)
                /* A certificate is always asked for; without an anchor it is reported, not checked. */
                SSL_CTX_set_verify(c, SSL_VERIFY_PEER | (require_peer_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                                   ca_pem ? NULL : accept_unverified);
        else
                /* Without an anchor the handshake still requires the server's certificate:
                 * checked once it is done (TLS 1.3 servers always send one anyway). */
                SSL_CTX_set_verify(c, ca_pem ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        *ret = c;
        return 0;
fail:
        SSL_CTX_free(c);
        return r;
}

static void free_key_pem(char *key_pem) {
        if (key_pem)
                OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
}

/* Copies of the PEM texts for a rebuild; *ret NULL for NULL. Returns 0 or -ENOMEM. */
static int dup_pem(const char *pem, char **ret) {
        *ret = pem ? strdup(pem) : NULL;
        return pem && !*ret ? -ENOMEM : 0;
}

int tls_ctx_new(enum tls_side side, const struct tls_config *cfg, struct tls_ctx **ret, char **ret_error) {
        struct tls_ctx *ctx = calloc(1, sizeof *ctx);
        int r;

        if (!ctx)
                return error_set(-ENOMEM, ret_error, "out of memory");
        ctx->refs = 1;
        ctx->side = side;
        pthread_mutex_init(&ctx->lock, NULL);
        ctx->require_peer_cert = side == TLS_SERVER && cfg->require_peer_cert;
        if (dup_pem(cfg->cert_pem, &ctx->cert_pem) < 0 || dup_pem(cfg->key_pem, &ctx->key_pem) < 0 ||
            dup_pem(cfg->ca_pem, &ctx->ca_pem) < 0) {
                r = error_set(-ENOMEM, ret_error, "out of memory");
                goto fail;
        }
        r = ctx_build(side, ctx->require_peer_cert, ctx->cert_pem, ctx->key_pem, ctx->ca_pem, &ctx->ssl_ctx, ret_error);
        if (r < 0)
                goto fail;
        *ret = ctx;
        return 0;
fail:
        tls_ctx_unref(ctx);
        return r;
}

/* Connections made from now on use a context built from the new parts; those made before keep
 * the old one (their SSL holds a reference to it). Called with ctx->lock held. */
static int ctx_replace(struct tls_ctx *ctx, char *cert_pem, char *key_pem, char *ca_pem, char **ret_error) {
        SSL_CTX *c;
        int r = ctx_build(ctx->side, ctx->require_peer_cert, cert_pem, key_pem, ca_pem, &c, ret_error);

        if (r < 0)
                return r;
        SSL_CTX_free(ctx->ssl_ctx);
        ctx->ssl_ctx = c;
        if (cert_pem != ctx->cert_pem) {
                free(ctx->cert_pem);
                free_key_pem(ctx->key_pem);
                ctx->cert_pem = cert_pem;
                ctx->key_pem = key_pem;
        }
        if (ca_pem != ctx->ca_pem) {
                free(ctx->ca_pem);
                ctx->ca_pem = ca_pem;
        }
        return 0;
}

int tls_ctx_set_identity(struct tls_ctx *ctx, const char *cert_pem, const char *key_pem, char **ret_error) {
        char *cert = NULL, *key = NULL;
        int r;

        if (dup_pem(cert_pem, &cert) < 0 || dup_pem(key_pem, &key) < 0)
                r = error_set(-ENOMEM, ret_error, "out of memory");
        else {
                pthread_mutex_lock(&ctx->lock);
                r = ctx_replace(ctx, cert, key, ctx->ca_pem, ret_error);
                pthread_mutex_unlock(&ctx->lock);
        }
        if (r < 0) {
                free(cert);
                free_key_pem(key);
        }
        return r;
}

int tls_ctx_set_ca(struct tls_ctx *ctx, const char *ca_pem, char **ret_error) {
        char *ca = NULL;
        int r;

        if (dup_pem(ca_pem, &ca) < 0)
                r = error_set(-ENOMEM, ret_error, "out of memory");
        else {
                pthread_mutex_lock(&ctx->lock);
                r = ctx_replace(ctx, ctx->cert_pem, ctx->key_pem, ca, ret_error);
                pthread_mutex_unlock(&ctx->lock);
        }
        if (r < 0)
                free(ca);
        return r;
}

struct tls_ctx *tls_ctx_ref(struct tls_ctx *ctx) {
        __atomic_fetch_add(&ctx->refs, 1, __ATOMIC_RELAXED);
        return ctx;
}

void tls_ctx_unref(struct tls_ctx *ctx) {
        /* acq_rel: the last owner sees every other owner's use finished before it frees. */
        if (!ctx || __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        SSL_CTX_free(ctx->ssl_ctx);
        free(ctx->cert_pem);
        free_key_pem(ctx->key_pem);
        free(ctx->ca_pem);
        pthread_mutex_destroy(&ctx->lock);
        free(ctx);
}

/* ---- a connection's OpenSSL calls ---- */

struct netconn_tls *tls_conn_new(struct tls_ctx *ctx, int fd) {
        struct netconn_tls *t = calloc(1, sizeof *t);

        if (!t)
                return NULL;
        ERR_clear_error();
        pthread_mutex_lock(&ctx->lock);
        t->ssl = SSL_new(ctx->ssl_ctx);
        pthread_mutex_unlock(&ctx->lock);
        /* A socket BIO: OpenSSL reads and writes the fd itself, which is what lets it hand the
         * record layer to the kernel. It does not close the fd (netconn does). */
        if (!t->ssl || SSL_set_fd(t->ssl, fd) != 1) {
                ERR_clear_error();
                tls_conn_free(t);
                return NULL;
        }
        t->side = ctx->side;
        t->started = ctx->side == TLS_SERVER; /* waiting for a client's hello is part of it */
        if (ctx->side == TLS_SERVER)
                SSL_set_accept_state(t->ssl);
        else
                SSL_set_connect_state(t->ssl);
        t->recv_events = POLLIN;
        t->send_events = POLLOUT;
        t->start_ns = now_ns();
        return t;
}

void tls_conn_free(struct netconn_tls *t) {
        if (!t)
                return;
        SSL_free(t->ssl);
        free(t);
}

/* Why the handshake or a record failed: OpenSSL's reason and, for a chain that did not
 * verify, the verifier's. */
static void save_ssl_error(struct netconn_tls *t) {
        unsigned long e = ERR_get_error();
        long verify = SSL_get_verify_result(t->ssl);

        if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED &&
            verify != X509_V_OK)
                snprintf(t->error, sizeof t->error, "%s: %s", ERR_reason_error_string(e),
                         X509_verify_cert_error_string(verify));
        else if (e && ERR_reason_error_string(e))
                snprintf(t->error, sizeof t->error, "%s", ERR_reason_error_string(e));
        else
                snprintf(t->error, sizeof t->error, "TLS protocol error");
        ERR_clear_error();
}

/* The peer went away (err 0: its stream ended; -ECONNRESET, -EPIPE: the socket says so). Once
 * the handshake is done that is what a plaintext connection would report; before, a failure. */
static int peer_gone(struct netconn_tls *t, int err) {
        if (t->handshake_done)
                return err;
        if (err == 0)
                snprintf(t->error, sizeof t->error, "connection closed during the handshake");
        else
                snprintf(t->error, sizeof t->error, "connection closed during the handshake (%s)", strerror(-err));
        return err == 0 ? -ECONNRESET : err;
}

/* What the SSL_*() call that just returned ret (with errno saved_errno) means: -EAGAIN with
 * the readiness it waits for in *events, 0 for the end of the peer's stream, or a failure. */
static int classify(struct netconn_tls *t, int ret, int saved_errno, short *events) {
        unsigned long e;

        switch (SSL_get_error(t->ssl, ret)) {
        case SSL_ERROR_WANT_READ:
                *events = POLLIN;
                return -EAGAIN;
        case SSL_ERROR_WANT_WRITE:
                *events = POLLOUT;
                return -EAGAIN;
        case SSL_ERROR_ZERO_RETURN: /* close_notify: we may still send ours */
                return peer_gone(t, 0);
        case SSL_ERROR_SYSCALL:
                t->fatal = true;
                ERR_clear_error();
                if (saved_errno == 0 || saved_errno == ECONNRESET || saved_errno == EPIPE)
                        return peer_gone(t, -saved_errno);
                snprintf(t->error, sizeof t->error, "%s", strerror(saved_errno));
                return -saved_errno;
        case SSL_ERROR_SSL:
                t->fatal = true;
                e = ERR_peek_error();
                /* OpenSSL 3 reports a peer that hung up without close_notify as an error. */
                if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                        ERR_clear_error();
                        return peer_gone(t, 0);
                }
                save_ssl_error(t);
                return -EPROTO;
        default:
                t->fatal = true;
                snprintf(t->error, sizeof t->error, "unexpected TLS state");
                ERR_clear_error();
                return -EPROTO;
        }
}

static int64_t asn1_unix(const ASN1_TIME *at) {
        struct tm tm;

        if (!at || ASN1_TIME_to_tm(at, &tm) != 1)
                return 0;
        return (int64_t)timegm(&tm);
}

/* A subject field as UTF-8. One that does not fit, or hides a NUL, reads as absent rather than
 * cut short: owners compare names exactly. */
static void subject_field(const X509_NAME *n, int nid, char *out, size_t size) {
        unsigned char *s = NULL;
        int i = X509_NAME_get_index_by_NID(n, nid, -1), len;

        out[0] = 0;
        if (i < 0)
                return;
        len = ASN1_STRING_to_UTF8(&s, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, i)));
        if (len >= 0 && (size_t)len < size && !memchr(s, 0, (size_t)len)) {
                memcpy(out, s, (size_t)len);
                out[len] = 0;
        }
        OPENSSL_free(s);
}

static void peer_fill(struct tls_peer *p, X509 *x) {
        const X509_NAME *n = X509_get_subject_name(x);
        uint64_t serial;

        p->has_cert = true;
        subject_field(n, NID_commonName, p->name, sizeof p->name);
        subject_field(n, NID_organizationalUnitName, p->unit, sizeof p->unit);
        if (ASN1_INTEGER_get_uint64(&serial, X509_get0_serialNumber(x)) == 1)
                p->serial = serial;
        p->not_before = asn1_unix(X509_get0_notBefore(x));
        p->not_after = asn1_unix(X509_get0_notAfter(x));
        ERR_clear_error(); /* a serial wider than 64 bits leaves an error behind */
}

static int handshake_done(struct netconn_tls *t) {
        X509 *x = SSL_get0_peer_certificate(t->ssl);

        if (!x && t->side == TLS_CLIENT) {
                /* Only possible without an anchor (verification would have failed): a server
                 * must still prove an identity the owner can check. */
                t->fatal = true;
                snprintf(t->error, sizeof t->error, "the server presented no certificate");
                return -EPROTO;
        }
        if (x)
                peer_fill(&t->peer, x);
        if (BIO_get_ktls_send(SSL_get_wbio(t->ssl)))
                t->ktls |= TLS_KTLS_TX;
        if (BIO_get_ktls_recv(SSL_get_rbio(t->ssl)))
                t->ktls |= TLS_KTLS_RX;
        t->handshake_done = true;
        t->recv_events = POLLIN;
        stat_add(&stats.handshakes, 1);
        stat_add(&stats.handshake_ns, now_ns() - t->start_ns);
        if (t->ktls & TLS_KTLS_TX)
                stat_add(&stats.ktls_tx, 1);
        if (t->ktls & TLS_KTLS_RX)
                stat_add(&stats.ktls_rx, 1);
        return 1;
}

static void count_failure(struct netconn_tls *t) {
        if (t->failure_counted)
                return;
        t->failure_counted = true;
        stat_add(&stats.failures, 1);
}

int tls_conn_handshake(struct netconn_tls *t) {
        int ret, r;

        t->started = true;
        ERR_clear_error(); /* errors left by others must not be read as ours */
        errno = 0;
        ret = SSL_do_handshake(t->ssl);
        r = ret == 1 ? handshake_done(t) : classify(t, ret, errno, &t->recv_events);
        if (r < 0 && r != -EAGAIN)
                count_failure(t);
        return r;
}

int tls_conn_read(struct netconn_tls *t, void *buf, size_t len, size_t *ret_n) {
        size_t n = 0;

        ERR_clear_error();
        errno = 0;
        if (SSL_read_ex(t->ssl, buf, len, &n) == 1) {
                t->recv_events = POLLIN;
                t->read_starved = false;
                *ret_n = n;
                return 1;
        }
        *ret_n = 0;
        int r = classify(t, 0, errno, &t->recv_events);
        t->read_starved = r == -EAGAIN;
        return r;
}

int tls_conn_write(struct netconn_tls *t, const void *buf, size_t len, size_t *ret_n) {
        size_t n = 0;
        int r;

        ERR_clear_error();
        errno = 0;
        if (SSL_write_ex(t->ssl, buf, len, &n) == 1) {
                t->send_events = POLLOUT;
                *ret_n = n;
                return 1;
        }
        *ret_n = 0;
        r = classify(t, 0, errno, &t->send_events);
        return r == 0 ? -EPIPE : r;
}

bool tls_conn_buffered(const struct netconn_tls *t) { return SSL_has_pending(t->ssl); }

bool tls_conn_has_pending(const struct netconn_tls *t) {
        /* Decrypted bytes, or (read ahead) whole records read from the socket but not yet
         * decrypted: a read stopped by a budget leaves them. What is left after OpenSSL asked for
         * more is part of a record, which only bytes a poll sees can complete. */
        return SSL_pending(t->ssl) > 0 || (!t->read_starved && SSL_has_pending(t->ssl));
}

bool tls_conn_moved(struct netconn_tls *t) {
        uint64_t moved = BIO_number_read(SSL_get_rbio(t->ssl)) + BIO_number_written(SSL_get_wbio(t->ssl));

        if (moved == t->moved)
                return false;
        t->moved = moved;
        return true;
}

void tls_conn_shutdown(struct netconn_tls *t) {
        if (!t || !t->handshake_done || t->fatal)
                return;
        ERR_clear_error();
        (void)SSL_shutdown(t->ssl); /* sends close_notify if the socket takes it; we do not wait for the peer's */
        ERR_clear_error();
}

void tls_conn_failed_early(struct netconn_tls *t, int err) {
        if (!t || t->handshake_done)
                return;
        if (!t->error[0]) {
                if (err == -ETIMEDOUT)
                        snprintf(t->error, sizeof t->error, "the handshake timed out");
                else if (err == 0 || err == -ECONNRESET || err == -EPIPE)
                        snprintf(t->error, sizeof t->error, "connection closed during the handshake");
                else
                        snprintf(t->error, sizeof t->error, "%s", strerror(-err));
        }
        if (t->started)
                count_failure(t);
}

/* ---- what owners ask ---- */

bool netconn_is_tls(const struct netconn *nc) { return nc->tls != NULL; }

const struct tls_peer *netconn_tls_peer(const struct netconn *nc) {
        return nc->tls && nc->tls->handshake_done ? &nc->tls->peer : NULL;
}

const char *netconn_tls_error(const struct netconn *nc) {
        return nc->tls && nc->tls->error[0] ? nc->tls->error : NULL;
}

unsigned netconn_tls_ktls(const struct netconn *nc) { return nc->tls ? nc->tls->ktls : 0; }

char *netconn_tls_peer_chain_pem(const struct netconn *nc) {
        const struct netconn_tls *t = nc->tls;
        STACK_OF(X509) *chain;
        char *pem = NULL, *data;
        BIO *b;
        long len;
        bool ok = true;

        if (!t || !t->handshake_done)
                return NULL;
        chain = SSL_get_peer_cert_chain(t->ssl);
        b = BIO_new(BIO_s_mem());
        if (!b)
                return NULL;
        /* A client's chain starts with the server's leaf; a server's lacks the client's. */
        if (t->side == TLS_SERVER && SSL_get0_peer_certificate(t->ssl))
                ok = PEM_write_bio_X509(b, SSL_get0_peer_certificate(t->ssl)) == 1;
        for (int i = 0; ok && chain && i < sk_X509_num(chain); i++)
                ok = PEM_write_bio_X509(b, sk_X509_value(chain, i)) == 1;
        len = BIO_get_mem_data(b, &data);
        if (ok && len > 0)
                pem = strndup(data, (size_t)len);
        BIO_free(b);
        ERR_clear_error();
        return pem;
}

void tls_stats_get(struct tls_stats *ret) {
        ret->handshakes = __atomic_load_n(&stats.handshakes, __ATOMIC_RELAXED);
        ret->failures = __atomic_load_n(&stats.failures, __ATOMIC_RELAXED);
        ret->handshake_ns = __atomic_load_n(&stats.handshake_ns, __ATOMIC_RELAXED);
        ret->ktls_tx = __atomic_load_n(&stats.ktls_tx, __ATOMIC_RELAXED);
        ret->ktls_rx = __atomic_load_n(&stats.ktls_rx, __ATOMIC_RELAXED);
}

const char *tls_mode_name(unsigned ktls) {
        switch (ktls & (TLS_KTLS_TX | TLS_KTLS_RX)) {
        case TLS_KTLS_TX | TLS_KTLS_RX:
                return "kTLS (tx+rx)";
        case TLS_KTLS_TX:
                return "kTLS (tx only)";
        case TLS_KTLS_RX:
                return "kTLS (rx only)";
        default:
                return "user-space TLS";
        }
}

int tls_render_metrics(struct buf *b, bool tls) {
        struct tls_stats st = {};
        const char *tx[] = { "direction", "tx", NULL }, *rx[] = { "direction", "rx", NULL };
        int r;

        if (tls)
                tls_stats_get(&st);
        if ((r = metrics_family(b, "serve_transport_tls", METRICS_GAUGE,
                                "1 when links between nodes use mutually authenticated TLS, 0 for transport: plaintext")) < 0 ||
            (r = metrics_sample(b, "serve_transport_tls", NULL, tls)) < 0)
                return r;
        if (!tls)
                return 0;
        if ((r = metrics_family(b, "serve_tls_handshakes_total", METRICS_COUNTER, "Completed TLS handshakes")) < 0 ||
            (r = metrics_sample(b, "serve_tls_handshakes_total", NULL, (double)st.handshakes)) < 0 ||
            (r = metrics_family(b, "serve_tls_handshake_failures_total", METRICS_COUNTER,
                                "TLS handshakes that failed: no, foreign, expired or invalid certificate")) < 0 ||
            (r = metrics_sample(b, "serve_tls_handshake_failures_total", NULL, (double)st.failures)) < 0 ||
            (r = metrics_family(b, "serve_tls_handshake_seconds_total", METRICS_COUNTER,
                                "Time spent in completed TLS handshakes")) < 0 ||
            (r = metrics_sample(b, "serve_tls_handshake_seconds_total", NULL, (double)st.handshake_ns / 1e9)) < 0 ||
            (r = metrics_family(b, "serve_tls_ktls_handshakes_total", METRICS_COUNTER,
                                "Completed handshakes whose link the kernel encrypts (kTLS), by direction")) < 0 ||
            (r = metrics_sample(b, "serve_tls_ktls_handshakes_total", tx, (double)st.ktls_tx)) < 0 ||
            (r = metrics_sample(b, "serve_tls_ktls_handshakes_total", rx, (double)st.ktls_rx)) < 0)
                return r;
        return 0;
}

int netconn_connect_tls(struct loop *loop, const char *host, int port, const struct netconn_ops *ops, void *userdata,
                        struct tls_ctx *ctx, uint64_t timeout_ns, struct netconn **ret) {
        struct netconn *nc;
        int r = netconn_connect(loop, host, port, ops, userdata, &nc);

        if (r < 0)
                return r;
        if (ctx)
                r = netconn_start_tls(nc, ctx);
        if (r >= 0)
                r = netconn_set_idle_timeout(nc, timeout_ns);
        if (r < 0) {
                netconn_close(nc, false);
                return r;
        }
        *ret = nc;
        return 0;
}
