/* The replica autoscaler's policy: how many replicas a deployment should have, from the load
 * the routers measured and its autoscaling_config. Pure: no clock, no I/O. The caller feeds
 * samples with their times and asks for a decision; the same module serves serve-head (the
 * cluster) and `serve run` (one machine).
 *
 * Load is the deployment's requests in all, ongoing at replicas and queued in routers (exact:
 * the routers hold every request). A sample reports the load since the previous one; they are
 * aggregated over look_back_s: time-weighted mean (each for the part of its interval in the
 * window), max or min. With no sample in the window the last one known stands; at zero
 * replicas the newest one counts in full (a request waits).
 *
 * Desired (Ray's rule): with current replicas c and load L, the error ratio is
 * e = L / (target * c); up: ceil(c * (1 + (e - 1) * upscaling_factor)); down:
 * ceil(c * (1 + (e - 1) * downscaling_factor)); from 0: ceil(L / target). Clamped to
 * [min, max]. Two guards against flapping (ray#18925: after scaling up, the per-replica average
 * halves and a naive rule scales down again):
 *   - a smaller count is chosen only when the load it would carry, L / desired, stays at or
 *     below DOWNSCALE_MARGIN x target; otherwise the count where it does (never above current);
 *   - a change must be wanted, in the same direction, for the whole delay (upscale_delay_s,
 *     downscale_delay_s, or downscale_to_zero_delay_s for the last replica), in the caller's
 *     time, not in decision rounds (ray#62004). The direction's clock restarts when the wish
 *     disappears. Scaling up from zero is immediate: a request is waiting.
 * Every decision says why, with its inputs, in one line. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define AUTOSCALE_MAX_SAMPLES 256
#define AUTOSCALE_DOWNSCALE_MARGIN 0.8

enum autoscale_aggregation { AUTOSCALE_MEAN, AUTOSCALE_MAX, AUTOSCALE_MIN };

struct autoscale_params {
        int min_replicas, max_replicas;
        double target_ongoing_requests;     /* > 0 */
        double upscale_delay_s, downscale_delay_s, downscale_to_zero_delay_s;
        double upscaling_factor, downscaling_factor; /* > 0 */
        double look_back_s;                 /* > 0 */
        enum autoscale_aggregation aggregation;
};

struct autoscale_sample {
        double t;                           /* seconds, any monotonic origin */
        double load;
};

struct autoscale {
        struct autoscale_params p;
        struct autoscale_sample samples[AUTOSCALE_MAX_SAMPLES]; /* a ring, oldest first */
        size_t first, n;
        int direction;                      /* of the pending wish: +1, -1, 0 */
        double since;                       /* when the pending wish began */
};

enum autoscale_direction { AUTOSCALE_NONE = 0, AUTOSCALE_UP = 1, AUTOSCALE_DOWN = -1 };

struct autoscale_decision {
        int desired;                        /* what the deployment should run now */
        enum autoscale_direction direction; /* desired vs current */
        double load;                        /* aggregated over the look-back window */
        int wanted;                         /* what the load asks for, before the delays */
        char reason[200];
};

/* Starts with no samples. Returns 0, or -EINVAL for parameters out of range. */
int autoscale_init(struct autoscale *a, const struct autoscale_params *p);
/* New parameters (a reload): the samples and a pending wish are kept. */
int autoscale_set_params(struct autoscale *a, const struct autoscale_params *p);
/* The load at time t (t not before the previous sample's; older ones are ignored). */
void autoscale_sample(struct autoscale *a, double t, double load);
/* The decision at time t for a deployment running `current` replicas. Samples older than the
 * look-back window (but the last one before it, which still holds at its start) are dropped. */
void autoscale_decide(struct autoscale *a, double t, int current, struct autoscale_decision *ret);
