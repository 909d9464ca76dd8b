/* The load monitor's kernel half: CPU time and run-queue delay per replica, from the scheduler's
 * tracepoints. Every program exists twice, as tp_btf (typed arguments, direct loads: the cheap
 * one, kernels >= 5.5 with BTF) and as raw_tp (the fallback); the loader loads one set.
 *
 * CPU time: each CPU remembers when it last switched tasks, so at sched_switch the outgoing task
 * ran for (now - last switch); no per-task state is needed.
 * Run-queue delay: from the moment a tracked task becomes runnable (sched_wakeup,
 * sched_wakeup_new, or preempted while still running at sched_switch) to sched_switch putting it
 * on a CPU. The wakeup tracepoints run in the *waker's* context, so the woken task is the
 * tracepoint's argument, never the current task (the classic runqlat copying mistake keys the
 * delay by the waker). Only tracked tasks touch the wakeups map, so an idle node costs two hash
 * lookups per switch. */
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

struct {
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
        __uint(max_entries, 1);
        __type(key, __u32);
        __type(value, __u64); /* this CPU's last sched_switch (ns) */
} last_switch SEC(".maps");

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

static __always_inline struct loadmon_stats *slot_of(struct task_struct *t, __u32 tgid) {
        __u32 *slot = bpf_map_lookup_elem(&pids, &tgid);

        if (!slot && n_cgroups) {
                __u64 id = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
                slot = bpf_map_lookup_elem(&cgroups, &id);
        }
        return slot ? bpf_map_lookup_elem(&stats, slot) : NULL;
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

        if (!tgid || !slot_of(p, tgid))
                return 0;
        tid = TASK_FIELD(btf, p, pid);
        now = bpf_ktime_get_ns();
        bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
        return 0;
}

static __always_inline int on_switch(struct task_struct *prev, struct task_struct *next, bool btf) {
        struct loadmon_stats *st;
        __u32 zero = 0, tgid, tid;
        __u64 now = bpf_ktime_get_ns(), since, *last, *ts;

        last = bpf_map_lookup_elem(&last_switch, &zero);
        if (!last)
                return 0;
        since = *last;
        *last = now;

        tgid = TASK_FIELD(btf, prev, tgid);
        if (tgid && (st = slot_of(prev, tgid))) {
                if (since)
                        __sync_fetch_and_add(&st->cpu_ns, now - since);
                /* Preempted, still runnable: it waits for a CPU from now on. */
                if (task_state(prev) == TASK_RUNNING) {
                        tid = TASK_FIELD(btf, prev, pid);
                        bpf_map_update_elem(&wakeups, &tid, &now, BPF_ANY);
                }
        }

        tgid = TASK_FIELD(btf, next, tgid);
        if (!tgid || !(st = slot_of(next, tgid)))
                return 0;
        tid = TASK_FIELD(btf, next, pid);
        ts = bpf_map_lookup_elem(&wakeups, &tid);
        if (!ts)
                return 0;
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
