#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ctlmsg.h"
#include "events.h"
#include "macros.h"
#include "metrics.h"
#include "report.h"

#define REPORT_MAX_ITEMS 100000

#define CHECK(x)                  \
        do {                      \
                if ((x) < 0)      \
                        return -EINVAL; \
        } while (0)

/* A replica's optional "rq_delay": {"buckets": [REPORT_RQ_BUCKETS cumulative counts], "sum": s,
 * "count": n}; buckets may be missing (the fallback has no histogram). */
static int validate_rq_delay(const cJSON *rep, char *err, size_t errlen) {
        const cJSON *o, *b, *v;
        double count, sum, prev = 0;
        int i = 0;

        CHECK(ctl_get_object(rep, "rq_delay", false, &o, err, errlen));
        if (!o)
                return 0;
        CHECK(ctl_get_double(o, "count", 0, 1e18, true, &count, err, errlen));
        CHECK(ctl_get_double(o, "sum", 0, 1e12, true, &sum, err, errlen));
        CHECK(ctl_get_array(o, "buckets", REPORT_RQ_BUCKETS, false, &b, err, errlen));
        if (!b)
                return 0;
        cJSON_ArrayForEach(v, b) {
                if (!cJSON_IsNumber(v) || !(v->valuedouble >= prev) || v->valuedouble > 1e18) {
                        snprintf(err, errlen, "field rq_delay.buckets: not a cumulative count");
                        return -EINVAL;
                }
                prev = v->valuedouble;
                i++;
        }
        if (i != REPORT_RQ_BUCKETS || prev != count) {
                snprintf(err, errlen, "field rq_delay.buckets: want %d cumulative counts ending at count", REPORT_RQ_BUCKETS);
                return -EINVAL;
        }
        return 0;
}

int report_validate(const cJSON *msg, char *err, size_t errlen) {
        const cJSON *reps, *deps, *stats, *evs, *it, *pj;
        const char *sv;
        long long iv;
        double dv;
        bool bv;

        CHECK(ctl_get_array(msg, "replicas", REPORT_MAX_ITEMS, true, &reps, err, errlen));
        CHECK(ctl_get_array(msg, "deployments", REPORT_MAX_ITEMS, false, &deps, err, errlen));
        CHECK(ctl_get_array(msg, "stats", REPORT_MAX_ITEMS, false, &stats, err, errlen));
        cJSON_ArrayForEach(it, reps) {
                CHECK(ctl_get_string(it, "id", 300, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "app", 200, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "deployment", 200, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "version", 16, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "state", 16, true, &sv, err, errlen));
                if (!streq(sv, "STARTING") && !streq(sv, "RUNNING") && !streq(sv, "STOPPING")) {
                        snprintf(err, errlen, "field state: unknown replica state");
                        return -EINVAL;
                }
                CHECK(ctl_get_int(it, "pid", -1, 1 << 30, true, &iv, err, errlen));
                CHECK(ctl_get_int(it, "ongoing", 0, 1 << 30, true, &iv, err, errlen));
                CHECK(ctl_get_double(it, "started_at", 0, 1e11, false, &dv, err, errlen));
                CHECK(ctl_get_string(it, "gpus", 64, false, &sv, err, errlen));
                CHECK(ctl_get_string(it, "limits", 256, false, &sv, err, errlen));
                CHECK(ctl_get_double(it, "cpu_s", 0, 1e12, false, &dv, err, errlen));
                CHECK(ctl_get_int(it, "restarts", 0, 1 << 30, false, &iv, err, errlen));
                CHECK(validate_rq_delay(it, err, errlen));
        }
        cJSON_ArrayForEach(it, deps) {
                CHECK(ctl_get_string(it, "app", 200, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "deployment", 200, true, &sv, err, errlen));
                CHECK(ctl_get_int(it, "queued", 0, 1ll << 40, true, &iv, err, errlen));
                CHECK(ctl_get_int(it, "ready", 0, 1 << 30, true, &iv, err, errlen));
                /* The autoscaler's input since the previous report (scaler.h). */
                CHECK(ctl_get_double(it, "busy_s", 0, 1e12, false, &dv, err, errlen));
                CHECK(ctl_get_double(it, "cpu_used_s", 0, 1e12, false, &dv, err, errlen));
                CHECK(ctl_get_double(it, "rq_wait_s", 0, 1e12, false, &dv, err, errlen));
                CHECK(ctl_get_double(it, "rq_waits", 0, 1e18, false, &dv, err, errlen));
                CHECK(ctl_get_bool(it, "retiring", false, &bv, err, errlen));
        }
        cJSON_ArrayForEach(it, stats) {
                struct latency_hist h;
                CHECK(ctl_get_string(it, "app", 200, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "deployment", 200, true, &sv, err, errlen));
                CHECK(ctl_get_double(it, "requests", 0, 1e18, true, &dv, err, errlen));
                CHECK(ctl_get_double(it, "errors", 0, 1e18, true, &dv, err, errlen));
                CHECK(ctl_get_double(it, "replica_starts", 0, 1e18, false, &dv, err, errlen));
                if (latency_hist_json_get(it, &h) < 0) {
                        snprintf(err, errlen, "field latency_ms_buckets: invalid histogram");
                        return -EINVAL;
                }
        }
        CHECK(ctl_get_array(msg, "events", EVENT_REPORT_MAX, false, &evs, err, errlen));
        cJSON_ArrayForEach(it, evs) {
                CHECK(ctl_get_int(it, "id", 1, 1ll << 53, true, &iv, err, errlen));
                CHECK(ctl_get_double(it, "time", 0, 1e11, true, &dv, err, errlen));
                CHECK(ctl_get_string(it, "kind", EVENT_KIND_MAX - 1, true, &sv, err, errlen));
                if (!event_kind_valid(sv)) {
                        snprintf(err, errlen, "field events.kind: want [a-z_]+");
                        return -EINVAL;
                }
                CHECK(ctl_get_string(it, "subject", EVENT_SUBJECT_MAX - 1, true, &sv, err, errlen));
                CHECK(ctl_get_string(it, "node", EVENT_NODE_MAX - 1, false, &sv, err, errlen));
                CHECK(ctl_get_string(it, "message", EVENT_MESSAGE_MAX - 1, true, &sv, err, errlen));
        }
        CHECK(ctl_get_object(msg, "peers", false, &pj, err, errlen));
        CHECK(ctl_get_object(msg, "load", false, &pj, err, errlen));
        if (pj) {
                CHECK(ctl_get_int(pj, "ebpf", 0, 1, true, &iv, err, errlen));
                CHECK(ctl_get_double(pj, "listen_queue", 0, 1e12, false, &dv, err, errlen));
                CHECK(ctl_get_double(pj, "listen_overflows", 0, 1e18, false, &dv, err, errlen));
        }
        return 0;
}

static double num(const cJSON *o, const char *k) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
        return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *k) { return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, k)) ?: ""; }

/* One family with a sample per node, from a field of the node's report's "peers" object. */
static int node_peer_metric(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n,
                            const char *family, enum metrics_type type, const char *help, const char *field) {
        int r = metrics_family(b, family, type, help);

        for (size_t i = 0; r >= 0 && i < n; i++) {
                const cJSON *pj = reports[i] ? cJSON_GetObjectItemCaseSensitive(reports[i], "peers") : NULL;
                const char *l[] = { "node", names[i], NULL };
                if (pj)
                        r = metrics_sample(b, family, l, num(pj, field));
        }
        return r;
}

#define RQ_FAMILY "serve_replica_runqueue_delay_seconds"

/* One replica's run-queue delay histogram (only the +Inf bucket when the report has none). */
static int render_rq_delay(struct buf *b, const char *const *labels, const cJSON *o) {
        const cJSON *buckets = cJSON_GetObjectItemCaseSensitive(o, "buckets"), *v;
        const char *l[16];
        char le[32];
        size_t nl = 0;
        int i = 0, r;

        while (labels[nl] && nl < ELEMENTSOF(l) - 3)
                l[nl] = labels[nl], nl++;
        l[nl] = "le";
        l[nl + 1] = le;
        l[nl + 2] = NULL;
        cJSON_ArrayForEach(v, buckets) {
                if (i >= REPORT_RQ_BUCKETS - 1)
                        break;
                snprintf(le, sizeof le, "%.9g", (double)(2ull << i) / 1e6);
                if ((r = metrics_sample(b, RQ_FAMILY "_bucket", l, v->valuedouble)) < 0)
                        return r;
                i++;
        }
        snprintf(le, sizeof le, "+Inf");
        if ((r = metrics_sample(b, RQ_FAMILY "_bucket", l, num(o, "count"))) < 0 ||
            (r = metrics_sample(b, RQ_FAMILY "_sum", labels, num(o, "sum"))) < 0 ||
            (r = metrics_sample(b, RQ_FAMILY "_count", labels, num(o, "count"))) < 0)
                return r;
        return 0;
}

/* One family with samples per replica: writes its HELP/TYPE, then calls sample() for every
 * replica of every report with the replica's labels (node, application, deployment, replica). */
static int replica_family(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n,
                          const char *family, enum metrics_type type, const char *help,
                          int (*sample)(struct buf *b, const char *const *labels, const cJSON *replica)) {
        const cJSON *it;
        int r = metrics_family(b, family, type, help);

        for (size_t i = 0; r >= 0 && i < n; i++) {
                if (!reports[i])
                        continue;
                cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(reports[i], "replicas")) {
                        const char *labels[] = { "node", names[i], "application", str(it, "app"), "deployment",
                                                 str(it, "deployment"), "replica", str(it, "id"), NULL };
                        if ((r = sample(b, labels, it)) < 0)
                                break;
                }
        }
        return r;
}

static int sample_ongoing(struct buf *b, const char *const *labels, const cJSON *rep) {
        return metrics_sample(b, "serve_replica_processing_queries", labels, num(rep, "ongoing"));
}

static int sample_cpu(struct buf *b, const char *const *labels, const cJSON *rep) {
        if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rep, "cpu_s")))
                return 0;
        return metrics_sample(b, "serve_replica_cpu_seconds_total", labels, num(rep, "cpu_s"));
}

static int sample_rq_delay(struct buf *b, const char *const *labels, const cJSON *rep) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(rep, "rq_delay");
        return cJSON_IsObject(o) ? render_rq_delay(b, labels, o) : 0;
}

/* The load monitor's families: per replica CPU time and run-queue delay, per node the listener. */
static int render_load(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n) {
        static const struct {
                const char *name, *help, *field;
                enum metrics_type type;
        } node_fams[] = {
                { "serve_load_monitor_ebpf", "1 when the eBPF load monitor runs, 0 on its /proc fallback", "ebpf", METRICS_GAUGE },
                { "serve_node_listen_queue", "Connections waiting in the HTTP listener's accept queue", "listen_queue",
                  METRICS_GAUGE },
                { "serve_node_listen_overflows_total", "Connections the kernel dropped on a full accept queue (TcpExt ListenOverflows)",
                  "listen_overflows", METRICS_COUNTER },
        };
        int r;

        if ((r = replica_family(b, names, reports, n, "serve_replica_cpu_seconds_total", METRICS_COUNTER,
                                "CPU time of a replica's processes", sample_cpu)) < 0 ||
            (r = replica_family(b, names, reports, n, RQ_FAMILY, METRICS_HISTOGRAM,
                                "Time a replica's threads waited for a CPU once runnable", sample_rq_delay)) < 0)
                return r;
        for (size_t f = 0; f < ELEMENTSOF(node_fams); f++) {
                if ((r = metrics_family(b, node_fams[f].name, node_fams[f].type, node_fams[f].help)) < 0)
                        return r;
                for (size_t i = 0; i < n; i++) {
                        const cJSON *lj = reports[i] ? cJSON_GetObjectItemCaseSensitive(reports[i], "load") : NULL;
                        const char *l[] = { "node", names[i], NULL };
                        if (lj && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(lj, node_fams[f].field)) &&
                            (r = metrics_sample(b, node_fams[f].name, l, num(lj, node_fams[f].field))) < 0)
                                return r;
                }
        }
        return 0;
}

int report_render_metrics(struct buf *b, const char *const *names, const cJSON *const *reports, size_t n) {
        static const struct {
                const char *name, *help, *array, *field;
                enum metrics_type type;
        } fams[] = {
                { "serve_num_http_requests", "HTTP requests answered by this node's proxy", "stats", "requests", METRICS_COUNTER },
                { "serve_num_http_error_requests", "HTTP requests answered with a status >= 400", "stats", "errors", METRICS_COUNTER },
                { "serve_deployment_replica_starts", "Replica processes started", "stats", "replica_starts", METRICS_COUNTER },
                { "serve_deployment_queued_queries", "Requests waiting for a replica", "deployments", "queued", METRICS_GAUGE },
                { "serve_deployment_ready_replicas", "Replicas ready to serve", "deployments", "ready", METRICS_GAUGE },
        };
        const cJSON *it;
        int r;

        for (size_t f = 0; f < ELEMENTSOF(fams); f++) {
                if ((r = metrics_family(b, fams[f].name, fams[f].type, fams[f].help)) < 0)
                        return r;
                for (size_t i = 0; i < n; i++) {
                        if (!reports[i])
                                continue;
                        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(reports[i], fams[f].array)) {
                                const char *labels[] = { "node", names[i], "application", str(it, "app"), "deployment",
                                                         str(it, "deployment"), NULL };
                                if ((r = metrics_sample(b, fams[f].name, labels, num(it, fams[f].field))) < 0)
                                        return r;
                        }
                }
        }
        if ((r = metrics_family(b, "serve_deployment_processing_latency_ms", METRICS_HISTOGRAM,
                                "Time from the whole request at the proxy to the whole response, in ms")) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                if (!reports[i])
                        continue;
                cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(reports[i], "stats")) {
                        struct latency_hist h;
                        const char *labels[] = { "node", names[i], "application", str(it, "app"), "deployment",
                                                 str(it, "deployment"), NULL };
                        if (latency_hist_json_get(it, &h) < 0)
                                continue;
                        if ((r = metrics_histogram(b, "serve_deployment_processing_latency_ms", labels, &h)) < 0)
                                return r;
                }
        }
        if ((r = replica_family(b, names, reports, n, "serve_replica_processing_queries", METRICS_GAUGE,
                                "Requests a replica is working on", sample_ongoing)) < 0 ||
            (r = render_load(b, names, reports, n)) < 0)
                return r;
        if ((r = metrics_family(b, "serve_cross_node_requests", METRICS_COUNTER,
                                "Requests this node sent to (direction=out) or served for (direction=in) peer nodes")) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                const cJSON *pj = reports[i] ? cJSON_GetObjectItemCaseSensitive(reports[i], "peers") : NULL;
                if (!pj)
                        continue;
                const char *lo[] = { "node", names[i], "direction", "out", NULL };
                const char *li[] = { "node", names[i], "direction", "in", NULL };
                if ((r = metrics_sample(b, "serve_cross_node_requests", lo, num(pj, "sent"))) < 0 ||
                    (r = metrics_sample(b, "serve_cross_node_requests", li, num(pj, "received"))) < 0)
                        return r;
        }
        if ((r = node_peer_metric(b, names, reports, n, "serve_peer_requests_refused", METRICS_COUNTER,
                                  "Requests from peer nodes refused by a limit (body size, streams, body budget)",
                                  "refused")) < 0 ||
            (r = node_peer_metric(b, names, reports, n, "serve_peer_links_dropped", METRICS_COUNTER,
                                  "Peer data links this node closed because the peer misbehaved or did not read",
                                  "links_dropped")) < 0 ||
            (r = node_peer_metric(b, names, reports, n, "serve_request_body_bytes_buffered", METRICS_GAUGE,
                                  "Request body bytes buffered on the node (bounded by max_buffered_request_bytes)",
                                  "body_buffered")) < 0)
                return r;
        return 0;
}
