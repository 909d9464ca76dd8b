/* A node's membership: see enroll.h.
 *
 * Joining never sends the secret to a head it has not verified: the TLS handshake proves the
 * head holds the key of the certificate it shows, and that certificate must chain to the CA
 * the token names (its hash) or to worker.yaml's ca_file, and be the head's (OU serve-head).
 * Only then do the token and a certificate request go out. The private key is made here and
 * stays here. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctlmsg.h"
#include "enroll.h"
#include "identity.h"
#include "jointoken.h"
#include "log.h"
#include "macros.h"
#include "metrics.h"
#include "pki.h"

#define JOIN_TIMEOUT_NS (10 * NSEC_PER_SEC)
#define JOIN_BACKOFF_MIN_NS (200 * NSEC_PER_MSEC)
#define JOIN_BACKOFF_MAX_NS (5 * NSEC_PER_SEC)
#define RENEW_RETRY_S 30       /* a renewal not answered by then is asked again */
#define EXPIRY_MARGIN_S 60     /* a certificate this close to expiry is as good as expired
                                * (or a tenth of its validity, when that is shorter) */

struct enroll {
        const struct worker_config *cfg;
        bool tls;
        char *token_text;              /* join_token_file's content, when read */
        struct jointoken token;
        bool have_token;
        struct identity id;
        bool have_identity;
        struct tls_ctx *client, *server;

        /* joining */
        struct loop *loop;
        struct netconn *join_nc;
        struct tls_ctx *join_ctx;
        char *trusted_ca_pem;          /* ca_file's CA, for a bare token */
        char *join_key;
        int join_status;               /* 0 running, 1 joined, < 0 failed for good */
        bool join_retry;
        uint64_t join_next_ns, join_backoff_ns;

        /* renewal */
        char *renew_key;
        int64_t renew_sent;
};

static struct log_limiter head_limiter;

static int64_t unix_now(void) { return (int64_t)time(NULL); }

static bool identity_usable(const struct enroll *e) {
        int64_t margin = MIN((int64_t)EXPIRY_MARGIN_S, (e->id.info.not_after - e->id.info.not_before) / 10);
        return e->have_identity && e->id.info.not_after - margin > unix_now() && streq(e->id.info.name, e->cfg->node_name);
}

static int read_token(struct enroll *e, bool required) {
        _cleanup_free_ char *err = NULL;
        int r = read_token_file(e->cfg->join_token_file, &e->token_text, &err);

        if (r < 0) {
                if (required || r != -ENOENT)
                        log_error("%s", err ?: strerror(-r));
                return r;
        }
        if (!e->tls)
                return 0;
        r = jointoken_parse(e->token_text, &e->token);
        if (r < 0) {
                log_error("%s: not a join token (want SRV1.<CA hash>.<id>.<secret> from `serve-head --join-token "
                          "create`, or the head's join_token_file secret)", e->cfg->join_token_file);
                return r;
        }
        e->have_token = true;
        return 0;
}

int enroll_init(const struct worker_config *cfg, struct enroll **ret) {
        _cleanup_free_ char *why = NULL;
        struct enroll *e = calloc(1, sizeof *e);
        int r;

        if (!e)
                return -ENOMEM;
        e->cfg = cfg;
        e->tls = cfg->transport == TRANSPORT_TLS;
        if (!e->tls) {
                log_warning("transport: plaintext in %s: links to the head and to other nodes are neither encrypted "
                            "nor authenticated; use it only on an isolated network", cfg->path);
                r = read_token(e, true);
                if (r < 0) {
                        enroll_free(e);
                        return r;
                }
                *ret = e;
                return 0;
        }
        r = identity_load(cfg->state_dir, &e->id, &why);
        if (r < 0) {
                log_error("Cannot use this node's stored identity: %s (remove it to join again with a token)",
                          why ?: strerror(-r));
                enroll_free(e);
                return r;
        }
        e->have_identity = r > 0;
        r = read_token(e, !identity_usable(e));
        if (r < 0 && (r != -ENOENT || !identity_usable(e))) {
                if (r == -ENOENT)
                        log_error("this node has no certificate yet (%s) and no join token to get one: write a token "
                                  "from `serve-head --join-token create` to %s", why ?: "expired", cfg->join_token_file);
                enroll_free(e);
                return r;
        }
        *ret = e;
        return 0;
}

void enroll_free(struct enroll *e) {
        if (!e)
                return;
        if (e->join_nc) {
                e->join_nc->userdata = NULL;
                netconn_close(e->join_nc, false);
        }
        tls_ctx_unref(e->join_ctx);
        tls_ctx_unref(e->client);
        tls_ctx_unref(e->server);
        identity_done(&e->id);
        jointoken_done(&e->token);
        if (e->token_text)
                explicit_bzero(e->token_text, strlen(e->token_text));
        free(e->token_text);
        free(e->trusted_ca_pem);
        free(e->join_key);
        free(e->renew_key);
        free(e);
}

bool enroll_is_tls(const struct enroll *e) { return e->tls; }
const char *enroll_hello_token(const struct enroll *e) { return e->tls ? NULL : e->token_text; }
struct tls_ctx *enroll_client_ctx(const struct enroll *e) { return e->client; }
struct tls_ctx *enroll_server_ctx(const struct enroll *e) { return e->server; }

static int make_contexts(struct enroll *e) {
        _cleanup_free_ char *err = NULL;
        struct tls_config c = { .cert_pem = e->id.cert_pem, .key_pem = e->id.key_pem, .ca_pem = e->id.ca_pem };
        struct tls_config s = c;
        int r;

        s.require_peer_cert = true;
        r = tls_ctx_new(TLS_CLIENT, &c, &e->client, &err);
        if (r >= 0)
                r = tls_ctx_new(TLS_SERVER, &s, &e->server, &err);
        if (r < 0)
                log_error("Cannot set up TLS with this node's certificate: %s", err ?: strerror(-r));
        return r;
}

/* ---- joining ---- */

static const struct netconn_ops join_ops;

static void join_fail(struct enroll *e, int r) {
        e->join_status = r;
        if (e->join_nc) {
                e->join_nc->userdata = NULL;
                netconn_close(e->join_nc, false);
                e->join_nc = NULL;
        }
}

static void join_on_connect(struct netconn *nc) {
        struct enroll *e = nc->userdata;
        _cleanup_free_ char *chain = netconn_tls_peer_chain_pem(nc), *ca = NULL, *err = NULL, *csr = NULL;
        int r;

        if (!e)
                return;
        /* The head first: with a bare token its chain must reach ca_file's CA (OpenSSL checked
         * that already), with a full one the CA whose hash the token carries. */
        r = pki_verify_chain(chain ?: "", e->trusted_ca_pem, e->trusted_ca_pem ? NULL : e->token.ca_hash, PKI_UNIT_HEAD,
                             &ca, &err);
        if (r < 0) {
                log_error("not joining through %s: it is not this cluster's head (%s); check head_address in %s and that "
                          "the join token comes from this cluster",
                          e->cfg->head_address, err ?: strerror(-r), e->cfg->path);
                return join_fail(e, -EPERM);
        }
        free(e->trusted_ca_pem);
        e->trusted_ca_pem = TAKE_PTR(ca);
        free(e->join_key);
        e->join_key = NULL;
        r = pki_key_new(&e->join_key);
        if (r >= 0)
                r = pki_csr_new(e->join_key, e->cfg->node_name, &csr, &err);
        if (r < 0) {
                log_error("Cannot make this node's key and certificate request: %s", err ?: strerror(-r));
                return join_fail(e, r);
        }
        cJSON *m = ctlmsg_new("join");
        bool ok = m && cJSON_AddStringToObject(m, "token_id", e->token.id) &&
                  cJSON_AddStringToObject(m, "secret", e->token.secret) &&
                  cJSON_AddStringToObject(m, "node", e->cfg->node_name) && cJSON_AddStringToObject(m, "csr", csr) &&
                  ctlmsg_encode(netconn_outbuf(nc), m) == 0;
        cJSON_Delete(m);
        if (!ok)
                return join_fail(e, -ENOMEM);
        netconn_flush(nc);
        log_info("joining the cluster through %s as node %s (token %s)", e->cfg->head_address, e->cfg->node_name,
                 e->token.id);
}

static int take_certificate(struct enroll *e, const char *chain, const char *key) {
        _cleanup_free_ char *err = NULL, *why = NULL;
        struct pki_cert_info info;
        int r;

        r = pki_verify_chain(chain, e->trusted_ca_pem ?: e->id.ca_pem, NULL, PKI_UNIT_NODE, NULL, &err);
        if (r >= 0 && (pki_cert_info(chain, &info) < 0 || !streq(info.name, e->cfg->node_name))) {
                r = -EINVAL;
                err = strdup("it names another node");
        } else if (r >= 0 && pki_key_matches_cert(key, chain) != 1) {
                r = -EINVAL;
                err = strdup("it is not for the key this node asked with");
        }
        if (r < 0)
                return log_error_errno(r, "serve-head sent a certificate this node cannot use: %s", err ?: strerror(-r));
        r = identity_save(e->cfg->state_dir, key, chain, e->trusted_ca_pem);
        if (r < 0)
                return log_error_errno(r, "Cannot store this node's certificate in %s: %m", e->cfg->state_dir);
        identity_done(&e->id);
        r = identity_load(e->cfg->state_dir, &e->id, &why);
        if (r <= 0)
                return log_error_errno(r < 0 ? r : -EIO, "The identity stored in %s does not load back: %s",
                                       e->cfg->state_dir, why ?: "incomplete");
        e->have_identity = true;
        return 0;
}

static void join_on_data(struct netconn *nc) {
        struct enroll *e = nc->userdata;
        cJSON *m = NULL;
        const char *type = NULL, *why = NULL, *s;
        char err[256] = "";

        if (!e)
                return;
        int r = ctlmsg_decode(&nc->in, &m, &type, &why);
        if (r == 0)
                return;
        if (r < 0) {
                log_error("serve-head sent an invalid answer to our join (%s)", why);
                return join_fail(e, -EBADMSG);
        }
        if (streq(type, "refused")) {
                s = cJSON_GetStringValue(cJSON_GetObjectItem(m, "reason"));
                log_error("serve-head at %s refused to let this node join: %s (join_token_file %s)", e->cfg->head_address,
                          s ?: "no reason given", e->cfg->join_token_file);
                r = -EACCES;
        } else if (streq(type, "joined") && ctl_get_string(m, "certificate", 65536, true, &s, err, sizeof err) == 0) {
                r = take_certificate(e, s, e->join_key);
                if (r >= 0) {
                        log_info("joined the cluster as node %s: certificate serial %llu, valid until %s", e->cfg->node_name,
                                 (unsigned long long)e->id.info.serial,
                                 strtok(ctime(&(time_t){ e->id.info.not_after }), "\n"));
                        r = 1;
                }
        } else {
                log_error("serve-head answered our join with '%s'%s%s", type, err[0] ? ": " : "", err);
                r = -EBADMSG;
        }
        cJSON_Delete(m);
        if (r == 1) {
                e->join_status = 1;
                e->join_nc = NULL;
                nc->userdata = NULL;
                netconn_close(nc, false);
        } else
                join_fail(e, r);
}

static void join_on_close(struct netconn *nc, int err) {
        struct enroll *e = nc->userdata;
        const char *tls_err = netconn_tls_error(nc);

        if (!e)
                return;
        e->join_nc = NULL;
        /* A head whose certificate does not verify is not ours: that does not get better. */
        if (tls_err && strstr(tls_err, "verify")) {
                log_error("not joining through %s: its certificate does not verify against %s (%s)", e->cfg->head_address,
                          e->cfg->ca_file ?: NODECFG_DEFAULT_CA_FILE, tls_err);
                e->join_status = -EPERM;
                return;
        }
        log_limited(&head_limiter, LOG_INFO, "cannot reach serve-head at %s to join yet (%s); retrying",
                    e->cfg->head_address, tls_err ?: err ? strerror(-err) : "connection closed");
        e->join_retry = true;
}

static const struct netconn_ops join_ops = {
        .on_connect = join_on_connect,
        .on_data = join_on_data,
        .on_close = join_on_close,
};

static int join_attempt(struct enroll *e) {
        int r = netconn_connect_tls(e->loop, e->cfg->head_host, e->cfg->head_port, &join_ops, e, e->join_ctx,
                                    JOIN_TIMEOUT_NS, &e->join_nc);
        if (r < 0) {
                e->join_nc = NULL;
                e->join_retry = true;
        }
        return r;
}

/* The CA to check the head with: the token's hash, or (bare token) ca_file / the head's own CA
 * file when this is the head's machine. */
static int join_trust(struct enroll *e) {
        const char *path = e->cfg->ca_file;
        int r;

        if (e->token.ca_hash[0])
                return 0;
        if (!path && access(NODECFG_DEFAULT_CA_FILE, R_OK) == 0)
                path = NODECFG_DEFAULT_CA_FILE;
        if (!path) {
                log_error("%s holds a bare secret, which cannot tell us which head to trust: write the output of "
                          "`serve-head --join-token show` (or of `--join-token create`) there, or set ca_file in %s to "
                          "a copy of the head's CA certificate",
                          e->cfg->join_token_file, e->cfg->path);
                return -EINVAL;
        }
        r = pki_read_file(path, false, &e->trusted_ca_pem);
        if (r < 0)
                return log_error_errno(r, "Cannot read the cluster CA certificate %s (ca_file): %m", path);
        return 0;
}

int enroll_start(struct enroll *e, struct loop *loop) {
        _cleanup_free_ char *err = NULL;
        int r;

        if (!e->tls)
                return 1;
        /* A new token for another CA means the cluster's CA was rotated: join it. */
        bool rotated = e->have_identity && e->have_token && e->token.ca_hash[0] && !streq(e->token.ca_hash, e->id.ca_hash);
        if (identity_usable(e) && !rotated) {
                log_info("node %s: certificate serial %llu from the stored identity in %s", e->cfg->node_name,
                         (unsigned long long)e->id.info.serial, e->cfg->state_dir);
                r = make_contexts(e);
                return r < 0 ? r : 1;
        }
        if (rotated)
                log_info("the join token names another cluster CA than this node's certificate: joining again");
        else if (e->have_identity)
                log_info("this node's stored certificate %s: joining again with the token",
                         streq(e->id.info.name, e->cfg->node_name) ? "has expired" : "is for another node name");
        if (!e->have_token)
                return -ENOENT;
        r = join_trust(e);
        if (r < 0)
                return r;
        struct tls_config c = { .ca_pem = e->trusted_ca_pem };
        r = tls_ctx_new(TLS_CLIENT, &c, &e->join_ctx, &err);
        if (r < 0)
                return log_error_errno(r, "Cannot set up TLS to join: %s", err ?: strerror(-r));
        e->loop = loop;
        e->join_retry = true;
        return 0;
}

int enroll_join_step(struct enroll *e, uint64_t now, uint64_t *ret_wait_ns) {
        int r;

        if (e->join_status == 0 && e->join_retry && !e->join_nc && now >= e->join_next_ns) {
                e->join_retry = false;
                e->join_backoff_ns = e->join_backoff_ns ? MIN(JOIN_BACKOFF_MAX_NS, e->join_backoff_ns * 2) : JOIN_BACKOFF_MIN_NS;
                e->join_next_ns = now + e->join_backoff_ns;
                (void)join_attempt(e);
        }
        if (e->join_status == 0) {
                *ret_wait_ns = e->join_retry && e->join_next_ns > now ? e->join_next_ns - now : 100 * NSEC_PER_MSEC;
                return 0;
        }
        free(e->join_key);
        e->join_key = NULL;
        tls_ctx_unref(e->join_ctx);
        e->join_ctx = NULL;
        if (e->join_status < 0)
                return e->join_status;
        r = make_contexts(e);
        return r < 0 ? r : 1;
}

/* ---- the head and renewal ---- */

int enroll_check_head(struct enroll *e, struct netconn *nc) {
        const struct tls_peer *p = netconn_tls_peer(nc);

        if (!e->tls)
                return 0;
        if (p && p->has_cert && streq(p->unit, PKI_UNIT_HEAD)) {
                log_info("serve-head at %s authenticated (%s)", e->cfg->head_address, tls_mode_name(netconn_tls_ktls(nc)));
                return 0;
        }
        log_limited(&head_limiter, LOG_ERR,
                    "refusing what answers at %s: its certificate is %s's of the cluster CA, not the head's; applying "
                    "nothing from it",
                    e->cfg->head_address, p && p->name[0] ? p->name : "no one");
        return -EPERM;
}

void enroll_note_head_closed(struct enroll *e, struct netconn *nc) {
        const char *err = netconn_tls_error(nc);
        if (e->tls && err && !netconn_tls_peer(nc))
                log_limited(&head_limiter, LOG_ERR,
                            "cannot authenticate serve-head at %s: TLS handshake failed (%s); applying nothing from it",
                            e->cfg->head_address, err);
}

cJSON *enroll_renew_message(struct enroll *e) {
        _cleanup_free_ char *csr = NULL, *err = NULL;
        int64_t now = unix_now();

        if (!e->tls || !e->have_identity || now < identity_renew_at(&e->id))
                return NULL;
        if (e->renew_key && now - e->renew_sent < RENEW_RETRY_S)
                return NULL;
        free(e->renew_key);
        e->renew_key = NULL;
        if (pki_key_new(&e->renew_key) < 0 || pki_csr_new(e->renew_key, e->cfg->node_name, &csr, &err) < 0) {
                log_error("Cannot make a key to renew this node's certificate: %s", err ?: "out of memory");
                return NULL;
        }
        e->renew_sent = now;
        cJSON *m = ctlmsg_new("renew");
        if (m && !cJSON_AddStringToObject(m, "csr", csr)) {
                cJSON_Delete(m);
                return NULL;
        }
        log_info("renewing this node's certificate (it expires %s)", strtok(ctime(&(time_t){ e->id.info.not_after }), "\n"));
        return m;
}

int enroll_on_certificate(struct enroll *e, const cJSON *m) {
        _cleanup_free_ char *key = TAKE_PTR(e->renew_key), *err = NULL;
        const char *chain;
        char ferr[256] = "";
        int r;

        if (!e->tls || !key) {
                log_warning("serve-head sent a certificate we did not ask for: ignored");
                return -EINVAL;
        }
        if (ctl_get_string(m, "certificate", 65536, true, &chain, ferr, sizeof ferr) < 0) {
                log_error("serve-head sent an invalid certificate message (%s)", ferr);
                return -EINVAL;
        }
        r = take_certificate(e, chain, key);
        if (r < 0)
                return r;
        if ((r = tls_ctx_set_identity(e->client, e->id.cert_pem, e->id.key_pem, &err)) < 0 ||
            (r = tls_ctx_set_identity(e->server, e->id.cert_pem, e->id.key_pem, &err)) < 0)
                return log_error_errno(r, "Cannot use the renewed certificate: %s", err ?: strerror(-r));
        log_info("renewed this node's certificate: serial %llu, valid until %s", (unsigned long long)e->id.info.serial,
                 strtok(ctime(&(time_t){ e->id.info.not_after }), "\n"));
        return 0;
}

void enroll_render_metrics(const struct enroll *e, struct buf *b) {
        (void)tls_render_metrics(b, e->tls);
        if (!e->tls || !e->have_identity)
                return;
        metrics_family(b, "serve_node_certificate_expiry_seconds", METRICS_GAUGE,
                       "When this node's certificate expires (Unix time); it is renewed two thirds of the way");
        metrics_sample(b, "serve_node_certificate_expiry_seconds", NULL, (double)e->id.info.not_after);
}
