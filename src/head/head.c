/* serve-head: owns the desired state (apps.yaml, cluster.yaml, API deploys) and reconciles it:
 * which replicas exist and on which node. Workers connect to its control port; it places
 * replicas, tells every worker its share, and tells all of them where every deployment's ready
 * replicas are. It is never in the request path: when it is down, workers keep serving.
 *
 * Messages to workers (besides welcome/refused):
 *   config   the resolved deployments, routes and HTTP options; the same bytes for every node
 *   assign   this node's replica counts (and GPUs) per deployment, for a config epoch
 *   routing  every node's ready replicas per deployment; the same bytes for every node */
#include <arpa/inet.h>
#include <getopt.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "config.h"
#include "ctlmsg.h"
#include "httpd.h"
#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "netconn.h"
#include "nodecfg.h"
#include "placement.h"
#include "report.h"
#include "spec.h"
#include "state.h"

#define MAX_NODES 10000
#define MAX_API_BODY (16u << 20)
#define ROUTING_MIN_INTERVAL_NS (200 * NSEC_PER_MSEC)
#define RECONCILE_MIN_INTERVAL_NS (50 * NSEC_PER_MSEC) /* a burst of registrations: one placement */
#define HELLO_TIMEOUT_NS (10 * NSEC_PER_SEC)

struct node {
        struct head *h;
        char *name, *address;
        int http_port, data_port, metrics_port;
        cJSON *labels;                 /* object */
        double cpus;
        uint64_t memory;
        unsigned n_gpus;
        struct placement_resource *custom;
        size_t n_custom;
        bool alive, head_node;
        struct netconn *nc;
        uint64_t last_seen_ns;
        cJSON *report;                 /* the latest report */
        uint64_t n_reports;
        char *sent_assign;             /* text of the last assign sent (without epoch) */
        /* Its part of the assignment, (deployment, slot) index pairs, rebuilt by reconcile(). */
        struct share { uint32_t dep, slot; } *shares;
        size_t n_shares, cap_shares;
        uint64_t ready_sig;            /* hash of its RUNNING replicas: routing changes when it does */
        long long sent_config_epoch;
        struct list link;
};

/* A connection that has not said hello yet. */
struct pending_conn {
        struct head *h;
        struct netconn *nc;
        uint64_t since_ns;
        struct list link;
};

/* Replicas of one deployment on one node. */
struct slot {
        char *node;
        unsigned count;
        char **gpus;
};

struct assignment {
        char *key;                     /* "app/Deployment" */
        struct slot *slots;
        size_t n_slots;
        unsigned placed, pending;
        char *pending_reason;
};

struct head {
        struct loop loop;
        const char *conf_dir, *state_dir;
        char *apps_path, *cluster_path;
        struct cluster_config *ccfg;
        char *join_token, *api_token;
        char *replica_bin;

        struct serve_config *cfg;
        char *cfg_text;
        char *cfg_source;              /* "file" or "api" */
        double deployed_at;
        struct serve_spec *spec;
        char *config_error;
        double config_error_at;
        long long config_epoch;
        struct netblob *config_msg;    /* the framed `config` message for workers */

        struct assignment *assign;     /* parallel to spec->deps */
        size_t n_assign;

        struct list nodes, pending;
        size_t n_nodes;
        char *routing_text;
        uint64_t routing_next_ns, reconcile_next_ns;
        char *saved_state;             /* what the state file holds */
        bool dirty, routing_dirty;

        struct netlistener ctl;
        struct httpd api;
        int sfd;
        struct signalfd_siginfo si;
        struct loop_op op_signal;
        bool reload, stop;
};

static double wall_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- nodes ---- */

static void node_free(struct node *n) {
        if (!n)
                return;
        list_del(&n->link);
        if (n->nc) {
                n->nc->userdata = NULL;
                netconn_close(n->nc, false);
        }
        free(n->name);
        free(n->address);
        cJSON_Delete(n->labels);
        for (size_t i = 0; i < n->n_custom; i++)
                free((char *)n->custom[i].name);
        free(n->custom);
        cJSON_Delete(n->report);
        free(n->sent_assign);
        free(n->shares);
        free(n);
}

static struct node *node_find(struct head *h, const char *name) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                if (streq(n->name, name))
                        return n;
        }
        return NULL;
}

static struct node *node_get(struct head *h, const char *name) {
        struct node *n = node_find(h, name);
        if (n)
                return n;
        n = calloc(1, sizeof *n);
        if (!n || !(n->name = strdup(name))) {
                free(n);
                return NULL;
        }
        n->h = h;
        n->address = strdup("");
        n->labels = cJSON_CreateObject();
        list_add_tail(&h->nodes, &n->link);
        h->n_nodes++;
        return n;
}

/* ---- assignment bookkeeping ---- */

static void assignment_done(struct assignment *a) {
        free(a->key);
        for (size_t i = 0; i < a->n_slots; i++) {
                free(a->slots[i].node);
                for (unsigned k = 0; a->slots[i].gpus && k < a->slots[i].count; k++)
                        free(a->slots[i].gpus[k]);
                free(a->slots[i].gpus);
        }
        free(a->slots);
        free(a->pending_reason);
}

static void assignments_free(struct assignment *a, size_t n) {
        for (size_t i = 0; i < n; i++)
                assignment_done(&a[i]);
        free(a);
}

static const struct slot *slot_for(const struct assignment *a, const char *node) {
        for (size_t i = 0; a && i < a->n_slots; i++)
                if (streq(a->slots[i].node, node))
                        return &a->slots[i];
        return NULL;
}

static char *dep_key(const char *app, const char *name) {
        char *k;
        return asprintf(&k, "%s/%s", app, name) < 0 ? NULL : k;
}

/* ---- messages to workers ---- */

static void node_send_blob(struct node *n, struct netblob *b) {
        if (n->nc && !n->nc->closed && b)
                (void)netconn_write_blob(n->nc, b);
}

static void node_send(struct node *n, cJSON *m) {
        if (m && n->nc && !n->nc->closed && ctlmsg_encode(netconn_outbuf(n->nc), m) == 0)
                netconn_flush(n->nc);
        cJSON_Delete(m);
}

static int frame_json(const cJSON *m, char **ret, size_t *ret_len) {
        struct buf b = {};
        int r = ctlmsg_encode(&b, m);
        if (r < 0) {
                buf_free(&b);
                return r;
        }
        *ret = b.data;
        *ret_len = b.len;
        return 0;
}

static void build_config_message(struct head *h) {
        cJSON *m = ctlmsg_new("config"), *deps, *routes, *http;
        const struct http_options *ho = h->cfg ? &h->cfg->http : NULL;

        netblob_unref(h->config_msg);
        h->config_msg = NULL;
        if (!m)
                return;
        cJSON_AddNumberToObject(m, "epoch", (double)h->config_epoch);
        cJSON_AddStringToObject(m, "proxy_location",
                                proxy_location_to_string(h->cfg ? h->cfg->proxy_location : PROXY_EVERY_NODE));
        http = cJSON_AddObjectToObject(m, "http");
        if (ho) {
                cJSON_AddNumberToObject(http, "request_timeout_s", ho->request_timeout_s);
                cJSON_AddNumberToObject(http, "keep_alive_timeout_s", ho->keep_alive_timeout_s);
                cJSON_AddNumberToObject(http, "header_timeout_s", ho->header_timeout_s);
                cJSON_AddNumberToObject(http, "max_request_body_bytes", (double)ho->max_request_body_bytes);
                cJSON_AddNumberToObject(http, "max_connections", ho->max_connections);
        }
        routes = cJSON_AddArrayToObject(m, "routes");
        deps = cJSON_AddArrayToObject(m, "deployments");
        for (size_t i = 0; h->spec && i < h->spec->n_apps; i++) {
                const struct app_spec *a = &h->spec->apps[i];
                if (!a->route_prefix)
                        continue;
                cJSON *r = cJSON_CreateObject();
                cJSON_AddStringToObject(r, "prefix", a->route_prefix);
                cJSON_AddStringToObject(r, "app", a->name);
                cJSON_AddStringToObject(r, "ingress", a->ingress);
                cJSON_AddItemToArray(routes, r);
        }
        for (size_t i = 0; h->spec && i < h->spec->n_deps; i++)
                cJSON_AddItemToArray(deps, dep_spec_to_json(&h->spec->deps[i]));
        char *framed = NULL;
        size_t len = 0;
        if (frame_json(m, &framed, &len) == 0)
                h->config_msg = netblob_new(framed, len);
        free(framed);
        cJSON_Delete(m);
}

static bool node_gets_proxy(const struct head *h, const struct node *n) {
        enum proxy_location l = h->cfg ? h->cfg->proxy_location : PROXY_EVERY_NODE;
        return l == PROXY_EVERY_NODE || (l == PROXY_HEAD_ONLY && n->head_node);
}

static void send_assign(struct head *h, struct node *n) {
        cJSON *m, *reps;
        char *text;

        if (!n->nc || !h->spec)
                return;
        if (n->sent_config_epoch != h->config_epoch && h->config_msg) {
                node_send_blob(n, h->config_msg);
                n->sent_config_epoch = h->config_epoch;
                free(n->sent_assign);
                n->sent_assign = NULL;
        }
        m = ctlmsg_new("assign");
        if (!m)
                return;
        cJSON_AddNumberToObject(m, "config_epoch", (double)h->config_epoch);
        cJSON_AddBoolToObject(m, "proxy", node_gets_proxy(h, n));
        reps = cJSON_AddArrayToObject(m, "replicas");
        /* Only its deployments: the others have no replicas here. */
        for (size_t k = 0; k < n->n_shares; k++) {
                const struct share *sh = &n->shares[k];
                if (sh->dep >= h->n_assign || sh->slot >= h->assign[sh->dep].n_slots)
                        continue;
                const struct slot *s = &h->assign[sh->dep].slots[sh->slot];
                cJSON *o = cJSON_CreateObject(), *g;
                cJSON_AddStringToObject(o, "app", h->spec->deps[sh->dep].app);
                cJSON_AddStringToObject(o, "name", h->spec->deps[sh->dep].name);
                cJSON_AddNumberToObject(o, "count", s->count);
                g = cJSON_AddArrayToObject(o, "gpus");
                for (unsigned j = 0; s->gpus && j < s->count; j++)
                        cJSON_AddItemToArray(g, cJSON_CreateString(s->gpus[j]));
                cJSON_AddItemToArray(reps, o);
        }
        text = cJSON_PrintUnformatted(m);
        if (text && n->sent_assign && streq(text, n->sent_assign)) {
                free(text);
                cJSON_Delete(m);
                return; /* nothing new for this node */
        }
        free(n->sent_assign);
        n->sent_assign = text;
        node_send(n, m);
}

/* Ready replicas per deployment per node, from the workers' reports. */
static void build_routing(struct head *h) {
        cJSON *m = ctlmsg_new("routing"), *nodes, *deps;
        struct list *pos, *tmp;
        int idx = 0;

        nodes = cJSON_AddArrayToObject(m, "nodes");
        deps = cJSON_AddArrayToObject(m, "deployments");
        size_t n_deps = h->spec ? h->spec->n_deps : 0;
        cJSON **per_dep = calloc(n_deps + 1, sizeof *per_dep);
        unsigned *ready = calloc(n_deps + 1, sizeof *ready); /* one node's RUNNING replicas per deployment */
        for (size_t i = 0; h->spec && i < h->spec->n_deps; i++) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "app", h->spec->deps[i].app);
                cJSON_AddStringToObject(o, "name", h->spec->deps[i].name);
                cJSON_AddNumberToObject(o, "max_ongoing", h->spec->deps[i].max_ongoing);
                /* Placed (maybe still starting): a proxy may hold requests for them. */
                cJSON_AddNumberToObject(o, "placed", i < h->n_assign ? h->assign[i].placed : 0);
                per_dep[i] = cJSON_AddArrayToObject(o, "ready");
                cJSON_AddItemToArray(deps, o);
        }
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                const cJSON *it;
                if (!n->alive || !n->report || !n->data_port)
                        continue;
                cJSON *no = cJSON_CreateObject();
                cJSON_AddStringToObject(no, "name", n->name);
                cJSON_AddStringToObject(no, "address", n->address);
                cJSON_AddNumberToObject(no, "data_port", n->data_port);
                cJSON_AddItemToArray(nodes, no);
                /* One pass over the report (not one per deployment: with 1000 nodes and 100
                 * deployments that was most of the head's CPU). A node lists its replicas
                 * grouped by deployment, so the last match is tried first. */
                size_t hint = 0;
                cJSON_ArrayForEach(it, cJSON_GetObjectItem(n->report, "replicas")) {
                        const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                        const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                        size_t i = hint;
                        if (!ready || !streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "state")), "RUNNING"))
                                continue;
                        if (i >= n_deps || !streq(app, h->spec->deps[i].app) || !streq(dep, h->spec->deps[i].name))
                                for (i = 0; i < n_deps; i++)
                                        if (streq(app, h->spec->deps[i].app) && streq(dep, h->spec->deps[i].name))
                                                break;
                        if (i < n_deps) {
                                ready[i]++;
                                hint = i;
                        }
                }
                for (size_t i = 0; ready && i < n_deps; i++) {
                        if (ready[i] > 0) {
                                cJSON *pair = cJSON_CreateArray();
                                cJSON_AddItemToArray(pair, cJSON_CreateNumber(idx));
                                cJSON_AddItemToArray(pair, cJSON_CreateNumber(ready[i]));
                                cJSON_AddItemToArray(per_dep[i], pair);
                        }
                        ready[i] = 0;
                }
                idx++;
        }
        free(ready);
        free(per_dep);
        char *text = cJSON_PrintUnformatted(m);
        if (text && h->routing_text && streq(text, h->routing_text)) {
                free(text);
                cJSON_Delete(m);
                return;
        }
        free(h->routing_text);
        h->routing_text = text;
        char *framed = NULL;
        size_t len = 0;
        struct netblob *blob = frame_json(m, &framed, &len) == 0 ? netblob_new(framed, len) : NULL;
        free(framed);
        if (blob)
                list_for_each_safe(pos, tmp, &h->nodes) {
                        struct node *n = list_entry(pos, struct node, link);
                        if (n->nc && n->sent_config_epoch == h->config_epoch)
                                node_send_blob(n, blob);
                }
        netblob_unref(blob);
        cJSON_Delete(m);
}

/* ---- state file ---- */

static void save_state(struct head *h) {
        cJSON *s = cJSON_CreateObject(), *nodes, *assign;
        struct list *pos, *tmp;
        int r;

        cJSON_AddNumberToObject(s, "version", 1);
        cJSON_AddStringToObject(s, "config", h->cfg_text ?: "");
        cJSON_AddStringToObject(s, "config_source", h->cfg_source ?: "file");
        cJSON_AddNumberToObject(s, "deployed_at", h->deployed_at);
        cJSON_AddNumberToObject(s, "config_epoch", (double)h->config_epoch);
        nodes = cJSON_AddArrayToObject(s, "nodes");
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                cJSON *o, *c;
                if (!n->alive)
                        continue;
                /* What placement needs to keep its replicas where they are after a restart,
                 * before the node has registered again. */
                o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "name", n->name);
                cJSON_AddStringToObject(o, "address", n->address);
                cJSON_AddNumberToObject(o, "data_port", n->data_port);
                cJSON_AddNumberToObject(o, "http_port", n->http_port);
                cJSON_AddNumberToObject(o, "cpus", n->cpus);
                cJSON_AddNumberToObject(o, "memory", (double)n->memory);
                cJSON_AddNumberToObject(o, "gpus", n->n_gpus);
                c = cJSON_AddObjectToObject(o, "custom");
                for (size_t i = 0; i < n->n_custom; i++)
                        cJSON_AddNumberToObject(c, n->custom[i].name, n->custom[i].amount);
                cJSON_AddItemToArray(nodes, o);
        }
        assign = cJSON_AddArrayToObject(s, "assignment");
        for (size_t i = 0; i < h->n_assign; i++)
                for (size_t k = 0; k < h->assign[i].n_slots; k++) {
                        const struct slot *sl = &h->assign[i].slots[k];
                        cJSON *o = cJSON_CreateObject(), *g;
                        cJSON_AddStringToObject(o, "deployment", h->assign[i].key);
                        cJSON_AddStringToObject(o, "node", sl->node);
                        cJSON_AddNumberToObject(o, "count", sl->count);
                        if (sl->gpus) {
                                g = cJSON_AddArrayToObject(o, "gpus");
                                for (unsigned j = 0; j < sl->count; j++)
                                        cJSON_AddItemToArray(g, cJSON_CreateString(sl->gpus[j]));
                        }
                        cJSON_AddItemToArray(assign, o);
                }
        char *text = cJSON_PrintUnformatted(s);
        if (text && h->saved_state && streq(text, h->saved_state)) {
                free(text);
                cJSON_Delete(s);
                return; /* unchanged: no write, no fsync */
        }
        r = state_save(h->state_dir, s);
        if (r < 0) {
                log_error_errno(r, "Cannot save the state to %s/%s: %m", h->state_dir, STATE_FILE_NAME);
                free(text);
        } else {
                free(h->saved_state);
                h->saved_state = text;
        }
        cJSON_Delete(s);
}

/* ---- reconciliation ---- */

/* Places every deployment's replicas (keeping what runs where it runs) and tells the nodes. */
static void reconcile(struct head *h) {
        struct placement_node *pn = calloc(h->n_nodes + 1, sizeof *pn);
        struct node **nodes = calloc(h->n_nodes + 1, sizeof *nodes);
        size_t n_deps = h->spec ? h->spec->n_deps : 0, nn = 0, n_prev = 0, cap_prev = 0;
        struct placement_deployment *pd = calloc(n_deps + 1, sizeof *pd);
        struct placement_prev_entry *prev = NULL;
        struct placement_result *res = NULL;
        struct assignment *na = calloc(n_deps + 1, sizeof *na);
        char **keys = calloc(n_deps + 1, sizeof *keys);
        struct list *pos, *tmp;
        int r;

        h->dirty = false;
        if (!pn || !nodes || !pd || !na || !keys)
                goto out;
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                nodes[nn] = n;
                pn[nn++] = (struct placement_node){ .name = n->name, .alive = n->alive && n->cpus > 0, .cpus = n->cpus,
                                                    .memory = n->memory, .n_gpus = n->n_gpus, .custom = n->custom,
                                                    .n_custom = n->n_custom };
        }
        for (size_t i = 0; i < n_deps; i++) {
                const struct dep_spec *d = &h->spec->deps[i];
                keys[i] = dep_key(d->app, d->name);
                pd[i] = (struct placement_deployment){ .key = keys[i], .replicas = d->replicas, .num_cpus = d->num_cpus,
                                                       .num_gpus = d->num_gpus, .memory = d->memory,
                                                       .custom = (const struct placement_resource *)d->resources,
                                                       .n_custom = d->n_resources, .max_per_node = d->max_per_node };
        }
        /* Spread: when nodes joined since a deployment was placed, no node keeps more than its
         * share (the rest is placed again, on the new nodes if they fit). A balanced placement
         * is left exactly as it is. */
        unsigned n_alive = 0;
        list_for_each_safe(pos, tmp, &h->nodes)
                n_alive += list_entry(pos, struct node, link)->alive;
        for (size_t i = 0; i < h->n_assign; i++) {
                unsigned total = 0, share;
                for (size_t k = 0; k < h->assign[i].n_slots; k++)
                        total += h->assign[i].slots[k].count;
                share = n_alive ? (total + n_alive - 1) / n_alive : total;
                for (size_t k = 0; k < h->assign[i].n_slots; k++) {
                        if (n_prev == cap_prev) {
                                cap_prev = cap_prev ? cap_prev * 2 : 64;
                                struct placement_prev_entry *np = realloc(prev, cap_prev * sizeof *np);
                                if (!np)
                                        goto out;
                                prev = np;
                        }
                        prev[n_prev++] = (struct placement_prev_entry){ .deployment = h->assign[i].key,
                                                                        .node = h->assign[i].slots[k].node,
                                                                        .count = MIN(h->assign[i].slots[k].count, share),
                                                                        .gpus = (const char *const *)h->assign[i].slots[k].gpus };
                }
        }
        struct placement_input in = { pn, nn, pd, n_deps };
        struct placement_prev pv = { prev, n_prev };
        r = placement_compute(&in, &pv, &res);
        if (r < 0) {
                log_error_errno(r, "placement failed: %m");
                goto out;
        }
        for (size_t i = 0; i < n_deps; i++) {
                const struct placement_deployment_result *dr = &res->deployments[i];
                na[i].key = TAKE_PTR(keys[i]);
                na[i].slots = calloc(dr->n_slots + 1, sizeof *na[i].slots);
                na[i].n_slots = dr->n_slots;
                for (size_t k = 0; k < dr->n_slots; k++) {
                        na[i].slots[k].node = strdup(nodes[dr->slots[k].node]->name);
                        na[i].slots[k].count = dr->slots[k].count;
                        if (dr->slots[k].gpus) {
                                na[i].slots[k].gpus = calloc(dr->slots[k].count + 1, sizeof(char *));
                                for (unsigned j = 0; j < dr->slots[k].count; j++)
                                        na[i].slots[k].gpus[j] = strdup(dr->slots[k].gpus[j]);
                        }
                }
                na[i].placed = dr->placed;
                na[i].pending = dr->pending;
                na[i].pending_reason = dr->pending_reason ? strdup(dr->pending_reason) : NULL;
                /* Log changes in what is pending once, not on every pass. */
                const struct assignment *old = NULL;
                for (size_t k = 0; k < h->n_assign; k++)
                        if (streq(h->assign[k].key, na[i].key))
                                old = &h->assign[k];
                if (dr->pending && (!old || old->pending != dr->pending || !streq_ptr(old->pending_reason, dr->pending_reason)))
                        log_warning("deployment %s: %u replica(s) PENDING: %s", na[i].key, dr->pending, dr->pending_reason);
        }
        assignments_free(h->assign, h->n_assign);
        h->assign = TAKE_PTR(na);
        h->n_assign = n_deps;
        for (size_t k = 0; k < nn; k++)
                nodes[k]->n_shares = 0;
        for (size_t i = 0; i < n_deps; i++)
                for (size_t k = 0; k < res->deployments[i].n_slots; k++) {
                        struct node *sn = nodes[res->deployments[i].slots[k].node];
                        if (sn->n_shares == sn->cap_shares) {
                                size_t cap = sn->cap_shares ? sn->cap_shares * 2 : 8;
                                struct share *ns = realloc(sn->shares, cap * sizeof *ns);
                                if (!ns)
                                        continue;
                                sn->shares = ns;
                                sn->cap_shares = cap;
                        }
                        sn->shares[sn->n_shares++] = (struct share){ (uint32_t)i, (uint32_t)k };
                }
        save_state(h);
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                if (n->nc && n->alive)
                        send_assign(h, n);
        }
        h->routing_dirty = true;
out:
        placement_result_free(res);
        for (size_t i = 0; keys && i < n_deps; i++)
                free(keys[i]);
        free(keys);
        assignments_free(na, na ? n_deps : 0);
        free(prev);
        free(pd);
        free(pn);
        free(nodes);
}

/* Makes cfg (already parsed) the running config. Returns 0, or -EINVAL with *ret_error. */
static int apply_config(struct head *h, struct serve_config *cfg, const char *text, const char *source, char **ret_error) {
        struct serve_spec *spec = NULL;
        int r;

        r = spec_resolve(h->replica_bin, cfg, &spec, ret_error);
        if (r < 0) {
                config_free(cfg);
                return r;
        }
        /* An identical config changes nothing, not even the epoch. */
        bool same = h->cfg_text && streq(h->cfg_text, text);
        config_free(h->cfg);
        h->cfg = cfg;
        serve_spec_free(h->spec);
        h->spec = spec;
        if (!same) {
                free(h->cfg_text);
                h->cfg_text = strdup(text);
                h->config_epoch++;
                h->deployed_at = wall_now();
        }
        free(h->cfg_source);
        h->cfg_source = strdup(source);
        free(h->config_error);
        h->config_error = NULL;
        build_config_message(h);
        h->dirty = true;
        log_info("applied %s config: %zu application(s), %zu deployment(s)%s", source, spec->n_apps, spec->n_deps,
                 same ? " (unchanged)" : "");
        return 0;
}

static void record_config_error(struct head *h, const char *msg) {
        free(h->config_error);
        h->config_error = strdup(msg);
        h->config_error_at = wall_now();
}

static int load_apps_file(struct head *h, char **ret_error) {
        _cleanup_free_ char *text = NULL;
        struct serve_config *cfg = NULL;
        size_t len;
        int r;

        r = read_file(h->apps_path, 16u << 20, &text, &len);
        if (r < 0)
                return error_set(r, ret_error, "%s: cannot read: %s", h->apps_path, strerror(-r));
        r = config_parse(h->apps_path, text, len, &cfg, ret_error);
        if (r < 0)
                return r;
        return apply_config(h, cfg, text, "file", ret_error);
}

static void do_reload(struct head *h) {
        char *err = NULL;
        int r;

        sd_notify(0, "RELOADING=1");
        log_info("reloading %s", h->apps_path);
        r = load_apps_file(h, &err);
        if (r < 0) {
                log_error("reload failed, the running config stays: %s", err ? err : strerror(-r));
                record_config_error(h, err ? err : strerror(-r));
                free(err);
                sd_notify(0, "READY=1\nSTATUS=reload failed; running the previous config (see serve status)");
                return;
        }
        sd_notifyf(0, "READY=1\nSTATUS=serving %zu application(s)", h->spec->n_apps);
}

/* ---- the control port ---- */

static void node_lost(struct node *n, const char *why) {
        if (!n->alive)
                return;
        log_warning("node %s is dead (%s): placing its replicas elsewhere", n->name, why);
        n->alive = false;
        cJSON_Delete(n->report);
        n->report = NULL;
        n->ready_sig = 0;
        n->h->dirty = true;
        n->h->routing_dirty = true;
}

static void node_on_close(struct netconn *nc, int err) {
        struct node *n = nc->userdata;
        if (!n)
                return;
        n->nc = NULL;
        log_warning("node %s disconnected (%s); it counts as alive until worker_timeout_s passes", n->name,
                    err ? strerror(-err) : "closed");
}

static int parse_hello_node(struct head *h, struct node *n, const cJSON *node, char *err, size_t errlen) {
        const cJSON *res, *labels, *gpus, *custom, *it;
        const char *address;
        long long v;
        double d;
        int r;

        if ((r = ctl_get_string(node, "address", 200, true, &address, err, errlen)) < 0 ||
            (r = ctl_get_object(node, "labels", false, &labels, err, errlen)) < 0 ||
            (r = ctl_get_object(node, "resources", true, &res, err, errlen)) < 0 ||
            (r = ctl_get_array(res, "gpus", 1024, false, &gpus, err, errlen)) < 0 ||
            (r = ctl_get_object(res, "custom", false, &custom, err, errlen)) < 0)
                return r;
        free(n->address);
        n->address = strdup(address);
        if ((r = ctl_get_int(node, "http_port", 0, 65535, true, &v, err, errlen)) < 0)
                return r;
        n->http_port = (int)v;
        if ((r = ctl_get_int(node, "data_port", 1, 65535, true, &v, err, errlen)) < 0)
                return r;
        n->data_port = (int)v;
        v = 0;
        if ((r = ctl_get_int(node, "metrics_port", 0, 65535, false, &v, err, errlen)) < 0)
                return r;
        n->metrics_port = (int)v;
        if ((r = ctl_get_double(res, "num_cpus", 0, 1e6, true, &n->cpus, err, errlen)) < 0)
                return r;
        d = 0;
        if ((r = ctl_get_double(res, "memory", 0, 1e18, false, &d, err, errlen)) < 0)
                return r;
        n->memory = (uint64_t)d;
        n->n_gpus = (unsigned)cJSON_GetArraySize(gpus);
        cJSON_Delete(n->labels);
        n->labels = labels ? cJSON_Duplicate(labels, true) : cJSON_CreateObject();
        cJSON_ArrayForEach(it, labels)
                if (!cJSON_IsString(it)) {
                        snprintf(err, errlen, "field labels: values must be strings");
                        return -EINVAL;
                }
        for (size_t i = 0; i < n->n_custom; i++)
                free((char *)n->custom[i].name);
        free(n->custom);
        n->custom = calloc((size_t)cJSON_GetArraySize(custom) + 1, sizeof *n->custom);
        n->n_custom = 0;
        cJSON_ArrayForEach(it, custom) {
                if (!cJSON_IsNumber(it) || it->valuedouble < 0) {
                        snprintf(err, errlen, "field custom: amounts must be numbers >= 0");
                        return -EINVAL;
                }
                n->custom[n->n_custom].name = strdup(it->string);
                n->custom[n->n_custom++].amount = it->valuedouble;
        }
        return 0;
}

/* A node that comes back (or a head that restarted) adopts what the node runs, so healthy
 * replicas are never restarted: its replicas of current deployments become its assignment
 * unless the assignment already names this node. */
static void adopt_replicas(struct head *h, struct node *n, const cJSON *replicas) {
        const cJSON *it;
        bool changed = false;

        for (size_t i = 0; h->spec && i < h->n_assign; i++) {
                struct assignment *a = &h->assign[i];
                const struct dep_spec *d = &h->spec->deps[i];
                unsigned count = 0;
                if (slot_for(a, n->name))
                        continue;
                cJSON_ArrayForEach(it, replicas) {
                        const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(it, "state"));
                        if (streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "app")), d->app) &&
                            streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment")), d->name) &&
                            streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "version")), d->version) &&
                            st && !streq(st, "STOPPING") && !cJSON_GetObjectItem(it, "gpus"))
                                count++;
                }
                if (count == 0)
                        continue;
                struct slot *ns = realloc(a->slots, (a->n_slots + 1) * sizeof *ns);
                if (!ns)
                        continue;
                a->slots = ns;
                a->slots[a->n_slots++] = (struct slot){ .node = strdup(n->name), .count = count };
                changed = true;
                log_info("node %s runs %u replica(s) of %s: keeping them", n->name, count, a->key);
        }
        if (changed)
                h->dirty = true;
}

static bool token_equal(const char *a, const char *b) {
        size_t la = strlen(a), lb = strlen(b);
        unsigned char diff = la != lb;
        for (size_t i = 0; i < la; i++)
                diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
        return diff == 0;
}

/* Which replicas of which deployments run on a node, independent of their order: the routing
 * table is rebuilt only when this changes, not on every heartbeat. */
static uint64_t ready_signature(const cJSON *report) {
        const cJSON *it;
        uint64_t sum = 0;

        cJSON_ArrayForEach(it, cJSON_GetObjectItem(report, "replicas")) {
                const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(it, "state"));
                const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                uint64_t x = 0xcbf29ce484222325ull;
                if (!st || !streq(st, "RUNNING") || !app || !dep)
                        continue;
                for (const char *p = app; *p; p++)
                        x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
                x = (x ^ '/') * 0x100000001b3ull;
                for (const char *p = dep; *p; p++)
                        x = (x ^ (uint8_t)*p) * 0x100000001b3ull;
                sum += x * 0x9e3779b97f4a7c15ull;
        }
        return sum + 1; /* never 0: a node that reports nothing still differs from "no report yet" */
}

static const struct netconn_ops node_ops;

static void refuse(struct netconn *nc, const char *reason) {
        cJSON *m = ctlmsg_new("refused");
        cJSON_AddStringToObject(m, "reason", reason);
        if (ctlmsg_encode(netconn_outbuf(nc), m) == 0)
                netconn_flush(nc);
        cJSON_Delete(m);
        nc->userdata = NULL;
        netconn_close(nc, true);
}

static void on_hello(struct pending_conn *pc, cJSON *m) {
        struct head *h = pc->h;
        struct netconn *nc = pc->nc;
        const cJSON *node, *replicas;
        const char *token, *name;
        char err[256] = "";
        struct node *n;

        list_del(&pc->link);
        free(pc);
        if (ctl_get_string(m, "token", 4096, true, &token, err, sizeof err) < 0 || !token_equal(token, h->join_token)) {
                log_error("refused a worker from %s: invalid join token (compare its join_token_file with %s)", nc->peer,
                          h->ccfg->head.join_token_file);
                refuse(nc, "invalid join token");
                return;
        }
        if (ctl_get_object(m, "node", true, &node, err, sizeof err) < 0 ||
            ctl_get_string(node, "name", 200, true, &name, err, sizeof err) < 0 ||
            ctl_get_array(m, "replicas", 100000, false, &replicas, err, sizeof err) < 0) {
                log_error("refused a worker from %s: invalid hello (%s)", nc->peer, err);
                refuse(nc, err);
                return;
        }
        if (!name[0] || strpbrk(name, " /\t\r\n")) {
                log_error("refused a worker from %s: invalid node name '%s'", nc->peer, name);
                refuse(nc, "invalid node name");
                return;
        }
        n = node_find(h, name);
        if (!n && h->n_nodes >= MAX_NODES) {
                log_error("refused node %s from %s: the cluster already has %d nodes", name, nc->peer, MAX_NODES);
                refuse(nc, "too many nodes");
                return;
        }
        n = node_get(h, name);
        if (!n) {
                netconn_close(nc, false);
                return;
        }
        if (n->nc) {
                log_warning("node %s registered again from %s: replacing its old connection", name, nc->peer);
                n->nc->userdata = NULL;
                netconn_close(n->nc, false);
                n->nc = NULL;
        }
        if (parse_hello_node(h, n, node, err, sizeof err) < 0) {
                log_error("refused node %s from %s: invalid hello (%s)", name, nc->peer, err);
                refuse(nc, err);
                return;
        }
        /* The node that shares our address is the head node (proxy_location: HeadOnly). */
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char local[64] = "";
        if (getsockname(nc->fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, local, sizeof local);
        n->head_node = streq(local, n->address);
        nc->userdata = n;
        n->nc = nc;
        n->last_seen_ns = now_ns();
        n->sent_config_epoch = -1;
        free(n->sent_assign);
        n->sent_assign = NULL;
        bool was_alive = n->alive;
        n->alive = true;
                cJSON_Delete(n->report);
        n->report = NULL;
        n->ready_sig = 0;
        log_info("node %s registered from %s: %.1f CPUs, %.1f GiB, %u GPU(s)%s%s", name, nc->peer, n->cpus,
                 (double)n->memory / (1 << 30), n->n_gpus, n->head_node ? ", head node" : "",
                 was_alive ? "" : ", now alive");
        cJSON *w = ctlmsg_new("welcome");
        cJSON_AddNumberToObject(w, "heartbeat_interval_s", h->ccfg->worker_heartbeat_interval_s);
        node_send(n, w);
        adopt_replicas(h, n, replicas);
        h->dirty = true;
}

static void node_on_data(struct netconn *nc) {
        struct node *n = nc->userdata;

        while (n && n->nc == nc) {
                cJSON *m = NULL;
                const char *type = NULL, *why = NULL;
                char err[256] = "";
                int r = ctlmsg_decode(&nc->in, &m, &type, &why);

                if (r == 0)
                        return;
                if (r < 0) {
                        log_error("node %s sent an invalid message (%s): disconnecting it", n->name, why);
                        n->nc = NULL;
                        nc->userdata = NULL;
                        netconn_close(nc, false);
                        return;
                }
                n->last_seen_ns = now_ns();
                if (streq(type, "report")) {
                        if (report_validate(m, err, sizeof err) < 0) {
                                log_error("node %s sent an invalid report (%s): disconnecting it", n->name, err);
                                cJSON_Delete(m);
                                n->nc = NULL;
                                nc->userdata = NULL;
                                netconn_close(nc, false);
                                return;
                        }
                        if (!n->alive) {
                                n->alive = true;
                                n->h->dirty = true;
                                log_info("node %s is alive again", n->name);
                        }
                        cJSON_Delete(n->report);
                        n->report = TAKE_PTR(m);
                        n->n_reports++;
                        uint64_t sig = ready_signature(n->report);
                        if (sig != n->ready_sig) {
                                n->ready_sig = sig;
                                n->h->routing_dirty = true;
                        }
                } else if (streq(type, "goodbye")) {
                        log_info("node %s is stopping", n->name);
                        node_lost(n, "it stopped");
                } else
                        log_debug("node %s: ignoring message '%s'", n->name, type);
                cJSON_Delete(m);
        }
}

static const struct netconn_ops node_ops = { .on_data = node_on_data, .on_close = node_on_close };

static void pending_on_data(struct netconn *nc) {
        struct pending_conn *pc = nc->userdata;
        cJSON *m = NULL;
        const char *type = NULL, *why = NULL;
        int r;

        if (!pc)
                return;
        r = ctlmsg_decode(&nc->in, &m, &type, &why);
        if (r == 0)
                return;
        if (r < 0 || !streq(type, "hello")) {
                log_error("refused a connection from %s: %s", nc->peer, r < 0 ? why : "the first message must be hello");
                list_del(&pc->link);
                free(pc);
                cJSON_Delete(m);
                refuse(nc, r < 0 ? why : "the first message must be hello");
                return;
        }
        nc->ops = &node_ops;
        on_hello(pc, m);
        cJSON_Delete(m);
        if (nc->userdata && !nc->closed && nc->in.len)
                node_on_data(nc);
}

static void pending_on_close(struct netconn *nc, int err) {
        struct pending_conn *pc = nc->userdata;
        if (!pc)
                return;
        list_del(&pc->link);
        free(pc);
}

static const struct netconn_ops pending_ops = { .on_data = pending_on_data, .on_close = pending_on_close };

static void on_ctl_accept(struct netlistener *l, int fd) {
        struct head *h = l->userdata;
        struct pending_conn *pc = calloc(1, sizeof *pc);

        if (!pc) {
                close(fd);
                return;
        }
        pc->h = h;
        pc->since_ns = now_ns();
        if (netconn_adopt(&h->loop, fd, &pending_ops, pc, &pc->nc) < 0) {
                free(pc);
                return;
        }
        pc->nc->in_limit = CTLMSG_MAX + 4;
        list_add_tail(&h->pending, &pc->link);
}

/* ---- REST API ---- */

static bool authorized(struct head *h, const struct httpd_request *rq) {
        const struct http_header *a = http_request_header(rq->req, "Authorization");
        char tok[4200];

        if (!a || a->value_len < 7 || a->value_len - 7 >= sizeof tok || strncasecmp(a->value, "Bearer ", 7) != 0)
                return false;
        memcpy(tok, a->value + 7, a->value_len - 7);
        tok[a->value_len - 7] = 0;
        return token_equal(tok, h->api_token);
}

static const char *replica_state_of(const cJSON *r) { return cJSON_GetStringValue(cJSON_GetObjectItem(r, "state")) ?: "?"; }

static cJSON *applications_json(struct head *h) {
        cJSON *j = cJSON_CreateObject(), *apps, *http;
        struct list *pos, *tmp;

        cJSON_AddStringToObject(j, "proxy_location", proxy_location_to_string(h->cfg ? h->cfg->proxy_location : PROXY_EVERY_NODE));
        http = cJSON_AddObjectToObject(j, "http_options");
        if (h->cfg) {
                cJSON_AddStringToObject(http, "host", h->cfg->http.host);
                cJSON_AddNumberToObject(http, "port", h->cfg->http.port);
        }
        if (h->config_error) {
                cJSON *e = cJSON_AddObjectToObject(j, "config_error");
                cJSON_AddStringToObject(e, "message", h->config_error);
                cJSON_AddNumberToObject(e, "time", h->config_error_at);
        } else
                cJSON_AddNullToObject(j, "config_error");
        cJSON_AddStringToObject(j, "config_source", h->cfg_source ?: "file");
        apps = cJSON_AddObjectToObject(j, "applications");
        for (size_t ai = 0; h->spec && ai < h->spec->n_apps; ai++) {
                const struct app_spec *as = &h->spec->apps[ai];
                cJSON *a = cJSON_AddObjectToObject(apps, as->name), *deps;
                bool app_running = true;
                cJSON_AddStringToObject(a, "name", as->name);
                if (as->route_prefix)
                        cJSON_AddStringToObject(a, "route_prefix", as->route_prefix);
                else
                        cJSON_AddNullToObject(a, "route_prefix");
                cJSON_AddNumberToObject(a, "last_deployed_time_s", h->deployed_at);
                deps = cJSON_AddObjectToObject(a, "deployments");
                for (size_t i = 0; i < h->spec->n_deps; i++) {
                        const struct dep_spec *d = &h->spec->deps[i];
                        if (!streq(d->app, as->name))
                                continue;
                        cJSON *dj = cJSON_AddObjectToObject(deps, d->name), *reps, *pend;
                        int running = 0, total = 0;
                        cJSON_AddStringToObject(dj, "name", d->name);
                        cJSON_AddNumberToObject(dj, "target_replicas", d->replicas);
                        cJSON_AddStringToObject(dj, "version", d->version);
                        reps = cJSON_AddArrayToObject(dj, "replicas");
                        list_for_each_safe(pos, tmp, &h->nodes) {
                                struct node *n = list_entry(pos, struct node, link);
                                const cJSON *it;
                                if (!n->alive || !n->report)
                                        continue;
                                cJSON_ArrayForEach(it, cJSON_GetObjectItem(n->report, "replicas")) {
                                        if (!streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "app")), d->app) ||
                                            !streq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment")), d->name))
                                                continue;
                                        cJSON *r = cJSON_CreateObject();
                                        cJSON_AddStringToObject(r, "replica_id", cJSON_GetStringValue(cJSON_GetObjectItem(it, "id")));
                                        cJSON_AddStringToObject(r, "state", replica_state_of(it));
                                        cJSON_AddNumberToObject(r, "pid", cJSON_GetNumberValue(cJSON_GetObjectItem(it, "pid")));
                                        cJSON_AddStringToObject(r, "node_id", n->name);
                                        cJSON_AddStringToObject(r, "node_ip", n->address);
                                        cJSON_AddNumberToObject(r, "start_time_s",
                                                                cJSON_GetNumberValue(cJSON_GetObjectItem(it, "started_at")));
                                        cJSON_AddStringToObject(r, "version",
                                                                cJSON_GetStringValue(cJSON_GetObjectItem(it, "version")) ?: "");
                                        cJSON_AddNumberToObject(r, "ongoing", cJSON_GetNumberValue(cJSON_GetObjectItem(it, "ongoing")));
                                        if (cJSON_GetObjectItem(it, "limits"))
                                                cJSON_AddStringToObject(r, "limits", cJSON_GetStringValue(cJSON_GetObjectItem(it, "limits")));
                                        if (cJSON_GetObjectItem(it, "gpus"))
                                                cJSON_AddStringToObject(r, "gpus", cJSON_GetStringValue(cJSON_GetObjectItem(it, "gpus")));
                                        cJSON_AddItemToArray(reps, r);
                                        total++;
                                        running += streq(replica_state_of(it), "RUNNING") &&
                                                   streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "version")), d->version);
                                }
                        }
                        pend = cJSON_AddArrayToObject(dj, "pending");
                        const struct assignment *as2 = i < h->n_assign ? &h->assign[i] : NULL;
                        if (as2 && as2->pending) {
                                cJSON *p = cJSON_CreateObject();
                                cJSON_AddNumberToObject(p, "count", as2->pending);
                                cJSON_AddStringToObject(p, "reason", as2->pending_reason ?: "");
                                cJSON_AddItemToArray(pend, p);
                        }
                        const char *status = running >= d->replicas && total == running ? "HEALTHY"
                                             : as2 && as2->pending                      ? "UNHEALTHY"
                                                                                        : "UPDATING";
                        if (running >= d->replicas && total != running)
                                status = "UPDATING";
                        app_running &= streq(status, "HEALTHY");
                        cJSON_AddStringToObject(dj, "status", status);
                        cJSON_AddStringToObject(dj, "message",
                                                as2 && as2->pending ? as2->pending_reason ?: "" : "");
                        cJSON_AddNumberToObject(dj, "running_replicas", running);
                }
                cJSON_AddStringToObject(a, "status", app_running ? "RUNNING" : "DEPLOYING");
                cJSON_AddStringToObject(a, "message", "");
        }
        return j;
}

static cJSON *nodes_json(struct head *h) {
        cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "nodes");
        struct list *pos, *tmp;
        uint64_t now = now_ns();

        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                cJSON *o = cJSON_CreateObject(), *tot, *avail;
                double used_cpu = 0, used_gpu = 0;
                double used_mem = 0;
                unsigned replicas = 0;
                for (size_t k = 0; k < n->n_shares && h->spec; k++) {
                        size_t i = n->shares[k].dep;
                        if (i >= h->n_assign || n->shares[k].slot >= h->assign[i].n_slots)
                                continue;
                        const struct slot *s = &h->assign[i].slots[n->shares[k].slot];
                        used_cpu += s->count * h->spec->deps[i].num_cpus;
                        used_gpu += s->count * h->spec->deps[i].num_gpus;
                        used_mem += (double)s->count * (double)h->spec->deps[i].memory;
                        replicas += s->count;
                }
                cJSON_AddStringToObject(o, "node_id", n->name);
                cJSON_AddStringToObject(o, "node_ip", n->address);
                cJSON_AddStringToObject(o, "state", n->alive ? "ALIVE" : "DEAD");
                cJSON_AddBoolToObject(o, "connected", n->nc != NULL);
                cJSON_AddBoolToObject(o, "is_head_node", n->head_node);
                cJSON_AddItemToObject(o, "labels", cJSON_Duplicate(n->labels, true));
                tot = cJSON_AddObjectToObject(o, "resources_total");
                cJSON_AddNumberToObject(tot, "CPU", n->cpus);
                cJSON_AddNumberToObject(tot, "memory", (double)n->memory);
                cJSON_AddNumberToObject(tot, "GPU", n->n_gpus);
                for (size_t i = 0; i < n->n_custom; i++)
                        cJSON_AddNumberToObject(tot, n->custom[i].name, n->custom[i].amount);
                avail = cJSON_AddObjectToObject(o, "resources_available");
                cJSON_AddNumberToObject(avail, "CPU", n->cpus - used_cpu);
                cJSON_AddNumberToObject(avail, "memory", (double)n->memory - used_mem);
                cJSON_AddNumberToObject(avail, "GPU", n->n_gpus - used_gpu);
                cJSON_AddNumberToObject(o, "replicas", replicas);
                cJSON_AddNumberToObject(o, "http_port", n->http_port);
                cJSON_AddNumberToObject(o, "reports", (double)n->n_reports);
                cJSON_AddNumberToObject(o, "metrics_port", n->metrics_port);
                cJSON_AddNumberToObject(o, "last_heartbeat_s_ago", n->last_seen_ns ? (double)(now - n->last_seen_ns) / 1e9 : -1);
                cJSON_AddItemToArray(arr, o);
        }
        return j;
}

static void render_metrics(struct head *h, struct httpd_response *resp) {
        const char **names = calloc(h->n_nodes + 1, sizeof *names);
        const cJSON **reports = calloc(h->n_nodes + 1, sizeof *reports);
        struct list *pos, *tmp;
        size_t n = 0;
        unsigned alive = 0, dead = 0, pending = 0;

        resp->content_type = "text/plain; version=0.0.4";
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *nd = list_entry(pos, struct node, link);
                names[n] = nd->name;
                reports[n++] = nd->alive ? nd->report : NULL;
                nd->alive ? alive++ : dead++;
        }
        (void)report_render_metrics(&resp->body, names, reports, n);
        for (size_t i = 0; i < h->n_assign; i++)
                pending += h->assign[i].pending;
        metrics_family(&resp->body, "serve_nodes", METRICS_GAUGE, "Worker nodes by state");
        const char *la[] = { "state", "ALIVE", NULL }, *ld[] = { "state", "DEAD", NULL };
        metrics_sample(&resp->body, "serve_nodes", la, alive);
        metrics_sample(&resp->body, "serve_nodes", ld, dead);
        metrics_family(&resp->body, "serve_pending_replicas", METRICS_GAUGE, "Replicas that fit on no node");
        metrics_sample(&resp->body, "serve_pending_replicas", NULL, pending);
        free(names);
        free(reports);
}

static void on_api(void *userdata, const struct httpd_request *rq, struct httpd_response *resp) {
        struct head *h = userdata;
        bool put = httpd_is(rq, "PUT", "/api/serve/applications/") || httpd_is(rq, "PUT", "/api/serve/applications");
        bool del = httpd_is(rq, "DELETE", "/api/serve/applications/") || httpd_is(rq, "DELETE", "/api/serve/applications");

        if (httpd_is(rq, "GET", "/api/serve/applications/") || httpd_is(rq, "GET", "/api/serve/applications")) {
                cJSON *j = applications_json(h);
                httpd_respond_json(resp, 200, j);
                cJSON_Delete(j);
        } else if (httpd_is(rq, "GET", "/api/cluster/nodes")) {
                cJSON *j = nodes_json(h);
                httpd_respond_json(resp, 200, j);
                cJSON_Delete(j);
        } else if (httpd_is(rq, "GET", "/api/serve/config")) {
                resp->content_type = "application/yaml";
                (void)buf_append(&resp->body, h->cfg_text ?: "", strlen(h->cfg_text ?: ""), SIZE_MAX);
        } else if (httpd_is(rq, "GET", "/metrics")) {
                render_metrics(h, resp);
        } else if (httpd_is(rq, "GET", "/-/healthz")) {
                resp->content_type = "text/plain";
                (void)buf_append(&resp->body, "success", 7, SIZE_MAX);
        } else if (put || del) {
                const char *name = put ? "PUT /api/serve/applications/" : "DELETE /api/serve/applications/";
                struct serve_config *cfg = NULL;
                char *err = NULL;
                const char *text = put ? rq->body : "applications: []\n";
                size_t len = put ? rq->body_len : strlen(text);
                int r;

                if (!authorized(h, rq)) {
                        log_warning("%s from %s refused: missing or invalid bearer token", name, rq->peer);
                        httpd_respond_error(resp, 401, "missing or invalid bearer token");
                        return;
                }
                _cleanup_free_ char *copy = strndup(text, len);
                r = copy ? config_parse(name, copy, len, &cfg, &err) : -ENOMEM;
                if (r >= 0)
                        r = apply_config(h, cfg, copy, "api", &err);
                if (r < 0) {
                        log_error("%s rejected, the running config stays: %s", name, err ? err : strerror(-r));
                        record_config_error(h, err ? err : strerror(-r));
                        httpd_respond_error(resp, r == -EINVAL ? 400 : 500, err ? err : strerror(-r));
                        free(err);
                        return;
                }
                log_info("%s from %s applied", name, rq->peer);
                cJSON *j = cJSON_CreateObject();
                cJSON_AddBoolToObject(j, "ok", true);
                httpd_respond_json(resp, 200, j);
                cJSON_Delete(j);
        } else
                httpd_respond_error(resp, 404, "no such endpoint");
}

/* ---- startup, recovery, main loop ---- */

static void recover(struct head *h) {
        cJSON *s = NULL;
        char *err = NULL;
        const cJSON *it;
        int r;

        r = state_load(h->state_dir, &s, &err);
        if (r == -ENOENT)
                return;
        if (r < 0) {
                log_error("%s; starting from the config files", err ? err : strerror(-r));
                free(err);
                return;
        }
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(s, "config"));
        const char *source = cJSON_GetStringValue(cJSON_GetObjectItem(s, "config_source"));
        h->config_epoch = (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(s, "config_epoch"));
        if (h->config_epoch < 0 || h->config_epoch > 1ll << 50)
                h->config_epoch = 0;
        /* Nodes of the last run count as alive until worker_timeout_s passes without them:
         * a head restart must not move replicas that run fine. */
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(s, "nodes")) {
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(it, "name"));
                const char *addr = cJSON_GetStringValue(cJSON_GetObjectItem(it, "address"));
                double cpus = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "cpus"));
                double mem = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "memory"));
                double gpus = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "gpus"));
                double dp = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "data_port"));
                double hp = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "http_port"));
                const cJSON *c;
                if (!name || !addr || !(cpus >= 0 && cpus < 1e6) || !(mem >= 0 && mem < 1e18) || !(gpus >= 0 && gpus <= 1024) ||
                    !(dp >= 0 && dp <= 65535) || !(hp >= 0 && hp <= 65535))
                        continue;
                struct node *n = node_get(h, name);
                if (!n)
                        continue;
                free(n->address);
                n->address = strdup(addr);
                n->cpus = cpus;
                n->memory = (uint64_t)mem;
                n->n_gpus = (unsigned)gpus;
                n->data_port = (int)dp;
                n->http_port = (int)hp;
                n->custom = calloc((size_t)cJSON_GetArraySize(cJSON_GetObjectItem(it, "custom")) + 1, sizeof *n->custom);
                cJSON_ArrayForEach(c, cJSON_GetObjectItem(it, "custom"))
                        if (n->custom && cJSON_IsNumber(c) && c->valuedouble >= 0) {
                                n->custom[n->n_custom].name = strdup(c->string);
                                n->custom[n->n_custom++].amount = c->valuedouble;
                        }
                n->alive = true;
                                n->last_seen_ns = now_ns();
        }
        if (text && source && streq(source, "api")) {
                struct serve_config *cfg = NULL;
                if (config_parse("state.json (last API deploy)", text, strlen(text), &cfg, &err) == 0 &&
                    apply_config(h, cfg, text, "api", &err) == 0)
                        log_info("recovered the config deployed through the API");
                else {
                        log_error("cannot use the config in the state file: %s", err ?: "invalid");
                        free(err);
                }
        }
        /* The assignment: replica counts per node, matched to the current deployments. */
        struct assignment *na = NULL;
        size_t nn = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(s, "assignment")) {
                const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                const char *node = cJSON_GetStringValue(cJSON_GetObjectItem(it, "node"));
                double count = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "count"));
                const cJSON *g = cJSON_GetObjectItem(it, "gpus");
                if (!dep || !node || !(count >= 1 && count <= 1e6))
                        continue;
                struct assignment *a = NULL;
                for (size_t i = 0; i < nn; i++)
                        if (streq(na[i].key, dep))
                                a = &na[i];
                if (!a) {
                        struct assignment *x = realloc(na, (nn + 1) * sizeof *x);
                        if (!x)
                                break;
                        na = x;
                        a = &na[nn++];
                        *a = (struct assignment){ .key = strdup(dep) };
                }
                struct slot *ns = realloc(a->slots, (a->n_slots + 1) * sizeof *ns);
                if (!ns)
                        break;
                a->slots = ns;
                struct slot *sl = &a->slots[a->n_slots++];
                *sl = (struct slot){ .node = strdup(node), .count = (unsigned)count };
                if (cJSON_IsArray(g) && cJSON_GetArraySize(g) == (int)count) {
                        sl->gpus = calloc((size_t)count + 1, sizeof(char *));
                        unsigned k = 0;
                        const cJSON *gi;
                        cJSON_ArrayForEach(gi, g) sl->gpus[k++] = strdup(cJSON_GetStringValue(gi) ?: "");
                }
        }
        assignments_free(h->assign, h->n_assign);
        h->assign = na;
        h->n_assign = nn;
        log_info("recovered the state from %s/%s: %zu placed deployment(s)", h->state_dir, STATE_FILE_NAME, nn);
        cJSON_Delete(s);
}

/* The assignment from the state file is keyed by name; reconcile() wants it parallel to the
 * spec's deployments. */
static void align_assignment(struct head *h) {
        size_t n = h->spec ? h->spec->n_deps : 0;
        struct assignment *na = calloc(n + 1, sizeof *na);

        if (!na)
                return;
        for (size_t i = 0; i < n; i++) {
                char *key = dep_key(h->spec->deps[i].app, h->spec->deps[i].name);
                na[i].key = key;
                for (size_t k = 0; k < h->n_assign; k++)
                        if (h->assign[k].key && streq(h->assign[k].key, key)) {
                                na[i].slots = TAKE_PTR(h->assign[k].slots);
                                na[i].n_slots = h->assign[k].n_slots;
                                h->assign[k].n_slots = 0;
                        }
        }
        assignments_free(h->assign, h->n_assign);
        h->assign = na;
        h->n_assign = n;
}

static void check_nodes(struct head *h, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t limit = sec_to_ns(h->ccfg->worker_timeout_s);

        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                if (n->alive && n->last_seen_ns + limit < now)
                        node_lost(n, n->nc ? "no heartbeat within worker_timeout_s" : "not reconnected within worker_timeout_s");
        }
        list_for_each_safe(pos, tmp, &h->pending) {
                struct pending_conn *pc = list_entry(pos, struct pending_conn, link);
                if (pc->since_ns + HELLO_TIMEOUT_NS < now) {
                        log_warning("closing a connection from %s that never said hello", pc->nc->peer);
                        pc->nc->userdata = NULL;
                        netconn_close(pc->nc, false);
                        list_del(&pc->link);
                        free(pc);
                }
        }
}

static void on_signal(struct loop_op *op, int res, unsigned flags) {
        struct head *h = container_of(op, struct head, op_signal);

        if (res == (int)sizeof h->si) {
                if (h->si.ssi_signo == SIGHUP)
                        h->reload = true;
                else
                        h->stop = true;
        }
        struct io_uring_sqe *sqe = loop_sqe(&h->loop, &h->op_signal);
        io_uring_prep_read(sqe, h->sfd, &h->si, sizeof h->si, 0);
}

static void usage(FILE *f) {
        fprintf(f,
                "Usage: serve-head [OPTIONS]\n"
                "\n"
                "The controller of a serve cluster: reads apps.yaml and cluster.yaml, accepts worker\n"
                "nodes, places replicas on them and serves the REST API (serve status, serve deploy).\n"
                "It is never in the request path: workers keep serving while it is down.\n"
                "\n"
                "Options:\n"
                "  -c, --config-dir DIR   Directory with apps.yaml and cluster.yaml (default /etc/serve)\n"
                "      --state-dir DIR    Where the state file lives (default /var/lib/serve)\n"
                "      --check            Validate apps.yaml and cluster.yaml, print the result, exit\n"
                "  -h, --help             Show this help\n"
                "      --version          Show the version\n"
                "\n"
                "Signals: SIGHUP re-reads apps.yaml (invalid: logged with file:line:column, shown by\n"
                "`serve status`, the running config stays); SIGTERM/SIGINT stop the head (workers keep\n"
                "serving).\n");
}

static int load_files(struct head *h, bool check_only) {
        char *err = NULL;
        int r;

        r = cluster_config_load_file(h->cluster_path, &h->ccfg, &err);
        if (r == -ENOENT) {
                free(err);
                err = NULL;
                r = cluster_config_parse(h->cluster_path, "", 0, &h->ccfg, &err);
        }
        if (r < 0) {
                log_error("%s", err ?: strerror(-r));
                free(err);
                return r;
        }
        if (check_only) {
                struct serve_config *cfg = NULL;
                r = config_load_file(h->apps_path, &cfg, &err);
                if (r >= 0) {
                        struct serve_spec *spec = NULL;
                        r = spec_resolve(h->replica_bin, cfg, &spec, &err);
                        serve_spec_free(spec);
                }
                config_free(cfg);
                if (r < 0) {
                        fprintf(stderr, "%s\n", err ?: strerror(-r));
                        free(err);
                        return r;
                }
                printf("%s and %s are valid\n", h->apps_path, h->cluster_path);
                return 0;
        }
        char *jt = path_relative_to_file(h->cluster_path, h->ccfg->head.join_token_file);
        char *at = path_relative_to_file(h->cluster_path, h->ccfg->head.api_token_file);
        if (!jt || !at) {
                free(jt);
                free(at);
                return -ENOMEM;
        }
        free(h->ccfg->head.join_token_file);
        h->ccfg->head.join_token_file = jt;
        free(h->ccfg->head.api_token_file);
        h->ccfg->head.api_token_file = at;
        r = read_token_file(h->ccfg->head.join_token_file, &h->join_token, &err);
        if (r >= 0)
                r = read_token_file(h->ccfg->head.api_token_file, &h->api_token, &err);
        if (r < 0) {
                log_error("%s", err ?: strerror(-r));
                free(err);
                return r;
        }
        return 0;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "config-dir", required_argument, NULL, 'c' },
                { "state-dir", required_argument, NULL, 'S' },
                { "check", no_argument, NULL, 'k' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct head h = { .conf_dir = "/etc/serve", .state_dir = "/var/lib/serve", .sfd = -1 };
        bool check_only = false;
        char *err = NULL;
        int c, r;

        log_init("serve-head");
        /* Broadcast buffers are large and short-lived: give them back to the system when sent
         * (a fixed threshold; glibc's adaptive one would keep them in the heap). */
        mallopt(M_MMAP_THRESHOLD, 64 * 1024);
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        h.conf_dir = optarg;
                        break;
                case 'S':
                        h.state_dir = optarg;
                        break;
                case 'k':
                        check_only = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("serve-head %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "serve-head: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }
        list_init(&h.nodes);
        list_init(&h.pending);
        if (asprintf(&h.apps_path, "%s/apps.yaml", h.conf_dir) < 0 || asprintf(&h.cluster_path, "%s/cluster.yaml", h.conf_dir) < 0)
                return 1;
        h.replica_bin = spec_find_replica_bin();
        r = load_files(&h, check_only);
        if (check_only || r < 0)
                return r < 0 ? 1 : 0;
        if (mkdir(h.state_dir, 0700) < 0 && errno != EEXIST) {
                log_error_errno(errno, "Cannot create the state directory %s: %m", h.state_dir);
                return 1;
        }

        h.sfd = signalfd_daemon();
        r = loop_init(&h.loop, 4096);
        if (r < 0) {
                log_error_errno(r, "Cannot set up io_uring: %m");
                return 1;
        }

        recover(&h);
        if (!h.spec || !streq_ptr(h.cfg_source, "api")) {
                r = load_apps_file(&h, &err);
                if (r < 0) {
                        log_error("%s", err ?: strerror(-r));
                        record_config_error(&h, err ?: strerror(-r));
                        free(err);
                        err = NULL;
                        if (r != -ENOENT && !h.spec) {
                                /* Start without applications: `serve deploy` or a fixed file and
                                 * SIGHUP can still bring them. */
                                log_warning("starting without applications");
                        }
                }
        }
        if (!h.spec) {
                struct serve_config *cfg = NULL;
                if (config_parse("(empty)", "applications: []\n", 17, &cfg, &err) == 0)
                        (void)apply_config(&h, cfg, "", "file", &err);
                free(err);
                err = NULL;
        }
        align_assignment(&h);

        r = netlistener_open(&h.ctl, &h.loop, h.ccfg->head.control_host, h.ccfg->head.control_port, on_ctl_accept, &h);
        if (r < 0) {
                log_error_errno(r, "Cannot listen on %s:%d (head.control_port): %m", h.ccfg->head.control_host,
                                h.ccfg->head.control_port);
                return 1;
        }
        r = httpd_open(&h.api, &h.loop, h.ccfg->head.api_host, h.ccfg->head.api_port, MAX_API_BODY, on_api, &h);
        if (r < 0) {
                log_error_errno(r, "Cannot listen on %s:%d (head.api_port): %m", h.ccfg->head.api_host, h.ccfg->head.api_port);
                return 1;
        }
        h.op_signal.cb = on_signal;
        on_signal(&h.op_signal, 0, 0);
        log_info("serving the API on http://%s:%d, workers connect to %s:%d", h.ccfg->head.api_host, h.ccfg->head.api_port,
                 h.ccfg->head.control_host, h.ccfg->head.control_port);
        sd_notifyf(0, "READY=1\nSTATUS=serving %zu application(s)", h.spec ? h.spec->n_apps : 0);
        h.dirty = true;
        struct watchdog wd;
        watchdog_init(&wd);

        while (!h.stop) {
                uint64_t now = now_ns();

                uint64_t wd_next = watchdog_tick(&wd, now);
                check_nodes(&h, now);
                if (h.reload) {
                        h.reload = false;
                        do_reload(&h);
                }
                if (h.dirty && now >= h.reconcile_next_ns) {
                        reconcile(&h);
                        h.reconcile_next_ns = now + RECONCILE_MIN_INTERVAL_NS;
                }
                if (h.routing_dirty && now >= h.routing_next_ns) {
                        h.routing_dirty = false;
                        h.routing_next_ns = now + ROUTING_MIN_INTERVAL_NS;
                        build_routing(&h);
                }
                r = loop_run_once(&h.loop, MIN(wd_next, h.routing_dirty || h.dirty ? 10 * NSEC_PER_MSEC : 100 * NSEC_PER_MSEC));
                if (r < 0) {
                        log_error_errno(r, "event loop failed: %m");
                        break;
                }
        }
        log_info("stopping; workers keep serving");
        sd_notify(0, "STOPPING=1");
        httpd_close(&h.api);
        netlistener_close(&h.ctl);
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &h.nodes)
                node_free(list_entry(pos, struct node, link));
        list_for_each_safe(pos, tmp, &h.pending) {
                struct pending_conn *pc = list_entry(pos, struct pending_conn, link);
                pc->nc->userdata = NULL;
                netconn_close(pc->nc, false);
                list_del(&pc->link);
                free(pc);
        }
        loop_drain(&h.loop, 500 * NSEC_PER_MSEC);
        loop_free(&h.loop);
        assignments_free(h.assign, h.n_assign);
        serve_spec_free(h.spec);
        config_free(h.cfg);
        cluster_config_free(h.ccfg);
        free(h.cfg_text);
        free(h.cfg_source);
        free(h.config_error);
        netblob_unref(h.config_msg);
        free(h.routing_text);
        free(h.saved_state);
        free(h.join_token);
        free(h.api_token);
        free(h.replica_bin);
        free(h.apps_path);
        free(h.cluster_path);
        if (h.sfd >= 0)
                close(h.sfd);
        return 0;
}
