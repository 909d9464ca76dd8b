/* libFuzzer target for the config parsers (apps.yaml, worker.yaml, cluster.yaml): any bytes
 * either parse into a config that keeps the schema's promises, or fail with a message that
 * starts with the file name. An input whose first line starts with "# worker" goes to the
 * worker.yaml parser, "# cluster" to the cluster.yaml parser, anything else to apps.yaml; the
 * marker line is a YAML comment, so seeds stay readable files. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/config.h"
#include "common/nodecfg.h"

#define NAME "fuzz.yaml"

static void check(bool cond) {
        if (!cond)
                __builtin_trap();
}

static void check_json(const char *text, bool object) {
        check(text != NULL);
        cJSON *j = cJSON_Parse(text);
        check(j != NULL);
        check(!object || cJSON_IsObject(j));
        cJSON_Delete(j);
}

static void check_config(const struct serve_config *c) {
        check(strcmp(c->path, NAME) == 0);
        check(c->proxy_location <= PROXY_DISABLED);
        check(proxy_location_to_string(c->proxy_location) != NULL);
        check(c->http.host && c->http.host[0]);
        check(c->http.port >= 1 && c->http.port <= 65535);
        check(c->http.request_timeout_s >= 0 && c->http.keep_alive_timeout_s >= 0);
        check(c->http.header_timeout_s > 0 && c->http.max_connections >= 1);
        check(c->http.max_request_body_bytes >= 1);
        check(c->n_apps <= 1024);

        for (size_t i = 0; i < c->n_apps; i++) {
                const struct app_config *a = &c->apps[i];
                check(a->name && a->name[0] && !strchr(a->name, '/'));
                check(!a->route_prefix || a->route_prefix[0] == '/');
                const char *colon = a->import_path ? strrchr(a->import_path, ':') : NULL;
                check(colon && colon != a->import_path && colon[1]);
                check_json(a->args_json, true);
                for (size_t k = 0; k < a->runtime_env.n_env_vars; k++)
                        check(strchr(a->runtime_env.env_vars[k], '=') != NULL);
                for (size_t k = 0; k < i; k++) {
                        check(strcmp(c->apps[k].name, a->name) != 0);
                        check(!a->route_prefix || !c->apps[k].route_prefix ||
                              strcmp(c->apps[k].route_prefix, a->route_prefix) != 0);
                }
                check(a->n_deployments <= 1024);
                for (size_t j = 0; j < a->n_deployments; j++) {
                        const struct deployment_config *d = &a->deployments[j];
                        check(d->name && d->name[0]);
                        check(d->num_replicas >= 0 && d->max_ongoing_requests >= 1);
                        check(d->max_queued_requests >= -1);
                        check(d->health_check_period_s > 0 && d->health_check_timeout_s > 0);
                        check(d->graceful_shutdown_timeout_s >= 0 && d->graceful_shutdown_wait_loop_s > 0);
                        check(d->actor.num_cpus >= 0 && d->actor.num_gpus >= 0);
                        check(!!(d->set & DEPLOY_SET_USER_CONFIG) == !!d->user_config_json);
                        /* num_replicas: auto autoscales too, without the field. */
                        check((!!(d->set & DEPLOY_SET_AUTOSCALING) || d->num_replicas_auto) == d->has_autoscaling);
                        if (d->user_config_json)
                                check_json(d->user_config_json, false);
                        if (d->has_autoscaling) {
                                check(d->autoscaling.min_replicas >= 0);
                                check(d->autoscaling.target_cpu_utilization >= 0 && d->autoscaling.target_cpu_utilization <= 1);
                                check(d->autoscaling.target_runqueue_delay_ms >= 0);
                                check(d->autoscaling.aggregation_function >= AUTOSCALING_AGG_MEAN &&
                                      d->autoscaling.aggregation_function <= AUTOSCALING_AGG_MIN);
                                check(d->autoscaling.min_replicas <= d->autoscaling.max_replicas);
                                check(d->autoscaling.initial_replicas == -1 ||
                                      (d->autoscaling.initial_replicas >= d->autoscaling.min_replicas &&
                                       d->autoscaling.initial_replicas <= d->autoscaling.max_replicas));
                        }
                        for (size_t k = 0; k < d->actor.n_resources; k++)
                                check(d->actor.resources[k].name && d->actor.resources[k].amount >= 0);
                        for (size_t k = 0; k < j; k++)
                                check(strcmp(a->deployments[k].name, d->name) != 0);
                }
        }
}

static void check_port(int port, bool zero_ok) {
        check(port >= (zero_ok ? 0 : 1) && port <= 65535);
}

static void check_labels(const struct node_label *l, size_t n) {
        for (size_t i = 0; i < n; i++) {
                check(l[i].key && l[i].key[0] && l[i].value);
                for (size_t k = 0; k < i; k++)
                        check(strcmp(l[k].key, l[i].key) != 0);
        }
}

static void check_resources(const struct resource_spec *s) {
        check(!s->has_num_cpus || s->num_cpus > 0);
        check(!s->has_memory || s->memory > 0);
        check(!s->has_gpu_memory || s->gpu_memory > 0);
        check(s->has_custom || s->n_custom == 0);
        for (size_t i = 0; i < s->n_custom; i++)
                check(s->custom[i].name && s->custom[i].name[0] && s->custom[i].amount >= 0);
}

static void check_worker(const struct worker_config *c) {
        check(strcmp(c->path, NAME) == 0);
        check(c->head_address && c->head_host && c->head_host[0]);
        check_port(c->head_port, false);
        check(c->join_token_file && c->join_token_file[0]);
        check(c->node_name && c->node_name[0] && !strchr(c->node_name, '/'));
        check(c->node_address && c->http_host);
        check_port(c->http_port, false);
        check_port(c->data_port, false);
        check_port(c->metrics_port, true);
        check_labels(c->labels, c->n_labels);
        check_resources(&c->resources);
}

static void check_cluster(const struct cluster_config *c) {
        check(strcmp(c->path, NAME) == 0);
        check(c->head.api_host && c->head.control_host);
        check_port(c->head.api_port, false);
        check_port(c->head.control_port, false);
        check(c->head.api_token_file && c->head.join_token_file);
        check(c->worker_heartbeat_interval_s > 0);
        check(c->worker_timeout_s > c->worker_heartbeat_interval_s);
        check(c->autoscaler_interval_s > 0);
        check(c->autoscaler_max_concurrent_launches >= 1 && c->autoscaler_reconcile_interval_s > 0);
        check(c->autoscaler_batch_idle_s >= 0 && c->autoscaler_batch_max_s >= c->autoscaler_batch_idle_s);
        check(!c->autoscaler_head_address || (c->autoscaler_head_host && c->autoscaler_head_port > 0));
        for (size_t i = 0; i < c->n_groups; i++) {
                const struct worker_group *g = &c->groups[i];
                check(g->name && g->name[0]);
                check(g->min_nodes >= 0 && g->max_nodes >= g->min_nodes);
                check(g->idle_timeout_s >= 0 && g->boot_timeout_s > 0 && g->max_surge >= 1);
                check(g->cost == -1 || g->cost >= 0);
                check(!g->provider || (g->provider[0] && !strchr(g->provider, '/')));
                check(!g->provider || (g->resources.has_num_cpus && c->autoscaler_head_address));
                check(!g->apt_source || strncmp(g->apt_source, "deb ", 4) == 0);
                check(g->n_provider_options <= NODECFG_MAX_PROVIDER_OPTIONS);
                check_labels(g->labels, g->n_labels);
                check_resources(&g->resources);
                for (size_t k = 0; k < i; k++)
                        check(strcmp(c->groups[k].name, g->name) != 0);
        }
}

static void check_error(int r, char *error) {
        check(r < 0);
        check(error && strncmp(error, NAME ":", strlen(NAME ":")) == 0);
        free(error);
}

static bool starts_with(const uint8_t *data, size_t size, const char *prefix) {
        size_t n = strlen(prefix);
        return size >= n && memcmp(data, prefix, n) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *text = (const char *) data;
        char *error = NULL;
        int r;

        if (starts_with(data, size, "# worker")) {
                struct worker_config *w = NULL;
                r = worker_config_parse(NAME, text, size, &w, &error);
                if (r == 0) {
                        check(w != NULL);
                        check_worker(w);
                        worker_config_free(w);
                } else
                        check_error(r, error);
        } else if (starts_with(data, size, "# cluster")) {
                struct cluster_config *k = NULL;
                r = cluster_config_parse(NAME, text, size, &k, &error);
                if (r == 0) {
                        check(k != NULL);
                        check_cluster(k);
                        cluster_config_free(k);
                } else
                        check_error(r, error);
        } else {
                struct serve_config *c = NULL;
                r = config_parse(NAME, text, size, &c, &error);
                if (r == 0) {
                        check(c != NULL);
                        check_config(c);
                        config_free(c);
                } else
                        check_error(r, error);
        }
        return 0;
}
