/* libserve: the accessors a deployment calls from its handlers. The replica fills the structs
 * (sdk-internal.h); everything here only reads the request and builds the response. */

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "macros.h"
#include "sdk-internal.h"
#include "serve.h"
#include "shm/proto.h"

/* ---- the replica context ---- */

void serve_ctx_set_state(serve_ctx *ctx, void *state) {
        if (ctx)
                ctx->state = state;
}

void *serve_ctx_state(const serve_ctx *ctx) { return ctx ? ctx->state : NULL; }
const char *serve_ctx_deployment(const serve_ctx *ctx) { return ctx ? ctx->deployment : NULL; }
const char *serve_ctx_app(const serve_ctx *ctx) { return ctx ? ctx->app : NULL; }
const char *serve_ctx_replica_id(const serve_ctx *ctx) { return ctx ? ctx->replica_id : NULL; }

void serve_ctx_set_error(serve_ctx *ctx, const char *fmt, ...) {
        char *msg = NULL;
        va_list ap;

        if (!ctx || !fmt)
                return;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL; /* out of memory: the replica falls back to a generic message */
        va_end(ap);

        pthread_mutex_lock(&ctx->lock);
        free(ctx->error);
        ctx->error = msg;
        pthread_mutex_unlock(&ctx->lock);
}

/* libserve carries its own copy of the logger (only serve_* symbols are exported), so it is
 * initialized on first use, from the same environment as the replica's. */
static pthread_once_t sdk_log_once = PTHREAD_ONCE_INIT;

static void sdk_log_init(void) { log_init(program_invocation_short_name); }

void serve_log(serve_ctx *ctx, int level, const char *fmt, ...) {
        char msg[2048];
        va_list ap;

        if (!fmt)
                return;
        pthread_once(&sdk_log_once, sdk_log_init);
        level = MAX(LOG_EMERG, MIN(level, LOG_DEBUG));
        if (level > log_get_level())
                return;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);

        /* The context is per thread and handlers run on several: set it on every call. */
        if (ctx)
                log_set_context(ctx->app, ctx->deployment, ctx->replica_id);
        log_full(level, "%s", msg);
}

/* ---- the request ---- */

const char *serve_request_method(const serve_request *req) { return req->method; }
const char *serve_request_path(const serve_request *req) { return req->path; }
const char *serve_request_query(const serve_request *req) { return req->query ? req->query : ""; }

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Decodes one query component (%XX and '+'; a malformed escape stays as it is) into buf.
 * Returns the decoded length, or -1 when it needs more than cap-1 bytes. */
static int url_decode(const char *s, size_t n, char *buf, size_t cap) {
        size_t o = 0;

        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (c == '+')
                        c = ' ';
                else if (c == '%' && i + 2 < n && unhex(s[i + 1]) >= 0 && unhex(s[i + 2]) >= 0) {
                        c = (char) (unhex(s[i + 1]) * 16 + unhex(s[i + 2]));
                        i += 2;
                }
                if (o + 1 >= cap)
                        return -1;
                buf[o++] = c;
        }
        if (cap == 0)
                return -1;
        buf[o] = '\0';
        return o > INT32_MAX ? -1 : (int) o;
}

int serve_request_query_param(const serve_request *req, const char *name, char *buf, size_t cap) {
        const char *q = serve_request_query(req);
        size_t name_len;

        if (!name || !buf || cap == 0)
                return -1;
        name_len = strlen(name);

        while (*q) {
                size_t n = strcspn(q, "&");
                const char *eq = memchr(q, '=', n);
                size_t key_len = eq ? (size_t) (eq - q) : n;
                char key[256];
                int k = key_len < sizeof key ? url_decode(q, key_len, key, sizeof key) : -1;

                if (k >= 0 && (size_t) k == name_len && memcmp(key, name, name_len) == 0) {
                        if (!eq)
                                return url_decode("", 0, buf, cap);
                        return url_decode(eq + 1, n - key_len - 1, buf, cap);
                }
                q += n;
                if (*q == '&')
                        q++;
        }
        return -1;
}

const char *serve_request_header(const serve_request *req, const char *name) {
        if (!name)
                return NULL;
        for (size_t i = 0; i < req->n_headers; i++)
                if (strcasecmp(req->headers[i].name, name) == 0)
                        return req->headers[i].value;
        return NULL;
}

size_t serve_request_header_count(const serve_request *req) { return req->n_headers; }

bool serve_request_header_at(const serve_request *req, size_t i, const char **ret_name,
                             const char **ret_value) {
        if (i >= req->n_headers)
                return false;
        if (ret_name)
                *ret_name = req->headers[i].name;
        if (ret_value)
                *ret_value = req->headers[i].value;
        return true;
}

const void *serve_request_body(const serve_request *req, size_t *ret_len) {
        if (ret_len)
                *ret_len = req->body ? (size_t) req->body_len : 0;
        return req->body ? (const void *) req->body : "";
}

bool serve_request_cancelled(const serve_request *req) {
        /* Pairs with the release store in the replica's cancel handling. */
        return atomic_load_explicit(&req->cancelled, memory_order_acquire);
}

/* ---- the response ---- */

void serve_response_set_status(serve_response *resp, int status) {
        /* A handler's answer is the final response. 1xx are interim responses the proxy sends
         * itself (100 Continue) or does not support (101 Switching Protocols): a handler that
         * asks for one, or for no status at all, has a bug, and the client gets 500. */
        if (status >= 200 && status <= 599) {
                resp->status = status;
                return;
        }
        log_error("a handler set status %d: only final statuses 200-599 can be answered; answering 500", status);
        resp->status = 500;
}

static bool is_tchar(unsigned char c) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
                return true;
        return c && strchr("!#$%&'*+-.^_`|~", c);
}

/* RFC 9110 field-value: visible characters, obs-text, SP and HTAB. Rejecting every other
 * control character (CR and LF above all) makes header injection impossible. */
static bool header_value_valid(const char *v) {
        for (const unsigned char *p = (const unsigned char *) v; *p; p++)
                if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
                        return false;
        return true;
}

int serve_response_add_header(serve_response *resp, const char *name, const char *value) {
        /* Framing belongs to the proxy: a replica-chosen length or encoding could split the
         * client's byte stream (response smuggling). */
        static const char *const reserved[] = { "Content-Length", "Transfer-Encoding", "Connection" };
        size_t nl, vl;

        if (!resp || !name || !value || !*name)
                return -EINVAL;
        if (resp->streaming)
                return -EINVAL; /* the headers went out with the first flush */
        for (const char *p = name; *p; p++)
                if (!is_tchar((unsigned char) *p))
                        return -EINVAL;
        if (!header_value_valid(value))
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(reserved); i++)
                if (strcasecmp(name, reserved[i]) == 0)
                        return -EINVAL;

        nl = strlen(name);
        vl = strlen(value);
        /* The proxy kills a replica that exceeds these; refuse here so the handler can react. */
        if (resp->n_headers >= PROTO_MAX_RESP_HEADERS ||
            resp->headers_bytes + sizeof(struct proto_header) + nl + vl > PROTO_MAX_HEADER_BYTES)
                return -E2BIG;

        struct serve_resp_header *h = reallocarray(resp->headers, resp->n_headers + 1, sizeof *h);
        if (!h)
                return -ENOMEM;
        resp->headers = h;
        char *n = strdup(name), *v = strdup(value);
        if (!n || !v) {
                free(n);
                free(v);
                return -ENOMEM;
        }
        h[resp->n_headers++] = (struct serve_resp_header) { n, v };
        resp->headers_bytes += sizeof(struct proto_header) + nl + vl;
        return 0;
}

int serve_response_write(serve_response *resp, const void *data, size_t len) {
        if (!resp || (!data && len > 0))
                return -EINVAL;
        if (len == 0)
                return 0;
        if (len > PROTO_MAX_RESP_BODY || resp->body_len > PROTO_MAX_RESP_BODY - len)
                return -EFBIG;
        if (resp->body_len + len > resp->body_cap) {
                size_t cap = MAX(resp->body_cap * 2, (size_t) 4096);
                while (cap < resp->body_len + len)
                        cap *= 2;
                cap = MIN(cap, (size_t) PROTO_MAX_RESP_BODY);
                char *b = realloc(resp->body, cap);
                if (!b)
                        return -ENOMEM;
                resp->body = b;
                resp->body_cap = cap;
        }
        memcpy(resp->body + resp->body_len, data, len);
        resp->body_len += len;
        return 0;
}

int serve_response_printf(serve_response *resp, const char *fmt, ...) {
        _cleanup_free_ char *s = NULL;
        va_list ap;
        int n;

        if (!resp || !fmt)
                return -EINVAL;
        va_start(ap, fmt);
        n = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -ENOMEM;
        return serve_response_write(resp, s, (size_t) n);
}

int serve_response_flush(serve_response *resp) {
        if (!resp)
                return -EINVAL;
        if (!resp->ops || !resp->ops->flush)
                return 0; /* no runtime (a unit test): everything goes out when the handler returns */
        return resp->ops->flush(resp);
}

const char *serve_request_caller(const serve_request *req) { return req ? req->caller : NULL; }

/* ---- handles ---- */

void serve_result_free(struct serve_result *res) {
        if (!res)
                return;
        free(res->data);
        res->data = NULL;
        res->len = 0;
}

/* A result that only carries a message (a call that failed before reaching anyone). */
static int result_message(struct serve_result *ret, int status, int err, const char *msg) {
        if (ret) {
                *ret = (struct serve_result) { .status = status, .data = strdup(msg) };
                if (ret->data)
                        ret->len = strlen(msg);
        }
        return err;
}

static int call_start(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
                      bool stream, serve_future **ret_future, struct serve_result *ret_error) {
        if (!ctx || !deployment || !method || (!arg && len > 0) || !ret_future)
                return result_message(ret_error, 500, -EINVAL, "invalid arguments to a handle call");
        if (!ctx->ops || !ctx->ops->call)
                return result_message(ret_error, 500, -ENOTSUP, "handle calls need serve-replica");
        if (ret_error)
                *ret_error = (struct serve_result) {};
        return ctx->ops->call(ctx, NULL, deployment, method, arg, len, stream, ret_future, ret_error);
}

int serve_call_async(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
                     serve_future **ret_future) {
        return call_start(ctx, deployment, method, arg, len, false, ret_future, NULL);
}

int serve_call_stream(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
                      serve_future **ret_future) {
        return call_start(ctx, deployment, method, arg, len, true, ret_future, NULL);
}

static const struct serve_runtime_ops *future_ops(const serve_future *f) {
        return ((const struct serve_future_head *) f)->ops;
}

int serve_future_wait(serve_future *f, struct serve_result *ret) {
        if (!f)
                return result_message(ret, 500, -EINVAL, "no future");
        return future_ops(f)->wait(f, ret);
}

int serve_call(serve_ctx *ctx, const char *deployment, const char *method, const void *arg, size_t len,
               struct serve_result *ret) {
        serve_future *f = NULL;
        int r = call_start(ctx, deployment, method, arg, len, false, &f, ret);

        if (r < 0)
                return r;
        return serve_future_wait(f, ret);
}

int serve_future_next(serve_future *f, const void **ret_data, size_t *ret_len) {
        if (!f || !ret_data || !ret_len)
                return -EINVAL;
        return future_ops(f)->next(f, ret_data, ret_len);
}

int serve_future_error(const serve_future *f, const char **ret_message) {
        if (!f)
                return -EINVAL;
        return future_ops(f)->error(f, ret_message);
}

void serve_future_free(serve_future *f) {
        if (f)
                future_ops(f)->free(f);
}
