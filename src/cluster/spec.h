/* Effective deployment specs: an apps.yaml resolved against each application's code defaults.
 *
 * The head resolves the config once (running `serve-replica --describe` for each application,
 * so user code never loads into a daemon), places replicas with the result, and sends each
 * worker the specs of every deployment with its local replica count. The single-node `serve
 * run` resolves and applies in one process. The JSON form is what travels in `assign`.
 *
 * Describing runs user code, which may hang: a daemon resolves with spec_resolve_start(), on
 * its loop, under a deadline, and keeps serving meanwhile. */
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
        bool autoscaling;             /* replicas follow the load (head and serve run: `as`) */
        struct autoscaling_config as; /* not sent to workers */
        bool scales_from_zero;        /* autoscaled with min_replicas 0: requests wait for a first replica */
        uint64_t module_hash;         /* of the module's bytes (head only: workers get `version`) */
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

/* How long describing one config may take in all: then the describes still running are killed
 * (SIGKILL) and the config is refused with "describe timed out after N s". Below the CLI's 30 s
 * wait for an answer, so `serve deploy` hears why. */
#define SPEC_DESCRIBE_TIMEOUT_S 25.0

struct loop;
struct spec_resolve;

/* The answer of spec_resolve_start(), called once from the loop: r = 0 and spec (the callee
 * owns it), or a negative errno and error (borrowed): -EINVAL ("FILE:LINE:COLUMN: field:
 * what"), -ETIMEDOUT (the deadline passed), -ENOMEM. */
typedef void (*spec_resolve_done)(void *userdata, int r, struct serve_spec *spec, const char *error);

/* Resolves cfg on `loop`: describes every application with replica_bin (children of this
 * process, a few at a time, all within timeout_s; <= 0: SPEC_DESCRIBE_TIMEOUT_S) and merges the
 * file's values, the code's defaults and the system defaults. cfg must stay valid until `done`
 * runs or spec_resolve_cancel(). Returns 0 and *ret (valid until `done` runs), or -ENOMEM;
 * `done` is never called from inside this function. */
int spec_resolve_start(struct loop *loop, const char *replica_bin, const struct serve_config *cfg, double timeout_s,
                       spec_resolve_done done, void *userdata, struct spec_resolve **ret);
/* Stops a resolve whose answer is no longer wanted: `done` is not called, running describes
 * are killed. The rest is freed from the loop. */
void spec_resolve_cancel(struct spec_resolve *res);

/* The same, waiting for the answer (on a loop of its own): for startup, `--check` and callers
 * without a loop. Returns 0 and *ret, or a negative errno (as above) with *ret_error. */
int spec_resolve_timeout(const char *replica_bin, const struct serve_config *cfg, double timeout_s,
                         struct serve_spec **ret, char **ret_error);
/* spec_resolve_timeout() with SPEC_DESCRIBE_TIMEOUT_S. */
int spec_resolve(const char *replica_bin, const struct serve_config *cfg, struct serve_spec **ret, char **ret_error);

void serve_spec_free(struct serve_spec *s);
void dep_spec_done(struct dep_spec *d);
struct dep_spec *spec_find(const struct serve_spec *s, const char *app, const char *name);

/* JSON for the control protocol. to_json returns NULL on allocation failure; from_json
 * validates every field and returns 0, or -EINVAL with the reason in err. */
cJSON *dep_spec_to_json(const struct dep_spec *d);
int dep_spec_from_json(const cJSON *j, struct dep_spec *ret, char *err, size_t errlen);
/* Computes d->version from the fields that need new replicas when they change, the module's
 * bytes (module_hash) included: a library replaced at the same path is new code. */
void dep_spec_set_version(struct dep_spec *d);

/* Where serve-replica is: $SERVE_REPLICA_BIN, next to the running program, or LIBEXECDIR. */
char *spec_find_replica_bin(void);
