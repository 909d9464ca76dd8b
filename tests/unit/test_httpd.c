/* The control plane's small HTTP server as a client sees it: answers now or later (a deferred
 * answer reaches a waiting client, and is harmless once the client or the server went away), a
 * client that sends nothing is closed after the header timeout, and connections beyond the cap
 * are closed as they are accepted while those within it are served. One thread: the test
 * drives the server's loop between its own client calls. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/loop.h"
#include "common/macros.h"
#include "http/httpd.h"
#include "tap.h"

static struct loop loop;
static struct httpd_deferred *deferred;

static void handler(void *userdata, const struct httpd_request *rq, struct httpd_response *resp) {
        if (httpd_is(rq, "GET", "/later")) {
                deferred = httpd_defer(rq);
                return;
        }
        resp->content_type = "text/plain";
        (void)buf_append(&resp->body, "now", 3, SIZE_MAX);
}

static int client(int port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                perror("connect");
                exit(1);
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        return fd;
}

static void send_str(int fd, const char *s) {
        if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) {
                perror("write");
                exit(1);
        }
}

/* Runs the server until the client's connection ends (or 5 s pass); returns what it read and
 * whether the server closed it (EOF or reset) in *closed. */
static char *read_until_closed(int fd, bool *closed) {
        static char out[8192];
        size_t len = 0;
        uint64_t end = now_ns() + 5 * NSEC_PER_SEC;

        *closed = false;
        while (now_ns() < end && len < sizeof out - 1) {
                loop_run_once(&loop, 10 * NSEC_PER_MSEC);
                ssize_t n = read(fd, out + len, sizeof out - 1 - len);
                if (n > 0)
                        len += (size_t)n;
                else if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                        *closed = true;
                        break;
                }
        }
        out[len] = 0;
        return out;
}

/* Runs the server for a while; true if the client's connection is still open and silent. */
static bool still_open(int fd) {
        char c;
        for (int i = 0; i < 10; i++)
                loop_run_once(&loop, 5 * NSEC_PER_MSEC);
        return read(fd, &c, 1) < 0 && errno == EAGAIN;
}

static bool spin_until(bool (*pred)(struct httpd *), struct httpd *h) {
        uint64_t end = now_ns() + 5 * NSEC_PER_SEC;
        while (!pred(h) && now_ns() < end)
                loop_run_once(&loop, 10 * NSEC_PER_MSEC);
        return pred(h);
}

static bool no_conns(struct httpd *h) { return h->n_conns == 0; }

int main(void) {
        struct httpd h, quick;
        struct httpd_options o = { .max_body = 1024, .max_connections = 3, .what = "test" };
        struct httpd_options oq = { .max_body = 1024, .header_timeout_s = 0.2, .what = "quick" };
        struct httpd_response resp = { .status = 200, .content_type = "text/plain" };
        bool closed;
        char *got;
        int port, a, b, c, d;

        if (loop_init(&loop, 64) < 0) {
                printf("1..0 # SKIP no io_uring\n");
                return 77;
        }
        if (httpd_open_with(&h, &loop, "127.0.0.1", 0, &o, handler, NULL) < 0) {
                perror("httpd_open_with");
                return 1;
        }
        port = httpd_port(&h);
        (void)buf_append(&resp.body, "later", 5, SIZE_MAX);

        a = client(port);
        send_str(a, "GET /now HTTP/1.1\r\nHost: x\r\n\r\n");
        got = read_until_closed(a, &closed);
        ok(strncmp(got, "HTTP/1.1 200 OK", 15) == 0 && strstr(got, "\r\n\r\nnow"), "an immediate answer arrives");
        ok(closed, "and the connection closes after it");
        close(a);

        a = client(port);
        send_str(a, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n");
        ok(still_open(a) && deferred, "a deferred request waits for its answer");
        httpd_answer(TAKE_PTR(deferred), &resp);
        got = read_until_closed(a, &closed);
        ok(closed && strstr(got, "\r\n\r\nlater"), "the deferred answer arrives when given");
        close(a);
        ok(spin_until(no_conns, &h), "no connection is left");

        a = client(port);
        send_str(a, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n");
        ok(still_open(a) && deferred, "another deferred request waits");
        close(a);
        ok(spin_until(no_conns, &h), "its client goes away: the server forgets the connection");
        httpd_answer(TAKE_PTR(deferred), &resp); /* must be harmless */
        ok(true, "answering after the client went away is harmless");

        if (httpd_open_with(&quick, &loop, "127.0.0.1", 0, &oq, handler, NULL) < 0) {
                perror("httpd_open_with");
                return 1;
        }
        a = client(httpd_port(&quick));
        got = read_until_closed(a, &closed);
        ok(closed && !*got, "a client that sends nothing is closed after the header timeout");
        close(a);
        httpd_close(&quick);

        a = client(port);
        b = client(port);
        c = client(port);
        d = client(port);
        got = read_until_closed(d, &closed);
        ok(closed && !*got, "a connection beyond the cap is closed as it is accepted");
        ok(still_open(a) && still_open(b) && still_open(c), "the connections within the cap stay open");
        send_str(a, "GET /now HTTP/1.1\r\nHost: x\r\n\r\n");
        got = read_until_closed(a, &closed);
        ok(strstr(got, "\r\n\r\nnow") != NULL, "and are served");
        send_str(b, "GET /later HTTP/1.1\r\nHost: x\r\n\r\n");
        ok(still_open(b) && deferred, "a request deferred when the server closes");
        close(a);
        close(b);
        close(c);
        close(d);

        httpd_close(&h);
        httpd_answer(TAKE_PTR(deferred), &resp);
        ok(true, "is answered harmlessly after the server closed");
        loop_drain(&loop, 200 * NSEC_PER_MSEC);
        loop_free(&loop);
        buf_free(&resp.body);
        return tap_done();
}
