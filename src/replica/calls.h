/* Handle calls, the replica's side: serve_call() and its futures (sdk-internal.h's runtime
 * ops). A call is written into the response ring as PROTO_CALL_START (+ CALL_BODY) records;
 * its answer comes back on the request ring as PROTO_CALL_RESP_* records, which whoever reads
 * that ring hands to calls_on_record(). A call made while a handler serves a request belongs
 * to that request: when the request is cancelled, the call is cancelled (and the worker
 * cancels it where it runs, transitively). */
#pragma once

#include <stdint.h>

#include "replica-internal.h"

/* The runtime ops for serve_ctx.ops (calls only; responses have their own). */
extern const struct serve_runtime_ops calls_runtime_ops;

/* Sets the replica whose rings the calls of this process use (once, before any handler). */
void calls_init(struct replica *rep);

/* The handler thread starts (req) or finished (NULL) serving a request: calls it makes belong
 * to it. */
void calls_set_current(struct serve_request *req);

/* A PROTO_CALL_RESP_* record from the request ring. Ends the process on a record that makes no
 * sense (like every other bad record). */
void calls_on_record(uint16_t type, const uint8_t *p, uint32_t len);

/* Request req_id was cancelled: so are the calls it made (their callers get 499). */
void calls_cancel_parent(uint64_t req_id);
