/* Resource discovery. The NVIDIA libraries are dlopen()ed rather than linked: one package must
 * run on CPU-only nodes, where neither the driver nor CUDA is installed. */
#include <dlfcn.h>
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <hwloc.h>

#include "common/nodecfg.h"
#include "macros.h"
#include "worker/resources.h"

/* ---- CPUs and memory ------------------------------------------------------------------------- */

static int discover_hwloc(struct node_resources *r) {
        hwloc_topology_t topo;
        int ret = 0;

        if (hwloc_topology_init(&topo) < 0)
                return negative_errno();
        if (hwloc_topology_load(topo) < 0) {
                ret = negative_errno();
                goto out;
        }

        /* The topology's allowed set reflects cgroup cpusets; the process binding reflects
         * taskset and systemd's CPUAffinity=. Replicas can only use both. */
        hwloc_bitmap_t cpus = hwloc_bitmap_dup(hwloc_topology_get_allowed_cpuset(topo));
        if (!cpus) {
                ret = -ENOMEM;
                goto out;
        }
        hwloc_bitmap_t bound = hwloc_bitmap_alloc();
        if (bound && hwloc_get_cpubind(topo, bound, HWLOC_CPUBIND_PROCESS) == 0)
                hwloc_bitmap_and(cpus, cpus, bound);
        hwloc_bitmap_free(bound);
        int n = hwloc_get_nbobjs_inside_cpuset_by_type(topo, cpus, HWLOC_OBJ_PU);
        hwloc_bitmap_free(cpus);
        if (n <= 0)
                n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
        r->num_cpus = n > 0 ? n : 1;

        int numa = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
        r->n_numa = numa > 0 ? (unsigned) numa : 1;
        hwloc_obj_t root = hwloc_get_root_obj(topo);
        r->memory = root ? root->total_memory : 0;
out:
        hwloc_topology_destroy(topo);
        return ret;
}

static void discover_kernel(struct node_resources *r) {
        cpu_set_t set;

        if (r->num_cpus <= 0) {
                long n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) :
                                                                        sysconf(_SC_NPROCESSORS_ONLN);
                r->num_cpus = n > 0 ? (double) n : 1;
        }
        /* hwloc sums the NUMA nodes' meminfo, which on some VMs misses memory added by
         * hotplug or ballooning; the kernel's total (sysinfo) is what processes can get. */
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        if (pages > 0 && size > 0)
                r->memory = MAX(r->memory, (uint64_t) pages * (uint64_t) size);
        if (r->n_numa == 0)
                r->n_numa = 1;
}

/* ---- GPUs: NVML ------------------------------------------------------------------------------- */

/* The few NVML declarations we need, as in nvml.h (ABI-stable, versioned by symbol name). */
typedef int nvml_return_t; /* NVML_SUCCESS == 0 */
typedef struct nvml_device *nvml_device_t;
typedef struct {
        unsigned long long total, free, used;
} nvml_memory_t;

static bool discover_nvml(struct node_resources *r) {
        nvml_return_t (*init)(void);
        nvml_return_t (*shutdown)(void);
        nvml_return_t (*get_count)(unsigned *);
        nvml_return_t (*get_handle)(unsigned, nvml_device_t *);
        nvml_return_t (*get_memory)(nvml_device_t, nvml_memory_t *);
        nvml_return_t (*get_name)(nvml_device_t, char *, unsigned);
        unsigned count = 0;

        void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!lib)
                return false;
        *(void **) &init = dlsym(lib, "nvmlInit_v2");
        *(void **) &shutdown = dlsym(lib, "nvmlShutdown");
        *(void **) &get_count = dlsym(lib, "nvmlDeviceGetCount_v2");
        *(void **) &get_handle = dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
        *(void **) &get_memory = dlsym(lib, "nvmlDeviceGetMemoryInfo");
        *(void **) &get_name = dlsym(lib, "nvmlDeviceGetName");
        if (!init || !shutdown || !get_count || !get_handle || !get_memory || !get_name ||
            init() != 0) {
                dlclose(lib);
                return false;
        }

        bool found = get_count(&count) == 0;
        for (unsigned i = 0; found && i < count && r->n_gpus < RESOURCES_MAX_GPUS; i++) {
                struct node_gpu *g = &r->gpus[r->n_gpus];
                nvml_device_t dev;
                nvml_memory_t mem;

                if (get_handle(i, &dev) != 0)
                        continue; /* e.g. a GPU that fell off the bus: not offered */
                *g = (struct node_gpu){ .index = i };
                if (get_memory(dev, &mem) == 0)
                        g->memory = mem.total;
                if (get_name(dev, g->name, sizeof(g->name)) != 0)
                        g->name[0] = 0;
                g->name[sizeof(g->name) - 1] = 0;
                r->n_gpus++;
        }
        shutdown();
        dlclose(lib);
        return found;
}

/* ---- GPUs: CUDA runtime ---------------------------------------------------------------------- */

static void discover_cudart(struct node_resources *r) {
        static const char *const names[] = { "libcudart.so", "libcudart.so.13", "libcudart.so.12" };
        int (*get_count)(int *);
        int (*set_device)(int);
        int (*mem_get_info)(size_t *, size_t *);
        int (*device_reset)(void);
        void *lib = NULL;
        int count = 0;

        for (size_t i = 0; i < ELEMENTSOF(names) && !lib; i++)
                lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib)
                return;
        *(void **) &get_count = dlsym(lib, "cudaGetDeviceCount");
        *(void **) &set_device = dlsym(lib, "cudaSetDevice");
        *(void **) &mem_get_info = dlsym(lib, "cudaMemGetInfo");
        *(void **) &device_reset = dlsym(lib, "cudaDeviceReset");
        /* No dlclose(): the CUDA runtime registers exit handlers that must stay mapped. */
        if (!get_count || !set_device || !mem_get_info || get_count(&count) != 0 || count <= 0)
                return;

        for (int i = 0; i < count && r->n_gpus < RESOURCES_MAX_GPUS; i++) {
                struct node_gpu *g = &r->gpus[r->n_gpus];
                size_t free_bytes, total;

                if (set_device(i) != 0)
                        continue;
                *g = (struct node_gpu){ .index = (unsigned) i };
                /* This creates a context; reset it so the worker holds no GPU memory. */
                if (mem_get_info(&free_bytes, &total) == 0)
                        g->memory = total;
                if (device_reset)
                        device_reset();
                r->n_gpus++;
        }
}

/* ---- public ----------------------------------------------------------------------------------- */

int resources_discover(struct node_resources *ret) {
        struct node_resources r = {};

        int k = discover_hwloc(&r);
        if (k == -ENOMEM)
                return k;
        discover_kernel(&r);

        if (!discover_nvml(&r))
                discover_cudart(&r);

        *ret = r;
        return 0;
}

void resources_apply_overrides(struct node_resources *r, const struct worker_config *c) {
        const struct resource_spec *s = &c->resources;

        if (s->has_num_cpus)
                r->num_cpus = s->num_cpus;
        if (s->has_memory)
                r->memory = s->memory;
        if (s->has_num_gpus) {
                unsigned n = MIN(s->num_gpus, (unsigned) RESOURCES_MAX_GPUS);
                for (unsigned i = r->n_gpus; i < n; i++)
                        r->gpus[i] = (struct node_gpu){
                                .index = i > 0 ? r->gpus[i - 1].index + 1 : 0,
                        };
                r->n_gpus = n;
        }
        if (s->has_gpu_memory)
                for (unsigned i = 0; i < r->n_gpus; i++)
                        r->gpus[i].memory = s->gpu_memory;
}
