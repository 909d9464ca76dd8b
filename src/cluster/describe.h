/* What an application's code says about itself: `serve-replica --describe IMPORT_PATH` run as a
 * child process (so user code never loads into a daemon), watched from the io_uring loop.
 *
 * A describe runs user code (constructors, the app symbol's initialisers), which may hang: the
 * daemons never wait for one. The child's stdout and stderr are read by loop operations, its
 * exit is seen through a pidfd, and a deadline kills it (SIGKILL). The caller hears once, from
 * the loop; a describe that is cancelled or timed out is reaped in the background. */
#pragma once

#include <stdint.h>

#include "loop.h"

struct described_deployment {
        char *name;
        int num_replicas, max_ongoing, max_queued;
        double health_period, health_timeout, graceful_timeout, num_cpus, num_gpus;
        /* Code defaults as JSON text (ABI 3; NULL when the code has none). */
        char *user_config_json, *autoscaling_config_json;
};

struct description {
        char *module, *symbol, *ingress;  /* module: the resolved shared object's path */
        uint64_t module_hash;             /* of the shared object's bytes: new code, new hash */
        struct described_deployment *deps;
        size_t n_deps;
};

void description_free(struct description *d);

struct describe_job;

/* Called once, from the loop: r = 0 and *desc (the callee owns its contents: keep them or
 * description_free() them), or a negative
 * errno and `error` (borrowed; NULL when there is nothing better than strerror(-r)). -ETIMEDOUT
 * when the deadline passed. The job is gone after the call. */
typedef void (*describe_done)(void *userdata, int r, struct description *desc, const char *error);

/* Starts `replica_bin --describe import_path [--working-dir working_dir]`, to finish by
 * deadline_ns (CLOCK_MONOTONIC, as now_ns()). Returns 0 and *ret (a handle for
 * describe_cancel(), valid until `done` is called), or a negative errno and *ret_error (spawn
 * failed; `done` is never called). */
int describe_start(struct loop *loop, const char *replica_bin, const char *import_path, const char *working_dir,
                   uint64_t deadline_ns, describe_done done, void *userdata, struct describe_job **ret,
                   char **ret_error);

/* Kills the child (if it still runs); `done` is not called. The job frees itself once the loop
 * has seen the child exit and its operations end. NULL is fine. */
void describe_cancel(struct describe_job *j);

/* FNV-1a over the bytes of `path` (read in chunks, never whole). Returns 0 and *ret, or -errno. */
int describe_hash_file(const char *path, uint64_t *ret);
