/* Prometheus text exposition (format 0.0.4) for the head's and the workers' /metrics, and the
 * latency histogram both sides share: workers observe request latencies into a latency_hist,
 * send it in the control protocol's `report` as cumulative `latency_ms_buckets` plus
 * `latency_ms_sum`, and the head merges what every worker sent and renders it. */
#pragma once

#include <stdint.h>

#include "util.h"

struct cJSON;

/* Upper bounds (ms) of the latency buckets, then one +Inf bucket: the layout is fixed, so
 * histograms from different nodes merge by adding bucket by bucket. */
#define LATENCY_BOUNDS_MS 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000
#define LATENCY_BUCKETS 14 /* 13 finite bounds + +Inf */
extern const double latency_bounds_ms[LATENCY_BUCKETS - 1];

struct latency_hist {
        uint64_t buckets[LATENCY_BUCKETS]; /* non-cumulative: buckets[i] counts bounds[i-1] < ms <= bounds[i] */
        uint64_t count;                    /* sum of buckets[] */
        double sum_ms;
};

/* Counts one request that took `ms` milliseconds (negative counts as 0; NaN is ignored). */
void latency_hist_observe(struct latency_hist *h, double ms);
/* Adds `from` into `into` bucket by bucket. */
void latency_hist_merge(struct latency_hist *into, const struct latency_hist *from);

/* into = now - before (what was observed in between); when a counter went down (the worker
 * restarted), into = now. */
void latency_hist_delta(struct latency_hist *into, const struct latency_hist *now, const struct latency_hist *before);
/* The q-quantile (0..1) in ms, linear within its bucket (the +Inf bucket gives the largest finite
 * bound); NaN for an empty histogram. */
double latency_hist_quantile(const struct latency_hist *h, double q);

/* Builds the cumulative JSON array (LATENCY_BUCKETS numbers, the last == count) that a report's
 * `latency_ms_buckets` carries. Returns 0 with *ret owned by the caller, or -ENOMEM. */
int latency_hist_to_json(const struct latency_hist *h, struct cJSON **ret);
/* Parses a report's cumulative `latency_ms_buckets` array and `latency_ms_sum` number. Both must
 * be present; the array must have exactly LATENCY_BUCKETS entries, each a finite, non-negative
 * integer no smaller than the one before; the sum must be finite and non-negative. Returns 0 and
 * fills *ret, or -EINVAL (ret untouched). */
int latency_hist_from_json(const struct cJSON *buckets, const struct cJSON *sum, struct latency_hist *ret);

/* Convenience for a report's deployment object: adds "latency_ms_buckets" and "latency_ms_sum".
 * Returns 0 or -ENOMEM. */
int latency_hist_json_add(struct cJSON *obj, const struct latency_hist *h);
/* Reads "latency_ms_buckets" and "latency_ms_sum" from obj. Returns 0 or -EINVAL. */
int latency_hist_json_get(const struct cJSON *obj, struct latency_hist *ret);

/* Hard cap on one /metrics page, the limit every renderer call passes to buf_printf. */
#define METRICS_TEXT_MAX (64u << 20)

enum metrics_type {
        METRICS_COUNTER,
        METRICS_GAUGE,
        METRICS_HISTOGRAM,
};

/* The renderers append to b. On error nothing is appended (a half-written line never reaches
 * the page). Each returns 0, -EINVAL (a metric or label name Prometheus would reject, or an odd
 * number of label strings) or -ENOBUFS/-ENOMEM from the buffer. */

/* Writes the family's `# HELP` and `# TYPE` lines; call once per family, before its samples.
 * help may be NULL (no HELP line). */
int metrics_family(struct buf *b, const char *name, enum metrics_type type, const char *help);
/* Writes `name{k="v",...} value`. labels: NULL, or key, value, key, value, ..., NULL; values are
 * escaped (backslash, double quote, newline). */
int metrics_sample(struct buf *b, const char *name, const char *const *labels, double value);
/* Writes name_bucket{...,le="..."} lines (cumulative, le="+Inf" == count), name_sum, name_count. */
int metrics_histogram(struct buf *b, const char *name, const char *const *labels, const struct latency_hist *h);
