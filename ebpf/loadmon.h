/* What the load monitor's BPF programs (loadmon.bpf.c) and their loader (loadmon.c) share: map
 * sizes and the layout of one replica's counters. Included by BPF code, so no libc here.
 *
 * A replica is a "slot" (an index into the stats array). User space gives a replica a slot and
 * keys it by its process id (tgid: every thread counts) or by its cgroup id; the program looks
 * the task leaving a CPU up by tgid first, then by cgroup, and adds to that slot. */
#ifndef SERVE_EBPF_LOADMON_H
#define SERVE_EBPF_LOADMON_H

#define LOADMON_MAX_SLOTS 1024     /* replicas on one node */
#define LOADMON_MAX_THREADS 16384  /* tracked threads remembered (the raw_tp programs only) */

/* Every scheduler event asks "is this task tracked?", almost always of a task that is not. A
 * hash lookup per question costs more than the rest of a program, so the question goes first to
 * a direct-mapped index (an array lookup the verifier inlines): entry (key % size) holds the one
 * tracked key that maps there, 0 when none does, or LOADMON_COLLIDE when several do (then the
 * pids/cgroups hash maps, which always hold every key, answer). */
#define LOADMON_PID_INDEX 65536    /* entries; a power of two */
#define LOADMON_CG_INDEX 4096      /* entries; a power of two */
#define LOADMON_COLLIDE 0xffffffffu

struct loadmon_pid_entry {
        __u32 tgid;                /* 0: none; LOADMON_COLLIDE: ask the pids map */
        __u32 slot;
};

struct loadmon_cg_entry {
        __u64 cgid;                /* 0: none; LOADMON_COLLIDE: ask the cgroups map */
        __u32 slot;
        __u32 pad;
};

/* Run-queue delay histogram: bucket i (i < LOADMON_RQ_BUCKETS - 1) counts delays below
 * 2^(i+1) microseconds (and at least 2^i, except bucket 0); the last bucket is +Inf. */
#define LOADMON_RQ_BUCKETS 20

struct loadmon_stats {
        __u64 cpu_ns;                         /* time on a CPU, summed at every switch-out */
        __u64 rq_count;                       /* waits for a CPU that ended (sched_info.pcount) */
        __u64 rq_sum_ns;                      /* their total length */
        __u64 rq_buckets[LOADMON_RQ_BUCKETS]; /* non-cumulative */
};

#ifndef __bpf__
/* ---- the loader (loadmon.c), for src/worker/loadmon.c; built only with --enable-bpf ---- */
#include <stdint.h>
#include <sys/types.h>
#include <linux/types.h>

struct loadmon_bpf;

/* Opens, loads and attaches the programs: tp_btf, else raw_tp. libbpf's messages go to our log
 * at debug level. Returns 0 and *ret, or a negative errno (-EPERM without CAP_BPF and
 * CAP_PERFMON, -ENOENT/-ESRCH/-EINVAL without BTF or the tracepoints); nothing is logged: the
 * caller logs the one notice. */
int loadmon_bpf_open(struct loadmon_bpf **ret);
void loadmon_bpf_close(struct loadmon_bpf *b);
/* "tp_btf" or "raw_tp": which set of programs runs. */
const char *loadmon_bpf_kind(const struct loadmon_bpf *b);

/* Counts tgid (all its threads), or every task in cgroup v2 id cgid, into slot (zeroed first).
 * Returns 0 or a negative errno (-ERANGE: slot out of range, -E2BIG: map full). */
int loadmon_bpf_track_pid(struct loadmon_bpf *b, uint32_t slot, pid_t tgid);
int loadmon_bpf_track_cgroup(struct loadmon_bpf *b, uint32_t slot, uint64_t cgid);
/* Stops counting a key (tgid > 0, or cgid != 0). Returns 0 or a negative errno. */
int loadmon_bpf_untrack_pid(struct loadmon_bpf *b, pid_t tgid);
int loadmon_bpf_untrack_cgroup(struct loadmon_bpf *b, uint64_t cgid);
/* Copies slot's counters. Returns 0 or a negative errno. */
int loadmon_bpf_read(struct loadmon_bpf *b, uint32_t slot, struct loadmon_stats *ret);
#endif

#endif
