/* serve-head's shared state and the functions its parts call on each other:
 *
 *   head.c       main: options, wiring, signals, the loop
 *   nodes.c      the control port: hello, report, goodbye; node lifecycle and liveness
 *   reconcile.c  placement passes and the messages to workers (config, assign, routing)
 *   deploy.c     applying a config (file, SIGHUP, the API): describes run off the loop
 *   api.c        the REST API views and /metrics
 *   persist.c    the state file: what is saved and how a restart recovers from it
 *
 * Everything runs on one thread, from one io_uring loop. */
#pragma once

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "config.h"
#include "httpd.h"
#include "loop.h"
#include "netconn.h"
#include "nodecfg.h"
#include "placement.h"
#include "spec.h"

#define MAX_NODES 10000
#define MAX_API_BODY (16u << 20)
#define ROUTING_MIN_INTERVAL_NS (200 * NSEC_PER_MSEC)
#define RECONCILE_MIN_INTERVAL_NS (50 * NSEC_PER_MSEC) /* a burst of registrations: one placement */
#define HELLO_TIMEOUT_NS (10 * NSEC_PER_SEC)

struct node {
        struct head *h;
        char *name, *address;
        int http_port, data_port, metrics_port;
        cJSON *labels;                 /* object */
        double cpus;
        uint64_t memory;
        unsigned n_gpus;
        struct placement_resource *custom;
        size_t n_custom;
        bool alive, head_node;
        struct netconn *nc;
        uint64_t last_seen_ns;
        cJSON *report;                 /* the latest report */
        uint64_t n_reports;
        char *sent_assign;             /* text of the last assign sent (without epoch) */
        /* Its part of the assignment, (deployment, slot) index pairs, rebuilt by reconcile(). */
        struct share { uint32_t dep, slot; } *shares;
        size_t n_shares, cap_shares;
        uint64_t ready_sig;            /* hash of its RUNNING replicas: routing changes when it does */
        long long sent_config_epoch;
        struct list link;
};

/* A connection that has not said hello yet. */
struct pending_conn {
        struct head *h;
        struct netconn *nc;
        uint64_t since_ns;
        struct list link;
};

/* Replicas of one deployment on one node. */
struct slot {
        char *node;
        unsigned count;
        char **gpus;
};

struct assignment {
        char *key;                     /* "app/Deployment" */
        struct slot *slots;
        size_t n_slots;
        unsigned placed, pending;
        char *pending_reason;
};

struct deploy;

struct head {
        struct loop loop;
        const char *conf_dir, *state_dir;
        char *apps_path, *cluster_path;
        struct cluster_config *ccfg;
        char *join_token, *api_token;
        char *replica_bin;
        double describe_timeout_s;     /* all describes of one config together */
        struct httpd_options api_opts;

        struct serve_config *cfg;
        char *cfg_text;
        char *cfg_source;              /* "file" or "api" */
        double deployed_at;
        struct serve_spec *spec;
        char *config_error;
        double config_error_at;
        long long config_epoch;
        struct netblob *config_msg;    /* the framed `config` message for workers */
        struct deploy *deploy;         /* a config being described; at most one */

        struct assignment *assign;     /* parallel to spec->deps */
        size_t n_assign;

        struct list nodes, pending;
        size_t n_nodes;
        char *routing_text;
        uint64_t routing_next_ns, reconcile_next_ns;
        char *saved_state;             /* what the state file holds */
        bool dirty, routing_dirty;

        struct netlistener ctl;
        struct httpd api;
        int sfd;
        struct signalfd_siginfo si;
        struct loop_op op_signal;
        bool reload, stop;
};

double wall_now(void);

/* nodes.c */
void node_free(struct node *n);
struct node *node_find(struct head *h, const char *name);
/* The node called name, created (not alive, no resources) when new. NULL when out of memory. */
struct node *node_get(struct head *h, const char *name);
/* Constant-time comparison of secrets. */
bool token_equal(const char *a, const char *b);
void on_ctl_accept(struct netlistener *l, int fd);
/* Takes in every report already received, then declares dead the nodes silent for longer
 * than worker_timeout_s and drops connections that never said hello: a head that was busy
 * must not blame the workers for its own delay. */
void nodes_check_liveness(struct head *h);
/* Counts every node as just seen: after a long startup, before the workers could reconnect. */
void nodes_restart_clocks(struct head *h);
void nodes_free_all(struct head *h);

/* reconcile.c */
void assignments_free(struct assignment *a, size_t n);
const struct slot *slot_for(const struct assignment *a, const char *node);
char *dep_key(const char *app, const char *name);
void node_send(struct node *n, cJSON *m);
/* The `config` message every worker gets, from h->spec and h->cfg. */
void build_config_message(struct head *h);
/* Places every deployment's replicas (keeping what runs where it runs) and tells the nodes. */
void reconcile(struct head *h);
/* Ready replicas per deployment per node, to every node (only when it changed). */
void build_routing(struct head *h);
/* Makes h->assign parallel to h->spec->deps (the state file keys it by name). */
void align_assignment(struct head *h);

/* deploy.c */
/* Resolves and installs cfg now (startup and recovery; describes bounded by the deadline).
 * Takes cfg. Returns 0, or a negative errno with *ret_error. */
int apply_config(struct head *h, struct serve_config *cfg, const char *text, const char *source, char **ret_error);
/* Reads, resolves and installs apps.yaml now (startup). */
int load_apps_file(struct head *h, char **ret_error);
void record_config_error(struct head *h, const char *msg);
/* SIGHUP: re-reads apps.yaml and describes it off the loop; installed when done. */
void deploy_reload(struct head *h);
/* PUT (text) or DELETE (text NULL) of /api/serve/applications/, authorised: answers resp now
 * (invalid, busy) or later through the deferred response once described. */
void deploy_from_api(struct head *h, const struct httpd_request *rq, const char *text, size_t len,
                     struct httpd_response *resp);
/* Stops a describe in progress (the head stops). */
void deploy_cancel(struct head *h);

/* api.c */
void on_api(void *userdata, const struct httpd_request *rq, struct httpd_response *resp);

/* persist.c */
/* Writes the state file when what it would hold changed. */
void save_state(struct head *h);
/* Restores config, nodes and placement from the state file, if there is one. */
void recover(struct head *h);
