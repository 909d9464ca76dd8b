/* serve-replica: loads a deployment's shared object and serves its segment's rings. */
#pragma once

#include <stdio.h>

#include "serve.h"

/* Checks what a module exports: ABI version, an ingress that is one of the deployments,
 * unique non-empty deployment names, at least one handler each (plain or batched, names unique
 * across both, batch parameters in range). `where` ("FILE: symbol 'S'")
 * prefixes the message. Returns 0, or -EINVAL with *ret_error (malloc'd). */
int replica_app_validate(const struct serve_application *app, const char *where, char **ret_error);

/* Resolves and loads import_path, validates it, and prints one JSON line describing the
 * application (module, symbol, ingress, deployments with handlers and defaults) on out.
 * Returns 0, or a negative errno with *ret_error (malloc'd). */
int replica_describe(const char *import_path, const char *working_dir, FILE *out, char **ret_error);

/* Runs the replica on control socket control_fd (see proto.h): start, serve, stop. Never
 * returns on the paths that end the process early; otherwise returns the exit status. */
int replica_run(int control_fd);
