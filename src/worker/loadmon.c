#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "loadmon.h"
#include "macros.h"
#include "util.h"
#include "../../ebpf/loadmon.h"

_Static_assert(LOADMON_RQ_BUCKETS == REPORT_RQ_BUCKETS, "the report's histogram is the programs' histogram");
_Static_assert(LOADMON_MAX_REPLICAS <= LOADMON_MAX_SLOTS, "every replica gets a slot");

#define PROC_FILE_MAX (64u << 10)
#define NETSTAT_MAX (256u << 10)
#define THREADS_MAX 4096       /* threads of one replica read by the fallback */
#define DIAG_MESSAGES_MAX 100000 /* listening sockets looked at per family */

struct tracked {
        char *key;
        pid_t pid;
        char *cgroup;          /* NULL: by pid */
        uint64_t cgid;         /* eBPF key when by cgroup */
        uint32_t slot;
        /* The fallback's run-queue numbers only grow (threads that exit take theirs along). */
        uint64_t rq_wait_ns, rq_count;
};

struct loadmon {
        struct loadmon_bpf *bpf;
        struct tracked *t;
        size_t n;
        bool slot_used[LOADMON_MAX_REPLICAS];
        long clk_tck;
};

/* ---- parsers ---- */

static int parse_u64(const char **p, uint64_t *ret) {
        char *end;

        while (**p == ' ' || **p == '\t')
                (*p)++;
        if (**p < '0' || **p > '9')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(*p, &end, 10);
        if (errno)
                return -EINVAL;
        *p = end;
        *ret = v;
        return 0;
}

int loadmon_parse_cpu_stat(const char *text, uint64_t *ret_usec) {
        for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
                if (strncmp(l, "usage_usec ", 11) == 0) {
                        const char *p = l + 11;
                        uint64_t v;
                        if (parse_u64(&p, &v) < 0 || (*p && *p != '\n'))
                                return -EINVAL;
                        *ret_usec = v;
                        return 0;
                }
        }
        return -EINVAL;
}

int loadmon_parse_proc_stat(const char *text, uint64_t *ret_ticks) {
        const char *p = strrchr(text, ')');
        uint64_t v, utime = 0, stime = 0;

        if (!p || !strchr(text, '('))
                return -EINVAL;
        p++;
        /* Field 3 (state) is a letter; then fields 4..13, then utime (14) and stime (15). */
        while (*p == ' ')
                p++;
        if (!*p || *p == ' ' || p[1] != ' ')
                return -EINVAL;
        p++;
        for (int field = 4; field <= 15; field++) {
                /* ppid, pgrp, session, tty_nr, tpgid may be negative (tty_nr, tpgid): skip a sign. */
                while (*p == ' ')
                        p++;
                if (*p == '-')
                        p++;
                if (parse_u64(&p, &v) < 0)
                        return -EINVAL;
                if (field == 14)
                        utime = v;
                else if (field == 15)
                        stime = v;
        }
        if (utime > UINT64_MAX - stime)
                return -EINVAL;
        *ret_ticks = utime + stime;
        return 0;
}

int loadmon_parse_schedstat(const char *text, uint64_t *ret_wait_ns, uint64_t *ret_slices) {
        const char *p = text;
        uint64_t run, wait, slices;

        if (parse_u64(&p, &run) < 0 || parse_u64(&p, &wait) < 0 || parse_u64(&p, &slices) < 0)
                return -EINVAL;
        while (*p == ' ' || *p == '\n')
                p++;
        if (*p)
                return -EINVAL;
        *ret_wait_ns = wait;
        *ret_slices = slices;
        return 0;
}

/* The n-th space-separated token of line [l, e), or NULL. */
static const char *token(const char *l, const char *e, size_t n, size_t *ret_len) {
        const char *p = l;

        for (size_t i = 0;; i++) {
                while (p < e && *p == ' ')
                        p++;
                if (p >= e)
                        return NULL;
                const char *s = p;
                while (p < e && *p != ' ')
                        p++;
                if (i == n) {
                        *ret_len = (size_t)(p - s);
                        return s;
                }
        }
}

int loadmon_parse_netstat(const char *text, uint64_t *ret_overflows) {
        const char *hdr = NULL, *hdr_end = NULL;

        for (const char *l = text; l && *l;) {
                const char *e = strchr(l, '\n');
                const char *next = e ? e + 1 : NULL;
                if (!e)
                        e = l + strlen(l);
                if (strncmp(l, "TcpExt:", 7) == 0) {
                        if (!hdr) {
                                hdr = l;
                                hdr_end = e;
                        } else {
                                size_t len;
                                for (size_t i = 1;; i++) {
                                        const char *name = token(hdr, hdr_end, i, &len);
                                        if (!name)
                                                return -EINVAL;
                                        if (len == 15 && memcmp(name, "ListenOverflows", 15) == 0) {
                                                const char *v = token(l, e, i, &len);
                                                uint64_t val;
                                                if (!v || parse_u64(&v, &val) < 0 || (*v != ' ' && v != e))
                                                        return -EINVAL;
                                                *ret_overflows = val;
                                                return 0;
                                        }
                                }
                        }
                }
                l = next;
        }
        return -EINVAL;
}

/* ---- the monitor ---- */

int loadmon_new(struct loadmon **ret) {
        struct loadmon *lm = calloc(1, sizeof *lm);
        const char *why = NULL;
        char buf[160];

        if (!lm)
                return -ENOMEM;
        lm->clk_tck = sysconf(_SC_CLK_TCK);
        if (lm->clk_tck <= 0)
                lm->clk_tck = 100;
        if (streq_ptr(getenv("SERVE_LOADMON"), "proc"))
                why = "SERVE_LOADMON=proc";
#ifdef HAVE_BPF
        else if (access("/sys/kernel/btf/vmlinux", R_OK) < 0)
                why = "the kernel has no BTF (/sys/kernel/btf/vmlinux)";
        else {
                int r = loadmon_bpf_open(&lm->bpf);
                if (r < 0) {
                        snprintf(buf, sizeof buf, "%s%s", strerror(-r),
                                 r == -EPERM || r == -EACCES ? ": it needs CAP_BPF and CAP_PERFMON" : "");
                        why = buf;
                }
        }
#else
        else
                why = "built without eBPF (--enable-bpf=no)";
        (void)buf;
#endif
        if (why)
                log_notice("load monitor: eBPF programs not loaded (%s); falling back to cgroup cpu.stat, "
                           "/proc/PID/stat and schedstat (no run-queue histogram)", why);
#ifdef HAVE_BPF
        else
                log_info("load monitor: eBPF (%s) on sched_switch",
                         loadmon_bpf_kind(lm->bpf));
#endif
        *ret = lm;
        return 0;
}

void loadmon_free(struct loadmon *lm) {
        if (!lm)
                return;
#ifdef HAVE_BPF
        loadmon_bpf_close(lm->bpf);
#endif
        for (size_t i = 0; i < lm->n; i++) {
                free(lm->t[i].key);
                free(lm->t[i].cgroup);
        }
        free(lm->t);
        free(lm);
}

bool loadmon_ebpf(const struct loadmon *lm) { return lm && lm->bpf; }

static struct tracked *find(struct loadmon *lm, const char *key) {
        for (size_t i = 0; i < lm->n; i++)
                if (streq(lm->t[i].key, key))
                        return &lm->t[i];
        return NULL;
}

int loadmon_track(struct loadmon *lm, const char *key, pid_t pid, const char *cgroup) {
        struct tracked t = { .pid = pid };
        uint32_t slot = 0;
        struct stat st;

        if (pid <= 0)
                return -EINVAL;
        if (find(lm, key))
                return -EEXIST;
        if (lm->n >= LOADMON_MAX_REPLICAS)
                return -ENOSPC;
        while (slot < LOADMON_MAX_REPLICAS && lm->slot_used[slot])
                slot++;
        if (slot >= LOADMON_MAX_REPLICAS)
                return -ENOSPC;
        t.slot = slot;
        if (cgroup && stat(cgroup, &st) == 0 && S_ISDIR(st.st_mode))
                t.cgid = (uint64_t)st.st_ino; /* a cgroup v2 id is its directory's inode number */
        if (!(t.key = strdup(key)) || (t.cgid && !(t.cgroup = strdup(cgroup)))) {
                free(t.key);
                return -ENOMEM;
        }
        struct tracked *nt = realloc(lm->t, (lm->n + 1) * sizeof *nt);
        if (!nt) {
                free(t.key);
                free(t.cgroup);
                return -ENOMEM;
        }
        lm->t = nt;
#ifdef HAVE_BPF
        if (lm->bpf) {
                int r = t.cgid ? loadmon_bpf_track_cgroup(lm->bpf, slot, t.cgid) : loadmon_bpf_track_pid(lm->bpf, slot, pid);
                if (r < 0) {
                        free(t.key);
                        free(t.cgroup);
                        return r;
                }
        }
#endif
        lm->slot_used[slot] = true;
        lm->t[lm->n++] = t;
        return 0;
}

void loadmon_untrack(struct loadmon *lm, const char *key) {
        struct tracked *t = lm ? find(lm, key) : NULL;

        if (!t)
                return;
#ifdef HAVE_BPF
        if (lm->bpf)
                (void)(t->cgid ? loadmon_bpf_untrack_cgroup(lm->bpf, t->cgid) : loadmon_bpf_untrack_pid(lm->bpf, t->pid));
#endif
        lm->slot_used[t->slot] = false;
        free(t->key);
        free(t->cgroup);
        *t = lm->t[--lm->n];
}

static int read_text(const char *path, size_t max, char **ret) {
        return read_file(path, max, ret, NULL);
}

/* CPU time of the fallback: the cgroup's usage when the replica has one, else its process's. */
static int fallback_cpu(struct loadmon *lm, const struct tracked *t, double *ret) {
        _cleanup_free_ char *text = NULL;
        char path[PATH_MAX];
        uint64_t v;
        int r;

        if (t->cgroup) {
                snprintf(path, sizeof path, "%s/cpu.stat", t->cgroup);
                if (read_text(path, PROC_FILE_MAX, &text) == 0 && loadmon_parse_cpu_stat(text, &v) == 0) {
                        *ret = (double)v / 1e6;
                        return 0;
                }
                free(TAKE_PTR(text));
        }
        snprintf(path, sizeof path, "/proc/%d/stat", (int)t->pid);
        if ((r = read_text(path, PROC_FILE_MAX, &text)) < 0)
                return r;
        if ((r = loadmon_parse_proc_stat(text, &v)) < 0)
                return r;
        *ret = (double)v / (double)lm->clk_tck;
        return 0;
}

/* Run-queue waits of the fallback: the sum over the process's threads now alive. */
static void fallback_rq(struct tracked *t) {
        char path[PATH_MAX];
        uint64_t wait = 0, count = 0, w, c;
        struct dirent *de;
        size_t n = 0;
        DIR *d;

        snprintf(path, sizeof path, "/proc/%d/task", (int)t->pid);
        if (!(d = opendir(path)))
                return;
        while ((de = readdir(d)) && n < THREADS_MAX) {
                _cleanup_free_ char *text = NULL;
                if (de->d_name[0] < '0' || de->d_name[0] > '9')
                        continue;
                n++;
                snprintf(path, sizeof path, "/proc/%d/task/%.16s/schedstat", (int)t->pid, de->d_name);
                if (read_text(path, PROC_FILE_MAX, &text) == 0 && loadmon_parse_schedstat(text, &w, &c) == 0) {
                        wait += w;
                        count += c;
                }
        }
        closedir(d);
        t->rq_wait_ns = MAX(t->rq_wait_ns, wait);
        t->rq_count = MAX(t->rq_count, count);
}

int loadmon_replica(struct loadmon *lm, const char *key, struct loadmon_replica *ret) {
        struct tracked *t = find(lm, key);
        struct loadmon_replica out = {};
        int r;

        if (!t)
                return -ENOENT;
#ifdef HAVE_BPF
        if (lm->bpf) {
                struct loadmon_stats st;
                uint64_t cum = 0;
                if ((r = loadmon_bpf_read(lm->bpf, t->slot, &st)) < 0)
                        return r;
                out.cpu_seconds = (double)st.cpu_ns / 1e9;
                out.has_buckets = true;
                for (size_t i = 0; i < REPORT_RQ_BUCKETS; i++)
                        out.rq_buckets[i] = cum += st.rq_buckets[i];
                /* The programs add count and buckets separately: keep the histogram consistent. */
                out.rq_count = cum;
                out.rq_sum_seconds = (double)st.rq_sum_ns / 1e9;
                *ret = out;
                return 0;
        }
#endif
        if ((r = fallback_cpu(lm, t, &out.cpu_seconds)) < 0)
                return r;
        fallback_rq(t);
        out.rq_count = t->rq_count;
        out.rq_sum_seconds = (double)t->rq_wait_ns / 1e9;
        *ret = out;
        return 0;
}

/* ---- the node ---- */

static bool addr_matches(int family, const struct inet_diag_msg *m, const char *host) {
        unsigned char want[16];

        if (!host || !*host || streq(host, "0.0.0.0") || streq(host, "::"))
                return true;
        if (inet_pton(family, host, want) != 1)
                return false;
        return memcmp(m->id.idiag_src, want, family == AF_INET ? 4 : 16) == 0;
}

/* Sums the accept queues of the TCP listeners on port. Returns 0 or a negative errno. */
static int listen_queue(const char *host, int port, uint64_t *ret_q, uint64_t *ret_backlog) {
        static const int families[] = { AF_INET, AF_INET6 };
        _cleanup_close_ int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
        uint64_t q = 0, backlog = 0;
        char buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));

        if (fd < 0)
                return -errno;
        for (size_t f = 0; f < ELEMENTSOF(families); f++) {
                struct {
                        struct nlmsghdr nlh;
                        struct inet_diag_req_v2 req;
                } msg = {
                        .nlh = { .nlmsg_len = sizeof msg, .nlmsg_type = SOCK_DIAG_BY_FAMILY,
                                 .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = (uint32_t)f + 1 },
                        .req = { .sdiag_family = (uint8_t)families[f], .sdiag_protocol = IPPROTO_TCP,
                                 .idiag_states = 1u << 10 /* TCP_LISTEN */ },
                };
                size_t seen = 0;
                bool done = false;

                if (send(fd, &msg, sizeof msg, 0) != (ssize_t)sizeof msg)
                        return -errno;
                while (!done) {
                        ssize_t n = recv(fd, buf, sizeof buf, 0);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                return -errno;
                        }
                        if (n == 0)
                                return -EIO;
                        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
                                if (h->nlmsg_type == NLMSG_DONE) {
                                        done = true;
                                        break;
                                }
                                if (h->nlmsg_type == NLMSG_ERROR) {
                                        const struct nlmsgerr *e = NLMSG_DATA(h);
                                        if (h->nlmsg_len < NLMSG_LENGTH(sizeof *e))
                                                return -EIO;
                                        /* No IPv6 in this kernel: nothing to count there. */
                                        if (families[f] == AF_INET6 && e->error == -ENOENT) {
                                                done = true;
                                                break;
                                        }
                                        return e->error ? e->error : -EIO;
                                }
                                if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
                                        continue;
                                if (++seen > DIAG_MESSAGES_MAX)
                                        return -E2BIG;
                                const struct inet_diag_msg *m = NLMSG_DATA(h);
                                if (ntohs(m->id.idiag_sport) == port && addr_matches(families[f], m, host)) {
                                        q += m->idiag_rqueue;
                                        backlog += m->idiag_wqueue;
                                }
                        }
                }
        }
        *ret_q = q;
        *ret_backlog = backlog;
        return 0;
}

int loadmon_node(struct loadmon *lm, const char *host, int port, struct loadmon_node *ret) {
        _cleanup_free_ char *text = NULL;
        struct loadmon_node out = {};
        int r;

        if (port <= 0 || port > 65535)
                return -EINVAL;
        if ((r = listen_queue(host, port, &out.listen_queue, &out.listen_backlog)) < 0)
                return r;
        if ((r = read_text("/proc/net/netstat", NETSTAT_MAX, &text)) < 0)
                return r;
        if ((r = loadmon_parse_netstat(text, &out.listen_overflows)) < 0)
                return r;
        *ret = out;
        return 0;
}
