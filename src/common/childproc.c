/* A child process watched from the io_uring loop (see childproc.h): spawn, pidfd exit watch,
 * stdout/stderr reads with limits, the deadline with its grace period, one report, cancel. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "childproc.h"
#include "macros.h"
#include "util.h"

#define READ_CHUNK (16u << 10)

struct childproc_stream {
        struct childproc *c;
        int fd;                 /* -1 once it reached EOF, failed, or was drained after the exit */
        struct buf buf;
        size_t max;
        bool keep_tail;         /* stderr: keep the last max bytes (the end says why it failed) */
        bool discard;           /* keep reading (the child must not block on a full pipe), keep nothing */
        struct loop_op op;
};

struct childproc {
        struct loop *loop;
        pid_t pid;
        int pidfd;
        bool new_session;
        double kill_grace_s;
        struct childproc_stream out, err;
        struct loop_op op_exit, op_timer;
        struct __kernel_timespec ts;    /* the timer's; read by the kernel when the SQE is submitted */
        unsigned ops;                   /* operations in flight: freed only once none is */
        bool exited, timer_armed, finished, timed_out, out_truncated;
        bool detached;                  /* childproc_detach(): finishing kills nothing */
        int status;
        childproc_done done;            /* NULL once cancelled */
        void *userdata;
};

static void maybe_free(struct childproc *c) {
        if (!c->finished || c->ops > 0)
                return;
        if (c->pidfd >= 0)
                close(c->pidfd);
        buf_free(&c->out.buf);
        buf_free(&c->err.buf);
        free(c);
}

/* Only while the child is not reaped: until then its pid (and so its process group's id) cannot
 * name another process. */
static void signal_child(struct childproc *c, int sig) {
        if (c->exited)
                return;
        if (c->new_session)
                (void)kill(-c->pid, sig);
        (void)syscall(SYS_pidfd_send_signal, c->pidfd, sig, NULL, 0);
}

static void close_stream(struct childproc_stream *s) {
        if (s->fd >= 0)
                close(s->fd);
        s->fd = -1;
}

/* NUL-terminates b and returns its text ("" when even that byte cannot be had). */
static const char *buf_text(struct buf *b, size_t *ret_len) {
        if (buf_append(b, "", 1, SIZE_MAX) < 0) {
                *ret_len = 0;
                return "";
        }
        b->len--;
        *ret_len = b->len;
        return b->data;
}

/* Reports once. The child is killed if it still runs; what is still in flight (its exit, reads
 * a grandchild keeps open, the timer) ends in the background. */
static void finish(struct childproc *c, int r) {
        childproc_done done = c->done;
        struct childproc_result res = {
                .status = c->status,
                .timed_out = c->timed_out,
                .out_truncated = c->out_truncated,
        };

        c->finished = true;
        c->done = NULL;
        if (!c->detached)
                signal_child(c, SIGKILL);
        if (c->out.fd >= 0)
                io_uring_prep_cancel(loop_sqe(c->loop, NULL), &c->out.op, 0);
        if (c->err.fd >= 0)
                io_uring_prep_cancel(loop_sqe(c->loop, NULL), &c->err.op, 0);
        if (c->timer_armed)
                io_uring_prep_timeout_remove(loop_sqe(c->loop, NULL), (uint64_t)(uintptr_t)&c->op_timer, 0);
        if (!done)
                return;
        if (c->err.buf.len > c->err.max)
                buf_consume(&c->err.buf, c->err.buf.len - c->err.max);
        res.out = buf_text(&c->out.buf, &res.out_len);
        res.err = buf_text(&c->err.buf, &res.err_len);
        done(c->userdata, r, &res);
}

/* Everything is in once the child exited and both pipes are drained. */
static void progress(struct childproc *c) {
        if (c->finished || !c->exited || c->out.fd >= 0 || c->err.fd >= 0)
                return;
        finish(c, c->timed_out ? -ETIMEDOUT : 0);
}

/* Takes n bytes just read into s's buffer. Returns false when that ended the child (stdout over
 * its limit). */
static bool stream_took(struct childproc_stream *s, size_t n) {
        struct childproc *c = s->c;

        if (s->discard)
                return true;
        s->buf.len += n;
        if (s->buf.len <= s->max)
                return true;
        if (s->keep_tail) {
                /* Trim rarely: the buffer holds up to twice the tail we keep. */
                if (s->buf.len > 2 * s->max)
                        buf_consume(&s->buf, s->buf.len - s->max);
                return true;
        }
        s->buf.len = s->max;
        c->out_truncated = true;
        close_stream(s);
        finish(c, -EFBIG);
        return false;
}

/* Where the next read goes: the buffer, or scratch space once we keep nothing more. */
static void read_target(struct childproc_stream *s, char **ret_p, size_t *ret_len) {
        static char scratch[READ_CHUNK]; /* where dropped bytes go: nobody reads them */
        size_t limit = s->keep_tail ? 2 * s->max + READ_CHUNK : s->max + READ_CHUNK;

        if (!s->discard && buf_reserve(&s->buf, READ_CHUNK, limit) < 0) {
                /* Out of memory: stdout would be wrong, so it ends the child; stderr keeps what it has. */
                if (!s->keep_tail) {
                        *ret_p = NULL;
                        return;
                }
                s->discard = true;
        }
        if (s->discard) {
                *ret_p = scratch;
                *ret_len = sizeof scratch;
        } else {
                *ret_p = s->buf.data + s->buf.len;
                *ret_len = s->buf.cap - s->buf.len;
        }
}

static void arm_read(struct childproc_stream *s) {
        struct childproc *c = s->c;
        size_t len = 0;
        char *p;

        read_target(s, &p, &len);
        if (!p) {
                close_stream(s);
                finish(c, -ENOMEM);
                return;
        }
        io_uring_prep_read(loop_sqe(c->loop, &s->op), s->fd, p, (unsigned)len, (uint64_t)-1);
        c->ops++;
}

/* After the child exited: takes what is in the pipe now, without waiting for an EOF that a
 * grandchild holding the pipe open may never send. The fd is blocking, so read only what
 * FIONREAD says is there (we are its only reader). */
static void drain(struct childproc_stream *s) {
        int avail = 0;

        if (ioctl(s->fd, FIONREAD, &avail) < 0)
                return;
        while (avail > 0 && !s->c->finished) {
                size_t len = 0;
                char *p;
                ssize_t n;

                read_target(s, &p, &len);
                if (!p) {
                        close_stream(s);
                        finish(s->c, -ENOMEM);
                        return;
                }
                n = read(s->fd, p, MIN(len, (size_t)avail));
                if (n <= 0)
                        return;
                avail -= (int)n;
                if (!stream_took(s, (size_t)n))
                        return;
        }
}

static void on_read(struct loop_op *op, int res, unsigned flags) {
        struct childproc_stream *s = container_of(op, struct childproc_stream, op);
        struct childproc *c = s->c;

        c->ops--;
        if (c->finished) {
                close_stream(s);
                maybe_free(c);
                return;
        }
        if (res > 0 && !stream_took(s, (size_t)res)) {
                maybe_free(c);
                return;
        }
        if (!c->exited && (res > 0 || res == -EINTR || res == -EAGAIN)) {
                arm_read(s);
                maybe_free(c);
                return;
        }
        if (c->exited && res != 0)
                drain(s);
        close_stream(s);
        progress(c);
        maybe_free(c);
}

static void arm_exit(struct childproc *c) {
        io_uring_prep_poll_add(loop_sqe(c->loop, &c->op_exit), c->pidfd, POLLIN);
        c->ops++;
}

static void on_exit_event(struct loop_op *op, int res, unsigned flags) {
        struct childproc *c = container_of(op, struct childproc, op_exit);
        pid_t p;

        c->ops--;
        /* A hook that ran out of time leaves nothing behind in its group: kill it while the
         * zombie still holds the group's id. */
        if (c->timed_out && c->new_session)
                (void)kill(-c->pid, SIGKILL);
        do
                p = waitpid(c->pid, &c->status, WNOHANG);
        while (p < 0 && errno == EINTR);
        if (p == 0) {
                arm_exit(c); /* woken early: the child is still there */
                return;
        }
        /* p < 0 (ECHILD) means someone else reaped it; count it as a failed run. */
        if (p < 0)
                c->status = W_EXITCODE(127, 0);
        c->exited = true;
        if (!c->finished) {
                /* The reads in flight come back (cancelled, or with data), then drain. */
                if (c->out.fd >= 0)
                        io_uring_prep_cancel(loop_sqe(c->loop, NULL), &c->out.op, 0);
                if (c->err.fd >= 0)
                        io_uring_prep_cancel(loop_sqe(c->loop, NULL), &c->err.op, 0);
                progress(c);
        }
        maybe_free(c);
}

static void arm_timer(struct childproc *c, uint64_t ns, unsigned flags) {
        c->ts = (struct __kernel_timespec){ .tv_sec = (long long)(ns / NSEC_PER_SEC),
                                            .tv_nsec = (long long)(ns % NSEC_PER_SEC) };
        io_uring_prep_timeout(loop_sqe(c->loop, &c->op_timer), &c->ts, 0, flags);
        c->timer_armed = true;
        c->ops++;
}

/* The deadline: SIGTERM and the grace timer, or SIGKILL. At SIGKILL the caller hears at once
 * (a child stuck in the kernel must not hold it); after SIGTERM, when the child exits. */
static void on_timer(struct loop_op *op, int res, unsigned flags) {
        struct childproc *c = container_of(op, struct childproc, op_timer);

        c->ops--;
        c->timer_armed = false;
        if (res == -ETIME && !c->finished) {
                if (!c->timed_out && c->kill_grace_s > 0) {
                        c->timed_out = true;
                        signal_child(c, SIGTERM);
                        arm_timer(c, sec_to_ns(c->kill_grace_s), 0);
                } else {
                        c->timed_out = true;
                        finish(c, -ETIMEDOUT);
                }
        }
        maybe_free(c);
}

/* stdin's pipe, filled before the child runs, its write end closed: the child reads the data,
 * then EOF. Returns the read end or a negative errno. */
static int stdin_pipe(const char *data, size_t len) {
        _cleanup_close_ int r_fd = -1, w_fd = -1;
        int fds[2], r;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return -errno;
        r_fd = fds[0];
        w_fd = fds[1];
        /* Pipes are 64 KiB by default, but a user over pipe-user-pages-soft gets 4 KiB ones. */
        if (len > 0 && fcntl(w_fd, F_GETPIPE_SZ) < (int)len && fcntl(w_fd, F_SETPIPE_SZ, (int)len) < 0)
                return -errno;
        r = fd_nonblock(w_fd, true); /* never block the loop: a short pipe fails instead */
        if (r < 0)
                return r;
        r = write_all(w_fd, data, len);
        if (r < 0)
                return r;
        return TAKE_FD(r_fd);
}

/* posix_spawn (vfork-like): the daemon may be large, and a fork would copy its page tables for
 * every child. Returns the pid or a negative errno. */
static pid_t spawn(const struct childproc_options *o, int in_fd, int out_fd, int err_fd) {
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t attr;
        sigset_t none, all;
        short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
        pid_t pid;
        int r;

        sigemptyset(&none);
        sigfillset(&all); /* what the daemon ignores (SIGPIPE...) is not ignored in the child */
        posix_spawn_file_actions_init(&fa);
        if (in_fd >= 0)
                posix_spawn_file_actions_adddup2(&fa, in_fd, STDIN_FILENO);
        else
                posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, err_fd, STDERR_FILENO);
        if (o->cwd)
                posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
        posix_spawnattr_init(&attr);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &all);
        if (o->new_session)
                flags |= POSIX_SPAWN_SETSID;
        posix_spawnattr_setflags(&attr, flags);
        r = posix_spawn(&pid, o->path, &fa, &attr, o->argv, o->envp ?: environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        return r != 0 ? -r : pid;
}

int childproc_start(struct loop *loop, const struct childproc_options *o, childproc_done done, void *userdata,
                    struct childproc **ret, char **ret_error) {
        _cleanup_close_ int in_r = -1, out_r = -1, out_w = -1, err_r = -1, err_w = -1;
        struct childproc *c;
        int fds[2];
        pid_t pid;

        if (!o->path || !o->argv || !o->argv[0] || !done)
                return error_set(-EINVAL, ret_error, "no program to run");
        if (o->kill_grace_s < 0 || o->kill_grace_s > 86400)
                return error_set(-EINVAL, ret_error, "kill grace period out of range");
        if (o->stdin_data) {
                if (o->stdin_len > CHILDPROC_STDIN_MAX)
                        return error_set(-E2BIG, ret_error, "input for %s is %zu bytes, more than %u", o->path,
                                         o->stdin_len, CHILDPROC_STDIN_MAX);
                in_r = stdin_pipe(o->stdin_data, o->stdin_len);
                if (in_r < 0)
                        return error_set(in_r, ret_error, "cannot pass input to %s: %s", o->path, strerror(-in_r));
        }
        if (pipe2(fds, O_CLOEXEC) < 0)
                return error_set(-errno, ret_error, "cannot create a pipe: %s", strerror(errno));
        out_r = fds[0];
        out_w = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
                return error_set(-errno, ret_error, "cannot create a pipe: %s", strerror(errno));
        err_r = fds[0];
        err_w = fds[1];
        c = calloc(1, sizeof *c);
        if (!c)
                return error_set(-ENOMEM, ret_error, "out of memory");
        /* The first reads cannot fail then: `done` is never called from in here. */
        if (buf_reserve(&c->out.buf, READ_CHUNK, o->out_max + READ_CHUNK) < 0 ||
            (o->err_max > 0 && buf_reserve(&c->err.buf, READ_CHUNK, 2 * o->err_max + READ_CHUNK) < 0)) {
                buf_free(&c->out.buf);
                free(c);
                return error_set(-ENOMEM, ret_error, "out of memory");
        }
        pid = spawn(o, in_r, out_w, err_w);
        if (pid < 0) {
                buf_free(&c->out.buf);
                buf_free(&c->err.buf);
                free(c);
                return error_set(pid, ret_error, "cannot run %s: %s", o->path, strerror(-pid));
        }
        /* Nobody else waits for this child, so the pid stays ours until we reap it. */
        c->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (c->pidfd < 0) {
                int r = -errno;
                if (o->new_session)
                        kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                        ;
                buf_free(&c->out.buf);
                buf_free(&c->err.buf);
                free(c);
                return error_set(r, ret_error, "pidfd_open failed: %s", strerror(-r));
        }
        c->loop = loop;
        c->pid = pid;
        c->new_session = o->new_session;
        c->kill_grace_s = o->kill_grace_s;
        c->done = done;
        c->userdata = userdata;
        c->out = (struct childproc_stream){
                .c = c, .fd = TAKE_FD(out_r), .buf = c->out.buf, .max = o->out_max, .op.cb = on_read,
        };
        c->err = (struct childproc_stream){
                .c = c, .fd = TAKE_FD(err_r), .buf = c->err.buf, .max = o->err_max, .keep_tail = true,
                .discard = o->err_max == 0, .op.cb = on_read,
        };
        c->op_exit.cb = on_exit_event;
        c->op_timer.cb = on_timer;
        arm_read(&c->out);
        arm_read(&c->err);
        arm_exit(c);
        if (o->deadline_ns)
                arm_timer(c, o->deadline_ns, IORING_TIMEOUT_ABS);
        *ret = c;
        return 0;
}

void childproc_detach(struct childproc *c) {
        if (!c)
                return;
        c->detached = true;
        childproc_cancel(c);
}

void childproc_cancel(struct childproc *c) {
        if (!c)
                return;
        c->done = NULL;
        if (!c->finished)
                finish(c, -ECANCELED);
        maybe_free(c);
}
