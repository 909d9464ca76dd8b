/* A hostile client for a worker's data port (the peer wire format of src/dataplane/peer_wire.h)
 * and for the HTTP proxy, used by tests/integration/hostile_peer.sh and dataplane.sh. Frames are
 * built by hand, byte by byte, so they can be wrong in every way a peer could get them wrong.
 * Every mode is bounded in time; each prints what a peer (or client) would notice, one line per
 * observation, and exits 0 unless the tool itself could not run (bad usage, connect failed).
 *
 *   flood HOST PORT SECONDS [APP PATH]
 *       Sends REQ frames (POST PATH, default app "echo" and path "/echo", 60,000-byte bodies)
 *       as fast as the worker takes them and never reads; when the worker closes the link,
 *       connects again, until SECONDS pass. Prints "flood: R requests, B bytes, L links,
 *       C closed by the worker".
 *   frame HOST PORT CASE
 *       Sends one malformed frame sequence (CASE below), then waits up to 10 s: prints each
 *       frame the worker sends back ("FAIL 404 reason", "RESP 200 ...", "REJECT 503"), then
 *       "closed" when the worker closed the link, or "open" when it was still open after 10 s.
 *       CASEs: truncated (a frame cut short, then our side shuts down writing), truncated-hold
 *       (cut short, then nothing), oversized (len > 1 MiB), unknown-type, body-first (REQ_BODY
 *       without REQ), resp (a RESP frame: responses never travel towards the worker), fail,
 *       reject, bad-app-len (a REQ with app_len 0), body-overrun (a REQ_BODY longer than the
 *       body announced), interleaved (a second REQ while the first's body is still coming),
 *       cancel-assembling (a CANCEL while a body is still coming).
 *   request HOST PORT APP:PATH[:BODY_BYTES] ...
 *       On one link, sends each request in turn (method POST, body of BODY_BYTES 'b' bytes,
 *       default 2) and waits up to 30 s for its answer; prints one line per request:
 *       "RESP STATUS len=N body=FIRST_BYTES", "FAIL STATUS reason", "REJECT STATUS", "closed"
 *       or "timeout". APP may be a path-like string; "-" in PATH is sent as is.
 *   cancel HOST PORT COUNT
 *       Sends COUNT CANCEL frames for streams that do not exist, then a request for echo:/echo;
 *       prints its answer as `request` does.
 *   conns HOST PORT N [PARTIAL_BYTES]
 *       Opens N connections at once (with TLS, 64 handshakes at a time: see below), each
 *       sending, when PARTIAL_BYTES > 0, the header of a 1 MiB REQ_BODY frame and PARTIAL_BYTES
 *       of its payload; prints "conns: N opened, K closed by the worker" once they are
 *       connected and K did not change for 1 s (K counts those refused at connect or in the
 *       handshake too), then holds them until SIGTERM (or 300 s) and prints "conns: K closed by
 *       the worker" again.
 *   stall HOST PORT N BODY_BYTES HERE_BYTES
 *       Opens N links; on each sends one REQ for echo:/echo announcing a BODY_BYTES body with only
 *       HERE_BYTES of it, then nothing. Prints "stall: N sent", holds them until SIGTERM (or
 *       300 s), then prints "stall: K closed by the worker".
 *   http-slowread HOST PORT PATH
 *       HTTP: sends "GET PATH" with a tiny receive buffer and reads nothing; prints
 *       "sent local_port=P", then waits for SIGUSR1 (at most 300 s), then reads everything until
 *       the server closes (at most 60 s) and prints "read N bytes: eof|reset|timeout".
 *
 * TLS. A worker's data port speaks TLS 1.3 and takes only links from a node of the cluster
 * (transport: tls, the default). These environment variables make every mode but
 * http-slowread (plain HTTP to the proxy) a TLS client of the data port:
 *   HOSTILE_TLS_CERT=FILE  the certificate we present, PEM, leaf first (a node's node.crt)
 *   HOSTILE_TLS_KEY=FILE   its private key, PEM (a node's node.key); default: HOSTILE_TLS_CERT
 *   HOSTILE_TLS_CA=FILE    the CA the worker's certificate must verify against (ca.crt); unset:
 *                          the worker's certificate is not checked
 *   HOSTILE_TLS=1          TLS even when none of the above is set
 * Any of them set (non-empty) turns TLS on; without HOSTILE_TLS_CERT the tool presents no
 * certificate. With a node's identity the link is authenticated, and then misbehaves inside the
 * TLS stream exactly as a plaintext one does: every frame above travels as TLS records. A
 * handshake has 10 s; one the worker refuses (it closes the connection or sends an alert; with
 * TLS 1.3 a refused client certificate is often noticed only at the first read) is reported as
 * the worker closing the link ("closed"; the reason goes to stderr), while a worker certificate
 * that does not verify against HOSTILE_TLS_CA is an error of the setup (exit 2). What each mode
 * guarantees holds over TLS too: flood never calls SSL_read, so nothing is read at the TCP
 * level either and the worker's writes fill our receive window; conns and stall watch for the
 * worker closing a link at the TCP level (they never decrypt what it sends); conns completes
 * each link's handshake before it sends its partial frame or holds it, with at most 64
 * handshakes in flight (so that no link waits on its handshake long enough for the worker's
 * progress timeout to close it), and says on stderr "conns: H TLS handshakes completed".
 * SIGPIPE is ignored: OpenSSL writes with write(), not send(MSG_NOSIGNAL). */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "peer_wire.h"

#define HDR 16u

static const char *host;
static int port;

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t) v; p[1] = (uint8_t) (v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t) (v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t) (v >> (8 * i)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t) (p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* A growable byte string. */
struct bytes {
        uint8_t *p;
        size_t len, cap;
};

static void add(struct bytes *b, const void *data, size_t len) {
        if (b->len + len > b->cap) {
                size_t n = b->cap ? b->cap : 4096;
                while (n < b->len + len)
                        n *= 2;
                b->p = realloc(b->p, n);
                if (!b->p) {
                        perror("realloc");
                        exit(2);
                }
                b->cap = n;
        }
        if (len)
                memcpy(b->p + b->len, data, len);
        b->len += len;
}

static void add_header(struct bytes *b, uint32_t len, uint8_t type, uint16_t status, uint64_t stream) {
        uint8_t h[HDR];
        put32(h, len);
        h[4] = type;
        h[5] = 0;
        put16(h + 6, status);
        put64(h + 8, stream);
        add(b, h, HDR);
}

static void add_frame(struct bytes *b, uint8_t type, uint16_t status, uint64_t stream, const void *p, size_t l) {
        add_header(b, (uint32_t) l, type, status, stream);
        add(b, p, l);
}

/* A REQ frame for app/path with body_here bytes of a body_len-byte body ('b' bytes). */
static void add_req(struct bytes *b, uint64_t stream, const char *app, const char *path, uint64_t body_len,
                    size_t body_here) {
        char head[1024];
        uint8_t fixed[16];
        int hl = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: peer\r\nContent-Length: %llu\r\n\r\n", path,
                          (unsigned long long) body_len);
        size_t al = strlen(app);

        put16(fixed, (uint16_t) al);
        put16(fixed + 2, 0);
        put32(fixed + 4, (uint32_t) hl);
        put64(fixed + 8, body_len);
        add_header(b, (uint32_t) (16 + al + (size_t) hl + body_here), PEER_REQ, 0, stream);
        add(b, fixed, 16);
        add(b, app, al);
        add(b, head, (size_t) hl);
        for (size_t i = 0; i < body_here; i++)
                add(b, "b", 1);
}

/* A whole request: REQ with as much body as fits in a frame, then REQ_BODY frames. */
static void add_request(struct bytes *b, uint64_t stream, const char *app, const char *path, uint64_t body_len) {
        size_t room = PEER_FRAME_MAX - 16 - strlen(app) - 1024; /* the head is at most 1 KiB */
        size_t first = body_len < room ? (size_t) body_len : room;
        static uint8_t chunk[PEER_FRAME_MAX];

        memset(chunk, 'b', sizeof chunk);
        add_req(b, stream, app, path, body_len, first);
        for (uint64_t left = body_len - first; left > 0;) {
                size_t n = left < PEER_FRAME_MAX ? (size_t) left : PEER_FRAME_MAX;
                add_frame(b, PEER_REQ_BODY, 0, stream, chunk, n);
                left -= n;
        }
}

static int dial(bool nonblock, int rcvbuf) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);

        if (fd < 0)
                return -errno;
        if (rcvbuf > 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
                close(fd);
                return -EINVAL;
        }
        if (connect(fd, (struct sockaddr *) &a, sizeof a) < 0 && errno != EINPROGRESS) {
                int e = -errno;
                close(fd);
                return e;
        }
        return fd;
}

/* ---- TLS (see the top of the file) ---- */

static SSL_CTX *tls;       /* NULL: plaintext */
static bool tls_verifies;  /* HOSTILE_TLS_CA was given */
static char tls_why[256];  /* why the last TLS call on a link failed */

static const char *env(const char *name) {
        const char *v = getenv(name);
        return v && *v ? v : NULL;
}

static void tls_die(const char *what) {
        fprintf(stderr, "TLS: %s\n", what);
        ERR_print_errors_fp(stderr);
        exit(2);
}

static void tls_setup(void) {
        const char *cert = env("HOSTILE_TLS_CERT"), *key = env("HOSTILE_TLS_KEY"), *ca = env("HOSTILE_TLS_CA");

        if (!cert && !key && !ca && !env("HOSTILE_TLS"))
                return;
        if (key && !cert) {
                fprintf(stderr, "HOSTILE_TLS_KEY needs HOSTILE_TLS_CERT\n");
                exit(2);
        }
        tls = SSL_CTX_new(TLS_client_method());
        if (!tls)
                tls_die("cannot create a context");
        if (SSL_CTX_set_min_proto_version(tls, TLS1_3_VERSION) != 1)
                tls_die("TLS 1.3 unavailable");
        /* An EOF without close_notify reads as the worker closing the link, as a FIN does in
         * plaintext. Many links at once: idle ones give their record buffers back. */
        SSL_CTX_set_options(tls, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(tls, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_mode(tls, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                      SSL_MODE_RELEASE_BUFFERS);
        if (cert) {
                if (SSL_CTX_use_certificate_chain_file(tls, cert) != 1)
                        tls_die(cert);
                if (SSL_CTX_use_PrivateKey_file(tls, key ? key : cert, SSL_FILETYPE_PEM) != 1)
                        tls_die(key ? key : cert);
                if (SSL_CTX_check_private_key(tls) != 1)
                        tls_die("the key does not match the certificate");
        }
        if (ca) {
                if (SSL_CTX_load_verify_file(tls, ca) != 1)
                        tls_die(ca);
                SSL_CTX_set_verify(tls, SSL_VERIFY_PEER, NULL);
                tls_verifies = true;
        } else
                SSL_CTX_set_verify(tls, SSL_VERIFY_NONE, NULL);
}

/* A link to the worker: a socket, and with TLS the session on it. */
struct conn {
        int fd;
        SSL *ssl;
        short want; /* after -EAGAIN: the poll events the last call waits for */
};

static void conn_close(struct conn *c) {
        if (c->ssl)
                SSL_free(c->ssl);
        if (c->fd >= 0)
                close(c->fd);
        c->ssl = NULL;
        c->fd = -1;
}

static void conn_start_tls(struct conn *c) {
        c->ssl = SSL_new(tls);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
                tls_die("cannot create a session");
        SSL_set_connect_state(c->ssl);
}

/* After an SSL call that failed (ret its result, err the errno right after it): -EAGAIN
 * (c->want says what to wait for), 0 (the worker closed the stream: close_notify or EOF), or a
 * negative errno: -ECONNRESET etc. from the socket, -EPROTO for an alert or a bad record (the
 * reason is in tls_why). */
static int tls_result(struct conn *c, int ret, int err) {
        unsigned long e;

        switch (SSL_get_error(c->ssl, ret)) {
        case SSL_ERROR_WANT_READ:
                c->want = POLLIN;
                return -EAGAIN;
        case SSL_ERROR_WANT_WRITE:
                c->want = POLLOUT;
                return -EAGAIN;
        case SSL_ERROR_ZERO_RETURN:
                snprintf(tls_why, sizeof tls_why, "the worker closed the connection");
                return 0;
        case SSL_ERROR_SYSCALL:
                ERR_clear_error();
                if (!err) {
                        snprintf(tls_why, sizeof tls_why, "the worker closed the connection");
                        return 0;
                }
                snprintf(tls_why, sizeof tls_why, "%s", strerror(err));
                return err == EAGAIN || err == EWOULDBLOCK ? -EAGAIN : -err;
        default:
                e = ERR_peek_last_error();
                if (e)
                        ERR_error_string_n(e, tls_why, sizeof tls_why);
                else
                        snprintf(tls_why, sizeof tls_why, "TLS error");
                ERR_clear_error();
                return -EPROTO;
        }
}

/* Like send(): bytes written, or -EAGAIN (c->want), -EINTR, -EPIPE, -ECONNRESET, -EPROTO. */
static ssize_t conn_send(struct conn *c, const void *p, size_t len) {
        size_t w = 0;
        int r;

        if (!c->ssl) {
                ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
                if (n >= 0)
                        return n;
                c->want = POLLOUT;
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
        ERR_clear_error();
        errno = 0;
        r = SSL_write_ex(c->ssl, p, len, &w);
        if (r == 1)
                return (ssize_t) w;
        r = tls_result(c, r, errno);
        return r == 0 ? -EPIPE : r;
}

/* Like recv(): bytes read, 0 at the end of the stream, or -EAGAIN (c->want), -EINTR, a negative
 * errno. With TLS, the bytes are the plaintext of the records. */
static ssize_t conn_recv(struct conn *c, void *p, size_t len) {
        size_t got = 0;
        int r;

        if (!c->ssl) {
                ssize_t n = recv(c->fd, p, len, 0);
                if (n >= 0)
                        return n;
                c->want = POLLIN;
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
        ERR_clear_error();
        errno = 0;
        r = SSL_read_ex(c->ssl, p, len, &got);
        if (r == 1)
                return (ssize_t) got;
        return tls_result(c, r, errno);
}

/* One step of the TLS handshake on a non-blocking socket. Returns 1 (done), -EAGAIN (c->want
 * says what to wait for), or a negative errno when the worker refused or closed the connection
 * (tls_why says how). Exits 2 when it is we who refuse the worker's certificate. */
static int handshake_step(struct conn *c) {
        long v;
        int r;

        ERR_clear_error();
        errno = 0;
        r = SSL_connect(c->ssl);
        if (r == 1)
                return 1;
        r = tls_result(c, r, errno);
        if (r == -EAGAIN)
                return r;
        if (tls_verifies && (v = SSL_get_verify_result(c->ssl)) != X509_V_OK) {
                fprintf(stderr, "TLS: the worker's certificate does not verify against HOSTILE_TLS_CA: %s\n",
                        X509_verify_cert_error_string(v));
                exit(2);
        }
        return r == 0 ? -ECONNRESET : r;
}

static void set_nonblock(int fd, bool on) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
                (void) fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Opens one link: connects (blocking) and, with TLS, completes the handshake before deadline.
 * A TLS link is then left non-blocking (the loops below wait with poll) unless `blocking`.
 * Returns 1, 0 when the worker refused the handshake or it did not finish in time (tls_why
 * says why; nothing is open), or a negative errno when the TCP connect failed. */
static int conn_open(struct conn *c, int rcvbuf, bool blocking, uint64_t deadline) {
        *c = (struct conn) { .fd = dial(false, rcvbuf) };
        if (c->fd < 0)
                return c->fd;
        if (!tls)
                return 1;
        set_nonblock(c->fd, true);
        conn_start_tls(c);
        for (;;) {
                int r = handshake_step(c);
                if (r == 1)
                        break;
                uint64_t now = now_ms();
                if (r != -EAGAIN || now >= deadline) {
                        if (r == -EAGAIN)
                                snprintf(tls_why, sizeof tls_why, "the handshake did not finish in time");
                        conn_close(c);
                        return 0;
                }
                struct pollfd pfd = { .fd = c->fd, .events = c->want };
                (void) poll(&pfd, 1, (int) (deadline - now));
        }
        if (blocking)
                set_nonblock(c->fd, false);
        return 1;
}

/* conn_open for the modes that use one link: exits 2 when the connect failed; prints "closed"
 * (and on stderr why) and returns false when the worker refused the TLS handshake. */
static bool open_link(struct conn *c) {
        int r = conn_open(c, 0, false, now_ms() + 10000);
        if (r < 0) {
                fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(-r));
                exit(2);
        }
        if (r == 0) {
                fprintf(stderr, "TLS handshake: %s\n", tls_why);
                printf("closed\n");
                fflush(stdout);
                return false;
        }
        return true;
}

/* Writes everything (waiting as long as it takes, as a blocking send does). Returns 0, or a
 * negative errno when the worker closed the link. */
static int send_all(struct conn *c, const void *data, size_t len) {
        const uint8_t *p = data;
        while (len > 0) {
                ssize_t n = conn_send(c, p, len);
                if (n < 0) {
                        if (n == -EINTR)
                                continue;
                        if (n == -EAGAIN) {
                                struct pollfd pfd = { .fd = c->fd, .events = c->want };
                                (void) poll(&pfd, 1, -1);
                                continue;
                        }
                        return (int) n;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Reads exactly len bytes before the deadline. Returns 1, 0 (EOF), -ECONNRESET, -EPROTO (a TLS
 * alert) etc., or -ETIMEDOUT. */
static int recv_exact(struct conn *c, void *buf, size_t len, uint64_t deadline) {
        uint8_t *p = buf;
        short events = POLLIN;

        while (len > 0) {
                uint64_t now = now_ms();
                if (now >= deadline)
                        return -ETIMEDOUT;
                /* Decrypted bytes already in the session: no need to wait for the socket. */
                if (!c->ssl || SSL_pending(c->ssl) == 0) {
                        struct pollfd pfd = { .fd = c->fd, .events = events };
                        int r = poll(&pfd, 1, (int) (deadline - now));
                        if (r < 0 && errno != EINTR)
                                return -errno;
                        if (r <= 0)
                                continue;
                }
                ssize_t n = conn_recv(c, p, len);
                if (n == 0)
                        return 0;
                if (n < 0) {
                        if (n == -EAGAIN) {
                                events = c->want;
                                continue;
                        }
                        if (n == -EINTR)
                                continue;
                        return (int) n;
                }
                events = POLLIN;
                p += n;
                len -= (size_t) n;
        }
        return 1;
}

struct frame {
        uint32_t len;
        uint8_t type;
        uint16_t status;
        uint64_t stream;
        uint8_t *payload;
};

/* Whether a read's result means the worker closed the link: EOF, a reset, or with TLS an alert
 * (the worker refused our certificate after the handshake; it says why on stderr). */
static bool closed_by_worker(struct conn *c, int r) {
        if (r == -EPROTO && c->ssl)
                fprintf(stderr, "TLS: %s\n", tls_why);
        return r == 0 || r == -ECONNRESET || r == -EPIPE || r == -EPROTO;
}

/* Reads one frame. Returns 1, 0 (the worker closed the link), -ETIMEDOUT, or -EBADMSG when the
 * worker sent something that is not a frame (that is a finding: printed by the caller). */
static int read_frame(struct conn *c, struct frame *f, uint64_t deadline) {
        uint8_t h[HDR];
        int r = recv_exact(c, h, HDR, deadline);
        if (r <= 0)
                return closed_by_worker(c, r) ? 0 : r;
        f->len = get32(h);
        f->type = h[4];
        f->status = get16(h + 6);
        f->stream = get64(h + 8);
        if (f->len > PEER_FRAME_MAX || f->type < PEER_REQ || f->type > PEER_RESP_END)
                return -EBADMSG;
        free(f->payload);
        f->payload = malloc(f->len + 1);
        if (!f->payload)
                exit(2);
        r = recv_exact(c, f->payload, f->len, deadline);
        if (r <= 0)
                return closed_by_worker(c, r) ? 0 : r;
        f->payload[f->len] = 0;
        return 1;
}

/* Prints the answer to stream `stream`: "RESP STATUS len=N body=...", "FAIL STATUS reason",
 * "REJECT STATUS", "closed", "timeout" or "garbage". Returns false when the link is gone. */
static bool print_answer(struct conn *c, uint64_t stream, int timeout_s) {
        uint64_t deadline = now_ms() + (uint64_t) timeout_s * 1000;
        struct frame f = {};
        uint64_t body_len = 0, got = 0;
        char first[41] = "";
        int status = 0, r;
        bool ok = true;

        for (;;) {
                r = read_frame(c, &f, deadline);
                if (r <= 0) {
                        printf("%s\n", r == 0 ? "closed" : r == -ETIMEDOUT ? "timeout" : "garbage");
                        ok = false;
                        break;
                }
                if (f.stream != stream) {
                        printf("a frame (type %u) for stream %llu, not %llu\n", f.type, (unsigned long long) f.stream,
                               (unsigned long long) stream);
                        continue;
                }
                if (f.type == PEER_FAIL) {
                        printf("FAIL %u %.*s\n", f.status, (int) f.len, (char *) f.payload);
                        break;
                }
                if (f.type == PEER_REJECT) {
                        printf("REJECT %u\n", f.status);
                        break;
                }
                const uint8_t *body = NULL;
                size_t here = 0;
                if (f.type == PEER_RESP && f.len >= 16) {
                        status = f.status;
                        body_len = get64(f.payload);
                        uint32_t hl = get32(f.payload + 8);
                        if (hl > f.len - 16) {
                                printf("garbage RESP\n");
                                ok = false;
                                break;
                        }
                        body = f.payload + 16 + hl;
                        here = f.len - 16 - hl;
                } else if (f.type == PEER_RESP_BODY && status) {
                        body = f.payload;
                        here = f.len;
                } else {
                        printf("unexpected frame type %u\n", f.type);
                        continue;
                }
                size_t have = strlen(first);
                for (size_t i = 0; i < here && have < sizeof first - 1; i++) {
                        char ch = (char) body[i];
                        first[have++] = ch >= ' ' && ch < 127 ? ch : '.';
                        first[have] = 0;
                }
                got += here;
                if (got >= body_len) {
                        printf("RESP %d len=%llu body=%s\n", status, (unsigned long long) got, first);
                        break;
                }
        }
        free(f.payload);
        fflush(stdout);
        return ok;
}

/* Waits up to timeout_s for the worker to close the link, printing frames it sends meanwhile.
 * Prints "closed" or "open". */
static void print_fate(struct conn *c, int timeout_s) {
        uint64_t deadline = now_ms() + (uint64_t) timeout_s * 1000;
        struct frame f = {};

        for (;;) {
                int r = read_frame(c, &f, deadline);
                if (r == 1) {
                        if (f.type == PEER_FAIL)
                                printf("FAIL %u %.*s\n", f.status, (int) f.len, (char *) f.payload);
                        else
                                printf("frame type %u status %u\n", f.type, f.status);
                        continue;
                }
                printf("%s\n", r == -ETIMEDOUT ? "open" : r == -EBADMSG ? "garbage" : "closed");
                break;
        }
        free(f.payload);
        fflush(stdout);
}

/* ---- modes ---- */

static int mode_flood(int seconds, const char *app, const char *path) {
        uint64_t end = now_ms() + (uint64_t) seconds * 1000, requests = 0, bytes = 0, links = 0, closed = 0;
        uint64_t stream = 1;
        struct bytes frame = {};
        struct conn c = { .fd = -1 };
        int small = 4096;

        while (now_ms() < end) {
                if (c.fd < 0) {
                        uint64_t hs_end = now_ms() + 10000;
                        /* A blocking socket: with TLS only the handshake waits with poll. */
                        if (conn_open(&c, small, true, hs_end < end ? hs_end : end) <= 0) {
                                /* The data port refuses (its cap) or the worker is busy: retry. */
                                usleep(50 * 1000);
                                continue;
                        }
                        links++;
                        /* Sends wait at most 200 ms, so the time bound holds while the worker
                         * (rightly) stops reading us. */
                        struct timeval tv = { .tv_usec = 200 * 1000 };
                        (void) setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                }
                frame.len = 0;
                add_request(&frame, stream++, app, path, 60000);
                size_t off = 0;
                /* Only writes: never a read, not even SSL_read, so our receive window fills. */
                while (off < frame.len && now_ms() < end) {
                        ssize_t n = conn_send(&c, frame.p + off, frame.len - off);
                        if (n > 0) {
                                off += (size_t) n;
                                bytes += (uint64_t) n;
                                continue;
                        }
                        if (n == -EAGAIN || n == -EINTR)
                                continue;
                        /* The worker closed the link: it is allowed to. */
                        closed++;
                        conn_close(&c);
                        break;
                }
                if (c.fd >= 0 && off == frame.len)
                        requests++;
        }
        conn_close(&c);
        free(frame.p);
        printf("flood: %llu requests, %llu bytes, %llu links, %llu closed by the worker\n",
               (unsigned long long) requests, (unsigned long long) bytes, (unsigned long long) links,
               (unsigned long long) closed);
        return 0;
}

static int mode_frame(const char *c) {
        struct bytes b = {};
        struct conn link;
        uint8_t junk[4096];
        bool shut = false;

        memset(junk, 'j', sizeof junk);
        if (strcmp(c, "truncated") == 0 || strcmp(c, "truncated-hold") == 0) {
                add_header(&b, 1000, PEER_REQ_BODY, 0, 1);
                add(&b, junk, 100);
                shut = strcmp(c, "truncated") == 0;
        } else if (strcmp(c, "oversized") == 0) {
                add_header(&b, PEER_FRAME_MAX + 1, PEER_REQ, 0, 1);
                add(&b, junk, sizeof junk);
        } else if (strcmp(c, "unknown-type") == 0)
                add_frame(&b, 99, 0, 1, junk, 10);
        else if (strcmp(c, "body-first") == 0)
                add_frame(&b, PEER_REQ_BODY, 0, 1, junk, 10);
        else if (strcmp(c, "resp") == 0) {
                uint8_t fixed[16] = {};
                put64(fixed, 0);
                add_frame(&b, PEER_RESP, 200, 1, fixed, 16);
        } else if (strcmp(c, "fail") == 0)
                add_frame(&b, PEER_FAIL, 500, 1, "no", 2);
        else if (strcmp(c, "reject") == 0)
                add_frame(&b, PEER_REJECT, 503, 1, NULL, 0);
        else if (strcmp(c, "bad-app-len") == 0) {
                uint8_t fixed[16] = {};
                const char *head = "POST /echo HTTP/1.1\r\nHost: p\r\n\r\n";
                put32(fixed + 4, (uint32_t) strlen(head));
                add_header(&b, (uint32_t) (16 + strlen(head)), PEER_REQ, 0, 1);
                add(&b, fixed, 16);
                add(&b, head, strlen(head));
        } else if (strcmp(c, "body-overrun") == 0) {
                add_req(&b, 1, "echo", "/echo", 20, 10);
                add_frame(&b, PEER_REQ_BODY, 0, 1, junk, 11);
        } else if (strcmp(c, "interleaved") == 0) {
                add_req(&b, 1, "echo", "/echo", 20, 10);
                add_req(&b, 2, "echo", "/echo", 2, 2);
        } else if (strcmp(c, "cancel-assembling") == 0) {
                add_req(&b, 1, "echo", "/echo", 20, 10);
                add_frame(&b, PEER_CANCEL, 0, 1, NULL, 0);
        } else {
                fprintf(stderr, "unknown case %s\n", c);
                return 2;
        }
        if (!open_link(&link)) {
                free(b.p);
                return 0;
        }
        if (send_all(&link, b.p, b.len) < 0) {
                printf("closed\n");
                conn_close(&link);
                free(b.p);
                return 0;
        }
        if (shut) {
                /* TLS: close_notify first (the end of the stream), then the FIN. */
                if (link.ssl)
                        (void) SSL_shutdown(link.ssl);
                shutdown(link.fd, SHUT_WR);
        }
        print_fate(&link, 10);
        conn_close(&link);
        free(b.p);
        return 0;
}

static int mode_request(int n, char **specs) {
        struct conn c;
        struct bytes b = {};

        if (!open_link(&c))
                return 0;
        for (int i = 0; i < n; i++) {
                char *spec = strdup(specs[i]), *app = spec, *path = strchr(spec, ':'), *len;
                uint64_t body_len = 2;

                if (!path) {
                        fprintf(stderr, "bad request spec %s\n", specs[i]);
                        return 2;
                }
                *path++ = 0;
                if ((len = strchr(path, ':'))) {
                        *len++ = 0;
                        body_len = strtoull(len, NULL, 10);
                }
                b.len = 0;
                add_request(&b, (uint64_t) i + 1, app, path, body_len);
                int r = send_all(&c, b.p, b.len);
                free(spec);
                if (r < 0 || !print_answer(&c, (uint64_t) i + 1, 30)) {
                        if (r < 0)
                                printf("closed\n");
                        break;
                }
        }
        free(b.p);
        conn_close(&c);
        return 0;
}

static int mode_cancel(long count) {
        struct conn c;
        struct bytes b = {};

        if (!open_link(&c))
                return 0;
        for (long i = 0; i < count; i++) {
                add_frame(&b, PEER_CANCEL, 0, (uint64_t) i * 7919 + 1000000, NULL, 0);
                if (b.len >= 1 << 20 || i == count - 1) {
                        if (send_all(&c, b.p, b.len) < 0) {
                                printf("closed\n");
                                conn_close(&c);
                                return 0;
                        }
                        b.len = 0;
                }
        }
        add_request(&b, 1, "echo", "/echo", 2);
        if (send_all(&c, b.p, b.len) < 0)
                printf("closed\n");
        else
                print_answer(&c, 1, 30);
        free(b.p);
        conn_close(&c);
        return 0;
}

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

/* Counts the links the worker closed, watching at the TCP level: with TLS too, what it sent
 * before closing is read past without being decrypted (nothing here is read through the
 * session again). */
static unsigned count_closed(struct conn *cs, int n) {
        unsigned closed = 0;
        char tmp[256];

        for (int i = 0; i < n; i++) {
                if (cs[i].fd < 0) {
                        closed++;
                        continue;
                }
                struct pollfd p = { .fd = cs[i].fd, .events = POLLIN | POLLRDHUP };
                if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLIN))) {
                        /* What the worker answered before it closed (a FAIL for a refused
                         * request) comes first: read past it to the end of the stream. */
                        ssize_t r;
                        while ((r = recv(cs[i].fd, tmp, sizeof tmp, MSG_DONTWAIT)) > 0)
                                ;
                        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                                conn_close(&cs[i]);
                                closed++;
                        }
                }
        }
        return closed;
}

/* Where a link of `conns` is while it opens. */
enum { OPEN_CONNECTING, OPEN_HANDSHAKE, OPEN_SENDING, OPEN_HELD };
struct opening {
        int state;
        size_t off;     /* OPEN_SENDING: bytes of the partial frame sent */
        uint64_t until; /* the bound on the current state */
};

/* Advances link c (ready: poll said so). Returns true while it still has something to do
 * (connect, handshake, send); false once it is held, or closed (c->fd < 0). */
static bool advance(struct conn *c, struct opening *o, const struct bytes *b, bool ready, unsigned *handshakes) {
        uint64_t now = now_ms();

        for (;;) {
                switch (o->state) {
                case OPEN_CONNECTING: {
                        int err = 0;
                        socklen_t l = sizeof err;
                        if (!ready) {
                                if (now < o->until)
                                        return true;
                                conn_close(c); /* did not connect in time */
                                return false;
                        }
                        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
                                conn_close(c);
                                return false;
                        }
                        if (tls) {
                                conn_start_tls(c);
                                o->state = OPEN_HANDSHAKE;
                                o->until = now + 10000;
                        } else {
                                o->state = OPEN_SENDING;
                                o->until = now + 2000;
                        }
                        continue;
                }
                case OPEN_HANDSHAKE: {
                        int r = handshake_step(c);
                        if (r == -EAGAIN) {
                                if (now < o->until)
                                        return true;
                                conn_close(c); /* did not finish in time */
                                return false;
                        }
                        if (r < 0) {
                                conn_close(c); /* refused: the data port's cap, or us */
                                return false;
                        }
                        (*handshakes)++;
                        o->state = OPEN_SENDING;
                        o->until = now + 2000;
                        continue;
                }
                case OPEN_SENDING:
                        while (o->off < b->len) {
                                ssize_t s = conn_send(c, b->p + o->off, b->len - o->off);
                                if (s > 0)
                                        o->off += (size_t) s;
                                else if (s == -EINTR)
                                        continue;
                                else if (s == -EAGAIN && now < o->until)
                                        return true;
                                else
                                        break; /* held as it is: the worker stopped reading, or closed it */
                        }
                        o->state = OPEN_HELD;
                        return false;
                default:
                        return false;
                }
        }
}

static int mode_conns(int n, size_t partial) {
        struct rlimit rl = { (rlim_t) n + 64, (rlim_t) n + 64 };
        struct conn *cs = calloc((size_t) n, sizeof *cs);
        struct opening *os = calloc((size_t) n, sizeof *os);
        struct pollfd *pfds = calloc((size_t) n, sizeof *pfds);
        int *active = calloc((size_t) n, sizeof *active);
        struct bytes b = {};
        int opened = 0, n_active = 0, next = 0;
        unsigned handshakes = 0;
        /* Plaintext: every connect at once. TLS: at most 64 handshakes in flight, so that none
         * waits for its turn longer than the worker's progress timeout. */
        int window = tls ? 64 : n;

        if (!cs || !os || !pfds || !active)
                return 2;
        for (int i = 0; i < n; i++)
                cs[i].fd = -1;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
        if (partial > 0) {
                uint8_t *junk = calloc(1, partial);
                add_header(&b, PEER_FRAME_MAX, PEER_REQ_BODY, 0, 1);
                add(&b, junk, partial);
                free(junk);
        }
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        /* Open them (bounded: 30 s for the connects, 10 s a handshake, 2 s to send what each
         * one sends; 90 s in all), then hold them. */
        uint64_t give_up = now_ms() + (tls ? 90000 : 30000);
        while ((next < n || n_active > 0) && now_ms() < give_up) {
                while (next < n && n_active < window) {
                        int i = next++;
                        cs[i] = (struct conn) { .fd = dial(true, 4096), .want = POLLOUT };
                        if (cs[i].fd < 0) {
                                fprintf(stderr, "connection %d: %s\n", i, strerror(-cs[i].fd));
                                cs[i].fd = -1;
                                continue;
                        }
                        opened++;
                        os[i] = (struct opening) { .state = OPEN_CONNECTING, .until = now_ms() + 30000 };
                        active[n_active++] = i;
                }
                for (int k = 0; k < n_active; k++)
                        pfds[k] = (struct pollfd) { .fd = cs[active[k]].fd, .events = cs[active[k]].want };
                int pr = poll(pfds, (nfds_t) n_active, 100);
                int kept = 0;
                for (int k = 0; k < n_active; k++) {
                        int i = active[k];
                        if (advance(&cs[i], &os[i], &b, pr > 0 && pfds[k].revents, &handshakes))
                                active[kept++] = i;
                }
                n_active = kept;
        }
        /* Out of time: a link still connecting or in its handshake is given up (counted as
         * closed); one still sending is held as it is. */
        for (int k = 0; k < n_active; k++)
                if (os[active[k]].state != OPEN_SENDING)
                        conn_close(&cs[active[k]]);
        if (tls)
                fprintf(stderr, "conns: %u TLS handshakes completed\n", handshakes);
        /* The worker closes those past its cap as it accepts them: count once that settled (no
         * change for 1 s; at most 20 s). */
        unsigned closed = count_closed(cs, n), last = closed;
        uint64_t settled = now_ms() + 1000, give_up_settle = now_ms() + 20000;
        while (now_ms() < settled && now_ms() < give_up_settle) {
                usleep(100 * 1000);
                closed = count_closed(cs, n);
                if (closed != last) {
                        last = closed;
                        settled = now_ms() + 1000;
                }
        }
        printf("conns: %d opened, %u closed by the worker\n", opened, closed);
        fflush(stdout);
        uint64_t end = now_ms() + 300000;
        while (!got_signal && now_ms() < end)
                usleep(50 * 1000);
        printf("conns: %u closed by the worker\n", count_closed(cs, n));
        fflush(stdout);
        for (int i = 0; i < n; i++)
                conn_close(&cs[i]);
        free(cs);
        free(os);
        free(pfds);
        free(active);
        free(b.p);
        return 0;
}

static int mode_stall(int n, uint64_t body_len, size_t here) {
        struct conn *cs = calloc((size_t) n, sizeof *cs);
        struct bytes b = {};
        int sent = 0;

        if (!cs)
                return 2;
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        add_req(&b, 1, "echo", "/echo", body_len, here);
        for (int i = 0; i < n; i++) {
                int r = conn_open(&cs[i], 0, false, now_ms() + 10000);
                if (r <= 0 || send_all(&cs[i], b.p, b.len) < 0) {
                        fprintf(stderr, "link %d: could not send%s%s\n", i, r == 0 ? ": " : "", r == 0 ? tls_why : "");
                        if (r > 0)
                                conn_close(&cs[i]);
                        cs[i].fd = -1;
                        continue;
                }
                sent++;
        }
        printf("stall: %d sent\n", sent);
        fflush(stdout);
        uint64_t end = now_ms() + 300000;
        while (!got_signal && now_ms() < end)
                usleep(50 * 1000);
        printf("stall: %u closed by the worker\n", count_closed(cs, n));
        for (int i = 0; i < n; i++)
                conn_close(&cs[i]);
        free(cs);
        free(b.p);
        return 0;
}

static int mode_slowread(const char *path) {
        char req[2048], buf[65536];
        struct sockaddr_in me;
        socklen_t l = sizeof me;
        uint64_t total = 0;
        const char *how = "timeout";
        int fd = dial(false, 4096), n;
        struct conn c = { .fd = fd }; /* plain HTTP to the proxy, with or without HOSTILE_TLS_* */
        sigset_t set;

        if (fd < 0) {
                fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(-fd));
                return 2;
        }
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
        if (send_all(&c, req, (size_t) n) < 0)
                return 2;
        getsockname(fd, (struct sockaddr *) &me, &l);
        printf("sent local_port=%u\n", ntohs(me.sin_port));
        fflush(stdout);
        struct timespec wait = { .tv_sec = 300 };
        (void) sigtimedwait(&set, NULL, &wait);
        uint64_t deadline = now_ms() + 60000;
        for (;;) {
                uint64_t now = now_ms();
                if (now >= deadline)
                        break;
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, (int) (deadline - now)) <= 0)
                        continue;
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r == 0) {
                        how = "eof";
                        break;
                }
                if (r < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        how = "reset";
                        break;
                }
                total += (uint64_t) r;
        }
        printf("read %llu bytes: %s\n", (unsigned long long) total, how);
        close(fd);
        return 0;
}

static int usage(void) {
        fprintf(stderr, "usage: hostile_peer flood|frame|request|cancel|conns|stall|http-slowread HOST PORT ...\n"
                        "(see the comment at the top of tests/tools/hostile_peer.c)\n");
        return 2;
}

int main(int argc, char **argv) {
        if (argc < 4)
                return usage();
        host = argv[2];
        port = atoi(argv[3]);
        signal(SIGPIPE, SIG_IGN); /* OpenSSL writes with write(): a closed link must not kill us */
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (strcmp(argv[1], "http-slowread") != 0)
                tls_setup();
        if (strcmp(argv[1], "flood") == 0 && argc >= 5)
                return mode_flood(atoi(argv[4]), argc >= 6 ? argv[5] : "echo", argc >= 7 ? argv[6] : "/echo");
        if (strcmp(argv[1], "frame") == 0 && argc == 5)
                return mode_frame(argv[4]);
        if (strcmp(argv[1], "request") == 0 && argc >= 5)
                return mode_request(argc - 4, argv + 4);
        if (strcmp(argv[1], "cancel") == 0 && argc == 5)
                return mode_cancel(atol(argv[4]));
        if (strcmp(argv[1], "conns") == 0 && argc >= 5)
                return mode_conns(atoi(argv[4]), argc >= 6 ? (size_t) atol(argv[5]) : 0);
        if (strcmp(argv[1], "stall") == 0 && argc == 7)
                return mode_stall(atoi(argv[4]), strtoull(argv[5], NULL, 10), (size_t) atol(argv[6]));
        if (strcmp(argv[1], "http-slowread") == 0 && argc == 5)
                return mode_slowread(argv[4]);
        return usage();
}
