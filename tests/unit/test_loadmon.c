/* The load monitor's fallback parsers (what serve-worker reads when eBPF cannot load), fed whole
 * files and every truncated prefix, and the report fields and /metrics families it feeds. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loadmon.h"
#include "metrics.h"
#include "report.h"
#include "tap.h"

static const char cpu_stat[] = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n"
                               "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
/* A command name with spaces and a ')' of its own. */
static const char proc_stat[] = "4242 (serve) (re) plica) R 1 4242 4242 0 -1 4194304 173 0 0 0 150 37 0 0 20 0 3 0 "
                                "1143875 5124096 945 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
static const char netstat[] =
        "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPHPHits\n"
        "TcpExt: 0 0 2972 2980 130135748\n"
        "IpExt: InNoRoutes ListenOverflows\n"
        "IpExt: 0 77\n";

static void test_parsers(void) {
        uint64_t v, w, c;

        is_int(loadmon_parse_cpu_stat(cpu_stat, &v), 0, "cpu.stat parses");
        is_int(v, 1234567, "cpu.stat: usage_usec");
        is_int(loadmon_parse_cpu_stat("user_usec 5\n", &v), -EINVAL, "cpu.stat without usage_usec is refused");
        is_int(loadmon_parse_cpu_stat("usage_usec x\n", &v), -EINVAL, "cpu.stat with a non-number is refused");
        is_int(loadmon_parse_cpu_stat("xusage_usec 5\n", &v), -EINVAL, "cpu.stat: only the whole key counts");

        is_int(loadmon_parse_proc_stat(proc_stat, &v), 0, "/proc/PID/stat parses");
        is_int(v, 187, "/proc/PID/stat: utime + stime (150 + 37), past a name holding ') '");
        is_int(loadmon_parse_proc_stat("4242 (serve R 1\n", &v), -EINVAL, "/proc/PID/stat without ')' is refused");

        is_int(loadmon_parse_schedstat("9876543 49303 17\n", &w, &c), 0, "schedstat parses");
        is_int(w, 49303, "schedstat: run-queue wait is field 2");
        is_int(c, 17, "schedstat: timeslices is field 3");
        is_int(loadmon_parse_schedstat("1 2\n", &w, &c), -EINVAL, "schedstat with two fields is refused");
        is_int(loadmon_parse_schedstat("1 2 3 4\n", &w, &c), -EINVAL, "schedstat with four fields is refused");

        is_int(loadmon_parse_netstat(netstat, &v), 0, "netstat parses");
        is_int(v, 2972, "netstat: TcpExt ListenOverflows, not IpExt's");
        is_int(loadmon_parse_netstat("TcpExt: A ListenOverflows\nTcpExt: 1\n", &v), -EINVAL,
               "netstat with a values line shorter than its header is refused");
        is_int(loadmon_parse_netstat("IpExt: ListenOverflows\nIpExt: 5\n", &v), -EINVAL, "netstat without TcpExt is refused");

        /* Every truncated prefix: a clean refusal or a value, never a read past the end. */
        const char *whole[] = { cpu_stat, proc_stat, netstat, "9876543 49303 17\n" };
        int refused = 0, odd = 0;
        for (size_t f = 0; f < 4; f++) {
                size_t len = strlen(whole[f]);
                for (size_t n = 0; n < len; n++) {
                        char *p = strndup(whole[f], n);
                        int r = f == 0 ? loadmon_parse_cpu_stat(p, &v)
                              : f == 1 ? loadmon_parse_proc_stat(p, &v)
                              : f == 2 ? loadmon_parse_netstat(p, &v)
                                       : loadmon_parse_schedstat(p, &w, &c);
                        refused += r == -EINVAL;
                        odd += r != 0 && r != -EINVAL;
                        free(p);
                }
        }
        ok(refused > 0 && odd == 0, "every truncated prefix parses or is refused (%d refused, %d odd)", refused, odd);
        /* A truncated netstat values line is refused, not read as a shorter number. */
        is_int(loadmon_parse_netstat("TcpExt: A ListenOverflows B\nTcpExt: 1 29", &v), 0, "last field without newline");
        is_int(v, 29, "netstat value at the end of the text");
}

/* The fallback measures a real process: this one, after burning some CPU. */
static void test_fallback_self(void) {
        struct loadmon *lm = NULL;
        struct loadmon_replica r;
        char key[] = "self";
        volatile unsigned long spin = 0;

        setenv("SERVE_LOADMON", "proc", 1);
        is_int(loadmon_new(&lm), 0, "a monitor is made");
        ok(!loadmon_ebpf(lm), "SERVE_LOADMON=proc forces the fallback");
        is_int(loadmon_track(lm, key, getpid(), NULL), 0, "this process is tracked");
        is_int(loadmon_track(lm, key, getpid(), NULL), -EEXIST, "a key is tracked once");
        for (unsigned long i = 0; i < 300000000ul; i++)
                spin++;
        is_int(loadmon_replica(lm, key, &r), 0, "its numbers are read");
        ok(r.cpu_seconds > 0.05, "the CPU it burnt shows (%.3f s)", r.cpu_seconds);
        ok(!r.has_buckets, "the fallback has no histogram");
        loadmon_untrack(lm, key);
        is_int(loadmon_replica(lm, key, &r), -ENOENT, "an untracked key has no numbers");
        loadmon_free(lm);
}

static cJSON *report_with(const char *replica_extra, const char *load) {
        char txt[2048];
        snprintf(txt, sizeof txt,
                 "{\"v\":1,\"type\":\"report\",\"replicas\":[{\"id\":\"a/B#1\",\"app\":\"a\",\"deployment\":\"B\","
                 "\"version\":\"v1\",\"state\":\"RUNNING\",\"pid\":7,\"ongoing\":0%s}]%s}",
                 replica_extra, load);
        return cJSON_Parse(txt);
}

static void test_report(void) {
        static const char buckets[] = ",\"cpu_s\":1.5,\"rq_delay\":{\"buckets\":[1,2,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,4],"
                                      "\"sum\":0.25,\"count\":4}";
        char err[256];
        struct buf b = {};

        cJSON *m = report_with(buckets, ",\"load\":{\"ebpf\":1,\"listen_queue\":3,\"listen_overflows\":9}");
        is_int(report_validate(m, err, sizeof err), 0, "a report with the load monitor's fields is valid");
        const char *names[] = { "n1" };
        const cJSON *reps[] = { m };
        is_int(report_render_metrics(&b, names, reps, 1), 0, "it renders");
        buf_append(&b, "", 1, METRICS_TEXT_MAX);
        const char *page = b.data ? b.data : "";
        ok(strstr(page, "serve_replica_cpu_seconds_total{node=\"n1\",application=\"a\",deployment=\"B\",replica=\"a/B#1\"} 1.5"),
           "serve_replica_cpu_seconds_total per replica");
        ok(strstr(page, "serve_replica_runqueue_delay_seconds_bucket{node=\"n1\",application=\"a\",deployment=\"B\","
                        "replica=\"a/B#1\",le=\"2e-06\"} 1"),
           "the first run-queue bucket is le=2us");
        ok(strstr(page, "le=\"+Inf\"} 4") && strstr(page, "serve_replica_runqueue_delay_seconds_sum{") &&
           strstr(page, "serve_replica_runqueue_delay_seconds_count{"), "+Inf, _sum and _count");
        ok(strstr(page, "serve_load_monitor_ebpf{node=\"n1\"} 1"), "serve_load_monitor_ebpf");
        ok(strstr(page, "serve_node_listen_queue{node=\"n1\"} 3"), "serve_node_listen_queue");
        ok(strstr(page, "serve_node_listen_overflows_total{node=\"n1\"} 9"), "serve_node_listen_overflows_total");
        free(b.data);
        cJSON_Delete(m);

        m = report_with(",\"rq_delay\":{\"buckets\":[2,1,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3],\"sum\":0,\"count\":3}", "");
        is_int(report_validate(m, err, sizeof err), -EINVAL, "decreasing buckets are refused");
        cJSON_Delete(m);
        m = report_with(",\"rq_delay\":{\"buckets\":[1,2,3],\"sum\":0,\"count\":3}", "");
        is_int(report_validate(m, err, sizeof err), -EINVAL, "a histogram of another layout is refused");
        cJSON_Delete(m);
        m = report_with(",\"rq_delay\":{\"sum\":0.5,\"count\":3}", "");
        is_int(report_validate(m, err, sizeof err), 0, "the fallback's histogram without buckets is valid");
        cJSON_Delete(m);
        m = report_with(",\"cpu_s\":-1", "");
        is_int(report_validate(m, err, sizeof err), -EINVAL, "negative CPU time is refused");
        cJSON_Delete(m);
        m = report_with("", ",\"load\":{\"ebpf\":2}");
        is_int(report_validate(m, err, sizeof err), -EINVAL, "ebpf is 0 or 1");
        cJSON_Delete(m);
}

int main(void) {
        test_parsers();
        test_fallback_self();
        test_report();
        return tap_done();
}
