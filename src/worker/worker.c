/* serve-worker: the node agent and data plane of one node. It registers with serve-head,
 * starts and stops replicas as the head assigns them, runs the HTTP proxy and the router
 * (local replicas first, else a peer node), reports replicas and load every heartbeat, and
 * keeps serving with what it has while the head is away. */
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "ctlmsg.h"
#include "daemon.h"
#include "log.h"
#include "loop.h"
#include "netconn.h"
#include "nodecfg.h"
#include "peer.h"
#include "proxy.h"
#include "httpd.h"
#include "report.h"
#include "scaler.h"
#include "routing_table.h"
#include "config_msg.h"
#include "resources.h"
#include "spec.h"
#include "supervisor.h"
#include "cgroup.h"
#include "loadmon.h"
#include "enroll.h"
#include "events.h"
#include "metrics.h"
#include "pki.h"

#define HEAD_BACKOFF_MIN_NS (100 * NSEC_PER_MSEC)
#define HEAD_BACKOFF_MAX_NS (2 * NSEC_PER_SEC)
#define MAX_ASSIGN_ITEMS 100000
#define HEAD_HANDSHAKE_TIMEOUT_NS (10 * NSEC_PER_SEC)
#define URGENT_REPORT_MIN_NS (100 * NSEC_PER_MSEC)

struct worker {
        struct loop loop;
        const char *cfg_path;
        struct worker_config *cfg;
        struct enroll *enroll;
        struct node_resources res;
        char *replica_bin;

        struct supervisor *sup;
        uint64_t events_sent;      /* the last of the supervisor's events a report carried */
        struct proxy *proxy;
        struct peers *peers;
        struct httpd metrics;
        bool metrics_open;
        bool loop_ready;

        struct netconn *head;
        bool head_up, welcomed;
        uint64_t head_next_ns, head_backoff_ns, next_report_ns;
        uint64_t next_urgent_ns;   /* the earliest report for requests waiting at zero replicas */
        double hb_interval_s;
        cJSON *config;
        long long config_epoch;
        struct routing_table routing;  /* as serve-head last described it */
        bool resync_asked;
        bool have_assign, proxy_stopped;
        bool joining;                  /* getting this node's certificate: no head link yet */
        double wall_offset_s;

        int sfd;
        struct signalfd_siginfo si;
        struct loop_op op_signal;
        bool stop, force, fatal;
        struct supervisor_drain drain;
        struct watchdog watchdog;
        struct cgroups cgroups;
        struct loadmon *loadmon;
};


static void usage(FILE *f) {
        fprintf(f,
                "Usage: serve-worker [OPTIONS]\n"
                "\n"
                "The node agent of a serve cluster: registers with serve-head, runs the replicas the\n"
                "head assigns to this node, and serves HTTP for every application on this node's\n"
                "proxy (requests for replicas elsewhere go to the peer node that has them).\n"
                "\n"
                "Options:\n"
                "  -c, --config FILE   worker.yaml (default /etc/serve/worker.yaml)\n"
                "  -h, --help          Show this help\n"
                "      --version       Show the version\n"
                "\n"
                "worker.yaml keys: head_address (HOST:PORT, required), join_token_file, node_name,\n"
                "node_address (an IP, or auto: the local address of the route to the head), http_host,\n"
                "http_port, data_port, metrics_port, labels, resources.\n"
                "\n"
                "Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests, stop the replicas\n"
                "and exit 0. If serve-head is unreachable the worker keeps serving what it has.\n"
                "\n"
                "Environment: SERVE_APP_PATH (where MODULE.so or MODULE.py is searched),\n"
                "SERVE_PYTHON_BRIDGE, SERVE_PYTHON_PATH (Python deployments), SERVE_REPLICA_BIN,\n"
                "SERVE_LOG_LEVEL (debug, info, warning, error).\n");
}

/* ---- talking to the head ---- */

/* The report: replicas, queues, request counters (also the heartbeat). NULL on allocation failure. */
static cJSON *report_build(const struct supervisor *s, const struct router *r, const struct peers *ps, double wall_offset_s) {
        cJSON *m = ctlmsg_new("report"), *reps, *deps, *stats, *pj;
        struct list *pos, *tmp;

        if (!m || !(reps = cJSON_AddArrayToObject(m, "replicas")) || !(deps = cJSON_AddArrayToObject(m, "deployments")) ||
            !(stats = cJSON_AddArrayToObject(m, "stats")) || supervisor_report(s, reps, deps, wall_offset_s) < 0)
                goto fail;
        if (r->ready)
                list_for_each_safe(pos, tmp, (struct list *)&r->stats) {
                        const struct dep_stats *st = list_entry(pos, struct dep_stats, link);
                        cJSON *o = cJSON_CreateObject();
                        if (!o || !cJSON_AddItemToArray(stats, o) || !cJSON_AddStringToObject(o, "app", st->app) ||
                            !cJSON_AddStringToObject(o, "deployment", st->name) ||
                            !cJSON_AddNumberToObject(o, "requests", (double)st->requests) ||
                            !cJSON_AddNumberToObject(o, "errors", (double)st->errors) ||
                            !cJSON_AddNumberToObject(o, "replica_starts", (double)st->replica_starts) ||
                            latency_hist_json_add(o, &st->latency) < 0)
                                goto fail;
                }
        if (ps) {
                struct peer_stats p;
                peers_stats(ps, &p);
                if (!(pj = cJSON_AddObjectToObject(m, "peers")) || !cJSON_AddNumberToObject(pj, "sent", (double)p.sent) ||
                    !cJSON_AddNumberToObject(pj, "received", (double)p.received) ||
                    !cJSON_AddNumberToObject(pj, "rejected", (double)p.rejected) ||
                    !cJSON_AddNumberToObject(pj, "failed_over", (double)p.failed_over) ||
                    !cJSON_AddNumberToObject(pj, "refused", (double)p.refused) ||
                    !cJSON_AddNumberToObject(pj, "links_dropped", (double)p.links_dropped) ||
                    !cJSON_AddNumberToObject(pj, "body_buffered", (double)request_body_buffered()))
                        goto fail;
        }
        return m;
fail:
        cJSON_Delete(m);
        return NULL;
}

/* Adds the load monitor's node numbers to report m: "load": {"ebpf", "listen_queue",
 * "listen_overflows"} (the last two when they could be read). Returns m, or NULL (m freed). */
static cJSON *report_add_load(struct worker *w, cJSON *m) {
        struct loadmon_node ln;
        cJSON *l;

        if (!m || !w->loadmon)
                return m;
        if (!(l = cJSON_AddObjectToObject(m, "load")) || !cJSON_AddNumberToObject(l, "ebpf", loadmon_ebpf(w->loadmon)))
                goto fail;
        if (loadmon_node(w->loadmon, w->cfg->http_host, w->cfg->http_port, &ln) == 0 &&
            (!cJSON_AddNumberToObject(l, "listen_queue", (double)ln.listen_queue) ||
             !cJSON_AddNumberToObject(l, "listen_overflows", (double)ln.listen_overflows)))
                goto fail;
        return m;
fail:
        cJSON_Delete(m);
        return NULL;
}

/* The autoscaler's input in a heartbeat's report: each deployment's "busy_s", "cpu_used_s",
 * "rq_wait_s" and "rq_waits" since the previous heartbeat (scaler.h). */
static void add_one_load(void *userdata, const struct deployment *d, const struct scaler_load *l) {
        cJSON *it;
        cJSON_ArrayForEach(it, (cJSON *)userdata) {
                if (!streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "app")), d->app) ||
                    !streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "deployment")), d->name) ||
                    !streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(it, "version")), d->version))
                        continue;
                (void)(cJSON_AddNumberToObject(it, "busy_s", l->busy_s) && cJSON_AddNumberToObject(it, "cpu_used_s", l->cpu_s) &&
                       cJSON_AddNumberToObject(it, "rq_wait_s", l->rq_delay_s) &&
                       cJSON_AddNumberToObject(it, "rq_waits", l->rq_wakeups));
                return;
        }
}

/* The supervisor's events since the last report that carried them: "events" (see events.h). A
 * report that cannot be sent takes them along (the head is down: nobody would see them). */
static cJSON *report_add_events(struct worker *w, cJSON *m) {
        struct event_log *ev = supervisor_events(w->sup);
        cJSON *arr;

        if (!m || ev->next_id - 1 == w->events_sent)
                return m;
        if (!(arr = event_log_json(ev, w->events_sent, EVENT_REPORT_MAX)) || !cJSON_AddItemToObject(m, "events", arr)) {
                cJSON_Delete(arr);
                cJSON_Delete(m);
                return NULL;
        }
        w->events_sent = ev->next_id - 1;
        return m;
}

static cJSON *report_add_autoscale(struct worker *w, cJSON *m, uint64_t now) {
        if (m)
                supervisor_take_load(w->sup, now, add_one_load, cJSON_GetObjectItem(m, "deployments"));
        return m;
}

static void head_send(struct worker *w, cJSON *m) {
        if (m && w->head && w->head_up && ctlmsg_encode(netconn_outbuf(w->head), m) == 0)
                netconn_flush(w->head);
        cJSON_Delete(m);
}

static cJSON *hello_message(struct worker *w) {
        cJSON *m = ctlmsg_new("hello"), *node, *labels, *res, *gpus, *custom, *reps;
        const char *token = enroll_hello_token(w->enroll);
        bool ok = m && (!token || cJSON_AddStringToObject(m, "token", token)) && (node = cJSON_AddObjectToObject(m, "node")) &&
                  cJSON_AddStringToObject(node, "name", w->cfg->node_name) &&
                  cJSON_AddStringToObject(node, "address", w->cfg->node_address) &&
                  cJSON_AddNumberToObject(node, "http_port", w->cfg->http_port) &&
                  cJSON_AddNumberToObject(node, "data_port", w->cfg->data_port) &&
                  cJSON_AddNumberToObject(node, "metrics_port", w->cfg->metrics_port) &&
                  (labels = cJSON_AddObjectToObject(node, "labels")) && (res = cJSON_AddObjectToObject(node, "resources")) &&
                  cJSON_AddNumberToObject(res, "num_cpus", w->res.num_cpus) &&
                  cJSON_AddNumberToObject(res, "memory", (double)w->res.memory) &&
                  (gpus = cJSON_AddArrayToObject(res, "gpus")) && (custom = cJSON_AddObjectToObject(res, "custom")) &&
                  (reps = cJSON_AddArrayToObject(m, "replicas")) && supervisor_report(w->sup, reps, NULL, w->wall_offset_s) == 0;
        for (size_t i = 0; ok && i < w->cfg->n_labels; i++)
                ok = cJSON_AddStringToObject(labels, w->cfg->labels[i].key, w->cfg->labels[i].value) != NULL;
        for (unsigned i = 0; ok && i < w->res.n_gpus; i++) {
                cJSON *g = cJSON_CreateObject();
                ok = g && cJSON_AddItemToArray(gpus, g) && cJSON_AddNumberToObject(g, "index", w->res.gpus[i].index) &&
                     cJSON_AddNumberToObject(g, "memory", (double)w->res.gpus[i].memory) &&
                     cJSON_AddStringToObject(g, "name", w->res.gpus[i].name);
        }
        for (size_t i = 0; ok && i < w->cfg->resources.n_custom; i++)
                ok = cJSON_AddNumberToObject(custom, w->cfg->resources.custom[i].name, w->cfg->resources.custom[i].amount) != NULL;
        if (!ok) {
                cJSON_Delete(m);
                return NULL;
        }
        return m;
}

/* Requests from peers obey this node's HTTP limits. */
static struct peers_options peer_options_from(const struct proxy_options *o) {
        return (struct peers_options){
                .limits = { .max_request_line = 8192, .max_head = 65536, .max_headers = HTTP_MAX_HEADERS },
                .max_body = o->max_body,
                .request_timeout_s = o->request_timeout_s,
                .link_timeout_s = MAX(MAX(o->keep_alive_timeout_s, o->header_timeout_s), 1.0),
        };
}

static void apply_http_options(struct worker *w, const cJSON *http) {
        struct proxy_options o = { .listen_fd = -1 };
        struct http_options d;
        double v;

        http_options_defaults(&d);
        o.max_body = d.max_request_body_bytes;
        o.header_timeout_s = d.header_timeout_s;
        o.keep_alive_timeout_s = d.keep_alive_timeout_s;
        o.request_timeout_s = d.request_timeout_s;
        o.max_connections = d.max_connections;
        o.max_buffered_body = d.max_buffered_request_bytes;
        free(d.host);
        if (http) {
                char err[128];
                v = -1;
                if (ctl_get_double(http, "request_timeout_s", 0, 1e9, false, &v, err, sizeof err) == 0 && v >= 0)
                        o.request_timeout_s = v;
                v = -1;
                if (ctl_get_double(http, "keep_alive_timeout_s", 0, 1e9, false, &v, err, sizeof err) == 0 && v >= 0)
                        o.keep_alive_timeout_s = v;
                v = -1;
                if (ctl_get_double(http, "header_timeout_s", 0, 1e9, false, &v, err, sizeof err) == 0 && v > 0)
                        o.header_timeout_s = v;
                v = -1;
                if (ctl_get_double(http, "max_request_body_bytes", 1, 1e15, false, &v, err, sizeof err) == 0 && v > 0)
                        o.max_body = (uint64_t)v;
                v = -1;
                if (ctl_get_double(http, "max_connections", 1, 1e7, false, &v, err, sizeof err) == 0 && v > 0)
                        o.max_connections = (int)v;
                v = -1;
                if (ctl_get_double(http, "max_buffered_request_bytes", 1, 1e15, false, &v, err, sizeof err) == 0 && v > 0)
                        o.max_buffered_body = (uint64_t)v;
        }
        proxy_update_options(w->proxy, &o);
        if (w->peers) {
                struct peers_options po = peer_options_from(&o);
                peers_set_options(w->peers, &po);
        }
}

static void attach_one(struct deployment *d, void *userdata) { peers_attach(userdata, d); }

/* `config`: the deployments, routes and HTTP options of the cluster. Kept until the `assign`
 * for its epoch says how many replicas of each run here. Returns 0 or -EINVAL with err. */
static void head_ask_resync(struct worker *w);

static int on_config(struct worker *w, const cJSON *m, char *err, size_t errlen) {
        /* Whole, or what changed since the epoch we hold; every field checked before use. */
        int r = config_msg_apply(&w->config, m, err, errlen);
        if (r == -ESTALE) {
                log_info("config update does not follow epoch %lld: asking serve-head for the whole config", w->config_epoch);
                head_ask_resync(w);
                return 0;
        }
        if (r < 0)
                return r;
        if (!cJSON_GetObjectItem(m, "base"))
                w->resync_asked = false;
        w->config_epoch = (long long)cJSON_GetNumberValue(cJSON_GetObjectItem(w->config, "epoch"));
        return 0;
}

/* `assign`: this node's replicas for the config of its epoch. Returns 0 or -EINVAL with err. */
static int on_assign(struct worker *w, const cJSON *m, char *err, size_t errlen) {
        const cJSON *reps, *it;
        struct serve_spec *spec = NULL;
        long long epoch;
        bool proxy = true;
        int r;

        if ((r = ctl_get_int(m, "config_epoch", 0, 1ll << 53, true, &epoch, err, errlen)) < 0 ||
            (r = ctl_get_bool(m, "proxy", false, &proxy, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "replicas", MAX_ASSIGN_ITEMS, false, &reps, err, errlen)) < 0)
                return r;
        if (!w->config || epoch != w->config_epoch) {
                snprintf(err, errlen, "assignment for config %lld, but we have config %lld", epoch, w->config_epoch);
                return -EINVAL;
        }
        const cJSON *routes = cJSON_GetObjectItem(w->config, "routes"), *deps = cJSON_GetObjectItem(w->config, "deployments");
        spec = calloc(1, sizeof *spec);
        if (!spec || !(spec->apps = calloc((size_t)cJSON_GetArraySize(routes) + 1, sizeof *spec->apps)) ||
            !(spec->deps = calloc((size_t)cJSON_GetArraySize(deps) + 1, sizeof *spec->deps))) {
                r = -ENOMEM;
                goto out;
        }
        cJSON_ArrayForEach(it, routes) {
                struct app_spec *a = &spec->apps[spec->n_apps++];
                if (!(a->name = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(it, "app")))) ||
                    !(a->route_prefix = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(it, "prefix")))) ||
                    !(a->ingress = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(it, "ingress"))))) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        cJSON_ArrayForEach(it, deps) {
                struct dep_spec *d = &spec->deps[spec->n_deps];
                if ((r = dep_spec_from_json(it, d, err, errlen)) < 0)
                        goto out;
                spec->n_deps++;
                d->replicas = 0;
        }
        cJSON_ArrayForEach(it, reps) {
                const char *app, *name;
                long long count;
                const cJSON *gpus, *g;
                struct dep_spec *d;
                if ((r = ctl_get_string(it, "app", 200, true, &app, err, errlen)) < 0 ||
                    (r = ctl_get_string(it, "name", 200, true, &name, err, errlen)) < 0 ||
                    (r = ctl_get_int(it, "count", 0, 1 << 20, true, &count, err, errlen)) < 0 ||
                    (r = ctl_get_array(it, "gpus", 1 << 20, false, &gpus, err, errlen)) < 0)
                        goto out;
                d = spec_find(spec, app, name);
                if (!d) {
                        snprintf(err, errlen, "replicas for unknown deployment %s/%s", app, name);
                        r = -EINVAL;
                        goto out;
                }
                d->replicas = (int)count;
                if (cJSON_GetArraySize(gpus) > 0) {
                        for (size_t k = 0; k < d->n_gpus; k++)
                                free(d->gpus[k]);
                        free(d->gpus);
                        d->n_gpus = 0;
                        d->gpus = calloc((size_t)cJSON_GetArraySize(gpus) + 1, sizeof(char *));
                        if (!d->gpus) {
                                r = -ENOMEM;
                                goto out;
                        }
                        cJSON_ArrayForEach(g, gpus) {
                                if (!cJSON_IsString(g) || strlen(g->valuestring) > 64 ||
                                    strspn(g->valuestring, "0123456789,") != strlen(g->valuestring)) {
                                        snprintf(err, errlen, "field gpus: items must be GPU index lists like \"0,1\"");
                                        r = -EINVAL;
                                        goto out;
                                }
                                if (!(d->gpus[d->n_gpus++] = strdup(g->valuestring))) {
                                        r = -ENOMEM;
                                        goto out;
                                }
                        }
                }
        }

        r = supervisor_apply_spec(w->sup, spec);
        if (r < 0)
                goto out;
        supervisor_for_each(w->sup, attach_one, w->peers);
        apply_http_options(w, cJSON_GetObjectItem(w->config, "http"));
        int local = 0;
        for (size_t i = 0; i < spec->n_deps; i++)
                local += spec->deps[i].replicas;
        log_info("assignment for config %lld: %d local replica(s) of %zu deployment(s), %zu route(s)", epoch, local,
                 spec->n_deps, spec->n_apps);
        w->have_assign = true;
        if (!proxy && !w->proxy_stopped) {
                log_notice("proxy_location leaves this node without an HTTP proxy: closing port %d", w->cfg->http_port);
                proxy_stop_accepting(w->proxy);
                w->proxy_stopped = true;
        } else if (proxy && w->proxy_stopped)
                log_warning("proxy_location now wants a proxy on this node: restart serve-worker to open port %d",
                            w->cfg->http_port);
        proxy_set_ready(w->proxy, true);
        sd_notifyf(0, "READY=1\nSTATUS=serving %zu route(s), %d local replica(s); head connected", spec->n_apps, local);
        r = 0;
out:
        serve_spec_free(spec);
        return r;
}

/* Asks the head for whole messages again, once until one arrives. */
static void head_ask_resync(struct worker *w) {
        if (w->resync_asked)
                return;
        w->resync_asked = true;
        head_send(w, ctlmsg_new("resync"));
}

/* `routing`: where every deployment has ready replicas, whole or as the changes since the version
 * we hold (routing_table.h). A change we cannot place (we missed one) asks for the whole table.
 * Returns 0 or -EINVAL with err. */
static int on_routing(struct worker *w, const cJSON *m, char *err, size_t errlen) {
        int r = routing_table_apply(&w->routing, m, err, errlen);
        if (r == -ESTALE) {
                log_info("routing update does not follow version %" PRIu64 ": asking serve-head for the whole table",
                         w->routing.version);
                head_ask_resync(w);
                return 0;
        }
        if (r < 0)
                return r;
        if (cJSON_IsTrue(cJSON_GetObjectItem(m, "full")))
                w->resync_asked = false;

        /* The peers learn the whole table again: one pass over it, no new connection for a peer
         * that stays. */
        const struct routing_table *t = &w->routing;
        struct peer **peers = calloc(t->n_nodes + 1, sizeof *peers);
        if (!peers)
                return -ENOMEM;
        peers_update_begin(w->peers);
        for (size_t i = 0; i < t->n_nodes; i++)
                if (!streq(t->nodes[i].name, w->cfg->node_name))
                        peers[i] = peers_update_node(w->peers, t->nodes[i].name, t->nodes[i].address, t->nodes[i].data_port,
                                                     t->nodes[i].min_serial);
        for (size_t i = 0, k = 0, j = 0; i < t->n_deps; i++) {
                const struct routing_dep *d = &t->deps[i];
                struct remote_group *g = peers_group(w->peers, d->app, d->name);
                if (g)
                        g->placed = d->placed;
                /* Ready counts are sorted by (deployment, node), nodes and deployments by id. */
                for (; k < t->n_ready && t->ready[k].dep < d->id; k++)
                        ;
                for (; k < t->n_ready && t->ready[k].dep == d->id; k++) {
                        while (j < t->n_nodes && t->nodes[j].id < t->ready[k].node)
                                j++;
                        if (j < t->n_nodes && peers[j])
                                (void)peers_update_target(w->peers, peers[j], g, (int)t->ready[k].count, d->max_ongoing);
                }
                j = 0;
        }
        peers_update_end(w->peers);
        free(peers);
        supervisor_for_each(w->sup, attach_one, w->peers);
        return 0;
}

static void head_schedule_reconnect(struct worker *w) {
        w->head_backoff_ns = w->head_backoff_ns ? MIN(HEAD_BACKOFF_MAX_NS, w->head_backoff_ns * 2) : HEAD_BACKOFF_MIN_NS;
        w->head_next_ns = now_ns() + w->head_backoff_ns;
}

static void head_drop(struct worker *w, const char *why) {
        if (w->head) {
                w->head->userdata = NULL;
                netconn_close(w->head, false);
                w->head = NULL;
        }
        if (w->head_up)
                log_warning("lost serve-head (%s): serving with the routes and replicas we have", why);
        w->head_up = w->welcomed = false;
        head_schedule_reconnect(w);
        if (w->have_assign)
                sd_notify(0, "STATUS=serving; serve-head unreachable, reconnecting");
}

static void head_on_connect(struct netconn *nc) {
        struct worker *w = nc->userdata;
        /* Nothing is read from it, let alone applied, before it proved it is the head. */
        if (enroll_check_head(w->enroll, nc) < 0) {
                head_drop(w, "not the cluster's head");
                return;
        }
        (void)netconn_set_idle_timeout(nc, 0);
        w->head_up = true;
        w->head_backoff_ns = 0;
        /* A new link starts with whole messages: until then, no delta applies. */
        w->routing.valid = false;
        w->resync_asked = false;
        log_info("connected to serve-head at %s, registering as %s", w->cfg->head_address, w->cfg->node_name);
        head_send(w, hello_message(w));
}

static void head_on_data(struct netconn *nc) {
        struct worker *w = nc->userdata;

        while (w && w->head == nc) {
                cJSON *m = NULL;
                const char *type = NULL, *why = NULL;
                char err[256] = "";
                int r = ctlmsg_decode(&nc->in, &m, &type, &why);

                if (r == 0)
                        return;
                if (r < 0) {
                        log_error("serve-head sent an invalid message (%s): reconnecting", why);
                        head_drop(w, "protocol error");
                        return;
                }
                if (streq(type, "welcome")) {
                        double hb = 1;
                        if (ctl_get_double(m, "heartbeat_interval_s", 0.01, 3600, false, &hb, err, sizeof err) == 0)
                                w->hb_interval_s = hb;
                        w->welcomed = true;
                        log_info("registered with serve-head as node %s", w->cfg->node_name);
                } else if (streq(type, "refused")) {
                        const char *reason = cJSON_GetStringValue(cJSON_GetObjectItem(m, "reason"));
                        if (cJSON_IsTrue(cJSON_GetObjectItem(m, "revoked")))
                                /* Not undone here: a token left on the node would bring it back. */
                                log_error("serve-head at %s refused this node: %s; to join again, remove %s/node.crt "
                                          "and give it a new join token",
                                          w->cfg->head_address, reason ? reason : "certificate revoked", w->cfg->state_dir);
                        else
                                log_error("serve-head at %s refused this node: %s (check join_token_file %s)",
                                          w->cfg->head_address, reason ? reason : "no reason given", w->cfg->join_token_file);
                        w->fatal = w->stop = true;
                        cJSON_Delete(m);
                        head_drop(w, "refused");
                        return;
                } else if (streq(type, "certificate")) {
                        (void)enroll_on_certificate(w->enroll, m);
                } else if (streq(type, "config") || streq(type, "assign") || streq(type, "routing")) {
                        r = streq(type, "config") ? on_config(w, m, err, sizeof err)
                            : streq(type, "assign") ? on_assign(w, m, err, sizeof err)
                                                    : on_routing(w, m, err, sizeof err);
                        if (r < 0)
                                log_error("serve-head sent a %s message we cannot use (%s): keeping what we have", type,
                                          r == -ENOMEM ? "out of memory" : err);
                } else
                        log_debug("ignoring control message '%s' from serve-head", type);
                cJSON_Delete(m);
        }
}

static void head_on_close(struct netconn *nc, int err) {
        struct worker *w = nc->userdata;
        if (!w)
                return;
        enroll_note_head_closed(w->enroll, nc);
        w->head = NULL;
        head_drop(w, err ? strerror(-err) : "connection closed");
}

static const struct netconn_ops head_ops = {
        .on_connect = head_on_connect,
        .on_data = head_on_data,
        .on_close = head_on_close,
};

static void head_connect(struct worker *w) {
        /* The connect and handshake must finish in time; then the heartbeats count. */
        int r = netconn_connect_tls(&w->loop, w->cfg->head_host, w->cfg->head_port, &head_ops, w,
                                    enroll_client_ctx(w->enroll), HEAD_HANDSHAKE_TIMEOUT_NS, &w->head);
        if (r < 0) {
                w->head = NULL;
                log_debug("cannot connect to serve-head at %s: %s", w->cfg->head_address, strerror(-r));
                head_schedule_reconnect(w);
        }
}

/* ---- metrics ---- */

static void on_metrics(void *userdata, const struct httpd_request *rq, struct httpd_response *resp) {
        struct worker *w = userdata;

        if (!httpd_is(rq, "GET", "/metrics")) {
                httpd_respond_error(resp, 404, "only GET /metrics is served here");
                return;
        }
        cJSON *rep = report_add_load(w, report_build(w->sup, router_get(), w->peers, w->wall_offset_s));
        const char *names[] = { w->cfg->node_name };
        const cJSON *reps[] = { rep };
        resp->content_type = "text/plain; version=0.0.4";
        if (!rep || report_render_metrics(&resp->body, names, reps, 1) < 0)
                httpd_respond_error(resp, 500, "cannot render metrics");
        else {
                struct peer_stats ps;
                peers_stats(w->peers, &ps);
                enroll_render_metrics(w->enroll, &resp->body);
                metrics_family(&resp->body, "serve_peer_links_refused_total", METRICS_COUNTER,
                               "Data links refused: no, foreign, revoked or unlisted certificate");
                metrics_sample(&resp->body, "serve_peer_links_refused_total", NULL, (double)ps.links_refused);
        }
        cJSON_Delete(rep);
}

/* ---- main ---- */

static void on_signal(struct loop_op *op, int res, unsigned flags) {
        struct worker *w = container_of(op, struct worker, op_signal);

        if (res == (int)sizeof w->si) {
                switch (w->si.ssi_signo) {
                case SIGHUP:
                        log_info("SIGHUP: serve-worker takes its applications from serve-head; reload the head instead");
                        break;
                case SIGINT:
                case SIGTERM:
                        if (w->stop)
                                w->force = true;
                        w->stop = true;
                        break;
                }
        }
        struct io_uring_sqe *sqe = loop_sqe(&w->loop, &w->op_signal);
        io_uring_prep_read(sqe, w->sfd, &w->si, sizeof w->si, 0);
}

static int setup(struct worker *w) {
        char *err = NULL;
        int r;

        r = worker_config_load_file(w->cfg_path, &w->cfg, &err);
        if (r < 0) {
                log_error("%s", err ? err : strerror(-r));
                free(err);
                return r;
        }
        log_set_node(w->cfg->node_name);
        if (streq(w->cfg->node_address, "auto")) {
                char *a = NULL;
                r = net_local_address_towards(w->cfg->head_host, w->cfg->head_port, &a);
                if (r < 0)
                        return log_error_errno(r, "%s: node_address: auto: no route to the head %s: %m", w->cfg_path,
                                               w->cfg->head_address);
                log_info("node_address auto: %s (the local address of the route to %s)", a, w->cfg->head_address);
                free(w->cfg->node_address);
                w->cfg->node_address = a;
        }
        char **paths[] = { &w->cfg->join_token_file, &w->cfg->state_dir, &w->cfg->ca_file };
        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                if (!*paths[i])
                        continue;
                char *p = path_relative_to_file(w->cfg_path, *paths[i]);
                if (!p)
                        return -ENOMEM;
                free(*paths[i]);
                *paths[i] = p;
        }
        r = enroll_init(w->cfg, &w->enroll);
        if (r < 0)
                return r;
        r = resources_discover(&w->res);
        if (r < 0)
                log_warning_errno(r, "resource discovery failed, using worker.yaml's values only: %m");
        resources_apply_overrides(&w->res, w->cfg);
        log_info("node %s: %.1f CPUs, %.1f GiB memory, %u GPU(s)", w->cfg->node_name, w->res.num_cpus,
                 (double)w->res.memory / (1 << 30), w->res.n_gpus);

        r = loop_init(&w->loop, 1024);
        if (r < 0)
                return log_error_errno(r, "Cannot set up io_uring: %m");
        w->loop_ready = true;
        w->op_signal.cb = on_signal;
        on_signal(&w->op_signal, 0, 0);
        /* A node without a certificate joins from the loop: its proxy answers 503 meanwhile. */
        r = enroll_start(w->enroll, &w->loop);
        if (r < 0)
                return r;
        w->joining = r == 0;
        w->replica_bin = spec_find_replica_bin();
        r = supervisor_new(&w->loop, router_get(), w->replica_bin, &w->sup);
        if (r >= 0)
                r = supervisor_set_node(w->sup, w->cfg->node_name);
        if (r >= 0 && cgroups_init(&w->cgroups) == 0)
                supervisor_set_cgroups(w->sup, &w->cgroups);
        if (r >= 0 && (r = loadmon_new(&w->loadmon)) >= 0)
                supervisor_set_loadmon(w->sup, w->loadmon);
        if (r < 0)
                return log_error_errno(r, "Cannot create the replica supervisor: %m");

        struct proxy_options po = { .host = w->cfg->http_host, .port = w->cfg->http_port, .listen_fd = -1 };
        int n = sd_listen_fds(1);
        if (n >= 1) {
                po.listen_fd = SD_LISTEN_FDS_START;
                log_info("using the HTTP socket passed by systemd");
        }
        r = proxy_new(&w->loop, router_get(), &po, &w->proxy);
        if (r < 0)
                return r;
        proxy_set_ready(w->proxy, false);

        struct http_options d;
        http_options_defaults(&d);
        free(d.host);
        struct proxy_options dpo = { .max_body = d.max_request_body_bytes, .keep_alive_timeout_s = d.keep_alive_timeout_s,
                                     .header_timeout_s = d.header_timeout_s };
        struct peers_options pro = peer_options_from(&dpo);
        r = peers_new(&w->loop, router_get(), w->cfg->node_address, w->cfg->data_port, &pro, &w->peers);
        if (r < 0)
                return r;
        /* Until it has a certificate (joining), the data port takes no link at all. */
        if (enroll_is_tls(w->enroll))
                peers_set_tls(w->peers, enroll_client_ctx(w->enroll), enroll_server_ctx(w->enroll), PKI_UNIT_NODE);
        apply_http_options(w, NULL);
        if (w->cfg->metrics_port > 0) {
                r = httpd_open(&w->metrics, &w->loop, w->cfg->node_address, w->cfg->metrics_port, 0, on_metrics, w);
                if (r < 0)
                        return log_error_errno(r, "Cannot listen on %s:%d (metrics_port): %m", w->cfg->node_address,
                                               w->cfg->metrics_port);
                w->metrics_open = true;
        }
        return 0;
}

/* Frees what setup() made, however far it got; after a stop, once the loop ran dry. */
static void worker_done(struct worker *w) {
        if (w->metrics_open)
                httpd_close(&w->metrics);
        peers_stop(w->peers);
        if (w->loop_ready)
                loop_drain(&w->loop, 500 * NSEC_PER_MSEC);
        peers_free(w->peers);
        proxy_free(w->proxy);
        supervisor_free(w->sup);
        loadmon_free(w->loadmon);
        router_set_routes(router_get(), NULL, 0);
        if (w->loop_ready)
                loop_free(&w->loop);
        cgroups_done(&w->cgroups);
        enroll_free(w->enroll);
        worker_config_free(w->cfg);
        cJSON_Delete(w->config);
        routing_table_done(&w->routing);
        free(w->replica_bin);
        if (w->sfd >= 0)
                close(w->sfd);
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        struct worker w = { .cfg_path = "/etc/serve/worker.yaml", .sfd = -1, .hb_interval_s = 1 };
        struct timespec rt, mt;
        int c, r;

        log_init("serve-worker");
        while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        w.cfg_path = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("serve-worker %s\n", PACKAGE_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "serve-worker: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }
        clock_gettime(CLOCK_REALTIME, &rt);
        clock_gettime(CLOCK_MONOTONIC, &mt);
        w.wall_offset_s = (double)rt.tv_sec + rt.tv_nsec / 1e9 - ((double)mt.tv_sec + mt.tv_nsec / 1e9);

        daemon_set_limits();
        w.sfd = signalfd_daemon();

        r = setup(&w);
        if (r < 0) {
                sd_notifyf(0, "STATUS=failed to start: %s", strerror(-r));
                worker_done(&w);
                return 1;
        }
        sd_notify(0, w.joining ? "STATUS=joining the cluster" : "STATUS=waiting for serve-head");
        if (!w.joining)
                head_connect(&w);
        watchdog_init(&w.watchdog);

        for (;;) {
                uint64_t now = now_ns(), timeout;

                timeout = MIN(supervisor_tick(w.sup, now), proxy_tick(w.proxy, now));
                timeout = MIN(timeout, peers_tick(w.peers, now));
                timeout = MIN(timeout, router_tick(router_get(), now));
                uint64_t nc_next = netconn_tick(&w.loop, now);
                if (nc_next != UINT64_MAX)
                        timeout = MIN(timeout, nc_next > now ? nc_next - now : 0);
                timeout = MIN(timeout, watchdog_tick(&w.watchdog, now));
                if (w.joining && !w.stop) {
                        uint64_t wait_ns = 0;
                        r = enroll_join_step(w.enroll, now, &wait_ns);
                        if (r < 0) {
                                w.fatal = w.stop = true;
                        } else if (r > 0) {
                                w.joining = false;
                                peers_set_tls(w.peers, enroll_client_ctx(w.enroll), enroll_server_ctx(w.enroll),
                                              PKI_UNIT_NODE);
                        } else
                                timeout = MIN(timeout, wait_ns);
                }
                if (!w.head && !w.stop && !w.joining) {
                        if (now >= w.head_next_ns)
                                head_connect(&w);
                        else
                                timeout = MIN(timeout, w.head_next_ns - now);
                }
                /* A request waiting for a first replica anywhere: the head hears of it now. */
                bool urgent = now >= w.next_urgent_ns && supervisor_waiting_at_zero(w.sup);
                if (w.head_up && w.welcomed && (now >= w.next_report_ns || urgent)) {
                        /* Once a heartbeat: is the certificate due for renewal? */
                        if (now >= w.next_report_ns)
                                head_send(&w, enroll_renew_message(w.enroll));
                        cJSON *rep = report_build(w.sup, router_get(), w.peers, w.wall_offset_s);
                        head_send(&w, report_add_events(&w, report_add_autoscale(&w, report_add_load(&w, rep), now)));
                        w.next_report_ns = now + sec_to_ns(w.hb_interval_s);
                        w.next_urgent_ns = now + URGENT_REPORT_MIN_NS;
                }
                if (peers_take_kick(w.peers))
                        supervisor_for_each(w.sup, attach_one, w.peers);
                if (timeout == 0)
                        timeout = 1;
                if (!supervisor_prepare_sleep(w.sup))
                        timeout = 0;
                r = loop_run_once(&w.loop, timeout);
                supervisor_awake(w.sup);
                if (r < 0) {
                        log_error_errno(r, "event loop failed: %m");
                        break;
                }
                if (w.stop && !w.drain.deadline) {
                        sd_notify(0, "STOPPING=1\nSTATUS=draining");
                        if (w.head_up)
                                head_send(&w, ctlmsg_new("goodbye"));
                        proxy_stop_accepting(w.proxy);
                        supervisor_drain_begin(w.sup, &w.drain, now);
                }
                if (supervisor_drain_step(w.sup, &w.drain, now, w.force, proxy_connections(w.proxy)))
                        break;
        }
        if (w.head) {
                /* Let the goodbye go out. */
                w.head->userdata = NULL;
                netconn_close(w.head, true);
        }
        log_info("stopped");
        worker_done(&w);
        return w.fatal ? 1 : 0;
}
