/* The autoscaler's policy against scripted load series: what a user would see (how many
 * replicas, and when), with the clock in the test's hands. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "autoscale.h"
#include "tap.h"

static struct autoscale_params params(void) {
        return (struct autoscale_params){
                .min_replicas = 1, .max_replicas = 10, .target_ongoing_requests = 2,
                .upscale_delay_s = 3, .downscale_delay_s = 10, .downscale_to_zero_delay_s = 20,
                .upscaling_factor = 1, .downscaling_factor = 1, .look_back_s = 5, .aggregation = AUTOSCALE_MEAN,
        };
}

/* run: from t0 to t1 in steps of dt, samples load(t) and decides, applying each decision at once
 * (replicas = desired). Returns the replicas at t1; *ret_first_change: when they first changed. */
static int run(struct autoscale *a, double t0, double t1, double dt, double (*load)(double), int replicas,
               double *ret_first_change) {
        struct autoscale_decision d;
        double first = -1;

        for (double t = t0; t <= t1 + 1e-9; t += dt) {
                autoscale_sample(a, t, load(t));
                autoscale_decide(a, t, replicas, &d);
                if (d.desired != replicas && first < 0)
                        first = t;
                replicas = d.desired;
        }
        if (ret_first_change)
                *ret_first_change = first;
        return replicas;
}

/* A report at t, then the decision at t. */
static void at(struct autoscale *a, double t, double load, int current, struct autoscale_decision *d) {
        autoscale_sample(a, t, load);
        autoscale_decide(a, t, current, d);
}

static double step_at_10(double t) { return t < 10 ? 2 : 8; }
static double constant_4(double t) { (void)t; return 4; }
static double zero(double t) { (void)t; return 0; }
static double ramp(double t) { return t < 30 ? t / 3 : 10; }

static void test_step(void) {
        struct autoscale a;
        double when;
        struct autoscale_params p = params();

        is_int(autoscale_init(&a, &p), 0, "parameters accepted");
        int n = run(&a, 0, 30, 0.1, step_at_10, 1, &when);
        is_int(n, 4, "a step from 2 to 8 requests (target 2 each) ends at 4 replicas");
        /* The mean over 5 s passes 2 (one replica's target) just after the step, and the wish
         * must then hold for the 3 s delay. */
        ok(when >= 13 && when <= 14, "the first change comes one upscale delay after the step (at %.1f s)", when);
}

static void test_delay_is_time(void) {
        struct autoscale a, b;
        struct autoscale_params p = params();
        double fast, slow;

        autoscale_init(&a, &p);
        autoscale_init(&b, &p);
        run(&a, 0, 30, 0.01, step_at_10, 1, &fast);
        run(&b, 0, 30, 0.5, step_at_10, 1, &slow);
        ok(fabs(fast - slow) <= 0.5, "the delay is seconds, not decisions: %.2f s deciding every 10 ms, %.2f s every 500 ms",
           fast, slow);
}

static void test_boundary_plateau(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        struct autoscale_decision d;
        int changes = 0, replicas = 2;

        autoscale_init(&a, &p);
        for (double t = 0; t < 1000; t += 0.5) {
                autoscale_sample(&a, t, constant_4(t));
                autoscale_decide(&a, t, replicas, &d);
                changes += d.desired != replicas || d.wanted != replicas;
                replicas = d.desired;
        }
        is_int(changes, 0, "a constant load exactly at the target (4 on 2 replicas) never moves anything in 1000 s");
}

static void test_no_flapping(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        struct autoscale_decision d;

        autoscale_init(&a, &p);
        /* After scaling 2 -> 4 for 8 requests, each replica holds 2: exactly the target. */
        autoscale_sample(&a, 0, 8);
        autoscale_decide(&a, 100, 4, &d);
        is_int(d.wanted, 4, "after scaling up, the halved per-replica load is no reason to scale down");
        /* 6 requests on 4 replicas: 3 would carry 2 each, above 80%% of the target: stay. */
        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 6);
        autoscale_decide(&a, 100, 4, &d);
        is_int(d.wanted, 4, "6 requests on 4 replicas: 3 would be at the target, beyond the margin: stay at 4");
        /* 4 requests on 4 replicas: naive would go to 2 (at the target); 3 keeps them under. */
        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 4);
        autoscale_decide(&a, 100, 4, &d);
        is_int(d.wanted, 3, "4 requests on 4 replicas: down to 3, not to 2 (2 would be at the target exactly)");
        ok(strstr(d.reason, "margin") != NULL, "the reason says why not fewer: %s", d.reason);
}

static void test_to_zero_and_back(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        struct autoscale_decision d;
        double when;

        p.min_replicas = 0;
        autoscale_init(&a, &p);
        int n = run(&a, 0, 100, 0.5, zero, 1, &when);
        is_int(n, 0, "no load with min_replicas 0: the last replica goes");
        ok(when >= 20 && when <= 20.5, "... after downscale_to_zero_delay_s (20 s), not downscale_delay_s (at %.1f s)", when);
        autoscale_sample(&a, 100.2, 1);
        autoscale_decide(&a, 100.2, 0, &d);
        ok(d.desired == 1 && d.direction == AUTOSCALE_UP, "a request at zero replicas scales up at once (got %d)", d.desired);
        ok(strstr(d.reason, "from zero") != NULL, "... and says so: %s", d.reason);

        p.min_replicas = 1;
        autoscale_init(&a, &p);
        is_int(run(&a, 0, 100, 0.5, zero, 3, NULL), 1, "with min_replicas 1, no load scales down to 1, never 0");
}

static void test_ramp_and_clamp(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        int prev = 1, replicas = 1, ups = 0, downs = 0;
        struct autoscale_decision d;

        autoscale_init(&a, &p);
        for (double t = 0; t <= 60; t += 0.25) {
                autoscale_sample(&a, t, ramp(t));
                autoscale_decide(&a, t, replicas, &d);
                replicas = d.desired;
                ups += replicas > prev;
                downs += replicas < prev;
                prev = replicas;
        }
        is_int(replicas, 5, "a ramp to 10 requests settles at 5 replicas");
        is_int(downs, 0, "a rising load never scales down");
        ok(ups >= 2, "it scaled up in steps as the load rose (%d steps)", ups);

        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 1000);
        autoscale_decide(&a, 10, 1, &d);
        is_int(d.wanted, 10, "a huge load asks for max_replicas, not more");
        autoscale_decide(&a, 13, 1, &d);
        is_int(d.desired, 10, "... and gets them after the upscale delay");
}

static void test_wish_must_persist(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        struct autoscale_decision d;

        p.look_back_s = 0.1; /* the latest sample only */
        autoscale_init(&a, &p);
        at(&a, 0, 8, 1, &d);
        at(&a, 2, 8, 1, &d);
        is_int(d.desired, 1, "2 s of a 3 s delay: not yet");
        ok(strstr(d.reason, "upscale delay") != NULL, "the reason says it waits: %s", d.reason);
        at(&a, 2.5, 2, 1, &d);
        at(&a, 3, 8, 1, &d);
        at(&a, 5.5, 8, 1, &d);
        is_int(d.desired, 1, "a wish that went away starts its delay again");
        at(&a, 6, 8, 1, &d);
        is_int(d.desired, 4, "... and acts once it held for the whole delay");
}

static void test_aggregation_and_factors(void) {
        struct autoscale a;
        struct autoscale_params p = params();
        struct autoscale_decision d;

        p.aggregation = AUTOSCALE_MAX;
        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 2);
        autoscale_sample(&a, 1, 12);
        autoscale_sample(&a, 1.1, 2);
        autoscale_decide(&a, 4, 1, &d);
        ok(d.load == 12 && d.wanted == 6, "max: a short peak counts in full (load %.1f, wants %d)", d.load, d.wanted);
        p.aggregation = AUTOSCALE_MEAN;
        p.look_back_s = 4;
        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 4);  /* before the window: the start of the next one's interval */
        autoscale_sample(&a, 1, 12); /* 12 during (0, 1] */
        autoscale_sample(&a, 4, 2);  /* 2 during (1, 4] */
        autoscale_decide(&a, 4, 1, &d);
        ok(fabs(d.load - 4.5) < 1e-9, "mean: each report weighted by the time it covers (got %.3f, want 4.5)", d.load);
        p.look_back_s = 5;

        p.upscaling_factor = 0.5;
        autoscale_init(&a, &p);
        autoscale_sample(&a, 0, 16);
        autoscale_decide(&a, 0, 2, &d);
        is_int(d.wanted, 5, "upscaling_factor 0.5 goes half the way (2 -> 5 of 8)");
}

static void test_bad_params(void) {
        struct autoscale a;
        struct autoscale_params p = params();

        p.max_replicas = 0;
        is_int(autoscale_init(&a, &p), -EINVAL, "max_replicas 0 is refused");
        p = params();
        p.min_replicas = 11;
        is_int(autoscale_init(&a, &p), -EINVAL, "min above max is refused");
        p = params();
        p.target_ongoing_requests = 0;
        is_int(autoscale_init(&a, &p), -EINVAL, "a zero target is refused");
}

int main(void) {
        test_step();
        test_delay_is_time();
        test_boundary_plateau();
        test_no_flapping();
        test_to_zero_and_back();
        test_ramp_and_clamp();
        test_wish_must_persist();
        test_aggregation_and_factors();
        test_bad_params();
        return tap_done();
}
