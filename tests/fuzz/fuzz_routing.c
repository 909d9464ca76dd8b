/* Fuzzes what a worker does with `routing` messages from the head (routing_table.h): a sequence
 * of messages (JSON texts separated by NUL bytes), whole tables and deltas, applied in turn to
 * one table. Nothing may crash, leak or read out of bounds, whatever the bytes; and whatever a
 * message did to the table, the table must survive a round trip, and a delta must say exactly
 * what changed:
 *   - the whole table written out and applied to an empty table gives the same table;
 *   - after an applied delta, the head's delta from the table before to the table after,
 *     applied to the table before, gives the table after. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "routing_table.h"

/* The whole table as text, its version left out (deltas made here number their own). */
static char *table_text(const struct routing_table *t) {
        cJSON *m = routing_table_full_message(t);
        char *s;
        if (!m)
                return NULL;
        cJSON_DeleteItemFromObjectCaseSensitive(m, "version");
        s = cJSON_PrintUnformatted(m);
        cJSON_Delete(m);
        return s;
}

/* A copy of t made through its whole message, or an invalid table when out of memory. */
static void table_copy(const struct routing_table *t, struct routing_table *ret) {
        char err[256];
        cJSON *m = t->valid ? routing_table_full_message(t) : NULL;
        routing_table_init(ret);
        if (m)
                check(routing_table_apply(ret, m, err, sizeof err) == 0 || !ret->valid);
        cJSON_Delete(m);
}

static void check_invariants(const struct routing_table *before, const struct routing_table *t, bool was_delta) {
        struct routing_table copy, again;
        char err[256];
        char *a, *b;

        table_copy(t, &copy);
        if (copy.valid) {
                a = table_text(t);
                b = table_text(&copy);
                check(!a || !b || strcmp(a, b) == 0);
                free(a);
                free(b);
                cJSON *dm = NULL;
                check(routing_table_delta_message(t, &copy, &dm) >= 0);
                check(dm == NULL); /* nothing changed */
        }
        routing_table_done(&copy);

        if (!was_delta || !before->valid)
                return;
        cJSON *dm = NULL;
        int r = routing_table_delta_message(before, t, &dm);
        check(r >= 0);
        table_copy(before, &again);
        if (r > 0 && again.valid) {
                check(routing_table_apply(&again, dm, err, sizeof err) == 0);
                a = table_text(t);
                b = table_text(&again);
                check(!a || !b || strcmp(a, b) == 0);
                free(a);
                free(b);
        }
        cJSON_Delete(dm);
        routing_table_done(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct routing_table t;
        char err[256];
        size_t at = 0;

        routing_table_init(&t);
        /* A handful of messages is enough to reach every path; more only slows each run. */
        for (int k = 0; k < 8 && at < size; k++) {
                const uint8_t *end = memchr(data + at, 0, size - at);
                size_t len = end ? (size_t)(end - (data + at)) : size - at;
                cJSON *m = cJSON_ParseWithLength((const char *)data + at, len);
                at += len + 1;
                if (!m)
                        continue;
                struct routing_table before;
                table_copy(&t, &before);
                uint64_t version = t.version;
                int r = routing_table_apply(&t, m, err, sizeof err);
                check(r == 0 || r == -ESTALE || r == -EINVAL || r == -ENOMEM);
                if (r == -EINVAL)
                        check(err[0] != '\0');
                if (r != 0)
                        check(t.version == version); /* unchanged on failure */
                else {
                        check(t.valid);
                        bool delta = cJSON_GetObjectItemCaseSensitive(m, "base") != NULL;
                        check(!delta || t.version == version + 1);
                        check_invariants(&before, &t, delta && t.version == version + 1);
                }
                routing_table_done(&before);
                cJSON_Delete(m);
        }
        routing_table_done(&t);
        return 0;
}
