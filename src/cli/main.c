/* serve: the command line. */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "run.h"

static void usage(FILE *f) {
        fprintf(f,
                "Usage: serve COMMAND [OPTIONS]\n"
                "\n"
                "Ray Serve's model on bare metal: deployments, replicas and an io_uring HTTP proxy.\n"
                "\n"
                "Commands:\n"
                "  run FILE       Serve the applications of FILE (apps.yaml) in the foreground:\n"
                "                 HTTP proxy, router and replica processes, no systemd needed.\n"
                "                 SIGHUP re-reads FILE; SIGINT/SIGTERM drain and exit.\n"
                "                 Run 'serve run --help' for its options.\n"
                "\n"
                "Options:\n"
                "  -h, --help     Show this help\n"
                "  --version      Show the version\n");
}

int main(int argc, char **argv) {
        log_init("serve");
        if (argc < 2) {
                usage(stderr);
                return 2;
        }
        if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
                usage(stdout);
                return 0;
        }
        if (strcmp(argv[1], "--version") == 0) {
                printf("serve %s\n", PACKAGE_VERSION);
                return 0;
        }
        if (strcmp(argv[1], "run") == 0)
                return serve_run(argc - 1, argv + 1);
        fprintf(stderr, "serve: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
}
