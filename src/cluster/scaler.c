/* The replica autoscaler as the daemons run it: see scaler.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "scaler.h"
#include "spec.h"

/* Decisions run this often (their delays are in time, so this is their resolution). */
#define SCALER_TICK_S 0.25

static const char *const signal_names[SCALER_N_SIGNALS] = { "requests", "cpu", "runqueue" };

struct scaled {
        char *app, *name;
        struct autoscaling_config cfg;
        double num_cpus;
        struct autoscale sig[SCALER_N_SIGNALS];
        bool sig_on[SCALER_N_SIGNALS];
        struct scaler_load acc;        /* since the last sample */
        double last_sample;
        int target;
        bool seen;                     /* in the spec of the latest sync */
        struct scaler_status st;
};

struct scaler {
        struct scaled *deps;
        size_t n;
        double next_tick;
        double min_sample_s;           /* samples are at least this far apart */
        bool urgent;
        scaler_observer observer;
        void *observer_data;
};

int scaler_new(struct scaler **ret) {
        struct scaler *sc = calloc(1, sizeof *sc);
        if (!sc)
                return -ENOMEM;
        *ret = sc;
        return 0;
}

static void scaled_done(struct scaled *s) {
        free(s->app);
        free(s->name);
}

void scaler_set_min_sample_interval(struct scaler *sc, double s) { sc->min_sample_s = s > 0 ? s : 0; }

void scaler_set_observer(struct scaler *sc, scaler_observer fn, void *userdata) {
        sc->observer = fn;
        sc->observer_data = userdata;
}

void scaler_free(struct scaler *sc) {
        if (!sc)
                return;
        for (size_t i = 0; i < sc->n; i++)
                scaled_done(&sc->deps[i]);
        free(sc->deps);
        free(sc);
}

static struct scaled *find(const struct scaler *sc, const char *app, const char *name) {
        for (size_t i = 0; i < sc->n; i++)
                if (streq(sc->deps[i].app, app) && streq(sc->deps[i].name, name))
                        return &sc->deps[i];
        return NULL;
}

static int clamp_count(const struct autoscaling_config *c, int n) {
        return MAX(c->min_replicas, MIN(c->max_replicas, n));
}

/* The policy's parameters for one signal; the targets differ, the delays are the deployment's. */
static void params_of(const struct autoscaling_config *c, enum scaler_signal s, struct autoscale_params *p) {
        static const enum autoscale_aggregation agg[] = {
                [AUTOSCALING_AGG_MEAN] = AUTOSCALE_MEAN,
                [AUTOSCALING_AGG_MAX] = AUTOSCALE_MAX,
                [AUTOSCALING_AGG_MIN] = AUTOSCALE_MIN,
        };
        *p = (struct autoscale_params){
                .min_replicas = c->min_replicas,
                .max_replicas = c->max_replicas,
                .target_ongoing_requests = s == SCALER_CPU        ? c->target_cpu_utilization
                                           : s == SCALER_RUNQUEUE ? c->target_runqueue_delay_ms
                                                                  : c->target_ongoing_requests,
                .upscale_delay_s = c->upscale_delay_s,
                .downscale_delay_s = c->downscale_delay_s,
                .downscale_to_zero_delay_s =
                        c->downscale_to_zero_delay_s >= 0 ? c->downscale_to_zero_delay_s : c->downscale_delay_s,
                .upscaling_factor = c->upscaling_factor > 0 ? c->upscaling_factor : 1,
                .downscaling_factor = c->downscaling_factor > 0 ? c->downscaling_factor : 1,
                .look_back_s = c->look_back_period_s > 0 ? c->look_back_period_s : 30,
                .aggregation = (unsigned)c->aggregation_function < ELEMENTSOF(agg) ? agg[c->aggregation_function]
                                                                                     : AUTOSCALE_MEAN,
        };
}

static int scaled_configure(struct scaled *s, const struct dep_spec *d) {
        s->cfg = d->as;
        s->num_cpus = d->num_cpus > 0 ? d->num_cpus : 1;
        s->sig_on[SCALER_REQUESTS] = true;
        s->sig_on[SCALER_CPU] = d->as.target_cpu_utilization > 0;
        s->sig_on[SCALER_RUNQUEUE] = d->as.target_runqueue_delay_ms > 0;
        for (int k = 0; k < SCALER_N_SIGNALS; k++) {
                struct autoscale_params p;
                if (!s->sig_on[k])
                        continue;
                params_of(&s->cfg, k, &p);
                /* New parameters keep the samples (a reload is no reason to forget the load). */
                int r = s->sig[k].p.look_back_s > 0 ? autoscale_set_params(&s->sig[k], &p) : autoscale_init(&s->sig[k], &p);
                if (r < 0)
                        return r;
        }
        s->st.min_replicas = s->cfg.min_replicas;
        s->st.max_replicas = s->cfg.max_replicas;
        return 0;
}

int scaler_sync(struct scaler *sc, struct serve_spec *spec, double now,
                int (*current)(void *userdata, const char *app, const char *name), void *userdata) {
        size_t n_auto = 0;
        int ret = 0;

        for (size_t i = 0; i < sc->n; i++)
                sc->deps[i].seen = false;
        for (size_t i = 0; spec && i < spec->n_deps; i++)
                n_auto += spec->deps[i].autoscaling;
        struct scaled *grown = realloc(sc->deps, (sc->n + n_auto + 1) * sizeof *grown);
        if (!grown)
                return -ENOMEM;
        sc->deps = grown;
        for (size_t i = 0; spec && i < spec->n_deps; i++) {
                struct dep_spec *d = &spec->deps[i];
                if (!d->autoscaling)
                        continue;
                struct scaled *s = find(sc, d->app, d->name);
                if (!s) {
                        s = &sc->deps[sc->n];
                        *s = (struct scaled){ .app = strdup(d->app), .name = strdup(d->name), .last_sample = now };
                        if (!s->app || !s->name) {
                                scaled_done(s);
                                ret = -ENOMEM;
                                continue;
                        }
                        int cur = current ? current(userdata, d->app, d->name) : -1;
                        s->target = cur >= 0 ? clamp_count(&d->as, cur) : d->replicas;
                        snprintf(s->st.reason, sizeof s->st.reason, "starting at %d replica(s)%s", s->target,
                                 cur >= 0 ? " (running when the head started)" : "");
                        sc->n++;
                } else {
                        int was = s->target;
                        s->target = clamp_count(&d->as, s->target);
                        if (s->target != was)
                                snprintf(s->st.reason, sizeof s->st.reason,
                                         "the new autoscaling_config bounds %d..%d move it from %d to %d",
                                         d->as.min_replicas, d->as.max_replicas, was, s->target);
                }
                if (scaled_configure(s, d) < 0) {
                        log_error("deployment %s/%s: invalid autoscaling_config: autoscaling it stays as it was", d->app,
                                  d->name);
                        ret = -EINVAL;
                }
                s->seen = true;
                s->st.target = s->target;
                d->replicas = s->target;
        }
        for (size_t i = 0; i < sc->n;) {
                if (sc->deps[i].seen) {
                        i++;
                        continue;
                }
                scaled_done(&sc->deps[i]);
                sc->deps[i] = sc->deps[--sc->n];
        }
        return ret;
}

void scaler_add_load(struct scaler *sc, const char *app, const char *name, const struct scaler_load *l) {
        struct scaled *s = find(sc, app, name);
        if (!s)
                return;
        /* Reports are checked, but a sum must not go NaN or negative on one odd value. */
        if (l->busy_s > 0 && isfinite(l->busy_s))
                s->acc.busy_s += l->busy_s;
        if (l->cpu_s > 0 && isfinite(l->cpu_s))
                s->acc.cpu_s += l->cpu_s;
        if (l->rq_wakeups > 0 && l->rq_delay_s >= 0 && isfinite(l->rq_delay_s)) {
                s->acc.rq_delay_s += l->rq_delay_s;
                s->acc.rq_wakeups += l->rq_wakeups;
        }
        if (l->waiting_at_zero > 0) {
                /* The most any report saw (a node reports again while its request still waits:
                 * the sum would count it twice); busy_s has the rest of the load. */
                s->acc.waiting_at_zero = MAX(s->acc.waiting_at_zero, l->waiting_at_zero);
                if (s->target == 0)
                        sc->urgent = true;
        }
}

void scaler_take_report(struct scaler *sc, const cJSON *report) {
        const cJSON *it;

        if (!sc || sc->n == 0)
                return;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(report, "deployments")) {
                const char *app = cJSON_GetStringValue(cJSON_GetObjectItem(it, "app"));
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment"));
                const cJSON *q = cJSON_GetObjectItem(it, "queued");
                struct scaler_load l = {
                        .busy_s = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "busy_s")),
                        .cpu_s = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "cpu_used_s")),
                        .rq_delay_s = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "rq_wait_s")),
                        .rq_wakeups = cJSON_GetNumberValue(cJSON_GetObjectItem(it, "rq_waits")),
                        .waiting_at_zero = cJSON_IsNumber(q) && q->valuedouble > 0 ? (int)MIN(q->valuedouble, 1e9) : 0,
                };
                if (app && name)
                        scaler_add_load(sc, app, name, &l);
        }
}

bool scaler_urgent(const struct scaler *sc) { return sc->urgent; }

/* Turns what accumulated since the last sample into one sample per signal. */
static void sample(struct scaled *s, double now) {
        double dt = now - s->last_sample;
        if (dt <= 0)
                return;
        double requests = s->acc.busy_s / dt;
        /* At zero replicas the requests waiting now are the load, exactly (a rate over the short
         * interval since the last sample would count reports that cover a longer one). */
        if (s->target == 0 && s->acc.waiting_at_zero > 0)
                requests = s->acc.waiting_at_zero;
        autoscale_sample(&s->sig[SCALER_REQUESTS], now, requests);
        if (s->sig_on[SCALER_CPU])
                autoscale_sample(&s->sig[SCALER_CPU], now, s->acc.cpu_s / dt / s->num_cpus);
        if (s->sig_on[SCALER_RUNQUEUE] && s->acc.rq_wakeups > 0)
                autoscale_sample(&s->sig[SCALER_RUNQUEUE], now,
                                 s->target * 1e3 * s->acc.rq_delay_s / s->acc.rq_wakeups);
        s->acc = (struct scaler_load){};
        s->last_sample = now;
}

/* Decides one deployment: the largest count any signal asks for, each after its own delay. */
static bool decide(struct scaler *sc, struct scaled *s, struct dep_spec *d, double now) {
        struct autoscale_decision dec[SCALER_N_SIGNALS];
        int best = -1;

        for (int k = 0; k < SCALER_N_SIGNALS; k++) {
                if (!s->sig_on[k])
                        continue;
                autoscale_decide(&s->sig[k], now, s->target, &dec[k]);
                if (best < 0 || dec[k].desired > dec[best].desired)
                        best = k;
        }
        s->st.load = dec[SCALER_REQUESTS].load;
        if (best < 0 || dec[best].desired == s->target)
                return false;
        int was = s->target;
        s->target = dec[best].desired;
        if (s->target > was)
                s->st.decisions_up++;
        else
                s->st.decisions_down++;
        s->st.target = s->target;
        s->st.decided_at = now;
        snprintf(s->st.reason, sizeof s->st.reason, "%s: %s", signal_names[best], dec[best].reason);
        char msg[512];
        snprintf(msg, sizeof msg, "autoscaler: deployment %s/%s: %d -> %d replicas: %s", s->app, s->name, was, s->target,
                 s->st.reason);
        if (sc->observer)
                sc->observer(sc->observer_data, s->app, s->name, msg);
        else
                log_info("%s", msg);
        if (d)
                d->replicas = s->target;
        return true;
}

int scaler_tick(struct scaler *sc, struct serve_spec *spec, double now, double *ret_next_s) {
        int changed = 0;
        bool urgent = sc->urgent;

        if (now < sc->next_tick && !urgent) {
                *ret_next_s = sc->next_tick - now;
                return 0;
        }
        sc->urgent = false;
        sc->next_tick = now + SCALER_TICK_S;
        for (size_t i = 0; i < sc->n; i++) {
                struct scaled *s = &sc->deps[i];
                bool cold = s->target == 0 && s->acc.waiting_at_zero > 0;
                if (cold || now - s->last_sample >= MAX(s->cfg.metrics_interval_s, sc->min_sample_s))
                        sample(s, now);
                changed += decide(sc, s, spec ? spec_find(spec, s->app, s->name) : NULL, now);
        }
        *ret_next_s = SCALER_TICK_S;
        return changed;
}

bool scaler_status(const struct scaler *sc, const char *app, const char *name, struct scaler_status *ret) {
        const struct scaled *s = find(sc, app, name);
        if (!s)
                return false;
        *ret = s->st;
        return true;
}

int scaler_render_metrics(const struct scaler *sc, struct buf *b) {
        int r;

        if (sc->n == 0)
                return 0;
        if ((r = metrics_family(b, "serve_autoscaler_desired_replicas", METRICS_GAUGE,
                                "Replicas the autoscaler wants for the deployment")) < 0)
                return r;
        for (size_t i = 0; i < sc->n; i++) {
                const char *labels[] = { "application", sc->deps[i].app, "deployment", sc->deps[i].name, NULL };
                if ((r = metrics_sample(b, "serve_autoscaler_desired_replicas", labels, sc->deps[i].target)) < 0)
                        return r;
        }
        if ((r = metrics_family(b, "serve_autoscaler_decisions_total", METRICS_COUNTER,
                                "Replica count changes the autoscaler made, by direction")) < 0)
                return r;
        for (size_t i = 0; i < sc->n; i++) {
                const char *up[] = { "application", sc->deps[i].app, "deployment", sc->deps[i].name, "direction", "up", NULL };
                const char *down[] = { "application", sc->deps[i].app, "deployment", sc->deps[i].name, "direction", "down", NULL };
                if ((r = metrics_sample(b, "serve_autoscaler_decisions_total", up, (double)sc->deps[i].st.decisions_up)) < 0 ||
                    (r = metrics_sample(b, "serve_autoscaler_decisions_total", down, (double)sc->deps[i].st.decisions_down)) < 0)
                        return r;
        }
        return 0;
}
