/* Ring benchmark: a producer and a consumer process (fork) share a memfd segment, pinned to
 * different CPUs when there are two or more. Prints throughput; asserts nothing.
 *
 *   batched 64B:   the producer publishes once per 64 records, the consumer releases per 64
 *   unbatched 64B: publish and release after every record
 *   4KiB records:  the producer copies 4 KiB in, the consumer copies it out (as a consumer of an
 *                  untrusted peer must), batches of 16
 *
 * Each run lasts about RING_BENCH_SECONDS (default 1). The consumer checks every sequence number
 * and sleeps on the eventfd doorbell when it has spun idle for a while. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "macros.h"
#include "shm/ring.h"
#include "shm/segment.h"

#define BENCH_RING (256u * 1024)
#define TYPE_DATA 1
#define TYPE_END 2
#define SPIN_BEFORE_SLEEP 20000

struct scenario {
        const char *name;
        uint32_t len;          /* payload bytes */
        unsigned pub_batch;    /* records per publish */
        unsigned rel_batch;    /* records per release */
        bool copy;             /* copy a whole payload in and out */
};

struct result {
        uint64_t records;      /* data records the consumer saw */
        uint64_t sleeps;
        int error;             /* 0, or what went wrong on the consumer side */
};

static int cpus[2] = { -1, -1 };

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

static void pin(int cpu) {
        if (cpu < 0)
                return;
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) < 0)
                fprintf(stderr, "warning: cannot pin to CPU %d: %s\n", cpu, strerror(errno));
}

static void pick_cpus(void) {
        cpu_set_t set;
        int n = 0;
        if (sched_getaffinity(0, sizeof(set), &set) < 0)
                return;
        for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
                if (CPU_ISSET(c, &set))
                        cpus[n++] = c;
        if (n < 2)
                cpus[0] = cpus[1] = -1; /* one CPU: let the scheduler interleave us */
}

static void doorbell_wait(int efd) {
        struct pollfd pfd = { .fd = efd, .events = POLLIN };
        uint64_t v;
        while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
                ;
        (void) !read(efd, &v, sizeof(v));
}

static void idle_wait(void) {
        if (cpus[0] >= 0)
                cpu_relax();
        else
                sched_yield();
}

static struct result consume(struct segment *seg, const struct scenario *sc) {
        struct result res = { 0 };
        uint8_t *copy = malloc(sc->len ? sc->len : 1);
        unsigned unreleased = 0, idle = 0;

        if (!copy) {
                res.error = -ENOMEM;
                return res;
        }
        for (;;) {
                struct ring_record rec;
                int r = ring_next(&seg->req, &rec);
                if (r < 0) {
                        res.error = r;
                        break;
                }
                if (r == 0) {
                        if (unreleased > 0) {
                                ring_release(&seg->req);
                                unreleased = 0;
                        }
                        if (++idle < SPIN_BEFORE_SLEEP) {
                                idle_wait();
                                continue;
                        }
                        if (ring_consumer_prepare_sleep(&seg->req)) {
                                doorbell_wait(seg->req_bell);
                                res.sleeps++;
                        }
                        ring_consumer_awake(&seg->req);
                        idle = 0;
                        continue;
                }
                idle = 0;
                if (rec.type == TYPE_END)
                        break;

                uint64_t seq;
                if (sc->copy) {
                        memcpy(copy, rec.payload, rec.len);
                        memcpy(&seq, copy, sizeof(seq));
                } else
                        memcpy(&seq, rec.payload, sizeof(seq));
                if (rec.len != sc->len || seq != res.records) {
                        res.error = -EBADMSG;
                        break;
                }
                res.records++;
                if (++unreleased >= sc->rel_batch) {
                        ring_release(&seg->req);
                        unreleased = 0;
                }
        }
        ring_release(&seg->req);
        free(copy);
        return res;
}

/* Produces until `seconds` have passed; returns the number of data records sent. */
static uint64_t produce(struct segment *seg, const struct scenario *sc, double seconds,
                        uint64_t *ret_bells) {
        uint8_t *src = malloc(sc->len);
        uint64_t seq = 0, bells = 0;
        uint64_t deadline = now_ns() + (uint64_t) (seconds * 1e9);
        void *pl;

        if (!src)
                abort();
        for (uint32_t i = 0; i < sc->len; i++)
                src[i] = (uint8_t) (i * 131);

        for (;;) {
                for (unsigned i = 0; i < sc->pub_batch; i++) {
                        int r;
                        while ((r = ring_alloc(&seg->req, TYPE_DATA, 0, sc->len, &pl)) == -EAGAIN) {
                                /* Full: what we hold back must become visible, or we both wait. */
                                if (ring_publish(&seg->req)) {
                                        doorbell_ring(seg->req_bell);
                                        bells++;
                                }
                                idle_wait();
                        }
                        if (r < 0) {
                                fprintf(stderr, "ring_alloc: %s\n", strerror(-r));
                                exit(EXIT_FAILURE);
                        }
                        if (sc->copy)
                                memcpy(pl, src, sc->len);
                        memcpy(pl, &seq, sizeof(seq));
                        seq++;
                }
                if (ring_publish(&seg->req)) {
                        doorbell_ring(seg->req_bell);
                        bells++;
                }
                if ((seq & 4095) < sc->pub_batch && now_ns() >= deadline)
                        break;
        }

        while (ring_alloc(&seg->req, TYPE_END, 0, 0, &pl) == -EAGAIN) {
                ring_publish(&seg->req);
                idle_wait();
        }
        if (ring_publish(&seg->req)) {
                doorbell_ring(seg->req_bell);
                bells++;
        }
        free(src);
        *ret_bells = bells;
        return seq;
}

static int run(const struct scenario *sc, double seconds) {
        struct segment seg;
        int ready[2], done[2];
        int r = segment_create("ring-bench", BENCH_RING, &seg);
        if (r < 0) {
                fprintf(stderr, "segment_create: %s\n", strerror(-r));
                return r;
        }
        if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(done, O_CLOEXEC) < 0) {
                perror("pipe2");
                return -errno;
        }

        pid_t pid = fork();
        if (pid < 0) {
                perror("fork");
                return -errno;
        }
        if (pid == 0) {
                pin(cpus[1]);
                char c = 'r';
                (void) !write(ready[1], &c, 1);
                struct result res = consume(&seg, sc);
                (void) !write(done[1], &res, sizeof(res));
                _exit(0);
        }

        pin(cpus[0]);
        char c;
        (void) !read(ready[0], &c, 1);

        uint64_t bells = 0;
        uint64_t t0 = now_ns();
        uint64_t sent = produce(&seg, sc, seconds, &bells);
        struct result res;
        ssize_t n = read(done[0], &res, sizeof(res));
        uint64_t t1 = now_ns();
        waitpid(pid, NULL, 0);
        close(ready[0]);
        close(ready[1]);
        close(done[0]);
        close(done[1]);
        segment_close(&seg);

        if (n != (ssize_t) sizeof(res) || res.error < 0 || res.records != sent) {
                fprintf(stderr, "%s: consumer failed (%s, %" PRIu64 " of %" PRIu64 " records)\n", sc->name,
                        n == (ssize_t) sizeof(res) ? strerror(-res.error) : "no result",
                        n == (ssize_t) sizeof(res) ? res.records : 0, sent);
                return -EIO;
        }

        double secs = (double) (t1 - t0) / 1e9;
        double mps = (double) sent / secs;
        printf("ring %-15s %8.2f M msgs/s %8.1f ns/msg", sc->name, mps / 1e6, 1e9 / mps);
        if (sc->copy)
                printf(" %8.2f GB/s", mps * sc->len / 1e9);
        printf("   (%" PRIu64 " msgs, %" PRIu64 " doorbells, %" PRIu64 " sleeps)\n", sent, bells, res.sleeps);
        fflush(stdout);
        return 0;
}

int main(void) {
        static const struct scenario scenarios[] = {
                { "batched 64B", 64, 64, 64, false },
                { "unbatched 64B", 64, 1, 1, false },
                { "4KiB records", 4096, 16, 16, true },
        };
        double seconds = 1.0;
        const char *e = getenv("RING_BENCH_SECONDS");
        if (e && atof(e) > 0)
                seconds = atof(e);

        pick_cpus();
        if (cpus[0] >= 0)
                printf("# producer on CPU %d, consumer on CPU %d, ring %u KiB\n", cpus[0], cpus[1], BENCH_RING / 1024);
        else
                printf("# one CPU: producer and consumer share it, ring %u KiB\n", BENCH_RING / 1024);
        fflush(stdout);

        int rc = 0;
        for (size_t i = 0; i < ELEMENTSOF(scenarios); i++)
                if (run(&scenarios[i], seconds) < 0)
                        rc = 1;
        return rc;
}
