/* Join tokens: what a new node presents once to receive its certificate.
 *
 * The text a node is given is
 *     SRV1.<CA hash: 64 hex>.<id: 16 hex>.<secret: 64 hex>
 * (kubeadm and k3s carry the CA hash the same way): the node checks that the head's
 * certificate chains to that CA before it sends anything, then sends id and secret. A bare
 * secret (the long-lived token in join_token_file that the package makes at installation) is
 * token id "default"; the node must then know the CA another way (worker.yaml ca_file).
 *
 * The head keeps minted tokens in <pki dir>/join-tokens.json (mode 0600): id, the SHA-256 of
 * the secret (never the secret), creation and expiry time, uses left, the node name it is
 * bound to, whether it is revoked. `serve-head --join-token ...` and the running head share
 * the file under an flock, so a token minted by the command works at once and a use counted
 * by the head is seen by the command. Revoking "default" records the hash of the current
 * join_token_file secret: a new secret written there works again. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pki.h"

#define JOINTOKEN_ID_HEX 16
#define JOINTOKEN_SECRET_HEX 64
#define JOINTOKEN_DEFAULT_ID "default"
#define JOINTOKEN_STORE "join-tokens.json"

struct jointoken {
        char ca_hash[PKI_HASH_HEX + 1];     /* "" for a bare secret */
        char id[JOINTOKEN_ID_HEX + 1];      /* JOINTOKEN_DEFAULT_ID for a bare secret */
        char *secret;                       /* malloc'd */
};

/* Parses a token's text (surrounding whitespace already trimmed). A text without dots is a bare
 * secret. Returns 0, or -EINVAL for "SRV1." text that is malformed (wrong field count, length
 * or hex). */
int jointoken_parse(const char *text, struct jointoken *ret);
void jointoken_done(struct jointoken *t);
/* "SRV1.<ca_hash>.<id>.<secret>" (malloc'd). */
char *jointoken_format(const char *ca_hash, const char *id, const char *secret);

/* Mints a token in the store of dir: ttl_s 0 = never expires, uses 0 = unlimited, name NULL =
 * any node name. Returns 0 and the token's full text (malloc'd) and id, or a negative errno. */
int jointoken_create(const char *dir, const char *ca_hash, uint64_t ttl_s, unsigned uses, const char *name,
                     char **ret_text, char ret_id[JOINTOKEN_ID_HEX + 1]);

/* Checks a presented id + secret for a node called node_name and, when it is good, counts one
 * use (a token bound to a name may be used again by that name only while uses remain).
 * default_secret is the current join_token_file secret (NULL: none). Compares in constant
 * time. Returns 0, or -EACCES with *ret_reason (static text: "unknown token", "token
 * expired", "token used up", "token revoked", "token is for another node"), or another
 * negative errno for a store that cannot be read or written. */
int jointoken_consume(const char *dir, const char *id, const char *secret, const char *default_secret,
                      const char *node_name, const char **ret_reason);

/* Revokes token `id` (or JOINTOKEN_DEFAULT_ID with default_secret: the current file secret).
 * Returns 0 or -ENOENT. */
int jointoken_revoke(const char *dir, const char *id, const char *default_secret);

/* Prints the tokens (id, node, uses left, expiry, state; never secrets) as a table. */
int jointoken_list(const char *dir, FILE *out);
