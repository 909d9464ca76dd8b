/* serve_python.so: serve-replica dlopens it for a `.py` module. It embeds CPython (once per
 * process), asks serve._runtime to import the module, and synthesizes the `struct
 * serve_application` and `serve_deployment`s the replica runs, so a Python deployment goes
 * through the same rings, threads, batching and handles as a C one.
 *
 * libserve's handler tables hold plain function pointers with no userdata, so each handler slot
 * is a trampoline generated here that knows only its index: the method it serves is the index-th
 * method of the deployment this replica hosts (one replica, one deployment, found through the
 * ctx). The GIL is held only while Python runs: the main thread gives it up after start-up,
 * every other thread takes it around its call into Python, and pymodule.c releases it around
 * everything that may block. */

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "sdk-internal.h"

/* Sanitizer builds: what CPython and its extension modules (OpenSSL's state for _hashlib,
 * NumPy's) allocate while starting and importing the application stays allocated until exit on
 * purpose; LeakSanitizer is told to ignore allocations made during the load only (this thread,
 * this window), so everything else is still checked. tests/lsan-python.supp covers the rest of
 * CPython's own. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LSAN_IGNORE_BEGIN() __lsan_disable()
#define LSAN_IGNORE_END() __lsan_enable()
#else
#define LSAN_IGNORE_BEGIN() ((void) 0)
#define LSAN_IGNORE_END() ((void) 0)
#endif

#ifndef PKGDATADIR
#define PKGDATADIR "/usr/local/share/serve"
#endif

/* Methods per deployment, plain and batched each (a fixed table of trampolines). */
#define BRIDGE_MAX_METHODS 64
#define BRIDGE_MAX_DEPLOYMENTS 256

struct pydep {
        struct serve_deployment d;
        char *name;
        char **method_names;           /* plain handlers, in the order of d.handlers */
        size_t n_methods;
        struct serve_handler *handlers;
        char **batch_names;
        size_t n_batched;
        struct serve_batch_handler *batched;
        char **binds;                  /* NULL-terminated */
        char *user_config_json, *autoscaling_config_json;
};

static struct {
        PyObject *runtime;             /* serve._runtime */
        struct pydep *deps;
        size_t n_deps;
        const struct serve_deployment **dep_list; /* NULL-terminated, for the application */
        struct serve_application app;
        struct pydep *self;            /* the deployment this replica runs (set by init) */
        PyObject *replica;             /* what runtime.init returned */
} B;

/* ---- errors ---- */

static int set_error(char **ret_error, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_error(char **ret_error, int r, const char *fmt, ...) {
        va_list ap;
        if (ret_error) {
                va_start(ap, fmt);
                if (vasprintf(ret_error, fmt, ap) < 0)
                        *ret_error = NULL;
                va_end(ap);
        }
        return r;
}

/* str(o) as a malloc'd UTF-8 string (NULL on failure, exception cleared). */
static char *py_str(PyObject *o) {
        PyObject *s = o ? PyObject_Str(o) : NULL;
        const char *u = s ? PyUnicode_AsUTF8(s) : NULL;
        char *c = u ? strdup(u) : NULL;
        Py_XDECREF(s);
        if (!c)
                PyErr_Clear();
        return c;
}

char *bridge_log_exception(const char *what) {
        PyObject *type = NULL, *value = NULL, *tb = NULL, *mod = NULL, *lines = NULL, *sep = NULL, *text = NULL;
        char *tbtext = NULL, *msg = NULL, *ename = NULL;

        PyErr_Fetch(&type, &value, &tb);
        if (!type)
                return strdup("unknown error");
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb && value)
                PyException_SetTraceback(value, tb);
        mod = PyImport_ImportModule("traceback");
        if (mod)
                lines = PyObject_CallMethod(mod, "format_exception", "OOO", type, value ? value : Py_None,
                                            tb ? tb : Py_None);
        if (lines && (sep = PyUnicode_FromString("")))
                text = PyUnicode_Join(sep, lines);
        tbtext = text ? py_str(text) : NULL;
        PyErr_Clear();

        ename = strdup(((PyTypeObject *) type)->tp_name ? ((PyTypeObject *) type)->tp_name : "Exception");
        char *s = value ? py_str(value) : NULL;
        if (ename && asprintf(&msg, "%s%s%s", ename, s && *s ? ": " : "", s ? s : "") < 0)
                msg = NULL;
        free(s);
        serve_log(bridge_ctx, 3, "%s: %s", what, tbtext ? tbtext : msg ? msg : ename ? ename : "exception");

        free(tbtext);
        free(ename);
        Py_XDECREF(text);
        Py_XDECREF(sep);
        Py_XDECREF(lines);
        Py_XDECREF(mod);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return msg;
}

/* The exception as a load error: its message, plus the traceback's last lines for errors the
 * user's module raised while importing. GIL held; clears the exception. */
static char *load_error_message(void) {
        PyObject *type = NULL, *value = NULL, *tb = NULL, *mod = NULL, *lines = NULL;
        char *msg = NULL;

        PyErr_Fetch(&type, &value, &tb);
        if (!type)
                return strdup("the Python runtime failed");
        PyErr_NormalizeException(&type, &value, &tb);
        mod = PyImport_ImportModule("traceback");
        if (mod)
                lines = PyObject_CallMethod(mod, "format_exception", "OOO", type, value ? value : Py_None,
                                            tb ? tb : Py_None);
        if (lines && PyList_Check(lines) && tb) {
                /* The last frames and the exception: enough to find the line at fault. */
                Py_ssize_t n = PyList_Size(lines), from = n > 4 ? n - 4 : 0;
                PyObject *tail = PyList_GetSlice(lines, from, n), *sep = PyUnicode_FromString("");
                PyObject *text = tail && sep ? PyUnicode_Join(sep, tail) : NULL;
                msg = py_str(text);
                Py_XDECREF(text);
                Py_XDECREF(sep);
                Py_XDECREF(tail);
        }
        if (!msg)
                msg = py_str(value);
        if (msg) { /* no trailing newline in a one-line error */
                size_t l = strlen(msg);
                while (l > 0 && msg[l - 1] == '\n')
                        msg[--l] = '\0';
        }
        PyErr_Clear();
        Py_XDECREF(lines);
        Py_XDECREF(mod);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return msg ? msg : strdup("the Python runtime failed");
}

/* ---- the GIL on replica threads ---- */

/* A thread's first call makes it a Python thread for good (its thread state stays, so later
 * calls do not create and destroy one each); each call then takes and gives back the GIL. */
static __thread bool thread_known;

static PyGILState_STATE gil_take(void) {
        if (!thread_known) {
                PyGILState_Ensure(); /* never released: keeps this thread's state */
                thread_known = true;
                (void) PyEval_SaveThread();
        }
        return PyGILState_Ensure();
}

static void gil_give(PyGILState_STATE s) { PyGILState_Release(s); }

/* ---- the deployment's callbacks ---- */

static struct pydep *pydep_find(const char *name) {
        for (size_t i = 0; name && i < B.n_deps; i++)
                if (strcmp(B.deps[i].name, name) == 0)
                        return &B.deps[i];
        return NULL;
}

static PyObject *str_or_none(const char *s) {
        if (!s)
                Py_RETURN_NONE;
        return PyUnicode_FromString(s);
}

static int bridge_init(serve_ctx *ctx, const char *args_json, const char *user_config_json) {
        struct pydep *d = pydep_find(serve_ctx_deployment(ctx));
        PyGILState_STATE g;
        PyObject *uc, *rep;

        if (!d) {
                serve_ctx_set_error(ctx, "the Python bridge has no deployment '%s'", serve_ctx_deployment(ctx));
                return -ENOENT;
        }
        bridge_ctx = ctx;
        B.self = d;
        g = gil_take();
        uc = str_or_none(user_config_json);
        rep = uc ? PyObject_CallMethod(B.runtime, "init", "ssO", d->name, args_json ? args_json : "{}", uc) : NULL;
        Py_XDECREF(uc);
        if (!rep) {
                char *e = bridge_log_exception("__init__ failed");
                serve_ctx_set_error(ctx, "deployment '%s': __init__ failed: %s", d->name, e ? e : "exception");
                free(e);
                gil_give(g);
                return -EINVAL;
        }
        B.replica = rep;
        gil_give(g);
        return 0;
}

/* Calls runtime.<fn>(replica[, arg]) for reconfigure/check_health/destroy. Returns 0 or -EINVAL
 * (the exception logged, its message reported). */
static int call_lifecycle(serve_ctx *ctx, const char *fn, bool has_arg, const char *arg) {
        PyGILState_STATE g = gil_take();
        PyObject *r;
        int ret = 0;

        if (!B.replica) {
                gil_give(g);
                return 0;
        }
        if (has_arg) {
                PyObject *a = str_or_none(arg);
                r = a ? PyObject_CallMethod(B.runtime, fn, "OO", B.replica, a) : NULL;
                Py_XDECREF(a);
        } else
                r = PyObject_CallMethod(B.runtime, fn, "O", B.replica);
        if (!r) {
                char what[64];
                snprintf(what, sizeof what, "%s failed", fn);
                char *e = bridge_log_exception(what);
                serve_ctx_set_error(ctx, "%s: %s", fn, e ? e : "exception");
                free(e);
                ret = -EINVAL;
        }
        Py_XDECREF(r);
        gil_give(g);
        return ret;
}

static int bridge_reconfigure(serve_ctx *ctx, const char *user_config_json) {
        return call_lifecycle(ctx, "reconfigure", true, user_config_json);
}

static int bridge_check_health(serve_ctx *ctx) { return call_lifecycle(ctx, "check_health", false, NULL); }

static void bridge_destroy(serve_ctx *ctx) { (void) call_lifecycle(ctx, "destroy", false, NULL); }

/* A bug in serve._runtime (its invoke never raises by contract): the client still gets an
 * answer. */
static void answer_500(serve_response *resp, const char *msg) {
        serve_response_clear(resp);
        serve_response_set_status(resp, 500);
        (void) serve_response_printf(resp, "%s\n", msg ? msg : "internal error");
}

static void invoke(size_t i, serve_ctx *ctx, const serve_request *req, serve_response *resp) {
        struct pydep *d = B.self;
        PyGILState_STATE g;
        PyObject *preq, *presp, *r = NULL;

        if (!d || i >= d->n_methods || !B.replica) {
                answer_500(resp, "the Python deployment is not initialised");
                return;
        }
        g = gil_take();
        preq = pyrequest_new(req);
        presp = pyresponse_new(resp);
        if (preq && presp)
                r = PyObject_CallMethod(B.runtime, "invoke", "OsOO", B.replica, d->method_names[i], preq, presp);
        if (!r) {
                char *e = bridge_log_exception("serve._runtime.invoke failed");
                answer_500(resp, e);
                free(e);
        }
        Py_XDECREF(r);
        pyrequest_invalidate(preq);
        pyresponse_invalidate(presp);
        Py_XDECREF(preq);
        Py_XDECREF(presp);
        gil_give(g);
}

static void invoke_batch(size_t i, serve_ctx *ctx, size_t n, const serve_request *const *reqs,
                         serve_response *const *resps) {
        struct pydep *d = B.self;
        PyObject *lreq = NULL, *lresp = NULL, *r = NULL;
        PyGILState_STATE g;
        bool ok = true;

        if (!d || i >= d->n_batched || !B.replica) {
                for (size_t k = 0; k < n; k++)
                        answer_500(resps[k], "the Python deployment is not initialised");
                return;
        }
        g = gil_take();
        lreq = PyList_New((Py_ssize_t) n);
        lresp = PyList_New((Py_ssize_t) n);
        ok = lreq && lresp;
        for (size_t k = 0; ok && k < n; k++) {
                PyObject *a = pyrequest_new(reqs[k]), *b = pyresponse_new(resps[k]);
                if (!a || !b) {
                        Py_XDECREF(a);
                        Py_XDECREF(b);
                        ok = false;
                        break;
                }
                PyList_SET_ITEM(lreq, (Py_ssize_t) k, a);
                PyList_SET_ITEM(lresp, (Py_ssize_t) k, b);
        }
        if (ok)
                r = PyObject_CallMethod(B.runtime, "invoke_batch", "OsOO", B.replica, d->batch_names[i], lreq, lresp);
        if (!r) {
                char *e = bridge_log_exception("serve._runtime.invoke_batch failed");
                for (size_t k = 0; k < n; k++)
                        answer_500(resps[k], e);
                free(e);
        }
        Py_XDECREF(r);
        for (size_t k = 0; ok && k < n; k++) {
                pyrequest_invalidate(PyList_GET_ITEM(lreq, (Py_ssize_t) k));
                pyresponse_invalidate(PyList_GET_ITEM(lresp, (Py_ssize_t) k));
        }
        Py_XDECREF(lreq);
        Py_XDECREF(lresp);
        gil_give(g);
}

/* The trampolines: slot i serves the i-th method. */
#define TRAMPOLINE(i)                                                                                   \
        static int handler_##i(serve_ctx *ctx, const serve_request *req, serve_response *resp) {        \
                invoke(i, ctx, req, resp);                                                              \
                return 0;                                                                               \
        }                                                                                               \
        static int batch_##i(serve_ctx *ctx, size_t n, const serve_request *const *reqs,                \
                             serve_response *const *resps) {                                            \
                invoke_batch(i, ctx, n, reqs, resps);                                                   \
                return 0;                                                                               \
        }
#define T8(b) TRAMPOLINE(b##0) TRAMPOLINE(b##1) TRAMPOLINE(b##2) TRAMPOLINE(b##3) \
              TRAMPOLINE(b##4) TRAMPOLINE(b##5) TRAMPOLINE(b##6) TRAMPOLINE(b##7)
T8() T8(1) T8(2) T8(3) T8(4) T8(5) T8(6) T8(7)
#define H8(b) handler_##b##0, handler_##b##1, handler_##b##2, handler_##b##3, \
              handler_##b##4, handler_##b##5, handler_##b##6, handler_##b##7
#define B8(b) batch_##b##0, batch_##b##1, batch_##b##2, batch_##b##3, \
              batch_##b##4, batch_##b##5, batch_##b##6, batch_##b##7
static const serve_handler_fn handler_slots[BRIDGE_MAX_METHODS] = { H8(), H8(1), H8(2), H8(3), H8(4), H8(5), H8(6), H8(7) };
static const serve_batch_fn batch_slots[BRIDGE_MAX_METHODS] = { B8(), B8(1), B8(2), B8(3), B8(4), B8(5), B8(6), B8(7) };

/* ---- what runtime.load() describes -> struct serve_deployment ---- */

/* A str item of dict d as a malloc'd string; NULL (and *ok = false) when missing or not str. */
static char *dict_str(PyObject *d, const char *key) {
        PyObject *v = PyDict_GetItemString(d, key);
        const char *s = v && PyUnicode_Check(v) ? PyUnicode_AsUTF8(v) : NULL;
        if (!s)
                PyErr_Clear();
        return s ? strdup(s) : NULL;
}

static double dict_num(PyObject *d, const char *key) {
        PyObject *v = d ? PyDict_GetItemString(d, key) : NULL;
        double x;
        if (!v || v == Py_None || PyBool_Check(v) || !PyNumber_Check(v))
                return 0;
        x = PyFloat_AsDouble(v);
        if (PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
        }
        return x;
}

/* JSON text of d[key] (None/absent: NULL); -EINVAL when it cannot be encoded. */
static int dict_json(PyObject *json, PyObject *d, const char *key, char **ret) {
        PyObject *v = PyDict_GetItemString(d, key), *s;
        *ret = NULL;
        if (!v || v == Py_None)
                return 0;
        s = PyObject_CallMethod(json, "dumps", "O", v);
        if (!s)
                return -EINVAL;
        *ret = py_str(s);
        Py_DECREF(s);
        return *ret ? 0 : -ENOMEM;
}

/* A list of str as a malloc'd array (n items, plus a NULL). */
static int str_list(PyObject *l, char ***ret, size_t *ret_n) {
        Py_ssize_t n;
        char **a;

        *ret = NULL;
        *ret_n = 0;
        if (!l || l == Py_None)
                n = 0;
        else if (!PyList_Check(l))
                return -EINVAL;
        else
                n = PyList_Size(l);
        if (!(a = calloc((size_t) n + 1, sizeof *a)))
                return -ENOMEM;
        for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *it = PyList_GET_ITEM(l, i);
                const char *s = PyUnicode_Check(it) ? PyUnicode_AsUTF8(it) : NULL;
                if (!s || !(a[i] = strdup(s))) {
                        PyErr_Clear();
                        for (Py_ssize_t k = 0; k < i; k++)
                                free(a[k]);
                        free(a);
                        return -EINVAL;
                }
        }
        *ret = a;
        *ret_n = (size_t) n;
        return 0;
}

static int pydep_build(PyObject *json, PyObject *o, struct pydep *d, char **ret_error) {
        PyObject *batched, *opts;
        size_t n_binds;
        int r;

        if (!PyDict_Check(o))
                return set_error(ret_error, -EINVAL, "serve._runtime.load returned a deployment that is not a dict");
        d->name = dict_str(o, "name");
        if (!d->name)
                return set_error(ret_error, -EINVAL, "serve._runtime.load returned a deployment without a name");
        r = str_list(PyDict_GetItemString(o, "handlers"), &d->method_names, &d->n_methods);
        if (r == 0)
                r = str_list(PyDict_GetItemString(o, "binds"), &d->binds, &n_binds);
        if (r < 0)
                return set_error(ret_error, r, "deployment '%s': handlers and binds must be lists of names", d->name);

        batched = PyDict_GetItemString(o, "batched");
        Py_ssize_t nb = batched && PyList_Check(batched) ? PyList_Size(batched) : 0;
        if (d->n_methods > BRIDGE_MAX_METHODS || (size_t) nb > BRIDGE_MAX_METHODS)
                return set_error(ret_error, -E2BIG,
                                 "deployment '%s' has %zu methods and %zd batched methods: a Python deployment may have at most %d of each",
                                 d->name, d->n_methods, nb, BRIDGE_MAX_METHODS);
        d->handlers = calloc(d->n_methods + 1, sizeof *d->handlers);
        d->batched = calloc((size_t) nb + 1, sizeof *d->batched);
        d->batch_names = calloc((size_t) nb + 1, sizeof *d->batch_names);
        if (!d->handlers || !d->batched || !d->batch_names)
                return -ENOMEM;
        for (size_t i = 0; i < d->n_methods; i++)
                d->handlers[i] = (struct serve_handler) { d->method_names[i], handler_slots[i] };
        for (Py_ssize_t i = 0; i < nb; i++) {
                PyObject *b = PyList_GET_ITEM(batched, i);
                char *name = PyDict_Check(b) ? dict_str(b, "name") : NULL;
                if (!name)
                        return set_error(ret_error, -EINVAL, "deployment '%s': batched method #%zd has no name",
                                         d->name, i);
                d->batch_names[i] = name;
                d->batched[i] = (struct serve_batch_handler) {
                        .name = name,
                        .fn = batch_slots[i],
                        .max_batch_size = (unsigned) dict_num(b, "max_batch_size"),
                        .batch_wait_timeout_s = dict_num(b, "batch_wait_timeout_s"),
                };
                d->n_batched++;
        }

        opts = PyDict_GetItemString(o, "options");
        if (opts && !PyDict_Check(opts))
                opts = NULL;
        if (dict_json(json, o, "user_config", &d->user_config_json) < 0 ||
            dict_json(json, o, "autoscaling_config", &d->autoscaling_config_json) < 0) {
                char *e = load_error_message();
                r = set_error(ret_error, -EINVAL, "deployment '%s': user_config/autoscaling_config: %s", d->name,
                              e ? e : "not JSON-serialisable");
                free(e);
                return r;
        }
        d->d = (struct serve_deployment) {
                .abi_version = SERVE_ABI_VERSION,
                .name = d->name,
                .init = bridge_init,
                .handlers = d->handlers,
                .reconfigure = bridge_reconfigure,
                .check_health = bridge_check_health,
                .destroy = bridge_destroy,
                .defaults = {
                        .num_replicas = (int) dict_num(opts, "num_replicas"),
                        .max_ongoing_requests = (int) dict_num(opts, "max_ongoing_requests"),
                        .max_queued_requests = (int) dict_num(opts, "max_queued_requests"),
                        .health_check_period_s = dict_num(opts, "health_check_period_s"),
                        .health_check_timeout_s = dict_num(opts, "health_check_timeout_s"),
                        .graceful_shutdown_timeout_s = dict_num(opts, "graceful_shutdown_timeout_s"),
                        .num_cpus = dict_num(opts, "num_cpus"),
                        .num_gpus = dict_num(opts, "num_gpus"),
                },
                .binds = n_binds ? (const char *const *) d->binds : NULL,
                .batched = nb ? d->batched : NULL,
                .user_config_json = d->user_config_json,
                .autoscaling_config_json = d->autoscaling_config_json,
        };
        return 0;
}

/* ---- start-up ---- */

/* Makes `serve._serve` importable: CPython 3.11's BuiltinImporter takes no submodules, so the
 * module goes into sys.modules and onto the package. GIL held. */
static int register_serve_module(char **ret_error) {
        PyObject *m = pymodule_init(), *modules = PySys_GetObject("modules"), *pkg = NULL;
        int r = -1;

        if (m && modules && PyDict_SetItemString(modules, "serve._serve", m) == 0 &&
            (pkg = PyImport_ImportModule("serve")) && PyObject_SetAttrString(pkg, "_serve", m) == 0)
                r = 0;
        Py_XDECREF(pkg);
        Py_XDECREF(m);
        if (r < 0) {
                char *e = load_error_message();
                r = set_error(ret_error, -ENOEXEC, "cannot import serve (serve's Python package): %s", e ? e : "error");
                free(e);
        }
        return r;
}

/* Inserts dir at sys.path[pos] (or appends with pos < 0). GIL held. */
static int path_add(PyObject *sys_path, Py_ssize_t pos, const char *dir) {
        PyObject *s = PyUnicode_DecodeFSDefault(dir);
        int r;
        if (!s)
                return -1;
        r = pos < 0 ? PyList_Append(sys_path, s) : PyList_Insert(sys_path, pos, s);
        Py_DECREF(s);
        return r;
}

/* A virtualenv's interpreter (runtime_env.py_executable, as $SERVE_PY_EXECUTABLE): its
 * site-packages join sys.path through site.addsitedir, so its .pth files apply too. */
static int add_venv(const char *py_executable, char **ret_error) {
        char buf[PATH_MAX], site_dir[PATH_MAX + 64];
        PyObject *site, *r;

        if (strlen(py_executable) >= sizeof buf)
                return set_error(ret_error, -ENAMETOOLONG, "py_executable: path too long");
        strcpy(buf, py_executable);
        char *bin = dirname(buf); /* VENV/bin */
        char *venv = dirname(bin);
        snprintf(site_dir, sizeof site_dir, "%s/lib/python%d.%d/site-packages", venv, PY_MAJOR_VERSION,
                 PY_MINOR_VERSION);
        if (access(site_dir, R_OK) < 0)
                return set_error(ret_error, -ENOENT,
                                 "py_executable %s: %s is missing (a virtualenv made by python%d.%d -m venv has it)",
                                 py_executable, site_dir, PY_MAJOR_VERSION, PY_MINOR_VERSION);
        site = PyImport_ImportModule("site");
        r = site ? PyObject_CallMethod(site, "addsitedir", "s", site_dir) : NULL;
        Py_XDECREF(site);
        if (!r) {
                char *e = load_error_message();
                int ret = set_error(ret_error, -EINVAL, "py_executable %s: %s", py_executable, e ? e : "site.addsitedir failed");
                free(e);
                return ret;
        }
        Py_DECREF(r);
        return 0;
}

/* Starts CPython: no signal handlers (the replica owns signals), sys.path as the contract says.
 * Returns 0 with the GIL held by this thread. */
static int python_start(const char *py_path, const char *working_dir, char **ret_error) {
        const char *pkg = getenv("SERVE_PYTHON_PATH"), *venv = getenv("SERVE_PY_EXECUTABLE");
        char mod_dir[PATH_MAX];
        PyConfig config;
        PyStatus st;
        PyObject *sys_path;
        Py_ssize_t pos = 0;

        PyConfig_InitPythonConfig(&config);
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.buffered_stdio = 0;
        st = PyConfig_SetBytesString(&config, &config.program_name, "/usr/bin/python3");
        if (!PyStatus_Exception(st))
                st = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(st))
                return set_error(ret_error, -EINVAL, "cannot start Python: %s", st.err_msg ? st.err_msg : "error");

        sys_path = PySys_GetObject("path"); /* borrowed */
        if (!sys_path || !PyList_Check(sys_path))
                return set_error(ret_error, -EINVAL, "cannot start Python: no sys.path");
        if (path_add(sys_path, pos++, pkg && *pkg ? pkg : PKGDATADIR "/python") < 0)
                goto py_fail;
        if (strlen(py_path) < sizeof mod_dir) {
                strcpy(mod_dir, py_path);
                if (path_add(sys_path, pos++, dirname(mod_dir)) < 0)
                        goto py_fail;
        }
        if (working_dir && path_add(sys_path, pos++, working_dir) < 0)
                goto py_fail;
        if (venv && *venv) {
                int r = add_venv(venv, ret_error);
                if (r < 0)
                        return r;
        }
        return register_serve_module(ret_error);
py_fail: {
        char *e = load_error_message();
        int r = set_error(ret_error, -EINVAL, "cannot set up sys.path: %s", e ? e : "error");
        free(e);
        return r;
}
}

__attribute__((visibility("default"))) int serve_python_load(const char *py_path, const char *symbol,
                                                             const char *working_dir,
                                                             const struct serve_application **ret_app,
                                                             char **ret_error);

int serve_python_load(const char *py_path, const char *symbol, const char *working_dir,
                      const struct serve_application **ret_app, char **ret_error) {
        PyObject *json = NULL, *list = NULL;
        char cwd[PATH_MAX];
        int r = 0;

        if (!py_path || !symbol || !ret_app)
                return set_error(ret_error, -EINVAL, "serve_python_load: invalid arguments");
        if (B.runtime || Py_IsInitialized())
                return set_error(ret_error, -EALREADY, "%s: the Python bridge loads one module per process", py_path);
        /* The supervisor starts a replica in its working_dir; --describe passes it. */
        if (!working_dir && getcwd(cwd, sizeof cwd))
                working_dir = cwd;
        LSAN_IGNORE_BEGIN();
        r = python_start(py_path, working_dir, ret_error);
        if (r < 0)
                goto out_gil;

        B.runtime = PyImport_ImportModule("serve._runtime");
        if (!B.runtime) {
                char *e = load_error_message();
                r = set_error(ret_error, -ENOEXEC, "%s: cannot import serve._runtime (serve's Python package): %s",
                              py_path, e ? e : "error");
                free(e);
                goto out_gil;
        }
        json = PyImport_ImportModule("json");
        list = json ? PyObject_CallMethod(B.runtime, "load", "ss", py_path, symbol) : NULL;
        if (!list) {
                char *e = load_error_message();
                r = set_error(ret_error, -EINVAL, "%s", e ? e : "the module failed to load");
                free(e);
                goto out_gil;
        }
        if (!PyList_Check(list) || PyList_Size(list) < 1) {
                r = set_error(ret_error, -EINVAL, "%s: symbol '%s': serve._runtime.load returned no deployments",
                              py_path, symbol);
                goto out_gil;
        }
        Py_ssize_t n = PyList_Size(list);
        if (n > BRIDGE_MAX_DEPLOYMENTS) {
                r = set_error(ret_error, -E2BIG, "%s: symbol '%s': more than %d deployments", py_path, symbol,
                              BRIDGE_MAX_DEPLOYMENTS);
                goto out_gil;
        }
        B.deps = calloc((size_t) n, sizeof *B.deps);
        B.dep_list = calloc((size_t) n + 1, sizeof *B.dep_list);
        if (!B.deps || !B.dep_list) {
                r = set_error(ret_error, -ENOMEM, "out of memory");
                goto out_gil;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
                char *e = NULL;
                r = pydep_build(json, PyList_GET_ITEM(list, i), &B.deps[i], &e);
                B.n_deps++;
                if (r < 0) {
                        set_error(ret_error, r, "%s: symbol '%s': %s", py_path, symbol, e ? e : "out of memory");
                        free(e);
                        goto out_gil;
                }
                B.dep_list[i] = &B.deps[i].d;
        }
        B.app = (struct serve_application) {
                .abi_version = SERVE_ABI_VERSION,
                .ingress = &B.deps[0].d,
                .deployments = B.dep_list,
        };
        *ret_app = &B.app;
out_gil:
        Py_XDECREF(list);
        Py_XDECREF(json);
        /* From here on, threads take the GIL when they run Python. (A failed load ends the
         * process: nothing to tear down.) */
        if (Py_IsInitialized() && PyGILState_Check())
                (void) PyEval_SaveThread();
        LSAN_IGNORE_END();
        return r;
}
