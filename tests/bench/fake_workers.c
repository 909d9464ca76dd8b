/* fake_workers: drives serve-head with many simulated workers over the control protocol, to
 * measure how long the head takes to place replicas and to roll out a reload, and its RSS.
 *
 *   fake_workers --head HOST:PORT --token-file F --expect N [--workers 1000] [--cpus 16]
 *                [--address-base 127.1.0.0] [--reload-cmd CMD] [--reload-changes-config]
 *                [--settle-ms 1500] [--timeout S] [--head-pid PID]
 *
 * Each simulated worker opens one control connection, sends `hello` (node fake-NNNN, address
 * base+1+i), then a `report` every heartbeat interval listing, as RUNNING, the replicas its
 * latest `assign` asked for (fake pids, ids "app/Dep#N" unique across the run). It never starts
 * anything. Phases, each printed as one line of numbers:
 *   placement  first hello -> the replicas assigned over all workers sum to --expect
 *   settled    then until no assign arrived for --settle-ms (the head has seen the reports and
 *              told every node about its ready peers)
 *   reload     --reload-cmd runs (in the background) -> every worker got an assign with an epoch
 *              above the one it had, the sum is --expect again and, with --reload-changes-config,
 *              every deployment on every worker carries a user_config other than before
 *   head RSS   VmRSS and VmHWM of --head-pid
 * Exits 0 when every phase completed, 1 on a timeout, a refused hello, a closed connection or a
 * malformed frame (each said on stderr).
 *
 * Single-threaded: non-blocking sockets under one poll(), an output buffer per connection, so a
 * head that is slow to read one connection never stalls the others. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "macros.h"
#include "metrics.h"
#include "util.h"

#define FRAME_MAX (16u << 20)
#define OUT_LIMIT (64u << 20)
#define IN_LIMIT (FRAME_MAX + 4u)

struct fake_replica {
        uint64_t n; /* the N in "app/Dep#N" */
        int pid;
        double started_at;
};

struct fake_deployment {
        char *app, *name, *version, *user_config; /* user_config NULL when null */
        struct fake_replica *replicas;
        size_t n_replicas;
};

struct fake_worker {
        unsigned idx;
        int fd;
        char name[32], address[INET_ADDRSTRLEN];
        struct buf in, out;
        bool connected, welcomed;
        uint64_t next_report_ns;

        bool has_assign;
        uint64_t epoch;
        unsigned assigned; /* replicas the latest assign asked for */
        struct fake_deployment *deps;
        size_t n_deps;

        /* Reload: the epoch and (app, name, user_config) at the moment the command started. */
        uint64_t epoch_before;
        struct fake_deployment *deps_before;
        size_t n_deps_before;
        bool reloaded;
};

static struct {
        const char *head, *token_file, *reload_cmd;
        char *token;
        unsigned workers;
        double cpus;
        struct in_addr address_base;
        unsigned long long expect;
        bool reload_changes_config;
        unsigned settle_ms;
        double timeout_s;
        pid_t head_pid;
        double heartbeat_s;
} arg = {
        .workers = 1000,
        .cpus = 16,
        .settle_ms = 1500,
        .timeout_s = 300,
        .heartbeat_s = 1,
};

static struct fake_worker *workers;
static unsigned long long assigned_total; /* sum of fake_worker.assigned */
static unsigned reloaded_workers;
static bool reload_running;
static uint64_t replica_counter, last_assign_ns, assigns_received;

_noreturn_ _printf_(1, 2) static void die(const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "fake_workers: ");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n");
        exit(1);
}

static double wall_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double ms_since(uint64_t t0) { return (double)(now_ns() - t0) / 1e6; }

static void deps_free(struct fake_deployment *d, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(d[i].app);
                free(d[i].name);
                free(d[i].version);
                free(d[i].user_config);
                free(d[i].replicas);
        }
        free(d);
}

static char *xstrdup(const char *s) {
        char *p = s ? strdup(s) : NULL;
        if (s && !p)
                die("out of memory");
        return p;
}

static struct fake_deployment *deps_copy(const struct fake_deployment *d, size_t n) {
        struct fake_deployment *c = calloc(n + 1, sizeof(*c));
        if (!c)
                die("out of memory");
        for (size_t i = 0; i < n; i++) {
                c[i].app = xstrdup(d[i].app);
                c[i].name = xstrdup(d[i].name);
                c[i].version = xstrdup(d[i].version);
                c[i].user_config = xstrdup(d[i].user_config);
        }
        return c;
}

static void send_msg(struct fake_worker *w, cJSON *msg) {
        char *text = cJSON_PrintUnformatted(msg);
        if (!text)
                die("out of memory");
        size_t n = strlen(text);
        if (n > FRAME_MAX)
                die("%s: message of %zu bytes exceeds the frame limit", w->name, n);
        uint32_t be = htonl((uint32_t)n);
        if (buf_append(&w->out, &be, 4, OUT_LIMIT) < 0 || buf_append(&w->out, text, n, OUT_LIMIT) < 0)
                die("%s: more than %u bytes queued for the head; it stopped reading", w->name, OUT_LIMIT);
        free(text);
}

static cJSON *msg_new(const char *type) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddNumberToObject(m, "v", 1) || !cJSON_AddStringToObject(m, "type", type))
                die("out of memory");
        return m;
}

static cJSON *replicas_json(const struct fake_worker *w) {
        cJSON *a = cJSON_CreateArray();
        char id[512];

        for (size_t i = 0; i < w->n_deps; i++) {
                const struct fake_deployment *d = &w->deps[i];
                for (size_t j = 0; j < d->n_replicas; j++) {
                        cJSON *r = cJSON_CreateObject();
                        snprintf(id, sizeof(id), "%s/%s#%" PRIu64, d->app, d->name, d->replicas[j].n);
                        cJSON_AddStringToObject(r, "id", id);
                        cJSON_AddStringToObject(r, "app", d->app);
                        cJSON_AddStringToObject(r, "deployment", d->name);
                        cJSON_AddStringToObject(r, "version", d->version ? d->version : "");
                        cJSON_AddStringToObject(r, "state", "RUNNING");
                        cJSON_AddNumberToObject(r, "pid", d->replicas[j].pid);
                        cJSON_AddNumberToObject(r, "ongoing", 0);
                        cJSON_AddNumberToObject(r, "started_at", d->replicas[j].started_at);
                        cJSON_AddItemToArray(a, r);
                }
        }
        return a;
}

static void send_hello(struct fake_worker *w) {
        cJSON *m = msg_new("hello");
        cJSON *node = cJSON_AddObjectToObject(m, "node");
        cJSON *res;

        cJSON_AddStringToObject(m, "token", arg.token);
        cJSON_AddStringToObject(node, "name", w->name);
        cJSON_AddStringToObject(node, "address", w->address);
        cJSON_AddNumberToObject(node, "http_port", 8000);
        cJSON_AddNumberToObject(node, "data_port", 8267);
        cJSON_AddNumberToObject(node, "metrics_port", 8268);
        cJSON_AddObjectToObject(node, "labels");
        res = cJSON_AddObjectToObject(node, "resources");
        cJSON_AddNumberToObject(res, "num_cpus", arg.cpus);
        cJSON_AddNumberToObject(res, "memory", 64.0 * 1024 * 1024 * 1024);
        cJSON_AddArrayToObject(res, "gpus");
        cJSON_AddObjectToObject(res, "custom");
        cJSON_AddItemToObject(m, "replicas", cJSON_CreateArray());
        send_msg(w, m);
        cJSON_Delete(m);
}

static void send_report(struct fake_worker *w) {
        static const struct latency_hist empty;
        cJSON *m = msg_new("report");
        cJSON *deps;

        cJSON_AddItemToObject(m, "replicas", replicas_json(w));
        deps = cJSON_AddArrayToObject(m, "deployments");
        for (size_t i = 0; i < w->n_deps; i++) {
                cJSON *d = cJSON_CreateObject();
                cJSON_AddStringToObject(d, "app", w->deps[i].app);
                cJSON_AddStringToObject(d, "deployment", w->deps[i].name);
                cJSON_AddNumberToObject(d, "queued", 0);
                cJSON_AddNumberToObject(d, "requests", 0);
                cJSON_AddNumberToObject(d, "errors", 0);
                if (latency_hist_json_add(d, &empty) < 0)
                        die("out of memory");
                cJSON_AddItemToArray(deps, d);
        }
        send_msg(w, m);
        cJSON_Delete(m);
}

static const struct fake_deployment *find_dep(const struct fake_deployment *d, size_t n, const char *app,
                                              const char *name) {
        for (size_t i = 0; i < n; i++)
                if (streq(d[i].app, app) && streq(d[i].name, name))
                        return &d[i];
        return NULL;
}

/* Whether this worker shows the reload: a newer epoch and (when asked) new user_config everywhere. */
static bool worker_reloaded(const struct fake_worker *w) {
        if (w->n_deps_before == 0 && w->n_deps == 0)
                return true;
        if (!w->has_assign || w->epoch <= w->epoch_before)
                return false;
        if (!arg.reload_changes_config)
                return true;
        for (size_t i = 0; i < w->n_deps; i++) {
                const struct fake_deployment *old = find_dep(w->deps_before, w->n_deps_before, w->deps[i].app, w->deps[i].name);
                if (old && streq_ptr(old->user_config, w->deps[i].user_config))
                        return false;
        }
        return true;
}

static const char *get_str(const cJSON *o, const char *key, bool nullable, const char *who) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (nullable && (!v || cJSON_IsNull(v)))
                return NULL;
        if (!cJSON_IsString(v))
                die("%s: assign: field %s is not a string", who, key);
        return v->valuestring;
}

static double get_num(const cJSON *o, const char *key, double min, double max, const char *who) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < min || v->valuedouble > max)
                die("%s: assign: field %s is not a number in [%g, %g]", who, key, min, max);
        return v->valuedouble;
}

/* Takes the new desired state: replicas of an unchanged version stay (same ids and pids), the
 * rest are "started" now, as a worker's supervisor would. */
static void handle_assign(struct fake_worker *w, const cJSON *m) {
        const cJSON *deps = cJSON_GetObjectItemCaseSensitive(m, "deployments"), *d;
        struct fake_deployment *nd;
        size_t n = 0;
        unsigned total = 0;
        bool was_reloaded = w->reloaded;

        uint64_t epoch = (uint64_t)get_num(m, "epoch", 0, 9007199254740992.0, w->name);
        if (!cJSON_IsArray(deps))
                die("%s: assign: deployments is not an array", w->name);
        nd = calloc((size_t)cJSON_GetArraySize(deps) + 1, sizeof(*nd));
        if (!nd)
                die("out of memory");
        cJSON_ArrayForEach(d, deps) {
                struct fake_deployment *x = &nd[n++];
                x->app = xstrdup(get_str(d, "app", false, w->name));
                x->name = xstrdup(get_str(d, "name", false, w->name));
                x->version = xstrdup(get_str(d, "version", false, w->name));
                x->user_config = xstrdup(get_str(d, "user_config", true, w->name));
                unsigned want = (unsigned)get_num(d, "replicas", 0, 1e6, w->name);
                const struct fake_deployment *old = find_dep(w->deps, w->n_deps, x->app, x->name);
                size_t keep = old && streq(old->version, x->version) ? MIN(old->n_replicas, want) : 0;

                x->replicas = calloc(want ? want : 1, sizeof(*x->replicas));
                if (!x->replicas)
                        die("out of memory");
                if (keep)
                        memcpy(x->replicas, old->replicas, keep * sizeof(*x->replicas));
                for (size_t j = keep; j < want; j++) {
                        replica_counter++;
                        x->replicas[j] = (struct fake_replica){
                                .n = replica_counter,
                                .pid = (int)(100000 + replica_counter % 4000000),
                                .started_at = wall_now(),
                        };
                }
                x->n_replicas = want;
                total += want;
        }
        deps_free(w->deps, w->n_deps);
        w->deps = nd;
        w->n_deps = n;
        w->epoch = epoch;
        w->has_assign = true;
        assigned_total = assigned_total - w->assigned + total;
        w->assigned = total;
        last_assign_ns = now_ns();
        assigns_received++;
        if (reload_running) {
                w->reloaded = worker_reloaded(w);
                reloaded_workers += (unsigned)w->reloaded - (unsigned)was_reloaded;
        }
}

static void handle_message(struct fake_worker *w, const char *data, size_t len) {
        cJSON *m = cJSON_ParseWithLength(data, len);
        const cJSON *v, *type;

        if (!cJSON_IsObject(m))
                die("%s: frame is not a JSON object", w->name);
        v = cJSON_GetObjectItemCaseSensitive(m, "v");
        type = cJSON_GetObjectItemCaseSensitive(m, "type");
        if (!cJSON_IsNumber(v) || v->valuedouble != 1)
                die("%s: message without \"v\":1", w->name);
        if (!cJSON_IsString(type))
                die("%s: message without a type", w->name);
        if (streq(type->valuestring, "welcome")) {
                arg.heartbeat_s = get_num(m, "heartbeat_interval_s", 0.001, 3600, w->name);
                w->welcomed = true;
        } else if (streq(type->valuestring, "refused")) {
                const cJSON *reason = cJSON_GetObjectItemCaseSensitive(m, "reason");
                die("%s: refused: %s", w->name, cJSON_IsString(reason) ? reason->valuestring : "(no reason)");
        } else if (streq(type->valuestring, "assign"))
                handle_assign(w, m);
        else
                die("%s: unexpected message type \"%s\"", w->name, type->valuestring);
        cJSON_Delete(m);
}

static void on_readable(struct fake_worker *w) {
        for (;;) {
                if (buf_reserve(&w->in, 65536, IN_LIMIT) < 0 && buf_reserve(&w->in, 1, IN_LIMIT) < 0)
                        die("%s: input buffer full", w->name);
                ssize_t n = recv(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len, 0);
                if (n == 0)
                        die("%s: the head closed the connection", w->name);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                break;
                        die("%s: recv: %m", w->name);
                }
                w->in.len += (size_t)n;
        }
        size_t off = 0;
        while (w->in.len - off >= 4) {
                uint32_t be;
                memcpy(&be, w->in.data + off, 4);
                uint32_t len = ntohl(be);
                if (len < 1 || len > FRAME_MAX)
                        die("%s: frame length %u out of range", w->name, len);
                if (w->in.len - off - 4 < len)
                        break;
                handle_message(w, w->in.data + off + 4, len);
                off += 4 + (size_t)len;
        }
        buf_consume(&w->in, off);
}

static void on_writable(struct fake_worker *w) {
        if (!w->connected) {
                int err = 0;
                socklen_t l = sizeof(err);
                if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err)
                        die("%s: connect to %s: %s", w->name, arg.head, strerror(err ? err : errno));
                w->connected = true;
                return;
        }
        while (w->out.len > 0) {
                ssize_t n = send(w->fd, w->out.data, w->out.len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return;
                        die("%s: send: %m", w->name);
                }
                buf_consume(&w->out, (size_t)n);
        }
}

static struct sockaddr_storage head_addr;
static socklen_t head_addrlen;

static void resolve_head(void) {
        _cleanup_free_ char *host = xstrdup(arg.head);
        char *colon = strrchr(host, ':'), *h = host;
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;

        if (!colon)
                die("--head wants HOST:PORT");
        *colon = 0;
        if (*h == '[' && colon[-1] == ']') {
                h++;
                colon[-1] = 0;
        }
        int r = getaddrinfo(h, colon + 1, &hints, &ai);
        if (r)
                die("%s: %s", arg.head, gai_strerror(r));
        memcpy(&head_addr, ai->ai_addr, ai->ai_addrlen);
        head_addrlen = ai->ai_addrlen;
        freeaddrinfo(ai);
}

static void start_connect(struct fake_worker *w) {
        w->fd = socket(head_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (w->fd < 0)
                die("socket: %m (RLIMIT_NOFILE too low?)");
        int one = 1;
        setsockopt(w->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(w->fd, (struct sockaddr *)&head_addr, head_addrlen) == 0)
                w->connected = true;
        else if (errno != EINPROGRESS)
                die("%s: connect to %s: %m", w->name, arg.head);
}

static pid_t run_reload_cmd(void) {
        pid_t pid = fork();
        if (pid < 0)
                die("fork: %m");
        if (pid == 0) {
                execl("/bin/sh", "sh", "-c", arg.reload_cmd, (char *)NULL);
                _exit(127);
        }
        return pid;
}

static void raise_nofile(unsigned need) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("getrlimit: %m");
        if (rl.rlim_cur >= need)
                return;
        rl.rlim_cur = need;
        if (rl.rlim_max < need)
                rl.rlim_max = need; /* only root may; otherwise the error below says so */
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("cannot raise RLIMIT_NOFILE to %u: %m", need);
}

static void print_head_rss(void) {
        char path[64], line[256];
        long rss = -1, hwm = -1;

        snprintf(path, sizeof(path), "/proc/%d/status", (int)arg.head_pid);
        FILE *f = fopen(path, "re");
        if (!f) {
                fprintf(stderr, "fake_workers: %s: %m\n", path);
                return;
        }
        while (fgets(line, sizeof(line), f)) {
                sscanf(line, "VmRSS: %ld kB", &rss);
                sscanf(line, "VmHWM: %ld kB", &hwm);
        }
        fclose(f);
        printf("head RSS: %.1f MiB (peak %.1f MiB) with %u workers and %llu replicas\n", rss / 1024.0, hwm / 1024.0,
               arg.workers, assigned_total);
}

enum phase { PLACING, SETTLING, RELOADING, DONE };

static void usage(void) {
        fprintf(stderr, "usage: fake_workers --head HOST:PORT --token-file F --expect N [--workers N] [--cpus C]\n"
                        "         [--address-base A.B.C.D] [--reload-cmd CMD] [--reload-changes-config]\n"
                        "         [--settle-ms MS] [--timeout S] [--head-pid PID]\n");
        exit(2);
}

static void parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "head", required_argument, NULL, 'H' },       { "token-file", required_argument, NULL, 't' },
                { "workers", required_argument, NULL, 'w' },    { "cpus", required_argument, NULL, 'c' },
                { "address-base", required_argument, NULL, 'a' }, { "expect", required_argument, NULL, 'e' },
                { "reload-cmd", required_argument, NULL, 'r' }, { "reload-changes-config", no_argument, NULL, 'C' },
                { "settle-ms", required_argument, NULL, 's' },  { "timeout", required_argument, NULL, 'T' },
                { "head-pid", required_argument, NULL, 'p' },   { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        inet_pton(AF_INET, "127.1.0.0", &arg.address_base);
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                switch (c) {
                case 'H': arg.head = optarg; break;
                case 't': arg.token_file = optarg; break;
                case 'w': arg.workers = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'c': arg.cpus = strtod(optarg, NULL); break;
                case 'a':
                        if (inet_pton(AF_INET, optarg, &arg.address_base) != 1)
                                die("--address-base wants an IPv4 address");
                        break;
                case 'e': arg.expect = strtoull(optarg, NULL, 10); break;
                case 'r': arg.reload_cmd = optarg; break;
                case 'C': arg.reload_changes_config = true; break;
                case 's': arg.settle_ms = (unsigned)strtoul(optarg, NULL, 10); break;
                case 'T': arg.timeout_s = strtod(optarg, NULL); break;
                case 'p': arg.head_pid = (pid_t)strtol(optarg, NULL, 10); break;
                default: usage();
                }
        }
        if (!arg.head || !arg.token_file || !arg.expect || !arg.workers || arg.workers > 60000 || !(arg.cpus > 0) ||
            !(arg.timeout_s > 0) || optind != argc)
                usage();
}

int main(int argc, char **argv) {
        _cleanup_free_ struct pollfd *pfd = NULL;
        uint64_t t_first_hello = 0, t_phase = 0, deadline;
        enum phase phase = PLACING;
        pid_t reload_pid = -1;
        int r;

        parse_args(argc, argv);
        r = read_file(arg.token_file, 4096, &arg.token, NULL);
        if (r < 0)
                die("%s: %s", arg.token_file, strerror(-r));
        for (size_t n = strlen(arg.token); n > 0 && strchr(" \t\r\n", arg.token[n - 1]); n--)
                arg.token[n - 1] = 0;
        size_t lead = strspn(arg.token, " \t\r\n");
        memmove(arg.token, arg.token + lead, strlen(arg.token + lead) + 1);

        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);
        raise_nofile(arg.workers + 64);
        resolve_head();

        workers = calloc(arg.workers, sizeof(*workers));
        pfd = calloc(arg.workers, sizeof(*pfd));
        if (!workers || !pfd)
                die("out of memory");
        uint32_t base = ntohl(arg.address_base.s_addr);
        for (unsigned i = 0; i < arg.workers; i++) {
                struct fake_worker *w = &workers[i];
                struct in_addr a = { .s_addr = htonl(base + 1 + i) };
                w->idx = i;
                snprintf(w->name, sizeof(w->name), "fake-%04u", i);
                inet_ntop(AF_INET, &a, w->address, sizeof(w->address));
                start_connect(w);
        }

        deadline = now_ns() + sec_to_ns(arg.timeout_s);
        for (;;) {
                uint64_t now = now_ns();
                unsigned unsent_hello = 0;

                for (unsigned i = 0; i < arg.workers; i++) {
                        struct fake_worker *w = &workers[i];
                        if (w->connected && w->next_report_ns == 0) {
                                if (!t_first_hello)
                                        t_first_hello = now;
                                send_hello(w);
                                /* Spread the workers' heartbeats over the interval, as real ones drift. */
                                w->next_report_ns = now + sec_to_ns(arg.heartbeat_s) * (i + 1) / arg.workers;
                        } else if (w->connected && now >= w->next_report_ns) {
                                send_report(w);
                                w->next_report_ns += sec_to_ns(arg.heartbeat_s);
                                if (w->next_report_ns < now)
                                        w->next_report_ns = now + sec_to_ns(arg.heartbeat_s);
                        }
                        if (w->out.len && w->connected)
                                on_writable(w); /* try at once; poll picks up what does not fit */
                        unsent_hello += !w->connected;
                        pfd[i] = (struct pollfd){
                                .fd = w->fd,
                                .events = POLLIN | (!w->connected || w->out.len ? POLLOUT : 0),
                        };
                }

                now = now_ns();
                switch (phase) {
                case PLACING:
                        if (t_first_hello && assigned_total == arg.expect) {
                                printf("placement: %llu replicas on %u workers in %.0f ms\n", assigned_total, arg.workers,
                                       ms_since(t_first_hello));
                                phase = SETTLING;
                                t_phase = now;
                                deadline = now + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case SETTLING:
                        if (now - last_assign_ns >= arg.settle_ms * NSEC_PER_MSEC && assigned_total == arg.expect) {
                                printf("settled: last assign %.0f ms after placement, then none for %u ms (%" PRIu64
                                       " assigns so far)\n",
                                       (double)(MAX(last_assign_ns, t_phase) - t_phase) / 1e6, arg.settle_ms, assigns_received);
                                if (!arg.reload_cmd) {
                                        phase = DONE;
                                        break;
                                }
                                reloaded_workers = 0;
                                for (unsigned i = 0; i < arg.workers; i++) {
                                        struct fake_worker *w = &workers[i];
                                        w->epoch_before = w->epoch;
                                        w->deps_before = deps_copy(w->deps, w->n_deps);
                                        w->n_deps_before = w->n_deps;
                                        /* A worker with nothing before and after has nothing to roll out. */
                                        w->reloaded = w->n_deps == 0;
                                        reloaded_workers += w->reloaded;
                                }
                                reload_running = true;
                                t_phase = now_ns();
                                reload_pid = run_reload_cmd();
                                phase = RELOADING;
                                deadline = t_phase + sec_to_ns(arg.timeout_s);
                        }
                        break;
                case RELOADING:
                        if (reloaded_workers == arg.workers && assigned_total == arg.expect) {
                                printf("reload: %llu replicas on %u workers in %.0f ms\n", assigned_total, arg.workers,
                                       ms_since(t_phase));
                                phase = DONE;
                        }
                        break;
                case DONE:
                        break;
                }
                if (reload_pid > 0) {
                        int status;
                        if (waitpid(reload_pid, &status, WNOHANG) == reload_pid) {
                                reload_pid = -1;
                                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                                        die("reload command failed: %s", arg.reload_cmd);
                        }
                }
                if (phase == DONE && reload_pid < 0)
                        break;
                if (now >= deadline) {
                        static const char *const names[] = { "placement", "settling", "reload", "" };
                        die("timeout after %.0f s in %s: %llu of %llu replicas assigned, %u workers not connected, "
                            "%u of %u workers reloaded",
                            arg.timeout_s, names[phase], assigned_total, arg.expect, unsent_hello, reloaded_workers,
                            arg.workers);
                }

                /* Wake for the next heartbeat due, the settle check or the deadline, whichever is first. */
                uint64_t wake = deadline;
                for (unsigned i = 0; i < arg.workers; i++)
                        if (workers[i].next_report_ns && workers[i].next_report_ns < wake)
                                wake = workers[i].next_report_ns;
                if (phase == SETTLING && last_assign_ns + arg.settle_ms * NSEC_PER_MSEC < wake)
                        wake = last_assign_ns + arg.settle_ms * NSEC_PER_MSEC;
                if (reload_pid > 0 && now + 50 * NSEC_PER_MSEC < wake)
                        wake = now + 50 * NSEC_PER_MSEC;
                int timeout_ms = wake > now ? (int)((wake - now + NSEC_PER_MSEC - 1) / NSEC_PER_MSEC) : 0;
                if (poll(pfd, arg.workers, timeout_ms) < 0 && errno != EINTR)
                        die("poll: %m");
                for (unsigned i = 0; i < arg.workers; i++) {
                        if (pfd[i].revents & (POLLOUT | POLLERR | POLLHUP))
                                if (!workers[i].connected || workers[i].out.len)
                                        on_writable(&workers[i]);
                        if ((pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) && workers[i].connected)
                                on_readable(&workers[i]);
                }
        }

        if (arg.head_pid > 0)
                print_head_rss();
        for (unsigned i = 0; i < arg.workers; i++) {
                close(workers[i].fd);
                buf_free(&workers[i].in);
                buf_free(&workers[i].out);
                deps_free(workers[i].deps, workers[i].n_deps);
                deps_free(workers[i].deps_before, workers[i].n_deps_before);
        }
        free(workers);
        return 0;
}
