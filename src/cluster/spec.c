#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctlmsg.h"
#include "describe.h"
#include "loop.h"
#include "macros.h"
#include "spec.h"
#include "util.h"

/* Describes running at once for one config: enough that a config of many applications is
 * described in a fraction of its deadline, few enough not to load a machine with user code. */
#define DESCRIBE_PARALLEL 4

/* ---- specs ---- */

void dep_spec_done(struct dep_spec *d) {
        if (!d)
                return;
        free(d->app);
        free(d->name);
        free(d->module);
        free(d->symbol);
        free(d->args_json);
        free(d->user_config_json);
        free(d->working_dir);
        strv_free(d->env, d->n_env);
        for (size_t i = 0; i < d->n_resources; i++)
                free(d->resources[i].name);
        free(d->resources);
        strv_free(d->gpus, d->n_gpus);
        memset(d, 0, sizeof *d);
}

void serve_spec_free(struct serve_spec *s) {
        if (!s)
                return;
        for (size_t i = 0; i < s->n_apps; i++) {
                free(s->apps[i].name);
                free(s->apps[i].route_prefix);
                free(s->apps[i].ingress);
        }
        free(s->apps);
        for (size_t i = 0; i < s->n_deps; i++)
                dep_spec_done(&s->deps[i]);
        free(s->deps);
        free(s);
}

struct dep_spec *spec_find(const struct serve_spec *s, const char *app, const char *name) {
        for (size_t i = 0; s && i < s->n_deps; i++)
                if (streq(s->deps[i].app, app) && streq(s->deps[i].name, name))
                        return &s->deps[i];
        return NULL;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
        const uint8_t *p = data;
        for (size_t i = 0; i < len; i++) {
                h ^= p[i];
                h *= 0x100000001b3ull;
        }
        return h;
}

void dep_spec_set_version(struct dep_spec *d) {
        struct buf b = {};
        uint64_t h = 0xcbf29ce484222325ull;

        /* Not max_ongoing: running replicas take a new one in place. */
        (void)buf_printf(&b, SIZE_MAX, "%s\n%s\n%s\n%s\n%.6g\n%.6g\n%llu\n", d->module, d->symbol, d->args_json,
                         d->working_dir ?: "", d->num_cpus, d->num_gpus, (unsigned long long)d->memory);
        (void)buf_printf(&b, SIZE_MAX, "code %016llx\n", (unsigned long long)d->module_hash);
        for (size_t i = 0; i < d->n_env; i++)
                (void)buf_printf(&b, SIZE_MAX, "env %s\n", d->env[i]);
        for (size_t i = 0; i < d->n_resources; i++)
                (void)buf_printf(&b, SIZE_MAX, "res %s=%.6g\n", d->resources[i].name, d->resources[i].amount);
        h = fnv1a(h, b.data ?: "", b.len);
        buf_free(&b);
        snprintf(d->version, sizeof d->version, "%016llx", (unsigned long long)h);
}

static char *strdup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* The file's value where it set one, else the code's default, else the system default. */
static int spec_build(const struct app_config *a, const struct deployment_config *dc, const struct description *desc,
                      const struct described_deployment *dd, const struct autoscaling_config *code_as,
                      struct dep_spec *d) {
        struct deployment_config def;
        deployment_config_defaults(&def);
        const struct deployment_config *c = dc ? dc : &def;
        unsigned set = dc ? dc->set : 0;

        memset(d, 0, sizeof *d);
        d->app = strdup(a->name);
        d->name = strdup(dd->name);
        d->module = strdup(desc->module);
        d->symbol = strdup(desc->symbol);
        d->module_hash = desc->module_hash;
        d->args_json = strdup(a->args_json ?: "{}");
        d->working_dir = strdup_or_null(a->runtime_env.working_dir);
        d->env = calloc(a->runtime_env.n_env_vars + 2, sizeof(char *));
        if (!d->app || !d->name || !d->module || !d->symbol || !d->args_json || !d->env)
                return -ENOMEM;
        for (size_t i = 0; i < a->runtime_env.n_env_vars; i++)
                if (!(d->env[d->n_env++] = strdup(a->runtime_env.env_vars[i])))
                        return -ENOMEM;
        /* The Python bridge adds this virtualenv's site-packages to sys.path. */
        if (a->runtime_env.py_executable &&
            asprintf(&d->env[d->n_env++], "SERVE_PY_EXECUTABLE=%s", a->runtime_env.py_executable) < 0) {
                d->env[--d->n_env] = NULL;
                return -ENOMEM;
        }
#define PICK(flag, field, code) ((set & (flag)) ? c->field : ((code) ? (code) : c->field))
        d->replicas = PICK(DEPLOY_SET_NUM_REPLICAS, num_replicas, dd->num_replicas);
        d->max_ongoing = PICK(DEPLOY_SET_MAX_ONGOING, max_ongoing_requests, dd->max_ongoing);
        d->max_queued = PICK(DEPLOY_SET_MAX_QUEUED, max_queued_requests, dd->max_queued);
        d->health_period_s = PICK(DEPLOY_SET_HEALTH_PERIOD, health_check_period_s, dd->health_period);
        d->health_timeout_s = PICK(DEPLOY_SET_HEALTH_TIMEOUT, health_check_timeout_s, dd->health_timeout);
        d->graceful_timeout_s = PICK(DEPLOY_SET_GRACEFUL_TIMEOUT, graceful_shutdown_timeout_s, dd->graceful_timeout);
#undef PICK
        if (set & DEPLOY_SET_ACTOR_OPTIONS) {
                d->num_cpus = c->actor.num_cpus;
                d->num_gpus = c->actor.num_gpus;
                d->memory = c->actor.memory;
                if (c->actor.n_resources) {
                        d->resources = calloc(c->actor.n_resources, sizeof *d->resources);
                        if (!d->resources)
                                return -ENOMEM;
                        for (size_t i = 0; i < c->actor.n_resources; i++) {
                                d->resources[i].amount = c->actor.resources[i].amount;
                                if (!(d->resources[i].name = strdup(c->actor.resources[i].name)))
                                        return -ENOMEM;
                                d->n_resources++;
                        }
                }
        } else {
                d->num_cpus = dd->num_cpus > 0 ? dd->num_cpus : def.actor.num_cpus;
                d->num_gpus = dd->num_gpus;
        }
        d->max_per_node = c->max_replicas_per_node;
        /* The code's autoscaling_config applies unless the file sets autoscaling_config or a
         * fixed num_replicas. */
        const struct autoscaling_config *as = dc && dc->has_autoscaling ? &dc->autoscaling
                                              : !(set & DEPLOY_SET_NUM_REPLICAS) ? code_as : NULL;
        if (as) { /* num_replicas: auto is autoscaling with Ray's defaults for it */
                d->autoscaling = true;
                d->as = *as;
                d->scales_from_zero = d->as.min_replicas == 0;
                d->replicas = d->as.initial_replicas >= 0 ? d->as.initial_replicas : d->as.min_replicas;
        }
        if (d->max_ongoing < 1)
                d->max_ongoing = 1;
        const char *uc = (set & DEPLOY_SET_USER_CONFIG) ? c->user_config_json : dd->user_config_json;
        if (uc && !(d->user_config_json = strdup(uc)))
                return -ENOMEM;
        d->line = dc ? dc->line : a->line;
        d->column = dc ? dc->column : a->column;
        dep_spec_set_version(d);
        return 0;
}

static int fail_at(char **ret_error, const struct serve_config *cfg, int line, int col, const char *field,
                   const char *fmt, ...) _printf_(6, 7);
static int fail_at(char **ret_error, const struct serve_config *cfg, int line, int col, const char *field,
                   const char *fmt, ...) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (asprintf(ret_error, "%s:%d:%d: %s: %s", cfg->path ?: "config", line, col, field, msg) < 0)
                *ret_error = NULL;
        return -EINVAL;
}

/* The code's user_config and autoscaling_config defaults (ABI 3) are checked like the file's
 * values, and an invalid one is a config error naming the deployment (at the application's
 * import_path: the code is at fault). Returns 0 (and *ret_as parsed when the code has one), or
 * -EINVAL with *ret_error. */
static int code_defaults_check(const struct serve_config *cfg, size_t i, const struct app_config *a,
                               const struct deployment_config *dc, const struct described_deployment *dd,
                               struct autoscaling_config *ret_as, char **ret_error) {
        char field[128];
        int r;

        snprintf(field, sizeof field, "applications[%zu].import_path", i);
        if (dd->user_config_json && !(dc && (dc->set & DEPLOY_SET_USER_CONFIG))) {
                cJSON *j = cJSON_Parse(dd->user_config_json);
                cJSON_Delete(j);
                if (!j)
                        return fail_at(ret_error, cfg, a->line, a->column, field,
                                       "deployment '%s' in %s: its user_config default in code is not valid JSON",
                                       dd->name, a->import_path);
        }
        if (dd->autoscaling_config_json) {
                _cleanup_free_ char *e = NULL;
                r = config_parse_autoscaling_json(dd->autoscaling_config_json, ret_as, &e);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        return fail_at(ret_error, cfg, a->line, a->column, field,
                                       "deployment '%s' in %s: its autoscaling_config default in code is invalid: %s",
                                       dd->name, a->import_path, e ? e : "invalid");
        }
        return 0;
}

/* Which application's description application i uses: the first one with the same code
 * (import_path and working_dir), so shared code is described once. */
static size_t code_owner(const struct serve_config *cfg, size_t i) {
        const struct app_config *a = &cfg->apps[i];
        for (size_t k = 0; k < i; k++)
                if (streq(cfg->apps[k].import_path, a->import_path) &&
                    streq_ptr(cfg->apps[k].runtime_env.working_dir, a->runtime_env.working_dir))
                        return k;
        return i;
}

/* Merges the config with the descriptions (desc[code_owner(i)] for application i). Returns 0
 * and *ret, or -EINVAL with *ret_error, or -ENOMEM. */
static int spec_assemble(const struct serve_config *cfg, const struct description *descs, struct serve_spec **ret,
                         char **ret_error) {
        struct serve_spec *s = calloc(1, sizeof *s);
        int r = 0;

        if (!s || !(s->apps = calloc(cfg->n_apps + 1, sizeof *s->apps))) {
                free(s);
                return -ENOMEM;
        }
        for (size_t i = 0; i < cfg->n_apps && r == 0; i++) {
                const struct app_config *a = &cfg->apps[i];
                const struct description *desc = &descs[code_owner(cfg, i)];
                char field[128];

                for (size_t k = 0; k < a->n_deployments && r == 0; k++) {
                        bool found = false;
                        for (size_t m = 0; m < desc->n_deps; m++)
                                found |= streq(desc->deps[m].name, a->deployments[k].name);
                        if (!found) {
                                snprintf(field, sizeof field, "applications[%zu].deployments[%zu].name", i, k);
                                r = fail_at(ret_error, cfg, a->deployments[k].line, a->deployments[k].column, field,
                                            "no deployment named '%s' in %s", a->deployments[k].name, a->import_path);
                        }
                }
                struct app_spec *as = &s->apps[s->n_apps++];
                as->name = strdup(a->name);
                as->route_prefix = strdup_or_null(a->route_prefix);
                as->ingress = strdup(desc->ingress ?: "");
                if (!as->name || !as->ingress || (a->route_prefix && !as->route_prefix))
                        r = -ENOMEM;
                for (size_t m = 0; m < desc->n_deps && r == 0; m++) {
                        const struct deployment_config *dc = NULL;
                        struct autoscaling_config code_as;
                        bool code_as_set = desc->deps[m].autoscaling_config_json != NULL;
                        for (size_t k = 0; k < a->n_deployments; k++)
                                if (streq(desc->deps[m].name, a->deployments[k].name))
                                        dc = &a->deployments[k];
                        struct dep_spec *nd = realloc(s->deps, (s->n_deps + 1) * sizeof *s->deps);
                        if (!nd) {
                                r = -ENOMEM;
                                break;
                        }
                        s->deps = nd;
                        r = code_defaults_check(cfg, i, a, dc, &desc->deps[m], &code_as, ret_error);
                        if (r < 0)
                                break;
                        r = spec_build(a, dc, desc, &desc->deps[m], code_as_set ? &code_as : NULL,
                                       &s->deps[s->n_deps++]);
                }
        }
        if (r < 0) {
                serve_spec_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

/* ---- resolving: describes on the loop, then the merge ---- */

struct resolve_slot {
        struct spec_resolve *res;
        size_t app;
        struct describe_job *job;      /* while its describe runs */
};

struct spec_resolve {
        struct loop *loop;
        char *replica_bin;
        const struct serve_config *cfg; /* the caller's: gone once `done` returned */
        size_t n_apps;
        double timeout_s;
        uint64_t deadline_ns;          /* for every describe of this config together */
        struct description *descs;     /* per application; filled for the owner of its code */
        struct resolve_slot *slots;    /* per application */
        size_t next, running;          /* the next application to look at; describes running */
        bool complete;
        int r;
        char *error;
        struct serve_spec *spec;
        struct loop_deferred deferred; /* the answer goes out from the loop, never from _start() */
        spec_resolve_done done;
        void *userdata;
};

static void resolve_free(struct spec_resolve *res) {
        for (size_t i = 0; i < res->n_apps; i++) {
                describe_cancel(res->slots[i].job);
                description_free(&res->descs[i]);
        }
        loop_undefer(&res->deferred);
        serve_spec_free(res->spec);
        free(res->error);
        free(res->slots);
        free(res->descs);
        free(res->replica_bin);
        free(res);
}

static void resolve_answer(struct loop_deferred *d) {
        struct spec_resolve *res = container_of(d, struct spec_resolve, deferred);

        if (res->done)
                res->done(res->userdata, res->r, res->r < 0 ? NULL : TAKE_PTR(res->spec),
                          res->r < 0 ? res->error ?: strerror(-res->r) : NULL);
        resolve_free(res);
}

/* Records the outcome once, stops the describes still running, and queues the answer. */
static void resolve_complete(struct spec_resolve *res, int r, char *error) {
        if (res->complete) {
                free(error);
                return;
        }
        res->complete = true;
        res->r = r;
        res->error = error;
        for (size_t i = 0; i < res->n_apps; i++)
                describe_cancel(TAKE_PTR(res->slots[i].job));
        res->running = 0;
        if (r == 0) {
                res->r = spec_assemble(res->cfg, res->descs, &res->spec, &res->error);
                if (res->r < 0 && !res->error)
                        res->error = strdup(strerror(-res->r));
        }
        loop_defer(res->loop, &res->deferred);
}

static void on_described(void *userdata, int r, struct description *desc, const char *error);

/* Starts describes up to DESCRIBE_PARALLEL; completes when none is left to run. */
static void resolve_launch(struct spec_resolve *res) {
        const struct serve_config *cfg = res->cfg;

        while (!res->complete && res->running < DESCRIBE_PARALLEL && res->next < cfg->n_apps) {
                size_t i = res->next++;
                const struct app_config *a = &cfg->apps[i];
                struct resolve_slot *sl = &res->slots[i];
                char *err = NULL, *msg = NULL, field[128];
                int r;

                if (code_owner(cfg, i) != i)
                        continue;
                sl->res = res;
                sl->app = i;
                r = describe_start(res->loop, res->replica_bin, a->import_path, a->runtime_env.working_dir,
                                   res->deadline_ns, on_described, sl, &sl->job, &err);
                if (r < 0) {
                        snprintf(field, sizeof field, "applications[%zu].import_path", i);
                        (void)fail_at(&msg, cfg, a->line, a->column, field, "cannot load %s: %s", a->import_path,
                                      err ?: strerror(-r));
                        free(err);
                        resolve_complete(res, r == -ENOMEM ? r : -EINVAL, msg);
                        return;
                }
                res->running++;
        }
        if (!res->complete && res->running == 0 && res->next == cfg->n_apps)
                resolve_complete(res, 0, NULL);
}

static void on_described(void *userdata, int r, struct description *desc, const char *error) {
        struct resolve_slot *sl = userdata;
        struct spec_resolve *res = sl->res;
        const struct app_config *a = &res->cfg->apps[sl->app];
        char *msg = NULL, field[128], why[256];

        sl->job = NULL;
        res->running--;
        if (r < 0) {
                if (r == -ETIMEDOUT)
                        snprintf(why, sizeof why, "describe timed out after %g s", res->timeout_s);
                snprintf(field, sizeof field, "applications[%zu].import_path", sl->app);
                (void)fail_at(&msg, res->cfg, a->line, a->column, field, "cannot load %s: %s", a->import_path,
                              r == -ETIMEDOUT ? why : error ?: strerror(-r));
                resolve_complete(res, r == -ETIMEDOUT || r == -ENOMEM ? r : -EINVAL, msg);
                return;
        }
        res->descs[sl->app] = *desc;
        resolve_launch(res);
}

int spec_resolve_start(struct loop *loop, const char *replica_bin, const struct serve_config *cfg, double timeout_s,
                       spec_resolve_done done, void *userdata, struct spec_resolve **ret) {
        struct spec_resolve *res = calloc(1, sizeof *res);

        if (!res)
                return -ENOMEM;
        res->loop = loop;
        res->cfg = cfg;
        res->n_apps = cfg->n_apps;
        res->timeout_s = timeout_s > 0 ? timeout_s : SPEC_DESCRIBE_TIMEOUT_S;
        res->deadline_ns = now_ns() + sec_to_ns(res->timeout_s);
        res->replica_bin = strdup(replica_bin);
        res->descs = calloc(cfg->n_apps + 1, sizeof *res->descs);
        res->slots = calloc(cfg->n_apps + 1, sizeof *res->slots);
        res->deferred.fn = resolve_answer;
        res->done = done;
        res->userdata = userdata;
        if (!res->replica_bin || !res->descs || !res->slots) {
                free(res->replica_bin);
                free(res->descs);
                free(res->slots);
                free(res);
                return -ENOMEM;
        }
        resolve_launch(res);
        *ret = res;
        return 0;
}

void spec_resolve_cancel(struct spec_resolve *res) {
        if (!res)
                return;
        res->done = NULL;
        if (!res->complete) {
                resolve_complete(res, -ECANCELED, NULL);
                return; /* freed from the loop, like an answer */
        }
        /* Its answer is queued: it frees itself when the loop runs it. */
}

struct sync_answer {
        bool done;
        int r;
        struct serve_spec *spec;
        char *error;
};

static void sync_done(void *userdata, int r, struct serve_spec *spec, const char *error) {
        struct sync_answer *a = userdata;
        a->done = true;
        a->r = r;
        a->spec = spec;
        a->error = error ? strdup(error) : NULL;
}

int spec_resolve_timeout(const char *replica_bin, const struct serve_config *cfg, double timeout_s,
                         struct serve_spec **ret, char **ret_error) {
        struct sync_answer a = {};
        struct spec_resolve *res;
        struct loop l;
        int r;

        *ret_error = NULL;
        /* A loop of its own: the describes run as they do for a daemon's loop, deadline included. */
        r = loop_init(&l, 64);
        if (r < 0)
                return error_set(r, ret_error, "cannot set up io_uring: %s", strerror(-r));
        r = spec_resolve_start(&l, replica_bin, cfg, timeout_s, sync_done, &a, &res);
        /* The first round does not wait: with nothing to describe the answer is already queued. */
        for (uint64_t wait = 0; r >= 0 && !a.done; wait = NSEC_PER_SEC) {
                r = loop_run_once(&l, wait);
                if (r < 0) {
                        spec_resolve_cancel(res);
                        (void)error_set(r, ret_error, "event loop failed: %s", strerror(-r));
                }
        }
        /* Killed describes are reaped and cancelled reads end before the loop goes away. */
        loop_drain(&l, NSEC_PER_SEC);
        loop_free(&l);
        if (r < 0)
                return r;
        if (a.r < 0) {
                *ret_error = a.error;
                return a.r;
        }
        free(a.error);
        *ret = a.spec;
        return 0;
}

int spec_resolve(const char *replica_bin, const struct serve_config *cfg, struct serve_spec **ret, char **ret_error) {
        return spec_resolve_timeout(replica_bin, cfg, SPEC_DESCRIBE_TIMEOUT_S, ret, ret_error);
}

/* ---- JSON ---- */

cJSON *dep_spec_to_json(const struct dep_spec *d) {
        cJSON *j = cJSON_CreateObject(), *env, *res, *gpus;
        bool ok = j != NULL;

        ok = ok && cJSON_AddStringToObject(j, "app", d->app) && cJSON_AddStringToObject(j, "name", d->name) &&
             cJSON_AddStringToObject(j, "module", d->module) && cJSON_AddStringToObject(j, "symbol", d->symbol) &&
             cJSON_AddStringToObject(j, "args", d->args_json) &&
             (d->user_config_json ? cJSON_AddStringToObject(j, "user_config", d->user_config_json) != NULL
                                  : cJSON_AddNullToObject(j, "user_config") != NULL) &&
             (d->working_dir ? cJSON_AddStringToObject(j, "working_dir", d->working_dir) != NULL
                             : cJSON_AddNullToObject(j, "working_dir") != NULL) &&
             (env = cJSON_AddArrayToObject(j, "env")) && cJSON_AddNumberToObject(j, "max_ongoing", d->max_ongoing) &&
             cJSON_AddNumberToObject(j, "max_queued", d->max_queued) &&
             cJSON_AddNumberToObject(j, "health_period_s", d->health_period_s) &&
             cJSON_AddNumberToObject(j, "health_timeout_s", d->health_timeout_s) &&
             cJSON_AddNumberToObject(j, "graceful_timeout_s", d->graceful_timeout_s) &&
             cJSON_AddNumberToObject(j, "num_cpus", d->num_cpus) && cJSON_AddNumberToObject(j, "num_gpus", d->num_gpus) &&
             cJSON_AddNumberToObject(j, "memory", (double)d->memory) && (res = cJSON_AddObjectToObject(j, "resources")) &&
             cJSON_AddNumberToObject(j, "max_per_node", d->max_per_node) &&
             cJSON_AddStringToObject(j, "version", d->version) && cJSON_AddNumberToObject(j, "replicas", d->replicas) &&
             (!d->scales_from_zero || cJSON_AddTrueToObject(j, "scales_from_zero")) &&
             (gpus = cJSON_AddArrayToObject(j, "gpus"));
        for (size_t i = 0; ok && i < d->n_env; i++)
                ok = cJSON_AddItemToArray(env, cJSON_CreateString(d->env[i]));
        for (size_t i = 0; ok && i < d->n_resources; i++)
                ok = cJSON_AddNumberToObject(res, d->resources[i].name, d->resources[i].amount) != NULL;
        for (size_t i = 0; ok && i < d->n_gpus; i++)
                ok = cJSON_AddItemToArray(gpus, cJSON_CreateString(d->gpus[i]));
        if (!ok) {
                cJSON_Delete(j);
                return NULL;
        }
        return j;
}

#define NAME_MAX_LEN 200
#define TEXT_MAX (1u << 20)

static int dup_field(const cJSON *j, const char *key, size_t max, bool required, char **ret, char *err, size_t errlen) {
        const char *s = NULL;
        int r = ctl_get_string(j, key, max, required, &s, err, errlen);
        if (r < 0)
                return r;
        if (s && !(*ret = strdup(s)))
                return -ENOMEM;
        return 0;
}

int dep_spec_from_json(const cJSON *j, struct dep_spec *d, char *err, size_t errlen) {
        const cJSON *env = NULL, *res = NULL, *gpus = NULL, *it;
        const char *version = NULL;
        long long v;
        int r;

        memset(d, 0, sizeof *d);
        if (!cJSON_IsObject(j)) {
                snprintf(err, errlen, "deployment is not an object");
                return -EINVAL;
        }
        if ((r = dup_field(j, "app", NAME_MAX_LEN, true, &d->app, err, errlen)) < 0 ||
            (r = dup_field(j, "name", NAME_MAX_LEN, true, &d->name, err, errlen)) < 0 ||
            (r = dup_field(j, "module", PATH_MAX, true, &d->module, err, errlen)) < 0 ||
            (r = dup_field(j, "symbol", NAME_MAX_LEN, true, &d->symbol, err, errlen)) < 0 ||
            (r = dup_field(j, "args", TEXT_MAX, true, &d->args_json, err, errlen)) < 0 ||
            (r = dup_field(j, "user_config", TEXT_MAX, false, &d->user_config_json, err, errlen)) < 0 ||
            (r = dup_field(j, "working_dir", PATH_MAX, false, &d->working_dir, err, errlen)) < 0)
                goto fail;
        if ((r = ctl_get_int(j, "max_ongoing", 1, 1 << 20, true, &v, err, errlen)) < 0)
                goto fail;
        d->max_ongoing = (int)v;
        if ((r = ctl_get_int(j, "max_queued", -1, INT_MAX, true, &v, err, errlen)) < 0)
                goto fail;
        d->max_queued = (int)v;
        if ((r = ctl_get_int(j, "replicas", 0, 1 << 20, true, &v, err, errlen)) < 0)
                goto fail;
        d->replicas = (int)v;
        v = 0;
        if ((r = ctl_get_int(j, "max_per_node", 0, 1 << 20, false, &v, err, errlen)) < 0)
                goto fail;
        d->max_per_node = (int)v;
        if ((r = ctl_get_bool(j, "scales_from_zero", false, &d->scales_from_zero, err, errlen)) < 0)
                goto fail;
        if ((r = ctl_get_double(j, "health_period_s", 1e-3, 1e9, true, &d->health_period_s, err, errlen)) < 0 ||
            (r = ctl_get_double(j, "health_timeout_s", 1e-3, 1e9, true, &d->health_timeout_s, err, errlen)) < 0 ||
            (r = ctl_get_double(j, "graceful_timeout_s", 0, 1e9, true, &d->graceful_timeout_s, err, errlen)) < 0 ||
            (r = ctl_get_double(j, "num_cpus", 0, 1e6, false, &d->num_cpus, err, errlen)) < 0 ||
            (r = ctl_get_double(j, "num_gpus", 0, 1e4, false, &d->num_gpus, err, errlen)) < 0)
                goto fail;
        double mem = 0;
        if ((r = ctl_get_double(j, "memory", 0, 1e18, false, &mem, err, errlen)) < 0)
                goto fail;
        d->memory = (uint64_t)mem;
        if ((r = ctl_get_array(j, "env", 4096, false, &env, err, errlen)) < 0 ||
            (r = ctl_get_object(j, "resources", false, &res, err, errlen)) < 0 ||
            (r = ctl_get_array(j, "gpus", 1 << 16, false, &gpus, err, errlen)) < 0 ||
            (r = ctl_get_string(j, "version", 16, true, &version, err, errlen)) < 0)
                goto fail;
        snprintf(d->version, sizeof d->version, "%s", version);
        d->env = calloc((size_t)cJSON_GetArraySize(env) + 1, sizeof(char *));
        d->gpus = calloc((size_t)cJSON_GetArraySize(gpus) + 1, sizeof(char *));
        d->resources = calloc((size_t)cJSON_GetArraySize(res) + 1, sizeof *d->resources);
        if (!d->env || !d->gpus || !d->resources) {
                r = -ENOMEM;
                goto fail;
        }
        cJSON_ArrayForEach(it, env) {
                if (!cJSON_IsString(it) || !strchr(it->valuestring, '=') || it->valuestring[0] == '=') {
                        snprintf(err, errlen, "field env: items must be \"KEY=VALUE\" strings");
                        r = -EINVAL;
                        goto fail;
                }
                if (!(d->env[d->n_env++] = strdup(it->valuestring))) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        cJSON_ArrayForEach(it, gpus) {
                if (!cJSON_IsString(it) || strlen(it->valuestring) > 64 ||
                    strspn(it->valuestring, "0123456789,") != strlen(it->valuestring)) {
                        snprintf(err, errlen, "field gpus: items must be GPU index lists like \"0\" or \"0,1\"");
                        r = -EINVAL;
                        goto fail;
                }
                if (!(d->gpus[d->n_gpus++] = strdup(it->valuestring))) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        cJSON_ArrayForEach(it, res) {
                if (!cJSON_IsNumber(it) || it->valuedouble < 0 || strlen(it->string) > NAME_MAX_LEN) {
                        snprintf(err, errlen, "field resources: amounts must be numbers >= 0");
                        r = -EINVAL;
                        goto fail;
                }
                d->resources[d->n_resources].amount = it->valuedouble;
                if (!(d->resources[d->n_resources++].name = strdup(it->string))) {
                        r = -ENOMEM;
                        goto fail;
                }
        }
        return 0;
fail:
        dep_spec_done(d);
        return r;
}

char *spec_find_replica_bin(void) {
        const char *env = getenv("SERVE_REPLICA_BIN");
        char exe[PATH_MAX], *p;
        ssize_t n;

        if (env && *env)
                return strdup(env);
        n = readlink("/proc/self/exe", exe, sizeof exe - 32);
        if (n > 0) {
                exe[n] = 0;
                p = strrchr(exe, '/');
                if (p) {
                        strcpy(p + 1, "serve-replica");
                        if (access(exe, X_OK) == 0)
                                return strdup(exe);
                }
        }
        return strdup(LIBEXECDIR "/serve-replica");
}
