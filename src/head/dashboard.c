/* The dashboard on the API port: its static files (the page, its scripts, and Debian's
 * libjs-dygraphs for the charts), the time series it plots and the events it lists.
 *
 * The history is sampled from the reports the workers already send: every interval the head
 * adds up, per deployment, what each node's counters grew by since the previous sample
 * (requests, errors, the latency histogram), counts running/target/pending replicas, alive nodes
 * per group, and each node's CPU and run-queue delay from its replicas' load numbers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "head.h"
#include "log.h"
#include "macros.h"
#include "metrics.h"

#define HISTORY_WINDOW_S 3600.0
#define HISTORY_MAX_SERIES 4096
#define EVENTS_PAGE_MAX 1000
#define STATIC_FILE_MAX (8u << 20)

struct dashboard {
        struct history *hist;
        double interval_s;
        uint64_t next_ns;
        double last_t;                 /* wall time of the previous sample; 0: none yet */
        char *dir;                     /* the page's files */
        char *js_dir;                  /* /usr/share/javascript */
};

int dashboard_init(struct head *h, double interval_s) {
        struct dashboard *db = calloc(1, sizeof *db);
        const char *dir = getenv("SERVE_DASHBOARD_DIR"), *js = getenv("SERVE_JAVASCRIPT_DIR");
        size_t points = (size_t)ceil(HISTORY_WINDOW_S / interval_s);

        if (!db || !(db->dir = strdup(dir && *dir ? dir : PKGDATADIR "/dashboard")) ||
            !(db->js_dir = strdup(js && *js ? js : "/usr/share/javascript")) ||
            history_new(interval_s, MAX(points, 2u), HISTORY_MAX_SERIES, &db->hist) < 0 ||
            event_log_init(&h->events, HEAD_EVENTS_CAPACITY) < 0) {
                if (db) {
                        free(db->dir);
                        free(db->js_dir);
                }
                free(db);
                return log_error_errno(-ENOMEM, "Cannot set up the dashboard: %m");
        }
        db->interval_s = interval_s;
        h->dash = db;
        return 0;
}

void dashboard_free(struct head *h) {
        if (!h->dash)
                return;
        history_free(h->dash->hist);
        free(h->dash->dir);
        free(h->dash->js_dir);
        free(h->dash);
        h->dash = NULL;
        event_log_free(&h->events);
        cJSON_Delete(h->dep_failures);
        h->dep_failures = NULL;
}

bool replica_is_running(const cJSON *rep, const char *version) {
        return streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(rep, "state")), "RUNNING") &&
               streq_ptr(cJSON_GetStringValue(cJSON_GetObjectItem(rep, "version")), version);
}

/* ---- sampling ---- */

struct dep_acc {
        double requests, errors;
        struct latency_hist latency;
        unsigned running;
};

static double num(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *str(const cJSON *o, const char *key) {
        return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* What a node had reported at the previous sample, the counters only (a copy of its report would
 * double the head's largest memory): its deployments' request counters and its replicas' load
 * numbers, each sorted by the hash of its name. */
struct dash_stat {
        uint64_t key;                  /* hash of app and deployment */
        double requests, errors;
        struct latency_hist latency;
};
struct dash_rep {
        uint64_t key;                  /* hash of the replica id */
        double cpu_s, rq_sum, rq_count;
};
struct dash_snapshot {
        struct dash_stat *stats;
        struct dash_rep *reps;
        size_t n_stats, n_reps;
};

void dash_snapshot_free(struct dash_snapshot *s) {
        if (!s)
                return;
        free(s->stats);
        free(s->reps);
        free(s);
}

static uint64_t name_hash(const char *a, const char *b) {
        uint64_t x = 1469598103934665603ull;
        for (const char *p = a ?: ""; *p; p++)
                x = (x ^ (unsigned char)*p) * 1099511628211ull;
        x = (x ^ 0xff) * 1099511628211ull;
        for (const char *p = b ?: ""; *p; p++)
                x = (x ^ (unsigned char)*p) * 1099511628211ull;
        return x;
}

static int key_cmp(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* The entry with key in a sorted array of n elements of size `size` (key first), or NULL. */
static const void *find_key(const void *base, size_t n, size_t size, uint64_t key) {
        return base ? bsearch(&key, base, n, size, key_cmp) : NULL;
}

/* How much a counter grew (now when it went down: a restarted worker). */
static double grew(double now, double before) { return now >= before ? now - before : now; }

static void set(struct history *hist, const char *scope, const char *name, const char *metric, double v) {
        if (isfinite(v))
                (void)history_set(hist, scope, name, metric, v);
}

/* A worker group's nodes in one lifecycle state: "nodes_launching", ... (the page charts each). */
static void sample_group_state(void *userdata, const char *group, const char *state, unsigned n) {
        char metric[32] = "nodes_";
        size_t k = strlen(metric);
        for (size_t i = 0; state[i] && k < sizeof metric - 1; i++)
                metric[k++] = (char)(state[i] | 0x20);
        metric[k] = 0;
        if (!streq(metric, "nodes_alive")) /* counted above, for every group */
                set(userdata, "groups", group, metric, n);
}

/* The deployments of the spec by name_hash(app, name): an open-addressing table of indexes + 1. */
struct dep_index {
        uint32_t *slots;
        size_t mask;
};

static int dep_index_build(struct dep_index *ix, const struct serve_spec *spec) {
        size_t size = 16;
        while (size < 2 * spec->n_deps)
                size <<= 1;
        if (!(ix->slots = calloc(size, sizeof *ix->slots)))
                return -ENOMEM;
        ix->mask = size - 1;
        for (size_t i = 0; i < spec->n_deps; i++) {
                size_t b = name_hash(spec->deps[i].app, spec->deps[i].name) & ix->mask;
                while (ix->slots[b])
                        b = (b + 1) & ix->mask;
                ix->slots[b] = (uint32_t)i + 1;
        }
        return 0;
}

static const struct dep_spec *dep_index_find(const struct dep_index *ix, const struct serve_spec *spec, uint64_t key,
                                             const char *app, const char *name) {
        for (size_t b = key & ix->mask; ix->slots[b]; b = (b + 1) & ix->mask) {
                const struct dep_spec *d = &spec->deps[ix->slots[b] - 1];
                if (streq_ptr(d->app, app) && streq_ptr(d->name, name))
                        return d;
        }
        return NULL;
}

/* Adds node n's part since the previous sample (dt seconds ago; 0: none) to acc, records its
 * own series, and keeps its counters for the next sample. */
static void sample_node(struct head *h, const struct dep_index *ix, struct node *n, double dt, struct dep_acc *acc) {
        struct history *hist = h->dash->hist;
        const cJSON *stats = cJSON_GetObjectItem(n->report, "stats"), *reps = cJSON_GetObjectItem(n->report, "replicas"), *it;
        struct dash_snapshot *prev = n->dash_prev, *now = calloc(1, sizeof *now);
        size_t ns = (size_t)cJSON_GetArraySize(stats), nr = (size_t)cJSON_GetArraySize(reps);
        double cpu = 0, rq_sum = 0, rq_count = 0;
        bool have = prev && dt > 0;

        if (!now || (ns && !(now->stats = calloc(ns, sizeof *now->stats))) ||
            (nr && !(now->reps = calloc(nr, sizeof *now->reps)))) {
                dash_snapshot_free(now);
                now = NULL;
                have = false;
        }
        cJSON_ArrayForEach(it, stats) {
                const char *app = str(it, "app"), *name = str(it, "deployment");
                struct dash_stat c = { .key = name_hash(app, name), .requests = num(it, "requests"), .errors = num(it, "errors") };
                if (latency_hist_json_get(it, &c.latency) < 0)
                        continue;
                if (now)
                        now->stats[now->n_stats++] = c;
                const struct dep_spec *d = dep_index_find(ix, h->spec, c.key, app, name);
                if (!have || !d)
                        continue;
                const struct dash_stat *p = find_key(prev->stats, prev->n_stats, sizeof *p, c.key);
                struct dep_acc *a = &acc[d - h->spec->deps];
                struct latency_hist zero = { 0 }, delta;
                a->requests += grew(c.requests, p ? p->requests : 0);
                a->errors += grew(c.errors, p ? p->errors : 0);
                latency_hist_delta(&delta, &c.latency, p ? &p->latency : &zero);
                latency_hist_merge(&a->latency, &delta);
        }
        cJSON_ArrayForEach(it, reps) {
                const char *app = str(it, "app"), *name = str(it, "deployment");
                const struct dep_spec *d = dep_index_find(ix, h->spec, name_hash(app, name), app, name);
                const cJSON *rq = cJSON_GetObjectItem(it, "rq_delay");
                struct dash_rep c = { .key = name_hash(str(it, "id"), NULL), .cpu_s = num(it, "cpu_s"),
                                      .rq_sum = num(rq, "sum"), .rq_count = num(rq, "count") };
                if (d && replica_is_running(it, d->version))
                        acc[d - h->spec->deps].running++;
                if (now)
                        now->reps[now->n_reps++] = c;
                if (!have)
                        continue;
                const struct dash_rep *p = find_key(prev->reps, prev->n_reps, sizeof *p, c.key);
                cpu += grew(c.cpu_s, p ? p->cpu_s : 0);
                rq_sum += grew(c.rq_sum, p ? p->rq_sum : 0);
                rq_count += grew(c.rq_count, p ? p->rq_count : 0);
        }
        if (have) {
                set(hist, "nodes", n->name, "cpu_cores", cpu / dt);
                if (rq_count > 0)
                        set(hist, "nodes", n->name, "rq_delay_ms", rq_sum / rq_count * 1000);
        }
        if (now && now->n_stats)
                qsort(now->stats, now->n_stats, sizeof *now->stats, key_cmp);
        if (now && now->n_reps)
                qsort(now->reps, now->n_reps, sizeof *now->reps, key_cmp);
        dash_snapshot_free(prev);
        n->dash_prev = now;
}

/* The request series of one deployment, under scope/name. */
static void set_requests(struct history *hist, const char *scope, const char *name, const struct dep_acc *a, double dt) {
        if (!(dt > 0))
                return;
        set(hist, scope, name, "requests_per_s", a->requests / dt);
        set(hist, scope, name, "errors_per_s", a->errors / dt);
        set(hist, scope, name, "p50_ms", latency_hist_quantile(&a->latency, 0.5));
        set(hist, scope, name, "p99_ms", latency_hist_quantile(&a->latency, 0.99));
}

static void sample(struct head *h, double t) {
        struct dashboard *db = h->dash;
        size_t nd = h->spec ? h->spec->n_deps : 0;
        struct dep_acc *acc = calloc(nd + 1, sizeof *acc);
        double dt = db->last_t > 0 ? t - db->last_t : 0;
        cJSON *groups = cJSON_CreateObject();
        struct dep_index ix = { 0 };
        struct list *pos, *tmp;

        if (!acc || !groups || (h->spec && dep_index_build(&ix, h->spec) < 0)) {
                free(acc);
                cJSON_Delete(groups);
                return;
        }
        history_begin(db->hist, t);
        list_for_each_safe(pos, tmp, &h->nodes) {
                struct node *n = list_entry(pos, struct node, link);
                const char *g = node_group(n);
                cJSON *c = cJSON_GetObjectItemCaseSensitive(groups, g);
                if (!c)
                        c = cJSON_AddNumberToObject(groups, g, 0);
                if (c && n->alive)
                        cJSON_SetNumberValue(c, c->valuedouble + 1);
                if (!n->alive || !n->report || !h->spec) {
                        dash_snapshot_free(n->dash_prev);
                        n->dash_prev = NULL;
                        continue;
                }
                sample_node(h, &ix, n, dt, acc);
        }
        for (size_t i = 0; i < nd; i++) {
                const struct dep_spec *d = &h->spec->deps[i];
                _cleanup_free_ char *key = dep_key(d->app, d->name);
                if (!key)
                        continue;
                set_requests(db->hist, "deployments", key, &acc[i], dt);
                set(db->hist, "deployments", key, "replicas_running", acc[i].running);
                set(db->hist, "deployments", key, "replicas_target", d->replicas);
                set(db->hist, "deployments", key, "replicas_pending", i < h->n_assign ? h->assign[i].pending : 0);
        }
        for (size_t i = 0; h->spec && i < h->spec->n_apps; i++) {
                const struct app_spec *as = &h->spec->apps[i];
                const struct dep_spec *d = spec_find(h->spec, as->name, as->ingress);
                if (d)
                        set_requests(db->hist, "applications", as->name, &acc[d - h->spec->deps], dt);
        }
        const cJSON *g;
        cJSON_ArrayForEach(g, groups) set(db->hist, "groups", g->string, "nodes_alive", g->valuedouble);
        groups_sample(h, sample_group_state, db->hist);
        db->last_t = t;
        cJSON_Delete(groups);
        free(ix.slots);
        free(acc);
}

void dashboard_tick(struct head *h, uint64_t now) {
        struct dashboard *db = h->dash;

        if (!db || now < db->next_ns)
                return;
        /* On the grid of the interval (from the first sample), not drifting by the loop's lateness. */
        db->next_ns = db->next_ns ? db->next_ns + (uint64_t)(db->interval_s * 1e9) : now + (uint64_t)(db->interval_s * 1e9);
        if (db->next_ns <= now)
                db->next_ns = now + (uint64_t)(db->interval_s * 1e9);
        sample(h, wall_now());
}

/* ---- views ---- */

/* The value of query parameter `key` as a number >= 0 (def when absent); false when malformed. */
static bool query_number(const struct httpd_request *rq, const char *key, double def, double *ret) {
        const char *q = rq->req->query, *end = q ? q + rq->req->query_len : NULL;
        size_t kl = strlen(key);

        *ret = def;
        while (q && q < end) {
                const char *amp = memchr(q, '&', (size_t)(end - q)) ?: end;
                if ((size_t)(amp - q) > kl && memcmp(q, key, kl) == 0 && q[kl] == '=') {
                        char buf[64], *e;
                        size_t vl = (size_t)(amp - q) - kl - 1;
                        if (vl == 0 || vl >= sizeof buf)
                                return false;
                        memcpy(buf, q + kl + 1, vl);
                        buf[vl] = 0;
                        double v = strtod(buf, &e);
                        if (*e || !(v >= 0) || !isfinite(v))
                                return false;
                        *ret = v;
                        return true;
                }
                q = amp + 1;
        }
        return true;
}

static void history_view(struct head *h, const struct httpd_request *rq, struct httpd_response *resp) {
        double since;
        if (!query_number(rq, "since", -1, &since)) {
                httpd_respond_error(resp, 400, "since: want a time in seconds since the epoch");
                return;
        }
        cJSON *j = history_json(h->dash->hist, since);
        if (!j) {
                httpd_respond_error(resp, 500, "out of memory");
                return;
        }
        httpd_respond_json(resp, 200, j);
        cJSON_Delete(j);
}

static void events_view(struct head *h, const struct httpd_request *rq, struct httpd_response *resp) {
        double since, limit;
        if (!query_number(rq, "since", 0, &since) || !query_number(rq, "limit", EVENTS_PAGE_MAX, &limit) || limit < 1) {
                httpd_respond_error(resp, 400, "since: want an event id; limit: want a count of at least 1");
                return;
        }
        cJSON *j = cJSON_CreateObject(), *arr = event_log_json(&h->events, (uint64_t)since, (size_t)MIN(limit, EVENTS_PAGE_MAX));
        if (!j || !arr || !cJSON_AddItemToObject(j, "events", arr) ||
            /* Lower than since after a head restart (ids start again): the reader starts over. */
            !cJSON_AddNumberToObject(j, "next", (double)(h->events.next_id - 1)) ||
            !cJSON_AddNumberToObject(j, "capacity", (double)h->events.capacity)) {
                if (!j || !cJSON_GetObjectItem(j, "events"))
                        cJSON_Delete(arr);
                cJSON_Delete(j);
                httpd_respond_error(resp, 500, "out of memory");
                return;
        }
        httpd_respond_json(resp, 200, j);
        cJSON_Delete(j);
}

static const char *content_type_of(const char *name) {
        static const struct { const char *ext, *type; } types[] = {
                { ".html", "text/html; charset=utf-8" },  { ".js", "text/javascript; charset=utf-8" },
                { ".css", "text/css; charset=utf-8" },    { ".svg", "image/svg+xml" },
                { ".png", "image/png" },                  { ".json", "application/json" },
        };
        const char *dot = strrchr(name, '.');
        for (size_t i = 0; dot && i < ELEMENTSOF(types); i++)
                if (streq(dot, types[i].ext))
                        return types[i].type;
        return "application/octet-stream";
}

/* A file name of the flat dashboard folder: [A-Za-z0-9._-], not starting with a dot. */
static bool file_name_valid(const char *s, size_t len) {
        if (len == 0 || len > 128 || s[0] == '.')
                return false;
        for (size_t i = 0; i < len; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
                      s[i] == '.' || s[i] == '_' || s[i] == '-'))
                        return false;
        return true;
}

static void serve_file(struct httpd_response *resp, const char *dir, const char *name, const char *missing_hint) {
        _cleanup_free_ char *path = NULL, *text = NULL;
        size_t len;
        int r;

        if (asprintf(&path, "%s/%s", dir, name) < 0) {
                httpd_respond_error(resp, 500, "out of memory");
                return;
        }
        r = read_file(path, STATIC_FILE_MAX, &text, &len);
        if (r < 0) {
                static struct log_limiter lim;
                log_limited(&lim, LOG_WARNING, "dashboard: cannot read %s: %s%s", path, strerror(-r), missing_hint);
                char msg[600];
                snprintf(msg, sizeof msg, "the dashboard's file %s cannot be read: %s%s", path, strerror(-r), missing_hint);
                httpd_respond_error(resp, r == -ENOENT ? 404 : 500, msg);
                return;
        }
        resp->content_type = content_type_of(name);
        if (buf_append(&resp->body, text, len, SIZE_MAX) < 0)
                httpd_respond_error(resp, 500, "out of memory");
}

bool dashboard_handle(struct head *h, const struct httpd_request *rq, struct httpd_response *resp) {
        const char *rest;
        size_t len;

        if (httpd_is(rq, "GET", "/") || httpd_is(rq, "GET", "/index.html"))
                serve_file(resp, h->dash->dir, "index.html",
                           " (install serve's dashboard files, or point SERVE_DASHBOARD_DIR at them)");
        else if (httpd_is(rq, "GET", "/ui/lib/dygraph.min.js") || httpd_is(rq, "GET", "/ui/lib/dygraph.min.css")) {
                _cleanup_free_ char *dir = NULL;
                if (asprintf(&dir, "%s/dygraphs", h->dash->js_dir) < 0)
                        httpd_respond_error(resp, 500, "out of memory");
                else
                        serve_file(resp, dir, httpd_is(rq, "GET", "/ui/lib/dygraph.min.js") ? "dygraph.min.js" : "dygraph.min.css",
                                   " (install Debian's libjs-dygraphs)");
        } else if (httpd_prefix_is(rq, "GET", "/ui/", &rest, &len)) {
                char name[129];
                if (!file_name_valid(rest, len)) {
                        httpd_respond_error(resp, 404, "no such file");
                        return true;
                }
                memcpy(name, rest, len);
                name[len] = 0;
                serve_file(resp, h->dash->dir, name, "");
        } else if (httpd_is(rq, "GET", "/api/dashboard/history"))
                history_view(h, rq, resp);
        else if (httpd_is(rq, "GET", "/api/dashboard/events"))
                events_view(h, rq, resp);
        else
                return false;
        return true;
}

/* ---- what the workers report ---- */

/* A deployment's replica failed (to start, crashed, unhealthy) or became ready: what its
 * status message says until one is ready again (`serve status`, the dashboard). */
static void note_failure(struct head *h, const char *kind, const char *subject, const char *node, const char *message) {
        bool failed = streq(kind, "replica_failed") || streq(kind, "replica_crashed") || streq(kind, "health_check_failed") ||
                      streq(kind, "replica_unresponsive");

        if (!failed && !streq(kind, "replica_ready"))
                return;
        if (!h->dep_failures && !(h->dep_failures = cJSON_CreateObject()))
                return;
        /* A replica that failed to start then exits: its exit says less than why it failed. */
        if (streq(kind, "replica_crashed") && cJSON_GetObjectItemCaseSensitive(h->dep_failures, subject))
                return;
        cJSON_DeleteItemFromObjectCaseSensitive(h->dep_failures, subject);
        /* Bounded by the deployments: a subject that names none is not kept. */
        const char *slash = strchr(subject, '/');
        if (!failed || !slash || !h->spec)
                return;
        char app[EVENT_SUBJECT_MAX];
        snprintf(app, sizeof app, "%.*s", (int)(slash - subject), subject);
        if (!spec_find(h->spec, app, slash + 1))
                return;
        char msg[EVENT_MESSAGE_MAX + EVENT_NODE_MAX + 8];
        snprintf(msg, sizeof msg, "%s (on %s)", message, node);
        cJSON_AddStringToObject(h->dep_failures, subject, msg);
}

void dashboard_take_events(struct head *h, struct node *n, const cJSON *report) {
        const cJSON *it;
        double now = wall_now();

        cJSON_ArrayForEach(it, cJSON_GetObjectItem(report, "events")) {
                double t = num(it, "time");
                /* The worker's clock: believed within a minute of ours (report_validate checked the rest). */
                if (!(fabs(t - now) < 60))
                        t = now;
                event_log_add_at(&h->events, t, str(it, "kind"), str(it, "subject"), n->name, str(it, "message"));
                note_failure(h, str(it, "kind"), str(it, "subject"), n->name, str(it, "message"));
        }
}
