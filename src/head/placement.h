/* Replica placement: a pure function from (nodes, deployments, previous assignment) to a new
 * assignment. No I/O, no logging, no globals; the head calls it whenever nodes, the config or
 * the previous assignment change and sends each node its share.
 *
 * Rules, in the order they apply:
 *   1. Replicas already placed on alive nodes stay where they are (with the same GPUs). When the
 *      desired count shrank, replicas are removed from the nodes holding the most replicas of
 *      that deployment first. A kept replica that no longer fits (the node came back smaller, a
 *      GPU index vanished, max_per_node was lowered) is placed again like a new one.
 *   2. Replicas on dead or unknown nodes, and new replicas, go one at a time to the feasible
 *      node with the fewest replicas of that deployment; ties go to the node with the most free
 *      CPU, then to the earlier node in the input.
 *   3. A fractional GPU request (< 1) takes the GPU whose free fraction is smallest but still
 *      fits (best fit, so fractions pack); a whole request (n >= 1) takes n completely free GPUs.
 *   4. Every replica of every deployment consumes its resources; no node's CPU, memory, GPUs or
 *      custom resources are ever oversubscribed (float sums compare with a small epsilon).
 *   5. Deployments are served in input order, so when the cluster is short, earlier deployments
 *      win. Replicas that fit nowhere are counted as pending with one operator-readable reason.
 *   6. Elastic nodes (those the cluster autoscaler adds and deletes) come last: a new replica
 *      goes to one only when no other node can take it (before rule 2's order applies), and a
 *      deployment that shrinks takes from them first, so they empty and can go.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A limit on a user-growable resource: more GPUs than this on one node is rejected as -EINVAL. */
#define PLACEMENT_MAX_GPUS_PER_NODE 1024u

/* A named amount, for custom resources ("accel" = 4). */
struct placement_resource {
        const char *name;
        double amount;
};

struct placement_node {
        const char *name;                          /* unique across the input */
        bool alive;
        double cpus;                               /* total, > 0 for a useful node */
        uint64_t memory;                           /* bytes, total */
        unsigned n_gpus;                           /* whole GPUs, each with capacity 1.0 */
        const struct placement_resource *custom;   /* totals; names unique within the node */
        size_t n_custom;
        bool elastic;                              /* rule 6 */
};

struct placement_deployment {
        const char *key;                           /* "app/Deployment", unique across the input */
        int replicas;                              /* desired count, >= 0 */
        double num_cpus;                           /* per replica, >= 0 */
        double num_gpus;                           /* per replica: 0, a fraction < 1, or a whole number */
        uint64_t memory;                           /* bytes per replica */
        const struct placement_resource *custom;   /* requested per replica */
        size_t n_custom;
        int max_per_node;                          /* 0 = unlimited */
};

struct placement_input {
        const struct placement_node *nodes;
        size_t n_nodes;
        const struct placement_deployment *deployments;
        size_t n_deployments;
};

/* The previous assignment, as a flat list: `count` replicas of deployment `deployment` (a key)
 * on node `node` (a name). Entries naming a deployment that is no longer in the input are
 * ignored; entries naming a node that is absent or dead are placed again. Several entries for
 * the same pair add up. `gpus` holds `count` CUDA_VISIBLE_DEVICES strings ("0", "0,1") for GPU
 * deployments and may be NULL otherwise; a missing or invalid string means "place again". */
struct placement_prev_entry {
        const char *deployment;
        const char *node;
        unsigned count;
        const char *const *gpus;
};

struct placement_prev {
        const struct placement_prev_entry *entries;
        size_t n_entries;
};

/* `count` replicas of one deployment on node `node` (an index into placement_input.nodes). */
struct placement_slot {
        size_t node;
        unsigned count;
        char **gpus;                               /* `count` strings for GPU deployments, else NULL */
};

struct placement_deployment_result {
        struct placement_slot *slots;              /* nodes with count > 0, ascending node index */
        size_t n_slots;
        unsigned placed;                           /* sum of the slots' counts */
        unsigned pending;                          /* desired - placed */
        char *pending_reason;                      /* NULL when pending == 0 */
};

/* What the placed replicas use on each node; available = node total - used. */
struct placement_node_usage {
        double cpus;
        uint64_t memory;
        double gpus;                               /* sum of GPU fractions in use */
        double *custom;                            /* parallel to placement_node.custom, or NULL */
        unsigned replicas;                         /* of all deployments */
};

struct placement_result {
        struct placement_deployment_result *deployments;   /* parallel to placement_input.deployments */
        size_t n_deployments;
        struct placement_node_usage *nodes;                /* parallel to placement_input.nodes */
        size_t n_nodes;
};

/* Computes the assignment. `prev` may be NULL (nothing placed yet). The result refers to nodes
 * and deployments by index into `in`, and copies every string it holds, so it outlives `in`.
 * Returns 0, -EINVAL for an input that breaks the rules above (negative amounts, NaN, a
 * non-integral num_gpus >= 1, more than PLACEMENT_MAX_GPUS_PER_NODE GPUs, duplicate node names or deployment keys), or -ENOMEM. */
int placement_compute(const struct placement_input *in, const struct placement_prev *prev,
                      struct placement_result **ret);

/* Frees a result; accepts NULL and returns NULL. */
struct placement_result *placement_result_free(struct placement_result *r);

/* Turns a result back into a `prev` for the next call (the head's usual cycle). The entries
 * point into `in` and `r`, so both must outlive it; free it with free(). Returns 0 or -ENOMEM. */
int placement_result_to_prev(const struct placement_input *in, const struct placement_result *r,
                             struct placement_prev **ret);
