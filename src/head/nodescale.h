/* The cluster autoscaler's decisions: a pure function from (worker groups, nodes, unplaced
 * replicas, options, now) to a list of actions (launch a node of a group, drain a node, delete a
 * node). No I/O, no logging, no globals, no clock; serve-head calls it every autoscaler pass and
 * carries out what it returns. The only state kept between passes is struct ns_memory (the
 * batching window), owned by the caller.
 *
 * Words: a node is *managed* when group >= 0. A node *counts toward its group* when it is
 * managed, LAUNCHING, JOINING or ALIVE, not deleted in this pass (rule 1), and not an outdated node
 * that already has a live replacement (the replacement counts instead). min_nodes and max_nodes
 * are held against that count. A *live replacement* is a managed LAUNCHING/JOINING/ALIVE node
 * with replaces >= 0 not deleted in this pass.
 *
 * Rules, in the order they apply:
 *   1. Boot timeout: a managed node LAUNCHING or JOINING for longer than its group's
 *      boot_timeout_s (now - launched_ns) is deleted (NS_DELETE, "did not join within N s") and
 *      no longer counts toward its group, nor as a launch in flight.
 *   2. Demand bin packing, first-fit decreasing: the demand is sorted largest first (gpus, then
 *      cpus, then memory; input order on ties) and each replica goes to the first of
 *      (a) the free capacity of an ALIVE, non-cordoned node (any group, managed or not) that has
 *          no live replacement, in input order;
 *      (b) a managed LAUNCHING/JOINING node (its group's shape less what this pass packed onto
 *          it), in input order, and the nodes rule 5 opens for min_nodes; replacement nodes in
 *          flight (rule 7) are kept for the replicas of the node they replace and take no demand;
 *      (c) a new node: among the groups whose shape fits one replica, launchable, not in backoff
 *          and below max_nodes (counting the new nodes this pass opened), the cheapest (cost
 *          ascending, groups without a cost after those with one), ties to the smallest shape
 *          (cpus, memory, gpus), then input order. A new node then takes further replicas
 *          like (b).
 *      max_per_node caps the replicas of one key that this pass packs onto one node. Amounts
 *      compare with a small epsilon (ten 0.1 CPU replicas fill a 1 CPU node). Replicas fitting
 *      no group's shape, or whose every fitting group is at max_nodes or has no provider, are
 *      counted unschedulable with one reason; those waiting only for a group's backoff are
 *      pending but not unschedulable. At most NS_MAX_NEW_NODES new nodes are opened per pass.
 *   3. Batching: launches for demand happen only once the demand (a hash of keys and counts) has
 *      been unchanged for batch_idle_ns, or first appeared batch_max_ns ago; demand going to
 *      nothing resets the window. NS_AGGRESSIVE does not wait. min_nodes launches and
 *      replacements never wait.
 *   4. Launch limits: managed LAUNCHING+JOINING nodes (all groups) plus this pass's launches stay
 *      <= max_concurrent_launches in every mode; NS_CONSERVATIVE also launches nothing for a
 *      group that has a node LAUNCHING/JOINING, and at most one node per group per pass.
 *      Launches are granted in this order: min_nodes, demand, replacements. A group never exceeds
 *      max_nodes except by replacements (rule 7).
 *   5. min_nodes: a launchable group not in backoff whose count is below min_nodes gets launches
 *      up to min_nodes ("group cpu has 0 nodes, min_nodes is 1").
 *   6. Idle: a managed ALIVE, non-cordoned node with replicas == 0 and idle_since_ns != 0 for at
 *      least idle_timeout_s is drained ("idle for 61 s (idle_timeout_s 60)"), unless this pass
 *      packed demand onto it (2a), it is a replacement whose outdated node still exists (not
 *      DELETING), or its group would fall below min_nodes; the oldest idle go first when
 *      min_nodes limits how many may go.
 *   7. Rolling replacement: a managed node whose config_hash differs from its group's is
 *      outdated. Per group, replacements in flight (live replacements whose replaced node is
 *      not DELETING) stay <= max_surge; below that, the oldest outdated node (launched_ns) that
 *      is LAUNCHING/JOINING/ALIVE, has no live replacement and is not drained or deleted in this
 *      pass gets one (NS_LAUNCH with replaces set), when its group is launchable and not in
 *      backoff. When a replacement is ALIVE and its replaced node is ALIVE, the replaced node is
 *      drained ("replaced by NODE (group cpu's config changed)"); this repeats every pass
 *      until the caller moves that node to DRAINING.
 *   8. Unmanaged nodes (group -1) are never drained, deleted or counted toward a group; only
 *      their free capacity serves demand (2a).
 *   9. Each node gets at most one action per pass (a delete wins over a drain). Actions come out
 *      as deletes (node order), drains (node order), then launches (min_nodes, demand in the
 *      order packing opened the nodes, replacements oldest first).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "placement.h" /* struct placement_resource */

/* Limits on user-growable inputs: more than these is -EINVAL. */
#define NS_MAX_GROUPS 1024u
#define NS_MAX_NODES 100000u
#define NS_MAX_DEMAND 10000u
#define NS_MAX_CUSTOM 64u          /* custom resources in one shape or one demand */
#define NS_MAX_GROUP_NODES 100000  /* max_nodes of one group */
/* New nodes (min_nodes and demand) one pass may open; replicas beyond are unschedulable. */
#define NS_MAX_NEW_NODES 10000u

enum ns_state { NS_LAUNCHING, NS_JOINING, NS_ALIVE, NS_DRAINING, NS_DELETING };
enum ns_mode { NS_CONSERVATIVE, NS_DEFAULT, NS_AGGRESSIVE };

struct ns_shape {                     /* what one node offers (or has free) */
        double cpus;
        uint64_t memory;              /* bytes */
        double gpus;
        const struct placement_resource *custom;  /* names unique within the shape */
        size_t n_custom;
};

struct ns_group {
        const char *name;
        struct ns_shape shape;        /* a new node of this group */
        int min_nodes, max_nodes;     /* 0 <= min_nodes <= max_nodes <= NS_MAX_GROUP_NODES */
        double cost;                  /* per node-hour; < 0: not given */
        double idle_timeout_s, boot_timeout_s;
        int max_surge;                /* >= 1 */
        bool launchable;              /* has a provider; min_nodes and demand launch only when true */
        uint64_t backoff_until_ns;    /* failed launches: no launch before this */
        uint64_t config_hash;         /* of its current node config; nodes with another hash are outdated */
};

struct ns_node {
        const char *name;
        int group;                    /* index into groups; -1: a node the autoscaler does not manage */
        enum ns_state state;
        struct ns_shape free;         /* ALIVE: capacity placement left free; LAUNCHING/JOINING: ignored (the group's shape) */
        unsigned replicas;            /* replicas placed on it */
        uint64_t idle_since_ns;       /* 0: not idle (it has replicas or served recently) */
        uint64_t launched_ns;         /* when create was started (managed nodes) */
        uint64_t config_hash;
        bool cordoned;                /* takes no new replicas (ALIVE nodes being drained or replaced) */
        int replaces;                 /* index into nodes of the outdated node this one was launched to
                                       * replace; -1 (also once that node is gone from the input) */
};

struct ns_demand {                    /* `count` replicas of one deployment that placement could not place */
        const char *key;              /* "app/Deployment", unique across the demand */
        double cpus, gpus;            /* per replica */
        uint64_t memory;
        const struct placement_resource *custom;
        size_t n_custom;
        unsigned count;
        int max_per_node;             /* 0 = unlimited */
};

struct ns_options {
        enum ns_mode mode;
        int max_concurrent_launches;  /* >= 1: LAUNCHING+JOINING nodes across groups, at most */
        uint64_t batch_idle_ns;       /* a burst is one decision: wait until demand was unchanged this long ... */
        uint64_t batch_max_ns;        /* ... but never longer than this since it appeared (Karpenter: 1 s / 10 s) */
};

struct ns_input {
        const struct ns_group *groups; size_t n_groups;
        const struct ns_node *nodes; size_t n_nodes;
        const struct ns_demand *demand; size_t n_demand;
        struct ns_options opt;
        uint64_t now_ns;
};

/* Kept by the caller between calls (zero-initialised at start): the batching window. */
struct ns_memory {
        uint64_t demand_sig;          /* a hash of the demand last seen; 0: none */
        uint64_t demand_since_ns, demand_changed_ns;
};

enum ns_action_kind {
        NS_LAUNCH,   /* group: start one node of it; replaces: node index it replaces, or -1 */
        NS_DRAIN,    /* node: cordon and drain it (idle, or replaced by a ready node) */
        NS_DELETE,   /* node: delete it now (did not join within boot_timeout_s) */
};

struct ns_action {
        enum ns_action_kind kind;
        int group;                    /* NS_LAUNCH; for NS_DRAIN/NS_DELETE the node's group */
        int node;                     /* NS_DRAIN, NS_DELETE: index into nodes; NS_LAUNCH: -1 */
        int replaces;                 /* NS_LAUNCH: -1 or the outdated node's index; else -1 */
        char reason[256];             /* one operator-readable sentence: why (numbers included) */
};

struct ns_summary {
        unsigned pending;             /* replicas in the demand */
        unsigned unschedulable;       /* of those, fitting no group's node shape (or every fitting group
                                       * at max_nodes or without a provider) */
        char unschedulable_reason[256];  /* "" when 0 */
        /* per group (parallel to groups, malloc'd by nodescale_decide, free with free()): */
        unsigned *wanted;             /* nodes of that group not yet ALIVE that the demand would use right
                                       * now: LAUNCHING/JOINING ones it packed onto plus new ones, launched
                                       * in this pass or not (batching, limits) */
        bool ready;                   /* the batching window let demand launch in this pass */
};

/* Decides one pass. *sum is overwritten (zeroed first, so ns_summary_done() is safe after an
 * error too); *mem is updated only on success. Returns 0 with *ret_actions (malloc'd, free with
 * free(); NULL when *ret_n == 0) and *ret_n, or -EINVAL for bad input (an index out of range, NaN
 * or infinite or negative amounts, NULL names, duplicate demand keys, min_nodes > max_nodes,
 * max_surge or max_concurrent_launches < 1, more than the NS_MAX_* limits), or -ENOMEM. */
int nodescale_decide(const struct ns_input *in, struct ns_memory *mem, struct ns_action **ret_actions,
                     size_t *ret_n, struct ns_summary *sum);

/* Frees what a summary holds and zeroes it; accepts a zeroed summary. */
void ns_summary_done(struct ns_summary *sum);
