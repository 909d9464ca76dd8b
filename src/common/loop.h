/* The event loop: one io_uring per thread. Every submission carries a pointer to a loop_op
 * embedded in the object that owns it; a completion calls that op's callback. Submissions are
 * batched: they go to the kernel once per loop iteration (or when the SQ is full). */
#pragma once

#include <liburing.h>
#include <stdint.h>

struct loop_op;
/* res: the CQE's result; flags: the CQE's flags (IORING_CQE_F_MORE, IORING_CQE_F_BUFFER...). */
typedef void (*loop_cb)(struct loop_op *op, int res, unsigned flags);

struct loop_op {
        loop_cb cb;
};

struct loop {
        struct io_uring ring;
};

/* Returns 0 or a negative errno (e.g. -ENOSYS without io_uring). */
int loop_init(struct loop *l, unsigned entries);
void loop_free(struct loop *l);

/* A submission queue entry; submits pending ones first when the queue is full. Never NULL. */
struct io_uring_sqe *loop_sqe(struct loop *l, struct loop_op *op);

/* Submits what is queued, waits up to timeout_ns (0: do not wait) for a completion, then runs
 * the callbacks of all available completions. Returns how many ran, or a negative errno. */
int loop_run_once(struct loop *l, uint64_t timeout_ns);

/* Runs completions until none arrives for 10 ms or `limit_ns` passed: lets closes and final
 * sends finish before the loop is freed. */
void loop_drain(struct loop *l, uint64_t limit_ns);
