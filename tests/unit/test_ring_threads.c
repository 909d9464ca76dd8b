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

#include "ring_stress.h"

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
