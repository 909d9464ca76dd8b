#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "graph.h"
#include "macros.h"
#include "util.h"

#define GRAPH_MAX 1024 /* deployments per application, binds per deployment */

const struct serve_deployment *graph_find(const struct serve_application *app, const char *name) {
        for (size_t i = 0; i < GRAPH_MAX && app->deployments[i]; i++)
                if (streq(app->deployments[i]->name, name))
                        return app->deployments[i];
        return NULL;
}

bool graph_binds(const struct serve_deployment *from, const char *name) {
        for (size_t i = 0; from->binds && i < GRAPH_MAX && from->binds[i]; i++)
                if (streq(from->binds[i], name))
                        return true;
        return false;
}

void graph_binds_list(const struct serve_deployment *d, char *buf, size_t cap) {
        size_t o = 0;

        snprintf(buf, cap, "none");
        for (size_t i = 0; d->binds && i < GRAPH_MAX && d->binds[i] && o < cap; i++)
                o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", d->binds[i]);
}

static size_t index_of(const struct serve_application *app, const char *name) {
        for (size_t i = 0; i < GRAPH_MAX && app->deployments[i]; i++)
                if (streq(app->deployments[i]->name, name))
                        return i;
        return SIZE_MAX;
}

/* Depth-first search over binds; color: 0 unseen, 1 on the current path, 2 done. On a cycle,
 * path[0..*depth) ends with the deployment that closes it. */
static bool has_cycle(const struct serve_application *app, size_t v, unsigned char *color, size_t *path,
                      size_t *depth) {
        const struct serve_deployment *d = app->deployments[v];

        color[v] = 1;
        path[(*depth)++] = v;
        for (size_t i = 0; d->binds && i < GRAPH_MAX && d->binds[i]; i++) {
                size_t w = index_of(app, d->binds[i]);
                if (w == SIZE_MAX)
                        continue;
                if (color[w] == 1) {
                        path[(*depth)++] = w;
                        return true;
                }
                if (color[w] == 0 && has_cycle(app, w, color, path, depth))
                        return true;
        }
        color[v] = 2;
        (*depth)--;
        return false;
}

int graph_validate(const struct serve_application *app, const char *where, char **ret_error) {
        unsigned char color[GRAPH_MAX] = {};
        size_t path[GRAPH_MAX + 1], n = 0;

        while (n < GRAPH_MAX && app->deployments[n])
                n++;
        for (size_t i = 0; i < n; i++) {
                const struct serve_deployment *d = app->deployments[i];
                size_t k = 0;
                for (; d->binds && k < GRAPH_MAX && d->binds[k]; k++) {
                        if (!graph_find(app, d->binds[k]))
                                return error_set(-EINVAL, ret_error,
                                                 "%s: deployment '%s' binds '%s', which is not a deployment of the application",
                                                 where, d->name, d->binds[k]);
                        if (streq(d->binds[k], d->name))
                                return error_set(-EINVAL, ret_error, "%s: deployment '%s' binds itself (a call cycle)",
                                                 where, d->name);
                }
                if (k == GRAPH_MAX)
                        return error_set(-EINVAL, ret_error, "%s: deployment '%s': binds not NULL-terminated", where,
                                         d->name);
        }
        for (size_t i = 0; i < n; i++) {
                size_t depth = 0;
                if (color[i] || !has_cycle(app, i, color, path, &depth))
                        continue;
                /* The cycle is the part of the path from the first visit of its last node. */
                size_t start = 0;
                while (path[start] != path[depth - 1])
                        start++;
                char text[512];
                size_t o = 0;
                for (size_t k = start; k < depth && o < sizeof text; k++)
                        o += (size_t)snprintf(text + o, sizeof text - o, "%s%s", k > start ? " > " : "",
                                              app->deployments[path[k]]->name);
                return error_set(-EINVAL, ret_error, "%s: the deployments' binds form a call cycle: %s", where, text);
        }
        return 0;
}
