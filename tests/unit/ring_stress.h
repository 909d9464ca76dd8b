/* The ring stress test shared by test_ring (the replica in a child process, ASan) and
 * test_ring_threads (the replica in a thread, TSan): the proxy side sends records of
 * pseudo-random length and content, the replica side checks every byte and echoes them back,
 * the proxy checks the echoes; both sleep on the eventfd doorbells when idle. */
#pragma once

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "macros.h"
#include "shm/ring.h"
#include "shm/segment.h"

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
