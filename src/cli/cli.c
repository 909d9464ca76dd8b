#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"
#include "macros.h"
#include "nodecfg.h"
#include "util.h"

#define DEFAULT_ADDRESS "http://localhost:8265"
#define DEFAULT_TOKEN_FILE "/etc/serve/api-token"
#define TOKEN_MAX 4096
#define DEPLOY_FILE_MAX (16u * 1024 * 1024)

/* ---- tables ----------------------------------------------------------------------------------- */

struct table {
        size_t ncols, nrows, cap;
        char **cells; /* nrows * ncols, row-major */
};

/* Server-supplied text goes to a terminal: no escape sequences, one line per cell. */
static char *cell_dup(const char *s) {
        char *d = strdup(s ? s : "-");
        if (!d)
                return NULL;
        for (char *p = d; *p; p++) {
                unsigned char c = (unsigned char)*p;
                if (c == '\n' || c == '\r' || c == '\t')
                        *p = ' ';
                else if (c < 0x20 || c == 0x7f)
                        *p = '?';
        }
        return d;
}

/* Adds one row of t->ncols cells (NULL prints "-"). Returns 0 or -ENOMEM. */
static int table_row(struct table *t, ...) {
        va_list ap;
        int r = 0;

        if (t->nrows == t->cap) {
                size_t ncap = t->cap ? t->cap * 2 : 16;
                char **n = reallocarray(t->cells, ncap * t->ncols, sizeof(char *));
                if (!n)
                        return -ENOMEM;
                t->cells = n;
                t->cap = ncap;
        }
        char **row = t->cells + t->nrows * t->ncols;
        va_start(ap, t);
        for (size_t i = 0; i < t->ncols; i++) {
                row[i] = cell_dup(va_arg(ap, const char *));
                if (!row[i])
                        r = -ENOMEM;
        }
        va_end(ap);
        if (r < 0) {
                for (size_t i = 0; i < t->ncols; i++)
                        free(row[i]);
                return r;
        }
        t->nrows++;
        return 0;
}

/* Display width: UTF-8 continuation bytes take no column. */
static size_t text_width(const char *s) {
        size_t w = 0;
        for (; *s; s++)
                if (((unsigned char)*s & 0xc0) != 0x80)
                        w++;
        return w;
}

static void table_print(const struct table *t, FILE *f) {
        size_t width[16] = {};

        for (size_t r = 0; r < t->nrows; r++)
                for (size_t c = 0; c < t->ncols && c < ELEMENTSOF(width); c++)
                        width[c] = MAX(width[c], text_width(t->cells[r * t->ncols + c]));
        for (size_t r = 0; r < t->nrows; r++) {
                char **row = t->cells + r * t->ncols;
                size_t last = t->ncols;
                while (last > 1 && row[last - 1][0] == 0)
                        last--; /* no trailing blanks */
                for (size_t c = 0; c < last; c++) {
                        fputs(row[c], f);
                        if (c + 1 < last)
                                fprintf(f, "%*s", (int)(width[c] - text_width(row[c]) + 2), "");
                }
                fputc('\n', f);
        }
}

static void table_free(struct table *t) {
        for (size_t i = 0; i < t->nrows * t->ncols; i++)
                free(t->cells[i]);
        free(t->cells);
        t->cells = NULL;
        t->nrows = t->cap = 0;
}

/* ---- JSON and number helpers ------------------------------------------------------------------ */

static const char *jstr(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool jnum(const cJSON *o, const char *key, double *ret) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v))
                return false;
        *ret = v->valuedouble;
        return true;
}

/* "4", "0.5", "1.25": at most 3 decimals, no trailing zeros. */
static void fmt_num(char *buf, size_t n, double v) {
        snprintf(buf, n, "%.3f", v);
        char *dot = strchr(buf, '.');
        if (dot) {
                char *e = buf + strlen(buf);
                while (e > dot && (e[-1] == '0' || e[-1] == '.'))
                        *--e = 0;
        }
        if (streq(buf, "-0"))
                snprintf(buf, n, "0");
}

/* 8589934592 -> "8Gi", 1610612736 -> "1.5Gi". */
static void fmt_bytes(char *buf, size_t n, double v) {
        static const char *const units[] = { "B", "Ki", "Mi", "Gi", "Ti", "Pi" };
        size_t u = 0;
        char num[32];

        if (v == 0) {
                snprintf(buf, n, "0");
                return;
        }
        while (fabs(v) >= 1024 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024;
                u++;
        }
        snprintf(num, sizeof(num), "%.1f", v);
        size_t l = strlen(num);
        if (l > 2 && streq(num + l - 2, ".0"))
                num[l - 2] = 0;
        snprintf(buf, n, "%s%s", num, units[u]);
}

static void fmt_time(char *buf, size_t n, double epoch) {
        time_t t = (time_t)epoch;
        struct tm tm;
        if (epoch <= 0 || !localtime_r(&t, &tm) || strftime(buf, n, "%Y-%m-%d %H:%M:%S", &tm) == 0)
                snprintf(buf, n, "-");
}

static void fmt_ago(char *buf, size_t n, double s) {
        if (s < 0)
                snprintf(buf, n, "-");
        else if (s < 60)
                snprintf(buf, n, "%.1fs ago", s);
        else if (s < 3600)
                snprintf(buf, n, "%.0fm ago", floor(s / 60));
        else
                snprintf(buf, n, "%.0fh ago", floor(s / 3600));
}

/* ---- serve status ----------------------------------------------------------------------------- */

static void render_config_error(const cJSON *st, FILE *f) {
        const cJSON *ce = cJSON_GetObjectItemCaseSensitive(st, "config_error");
        const char *msg = jstr(ce, "message");
        _cleanup_free_ char *clean = NULL;
        char when[64];
        double t;

        if (!msg)
                return;
        clean = cell_dup(msg);
        fprintf(f, "CONFIG ERROR: %s\n", clean ? clean : msg);
        if (jnum(ce, "time", &t)) {
                fmt_time(when, sizeof(when), t);
                fprintf(f, "  rejected at %s; ", when);
        } else
                fputs("  ", f);
        fputs("the last valid config is still being served\n\n", f);
}

static int render_applications(const cJSON *apps, FILE *f) {
        struct table t = { .ncols = 5 };
        const cJSON *app;
        int r;

        r = table_row(&t, "APPLICATION", "STATUS", "ROUTE", "LAST DEPLOYED", "MESSAGE");
        cJSON_ArrayForEach(app, apps) {
                char when[64] = "-";
                double d;
                if (jnum(app, "last_deployed_time_s", &d))
                        fmt_time(when, sizeof(when), d);
                const char *name = jstr(app, "name");
                if (r >= 0)
                        r = table_row(&t, name ? name : app->string, jstr(app, "status"), jstr(app, "route_prefix"),
                                      when, jstr(app, "message") ?: "");
        }
        if (r >= 0)
                table_print(&t, f);
        table_free(&t);
        return r;
}

static int render_deployments(const cJSON *apps, FILE *f) {
        struct table deps = { .ncols = 7 }, reps = { .ncols = 5 }, pend = { .ncols = 3 }, scale = { .ncols = 5 };
        const cJSON *app, *dep, *x;
        int r;

        r = table_row(&deps, "DEPLOYMENT", "STATUS", "RUNNING", "TARGET", "PENDING", "STARTING", "MESSAGE");
        if (r >= 0)
                r = table_row(&reps, "REPLICA", "STATE", "NODE", "NODE IP", "PID");
        if (r >= 0)
                r = table_row(&pend, "DEPLOYMENT", "PENDING", "REASON");
        if (r >= 0)
                r = table_row(&scale, "AUTOSCALED", "REPLICAS", "MIN..MAX", "LOAD", "LAST DECISION");

        cJSON_ArrayForEach(app, apps) {
                cJSON_ArrayForEach(dep, cJSON_GetObjectItemCaseSensitive(app, "deployments")) {
                        char id[512], running_s[24], target_s[24] = "-", pending_s[24], starting_s[24];
                        const char *dname = jstr(dep, "name") ?: dep->string;
                        long running = 0, starting = 0, pending = 0;
                        double d;

                        snprintf(id, sizeof(id), "%s/%s", app->string ? app->string : "?", dname ? dname : "?");
                        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(dep, "replicas")) {
                                const char *state = jstr(x, "state");
                                char pid[24] = "-";
                                if (streq_ptr(state, "RUNNING"))
                                        running++;
                                else if (streq_ptr(state, "STARTING"))
                                        starting++;
                                if (jnum(x, "pid", &d))
                                        snprintf(pid, sizeof(pid), "%.0f", d);
                                if (r >= 0)
                                        r = table_row(&reps, jstr(x, "replica_id"), state, jstr(x, "node_id"),
                                                      jstr(x, "node_ip"), pid);
                        }
                        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(dep, "pending")) {
                                char count[24] = "-";
                                if (jnum(x, "count", &d)) {
                                        pending += (long)d;
                                        snprintf(count, sizeof(count), "%.0f", d);
                                }
                                if (r >= 0)
                                        r = table_row(&pend, id, count, jstr(x, "reason"));
                        }
                        snprintf(running_s, sizeof(running_s), "%ld", running);
                        snprintf(starting_s, sizeof(starting_s), "%ld", starting);
                        snprintf(pending_s, sizeof(pending_s), "%ld", pending);
                        if (jnum(dep, "target_replicas", &d))
                                snprintf(target_s, sizeof(target_s), "%.0f", d);
                        if (r >= 0)
                                r = table_row(&deps, id, jstr(dep, "status"), running_s, target_s, pending_s,
                                              starting_s, jstr(dep, "message") ?: "");
                        const cJSON *as = cJSON_GetObjectItemCaseSensitive(dep, "autoscaling");
                        if (cJSON_IsObject(as) && r >= 0) {
                                char reps_s[64], range[64] = "-", load[32] = "-";
                                double lo, hi, l;
                                snprintf(reps_s, sizeof(reps_s), "%ld/%s", running, target_s);
                                if (jnum(as, "min_replicas", &lo) && jnum(as, "max_replicas", &hi))
                                        snprintf(range, sizeof(range), "%.0f..%.0f", lo, hi);
                                if (jnum(as, "load", &l))
                                        snprintf(load, sizeof(load), "%.2f", l);
                                r = table_row(&scale, id, reps_s, range, load, jstr(as, "last_decision") ?: "");
                        }
                }
        }
        if (r >= 0) {
                fputc('\n', f);
                table_print(&deps, f);
                fputc('\n', f);
                if (reps.nrows > 1)
                        table_print(&reps, f);
                else
                        fputs("No replicas are running.\n", f);
                if (pend.nrows > 1) {
                        fputc('\n', f);
                        table_print(&pend, f);
                }
                if (scale.nrows > 1) {
                        fputc('\n', f);
                        table_print(&scale, f);
                }
        }
        table_free(&scale);
        table_free(&deps);
        table_free(&reps);
        table_free(&pend);
        return r;
}

/* Worker groups: nodes by state, bounds, and whether launches keep failing. */
static int render_groups(const cJSON *groups, FILE *f) {
        struct table t = { .ncols = 6 };
        const cJSON *g;
        int r = table_row(&t, "GROUP", "PROVIDER", "NODES", "MIN-MAX", "WANTED", "STATUS");

        cJSON_ArrayForEach(g, groups) {
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(g, "nodes"), *s;
                char nodes[160] = "", bounds[48], wanted[24] = "-", status[600];
                double mn = 0, mx = 0, w, fails = 0, backoff = 0;
                size_t len = 0;
                cJSON_ArrayForEach(s, st)
                        if (cJSON_IsNumber(s) && s->valuedouble > 0 && len < sizeof nodes)
                                len += (size_t)snprintf(nodes + len, sizeof nodes - len, "%s%.0f %s", len ? ", " : "",
                                                        s->valuedouble, s->string);
                for (char *p = nodes; *p; p++)
                        if (*p >= 'A' && *p <= 'Z')
                                *p = (char)(*p | 0x20);
                (void)jnum(g, "min_nodes", &mn);
                (void)jnum(g, "max_nodes", &mx);
                snprintf(bounds, sizeof bounds, "%.0f-%.0f", mn, mx);
                if (jnum(g, "wanted", &w))
                        snprintf(wanted, sizeof wanted, "%.0f", w);
                (void)jnum(g, "consecutive_failures", &fails);
                (void)jnum(g, "backoff_s", &backoff);
                if (fails > 0)
                        snprintf(status, sizeof status, "FAILING (%.0f launch(es) in a row): %s; next launch in %.0f s", fails,
                                 jstr(g, "last_error") ?: "", backoff);
                else
                        snprintf(status, sizeof status, "ok");
                if (r >= 0)
                        r = table_row(&t, jstr(g, "name"), jstr(g, "provider") && *jstr(g, "provider") ? jstr(g, "provider") : "-",
                                      nodes[0] ? nodes : "none", bounds, wanted, status);
        }
        if (r >= 0) {
                fputs("Worker groups:\n", f);
                table_print(&t, f);
                fputs("\n", f);
        }
        table_free(&t);
        return r;
}

int cli_render_status(const cJSON *st, FILE *f) {
        const cJSON *apps, *http;
        const char *proxy;
        double port;

        if (!cJSON_IsObject(st))
                return -EINVAL;
        apps = cJSON_GetObjectItemCaseSensitive(st, "applications");
        if (!cJSON_IsObject(apps) && !cJSON_IsNull(apps))
                return -EINVAL;

        render_config_error(st, f);

        proxy = jstr(st, "proxy_location");
        http = cJSON_GetObjectItemCaseSensitive(st, "http_options");
        if (proxy || http) {
                fputs("HTTP proxy:", f);
                if (jstr(http, "host") && jnum(http, "port", &port))
                        fprintf(f, " %s:%.0f", jstr(http, "host"), port);
                if (proxy)
                        fprintf(f, " (%s)", proxy);
                fputs("\n\n", f);
        }
        const cJSON *groups = cJSON_GetObjectItemCaseSensitive(st, "worker_groups");
        if (cJSON_IsArray(groups) && groups->child) {
                int r = render_groups(groups, f);
                if (r < 0)
                        return r;
        }

        if (!cJSON_IsObject(apps) || !apps->child) {
                fputs("No applications are deployed.\n", f);
                return 0;
        }
        int r = render_applications(apps, f);
        if (r >= 0)
                r = render_deployments(apps, f);
        return r;
}

/* ---- serve nodes ------------------------------------------------------------------------------ */

static bool is_builtin_resource(const char *k) {
        return streq_ptr(k, "CPU") || streq_ptr(k, "memory") || streq_ptr(k, "GPU") || streq_ptr(k, "gpu_memory");
}

/* "used/total" of resource key; "-" when the node offers none. */
static void fmt_usage(char *buf, size_t n, const cJSON *node, const char *key, bool bytes) {
        const cJSON *total = cJSON_GetObjectItemCaseSensitive(node, "resources_total");
        const cJSON *avail = cJSON_GetObjectItemCaseSensitive(node, "resources_available");
        double t, a;
        char us[32], ts[32];

        if (!jnum(total, key, &t) || t <= 0) {
                snprintf(buf, n, "-");
                return;
        }
        if (!jnum(avail, key, &a))
                a = t;
        double used = MAX(t - a, 0.0);
        if (bytes) {
                fmt_bytes(us, sizeof(us), used);
                fmt_bytes(ts, sizeof(ts), t);
        } else {
                fmt_num(us, sizeof(us), used);
                fmt_num(ts, sizeof(ts), t);
        }
        snprintf(buf, n, "%s/%s", us, ts);
}

/* Custom resources as "accel 1/4, fpga 0/1"; labels as "group=cpu,zone=a". */
static int fmt_custom(struct buf *b, const cJSON *node) {
        const cJSON *k;
        int r = 0;

        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(node, "resources_total")) {
                char u[96];
                if (is_builtin_resource(k->string) || !cJSON_IsNumber(k))
                        continue;
                fmt_usage(u, sizeof(u), node, k->string, false);
                r = buf_printf(b, 65536, "%s%s %s", b->len ? ", " : "", k->string, u);
                if (r < 0)
                        return r;
        }
        return r;
}

static int fmt_labels(struct buf *b, const cJSON *node) {
        const cJSON *k;
        cJSON_ArrayForEach(k, cJSON_GetObjectItemCaseSensitive(node, "labels")) {
                int r = buf_printf(b, 65536, "%s%s=%s", b->len ? "," : "", k->string,
                                   cJSON_IsString(k) ? k->valuestring : "?");
                if (r < 0)
                        return r;
        }
        return 0;
}

int cli_render_nodes(const cJSON *j, FILE *f) {
        struct table t = { .ncols = 12 };
        const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(j, "nodes"), *n;
        bool any_custom = false, any_labels = false;
        int r;

        if (!cJSON_IsArray(nodes))
                return -EINVAL;
        if (!nodes->child) {
                fputs("No nodes have joined serve-head.\n", f);
                return 0;
        }

        r = table_row(&t, "NODE", "IP", "GROUP", "STATE", "AGE", "CPU", "MEMORY", "GPU", "REPLICAS", "HEARTBEAT", "CUSTOM",
                      "LABELS");
        cJSON_ArrayForEach(n, nodes) {
                char cpu[80], mem[80], gpu[80], reps[24] = "-", hb[32] = "-", age[32] = "-";
                struct buf custom = {}, labels = {};
                double d;

                fmt_usage(cpu, sizeof(cpu), n, "CPU", false);
                fmt_usage(mem, sizeof(mem), n, "memory", true);
                fmt_usage(gpu, sizeof(gpu), n, "GPU", false);
                if (jnum(n, "replicas", &d))
                        snprintf(reps, sizeof(reps), "%.0f", d);
                if (jnum(n, "last_heartbeat_s_ago", &d) && d >= 0)
                        fmt_ago(hb, sizeof(hb), d);
                if (jnum(n, "age_s", &d))
                        fmt_ago(age, sizeof(age), d);
                if (r >= 0)
                        r = fmt_custom(&custom, n);
                if (r >= 0)
                        r = fmt_labels(&labels, n);
                any_custom |= custom.len > 0;
                any_labels |= labels.len > 0;
                if (r >= 0)
                        r = table_row(&t, jstr(n, "node_id"), jstr(n, "node_ip"), jstr(n, "group") ?: "-", jstr(n, "state"),
                                      age, cpu, mem, gpu, reps, hb, custom.len ? custom.data : "-",
                                      labels.len ? labels.data : "-");
                buf_free(&custom);
                buf_free(&labels);
        }
        /* Columns nobody uses are dropped (they are the last two). */
        if (r >= 0 && !any_labels) {
                for (size_t i = 0; i < t.nrows; i++)
                        t.cells[i * t.ncols + 11][0] = 0;
                if (!any_custom)
                        for (size_t i = 0; i < t.nrows; i++)
                                t.cells[i * t.ncols + 10][0] = 0;
        }
        if (r >= 0)
                table_print(&t, f);
        table_free(&t);
        return r;
}

/* ---- command line ----------------------------------------------------------------------------- */

struct cli {
        FILE *out, *err;
        const char *address;
        const char *token_file; /* --token-file */
        bool json, yes, help;
        const char *cmd;
        const char *args[4];
        size_t n_args;
        struct http_url url;
};

struct command {
        const char *name, *synopsis, *summary, *help;
        bool json, yes;
        size_t n_args, max_args; /* max_args 0: exactly n_args */
        int (*run)(struct cli *c);
};

static const struct command *find_command(const char *name);

static const char global_options_help[] =
        "Cluster options (before or after the command):\n"
        "  --address URL       serve-head's REST API, http://HOST:PORT (default: $SERVE_ADDRESS,\n"
        "                      else " DEFAULT_ADDRESS ")\n"
        "  --token-file FILE   API token for deploy and shutdown (default: $SERVE_API_TOKEN_FILE,\n"
        "                      else " DEFAULT_TOKEN_FILE "). $SERVE_API_TOKEN, if set, is the\n"
        "                      token itself and is used unless --token-file is given.\n"
        "  -h, --help          Show help\n";

static const char exit_status_help[] =
        "Exit status: 0 success, 1 failure (serve-head unreachable or it refused), 2 usage error.\n";

static int usage_error(struct cli *c, const char *fmt, ...) _printf_(2, 3);
static int usage_error(struct cli *c, const char *fmt, ...) {
        va_list ap;
        fputs("serve: ", c->err);
        va_start(ap, fmt);
        vfprintf(c->err, fmt, ap);
        va_end(ap);
        fprintf(c->err, "\nTry 'serve %s%s--help'.\n", c->cmd && find_command(c->cmd) ? c->cmd : "",
                c->cmd && find_command(c->cmd) ? " " : "");
        return 2;
}

/* Takes an option's value from "--opt=value" or the next argument. */
static const char *option_value(int argc, char **argv, int *i, const char *name, bool *ret_missing) {
        size_t l = strlen(name);
        if (strncmp(argv[*i], name, l) == 0 && argv[*i][l] == '=')
                return argv[*i] + l + 1;
        if (*i + 1 >= argc) {
                *ret_missing = true;
                return NULL;
        }
        return argv[++*i];
}

static bool option_is(const char *arg, const char *name) {
        size_t l = strlen(name);
        return strncmp(arg, name, l) == 0 && (arg[l] == 0 || arg[l] == '=');
}

/* Returns 0 or an exit status (2) after printing the usage error. */
static int parse_args(struct cli *c, int argc, char **argv) {
        bool only_args = false;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];
                bool missing = false;

                if (!only_args && streq(a, "--")) {
                        only_args = true;
                        continue;
                }
                if (!only_args && a[0] == '-' && a[1]) {
                        if (streq(a, "-h") || streq(a, "--help"))
                                c->help = true;
                        else if (streq(a, "--json"))
                                c->json = true;
                        else if (streq(a, "-y") || streq(a, "--yes"))
                                c->yes = true;
                        else if (option_is(a, "--address"))
                                c->address = option_value(argc, argv, &i, "--address", &missing);
                        else if (option_is(a, "--token-file"))
                                c->token_file = option_value(argc, argv, &i, "--token-file", &missing);
                        else
                                return usage_error(c, "unknown option '%s'", a);
                        if (missing)
                                return usage_error(c, "option '%s' needs a value", a);
                        continue;
                }
                if (!c->cmd)
                        c->cmd = a;
                else if (c->n_args < ELEMENTSOF(c->args))
                        c->args[c->n_args++] = a;
                else
                        return usage_error(c, "too many arguments");
        }
        return 0;
}

/* ---- talking to serve-head -------------------------------------------------------------------- */

/* Prints why the call failed. Returns 0 or the exit status 1. */
static int api_call(struct cli *c, const char *method, const char *path, const char *token, const char *ctype,
                    const void *body, size_t len, struct http_response *ret) {
        struct http_error e = {};
        int r = http_request(&c->url, method, path, token, ctype, body, len, ret, &e);
        if (r >= 0)
                return 0;
        if (e.unreachable)
                fprintf(c->err, "serve: cannot reach serve-head at %s: %s\n", c->address, e.message);
        else
                fprintf(c->err, "serve: %s %s%s failed: %s\n", method, c->address, path, e.message);
        return 1;
}

/* The server's explanation: the "error" field of a JSON body, else the body's text. */
static char *response_error(const struct http_response *resp) {
        cJSON *j = cJSON_ParseWithLength(resp->body, resp->body_len);
        const char *m = jstr(j, "error");
        char *s;

        if (m)
                s = cell_dup(m);
        else if (resp->body_len > 0) {
                s = strndup(resp->body, MIN(resp->body_len, (size_t)400));
                if (s) {
                        char *clean = cell_dup(s);
                        free(s);
                        s = clean;
                        for (size_t l = s ? strlen(s) : 0; l > 0 && s[l - 1] == ' '; l--)
                                s[l - 1] = 0;
                }
        } else
                s = strdup("(no message)");
        cJSON_Delete(j);
        return s;
}

/* For a non-2xx answer prints what serve-head said. Returns 0 or the exit status 1. */
static int check_response(struct cli *c, const struct http_response *resp, const char *token_source) {
        _cleanup_free_ char *m = NULL;

        if (resp->status >= 200 && resp->status < 300)
                return 0;
        m = response_error(resp);
        if (resp->status == 401 || resp->status == 403)
                fprintf(c->err, "serve: serve-head at %s refused the API token%s%s: %s\n", c->address,
                        token_source ? " from " : "", token_source ?: "", m ?: "");
        else
                fprintf(c->err, "serve: serve-head at %s answered %d: %s\n", c->address, resp->status, m ?: "");
        return 1;
}

/* Finds the token: --token-file, else $SERVE_API_TOKEN, else $SERVE_API_TOKEN_FILE, else the
 * default file. Returns 0 or the exit status 1 after saying which file could not be used. */
static int load_token(struct cli *c, char **ret_token, const char **ret_source) {
        const char *path = c->token_file, *env = getenv("SERVE_API_TOKEN");
        _cleanup_free_ char *data = NULL;
        const char *source;
        int r;

        if (!path && env) {
                data = strdup(env);
                if (!data) {
                        fprintf(c->err, "serve: out of memory\n");
                        return 1;
                }
                source = "$SERVE_API_TOKEN";
        } else {
                if (!path)
                        path = getenv("SERVE_API_TOKEN_FILE") ?: DEFAULT_TOKEN_FILE;
                r = read_file(path, TOKEN_MAX, &data, NULL);
                if (r < 0) {
                        fprintf(c->err,
                                "serve: cannot read the API token file %s: %s\n"
                                "  (%s needs serve-head's API token: use --token-file FILE, or set\n"
                                "  SERVE_API_TOKEN_FILE or SERVE_API_TOKEN)\n",
                                path, r == -EFBIG ? "file too large for a token" : strerror(-r), c->cmd);
                        return 1;
                }
                source = path;
        }

        /* Trim surrounding whitespace (files usually end in a newline). */
        char *s = data, *e;
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
                s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
                *--e = 0;
        if (!*s) {
                fprintf(c->err, "serve: the API token from %s is empty\n", source);
                return 1;
        }
        for (const char *p = s; *p; p++)
                if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
                        fprintf(c->err, "serve: the API token from %s contains whitespace or control characters\n",
                                source);
                        return 1;
                }
        memmove(data, s, strlen(s) + 1);
        *ret_token = TAKE_PTR(data);
        *ret_source = source;
        return 0;
}

static int print_json(struct cli *c, const struct http_response *resp) {
        cJSON *j = cJSON_ParseWithLength(resp->body, resp->body_len);
        char *s = j ? cJSON_Print(j) : NULL;

        if (!s) {
                /* Not JSON after all: show it as it came. */
                fwrite(resp->body, 1, resp->body_len, c->out);
                if (resp->body_len && resp->body[resp->body_len - 1] != '\n')
                        fputc('\n', c->out);
        } else
                fprintf(c->out, "%s\n", s);
        free(s);
        cJSON_Delete(j);
        return 0;
}

static int get_and_render(struct cli *c, const char *path, int (*render)(const cJSON *, FILE *)) {
        struct http_response resp = {};
        int ret = api_call(c, "GET", path, NULL, NULL, NULL, 0, &resp);
        if (ret == 0)
                ret = check_response(c, &resp, NULL);
        if (ret == 0 && c->json)
                ret = print_json(c, &resp);
        else if (ret == 0) {
                cJSON *j = cJSON_ParseWithLength(resp.body, resp.body_len);
                int r = j ? render(j, c->out) : -EINVAL;
                if (r < 0) {
                        fprintf(c->err, "serve: serve-head at %s sent an answer to GET %s that is not what serve expects%s\n",
                                c->address, path, r == -ENOMEM ? " (out of memory)" : "");
                        ret = 1;
                }
                cJSON_Delete(j);
        }
        http_response_done(&resp);
        return ret;
}

static int cmd_status(struct cli *c) { return get_and_render(c, "/api/serve/applications/", cli_render_status); }

/* `serve nodes remove NAME`: the node leaves the cluster; the head revokes its certificates. */
static int nodes_remove(struct cli *c, const char *name) {
        _cleanup_free_ char *token = NULL, *path = NULL;
        const char *source = NULL;
        struct http_response resp = {};
        int ret;

        if (!node_name_valid(name))
                return usage_error(c, "'%s' is not a node name (letters, digits, '.', '_', '-')", name);
        ret = load_token(c, &token, &source);
        if (ret)
                return ret;
        if (asprintf(&path, "/api/cluster/nodes/%s", name) < 0) {
                fprintf(c->err, "serve: out of memory\n");
                return 1;
        }
        ret = api_call(c, "DELETE", path, token, NULL, NULL, 0, &resp);
        if (ret == 0)
                ret = check_response(c, &resp, source);
        if (ret == 0)
                fprintf(c->out, "removed node %s from %s: its replicas move to other nodes, its certificates are revoked\n",
                        name, c->address);
        http_response_done(&resp);
        return ret;
}

static int cmd_nodes(struct cli *c) {
        if (c->n_args == 0)
                return get_and_render(c, "/api/cluster/nodes", cli_render_nodes);
        if (c->n_args == 2 && streq(c->args[0], "remove") && !c->json)
                return nodes_remove(c, c->args[1]);
        return usage_error(c, "usage: serve nodes [--json] | serve nodes remove NAME");
}

static int cmd_config(struct cli *c) {
        struct http_response resp = {};
        int ret = api_call(c, "GET", "/api/serve/config", NULL, NULL, NULL, 0, &resp);
        if (ret == 0)
                ret = check_response(c, &resp, NULL);
        if (ret == 0) {
                if (resp.body_len == 0)
                        fprintf(c->err, "serve: serve-head at %s has no config applied yet\n", c->address);
                fwrite(resp.body, 1, resp.body_len, c->out);
                if (resp.body_len && resp.body[resp.body_len - 1] != '\n')
                        fputc('\n', c->out);
        }
        http_response_done(&resp);
        return ret;
}

static int cmd_deploy(struct cli *c) {
        const char *file = c->args[0], *source = NULL;
        _cleanup_free_ char *data = NULL, *token = NULL;
        struct http_response resp = {};
        size_t len;
        int r, ret;

        r = read_file(file, DEPLOY_FILE_MAX, &data, &len);
        if (r < 0) {
                fprintf(c->err, "serve: cannot read %s: %s\n", file,
                        r == -EFBIG ? "larger than 16 MiB" : strerror(-r));
                return 1;
        }
        ret = load_token(c, &token, &source);
        if (ret)
                return ret;

        size_t fl = strlen(file);
        const char *ctype = fl >= 5 && strcasecmp(file + fl - 5, ".json") == 0 ? "application/json" : "application/yaml";
        ret = api_call(c, "PUT", "/api/serve/applications/", token, ctype, data, len, &resp);
        if (ret == 0 && resp.status == 400) {
                _cleanup_free_ char *m = response_error(&resp);
                /* The head names the request as the file; name the user's file instead. */
                const char *prefix = "PUT /api/serve/applications/:";
                if (m && strncmp(m, prefix, strlen(prefix)) == 0)
                        fprintf(c->err, "serve: %s:%s\n", file, m + strlen(prefix));
                else
                        fprintf(c->err, "serve: %s was rejected: %s\n", file, m ?: "");
                ret = 1;
        } else if (ret == 0)
                ret = check_response(c, &resp, source);
        if (ret == 0)
                fprintf(c->out, "deployed %s\n", file);
        http_response_done(&resp);
        return ret;
}

static int cmd_shutdown(struct cli *c) {
        _cleanup_free_ char *token = NULL;
        const char *source = NULL;
        struct http_response resp = {};
        int ret;

        if (!c->yes && !isatty(STDIN_FILENO)) {
                fprintf(c->err, "serve: not shutting down: stdin is not a terminal to confirm on; "
                                "pass --yes to shut down all applications on %s\n",
                        c->address);
                return 1;
        }
        /* A token problem should surface before the question, not after it. */
        ret = load_token(c, &token, &source);
        if (ret)
                return ret;
        if (!c->yes) {
                _cleanup_free_ char *line = NULL;
                size_t n = 0;
                fprintf(c->err, "Shut down all applications on %s? [y/N] ", c->address);
                fflush(c->err);
                ssize_t l = getline(&line, &n, stdin);
                while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r' || line[l - 1] == ' '))
                        line[--l] = 0;
                if (l <= 0 || (strcasecmp(line, "y") != 0 && strcasecmp(line, "yes") != 0)) {
                        fputs("Nothing was shut down.\n", c->err);
                        return 1;
                }
        }

        ret = api_call(c, "DELETE", "/api/serve/applications/", token, NULL, NULL, 0, &resp);
        if (ret == 0)
                ret = check_response(c, &resp, source);
        if (ret == 0)
                fprintf(c->out, "shutting down all applications on %s\n", c->address);
        http_response_done(&resp);
        return ret;
}

static const struct command commands[] = {
        { "status", "status [--json]", "Applications, deployments, replicas, pending replicas and\n"
                                       "                    the last config error, from serve-head",
          "Shows every application (status, route prefix, message), its deployments (status,\n"
          "running vs target replicas), each replica (state, node, pid), replicas that could not\n"
          "be placed and why, and the last config serve-head rejected, if any.\n"
          "\n"
          "Options:\n"
          "  --json              Print serve-head's JSON answer instead of tables\n",
          .json = true, .run = cmd_status },
        { "deploy", "deploy FILE", "Apply FILE (apps.yaml, YAML or JSON) to the cluster",
          "Sends FILE (the apps.yaml format) to serve-head, which validates it completely and then\n"
          "rolls the cluster to it. An invalid file is rejected with the reason (file:line:column)\n"
          "and the running config keeps serving. Needs the API token.\n",
          .n_args = 1, .run = cmd_deploy },
        { "config", "config", "Print the config serve-head last applied",
          "Prints the config text (apps.yaml) serve-head last applied.\n", .run = cmd_config },
        { "nodes", "nodes [--json] | nodes remove NAME", "The cluster's nodes: state, resources, replicas,\n"
          "                    heartbeat; or remove one from the cluster",
          "Lists every node that joined serve-head: name, IP, ALIVE/DEAD, CPU, memory and GPUs\n"
          "(used/total), custom resources, replicas and time since its last heartbeat.\n"
          "\n"
          "serve nodes remove NAME: the node leaves the cluster. Its replicas are placed on other\n"
          "nodes, its certificates are revoked (its links to the head and to other nodes are closed\n"
          "and it cannot reconnect; to join again it needs a new join token). Needs the API token.\n"
          "\n"
          "Options:\n"
          "  --json              Print serve-head's JSON answer instead of a table\n",
          .json = true, .max_args = 2, .run = cmd_nodes },
        { "shutdown", "shutdown [-y]", "Remove every application (drain, then stop replicas)",
          "Removes every application: proxies stop routing to them, in-flight requests finish,\n"
          "replicas stop. Asks for confirmation on a terminal; without one, --yes is required.\n"
          "Needs the API token.\n"
          "\n"
          "Options:\n"
          "  -y, --yes           Do not ask for confirmation\n",
          .yes = true, .run = cmd_shutdown },
        {},
};

void cli_usage(FILE *f) {
        fputs("Usage: serve COMMAND [OPTIONS]\n"
              "\n"
              "Ray Serve's model on bare metal: deployments, replicas and an io_uring HTTP proxy.\n"
              "\n"
              "Commands:\n"
              "  run FILE          Serve the applications of FILE (apps.yaml) in the foreground:\n"
              "                    HTTP proxy, router and replica processes, no systemd needed.\n"
              "                    SIGHUP re-reads FILE; SIGINT/SIGTERM drain and exit.\n",
              f);
        for (const struct command *c = commands; c->name; c++)
                fprintf(f, "  %-16s  %s\n", c->synopsis, c->summary);
        fputs("\nRun 'serve COMMAND --help' for a command's details.\n\n", f);
        fputs(global_options_help, f);
        fputs("\nOptions:\n"
              "  --version           Show the version\n\n",
              f);
        fputs(exit_status_help, f);
}

static void command_usage(const struct command *c, FILE *f) {
        fprintf(f, "Usage: serve %s\n\n%s\n", c->synopsis, c->help);
        fputs(global_options_help, f);
        fputc('\n', f);
        fputs(exit_status_help, f);
}

static const struct command *find_command(const char *name) {
        for (const struct command *c = commands; c->name; c++)
                if (streq(c->name, name))
                        return c;
        return NULL;
}

bool cli_is_command(const char *name) { return name && (streq(name, "help") || find_command(name)); }

int cli_main(int argc, char **argv, FILE *out, FILE *err) {
        struct cli c = { .out = out, .err = err };
        const struct command *cmd;
        int r;

        r = parse_args(&c, argc, argv);
        if (r)
                return r;

        if (c.cmd && streq(c.cmd, "help")) {
                c.help = true;
                c.cmd = c.n_args ? c.args[0] : NULL;
                c.n_args = 0;
        }
        if (!c.cmd) {
                cli_usage(c.help ? out : err);
                return c.help ? 0 : 2;
        }
        if (streq(c.cmd, "run")) {
                if (c.help)
                        return usage_error(&c, "run 'serve run --help' for run's options");
                return usage_error(&c, "'run' takes none of the cluster options; use 'serve run [OPTIONS] FILE'");
        }
        cmd = find_command(c.cmd);
        if (!cmd)
                return usage_error(&c, "unknown command '%s'", c.cmd);
        if (c.help) {
                command_usage(cmd, out);
                return 0;
        }
        if (c.json && !cmd->json)
                return usage_error(&c, "%s does not take --json", cmd->name);
        if (c.yes && !cmd->yes)
                return usage_error(&c, "%s does not take --yes", cmd->name);
        if (c.n_args < cmd->n_args)
                return usage_error(&c, "missing argument (usage: serve %s)", cmd->synopsis);
        if (c.n_args > MAX(cmd->n_args, cmd->max_args))
                return usage_error(&c, "unexpected argument '%s' (usage: serve %s)", c.args[cmd->n_args],
                                   cmd->synopsis);

        c.address = c.address ?: getenv("SERVE_ADDRESS") ?: DEFAULT_ADDRESS;
        if (http_url_parse(c.address, &c.url) < 0)
                return usage_error(&c, "invalid address '%s': expected http://HOST:PORT", c.address);
        return cmd->run(&c);
}
