/* The cluster CA, join tokens and a worker's stored identity: what an operator and a joining
 * node would notice — files with the right modes, refusals that say why, chains that verify
 * only against the CA they came from, tokens that stop working when they should, and no
 * secret ever written down. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "cluster/identity.h"
#include "cluster/jointoken.h"
#include "cluster/pki.h"
#include "tap.h"

/* A parsed token's secret, the rest of it freed. */
#define TAKE_SECRET(t) ({ char *_s = (t).secret; (t).secret = NULL; jointoken_done(&(t)); _s; })

static char dir[] = "/tmp/test-pki-XXXXXX";
static struct pki_ca *ca1, *ca2;

/* dir/name in one of a few rotating buffers (enough for the arguments of one call). */
static const char *at(const char *name) {
        static char bufs[8][512];
        static unsigned next;
        char *b = bufs[next++ % 8];
        snprintf(b, sizeof(bufs[0]), "%s/%s", dir, name);
        return b;
}

static bool has(const char *hay, const char *needle) {
        return hay && needle && strstr(hay, needle);
}

static unsigned file_mode(const char *path) {
        struct stat st;
        return stat(path, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0;
}

static void write_text(const char *path, const char *text, unsigned mode) {
        FILE *f = fopen(path, "we");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0 || chmod(path, mode) < 0) {
                ok(false, "write %s", path);
                exit(1);
        }
}

static char *read_text(const char *path) {
        char *t = NULL;
        if (pki_read_file(path, false, &t) < 0)
                return NULL;
        return t;
}

static unsigned count(const char *hay, const char *needle) {
        unsigned n = 0;
        for (const char *p = hay; p && (p = strstr(p, needle)); p++)
                n++;
        return n;
}

/* A leaf of `ca` for name/unit: new key, CSR, issue. */
static char *issue(struct pki_ca *ca, const char *name, const char *unit, uint64_t serial, int64_t validity_s,
                   char **ret_key) {
        char *key = NULL, *csr = NULL, *chain = NULL, *error = NULL;
        if (pki_key_new(&key) < 0 || pki_csr_new(key, name, &csr, &error) < 0 ||
            pki_ca_issue(ca, csr, name, unit, serial, validity_s, &chain, &error) < 0) {
                printf("#   issue %s: %s\n", name, error ? error : "?");
                chain = NULL;
        }
        free(csr);
        free(error);
        if (ret_key)
                *ret_key = key;
        else
                free(key);
        return chain;
}

static void test_ca(void) {
        char *error = NULL;
        struct pki_ca *again = NULL, *bad = NULL;
        char hash[PKI_HASH_HEX + 1];
        int r;

        umask(077); /* the certificate must still come out 0644 */
        r = pki_ca_load(at("ca.crt"), at("ca.key"), true, &ca1, &error);
        umask(022);
        is_int(r, 0, "a new CA is made when neither file exists (%s)", error ? error : "");
        free(error);
        error = NULL;
        if (r < 0)
                exit(1);
        is_int(file_mode(at("ca.key")), 0600, "the CA key has mode 0600");
        is_int(file_mode(at("ca.crt")), 0644, "the CA certificate has mode 0644");
        ok(strlen(pki_ca_hash(ca1)) == PKI_HASH_HEX && strspn(pki_ca_hash(ca1), "0123456789abcdef") == PKI_HASH_HEX,
           "the CA hash is 64 lowercase hex digits (%s)", pki_ca_hash(ca1));
        ok(pki_cert_hash(pki_ca_cert_pem(ca1), hash) == 0 && strcmp(hash, pki_ca_hash(ca1)) == 0,
           "pki_cert_hash() of the CA certificate is the CA hash");
        int64_t ten_years = (int64_t)time(NULL) + 3650LL * 86400;
        ok(llabs(pki_ca_not_after(ca1) - ten_years) < 10, "the CA is valid for ten years");
        struct pki_cert_info info;
        ok(pki_cert_info(pki_ca_cert_pem(ca1), &info) == 0 && strncmp(info.name, "serve cluster CA ", 17) == 0 &&
           strlen(info.name) == 17 + 8, "the CA is named \"serve cluster CA <8 hex>\" (%s)", info.name);

        r = pki_ca_load(at("ca.crt"), at("ca.key"), false, &again, &error);
        ok(r == 0 && strcmp(pki_ca_hash(again), pki_ca_hash(ca1)) == 0, "loading the CA again gives the same hash");
        ok(r == 0 && strcmp(pki_ca_cert_pem(again), pki_ca_cert_pem(ca1)) == 0, "... and the same certificate");
        pki_ca_free(again);
        again = NULL;
        free(error);
        error = NULL;

        r = pki_ca_load(at("ca2.crt"), at("ca2.key"), true, &ca2, NULL);
        ok(r == 0 && strcmp(pki_ca_hash(ca1), pki_ca_hash(ca2)) != 0, "a second CA has another hash");
        if (r < 0)
                exit(1);

        chmod(at("ca.key"), 0644);
        r = pki_ca_load(at("ca.crt"), at("ca.key"), false, &bad, &error);
        is_int(r, -EPERM, "a CA key readable by others is refused");
        ok(has(error, "chmod 600") && has(error, at("ca.key")) && has(error, "0644"),
           "... with a message naming the file, its mode and chmod 600 (%s)", error);
        free(error);
        error = NULL;
        chmod(at("ca.key"), 0600);

        mkdir(at("half"), 0700);
        char *cert = read_text(at("ca.crt"));
        write_text(at("half/ca.crt"), cert, 0644);
        free(cert);
        r = pki_ca_load(at("half/ca.crt"), at("half/ca.key"), true, &bad, &error);
        is_int(r, -ENOENT, "a CA certificate without its key is refused, even with create");
        ok(has(error, at("half/ca.key")) && has(error, "missing"), "... naming the missing key (%s)", error);
        ok(access(at("half/ca.key"), F_OK) < 0, "... and no key is made for it");
        free(error);
        error = NULL;

        r = pki_ca_load(at("none.crt"), at("none.key"), false, &bad, &error);
        is_int(r, -ENOENT, "without create, a missing CA is an error");
        free(error);
        error = NULL;

        char *leaf_key = NULL, *leaf = issue(ca1, "worker-x", PKI_UNIT_NODE, 7, 3600, &leaf_key);
        write_text(at("leaf.crt"), leaf ? leaf : "", 0644);
        write_text(at("leaf.key"), leaf_key ? leaf_key : "", 0600);
        r = pki_ca_load(at("leaf.crt"), at("leaf.key"), false, &bad, &error);
        is_int(r, -EINVAL, "a certificate that is not a CA is refused as the CA");
        ok(has(error, "not a CA") && has(error, at("leaf.crt")), "... naming the file (%s)", error);
        free(error);
        error = NULL;
        free(leaf);
        free(leaf_key);

        r = pki_ca_load(at("ca.crt"), at("ca2.key"), false, &bad, &error);
        is_int(r, -EINVAL, "a CA key that does not match the certificate is refused");
        ok(has(error, "does not match") && has(error, at("ca2.key")), "... naming the key (%s)", error);
        free(error);
        error = NULL;

        write_text(at("junk.crt"), "hello\n", 0644);
        r = pki_ca_load(at("junk.crt"), at("ca.key"), false, &bad, &error);
        is_int(r, -EINVAL, "a CA certificate file without a certificate is refused");
        ok(has(error, at("junk.crt")), "... naming the file (%s)", error);
        free(error);
}

/* The same PEM with the last byte of the signature flipped. */
static char *tamper_csr(const char *csr_pem) {
        BIO *in = BIO_new_mem_buf(csr_pem, -1), *out = BIO_new(BIO_s_mem());
        X509_REQ *req = PEM_read_bio_X509_REQ(in, NULL, NULL, NULL);
        unsigned char *der = NULL;
        int n = req ? i2d_X509_REQ(req, &der) : -1;
        char *p, *res = NULL;
        if (n > 0) {
                der[n - 1] ^= 0x01;
                if (PEM_write_bio(out, "CERTIFICATE REQUEST", "", der, n) > 0) {
                        long len = BIO_get_mem_data(out, &p);
                        res = strndup(p, (size_t)len);
                }
        }
        OPENSSL_free(der);
        X509_REQ_free(req);
        BIO_free(in);
        BIO_free(out);
        return res;
}

static void test_issue(void) {
        char *key = NULL, *csr = NULL, *chain = NULL, *error = NULL, *ca_pem = NULL;
        struct pki_cert_info info;
        int64_t now = (int64_t)time(NULL);
        int r;

        ok(pki_key_new(&key) == 0 && has(key, "PRIVATE KEY"), "a new key is PEM");
        ok(pki_csr_new(key, "name-in-csr", &csr, &error) == 0 && has(csr, "CERTIFICATE REQUEST"),
           "a certificate request is made for it");
        r = pki_ca_issue(ca1, csr, "worker-1", PKI_UNIT_NODE, 42, 3600, &chain, &error);
        is_int(r, 0, "the CA issues a certificate (%s)", error ? error : "");
        ok(count(chain, "BEGIN CERTIFICATE") == 2 && has(chain, pki_ca_cert_pem(ca1)),
           "the result is the leaf followed by the CA certificate");
        r = pki_cert_info(chain, &info);
        is_int(r, 0, "the certificate's info reads");
        ok(strcmp(info.name, "worker-1") == 0, "its name is what the CA authorised, not the request's CN (%s)",
           info.name);
        ok(strcmp(info.unit, PKI_UNIT_NODE) == 0, "its unit is %s (%s)", PKI_UNIT_NODE, info.unit);
        is_int(info.serial, 42, "its serial is the one given");
        ok(llabs(info.not_after - (now + 3600)) <= 5, "it is valid for the hour asked (not_after %lld, now %lld)",
           (long long)info.not_after, (long long)now);
        ok(llabs(info.not_before - (now - 300)) <= 5, "it is valid from 5 minutes ago (clock skew)");

        r = pki_verify_chain(chain, pki_ca_cert_pem(ca1), NULL, PKI_UNIT_NODE, &ca_pem, &error);
        is_int(r, 0, "the chain verifies against the CA certificate (%s)", error ? error : "");
        ok(ca_pem && strcmp(ca_pem, pki_ca_cert_pem(ca1)) == 0, "... and the matched CA is returned");
        free(ca_pem);
        ca_pem = NULL;
        r = pki_verify_chain(chain, NULL, pki_ca_hash(ca1), PKI_UNIT_NODE, &ca_pem, &error);
        is_int(r, 0, "the chain verifies against the CA hash (%s)", error ? error : "");
        ok(ca_pem && strcmp(ca_pem, pki_ca_cert_pem(ca1)) == 0, "... and the CA certificate with that hash is returned");
        free(ca_pem);
        ca_pem = NULL;

        r = pki_verify_chain(chain, NULL, pki_ca_hash(ca2), PKI_UNIT_NODE, NULL, &error);
        is_int(r, -EPERM, "the chain does not verify against another CA's hash");
        ok(has(error, "no certificate in the chain has the CA hash"), "... saying so (%s)", error);
        free(error);
        error = NULL;
        r = pki_verify_chain(chain, pki_ca_cert_pem(ca2), NULL, PKI_UNIT_NODE, NULL, &error);
        is_int(r, -EPERM, "the chain does not verify against another CA's certificate (%s)", error);
        free(error);
        error = NULL;
        r = pki_verify_chain(chain, pki_ca_cert_pem(ca1), NULL, PKI_UNIT_HEAD, NULL, &error);
        is_int(r, -EPERM, "a node certificate is refused where the head's is expected");
        ok(has(error, "the certificate is for a serve-node, not a serve-head"), "... saying so (%s)", error);
        free(error);
        error = NULL;

        /* An impostor: right name and unit, another CA; with and without our CA certificate
         * appended to its chain. */
        char *fake = issue(ca2, PKI_HEAD_NAME, PKI_UNIT_HEAD, 1, 3600, NULL), *fake_plus = NULL;
        r = pki_verify_chain(fake, pki_ca_cert_pem(ca1), NULL, PKI_UNIT_HEAD, NULL, &error);
        is_int(r, -EPERM, "a serve-head certificate from another CA is refused by our CA certificate (%s)", error);
        free(error);
        error = NULL;
        r = pki_verify_chain(fake, NULL, pki_ca_hash(ca1), PKI_UNIT_HEAD, NULL, &error);
        ok(r == -EPERM && has(error, "no certificate in the chain has the CA hash"),
           "... and by our CA hash (%s)", error);
        free(error);
        error = NULL;
        if (asprintf(&fake_plus, "%s%s", fake, pki_ca_cert_pem(ca1)) < 0)
                fake_plus = NULL;
        r = pki_verify_chain(fake_plus, NULL, pki_ca_hash(ca1), PKI_UNIT_HEAD, NULL, &error);
        is_int(r, -EPERM, "... even with our CA certificate appended to its chain (%s)", error);
        free(error);
        error = NULL;
        free(fake);
        free(fake_plus);
        r = pki_verify_chain(pki_ca_cert_pem(ca1), NULL, pki_ca_hash(ca1), PKI_UNIT_HEAD, NULL, &error);
        is_int(r, -EPERM, "the CA certificate itself is not accepted as a peer's certificate (%s)", error);
        free(error);
        error = NULL;
        r = pki_verify_chain("garbage", pki_ca_cert_pem(ca1), NULL, PKI_UNIT_NODE, NULL, &error);
        is_int(r, -EPERM, "a chain that does not parse is refused (%s)", error);
        free(error);
        error = NULL;

        char *head = issue(ca1, PKI_HEAD_NAME, PKI_UNIT_HEAD, 2, 3600, NULL);
        r = pki_verify_chain(head, NULL, pki_ca_hash(ca1), PKI_UNIT_HEAD, NULL, &error);
        is_int(r, 0, "the head's own certificate verifies by the CA hash of a join token (%s)", error ? error : "");
        free(head);

        char *long_chain = NULL;
        r = pki_ca_issue(ca1, csr, "worker-1", PKI_UNIT_NODE, 43, 20LL * 365 * 86400, &long_chain, &error);
        ok(r == 0 && pki_cert_info(long_chain, &info) == 0 && info.not_after == pki_ca_not_after(ca1),
           "a certificate never outlives the CA (not_after %lld, CA %lld)", (long long)info.not_after,
           (long long)pki_ca_not_after(ca1));
        free(long_chain);

        static const char *bad_names[] = { "", "bad name", "a/b", "x\n", "worker:1" };
        for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
                char *c = NULL;
                r = pki_ca_issue(ca1, csr, bad_names[i], PKI_UNIT_NODE, 44, 3600, &c, &error);
                ok(r == -EINVAL && c == NULL && has(error, "invalid certificate name"),
                   "bad name %zu is refused (%s)", i, error);
                free(error);
                error = NULL;
        }
        char long_name[202];
        memset(long_name, 'a', 201);
        long_name[201] = '\0';
        ok(pki_ca_issue(ca1, csr, long_name, PKI_UNIT_NODE, 44, 3600, &chain, &error) == -EINVAL,
           "a 201-character name is refused");
        free(error);
        error = NULL;
        ok(pki_name_valid("worker-1.rack_2") && !pki_name_valid(NULL), "names of letters, digits and . _ - are valid");
        ok(pki_ca_issue(ca1, csr, "worker-1", PKI_UNIT_NODE, 0, 3600, &chain, &error) == -EINVAL,
           "serial 0 is refused (%s)", error);
        free(error);
        error = NULL;

        char *tampered = tamper_csr(csr), *c = NULL;
        ok(tampered != NULL, "a tampered request can be made");
        r = pki_ca_issue(ca1, tampered, "worker-1", PKI_UNIT_NODE, 45, 3600, &c, &error);
        ok(r == -EINVAL && c == NULL && has(error, "signature"), "a request with a broken signature is refused (%s)",
           error);
        free(error);
        error = NULL;
        free(tampered);
        r = pki_ca_issue(ca1, "not a request", "worker-1", PKI_UNIT_NODE, 45, 3600, &c, &error);
        is_int(r, -EINVAL, "text that is not a request is refused (%s)", error);
        free(error);
        error = NULL;

        /* A key too weak to sign for anything. */
        EVP_PKEY *rsa = EVP_RSA_gen(1024);
        BIO *b = BIO_new(BIO_s_mem());
        char *rsa_pem = NULL, *rsa_csr = NULL, *p;
        if (rsa && b && PEM_write_bio_PrivateKey(b, rsa, NULL, NULL, 0, NULL, NULL) == 1) {
                long len = BIO_get_mem_data(b, &p);
                rsa_pem = strndup(p, (size_t)len);
        }
        ok(rsa_pem && pki_csr_new(rsa_pem, "weak", &rsa_csr, NULL) == 0, "a request with an RSA-1024 key is made");
        r = pki_ca_issue(ca1, rsa_csr, "weak", PKI_UNIT_NODE, 46, 3600, &c, &error);
        ok(r == -EINVAL && has(error, "weak"), "... and refused as too weak (%s)", error);
        free(error);
        error = NULL;
        free(rsa_pem);
        free(rsa_csr);
        BIO_free(b);
        EVP_PKEY_free(rsa);

        ok(pki_csr_new(key, "bad name", &c, &error) == -EINVAL, "a request for a bad name is refused (%s)", error);
        free(error);
        error = NULL;
        ok(pki_cert_info("nothing", &info) == -EINVAL && pki_cert_hash("nothing", (char[PKI_HASH_HEX + 1]){}) == -EINVAL,
           "text without a certificate has no info and no hash");

        free(key);
        free(csr);
        free(chain);
}

/* A node certificate of ca1 that expired an hour ago (the API cannot make one), with its key. */
static char *expired_chain(char **ret_key) {
        char *key_text = read_text(at("ca.key")), *leaf_key = NULL, *res = NULL, *p;
        BIO *kb = key_text ? BIO_new_mem_buf(key_text, -1) : NULL, *cb = BIO_new_mem_buf(pki_ca_cert_pem(ca1), -1);
        EVP_PKEY *ca_key = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL, *leaf_pkey = NULL;
        X509 *ca_cert = PEM_read_bio_X509(cb, NULL, NULL, NULL), *x = X509_new();
        BIO *lb = NULL, *out = BIO_new(BIO_s_mem());
        time_t now = time(NULL);

        if (pki_key_new(&leaf_key) == 0) {
                lb = BIO_new_mem_buf(leaf_key, -1);
                leaf_pkey = PEM_read_bio_PrivateKey(lb, NULL, NULL, NULL);
        }
        X509_NAME *n = X509_get_subject_name(x);
        if (ca_key && ca_cert && leaf_pkey && X509_set_version(x, X509_VERSION_3) &&
            ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), 99) &&
            X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_UTF8, (const unsigned char *)PKI_UNIT_NODE, -1, -1, 0) &&
            X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"worker-old", -1, -1, 0) &&
            X509_set_issuer_name(x, X509_get_subject_name(ca_cert)) && ASN1_TIME_set(X509_getm_notBefore(x), now - 7200) &&
            ASN1_TIME_set(X509_getm_notAfter(x), now - 3600) && X509_set_pubkey(x, leaf_pkey) &&
            X509_sign(x, ca_key, EVP_sha256()) > 0 && PEM_write_bio_X509(out, x) == 1) {
                long len = BIO_get_mem_data(out, &p);
                if (asprintf(&res, "%.*s%s", (int)len, p, pki_ca_cert_pem(ca1)) < 0)
                        res = NULL;
        }
        X509_free(x);
        X509_free(ca_cert);
        EVP_PKEY_free(ca_key);
        EVP_PKEY_free(leaf_pkey);
        BIO_free(kb);
        BIO_free(cb);
        BIO_free(lb);
        BIO_free(out);
        free(key_text);
        *ret_key = leaf_key;
        return res;
}

static void test_identity(void) {
        struct identity id = {};
        char *why = NULL, *key = NULL, *other_key = NULL, *chain, *error = NULL;
        const char *idir = at("node");
        int r;

        r = identity_load(idir, &id, &why);
        is_int(r, 0, "no identity in a directory that does not exist");
        ok(has(why, "no stored identity"), "... saying so (%s)", why);
        free(why);
        why = NULL;

        chain = issue(ca1, "worker-1", PKI_UNIT_NODE, 50, 86400, &key);
        is_int(identity_save(idir, key, chain, pki_ca_cert_pem(ca1)), 0, "an identity is saved");
        is_int(file_mode(idir), 0700, "its directory is made with mode 0700");
        ok(file_mode(at("node/node.key")) == 0600 && file_mode(at("node/node.crt")) == 0600 &&
           file_mode(at("node/ca.crt")) == 0600, "its three files have mode 0600");
        r = identity_load(idir, &id, &why);
        is_int(r, 1, "it loads back (%s)", why ? why : "");
        ok(r == 1 && strcmp(id.key_pem, key) == 0 && strcmp(id.cert_pem, chain) == 0 &&
           strcmp(id.ca_pem, pki_ca_cert_pem(ca1)) == 0, "with the same key, certificate and CA");
        ok(strcmp(id.info.name, "worker-1") == 0 && id.info.serial == 50, "its info is the certificate's");
        ok(strcmp(id.ca_hash, pki_ca_hash(ca1)) == 0, "its CA hash is the CA's");
        int64_t span = id.info.not_after - id.info.not_before;
        is_int(identity_renew_at(&id), id.info.not_before + span * 2 / 3, "renewal is due two thirds into the validity");
        identity_done(&id);

        is_int(identity_save(idir, key, chain, NULL), 0, "saving without a CA keeps the stored one");
        is_int(identity_load(idir, &id, NULL), 1, "... and it still loads");
        identity_done(&id);

        unlink(at("node/node.crt"));
        r = identity_load(idir, &id, &why);
        is_int(r, 0, "an identity without its certificate counts as none");
        ok(has(why, "node.crt") && !has(why, "node.key"), "... naming what is missing (%s)", why);
        free(why);
        why = NULL;

        identity_save(idir, key, chain, pki_ca_cert_pem(ca1));
        chmod(at("node/node.key"), 0640);
        r = identity_load(idir, &id, &why);
        is_int(r, -EPERM, "a key others can read is refused");
        ok(has(why, "chmod 600") && has(why, "node.key"), "... saying what to do (%s)", why);
        free(why);
        why = NULL;
        chmod(at("node/node.key"), 0600);

        identity_save(idir, key, chain, pki_ca_cert_pem(ca2));
        r = identity_load(idir, &id, &why);
        is_int(r, -EINVAL, "a certificate that does not chain to the stored CA is refused");
        ok(has(why, "does not chain"), "... saying so (%s)", why);
        free(why);
        why = NULL;

        pki_key_new(&other_key);
        identity_save(idir, other_key, chain, pki_ca_cert_pem(ca1));
        r = identity_load(idir, &id, &why);
        is_int(r, -EINVAL, "a key that does not match the certificate is refused");
        ok(has(why, "does not match"), "... saying so (%s)", why);
        free(why);
        why = NULL;

        char *old_key = NULL, *old = expired_chain(&old_key);
        ok(old != NULL, "an expired certificate of our CA can be made");
        r = pki_verify_chain(old, pki_ca_cert_pem(ca1), NULL, PKI_UNIT_NODE, NULL, &error);
        ok(r == -EPERM && has(error, "expired"), "an expired certificate does not verify (%s)", error);
        free(error);
        identity_save(idir, old_key, old, pki_ca_cert_pem(ca1));
        r = identity_load(idir, &id, &why);
        is_int(r, 1, "but an expired stored identity still loads: the worker decides to join again (%s)",
               why ? why : "");
        ok(r == 1 && id.info.not_after < (int64_t)time(NULL), "... and its expiry shows");
        identity_done(&id);

        free(old);
        free(old_key);
        free(other_key);
        free(key);
        free(chain);
}

static void test_token_text(void) {
        struct jointoken t = {};
        const char *hash = pki_ca_hash(ca1);
        const char *id = "0123456789abcdef";
        const char *secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        char *text = jointoken_format(hash, id, secret);

        ok(text && strncmp(text, "SRV1.", 5) == 0, "a token's text starts with SRV1. (%s)", text);
        is_int(jointoken_parse(text, &t), 0, "it parses");
        ok(strcmp(t.ca_hash, hash) == 0 && strcmp(t.id, id) == 0 && t.secret && strcmp(t.secret, secret) == 0,
           "into the same CA hash, id and secret");
        jointoken_done(&t);

        char *bads[6] = {};
        const char *whats[6] = { "a wrong prefix", "a short CA hash", "three fields", "five fields", "an empty field",
                                 "a secret too long" };
        if (asprintf(&bads[0], "SRV2.%s.%s.%s", hash, id, secret) < 0 ||
            asprintf(&bads[1], "SRV1.%.63s.%s.%s", hash, id, secret) < 0 ||
            asprintf(&bads[2], "SRV1.%s.%s", hash, id) < 0 ||
            asprintf(&bads[3], "SRV1.%s.%s.%s.00", hash, id, secret) < 0 ||
            asprintf(&bads[4], "SRV1.%s..%s", hash, secret) < 0 ||
            asprintf(&bads[5], "SRV1.%s.%s.%s0", hash, id, secret) < 0)
                exit(1);
        for (size_t i = 0; i < 6; i++) {
                ok(jointoken_parse(bads[i], &t) == -EINVAL, "a token with %s is refused", whats[i]);
                free(bads[i]);
        }
        char *nonhex = strdup(text);
        nonhex[5 + 10] = 'g';
        ok(jointoken_parse(nonhex, &t) == -EINVAL, "a token with a non-hex digit is refused");
        nonhex[5 + 10] = 'A';
        ok(jointoken_parse(nonhex, &t) == -EINVAL, "... and one with an uppercase hex digit");
        free(nonhex);
        free(text);

        is_int(jointoken_parse("s3cr3t-from-the-package", &t), 0, "a bare secret parses");
        ok(strcmp(t.id, JOINTOKEN_DEFAULT_ID) == 0 && t.ca_hash[0] == '\0' && strcmp(t.secret, "s3cr3t-from-the-package") == 0,
           "as token \"default\" without a CA hash");
        jointoken_done(&t);
        ok(jointoken_parse("", &t) == -EINVAL, "an empty token is refused");

        /* `serve-head --join-token show`: the file's secret, whatever it is, with the CA hash. */
        char *shown = jointoken_format(hash, JOINTOKEN_DEFAULT_ID, "join-12.34");
        is_int(jointoken_parse(shown, &t), 0, "the long-lived token with the CA hash parses (%s)", shown);
        ok(strcmp(t.id, JOINTOKEN_DEFAULT_ID) == 0 && strcmp(t.ca_hash, hash) == 0 && strcmp(t.secret, "join-12.34") == 0,
           "as token \"default\" with the CA hash and the secret, dots and all");
        jointoken_done(&t);
        free(shown);
        char *empty = jointoken_format(hash, JOINTOKEN_DEFAULT_ID, "");
        ok(jointoken_parse(empty, &t) == -EINVAL, "... but not with an empty secret");
        free(empty);
}

static char *tokens_text(const char *tdir) {
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", tdir, JOINTOKEN_STORE);
        return read_text(path);
}

/* Sets a field of token id in the store (what time would do, without waiting for it). */
static void token_set(const char *tdir, const char *id, const char *field, double value) {
        char path[600], *text = tokens_text(tdir), *out;
        cJSON *root = cJSON_Parse(text), *t;
        snprintf(path, sizeof(path), "%s/%s", tdir, JOINTOKEN_STORE);
        cJSON_ArrayForEach(t, cJSON_GetObjectItem(root, "tokens")) {
                if (strcmp(cJSON_GetObjectItem(t, "id")->valuestring, id) == 0)
                        cJSON_ReplaceItemInObject(t, field, cJSON_CreateNumber(value));
        }
        out = cJSON_Print(root);
        write_text(path, out, 0600);
        free(out);
        free(text);
        cJSON_Delete(root);
}

static void test_tokens(void) {
        const char *tdir = at("tokens");
        const char *hash = pki_ca_hash(ca1), *reason;
        char *text = NULL, id[JOINTOKEN_ID_HEX + 1], *secrets[8] = {};
        size_t n_secrets = 0;
        struct jointoken t = {};
        int r;

        mkdir(tdir, 0700);
        r = jointoken_create(tdir, hash, 0, 1, NULL, &text, id);
        is_int(r, 0, "a one-use token is made");
        ok(jointoken_parse(text, &t) == 0 && strcmp(t.id, id) == 0 && strcmp(t.ca_hash, hash) == 0,
           "its text carries its id and the CA hash");
        is_int(jointoken_consume(tdir, t.id, t.secret, NULL, "worker-1", &reason), 0, "its first use works");
        reason = NULL;
        r = jointoken_consume(tdir, t.id, t.secret, NULL, "worker-2", &reason);
        ok(r == -EACCES && reason && strcmp(reason, "token used up") == 0, "the second use is refused: %s", reason);
        secrets[n_secrets++] = t.secret;
        t.secret = NULL;
        jointoken_done(&t);
        free(text);

        char path[600];
        snprintf(path, sizeof(path), "%s/%s", tdir, JOINTOKEN_STORE);
        is_int(file_mode(path), 0600, "the store has mode 0600");
        snprintf(path, sizeof(path), "%s/join-tokens.lock", tdir);
        is_int(file_mode(path), 0600, "its lock file has mode 0600");

        r = jointoken_create(tdir, hash, 3600, 0, NULL, &text, id);
        is_int(r, 0, "a token valid for an hour is made");
        jointoken_parse(text, &t);
        free(text);
        token_set(tdir, id, "expires", (double)(time(NULL) - 10));
        r = jointoken_consume(tdir, t.id, t.secret, NULL, "worker-1", &reason);
        ok(r == -EACCES && strcmp(reason, "token expired") == 0, "once its hour has passed it is refused: %s", reason);
        secrets[n_secrets++] = TAKE_SECRET(t);

        r = jointoken_create(tdir, hash, 0, 0, "worker-7", &text, id);
        is_int(r, 0, "a token for worker-7 is made");
        jointoken_parse(text, &t);
        free(text);
        r = jointoken_consume(tdir, t.id, t.secret, NULL, "worker-8", &reason);
        ok(r == -EACCES && strcmp(reason, "token is for another node") == 0, "worker-8 cannot use it: %s", reason);
        ok(jointoken_consume(tdir, t.id, t.secret, NULL, "worker-7", &reason) == 0 &&
           jointoken_consume(tdir, t.id, t.secret, NULL, "worker-7", &reason) == 0,
           "worker-7 can, more than once (no use limit)");

        char wrong[JOINTOKEN_SECRET_HEX + 1];
        memset(wrong, 'a', JOINTOKEN_SECRET_HEX);
        wrong[JOINTOKEN_SECRET_HEX] = '\0';
        const char *reason_wrong = NULL, *reason_unknown = NULL;
        jointoken_consume(tdir, t.id, wrong, NULL, "worker-7", &reason_wrong);
        jointoken_consume(tdir, "ffffffffffffffff", t.secret, NULL, "worker-7", &reason_unknown);
        ok(reason_wrong && reason_unknown && strcmp(reason_wrong, "unknown token") == 0 &&
           strcmp(reason_unknown, reason_wrong) == 0,
           "a wrong secret and an unknown id get the same answer (%s / %s)", reason_wrong, reason_unknown);

        is_int(jointoken_revoke(tdir, t.id, NULL), 0, "the token is revoked");
        r = jointoken_consume(tdir, t.id, t.secret, NULL, "worker-7", &reason);
        ok(r == -EACCES && strcmp(reason, "token revoked") == 0, "and then refused: %s", reason);
        is_int(jointoken_revoke(tdir, "ffffffffffffffff", NULL), -ENOENT, "revoking an unknown token says so");
        char revoked_id[JOINTOKEN_ID_HEX + 1];
        strcpy(revoked_id, t.id);
        secrets[n_secrets++] = TAKE_SECRET(t);

        /* The package's long-lived secret. */
        ok(jointoken_consume(tdir, JOINTOKEN_DEFAULT_ID, "first-secret", "first-secret", "worker-9", &reason) == 0,
           "the default secret works");
        r = jointoken_consume(tdir, JOINTOKEN_DEFAULT_ID, "guess", "first-secret", "worker-9", &reason);
        ok(r == -EACCES && strcmp(reason, "unknown token") == 0, "a wrong default secret does not: %s", reason);
        r = jointoken_consume(tdir, JOINTOKEN_DEFAULT_ID, "first-secret", NULL, "worker-9", &reason);
        ok(r == -EACCES && strcmp(reason, "unknown token") == 0, "nor does any when there is no default secret");
        is_int(jointoken_revoke(tdir, JOINTOKEN_DEFAULT_ID, NULL), -ENOENT, "revoking default without its secret fails");
        is_int(jointoken_revoke(tdir, JOINTOKEN_DEFAULT_ID, "first-secret"), 0, "the default secret is revoked");
        r = jointoken_consume(tdir, JOINTOKEN_DEFAULT_ID, "first-secret", "first-secret", "worker-9", &reason);
        ok(r == -EACCES && strcmp(reason, "token revoked") == 0, "then it is refused: %s", reason);
        ok(jointoken_consume(tdir, JOINTOKEN_DEFAULT_ID, "second-secret", "second-secret", "worker-9", &reason) == 0,
           "a new default secret works again");

        char *store = tokens_text(tdir);
        bool leaked = false;
        for (size_t i = 0; i < n_secrets; i++)
                leaked |= has(store, secrets[i]);
        leaked |= has(store, "first-secret") || has(store, "second-secret");
        ok(store && !leaked, "the store holds no secret");
        free(store);

        char *listing = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&listing, &len);
        is_int(jointoken_list(tdir, f), 0, "the tokens are listed");
        fclose(f);
        leaked = false;
        for (size_t i = 0; i < n_secrets; i++)
                leaked |= has(listing, secrets[i]);
        ok(has(listing, revoked_id) && has(listing, "worker-7") && has(listing, "revoked") && has(listing, "used up") &&
           has(listing, "expired"), "the list shows ids, nodes and states");
        ok(has(listing, "default") && !leaked, "... the revoked default, and no secret");
        for (char *line = listing, *end; line && *line; line = end ? end + 1 : NULL) {
                end = strchr(line, '\n');
                printf("#   %.*s\n", end ? (int)(end - line) : (int)strlen(line), line);
        }
        free(listing);

        /* A token that expired two days ago is dropped at the next write. */
        token_set(tdir, revoked_id, "expires", (double)(time(NULL) - 2 * 86400));
        r = jointoken_create(tdir, hash, 0, 0, NULL, &text, id);
        store = tokens_text(tdir);
        ok(r == 0 && !has(store, revoked_id) && has(store, id), "a token expired for more than a day is dropped");
        free(store);
        free(text);

        const char *cdir = at("corrupt");
        char cpath[600];
        mkdir(cdir, 0700);
        snprintf(cpath, sizeof(cpath), "%s/%s", cdir, JOINTOKEN_STORE);
        write_text(cpath, "{\"version\": 1, \"tokens\": [", 0600);
        is_int(jointoken_consume(cdir, "0123456789abcdef", secrets[0], NULL, "w", &reason), -EBADMSG,
               "a damaged store is reported, not taken for an empty one");
        is_int(jointoken_create(cdir, hash, 0, 0, NULL, &text, id), -EBADMSG, "... nor overwritten by a new token");
        write_text(cpath, "{\"version\": 1, \"tokens\": [{\"id\": \"x\"}]}", 0600);
        f = fopen("/dev/null", "we");
        is_int(jointoken_list(cdir, f), -EBADMSG, "a store with a malformed token is reported too");
        fclose(f);
        store = read_text(cpath);
        ok(has(store, "\"x\""), "the damaged store is left as it was");
        free(store);

        for (size_t i = 0; i < n_secrets; i++)
                free(secrets[i]);
}

int main(void) {
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        test_ca();
        test_issue();
        test_identity();
        test_token_text();
        test_tokens();
        pki_ca_free(ca1);
        pki_ca_free(ca2);

        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                printf("# could not remove %s\n", dir);
        return tap_done();
}
