#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proxy.h"
#include "router.h"
#include "replica_link.h"
#include "peer.h"

static struct router the_router = { .rng = 0x9e3779b97f4a7c15ull };

struct router *router_get(void) { return &the_router; }

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

static bool has_capacity(const struct replica *rep) {
        return rep->state == REPLICA_READY && rep->ongoing < (int)rep->limit;
}

/* Power of two choices: two random replicas with room, the less busy one wins. */
static struct replica *pick(struct router *r, struct deployment *dep) {
        struct replica *cand[2] = {};
        unsigned n = 0, seen = 0;
        struct list *pos, *tmp;

        /* Reservoir-sample two replicas among those with capacity in one pass. */
        list_for_each_safe(pos, tmp, &dep->replicas) {
                struct replica *rep = list_entry(pos, struct replica, link);
                if (!has_capacity(rep))
                        continue;
                seen++;
                if (n < 2)
                        cand[n++] = rep;
                else {
                        uint64_t k = rng_next(r) % seen;
                        if (k < 2)
                                cand[k] = rep;
                }
        }
        if (n == 0)
                return NULL;
        if (n == 1)
                return cand[0];
        if (cand[0]->ongoing != cand[1]->ongoing)
                return cand[0]->ongoing < cand[1]->ongoing ? cand[0] : cand[1];
        return cand[rng_next(r) & 1];
}

/* Replicas here may serve u, now or once they start. Requests from a peer only count ready
 * ones: a node that is scaling the deployment away sends them back (REJECT) instead. */
static bool local_possible(const struct deployment *dep, const struct upreq *u) {
        if (u->stream)
                return dep->n_ready > 0 || (dep->target_replicas > 0 && !dep->retiring);
        return dep->n_replicas > 0 || dep->target_replicas > 0;
}

int router_submit(struct router *r, struct upreq *u) {
        struct deployment *dep = u->dep;
        struct replica *rep;
        struct remote_target *t;

        /* Requests already waiting go first: a newcomer never overtakes the queue. Local
         * replicas before peers (locality). */
        if (dep->queue_len == 0) {
                if ((rep = pick(r, dep))) {
                        replica_link_send(rep, u);
                        return 0;
                }
                if (!u->stream && dep->remote && (t = peer_pick(dep->remote))) {
                        peer_send(t, u);
                        return 0;
                }
        }
        if (!local_possible(dep, u) && (u->stream || !dep->remote || !peer_group_available(dep->remote, dep->target_replicas)))
                return -ENOENT;
        if (dep->max_queued >= 0 && dep->queue_len >= dep->max_queued)
                return -EBUSY;
        u->state = UPREQ_QUEUED;
        list_add_tail(&dep->queue, &u->link);
        dep->queue_len++;
        return 0;
}

void router_unqueue(struct upreq *u) {
        list_del(&u->link);
        u->dep->queue_len--;
}

void router_cancel(struct upreq *u) {
        if (u->rt)
                peer_cancel(u);
        else
                replica_link_cancel(u);
}

void router_set_path(const struct route *rt, struct upreq *u) {
        size_t plen = rt->prefix_len;

        if (plen == 1 || (rt->prefix[plen - 1] == '/' && plen > 1)) /* "/" or "/x/" keep the slash */
                plen--;
        u->path = u->req.path + plen;
        u->path_len = u->req.path_len - plen;
        if (u->path_len == 0) {
                u->path = "/";
                u->path_len = 1;
        }
}

void router_dispatch(struct router *r, struct deployment *dep) {
        while (dep->queue_len > 0) {
                struct upreq *u = list_first(&dep->queue, struct upreq, link);
                struct replica *rep = pick(r, dep);
                struct remote_target *t = NULL;

                if (!rep && (u->stream || !dep->remote || !(t = peer_pick(dep->remote))))
                        return;
                router_unqueue(u);
                if (rep)
                        replica_link_send(rep, u);
                else
                        peer_send(t, u);
        }
}

struct dep_stats *router_stats(struct router *r, const char *app, const char *name) {
        struct list *pos, *tmp;
        struct dep_stats *st;

        if (!r->stats_ready) {
                list_init(&r->stats);
                r->stats_ready = true;
        }
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

void router_record(struct upreq *u, int status) {
        struct dep_stats *st = u->dep ? u->dep->stats : NULL;

        if (!st || u->stream)
                return;
        st->requests++;
        if (status >= 400)
                st->errors++;
        latency_hist_observe(&st->latency, (double)(now_ns() - u->start_ns) / 1e6);
}
