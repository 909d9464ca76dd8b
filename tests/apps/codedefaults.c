/* Code defaults for user_config and autoscaling_config (ABI 3): `app`'s Defaults answers the
 * user_config its init received and autoscales 2..3 unless apps.yaml says otherwise; `bad`'s
 * autoscaling_config default is invalid (a config error naming the deployment). */
#include <stdlib.h>
#include <string.h>

#include "serve.h"

static int init(serve_ctx *ctx, const char *args, const char *user_config) {
        serve_ctx_set_state(ctx, strdup(user_config ? user_config : "none"));
        return 0;
}

static int call(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *uc = serve_ctx_state(ctx);
        return serve_response_write(resp, uc, strlen(uc));
}

static int reconfigure(serve_ctx *ctx, const char *user_config) {
        return 0; /* the answer stays what init got: enough to see the start's value */
}

static const struct serve_handler handlers[] = { { "__call__", call }, { NULL, NULL } };

static const struct serve_deployment Defaults = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Defaults",
        .init = init,
        .handlers = handlers,
        .reconfigure = reconfigure,
        .user_config_json = "{\"from\":\"code\"}",
        .autoscaling_config_json = "{\"min_replicas\":2,\"max_replicas\":3}",
};
SERVE_APPLICATION(app, &Defaults, &Defaults);

static const struct serve_deployment BadDefaults = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "BadDefaults",
        .init = init,
        .handlers = handlers,
        .autoscaling_config_json = "{\"min_replicas\":3,\"max_replicas\":2}",
};
SERVE_APPLICATION(bad, &BadDefaults, &BadDefaults);
