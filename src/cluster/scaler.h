/* The replica autoscaler as a daemon runs it: one autoscale.h policy per autoscaled deployment
 * and signal, fed with the load the routers measured, deciding each deployment's replica count.
 * serve-head runs it for the cluster (the load comes in the workers' reports) and `serve run`
 * for one machine (straight from its supervisor), so both behave the same.
 *
 * Signals (the largest count wins, each with its own delays):
 *   - requests: ongoing at replicas plus queued in routers, request-seconds per second
 *     (exact: the routers hold every request), target_ongoing_requests per replica;
 *   - cpu (target_cpu_utilization): CPU-seconds per second of the replicas over their num_cpus;
 *   - runqueue (target_runqueue_delay_ms): the mean run-queue delay per wakeup of the replicas;
 *     more replicas are assumed to shorten it in proportion.
 * Each deployment is sampled every metrics_interval_s with what accumulated since its previous
 * sample, and decided every tick; a request waiting at zero replicas decides at once. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "autoscale.h"
#include "util.h"

struct serve_spec;
struct scaler;

enum scaler_signal { SCALER_REQUESTS, SCALER_CPU, SCALER_RUNQUEUE, SCALER_N_SIGNALS };

/* What a router or a worker measured for one deployment since its previous report. */
struct scaler_load {
        double busy_s;            /* request-seconds: ongoing + queued, integrated over time */
        double cpu_s;             /* CPU-seconds its replicas used (0 when unknown) */
        double rq_delay_s;        /* run-queue delay its replicas' wakeups waited in all */
        double rq_wakeups;        /* and how many wakeups that was (0: no run-queue data) */
        int waiting_at_zero;      /* requests waiting for a first replica right now (the largest
                                   * of the reports since the last sample counts) */
};

/* One deployment's state, for `serve status`, /metrics and tests. */
struct scaler_status {
        int target;               /* what it should run now */
        int min_replicas, max_replicas;
        double load;              /* the request signal, aggregated */
        uint64_t decisions_up, decisions_down;
        char reason[240];         /* the last decision that changed the count, or why none did */
        double decided_at;        /* when that was (the caller's clock); 0 = never */
};

int scaler_new(struct scaler **ret);
void scaler_free(struct scaler *sc);
/* The head: reports arrive once a heartbeat from each worker, each covering its own interval;
 * a sample spanning two heartbeats or more counts each worker's load about once (fewer would
 * see some workers twice and others not at all). Default 0. */
void scaler_set_min_sample_interval(struct scaler *sc, double s);
/* Each decision's sentence ("autoscaler: deployment app/Name: 2 -> 4 replicas: requests: ...")
 * goes to fn, which logs it, instead of the log. */
typedef void (*scaler_observer)(void *userdata, const char *app, const char *name, const char *message);
void scaler_set_observer(struct scaler *sc, scaler_observer fn, void *userdata);

/* Brings the table in line with spec (after every config change): adds its autoscaled
 * deployments (at their initial count, or at `current(app, name)` when that is >= 0: replicas
 * a restarted head finds running), takes new parameters for those it has (keeping their count,
 * clamped to the new bounds) and forgets the others. Writes each autoscaled deployment's count
 * into spec->deps[].replicas. Returns 0 or -ENOMEM (the table may then lack some). */
int scaler_sync(struct scaler *sc, struct serve_spec *spec, double now,
                int (*current)(void *userdata, const char *app, const char *name), void *userdata);

/* Adds a measurement of (app, name); unknown deployments are ignored. */
void scaler_add_load(struct scaler *sc, const char *app, const char *name, const struct scaler_load *l);

/* Adds what a worker's report (report.h) measured for each deployment: "busy_s", "cpu_used_s",
 * "rq_wait_s", "rq_waits" since its previous report, and "queued" (waiting at zero replicas).
 * The report must have passed report_validate(). */
void scaler_take_report(struct scaler *sc, const cJSON *report);

/* Samples the deployments whose metrics_interval_s passed and decides all of them; a changed
 * count is logged once with its inputs and written into spec->deps[].replicas. Returns how
 * many counts changed; *ret_next_s: seconds until it wants to run again. */
int scaler_tick(struct scaler *sc, struct serve_spec *spec, double now, double *ret_next_s);

/* True when some deployment is at zero replicas with requests waiting (tick now). */
bool scaler_urgent(const struct scaler *sc);

/* The state of (app, name); false when it is not autoscaled. */
bool scaler_status(const struct scaler *sc, const char *app, const char *name, struct scaler_status *ret);

/* serve_autoscaler_desired_replicas and serve_autoscaler_decisions_total{direction}. */
int scaler_render_metrics(const struct scaler *sc, struct buf *b);
