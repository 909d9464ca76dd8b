/* The replica autoscaler's policy: see autoscale.h. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "autoscale.h"
#include "macros.h"

static const char *const aggregation_names[] = { "mean", "max", "min" };

/* A reason, cut to the buffer (they are for humans; a cut one still says what happened). */
_printf_(3, 4) static void say(char *buf, size_t len, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        (void)vsnprintf(buf, len, fmt, ap);
        va_end(ap);
}

/* ceil() that does not round 3.0000000001 (a sum of doubles) up to 4. */
static int ceil_count(double x) {
        if (!(x > 0))
                return 0;
        if (x > 1e9)
                return 1000000000;
        return (int)ceil(x - 1e-9);
}

static int clamp(const struct autoscale_params *p, int n) { return MAX(p->min_replicas, MIN(p->max_replicas, n)); }

static bool params_valid(const struct autoscale_params *p) {
        return p->min_replicas >= 0 && p->max_replicas >= 1 && p->max_replicas >= p->min_replicas &&
               p->target_ongoing_requests > 0 && p->upscale_delay_s >= 0 && p->downscale_delay_s >= 0 &&
               p->downscale_to_zero_delay_s >= 0 && p->upscaling_factor > 0 && p->downscaling_factor > 0 &&
               p->look_back_s > 0 && (unsigned)p->aggregation < ELEMENTSOF(aggregation_names);
}

int autoscale_init(struct autoscale *a, const struct autoscale_params *p) {
        if (!params_valid(p))
                return -EINVAL;
        *a = (struct autoscale){ .p = *p };
        return 0;
}

int autoscale_set_params(struct autoscale *a, const struct autoscale_params *p) {
        if (!params_valid(p))
                return -EINVAL;
        a->p = *p;
        return 0;
}

static const struct autoscale_sample *nth(const struct autoscale *a, size_t i) {
        return &a->samples[(a->first + i) % AUTOSCALE_MAX_SAMPLES];
}

void autoscale_sample(struct autoscale *a, double t, double load) {
        if (!(load >= 0) || !isfinite(t))
                return;
        if (a->n > 0 && t < nth(a, a->n - 1)->t)
                return;
        if (a->n == AUTOSCALE_MAX_SAMPLES) { /* the oldest goes: the window is what matters */
                a->first = (a->first + 1) % AUTOSCALE_MAX_SAMPLES;
                a->n--;
        }
        a->samples[(a->first + a->n) % AUTOSCALE_MAX_SAMPLES] = (struct autoscale_sample){ .t = t, .load = load };
        a->n++;
}

/* Drops samples before the window [t - look_back, t] but the last of them: it bounds the
 * interval of the first one inside. */
static void trim(struct autoscale *a, double start) {
        while (a->n >= 2 && nth(a, 1)->t <= start) {
                a->first = (a->first + 1) % AUTOSCALE_MAX_SAMPLES;
                a->n--;
        }
}

/* A sample reports the load since the previous one: each counts for the part of its interval
 * inside the window. With no sample inside, the last one known stands. */
static double aggregate(struct autoscale *a, double t, double *ret_latest) {
        double start = t - a->p.look_back_s, sum = 0, span = 0, agg = NAN, latest = 0;

        trim(a, start);
        for (size_t i = 0; i < a->n; i++) {
                const struct autoscale_sample *s = nth(a, i);
                if (s->t > t)
                        break;
                latest = s->load;
                if (s->t <= start && a->n > 1)
                        continue; /* only the left end of the next one's interval */
                double from = MAX(i > 0 ? nth(a, i - 1)->t : s->t, start);
                if (s->t > from) {
                        sum += s->load * (s->t - from);
                        span += s->t - from;
                }
                if (a->p.aggregation == AUTOSCALE_MAX)
                        agg = isnan(agg) ? s->load : MAX(agg, s->load);
                else if (a->p.aggregation == AUTOSCALE_MIN)
                        agg = isnan(agg) ? s->load : MIN(agg, s->load);
        }
        *ret_latest = latest;
        if (a->p.aggregation != AUTOSCALE_MEAN)
                return isnan(agg) ? latest : agg;
        return span > 0 ? sum / span : latest;
}

/* What the load asks for, before the delays. */
static int wanted_count(const struct autoscale_params *p, double load, int current, const char **ret_why) {
        double target = p->target_ongoing_requests;
        int want;

        if (current <= 0) {
                *ret_why = "";
                return clamp(p, ceil_count(load / target));
        }
        double e = load / (target * current);
        double factor = e > 1 ? p->upscaling_factor : p->downscaling_factor;
        want = clamp(p, ceil_count(current * (1 + (e - 1) * factor)));
        *ret_why = "";
        if (want < current) {
                /* Only as few as carry the load below the target with a margin. */
                int safe = clamp(p, ceil_count(load / (AUTOSCALE_DOWNSCALE_MARGIN * target)));
                if (safe > want) {
                        want = MIN(safe, current);
                        *ret_why = want == current ? " (fewer would carry more than the margin allows)"
                                                   : " (as few as carry it within the margin)";
                }
        }
        return want;
}

void autoscale_decide(struct autoscale *a, double t, int current, struct autoscale_decision *ret) {
        const struct autoscale_params *p = &a->p;
        const char *why = "";
        double latest, load = aggregate(a, t, &latest);
        /* At zero replicas a request that arrived now waits: the newest report decides. */
        if (current <= 0)
                load = MAX(load, latest);
        int want = wanted_count(p, load, current, &why);
        int dir = want > current ? AUTOSCALE_UP : want < current ? AUTOSCALE_DOWN : AUTOSCALE_NONE;
        char inputs[120];

        say(inputs, sizeof inputs, "load %.2f (%s over %g s) on %d replica(s), target %g per replica", load,
                 aggregation_names[p->aggregation], p->look_back_s, current, p->target_ongoing_requests);
        *ret = (struct autoscale_decision){ .desired = current, .load = load, .wanted = want };
        if (dir == AUTOSCALE_NONE) {
                a->direction = 0;
                say(ret->reason, sizeof ret->reason, "%s: %d is right%s", inputs, current, why);
                return;
        }
        if (current == 0) { /* requests wait for a replica: no delay */
                a->direction = 0;
                ret->desired = want;
                ret->direction = AUTOSCALE_UP;
                say(ret->reason, sizeof ret->reason, "%s: scaling from zero to %d at once", inputs, want);
                return;
        }
        if (a->direction != dir) {
                a->direction = dir;
                a->since = t;
        }
        double delay = dir == AUTOSCALE_UP ? p->upscale_delay_s
                       : want == 0        ? p->downscale_to_zero_delay_s
                                          : p->downscale_delay_s;
        if (t - a->since + 1e-9 >= delay) {
                a->direction = 0;
                ret->desired = want;
                ret->direction = dir;
                say(ret->reason, sizeof ret->reason, "%s: scaling %s from %d to %d%s after %.1f s of it", inputs,
                         dir > 0 ? "up" : "down", current, want, why, t - a->since);
                return;
        }
        say(ret->reason, sizeof ret->reason, "%s: wants %d%s, for %.1f of the %g s %s delay", inputs, want, why,
                 t - a->since, delay, dir > 0 ? "upscale" : want == 0 ? "downscale-to-zero" : "downscale");
}
