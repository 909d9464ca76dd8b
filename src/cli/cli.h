/* The CLI's cluster commands (status, deploy, config, nodes, shutdown), which talk to
 * serve-head's REST API, and the tables they print. */
#pragma once

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>

/* Prints the top-level help (every command, `run` included, and the global options). */
void cli_usage(FILE *f);

/* Whether name is one of the cluster commands cli_main() runs (or "help"). */
bool cli_is_command(const char *name);

/* Renders GET /api/serve/applications/ as tables: the config error first (if any), then
 * applications, deployments, replicas and pending replicas. Returns 0, -EINVAL when the JSON is
 * not shaped like that answer, or -ENOMEM. */
int cli_render_status(const cJSON *status, FILE *f);

/* Renders GET /api/cluster/nodes as one table. Returns 0, -EINVAL, or -ENOMEM. */
int cli_render_nodes(const cJSON *nodes, FILE *f);

/* Runs `serve [GLOBAL OPTIONS] COMMAND [ARGS]` (argv[0] is the program); global options may come
 * before or after the command. Results go to out, diagnostics to err. Returns the exit status:
 * 0 ok, 1 failure (serve-head unreachable or said no), 2 usage error. */
int cli_main(int argc, char **argv, FILE *out, FILE *err);
