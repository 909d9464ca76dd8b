/* The cluster autoscaler's views: a managed node's state for the nodes API, the groups API
 * (`serve status`), /metrics and the dashboard's history. Read-only over groups.c's records. */
#include <stdio.h>
#include <string.h>

#include "groups-internal.h"
#include "head.h"
#include "macros.h"
#include "metrics.h"
#include "userdata.h"

const char *const groups_state_names[5] = { "LAUNCHING", "JOINING", "ALIVE", "DRAINING", "DELETING" };
#define N_STATES ELEMENTSOF(groups_state_names)

void groups_count_states(const struct groups *gs, const char *group, unsigned counts[5]) {
        struct list *pos, *tmp;

        memset(counts, 0, 5 * sizeof *counts);
        list_for_each_safe(pos, tmp, (struct list *)&gs->mnodes) {
                const struct mnode *m = list_entry(pos, struct mnode, link);
                if (streq(m->group, group))
                        counts[m->state]++;
        }
}

/* The lifecycle state of node `name` for the API ("LAUNCHING", ...), or NULL: not managed. */
const char *groups_node_state(const struct head *h, const char *name, double *ret_age_s, const char **ret_group) {
        const struct mnode *m = h->groups ? mnode_find(h->groups, name) : NULL;
        if (!m)
                return NULL;
        if (ret_age_s)
                *ret_age_s = wall_now() - m->launched_wall;
        if (ret_group)
                *ret_group = m->group;
        return groups_state_names[m->state];
}

/* Managed nodes that have not joined (the nodes list shows them too). */
void groups_add_unjoined(const struct head *h, cJSON *arr) {
        struct list *pos, *tmp;
        if (!h->groups)
                return;
        list_for_each_safe(pos, tmp, (struct list *)&h->groups->mnodes) {
                const struct mnode *m = list_entry(pos, struct mnode, link);
                cJSON *o;
                if (node_find((struct head *)h, m->name) || !(o = cJSON_CreateObject()))
                        continue;
                cJSON_AddStringToObject(o, "node_id", m->name);
                cJSON_AddStringToObject(o, "node_ip", m->address ? m->address : "");
                cJSON_AddStringToObject(o, "state", groups_state_names[m->state]);
                cJSON_AddBoolToObject(o, "connected", false);
                cJSON_AddStringToObject(o, "group", m->group);
                cJSON_AddNumberToObject(o, "age_s", wall_now() - m->launched_wall);
                cJSON_AddStringToObject(o, "provider_id", m->provider_id ? m->provider_id : "");
                cJSON_AddNumberToObject(o, "replicas", 0);
                cJSON_AddItemToArray(arr, o);
        }
}

cJSON *groups_json(const struct head *h) {
        const struct groups *gs = h->groups;
        cJSON *j = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(j, "groups");
        uint64_t now = now_ns();

        if (!gs || !arr)
                return j;
        cJSON_AddNumberToObject(j, "pending_replicas", gs->pending);
        cJSON_AddNumberToObject(j, "unschedulable_replicas", gs->unschedulable);
        cJSON_AddStringToObject(j, "unschedulable_reason", gs->unschedulable_reason);
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                const struct worker_group *g = &h->ccfg->groups[i];
                const struct group_run *run = &gs->g[i];
                cJSON *o = cJSON_CreateObject(), *st = o ? cJSON_AddObjectToObject(o, "nodes") : NULL;
                unsigned counts[N_STATES];
                if (!st)
                        break;
                groups_count_states(gs, g->name, counts);
                cJSON_AddStringToObject(o, "name", g->name);
                cJSON_AddStringToObject(o, "provider", g->provider ? g->provider : "");
                cJSON_AddNumberToObject(o, "min_nodes", g->min_nodes);
                cJSON_AddNumberToObject(o, "max_nodes", g->max_nodes);
                for (size_t s = 0; s < N_STATES; s++)
                        cJSON_AddNumberToObject(st, groups_state_names[s], counts[s]);
                cJSON_AddNumberToObject(o, "wanted", run->wanted);
                cJSON_AddNumberToObject(o, "launches_ok", (double)run->launches_ok);
                cJSON_AddNumberToObject(o, "launches_failed", (double)run->launches_failed);
                cJSON_AddNumberToObject(o, "launches_timeout", (double)run->launches_timeout);
                cJSON_AddNumberToObject(o, "consecutive_failures", run->failures);
                cJSON_AddStringToObject(o, "last_error", run->failures && run->last_error ? run->last_error : "");
                cJSON_AddNumberToObject(o, "backoff_s", run->backoff_until_ns > now ? (double)(run->backoff_until_ns - now) / 1e9 : 0);
                char hex[17];
                snprintf(hex, sizeof hex, "%016llx", (unsigned long long)userdata_config_hash(h->ccfg, g));
                cJSON_AddStringToObject(o, "config_hash", hex);
                cJSON_AddItemToArray(arr, o);
        }
        return j;
}

void groups_render_metrics(const struct head *h, struct buf *b) {
        const struct groups *gs = h->groups;
        if (!gs || h->ccfg->n_groups == 0)
                return;
        metrics_family(b, "serve_cluster_nodes", METRICS_GAUGE, "Nodes of worker groups by lifecycle state");
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                const char *gname = h->ccfg->groups[i].name;
                unsigned counts[N_STATES];
                groups_count_states(gs, gname, counts);
                for (size_t s = 0; s < N_STATES; s++) {
                        char lower[16];
                        size_t k;
                        for (k = 0; groups_state_names[s][k] && k < sizeof lower - 1; k++)
                                lower[k] = (char)(groups_state_names[s][k] | 0x20);
                        lower[k] = 0;
                        const char *l[] = { "group", gname, "state", lower, NULL };
                        metrics_sample(b, "serve_cluster_nodes", l, counts[s]);
                }
        }
        metrics_family(b, "serve_cluster_launches_total", METRICS_COUNTER, "Node launches by outcome");
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                const char *gname = h->ccfg->groups[i].name;
                const char *lo[] = { "group", gname, "result", "ok", NULL }, *lf[] = { "group", gname, "result", "failed", NULL },
                           *lt[] = { "group", gname, "result", "timeout", NULL };
                metrics_sample(b, "serve_cluster_launches_total", lo, (double)gs->g[i].launches_ok);
                metrics_sample(b, "serve_cluster_launches_total", lf, (double)gs->g[i].launches_failed);
                metrics_sample(b, "serve_cluster_launches_total", lt, (double)gs->g[i].launches_timeout);
        }
        metrics_family(b, "serve_cluster_group_failing", METRICS_GAUGE,
                       "Consecutive failed launches of a worker group (0: healthy)");
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                const char *l[] = { "group", h->ccfg->groups[i].name, NULL };
                metrics_sample(b, "serve_cluster_group_failing", l, gs->g[i].failures);
        }
        metrics_family(b, "serve_cluster_pending_demand", METRICS_GAUGE, "Pending replicas the cluster autoscaler sees");
        metrics_sample(b, "serve_cluster_pending_demand", NULL, gs->pending);
        metrics_family(b, "serve_cluster_unschedulable_demand", METRICS_GAUGE,
                       "Pending replicas that fit no worker group's node");
        metrics_sample(b, "serve_cluster_unschedulable_demand", NULL, gs->unschedulable);
}

/* Node counts per group and state, for the dashboard's history. */
void groups_sample(const struct head *h, void (*cb)(void *userdata, const char *group, const char *state, unsigned n),
                   void *userdata) {
        const struct groups *gs = h->groups;
        if (!gs)
                return;
        for (size_t i = 0; i < h->ccfg->n_groups; i++) {
                unsigned counts[N_STATES];
                groups_count_states(gs, h->ccfg->groups[i].name, counts);
                for (size_t s = 0; s < N_STATES; s++)
                        cb(userdata, h->ccfg->groups[i].name, groups_state_names[s], counts[s]);
        }
}
