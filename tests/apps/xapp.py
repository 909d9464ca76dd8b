"""Calls between applications, for tests/integration/xapp.sh (with tests/apps/calls.c and
examples/echo.c):

  pyapp (Front): over HTTP, /echo and /ingress call the C application `echo` (its Echo by name,
      then as its ingress), /missing a deployment of no application; "answers" what it got, or
      {"status", "message"} of the error. As a handle call target (from calls/Front: the same
      deployment name in another application, not a cycle): "leaf" calls calls/Leaf.echo("x"),
      "cycle" calls calls/Front back (a cross-application cycle: 508).
  pyecho (PyEcho): answers "py:" + what it got."""

from serve import deployment, get_app_handle, get_deployment_handle
from serve.exceptions import RayServeException


@deployment
class Front:
    def __call__(self, request):
        try:
            if isinstance(request, (bytes, str)):  # a handle call: the argument
                arg = request.decode() if isinstance(request, bytes) else request
                if arg == "leaf":
                    return get_deployment_handle("Leaf", "calls").echo.remote(b"x").result()
                if arg == "cycle":
                    return get_deployment_handle("Front", "calls").remote(b"x").result()
                return "unknown " + arg
            what = request.path.rstrip("/").rsplit("/", 1)[-1]
            if what == "echo":
                return get_deployment_handle("Echo", "echo").remote(request.body).result()
            if what == "ingress":
                return get_app_handle(request.query.get("app", "echo")).remote(request.body).result()
            if what == "missing":
                return get_deployment_handle("Nope", "noapp").remote(b"").result()
            return "unknown " + what
        except RayServeException as e:
            return {"status": e.status, "message": e.message}


@deployment
class PyEcho:
    def __call__(self, request):
        x = getattr(request, "body", request)
        return b"py:" + (x if isinstance(x, bytes) else str(x).encode())


pyapp = Front.bind()
pyecho = PyEcho.bind()
