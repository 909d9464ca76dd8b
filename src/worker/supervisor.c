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
#include "proxy.h"
#include "supervisor.h"
#include "upstream.h"

#define RING_SIZE (1u << 20)
#define STARTUP_TIMEOUT_NS (120 * NSEC_PER_SEC)
#define BACKOFF_MAX_NS (30 * NSEC_PER_SEC)
#define CTL_BUF 65536
#define DESCRIBE_MAX (1u << 20)

struct supervisor {
        struct loop *loop;
        struct router *router;
        char *replica_bin;
        struct list deployments;
        bool stopping;
};

/* ---- application descriptions (from serve-replica --describe, so user code never runs in
 * the proxy's process) ---- */

struct described_deployment {
        char *name;
        int num_replicas, max_ongoing, max_queued;
        double health_period, health_timeout, graceful_timeout;
};

struct description {
        char *module, *symbol, *ingress;
        struct described_deployment *deps;
        size_t n_deps;
};

static void description_free(struct description *d) {
        free(d->module);
        free(d->symbol);
        free(d->ingress);
        for (size_t i = 0; i < d->n_deps; i++)
                free(d->deps[i].name);
        free(d->deps);
        memset(d, 0, sizeof *d);
}

static int run_describe(struct supervisor *s, const struct app_config *a, char **ret_out, char **ret_err) {
        int out[2], err[2];
        struct buf o = {}, e = {};
        pid_t pid;
        int status;

        if (pipe2(out, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(err, O_CLOEXEC) < 0) {
                close(out[0]);
                close(out[1]);
                return -errno;
        }
        pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(out[0]); close(out[1]); close(err[0]); close(err[1]);
                return r;
        }
        if (pid == 0) {
                sigset_t all;
                sigemptyset(&all);
                sigprocmask(SIG_SETMASK, &all, NULL);
                dup2(out[1], STDOUT_FILENO);
                dup2(err[1], STDERR_FILENO);
                if (a->runtime_env.working_dir)
                        execl(s->replica_bin, "serve-replica", "--describe", a->import_path, "--working-dir",
                              a->runtime_env.working_dir, (char *)NULL);
                else
                        execl(s->replica_bin, "serve-replica", "--describe", a->import_path, (char *)NULL);
                fprintf(stderr, "cannot run %s: %m", s->replica_bin);
                _exit(127);
        }
        close(out[1]);
        close(err[1]);
        struct pollfd pfd[2] = { { out[0], POLLIN, 0 }, { err[0], POLLIN, 0 } };
        int open_fds = 2;
        while (open_fds > 0) {
                if (poll(pfd, 2, 30000) <= 0)
                        break;
                for (int i = 0; i < 2; i++) {
                        char tmp[4096];
                        ssize_t n;
                        if (pfd[i].fd < 0 || !pfd[i].revents)
                                continue;
                        n = read(pfd[i].fd, tmp, sizeof tmp);
                        if (n <= 0) {
                                close(pfd[i].fd);
                                pfd[i].fd = -1;
                                open_fds--;
                                continue;
                        }
                        (void)buf_append(i == 0 ? &o : &e, tmp, (size_t)n, DESCRIBE_MAX);
                }
        }
        for (int i = 0; i < 2; i++)
                if (pfd[i].fd >= 0)
                        close(pfd[i].fd);
        if (open_fds > 0)
                kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        (void)buf_append(&o, "", 1, DESCRIBE_MAX + 1);
        (void)buf_append(&e, "", 1, DESCRIBE_MAX + 1);
        while (e.len > 1 && (e.data[e.len - 2] == '\n'))
                e.data[--e.len - 1] = 0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                *ret_err = e.len > 1 ? strdup(e.data) : strdup("serve-replica --describe failed");
                buf_free(&o);
                buf_free(&e);
                return -EINVAL;
        }
        buf_free(&e);
        *ret_out = o.data;
        return 0;
}

static double json_num(const cJSON *o, const char *k) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
        return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static int describe(struct supervisor *s, const struct app_config *a, struct description *ret, char **ret_err) {
        _cleanup_free_ char *out = NULL;
        char *err = NULL;
        cJSON *j, *deps, *it;
        int r;

        r = run_describe(s, a, &out, &err);
        if (r < 0) {
                *ret_err = err;
                return r;
        }
        j = cJSON_Parse(out);
        if (!j) {
                *ret_err = strdup("serve-replica --describe printed invalid JSON");
                return -EINVAL;
        }
        memset(ret, 0, sizeof *ret);
        ret->module = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "module")) ?: "");
        ret->symbol = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "symbol")) ?: "");
        ret->ingress = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "ingress")) ?: "");
        deps = cJSON_GetObjectItem(j, "deployments");
        ret->n_deps = (size_t)cJSON_GetArraySize(deps);
        ret->deps = calloc(ret->n_deps ? ret->n_deps : 1, sizeof *ret->deps);
        size_t i = 0;
        cJSON_ArrayForEach(it, deps) {
                const cJSON *def = cJSON_GetObjectItem(it, "defaults");
                struct described_deployment *d = &ret->deps[i++];
                d->name = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(it, "name")) ?: "");
                d->num_replicas = (int)json_num(def, "num_replicas");
                d->max_ongoing = (int)json_num(def, "max_ongoing_requests");
                d->max_queued = (int)json_num(def, "max_queued_requests");
                d->health_period = json_num(def, "health_check_period_s");
                d->health_timeout = json_num(def, "health_check_timeout_s");
                d->graceful_timeout = json_num(def, "graceful_shutdown_timeout_s");
        }
        cJSON_Delete(j);
        return 0;
}

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
        for (size_t i = 0; i < d->n_env; i++)
                free(d->env[i]);
        free(d->env);
        free(d->signature);
        free(d);
}

static char *make_signature(const struct deployment *d) {
        struct buf b = {};
        (void)buf_printf(&b, SIZE_MAX, "%s\n%s\n%s\n%s\n%d\n", d->module, d->symbol, d->args_json,
                         d->working_dir ?: "", d->max_ongoing);
        for (size_t i = 0; i < d->n_env; i++)
                (void)buf_printf(&b, SIZE_MAX, "%s\n", d->env[i]);
        return b.data;
}

/* Builds the effective deployment: the file's value where it set one, else the code's
 * default, else the system default (already in dc). */
static struct deployment *deployment_build(const struct app_config *a, const struct deployment_config *dc,
                                           const struct description *desc, const struct described_deployment *dd) {
        struct deployment *d = calloc(1, sizeof *d);
        if (!d)
                return NULL;
        list_init(&d->replicas);
        list_init(&d->queue);
        list_init(&d->link);
        d->app = strdup(a->name);
        d->name = strdup(dd->name);
        d->module = strdup(desc->module);
        d->symbol = strdup(desc->symbol);
        d->args_json = strdup(a->args_json ?: "{}");
        d->working_dir = a->runtime_env.working_dir ? strdup(a->runtime_env.working_dir) : NULL;
        d->env = calloc(a->runtime_env.n_env_vars + 1, sizeof(char *));
        for (size_t i = 0; i < a->runtime_env.n_env_vars; i++)
                d->env[d->n_env++] = strdup(a->runtime_env.env_vars[i]);

        struct deployment_config def;
        deployment_config_defaults(&def);
        const struct deployment_config *c = dc ? dc : &def;
        unsigned set = dc ? dc->set : 0;
#define PICK(flag, field, code) ((set & (flag)) ? c->field : ((code) ? (code) : c->field))
        d->target_replicas = PICK(DEPLOY_SET_NUM_REPLICAS, num_replicas, dd->num_replicas);
        d->max_ongoing = PICK(DEPLOY_SET_MAX_ONGOING, max_ongoing_requests, dd->max_ongoing);
        d->max_queued = PICK(DEPLOY_SET_MAX_QUEUED, max_queued_requests, dd->max_queued);
        d->health_period_s = PICK(DEPLOY_SET_HEALTH_PERIOD, health_check_period_s, dd->health_period);
        d->health_timeout_s = PICK(DEPLOY_SET_HEALTH_TIMEOUT, health_check_timeout_s, dd->health_timeout);
        d->graceful_timeout_s = PICK(DEPLOY_SET_GRACEFUL_TIMEOUT, graceful_shutdown_timeout_s, dd->graceful_timeout);
#undef PICK
        if (c->num_replicas_auto && !(dc && dc->has_autoscaling))
                d->target_replicas = 1;
        if (dc && dc->has_autoscaling && !(set & DEPLOY_SET_NUM_REPLICAS))
                d->target_replicas = dc->autoscaling.initial_replicas >= 0 ? dc->autoscaling.initial_replicas
                                                                           : dc->autoscaling.min_replicas;
        if (d->max_ongoing < 1)
                d->max_ongoing = 1;
        d->user_config_json = c->user_config_json ? strdup(c->user_config_json) : NULL;
        d->signature = make_signature(d);
        if (!d->app || !d->name || !d->module || !d->symbol || !d->args_json || !d->signature) {
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
        upstream_fail_all(rep, status, why);
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
                        log_info("replica %s ready (pid %d)", rep->id, (int)rep->pid);
                        router_dispatch(d->sup->router, d);
                }
        } else if (streq(type, "error")) {
                const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "message"));
                log_error("replica %s: %s", rep->id, m ? m : "failed");
        } else if (streq(type, "unhealthy")) {
                const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(j, "message"));
                log_warning("replica %s failed its health check (%s), replacing it", rep->id, m ? m : "check_health");
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
                if (WIFSIGNALED(status))
                        log_warning("replica %s (pid %d) was killed by signal %d", rep->id, (int)rep->pid, WTERMSIG(status));
                else if (!planned)
                        log_warning("replica %s (pid %d) exited with status %d", rep->id, (int)rep->pid, WEXITSTATUS(status));
        }
        if (!planned && !d->retiring && !d->sup->stopping) {
                d->failures++;
                uint64_t backoff = MIN(BACKOFF_MAX_NS, (NSEC_PER_SEC / 4) << MIN(d->failures, 8u));
                d->next_start_ns = now_ns() + backoff;
        }
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
        list_del(&rep->link);
        rep->dep->n_replicas--;
        if (rep->pidfd >= 0)
                close(rep->pidfd);
        if (rep->ctl_fd >= 0)
                close(rep->ctl_fd);
        segment_close(&rep->seg);
        upstream_free(rep);
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
        snprintf(rep->id, sizeof rep->id, "%s/%s#%u", d->app, d->name, rep->serial);
        rep->op_exit.cb = on_exit_ready;
        rep->op_ctl.cb = on_ctl;
        rep->op_bell.cb = on_bell;
        list_init(&rep->link);
        rep->ctl_buf = malloc(CTL_BUF);
        if (!rep->ctl_buf || upstream_init(rep, (uint32_t)d->max_ongoing) < 0) {
                free(rep->ctl_buf);
                free(rep);
                return -ENOMEM;
        }
        r = segment_create("serve-seg", RING_SIZE, &rep->seg);
        if (r < 0) {
                log_error_errno(r, "replica %s: cannot create its shared memory: %m", rep->id);
                upstream_free(rep);
                free(rep->ctl_buf);
                free(rep);
                return r;
        }
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
                r = log_error_errno(errno, "replica %s: socketpair failed: %m", rep->id);
                goto fail;
        }
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
                if (dup2(sv[1], 3) < 0)
                        _exit(127);
                syscall(SYS_close_range, 4, ~0u, 0);
                for (size_t i = 0; i < d->n_env; i++)
                        putenv(d->env[i]);
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
        list_add_tail(&d->replicas, &rep->link);
        d->n_replicas++;
        struct io_uring_sqe *sqe = loop_sqe(s->loop, &rep->op_exit);
        io_uring_prep_poll_add(sqe, rep->pidfd, POLLIN);
        rep->exit_armed = true;
        arm_ctl(rep, s->loop);
        arm_bell(rep, s->loop);
        log_info("replica %s starting (pid %d)", rep->id, (int)pid);
        return 0;
fail:
        segment_close(&rep->seg);
        if (rep->ctl_fd >= 0)
                close(rep->ctl_fd);
        upstream_free(rep);
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

static void reconfigure_all(struct deployment *d) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, link);
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

int supervisor_apply(struct supervisor *s, const struct serve_config *cfg, char **ret_error) {
        struct pending *pend = NULL;
        size_t n_pend = 0;
        struct route *routes = NULL;
        size_t n_routes = 0;
        int r = 0;

        *ret_error = NULL;
        routes = calloc(cfg->n_apps + 1, sizeof *routes);
        if (!routes)
                return -ENOMEM;

        /* 1. Everything is checked before anything changes. */
        for (size_t i = 0; i < cfg->n_apps && r == 0; i++) {
                const struct app_config *a = &cfg->apps[i];
                struct description desc = {};
                char *err = NULL, field[128];

                snprintf(field, sizeof field, "applications[%zu].import_path", i);
                r = describe(s, a, &desc, &err);
                if (r < 0) {
                        fail_at(ret_error, cfg, a->line, a->column, field, "cannot load %s: %s", a->import_path, err ? err : "unknown error");
                        free(err);
                        break;
                }
                for (size_t k = 0; k < a->n_deployments && r == 0; k++) {
                        bool found = false;
                        for (size_t m = 0; m < desc.n_deps; m++)
                                found |= streq(desc.deps[m].name, a->deployments[k].name);
                        if (!found) {
                                snprintf(field, sizeof field, "applications[%zu].deployments[%zu].name", i, k);
                                r = fail_at(ret_error, cfg, a->deployments[k].line, a->deployments[k].column, field,
                                            "no deployment named '%s' in %s", a->deployments[k].name, a->import_path);
                        }
                }
                for (size_t m = 0; m < desc.n_deps && r == 0; m++) {
                        const struct deployment_config *dc = NULL;
                        struct deployment *d;
                        for (size_t k = 0; k < a->n_deployments; k++)
                                if (streq(desc.deps[m].name, a->deployments[k].name))
                                        dc = &a->deployments[k];
                        d = deployment_build(a, dc, &desc, &desc.deps[m]);
                        struct pending *np = d ? realloc(pend, (n_pend + 1) * sizeof *pend) : NULL;
                        if (!np) {
                                deployment_free(d);
                                r = -ENOMEM;
                                break;
                        }
                        pend = np;
                        pend[n_pend++] = (struct pending){ d, NULL };
                        if (a->route_prefix && streq(desc.deps[m].name, desc.ingress)) {
                                routes[n_routes].prefix = strdup(a->route_prefix);
                                routes[n_routes].prefix_len = strlen(a->route_prefix);
                                routes[n_routes].app = strdup(a->name);
                                routes[n_routes].ingress = d; /* fixed up below */
                                n_routes++;
                        }
                }
                description_free(&desc);
        }
        if (r < 0) {
                for (size_t i = 0; i < n_pend; i++)
                        deployment_free(pend[i].d);
                free(pend);
                routes_free(routes, n_routes);
                return r;
        }

        /* 2. Diff against what runs: same code -> update in place; else the new version starts
         *    beside the old one, which keeps the traffic until the new replicas are ready. */
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

                if (old && streq(old->signature, d->signature)) {
                        if (old->target_replicas != d->target_replicas)
                                log_info("deployment %s/%s: num_replicas %d -> %d", d->app, d->name, old->target_replicas,
                                         d->target_replicas);
                        old->target_replicas = d->target_replicas;
                        old->max_queued = d->max_queued;
                        old->health_period_s = d->health_period_s;
                        old->health_timeout_s = d->health_timeout_s;
                        old->graceful_timeout_s = d->graceful_timeout_s;
                        if (!streq_ptr(old->user_config_json, d->user_config_json)) {
                                free(old->user_config_json);
                                old->user_config_json = TAKE_PTR(d->user_config_json);
                                reconfigure_all(old);
                        }
                        deployment_free(d);
                        pend[i].d = NULL;
                        serving = old;
                } else {
                        d->sup = s;
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
        free(pend);
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
                struct upreq *u = list_first(&from->queue, struct upreq, link);
                router_unqueue(u);
                u->dep = to;
                if (!to || router_submit(s->router, u) < 0)
                        proxy_upreq_fail(u, 503, "the deployment was removed");
        }
}

static uint64_t tick_deployment(struct supervisor *s, struct deployment *d, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t next = 100 * NSEC_PER_MSEC;
        int live = 0;

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
                        replica_stop(list_entry(pos, struct replica, link));
        }
health:
        list_for_each_safe(pos, tmp, &d->replicas) {
                struct replica *rep = list_entry(pos, struct replica, link);
                int pr;

                if (rep->state == REPLICA_DEAD)
                        continue;
                pr = upstream_poll(rep);
                if (pr < 0) {
                        log_error("replica %s wrote an invalid record into its ring: killing it", rep->id);
                        replica_kill(rep, 502, "the replica sent an invalid response");
                        continue;
                }
                if (pr > 0)
                        router_dispatch(s->router, d);
                if (upstream_flush(rep))
                        next = MIN(next, NSEC_PER_MSEC);
                if (rep->state == REPLICA_READY) {
                        uint64_t hb = atomic_load_explicit(&rep->seg.ctl->heartbeat_ns, memory_order_relaxed);
                        uint64_t limit = sec_to_ns(d->health_timeout_s);
                        if (hb + limit < now && rep->started_ns + limit < now && limit > 0) {
                                log_error("replica %s missed its heartbeat for %.1fs: killing it", rep->id, d->health_timeout_s);
                                rep->kill_timeout = true;
                                replica_kill(rep, 504, "the replica stopped responding (health_check_timeout_s)");
                                continue;
                        }
                } else if (rep->state == REPLICA_STARTING && now > rep->started_ns + STARTUP_TIMEOUT_NS) {
                        log_error("replica %s did not become ready in %llus: killing it", rep->id,
                                  (unsigned long long)(STARTUP_TIMEOUT_NS / NSEC_PER_SEC));
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
                int extra = live - d->target_replicas;
                /* Starting replicas go first, then the least busy. */
                for (int pass = 0; pass < 2 && extra > 0; pass++)
                        list_for_each_safe(pos, tmp, &d->replicas) {
                                struct replica *rep = list_entry(pos, struct replica, link);
                                if (extra == 0)
                                        break;
                                if ((pass == 0 && rep->state == REPLICA_STARTING) ||
                                    (pass == 1 && rep->state == REPLICA_READY)) {
                                        replica_stop(rep);
                                        extra--;
                                }
                        }
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
                        if (!routed && d->queue_len == 0) {
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
                        struct replica *rep = list_entry(p2, struct replica, link);
                        if (rep->state == REPLICA_DEAD)
                                continue;
                        upstream_ring_bells(rep);
                        if (!ring_consumer_prepare_sleep(&rep->seg.resp))
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
                        struct replica *rep = list_entry(p2, struct replica, link);
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
                        replica_stop(list_entry(p2, struct replica, link));
        }
}

unsigned supervisor_busy(const struct supervisor *s) {
        struct list *pos, *tmp, *p2, *t2;
        unsigned n = 0;

        list_for_each_safe(pos, tmp, (struct list *)&s->deployments) {
                struct deployment *d = list_entry(pos, struct deployment, link);
                n += (unsigned)d->queue_len;
                list_for_each_safe(p2, t2, &d->replicas)
                        n += (unsigned)list_entry(p2, struct replica, link)->ongoing;
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

int supervisor_new(struct loop *loop, struct router *router, const char *replica_bin, struct supervisor **ret) {
        struct supervisor *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->router = router;
        s->replica_bin = strdup(replica_bin);
        list_init(&s->deployments);
        *ret = s;
        return 0;
}

void supervisor_free(struct supervisor *s) {
        struct list *pos, *tmp;
        if (!s)
                return;
        list_for_each_safe(pos, tmp, &s->deployments)
                deployment_free(list_entry(pos, struct deployment, link));
        free(s->replica_bin);
        free(s);
}
