/* A bounded log of what the control plane did and why ("events"): a ring of the latest
 * `capacity` events, each with an id that only grows, so a reader asks for what came after the
 * last id it saw. The worker keeps one for its replicas (starts, crashes, health checks) and
 * sends what is new in each report; the head keeps one for the cluster (deploys, reloads,
 * autoscaling, nodes) plus what the workers sent, and serves it to the dashboard.
 *
 * Adding an event also logs its message once, at the level given: the event is the log line. */
#pragma once

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macros.h"

#define EVENT_KIND_MAX 32
#define EVENT_SUBJECT_MAX 256
#define EVENT_NODE_MAX 128
#define EVENT_MESSAGE_MAX 512
/* A report carries at most this many events (the worker's ring holds as many). */
#define EVENT_REPORT_MAX 64

struct event {
        uint64_t id;
        double time;                   /* wall clock, seconds */
        char kind[EVENT_KIND_MAX];     /* [a-z_]+: deploy, replica_crashed, node_dead, ... */
        char subject[EVENT_SUBJECT_MAX];
        char node[EVENT_NODE_MAX];     /* where it happened; "" for the head */
        char message[EVENT_MESSAGE_MAX];
};

struct event_log {
        struct event *ring;
        size_t capacity, n;            /* n: events held (≤ capacity) */
        uint64_t next_id;              /* the id the next event gets (ids start at 1) */
};

/* Returns 0 or -ENOMEM. */
int event_log_init(struct event_log *l, size_t capacity);
void event_log_free(struct event_log *l);

/* Records an event now (and logs its message at level, unless level < 0). Strings longer than
 * the fields are cut. Returns the event (valid until the next add). */
struct event *event_log_add(struct event_log *l, int level, const char *kind, const char *subject, const char *node,
                            const char *fmt, ...) _printf_(6, 7);
struct event *event_log_addv(struct event_log *l, int level, const char *kind, const char *subject, const char *node,
                             const char *fmt, va_list ap) _printf_(6, 0);
/* Records an event that happened elsewhere (a worker's, from its report): not logged again. */
struct event *event_log_add_at(struct event_log *l, double time, const char *kind, const char *subject,
                               const char *node, const char *message);

/* The events with id > since, oldest first, at most max of them (the newest ones when there are
 * more), as a JSON array of {"id","time","kind","subject","node"?,"message"}. NULL on ENOMEM. */
cJSON *event_log_json(const struct event_log *l, uint64_t since, size_t max);

/* A kind is [a-z_]{1,31}. */
static inline bool event_kind_valid(const char *kind) {
        size_t n = 0;
        for (; kind[n]; n++)
                if (n + 1 >= EVENT_KIND_MAX || !((kind[n] >= 'a' && kind[n] <= 'z') || kind[n] == '_'))
                        return false;
        return n > 0;
}
