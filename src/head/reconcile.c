/* Placement passes and what the workers hear of them. A pass (coalesced: at most one per
 * RECONCILE_MIN_INTERVAL_NS) places every deployment's replicas, keeping what runs where it runs,
 * and tells each node its share:
 *
 *   config   the resolved deployments, routes and HTTP options; the same bytes for every node
 *   assign   this node's replica counts (and GPUs) per deployment, for a config epoch
 *   routing  every node's ready replicas per deployment: a versioned delta of what changed since
 *            the last pass, the same bytes for every node; the whole table to a node behind */
#include <stdio.h>
#include <string.h>

#include "config_msg.h"
#include "ctlmsg.h"
#include "head.h"
#include "log.h"
#include "macros.h"

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

void assignments_free(struct assignment *a, size_t n) {
        for (size_t i = 0; i < n; i++)
                assignment_done(&a[i]);
        free(a);
}

const struct slot *slot_for(const struct assignment *a, const char *node) {
        for (size_t i = 0; a && i < a->n_slots; i++)
                if (streq(a->slots[i].node, node))
                        return &a->slots[i];
        return NULL;
}

char *dep_key(const char *app, const char *name) {
        char *k;
        return asprintf(&k, "%s/%s", app, name) < 0 ? NULL : k;
}

/* ---- messages to workers ---- */

static void node_send_blob(struct node *n, struct netblob *b) {
        if (n->nc && !n->nc->closed && b)
                (void)netconn_write_blob(n->nc, b);
}

void node_send(struct node *n, cJSON *m) {
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

void build_config_message(struct head *h) {
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
                cJSON_AddNumberToObject(http, "max_buffered_request_bytes", (double)ho->max_buffered_request_bytes);
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
        /* A node holding the previous epoch gets only what changed (a reload that touches one
         * deployment of a hundred costs each node that one). The same epoch again (an
         * unchanged config) keeps the delta it had. */
        if (h->config_full_epoch != h->config_epoch) {
                cJSON *dm = NULL;
                netblob_unref(h->config_delta);
                h->config_delta = NULL;
                if (h->config_full && h->config_full_epoch + 1 == h->config_epoch && config_msg_delta(h->config_full, m, &dm) == 0) {
                        if (frame_json(dm, &framed, &len) == 0)
                                h->config_delta = netblob_new(framed, len);
                        free(framed);
                        h->config_delta_base = h->config_full_epoch;
                        cJSON_Delete(dm);
                }
        }
        cJSON_Delete(h->config_full);
        h->config_full = m;
        h->config_full_epoch = h->config_epoch;
}

static bool node_gets_proxy(const struct head *h, const struct node *n) {
        enum proxy_location l = h->cfg ? h->cfg->proxy_location : PROXY_EVERY_NODE;
        return l == PROXY_EVERY_NODE || (l == PROXY_HEAD_ONLY && n->head_node);
}

static uint64_t mix(uint64_t x, const void *p, size_t len) {
        for (size_t i = 0; i < len; i++)
                x = (x ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
        return x;
}

/* Everything node n's assign says, as a hash: a pass over 10,000 nodes builds the message only
 * for those whose share changed (new nodes, moved replicas, a count the autoscaler changed). */
static uint64_t share_signature(const struct head *h, const struct node *n) {
        uint64_t x = 0xcbf29ce484222325ull;
        bool proxy = node_gets_proxy(h, n);

        x = mix(x, &h->config_epoch, sizeof h->config_epoch);
        x = mix(x, &proxy, sizeof proxy);
        for (size_t k = 0; k < n->n_shares; k++) {
                const struct share *sh = &n->shares[k];
                if (sh->dep >= h->n_assign || sh->slot >= h->assign[sh->dep].n_slots)
                        continue;
                const struct slot *s = &h->assign[sh->dep].slots[sh->slot];
                const struct dep_spec *d = &h->spec->deps[sh->dep];
                x = mix(x, d->app, strlen(d->app) + 1);
                x = mix(x, d->name, strlen(d->name) + 1);
                x = mix(x, &s->count, sizeof s->count);
                for (unsigned j = 0; s->gpus && j < s->count; j++)
                        x = mix(x, s->gpus[j], strlen(s->gpus[j]) + 1);
        }
        return x;
}

static void send_assign(struct head *h, struct node *n) {
        cJSON *m, *reps;
        char *text;
        uint64_t sig;

        if (!n->nc || !h->spec)
                return;
        if (n->sent_config_epoch != h->config_epoch && h->config_msg) {
                bool delta = h->config_delta && n->sent_config_epoch == h->config_delta_base;
                node_send_blob(n, delta ? h->config_delta : h->config_msg);
                n->sent_config_epoch = h->config_epoch;
                free(n->sent_assign);
                n->sent_assign = NULL;
        }
        sig = share_signature(h, n);
        if (n->sent_assign && sig == n->sent_share_sig)
                return; /* nothing new for this node */
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
        n->sent_share_sig = sig;
        if (text && n->sent_assign && streq(text, n->sent_assign)) {
                free(text);
                cJSON_Delete(m);
                return; /* nothing new for this node */
        }
        free(n->sent_assign);
        n->sent_assign = text;
        node_send(n, m);
}

/* Counts node n's RUNNING replicas per deployment from its report into n->ready_cache (ready:
 * scratch, one zero per deployment). Returns 0 or -ENOMEM. */
static int node_count_ready(struct head *h, struct node *n, unsigned *ready) {
        size_t n_deps = h->spec ? h->spec->n_deps : 0, hint = 0, used = 0;
        const cJSON *it;

        /* One pass over the report (not one per deployment: with 1000 nodes and 100
         * deployments that was most of the head's CPU). A node lists its replicas grouped by
         * deployment, so the last match is tried first. */
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(n->report, "replicas")) {
                const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                size_t i = hint;
                if (!streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "state")), "RUNNING") || !app || !dep)
                        continue;
                if (i >= n_deps || !streq(app, h->spec->deps[i].app) || !streq(dep, h->spec->deps[i].name))
                        for (i = 0; i < n_deps; i++)
                                if (streq(app, h->spec->deps[i].app) && streq(dep, h->spec->deps[i].name))
                                        break;
                if (i < n_deps) {
                        used += ready[i]++ == 0;
                        hint = i;
                }
        }
        struct ready_count *c = calloc(used + 1, sizeof *c);
        if (!c)
                return -ENOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n_deps; i++) {
                if (ready[i] > 0)
                        c[k++] = (struct ready_count){ (uint32_t)i, MIN(ready[i], (unsigned)ROUTING_MAX_COUNT) };
                ready[i] = 0;
        }
        free(n->ready_cache);
        n->ready_cache = c;
        n->n_ready_cache = k;
        n->ready_cache_sig = n->ready_sig;
        n->ready_cache_epoch = h->config_epoch;
        return 0;
}

/* The routing table now: ready replicas per deployment per node, from the workers' reports. */
static int routing_build_table(struct head *h, struct routing_table *t) {
        size_t n_deps = h->spec ? h->spec->n_deps : 0;
        _cleanup_free_ uint32_t *ids = calloc(n_deps + 1, sizeof *ids);
        _cleanup_free_ unsigned *ready = calloc(n_deps + 1, sizeof *ready); /* node_count_ready()'s scratch */
        struct list *pos;
        int r;

        if (!ids || !ready)
                return -ENOMEM;
        for (size_t i = 0; i < n_deps; i++) {
                const struct dep_spec *d = &h->spec->deps[i];
                /* The same deployment keeps its id: a change names it, not its whole entry. */
                const struct routing_dep *old = routing_table_find_dep(&h->routing, i, d->app, d->name);
                ids[i] = old ? old->id : ++h->next_routing_id;
                /* Placed (maybe still starting): a proxy may hold requests for them. */
                r = routing_table_add_dep(t, ids[i], d->app, d->name, d->max_ongoing, i < h->n_assign ? (int)h->assign[i].placed : 0);
                if (r < 0)
                        return r;
        }
        for (pos = h->nodes.next; pos != &h->nodes; pos = pos->next) {
                struct node *n = list_entry(pos, struct node, link);
                /* A node without a report yet is listed too (with no ready replicas until it
                 * reports): after a head restart, one recovered from the state file and not yet
                 * re-registered must not look gone to its peers, who would drop its data links
                 * and the requests on them. */
                if (!n->alive || !n->data_port)
                        continue;
                /* Its certificates below min_serial are revoked: peers refuse them too. */
                r = routing_table_add_node(t, n->routing_id, n->name, n->address, n->data_port, trust_min_serial(h, n->name));
                if (r < 0)
                        return r;
                if (!n->ready_cache || n->ready_cache_sig != n->ready_sig || n->ready_cache_epoch != h->config_epoch) {
                        r = node_count_ready(h, n, ready);
                        if (r < 0)
                                return r;
                }
                for (size_t k = 0; k < n->n_ready_cache; k++)
                        if ((r = routing_table_add_ready(t, ids[n->ready_cache[k].dep], n->routing_id, n->ready_cache[k].count)) < 0)
                                return r;
        }
        return routing_table_seal(t);
}

static struct netblob *blob_of(cJSON *m) {
        char *framed = NULL;
        size_t len = 0;
        struct netblob *b = m && frame_json(m, &framed, &len) == 0 ? netblob_new(framed, len) : NULL;
        free(framed);
        cJSON_Delete(m);
        return b;
}

void build_routing(struct head *h) {
        struct routing_table t;
        struct netblob *delta = NULL, *full = NULL;
        cJSON *dm = NULL;
        uint64_t base = h->routing.version;
        struct list *pos;
        int r;

        routing_table_init(&t);
        r = routing_build_table(h, &t);
        if (r >= 0)
                r = routing_table_delta_message(&h->routing, &t, &dm);
        if (r < 0) {
                log_error_errno(r, "cannot build the routing table: %m");
                routing_table_done(&t);
                return;
        }
        if (r > 0) {
                /* Every change of this pass in one message, the same bytes for every node. */
                t.version = base + 1;
                delta = blob_of(dm);
                routing_table_done(&h->routing);
                h->routing = t;
        } else
                routing_table_done(&t);
        for (pos = h->nodes.next; pos != &h->nodes; pos = pos->next) {
                struct node *n = list_entry(pos, struct node, link);
                if (!n->nc || n->nc->closed || n->sent_config_epoch != h->config_epoch || n->routing_version == h->routing.version)
                        continue;
                if (delta && n->routing_version == base)
                        node_send_blob(n, delta);
                else {
                        /* Behind (new, reconnected, or it asked): the whole table, built once a pass. */
                        if (!full)
                                full = blob_of(routing_table_full_message(&h->routing));
                        if (!full)
                                continue;
                        node_send_blob(n, full);
                }
                n->routing_version = h->routing.version;
        }
        netblob_unref(delta);
        netblob_unref(full);
}

struct node_usage node_usage_of(const struct head *h, const struct node *n) {
        struct node_usage u = {};
        for (size_t k = 0; k < n->n_shares && h->spec; k++) {
                size_t i = n->shares[k].dep;
                if (i >= h->n_assign || n->shares[k].slot >= h->assign[i].n_slots)
                        continue;
                const struct slot *s = &h->assign[i].slots[n->shares[k].slot];
                u.cpus += s->count * h->spec->deps[i].num_cpus;
                u.gpus += s->count * h->spec->deps[i].num_gpus;
                u.memory += (double)s->count * (double)h->spec->deps[i].memory;
                u.replicas += s->count;
        }
        return u;
}

void node_resync_assign(struct node *n) {
        if (n->alive && !n->hold_assign)
                send_assign(n->h, n);
        n->h->routing_dirty = true;
}

void node_resync(struct node *n) {
        n->sent_config_epoch = -1;
        free(n->sent_assign);
        n->sent_assign = NULL;
        n->routing_version = ROUTING_NONE;
        n->h->routing_dirty = true;
        if (n->alive && !n->hold_assign)
                send_assign(n->h, n);
}

/* ---- reconciliation ---- */

/* Places every deployment's replicas (keeping what runs where it runs) and tells the nodes. */
void reconcile(struct head *h) {
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
                /* A cordoned node takes nothing: its replicas are placed again elsewhere. */
                pn[nn++] = (struct placement_node){ .name = n->name, .alive = n->alive && n->cpus > 0 && !n->cordoned, .cpus = n->cpus,
                                                    .memory = n->memory, .n_gpus = n->n_gpus, .custom = n->custom,
                                                    .n_custom = n->n_custom, .elastic = n->elastic };
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
         * is left exactly as it is. Elastic nodes do not attract replicas this way (they would
         * never empty): they count only in a cluster made of them. */
        unsigned n_alive = 0, n_alive_elastic = 0;
        list_for_each_safe(pos, tmp, &h->nodes) {
                const struct node *n = list_entry(pos, struct node, link);
                if (n->alive && !n->cordoned)
                        n->elastic ? n_alive_elastic++ : n_alive++;
        }
        if (n_alive == 0)
                n_alive = n_alive_elastic;
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
                        event_log_add(&h->events, LOG_WARNING, "replicas_pending", na[i].key, "",
                                      "deployment %s: %u replica(s) PENDING: %s", na[i].key, dr->pending, dr->pending_reason);
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
        save_state_soon(h);
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                /* A draining node holding its replicas keeps its last assign: they serve until
                 * their replacements are ready (groups.c ends the hold). */
                if (n->nc && n->alive && !n->hold_assign)
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

/* The assignment from the state file is keyed by name; reconcile() wants it parallel to the
 * spec's deployments. */
void align_assignment(struct head *h) {
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
