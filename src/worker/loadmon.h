/* The node's load monitor, as serve-worker and `serve run` use it: per replica, CPU time and
 * run-queue delay (how long its threads waited for a CPU); per node, the HTTP listener's accept
 * queue and the kernel's listen-queue overflows.
 *
 * It loads the eBPF programs of ebpf/ (CO-RE, scheduler tracepoints; needs CAP_BPF and
 * CAP_PERFMON and the kernel's BTF). Where they cannot load it logs one notice and falls back
 * to what user space can read: cgroup cpu.stat or /proc/PID/stat for CPU time, the threads'
 * /proc/PID/task/TID/schedstat for run-queue delay (sum and count, no histogram). The node's
 * numbers come from sock_diag and /proc/net/netstat either way. Everything is read when asked
 * (once per heartbeat), never per request. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "report.h"

struct loadmon;

struct loadmon_replica {
        double cpu_seconds;                     /* since tracking began (eBPF) or the process began */
        bool has_buckets;                       /* eBPF: rq_buckets filled; fallback: sum and count only */
        uint64_t rq_buckets[REPORT_RQ_BUCKETS]; /* cumulative, like Prometheus: the last == rq_count */
        uint64_t rq_count;                      /* waits for a CPU */
        double rq_sum_seconds;                  /* their total length */
};

struct loadmon_node {
        uint64_t listen_queue;     /* connections waiting in the listener's accept queue */
        uint64_t listen_backlog;   /* the accept queue's limit */
        uint64_t listen_overflows; /* TcpExt ListenOverflows: SYNs/ACKs dropped on a full queue (all listeners) */
};

/* Makes a monitor: eBPF when it loads, else the fallback (one notice logged, with the cause).
 * SERVE_LOADMON=proc forces the fallback. Returns 0 and *ret, or -ENOMEM. */
int loadmon_new(struct loadmon **ret);
void loadmon_free(struct loadmon *lm);
/* True when the eBPF programs are loaded and attached. */
bool loadmon_ebpf(const struct loadmon *lm);

/* Starts measuring replica `key` (its id): process pid with its threads, or, when cgroup (the
 * replica's own cgroup v2 directory) is not NULL, every process in it. Returns 0 or a negative
 * errno (-ENOSPC past LOADMON_MAX_REPLICAS, -EEXIST for a key already tracked). */
#define LOADMON_MAX_REPLICAS 1024
int loadmon_track(struct loadmon *lm, const char *key, pid_t pid, const char *cgroup);
/* Stops measuring `key`; unknown keys are ignored. */
void loadmon_untrack(struct loadmon *lm, const char *key);
/* Reads replica `key`'s counters. Returns 0 and *ret, -ENOENT (not tracked) or a negative errno
 * from reading them. */
int loadmon_replica(struct loadmon *lm, const char *key, struct loadmon_replica *ret);
/* Reads the node's numbers for the TCP listener(s) on port (bound to host, or to any address
 * when host is NULL, empty, "0.0.0.0" or "::"). Returns 0 and *ret, or a negative errno. */
int loadmon_node(struct loadmon *lm, const char *host, int port, struct loadmon_node *ret);

/* The fallback's parsers, fed whole files (exposed for the unit tests). Each returns 0 and its
 * outputs, or -EINVAL when the text lacks the field or is malformed. */
/* cgroup v2 cpu.stat: usage_usec. */
int loadmon_parse_cpu_stat(const char *text, uint64_t *ret_usec);
/* /proc/PID/stat: utime + stime, in clock ticks (the command name may hold spaces and ')'). */
int loadmon_parse_proc_stat(const char *text, uint64_t *ret_ticks);
/* /proc/PID/schedstat: "<on-cpu ns> <run-queue wait ns> <timeslices>". */
int loadmon_parse_schedstat(const char *text, uint64_t *ret_wait_ns, uint64_t *ret_slices);
/* /proc/net/netstat: TcpExt's ListenOverflows (header line, then values line). */
int loadmon_parse_netstat(const char *text, uint64_t *ret_overflows);
