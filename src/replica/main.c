/* serve-replica --describe IMPORT_PATH [--working-dir DIR]
 * serve-replica --control-fd N */

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "replica.h"

static void usage(FILE *f) {
        fprintf(f, "Usage: serve-replica --describe MODULE:SYMBOL [--working-dir DIR]\n"
                   "       serve-replica --control-fd N\n"
                   "Started by serve-worker; --describe prints the application's deployments.\n");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "describe", required_argument, NULL, 'd' },
                { "working-dir", required_argument, NULL, 'w' },
                { "control-fd", required_argument, NULL, 'c' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *describe = NULL, *working_dir = NULL;
        int control_fd = -1, c;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case 'd':
                        describe = optarg;
                        break;
                case 'w':
                        working_dir = optarg;
                        break;
                case 'c': {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (*optarg == '\0' || *end || v < 0 || v > 65535) {
                                fprintf(stderr, "serve-replica: invalid --control-fd '%s'\n", optarg);
                                return 1;
                        }
                        control_fd = (int) v;
                        break;
                }
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 1;
                }
        }
        if (optind < argc || (!describe) == (control_fd < 0)) {
                usage(stderr);
                return 1;
        }

        if (describe) {
                char *error = NULL;
                if (replica_describe(describe, working_dir, stdout, &error) < 0) {
                        fprintf(stderr, "%s\n", error ? error : "serve-replica: out of memory");
                        free(error);
                        return 1;
                }
                return fflush(stdout) == 0 ? 0 : 1;
        }

        log_init("serve-replica");
        return replica_run(control_fd);
}
