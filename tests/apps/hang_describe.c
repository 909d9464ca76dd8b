/* An application whose code never finishes describing itself: loaded by `serve-replica
 * --describe`, its constructor blocks forever (as user code with a slow or stuck initialiser
 * would). Loaded for serving it is the echo application. The head must keep working while a
 * describe of it runs, and give up on it at its deadline. */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "serve.h"

__attribute__((constructor)) static void hang_when_described(void) {
        char cmdline[4096];
        ssize_t n;
        int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return;
        n = read(fd, cmdline, sizeof cmdline - 1);
        close(fd);
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(cmdline + i) + 1) {
                cmdline[n] = '\0';
                if (strcmp(cmdline + i, "--describe") == 0) {
                        fprintf(stderr, "hang_describe: describing forever\n");
                        for (;;)
                                pause();
                }
        }
}

static int echo(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        size_t n;
        const void *body = serve_request_body(req, &n);
        return serve_response_write(resp, body, n);
}

static const struct serve_handler handlers[] = {
        { "__call__", echo },
        { NULL, NULL },
};

static const struct serve_deployment Hang = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Hang",
        .handlers = handlers,
};

SERVE_APPLICATION(app, &Hang, &Hang);
