/* idle_conns: opens N keep-alive connections to 127.0.0.1:PORT, makes one request on each
 * (GET /-/healthz) and reads the whole response, so every connection is really accepted and
 * served, then holds them all open and idle. Prints "ready" when all N are served, then waits
 * for a newline (or EOF) on stdin or for SIGINT/SIGTERM, and exits after printing on stderr how
 * many connections the server closed while they idled.
 *
 *   idle_conns PORT [N] [PATH]      (N defaults to 10000, PATH to /-/healthz)
 *
 * A benchmark helper: it measures nothing itself. Exits 1 if a connection cannot be set up. */

#define _GNU_SOURCE 1 /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MAX_CONNECTING 256 /* connects in flight at once: stays well inside the listen backlog */
#define RESP_MAX 4096
#define SETUP_TIMEOUT_S 120
#define STDIN_TAG UINT32_MAX

enum state { IDLE_NEW, IDLE_CONNECTING, IDLE_READING, IDLE_HELD, IDLE_CLOSED };

struct conn {
        int fd;
        enum state state;
        size_t got;
        char *buf;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
        stop = 1;
}

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Returns the full length of the response in buf (head + Content-Length body) once it is all
 * there, 0 while more is needed, -1 when it cannot be parsed. */
static ssize_t response_length(const char *buf, size_t len) {
        const char *end = memmem(buf, len, "\r\n\r\n", 4);
        if (!end)
                return len >= RESP_MAX - 1 ? -1 : 0;
        size_t head = (size_t) (end - buf) + 4;
        unsigned long body = 0;
        /* Header lines start after each CRLF up to the end of the head. */
        for (const char *p = memmem(buf, (size_t) (end - buf), "\r\n", 2); p && p < end;
             p = memmem(p + 2, (size_t) (end - p), "\r\n", 2))
                if (strncasecmp(p + 2, "content-length:", 15) == 0)
                        body = strtoul(p + 17, NULL, 10);
        if (head + body > RESP_MAX - 1)
                return -1;
        return len >= head + body ? (ssize_t) (head + body) : 0;
}

static int start_connect(int ep, struct conn *c, uint32_t idx, const struct sockaddr_in *sa) {
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
                return -errno;
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (const struct sockaddr *) sa, sizeof *sa) < 0 && errno != EINPROGRESS)
                return -errno;
        struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = idx };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                return -errno;
        c->state = IDLE_CONNECTING;
        return 0;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s PORT [N] [PATH]\n", argv[0]);
                return 2;
        }
        int port = atoi(argv[1]);
        long n = argc > 2 ? strtol(argv[2], NULL, 10) : 10000;
        const char *path = argc > 3 ? argv[3] : "/-/healthz";
        if (port <= 0 || port > 65535 || n <= 0 || n > 1000000) {
                fprintf(stderr, "bad PORT or N\n");
                return 2;
        }

        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t) n + 16) {
                fprintf(stderr, "RLIMIT_NOFILE is %llu, need %ld (try ulimit -n %ld as root)\n",
                        (unsigned long long) rl.rlim_cur, n + 16, n + 16);
                return 1;
        }

        struct sigaction sa_sig = { .sa_handler = on_signal }; /* no SA_RESTART: epoll_wait sees EINTR */
        sigaction(SIGINT, &sa_sig, NULL);
        sigaction(SIGTERM, &sa_sig, NULL);
        signal(SIGPIPE, SIG_IGN);

        char req[512];
        int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);

        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) };
        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);

        struct conn *conns = calloc((size_t) n, sizeof *conns);
        char *bufs = malloc((size_t) n * RESP_MAX);
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (!conns || !bufs || ep < 0) {
                perror("setup");
                return 1;
        }
        for (long i = 0; i < n; i++) {
                conns[i].fd = -1;
                conns[i].buf = bufs + i * RESP_MAX;
        }

        long next = 0, connecting = 0, held = 0, closed = 0;
        double deadline = now_s() + SETUP_TIMEOUT_S;
        struct epoll_event evs[256];

        /* Setup: keep up to MAX_CONNECTING connects in flight; each connection sends its request
         * once connected and is held once its whole response has been read. */
        while (held < n) {
                while (next < n && connecting < MAX_CONNECTING) {
                        int r = start_connect(ep, &conns[next], (uint32_t) next, &sa);
                        if (r < 0) {
                                fprintf(stderr, "connection %ld: connect: %s\n", next, strerror(-r));
                                return 1;
                        }
                        next++;
                        connecting++;
                }
                if (stop)
                        return 1;
                if (now_s() > deadline) {
                        fprintf(stderr, "timed out: %ld of %ld connections served\n", held, n);
                        return 1;
                }
                int k = epoll_wait(ep, evs, 256, 1000);
                if (k < 0 && errno != EINTR) {
                        perror("epoll_wait");
                        return 1;
                }
                for (int e = 0; e < k; e++) {
                        uint32_t idx = evs[e].data.u32;
                        struct conn *c = &conns[idx];
                        if (c->state == IDLE_CONNECTING) {
                                int err = 0;
                                socklen_t l = sizeof err;
                                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                                if (err) {
                                        fprintf(stderr, "connection %u: connect: %s\n", idx, strerror(err));
                                        return 1;
                                }
                                /* The request is tiny: one write fits in a fresh socket buffer. */
                                if (write(c->fd, req, (size_t) req_len) != req_len) {
                                        fprintf(stderr, "connection %u: write: %m\n", idx);
                                        return 1;
                                }
                                struct epoll_event ev = { .events = EPOLLIN, .data.u32 = idx };
                                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                                c->state = IDLE_READING;
                        } else if (c->state == IDLE_READING) {
                                ssize_t got = read(c->fd, c->buf + c->got, RESP_MAX - 1 - c->got);
                                if (got < 0 && (errno == EAGAIN || errno == EINTR))
                                        continue;
                                if (got <= 0) {
                                        fprintf(stderr, "connection %u: %s before the response was complete\n",
                                                idx, got == 0 ? "closed" : strerror(errno));
                                        return 1;
                                }
                                c->got += (size_t) got;
                                ssize_t len = response_length(c->buf, c->got);
                                if (len < 0) {
                                        fprintf(stderr, "connection %u: unparsable response\n", idx);
                                        return 1;
                                }
                                if (len == 0)
                                        continue;
                                if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
                                        fprintf(stderr, "connection %u: response %.40s\n", idx, c->buf);
                                        return 1;
                                }
                                /* Held: from now on any readiness means the server closed it
                                 * (or sent something unasked). */
                                struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = idx };
                                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                                c->state = IDLE_HELD;
                                connecting--;
                                held++;
                        } else if (c->state == IDLE_HELD) {
                                /* The server closed a connection it had already served. */
                                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                                c->state = IDLE_CLOSED;
                                closed++;
                        }
                }
        }

        printf("ready\n");
        fflush(stdout);

        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = STDIN_TAG };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0) {
                /* stdin is a file or /dev/null (epoll refuses those): read it directly. */
                char b[256];
                ssize_t got;
                while (!stop && (got = read(STDIN_FILENO, b, sizeof b)) > 0 && !memchr(b, '\n', (size_t) got))
                        ;
                stop = 1;
        }
        while (!stop) {
                int k = epoll_wait(ep, evs, 256, -1);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("epoll_wait");
                        return 1;
                }
                for (int e = 0; e < k; e++) {
                        uint32_t idx = evs[e].data.u32;
                        if (idx == STDIN_TAG) {
                                char b[256];
                                ssize_t got = read(STDIN_FILENO, b, sizeof b);
                                if (got <= 0 || memchr(b, '\n', (size_t) got))
                                        stop = 1;
                        } else if (conns[idx].state == IDLE_HELD) {
                                epoll_ctl(ep, EPOLL_CTL_DEL, conns[idx].fd, NULL);
                                conns[idx].state = IDLE_CLOSED;
                                closed++;
                        }
                }
        }
        fprintf(stderr, "idle_conns: %ld connections served, %ld closed by the server while idle\n", held,
                closed);
        for (long i = 0; i < n; i++)
                close(conns[i].fd);
        close(ep);
        free(bufs);
        free(conns);
        return 0;
}
