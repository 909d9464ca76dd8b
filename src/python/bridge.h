/* The Python bridge (serve_python.so): what bridge.c (CPython's lifecycle, the synthesized
 * application, the handler trampolines) and pymodule.c (the `serve._serve` extension module)
 * share. The contract with the pure-Python side (serve._runtime) is in the README's Python
 * section; one replica process hosts one deployment. */
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "serve.h"

/* The replica's context, set by the first init (NULL in --describe). */
extern serve_ctx *bridge_ctx;

/* Creates the `serve._serve` module (bridge.c puts it into sys.modules). New reference, or
 * NULL with an exception set. */
PyObject *pymodule_init(void);

/* Request/Response wrappers valid during one invoke: *_new returns a new reference (NULL with
 * a Python exception set), *_invalidate makes any later use raise RuntimeError. */
PyObject *pyrequest_new(const serve_request *req);
void pyrequest_invalidate(PyObject *o);
PyObject *pyresponse_new(serve_response *resp);
void pyresponse_invalidate(PyObject *o);

/* Logs the pending Python exception's traceback once through serve_log (level 3) with `what`
 * before it, clears it, and returns a malloc'd short message ("ValueError: bad input"; NULL
 * when out of memory). GIL held. */
char *bridge_log_exception(const char *what);
