/* The router: applications and their routes, deployments and their replicas as the data plane
 * sees them, and the choice of a backend for each request (request.h).
 *
 * A sink (proxy.c, peer.c) builds a request and calls router_submit(); the router picks a
 * backend — local replicas first, then peer nodes; power of two choices on load; never more
 * than max_ongoing_requests in flight to one replica — or queues the request per deployment
 * (bounded by max_queued_requests, else 503). It holds every request's request_timeout_s. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "http_parser.h"
#include "loop.h"
#include "metrics.h"
#include "request.h"
#include "segment.h"
#include "util.h"

struct deployment;
struct supervisor;

enum replica_state {
        REPLICA_STARTING, /* process started, init not finished */
        REPLICA_READY,    /* serving */
        REPLICA_DRAINING, /* no new requests; stops when in-flight ones are done */
        REPLICA_DEAD,     /* killed or exited; waiting for the process to be reaped */
};

struct replica {
        struct backend be;         /* be.link: in dep->replicas */
        struct deployment *dep;
        char id[96];               /* "app/Deployment#serial" */
        unsigned serial;
        unsigned restarts;         /* it replaced a crashed replica that had restarts - 1 */
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
        double mon_cpu_s, mon_rq_s; /* the load monitor's readings the autoscaler has seen */
        uint64_t mon_rq_n;

        /* In-flight requests. req_id = (generation << 32) | slot. */
        struct request **slots;
        uint32_t n_slots;
        uint32_t limit;            /* max_ongoing_requests: in flight at most (<= n_slots) */
        uint32_t generation;
        int ongoing;
        struct list backlog;       /* assigned requests not yet fully in the request ring */
        struct request *stalled;   /* its sink is full: the response ring waits for it */
        struct call_table *calls;  /* its handle calls (call.c), NULL until the first */
        bool ctl_owed;             /* a stream's credit or cancel did not fit in the request ring */
        void (*on_broken)(struct replica *rep); /* it wrote garbage: kill it (the supervisor) */
        struct loop_deferred repoll; /* read the response ring again (a stalled sink has room) */
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
        struct list *remote_backends; /* replicas of (app, name) on other nodes as backends; NULL on one node */
        const int *remote_placed;  /* replicas of (app, name) placed in the whole cluster, or NULL */

        struct list replicas;
        int n_replicas, n_ready;
        struct list queue;         /* requests waiting for a backend */
        int queue_len;
        unsigned next_serial;
        unsigned failures;         /* consecutive failed starts, for backoff */
        unsigned to_replace;       /* crashed replicas not replaced yet */
        unsigned replace_restarts; /* the highest `restarts` among them */
        uint64_t next_start_ns;
        bool retiring;             /* replaced by a newer version or removed: drain then stop */
        int remote_inflight;       /* requests of ours at peers that point here: keeps it alive */
        bool scales_from_zero;     /* autoscaled from zero: a request may wait for a first replica */
        /* The autoscaler's input: requests ongoing at its replicas plus queued here, integrated
         * over time (request-seconds), since the supervisor last handed it over. */
        double load_s;
        uint64_t load_at_ns;
        int load_now;
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

struct router {
        struct route *routes;      /* sorted by prefix length, longest first */
        size_t n_routes;
        uint64_t rng;
        struct list stats;         /* struct dep_stats */
        struct list timeouts;      /* requests with a deadline, FIFO (one request_timeout_s) */
        bool ready;
        /* Handle calls (call.h): the deployment (app, name) that serves calls on this node (the
         * newest version), or NULL; set by the supervisor. */
        struct deployment *(*find)(void *userdata, const char *app, size_t app_len, const char *name,
                                   size_t name_len);
        void *find_userdata;
        double call_timeout_s;     /* request_timeout_s for calls (0: none) */
        uint64_t max_call_body;    /* max_request_body_bytes for call arguments (0: no limit) */
};

/* The counters of (app, name), created on first use. NULL on allocation failure. */
struct dep_stats *router_stats(struct router *r, const char *app, const char *name);
/* Counts a request answered to an HTTP client of this node (status: what it got). */
void router_record(const struct request *q, int status);

/* Longest-prefix match on route_prefix: "/echo" matches "/echo", "/echo/x", "/echo?q", not
 * "/echoes". Returns the route or NULL. */
const struct route *router_match(const struct router *r, const char *path, size_t len);
/* The route of application `app`, or NULL. */
const struct route *router_route_of_app(const struct router *r, const char *app, size_t len);

/* Replaces the route table (takes ownership of routes). */
void router_set_routes(struct router *r, struct route *routes, size_t n);
void routes_free(struct route *routes, size_t n);

/* Routes q by its (normalised) path: sets q->dep and q->path. Returns the route, or NULL when
 * no route matches (404) or, with `app`, when the route that matches is not app's. */
const struct route *router_route(struct router *r, struct request *q, const char *app, size_t app_len);

/* Picks a backend for q (or queues it). Starts q's request_timeout_s (timeout_s > 0). Returns
 * 0 when assigned or queued, -EBUSY when the queue is full (answer 503), -ENOENT when the
 * deployment has no replica here or elsewhere and none is starting (answer 503 or reject). */
int router_submit(struct router *r, struct request *q, double timeout_s);

/* Assigns queued requests of dep to backends with free capacity. */
void router_dispatch(struct router *r, struct deployment *dep);

/* Removes a queued request (its sink went away). */
void router_unqueue(struct request *q);

/* Fails requests whose request_timeout_s passed (504). Returns nanoseconds to the next one. */
uint64_t router_tick(struct router *r, uint64_t now);

/* Sets q->path to the request path after the route's prefix. Returns 0, or -EINVAL when the
 * path is not under the route's prefix. */
int router_set_path(const struct route *rt, struct request *q);

struct router *router_get(void);
