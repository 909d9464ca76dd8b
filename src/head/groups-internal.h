/* What groups.c (the cluster autoscaler's moving parts) and groups_view.c (its API, metrics and
 * history views) share: a managed node's record, a group's runtime state. Private to the two. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "head.h"
#include "nodescale.h"

struct mnode {
        struct groups *gs;
        char *name, *group;
        enum ns_state state;
        char *provider_id, *address;
        uint64_t launched_ns, state_ns;  /* monotonic: create started; entered this state */
        uint64_t seen_ns;                /* ALIVE: when it was last alive */
        double launched_wall;
        char *replaces;                  /* the outdated node it was launched to replace */
        char token_id[JOINTOKEN_ID_HEX + 1];
        char *user_data_path;
        uint64_t config_hash;
        bool hash_known;
        struct provider_call *call;      /* create or delete in flight */
        uint64_t retry_ns;               /* DELETING: when to run delete again */
        bool holding;                    /* DRAINING: its replicas keep serving meanwhile */
        bool failed_launch;              /* DELETING because its launch failed */
        struct list link;
};

struct group_run {
        struct groups *gs;
        size_t gi;                       /* its index in gs->g (and h->ccfg->groups) */
        unsigned failures;               /* consecutive failed launches */
        uint64_t backoff_until_ns;
        char *last_error;
        uint64_t launches_ok, launches_failed, launches_timeout;
        bool listed;                     /* its provider's first list came back */
        struct provider_call *list_call;
        uint64_t list_started_ns, list_next_ns;
        unsigned wanted;
};

struct groups {
        struct head *h;
        struct list mnodes;
        size_t n_mnodes;
        struct group_run *g;             /* parallel to h->ccfg->groups */
        struct ns_memory mem;
        uint64_t next_pass_ns;
        unsigned pending, unschedulable;
        char unschedulable_reason[256];
        char *dir;                       /* <state_dir>/user-data */
};

extern const char *const groups_state_names[5]; /* by enum ns_state: "LAUNCHING" ... "DELETING" */

const struct worker_group *group_of_config(const struct cluster_config *c, const char *name);
struct mnode *mnode_find(const struct groups *gs, const char *name);
/* Counts group's nodes by state into counts (by enum ns_state). */
void groups_count_states(const struct groups *gs, const char *group, unsigned counts[5]);
