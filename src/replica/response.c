/* What every way of running a handler (plain, batched) shares about its response. Alone in
 * its file so batch.c's unit test links it without the rest of the replica. */

#include <string.h>

#include "replica-internal.h"

void response_internal_error(struct serve_response *resp) {
        serve_response_clear(resp);
        resp->status = 500;
        serve_response_write(resp, "internal error\n", strlen("internal error\n"));
}
