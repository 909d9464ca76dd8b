/* apps.yaml parsing: a full file, the defaults, and one test per class of error with the exact
 * message an operator would read (file:line:column, field path, what is wrong). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "common/config.h"
#include "common/module.h"
#include "tap.h"

static struct serve_config *parse_ok(const char *yaml) {
        struct serve_config *c = NULL;
        char *error = NULL;
        char what[41];
        snprintf(what, sizeof(what), "%s", yaml);
        for (char *w = what; *w; w++)
                if (*w == '\n')
                        *w = '|';
        int r = config_parse("t.yaml", yaml, strlen(yaml), &c, &error);
        if (!ok(r == 0 && c, "parses: %s", what))
                printf("#   r=%d error: %s\n", r, error ? error : "(null)");
        free(error);
        return r == 0 ? c : NULL;
}

/* Checks the full message, so line:column and the field path are part of what is tested. */
static void parse_fails(const char *yaml, const char *want) {
        struct serve_config *c = NULL;
        char *error = NULL;
        int r = config_parse("t.yaml", yaml, strlen(yaml), &c, &error);
        bool good = r == -EINVAL && error && strcmp(error, want) == 0;
        if (!ok(good, "rejected with: %s", want))
                printf("#   r=%d got: %s\n", r, error ? error : "(null)");
        free(error);
        if (r == 0)
                config_free(c);
}

static bool near(double a, double b) {
        return a - b < 1e-9 && b - a < 1e-9;
}

static void test_full(void) {
        const char *yaml =
                "proxy_location: HeadOnly\n"
                "http_options:\n"
                "  host: 127.0.0.1\n"
                "  port: 8080\n"
                "  request_timeout_s: 12.5\n"
                "  keep_alive_timeout_s: 7\n"
                "  max_request_body_bytes: 1048576\n"
                "  header_timeout_s: 3\n"
                "  max_connections: 100\n"
                "applications:\n"
                "  - name: search\n"
                "    route_prefix: /search\n"
                "    import_path: libsearch.so:app\n"
                "    args: {model: mini, top_k: 5, ratio: 0.5, on: true, none: ~, quoted: \"5\", list: [1, two]}\n"
                "    runtime_env:\n"
                "      working_dir: /srv/search\n"
                "      env_vars: {OMP_NUM_THREADS: 4, MODE: fast}\n"
                "    deployments:\n"
                "      - name: Embedder\n"
                "        num_replicas: 3\n"
                "        max_ongoing_requests: 16\n"
                "        max_queued_requests: 100\n"
                "        user_config: {threshold: 0.25}\n"
                "        health_check_period_s: 2\n"
                "        health_check_timeout_s: 4\n"
                "        graceful_shutdown_timeout_s: 0\n"
                "        graceful_shutdown_wait_loop_s: 0.5\n"
                "        max_replicas_per_node: 2\n"
                "        ray_actor_options:\n"
                "          num_cpus: 2\n"
                "          num_gpus: 0.5\n"
                "          memory: 1073741824\n"
                "          resources: {tpu: 1, fast_disk: 0.25}\n"
                "      - name: Ranker\n"
                "        num_replicas: auto\n"
                "        autoscaling_config:\n"
                "          min_replicas: 0\n"
                "          max_replicas: 10\n"
                "          initial_replicas: 2\n"
                "          target_ongoing_requests: 4\n"
                "          metrics_interval_s: 5\n"
                "          look_back_period_s: 20\n"
                "          upscale_delay_s: 1\n"
                "          downscale_delay_s: 60\n"
                "          downscaling_factor: 0.5\n"
                "          smoothing_factor: 2\n"
                "  - name: echo\n"
                "    route_prefix: null\n"
                "    import_path: echo:app\n";
        struct serve_config *c = parse_ok(yaml);
        if (!c)
                return;

        ok(c->proxy_location == PROXY_HEAD_ONLY, "proxy_location HeadOnly");
        ok(strcmp(c->path, "t.yaml") == 0, "path kept for messages");
        ok(strcmp(c->http.host, "127.0.0.1") == 0, "http host");
        is_int(c->http.port, 8080, "http port");
        ok(near(c->http.request_timeout_s, 12.5), "request_timeout_s");
        ok(near(c->http.keep_alive_timeout_s, 7), "keep_alive_timeout_s");
        is_int(c->http.max_request_body_bytes, 1048576, "max_request_body_bytes");
        ok(near(c->http.header_timeout_s, 3), "header_timeout_s");
        is_int(c->http.max_connections, 100, "max_connections");

        is_int(c->n_apps, 2, "two applications");
        struct app_config *a = &c->apps[0];
        ok(strcmp(a->name, "search") == 0, "app name");
        ok(strcmp(a->route_prefix, "/search") == 0, "route_prefix");
        ok(strcmp(a->import_path, "libsearch.so:app") == 0, "import_path");
        ok(strcmp(a->args_json,
                  "{\"model\":\"mini\",\"top_k\":5,\"ratio\":0.5,\"on\":true,\"none\":null,"
                  "\"quoted\":\"5\",\"list\":[1,\"two\"]}") == 0,
           "args as JSON with YAML types resolved: %s", a->args_json);
        ok(strcmp(a->runtime_env.working_dir, "/srv/search") == 0, "working_dir");
        is_int(a->runtime_env.n_env_vars, 2, "two env vars");
        ok(strcmp(a->runtime_env.env_vars[0], "OMP_NUM_THREADS=4") == 0 &&
                   strcmp(a->runtime_env.env_vars[1], "MODE=fast") == 0,
           "env vars as KEY=VALUE");
        is_int(a->line, 11, "app line");
        is_int(a->column, 5, "app column");

        is_int(a->n_deployments, 2, "two deployments");
        struct deployment_config *d = &a->deployments[0];
        ok(strcmp(d->name, "Embedder") == 0, "deployment name");
        is_int(d->line, 19, "deployment line");
        is_int(d->column, 9, "deployment column");
        is_int(d->num_replicas, 3, "num_replicas");
        ok(!d->num_replicas_auto, "not auto");
        is_int(d->max_ongoing_requests, 16, "max_ongoing_requests");
        is_int(d->max_queued_requests, 100, "max_queued_requests");
        ok(d->user_config_json && strcmp(d->user_config_json, "{\"threshold\":0.25}") == 0,
           "user_config as JSON");
        ok(near(d->health_check_period_s, 2), "health_check_period_s");
        ok(near(d->health_check_timeout_s, 4), "health_check_timeout_s");
        ok(near(d->graceful_shutdown_timeout_s, 0), "graceful_shutdown_timeout_s");
        ok(near(d->graceful_shutdown_wait_loop_s, 0.5), "graceful_shutdown_wait_loop_s");
        is_int(d->max_replicas_per_node, 2, "max_replicas_per_node");
        ok(near(d->actor.num_cpus, 2), "num_cpus");
        ok(near(d->actor.num_gpus, 0.5), "fractional num_gpus");
        is_int(d->actor.memory, 1073741824, "memory");
        is_int(d->actor.n_resources, 2, "two custom resources");
        ok(strcmp(d->actor.resources[0].name, "tpu") == 0 && near(d->actor.resources[0].amount, 1) &&
                   strcmp(d->actor.resources[1].name, "fast_disk") == 0 &&
                   near(d->actor.resources[1].amount, 0.25),
           "custom resources");
        ok(!d->has_autoscaling, "no autoscaling on Embedder");
        is_int(d->set,
               DEPLOY_SET_NUM_REPLICAS | DEPLOY_SET_MAX_ONGOING | DEPLOY_SET_MAX_QUEUED |
                       DEPLOY_SET_USER_CONFIG | DEPLOY_SET_HEALTH_PERIOD | DEPLOY_SET_HEALTH_TIMEOUT |
                       DEPLOY_SET_GRACEFUL_TIMEOUT | DEPLOY_SET_GRACEFUL_WAIT_LOOP |
                       DEPLOY_SET_ACTOR_OPTIONS | DEPLOY_SET_MAX_REPLICAS_PER_NODE,
               "set mask names every field the file gave");

        d = &a->deployments[1];
        ok(strcmp(d->name, "Ranker") == 0, "second deployment");
        ok(d->num_replicas_auto, "num_replicas auto");
        ok(d->has_autoscaling, "autoscaling_config present");
        is_int(d->set, DEPLOY_SET_NUM_REPLICAS | DEPLOY_SET_AUTOSCALING, "set mask of Ranker");
        is_int(d->autoscaling.min_replicas, 0, "min_replicas");
        is_int(d->autoscaling.max_replicas, 10, "max_replicas");
        is_int(d->autoscaling.initial_replicas, 2, "initial_replicas");
        ok(near(d->autoscaling.target_ongoing_requests, 4), "target_ongoing_requests");
        ok(near(d->autoscaling.metrics_interval_s, 5), "metrics_interval_s");
        ok(near(d->autoscaling.look_back_period_s, 20), "look_back_period_s");
        ok(near(d->autoscaling.upscale_delay_s, 1), "upscale_delay_s");
        ok(near(d->autoscaling.downscale_delay_s, 60), "downscale_delay_s");
        ok(near(d->autoscaling.upscaling_factor, 2), "smoothing_factor sets upscaling_factor");
        ok(near(d->autoscaling.downscaling_factor, 0.5), "explicit downscaling_factor wins");
        ok(!d->user_config_json, "no user_config");

        a = &c->apps[1];
        ok(strcmp(a->name, "echo") == 0, "second app");
        ok(a->route_prefix == NULL, "route_prefix null disables HTTP");
        ok(strcmp(a->args_json, "{}") == 0, "args default {}");
        is_int(a->n_deployments, 0, "no deployment overrides");
        config_free(c);
}

static void test_defaults(void) {
        struct serve_config *c = parse_ok("applications:\n  - import_path: echo:app\n");
        if (!c)
                return;
        ok(c->proxy_location == PROXY_EVERY_NODE, "proxy_location defaults to EveryNode");
        ok(strcmp(c->http.host, "0.0.0.0") == 0, "host defaults to 0.0.0.0");
        is_int(c->http.port, 8000, "port defaults to 8000");
        ok(c->http.request_timeout_s == 0, "no request timeout by default");
        ok(near(c->http.keep_alive_timeout_s, 5), "keep-alive 5 s");
        is_int(c->http.max_request_body_bytes, 64 << 20, "body limit 64 MiB");
        ok(near(c->http.header_timeout_s, 10), "header timeout 10 s");
        is_int(c->http.max_connections, 16384, "16384 connections");
        is_int(c->n_apps, 1, "one app");
        ok(strcmp(c->apps[0].name, "default") == 0, "a lone unnamed app is \"default\"");
        ok(strcmp(c->apps[0].route_prefix, "/") == 0, "route_prefix defaults to /");
        ok(strcmp(c->apps[0].args_json, "{}") == 0, "args default to {}");
        ok(c->apps[0].runtime_env.working_dir == NULL && c->apps[0].runtime_env.n_env_vars == 0,
           "empty runtime_env");
        config_free(c);

        c = parse_ok("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n");
        if (c) {
                struct deployment_config *d = &c->apps[0].deployments[0];
                is_int(d->set, 0, "a bare deployment sets nothing");
                is_int(d->num_replicas, 1, "num_replicas 1");
                is_int(d->max_ongoing_requests, 5, "max_ongoing_requests 5");
                is_int(d->max_queued_requests, -1, "unbounded queue");
                ok(near(d->health_check_period_s, 10) && near(d->health_check_timeout_s, 30),
                   "health check 10 s / 30 s");
                ok(near(d->graceful_shutdown_timeout_s, 20) &&
                           near(d->graceful_shutdown_wait_loop_s, 2),
                   "graceful shutdown 20 s / 2 s");
                ok(near(d->actor.num_cpus, 1) && d->actor.num_gpus == 0 && d->actor.memory == 0,
                   "one CPU, no GPU, memory unspecified");
                config_free(c);
        }

        c = parse_ok("applications:\n  - import_path: a:b\n    deployments:\n"
                     "      - name: D\n        autoscaling_config: {}\n");
        if (c) {
                struct autoscaling_config *s = &c->apps[0].deployments[0].autoscaling;
                ok(c->apps[0].deployments[0].has_autoscaling, "empty autoscaling_config enables it");
                ok(s->min_replicas == 1 && s->max_replicas == 1 && s->initial_replicas == -1,
                   "autoscaling replicas 1..1, initial unset");
                ok(near(s->target_ongoing_requests, 2) && near(s->metrics_interval_s, 10) &&
                           near(s->look_back_period_s, 30) && near(s->upscale_delay_s, 30) &&
                           near(s->downscale_delay_s, 600) && near(s->upscaling_factor, 1) &&
                           near(s->downscaling_factor, 1),
                   "autoscaling defaults");
                config_free(c);
        }

        /* Ray's names for the rest of autoscaling_config, and num_replicas: auto. */
        c = parse_ok("applications:\n  - import_path: a:b\n    deployments:\n"
                     "      - name: D\n        autoscaling_config:\n"
                     "          min_replicas: 0\n          downscale_to_zero_delay_s: 5\n"
                     "          aggregation_function: max\n          target_cpu_utilization: 0.7\n"
                     "          target_runqueue_delay_ms: 4\n          upscale_smoothing_factor: 2\n"
                     "          downscaling_factor: 0.5\n          downscale_smoothing_factor: 0.9\n");
        if (c) {
                struct autoscaling_config *s = &c->apps[0].deployments[0].autoscaling;
                ok(near(s->downscale_to_zero_delay_s, 5) && s->aggregation_function == AUTOSCALING_AGG_MAX,
                   "downscale_to_zero_delay_s, aggregation_function");
                ok(near(s->target_cpu_utilization, 0.7) && near(s->target_runqueue_delay_ms, 4),
                   "target_cpu_utilization, target_runqueue_delay_ms");
                ok(near(s->upscaling_factor, 2) && near(s->downscaling_factor, 0.5),
                   "upscale_smoothing_factor sets upscaling_factor; downscaling_factor wins over the older name");
                config_free(c);
        }
        c = parse_ok("applications:\n  - import_path: a:b\n    deployments:\n"
                     "      - name: D\n        num_replicas: auto\n");
        if (c) {
                struct deployment_config *dd = &c->apps[0].deployments[0];
                ok(dd->has_autoscaling && dd->num_replicas_auto, "num_replicas: auto autoscales");
                ok(dd->autoscaling.min_replicas == 1 && dd->autoscaling.max_replicas == 100 &&
                           near(dd->autoscaling.target_ongoing_requests, 2) && dd->autoscaling.downscale_to_zero_delay_s < 0,
                   "... with Ray's defaults for it: 1..100 replicas, target 2");
                config_free(c);
        }
        c = parse_ok("applications:\n  - import_path: a:b\n    deployments:\n"
                     "      - name: D\n        autoscaling_config: {min_replicas: 5}\n        num_replicas: auto\n");
        if (c) {
                struct autoscaling_config *s = &c->apps[0].deployments[0].autoscaling;
                ok(s->min_replicas == 5 && s->max_replicas == 100,
                   "auto with autoscaling_config: the file's fields win, max_replicas defaults to 100 (%d..%d)",
                   s->min_replicas, s->max_replicas);
                config_free(c);
        }

        struct deployment_config d;
        deployment_config_defaults(&d);
        ok(d.name == NULL && d.set == 0 && d.num_replicas == 1 && d.max_ongoing_requests == 5,
           "deployment_config_defaults");
        ok(strcmp(proxy_location_to_string(PROXY_DISABLED), "Disabled") == 0, "proxy_location_to_string");

        /* Nothing to serve is a valid state, not an error. */
        const char *empty[] = { "", "# only a comment\n", "---\n", "applications: []\n",
                                "http_options:\n  port: 9000\n" };
        for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
                c = parse_ok(empty[i]);
                if (c)
                        is_int(c->n_apps, 0, "no applications in empty case %zu", i);
                config_free(c);
        }
}

static void test_errors(void) {
        /* YAML syntax */
        parse_fails("applications:\n  - name: a\n   bad: [\n",
                    "t.yaml:3:4: invalid YAML: did not find expected '-' indicator "
                    "(while parsing a block collection at line 2, column 3)");
        parse_fails("a: 1\n---\nb: 2\n", "t.yaml:2:1: a second YAML document; the file must hold one");
        /* top level */
        parse_fails("- a\n- b\n",
                    "t.yaml:1:1: the top level must be a mapping (proxy_location, http_options, "
                    "applications), got a list");
        /* unknown key, with a suggestion */
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        num_replica: 2\n",
                    "t.yaml:5:9: applications[0].deployments[0].num_replica: unknown key "
                    "(did you mean \"num_replicas\"?); allowed here: name, num_replicas, "
                    "max_ongoing_requests, max_queued_requests, user_config, autoscaling_config, "
                    "health_check_period_s, health_check_timeout_s, graceful_shutdown_timeout_s, "
                    "graceful_shutdown_wait_loop_s, max_replicas_per_node, ray_actor_options");
        parse_fails("grpc_options: {}\n",
                    "t.yaml:1:1: grpc_options: unknown key; allowed here: proxy_location, "
                    "http_options, applications");
        /* duplicate keys, in a schema mapping and in a free-form one */
        parse_fails("http_options:\n  port: 1\n  port: 2\n",
                    "t.yaml:3:3: http_options.port: duplicate key (first set at line 2, column 3)");
        parse_fails("applications:\n  - import_path: a:b\n    args: {x: 1, y: 2, x: 3}\n",
                    "t.yaml:3:24: applications[0].args.x: duplicate key (first set at line 3, column 12)");
        /* wrong types */
        parse_fails("http_options:\n  port: eighty\n",
                    "t.yaml:2:9: http_options.port: must be a port number between 1 and 65535, got \"eighty\"");
        parse_fails("applications:\n  name: a\n",
                    "t.yaml:2:3: applications: must be a list of applications, got a mapping");
        parse_fails("applications:\n  - import_path: [a, b]\n",
                    "t.yaml:2:18: applications[0].import_path: must be a string, got a list");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        health_check_period_s: soon\n",
                    "t.yaml:5:32: applications[0].deployments[0].health_check_period_s: must be a "
                    "positive number, got \"soon\"");
        parse_fails("http_options:\n  max_request_body_bytes: 2000\n  max_buffered_request_bytes: 1000\n",
                    "t.yaml:2:3: http_options: max_buffered_request_bytes (1000) is smaller than "
                    "max_request_body_bytes (2000): no request of the largest size could be taken");
        parse_fails("http_options:\n  max_buffered_request_bytes: 0\n",
                    "t.yaml:2:31: http_options.max_buffered_request_bytes: must be a positive number of bytes, got \"0\"");
        parse_fails("proxy_location: Everywhere\n",
                    "t.yaml:1:17: proxy_location: must be one of EveryNode, HeadOnly, Disabled, got \"Everywhere\"");
        /* negative counts */
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n"
                    "      - {name: D,       num_replicas: -2}\n",
                    "t.yaml:4:39: applications[0].deployments[0].num_replicas: must be a "
                    "non-negative integer or \"auto\", got \"-2\"");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n"
                    "      - {name: D, max_ongoing_requests: 0}\n",
                    "t.yaml:4:41: applications[0].deployments[0].max_ongoing_requests: must be a "
                    "positive integer, got \"0\"");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n"
                    "      - {name: D, max_queued_requests: -5}\n",
                    "t.yaml:4:40: applications[0].deployments[0].max_queued_requests: must be -1 "
                    "(no limit) or a non-negative integer, got \"-5\"");
        /* out-of-range port */
        parse_fails("http_options: {port: 70000}\n",
                    "t.yaml:1:22: http_options.port: must be a port number between 1 and 65535, "
                    "got \"70000\"");
        /* autoscaling bounds */
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        autoscaling_config:\n          min_replicas: 4\n          max_replicas: 2\n",
                    "t.yaml:7:25: applications[0].deployments[0].autoscaling_config.max_replicas: "
                    "must be at least min_replicas (4), got 2");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        num_replicas: 2\n        autoscaling_config: {max_replicas: 3}\n",
                    "t.yaml:5:23: applications[0].deployments[0].num_replicas: must not be a number "
                    "when autoscaling_config is set (use \"auto\" or remove one)");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        autoscaling_config: {aggregation_function: median}\n",
                    "t.yaml:5:52: applications[0].deployments[0].autoscaling_config.aggregation_function: "
                    "must be mean, max or min");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        autoscaling_config: {target_cpu_utilization: 70}\n",
                    "t.yaml:5:54: applications[0].deployments[0].autoscaling_config.target_cpu_utilization: "
                    "must be a share of the replica's num_cpus, in (0, 1]");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "        autoscaling_config: {min_replicas: 3}\n",
                    "t.yaml:5:44: applications[0].deployments[0].autoscaling_config.min_replicas: "
                    "must not exceed max_replicas (1, the default); set max_replicas too");
        /* duplicates across entries */
        parse_fails("applications:\n  - {name: a, route_prefix: /a, import_path: a:b}\n"
                    "  - {name: a, route_prefix: /b, import_path: a:b}\n",
                    "t.yaml:3:12: applications[1].name: duplicate application name \"a\" (also at line 2)");
        parse_fails("applications:\n  - {name: a, route_prefix: /x, import_path: a:b}\n"
                    "  - {name: b, route_prefix: /x, import_path: a:b}\n",
                    "t.yaml:3:29: applications[1].route_prefix: duplicate route_prefix \"/x\" (also "
                    "used by application \"a\" at line 2)");
        parse_fails("applications:\n  - {name: a, import_path: a:b}\n  - {name: b, import_path: a:b}\n",
                    "t.yaml:3:5: applications[1].route_prefix: duplicate route_prefix \"/\" (the "
                    "default) (also used by application \"a\" at line 2)");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - name: D\n"
                    "      - name: D\n",
                    "t.yaml:5:15: applications[0].deployments[1].name: duplicate deployment name "
                    "\"D\" (also at line 4)");
        /* route_prefix and import_path forms */
        parse_fails("applications:\n  - import_path: a:b\n    route_prefix: api\n",
                    "t.yaml:3:19: applications[0].route_prefix: must start with '/', got \"api\"");
        parse_fails("applications:\n  - import_path: echo.app\n",
                    "t.yaml:2:18: applications[0].import_path: must be \"MODULE:SYMBOL\" (e.g. "
                    "libecho.so:app), got \"echo.app\"");
        parse_fails("applications:\n  - import_path: \"echo:\"\n",
                    "t.yaml:2:18: applications[0].import_path: must be \"MODULE:SYMBOL\" (e.g. "
                    "libecho.so:app), got \"echo:\"");
        /* required fields */
        parse_fails("applications:\n  - name: a\n    route_prefix: /a\n",
                    "t.yaml:2:5: applications[0].import_path: required: \"MODULE:SYMBOL\" naming "
                    "the application (e.g. libecho.so:app)");
        parse_fails("applications:\n  - import_path: a:b\n    deployments:\n      - num_replicas: 2\n",
                    "t.yaml:4:9: applications[0].deployments[0].name: required (the name the "
                    "application's code gives this deployment)");
        parse_fails("applications:\n  - {name: a, route_prefix: /a, import_path: a:b}\n"
                    "  - {route_prefix: /b, import_path: a:b}\n",
                    "t.yaml:3:5: applications[1].name: required when there are several applications");
        /* aliases are refused rather than expanded */
        parse_fails("applications:\n  - import_path: a:b\n    args: &x {a: 1}\n    name: *x\n",
                    "t.yaml:4:11: YAML aliases (*x) are not supported; write the value out");
        /* nesting limit in free-form values: args' mapping is level 1, so 63 brackets inside
         * it are fine and the 64th is one too many */
        char deep[512];
        for (int levels = 63; levels <= 64; levels++) {
                int n = sprintf(deep, "applications:\n  - import_path: a:b\n    args: {a: ");
                for (int i = 0; i < levels; i++)
                        deep[n++] = '[';
                for (int i = 0; i < levels; i++)
                        deep[n++] = ']';
                strcpy(deep + n, "}\n");
                if (levels == 63) {
                        struct serve_config *c = parse_ok(deep);
                        config_free(c);
                } else
                        parse_fails(deep, "t.yaml:3:78: applications[0].args.a[0][0][0][0][0][0][0][0][0][0][0][0]"
                                          "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                                          "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                                          "[0][0][0]: nested deeper than 64 levels");
        }
        /* bad env vars */
        parse_fails("applications:\n  - import_path: a:b\n    runtime_env:\n      env_vars:\n        A:\n",
                    "t.yaml:5:11: applications[0].runtime_env.env_vars.A: must be a string, got an "
                    "empty value (write \"\" for an empty value)");
}

static void test_limits(void) {
        /* 1025 applications */
        size_t cap = 64 * 1100, n = 0;
        char *buf = malloc(cap);
        n += (size_t) sprintf(buf, "applications:\n");
        for (int i = 0; i < 1025; i++)
                n += (size_t) sprintf(buf + n, "- {name: a%d, route_prefix: /a%d, import_path: a:b}\n", i, i);
        parse_fails(buf, "t.yaml:2:1: applications: too many applications (1025, limit 1024)");
        /* 1024 is fine */
        *strstr(buf, "- {name: a1024") = 0;
        struct serve_config *c = parse_ok(buf);
        if (c)
                is_int(c->n_apps, 1024, "1024 applications accepted");
        config_free(c);
        free(buf);

        char *error = NULL;
        c = NULL;
        int r = config_parse("big.yaml", "", (4u << 20) + 1, &c, &error);
        is_int(r, -EINVAL, "text over 4 MiB rejected");
        ok(error && strncmp(error, "big.yaml:1:1: too large", 23) == 0, "message: %s", error);
        free(error);

        /* ret_error may be NULL */
        r = config_parse("t.yaml", "- x", 3, &c, NULL);
        is_int(r, -EINVAL, "error without a message pointer");
}

static void test_files(void) {
        struct serve_config *c = NULL;
        char *error = NULL;

        int r = config_load_file("/nonexistent/serve/apps.yaml", &c, &error);
        is_int(r, -ENOENT, "missing file: -ENOENT");
        ok(error && strcmp(error, "/nonexistent/serve/apps.yaml: No such file or directory") == 0,
           "message names the file: %s", error);
        free(error);

        char tmpl[] = "/tmp/test_config.XXXXXX";
        int fd = mkstemp(tmpl);
        if (fd >= 0) {
                char *big = calloc(1, (4u << 20) + 10);
                memset(big, '#', (4u << 20) + 9);
                ok(write(fd, big, (4u << 20) + 9) == (4 << 20) + 9, "wrote a 4 MiB + 9 file");
                free(big);
                close(fd);
                error = NULL;
                r = config_load_file(tmpl, &c, &error);
                is_int(r, -EFBIG, "file over 4 MiB: -EFBIG");
                ok(error && strstr(error, "too large"), "message: %s", error);
                free(error);
                unlink(tmpl);
        }

        const char *top = getenv("top_srcdir") ?: ".";
        char path[4096];
        snprintf(path, sizeof(path), "%s/examples/apps.yaml", top);
        error = NULL;
        r = config_load_file(path, &c, &error);
        if (!ok(r == 0, "examples/apps.yaml parses"))
                printf("#   %s\n", error ? error : "(null)");
        free(error);
        if (r < 0)
                return;
        ok(strcmp(c->path, path) == 0, "path recorded");
        ok(strcmp(c->http.host, "0.0.0.0") == 0 && c->http.port == 8000, "listens on 0.0.0.0:8000");
        is_int(c->n_apps, 6, "six example applications (four C, two Python)");
        if (c->n_apps == 4) {
                struct app_config *e = &c->apps[0], *s = &c->apps[1];
                ok(strcmp(e->name, "echo") == 0 && strcmp(e->route_prefix, "/echo") == 0 &&
                           strcmp(e->import_path, "echo:app") == 0,
                   "echo app");
                ok(e->n_deployments == 1 && strcmp(e->deployments[0].name, "Echo") == 0 &&
                           e->deployments[0].num_replicas == 1 &&
                           e->deployments[0].set == DEPLOY_SET_NUM_REPLICAS,
                   "Echo: one replica");
                ok(strcmp(s->name, "slow") == 0 && strcmp(s->route_prefix, "/slow") == 0 &&
                           strcmp(s->import_path, "slow:app") == 0,
                   "slow app");
                ok(s->n_deployments == 1 && strcmp(s->deployments[0].name, "Slow") == 0 &&
                           s->deployments[0].num_replicas == 1 &&
                           s->deployments[0].max_ongoing_requests == 5 &&
                           s->deployments[0].set == (DEPLOY_SET_NUM_REPLICAS | DEPLOY_SET_MAX_ONGOING),
                   "Slow: one replica, 5 ongoing");
                const struct deployment_config *b = &c->apps[2].deployments[0];
                ok(strcmp(c->apps[2].name, "burn") == 0 && b->has_autoscaling && b->autoscaling.min_replicas == 1 &&
                           b->autoscaling.max_replicas == 4 && b->autoscaling.target_cpu_utilization > 0,
                   "burn: autoscaled 1..4, on requests and CPU");
                const struct app_config *sa = &c->apps[3];
                ok(strcmp(sa->name, "search") == 0 && strcmp(sa->route_prefix, "/search") == 0 &&
                           strcmp(sa->import_path, "search:app") == 0 && sa->n_deployments == 3,
                   "search: the pipeline's three deployments");
                ok(sa->n_deployments == 3 && sa->deployments[1].has_autoscaling &&
                           sa->deployments[1].autoscaling.min_replicas == 2 &&
                           sa->deployments[1].autoscaling.max_replicas == 8,
                   "search: Embedder autoscaled 2..8");
        }
        config_free(c);
}

static void touch(const char *path) {
        FILE *f = fopen(path, "w");
        if (f)
                fclose(f);
}

/* import_path's module search: .so and .py along working_dir, $SERVE_APP_PATH, PKGLIBDIR/apps. */
static void test_module_search(void) {
        char tmpl[] = "/tmp/serve-module-XXXXXX", a[64], b[64], f[160];
        char *path = NULL, *sym = NULL, *err = NULL;
        const char *dir = mkdtemp(tmpl);
        int r;

        if (!ok(dir != NULL, "module search: a temporary directory"))
                return;
        snprintf(a, sizeof a, "%s/a", dir);
        snprintf(b, sizeof b, "%s/b", dir);
        mkdir(a, 0700);
        mkdir(b, 0700);
        snprintf(f, sizeof f, "%s/m.py", a);
        touch(f);
        snprintf(f, sizeof f, "%s/c.so", a);
        touch(f);
        snprintf(f, sizeof f, "%s/m.so", b);
        touch(f);
        snprintf(f, sizeof f, "%s/only.py", b);
        touch(f);
        snprintf(f, sizeof f, "%s:%s", a, b);
        setenv("SERVE_APP_PATH", f, 1);

        r = module_resolve("only:app", NULL, &path, &sym, &err);
        ok(r == 0 && path && strstr(path, "/b/only.py") && strcmp(sym, "app") == 0, "only.py is found for only:app");
        free(path), free(sym), free(err), path = sym = err = NULL;
        r = module_resolve("c:app", NULL, &path, &sym, &err);
        ok(r == 0 && path && strstr(path, "/a/c.so"), "c.so is found for c:app");
        free(path), free(sym), free(err), path = sym = err = NULL;
        r = module_resolve("m:app", NULL, &path, &sym, &err);
        ok(r == -EINVAL && err && strstr(err, "/a/m.py") && strstr(err, "/b/m.so"),
           "m.py in one directory and m.so in another: an error naming both (%s)", err ? err : "");
        free(path), free(sym), free(err), path = sym = err = NULL;
        r = module_resolve("m.py:app", NULL, &path, &sym, &err);
        ok(r == 0 && path && strstr(path, "/a/m.py"), "m.py:app names the Python module itself");
        free(path), free(sym), free(err), path = sym = err = NULL;
        r = module_resolve("only:app", a, &path, &sym, &err);
        ok(r == 0 && path && strstr(path, "/b/only.py"), "working_dir first, then SERVE_APP_PATH");
        free(path), free(sym), free(err), path = sym = err = NULL;
        r = module_resolve("nope:app", b, &path, &sym, &err);
        ok(r == -ENOENT && err && strstr(err, "nope.so or nope.py") && strstr(err, a) && strstr(err, "/apps"),
           "not found: the module, both extensions and every directory (%s)", err ? err : "");
        free(path), free(sym), free(err), path = sym = err = NULL;
        unsetenv("SERVE_APP_PATH");
        static const char *const files[] = { "a/m.py", "a/c.so", "b/m.so", "b/only.py", "a", "b", "" };
        for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
                snprintf(f, sizeof f, "%s/%s", dir, files[i]);
                if (remove(f) < 0)
                        printf("# cannot remove %s\n", f);
        }
}

/* runtime_env: pip is refused, py_executable must be absolute. */
static void test_runtime_env(void) {
        static const char pip[] = "applications:\n  - import_path: m:app\n    runtime_env:\n      pip: [numpy]\n";
        static const char venv[] = "applications:\n  - import_path: m:app\n    runtime_env:\n      py_executable: /srv/venv/bin/python\n";
        static const char rel[] = "applications:\n  - import_path: m:app\n    runtime_env:\n      py_executable: venv/bin/python\n";
        struct serve_config *c = NULL;
        char *err = NULL;

        ok(config_parse("apps.yaml", pip, strlen(pip), &c, &err) == -EINVAL && err && strstr(err, "pip") &&
                   strstr(err, "apt") && strstr(err, "py_executable"),
           "runtime_env.pip is refused, saying what to do instead (%s)", err ? err : "");
        free(err), err = NULL;
        ok(config_parse("apps.yaml", venv, strlen(venv), &c, &err) == 0 && c &&
                   strcmp(c->apps[0].runtime_env.py_executable, "/srv/venv/bin/python") == 0,
           "runtime_env.py_executable is kept");
        config_free(c), c = NULL;
        ok(config_parse("apps.yaml", rel, strlen(rel), &c, &err) == -EINVAL && err && strstr(err, "absolute"),
           "a relative py_executable is refused");
        free(err), err = NULL;
}

/* A deployment's autoscaling_config default in code (JSON) is checked like apps.yaml's. */
static void test_autoscaling_json(void) {
        struct autoscaling_config a;
        char *err = NULL;

        ok(config_parse_autoscaling_json("{\"min_replicas\": 2, \"max_replicas\": 5, \"target_ongoing_requests\": 3}",
                                         &a, &err) == 0 && a.min_replicas == 2 && a.max_replicas == 5 &&
                   a.target_ongoing_requests == 3 && a.upscale_delay_s == 30,
           "autoscaling_config from JSON, with the defaults for the rest");
        ok(config_parse_autoscaling_json("{\"min_replicas\": 3, \"max_replicas\": 2}", &a, &err) == -EINVAL && err &&
                   strstr(err, "max_replicas"),
           "max_replicas below min_replicas is refused (%s)", err ? err : "");
        free(err), err = NULL;
        ok(config_parse_autoscaling_json("{\"bogus\": 1}", &a, &err) == -EINVAL && err && strstr(err, "bogus"),
           "an unknown key is refused (%s)", err ? err : "");
        free(err), err = NULL;
        ok(config_parse_autoscaling_json("[1, 2]", &a, &err) == -EINVAL, "a list is refused");
        free(err), err = NULL;
}

int main(void) {
        test_full();
        test_defaults();
        test_errors();
        test_limits();
        test_files();
        test_module_search();
        test_runtime_env();
        test_autoscaling_json();
        return tap_done();
}
