"""A pure-Python stand-in for the bridge's serve._serve (the contract's functions), so that
the package is tested without the C side. Calls through handles are answered by a routing
table the test fills: deployment name -> function(method, body) -> (status, body). A target
"APP/DEPLOYMENT" (another application's, serve.get_deployment_handle) is routed by that whole
name, "APP/" (serve.get_app_handle) too; a missing one answers 404 naming both, as the worker
does."""

import sys
import types


class Request:
    def __init__(self, method="GET", path="/", query="", headers=(), body=b"", caller=None):
        self.method, self.path, self.query = method, path, query
        self.headers, self.body, self.caller = list(headers), body, caller
        self.cancelled = False


class Response:
    def __init__(self):
        self.status = 200
        self.headers = []
        self.body = b""
        self.pieces = []   # what each flush sent
        self._pending = b""
        self.fail_write = None  # an OSError to raise from the next write

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class CallError(Exception):
    pass


class Future:
    def __init__(self, req, deployment, method, data, stream):
        self.req, self.deployment, self.method, self.data = req, deployment, method, data
        self.stream = stream
        self.consumed = False
        self.cancelled = False
        self.pieces = None


def make():
    m = types.ModuleType("serve._serve")
    m.CallError = CallError
    m.logs = []
    m.calls = []       # every Future started
    m.routes = {}      # deployment -> f(method, data) -> (status, body) or list of pieces
    m.ids = ("app1", "Dep", "Dep#abc")

    m.req_method = lambda r: r.method
    m.req_path = lambda r: r.path
    m.req_query = lambda r: r.query
    m.req_headers = lambda r: list(r.headers)
    m.req_body = lambda r: r.body
    m.req_caller = lambda r: r.caller
    m.req_cancelled = lambda r: r.cancelled

    def resp_set_status(resp, status):
        resp.status = status

    def resp_add_header(resp, name, value):
        assert isinstance(name, str) and isinstance(value, str)
        resp.headers.append((name, value))

    def resp_write(resp, data):
        assert isinstance(data, bytes), type(data)
        if resp.fail_write:
            raise resp.fail_write
        resp.body += data
        resp._pending += data

    def resp_flush(resp):
        resp.pieces.append(resp._pending)
        resp._pending = b""

    m.resp_set_status, m.resp_add_header = resp_set_status, resp_add_header
    m.resp_write, m.resp_flush = resp_write, resp_flush

    def check_target(deployment):
        # As the replica's runtime: "APP/DEPLOYMENT" or "APP/" needs a non-empty APP and one '/'.
        app, slash, name = deployment.partition("/")
        if not deployment or (slash and (not app or "/" in name)):
            raise CallError(400, "invalid deployment or method name")

    def call(req, deployment, method, data):
        assert isinstance(data, bytes)
        check_target(deployment)
        f = Future(req, deployment, method, data, False)
        m.calls.append(f)
        return f

    def call_stream(req, deployment, method, data):
        check_target(deployment)
        f = Future(req, deployment, method, data, True)
        m.calls.append(f)
        return f

    def answer(f):
        route = m.routes.get(f.deployment)
        if route is None:
            app, slash, name = f.deployment.partition("/")
            if slash and name:
                return 404, ("application '%s' has no deployment '%s' (or no such application)"
                             % (app, name)).encode()
            if slash:
                return 404, ("no application '%s' (for its ingress)" % app).encode()
            return 404, b"no deployment " + f.deployment.encode()
        return route(f.method, f.data)

    def wait(f):
        assert not f.consumed, "a future is consumed once"
        f.consumed = True
        return answer(f)

    def next_(f):
        if f.pieces is None:
            res = answer(f)
            if isinstance(res, tuple):
                raise CallError(res[0], res[1].decode())
            f.pieces = list(res)
        return f.pieces.pop(0) if f.pieces else None

    def cancel(f):
        f.cancelled = True

    m.call, m.call_stream, m.wait, m.next, m.cancel = call, call_stream, wait, next_, cancel
    m.log = lambda level, msg: m.logs.append((level, msg))
    m.app = lambda: m.ids[0]
    m.deployment = lambda: m.ids[1]
    m.replica_id = lambda: m.ids[2]
    return m


def install():
    """Installs a fresh fake as serve._serve; returns it. Import serve._runtime after."""
    m = make()
    sys.modules["serve._serve"] = m
    pkg = sys.modules.get("serve")
    if pkg is not None:
        pkg._serve = m
    return m
