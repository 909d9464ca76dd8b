/* serve-head: owns the desired state (apps.yaml, cluster.yaml, API deploys) and reconciles it:
 * which replicas exist and on which node. Workers connect to its control port; it places
 * replicas, tells every worker its share, and tells all of them where every deployment's ready
 * replicas are. It is never in the request path: when it is down, workers keep serving.
 *
 * This file wires the parts (head.h lists them) and runs the loop. */
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "daemon.h"
#include "head.h"
#include "head/userdata.h"
#include "log.h"
#include "macros.h"

double wall_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_signal(struct loop_op *op, int res, unsigned flags) {
        struct head *h = container_of(op, struct head, op_signal);

        if (res == (int)sizeof h->si) {
                if (h->si.ssi_signo != SIGHUP)
                        h->stop = true;
                else if (!h->reload) {
                        h->reload = true;
                        if (h->deploy)
                                log_info("SIGHUP while a config is being described: reloading once that is done");
                }
        }
        struct io_uring_sqe *sqe = loop_sqe(&h->loop, &h->op_signal);
        io_uring_prep_read(sqe, h->sfd, &h->si, sizeof h->si, 0);
}

static void on_autoscale(void *userdata, const char *app, const char *name, const char *message) {
        struct head *h = userdata;
        _cleanup_free_ char *key = dep_key(app, name);
        event_log_add(&h->events, LOG_INFO, "autoscale", key ?: name, "", "%s", message);
}

static void usage(FILE *f) {
        fprintf(f,
                "Usage: serve-head [OPTIONS]\n"
                "\n"
                "The controller of a serve cluster: reads apps.yaml and cluster.yaml, accepts worker\n"
                "nodes, places replicas on them and serves the REST API (serve status, serve deploy)\n"
                "and the dashboard (http://API_HOST:API_PORT/, files from SERVE_DASHBOARD_DIR or the\n"
                "installed ones, charts by Debian's libjs-dygraphs).\n"
                "It is never in the request path: workers keep serving while it is down.\n"
                "\n"
                "Options:\n"
                "  -c, --config-dir DIR   Directory with apps.yaml and cluster.yaml (default /etc/serve)\n"
                "      --state-dir DIR    Where the state file lives (default /var/lib/serve)\n"
                "      --check            Validate apps.yaml and cluster.yaml, print the result, exit\n"
                "      --describe-timeout SECONDS\n"
                "                         How long describing a config's code (serve-replica --describe,\n"
                "                         all applications together) may take before it is killed and\n"
                "                         the config refused (default %g)\n"
                "      --api-max-connections N\n"
                "                         REST API connections open at once; more are closed when\n"
                "                         accepted (default %u)\n"
                "      --api-header-timeout SECONDS\n"
                "                         Time a REST API client has to send its request head (default %g)\n"
                "      --api-idle-timeout SECONDS\n"
                "                         Time a REST API request body or response may stall (default %g)\n"
                "      --history-interval SECONDS\n"
                "                         How often the dashboard's time series are sampled; they keep\n"
                "                         the last hour (default %g)\n"
                "\n"
                "Join tokens (the cluster CA is in STATE-DIR/pki unless cluster.yaml's tls: names one):\n"
                "      --join-token create [--ttl DURATION] [--uses N] [--name NODE]\n"
                "                         Mint a token and print it (SRV1.<CA hash>.<id>.<secret>): put it\n"
                "                         in a new node's join_token_file. DURATION: 900, 15m, 2h, 7d\n"
                "                         (default: no expiry); N: joins it allows (default: unlimited);\n"
                "                         NODE: the only node name it admits\n"
                "      --join-token list  The tokens, their uses left and expiry (never the secrets)\n"
                "      --join-token revoke ID\n"
                "                         Revoke a token (\"default\": join_token_file's long-lived one)\n"
                "      --join-token show  Print join_token_file's token with the CA hash, for nodes\n"
                "                         that join with it\n"
                "\n"
                "Cluster autoscaler:\n"
                "      --render-user-data GROUP [--node-name NAME]\n"
                "                         Print the cloud-init user-data a provider's create hook gets for\n"
                "                         a new node of worker group GROUP (cluster.yaml), the join token\n"
                "                         shown as REDACTED; NAME defaults to GROUP-example\n"
                "\n"
                "  -h, --help             Show this help\n"
                "      --version          Show the version\n"
                "\n"
                "Signals: SIGHUP re-reads apps.yaml (invalid: logged with file:line:column, shown by\n"
                "`serve status`, the running config stays); SIGTERM/SIGINT stop the head (workers keep\n"
                "serving).\n"
                "\n"
                "A config's code is described by child processes while the head keeps serving; one config\n"
                "at a time: a PUT or DELETE of the applications meanwhile gets 409, a SIGHUP meanwhile\n"
                "reloads once the current one is done.\n",
                SPEC_DESCRIBE_TIMEOUT_S, HTTPD_MAX_CONNECTIONS, HTTPD_HEADER_TIMEOUT_S, HTTPD_IDLE_TIMEOUT_S,
                HISTORY_INTERVAL_S);
}

/* --render-user-data: what a provider's create would get, from cluster.yaml alone (no token
 * files, no state). Returns the exit status. */
static int render_user_data_command(const char *cluster_path, const char *group, const char *node_name) {
        _cleanup_free_ char *err = NULL, *default_name = NULL, *text = NULL;
        struct cluster_config *c = NULL;
        const struct worker_group *g = NULL;
        int r;

        r = cluster_config_load_file(cluster_path, &c, &err);
        if (r < 0) {
                fprintf(stderr, "serve-head: %s\n", err ?: strerror(-r));
                return 1;
        }
        for (size_t i = 0; i < c->n_groups && !g; i++)
                if (streq(c->groups[i].name, group))
                        g = &c->groups[i];
        if (!g) {
                fprintf(stderr, "serve-head: %s has no worker group \"%s\"; its groups: ", cluster_path, group);
                for (size_t i = 0; i < c->n_groups; i++)
                        fprintf(stderr, "%s%s", i ? ", " : "", c->groups[i].name);
                fprintf(stderr, "%s\n", c->n_groups ? "" : "none");
                cluster_config_free(c);
                return 1;
        }
        if (!node_name) {
                if (asprintf(&default_name, "%s-example", group) < 0) {
                        cluster_config_free(c);
                        return 1;
                }
                node_name = default_name;
        }
        if (!node_name_valid(node_name)) {
                fprintf(stderr, "serve-head: \"%s\" is no node name: 1 to 200 letters, digits, '.', '_' or '-'%s\n",
                        node_name, default_name ? " (pass --node-name)" : "");
                cluster_config_free(c);
                return 1;
        }
        r = userdata_render(c, g, node_name, NULL, &text);
        if (r == -EINVAL)
                fprintf(stderr, "serve-head: %s: autoscaler.head_address is not set: new nodes would not know where "
                                "to connect\n",
                        cluster_path);
        else if (r < 0)
                fprintf(stderr, "serve-head: %s\n", strerror(-r));
        else
                fputs(text, stdout);
        cluster_config_free(c);
        return r < 0 || fflush(stdout) != 0 ? 1 : 0;
}

static int load_files(struct head *h, bool check_only) {
        char *err = NULL;
        int r;

        r = cluster_config_load_file(h->cluster_path, &h->ccfg, &err);
        if (r == -ENOENT) {
                free(err);
                err = NULL;
                r = cluster_config_parse(h->cluster_path, "", 0, &h->ccfg, &err);
        }
        if (r < 0) {
                log_error("%s", err ?: strerror(-r));
                free(err);
                return r;
        }
        if (check_only) {
                struct serve_config *cfg = NULL;
                r = config_load_file(h->apps_path, &cfg, &err);
                if (r >= 0) {
                        struct serve_spec *spec = NULL;
                        r = spec_resolve_timeout(h->replica_bin, cfg, h->describe_timeout_s, &spec, &err);
                        serve_spec_free(spec);
                }
                config_free(cfg);
                if (r < 0) {
                        fprintf(stderr, "%s\n", err ?: strerror(-r));
                        free(err);
                        return r;
                }
                printf("%s and %s are valid\n", h->apps_path, h->cluster_path);
                return 0;
        }
        char *jt = path_relative_to_file(h->cluster_path, h->ccfg->head.join_token_file);
        char *at = path_relative_to_file(h->cluster_path, h->ccfg->head.api_token_file);
        if (!jt || !at) {
                free(jt);
                free(at);
                return -ENOMEM;
        }
        free(h->ccfg->head.join_token_file);
        h->ccfg->head.join_token_file = jt;
        free(h->ccfg->head.api_token_file);
        h->ccfg->head.api_token_file = at;
        r = read_token_file(h->ccfg->head.join_token_file, &h->join_token, &err);
        if (r >= 0)
                r = read_token_file(h->ccfg->head.api_token_file, &h->api_token, &err);
        if (r < 0) {
                log_error("%s", err ?: strerror(-r));
                free(err);
                return r;
        }
        return 0;
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "config-dir", required_argument, NULL, 'c' },
                { "state-dir", required_argument, NULL, 'S' },
                { "check", no_argument, NULL, 'k' },
                { "describe-timeout", required_argument, NULL, 'D' },
                { "api-max-connections", required_argument, NULL, 'M' },
                { "api-header-timeout", required_argument, NULL, 'T' },
                { "api-idle-timeout", required_argument, NULL, 'I' },
                { "history-interval", required_argument, NULL, 'H' },
                { "join-token", required_argument, NULL, 'J' },
                { "ttl", required_argument, NULL, 't' },
                { "uses", required_argument, NULL, 'u' },
                { "name", required_argument, NULL, 'n' },
                { "render-user-data", required_argument, NULL, 'R' },
                { "node-name", required_argument, NULL, 'N' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct head h = { .conf_dir = "/etc/serve", .state_dir = "/var/lib/serve", .sfd = -1,
                          .describe_timeout_s = SPEC_DESCRIBE_TIMEOUT_S, .history_interval_s = HISTORY_INTERVAL_S,
                          .api_opts = { .max_body = MAX_API_BODY, .what = "the REST API" } };
        bool check_only = false;
        const char *jt_action = NULL, *jt_ttl = NULL, *jt_uses = NULL, *jt_name = NULL, *jt_id = NULL;
        const char *render_group = NULL, *render_node = NULL;
        char *err = NULL;
        int c, r;

        log_init("serve-head");
        /* Broadcast buffers are large and short-lived: give them back to the system when sent
         * (a fixed threshold; glibc's adaptive one would keep them in the heap). */
        mallopt(M_MMAP_THRESHOLD, 64 * 1024);
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        h.conf_dir = optarg;
                        break;
                case 'S':
                        h.state_dir = optarg;
                        break;
                case 'k':
                        check_only = true;
                        break;
                case 'D':
                case 'T':
                case 'H':
                case 'I': {
                        char *end;
                        double v = strtod(optarg, &end);
                        if (*optarg == '\0' || *end || !(v > 0 && v <= 86400)) {
                                fprintf(stderr, "serve-head: --%s needs seconds in (0, 86400], got '%s'\n",
                                        c == 'D'   ? "describe-timeout"
                                        : c == 'T' ? "api-header-timeout"
                                        : c == 'H' ? "history-interval"
                                                   : "api-idle-timeout",
                                        optarg);
                                return 2;
                        }
                        if (c == 'H' && v < 0.1) {
                                fprintf(stderr, "serve-head: --history-interval needs at least 0.1 seconds, got '%s'\n", optarg);
                                return 2;
                        }
                        if (c == 'H')
                                h.history_interval_s = v;
                        else if (c == 'D')
                                h.describe_timeout_s = v;
                        else if (c == 'T')
                                h.api_opts.header_timeout_s = v;
                        else
                                h.api_opts.idle_timeout_s = v;
                        break;
                }
                case 'M': {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == '\0' || *end || v < 1 || v > 1000000) {
                                fprintf(stderr, "serve-head: --api-max-connections needs 1..1000000, got '%s'\n", optarg);
                                return 2;
                        }
                        h.api_opts.max_connections = (unsigned)v;
                        break;
                }
                case 'J':
                        jt_action = optarg;
                        break;
                case 't':
                        jt_ttl = optarg;
                        break;
                case 'u':
                        jt_uses = optarg;
                        break;
                case 'n':
                        jt_name = optarg;
                        break;
                case 'R':
                        render_group = optarg;
                        break;
                case 'N':
                        render_node = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("serve-head %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (jt_action && streq(jt_action, "revoke") && optind < argc)
                jt_id = argv[optind++];
        if (optind != argc) {
                fprintf(stderr, "serve-head: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }
        if (!jt_action && (jt_ttl || jt_uses || jt_name)) {
                fprintf(stderr, "serve-head: --ttl, --uses and --name go with --join-token create\n");
                return 2;
        }
        if (render_node && !render_group) {
                fprintf(stderr, "serve-head: --node-name goes with --render-user-data\n");
                return 2;
        }
        list_init(&h.nodes);
        list_init(&h.pending);
        if (asprintf(&h.apps_path, "%s/apps.yaml", h.conf_dir) < 0 || asprintf(&h.cluster_path, "%s/cluster.yaml", h.conf_dir) < 0)
                return 1;
        if (render_group) {
                r = render_user_data_command(h.cluster_path, render_group, render_node);
                free(h.apps_path);
                free(h.cluster_path);
                return r;
        }
        h.replica_bin = spec_find_replica_bin();
        r = load_files(&h, check_only);
        if (check_only || r < 0)
                return r < 0 ? 1 : 0;
        if (jt_action) {
                r = trust_join_token_command(&h, jt_action, jt_ttl, jt_uses, jt_name, jt_id);
                cluster_config_free(h.ccfg);
                free(h.join_token);
                free(h.api_token);
                free(h.replica_bin);
                free(h.apps_path);
                free(h.cluster_path);
                return r;
        }
        if (mkdir(h.state_dir, 0700) < 0 && errno != EEXIST) {
                log_error_errno(errno, "Cannot create the state directory %s: %m", h.state_dir);
                return 1;
        }

        daemon_set_limits();
        h.sfd = signalfd_daemon();
        r = loop_init(&h.loop, 4096);
        if (r < 0) {
                log_error_errno(r, "Cannot set up io_uring: %m");
                return 1;
        }

        if (scaler_new(&h.scaler) < 0 || dashboard_init(&h, h.history_interval_s) < 0 || trust_init(&h) < 0)
                return 1;
        scaler_set_observer(h.scaler, on_autoscale, &h);
        scaler_set_min_sample_interval(h.scaler, 2 * h.ccfg->worker_heartbeat_interval_s);
        recover(&h);
        if (trust_start(&h) < 0 || groups_init(&h) < 0)
                return 1;
        if (!h.spec || !streq_ptr(h.cfg_source, "api")) {
                r = load_apps_file(&h, &err);
                if (r < 0) {
                        log_error("%s", err ?: strerror(-r));
                        record_config_error(&h, err ?: strerror(-r));
                        free(err);
                        err = NULL;
                        if (r != -ENOENT && !h.spec) {
                                /* Start without applications: `serve deploy` or a fixed file and
                                 * SIGHUP can still bring them. */
                                log_warning("starting without applications");
                        }
                }
        }
        if (!h.spec) {
                struct serve_config *cfg = NULL;
                if (config_parse("(empty)", "applications: []\n", 17, &cfg, &err) == 0)
                        (void)apply_config(&h, cfg, "", "file", &err);
                free(err);
                err = NULL;
        }
        align_assignment(&h);
        /* Describing at startup may have taken a while, and the workers could not reach us
         * meanwhile: the nodes of the last run get worker_timeout_s from now. */
        nodes_restart_clocks(&h);

        r = netlistener_open(&h.ctl, &h.loop, h.ccfg->head.control_host, h.ccfg->head.control_port, on_ctl_accept, &h);
        if (r < 0) {
                log_error_errno(r, "Cannot listen on %s:%d (head.control_port): %m", h.ccfg->head.control_host,
                                h.ccfg->head.control_port);
                return 1;
        }
        r = httpd_open_with(&h.api, &h.loop, h.ccfg->head.api_host, h.ccfg->head.api_port, &h.api_opts, on_api, &h);
        if (r < 0) {
                log_error_errno(r, "Cannot listen on %s:%d (head.api_port): %m", h.ccfg->head.api_host, h.ccfg->head.api_port);
                return 1;
        }
        h.op_signal.cb = on_signal;
        on_signal(&h.op_signal, 0, 0);
        log_info("serving the API on http://%s:%d, workers connect to %s:%d (%s)", h.ccfg->head.api_host, h.ccfg->head.api_port,
                 h.ccfg->head.control_host, h.ccfg->head.control_port,
                 h.trust ? "mutually authenticated TLS" : "plaintext");
        sd_notifyf(0, "READY=1\nSTATUS=serving %zu application(s)", h.spec ? h.spec->n_apps : 0);
        h.dirty = true;
        struct watchdog wd;
        watchdog_init(&wd);

        while (!h.stop) {
                uint64_t now = now_ns();

                uint64_t wd_next = watchdog_tick(&wd, now);
                trust_tick(&h);
                if (h.reload && !h.deploy) {
                        h.reload = false;
                        deploy_reload(&h);
                }
                double scale_next_s;
                if (h.scaler && scaler_tick(h.scaler, h.spec, (double)now / 1e9, &scale_next_s) > 0) {
                        h.dirty = true; /* place (or drain) the replicas the autoscaler changed */
                        /* and write the state without the usual coalescing: a head restarted
                         * now must find the new count, or it would drain replicas under load. */
                        h.state_next_ns = 0;
                }
                /* A pass over 10,000 nodes takes a while: at least twice its time goes to the
                 * loop (hellos, reports) before the next, or a join storm starves heartbeats. */
                if (h.dirty && now >= h.reconcile_next_ns) {
                        reconcile(&h);
                        h.reconcile_next_ns = now + MAX(RECONCILE_MIN_INTERVAL_NS, 3 * (now_ns() - now));
                }
                if (h.routing_dirty && now >= h.routing_next_ns) {
                        uint64_t t0 = now_ns();
                        h.routing_dirty = false;
                        build_routing(&h);
                        h.routing_next_ns = now + MAX(ROUTING_MIN_INTERVAL_NS, 3 * (now_ns() - t0));
                }
                save_state_flush(&h, false);
                groups_tick(&h, now);
                dashboard_tick(&h, now);
                r = loop_run_once(&h.loop, MIN(wd_next, h.routing_dirty || h.dirty || h.state_dirty ? 10 * NSEC_PER_MSEC
                                                                                                   : 100 * NSEC_PER_MSEC));
                if (r < 0) {
                        log_error_errno(r, "event loop failed: %m");
                        break;
                }
                /* After the reports of this round, never before them. */
                nodes_check_liveness(&h);
        }
        save_state_flush(&h, true);
        log_info("stopping; workers keep serving");
        sd_notify(0, "STOPPING=1");
        deploy_cancel(&h);
        groups_free(&h);
        httpd_close(&h.api);
        netlistener_close(&h.ctl);
        nodes_free_all(&h);
        loop_drain(&h.loop, 500 * NSEC_PER_MSEC);
        loop_free(&h.loop);
        assignments_free(h.assign, h.n_assign);
        scaler_free(h.scaler);
        serve_spec_free(h.spec);
        config_free(h.cfg);
        cluster_config_free(h.ccfg);
        free(h.cfg_text);
        free(h.cfg_source);
        free(h.config_error);
        netblob_unref(h.config_msg);
        netblob_unref(h.config_delta);
        cJSON_Delete(h.config_full);
        cJSON_Delete(h.cfg_json);
        dashboard_free(&h);
        routing_table_done(&h.routing);
        free(h.saved_state);
        trust_free(&h);
        free(h.join_token);
        free(h.api_token);
        free(h.replica_bin);
        free(h.apps_path);
        free(h.cluster_path);
        if (h.sfd >= 0)
                close(h.sfd);
        return 0;
}
