/* The cluster autoscaler's decisions (rules in nodescale.h). One pass builds a list of bins
 * (free capacity of alive nodes, launching nodes, new nodes), packs the sorted demand into them a
 * whole demand entry at a time (identical replicas first-fit the same way one by one or in
 * bulk), then derives drains and launches from the bins and the node list. The work is
 * O(demand entries x bins + nodes log nodes). */
#include <errno.h>
#include <math.h> /* isfinite(), isnan() only: no libm needed */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/macros.h"
#include "head/nodescale.h"

/* Float sums such as ten 0.1 CPU replicas must fit a 1 CPU node exactly (as placement.c). */
#define EPS 1e-9

enum bin_kind {
        BIN_FREE,    /* free capacity of an ALIVE node (2a) */
        BIN_COMING,  /* a LAUNCHING/JOINING node (2b) */
        BIN_MIN,     /* a new node opened for min_nodes (rule 5) */
        BIN_NEW,     /* a new node opened for demand (2c) */
};

struct bin {
        enum bin_kind kind;
        int node;                      /* BIN_FREE, BIN_COMING; else -1 */
        int group;                     /* -1 for an unmanaged node's free capacity */
        const struct ns_shape *shape;
        double cpus, gpus;             /* packed in this pass */
        uint64_t memory;
        size_t custom_off;             /* shape->n_custom doubles in ctx.custom_used */
        unsigned packed;               /* replicas packed in this pass */
        size_t cur_entry;              /* demand entry cur_count belongs to */
        unsigned cur_count;            /* replicas of that entry on this bin */
        const char *first_key;         /* for the launch reason */
        unsigned n_keys;
};

struct ctx {
        const struct ns_input *in;
        uint64_t now;

        struct bin *bins;
        size_t n_bins, cap_bins, n_opened;
        double *custom_used;
        size_t n_custom_used, cap_custom_used;

        /* per group */
        int *count;                    /* nodes counting toward the group, plus bins opened */
        int *existing;                 /* the nodes alone */
        unsigned *coming;              /* managed LAUNCHING/JOINING, not deleted */
        unsigned *launched;            /* launches granted in this pass */
        unsigned *surge;               /* replacements in flight */
        size_t *order;                 /* groups in the order 2c prefers them */
        unsigned *wanted;

        /* per node */
        bool *acted;                   /* has an action in this pass */
        bool *deleted;                 /* deleted in this pass */
        int *repl;                     /* index of a live replacement, or -1 */
        int *bin_of;                   /* BIN_FREE bin index, or -1 */

        struct ns_action *acts;
        size_t n_acts, cap_acts;
        unsigned inflight;             /* managed LAUNCHING/JOINING not deleted, plus launches granted */

        unsigned pending, unschedulable;
        char unschedulable_reason[256];
};

static bool amount_ok(double v) {
        return isfinite(v) && v >= 0;
}

static bool shape_ok(const struct ns_shape *s) {
        if (!amount_ok(s->cpus) || !amount_ok(s->gpus) || s->n_custom > NS_MAX_CUSTOM || (s->n_custom && !s->custom))
                return false;
        for (size_t i = 0; i < s->n_custom; i++)
                if (!s->custom[i].name || !amount_ok(s->custom[i].amount))
                        return false;
        return true;
}

static int cmp_str_ptr(const void *a, const void *b) {
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Returns 0 or -EINVAL (see nodescale.h), or -ENOMEM. */
static int validate(const struct ns_input *in) {
        if (in->n_groups > NS_MAX_GROUPS || in->n_nodes > NS_MAX_NODES || in->n_demand > NS_MAX_DEMAND)
                return -EINVAL;
        if ((in->n_groups && !in->groups) || (in->n_nodes && !in->nodes) || (in->n_demand && !in->demand))
                return -EINVAL;
        if (in->opt.max_concurrent_launches < 1 || (unsigned)in->opt.mode > NS_AGGRESSIVE)
                return -EINVAL;

        for (size_t g = 0; g < in->n_groups; g++) {
                const struct ns_group *gr = &in->groups[g];
                if (!gr->name || !shape_ok(&gr->shape) || gr->min_nodes < 0 || gr->min_nodes > gr->max_nodes ||
                    gr->max_nodes > NS_MAX_GROUP_NODES || isnan(gr->cost) || !amount_ok(gr->idle_timeout_s) ||
                    !amount_ok(gr->boot_timeout_s) || gr->max_surge < 1)
                        return -EINVAL;
        }
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (!n->name || n->group < -1 || n->group >= (long)in->n_groups || (unsigned)n->state > NS_DELETING ||
                    n->replaces < -1 || n->replaces >= (long)in->n_nodes || n->replaces == (long)i)
                        return -EINVAL;
                if (n->state == NS_ALIVE && !shape_ok(&n->free))
                        return -EINVAL;
        }

        unsigned long long total = 0;
        for (size_t d = 0; d < in->n_demand; d++) {
                const struct ns_demand *dm = &in->demand[d];
                if (!dm->key || !amount_ok(dm->cpus) || !amount_ok(dm->gpus) || dm->max_per_node < 0 ||
                    dm->n_custom > NS_MAX_CUSTOM || (dm->n_custom && !dm->custom))
                        return -EINVAL;
                for (size_t k = 0; k < dm->n_custom; k++)
                        if (!dm->custom[k].name || !amount_ok(dm->custom[k].amount))
                                return -EINVAL;
                total += dm->count;
        }
        if (total > UINT32_MAX)
                return -EINVAL;

        if (in->n_demand > 1) {
                _cleanup_free_ const char **keys = malloc(in->n_demand * sizeof(*keys));
                if (!keys)
                        return -ENOMEM;
                for (size_t d = 0; d < in->n_demand; d++)
                        keys[d] = in->demand[d].key;
                qsort(keys, in->n_demand, sizeof(*keys), cmp_str_ptr);
                for (size_t d = 1; d < in->n_demand; d++)
                        if (streq(keys[d - 1], keys[d]))
                                return -EINVAL;
        }
        return 0;
}

static bool managed(const struct ns_node *n) {
        return n->group >= 0;
}

static bool coming(const struct ns_node *n) {
        return n->state == NS_LAUNCHING || n->state == NS_JOINING;
}

static bool active(const struct ns_node *n) {
        return coming(n) || n->state == NS_ALIVE;
}

static bool outdated(const struct ns_input *in, const struct ns_node *n) {
        return managed(n) && n->config_hash != in->groups[n->group].config_hash;
}

static bool in_backoff(const struct ctx *c, int g) {
        return c->in->groups[g].backoff_until_ns > c->now;
}

/* Seconds since `t`, 0 when `t` lies in the future. */
static double since_s(const struct ctx *c, uint64_t t) {
        return c->now > t ? (double)(c->now - t) / 1e9 : 0;
}

static struct ns_action *push_action(struct ctx *c, enum ns_action_kind kind, int group, int node, int replaces) {
        if (c->n_acts == c->cap_acts) {
                size_t cap = c->cap_acts ? 2 * c->cap_acts : 16;
                struct ns_action *a = realloc(c->acts, cap * sizeof(*a));
                if (!a)
                        return NULL;
                c->acts = a;
                c->cap_acts = cap;
        }
        struct ns_action *a = &c->acts[c->n_acts++];
        *a = (struct ns_action){ .kind = kind, .group = group, .node = node, .replaces = replaces };
        if (node >= 0)
                c->acted[node] = true;
        return a;
}

/* Returns the new bin's index, or -ENOMEM. */
static long add_bin(struct ctx *c, enum bin_kind kind, int node, int group, const struct ns_shape *shape) {
        if (c->n_bins == c->cap_bins) {
                size_t cap = c->cap_bins ? 2 * c->cap_bins : 64;
                struct bin *b = realloc(c->bins, cap * sizeof(*b));
                if (!b)
                        return -ENOMEM;
                c->bins = b;
                c->cap_bins = cap;
        }
        if (c->n_custom_used + shape->n_custom > c->cap_custom_used) {
                size_t cap = MAX(2 * c->cap_custom_used, c->n_custom_used + shape->n_custom + 64);
                double *u = realloc(c->custom_used, cap * sizeof(*u));
                if (!u)
                        return -ENOMEM;
                c->custom_used = u;
                c->cap_custom_used = cap;
        }
        for (size_t k = 0; k < shape->n_custom; k++)
                c->custom_used[c->n_custom_used + k] = 0;
        c->bins[c->n_bins] = (struct bin){ .kind = kind, .node = node, .group = group, .shape = shape,
                                           .custom_off = c->n_custom_used, .cur_entry = SIZE_MAX };
        c->n_custom_used += shape->n_custom;
        if (kind == BIN_MIN || kind == BIN_NEW) {
                c->count[group]++;
                c->n_opened++;
        }
        return (long)c->n_bins++;
}

/* How many of `want` more replicas fit in what is left of `free` (amount `used` taken). */
static unsigned fit_amount(unsigned want, double free, double used, double need) {
        if (need <= EPS)
                return want;
        double n = (free - used + EPS) / need;
        if (!(n >= 0))
                return 0;
        return n < want ? (unsigned)n : want; /* the cast truncates: floor for n >= 0 */
}

static const struct placement_resource *find_custom(const struct ns_shape *s, const char *name, size_t *ret_i) {
        for (size_t i = 0; i < s->n_custom; i++)
                if (streq(s->custom[i].name, name)) {
                        *ret_i = i;
                        return &s->custom[i];
                }
        return NULL;
}

/* Returns how many of `want` replicas of demand entry `e` (d) still fit on bin `b`, whose custom
 * resources have `custom_used` taken (NULL: none). */
static unsigned bin_fit(const struct ns_demand *d, size_t e, const struct bin *b, const double *custom_used,
                        unsigned want) {
        const struct ns_shape *s = b->shape;
        unsigned k = want;

        if (d->max_per_node > 0) {
                unsigned have = b->cur_entry == e ? b->cur_count : 0;
                if (have >= (unsigned)d->max_per_node)
                        return 0;
                k = MIN(k, (unsigned)d->max_per_node - have);
        }
        k = fit_amount(k, s->cpus, b->cpus, d->cpus);
        k = fit_amount(k, s->gpus, b->gpus, d->gpus);
        if (d->memory > 0) {
                uint64_t left = s->memory > b->memory ? s->memory - b->memory : 0;
                k = (unsigned)MIN((uint64_t)k, left / d->memory);
        }
        for (size_t r = 0; r < d->n_custom && k > 0; r++) {
                if (d->custom[r].amount <= EPS)
                        continue;
                size_t i;
                const struct placement_resource *have = find_custom(s, d->custom[r].name, &i);
                k = have ? fit_amount(k, have->amount, custom_used ? custom_used[i] : 0, d->custom[r].amount) : 0;
        }
        return k;
}

static unsigned bin_fit_ctx(const struct ctx *c, const struct bin *b, size_t e, unsigned want) {
        return bin_fit(&c->in->demand[e], e, b, c->custom_used + b->custom_off, want);
}

static void bin_take(struct ctx *c, struct bin *b, size_t e, unsigned k) {
        const struct ns_demand *d = &c->in->demand[e];
        if (k == 0)
                return;
        b->cpus += k * d->cpus;
        b->gpus += k * d->gpus;
        b->memory += k * d->memory;
        for (size_t r = 0; r < d->n_custom; r++) {
                size_t i;
                if (d->custom[r].amount > EPS && find_custom(b->shape, d->custom[r].name, &i))
                        c->custom_used[b->custom_off + i] += k * d->custom[r].amount;
        }
        if (b->cur_entry != e) {
                b->cur_entry = e;
                b->cur_count = 0;
                if (!b->first_key)
                        b->first_key = d->key;
                b->n_keys++;
        }
        b->cur_count += k;
        b->packed += k;
}

/* Whether a fresh node of group g holds one replica of entry e. */
static bool group_fits(const struct ctx *c, int g, size_t e) {
        struct bin fresh = { .shape = &c->in->groups[g].shape, .cur_entry = SIZE_MAX };
        return bin_fit(&c->in->demand[e], e, &fresh, NULL, 1) == 1;
}

static bool group_eligible(const struct ctx *c, int g) {
        const struct ns_group *gr = &c->in->groups[g];
        return gr->launchable && !in_backoff(c, g) && c->count[g] < gr->max_nodes;
}

static int cmp_group_pref(const void *a, const void *b, void *userdata) {
        const struct ns_group *groups = userdata;
        size_t i = *(const size_t *)a, j = *(const size_t *)b;
        const struct ns_group *x = &groups[i], *y = &groups[j];
        bool xc = x->cost >= 0, yc = y->cost >= 0;

        if (xc != yc)
                return xc ? -1 : 1;
        if (xc && x->cost != y->cost)
                return x->cost < y->cost ? -1 : 1;
        if (x->shape.cpus != y->shape.cpus)
                return x->shape.cpus < y->shape.cpus ? -1 : 1;
        if (x->shape.memory != y->shape.memory)
                return x->shape.memory < y->shape.memory ? -1 : 1;
        if (x->shape.gpus != y->shape.gpus)
                return x->shape.gpus < y->shape.gpus ? -1 : 1;
        return i < j ? -1 : i > j;
}

static int cmp_demand_size(const void *a, const void *b, void *userdata) {
        const struct ns_demand *dem = userdata;
        size_t i = *(const size_t *)a, j = *(const size_t *)b;
        const struct ns_demand *x = &dem[i], *y = &dem[j];

        if (x->gpus != y->gpus)
                return x->gpus > y->gpus ? -1 : 1;
        if (x->cpus != y->cpus)
                return x->cpus > y->cpus ? -1 : 1;
        if (x->memory != y->memory)
                return x->memory > y->memory ? -1 : 1;
        return i < j ? -1 : i > j;
}

static void fmt_bytes(char *buf, size_t size, uint64_t v) {
        if (v >= (1ull << 30))
                snprintf(buf, size, "%.1f GiB", (double)v / (double)(1ull << 30));
        else
                snprintf(buf, size, "%.0f MiB", (double)v / (double)(1ull << 20));
}

/* Says why entry e fits no group's shape: the first amount no group offers, else the mix. */
static void why_no_shape(const struct ctx *c, size_t e, char *buf, size_t size) {
        const struct ns_input *in = c->in;
        const struct ns_demand *d = &in->demand[e];
        int gc = -1, gg = -1, gm = -1;

        if (in->n_groups == 0) {
                snprintf(buf, size, "%s: no worker groups are configured", d->key);
                return;
        }
        for (int g = 0; g < (int)in->n_groups; g++) {
                const struct ns_shape *s = &in->groups[g].shape;
                if (gg < 0 || s->gpus > in->groups[gg].shape.gpus)
                        gg = g;
                if (gc < 0 || s->cpus > in->groups[gc].shape.cpus)
                        gc = g;
                if (gm < 0 || s->memory > in->groups[gm].shape.memory)
                        gm = g;
        }
        if (d->gpus > in->groups[gg].shape.gpus + EPS) {
                snprintf(buf, size, "%s needs %g GPUs; the largest group shape (%s) has %g", d->key, d->gpus,
                         in->groups[gg].name, in->groups[gg].shape.gpus);
                return;
        }
        if (d->cpus > in->groups[gc].shape.cpus + EPS) {
                snprintf(buf, size, "%s needs %g CPUs; the largest group shape (%s) has %g", d->key, d->cpus,
                         in->groups[gc].name, in->groups[gc].shape.cpus);
                return;
        }
        if (d->memory > in->groups[gm].shape.memory) {
                char need[32], have[32];
                fmt_bytes(need, sizeof(need), d->memory);
                fmt_bytes(have, sizeof(have), in->groups[gm].shape.memory);
                snprintf(buf, size, "%s needs %s memory; the largest group shape (%s) has %s", d->key, need,
                         in->groups[gm].name, have);
                return;
        }
        for (size_t r = 0; r < d->n_custom; r++) {
                if (d->custom[r].amount <= EPS)
                        continue;
                int best = -1;
                double most = 0;
                for (int g = 0; g < (int)in->n_groups; g++) {
                        size_t i;
                        const struct placement_resource *have = find_custom(&in->groups[g].shape, d->custom[r].name, &i);
                        if (have && (best < 0 || have->amount > most)) {
                                best = g;
                                most = have->amount;
                        }
                }
                if (best < 0) {
                        snprintf(buf, size, "%s needs %g of resource \"%s\"; no group shape has it", d->key,
                                 d->custom[r].amount, d->custom[r].name);
                        return;
                }
                if (d->custom[r].amount > most + EPS) {
                        snprintf(buf, size, "%s needs %g of resource \"%s\"; the largest group shape (%s) has %g",
                                 d->key, d->custom[r].amount, d->custom[r].name, in->groups[best].name, most);
                        return;
                }
        }
        snprintf(buf, size, "%s needs %g CPUs, %g GPUs and its resources on one node; no group shape has all of them",
                 d->key, d->cpus, d->gpus);
}

static void add_unschedulable(struct ctx *c, unsigned n, const char *reason) {
        if (c->unschedulable == 0)
                snprintf(c->unschedulable_reason, sizeof(c->unschedulable_reason), "%s", reason);
        c->unschedulable += n;
}

/* Packs `left` replicas of entry e into bins, opening new nodes (2c) as needed. Returns 0 or
 * -ENOMEM. */
static int pack_entry(struct ctx *c, size_t e) {
        const struct ns_input *in = c->in;
        const struct ns_demand *d = &in->demand[e];
        unsigned left = d->count;

        for (size_t b = 0; b < c->n_bins && left > 0; b++) {
                unsigned k = bin_fit_ctx(c, &c->bins[b], e, left);
                bin_take(c, &c->bins[b], e, k);
                left -= k;
        }
        while (left > 0) {
                int pick = -1;
                bool any_fit = false, waiting = false;
                int blocked = -1;

                for (size_t o = 0; o < in->n_groups; o++) {
                        int g = (int)c->order[o];
                        if (!group_fits(c, g, e))
                                continue;
                        any_fit = true;
                        if (group_eligible(c, g)) {
                                pick = g;
                                break;
                        }
                        if (in->groups[g].launchable && in_backoff(c, g) && c->count[g] < in->groups[g].max_nodes)
                                waiting = true;
                        else if (blocked < 0)
                                blocked = g;
                }
                if (pick >= 0 && c->n_opened >= NS_MAX_NEW_NODES) {
                        char why[256];
                        snprintf(why, sizeof(why), "%s: more than %u new nodes would be needed in one pass", d->key,
                                 NS_MAX_NEW_NODES);
                        add_unschedulable(c, left, why);
                        return 0;
                }
                if (pick < 0) {
                        char why[256];
                        if (!any_fit)
                                why_no_shape(c, e, why, sizeof(why));
                        else if (waiting)
                                return 0; /* pending until the backoff ends, not unschedulable */
                        else if (!in->groups[blocked].launchable)
                                snprintf(why, sizeof(why), "%s: group %s fits but has no provider to launch nodes",
                                         d->key, in->groups[blocked].name);
                        else
                                snprintf(why, sizeof(why), "%s: group %s is at max_nodes (%d)", d->key,
                                         in->groups[blocked].name, in->groups[blocked].max_nodes);
                        add_unschedulable(c, left, why);
                        return 0;
                }
                long b = add_bin(c, BIN_NEW, -1, pick, &in->groups[pick].shape);
                if (b < 0)
                        return (int)b;
                unsigned k = bin_fit_ctx(c, &c->bins[b], e, left);
                bin_take(c, &c->bins[b], e, k);
                left -= k;
        }
        return 0;
}

/* Rule 3: returns whether demand may launch now, and updates *m. */
static bool batch_ready(const struct ns_input *in, struct ns_memory *m) {
        uint64_t sig = 0;
        bool any = false;

        for (size_t d = 0; d < in->n_demand; d++) {
                if (in->demand[d].count == 0)
                        continue;
                uint64_t h = 1469598103934665603ull;
                for (const char *p = in->demand[d].key; *p; p++)
                        h = (h ^ (unsigned char)*p) * 1099511628211ull;
                h = (h ^ in->demand[d].count) * 1099511628211ull;
                h ^= h >> 29;
                sig += h * 0x9e3779b97f4a7c15ull; /* a sum: the order of the entries does not matter */
                any = true;
        }
        if (!any) {
                *m = (struct ns_memory){ 0 };
                return false;
        }
        sig |= 1; /* 0 means "no demand" */
        if (m->demand_sig == 0) {
                m->demand_since_ns = m->demand_changed_ns = in->now_ns;
        } else if (m->demand_sig != sig)
                m->demand_changed_ns = in->now_ns;
        m->demand_sig = sig;
        if (in->opt.mode == NS_AGGRESSIVE)
                return true;
        /* A clock that went back (now before the window) counts as no time passed. */
        uint64_t quiet = in->now_ns > m->demand_changed_ns ? in->now_ns - m->demand_changed_ns : 0;
        uint64_t age = in->now_ns > m->demand_since_ns ? in->now_ns - m->demand_since_ns : 0;
        return quiet >= in->opt.batch_idle_ns || age >= in->opt.batch_max_ns;
}

/* Rules 1, and the counts every later rule reads. */
static int delete_late_nodes(struct ctx *c) {
        const struct ns_input *in = c->in;

        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (!managed(n) || !coming(n))
                        continue;
                const struct ns_group *gr = &in->groups[n->group];
                double age = since_s(c, n->launched_ns);
                if (age <= gr->boot_timeout_s)
                        continue;
                struct ns_action *a = push_action(c, NS_DELETE, n->group, (int)i, -1);
                if (!a)
                        return -ENOMEM;
                snprintf(a->reason, sizeof(a->reason), "node %s did not join within %g s (launched %.0f s ago)",
                         n->name, gr->boot_timeout_s, age);
                c->deleted[i] = true;
        }
        return 0;
}

static bool live(const struct ctx *c, size_t i) {
        return managed(&c->in->nodes[i]) && active(&c->in->nodes[i]) && !c->deleted[i];
}

/* A live replacement whose replaced node is still there (not DELETING). */
static bool surging(const struct ctx *c, size_t i) {
        const struct ns_node *n = &c->in->nodes[i];
        return n->replaces >= 0 && live(c, i) && c->in->nodes[n->replaces].state != NS_DELETING;
}

static void count_nodes(struct ctx *c) {
        const struct ns_input *in = c->in;

        for (size_t i = 0; i < in->n_nodes; i++)
                c->repl[i] = -1;
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (n->replaces >= 0 && live(c, i))
                        c->repl[n->replaces] = (int)i;
                if (surging(c, i))
                        c->surge[n->group]++;
                if (live(c, i) && coming(n)) {
                        c->coming[n->group]++;
                        c->inflight++;
                }
        }
        for (size_t i = 0; i < in->n_nodes; i++)
                if (live(c, i) && !(outdated(in, &in->nodes[i]) && c->repl[i] >= 0))
                        c->count[in->nodes[i].group]++;
        memcpy(c->existing, c->count, in->n_groups * sizeof(int));
}

/* Rule 2: bins for existing capacity and min_nodes, then the demand, largest first. */
static int pack_demand(struct ctx *c) {
        const struct ns_input *in = c->in;

        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                c->bin_of[i] = -1;
                /* A node with a replacement is on its way out: what it has free would be lost. */
                if (n->state != NS_ALIVE || n->cordoned || c->repl[i] >= 0)
                        continue;
                long b = add_bin(c, BIN_FREE, (int)i, n->group, &n->free);
                if (b < 0)
                        return (int)b;
                c->bin_of[i] = (int)b;
        }
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (!live(c, i) || !coming(n) || surging(c, i))
                        continue;
                long b = add_bin(c, BIN_COMING, (int)i, n->group, &in->groups[n->group].shape);
                if (b < 0)
                        return (int)b;
        }
        for (size_t g = 0; g < in->n_groups; g++) {
                const struct ns_group *gr = &in->groups[g];
                if (!gr->launchable || in_backoff(c, (int)g))
                        continue;
                while (c->count[g] < gr->min_nodes && c->n_opened < NS_MAX_NEW_NODES) {
                        long b = add_bin(c, BIN_MIN, -1, (int)g, &gr->shape);
                        if (b < 0)
                                return (int)b;
                }
        }

        _cleanup_free_ size_t *idx = malloc(MAX(in->n_demand, (size_t)1) * sizeof(size_t));
        if (!idx)
                return -ENOMEM;
        for (size_t d = 0; d < in->n_demand; d++) {
                idx[d] = d;
                c->pending += in->demand[d].count;
        }
        qsort_r(idx, in->n_demand, sizeof(size_t), cmp_demand_size, (void *)in->demand);
        for (size_t k = 0; k < in->n_demand; k++) {
                int r = pack_entry(c, idx[k]);
                if (r < 0)
                        return r;
        }
        for (size_t b = 0; b < c->n_bins; b++)
                if (c->bins[b].kind != BIN_FREE && c->bins[b].packed > 0)
                        c->wanted[c->bins[b].group]++;
        return 0;
}

static int cmp_idle(const void *a, const void *b, void *userdata) {
        const struct ns_node *nodes = userdata;
        size_t i = *(const size_t *)a, j = *(const size_t *)b;
        if (nodes[i].idle_since_ns != nodes[j].idle_since_ns)
                return nodes[i].idle_since_ns < nodes[j].idle_since_ns ? -1 : 1;
        return i < j ? -1 : i > j;
}

/* Rule 6. */
static int drain_idle(struct ctx *c) {
        const struct ns_input *in = c->in;
        _cleanup_free_ size_t *cand = malloc(MAX(in->n_nodes, (size_t)1) * sizeof(size_t));
        _cleanup_free_ int *room = malloc(MAX(in->n_groups, (size_t)1) * sizeof(int));
        size_t n_cand = 0;

        if (!cand || !room)
                return -ENOMEM;
        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (!managed(n) || n->state != NS_ALIVE || n->cordoned || c->acted[i] || n->replicas > 0 ||
                    n->idle_since_ns == 0 || n->idle_since_ns > c->now)
                        continue;
                if (since_s(c, n->idle_since_ns) < in->groups[n->group].idle_timeout_s)
                        continue;
                if (c->bin_of[i] >= 0 && c->bins[c->bin_of[i]].packed > 0)
                        continue;
                if (surging(c, i))
                        continue;
                cand[n_cand++] = i;
        }
        qsort_r(cand, n_cand, sizeof(size_t), cmp_idle, (void *)in->nodes);
        /* What exists, not the nodes this pass opens, is what min_nodes protects. */
        for (size_t g = 0; g < in->n_groups; g++)
                room[g] = c->existing[g] - in->groups[g].min_nodes;

        for (size_t k = 0; k < n_cand; k++) {
                size_t i = cand[k];
                const struct ns_node *n = &in->nodes[i];
                bool uncounted = outdated(in, n) && c->repl[i] >= 0;
                if (!uncounted && room[n->group] <= 0)
                        continue;
                if (!uncounted)
                        room[n->group]--;
                struct ns_action *a = push_action(c, NS_DRAIN, n->group, (int)i, -1);
                if (!a)
                        return -ENOMEM;
                snprintf(a->reason, sizeof(a->reason), "node %s idle for %.0f s (idle_timeout_s %g)", n->name,
                         since_s(c, n->idle_since_ns), in->groups[n->group].idle_timeout_s);
        }
        return 0;
}

/* Rule 7, the drain half: an ALIVE node whose replacement is ALIVE. */
static int drain_replaced(struct ctx *c) {
        const struct ns_input *in = c->in;

        for (size_t i = 0; i < in->n_nodes; i++) {
                const struct ns_node *n = &in->nodes[i];
                if (!managed(n) || n->state != NS_ALIVE || n->replaces < 0 || c->deleted[i])
                        continue;
                size_t r = (size_t)n->replaces;
                const struct ns_node *old = &in->nodes[r];
                if (!managed(old) || old->state != NS_ALIVE || c->acted[r])
                        continue;
                struct ns_action *a = push_action(c, NS_DRAIN, old->group, (int)r, -1);
                if (!a)
                        return -ENOMEM;
                snprintf(a->reason, sizeof(a->reason), "node %s replaced by %s (group %s's config changed)",
                         old->name, n->name, in->groups[old->group].name);
        }
        return 0;
}

static int cmp_action(const void *a, const void *b) {
        const struct ns_action *x = a, *y = b;
        return x->node < y->node ? -1 : x->node > y->node;
}

/* Rule 4: whether group g may launch one more node now. */
static bool may_launch(const struct ctx *c, int g) {
        if (c->inflight >= (unsigned)c->in->opt.max_concurrent_launches)
                return false;
        if (c->in->opt.mode == NS_CONSERVATIVE && (c->coming[g] > 0 || c->launched[g] > 0))
                return false;
        return true;
}

static struct ns_action *grant(struct ctx *c, int g, int replaces) {
        struct ns_action *a = push_action(c, NS_LAUNCH, g, -1, replaces);
        if (a) {
                c->launched[g]++;
                c->inflight++;
        }
        return a;
}

static int launch_bins(struct ctx *c, enum bin_kind kind) {
        const struct ns_input *in = c->in;

        for (size_t b = 0; b < c->n_bins; b++) {
                const struct bin *bn = &c->bins[b];
                if (bn->kind != kind || !may_launch(c, bn->group))
                        continue;
                const struct ns_group *gr = &in->groups[bn->group];
                unsigned before = c->launched[bn->group];
                struct ns_action *a = grant(c, bn->group, -1);
                if (!a)
                        return -ENOMEM;
                if (kind == BIN_MIN) {
                        snprintf(a->reason, sizeof(a->reason), "group %s has %d nodes, min_nodes is %d", gr->name,
                                 c->existing[bn->group] + (int)before, gr->min_nodes);
                } else if (bn->n_keys > 1)
                        snprintf(a->reason, sizeof(a->reason),
                                 "%u pending replicas (%s and %u more deployments) fit no existing node; group %s is the cheapest that fits",
                                 bn->packed, bn->first_key, bn->n_keys - 1, gr->name);
                else
                        snprintf(a->reason, sizeof(a->reason),
                                 "%u pending replicas of %s fit no existing node; group %s is the cheapest that fits",
                                 bn->packed, bn->first_key ? bn->first_key : "?", gr->name);
        }
        return 0;
}

static int cmp_launched(const void *a, const void *b, void *userdata) {
        const struct ns_node *nodes = userdata;
        size_t i = *(const size_t *)a, j = *(const size_t *)b;
        if (nodes[i].launched_ns != nodes[j].launched_ns)
                return nodes[i].launched_ns < nodes[j].launched_ns ? -1 : 1;
        return i < j ? -1 : i > j;
}

/* Rule 7, the launch half. */
static int launch_replacements(struct ctx *c) {
        const struct ns_input *in = c->in;
        _cleanup_free_ size_t *cand = malloc(MAX(in->n_nodes, (size_t)1) * sizeof(size_t));
        size_t n_cand = 0;

        if (!cand)
                return -ENOMEM;
        for (size_t i = 0; i < in->n_nodes; i++)
                if (live(c, i) && outdated(in, &in->nodes[i]) && c->repl[i] < 0 && !c->acted[i])
                        cand[n_cand++] = i;
        qsort_r(cand, n_cand, sizeof(size_t), cmp_launched, (void *)in->nodes);
        for (size_t k = 0; k < n_cand; k++) {
                const struct ns_node *n = &in->nodes[cand[k]];
                int g = n->group;
                const struct ns_group *gr = &in->groups[g];
                if (!gr->launchable || in_backoff(c, g) || c->surge[g] >= (unsigned)gr->max_surge || !may_launch(c, g))
                        continue;
                struct ns_action *a = grant(c, g, (int)cand[k]);
                if (!a)
                        return -ENOMEM;
                c->surge[g]++;
                snprintf(a->reason, sizeof(a->reason),
                         "node %s runs an outdated config of group %s; replacement %u of max_surge %d", n->name,
                         gr->name, c->surge[g], gr->max_surge);
        }
        return 0;
}

static void ctx_done(struct ctx *c) {
        free(c->bins);
        free(c->custom_used);
        free(c->count);
        free(c->existing);
        free(c->coming);
        free(c->launched);
        free(c->surge);
        free(c->order);
        free(c->wanted);
        free(c->acted);
        free(c->deleted);
        free(c->repl);
        free(c->bin_of);
        free(c->acts);
}

static int decide(struct ctx *c, struct ns_memory *mem, bool *ret_ready) {
        const struct ns_input *in = c->in;
        size_t ng = MAX(in->n_groups, (size_t)1), nn = MAX(in->n_nodes, (size_t)1);
        int r;

        c->count = calloc(ng, sizeof(int));
        c->existing = calloc(ng, sizeof(int));
        c->coming = calloc(ng, sizeof(unsigned));
        c->launched = calloc(ng, sizeof(unsigned));
        c->surge = calloc(ng, sizeof(unsigned));
        c->order = calloc(ng, sizeof(size_t));
        c->wanted = calloc(ng, sizeof(unsigned));
        c->acted = calloc(nn, sizeof(bool));
        c->deleted = calloc(nn, sizeof(bool));
        c->repl = calloc(nn, sizeof(int));
        c->bin_of = calloc(nn, sizeof(int));
        if (!c->count || !c->existing || !c->coming || !c->launched || !c->surge || !c->order || !c->wanted || !c->acted ||
            !c->deleted || !c->repl || !c->bin_of)
                return -ENOMEM;
        for (size_t g = 0; g < in->n_groups; g++)
                c->order[g] = g;
        qsort_r(c->order, in->n_groups, sizeof(size_t), cmp_group_pref, (void *)in->groups);

        r = delete_late_nodes(c);
        if (r < 0)
                return r;
        count_nodes(c);
        r = pack_demand(c);
        if (r < 0)
                return r;

        size_t first_drain = c->n_acts;
        r = drain_idle(c);
        if (r < 0)
                return r;
        r = drain_replaced(c);
        if (r < 0)
                return r;
        if (c->n_acts > first_drain)
                qsort(c->acts + first_drain, c->n_acts - first_drain, sizeof(*c->acts), cmp_action);

        bool ready = batch_ready(in, mem);
        r = launch_bins(c, BIN_MIN);
        if (r < 0)
                return r;
        if (ready) {
                r = launch_bins(c, BIN_NEW);
                if (r < 0)
                        return r;
        }
        r = launch_replacements(c);
        if (r < 0)
                return r;
        *ret_ready = ready;
        return 0;
}

int nodescale_decide(const struct ns_input *in, struct ns_memory *mem, struct ns_action **ret_actions,
                     size_t *ret_n, struct ns_summary *sum) {
        struct ctx c = { .in = in };
        struct ns_memory m;
        bool ready = false;
        int r;

        if (sum)
                *sum = (struct ns_summary){ 0 };
        if (!in || !mem || !ret_actions || !ret_n || !sum)
                return -EINVAL;
        r = validate(in);
        if (r < 0)
                return r;

        c.now = in->now_ns;
        m = *mem;
        r = decide(&c, &m, &ready);
        if (r < 0) {
                ctx_done(&c);
                return r;
        }

        sum->pending = c.pending;
        sum->unschedulable = c.unschedulable;
        memcpy(sum->unschedulable_reason, c.unschedulable_reason, sizeof(sum->unschedulable_reason));
        sum->wanted = TAKE_PTR(c.wanted);
        sum->ready = ready;
        *mem = m;
        *ret_n = c.n_acts;
        *ret_actions = c.n_acts ? TAKE_PTR(c.acts) : NULL;
        ctx_done(&c);
        return 0;
}

void ns_summary_done(struct ns_summary *sum) {
        if (!sum)
                return;
        free(sum->wanted);
        *sum = (struct ns_summary){ 0 };
}
