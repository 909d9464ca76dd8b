/* TLS on netconn: mutual authentication, what a refused peer and the owner see, bulk data both
 * ways, limits, pause, the progress timeout, close during the handshake, renewal, counters.
 * Certificates are made here with libcrypto (two unrelated CAs, leaves, a self-signed one);
 * sockets are loopback TCP; the test waits for the loop's completions, never for time. */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "loop.h"
#include "macros.h"
#include "netconn.h"
#include "tap.h"
#include "tls.h"

static struct loop loop;

/* Runs the loop until cond holds (bounded: a broken build fails instead of hanging). */
#define RUN_UNTIL(cond)                                                           \
        ({                                                                        \
                for (int _i = 0; !(cond) && _i < 400; _i++)                       \
                        loop_run_once(&loop, 50 * NSEC_PER_MSEC);                 \
                (cond);                                                           \
        })

/* For "nothing happens": a few rounds of whatever is due. */
static void run_briefly(void) {
        for (int i = 0; i < 10; i++)
                loop_run_once(&loop, 10 * NSEC_PER_MSEC);
}

/* ---- certificates ---- */

struct cert {
        X509 *x;
        EVP_PKEY *key;
        char *pem, *key_pem;
};

static const time_t NOT_AFTER = 2000000000; /* 2033-05-18 */

static char *pem_of_cert(X509 *x) {
        BIO *b = BIO_new(BIO_s_mem());
        char *data, *s;

        if (!b || PEM_write_bio_X509(b, x) != 1)
                abort();
        long n = BIO_get_mem_data(b, &data);
        s = strndup(data, (size_t)n);
        BIO_free(b);
        return s;
}

static char *pem_of_key(EVP_PKEY *k) {
        BIO *b = BIO_new(BIO_s_mem());
        char *data, *s;

        if (!b || PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) != 1)
                abort();
        long n = BIO_get_mem_data(b, &data);
        s = strndup(data, (size_t)n);
        BIO_free(b);
        return s;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
        X509V3_CTX v3;
        X509_EXTENSION *e;

        X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
        e = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
        if (!e || X509_add_ext(x, e, -1) != 1)
                abort();
        X509_EXTENSION_free(e);
}

/* A certificate for CN/OU signed by issuer (NULL: by itself). */
static struct cert make_cert(const char *cn, const char *ou, uint64_t serial, const struct cert *issuer, bool ca) {
        struct cert c = { .x = X509_new(), .key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256") };
        X509_NAME *name;

        if (!c.x || !c.key)
                abort();
        X509_set_version(c.x, X509_VERSION_3);
        ASN1_INTEGER_set_uint64(X509_get_serialNumber(c.x), serial);
        X509_gmtime_adj(X509_getm_notBefore(c.x), -3600);
        ASN1_TIME_set(X509_getm_notAfter(c.x), NOT_AFTER);
        name = X509_get_subject_name(c.x);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
        if (ou)
                X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8, (const unsigned char *)ou, -1, -1, 0);
        X509_set_issuer_name(c.x, issuer ? X509_get_subject_name(issuer->x) : name);
        X509_set_pubkey(c.x, c.key);
        add_ext(c.x, issuer ? issuer->x : c.x, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
        add_ext(c.x, issuer ? issuer->x : c.x, NID_key_usage,
                ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
        add_ext(c.x, issuer ? issuer->x : c.x, NID_subject_key_identifier, "hash");
        if (X509_sign(c.x, issuer ? issuer->key : c.key, EVP_sha256()) <= 0)
                abort();
        c.pem = pem_of_cert(c.x);
        c.key_pem = pem_of_key(c.key);
        return c;
}

static void cert_free(struct cert *c) {
        X509_free(c->x);
        EVP_PKEY_free(c->key);
        free(c->pem);
        free(c->key_pem);
}

static char *concat(const char *a, const char *b) {
        char *s = malloc(strlen(a) + strlen(b) + 1);
        if (!s)
                abort();
        return strcat(strcpy(s, a), b);
}

static struct cert ca, ca2, server_cert, server2_cert, client_cert, foreign_client, self_signed;
static char *server_chain; /* server leaf, then the CA */

static struct tls_ctx *ctx_or_die(enum tls_side side, const char *cert, const char *key, const char *ca_pem,
                                  bool require) {
        struct tls_config cfg = { .cert_pem = cert, .key_pem = key, .ca_pem = ca_pem, .require_peer_cert = require };
        struct tls_ctx *ctx = NULL;
        char *err = NULL;

        if (tls_ctx_new(side, &cfg, &ctx, &err) < 0) {
                printf("# tls_ctx_new: %s\n", err);
                abort();
        }
        return ctx;
}

/* ---- an owner that records what it sees ---- */

struct end {
        struct netconn *nc;
        int connects, closes, err, drains;
        bool peer_known;
        struct tls_peer peer;
        char *chain;          /* the peer's chain, read in on_connect */
        char error[200];      /* netconn_tls_error() at on_close */
        struct buf got;
        const char *send;     /* written from on_connect */
        size_t send_len;
        size_t in_limit;
        bool keep;            /* on_data consumes nothing */
        bool pause_at_first;  /* pauses itself when bytes first arrive */
        bool close_after;     /* netconn_close(after_write) once send is queued */
};

static void end_on_connect(struct netconn *nc) {
        struct end *e = nc->userdata;
        const struct tls_peer *p = netconn_tls_peer(nc);

        e->connects++;
        if (p) {
                e->peer_known = true;
                e->peer = *p;
        }
        free(e->chain);
        e->chain = netconn_tls_peer_chain_pem(nc);
        if (e->send)
                (void)netconn_write(nc, e->send, e->send_len);
        if (e->close_after)
                netconn_close(nc, true);
}

static void end_on_data(struct netconn *nc) {
        struct end *e = nc->userdata;

        if (e->keep)
                return;
        if (buf_append(&e->got, nc->in.data, nc->in.len, SIZE_MAX) < 0)
                abort();
        buf_consume(&nc->in, nc->in.len);
        if (e->pause_at_first) {
                e->pause_at_first = false;
                netconn_pause(nc, true);
        }
}

static void end_on_close(struct netconn *nc, int err) {
        struct end *e = nc->userdata;
        const char *why = netconn_tls_error(nc);

        e->closes++;
        e->err = err;
        snprintf(e->error, sizeof e->error, "%s", why ? why : "");
        e->nc = NULL;
}

static void end_on_drain(struct netconn *nc) {
        struct end *e = nc->userdata;
        e->drains++;
}

static const struct netconn_ops end_ops = {
        .on_connect = end_on_connect, .on_data = end_on_data, .on_close = end_on_close, .on_drain = end_on_drain,
};

static void end_reset(struct end *e) {
        buf_free(&e->got);
        free(e->chain);
        *e = (struct end){};
}

/* ---- a TLS server on loopback ---- */

struct server {
        struct netlistener l;
        struct tls_ctx *ctx;
        uint64_t timeout_ns;  /* set on accepted connections */
        struct end ends[4];
        struct end tmpl;      /* copied into each accepted connection's end */
        int accepted;
};

static void server_on_accept(struct netlistener *l, int fd) {
        struct server *s = l->userdata;
        struct end *e = &s->ends[s->accepted++ % 4];

        end_reset(e);
        *e = s->tmpl;
        if (netconn_adopt(l->loop, fd, &end_ops, e, &e->nc) < 0 || netconn_start_tls(e->nc, s->ctx) < 0)
                abort();
        if (e->in_limit)
                e->nc->in_limit = e->in_limit;
        if (s->timeout_ns)
                (void)netconn_set_idle_timeout(e->nc, s->timeout_ns);
}

static int server_open(struct server *s, struct tls_ctx *ctx) {
        *s = (struct server){ .ctx = ctx };
        if (netlistener_open(&s->l, &loop, "127.0.0.1", 0, server_on_accept, s) < 0)
                abort();
        return netlistener_port(&s->l);
}

static void server_close(struct server *s) {
        for (int i = 0; i < 4; i++) {
                if (s->ends[i].nc)
                        netconn_close(s->ends[i].nc, false);
                end_reset(&s->ends[i]);
        }
        netlistener_close(&s->l);
        tls_ctx_unref(s->ctx);
        /* The cancelled accept completes later and names the listener, which lives in the
         * caller's frame: let it complete before that returns. */
        run_briefly();
}

static void client_open(struct end *e, struct tls_ctx *ctx, int port) {
        if (netconn_connect(&loop, "127.0.0.1", port, &end_ops, e, &e->nc) < 0 || netconn_start_tls(e->nc, ctx) < 0)
                abort();
        if (e->in_limit)
                e->nc->in_limit = e->in_limit;
}

static void client_close(struct end *e) {
        if (e->nc)
                netconn_close(e->nc, false);
        end_reset(e);
}

/* A plain TCP socket connected to port. */
static int raw_client(int port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
                abort();
        return fd;
}

/* A listening socket nobody accepts from: connects complete (the backlog), nothing answers. */
static int mute_listener(int *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t sl = sizeof sa;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 8) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
                abort();
        *ret_port = ntohs(sa.sin_port);
        return fd;
}

static bool contains(const char *s, const char *needle) { return s && strstr(s, needle); }

/* ---- tests ---- */

static void test_contexts(void) {
        struct tls_config cfg = { .cert_pem = server_cert.pem, .key_pem = client_cert.key_pem, .ca_pem = ca.pem };
        struct tls_ctx *ctx = NULL;
        char *err = NULL;

        is_int(tls_ctx_new(TLS_SERVER, &cfg, &ctx, &err), -EINVAL, "a key that is not the certificate's is refused");
        ok(contains(err, "key values mismatch"), "and says so (%s)", err);
        free(err);
        err = NULL;
        cfg = (struct tls_config){ .cert_pem = server_cert.pem, .key_pem = server_cert.key_pem, .ca_pem = "junk" };
        is_int(tls_ctx_new(TLS_SERVER, &cfg, &ctx, &err), -EINVAL, "an anchor without a certificate is refused");
        ok(err != NULL, "with a reason (%s)", err);
        free(err);
        err = NULL;
        cfg = (struct tls_config){ .ca_pem = ca.pem };
        is_int(tls_ctx_new(TLS_SERVER, &cfg, &ctx, &err), -EINVAL, "a server needs a certificate");
        free(err);
        is_int(tls_ctx_new(TLS_CLIENT, &cfg, &ctx, NULL), 0, "a client without one is fine (a joining node)");
        tls_ctx_unref(ctx);
        is_int(strcmp(tls_mode_name(TLS_KTLS_TX | TLS_KTLS_RX), "kTLS (tx+rx)"), 0, "mode name: both ways");
        is_int(strcmp(tls_mode_name(TLS_KTLS_TX), "kTLS (tx only)"), 0, "mode name: tx only");
        is_int(strcmp(tls_mode_name(0), "user-space TLS"), 0, "mode name: user space");
}

static void test_mutual(void) {
        struct server s;
        struct end c = {};
        struct tls_stats before, after;
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        struct tls_ctx *cctx = ctx_or_die(TLS_CLIENT, client_cert.pem, client_cert.key_pem, ca.pem, false);

        tls_stats_get(&before);
        client_open(&c, cctx, port);
        ok(netconn_is_tls(c.nc), "the client connection is a TLS one");
        ok(netconn_tls_peer(c.nc) == NULL, "it knows no peer before the handshake");
        ok(RUN_UNTIL(c.connects == 1 && s.ends[0].connects == 1), "on_connect runs on both sides");
        struct end *sv = &s.ends[0];
        ok(c.peer_known && c.peer.has_cert, "the client sees the server's certificate");
        ok(streq(c.peer.name, "server.test") && streq(c.peer.unit, "head"), "CN and OU (%s, %s)", c.peer.name,
           c.peer.unit);
        ok(sv->peer_known && sv->peer.has_cert && streq(sv->peer.name, "node-7") && streq(sv->peer.unit, "workers"),
           "the server sees the client's (%s, %s)", sv->peer.name, sv->peer.unit);
        ok(sv->peer.serial == 0x1234567890abcdefull, "the serial fits 64 bits (%llx)",
           (unsigned long long)sv->peer.serial);
        is_int(sv->peer.not_after, (long long)NOT_AFTER, "notAfter in Unix seconds");
        ok(sv->peer.not_before > 0 && sv->peer.not_before < sv->peer.not_after, "notBefore before it");
        ok(netconn_tls_error(c.nc) == NULL, "no error on a good connection");
        printf("# mode: %s\n", tls_mode_name(netconn_tls_ktls(c.nc)));
        tls_stats_get(&after);
        is_int(after.handshakes - before.handshakes, 2, "two handshakes counted");
        is_int(after.failures - before.failures, 0, "no failure counted");
        ok(after.handshake_ns > before.handshake_ns, "their time is counted");
        is_int((after.ktls_tx - before.ktls_tx) > 0, (netconn_tls_ktls(c.nc) & TLS_KTLS_TX) != 0,
               "kTLS counted as it is used");

        /* A little each way, then the client closes after its write: close_notify, EOF. */
        ok(netconn_write(c.nc, "ping", 4) == 0 && RUN_UNTIL(sv->got.len == 4) && memcmp(sv->got.data, "ping", 4) == 0,
           "the server reads what the client wrote");
        ok(netconn_write(sv->nc, "pong!", 5) == 0 && RUN_UNTIL(c.got.len == 5) && memcmp(c.got.data, "pong!", 5) == 0,
           "and the other way");
        ok(RUN_UNTIL(sv->drains > 0 && netconn_unsent(sv->nc) == 0), "on_drain runs once it is sent");
        netconn_close(c.nc, true);
        c.nc = NULL;
        ok(RUN_UNTIL(sv->closes == 1), "the client closes: the server sees the end");
        is_int(sv->err, 0, "as a clean end of stream");
        is_int(c.closes, 0, "the client that closed hears nothing");

        client_close(&c);
        tls_ctx_unref(cctx);
        server_close(&s);
}

static void fill(char *p, size_t n, unsigned seed) {
        for (size_t i = 0; i < n; i++)
                p[i] = (char)(i * 131 + (i >> 13) + seed);
}

static void test_bulk(void) {
        const size_t MiB = 1u << 20;
        char *a = malloc(MiB), *b = malloc(MiB);
        struct server s;
        struct end c = { .in_limit = 64 * 1024 };
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        struct tls_ctx *cctx = ctx_or_die(TLS_CLIENT, client_cert.pem, client_cert.key_pem, ca.pem, false);

        fill(a, MiB, 1);
        fill(b, MiB, 2);
        /* The server answers with 1 MiB in one write from on_connect; the client queues 1 MiB in
         * 64 KiB writes before the handshake even started: sent once it is done. */
        s.tmpl = (struct end){ .send = b, .send_len = MiB, .in_limit = 64 * 1024 };
        client_open(&c, cctx, port);
        bool queued = true;
        for (size_t off = 0; off < MiB; off += 64 * 1024)
                queued &= netconn_write(c.nc, a + off, 64 * 1024) == 0;
        ok(queued && netconn_unsent(c.nc) == MiB, "1 MiB queued before the handshake");
        ok(RUN_UNTIL(c.got.len >= MiB && s.ends[0].got.len >= MiB), "1 MiB arrives each way (client %zu, server %zu)",
           c.got.len, s.ends[0].got.len);
        ok(c.got.len == MiB && memcmp(c.got.data, b, MiB) == 0, "the client's copy is intact");
        ok(s.ends[0].got.len == MiB && memcmp(s.ends[0].got.data, a, MiB) == 0, "the server's copy is intact");
        ok(c.closes + s.ends[0].closes == 0, "64 KiB in_limit: consumed as it comes, no -EMSGSIZE");
        ok(RUN_UNTIL(c.drains > 0 && s.ends[0].drains > 0), "on_drain runs on both sides");
        is_int(netconn_unsent(c.nc) + netconn_unsent(s.ends[0].nc), 0, "nothing left unsent");
        client_close(&c);
        RUN_UNTIL(s.ends[0].closes == 1);

        /* An owner that does not consume: past in_limit the connection is dropped, as plaintext. */
        s.tmpl = (struct end){ .keep = true, .in_limit = 100 * 1024 };
        client_open(&c, cctx, port);
        ok(netconn_write(c.nc, a, 512 * 1024) == 0, "512 KiB queued for a server that keeps everything");
        ok(RUN_UNTIL(s.ends[1].closes == 1), "the server closes the connection");
        is_int(s.ends[1].err, -EMSGSIZE, "with -EMSGSIZE");
        ok(RUN_UNTIL(c.closes == 1), "the client sees it closed (err %d)", c.err);
        end_reset(&c);

        /* Past out_limit a write fails at once, and on_close follows from the loop. */
        s.tmpl = (struct end){};
        client_open(&c, cctx, port);
        ok(RUN_UNTIL(c.connects == 1), "connected");
        c.nc->out_limit = 256 * 1024;
        is_int(netconn_write(c.nc, a, 300 * 1024), -ENOBUFS, "a write past out_limit fails");
        is_int(c.closes, 0, "on_close does not run inside the write");
        ok(RUN_UNTIL(c.closes == 1) && c.err == -ENOBUFS, "it runs from the loop with -ENOBUFS");
        end_reset(&c);

        tls_ctx_unref(cctx);
        server_close(&s);
        free(a);
        free(b);
}

/* A client made from (cert, key, anchor) connects to s; the test waits until both ends settled. */
static void attempt(struct server *s, int port, const char *cert, const char *key, const char *ca_pem,
                    struct end *c) {
        struct tls_ctx *cctx = ctx_or_die(TLS_CLIENT, cert, key, ca_pem, false);

        *c = (struct end){};
        int before = s->accepted;
        client_open(c, cctx, port);
        tls_ctx_unref(cctx); /* the connection keeps what it needs */
        RUN_UNTIL(s->accepted > before && c->closes + c->connects > 0 &&
                  s->ends[before % 4].closes + s->ends[before % 4].connects > 0);
}

static void test_refusals(void) {
        struct server s;
        struct end c;
        struct tls_stats before, after;
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        struct end *sv;

        tls_stats_get(&before);
        attempt(&s, port, NULL, NULL, ca.pem, &c);
        sv = &s.ends[0];
        is_int(sv->connects, 0, "a client without a certificate: the server's on_connect never runs");
        ok(RUN_UNTIL(sv->closes == 1) && sv->err == -EPROTO, "its on_close(-EPROTO) does (err %d)", sv->err);
        ok(contains(sv->error, "certificate"), "the reason mentions the certificate (%s)", sv->error);
        /* In TLS 1.3 the client is done before the server judged it: it learns from the alert. */
        ok(RUN_UNTIL(c.closes == 1), "the client's connection closes too (err %d: %s)", c.err, c.error);
        ok(contains(c.error, "certificate"), "and it is told why");
        client_close(&c);

        attempt(&s, port, foreign_client.pem, foreign_client.key_pem, ca.pem, &c);
        sv = &s.ends[1];
        ok(sv->connects == 0 && RUN_UNTIL(sv->closes == 1) && sv->err == -EPROTO,
           "a client certificate from another CA is refused");
        ok(contains(sv->error, "certificate verify failed") && contains(sv->error, "issuer"),
           "as unverifiable (%s)", sv->error);
        client_close(&c);

        attempt(&s, port, self_signed.pem, self_signed.key_pem, ca.pem, &c);
        sv = &s.ends[2];
        ok(sv->connects == 0 && RUN_UNTIL(sv->closes == 1) && sv->err == -EPROTO,
           "a self-signed client certificate is refused");
        ok(contains(sv->error, "self"), "as self-signed (%s)", sv->error);
        client_close(&c);

        attempt(&s, port, client_cert.pem, client_cert.key_pem, ca2.pem, &c);
        sv = &s.ends[3];
        is_int(c.connects, 0, "a client trusting another CA refuses the server: no on_connect");
        ok(c.closes == 1 && c.err == -EPROTO, "on_close(-EPROTO) (err %d)", c.err);
        ok(contains(c.error, "certificate verify failed"), "the server's certificate did not verify (%s)", c.error);
        ok(RUN_UNTIL(sv->closes == 1) && sv->connects == 0, "the server sees its handshake fail (%s)", sv->error);
        client_close(&c);

        tls_stats_get(&after);
        ok(after.failures - before.failures >= 5, "failures are counted (%llu)",
           (unsigned long long)(after.failures - before.failures));
        server_close(&s);
}

static void test_optional_and_unanchored(void) {
        struct server s;
        struct end c;
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, false));

        /* The control port: a joining node has no certificate yet. */
        attempt(&s, port, NULL, NULL, ca.pem, &c);
        ok(s.ends[0].connects == 1 && c.connects == 1, "optional mode accepts a client without a certificate");
        ok(s.ends[0].peer_known && !s.ends[0].peer.has_cert, "the server is told it has none");
        ok(netconn_write(c.nc, "join", 4) == 0 && RUN_UNTIL(s.ends[0].got.len == 4), "and they talk");
        client_close(&c);

        attempt(&s, port, foreign_client.pem, foreign_client.key_pem, ca.pem, &c);
        ok(s.ends[1].connects == 0 && RUN_UNTIL(s.ends[1].closes == 1),
           "a certificate that is presented is still verified");
        client_close(&c);

        /* A worker bootstrapping from a pinned CA hash: no anchor, it checks the chain itself. */
        attempt(&s, port, NULL, NULL, NULL, &c);
        ok(c.connects == 1 && c.peer.has_cert && streq(c.peer.name, "server.test"),
           "a client without an anchor connects and sees the server's certificate");
        ok(c.chain && strncmp(c.chain, server_cert.pem, strlen(server_cert.pem)) == 0,
           "the peer chain starts with the server's leaf");
        ok(contains(c.chain, ca.pem), "and holds the CA the server sent");
        client_close(&c);

        attempt(&s, port, client_cert.pem, client_cert.key_pem, ca.pem, &c);
        ok(s.ends[3].chain && strncmp(s.ends[3].chain, client_cert.pem, strlen(client_cert.pem)) == 0,
           "on the server the chain starts with the client's leaf too");
        client_close(&c);
        server_close(&s);
}

static void test_not_tls(void) {
        struct server s;
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        const char req[] = "GET /api/nodes HTTP/1.1\r\nHost: x\r\n\r\n";
        const char junk[] = "HELLO plain text, not a record\n";
        char buf[256];

        int fd = raw_client(port);
        ok(send(fd, junk, sizeof junk - 1, 0) > 0, "a plaintext client sends a line");
        ok(RUN_UNTIL(s.ends[0].closes == 1) && s.ends[0].err == -EPROTO, "the server drops it with -EPROTO (err %d)",
           s.ends[0].err);
        ok(contains(s.ends[0].error, "version") || contains(s.ends[0].error, "record") ||
                   contains(s.ends[0].error, "protocol"),
           "saying it is not TLS (%s)", s.ends[0].error);
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0) /* an alert, maybe, then the end */
                ;
        ok(n <= 0, "the client sees the connection closed");
        close(fd);

        fd = raw_client(port);
        ok(send(fd, req, sizeof req - 1, 0) > 0, "an HTTP client sends a request");
        ok(RUN_UNTIL(s.ends[1].closes == 1) && s.ends[1].err == -EPROTO && s.ends[1].connects == 0,
           "it is dropped as well (%s)", s.ends[1].error);
        close(fd);

        /* A peer that leaves in the middle of the handshake. */
        fd = raw_client(port);
        close(fd);
        ok(RUN_UNTIL(s.ends[2].closes == 1), "a client that connects and leaves is closed (err %d)", s.ends[2].err);
        ok(s.ends[2].err == 0 || s.ends[2].err == -ECONNRESET, "as a reset");
        ok(contains(s.ends[2].error, "closed during the handshake"), "said as such (%s)", s.ends[2].error);
        server_close(&s);
}

static void test_handshake_timeout_and_close(void) {
        const uint64_t timeout = 5 * NSEC_PER_SEC;
        struct server s;
        struct end c = {};
        struct tls_stats before, after;
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        struct tls_ctx *cctx = ctx_or_die(TLS_CLIENT, client_cert.pem, client_cert.key_pem, ca.pem, false);

        /* A client that connects and never says hello. */
        s.timeout_ns = timeout;
        tls_stats_get(&before);
        int fd = raw_client(port);
        ok(RUN_UNTIL(s.accepted == 1), "accepted");
        loop_run_once(&loop, 0);
        netconn_tick(&loop, now_ns() + timeout / 2);
        run_briefly();
        is_int(s.ends[0].closes, 0, "half the timeout: still waiting for the hello");
        netconn_tick(&loop, now_ns() + 2 * timeout);
        ok(RUN_UNTIL(s.ends[0].closes == 1) && s.ends[0].err == -ETIMEDOUT, "the progress timeout closes it (err %d)",
           s.ends[0].err);
        ok(contains(s.ends[0].error, "timed out"), "the handshake timed out (%s)", s.ends[0].error);
        tls_stats_get(&after);
        is_int(after.failures - before.failures, 1, "one failure counted");
        close(fd);

        /* A server that accepts but never answers the client's hello. */
        int mport, mfd = mute_listener(&mport);
        client_open(&c, cctx, mport);
        (void)netconn_set_idle_timeout(c.nc, timeout);
        run_briefly();
        is_int(c.connects + c.closes, 0, "the client waits for the server's answer");
        netconn_tick(&loop, now_ns() + 2 * timeout);
        ok(RUN_UNTIL(c.closes == 1) && c.err == -ETIMEDOUT, "its progress timeout closes it");
        end_reset(&c);

        /* netconn_close() before and during the handshake: no callback at all. */
        client_open(&c, cctx, mport);
        netconn_close(c.nc, false);
        run_briefly();
        is_int(c.connects + c.closes, 0, "closed before the loop ran: no callback");
        end_reset(&c);
        client_open(&c, cctx, mport);
        run_briefly();
        ok(c.nc && netconn_tls_peer(c.nc) == NULL, "mid-handshake");
        netconn_close(c.nc, false);
        run_briefly();
        is_int(c.connects + c.closes, 0, "closed mid-handshake: no callback");
        end_reset(&c);
        close(mfd);

        fd = raw_client(port);
        ok(RUN_UNTIL(s.accepted == 2), "a server connection waits for a hello");
        netconn_close(s.ends[1].nc, false);
        s.ends[1].nc = NULL;
        run_briefly();
        is_int(s.ends[1].connects + s.ends[1].closes, 0, "closed by its owner: no callback");
        char ch;
        is_int(recv(fd, &ch, 1, 0), 0, "the client sees it closed");
        close(fd);

        tls_ctx_unref(cctx);
        server_close(&s);
}

static void test_pause(void) {
        const size_t n = 512 * 1024;
        char *a = malloc(n);
        struct server s;
        struct end c = {};
        int port = server_open(&s, ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true));
        struct tls_ctx *cctx = ctx_or_die(TLS_CLIENT, client_cert.pem, client_cert.key_pem, ca.pem, false);

        fill(a, n, 3);
        s.tmpl = (struct end){ .pause_at_first = true };
        client_open(&c, cctx, port);
        ok(RUN_UNTIL(c.connects == 1 && s.ends[0].connects == 1), "connected");
        ok(netconn_write(c.nc, a, 1000) == 0 && RUN_UNTIL(s.ends[0].got.len > 0), "the first bytes arrive");
        struct end *sv = &s.ends[0];
        ok(sv->nc->paused, "the server paused itself");
        ok(netconn_write(c.nc, a + 1000, n - 1000) == 0, "the client sends the rest");
        run_briefly();
        size_t while_paused = sv->got.len;
        is_int(while_paused, 1000, "nothing more is read while paused");
        netconn_pause(sv->nc, false);
        ok(RUN_UNTIL(sv->got.len == n), "after resume everything arrives (%zu)", sv->got.len);
        ok(memcmp(sv->got.data, a, n) == 0, "intact");

        /* Paused again with bytes waiting, then resumed from the loop: they still arrive. */
        netconn_pause(sv->nc, true);
        ok(netconn_write(c.nc, "tail", 4) == 0, "more bytes while paused");
        run_briefly();
        is_int(sv->got.len, (long long)n, "not read yet");
        netconn_pause(sv->nc, false);
        ok(RUN_UNTIL(sv->got.len == n + 4) && memcmp(sv->got.data + n, "tail", 4) == 0, "read after resume");
        is_int(sv->closes + c.closes, 0, "no close along the way");

        client_close(&c);
        tls_ctx_unref(cctx);
        server_close(&s);
        free(a);
}

static void test_renewal(void) {
        struct server s;
        struct end c1, c2 = {};
        struct tls_ctx *sctx = ctx_or_die(TLS_SERVER, server_chain, server_cert.key_pem, ca.pem, true);
        int port = server_open(&s, sctx);
        char *err = NULL;

        attempt(&s, port, client_cert.pem, client_cert.key_pem, ca.pem, &c1);
        ok(c1.connects == 1 && streq(c1.peer.name, "server.test"), "before the renewal: the old certificate");
        is_int(tls_ctx_set_identity(sctx, server2_cert.pem, server_cert.key_pem, &err), -EINVAL,
               "a renewal whose key does not match is refused (%s)", err);
        free(err);
        is_int(tls_ctx_set_identity(sctx, server2_cert.pem, server2_cert.key_pem, NULL), 0, "the server renews");
        attempt(&s, port, client_cert.pem, client_cert.key_pem, ca.pem, &c2);
        ok(c2.connects == 1 && streq(c2.peer.name, "server-renewed.test"), "a new connection sees the new one (%s)",
           c2.peer.name);
        ok(netconn_write(c1.nc, "old", 3) == 0 && RUN_UNTIL(s.ends[0].got.len == 3),
           "the connection made before still works");

        /* A new anchor: clients of the old CA are refused from now on. */
        is_int(tls_ctx_set_ca(sctx, ca2.pem, NULL), 0, "the server trusts another CA");
        struct end c3;
        attempt(&s, port, client_cert.pem, client_cert.key_pem, ca.pem, &c3);
        ok(s.ends[2].connects == 0 && RUN_UNTIL(s.ends[2].closes == 1), "a client of the old CA is refused");
        client_close(&c3);
        attempt(&s, port, foreign_client.pem, foreign_client.key_pem, ca.pem, &c3);
        ok(s.ends[3].connects == 1, "one of the new CA is accepted (%s)", s.ends[3].error);
        client_close(&c1);
        client_close(&c2);
        client_close(&c3);
        tls_ctx_ref(sctx); /* server_close() drops one reference; the context outlives it */
        server_close(&s);
        tls_ctx_unref(sctx);
}

int main(void) {
        int r = loop_init(&loop, 64);
        if (r < 0) {
                printf("1..0 # SKIP no io_uring here (%s)\n", strerror(-r));
                return 77;
        }
        log_set_level(LOG_WARNING);
        signal(SIGPIPE, SIG_IGN); /* as the daemons: OpenSSL writes to sockets with write(2) */

        ca = make_cert("Test CA", "cluster", 1, NULL, true);
        ca2 = make_cert("Other CA", "cluster", 1, NULL, true);
        server_cert = make_cert("server.test", "head", 2, &ca, false);
        server2_cert = make_cert("server-renewed.test", "head", 3, &ca, false);
        client_cert = make_cert("node-7", "workers", 0x1234567890abcdefull, &ca, false);
        foreign_client = make_cert("node-7", "workers", 5, &ca2, false);
        self_signed = make_cert("node-7", "workers", 6, NULL, false);
        server_chain = concat(server_cert.pem, ca.pem);

        test_contexts();
        test_mutual();
        test_bulk();
        test_refusals();
        test_optional_and_unanchored();
        test_not_tls();
        test_handshake_timeout_and_close();
        test_pause();
        test_renewal();

        loop_drain(&loop, 100 * NSEC_PER_MSEC);
        loop_free(&loop);
        free(server_chain);
        struct cert *all[] = { &ca, &ca2, &server_cert, &server2_cert, &client_cert, &foreign_client, &self_signed };
        for (size_t i = 0; i < ELEMENTSOF(all); i++)
                cert_free(all[i]);
        return tap_done();
}
