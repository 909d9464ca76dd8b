/* The routing table, its whole and delta `routing` messages (shapes in routing_table.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctlmsg.h"
#include "macros.h"
#include "routing_table.h"

/* qsort() of n items; an empty table's arrays are NULL, which qsort() may not be given (its base
 * is declared nonnull: found by fuzz_routing). */
static void sort_n(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *)) {
        if (n > 1)
                qsort(base, n, size, cmp);
}

void routing_table_init(struct routing_table *t) {
        *t = (struct routing_table){};
}

void routing_table_done(struct routing_table *t) {
        if (!t)
                return;
        for (size_t i = 0; i < t->n_nodes; i++) {
                free(t->nodes[i].name);
                free(t->nodes[i].address);
        }
        for (size_t i = 0; i < t->n_deps; i++) {
                free(t->deps[i].app);
                free(t->deps[i].name);
        }
        free(t->nodes);
        free(t->deps);
        free(t->ready);
        routing_table_init(t);
}

/* Room for one more of n items of size sz in *v (capacity *cap, at most max). */
static int grow(void **v, size_t *cap, size_t n, size_t sz, size_t max) {
        if (n < *cap)
                return 0;
        if (n >= max)
                return -E2BIG;
        size_t c = *cap ? MIN(*cap * 2, max) : 16;
        void *p = realloc(*v, c * sz);
        if (!p)
                return -ENOMEM;
        *v = p;
        *cap = c;
        return 0;
}

int routing_table_add_node(struct routing_table *t, uint32_t id, const char *name, const char *address, int data_port,
                           uint64_t min_serial) {
        int r = grow((void **)&t->nodes, &t->cap_nodes, t->n_nodes, sizeof *t->nodes, ROUTING_MAX_NODES);
        if (r < 0)
                return r;
        struct routing_node n = { .id = id, .name = strdup(name), .address = strdup(address), .data_port = data_port,
                                  .min_serial = min_serial };
        if (!n.name || !n.address) {
                free(n.name);
                free(n.address);
                return -ENOMEM;
        }
        t->nodes[t->n_nodes++] = n;
        return 0;
}

int routing_table_add_dep(struct routing_table *t, uint32_t id, const char *app, const char *name, int max_ongoing,
                          int placed) {
        int r = grow((void **)&t->deps, &t->cap_deps, t->n_deps, sizeof *t->deps, ROUTING_MAX_DEPLOYMENTS);
        if (r < 0)
                return r;
        struct routing_dep d = { .id = id, .app = strdup(app), .name = strdup(name), .max_ongoing = max_ongoing,
                                 .placed = placed };
        if (!d.app || !d.name) {
                free(d.app);
                free(d.name);
                return -ENOMEM;
        }
        t->deps[t->n_deps++] = d;
        return 0;
}

int routing_table_add_ready(struct routing_table *t, uint32_t dep, uint32_t node, uint32_t count) {
        if (count == 0)
                return 0;
        int r = grow((void **)&t->ready, &t->cap_ready, t->n_ready, sizeof *t->ready, ROUTING_MAX_READY);
        if (r < 0)
                return r;
        t->ready[t->n_ready++] = (struct routing_ready){ dep, node, count };
        return 0;
}

static int node_id_cmp(const void *a, const void *b) {
        uint32_t x = ((const struct routing_node *)a)->id, y = ((const struct routing_node *)b)->id;
        return x < y ? -1 : x > y;
}

static int dep_id_cmp(const void *a, const void *b) {
        uint32_t x = ((const struct routing_dep *)a)->id, y = ((const struct routing_dep *)b)->id;
        return x < y ? -1 : x > y;
}

static int ready_cmp(const void *a, const void *b) {
        const struct routing_ready *x = a, *y = b;
        if (x->dep != y->dep)
                return x->dep < y->dep ? -1 : 1;
        return x->node < y->node ? -1 : x->node > y->node;
}

static int str_ptr_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static int dep_key_cmp(const void *a, const void *b) {
        const struct routing_dep *x = *(const struct routing_dep *const *)a, *y = *(const struct routing_dep *const *)b;
        int c = strcmp(x->app, y->app);
        return c ? c : strcmp(x->name, y->name);
}

static const struct routing_node *node_by_id(const struct routing_table *t, uint32_t id) {
        struct routing_node key = { .id = id };
        return t->n_nodes ? bsearch(&key, t->nodes, t->n_nodes, sizeof *t->nodes, node_id_cmp) : NULL;
}

static const struct routing_dep *dep_by_id(const struct routing_table *t, uint32_t id) {
        struct routing_dep key = { .id = id };
        return t->n_deps ? bsearch(&key, t->deps, t->n_deps, sizeof *t->deps, dep_id_cmp) : NULL;
}

int routing_table_seal(struct routing_table *t) {
        _cleanup_free_ char **names = NULL;
        _cleanup_free_ const struct routing_dep **keys = NULL;

        sort_n(t->nodes, t->n_nodes, sizeof *t->nodes, node_id_cmp);
        sort_n(t->deps, t->n_deps, sizeof *t->deps, dep_id_cmp);
        sort_n(t->ready, t->n_ready, sizeof *t->ready, ready_cmp);
        names = calloc(t->n_nodes + 1, sizeof *names);
        keys = calloc(t->n_deps + 1, sizeof *keys);
        if (!names || !keys)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_nodes; i++) {
                if (i > 0 && t->nodes[i].id == t->nodes[i - 1].id)
                        return -EINVAL;
                names[i] = t->nodes[i].name;
        }
        sort_n(names, t->n_nodes, sizeof *names, str_ptr_cmp);
        for (size_t i = 1; i < t->n_nodes; i++)
                if (streq(names[i], names[i - 1]))
                        return -EINVAL;
        for (size_t i = 0; i < t->n_deps; i++) {
                if (i > 0 && t->deps[i].id == t->deps[i - 1].id)
                        return -EINVAL;
                keys[i] = &t->deps[i];
        }
        sort_n(keys, t->n_deps, sizeof *keys, dep_key_cmp);
        for (size_t i = 1; i < t->n_deps; i++)
                if (dep_key_cmp(&keys[i], &keys[i - 1]) == 0)
                        return -EINVAL;
        for (size_t i = 0; i < t->n_ready; i++) {
                const struct routing_ready *x = &t->ready[i];
                if ((i > 0 && ready_cmp(x, x - 1) == 0) || x->count == 0 || !dep_by_id(t, x->dep) || !node_by_id(t, x->node))
                        return -EINVAL;
        }
        t->valid = true;
        return 0;
}

const struct routing_dep *routing_table_find_dep(const struct routing_table *t, size_t hint, const char *app,
                                                 const char *name) {
        if (hint < t->n_deps && streq(t->deps[hint].app, app) && streq(t->deps[hint].name, name))
                return &t->deps[hint];
        for (size_t i = 0; i < t->n_deps; i++)
                if (streq(t->deps[i].app, app) && streq(t->deps[i].name, name))
                        return &t->deps[i];
        return NULL;
}

/* ---- messages ---- */

static cJSON *node_json(const struct routing_node *n) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return NULL;
        cJSON_AddNumberToObject(o, "id", n->id);
        cJSON_AddStringToObject(o, "name", n->name);
        cJSON_AddStringToObject(o, "address", n->address);
        cJSON_AddNumberToObject(o, "data_port", n->data_port);
        if (n->min_serial) { /* as text: JSON numbers are doubles */
                char s[24];
                snprintf(s, sizeof s, "%" PRIu64, n->min_serial);
                cJSON_AddStringToObject(o, "min_serial", s);
        }
        return o;
}

static cJSON *dep_json(const struct routing_dep *d) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
                return NULL;
        cJSON_AddNumberToObject(o, "id", d->id);
        cJSON_AddStringToObject(o, "app", d->app);
        cJSON_AddStringToObject(o, "name", d->name);
        cJSON_AddNumberToObject(o, "max_ongoing", d->max_ongoing);
        cJSON_AddNumberToObject(o, "placed", d->placed);
        return o;
}

static cJSON *ready_json(uint32_t dep, uint32_t node, uint32_t count) {
        const int v[3] = { (int)dep, (int)node, (int)count };
        return cJSON_CreateIntArray(v, 3);
}

/* Adds item to the array called key of m, creating the array on first use. */
static int add_to(cJSON *m, const char *key, cJSON *item) {
        cJSON *a = cJSON_GetObjectItem(m, key);
        if (!item || (!a && !(a = cJSON_AddArrayToObject(m, key)))) {
                cJSON_Delete(item);
                return -ENOMEM;
        }
        return cJSON_AddItemToArray(a, item) ? 0 : -ENOMEM;
}

cJSON *routing_table_full_message(const struct routing_table *t) {
        cJSON *m = ctlmsg_new("routing");
        int r = 0;

        if (!m)
                return NULL;
        cJSON_AddNumberToObject(m, "version", (double)t->version);
        cJSON_AddBoolToObject(m, "full", true);
        if (!cJSON_AddArrayToObject(m, "nodes") || !cJSON_AddArrayToObject(m, "deployments") ||
            !cJSON_AddArrayToObject(m, "ready"))
                r = -ENOMEM;
        for (size_t i = 0; r >= 0 && i < t->n_nodes; i++)
                r = add_to(m, "nodes", node_json(&t->nodes[i]));
        for (size_t i = 0; r >= 0 && i < t->n_deps; i++)
                r = add_to(m, "deployments", dep_json(&t->deps[i]));
        for (size_t i = 0; r >= 0 && i < t->n_ready; i++)
                r = add_to(m, "ready", ready_json(t->ready[i].dep, t->ready[i].node, t->ready[i].count));
        if (r < 0) {
                cJSON_Delete(m);
                return NULL;
        }
        return m;
}

static bool node_same(const struct routing_node *a, const struct routing_node *b) {
        return streq(a->name, b->name) && streq(a->address, b->address) && a->data_port == b->data_port &&
               a->min_serial == b->min_serial;
}

static bool dep_same(const struct routing_dep *a, const struct routing_dep *b) {
        return streq(a->app, b->app) && streq(a->name, b->name) && a->max_ongoing == b->max_ongoing && a->placed == b->placed;
}

int routing_table_delta_message(const struct routing_table *old, const struct routing_table *new, cJSON **ret) {
        cJSON *m = ctlmsg_new("routing");
        bool changed = false;
        size_t i = 0, k = 0;
        int r = 0;

        if (!m)
                return -ENOMEM;
        /* First, as in the whole table: a receiver can tell where it stands from the start. */
        cJSON_AddNumberToObject(m, "version", (double)(old->version + 1));
        cJSON_AddNumberToObject(m, "base", (double)old->version);
        /* Both sides sorted by id: one merge each. */
        while (r >= 0 && (i < old->n_nodes || k < new->n_nodes)) {
                const struct routing_node *a = i < old->n_nodes ? &old->nodes[i] : NULL, *b = k < new->n_nodes ? &new->nodes[k] : NULL;
                if (a && (!b || a->id < b->id)) {
                        r = add_to(m, "nodes_removed", cJSON_CreateNumber(a->id));
                        i++;
                } else if (b && (!a || b->id < a->id)) {
                        r = add_to(m, "nodes", node_json(b));
                        k++;
                } else {
                        if (!node_same(a, b))
                                r = add_to(m, "nodes", node_json(b));
                        i++, k++;
                }
        }
        i = k = 0;
        while (r >= 0 && (i < old->n_deps || k < new->n_deps)) {
                const struct routing_dep *a = i < old->n_deps ? &old->deps[i] : NULL, *b = k < new->n_deps ? &new->deps[k] : NULL;
                if (a && (!b || a->id < b->id)) {
                        r = add_to(m, "deployments_removed", cJSON_CreateNumber(a->id));
                        i++;
                } else if (b && (!a || b->id < a->id)) {
                        r = add_to(m, "deployments", dep_json(b));
                        k++;
                } else {
                        if (!dep_same(a, b))
                                r = add_to(m, "deployments", dep_json(b));
                        i++, k++;
                }
        }
        i = k = 0;
        while (r >= 0 && (i < old->n_ready || k < new->n_ready)) {
                const struct routing_ready *a = i < old->n_ready ? &old->ready[i] : NULL, *b = k < new->n_ready ? &new->ready[k] : NULL;
                int c = !a ? 1 : !b ? -1 : ready_cmp(a, b);
                if (c < 0) {
                        /* Gone with its node or deployment: the removal says so. */
                        if (node_by_id(new, a->node) && dep_by_id(new, a->dep))
                                r = add_to(m, "ready", ready_json(a->dep, a->node, 0));
                        i++;
                } else if (c > 0) {
                        r = add_to(m, "ready", ready_json(b->dep, b->node, b->count));
                        k++;
                } else {
                        if (a->count != b->count)
                                r = add_to(m, "ready", ready_json(b->dep, b->node, b->count));
                        i++, k++;
                }
        }
        if (r < 0) {
                cJSON_Delete(m);
                return r;
        }
        changed = cJSON_GetArraySize(m) > 4; /* more than v, type, version, base */
        if (!changed) {
                cJSON_Delete(m);
                return 0;
        }
        *ret = m;
        return 1;
}

/* ---- applying ---- */

static int get_id(const cJSON *o, const char *key, uint32_t *ret, char *err, size_t errlen) {
        long long v;
        int r = ctl_get_int(o, key, 0, ROUTING_MAX_ID, true, &v, err, errlen);
        if (r >= 0)
                *ret = (uint32_t)v;
        return r;
}

static int parse_node(const cJSON *it, struct routing_table *into, char *err, size_t errlen) {
        const char *name, *address, *ms = NULL;
        long long port;
        uint32_t id;
        int r;

        if ((r = get_id(it, "id", &id, err, errlen)) < 0 || (r = ctl_get_string(it, "name", 200, true, &name, err, errlen)) < 0 ||
            (r = ctl_get_string(it, "address", 200, true, &address, err, errlen)) < 0 ||
            (r = ctl_get_int(it, "data_port", 1, 65535, true, &port, err, errlen)) < 0 ||
            (r = ctl_get_string(it, "min_serial", 20, false, &ms, err, errlen)) < 0)
                return r;
        if (!*name || (ms && (!*ms || strspn(ms, "0123456789") != strlen(ms)))) {
                snprintf(err, errlen, "field %s: invalid", !*name ? "name" : "min_serial");
                return -EINVAL;
        }
        r = routing_table_add_node(into, id, name, address, (int)port, ms ? strtoull(ms, NULL, 10) : 0);
        if (r == -E2BIG)
                snprintf(err, errlen, "field nodes: more than %d", ROUTING_MAX_NODES);
        return r == -E2BIG ? -EINVAL : r;
}

static int parse_dep(const cJSON *it, struct routing_table *into, char *err, size_t errlen) {
        const char *app, *name;
        long long mo, placed;
        uint32_t id;
        int r;

        if ((r = get_id(it, "id", &id, err, errlen)) < 0 || (r = ctl_get_string(it, "app", 200, true, &app, err, errlen)) < 0 ||
            (r = ctl_get_string(it, "name", 200, true, &name, err, errlen)) < 0 ||
            (r = ctl_get_int(it, "max_ongoing", 1, 1 << 20, true, &mo, err, errlen)) < 0 ||
            (r = ctl_get_int(it, "placed", 0, 10000000, true, &placed, err, errlen)) < 0)
                return r;
        r = routing_table_add_dep(into, id, app, name, (int)mo, (int)placed);
        if (r == -E2BIG)
                snprintf(err, errlen, "field deployments: more than %d", ROUTING_MAX_DEPLOYMENTS);
        return r == -E2BIG ? -EINVAL : r;
}

/* [dep, node, count] into *ret; count 0 only when zero_ok. */
static int parse_ready(const cJSON *it, bool zero_ok, struct routing_ready *ret, char *err, size_t errlen) {
        const cJSON *a = cJSON_GetArrayItem(it, 0), *b = cJSON_GetArrayItem(it, 1), *c = cJSON_GetArrayItem(it, 2);
        if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != 3 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) || !cJSON_IsNumber(c) ||
            a->valuedouble < 0 || a->valuedouble > ROUTING_MAX_ID || a->valuedouble != (double)(uint32_t)a->valuedouble ||
            b->valuedouble < 0 || b->valuedouble > ROUTING_MAX_ID || b->valuedouble != (double)(uint32_t)b->valuedouble ||
            c->valuedouble < (zero_ok ? 0 : 1) || c->valuedouble > ROUTING_MAX_COUNT ||
            c->valuedouble != (double)(uint32_t)c->valuedouble) {
                snprintf(err, errlen, "field ready: items must be [deployment id, node id, count]");
                return -EINVAL;
        }
        *ret = (struct routing_ready){ (uint32_t)a->valuedouble, (uint32_t)b->valuedouble, (uint32_t)c->valuedouble };
        return 0;
}

/* Sorted unique ids from an array of integers. */
static int parse_ids(const cJSON *arr, uint32_t **ret, size_t *ret_n, char *err, size_t errlen) {
        size_t n = 0;
        const cJSON *it;
        uint32_t *v = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *v);

        if (!v)
                return -ENOMEM;
        cJSON_ArrayForEach(it, arr) {
                if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > ROUTING_MAX_ID ||
                    it->valuedouble != (double)(uint32_t)it->valuedouble) {
                        free(v);
                        snprintf(err, errlen, "field %s: items must be ids", arr->string ? arr->string : "?");
                        return -EINVAL;
                }
                v[n++] = (uint32_t)it->valuedouble;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

static bool id_in(const uint32_t *v, size_t n, uint32_t id) {
        for (size_t lo = 0, hi = n; lo < hi;) {
                size_t mid = (lo + hi) / 2;
                if (v[mid] == id)
                        return true;
                if (v[mid] < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

static int u32_cmp(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return x < y ? -1 : x > y;
}

/* new = old without the removed nodes and deployments (and their ready counts). Returns 0 or
 * -ENOMEM/-EINVAL (a removal names what old does not have). */
static int copy_without(const struct routing_table *old, const uint32_t *rm_nodes, size_t n_rm_nodes,
                        const uint32_t *rm_deps, size_t n_rm_deps, struct routing_table *new, char *err, size_t errlen) {
        int r;
        for (size_t i = 0; i < n_rm_nodes; i++)
                if (!node_by_id(old, rm_nodes[i])) {
                        snprintf(err, errlen, "field nodes_removed: no node %" PRIu32, rm_nodes[i]);
                        return -EINVAL;
                }
        for (size_t i = 0; i < n_rm_deps; i++)
                if (!dep_by_id(old, rm_deps[i])) {
                        snprintf(err, errlen, "field deployments_removed: no deployment %" PRIu32, rm_deps[i]);
                        return -EINVAL;
                }
        for (size_t i = 0; i < old->n_nodes; i++) {
                const struct routing_node *n = &old->nodes[i];
                if (!id_in(rm_nodes, n_rm_nodes, n->id) &&
                    (r = routing_table_add_node(new, n->id, n->name, n->address, n->data_port, n->min_serial)) < 0)
                        return r;
        }
        for (size_t i = 0; i < old->n_deps; i++) {
                const struct routing_dep *d = &old->deps[i];
                if (!id_in(rm_deps, n_rm_deps, d->id) &&
                    (r = routing_table_add_dep(new, d->id, d->app, d->name, d->max_ongoing, d->placed)) < 0)
                        return r;
        }
        for (size_t i = 0; i < old->n_ready; i++) {
                const struct routing_ready *x = &old->ready[i];
                if (!id_in(rm_nodes, n_rm_nodes, x->node) && !id_in(rm_deps, n_rm_deps, x->dep) &&
                    (r = routing_table_add_ready(new, x->dep, x->node, x->count)) < 0)
                        return r;
        }
        return 0;
}

/* Replaces the entry with the same id (an upsert) or keeps the new one: entries [from, n) of
 * the node array were added by the message, on top of the old ones kept (sorted, < from). */
static void nodes_upsert(struct routing_table *t, size_t from) {
        size_t keep = from;
        for (size_t i = from; i < t->n_nodes; i++) {
                struct routing_node *old = (struct routing_node *)node_by_id(&(struct routing_table){ .nodes = t->nodes, .n_nodes = from },
                                                                             t->nodes[i].id);
                if (!old) {
                        t->nodes[keep++] = t->nodes[i];
                        continue;
                }
                free(old->name);
                free(old->address);
                *old = t->nodes[i];
        }
        t->n_nodes = keep;
}

static void deps_upsert(struct routing_table *t, size_t from) {
        size_t keep = from;
        for (size_t i = from; i < t->n_deps; i++) {
                struct routing_dep *old = (struct routing_dep *)dep_by_id(&(struct routing_table){ .deps = t->deps, .n_deps = from },
                                                                          t->deps[i].id);
                if (!old) {
                        t->deps[keep++] = t->deps[i];
                        continue;
                }
                free(old->app);
                free(old->name);
                *old = t->deps[i];
        }
        t->n_deps = keep;
}

int routing_table_apply(struct routing_table *t, const cJSON *m, char *err, size_t errlen) {
        const cJSON *nodes, *deps, *ready, *nodes_rm, *deps_rm, *it;
        _cleanup_free_ uint32_t *rm_nodes = NULL, *rm_deps = NULL;
        _cleanup_free_ struct routing_ready *sets = NULL;
        size_t n_rm_nodes = 0, n_rm_deps = 0, n_sets = 0;
        struct routing_table new;
        long long version, base = -1;
        bool full = false;
        int r;

        if ((r = ctl_get_int(m, "version", 0, 1ll << 53, true, &version, err, errlen)) < 0 ||
            (r = ctl_get_bool(m, "full", false, &full, err, errlen)) < 0 ||
            (r = ctl_get_int(m, "base", 0, 1ll << 53, !full, &base, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "nodes", ROUTING_MAX_NODES, false, &nodes, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "deployments", ROUTING_MAX_DEPLOYMENTS, false, &deps, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "ready", ROUTING_MAX_READY, false, &ready, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "nodes_removed", ROUTING_MAX_NODES, false, &nodes_rm, err, errlen)) < 0 ||
            (r = ctl_get_array(m, "deployments_removed", ROUTING_MAX_DEPLOYMENTS, false, &deps_rm, err, errlen)) < 0)
                return r;
        if (full && (nodes_rm || deps_rm || cJSON_GetObjectItem(m, "base"))) {
                snprintf(err, errlen, "a full table has no base and removes nothing");
                return -EINVAL;
        }
        if (!full && version != base + 1) {
                snprintf(err, errlen, "field version: must be base + 1");
                return -EINVAL;
        }
        if (!full && (!t->valid || (uint64_t)base != t->version))
                return -ESTALE;
        if ((r = parse_ids(nodes_rm, &rm_nodes, &n_rm_nodes, err, errlen)) < 0 ||
            (r = parse_ids(deps_rm, &rm_deps, &n_rm_deps, err, errlen)) < 0)
                return r;
        sort_n(rm_nodes, n_rm_nodes, sizeof *rm_nodes, u32_cmp);
        sort_n(rm_deps, n_rm_deps, sizeof *rm_deps, u32_cmp);
        sets = calloc((size_t)cJSON_GetArraySize(ready) + 1, sizeof *sets);
        if (!sets)
                return -ENOMEM;
        cJSON_ArrayForEach(it, ready)
                if ((r = parse_ready(it, !full, &sets[n_sets++], err, errlen)) < 0)
                        return r;

        routing_table_init(&new);
        if (!full && (r = copy_without(t, rm_nodes, n_rm_nodes, rm_deps, n_rm_deps, &new, err, errlen)) < 0)
                goto fail;
        size_t kept_nodes = new.n_nodes, kept_deps = new.n_deps;
        cJSON_ArrayForEach(it, nodes)
                if ((r = parse_node(it, &new, err, errlen)) < 0)
                        goto fail;
        cJSON_ArrayForEach(it, deps)
                if ((r = parse_dep(it, &new, err, errlen)) < 0)
                        goto fail;
        /* An id twice in one message is an error, not an upsert: seal() sees it only among
         * the message's own entries when they are checked before merging. */
        if (new.n_nodes > kept_nodes) /* never new.nodes + 0 on NULL (undefined) */
                qsort(new.nodes + kept_nodes, new.n_nodes - kept_nodes, sizeof *new.nodes, node_id_cmp);
        if (new.n_deps > kept_deps)
                qsort(new.deps + kept_deps, new.n_deps - kept_deps, sizeof *new.deps, dep_id_cmp);
        for (size_t i = kept_nodes + 1; i < new.n_nodes; i++)
                if (new.nodes[i].id == new.nodes[i - 1].id) {
                        snprintf(err, errlen, "field nodes: id %" PRIu32 " twice", new.nodes[i].id);
                        r = -EINVAL;
                        goto fail;
                }
        for (size_t i = kept_deps + 1; i < new.n_deps; i++)
                if (new.deps[i].id == new.deps[i - 1].id) {
                        snprintf(err, errlen, "field deployments: id %" PRIu32 " twice", new.deps[i].id);
                        r = -EINVAL;
                        goto fail;
                }
        nodes_upsert(&new, kept_nodes);
        deps_upsert(&new, kept_deps);
        sort_n(new.nodes, new.n_nodes, sizeof *new.nodes, node_id_cmp);
        sort_n(new.deps, new.n_deps, sizeof *new.deps, dep_id_cmp);

        /* Ready counts: the message's settings replace the kept ones (both sorted, one merge). */
        sort_n(sets, n_sets, sizeof *sets, ready_cmp);
        for (size_t i = 1; i < n_sets; i++)
                if (ready_cmp(&sets[i], &sets[i - 1]) == 0) {
                        snprintf(err, errlen, "field ready: [%" PRIu32 ", %" PRIu32 "] twice", sets[i].dep, sets[i].node);
                        r = -EINVAL;
                        goto fail;
                }
        for (size_t i = 0; i < n_sets; i++)
                if (!dep_by_id(&new, sets[i].dep) || !node_by_id(&new, sets[i].node)) {
                        snprintf(err, errlen, "field ready: [%" PRIu32 ", %" PRIu32 "] names an unknown deployment or node",
                                 sets[i].dep, sets[i].node);
                        r = -EINVAL;
                        goto fail;
                }
        if (n_sets > 0) {
                struct routing_ready *merged = calloc(new.n_ready + n_sets + 1, sizeof *merged);
                size_t i = 0, k = 0, n = 0;
                if (!merged) {
                        r = -ENOMEM;
                        goto fail;
                }
                while (i < new.n_ready || k < n_sets) {
                        int c = i >= new.n_ready ? 1 : k >= n_sets ? -1 : ready_cmp(&new.ready[i], &sets[k]);
                        const struct routing_ready *x = c < 0 ? &new.ready[i] : &sets[k];
                        if (x->count > 0)
                                merged[n++] = *x;
                        i += c <= 0;
                        k += c >= 0;
                }
                if (n > ROUTING_MAX_READY) {
                        free(merged);
                        snprintf(err, errlen, "field ready: more than %d", ROUTING_MAX_READY);
                        r = -EINVAL;
                        goto fail;
                }
                free(new.ready);
                new.ready = merged;
                new.n_ready = new.cap_ready = n;
        }
        r = routing_table_seal(&new);
        if (r < 0) {
                if (r == -EINVAL)
                        snprintf(err, errlen, "a node name or a deployment appears twice");
                goto fail;
        }
        new.version = (uint64_t)version;
        routing_table_done(t);
        *t = new;
        return 0;
fail:
        if (r == -E2BIG) {
                snprintf(err, errlen, "the table grows past its limits");
                r = -EINVAL;
        }
        routing_table_done(&new);
        return r;
}
