/* The autoscaler as the daemons run it (scaler.h): counts kept across config changes, load
 * turned into samples, the largest signal winning, zero replicas answered at once. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "scaler.h"
#include "spec.h"
#include "tap.h"

static struct dep_spec dep(const char *app, const char *name, bool autoscaled, int min, int max) {
        struct deployment_config dc;
        deployment_config_defaults(&dc);
        struct dep_spec d = { .app = (char *)app, .name = (char *)name, .replicas = 1, .num_cpus = 1,
                              .autoscaling = autoscaled, .as = dc.autoscaling };
        d.as.min_replicas = min;
        d.as.max_replicas = max;
        d.as.metrics_interval_s = 1;
        d.as.look_back_period_s = 2;
        d.as.upscale_delay_s = 3;
        d.as.downscale_delay_s = 10;
        d.as.target_ongoing_requests = 1;
        d.replicas = min;
        return d;
}

/* Runs the scaler from t0 to t1 in 0.25 s steps with `load` requests in flight all the time;
 * returns the count at the end. */
static int run(struct scaler *sc, struct serve_spec *spec, double t0, double t1, double load, double cpus) {
        double next;
        for (double t = t0; t < t1; t += 0.25) {
                struct scaler_load l = { .busy_s = load * 0.25, .cpu_s = cpus * 0.25 };
                scaler_add_load(sc, spec->deps[0].app, spec->deps[0].name, &l);
                scaler_tick(sc, spec, t, &next);
        }
        return spec->deps[0].replicas;
}

static int running_before(void *userdata, const char *app, const char *name) {
        (void)app;
        (void)name;
        return *(int *)userdata;
}

static void test_sync(void) {
        struct scaler *sc;
        struct dep_spec deps[2] = { dep("a", "Auto", true, 2, 6), dep("a", "Fixed", false, 1, 1) };
        struct serve_spec spec = { .deps = deps, .n_deps = 2 };
        struct scaler_status st;
        double next;

        ok(scaler_new(&sc) == 0, "scaler_new");
        deps[1].replicas = 3;
        ok(scaler_sync(sc, &spec, 0, NULL, NULL) == 0, "sync");
        is_int(deps[0].replicas, 2, "an autoscaled deployment starts at min_replicas (no initial_replicas)");
        is_int(deps[1].replicas, 3, "a fixed one keeps num_replicas");
        ok(scaler_status(sc, "a", "Auto", &st) && st.target == 2 && st.min_replicas == 2 && st.max_replicas == 6,
           "status: target 2 of 2..6");
        ok(!scaler_status(sc, "a", "Fixed", &st), "the fixed one has no autoscaler");

        is_int(run(sc, &spec, 0, 10, 5, 0), 5, "5 requests in flight at target 1 -> 5 replicas");
        ok(scaler_status(sc, "a", "Auto", &st) && st.decisions_up == 1 && strstr(st.reason, "requests: load 5.00"),
           "one upscale, its reason has the load: %s", st.reason);

        /* A reload resolves the spec again at its initial count: the scaler keeps its own. */
        struct dep_spec again[1] = { dep("a", "Auto", true, 2, 6) };
        struct serve_spec spec2 = { .deps = again, .n_deps = 1 };
        scaler_sync(sc, &spec2, 10, NULL, NULL);
        is_int(again[0].replicas, 5, "a reload keeps the autoscaled count");
        again[0].as.max_replicas = 4;
        scaler_sync(sc, &spec2, 10, NULL, NULL);
        is_int(again[0].replicas, 4, "new bounds clamp it");
        ok(scaler_status(sc, "a", "Auto", &st) && strstr(st.reason, "bounds 2..4"), "and say so: %s", st.reason);
        ok(!scaler_status(sc, "a", "Fixed", &st), "a deployment gone from the spec is forgotten");

        /* A head restarted finds replicas running: it starts from those, not from min. */
        struct scaler *sc2;
        struct dep_spec fresh[1] = { dep("a", "Auto", true, 2, 6) };
        struct serve_spec spec3 = { .deps = fresh, .n_deps = 1 };
        int found = 5;
        scaler_new(&sc2);
        scaler_sync(sc2, &spec3, 0, running_before, &found);
        is_int(fresh[0].replicas, 5, "a restarted head starts from the replicas it finds");
        found = 9;
        struct scaler *sc3;
        scaler_new(&sc3);
        scaler_sync(sc3, &spec3, 0, running_before, &found);
        is_int(fresh[0].replicas, 6, "... clamped to max_replicas");
        scaler_tick(sc3, &spec3, 1, &next);
        scaler_free(sc2);
        scaler_free(sc3);
        scaler_free(sc);
}

static void test_zero(void) {
        struct scaler *sc;
        struct dep_spec deps[1] = { dep("a", "Cold", true, 0, 3) };
        struct serve_spec spec = { .deps = deps, .n_deps = 1 };
        double next;

        deps[0].as.downscale_to_zero_delay_s = 2;
        scaler_new(&sc);
        scaler_sync(sc, &spec, 0, NULL, NULL);
        is_int(deps[0].replicas, 0, "min_replicas 0 starts at zero");
        scaler_tick(sc, &spec, 0.1, &next);
        ok(!scaler_urgent(sc), "nothing waiting: nothing urgent");
        struct scaler_load l = { .waiting_at_zero = 1 };
        scaler_add_load(sc, "a", "Cold", &l);
        ok(scaler_urgent(sc), "a request waiting at zero replicas is urgent");
        ok(scaler_tick(sc, &spec, 0.15, &next) == 1 && deps[0].replicas == 1,
           "the next tick (even before its time) starts one replica: %d", deps[0].replicas);
        int n = run(sc, &spec, 0.25, 2.5, 0, 0);
        is_int(n, 1, "idle, it waits for downscale_to_zero_delay_s (2 s) and the look-back window");
        is_int(run(sc, &spec, 2.5, 8, 0, 0), 0, "then goes back to zero");
        scaler_free(sc);
}

static void test_signals(void) {
        struct scaler *sc;
        struct dep_spec deps[1] = { dep("a", "Burn", true, 1, 8) };
        struct serve_spec spec = { .deps = deps, .n_deps = 1 };
        struct scaler_status st;
        struct buf b = {};

        deps[0].as.target_cpu_utilization = 0.5;
        deps[0].as.target_ongoing_requests = 100;
        scaler_new(&sc);
        scaler_sync(sc, &spec, 0, NULL, NULL);
        is_int(run(sc, &spec, 0, 10, 1, 1.5), 3, "1.5 CPUs busy at 50%% of one CPU per replica -> 3 (requests alone want 1)");
        ok(scaler_status(sc, "a", "Burn", &st) && strncmp(st.reason, "cpu:", 4) == 0, "the CPU signal decided: %s",
           st.reason);
        ok(scaler_render_metrics(sc, &b) == 0 && b.data &&
                   strstr(b.data, "serve_autoscaler_desired_replicas{application=\"a\",deployment=\"Burn\"} 3") &&
                   strstr(b.data, "serve_autoscaler_decisions_total{application=\"a\",deployment=\"Burn\",direction=\"up\"} 1"),
           "metrics: desired replicas and decisions by direction");
        buf_free(&b);
        scaler_free(sc);
}

static void test_runqueue(void) {
        struct scaler *sc;
        struct dep_spec deps[1] = { dep("a", "Busy", true, 2, 8) };
        struct serve_spec spec = { .deps = deps, .n_deps = 1 };
        struct scaler_status st;
        double next;

        deps[0].as.target_runqueue_delay_ms = 2;
        deps[0].as.target_ongoing_requests = 100;
        scaler_new(&sc);
        scaler_sync(sc, &spec, 0, NULL, NULL);
        /* 2 replicas whose wakeups wait 6 ms each on average: 3 x the target -> 6 replicas (the
         * first decision; the fed delay does not fall after it, as a real one would). */
        for (double t = 0; t < 10 && deps[0].replicas == 2; t += 0.25) {
                struct scaler_load l = { .busy_s = 0.25, .rq_delay_s = 0.006 * 100, .rq_wakeups = 100 };
                scaler_add_load(sc, "a", "Busy", &l);
                scaler_tick(sc, &spec, t, &next);
        }
        is_int(deps[0].replicas, 6, "run-queue delay 3x its target on 2 replicas -> 6");
        ok(scaler_status(sc, "a", "Busy", &st) && strncmp(st.reason, "runqueue:", 9) == 0, "the run-queue signal decided: %s",
           st.reason);
        scaler_free(sc);
}

int main(void) {
        log_set_level(LOG_ERR);
        test_sync();
        test_zero();
        test_signals();
        test_runqueue();
        return tap_done();
}
