/* A worker group's provider hooks: the executables NAME/{create,delete,list} that make and
 * remove nodes (network namespaces on this machine, cloud instances...), run as child processes
 * watched from the loop (childproc), their output parsed and bounded.
 *
 * A hook's stdout may carry secrets (cloud credentials echoed by a careless script): nothing of
 * it is logged or returned beyond the fields parsed out of it. Its stderr's last line goes into
 * the error, so the log and the API say why it failed. */
#pragma once

#include "loop.h"

enum provider_op { PROVIDER_CREATE, PROVIDER_DELETE, PROVIDER_LIST };

#define PROVIDER_CREATE_OUT_MAX (64u << 10)
#define PROVIDER_LIST_OUT_MAX (4u << 20)
#define PROVIDER_LIST_LINES_MAX 10000u
#define PROVIDER_LIST_LINE_MAX 4096u
#define PROVIDER_ID_MAX 256u
#define PROVIDER_ADDRESS_MAX 64u
#define PROVIDER_KILL_GRACE_S 5.0

struct provider_node {
        char *name, *group, *id, *address; /* id, address: NULL when not given */
        double created;                    /* unix s, 0 unknown */
};

struct provider_call;

/* Called once, from the loop. r 0: success; nodes: create → 1 entry (id, address from its stdout
 * object; name from the call, group "": the caller knows it); list → the parsed lines; delete →
 * none. r < 0: `error` is one line for the log and the API ("provider netns: create cpu-3f9a2c
 * exited with status 3: <its last stderr line>", "... timed out after 300 s", "... printed no
 * JSON object", "... list line 4: not a JSON object"); r is -EIO (the hook failed: non-zero
 * exit, a signal), -ETIMEDOUT, -EFBIG (too much output), -EBADMSG (output we cannot use) or
 * -ENOMEM. The callee owns nothing: copy what you keep. */
typedef void (*provider_done)(void *userdata, int r, const char *error, const struct provider_node *nodes,
                              size_t n_nodes);

/* Finds PROVIDER/OP in the directories of $SERVE_PROVIDER_PATH (colon-separated; relative
 * entries are skipped) when set, else /etc/serve/providers then LIBEXECDIR "/providers". As
 * execvp does, a file that is there but not executable does not stop the search. Returns 0 and
 * *ret_path (malloc'd), or -EINVAL (a provider or op name that is not a plain file name),
 * -ENOENT (nowhere), -EACCES (found, never executable) or -ENOMEM, with *ret_error naming every
 * place searched. */
int provider_find(const char *provider, const char *op, char **ret_path, char **ret_error);

/* Runs `PATH create NODE` / `PATH delete NODE` / `PATH list` with stdin_json on stdin (NULL:
 * /dev/null; at most 64 KiB), cwd /, in a new session, for at most timeout_s (then SIGTERM to
 * its process group, SIGKILL 5 s later); stdout at most 64 KiB (list: 4 MiB and 10000 lines of
 * at most 4 KiB). Returns 0 and *ret (for provider_cancel(), valid until `done` is called), or
 * a negative errno and *ret_error (nothing runs; `done` is never called): those of
 * provider_find(), -EINVAL (an invalid node name, a timeout that is not positive), -E2BIG, or
 * the errno of starting the process. */
int provider_run(struct loop *loop, const char *provider, enum provider_op op, const char *node_name,
                 const char *stdin_json, double timeout_s, provider_done done, void *userdata,
                 struct provider_call **ret, char **ret_error);

/* Kills the hook and its process group; `done` is never called afterwards. Accepts NULL. */
void provider_cancel(struct provider_call *c);
/* Leaves the hook running unwatched (serve-head exits while a delete runs: cutting it short
 * would leave half a node). Accepts NULL. */
void provider_detach(struct provider_call *c);

/* The name of an op ("create", "delete", "list"). */
const char *provider_op_name(enum provider_op op);
