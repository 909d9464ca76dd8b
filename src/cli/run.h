/* `serve run FILE`: proxy, router and replicas for FILE in the foreground. */
#pragma once

int serve_run(int argc, char **argv);
