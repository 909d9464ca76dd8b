/* Applying a config: apps.yaml at startup and on SIGHUP, or a PUT/DELETE through the API.
 *
 * Resolving a config runs `serve-replica --describe` (user code) for its applications, which
 * may take long or hang. At startup the head waits for it (nothing to serve yet, bounded by the
 * describe deadline). Afterwards it never waits: the describes run as child processes watched
 * from the loop (spec_resolve_start), while the head keeps taking reports, serving its API and
 * petting the watchdog; the config is installed when they finish, or refused when they fail or
 * pass the deadline. A PUT is answered then (a deferred HTTP response).
 *
 * One config is described at a time. A PUT or DELETE meanwhile is refused with 409 (its sender
 * learns at once and may retry; queueing it would answer it with someone else's outcome). A
 * SIGHUP meanwhile is remembered and runs once the current one is done, re-reading the file
 * then: the latest file wins, however many signals came. */
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "head.h"
#include "log.h"
#include "macros.h"
#include "yamltree.h"

struct deploy {
        struct head *h;
        struct spec_resolve *resolve;
        struct serve_config *cfg;
        char *text;
        const char *source;            /* "file" or "api" */
        char *what;                    /* names it in log lines */
        struct httpd_deferred *answer; /* API deploys: where the outcome goes */
};

static void deploy_free(struct deploy *d) {
        if (!d)
                return;
        config_free(d->cfg);
        free(d->text);
        free(d->what);
        free(d);
}

void record_config_error(struct head *h, const char *msg) {
        /* The caller logged it, with what it means for the running config. */
        event_log_add(&h->events, -1, "config_error", "config", "", "%s", msg);
        free(h->config_error);
        h->config_error = strdup(msg);
        h->config_error_at = wall_now();
}

/* Whether two specs would have workers run exactly the same: the same text can resolve to new
 * code (a library replaced in place) or new code defaults. */
static bool spec_same(const struct serve_spec *a, const struct serve_spec *b) {
        if (!a || !b || a->n_apps != b->n_apps || a->n_deps != b->n_deps)
                return false;
        for (size_t i = 0; i < a->n_apps; i++)
                if (!streq(a->apps[i].name, b->apps[i].name) || !streq_ptr(a->apps[i].route_prefix, b->apps[i].route_prefix) ||
                    !streq(a->apps[i].ingress, b->apps[i].ingress))
                        return false;
        for (size_t i = 0; i < a->n_deps; i++) {
                cJSON *ja = dep_spec_to_json(&a->deps[i]), *jb = dep_spec_to_json(&b->deps[i]);
                bool same = ja && jb && cJSON_Compare(ja, jb, true);
                cJSON_Delete(ja);
                cJSON_Delete(jb);
                if (!same)
                        return false;
        }
        return true;
}

/* The top-level fields of two deployments' JSON that differ, as "a, b, c" (at most len bytes). */
static void changed_fields(const cJSON *a, const cJSON *b, char *out, size_t len) {
        const cJSON *it;
        size_t used = 0;

        out[0] = 0;
        cJSON_ArrayForEach(it, a) {
                const cJSON *o = cJSON_GetObjectItemCaseSensitive(b, it->string);
                if (o && cJSON_Compare(it, o, true))
                        continue;
                int w = snprintf(out + used, len - used, "%s%s", used ? ", " : "", it->string);
                if (w < 0 || (size_t)w >= len - used)
                        break;
                used += (size_t)w;
        }
}

/* Tells, per deployment, what installing `next` over `cur` does: added, removed, rolling (new
 * replicas replace the old ones: code or options that need a new process changed), in place
 * (the running replicas take the change) or identical; one event per change. Fills counts. */
static void diff_events(struct head *h, const struct serve_spec *cur, const struct serve_spec *next, unsigned counts[5]) {
        enum { ADDED, REMOVED, ROLLING, IN_PLACE, IDENTICAL };

        for (size_t i = 0; i < next->n_deps; i++) {
                const struct dep_spec *d = &next->deps[i], *o = spec_find(cur, d->app, d->name);
                _cleanup_free_ char *key = dep_key(d->app, d->name);
                if (!o) {
                        counts[ADDED]++;
                        event_log_add(&h->events, LOG_INFO, "deployment_changed", key ?: d->name, "",
                                      "deployment %s added: %d replica(s)", key ?: d->name, d->replicas);
                        continue;
                }
                cJSON *ja = dep_spec_to_json(o), *jb = dep_spec_to_json(d);
                char what[256] = "";
                if (ja && jb)
                        changed_fields(jb, ja, what, sizeof what);
                cJSON_Delete(ja);
                cJSON_Delete(jb);
                if (!streq(o->version, d->version)) {
                        counts[ROLLING]++;
                        event_log_add(&h->events, LOG_INFO, "deployment_changed", key ?: d->name, "",
                                      "deployment %s: rolling to new replicas (changed: %s)", key ?: d->name,
                                      what[0] ? what : "code");
                } else if (what[0]) {
                        counts[IN_PLACE]++;
                        event_log_add(&h->events, LOG_INFO, "deployment_changed", key ?: d->name, "",
                                      "deployment %s: in place, the running replicas take it (changed: %s)", key ?: d->name,
                                      what);
                } else
                        counts[IDENTICAL]++;
        }
        for (size_t i = 0; cur && i < cur->n_deps; i++) {
                const struct dep_spec *o = &cur->deps[i];
                if (spec_find(next, o->app, o->name))
                        continue;
                _cleanup_free_ char *key = dep_key(o->app, o->name);
                counts[REMOVED]++;
                event_log_add(&h->events, LOG_INFO, "deployment_changed", key ?: o->name, "",
                              "deployment %s removed: its replicas drain and stop", key ?: o->name);
        }
}

/* Replicas of (app, name) in the assignment (from the state file at startup): what a restarted
 * head's autoscaler starts from. -1 when it has none. */
static int placed_count(void *userdata, const char *app, const char *name) {
        struct head *h = userdata;
        _cleanup_free_ char *key = dep_key(app, name);
        int n = -1;

        for (size_t i = 0; key && i < h->n_assign; i++) {
                if (!h->assign[i].key || !streq(h->assign[i].key, key))
                        continue;
                n = 0;
                for (size_t k = 0; k < h->assign[i].n_slots; k++)
                        n += (int)h->assign[i].slots[k].count;
        }
        return n;
}

/* Makes cfg and its resolved spec the running config (takes both). */
static void install_config(struct head *h, struct serve_config *cfg, struct serve_spec *spec, const char *text,
                           const char *source) {
        /* Autoscaled deployments keep the count they scaled to (within the new bounds). */
        (void)scaler_sync(h->scaler, spec, (double)now_ns() / 1e9, placed_count, h);
        /* An identical config changes nothing, not even the epoch. */
        bool same = h->cfg_text && streq(h->cfg_text, text) && spec_same(h->spec, spec);
        unsigned counts[5] = { 0 };
        diff_events(h, h->spec, spec, counts);
        config_free(h->cfg);
        h->cfg = cfg;
        serve_spec_free(h->spec);
        h->spec = spec;
        if (!same) {
                cJSON *j = NULL;
                free(h->cfg_text);
                h->cfg_text = strdup(text);
                /* Parsed once already: it converts (NULL only when out of memory). */
                (void)yt_text_to_json(cfg->path ?: "config", text, strlen(text), &j, NULL);
                cJSON_Delete(h->cfg_json);
                h->cfg_json = j;
                h->config_epoch++;
                h->deployed_at = wall_now();
        }
        free(h->cfg_source);
        h->cfg_source = strdup(source);
        free(h->config_error);
        h->config_error = NULL;
        build_config_message(h);
        h->dirty = true;
        event_log_add(&h->events, LOG_INFO, "deploy", "config", "",
                      "applied %s config: %zu application(s), %zu deployment(s)%s: %u added, %u removed, %u rolling, "
                      "%u in place, %u identical",
                      source, spec->n_apps, spec->n_deps, same ? " (unchanged)" : "", counts[0], counts[1], counts[2],
                      counts[3], counts[4]);
}

int apply_config(struct head *h, struct serve_config *cfg, const char *text, const char *source, char **ret_error) {
        struct serve_spec *spec = NULL;
        int r;

        r = spec_resolve_timeout(h->replica_bin, cfg, h->describe_timeout_s, &spec, ret_error);
        if (r < 0) {
                config_free(cfg);
                return r;
        }
        install_config(h, cfg, spec, text, source);
        return 0;
}

static int read_apps_file(struct head *h, struct serve_config **ret_cfg, char **ret_text, char **ret_error) {
        _cleanup_free_ char *text = NULL;
        size_t len;
        int r;

        r = read_file(h->apps_path, 16u << 20, &text, &len);
        if (r < 0)
                return error_set(r, ret_error, "%s: cannot read: %s", h->apps_path, strerror(-r));
        r = config_parse(h->apps_path, text, len, ret_cfg, ret_error);
        if (r < 0)
                return r;
        *ret_text = TAKE_PTR(text);
        return 0;
}

int load_apps_file(struct head *h, char **ret_error) {
        _cleanup_free_ char *text = NULL;
        struct serve_config *cfg = NULL;
        int r;

        r = read_apps_file(h, &cfg, &text, ret_error);
        if (r < 0)
                return r;
        return apply_config(h, cfg, text, "file", ret_error);
}

static void answer_json(struct deploy *d, int status, const char *error) {
        struct httpd_response resp = { .status = status };

        if (!d->answer)
                return;
        if (error)
                httpd_respond_error(&resp, status, error);
        else {
                cJSON *j = cJSON_CreateObject();
                cJSON_AddBoolToObject(j, "ok", true);
                httpd_respond_json(&resp, status, j);
                cJSON_Delete(j);
        }
        httpd_answer(TAKE_PTR(d->answer), &resp);
        buf_free(&resp.body);
}

static void on_resolved(void *userdata, int r, struct serve_spec *spec, const char *error) {
        struct deploy *d = userdata;
        struct head *h = d->h;
        bool file = streq(d->source, "file");

        h->deploy = NULL;
        d->resolve = NULL;
        if (r < 0) {
                if (file)
                        log_error("reload failed, the running config stays: %s", error);
                else
                        log_error("%s rejected, the running config stays: %s", d->what, error);
                record_config_error(h, error);
                /* 504: the code did not describe itself in time, the config may be fine. */
                answer_json(d, r == -ETIMEDOUT ? 504 : r == -EINVAL ? 400 : 500, error);
                if (file)
                        sd_notify(0, "READY=1\nSTATUS=reload failed; running the previous config (see serve status)");
                deploy_free(d);
                return;
        }
        install_config(h, TAKE_PTR(d->cfg), spec, d->text, d->source);
        log_info("%s applied", d->what);
        answer_json(d, 200, NULL);
        sd_notifyf(0, "READY=1\nSTATUS=serving %zu application(s)", h->spec->n_apps);
        deploy_free(d);
}

/* Starts describing cfg (taken) off the loop. Returns 0, or a negative errno (logged by the
 * caller; cfg freed). */
static int deploy_start(struct head *h, struct serve_config *cfg, const char *text, size_t len, const char *source,
                        char *what, struct deploy **ret) {
        struct deploy *d = calloc(1, sizeof *d);
        int r;

        if (!d || !(d->text = strndup(text, len))) {
                free(d);
                free(what);
                config_free(cfg);
                return -ENOMEM;
        }
        d->h = h;
        d->cfg = cfg;
        d->source = source;
        d->what = what;
        r = spec_resolve_start(&h->loop, h->replica_bin, d->cfg, h->describe_timeout_s, on_resolved, d, &d->resolve);
        if (r < 0) {
                deploy_free(d);
                return r;
        }
        h->deploy = d;
        *ret = d;
        return 0;
}

void deploy_reload(struct head *h) {
        _cleanup_free_ char *text = NULL;
        struct serve_config *cfg = NULL;
        struct deploy *d;
        char *err = NULL, *what = NULL;
        int r;

        sd_notify(0, "RELOADING=1");
        event_log_add(&h->events, LOG_INFO, "reload", "config", "", "reloading %s", h->apps_path);
        (void)groups_reload(h);
        r = read_apps_file(h, &cfg, &text, &err);
        if (r >= 0 && asprintf(&what, "reload of %s", h->apps_path) < 0)
                r = -ENOMEM;
        if (r >= 0)
                r = deploy_start(h, TAKE_PTR(cfg), text, strlen(text), "file", TAKE_PTR(what), &d);
        if (r < 0) {
                log_error("reload failed, the running config stays: %s", err ? err : strerror(-r));
                record_config_error(h, err ? err : strerror(-r));
                free(err);
                config_free(cfg);
                sd_notify(0, "READY=1\nSTATUS=reload failed; running the previous config (see serve status)");
        }
}

void deploy_from_api(struct head *h, const struct httpd_request *rq, const char *text, size_t len,
                     struct httpd_response *resp) {
        const char *name = text ? "PUT /api/serve/applications/" : "DELETE /api/serve/applications/";
        _cleanup_free_ char *copy = NULL;
        struct serve_config *cfg = NULL;
        struct deploy *d;
        char *err = NULL, *what = NULL;
        int r;

        if (h->deploy) {
                log_warning("%s from %s refused: %s is still being described", name, rq->peer, h->deploy->what);
                httpd_respond_error(resp, 409, "another configuration is being applied (its code is being described); "
                                               "try again when it is done");
                return;
        }
        if (!text) {
                text = "applications: []\n";
                len = strlen(text);
        }
        copy = strndup(text, len);
        r = copy ? config_parse(name, copy, len, &cfg, &err) : -ENOMEM;
        if (r >= 0 && asprintf(&what, "%s from %s", name, rq->peer) < 0)
                r = -ENOMEM;
        if (r >= 0)
                r = deploy_start(h, TAKE_PTR(cfg), copy, len, "api", TAKE_PTR(what), &d);
        if (r < 0) {
                log_error("%s rejected, the running config stays: %s", name, err ? err : strerror(-r));
                record_config_error(h, err ? err : strerror(-r));
                httpd_respond_error(resp, r == -EINVAL ? 400 : 500, err ? err : strerror(-r));
                free(err);
                config_free(cfg);
                return;
        }
        d->answer = httpd_defer(rq);
        if (!d->answer) {
                /* Cannot wait for the outcome: say it was accepted; serve status tells the rest. */
                cJSON *j = cJSON_CreateObject();
                cJSON_AddBoolToObject(j, "ok", true);
                cJSON_AddBoolToObject(j, "pending", true);
                httpd_respond_json(resp, 202, j);
                cJSON_Delete(j);
        }
}

void deploy_cancel(struct head *h) {
        struct deploy *d = TAKE_PTR(h->deploy);

        if (!d)
                return;
        log_warning("%s abandoned: the head is stopping", d->what);
        spec_resolve_cancel(d->resolve);
        answer_json(d, 503, "the head is stopping; the running config stays");
        deploy_free(d);
}
