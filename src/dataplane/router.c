#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "router.h"

static struct router the_router = { .rng = 0x9e3779b97f4a7c15ull };

struct router *router_get(void) {
        if (!the_router.ready) {
                list_init(&the_router.stats);
                list_init(&the_router.timeouts);
                the_router.ready = true;
        }
        return &the_router;
}

const struct route *router_match(const struct router *r, const char *path, size_t len) {
        for (size_t i = 0; i < r->n_routes; i++) {
                const struct route *rt = &r->routes[i];
                size_t pl = rt->prefix_len;

                if (pl == 1 && rt->prefix[0] == '/')
                        return rt; /* "/" matches everything; it sorts last */
                if (len < pl || memcmp(path, rt->prefix, pl) != 0)
                        continue;
                if (len == pl || path[pl] == '/' || rt->prefix[pl - 1] == '/')
                        return rt;
        }
        return NULL;
}

static int route_cmp(const void *a, const void *b) {
        const struct route *x = a, *y = b;
        return x->prefix_len < y->prefix_len ? 1 : x->prefix_len > y->prefix_len ? -1 : 0;
}

void routes_free(struct route *routes, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(routes[i].prefix);
                free(routes[i].app);
        }
        free(routes);
}

void router_set_routes(struct router *r, struct route *routes, size_t n) {
        if (n)
                qsort(routes, n, sizeof(*routes), route_cmp);
        routes_free(r->routes, r->n_routes);
        r->routes = routes;
        r->n_routes = n;
}

static uint64_t rng_next(struct router *r) {
        /* xorshift64*: cheap and good enough to spread load. */
        r->rng ^= r->rng >> 12;
        r->rng ^= r->rng << 25;
        r->rng ^= r->rng >> 27;
        return r->rng * 0x2545f4914f6cdd1dull;
}

/* Power of two choices among the backends of one set that can take a request now: two random
 * ones (reservoir-sampled in one pass), the less loaded wins. */
static struct backend *pick(struct router *r, struct list *set) {
        struct backend *cand[2] = {};
        unsigned n = 0, seen = 0;
        struct list *pos;

        for (pos = set->next; pos != set; pos = pos->next) {
                struct backend *b = list_entry(pos, struct backend, link);
                if (!b->ops->available(b))
                        continue;
                seen++;
                if (n < 2)
                        cand[n++] = b;
                else {
                        uint64_t k = rng_next(r) % seen;
                        if (k < 2)
                                cand[k] = b;
                }
        }
        if (n < 2)
                return cand[0];
        double l0 = cand[0]->ops->load(cand[0]), l1 = cand[1]->ops->load(cand[1]);
        if (l0 != l1)
                return l0 < l1 ? cand[0] : cand[1];
        return cand[rng_next(r) & 1];
}

/* Local replicas first (locality), then peer nodes unless q must stay here. */
static struct backend *pick_for(struct router *r, struct deployment *dep, const struct request *q) {
        struct backend *b = pick(r, &dep->replicas);
        if (!b && !q->local_only && dep->remote_backends)
                b = pick(r, dep->remote_backends);
        return b;
}

/* Some backend has or will have room for q: it may wait in the queue. Requests from a peer
 * only count ready local replicas (or ones this node is told to run): a node that is scaling
 * the deployment away sends them back (reject) instead. */
static bool may_wait(const struct deployment *dep, const struct request *q) {
        struct list *pos;

        if (q->local_only)
                return dep->n_ready > 0 || (dep->target_replicas > 0 && !dep->retiring);
        if (dep->n_replicas > 0 || dep->target_replicas > 0)
                return true;
        if (dep->scales_from_zero && !dep->retiring)
                return true; /* the autoscaler starts one for it (bounded by request_timeout_s) */
        if (!dep->remote_backends)
                return false;
        for (pos = dep->remote_backends->next; pos != dep->remote_backends; pos = pos->next) {
                struct backend *b = list_entry(pos, struct backend, link);
                if (b->ops->may_serve(b))
                        return true;
        }
        return dep->remote_placed && *dep->remote_placed > dep->target_replicas;
}

static void send_to(struct backend *b, struct request *q) {
        q->tries++;
        b->ops->send(b, q);
}

int router_submit(struct router *r, struct request *q, double timeout_s) {
        struct deployment *dep = q->dep;
        struct backend *b;

        if (timeout_s > 0 && q->deadline_ns == 0) {
                q->deadline_ns = loop_now(request_loop()) + sec_to_ns(timeout_s);
                list_add_tail(&r->timeouts, &q->tlink);
        }
        /* Requests already waiting go first: a newcomer never overtakes the queue. */
        if (dep->queue_len == 0 && (b = pick_for(r, dep, q))) {
                send_to(b, q);
                return 0;
        }
        if (!may_wait(dep, q))
                return -ENOENT;
        if (dep->max_queued >= 0 && dep->queue_len >= dep->max_queued)
                return -EBUSY;
        q->state = REQUEST_QUEUED;
        list_add_tail(&dep->queue, &q->link);
        dep->queue_len++;
        return 0;
}

void router_unqueue(struct request *q) {
        list_del(&q->link);
        q->dep->queue_len--;
        q->state = REQUEST_NEW;
}

uint64_t router_tick(struct router *r, uint64_t now) {
        uint64_t next = 100 * NSEC_PER_MSEC;

        while (!list_empty(&r->timeouts)) {
                struct request *q = list_first(&r->timeouts, struct request, tlink);

                if (q->deadline_ns > now) {
                        next = MIN(next, q->deadline_ns - now);
                        break;
                }
                request_expire(q, 504, q->state == REQUEST_QUEUED ? "request_timeout_s passed while queued"
                                                                  : "request_timeout_s passed");
        }
        return next;
}

int router_set_path(const struct route *rt, struct request *q) {
        const char *path = q->norm_path ? q->norm_path : q->req.path;
        size_t len = q->norm_path ? strlen(q->norm_path) : q->req.path_len;
        size_t plen = rt->prefix_len;

        if (len < plen || memcmp(path, rt->prefix, plen) != 0)
                return -EINVAL;
        if (plen == 1 || (rt->prefix[plen - 1] == '/' && plen > 1)) /* "/" or "/x/" keep the slash */
                plen--;
        q->path = path + plen;
        q->path_len = len - plen;
        if (q->path_len == 0) {
                q->path = "/";
                q->path_len = 1;
        }
        return 0;
}

const struct route *router_route_of_app(const struct router *r, const char *app, size_t len) {
        for (size_t i = 0; i < r->n_routes; i++)
                if (strlen(r->routes[i].app) == len && memcmp(r->routes[i].app, app, len) == 0)
                        return &r->routes[i];
        return NULL;
}

const struct route *router_route(struct router *r, struct request *q, const char *app, size_t app_len) {
        const char *path = q->norm_path ? q->norm_path : q->req.path;
        size_t len = q->norm_path ? strlen(q->norm_path) : q->req.path_len;
        const struct route *rt = router_match(r, path, len);

        if (!rt || !rt->ingress)
                return NULL;
        if (app && (strlen(rt->app) != app_len || memcmp(rt->app, app, app_len) != 0))
                return NULL;
        if (router_set_path(rt, q) < 0)
                return NULL;
        q->dep = rt->ingress;
        return rt;
}

void router_dispatch(struct router *r, struct deployment *dep) {
        while (dep->queue_len > 0) {
                struct request *q = list_first(&dep->queue, struct request, link);
                struct backend *b = pick_for(r, dep, q);

                if (!b)
                        return;
                router_unqueue(q);
                send_to(b, q);
        }
}


struct dep_stats *router_stats(struct router *r, const char *app, const char *name) {
        struct list *pos, *tmp;
        struct dep_stats *st;

        list_for_each_safe(pos, tmp, &r->stats) {
                st = list_entry(pos, struct dep_stats, link);
                if (streq(st->app, app) && streq(st->name, name))
                        return st;
        }
        st = calloc(1, sizeof *st);
        if (!st || !(st->app = strdup(app)) || !(st->name = strdup(name))) {
                if (st)
                        free(st->app);
                free(st);
                return NULL;
        }
        list_add_tail(&r->stats, &st->link);
        return st;
}

void router_record(const struct request *q, int status) {
        struct dep_stats *st = q->dep ? q->dep->stats : NULL;

        if (!st)
                return;
        st->requests++;
        if (status >= 400)
                st->errors++;
        latency_hist_observe(&st->latency, (double)(loop_now(request_loop()) - q->start_ns) / 1e6);
}
