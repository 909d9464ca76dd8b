/* apps.yaml: Ray Serve's config schema, parsed with libyaml into plain structs.
 * Every error names file:line:column and the field. Unknown keys are errors. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum proxy_location {
        PROXY_EVERY_NODE, /* "EveryNode" (default) */
        PROXY_HEAD_ONLY,  /* "HeadOnly" */
        PROXY_DISABLED,   /* "Disabled" */
};

struct http_options {
        char *host;                    /* default "0.0.0.0" */
        int port;                      /* default 8000; 1..65535 */
        double request_timeout_s;      /* default 0 = no timeout; > 0 */
        double keep_alive_timeout_s;   /* default 5 */
        /* Our additions (not in Ray's schema), same section: */
        uint64_t max_request_body_bytes; /* default 64 MiB; 413 above it */
        double header_timeout_s;       /* default 10: time allowed to send a full request head */
        int max_connections;           /* default 16384; more are closed at accept */
        /* default 256 MiB: request bodies buffered on a node at once, across all clients and
         * peers; past it new bodies get 503 with Retry-After. >= max_request_body_bytes. */
        uint64_t max_buffered_request_bytes;
};

struct custom_resource {
        char *name;
        double amount;
};

struct actor_options { /* ray_actor_options */
        double num_cpus;   /* default 1 */
        double num_gpus;   /* default 0; fractional allowed */
        uint64_t memory;   /* bytes; default 0 = unspecified */
        struct custom_resource *resources;
        size_t n_resources;
};

struct autoscaling_config {
        int min_replicas;             /* default 1 */
        int max_replicas;             /* default 1; >= min_replicas */
        int initial_replicas;         /* default -1 = unset */
        double target_ongoing_requests; /* default 2 */
        double metrics_interval_s;    /* default 10 */
        double look_back_period_s;    /* default 30 */
        double upscale_delay_s;       /* default 30 */
        double downscale_delay_s;     /* default 600 */
        double upscaling_factor;      /* default 1 (0 = unset) */
        double downscaling_factor;    /* default 1 */
        double downscale_to_zero_delay_s; /* default -1 = downscale_delay_s */
        int aggregation_function;     /* AUTOSCALING_AGG_*: mean (default), max, min */
        double target_cpu_utilization;    /* share of the replica's num_cpus, (0, 1]; 0 = unused */
        double target_runqueue_delay_ms;  /* mean run-queue delay per wakeup; 0 = unused */
};

enum { AUTOSCALING_AGG_MEAN, AUTOSCALING_AGG_MAX, AUTOSCALING_AGG_MIN };
/* num_replicas: "auto" (Ray's defaults for it): autoscaling with this max_replicas, unless set. */
#define AUTOSCALING_AUTO_MAX_REPLICAS 100

/* Which deployment fields the file set explicitly: those override the deployment's defaults in
 * code; the others take the code's defaults, then the system defaults above. */
enum {
        DEPLOY_SET_NUM_REPLICAS = 1u << 0,
        DEPLOY_SET_MAX_ONGOING = 1u << 1,
        DEPLOY_SET_MAX_QUEUED = 1u << 2,
        DEPLOY_SET_USER_CONFIG = 1u << 3,
        DEPLOY_SET_HEALTH_PERIOD = 1u << 4,
        DEPLOY_SET_HEALTH_TIMEOUT = 1u << 5,
        DEPLOY_SET_GRACEFUL_TIMEOUT = 1u << 6,
        DEPLOY_SET_GRACEFUL_WAIT_LOOP = 1u << 7,
        DEPLOY_SET_ACTOR_OPTIONS = 1u << 8,
        DEPLOY_SET_AUTOSCALING = 1u << 9,
        DEPLOY_SET_MAX_REPLICAS_PER_NODE = 1u << 10,
};

struct deployment_config {
        char *name;
        unsigned set; /* DEPLOY_SET_* */
        int num_replicas;             /* default 1; >= 0; "auto" sets num_replicas_auto */
        bool num_replicas_auto;
        int max_ongoing_requests;     /* default 5; >= 1 */
        int max_queued_requests;      /* default -1 = unbounded; -1 or >= 0 */
        char *user_config_json;       /* NULL when absent; any YAML value, as JSON text */
        double health_check_period_s;      /* default 10; > 0 */
        double health_check_timeout_s;     /* default 30; > 0 */
        double graceful_shutdown_timeout_s;   /* default 20; >= 0 */
        double graceful_shutdown_wait_loop_s; /* default 2; > 0 */
        int max_replicas_per_node;    /* default 0 = no limit */
        struct actor_options actor;
        bool has_autoscaling;
        struct autoscaling_config autoscaling;
        int line, column;             /* where the entry starts, for later error messages */
};

struct runtime_env {
        char *working_dir;   /* NULL when absent */
        char **env_vars;     /* "KEY=VALUE" strings */
        size_t n_env_vars;
        char *py_executable; /* a virtualenv's interpreter for Python deployments; NULL when absent */
};

struct app_config {
        char *name;          /* default "default" when there is one application */
        char *route_prefix;  /* default "/"; must start with '/'; null/None disables HTTP */
        char *import_path;   /* required: "MODULE:SYMBOL" */
        char *args_json;     /* the args mapping as JSON text; "{}" when absent */
        struct runtime_env runtime_env;
        struct deployment_config *deployments;
        size_t n_deployments;
        int line, column;
};

struct serve_config {
        char *path;          /* the file name used in messages */
        enum proxy_location proxy_location;
        struct http_options http;
        struct app_config *apps;
        size_t n_apps;
};

/* Parses YAML text. `name` is the file name used in error messages.
 * Returns 0 and *ret (free with config_free()), or a negative errno and *ret_error, a
 * malloc'd message "FILE:LINE:COLUMN: FIELD: what is wrong" (ret_error may be NULL).
 * -EINVAL for invalid content, -ENOMEM. */
int config_parse(const char *name, const char *text, size_t len, struct serve_config **ret,
                 char **ret_error);

/* Reads and parses a file; as config_parse(), plus the errno of a failed read (message names
 * the file). */
int config_load_file(const char *path, struct serve_config **ret, char **ret_error);

/* An autoscaling_config given as JSON text (a deployment's default in code), with apps.yaml's
 * schema and checks, over the system defaults. Returns 0 and *ret, or -EINVAL with a message
 * in *ret_error ("autoscaling_config:LINE:COLUMN: field: what is wrong"), or -ENOMEM. */
int config_parse_autoscaling_json(const char *json, struct autoscaling_config *ret, char **ret_error);

/* Fills the defaults documented above (used by config_parse for absent fields). */
void deployment_config_defaults(struct deployment_config *d);
void http_options_defaults(struct http_options *h);

void config_free(struct serve_config *c);

/* For the other parsers built on yamltree (nodecfg.c): a map of custom resource name -> amount
 * (>= 0; CPU, GPU and memory are refused: they have their own fields). Appends to *ret_items,
 * counting in *ret_n as it goes so a free function sees every entry on failure. */
struct yt_parser;
struct yt_node;
int config_parse_resource_map(struct yt_parser *p, const struct yt_node *v, size_t max,
                              struct custom_resource **ret_items, size_t *ret_n);
const char *proxy_location_to_string(enum proxy_location l);
