#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "describe.h"
#include "macros.h"
#include "util.h"

#define DESCRIBE_OUT_MAX (1u << 20)
#define DESCRIBE_ERR_MAX (64u << 10) /* kept of stderr; the rest is read and dropped */
#define READ_CHUNK 4096u

struct describe_stream {
        struct describe_job *j;
        int fd;                 /* -1 once it reached EOF, failed or was cancelled */
        struct buf buf;
        size_t max;
        bool discard;           /* past max: keep reading (the child must not block), keep nothing */
        struct loop_op op;
};

struct describe_job {
        struct loop *loop;
        pid_t pid;
        int pidfd;
        struct describe_stream out, err;
        struct loop_op op_exit, op_timer;
        struct __kernel_timespec deadline;
        unsigned ops;           /* operations in flight: the job is freed only once none is */
        bool exited, timer_armed, finished;
        int status;
        describe_done done;     /* NULL once cancelled */
        void *userdata;
};

void description_free(struct description *d) {
        free(d->module);
        free(d->symbol);
        free(d->ingress);
        for (size_t i = 0; i < d->n_deps; i++) {
                free(d->deps[i].name);
                free(d->deps[i].user_config_json);
                free(d->deps[i].autoscaling_config_json);
        }
        free(d->deps);
        memset(d, 0, sizeof *d);
}

int describe_hash_file(const char *path, uint64_t *ret) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        uint64_t h = 0xcbf29ce484222325ull;
        uint8_t chunk[64 * 1024];

        if (fd < 0)
                return -errno;
        for (;;) {
                ssize_t n = read(fd, chunk, sizeof chunk);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                for (ssize_t i = 0; i < n; i++)
                        h = (h ^ chunk[i]) * 0x100000001b3ull;
        }
        *ret = h;
        return 0;
}

static double json_num(const cJSON *o, const char *k) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
        return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The JSON serve-replica --describe printed. Returns 0 and *ret, or -EINVAL / -ENOMEM with a
 * message in *ret_err. */
static int describe_parse(const char *out, struct description *ret, char **ret_err) {
        const cJSON *deps, *it;
        cJSON *j = cJSON_Parse(out);

        if (!j)
                return error_set(-EINVAL, ret_err, "serve-replica --describe printed invalid JSON");
        memset(ret, 0, sizeof *ret);
        ret->module = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "module")) ?: "");
        ret->symbol = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "symbol")) ?: "");
        ret->ingress = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "ingress")) ?: "");
        deps = cJSON_GetObjectItem(j, "deployments");
        ret->deps = calloc((size_t)cJSON_GetArraySize(deps) + 1, sizeof *ret->deps);
        if (!ret->module || !ret->symbol || !ret->ingress || !ret->deps) {
                cJSON_Delete(j);
                description_free(ret);
                return error_set(-ENOMEM, ret_err, "out of memory");
        }
        cJSON_ArrayForEach(it, deps) {
                const cJSON *def = cJSON_GetObjectItem(it, "defaults");
                struct described_deployment *d = &ret->deps[ret->n_deps++];
                d->name = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(it, "name")) ?: "");
                d->num_replicas = (int)json_num(def, "num_replicas");
                d->max_ongoing = (int)json_num(def, "max_ongoing_requests");
                d->max_queued = (int)json_num(def, "max_queued_requests");
                d->health_period = json_num(def, "health_check_period_s");
                d->health_timeout = json_num(def, "health_check_timeout_s");
                d->graceful_timeout = json_num(def, "graceful_shutdown_timeout_s");
                d->num_cpus = json_num(def, "num_cpus");
                d->num_gpus = json_num(def, "num_gpus");
                const char *uc = cJSON_GetStringValue(cJSON_GetObjectItem(def, "user_config"));
                const char *as = cJSON_GetStringValue(cJSON_GetObjectItem(def, "autoscaling_config"));
                d->user_config_json = uc ? strdup(uc) : NULL;
                d->autoscaling_config_json = as ? strdup(as) : NULL;
                if (!d->name || (uc && !d->user_config_json) || (as && !d->autoscaling_config_json)) {
                        cJSON_Delete(j);
                        description_free(ret);
                        return error_set(-ENOMEM, ret_err, "out of memory");
                }
        }
        cJSON_Delete(j);
        return 0;
}

/* ---- the child, watched from the loop ---- */

static void maybe_free(struct describe_job *j) {
        if (!j->finished || j->ops > 0)
                return;
        if (j->pidfd >= 0)
                close(j->pidfd);
        buf_free(&j->out.buf);
        buf_free(&j->err.buf);
        free(j);
}

static void arm_read(struct describe_stream *s) {
        static char scratch[READ_CHUNK]; /* where dropped bytes go: nobody reads them */
        struct describe_job *j = s->j;
        char *p = scratch;
        size_t len = sizeof scratch;

        if (!s->discard) {
                if (buf_reserve(&s->buf, READ_CHUNK, s->max + READ_CHUNK) < 0)
                        s->discard = true;
                else {
                        p = s->buf.data + s->buf.len;
                        len = s->buf.cap - s->buf.len;
                }
        }
        struct io_uring_sqe *sqe = loop_sqe(j->loop, &s->op);
        io_uring_prep_read(sqe, s->fd, p, (unsigned)len, (uint64_t)-1);
        j->ops++;
}

static void cancel_op(struct describe_job *j, struct loop_op *op) {
        struct io_uring_sqe *sqe = loop_sqe(j->loop, NULL);
        io_uring_prep_cancel(sqe, op, 0);
}

/* Reports once; desc's contents go to the callee. The child is killed if it still runs; what is
 * still in flight (its exit, reads a grandchild keeps open, the deadline) ends in the
 * background. */
static void finish(struct describe_job *j, int r, struct description *desc, const char *error) {
        describe_done done = j->done;

        j->finished = true;
        j->done = NULL;
        if (!j->exited)
                (void)syscall(SYS_pidfd_send_signal, j->pidfd, SIGKILL, NULL, 0);
        if (j->out.fd >= 0)
                cancel_op(j, &j->out.op);
        if (j->err.fd >= 0)
                cancel_op(j, &j->err.op);
        if (j->timer_armed) {
                struct io_uring_sqe *sqe = loop_sqe(j->loop, NULL);
                io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&j->op_timer, 0);
        }
        if (done)
                done(j->userdata, r, desc, error);
        else if (desc)
                description_free(desc);
}

/* Everything is in once the child exited and both pipes reached EOF. */
static void progress(struct describe_job *j) {
        struct description desc = {};
        _cleanup_free_ char *err = NULL;
        int r;

        if (j->finished || !j->exited || j->out.fd >= 0 || j->err.fd >= 0)
                return;
        if (!WIFEXITED(j->status) || WEXITSTATUS(j->status) != 0) {
                struct buf *e = &j->err.buf;
                while (e->len > 0 && (e->data[e->len - 1] == '\n' || e->data[e->len - 1] == '\r'))
                        e->len--;
                if (e->len > 0 && buf_append(e, "", 1, SIZE_MAX) == 0)
                        finish(j, -EINVAL, NULL, e->data);
                else if (WIFSIGNALED(j->status))
                        finish(j, -EINVAL, NULL, strsignal(WTERMSIG(j->status)));
                else
                        finish(j, -EINVAL, NULL, "serve-replica --describe failed");
                return;
        }
        if (buf_append(&j->out.buf, "", 1, SIZE_MAX) < 0) {
                finish(j, -ENOMEM, NULL, NULL);
                return;
        }
        r = describe_parse(j->out.buf.data, &desc, &err);
        if (r >= 0) {
                /* The version of a deployment covers its code, not only the path to it: a
                 * library replaced in place is new code. */
                r = describe_hash_file(desc.module, &desc.module_hash);
                if (r < 0) {
                        free(err);
                        if (asprintf(&err, "cannot read %s: %s", desc.module, strerror(-r)) < 0)
                                err = NULL;
                        description_free(&desc);
                        r = -EINVAL;
                }
        }
        if (r < 0) {
                finish(j, r, NULL, err);
                return;
        }
        finish(j, 0, &desc, NULL);
}

static void on_read(struct loop_op *op, int res, unsigned flags) {
        struct describe_stream *s = container_of(op, struct describe_stream, op);
        struct describe_job *j = s->j;

        j->ops--;
        if (res > 0 && !j->finished) {
                if (!s->discard) {
                        s->buf.len += (size_t)res;
                        if (s->buf.len > s->max) {
                                if (s == &j->out) {
                                        close(s->fd);
                                        s->fd = -1;
                                        finish(j, -EFBIG, NULL, "serve-replica --describe printed more than 1 MiB");
                                        maybe_free(j);
                                        return;
                                }
                                s->buf.len = s->max;
                                s->discard = true;
                        }
                }
                arm_read(s);
                return;
        }
        close(s->fd);
        s->fd = -1;
        progress(j);
        maybe_free(j);
}

static void arm_exit(struct describe_job *j) {
        struct io_uring_sqe *sqe = loop_sqe(j->loop, &j->op_exit);
        io_uring_prep_poll_add(sqe, j->pidfd, POLLIN);
        j->ops++;
}

static void on_exit_event(struct loop_op *op, int res, unsigned flags) {
        struct describe_job *j = container_of(op, struct describe_job, op_exit);
        pid_t p;

        j->ops--;
        do
                p = waitpid(j->pid, &j->status, WNOHANG);
        while (p < 0 && errno == EINTR);
        if (p == 0) {
                arm_exit(j); /* woken early: the child is still there */
                return;
        }
        /* p < 0 (ECHILD) means someone else reaped it; count it as a failed describe. */
        if (p < 0)
                j->status = W_EXITCODE(127, 0);
        j->exited = true;
        progress(j);
        maybe_free(j);
}

static void on_deadline(struct loop_op *op, int res, unsigned flags) {
        struct describe_job *j = container_of(op, struct describe_job, op_timer);

        j->ops--;
        j->timer_armed = false;
        if (res == -ETIME && !j->finished)
                finish(j, -ETIMEDOUT, NULL, NULL);
        maybe_free(j);
}

/* posix_spawn (vfork-like): the head may be large, and a fork would copy its page tables for
 * every application it describes. Returns the pid or a negative errno. */
static pid_t spawn_describe(const char *replica_bin, const char *import_path, const char *working_dir, int out_fd,
                            int err_fd) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none;
        pid_t pid;
        char *argv[] = { "serve-replica", "--describe", (char *)import_path, "--working-dir", (char *)working_dir, NULL };

        if (!working_dir)
                argv[3] = NULL;
        sigemptyset(&none);
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, err_fd, STDERR_FILENO);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
        int r = posix_spawn(&pid, replica_bin, &fa, &attr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        return r != 0 ? -r : pid;
}

int describe_start(struct loop *loop, const char *replica_bin, const char *import_path, const char *working_dir,
                   uint64_t deadline_ns, describe_done done, void *userdata, struct describe_job **ret,
                   char **ret_error) {
        _cleanup_close_ int out_r = -1, out_w = -1, err_r = -1, err_w = -1;
        struct describe_job *j;
        int fds[2];
        pid_t pid;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return error_set(-errno, ret_error, "cannot create a pipe: %s", strerror(errno));
        out_r = fds[0];
        out_w = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
                return error_set(-errno, ret_error, "cannot create a pipe: %s", strerror(errno));
        err_r = fds[0];
        err_w = fds[1];
        j = calloc(1, sizeof *j);
        if (!j)
                return error_set(-ENOMEM, ret_error, "out of memory");
        pid = spawn_describe(replica_bin, import_path, working_dir, out_w, err_w);
        if (pid < 0) {
                free(j);
                return error_set(pid, ret_error, "cannot run %s: %s", replica_bin, strerror(-pid));
        }
        /* Nobody else waits for this child, so the pid stays ours until we reap it. */
        j->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (j->pidfd < 0) {
                int r = -errno;
                kill(pid, SIGKILL);
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                        ;
                free(j);
                return error_set(r, ret_error, "pidfd_open failed: %s", strerror(-r));
        }
        j->loop = loop;
        j->pid = pid;
        j->done = done;
        j->userdata = userdata;
        j->out = (struct describe_stream){ .j = j, .fd = TAKE_FD(out_r), .max = DESCRIBE_OUT_MAX, .op.cb = on_read };
        j->err = (struct describe_stream){ .j = j, .fd = TAKE_FD(err_r), .max = DESCRIBE_ERR_MAX, .op.cb = on_read };
        j->op_exit.cb = on_exit_event;
        j->op_timer.cb = on_deadline;
        arm_read(&j->out);
        arm_read(&j->err);
        arm_exit(j);
        j->deadline = (struct __kernel_timespec){ .tv_sec = (long long)(deadline_ns / NSEC_PER_SEC),
                                                  .tv_nsec = (long long)(deadline_ns % NSEC_PER_SEC) };
        struct io_uring_sqe *sqe = loop_sqe(loop, &j->op_timer);
        io_uring_prep_timeout(sqe, &j->deadline, 0, IORING_TIMEOUT_ABS);
        j->timer_armed = true;
        j->ops++;
        *ret = j;
        return 0;
}

void describe_cancel(struct describe_job *j) {
        if (!j)
                return;
        j->done = NULL;
        if (!j->finished)
                finish(j, -ECANCELED, NULL, NULL);
        maybe_free(j);
}
