/* Provider hooks (src/head/provider.c) and the child processes under them (childproc.c), run
 * for real from a loop: shell scripts in a temporary directory, found through
 * $SERVE_PROVIDER_PATH. What a user of the autoscaler would notice: a created node's id and
 * address, the hook's input arriving intact, the error line when a hook fails or hangs (and
 * the hung hook and what it started being gone), listed nodes, limits on output, where hooks
 * are looked for, and a cancelled call leaving nothing running. Waits are bounded loops over
 * the loop's completions, never sleeps. */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "childproc.h"
#include "log.h"
#include "loop.h"
#include "macros.h"
#include "provider.h"
#include "tap.h"
#include "util.h"

static struct loop loop;
static char tmp[] = "/tmp/test_provider.XXXXXX";
static char etc_dir[128], shipped_dir[128];

/* Runs the loop until cond holds, for at most 20 s (a broken build fails instead of hanging;
 * a chatty child needs many iterations, so the bound is time, not a count). */
#define RUN_UNTIL(cond)                                                           \
        ({                                                                        \
                uint64_t _end = now_ns() + 20 * NSEC_PER_SEC;                     \
                while (!(cond) && now_ns() < _end)                                \
                        loop_run_once(&loop, 50 * NSEC_PER_MSEC);                 \
                (cond);                                                           \
        })

struct outcome {
        int calls, r;
        char *error;
        struct provider_node nodes[8];
        size_t n;
};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void on_done(void *userdata, int r, const char *error, const struct provider_node *nodes, size_t n) {
        struct outcome *o = userdata;

        o->calls++;
        o->r = r;
        o->error = dup_or_null(error);
        o->n = n;
        for (size_t i = 0; i < n && i < ELEMENTSOF(o->nodes); i++)
                o->nodes[i] = (struct provider_node){
                        .name = dup_or_null(nodes[i].name),
                        .group = dup_or_null(nodes[i].group),
                        .id = dup_or_null(nodes[i].id),
                        .address = dup_or_null(nodes[i].address),
                        .created = nodes[i].created,
                };
}

static void outcome_free(struct outcome *o) {
        free(o->error);
        for (size_t i = 0; i < o->n && i < ELEMENTSOF(o->nodes); i++) {
                free(o->nodes[i].name);
                free(o->nodes[i].group);
                free(o->nodes[i].id);
                free(o->nodes[i].address);
        }
        memset(o, 0, sizeof *o);
}

/* Writes DIR/PROVIDER/OP with the given mode; the body's "@T@" becomes the temporary dir. */
static void write_hook(const char *dir, const char *provider, const char *op, mode_t mode, const char *body) {
        char path[512], text[4096];
        struct buf b = {};
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, provider);
        (void)mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/%s/%s", dir, provider, op);
        snprintf(text, sizeof text, "#!/bin/sh\n%s", body);
        for (const char *p = text; *p; p++) {
                if (strncmp(p, "@T@", 3) == 0) {
                        (void)buf_append(&b, tmp, strlen(tmp), SIZE_MAX);
                        p += 2;
                } else
                        (void)buf_append(&b, p, 1, SIZE_MAX);
        }
        f = fopen(path, "we");
        if (!f || fwrite(b.data, 1, b.len, f) != b.len || fclose(f) != 0 || chmod(path, mode) < 0) {
                fprintf(stderr, "cannot write %s: %m\n", path);
                exit(1);
        }
        buf_free(&b);
}

/* Starts a call and waits for its report. Returns provider_run()'s value. */
static int call(const char *provider, enum provider_op op, const char *node, const char *input, double timeout_s,
                struct outcome *o) {
        _cleanup_free_ char *err = NULL;
        struct provider_call *c = NULL;
        int r;

        memset(o, 0, sizeof *o);
        r = provider_run(&loop, provider, op, node, input, timeout_s, on_done, o, &c, &err);
        if (r < 0) {
                o->r = r;
                o->error = TAKE_PTR(err);
                return r;
        }
        if (!RUN_UNTIL(o->calls > 0))
                printf("# %s: no report\n", provider);
        return 0;
}

static char *file_text(const char *name) {
        char path[512];
        char *text = NULL;
        size_t len;

        snprintf(path, sizeof path, "%s/%s", tmp, name);
        if (read_file(path, 1 << 20, &text, &len) < 0)
                return NULL;
        if (len > 0 && text[len - 1] == '\n' && !streq(name, "stdin.copy"))
                text[len - 1] = '\0'; /* one line: printable in a TAP line */
        return text;
}

static pid_t file_pid(const char *name) {
        _cleanup_free_ char *t = file_text(name);
        return t ? (pid_t)atoi(t) : 0;
}

/* Gone: no such process, or a zombie nobody reaped yet (it runs nothing). */
static bool pid_gone(pid_t pid) {
        char path[64], *text = NULL;
        size_t len;
        bool gone;

        if (pid <= 0)
                return false;
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        if (read_file(path, 4096, &text, &len) < 0)
                return true;
        const char *p = strrchr(text, ')');
        gone = p && (p[2] == 'Z' || p[2] == 'X');
        free(text);
        return gone;
}

static void test_create(void) {
        struct outcome o;
        char input[32 * 1024];
        size_t n;

        /* An input bigger than a small pipe would hold, with characters shells mangle. */
        n = (size_t)snprintf(input, sizeof input, "{\"group\": \"cpu\", \"user_data\": \"#cloud-config\\n$HOME `x` \\u00e9 ");
        while (n < sizeof input - 16)
                input[n] = (char)('a' + n % 26), n++;
        strcpy(input + n, "\"}\n");
        write_hook(etc_dir, "ok", "create", 0755,
                   "cat >@T@/stdin.copy\n"
                   "echo \"$1 $#\" >@T@/args\n"
                   "pwd >@T@/cwd\n"
                   "printf '  {\"id\": \"i-0abc\", \"address\": \"10.200.0.7\", \"token\": \"s3cret\"}  \\n'\n");
        is_int(call("ok", PROVIDER_CREATE, "cpu-3f9a2c", input, 10, &o), 0, "create starts");
        is_int(o.calls, 1, "create reports once");
        is_int(o.r, 0, "create succeeds (%s)", o.error ?: "");
        ok(o.n == 1 && streq_ptr(o.nodes[0].id, "i-0abc") && streq_ptr(o.nodes[0].address, "10.200.0.7"),
           "the node's id and address come from the hook's JSON");
        ok(o.n == 1 && streq_ptr(o.nodes[0].name, "cpu-3f9a2c"), "the node's name is the one asked for");
        _cleanup_free_ char *copy = file_text("stdin.copy"), *args = file_text("args"), *cwd = file_text("cwd");
        ok(copy && streq(copy, input), "the hook read its input intact (%zu bytes)", strlen(input));
        ok(args && streq(args, "cpu-3f9a2c 1"), "the hook ran as `create NODE` (%s)", args ?: "?");
        ok(cwd && streq(cwd, "/"), "the hook runs in / (%s)", cwd ?: "?");
        outcome_free(&o);

        write_hook(etc_dir, "ok", "delete", 0755, "cat >/dev/null; echo \"$1 $#\" >@T@/args; echo '{\"whatever\":1}'\n");
        call("ok", PROVIDER_DELETE, "cpu-3f9a2c", "{}", 10, &o);
        ok(o.calls == 1 && o.r == 0 && o.n == 0, "delete succeeds with no nodes (%s)", o.error ?: "");
        free(args);
        args = file_text("args");
        ok(args && streq(args, "cpu-3f9a2c 1"), "the hook ran as `delete NODE` (%s)", args ?: "?");
        outcome_free(&o);

        is_int(call("ok", PROVIDER_CREATE, "bad/name", NULL, 10, &o), -EINVAL, "an invalid node name is refused");
        outcome_free(&o);
}

static void test_create_failures(void) {
        struct outcome o;

        write_hook(etc_dir, "fail", "create", 0755,
                   "echo 'starting' >&2\necho 'quota exceeded for\tm5.large' >&2\necho '{\"id\":\"x\"}'\nexit 3\n");
        call("fail", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        is_int(o.r, -EIO, "a hook exiting 3 fails the create");
        ok(streq_ptr(o.error, "provider fail: create cpu-1 exited with status 3: quota exceeded for?m5.large"),
           "the error has the status and stderr's last line (%s)", o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "garbage", "create", 0755, "echo 'password=hunter2 {not json'\n");
        call("garbage", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        is_int(o.r, -EBADMSG, "a create printing garbage fails");
        ok(streq_ptr(o.error, "provider garbage: create cpu-1 printed no JSON object"), "saying so (%s)",
           o.error ?: "");
        ok(o.error && !strstr(o.error, "hunter2"), "without repeating what it printed");
        outcome_free(&o);

        write_hook(etc_dir, "noid", "create", 0755, "echo '{\"address\":\"10.0.0.1\"}'\n");
        call("noid", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        ok(o.r == -EBADMSG && o.error && strstr(o.error, "printed no id"), "a create without an id fails (%s)",
           o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "badaddr", "create", 0755, "echo '{\"id\":\"i-1\",\"address\":\"10.0.0.1; rm -rf /\"}'\n");
        call("badaddr", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        ok(o.r == -EBADMSG && o.error && strstr(o.error, "address is not an IP address"),
           "an address that is not an IP address fails the create (%s)", o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "huge", "create", 0755, "exec yes\n");
        call("huge", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        is_int(o.r, -EFBIG, "a create printing endlessly is stopped");
        ok(streq_ptr(o.error, "provider huge: create cpu-1 printed more than 64 KiB on stdout"), "saying so (%s)",
           o.error ?: "");
        outcome_free(&o);

        /* Stderr's end is kept, however much came before it. */
        write_hook(etc_dir, "chatty", "create", 0755,
                   "i=0; while [ $i -lt 2000 ]; do echo \"progress line $i of many\" >&2; i=$((i+1)); done\n"
                   "echo 'the real reason' >&2\nexit 1\n");
        call("chatty", PROVIDER_CREATE, "cpu-1", NULL, 10, &o);
        ok(streq_ptr(o.error, "provider chatty: create cpu-1 exited with status 1: the real reason"),
           "a chatty hook's last stderr line is the reason (%s)", o.error ?: "");
        outcome_free(&o);
}

static void test_timeout(void) {
        struct outcome o;

        write_hook(etc_dir, "hang", "create", 0755,
                   "sleep 1000 &\necho $! >@T@/hang.grandchild\necho $$ >@T@/hang.pid\n"
                   "echo 'waiting for the cloud' >&2\nsleep 1000\n");
        call("hang", PROVIDER_CREATE, "cpu-1", NULL, 0.3, &o);
        is_int(o.r, -ETIMEDOUT, "a hanging create times out");
        ok(streq_ptr(o.error, "provider hang: create cpu-1 timed out after 0.3 s: waiting for the cloud"),
           "saying after how long, and its last words (%s)", o.error ?: "");
        pid_t pid = file_pid("hang.pid"), grandchild = file_pid("hang.grandchild");
        ok(RUN_UNTIL(pid_gone(pid)), "the hung hook is gone (pid %d)", (int)pid);
        ok(RUN_UNTIL(pid_gone(grandchild)), "what it started in its session is gone (pid %d)", (int)grandchild);
        if (grandchild > 0 && !pid_gone(grandchild))
                kill(grandchild, SIGKILL);
        outcome_free(&o);
}

static void test_list(void) {
        static const char lines[] =
                "{\"name\":\"cpu-1\",\"group\":\"cpu\",\"id\":\"i-1\",\"created\":1700000000}\n"
                "\n"
                "  {\"name\":\"cpu-2\",\"group\":\"cpu\"}\r\n"
                "{\"name\":\"gpu-1\",\"group\":\"gpu\",\"address\":\"fd00::3\",\"created\":1700000001.5}\n";
        char body[1024];
        struct outcome o;

        snprintf(body, sizeof body, "echo \"$#\" >@T@/args\ncat <<'EOF'\n%sEOF\n", lines);
        write_hook(etc_dir, "lister", "list", 0755, body);
        call("lister", PROVIDER_LIST, NULL, NULL, 10, &o);
        is_int(o.r, 0, "list succeeds (%s)", o.error ?: "");
        is_int(o.n, 3, "three nodes listed (blank lines skipped)");
        ok(o.n == 3 && streq(o.nodes[0].name, "cpu-1") && streq(o.nodes[0].group, "cpu") &&
                   streq_ptr(o.nodes[0].id, "i-1") && o.nodes[0].created == 1700000000,
           "the first line's name, group, id and created");
        ok(o.n == 3 && streq(o.nodes[1].name, "cpu-2") && !o.nodes[1].id && o.nodes[1].created == 0,
           "id and created are optional");
        ok(o.n == 3 && streq(o.nodes[2].group, "gpu") && streq_ptr(o.nodes[2].address, "fd00::3"),
           "an IPv6 address is kept");
        _cleanup_free_ char *args = file_text("args");
        ok(args && streq(args, "0"), "the hook ran as `list` (%s)", args ?: "?");
        outcome_free(&o);

        snprintf(body, sizeof body, "cat <<'EOF'\n%s[\"not\", \"an object\"]\nEOF\n", lines);
        write_hook(etc_dir, "badlist", "list", 0755, body);
        call("badlist", PROVIDER_LIST, NULL, NULL, 10, &o);
        is_int(o.r, -EBADMSG, "a list with an invalid line fails");
        ok(streq_ptr(o.error, "provider badlist: list line 5: not a JSON object"), "naming the line (%s)",
           o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "longline", "list", 0755,
                   "awk 'BEGIN { printf \"{\\\"name\\\":\\\"n1\\\",\\\"group\\\":\\\"g\\\",\\\"id\\\":\\\"\"; "
                   "for (i = 0; i < 5000; i++) printf \"x\"; print \"\\\"}\" }'\n");
        call("longline", PROVIDER_LIST, NULL, NULL, 10, &o);
        ok(o.r == -EBADMSG && streq_ptr(o.error, "provider longline: list line 1: longer than 4096 bytes"),
           "a list line over 4 KiB fails (%s)", o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "many", "list", 0755,
                   "awk 'BEGIN { for (i = 0; i <= 10000; i++) printf \"{\\\"name\\\":\\\"n%d\\\",\\\"group\\\":\\\"g\\\"}\\n\", i }'\n");
        call("many", PROVIDER_LIST, NULL, NULL, 10, &o);
        ok(o.r == -EBADMSG && streq_ptr(o.error, "provider many: list printed more than 10000 nodes"),
           "a list of more than 10000 nodes fails (%s)", o.error ?: "");
        outcome_free(&o);

        write_hook(etc_dir, "badname", "list", 0755, "echo '{\"name\":\"../../x\",\"group\":\"cpu\"}'\n");
        call("badname", PROVIDER_LIST, NULL, NULL, 10, &o);
        ok(o.r == -EBADMSG && streq_ptr(o.error, "provider badname: list line 1: name is not 1 to 200 letters, "
                                                 "digits, '.', '_' or '-'"),
           "a listed node name that is not a node name fails (%s)", o.error ?: "");
        outcome_free(&o);
}

static void test_find(void) {
        _cleanup_free_ char *path = NULL, *err = NULL, *want = NULL;
        char env[300];
        struct outcome o;
        int r;

        write_hook(etc_dir, "shadow", "create", 0755, "exit 0\n");
        write_hook(shipped_dir, "shadow", "create", 0755, "exit 0\n");
        write_hook(shipped_dir, "shadow", "list", 0755, "exit 0\n");
        r = provider_find("shadow", "create", &path, &err);
        if (asprintf(&want, "%s/shadow/create", etc_dir) < 0)
                want = NULL;
        ok(r == 0 && streq_ptr(path, want), "the first directory's hook wins (%s)", path ?: err);
        free(path);
        free(want);
        path = NULL;
        r = provider_find("shadow", "list", &path, &err);
        if (asprintf(&want, "%s/shadow/list", shipped_dir) < 0)
                want = NULL;
        ok(r == 0 && streq_ptr(path, want), "a hook missing there is found in the next (%s)", path ?: err);
        free(path);
        path = NULL;

        snprintf(env, sizeof env, "%s:%s", shipped_dir, etc_dir);
        setenv("SERVE_PROVIDER_PATH", env, 1);
        r = provider_find("shadow", "create", &path, &err);
        ok(r == 0 && strncmp(path ?: "", shipped_dir, strlen(shipped_dir)) == 0,
           "the order of $SERVE_PROVIDER_PATH decides (%s)", path ?: err);
        free(path);
        path = NULL;
        snprintf(env, sizeof env, "%s:%s", etc_dir, shipped_dir);
        setenv("SERVE_PROVIDER_PATH", env, 1);

        write_hook(etc_dir, "noexec", "create", 0644, "exit 0\n");
        r = provider_find("noexec", "create", &path, &err);
        is_int(r, -EACCES, "a hook that is not executable is not run");
        ok(err && strstr(err, "noexec/create (not an executable file)") && strstr(err, shipped_dir),
           "the error names every place searched (%s)", err ?: "");
        free(err);
        err = NULL;
        is_int(call("noexec", PROVIDER_CREATE, "cpu-1", NULL, 10, &o), -EACCES, "provider_run refuses it too");
        is_int(o.calls, 0, "without a report");
        outcome_free(&o);

        r = provider_find("nowhere", "create", &path, &err);
        is_int(r, -ENOENT, "a provider that is nowhere is not found");
        ok(err && strstr(err, etc_dir) && strstr(err, shipped_dir), "the error names both places (%s)", err ?: "");
        free(err);
        err = NULL;
        is_int(provider_find("..", "create", &path, &err), -EINVAL, "a provider name cannot leave the directories");
}

static void test_cancel(void) {
        _cleanup_free_ char *err = NULL;
        struct provider_call *c = NULL;
        struct outcome o = {};
        pid_t pid;

        write_hook(etc_dir, "slow", "create", 0755, "echo $$ >@T@/slow.pid.tmp\nmv @T@/slow.pid.tmp @T@/slow.pid\n"
                                                     "sleep 1000\n");
        is_int(provider_run(&loop, "slow", PROVIDER_CREATE, "cpu-1", NULL, 60, on_done, &o, &c, &err), 0,
               "a slow create starts (%s)", err ?: "");
        ok(RUN_UNTIL((pid = file_pid("slow.pid")) > 0), "and runs");
        provider_cancel(c);
        ok(RUN_UNTIL(pid_gone(pid)), "a cancelled create's hook is killed (pid %d)", (int)pid);
        loop_drain(&loop, 200 * NSEC_PER_MSEC);
        is_int(o.calls, 0, "and reports nothing");
        provider_cancel(NULL);

        /* Detached (serve-head exits during a delete): the hook runs to its end, unwatched. */
        write_hook(etc_dir, "slowdel", "delete", 0755,
                   "echo $$ >@T@/slowdel.pid.tmp\nmv @T@/slowdel.pid.tmp @T@/slowdel.pid\n"
                   "while [ ! -e @T@/slowdel.go ]; do sleep 0.05; done\ntouch @T@/slowdel.done\n");
        c = NULL;
        is_int(provider_run(&loop, "slowdel", PROVIDER_DELETE, "cpu-1", NULL, 60, on_done, &o, &c, &err), 0,
               "a slow delete starts (%s)", err ?: "");
        ok(RUN_UNTIL((pid = file_pid("slowdel.pid")) > 0), "and runs");
        provider_detach(c);
        _cleanup_free_ char *go = NULL, *done = NULL;
        ok(asprintf(&go, "%s/slowdel.go", tmp) > 0 && asprintf(&done, "%s/slowdel.done", tmp) > 0, "paths");
        close(open(go, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
        ok(RUN_UNTIL(access(done, F_OK) == 0), "a detached delete's hook is not killed: it finishes");
        loop_drain(&loop, 200 * NSEC_PER_MSEC);
        is_int(o.calls, 0, "and reports nothing");
        provider_detach(NULL);
}

/* The hook exits but leaves a process holding its stdout open: the call ends at the hook's exit,
 * with what it printed, not when that process closes the pipe. */
static void test_background_keeps_pipe(void) {
        struct outcome o;

        write_hook(etc_dir, "daemon", "create", 0755,
                   "sleep 1000 &\necho $! >@T@/daemon.pid\necho '{\"id\":\"i-bg\"}'\n");
        call("daemon", PROVIDER_CREATE, "cpu-1", NULL, 30, &o);
        ok(o.r == 0 && o.n == 1 && streq_ptr(o.nodes[0].id, "i-bg"),
           "a create whose background process keeps stdout open succeeds (%s)", o.error ?: "");
        pid_t pid = file_pid("daemon.pid");
        ok(pid > 0 && !pid_gone(pid), "and what it started outside the hook's lifetime still runs");
        if (pid > 0)
                kill(pid, SIGKILL);
        outcome_free(&o);
}

/* childproc alone: what the provider does not reach. */
struct cp_outcome {
        int calls, r, status;
        bool timed_out, truncated;
        char out[64], err[64];
        size_t out_len, err_len;
};

static void on_cp_done(void *userdata, int r, const struct childproc_result *res) {
        struct cp_outcome *o = userdata;

        o->calls++;
        o->r = r;
        o->status = res->status;
        o->timed_out = res->timed_out;
        o->truncated = res->out_truncated;
        o->out_len = res->out_len;
        o->err_len = res->err_len;
        snprintf(o->out, sizeof o->out, "%s", res->out);
        snprintf(o->err, sizeof o->err, "%s", res->err);
}

static void test_childproc(void) {
        static const char term_script[] = "trap '' TERM; echo $$ >\"$0\"; while :; do sleep 0.05; done";
        char *argv_out[] = { "sh", "-c", "printf 1234567890; echo gone >&2; exit 7", NULL };
        char pidfile[256];
        struct childproc *c = NULL;
        struct cp_outcome o = {};
        _cleanup_free_ char *err = NULL;

        /* The stdout limit: exactly at the limit is fine. */
        struct childproc_options opt = { .path = "/bin/sh", .argv = argv_out, .out_max = 10, .err_max = 3 };
        is_int(childproc_start(&loop, &opt, on_cp_done, &o, &c, &err), 0, "a child starts");
        ok(RUN_UNTIL(o.calls > 0), "and reports");
        ok(o.r == 0 && WIFEXITED(o.status) && WEXITSTATUS(o.status) == 7, "with its exit status (r %d)", o.r);
        ok(streq(o.out, "1234567890") && !o.truncated, "stdout at its limit is whole (%s)", o.out);
        ok(o.err_len == 3 && streq(o.err, "ne\n"), "stderr keeps its last err_max bytes (%zu)", o.err_len);

        /* A child ignoring SIGTERM gets SIGKILL after the grace period. */
        snprintf(pidfile, sizeof pidfile, "%s/term.pid", tmp);
        char *argv_t[] = { "sh", "-c", (char *)term_script, pidfile, NULL };
        memset(&o, 0, sizeof o);
        opt = (struct childproc_options){ .path = "/bin/sh", .argv = argv_t, .out_max = 10, .err_max = 10,
                                          .deadline_ns = now_ns() + 200 * NSEC_PER_MSEC, .kill_grace_s = 0.2,
                                          .new_session = true };
        is_int(childproc_start(&loop, &opt, on_cp_done, &o, &c, &err), 0, "a child ignoring SIGTERM starts");
        ok(RUN_UNTIL(o.calls > 0), "and reports");
        ok(o.r == -ETIMEDOUT && o.timed_out, "as timed out (r %d)", o.r);
        pid_t pid = file_pid("term.pid");
        ok(RUN_UNTIL(pid_gone(pid)), "SIGKILL ended it after the grace period (pid %d)", (int)pid);

        char *argv_none[] = { "nonexistent", NULL };
        opt = (struct childproc_options){ .path = "/nonexistent/program", .argv = argv_none };
        is_int(childproc_start(&loop, &opt, on_cp_done, &o, &c, &err), -ENOENT, "a missing program fails at once");
        ok(err && strstr(err, "/nonexistent/program"), "naming it (%s)", err ?: "");
}

static void cleanup(void) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", tmp);
}

int main(void) {
        char env[300];
        int r = loop_init(&loop, 64);

        if (r < 0) {
                printf("1..0 # SKIP no io_uring here (%s)\n", strerror(-r));
                return 77;
        }
        log_set_level(LOG_WARNING);
        if (!mkdtemp(tmp)) {
                printf("1..0 # SKIP cannot make a temporary directory: %m\n");
                return 77;
        }
        atexit(cleanup);
        snprintf(etc_dir, sizeof etc_dir, "%s/etc", tmp);
        snprintf(shipped_dir, sizeof shipped_dir, "%s/shipped", tmp);
        (void)mkdir(etc_dir, 0755);
        (void)mkdir(shipped_dir, 0755);
        snprintf(env, sizeof env, "%s:relative/dir::%s", etc_dir, shipped_dir);
        setenv("SERVE_PROVIDER_PATH", env, 1);

        test_create();
        test_create_failures();
        test_timeout();
        test_list();
        test_find();
        test_cancel();
        test_background_keeps_pipe();
        test_childproc();

        loop_drain(&loop, 200 * NSEC_PER_MSEC);
        loop_free(&loop);
        return tap_done();
}
