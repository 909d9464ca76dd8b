/* netconn: callbacks run from the loop, never inside the netconn_* call that found the failure;
 * the progress timeout closes a silent peer; a listener's cap refuses the extra connection and
 * logs once; an idle connection holds no receive buffer. Sockets are socketpairs and loopback
 * TCP; the test waits for the loop's completions, never for time. */

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "macros.h"
#include "netconn.h"
#include "tap.h"

static struct loop loop;

/* Runs the loop until cond holds (bounded: a broken build fails instead of hanging). */
#define RUN_UNTIL(cond)                                                           \
        ({                                                                        \
                for (int _i = 0; !(cond) && _i < 200; _i++)                       \
                        loop_run_once(&loop, 50 * NSEC_PER_MSEC);                 \
                (cond);                                                           \
        })

/* An owner as the daemons have them: heap-allocated, freed in on_close. */
struct owner {
        struct netconn *nc;
        bool inside_call;     /* the test is inside a netconn_* call on this connection */
        int *closes;          /* counts on_close, outlives the owner */
        int *close_err;
        bool *closed_inside;  /* on_close ran inside a netconn_* call */
        size_t received;
        bool consume;         /* on_data consumes what arrived */
        size_t reply_len;     /* on_data writes this many bytes back (0: none) */
        bool after_reply;     /* set after the reply write returned: touches the owner */
        bool echo;
};

static void owner_on_data(struct netconn *nc) {
        struct owner *o = nc->userdata;
        static char big[4096];

        o->received += nc->in.len;
        if (o->echo)
                (void)netconn_write(nc, nc->in.data, nc->in.len);
        if (o->reply_len) {
                o->inside_call = true;
                (void)netconn_write(nc, big, o->reply_len);
                o->inside_call = false;
                o->after_reply = true; /* a use-after-free if on_close freed us inside the write */
        }
        if (o->consume || o->echo)
                buf_consume(&nc->in, nc->in.len);
}

static void owner_on_close(struct netconn *nc, int err) {
        struct owner *o = nc->userdata;

        (*o->closes)++;
        *o->close_err = err;
        if (o->inside_call)
                *o->closed_inside = true;
        free(o);
}

static const struct netconn_ops owner_ops = { .on_data = owner_on_data, .on_close = owner_on_close };

struct watch {
        int closes, err;
        bool inside;
};

/* A connection on one end of a socketpair; *ret_peer is the other end. */
static struct owner *owner_new(struct watch *w, int *ret_peer) {
        struct owner *o = calloc(1, sizeof *o);
        int sv[2];

        *w = (struct watch){};
        if (!o || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                abort();
        o->closes = &w->closes;
        o->close_err = &w->err;
        o->closed_inside = &w->inside;
        o->consume = true;
        if (netconn_adopt(&loop, sv[0], &owner_ops, o, &o->nc) < 0)
                abort();
        *ret_peer = sv[1];
        return o;
}

static void test_write_failure_is_deferred(void) {
        static char data[256];
        struct watch w;
        int peer;
        struct owner *o = owner_new(&w, &peer);
        struct netconn *nc = o->nc;

        nc->out_limit = 64;
        o->inside_call = true;
        int r = netconn_write(nc, data, sizeof data);
        o->inside_call = false;
        is_int(r, -ENOBUFS, "a write past out_limit fails");
        is_int(w.closes, 0, "on_close did not run inside netconn_write()");
        is_int(netconn_write(nc, data, 1), -EPIPE, "later writes see a closed connection");
        ok(RUN_UNTIL(w.closes > 0), "on_close runs from the loop");
        ok(!w.inside && w.closes == 1 && w.err == -ENOBUFS, "once, with -ENOBUFS (got %d, err %d)", w.closes, w.err);
        char c;
        is_int(recv(peer, &c, 1, 0), 0, "the peer sees the connection closed");
        close(peer);

        /* The same through an encoder writing to the output buffer, then netconn_flush(). */
        o = owner_new(&w, &peer);
        nc = o->nc;
        nc->out_limit = 64;
        (void)buf_append(netconn_outbuf(nc), data, sizeof data, SIZE_MAX);
        o->inside_call = true;
        netconn_flush(nc);
        o->inside_call = false;
        is_int(w.closes, 0, "on_close did not run inside netconn_flush()");
        ok(RUN_UNTIL(w.closes > 0) && !w.inside && w.closes == 1 && w.err == -ENOBUFS,
           "it runs from the loop, once, with -ENOBUFS");
        close(peer);

        /* An owner that closes after the failure takes over: no on_close at all. */
        o = owner_new(&w, &peer);
        nc = o->nc;
        nc->out_limit = 64;
        (void)netconn_write(nc, data, sizeof data);
        netconn_close(nc, false);
        free(o);
        for (int i = 0; i < 3; i++)
                loop_run_once(&loop, 0);
        is_int(w.closes, 0, "netconn_close() after a failure cancels the on_close still due");
        close(peer);
}

static void test_peer_closes_while_owner_writes(void) {
        struct watch w;
        int peer;
        struct owner *o = owner_new(&w, &peer);

        /* The peer sends a request and goes away; the owner answers it from on_data with a reply
         * that cannot be sent (past out_limit) and keeps using itself after the write, as
         * dataplane/peer.c does after netconn_flush(). */
        o->reply_len = 1024;
        o->nc->out_limit = 512;
        ok(send(peer, "req", 3, 0) == 3, "the peer sends a request");
        close(peer);
        ok(RUN_UNTIL(w.closes > 0), "the connection closes");
        ok(!w.inside, "on_close did not run inside the owner's write in on_data");
        is_int(w.closes, 1, "on_close ran once");

        /* The peer is gone while a reply is in flight: the send fails in the loop. */
        o = owner_new(&w, &peer);
        o->consume = true;
        close(peer);
        o->inside_call = true;
        int r = netconn_write(o->nc, "reply", 5);
        o->inside_call = false;
        ok(r == 0 || r == -EPIPE, "the write is queued (or refused) without a callback");
        is_int(w.closes, 0, "no on_close inside netconn_write()");
        ok(RUN_UNTIL(w.closes > 0) && w.closes == 1 && !w.inside, "on_close runs once, from the loop (err %d)", w.err);
}

static void test_receive_buffer(void) {
        struct watch w;
        int peer;
        struct owner *o = owner_new(&w, &peer);

        is_int(o->nc->in.cap, 0, "an accepted connection reserves no receive buffer");
        loop_run_once(&loop, 0);
        is_int(o->nc->in.cap, 0, "nor while it waits for bytes");

        ok(send(peer, "hello", 5, 0) == 5, "the peer sends 5 bytes");
        ok(RUN_UNTIL(o->received == 5), "they arrive");
        is_int(o->nc->in.cap, 0, "the buffer is given back once they are consumed");

        o->consume = false;
        ok(send(peer, "part", 4, 0) == 4, "the peer sends half a message");
        ok(RUN_UNTIL(o->received > 5), "it arrives");
        ok(o->nc->in.len == 4 && memcmp(o->nc->in.data, "part", 4) == 0,
           "what on_data leaves is kept for the next call");
        o->consume = true;

        /* A big message, then silence: the memory goes back. */
        static char big[300 * 1024];
        size_t sent = 0, want = o->received + 4 + sizeof big; /* "part" is seen again */
        while (sent < sizeof big) {
                ssize_t n = send(peer, big + sent, sizeof big - sent, MSG_DONTWAIT);
                if (n > 0)
                        sent += (size_t)n;
                else
                        loop_run_once(&loop, 50 * NSEC_PER_MSEC);
        }
        ok(RUN_UNTIL(o->received >= want), "300 KiB arrive");
        is_int(o->nc->in.cap, 0, "and leave no buffer behind");

        netconn_close(o->nc, false);
        free(o);
        close(peer);
}

static void test_progress_timeout(void) {
        const uint64_t timeout = 10 * NSEC_PER_SEC;
        struct watch wa, wb, wc;
        int pa, pb, pc;
        struct owner *a = owner_new(&wa, &pa), *b = owner_new(&wb, &pb), *c = owner_new(&wc, &pc);

        is_int(netconn_set_idle_timeout(a->nc, timeout), 0, "timeout set on a silent connection");
        is_int(netconn_set_idle_timeout(b->nc, timeout), 0, "and on one that will talk");
        is_int(netconn_set_idle_timeout(c->nc, timeout), 0, "and on one the owner pauses");
        netconn_pause(c->nc, true);
        uint64_t t_set = now_ns();
        ok(netconn_tick(&loop, t_set) > t_set, "a tick now finds nothing due and says when something is");
        loop_run_once(&loop, 0);
        ok(wa.closes + wb.closes + wc.closes == 0, "no connection closed before its time");

        /* b talks after every timeout was set: its deadline moves past a's. */
        uint64_t t_mid;
        while ((t_mid = now_ns()) <= t_set)
                ;
        ok(send(pb, "x", 1, 0) == 1, "b's peer sends a byte");
        ok(RUN_UNTIL(b->received == 1), "it arrives");

        uint64_t next = netconn_tick(&loop, t_mid + timeout - 1);
        is_int(wa.closes, 0, "the timeout's on_close does not run inside netconn_tick()");
        ok(RUN_UNTIL(wa.closes > 0) && wa.closes == 1 && wa.err == -ETIMEDOUT,
           "the silent connection is closed with -ETIMEDOUT (err %d)", wa.err);
        char ch;
        is_int(recv(pa, &ch, 1, 0), 0, "and its peer sees it closed");
        is_int(wb.closes, 0, "the connection that talked stays open");
        is_int(wc.closes, 0, "the paused connection, with nothing to send, stays open");
        ok(next != UINT64_MAX && next >= t_mid + timeout, "the next deadline is b's or c's");

        netconn_pause(c->nc, false);
        netconn_tick(&loop, now_ns() + 2 * timeout);
        ok(RUN_UNTIL(wb.closes > 0 && wc.closes > 0) && wb.err == -ETIMEDOUT && wc.err == -ETIMEDOUT,
           "once silent for the whole timeout, both are closed too");
        is_int(netconn_tick(&loop, now_ns()), (long long)UINT64_MAX, "then nothing is due");
        close(pa);
        close(pb);
        close(pc);
}

/* ---- the listener's cap ---- */

struct server {
        struct list owners;
        int accepted;
        struct watch w[8];
};

static void server_on_accept(struct netlistener *l, int fd) {
        struct server *s = l->userdata;
        struct owner *o = calloc(1, sizeof *o);
        struct watch *w = &s->w[s->accepted++ % 8];

        o->closes = &w->closes;
        o->close_err = &w->err;
        o->closed_inside = &w->inside;
        o->echo = true;
        if (netconn_adopt(l->loop, fd, &owner_ops, o, &o->nc) < 0)
                abort();
}

static int client(int port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
                abort();
        return fd;
}

static bool readable(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, 0) > 0;
}

static size_t count_lines(FILE *f, const char *needle) {
        char line[1024];
        size_t n = 0;

        rewind(f);
        while (fgets(line, sizeof line, f))
                n += strstr(line, needle) != NULL;
        return n;
}

static void test_listener_limit(void) {
        struct netlistener l;
        struct server s = {};
        int c[6];

        /* Log lines go to stderr: catch them in a file. */
        FILE *logf = tmpfile();
        int saved_stderr = dup(STDERR_FILENO);
        fflush(stderr);
        dup2(fileno(logf), STDERR_FILENO);

        is_int(netlistener_open(&l, &loop, "127.0.0.1", 0, server_on_accept, &s), 0, "listening on loopback");
        netlistener_set_limit(&l, 2, "the test port");
        int port = netlistener_port(&l);

        for (int i = 0; i < 5; i++)
                c[i] = client(port);
        ok(RUN_UNTIL(l.n_open + l.n_refused == 5), "five connections handled");
        is_int(l.n_open, 2, "two are open");
        is_int(s.accepted, 2, "the owner saw two");
        is_int(l.n_refused, 3, "three were refused");

        ok(send(c[0], "ping", 4, 0) == 4, "the first client sends");
        ok(RUN_UNTIL(readable(c[0])), "and is answered");
        char buf[8] = {};
        ok(recv(c[0], buf, sizeof buf, 0) == 4 && memcmp(buf, "ping", 4) == 0, "with its echo");
        bool refused_closed = true;
        for (int i = 2; i < 5; i++)
                refused_closed &= recv(c[i], buf, sizeof buf, 0) <= 0;
        ok(refused_closed, "the refused clients see their connection closed");

        /* One closes: a new one fits again. */
        close(c[0]);
        ok(RUN_UNTIL(l.n_open == 1), "a client leaves: one connection open");
        c[5] = client(port);
        ok(RUN_UNTIL(s.accepted == 3), "a new client is accepted");
        is_int(l.n_refused, 3, "and not refused");

        fflush(stderr);
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        is_int(count_lines(logf, "Refusing new connections to the test port"), 1,
               "three refusals, one log line");
        is_int(count_lines(logf, "test port"), 1, "and no other line about it");
        fclose(logf);

        /* Connections may outlive their listener. */
        netlistener_close(&l);
        is_int(l.n_open, 0, "a closed listener counts nothing");
        close(c[1]);
        close(c[5]);
        ok(RUN_UNTIL(s.w[1].closes == 1 && s.w[2].closes == 1), "its connections still close cleanly");
        for (int i = 2; i < 5; i++)
                close(c[i]);
}

int main(void) {
        int r = loop_init(&loop, 64);
        if (r < 0) {
                printf("1..0 # SKIP no io_uring here (%s)\n", strerror(-r));
                return 77;
        }
        log_set_level(LOG_WARNING);

        test_write_failure_is_deferred();
        test_peer_closes_while_owner_writes();
        test_receive_buffer();
        test_progress_timeout();
        test_listener_limit();

        loop_drain(&loop, 100 * NSEC_PER_MSEC);
        loop_free(&loop);
        return tap_done();
}
