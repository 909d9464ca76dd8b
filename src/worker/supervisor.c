#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "log.h"
#include "proto.h"
#include "supervisor.h"
#include "replica_link.h"
#include "spec.h"
#include "cgroup.h"
#include "scaler.h"
#include "loadmon.h"
#include "events.h"

#define RING_SIZE (1u << 20)
#define STARTUP_TIMEOUT_NS (120 * NSEC_PER_SEC)
#define BACKOFF_MAX_NS (30 * NSEC_PER_SEC)
#define CTL_BUF 65536

struct supervisor {
        struct loop *loop;
        struct router *router;
        char *replica_bin;
        char *node;                /* in a cluster: replica ids end in @node */
        struct cgroups *cg;        /* replica cgroups, when serve-worker runs delegated */
        struct loadmon *lm;        /* CPU time and run-queue delay per replica, or NULL */
        struct list deployments;
        struct event_log events;   /* what happened to replicas, for the head (reports) */
        unsigned n_from_zero;      /* deployments that scale from zero (some may, once retired) */
        char **ingress;            /* "app\0Ingress" of every application (handle calls to "APP/") */
        size_t n_ingress;
        bool stopping;
};

static void ingress_free(struct supervisor *s) {
        for (size_t i = 0; i < s->n_ingress; i++)
                free(s->ingress[i]);
        free(s->ingress);
        s->ingress = NULL;
        s->n_ingress = 0;
}

/* Remembers each application's ingress (kept as it was when out of memory). */
static void ingress_set(struct supervisor *s, const struct serve_spec *spec) {
        char **t = calloc(spec->n_apps + 1, sizeof *t);
        size_t n = 0;

        if (!t)
                return;
        for (size_t i = 0; i < spec->n_apps; i++) {
                const struct app_spec *a = &spec->apps[i];
                size_t al = strlen(a->name), il = a->ingress ? strlen(a->ingress) : 0;
                if (!il || !(t[n] = malloc(al + il + 2)))
                        continue;
                memcpy(t[n], a->name, al + 1);
                memcpy(t[n] + al + 1, a->ingress, il + 1);
                n++;
        }
        ingress_free(s);
        s->ingress = t;
        s->n_ingress = n;
}

/* An event about replica rep: logged once, and sent to the head in the next report. */
_printf_(4, 5) static void rep_event(const struct replica *rep, int level, const char *kind, const char *fmt, ...) {
        char subject[EVENT_SUBJECT_MAX];
        va_list ap;

        snprintf(subject, sizeof subject, "%s/%s", rep->dep->app, rep->dep->name);
        va_start(ap, fmt);
        event_log_addv(&rep->dep->sup->events, level, kind, subject, "", fmt, ap);
        va_end(ap);
}

struct event_log *supervisor_events(struct supervisor *s) { return &s->events; }

/* ---- deployments ---- */

static void deployment_free(struct deployment *d) {
        if (!d)
                return;
        list_del(&d->link);
        free(d->app);
        free(d->name);
        free(d->module);
        free(d->symbol);
        free(d->args_json);
        free(d->user_config_json);
        free(d->working_dir);
        strv_free(d->env, d->n_env);
        strv_free(d->gpus, d->n_gpus);
        free(d);
}

static char **strv_copy(char *const *v, size_t n) {
        char **c = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; c && i < n; i++)
                if (!(c[i] = strdup(v[i]))) {
                        for (size_t k = 0; k < i; k++)
                                free(c[k]);
                        free(c);
                        return NULL;
                }
        return c;
}

static int set_gpus(struct deployment *d, const struct dep_spec *sp) {
        char **g = strv_copy(sp->gpus, sp->n_gpus);
        if (!g)
                return -ENOMEM;
        strv_free(d->gpus, d->n_gpus);
        d->gpus = g;
        d->n_gpus = sp->n_gpus;
        return 0;
}

static struct deployment *deployment_build(const struct dep_spec *sp) {
        struct deployment *d = calloc(1, sizeof *d);
        if (!d)
                return NULL;
        list_init(&d->replicas);
        list_init(&d->queue);
        list_init(&d->link);
        d->app = strdup(sp->app);
        d->name = strdup(sp->name);
        d->module = strdup(sp->module);
        d->symbol = strdup(sp->symbol);
        d->args_json = strdup(sp->args_json);
        d->working_dir = sp->working_dir ? strdup(sp->working_dir) : NULL;
        d->env = strv_copy(sp->env, sp->n_env);
        d->n_env = sp->n_env;
        d->target_replicas = sp->replicas;
        d->scales_from_zero = sp->scales_from_zero;
        d->num_cpus = sp->num_cpus;
        d->memory = sp->memory;
        d->max_ongoing = sp->max_ongoing;
        d->max_queued = sp->max_queued;
        d->health_period_s = sp->health_period_s;
        d->health_timeout_s = sp->health_timeout_s;
        d->graceful_timeout_s = sp->graceful_timeout_s;
        if (d->graceful_timeout_s > SUPERVISOR_SYSTEMD_STOP_S && getenv("INVOCATION_ID"))
                log_warning("deployment %s/%s: graceful_shutdown_timeout_s %.0f is longer than serve-worker.service lets a "
                            "stop take (TimeoutStopSec=15min): systemd kills what is left after %.0fs",
                            sp->app, sp->name, d->graceful_timeout_s, SUPERVISOR_SYSTEMD_STOP_S);
        d->user_config_json = sp->user_config_json ? strdup(sp->user_config_json) : NULL;
        memcpy(d->version, sp->version, sizeof d->version);
        if (!d->app || !d->name || !d->module || !d->symbol || !d->args_json || !d->env ||
            (sp->user_config_json && !d->user_config_json) || set_gpus(d, sp) < 0) {
                deployment_free(d);
                return NULL;
        }
        return d;
}

static struct deployment *find_live(struct supervisor *s, const char *app, const char *name) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                if (!d->retiring && streq(d->app, app) && streq(d->name, name))
                        return d;
        }
        return NULL;
}

/* ---- replica processes ---- */

static void replica_maybe_free(struct replica *rep);

static void send_ctl(struct replica *rep, cJSON *msg) {
        char *txt = cJSON_PrintUnformatted(msg);
        if (txt) {
                if (send(rep->ctl_fd, txt, strlen(txt), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
                        log_warning_errno(errno, "replica %s: cannot send control message: %m", rep->id);
                free(txt);
        }
        cJSON_Delete(msg);
}

static void replica_kill(struct replica *rep, int status, const char *why) {
        if (rep->state == REPLICA_DEAD)
                return;
        if (rep->state == REPLICA_READY)
                rep->dep->n_ready--;
        rep->state = REPLICA_DEAD;
        if (rep->pid > 0)
                kill(rep->pid, SIGKILL);
        /* Its requests are answered now, not when the process is reaped. */
        replica_link_fail_all(rep, status, why);
}

/* The replica link found garbage in its response ring (while resuming a stalled sink). */
static void on_link_broken(struct replica *rep) {
        log_error("replica %s wrote an invalid record into its ring: killing it", rep->id);
        replica_kill(rep, 502, "the replica sent an invalid response");
}

static void arm_ctl(struct replica *rep, struct loop *loop) {
        struct io_uring_sqe *sqe = loop_sqe(loop, &rep->op_ctl);
        io_uring_prep_recv(sqe, rep->ctl_fd, rep->ctl_buf, CTL_BUF, 0);
        rep->ctl_armed = true;
}

static void arm_bell(struct replica *rep, struct loop *loop) {
        struct io_uring_sqe *sqe = loop_sqe(loop, &rep->op_bell);
        io_uring_prep_read(sqe, rep->seg.resp_bell, &rep->bell_val, sizeof rep->bell_val, 0);
        rep->bell_armed = true;
}

static struct loop *sup_loop(struct replica *rep) { return rep->dep->sup->loop; }

static void on_bell(struct loop_op *op, int res, unsigned flags) {
        struct replica *rep = list_entry(op, struct replica, op_bell);
        rep->bell_armed = false;
        /* The ring is read in supervisor_tick(); this only woke the loop. */
        if (rep->state != REPLICA_DEAD && res > 0)
                arm_bell(rep, sup_loop(rep));
        else
                replica_maybe_free(rep);
}

static void on_ctl(struct loop_op *op, int res, unsigned flags) {
        struct replica *rep = list_entry(op, struct replica, op_ctl);
        struct deployment *d = rep->dep;
        cJSON *j;
        const char *type;

        rep->ctl_armed = false;
        if (res <= 0 || rep->state == REPLICA_DEAD) {
                replica_maybe_free(rep);
                return;
        }
        j = cJSON_ParseWithLength(rep->ctl_buf, (size_t)res);
        type = j ? cJSON_GetStringValue(cJSON_GetObjectItem(j, "type")) : NULL;
        if (!type) {
                log_error("replica %s: invalid control message, killing it", rep->id);
                replica_kill(rep, 502, "replica sent an invalid control message");
        } else if (streq(type, "ready")) {
                if (rep->state == REPLICA_STARTING) {
                        rep->state = REPLICA_READY;
                        d->n_ready++;
                        d->failures = 0;
                        rep_event(rep, LOG_INFO, "replica_ready", "replica %s ready (pid %d)", rep->id, (int)rep->pid);
                        router_dispatch(d->sup->router, d);
                }
        } else if (streq(type, "error")) {
                const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "message"));
                rep_event(rep, LOG_ERR, "replica_failed", "replica %s: %s", rep->id, m ? m : "failed");
        } else if (streq(type, "unhealthy")) {
                const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "message"));
                rep_event(rep, LOG_WARNING, "health_check_failed", "replica %s failed its health check (%s), replacing it",
                          rep->id, m ? m : "check_health");
                replica_kill(rep, 502, "replica failed its health check");
        } else if (streq(type, "reconfigured")) {
                log_info("replica %s applied the new user_config", rep->id);
        }
        cJSON_Delete(j);
        if (rep->state != REPLICA_DEAD)
                arm_ctl(rep, sup_loop(rep));
        else
                replica_maybe_free(rep);
}

static void on_exit_ready(struct loop_op *op, int res, unsigned flags) {
        struct replica *rep = list_entry(op, struct replica, op_exit);
        struct deployment *d = rep->dep;
        int status = 0;
        bool planned = rep->stop_sent;

        rep->exit_armed = false;
        if (waitpid(rep->pid, &status, WNOHANG) <= 0)
                status = 0;
        if (!planned || rep->state != REPLICA_DEAD) {
                const char *kind = planned ? "replica_stopped" : "replica_crashed";
                if (WIFSIGNALED(status))
                        rep_event(rep, LOG_WARNING, kind, "replica %s (pid %d) was killed by signal %d (%s)", rep->id,
                                  (int)rep->pid, WTERMSIG(status), strsignal(WTERMSIG(status)));
                else if (!planned)
                        rep_event(rep, LOG_WARNING, kind, "replica %s (pid %d) exited with status %d", rep->id, (int)rep->pid,
                                  WEXITSTATUS(status));
        }
        if (!planned && !d->retiring && !d->sup->stopping) {
                d->to_replace++;
                d->replace_restarts = MAX(d->replace_restarts, rep->restarts + 1);
                d->failures++;
                uint64_t backoff = MIN(BACKOFF_MAX_NS, (NSEC_PER_SEC / 4) << MIN(d->failures, 8u));
                d->next_start_ns = now_ns() + backoff;
        }
        loadmon_untrack(d->sup->lm, rep->id); /* before its pid can be reused */
        rep->pid = -1; /* reaped: never signal that pid again */
        replica_kill(rep, rep->kill_timeout ? 504 : 502, "the replica died");
        if (rep->ctl_armed || rep->bell_armed) {
                struct io_uring_sqe *sqe;
                if (rep->ctl_armed) {
                        sqe = loop_sqe(sup_loop(rep), NULL);
                        io_uring_prep_cancel(sqe, &rep->op_ctl, 0);
                }
                if (rep->bell_armed) {
                        sqe = loop_sqe(sup_loop(rep), NULL);
                        io_uring_prep_cancel(sqe, &rep->op_bell, 0);
                }
        }
        replica_maybe_free(rep);
        router_dispatch(d->sup->router, d);
}

static void replica_maybe_free(struct replica *rep) {
        if (rep->pid > 0 || rep->exit_armed || rep->ctl_armed || rep->bell_armed)
                return;
        list_del(&rep->be.link);
        rep->dep->n_replicas--;
        if (rep->pidfd >= 0)
                close(rep->pidfd);
        if (rep->ctl_fd >= 0)
                close(rep->ctl_fd);
        segment_close(&rep->seg);
        replica_link_free(rep);
        cgroups_replica_remove(rep->cgroup);
        free(rep->cgroup);
        free(rep->limits);
        free(rep->ctl_buf);
        free(rep);
}

static cJSON *start_message(const struct deployment *d, const struct replica *rep) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "type", "start");
        cJSON_AddStringToObject(m, "app", d->app);
        cJSON_AddStringToObject(m, "deployment", d->name);
        cJSON_AddStringToObject(m, "replica", strrchr(rep->id, '/') ? strrchr(rep->id, '/') + 1 : rep->id);
        cJSON_AddStringToObject(m, "module", d->module);
        cJSON_AddStringToObject(m, "symbol", d->symbol);
        cJSON_AddStringToObject(m, "args", d->args_json);
        if (d->user_config_json)
                cJSON_AddStringToObject(m, "user_config", d->user_config_json);
        else
                cJSON_AddNullToObject(m, "user_config");
        cJSON_AddNumberToObject(m, "max_ongoing_requests", d->max_ongoing);
        cJSON_AddNumberToObject(m, "health_check_period_s", d->health_period_s);
        return m;
}

/* The head lists one CUDA_VISIBLE_DEVICES value per local replica: take one that no live
 * replica of this deployment uses yet (counting duplicates: "0","0" is two slots on GPU 0). */
static void pick_gpus(struct deployment *d, struct replica *rep) {
        for (size_t i = 0; i < d->n_gpus; i++) {
                size_t want = 0, used = 0;
                struct list *pos, *tmp;
                for (size_t k = 0; k <= i; k++)
                        want += streq(d->gpus[k], d->gpus[i]);
                list_for_each_safe(pos, tmp, &d->replicas) {
                        struct replica *o = list_entry(pos, struct replica, be.link);
                        used += o->state != REPLICA_DEAD && streq(o->gpus, d->gpus[i]);
                }
                if (used < want) {
                        snprintf(rep->gpus, sizeof rep->gpus, "%s", d->gpus[i]);
                        return;
                }
        }
}

static int replica_start(struct supervisor *s, struct deployment *d) {
        struct replica *rep;
        int sv[2], r;
        pid_t pid;

        rep = calloc(1, sizeof *rep);
        if (!rep)
                return -ENOMEM;
        rep->pidfd = rep->ctl_fd = -1;
        rep->seg.fd = rep->seg.req_bell = rep->seg.resp_bell = -1;
        rep->dep = d;
        rep->serial = ++d->next_serial;
        if (s->node)
                snprintf(rep->id, sizeof rep->id, "%s/%s#%u@%s", d->app, d->name, rep->serial, s->node);
        else
                snprintf(rep->id, sizeof rep->id, "%s/%s#%u", d->app, d->name, rep->serial);
        pick_gpus(d, rep);
        rep->op_exit.cb = on_exit_ready;
        rep->op_ctl.cb = on_ctl;
        rep->op_bell.cb = on_bell;
        list_init(&rep->be.link);
        rep->ctl_buf = malloc(CTL_BUF);
        rep->on_broken = on_link_broken;
        if (!rep->ctl_buf || replica_link_init(rep, (uint32_t)d->max_ongoing) < 0) {
                free(rep->ctl_buf);
                free(rep);
                return -ENOMEM;
        }
        r = segment_create("serve-seg", RING_SIZE, &rep->seg);
        if (r < 0) {
                log_error_errno(r, "replica %s: cannot create its shared memory: %m", rep->id);
                replica_link_free(rep);
                free(rep->ctl_buf);
                free(rep);
                return r;
        }
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
                r = log_error_errno(errno, "replica %s: socketpair failed: %m", rep->id);
                goto fail;
        }
        if (s->cg && s->cg->base)
                (void)cgroups_replica_create(s->cg, rep->id, d->num_cpus, d->memory, &rep->cgroup, &rep->limits);
        pid = fork();
        if (pid < 0) {
                r = log_error_errno(errno, "replica %s: fork failed: %m", rep->id);
                close(sv[0]);
                close(sv[1]);
                goto fail;
        }
        if (pid == 0) {
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                if (rep->cgroup)
                        (void)cgroups_enter(rep->cgroup);
                if (dup2(sv[1], 3) < 0)
                        _exit(127);
                syscall(SYS_close_range, 4, ~0u, 0);
                for (size_t i = 0; i < d->n_env; i++)
                        putenv(d->env[i]);
                if (rep->gpus[0])
                        setenv("CUDA_VISIBLE_DEVICES", rep->gpus, 1);
                if (d->working_dir && chdir(d->working_dir) < 0) {
                        fprintf(stderr, "replica %s: cannot enter working_dir %s: %m\n", rep->id, d->working_dir);
                        _exit(126);
                }
                execl(s->replica_bin, "serve-replica", "--control-fd", "3", (char *)NULL);
                fprintf(stderr, "cannot execute %s: %m\n", s->replica_bin);
                _exit(127);
        }
        close(sv[1]);
        rep->ctl_fd = sv[0];
        rep->pid = pid;
        rep->started_ns = now_ns();
        rep->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (rep->pidfd < 0) {
                r = log_error_errno(errno, "pidfd_open failed: %m");
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                goto fail;
        }
        {
                cJSON *m = start_message(d, rep);
                char *txt = cJSON_PrintUnformatted(m);
                int fds[3] = { rep->seg.fd, rep->seg.req_bell, rep->seg.resp_bell };
                cJSON_Delete(m);
                r = txt ? unix_send_fds(rep->ctl_fd, txt, strlen(txt), fds, 3) : -ENOMEM;
                free(txt);
                if (r < 0)
                        log_warning_errno(r, "replica %s: cannot send its start message: %m", rep->id);
        }
        if (s->lm && (r = loadmon_track(s->lm, rep->id, pid, rep->cgroup)) < 0)
                log_warning_errno(r, "replica %s: not measured by the load monitor: %m", rep->id);
        list_add_tail(&d->replicas, &rep->be.link);
        d->n_replicas++;
        struct io_uring_sqe *sqe = loop_sqe(s->loop, &rep->op_exit);
        io_uring_prep_poll_add(sqe, rep->pidfd, POLLIN);
        rep->exit_armed = true;
        arm_ctl(rep, s->loop);
        arm_bell(rep, s->loop);
        if (d->to_replace) {
                rep->restarts = d->replace_restarts;
                if (--d->to_replace == 0)
                        d->replace_restarts = 0;
                rep_event(rep, LOG_INFO, "replica_restarted", "replica %s starting (pid %d) in place of a crashed one (restart %u)%s%s",
                          rep->id, (int)pid, rep->restarts, rep->limits ? ", " : "", rep->limits ?: "");
        } else
                rep_event(rep, LOG_INFO, "replica_started", "replica %s starting (pid %d)%s%s", rep->id, (int)pid,
                          rep->limits ? ", " : "", rep->limits ?: "");
        if (d->stats)
                d->stats->replica_starts++;
        return 0;
fail:
        segment_close(&rep->seg);
        if (rep->ctl_fd >= 0)
                close(rep->ctl_fd);
        replica_link_free(rep);
        free(rep->ctl_buf);
        free(rep);
        return r;
}

static void replica_stop(struct replica *rep) {
        cJSON *m;

        if (rep->stop_sent || rep->state == REPLICA_DEAD)
                return;
        if (rep->state == REPLICA_READY)
                rep->dep->n_ready--;
        rep->state = REPLICA_DRAINING;
        if (rep->ongoing > 0)
                return; /* asked again once its in-flight requests are answered */
        m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "type", "stop");
        cJSON_AddNumberToObject(m, "timeout_s", rep->dep->graceful_timeout_s);
        send_ctl(rep, m);
        rep->stop_sent = true;
        rep->stop_deadline_ns = now_ns() + sec_to_ns(rep->dep->graceful_timeout_s) + 5 * NSEC_PER_SEC;
}

/* In place: each replica grows its handler threads (or just gets fewer requests). */
static void set_max_ongoing_all(struct deployment *d) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, be.link);
                cJSON *m;
                if (rep->state == REPLICA_DEAD)
                        continue;
                if (replica_link_set_limit(rep, (uint32_t)d->max_ongoing) < 0) {
                        log_error("replica %s: out of memory for max_ongoing_requests %d; keeping %u", rep->id, d->max_ongoing,
                                  rep->limit);
                        continue;
                }
                m = cJSON_CreateObject();
                cJSON_AddStringToObject(m, "type", "max_ongoing");
                cJSON_AddNumberToObject(m, "max_ongoing_requests", d->max_ongoing);
                send_ctl(rep, m);
        }
        router_dispatch(d->sup->router, d);
}

static void reconfigure_all(struct deployment *d) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, be.link);
                cJSON *m;
                if (rep->state == REPLICA_DEAD || rep->state == REPLICA_DRAINING)
                        continue;
                m = cJSON_CreateObject();
                cJSON_AddStringToObject(m, "type", "reconfigure");
                if (d->user_config_json)
                        cJSON_AddStringToObject(m, "user_config", d->user_config_json);
                else
                        cJSON_AddNullToObject(m, "user_config");
                send_ctl(rep, m);
        }
}

/* ---- applying a config ---- */

struct pending {
        struct deployment *d;
        struct deployment *live; /* same app/deployment running now, or NULL */
};

int supervisor_apply(struct supervisor *s, const struct serve_config *cfg, char **ret_error) {
        struct serve_spec *spec = NULL;
        int r;

        r = spec_resolve(s->replica_bin, cfg, &spec, ret_error);
        if (r < 0)
                return r;
        r = supervisor_apply_spec(s, spec);
        serve_spec_free(spec);
        return r;
}

int supervisor_apply_spec(struct supervisor *s, const struct serve_spec *spec) {
        struct pending *pend = calloc(spec->n_deps + 1, sizeof *pend);
        struct route *routes = calloc(spec->n_apps + 1, sizeof *routes);
        size_t n_pend = 0, n_routes = 0;

        if (!pend || !routes) {
                free(pend);
                free(routes);
                return -ENOMEM;
        }
        for (size_t i = 0; i < spec->n_deps; i++) {
                struct deployment *d = deployment_build(&spec->deps[i]);
                if (!d) {
                        for (size_t k = 0; k < n_pend; k++)
                                deployment_free(pend[k].d);
                        free(pend);
                        routes_free(routes, n_routes);
                        return -ENOMEM;
                }
                pend[n_pend++] = (struct pending){ d, NULL };
        }
        for (size_t i = 0; i < spec->n_apps; i++) {
                const struct app_spec *a = &spec->apps[i];
                if (!a->route_prefix)
                        continue;
                for (size_t k = 0; k < n_pend; k++)
                        if (streq(pend[k].d->app, a->name) && streq(pend[k].d->name, a->ingress)) {
                                routes[n_routes].prefix = strdup(a->route_prefix);
                                routes[n_routes].prefix_len = strlen(a->route_prefix);
                                routes[n_routes].app = strdup(a->name);
                                routes[n_routes].ingress = pend[k].d; /* fixed up below */
                                n_routes++;
                        }
        }

        /* Diff against what runs: same version -> update in place; else the new version starts
         * beside the old one, which keeps the traffic until the new replicas are ready. */
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *old = list_entry(pos, struct deployment, link);
                bool kept = false;
                if (old->retiring)
                        continue;
                for (size_t i = 0; i < n_pend; i++)
                        if (streq(pend[i].d->app, old->app) && streq(pend[i].d->name, old->name)) {
                                pend[i].live = old;
                                kept = true;
                        }
                if (!kept) {
                        log_info("deployment %s/%s removed: draining", old->app, old->name);
                        old->retiring = true;
                        old->target_replicas = 0;
                }
        }
        for (size_t i = 0; i < n_pend; i++) {
                struct deployment *d = pend[i].d, *old = pend[i].live;
                struct deployment *serving = d;

                if (old && streq(old->version, d->version)) {
                        if (old->target_replicas != d->target_replicas)
                                log_info("deployment %s/%s: num_replicas %d -> %d", d->app, d->name, old->target_replicas,
                                         d->target_replicas);
                        old->target_replicas = d->target_replicas;
                        old->scales_from_zero = d->scales_from_zero;
                        if (old->max_ongoing != d->max_ongoing) {
                                log_info("deployment %s/%s: max_ongoing_requests %d -> %d", d->app, d->name, old->max_ongoing,
                                         d->max_ongoing);
                                old->max_ongoing = d->max_ongoing;
                                set_max_ongoing_all(old);
                        }
                        old->max_queued = d->max_queued;
                        old->health_period_s = d->health_period_s;
                        old->health_timeout_s = d->health_timeout_s;
                        old->graceful_timeout_s = d->graceful_timeout_s;
                        SWAP(old->gpus, d->gpus);
                        SWAP(old->n_gpus, d->n_gpus);
                        if (!streq_ptr(old->user_config_json, d->user_config_json)) {
                                SWAP(old->user_config_json, d->user_config_json);
                                reconfigure_all(old);
                        }
                        deployment_free(d);
                        pend[i].d = NULL;
                        serving = old;
                } else {
                        d->sup = s;
                        d->stats = router_stats(s->router, d->app, d->name);
                        list_add_tail(&s->deployments, &d->link);
                        if (old) {
                                log_info("deployment %s/%s changed: rolling to new replicas", d->app, d->name);
                                old->retiring = true; /* routes move in supervisor_tick once d is ready */
                                serving = old;
                        }
                }
                for (size_t k = 0; k < n_routes; k++)
                        if (routes[k].ingress == d)
                                routes[k].ingress = serving;
        }
        router_set_routes(s->router, routes, n_routes);
        ingress_set(s, spec);
        free(pend);
        s->n_from_zero = 0;
        for (struct list *p = s->deployments.next; p != &s->deployments; p = p->next)
                s->n_from_zero += list_entry(p, struct deployment, link)->scales_from_zero;
        return 0;
}

/* ---- the periodic work ---- */

/* The newest version of (app, name), if it is not d itself. */
static struct deployment *successor(struct supervisor *s, struct deployment *d) {
        struct deployment *n = find_live(s, d->app, d->name);
        return n != d ? n : NULL;
}

static void move_routes(struct supervisor *s, struct deployment *from, struct deployment *to) {
        for (size_t i = 0; i < s->router->n_routes; i++)
                if (s->router->routes[i].ingress == from)
                        s->router->routes[i].ingress = to;
}

static void requeue(struct supervisor *s, struct deployment *from, struct deployment *to) {
        while (from->queue_len > 0) {
                struct request *q = list_first(&from->queue, struct request, link);
                router_unqueue(q);
                q->dep = to;
                if (!to || router_submit(s->router, q, 0) < 0)
                        request_fail(q, 503, "the deployment was removed");
        }
}

struct replica *supervisor_next_to_stop(struct deployment *d) {
        struct replica *best = NULL;
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, be.link);
                if (rep->state == REPLICA_STARTING)
                        return rep; /* serves nothing yet */
                if (rep->state == REPLICA_READY && (!best || rep->ongoing < best->ongoing))
                        best = rep;
        }
        return best;
}

/* Stops `extra` replicas, in supervisor_next_to_stop() order, so the fewest requests wait for
 * a drain. */
static void scale_down(struct deployment *d, int extra) {
        struct replica *rep;

        while (extra-- > 0 && (rep = supervisor_next_to_stop(d)))
                replica_stop(rep); /* no longer STARTING or READY */
}

static uint64_t tick_deployment(struct supervisor *s, struct deployment *d, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t next = 100 * NSEC_PER_MSEC;
        int live = 0, ongoing = 0;

        /* A retiring version hands its routes and queue to its successor once that is ready. */
        if (d->retiring) {
                struct deployment *n = successor(s, d);
                bool routed = false;
                for (size_t i = 0; i < s->router->n_routes; i++)
                        routed |= s->router->routes[i].ingress == d;
                if (n && routed) {
                        if (n->target_replicas > 0 && n->n_ready < n->target_replicas)
                                goto health; /* keep serving with the old version meanwhile */
                        log_info("deployment %s/%s: new version ready, moving traffic", d->app, d->name);
                        move_routes(s, d, n);
                }
                if (n)
                        requeue(s, d, n);
                else if (!routed)
                        requeue(s, d, NULL);
                list_for_each_safe(pos, tmp, &d->replicas)
                        replica_stop(list_entry(pos, struct replica, be.link));
        }
health:
        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, be.link);
                int pr;

                if (rep->state == REPLICA_DEAD)
                        continue;
                ongoing += rep->ongoing;
                pr = replica_link_poll(rep);
                if (pr < 0) {
                        on_link_broken(rep);
                        continue;
                }
                if (pr > 0)
                        router_dispatch(s->router, d);
                if (replica_link_flush(rep))
                        next = MIN(next, NSEC_PER_MSEC);
                if (rep->state == REPLICA_READY) {
                        uint64_t hb = atomic_load_explicit(&rep->seg.ctl->heartbeat_ns, memory_order_relaxed);
                        uint64_t limit = sec_to_ns(d->health_timeout_s);
                        if (hb + limit < now && rep->started_ns + limit < now && limit > 0) {
                                rep_event(rep, LOG_ERR, "replica_unresponsive", "replica %s missed its heartbeat for %.1fs: killing it",
                                          rep->id, d->health_timeout_s);
                                rep->kill_timeout = true;
                                replica_kill(rep, 504, "the replica stopped responding (health_check_timeout_s)");
                                continue;
                        }
                } else if (rep->state == REPLICA_STARTING && now > rep->started_ns + STARTUP_TIMEOUT_NS) {
                        rep_event(rep, LOG_ERR, "replica_unresponsive", "replica %s did not become ready in %llus: killing it",
                                  rep->id, (unsigned long long)(STARTUP_TIMEOUT_NS / NSEC_PER_SEC));
                        replica_kill(rep, 502, "the replica did not start");
                        continue;
                } else if (rep->state == REPLICA_DRAINING) {
                        if (!rep->stop_sent && rep->ongoing == 0)
                                replica_stop(rep);
                        else if (rep->stop_sent && now > rep->stop_deadline_ns) {
                                log_warning("replica %s did not stop in time: killing it", rep->id);
                                replica_kill(rep, 502, "the replica was stopped");
                        }
                        continue;
                }
                live++;
        }

        /* The load until now was what the previous tick saw (it changes only by events, and
         * every batch of events ends in a tick). */
        if (d->load_at_ns && now > d->load_at_ns)
                d->load_s += d->load_now * (double)(now - d->load_at_ns) / 1e9;
        d->load_at_ns = now;
        d->load_now = ongoing + d->queue_len;

        if (d->retiring || s->stopping)
                return next;
        /* Scale: start missing replicas (with backoff after failures), stop extra ones. */
        if (live < d->target_replicas) {
                if (now >= d->next_start_ns) {
                        for (int i = live; i < d->target_replicas; i++)
                                if (replica_start(s, d) < 0) {
                                        d->failures++;
                                        d->next_start_ns = now + MIN(BACKOFF_MAX_NS, (NSEC_PER_SEC / 4) << MIN(d->failures, 8u));
                                        break;
                                }
                } else
                        next = MIN(next, d->next_start_ns - now);
        } else if (live > d->target_replicas) {
                scale_down(d, live - d->target_replicas);
        }
        return next;
}

uint64_t supervisor_tick(struct supervisor *s, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t next = 100 * NSEC_PER_MSEC;

        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                next = MIN(next, tick_deployment(s, d, now));
                if (d->retiring && d->n_replicas == 0) {
                        bool routed = false;
                        for (size_t i = 0; i < s->router->n_routes; i++)
                                routed |= s->router->routes[i].ingress == d;
                        if (!routed && d->queue_len == 0 && d->remote_inflight == 0) {
                                log_info("deployment %s/%s stopped", d->app, d->name);
                                deployment_free(d);
                        }
                }
        }
        return next;
}

bool supervisor_prepare_sleep(struct supervisor *s) {
        struct list *pos, *tmp, *p2, *t2;
        bool ok = true;

        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                list_for_each_safe(p2, t2, &d->replicas) {
                        struct replica *rep = list_entry(p2, struct replica, be.link);
                        if (rep->state == REPLICA_DEAD)
                                continue;
                        replica_link_ring_bells(rep);
                        /* A stalled ring waits for its sink, not for us: it may hold data. */
                        if (!ring_consumer_prepare_sleep(&rep->seg.resp) && !replica_link_stalled(rep))
                                ok = false;
                }
        }
        return ok;
}

void supervisor_awake(struct supervisor *s) {
        struct list *pos, *tmp, *p2, *t2;

        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                list_for_each_safe(p2, t2, &d->replicas) {
                        struct replica *rep = list_entry(p2, struct replica, be.link);
                        if (rep->state != REPLICA_DEAD)
                                ring_consumer_awake(&rep->seg.resp);
                }
        }
}

void supervisor_stop_all(struct supervisor *s) {
        struct list *pos, *tmp, *p2, *t2;

        s->stopping = true;
        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                d->retiring = true;
                requeue(s, d, NULL);
                list_for_each_safe(p2, t2, &d->replicas)
                        replica_stop(list_entry(p2, struct replica, be.link));
        }
}

unsigned supervisor_busy(const struct supervisor *s) {
        struct list *pos, *tmp, *p2, *t2;
        unsigned n = 0;

        list_for_each_safe(pos, tmp, (struct list *)&s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                n += (unsigned)d->queue_len;
                list_for_each_safe(p2, t2, &d->replicas)
                        n += (unsigned)list_entry(p2, struct replica, be.link)->ongoing;
        }
        return n;
}

bool supervisor_all_exited(const struct supervisor *s) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, (struct list *)&s->deployments)
                if (list_entry(pos, struct deployment, link)->n_replicas > 0)
                        return false;
        return true;
}

/* The deployment that serves handle calls to (app, name) here (an empty name: app's ingress):
 * the newest version (a retiring one only while it has no successor). */
static struct deployment *find_deployment(void *userdata, const char *app, size_t app_len, const char *name,
                                          size_t name_len) {
        struct supervisor *s = userdata;
        struct deployment *found = NULL;
        struct list *pos;

        if (name_len == 0) {
                /* "APP/": the application's ingress. */
                for (size_t i = 0; i < s->n_ingress; i++)
                        if (strlen(s->ingress[i]) == app_len && memcmp(s->ingress[i], app, app_len) == 0) {
                                name = s->ingress[i] + app_len + 1;
                                name_len = strlen(name);
                                break;
                        }
                if (name_len == 0)
                        return NULL;
        }
        for (pos = s->deployments.next; pos != &s->deployments; pos = pos->next) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                if (strlen(d->app) != app_len || memcmp(d->app, app, app_len) != 0 || strlen(d->name) != name_len ||
                    memcmp(d->name, name, name_len) != 0)
                        continue;
                if (!d->retiring)
                        return d;
                found = d;
        }
        return found;
}

int supervisor_new(struct loop *loop, struct router *router, const char *replica_bin, struct supervisor **ret) {
        struct supervisor *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->router = router;
        router->find = find_deployment;
        router->find_userdata = s;
        s->replica_bin = strdup(replica_bin);
        list_init(&s->deployments);
        if (!s->replica_bin || event_log_init(&s->events, EVENT_REPORT_MAX) < 0) {
                free(s->replica_bin);
                free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

void supervisor_free(struct supervisor *s) {
        struct list *pos, *tmp;
        if (!s)
                return;
        list_for_each_safe(pos, tmp, &s->deployments)
                deployment_free(list_entry(pos, struct deployment, link));
        event_log_free(&s->events);
        ingress_free(s);
        free(s->replica_bin);
        free(s->node);
        free(s);
}

static const char *replica_state_name(enum replica_state st) {
        switch (st) {
        case REPLICA_STARTING: return "STARTING";
        case REPLICA_READY: return "RUNNING";
        case REPLICA_DRAINING: return "STOPPING";
        default: return "STOPPED";
        }
}

/* The load monitor's numbers of one replica: "cpu_s" and "rq_delay" (see report.h). Returns 0
 * (also when it has none) or -ENOMEM. */
static int report_load(const struct supervisor *s, const struct replica *rep, cJSON *o) {
        struct loadmon_replica lr;
        cJSON *rq, *b;

        if (!s->lm || loadmon_replica(s->lm, rep->id, &lr) < 0)
                return 0;
        if (!cJSON_AddNumberToObject(o, "cpu_s", lr.cpu_seconds) || !(rq = cJSON_AddObjectToObject(o, "rq_delay")) ||
            !cJSON_AddNumberToObject(rq, "sum", lr.rq_sum_seconds) || !cJSON_AddNumberToObject(rq, "count", (double)lr.rq_count))
                return -ENOMEM;
        if (!lr.has_buckets)
                return 0;
        if (!(b = cJSON_AddArrayToObject(rq, "buckets")))
                return -ENOMEM;
        for (size_t i = 0; i < REPORT_RQ_BUCKETS; i++) {
                cJSON *v = cJSON_CreateNumber((double)lr.rq_buckets[i]);
                if (!v || !cJSON_AddItemToArray(b, v)) {
                        cJSON_Delete(v);
                        return -ENOMEM;
                }
        }
        return 0;
}

int supervisor_report(const struct supervisor *s, cJSON *replicas, cJSON *deployments, double wall_offset_s) {
        struct list *pos, *tmp, *p2, *t2;

        list_for_each_safe(pos, tmp, (struct list *)&s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                list_for_each_safe(p2, t2, &d->replicas) {
                        struct replica *rep = list_entry(p2, struct replica, be.link);
                        cJSON *o;
                        if (rep->state == REPLICA_DEAD)
                                continue;
                        o = cJSON_CreateObject();
                        if (!o || !cJSON_AddItemToArray(replicas, o) || !cJSON_AddStringToObject(o, "id", rep->id) ||
                            !cJSON_AddStringToObject(o, "app", d->app) || !cJSON_AddStringToObject(o, "deployment", d->name) ||
                            !cJSON_AddStringToObject(o, "version", d->version) ||
                            !cJSON_AddStringToObject(o, "state", replica_state_name(rep->state)) ||
                            !cJSON_AddNumberToObject(o, "pid", rep->pid) || !cJSON_AddNumberToObject(o, "ongoing", rep->ongoing) ||
                            !cJSON_AddNumberToObject(o, "restarts", rep->restarts) ||
                            !cJSON_AddNumberToObject(o, "started_at", wall_offset_s + (double)rep->started_ns / 1e9) ||
                            (rep->gpus[0] && !cJSON_AddStringToObject(o, "gpus", rep->gpus)) ||
                            (rep->limits && !cJSON_AddStringToObject(o, "limits", rep->limits)) ||
                            report_load(s, rep, o) < 0)
                                return -ENOMEM;
                }
                if (deployments) {
                        cJSON *o = cJSON_CreateObject();
                        if (!o || !cJSON_AddItemToArray(deployments, o) || !cJSON_AddStringToObject(o, "app", d->app) ||
                            !cJSON_AddStringToObject(o, "deployment", d->name) ||
                            !cJSON_AddStringToObject(o, "version", d->version) ||
                            !cJSON_AddNumberToObject(o, "queued", d->queue_len) ||
                            !cJSON_AddNumberToObject(o, "ready", d->n_ready) ||
                            !cJSON_AddBoolToObject(o, "retiring", d->retiring))
                                return -ENOMEM;
                }
        }
        return 0;
}

void supervisor_take_load(struct supervisor *s, uint64_t now,
                          void (*fn)(void *userdata, const struct deployment *d, const struct scaler_load *l),
                          void *userdata) {
        struct list *pos, *tmp, *p2, *t2;
        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                struct scaler_load l = { .waiting_at_zero = supervisor_deployment_waiting_at_zero(d) };
                if (d->load_at_ns && now > d->load_at_ns) {
                        d->load_s += d->load_now * (double)(now - d->load_at_ns) / 1e9;
                        d->load_at_ns = now;
                }
                l.busy_s = d->load_s;
                d->load_s = 0;
                /* What the monitor counted since the previous call (its counters only grow). */
                list_for_each_safe(p2, t2, &d->replicas) {
                        struct replica *rep = list_entry(p2, struct replica, be.link);
                        struct loadmon_replica lr;
                        if (!s->lm || rep->state == REPLICA_DEAD || loadmon_replica(s->lm, rep->id, &lr) < 0)
                                continue;
                        if (lr.cpu_seconds > rep->mon_cpu_s)
                                l.cpu_s += lr.cpu_seconds - rep->mon_cpu_s;
                        if (lr.rq_count > rep->mon_rq_n && lr.rq_sum_seconds >= rep->mon_rq_s) {
                                l.rq_wakeups += (double)(lr.rq_count - rep->mon_rq_n);
                                l.rq_delay_s += lr.rq_sum_seconds - rep->mon_rq_s;
                        }
                        rep->mon_cpu_s = lr.cpu_seconds;
                        rep->mon_rq_s = lr.rq_sum_seconds;
                        rep->mon_rq_n = lr.rq_count;
                }
                fn(userdata, d, &l);
        }
}

bool supervisor_waiting_at_zero(const struct supervisor *s) {
        struct list *pos, *tmp;
        /* Asked every loop turn: nothing to look at unless a deployment scales from zero. */
        if (s->n_from_zero == 0)
                return false;
        list_for_each_safe(pos, tmp, (struct list *)&s->deployments) {
                const struct deployment *d = list_entry(pos, struct deployment, link);
                if (supervisor_deployment_waiting_at_zero(d) > 0)
                        return true;
        }
        return false;
}

int supervisor_deployment_waiting_at_zero(const struct deployment *d) {
        if (!d->scales_from_zero || d->queue_len == 0 || d->n_replicas > 0 || d->target_replicas > 0)
                return 0;
        return d->remote_placed && *d->remote_placed > 0 ? 0 : d->queue_len;
}

int supervisor_scale(struct supervisor *s, const char *app, const char *name, int replicas) {
        struct list *pos, *tmp;
        int found = -ENOENT;
        list_for_each_safe(pos, tmp, &s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                if (d->retiring || !streq(d->app, app) || !streq(d->name, name))
                        continue;
                d->target_replicas = replicas;
                found = 0;
        }
        return found;
}

void supervisor_for_each(struct supervisor *s, void (*fn)(struct deployment *d, void *userdata), void *userdata) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &s->deployments)
                fn(list_entry(pos, struct deployment, link), userdata);
}

int supervisor_set_node(struct supervisor *s, const char *node) {
        char *n = strdup(node);
        if (!n)
                return -ENOMEM;
        free(s->node);
        s->node = n;
        return 0;
}

void supervisor_drain_begin(struct supervisor *s, struct supervisor_drain *d, uint64_t now) {
        struct list *pos, *tmp;
        double limit = 0;

        /* In-flight requests get what their deployments' graceful_shutdown_timeout_s allows
         * (Ray's meaning of it), at least a moment for keep-alive clients to move on. */
        list_for_each_safe(pos, tmp, &s->deployments)
                limit = MAX(limit, list_entry(pos, struct deployment, link)->graceful_timeout_s);
        limit = MAX(limit, SUPERVISOR_DRAIN_MIN_S);
        log_info("stopping: finishing in-flight requests (up to %.1fs, graceful_shutdown_timeout_s)", limit);
        d->deadline = now + sec_to_ns(limit);
}
bool supervisor_drain_step(struct supervisor *s, struct supervisor_drain *d, uint64_t now, bool force,
                           unsigned open_connections) {
        if (!d->deadline)
                return false;
        /* In-flight requests and open connections first, then the replicas themselves. */
        if (!d->replicas_stopping && ((supervisor_busy(s) == 0 && open_connections == 0) || now > d->deadline || force)) {
                supervisor_stop_all(s);
                d->replicas_stopping = true;
        }
        if (d->replicas_stopping && supervisor_all_exited(s))
                return true;
        if (force || now > d->deadline + 10 * NSEC_PER_SEC) {
                log_warning("replicas did not stop in time");
                return true;
        }
        return false;
}

void supervisor_set_cgroups(struct supervisor *s, struct cgroups *cg) { s->cg = cg; }

void supervisor_set_loadmon(struct supervisor *s, struct loadmon *lm) { s->lm = lm; }
