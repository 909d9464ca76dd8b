/* serve-head's shared state and the functions its parts call on each other:
 *
 *   head.c       main: options, wiring, signals, the loop
 *   nodes.c      the control port: hello, report, goodbye; node lifecycle and liveness
 *   reconcile.c  placement passes and the messages to workers (config, assign, routing)
 *   deploy.c     applying a config (file, SIGHUP, the API): describes run off the loop
 *   api.c        the REST API views and /metrics
 *   persist.c    the state file: what is saved and how a restart recovers from it
 *   trust.c      the cluster CA: joins, certificates, revocation, `--join-token`
 *   dashboard.c  the web UI's files, the time-series history and the events view
 *   history.c    the bounded time-series store the dashboard plots (pure data)
 *   groups.c     the cluster autoscaler: worker groups' nodes launched, drained and deleted
 *                through provider hooks (nodescale.c decides, provider.c runs the hooks,
 *                userdata.c renders the cloud-init user-data); groups_view.c: its API,
 *                metrics and history views
 *
 * Everything runs on one thread, from one io_uring loop. */
#pragma once

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "config.h"
#include "events.h"
#include "history.h"
#include "httpd.h"
#include "jointoken.h"
#include "loop.h"
#include "netconn.h"
#include "nodecfg.h"
#include "placement.h"
#include "scaler.h"
#include "routing_table.h"
#include "spec.h"

#define MAX_NODES 10000
/* Buckets of the index of nodes by name (a power of two, about MAX_NODES). */
#define NODE_INDEX_SIZE 16384
/* The state file is written at most this often (and at exit): at 10,000 nodes it holds 100,000
 * placements, and a join storm changes them every pass. */
#define STATE_MIN_INTERVAL_NS (1 * NSEC_PER_SEC)
/* How often liveness is checked: a scan of every node, not one per loop round. */
#define LIVENESS_INTERVAL_NS (100 * NSEC_PER_MSEC)
#define MAX_API_BODY (16u << 20)
#define ROUTING_MIN_INTERVAL_NS (200 * NSEC_PER_MSEC)
#define RECONCILE_MIN_INTERVAL_NS (50 * NSEC_PER_MSEC) /* a burst of registrations: one placement */
#define ROUTING_NONE UINT64_MAX
#define HELLO_TIMEOUT_NS (10 * NSEC_PER_SEC)
/* Connections that have not said hello (or joined) yet, at most: strangers cannot hold more
 * (each at most a TLS state and an UNAUTH_MSG_MAX message: ~100 KiB), and a reconnect storm
 * of a thousand nodes after a head restart mostly gets in at once (the rest retry). */
#define MAX_PENDING_CONNS 1024
/* A message from a connection that has not authenticated: a join (token + certificate request). */
#define UNAUTH_MSG_MAX (64u << 10)
/* The cluster's event log: ~1 MiB of the latest events (struct event is ~950 bytes). */
#define HEAD_EVENTS_CAPACITY 1000
/* The dashboard's sampling interval (seconds) unless --history-interval says otherwise. */
#define HISTORY_INTERVAL_S 5.0

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
        char *report_text;             /* its JSON text: the same bytes again are not parsed again */
        size_t report_len;
        uint64_t n_reports;
        char *sent_assign;             /* text of the last assign sent (without epoch) */
        /* Its part of the assignment, (deployment, slot) index pairs, rebuilt by reconcile(). */
        struct share { uint32_t dep, slot; } *shares;
        size_t n_shares, cap_shares;
        uint64_t ready_sig;            /* hash of its RUNNING replicas: routing changes when it does */
        uint64_t renewed_ns;           /* when its certificate was last renewed */
        long long sent_config_epoch;
        uint32_t routing_id;           /* its id in routing messages */
        /* Its RUNNING replicas per deployment (spec index, count) as of ready_cache_sig and
         * ready_cache_epoch: the routing pass reads a report again only when it changed. */
        struct ready_count { uint32_t dep, count; } *ready_cache;
        size_t n_ready_cache;
        uint64_t ready_cache_sig;
        long long ready_cache_epoch;
        uint64_t routing_version;      /* the routing table version it holds; ROUTING_NONE: none */
        uint64_t sent_share_sig;       /* share_signature() of the assign last sent */
        struct dash_snapshot *dash_prev; /* its counters at the dashboard's last sample */
        bool cordoned;                 /* draining: placement puts nothing on it */
        bool elastic;                  /* a worker group's node: placed on last, emptied first */
        bool hold_assign;              /* draining: it keeps its last assign until its replicas'
                                        * replacements are ready elsewhere */
        uint64_t idle_since_ns;        /* nothing placed or running there since; 0: busy */
        struct node *hash_next;        /* in h->node_index's chain */
        struct list link;
};

/* A connection that has not said hello yet. */
struct pending_conn {
        struct head *h;
        struct netconn *nc;
        uint64_t since_ns;
        char *cert_name;               /* TLS: the node its certificate names (it may say hello) */
        bool may_join;                 /* TLS without a certificate: it may only join */
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
struct dashboard;
struct groups;
struct dash_snapshot;

struct head {
        struct loop loop;
        const char *conf_dir, *state_dir;
        char *apps_path, *cluster_path;
        struct cluster_config *ccfg;
        char *join_token, *api_token;
        struct trust *trust;           /* NULL with transport: plaintext */
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
        cJSON *config_full;            /* it, as JSON, for the next delta */
        long long config_full_epoch;
        struct netblob *config_delta;  /* what changed since config_delta_base, for nodes holding it */
        long long config_delta_base;
        struct deploy *deploy;         /* a config being described; at most one */
        cJSON *cfg_json;               /* cfg_text as JSON (the applications' config as applied) */

        struct scaler *scaler;         /* replica counts of autoscaled deployments */
        struct assignment *assign;     /* parallel to spec->deps */
        size_t n_assign;

        struct event_log events;       /* what the controller did and why (and the workers' replicas) */
        cJSON *dep_failures;           /* "app/Dep" -> the latest replica failure since one was ready */
        struct dashboard *dash;
        double history_interval_s;
        struct groups *groups;         /* the cluster autoscaler (groups.c) */

        struct list nodes, pending;
        size_t n_nodes;
        struct node **node_index;      /* NODE_INDEX_SIZE chains by name; node_find() is O(1) */
        uint64_t liveness_next_ns;
        struct routing_table routing;  /* what the workers were last told */
        uint32_t next_routing_id;      /* for nodes and deployments */
        uint64_t routing_next_ns, reconcile_next_ns;
        char *saved_state;             /* what the state file holds */
        bool state_dirty;              /* save_state_soon() asked; written at state_next_ns */
        uint64_t state_next_ns;
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
/* The node's group: its label "group", else "default". */
const char *node_group(const struct node *n);
/* `serve nodes remove`: forgets the node (its replicas are placed elsewhere), closes its link and
 * revokes its certificates. Returns 0 or -ENOENT. */
int nodes_remove(struct head *h, const char *name);

/* groups.c */
/* Returns 0 or -ENOMEM (logged). */
int groups_init(struct head *h);
/* Cancels provider calls in flight; the nodes keep running (the next head adopts them). */
void groups_free(struct head *h);
/* SIGHUP: re-reads cluster.yaml; its worker_groups and autoscaler settings take effect now (a
 * group whose config changed has its nodes replaced). Returns 0 or a negative errno (logged,
 * recorded as the config error; the groups stay). */
int groups_reload(struct head *h);
/* Lists, launches, drains and deletes as due. */
void groups_tick(struct head *h, uint64_t now);
/* Node n said hello: a node a group launched is ALIVE now. */
void groups_on_join(struct head *h, struct node *n);
/* The lifecycle state of a managed node ("LAUNCHING" ... "DELETING"), its age and group, or NULL. */
const char *groups_node_state(const struct head *h, const char *name, double *ret_age_s, const char **ret_group);
/* Adds the managed nodes that have not joined yet to a nodes list (API). */
void groups_add_unjoined(const struct head *h, cJSON *arr);
/* GET /api/cluster/groups. */
cJSON *groups_json(const struct head *h);
void groups_render_metrics(const struct head *h, struct buf *b);
/* Calls cb with the node count of every group and state (the dashboard's history). */
void groups_sample(const struct head *h, void (*cb)(void *userdata, const char *group, const char *state, unsigned n),
                   void *userdata);

/* reconcile.c */
/* What placement put on node n (its shares): resources and replicas. */
struct node_usage {
        double cpus, gpus, memory;
        unsigned replicas;
};
struct node_usage node_usage_of(const struct head *h, const struct node *n);
/* Sends node n its assign again now (a draining node's hold ended). */
void node_resync_assign(struct node *n);
void assignments_free(struct assignment *a, size_t n);
const struct slot *slot_for(const struct assignment *a, const char *node);
char *dep_key(const char *app, const char *name);
void node_send(struct node *n, cJSON *m);
/* The `config` message every worker gets, from h->spec and h->cfg. */
void build_config_message(struct head *h);
/* Places every deployment's replicas (keeping what runs where it runs) and tells the nodes. */
void reconcile(struct head *h);
/* Ready replicas per deployment per node: what changed, as one delta to every node that has the
 * previous version; the whole table to a node that is behind. */
void build_routing(struct head *h);
/* The node asked for whole messages again (it missed one): config and assign now, routing at
 * the next pass. */
void node_resync(struct node *n);
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

/* dashboard.c */
/* Returns 0 or -ENOMEM (logged). */
int dashboard_init(struct head *h, double interval_s);
void dashboard_free(struct head *h);
/* Samples the history when an interval has passed. */
void dashboard_tick(struct head *h, uint64_t now);
/* GET /, /ui/..., /api/dashboard/...: true when it answered resp. */
bool dashboard_handle(struct head *h, const struct httpd_request *rq, struct httpd_response *resp);
/* The events in a validated report of node n go into h->events. */
void dashboard_take_events(struct head *h, struct node *n, const cJSON *report);
void dash_snapshot_free(struct dash_snapshot *s);
/* Whether a reported replica is RUNNING at the deployment's current version. */
bool replica_is_running(const cJSON *rep, const char *version);

/* trust.c */
/* Loads (or makes) the CA; warns about transport: plaintext. Returns 0 or a negative errno (logged). */
int trust_init(struct head *h);
/* Issues the head's own certificate and the control port's TLS context (after recover()). */
int trust_start(struct head *h);
/* Renews the head's certificate when due. */
void trust_tick(struct head *h);
void trust_free(struct head *h);
/* The control port's TLS context, or NULL in plaintext. */
struct tls_ctx *trust_ctx(const struct head *h);
/* After a control connection's handshake: 1 and *ret_name for a node's valid certificate, 0 for
 * none (it may join), -EPERM for a revoked or wrong-role one (logged, rate-limited). */
int trust_check_peer(struct head *h, struct netconn *nc, const char **ret_name);
/* Logs (rate-limited) a control connection whose TLS handshake failed. */
void trust_note_refused_handshake(struct head *h, struct netconn *nc);
/* A `join` from a connection without a certificate: answers `joined` or `refused` and closes. */
void trust_on_join(struct head *h, struct netconn *nc, const cJSON *m);
/* A `renew` over node n's authenticated link: answers `certificate`. */
void trust_on_renew(struct head *h, struct node *n, const cJSON *m);
/* Certificates of node `name` with a lower serial are revoked (0: none). */
uint64_t trust_min_serial(const struct head *h, const char *name);
/* Revokes every certificate of node `name` issued so far. */
int trust_revoke(struct head *h, const char *name);
/* Mints a single-use join token bound to node `name`, expiring in ttl_s: its text (malloc'd)
 * and id. Returns 0 or a negative errno. TLS only. */
int trust_mint_token(struct head *h, const char *name, uint64_t ttl_s, char **ret_text, char ret_id[JOINTOKEN_ID_HEX + 1]);
/* Revokes join token `id` (a node deleted before it joined). */
int trust_revoke_token(struct head *h, const char *id);
void trust_save(const struct head *h, cJSON *state);
void trust_recover(struct head *h, const cJSON *state);
void trust_render_metrics(const struct head *h, struct buf *b);
/* serve-head --join-token ACTION: returns the exit status. */
int trust_join_token_command(struct head *h, const char *action, const char *ttl, const char *uses, const char *name,
                             const char *id);

/* persist.c */
/* Writes the state file when what it would hold changed. */
void save_state(struct head *h);
/* The placement changed: the state file is written within STATE_MIN_INTERVAL_NS (a restart in
 * between recovers the rest from what the workers report, as adopt_replicas() does). */
void save_state_soon(struct head *h);
/* Writes the state asked by save_state_soon() when due (or now, with force: at exit). */
void save_state_flush(struct head *h, bool force);
/* Restores config, nodes and placement from the state file, if there is one. */
void recover(struct head *h);
