/* The peer table: the nodes this worker knows (from the head's routing messages), their
 * replica sets per deployment, the data port's listener. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "peer_link.h"

/* ---- the peer table ---- */

static size_t hash_name(const char *s) {
        uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
        return (size_t)h;
}

static size_t hash_pair(const void *a, const void *b) {
        uint64_t h = (uint64_t)(uintptr_t)a * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)b * 0xc2b2ae3d27d4eb4full;
        return (size_t)(h ^ (h >> 29));
}

/* Doubles an index when it holds more entries than chains (rebuilt from the lists). */
static int peer_index_grow(struct peers *ps) {
        size_t size = ps->peer_index_size ? ps->peer_index_size * 2 : 64;
        struct peer **idx = calloc(size, sizeof *idx);
        struct list *pos;
        if (!idx)
                return -ENOMEM;
        for (pos = ps->peers.next; pos != &ps->peers; pos = pos->next) {
                struct peer *p = list_entry(pos, struct peer, link);
                size_t b = hash_name(p->name) & (size - 1);
                p->hash_next = idx[b];
                idx[b] = p;
        }
        free(ps->peer_index);
        ps->peer_index = idx;
        ps->peer_index_size = size;
        return 0;
}

static struct peer *peer_find(const struct peers *ps, const char *name) {
        if (!ps->peer_index)
                return NULL;
        for (struct peer *p = ps->peer_index[hash_name(name) & (ps->peer_index_size - 1)]; p; p = p->hash_next)
                if (streq(p->name, name))
                        return p;
        return NULL;
}

static int target_index_grow(struct peers *ps) {
        size_t size = ps->target_index_size ? ps->target_index_size * 2 : 256;
        struct remote_target **idx = calloc(size, sizeof *idx);
        struct list *pos, *p2;
        if (!idx)
                return -ENOMEM;
        for (pos = ps->groups.next; pos != &ps->groups; pos = pos->next) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                for (p2 = g->backends.next; p2 != &g->backends; p2 = p2->next) {
                        struct remote_target *t = list_entry(p2, struct remote_target, be.link);
                        size_t b = hash_pair(g, t->peer) & (size - 1);
                        t->hash_next = idx[b];
                        idx[b] = t;
                }
        }
        free(ps->target_index);
        ps->target_index = idx;
        ps->target_index_size = size;
        return 0;
}

static struct remote_group *group_find(struct peers *ps, const char *app, const char *name, bool create) {
        struct list *pos, *tmp;
        struct remote_group *g;

        list_for_each_safe(pos, tmp, &ps->groups) {
                g = list_entry(pos, struct remote_group, link);
                if (streq(g->app, app) && streq(g->name, name))
                        return g;
        }
        if (!create)
                return NULL;
        g = calloc(1, sizeof *g);
        if (!g || !(g->app = strdup(app)) || !(g->name = strdup(name))) {
                if (g)
                        free(g->app);
                free(g);
                return NULL;
        }
        list_init(&g->backends);
        list_add_tail(&ps->groups, &g->link);
        return g;
}

void peers_update_begin(struct peers *ps) {
        struct list *pos, *tmp, *p2;
        list_for_each_safe(pos, tmp, &ps->peers)
                list_entry(pos, struct peer, link)->seen = false;
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                for (p2 = g->backends.next; p2 != &g->backends; p2 = p2->next) {
                        struct remote_target *t = list_entry(p2, struct remote_target, be.link);
                        t->ready = 0;
                        t->capacity = 0;
                }
        }
}

struct peer *peers_update_node(struct peers *ps, const char *name, const char *address, int port, uint64_t min_serial) {
        struct peer *p = peer_find(ps, name);

        if (p) {
                p->seen = true;
                p->min_serial = min_serial;
                if (p->gone) {
                        p->gone = false;
                        p->next_connect_ns = 0;
                }
                if (!streq(p->address, address) || p->port != port) {
                        char *a = strdup(address);
                        if (!a)
                                return NULL;
                        free(p->address);
                        p->address = a;
                        p->port = port;
                        peer_disconnect(p, "the node moved");
                        peer_connect(p);
                }
                return p;
        }
        if (ps->n_peers >= ps->peer_index_size && peer_index_grow(ps) < 0)
                return NULL;
        p = calloc(1, sizeof *p);
        if (!p || !(p->name = strdup(name)) || !(p->address = strdup(address))) {
                if (p)
                        free(p->name);
                free(p);
                return NULL;
        }
        p->ps = ps;
        p->port = port;
        p->min_serial = min_serial;
        p->seen = true;
        p->unblock.fn = peer_unblock;
        list_init(&p->unblock.link);
        list_add_tail(&ps->peers, &p->link);
        size_t b = hash_name(name) & (ps->peer_index_size - 1);
        p->hash_next = ps->peer_index[b];
        ps->peer_index[b] = p;
        ps->n_peers++;
        peer_connect(p);
        return p;
}

struct remote_group *peers_group(struct peers *ps, const char *app, const char *name) {
        return group_find(ps, app, name, true);
}

int peers_update_target(struct peers *ps, struct peer *peer, struct remote_group *g, int ready, int max_ongoing) {
        struct remote_target *t = NULL;

        if (!g || !peer)
                return -EINVAL;
        if (ps->target_index)
                for (t = ps->target_index[hash_pair(g, peer) & (ps->target_index_size - 1)]; t; t = t->hash_next)
                        if (t->group == g && t->peer == peer)
                                break;
        if (!t) {
                if (ps->n_targets >= ps->target_index_size && target_index_grow(ps) < 0)
                        return -ENOMEM;
                t = calloc(1, sizeof *t);
                if (!t)
                        return -ENOMEM;
                t->peer = peer;
                t->group = g;
                t->be.ops = &peer_remote_backend_ops;
                list_add_tail(&g->backends, &t->be.link);
                size_t b = hash_pair(g, peer) & (ps->target_index_size - 1);
                t->hash_next = ps->target_index[b];
                ps->target_index[b] = t;
                ps->n_targets++;
        }
        t->ready = ready;
        t->capacity = ready * MAX(max_ongoing, 1);
        t->rejected = false;
        return 0;
}

void peers_update_end(struct peers *ps) {
        struct list *pos, *tmp;

        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                if (p->seen || p->gone)
                        continue;
                p->gone = true;
                /* A dead or removed node: fail over now; targets pointing at it have ready 0 and
                 * stay (requests may still reference them) until we exit. */
                log_info("node %s left the cluster: no longer routing to it", p->name);
                peer_disconnect(p, "the node serving the request left the cluster");
                p->next_connect_ns = UINT64_MAX;
        }
        /* Links from nodes that left the list, or whose certificate is now revoked, go too. */
        list_for_each_safe(pos, tmp, &ps->ins) {
                struct peer_in *pin = list_entry(pos, struct peer_in, link);
                if (pin->node && !peers_may_link(ps, pin->node, pin->serial)) {
                        log_info("closing the data link from node %s: it is no longer a member of the cluster", pin->node);
                        peer_in_close(pin);
                }
        }
}

bool peers_may_link(const struct peers *ps, const char *name, uint64_t serial) {
        const struct peer *p = peer_find(ps, name);
        return p && p->seen && !p->gone && serial >= p->min_serial;
}

void peers_set_tls(struct peers *ps, struct tls_ctx *client, struct tls_ctx *server, const char *unit) {
        ps->tls_client = client;
        ps->tls_server = server;
        ps->tls_unit = unit;
}

void peers_attach(struct peers *ps, struct deployment *d) {
        struct remote_group *g = group_find(ps, d->app, d->name, true);

        d->remote_backends = g ? &g->backends : NULL;
        d->remote_placed = g ? &g->placed : NULL;
        if (d->queue_len > 0)
                router_dispatch(ps->router, d);
}

uint64_t peers_tick(struct peers *ps, uint64_t now) {
        struct list *pos, *tmp;
        uint64_t next = 100 * NSEC_PER_MSEC;

        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                if (p->nc || !p->seen)
                        continue;
                if (now >= p->next_connect_ns)
                        peer_connect(p);
                else
                        next = MIN(next, p->next_connect_ns - now);
        }
        return next;
}

int peers_new(struct loop *loop, struct router *router, const char *host, int port, const struct peers_options *opts,
              struct peers **ret) {
        struct peers *ps = calloc(1, sizeof *ps);
        int r;

        if (!ps)
                return -ENOMEM;
        ps->loop = loop;
        ps->router = router;
        ps->opts = *opts;
        list_init(&ps->peers);
        list_init(&ps->groups);
        list_init(&ps->ins);
        r = netlistener_open(&ps->listener, loop, host, port, peer_in_accept, ps);
        if (r < 0) {
                log_error_errno(r, "Cannot listen for peer nodes on %s:%d (data_port): %m", host, port);
                free(ps);
                return r;
        }
        netlistener_set_limit(&ps->listener, MAX_LINKS_IN, "the data port");
        *ret = ps;
        return 0;
}

void peers_set_options(struct peers *ps, const struct peers_options *opts) { ps->opts = *opts; }

void peers_stop(struct peers *ps) {
        struct list *pos, *tmp;

        if (!ps)
                return;
        netlistener_close(&ps->listener);
        list_for_each_safe(pos, tmp, &ps->ins)
                peer_in_close(list_entry(pos, struct peer_in, link));
        list_for_each_safe(pos, tmp, &ps->peers)
                peer_disconnect(list_entry(pos, struct peer, link), "the worker is stopping");
}

void peers_free(struct peers *ps) {
        struct list *pos, *tmp;

        if (!ps)
                return;
        peers_stop(ps);
        list_for_each_safe(pos, tmp, &ps->peers) {
                struct peer *p = list_entry(pos, struct peer, link);
                list_del(&p->link);
                loop_undefer(&p->unblock);
                free(p->slots);
                free(p->free_slots);
                free(p->name);
                free(p->address);
                free(p);
        }
        list_for_each_safe(pos, tmp, &ps->groups) {
                struct remote_group *g = list_entry(pos, struct remote_group, link);
                while (!list_empty(&g->backends)) {
                        struct remote_target *t = list_first(&g->backends, struct remote_target, be.link);
                        list_del(&t->be.link);
                        free(t);
                }
                free(g->app);
                free(g->name);
                free(g);
        }
        free(ps->peer_index);
        free(ps->target_index);
        free(ps);
}

void peers_stats(const struct peers *ps, struct peer_stats *ret) { *ret = ps->stats; }

bool peers_take_kick(struct peers *ps) {
        bool k = ps->kick;
        ps->kick = false;
        return k;
}
