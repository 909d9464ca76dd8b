/* fake_workers: drives serve-head with many simulated workers over the control protocol, to
 * measure how long the head takes to place replicas and to roll out a reload, and its RSS.
 *
 *   fake_workers --head HOST:PORT --token-file F --expect N [--workers 1000] [--cpus 16]
 *                [--address-base 127.1.0.0] [--reload-cmd CMD] [--reload-changes-config] [--reload-one-cmd CMD]
 *                [--deploy-cmd CMD] [--deploy-via SIGHUP] [--settle-ms 1500] [--timeout S] [--head-pid PID]
 *
 * Each simulated worker opens one control connection, sends `hello` (node fake-NNNN, address
 * base+1+i), then a `report` every heartbeat interval listing, as RUNNING, the replicas its
 * latest `assign` asked for (with the deployment's version from the latest `config`; fake pids;
 * ids "app/Dep#N" unique across the run), as serve-worker's report_build() would. It never
 * starts anything. The head sends `config` (the same bytes to every node) when the config epoch
 * changes, then `assign` (this node's replica counts, for that epoch) whenever its text changes,
 * and `routing` (routing_table.h: the whole table to a node that has none, then versioned deltas
 * of what changed, the same bytes to all); each worker checks that a delta follows the version
 * it holds. Connections open in waves of CONNECT_WAVE not yet welcomed.
 *
 * Phases, each printed as one line of numbers:
 *   join storm first hello -> every worker holds an assign and the counts sum to --expect, while
 *              the workers are still connecting (placement and joining together)
 *   ready      first hello -> the head's `routing` lists --expect ready replicas (it has seen
 *              the reports)
 *   settled    then until neither an assign nor a routing message arrived for --settle-ms
 *   change     worker 0 reports one replica not ready, then ready again: the routing messages
 *              and bytes the head sent to all workers for each change
 *   reload     --reload-cmd runs (in the background) -> every worker got a `config` with a
 *              higher epoch and an `assign` for that epoch, the counts sum to --expect and, with
 *              --reload-changes-config, every deployment's user_config differs from before
 *   reload one then --reload-one-cmd (one deployment changed) the same way: what a config delta
 *              costs each worker
 *   deploy     with --deploy-cmd: "CMD zero" (every deployment to 0 replicas) -> every worker
 *              holds an assign for the new epoch with no replica, routing lists none and is quiet
 *              for --settle-ms; then "CMD full" (back to the counts that sum to --expect) -> every
 *              worker holds an assign for that epoch and the counts sum to --expect: placement
 *              onto workers that have all joined (--deploy-via names what CMD does, for the
 *              output); then until routing lists them all ready, and until it is quiet
 *   head       VmRSS and VmHWM of --head-pid, and its CPU time per phase
 * Exits 0 when every phase completed, 1 on a timeout, a refused hello, a closed connection or a
 * malformed frame (each said on stderr).
 *
 * Single-threaded: non-blocking sockets under one poll(), an output buffer per connection, so a
 * head that is slow to read one connection never stalls the others. The head sends `config` and
 * `routing` as identical bytes to every node, so each distinct text is parsed once. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "macros.h"
#include "metrics.h"
#include "routing_table.h"
#include "util.h"

#define FRAME_MAX (16u << 20)
#define OUT_LIMIT (64u << 20)
#define IN_LIMIT (FRAME_MAX + 4u)
#define CONNECT_WAVE 256

/* One deployment of a `config` message. */
struct cfg_dep {
        char *app, *name, *version, *user_config; /* user_config NULL when null */
};

/* A parsed `config`: every worker that received these bytes shares it. */
struct config {
        long long epoch;
        char *text; /* the frame's JSON, to recognise the same bytes again */
        size_t len;
        struct cfg_dep *deps;
        size_t n_deps;
        unsigned refs;
};

struct fake_replica {
        uint64_t n; /* the N in "app/Dep#N" */
        int pid;
        double started_at;
};

/* This worker's replicas of one deployment, all of one version. */
struct fake_deployment {
        char *app, *name, *version;
        struct fake_replica *replicas;
        size_t n_replicas;
};

struct fake_worker {
        unsigned idx;
        int fd;
        char name[32], address[INET_ADDRSTRLEN];
        struct buf in, out;
        bool connected, welcomed;
        uint64_t next_report_ns;

        struct config *config; /* the latest `config` received */
        bool has_assign;
        long long assign_epoch; /* config_epoch of the latest assign */
        unsigned assigned;      /* replicas the latest assign asked for */
        struct fake_deployment *deps;
        size_t n_deps;
        bool reloaded;
        bool started;            /* its connection was opened */
        bool has_routing;
        uint64_t routing_version; /* of the last routing message it got */
};

static struct {
        const char *head, *token_file, *reload_cmd, *reload_one_cmd, *deploy_cmd, *deploy_via;
        char *token;
        unsigned workers;
        double cpus;
        struct in_addr address_base;
        unsigned long long expect;
        bool reload_changes_config;
        unsigned settle_ms;
        double timeout_s;
        pid_t head_pid;
        double heartbeat_s;
} arg = {
        .workers = 1000,
        .cpus = 16,
        .settle_ms = 1500,
        .timeout_s = 300,
        .heartbeat_s = 1,
        .deploy_via = "SIGHUP",
};

static struct fake_worker *workers;
static unsigned long long assigned_total; /* sum of fake_worker.assigned */
static unsigned assigned_workers;         /* workers with an assign */
static unsigned reloaded_workers;
static bool reload_running;
static struct config *latest_config, *config_before_reload;
static struct routing_table routing;     /* the newest version any worker got */
static unsigned long long routing_ready;  /* ready replicas in it */
static bool unready_one;                  /* worker 0 reports its first replica STARTING */
static uint64_t replica_counter, last_assign_ns, last_routing_ns;

/* Messages and bytes received per type, for the summary. */
enum { T_WELCOME, T_CONFIG, T_ASSIGN, T_ROUTING, T_OTHER, T_MAX };
static const char *const type_names[T_MAX] = { "welcome", "config", "assign", "routing", "other" };
static uint64_t rx_msgs[T_MAX], rx_bytes[T_MAX], tx_reports, tx_bytes;

_noreturn_ _printf_(1, 2) static void die(const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "fake_workers: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n");
        exit(1);
}

static double wall_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double ms_since(uint64_t t0) { return (double)(now_ns() - t0) / 1e6; }

static char *xstrdup(const char *s) {
        char *p = s ? strdup(s) : NULL;
        if (s && !p)
                die("out of memory");
        return p;
}

static void deps_free(struct fake_deployment *d, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(d[i].app);
                free(d[i].name);
                free(d[i].version);
                free(d[i].replicas);
        }
        free(d);
}

static void config_unref(struct config *c) {
        if (!c || --c->refs > 0)
                return;
        for (size_t i = 0; i < c->n_deps; i++) {
                free(c->deps[i].app);
                free(c->deps[i].name);
                free(c->deps[i].version);
                free(c->deps[i].user_config);
        }
        free(c->deps);
        free(c->text);
        free(c);
}

static struct config *config_ref(struct config *c) {
        if (c)
                c->refs++;
        return c;
}

static void send_msg(struct fake_worker *w, cJSON *msg) {
        char *text = cJSON_PrintUnformatted(msg);
        if (!text)
                die("out of memory");
        size_t n = strlen(text);
        if (n > FRAME_MAX)
                die("%s: message of %zu bytes exceeds the frame limit", w->name, n);
        uint32_t be = htonl((uint32_t)n);
        if (buf_append(&w->out, &be, 4, OUT_LIMIT) < 0 || buf_append(&w->out, text, n, OUT_LIMIT) < 0)
                die("%s: more than %u bytes queued for the head; it stopped reading", w->name, OUT_LIMIT);
        tx_bytes += 4 + n;
        free(text);
}

static cJSON *msg_new(const char *type) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddNumberToObject(m, "v", 1) || !cJSON_AddStringToObject(m, "type", type))
                die("out of memory");
        return m;
}

static cJSON *replicas_json(const struct fake_worker *w) {
        cJSON *a = cJSON_CreateArray();
        char id[512];

        for (size_t i = 0; i < w->n_deps; i++) {
                const struct fake_deployment *d = &w->deps[i];
                for (size_t j = 0; j < d->n_replicas; j++) {
                        cJSON *r = cJSON_CreateObject();
                        snprintf(id, sizeof(id), "%s/%s#%" PRIu64, d->app, d->name, d->replicas[j].n);
                        cJSON_AddStringToObject(r, "id", id);
                        cJSON_AddStringToObject(r, "app", d->app);
                        cJSON_AddStringToObject(r, "deployment", d->name);
                        cJSON_AddStringToObject(r, "version", d->version);
                        cJSON_AddStringToObject(r, "state", unready_one && w->idx == 0 && i == 0 && j == 0 ? "STARTING" : "RUNNING");
                        cJSON_AddNumberToObject(r, "pid", d->replicas[j].pid);
                        cJSON_AddNumberToObject(r, "ongoing", 0);
                        cJSON_AddNumberToObject(r, "started_at", d->replicas[j].started_at);
                        cJSON_AddItemToArray(a, r);
                }
        }
        return a;
}

static void send_hello(struct fake_worker *w) {
        cJSON *m = msg_new("hello");
        cJSON *node = cJSON_AddObjectToObject(m, "node");
        cJSON *res;

        cJSON_AddStringToObject(m, "token", arg.token);
        cJSON_AddStringToObject(node, "name", w->name);
        cJSON_AddStringToObject(node, "address", w->address);
        cJSON_AddNumberToObject(node, "http_port", 8000);
        cJSON_AddNumberToObject(node, "data_port", 8267);
        cJSON_AddNumberToObject(node, "metrics_port", 8268);
        cJSON_AddObjectToObject(node, "labels");
        res = cJSON_AddObjectToObject(node, "resources");
        cJSON_AddNumberToObject(res, "num_cpus", arg.cpus);
        cJSON_AddNumberToObject(res, "memory", 64.0 * 1024 * 1024 * 1024);
        cJSON_AddArrayToObject(res, "gpus");
        cJSON_AddObjectToObject(res, "custom");
        cJSON_AddItemToObject(m, "replicas", cJSON_CreateArray());
        send_msg(w, m);
        cJSON_Delete(m);
}

/* As report_build(): replicas, per-deployment load, per-deployment stats, peer counters. */
static void send_report(struct fake_worker *w) {
        static const struct latency_hist empty;
        cJSON *m = msg_new("report");
        cJSON *deps, *stats, *peers;

        cJSON_AddItemToObject(m, "replicas", replicas_json(w));
        deps = cJSON_AddArrayToObject(m, "deployments");
        stats = cJSON_AddArrayToObject(m, "stats");
        for (size_t i = 0; i < w->n_deps; i++) {
                cJSON *d = cJSON_CreateObject(), *s = cJSON_CreateObject();
                cJSON_AddStringToObject(d, "app", w->deps[i].app);
                cJSON_AddStringToObject(d, "deployment", w->deps[i].name);
                cJSON_AddStringToObject(d, "version", w->deps[i].version);
                cJSON_AddNumberToObject(d, "queued", 0);
                cJSON_AddNumberToObject(d, "ready", (double)w->deps[i].n_replicas);
                cJSON_AddBoolToObject(d, "retiring", false);
                cJSON_AddItemToArray(deps, d);
                cJSON_AddStringToObject(s, "app", w->deps[i].app);
                cJSON_AddStringToObject(s, "deployment", w->deps[i].name);
                cJSON_AddNumberToObject(s, "requests", 0);
                cJSON_AddNumberToObject(s, "errors", 0);
                cJSON_AddNumberToObject(s, "replica_starts", (double)w->deps[i].n_replicas);
                if (latency_hist_json_add(s, &empty) < 0)
                        die("out of memory");
                cJSON_AddItemToArray(stats, s);
        }
        peers = cJSON_AddObjectToObject(m, "peers");
        cJSON_AddNumberToObject(peers, "sent", 0);
        cJSON_AddNumberToObject(peers, "received", 0);
        cJSON_AddNumberToObject(peers, "rejected", 0);
        cJSON_AddNumberToObject(peers, "failed_over", 0);
        send_msg(w, m);
        tx_reports++;
        cJSON_Delete(m);
}

static const char *get_str(const cJSON *o, const char *key, bool nullable, const char *who, const char *what) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (nullable && (!v || cJSON_IsNull(v)))
                return NULL;
        if (!cJSON_IsString(v))
                die("%s: %s: field %s is not a string", who, what, key);
        return v->valuestring;
}

static double get_num(const cJSON *o, const char *key, double min, double max, const char *who, const char *what) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min || v->valuedouble > max)
                die("%s: %s: field %s is not a number in [%g, %g]", who, what, key, min, max);
        return v->valuedouble;
}

static const cJSON *get_array(const cJSON *o, const char *key, const char *who, const char *what) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsArray(v))
                die("%s: %s: field %s is not an array", who, what, key);
        return v;
}

/* The deployment (app, name) of c; hint is where it usually is (assign lists the config's
 * deployments in the same order). */
static const struct cfg_dep *config_find(const struct config *c, size_t hint, const char *app, const char *name) {
        if (hint < c->n_deps && streq(c->deps[hint].app, app) && streq(c->deps[hint].name, name))
                return &c->deps[hint];
        for (size_t i = 0; i < c->n_deps; i++)
                if (streq(c->deps[i].app, app) && streq(c->deps[i].name, name))
                        return &c->deps[i];
        return NULL;
}

static struct config *config_parse_msg(const char *data, size_t len, const cJSON *m, const char *who) {
        struct config *c = calloc(1, sizeof(*c));
        const cJSON *deps = get_array(m, "deployments", who, "config"), *d;
        size_t n = 0;

        if (!c || !(c->text = malloc(len)) || !(c->deps = calloc((size_t)cJSON_GetArraySize(deps) + 1, sizeof(*c->deps))))
                die("out of memory");
        memcpy(c->text, data, len);
        c->len = len;
        c->epoch = (long long)get_num(m, "epoch", 0, 9007199254740992.0, who, "config");
        cJSON_ArrayForEach(d, deps) {
                struct cfg_dep *x = &c->deps[n++];
                x->app = xstrdup(get_str(d, "app", false, who, "config"));
                x->name = xstrdup(get_str(d, "name", false, who, "config"));
                x->version = xstrdup(get_str(d, "version", false, who, "config"));
                if (strlen(x->version) > 16)
                        die("%s: config: version \"%s\" longer than a report may carry", who, x->version);
                x->user_config = xstrdup(get_str(d, "user_config", true, who, "config"));
                (void)get_num(d, "replicas", 0, 1e7, who, "config");
        }
        c->n_deps = n;
        c->refs = 1;
        return c;
}

static void cfg_dep_parse(struct cfg_dep *x, const cJSON *d, const char *who) {
        x->app = xstrdup(get_str(d, "app", false, who, "config"));
        x->name = xstrdup(get_str(d, "name", false, who, "config"));
        x->version = xstrdup(get_str(d, "version", false, who, "config"));
        if (strlen(x->version) > 16)
                die("%s: config: version \"%s\" longer than a report may carry", who, x->version);
        x->user_config = xstrdup(get_str(d, "user_config", true, who, "config"));
}

/* A delta `config` (config_msg.h) on top of base: its deployments less the removed ones, the
 * upserted ones replaced in place or appended. */
static struct config *config_apply_delta(const struct config *base, const char *data, size_t len, const cJSON *m,
                                         const char *who) {
        const cJSON *up = cJSON_GetObjectItem(m, "deployments"), *rm = cJSON_GetObjectItem(m, "deployments_removed"), *d;
        struct config *c = calloc(1, sizeof(*c));
        size_t n = 0;

        if (!c || !(c->text = malloc(len)) ||
            !(c->deps = calloc(base->n_deps + (size_t)cJSON_GetArraySize(up) + 1, sizeof(*c->deps))))
                die("out of memory");
        memcpy(c->text, data, len);
        c->len = len;
        c->epoch = (long long)get_num(m, "epoch", 0, 9007199254740992.0, who, "config");
        for (size_t i = 0; i < base->n_deps; i++) {
                const struct cfg_dep *b = &base->deps[i];
                bool gone = false;
                cJSON_ArrayForEach(d, rm) gone |= streq(b->app, get_str(d, "app", false, who, "config")) &&
                                                  streq(b->name, get_str(d, "name", false, who, "config"));
                if (gone)
                        continue;
                c->deps[n++] = (struct cfg_dep){ xstrdup(b->app), xstrdup(b->name), xstrdup(b->version),
                                                 b->user_config ? xstrdup(b->user_config) : NULL };
        }
        cJSON_ArrayForEach(d, up) {
                struct cfg_dep x;
                size_t i;
                cfg_dep_parse(&x, d, who);
                for (i = 0; i < n && !(streq(c->deps[i].app, x.app) && streq(c->deps[i].name, x.name)); i++)
                        ;
                if (i < n) {
                        free(c->deps[i].app);
                        free(c->deps[i].name);
                        free(c->deps[i].version);
                        free(c->deps[i].user_config);
                } else
                        n++;
                c->deps[i] = x;
        }
        c->n_deps = n;
        c->refs = 1;
        return c;
}

/* Whether every deployment of the config now running differs in user_config from before. */
static bool config_changed_everywhere(void) {
        if (!latest_config || !config_before_reload || latest_config->epoch <= config_before_reload->epoch)
                return false;
        for (size_t i = 0; i < latest_config->n_deps; i++) {
                const struct cfg_dep *n = &latest_config->deps[i];
                const struct cfg_dep *o = config_find(config_before_reload, i, n->app, n->name);
                if (o && streq_ptr(o->user_config, n->user_config))
                        return false;
        }
        return true;
}

/* Whether this worker shows the reload: an assign for a config newer than the one before. */
static bool worker_reloaded(const struct fake_worker *w) {
        return w->has_assign && w->config && w->assign_epoch == w->config->epoch && config_before_reload &&
               w->assign_epoch > config_before_reload->epoch;
}

static void update_reloaded(struct fake_worker *w) {
        bool was = w->reloaded;
        if (!reload_running)
                return;
        w->reloaded = worker_reloaded(w);
        reloaded_workers += (unsigned)w->reloaded - (unsigned)was;
}

/* `config`: the same bytes go to every node, so parse each distinct text once. */
static void handle_config(struct fake_worker *w, const char *data, size_t len) {
        static struct config *delta_base; /* latest_config is the delta applied to it */
        struct config *c = latest_config;

        if (c && c->len == len && memcmp(c->text, data, len) == 0) {
                if (delta_base && w->config != delta_base)
                        die("%s: config delta for epoch %lld, but it holds %lld", w->name, delta_base->epoch,
                            w->config ? w->config->epoch : -1);
        } else {
                cJSON *m = cJSON_ParseWithLength(data, len);
                if (!m)
                        die("%s: config is not JSON", w->name);
                config_unref(delta_base);
                delta_base = NULL;
                if (cJSON_GetObjectItem(m, "base")) {
                        long long base = (long long)get_num(m, "base", 0, 9007199254740992.0, w->name, "config");
                        if (!w->config || w->config->epoch != base)
                                die("%s: config delta from epoch %lld, but it holds %lld", w->name, base,
                                    w->config ? w->config->epoch : -1);
                        c = config_apply_delta(w->config, data, len, m, w->name);
                        delta_base = config_ref(w->config);
                } else
                        c = config_parse_msg(data, len, m, w->name);
                cJSON_Delete(m);
                if (latest_config && c->epoch < latest_config->epoch)
                        die("%s: config epoch went back from %lld to %lld", w->name, latest_config->epoch, c->epoch);
                config_unref(latest_config);
                latest_config = c;
        }
        if (w->config && c->epoch < w->config->epoch)
                die("%s: config epoch went back from %lld to %lld", w->name, w->config->epoch, c->epoch);
        config_unref(w->config);
        w->config = config_ref(c);
        update_reloaded(w);
}

/* `assign`: this node's replica counts for its config. Replicas of an unchanged version stay
 * (same ids and pids), the rest are "started" now, as serve-worker's supervisor would. */
static void handle_assign(struct fake_worker *w, const cJSON *m) {
        const cJSON *reps = get_array(m, "replicas", w->name, "assign"), *it;
        long long epoch = (long long)get_num(m, "config_epoch", 0, 9007199254740992.0, w->name, "assign");
        struct fake_deployment *nd;
        size_t n = 0, idx = 0;
        unsigned total = 0;

        if (!w->config || w->config->epoch != epoch)
                die("%s: assign for config %lld, but the latest config is %lld", w->name, epoch,
                    w->config ? w->config->epoch : -1);
        nd = calloc((size_t)cJSON_GetArraySize(reps) + 1, sizeof(*nd));
        if (!nd)
                die("out of memory");
        cJSON_ArrayForEach(it, reps) {
                const char *app = get_str(it, "app", false, w->name, "assign");
                const char *name = get_str(it, "name", false, w->name, "assign");
                unsigned want = (unsigned)get_num(it, "count", 0, 1 << 20, w->name, "assign");
                const struct cfg_dep *cd = config_find(w->config, idx++, app, name);
                if (!cd)
                        die("%s: assign names %s/%s, which its config does not have", w->name, app, name);
                if (want == 0)
                        continue;
                const struct fake_deployment *old = NULL;
                for (size_t k = 0; k < w->n_deps && !old; k++)
                        if (streq(w->deps[k].app, app) && streq(w->deps[k].name, name))
                                old = &w->deps[k];
                size_t keep = old && streq(old->version, cd->version) ? MIN(old->n_replicas, want) : 0;
                struct fake_deployment *x = &nd[n++];
                x->app = xstrdup(app);
                x->name = xstrdup(name);
                x->version = xstrdup(cd->version);
                x->replicas = calloc(want, sizeof(*x->replicas));
                if (!x->replicas)
                        die("out of memory");
                if (keep)
                        memcpy(x->replicas, old->replicas, keep * sizeof(*x->replicas));
                for (size_t j = keep; j < want; j++) {
                        replica_counter++;
                        x->replicas[j] = (struct fake_replica){
                                .n = replica_counter,
                                .pid = (int)(100000 + replica_counter % 4000000),
                                .started_at = wall_now(),
                        };
                }
                x->n_replicas = want;
                total += want;
        }
        deps_free(w->deps, w->n_deps);
        w->deps = nd;
        w->n_deps = n;
        w->assign_epoch = epoch;
        assigned_workers += !w->has_assign;
        w->has_assign = true;
        assigned_total = assigned_total - w->assigned + total;
        w->assigned = total;
        last_assign_ns = now_ns();
        update_reloaded(w);
}

/* `routing`: a whole table or the changes since the version this worker holds. The head writes
 * "version" and then "full" or "base" right after the type, so each worker checks that what
 * it got follows what it had from the first bytes; the one shared table applies each version
 * once (parsing a 2 MB table once per worker would make this process the bottleneck). */
static void handle_routing(struct fake_worker *w, const char *data, size_t len) {
        static const char prefix[] = "{\"v\":1,\"type\":\"routing\",\"version\":";
        unsigned long long version, base = 0;
        char head[128];
        int used = 0;
        bool full;

        size_t hl = MIN(len, sizeof(head) - 1);
        memcpy(head, data, hl);
        head[hl] = 0;
        if (strncmp(head, prefix, sizeof(prefix) - 1) != 0 || sscanf(head + sizeof(prefix) - 1, "%llu%n", &version, &used) != 1)
                die("%s: routing does not start with its version", w->name);
        const char *rest = head + sizeof(prefix) - 1 + used;
        full = strncmp(rest, ",\"full\":true", 12) == 0;
        if (!full && sscanf(rest, ",\"base\":%llu", &base) != 1)
                die("%s: routing has neither \"full\" nor \"base\" after its version", w->name);
        /* Workers read their links in turn: an older message may come after a newer one that
         * another worker already got. The shared table only moves forward. */
        if (!routing.valid || version > routing.version) {
                char err[256] = "";
                cJSON *m = cJSON_ParseWithLength(data, len);
                if (!m)
                        die("%s: routing is not JSON", w->name);
                int r = routing_table_apply(&routing, m, err, sizeof(err));
                if (r < 0)
                        die("%s: routing version %llu: %s", w->name, version,
                            r == -ESTALE ? "a delta on a version no worker has" : err);
                cJSON_Delete(m);
                routing_ready = 0;
                for (size_t i = 0; i < routing.n_ready; i++)
                        routing_ready += routing.ready[i].count;
        }
        if (!full && (!w->has_routing || w->routing_version != base))
                die("%s: routing delta on version %llu, but this worker holds %s%" PRIu64, w->name, base,
                    w->has_routing ? "" : "none ", w->has_routing ? w->routing_version : 0);
        w->has_routing = true;
        w->routing_version = version;
}

/* The message type without parsing the whole frame: the head writes "v" and then "type"
 * first; anything else is parsed. */
static int frame_type(const char *data, size_t len) {
        static const char prefix[] = "{\"v\":1,\"type\":\"";
        static const char *const known[] = { [T_WELCOME] = "welcome", [T_CONFIG] = "config", [T_ASSIGN] = "assign",
                                             [T_ROUTING] = "routing" };
        size_t p = sizeof(prefix) - 1;

        if (len < p || memcmp(data, prefix, p) != 0)
                return -1;
        for (int t = 0; t < T_OTHER; t++) {
                size_t k = strlen(known[t]);
                if (len > p + k && memcmp(data + p, known[t], k) == 0 && data[p + k] == '"')
                        return t;
        }
        return -1;
}

static void handle_message(struct fake_worker *w, const char *data, size_t len) {
        int t = frame_type(data, len);

        rx_msgs[t < 0 ? T_OTHER : t]++;
        rx_bytes[t < 0 ? T_OTHER : t] += len + 4;
        if (t == T_CONFIG) {
                handle_config(w, data, len);
                return;
        }
        if (t == T_ROUTING) {
                last_routing_ns = now_ns();
                if (!w->config)
                        die("%s: routing before any config", w->name);
                handle_routing(w, data, len);
                return;
        }

        cJSON *m = cJSON_ParseWithLength(data, len);
        const cJSON *v, *type;
        if (!cJSON_IsObject(m))
                die("%s: frame is not a JSON object", w->name);
        v = cJSON_GetObjectItemCaseSensitive(m, "v");
        type = cJSON_GetObjectItemCaseSensitive(m, "type");
        if (!cJSON_IsNumber(v) || v->valuedouble != 1)
                die("%s: message without \"v\":1", w->name);
        if (!cJSON_IsString(type))
                die("%s: message without a type", w->name);
        if (streq(type->valuestring, "welcome")) {
                arg.heartbeat_s = get_num(m, "heartbeat_interval_s", 0.001, 3600, w->name, "welcome");
                w->welcomed = true;
        } else if (streq(type->valuestring, "refused")) {
                const cJSON *reason = cJSON_GetObjectItemCaseSensitive(m, "reason");
                die("%s: refused: %s", w->name, cJSON_IsString(reason) ? reason->valuestring : "(no reason)");
        } else if (streq(type->valuestring, "assign"))
                handle_assign(w, m);
        else if (streq(type->valuestring, "config"))
                handle_config(w, data, len); /* written in another field order than expected */
        else if (streq(type->valuestring, "routing"))
                handle_routing(w, data, len);
        else
                die("%s: unexpected message type \"%s\"", w->name, type->valuestring);
        cJSON_Delete(m);
}

static void on_readable(struct fake_worker *w) {
        for (;;) {
                if (buf_reserve(&w->in, 65536, IN_LIMIT) < 0 && buf_reserve(&w->in, 1, IN_LIMIT) < 0)
                        die("%s: input buffer full", w->name);
                ssize_t n = recv(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len, 0);
                if (n == 0)
                        die("%s: the head closed the connection", w->name);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                break;
                        die("%s: recv: %m", w->name);
                }
                w->in.len += (size_t)n;
        }
        size_t off = 0;
        while (w->in.len - off >= 4) {
                uint32_t be;
                memcpy(&be, w->in.data + off, 4);
                uint32_t len = ntohl(be);
                if (len < 1 || len > FRAME_MAX)
                        die("%s: frame length %u out of range", w->name, len);
                if (w->in.len - off - 4 < len)
                        break;
                handle_message(w, w->in.data + off + 4, len);
                off += 4 + (size_t)len;
        }
        buf_consume(&w->in, off);
        /* A whole routing table is megabytes: 10,000 idle buffers that size would be this
         * process's memory. */
        if (w->in.len == 0 && w->in.cap > (256u << 10))
                buf_free(&w->in);
}

static void on_writable(struct fake_worker *w) {
        if (!w->connected) {
                int err = 0;
                socklen_t l = sizeof(err);
                if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err)
                        die("%s: connect to %s: %s", w->name, arg.head, strerror(err ? err : errno));
                w->connected = true;
                return;
        }
        while (w->out.len > 0) {
                ssize_t n = send(w->fd, w->out.data, w->out.len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return;
                        die("%s: send: %m", w->name);
                }
                buf_consume(&w->out, (size_t)n);
        }
}

static struct sockaddr_storage head_addr;
static socklen_t head_addrlen;

static void resolve_head(void) {
        _cleanup_free_ char *host = xstrdup(arg.head);
        char *colon = strrchr(host, ':'), *h = host;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;

        if (!colon)
                die("--head wants HOST:PORT");
        *colon = 0;
        if (*h == '[' && colon[-1] == ']') {
                h++;
                colon[-1] = 0;
        }
        int r = getaddrinfo(h, colon + 1, &hints, &ai);
        if (r)
                die("%s: %s", arg.head, gai_strerror(r));
        memcpy(&head_addr, ai->ai_addr, ai->ai_addrlen);
        head_addrlen = ai->ai_addrlen;
        freeaddrinfo(ai);
}

static void start_connect(struct fake_worker *w) {
        w->fd = socket(head_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (w->fd < 0)
                die("socket: %m (RLIMIT_NOFILE too low?)");
        int one = 1;
        setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(w->fd, (struct sockaddr *)&head_addr, head_addrlen) == 0)
                w->connected = true;
        else if (errno != EINPROGRESS)
                die("%s: connect to %s: %m", w->name, arg.head);
}

static pid_t run_reload_cmd(const char *cmd) {
        pid_t pid = fork();
        if (pid < 0)
                die("fork: %m");
        if (pid == 0) {
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
        }
        return pid;
}

static void raise_nofile(unsigned need) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("getrlimit: %m");
        if (rl.rlim_cur >= need)
                return;
        rl.rlim_cur = need;
        if (rl.rlim_max < need)
                rl.rlim_max = need; /* only root may; otherwise the error below says so */
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("cannot raise RLIMIT_NOFILE to %u: %m", need);
}

static void print_head_rss(void) {
        char path[64], line[256];
        long rss = -1, hwm = -1;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)arg.head_pid);
        FILE *f = fopen(path, "re");
        if (!f) {
                fprintf(stderr, "fake_workers: %s: %m\n", path);
                return;
        }
        while (fgets(line, sizeof(line), f)) {
                sscanf(line, "VmRSS: %ld kB", &rss);
                sscanf(line, "VmHWM: %ld kB", &hwm);
        }
        fclose(f);
        printf("head RSS: %.1f MiB (peak %.1f MiB) with %u workers and %llu replicas\n", rss / 1024.0, hwm / 1024.0,
               arg.workers, assigned_total);
}

/* The head's user+system CPU time in seconds, or -1. */
static double head_cpu_s(void) {
        char path[64], buf[1024];
        unsigned long ut, st;

        if (arg.head_pid <= 0)
                return -1;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)arg.head_pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -1;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                return -1;
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double cpu_mark;

/* The head's VmRSS in kB, or -1. */
static long head_rss_kb(void) {
        char path[64], line[256];
        long rss = -1;

        if (arg.head_pid <= 0)
                return -1;
        snprintf(path, sizeof(path), "/proc/%d/status", (int)arg.head_pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                sscanf(line, "VmRSS: %ld kB", &rss);
        fclose(f);
        return rss;
}

/* " (head CPU X s since the last note, RSS Y MiB)". */
static const char *head_cpu_note(void) {
        static char note[96];
        double c = head_cpu_s();
        note[0] = 0;
        if (c >= 0) {
                snprintf(note, sizeof(note), " (head CPU %.2f s, RSS %.1f MiB)", c - cpu_mark, head_rss_kb() / 1024.0);
                cpu_mark = c;
        }
        return note;
}

enum phase { PLACING, SETTLING, UNREADY, READY_AGAIN, RELOADING, RELOADING_ONE, DEPLOY_ZERO, DEPLOYING, DONE };

static void usage(void) {
        fprintf(stderr, "usage: fake_workers --head HOST:PORT --token-file F --expect N [--workers N] [--cpus C]\n"
                        "         [--address-base A.B.C.D] [--reload-cmd CMD] [--reload-changes-config] [--reload-one-cmd CMD]\n"
                        "         [--deploy-cmd CMD] [--deploy-via WORD] [--settle-ms MS] [--timeout S] [--head-pid PID]\n");
        exit(2);
}

static void parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "head", required_argument, NULL, 'H' },       { "token-file", required_argument, NULL, 't' },
                { "workers", required_argument, NULL, 'w' },    { "cpus", required_argument, NULL, 'c' },
                { "address-base", required_argument, NULL, 'a' }, { "expect", required_argument, NULL, 'e' },
                { "reload-cmd", required_argument, NULL, 'r' }, { "reload-changes-config", no_argument, NULL, 'C' },
                { "reload-one-cmd", required_argument, NULL, 'O' }, { "deploy-cmd", required_argument, NULL, 'D' },
                { "deploy-via", required_argument, NULL, 'V' },
                { "settle-ms", required_argument, NULL, 's' },  { "timeout", required_argument, NULL, 'T' },
                { "head-pid", required_argument, NULL, 'p' },   { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        inet_pton(AF_INET, "127.1.0.0", &arg.address_base);
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (c) {
                case 'H': arg.head = optarg; break;
                case 't': arg.token_file = optarg; break;
                case 'w': arg.workers = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'c': arg.cpus = strtod(optarg, NULL); break;
                case 'a':
                        if (inet_pton(AF_INET, optarg, &arg.address_base) != 1)
                                die("--address-base wants an IPv4 address");
                        break;
                case 'e': arg.expect = strtoull(optarg, NULL, 10); break;
                case 'r': arg.reload_cmd = optarg; break;
                case 'C': arg.reload_changes_config = true; break;
                case 'O': arg.reload_one_cmd = optarg; break;
                case 'D': arg.deploy_cmd = optarg; break;
                case 'V': arg.deploy_via = optarg; break;
                case 's': arg.settle_ms = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'T': arg.timeout_s = strtod(optarg, NULL); break;
                case 'p': arg.head_pid = (pid_t)strtol(optarg, NULL, 10); break;
                default: usage();
                }
        }
        if (!arg.head || !arg.token_file || !arg.expect || !arg.workers || arg.workers > 60000 || !(arg.cpus > 0) ||
            !(arg.timeout_s > 0) || optind != argc)
                usage();
}

/* Every worker holds routing version v. */
static bool all_routing_at(uint64_t v) {
        for (unsigned i = 0; i < arg.workers; i++)
                if (!workers[i].has_routing || workers[i].routing_version != v)
                        return false;
        return true;
}

static void print_traffic(const char *label) {
        uint64_t all = 0;
        for (int t = 0; t < T_MAX; t++)
                all += rx_bytes[t];
        printf("%s traffic: %.1f KiB per worker; head -> workers", label, all / 1024.0 / arg.workers);
        for (int t = 0; t < T_MAX; t++)
                if (rx_msgs[t])
                        printf(" %s %" PRIu64 " (%.1f MiB)", type_names[t], rx_msgs[t], rx_bytes[t] / 1048576.0);
        printf("; workers -> head %" PRIu64 " reports, %.1f MiB in all\n", tx_reports, tx_bytes / 1048576.0);
        memset(rx_msgs, 0, sizeof(rx_msgs));
        memset(rx_bytes, 0, sizeof(rx_bytes));
        tx_reports = tx_bytes = 0;
}

/* Starts a reload-like phase: remembers the config before it and runs cmd in the background. */
/* The phases that run a command, in their order; after `done`, the first one configured (a
 * one-deployment reload only follows a full one). Returns DONE when none is left. */
static enum phase next_command_phase(enum phase done, const char *deploy_zero_cmd, const char **ret_cmd) {
        const struct {
                enum phase phase;
                const char *cmd;
        } order[] = {
                { RELOADING, arg.reload_cmd },
                { RELOADING_ONE, done == RELOADING ? arg.reload_one_cmd : NULL },
                { DEPLOY_ZERO, deploy_zero_cmd },
        };
        for (size_t i = 0; i < ELEMENTSOF(order); i++)
                if (order[i].phase > done && order[i].cmd) {
                        *ret_cmd = order[i].cmd;
                        return order[i].phase;
                }
        return DONE;
}

static pid_t begin_reload(const char *cmd, uint64_t *t_phase) {
        config_unref(config_before_reload);
        config_before_reload = config_ref(latest_config);
        reloaded_workers = 0;
        for (unsigned i = 0; i < arg.workers; i++)
                workers[i].reloaded = false;
        reload_running = true;
        *t_phase = now_ns();
        return run_reload_cmd(cmd);
}

int main(int argc, char **argv) {
        _cleanup_free_ struct pollfd *pfd = NULL;
        uint64_t t_first_hello = 0, t_phase = 0, t_all_assigned = 0, deadline;
        enum phase phase = PLACING;
        bool placed = false, ready = false, reload_ready = false, deploy_placed = false, deploy_ready = false;
        pid_t reload_pid = -1;
        _cleanup_free_ char *deploy_zero_cmd = NULL, *deploy_full_cmd = NULL;
        const char *running_cmd = NULL;
        int r;

        parse_args(argc, argv);
        r = read_file(arg.token_file, 4096, &arg.token, NULL);
        if (r < 0)
                die("%s: %s", arg.token_file, strerror(-r));
        for (size_t n = strlen(arg.token); n > 0 && strchr(" \t\r\n", arg.token[n - 1]); n--)
                arg.token[n - 1] = 0;
        size_t lead = strspn(arg.token, " \t\r\n");
        memmove(arg.token, arg.token + lead, strlen(arg.token + lead) + 1);

        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);
        raise_nofile(arg.workers + 64);
        resolve_head();
        cpu_mark = head_cpu_s();
        if (arg.deploy_cmd && (asprintf(&deploy_zero_cmd, "%s zero", arg.deploy_cmd) < 0 ||
                               asprintf(&deploy_full_cmd, "%s full", arg.deploy_cmd) < 0))
                die("out of memory");

        workers = calloc(arg.workers, sizeof(*workers));
        pfd = calloc(arg.workers, sizeof(*pfd));
        if (!workers || !pfd)
                die("out of memory");
        uint32_t base = ntohl(arg.address_base.s_addr);
        for (unsigned i = 0; i < arg.workers; i++) {
                struct fake_worker *w = &workers[i];
                struct in_addr a = { .s_addr = htonl(base + 1 + i) };
                w->idx = i;
                snprintf(w->name, sizeof(w->name), "fake-%04u", i);
                inet_ntop(AF_INET, &a, w->address, sizeof(w->address));
                w->fd = -1;
        }

        deadline = now_ns() + sec_to_ns(arg.timeout_s);
        unsigned n_started = 0;
        for (;;) {
                uint64_t now = now_ns();
                unsigned unconnected = 0, joining = 0;

                /* Connect in waves, as a real fleet comes up: the head takes at most
                 * MAX_PENDING_CONNS connections that have not said hello at once. */
                for (unsigned i = 0; i < n_started; i++)
                        joining += !workers[i].welcomed;
                while (n_started < arg.workers && joining < CONNECT_WAVE) {
                        workers[n_started].started = true;
                        start_connect(&workers[n_started++]);
                        joining++;
                }

                for (unsigned i = 0; i < arg.workers; i++) {
                        struct fake_worker *w = &workers[i];
                        if (!w->started) {
                                unconnected++;
                                pfd[i] = (struct pollfd){ .fd = -1 };
                                continue;
                        }
                        if (w->connected && w->next_report_ns == 0) {
                                if (!t_first_hello)
                                        t_first_hello = now;
                                send_hello(w);
                                /* Reports start after the welcome; spread them over the interval, as
                                 * real workers' heartbeats drift apart. */
                                w->next_report_ns = now + sec_to_ns(arg.heartbeat_s) * (i + 1) / arg.workers;
                        } else if (w->welcomed && now >= w->next_report_ns) {
                                send_report(w);
                                w->next_report_ns += sec_to_ns(arg.heartbeat_s);
                                if (w->next_report_ns < now)
                                        w->next_report_ns = now + sec_to_ns(arg.heartbeat_s);
                        }
                        if (w->out.len && w->connected)
                                on_writable(w); /* try at once; poll picks up what does not fit */
                        unconnected += !w->connected;
                        pfd[i] = (struct pollfd){
                                .fd = w->fd,
                                .events = POLLIN | (!w->connected || w->out.len ? POLLOUT : 0),
                        };
                }

                now = now_ns();
                switch (phase) {
                case PLACING:
                        if (!placed && assigned_workers == arg.workers && assigned_total == arg.expect) {
                                placed = true;
                                t_all_assigned = now;
                                printf("join storm: %u workers join and %llu replicas placed in %.0f ms (first hello -> "
                                       "every worker assigned, counts sum to %llu)\n",
                                       arg.workers, assigned_total, ms_since(t_first_hello), arg.expect);
                        }
                        if (!ready && t_first_hello && routing_ready == arg.expect) {
                                ready = true;
                                printf("ready: routing lists %llu ready replicas %.0f ms after the first hello\n",
                                       routing_ready, ms_since(t_first_hello));
                        }
                        if (placed && ready) {
                                printf("placement phase%s\n", head_cpu_note());
                                print_traffic("placement phase");
                                phase = SETTLING;
                                t_phase = now;
                                deadline = now + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case SETTLING:
                        /* Routing quiet too: the last workers' first reports of their replicas
                         * still change it, and a change measured below must be that one alone. */
                        if (now - last_assign_ns >= arg.settle_ms * NSEC_PER_MSEC && assigned_total == arg.expect &&
                            now - last_routing_ns >= arg.settle_ms * NSEC_PER_MSEC && routing_ready == arg.expect) {
                                printf("settled: last assign %.0f ms after every worker was assigned, then none for %u ms%s\n",
                                       (double)(MAX(last_assign_ns, t_all_assigned) - t_all_assigned) / 1e6,
                                       arg.settle_ms, head_cpu_note());
                                print_traffic("settling");
                                /* One replica change: worker 0 reports one replica not ready,
                                 * then ready again; what the head sends to all for each. */
                                unready_one = true;
                                workers[0].next_report_ns = now;
                                phase = UNREADY;
                                t_phase = now;
                                deadline = now + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case UNREADY:
                case READY_AGAIN:
                        if (routing_ready == arg.expect - (phase == UNREADY) && all_routing_at(routing.version)) {
                                uint64_t all = 0;
                                for (int t = 0; t < T_MAX; t++)
                                        all += rx_bytes[t];
                                printf("one replica %s: %" PRIu64 " routing message(s), %" PRIu64 " bytes to all %u workers "
                                       "(%.1f bytes per worker) in %.0f ms%s\n",
                                       phase == UNREADY ? "not ready" : "ready again", rx_msgs[T_ROUTING], all, arg.workers,
                                       (double)all / arg.workers, ms_since(t_phase), head_cpu_note());
                                print_traffic(phase == UNREADY ? "replica not ready" : "replica ready again");
                                if (phase == UNREADY) {
                                        unready_one = false;
                                        workers[0].next_report_ns = now;
                                        phase = READY_AGAIN;
                                        t_phase = now;
                                        deadline = now + sec_to_ns(arg.timeout_s);
                                        break;
                                }
                                if ((phase = next_command_phase(phase, deploy_zero_cmd, &running_cmd)) == DONE)
                                        break;
                                reload_pid = begin_reload(running_cmd, &t_phase);
                                deadline = t_phase + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case RELOADING:
                case RELOADING_ONE:
                        if (!reload_ready && reloaded_workers == arg.workers && assigned_total == arg.expect &&
                            (phase == RELOADING_ONE || !arg.reload_changes_config || config_changed_everywhere())) {
                                reload_ready = true;
                                printf("%s: config epoch %lld -> %lld, %u workers hold an assign for it, %llu replicas, "
                                       "in %.0f ms%s\n",
                                       phase == RELOADING ? "reload" : "one-deployment reload", config_before_reload->epoch,
                                       latest_config->epoch, arg.workers, assigned_total, ms_since(t_phase), head_cpu_note());
                        }
                        /* Then until routing is quiet again: the head re-reads every report. */
                        if (reload_ready && routing_ready == arg.expect && now - last_assign_ns >= arg.settle_ms * NSEC_PER_MSEC) {
                                print_traffic(phase == RELOADING ? "reload" : "one-deployment reload");
                                /* Next, maybe again changing one deployment: what a config delta costs. */
                                reload_ready = false;
                                if ((phase = next_command_phase(phase, deploy_zero_cmd, &running_cmd)) == DONE)
                                        break;
                                reload_pid = begin_reload(running_cmd, &t_phase);
                                deadline = t_phase + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case DEPLOY_ZERO:
                        /* Every deployment scaled to 0: every worker holds an assign for the new
                         * epoch, none asks for a replica, and routing lists none and is quiet. */
                        if (reload_pid < 0 && reloaded_workers == arg.workers && assigned_total == 0 && routing_ready == 0 &&
                            all_routing_at(routing.version) && now - last_assign_ns >= arg.settle_ms * NSEC_PER_MSEC &&
                            now - last_routing_ns >= arg.settle_ms * NSEC_PER_MSEC) {
                                printf("scale to zero: config epoch %lld -> %lld, every worker holds an assign for it with 0 "
                                       "replicas and routing lists none, settled %.0f ms after the %s%s\n",
                                       config_before_reload->epoch, latest_config->epoch, ms_since(t_phase), arg.deploy_via,
                                       head_cpu_note());
                                print_traffic("scale to zero");
                                /* The measured deploy: every replica placed again, onto the
                                 * workers that have joined and hold nothing. */
                                reload_pid = begin_reload(running_cmd = deploy_full_cmd, &t_phase);
                                phase = DEPLOYING;
                                deadline = t_phase + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case DEPLOYING:
                        if (!deploy_placed && reloaded_workers == arg.workers && assigned_total == arg.expect) {
                                deploy_placed = true;
                                printf("deploy onto %u joined workers: %llu replicas placed in %.0f ms (%s -> every worker "
                                       "holds its assign for config epoch %lld, counts sum to %llu)%s\n",
                                       arg.workers, assigned_total, ms_since(t_phase), arg.deploy_via, latest_config->epoch,
                                       arg.expect, head_cpu_note());
                                print_traffic("deploy placement");
                        }
                        if (deploy_placed && !deploy_ready && routing_ready == arg.expect) {
                                deploy_ready = true;
                                printf("deploy ready: routing lists %llu ready replicas %.0f ms after the %s%s\n", routing_ready,
                                       ms_since(t_phase), arg.deploy_via, head_cpu_note());
                        }
                        if (deploy_ready && all_routing_at(routing.version) &&
                            now - last_assign_ns >= arg.settle_ms * NSEC_PER_MSEC &&
                            now - last_routing_ns >= arg.settle_ms * NSEC_PER_MSEC) {
                                print_traffic("deploy, placed -> settled");
                                phase = DONE;
                        }
                        break;
                case DONE:
                        break;
                }
                if (reload_pid > 0) {
                        int status;
                        if (waitpid(reload_pid, &status, WNOHANG) == reload_pid) {
                                reload_pid = -1;
                                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                                        die("command failed: %s", running_cmd);
                        }
                }
                if (phase == DONE && reload_pid < 0)
                        break;
                if (now >= deadline) {
                        static const char *const names[] = { "placement", "settling", "replica change", "replica change", "reload",
                                                             "one-deployment reload", "scale to zero", "deploy", "" };
                        die("timeout after %.0f s in %s: %llu of %llu replicas assigned, %u of %u workers assigned, %u not "
                            "connected, %llu ready in routing, %u of %u workers reloaded",
                            arg.timeout_s, names[phase], assigned_total, arg.expect, assigned_workers, arg.workers,
                            unconnected, routing_ready, reloaded_workers, arg.workers);
                }

                /* Wake for the next heartbeat due, the settle check or the deadline, whichever is first. */
                uint64_t wake = deadline;
                for (unsigned i = 0; i < arg.workers; i++)
                        if (workers[i].welcomed && workers[i].next_report_ns < wake)
                                wake = workers[i].next_report_ns;
                /* Only quiet periods still to come: one already over would make poll spin,
                 * taking a CPU from the head it measures. */
                uint64_t quiet = last_assign_ns + arg.settle_ms * NSEC_PER_MSEC;
                if (phase != PLACING && quiet > now && quiet < wake)
                        wake = quiet;
                quiet = last_routing_ns + arg.settle_ms * NSEC_PER_MSEC;
                if ((phase == SETTLING || phase == DEPLOY_ZERO || phase == DEPLOYING) && quiet > now && quiet < wake)
                        wake = quiet;
                if (reload_pid > 0 && now + 50 * NSEC_PER_MSEC < wake)
                        wake = now + 50 * NSEC_PER_MSEC;
                int timeout_ms = wake > now ? (int)((wake - now + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC) : 0;
                if (poll(pfd, arg.workers, timeout_ms) < 0 && errno != EINTR)
                        die("poll: %m");
                for (unsigned i = 0; i < arg.workers; i++) {
                        if (pfd[i].revents & (POLLOUT | POLLERR | POLLHUP))
                                if (!workers[i].connected || workers[i].out.len)
                                        on_writable(&workers[i]);
                        if ((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) && workers[i].connected)
                                on_readable(&workers[i]);
                }
        }

        if (arg.head_pid > 0)
                print_head_rss();
        for (unsigned i = 0; i < arg.workers; i++) {
                close(workers[i].fd);
                buf_free(&workers[i].in);
                buf_free(&workers[i].out);
                deps_free(workers[i].deps, workers[i].n_deps);
                config_unref(workers[i].config);
        }
        config_unref(latest_config);
        config_unref(config_before_reload);
        routing_table_done(&routing);
        free(workers);
        return 0;
}
