/* What this node offers to replicas: CPUs, memory and GPUs found on the machine (hwloc, NVML),
 * then overridden by worker.yaml's resources section. */
#pragma once

#include <stdint.h>

struct worker_config;

#define RESOURCES_MAX_GPUS 16

struct node_gpu {
        unsigned index;   /* the device index CUDA_VISIBLE_DEVICES uses */
        uint64_t memory;  /* bytes; 0 when unknown */
        char name[64];    /* e.g. "NVIDIA H100 80GB HBM3"; "" when unknown */
};

struct node_resources {
        double num_cpus;  /* logical CPUs this process may run on */
        uint64_t memory;  /* bytes of RAM on the machine */
        unsigned n_numa;  /* NUMA nodes, at least 1 */
        unsigned n_gpus;
        struct node_gpu gpus[RESOURCES_MAX_GPUS];
};

/* Discovers the node's resources. CPUs are the PUs in the process's CPU affinity mask (so
 * `taskset` or systemd's CPUAffinity= shrink what the node offers); GPUs come from NVML
 * (libnvidia-ml.so.1), else from the CUDA runtime, else there are none: a node without NVIDIA
 * libraries or driver is a CPU node, not an error. Returns 0 and *ret, or -ENOMEM. When hwloc
 * cannot load a topology, falls back to sched_getaffinity() and sysconf(). */
int resources_discover(struct node_resources *ret);

/* Replaces what discovery found with every resource c->resources sets (num_cpus, memory,
 * num_gpus, gpu_memory). num_gpus above RESOURCES_MAX_GPUS is capped; GPUs added beyond those
 * discovered get consecutive indexes. */
void resources_apply_overrides(struct node_resources *r, const struct worker_config *c);
