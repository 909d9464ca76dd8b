/* A worker's stored identity (see identity.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "common/macros.h"
#include "common/util.h"
#include "cluster/identity.h"

#define KEY_FILE "node.key"
#define CERT_FILE "node.crt"
#define CA_FILE "ca.crt"

static char *path_in(const char *dir, const char *file) {
        char *p;
        return asprintf(&p, "%s/%s", dir, file) < 0 ? NULL : p;
}

static void free_secret(char *s) {
        if (s) {
                OPENSSL_cleanse(s, strlen(s));
                free(s);
        }
}

static inline void free_secretp(char **s) { free_secret(*s); }

/* Reads one private file: 1 and *ret, 0 when it does not exist, or a negative errno with
 * *ret_why. */
static int read_one(const char *dir, const char *file, char **ret, char **ret_why) {
        _cleanup_free_ char *path = path_in(dir, file);
        struct stat st;
        int r;

        if (!path)
                return error_set(-ENOMEM, ret_why, "out of memory");
        r = pki_read_file(path, true, ret);
        if (r == -ENOENT)
                return 0;
        if (r == -EPERM && stat(path, &st) == 0)
                return error_set(r, ret_why, "%s can be accessed by group or others (mode %04o): chmod 600 %s", path,
                                 (unsigned)(st.st_mode & 07777), path);
        if (r < 0)
                return error_set(r, ret_why, "cannot read %s: %s", path, strerror(-r));
        return 1;
}

int identity_load(const char *dir, struct identity *ret, char **ret_why) {
        _cleanup_(free_secretp) char *key = NULL;
        _cleanup_free_ char *cert = NULL, *ca = NULL, *error = NULL;
        struct identity id = {};
        int have_key, have_cert, have_ca, r;

        if (!dir || !ret)
                return error_set(-EINVAL, ret_why, "no directory given");
        have_key = read_one(dir, KEY_FILE, &key, ret_why);
        if (have_key < 0)
                return have_key;
        have_cert = read_one(dir, CERT_FILE, &cert, ret_why);
        if (have_cert < 0)
                return have_cert;
        have_ca = read_one(dir, CA_FILE, &ca, ret_why);
        if (have_ca < 0)
                return have_ca;
        if (!have_key && !have_cert && !have_ca)
                return error_set(0, ret_why, "no stored identity in %s", dir);
        if (!have_key || !have_cert || !have_ca)
                return error_set(0, ret_why, "incomplete identity in %s: %s%s%s%s%s missing", dir,
                                 have_key ? "" : KEY_FILE, !have_key && (!have_cert || !have_ca) ? ", " : "",
                                 have_cert ? "" : CERT_FILE, !have_cert && !have_ca ? ", " : "",
                                 have_ca ? "" : CA_FILE);

        r = pki_key_matches_cert(key, cert);
        if (r < 0)
                return error_set(-EINVAL, ret_why, "%s/%s or %s/%s does not parse", dir, KEY_FILE, dir, CERT_FILE);
        if (r == 0)
                return error_set(-EINVAL, ret_why, "%s/%s does not match %s/%s", dir, KEY_FILE, dir, CERT_FILE);
        /* Expiry is the caller's to judge (it must join again); the rest must hold. */
        r = pki_verify_chain_any_time(cert, ca, PKI_UNIT_NODE, &error);
        if (r < 0)
                return error_set(-EINVAL, ret_why, "%s/%s does not chain to %s/%s: %s", dir, CERT_FILE, dir, CA_FILE,
                                 error ? error : strerror(-r));
        if (pki_cert_info(cert, &id.info) < 0 || pki_cert_hash(ca, id.ca_hash) < 0)
                return error_set(-EINVAL, ret_why, "%s/%s or %s/%s does not parse", dir, CERT_FILE, dir, CA_FILE);

        id.key_pem = TAKE_PTR(key);
        id.cert_pem = TAKE_PTR(cert);
        id.ca_pem = TAKE_PTR(ca);
        *ret = id;
        if (ret_why)
                *ret_why = NULL;
        return 1;
}

static int save_one(const char *dir, const char *file, const char *pem) {
        _cleanup_free_ char *path = path_in(dir, file);
        if (!path)
                return -ENOMEM;
        return pki_write_file(path, pem, 0600);
}

int identity_save(const char *dir, const char *key_pem, const char *cert_pem, const char *ca_pem) {
        int r;

        if (!dir || !key_pem || !cert_pem)
                return -EINVAL;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        /* CA, key, certificate: a crash in between leaves a set that identity_load() reports
         * (key and certificate do not match) rather than one that silently mixes two identities. */
        if (ca_pem) {
                r = save_one(dir, CA_FILE, ca_pem);
                if (r < 0)
                        return r;
        }
        r = save_one(dir, KEY_FILE, key_pem);
        if (r < 0)
                return r;
        return save_one(dir, CERT_FILE, cert_pem);
}

void identity_done(struct identity *id) {
        if (!id)
                return;
        free_secret(id->key_pem);
        free(id->cert_pem);
        free(id->ca_pem);
        *id = (struct identity){};
}

int64_t identity_renew_at(const struct identity *id) {
        int64_t span = id->info.not_after - id->info.not_before;
        return id->info.not_before + span / 3 * 2 + span % 3 * 2 / 3;
}
