/* Unit tests for the SPSC ring and the replica segment: the single-threaded contract, a hostile
 * producer or consumer (run under ASan: a malformed ring must never make us read out of
 * bounds), the doorbell protocol, segment creation/attach, fd passing, and a cross-process
 * stress test that checks every byte in both directions.
 *
 * RING_STRESS_RECORDS overrides the stress test's record count (default 2,000,000). */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "macros.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "tap.h"
#include "ring_stress.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers */

/* Exactly the footprint, so that ASan flags any byte read past the data area. */
static void *ring_mem(uint32_t size) {
        size_t fp = ring_footprint(size);
        void *m = aligned_alloc(RING_CACHELINE, ALIGN_TO(fp, (size_t) RING_CACHELINE));
        if (!m)
                abort();
        memset(m, 0, fp);
        return m;
}


static void fill(void *p, uint32_t len, uint64_t seed) {
        uint8_t *b = p;
        for (uint32_t i = 0; i < len; i++)
                b[i] = (uint8_t) splitmix64(seed + i);
}

static bool check(const void *p, uint32_t len, uint64_t seed) {
        const uint8_t *b = p;
        for (uint32_t i = 0; i < len; i++)
                if (b[i] != (uint8_t) splitmix64(seed + i))
                        return false;
        return true;
}

static void set_hdr(struct ring *r, uint32_t pos, uint32_t len, uint16_t type) {
        struct ring_record_hdr h = { .len = len, .type = type };
        memcpy(r->data + (pos & r->mask), &h, sizeof(h));
}

/* Payload bytes are read into this so that the reads happen (and ASan checks them). */
static volatile uint8_t read_sink;

static int count_open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        int n = 0;
        if (!d)
                return -1;
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

/* ---------------------------------------------------------------------------------------- */
/* single-threaded contract */

static void test_attach(void) {
        struct ring r;
        void *m = ring_mem(8192);

        is_int(ring_attach(&r, m, 4095, true), -EINVAL, "attach rejects a size that is not a power of two");
        is_int(ring_attach(&r, m, 2048, true), -EINVAL, "attach rejects a size below 4096");
        is_int(ring_attach(&r, (uint8_t *) m + 8, 4096, true), -EINVAL, "attach rejects unaligned memory");
        is_int(ring_attach(&r, m, 8192, true), 0, "attach accepts 8192");
        is_int(ring_max_payload(&r), 8192 / 4, "max payload is size / 4");
        is_int(ring_footprint(8192), 8192 + sizeof(struct ring_shared), "footprint is header + data");
        free(m);
}

static void test_basic(void) {
        struct ring p, c;
        void *m = ring_mem(4096);
        void *pl;
        struct ring_record rec;

        ring_attach(&p, m, 4096, true);
        ring_attach(&c, m, 4096, false);

        is_int(ring_next(&c, &rec), 0, "a fresh ring is empty");
        is_int(ring_free_space(&p), 4096, "a fresh ring is all free");

        is_int(ring_alloc(&p, 7, 3, 13, &pl), 0, "alloc 13 bytes");
        fill(pl, 13, 100);
        is_int(ring_next(&c, &rec), 0, "an allocated record is invisible before publish");
        ok(!ring_publish(&p), "publish without a sleeper needs no doorbell");
        is_int(ring_next(&c, &rec), 1, "the published record arrives");
        ok(rec.type == 7 && rec.flags == 3 && rec.len == 13, "type/flags/len round-trip (got %u/%u/%u)",
           rec.type, rec.flags, rec.len);
        ok(check(rec.payload, 13, 100), "payload round-trips");
        ok((uintptr_t) rec.payload % RING_ALIGN == 0, "payload is 8-byte aligned");
        is_int(ring_next(&c, &rec), 0, "then the ring is empty");
        is_int(ring_free_space(&p), 4096 - 24, "the record occupies 8 + 16 bytes until released");
        ring_release(&c);
        is_int(ring_free_space(&p), 4096, "release hands the space back");

        is_int(ring_alloc(&p, RING_TYPE_PAD, 0, 8, &pl), -EINVAL, "the PAD type is reserved");

        /* Zero-length payload. */
        is_int(ring_alloc(&p, 9, 0, 0, &pl), 0, "alloc a zero-length record");
        ring_publish(&p);
        is_int(ring_next(&c, &rec), 1, "the zero-length record arrives");
        ok(rec.type == 9 && rec.len == 0, "it has type 9 and length 0");
        ring_release(&c);

        /* Max payload, and one more. */
        uint32_t max = ring_max_payload(&p);
        is_int(ring_alloc(&p, 1, 0, max + 1, &pl), -EMSGSIZE, "max payload + 1 is -EMSGSIZE");
        is_int(ring_alloc(&p, 1, 0, UINT32_MAX, &pl), -EMSGSIZE, "UINT32_MAX is -EMSGSIZE");
        is_int(ring_alloc(&p, 1, 0, max, &pl), 0, "max payload fits");
        fill(pl, max, 5);
        ring_publish(&p);
        is_int(ring_next(&c, &rec), 1, "the max-size record arrives");
        ok(rec.len == max && check(rec.payload, max, 5), "with all its bytes");
        ring_release(&c);
        free(m);
}

static void test_full(void) {
        struct ring p, c;
        void *m = ring_mem(4096);
        void *pl;
        struct ring_record rec;
        int n = 0, r;

        ring_attach(&p, m, 4096, true);
        ring_attach(&c, m, 4096, false);

        /* 64-byte payload = 72-byte records: 56 fit in 4096 (4032), the 57th does not. */
        while ((r = ring_alloc(&p, 1, 0, 64, &pl)) == 0)
                memset(pl, n++, 64);
        is_int(r, -EAGAIN, "a full ring answers -EAGAIN");
        is_int(n, 4096 / 72, "as many records as fit were accepted");
        ring_publish(&p);

        is_int(ring_next(&c, &rec), 1, "read one");
        is_int(ring_alloc(&p, 1, 0, 64, &pl), -EAGAIN, "reading without release frees nothing");
        ring_release(&c);
        /* 64 bytes are left before the end: the record needs a 64-byte PAD plus its 72 bytes,
         * exactly the 64 + 72 now free. */
        is_int(ring_alloc(&p, 1, 0, 64, &pl), 0, "after one release, a record fits after a PAD");
        memset(pl, 0xee, 64);
        ring_publish(&p);
        is_int(ring_alloc(&p, 1, 0, 0, &pl), -EAGAIN, "and then the ring is exactly full");

        int seen = 0;
        bool good = true;
        while ((r = ring_next(&c, &rec)) == 1) {
                int want = seen + 1 < n ? seen + 1 : 0xee;
                good &= rec.len == 64 && ((const uint8_t *) rec.payload)[63] == (uint8_t) want;
                seen++;
        }
        is_int(r, 0, "the consumer drains the ring without error");
        is_int(seen, n, "every remaining record plus the wrapped one arrive");
        ok(good, "in order, with their contents");
        ok(rec.payload == c.data + RING_HDR_SIZE, "the wrapped record starts at offset 0");
        free(m);
}

static void test_wrap_pad(void) {
        struct ring p, c;
        void *m = ring_mem(4096);
        void *pl;
        struct ring_record rec;

        ring_attach(&p, m, 4096, true);
        ring_attach(&c, m, 4096, false);

        /* Move both cursors to 4096 - 40 with real traffic, then allocate a record of 8 + 40
         * bytes, which cannot fit in the 40 bytes left. */
        uint32_t filler = 4096 - 40 - RING_HDR_SIZE;
        while (filler > 0) {
                uint32_t len = MIN(filler - RING_HDR_SIZE, ring_max_payload(&p));
                ring_alloc(&p, 1, 0, len, &pl);
                filler -= RING_HDR_SIZE + len;
                ring_publish(&p);
                while (ring_next(&c, &rec) == 1)
                        ;
                ring_release(&c);
        }
        /* The fillers end at 4096 - 48; an empty record (header only) brings us to 4096 - 40. */
        ring_alloc(&p, 1, 0, 0, &pl);
        ring_publish(&p);
        ring_next(&c, &rec);
        ring_release(&c);
        is_int(p.local & p.mask, 4096 - 40, "cursor sits 40 bytes before the end");

        is_int(ring_alloc(&p, 2, 0, 40, &pl), 0, "a record longer than the rest of the data area is accepted");
        ok(pl == p.data + RING_HDR_SIZE, "it is placed at offset 0");
        fill(pl, 40, 77);
        struct ring_record_hdr ph;
        memcpy(&ph, p.data + 4096 - 40, sizeof(ph));
        ok(ph.type == RING_TYPE_PAD && ph.len == 32, "a PAD record fills the 40 bytes before the end");
        ring_publish(&p);
        is_int(ring_next(&c, &rec), 1, "the consumer skips the PAD");
        ok(rec.type == 2 && rec.len == 40 && check(rec.payload, 40, 77), "and gets the record intact");
        ring_release(&c);
        is_int(ring_free_space(&p), 4096, "PAD space is released with the record");
        free(m);
}

/* Random sizes, random batching, many wraps; single thread, the consumer checks everything. */
static void test_many_sizes(void) {
        struct ring p, c;
        void *m = ring_mem(16384);
        uint64_t sent = 0, recvd = 0, rng = 1;
        bool good = true;
        int err = 0;

        ring_attach(&p, m, 16384, true);
        ring_attach(&c, m, 16384, false);
        uint32_t max = ring_max_payload(&p);

        while (recvd < 200000 && good && !err) {
                rng = splitmix64(rng);
                unsigned nalloc = rng % 20, nread = (rng >> 8) % 24;
                for (unsigned i = 0; i < nalloc; i++) {
                        uint32_t len = splitmix64(sent) % (sent % 7 == 0 ? max + 1 : 300);
                        void *pl;
                        int r = ring_alloc(&p, (uint16_t) (sent % 1000), (uint16_t) sent, len, &pl);
                        if (r == -EAGAIN)
                                break;
                        if (r < 0) {
                                err = r;
                                break;
                        }
                        fill(pl, len, sent << 16);
                        sent++;
                }
                ring_publish(&p);
                for (unsigned i = 0; i < nread; i++) {
                        struct ring_record rec;
                        int r = ring_next(&c, &rec);
                        if (r < 0)
                                err = r;
                        if (r <= 0)
                                break;
                        uint32_t len = splitmix64(recvd) % (recvd % 7 == 0 ? max + 1 : 300);
                        if (rec.len != len || rec.type != recvd % 1000 || rec.flags != (uint16_t) recvd ||
                            !check(rec.payload, len, recvd << 16)) {
                                good = false;
                                break;
                        }
                        recvd++;
                }
                if (rng & (1u << 20))
                        ring_release(&c);
        }
        is_int(err, 0, "many sizes: no errors");
        ok(good, "many sizes: %" PRIu64 " records of 0..%u bytes arrive intact and in order", recvd, max);
        free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* hostile producer: the consumer must answer -EBADMSG and never read outside the data area */


struct hostile {
        void *mem;
        struct ring p, c;
};

static void hostile_setup(struct hostile *h) {
        h->mem = ring_mem(4096);
        ring_attach(&h->p, h->mem, 4096, true);
        ring_attach(&h->c, h->mem, 4096, false);
}

/* Places both sides' cursors at `pos`, as if that much traffic had gone through. */
static void hostile_move_to(struct hostile *h, uint32_t pos) {
        h->p.local = h->p.cached = pos;
        h->c.local = h->c.cached = pos;
        atomic_store(&h->p.sh->head, pos);
        atomic_store(&h->p.sh->tail, pos);
}

static int hostile_next(struct hostile *h) {
        struct ring_record rec;
        return ring_next(&h->c, &rec);
}

static void test_hostile_producer(void) {
        struct hostile h;
        struct ring_record rec;
        void *pl;

        hostile_setup(&h);
        atomic_store(&h.p.sh->head, 4096 + 8);
        is_int(hostile_next(&h), -EBADMSG, "head more than size ahead of tail is -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        hostile_move_to(&h, 64);
        atomic_store(&h.p.sh->head, 32);
        is_int(hostile_next(&h), -EBADMSG, "head moved behind the consumer is -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        ring_alloc(&h.p, 1, 0, 16, &pl);
        ring_publish(&h.p);
        set_hdr(&h.p, 0, 100, 1);
        is_int(hostile_next(&h), -EBADMSG, "a record longer than the published bytes is -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        set_hdr(&h.p, 0, 2000, 1);
        atomic_store(&h.p.sh->head, 4096);
        is_int(hostile_next(&h), -EBADMSG, "a length above max payload is -EBADMSG even when published");
        free(h.mem);

        hostile_setup(&h);
        set_hdr(&h.p, 0, UINT32_MAX, 1);
        atomic_store(&h.p.sh->head, 4096);
        is_int(hostile_next(&h), -EBADMSG, "length UINT32_MAX is -EBADMSG (no overflow)");
        free(h.mem);

        hostile_setup(&h);
        set_hdr(&h.p, 0, 0, 1);
        atomic_store(&h.p.sh->head, 5);
        is_int(hostile_next(&h), -EBADMSG, "a head inside a record header (unaligned) is -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        ring_alloc(&h.p, 1, 0, 16, &pl);
        ring_publish(&h.p);
        atomic_store(&h.p.sh->head, 24 + 3);
        is_int(hostile_next(&h), 1, "a valid record before an unaligned head is still read");
        is_int(hostile_next(&h), -EBADMSG, "the 3 stray bytes after it are -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        hostile_move_to(&h, 4096 - 40);
        set_hdr(&h.p, 4096 - 40, 100, 1);
        atomic_store(&h.p.sh->head, 4096 - 40 + 200);
        is_int(hostile_next(&h), -EBADMSG, "a record crossing the end of the data area is -EBADMSG");
        free(h.mem);

        hostile_setup(&h);
        hostile_move_to(&h, 4096 - 40);
        set_hdr(&h.p, 4096 - 40, 100, RING_TYPE_PAD);
        atomic_store(&h.p.sh->head, 4096 - 40 + 200);
        is_int(hostile_next(&h), -EBADMSG, "a PAD running past the end is -EBADMSG");
        hostile_move_to(&h, 4096 - 40);
        set_hdr(&h.p, 4096 - 40, 8, RING_TYPE_PAD);
        atomic_store(&h.p.sh->head, 4096 - 40 + 200);
        is_int(hostile_next(&h), -EBADMSG, "a PAD stopping short of the end is -EBADMSG");
        hostile_move_to(&h, 4096 - 40);
        set_hdr(&h.p, 4096 - 40, 32, RING_TYPE_PAD);
        atomic_store(&h.p.sh->head, 4096 - 40 + 16);
        is_int(hostile_next(&h), -EBADMSG, "a PAD only partly published is -EBADMSG");
        hostile_move_to(&h, 4096 - 40);
        set_hdr(&h.p, 0, 4, 3);
        atomic_store(&h.p.sh->head, 4096 - 40 + 40 + 16);
        is_int(ring_next(&h.c, &rec), 1, "an exact PAD followed by a record is fine");
        ok(rec.type == 3 && rec.len == 4 && rec.payload == h.c.data + 8, "and yields the record at offset 0");
        free(h.mem);

        /* Random garbage: whatever the bytes and cursors, every record handed out lies inside
         * the data area (ASan checks the reads below), and the walk ends. */
        uint64_t rng = 42;
        bool inside = true, ended = true;
        unsigned records = 0, rejected = 0;
        hostile_setup(&h);
        for (int iter = 0; iter < 20000; iter++) {
                uint64_t *w = (uint64_t *) (void *) h.c.data;
                for (size_t i = 0; i < 4096 / 8; i++) {
                        rng = splitmix64(rng);
                        /* Mostly plausible headers, so that walks go deep. */
                        switch (rng & 3) {
                        case 0: w[i] = rng; break;
                        case 1: w[i] = (rng >> 8) % 300; break;
                        case 2: w[i] = ((rng >> 8) % 4096) | ((uint64_t) RING_TYPE_PAD << 32); break;
                        default: w[i] = (rng >> 8) % 64; break;
                        }
                }
                rng = splitmix64(rng);
                uint32_t start = (uint32_t) (rng >> 32) & ~7u;
                hostile_move_to(&h, start);
                atomic_store(&h.p.sh->head, start + (uint32_t) (rng % (2 * 4096 + 64)));
                int r = 0, steps;
                for (steps = 0; steps < 4096; steps++) {
                        r = ring_next(&h.c, &rec);
                        if (r <= 0)
                                break;
                        records++;
                        const uint8_t *b = rec.payload;
                        if (b < h.c.data || b + rec.len > h.c.data + 4096 || rec.len > 1024)
                                inside = false;
                        for (uint32_t i = 0; i < rec.len; i++)
                                read_sink += b[i];
                }
                if (r < 0)
                        rejected++;
                if (steps == 4096)
                        ended = false;
        }
        ok(inside, "garbage rings: all %u records returned lie inside the data area", records);
        ok(ended && rejected > 0, "garbage rings: every walk ends (%u rejected with -EBADMSG)", rejected);
        free(h.mem);
}

static void test_hostile_consumer(void) {
        struct hostile h;
        void *pl;
        int r;

        hostile_setup(&h);
        while ((r = ring_alloc(&h.p, 1, 0, 64, &pl)) == 0)
                ;
        ring_publish(&h.p);
        atomic_store(&h.p.sh->tail, h.p.local + 8);
        is_int(ring_alloc(&h.p, 1, 0, 64, &pl), -EBADMSG, "a tail ahead of the head is -EBADMSG once the producer looks at it");
        is_int(ring_free_space(&h.p), 0, "and free space reads as 0");
        free(h.mem);

        hostile_setup(&h);
        while ((r = ring_alloc(&h.p, 1, 0, 64, &pl)) == 0)
                ;
        ring_publish(&h.p);
        atomic_store(&h.p.sh->tail, h.p.local - 4096 - 8);
        is_int(ring_alloc(&h.p, 1, 0, 64, &pl), -EBADMSG, "a tail more than size behind the head is -EBADMSG");
        free(h.mem);
}

/* ---------------------------------------------------------------------------------------- */
/* doorbell protocol */

static void test_doorbell_protocol(void) {
        struct ring p, c;
        void *m = ring_mem(4096);
        struct ring_record rec;
        void *pl;

        ring_attach(&p, m, 4096, true);
        ring_attach(&c, m, 4096, false);

        ok(ring_consumer_prepare_sleep(&c), "prepare_sleep on an empty ring says sleep");
        ring_alloc(&p, 1, 0, 8, &pl);
        ok(ring_publish(&p), "the next publish says ring the doorbell");
        ring_alloc(&p, 1, 0, 8, &pl);
        ok(!ring_publish(&p), "the publish after it does not (one doorbell per sleep)");
        ok(!ring_publish(&p), "nor an empty publish");
        ring_consumer_awake(&c);

        ok(!ring_consumer_prepare_sleep(&c), "prepare_sleep with unread records says stay awake");
        ring_alloc(&p, 1, 0, 8, &pl);
        ok(!ring_publish(&p), "and the announcement was withdrawn: no doorbell");

        while (ring_next(&c, &rec) == 1)
                ;
        ok(ring_consumer_prepare_sleep(&c), "after reading everything (even unreleased) it says sleep");
        ring_consumer_awake(&c);
        ring_alloc(&p, 1, 0, 8, &pl);
        ok(!ring_publish(&p), "after awake, publish needs no doorbell");
        free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* segment */

static void test_segment(void) {
        struct segment s, a, bad;
        struct stat st;
        char link[256] = "", path[64];

        is_int(segment_create("ringx-test", 3000, &s), -EINVAL, "segment_create rejects a bad ring size");
        ok(s.fd == -1 && s.base == NULL, "and leaves the segment reset");

        is_int(segment_create("ringx-test", 65536, &s), 0, "segment_create 64 KiB rings");
        ok(fstat(s.fd, &st) == 0 && (st.st_mode & 07777) == 0600, "the memfd has mode 0600 (got %o)",
           (unsigned) (st.st_mode & 07777));
        ok((size_t) st.st_size == s.len, "its size is the mapped length");
        int seals = fcntl(s.fd, F_GET_SEALS);
        ok(seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
                                 (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
           "it is sealed against shrink, grow and unsealing (seals %#x)", seals);
        ok(ftruncate(s.fd, 4096) < 0 && errno == EPERM, "shrinking it fails with EPERM");
        snprintf(path, sizeof(path), "/proc/self/fd/%d", s.fd);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        ok(n > 0 && strncmp(link, "/memfd:ringx-test", 17) == 0, "it is an anonymous memfd (%s)", link);
        ok((fcntl(s.fd, F_GETFD) & FD_CLOEXEC) && (fcntl(s.req_bell, F_GETFD) & FD_CLOEXEC) &&
           (fcntl(s.resp_bell, F_GETFD) & FD_CLOEXEC), "all three fds are close-on-exec");
        ok((fcntl(s.req_bell, F_GETFL) & O_NONBLOCK) && (fcntl(s.resp_bell, F_GETFL) & O_NONBLOCK),
           "the doorbells are non-blocking");
        ok(s.ctl->magic == SEGMENT_MAGIC && s.ctl->version == SEGMENT_VERSION && s.ctl->ring_size == 65536 &&
           atomic_load(&s.ctl->replica_state) == SEGMENT_STATE_STARTING, "the control block is initialised");
        ok((uintptr_t) s.req.sh % 4096 == 0 && (uintptr_t) s.resp.sh % 4096 == 0 &&
           (uint8_t *) s.resp.data + 65536 <= (uint8_t *) s.base + s.len, "rings are page-aligned inside the segment");

        int fd0_before = fcntl(0, F_GETFD);
        is_int(segment_attach(dup(s.fd), dup(s.req_bell), dup(s.resp_bell), &a), 0, "segment_attach a copy");
        ok(a.ring_size == 65536 && a.len == s.len && a.base != s.base, "the copy has its own mapping of the same size");

        void *pl;
        struct ring_record rec;
        ring_alloc(&s.req, 5, 0, 11, &pl);
        memcpy(pl, "hello world", 11);
        ring_publish(&s.req);
        ok(ring_next(&a.req, &rec) == 1 && rec.len == 11 && memcmp(rec.payload, "hello world", 11) == 0,
           "a request written by the creator reaches the attached side");
        ring_release(&a.req);
        ring_alloc(&a.resp, 6, 0, 2, &pl);
        memcpy(pl, "ok", 2);
        ring_publish(&a.resp);
        ok(ring_next(&s.resp, &rec) == 1 && rec.type == 6 && memcmp(rec.payload, "ok", 2) == 0,
           "a response comes back the other way");

        is_int(doorbell_ring(a.req_bell), 0, "doorbell_ring");
        uint64_t v = 0;
        ok(read(s.req_bell, &v, sizeof(v)) == 8 && v == 1, "the creator's eventfd counts one ring");
        v = UINT64_MAX - 1;
        ok(write(s.req_bell, &v, sizeof(v)) == 8, "saturate the eventfd counter");
        is_int(doorbell_ring(s.req_bell), 0, "ringing a saturated doorbell is still success");

        segment_close(&a);
        segment_close(&a);
        ok(a.fd == -1 && a.base == NULL, "segment_close twice is harmless");
        struct segment zero;
        memset(&zero, 0, sizeof(zero));
        segment_close(&zero);
        is_int(fcntl(0, F_GETFD), fd0_before, "segment_close on a zeroed segment does not close fd 0");
        segment_close(NULL);

        /* A wrong magic is refused, and the fds are consumed either way. */
        is_int(segment_create("ringx-bad", 4096, &bad), 0, "create a second segment");
        bad.ctl->magic ^= 1;
        int fds_before = count_open_fds();
        is_int(segment_attach(dup(bad.fd), dup(bad.req_bell), dup(bad.resp_bell), &a), -EBADMSG,
               "attach refuses a wrong magic");
        is_int(count_open_fds(), fds_before, "and closed the three fds it was given");
        bad.ctl->magic ^= 1;
        bad.ctl->ring_size = 8192;
        is_int(segment_attach(dup(bad.fd), dup(bad.req_bell), dup(bad.resp_bell), &a), -EBADMSG,
               "attach refuses a ring size that does not match the file size");
        bad.ctl->ring_size = 4096;
        bad.ctl->version = 99;
        is_int(segment_attach(dup(bad.fd), dup(bad.req_bell), dup(bad.resp_bell), &a), -EBADMSG,
               "attach refuses an unknown version");
        segment_close(&bad);

        int small = memfd_create("ringx-small", MFD_CLOEXEC);
        ok(small >= 0 && ftruncate(small, 100) == 0, "a tiny memfd");
        is_int(segment_attach(small, dup(s.req_bell), dup(s.resp_bell), &a), -EBADMSG,
               "attach refuses a file smaller than the control block");

        segment_close(&s);
}

/* ---------------------------------------------------------------------------------------- */
/* fd passing */

static void test_unix_fds(void) {
        int sv[2], fds[3], got[8];
        char buf[64];
        size_t n_fds = 99;

        ok(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
        for (int i = 0; i < 3; i++)
                fds[i] = memfd_create("ringx-fd", MFD_CLOEXEC);

        is_int(unix_send_fds(sv[0], "hello", 5, fds, 3), 0, "send 5 bytes and 3 fds");
        is_int(unix_recv_fds(sv[1], buf, sizeof(buf), got, 3, &n_fds), 5, "receive 5 bytes");
        is_int(n_fds, 3, "and 3 fds");
        bool fresh = true;
        for (size_t i = 0; i < 3; i++) {
                struct stat a, b;
                fresh &= fstat(got[i], &a) == 0 && fstat(fds[i], &b) == 0 && a.st_ino == b.st_ino &&
                         (fcntl(got[i], F_GETFD) & FD_CLOEXEC);
                close(got[i]);
        }
        ok(fresh && memcmp(buf, "hello", 5) == 0, "the same files arrive, close-on-exec");

        int before = count_open_fds();
        is_int(unix_send_fds(sv[0], "x", 1, fds, 3), 0, "send 3 fds");
        n_fds = 99;
        is_int(unix_recv_fds(sv[1], buf, sizeof(buf), got, 2, &n_fds), -EBADMSG, "receiving at most 2 is -EBADMSG");
        ok(n_fds == 99, "the count is untouched on failure");
        is_int(count_open_fds(), before, "and no received fd leaks");

        is_int(unix_send_fds(sv[0], "0123456789", 10, NULL, 0), 0, "send 10 bytes");
        is_int(unix_recv_fds(sv[1], buf, 4, got, 2, &n_fds), -EBADMSG, "a 4-byte buffer is -EBADMSG (truncated)");

        int many[9] = { 0 };
        is_int(unix_send_fds(sv[0], "x", 1, many, 9), -EINVAL, "more than 8 fds is -EINVAL");

        is_int(unix_send_fds(sv[0], "nofd", 4, NULL, 0), 0, "send without fds");
        is_int(unix_recv_fds(sv[1], buf, sizeof(buf), got, 3, &n_fds), 4, "receive without fds");
        is_int(n_fds, 0, "zero fds");

        close(sv[0]);
        is_int(unix_recv_fds(sv[1], buf, sizeof(buf), got, 3, &n_fds), 0, "EOF reads as 0");
        close(sv[1]);
        for (int i = 0; i < 3; i++)
                close(fds[i]);
}

/* ---------------------------------------------------------------------------------------- */
/* cross-process stress: the proxy (parent) sends records, the replica (child) checks and echoes
 * them, the proxy checks the echoes. Both sleep on the eventfd doorbells when idle. */


static _noreturn_ void stress_child(int sock, uint64_t n) {
        char msg[16];
        int fds[3];
        size_t n_fds = 0;
        struct segment seg;
        struct stress_stats st = { 0 };

        alarm(120); /* a hang guard, not a timing assertion */
        ssize_t k = unix_recv_fds(sock, msg, sizeof(msg), fds, 3, &n_fds);
        if (k != 7 || n_fds != 3 || memcmp(msg, "segment", 7) != 0) {
                fprintf(stderr, "# replica: bad start message (%zd, %zu fds)\n", k, n_fds);
                _exit(2);
        }
        int r = segment_attach(fds[0], fds[1], fds[2], &seg);
        if (r < 0) {
                fprintf(stderr, "# replica: segment_attach: %s\n", strerror(-r));
                _exit(3);
        }
        if (stress_replica(&seg, n, &st) < 0)
                _exit(4);
        printf("# replica: %" PRIu64 " records checked and echoed, %" PRIu64 " sleeps, %" PRIu64 " doorbells\n",
               st.records, st.sleeps, st.bells);
        fflush(stdout);
        segment_close(&seg);
        _exit(0);
}

static void test_stress_processes(void) {
        uint64_t n = 2000000;
        const char *e = getenv("RING_STRESS_RECORDS");
        if (e)
                n = strtoull(e, NULL, 10);

        struct segment seg;
        int sv[2];
        struct stress_stats st = { 0 };

        pattern_init();
        is_int(segment_create("ringx-stress", STRESS_RING, &seg), 0, "stress: create the segment");
        ok(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "stress: socketpair");

        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                close(sv[0]);
                /* Forget the inherited mapping: the child must work from the fds it receives. */
                munmap(seg.base, seg.len);
                stress_child(sv[1], n);
        }
        close(sv[1]);

        int fds[3] = { seg.fd, seg.req_bell, seg.resp_bell };
        is_int(unix_send_fds(sv[0], "segment", 7, fds, 3), 0, "stress: hand the segment to the replica");

        alarm(120);
        int r = stress_proxy(&seg, n, &st);
        alarm(0);
        is_int(r, 0, "stress: %" PRIu64 " records of 0..%u bytes went out and came back byte-exact, in order",
               n, STRESS_MAX_LEN);
        printf("# proxy: %" PRIu64 " sleeps, %" PRIu64 " doorbells\n", st.sleeps, st.bells);

        int status = 0;
        if (r < 0)
                kill(pid, SIGKILL);
        ok(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "stress: the replica saw every request intact (status %#x)", status);
        close(sv[0]);
        segment_close(&seg);
}

int main(void) {
        test_attach();
        test_basic();
        test_full();
        test_wrap_pad();
        test_many_sizes();
        test_hostile_producer();
        test_hostile_consumer();
        test_doorbell_protocol();
        test_segment();
        test_unix_fds();
        test_stress_processes();
        return tap_done();
}
