/* Thread variant of the ring stress test, for ThreadSanitizer: a "proxy" thread and a "replica"
 * thread share one segment mapping (TSan tracks memory by address, so both sides must use the
 * same mapping) and run the same protocol as the cross-process test: every record is checked
 * byte for byte and echoed back, and idle sides sleep on the eventfd doorbells.
 *
 * RING_STRESS_RECORDS overrides the record count (default 300,000). */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macros.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "tap.h"

static uint64_t splitmix64(uint64_t x) {
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

#define STRESS_RING (256u * 1024)
#define STRESS_MAX_LEN 2000u
#define PATTERN_LEN (64u * 1024)

static uint8_t pattern[PATTERN_LEN + STRESS_MAX_LEN];

static void pattern_init(void) {
        for (size_t i = 0; i < sizeof(pattern); i += 8) {
                uint64_t v = splitmix64(i);
                memcpy(pattern + i, &v, 8);
        }
}

/* Everything about record `seq` is derived from seq: length, type, flags, and contents (the
 * sequence number itself in the first bytes, then a window of the pattern). */
struct expect {
        uint32_t len;
        uint16_t type, flags;
        const uint8_t *window;
};

static struct expect expect_for(uint64_t seq) {
        uint64_t h = splitmix64(seq);
        return (struct expect) {
                .len = (uint32_t) (h % (STRESS_MAX_LEN + 1)),
                .type = (uint16_t) (1 + (seq >> 16) % 1000),
                .flags = (uint16_t) seq,
                .window = pattern + (h >> 32) % PATTERN_LEN,
        };
}

static void stress_fill(void *p, uint64_t seq, const struct expect *e) {
        memcpy(p, e->window, e->len);
        memcpy(p, &seq, MIN(e->len, (uint32_t) sizeof(seq)));
}

static bool stress_check(const struct ring_record *rec, uint64_t seq, const char *who) {
        struct expect e = expect_for(seq);
        uint32_t k = MIN(e.len, (uint32_t) sizeof(seq));
        if (rec->len != e.len || rec->type != e.type || rec->flags != e.flags ||
            memcmp(rec->payload, &seq, k) != 0 ||
            memcmp((const uint8_t *) rec->payload + k, e.window + k, e.len - k) != 0) {
                fprintf(stderr, "# %s: record %" PRIu64 " is wrong (len %u want %u, type %u want %u, flags %u want %u)\n",
                        who, seq, rec->len, e.len, rec->type, e.type, rec->flags, e.flags);
                return false;
        }
        return true;
}

/* Sleeps until the doorbell rings, then drains its counter. */
static void doorbell_wait(int efd) {
        struct pollfd pfd = { .fd = efd, .events = POLLIN };
        uint64_t v;
        while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
                ;
        (void) !read(efd, &v, sizeof(v));
}

struct stress_stats {
        uint64_t records, sleeps, bells;
};

/* The replica: consume requests, echo each one on the response ring. Returns 0 or -1. */
static int stress_replica(struct segment *seg, uint64_t n, struct stress_stats *st) {
        uint64_t seq = 0;
        while (seq < n) {
                struct ring_record rec;
                unsigned batch = 0;
                int r;
                while ((r = ring_next(&seg->req, &rec)) == 1) {
                        if (!stress_check(&rec, seq, "replica"))
                                return -1;
                        void *pl;
                        int k;
                        /* Keep the request unreleased while we wait: its payload is still ours. */
                        while ((k = ring_alloc(&seg->resp, rec.type, rec.flags, rec.len, &pl)) == -EAGAIN) {
                                if (ring_publish(&seg->resp)) {
                                        doorbell_ring(seg->resp_bell);
                                        st->bells++;
                                }
                                sched_yield();
                        }
                        if (k < 0) {
                                fprintf(stderr, "# replica: ring_alloc: %s\n", strerror(-k));
                                return -1;
                        }
                        memcpy(pl, rec.payload, rec.len);
                        seq++;
                        if (++batch % 64 == 0) {
                                if (ring_publish(&seg->resp)) {
                                        doorbell_ring(seg->resp_bell);
                                        st->bells++;
                                }
                                ring_release(&seg->req);
                        }
                }
                if (r < 0) {
                        fprintf(stderr, "# replica: ring_next: %s\n", strerror(-r));
                        return -1;
                }
                if (ring_publish(&seg->resp)) {
                        doorbell_ring(seg->resp_bell);
                        st->bells++;
                }
                ring_release(&seg->req);
                if (batch > 0 || seq >= n)
                        continue;
                if (ring_consumer_prepare_sleep(&seg->req)) {
                        doorbell_wait(seg->req_bell);
                        st->sleeps++;
                }
                ring_consumer_awake(&seg->req);
        }
        st->records = seq;
        return 0;
}

/* The proxy: send n requests, check n echoes. Returns 0 or -1. */
static int stress_proxy(struct segment *seg, uint64_t n, struct stress_stats *st) {
        uint64_t sent = 0, recvd = 0;
        while (recvd < n) {
                unsigned batch = 0, got = 0;
                while (sent < n && batch < 256) {
                        struct expect e = expect_for(sent);
                        void *pl;
                        int r = ring_alloc(&seg->req, e.type, e.flags, e.len, &pl);
                        if (r == -EAGAIN)
                                break;
                        if (r < 0) {
                                fprintf(stderr, "# proxy: ring_alloc: %s\n", strerror(-r));
                                return -1;
                        }
                        stress_fill(pl, sent, &e);
                        sent++;
                        batch++;
                }
                if (batch > 0 && ring_publish(&seg->req)) {
                        doorbell_ring(seg->req_bell);
                        st->bells++;
                }

                struct ring_record rec;
                int r;
                while ((r = ring_next(&seg->resp, &rec)) == 1) {
                        if (!stress_check(&rec, recvd, "proxy"))
                                return -1;
                        recvd++;
                        got++;
                }
                if (r < 0) {
                        fprintf(stderr, "# proxy: ring_next: %s\n", strerror(-r));
                        return -1;
                }
                if (got > 0)
                        ring_release(&seg->resp);
                if (batch > 0 || got > 0)
                        continue;

                /* Nothing to send (ring full or all sent) and nothing to read: the replica owes us
                 * echoes, and rings when it publishes them. */
                if (ring_consumer_prepare_sleep(&seg->resp)) {
                        doorbell_wait(seg->resp_bell);
                        st->sleeps++;
                }
                ring_consumer_awake(&seg->resp);
        }
        st->records = recvd;
        return 0;
}

struct replica_arg {
        struct segment seg;
        uint64_t n;
        struct stress_stats st;
        int result;
};

static void *replica_thread(void *p) {
        struct replica_arg *a = p;
        a->result = stress_replica(&a->seg, a->n, &a->st);
        return NULL;
}

int main(void) {
        uint64_t n = 300000;
        const char *e = getenv("RING_STRESS_RECORDS");
        if (e)
                n = strtoull(e, NULL, 10);

        struct segment seg;
        struct stress_stats st = { 0 };
        pthread_t t;

        pattern_init();
        is_int(segment_create("ringx-threads", STRESS_RING, &seg), 0, "create the segment");

        /* The replica gets its own ring views (private cursors) over the same mapping and
         * eventfds, as it would after segment_attach() in another process. */
        struct replica_arg *a = calloc(1, sizeof(*a));
        if (!a)
                abort();
        a->seg = seg;
        a->n = n;
        ok(ring_attach(&a->seg.req, seg.req.sh, seg.ring_size, false) == 0 &&
           ring_attach(&a->seg.resp, seg.resp.sh, seg.ring_size, false) == 0, "replica views");

        ok(pthread_create(&t, NULL, replica_thread, a) == 0, "start the replica thread");
        alarm(300); /* a hang guard, not a timing assertion */
        int r = stress_proxy(&seg, n, &st);
        is_int(r, 0, "%" PRIu64 " records of 0..%u bytes went out and came back byte-exact, in order", n,
               STRESS_MAX_LEN);
        if (r < 0)
                _exit(tap_done());
        pthread_join(t, NULL);
        alarm(0);
        is_int(a->result, 0, "the replica thread saw every request intact");
        printf("# proxy: %" PRIu64 " sleeps, %" PRIu64 " doorbells; replica: %" PRIu64 " sleeps, %" PRIu64
               " doorbells\n", st.sleeps, st.bells, a->st.sleeps, a->st.bells);

        free(a);
        segment_close(&seg);
        return tap_done();
}
