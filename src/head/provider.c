/* A worker group's provider hooks (see provider.h): finding NAME/OP, running it through
 * childproc, and turning its exit, stderr and stdout into nodes or one line of error. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "childproc.h"
#include "macros.h"
#include "nodecfg.h"
#include "provider.h"
#include "util.h"

#define PROVIDER_DIRS_DEFAULT "/etc/serve/providers:" LIBEXECDIR "/providers"
#define PROVIDER_PATH_MAX (16u << 10)   /* of $SERVE_PROVIDER_PATH and of the searched-places list */
#define STDERR_KEEP 8192u               /* of a hook's stderr: enough for its last line */
#define STDERR_LINE_MAX 200u            /* of that line, in an error */

struct provider_call {
        struct childproc *child;
        char *provider, *node;
        enum provider_op op;
        double timeout_s;
        provider_done done;
        void *userdata;
};

const char *provider_op_name(enum provider_op op) {
        switch (op) {
        case PROVIDER_CREATE: return "create";
        case PROVIDER_DELETE: return "delete";
        case PROVIDER_LIST: return "list";
        }
        return NULL;
}

/* A name that is one path component of ours: letters, digits, '.', '_', '-', not "." or "..". */
static bool file_name_valid(const char *s) {
        if (!s || !*s || strlen(s) > 64 || streq(s, ".") || streq(s, ".."))
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                      strchr("._-", *p)))
                        return false;
        return true;
}

int provider_find(const char *provider, const char *op, char **ret_path, char **ret_error) {
        const char *env = getenv("SERVE_PROVIDER_PATH");
        _cleanup_free_ char *dirs = NULL;
        struct buf searched = {};
        bool found_unusable = false;
        char *save = NULL;
        int r;

        if (!file_name_valid(provider))
                return error_set(-EINVAL, ret_error, "invalid provider name");
        if (!file_name_valid(op))
                return error_set(-EINVAL, ret_error, "provider %s: invalid hook name", provider);
        if (env && strlen(env) > PROVIDER_PATH_MAX)
                return error_set(-EINVAL, ret_error, "provider %s: $SERVE_PROVIDER_PATH is longer than %u bytes",
                                 provider, PROVIDER_PATH_MAX);
        dirs = strdup(env ?: PROVIDER_DIRS_DEFAULT);
        if (!dirs)
                return error_set(-ENOMEM, ret_error, "out of memory");
        for (char *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
                _cleanup_free_ char *path = NULL;
                const char *why;
                struct stat st;

                if (dir[0] != '/') {
                        why = "not an absolute directory";
                        path = strdup(dir);
                } else {
                        if (asprintf(&path, "%s/%s/%s", dir, provider, op) < 0)
                                path = NULL;
                        if (path && stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0) {
                                buf_free(&searched);
                                *ret_path = TAKE_PTR(path);
                                return 0;
                        }
                        if (path && stat(path, &st) < 0)
                                why = "missing";
                        else {
                                why = "not an executable file";
                                found_unusable = true;
                        }
                }
                if (!path || buf_printf(&searched, PROVIDER_PATH_MAX * 2, "%s%s (%s)", searched.len ? ", " : "",
                                        path, why) < 0) {
                        buf_free(&searched);
                        return error_set(-ENOMEM, ret_error, "out of memory");
                }
        }
        r = found_unusable ? -EACCES : -ENOENT;
        r = error_set(r, ret_error, "provider %s: no executable %s hook: searched %s", provider, op,
                      searched.len ? searched.data : "nothing ($SERVE_PROVIDER_PATH is empty)");
        buf_free(&searched);
        return r;
}

/* The last non-empty line of a hook's stderr, at most STDERR_LINE_MAX bytes (cut on a UTF-8
 * character boundary), control characters replaced: safe inside one log line or JSON string. */
static void stderr_last_line(const char *err, size_t len, char out[static STDERR_LINE_MAX + 1]) {
        size_t end = len, start, n;

        while (end > 0 && strchr("\n\r\t ", err[end - 1]))
                end--;
        start = end;
        while (start > 0 && err[start - 1] != '\n')
                start--;
        n = MIN(end - start, (size_t)STDERR_LINE_MAX);
        if (n < end - start)
                while (n > 0 && ((unsigned char)err[start + n] & 0xc0) == 0x80)
                        n--;
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char)err[start + i];
                out[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        }
        out[n] = '\0';
}

static bool text_valid(const char *s, size_t max) {
        size_t n = s ? strlen(s) : 0;

        if (n == 0 || n > max)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

static bool address_valid(const char *s) {
        unsigned char a[sizeof(struct in6_addr)];

        return s && strlen(s) <= PROVIDER_ADDRESS_MAX &&
               (inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1);
}

static void node_free(struct provider_node *n) {
        free(n->name);
        free(n->group);
        free(n->id);
        free(n->address);
}

/* The optional fields id, address and created of a hook's object into n. Returns NULL or what
 * is wrong (a static string: the values are never echoed). */
static const char *parse_node_fields(const cJSON *o, struct provider_node *n) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const cJSON *addr = cJSON_GetObjectItemCaseSensitive(o, "address");
        const cJSON *created = cJSON_GetObjectItemCaseSensitive(o, "created");

        if (id && !cJSON_IsNull(id)) {
                if (!text_valid(cJSON_GetStringValue(id), PROVIDER_ID_MAX))
                        return "id is not a string of 1 to 256 characters";
                if (!(n->id = strdup(id->valuestring)))
                        return "out of memory";
        }
        if (addr && !cJSON_IsNull(addr)) {
                if (!address_valid(cJSON_GetStringValue(addr)))
                        return "address is not an IP address";
                if (!(n->address = strdup(addr->valuestring)))
                        return "out of memory";
        }
        if (created && !cJSON_IsNull(created)) {
                if (!cJSON_IsNumber(created) || !isfinite(created->valuedouble) || created->valuedouble < 0)
                        return "created is not a time in seconds";
                n->created = created->valuedouble;
        }
        return NULL;
}

/* create's stdout: one JSON object with an id. Returns 0, or -EBADMSG / -ENOMEM and *ret_why. */
static int parse_create(struct provider_call *c, const char *out, size_t len, struct provider_node *n,
                        const char **ret_why) {
        cJSON *o = NULL;
        const char *why;

        if (strlen(out) == len)
                o = cJSON_ParseWithOpts(out, NULL, true);
        if (!cJSON_IsObject(o)) {
                cJSON_Delete(o);
                *ret_why = "printed no JSON object";
                return -EBADMSG;
        }
        if (!cJSON_GetObjectItemCaseSensitive(o, "id"))
                why = "printed no id";
        else
                why = parse_node_fields(o, n);
        cJSON_Delete(o);
        if (!why && (!(n->name = strdup(c->node)) || !(n->group = strdup(""))))
                why = "out of memory";
        if (why) {
                *ret_why = why;
                return streq(why, "out of memory") ? -ENOMEM : -EBADMSG;
        }
        return 0;
}

/* list's stdout: one object per non-empty line. Returns the count and *ret_nodes, or -EBADMSG /
 * -ENOMEM with *ret_line (0: not about one line) and *ret_why. */
static ssize_t parse_list(const char *out, size_t len, struct provider_node **ret_nodes, size_t *ret_line,
                          const char **ret_why) {
        struct provider_node *nodes = NULL;
        size_t n = 0, cap = 0, line = 0;
        char text[PROVIDER_LIST_LINE_MAX + 1];
        const char *why = NULL;
        int r = -EBADMSG;

        *ret_line = 0;
        for (size_t pos = 0; pos < len && !why;) {
                const char *nl = memchr(out + pos, '\n', len - pos);
                size_t end = nl ? (size_t)(nl - out) : len, a = pos, b = end;
                cJSON *o;

                line++;
                pos = end + 1;
                if (b - a > PROVIDER_LIST_LINE_MAX) {
                        why = "longer than 4096 bytes";
                        break;
                }
                while (a < b && strchr(" \t\r", out[a]))
                        a++;
                while (b > a && strchr(" \t\r", out[b - 1]))
                        b--;
                if (a == b)
                        continue;
                if (memchr(out + a, '\0', b - a)) {
                        why = "not a JSON object";
                        break;
                }
                if (n == PROVIDER_LIST_LINES_MAX) {
                        *ret_why = "printed more than 10000 nodes";
                        goto fail;
                }
                memcpy(text, out + a, b - a);
                text[b - a] = '\0';
                o = cJSON_ParseWithOpts(text, NULL, true);
                if (!cJSON_IsObject(o)) {
                        cJSON_Delete(o);
                        why = "not a JSON object";
                        break;
                }
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        struct provider_node *g = reallocarray(nodes, ncap, sizeof *nodes);
                        if (!g) {
                                cJSON_Delete(o);
                                why = "out of memory";
                                break;
                        }
                        nodes = g;
                        cap = ncap;
                }
                struct provider_node *nd = &nodes[n++];
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "name"));
                const char *group = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "group"));
                *nd = (struct provider_node){};
                if (!node_name_valid(name))
                        why = "name is not 1 to 200 letters, digits, '.', '_' or '-'";
                else if (!node_name_valid(group))
                        why = "group is not 1 to 200 letters, digits, '.', '_' or '-'";
                else if (!(nd->name = strdup(name)) || !(nd->group = strdup(group)))
                        why = "out of memory";
                else
                        why = parse_node_fields(o, nd);
                cJSON_Delete(o);
        }
        if (!why) {
                *ret_nodes = nodes;
                return (ssize_t)n;
        }
        *ret_line = line;
        *ret_why = why;
        if (streq(why, "out of memory"))
                r = -ENOMEM;
fail:
        for (size_t i = 0; i < n; i++)
                node_free(&nodes[i]);
        free(nodes);
        return r;
}

static void call_free(struct provider_call *c) {
        free(c->provider);
        free(c->node);
        free(c);
}

static void succeed(struct provider_call *c, const struct provider_node *nodes, size_t n_nodes) {
        provider_done done = c->done;
        void *userdata = c->userdata;

        call_free(c);
        done(userdata, 0, NULL, nodes, n_nodes);
}

/* Reports a failure once, as "provider P: OP [NODE] <what>[: <stderr's last line>]". */
static void fail(struct provider_call *c, int r, const char *stderr_line, const char *fmt, ...) _printf_(4, 5);
static void fail(struct provider_call *c, int r, const char *stderr_line, const char *fmt, ...) {
        _cleanup_free_ char *what = NULL, *error = NULL;
        provider_done done = c->done;
        void *userdata = c->userdata;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&what, fmt, ap) < 0)
                what = NULL;
        va_end(ap);
        if (asprintf(&error, "provider %s: %s%s%s %s%s%s", c->provider, provider_op_name(c->op), c->node ? " " : "",
                     c->node ?: "", what ?: "failed", stderr_line && *stderr_line ? ": " : "",
                     stderr_line ?: "") < 0)
                error = NULL;
        call_free(c);
        done(userdata, r, error ?: "provider hook failed (out of memory)", NULL, 0);
}

static void on_child_done(void *userdata, int r, const struct childproc_result *res) {
        struct provider_call *c = userdata;
        char line[STDERR_LINE_MAX + 1];
        struct provider_node node = {}, *nodes = NULL;
        const char *why = NULL;
        size_t at = 0;
        ssize_t n;

        stderr_last_line(res->err, res->err_len, line);
        if (r == -ETIMEDOUT)
                return fail(c, r, line, "timed out after %g s", c->timeout_s);
        if (r == -EFBIG)
                return fail(c, r, NULL, "printed more than %s on stdout",
                              c->op == PROVIDER_LIST ? "4 MiB" : "64 KiB");
        if (r < 0)
                return fail(c, r, line, "failed: %s", strerror(-r));
        if (WIFSIGNALED(res->status))
                return fail(c, -EIO, line, "was killed by signal %d (%s)", WTERMSIG(res->status),
                              sigabbrev_np(WTERMSIG(res->status)) ?: "?");
        if (!WIFEXITED(res->status) || WEXITSTATUS(res->status) != 0)
                return fail(c, -EIO, line, "exited with status %d", WEXITSTATUS(res->status));

        switch (c->op) {
        case PROVIDER_CREATE:
                r = parse_create(c, res->out, res->out_len, &node, &why);
                if (r < 0) {
                        node_free(&node);
                        return fail(c, r, NULL, "%s", why);
                }
                succeed(c, &node, 1);
                node_free(&node);
                return;
        case PROVIDER_LIST:
                n = parse_list(res->out, res->out_len, &nodes, &at, &why);
                if (n < 0 && at > 0)
                        return fail(c, (int)n, NULL, "line %zu: %s", at, why);
                if (n < 0)
                        return fail(c, (int)n, NULL, "%s", why);
                succeed(c, nodes, (size_t)n);
                for (ssize_t i = 0; i < n; i++)
                        node_free(&nodes[i]);
                free(nodes);
                return;
        case PROVIDER_DELETE:
                succeed(c, NULL, 0);
                return;
        }
}

int provider_run(struct loop *loop, const char *provider, enum provider_op op, const char *node_name,
                 const char *stdin_json, double timeout_s, provider_done done, void *userdata,
                 struct provider_call **ret, char **ret_error) {
        const char *opname = provider_op_name(op);
        _cleanup_free_ char *path = NULL, *err = NULL;
        struct provider_call *c;
        int r;

        if (!opname)
                return error_set(-EINVAL, ret_error, "provider %s: unknown hook", provider);
        if (op != PROVIDER_LIST && !node_name_valid(node_name))
                return error_set(-EINVAL, ret_error, "provider %s: %s: invalid node name", provider, opname);
        if (!(timeout_s > 0 && timeout_s <= 86400))
                return error_set(-EINVAL, ret_error, "provider %s: %s: timeout must be more than 0 s and at most a day",
                                 provider, opname);
        r = provider_find(provider, opname, &path, ret_error);
        if (r < 0)
                return r;

        /* The hook is the op's own executable: `create NODE`, `delete NODE`, `list`. */
        char *argv[] = { path, op == PROVIDER_LIST ? NULL : (char *)node_name, NULL };
        const struct childproc_options o = {
                .path = path,
                .argv = argv,
                .cwd = "/",
                .stdin_data = stdin_json,
                .stdin_len = stdin_json ? strlen(stdin_json) : 0,
                .out_max = op == PROVIDER_LIST ? PROVIDER_LIST_OUT_MAX : PROVIDER_CREATE_OUT_MAX,
                .err_max = STDERR_KEEP,
                .deadline_ns = now_ns() + sec_to_ns(timeout_s),
                .kill_grace_s = PROVIDER_KILL_GRACE_S,
                .new_session = true,
        };

        c = calloc(1, sizeof *c);
        if (!c)
                return error_set(-ENOMEM, ret_error, "out of memory");
        c->provider = strdup(provider);
        c->node = op == PROVIDER_LIST ? NULL : strdup(node_name);
        if (!c->provider || (op != PROVIDER_LIST && !c->node)) {
                call_free(c);
                return error_set(-ENOMEM, ret_error, "out of memory");
        }
        c->op = op;
        c->timeout_s = timeout_s;
        c->done = done;
        c->userdata = userdata;
        r = childproc_start(loop, &o, on_child_done, c, &c->child, &err);
        if (r < 0) {
                call_free(c);
                return error_set(r, ret_error, "provider %s: %s%s%s: %s", provider, opname,
                                 op == PROVIDER_LIST ? "" : " ", op == PROVIDER_LIST ? "" : node_name,
                                 err ?: strerror(-r));
        }
        *ret = c;
        return 0;
}

void provider_detach(struct provider_call *c) {
        if (!c)
                return;
        childproc_detach(c->child);
        call_free(c);
}

void provider_cancel(struct provider_call *c) {
        if (!c)
                return;
        childproc_cancel(c->child);
        call_free(c);
}
