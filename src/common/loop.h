/* The event loop: one io_uring per thread. Every submission carries a pointer to a loop_op
 * embedded in the object that owns it; a completion calls that op's callback. Submissions are
 * batched: they go to the kernel once per loop iteration (or when the SQ is full). */
#pragma once

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct loop_op;
/* res: the CQE's result; flags: the CQE's flags (IORING_CQE_F_MORE, IORING_CQE_F_BUFFER...). */
typedef void (*loop_cb)(struct loop_op *op, int res, unsigned flags);

struct loop_op {
        loop_cb cb;
};

/* Work that must not run inside the call that found it (a close or a failure discovered while
 * writing, flushing or parsing): it runs from the loop, after the current batch of completions,
 * so no caller ever touches memory its own callee freed. */
struct loop_deferred {
        void (*fn)(struct loop_deferred *d);
        struct list link;
        bool queued;
};

struct loop {
        struct io_uring ring;
        struct list deferred;
        uint64_t now;   /* CLOCK_MONOTONIC ns when the current batch of completions arrived */
};

/* The time of the current batch: one clock read per loop iteration instead of one per use, for
 * timers and latencies on the request path (precise to the length of one batch). */
static inline uint64_t loop_now(const struct loop *l) { return l->now; }

/* Queues d to run from the loop (once, however often it is queued before it runs). */
void loop_defer(struct loop *l, struct loop_deferred *d);
/* Takes d off the queue (its owner is being freed). Safe when d is not queued. */
void loop_undefer(struct loop_deferred *d);

/* Returns 0 or a negative errno (e.g. -ENOSYS without io_uring). */
int loop_init(struct loop *l, unsigned entries);
void loop_free(struct loop *l);

/* A submission queue entry; submits pending ones first when the queue is full. Never NULL. */
struct io_uring_sqe *loop_sqe(struct loop *l, struct loop_op *op);

/* Runs deferred work, submits what is queued, waits up to timeout_ns (0: do not wait) for a completion, then runs
 * the callbacks of all available completions. Returns how many ran, or a negative errno. */
int loop_run_once(struct loop *l, uint64_t timeout_ns);

/* Runs completions until none arrives for 10 ms or `limit_ns` passed: lets closes and final
 * sends finish before the loop is freed. */
void loop_drain(struct loop *l, uint64_t limit_ns);
