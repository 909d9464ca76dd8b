/* Join tokens and their store (see jointoken.h).
 *
 * Every read-modify-write of join-tokens.json holds an exclusive flock on join-tokens.lock
 * (the JSON file itself is replaced by rename, so it cannot carry the lock). The store is
 * parsed into plain structs, changed, and written back whole. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/macros.h"
#include "common/util.h"
#include "cluster/jointoken.h"

#define TOKEN_PREFIX "SRV1"
#define LOCK_FILE "join-tokens.lock"
#define SECRET_TEXT_MAX 4096
#define TOKENS_MAX 2000         /* minting stops here: ~250 bytes each, within the 1 MiB file limit */
#define REVOKED_DEFAULT_MAX 1000
#define GC_AFTER_S (24 * 3600)  /* an expired or used-up token still says why for a day */
#define SHA256_LEN 32
#define TTL_MAX_S (100ull * 365 * 86400)

struct token {
        char id[JOINTOKEN_ID_HEX + 1];
        char secret_sha256[PKI_HASH_HEX + 1];
        int64_t created, expires;       /* expires 0: never */
        int64_t uses_left;              /* -1: unlimited */
        int64_t last_used;              /* 0: never; drives removal of used-up tokens */
        char *name;                     /* NULL: any node */
        bool revoked;
};

struct store {
        struct token *tokens;
        size_t n_tokens;
        char (*revoked_default)[PKI_HASH_HEX + 1];
        size_t n_revoked_default;
};

static void store_done(struct store *s) {
        for (size_t i = 0; i < s->n_tokens; i++)
                free(s->tokens[i].name);
        free(s->tokens);
        free(s->revoked_default);
        *s = (struct store){};
}

/* Room for one more token / revoked hash at the end of the arrays. */
static int store_grow(struct store *s, bool token) {
        if (token) {
                struct token *n = realloc(s->tokens, (s->n_tokens + 1) * sizeof(*n));
                if (!n)
                        return -ENOMEM;
                s->tokens = n;
        } else {
                char (*n)[PKI_HASH_HEX + 1] = realloc(s->revoked_default, (s->n_revoked_default + 1) * sizeof(*n));
                if (!n)
                        return -ENOMEM;
                s->revoked_default = n;
        }
        return 0;
}

static bool is_lower_hex(const char *s, size_t n) {
        if (strlen(s) != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

static int sha256(const char *text, unsigned char ret[SHA256_LEN]) {
        unsigned len = 0;
        if (EVP_Digest(text, strlen(text), ret, &len, EVP_sha256(), NULL) != 1 || len != SHA256_LEN)
                return -EIO;
        return 0;
}

static int sha256_hex(const char *text, char ret[PKI_HASH_HEX + 1]) {
        unsigned char md[SHA256_LEN];
        int r = sha256(text, md);
        if (r < 0)
                return r;
        hex_encode(md, sizeof(md), ret);
        return 0;
}

static int hex_decode(const char *hex, unsigned char *out, size_t n) {
        for (size_t i = 0; i < n; i++) {
                unsigned v = 0;
                for (int j = 0; j < 2; j++) {
                        char c = hex[2 * i + j];
                        v <<= 4;
                        if (c >= '0' && c <= '9')
                                v |= (unsigned)(c - '0');
                        else if (c >= 'a' && c <= 'f')
                                v |= (unsigned)(c - 'a' + 10);
                        else
                                return -EINVAL;
                }
                out[i] = (unsigned char)v;
        }
        return 0;
}

int jointoken_parse(const char *text, struct jointoken *ret) {
        const char *f[4];
        size_t len[4];
        const char *p;
        char *secret;
        int n = 0;

        if (!text || !ret || !*text || strlen(text) > SECRET_TEXT_MAX)
                return -EINVAL;
        if (!strchr(text, '.')) {
                for (p = text; *p; p++)
                        if ((unsigned char)*p <= ' ' || *p == 0x7f)
                                return -EINVAL;
                secret = strdup(text);
                if (!secret)
                        return -ENOMEM;
                *ret = (struct jointoken){ .secret = secret };
                strcpy(ret->id, JOINTOKEN_DEFAULT_ID);
                return 0;
        }

        /* SRV1.<hash>.<id>.<secret>: exactly four fields. */
        for (p = text;; n++) {
                const char *dot = strchr(p, '.');
                if (n == 4) {
                        n = 5; /* too many fields (unless the secret is join_token_file's, above) */
                        break;
                }
                f[n] = p;
                len[n] = dot ? (size_t)(dot - p) : strlen(p);
                if (!dot) {
                        n++;
                        break;
                }
                p = dot + 1;
        }
        /* The long-lived token with the CA hash (`serve-head --join-token show`): its secret is
         * join_token_file's, whatever the operator wrote there (no whitespace, maybe dots). */
        char hash[PKI_HASH_HEX + 1] = "";
        if (n >= 3 && len[1] == PKI_HASH_HEX)
                memcpy(hash, f[1], PKI_HASH_HEX);
        if (n >= 3 && len[0] == strlen(TOKEN_PREFIX) && strncmp(f[0], TOKEN_PREFIX, len[0]) == 0 &&
            len[1] == PKI_HASH_HEX && is_lower_hex(hash, PKI_HASH_HEX) && len[2] == strlen(JOINTOKEN_DEFAULT_ID) &&
            strncmp(f[2], JOINTOKEN_DEFAULT_ID, len[2]) == 0) {
                const char *sec = f[2] + len[2] + 1;
                if (n < 4 || !*sec)
                        return -EINVAL;
                for (p = sec; *p; p++)
                        if ((unsigned char)*p <= ' ' || *p == 0x7f)
                                return -EINVAL;
                struct jointoken t = {};
                memcpy(t.ca_hash, f[1], PKI_HASH_HEX);
                strcpy(t.id, JOINTOKEN_DEFAULT_ID);
                t.secret = strdup(sec);
                if (!t.secret)
                        return -ENOMEM;
                *ret = t;
                return 0;
        }
        if (n != 4 || len[0] != strlen(TOKEN_PREFIX) || strncmp(f[0], TOKEN_PREFIX, len[0]) != 0 ||
            len[1] != PKI_HASH_HEX || len[2] != JOINTOKEN_ID_HEX || len[3] != JOINTOKEN_SECRET_HEX)
                return -EINVAL;
        struct jointoken t = {};
        memcpy(t.ca_hash, f[1], PKI_HASH_HEX);
        memcpy(t.id, f[2], JOINTOKEN_ID_HEX);
        if (!is_lower_hex(t.ca_hash, PKI_HASH_HEX) || !is_lower_hex(t.id, JOINTOKEN_ID_HEX) ||
            !is_lower_hex(f[3], JOINTOKEN_SECRET_HEX))
                return -EINVAL;
        t.secret = strdup(f[3]);
        if (!t.secret)
                return -ENOMEM;
        *ret = t;
        return 0;
}

void jointoken_done(struct jointoken *t) {
        if (!t)
                return;
        if (t->secret) {
                OPENSSL_cleanse(t->secret, strlen(t->secret));
                free(t->secret);
        }
        *t = (struct jointoken){};
}

char *jointoken_format(const char *ca_hash, const char *id, const char *secret) {
        char *s;
        if (!ca_hash || !id || !secret)
                return NULL;
        if (asprintf(&s, TOKEN_PREFIX ".%s.%s.%s", ca_hash, id, secret) < 0)
                return NULL;
        return s;
}

/* ---- the store ---- */

static char *store_path(const char *dir, const char *file) {
        char *p;
        return asprintf(&p, "%s/%s", dir, file) < 0 ? NULL : p;
}

/* Opens and flocks the lock file. Returns the fd or a negative errno. */
static int store_lock(const char *dir, int operation) {
        _cleanup_free_ char *path = store_path(dir, LOCK_FILE);
        _cleanup_close_ int fd = -1;

        if (!path)
                return -ENOMEM;
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        /* `serve-head --join-token` run by root must not leave a lock the head (user `serve`)
         * cannot open: the lock belongs to whoever owns the directory, like the store. */
        if (geteuid() == 0) {
                struct stat st;
                if (stat(dir, &st) < 0 || fchown(fd, st.st_uid, st.st_gid) < 0)
                        return -errno;
        }
        while (flock(fd, operation) < 0)
                if (errno != EINTR)
                        return -errno;
        return TAKE_FD(fd);
}

static bool json_int(const cJSON *o, const char *key, int64_t *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        /* Whole numbers that a double holds exactly. */
        if (!cJSON_IsNumber(v) || !(v->valuedouble > -9007199254740992.0 && v->valuedouble < 9007199254740992.0) ||
            v->valuedouble != (double)(int64_t)v->valuedouble)
                return false;
        *ret = (int64_t)v->valuedouble;
        return true;
}

static int token_from_json(const cJSON *o, struct token *ret) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *hash = cJSON_GetObjectItemCaseSensitive(o, "secret_sha256");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "name");
        const cJSON *revoked = cJSON_GetObjectItemCaseSensitive(o, "revoked");
        struct token t = {};

        if (!cJSON_IsObject(o) || !cJSON_IsString(id) || !is_lower_hex(id->valuestring, JOINTOKEN_ID_HEX) ||
            !cJSON_IsString(hash) || !is_lower_hex(hash->valuestring, PKI_HASH_HEX) ||
            !json_int(o, "created", &t.created) || !json_int(o, "expires", &t.expires) ||
            !json_int(o, "uses_left", &t.uses_left) || t.uses_left < -1 || !cJSON_IsBool(revoked) ||
            !(cJSON_IsNull(name) || cJSON_IsString(name)))
                return -EBADMSG;
        if (cJSON_GetObjectItemCaseSensitive(o, "last_used") && !json_int(o, "last_used", &t.last_used))
                return -EBADMSG;
        strcpy(t.id, id->valuestring);
        strcpy(t.secret_sha256, hash->valuestring);
        t.revoked = cJSON_IsTrue(revoked);
        if (cJSON_IsString(name)) {
                t.name = strdup(name->valuestring);
                if (!t.name)
                        return -ENOMEM;
        }
        *ret = t;
        return 0;
}

/* Reads the store; a missing file is an empty store. Returns 0, -EBADMSG for a file that is
 * not a store (never treated as empty: that would revive revoked tokens), or another errno. */
static int store_load(const char *dir, struct store *ret) {
        _cleanup_free_ char *path = store_path(dir, JOINTOKEN_STORE), *text = NULL;
        _cleanup_(store_done) struct store s = {};
        cJSON *root = NULL;
        const cJSON *tokens, *revoked, *e;
        int64_t version;
        int r;

        if (!path)
                return -ENOMEM;
        r = pki_read_file(path, false, &text);
        if (r == -ENOENT) {
                *ret = (struct store){};
                return 0;
        }
        if (r < 0)
                return r;
        root = cJSON_Parse(text);
        tokens = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        revoked = cJSON_GetObjectItemCaseSensitive(root, "revoked_default");
        if (!cJSON_IsObject(root) || !json_int(root, "version", &version) || version != 1 || !cJSON_IsArray(tokens) ||
            (revoked && !cJSON_IsArray(revoked))) {
                cJSON_Delete(root);
                return -EBADMSG;
        }
        int n = cJSON_GetArraySize(tokens), m = revoked ? cJSON_GetArraySize(revoked) : 0;
        s.tokens = calloc((size_t)n + 1, sizeof(*s.tokens));
        s.revoked_default = calloc((size_t)m + 1, sizeof(*s.revoked_default));
        if (!s.tokens || !s.revoked_default) {
                cJSON_Delete(root);
                return -ENOMEM;
        }
        cJSON_ArrayForEach(e, tokens) {
                r = token_from_json(e, &s.tokens[s.n_tokens]);
                if (r < 0) {
                        cJSON_Delete(root);
                        return r;
                }
                s.n_tokens++;
        }
        if (revoked)
                cJSON_ArrayForEach(e, revoked) {
                        if (!cJSON_IsString(e) || !is_lower_hex(e->valuestring, PKI_HASH_HEX)) {
                                cJSON_Delete(root);
                                return -EBADMSG;
                        }
                        strcpy(s.revoked_default[s.n_revoked_default++], e->valuestring);
                }
        cJSON_Delete(root);
        *ret = s;
        s = (struct store){};
        return 0;
}

/* Locks the store (how: LOCK_EX to change it, LOCK_SH to read it) and loads it; the lock is
 * held until *ret_lock is closed. Returns 0 or a negative errno. */
static int store_open(const char *dir, int how, int *ret_lock, struct store *s) {
        int lock = store_lock(dir, how);
        if (lock < 0)
                return lock;
        *ret_lock = lock;
        return store_load(dir, s);
}

/* Tokens that expired or were used up more than a day ago say nothing useful any more. */
static bool token_stale(const struct token *t, int64_t now) {
        if (t->expires != 0 && now - t->expires > GC_AFTER_S)
                return true;
        return t->uses_left == 0 && now - MAX(t->last_used, t->created) > GC_AFTER_S;
}

static int store_save(const char *dir, const struct store *s, int64_t now) {
        _cleanup_free_ char *path = store_path(dir, JOINTOKEN_STORE), *text = NULL;
        cJSON *root = cJSON_CreateObject(), *tokens, *revoked;
        bool good = root != NULL;

        if (!path) {
                cJSON_Delete(root);
                return -ENOMEM;
        }
        good = good && cJSON_AddNumberToObject(root, "version", 1);
        tokens = good ? cJSON_AddArrayToObject(root, "tokens") : NULL;
        revoked = good ? cJSON_AddArrayToObject(root, "revoked_default") : NULL;
        good = tokens && revoked;
        for (size_t i = 0; good && i < s->n_tokens; i++) {
                const struct token *t = &s->tokens[i];
                cJSON *o;
                if (token_stale(t, now))
                        continue;
                o = cJSON_CreateObject();
                if (!o || !cJSON_AddItemToArray(tokens, o)) {
                        cJSON_Delete(o);
                        good = false;
                        break;
                }
                good = cJSON_AddStringToObject(o, "id", t->id) &&
                       cJSON_AddStringToObject(o, "secret_sha256", t->secret_sha256) &&
                       cJSON_AddNumberToObject(o, "created", (double)t->created) &&
                       cJSON_AddNumberToObject(o, "expires", (double)t->expires) &&
                       cJSON_AddNumberToObject(o, "uses_left", (double)t->uses_left) &&
                       cJSON_AddNumberToObject(o, "last_used", (double)t->last_used) &&
                       (t->name ? cJSON_AddStringToObject(o, "name", t->name) != NULL
                                : cJSON_AddNullToObject(o, "name") != NULL) &&
                       cJSON_AddBoolToObject(o, "revoked", t->revoked);
        }
        for (size_t i = 0; good && i < s->n_revoked_default; i++) {
                cJSON *h = cJSON_CreateString(s->revoked_default[i]);
                good = h && cJSON_AddItemToArray(revoked, h);
                if (!good)
                        cJSON_Delete(h);
        }
        text = good ? cJSON_Print(root) : NULL;
        cJSON_Delete(root);
        if (!text)
                return -ENOMEM;
        return pki_write_file(path, text, 0600);
}

static struct token *store_find(struct store *s, const char *id) {
        for (size_t i = 0; i < s->n_tokens; i++)
                if (streq(s->tokens[i].id, id))
                        return &s->tokens[i];
        return NULL;
}

static bool default_revoked(const struct store *s, const char *hash_hex) {
        for (size_t i = 0; i < s->n_revoked_default; i++)
                if (streq(s->revoked_default[i], hash_hex))
                        return true;
        return false;
}

int jointoken_create(const char *dir, const char *ca_hash, uint64_t ttl_s, unsigned uses, const char *name,
                     char **ret_text, char ret_id[JOINTOKEN_ID_HEX + 1]) {
        _cleanup_close_ int lock = -1;
        _cleanup_(store_done) struct store s = {};
        _cleanup_free_ char *text = NULL;
        unsigned char id_raw[JOINTOKEN_ID_HEX / 2], secret_raw[JOINTOKEN_SECRET_HEX / 2];
        char id[JOINTOKEN_ID_HEX + 1], secret[JOINTOKEN_SECRET_HEX + 1];
        struct token *t;
        int64_t now = (int64_t)time(NULL);
        int r;

        if (!dir || !ca_hash || !is_lower_hex(ca_hash, PKI_HASH_HEX) || !ret_text || (name && !pki_name_valid(name)) ||
            ttl_s > TTL_MAX_S)
                return -EINVAL;
        r = store_open(dir, LOCK_EX, &lock, &s);
        if (r < 0)
                return r;
        if (s.n_tokens >= TOKENS_MAX)
                return -ENOSPC;
        do {
                if (RAND_bytes(id_raw, sizeof(id_raw)) != 1)
                        return -EIO;
                hex_encode(id_raw, sizeof(id_raw), id);
        } while (store_find(&s, id));
        if (RAND_bytes(secret_raw, sizeof(secret_raw)) != 1)
                return -EIO;
        hex_encode(secret_raw, sizeof(secret_raw), secret);
        OPENSSL_cleanse(secret_raw, sizeof(secret_raw));

        r = store_grow(&s, true);
        if (r < 0)
                return r;
        t = &s.tokens[s.n_tokens];
        *t = (struct token){
                .created = now,
                .expires = ttl_s ? now + (int64_t)ttl_s : 0,
                .uses_left = uses ? (int64_t)uses : -1,
        };
        strcpy(t->id, id);
        if (name && !(t->name = strdup(name)))
                return -ENOMEM;
        s.n_tokens++;
        r = sha256_hex(secret, t->secret_sha256);
        if (r >= 0)
                r = store_save(dir, &s, now);
        if (r >= 0) {
                text = jointoken_format(ca_hash, id, secret);
                if (!text)
                        r = -ENOMEM;
        }
        OPENSSL_cleanse(secret, sizeof(secret));
        if (r < 0)
                return r;
        *ret_text = TAKE_PTR(text);
        if (ret_id)
                memcpy(ret_id, id, sizeof(id));
        return 0;
}

int jointoken_consume(const char *dir, const char *id, const char *secret, const char *default_secret,
                      const char *node_name, const char **ret_reason) {
        _cleanup_close_ int lock = -1;
        _cleanup_(store_done) struct store s = {};
        unsigned char got[SHA256_LEN], want[SHA256_LEN];
        const char *reason = NULL;
        struct token *t;
        int64_t now = (int64_t)time(NULL);
        int r;

        if (!dir || !id || !secret)
                return -EINVAL;
        r = store_open(dir, LOCK_EX, &lock, &s);
        if (r < 0)
                return r;
        r = sha256(secret, got);
        if (r < 0)
                return r;

        if (streq(id, JOINTOKEN_DEFAULT_ID)) {
                char want_hex[PKI_HASH_HEX + 1];
                if (!default_secret || !*default_secret)
                        reason = "unknown token";
                else if ((r = sha256(default_secret, want)) < 0)
                        return r;
                else if (CRYPTO_memcmp(got, want, sizeof(got)) != 0)
                        reason = "unknown token";
                else {
                        hex_encode(want, sizeof(want), want_hex);
                        if (default_revoked(&s, want_hex))
                                reason = "token revoked";
                }
                if (reason)
                        goto refused;
                return 0;
        }

        /* The secret is checked first, and an unknown id compares against a dummy: whoever does
         * not hold the secret learns nothing about the token, not even whether it exists. */
        t = store_find(&s, id);
        memset(want, 0xff, sizeof(want));
        if (t && hex_decode(t->secret_sha256, want, sizeof(want)) < 0)
                return -EBADMSG;
        if (CRYPTO_memcmp(got, want, sizeof(got)) != 0 || !t)
                reason = "unknown token";
        else if (t->revoked)
                reason = "token revoked";
        else if (t->expires != 0 && now >= t->expires)
                reason = "token expired";
        else if (t->uses_left == 0)
                reason = "token used up";
        else if (t->name && !streq_ptr(t->name, node_name))
                reason = "token is for another node";
        if (reason)
                goto refused;

        if (t->uses_left > 0)
                t->uses_left--;
        t->last_used = now;
        return store_save(dir, &s, now);

refused:
        if (ret_reason)
                *ret_reason = reason;
        return -EACCES;
}

int jointoken_revoke(const char *dir, const char *id, const char *default_secret) {
        _cleanup_close_ int lock = -1;
        _cleanup_(store_done) struct store s = {};
        int64_t now = (int64_t)time(NULL);
        int r;

        if (!dir || !id)
                return -EINVAL;
        r = store_open(dir, LOCK_EX, &lock, &s);
        if (r < 0)
                return r;
        if (streq(id, JOINTOKEN_DEFAULT_ID)) {
                char hex[PKI_HASH_HEX + 1];
                if (!default_secret || !*default_secret)
                        return -ENOENT;
                r = sha256_hex(default_secret, hex);
                if (r < 0)
                        return r;
                if (default_revoked(&s, hex))
                        return 0;
                if (s.n_revoked_default >= REVOKED_DEFAULT_MAX)
                        return -ENOSPC;
                r = store_grow(&s, false);
                if (r < 0)
                        return r;
                strcpy(s.revoked_default[s.n_revoked_default++], hex);
                return store_save(dir, &s, now);
        }
        struct token *t = store_find(&s, id);
        if (!t)
                return -ENOENT;
        if (t->revoked)
                return 0;
        t->revoked = true;
        return store_save(dir, &s, now);
}

static const char *token_state(const struct token *t, int64_t now) {
        if (t->revoked)
                return "revoked";
        if (t->expires != 0 && now >= t->expires)
                return "expired";
        if (t->uses_left == 0)
                return "used up";
        return "active";
}

int jointoken_list(const char *dir, FILE *out) {
        _cleanup_close_ int lock = -1;
        _cleanup_(store_done) struct store s = {};
        int64_t now = (int64_t)time(NULL);
        int r;

        if (!dir || !out)
                return -EINVAL;
        r = store_open(dir, LOCK_SH, &lock, &s);
        if (r < 0)
                return r;
        fprintf(out, "%-16s  %-24s  %-9s  %-20s  %s\n", "ID", "NODE", "USES-LEFT", "EXPIRES", "STATE");
        for (size_t i = 0; i < s.n_tokens; i++) {
                const struct token *t = &s.tokens[i];
                char uses[24], expires[32];
                if (t->uses_left < 0)
                        snprintf(uses, sizeof(uses), "unlimited");
                else
                        snprintf(uses, sizeof(uses), "%lld", (long long)t->uses_left);
                if (t->expires == 0)
                        snprintf(expires, sizeof(expires), "never");
                else {
                        time_t e = (time_t)t->expires;
                        struct tm tm;
                        if (!gmtime_r(&e, &tm) || strftime(expires, sizeof(expires), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                                snprintf(expires, sizeof(expires), "%lld", (long long)t->expires);
                }
                fprintf(out, "%-16s  %-24s  %-9s  %-20s  %s\n", t->id, t->name ? t->name : "(any)", uses, expires,
                        token_state(t, now));
        }
        /* The store knows only hashes of revoked default secrets, not the current one. */
        if (s.n_revoked_default > 0)
                fprintf(out, "%-16s  %-24s  %-9s  %-20s  %s (%zu earlier secret%s)\n", JOINTOKEN_DEFAULT_ID, "(any)",
                        "unlimited", "never", "revoked", s.n_revoked_default, s.n_revoked_default == 1 ? "" : "s");
        return ferror(out) ? -EIO : 0;
}
