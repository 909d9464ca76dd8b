#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "history.h"
#include "macros.h"
#include "util.h"

struct series {
        char *scope, *name, *metric;   /* one allocation: scope's */
        size_t key_len;
        float *v;                      /* capacity values, indexed like history.t */
        uint64_t last_set;             /* the point it last had a value at */
        struct series *next;           /* hash chain */
};

struct history {
        double interval_s;
        size_t capacity, max_series;
        double *t;                     /* ring of point times */
        uint64_t points;               /* points begun so far; the current one is points - 1 */
        struct series **all;
        size_t n_series;
        struct series **index;         /* index_size chains */
        size_t index_size;
        uint64_t dropped;
};

static uint64_t key_hash(const char *scope, const char *name, const char *metric) {
        uint64_t x = 1469598103934665603ull;
        const char *parts[] = { scope, name, metric };
        for (size_t i = 0; i < 3; i++) {
                for (const char *p = parts[i]; *p; p++)
                        x = (x ^ (unsigned char)*p) * 1099511628211ull;
                x = (x ^ 0xff) * 1099511628211ull; /* a separator no name holds */
        }
        return x;
}

int history_new(double interval_s, size_t capacity, size_t max_series, struct history **ret) {
        struct history *h;

        if (!capacity || !max_series || !(interval_s > 0))
                return -EINVAL;
        if (!(h = calloc(1, sizeof *h)))
                return -ENOMEM;
        h->interval_s = interval_s;
        h->capacity = capacity;
        h->max_series = max_series;
        h->index_size = 64;
        while (h->index_size < max_series)
                h->index_size <<= 1;
        h->t = calloc(capacity, sizeof *h->t);
        h->all = calloc(max_series, sizeof *h->all);
        h->index = calloc(h->index_size, sizeof *h->index);
        if (!h->t || !h->all || !h->index) {
                history_free(h);
                return -ENOMEM;
        }
        *ret = h;
        return 0;
}

static void series_free(struct series *s) {
        if (!s)
                return;
        free(s->scope);
        free(s->v);
        free(s);
}

void history_free(struct history *h) {
        if (!h)
                return;
        for (size_t i = 0; i < h->n_series; i++)
                series_free(h->all[i]);
        free(h->all);
        free(h->index);
        free(h->t);
        free(h);
}

static void index_rebuild(struct history *h) {
        memset(h->index, 0, h->index_size * sizeof *h->index);
        for (size_t i = 0; i < h->n_series; i++) {
                struct series *s = h->all[i];
                size_t b = key_hash(s->scope, s->name, s->metric) & (h->index_size - 1);
                s->next = h->index[b];
                h->index[b] = s;
        }
}

void history_begin(struct history *h, double t) {
        size_t slot = h->points % h->capacity, kept = 0;
        bool removed = false;

        h->t[slot] = t;
        h->points++;
        for (size_t i = 0; i < h->n_series; i++) {
                struct series *s = h->all[i];
                /* Empty for a whole window: nothing left to show. */
                if (h->points - 1 - s->last_set >= h->capacity) {
                        series_free(s);
                        removed = true;
                        continue;
                }
                s->v[slot] = NAN;
                h->all[kept++] = s;
        }
        h->n_series = kept;
        if (removed)
                index_rebuild(h);
}

int history_set(struct history *h, const char *scope, const char *name, const char *metric, double v) {
        size_t b = key_hash(scope, name, metric) & (h->index_size - 1);
        struct series *s;

        if (!h->points)
                return -EINVAL;
        for (s = h->index[b]; s; s = s->next)
                if (streq(s->scope, scope) && streq(s->name, name) && streq(s->metric, metric))
                        break;
        if (!s) {
                size_t ls = strlen(scope) + 1, ln = strlen(name) + 1, lm = strlen(metric) + 1;
                if (h->n_series >= h->max_series) {
                        h->dropped++;
                        return -ENOSPC;
                }
                if (!(s = calloc(1, sizeof *s)) || !(s->scope = malloc(ls + ln + lm)) ||
                    !(s->v = malloc(h->capacity * sizeof *s->v))) {
                        series_free(s);
                        return -ENOMEM;
                }
                memcpy(s->scope, scope, ls);
                s->name = s->scope + ls;
                memcpy(s->name, name, ln);
                s->metric = s->name + ln;
                memcpy(s->metric, metric, lm);
                s->key_len = ls + ln + lm;
                for (size_t i = 0; i < h->capacity; i++)
                        s->v[i] = NAN;
                s->next = h->index[b];
                h->index[b] = s;
                h->all[h->n_series++] = s;
        }
        s->v[(h->points - 1) % h->capacity] = (float)v;
        s->last_set = h->points - 1;
        return 0;
}

size_t history_series_count(const struct history *h) { return h->n_series; }

size_t history_memory(const struct history *h) {
        size_t m = sizeof *h + h->capacity * sizeof *h->t + h->max_series * sizeof *h->all +
                   h->index_size * sizeof *h->index;
        for (size_t i = 0; i < h->n_series; i++)
                m += sizeof *h->all[i] + h->all[i]->key_len + h->capacity * sizeof(float);
        return m;
}

/* The object under parent at key, created when missing. */
static cJSON *child(cJSON *parent, const char *key) {
        cJSON *o = cJSON_GetObjectItemCaseSensitive(parent, key);
        return o ? o : cJSON_AddObjectToObject(parent, key);
}

cJSON *history_json(const struct history *h, double since) {
        uint64_t held = MIN(h->points, (uint64_t)h->capacity), first = h->points - held;
        cJSON *j = cJSON_CreateObject(), *t, *series;

        /* The points to send: the held ones later than since (times only grow). */
        while (first < h->points && since >= 0 && !(h->t[first % h->capacity] > since))
                first++;
        if (!j || !cJSON_AddNumberToObject(j, "interval_s", h->interval_s) ||
            !cJSON_AddNumberToObject(j, "capacity", (double)h->capacity) ||
            !cJSON_AddNumberToObject(j, "memory_bytes", (double)history_memory(h)) ||
            !cJSON_AddNumberToObject(j, "series_count", (double)h->n_series) ||
            !cJSON_AddNumberToObject(j, "series_dropped", (double)h->dropped) || !(t = cJSON_AddArrayToObject(j, "t")) ||
            !(series = cJSON_AddObjectToObject(j, "series")))
                goto fail;
        for (uint64_t p = first; p < h->points; p++)
                if (!cJSON_AddItemToArray(t, cJSON_CreateNumber(h->t[p % h->capacity])))
                        goto fail;
        for (size_t i = 0; i < h->n_series; i++) {
                const struct series *s = h->all[i];
                cJSON *sc = child(series, s->scope), *nm = sc ? child(sc, s->name) : NULL,
                      *arr = nm ? cJSON_AddArrayToObject(nm, s->metric) : NULL;
                if (!arr)
                        goto fail;
                for (uint64_t p = first; p < h->points; p++) {
                        float v = s->v[p % h->capacity];
                        char num[32];
                        /* 5 significant digits: a float's last ones are noise on the wire. */
                        snprintf(num, sizeof num, "%.5g", (double)v);
                        if (!cJSON_AddItemToArray(arr, isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(strtod(num, NULL))))
                                goto fail;
                }
        }
        return j;
fail:
        cJSON_Delete(j);
        return NULL;
}
