/* The load monitor's loader: open -> choose the program set -> load -> attach, through the
 * skeleton bpftool generates from loadmon.bpf.o (the object is embedded in the binary). */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "loadmon.h"
#include "loadmon.skel.h"

struct loadmon_bpf {
        struct loadmon_skel *skel;
        const char *kind;
        uint32_t n_cgroups;
};

/* libbpf talks a lot while it probes (a kernel without tp_btf is not an error here): its lines
 * go to our log at debug level; the outcome is logged once by the caller. */
static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap) {
        char line[512];
        int n;

        if (log_get_level() < LOG_DEBUG)
                return 0;
        n = vsnprintf(line, sizeof line, fmt, ap);
        if (n < 0)
                return n;
        size_t len = strlen(line);
        while (len > 0 && line[len - 1] == '\n')
                line[--len] = '\0';
        log_debug("libbpf: %s", line);
        return n;
}

/* Loads one set: tp_btf (btf) or raw_tp, each one program on sched_switch and its own map of
 * per-task state (task storage for tp_btf, which the raw_tp program cannot use; a hash for
 * raw_tp), the other set's map not even created. Returns 0 with *ret, or a negative errno. */
static int open_set(bool btf, struct loadmon_skel **ret) {
        struct loadmon_skel *s = loadmon_skel__open();
        int r;

        if (!s)
                return errno ? -errno : -ENOMEM;
        bpf_program__set_autoload(s->progs.lm_switch_btf, btf);
        bpf_program__set_autoload(s->progs.lm_switch_raw, !btf);
        bpf_map__set_autocreate(s->maps.tstate, btf);
        bpf_map__set_autocreate(s->maps.tstate_raw, !btf);
        r = loadmon_skel__load(s);
        if (r == 0)
                r = loadmon_skel__attach(s);
        if (r < 0) {
                loadmon_skel__destroy(s);
                return r;
        }
        *ret = s;
        return 0;
}

int loadmon_bpf_open(struct loadmon_bpf **ret) {
        struct loadmon_bpf *b;
        int r;

        libbpf_set_print(libbpf_print);
        b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        r = open_set(true, &b->skel);
        b->kind = "tp_btf";
        /* Without the capabilities the raw_tp set would fail the same way. */
        if (r < 0 && r != -EPERM && r != -EACCES) {
                log_debug("loadmon: tp_btf programs not loaded (%s), trying raw_tp", strerror(-r));
                r = open_set(false, &b->skel);
                b->kind = "raw_tp";
        }
        if (r < 0) {
                free(b);
                return r;
        }
        *ret = b;
        return 0;
}

void loadmon_bpf_close(struct loadmon_bpf *b) {
        if (!b)
                return;
        loadmon_skel__destroy(b->skel);
        free(b);
}

const char *loadmon_bpf_kind(const struct loadmon_bpf *b) { return b->kind; }

/* The stats map is per CPU: one value per possible CPU, each 8-byte aligned (the struct is). */
static int stats_cpus(void) {
        static int n;

        if (n <= 0)
                n = libbpf_num_possible_cpus();
        return n;
}

static int zero_slot(struct loadmon_bpf *b, uint32_t slot) {
        int ncpu = stats_cpus();
        struct loadmon_stats *zero;
        int r;

        if (slot >= LOADMON_MAX_SLOTS)
                return -ERANGE;
        if (ncpu <= 0)
                return ncpu < 0 ? ncpu : -EINVAL;
        if (!(zero = calloc((size_t)ncpu, sizeof *zero)))
                return -ENOMEM;
        r = bpf_map__update_elem(b->skel->maps.stats, &slot, sizeof slot, zero, (size_t)ncpu * sizeof *zero, BPF_ANY);
        free(zero);
        return r;
}

/* Rewrites entry i of the pid index from the pids map (which holds every tracked tgid): the one
 * tgid that maps to i, none, or LOADMON_COLLIDE. The programs read an entry as a whole or see
 * the old one; either answer is right for a key being added or removed. */
static int pid_index_update(struct loadmon_bpf *b, uint32_t i) {
        struct loadmon_pid_entry e = {};
        uint32_t key, next, slot;
        unsigned n = 0;
        int r;

        for (r = bpf_map__get_next_key(b->skel->maps.pids, NULL, &next, sizeof next); r == 0;
             r = bpf_map__get_next_key(b->skel->maps.pids, &key, &next, sizeof next)) {
                key = next;
                if ((key & (LOADMON_PID_INDEX - 1)) != i ||
                    bpf_map__lookup_elem(b->skel->maps.pids, &key, sizeof key, &slot, sizeof slot, 0) < 0)
                        continue;
                e = (struct loadmon_pid_entry){ .tgid = ++n > 1 ? LOADMON_COLLIDE : key, .slot = slot };
        }
        if (r != -ENOENT)
                return r;
        return bpf_map__update_elem(b->skel->maps.pid_index, &i, sizeof i, &e, sizeof e, BPF_ANY);
}

static int cg_index_update(struct loadmon_bpf *b, uint32_t i) {
        struct loadmon_cg_entry e = {};
        uint64_t key, next;
        uint32_t slot;
        unsigned n = 0;
        int r;

        for (r = bpf_map__get_next_key(b->skel->maps.cgroups, NULL, &next, sizeof next); r == 0;
             r = bpf_map__get_next_key(b->skel->maps.cgroups, &key, &next, sizeof next)) {
                key = next;
                if (((uint32_t)key & (LOADMON_CG_INDEX - 1)) != i ||
                    bpf_map__lookup_elem(b->skel->maps.cgroups, &key, sizeof key, &slot, sizeof slot, 0) < 0)
                        continue;
                e = (struct loadmon_cg_entry){ .cgid = ++n > 1 ? LOADMON_COLLIDE : key, .slot = slot };
        }
        if (r != -ENOENT)
                return r;
        return bpf_map__update_elem(b->skel->maps.cg_index, &i, sizeof i, &e, sizeof e, BPF_ANY);
}

int loadmon_bpf_track_pid(struct loadmon_bpf *b, uint32_t slot, pid_t tgid) {
        uint32_t key = (uint32_t)tgid;
        int r;

        if (tgid <= 0 || key == LOADMON_COLLIDE)
                return -EINVAL;
        if ((r = zero_slot(b, slot)) < 0)
                return r;
        r = bpf_map__update_elem(b->skel->maps.pids, &key, sizeof key, &slot, sizeof slot, BPF_NOEXIST);
        if (r < 0)
                return r;
        if ((r = pid_index_update(b, key & (LOADMON_PID_INDEX - 1))) < 0)
                (void)bpf_map__delete_elem(b->skel->maps.pids, &key, sizeof key, 0);
        return r;
}

int loadmon_bpf_track_cgroup(struct loadmon_bpf *b, uint32_t slot, uint64_t cgid) {
        int r;

        if (cgid == 0 || cgid == LOADMON_COLLIDE)
                return -EINVAL;
        if ((r = zero_slot(b, slot)) < 0)
                return r;
        r = bpf_map__update_elem(b->skel->maps.cgroups, &cgid, sizeof cgid, &slot, sizeof slot, BPF_NOEXIST);
        if (r < 0)
                return r;
        if ((r = cg_index_update(b, (uint32_t)cgid & (LOADMON_CG_INDEX - 1))) < 0) {
                (void)bpf_map__delete_elem(b->skel->maps.cgroups, &cgid, sizeof cgid, 0);
                return r;
        }
        /* Pairs with the programs' plain read of n_cgroups: the key is in the maps before they
         * are told to look. */
        __atomic_store_n(&b->skel->bss->n_cgroups, ++b->n_cgroups, __ATOMIC_RELEASE);
        return 0;
}

int loadmon_bpf_untrack_pid(struct loadmon_bpf *b, pid_t tgid) {
        uint32_t key = (uint32_t)tgid;
        int r = bpf_map__delete_elem(b->skel->maps.pids, &key, sizeof key, 0);

        if (r < 0)
                return r;
        return pid_index_update(b, key & (LOADMON_PID_INDEX - 1));
}

int loadmon_bpf_untrack_cgroup(struct loadmon_bpf *b, uint64_t cgid) {
        int r = bpf_map__delete_elem(b->skel->maps.cgroups, &cgid, sizeof cgid, 0);

        if (r < 0)
                return r;
        if (b->n_cgroups > 0)
                __atomic_store_n(&b->skel->bss->n_cgroups, --b->n_cgroups, __ATOMIC_RELEASE);
        return cg_index_update(b, (uint32_t)cgid & (LOADMON_CG_INDEX - 1));
}

int loadmon_bpf_read(struct loadmon_bpf *b, uint32_t slot, struct loadmon_stats *ret) {
        int ncpu = stats_cpus();
        struct loadmon_stats *per, sum = {};
        int r;

        if (slot >= LOADMON_MAX_SLOTS)
                return -ERANGE;
        if (ncpu <= 0)
                return ncpu < 0 ? ncpu : -EINVAL;
        if (!(per = calloc((size_t)ncpu, sizeof *per)))
                return -ENOMEM;
        r = bpf_map__lookup_elem(b->skel->maps.stats, &slot, sizeof slot, per, (size_t)ncpu * sizeof *per, 0);
        for (int c = 0; r == 0 && c < ncpu; c++) {
                sum.cpu_ns += per[c].cpu_ns;
                sum.rq_count += per[c].rq_count;
                sum.rq_sum_ns += per[c].rq_sum_ns;
                for (size_t i = 0; i < LOADMON_RQ_BUCKETS; i++)
                        sum.rq_buckets[i] += per[c].rq_buckets[i];
        }
        free(per);
        if (r < 0)
                return r;
        *ret = sum;
        return 0;
}
