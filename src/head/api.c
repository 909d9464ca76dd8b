/* The REST API (Ray Serve's paths where they exist): GET applications, nodes, config and
 * /metrics for anyone who can reach the port; PUT and DELETE of the applications with the API
 * token. Views are built from the latest reports; nothing here changes state but deploys. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "head.h"
#include "log.h"
#include "macros.h"
#include "metrics.h"
#include "report.h"
#include "yamltree.h"

static bool authorized(struct head *h, const struct httpd_request *rq) {
        const struct http_header *a = http_request_header(rq->req, "Authorization");
        char tok[4200];

        if (!a || a->value_len < 7 || a->value_len - 7 >= sizeof tok || strncasecmp(a->value, "Bearer ", 7) != 0)
                return false;
        memcpy(tok, a->value + 7, a->value_len - 7);
        tok[a->value_len - 7] = 0;
        return token_equal(tok, h->api_token);
}

/* A request that changes something without the token: refused (401) and logged. */
static bool refuse_unauthorized(struct head *h, const struct httpd_request *rq, struct httpd_response *resp) {
        if (authorized(h, rq))
                return false;
        log_warning("%.*s %.*s from %s refused: missing or invalid bearer token", (int)rq->req->method_len, rq->req->method,
                    (int)MIN(rq->req->path_len, 200u), rq->req->path, rq->peer);
        httpd_respond_error(resp, 401, "missing or invalid bearer token");
        return true;
}

static const char *replica_state_of(const cJSON *r) { return cJSON_GetStringValue(cJSON_GetObjectItem(r, "state")) ?: "?"; }

/* Application `name`'s entry in the applied config (as JSON), or NULL. A config with one
 * unnamed application calls it "default". */
static cJSON *app_config_of(const struct head *h, const char *name) {
        cJSON *apps = cJSON_GetObjectItemCaseSensitive(h->cfg_json, "applications"), *it;
        cJSON_ArrayForEach(it, apps) {
                const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
                if (streq(n ?: "default", name))
                        return it;
        }
        return NULL;
}

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
        if (h->ccfg->n_groups > 0) {
                /* Worker groups, for `serve status`: a group that keeps failing shows there. */
                cJSON *g = groups_json(h);
                cJSON *arr = g ? cJSON_DetachItemFromObject(g, "groups") : NULL;
                if (arr)
                        cJSON_AddItemToObject(j, "worker_groups", arr);
                cJSON_Delete(g);
        }
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
                const cJSON *ac = app_config_of(h, as->name);
                cJSON_AddItemToObject(a, "config", ac ? cJSON_Duplicate(ac, true) : cJSON_CreateNull());
                deps = cJSON_AddObjectToObject(a, "deployments");
                for (size_t i = 0; i < h->spec->n_deps; i++) {
                        const struct dep_spec *d = &h->spec->deps[i];
                        if (!streq(d->app, as->name))
                                continue;
                        cJSON *dj = cJSON_AddObjectToObject(deps, d->name), *reps, *pend;
                        int running = 0, total = 0;
                        cJSON_AddStringToObject(dj, "name", d->name);
                        cJSON_AddNumberToObject(dj, "target_replicas", d->replicas);
                        struct scaler_status ss;
                        if (scaler_status(h->scaler, d->app, d->name, &ss)) {
                                cJSON *aj = cJSON_AddObjectToObject(dj, "autoscaling");
                                cJSON_AddNumberToObject(aj, "min_replicas", ss.min_replicas);
                                cJSON_AddNumberToObject(aj, "max_replicas", ss.max_replicas);
                                cJSON_AddNumberToObject(aj, "target_replicas", ss.target);
                                cJSON_AddNumberToObject(aj, "load", ss.load);
                                cJSON_AddStringToObject(aj, "last_decision", ss.reason);
                                if (ss.decided_at > 0) /* the scaler's clock is monotonic */
                                        cJSON_AddNumberToObject(aj, "decided_at",
                                                                wall_now() - ((double)now_ns() / 1e9 - ss.decided_at));
                                cJSON_AddNumberToObject(aj, "decisions_up", (double)ss.decisions_up);
                                cJSON_AddNumberToObject(aj, "decisions_down", (double)ss.decisions_down);
                        }
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
                                        const cJSON *rs = cJSON_GetObjectItem(it, "restarts");
                                        cJSON_AddNumberToObject(r, "restarts", cJSON_IsNumber(rs) ? rs->valuedouble : 0);
                                        if (cJSON_GetObjectItem(it, "limits"))
                                                cJSON_AddStringToObject(r, "limits", cJSON_GetStringValue(cJSON_GetObjectItem(it, "limits")));
                                        if (cJSON_GetObjectItem(it, "gpus"))
                                                cJSON_AddStringToObject(r, "gpus", cJSON_GetStringValue(cJSON_GetObjectItem(it, "gpus")));
                                        cJSON_AddItemToArray(reps, r);
                                        total++;
                                        running += replica_is_running(it, d->version);
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
                        /* Why it is not healthy: pending replicas, else its latest replica failure. */
                        _cleanup_free_ char *key = dep_key(d->app, d->name);
                        const char *failure = key && !streq(status, "HEALTHY")
                                                      ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(h->dep_failures, key))
                                                      : NULL;
                        cJSON_AddStringToObject(dj, "message", as2 && as2->pending ? as2->pending_reason ?: ""
                                                               : failure               ? failure
                                                                                       : "");
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
                struct node_usage u = node_usage_of(h, n);
                cJSON_AddStringToObject(o, "node_id", n->name);
                cJSON_AddStringToObject(o, "node_ip", n->address);
                double age_s = 0;
                const char *group = node_group(n);
                const char *life = groups_node_state(h, n->name, &age_s, &group);
                /* A group's node says where it is in its life (ALIVE, DRAINING, ...) while alive. */
                cJSON_AddStringToObject(o, "state", !n->alive ? "DEAD" : life ? life : "ALIVE");
                if (life)
                        cJSON_AddNumberToObject(o, "age_s", age_s);
                cJSON_AddBoolToObject(o, "connected", n->nc != NULL);
                cJSON_AddBoolToObject(o, "is_head_node", n->head_node);
                cJSON_AddStringToObject(o, "group", group);
                cJSON_AddItemToObject(o, "labels", cJSON_Duplicate(n->labels, true));
                tot = cJSON_AddObjectToObject(o, "resources_total");
                cJSON_AddNumberToObject(tot, "CPU", n->cpus);
                cJSON_AddNumberToObject(tot, "memory", (double)n->memory);
                cJSON_AddNumberToObject(tot, "GPU", n->n_gpus);
                for (size_t i = 0; i < n->n_custom; i++)
                        cJSON_AddNumberToObject(tot, n->custom[i].name, n->custom[i].amount);
                avail = cJSON_AddObjectToObject(o, "resources_available");
                cJSON_AddNumberToObject(avail, "CPU", n->cpus - u.cpus);
                cJSON_AddNumberToObject(avail, "memory", (double)n->memory - u.memory);
                cJSON_AddNumberToObject(avail, "GPU", n->n_gpus - u.gpus);
                cJSON_AddNumberToObject(o, "replicas", u.replicas);
                cJSON_AddNumberToObject(o, "http_port", n->http_port);
                cJSON_AddNumberToObject(o, "reports", (double)n->n_reports);
                cJSON_AddNumberToObject(o, "metrics_port", n->metrics_port);
                cJSON_AddNumberToObject(o, "last_heartbeat_s_ago", n->last_seen_ns ? (double)(now - n->last_seen_ns) / 1e9 : -1);
                cJSON_AddItemToArray(arr, o);
        }
        groups_add_unjoined(h, arr);
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
        trust_render_metrics(h, &resp->body);
        groups_render_metrics(h, &resp->body);
        (void)scaler_render_metrics(h->scaler, &resp->body);
        free(names);
        free(reports);
}

/* DELETE /api/cluster/nodes/NAME: the node leaves the cluster; its certificates are revoked. */
static void remove_node(struct head *h, const struct httpd_request *rq, const char *rest, size_t len,
                        struct httpd_response *resp) {
        char name[256];

        if (refuse_unauthorized(h, rq, resp))
                return;
        snprintf(name, sizeof name, "%.*s", (int)MIN(len, sizeof name - 1), rest);
        if (len >= sizeof name || strlen(name) != len || !node_name_valid(name)) {
                httpd_respond_error(resp, 400, "not a node name");
                return;
        }
        int r = nodes_remove(h, name);
        if (r == -ENOENT) {
                httpd_respond_error(resp, 404, "no such node");
                return;
        }
        if (r < 0) {
                httpd_respond_error(resp, 500, "cannot remove the node");
                return;
        }
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "removed", name);
        cJSON_AddBoolToObject(j, "certificates_revoked", h->trust != NULL);
        httpd_respond_json(resp, 200, j);
        cJSON_Delete(j);
}

/* DELETE /api/serve/applications/NAME: the running config without that application. */
static void shutdown_app(struct head *h, const struct httpd_request *rq, const char *rest, size_t len,
                         struct httpd_response *resp) {
        char name[YT_MAX_NAME + 1];

        if (refuse_unauthorized(h, rq, resp))
                return;
        snprintf(name, sizeof name, "%.*s", (int)MIN(len, sizeof name - 1), rest);
        cJSON *cfg = cJSON_Duplicate(h->cfg_json, true), *apps = cJSON_GetObjectItemCaseSensitive(cfg, "applications"), *it;
        size_t i = 0;
        bool found = false;
        cJSON_ArrayForEach(it, apps) {
                const char *n = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "name"));
                if (len < sizeof name && streq(n ?: "default", name)) {
                        found = true;
                        break;
                }
                i++;
        }
        if (!found) {
                cJSON_Delete(cfg);
                httpd_respond_error(resp, 404, "no such application");
                return;
        }
        cJSON_DeleteItemFromArray(apps, (int)i);
        char *text = cJSON_Print(cfg);
        cJSON_Delete(cfg);
        if (!text) {
                httpd_respond_error(resp, 500, "out of memory");
                return;
        }
        log_info("application %s shut down by %s", name, rq->peer);
        deploy_from_api(h, rq, text, strlen(text), resp);
        cJSON_free(text);
}

void on_api(void *userdata, const struct httpd_request *rq, struct httpd_response *resp) {
        struct head *h = userdata;
        const char *rest;
        size_t rest_len;

        if (dashboard_handle(h, rq, resp))
                return;
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
        } else if (httpd_is(rq, "GET", "/api/cluster/groups")) {
                cJSON *j = groups_json(h);
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
        } else if (httpd_prefix_is(rq, "DELETE", "/api/cluster/nodes/", &rest, &rest_len)) {
                remove_node(h, rq, rest, rest_len, resp);
        } else if (put || del) {
                if (!refuse_unauthorized(h, rq, resp))
                        deploy_from_api(h, rq, put ? rq->body : NULL, put ? rq->body_len : 0, resp);
        } else if (httpd_prefix_is(rq, "DELETE", "/api/serve/applications/", &rest, &rest_len)) {
                shutdown_app(h, rq, rest, rest_len, resp);
        } else if (httpd_is(rq, "POST", "/api/serve/reload")) {
                if (refuse_unauthorized(h, rq, resp))
                        return;
                log_info("reload of %s asked by %s", h->apps_path, rq->peer);
                h->reload = true;
                cJSON *j = cJSON_CreateObject();
                cJSON_AddStringToObject(j, "reloading", h->apps_path);
                httpd_respond_json(resp, 202, j);
                cJSON_Delete(j);
        } else
                httpd_respond_error(resp, 404, "no such endpoint");
}
