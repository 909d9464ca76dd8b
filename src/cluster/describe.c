#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "childproc.h"
#include "describe.h"
#include "macros.h"
#include "util.h"

#define DESCRIBE_OUT_MAX (1u << 20)
#define DESCRIBE_ERR_MAX (64u << 10) /* kept of stderr: its end */

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

/* ---- the child, watched from the loop (childproc) ---- */

struct describe_job {
        struct childproc *child;
        describe_done done;
        void *userdata;
};

static void describe_finish(struct describe_job *j, int r, struct description *desc, const char *error) {
        describe_done done = j->done;
        void *userdata = j->userdata;

        free(j);
        done(userdata, r, desc, error);
}

static void on_child_done(void *userdata, int r, const struct childproc_result *res) {
        struct describe_job *j = userdata;
        struct description desc = {};
        _cleanup_free_ char *err = NULL;

        if (r == -EFBIG)
                return describe_finish(j, r, NULL, "serve-replica --describe printed more than 1 MiB");
        if (r < 0)
                return describe_finish(j, r, NULL, NULL);
        if (!WIFEXITED(res->status) || WEXITSTATUS(res->status) != 0) {
                size_t n = res->err_len;
                while (n > 0 && (res->err[n - 1] == '\n' || res->err[n - 1] == '\r'))
                        n--;
                if (n > 0) {
                        err = strndup(res->err, n);
                        if (!err)
                                return describe_finish(j, -ENOMEM, NULL, NULL);
                        return describe_finish(j, -EINVAL, NULL, err);
                }
                if (WIFSIGNALED(res->status))
                        return describe_finish(j, -EINVAL, NULL, strsignal(WTERMSIG(res->status)));
                return describe_finish(j, -EINVAL, NULL, "serve-replica --describe failed");
        }
        r = describe_parse(res->out, &desc, &err);
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
        if (r < 0)
                return describe_finish(j, r, NULL, err);
        describe_finish(j, 0, &desc, NULL);
}

int describe_start(struct loop *loop, const char *replica_bin, const char *import_path, const char *working_dir,
                   uint64_t deadline_ns, describe_done done, void *userdata, struct describe_job **ret,
                   char **ret_error) {
        char *argv[] = { "serve-replica", "--describe", (char *)import_path, "--working-dir", (char *)working_dir, NULL };
        const struct childproc_options o = {
                .path = replica_bin,
                .argv = argv,
                .out_max = DESCRIBE_OUT_MAX,
                .err_max = DESCRIBE_ERR_MAX,
                .deadline_ns = deadline_ns,
        };
        struct describe_job *j;
        int r;

        if (!working_dir)
                argv[3] = NULL;
        j = calloc(1, sizeof *j);
        if (!j)
                return error_set(-ENOMEM, ret_error, "out of memory");
        j->done = done;
        j->userdata = userdata;
        r = childproc_start(loop, &o, on_child_done, j, &j->child, ret_error);
        if (r < 0) {
                free(j);
                return r;
        }
        *ret = j;
        return 0;
}

void describe_cancel(struct describe_job *j) {
        if (!j)
                return;
        childproc_cancel(j->child);
        free(j);
}
