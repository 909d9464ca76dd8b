/* Replica placement: where replicas land (spread, stay put, move off dead nodes, pack GPU
 * fractions), what is left pending and the exact reason an operator reads, and that no node is
 * ever given more than it has, checked independently of the placement code. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "head/placement.h"
#include "tap.h"

#define GiB (1024ull * 1024 * 1024)

static struct placement_node node(const char *name, double cpus, uint64_t memory, unsigned gpus) {
        return (struct placement_node){ .name = name, .alive = true, .cpus = cpus, .memory = memory, .n_gpus = gpus };
}

static struct placement_deployment dep(const char *key, int replicas, double cpus) {
        return (struct placement_deployment){ .key = key, .replicas = replicas, .num_cpus = cpus };
}

static struct placement_result *compute(const struct placement_node *nodes, size_t n_nodes,
                                        const struct placement_deployment *deps, size_t n_deps,
                                        const struct placement_prev *prev) {
        struct placement_input in = { .nodes = nodes, .n_nodes = n_nodes, .deployments = deps, .n_deployments = n_deps };
        struct placement_result *res = NULL;
        int r = placement_compute(&in, prev, &res);
        if (r < 0) {
                ok(false, "placement_compute succeeds");
                printf("#   r=%d (%s)\n", r, strerror(-r));
                exit(1);
        }
        return res;
}

static unsigned count_on(const struct placement_result *res, size_t di, size_t node) {
        const struct placement_deployment_result *d = &res->deployments[di];
        for (size_t k = 0; k < d->n_slots; k++)
                if (d->slots[k].node == node)
                        return d->slots[k].count;
        return 0;
}

/* "0 0 1 1": every replica's CUDA_VISIBLE_DEVICES, in slot order. */
static const char *gpus_of(const struct placement_result *res, size_t di) {
        static char buf[4096];
        const struct placement_deployment_result *d = &res->deployments[di];
        size_t len = 0;
        buf[0] = '\0';
        for (size_t k = 0; k < d->n_slots; k++)
                for (unsigned j = 0; j < d->slots[k].count; j++)
                        len += snprintf(buf + len, sizeof(buf) - len, "%s%s", len ? " " : "",
                                        d->slots[k].gpus ? d->slots[k].gpus[j] : "(none)");
        return buf;
}

static bool is_reason(const struct placement_result *res, size_t di, unsigned pending, const char *want) {
        const struct placement_deployment_result *d = &res->deployments[di];
        bool good = d->pending == pending && d->pending_reason && strcmp(d->pending_reason, want) == 0;
        if (!ok(good, "%u pending: %s", pending, want))
                printf("#   got %u pending: %s\n", d->pending, d->pending_reason ? d->pending_reason : "(null)");
        return good;
}

/* Recomputes every node's usage from the result alone and checks it against capacity. */
static bool within_capacity(const struct placement_node *nodes, size_t n_nodes,
                            const struct placement_deployment *deps, size_t n_deps,
                            const struct placement_result *res) {
        double *cpus = calloc(n_nodes, sizeof(double));
        uint64_t *mem = calloc(n_nodes, sizeof(uint64_t));
        double *gpu = calloc(n_nodes * 16, sizeof(double));
        bool good = true;

        for (size_t di = 0; di < n_deps; di++)
                for (size_t k = 0; k < res->deployments[di].n_slots; k++) {
                        const struct placement_slot *s = &res->deployments[di].slots[k];
                        if (s->node >= n_nodes || !nodes[s->node].alive)
                                good = false;
                        cpus[s->node] += s->count * deps[di].num_cpus;
                        mem[s->node] += s->count * deps[di].memory;
                        for (unsigned j = 0; deps[di].num_gpus > 0 && j < s->count; j++)
                                for (char *p = s->gpus[j]; *p;) {
                                        unsigned long g = strtoul(p, &p, 10);
                                        if (g >= nodes[s->node].n_gpus || g >= 16)
                                                good = false;
                                        else
                                                gpu[s->node * 16 + g] += deps[di].num_gpus >= 1 ? 1.0 : deps[di].num_gpus;
                                        if (*p == ',')
                                                p++;
                                }
                }
        for (size_t i = 0; i < n_nodes; i++) {
                if (cpus[i] > nodes[i].cpus + 1e-6 || mem[i] > nodes[i].memory) {
                        printf("#   node %s: %g/%g CPUs, %llu/%llu memory\n", nodes[i].name, cpus[i], nodes[i].cpus,
                               (unsigned long long)mem[i], (unsigned long long)nodes[i].memory);
                        good = false;
                }
                for (unsigned g = 0; g < 16; g++)
                        if (gpu[i * 16 + g] > 1.0 + 1e-6) {
                                printf("#   node %s GPU %u: %g in use\n", nodes[i].name, g, gpu[i * 16 + g]);
                                good = false;
                        }
        }
        free(cpus);
        free(mem);
        free(gpu);
        return good;
}

static void test_spread(void) {
        struct placement_node nodes[] = { node("a", 4, 8 * GiB, 0), node("b", 4, 8 * GiB, 0), node("c", 4, 8 * GiB, 0) };
        struct placement_deployment deps[] = { dep("app/D", 6, 1) };
        struct placement_result *res = compute(nodes, 3, deps, 1, NULL);

        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) == 2 && count_on(res, 0, 2) == 2,
           "6 replicas on 3 equal nodes spread 2/2/2 (got %u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        is_int(res->deployments[0].pending, 0, "nothing pending");
        ok(res->deployments[0].pending_reason == NULL, "no pending reason when all are placed");
        is_int(res->nodes[1].replicas, 2, "node b reports 2 replicas in use");
        ok(res->nodes[1].cpus == 2, "node b reports 2 CPUs in use");
        placement_result_free(res);

        /* Equal replica counts: the node with more free CPU wins. */
        struct placement_node uneven[] = { node("small", 4, 8 * GiB, 0), node("big", 8, 8 * GiB, 0) };
        struct placement_deployment one[] = { dep("app/D", 1, 1) };
        res = compute(uneven, 2, one, 1, NULL);
        is_int(count_on(res, 0, 1), 1, "a tie on replica count goes to the node with the most free CPU");
        placement_result_free(res);
}

static void test_incremental(void) {
        struct placement_node nodes[] = { node("a", 8, 8 * GiB, 0), node("b", 8, 8 * GiB, 0), node("c", 8, 8 * GiB, 0) };
        struct placement_deployment deps[] = { dep("app/D", 2, 1) };
        struct placement_input in = { .nodes = nodes, .n_nodes = 3, .deployments = deps, .n_deployments = 1 };

        /* Grow 2 -> 4 through the head's own cycle: result -> prev -> compute. */
        struct placement_result *first = compute(nodes, 3, deps, 1, NULL);
        struct placement_prev *prev = NULL;
        is_int(placement_result_to_prev(&in, first, &prev), 0, "result converts to prev");
        deps[0].replicas = 4;
        struct placement_result *grown = compute(nodes, 3, deps, 1, prev);
        bool kept = true;
        for (size_t i = 0; i < 3; i++)
                if (count_on(grown, 0, i) < count_on(first, 0, i))
                        kept = false;
        ok(kept && grown->deployments[0].placed == 4, "growing 2 -> 4 keeps the first 2 where they were");
        free(prev);
        placement_result_free(first);
        placement_result_free(grown);

        /* Two replicas both on c (a spread would never choose that): growing keeps both there. */
        struct placement_prev_entry on_c[] = { { .deployment = "app/D", .node = "c", .count = 2 } };
        struct placement_prev p = { .entries = on_c, .n_entries = 1 };
        grown = compute(nodes, 3, deps, 1, &p);
        ok(count_on(grown, 0, 0) == 1 && count_on(grown, 0, 1) == 1 && count_on(grown, 0, 2) == 2,
           "2 existing replicas on c stay; the 2 new ones go to a and b (got %u/%u/%u)", count_on(grown, 0, 0),
           count_on(grown, 0, 1), count_on(grown, 0, 2));
        placement_result_free(grown);

        /* Shrink: remove from the node holding the most first. */
        struct placement_prev_entry four[] = { { .deployment = "app/D", .node = "a", .count = 1 },
                                               { .deployment = "app/D", .node = "b", .count = 3 } };
        p = (struct placement_prev){ .entries = four, .n_entries = 2 };
        deps[0].replicas = 2;
        struct placement_result *res = compute(nodes, 3, deps, 1, &p);
        ok(count_on(res, 0, 0) == 1 && count_on(res, 0, 1) == 1 && count_on(res, 0, 2) == 0,
           "shrinking a=1,b=3 to 2 removes from b (got %u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        placement_result_free(res);
        deps[0].replicas = 1;
        res = compute(nodes, 3, deps, 1, &p);
        ok(res->deployments[0].placed == 1 && count_on(res, 0, 2) == 0,
           "shrinking 4 -> 1 keeps one of the existing replicas (a=%u b=%u c=%u)", count_on(res, 0, 0),
           count_on(res, 0, 1), count_on(res, 0, 2));
        placement_result_free(res);
        deps[0].replicas = 0;
        res = compute(nodes, 3, deps, 1, &p);
        ok(res->deployments[0].placed == 0 && res->deployments[0].n_slots == 0 && res->deployments[0].pending == 0,
           "shrinking to 0 removes every replica");
        placement_result_free(res);

        /* A running replica keeps its room even when an earlier deployment wants it. */
        struct placement_node tiny[] = { node("a", 2, 8 * GiB, 0) };
        struct placement_deployment two[] = { dep("app/New", 1, 2), dep("app/Old", 1, 2) };
        struct placement_prev_entry old[] = { { .deployment = "app/Old", .node = "a", .count = 1 },
                                              { .deployment = "app/Gone", .node = "a", .count = 5 } };
        p = (struct placement_prev){ .entries = old, .n_entries = 2 };
        res = compute(tiny, 1, two, 2, &p);
        ok(count_on(res, 1, 0) == 1 && res->deployments[0].pending == 1,
           "an existing replica is not displaced by a new one; entries of removed deployments are ignored");
        placement_result_free(res);
}

static void test_dead_node(void) {
        struct placement_node nodes[] = { node("a", 8, 8 * GiB, 0), node("b", 8, 8 * GiB, 0), node("c", 8, 8 * GiB, 0) };
        struct placement_deployment deps[] = { dep("app/D", 6, 1) };
        struct placement_prev_entry prev[] = { { .deployment = "app/D", .node = "a", .count = 2 },
                                               { .deployment = "app/D", .node = "b", .count = 2 },
                                               { .deployment = "app/D", .node = "c", .count = 2 } };
        struct placement_prev p = { .entries = prev, .n_entries = 3 };

        nodes[2].alive = false;
        struct placement_result *res = compute(nodes, 3, deps, 1, &p);
        ok(count_on(res, 0, 0) == 3 && count_on(res, 0, 1) == 3 && count_on(res, 0, 2) == 0,
           "c died: its 2 replicas move to a and b (got %u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        is_int(res->nodes[2].replicas, 0, "the dead node is charged nothing");
        placement_result_free(res);

        /* A node that vanished from the input entirely counts as dead. */
        prev[2].node = "gone";
        nodes[2].alive = true;
        res = compute(nodes, 3, deps, 1, &p);
        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) == 2 && count_on(res, 0, 2) == 2,
           "replicas on an unknown node are placed again (got %u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        placement_result_free(res);

        for (size_t i = 0; i < 3; i++)
                nodes[i].alive = false;
        res = compute(nodes, 3, deps, 1, &p);
        is_reason(res, 0, 6, "no alive nodes");
        placement_result_free(res);
        res = compute(NULL, 0, deps, 1, NULL);
        is_reason(res, 0, 6, "no alive nodes");
        placement_result_free(res);
}

static void test_cpu_fit(void) {
        struct placement_node nodes[] = { node("a", 4, 8 * GiB, 0), node("b", 4, 8 * GiB, 0), node("c", 2.5, 8 * GiB, 0) };
        struct placement_deployment big[] = { dep("app/Big", 3, 64) };
        struct placement_result *res = compute(nodes, 3, big, 1, NULL);
        is_int(res->deployments[0].placed, 0, "a 64-CPU replica fits nowhere");
        is_reason(res, 0, 3, "needs 64 CPUs; the largest alive node offers 4");
        placement_result_free(res);

        /* Ten 0.1 CPU replicas fill a 1 CPU node exactly despite float rounding. */
        struct placement_node one[] = { node("a", 1, 8 * GiB, 0) };
        struct placement_deployment tenth[] = { dep("app/T", 11, 0.1) };
        res = compute(one, 1, tenth, 1, NULL);
        is_int(res->deployments[0].placed, 10, "ten 0.1 CPU replicas fit on 1 CPU");
        is_reason(res, 0, 1, "not enough free CPU: needs 0.1, most free on any node is 0");
        placement_result_free(res);

        struct placement_deployment two[] = { dep("app/X", 3, 2), dep("app/Y", 1, 2) };
        nodes[0].cpus = nodes[1].cpus = 2;
        res = compute(nodes, 3, two, 2, NULL);
        is_int(res->deployments[0].placed, 3, "three 2-CPU replicas fit on 2+2+2.5 CPUs");
        is_reason(res, 1, 1, "not enough free CPU: needs 2, most free on any node is 0.5");
        ok(within_capacity(nodes, 3, two, 2, res), "no node over capacity");
        placement_result_free(res);
}

static void test_memory_custom(void) {
        struct placement_node nodes[] = { node("a", 8, 8 * GiB, 0), node("b", 8, 8 * GiB, 0) };
        struct placement_deployment d[] = { dep("app/M", 5, 1) };
        d[0].memory = 3 * GiB;
        struct placement_result *res = compute(nodes, 2, d, 1, NULL);
        is_int(res->deployments[0].placed, 4, "four 3 GiB replicas fit on two 8 GiB nodes");
        is_reason(res, 0, 1, "not enough free memory: needs 3 GiB, most free on any node is 2 GiB");
        ok(res->nodes[0].memory == 6 * GiB, "node a reports 6 GiB in use");
        placement_result_free(res);

        d[0].memory = 16 * GiB;
        res = compute(nodes, 2, d, 1, NULL);
        is_reason(res, 0, 5, "needs 16 GiB memory; the largest alive node offers 8 GiB");
        placement_result_free(res);

        struct placement_resource accel2[] = { { "accel", 2 } };
        nodes[0].custom = accel2;
        nodes[0].n_custom = 1;
        struct placement_resource want1[] = { { "accel", 1 } }, want3[] = { { "accel", 3 } }, tpu[] = { { "tpu", 1 } };
        d[0] = dep("app/A", 3, 1);
        d[0].custom = want1;
        d[0].n_custom = 1;
        res = compute(nodes, 2, d, 1, NULL);
        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) == 0, "replicas needing 'accel' go only to the node offering it");
        is_reason(res, 0, 1, "not enough free 'accel': needs 1, most free on any node is 0");
        ok(res->nodes[0].custom && res->nodes[0].custom[0] == 2, "node a reports accel=2 in use");
        placement_result_free(res);

        d[0].custom = want3;
        res = compute(nodes, 2, d, 1, NULL);
        is_reason(res, 0, 3, "needs resource 'accel'=3; the largest alive node offers 2");
        placement_result_free(res);

        d[0].custom = tpu;
        res = compute(nodes, 2, d, 1, NULL);
        is_reason(res, 0, 3, "needs resource 'tpu'=1; no alive node offers it");
        placement_result_free(res);

        /* Each resource exists somewhere, but never together. */
        d[0].custom = want1;
        d[0].memory = 0;
        d[0].num_cpus = 8;
        nodes[0].cpus = 4;
        res = compute(nodes, 2, d, 1, NULL);
        is_reason(res, 0, 3, "no single alive node has all of 8 CPUs, 'accel'=1");
        placement_result_free(res);
}

static void test_fractional_gpus(void) {
        struct placement_node nodes[] = { node("g", 16, 64 * GiB, 2) };
        struct placement_deployment d[] = { dep("app/Half", 4, 1) };
        d[0].num_gpus = 0.5;
        struct placement_result *res = compute(nodes, 1, d, 1, NULL);
        ok(strcmp(gpus_of(res, 0), "0 0 1 1") == 0, "4 x 0.5 GPU on 2 GPUs pack as 0 0 1 1 (got %s)", gpus_of(res, 0));
        ok(res->nodes[0].gpus == 2, "node reports 2 GPUs in use");
        placement_result_free(res);

        d[0].replicas = 3;
        d[0].num_gpus = 0.6;
        res = compute(nodes, 1, d, 1, NULL);
        is_int(res->deployments[0].placed, 2, "3 x 0.6 GPU on 2 GPUs: 2 placed");
        is_reason(res, 0, 1, "not enough free GPU: needs 0.6 of one GPU, most free on any GPU is 0.4");
        placement_result_free(res);

        /* Best fit: a 0.3 replica goes to the GPU with 0.3 left, not the empty one. */
        struct placement_deployment two[] = { dep("app/Big", 1, 1), dep("app/Small", 2, 1) };
        two[0].num_gpus = 0.7;
        two[1].num_gpus = 0.3;
        res = compute(nodes, 1, two, 2, NULL);
        ok(strcmp(gpus_of(res, 1), "0 1") == 0, "0.3 GPU replicas fill GPU 0's remaining 0.3 first (got %s)",
           gpus_of(res, 1));
        placement_result_free(res);

        /* Kept GPU replicas keep their GPU. */
        const char *on1[] = { "1" };
        struct placement_prev_entry prev[] = { { .deployment = "app/Half", .node = "g", .count = 1, .gpus = on1 } };
        struct placement_prev p = { .entries = prev, .n_entries = 1 };
        d[0].replicas = 2;
        d[0].num_gpus = 0.5;
        res = compute(nodes, 1, d, 1, &p);
        ok(strcmp(gpus_of(res, 0), "1 1") == 0, "an existing replica on GPU 1 stays; the new one packs beside it (got %s)",
           gpus_of(res, 0));
        placement_result_free(res);
}

static void test_whole_gpus(void) {
        struct placement_node nodes[] = { node("g", 16, 64 * GiB, 4) };
        struct placement_deployment d[] = { dep("app/Frac", 1, 1), dep("app/Two", 1, 1), dep("app/One", 2, 1) };
        d[0].num_gpus = 0.5;
        d[1].num_gpus = 2;
        d[2].num_gpus = 1;
        struct placement_result *res = compute(nodes, 1, d, 3, NULL);
        ok(strcmp(gpus_of(res, 0), "0") == 0, "0.5 GPU takes GPU 0 (got %s)", gpus_of(res, 0));
        ok(strcmp(gpus_of(res, 1), "1,2") == 0, "2 GPUs take two completely free GPUs (got %s)", gpus_of(res, 1));
        ok(strcmp(gpus_of(res, 2), "3") == 0, "1 GPU takes the last free GPU, not the half-used one (got %s)",
           gpus_of(res, 2));
        is_reason(res, 2, 1, "needs 1 GPU; no alive node has a free GPU (1 alive node, 4 GPUs, all in use)");
        placement_result_free(res);

        d[1].num_gpus = 8;
        res = compute(nodes, 1, d, 3, NULL);
        is_reason(res, 1, 1, "needs 8 GPUs; the largest alive node has 4");
        placement_result_free(res);

        struct placement_node cpu_only[] = { node("a", 4, 8 * GiB, 0), node("b", 4, 8 * GiB, 0), node("c", 4, 8 * GiB, 0) };
        res = compute(cpu_only, 3, d + 2, 1, NULL);
        is_reason(res, 0, 2, "needs 1 GPU; no alive node has a GPU (3 alive nodes, 0 GPUs)");
        placement_result_free(res);

        /* A stale GPU string (the node came back with fewer GPUs) is placed again. */
        const char *stale[] = { "7" };
        struct placement_prev_entry prev[] = { { .deployment = "app/One", .node = "g", .count = 1, .gpus = stale } };
        struct placement_prev p = { .entries = prev, .n_entries = 1 };
        res = compute(nodes, 1, d + 2, 1, &p);
        ok(strcmp(gpus_of(res, 0), "0 1") == 0, "a replica on a GPU that no longer exists gets a real one (got %s)",
           gpus_of(res, 0));
        placement_result_free(res);
}

static void test_max_per_node(void) {
        struct placement_node nodes[] = { node("a", 8, 8 * GiB, 0), node("b", 8, 8 * GiB, 0), node("c", 8, 8 * GiB, 0) };
        struct placement_deployment d[] = { dep("app/D", 5, 1) };
        d[0].max_per_node = 1;
        struct placement_result *res = compute(nodes, 3, d, 1, NULL);
        ok(count_on(res, 0, 0) == 1 && count_on(res, 0, 1) == 1 && count_on(res, 0, 2) == 1, "one replica per node");
        is_reason(res, 0, 2, "max_replicas_per_node 1 reached on all 3 alive nodes");
        placement_result_free(res);

        /* Lowering the limit trims existing replicas too. */
        struct placement_prev_entry prev[] = { { .deployment = "app/D", .node = "a", .count = 3 } };
        struct placement_prev p = { .entries = prev, .n_entries = 1 };
        d[0].replicas = 3;
        res = compute(nodes, 3, d, 1, &p);
        ok(count_on(res, 0, 0) == 1 && count_on(res, 0, 1) == 1 && count_on(res, 0, 2) == 1,
           "3 replicas on a with max 1 become one per node (got %u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        placement_result_free(res);
}

/* Rule 6: elastic nodes take replicas only when the others cannot, and lose them first. */
static void test_elastic(void) {
        struct placement_node nodes[] = { node("fixed", 2, 8 * GiB, 0), node("burst-1", 2, 8 * GiB, 0),
                                          node("burst-2", 2, 8 * GiB, 0) };
        nodes[1].elastic = nodes[2].elastic = true;
        struct placement_deployment d[] = { dep("app/D", 2, 1) };
        struct placement_result *res = compute(nodes, 3, d, 1, NULL);
        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) == 0 && count_on(res, 0, 2) == 0,
           "two replicas that fit on the fixed node go there, not to the emptier elastic nodes");
        placement_result_free(res);

        d[0].replicas = 4;
        res = compute(nodes, 3, d, 1, NULL);
        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) + count_on(res, 0, 2) == 2,
           "the overflow goes to elastic nodes (%u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1), count_on(res, 0, 2));
        placement_result_free(res);

        /* Shrinking from 4 (2 fixed, 1 + 1 elastic) to 2 empties the elastic nodes. */
        struct placement_prev_entry prev[] = { { .deployment = "app/D", .node = "fixed", .count = 2 },
                                               { .deployment = "app/D", .node = "burst-1", .count = 1 },
                                               { .deployment = "app/D", .node = "burst-2", .count = 1 } };
        struct placement_prev p = { .entries = prev, .n_entries = 3 };
        d[0].replicas = 2;
        res = compute(nodes, 3, d, 1, &p);
        ok(count_on(res, 0, 0) == 2 && count_on(res, 0, 1) == 0 && count_on(res, 0, 2) == 0,
           "a shrinking deployment leaves the elastic nodes first (%u/%u/%u)", count_on(res, 0, 0), count_on(res, 0, 1),
           count_on(res, 0, 2));
        ok(res->deployments[0].placed == 2 && res->deployments[0].pending == 0, "and keeps exactly 2, none pending");
        placement_result_free(res);

        /* Past the elastic nodes, the fixed one gives up its replicas too. */
        d[0].replicas = 1;
        res = compute(nodes, 3, d, 1, &p);
        ok(count_on(res, 0, 0) == 1 && count_on(res, 0, 1) == 0 && count_on(res, 0, 2) == 0 &&
                   res->deployments[0].placed == 1 && res->deployments[0].pending == 0,
           "shrinking from 4 to 1 keeps one on the fixed node (%u/%u/%u, pending %u)", count_on(res, 0, 0),
           count_on(res, 0, 1), count_on(res, 0, 2), res->deployments[0].pending);
        placement_result_free(res);
}

static void test_invalid(void) {
        struct placement_node nodes[] = { node("a", 8, 8 * GiB, 2), node("a", 8, 8 * GiB, 0) };
        struct placement_deployment d[] = { dep("app/D", 1, 1) };
        struct placement_input in = { .nodes = nodes, .n_nodes = 2, .deployments = d, .n_deployments = 1 };
        struct placement_result *res = NULL;

        is_int(placement_compute(&in, NULL, &res), -EINVAL, "duplicate node names are rejected");
        in.n_nodes = 1;
        d[0].num_gpus = 1.5;
        is_int(placement_compute(&in, NULL, &res), -EINVAL, "num_gpus 1.5 is rejected");
        d[0].num_gpus = 0;
        d[0].num_cpus = -1;
        is_int(placement_compute(&in, NULL, &res), -EINVAL, "negative num_cpus is rejected");
        ok(res == NULL, "nothing is returned on error");
        placement_result_free(NULL);
}

static double ms_since(const struct timespec *t0) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void test_scale(void) {
        enum { N_NODES = 1000, N_DEPS = 500, PER = 20 };
        static struct placement_node nodes[N_NODES];
        static struct placement_deployment deps[N_DEPS];
        static char node_names[N_NODES][16], keys[N_DEPS][24];
        struct placement_result *res, *again;
        struct placement_prev *prev = NULL;
        struct timespec t0;

        for (size_t i = 0; i < N_NODES; i++) {
                snprintf(node_names[i], sizeof(node_names[i]), "node-%zu", i);
                nodes[i] = node(node_names[i], 8 + (double)(i % 3) * 4, 64 * GiB, i % 4 == 0 ? 4 : 0);
        }
        for (size_t i = 0; i < N_DEPS; i++) {
                snprintf(keys[i], sizeof(keys[i]), "app%zu/D", i);
                deps[i] = dep(keys[i], PER, i % 5 == 0 ? 0.5 : 1);
                deps[i].memory = GiB;
                if (i % 25 == 0)
                        deps[i].num_gpus = 0.25;
                if (i % 50 == 1)
                        deps[i].max_per_node = 1;
        }
        struct placement_input in = { .nodes = nodes, .n_nodes = N_NODES, .deployments = deps, .n_deployments = N_DEPS };

        clock_gettime(CLOCK_MONOTONIC, &t0);
        res = compute(nodes, N_NODES, deps, N_DEPS, NULL);
        printf("# placed %d replicas on %d nodes in %.1f ms\n", N_DEPS * PER, N_NODES, ms_since(&t0));

        unsigned placed = 0, pending = 0;
        for (size_t i = 0; i < N_DEPS; i++) {
                placed += res->deployments[i].placed;
                pending += res->deployments[i].pending;
        }
        is_int(placed, N_DEPS * PER, "every one of 10000 replicas is placed");
        is_int(pending, 0, "nothing pending at scale");
        ok(within_capacity(nodes, N_NODES, deps, N_DEPS, res), "no node over CPU, memory or GPU capacity");

        /* The next cycle with a tenth of the nodes dead: survivors stay, the rest move. */
        is_int(placement_result_to_prev(&in, res, &prev), 0, "result converts to prev at scale");
        for (size_t i = 0; i < N_NODES; i += 10)
                nodes[i].alive = false;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        again = compute(nodes, N_NODES, deps, N_DEPS, prev);
        printf("# re-placed after 100 node deaths in %.1f ms\n", ms_since(&t0));
        bool stayed = true;
        placed = 0;
        for (size_t di = 0; di < N_DEPS; di++) {
                placed += again->deployments[di].placed;
                for (size_t k = 0; k < res->deployments[di].n_slots; k++) {
                        size_t n = res->deployments[di].slots[k].node;
                        if (nodes[n].alive && count_on(again, di, n) < res->deployments[di].slots[k].count)
                                stayed = false;
                }
        }
        ok(stayed, "replicas on surviving nodes stay put");
        is_int(placed, N_DEPS * PER, "all 10000 replicas are placed again after 100 nodes die");
        ok(within_capacity(nodes, N_NODES, deps, N_DEPS, again), "still no node over capacity");
        free(prev);
        placement_result_free(again);
        placement_result_free(res);
}

/* The cluster bench's shape: 100 deployments of 1,000 replicas on 10,000 nodes. Placing one
 * replica used to scan every node (10^9 steps here); now it is a heap. */
static void test_large_scale(void) {
        enum { N_NODES = 10000, N_DEPS = 100, PER = 1000 };
        static struct placement_node nodes[N_NODES];
        static struct placement_deployment deps[N_DEPS];
        static char node_names[N_NODES][16], keys[N_DEPS][24];
        struct placement_result *res;
        struct timespec t0;

        for (size_t i = 0; i < N_NODES; i++) {
                snprintf(node_names[i], sizeof(node_names[i]), "node-%zu", i);
                nodes[i] = node(node_names[i], 16, 64 * GiB, 0);
        }
        for (size_t i = 0; i < N_DEPS; i++) {
                snprintf(keys[i], sizeof(keys[i]), "app%zu/D", i);
                deps[i] = dep(keys[i], PER, 0.1);
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        res = compute(nodes, N_NODES, deps, N_DEPS, NULL);
        printf("# placed %d replicas on %d nodes in %.1f ms\n", N_DEPS * PER, N_NODES, ms_since(&t0));
        unsigned placed = 0, most = 0;
        for (size_t i = 0; i < N_DEPS; i++) {
                placed += res->deployments[i].placed;
                for (size_t k = 0; k < res->deployments[i].n_slots; k++)
                        if (res->deployments[i].slots[k].count > most)
                                most = res->deployments[i].slots[k].count;
        }
        is_int(placed, N_DEPS * PER, "every one of 100000 replicas is placed on 10000 nodes");
        is_int(most, 1, "spread: no node holds two replicas of one deployment");
        ok(within_capacity(nodes, N_NODES, deps, N_DEPS, res), "no node over capacity at 10000 nodes");
        placement_result_free(res);
}

int main(void) {
        test_spread();
        test_incremental();
        test_dead_node();
        test_cpu_fit();
        test_memory_custom();
        test_fractional_gpus();
        test_whole_gpus();
        test_max_per_node();
        test_elastic();
        test_invalid();
        test_scale();
        test_large_scale();
        return tap_done();
}
