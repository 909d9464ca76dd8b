/* The cluster CA and its certificates (see pki.h).
 *
 * Every failure path that involved OpenSSL clears the thread's error queue: the daemons run TLS
 * connections on the same thread, and SSL_get_error() there would otherwise read our stale
 * errors as theirs. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/macros.h"
#include "common/nodecfg.h"
#include "common/util.h"
#include "cluster/pki.h"

#define PKI_FILE_MAX (1024 * 1024)
#define CA_VALIDITY_S (3650LL * 24 * 3600)
#define CLOCK_SKEW_S 300        /* a peer's clock may be this far behind ours */
#define NAME_LEN_MAX 200
#define CHAIN_CERTS_MAX 16      /* a peer's chain is leaf + CA; anything near this is not ours */

struct pki_ca {
        X509 *cert;
        EVP_PKEY *key;
        char *cert_pem;
        char hash[PKI_HASH_HEX + 1];
        int64_t not_after;
};

static inline void x509_freep(X509 **p) { X509_free(*p); }
static inline void x509_req_freep(X509_REQ **p) { X509_REQ_free(*p); }
static inline void evp_pkey_freep(EVP_PKEY **p) { EVP_PKEY_free(*p); }
static inline void bio_freep(BIO **p) { BIO_free(*p); }
static inline void x509_store_freep(X509_STORE **p) { X509_STORE_free(*p); }
static inline void x509_store_ctx_freep(X509_STORE_CTX **p) { X509_STORE_CTX_free(*p); }
static inline void x509_stack_freep(STACK_OF(X509) **p) { sk_X509_pop_free(*p, X509_free); }
#define _cleanup_x509_ _cleanup_(x509_freep)
#define _cleanup_x509_req_ _cleanup_(x509_req_freep)
#define _cleanup_pkey_ _cleanup_(evp_pkey_freep)
#define _cleanup_bio_ _cleanup_(bio_freep)

/* Sets *ret_error (when wanted), drops OpenSSL's queued errors and returns r. */
_printf_(3, 4) static int fail(int r, char **ret_error, const char *fmt, ...) {
        va_list ap;

        ERR_clear_error();
        va_start(ap, fmt);
        r = error_setv(r, ret_error, fmt, ap);
        va_end(ap);
        return r;
}

/* A key file that is encrypted fails to parse instead of prompting on the terminal (OpenSSL's
 * default when no callback is given). */
static int no_password(char *buf, int size, int rwflag, void *u) {
        return 0;
}

static int64_t now_unix(void) {
        return (int64_t)time(NULL);
}

/* name for a message: at most 64 characters, anything unprintable as '?' (it may come from a
 * peer, and ends up in logs). */
static const char *name_shown(const char *name, char buf[68]) {
        size_t i = 0;
        for (; name && name[i] && i < 64; i++)
                buf[i] = name[i] >= ' ' && name[i] < 0x7f ? name[i] : '?';
        strcpy(buf + i, name && name[i] ? "..." : "");
        return buf;
}

bool pki_name_valid(const char *name) { return node_name_valid(name); }

static BIO *bio_from(const char *text) {
        return BIO_new_mem_buf(text, -1);
}

/* What was written to a memory BIO, as a malloc'd string. */
static char *bio_string(BIO *b) {
        char *p = NULL;
        long n = BIO_get_mem_data(b, &p);
        return n < 0 ? NULL : strndup(p, (size_t)n);
}

static X509 *cert_parse(const char *pem) {
        _cleanup_bio_ BIO *b = pem ? bio_from(pem) : NULL;
        return b ? PEM_read_bio_X509(b, NULL, no_password, NULL) : NULL;
}

static EVP_PKEY *key_parse(const char *pem) {
        _cleanup_bio_ BIO *b = pem ? bio_from(pem) : NULL;
        return b ? PEM_read_bio_PrivateKey(b, NULL, no_password, NULL) : NULL;
}

static char *cert_pem(X509 *x) {
        _cleanup_bio_ BIO *b = BIO_new(BIO_s_mem());
        if (!b || PEM_write_bio_X509(b, x) != 1)
                return NULL;
        return bio_string(b);
}

static char *key_pem(EVP_PKEY *k) {
        _cleanup_bio_ BIO *b = BIO_new(BIO_s_mem());
        if (!b || PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) != 1)
                return NULL;
        return bio_string(b);
}

static int cert_hash(X509 *x, char ret_hex[PKI_HASH_HEX + 1]) {
        unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        int n = i2d_X509(x, &der), r = 0;

        if (n <= 0)
                return -EINVAL;
        if (EVP_Digest(der, (size_t)n, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != PKI_HASH_HEX / 2)
                r = -EINVAL;
        else
                hex_encode(md, md_len, ret_hex);
        OPENSSL_free(der);
        return r;
}

static int64_t asn1_time_unix(const ASN1_TIME *t) {
        struct tm tm = {};
        if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
                return 0;
        return (int64_t)timegm(&tm);
}

/* One attribute of a subject, "" when absent (truncated to size). */
static void name_field(const X509_NAME *n, int nid, char *buf, size_t size) {
        buf[0] = '\0';
        if (X509_NAME_get_text_by_NID(n, nid, buf, (int)size) < 0)
                buf[0] = '\0';
}

static bool name_add(X509_NAME *n, const char *field, const char *value) {
        return X509_NAME_add_entry_by_txt(n, field, MBSTRING_UTF8, (const unsigned char *)value, -1, -1, 0) == 1;
}

static bool ext_add(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
        bool good = e && X509_add_ext(x, e, -1) == 1;
        X509_EXTENSION_free(e);
        return good;
}

static bool cert_set_times(X509 *x, int64_t not_before, int64_t not_after) {
        return ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) &&
               ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after);
}

/* Only what is strong today: ECDSA on P-256/P-384, RSA of 2048 bits or more. */
static bool key_strong(const EVP_PKEY *k) {
        char group[64];

        switch (EVP_PKEY_get_base_id(k)) {
        case EVP_PKEY_EC:
                if (EVP_PKEY_get_group_name(k, group, sizeof(group), NULL) != 1)
                        return false;
                return streq(group, "prime256v1") || streq(group, "P-256") || streq(group, "secp384r1") ||
                       streq(group, "P-384");
        case EVP_PKEY_RSA:
                return EVP_PKEY_get_bits(k) >= 2048;
        default:
                return false;
        }
}

int pki_read_file(const char *path, bool private_file, char **ret) {
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (!path || !ret)
                return -EINVAL;
        /* Symlinks are followed (an operator may point at files elsewhere); the mode checked is
         * that of the file actually read. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (private_file && (st.st_mode & 077))
                return -EPERM;
        return read_fd(fd, PKI_FILE_MAX, ret, NULL);
}

/* Owner, mode, contents, fsync: everything but the rename. */
static int write_temp(int fd, const char *dir, const char *data, unsigned mode) {
        struct stat st;
        int r;

        /* The daemons run as `serve`: files root makes (at installation, or with a command run
         * by hand) must stay readable by them. */
        if (geteuid() == 0) {
                if (stat(dir, &st) < 0)
                        return -errno;
                if (fchown(fd, st.st_uid, st.st_gid) < 0)
                        return -errno;
        }
        /* Exactly `mode` whatever the umask (mkostemp made it 0600 already). */
        if (fchmod(fd, (mode_t)mode) < 0)
                return -errno;
        r = write_all(fd, data, strlen(data));
        if (r < 0)
                return r;
        return fsync(fd) < 0 ? -errno : 0;
}

int pki_write_file(const char *path, const char *data, unsigned mode) {
        _cleanup_free_ char *tmp = NULL, *dir = NULL;
        _cleanup_close_ int fd = -1;
        const char *slash;
        int r;

        if (!path || !*path || !data)
                return -EINVAL;
        slash = strrchr(path, '/');
        dir = !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
        if (!dir)
                return -ENOMEM;
        if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        r = write_temp(fd, dir, data, mode);
        if (r == 0 && close(TAKE_FD(fd)) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void)unlink(tmp);
                return r;
        }
        return fsync_dir(dir);
}

/* A self-signed CA: new key, random serial and name suffix, ten years. */
static int ca_generate(X509 **ret_cert, EVP_PKEY **ret_key) {
        _cleanup_pkey_ EVP_PKEY *key = NULL;
        _cleanup_x509_ X509 *x = NULL;
        unsigned char rnd[4];
        char suffix[9], cn[64];
        uint64_t serial;
        X509V3_CTX ctx;
        int64_t now = now_unix();

        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        x = X509_new();
        if (!key || !x)
                return -ENOMEM;
        if (RAND_bytes(rnd, sizeof(rnd)) != 1 || RAND_bytes((unsigned char *)&serial, sizeof(serial)) != 1)
                return -EIO;
        hex_encode(rnd, sizeof(rnd), suffix);
        snprintf(cn, sizeof(cn), "serve cluster CA %s", suffix);
        serial &= INT64_MAX; /* positive and small enough for pki_cert_info() */
        if (serial == 0)
                serial = 1;

        X509_NAME *name = X509_get_subject_name(x);
        if (X509_set_version(x, X509_VERSION_3) != 1 || ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial) != 1 ||
            !name_add(name, "O", "serve") || !name_add(name, "CN", cn) || X509_set_issuer_name(x, name) != 1 ||
            !cert_set_times(x, now - CLOCK_SKEW_S, now + CA_VALIDITY_S) || X509_set_pubkey(x, key) != 1)
                return -EINVAL;
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        if (!ext_add(x, &ctx, NID_basic_constraints, "critical,CA:TRUE") ||
            !ext_add(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") ||
            !ext_add(x, &ctx, NID_subject_key_identifier, "hash"))
                return -EINVAL;
        if (X509_sign(x, key, EVP_sha256()) <= 0)
                return -EINVAL;
        *ret_cert = TAKE_PTR(x);
        *ret_key = TAKE_PTR(key);
        return 0;
}

/* Takes cert and key (on success and failure alike). */
static int ca_new(X509 *cert, EVP_PKEY *key, struct pki_ca **ret) {
        struct pki_ca *ca = calloc(1, sizeof(*ca));

        if (!ca) {
                X509_free(cert);
                EVP_PKEY_free(key);
                return -ENOMEM;
        }
        ca->cert = cert;
        ca->key = key;
        ca->cert_pem = cert_pem(cert);
        if (!ca->cert_pem || cert_hash(cert, ca->hash) < 0) {
                pki_ca_free(ca);
                return -ENOMEM;
        }
        ca->not_after = asn1_time_unix(X509_get0_notAfter(cert));
        *ret = ca;
        return 0;
}

static int ca_create(const char *cert_path, const char *key_path, struct pki_ca **ret, char **ret_error) {
        _cleanup_x509_ X509 *cert = NULL;
        _cleanup_pkey_ EVP_PKEY *key = NULL;
        _cleanup_free_ char *cpem = NULL, *kpem = NULL;
        int r;

        r = ca_generate(&cert, &key);
        if (r < 0)
                return fail(r, ret_error, "cannot make a CA certificate: %s", strerror(-r));
        cpem = cert_pem(cert);
        kpem = key_pem(key);
        if (!cpem || !kpem)
                return fail(-ENOMEM, ret_error, "cannot encode the new CA: out of memory");
        /* The key first: a certificate without its key is never left behind. */
        r = pki_write_file(key_path, kpem, 0600);
        OPENSSL_cleanse(kpem, strlen(kpem));
        if (r < 0)
                return fail(r, ret_error, "cannot write CA key %s: %s", key_path, strerror(-r));
        r = pki_write_file(cert_path, cpem, 0644);
        if (r < 0)
                return fail(r, ret_error, "cannot write CA certificate %s: %s", cert_path, strerror(-r));
        r = ca_new(TAKE_PTR(cert), TAKE_PTR(key), ret);
        if (r < 0)
                return fail(r, ret_error, "cannot load the new CA: %s", strerror(-r));
        return 0;
}

/* 1 when path exists, 0 when it does not, or a negative errno. */
static int file_exists(const char *path) {
        struct stat st;
        if (stat(path, &st) == 0)
                return 1;
        return errno == ENOENT ? 0 : -errno;
}

int pki_ca_load(const char *cert_path, const char *key_path, bool create, struct pki_ca **ret, char **ret_error) {
        _cleanup_free_ char *cpem = NULL, *kpem = NULL;
        _cleanup_x509_ X509 *cert = NULL;
        _cleanup_pkey_ EVP_PKEY *key = NULL;
        struct stat st;
        int have_cert, have_key, r;

        if (!cert_path || !key_path || !ret)
                return fail(-EINVAL, ret_error, "no CA certificate or key path given");
        have_cert = file_exists(cert_path);
        if (have_cert < 0)
                return fail(have_cert, ret_error, "cannot access CA certificate %s: %s", cert_path, strerror(-have_cert));
        have_key = file_exists(key_path);
        if (have_key < 0)
                return fail(have_key, ret_error, "cannot access CA key %s: %s", key_path, strerror(-have_key));
        if (!have_cert && !have_key) {
                if (!create)
                        return fail(-ENOENT, ret_error, "CA certificate %s does not exist", cert_path);
                return ca_create(cert_path, key_path, ret, ret_error);
        }
        /* Half a CA is never completed: a new key would invalidate every certificate issued. */
        if (!have_key)
                return fail(-ENOENT, ret_error,
                            "CA key %s is missing but the certificate %s exists: restore the key (a new CA means "
                            "every node must join again), or remove both to make a new CA",
                            key_path, cert_path);
        if (!have_cert)
                return fail(-ENOENT, ret_error,
                            "CA certificate %s is missing but the key %s exists: restore the certificate (a new CA "
                            "means every node must join again), or remove both to make a new CA",
                            cert_path, key_path);

        r = pki_read_file(key_path, true, &kpem);
        if (r == -EPERM && stat(key_path, &st) == 0)
                return fail(r, ret_error, "CA key %s can be accessed by group or others (mode %04o): chmod 600 %s",
                            key_path, (unsigned)(st.st_mode & 07777), key_path);
        if (r < 0)
                return fail(r, ret_error, "cannot read CA key %s: %s", key_path, strerror(-r));
        r = pki_read_file(cert_path, false, &cpem);
        if (r < 0)
                return fail(r, ret_error, "cannot read CA certificate %s: %s", cert_path, strerror(-r));

        key = key_parse(kpem);
        OPENSSL_cleanse(kpem, strlen(kpem));
        if (!key)
                return fail(-EINVAL, ret_error, "CA key %s does not hold an unencrypted PEM private key", key_path);
        cert = cert_parse(cpem);
        if (!cert)
                return fail(-EINVAL, ret_error, "CA certificate %s does not hold a PEM certificate", cert_path);
        if (X509_check_ca(cert) != 1)
                return fail(-EINVAL, ret_error, "%s is not a CA certificate (no basicConstraints CA:TRUE)", cert_path);
        if (X509_check_private_key(cert, key) != 1)
                return fail(-EINVAL, ret_error, "CA key %s does not match the certificate %s", key_path, cert_path);
        r = ca_new(TAKE_PTR(cert), TAKE_PTR(key), ret);
        if (r < 0)
                return fail(r, ret_error, "cannot load CA %s: %s", cert_path, strerror(-r));
        return 0;
}

void pki_ca_free(struct pki_ca *ca) {
        if (!ca)
                return;
        X509_free(ca->cert);
        EVP_PKEY_free(ca->key);
        free(ca->cert_pem);
        free(ca);
}

const char *pki_ca_cert_pem(const struct pki_ca *ca) {
        return ca->cert_pem;
}

const char *pki_ca_hash(const struct pki_ca *ca) {
        return ca->hash;
}

int64_t pki_ca_not_after(const struct pki_ca *ca) {
        return ca->not_after;
}

int pki_ca_issue(struct pki_ca *ca, const char *csr_pem, const char *name, const char *unit, uint64_t serial,
                 int64_t validity_s, char **ret_chain_pem, char **ret_error) {
        _cleanup_bio_ BIO *in = NULL;
        _cleanup_x509_req_ X509_REQ *req = NULL;
        _cleanup_x509_ X509 *x = NULL;
        _cleanup_free_ char *leaf = NULL, *chain = NULL;
        EVP_PKEY *pub;
        X509V3_CTX ctx;
        char shown[68];
        int64_t now = now_unix(), not_after;

        if (!ca || !csr_pem || !ret_chain_pem)
                return fail(-EINVAL, ret_error, "no CA or certificate request given");
        if (!pki_name_valid(name))
                return fail(-EINVAL, ret_error,
                            "invalid certificate name \"%s\": use 1 to %d characters of A-Z a-z 0-9 . _ -",
                            name_shown(name, shown), NAME_LEN_MAX);
        if (!pki_name_valid(unit))
                return fail(-EINVAL, ret_error, "invalid certificate unit \"%s\"", name_shown(unit, shown));
        if (serial == 0)
                return fail(-EINVAL, ret_error, "serial 0 is not allowed (serial numbers are positive)");
        if (validity_s <= 0)
                return fail(-EINVAL, ret_error, "validity must be positive (got %lld s)", (long long)validity_s);
        not_after = validity_s > ca->not_after - now ? ca->not_after : now + validity_s;
        if (not_after <= now)
                return fail(-EKEYEXPIRED, ret_error, "the CA certificate has expired: it cannot issue certificates");

        in = bio_from(csr_pem);
        req = in ? PEM_read_bio_X509_REQ(in, NULL, no_password, NULL) : NULL;
        if (!req)
                return fail(-EINVAL, ret_error, "not a PEM certificate request");
        pub = X509_REQ_get0_pubkey(req);
        if (!pub)
                return fail(-EINVAL, ret_error, "the certificate request has no usable public key");
        /* Proof that the requester holds the private key. */
        if (X509_REQ_verify(req, pub) != 1)
                return fail(-EINVAL, ret_error, "the certificate request's signature does not verify");
        if (!key_strong(pub))
                return fail(-EINVAL, ret_error,
                            "the certificate request's key is too weak (use EC P-256/P-384 or RSA of 2048 bits or more)");

        x = X509_new();
        if (!x)
                return fail(-ENOMEM, ret_error, "out of memory");
        X509_NAME *subject = X509_get_subject_name(x);
        if (X509_set_version(x, X509_VERSION_3) != 1 || ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial) != 1 ||
            !name_add(subject, "O", "serve") || !name_add(subject, "OU", unit) || !name_add(subject, "CN", name) ||
            X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
            !cert_set_times(x, now - MIN((int64_t)CLOCK_SKEW_S, validity_s / 4), not_after) || X509_set_pubkey(x, pub) != 1)
                return fail(-EINVAL, ret_error, "cannot build the certificate for %s", name);
        X509V3_set_ctx(&ctx, ca->cert, x, NULL, NULL, 0);
        if (!ext_add(x, &ctx, NID_basic_constraints, "CA:FALSE") ||
            !ext_add(x, &ctx, NID_key_usage, "critical,digitalSignature") ||
            /* Every node is both the client and the server of its TLS links. */
            !ext_add(x, &ctx, NID_ext_key_usage, "serverAuth,clientAuth") ||
            !ext_add(x, &ctx, NID_subject_key_identifier, "hash") ||
            !ext_add(x, &ctx, NID_authority_key_identifier, "keyid:always"))
                return fail(-EINVAL, ret_error, "cannot add the extensions of the certificate for %s", name);
        if (X509_sign(x, ca->key, EVP_sha256()) <= 0)
                return fail(-EINVAL, ret_error, "cannot sign the certificate for %s", name);

        leaf = cert_pem(x);
        if (!leaf || asprintf(&chain, "%s%s", leaf, ca->cert_pem) < 0) {
                chain = NULL;
                return fail(-ENOMEM, ret_error, "out of memory");
        }
        *ret_chain_pem = TAKE_PTR(chain);
        return 0;
}

int pki_key_new(char **ret_key_pem) {
        _cleanup_pkey_ EVP_PKEY *key = NULL;
        char *pem;

        if (!ret_key_pem)
                return -EINVAL;
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        if (!key)
                return fail(-ENOMEM, NULL, "keygen");
        pem = key_pem(key);
        if (!pem)
                return fail(-ENOMEM, NULL, "encode");
        *ret_key_pem = pem;
        return 0;
}

int pki_csr_new(const char *key_pem_text, const char *name, char **ret_csr_pem, char **ret_error) {
        _cleanup_pkey_ EVP_PKEY *key = NULL;
        _cleanup_x509_req_ X509_REQ *req = NULL;
        _cleanup_bio_ BIO *out = NULL;
        char *pem, shown[68];

        if (!ret_csr_pem)
                return fail(-EINVAL, ret_error, "no output given");
        if (!pki_name_valid(name))
                return fail(-EINVAL, ret_error, "invalid node name \"%s\": use 1 to %d characters of A-Z a-z 0-9 . _ -",
                            name_shown(name, shown), NAME_LEN_MAX);
        key = key_parse(key_pem_text);
        if (!key)
                return fail(-EINVAL, ret_error, "not an unencrypted PEM private key");
        req = X509_REQ_new();
        out = BIO_new(BIO_s_mem());
        if (!req || !out)
                return fail(-ENOMEM, ret_error, "out of memory");
        if (X509_REQ_set_version(req, X509_REQ_VERSION_1) != 1 || !name_add(X509_REQ_get_subject_name(req), "CN", name) ||
            X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0 ||
            PEM_write_bio_X509_REQ(out, req) != 1)
                return fail(-EINVAL, ret_error, "cannot make a certificate request for %s", name);
        pem = bio_string(out);
        if (!pem)
                return fail(-ENOMEM, ret_error, "out of memory");
        *ret_csr_pem = pem;
        return 0;
}

int pki_cert_info(const char *pem, struct pki_cert_info *ret) {
        _cleanup_x509_ X509 *x = cert_parse(pem);
        struct pki_cert_info info = {};
        uint64_t serial;

        if (!x || !ret)
                return fail(-EINVAL, NULL, "parse");
        name_field(X509_get_subject_name(x), NID_commonName, info.name, sizeof(info.name));
        name_field(X509_get_subject_name(x), NID_organizationalUnitName, info.unit, sizeof(info.unit));
        /* A foreign certificate's serial may not fit: 0 then, the rest is still useful. */
        if (ASN1_INTEGER_get_uint64(&serial, X509_get0_serialNumber(x)) == 1)
                info.serial = serial;
        info.not_before = asn1_time_unix(X509_get0_notBefore(x));
        info.not_after = asn1_time_unix(X509_get0_notAfter(x));
        ERR_clear_error();
        *ret = info;
        return 0;
}

int pki_cert_hash(const char *pem, char ret_hex[PKI_HASH_HEX + 1]) {
        _cleanup_x509_ X509 *x = cert_parse(pem);
        char hex[PKI_HASH_HEX + 1];

        if (!x || !ret_hex || cert_hash(x, hex) < 0)
                return fail(-EINVAL, NULL, "hash");
        memcpy(ret_hex, hex, sizeof(hex));
        return 0;
}

/* All certificates of a PEM text, in order. Returns 0, or -EINVAL for none, too many or a
 * damaged one. */
static int chain_parse(const char *pem, STACK_OF(X509) **ret) {
        _cleanup_bio_ BIO *b = bio_from(pem);
        _cleanup_(x509_stack_freep) STACK_OF(X509) *sk = sk_X509_new_null();
        X509 *x;

        if (!b || !sk)
                return -ENOMEM;
        while ((x = PEM_read_bio_X509(b, NULL, no_password, NULL))) {
                if (sk_X509_num(sk) >= CHAIN_CERTS_MAX || !sk_X509_push(sk, x)) {
                        X509_free(x);
                        return -EINVAL;
                }
        }
        /* The loop ends at the end of the text, or at a certificate that does not decode. */
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
                return -EINVAL;
        ERR_clear_error();
        if (sk_X509_num(sk) == 0)
                return -EINVAL;
        *ret = TAKE_PTR(sk);
        return 0;
}

static int verify_chain(const char *chain_pem, const char *ca_pem, const char *ca_hash, const char *unit,
                        bool check_time, char **ret_ca_pem, char **ret_error) {
        _cleanup_(x509_stack_freep) STACK_OF(X509) *chain = NULL;
        _cleanup_x509_ X509 *trusted = NULL;
        _cleanup_(x509_store_freep) X509_STORE *store = NULL;
        _cleanup_(x509_store_ctx_freep) X509_STORE_CTX *ctx = NULL;
        _cleanup_free_ char *anchor_pem = NULL;
        X509 *leaf, *anchor = NULL;
        char ou[64];
        int r;

        if (!chain_pem || !unit || (!ca_pem && !ca_hash))
                return fail(-EINVAL, ret_error, "no chain, unit or CA given");
        r = chain_parse(chain_pem, &chain);
        if (r < 0)
                return fail(-EPERM, ret_error, "the peer's certificate chain does not parse");
        leaf = sk_X509_value(chain, 0);

        if (ca_pem) {
                trusted = cert_parse(ca_pem);
                if (!trusted)
                        return fail(-EINVAL, ret_error, "the trusted CA certificate does not parse");
                anchor = trusted;
        } else {
                for (int i = 0; i < sk_X509_num(chain) && !anchor; i++) {
                        char hex[PKI_HASH_HEX + 1];
                        X509 *c = sk_X509_value(chain, i);
                        if (cert_hash(c, hex) == 0 && strcasecmp(hex, ca_hash) == 0)
                                anchor = c;
                }
                if (!anchor)
                        return fail(-EPERM, ret_error, "no certificate in the chain has the CA hash of the join token");
        }
        if (X509_check_ca(anchor) != 1)
                return fail(-EPERM, ret_error, "the trusted certificate is not a CA certificate");
        /* A CA certificate sent as the leaf would otherwise "verify" against itself. */
        if (X509_check_ca(leaf) != 0)
                return fail(-EPERM, ret_error, "the peer presented a CA certificate, not a %s certificate", unit);

        store = X509_STORE_new();
        ctx = X509_STORE_CTX_new();
        if (!store || !ctx)
                return fail(-ENOMEM, ret_error, "out of memory");
        /* Exactly this CA is trusted (pinned), whether or not it is self-signed. */
        if (X509_STORE_add_cert(store, anchor) != 1 ||
            X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN | (check_time ? 0 : X509_V_FLAG_NO_CHECK_TIME)) != 1)
                return fail(-ENOMEM, ret_error, "cannot set up verification");
        if (X509_STORE_CTX_init(ctx, store, leaf, chain) != 1)
                return fail(-ENOMEM, ret_error, "cannot set up verification");
        if (X509_verify_cert(ctx) != 1) {
                int e = X509_STORE_CTX_get_error(ctx);
                return fail(-EPERM, ret_error, "%s", X509_verify_cert_error_string(e));
        }
        name_field(X509_get_subject_name(leaf), NID_organizationalUnitName, ou, sizeof(ou));
        if (!streq(ou, unit))
                return fail(-EPERM, ret_error, "the certificate is for a %s, not a %s", *ou ? ou : "(no unit)", unit);
        if (ret_ca_pem) {
                anchor_pem = cert_pem(anchor);
                if (!anchor_pem)
                        return fail(-ENOMEM, ret_error, "out of memory");
                *ret_ca_pem = TAKE_PTR(anchor_pem);
        }
        ERR_clear_error();
        return 0;
}

int pki_verify_chain(const char *chain_pem, const char *ca_pem, const char *ca_hash, const char *unit,
                     char **ret_ca_pem, char **ret_error) {
        return verify_chain(chain_pem, ca_pem, ca_hash, unit, true, ret_ca_pem, ret_error);
}

int pki_verify_chain_any_time(const char *chain_pem, const char *ca_pem, const char *unit, char **ret_error) {
        if (!ca_pem)
                return fail(-EINVAL, ret_error, "no CA given");
        return verify_chain(chain_pem, ca_pem, NULL, unit, false, NULL, ret_error);
}

int pki_key_matches_cert(const char *key_pem_text, const char *cert_pem_text) {
        _cleanup_pkey_ EVP_PKEY *key = key_parse(key_pem_text);
        _cleanup_x509_ X509 *x = cert_parse(cert_pem_text);

        if (!key || !x)
                return fail(-EINVAL, NULL, "parse");
        if (X509_check_private_key(x, key) != 1)
                return fail(0, NULL, "mismatch");
        return 1;
}
