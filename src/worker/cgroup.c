#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cgroup.h"
#include "log.h"
#include "macros.h"
#include "util.h"

static int write_file(const char *dir, const char *name, const char *text) {
        char path[4096];
        int fd, r = 0;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (write(fd, text, strlen(text)) < 0)
                r = -errno;
        close(fd);
        return r;
}

/* The cgroup v2 directory of this process: /sys/fs/cgroup, or the unified hierarchy of a
 * hybrid setup, plus the "0::" path of /proc/self/cgroup. */
static char *own_cgroup(void) {
        _cleanup_free_ char *text = NULL;
        const char *mount, *line;
        size_t len;
        char *r = NULL;

        if (read_file("/proc/self/cgroup", 65536, &text, &len) < 0)
                return NULL;
        line = strstr(text, "0::");
        if (!line || (line != text && line[-1] != '\n'))
                return NULL;
        line += 3;
        mount = access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/unified";
        if (asprintf(&r, "%s%.*s", mount, (int)strcspn(line, "\n"), line) < 0)
                return NULL;
        /* "/" alone: not in a delegated unit. */
        if (strlen(r) > 0 && r[strlen(r) - 1] == '/')
                r[strlen(r) - 1] = 0;
        return r;
}

int cgroups_init(struct cgroups *cg) {
        _cleanup_free_ char *base = own_cgroup(), *worker = NULL, *replicas = NULL, *ctl = NULL;
        char pid[32];
        int r;

        *cg = (struct cgroups){};
        if (!base || access(base, W_OK) != 0 || !strstr(base, "serve-worker")) {
                log_notice("replicas share serve-worker's cgroup: it is not a delegated systemd unit (Delegate=yes), "
                           "so no per-replica CPU or memory limits");
                return -EPERM;
        }
        if (asprintf(&worker, "%s/worker", base) < 0 || asprintf(&replicas, "%s/replicas", base) < 0)
                return -ENOMEM;
        /* cgroup v2: processes only in leaves, so the worker moves into one of its own. */
        if ((mkdir(worker, 0755) < 0 && errno != EEXIST) || (mkdir(replicas, 0755) < 0 && errno != EEXIST)) {
                r = -errno;
                log_notice("cannot create replica cgroups under %s (%s): no per-replica limits", base, strerror(-r));
                return r;
        }
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        r = write_file(worker, "cgroup.procs", pid);
        if (r < 0) {
                log_notice("cannot move serve-worker into %s (%s): no per-replica limits", worker, strerror(-r));
                return r;
        }
        _cleanup_free_ char *ctl_path = NULL;
        size_t ctl_len;
        if (asprintf(&ctl_path, "%s/cgroup.controllers", base) < 0)
                return -ENOMEM;
        if (read_file(ctl_path, 4096, &ctl, &ctl_len) < 0)
                ctl = NULL;
        cg->cpu = ctl && strstr(ctl, "cpu") && write_file(base, "cgroup.subtree_control", "+cpu") == 0 &&
                  write_file(replicas, "cgroup.subtree_control", "+cpu") == 0;
        cg->memory = ctl && strstr(ctl, "memory") && write_file(base, "cgroup.subtree_control", "+memory") == 0 &&
                     write_file(replicas, "cgroup.subtree_control", "+memory") == 0;
        cg->base = TAKE_PTR(base);
        log_info("replicas get their own cgroups under %s/replicas (cpu limits %s, memory limits %s)", cg->base,
                 cg->cpu ? "enforced" : "unavailable: no cpu controller", cg->memory ? "enforced" : "unavailable: no memory controller");
        return 0;
}

void cgroups_done(struct cgroups *cg) {
        free(cg->base);
        cg->base = NULL;
}

int cgroups_replica_create(struct cgroups *cg, const char *id, double cpus, uint64_t memory, char **ret_path,
                           char **ret_limits) {
        char name[128], cpu_max[64] = "max 100000", mem_max[32] = "max";
        char *path = NULL, *limits = NULL;
        size_t n = 0;

        if (!cg->base)
                return -ENOENT;
        /* The id with what a directory name cannot hold replaced. */
        for (const char *p = id; *p && n < sizeof name - 1; p++)
                name[n++] = (*p == '/' || *p == '#' || *p == '@') ? '_' : *p;
        name[n] = 0;
        if (asprintf(&path, "%s/replicas/%s", cg->base, name) < 0)
                return -ENOMEM;
        if (mkdir(path, 0755) < 0 && errno != EEXIST) {
                int r = log_warning_errno(errno, "replica %s: cannot create its cgroup %s: %m", id, path);
                free(path);
                return r;
        }
        if (cpus > 0)
                snprintf(cpu_max, sizeof cpu_max, "%llu 100000", (unsigned long long)(cpus * 100000 + 0.5));
        if (memory > 0)
                snprintf(mem_max, sizeof mem_max, "%llu", (unsigned long long)memory);
        bool cpu_ok = cg->cpu && write_file(path, "cpu.max", cpu_max) == 0;
        bool mem_ok = cg->memory && write_file(path, "memory.max", mem_max) == 0;
        if (asprintf(&limits, "cpu.max=%s%s memory.max=%s%s", cpu_max, cpu_ok ? "" : " (not enforced)", mem_max,
                     mem_ok ? "" : " (not enforced)") < 0)
                limits = NULL;
        *ret_path = path;
        *ret_limits = limits;
        return 0;
}

int cgroups_enter(const char *path) {
        char file[4096];
        size_t n = strlen(path);
        int fd, r = 0;

        if (n + sizeof "/cgroup.procs" > sizeof file)
                return -ENAMETOOLONG;
        memcpy(file, path, n);
        memcpy(file + n, "/cgroup.procs", sizeof "/cgroup.procs");
        fd = open(file, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (write(fd, "0", 1) < 0)
                r = -errno;
        close(fd);
        return r;
}

void cgroups_replica_remove(const char *path) {
        if (path && rmdir(path) < 0 && errno != ENOENT)
                log_debug("cannot remove cgroup %s: %s", path, strerror(errno));
}
