/* What the head keeps across restarts (state.c writes it atomically): the config and where it
 * came from, the config epoch, the nodes and their resources, and the placement. A restarted
 * head counts the nodes of its last run as alive until worker_timeout_s passes without them and
 * keeps every replica where it runs. */
#include <stdio.h>
#include <string.h>

#include "head.h"
#include "log.h"
#include "macros.h"
#include "state.h"

void save_state(struct head *h) {
        cJSON *s = cJSON_CreateObject(), *nodes, *assign;
        struct list *pos, *tmp;
        uint64_t t0 = now_ns();
        int r;

        h->state_dirty = false;

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
        trust_save(h, s);
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
        /* The next coalesced write waits at least ten times this one's cost. */
        h->state_next_ns = now_ns() + MAX(STATE_MIN_INTERVAL_NS, 10 * (now_ns() - t0));
}

void save_state_soon(struct head *h) {
        h->state_dirty = true;
}

void save_state_flush(struct head *h, bool force) {
        if (h->state_dirty && (force || now_ns() >= h->state_next_ns))
                save_state(h);
}

void recover(struct head *h) {
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
        trust_recover(h, s);
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
        /* After the assignment: autoscaled deployments start from the replicas placed. */
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

        cJSON_Delete(s);
}
