#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events.h"
#include "log.h"

int event_log_init(struct event_log *l, size_t capacity) {
        *l = (struct event_log){ .capacity = capacity ?: 1, .next_id = 1 };
        l->ring = calloc(l->capacity, sizeof *l->ring);
        return l->ring ? 0 : -ENOMEM;
}

void event_log_free(struct event_log *l) {
        free(l->ring);
        *l = (struct event_log){ 0 };
}

static struct event *slot_next(struct event_log *l) {
        struct event *e = &l->ring[l->next_id % l->capacity];
        *e = (struct event){ .id = l->next_id++ };
        if (l->n < l->capacity)
                l->n++;
        return e;
}

static void copy(char *dst, size_t size, const char *src) {
        snprintf(dst, size, "%s", src ? src : "");
}

struct event *event_log_add_at(struct event_log *l, double time, const char *kind, const char *subject,
                               const char *node, const char *message) {
        struct event *e = slot_next(l);
        e->time = time;
        copy(e->kind, sizeof e->kind, kind);
        copy(e->subject, sizeof e->subject, subject);
        copy(e->node, sizeof e->node, node);
        copy(e->message, sizeof e->message, message);
        return e;
}

struct event *event_log_add(struct event_log *l, int level, const char *kind, const char *subject, const char *node,
                            const char *fmt, ...) {
        struct event *e;
        va_list ap;

        va_start(ap, fmt);
        e = event_log_addv(l, level, kind, subject, node, fmt, ap);
        va_end(ap);
        return e;
}

struct event *event_log_addv(struct event_log *l, int level, const char *kind, const char *subject, const char *node,
                             const char *fmt, va_list ap) {
        char msg[EVENT_MESSAGE_MAX];
        struct timespec ts;

        vsnprintf(msg, sizeof msg, fmt, ap);
        if (level >= 0)
                log_full(level, "%s", msg);
        clock_gettime(CLOCK_REALTIME, &ts);
        return event_log_add_at(l, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9, kind, subject, node, msg);
}

cJSON *event_log_json(const struct event_log *l, uint64_t since, size_t max) {
        cJSON *arr = cJSON_CreateArray();
        uint64_t first = l->next_id - l->n; /* the oldest id held */

        if (!arr)
                return NULL;
        if (since + 1 > first)
                first = since + 1;
        if (l->next_id > first && l->next_id - first > max)
                first = l->next_id - max;
        for (uint64_t id = first; id < l->next_id; id++) {
                const struct event *e = &l->ring[id % l->capacity];
                cJSON *o = cJSON_CreateObject();
                if (!o || !cJSON_AddItemToArray(arr, o) || !cJSON_AddNumberToObject(o, "id", (double)e->id) ||
                    !cJSON_AddNumberToObject(o, "time", e->time) || !cJSON_AddStringToObject(o, "kind", e->kind) ||
                    !cJSON_AddStringToObject(o, "subject", e->subject) ||
                    (e->node[0] && !cJSON_AddStringToObject(o, "node", e->node)) ||
                    !cJSON_AddStringToObject(o, "message", e->message)) {
                        cJSON_Delete(arr);
                        return NULL;
                }
        }
        return arr;
}
