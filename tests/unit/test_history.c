/* The dashboard's stores on their own: the time-series history (a window that slides, series
 * that appear and go, the cap on series, ?since=) and the event log (ids that only grow, the
 * oldest dropped when full, pages after an id), plus the latency quantiles the charts plot. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "history.h"
#include "log.h"
#include "metrics.h"
#include "tap.h"

static const cJSON *series(const cJSON *j, const char *scope, const char *name, const char *metric) {
        return cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "series"), scope), name),
                                   metric);
}

static void test_history(void) {
        struct history *h;
        cJSON *j;

        ok(history_new(5, 4, 3, &h) == 0, "a history of 4 points and at most 3 series");
        ok(history_set(h, "nodes", "n1", "cpu_cores", 1) == -EINVAL, "nothing is set before the first point");
        for (int i = 0; i < 6; i++) {
                history_begin(h, 100 + 5 * i);
                history_set(h, "nodes", "n1", "cpu_cores", i);
                if (i % 2 == 0)
                        history_set(h, "deployments", "a/B", "requests_per_s", 10 * i);
        }
        j = history_json(h, -1);
        is_int(cJSON_GetArraySize(cJSON_GetObjectItem(j, "t")), 4, "the window holds the last 4 points");
        is_int((long long)cJSON_GetArrayItem(cJSON_GetObjectItem(j, "t"), 0)->valuedouble, 110, "the oldest kept is t=110");
        const cJSON *cpu = series(j, "nodes", "n1", "cpu_cores"), *rps = series(j, "deployments", "a/B", "requests_per_s");
        is_int(cJSON_GetArraySize(cpu), 4, "each series is parallel to t");
        is_int((long long)cJSON_GetArrayItem(cpu, 3)->valuedouble, 5, "the newest value is last");
        ok(cJSON_IsNull(cJSON_GetArrayItem(rps, 1)) && cJSON_GetArrayItem(rps, 2)->valuedouble == 40,
           "a point without a value is null, the others keep theirs");
        cJSON_Delete(j);

        j = history_json(h, 120);
        is_int(cJSON_GetArraySize(cJSON_GetObjectItem(j, "t")), 1, "since=120 gives the one later point");
        is_int(cJSON_GetArraySize(series(j, "nodes", "n1", "cpu_cores")), 1, "and its values only");
        cJSON_Delete(j);

        ok(history_set(h, "nodes", "n2", "cpu_cores", 1) == 0, "a third series fits");
        ok(history_set(h, "nodes", "n3", "cpu_cores", 1) == -ENOSPC, "a fourth is refused (max_series)");
        j = history_json(h, -1);
        is_int((long long)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "series_dropped")), 1, "and counted as dropped");
        ok(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "memory_bytes")) > 3 * 4 * sizeof(float),
           "its memory is reported");
        cJSON_Delete(j);

        /* n1 and a/B stop reporting: after a whole window without values they are gone. */
        for (int i = 0; i < 4; i++) {
                history_begin(h, 200 + 5 * i);
                history_set(h, "nodes", "n2", "cpu_cores", 2);
        }
        j = history_json(h, -1);
        ok(!series(j, "nodes", "n1", "cpu_cores") && !series(j, "deployments", "a/B", "requests_per_s"),
           "a series empty for a whole window is dropped");
        ok(series(j, "nodes", "n2", "cpu_cores") != NULL, "one still set stays");
        is_int((long long)history_series_count(h), 1, "one series left");
        cJSON_Delete(j);
        ok(history_set(h, "nodes", "n3", "cpu_cores", 1) == 0, "and there is room again");
        history_free(h);
}

static void test_events(void) {
        struct event_log l;
        cJSON *a;

        ok(event_log_init(&l, 3) == 0, "an event log of 3");
        for (int i = 1; i <= 5; i++)
                event_log_add(&l, -1, "replica_crashed", "app/Dep", i == 5 ? "node-1" : "", "crash %d", i);
        a = event_log_json(&l, 0, 100);
        is_int(cJSON_GetArraySize(a), 3, "it keeps the latest 3");
        is_int((long long)cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "id")), 3, "oldest first: id 3");
        ok(streq(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 2), "message")), "crash 5"),
           "the newest last, with its message");
        ok(streq(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 2), "node")), "node-1") &&
                   !cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "node"),
           "node only where it is known");
        cJSON_Delete(a);
        a = event_log_json(&l, 4, 100);
        is_int(cJSON_GetArraySize(a), 1, "since=4: only event 5");
        cJSON_Delete(a);
        a = event_log_json(&l, 5, 100);
        is_int(cJSON_GetArraySize(a), 0, "since the newest: nothing");
        cJSON_Delete(a);
        a = event_log_json(&l, 0, 2);
        is_int((long long)cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "id")), 4,
               "max=2 gives the newest two");
        cJSON_Delete(a);
        char big[2000];
        memset(big, 'x', sizeof big - 1);
        big[sizeof big - 1] = 0;
        struct event *e = event_log_add(&l, -1, "deploy", big, "", "%s", big);
        ok(strlen(e->subject) == EVENT_SUBJECT_MAX - 1 && strlen(e->message) == EVENT_MESSAGE_MAX - 1,
           "long subjects and messages are cut to their fields");
        ok(event_kind_valid("node_dead") && !event_kind_valid("Node") && !event_kind_valid("") &&
                   !event_kind_valid("a<script>"),
           "kinds are [a-z_]+");
        event_log_free(&l);
}

static void test_quantiles(void) {
        struct latency_hist now = { 0 }, before = { 0 }, d;

        for (int i = 0; i < 90; i++)
                latency_hist_observe(&now, 3);  /* (2, 5] */
        for (int i = 0; i < 10; i++)
                latency_hist_observe(&now, 150); /* (100, 200] */
        ok(latency_hist_quantile(&now, 0.5) > 2 && latency_hist_quantile(&now, 0.5) <= 5, "p50 is in the 2-5 ms bucket");
        ok(latency_hist_quantile(&now, 0.99) > 100 && latency_hist_quantile(&now, 0.99) <= 200,
           "p99 is in the 100-200 ms bucket");
        ok(isnan(latency_hist_quantile(&before, 0.5)), "no requests: no quantile");
        before = now;
        latency_hist_observe(&now, 700);
        latency_hist_delta(&d, &now, &before);
        is_int((long long)d.count, 1, "the delta holds what came since");
        ok(latency_hist_quantile(&d, 0.5) > 500 && latency_hist_quantile(&d, 0.5) <= 1000, "and its quantile is its own");
        latency_hist_delta(&d, &before, &now);
        is_int((long long)d.count, (long long)before.count, "a counter that went down (a restart) counts from zero");
        struct latency_hist inf = { 0 };
        latency_hist_observe(&inf, 1e6);
        ok(latency_hist_quantile(&inf, 0.5) == 10000, "the +Inf bucket gives the largest finite bound");
}

int main(void) {
        log_set_level(LOG_ERR);
        test_history();
        test_events();
        test_quantiles();
        return tap_done();
}
