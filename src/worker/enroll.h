/* This node's membership of the cluster: who it is (its key and the certificate the head's CA
 * issued for it, stored under state_dir), how it got it (joining with a token, after checking
 * the head against the token's CA hash or worker.yaml's ca_file), the TLS contexts of its links
 * (to the head, to and from peers), and renewal before its certificate expires.
 *
 * With transport: plaintext there is no certificate: the node shows its join token in every
 * hello, as before. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "netconn.h"
#include "nodecfg.h"
#include "tls.h"
#include "util.h"

struct enroll;

/* Reads what this node has: in plaintext the join token (required); with TLS the stored
 * identity, and the join token when there is none (or it expired, or the token names another
 * CA: the operator rotated it). Paths are as in cfg (already relative to worker.yaml). Returns
 * 0 or a negative errno (logged, naming the file). */
int enroll_init(const struct worker_config *cfg, struct enroll **ret);
void enroll_free(struct enroll *e);

bool enroll_is_tls(const struct enroll *e);
/* The token for a plaintext hello; NULL with TLS (the certificate says who we are). */
const char *enroll_hello_token(const struct enroll *e);

/* With TLS: uses the stored identity when it is good (1: done, the contexts exist), or gets
 * ready to join (0: call enroll_join_step() until it is done). Returns a negative errno for
 * what cannot work (logged: a bare token without a CA to check the head with, ...). */
int enroll_start(struct enroll *e, struct loop *loop);
/* Drives the join on `loop` (connects, retrying with backoff while the head is unreachable).
 * Returns 0 while it goes on (*ret_wait_ns: when to call again at the latest), 1 once the
 * node has its certificate (stored; the contexts exist), or a negative errno for a refusal or
 * a head that failed verification (logged: the node must not go on). */
int enroll_join_step(struct enroll *e, uint64_t now, uint64_t *ret_wait_ns);

/* The contexts of our links (NULL in plaintext); they stay the same objects across renewals. */
struct tls_ctx *enroll_client_ctx(const struct enroll *e);
struct tls_ctx *enroll_server_ctx(const struct enroll *e);

/* After the handshake with what answers at head_address: 0 when it holds the cluster head's
 * certificate, -EPERM otherwise (logged, rate-limited: nothing from it may be applied). */
int enroll_check_head(struct enroll *e, struct netconn *nc);
/* A head link closed before it was authenticated: logs why (rate-limited) when TLS refused it. */
void enroll_note_head_closed(struct enroll *e, struct netconn *nc);

/* A `renew` message when the certificate is due for renewal and none is in flight, else NULL. */
cJSON *enroll_renew_message(struct enroll *e);
/* The head's `certificate` answer: checks and stores it, and new links present it. Returns 0 or
 * a negative errno (logged). */
int enroll_on_certificate(struct enroll *e, const cJSON *m);

/* This node's families for /metrics: transport, handshakes, kTLS, certificate expiry. */
void enroll_render_metrics(const struct enroll *e, struct buf *b);
