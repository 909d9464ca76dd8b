/* Prometheus text format 0.0.4 and the shared latency histogram. See metrics.h. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "macros.h"
#include "metrics.h"

const double latency_bounds_ms[LATENCY_BUCKETS - 1] = { LATENCY_BOUNDS_MS };
_Static_assert(ELEMENTSOF(((double[]){ LATENCY_BOUNDS_MS })) == LATENCY_BUCKETS - 1, "bucket count");

/* JSON numbers are doubles: counts above 2^53 would silently lose precision. */
#define JSON_INT_MAX 9007199254740992.0

void latency_hist_observe(struct latency_hist *h, double ms) {
        size_t i;

        if (isnan(ms))
                return;
        if (ms < 0)
                ms = 0;
        for (i = 0; i < LATENCY_BUCKETS - 1; i++)
                if (ms <= latency_bounds_ms[i])
                        break;
        h->buckets[i]++;
        h->count++;
        h->sum_ms += ms;
}

void latency_hist_merge(struct latency_hist *into, const struct latency_hist *from) {
        for (size_t i = 0; i < LATENCY_BUCKETS; i++)
                into->buckets[i] += from->buckets[i];
        into->count += from->count;
        into->sum_ms += from->sum_ms;
}

void latency_hist_delta(struct latency_hist *into, const struct latency_hist *now, const struct latency_hist *before) {
        bool reset = now->count < before->count;
        for (size_t i = 0; i < LATENCY_BUCKETS && !reset; i++)
                reset = now->buckets[i] < before->buckets[i];
        *into = *now;
        if (reset)
                return;
        for (size_t i = 0; i < LATENCY_BUCKETS; i++)
                into->buckets[i] -= before->buckets[i];
        into->count -= before->count;
        into->sum_ms = now->sum_ms >= before->sum_ms ? now->sum_ms - before->sum_ms : 0;
}

double latency_hist_quantile(const struct latency_hist *h, double q) {
        uint64_t seen = 0;
        double rank;

        if (!h->count)
                return NAN;
        rank = q * (double)h->count;
        for (size_t i = 0; i < LATENCY_BUCKETS; i++) {
                if (!h->buckets[i] || (double)(seen + h->buckets[i]) < rank) {
                        seen += h->buckets[i];
                        continue;
                }
                if (i == LATENCY_BUCKETS - 1) /* +Inf: the largest finite bound is all we know */
                        return latency_bounds_ms[LATENCY_BUCKETS - 2];
                double lo = i ? latency_bounds_ms[i - 1] : 0, hi = latency_bounds_ms[i];
                return lo + (hi - lo) * (rank - (double)seen) / (double)h->buckets[i];
        }
        return latency_bounds_ms[LATENCY_BUCKETS - 2];
}

int latency_hist_to_json(const struct latency_hist *h, cJSON **ret) {
        cJSON *a = cJSON_CreateArray();
        uint64_t cum = 0;

        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < LATENCY_BUCKETS; i++) {
                cum += h->buckets[i];
                if (!cJSON_AddItemToArray(a, cJSON_CreateNumber((double)cum))) {
                        cJSON_Delete(a);
                        return -ENOMEM;
                }
        }
        *ret = a;
        return 0;
}

int latency_hist_from_json(const cJSON *buckets, const cJSON *sum, struct latency_hist *ret) {
        struct latency_hist h = {};
        const cJSON *e;
        double prev = 0;
        size_t i = 0;

        if (!cJSON_IsArray(buckets) || cJSON_GetArraySize(buckets) != LATENCY_BUCKETS)
                return -EINVAL;
        if (!cJSON_IsNumber(sum) || !isfinite(sum->valuedouble) || sum->valuedouble < 0)
                return -EINVAL;
        cJSON_ArrayForEach(e, buckets) {
                if (!cJSON_IsNumber(e))
                        return -EINVAL;
                double v = e->valuedouble;
                if (!isfinite(v) || v < prev || v > JSON_INT_MAX || v != floor(v))
                        return -EINVAL;
                h.buckets[i++] = (uint64_t)v - (uint64_t)prev;
                prev = v;
        }
        h.count = (uint64_t)prev;
        h.sum_ms = sum->valuedouble;
        *ret = h;
        return 0;
}

int latency_hist_json_add(cJSON *obj, const struct latency_hist *h) {
        cJSON *a;
        int r = latency_hist_to_json(h, &a);

        if (r < 0)
                return r;
        if (!cJSON_AddItemToObject(obj, "latency_ms_buckets", a)) {
                cJSON_Delete(a);
                return -ENOMEM;
        }
        if (!cJSON_AddNumberToObject(obj, "latency_ms_sum", h->sum_ms))
                return -ENOMEM;
        return 0;
}

int latency_hist_json_get(const cJSON *obj, struct latency_hist *ret) {
        return latency_hist_from_json(cJSON_GetObjectItemCaseSensitive(obj, "latency_ms_buckets"),
                                      cJSON_GetObjectItemCaseSensitive(obj, "latency_ms_sum"), ret);
}

/* Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names the same without ':'. */
static bool name_valid(const char *s, bool colon) {
        if (!s || !*s || (*s >= '0' && *s <= '9'))
                return false;
        for (; *s; s++) {
                char c = *s;
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                      (colon && c == ':')))
                        return false;
        }
        return true;
}

/* Appends s with backslash and newline escaped, plus double quote when `quote` (label values;
 * HELP text leaves quotes alone). */
static int append_escaped(struct buf *b, const char *s, bool quote) {
        for (; *s; s++) {
                const char *rep = NULL;
                if (*s == '\\')
                        rep = "\\\\";
                else if (*s == '\n')
                        rep = "\\n";
                else if (*s == '"' && quote)
                        rep = "\\\"";
                int r = rep ? buf_append(b, rep, 2, METRICS_TEXT_MAX) : buf_append(b, s, 1, METRICS_TEXT_MAX);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Shortest of %.15g/%.17g that reads back as the same double; Prometheus' spellings of the
 * non-finite values. */
static void format_value(double v, char tmp[static 32]) {
        if (isnan(v))
                snprintf(tmp, 32, "NaN");
        else if (isinf(v))
                snprintf(tmp, 32, v > 0 ? "+Inf" : "-Inf");
        else {
                snprintf(tmp, 32, "%.15g", v);
                if (strtod(tmp, NULL) != v)
                        snprintf(tmp, 32, "%.17g", v);
        }
}

/* Writes `{k="v",...,extra_key="extra_value"}` (nothing when there are no labels at all). */
static int append_labels(struct buf *b, const char *const *labels, const char *extra_key, const char *extra_value) {
        bool first = true;
        int r;

        for (size_t i = 0; labels && labels[i]; i += 2) {
                if (!labels[i + 1] || !name_valid(labels[i], false))
                        return -EINVAL;
                r = buf_printf(b, METRICS_TEXT_MAX, "%s%s=\"", first ? "{" : ",", labels[i]);
                if (r < 0)
                        return r;
                r = append_escaped(b, labels[i + 1], true);
                if (r < 0)
                        return r;
                r = buf_append(b, "\"", 1, METRICS_TEXT_MAX);
                if (r < 0)
                        return r;
                first = false;
        }
        if (extra_key) {
                r = buf_printf(b, METRICS_TEXT_MAX, "%s%s=\"%s\"", first ? "{" : ",", extra_key, extra_value);
                if (r < 0)
                        return r;
                first = false;
        }
        return first ? 0 : buf_append(b, "}", 1, METRICS_TEXT_MAX);
}

static int sample_line(struct buf *b, const char *name, const char *suffix, const char *const *labels,
                       const char *extra_key, const char *extra_value, const char *value) {
        int r = buf_printf(b, METRICS_TEXT_MAX, "%s%s", name, suffix);
        if (r < 0)
                return r;
        r = append_labels(b, labels, extra_key, extra_value);
        if (r < 0)
                return r;
        /* buf_printf last: the page stays NUL-terminated after every successful call. */
        return buf_printf(b, METRICS_TEXT_MAX, " %s\n", value);
}

/* Drops what a failed call appended. */
static void truncate_to(struct buf *b, size_t len) {
        b->len = len;
        if (len < b->cap)
                b->data[len] = 0;
}

static const char *const type_names[] = {
        [METRICS_COUNTER] = "counter",
        [METRICS_GAUGE] = "gauge",
        [METRICS_HISTOGRAM] = "histogram",
};

static int family(struct buf *b, const char *name, enum metrics_type type, const char *help) {
        int r;

        if ((unsigned)type >= ELEMENTSOF(type_names))
                return -EINVAL;
        if (help) {
                r = buf_printf(b, METRICS_TEXT_MAX, "# HELP %s ", name);
                if (r < 0)
                        return r;
                r = append_escaped(b, help, false);
                if (r < 0)
                        return r;
                r = buf_append(b, "\n", 1, METRICS_TEXT_MAX);
                if (r < 0)
                        return r;
        }
        return buf_printf(b, METRICS_TEXT_MAX, "# TYPE %s %s\n", name, type_names[type]);
}

int metrics_family(struct buf *b, const char *name, enum metrics_type type, const char *help) {
        size_t start = b->len;

        if (!name_valid(name, true))
                return -EINVAL;
        int r = family(b, name, type, help);
        if (r < 0)
                truncate_to(b, start);
        return r;
}

int metrics_sample(struct buf *b, const char *name, const char *const *labels, double value) {
        size_t start = b->len;

        if (!name_valid(name, true))
                return -EINVAL;
        char text[32];
        format_value(value, text);
        int r = sample_line(b, name, "", labels, NULL, NULL, text);
        if (r < 0)
                truncate_to(b, start);
        return r;
}

static int histogram(struct buf *b, const char *name, const char *const *labels, const struct latency_hist *h) {
        uint64_t cum = 0;
        char le[32], text[32];
        int r;

        for (size_t i = 0; i < LATENCY_BUCKETS; i++) {
                cum += h->buckets[i];
                if (i < LATENCY_BUCKETS - 1)
                        snprintf(le, sizeof(le), "%g", latency_bounds_ms[i]);
                else
                        snprintf(le, sizeof(le), "+Inf");
                snprintf(text, sizeof(text), "%" PRIu64, cum);
                r = sample_line(b, name, "_bucket", labels, "le", le, text);
                if (r < 0)
                        return r;
        }
        format_value(h->sum_ms, text);
        r = sample_line(b, name, "_sum", labels, NULL, NULL, text);
        if (r < 0)
                return r;
        snprintf(text, sizeof(text), "%" PRIu64, h->count);
        return sample_line(b, name, "_count", labels, NULL, NULL, text);
}

int metrics_histogram(struct buf *b, const char *name, const char *const *labels, const struct latency_hist *h) {
        size_t start = b->len;

        if (!name_valid(name, true))
                return -EINVAL;
        int r = histogram(b, name, labels, h);
        if (r < 0)
                truncate_to(b, start);
        return r;
}
