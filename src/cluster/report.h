/* A worker's `report` (its heartbeat to the head: replicas, queues, request counters) and the
 * Prometheus page rendered from reports: the worker renders its own, the head renders the
 * latest report of every node, so both pages have the same metrics and labels. */
#pragma once

#include <cjson/cJSON.h>

#include "util.h"

/* A replica's run-queue delay histogram (`rq_delay` in a report: cumulative "buckets", "sum" in
 * seconds, "count"): bucket i < REPORT_RQ_BUCKETS - 1 counts waits shorter than 2^(i+1)
 * microseconds, the last one is +Inf. The layout is fixed, as the eBPF programs fill it. */
#define REPORT_RQ_BUCKETS 20

/* Checks every field of a received report. Returns 0 or -EINVAL with the reason in err. */
int report_validate(const cJSON *msg, char *err, size_t errlen);

/* Renders /metrics for n nodes (names[i] sent reports[i]; a NULL report is skipped). Returns 0
 * or a negative errno from the buffer. */
int report_render_metrics(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n);
