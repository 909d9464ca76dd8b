/* Fuzzes what a control connection peer sends: frames (length-prefixed JSON) and the
 * validators of the messages built from them (a worker's report, the deployments of a
 * head's config). Nothing may crash, leak or read out of bounds, whatever the bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ctlmsg.h"
#include "report.h"
#include "spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct buf in = {};
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
        return 0;
}
