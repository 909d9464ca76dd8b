/* Prometheus text output as a scraper reads it, and the latency histogram's round trip through
 * the control protocol's report JSON. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>

#include "macros.h"
#include "metrics.h"
#include "tap.h"

static bool text_is(const struct buf *b, const char *want) {
        bool same = b->len == strlen(want) && memcmp(b->data, want, b->len) == 0;
        if (!same)
                printf("#   got:\n%.*s#   want:\n%s", (int)b->len, b->data ? b->data : "", want);
        return same;
}

static void test_counter_escaped_labels(void) {
        struct buf b = {};
        const char *const labels[] = { "app", "a\"b\\c\nd", "deployment", "Echo", NULL };

        is_int(metrics_family(&b, "serve_requests_total", METRICS_COUNTER, "Requests served.\nBy \"app\" \\ deployment."),
               0, "family lines written");
        is_int(metrics_sample(&b, "serve_requests_total", labels, 123), 0, "counter sample written");
        is_int(metrics_sample(&b, "serve_up", NULL, 1), 0, "sample without labels written");
        is_int(metrics_sample(&b, "serve_ratio", NULL, 0.1), 0, "fractional sample written");
        is_int(metrics_sample(&b, "serve_inf", NULL, INFINITY), 0, "infinite sample written");
        ok(text_is(&b,
                   "# HELP serve_requests_total Requests served.\\nBy \"app\" \\\\ deployment.\n"
                   "# TYPE serve_requests_total counter\n"
                   "serve_requests_total{app=\"a\\\"b\\\\c\\nd\",deployment=\"Echo\"} 123\n"
                   "serve_up 1\n"
                   "serve_ratio 0.1\n"
                   "serve_inf +Inf\n"),
           "counter text: HELP escapes backslash and newline, label values also double quotes");
        ok(b.data[b.len] == 0, "page is NUL-terminated");

        size_t before = b.len;
        const char *const bad_key[] = { "bad-key", "v", NULL };
        const char *const odd[] = { "app", NULL };
        is_int(metrics_sample(&b, "serve_x", bad_key, 1), -EINVAL, "label name with '-' rejected");
        is_int(metrics_sample(&b, "9x", NULL, 1), -EINVAL, "metric name starting with a digit rejected");
        is_int(metrics_family(&b, "serve_x", (enum metrics_type)7, NULL), -EINVAL, "unknown type rejected");
        is_int(metrics_sample(&b, "serve_x", odd, 1), -EINVAL, "label key without a value rejected");
        is_int((long long)b.len, (long long)before, "failed calls leave the page unchanged");
        buf_free(&b);
}

static void test_gauge_no_help(void) {
        struct buf b = {};
        const char *const labels[] = { "node", "worker-1", NULL };

        is_int(metrics_family(&b, "serve_replicas", METRICS_GAUGE, NULL), 0, "gauge family without help");
        is_int(metrics_sample(&b, "serve_replicas", labels, -2.5), 0, "gauge sample");
        ok(text_is(&b, "# TYPE serve_replicas gauge\nserve_replicas{node=\"worker-1\"} -2.5\n"), "gauge text");
        buf_free(&b);
}

static void test_histogram(void) {
        struct buf b = {};
        struct latency_hist h = {};
        const char *const labels[] = { "app", "echo", NULL };

        latency_hist_observe(&h, 0.5);   /* le=1 */
        latency_hist_observe(&h, 1);     /* le=1: bounds are inclusive */
        latency_hist_observe(&h, 3);     /* le=5 */
        latency_hist_observe(&h, 150);   /* le=200 */
        latency_hist_observe(&h, 20000); /* +Inf only */
        latency_hist_observe(&h, -1);    /* clamped to 0 */
        latency_hist_observe(&h, NAN);   /* ignored */
        is_int((long long)h.count, 6, "NaN not counted");
        is_int((long long)h.buckets[0], 3, "first bucket non-cumulative count");
        is_int((long long)h.buckets[LATENCY_BUCKETS - 1], 1, "+Inf bucket non-cumulative count");

        is_int(metrics_family(&b, "serve_latency_ms", METRICS_HISTOGRAM, "Request latency."), 0, "histogram family");
        is_int(metrics_histogram(&b, "serve_latency_ms", labels, &h), 0, "histogram written");
        ok(text_is(&b,
                   "# HELP serve_latency_ms Request latency.\n"
                   "# TYPE serve_latency_ms histogram\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"1\"} 3\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"2\"} 3\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"5\"} 4\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"10\"} 4\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"20\"} 4\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"50\"} 4\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"100\"} 4\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"200\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"500\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"1000\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"2000\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"5000\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"10000\"} 5\n"
                   "serve_latency_ms_bucket{app=\"echo\",le=\"+Inf\"} 6\n"
                   "serve_latency_ms_sum{app=\"echo\"} 20154.5\n"
                   "serve_latency_ms_count{app=\"echo\"} 6\n"),
           "histogram text: cumulative buckets, +Inf equals count");
        buf_free(&b);

        /* No labels: le is the only label. */
        struct latency_hist empty = {};
        is_int(metrics_histogram(&b, "h", NULL, &empty), 0, "empty histogram written");
        ok(b.len > 0 && strncmp(b.data, "h_bucket{le=\"1\"} 0\n", 19) == 0, "le is the only label without labels");
        buf_free(&b);

        /* The page limit is a hard cap and a failure leaves no half line. */
        struct buf full = {};
        int r = 0;
        while (r == 0)
                r = metrics_histogram(&full, "serve_latency_ms", labels, &h);
        is_int(r, -ENOBUFS, "page over METRICS_TEXT_MAX refused");
        ok(full.len > 0 && full.data[full.len - 1] == '\n' && full.len <= METRICS_TEXT_MAX,
           "page still ends with a whole line");
        buf_free(&full);
}

static void test_merge(void) {
        struct latency_hist a = {}, b = {};

        latency_hist_observe(&a, 1.5);
        latency_hist_observe(&b, 1.5);
        latency_hist_observe(&b, 7000);
        latency_hist_merge(&a, &b);
        is_int((long long)a.count, 3, "merged count");
        is_int((long long)a.buckets[1], 2, "merged bucket le=2");
        is_int((long long)a.buckets[12], 1, "merged bucket le=10000");
        ok(a.sum_ms == 7003, "merged sum %g", a.sum_ms);
}

static void test_json_round_trip(void) {
        struct latency_hist h = {}, back;
        cJSON *a = NULL;
        _cleanup_free_ char *text = NULL;

        latency_hist_observe(&h, 0.2);
        latency_hist_observe(&h, 4);
        latency_hist_observe(&h, 4);
        latency_hist_observe(&h, 99999);
        h.sum_ms = 12.5; /* any finite value travels as is */
        is_int(latency_hist_to_json(&h, &a), 0, "to_json");
        text = cJSON_PrintUnformatted(a);
        ok(text && streq(text, "[1,1,3,3,3,3,3,3,3,3,3,3,3,4]"), "cumulative array: %s", text ? text : "(null)");

        cJSON *sum = cJSON_CreateNumber(h.sum_ms);
        is_int(latency_hist_from_json(a, sum, &back), 0, "from_json accepts its own output");
        ok(memcmp(back.buckets, h.buckets, sizeof(h.buckets)) == 0 && back.count == h.count && back.sum_ms == h.sum_ms,
           "round trip gives the same histogram");
        cJSON_Delete(a);
        cJSON_Delete(sum);

        /* Through a report's deployment object. */
        cJSON *obj = cJSON_CreateObject();
        is_int(latency_hist_json_add(obj, &h), 0, "json_add");
        _cleanup_free_ char *wire = cJSON_PrintUnformatted(obj);
        cJSON_Delete(obj);
        cJSON *parsed = cJSON_Parse(wire);
        memset(&back, 0, sizeof(back));
        is_int(latency_hist_json_get(parsed, &back), 0, "json_get after a trip through text");
        ok(back.count == 4 && back.buckets[2] == 2 && back.sum_ms == 12.5, "report fields round trip");
        cJSON_Delete(parsed);
}

static void reject(const char *buckets, const char *sum, const char *what) {
        cJSON *a = cJSON_Parse(buckets), *s = cJSON_Parse(sum);
        struct latency_hist h = { .count = 77 };

        /* cJSON cannot parse NaN/Infinity; build those by hand. */
        if (!a && streq(buckets, "inf")) {
                a = cJSON_Parse("[0,0,0,0,0,0,0,0,0,0,0,0,0,0]");
                cJSON_ReplaceItemInArray(a, 13, cJSON_CreateNumber(INFINITY));
        }
        if (!s && streq(sum, "nan"))
                s = cJSON_CreateNumber(NAN);
        is_int(latency_hist_from_json(a, s, &h), -EINVAL, "rejected: %s", what);
        is_int((long long)h.count, 77, "output untouched on rejection: %s", what);
        cJSON_Delete(a);
        cJSON_Delete(s);
}

static void test_json_reject(void) {
        const char *good = "[0,1,2,3,4,5,6,7,8,9,10,11,12,13]";
        reject("[0,1,2,3,4,5,6,7,8,9,10,11,12]", "0", "13 entries");
        reject("[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14]", "0", "15 entries");
        reject("[]", "0", "empty array");
        reject("[0,1,2,3,4,5,6,7,8,9,10,11,13,12]", "0", "decreasing");
        reject("[-1,1,2,3,4,5,6,7,8,9,10,11,12,13]", "0", "negative count");
        reject("[0,1.5,2,3,4,5,6,7,8,9,10,11,12,13]", "0", "fractional count");
        reject("[0,\"1\",2,3,4,5,6,7,8,9,10,11,12,13]", "0", "string count");
        reject("[0,null,2,3,4,5,6,7,8,9,10,11,12,13]", "0", "null count");
        reject("inf", "0", "infinite count");
        reject("[0,1,2,3,4,5,6,7,8,9,10,11,12,1e300]", "0", "count beyond 2^53");
        reject("{\"a\":1}", "0", "object instead of array");
        reject(good, "-1", "negative sum");
        reject(good, "nan", "NaN sum");
        reject(good, "\"1\"", "string sum");
        reject(good, "null", "missing sum");
        reject("null", "0", "missing buckets");

        cJSON *a = cJSON_Parse(good), *s = cJSON_Parse("3.25");
        struct latency_hist h;
        is_int(latency_hist_from_json(a, s, &h), 0, "valid array accepted");
        is_int((long long)h.count, 13, "count is the +Inf entry");
        is_int((long long)h.buckets[0], 0, "non-cumulative first");
        is_int((long long)h.buckets[13], 1, "non-cumulative last");
        cJSON_Delete(a);
        cJSON_Delete(s);
}

int main(void) {
        test_counter_escaped_labels();
        test_gauge_no_help();
        test_histogram();
        test_merge();
        test_json_round_trip();
        test_json_reject();
        return tap_done();
}
