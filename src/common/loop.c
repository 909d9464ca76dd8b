#include <errno.h>

#include "log.h"
#include "loop.h"
#include "macros.h"

int loop_init(struct loop *l, unsigned entries) {
        /* One thread owns the ring: completions' task work runs only when we ask for events
         * (DEFER_TASKRUN, kernel 6.1+), not as interrupts of whatever we are doing; older
         * kernels get cooperative task work, then nothing special. */
        static const unsigned flag_sets[] = {
                IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
                0,
        };
        int r = -EINVAL;

        list_init(&l->deferred);
        l->now = now_ns();
        for (size_t i = 0; i < ELEMENTSOF(flag_sets); i++) {
                struct io_uring_params p = {
                        .flags = flag_sets[i] | IORING_SETUP_CQSIZE,
                        .cq_entries = entries * 4,
                };
                r = io_uring_queue_init_params(entries, &l->ring, &p);
                if (r >= 0)
                        return 0;
        }
        return r;
}

void loop_free(struct loop *l) { io_uring_queue_exit(&l->ring); }

void loop_defer(struct loop *l, struct loop_deferred *d) {
        if (d->queued)
                return;
        if (!d->link.next)
                list_init(&d->link);
        d->queued = true;
        list_add_tail(&l->deferred, &d->link);
}

void loop_undefer(struct loop_deferred *d) {
        if (!d->queued)
                return;
        d->queued = false;
        list_del(&d->link);
        list_init(&d->link);
}

/* Runs deferred work, including work queued while it runs. */
static void run_deferred(struct loop *l) {
        while (!list_empty(&l->deferred)) {
                struct loop_deferred *d = list_first(&l->deferred, struct loop_deferred, link);
                loop_undefer(d);
                d->fn(d);
        }
}

struct io_uring_sqe *loop_sqe(struct loop *l, struct loop_op *op) {
        struct io_uring_sqe *sqe;

        while (!(sqe = io_uring_get_sqe(&l->ring)))
                io_uring_submit(&l->ring);
        io_uring_sqe_set_data(sqe, op);
        return sqe;
}

int loop_run_once(struct loop *l, uint64_t timeout_ns) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {
                .tv_sec = (long long)(timeout_ns / 1000000000ull),
                .tv_nsec = (long long)(timeout_ns % 1000000000ull),
        };
        unsigned head, n = 0;
        int r;

        run_deferred(l);
        if (timeout_ns == 0)
                r = io_uring_submit_and_get_events(&l->ring); /* runs deferred task work too */
        else
                r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
                return r;
        l->now = now_ns();

        /* Callbacks may queue new submissions and even complete synchronously; we only look at
         * what is in the CQ now and advance once per batch. */
        io_uring_for_each_cqe(&l->ring, head, cqe) {
                struct loop_op *op = io_uring_cqe_get_data(cqe);
                int res = cqe->res;
                unsigned flags = cqe->flags;

                n++;
                if (op && op->cb)
                        op->cb(op, res, flags);
        }
        io_uring_cq_advance(&l->ring, n);
        run_deferred(l);
        return (int)n;
}

void loop_drain(struct loop *l, uint64_t limit_ns) {
        uint64_t waited = 0;
        while (waited < limit_ns && loop_run_once(l, 10 * 1000000ull) > 0)
                waited += 10 * 1000000ull;
}
