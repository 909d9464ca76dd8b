/* Fuzzes what a control connection peer sends: frames (length-prefixed JSON) and the
 * validators of the messages built from them (a worker's report, the deployments of a
 * head's config). Nothing may crash, leak or read out of bounds, whatever the bytes. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "config_msg.h"
#include "fuzz.h"
#include "ctlmsg.h"
#include "report.h"
#include "spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct buf in = {};
        cJSON *held = NULL; /* a worker's config: each `config` applies on top (whole or delta) */
        char err[256];

        if (buf_append(&in, data, size, SIZE_MAX) < 0)
                return 0;
        for (;;) {
                cJSON *m = NULL;
                const char *type = NULL, *why = NULL;
                int r = ctlmsg_decode(&in, &m, &type, &why);
                if (r <= 0)
                        break;
                if (strcmp(type, "report") == 0)
                        (void)report_validate(m, err, sizeof err);
                if (strcmp(type, "config") == 0) {
                        /* As text: cJSON_Compare() tells apart equal objects with a key twice. */
                        char *before = held ? cJSON_PrintUnformatted(held) : NULL;
                        const cJSON *held_was = held;
                        int r = config_msg_apply(&held, m, err, sizeof err);
                        check(r == 0 || r == -ESTALE || r == -EINVAL || r == -ENOMEM);
                        if (r != 0) { /* unchanged on failure */
                                char *after = held ? cJSON_PrintUnformatted(held) : NULL;
                                check(held == held_was && (!before || !after || strcmp(before, after) == 0));
                                free(after);
                        }
                        free(before);
                }
                const cJSON *it;
                cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(m, "deployments")) {
                        struct dep_spec d;
                        if (dep_spec_from_json(it, &d, err, sizeof err) == 0) {
                                cJSON *back = dep_spec_to_json(&d);
                                cJSON_Delete(back);
                                dep_spec_done(&d);
                        }
                }
                cJSON_Delete(m);
        }
        buf_free(&in);
        cJSON_Delete(held);
        return 0;
}
