/* serve: the command line. `run` is the all-in-one foreground mode; the cluster commands
 * (status, deploy, config, nodes, shutdown) talk to serve-head's REST API. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "run.h"

int main(int argc, char **argv) {
        log_init("serve");
        if (argc < 2) {
                cli_usage(stderr);
                return 2;
        }
        if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
                cli_usage(stdout);
                return 0;
        }
        if (strcmp(argv[1], "--version") == 0) {
                printf("serve %s\n", PACKAGE_VERSION);
                return 0;
        }
        if (strcmp(argv[1], "run") == 0)
                return serve_run(argc - 1, argv + 1);
        if (strcmp(argv[1], "help") == 0 && argc == 3 && strcmp(argv[2], "run") == 0)
                return serve_run(2, (char *[]){ (char *)"run", (char *)"--help", NULL });
        /* Everything else, global options before the command included. */
        return cli_main(argc, argv, stdout, stderr);
}
