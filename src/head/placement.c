/* Replica placement. The work is O(replicas x alive nodes): each new replica scans the alive
 * nodes once, and the scan skips a node before checking its resources when it cannot beat the
 * best node found so far (more replicas of the deployment, or less free CPU). */
#include <errno.h>
#include <limits.h>
#include <math.h> /* isfinite() only: no libm needed */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/macros.h"
#include "head/placement.h"

/* Float sums such as ten 0.1 CPU replicas must fit a 1 CPU node exactly. */
#define EPS 1e-9

/* Open-addressing name -> index map, for node names and deployment keys. */
struct name_index {
        size_t mask;
        size_t *slots; /* index + 1; 0 = empty */
};

static uint64_t hash_str(const char *s) {
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ull;
        return h;
}

static size_t name_index_find(const struct name_index *h, const char *(*name_of)(const void *, size_t),
                              const void *base, const char *name) {
        for (size_t i = hash_str(name) & h->mask;; i = (i + 1) & h->mask) {
                size_t s = h->slots[i];
                if (s == 0)
                        return SIZE_MAX;
                if (streq(name_of(base, s - 1), name))
                        return s - 1;
        }
}

/* Returns 0, -EINVAL on a NULL or duplicate name, or -ENOMEM. */
static int name_index_build(struct name_index *h, size_t n, const char *(*name_of)(const void *, size_t),
                            const void *base) {
        size_t size = 16;
        while (size < 2 * n)
                size *= 2;
        h->mask = size - 1;
        h->slots = calloc(size, sizeof(size_t));
        if (!h->slots)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
                const char *name = name_of(base, k);
                if (!name || name_index_find(h, name_of, base, name) != SIZE_MAX)
                        return -EINVAL;
                size_t i = hash_str(name) & h->mask;
                while (h->slots[i])
                        i = (i + 1) & h->mask;
                h->slots[i] = k + 1;
        }
        return 0;
}

static const char *node_name_of(const void *base, size_t i) {
        return ((const struct placement_node *)base)[i].name;
}

static const char *deployment_key_of(const void *base, size_t i) {
        return ((const struct placement_deployment *)base)[i].key;
}

struct node_state {
        double free_cpus;
        uint64_t free_memory;
        double *gpu_free;    /* n_gpus fractions, into ctx.gpu_free */
        double *custom_free; /* parallel to placement_node.custom, into ctx.custom_free */
        unsigned replicas;
};

struct placed {
        size_t node;
        size_t seq; /* keeps sorting stable */
        char *gpus;
};

struct dep_state {
        struct placed *v;
        size_t n, cap;
        unsigned pending;
        char *reason;
};

struct ctx {
        const struct placement_input *in;
        struct node_state *ns;
        double *gpu_free, *custom_free;
        size_t *alive;
        size_t n_alive;
        unsigned *count; /* per node: replicas of the deployment being placed */
        size_t *heap;    /* place_new()'s candidate nodes */
        unsigned *gpu_pick;
        struct dep_state *ds;
};

static bool valid_amount(double v) {
        return isfinite(v) && v >= 0;
}

static bool valid_resources(const struct placement_resource *r, size_t n) {
        if (n > 0 && !r)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!r[i].name || !valid_amount(r[i].amount))
                        return false;
        return true;
}

static int validate(const struct placement_input *in) {
        if ((in->n_nodes > 0 && !in->nodes) || (in->n_deployments > 0 && !in->deployments))
                return -EINVAL;
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct placement_node *n = &in->nodes[i];
                if (!valid_amount(n->cpus) || n->n_gpus > PLACEMENT_MAX_GPUS_PER_NODE ||
                    !valid_resources(n->custom, n->n_custom))
                        return -EINVAL;
        }
        for (size_t i = 0; i < in->n_deployments; i++) {
                const struct placement_deployment *d = &in->deployments[i];
                if (d->replicas < 0 || d->max_per_node < 0 || !valid_amount(d->num_cpus) ||
                    !valid_amount(d->num_gpus) || d->num_gpus > PLACEMENT_MAX_GPUS_PER_NODE ||
                    (d->num_gpus >= 1 && d->num_gpus != (double)(unsigned)d->num_gpus) ||
                    !valid_resources(d->custom, d->n_custom))
                        return -EINVAL;
        }
        return 0;
}

static bool gpu_whole(const struct placement_deployment *d) {
        return d->num_gpus >= 1;
}

/* Whole GPUs a node must have at all: a fraction still needs one. */
static unsigned gpus_needed(const struct placement_deployment *d) {
        return d->num_gpus <= 0 ? 0 : d->num_gpus < 1 ? 1 : (unsigned)d->num_gpus;
}

static double *custom_free_of(const struct ctx *c, size_t node, const char *name) {
        const struct placement_node *n = &c->in->nodes[node];
        for (size_t i = 0; i < n->n_custom; i++)
                if (streq(n->custom[i].name, name))
                        return &c->ns[node].custom_free[i];
        return NULL;
}

static const struct placement_resource *custom_total_of(const struct placement_node *n, const char *name) {
        for (size_t i = 0; i < n->n_custom; i++)
                if (streq(n->custom[i].name, name))
                        return &n->custom[i];
        return NULL;
}

/* CPU, memory and custom resources (everything but GPUs) fit in what is free on the node. */
static bool fits_basic(const struct ctx *c, size_t node, const struct placement_deployment *d) {
        const struct node_state *s = &c->ns[node];
        if (s->free_cpus + EPS < d->num_cpus || s->free_memory < d->memory)
                return false;
        for (size_t i = 0; i < d->n_custom; i++) {
                if (d->custom[i].amount <= EPS)
                        continue;
                const double *f = custom_free_of(c, node, d->custom[i].name);
                if (!f || *f + EPS < d->custom[i].amount)
                        return false;
        }
        return true;
}

/* Chooses GPUs on the node: best fit for a fraction, the lowest-numbered free GPUs for whole
 * ones. Returns how many indices it stored in c->gpu_pick (0 for a GPU-less deployment), or -1
 * when the node cannot host the request. */
static int gpus_choose(const struct ctx *c, size_t node, const struct placement_deployment *d) {
        const struct node_state *s = &c->ns[node];
        unsigned n_gpus = c->in->nodes[node].n_gpus;

        if (d->num_gpus <= 0)
                return 0;
        if (!gpu_whole(d)) {
                int best = -1;
                for (unsigned g = 0; g < n_gpus; g++)
                        if (s->gpu_free[g] + EPS >= d->num_gpus && (best < 0 || s->gpu_free[g] + EPS < s->gpu_free[best]))
                                best = (int)g;
                if (best < 0)
                        return -1;
                c->gpu_pick[0] = (unsigned)best;
                return 1;
        }
        unsigned want = (unsigned)d->num_gpus, got = 0;
        for (unsigned g = 0; g < n_gpus && got < want; g++)
                if (s->gpu_free[g] + EPS >= 1.0)
                        c->gpu_pick[got++] = g;
        return got == want ? (int)got : -1;
}

static void consume(struct ctx *c, size_t node, const struct placement_deployment *d, unsigned n_picked) {
        struct node_state *s = &c->ns[node];
        s->free_cpus -= d->num_cpus;
        s->free_memory -= d->memory;
        for (size_t i = 0; i < d->n_custom; i++) {
                double *f = custom_free_of(c, node, d->custom[i].name);
                if (f)
                        *f -= d->custom[i].amount;
        }
        for (unsigned i = 0; i < n_picked; i++)
                s->gpu_free[c->gpu_pick[i]] -= gpu_whole(d) ? 1.0 : d->num_gpus;
        s->replicas++;
}

/* Formats c->gpu_pick as a CUDA_VISIBLE_DEVICES value. Returns NULL only on ENOMEM. */
static char *gpus_format(const struct ctx *c, unsigned n) {
        char *s = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&s, &len);
        if (!f)
                return NULL;
        for (unsigned i = 0; i < n; i++)
                fprintf(f, "%s%u", i ? "," : "", c->gpu_pick[i]);
        if (fclose(f) != 0) {
                free(s);
                return NULL;
        }
        return s;
}

/* Checks that a previous CUDA_VISIBLE_DEVICES string still names GPUs that exist on the node,
 * are distinct, match the request's size and have room; stores them in c->gpu_pick. Returns
 * the count, or -1 when the replica has to be placed again. */
static int gpus_reuse(const struct ctx *c, size_t node, const struct placement_deployment *d, const char *str) {
        const struct node_state *s = &c->ns[node];
        unsigned n_gpus = c->in->nodes[node].n_gpus;
        unsigned want = gpu_whole(d) ? (unsigned)d->num_gpus : 1, n = 0;

        if (d->num_gpus <= 0)
                return 0;
        if (!str || !*str)
                return -1;
        for (const char *p = str;;) {
                char *end;
                if (*p < '0' || *p > '9')
                        return -1;
                errno = 0;
                unsigned long v = strtoul(p, &end, 10);
                if (errno || v >= n_gpus || n >= want)
                        return -1;
                for (unsigned i = 0; i < n; i++)
                        if (c->gpu_pick[i] == v)
                                return -1;
                if (s->gpu_free[v] + EPS < (gpu_whole(d) ? 1.0 : d->num_gpus))
                        return -1;
                c->gpu_pick[n++] = (unsigned)v;
                if (*end == '\0')
                        break;
                if (*end != ',')
                        return -1;
                p = end + 1;
        }
        return n == want ? (int)n : -1;
}

static int dep_push(struct dep_state *ds, size_t node, char *gpus) {
        if (ds->n == ds->cap) {
                size_t ncap = ds->cap ? ds->cap * 2 : 8;
                struct placed *v = realloc(ds->v, ncap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                ds->v = v;
                ds->cap = ncap;
        }
        ds->v[ds->n] = (struct placed){ .node = node, .seq = ds->n, .gpus = gpus };
        ds->n++;
        return 0;
}

/* Places one replica of `d` on `node` (already known to fit, with c->gpu_pick chosen). */
static int place(struct ctx *c, size_t di, size_t node, int n_picked) {
        const struct placement_deployment *d = &c->in->deployments[di];
        char *gpus = NULL;

        if (d->num_gpus > 0) {
                gpus = gpus_format(c, (unsigned)n_picked);
                if (!gpus)
                        return -ENOMEM;
        }
        if (dep_push(&c->ds[di], node, gpus) < 0) {
                free(gpus);
                return -ENOMEM;
        }
        consume(c, node, d, (unsigned)MAX(n_picked, 0));
        return 0;
}

static void fmt_bytes(char *buf, size_t size, uint64_t b) {
        static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
        double v = (double)b;
        int u = -1;

        while (v >= 1024 && u + 1 < (int)ELEMENTSOF(units)) {
                v /= 1024;
                u++;
        }
        if (u < 0)
                snprintf(buf, size, "%llu bytes", (unsigned long long)b);
        else
                snprintf(buf, size, "%.6g %s", v, units[u]);
}

static const char *plural(double v) {
        return v == 1 ? "" : "s";
}

/* "2 CPUs, 1 GiB memory, 1 GPU, 'accel'=2": everything the deployment asks for. */
static void fprint_request(FILE *f, const struct placement_deployment *d) {
        char mem[64];
        const char *sep = "";

        if (d->num_cpus > 0) {
                fprintf(f, "%g CPU%s", d->num_cpus, plural(d->num_cpus));
                sep = ", ";
        }
        if (d->memory > 0) {
                fmt_bytes(mem, sizeof(mem), d->memory);
                fprintf(f, "%s%s memory", sep, mem);
                sep = ", ";
        }
        if (d->num_gpus > 0) {
                fprintf(f, "%s%g GPU%s", sep, d->num_gpus, gpu_whole(d) ? plural(d->num_gpus) : "");
                sep = ", ";
        }
        for (size_t i = 0; i < d->n_custom; i++)
                if (d->custom[i].amount > EPS) {
                        fprintf(f, "%s'%s'=%g", sep, d->custom[i].name, d->custom[i].amount);
                        sep = ", ";
                }
}

/* Capacity of an alive node, regardless of what is in use: could the request ever fit? */
static bool fits_total(const struct placement_node *n, const struct placement_deployment *d) {
        if (n->cpus + EPS < d->num_cpus || n->memory < d->memory)
                return false;
        if (d->num_gpus > 0 && n->n_gpus < gpus_needed(d))
                return false;
        for (size_t i = 0; i < d->n_custom; i++) {
                if (d->custom[i].amount <= EPS)
                        continue;
                const struct placement_resource *r = custom_total_of(n, d->custom[i].name);
                if (!r || r->amount + EPS < d->custom[i].amount)
                        return false;
        }
        return true;
}

/* Explains why no node can take another replica of deployment `di`, naming the first obstacle
 * an operator can act on: no nodes, a request larger than any node, max_per_node, then what is
 * free. Returns a malloc'd sentence, or NULL on ENOMEM. */
static char *diagnose(const struct ctx *c, size_t di) {
        const struct placement_input *in = c->in;
        const struct placement_deployment *d = &in->deployments[di];
        size_t n_fit_total = 0, n_at_max = 0, n_eligible = 0;
        unsigned long long total_gpus = 0;
        unsigned max_gpus = 0, max_free_whole = 0;
        double max_cpus = 0, max_free_cpus = 0, max_free_frac = 0;
        uint64_t max_memory = 0, max_free_memory = 0;
        char *s = NULL, b1[64], b2[64];
        size_t len = 0;

        FILE *f = open_memstream(&s, &len);
        if (!f)
                return NULL;

        for (size_t k = 0; k < c->n_alive; k++) {
                size_t i = c->alive[k];
                const struct placement_node *n = &in->nodes[i];
                const struct node_state *ns = &c->ns[i];

                max_cpus = MAX(max_cpus, n->cpus);
                max_memory = MAX(max_memory, n->memory);
                max_gpus = MAX(max_gpus, n->n_gpus);
                total_gpus += n->n_gpus;
                if (!fits_total(n, d))
                        continue;
                n_fit_total++;
                if (d->max_per_node > 0 && c->count[i] >= (unsigned)d->max_per_node) {
                        n_at_max++;
                        continue;
                }
                n_eligible++;
                max_free_cpus = MAX(max_free_cpus, ns->free_cpus);
                max_free_memory = MAX(max_free_memory, ns->free_memory);
                unsigned whole = 0;
                for (unsigned g = 0; g < n->n_gpus; g++) {
                        max_free_frac = MAX(max_free_frac, ns->gpu_free[g]);
                        whole += ns->gpu_free[g] + EPS >= 1.0;
                }
                max_free_whole = MAX(max_free_whole, whole);
        }

        if (c->n_alive == 0) {
                fprintf(f, "no alive nodes");
                goto done;
        }
        if (d->num_cpus > max_cpus + EPS) {
                fprintf(f, "needs %g CPU%s; the largest alive node offers %g", d->num_cpus, plural(d->num_cpus), max_cpus);
                goto done;
        }
        if (d->memory > max_memory) {
                fmt_bytes(b1, sizeof(b1), d->memory);
                fmt_bytes(b2, sizeof(b2), max_memory);
                fprintf(f, "needs %s memory; the largest alive node offers %s", b1, b2);
                goto done;
        }
        if (d->num_gpus > 0 && max_gpus < gpus_needed(d)) {
                if (max_gpus == 0)
                        fprintf(f, "needs %g GPU%s; no alive node has a GPU (%zu alive node%s, 0 GPUs)", d->num_gpus,
                                gpu_whole(d) ? plural(d->num_gpus) : "", c->n_alive, plural((double)c->n_alive));
                else
                        fprintf(f, "needs %g GPUs; the largest alive node has %u", d->num_gpus, max_gpus);
                goto done;
        }
        for (size_t r = 0; r < d->n_custom; r++) {
                const struct placement_resource *want = &d->custom[r];
                bool offered = false;
                double most = 0;
                if (want->amount <= EPS)
                        continue;
                for (size_t k = 0; k < c->n_alive; k++) {
                        const struct placement_resource *have = custom_total_of(&in->nodes[c->alive[k]], want->name);
                        if (have) {
                                offered = true;
                                most = MAX(most, have->amount);
                        }
                }
                if (!offered) {
                        fprintf(f, "needs resource '%s'=%g; no alive node offers it", want->name, want->amount);
                        goto done;
                }
                if (most + EPS < want->amount) {
                        fprintf(f, "needs resource '%s'=%g; the largest alive node offers %g", want->name, want->amount, most);
                        goto done;
                }
        }
        if (n_fit_total == 0) {
                fprintf(f, "no single alive node has all of ");
                fprint_request(f, d);
                goto done;
        }
        if (n_eligible == 0) {
                if (n_fit_total == c->n_alive)
                        fprintf(f, "max_replicas_per_node %d reached on all %zu alive node%s", d->max_per_node, n_at_max,
                                plural((double)n_at_max));
                else
                        fprintf(f, "max_replicas_per_node %d reached on all %zu alive nodes large enough (%zu alive)",
                                d->max_per_node, n_at_max, c->n_alive);
                goto done;
        }
        if (d->num_cpus > max_free_cpus + EPS) {
                fprintf(f, "not enough free CPU: needs %g, most free on any node is %g", d->num_cpus,
                        max_free_cpus < EPS ? 0 : max_free_cpus);
                goto done;
        }
        if (d->memory > max_free_memory) {
                fmt_bytes(b1, sizeof(b1), d->memory);
                fmt_bytes(b2, sizeof(b2), max_free_memory);
                fprintf(f, "not enough free memory: needs %s, most free on any node is %s", b1, b2);
                goto done;
        }
        if (d->num_gpus > 0) {
                bool short_gpu = gpu_whole(d) ? max_free_whole < (unsigned)d->num_gpus : max_free_frac + EPS < d->num_gpus;
                if (short_gpu && (gpu_whole(d) ? max_free_whole == 0 : max_free_frac < EPS)) {
                        fprintf(f, "needs %g GPU%s; no alive node has a free GPU (%zu alive node%s, %llu GPUs, all in use)",
                                d->num_gpus, gpu_whole(d) ? plural(d->num_gpus) : "", c->n_alive,
                                plural((double)c->n_alive), total_gpus);
                        goto done;
                }
                if (short_gpu && gpu_whole(d)) {
                        fprintf(f, "not enough free GPUs: needs %g, most free on any node is %u", d->num_gpus, max_free_whole);
                        goto done;
                }
                if (short_gpu) {
                        fprintf(f, "not enough free GPU: needs %g of one GPU, most free on any GPU is %g", d->num_gpus,
                                max_free_frac);
                        goto done;
                }
        }
        for (size_t r = 0; r < d->n_custom; r++) {
                const struct placement_resource *want = &d->custom[r];
                double most = 0;
                if (want->amount <= EPS)
                        continue;
                for (size_t k = 0; k < c->n_alive; k++) {
                        size_t i = c->alive[k];
                        if (!fits_total(&in->nodes[i], d) ||
                            (d->max_per_node > 0 && c->count[i] >= (unsigned)d->max_per_node))
                                continue;
                        const double *have = custom_free_of(c, i, want->name);
                        if (have)
                                most = MAX(most, *have);
                }
                if (most + EPS < want->amount) {
                        fprintf(f, "not enough free '%s': needs %g, most free on any node is %g", want->name,
                                want->amount, most < EPS ? 0 : most);
                        goto done;
                }
        }
        fprintf(f, "no alive node has ");
        fprint_request(f, d);
        fprintf(f, " free at the same time");
done:
        if (fclose(f) != 0) {
                free(s);
                return NULL;
        }
        return s;
}

struct cand {
        size_t node;
        const char *gpus;
};

/* Keeps deployment di's previous replicas that sit on alive nodes, trimmed to the desired count
 * and max_per_node, as long as they still fit. `cands` is the deployment's previous replicas
 * on alive nodes; c->count is zero on entry and on return. */
static int keep_previous(struct ctx *c, size_t di, const struct cand *cands, size_t n_cands, size_t *nodes_scratch) {
        const struct placement_deployment *d = &c->in->deployments[di];
        size_t n_nodes = 0, total = 0;
        int r = 0;

        /* c->count doubles as "how many to keep on this node". */
        for (size_t k = 0; k < n_cands; k++)
                if (c->count[cands[k].node]++ == 0)
                        nodes_scratch[n_nodes++] = cands[k].node;
        for (size_t k = 0; k < n_nodes; k++) {
                unsigned *a = &c->count[nodes_scratch[k]];
                if (d->max_per_node > 0 && *a > (unsigned)d->max_per_node)
                        *a = (unsigned)d->max_per_node;
                total += *a;
        }
        /* Shrinking: take from an elastic node first (rule 6), then from the node holding the
         * most; on a tie the later node, so the earlier nodes keep theirs. */
        while (total > (size_t)d->replicas) {
                size_t best = SIZE_MAX;
                for (size_t k = 0; k < n_nodes; k++) {
                        size_t i = nodes_scratch[k];
                        bool ei = c->in->nodes[i].elastic, eb = best != SIZE_MAX && c->in->nodes[best].elastic;
                        if (c->count[i] == 0)
                                continue; /* emptied already */
                        if (best == SIZE_MAX || (ei && !eb) ||
                            (ei == eb && (c->count[i] > c->count[best] || (c->count[i] == c->count[best] && i > best))))
                                best = i;
                }
                c->count[best]--;
                total--;
        }
        for (size_t k = 0; k < n_cands && r >= 0; k++) {
                size_t i = cands[k].node;
                if (c->count[i] == 0 || !fits_basic(c, i, d))
                        continue;
                int n_picked = gpus_reuse(c, i, d, cands[k].gpus);
                if (n_picked < 0)
                        continue;
                r = place(c, di, i, n_picked);
                c->count[i]--;
        }
        for (size_t k = 0; k < n_nodes; k++)
                c->count[nodes_scratch[k]] = 0;
        return r;
}

/* Is node a a better home than node b for the next replica: not elastic (rule 6), then fewer
 * replicas of the deployment, then more free CPU, then earlier in the input (rule 2's order). */
static bool node_better(const struct ctx *c, size_t a, size_t b) {
        if (c->in->nodes[a].elastic != c->in->nodes[b].elastic)
                return !c->in->nodes[a].elastic; /* rule 6: a fixed node first */
        if (c->count[a] != c->count[b])
                return c->count[a] < c->count[b];
        if (c->ns[a].free_cpus > c->ns[b].free_cpus + EPS)
                return true;
        if (c->ns[b].free_cpus > c->ns[a].free_cpus + EPS)
                return false;
        return a < b;
}

static void heap_sift_down(const struct ctx *c, size_t *heap, size_t n, size_t k) {
        for (;;) {
                size_t l = 2 * k + 1, best = k;
                if (l < n && node_better(c, heap[l], heap[best]))
                        best = l;
                if (l + 1 < n && node_better(c, heap[l + 1], heap[best]))
                        best = l + 1;
                if (best == k)
                        return;
                size_t t = heap[k];
                heap[k] = heap[best];
                heap[best] = t;
                k = best;
        }
}

/* Places the replicas deployment di still lacks, one at a time, each on the best node that can
 * take it. The candidates are a heap ordered by node_better(): a scan of every node per replica
 * was quadratic (100,000 replicas on 10,000 nodes: 10^9 steps). Placing only takes resources
 * away and only raises counts, so a node that cannot take a replica now cannot take a later
 * one of the same deployment either and leaves the heap for good; the node that took one only
 * got worse, so it sinks from the top. */
static int place_new(struct ctx *c, size_t di) {
        const struct placement_deployment *d = &c->in->deployments[di];
        struct dep_state *ds = &c->ds[di];
        unsigned maxpn = (unsigned)d->max_per_node;
        size_t *heap = c->heap, n_heap = 0;
        int r = 0;

        memset(c->count, 0, c->in->n_nodes * sizeof(unsigned));
        for (size_t k = 0; k < ds->n; k++)
                c->count[ds->v[k].node]++;

        size_t need = (size_t)d->replicas - ds->n;
        if (need == 0)
                return 0;
        for (size_t k = 0; k < c->n_alive; k++)
                heap[n_heap++] = c->alive[k];
        for (size_t k = n_heap / 2; k-- > 0;)
                heap_sift_down(c, heap, n_heap, k);
        for (size_t done = 0; done < need; done++) {
                size_t best = SIZE_MAX;
                while (n_heap > 0) {
                        size_t i = heap[0];
                        if ((maxpn == 0 || c->count[i] < maxpn) && fits_basic(c, i, d) && gpus_choose(c, i, d) >= 0) {
                                best = i;
                                break;
                        }
                        heap[0] = heap[--n_heap];
                        heap_sift_down(c, heap, n_heap, 0);
                }
                if (best == SIZE_MAX) {
                        /* Placing only takes resources away, so every later replica fails too. */
                        ds->pending = (unsigned)(need - done);
                        ds->reason = diagnose(c, di);
                        return ds->reason ? 0 : -ENOMEM;
                }
                r = place(c, di, best, gpus_choose(c, best, d));
                if (r < 0)
                        return r;
                c->count[best]++;
                heap_sift_down(c, heap, n_heap, 0);
        }
        return 0;
}

static int placed_cmp(const void *a, const void *b) {
        const struct placed *x = a, *y = b;
        if (x->node != y->node)
                return x->node < y->node ? -1 : 1;
        return x->seq < y->seq ? -1 : x->seq > y->seq;
}

struct placement_result *placement_result_free(struct placement_result *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; r->deployments && i < r->n_deployments; i++) {
                struct placement_deployment_result *d = &r->deployments[i];
                for (size_t k = 0; k < d->n_slots; k++) {
                        for (unsigned g = 0; d->slots[k].gpus && g < d->slots[k].count; g++)
                                free(d->slots[k].gpus[g]);
                        free(d->slots[k].gpus);
                }
                free(d->slots);
                free(d->pending_reason);
        }
        free(r->deployments);
        for (size_t i = 0; r->nodes && i < r->n_nodes; i++)
                free(r->nodes[i].custom);
        free(r->nodes);
        free(r);
        return NULL;
}

/* Moves deployment di's placed replicas into its result (slots grouped by node). */
static int result_fill_deployment(struct ctx *c, size_t di, struct placement_deployment_result *out) {
        struct dep_state *ds = &c->ds[di];
        bool gpus = c->in->deployments[di].num_gpus > 0;

        if (ds->n > 1)
                qsort(ds->v, ds->n, sizeof(*ds->v), placed_cmp);
        out->pending = ds->pending;
        out->pending_reason = TAKE_PTR(ds->reason);
        out->placed = (unsigned)ds->n;
        for (size_t k = 0; k < ds->n;) {
                size_t e = k;
                while (e < ds->n && ds->v[e].node == ds->v[k].node)
                        e++;
                struct placement_slot *slot = &out->slots[out->n_slots];
                slot->node = ds->v[k].node;
                if (gpus) {
                        slot->gpus = calloc(e - k, sizeof(char *));
                        if (!slot->gpus)
                                return -ENOMEM;
                        for (size_t j = k; j < e; j++)
                                slot->gpus[j - k] = TAKE_PTR(ds->v[j].gpus);
                }
                slot->count = (unsigned)(e - k);
                out->n_slots++;
                k = e;
        }
        return 0;
}

static int result_build(struct ctx *c, struct placement_result **ret) {
        const struct placement_input *in = c->in;
        struct placement_result *res = calloc(1, sizeof(*res));
        if (!res)
                return -ENOMEM;
        res->deployments = calloc(MAX(in->n_deployments, 1), sizeof(*res->deployments));
        res->nodes = calloc(MAX(in->n_nodes, 1), sizeof(*res->nodes));
        if (!res->deployments || !res->nodes)
                goto oom;
        res->n_deployments = in->n_deployments;
        res->n_nodes = in->n_nodes;
        for (size_t di = 0; di < in->n_deployments; di++) {
                struct placement_deployment_result *out = &res->deployments[di];
                /* Sized for the worst case, one slot per replica. */
                out->slots = calloc(MAX(c->ds[di].n, 1), sizeof(*out->slots));
                if (!out->slots || result_fill_deployment(c, di, out) < 0)
                        goto oom;
        }
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct placement_node *n = &in->nodes[i];
                const struct node_state *s = &c->ns[i];
                struct placement_node_usage *u = &res->nodes[i];
                double gpus = 0;
                u->cpus = MAX(n->cpus - s->free_cpus, 0.0);
                u->memory = n->memory - s->free_memory;
                for (unsigned g = 0; g < n->n_gpus; g++)
                        gpus += 1.0 - s->gpu_free[g];
                u->gpus = MAX(gpus, 0.0);
                u->replicas = s->replicas;
                if (n->n_custom > 0) {
                        u->custom = calloc(n->n_custom, sizeof(double));
                        if (!u->custom)
                                goto oom;
                        for (size_t k = 0; k < n->n_custom; k++)
                                u->custom[k] = MAX(n->custom[k].amount - s->custom_free[k], 0.0);
                }
        }
        *ret = res;
        return 0;
oom:
        placement_result_free(res);
        return -ENOMEM;
}

static void ctx_done(struct ctx *c) {
        for (size_t di = 0; c->ds && di < c->in->n_deployments; di++) {
                for (size_t k = 0; k < c->ds[di].n; k++)
                        free(c->ds[di].v[k].gpus);
                free(c->ds[di].v);
                free(c->ds[di].reason);
        }
        free(c->ds);
        free(c->ns);
        free(c->gpu_free);
        free(c->custom_free);
        free(c->alive);
        free(c->count);
        free(c->heap);
        free(c->gpu_pick);
}

static int ctx_init(struct ctx *c, const struct placement_input *in) {
        size_t n_gpu = 0, n_custom = 0;

        *c = (struct ctx){ .in = in };
        for (size_t i = 0; i < in->n_nodes; i++) {
                n_gpu += in->nodes[i].n_gpus;
                n_custom += in->nodes[i].n_custom;
        }
        c->ns = calloc(MAX(in->n_nodes, 1), sizeof(*c->ns));
        c->gpu_free = calloc(MAX(n_gpu, 1), sizeof(double));
        c->custom_free = calloc(MAX(n_custom, 1), sizeof(double));
        c->alive = calloc(MAX(in->n_nodes, 1), sizeof(size_t));
        c->count = calloc(MAX(in->n_nodes, 1), sizeof(unsigned));
        c->heap = calloc(MAX(in->n_nodes, 1), sizeof(size_t));
        c->gpu_pick = calloc(PLACEMENT_MAX_GPUS_PER_NODE, sizeof(unsigned));
        c->ds = calloc(MAX(in->n_deployments, 1), sizeof(*c->ds));
        if (!c->ns || !c->gpu_free || !c->custom_free || !c->alive || !c->count || !c->heap || !c->gpu_pick || !c->ds)
                return -ENOMEM;

        n_gpu = n_custom = 0;
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct placement_node *n = &in->nodes[i];
                struct node_state *s = &c->ns[i];
                s->free_cpus = n->cpus;
                s->free_memory = n->memory;
                s->gpu_free = c->gpu_free + n_gpu;
                s->custom_free = c->custom_free + n_custom;
                for (unsigned g = 0; g < n->n_gpus; g++)
                        s->gpu_free[g] = 1.0;
                for (size_t k = 0; k < n->n_custom; k++)
                        s->custom_free[k] = n->custom[k].amount;
                n_gpu += n->n_gpus;
                n_custom += n->n_custom;
                if (n->alive)
                        c->alive[c->n_alive++] = i;
        }
        return 0;
}

/* Keeps every deployment's previous replicas before any new one is placed, so a new replica
 * never takes the room of one already running. */
static int keep_all_previous(struct ctx *c, const struct placement_prev *prev) {
        const struct placement_input *in = c->in;
        struct name_index nodes = {}, deps = {};
        size_t *start = NULL, *order = NULL, *nodes_scratch = NULL;
        struct cand *cands = NULL;
        size_t n_cands_max = 0;
        int r;

        r = name_index_build(&nodes, in->n_nodes, node_name_of, in->nodes);
        if (r < 0)
                goto out;
        r = name_index_build(&deps, in->n_deployments, deployment_key_of, in->deployments);
        if (r < 0)
                goto out;
        if (!prev || prev->n_entries == 0)
                goto out;
        if (!prev->entries) {
                r = -EINVAL;
                goto out;
        }

        /* Bucket the entries by deployment (counting sort), remembering each one's node. */
        r = -ENOMEM;
        start = calloc(in->n_deployments + 2, sizeof(size_t));
        order = calloc(prev->n_entries, sizeof(size_t));
        nodes_scratch = calloc(MAX(in->n_nodes, 1), sizeof(size_t));
        if (!start || !order || !nodes_scratch)
                goto out;
        for (size_t e = 0; e < prev->n_entries; e++) {
                const struct placement_prev_entry *pe = &prev->entries[e];
                if (!pe->deployment || !pe->node) {
                        r = -EINVAL;
                        goto out;
                }
                size_t di = name_index_find(&deps, deployment_key_of, in->deployments, pe->deployment);
                if (di != SIZE_MAX)
                        start[di + 2]++;
        }
        for (size_t di = 0; di < in->n_deployments; di++)
                start[di + 2] += start[di + 1];
        for (size_t e = 0; e < prev->n_entries; e++) {
                size_t di = name_index_find(&deps, deployment_key_of, in->deployments, prev->entries[e].deployment);
                if (di != SIZE_MAX)
                        order[start[di + 1]++] = e;
        }

        for (size_t di = 0; di < in->n_deployments; di++) {
                size_t n_cands = 0;
                for (size_t k = start[di]; k < start[di + 1]; k++) {
                        const struct placement_prev_entry *pe = &prev->entries[order[k]];
                        size_t i = name_index_find(&nodes, node_name_of, in->nodes, pe->node);
                        if (i == SIZE_MAX || !in->nodes[i].alive)
                                continue;
                        if (n_cands + pe->count > n_cands_max) {
                                size_t ncap = MAX(n_cands + pe->count, n_cands_max * 2);
                                struct cand *nc = realloc(cands, ncap * sizeof(*nc));
                                if (!nc)
                                        goto out;
                                cands = nc;
                                n_cands_max = ncap;
                        }
                        for (unsigned j = 0; j < pe->count; j++)
                                cands[n_cands++] = (struct cand){ .node = i, .gpus = pe->gpus ? pe->gpus[j] : NULL };
                }
                if (n_cands > 0 && keep_previous(c, di, cands, n_cands, nodes_scratch) < 0)
                        goto out;
        }
        r = 0;
out:
        free(nodes.slots);
        free(deps.slots);
        free(start);
        free(order);
        free(nodes_scratch);
        free(cands);
        return r;
}

int placement_compute(const struct placement_input *in, const struct placement_prev *prev,
                      struct placement_result **ret) {
        struct ctx c = {};
        int r;

        if (!in || !ret)
                return -EINVAL;
        r = validate(in);
        if (r < 0)
                return r;
        r = ctx_init(&c, in);
        if (r < 0)
                goto out;
        r = keep_all_previous(&c, prev);
        if (r < 0)
                goto out;
        for (size_t di = 0; di < in->n_deployments; di++) {
                r = place_new(&c, di);
                if (r < 0)
                        goto out;
        }
        r = result_build(&c, ret);
out:
        ctx_done(&c);
        return r;
}

int placement_result_to_prev(const struct placement_input *in, const struct placement_result *r,
                             struct placement_prev **ret) {
        size_t n = 0;

        if (!in || !r || !ret || r->n_deployments != in->n_deployments)
                return -EINVAL;
        for (size_t di = 0; di < r->n_deployments; di++)
                n += r->deployments[di].n_slots;

        /* One allocation, so the caller frees it with free(). */
        struct placement_prev *p = malloc(sizeof(*p) + n * sizeof(struct placement_prev_entry));
        if (!p)
                return -ENOMEM;
        struct placement_prev_entry *e = (struct placement_prev_entry *)(p + 1);
        *p = (struct placement_prev){ .entries = e, .n_entries = n };
        for (size_t di = 0; di < r->n_deployments; di++)
                for (size_t k = 0; k < r->deployments[di].n_slots; k++) {
                        const struct placement_slot *s = &r->deployments[di].slots[k];
                        *e++ = (struct placement_prev_entry){
                                .deployment = in->deployments[di].key,
                                .node = in->nodes[s->node].name,
                                .count = s->count,
                                .gpus = (const char *const *)s->gpus,
                        };
                }
        *ret = p;
        return 0;
}
