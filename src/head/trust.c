/* Trust on the control port: the head is the cluster's certificate authority.
 *
 * A node without a certificate may only join: over TLS (it checked our certificate against the
 * CA hash in its token before sending anything), it presents a join token and a certificate
 * request, and gets a certificate for its name. From then on it connects with that
 * certificate, and renews it over that authenticated link before it expires.
 *
 * Revocation is one number per node name: every certificate of node N with a serial below
 * min_serial[N] is refused. Serials only grow (the larger of the last one plus one and the
 * time in microseconds, so they keep growing even across a lost state file), so a join (which
 * revokes the name's older certificates: the old key may be lost or stolen) and `serve nodes
 * remove` (which revokes all of them) are each one assignment. The head sends every node's
 * min_serial with the routing table, so workers refuse revoked peers on their data ports too. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctlmsg.h"
#include "head.h"
#include "jointoken.h"
#include "log.h"
#include "macros.h"
#include "metrics.h"
#include "pki.h"
#include "tls.h"

#define HEAD_CERT_VALIDITY_S (30 * 86400)
#define MIN_RENEW_INTERVAL_NS (5 * NSEC_PER_SEC) /* a node that asks more often is refused */

struct revocation {
        char *name;
        uint64_t min_serial;
        double at;               /* when it was set (wall clock), to forget it once moot */
};

struct trust {
        struct pki_ca *ca;
        char *pki_dir;
        struct tls_ctx *ctx;
        int64_t head_renew_at;   /* when to issue ourselves a new certificate */
        uint64_t last_serial;
        struct revocation *rev;
        size_t n_rev;
        uint64_t joins, join_refusals, renewals, links_refused;
};

static struct log_limiter refusal_limiter, join_limiter;

static int64_t unix_now(void) { return (int64_t)time(NULL); }

static uint64_t next_serial(struct trust *t) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
        t->last_serial = MAX(t->last_serial + 1, us);
        return t->last_serial;
}

static struct revocation *rev_find(struct trust *t, const char *name) {
        for (size_t i = 0; i < t->n_rev; i++)
                if (streq(t->rev[i].name, name))
                        return &t->rev[i];
        return NULL;
}

static int rev_set(struct head *h, const char *name, uint64_t min_serial) {
        struct trust *t = h->trust;
        struct revocation *r = rev_find(t, name);

        if (!r) {
                struct revocation *nr = realloc(t->rev, (t->n_rev + 1) * sizeof *nr);
                if (!nr)
                        return -ENOMEM;
                t->rev = nr;
                r = &t->rev[t->n_rev];
                *r = (struct revocation){ .name = strdup(name) };
                if (!r->name)
                        return -ENOMEM;
                t->n_rev++;
        }
        r->min_serial = MAX(r->min_serial, min_serial);
        r->at = wall_now();
        h->routing_dirty = true; /* workers learn the new boundary with the routing table */
        return 0;
}

uint64_t trust_min_serial(const struct head *h, const char *name) {
        if (!h->trust)
                return 0;
        struct revocation *r = rev_find(h->trust, name);
        return r ? r->min_serial : 0;
}

static int issue_head_identity(struct head *h) {
        struct trust *t = h->trust;
        _cleanup_free_ char *key = NULL, *csr = NULL, *chain = NULL, *err = NULL;
        struct pki_cert_info info;
        int r;

        r = pki_key_new(&key);
        if (r >= 0)
                r = pki_csr_new(key, PKI_HEAD_NAME, &csr, &err);
        if (r >= 0)
                r = pki_ca_issue(t->ca, csr, PKI_HEAD_NAME, PKI_UNIT_HEAD, next_serial(t), HEAD_CERT_VALIDITY_S, &chain,
                                 &err);
        if (r < 0)
                return log_error_errno(r, "Cannot issue the head's certificate: %s", err ?: strerror(-r));
        if (!t->ctx) {
                struct tls_config tc = { .cert_pem = chain, .key_pem = key, .ca_pem = pki_ca_cert_pem(t->ca) };
                r = tls_ctx_new(TLS_SERVER, &tc, &t->ctx, &err);
        } else
                r = tls_ctx_set_identity(t->ctx, chain, key, &err);
        if (r < 0)
                return log_error_errno(r, "Cannot set up TLS for the control port: %s", err ?: strerror(-r));
        if (pki_cert_info(chain, &info) == 0)
                t->head_renew_at = info.not_before + (info.not_after - info.not_before) * 2 / 3;
        return 0;
}

static char *pki_dir_of(const char *state_dir) {
        char *d = NULL;
        if (asprintf(&d, "%s/pki", state_dir) < 0)
                return NULL;
        return d;
}

/* The CA: the operator's files (cluster.yaml tls:), or ours in <state-dir>/pki, made on first use. */
static int load_ca(const struct cluster_config *cc, const char *cluster_path, const char *pki_dir, struct pki_ca **ret) {
        _cleanup_free_ char *cert = NULL, *key = NULL, *err = NULL;
        bool ours = !cc->ca_cert_file;
        int r;

        if (ours) {
                if (mkdir(pki_dir, 0700) < 0 && errno != EEXIST)
                        return log_error_errno(errno, "Cannot create %s: %m", pki_dir);
                /* Made by root (`serve-head --join-token` run by an operator), it must still be
                 * the head's (User=serve): it belongs to whoever owns the state directory. */
                struct stat st;
                _cleanup_free_ char *parent = strdup(pki_dir);
                char *slash = parent ? strrchr(parent, '/') : NULL;
                if (slash && slash != parent)
                        *slash = 0;
                if (geteuid() == 0 && parent && stat(parent, &st) == 0 && chown(pki_dir, st.st_uid, st.st_gid) < 0)
                        return log_error_errno(errno, "Cannot give %s to the owner of %s: %m", pki_dir, parent);
                if (asprintf(&cert, "%s/ca.crt", pki_dir) < 0 || asprintf(&key, "%s/ca.key", pki_dir) < 0)
                        return -ENOMEM;
        } else {
                cert = path_relative_to_file(cluster_path, cc->ca_cert_file);
                key = path_relative_to_file(cluster_path, cc->ca_key_file);
                if (!cert || !key)
                        return -ENOMEM;
        }
        r = pki_ca_load(cert, key, ours, ret, &err);
        if (r < 0)
                log_error("Cannot load the cluster CA: %s", err ?: strerror(-r));
        return r;
}

int trust_init(struct head *h) {
        struct trust *t;
        int r;

        if (h->ccfg->transport == TRANSPORT_PLAINTEXT) {
                log_warning("transport: plaintext in %s: links between nodes are neither encrypted nor authenticated, "
                            "and anyone who can reach a data port can send it requests; use it only on an isolated network",
                            h->cluster_path);
                return 0;
        }
        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        h->trust = t;
        t->pki_dir = pki_dir_of(h->state_dir);
        if (!t->pki_dir)
                return -ENOMEM;
        r = load_ca(h->ccfg, h->cluster_path, t->pki_dir, &t->ca);
        if (r < 0)
                return r;
        log_info("cluster CA %s (sha256 %s); node certificates are valid for %g s", h->ccfg->ca_cert_file ? "from cluster.yaml" : "in the state directory",
                 pki_ca_hash(t->ca), h->ccfg->node_cert_validity_s);
        return 0;
}

int trust_start(struct head *h) {
        if (!h->trust)
                return 0;
        return issue_head_identity(h);
}

void trust_tick(struct head *h) {
        if (h->trust && h->trust->head_renew_at && unix_now() >= h->trust->head_renew_at) {
                log_info("the head's certificate is due for renewal: issuing a new one");
                (void)issue_head_identity(h);
        }
}

void trust_free(struct head *h) {
        struct trust *t = h->trust;
        if (!t)
                return;
        tls_ctx_unref(t->ctx);
        pki_ca_free(t->ca);
        for (size_t i = 0; i < t->n_rev; i++)
                free(t->rev[i].name);
        free(t->rev);
        free(t->pki_dir);
        free(t);
        h->trust = NULL;
}

struct tls_ctx *trust_ctx(const struct head *h) { return h->trust ? h->trust->ctx : NULL; }

int trust_check_peer(struct head *h, struct netconn *nc, const char **ret_name) {
        const struct tls_peer *p = netconn_tls_peer(nc);

        if (!p || !p->has_cert)
                return 0;
        if (!streq(p->unit, PKI_UNIT_NODE)) {
                h->trust->links_refused++;
                log_limited(&refusal_limiter, LOG_WARNING,
                            "refused a control connection from %s: its certificate is for a %s, not a node", nc->peer,
                            p->unit[0] ? p->unit : "(no role)");
                return -EPERM;
        }
        if (p->serial < trust_min_serial(h, p->name)) {
                h->trust->links_refused++;
                log_limited(&refusal_limiter, LOG_WARNING,
                            "refused node %s from %s: its certificate (serial %llu) was revoked (the node was removed or "
                            "joined again since)",
                            p->name, nc->peer, (unsigned long long)p->serial);
                return -EPERM;
        }
        *ret_name = p->name;
        return 1;
}

void trust_note_refused_handshake(struct head *h, struct netconn *nc) {
        if (h->trust)
                h->trust->links_refused++;
        log_limited(&refusal_limiter, LOG_WARNING, "refused a connection to the control port from %s: TLS handshake failed (%s)",
                    nc->peer, netconn_tls_error(nc) ?: "closed during the handshake");
}

static void answer(struct netconn *nc, cJSON *m) {
        if (m && ctlmsg_encode(netconn_outbuf(nc), m) == 0)
                netconn_flush(nc);
        cJSON_Delete(m);
        nc->userdata = NULL;
        netconn_close(nc, true);
}

static void join_refuse(struct head *h, struct netconn *nc, const char *name, const char *why) {
        h->trust->join_refusals++;
        log_limited(&join_limiter, LOG_WARNING, "refused to let %s join from %s: %s", name ?: "a node", nc->peer, why);
        cJSON *m = ctlmsg_new("refused");
        cJSON_AddStringToObject(m, "reason", why);
        answer(nc, m);
}

void trust_on_join(struct head *h, struct netconn *nc, const cJSON *m) {
        struct trust *t = h->trust;
        const char *id, *secret, *name, *csr, *reason = NULL;
        _cleanup_free_ char *chain = NULL, *err = NULL;
        char ferr[256] = "";
        struct node *n;
        int r;

        if (ctl_get_string(m, "token_id", JOINTOKEN_ID_HEX, true, &id, ferr, sizeof ferr) < 0 ||
            ctl_get_string(m, "secret", 4096, true, &secret, ferr, sizeof ferr) < 0 ||
            ctl_get_string(m, "node", 200, true, &name, ferr, sizeof ferr) < 0 ||
            ctl_get_string(m, "csr", 16384, true, &csr, ferr, sizeof ferr) < 0)
                return join_refuse(h, nc, NULL, ferr);
        if (!node_name_valid(name))
                return join_refuse(h, nc, NULL, "invalid node name (letters, digits, '.', '_', '-'; at most 200)");
        n = node_find(h, name);
        if (n && n->nc && n->alive)
                return join_refuse(h, nc, name,
                                   "a node of that name is connected; remove it first (serve nodes remove NAME) or pick another node_name");
        if (!n && h->n_nodes >= MAX_NODES)
                return join_refuse(h, nc, name, "the cluster is full");
        r = jointoken_consume(t->pki_dir, id, secret, h->join_token, name, &reason);
        if (r < 0)
                return join_refuse(h, nc, name, r == -EACCES ? reason : "the join token store cannot be read (see the head's log)");
        uint64_t serial = next_serial(t);
        r = pki_ca_issue(t->ca, csr, name, PKI_UNIT_NODE, serial, (int64_t)h->ccfg->node_cert_validity_s, &chain, &err);
        if (r < 0)
                return join_refuse(h, nc, name, err ?: "cannot issue a certificate");
        /* Certificates this name had before are revoked: a node that joins again made a new key. */
        if (rev_set(h, name, serial) < 0)
                return join_refuse(h, nc, name, "out of memory");
        t->joins++;
        log_info("node %s joined from %s with token %s: certificate serial %llu, valid for %g s", name, nc->peer, id,
                 (unsigned long long)serial, h->ccfg->node_cert_validity_s);
        save_state(h);
        cJSON *a = ctlmsg_new("joined");
        cJSON_AddStringToObject(a, "certificate", chain);
        answer(nc, a);
}

void trust_on_renew(struct head *h, struct node *n, const cJSON *m) {
        struct trust *t = h->trust;
        const struct tls_peer *p = n->nc ? netconn_tls_peer(n->nc) : NULL;
        _cleanup_free_ char *chain = NULL, *err = NULL;
        const char *csr;
        char ferr[256] = "";
        uint64_t now = now_ns();

        if (!t || !p || !p->has_cert) {
                log_warning("node %s asked to renew a certificate over a link without one: ignored", n->name);
                return;
        }
        if (n->renewed_ns && now - n->renewed_ns < MIN_RENEW_INTERVAL_NS) {
                log_limited(&join_limiter, LOG_WARNING, "node %s asks to renew its certificate too often: ignored", n->name);
                return;
        }
        if (ctl_get_string(m, "csr", 16384, true, &csr, ferr, sizeof ferr) < 0) {
                log_warning("node %s sent an invalid renewal (%s)", n->name, ferr);
                return;
        }
        uint64_t serial = next_serial(t);
        if (pki_ca_issue(t->ca, csr, n->name, PKI_UNIT_NODE, serial, (int64_t)h->ccfg->node_cert_validity_s, &chain,
                         &err) < 0) {
                log_warning("cannot renew node %s's certificate: %s", n->name, err ?: "unknown error");
                return;
        }
        n->renewed_ns = now;
        t->renewals++;
        log_info("renewed node %s's certificate: serial %llu, valid for %g s", n->name, (unsigned long long)serial,
                 h->ccfg->node_cert_validity_s);
        cJSON *a = ctlmsg_new("certificate");
        cJSON_AddStringToObject(a, "certificate", chain);
        node_send(n, a);
}

int trust_revoke(struct head *h, const char *name) {
        if (!h->trust)
                return 0;
        int r = rev_set(h, name, next_serial(h->trust));
        if (r >= 0)
                log_info("revoked every certificate of node %s", name);
        return r;
}

/* ---- the state file ---- */

int trust_mint_token(struct head *h, const char *name, uint64_t ttl_s, char **ret_text, char ret_id[JOINTOKEN_ID_HEX + 1]) {
        if (!h->trust)
                return -EOPNOTSUPP;
        return jointoken_create(h->trust->pki_dir, pki_ca_hash(h->trust->ca), ttl_s, 1, name, ret_text, ret_id);
}

int trust_revoke_token(struct head *h, const char *id) {
        if (!h->trust)
                return -EOPNOTSUPP;
        return jointoken_revoke(h->trust->pki_dir, id, h->join_token);
}

void trust_save(const struct head *h, cJSON *state) {
        const struct trust *t = h->trust;
        if (!t)
                return;
        cJSON *o = cJSON_AddObjectToObject(state, "pki"), *rv;
        /* Serials are 64-bit; JSON numbers are doubles: keep them as decimal text. */
        char s[32];
        snprintf(s, sizeof s, "%llu", (unsigned long long)t->last_serial);
        cJSON_AddStringToObject(o, "last_serial", s);
        rv = cJSON_AddObjectToObject(o, "min_serial");
        for (size_t i = 0; i < t->n_rev; i++) {
                cJSON *e = cJSON_CreateObject();
                snprintf(s, sizeof s, "%llu", (unsigned long long)t->rev[i].min_serial);
                cJSON_AddStringToObject(e, "serial", s);
                cJSON_AddNumberToObject(e, "at", t->rev[i].at);
                cJSON_AddItemToObject(rv, t->rev[i].name, e);
        }
}

void trust_recover(struct head *h, const cJSON *state) {
        struct trust *t = h->trust;
        const cJSON *o = cJSON_GetObjectItem(state, "pki"), *it;
        double now = wall_now();

        if (!t || !o)
                return;
        const char *ls = cJSON_GetStringValue(cJSON_GetObjectItem(o, "last_serial"));
        if (ls)
                t->last_serial = strtoull(ls, NULL, 10);
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(o, "min_serial")) {
                const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(it, "serial"));
                double at = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "at"));
                if (!s || !it->string || !node_name_valid(it->string))
                        continue;
                /* Once every certificate issued before the boundary has expired, it is moot. */
                if (!node_find(h, it->string) && at + h->ccfg->node_cert_validity_s + 600 < now)
                        continue;
                if (rev_set(h, it->string, strtoull(s, NULL, 10)) == 0)
                        t->rev[t->n_rev - 1].at = at > 0 ? at : now;
        }
}

/* ---- /metrics ---- */

void trust_render_metrics(const struct head *h, struct buf *b) {
        const struct trust *t = h->trust;

        (void)tls_render_metrics(b, t != NULL);
        if (!t)
                return;
        metrics_family(b, "serve_node_joins_total", METRICS_COUNTER, "Nodes that joined with a token");
        metrics_sample(b, "serve_node_joins_total", NULL, (double)t->joins);
        metrics_family(b, "serve_node_join_refusals_total", METRICS_COUNTER, "Joins refused (bad, expired or used-up token)");
        metrics_sample(b, "serve_node_join_refusals_total", NULL, (double)t->join_refusals);
        metrics_family(b, "serve_certificate_renewals_total", METRICS_COUNTER, "Node certificates renewed");
        metrics_sample(b, "serve_certificate_renewals_total", NULL, (double)t->renewals);
        metrics_family(b, "serve_control_links_refused_total", METRICS_COUNTER,
                       "Control connections refused: failed handshake, revoked or wrong-role certificate");
        metrics_sample(b, "serve_control_links_refused_total", NULL, (double)t->links_refused);
}

/* ---- serve-head --join-token ---- */

/* "90", "90s", "15m", "2h", "7d" -> seconds. */
static int parse_duration(const char *s, uint64_t *ret) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        uint64_t mul = 1;
        if (errno || end == s || *s == '-')
                return -EINVAL;
        if (streq(end, "") || streq(end, "s"))
                mul = 1;
        else if (streq(end, "m"))
                mul = 60;
        else if (streq(end, "h"))
                mul = 3600;
        else if (streq(end, "d"))
                mul = 86400;
        else
                return -EINVAL;
        if (v == 0 || v > 10ull * 365 * 86400 / mul)
                return -ERANGE;
        *ret = v * mul;
        return 0;
}

int trust_join_token_command(struct head *h, const char *action, const char *ttl, const char *uses, const char *name,
                             const char *id) {
        _cleanup_free_ char *pki_dir = NULL, *text = NULL;
        struct pki_ca *ca = NULL;
        uint64_t ttl_s = 0;
        unsigned long n_uses = 0;
        char new_id[JOINTOKEN_ID_HEX + 1];
        int r;

        if (h->ccfg->transport == TRANSPORT_PLAINTEXT) {
                fprintf(stderr, "serve-head: %s sets transport: plaintext; nodes join with join_token_file there "
                                "(join tokens need TLS)\n", h->cluster_path);
                return 1;
        }
        if (!streq(action, "create") && (ttl || uses || name)) {
                fprintf(stderr, "serve-head: --ttl, --uses and --name go with --join-token create\n");
                return 2;
        }
        if (ttl && parse_duration(ttl, &ttl_s) < 0) {
                fprintf(stderr, "serve-head: --ttl needs a duration like 900, 15m, 2h or 7d (at most 10 years), got '%s'\n", ttl);
                return 2;
        }
        if (uses) {
                char *end;
                n_uses = strtoul(uses, &end, 10);
                if (*uses == '\0' || *end || n_uses < 1 || n_uses > 1000000) {
                        fprintf(stderr, "serve-head: --uses needs a count between 1 and 1000000, got '%s'\n", uses);
                        return 2;
                }
        }
        if (name && !node_name_valid(name)) {
                fprintf(stderr, "serve-head: --name needs a node name (letters, digits, '.', '_', '-'), got '%s'\n", name);
                return 2;
        }
        if (mkdir(h->state_dir, 0700) < 0 && errno != EEXIST) {
                fprintf(stderr, "serve-head: cannot create %s: %s\n", h->state_dir, strerror(errno));
                return 1;
        }
        pki_dir = pki_dir_of(h->state_dir);
        if (!pki_dir || load_ca(h->ccfg, h->cluster_path, pki_dir, &ca) < 0)
                return 1;
        if (streq(action, "create")) {
                r = jointoken_create(pki_dir, pki_ca_hash(ca), ttl ? ttl_s : 0, (unsigned)n_uses, name, &text, new_id);
                if (r >= 0) {
                        printf("%s\n", text);
                        /* The token goes to stdout alone (for scripts); what it allows, to stderr. */
                        fprintf(stderr, "join token %s: %s%s, %s%s%s%s\n", new_id, ttl ? "expires in " : "never expires",
                                ttl ? ttl : "", uses ? uses : "unlimited", n_uses == 1 ? " use" : " uses",
                                name ? ", only for node " : "", name ? name : "");
                }
        } else if (streq(action, "show")) {
                /* The long-lived token of join_token_file, with the CA hash a node needs to trust us. */
                text = jointoken_format(pki_ca_hash(ca), JOINTOKEN_DEFAULT_ID, h->join_token);
                r = text ? 0 : -ENOMEM;
                if (text)
                        printf("%s\n", text);
        } else if (streq(action, "list"))
                r = jointoken_list(pki_dir, stdout);
        else if (streq(action, "revoke")) {
                if (!id) {
                        fprintf(stderr, "serve-head: --join-token revoke needs the token's id (see --join-token list; "
                                        "\"default\" is join_token_file's)\n");
                        pki_ca_free(ca);
                        return 2;
                }
                r = jointoken_revoke(pki_dir, id, h->join_token);
                if (r == -ENOENT)
                        fprintf(stderr, "serve-head: no join token %s (see --join-token list)\n", id);
                else if (r >= 0)
                        printf("revoked join token %s\n", id);
        } else {
                fprintf(stderr, "serve-head: --join-token takes create, list, revoke ID or show, got '%s'\n", action);
                pki_ca_free(ca);
                return 2;
        }
        pki_ca_free(ca);
        if (r < 0 && r != -ENOENT)
                fprintf(stderr, "serve-head: --join-token %s: %s\n", action, strerror(-r));
        return r < 0 ? 1 : 0;
}
