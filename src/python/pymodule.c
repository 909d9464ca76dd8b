/* The `serve._serve` extension module: what serve._runtime (pure Python) uses to read a
 * request, write its response and call other deployments, on top of libserve. Everything Python
 * hands in is checked here (types, status range, header names and values through libserve) and
 * refused with a Python exception; nothing Python does can crash the replica. The GIL is
 * released around every call that may block (flush, ring writes of a handle call, waits). */

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "bridge.h"
#include "sdk-internal.h"

serve_ctx *bridge_ctx;

static PyObject *call_error; /* serve._serve.CallError(status, message) */

/* ---- Request and Response: pointers valid during one invoke ---- */

typedef struct {
        PyObject_HEAD
        const serve_request *req; /* NULL once invalidated */
} PyRequest;

typedef struct {
        PyObject_HEAD
        serve_response *resp;
} PyResponse;

static PyTypeObject PyRequest_Type = {
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "serve._serve.Request",
        .tp_basicsize = sizeof(PyRequest),
        .tp_flags = Py_TPFLAGS_DEFAULT,
        .tp_doc = "A request being served (valid only during the invoke that received it).",
};

static PyTypeObject PyResponse_Type = {
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "serve._serve.Response",
        .tp_basicsize = sizeof(PyResponse),
        .tp_flags = Py_TPFLAGS_DEFAULT,
        .tp_doc = "The response being built (valid only during the invoke that received it).",
};

PyObject *pyrequest_new(const serve_request *req) {
        PyRequest *o = PyObject_New(PyRequest, &PyRequest_Type);
        if (o)
                o->req = req;
        return (PyObject *) o;
}

void pyrequest_invalidate(PyObject *o) {
        if (o)
                ((PyRequest *) o)->req = NULL;
}

PyObject *pyresponse_new(serve_response *resp) {
        PyResponse *o = PyObject_New(PyResponse, &PyResponse_Type);
        if (o)
                o->resp = resp;
        return (PyObject *) o;
}

void pyresponse_invalidate(PyObject *o) {
        if (o)
                ((PyResponse *) o)->resp = NULL;
}

/* The request behind o, or NULL with an exception set. */
static const serve_request *get_req(PyObject *o) {
        if (!PyObject_TypeCheck(o, &PyRequest_Type)) {
                PyErr_SetString(PyExc_TypeError, "expected a serve._serve.Request");
                return NULL;
        }
        if (!((PyRequest *) o)->req) {
                PyErr_SetString(PyExc_RuntimeError, "the request is no longer valid (its handler returned)");
                return NULL;
        }
        return ((PyRequest *) o)->req;
}

static serve_response *get_resp(PyObject *o) {
        if (!PyObject_TypeCheck(o, &PyResponse_Type)) {
                PyErr_SetString(PyExc_TypeError, "expected a serve._serve.Response");
                return NULL;
        }
        if (!((PyResponse *) o)->resp) {
                PyErr_SetString(PyExc_RuntimeError, "the response is no longer valid (its handler returned)");
                return NULL;
        }
        return ((PyResponse *) o)->resp;
}

/* Raises OSError(-r) and returns NULL. */
static PyObject *raise_errno(int r, const char *what) {
        errno = -r;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, what);
}

/* ---- the request ---- */

static PyObject *m_req_method(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        return req ? PyUnicode_DecodeLatin1(serve_request_method(req), (Py_ssize_t) strlen(serve_request_method(req)), NULL)
                   : NULL;
}

/* Paths, queries and header values are bytes from the client: Latin-1 keeps every byte. */
static PyObject *latin1(const char *s) { return PyUnicode_DecodeLatin1(s, (Py_ssize_t) strlen(s), NULL); }

static PyObject *m_req_path(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        return req ? latin1(serve_request_path(req)) : NULL;
}

static PyObject *m_req_query(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        return req ? latin1(serve_request_query(req)) : NULL;
}

static PyObject *m_req_headers(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        const char *name, *value;
        PyObject *list;

        if (!req || !(list = PyList_New(0)))
                return NULL;
        for (size_t i = 0; serve_request_header_at(req, i, &name, &value); i++) {
                PyObject *t = Py_BuildValue("(NN)", latin1(name), latin1(value));
                if (!t || PyList_Append(list, t) < 0) {
                        Py_XDECREF(t);
                        Py_DECREF(list);
                        return NULL;
                }
                Py_DECREF(t);
        }
        return list;
}

static PyObject *m_req_body(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        const void *body;
        size_t n;

        if (!req)
                return NULL;
        body = serve_request_body(req, &n);
        return PyBytes_FromStringAndSize(body, (Py_ssize_t) n);
}

static PyObject *m_req_caller(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        const char *c;

        if (!req)
                return NULL;
        c = serve_request_caller(req);
        if (!c)
                Py_RETURN_NONE;
        return PyUnicode_FromString(c);
}

static PyObject *m_req_cancelled(PyObject *self, PyObject *arg) {
        const serve_request *req = get_req(arg);
        if (!req)
                return NULL;
        return PyBool_FromLong(serve_request_cancelled(req));
}

/* ---- the response ---- */

static PyObject *m_resp_set_status(PyObject *self, PyObject *args) {
        PyObject *o;
        int status;
        serve_response *resp;

        if (!PyArg_ParseTuple(args, "Oi:resp_set_status", &o, &status) || !(resp = get_resp(o)))
                return NULL;
        if (status < 200 || status > 599)
                return PyErr_Format(PyExc_ValueError, "status %d: a response's status must be 200..599", status);
        serve_response_set_status(resp, status);
        Py_RETURN_NONE;
}

static PyObject *m_resp_add_header(PyObject *self, PyObject *args) {
        const char *name, *value;
        Py_ssize_t nl, vl;
        serve_response *resp;
        PyObject *o;
        int r;

        if (!PyArg_ParseTuple(args, "Os#s#:resp_add_header", &o, &name, &nl, &value, &vl) || !(resp = get_resp(o)))
                return NULL;
        if ((size_t) nl != strlen(name) || (size_t) vl != strlen(value))
                return PyErr_Format(PyExc_ValueError, "header names and values cannot contain NUL");
        r = serve_response_add_header(resp, name, value);
        if (r == -ENOMEM)
                return PyErr_NoMemory();
        if (r == -E2BIG)
                return PyErr_Format(PyExc_ValueError, "header '%s': too many or too large response headers", name);
        if (r < 0)
                return PyErr_Format(PyExc_ValueError,
                                    "header '%s': invalid (names are tokens, values have no control characters; "
                                    "Content-Length, Transfer-Encoding and Connection are the proxy's; "
                                    "no headers after the first flush)",
                                    name);
        Py_RETURN_NONE;
}

static PyObject *m_resp_write(PyObject *self, PyObject *args) {
        serve_response *resp;
        PyObject *o;
        Py_buffer b;
        int r;

        if (!PyArg_ParseTuple(args, "Oy*:resp_write", &o, &b))
                return NULL;
        if (!(resp = get_resp(o))) {
                PyBuffer_Release(&b);
                return NULL;
        }
        Py_BEGIN_ALLOW_THREADS
        r = serve_response_write(resp, b.buf, (size_t) b.len);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&b);
        if (r < 0)
                return raise_errno(r, "resp_write");
        Py_RETURN_NONE;
}

static PyObject *m_resp_flush(PyObject *self, PyObject *arg) {
        serve_response *resp = get_resp(arg);
        int r;

        if (!resp)
                return NULL;
        Py_BEGIN_ALLOW_THREADS
        r = serve_response_flush(resp);
        Py_END_ALLOW_THREADS
        if (r < 0)
                return raise_errno(r, "resp_flush");
        Py_RETURN_NONE;
}

/* ---- handles ---- */

typedef struct {
        PyObject_HEAD
        serve_future *f; /* NULL once consumed (wait) or freed (cancel) */
        bool stream;
} PyFuture;

static void future_release(PyFuture *o) {
        serve_future *f = o->f;
        o->f = NULL;
        if (f) {
                /* Cancelling a running call writes to the ring, which may wait for room. */
                Py_BEGIN_ALLOW_THREADS
                serve_future_free(f);
                Py_END_ALLOW_THREADS
        }
}

static void future_dealloc(PyObject *self) {
        future_release((PyFuture *) self);
        Py_TYPE(self)->tp_free(self);
}

static PyTypeObject PyFuture_Type = {
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "serve._serve.Future",
        .tp_basicsize = sizeof(PyFuture),
        .tp_flags = Py_TPFLAGS_DEFAULT,
        .tp_dealloc = future_dealloc,
        .tp_doc = "A handle call under way.",
};

static PyFuture *get_future(PyObject *o) {
        if (!PyObject_TypeCheck(o, &PyFuture_Type)) {
                PyErr_SetString(PyExc_TypeError, "expected a serve._serve.Future");
                return NULL;
        }
        if (!((PyFuture *) o)->f) {
                PyErr_SetString(PyExc_RuntimeError, "the future was already consumed or cancelled");
                return NULL;
        }
        return (PyFuture *) o;
}

static PyObject *raise_call_error(int status, const char *msg) {
        PyObject *v = Py_BuildValue("(is)", status, msg ? msg : "");
        if (v) {
                PyErr_SetObject(call_error, v);
                Py_DECREF(v);
        }
        return NULL;
}

/* A call that failed before it started: what serve_call's errors mean as a status. */
static PyObject *raise_start_error(int r, const char *dep, const char *method) {
        switch (r) {
        case -ENOENT:
                return raise_call_error(404, "the deployment is not bound by this one, or has no such method");
        case -EDEADLK:
        case -ELOOP:
                return raise_call_error(508, "the call would close a cycle of calls");
        case -EBUSY:
                return raise_call_error(503, "too many handle calls outstanding");
        case -ECANCELED:
                return raise_call_error(499, "the calling request was cancelled");
        case -ENOMEM:
                return PyErr_NoMemory();
        case -ENOTSUP:
                return raise_call_error(500, "handle calls need serve-replica");
        default:
                return raise_call_error(r == -EINVAL ? 400 : 500, "invalid deployment or method name");
        }
}

static PyObject *call_common(PyObject *args, bool stream) {
        const char *dep, *method;
        const serve_request *parent = NULL;
        serve_future *f = NULL;
        struct serve_result err = {};
        PyObject *req;
        PyFuture *o;
        Py_buffer b;
        int r;

        if (!PyArg_ParseTuple(args, stream ? "Ossy*:call_stream" : "Ossy*:call", &req, &dep, &method, &b))
                return NULL;
        if (req != Py_None && !(parent = get_req(req))) {
                PyBuffer_Release(&b);
                return NULL;
        }
        if (!bridge_ctx) {
                PyBuffer_Release(&b);
                return raise_call_error(500, "handle calls are only possible in a running replica");
        }
        /* The request stays valid while we run: its handler is waiting for this thread (or is
         * this thread). */
        Py_BEGIN_ALLOW_THREADS
        r = serve_call_start_for(bridge_ctx, parent, dep, method, b.buf, (size_t) b.len, stream, &f, &err);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&b);
        if (r < 0) {
                /* The runtime's own message names what is wrong (deployments, the cycle). */
                PyObject *e = err.data && err.status && r != -ENOMEM ? raise_call_error(err.status, err.data)
                                                                     : raise_start_error(r, dep, method);
                serve_result_free(&err);
                return e;
        }
        o = PyObject_New(PyFuture, &PyFuture_Type);
        if (!o) {
                Py_BEGIN_ALLOW_THREADS
                serve_future_free(f);
                Py_END_ALLOW_THREADS
                return NULL;
        }
        o->f = f;
        o->stream = stream;
        return (PyObject *) o;
}

static PyObject *m_call(PyObject *self, PyObject *args) { return call_common(args, false); }
static PyObject *m_call_stream(PyObject *self, PyObject *args) { return call_common(args, true); }

static PyObject *m_wait(PyObject *self, PyObject *arg) {
        PyFuture *o = get_future(arg);
        struct serve_result res = {};
        serve_future *f;
        PyObject *v;

        if (!o)
                return NULL;
        f = o->f;
        o->f = NULL; /* consumed, whatever happens */
        Py_BEGIN_ALLOW_THREADS
        (void) serve_future_wait(f, &res);
        Py_END_ALLOW_THREADS
        v = Py_BuildValue("(iy#)", res.status, res.data ? (const char *) res.data : "", (Py_ssize_t) res.len);
        serve_result_free(&res);
        return v;
}

static PyObject *m_next(PyObject *self, PyObject *arg) {
        PyFuture *o = get_future(arg);
        const void *data = NULL;
        const char *msg = NULL;
        size_t n = 0;
        int r, status;

        if (!o)
                return NULL;
        Py_BEGIN_ALLOW_THREADS
        r = serve_future_next(o->f, &data, &n);
        Py_END_ALLOW_THREADS
        if (r > 0)
                return PyBytes_FromStringAndSize(data, (Py_ssize_t) n);
        if (r == 0)
                Py_RETURN_NONE;
        status = serve_future_error(o->f, &msg);
        return raise_call_error(status > 0 ? status : 500, msg && *msg ? msg : strerror(-r));
}

static PyObject *m_cancel(PyObject *self, PyObject *arg) {
        if (!PyObject_TypeCheck(arg, &PyFuture_Type)) {
                PyErr_SetString(PyExc_TypeError, "expected a serve._serve.Future");
                return NULL;
        }
        future_release((PyFuture *) arg);
        Py_RETURN_NONE;
}

/* ---- the replica ---- */

static PyObject *m_log(PyObject *self, PyObject *args) {
        const char *msg;
        int level;

        if (!PyArg_ParseTuple(args, "is:log", &level, &msg))
                return NULL;
        Py_BEGIN_ALLOW_THREADS /* journald or stderr may block */
        serve_log(bridge_ctx, level, "%s", msg);
        Py_END_ALLOW_THREADS
        Py_RETURN_NONE;
}

static PyObject *ctx_string(const char *s) {
        if (!s)
                Py_RETURN_NONE;
        return PyUnicode_FromString(s);
}

static PyObject *m_replica_id(PyObject *self, PyObject *unused) { return ctx_string(serve_ctx_replica_id(bridge_ctx)); }
static PyObject *m_deployment(PyObject *self, PyObject *unused) { return ctx_string(serve_ctx_deployment(bridge_ctx)); }
static PyObject *m_app(PyObject *self, PyObject *unused) { return ctx_string(serve_ctx_app(bridge_ctx)); }

static PyMethodDef methods[] = {
        { "req_method", m_req_method, METH_O, "The request's method." },
        { "req_path", m_req_path, METH_O, "The path after route_prefix." },
        { "req_query", m_req_query, METH_O, "The query string, without '?'." },
        { "req_headers", m_req_headers, METH_O, "[(name, value), ...]" },
        { "req_body", m_req_body, METH_O, "The body as bytes." },
        { "req_caller", m_req_caller, METH_O, "The calling deployment of a handle call, else None." },
        { "req_cancelled", m_req_cancelled, METH_O, "Whether the client went away or the request timed out." },
        { "resp_set_status", m_resp_set_status, METH_VARARGS, "resp_set_status(resp, status)" },
        { "resp_add_header", m_resp_add_header, METH_VARARGS, "resp_add_header(resp, name, value)" },
        { "resp_write", m_resp_write, METH_VARARGS, "resp_write(resp, data)" },
        { "resp_flush", m_resp_flush, METH_O, "Sends what was written so far (a streaming response)." },
        { "call", m_call, METH_VARARGS, "call(req|None, deployment, method, data) -> Future" },
        { "call_stream", m_call_stream, METH_VARARGS, "call_stream(req|None, deployment, method, data) -> Future" },
        { "wait", m_wait, METH_O, "wait(fut) -> (status, body)" },
        { "next", m_next, METH_O, "next(fut) -> bytes | None" },
        { "cancel", m_cancel, METH_O, "cancel(fut)" },
        { "log", m_log, METH_VARARGS, "log(level, message)" },
        { "replica_id", m_replica_id, METH_NOARGS, NULL },
        { "deployment", m_deployment, METH_NOARGS, NULL },
        { "app", m_app, METH_NOARGS, NULL },
        { NULL, NULL, 0, NULL },
};

static struct PyModuleDef module_def = {
        PyModuleDef_HEAD_INIT, .m_name = "serve._serve",
        .m_doc = "serve's replica, as seen from Python (used by serve._runtime).",
        .m_size = -1,
        .m_methods = methods,
};

PyObject *pymodule_init(void) {
        PyObject *m;

        if (PyType_Ready(&PyRequest_Type) < 0 || PyType_Ready(&PyResponse_Type) < 0 ||
            PyType_Ready(&PyFuture_Type) < 0)
                return NULL;
        m = PyModule_Create(&module_def);
        if (!m)
                return NULL;
        if (!call_error && !(call_error = PyErr_NewExceptionWithDoc("serve._serve.CallError",
                                                                    "A handle call failed: args are (status, message).",
                                                                    PyExc_Exception, NULL)))
                goto fail;
        Py_INCREF(call_error);
        if (PyModule_AddObject(m, "CallError", call_error) < 0) {
                Py_DECREF(call_error);
                goto fail;
        }
        Py_INCREF(&PyRequest_Type);
        Py_INCREF(&PyResponse_Type);
        Py_INCREF(&PyFuture_Type);
        if (PyModule_AddObject(m, "Request", (PyObject *) &PyRequest_Type) < 0 ||
            PyModule_AddObject(m, "Response", (PyObject *) &PyResponse_Type) < 0 ||
            PyModule_AddObject(m, "Future", (PyObject *) &PyFuture_Type) < 0)
                goto fail;
        return m;
fail:
        Py_DECREF(m);
        return NULL;
}
