/* The cluster's certificate authority and node identities (OpenSSL 3, ECDSA P-256).
 *
 * The head is the CA. It issues a certificate to each node that proves a join token (subject
 * CN = node name, OU = PKI_UNIT_NODE) and one to itself for the control port (CN = "serve-head",
 * OU = PKI_UNIT_HEAD). A node makes its key locally and sends only a certificate request; the
 * CA ignores the request's subject and writes the name it authorised. Serial numbers are given
 * by the caller (the head keeps them increasing, so "every certificate of node N older than
 * serial S is revoked" is one number per node).
 *
 * A CA hash is the SHA-256 of the CA certificate's DER encoding, as 64 lowercase hex digits; a
 * join token carries it so a joining node can check the head before sending its secret. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#define PKI_UNIT_NODE "serve-node"
#define PKI_UNIT_HEAD "serve-head"
#define PKI_HEAD_NAME "serve-head"
#define PKI_HASH_HEX 64

struct pki_ca;

/* Loads the CA from cert_path and key_path (PEM). With create, missing files are made: a new
 * key (mode 0600) and a self-signed CA certificate valid for ten years (mode 0644), named
 * "serve cluster CA <random>", both written atomically; when running as root, given the owner
 * of their directory (the daemons run as `serve`). Refuses a key file that group or others can
 * read, a certificate that is not a CA, and a key that does not match the certificate.
 * Returns 0 and *ret, or a negative errno with *ret_error naming the file and the problem. */
int pki_ca_load(const char *cert_path, const char *key_path, bool create, struct pki_ca **ret, char **ret_error);
void pki_ca_free(struct pki_ca *ca);
/* The CA certificate (PEM) and its hash (PKI_HASH_HEX hex digits + NUL). */
const char *pki_ca_cert_pem(const struct pki_ca *ca);
const char *pki_ca_hash(const struct pki_ca *ca);
int64_t pki_ca_not_after(const struct pki_ca *ca);

/* Issues a certificate for `name` (CN) and `unit` (OU) to the key of csr_pem (whose signature
 * is checked; its subject is ignored), valid from now - min(5 minutes, validity_s / 4) (clock skew) for validity_s
 * seconds (never past the CA's own expiry), with the given serial. The result is the leaf
 * followed by the CA certificate (a chain a peer can verify and pin). Returns 0 and
 * *ret_chain_pem (malloc'd), or a negative errno with *ret_error. */
int pki_ca_issue(struct pki_ca *ca, const char *csr_pem, const char *name, const char *unit, uint64_t serial,
                 int64_t validity_s, char **ret_chain_pem, char **ret_error);

/* A new private key (PEM, malloc'd). */
int pki_key_new(char **ret_key_pem);
/* A certificate request for key_pem with CN = name (PEM, malloc'd). */
int pki_csr_new(const char *key_pem, const char *name, char **ret_csr_pem, char **ret_error);

struct pki_cert_info {
        char name[256];         /* CN */
        char unit[64];          /* OU */
        uint64_t serial;
        int64_t not_before, not_after;
        char issuer_hash[PKI_HASH_HEX + 1]; /* unused by pki_cert_info(); see pki_verify_chain() */
};
/* What the first certificate of a PEM chain says. Returns 0 or -EINVAL. */
int pki_cert_info(const char *cert_pem, struct pki_cert_info *ret);
/* The hash (as pki_ca_hash()) of the first certificate in pem. Returns 0 or -EINVAL. */
int pki_cert_hash(const char *pem, char ret_hex[PKI_HASH_HEX + 1]);

/* Checks a peer's chain (leaf first, PEM) against a CA: either ca_pem (a CA certificate we
 * trust) or, when ca_pem is NULL, the certificate in the chain whose hash is ca_hash. The leaf
 * must be signed by that CA, currently valid, and have OU = unit. Returns 0 and, when
 * ret_ca_pem is not NULL, the CA certificate that matched (PEM, malloc'd); or -EPERM with
 * *ret_error ("no certificate in the chain has the CA hash of the join token", "certificate
 * has expired", "the certificate is for a serve-node, not a serve-head"...). */
int pki_verify_chain(const char *chain_pem, const char *ca_pem, const char *ca_hash, const char *unit,
                     char **ret_ca_pem, char **ret_error);

/* pki_verify_chain() against ca_pem without checking the validity period: a stored identity
 * still loads when its certificate has expired (its owner must then join again). Returns 0 or
 * -EPERM/-EINVAL with *ret_error. */
int pki_verify_chain_any_time(const char *chain_pem, const char *ca_pem, const char *unit, char **ret_error);
/* Whether key_pem is the private key of the first certificate of cert_pem. Returns 1, 0, or
 * -EINVAL when either does not parse. */
int pki_key_matches_cert(const char *key_pem, const char *cert_pem);
/* Whether name can be a certificate's CN or OU here: 1 to 200 characters of A-Z a-z 0-9 . _ - */
bool pki_name_valid(const char *name);

/* Writes data to path atomically (a temporary file in the same directory, fsync, rename) with
 * mode; when running as root, gives it the owner of the directory. Returns 0 or a negative errno. */
int pki_write_file(const char *path, const char *data, unsigned mode);
/* Reads a whole (small, <= 1 MiB) file. With private_file, refuses (-EPERM) one that group or
 * others can access. Returns 0 and *ret (malloc'd, NUL-terminated) or a negative errno. */
int pki_read_file(const char *path, bool private_file, char **ret);
