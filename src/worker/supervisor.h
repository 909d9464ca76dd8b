/* The replica supervisor: turns a config into deployments and replica processes, and keeps
 * them running. It starts replicas (serve-replica, one process each, with a fresh shared
 * segment), watches their heartbeats and exits, replaces failed ones with backoff, applies
 * reloads (in place when only counts/user_config change, otherwise a rolling replacement that
 * moves traffic only once the new replicas are ready), and stops replicas gracefully. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "config.h"
#include "loop.h"
#include "router.h"

struct supervisor;

/* replica_bin: path of serve-replica. Returns 0 or a negative errno. */
int supervisor_new(struct loop *loop, struct router *router, const char *replica_bin, struct supervisor **ret);
void supervisor_free(struct supervisor *s);

/* Validates cfg completely (loads each application's description from its shared object)
 * and, when valid, makes it the desired state. Returns 0, or -EINVAL with *ret_error (a
 * malloc'd message naming file, line, column and field) and nothing changed. */
int supervisor_apply(struct supervisor *s, const struct serve_config *cfg, char **ret_error);

/* Makes spec the desired state (already validated; dep_spec.replicas is this node's count).
 * Returns 0 or -ENOMEM (nothing changed). */
struct serve_spec;
int supervisor_apply_spec(struct supervisor *s, const struct serve_spec *spec);

/* Appends one object per live replica to `replicas` (and per deployment to `deployments`, if
 * not NULL), in the control protocol's `report` shape. wall_offset_s converts the monotonic
 * clock to wall time. Returns 0 or -ENOMEM. */
int supervisor_report(const struct supervisor *s, cJSON *replicas, cJSON *deployments, double wall_offset_s);

/* What happened to the replicas lately (the latest EVENT_REPORT_MAX events): a report sends
 * those after the last it sent. */
struct event_log *supervisor_events(struct supervisor *s);

/* Names the node, so replica ids are unique in the cluster ("app/Dep#3@node-1"). */
int supervisor_set_node(struct supervisor *s, const char *node);

/* Replica cgroups (see cgroup.h); cg must outlive the supervisor. */
struct cgroups;
void supervisor_set_cgroups(struct supervisor *s, struct cgroups *cg);

/* The load monitor that measures every replica started from now on (see loadmon.h); lm must
 * outlive the supervisor. Reports then carry each replica's "cpu_s" and "rq_delay". */
struct loadmon;
void supervisor_set_loadmon(struct supervisor *s, struct loadmon *lm);

/* The replica a scale-down stops next: one still starting, else the ready one with the fewest
 * requests in flight (an idle one when there is one); NULL when none is starting or ready. */
struct replica *supervisor_next_to_stop(struct deployment *d);

/* The autoscaler's input: calls fn for every deployment (live and retiring versions) with the
 * request-seconds (ongoing at its replicas + queued here) and the load monitor's CPU time and
 * run-queue waits of its replicas since the previous call. */
struct scaler_load;
void supervisor_take_load(struct supervisor *s, uint64_t now,
                          void (*fn)(void *userdata, const struct deployment *d, const struct scaler_load *l),
                          void *userdata);
/* Requests of d waiting for a first replica: it scales from zero and none is placed anywhere. */
int supervisor_deployment_waiting_at_zero(const struct deployment *d);
/* True when some deployment has such requests (the autoscaler must hear of them now). */
bool supervisor_waiting_at_zero(const struct supervisor *s);
/* The autoscaler's decision on one machine: (app, name) runs `replicas` (the live version; a
 * scale-down drains: see supervisor_next_to_stop). Returns 0 or -ENOENT. */
int supervisor_scale(struct supervisor *s, const char *app, const char *name, int replicas);

/* Calls fn for every deployment (live and retiring versions). */
void supervisor_for_each(struct supervisor *s, void (*fn)(struct deployment *d, void *userdata), void *userdata);

/* Moves everything along: reads response rings, flushes request backlogs, checks heartbeats,
 * (re)starts and retires replicas. Returns the nanoseconds it may sleep. */
uint64_t supervisor_tick(struct supervisor *s, uint64_t now);

/* Announces sleep on every response ring. Returns false when a ring has data (don't sleep). */
bool supervisor_prepare_sleep(struct supervisor *s);
void supervisor_awake(struct supervisor *s);

/* A daemon's graceful stop, one step per loop iteration: in-flight requests finish (for at most
 * the largest graceful_shutdown_timeout_s of the deployments, at least SUPERVISOR_DRAIN_MIN_S),
 * then the replicas stop (10 s more at most). Start it with supervisor_drain_begin(). */
struct supervisor_drain {
        uint64_t deadline;
        bool replicas_stopping;
};
#define SUPERVISOR_DRAIN_MIN_S 2.0
/* What units/serve-worker.service allows a stop (TimeoutStopSec=15min), less the 10 s above. */
#define SUPERVISOR_SYSTEMD_STOP_S 890.0
void supervisor_drain_begin(struct supervisor *s, struct supervisor_drain *d, uint64_t now);
/* Returns true when the daemon may exit (everything stopped, or time is up, or force).
 * open_connections: client connections still open (their requests may still come). */
bool supervisor_drain_step(struct supervisor *s, struct supervisor_drain *d, uint64_t now, bool force,
                           unsigned open_connections);

/* Graceful stop: every replica finishes in-flight work, then exits. */
void supervisor_stop_all(struct supervisor *s);
/* Requests queued or in flight anywhere. */
unsigned supervisor_busy(const struct supervisor *s);
/* True when no replica process is left. */
bool supervisor_all_exited(const struct supervisor *s);
