/* The proxy's side of a replica's rings: puts requests into the request ring (in chunks, as
 * space allows), reads and validates everything the replica writes into the response ring,
 * and matches responses to in-flight requests. Everything read from a replica is untrusted. */
#pragma once

#include "router.h"

/* Allocates the in-flight table of a replica (max_ongoing entries). Returns 0 or -ENOMEM. */
int replica_link_init(struct replica *rep, uint32_t max_ongoing);
void replica_link_free(struct replica *rep);

/* A new max_ongoing_requests for a running replica: more slots, or a lower limit (requests in
 * flight above it finish). Returns 0 or -ENOMEM. */
int replica_link_set_limit(struct replica *rep, uint32_t max_ongoing);

/* Assigns u to rep (a free slot must exist: rep->ongoing < rep->n_slots) and starts sending it. */
void replica_link_send(struct replica *rep, struct upreq *u);

/* Continues sending requests that did not fit into the ring. Returns true when some remain. */
bool replica_link_flush(struct replica *rep);

/* Wakes the replica if requests were published while it slept (once per loop iteration). */
void replica_link_ring_bells(struct replica *rep);

/* Reads every complete record of the response ring and delivers it. Returns the number of
 * responses completed (>= 0), or -EBADMSG when the replica wrote something invalid: the caller
 * kills it (its in-flight requests are answered 502 by replica_link_fail_all()). */
int replica_link_poll(struct replica *rep);

/* The client no longer waits for u (timeout or disconnect): tell the replica, keep the slot
 * until its response arrives (the replica is still busy with it). */
void replica_link_cancel(struct upreq *u);

/* Answers every request assigned to rep with `status` (502 crash, 504 hang) and empties the
 * in-flight table. */
void replica_link_fail_all(struct replica *rep, int status, const char *why);
