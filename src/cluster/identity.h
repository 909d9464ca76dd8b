/* A worker's identity on disk: its private key, the certificate the head issued for it, and
 * the cluster CA certificate it trusts, under the worker's state_dir (mode 0600, the key is
 * never sent anywhere). A restarted worker uses them and needs no token.
 *
 *   <state_dir>/node.key   node.crt (chain: leaf, CA)   ca.crt */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "pki.h"

struct identity {
        char *key_pem, *cert_pem, *ca_pem;  /* malloc'd; NULL when absent */
        struct pki_cert_info info;          /* of cert_pem */
        char ca_hash[PKI_HASH_HEX + 1];
};

/* Loads what exists in dir. Returns 1 with a complete identity (all three files, a certificate
 * that matches the key and chains to ca.crt), 0 when there is none (or it is incomplete:
 * *ret_why says what is missing), or a negative errno with *ret_why for files that exist but
 * are unreadable, too open (group/other access), or corrupt. */
int identity_load(const char *dir, struct identity *ret, char **ret_why);
/* Stores a new identity (each file atomically, 0600). ca_pem may be NULL to keep the stored one. */
int identity_save(const char *dir, const char *key_pem, const char *cert_pem, const char *ca_pem);
void identity_done(struct identity *id);
/* When to renew: two thirds of the way through the certificate's validity (Unix seconds). */
int64_t identity_renew_at(const struct identity *id);
