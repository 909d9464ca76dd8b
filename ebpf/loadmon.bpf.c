/* The load monitor's kernel half: CPU time and run-queue delay per replica, from one scheduler
 * tracepoint, sched_switch. It exists twice, as tp_btf (typed arguments, direct loads, per-task
 * state in task-local storage: the cheap one, kernels >= 5.11 with BTF) and as raw_tp (the
 * fallback: probe reads, per-thread state in an LRU hash); the loader loads one.
 *
 * Both numbers are the kernel's own per-task accounting, read when a tracked task leaves a CPU
 * (`prev`), so no program reads a clock and the wakeup tracepoints are not needed:
 *   - CPU time: the growth of the task's se.sum_exec_runtime (what /proc/PID/stat reports),
 *     already brought up to date for prev when sched_switch fires;
 *   - run-queue delay: the growth of the task's sched_info.run_delay (CONFIG_SCHED_INFO; field 2
 *     of /proc/PID/schedstat), which the kernel adds to when a task that became runnable (woken,
 *     new, or preempted while still running) gets a CPU, and sched_info.pcount, which counts
 *     those arrivals. The kernel updates both for `next` in prepare_task_switch(), *after* the
 *     tracepoint, so they are read at the task's switch-out, where they include the wait that
 *     ended at its switch-in. Between two switch-outs of the same task pcount grows by one: the
 *     run_delay growth is exactly that one wait (the parts of a wait spent on other CPUs before
 *     a migration included), so the histogram gets per-wait values. The delay is the woken
 *     task's own (the classic runqlat mistake of keying it by the waker cannot happen).
 * The first switch-out of a task seen counts its whole history (a thread born in a tracked
 * process: all of it happened while tracked; several waits at once go to the bucket of their
 * mean). Untracked tasks cost an inlined array lookup (see LOADMON_PID_INDEX). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "loadmon.h"

/* The kernel lets only GPL-compatible programs call the tracing helpers used here. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Number of keys in `cgroups`: while 0, untracked tasks cost no cgroup lookup. Written by
 * user space (memory-mapped .bss); a stale read only delays when a new key starts counting. */
__u32 n_cgroups = 0;

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, LOADMON_MAX_SLOTS);
        __type(key, __u32);   /* tgid */
        __type(value, __u32); /* slot */
} pids SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, LOADMON_MAX_SLOTS);
        __type(key, __u64);   /* cgroup v2 id (the cgroup directory's inode number) */
        __type(value, __u32); /* slot */
} cgroups SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, LOADMON_PID_INDEX);
        __type(key, __u32);
        __type(value, struct loadmon_pid_entry);
} pid_index SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, LOADMON_CG_INDEX);
        __type(key, __u32);
        __type(value, struct loadmon_cg_entry);
} cg_index SEC(".maps");

/* Per CPU: a program only ever adds to its own CPU's copy, with plain adds (no locked
 * instructions); the loader sums the copies. */
struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, LOADMON_MAX_SLOTS);
        __type(key, __u32);
        __type(value, struct loadmon_stats);
} stats SEC(".maps");

/* What a tracked task's counters were at its last switch-out. */
struct task_state {
        __u64 runtime;   /* se.sum_exec_runtime */
        __u64 run_delay; /* sched_info.run_delay */
        __u64 pcount;    /* sched_info.pcount */
        __u64 start;     /* raw_tp only: start_time, which tells a reused thread id from its owner */
        __u32 slot;      /* + 1; 0: never seen */
        __u32 pad;
};

struct {
        __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
        __uint(map_flags, BPF_F_NO_PREALLOC);
        __type(key, int);
        __type(value, struct task_state);
} tstate SEC(".maps");

/* raw_tp's stand-in for tstate (which needs a BTF task pointer), by thread id: LRU, since no
 * program sees a thread exit; a reused id is told by its start_time. */
struct {
        __uint(type, BPF_MAP_TYPE_LRU_HASH);
        __uint(max_entries, LOADMON_MAX_THREADS);
        __type(key, __u32);
        __type(value, struct task_state);
} tstate_raw SEC(".maps");

/* tp_btf arguments are typed pointers the verifier lets us load from directly; raw_tp ones are
 * plain numbers, read through bpf_probe_read_kernel. `btf` is a constant in every caller, so
 * each program keeps only its own branch. */
#define TASK_FIELD(btf, t, f) ((btf) ? (t)->f : BPF_CORE_READ((t), f))

/* The slot of task t (of process tgid), or -1 when it is not tracked. */
static __always_inline __s64 slot_of(struct task_struct *t, __u32 tgid, bool btf) {
        __u32 i = tgid & (LOADMON_PID_INDEX - 1), *slot;
        struct loadmon_pid_entry *pe = bpf_map_lookup_elem(&pid_index, &i);

        if (pe && pe->tgid == tgid)
                return pe->slot;
        if (pe && pe->tgid == LOADMON_COLLIDE && (slot = bpf_map_lookup_elem(&pids, &tgid)))
                return *slot;
        if (n_cgroups) {
                __u64 id = btf ? t->cgroups->dfl_cgrp->kn->id : BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
                struct loadmon_cg_entry *ce;
                i = (__u32)id & (LOADMON_CG_INDEX - 1);
                ce = bpf_map_lookup_elem(&cg_index, &i);
                if (ce && ce->cgid == id && id)
                        return ce->slot;
                if (ce && ce->cgid == LOADMON_COLLIDE && (slot = bpf_map_lookup_elem(&cgroups, &id)))
                        return *slot;
        }
        return -1;
}

static __always_inline struct loadmon_stats *stats_of(__s64 slot) {
        __u32 k = (__u32)slot;

        return slot >= 0 ? bpf_map_lookup_elem(&stats, &k) : NULL;
}

static __always_inline __u32 log2_u64(__u64 v) {
        __u32 r = 0, shift;

        shift = (v > 0xFFFFFFFFull) << 5; v >>= shift; r |= shift;
        shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
        shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
        shift = (v > 0xF) << 2; v >>= shift; r |= shift;
        shift = (v > 0x3) << 1; v >>= shift; r |= shift;
        return r | (__u32)(v >> 1);
}

/* The state of task t (tid), created empty when missing; NULL only when memory is short. */
static __always_inline struct task_state *state_of(struct task_struct *t, bool btf) {
        struct task_state *s, zero = {};
        __u32 tid;
        __u64 start;

        if (btf)
                return bpf_task_storage_get(&tstate, t, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
        tid = BPF_CORE_READ(t, pid);
        start = BPF_CORE_READ(t, start_time);
        s = bpf_map_lookup_elem(&tstate_raw, &tid);
        if (s && s->start == start)
                return s;
        zero.start = start;
        bpf_map_update_elem(&tstate_raw, &tid, &zero, BPF_ANY);
        return bpf_map_lookup_elem(&tstate_raw, &tid);
}

/* Only the task leaving the CPU is looked at (see the top of this file): untracked switches cost
 * the index lookup of one task and touch no other state. */
static __always_inline int on_switch(struct task_struct *prev, bool btf) {
        struct loadmon_stats *st;
        struct task_state *s;
        __u64 rt, rd, pc, n, d;
        __u32 tgid, b;
        __s64 slot;

        tgid = TASK_FIELD(btf, prev, tgid);
        if (!tgid || (slot = slot_of(prev, tgid, btf)) < 0 || !(st = stats_of(slot)) || !(s = state_of(prev, btf)))
                return 0;
        rt = TASK_FIELD(btf, prev, se.sum_exec_runtime);
        rd = TASK_FIELD(btf, prev, sched_info.run_delay);
        pc = TASK_FIELD(btf, prev, sched_info.pcount);
        if (s->slot != (__u32)slot + 1 && s->slot) {
                /* Tracked again, into another slot: count from here on. */
                s->runtime = rt;
                s->run_delay = rd;
                s->pcount = pc;
        }
        s->slot = (__u32)slot + 1;
        if (rt > s->runtime)
                st->cpu_ns += rt - s->runtime;
        s->runtime = rt;
        if (pc <= s->pcount)
                return 0;
        n = pc - s->pcount;
        d = rd > s->run_delay ? rd - s->run_delay : 0;
        s->pcount = pc;
        s->run_delay = rd;
        __u64 us = (n == 1 ? d : d / n) / 1000;
        b = us ? log2_u64(us) : 0;
        if (b >= LOADMON_RQ_BUCKETS)
                b = LOADMON_RQ_BUCKETS - 1;
        st->rq_count += n;
        st->rq_sum_ns += d;
        st->rq_buckets[b] += n;
        return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(lm_switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(prev, true);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(lm_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(prev, false);
}
