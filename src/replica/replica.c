/* The replica process. Its max_ongoing_requests handler threads take turns reading the request
 * ring, leader/followers style: the one thread reading it (the leader) stops at the first
 * request that is ready to run, gives the ring up, makes sure another thread will take it (an
 * idle one is woken, at most one wake outstanding), and runs the handler itself, so the common
 * case hands nothing from thread to thread. When every handler thread is busy, the main thread
 * reads the ring instead (cancels must still arrive) and queues ready requests for the next
 * thread that finishes. The main thread also reads the control socket and signals. Handler
 * threads answer through the response ring (one producer: they take turns under send_lock); a
 * health thread writes the heartbeat and runs check_health.
 *
 * Every request received gets exactly one complete response, because the proxy matches
 * responses against its in-flight table: cancelled ones get 499, rejected ones 503. The proxy is
 * trusted but still checked: a record that makes no sense ends the process (exit 2), since
 * guessing would desynchronize the two sides. */

#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>

#include "batch.h"
#include "calls.h"
#include "graph.h"
#include "log.h"
#include "macros.h"
#include "module.h"
#include "replica-internal.h"
#include "replica.h"
#include "sdk-internal.h"
#include "shm/proto.h"
#include "shm/segment.h"
#include "util.h"

#define REPLICA_MAX_THREADS 1024
#define REPLICA_MAX_BODY PROTO_MAX_RESP_BODY
#define REPLICA_MAX_LIST 1024 /* deployments per app, handlers per deployment */
#define REPLICA_DEFAULT_MAX_ONGOING 5
#define REPLICA_DEFAULT_HEALTH_PERIOD_S 10.0
#define REPLICA_DEFAULT_GRACEFUL_S 20.0
#define REPLICA_HEARTBEAT_NS (100 * NSEC_PER_MSEC)
#define REPLICA_RECORD_BATCH 256 /* records between looks at the control socket */

/* ---- loading and validating the module ---- */

/* ABI 2 modules (built before the code defaults for user_config and autoscaling_config) still
 * load: their structs end before those fields, which are read only at >= 3. */
#define REPLICA_MIN_ABI 2u

static bool abi_supported(uint32_t v) { return v >= REPLICA_MIN_ABI && v <= SERVE_ABI_VERSION; }

/* The ABI 3 code defaults of d (NULL for older modules). */
static const char *dep_user_config_default(const struct serve_deployment *d) {
        return d->abi_version >= 3 ? d->user_config_json : NULL;
}
static const char *dep_autoscaling_default(const struct serve_deployment *d) {
        return d->abi_version >= 3 ? d->autoscaling_config_json : NULL;
}


static size_t handler_count(const struct serve_deployment *d) {
        size_t n = 0;
        while (d->handlers && n < REPLICA_MAX_LIST && (d->handlers[n].name || d->handlers[n].fn))
                n++;
        return n;
}

static size_t batched_count(const struct serve_deployment *d) {
        size_t n = 0;
        while (d->batched && n < REPLICA_MAX_LIST && (d->batched[n].name || d->batched[n].fn))
                n++;
        return n;
}

/* Handler i of the numbering: the plain ones (n_plain of them), then the batched ones. */
static const char *handler_name(const struct serve_deployment *d, size_t n_plain, size_t i) {
        return i < n_plain ? d->handlers[i].name : d->batched[i - n_plain].name;
}

/* The handler HTTP requests go to: "__call__" when there is one, else the first plain handler,
 * else the first batched one (d has at least one). */
static uint32_t http_handler_index(const struct serve_deployment *d) {
        size_t n_plain = handler_count(d), n = n_plain + batched_count(d);

        for (size_t i = 0; i < n; i++)
                if (streq(handler_name(d, n_plain, i), "__call__"))
                        return (uint32_t) i;
        return 0;
}

int deployment_handler_index(const struct serve_deployment *d, const char *name) {
        size_t n_plain = handler_count(d), n = n_plain + batched_count(d);

        for (size_t i = 0; i < n; i++)
                if (streq(handler_name(d, n_plain, i), name))
                        return (int) i;
        return -ENOENT;
}

/* Checks d's handlers, plain and batched. */
static int handlers_validate(const struct serve_deployment *d, const char *where, char **ret_error) {
        size_t h = handler_count(d), nb = batched_count(d);

        if (h >= REPLICA_MAX_LIST)
                return error_set(-EINVAL, ret_error,
                                 "%s: deployment '%s': handlers not terminated by { NULL, NULL }",
                                 where, d->name);
        if (nb >= REPLICA_MAX_LIST)
                return error_set(-EINVAL, ret_error,
                                 "%s: deployment '%s': batched handlers not terminated by { NULL }",
                                 where, d->name);
        if (h + nb == 0)
                return error_set(-EINVAL, ret_error, "%s: deployment '%s' has no handlers", where, d->name);
        for (size_t j = 0; j < h; j++)
                if (!d->handlers[j].name || !*d->handlers[j].name || !d->handlers[j].fn)
                        return error_set(-EINVAL, ret_error,
                                         "%s: deployment '%s': handler #%zu needs a name and a function",
                                         where, d->name, j);
        for (size_t j = 0; j < nb; j++) {
                const struct serve_batch_handler *b = &d->batched[j];
                unsigned max;
                double wait_s;

                if (!b->name || !*b->name || !b->fn)
                        return error_set(-EINVAL, ret_error,
                                         "%s: deployment '%s': batched handler #%zu needs a name and a function",
                                         where, d->name, j);
                batch_handler_params(b, &max, &wait_s);
                if (!batch_params_valid(max, wait_s))
                        return error_set(-EINVAL, ret_error,
                                         "%s: deployment '%s': batched handler '%s': batch_wait_timeout_s must be from 0 to %g seconds",
                                         where, d->name, b->name, BATCH_MAX_WAIT_S);
        }
        for (size_t i = 0; i < h + nb; i++)
                for (size_t j = 0; j < i; j++)
                        if (streq(handler_name(d, h, i), handler_name(d, h, j)))
                                return error_set(-EINVAL, ret_error,
                                                 "%s: deployment '%s': handler name '%s' is used twice",
                                                 where, d->name, handler_name(d, h, i));
        return 0;
}

int replica_app_validate(const struct serve_application *app, const char *where, char **ret_error) {
        bool ingress_found = false;
        size_t n;

        if (!abi_supported(app->abi_version))
                return error_set(-EINVAL, ret_error, "%s: abi_version %u, this serve supports %u to %u",
                              where, app->abi_version, REPLICA_MIN_ABI, SERVE_ABI_VERSION);
        if (!app->ingress)
                return error_set(-EINVAL, ret_error, "%s: no ingress deployment", where);
        if (!app->deployments || !app->deployments[0])
                return error_set(-EINVAL, ret_error, "%s: no deployments", where);

        for (n = 0; n < REPLICA_MAX_LIST && app->deployments[n]; n++) {
                const struct serve_deployment *d = app->deployments[n];

                if (!abi_supported(d->abi_version))
                        return error_set(-EINVAL, ret_error,
                                      "%s: deployment #%zu: abi_version %u, this serve supports %u to %u",
                                      where, n, d->abi_version, REPLICA_MIN_ABI, SERVE_ABI_VERSION);
                if (!d->name || !*d->name)
                        return error_set(-EINVAL, ret_error, "%s: deployment #%zu has no name", where, n);
                for (size_t j = 0; j < n; j++)
                        if (streq(app->deployments[j]->name, d->name))
                                return error_set(-EINVAL, ret_error,
                                              "%s: deployment name '%s' is used twice", where,
                                              d->name);
                int r = handlers_validate(d, where, ret_error);
                if (r < 0)
                        return r;
                if (d == app->ingress)
                        ingress_found = true;
        }
        if (n >= REPLICA_MAX_LIST)
                return error_set(-EINVAL, ret_error, "%s: deployments not NULL-terminated", where);
        if (!ingress_found)
                return error_set(-EINVAL, ret_error,
                              "%s: ingress '%s' is not listed among the deployments", where,
                              app->ingress->name ? app->ingress->name : "(unnamed)");
        return graph_validate(app, where, ret_error);
}

static bool is_python_module(const char *path) {
        size_t n = strlen(path);
        return n > 3 && streq(path + n - 3, ".py");
}

typedef int (*python_load_fn)(const char *py_path, const char *symbol, const char *working_dir,
                              const struct serve_application **ret_app, char **ret_error);

/* A .py module goes to the Python bridge (serve_python.so, which embeds CPython): it imports
 * the module and hands back an application synthesized from its @serve.deployment classes. */
static int python_app_load(const char *path, const char *symbol, const char *working_dir,
                           const struct serve_application **ret_app, char **ret_error) {
#ifdef HAVE_PYTHON
        const char *bridge = getenv("SERVE_PYTHON_BRIDGE");
        _cleanup_free_ char *error = NULL;
        python_load_fn load;
        void *dl;
        int r;

        if (!bridge || !*bridge)
                bridge = PKGLIBDIR "/python/serve_python.so";
        /* RTLD_GLOBAL: CPython's extension modules (numpy's) resolve libpython's symbols
         * through the global scope. */
        dl = dlopen(bridge, RTLD_NOW | RTLD_GLOBAL);
        if (!dl)
                return error_set(-ENOEXEC, ret_error,
                                 "%s: Python deployments need serve's Python support (serve_python.so): %s", path,
                                 dlerror());
        load = (python_load_fn) dlsym(dl, "serve_python_load");
        if (!load)
                return error_set(-ENOEXEC, ret_error,
                                 "%s: Python deployments need serve's Python support (serve_python.so): %s has no serve_python_load",
                                 path, bridge);
        r = load(path, symbol, working_dir, ret_app, &error);
        if (r < 0)
                return error_set(r, ret_error, "%s", error ? error : "the Python bridge failed to load the module");
        return 0;
#else
        (void) symbol;
        (void) working_dir;
        (void) ret_app;
        return error_set(-ENOTSUP, ret_error,
                         "%s: Python deployments need serve's Python support (serve_python.so): this serve was built without Python (configure --with-python)",
                         path);
#endif
}

/* dlopens path (or hands a .py module to the Python bridge) and finds and validates symbol.
 * The handle stays open for the process's life. */
static int app_load(const char *path, const char *symbol, const char *working_dir,
                    const struct serve_application **ret_app, char **ret_error) {
        _cleanup_free_ char *where = NULL;
        void *dl = NULL, *sym;
        int r;

        if (is_python_module(path)) {
                const struct serve_application *papp;
                r = python_app_load(path, symbol, working_dir, &papp, ret_error);
                if (r < 0)
                        return r;
                sym = (void *) papp;
        } else {
                dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!dl)
                        return error_set(-ENOEXEC, ret_error, "%s", dlerror());
                dlerror();
                sym = dlsym(dl, symbol);
                if (!sym) {
                        dlclose(dl);
                        return error_set(-ENOENT, ret_error, "%s: symbol '%s' not found", path, symbol);
                }
        }
        if (asprintf(&where, "%s: symbol '%s'", path, symbol) < 0) {
                where = NULL;
                if (dl)
                        dlclose(dl);
                return -ENOMEM;
        }
        r = replica_app_validate(sym, where, ret_error);
        if (r < 0) {
                if (dl)
                        dlclose(dl);
                return r;
        }
        *ret_app = sym;
        return 0;
}

/* ---- --describe ---- */

/* "handlers": every handler name in the numbering (plain, then batched); "batched": the
 * batched ones with their parameters, defaults applied. */
static int handlers_to_json(const struct serve_deployment *d, cJSON *j) {
        size_t n_plain = handler_count(d), n_batched = batched_count(d);
        cJSON *handlers, *batched;

        if (!(handlers = cJSON_AddArrayToObject(j, "handlers")) ||
            !(batched = cJSON_AddArrayToObject(j, "batched")))
                return -ENOMEM;
        for (size_t i = 0; i < n_plain + n_batched; i++) {
                cJSON *s = cJSON_CreateString(handler_name(d, n_plain, i));
                if (!s || !cJSON_AddItemToArray(handlers, s)) {
                        cJSON_Delete(s);
                        return -ENOMEM;
                }
        }
        for (size_t i = 0; i < n_batched; i++) {
                cJSON *b = cJSON_CreateObject();
                unsigned max;
                double wait_s;

                batch_handler_params(&d->batched[i], &max, &wait_s);
                if (!b || !cJSON_AddItemToArray(batched, b)) {
                        cJSON_Delete(b);
                        return -ENOMEM;
                }
                if (!cJSON_AddStringToObject(b, "name", d->batched[i].name) ||
                    !cJSON_AddNumberToObject(b, "max_batch_size", max) ||
                    !cJSON_AddNumberToObject(b, "batch_wait_timeout_s", wait_s))
                        return -ENOMEM;
        }
        return 0;
}

static cJSON *deployment_to_json(const struct serve_deployment *d) {
        const struct serve_deployment_options *o = &d->defaults;
        cJSON *j = cJSON_CreateObject(), *defaults;

        if (!j)
                return NULL;
        if (!cJSON_AddStringToObject(j, "name", d->name) || handlers_to_json(d, j) < 0 ||
            !(defaults = cJSON_AddObjectToObject(j, "defaults")))
                goto fail;
        if (!cJSON_AddNumberToObject(defaults, "num_replicas", o->num_replicas) ||
            !cJSON_AddNumberToObject(defaults, "max_ongoing_requests", o->max_ongoing_requests) ||
            !cJSON_AddNumberToObject(defaults, "max_queued_requests", o->max_queued_requests) ||
            !cJSON_AddNumberToObject(defaults, "health_check_period_s", o->health_check_period_s) ||
            !cJSON_AddNumberToObject(defaults, "health_check_timeout_s", o->health_check_timeout_s) ||
            !cJSON_AddNumberToObject(defaults, "graceful_shutdown_timeout_s",
                                     o->graceful_shutdown_timeout_s) ||
            !cJSON_AddNumberToObject(defaults, "num_cpus", o->num_cpus) ||
            !cJSON_AddNumberToObject(defaults, "num_gpus", o->num_gpus))
                goto fail;
        /* Code defaults as JSON text (the head parses and validates them against apps.yaml's
         * schema, naming the deployment). */
        if ((dep_user_config_default(d) &&
             !cJSON_AddStringToObject(defaults, "user_config", dep_user_config_default(d))) ||
            (dep_autoscaling_default(d) &&
             !cJSON_AddStringToObject(defaults, "autoscaling_config", dep_autoscaling_default(d))))
                goto fail;
        return j;
fail:
        cJSON_Delete(j);
        return NULL;
}

int replica_describe(const char *import_path, const char *working_dir, FILE *out, char **ret_error) {
        _cleanup_free_ char *path = NULL, *symbol = NULL, *text = NULL;
        const struct serve_application *app;
        cJSON *j = NULL, *deps;
        int r;

        r = module_resolve(import_path, working_dir, &path, &symbol, ret_error);
        if (r < 0)
                return r;
        r = app_load(path, symbol, working_dir, &app, ret_error);
        if (r < 0)
                return r;

        j = cJSON_CreateObject();
        if (!j || !cJSON_AddStringToObject(j, "module", path) ||
            !cJSON_AddStringToObject(j, "symbol", symbol) ||
            !cJSON_AddStringToObject(j, "ingress", app->ingress->name) ||
            !(deps = cJSON_AddArrayToObject(j, "deployments")))
                goto oom;
        for (size_t i = 0; app->deployments[i]; i++) {
                cJSON *d = deployment_to_json(app->deployments[i]);
                if (!d || !cJSON_AddItemToArray(deps, d)) {
                        cJSON_Delete(d);
                        goto oom;
                }
        }
        text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (!text)
                return error_set(-ENOMEM, ret_error, "out of memory");
        fprintf(out, "%s\n", text);
        return 0;
oom:
        cJSON_Delete(j);
        return error_set(-ENOMEM, ret_error, "out of memory");
}

/* ---- control socket ---- */

/* Sends {"type":TYPE} or {"type":TYPE,"message":MESSAGE}. SOCK_SEQPACKET sends each message
 * whole, so threads may send concurrently. */
static int ctl_send(struct replica *rep, const char *type, const char *message) {
        _cleanup_free_ char *text = NULL;
        cJSON *j = cJSON_CreateObject();
        int r;

        if (!j || !cJSON_AddStringToObject(j, "type", type) ||
            (message && !cJSON_AddStringToObject(j, "message", message))) {
                cJSON_Delete(j);
                return log_error_errno(-ENOMEM, "Failed to build '%s' message: %m", type);
        }
        text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        if (!text)
                return log_error_errno(-ENOMEM, "Failed to build '%s' message: %m", type);
        r = unix_send_fds(rep->ctl_fd, text, strlen(text), NULL, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to send '%s' to the supervisor: %m", type);
        return 0;
}

/* A JSON-text field: a string is taken as the JSON text itself, any other value is
 * re-serialized (so both "{\"a\":1}" and {"a":1} work). NULL when absent or null. */
static char *json_text(const cJSON *o, const char *key, int *ret_r) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        char *s;

        *ret_r = 0;
        if (!v || cJSON_IsNull(v))
                return NULL;
        s = cJSON_IsString(v) ? strdup(v->valuestring) : cJSON_PrintUnformatted(v);
        if (!s)
                *ret_r = -ENOMEM;
        return s;
}

static const char *json_string(const cJSON *o, const char *key) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double json_number(const cJSON *o, const char *key, double dflt) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
        return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* Reports a failed start and ends the process: the supervisor replaces the replica. */
_noreturn_ static void start_failed(struct replica *rep, const char *message) {
        log_error("Replica start failed: %s", message);
        ctl_send(rep, "error", message);
        _exit(1);
}

/* ---- the response path ---- */

_noreturn_ void peer_broken(int r, const char *what) {
        log_error_errno(r, "%s: %m; the proxy is broken, exiting", what);
        _exit(2);
}

void resp_publish(struct replica *rep) {
        if (ring_publish(&rep->seg.resp)) {
                int r = doorbell_ring(rep->seg.resp_bell);
                if (r < 0)
                        log_warning_errno(r, "Failed to ring the response doorbell: %m, ignoring");
        }
}

/* Reserves a response record, waiting for the proxy to free space. Called with send_lock held:
 * a response's records stay contiguous in the ring. */
void *resp_alloc(struct replica *rep, uint16_t type, uint32_t len) {
        long backoff_ns = 10 * 1000;
        void *p;

        for (;;) {
                int r = ring_alloc(&rep->seg.resp, type, 0, len, &p);
                if (r == 0)
                        return p;
                if (r != -EAGAIN)
                        peer_broken(r, "Failed to reserve a response record");
                /* Everything allocated so far must be visible, or the proxy never frees space. */
                resp_publish(rep);
                nanosleep(&(struct timespec) { .tv_nsec = backoff_ns }, NULL);
                backoff_ns = MIN(backoff_ns * 2, 1000 * 1000L);
        }
}

void resp_put_start(struct replica *rep, uint64_t id, const struct serve_response *resp, uint64_t body_len,
                    uint32_t flags, size_t first) {
        size_t len = sizeof(struct proto_resp_start) + resp->headers_bytes + first;
        uint8_t *p = resp_alloc(rep, PROTO_RESP_START, (uint32_t) len);
        struct proto_resp_start st = {
                .req_id = id,
                .status = (uint32_t) resp->status,
                .n_headers = (uint32_t) resp->n_headers,
                .headers_len = (uint32_t) resp->headers_bytes,
                .chunk_len = (uint32_t) first,
                .body_len = body_len,
                .flags = flags,
        };
        memcpy(p, &st, sizeof st);
        p += sizeof st;
        for (size_t i = 0; i < resp->n_headers; i++) {
                struct proto_header h = {
                        .name_len = (uint32_t) strlen(resp->headers[i].name),
                        .value_len = (uint32_t) strlen(resp->headers[i].value),
                };
                memcpy(p, &h, sizeof h);
                p += sizeof h;
                memcpy(p, resp->headers[i].name, h.name_len);
                p += h.name_len;
                memcpy(p, resp->headers[i].value, h.value_len);
                p += h.value_len;
        }
        if (first > 0)
                memcpy(p, resp->body, first);
}

/* Frames resp as RESP_START + RESP_BODY records and publishes them. */
static void send_response(struct replica *rep, uint64_t id, struct serve_response *resp) {
        uint32_t max = ring_max_payload(&rep->seg.resp);
        size_t fixed = sizeof(struct proto_resp_start);

        if (fixed + resp->headers_bytes >= max) {
                log_error("Response headers (%zu bytes) do not fit in one ring record (%u bytes), answering 500",
                          resp->headers_bytes, max);
                response_internal_error(resp);
        }

        size_t first = MIN(resp->body_len, max - fixed - resp->headers_bytes);

        pthread_mutex_lock(&rep->send_lock);
        resp_put_start(rep, id, resp, resp->body_len, 0, first);
        resp_publish(rep);

        for (size_t off = first; off < resp->body_len;) {
                size_t n = MIN(resp->body_len - off, max - sizeof(struct proto_body));
                struct proto_body b = { .req_id = id, .len = (uint32_t) n };
                uint8_t *q = resp_alloc(rep, PROTO_RESP_BODY, (uint32_t) (sizeof b + n));
                memcpy(q, &b, sizeof b);
                memcpy(q + sizeof b, resp->body + off, n);
                /* Publishing per chunk lets the proxy stream a large body while we copy. */
                resp_publish(rep);
                off += n;
        }
        pthread_mutex_unlock(&rep->send_lock);
}

/* ---- the in-flight table and the queue (rep->lock held) ---- */

static struct serve_request *table_find(struct replica *rep, uint64_t id) {
        for (size_t i = 0; i < rep->n_table; i++)
                if (rep->table[i]->id == id)
                        return rep->table[i];
        return NULL;
}

static void table_remove(struct replica *rep, struct serve_request *req) {
        for (size_t i = 0; i < rep->n_table; i++)
                if (rep->table[i] == req) {
                        rep->table[i] = rep->table[--rep->n_table];
                        return;
                }
}

static void kick_main_locked(struct replica *rep) {
        if (rep->main_kicked)
                return;
        rep->main_kicked = true;
        int r = doorbell_ring(rep->main_wake);
        if (r < 0)
                log_warning_errno(r, "Failed to wake the main thread: %m, ignoring");
}

/* Makes sure someone acts on the work there is: a queued request, or a vacant ring. Idle
 * handler threads are woken one at a time (the one that wakes calls this again for what is
 * left), so a leader that gives the ring up for every request wakes nobody while the thread it
 * woke has not run yet. With no thread idle, a queued request waits for the next handler thread
 * to finish, and a vacant ring goes to the main thread. */
static void kick_locked(struct replica *rep) {
        bool vacant = rep->ring_owner == RING_VACANT && !rep->stopping;

        if ((!rep->queue_head && !vacant) || rep->wake_pending)
                return;
        if (rep->n_idle > 0) {
                rep->wake_pending = true;
                pthread_cond_signal(&rep->cond);
        } else if (vacant)
                kick_main_locked(rep);
}

/* A request became ready to run (complete, or cancelled while assembling). A leader takes the
 * first one itself (*ready, when ready is not NULL); others are queued. */
static void request_ready_locked(struct replica *rep, struct serve_request *req,
                                 struct serve_request **ready) {
        if (ready && !*ready) {
                req->state = SERVE_REQUEST_RUNNING;
                *ready = req;
                return;
        }
        req->state = SERVE_REQUEST_QUEUED;
        req->next = NULL;
        if (rep->queue_tail)
                rep->queue_tail->next = req;
        else
                rep->queue_head = req;
        rep->queue_tail = req;
        kick_locked(rep);
}

static struct serve_request *dequeue_locked(struct replica *rep) {
        struct serve_request *req = rep->queue_head;

        rep->queue_head = req->next;
        if (!rep->queue_head)
                rep->queue_tail = NULL;
        req->state = SERVE_REQUEST_RUNNING;
        return req;
}

/* ---- running a request ---- */

static void run_request(struct replica *rep, struct serve_request *req, struct serve_response *resp) {
        if (req->reject_status) {
                resp->status = req->reject_status;
                if (req->reject_status == 503)
                        serve_response_write(resp, "replica stopping\n", strlen("replica stopping\n"));
                else if (req->reject_status == 404)
                        serve_response_printf(resp, "deployment '%s' has no such method\n", rep->ctx.deployment);
                return;
        }
        /* A request cancelled before it started is not run at all. */
        if (serve_request_cancelled(req)) {
                resp->status = 499;
                return;
        }
        if (req->handler >= rep->n_handlers + rep->n_batched) {
                log_error("Request for handler #%u, but deployment has %zu handlers, answering 500",
                          req->handler, rep->n_handlers + rep->n_batched);
                response_internal_error(resp);
                return;
        }
        if (req->handler >= rep->n_handlers) {
                /* (Only when handing it over found no memory.) It settles failures and
                 * cancellations itself, request by request. */
                batch_run(rep->batchers[req->handler - rep->n_handlers], &rep->ctx, req, resp);
                return;
        }

        const struct serve_handler *h = &rep->dep->handlers[req->handler];
        int r = h->fn(&rep->ctx, req, resp);
        if (r < 0 && resp->streaming) {
                /* Its status went out with the first flush: the stream ends where it failed. */
                log_warning_errno(r, "Handler %s failed for %s %s after its response began streaming: %m; "
                                  "ending the stream there", h->name, req->method, req->path);
                serve_response_clear(resp);
        } else if (r < 0 && resp->status < 400) {
                log_warning_errno(r, "Handler %s failed for %s %s: %m", h->name, req->method, req->path);
                response_internal_error(resp);
        }
        /* The proxy drops the response of a cancelled request: do not ship its body. */
        if (serve_request_cancelled(req)) {
                serve_response_clear(resp);
                resp->status = 499;
        }
}

/* ---- health thread ---- */

static void *health_main(void *userdata) {
        struct replica *rep = userdata;
        uint64_t period = sec_to_ns(rep->health_period_s);
        uint64_t next_check = now_ns() + period;

        log_set_context(rep->ctx.app, rep->ctx.deployment, rep->ctx.replica_id);
        /* Pairs with the release store in replica_finish(). */
        while (!atomic_load_explicit(&rep->exiting, memory_order_acquire)) {
                uint64_t now = now_ns();

                /* Relaxed: the supervisor only compares it with its clock; no data hangs on it. */
                atomic_store_explicit(&rep->seg.ctl->heartbeat_ns, now, memory_order_relaxed);

                /* Pairs with the release store after init in replica_run(). */
                if (now >= next_check && atomic_load_explicit(&rep->ready, memory_order_acquire)) {
                        if (rep->dep->check_health) {
                                int r = rep->dep->check_health(&rep->ctx);
                                if (r != 0) {
                                        _cleanup_free_ char *e = serve_ctx_take_error(&rep->ctx);
                                        char generic[64];
                                        snprintf(generic, sizeof generic, "check_health returned %d", r);
                                        log_warning("Unhealthy: %s", e ? e : generic);
                                        ctl_send(rep, "unhealthy", e ? e : generic);
                                }
                        }
                        next_check = now_ns() + period;
                }
                nanosleep(&(struct timespec) { .tv_nsec = REPLICA_HEARTBEAT_NS }, NULL);
        }
        return NULL;
}

/* ---- the request ring ---- */

_noreturn_ static void bad_record(const char *why) {
        log_error("Invalid request record from the proxy: %s; exiting", why);
        _exit(2);
}

/* A handle call names its method, caller and call path in headers only the worker writes. */
static void resolve_call(struct replica *rep, struct serve_request *req) {
        const char *m = NULL;

        for (size_t i = 0; i < req->n_headers; i++) {
                const struct serve_req_header *h = &req->headers[i];
                if (strcasecmp(h->name, "serve-method") == 0)
                        m = h->value;
                else if (strcasecmp(h->name, "serve-caller") == 0)
                        req->caller = h->value;
                else if (strcasecmp(h->name, "serve-call-path") == 0)
                        req->call_path = h->value;
        }
        int k = m ? deployment_handler_index(rep->dep, m) : -ENOENT;
        if (k < 0)
                req->reject_status = 404;
        else
                req->handler = (uint32_t) k;
}

static void on_req_start(struct replica *rep, const uint8_t *p, uint32_t len,
                         struct serve_request **ready) {
        struct proto_req_start st;

        if (len < sizeof st)
                bad_record("short REQ_START");
        memcpy(&st, p, sizeof st);
        uint64_t var = (uint64_t) st.method_len + st.path_len + st.query_len + st.headers_len +
                       st.chunk_len;
        if (var != len - sizeof st)
                bad_record("REQ_START lengths do not add up");
        if (st.method_len == 0 || st.chunk_len > st.body_len || st.body_len > REPLICA_MAX_BODY ||
            st.n_headers > st.headers_len / sizeof(struct proto_header))
                bad_record("REQ_START fields out of range");

        _cleanup_free_ struct serve_request *req = calloc(1, sizeof *req);
        if (!req)
                goto oom;
        /* Header names and values lose their proto_header, gain two NULs. */
        size_t strings_len = (size_t) st.method_len + st.path_len + st.query_len + 3 +
                             st.headers_len - (size_t) st.n_headers * sizeof(struct proto_header) +
                             2 * (size_t) st.n_headers;
        char *s = malloc(strings_len);
        struct serve_req_header *hdrs = calloc(MAX(st.n_headers, 1u), sizeof *hdrs);
        if (!s || !hdrs) {
                free(s);
                free(hdrs);
                goto oom;
        }
        req->strings = s;
        req->headers = hdrs;
        req->n_headers = st.n_headers;

        p += sizeof st;
        req->method = s;
        memcpy(s, p, st.method_len), s += st.method_len, *s++ = '\0', p += st.method_len;
        req->path = s;
        memcpy(s, p, st.path_len), s += st.path_len, *s++ = '\0', p += st.path_len;
        req->query = s;
        memcpy(s, p, st.query_len), s += st.query_len, *s++ = '\0', p += st.query_len;

        size_t off = 0;
        for (uint32_t i = 0; i < st.n_headers; i++) {
                struct proto_header h;
                if (st.headers_len - off < sizeof h)
                        goto bad_headers;
                memcpy(&h, p + off, sizeof h);
                off += sizeof h;
                if ((uint64_t) h.name_len + h.value_len > st.headers_len - off)
                        goto bad_headers;
                hdrs[i].name = s;
                memcpy(s, p + off, h.name_len), s += h.name_len, *s++ = '\0', off += h.name_len;
                hdrs[i].value = s;
                memcpy(s, p + off, h.value_len), s += h.value_len, *s++ = '\0', off += h.value_len;
        }
        if (off != st.headers_len)
                goto bad_headers;
        p += st.headers_len;

        req->id = st.req_id;
        req->flags = st.flags;
        /* HTTP requests (handler 0 on the wire) go to the deployment's HTTP handler; a handle
         * call names its method. */
        req->handler = rep->http_handler;
        if (st.flags & PROTO_REQ_CALL)
                resolve_call(rep, req);
        req->body_len = st.body_len;
        req->body = malloc(st.body_len + 1);
        if (req->body) {
                memcpy(req->body, p, st.chunk_len);
                req->body[st.body_len] = '\0';
        } else {
                /* Answer 503 once the rest of the body went by; the replica survives. */
                log_warning("Out of memory for a %llu-byte request body, answering 503",
                            (unsigned long long) st.body_len);
                req->reject_status = 503;
        }
        req->body_received = st.chunk_len;

        pthread_mutex_lock(&rep->lock);
        if (table_find(rep, req->id)) {
                pthread_mutex_unlock(&rep->lock);
                bad_record("REQ_START for a request id already in flight");
        }
        if (rep->n_table >= rep->table_cap) {
                pthread_mutex_unlock(&rep->lock);
                bad_record("more requests in flight than max_ongoing_requests allows");
        }
        if (rep->draining && !req->reject_status)
                req->reject_status = 503;
        req->state = SERVE_REQUEST_ASSEMBLING;
        rep->table[rep->n_table++] = req;
        rep->outstanding++;
        if (req->body_received == req->body_len)
                request_ready_locked(rep, req, ready);
        TAKE_PTR(req);
        pthread_mutex_unlock(&rep->lock);
        return;

bad_headers:
        serve_request_free(TAKE_PTR(req));
        bad_record("REQ_START headers malformed");
oom:
        /* Without memory we cannot even queue an answer: the supervisor restarts us. */
        log_error("Out of memory for a request; exiting");
        _exit(2);
}

static void on_req_body(struct replica *rep, const uint8_t *p, uint32_t len,
                        struct serve_request **ready) {
        struct proto_body b;
        struct serve_request *req;

        if (!proto_body_parse(p, len, &b))
                bad_record("REQ_BODY length does not match its record");

        pthread_mutex_lock(&rep->lock);
        req = table_find(rep, b.req_id);
        /* Checked under the lock: once ready, a handler thread may free it at any time. */
        if (req && req->state != SERVE_REQUEST_ASSEMBLING)
                req = NULL;
        pthread_mutex_unlock(&rep->lock);
        /* A body chunk after a cancel of a half-received request: it was answered already. */
        if (!req) {
                log_debug("Body chunk for request %llu which is not receiving, ignoring",
                          (unsigned long long) b.req_id);
                return;
        }
        /* Only the ring's consumer touches an assembling request: no lock needed for the copy. */
        if (b.len > req->body_len - req->body_received)
                bad_record("REQ_BODY beyond the announced body length");
        if (req->body)
                memcpy(req->body + req->body_received, p + sizeof b, b.len);
        req->body_received += b.len;

        if (req->body_received == req->body_len) {
                pthread_mutex_lock(&rep->lock);
                request_ready_locked(rep, req, ready);
                pthread_mutex_unlock(&rep->lock);
        }
}

static void on_req_cancel(struct replica *rep, const uint8_t *p, uint32_t len,
                          struct serve_request **ready) {
        struct proto_cancel c;
        struct serve_request *req;

        if (len < sizeof c)
                bad_record("short REQ_CANCEL");
        memcpy(&c, p, sizeof c);

        pthread_mutex_lock(&rep->lock);
        req = table_find(rep, c.req_id);
        if (req) {
                /* Pairs with the acquire load in serve_request_cancelled(). */
                atomic_store_explicit(&req->cancelled, true, memory_order_release);
                stream_cancel_locked(rep, c.req_id); /* a flush waiting for credit returns */
                /* The rest of its body will never come: answer it now (499). */
                if (req->state == SERVE_REQUEST_ASSEMBLING)
                        request_ready_locked(rep, req, ready);
        }
        pthread_mutex_unlock(&rep->lock);
        /* The calls it made are cancelled with it (and, by the worker, theirs). */
        if (req)
                calls_cancel_parent(c.req_id);
}

/* A streaming response may send more: wakes its handler if its flush waits. */
static void on_req_credit(struct replica *rep, const uint8_t *p, uint32_t len) {
        struct proto_credit c;
        int r;

        if (len < sizeof c)
                bad_record("short REQ_CREDIT");
        memcpy(&c, p, sizeof c);
        pthread_mutex_lock(&rep->lock);
        r = stream_credit_locked(rep, c.req_id, c.bytes);
        pthread_mutex_unlock(&rep->lock);
        if (r < 0)
                bad_record("REQ_CREDIT for more than the stream sent");
}

/* Reads request records as the ring's one consumer. A handler thread passes `ready`: reading
 * stops at the first request ready to run, which is stored there (RUNNING, not queued). The main
 * thread passes NULL: ready requests are queued, and reading stops after REPLICA_RECORD_BATCH
 * records so the control socket gets its turn. Returns 1 when more may be waiting, 0 when the
 * ring is empty. */
static int drain_ring(struct replica *rep, struct serve_request **ready) {
        struct ring_record rec;

        for (unsigned n = 0; ready || n < REPLICA_RECORD_BATCH; n++) {
                int r = ring_next(&rep->seg.req, &rec);
                if (r < 0)
                        peer_broken(r, "Failed to read the request ring");
                if (r == 0)
                        return 0;
                switch (rec.type) {
                case PROTO_REQ_START:
                        on_req_start(rep, rec.payload, rec.len, ready);
                        break;
                case PROTO_REQ_BODY:
                        on_req_body(rep, rec.payload, rec.len, ready);
                        break;
                case PROTO_REQ_CANCEL:
                        on_req_cancel(rep, rec.payload, rec.len, ready);
                        break;
                case PROTO_REQ_CREDIT:
                        on_req_credit(rep, rec.payload, rec.len);
                        break;
                case PROTO_CALL_RESP_START:
                case PROTO_CALL_RESP_BODY:
                case PROTO_CALL_RESP_END:
                        calls_on_record(rec.type, rec.payload, rec.len);
                        break;
                default:
                        bad_record("unknown record type");
                }
                /* Every record is copied out: hand its space back right away, so a large body
                 * streams through a small ring. Before the ring is handed over, too. */
                ring_release(&rep->seg.req);
                if (ready && *ready)
                        return 1;
        }
        return 1;
}

/* ---- handler threads ---- */

/* The leader sleeps until the proxy publishes records (or replica_finish() rings the doorbell
 * itself). */
static void wait_for_records(struct replica *rep) {
        struct pollfd pfd = { .fd = rep->seg.req_bell, .events = POLLIN };
        uint64_t v;

        if (!ring_consumer_prepare_sleep(&rep->seg.req))
                return; /* a record arrived meanwhile */
        int r = poll(&pfd, 1, -1);
        ring_consumer_awake(&rep->seg.req);
        if (r < 0 && errno != EINTR) {
                log_error_errno(errno, "poll() failed: %m");
                _exit(1);
        }
        /* Resets the eventfd; EAGAIN (already reset) is fine. */
        if (r > 0 && (pfd.revents & POLLIN))
                (void) !read(rep->seg.req_bell, &v, sizeof v);
}

/* Called by a handler thread that made itself the ring's owner, without rep->lock. Reads the
 * ring until a request is ready to run, sleeping on the doorbell while it is empty. Returns that
 * request (RUNNING), or NULL once stopping; either way with rep->lock held and the ring given up
 * to whoever kick_locked() finds. */
static struct serve_request *lead(struct replica *rep) {
        for (;;) {
                struct serve_request *req = NULL;

                drain_ring(rep, &req);
                pthread_mutex_lock(&rep->lock);
                if (req || rep->stopping) {
                        rep->ring_owner = RING_VACANT;
                        kick_locked(rep);
                        return req;
                }
                pthread_mutex_unlock(&rep->lock);
                wait_for_records(rep);
        }
}

/* The end of every request: the rest of a stream, out of the table, the answer, freed. */
static void finish_request(struct replica *rep, struct serve_request *req, struct serve_response *resp,
                           struct stream *st) {
        /* A stream's rest goes out while it is still in the table: cancels and credit for it
         * must find it. */
        (void) stream_finish_body(st, resp);

        /* Out of the table before the response is visible: the proxy may reuse the id, and a
         * late cancel for it must find nothing. */
        pthread_mutex_lock(&rep->lock);
        table_remove(rep, req);
        if (st->started)
                stream_forget_locked(st);
        pthread_mutex_unlock(&rep->lock);

        if (st->started)
                stream_send_end(st); /* cancelled or not: the proxy waits for its end */
        else
                send_response(rep, req->id, resp);
        stream_destroy(st);
        serve_response_clear(resp);
        serve_request_free(req);
}

/* A request of a batched handler, handed to its batch: the batch's leader completes it. */
struct batched_request {
        struct batch_item it;
        struct replica *rep;
        struct serve_request *req;
        struct serve_response resp;
        struct stream st;
};

static void batched_complete(struct batch_item *it) {
        struct batched_request *br = container_of(it, struct batched_request, it);
        struct replica *rep = br->rep;

        finish_request(rep, br->req, &br->resp, &br->st);
        free(br);
        pthread_mutex_lock(&rep->lock);
        rep->outstanding--;
        pthread_mutex_unlock(&rep->lock);
}

/* Hands req to its batch. Returns false when there is no memory for that (run it as usual). */
static bool submit_batched(struct replica *rep, struct serve_request *req) {
        struct batched_request *br = calloc(1, sizeof *br);

        if (!br)
                return false;
        br->rep = rep;
        br->req = req;
        serve_response_init(&br->resp);
        stream_init(&br->st, rep, req, &br->resp);
        br->it.req = req;
        br->it.resp = &br->resp;
        calls_set_current(req);
        batch_submit(rep->batchers[req->handler - rep->n_handlers], &rep->ctx, &br->it, batched_complete);
        calls_set_current(NULL);
        return true;
}

/* Runs req and answers it. Returns true when it was answered here, false when a batch's leader
 * answers it (and counts it out of rep->outstanding). */
static bool handle_request(struct replica *rep, struct serve_request *req) {
        struct serve_response resp;
        struct stream st;

        if (!req->reject_status && req->handler >= rep->n_handlers &&
            req->handler < rep->n_handlers + rep->n_batched && submit_batched(rep, req))
                return false;

        serve_response_init(&resp);
        stream_init(&st, rep, req, &resp);
        calls_set_current(req);
        run_request(rep, req, &resp);
        calls_set_current(NULL);
        finish_request(rep, req, &resp, &st);
        return true;
}

static void *worker_main(void *userdata) {
        struct replica *rep = userdata;

        log_set_context(rep->ctx.app, rep->ctx.deployment, rep->ctx.replica_id);
        pthread_mutex_lock(&rep->lock);
        for (;;) {
                struct serve_request *req;

                if (rep->queue_head) {
                        req = dequeue_locked(rep);
                        kick_locked(rep); /* for the rest of the queue, or a vacant ring */
                } else if (rep->stopping)
                        break;
                else if (rep->ring_owner == RING_VACANT) {
                        rep->ring_owner = RING_WORKER;
                        pthread_mutex_unlock(&rep->lock);
                        req = lead(rep);
                        if (!req)
                                continue;
                } else {
                        /* The main thread only holds the ring while no handler thread is idle:
                         * ask for it back. */
                        if (rep->ring_owner == RING_MAIN)
                                kick_main_locked(rep);
                        rep->n_idle++;
                        pthread_cond_wait(&rep->cond, &rep->lock);
                        rep->n_idle--;
                        rep->wake_pending = false; /* we look at everything next */
                        continue;
                }
                pthread_mutex_unlock(&rep->lock);
                bool answered = handle_request(rep, req);
                pthread_mutex_lock(&rep->lock);
                if (answered)
                        rep->outstanding--;
        }
        pthread_mutex_unlock(&rep->lock);
        return NULL;
}

/* ---- lifecycle ---- */

static void begin_drain(struct replica *rep, double timeout_s, int exit_status) {
        uint64_t deadline = now_ns() + sec_to_ns(timeout_s);

        if (exit_status > rep->exit_status)
                rep->exit_status = exit_status;
        pthread_mutex_lock(&rep->lock);
        if (rep->draining) {
                pthread_mutex_unlock(&rep->lock);
                rep->drain_deadline = MIN(rep->drain_deadline, deadline);
                return;
        }
        rep->draining = true;
        pthread_mutex_unlock(&rep->lock);
        rep->drain_deadline = deadline;
        /* Release: pairs with the supervisor's acquire load of replica_state. */
        atomic_store_explicit(&rep->seg.ctl->replica_state, SEGMENT_STATE_DRAINING, memory_order_release);
        log_info("Stopping: waiting up to %.1fs for requests in flight", timeout_s);
}

_noreturn_ static void replica_finish(struct replica *rep, bool all_done) {
        /* Pairs with the acquire load in health_main(). */
        atomic_store_explicit(&rep->exiting, true, memory_order_release);
        if (rep->health_started)
                pthread_join(rep->health, NULL);

        if (!all_done) {
                /* destroy() would race with the handlers still running. */
                log_warning("Requests still running at the shutdown deadline; exiting without destroy()");
                _exit(rep->exit_status);
        }

        pthread_mutex_lock(&rep->lock);
        rep->stopping = true;
        pthread_cond_broadcast(&rep->cond);
        pthread_mutex_unlock(&rep->lock);
        /* A leader sleeping on the doorbell looks at `stopping` once woken. */
        int r = doorbell_ring(rep->seg.req_bell);
        if (r < 0)
                log_warning_errno(r, "Failed to ring the request doorbell: %m, ignoring");
        for (size_t i = 0; i < rep->n_workers; i++)
                pthread_join(rep->workers[i], NULL);

        if (rep->dep->destroy)
                rep->dep->destroy(&rep->ctx);
        log_info("Replica stopped");
        fflush(NULL);
        _exit(rep->exit_status);
}

/* Gives every batcher its handler's parameters, overridden by user_config's max_batch_size and
 * batch_wait_timeout_s (invalid ones are logged and ignored). */
static void batchers_configure(struct replica *rep, const char *user_config) {
        struct batch_overrides o;

        if (rep->n_batched == 0)
                return; /* the keys may mean something else to the deployment */
        batch_overrides_parse(user_config, &o);
        for (size_t j = 0; j < rep->n_batched; j++) {
                unsigned max;
                double wait_s;

                batch_apply_overrides(rep->batchers[j], &o);
                batch_get_params(rep->batchers[j], &max, &wait_s);
                log_info("Batched handler %s: max_batch_size %u, batch_wait_timeout_s %g%s",
                         rep->dep->batched[j].name, max, wait_s,
                         max > rep->max_ongoing ? " (a batch holds at most max_ongoing_requests)" : "");
        }
}

/* One batcher per batched handler, configured with user_config. */
static int batchers_create(struct replica *rep, const char *user_config) {
        rep->n_batched = batched_count(rep->dep);
        if (rep->n_batched == 0)
                return 0;
        rep->batchers = calloc(rep->n_batched, sizeof *rep->batchers);
        if (!rep->batchers)
                return -ENOMEM;
        for (size_t j = 0; j < rep->n_batched; j++) {
                int r = batch_new(&rep->dep->batched[j], &rep->batchers[j]);
                if (r < 0)
                        return r; /* the process ends: nothing to free */
        }
        batchers_configure(rep, user_config);
        return 0;
}

static void on_reconfigure(struct replica *rep, const cJSON *msg) {
        _cleanup_free_ char *uc = NULL, *e = NULL;
        int r;

        uc = json_text(msg, "user_config", &r);
        if (r < 0) {
                ctl_send(rep, "error", "out of memory");
                begin_drain(rep, REPLICA_DEFAULT_GRACEFUL_S, 1);
                return;
        }
        batchers_configure(rep, uc);
        if (!rep->dep->reconfigure) {
                /* A user_config may be there for the batched handlers alone. */
                if (!uc || rep->n_batched > 0) {
                        ctl_send(rep, "reconfigured", NULL);
                        return;
                }
                r = -EOPNOTSUPP;
                if (asprintf(&e, "deployment '%s' has no reconfigure() but user_config is set",
                             rep->dep->name) < 0)
                        e = NULL;
        } else {
                r = rep->dep->reconfigure(&rep->ctx, uc);
                if (r == 0) {
                        log_info("Reconfigured");
                        ctl_send(rep, "reconfigured", NULL);
                        return;
                }
                e = serve_ctx_take_error(&rep->ctx);
                if (!e && asprintf(&e, "reconfigure failed: %s",
                                   r < 0 ? strerror(-r) : "non-zero return") < 0)
                        e = NULL;
        }
        log_error("Reconfigure failed: %s", e ? e : "out of memory");
        ctl_send(rep, "error", e ? e : "reconfigure failed");
        /* proto.h: after an error the replica exits; finish what is in flight first. */
        begin_drain(rep, rep->dep->defaults.graceful_shutdown_timeout_s > 0
                                 ? rep->dep->defaults.graceful_shutdown_timeout_s
                                 : REPLICA_DEFAULT_GRACEFUL_S, 1);
}

/* A new max_ongoing_requests in place: more handler threads and room in the request table.
 * A lower value keeps the threads (idle ones cost nothing); the proxy sends fewer requests. */
static void on_max_ongoing(struct replica *rep, const cJSON *msg) {
        double v = json_number(msg, "max_ongoing_requests", 0);
        unsigned n;

        if (!(v >= 1))
                return;
        n = (unsigned) MIN(v, (double) REPLICA_MAX_THREADS);
        pthread_mutex_lock(&rep->lock);
        size_t cap = 2 * (size_t) n + 16;
        if (cap > rep->table_cap) {
                void *t = realloc(rep->table, cap * sizeof *rep->table);
                if (!t) {
                        pthread_mutex_unlock(&rep->lock);
                        log_error("Out of memory for max_ongoing_requests %u; keeping %u", n, rep->max_ongoing);
                        return;
                }
                rep->table = t;
                rep->table_cap = cap;
        }
        rep->max_ongoing = n;
        pthread_mutex_unlock(&rep->lock);
        while (rep->n_workers < n) {
                int r = -pthread_create(&rep->workers[rep->n_workers], NULL, worker_main, rep);
                if (r < 0) {
                        log_error_errno(r, "Cannot start handler thread %zu: %m", rep->n_workers + 1);
                        break;
                }
                rep->n_workers++;
        }
        log_info("max_ongoing_requests is now %u (%zu handler threads)", n, rep->n_workers);
}

static void on_control(struct replica *rep, char *buf) {
        ssize_t n = unix_recv_fds(rep->ctl_fd, buf, PROTO_CTL_MAX, NULL, 0, NULL);
        cJSON *msg;
        const char *type;

        if (n == 0 || n == -ECONNRESET) {
                log_info("Supervisor went away; exiting");
                _exit(1);
        }
        if (n < 0) {
                log_warning_errno((int) n, "Failed to read a control message: %m, ignoring");
                return;
        }
        buf[n] = '\0';
        msg = cJSON_ParseWithLength(buf, (size_t) n);
        type = json_string(msg, "type");
        if (!type)
                log_warning("Invalid control message, ignoring");
        else if (streq(type, "stop"))
                begin_drain(rep, json_number(msg, "timeout_s", REPLICA_DEFAULT_GRACEFUL_S), 0);
        else if (streq(type, "reconfigure"))
                on_reconfigure(rep, msg);
        else if (streq(type, "max_ongoing"))
                on_max_ongoing(rep, msg);
        else
                log_warning("Unknown control message '%s', ignoring", type);
        cJSON_Delete(msg);
}

/* A replica always runs under its supervisor, which stops it with the deployment's configured
 * graceful_shutdown_timeout_s (the "stop" message). A signal reaches us when it was sent to the
 * whole process group (Ctrl-C on `serve run`), while the worker is draining too: draining on our
 * own would put the SDK's default timeout in place of the configured one (a later "stop" can
 * only shorten a drain), so requests the worker still waits for were cut at 20 s whatever
 * apps.yaml said. Wait for the stop instead; the worker going away ends us anyway (control
 * socket EOF, PR_SET_PDEATHSIG). */
static void on_signal(struct replica *rep) {
        struct signalfd_siginfo si;

        if (read(rep->sig_fd, &si, sizeof si) != sizeof si)
                return;
        log_info("Received %s: the worker stops this replica (graceful_shutdown_timeout_s)",
                 strsignal((int) si.ssi_signo));
}

/* The main thread holds the ring while no handler thread is idle, and gives it back as soon as
 * one is (rep->lock held). Returns whether it holds the ring. */
static bool main_take_or_give_ring_locked(struct replica *rep) {
        rep->main_kicked = false; /* we look at everything now */
        if (rep->ring_owner == RING_MAIN && rep->n_idle > 0)
                rep->ring_owner = RING_VACANT;
        if (rep->ring_owner == RING_VACANT && !rep->stopping && rep->n_idle == 0 && !rep->wake_pending)
                rep->ring_owner = RING_MAIN;
        kick_locked(rep);
        return rep->ring_owner == RING_MAIN;
}

_noreturn_ static void serve_loop(struct replica *rep, char *ctl_buf) {
        struct pollfd pfd[4] = {
                { .fd = rep->ctl_fd, .events = POLLIN },
                { .fd = rep->sig_fd, .events = POLLIN },
                { .fd = rep->main_wake, .events = POLLIN },
                { .fd = rep->seg.req_bell, .events = POLLIN }, /* only while we hold the ring */
        };
        uint64_t v;

        for (;;) {
                bool mine, more = false, draining;
                size_t outstanding;
                int timeout;

                pthread_mutex_lock(&rep->lock);
                mine = main_take_or_give_ring_locked(rep);
                pthread_mutex_unlock(&rep->lock);
                if (mine)
                        more = drain_ring(rep, NULL) > 0;

                pthread_mutex_lock(&rep->lock);
                draining = rep->draining;
                outstanding = rep->outstanding;
                pthread_mutex_unlock(&rep->lock);
                if (draining && outstanding == 0)
                        replica_finish(rep, true);
                if (draining && now_ns() >= rep->drain_deadline)
                        replica_finish(rep, false);
                /* While draining, look at the in-flight count every 10 ms. */
                timeout = more ? 0 : draining ? 10 : -1;

                bool sleeping = mine && !more && ring_consumer_prepare_sleep(&rep->seg.req);
                if (mine && !more && !sleeping)
                        timeout = 0; /* a record arrived meanwhile */
                int r = poll(pfd, mine ? 4 : 3, timeout);
                if (sleeping)
                        ring_consumer_awake(&rep->seg.req);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error_errno(errno, "poll() failed: %m");
                        _exit(1);
                }
                /* Reset the eventfds; EAGAIN (already reset) is fine. */
                if (mine && (pfd[3].revents & POLLIN))
                        (void) !read(rep->seg.req_bell, &v, sizeof v);
                if (pfd[2].revents & POLLIN)
                        (void) !read(rep->main_wake, &v, sizeof v);
                if (pfd[0].revents)
                        on_control(rep, ctl_buf);
                if (pfd[1].revents & POLLIN)
                        on_signal(rep);
        }
}

static int start_threads(struct replica *rep) {
        int r;

        /* Room for every thread max_ongoing_requests may grow to (on_max_ongoing). */
        rep->workers = calloc(REPLICA_MAX_THREADS, sizeof *rep->workers);
        if (!rep->workers)
                return -ENOMEM;
        for (; rep->n_workers < rep->max_ongoing; rep->n_workers++) {
                r = -pthread_create(&rep->workers[rep->n_workers], NULL, worker_main, rep);
                if (r < 0)
                        return r;
        }
        return 0;
}

int replica_run(int control_fd) {
        static struct replica rep_storage; /* threads use it until _exit */
        struct replica *rep = &rep_storage;
        _cleanup_free_ char *buf = NULL, *path = NULL, *symbol = NULL, *error = NULL,
                            *args = NULL, *user_config = NULL;
        const struct serve_application *app;
        int fds[3] = { -1, -1, -1 };
        size_t n_fds = 0;
        sigset_t mask;
        cJSON *msg;
        ssize_t n;
        int r;

        *rep = (struct replica) { .ctl_fd = control_fd, .sig_fd = -1, .main_wake = -1 };
        pthread_mutex_init(&rep->lock, NULL);
        pthread_cond_init(&rep->cond, NULL);
        pthread_mutex_init(&rep->send_lock, NULL);
        if (serve_ctx_init(&rep->ctx) < 0)
                return 1;

        /* Die with the supervisor. If it died before this call, the control socket reads EOF
         * below (getppid() == 1 would misfire where the supervisor itself is PID 1). */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                log_warning_errno(errno, "PR_SET_PDEATHSIG failed: %m, ignoring");

        /* Signals are read from a signalfd by the main loop; blocked here, before any thread
         * exists, so every thread inherits the mask. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        rep->sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        if (rep->sig_fd < 0)
                return log_error_errno(errno, "signalfd() failed: %m"), 1;

        rep->main_wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (rep->main_wake < 0)
                return log_error_errno(errno, "eventfd() failed: %m"), 1;

        buf = malloc(PROTO_CTL_MAX + 1);
        if (!buf)
                return log_error_errno(ENOMEM, "Out of memory"), 1;
        n = unix_recv_fds(control_fd, buf, PROTO_CTL_MAX, fds, 3, &n_fds);
        if (n == 0)
                return log_error("Supervisor closed the control socket before start"), 1;
        if (n < 0)
                return log_error_errno((int) n, "Failed to receive the start message: %m"), 1;
        if (n_fds != 3) {
                for (size_t i = 0; i < n_fds; i++)
                        close(fds[i]);
                start_failed(rep, "start message without its 3 file descriptors");
        }
        buf[n] = '\0';

        msg = cJSON_ParseWithLength(buf, (size_t) n);
        const char *type = json_string(msg, "type");
        if (!type || !streq(type, "start")) {
                cJSON_Delete(msg);
                start_failed(rep, "first control message is not 'start'");
        }
        const char *s_app = json_string(msg, "app"), *s_dep = json_string(msg, "deployment"),
                   *s_replica = json_string(msg, "replica"), *s_module = json_string(msg, "module"),
                   *s_symbol = json_string(msg, "symbol"), *s_import = json_string(msg, "import_path");
        double max_ongoing = json_number(msg, "max_ongoing_requests", 0);
        double health_period = json_number(msg, "health_check_period_s", 0);
        int r_args, r_uc;
        args = json_text(msg, "args", &r_args);
        user_config = json_text(msg, "user_config", &r_uc);

        rep->ctx.app = strdup(s_app ? s_app : "default");
        rep->ctx.deployment = s_dep ? strdup(s_dep) : NULL;
        rep->ctx.replica_id = strdup(s_replica ? s_replica : "0");
        if (!rep->ctx.app || !rep->ctx.replica_id || (s_dep && !rep->ctx.deployment) || r_args < 0 ||
            r_uc < 0 || (s_module && !(path = strdup(s_module))) ||
            (s_symbol && !(symbol = strdup(s_symbol)))) {
                cJSON_Delete(msg);
                start_failed(rep, "out of memory");
        }
        cJSON_Delete(msg);
        log_set_context(rep->ctx.app, rep->ctx.deployment, rep->ctx.replica_id);
        if (!rep->ctx.deployment)
                start_failed(rep, "start message names no deployment");

        r = segment_attach(fds[0], fds[1], fds[2], &rep->seg);
        if (r < 0) {
                char m[128];
                snprintf(m, sizeof m, "cannot attach the shared segment: %s", strerror(-r));
                start_failed(rep, m);
        }

        /* The supervisor normally resolved the module already (--describe); fall back to
         * import_path for callers that only have that. */
        if (!path || !symbol) {
                free(path);
                free(symbol);
                path = symbol = NULL;
                if (!s_import)
                        start_failed(rep, "start message has neither module/symbol nor import_path");
                r = module_resolve(s_import, NULL, &path, &symbol, &error);
                if (r < 0)
                        start_failed(rep, error ? error : "cannot resolve import_path");
        }
        /* The supervisor started us in working_dir (a Python module's imports look there). */
        r = app_load(path, symbol, NULL, &app, &error);
        if (r < 0)
                start_failed(rep, error ? error : "cannot load the module");
        for (size_t i = 0; app->deployments[i]; i++)
                if (streq(app->deployments[i]->name, rep->ctx.deployment))
                        rep->dep = app->deployments[i];
        if (!rep->dep) {
                char m[512];
                snprintf(m, sizeof m, "%s: symbol '%s' has no deployment '%s'", path, symbol,
                         rep->ctx.deployment);
                start_failed(rep, m);
        }
        rep->n_handlers = handler_count(rep->dep);
        rep->app = app;
        calls_init(rep);
        rep->ctx.ops = &calls_runtime_ops;
        rep->http_handler = http_handler_index(rep->dep);

        if (max_ongoing < 1)
                max_ongoing = rep->dep->defaults.max_ongoing_requests > 0
                                      ? rep->dep->defaults.max_ongoing_requests
                                      : REPLICA_DEFAULT_MAX_ONGOING;
        rep->max_ongoing = (unsigned) MIN(max_ongoing, (double) REPLICA_MAX_THREADS);
        if (!(health_period > 0))
                health_period = rep->dep->defaults.health_check_period_s > 0
                                        ? rep->dep->defaults.health_check_period_s
                                        : REPLICA_DEFAULT_HEALTH_PERIOD_S;
        rep->health_period_s = health_period;
        r = batchers_create(rep, user_config);
        if (r < 0) {
                char m[128];
                snprintf(m, sizeof m, "cannot set up the batched handlers: %s", strerror(-r));
                start_failed(rep, m);
        }
        /* The proxy keeps at most max_ongoing in flight; the slack covers a response that is
         * still being framed when the proxy already sent the next request. */
        rep->table_cap = 2 * (size_t) rep->max_ongoing + 16;
        rep->table = calloc(rep->table_cap, sizeof *rep->table);
        if (!rep->table)
                start_failed(rep, "out of memory");

        /* The heartbeat runs during a slow init too, so the supervisor can tell slow from dead. */
        r = -pthread_create(&rep->health, NULL, health_main, rep);
        if (r < 0)
                start_failed(rep, "cannot start the health thread");
        rep->health_started = true;

        r = rep->dep->init ? rep->dep->init(&rep->ctx, args ? args : "{}", user_config) : 0;
        if (r != 0) {
                _cleanup_free_ char *e = serve_ctx_take_error(&rep->ctx);
                char m[256];
                if (!e)
                        snprintf(m, sizeof m, "init of deployment '%s' failed: %s", rep->ctx.deployment,
                                 r < 0 ? strerror(-r) : "non-zero return");
                start_failed(rep, e ? e : m);
        }

        r = start_threads(rep);
        if (r < 0)
                start_failed(rep, "cannot start the handler threads");
        /* Pairs with the acquire load in health_main(). */
        atomic_store_explicit(&rep->ready, true, memory_order_release);
        /* Release: pairs with the supervisor's acquire load of replica_state. */
        atomic_store_explicit(&rep->seg.ctl->replica_state, SEGMENT_STATE_READY, memory_order_release);
        if (ctl_send(rep, "ready", NULL) < 0)
                _exit(1);
        log_info("Replica ready: %zu handler thread(s), ring %u bytes", rep->n_workers,
                 rep->seg.ring_size);

        serve_loop(rep, buf);
}
