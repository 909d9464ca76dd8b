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
 *       Opens N connections at once (each sending, when PARTIAL_BYTES > 0, the header of a
 *       1 MiB REQ_BODY frame and PARTIAL_BYTES of its payload), prints "conns: N opened, K
 *       closed by the worker" once they are connected and K did not change for 1 s, then holds
 *       them until SIGTERM (or 300 s) and prints "conns: K closed by the worker" again.
 *   stall HOST PORT N BODY_BYTES HERE_BYTES
 *       Opens N links; on each sends one REQ for echo:/echo announcing a BODY_BYTES body with only
 *       HERE_BYTES of it, then nothing. Prints "stall: N sent", holds them until SIGTERM (or
 *       300 s), then prints "stall: K closed by the worker".
 *   http-slowread HOST PORT PATH
 *       HTTP: sends "GET PATH" with a tiny receive buffer and reads nothing; prints
 *       "sent local_port=P", then waits for SIGUSR1 (at most 300 s), then reads everything until
 *       the server closes (at most 60 s) and prints "read N bytes: eof|reset|timeout". */

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

static int dial_or_die(void) {
        int fd = dial(false, 0);
        if (fd < 0) {
                fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(-fd));
                exit(2);
        }
        return fd;
}

/* Writes everything (blocking socket). Returns 0, or -errno when the worker closed the link. */
static int send_all(int fd, const void *data, size_t len) {
        const uint8_t *p = data;
        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                len -= (size_t) n;
        }
        return 0;
}

/* Reads exactly len bytes before the deadline. Returns 1, 0 (EOF), -ECONNRESET etc., or
 * -ETIMEDOUT. */
static int recv_exact(int fd, void *buf, size_t len, uint64_t deadline) {
        uint8_t *p = buf;
        while (len > 0) {
                uint64_t now = now_ms();
                if (now >= deadline)
                        return -ETIMEDOUT;
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int r = poll(&pfd, 1, (int) (deadline - now));
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (r <= 0)
                        continue;
                ssize_t n = recv(fd, p, len, 0);
                if (n == 0)
                        return 0;
                if (n < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        return -errno;
                }
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

/* Reads one frame. Returns 1, 0 (the worker closed the link), -ETIMEDOUT, or -EBADMSG when the
 * worker sent something that is not a frame (that is a finding: printed by the caller). */
static int read_frame(int fd, struct frame *f, uint64_t deadline) {
        uint8_t h[HDR];
        int r = recv_exact(fd, h, HDR, deadline);
        if (r <= 0)
                return r == -ECONNRESET || r == -EPIPE ? 0 : r;
        f->len = get32(h);
        f->type = h[4];
        f->status = get16(h + 6);
        f->stream = get64(h + 8);
        if (f->len > PEER_FRAME_MAX || f->type < PEER_REQ || f->type > PEER_FAIL)
                return -EBADMSG;
        free(f->payload);
        f->payload = malloc(f->len + 1);
        if (!f->payload)
                exit(2);
        r = recv_exact(fd, f->payload, f->len, deadline);
        if (r <= 0)
                return r == -ECONNRESET || r == -EPIPE ? 0 : r;
        f->payload[f->len] = 0;
        return 1;
}

/* Prints the answer to stream `stream`: "RESP STATUS len=N body=...", "FAIL STATUS reason",
 * "REJECT STATUS", "closed", "timeout" or "garbage". Returns false when the link is gone. */
static bool print_answer(int fd, uint64_t stream, int timeout_s) {
        uint64_t deadline = now_ms() + (uint64_t) timeout_s * 1000;
        struct frame f = {};
        uint64_t body_len = 0, got = 0;
        char first[41] = "";
        int status = 0, r;
        bool ok = true;

        for (;;) {
                r = read_frame(fd, &f, deadline);
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
                        char c = (char) body[i];
                        first[have++] = c >= ' ' && c < 127 ? c : '.';
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
static void print_fate(int fd, int timeout_s) {
        uint64_t deadline = now_ms() + (uint64_t) timeout_s * 1000;
        struct frame f = {};

        for (;;) {
                int r = read_frame(fd, &f, deadline);
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
        int fd = -1, small = 4096;

        while (now_ms() < end) {
                if (fd < 0) {
                        fd = dial(false, small);
                        if (fd < 0) {
                                /* The data port refuses (its cap) or the worker is busy: retry. */
                                usleep(50 * 1000);
                                continue;
                        }
                        links++;
                        /* Sends wait at most 200 ms, so the time bound holds while the worker
                         * (rightly) stops reading us. */
                        struct timeval tv = { .tv_usec = 200 * 1000 };
                        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                }
                frame.len = 0;
                add_request(&frame, stream++, app, path, 60000);
                size_t off = 0;
                while (off < frame.len && now_ms() < end) {
                        ssize_t n = send(fd, frame.p + off, frame.len - off, MSG_NOSIGNAL);
                        if (n > 0) {
                                off += (size_t) n;
                                bytes += (uint64_t) n;
                                continue;
                        }
                        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                                continue;
                        /* The worker closed the link: it is allowed to. */
                        closed++;
                        close(fd);
                        fd = -1;
                        break;
                }
                if (fd >= 0 && off == frame.len)
                        requests++;
        }
        if (fd >= 0)
                close(fd);
        free(frame.p);
        printf("flood: %llu requests, %llu bytes, %llu links, %llu closed by the worker\n",
               (unsigned long long) requests, (unsigned long long) bytes, (unsigned long long) links,
               (unsigned long long) closed);
        return 0;
}

static int mode_frame(const char *c) {
        struct bytes b = {};
        uint8_t junk[4096];
        bool shut = false;
        int fd;

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
        fd = dial_or_die();
        if (send_all(fd, b.p, b.len) < 0) {
                printf("closed\n");
                return 0;
        }
        if (shut)
                shutdown(fd, SHUT_WR);
        print_fate(fd, 10);
        close(fd);
        free(b.p);
        return 0;
}

static int mode_request(int n, char **specs) {
        int fd = dial_or_die();
        struct bytes b = {};

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
                int r = send_all(fd, b.p, b.len);
                free(spec);
                if (r < 0 || !print_answer(fd, (uint64_t) i + 1, 30)) {
                        if (r < 0)
                                printf("closed\n");
                        break;
                }
        }
        free(b.p);
        close(fd);
        return 0;
}

static int mode_cancel(long count) {
        int fd = dial_or_die();
        struct bytes b = {};

        for (long i = 0; i < count; i++) {
                add_frame(&b, PEER_CANCEL, 0, (uint64_t) i * 7919 + 1000000, NULL, 0);
                if (b.len >= 1 << 20 || i == count - 1) {
                        if (send_all(fd, b.p, b.len) < 0) {
                                printf("closed\n");
                                return 0;
                        }
                        b.len = 0;
                }
        }
        add_request(&b, 1, "echo", "/echo", 2);
        if (send_all(fd, b.p, b.len) < 0)
                printf("closed\n");
        else
                print_answer(fd, 1, 30);
        free(b.p);
        close(fd);
        return 0;
}

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

static unsigned count_closed(int *fds, int n) {
        unsigned closed = 0;
        char tmp[256];

        for (int i = 0; i < n; i++) {
                if (fds[i] < 0) {
                        closed++;
                        continue;
                }
                struct pollfd p = { .fd = fds[i], .events = POLLIN | POLLRDHUP };
                if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLIN))) {
                        /* What the worker answered before it closed (a FAIL for a refused
                         * request) comes first: read past it to the end of the stream. */
                        ssize_t r;
                        while ((r = recv(fds[i], tmp, sizeof tmp, MSG_DONTWAIT)) > 0)
                                ;
                        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                                close(fds[i]);
                                fds[i] = -1;
                                closed++;
                        }
                }
        }
        return closed;
}

static int mode_conns(int n, size_t partial) {
        struct rlimit rl = { (rlim_t) n + 64, (rlim_t) n + 64 };
        int *fds = calloc((size_t) n, sizeof *fds);
        struct bytes b = {};
        int opened = 0;

        if (!fds)
                return 2;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
        if (partial > 0) {
                uint8_t *junk = calloc(1, partial);
                add_header(&b, PEER_FRAME_MAX, PEER_REQ_BODY, 0, 1);
                add(&b, junk, partial);
                free(junk);
        }
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        for (int i = 0; i < n; i++) {
                fds[i] = dial(true, 4096);
                if (fds[i] < 0) {
                        fprintf(stderr, "connection %d: %s\n", i, strerror(-fds[i]));
                        fds[i] = -1;
                        continue;
                }
                opened++;
        }
        /* Wait (bounded) for the connects to complete, then send what each one sends. */
        uint64_t deadline = now_ms() + 30000;
        for (int i = 0; i < n; i++) {
                if (fds[i] < 0)
                        continue;
                struct pollfd p = { .fd = fds[i], .events = POLLOUT };
                int err = 0;
                socklen_t l = sizeof err;
                while (poll(&p, 1, 100) == 0 && now_ms() < deadline)
                        ;
                if (getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
                        close(fds[i]);
                        fds[i] = -1;
                        continue;
                }
                if (b.len) {
                        size_t off = 0;
                        uint64_t until = now_ms() + 2000;
                        while (off < b.len && now_ms() < until) {
                                ssize_t s = send(fds[i], b.p + off, b.len - off, MSG_NOSIGNAL);
                                if (s > 0)
                                        off += (size_t) s;
                                else if (s < 0 && errno != EAGAIN && errno != EINTR)
                                        break;
                                else {
                                        struct pollfd w = { .fd = fds[i], .events = POLLOUT };
                                        (void) poll(&w, 1, 50);
                                }
                        }
                }
        }
        /* The worker closes those past its cap as it accepts them: count once that settled (no
         * change for 1 s; at most 20 s). */
        unsigned closed = count_closed(fds, n), last = closed;
        uint64_t settled = now_ms() + 1000, give_up = now_ms() + 20000;
        while (now_ms() < settled && now_ms() < give_up) {
                usleep(100 * 1000);
                closed = count_closed(fds, n);
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
        printf("conns: %u closed by the worker\n", count_closed(fds, n));
        fflush(stdout);
        for (int i = 0; i < n; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        free(fds);
        free(b.p);
        return 0;
}

static int mode_stall(int n, uint64_t body_len, size_t here) {
        int *fds = calloc((size_t) n, sizeof *fds);
        struct bytes b = {};
        int sent = 0;

        if (!fds)
                return 2;
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
        add_req(&b, 1, "echo", "/echo", body_len, here);
        for (int i = 0; i < n; i++) {
                fds[i] = dial(false, 0);
                if (fds[i] < 0 || send_all(fds[i], b.p, b.len) < 0) {
                        fprintf(stderr, "link %d: could not send\n", i);
                        continue;
                }
                sent++;
        }
        printf("stall: %d sent\n", sent);
        fflush(stdout);
        uint64_t end = now_ms() + 300000;
        while (!got_signal && now_ms() < end)
                usleep(50 * 1000);
        printf("stall: %u closed by the worker\n", count_closed(fds, n));
        for (int i = 0; i < n; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        free(fds);
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
        sigset_t set;

        if (fd < 0) {
                fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(-fd));
                return 2;
        }
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        sigprocmask(SIG_BLOCK, &set, NULL);
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
        if (send_all(fd, req, (size_t) n) < 0)
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
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);
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
