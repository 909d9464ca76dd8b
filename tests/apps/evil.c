/* A misbehaving application for tests: the proxy must survive each of these and answer 502.
 *
 *   /garbage  writes a record with an impossible length into the response ring
 *   /crash    abort()s the replica
 *   /hang     never answers, ignoring cancellation
 *   /hold     logs "evil: holding a request" (so a test knows the request arrived), then as
 *             /hang; with ?ms=N it answers 200 "held\n" after N ms instead
 *   other     200 "evil ok\n" */

#include <dirent.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve.h"
#include "shm/proto.h"
#include "shm/segment.h"

#define PAGE 4096u

/* The segment's mapping, found by the memfd's name (segment_create("serve-seg", ...)). */
static struct segment_ctl *find_segment(void) {
        FILE *f = fopen("/proc/self/maps", "re");
        char line[512];
        unsigned long start = 0;

        if (!f)
                return NULL;
        while (fgets(line, sizeof line, f))
                if (strstr(line, "/memfd:serve-seg") && sscanf(line, "%lx-", &start) == 1)
                        break;
                else
                        start = 0;
        fclose(f);
        struct segment_ctl *ctl = (struct segment_ctl *) start;
        return ctl && ctl->magic == SEGMENT_MAGIC ? ctl : NULL;
}

/* Wakes whoever sleeps on an eventfd of ours: one of them is the proxy's response doorbell. */
static void ring_every_eventfd(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d))) {
                char path[300], target[64];
                ssize_t n;
                snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
                n = readlink(path, target, sizeof target - 1);
                if (n <= 0)
                        continue;
                target[n] = '\0';
                if (strcmp(target, "anon_inode:[eventfd]") == 0) {
                        uint64_t one = 1;
                        (void) !write(atoi(de->d_name), &one, sizeof one);
                }
        }
        closedir(d);
}

/* Publishes a record header whose length exceeds any ring, at the response ring's head.
 * Layout as in src/shm/segment.c: control block (one page), request ring, response ring, each
 * ring struct ring_shared + data rounded up to a page. */
static int write_garbage(void) {
        struct segment_ctl *ctl = find_segment();
        if (!ctl)
                return -1;
        uint32_t size = ctl->ring_size;
        size_t area = (sizeof(struct ring_shared) + size + PAGE - 1) & ~(size_t) (PAGE - 1);
        uint8_t *resp = (uint8_t *) ctl + PAGE + area;
        struct ring_shared *sh = (struct ring_shared *) resp;
        uint8_t *data = resp + sizeof(struct ring_shared);

        uint32_t head = atomic_load_explicit(&sh->head, memory_order_relaxed);
        struct ring_record_hdr h = { .len = 0x7ffffff0u, .type = PROTO_RESP_START };
        memcpy(data + (head & (size - 1)), &h, sizeof h);
        /* Pairs with the proxy's load-acquire of head: it sees the header we just wrote. */
        atomic_store_explicit(&sh->head, head + RING_HDR_SIZE, memory_order_release);
        return 0;
}

static int evil(serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        const char *path = serve_request_path(req);

        if (strcmp(path, "/garbage") == 0) {
                if (write_garbage() < 0) {
                        serve_log(ctx, 3, "evil: segment not found in /proc/self/maps");
                        return -1;
                }
                /* Never answer: our own response would overwrite the garbage at the same spot
                 * before the proxy looked. Wake the proxy instead and wait to be killed. */
                ring_every_eventfd();
                for (;;)
                        pause();
        }
        if (strcmp(path, "/crash") == 0)
                abort();
        if (strcmp(path, "/hold") == 0) {
                char ms[32];
                serve_log(ctx, 6, "evil: holding a request");
                if (serve_request_query_param(req, "ms", ms, sizeof ms) > 0) {
                        usleep((useconds_t)atoi(ms) * 1000);
                        return serve_response_write(resp, "held\n", 5);
                }
        }
        if (strcmp(path, "/hang") == 0 || strcmp(path, "/hold") == 0)
                for (;;)
                        pause();

        serve_response_add_header(resp, "Content-Type", "text/plain");
        return serve_response_write(resp, "evil ok\n", strlen("evil ok\n"));
}

static const struct serve_handler evil_handlers[] = {
        { "__call__", evil },
        { NULL, NULL },
};

static const struct serve_deployment Evil = {
        .abi_version = SERVE_ABI_VERSION,
        .name = "Evil",
        .handlers = evil_handlers,
};

SERVE_APPLICATION(app, &Evil, &Evil);
