/* The cluster autoscaler's moving parts: the nodes of worker groups launched through provider
 * hooks, waited for until they join, drained when idle or outdated, deleted, and reconciled
 * with what the providers list. nodescale.c decides (a pure function of what this file
 * gathers); this file carries the decisions out, one provider call per node at a time, and
 * logs each once with its reason.
 *
 * A node's life: LAUNCHING (create runs) -> JOINING (create returned; the node boots, runs
 * cloud-init and joins with its single-use token) -> ALIVE (it said hello) -> DRAINING
 * (cordoned: it takes no new replicas; the replicas it has keep serving until their
 * replacements elsewhere are ready, then stop) -> DELETING (certificates revoked, delete runs)
 * -> gone. A launch that fails or a node that does not join within boot_timeout_s is deleted
 * and the group backs off before its next launch; the failures show in `serve status`, the
 * groups API and /metrics.
 *
 * Nothing here is persisted: at start (and every reconcile_interval_s) each group's provider
 * lists its nodes, and the head adopts them (a node it knows from its state file is ALIVE,
 * others are JOINING since their creation time). No group launches before its first list. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "groups-internal.h"
#include "head.h"
#include "log.h"
#include "macros.h"
#include "metrics.h"
#include "nodescale.h"
#include "provider.h"
#include "userdata.h"
#include "util.h"

#define CREATE_TIMEOUT_S 300.0
#define DELETE_TIMEOUT_S 120.0
#define LIST_TIMEOUT_S 60.0
#define PASS_INTERVAL_NS (250 * NSEC_PER_MSEC)
#define BACKOFF_MIN_S 5.0
#define BACKOFF_MAX_S 600.0
#define DELETE_RETRY_NS (15 * NSEC_PER_SEC)
/* A draining node keeps its replicas until their replacements are ready elsewhere, at most
 * this long (a replacement that cannot start must not keep the node forever). */
#define DRAIN_HOLD_MAX_NS (300 * NSEC_PER_SEC)
/* A managed node that stopped reporting is deleted (and replaced by demand or min_nodes)
 * after this long, at least its group's boot timeout. */
#define LOST_NODE_MIN_NS (120 * NSEC_PER_SEC)


const struct worker_group *group_of_config(const struct cluster_config *c, const char *name) {
        for (size_t i = 0; i < c->n_groups; i++)
                if (streq(c->groups[i].name, name))
                        return &c->groups[i];
        return NULL;
}

static const struct worker_group *group_of(const struct groups *gs, const char *name, size_t *ret_index) {
        const struct worker_group *g = group_of_config(gs->h->ccfg, name);
        if (g && ret_index)
                *ret_index = (size_t)(g - gs->h->ccfg->groups);
        return g;
}

struct mnode *mnode_find(const struct groups *gs, const char *name) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, (struct list *)&gs->mnodes) {
                struct mnode *m = list_entry(pos, struct mnode, link);
                if (streq(m->name, name))
                        return m;
        }
        return NULL;
}

static void mnode_free(struct mnode *m) {
        if (!m)
                return;
        provider_cancel(m->call);
        if (m->user_data_path)
                (void)unlink(m->user_data_path);
        list_del(&m->link);
        m->gs->n_mnodes--;
        free(m->name);
        free(m->group);
        free(m->provider_id);
        free(m->address);
        free(m->replaces);
        free(m->user_data_path);
        free(m);
}

static struct mnode *mnode_new(struct groups *gs, const char *name, const char *group, enum ns_state st) {
        struct mnode *m = calloc(1, sizeof *m);
        if (!m)
                return NULL;
        m->gs = gs;
        m->name = strdup(name);
        m->group = strdup(group);
        if (!m->name || !m->group) {
                free(m->name);
                free(m->group);
                free(m);
                return NULL;
        }
        m->state = st;
        m->launched_ns = m->state_ns = now_ns();
        m->launched_wall = wall_now();
        list_add_tail(&gs->mnodes, &m->link);
        gs->n_mnodes++;
        return m;
}

static void set_state(struct mnode *m, enum ns_state st) {
        m->state = st;
        m->state_ns = now_ns();
}

/* The hash a node carries in its serve.config label (16 hex digits), if it has one. */
static bool node_config_hash(const struct node *n, uint64_t *ret) {
        const char *s = n ? cJSON_GetStringValue(cJSON_GetObjectItem(n->labels, NODECFG_LABEL_CONFIG)) : NULL;
        char *end;
        if (!s || strlen(s) != 16)
                return false;
        *ret = strtoull(s, &end, 16);
        return *end == '\0';
}

static void group_failed(struct groups *gs, size_t gi, const char *what) {
        struct group_run *r = &gs->g[gi];
        const struct worker_group *g = &gs->h->ccfg->groups[gi];
        double backoff = BACKOFF_MIN_S;

        r->failures++;
        for (unsigned i = 1; i < r->failures && backoff < BACKOFF_MAX_S; i++)
                backoff *= 2;
        backoff = MIN(backoff, BACKOFF_MAX_S);
        r->backoff_until_ns = now_ns() + sec_to_ns(backoff);
        free(r->last_error);
        r->last_error = strdup(what);
        event_log_add(&gs->h->events, LOG_WARNING, "group_failing", g->name, "",
                      "group %s: launch failed (%u in a row): %s; next launch in %.0f s", g->name, r->failures, what, backoff);
}

/* ---- provider calls ---- */

static cJSON *options_json(const struct worker_group *g) {
        cJSON *o = cJSON_CreateObject();
        for (size_t i = 0; o && i < g->n_provider_options; i++)
                cJSON_AddStringToObject(o, g->provider_options[i].key, g->provider_options[i].value);
        return o;
}

static void start_delete(struct mnode *m);

static void on_delete_done(void *userdata, int r, const char *error, const struct provider_node *nodes, size_t n_nodes) {
        struct mnode *m = userdata;
        struct groups *gs = m->gs;

        m->call = NULL;
        if (r < 0) {
                log_warning("%s; trying again in %llu s", error, (unsigned long long)(DELETE_RETRY_NS / NSEC_PER_SEC));
                m->retry_ns = now_ns() + DELETE_RETRY_NS;
                return;
        }
        event_log_add(&gs->h->events, LOG_INFO, "node_deleted", m->name, m->name, "deleted node %s of group %s (%s %s)",
                      m->name, m->group, m->provider_id ? "provider id" : "no provider id",
                      m->provider_id ? m->provider_id : "");
        mnode_free(m);
}

/* Revokes what the node could still use (its token, its certificates), forgets it as a node,
 * and runs delete. */
static void start_delete(struct mnode *m) {
        struct groups *gs = m->gs;
        struct head *h = gs->h;
        size_t gi;
        const struct worker_group *g = group_of(gs, m->group, &gi);
        _cleanup_free_ char *err = NULL, *text = NULL;
        cJSON *in;
        int r;

        if (m->state != NS_DELETING) {
                set_state(m, NS_DELETING);
                if (m->token_id[0] && h->trust)
                        (void)trust_revoke_token(h, m->token_id);
                if (node_find(h, m->name))
                        (void)nodes_remove(h, m->name);
        }
        if (!g || !g->provider) {
                /* The group left cluster.yaml: nobody can delete it for us. */
                log_warning("node %s: group %s has no provider any more; forgetting the node without deleting it", m->name,
                            m->group);
                mnode_free(m);
                return;
        }
        in = cJSON_CreateObject();
        if (in) {
                cJSON_AddStringToObject(in, "name", m->name);
                cJSON_AddStringToObject(in, "group", m->group);
                cJSON_AddStringToObject(in, "id", m->provider_id ? m->provider_id : "");
                cJSON_AddItemToObject(in, "options", options_json(g));
                text = cJSON_PrintUnformatted(in);
                cJSON_Delete(in);
        }
        if (!text) {
                m->retry_ns = now_ns() + DELETE_RETRY_NS;
                return;
        }
        r = provider_run(&h->loop, g->provider, PROVIDER_DELETE, m->name, text, DELETE_TIMEOUT_S, on_delete_done, m, &m->call,
                         &err);
        if (r < 0) {
                log_warning("node %s: cannot run delete: %s; trying again in %llu s", m->name, err ?: strerror(-r),
                            (unsigned long long)(DELETE_RETRY_NS / NSEC_PER_SEC));
                m->retry_ns = now_ns() + DELETE_RETRY_NS;
        }
}

static void on_create_done(void *userdata, int r, const char *error, const struct provider_node *nodes, size_t n_nodes) {
        struct mnode *m = userdata;
        struct groups *gs = m->gs;
        size_t gi = 0;
        const struct worker_group *g = group_of(gs, m->group, &gi);

        m->call = NULL;
        /* The hook has what it needed from the user-data (the contract): its token goes now. */
        if (m->user_data_path) {
                (void)unlink(m->user_data_path);
                free(m->user_data_path);
                m->user_data_path = NULL;
        }
        if (r < 0 || n_nodes < 1) {
                if (g) {
                        gs->g[gi].launches_failed++;
                        group_failed(gs, gi, error ? error : "create failed");
                }
                event_log_add(&gs->h->events, LOG_WARNING, "node_launch_failed", m->name, m->name,
                              "launching node %s of group %s failed: %s; deleting what it left", m->name, m->group,
                              error ? error : "create failed");
                m->failed_launch = true;
                start_delete(m); /* delete is idempotent: whatever create left goes */
                return;
        }
        free(m->provider_id);
        m->provider_id = strdup(nodes[0].id ? nodes[0].id : "");
        free(m->address);
        m->address = nodes[0].address ? strdup(nodes[0].address) : NULL;
        if (m->state == NS_LAUNCHING) {
                set_state(m, NS_JOINING);
                m->state_ns = m->launched_ns; /* the boot timeout counts from the launch */
        }
        /* It may have joined before create returned (a fast provider). */
        struct node *n = node_find(gs->h, m->name);
        event_log_add(&gs->h->events, LOG_INFO, "node_created", m->name, m->name,
                      "node %s of group %s created in %.1f s (provider id %s%s%s)%s", m->name, m->group,
                      (double)(now_ns() - m->launched_ns) / 1e9, m->provider_id ? m->provider_id : "",
                      m->address ? ", address " : "", m->address ? m->address : "",
                      n && n->alive ? "; it has joined already" : "; waiting for it to join");
        if (n && n->alive)
                groups_on_join(gs->h, n);
}

static int write_user_data(struct groups *gs, const char *name, const char *text, char **ret_path) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -1;

        if (mkdir(gs->dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (asprintf(&path, "%s/%s", gs->dir, name) < 0)
                return -ENOMEM;
        (void)unlink(path);
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        int r = write_all(fd, text, strlen(text));
        if (r < 0)
                return r;
        *ret_path = TAKE_PTR(path);
        return 0;
}

static int new_node_name(struct groups *gs, const char *group, char **ret) {
        for (int attempt = 0; attempt < 16; attempt++) {
                uint8_t b[3];
                char *name;
                if (getrandom(b, sizeof b, 0) != sizeof b)
                        return -EIO;
                if (asprintf(&name, "%s-%02x%02x%02x", group, b[0], b[1], b[2]) < 0)
                        return -ENOMEM;
                if (!mnode_find(gs, name) && !node_find(gs->h, name) && node_name_valid(name)) {
                        *ret = name;
                        return 0;
                }
                free(name);
        }
        return -EEXIST;
}

static cJSON *shape_json(const struct worker_group *g) {
        cJSON *s = cJSON_CreateObject(), *c;
        if (!s)
                return NULL;
        cJSON_AddNumberToObject(s, "cpus", g->resources.num_cpus);
        cJSON_AddNumberToObject(s, "memory", (double)g->resources.memory);
        cJSON_AddNumberToObject(s, "gpus", g->resources.num_gpus);
        c = cJSON_AddObjectToObject(s, "custom");
        for (size_t i = 0; c && i < g->resources.n_custom; i++)
                cJSON_AddNumberToObject(c, g->resources.custom[i].name, g->resources.custom[i].amount);
        return s;
}

static void launch(struct groups *gs, size_t gi, const char *replaces, const char *reason) {
        struct head *h = gs->h;
        const struct worker_group *g = &h->ccfg->groups[gi];
        _cleanup_free_ char *name = NULL, *token = NULL, *ud = NULL, *err = NULL, *text = NULL;
        char token_id[JOINTOKEN_ID_HEX + 1] = "";
        struct mnode *m;
        cJSON *in, *labels;
        int r;

        r = new_node_name(gs, g->name, &name);
        if (r < 0) {
                log_error_errno(r, "group %s: cannot name a new node: %m", g->name);
                return;
        }
        if (h->trust) {
                /* Single-use, bound to the name, and gone soon after the node should have joined. */
                r = trust_mint_token(h, name, (uint64_t)g->boot_timeout_s + 60, &token, token_id);
                if (r < 0) {
                        log_error_errno(r, "group %s: cannot mint a join token for %s: %m", g->name, name);
                        return;
                }
        } else if (!(token = strdup(h->join_token ? h->join_token : "")))
                return;
        r = userdata_render(h->ccfg, g, name, token, &ud);
        if (r < 0) {
                log_error_errno(r, "group %s: cannot render the user-data: %m", g->name);
                return;
        }
        m = mnode_new(gs, name, g->name, NS_LAUNCHING);
        if (!m)
                return;
        memcpy(m->token_id, token_id, sizeof token_id);
        m->config_hash = userdata_config_hash(h->ccfg, g);
        m->hash_known = true;
        m->replaces = replaces ? strdup(replaces) : NULL;
        r = write_user_data(gs, name, ud, &m->user_data_path);
        if (r < 0) {
                log_error_errno(r, "group %s: cannot write the user-data of %s under %s: %m", g->name, name, gs->dir);
                start_delete(m);
                return;
        }
        in = cJSON_CreateObject();
        if (in) {
                cJSON_AddStringToObject(in, "name", name);
                cJSON_AddStringToObject(in, "group", g->name);
                cJSON_AddItemToObject(in, "shape", shape_json(g));
                labels = cJSON_AddObjectToObject(in, "labels");
                cJSON_AddStringToObject(labels, NODECFG_LABEL_GROUP, g->name);
                for (size_t i = 0; labels && i < g->n_labels; i++)
                        if (!streq(g->labels[i].key, NODECFG_LABEL_GROUP))
                                cJSON_AddStringToObject(labels, g->labels[i].key, g->labels[i].value);
                char hex[17];
                snprintf(hex, sizeof hex, "%016llx", (unsigned long long)m->config_hash);
                cJSON_AddStringToObject(labels, NODECFG_LABEL_CONFIG, hex);
                cJSON_AddStringToObject(in, "user_data", m->user_data_path);
                cJSON_AddItemToObject(in, "options", options_json(g));
                text = cJSON_PrintUnformatted(in);
                cJSON_Delete(in);
        }
        event_log_add(&h->events, LOG_INFO, "node_launching", g->name, name, "launching node %s of group %s: %s", name,
                      g->name, reason);
        if (!text)
                r = -ENOMEM;
        else
                r = provider_run(&h->loop, g->provider, PROVIDER_CREATE, name, text, CREATE_TIMEOUT_S, on_create_done, m,
                                 &m->call, &err);
        if (r < 0) {
                gs->g[gi].launches_failed++;
                group_failed(gs, gi, err ? err : strerror(-r));
                start_delete(m);
        }
}

/* ---- reconciling with the providers' lists ---- */

static void on_list_done(void *userdata, int r, const char *error, const struct provider_node *nodes, size_t n_nodes);

static void start_list(struct groups *gs, size_t gi) {
        const struct worker_group *g = &gs->h->ccfg->groups[gi];
        struct group_run *run = &gs->g[gi];
        _cleanup_free_ char *err = NULL, *text = NULL;
        cJSON *in = cJSON_CreateObject();

        if (in) {
                cJSON_AddStringToObject(in, "group", g->name);
                cJSON_AddItemToObject(in, "options", options_json(g));
                text = cJSON_PrintUnformatted(in);
                cJSON_Delete(in);
        }
        if (!text)
                return;
        run->list_started_ns = now_ns();
        run->list_next_ns = run->list_started_ns + sec_to_ns(gs->h->ccfg->autoscaler_reconcile_interval_s);
        /* groups_free() cancels it: the group_run outlives the call. */
        int r = provider_run(&gs->h->loop, g->provider, PROVIDER_LIST, NULL, text, LIST_TIMEOUT_S, on_list_done, run,
                             &run->list_call, &err);
        if (r < 0)
                log_warning("group %s: cannot list its nodes: %s", g->name, err ?: strerror(-r));
}

static void on_list_done(void *userdata, int r, const char *error, const struct provider_node *nodes, size_t n_nodes) {
        struct group_run *run = userdata;
        struct groups *gs = run->gs;
        size_t gi = run->gi;
        const struct worker_group *g = &gs->h->ccfg->groups[gi];
        struct head *h = gs->h;
        struct list *pos, *tmp;
        double now_w = wall_now();
        uint64_t now = now_ns();

        run->list_call = NULL;
        if (r < 0) {
                log_warning("group %s: %s", g->name, error);
                return;
        }
        for (size_t i = 0; i < n_nodes; i++) {
                const struct provider_node *pn = &nodes[i];
                if (!streq_ptr(pn->group, g->name) || mnode_find(gs, pn->name))
                        continue;
                /* One the head knows (its state file) is ALIVE, even if it has not reconnected
                 * yet: it has until its group's boot timeout to come back. */
                struct node *n = node_find(h, pn->name);
                struct mnode *m = mnode_new(gs, pn->name, g->name, n ? NS_ALIVE : NS_JOINING);
                if (!m)
                        continue;
                m->provider_id = pn->id ? strdup(pn->id) : NULL;
                m->address = pn->address ? strdup(pn->address) : NULL;
                if (pn->created > 0 && pn->created <= now_w && !n) {
                        uint64_t age = sec_to_ns(now_w - pn->created);
                        m->launched_ns = m->state_ns = age < now ? now - age : 0;
                        m->launched_wall = pn->created;
                }
                event_log_add(&h->events, LOG_INFO, "node_adopted", m->name, m->name,
                              "group %s: adopted node %s from its provider's list (%s)", g->name, m->name,
                              n && n->alive ? "alive" : n ? "known, not connected yet: waiting for it"
                                                          : "never joined: waiting for it until its boot timeout");
        }
        /* A node the head launched and saw but the provider lost is gone. Not one whose create
         * returned after this list started (the list could not know it). */
        list_for_each_safe(pos, tmp, &gs->mnodes) {
                struct mnode *m = list_entry(pos, struct mnode, link);
                bool listed = false;
                if (!streq(m->group, g->name) || m->call || m->state == NS_LAUNCHING || m->state == NS_DELETING ||
                    m->launched_ns > run->list_started_ns)
                        continue;
                for (size_t i = 0; i < n_nodes && !listed; i++)
                        listed = streq(nodes[i].name, m->name);
                if (listed)
                        continue;
                event_log_add(&h->events, LOG_WARNING, "node_lost", m->name, m->name,
                              "group %s: the provider no longer has node %s; marking it gone", g->name, m->name);
                if (m->token_id[0] && h->trust)
                        (void)trust_revoke_token(h, m->token_id);
                if (node_find(h, m->name))
                        (void)nodes_remove(h, m->name);
                mnode_free(m);
        }
        if (!run->listed)
                log_info("group %s: its provider %s lists %zu node(s)", g->name, g->provider, n_nodes);
        run->listed = true;
}

/* ---- the pass ---- */

/* What placement leaves free on node n (ALIVE nodes): its totals minus its shares. */
/* What placement leaves free on node n (ALIVE nodes): its totals minus its shares. */
static struct ns_shape node_free_shape(const struct head *h, const struct node *n) {
        struct node_usage u = node_usage_of(h, n);
        return (struct ns_shape){ .cpus = MAX(n->cpus - u.cpus, 0.0), .gpus = MAX(n->n_gpus - u.gpus, 0.0),
                                  .memory = (double)n->memory > u.memory ? n->memory - (uint64_t)u.memory : 0 };
}

/* Replicas on node n: placed there, or still running there (stopping ones too). */
static unsigned node_replicas(const struct head *h, const struct node *n) {
        unsigned running = (unsigned)cJSON_GetArraySize(cJSON_GetObjectItem(n->report, "replicas"));
        return MAX(node_usage_of(h, n).replicas, running);
}

/* Whether the replicas of draining node n run ready elsewhere now: for each deployment it
 * runs, the other nodes' RUNNING replicas cover what placement put elsewhere. */
static bool replacements_ready(struct head *h, const struct node *n) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(n->report, "replicas")) {
                const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                const char *dep = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                _cleanup_free_ char *key = app && dep ? dep_key(app, dep) : NULL;
                const struct assignment *a = NULL;
                unsigned ready = 0;
                struct list *pos, *tmp;
                if (!key)
                        continue;
                for (size_t i = 0; i < h->n_assign; i++)
                        if (streq(h->assign[i].key, key))
                                a = &h->assign[i];
                if (!a)
                        continue; /* no longer deployed: nothing to wait for */
                list_for_each_safe(pos, tmp, &h->nodes) {
                        const struct node *o = list_entry(pos, struct node, link);
                        const cJSON *r;
                        if (o == n || !o->alive || o->cordoned)
                                continue;
                        cJSON_ArrayForEach(r, cJSON_GetObjectItem(o->report, "replicas"))
                                if (streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(r, "app")), app) &&
                                    streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(r, "deployment")), dep) &&
                                    streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(r, "state")), "RUNNING"))
                                        ready++;
                }
                if (ready < a->placed)
                        return false;
        }
        return true;
}

static void drain(struct groups *gs, struct mnode *m, const char *reason) {
        struct node *n = node_find(gs->h, m->name);

        set_state(m, NS_DRAINING);
        event_log_add(&gs->h->events, LOG_INFO, "node_draining", m->name, m->name, "draining node %s of group %s: %s",
                      m->name, m->group, reason);
        if (n) {
                n->cordoned = true;
                n->hold_assign = n->n_shares > 0;
                m->holding = n->hold_assign;
        }
        gs->h->dirty = true;
}

/* Moves draining and deleting nodes along; deletes nodes lost for too long. */
static void advance(struct groups *gs, uint64_t now) {
        struct head *h = gs->h;
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &gs->mnodes) {
                struct mnode *m = list_entry(pos, struct mnode, link);
                struct node *n = node_find(h, m->name);
                const struct worker_group *g = group_of(gs, m->group, NULL);

                switch (m->state) {
                case NS_DRAINING:
                        if (!n || !n->alive) {
                                start_delete(m);
                                break;
                        }
                        n->cordoned = true;
                        /* Nothing is known of a node that has not reported since it connected. */
                        if (!n->report)
                                break;
                        if (m->holding && (replacements_ready(h, n) || now - m->state_ns > DRAIN_HOLD_MAX_NS)) {
                                if (now - m->state_ns > DRAIN_HOLD_MAX_NS)
                                        log_warning("node %s: its replicas' replacements are not all ready after %llu s; "
                                                    "stopping them anyway", m->name,
                                                    (unsigned long long)(DRAIN_HOLD_MAX_NS / NSEC_PER_SEC));
                                m->holding = n->hold_assign = false;
                                node_resync_assign(n);
                        }
                        /* Drained: nothing placed, nothing running (its replicas finished their
                         * requests and stopped). */
                        if (!m->holding && n->n_shares == 0 &&
                            cJSON_GetArraySize(cJSON_GetObjectItem(n->report, "replicas")) == 0)
                                start_delete(m);
                        break;
                case NS_DELETING:
                        if (!m->call && m->retry_ns && now >= m->retry_ns) {
                                m->retry_ns = 0;
                                start_delete(m);
                        }
                        break;
                case NS_ALIVE:
                        if (n && n->alive) {
                                m->seen_ns = now;
                                break;
                        }
                        if (!m->seen_ns)
                                m->seen_ns = now;
                        if (g && now - m->seen_ns > MAX(LOST_NODE_MIN_NS, sec_to_ns(g->boot_timeout_s))) {
                                event_log_add(&h->events, LOG_WARNING, "node_unreachable", m->name, m->name,
                                              "node %s of group %s has been unreachable for %.0f s; deleting it", m->name,
                                              m->group, (double)(now - m->seen_ns) / 1e9);
                                start_delete(m);
                        }
                        break;
                default:
                        break;
                }
        }
}

static enum ns_mode mode_of(const struct cluster_config *c) {
        switch (c->autoscaler_upscaling_mode) {
        case UPSCALING_CONSERVATIVE:
                return NS_CONSERVATIVE;
        case UPSCALING_AGGRESSIVE:
                return NS_AGGRESSIVE;
        default:
                return NS_DEFAULT;
        }
}

static void decide(struct groups *gs, uint64_t now) {
        struct head *h = gs->h;
        const struct cluster_config *c = h->ccfg;
        size_t n_groups = c->n_groups, nn = 0, nd = 0;
        _cleanup_free_ struct ns_group *groups = calloc(n_groups + 1, sizeof *groups);
        _cleanup_free_ struct ns_node *nodes = calloc(h->n_nodes + gs->n_mnodes + 1, sizeof *nodes);
        _cleanup_free_ struct mnode **mnodes = calloc(h->n_nodes + gs->n_mnodes + 1, sizeof *mnodes);
        _cleanup_free_ struct ns_demand *demand = calloc(h->n_assign + 1, sizeof *demand);
        _cleanup_free_ struct ns_action *actions = NULL;
        struct ns_summary sum = {};
        struct list *pos, *tmp;
        size_t n_actions = 0;
        int r;

        if (!groups || !nodes || !mnodes || !demand)
                return;
        for (size_t i = 0; i < n_groups; i++) {
                const struct worker_group *g = &c->groups[i];
                groups[i] = (struct ns_group){
                        .name = g->name,
                        .shape = { .cpus = g->resources.num_cpus, .memory = g->resources.memory, .gpus = g->resources.num_gpus,
                                   .custom = (const struct placement_resource *)g->resources.custom,
                                   .n_custom = g->resources.n_custom },
                        .min_nodes = g->min_nodes, .max_nodes = g->max_nodes, .cost = g->cost,
                        .idle_timeout_s = g->idle_timeout_s, .boot_timeout_s = g->boot_timeout_s, .max_surge = g->max_surge,
                        /* No launch before the provider said what it already has. */
                        .launchable = g->provider && gs->g[i].listed,
                        .backoff_until_ns = gs->g[i].backoff_until_ns,
                        .config_hash = userdata_config_hash(c, g),
                };
        }
        /* Managed nodes first (their index is their place in mnodes), then the others. */
        list_for_each_safe(pos, tmp, &gs->mnodes) {
                struct mnode *m = list_entry(pos, struct mnode, link);
                struct node *n = node_find(h, m->name);
                size_t gi;
                uint64_t hash = m->config_hash;
                if (!group_of(gs, m->group, &gi))
                        continue;
                /* Its label says; else what it was launched with; else (adopted, not heard from
                 * yet) nothing says it is outdated. */
                if (!(n && node_config_hash(n, &hash)) && !m->hash_known)
                        hash = groups[gi].config_hash;
                nodes[nn] = (struct ns_node){ .name = m->name, .group = (int)gi, .state = m->state,
                                              .launched_ns = m->launched_ns, .config_hash = hash, .replaces = -1,
                                              .cordoned = n && n->cordoned };
                if (m->state == NS_ALIVE && n && n->alive) {
                        nodes[nn].free = node_free_shape(h, n);
                        nodes[nn].replicas = node_replicas(h, n);
                        nodes[nn].idle_since_ns = n->idle_since_ns;
                } else if (m->state == NS_ALIVE)
                        nodes[nn].replicas = 1; /* unreachable: not idle, takes nothing */
                mnodes[nn++] = m;
        }
        for (size_t i = 0; i < nn; i++)
                if (mnodes[i]->replaces)
                        for (size_t k = 0; k < nn; k++)
                                if (streq(mnodes[k]->name, mnodes[i]->replaces))
                                        nodes[i].replaces = (int)k;
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                if (mnode_find(gs, n->name) || !n->alive)
                        continue;
                nodes[nn++] = (struct ns_node){ .name = n->name, .group = -1, .state = NS_ALIVE, .free = node_free_shape(h, n),
                                                .replicas = node_replicas(h, n), .replaces = -1, .cordoned = n->cordoned };
        }
        for (size_t i = 0; i < h->n_assign && h->spec && i < h->spec->n_deps; i++) {
                const struct dep_spec *d = &h->spec->deps[i];
                if (!h->assign[i].pending)
                        continue;
                demand[nd++] = (struct ns_demand){ .key = h->assign[i].key, .cpus = d->num_cpus, .gpus = d->num_gpus,
                                                   .memory = d->memory,
                                                   .custom = (const struct placement_resource *)d->resources,
                                                   .n_custom = d->n_resources, .count = h->assign[i].pending,
                                                   .max_per_node = d->max_per_node };
        }
        struct ns_input in = { .groups = groups, .n_groups = n_groups, .nodes = nodes, .n_nodes = nn, .demand = demand,
                               .n_demand = nd,
                               .opt = { .mode = mode_of(c), .max_concurrent_launches = c->autoscaler_max_concurrent_launches,
                                        .batch_idle_ns = sec_to_ns(c->autoscaler_batch_idle_s), .batch_max_ns = sec_to_ns(c->autoscaler_batch_max_s) },
                               .now_ns = now };
        r = nodescale_decide(&in, &gs->mem, &actions, &n_actions, &sum);
        if (r < 0) {
                log_error_errno(r, "the cluster autoscaler cannot decide: %m");
                return;
        }
        if (sum.unschedulable && (sum.unschedulable != gs->unschedulable ||
                                  !streq(sum.unschedulable_reason, gs->unschedulable_reason)))
                event_log_add(&h->events, LOG_WARNING, "demand_unschedulable", "cluster", "",
                              "%u pending replica(s) fit no worker group: %s", sum.unschedulable, sum.unschedulable_reason);
        gs->pending = sum.pending;
        gs->unschedulable = sum.unschedulable;
        snprintf(gs->unschedulable_reason, sizeof gs->unschedulable_reason, "%s", sum.unschedulable_reason);
        for (size_t i = 0; i < n_groups; i++)
                gs->g[i].wanted = sum.wanted ? sum.wanted[i] : 0;
        ns_summary_done(&sum);

        for (size_t i = 0; i < n_actions; i++) {
                const struct ns_action *a = &actions[i];
                struct mnode *m = a->node >= 0 && (size_t)a->node < nn ? mnodes[a->node] : NULL;
                switch (a->kind) {
                case NS_LAUNCH:
                        if (a->group >= 0 && (size_t)a->group < n_groups)
                                launch(gs, (size_t)a->group,
                                       a->replaces >= 0 && (size_t)a->replaces < nn && mnodes[a->replaces]
                                               ? mnodes[a->replaces]->name
                                               : NULL,
                                       a->reason);
                        break;
                case NS_DRAIN:
                        if (m && m->state == NS_ALIVE)
                                drain(gs, m, a->reason);
                        break;
                case NS_DELETE:
                        if (m && (m->state == NS_LAUNCHING || m->state == NS_JOINING)) {
                                size_t gi;
                                event_log_add(&h->events, LOG_WARNING, "node_boot_timeout", m->name, m->name,
                                              "deleting node %s of group %s: %s", m->name, m->group, a->reason);
                                if (group_of(gs, m->group, &gi)) {
                                        gs->g[gi].launches_timeout++;
                                        group_failed(gs, gi, a->reason);
                                }
                                provider_cancel(m->call);
                                m->call = NULL;
                                start_delete(m);
                        }
                        break;
                }
        }
}

/* Keeps each node's idle clock: it starts when nothing is placed on or runs on the node. */
static void track_idle(struct head *h, uint64_t now) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                bool idle = n->alive && node_replicas(h, n) == 0;
                if (!idle)
                        n->idle_since_ns = 0;
                else if (!n->idle_since_ns)
                        n->idle_since_ns = now;
        }
}

/* ---- what head.c, nodes.c and api.c call ---- */

/* User-data files a previous head left (it exited while a create ran, which still reads it):
 * past any create's timeout nobody needs them, and each holds a token. */
static void remove_stale_user_data(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *e;
        struct stat st;

        if (!d)
                return;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.' && fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                    S_ISREG(st.st_mode) && time(NULL) - st.st_mtime > 2 * (time_t)CREATE_TIMEOUT_S)
                        (void)unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
}

int groups_init(struct head *h) {
        struct groups *gs = calloc(1, sizeof *gs);
        if (!gs)
                return log_error_errno(-ENOMEM, "Cannot set up the worker groups: %m");
        gs->h = h;
        list_init(&gs->mnodes);
        gs->g = calloc(h->ccfg->n_groups + 1, sizeof *gs->g);
        if (!gs->g || asprintf(&gs->dir, "%s/user-data", h->state_dir) < 0) {
                free(gs->g);
                free(gs);
                return log_error_errno(-ENOMEM, "Cannot set up the worker groups: %m");
        }
        h->groups = gs;
        remove_stale_user_data(gs->dir);
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                const struct worker_group *g = &h->ccfg->groups[i];
                gs->g[i].gs = gs;
                gs->g[i].gi = i;
                _cleanup_free_ char *path = NULL, *err = NULL;
                if (!g->provider) {
                        gs->g[i].listed = true;
                        continue;
                }
                /* A missing hook is an operator's mistake worth knowing at start, not at the
                 * first launch. */
                const char *ops[] = { "create", "delete", "list" };
                for (size_t k = 0; k < ELEMENTSOF(ops); k++) {
                        int r = provider_find(g->provider, ops[k], &path, &err);
                        if (r < 0)
                                log_warning("group %s: %s", g->name, err ?: strerror(-r));
                        free(path);
                        free(err);
                        path = err = NULL;
                }
                log_info("group %s: provider %s, %d to %d nodes of %.4g CPUs%s", g->name, g->provider, g->min_nodes,
                         g->max_nodes, g->resources.num_cpus, g->cost >= 0 ? "" : ", no cost given");
        }
        return 0;
}

void groups_free(struct head *h) {
        struct groups *gs = h->groups;
        if (!gs)
                return;
        /* The nodes keep running: the next head adopts them from the providers' lists. A create
         * or delete in flight finishes on its own (cut short, it would leave half a node). */
        while (!list_empty(&gs->mnodes)) {
                struct mnode *m = list_entry(gs->mnodes.next, struct mnode, link);
                free(m->user_data_path); /* its node may still be booting from it */
                m->user_data_path = NULL;
                provider_detach(m->call);
                m->call = NULL;
                mnode_free(m);
        }
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                provider_cancel(gs->g[i].list_call);
                free(gs->g[i].last_error);
        }
        free(gs->g);
        free(gs->dir);
        free(gs);
        h->groups = NULL;
}

#define SWAP_FIELD(a, b)                        \
        do {                                    \
                __typeof__(a) _t = (a);         \
                (a) = (b);                      \
                (b) = _t;                       \
        } while (0)

int groups_reload(struct head *h) {
        struct groups *gs = h->groups;
        struct cluster_config *nc = NULL;
        _cleanup_free_ char *err = NULL;
        struct group_run *runs;
        int r;

        if (!gs)
                return 0;
        r = cluster_config_load_file(h->cluster_path, &nc, &err);
        if (r < 0) {
                log_error("%s; the worker groups stay as they were", err ?: strerror(-r));
                record_config_error(h, err ?: strerror(-r));
                return r;
        }
        runs = calloc(nc->n_groups + 1, sizeof *runs);
        if (!runs) {
                cluster_config_free(nc);
                return log_error_errno(-ENOMEM, "Cannot set up the worker groups: %m");
        }
        /* A group keeps its counters and backoff by name; its list starts over (a call in
         * flight points at the old array). */
        for (size_t i = 0; i < nc->n_groups; i++) {
                size_t k;
                runs[i] = (struct group_run){ .gs = gs, .gi = i };
                if (!group_of(gs, nc->groups[i].name, &k))
                        continue;
                runs[i].failures = gs->g[k].failures;
                runs[i].backoff_until_ns = gs->g[k].backoff_until_ns;
                runs[i].last_error = TAKE_PTR(gs->g[k].last_error);
                runs[i].launches_ok = gs->g[k].launches_ok;
                runs[i].launches_failed = gs->g[k].launches_failed;
                runs[i].launches_timeout = gs->g[k].launches_timeout;
                runs[i].listed = gs->g[k].listed;
        }
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                provider_cancel(gs->g[i].list_call);
                free(gs->g[i].last_error);
                if (!group_of_config(nc, h->ccfg->groups[i].name))
                        log_warning("group %s left %s: its nodes are no longer managed (delete them with its provider)",
                                    h->ccfg->groups[i].name, h->cluster_path);
        }
        for (size_t i = 0; i < nc->n_groups; i++)
                if (!nc->groups[i].provider)
                        runs[i].listed = true;
        free(gs->g);
        gs->g = runs;
        SWAP_FIELD(h->ccfg->groups, nc->groups);
        SWAP_FIELD(h->ccfg->n_groups, nc->n_groups);
        SWAP_FIELD(h->ccfg->autoscaler_interval_s, nc->autoscaler_interval_s);
        SWAP_FIELD(h->ccfg->autoscaler_upscaling_mode, nc->autoscaler_upscaling_mode);
        SWAP_FIELD(h->ccfg->autoscaler_max_concurrent_launches, nc->autoscaler_max_concurrent_launches);
        SWAP_FIELD(h->ccfg->autoscaler_head_address, nc->autoscaler_head_address);
        SWAP_FIELD(h->ccfg->autoscaler_head_host, nc->autoscaler_head_host);
        SWAP_FIELD(h->ccfg->autoscaler_head_port, nc->autoscaler_head_port);
        SWAP_FIELD(h->ccfg->autoscaler_batch_idle_s, nc->autoscaler_batch_idle_s);
        SWAP_FIELD(h->ccfg->autoscaler_batch_max_s, nc->autoscaler_batch_max_s);
        SWAP_FIELD(h->ccfg->autoscaler_reconcile_interval_s, nc->autoscaler_reconcile_interval_s);
        cluster_config_free(nc);
        gs->next_pass_ns = 0;
        event_log_add(&h->events, LOG_INFO, "groups_reloaded", "cluster", "",
                      "%s: %zu worker group(s) and the autoscaler settings reloaded (other changes take effect at the next "
                      "start)", h->cluster_path, h->ccfg->n_groups);
        return 0;
}

void groups_tick(struct head *h, uint64_t now) {
        struct groups *gs = h->groups;
        if (!gs || h->ccfg->n_groups == 0 || now < gs->next_pass_ns)
                return;
        gs->next_pass_ns = now + PASS_INTERVAL_NS;
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &gs->mnodes) {
                struct node *n = node_find(h, list_entry(pos, struct mnode, link)->name);
                if (n && !n->elastic) {
                        n->elastic = true;
                        h->dirty = true;
                }
        }
        for (size_t i = 0; i < h->ccfg->n_groups; i++)
                if (h->ccfg->groups[i].provider && !gs->g[i].list_call && now >= gs->g[i].list_next_ns)
                        start_list(gs, i);
        track_idle(h, now);
        advance(gs, now);
        decide(gs, now);
}

void groups_on_join(struct head *h, struct node *n) {
        struct groups *gs = h->groups;
        struct mnode *m = gs ? mnode_find(gs, n->name) : NULL;
        if (!m)
                return;
        n->elastic = true;
        /* A node that joins before its create returned is taken in when it returns. */
        if (m->state == NS_JOINING) {
                event_log_add(&h->events, LOG_INFO, "node_ready", m->name, m->name,
                              "node %s of group %s joined %.1f s after its launch", m->name, m->group,
                              (double)(now_ns() - m->launched_ns) / 1e9);
                set_state(m, NS_ALIVE);
                m->seen_ns = m->state_ns;
                size_t gi;
                if (group_of(gs, m->group, &gi)) {
                        gs->g[gi].launches_ok++;
                        gs->g[gi].failures = 0;
                        gs->g[gi].backoff_until_ns = 0;
                }
        }
        if (m->state == NS_DRAINING)
                n->cordoned = true;
}
