/* A local replica as a backend (request.h): puts requests into its request ring (in chunks,
 * as space allows), reads and validates everything the replica writes into its response ring,
 * and matches responses to in-flight requests. Everything read from a replica is untrusted.
 * When a request's sink is full, the response ring is not read until the sink has room again:
 * that replica's other responses wait, no memory grows.
 *
 * A streaming response (PROTO_RESP_STREAM: pieces until PROTO_RESP_END) does not stop the ring:
 * the replica may have PROTO_STREAM_WINDOW bytes of it sent and not credited, and we credit
 * (PROTO_REQ_CREDIT) what its sink took, while the sink has room. A slow client thus stops its
 * own handler (its flush waits), and the replica's other responses go on. */
#pragma once

#include "router.h"

/* Allocates the in-flight table of a replica (max_ongoing entries) and makes it a backend
 * (rep->be). Returns 0 or -ENOMEM. */
int replica_link_init(struct replica *rep, uint32_t max_ongoing);
void replica_link_free(struct replica *rep);

/* A new max_ongoing_requests for a running replica: more slots, or a lower limit (requests in
 * flight above it finish). Returns 0 or -ENOMEM. */
int replica_link_set_limit(struct replica *rep, uint32_t max_ongoing);

/* Continues sending requests that did not fit into the ring, and streams' credits and cancels
 * that did not. Returns true when some remain. */
bool replica_link_flush(struct replica *rep);

/* Wakes the replica if requests were published while it slept (once per loop iteration). */
void replica_link_ring_bells(struct replica *rep);

/* Reads every complete record of the response ring and delivers it (not while a sink is full).
 * Returns the number of responses completed (>= 0), or -EBADMSG when the replica wrote
 * something invalid: the caller kills it (its in-flight requests are answered 502 by
 * replica_link_fail_all()). */
int replica_link_poll(struct replica *rep);

/* True while the response ring waits for a full sink (do not count it as having data). */
static inline bool replica_link_stalled(const struct replica *rep) { return rep->stalled != NULL; }

/* Answers every request assigned to rep with `status` (502 crash, 504 hang) and empties the
 * in-flight table. */
void replica_link_fail_all(struct replica *rep, int status, const char *why);
