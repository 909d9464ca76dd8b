/* The cluster autoscaler's decisions (nodescale.h) from scripted inputs: which nodes launch for
 * pending replicas and in which group, when a burst of demand launches, the limits on launches,
 * min/max per group, idle drains, boot timeouts and rolling replacement of outdated nodes. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "head/nodescale.h"
#include "tap.h"

#define GiB (1024ull * 1024 * 1024)
#define SEC 1000000000ull

static struct ns_group group(const char *name, double cpus, double gpus, int min, int max, double cost) {
        return (struct ns_group){ .name = name, .shape = { .cpus = cpus, .memory = 16 * GiB, .gpus = gpus },
                                  .min_nodes = min, .max_nodes = max, .cost = cost, .idle_timeout_s = 60,
                                  .boot_timeout_s = 300, .max_surge = 1, .launchable = true, .config_hash = 1 };
}

/* An ALIVE node of group g with `cpus` free. */
static struct ns_node alive(const char *name, int g, double cpus, unsigned replicas) {
        return (struct ns_node){ .name = name, .group = g, .state = NS_ALIVE,
                                 .free = { .cpus = cpus, .memory = 16 * GiB }, .replicas = replicas,
                                 .config_hash = 1, .replaces = -1 };
}

static struct ns_node launching(const char *name, int g, uint64_t launched_ns) {
        return (struct ns_node){ .name = name, .group = g, .state = NS_LAUNCHING, .launched_ns = launched_ns,
                                 .config_hash = 1, .replaces = -1 };
}

static struct ns_demand demand(const char *key, double cpus, double gpus, unsigned count) {
        return (struct ns_demand){ .key = key, .cpus = cpus, .gpus = gpus, .memory = GiB, .count = count };
}

static struct ns_options opts(void) {
        return (struct ns_options){ .mode = NS_DEFAULT, .max_concurrent_launches = 10 };
}

struct pass {
        int r;
        struct ns_action *acts;
        size_t n;
        struct ns_summary sum;
};

static struct pass run_mem(const struct ns_group *g, size_t ng, const struct ns_node *nodes, size_t nn,
                           const struct ns_demand *d, size_t nd, struct ns_options opt, uint64_t now,
                           struct ns_memory *mem) {
        struct ns_input in = { .groups = g, .n_groups = ng, .nodes = nodes, .n_nodes = nn, .demand = d, .n_demand = nd,
                               .opt = opt, .now_ns = now };
        struct pass p = { 0 };
        p.r = nodescale_decide(&in, mem, &p.acts, &p.n, &p.sum);
        return p;
}

static struct pass run(const struct ns_group *g, size_t ng, const struct ns_node *nodes, size_t nn,
                       const struct ns_demand *d, size_t nd, struct ns_options opt, uint64_t now) {
        struct ns_memory mem = { 0 };
        return run_mem(g, ng, nodes, nn, d, nd, opt, now, &mem);
}

static void done(struct pass *p) {
        free(p->acts);
        ns_summary_done(&p->sum);
}

/* Launches of group g (-1: any). */
static int launches(const struct pass *p, int g) {
        int n = 0;
        for (size_t i = 0; i < p->n; i++)
                if (p->acts[i].kind == NS_LAUNCH && (g < 0 || p->acts[i].group == g))
                        n++;
        return n;
}

static int count_kind(const struct pass *p, enum ns_action_kind k) {
        int n = 0;
        for (size_t i = 0; i < p->n; i++)
                n += p->acts[i].kind == k;
        return n;
}

static const struct ns_action *action_on(const struct pass *p, int node) {
        for (size_t i = 0; i < p->n; i++)
                if (p->acts[i].kind != NS_LAUNCH && p->acts[i].node == node)
                        return &p->acts[i];
        return NULL;
}

static bool reason_has(const struct ns_action *a, const char *want) {
        bool good = a && strstr(a->reason, want);
        if (!good)
                printf("#   reason: %s (want \"%s\")\n", a ? a->reason : "(no action)", want);
        return good;
}

static void test_packing(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 10, 1) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 2) };

        /* Free room on an alive node (placement ran on older data): nothing to launch. */
        struct ns_node roomy[] = { alive("w1", 0, 4, 1) };
        struct pass p = run(g, 1, roomy, 1, d, 1, opts(), 100 * SEC);
        is_int(p.r, 0, "decide succeeds");
        is_int(launches(&p, -1), 0, "2 replicas fitting an alive node's free CPUs launch nothing");
        is_int(p.sum.pending, 2, "both count as pending");
        is_int(p.sum.wanted[0], 0, "and want no new node");
        done(&p);

        /* A cordoned node's room is not used. */
        roomy[0].cordoned = true;
        p = run(g, 1, roomy, 1, d, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 1, "a cordoned node's free room does not count: one launch");
        done(&p);

        /* A node already launching takes the demand. */
        struct ns_node coming[] = { launching("w2", 0, 90 * SEC) };
        struct ns_demand three[] = { demand("app/A", 1, 0, 3) };
        p = run(g, 1, coming, 1, three, 1, opts(), 100 * SEC);
        is_int(launches(&p, -1), 0, "3 replicas fit the 4 CPUs of a launching node: no second launch");
        is_int(p.sum.wanted[0], 1, "the group wants that one launching node");
        done(&p);

        /* Several replicas share one new node; the fifth needs a second. */
        struct ns_demand four[] = { demand("app/A", 1, 0, 4) };
        p = run(g, 1, NULL, 0, four, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 1, "4 one-CPU replicas launch one 4-CPU node");
        ok(p.n == 1 && reason_has(&p.acts[0], "4 pending replicas of app/A"), "the launch says what it is for");
        done(&p);
        four[0].count = 5;
        p = run(g, 1, NULL, 0, four, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 2, "5 replicas launch two nodes");
        is_int(p.sum.wanted[0], 2, "and the group wants two");
        done(&p);

        /* Ten 0.1 CPU replicas fill a 1 CPU node exactly. */
        struct ns_group one[] = { group("tiny", 1, 0, 0, 10, 1) };
        struct ns_demand tenth[] = { demand("app/T", 0.1, 0, 10) };
        tenth[0].memory = 0;
        p = run(one, 1, NULL, 0, tenth, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 1, "ten 0.1-CPU replicas fit one 1-CPU node");
        done(&p);

        /* First-fit decreasing: the 3-CPU replicas are packed first, the small ones fill the gaps. */
        struct ns_demand mix[] = { demand("app/Small", 1, 0, 2), demand("app/Big", 3, 0, 2) };
        p = run(g, 1, NULL, 0, mix, 2, opts(), 100 * SEC);
        is_int(launches(&p, 0), 2, "2x1 CPU + 2x3 CPU on 4-CPU nodes: two nodes, not three");
        done(&p);
}

static void test_group_choice(void) {
        /* A cheap group too small for the replica loses to a dearer one that fits. */
        struct ns_group g[] = { group("small", 2, 0, 0, 10, 0.1), group("big", 8, 0, 0, 10, 1.0) };
        struct ns_demand big[] = { demand("app/B", 4, 0, 1) };
        struct pass p = run(g, 2, NULL, 0, big, 1, opts(), 100 * SEC);
        ok(launches(&p, 1) == 1 && launches(&p, 0) == 0, "a 4-CPU replica launches the dearer 8-CPU group");
        done(&p);
        struct ns_demand small[] = { demand("app/S", 1, 0, 1) };
        p = run(g, 2, NULL, 0, small, 1, opts(), 100 * SEC);
        ok(launches(&p, 0) == 1 && launches(&p, 1) == 0, "a 1-CPU replica launches the cheaper group");
        done(&p);

        /* A group without a cost comes after one with a cost. */
        struct ns_group nocost[] = { group("unpriced", 2, 0, 0, 10, -1), group("priced", 8, 0, 0, 10, 5) };
        p = run(nocost, 2, NULL, 0, small, 1, opts(), 100 * SEC);
        ok(launches(&p, 1) == 1, "a priced group wins over an unpriced one");
        done(&p);

        /* Equal cost: the smaller shape; all equal: input order. */
        struct ns_group tie[] = { group("large", 8, 0, 0, 10, 1), group("medium", 4, 0, 0, 10, 1),
                                  group("medium2", 4, 0, 0, 10, 1) };
        p = run(tie, 3, NULL, 0, small, 1, opts(), 100 * SEC);
        ok(launches(&p, 1) == 1 && p.n == 1, "equal cost: the smaller shape wins, then the earlier group");
        done(&p);

        /* GPUs and custom resources decide fit too. */
        struct placement_resource accel[] = { { "accel", 2 } }, need[] = { { "accel", 1 } };
        struct ns_group gg[] = { group("cpu", 8, 0, 0, 10, 0.1), group("gpu", 8, 1, 0, 10, 3),
                                 group("acc", 8, 0, 0, 10, 2) };
        gg[2].shape.custom = accel;
        gg[2].shape.n_custom = 1;
        struct ns_demand gd[] = { demand("app/G", 1, 0.5, 1) };
        p = run(gg, 3, NULL, 0, gd, 1, opts(), 100 * SEC);
        ok(launches(&p, 1) == 1 && p.n == 1, "a GPU replica launches the GPU group");
        done(&p);
        struct ns_demand cd[] = { demand("app/C", 1, 0, 3) };
        cd[0].custom = need;
        cd[0].n_custom = 1;
        p = run(gg, 3, NULL, 0, cd, 1, opts(), 100 * SEC);
        is_int(launches(&p, 2), 2, "3 replicas needing accel=1 launch two nodes of the group with accel=2");
        done(&p);
}

static void test_unschedulable(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 3, 1) };
        struct ns_demand d[] = { demand("app/D", 8, 0, 2) };
        struct pass p = run(g, 1, NULL, 0, d, 1, opts(), 100 * SEC);
        is_int(p.sum.unschedulable, 2, "an 8-CPU replica on 4-CPU groups is unschedulable");
        ok(strcmp(p.sum.unschedulable_reason, "app/D needs 8 CPUs; the largest group shape (cpu) has 4") == 0,
           "with a reason: %s", p.sum.unschedulable_reason);
        is_int(launches(&p, -1), 0, "and launches nothing");
        done(&p);

        struct ns_demand gpu[] = { demand("app/G", 1, 1, 1) };
        p = run(g, 1, NULL, 0, gpu, 1, opts(), 100 * SEC);
        ok(p.sum.unschedulable == 1 && strstr(p.sum.unschedulable_reason, "needs 1 GPUs"),
           "a GPU replica with no GPU group: %s", p.sum.unschedulable_reason);
        done(&p);

        /* max_nodes holds: 3 full nodes, room for none. */
        struct ns_node full[] = { alive("w1", 0, 0, 4), alive("w2", 0, 0, 4), alive("w3", 0, 0, 4) };
        struct ns_demand one[] = { demand("app/A", 1, 0, 1) };
        p = run(g, 1, full, 3, one, 1, opts(), 100 * SEC);
        is_int(launches(&p, -1), 0, "a group at max_nodes launches nothing");
        ok(p.sum.unschedulable == 1 && strstr(p.sum.unschedulable_reason, "group cpu is at max_nodes (3)"),
           "and says so: %s", p.sum.unschedulable_reason);
        done(&p);

        /* One below max: one launch, the rest unschedulable. */
        struct ns_demand many[] = { demand("app/A", 1, 0, 9) };
        p = run(g, 1, full, 2, many, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 1, "one node below max_nodes: exactly one launch for 9 replicas");
        is_int(p.sum.unschedulable, 5, "the 5 replicas beyond it are unschedulable");
        done(&p);

        /* A fitting group without a provider cannot help. */
        g[0].launchable = false;
        p = run(g, 1, NULL, 0, one, 1, opts(), 100 * SEC);
        ok(launches(&p, -1) == 0 && p.sum.unschedulable == 1 && strstr(p.sum.unschedulable_reason, "no provider"),
           "a group without a provider launches nothing: %s", p.sum.unschedulable_reason);
        done(&p);
        g[0].launchable = true;

        /* Backoff: pending, not unschedulable, no launch. */
        g[0].backoff_until_ns = 200 * SEC;
        p = run(g, 1, NULL, 0, one, 1, opts(), 100 * SEC);
        ok(launches(&p, -1) == 0 && p.sum.unschedulable == 0 && p.sum.pending == 1,
           "a group in backoff launches nothing and the replica waits (pending, not unschedulable)");
        done(&p);
}

static void test_max_per_node(void) {
        struct ns_group g[] = { group("cpu", 8, 0, 0, 10, 1) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 4) };
        d[0].max_per_node = 1;
        struct pass p = run(g, 1, NULL, 0, d, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 4, "max_per_node 1: 4 replicas need 4 nodes even though one has room");
        done(&p);

        struct ns_node roomy[] = { alive("w1", 0, 8, 1) };
        p = run(g, 1, roomy, 1, d, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 3, "an alive node with room takes one of them; 3 launches");
        done(&p);
}

static void test_batching(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 10, 1) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 2) };
        struct ns_options o = opts();
        struct ns_memory mem = { 0 };
        o.batch_idle_ns = 1 * SEC;
        o.batch_max_ns = 10 * SEC;

        struct pass p = run_mem(g, 1, NULL, 0, d, 1, o, 100 * SEC, &mem);
        ok(launches(&p, -1) == 0 && p.sum.wanted[0] == 1, "new demand waits for batch_idle (wanted 1, no launch)");
        done(&p);
        p = run_mem(g, 1, NULL, 0, d, 1, o, 100 * SEC + SEC / 2, &mem);
        is_int(launches(&p, -1), 0, "still waiting half a second later");
        done(&p);
        p = run_mem(g, 1, NULL, 0, d, 1, o, 101 * SEC, &mem);
        is_int(launches(&p, 0), 1, "unchanged for batch_idle: it launches");
        done(&p);

        /* Demand that keeps changing launches at batch_max. */
        mem = (struct ns_memory){ 0 };
        int first = -1;
        for (unsigned t = 0; t <= 12 && first < 0; t++) {
                d[0].count = 1 + t;
                p = run_mem(g, 1, NULL, 0, d, 1, o, (200 + t) * SEC, &mem);
                if (launches(&p, -1) > 0)
                        first = (int)t;
                done(&p);
        }
        is_int(first, 10, "demand changing every second first launches batch_max (10 s) after it appeared");

        /* Demand gone resets the window. */
        p = run_mem(g, 1, NULL, 0, NULL, 0, o, 300 * SEC, &mem);
        ok(mem.demand_sig == 0 && launches(&p, -1) == 0, "no demand: the window is reset");
        done(&p);
        d[0].count = 2;
        p = run_mem(g, 1, NULL, 0, d, 1, o, 301 * SEC, &mem);
        is_int(launches(&p, -1), 0, "demand coming back waits again");
        done(&p);

        /* Aggressive does not wait. */
        o.mode = NS_AGGRESSIVE;
        mem = (struct ns_memory){ 0 };
        p = run_mem(g, 1, NULL, 0, d, 1, o, 400 * SEC, &mem);
        is_int(launches(&p, 0), 1, "aggressive launches at once");
        done(&p);

        /* min_nodes launches never wait. */
        o.mode = NS_DEFAULT;
        g[0].min_nodes = 1;
        mem = (struct ns_memory){ 0 };
        d[0].count = 8;
        p = run_mem(g, 1, NULL, 0, d, 1, o, 500 * SEC, &mem);
        is_int(launches(&p, 0), 1, "while demand waits for its batch, min_nodes still launches its node");
        done(&p);
}

static void test_limits(void) {
        struct ns_group g[] = { group("cpu", 1, 0, 0, 100, 1), group("other", 1, 0, 0, 100, 2) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 5) };
        struct ns_options o = opts();
        o.max_concurrent_launches = 2;

        struct pass p = run(g, 1, NULL, 0, d, 1, o, 100 * SEC);
        is_int(launches(&p, -1), 2, "5 nodes wanted, max_concurrent_launches 2: 2 launches");
        is_int(p.sum.wanted[0], 5, "the summary still wants 5");
        done(&p);

        struct ns_node coming[] = { launching("w1", 0, 90 * SEC) };
        p = run(g, 1, coming, 1, d, 1, o, 100 * SEC);
        is_int(launches(&p, -1), 1, "one node already launching leaves room for one more");
        done(&p);

        o.mode = NS_CONSERVATIVE;
        o.max_concurrent_launches = 10;
        p = run(g, 1, NULL, 0, d, 1, o, 100 * SEC);
        is_int(launches(&p, -1), 1, "conservative: one launch per group at a time");
        done(&p);
        p = run(g, 1, coming, 1, d, 1, o, 100 * SEC);
        is_int(launches(&p, -1), 0, "conservative: none while the group has a node launching");
        done(&p);

        /* Conservative still launches in another group. */
        struct ns_demand two[] = { demand("app/A", 1, 0, 5) };
        g[0].max_nodes = 2; /* 1 launching + 1 new: the rest spills to "other" */
        p = run(g, 2, coming, 1, two, 1, o, 100 * SEC);
        ok(launches(&p, 0) == 0 && launches(&p, 1) == 1, "conservative: the other group launches its one");
        done(&p);
}

static void test_min_nodes(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 1, 5, 1) };
        struct pass p = run(g, 1, NULL, 0, NULL, 0, opts(), 100 * SEC);
        ok(launches(&p, 0) == 1 && reason_has(&p.acts[0], "group cpu has 0 nodes, min_nodes is 1"),
           "min_nodes 1 with no nodes launches one");
        done(&p);

        g[0].min_nodes = 3;
        struct ns_node one[] = { alive("w1", 0, 4, 0) };
        p = run(g, 1, one, 1, NULL, 0, opts(), 100 * SEC);
        ok(launches(&p, 0) == 2 && reason_has(&p.acts[1], "group cpu has 2 nodes, min_nodes is 3"),
           "min_nodes 3 with one node launches two more");
        done(&p);

        g[0].backoff_until_ns = 200 * SEC;
        p = run(g, 1, NULL, 0, NULL, 0, opts(), 100 * SEC);
        is_int(launches(&p, -1), 0, "a group in backoff launches nothing for min_nodes");
        done(&p);
        g[0].backoff_until_ns = 0;
        g[0].launchable = false;
        p = run(g, 1, NULL, 0, NULL, 0, opts(), 100 * SEC);
        is_int(launches(&p, -1), 0, "a group without a provider launches nothing");
        done(&p);

        /* Demand packs onto the nodes min_nodes launches before asking for more. */
        g[0].launchable = true;
        g[0].min_nodes = 1;
        struct ns_demand d[] = { demand("app/A", 1, 0, 3) };
        p = run(g, 1, NULL, 0, d, 1, opts(), 100 * SEC);
        is_int(launches(&p, 0), 1, "3 small replicas ride on the min_nodes node: one launch in all");
        done(&p);
}

static void test_idle(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 5, 1) };
        struct ns_node n[] = { alive("w1", 0, 4, 0) };
        n[0].idle_since_ns = 1000 * SEC;

        struct pass p = run(g, 1, n, 1, NULL, 0, opts(), 1059 * SEC);
        is_int(p.n, 0, "idle 59 s of 60: kept");
        done(&p);
        p = run(g, 1, n, 1, NULL, 0, opts(), 1061 * SEC);
        ok(count_kind(&p, NS_DRAIN) == 1 && p.acts[0].node == 0 &&
           reason_has(&p.acts[0], "idle for 61 s (idle_timeout_s 60)"), "idle 61 s: drained");
        done(&p);

        /* Demand that fits it keeps it. */
        struct ns_demand d[] = { demand("app/A", 1, 0, 1) };
        p = run(g, 1, n, 1, d, 1, opts(), 1061 * SEC);
        is_int(p.n, 0, "an idle node that takes pending demand is not drained (and nothing launches)");
        done(&p);

        /* Nodes with replicas, cordoned ones and unmanaged ones stay. */
        struct ns_node others[] = { alive("busy", 0, 2, 1), alive("cordoned", 0, 4, 0), alive("mine", -1, 4, 0) };
        others[0].idle_since_ns = others[1].idle_since_ns = others[2].idle_since_ns = 1 * SEC;
        others[1].cordoned = true;
        p = run(g, 1, others, 3, NULL, 0, opts(), 1061 * SEC);
        is_int(p.n, 0, "a node with replicas, a cordoned node and an unmanaged node are never drained for idleness");
        done(&p);

        /* Unmanaged free capacity serves demand. */
        p = run(g, 1, &others[2], 1, d, 1, opts(), 1061 * SEC);
        is_int(launches(&p, -1), 0, "an unmanaged node's free room takes pending demand");
        done(&p);

        /* min_nodes: only the oldest idle goes. */
        g[0].min_nodes = 1;
        struct ns_node two[] = { alive("young", 0, 4, 0), alive("old", 0, 4, 0) };
        two[0].idle_since_ns = 900 * SEC;
        two[1].idle_since_ns = 800 * SEC;
        p = run(g, 1, two, 2, NULL, 0, opts(), 1061 * SEC);
        ok(p.n == 1 && p.acts[0].kind == NS_DRAIN && p.acts[0].node == 1,
           "two idle nodes with min_nodes 1: only the oldest idle is drained");
        done(&p);
        p = run(g, 1, two, 1, NULL, 0, opts(), 1061 * SEC);
        is_int(p.n, 0, "the last node of a min_nodes 1 group is kept");
        done(&p);
}

static void test_boot_timeout(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 5, 1) };
        struct ns_node n[] = { launching("slow", 0, 1000 * SEC) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 1) };

        struct pass p = run(g, 1, n, 1, d, 1, opts(), 1299 * SEC);
        is_int(p.n, 0, "launching 299 s of 300: waited for, and it takes the demand");
        done(&p);
        n[0].state = NS_JOINING;
        p = run(g, 1, n, 1, d, 1, opts(), 1301 * SEC);
        ok(p.n == 2 && p.acts[0].kind == NS_DELETE && p.acts[0].node == 0 &&
           reason_has(&p.acts[0], "did not join within 300 s"), "301 s without joining: deleted first");
        ok(p.n == 2 && p.acts[1].kind == NS_LAUNCH, "and the demand it held launches a new node after the delete");
        done(&p);
}

static void test_replacement(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 3, 1) };
        g[0].config_hash = 2;
        struct ns_node n[] = { alive("a", 0, 0, 2), alive("b", 0, 0, 2), alive("c", 0, 0, 2), { 0 }, { 0 } };
        n[0].launched_ns = 30 * SEC;
        n[1].launched_ns = 10 * SEC;
        n[2].launched_ns = 20 * SEC;

        struct pass p = run(g, 1, n, 3, NULL, 0, opts(), 100 * SEC);
        ok(p.n == 1 && p.acts[0].kind == NS_LAUNCH && p.acts[0].replaces == 1,
           "max_surge 1: one replacement, for the oldest outdated node (b), though the group is at max_nodes");
        done(&p);

        g[0].max_surge = 2;
        p = run(g, 1, n, 3, NULL, 0, opts(), 100 * SEC);
        ok(p.n == 2 && p.acts[0].replaces == 1 && p.acts[1].replaces == 2, "max_surge 2: b and c at once");
        done(&p);
        g[0].max_surge = 1;

        /* The replacement launching: nothing more. */
        n[3] = launching("r1", 0, 90 * SEC);
        n[3].config_hash = 2;
        n[3].replaces = 1;
        p = run(g, 1, n, 4, NULL, 0, opts(), 100 * SEC);
        is_int(p.n, 0, "while b's replacement launches, nothing else is replaced");
        done(&p);

        /* Joined: drain b. */
        n[3].state = NS_ALIVE;
        n[3].free.cpus = 4;
        p = run(g, 1, n, 4, NULL, 0, opts(), 100 * SEC);
        ok(p.n == 1 && p.acts[0].kind == NS_DRAIN && p.acts[0].node == 1 &&
           reason_has(&p.acts[0], "replaced by r1 (group cpu's config changed)"), "the replacement alive: b drains");
        done(&p);

        /* Demand does not land on b, which is about to drain, though it has room. */
        struct ns_demand d[] = { demand("app/A", 1, 0, 2) };
        n[1].free.cpus = 4;
        n[3].free.cpus = 0;
        g[0].max_nodes = 4;
        p = run(g, 1, n, 4, d, 1, opts(), 100 * SEC);
        ok(launches(&p, 0) == 1 && count_kind(&p, NS_DRAIN) == 1 && action_on(&p, 1) != NULL,
           "the replaced node's free room is not counted on (a launch), and it still drains");
        done(&p);
        g[0].max_nodes = 3;
        n[1].free.cpus = 0;
        n[3].free.cpus = 4;

        /* b draining: still in flight. */
        n[1].state = NS_DRAINING;
        p = run(g, 1, n, 4, NULL, 0, opts(), 100 * SEC);
        is_int(p.n, 0, "while b drains, the next replacement waits");
        done(&p);

        /* b deleting: the next one (c, launched at 20 s) starts. */
        n[1].state = NS_DELETING;
        p = run(g, 1, n, 4, NULL, 0, opts(), 100 * SEC);
        ok(p.n == 1 && p.acts[0].kind == NS_LAUNCH && p.acts[0].replaces == 2,
           "b deleting: c's replacement launches");
        done(&p);

        /* The replacement idle while b is still there is not drained as idle. */
        n[1].state = NS_ALIVE;
        n[3].idle_since_ns = 1 * SEC;
        p = run(g, 1, n, 4, NULL, 0, opts(), 1000 * SEC);
        ok(p.n == 1 && p.acts[0].node == 1, "an idle replacement is kept while its outdated node exists");
        done(&p);

        /* An outdated idle node that has a live replacement gets one drain, not two. */
        n[1].replicas = 0;
        n[1].free.cpus = 4;
        n[1].idle_since_ns = 1 * SEC;
        n[3].idle_since_ns = 0;
        p = run(g, 1, n, 4, NULL, 0, opts(), 1000 * SEC);
        ok(count_kind(&p, NS_DRAIN) == 1 && action_on(&p, 1) != NULL, "one drain for b, idle and replaced at once");
        done(&p);

        /* Replacements count toward max_concurrent_launches. */
        struct ns_options o = opts();
        o.max_concurrent_launches = 1;
        struct ns_node busy[] = { alive("a", 0, 0, 2), launching("x", 0, 90 * SEC) };
        p = run(g, 1, busy, 2, NULL, 0, o, 100 * SEC);
        is_int(p.n, 0, "no replacement while max_concurrent_launches is used up");
        done(&p);
}

static void test_order(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 10, 1) };
        struct ns_node n[] = { alive("idle", 0, 4, 0), launching("late", 0, 0) };
        n[0].idle_since_ns = 1 * SEC;
        struct ns_demand d[] = { demand("app/A", 4, 0, 1), demand("app/B", 4, 0, 2) };
        d[0].memory = 32 * GiB; /* fits nowhere: the idle node stays idle */
        struct pass p = run(g, 1, n, 2, d, 2, opts(), 1000 * SEC);
        ok(p.n == 2 && p.acts[0].kind == NS_DELETE && p.acts[0].node == 1 && p.acts[1].kind == NS_LAUNCH,
           "the delete comes first, then the launch (the idle node took one app/B, so it is not drained)");
        ok(p.sum.unschedulable == 1 && strstr(p.sum.unschedulable_reason, "needs 32.0 GiB memory"),
           "memory too large for every shape: %s", p.sum.unschedulable_reason);
        done(&p);
}

/* A burst larger than one pass may open: the excess is reported, not launched or looped over. */
static void test_huge_burst(void) {
        struct ns_group g[] = { group("cpu", 1, 0, 0, NS_MAX_GROUP_NODES, 1) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 1000000) };
        struct pass p = run(g, 1, NULL, 0, d, 1, opts(), 100 * SEC);
        ok(p.r == 0 && launches(&p, -1) == 10 && p.sum.wanted[0] == NS_MAX_NEW_NODES,
           "a million one-CPU replicas: 10 launches (the concurrency limit), %u nodes wanted", NS_MAX_NEW_NODES);
        ok(p.sum.unschedulable == 1000000 - NS_MAX_NEW_NODES && strstr(p.sum.unschedulable_reason, "new nodes"),
           "the rest is unschedulable for now: %s", p.sum.unschedulable_reason);
        done(&p);
}

static void test_invalid(void) {
        struct ns_group g[] = { group("cpu", 4, 0, 0, 10, 1) };
        struct ns_node n[] = { alive("w1", 0, 4, 0) };
        struct ns_demand d[] = { demand("app/A", 1, 0, 1), demand("app/B", 1, 0, 1) };
        struct ns_memory mem = { .demand_sig = 7 };
        struct pass p;

        n[0].group = 1;
        p = run_mem(g, 1, n, 1, d, 1, opts(), 0, &mem);
        ok(p.r == -EINVAL && p.sum.wanted == NULL && mem.demand_sig == 7,
           "a node in a group that does not exist: -EINVAL, summary and memory untouched");
        n[0].group = 0;
        n[0].replaces = 5;
        p = run(g, 1, n, 1, d, 1, opts(), 0);
        is_int(p.r, -EINVAL, "replaces out of range: -EINVAL");
        n[0].replaces = -1;
        d[0].cpus = NAN;
        p = run(g, 1, n, 1, d, 1, opts(), 0);
        is_int(p.r, -EINVAL, "NaN CPUs: -EINVAL");
        d[0].cpus = -1;
        p = run(g, 1, n, 1, d, 1, opts(), 0);
        is_int(p.r, -EINVAL, "negative CPUs: -EINVAL");
        d[0].cpus = 1;
        d[1].key = "app/A";
        p = run(g, 1, n, 1, d, 2, opts(), 0);
        is_int(p.r, -EINVAL, "a key twice in the demand: -EINVAL");
        g[0].min_nodes = 11;
        p = run(g, 1, n, 1, d, 1, opts(), 0);
        is_int(p.r, -EINVAL, "min_nodes above max_nodes: -EINVAL");
        g[0].min_nodes = 0;
        struct ns_options o = opts();
        o.max_concurrent_launches = 0;
        p = run(g, 1, n, 1, d, 1, o, 0);
        is_int(p.r, -EINVAL, "max_concurrent_launches 0: -EINVAL");
        p = run(g, 1, n, 1, d, 1, opts(), 0);
        is_int(p.r, 0, "the same input, fixed, passes");
        done(&p);
}

int main(void) {
        test_packing();
        test_group_choice();
        test_unschedulable();
        test_max_per_node();
        test_batching();
        test_limits();
        test_min_nodes();
        test_idle();
        test_boot_timeout();
        test_replacement();
        test_order();
        test_huge_burst();
        test_invalid();
        return tap_done();
}
