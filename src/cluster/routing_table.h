/* The routing table: which nodes exist (name, data address, revocation boundary), which
 * deployments exist (max_ongoing, replicas placed cluster-wide) and how many ready replicas of
 * each deployment each node has. serve-head builds one per routing pass and sends the
 * difference to the previous one; serve-worker keeps one and applies what it receives.
 *
 * Nodes and deployments carry small numeric ids chosen by the head (stable for its lifetime),
 * so a change names them without repeating their names. The `routing` message:
 *
 *   {"v":1,"type":"routing","version":V,"full":true,           a whole table
 *    "nodes":[{"id":N,"name":S,"address":S,"data_port":P[,"min_serial":"DIGITS"]}...],
 *    "deployments":[{"id":D,"app":S,"name":S,"max_ongoing":M,"placed":K}...],
 *    "ready":[[D,N,COUNT]...]}                                  COUNT > 0
 *
 *   {"v":1,"type":"routing","version":V,"base":V-1,             the changes since V-1
 *    "nodes":[...upserts...], "nodes_removed":[N...],
 *    "deployments":[...upserts...], "deployments_removed":[D...],
 *    "ready":[[D,N,COUNT]...]}                                  COUNT 0: none any more
 *
 * Every key but version and full/base may be absent. Removing a node or a deployment drops its
 * ready counts too. A delta whose base is not the version held is a gap: the receiver asks for
 * a whole table (-ESTALE below). */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROUTING_MAX_NODES 100000
#define ROUTING_MAX_DEPLOYMENTS 100000
#define ROUTING_MAX_READY (1 << 22)
#define ROUTING_MAX_ID 0x7fffffff
#define ROUTING_MAX_COUNT (1 << 20)

struct routing_node {
        uint32_t id;
        char *name, *address;
        int data_port;
        uint64_t min_serial;            /* its certificates below this serial are revoked; 0: none */
};

struct routing_dep {
        uint32_t id;
        char *app, *name;
        int max_ongoing, placed;
};

struct routing_ready {
        uint32_t dep, node, count;
};

struct routing_table {
        uint64_t version;
        bool valid;                     /* holds a table that deltas may apply to */
        struct routing_node *nodes;     /* sorted by id once sealed */
        size_t n_nodes, cap_nodes;
        struct routing_dep *deps;       /* sorted by id once sealed */
        size_t n_deps, cap_deps;
        struct routing_ready *ready;    /* sorted by (dep, node), counts > 0, once sealed */
        size_t n_ready, cap_ready;
};

void routing_table_init(struct routing_table *t);
/* Frees what t holds and leaves it empty (invalid). Accepts an initialised empty table. */
void routing_table_done(struct routing_table *t);

/* Building a table: add in any order, then seal. Each returns 0 or -ENOMEM/-E2BIG. */
int routing_table_add_node(struct routing_table *t, uint32_t id, const char *name, const char *address, int data_port,
                           uint64_t min_serial);
int routing_table_add_dep(struct routing_table *t, uint32_t id, const char *app, const char *name, int max_ongoing,
                          int placed);
/* A count of 0 is not stored. */
int routing_table_add_ready(struct routing_table *t, uint32_t dep, uint32_t node, uint32_t count);
/* Sorts and checks the table: ids and node names unique, (app, name) unique, every ready count
 * names a node and a deployment of the table. Returns 0 (t is valid) or -EINVAL. */
int routing_table_seal(struct routing_table *t);

/* The deployment with this app and name, or NULL; `hint` is tried first (an index). */
const struct routing_dep *routing_table_find_dep(const struct routing_table *t, size_t hint, const char *app,
                                                 const char *name);

/* The whole of sealed table t as a `routing` message with "full":true. NULL on ENOMEM. */
cJSON *routing_table_full_message(const struct routing_table *t);
/* The changes from sealed table old to sealed table new as a `routing` delta with version
 * old->version + 1. Returns 1 and *ret, 0 when nothing changed (*ret untouched), or -ENOMEM. */
int routing_table_delta_message(const struct routing_table *old, const struct routing_table *new, cJSON **ret);

/* Applies a `routing` message (full, or a delta on top of the version t holds), checking every
 * field first: t changes only on success. Returns 0; -ESTALE for a delta t cannot take (no
 * table yet, or its base is not t->version: ask for a whole table); -EINVAL with err; -ENOMEM. */
int routing_table_apply(struct routing_table *t, const cJSON *msg, char *err, size_t errlen);
