/* Batched handlers (Ray's @serve.batch): one batcher per `struct serve_batch_handler`.
 *
 * A handler thread hands its request over with batch_submit(). The first thread to arrive opens
 * a batch and leads it: it waits until the batch is full or its deadline (batch_wait_timeout_s
 * after it opened) passes, closes it, calls the handler's fn once for all its members and
 * completes each member (its own request too) with the member's own response. Later arrivals
 * join the open batch, or open the next one once it is closed, and return at once: their thread
 * goes back to serving while the leader answers for them (a parked thread per member would cost
 * a sleep and a wakeup per request — more than batching saves when fn is cheap). Nothing here
 * knows the replica: it takes the context, the request and the response, so it is tested
 * alone. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "sdk-internal.h"

#define BATCH_DEFAULT_MAX_SIZE 10u  /* serve_batch_handler.max_batch_size 0 */
#define BATCH_DEFAULT_WAIT_S 0.01   /* serve_batch_handler.batch_wait_timeout_s 0 */
/* Longer waits are refused: they are a unit mistake (ms for s), and a stopping replica waits
 * for a batch's deadline. */
#define BATCH_MAX_WAIT_S 3600.0

struct batcher;

/* A request handed to a batch: filled by the caller, which keeps it alive until complete(). */
struct batch_item {
        const serve_request *req;
        serve_response *resp;
        /* Called once resp holds the answer, on the leader's thread (or the caller's, for a
         * request left out at once); the item is the caller's again. */
        void (*complete)(struct batch_item *it);
        size_t batch_size;             /* the size of the batch it ran in; 0: it did not run */
        struct batch_item *next;       /* batch.c's */
};

/* Whether max_batch_size (>= 1) and batch_wait_timeout_s (0..BATCH_MAX_WAIT_S) are valid. */
bool batch_params_valid(unsigned max_batch_size, double wait_s);

/* The parameters h declares, its zeros replaced by the defaults (they may still be invalid). */
void batch_handler_params(const struct serve_batch_handler *h, unsigned *ret_max, double *ret_wait_s);

/* A batcher for h (which must outlive it), with h's parameters. Returns 0, -EINVAL (h's
 * parameters are invalid) or -ENOMEM. */
int batch_new(const struct serve_batch_handler *h, struct batcher **ret);
/* No batch may be running. NULL is fine. */
void batch_free(struct batcher *b);

/* Changes the parameters from the next batch on (the open one keeps its own). Thread-safe.
 * Returns 0 or -EINVAL (see batch_params_valid()). */
int batch_set_params(struct batcher *b, unsigned max_batch_size, double wait_s);
void batch_get_params(struct batcher *b, unsigned *ret_max, double *ret_wait_s);

/* Hands it->req to a batch of b's handler; complete(it) runs once it->resp holds its answer
 * (the answers are as for batch_run()). Returns at once when the request joined a batch another
 * thread leads; the thread that opens a batch waits for it to fill, runs it and completes every
 * member before it returns. */
void batch_submit(struct batcher *b, serve_ctx *ctx, struct batch_item *it, void (*complete)(struct batch_item *it));

/* Runs req in a batch of b's handler and returns once resp holds its answer: what fn wrote,
 * 500 "internal error" when fn failed and resp has no status >= 400, or 499 with an empty body
 * when req is cancelled (before its batch started it is left out of the batch). A
 * max_batch_size of 1 runs req at once. Returns the size of the batch req ran in, 0 when it did
 * not run (left out, or no memory for the batch: 500). */
size_t batch_run(struct batcher *b, serve_ctx *ctx, const serve_request *req, serve_response *resp);

/* How many requests the open batch holds (0: none is open). For tests and diagnostics. */
size_t batch_pending(struct batcher *b);

/* What a user_config (JSON text; NULL, unparsable or not an object: nothing) says about
 * batching: "max_batch_size" (an integer >= 1) and "batch_wait_timeout_s" (a number of seconds,
 * 0..BATCH_MAX_WAIT_S). */
struct batch_overrides {
        bool has_max;
        unsigned max_batch_size;
        bool has_wait;
        double wait_s;
};
/* Fills *ret; an invalid value is logged as a warning and left out. */
void batch_overrides_parse(const char *user_config_json, struct batch_overrides *ret);
/* Sets b's parameters to its handler's own, overridden by o (NULL: none). The user_config says
 * the whole state: a key removed from it gives the handler's value back. */
void batch_apply_overrides(struct batcher *b, const struct batch_overrides *o);
