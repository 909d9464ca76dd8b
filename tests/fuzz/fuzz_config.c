/* libFuzzer target for the apps.yaml parser: any bytes either parse into a config that keeps
 * the schema's promises, or fail with a message that starts with the file name. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common/config.h"

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
                        check(!!(d->set & DEPLOY_SET_AUTOSCALING) == d->has_autoscaling);
                        if (d->user_config_json)
                                check_json(d->user_config_json, false);
                        if (d->has_autoscaling) {
                                check(d->autoscaling.min_replicas >= 0);
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct serve_config *c = NULL;
        char *error = NULL;

        int r = config_parse(NAME, (const char *) data, size, &c, &error);
        if (r == 0) {
                check(c != NULL);
                check_config(c);
                config_free(c);
        } else {
                check(r < 0);
                check(error && strncmp(error, NAME ":", strlen(NAME ":")) == 0);
                free(error);
        }
        return 0;
}
