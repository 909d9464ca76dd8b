#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "daemon.h"
#include "log.h"
#include "loadmon.h"
#include "loop.h"
#include "proxy.h"
#include "run.h"
#include "scaler.h"
#include "spec.h"
#include "supervisor.h"


struct run {
        struct loop loop;
        struct supervisor *sup;
        struct loadmon *loadmon;
        struct proxy *proxy;
        struct serve_config *cfg;
        struct serve_spec *spec;       /* applied; autoscaled counts are the scaler's */
        struct scaler *scaler;
        const char *file;
        const char *replica_bin;
        /* A reload being described (user code, off the loop: a hanging describe must not stall
         * the proxy or the replicas' supervision); a SIGHUP meanwhile waits for it. */
        struct spec_resolve *resolving;
        struct serve_config *reload_cfg;
        const char *host_override;
        int port_override;
        int sfd;
        struct signalfd_siginfo si;
        struct loop_op op_signal;
        bool reload, stop, force;
        struct supervisor_drain drain;
        struct watchdog watchdog;
};

static void usage(FILE *f) {
        fprintf(f,
                "Usage: serve run [OPTIONS] FILE\n"
                "\n"
                "Serves the applications in FILE (the apps.yaml format: Ray Serve's config schema)\n"
                "in the foreground: an HTTP proxy, the router and one process per replica.\n"
                "\n"
                "Options:\n"
                "  --http-host HOST   Listen address (overrides http_options.host; default 0.0.0.0)\n"
                "  --http-port PORT   Listen port (overrides http_options.port; default 8000)\n"
                "  -h, --help         Show this help\n"
                "\n"
                "Signals: SIGHUP re-reads FILE (an invalid file is logged and the running config\n"
                "keeps serving); SIGINT/SIGTERM stop accepting, finish in-flight requests and exit 0.\n"
                "\n"
                "Environment:\n"
                "  SERVE_APP_PATH      Colon-separated directories searched for MODULE.so or\n"
                "                      MODULE.py (a Python deployment)\n"
                "  SERVE_PYTHON_BRIDGE serve_python.so, which runs Python deployments (default\n"
                "                      " PKGLIBDIR "/python/serve_python.so)\n"
                "  SERVE_PYTHON_PATH   Where the serve Python package is (default\n"
                "                      " PKGDATADIR "/python)\n"
                "  SERVE_REPLICA_BIN   The serve-replica program (default: next to serve, then\n"
                "                      " LIBEXECDIR "/serve-replica)\n"
                "  SERVE_LOG_LEVEL     debug, info (default), warning or error\n");
}

static void proxy_options_from(const struct run *rn, const struct serve_config *c, struct proxy_options *o) {
        *o = (struct proxy_options){
                .host = rn->host_override ? rn->host_override : c->http.host,
                .port = rn->port_override > 0 ? rn->port_override : c->http.port,
                .listen_fd = -1,
                .max_body = c->http.max_request_body_bytes,
                .header_timeout_s = c->http.header_timeout_s,
                .keep_alive_timeout_s = c->http.keep_alive_timeout_s,
                .request_timeout_s = c->http.request_timeout_s,
                .max_connections = c->http.max_connections,
                .max_buffered_body = c->http.max_buffered_request_bytes,
        };
}

static double now_s(void) { return (double)now_ns() / 1e9; }

static void on_signal(struct loop_op *op, int res, unsigned flags) {
        struct run *rn = (struct run *)((char *)op - offsetof(struct run, op_signal));

        if (res == (int)sizeof rn->si) {
                switch (rn->si.ssi_signo) {
                case SIGHUP:
                        rn->reload = true;
                        break;
                case SIGINT:
                case SIGTERM:
                        if (rn->stop)
                                rn->force = true; /* a second signal: stop now */
                        rn->stop = true;
                        break;
                }
        }
        struct io_uring_sqe *sqe = loop_sqe(&rn->loop, &rn->op_signal);
        io_uring_prep_read(sqe, rn->sfd, &rn->si, sizeof rn->si, 0);
}

static void reload_failed(const char *why) {
        log_error("reload failed, still serving the previous config: %s", why);
        sd_notify(0, "READY=1\nSTATUS=reload failed; serving the previous config");
}

static void on_reload_resolved(void *userdata, int r, struct serve_spec *spec, const char *error) {
        struct run *rn = userdata;
        struct serve_config *cfg = TAKE_PTR(rn->reload_cfg);

        rn->resolving = NULL;
        if (r >= 0) {
                (void)scaler_sync(rn->scaler, spec, now_s(), NULL, NULL);
                r = supervisor_apply_spec(rn->sup, spec);
                error = r < 0 ? strerror(-r) : NULL;
        }
        if (r < 0) {
                serve_spec_free(spec);
                reload_failed(error);
                config_free(cfg);
                return;
        }
        serve_spec_free(rn->spec);
        rn->spec = spec;
        struct proxy_options po;
        proxy_options_from(rn, cfg, &po);
        proxy_update_options(rn->proxy, &po);
        config_free(rn->cfg);
        rn->cfg = cfg;
        log_info("reloaded %s: %zu application(s)", rn->file, cfg->n_apps);
        sd_notify(0, "READY=1\nSTATUS=serving");
}

/* Parses FILE now; describes its applications off the loop (bounded by
 * SPEC_DESCRIBE_TIMEOUT_S) and applies it when that is done. */
static void do_reload(struct run *rn) {
        struct serve_config *cfg = NULL;
        char *err = NULL;
        int r;

        sd_notify(0, "RELOADING=1");
        log_info("reloading %s", rn->file);
        r = config_load_file(rn->file, &cfg, &err);
        if (r >= 0)
                r = spec_resolve_start(&rn->loop, rn->replica_bin, cfg, SPEC_DESCRIBE_TIMEOUT_S, on_reload_resolved, rn,
                                       &rn->resolving);
        if (r < 0) {
                reload_failed(err ? err : strerror(-r));
                free(err);
                config_free(cfg);
                return;
        }
        rn->reload_cfg = cfg;
}

static void reload_cancel(struct run *rn) {
        spec_resolve_cancel(TAKE_PTR(rn->resolving));
        config_free(TAKE_PTR(rn->reload_cfg));
}

/* The autoscaler's turn: the load since the last one, then decisions applied to the replicas. */
static void take_load(void *userdata, const struct deployment *d, const struct scaler_load *l) {
        struct run *rn = userdata;
        scaler_add_load(rn->scaler, d->app, d->name, l);
}

static uint64_t autoscale_tick(struct run *rn, uint64_t now) {
        double next_s = 1;

        if (!rn->spec)
                return UINT64_MAX;
        supervisor_take_load(rn->sup, now, take_load, rn);
        if (scaler_tick(rn->scaler, rn->spec, (double)now / 1e9, &next_s) > 0)
                for (size_t i = 0; i < rn->spec->n_deps; i++)
                        if (rn->spec->deps[i].autoscaling)
                                (void)supervisor_scale(rn->sup, rn->spec->deps[i].app, rn->spec->deps[i].name,
                                                       rn->spec->deps[i].replicas);
        return now + sec_to_ns(next_s);
}

static void run_free(struct run *rn) {
        struct router *r = router_get();

        reload_cancel(rn);
        proxy_free(rn->proxy);
        supervisor_free(rn->sup);
        loadmon_free(rn->loadmon);
        serve_spec_free(rn->spec);
        scaler_free(rn->scaler);
        router_set_routes(r, NULL, 0);
        config_free(rn->cfg);
        if (rn->sfd >= 0)
                close(rn->sfd);
}

int serve_run(int argc, char **argv) {
        static const struct option opts[] = {
                { "http-host", required_argument, NULL, 'H' },
                { "http-port", required_argument, NULL, 'P' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        struct run rn = { .sfd = -1 };
        _cleanup_free_ char *replica_bin = NULL;
        char *err = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case 'H':
                        rn.host_override = optarg;
                        break;
                case 'P': {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*end || v < 1 || v > 65535) {
                                fprintf(stderr, "serve run: --http-port must be 1..65535, got '%s'\n", optarg);
                                return 2;
                        }
                        rn.port_override = (int)v;
                        break;
                }
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind != argc - 1) {
                fprintf(stderr, "serve run: expected exactly one FILE\n\n");
                usage(stderr);
                return 2;
        }
        rn.file = argv[optind];

        r = config_load_file(rn.file, &rn.cfg, &err);
        if (r < 0) {
                fprintf(stderr, "serve run: %s\n", err ? err : strerror(-r));
                free(err);
                return 1;
        }

        daemon_set_limits();
        rn.sfd = signalfd_daemon();

        r = loop_init(&rn.loop, 1024);
        if (r < 0) {
                log_error_errno(r, "Cannot set up io_uring: %m");
                run_free(&rn);
                return 1;
        }
        replica_bin = spec_find_replica_bin();
        rn.replica_bin = replica_bin;
        r = supervisor_new(&rn.loop, router_get(), replica_bin, &rn.sup);
        if (r >= 0 && (r = loadmon_new(&rn.loadmon)) >= 0)
                supervisor_set_loadmon(rn.sup, rn.loadmon);
        if (r >= 0)
                r = scaler_new(&rn.scaler);
        if (r >= 0)
                r = spec_resolve(replica_bin, rn.cfg, &rn.spec, &err);
        if (r >= 0)
                r = scaler_sync(rn.scaler, rn.spec, now_s(), NULL, NULL);
        if (r >= 0)
                r = supervisor_apply_spec(rn.sup, rn.spec);
        if (r < 0) {
                fprintf(stderr, "serve run: %s\n", err ? err : strerror(-r));
                free(err);
                run_free(&rn);
                loop_free(&rn.loop);
                return 1;
        }
        struct proxy_options po;
        proxy_options_from(&rn, rn.cfg, &po);
        r = proxy_new(&rn.loop, router_get(), &po, &rn.proxy);
        if (r < 0) {
                run_free(&rn);
                loop_free(&rn.loop);
                return 1;
        }
        rn.op_signal.cb = on_signal;
        on_signal(&rn.op_signal, 0, 0); /* arms the signalfd read */
        log_info("serving %zu application(s) from %s on http://%s:%d", rn.cfg->n_apps, rn.file, po.host, po.port);
        sd_notify(0, "READY=1\nSTATUS=serving");
        watchdog_init(&rn.watchdog);
        uint64_t autoscale_next = 0;

        for (;;) {
                uint64_t now = now_ns(), t1, t2, timeout;

                /* A request waiting for a first replica is heard at once (and the replica
                 * starts in this turn's supervisor tick). */
                if (now >= autoscale_next || supervisor_waiting_at_zero(rn.sup))
                        autoscale_next = autoscale_tick(&rn, now);
                t1 = MIN(supervisor_tick(rn.sup, now), autoscale_next - now);
                t2 = MIN(proxy_tick(rn.proxy, now), router_tick(router_get(), now));
                timeout = MIN(MIN(t1, t2), watchdog_tick(&rn.watchdog, now));
                if (timeout == 0)
                        timeout = 1;
                if (!supervisor_prepare_sleep(rn.sup))
                        timeout = 0;
                r = loop_run_once(&rn.loop, timeout);
                supervisor_awake(rn.sup);
                if (r < 0) {
                        log_error_errno(r, "event loop failed: %m");
                        break;
                }
                if (rn.reload && !rn.stop && !rn.resolving) {
                        rn.reload = false;
                        do_reload(&rn);
                }
                if (rn.stop && !rn.drain.deadline) {
                        sd_notify(0, "STOPPING=1");
                        reload_cancel(&rn);
                        proxy_stop_accepting(rn.proxy);
                        supervisor_drain_begin(rn.sup, &rn.drain, now);
                }
                if (supervisor_drain_step(rn.sup, &rn.drain, now, rn.force, proxy_connections(rn.proxy)))
                        break;
        }
        log_info("stopped");
        run_free(&rn);
        loop_free(&rn.loop);
        return 0;
}
