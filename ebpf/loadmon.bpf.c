/* The load monitor's kernel half: CPU time and run-queue delay per replica, from the scheduler's
 * tracepoints. Every program exists twice, as tp_btf (typed arguments, direct loads: the cheap
 * one, kernels >= 5.5 with BTF) and as raw_tp (the fallback); the loader loads one set.
 *
 * CPU time: the kernel's sum_exec_runtime of a tracked task, from its switch-in to its switch-out.
 * Run-queue delay: from the moment a tracked task becomes runnable (sched_wakeup,
 * sched_wakeup_new, or preempted while still running at sched_switch) to sched_switch putting it
 * on a CPU. The wakeup tracepoints run in the *waker's* context, so the woken task is the
 * tracepoint's argument, never the current task (the classic runqlat copying mistake keys the
 * delay by the waker). Only tracked tasks read the clock or touch the wakeups map; any other
 * task costs an inlined array lookup (see LOADMON_PID_INDEX). */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "loadmon.h"

/* The kernel lets only GPL-compatible programs call the tracing helpers used here. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TASK_RUNNING 0

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

struct {
        __uint(type, BPF_MAP_TYPE_ARRAY);
        __uint(max_entries, LOADMON_MAX_SLOTS);
        __type(key, __u32);
        __type(value, struct loadmon_stats);
} stats SEC(".maps");

struct {
        __uint(type, BPF_MAP_TYPE_HASH);
        __uint(max_entries, LOADMON_MAX_WAKEUPS);
        __type(key, __u32);   /* thread id */
        __type(value, __u64); /* when it became runnable (ns) */
} wakeups SEC(".maps");

/* The tracked task running on this CPU, and its sum_exec_runtime when it got the CPU. */
struct oncpu {
        __u32 tid;
        __u32 slot;
        __u64 runtime;
};

struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, struct oncpu);
} oncpu SEC(".maps");

/* Kernels before 5.14 call task_struct's state `state`. */
struct task_struct___o {
        volatile long int state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t) {
        if (bpf_core_field_exists(t->__state))
                return BPF_CORE_READ(t, __state);
        return BPF_CORE_READ((struct task_struct___o *)t, state);
}

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

static __always_inline int on_wakeup(struct task_struct *p, bool btf) {
        __u32 tgid = TASK_FIELD(btf, p, tgid), tid;
        __u64 now;

        if (!tgid || slot_of(p, tgid, btf) < 0)
                return 0;
        tid = TASK_FIELD(btf, p, pid);
        now = bpf_ktime_get_ns();
        bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
        return 0;
}

/* CPU time is the kernel's own sum_exec_runtime (what /proc/PID/stat reports), already brought
 * up to date for prev when sched_switch fires: its growth between a tracked task's switch-in and
 * switch-out on this CPU. Untracked switches read no clock and touch no per-CPU state. */
static __always_inline int on_switch(struct task_struct *prev, struct task_struct *next, bool btf) {
        struct loadmon_stats *st;
        struct oncpu *oc = NULL;
        __u32 zero = 0, tgid, tid;
        __u64 now = 0, *ts;
        __s64 slot;

        tgid = TASK_FIELD(btf, prev, tgid);
        if (tgid && (slot = slot_of(prev, tgid, btf)) >= 0 && (st = stats_of(slot))) {
                tid = TASK_FIELD(btf, prev, pid);
                oc = bpf_map_lookup_elem(&oncpu, &zero);
                if (oc && oc->tid == tid && oc->slot == (__u32)slot) {
                        __u64 rt = TASK_FIELD(btf, prev, se.sum_exec_runtime);
                        if (rt > oc->runtime)
                                __sync_fetch_and_add(&st->cpu_ns, rt - oc->runtime);
                }
                if (oc)
                        oc->tid = 0;
                /* Preempted, still runnable: it waits for a CPU from now on. */
                if (task_state(prev) == TASK_RUNNING) {
                        now = bpf_ktime_get_ns();
                        bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
                }
        }

        tgid = TASK_FIELD(btf, next, tgid);
        if (!tgid || (slot = slot_of(next, tgid, btf)) < 0 || !(st = stats_of(slot)))
                return 0;
        tid = TASK_FIELD(btf, next, pid);
        if (!oc)
                oc = bpf_map_lookup_elem(&oncpu, &zero);
        if (oc) {
                oc->tid = tid;
                oc->slot = (__u32)slot;
                oc->runtime = TASK_FIELD(btf, next, se.sum_exec_runtime);
        }
        ts = bpf_map_lookup_elem(&wakeups, &tid);
        if (!ts)
                return 0;
        if (!now)
                now = bpf_ktime_get_ns();
        __u64 delay = now > *ts ? now - *ts : 0, us = delay / 1000;
        __u32 b = us ? log2_u64(us) : 0;
        bpf_map_delete_elem(&wakeups, &tid);
        if (b >= LOADMON_RQ_BUCKETS)
                b = LOADMON_RQ_BUCKETS - 1;
        __sync_fetch_and_add(&st->rq_count, 1);
        __sync_fetch_and_add(&st->rq_sum_ns, delay);
        __sync_fetch_and_add(&st->rq_buckets[b], 1);
        return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(lm_switch_btf, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(prev, next, true);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(lm_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next) {
        return on_switch(prev, next, false);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(lm_wakeup_btf, struct task_struct *p) { return on_wakeup(p, true); }

SEC("raw_tp/sched_wakeup")
int BPF_PROG(lm_wakeup_raw, struct task_struct *p) { return on_wakeup(p, false); }

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(lm_wknew_btf, struct task_struct *p) { return on_wakeup(p, true); }

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(lm_wknew_raw, struct task_struct *p) { return on_wakeup(p, false); }
