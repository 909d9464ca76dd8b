/* The replica supervisor: turns a config into deployments and replica processes, and keeps
 * them running. It starts replicas (serve-replica, one process each, with a fresh shared
 * segment), watches their heartbeats and exits, replaces failed ones with backoff, applies
 * reloads (in place when only counts/user_config change, otherwise a rolling replacement that
 * moves traffic only once the new replicas are ready), and stops replicas gracefully. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "loop.h"
#include "router.h"

struct supervisor;

/* replica_bin: path of serve-replica. Returns 0 or a negative errno. */
int supervisor_new(struct loop *loop, struct router *router, const char *replica_bin, struct supervisor **ret);
void supervisor_free(struct supervisor *s);

/* Validates cfg completely (loads each application's description from its shared object)
 * and, when valid, makes it the desired state. Returns 0, or -EINVAL with *ret_error (a
 * malloc'd message naming file, line, column and field) and nothing changed. */
int supervisor_apply(struct supervisor *s, const struct serve_config *cfg, char **ret_error);

/* Moves everything along: reads response rings, flushes request backlogs, checks heartbeats,
 * (re)starts and retires replicas. Returns the nanoseconds it may sleep. */
uint64_t supervisor_tick(struct supervisor *s, uint64_t now);

/* Announces sleep on every response ring. Returns false when a ring has data (don't sleep). */
bool supervisor_prepare_sleep(struct supervisor *s);
void supervisor_awake(struct supervisor *s);

/* Graceful stop: every replica finishes in-flight work, then exits. */
void supervisor_stop_all(struct supervisor *s);
/* Requests queued or in flight anywhere. */
unsigned supervisor_busy(const struct supervisor *s);
/* True when no replica process is left. */
bool supervisor_all_exited(const struct supervisor *s);
