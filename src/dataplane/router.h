/* The router: applications and their routes, deployments, replicas as the proxy sees them, and
 * the requests travelling between a client connection and a replica (struct upreq).
 *
 * Request path: proxy.c parses a request and calls router_submit(); the router picks a replica
 * (power of two choices on ongoing counts, never more than max_ongoing_requests in flight to
 * one replica) or queues the request per deployment (bounded by max_queued_requests, else 503);
 * upstream.c moves it through the replica's rings and hands the response back to proxy.c. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "http_parser.h"
#include "loop.h"
#include "metrics.h"
#include "segment.h"
#include "util.h"

struct conn;
struct deployment;
struct peer_in;
struct remote_group;
struct remote_target;
struct supervisor;

enum replica_state {
        REPLICA_STARTING, /* process started, init not finished */
        REPLICA_READY,    /* serving */
        REPLICA_DRAINING, /* no new requests; stops when in-flight ones are done */
        REPLICA_DEAD,     /* killed or exited; waiting for the process to be reaped */
};

struct replica {
        struct deployment *dep;
        char id[96];               /* "app/Deployment#serial" */
        unsigned serial;
        enum replica_state state;
        pid_t pid;
        int pidfd, ctl_fd;
        struct segment seg;
        struct loop_op op_exit, op_ctl, op_bell;
        uint64_t bell_val;
        char *ctl_buf;
        bool ctl_armed, bell_armed, exit_armed;
        bool req_bell_pending;     /* the replica sleeps and has new requests: wake it before we sleep */
        bool kill_timeout;         /* killed for a missed heartbeat: in-flight get 504, not 502 */
        bool stop_sent;
        uint64_t started_ns, stop_deadline_ns;
        char gpus[72];             /* CUDA_VISIBLE_DEVICES, "" for none */
        char *cgroup;              /* its own cgroup (under systemd), or NULL */
        char *limits;              /* what its cgroup limits, for reports */

        /* In-flight requests. req_id = (generation << 32) | slot. */
        struct upreq **slots;
        uint32_t n_slots;
        uint32_t limit;            /* max_ongoing_requests: in flight at most (<= n_slots) */
        uint32_t generation;
        int ongoing;
        struct list backlog;       /* assigned requests not yet fully in the request ring */
        struct list link;          /* in dep->replicas */
};

struct deployment {
        char *app, *name;
        char *module, *symbol, *args_json, *user_config_json, *working_dir;
        char **env;
        size_t n_env;
        int target_replicas;
        int max_ongoing, max_queued;
        double health_period_s, health_timeout_s, graceful_timeout_s;
        char version[17];          /* hash of what forces new replicas when it changes (code, args, env...) */
        char **gpus;               /* CUDA_VISIBLE_DEVICES values for the local replicas (from the head) */
        double num_cpus;           /* ray_actor_options: the replica cgroup's cpu.max */
        uint64_t memory;           /* and memory.max (0 = none) */
        size_t n_gpus;
        struct remote_group *remote; /* replicas of (app, name) on other nodes; NULL on a single node */

        struct list replicas;
        int n_replicas, n_ready;
        struct list queue;         /* upreqs waiting for a replica */
        int queue_len;
        unsigned next_serial;
        unsigned failures;         /* consecutive failed starts, for backoff */
        uint64_t next_start_ns;
        bool retiring;             /* replaced by a newer version or removed: drain then stop */
        int remote_inflight;       /* requests of ours at peers that point here: keeps it alive */
        struct dep_stats *stats;
        struct list link;          /* in the supervisor's deployment list */
        struct supervisor *sup;
};

/* Request counters of (app, deployment) on this node's proxy; they outlive deployment versions. */
struct dep_stats {
        char *app, *name;
        uint64_t requests, errors;   /* errors: answered with a status >= 400 */
        uint64_t replica_starts;
        struct latency_hist latency;
        struct list link;
};

struct route {
        char *prefix;              /* "/echo"; "/" matches everything */
        size_t prefix_len;
        char *app;
        struct deployment *ingress;
};

enum upreq_state {
        UPREQ_QUEUED,
        UPREQ_SENDING,   /* in rep->backlog, partly in the ring */
        UPREQ_SENT,      /* whole request in the ring, waiting for the response */
        UPREQ_RESPONDING,
};

struct upreq {
        struct conn *conn;         /* NULL once the client is gone or was answered otherwise */
        /* Or it came from a peer node (conn is NULL): the answer goes back there. */
        struct peer_in *stream;
        uint64_t stream_id;
        struct list slink;         /* in the stream's connection's list */
        /* Sent to a peer node instead of a local replica. */
        struct remote_target *rt;
        uint64_t peer_sid;
        unsigned tries;
        struct deployment *dep;
        struct replica *rep;
        uint32_t slot;
        uint64_t id;
        enum upreq_state state;
        bool cancelled;
        struct list link;          /* dep->queue or rep->backlog */

        /* The request, owned here: raw holds the head and the (decoded) body. */
        char *raw;
        struct http_request req;
        const char *path;          /* after the route prefix; always starts with '/' */
        size_t path_len;
        const char *body;
        uint64_t body_len;
        uint64_t body_sent;
        bool start_sent;

        uint64_t resp_body_len, resp_received;
        uint64_t start_ns;         /* when the proxy had the whole request */
        int status;
        uint64_t deadline_ns;      /* request_timeout_s; 0 = none */
        struct list tlink;         /* the proxy's request-timeout list */
};

struct router {
        struct route *routes;      /* sorted by prefix length, longest first */
        size_t n_routes;
        uint64_t rng;
        struct list stats;         /* struct dep_stats */
        bool stats_ready;
};

/* The counters of (app, name), created on first use. NULL on allocation failure. */
struct dep_stats *router_stats(struct router *r, const char *app, const char *name);
/* Counts a request answered by the proxy (not one that came from a peer). */
void router_record(struct upreq *u, int status);

/* Longest-prefix match on route_prefix: "/echo" matches "/echo", "/echo/x", "/echo?q", not
 * "/echoes". Returns the route or NULL. */
const struct route *router_match(const struct router *r, const char *path, size_t len);

/* Replaces the route table (takes ownership of routes). */
void router_set_routes(struct router *r, struct route *routes, size_t n);
void routes_free(struct route *routes, size_t n);

/* Picks a replica for u (or queues it). Returns 0 when assigned or queued, -EBUSY when the
 * queue is full (answer 503), -ENOENT when the deployment has no replicas and is not starting
 * any (answer 503). */
int router_submit(struct router *r, struct upreq *u);

/* Assigns queued requests of dep to replicas with free capacity. */
void router_dispatch(struct router *r, struct deployment *dep);

/* Removes a queued request (timeout, client gone). */
void router_unqueue(struct upreq *u);

/* The client no longer waits for u, which is at a replica or a peer. */
void router_cancel(struct upreq *u);

/* Sets u->path to the request path after the route's prefix. */
void router_set_path(const struct route *rt, struct upreq *u);

/* Someone still waits for u's response. */
static inline bool upreq_waiting(const struct upreq *u) { return u->conn || u->stream; }

struct router *router_get(void);
