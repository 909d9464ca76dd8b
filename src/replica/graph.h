/* The application graph: which deployments a deployment may call through handles (its
 * `binds`). Checked when a module is loaded (a config error names what is wrong), used by every
 * handle call. */
#pragma once

#include "serve.h"

/* Every bound name is another deployment of the application and the binds form no cycle.
 * Returns 0, or -EINVAL with *ret_error (malloc'd; prefixed with `where`). */
int graph_validate(const struct serve_application *app, const char *where, char **ret_error);

/* The deployment called `name` in app, or NULL. */
const struct serve_deployment *graph_find(const struct serve_application *app, const char *name);

/* Whether `from` binds `name`. */
bool graph_binds(const struct serve_deployment *from, const char *name);

/* Writes a's binds ("A, B") into buf (truncated to cap); "none" when it binds none. */
void graph_binds_list(const struct serve_deployment *d, char *buf, size_t cap);
