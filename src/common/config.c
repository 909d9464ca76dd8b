/* apps.yaml parser: the Ray Serve schema walked over a yamltree (yamltree.h builds the tree,
 * with line:column on every node, and formats the errors). The first error stops the parse: an
 * operator fixes one thing at a time, and a reload keeps the old config until the file is
 * valid. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"
#include "common/yamltree.h"
#include "macros.h"

#define CONFIG_MAX_FILE_SIZE (4u << 20)
#define CONFIG_MAX_APPS 1024
#define CONFIG_MAX_DEPLOYMENTS 1024
#define CONFIG_MAX_RESOURCES 256
#define CONFIG_MAX_ENV_VARS 4096

/* ---- schema ---------------------------------------------------------------------------------- */

void http_options_defaults(struct http_options *h) {
        /* h->host is malloc'd so that config_free() can free a parsed one and a default alike;
         * it is NULL only when out of memory (config_parse() checks). */
        *h = (struct http_options){
                .host = strdup("0.0.0.0"),
                .port = 8000,
                .request_timeout_s = 0,
                .keep_alive_timeout_s = 5,
                .max_request_body_bytes = 64u << 20,
                .header_timeout_s = 10,
                .max_connections = 16384,
                .max_buffered_request_bytes = 256u << 20,
        };
}

/* Overwrites all of *d (name and user_config_json become NULL). */
void deployment_config_defaults(struct deployment_config *d) {
        *d = (struct deployment_config){
                .num_replicas = 1,
                .max_ongoing_requests = 5,
                .max_queued_requests = -1,
                .health_check_period_s = 10,
                .health_check_timeout_s = 30,
                .graceful_shutdown_timeout_s = 20,
                .graceful_shutdown_wait_loop_s = 2,
                .max_replicas_per_node = 0,
                .actor = { .num_cpus = 1, .num_gpus = 0, .memory = 0 },
                .autoscaling = {
                        .min_replicas = 1,
                        .max_replicas = 1,
                        .initial_replicas = -1,
                        .target_ongoing_requests = 2,
                        .metrics_interval_s = 10,
                        .look_back_period_s = 30,
                        .upscale_delay_s = 30,
                        .downscale_delay_s = 600,
                        .upscaling_factor = 1,
                        .downscaling_factor = 1,
                        .downscale_to_zero_delay_s = -1,
                        .aggregation_function = AUTOSCALING_AGG_MEAN,
                },
        };
}

const char *proxy_location_to_string(enum proxy_location l) {
        switch (l) {
        case PROXY_EVERY_NODE:
                return "EveryNode";
        case PROXY_HEAD_ONLY:
                return "HeadOnly";
        case PROXY_DISABLED:
                return "Disabled";
        }
        return NULL;
}

/* http_options */

static const char *const http_keys[] = {
        "host", "port", "request_timeout_s", "keep_alive_timeout_s", "max_request_body_bytes",
        "header_timeout_s", "max_connections", "max_buffered_request_bytes",
};

/* A positive number of bytes. */
static int get_byte_count(struct yt_parser *p, const struct yt_node *v, uint64_t *ret) {
        long long n;
        int r = yt_scalar_int64(v, &n);

        if (r == -ERANGE)
                return yt_fail(p, v, "too large: %s", YT_DESCRIBE(v));
        if (r < 0 || n < 1)
                return yt_fail(p, v, "must be a positive number of bytes, got %s", YT_DESCRIBE(v));
        *ret = (uint64_t)n;
        return 0;
}

static int http_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct http_options *h = userdata;

        switch (idx) {
        case 0:
                return yt_get_string(p, v, false, &h->host);
        case 1:
                return yt_get_int(p, v, 1, 65535, "a port number between 1 and 65535", &h->port);
        case 2:
                return yt_get_double(p, v, false, &h->request_timeout_s);
        case 3:
                return yt_get_double(p, v, true, &h->keep_alive_timeout_s);
        case 4:
                return get_byte_count(p, v, &h->max_request_body_bytes);
        case 5:
                return yt_get_double(p, v, false, &h->header_timeout_s);
        case 6:
                return yt_get_int(p, v, 1, INT_MAX, "a positive integer", &h->max_connections);
        case 7:
                return get_byte_count(p, v, &h->max_buffered_request_bytes);
        }
        return 0;
}

/* ray_actor_options */

static const char *const actor_keys[] = { "num_cpus", "num_gpus", "memory", "resources" };

static int parse_resource(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val, void *item,
                          void *userdata) {
        struct custom_resource *res = item;
        int r;

        if (yt_scalar_is(key, "CPU") || yt_scalar_is(key, "GPU") || yt_scalar_is(key, "memory"))
                return yt_fail(p, key, "set this with num_cpus, num_gpus or memory instead");
        r = yt_get_double(p, val, true, &res->amount);
        if (r < 0)
                return r;
        res->name = strdup(key->text);
        return res->name ? 0 : -ENOMEM;
}

int config_parse_resource_map(struct yt_parser *p, const struct yt_node *v, size_t max,
                              struct custom_resource **ret_items, size_t *ret_n) {
        return yt_parse_map(p, v, "resource", "custom resources", max, sizeof **ret_items, (void **)ret_items, ret_n,
                            parse_resource, NULL);
}

static int actor_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct actor_options *a = userdata;
        double mem;
        int r;

        switch (idx) {
        case 0:
                return yt_get_double(p, v, true, &a->num_cpus);
        case 1:
                return yt_get_double(p, v, true, &a->num_gpus);
        case 2:
                r = yt_get_double(p, v, true, &mem);
                if (r < 0)
                        return r;
                if (mem >= 18446744073709551616.0)
                        return yt_fail(p, v, "too large: %s", YT_DESCRIBE(v));
                a->memory = (uint64_t) mem;
                return 0;
        case 3:
                return config_parse_resource_map(p, v, CONFIG_MAX_RESOURCES, &a->resources, &a->n_resources);
        }
        return 0;
}

/* autoscaling_config */

static const char *const autoscaling_keys[] = {
        "min_replicas", "max_replicas", "initial_replicas", "target_ongoing_requests",
        "metrics_interval_s", "look_back_period_s", "upscale_delay_s", "downscale_delay_s",
        "upscaling_factor", "downscaling_factor", "smoothing_factor", "downscale_to_zero_delay_s",
        "aggregation_function", "target_cpu_utilization", "target_runqueue_delay_ms",
        "upscale_smoothing_factor", "downscale_smoothing_factor",
};

struct autoscaling_state {
        struct autoscaling_config *a;
        const struct yt_node *min, *max, *initial;
        bool upscaling_set, downscaling_set;
        double smoothing;
        bool smoothing_set;
};

static int autoscaling_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                             void *userdata) {
        struct autoscaling_state *s = userdata;
        struct autoscaling_config *a = s->a;
        int r = 0;

        switch (idx) {
        case 0:
                s->min = v;
                return yt_get_int(p, v, 0, INT_MAX, "a non-negative integer", &a->min_replicas);
        case 1:
                s->max = v;
                return yt_get_int(p, v, 1, INT_MAX, "a positive integer", &a->max_replicas);
        case 2:
                s->initial = v;
                return yt_get_int(p, v, 0, INT_MAX, "a non-negative integer", &a->initial_replicas);
        case 3:
                return yt_get_double(p, v, false, &a->target_ongoing_requests);
        case 4:
                return yt_get_double(p, v, false, &a->metrics_interval_s);
        case 5:
                return yt_get_double(p, v, false, &a->look_back_period_s);
        case 6:
                return yt_get_double(p, v, true, &a->upscale_delay_s);
        case 7:
                return yt_get_double(p, v, true, &a->downscale_delay_s);
        case 8:
                s->upscaling_set = true;
                return yt_get_double(p, v, false, &a->upscaling_factor);
        case 9:
                s->downscaling_set = true;
                return yt_get_double(p, v, false, &a->downscaling_factor);
        case 10:
                s->smoothing_set = true;
                return yt_get_double(p, v, false, &s->smoothing);
        case 11:
                return yt_get_double(p, v, true, &a->downscale_to_zero_delay_s);
        case 12:
                if (yt_scalar_is(v, "mean") || yt_scalar_is(v, "MEAN"))
                        a->aggregation_function = AUTOSCALING_AGG_MEAN;
                else if (yt_scalar_is(v, "max") || yt_scalar_is(v, "MAX"))
                        a->aggregation_function = AUTOSCALING_AGG_MAX;
                else if (yt_scalar_is(v, "min") || yt_scalar_is(v, "MIN"))
                        a->aggregation_function = AUTOSCALING_AGG_MIN;
                else
                        return yt_fail(p, v, "must be mean, max or min");
                return 0;
        case 13:
                r = yt_get_double(p, v, false, &a->target_cpu_utilization);
                if (r >= 0 && a->target_cpu_utilization > 1)
                        r = yt_fail(p, v, "must be a share of the replica's num_cpus, in (0, 1]");
                return r;
        case 14:
                return yt_get_double(p, v, false, &a->target_runqueue_delay_ms);
        case 15: /* Ray's older names for the two factors: the newer ones win */
                if (!s->upscaling_set)
                        r = yt_get_double(p, v, false, &a->upscaling_factor);
                s->upscaling_set = true;
                return r;
        case 16:
                if (!s->downscaling_set)
                        r = yt_get_double(p, v, false, &a->downscaling_factor);
                s->downscaling_set = true;
                return r;
        }
        return 0;
}

/* Parsed once the whole deployment has been (num_replicas: "auto" changes max_replicas' default). */
static int parse_autoscaling(struct yt_parser *p, const struct yt_node *v, bool num_replicas_auto,
                             struct autoscaling_config *a) {
        struct autoscaling_state s = { .a = a };
        int r;

        if (num_replicas_auto)
                a->max_replicas = AUTOSCALING_AUTO_MAX_REPLICAS;
        r = v ? yt_expect_mapping(p, v) : 0;
        if (r >= 0 && v)
                r = yt_parse_fields(p, v, autoscaling_keys, ELEMENTSOF(autoscaling_keys),
                                    autoscaling_field, &s);
        if (r < 0)
                return r;

        /* smoothing_factor is Ray's older name for both factors; the specific keys win. */
        if (s.smoothing_set) {
                if (!s.upscaling_set)
                        a->upscaling_factor = s.smoothing;
                if (!s.downscaling_set)
                        a->downscaling_factor = s.smoothing;
        }

        size_t saved;
        if (a->max_replicas < a->min_replicas) {
                if (s.max) {
                        saved = yt_path_push(p, ".max_replicas");
                        r = yt_fail(p, s.max, "must be at least min_replicas (%d), got %d",
                                    a->min_replicas, a->max_replicas);
                } else {
                        saved = yt_path_push(p, ".min_replicas");
                        r = yt_fail(p, s.min, "must not exceed max_replicas (%d, the default); "
                                    "set max_replicas too",
                                    a->max_replicas);
                }
                yt_path_pop(p, saved);
                return r;
        }
        if (s.initial && (a->initial_replicas < a->min_replicas ||
                          a->initial_replicas > a->max_replicas)) {
                saved = yt_path_push(p, ".initial_replicas");
                r = yt_fail(p, s.initial, "must be between min_replicas (%d) and max_replicas (%d), got %d",
                            a->min_replicas, a->max_replicas, a->initial_replicas);
                yt_path_pop(p, saved);
                return r;
        }
        return 0;
}

int config_parse_autoscaling_json(const char *json, struct autoscaling_config *ret, char **ret_error) {
        struct yt_parser p = { .name = "autoscaling_config" };
        struct yt_node *root = NULL;
        struct deployment_config def;
        int r;

        deployment_config_defaults(&def);
        *ret = def.autoscaling;
        /* JSON is YAML: the same schema checks apply as for apps.yaml's autoscaling_config. */
        r = yt_load_tree(&p, json, strlen(json), &root);
        if (r >= 0 && !root)
                r = yt_fail_at(&p, 1, 1, "must be a mapping");
        if (r >= 0)
                r = parse_autoscaling(&p, root, false, ret);
        yt_node_free(root);
        if (r < 0 && ret_error) {
                *ret_error = p.error ? p.error : NULL;
                p.error = NULL;
        }
        free(p.error);
        return r < 0 ? r : 0;
}

/* deployments[] */

static const char *const deployment_keys[] = {
        "name", "num_replicas", "max_ongoing_requests", "max_queued_requests", "user_config",
        "autoscaling_config", "health_check_period_s", "health_check_timeout_s",
        "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s", "max_replicas_per_node",
        "ray_actor_options",
};

struct deployment_state {
        struct deployment_config *d;
        const struct yt_node *name, *num_replicas, *autoscaling;
};

static int deployment_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                            void *userdata) {
        struct deployment_state *s = userdata;
        struct deployment_config *d = s->d;
        int r;

        switch (idx) {
        case 0:
                s->name = v;
                return yt_get_name(p, v, &d->name);
        case 1:
                s->num_replicas = v;
                d->set |= DEPLOY_SET_NUM_REPLICAS;
                if (yt_scalar_is(v, "auto")) {
                        d->num_replicas_auto = true;
                        return 0;
                }
                return yt_get_int(p, v, 0, INT_MAX, "a non-negative integer or \"auto\"",
                                  &d->num_replicas);
        case 2:
                d->set |= DEPLOY_SET_MAX_ONGOING;
                return yt_get_int(p, v, 1, INT_MAX, "a positive integer", &d->max_ongoing_requests);
        case 3:
                d->set |= DEPLOY_SET_MAX_QUEUED;
                return yt_get_int(p, v, -1, INT_MAX, "-1 (no limit) or a non-negative integer",
                                  &d->max_queued_requests);
        case 4:
                /* null is Ray's "no user_config", not a config that is null. */
                if (yt_is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_USER_CONFIG;
                return yt_get_json(p, v, &d->user_config_json);
        case 5:
                if (yt_is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_AUTOSCALING;
                d->has_autoscaling = true;
                s->autoscaling = v; /* parsed at the end: it depends on num_replicas */
                return 0;
        case 6:
                d->set |= DEPLOY_SET_HEALTH_PERIOD;
                return yt_get_double(p, v, false, &d->health_check_period_s);
        case 7:
                d->set |= DEPLOY_SET_HEALTH_TIMEOUT;
                return yt_get_double(p, v, false, &d->health_check_timeout_s);
        case 8:
                d->set |= DEPLOY_SET_GRACEFUL_TIMEOUT;
                return yt_get_double(p, v, true, &d->graceful_shutdown_timeout_s);
        case 9:
                d->set |= DEPLOY_SET_GRACEFUL_WAIT_LOOP;
                return yt_get_double(p, v, false, &d->graceful_shutdown_wait_loop_s);
        case 10:
                d->set |= DEPLOY_SET_MAX_REPLICAS_PER_NODE;
                return yt_get_int(p, v, 1, INT_MAX, "a positive integer", &d->max_replicas_per_node);
        case 11:
                if (yt_is_null(v))
                        return 0;
                d->set |= DEPLOY_SET_ACTOR_OPTIONS;
                r = yt_expect_mapping(p, v);
                if (r < 0)
                        return r;
                return yt_parse_fields(p, v, actor_keys, ELEMENTSOF(actor_keys), actor_field,
                                       &d->actor);
        }
        return 0;
}

static int parse_deployment(struct yt_parser *p, const struct yt_node *v, size_t i, void *userdata) {
        struct app_config *app = userdata;
        struct deployment_config *d = &app->deployments[i];
        struct deployment_state s = { .d = d };
        int r;

        deployment_config_defaults(d);
        d->line = v->line;
        d->column = v->column;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_parse_fields(p, v, deployment_keys, ELEMENTSOF(deployment_keys),
                                    deployment_field, &s);
        if (r < 0)
                return r;

        size_t saved = 0;
        if (!d->name) {
                saved = yt_path_push(p, ".name");
                r = yt_fail(p, v,
                            "required (the name the application's code gives this deployment)");
        } else if (d->has_autoscaling && (d->set & DEPLOY_SET_NUM_REPLICAS) && !d->num_replicas_auto) {
                saved = yt_path_push(p, ".num_replicas");
                r = yt_fail(p, s.num_replicas,
                            "must not be a number when autoscaling_config is set (use \"auto\" or remove one)");
        } else if (d->has_autoscaling || d->num_replicas_auto) {
                saved = yt_path_push(p, ".autoscaling_config");
                r = parse_autoscaling(p, s.autoscaling, d->num_replicas_auto, &d->autoscaling);
                d->has_autoscaling = true;
                if (r >= 0)
                        yt_path_pop(p, saved);
        }
        if (r >= 0)
                for (size_t k = 0; k < i; k++)
                        if (streq(app->deployments[k].name, d->name)) {
                                saved = yt_path_push(p, ".name");
                                r = yt_fail(p, s.name, "duplicate deployment name \"%s\" (also at line %d)",
                                            d->name, app->deployments[k].line);
                                break;
                        }
        if (r < 0)
                yt_path_pop(p, saved);
        return r;
}

/* runtime_env */

static const char *const runtime_env_keys[] = { "working_dir", "env_vars", "pip", "py_executable" };

static int parse_env_var(struct yt_parser *p, const struct yt_node *key, const struct yt_node *val, void *item,
                         void *userdata) {
        char **kv = item;
        _cleanup_free_ char *value = NULL;
        int r;

        if (memchr(key->text, '=', key->len))
                return yt_fail(p, key, "variable names must not contain '='");
        if (val->type == YT_SCALAR && yt_is_null(val))
                return yt_fail(p, val, "must be a string, got %s (write \"\" for an empty value)", YT_DESCRIBE(val));
        r = yt_get_string(p, val, true, &value);
        if (r < 0)
                return r;
        return asprintf(kv, "%s=%s", key->text, value) < 0 ? (*kv = NULL, -ENOMEM) : 0;
}

static int parse_env_vars(struct yt_parser *p, const struct yt_node *v, struct runtime_env *e) {
        return yt_parse_map(p, v, "variable", "environment variables", CONFIG_MAX_ENV_VARS, sizeof *e->env_vars,
                            (void **)&e->env_vars, &e->n_env_vars, parse_env_var, NULL);
}

static int runtime_env_field(struct yt_parser *p, unsigned idx, const struct yt_node *v,
                             void *userdata) {
        struct runtime_env *e = userdata;

        switch (idx) {
        case 0:
                return yt_get_string(p, v, false, &e->working_dir);
        case 1:
                return parse_env_vars(p, v, e);
        case 2:
                /* Ray installs these from PyPI per application; a serve node reaches no package
                 * index, and a replica should not download code at start anyway. */
                return yt_fail(p, v, "is not supported: nodes reach no package index; install packages "
                                     "with apt (python3-...), or into a virtualenv and name its interpreter "
                                     "in runtime_env.py_executable");
        default: {
                int r = yt_get_string(p, v, false, &e->py_executable);
                if (r >= 0 && e->py_executable[0] != '/')
                        r = yt_fail(p, v, "must be an absolute path (a virtualenv's bin/python)");
                return r;
        }
        }
}

/* applications[] */

static const char *const app_keys[] = {
        "name", "route_prefix", "import_path", "args", "runtime_env", "deployments",
};

struct app_state {
        struct app_config *app;
        const struct yt_node *name, *route_prefix, *import_path;
        bool route_set;
};

static int check_route_prefix(struct yt_parser *p, const struct yt_node *v, const char *s) {
        if (s[0] != '/')
                return yt_fail(p, v, "must start with '/', got %s", YT_DESCRIBE(v));
        if (s[1] && s[strlen(s) - 1] == '/')
                return yt_fail(p, v, "must not end with '/' (except \"/\" itself), got %s",
                               YT_DESCRIBE(v));
        for (const char *c = s; *c; c++)
                if ((unsigned char) *c <= 0x20 || *c == 0x7f || strchr("{}?#", *c))
                        return yt_fail(p, v, "must not contain spaces, control characters, "
                                       "'{', '}', '?' or '#', got %s",
                                       YT_DESCRIBE(v));
        return 0;
}

static int parse_deployments(struct yt_parser *p, const struct yt_node *v, struct app_config *app) {
        return yt_parse_list(p, v, "deployments", CONFIG_MAX_DEPLOYMENTS, sizeof *app->deployments,
                             (void **)&app->deployments, &app->n_deployments, parse_deployment, app);
}

static int app_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct app_state *s = userdata;
        struct app_config *app = s->app;
        int r;

        switch (idx) {
        case 0:
                s->name = v;
                return yt_get_name(p, v, &app->name);
        case 1:
                s->route_set = true;
                s->route_prefix = v;
                if (yt_is_null(v) || yt_scalar_is(v, "None"))
                        return 0; /* no HTTP route: reachable through handles only */
                r = yt_get_string(p, v, false, &app->route_prefix);
                if (r < 0)
                        return r;
                return check_route_prefix(p, v, app->route_prefix);
        case 2: {
                s->import_path = v;
                r = yt_get_string(p, v, false, &app->import_path);
                if (r < 0)
                        return r;
                const char *colon = strrchr(app->import_path, ':');
                if (!colon || colon == app->import_path || !colon[1])
                        return yt_fail(p, v, "must be \"MODULE:SYMBOL\" (e.g. libecho.so:app), got %s",
                                       YT_DESCRIBE(v));
                return 0;
        }
        case 3:
                if (yt_is_null(v))
                        return 0;
                if (v->type != YT_MAPPING)
                        return yt_fail(p, v, "must be a mapping, got %s", YT_DESCRIBE(v));
                return yt_get_json(p, v, &app->args_json);
        case 4:
                if (yt_is_null(v))
                        return 0;
                r = yt_expect_mapping(p, v);
                if (r < 0)
                        return r;
                return yt_parse_fields(p, v, runtime_env_keys, ELEMENTSOF(runtime_env_keys),
                                       runtime_env_field, &app->runtime_env);
        case 5:
                return parse_deployments(p, v, app);
        }
        return 0;
}

static int parse_app(struct yt_parser *p, const struct yt_node *v, size_t i, void *userdata) {
        struct serve_config *c = userdata;
        struct app_config *app = &c->apps[i];
        struct app_state s = { .app = app };
        size_t saved = 0;
        int r;

        app->line = v->line;
        app->column = v->column;
        r = yt_expect_mapping(p, v);
        if (r >= 0)
                r = yt_parse_fields(p, v, app_keys, ELEMENTSOF(app_keys), app_field, &s);
        if (r < 0)
                return r;

        if (!app->import_path) {
                saved = yt_path_push(p, ".import_path");
                r = yt_fail(p, v, "required: \"MODULE:SYMBOL\" naming the application "
                                  "(e.g. libecho.so:app)");
                goto out;
        }
        if (!app->name) {
                if (c->n_apps > 1) {
                        saved = yt_path_push(p, ".name");
                        r = yt_fail(p, v, "required when there are several applications");
                        goto out;
                }
                app->name = strdup("default");
                if (!app->name)
                        return -ENOMEM;
        }
        if (!s.route_set) {
                app->route_prefix = strdup("/");
                if (!app->route_prefix)
                        return -ENOMEM;
        }
        if (!app->args_json) {
                app->args_json = strdup("{}");
                if (!app->args_json)
                        return -ENOMEM;
        }

        for (size_t k = 0; k < i; k++) {
                const struct app_config *o = &c->apps[k];
                if (streq(o->name, app->name)) {
                        saved = yt_path_push(p, ".name");
                        r = yt_fail(p, s.name, "duplicate application name \"%s\" (also at line %d)",
                                    app->name, o->line);
                        goto out;
                }
                if (app->route_prefix && streq_ptr(o->route_prefix, app->route_prefix)) {
                        saved = yt_path_push(p, ".route_prefix");
                        r = yt_fail(p, s.route_prefix ?: v,
                                    "duplicate route_prefix \"%s\"%s "
                                    "(also used by application \"%s\" at line %d)",
                                    app->route_prefix, s.route_prefix ? "" : " (the default)", o->name,
                                    o->line);
                        goto out;
                }
        }
        return 0;
out:
        yt_path_pop(p, saved);
        return r;
}

static int parse_apps(struct yt_parser *p, const struct yt_node *v, struct serve_config *c) {
        return yt_parse_list(p, v, "applications", CONFIG_MAX_APPS, sizeof *c->apps, (void **)&c->apps, &c->n_apps,
                             parse_app, c);
}

/* top level */

static const char *const top_keys[] = { "proxy_location", "http_options", "applications" };

static int top_field(struct yt_parser *p, unsigned idx, const struct yt_node *v, void *userdata) {
        struct serve_config *c = userdata;
        int r;

        switch (idx) {
        case 0:
                for (enum proxy_location l = PROXY_EVERY_NODE; l <= PROXY_DISABLED; l++)
                        if (yt_scalar_is(v, proxy_location_to_string(l))) {
                                c->proxy_location = l;
                                return 0;
                        }
                return yt_fail(p, v, "must be one of EveryNode, HeadOnly, Disabled, got %s",
                               YT_DESCRIBE(v));
        case 1:
                if (yt_is_null(v))
                        return 0;
                r = yt_expect_mapping(p, v);
                if (r < 0)
                        return r;
                r = yt_parse_fields(p, v, http_keys, ELEMENTSOF(http_keys), http_field, &c->http);
                if (r >= 0 && c->http.max_buffered_request_bytes < c->http.max_request_body_bytes)
                        return yt_fail(p, v,
                                       "max_buffered_request_bytes (%llu) is smaller than "
                                       "max_request_body_bytes (%llu): no request of the largest size could be taken",
                                       (unsigned long long)c->http.max_buffered_request_bytes,
                                       (unsigned long long)c->http.max_request_body_bytes);
                return r;
        case 2:
                return parse_apps(p, v, c);
        }
        return 0;
}

int config_parse(const char *name, const char *text, size_t len, struct serve_config **ret,
                 char **ret_error) {
        struct yt_parser p = { .name = name ?: "<config>" };
        struct serve_config *c = NULL;
        struct yt_node *root = NULL;
        int r;

        if (len > CONFIG_MAX_FILE_SIZE) {
                r = yt_fail_at(&p, 1, 1, "too large (%zu bytes, limit %u MiB)", len,
                               CONFIG_MAX_FILE_SIZE >> 20);
                goto out;
        }

        c = calloc(1, sizeof(*c));
        if (!c) {
                r = -ENOMEM;
                goto out;
        }
        c->proxy_location = PROXY_EVERY_NODE;
        http_options_defaults(&c->http);
        c->path = strdup(p.name);
        if (!c->path || !c->http.host) {
                r = -ENOMEM;
                goto out;
        }

        r = yt_load_tree(&p, text ?: "", text ? len : 0, &root);
        if (r < 0)
                goto out;
        /* An empty file (or one holding only comments, or "---") serves nothing. */
        if (!root || yt_is_null(root))
                goto out;
        if (root->type != YT_MAPPING) {
                r = yt_fail(&p, root, "the top level must be a mapping (proxy_location, "
                                     "http_options, applications), got %s",
                         YT_DESCRIBE(root));
                goto out;
        }
        r = yt_parse_fields(&p, root, top_keys, ELEMENTSOF(top_keys), top_field, c);

out:
        yt_node_free(root);
        if (r < 0) {
                config_free(c);
                if (ret_error)
                        *ret_error = TAKE_PTR(p.error);
                free(p.error);
                return r;
        }
        free(p.error);
        *ret = c;
        return 0;
}

int config_load_file(const char *path, struct serve_config **ret, char **ret_error) {
        _cleanup_free_ char *buf = NULL;
        size_t len;
        int r;

        r = yt_read_file(path, CONFIG_MAX_FILE_SIZE, &buf, &len, ret_error);
        if (r < 0)
                return r;
        return config_parse(path, buf, len, ret, ret_error);
}

static void app_config_done(struct app_config *a) {
        free(a->name);
        free(a->route_prefix);
        free(a->import_path);
        free(a->args_json);
        free(a->runtime_env.working_dir);
        free(a->runtime_env.py_executable);
        for (size_t i = 0; i < a->runtime_env.n_env_vars; i++)
                free(a->runtime_env.env_vars[i]);
        free(a->runtime_env.env_vars);
        for (size_t i = 0; i < a->n_deployments; i++) {
                struct deployment_config *d = &a->deployments[i];
                free(d->name);
                free(d->user_config_json);
                for (size_t k = 0; k < d->actor.n_resources; k++)
                        free(d->actor.resources[k].name);
                free(d->actor.resources);
        }
        free(a->deployments);
}

void config_free(struct serve_config *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n_apps; i++)
                app_config_done(&c->apps[i]);
        free(c->apps);
        free(c->http.host);
        free(c->path);
        free(c);
}
