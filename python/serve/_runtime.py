"""What the C bridge (src/python/) calls, with the GIL held, from the replica's threads; see the
contract in the README's "Python deployments". One replica process hosts one deployment.

    load(py_path, symbol) -> [dict]            the application's deployments, ingress first
    init(deployment, args_json, user_config_json) -> replica
    invoke(replica, method, req, resp)         one request; never raises
    invoke_batch(replica, method, reqs, resps) one batch; never raises
    reconfigure(replica, user_config_json), check_health(replica), destroy(replica)"""

import importlib.util
import inspect
import json
import os
import sys
import traceback

from . import _codec, _context
from . import _serve
from ._api import Application, Deployment, Request, Response
from .handle import DeploymentHandle

LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 3, 4, 6, 7
_HOOKS = ("reconfigure", "check_health")

_req_caller = _serve.req_caller
_req_body = _serve.req_body
_set_status = _serve.resp_set_status
_add_header = _serve.resp_add_header
_write = _serve.resp_write
_flush = _serve.resp_flush
_current = _context.current_request

# What load() found: deployment name -> Application, and the ingress's name.
_graph = {}
_ingress = None


# ---- load -------------------------------------------------------------------------------------

def _import(py_path):
    name = os.path.splitext(os.path.basename(py_path))[0]
    mod = sys.modules.get(name)
    if mod is not None and os.path.abspath(getattr(mod, "__file__", "") or "") == os.path.abspath(py_path):
        return mod
    spec = importlib.util.spec_from_file_location(name, py_path)
    if spec is None or spec.loader is None:
        raise ImportError("%s: not a Python module" % py_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses, pickle and the like look their module up by name
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def _apps_in(value):
    """The Applications among a bind argument (in lists, tuples and dict values too)."""
    if isinstance(value, Application):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _apps_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _apps_in(v)


def _handlers(cls):
    """(HTTP/handle methods, batched methods) of a deployment class: public methods plus
    __call__ (first), in definition order, base classes' after."""
    plain, batched, seen = [], [], set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, attr in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            if name != "__call__" and (name.startswith("_") or name in _HOOKS):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            if not callable(attr) or inspect.isclass(attr):
                continue
            spec = getattr(attr, "_serve_batch", None)
            if spec is not None:
                batched.append({"name": name, "max_batch_size": spec[1], "batch_wait_timeout_s": spec[2]})
            elif name == "__call__":
                plain.insert(0, name)
            else:
                plain.append(name)
    return plain, batched


def _describe(app, binds):
    opts = app.deployment._options
    actor = opts.get("ray_actor_options") or {}
    plain, batched = _handlers(app.deployment.func_or_class)
    return {
        "name": app.deployment.name,
        "handlers": plain,
        "batched": batched,
        "binds": binds,
        "options": {
            "num_replicas": opts.get("num_replicas"),
            "max_ongoing_requests": opts.get("max_ongoing_requests"),
            "max_queued_requests": opts.get("max_queued_requests"),
            "health_check_period_s": opts.get("health_check_period_s"),
            "health_check_timeout_s": opts.get("health_check_timeout_s"),
            "graceful_shutdown_timeout_s": opts.get("graceful_shutdown_timeout_s"),
            "num_cpus": actor.get("num_cpus"),
            "num_gpus": actor.get("num_gpus"),
        },
        "user_config": opts.get("user_config"),
        "autoscaling_config": opts.get("autoscaling_config"),
    }


def load(py_path, symbol):
    """Imports py_path and describes the application symbol names, its ingress first."""
    global _graph, _ingress
    where = "%s:%s" % (py_path, symbol)
    mod = _import(py_path)
    if not hasattr(mod, symbol):
        public = sorted(n for n, v in vars(mod).items() if isinstance(v, (Application, Deployment)))
        raise LookupError("%s: module %s has no symbol %r%s" % (
            where, py_path, symbol, " (it has: %s)" % ", ".join(public) if public else ""))
    root = getattr(mod, symbol)
    if isinstance(root, Deployment):
        raise TypeError("%s: %r is a deployment, not an application: bind it (%s = %s.bind())"
                        % (where, symbol, symbol, root.func_or_class.__name__))
    if not isinstance(root, Application):
        raise TypeError("%s: %r is a %s, not an application made by Deployment.bind()"
                        % (where, symbol, type(root).__name__))

    graph, order, out = {}, [], []
    stack = [root]
    while stack:  # depth first, the ingress first; each deployment once
        app = stack.pop()
        name = app.deployment.name
        if name in graph:
            if graph[name] is not app:
                raise ValueError("%s: two different bindings of deployment %r: give one a name "
                                 "with .options(name=...)" % (where, name))
            continue
        graph[name] = app
        order.append(app)
        children = [a for v in list(app.args) + list(app.kwargs.values()) for a in _apps_in(v)]
        stack.extend(reversed(children))
    for app in order:
        binds = []
        for v in list(app.args) + list(app.kwargs.values()):
            for a in _apps_in(v):
                if a.deployment.name not in binds:
                    binds.append(a.deployment.name)
        out.append(_describe(app, binds))
    _graph, _ingress = graph, root.deployment.name
    return out


# ---- a replica ----------------------------------------------------------------------------------

_PLAIN, _ASYNC, _GEN, _ASYNC_GEN = range(4)


def _kind(func):
    if inspect.isasyncgenfunction(func):
        return _ASYNC_GEN
    if inspect.iscoroutinefunction(func):
        return _ASYNC
    if inspect.isgeneratorfunction(func):
        return _GEN
    return _PLAIN


def _takes_arg(func):
    """Whether a method takes an argument besides self."""
    try:
        params = list(inspect.signature(func).parameters.values())[1:]
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


class _Replica:
    """One constructed deployment and how to call each of its methods."""

    def __init__(self, name, instance):
        self.name = name
        self.instance = instance
        self.methods = {}  # name -> (bound callable, kind, takes an argument)
        self.batched = {}  # name -> (bound list-taking callable, is async)
        plain, batched = _handlers(type(instance))
        for m in plain:
            func = getattr(type(instance), m)
            self.methods[m] = (getattr(instance, m), _kind(func), _takes_arg(func))
        for b in batched:
            func = getattr(type(instance), b["name"])._serve_batch[0]
            self.batched[b["name"]] = (func.__get__(instance), inspect.iscoroutinefunction(func))


def _handles(value):
    """The bind arguments as the constructor gets them: Applications become handles."""
    if isinstance(value, Application):
        return DeploymentHandle(value.deployment.name)
    if isinstance(value, list):
        return [_handles(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_handles(v) for v in value)
    if isinstance(value, dict):
        return {k: _handles(v) for k, v in value.items()}
    return value


def _call_hook(func, *args):
    if inspect.iscoroutinefunction(func):
        return _context.run_coroutine(func(*args))
    return func(*args)


def init(deployment, args_json, user_config_json):
    """Constructs deployment with its bound arguments (the ingress also gets the application's
    args from apps.yaml, a mapping, as keyword arguments), then reconfigure(user_config)."""
    app = _graph.get(deployment)
    if app is None:
        raise LookupError("deployment %r is not in the loaded application (it has: %s)"
                          % (deployment, ", ".join(_graph) or "nothing loaded"))
    args = _handles(app.args)
    kwargs = _handles(app.kwargs)
    if deployment == _ingress and args_json:
        extra = json.loads(args_json)
        if isinstance(extra, dict):
            kwargs.update(extra)
        elif extra is not None:
            raise TypeError("the application's args must be a mapping (keyword arguments of %s), got %s"
                            % (deployment, type(extra).__name__))
    instance = app.deployment.func_or_class(*args, **kwargs)
    replica = _Replica(deployment, instance)
    if user_config_json is not None and hasattr(instance, "reconfigure"):
        _call_hook(instance.reconfigure, json.loads(user_config_json))
    return replica


def reconfigure(replica, user_config_json):
    """Calls the replica's reconfigure(user_config) when it has one; raises what it raises."""
    hook = getattr(replica.instance, "reconfigure", None)
    if hook is not None:
        _call_hook(hook, None if user_config_json is None else json.loads(user_config_json))


def check_health(replica):
    """Calls the replica's check_health() when it has one: raising means unhealthy."""
    hook = getattr(replica.instance, "check_health", None)
    if hook is not None:
        _call_hook(hook)


def destroy(replica):
    """Drops the instance (its __del__ runs when nothing else holds it)."""
    replica.methods.clear()
    replica.batched.clear()
    replica.instance = None


# ---- answers --------------------------------------------------------------------------------------

def _encode(value):
    """(body, content type or None) for a handler's result."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain; charset=utf-8"
    if value is None:
        return b"", None
    return json.dumps(value, separators=(",", ":")).encode("utf-8"), "application/json"


def _answer(resp, result):
    """Writes a handler's result: everything is converted before the first write, so that a
    result that cannot be converted still gets its 500."""
    if isinstance(result, Response):
        body, ctype = _encode(result.body)
        headers = result.headers
        if result.media_type:
            ctype = result.media_type
        if ctype and not any(k.lower() == "content-type" for k in headers):
            headers = dict(headers)
            headers["Content-Type"] = ctype
        if result.status_code != 200:
            _set_status(resp, result.status_code)
        for k, v in headers.items():
            _add_header(resp, str(k), str(v))
    else:
        body, ctype = _encode(result)
        if ctype:
            _add_header(resp, "Content-Type", ctype)
    if body:
        _write(resp, body)


def _failed(resp, where, exc, log=True):
    """Logs the traceback (once: log=False for the other members of a batch) and answers 500
    with a one-line message."""
    try:
        if log:
            _serve.log(LOG_ERR, "%s failed:\n%s" % (where, "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()))
    except Exception:  # noqa: BLE001 - the answer matters more than the log
        pass
    msg = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    if len(msg) > 300:
        msg = msg[:297] + "..."
    try:
        _set_status(resp, 500)
        _add_header(resp, "Content-Type", "text/plain; charset=utf-8")
        _write(resp, (msg + "\n").encode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - a stream already under way, or the request is gone
        pass


def _piece(item):
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item), None
    if isinstance(item, str):
        return item.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(item, separators=(",", ":")).encode("utf-8") + b"\n", "application/x-ndjson"


def _stream(resp, items, where):
    """Writes and flushes each item as it comes: bytes as they are, str as UTF-8, anything else
    as one JSON line. A client that leaves (OSError) ends the stream quietly."""
    first = True
    try:
        for item in items:
            data, ctype = _piece(item)
            if first:
                first = False
                if ctype:
                    _add_header(resp, "Content-Type", ctype)
            if data:
                _write(resp, data)
            _flush(resp)
    except OSError as e:
        _serve.log(LOG_DEBUG, "%s: stream ended: %s" % (where, e))
        return
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass


def _async_items(agen):
    """An async generator's items, pulled from the loop one at a time by this thread (each
    step in this thread's context: calls made meanwhile belong to the request)."""
    async def step():
        return await agen.__anext__()

    async def close():
        await agen.aclose()

    try:
        while True:
            try:
                yield _context.run_coroutine(step())
            except StopAsyncIteration:
                return
    finally:
        _context.run_coroutine(close())


def _argument(req):
    """What a handler gets: the Request for HTTP, the decoded value for a handle call."""
    if _req_caller(req) is None:
        return Request._from_bridge(_serve, req)
    return _codec.decode(_req_body(req))


def invoke(replica, method, req, resp):
    """Serves one request with replica's method. Never raises."""
    token = _current.set(req)
    try:
        entry = replica.methods.get(method)
        if entry is None:
            _set_status(resp, 404)
            _write(resp, ("%s has no method %r\n" % (replica.name, method)).encode())
            return
        func, kind, takes_arg = entry
        args = (_argument(req),) if takes_arg else ()
        if kind == _PLAIN:
            result = func(*args)
            # A plain method may hand over to an async or generator one (a dispatcher).
            if inspect.iscoroutine(result):
                result = _context.run_coroutine(result)
            elif inspect.isgenerator(result):
                _stream(resp, result, "%s.%s" % (replica.name, method))
                return
            elif inspect.isasyncgen(result):
                _stream(resp, _async_items(result), "%s.%s" % (replica.name, method))
                return
        elif kind == _ASYNC:
            result = _context.run_coroutine(func(*args))
        elif kind == _GEN:
            _stream(resp, func(*args), "%s.%s" % (replica.name, method))
            return
        else:
            _stream(resp, _async_items(func(*args)), "%s.%s" % (replica.name, method))
            return
        _answer(resp, result)
    except Exception as e:  # noqa: BLE001 - every failure is an answer
        _failed(resp, "%s.%s" % (replica.name, method), e)
    finally:
        _current.reset(token)


def invoke_batch(replica, method, reqs, resps):
    """Serves a batch with a @serve.batch method: one list in, one list out, each item
    answered on its own. A failure answers 500 to every member. Never raises."""
    where = "%s.%s" % (replica.name, method)
    token = _current.set(None)  # calls made for a batch belong to no single request
    try:
        entry = replica.batched.get(method)
        if entry is None:
            raise LookupError("%s has no batched method %r" % (replica.name, method))
        func, is_async = entry
        args = [_argument(r) for r in reqs]
        results = _context.run_coroutine(func(args)) if is_async else func(args)
        results = list(results) if not isinstance(results, list) else results
        if len(results) != len(reqs):
            raise TypeError("%s returned %d results for a batch of %d" % (where, len(results), len(reqs)))
    except Exception as e:  # noqa: BLE001
        for i, resp in enumerate(resps):
            _failed(resp, where, e, log=i == 0)
        return
    finally:
        _current.reset(token)
    for resp, result in zip(resps, results):
        try:
            _answer(resp, result)
        except Exception as e:  # noqa: BLE001
            _failed(resp, where, e)
