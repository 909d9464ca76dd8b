/* Replica cgroups: under systemd (serve-worker.service has Delegate=yes) the worker owns its
 * cgroup subtree. It moves itself into <own>/worker and puts every replica in
 * <own>/replicas/<id> with cpu.max (num_cpus) and memory.max (memory) when the cpu and memory
 * controllers are available there. Outside systemd, or without delegation, replicas stay in
 * the worker's cgroup and one notice says so. Only cgroup v2 (also the unified hierarchy of a
 * v1/v2 hybrid, where controllers may be missing: then limits are requested but not set). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct cgroups {
        char *base;         /* the worker's own cgroup directory, NULL when not delegated */
        bool cpu, memory;   /* controllers enabled for the replicas */
};

/* Sets up the subtree. Returns 0 (cg->base set) or a negative errno (nothing to do; logged
 * once as a notice). */
int cgroups_init(struct cgroups *cg);
void cgroups_done(struct cgroups *cg);

/* Creates the cgroup of replica `id` with its limits. Returns 0 and *ret_path (malloc'd), or a
 * negative errno (logged). *ret_limits describes what was applied ("cpu.max=50000 100000
 * memory.max=max", or "(not enforced: no cpu controller)"). */
int cgroups_replica_create(struct cgroups *cg, const char *id, double cpus, uint64_t memory, char **ret_path,
                           char **ret_limits);
/* In the child before exec: moves the calling process into path. Async-signal-safe. */
int cgroups_enter(const char *path);
/* Removes a replica's cgroup once its processes are gone. */
void cgroups_replica_remove(const char *path);
