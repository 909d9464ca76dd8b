/* Handle calls, the worker's side: a replica calls another deployment of its application
 * (serve_call() in the SDK) by writing PROTO_CALL_* records into its response ring. Each call
 * becomes a request (request.h) whose *sink* is the calling replica: the router sends it to a
 * local replica or a peer node like any other request, and the answer goes back into the
 * caller's request ring as PROTO_CALL_RESP_* records. Never through HTTP.
 *
 * The caller is untrusted: its records are validated (names, lengths, at most PROTO_MAX_CALLS
 * calls at once, arguments within max_request_body_bytes and the node's body budget); a record
 * that makes no sense kills it like any garbage in its ring. When it goes away (crash, stop),
 * its calls are abandoned, which cancels them at their replicas, transitively. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "router.h"

/* One PROTO_CALL_* record from rep's response ring. Returns 0, or -EBADMSG (kill rep). */
int call_link_record(struct replica *rep, uint16_t type, const uint8_t *p, uint32_t len);

/* Writes answers that did not fit into rep's request ring, and lets calls whose answer waited
 * for room go on. Returns true when some remain (try again soon). */
bool call_link_flush(struct replica *rep);

/* rep is gone: every call it made is abandoned (cancelled where it runs). */
void call_link_abandon_all(struct replica *rep);

/* Calls rep has outstanding (for status). */
unsigned call_link_count(const struct replica *rep);

/* The head a call request carries instead of an HTTP client's ("POST / HTTP/1.1" with
 * serve-deployment, serve-method, serve-caller and serve-call-path headers): what a peer node
 * receives too. The header names are reserved for calls: they mean something only on a request
 * marked as a call. */
#define CALL_HDR_DEPLOYMENT "serve-deployment"
#define CALL_HDR_METHOD "serve-method"
#define CALL_HDR_CALLER "serve-caller"
#define CALL_HDR_PATH "serve-call-path"

/* Routes a call request q (q->call set, q->req parsed) of application `app` to its target
 * deployment: sets q->dep and q->path. Returns 0, or -ENOENT when this node does not know the
 * deployment (a peer sends it elsewhere). */
int call_route(struct router *r, struct request *q, const char *app, size_t app_len);
