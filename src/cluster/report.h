/* A worker's `report` (its heartbeat to the head: replicas, queues, request counters) and the
 * Prometheus page rendered from reports: the worker renders its own, the head renders the
 * latest report of every node, so both pages have the same metrics and labels. */
#pragma once

#include <cjson/cJSON.h>

#include "util.h"

/* Checks every field of a received report. Returns 0 or -EINVAL with the reason in err. */
int report_validate(const cJSON *msg, char *err, size_t errlen);

/* Renders /metrics for n nodes (names[i] sent reports[i]; a NULL report is skipped). Returns 0
 * or a negative errno from the buffer. */
int report_render_metrics(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n);
