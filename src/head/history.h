/* The dashboard's time series: a bounded in-memory history (by default the last hour at 5 s
 * resolution) of numbers the head samples from the workers' reports. A series is named by
 * scope ("deployments", "nodes", ...), name ("app/Deployment", "node-1") and metric
 * ("requests_per_s"); every series has one value per point, NaN where it had none, and a series
 * that stayed empty for a whole window is dropped. Memory: capacity × 8 bytes of timestamps plus,
 * per series, capacity × 4 bytes and its names (~2.9 KiB for 720 points); at most max_series
 * series exist (more are counted in `series_dropped`, not stored). Pure data: no I/O. */
#pragma once

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

struct history;

/* Returns 0 or -ENOMEM / -EINVAL (capacity or max_series 0). */
int history_new(double interval_s, size_t capacity, size_t max_series, struct history **ret);
void history_free(struct history *h);

/* Starts a new point at wall time t (seconds): every series has no value there until set. The
 * oldest point goes when the window is full. */
void history_begin(struct history *h, double t);
/* Sets series scope/name/metric's value at the current point (creating the series). Returns 0,
 * -ENOSPC past max_series, -ENOMEM, or -EINVAL before the first history_begin(). */
int history_set(struct history *h, const char *scope, const char *name, const char *metric, double v);

/* {"interval_s","capacity","memory_bytes","series_count","series_dropped","t":[...],
 *  "series":{scope:{name:{metric:[...]}}}} with the points whose time is > since (all: since < 0);
 * NaN is null. NULL on ENOMEM. */
cJSON *history_json(const struct history *h, double since);

/* Bytes held (timestamps, values, names, index). */
size_t history_memory(const struct history *h);
size_t history_series_count(const struct history *h);
