/* A child process watched from the io_uring loop: user code (an application's describe, a
 * provider hook) runs in its own process, and the daemon never waits for it.
 *
 * The child is started with posix_spawn (the daemon may be large: no fork), its exit is seen
 * through a pidfd, stdout and stderr are read by loop operations with limits, and an absolute
 * deadline ends it (SIGTERM, then SIGKILL after a grace period). The caller hears once, from the
 * loop. What is left when the caller has heard (a reaped-later child, reads of pipes a grandchild
 * keeps open, a timer) ends in the background; the object frees itself when the last of its
 * operations completed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#define CHILDPROC_STDIN_MAX (64u << 10)

struct childproc;

struct childproc_result {
        int status;              /* waitpid() status; meaningful unless timed_out */
        bool timed_out;          /* killed at the deadline */
        const char *out;         /* stdout, NUL-terminated; the first out_max bytes with -EFBIG */
        size_t out_len;
        bool out_truncated;      /* stdout went past out_max (-EFBIG) */
        const char *err;         /* stderr, NUL-terminated: the LAST err_max bytes */
        size_t err_len;
};

/* Called once, from the loop. r: 0 (the child ran and exited: look at status), -ETIMEDOUT (the
 * deadline passed; the child was signalled and has exited, or got SIGKILL), -EFBIG (stdout over
 * out_max; the child was killed), or another negative errno. res is never NULL and is borrowed:
 * copy what you keep. The childproc is gone for the caller after the call. */
typedef void (*childproc_done)(void *userdata, int r, const struct childproc_result *res);

struct childproc_options {
        const char *path;        /* executed as is: no $PATH search */
        char *const *argv;
        char *const *envp;       /* NULL: environ */
        const char *cwd;         /* NULL: inherit */
        const char *stdin_data;  /* NULL: /dev/null; else stdin_len bytes (at most CHILDPROC_STDIN_MAX),
                                  * written into a pipe before the child runs */
        size_t stdin_len;
        size_t out_max, err_max; /* out_max 0: any byte on stdout is -EFBIG; err_max 0: stderr dropped */
        uint64_t deadline_ns;    /* absolute, loop clock (CLOCK_MONOTONIC, as now_ns()); 0: none */
        double kill_grace_s;     /* at the deadline SIGTERM, then SIGKILL after this (0: SIGKILL at once) */
        bool new_session;        /* setsid in the child: what it starts is not in our session, and
                                  * SIGTERM/SIGKILL go to its process group */
};

/* Starts the child. Returns 0 and *ret (a handle for childproc_cancel(), valid until `done` is
 * called), or a negative errno and *ret_error (a malloc'd message; `done` is never called):
 * -EINVAL (bad options), -E2BIG (stdin over CHILDPROC_STDIN_MAX), the errno of posix_spawn
 * (-ENOENT, -EACCES, ...), or of the pipes and the pidfd. */
int childproc_start(struct loop *loop, const struct childproc_options *o, childproc_done done, void *userdata,
                    struct childproc **ret, char **ret_error);

/* Kills the child (its process group with new_session) if it still runs; `done` is never called
 * afterwards. The object frees itself once the loop has seen the child exit and its operations
 * end. Accepts NULL. */
void childproc_cancel(struct childproc *c);
/* Stops watching the child and leaves it running (what it writes to its closed pipes later
 * fails); `done` is never called afterwards. A daemon that exits uses it for work that must
 * not be cut short. Accepts NULL. */
void childproc_detach(struct childproc *c);
