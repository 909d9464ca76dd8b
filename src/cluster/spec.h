/* Effective deployment specs: an apps.yaml resolved against each application's code defaults.
 *
 * The head resolves the config once (running `serve-replica --describe` for each application,
 * so user code never loads into a daemon), places replicas with the result, and sends each
 * worker the specs of every deployment with its local replica count. The single-node `serve
 * run` resolves and applies in one process. The JSON form is what travels in `assign`. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"

struct dep_spec {
        char *app, *name;
        char *module, *symbol, *args_json, *user_config_json, *working_dir;
        char **env;                   /* "K=V" */
        size_t n_env;
        int replicas;                 /* cluster-wide desired count (head), or this node's (worker) */
        int max_ongoing, max_queued;
        double health_period_s, health_timeout_s, graceful_timeout_s;
        double num_cpus, num_gpus;
        uint64_t memory;
        struct custom_resource *resources;
        size_t n_resources;
        int max_per_node;             /* 0 = unlimited */
        char **gpus;                  /* worker: CUDA_VISIBLE_DEVICES for each local replica */
        size_t n_gpus;
        char version[17];             /* hash of what forces new replicas when it changes */
        int line, column;             /* where its apps.yaml entry (or application) starts */
};

struct app_spec {
        char *name;
        char *route_prefix;           /* NULL: no HTTP route */
        char *ingress;                /* the ingress deployment's name */
};

struct serve_spec {
        struct app_spec *apps;
        size_t n_apps;
        struct dep_spec *deps;
        size_t n_deps;
};

/* Resolves cfg: describes every application with replica_bin and merges the file's values,
 * the code's defaults and the system defaults. Returns 0 and *ret, or -EINVAL with *ret_error
 * ("FILE:LINE:COLUMN: field: what"), or -ENOMEM. */
int spec_resolve(const char *replica_bin, const struct serve_config *cfg, struct serve_spec **ret, char **ret_error);

void serve_spec_free(struct serve_spec *s);
void dep_spec_done(struct dep_spec *d);
struct dep_spec *spec_find(const struct serve_spec *s, const char *app, const char *name);

/* JSON for the control protocol. to_json returns NULL on allocation failure; from_json
 * validates every field and returns 0, or -EINVAL with the reason in err. */
cJSON *dep_spec_to_json(const struct dep_spec *d);
int dep_spec_from_json(const cJSON *j, struct dep_spec *ret, char *err, size_t errlen);
/* Computes d->version from the fields that need new replicas when they change. */
void dep_spec_set_version(struct dep_spec *d);

/* Where serve-replica is: $SERVE_REPLICA_BIN, next to the running program, or LIBEXECDIR. */
char *spec_find_replica_bin(void);
